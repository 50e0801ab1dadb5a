#!/usr/bin/env bash
# Benchmark: the 512 MiB real corpus installed onto many testbed hosts at once (default 32, each
# link shaped with `tc tbf` to B = 10 Mbit/s), by both install paths, all hosts worked on at once
# (`--parallel N`):
#   a. `sealer run IMAGE` from the store (layers at the build's zstd level 3);
#   b. `./app.run install` of the package made once with `sealer pack --level 19` (timed and
#      printed, not part of the install time);
#   c. with --bastion, (a) again with every host behind one jump host (their route to this machine
#      cut; the jump host's link at --jump-rate, default 1 Gbit/s).
# Each against its bound: the bytes each host must receive (the largest `bytes_sent` of the
# report) / B. Every host's tree is checked afterwards: the sha256 of every file, against the
# image's root filesystem. Where the time goes on this machine is measured in the same runs: the
# installer's CPU (user + sys) and peak RSS, the CPU of everything running on the hosts (sshd and
# the agent that unpacks, via a cpuacct cgroup holding every testbed process, and split by name by
# sampling /proc), how busy the machine's CPUs were, CPU and I/O pressure (/proc/pressure) and
# the bytes written to the disk (/proc/diskstats).
#
# Usage (root; needs the testbed's packages, see scripts/ci-deps.sh):
#   scripts/bench-scale.sh [--hosts 32] [--rate 10mbit] [--parallel N] [--level 19]
#                          [--bastion] [--jump-rate 1gbit] [--only run|package] [--keep]
#
# The image is bench-install.sh's cached real corpus ($BENCH_CACHE/ctx-real-512m-r1; run
# scripts/bench-install.sh once to make it). Release binaries are built first (CARGO_TARGET_DIR is
# honoured). Everything else (store, package, testbed, cgroup, logs) is created fresh and removed
# on exit, also on failure or Ctrl-C (--keep leaves the logs).
set -euo pipefail
cd "$(dirname "$0")/.."

hosts=32
rate=10mbit
parallel=
level=19
bastion=0
jump_rate=1gbit
only=
keep=0
usage="usage: $0 [--hosts N] [--rate RATE] [--parallel N] [--level L] [--bastion] [--jump-rate RATE] [--only run|package] [--keep]"
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) hosts=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --parallel) parallel=$2; shift 2 ;;
        --level) level=$2; shift 2 ;;
        --bastion) bastion=1; shift ;;
        --jump-rate) jump_rate=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
[[ "$hosts" =~ ^[0-9]+$ ]] && [ "$hosts" -ge 2 ] || { echo "bench-scale: --hosts must be 2 or more" >&2; exit 2; }
parallel=${parallel:-$hosts}
case "$only" in ""|run|package) ;; *) echo "$usage" >&2; exit 2 ;; esac
bench=bench-scale
tb_name=bench-scale
bench_tools="python3 /usr/bin/time bc tc ip sha256sum"
keep_drop="store app.run"
. scripts/bench-common.sh
bench_real_corpus
cpuacct_root=/sys/fs/cgroup/cpuacct
[ -f "$cpuacct_root/cpuacct.usage" ] || cpuacct_root=
cgroup=${cpuacct_root:+$cpuacct_root/sealer-bench-scale-$$}
bench_on_exit() {
    [ -z "${sampler_pid:-}" ] || kill "$sampler_pid" 2>/dev/null || true
    if [ -n "$cgroup" ] && [ -d "$cgroup" ]; then
        for _ in $(seq 50); do rmdir "$cgroup" 2>/dev/null && break; sleep 0.1; done
    fi
}

bench_release

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "sealer build"
"$bin" build -t bench/scale:1 "$ctx" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
if [ "$only" != run ]; then
    log "vendor: sealer pack --level $level"
    t0=$(now)
    "$bin" pack bench/scale:1 -o "$work/app.run" --level "$level" >"$work/pack.log" 2>&1 \
        || { cat "$work/pack.log" >&2; exit 1; }
    vendor_pack=$(echo "$(now) - $t0" | bc -l)
fi

# The image's tree as every host must hold it: one "sha256  ./path" line per file, sorted.
log "hashing the image's root filesystem"
(cd "$ctx/rootfs" && find ./usr -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) >"$work/rootfs.sums"
rootfs_files=$(wc -l <"$work/rootfs.sums")
rootfs_digest=$(sha256sum <"$work/rootfs.sums" | cut -d' ' -f1)

