#!/usr/bin/env bash
# Benchmark: a cluster's life on shaped links. Every host's link is shaped to B (default
# 25 Mbit/s, tc tbf both ways); the image is bench-install.sh's 512 MiB real corpus. In one run:
#   1. join: an install onto 8 hosts, then `sealer join -n` of 2 more; the join's time against
#      the bound for 2 hosts (payload / B, each fed on its own link): target <= 1.3;
#   2. one host down: the same 8 hosts wiped and installed with all up (a), then wiped and
#      installed with the last one's link down (b), alternated --pairs times. The time the 7
#      healthy hosts need is the largest of their `elapsed_seconds` in the `--json` report (from
#      the start of the run to the end of the host's last step); b / a: target <= 1.2. The run's
#      whole wall time and the down host's own time (its retries) are printed beside it.
#
# Usage (root; needs the testbed's packages, see scripts/ci-deps.sh):
#   scripts/bench-lifecycle.sh [--rate 25mbit] [--hosts 8] [--join 2] [--pairs 1] [--context DIR] [--keep]
#
# The image is $BENCH_CACHE/ctx-real-512m-r1 (run scripts/bench-install.sh once to make it) or
# the build context DIR. Release binaries are built first. The store, testbed and logs are
# created fresh and removed on exit (--keep leaves the logs).
set -euo pipefail
cd "$(dirname "$0")/.."

rate=25mbit
hosts=8
join=2
pairs=1
ctx=
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --hosts) hosts=$2; shift 2 ;;
        --join) join=$2; shift 2 ;;
        --pairs) pairs=$2; shift 2 ;;
        --context) ctx=$(cd "$2" && pwd); shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--rate RATE] [--hosts N] [--join N] [--pairs N] [--context DIR] [--keep]" >&2; exit 2 ;;
    esac
done
[ "$hosts" -ge 2 ] && [ "$join" -ge 1 ] && [ "$pairs" -ge 1 ] \
    || { echo "bench-lifecycle: needs --hosts >= 2, --join >= 1, --pairs >= 1" >&2; exit 2; }
bench=bench-lifecycle
tb_name=bench-lifecycle
bench_tools="python3 bc tc ip"
. scripts/bench-common.sh
[ -n "$ctx" ] || bench_real_corpus

bench_release
log "sealer build"
"$bin" build -t bench/lifecycle:1 "$ctx" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }

bench_testbed_up "$((hosts + join))"
for ip in "${all_ips[@]}"; do "$testbed" shape "$tb_name" "$ip" "$rate"; done
ips=("${all_ips[@]:0:$hosts}")
joiners=("${all_ips[@]:$hosts}")
nodes=$(IFS=,; echo "${ips[*]:1}")
down=${ips[$((hosts - 1))]}

# Runs sealer with ARGS, its stdout (the JSON report with --json) into $work/TAG.json and its
# stderr into $work/TAG.log; sets `took` (wall seconds). A non-zero exit is allowed only with
# --may-fail.
sealer_timed() {
    local tag=$1 may_fail=0 t0 t1 rc
    shift
    [ "$1" = --may-fail ] && { may_fail=1; shift; }
    sync
    t0=$(now)
    set +e
    "$bin" "$@" --known-hosts "$known_hosts" >"$work/$tag.json" 2>"$work/$tag.log"
    rc=$?
    set -e
    t1=$(now)
    took=$(echo "$t1 - $t0" | bc -l)
    [ "$rc" = 0 ] || [ "$may_fail" = 1 ] || { cat "$work/$tag.log" >&2; log "$tag failed (exit $rc)"; exit 1; }
}

wipe() {
    local ip
    for ip in "${ips[@]}" "${joiners[@]}"; do
        "$testbed" exec "$tb_name" "$ip" 'rm -rf /var/lib/sealer && [ ! -e /var/lib/sealer ]'
    done
}

