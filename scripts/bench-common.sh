# The preamble shared by the benchmarks that install onto testbed hosts (bench-install.sh,
# bench-install-images.sh, bench-scale.sh, bench-bastion.sh, bench-lifecycle.sh,
# bench-upgrade.sh): sourced by each after it has read its flags, it checks root, the rate and
# the tools, makes the work directory (removed on exit, also on failure or Ctrl-C), and gives
# the helpers that take the release binaries and start and read the testbed. It measures
# nothing and prints nothing on stdout.
#
# Before sourcing, a script sets:
#   bench        its name, for messages and the work directory (bench-lifecycle)
#   tb_name      the testbed's name
#   keep         1 to keep the logs in $work on exit (--keep)
#   rate         the hosts' link rate in mbit (25mbit); rate_mbit is set from it
#   bench_tools  the commands it needs (python3 bc tc ...)
# and may set keep_drop (paths under $work removed on exit even with --keep: the store, large
# files; globs allowed) and define bench_on_exit (run on exit after the testbed is down: stop a
# sampler or a registry, remove a cgroup).
#
# It sets repo (the checkout; the working directory is it), testbed, work, rate_mbit, and
# defines:
#   log TEXT...        a line on stderr, prefixed with the script's name
#   now                the time in seconds (date +%s.%N)
#   bench_release      $bin and $release (BIN_DIR, or a release build of this checkout) and
#                      exports SEALER_STUB and SEALER_ROOT ($work/store)
#   bench_real_corpus  ctx: bench-install.sh's cached 512 MiB real corpus (or fails saying
#                      how to make it)
#   bench_testbed_up N starts N hosts: all_ips, all_ns, key, known_hosts, gateway

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
testbed="$repo/tests/testbed/testbed.sh"
keep_drop=${keep_drop:-store}

log() { printf '%s: %s\n' "$bench" "$*" >&2; }
now() { date +%s.%N; }

[ "$(id -u)" -eq 0 ] || { echo "$bench: must run as root (the testbed uses netns and tc)" >&2; exit 1; }
[[ "$rate" =~ ^([0-9]+)mbit$ ]] || { echo "$bench: --rate must be given in mbit (e.g. 25mbit)" >&2; exit 2; }
rate_mbit=${BASH_REMATCH[1]}
for tool in $bench_tools; do
    command -v "$tool" >/dev/null || { echo "$bench: missing $tool" >&2; exit 1; }
done

work=$(mktemp -d "/var/tmp/sealer-$bench.XXXXXX")
bench_cleanup() {
    local rc=$? path
    "$testbed" down --name "$tb_name" >/dev/null 2>&1 || true
    if declare -F bench_on_exit >/dev/null; then bench_on_exit || true; fi
    if [ "$keep" = 1 ]; then
        for path in $keep_drop; do rm -rf "${work:?}"/$path; done
        log "logs kept in $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

bench_release() {
    if [ -z "${BIN_DIR:-}" ]; then
        log "building release binaries"
        cargo build --release --bins >/dev/null 2>"$work/cargo.log" || { cat "$work/cargo.log" >&2; exit 1; }
        BIN_DIR="${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu/release"
    fi
    release=$(cd "$BIN_DIR" && pwd)
    bin=$release/sealer
    export SEALER_STUB=$release/sealer-stub
    export SEALER_ROOT="$work/store"
}

bench_real_corpus() {
    local cache=${BENCH_CACHE:-/var/tmp/sealer-bench-install-cache}
    ctx="$cache/ctx-real-512m-r1"
    [ -f "$ctx/.complete" ] || { echo "$bench: no image context in $ctx; run scripts/bench-install.sh once" >&2; exit 1; }
}

bench_testbed_up() {
    log "starting $1 testbed hosts"
    "$testbed" up --name "$tb_name" --hosts "$1" >"$work/testbed.txt" 2>"$work/testbed.log" \
        || { cat "$work/testbed.log" >&2; exit 1; }
    mapfile -t all_ips < <(awk '$1 == "host" {print $3}' "$work/testbed.txt")
    mapfile -t all_ns < <(awk '$1 == "host" {print $5}' "$work/testbed.txt")
    key=$(awk '$1 == "key" {print $2}' "$work/testbed.txt")
    known_hosts=$(awk '$1 == "known-hosts" {print $2}' "$work/testbed.txt")
    gateway=$(awk '$1 == "bridge" {print $3}' "$work/testbed.txt")
}