# --- Testbed: N hosts (and the jump host first, with --bastion), every link shaped -----------
total_hosts=$((hosts + bastion))
t0=$(now)
bench_testbed_up "$total_hosts"
testbed_up=$(echo "$(now) - $t0" | bc -l)
ips=("${all_ips[@]:$bastion}")
nss=("${all_ns[@]:$bastion}")
for ip in "${ips[@]}"; do "$testbed" shape "$tb_name" "$ip" "$rate"; done
if [ "$bastion" = 1 ]; then
    jump=${all_ips[0]}
    "$testbed" shape "$tb_name" "$jump" "$jump_rate"
fi
nodes=$(IFS=,; echo "${ips[*]:1}")

# Every process of the N hosts (not the jump host) goes into one cpuacct cgroup; what sshd forks
# later stays in it, so its usage is all the CPU the hosts spent, exited processes included.
if [ -n "$cgroup" ]; then
    mkdir "$cgroup"
    for ns in "${nss[@]}"; do
        for p in $(ip netns pids "$ns"); do echo "$p" >"$cgroup/cgroup.procs" 2>/dev/null || true; done
    done
fi
hosts_cpu_ns() { if [ -n "$cgroup" ]; then cat "$cgroup/cpuacct.usage"; else echo 0; fi; }

