#!/usr/bin/env bash
# Benchmark: `sealer build` of a ~1 GiB context (many small files and a few large ones) against
# `tar -cf - CONTEXT | zstd -T0 -3` of the same context, measured in the same run. Prints both
# times, the ratio (ours / baseline; target <= 1.0) and our peak RSS (target well under 512 MiB).
#
# Also prints the CPU time (user + system) of both sides, which a busy machine disturbs far less
# than wall time.
#
# Usage: scripts/bench-build.sh [SIZE_MIB]   (default 1024; builds release binaries first)
#        SEALER_BIN=/path/to/sealer scripts/bench-build.sh 512   (measure another build of sealer)
#        scripts/bench-build.sh --real [ROUNDS]   (the real-software corpus, see below)
#
# --real: the install benchmark's real corpus (files copied from this machine's software by
# `scripts/bench-install.sh --corpus real`, cached in $BENCH_CACHE, default
# /var/tmp/sealer-bench-install-cache; run that once first) plus a mesa-style hard-linked case
# (`usr/lib/x86_64-linux-gnu/dri/`: one 25 MiB file of shared-library bytes with 13 names, as
# the *_dri.so drivers are), in a hard-linked copy of the tree. ROUNDS rounds (default 3), the
# two sides alternated; prints each round and the medians: CPU (user + sys) and wall, and the
# bytes stored (the layer blob) against the tar.zst. Targets: CPU and wall <= 1.0, bytes <= 1.02.
# The bill of materials step is off (SEALER_BUILD_SBOM=0): it is measured on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --real ]; then
  rounds=${2:-3}
  if [ -z "${SEALER_BIN:-}" ]; then
    cargo build --release --bins >/dev/null
  fi
  bin="${SEALER_BIN:-$PWD/target/x86_64-unknown-linux-gnu/release/sealer}"
  cache=${BENCH_CACHE:-/var/tmp/sealer-bench-install-cache}
  src="$cache/ctx-real-512m-r1"
  [ -f "$src/.complete" ] || { echo "bench-build: no real corpus in $src; run scripts/bench-install.sh --corpus real once first" >&2; exit 1; }
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/sealer-bench-build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  ctx="$work/ctx"
  mkdir -p "$ctx"
  cp -al "$src/rootfs" "$ctx/rootfs"
  dri="$ctx/rootfs/usr/lib/x86_64-linux-gnu/dri"
  mkdir -p "$dri"
  # shellcheck disable=SC2046
  { cat $(ls -S /usr/lib/x86_64-linux-gnu/*.so* | head -40) | head -c $((25 << 20)) >"$dri/radeonsi_dri.so"; } || true
  for n in crocus d3d12 i915 iris kms_swrast nouveau r300 r600 radeon swrast virtio zink; do
    ln "$dri/radeonsi_dri.so" "$dri/${n}_dri.so"
  done
  printf 'FROM scratch\nCOPY rootfs/usr /usr\n' >"$ctx/Kubefile"
  read -r files bytes < <(find "$ctx/rootfs" -type f -printf '%s\n' | awk '{n++; s+=$1} END {print n, s}')
  echo "corpus: $files names, $((bytes >> 20)) MiB counting every name ($(du -sh "$ctx/rootfs" | cut -f1) on disk); dri/: 1 file of 25 MiB with 13 names"
  sync
  secs() { /usr/bin/time -f '%e %U %S' -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; awk '{printf "%.2f %.2f\n", $1, $2 + $3}' "$work/t"; }
  median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
  : >"$work/rows"
  for r in $(seq "$rounds"); do
    read -r bw bc < <(secs bash -c 'tar -C "$1" -cf - rootfs | zstd -T0 -3 -q -o "$2" -f' _ "$ctx" "$work/base.tar.zst")
    rm -rf "$work/store"
    read -r sw sc < <(SEALER_ROOT="$work/store" SEALER_BUILD_SBOM=0 secs "$bin" build --no-cache -t bench:1 "$ctx")
    base_bytes=$(stat -c %s "$work/base.tar.zst")
    layer=$(SEALER_ROOT="$work/store" "$bin" inspect bench:1 | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(l["size"] for l in d["layers"]))')
    printf 'round %d: tar | zstd -3 -T0 %.2f s wall, %.2f s CPU, %d B; sealer build %.2f s wall, %.2f s CPU, %d B (load %s)\n' \
      "$r" "$bw" "$bc" "$base_bytes" "$sw" "$sc" "$layer" "$(cut -d' ' -f1 /proc/loadavg)"
    echo "$bw $bc $base_bytes $sw $sc $layer" >>"$work/rows"
  done
  col() { awk -v c="$1" '{print $c}' "$work/rows" | median; }
  bw=$(col 1); bc=$(col 2); bb=$(col 3); sw=$(col 4); sc=$(col 5); sb=$(col 6)
  printf 'median: tar | zstd %.2f s wall %.2f s CPU %d B; sealer build %.2f s wall %.2f s CPU %d B\n' "$bw" "$bc" "$bb" "$sw" "$sc" "$sb"
  printf 'ratio (sealer / tar | zstd): CPU %.2f, wall %.2f (targets <= 1.00), bytes %.3f (target <= 1.02)\n' \
    "$(echo "$sc / $bc" | bc -l)" "$(echo "$sw / $bw" | bc -l)" "$(echo "$sb / $bb" | bc -l)"
  exit 0
fi
size_mib=${1:-1024}
if [ -z "${SEALER_BIN:-}" ]; then
  cargo build --release --bins >/dev/null
fi
bin="${SEALER_BIN:-$PWD/target/x86_64-unknown-linux-gnu/release/sealer}"
work=$(mktemp -d "${TMPDIR:-/tmp}/sealer-bench-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
ctx="$work/ctx"
mkdir -p "$ctx/small" "$ctx/large"

# Half the bytes in ~8 KiB text-like files (compressible), half in a few large binary-like files.
small_total=$((size_mib / 2))
python3 - "$ctx" "$small_total" "$((size_mib - small_total))" <<'PY'
import os, random, sys
ctx, small_mib, large_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(42)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(4000)]
def text(n):
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rnd.choice(words) for _ in range(16)) + b"\n"
    return bytes(out[:n])
block = text(1 << 20)
written, i = 0, 0
while written < small_mib << 20:
    n = rnd.randint(1024, 16384)
    d = os.path.join(ctx, "small", f"d{i // 500:03d}")
    os.makedirs(d, exist_ok=True)
    off = rnd.randint(0, len(block) - n)
    with open(os.path.join(d, f"f{i:06d}.txt"), "wb") as f:
        f.write(block[off:off + n])
    written += n
    i += 1
half_random = os.urandom(1 << 20)
for j in range(4):
    with open(os.path.join(ctx, "large", f"blob{j}.bin"), "wb") as f:
        for k in range((large_mib << 20) // 4 // (1 << 20)):
            f.write(half_random[: 1 << 19] + block[(k * 4096) % (1 << 19):][: 1 << 19])
print(f"context: {i} small files, 4 large files")
PY
printf 'FROM scratch\nCOPY small /data/small\nCOPY large /data/large\n' > "$ctx/Kubefile"
du -sh "$ctx" | sed 's/^/context size: /'
sync

now() { date +%s.%N; }
t0=$(now)
/usr/bin/time -f '%U %S' -o "$work/base-cpu" bash -c 'tar -C "$1" -cf - . | zstd -T0 -3 -q -o "$2"' _ "$ctx" "$work/baseline.tar.zst"
t1=$(now)
SEALER_ROOT="$work/store" /usr/bin/time -v "$bin" build --no-cache -t bench:1 "$ctx" >"$work/build.log" 2>"$work/time.log"
t2=$(now)
base=$(echo "$t1 - $t0" | bc -l)
ours=$(echo "$t2 - $t1" | bc -l)
rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/time.log")
printf 'baseline tar | zstd -T0 -3: %.2f s (%s)\n' "$base" "$(du -h "$work/baseline.tar.zst" | cut -f1)"
printf 'sealer build --no-cache:    %.2f s (%s)\n' "$ours" "$(du -sh "$work/store/oci/blobs" | cut -f1)"
printf 'ratio (ours / baseline):    %.2f   (target <= 1.00)\n' "$(echo "$ours / $base" | bc -l)"
printf 'sealer build peak RSS:      %d MiB (target < 512)\n' "$((rss / 1024))"
base_cpu=$(awk '{print $1 + $2}' "$work/base-cpu")
ours_cpu=$(awk -F: '/User time|System time/ {s += $2} END {print s}' "$work/time.log")
printf 'CPU (user+sys): baseline %.2f s, sealer build %.2f s, ratio %.2f\n' "$base_cpu" "$ours_cpu" "$(echo "$ours_cpu / $base_cpu" | bc -l)"