# --- 1. join ------------------------------------------------------------------------------
log "install onto $hosts hosts at $rate each"
sealer_timed install8 run bench/lifecycle:1 -m "${ips[0]}" -n "$nodes" --pk "$key" --json
install_all=$took
per_host=$(python3 -c '
import json, sys
hosts = json.load(open(sys.argv[1]))["hosts"]
assert all(h["outcome"] == "installed" for h in hosts), hosts
print(max(h["bytes_sent"] for h in hosts))' "$work/install8.json")
log "join of ${#joiners[@]} nodes"
sealer_timed join join -n "$(IFS=,; echo "${joiners[*]}")" --cluster-name my-cluster
join_took=$took
# The table: the joined hosts `joined (…)`, the others `up to date`.
for ip in "${joiners[@]}"; do
    grep -q "^$ip .* joined (" "$work/join.json" || { cat "$work/join.json" >&2; log "$ip was not joined"; exit 1; }
done
for ip in "${ips[@]}"; do
    grep -q "^$ip .* up to date" "$work/join.json" || { cat "$work/join.json" >&2; log "$ip was changed by the join"; exit 1; }
done

# --- 2. one host down -----------------------------------------------------------------------
# Per pair: a (all up) and b (the last host's link down), alternating which goes first.
healthy_max() {
    python3 - "$1" "$down" "$2" <<'PY'
import json, sys
report, down, expect_down = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3] == "down"
healthy = [h for h in report["hosts"] if h["ip"] != down]
assert all(h["outcome"] == "installed" for h in healthy), healthy
gone = next(h for h in report["hosts"] if h["ip"] == down)
assert (gone["outcome"] == "failed") == expect_down, gone
print(max(h["elapsed_seconds"] for h in healthy), gone["elapsed_seconds"])
PY
}
all_up=()
one_down=()
walls_down=()
down_own=()
for pair in $(seq "$pairs"); do
    order="up down"
    [ $((pair % 2)) = 0 ] && order="down up"
    for mode in $order; do
        wipe
        if [ "$mode" = down ]; then
            "$testbed" link-down "$tb_name" "$down"
            log "pair $pair: install onto $hosts hosts, $down down"
            sealer_timed "down$pair" --may-fail run bench/lifecycle:1 -m "${ips[0]}" -n "$nodes" --pk "$key" --json
            "$testbed" link-up "$tb_name" "$down"
            read -r healthy own < <(healthy_max "$work/down$pair.json" down)
            one_down+=("$healthy")
            walls_down+=("$took")
            down_own+=("$own")
        else
            log "pair $pair: install onto $hosts hosts, all up"
            sealer_timed "up$pair" run bench/lifecycle:1 -m "${ips[0]}" -n "$nodes" --pk "$key" --json
            read -r healthy _ < <(healthy_max "$work/up$pair.json" up)
            all_up+=("$healthy")
        fi
    done
done

# --- Report ----------------------------------------------------------------------------------
bytes_per_s=$((rate_mbit * 1000000 / 8))
bound=$(echo "$per_host / $bytes_per_s" | bc -l)
div() { echo "$1 / $2" | bc -l; }
mean() { local IFS=+; echo "($*) / $#" | bc -l; }
{
    printf '\nimage: %s; payload per host %.1f MiB; links %s (tc tbf)\n' "$(basename "$ctx")" \
        "$(echo "$per_host / 1048576" | bc -l)" "$rate"
    printf 'machine: %d CPUs, load average %s at the end\n\n' "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-58s %9.1fs\n' "install onto $hosts hosts (for reference)" "$install_all"
    printf '%-58s %9.1fs\n' "join of ${#joiners[@]} nodes: wall time" "$join_took"
    printf '%-58s %9.1fs\n' "  bound for ${#joiners[@]} hosts: payload per host / B" "$bound"
    printf '%-58s %9.2fx  (target <= 1.3)\n' "  join wall time / bound" "$(div "$join_took" "$bound")"
    printf '\n%-58s %s\n' "one of $hosts down ($down, link down), pairs:" "$pairs"
    for i in "${!all_up[@]}"; do
        printf '  pair %d: healthy hosts all up %.1fs, one down %.1fs (%.2fx); run %.1fs, down host %.1fs\n' \
            "$((i + 1))" "${all_up[$i]}" "${one_down[$i]}" "$(div "${one_down[$i]}" "${all_up[$i]}")" \
            "${walls_down[$i]}" "${down_own[$i]}"
    done
    printf '%-58s %9.2fx  (target <= 1.2)\n' "healthy hosts, one down / all up (means)" \
        "$(div "$(mean "${one_down[@]}")" "$(mean "${all_up[@]}")")"
} | tee "$work/result.txt"