# Sample, every 0.5 s, the CPU time of each process in the hosts' cgroup; at the end, the last
# value seen of each, summed by command name (processes that live less than a sample are missed;
# the cgroup's total has them).
start_sampler() {
    [ -n "$cgroup" ] || return 0
    python3 - "$cgroup/cgroup.procs" "$1" <<'PY' &
import os, signal, sys, time
procs, out = sys.argv[1], sys.argv[2]
tick = os.sysconf("SC_CLK_TCK")
seen = {}
def dump(*_):
    by = {}
    for comm, cpu in seen.values():
        by[comm] = by.get(comm, 0) + cpu
    with open(out, "w") as f:
        for comm, cpu in sorted(by.items(), key=lambda kv: -kv[1]):
            f.write(f"{comm}\t{cpu / tick:.1f}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, dump)
while True:
    try:
        pids = open(procs).read().split()
    except OSError:
        pids = []
    for pid in pids:
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        seen[(pid, fields[19])] = (comm, int(fields[11]) + int(fields[12]))
    time.sleep(0.5)
PY
    sampler_pid=$!
}
stop_sampler() {
    [ -n "${sampler_pid:-}" ] || return 0
    kill "$sampler_pid" 2>/dev/null || true
    wait "$sampler_pid" 2>/dev/null || true
    sampler_pid=
}

# Machine counters: busy and total CPU ticks, CPU and I/O pressure (µs stalled, "some"), sectors
# written to the disks.
machine() {
    python3 - <<'PY'
import os
cpu = list(map(int, open("/proc/stat").readline().split()[1:]))
busy, total = sum(cpu) - cpu[3] - cpu[4], sum(cpu)
def pressure(kind):
    try:
        for line in open(f"/proc/pressure/{kind}"):
            if line.startswith("some"):
                return int(line.split("total=")[1])
    except OSError:
        pass
    return 0
written = 0
for line in open("/proc/diskstats"):
    f = line.split()
    if os.path.exists(f"/sys/block/{f[2]}") and not f[2].startswith(("loop", "ram")):
        written += int(f[9])
print(busy, total, pressure("cpu"), pressure("io"), written)
PY
}

# Run one install (TAG, then the command and its flags before the host flags); its --json report
# goes to $work/TAG.json, its output to $work/TAG.log. Sets the figures of TAG in `fig`.
declare -A fig
install() {
    local tag=$1 t0 rc m0 m1 h0 h1
    shift
    sync
    log "$tag onto ${#ips[@]} hosts at $rate each (--parallel $parallel)"
    m0=$(machine)
    h0=$(hosts_cpu_ns)
    start_sampler "$work/$tag.comm"
    t0=$(now)
    set +e
    /usr/bin/time -f '%e %U %S %M' -o "$work/$tag.time" "$@" -m "${ips[0]}" ${nodes:+-n "$nodes"} \
        --pk "$key" --known-hosts "$known_hosts" --json --parallel "$parallel" \
        >"$work/$tag.json" 2>"$work/$tag.log"
    rc=$?
    set -e
    fig[$tag.took]=$(echo "$(now) - $t0" | bc -l)
    stop_sampler
    h1=$(hosts_cpu_ns)
    m1=$(machine)
    [ "$rc" = 0 ] || { tail -n 40 "$work/$tag.log" >&2; log "$tag failed (exit $rc)"; exit 1; }
    read -r _ user sys rss_kib <"$work/$tag.time"
    fig[$tag.cpu]=$(echo "$user + $sys" | bc -l)
    fig[$tag.rss]=$((rss_kib / 1024))
    fig[$tag.hosts_cpu]=$(echo "($h1 - $h0) / 1000000000" | bc -l)
    read -r "fig[$tag.busy]" "fig[$tag.cpu_psi]" "fig[$tag.io_psi]" "fig[$tag.written]" < <(python3 - "$m0" "$m1" "${fig[$tag.took]}" <<'PY'
import sys
a, b, wall = list(map(int, sys.argv[1].split())), list(map(int, sys.argv[2].split())), float(sys.argv[3])
print(f"{(b[0] - a[0]) / max(1, b[1] - a[1]) * 100:.0f} {(b[2] - a[2]) / 1e6 / wall * 100:.0f} "
      f"{(b[3] - a[3]) / 1e6 / wall * 100:.0f} {(b[4] - a[4]) * 512}")
PY
)
    read -r "fig[$tag.bytes]" "fig[$tag.spread]" "fig[$tag.relayed]" < <(python3 - "$work/$tag.json" <<'PY'
import json, sys
hosts = json.load(open(sys.argv[1]))["hosts"]
bad = [h for h in hosts if h["outcome"] != "installed"]
if bad:
    sys.exit(f"bench-scale: hosts not installed: {bad}")
t = sorted(h["elapsed_seconds"] for h in hosts)
print(max(h["bytes_sent"] for h in hosts), f"{t[0]:.0f}-{t[len(t) // 2]:.0f}-{t[-1]:.0f}",
      sum(h.get("bastion_bytes", 0) for h in hosts))
PY
)
    fig[$tag.retries]=$(grep -c retrying "$work/$tag.log" || true)
}

# Every host must hold the image's tree: the same files with the same sha256 (two hosts at a time).
verify_hosts() {
    local ip bad=0
    log "checking the tree on ${#ips[@]} hosts (sha256 of every file)"
    for ip in "${ips[@]}"; do echo "$ip"; done \
        | xargs -P 2 -I{} "$testbed" exec "$tb_name" {} \
            'cd /var/lib/sealer/data/my-cluster/rootfs && find ./usr -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | sed "s/ .*/ {}/"' \
            >"$work/$1.trees" || { log "could not hash the tree on every host after $1"; exit 1; }
    [ "$(wc -l <"$work/$1.trees")" = "${#ips[@]}" ] || { log "not every host was checked after $1"; exit 1; }
    while read -r digest ip; do
        [ "$digest" = "$rootfs_digest" ] || { log "host $ip does not hold the image's tree after $1"; bad=1; }
    done <"$work/$1.trees"
    [ "$bad" = 0 ] || exit 1
}

wipe_hosts() {
    log "wiping /var/lib/sealer on ${#ips[@]} hosts"
    printf '%s\n' "${ips[@]}" | xargs -P 4 -I{} "$testbed" exec "$tb_name" {} \
        'rm -rf /var/lib/sealer && [ ! -e /var/lib/sealer ]' \
        || { log "could not wipe /var/lib/sealer on every host"; exit 1; }
}

tags=()
if [ "$only" != package ]; then
    install run "$bin" run bench/scale:1
    verify_hosts run
    tags+=(run)
fi
if [ "$only" != run ]; then
    [ "${#tags[@]}" = 0 ] || wipe_hosts
    install package "$work/app.run" install
    verify_hosts package
    tags+=(package)
fi
if [ "$bastion" = 1 ]; then
    wipe_hosts
    # The hosts' replies to this machine are dropped: only the jump host reaches them.
    for ns in "${nss[@]}"; do ip -n "$ns" route replace prohibit "$gateway/32"; done
    timeout 3 bash -c "exec 3<>/dev/tcp/${ips[0]}/22" 2>/dev/null \
        && { log "${ips[0]} is still reachable directly"; exit 1; }
    install bastion "$bin" run bench/scale:1 --bastion "root@$jump" --bastion-pk "$key"
    for ns in "${nss[@]}"; do ip -n "$ns" route del prohibit "$gateway/32"; done
    verify_hosts bastion
    tags+=(bastion)
fi

# --- Report ----------------------------------------------------------------------------------
bytes_per_s=$((rate_mbit * 1000000 / 8))
mib() { echo "$1 / 1048576" | bc -l; }
row() { # label format key
    local label=$1 format=$2 key=$3 t
    printf '%-46s' "$label"
    for t in "${tags[@]}"; do printf " $format" "${fig[$t.$key]}"; done
    printf '\n'
}
for t in "${tags[@]}"; do
    fig[$t.bound]=$(echo "${fig[$t.bytes]} / $bytes_per_s" | bc -l)
    fig[$t.ratio]=$(echo "${fig[$t.took]} / ${fig[$t.bound]}" | bc -l)
    fig[$t.mib]=$(mib "${fig[$t.bytes]}")
    fig[$t.written_gib]=$(echo "${fig[$t.written]} / 1073741824" | bc -l)
    fig[$t.sshd]=$(awk -F'\t' '$1 == "sshd" { print $2 }' "$work/$t.comm" 2>/dev/null || true)
    fig[$t.agent]=$(awk -F'\t' '$1 ~ /^sealer-agent/ { s += $2 } END { print s + 0 }' "$work/$t.comm" 2>/dev/null || true)
    fig[$t.sshd]=${fig[$t.sshd]:-0}
    fig[$t.agent]=${fig[$t.agent]:-0}
    fig[$t.unsampled]=$(echo "${fig[$t.hosts_cpu]} - ${fig[$t.sshd]} - ${fig[$t.agent]}" | bc -l)
done
{
    printf '\nimage: real corpus, %d files, %.1f MiB uncompressed\n' "$rootfs_files" \
        "$(mib "$(awk '{ s += $1 } END { print s + 0 }' < <(find "$ctx/rootfs" -type f -printf '%s\n'))")"
    [ -z "${vendor_pack:-}" ] || printf 'vendor, once (not install time): sealer pack --level %s %.1fs\n' "$level" "$vendor_pack"
    printf 'hosts: %d, each link shaped to %s (tc tbf, both directions), --parallel %d; testbed up in %.0fs\n' \
        "${#ips[@]}" "$rate" "$parallel" "$testbed_up"
    [ "$bastion" = 0 ] || printf 'bastion: every host behind one jump host whose link is shaped to %s\n' "$jump_rate"
    printf 'machine: %d CPUs, load average %s at the start, %s at the end\n\n' \
        "$(nproc)" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-46s' measure
    for t in "${tags[@]}"; do printf ' %12s' "$t"; done
    printf '\n'
    row "install time (s)" '%12.1f' took
    row "bytes per host (MiB, largest bytes_sent)" '%12.1f' mib
    row "bound: bytes per host / B (s)" '%12.1f' bound
    row "time / bound (target <= 1.3)" '%12.2f' ratio
    row "hosts done after (s, first-median-last)" '%12s' spread
    row "installer peak RSS (MiB, target < 256)" '%12d' rss
    row "installer CPU, user + sys (s)" '%12.1f' cpu
    row "hosts' CPU, all processes (s)" '%12.1f' hosts_cpu
    row "  of which sshd (sampled, s)" '%12.1f' sshd
    row "  of which the agent (sampled, s)" '%12.1f' agent
    row "  other, short-lived (s)" '%12.1f' unsampled
    row "machine CPU busy (% of all CPUs)" '%12s' busy
    row "CPU pressure, some (% of wall)" '%12s' cpu_psi
    row "I/O pressure, some (% of wall)" '%12s' io_psi
    row "written to disk (GiB, whole machine)" '%12.1f' written_gib
    row "retried connections or steps" '%12s' retries
    [ "$bastion" = 0 ] || printf '%-46s %12.1f MiB through the jump host\n' "bastion bytes (report)" \
        "$(mib "${fig[bastion.relayed]}")"
    printf '\nevery host checked after each install: %d files, sha256 of the sorted list %s\n' \
        "$rootfs_files" "${rootfs_digest:0:16}"
} | tee "$work/result.txt"
