#!/usr/bin/env bash
# Benchmark: `sealer run` of a ~500 MiB image onto 8 testbed hosts whose links are shaped with
# `tc tbf` to the same rate B, against the lower bound compressed_size / B (every host fed in
# parallel on its own link) and against the baseline sealer (Go) used: `scp -r` of the uncompressed
# root filesystem to every host in parallel. Everything is measured in the same run. Prints total
# install time, the bound, ours / bound (target <= 1.5), the baseline and our speedup over it
# (target >= 3), and the peak RSS of the installing process (target < 256 MiB).
#
# Usage (root; needs the testbed's packages, see scripts/ci-deps.sh):
#   scripts/bench-install.sh [--rate 25mbit] [--hosts 8] [--size-mib 512] [--keep]
#
# Release binaries are built first. The generated root filesystem (seeded, deterministic) is cached
# in $BENCH_CACHE (/var/tmp/sealer-bench-install-cache); everything else (store, testbed, logs)
# is created fresh and removed on exit, also on failure or Ctrl-C (--keep leaves the logs).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

rate=25mbit
hosts=8
size_mib=512
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --hosts) hosts=$2; shift 2 ;;
        --size-mib) size_mib=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--rate RATE] [--hosts N] [--size-mib MIB] [--keep]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "bench-install: must run as root (the testbed uses netns and tc)" >&2; exit 1; }
[[ "$rate" =~ ^([0-9]+)mbit$ ]] || { echo "bench-install: --rate must be given in mbit (e.g. 25mbit)" >&2; exit 2; }
rate_mbit=${BASH_REMATCH[1]}
for tool in python3 scp /usr/bin/time bc tc; do
    command -v "$tool" >/dev/null || { echo "bench-install: missing $tool" >&2; exit 1; }
done

testbed="$repo/tests/testbed/testbed.sh"
tb_name=bench-install
log() { printf 'bench-install: %s\n' "$*" >&2; }
now() { date +%s.%N; }

