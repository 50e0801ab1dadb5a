#!/usr/bin/env bash
# Benchmark (issue 16 item 5): the agent's upload to hosts whose links are shaped with `tc tbf`
# to B (10 Mbit/s by default), compressed (the hosts have gzip, as every Debian and RHEL base
# does) against as it is (gzip hidden on every host, so the installer falls back to the plain
# upload, which is what every install did before), alternated in pairs on the same hosts.
#
# Each run installs a one-file image into a fresh data root, so every host lacks the agent and
# receives it. Per host: the time of its `prepare` stage (`sealer run -v`: the upload, the
# host's gunzip and sha256 check, and the journal read) and the agent's bytes sent
# (`agent_bytes_sent` of `--json`); the installer's CPU (user + system, which includes
# compressing the agent once per run). Prints medians over the hosts and runs, the ratio
# compressed/plain of the upload time, and each mode's time against its bound (bytes / B).
#
# Usage (root; needs the testbed's packages, see scripts/ci-deps.sh):
#   scripts/bench-agent-upload.sh [--hosts 4] [--rate 10mbit] [--pairs 2] [--keep]
#   BIN_DIR=DIR scripts/bench-agent-upload.sh ...   (release binaries built elsewhere)
#
# Everything (store, testbed, logs) is created fresh and removed on exit, also on failure or
# Ctrl-C (--keep leaves the logs).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

hosts=4
rate=10mbit
pairs=2
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) hosts=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --pairs) pairs=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--hosts N] [--rate RATE] [--pairs N] [--keep]" >&2; exit 2 ;;
    esac
done
[[ $rate =~ ^([0-9]+)mbit$ ]] || { echo "bench-agent-upload: --rate must be Nmbit" >&2; exit 2; }
rate_mbit=${BASH_REMATCH[1]}
[ "$(id -u)" -eq 0 ] || { echo "bench-agent-upload: must run as root (testbed)" >&2; exit 1; }
for tool in python3 ssh tc; do
    command -v "$tool" >/dev/null || { echo "bench-agent-upload: missing $tool" >&2; exit 1; }
done

testbed="$repo/tests/testbed/testbed.sh"
tb_name=bench-agent
log() { printf 'bench-agent-upload: %s\n' "$*" >&2; }

work=$(mktemp -d /var/tmp/sealer-bench-agent.XXXXXX)
cleanup() {
    local rc=$?
    "$testbed" down --name "$tb_name" >/dev/null 2>&1 || true
    if [ "$keep" = 1 ]; then
        rm -rf "$work/store" "$work/ctx"
        log "logs kept in $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z ${BIN_DIR:-} ]]; then
    log "building release binaries"
    cargo build --release --bins >/dev/null 2>"$work/cargo.log" || { cat "$work/cargo.log" >&2; exit 1; }
    BIN_DIR="${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu/release"
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd)
bin=$BIN_DIR/sealer
export SEALER_STUB=$BIN_DIR/sealer-stub
export SEALER_ROOT="$work/store"
agent_bytes=$(stat -c %s "$SEALER_STUB")

mkdir -p "$work/ctx"
printf 'FROM scratch\nCOPY a a\n' >"$work/ctx/Kubefile"
echo a >"$work/ctx/a"
"$bin" build -t bench/agent:1 "$work/ctx" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }

log "starting $hosts testbed hosts, each link at $rate"
"$testbed" up --name "$tb_name" --hosts "$hosts" >"$work/testbed.txt" 2>"$work/testbed.log" \
    || { cat "$work/testbed.log" >&2; exit 1; }
mapfile -t ips < <(awk '$1 == "host" {print $3}' "$work/testbed.txt")
key=$(awk '$1 == "key" {print $2}' "$work/testbed.txt")
known_hosts=$(awk '$1 == "known-hosts" {print $2}' "$work/testbed.txt")
for ip in "${ips[@]}"; do "$testbed" shape "$tb_name" "$ip" "$rate"; done
node_ips=$(IFS=,; echo "${ips[*]:1}")

# gzip on every host: hidden (`off`) or back (`on`).
gzip_on_hosts() {
    local i cmd
    if [ "$1" = off ]; then
        cmd='g=$(command -v gzip) && mv "$g" "$g.bench-hidden"'
    else
        cmd='for g in /usr/bin/gzip /bin/gzip; do [ -e "$g.bench-hidden" ] && mv "$g.bench-hidden" "$g"; done; true'
    fi
    for i in $(seq 1 "${#ips[@]}"); do
        "$testbed" exec "$tb_name" "$i" "$cmd" >/dev/null
    done
}

# One install into a fresh data root; $1: mode (gzip|plain), $2: run number.
run() {
    local name="$1-$2"
    [ "$1" = plain ] && gzip_on_hosts off
    log "sealer run, agent $1 (run $2)"
    /usr/bin/time -f '%U %S' -o "$work/$name.time" \
        "$bin" run bench/agent:1 -m "${ips[0]}" ${node_ips:+-n "$node_ips"} --pk "$key" \
        --known-hosts "$known_hosts" --data-root "/var/lib/bench-agent-$name" -v --json \
        >"$work/$name.json" 2>"$work/$name.log" || { gzip_on_hosts on; cat "$work/$name.log" >&2; exit 1; }
    [ "$1" = plain ] && gzip_on_hosts on
    return 0
}
for i in $(seq 1 "$pairs"); do
    if [ $((i % 2)) = 1 ]; then run plain "$i"; run gzip "$i"; else run gzip "$i"; run plain "$i"; fi
done

python3 - "$work" "$pairs" "$rate_mbit" "$agent_bytes" <<'PY'
import json, re, statistics, sys
work, pairs, mbit, agent_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
bps = mbit * 1e6 / 8
out = {}
for mode in ("plain", "gzip"):
    times, sent, cpu = [], [], []
    for i in range(1, pairs + 1):
        name = f"{work}/{mode}-{i}"
        report = json.load(open(name + ".json"))
        sent += [h["agent_bytes_sent"] for h in report["hosts"]]
        times += [float(m.group(1)) for m in re.finditer(r"^\[[^\]]+\] prepare: ([0-9.]+) s$",
                                                        open(name + ".log").read(), re.M)]
        u, s = open(name + ".time").read().split()
        cpu.append(float(u) + float(s))
    out[mode] = (statistics.median(times), statistics.median(sent), statistics.median(cpu), len(times))
p, g = out["plain"], out["gzip"]
print(f"agent: {agent_bytes / 2**20:.1f} MiB; {p[3]} host uploads per mode; links at {mbit} Mbit/s")
print(f"{'':28} {'plain':>10} {'gzip':>10} {'ratio':>8}")
print(f"{'agent bytes sent (MiB)':28} {p[1] / 2**20:10.2f} {g[1] / 2**20:10.2f} {g[1] / p[1]:8.2f}")
print(f"{'prepare per host (s, median)':28} {p[0]:10.2f} {g[0]:10.2f} {g[0] / p[0]:8.2f}")
print(f"{'bound: bytes / B (s)':28} {p[1] / bps:10.2f} {g[1] / bps:10.2f}")
print(f"{'time / bound':28} {p[0] / (p[1] / bps):10.2f} {g[0] / (g[1] / bps):10.2f}")
print(f"{'installer CPU (s, median)':28} {p[2]:10.2f} {g[2]:10.2f}")
PY
