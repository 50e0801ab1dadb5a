#!/usr/bin/env bash
# Benchmark: installing an image onto N testbed hosts that this machine cannot reach, through one
# jump host (`sealer run --bastion`). Each host's link is shaped to B (default 25 Mbit/s), the
# jump host's to J (default 1 Gbit/s). In the same run, the same install goes to the same hosts
# directly (their block lifted, their data wiped) as the baseline. Prints both install times,
# the lower bound payload_size / B, ours / bound (target <= 1.3 through the jump host), the
# installer's CPU time (user + sys) and the jump host's sshd CPU time (every session it ran).
#
# Usage (root; needs the testbed's packages, see scripts/ci-deps.sh):
#   scripts/bench-bastion.sh [--rate 25mbit] [--jump-rate 1gbit] [--hosts 8] [--parallel 8]
#                            [--context DIR] [--keep]
#
# The image is bench-install.sh's cached real corpus ($BENCH_CACHE/ctx-real-512m-r1; run
# scripts/bench-install.sh once to make it), or the build context DIR (e.g. fixtures/hello with
# --hosts 32 --parallel 32: how many jump-host sessions at once the jump host's sshd accepts). Release binaries are built first. Everything else
# (store, testbed, logs) is created fresh and removed on exit (--keep leaves the logs).
set -euo pipefail
cd "$(dirname "$0")/.."

rate=25mbit
jump_rate=1gbit
hosts=8
parallel=8
ctx=
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --jump-rate) jump_rate=$2; shift 2 ;;
        --hosts) hosts=$2; shift 2 ;;
        --parallel) parallel=$2; shift 2 ;;
        --context) ctx=$(cd "$2" && pwd); shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--rate RATE] [--jump-rate RATE] [--hosts N] [--parallel N] [--context DIR] [--keep]" >&2; exit 2 ;;
    esac
done
bench=bench-bastion
tb_name=bench-bastion
bench_tools="python3 /usr/bin/time bc tc ip"
. scripts/bench-common.sh
[ -n "$ctx" ] || bench_real_corpus

bench_release
log "sealer build"
"$bin" build -t bench/bastion:1 "$ctx" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }

bench_testbed_up "$((hosts + 1))"
[ -n "$gateway" ] || { log "no bridge address in the testbed's description"; exit 1; }
jump=${all_ips[0]}
jump_ns=${all_ns[0]}
ips=("${all_ips[@]:1}")
nss=("${all_ns[@]:1}")
"$testbed" shape "$tb_name" "$jump" "$jump_rate"
for ip in "${ips[@]}"; do "$testbed" shape "$tb_name" "$ip" "$rate"; done
nodes=$(IFS=,; echo "${ips[*]:1}")

# Hosts behind the jump host: their replies to this machine are dropped.
block() { local ns; for ns in "${nss[@]}"; do ip -n "$ns" route "$1" prohibit "$gateway/32"; done; }
block replace
timeout 3 bash -c "exec 3<>/dev/tcp/${ips[0]}/22" 2>/dev/null \
    && { log "${ips[0]} is still reachable directly"; exit 1; }

# CPU seconds (user + sys, children included) of every sshd in the jump host's namespaces.
jump_sshd_cpu() {
    local ino p total=0
    ino=$(stat -L -c %i "/run/netns/$jump_ns")
    for p in /proc/[0-9]*; do
        [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$ino" ] || continue
        [ "$(cat "$p/comm" 2>/dev/null)" = sshd ] || continue
        total=$((total + $(awk '{ print $14 + $15 + $16 + $17 }' "$p/stat" 2>/dev/null || echo 0)))
    done
    echo "scale=2; $total / $(getconf CLK_TCK)" | bc -l
}

# Install onto the hosts (extra flags after the tag); sets took, cpu (installer user + sys).
install() {
    local tag=$1 t0 t1 rc
    shift
    sync
    log "$tag onto ${#ips[@]} hosts at $rate each"
    t0=$(now)
    set +e
    /usr/bin/time -f '%U %S' -o "$work/$tag.time" "$bin" run bench/bastion:1 -m "${ips[0]}" \
        ${nodes:+-n "$nodes"} --pk "$key" --known-hosts "$known_hosts" --json --parallel "$parallel" "$@" \
        >"$work/$tag.json" 2>"$work/$tag.log"
    rc=$?
    set -e
    [ "$rc" = 0 ] || { cat "$work/$tag.log" >&2; log "$tag failed (exit $rc)"; exit 1; }
    t1=$(now)
    took=$(echo "$t1 - $t0" | bc -l)
    cpu=$(awk '{ print $1 + $2 }' "$work/$tag.time")
}

jump_before=$(jump_sshd_cpu)
install bastion --bastion "root@$jump" --bastion-pk "$key"
jump_after=$(jump_sshd_cpu)
ours=$took
ours_cpu=$cpu
jump_cpu=$(echo "$jump_after - $jump_before" | bc -l)
read -r sent relayed < <(python3 -c '
import json, sys
hosts = json.load(open(sys.argv[1]))["hosts"]
assert all(h["outcome"] == "installed" for h in hosts), hosts
print(sum(h["bytes_sent"] for h in hosts), sum(h["bastion_bytes"] for h in hosts))' "$work/bastion.json")

log "wiping /var/lib/sealer on ${#ips[@]} hosts and lifting the block"
block del
for ip in "${ips[@]}"; do
    "$testbed" exec "$tb_name" "$ip" 'rm -rf /var/lib/sealer && [ ! -e /var/lib/sealer ]'
done
install direct
direct=$took
direct_cpu=$cpu
per_host=$(python3 -c '
import json, sys
hosts = json.load(open(sys.argv[1]))["hosts"]
assert all(h["outcome"] == "installed" for h in hosts), hosts
print(max(h["bytes_sent"] for h in hosts))' "$work/direct.json")

bytes_per_s=$((rate_mbit * 1000000 / 8))
bound=$(echo "$per_host / $bytes_per_s" | bc -l)
div() { echo "$1 / $2" | bc -l; }
{
    printf '\nhosts: %d behind one jump host; host links %s, jump host link %s (tc tbf)\n' \
        "${#ips[@]}" "$rate" "$jump_rate"
    printf 'payload per host: %.1f MiB; machine: %d CPUs, load average %s\n\n' \
        "$(echo "$per_host / 1048576" | bc -l)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-44s %10s %10s\n' "measure" "bastion" "direct"
    printf '%-44s %9.1fs %9.1fs\n' "install time" "$ours" "$direct"
    printf '%-44s %9.1fs %9.1fs\n' "lower bound: payload per host / B" "$bound" "$bound"
    printf '%-44s %9.2fx %9.2fx  (target <= 1.3 through the jump host)\n' "time / bound" \
        "$(div "$ours" "$bound")" "$(div "$direct" "$bound")"
    printf '%-44s %9.1fs %9.1fs\n' "installer CPU (user + sys)" "$ours_cpu" "$direct_cpu"
    printf '%-44s %9.1fs\n' "jump host sshd CPU (user + sys)" "$jump_cpu"
    printf '%-44s %8.1f MiB / %.1f MiB through the jump host\n' "payload sent / reported bastion bytes" \
        "$(echo "$sent / 1048576" | bc -l)" "$(echo "$relayed / 1048576" | bc -l)"
    printf '%-44s %10s %10s  (--parallel %d)\n' "retried connections or steps" \
        "$(grep -c retrying "$work/bastion.log" || true)" "$(grep -c retrying "$work/direct.log" || true)" "$parallel"
} | tee "$work/result.txt"