work=$(mktemp -d /var/tmp/sealer-bench-install.XXXXXX)
cleanup() {
    local rc=$?
    "$testbed" down --name "$tb_name" >/dev/null 2>&1 || true
    if [ "$keep" = 1 ]; then
        rm -rf "$work/store"
        log "logs kept in $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building release binaries"
cargo build --release --bins >/dev/null 2>"$work/cargo.log" || { cat "$work/cargo.log" >&2; exit 1; }
bin="$repo/target/x86_64-unknown-linux-gnu/release/sealer"
export SEALER_STUB="$repo/target/x86_64-unknown-linux-gnu/release/sealer-stub"

# --- The image: a root filesystem that compresses like installed software -------------------
gen_version=1
cache=${BENCH_CACHE:-/var/tmp/sealer-bench-install-cache}
ctx="$cache/ctx-${size_mib}m-g$gen_version"
if [ ! -f "$ctx/.complete" ]; then
    log "generating a $size_mib MiB root filesystem in $ctx"
    mkdir -p "$cache"
    rm -rf "$ctx" "$ctx.tmp"
    mkdir -p "$ctx.tmp/rootfs"
    python3 - "$ctx.tmp/rootfs" "$size_mib" <<'PY'
# Text (docs, configs, scripts: Zipf-distributed words), binary-like executables and libraries
# (Zipf-distributed instruction-like snippets over a skewed byte alphabet) and already-compressed
# assets (random bytes), from a seeded PRNG: about 2.2x with zstd -3, like a typical software image.
import os, random, sys

def sampler(items, exponent):
    weights = [1.0 / (i + 1) ** exponent for i in range(len(items))]
    total, table, acc = sum(weights), [], 0.0
    for item, w in zip(items, weights):
        acc += w
        while len(table) < round(acc / total * 65536):
            table.append(item)
    table += [items[0]] * (65536 - len(table))
    return table

root, total_mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(4)
letters = "abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJ"
words = ["".join(rnd.choice(letters) for _ in range(rnd.randint(2, 11))) for _ in range(20000)]
words += ["\n"] * 1500 + ["\n    "] * 600 + ["{", "}", "=", "(", ")", "return", "the", "if"] * 60
rnd.shuffle(words)
wtable = sampler(words, 1.0)
common = [0x00] * 12 + [0xff] * 3 + [0x48, 0x89, 0x8b, 0xe8, 0x0f, 0x83, 0xc0, 0x24, 0x44, 0x85, 0x74, 0x75]
snippets = [bytes(rnd.choice(common) if rnd.random() < 0.6 else rnd.randrange(256)
                  for _ in range(rnd.randint(2, 10))) for _ in range(30000)]
btable = sampler(snippets, 0.9)

def indices(k):
    return memoryview(rnd.randbytes(2 * k)).cast("H")

def text(n):
    out, size = [], 0
    while size < n:
        s = " ".join(map(wtable.__getitem__, indices(min(1 << 16, (n - size) // 5 + 16)))).encode()
        out.append(s)
        size += len(s)
    return b"".join(out)[:n]

def binary(n):
    out, size = [], 0
    while size < n:
        s = b"".join(map(btable.__getitem__, indices(min(1 << 16, (n - size) // 4 + 16))))
        out.append(s)
        size += len(s)
    return b"".join(out)[:n]

budget, files = total_mib << 20, 0
for kind, share in (("text", 0.45), ("binary", 0.45), ("noise", 0.10)):
    left, i = int(budget * share), 0
    while left > 0:
        if kind == "text":
            n, path = int(rnd.lognormvariate(9.3, 1.3)) + 100, f"usr/share/doc/p{i // 200:03d}/f{i:05d}.txt"
        elif kind == "binary" and i % 8 == 0:
            n, path = rnd.choice([1, 2, 4, 8, 16, 32]) << 20, f"usr/bin/prog{i:04d}"
        elif kind == "binary":
            n, path = int(rnd.lognormvariate(11.5, 1.2)), f"usr/lib/p{i // 100:03d}/lib{i:05d}.so"
        else:
            n, path = rnd.randint(64 << 10, 4 << 20), f"usr/share/assets/a{i:04d}.gz"
        n = min(n, left)
        data = text(n) if kind == "text" else binary(n) if kind == "binary" else rnd.randbytes(n)
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        os.chmod(full, 0o755 if path.startswith("usr/bin/") else 0o644)
        left, i, files = left - n, i + 1, files + 1
print(f"{files} files")
PY
    printf 'FROM scratch\nCOPY rootfs/usr /usr\n' >"$ctx.tmp/Kubefile"
    touch "$ctx.tmp/.complete"
    mv "$ctx.tmp" "$ctx"
fi
rootfs_bytes=$(du -sb "$ctx/rootfs" | cut -f1)
rootfs_files=$(find "$ctx/rootfs" -type f | wc -l)

log "sealer build"
export SEALER_ROOT="$work/store"
"$bin" build -t bench/install:1 "$ctx" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
compressed_bytes=$(python3 - "$SEALER_ROOT/oci" <<'PY'
import json, sys
oci = sys.argv[1]
def blob(d):
    return json.load(open(f"{oci}/blobs/{d.replace(':', '/')}"))
index = json.load(open(f"{oci}/index.json"))
m = next(m for m in index["manifests"]
         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "bench/install:1")
print(sum(l["size"] for l in blob(m["digest"])["layers"]))
PY
)

# --- Testbed: N hosts, every link shaped to B ------------------------------------------------
log "starting $hosts testbed hosts"
"$testbed" up --name "$tb_name" --hosts "$hosts" >"$work/testbed.txt" 2>"$work/testbed.log" \
    || { cat "$work/testbed.log" >&2; exit 1; }
mapfile -t ips < <(awk '$1 == "host" {print $3}' "$work/testbed.txt")
key=$(awk '$1 == "key" {print $2}' "$work/testbed.txt")
known_hosts=$(awk '$1 == "known-hosts" {print $2}' "$work/testbed.txt")
for ip in "${ips[@]}"; do "$testbed" shape "$tb_name" "$ip" "$rate"; done
nodes=$(IFS=,; echo "${ips[*]:1}")

# --- Ours: sealer run ------------------------------------------------------------------------
log "sealer run onto ${#ips[@]} hosts at $rate each"
t0=$(now)
set +e
/usr/bin/time -v -o "$work/run.time" "$bin" run bench/install:1 -m "${ips[0]}" ${nodes:+-n "$nodes"} \
    --pk "$key" --known-hosts "$known_hosts" 2>&1 \
    | while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$work/run.log"
run_rc=${PIPESTATUS[0]}
set -e
[ "$run_rc" = 0 ] || { cat "$work/run.log" >&2; log "sealer run failed (exit $run_rc)"; exit 1; }
t1=$(now)
ours=$(echo "$t1 - $t0" | bc -l)
rss_kib=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/run.time")

# Every host must hold the whole tree.
for i in "${!ips[@]}"; do
    got=$("$testbed" exec "$tb_name" "${ips[$i]}" \
        "find /var/lib/sealer/data/my-cluster/rootfs/usr -type f | wc -l")
    [ "$got" = "$rootfs_files" ] || { log "host ${ips[$i]} has $got of $rootfs_files files after sealer run"; exit 1; }
done

# --- Transport floor: the same compressed bytes through OpenSSH to every host, nothing else ----
# What this machine's links and CPUs deliver for the layer (ssh -c aes128-gcm, cat > /dev/null):
# the gap between it and the bound is the machine, the gap between it and sealer run is ours.
log "floor: ssh cat of the compressed layer onto ${#ips[@]} hosts at $rate each"
mapfile -t blobs < <(python3 - "$SEALER_ROOT/oci" <<'PY'
import json, sys
oci = sys.argv[1]
index = json.load(open(f"{oci}/index.json"))
m = next(m for m in index["manifests"]
         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "bench/install:1")
for layer in json.load(open(f"{oci}/blobs/{m['digest'].replace(':', '/')}"))["layers"]:
    print(f"{oci}/blobs/{layer['digest'].replace(':', '/')}")
PY
)
t4=$(now)
pids=()
for ip in "${ips[@]}"; do
    cat "${blobs[@]}" | ssh -c aes128-gcm@openssh.com -i "$key" -o BatchMode=yes \
        -o UserKnownHostsFile="$known_hosts" -o StrictHostKeyChecking=yes "root@$ip" 'cat > /dev/null' &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { log "ssh cat failed"; exit 1; }; done
t5=$(now)
floor=$(echo "$t5 - $t4" | bc -l)

# --- Baseline: scp -r of the uncompressed rootfs to every host in parallel -------------------
log "baseline: scp -r onto ${#ips[@]} hosts at $rate each"
t2=$(now)
pids=()
for ip in "${ips[@]}"; do
    scp -r -q -i "$key" -o BatchMode=yes -o UserKnownHostsFile="$known_hosts" \
        -o StrictHostKeyChecking=yes "$ctx/rootfs" "root@$ip:/var/tmp/scp-rootfs" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { log "scp failed"; exit 1; }; done
t3=$(now)
scp_time=$(echo "$t3 - $t2" | bc -l)

# --- Report ----------------------------------------------------------------------------------
bytes_per_s=$((rate_mbit * 1000000 / 8))
bound=$(echo "$compressed_bytes / $bytes_per_s" | bc -l)
mib() { echo "$1 / 1048576" | bc -l; }
{
    printf '\n'
    printf 'image: %d files, %.1f MiB uncompressed, %.1f MiB compressed (%.2fx)\n' \
        "$rootfs_files" "$(mib "$rootfs_bytes")" "$(mib "$compressed_bytes")" \
        "$(echo "$rootfs_bytes / $compressed_bytes" | bc -l)"
    printf 'hosts: %d, each link shaped to %s (tc tbf, both directions)\n\n' "${#ips[@]}" "$rate"
    printf '%-44s %10s  %s\n' "measure" "value" "target"
    printf '%-44s %9.1fs\n' "sealer run (total install time)" "$ours"
    printf '%-44s %9.1fs\n' "lower bound: compressed size / B" "$bound"
    printf '%-44s %9.2fx  <= 1.5\n' "ours / bound" "$(echo "$ours / $bound" | bc -l)"
    printf '%-44s %9.1fs\n' "floor: ssh cat of the layer, all hosts" "$floor"
    printf '%-44s %9.2fx\n' "ours / floor" "$(echo "$ours / $floor" | bc -l)"
    printf '%-44s %9.1fs\n' "baseline: scp -r of the rootfs, all hosts" "$scp_time"
    printf '%-44s %9.2fx  >= 3\n' "speedup over the baseline" "$(echo "$scp_time / $ours" | bc -l)"
    printf '%-44s %6d MiB  < 256 MiB\n' "peak RSS of sealer run" "$((rss_kib / 1024))"
} | tee "$work/result.txt"
