#!/usr/bin/env bash
# Benchmarks of the .run format, each printed as a ratio against a baseline measured in the
# same run (not a timed test; run by hand or in CI on a quiet machine):
#
#   extract : `app.run extract` vs `tar -I zstd -xf` of the same layer blobs   (target <= 0.7)
#   pack    : packing the blobs into a .run vs `cp` of the blobs                (target <= 1.5)
#   inspect : `app.run inspect` on a multi-GB .run file                         (target < 100 ms)
#   rss     : peak RSS of `app.run extract` (/usr/bin/time -v)                  (target < 256 MiB)
#   stub    : size of the release stub
#
# Corpus (~1 GiB): layer 1 = /usr/share (many small files), layer 2 = /usr/lib/llvm-14
# (large files); override with BENCH_SMALL / BENCH_LARGE. Scratch space: BENCH_DIR; both
# extractions go to EXTRACT_DIR (default BENCH_DIR; /dev/shm/... takes the disk out).
set -euo pipefail

cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/tmp/sealer-bench}
SMALL=${BENCH_SMALL:-/usr/share}
LARGE=${BENCH_LARGE:-/usr/lib/llvm-14}
EXTRACT_DIR=${EXTRACT_DIR:-$BENCH_DIR}
REPEAT_FOR_BIG=${BENCH_REPEAT:-6}
TARGET=target/x86_64-unknown-linux-gnu/release

cargo build --release --bin sealer-stub -q
cargo build --release -p packer --example bench_pack -q
STUB=$TARGET/sealer-stub
TOOL=$TARGET/examples/bench_pack

mkdir -p "$BENCH_DIR" "$EXTRACT_DIR"
# Blobs with their frame index beside them, as the image store keeps them (`sealer pack` then
# copies frames without reading them); a blob without its index is rebuilt.
if [[ ! -f $BENCH_DIR/small.tar.frames.json || ! -f $BENCH_DIR/large.tar.frames.json ]]; then
  echo "building layer blobs from $SMALL and $LARGE (zstd -3, 16 MiB frames)..."
  "$TOOL" layer "$SMALL" "$BENCH_DIR/small.tar.zst" 3
  "$TOOL" layer "$LARGE" "$BENCH_DIR/large.tar.zst" 3
fi
BLOBS=("$BENCH_DIR/small.tar.zst" "$BENCH_DIR/large.tar.zst")

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc -l; }
best() { # best of 2 runs of a command; prints seconds
  local b=999999 t0 t1 d
  for _ in 1 2; do
    "$@" pre
    t0=$(now); "$@" run; t1=$(now)
    d=$(elapsed "$t0" "$t1")
    if (( $(echo "$d < $b" | bc -l) )); then b=$d; fi
  done
  echo "$b"
}
ratio() { printf '%.3f' "$(echo "$1 / $2" | bc -l)"; }

# Warm the page cache for the inputs so both sides read from memory.
cat "${BLOBS[@]}" > /dev/null

# --- pack vs cp -----------------------------------------------------------------------------
cp_blobs() {
  case $1 in
    pre) rm -rf "$BENCH_DIR/cp"; mkdir -p "$BENCH_DIR/cp"; sync ;;
    run) cp "${BLOBS[@]}" "$BENCH_DIR/cp/" ;;
  esac
}
pack_blobs() {
  case $1 in
    pre) rm -f "$BENCH_DIR/app.run"; sync ;;
    run) "$TOOL" pack "$STUB" "$BENCH_DIR/app.run" "${BLOBS[@]}" > /dev/null ;;
  esac
}
t_cp=$(best cp_blobs)
t_pack=$(best pack_blobs)
rm -rf "$BENCH_DIR/cp"

# --- extract vs GNU tar + zstd --------------------------------------------------------------
tar_extract() {
  case $1 in
    pre) rm -rf "$EXTRACT_DIR/x-tar"; mkdir -p "$EXTRACT_DIR/x-tar"; sync ;;
    run) for blob in "${BLOBS[@]}"; do tar -I zstd -xf "$blob" -C "$EXTRACT_DIR/x-tar"; done ;;
  esac
}
run_extract() {
  case $1 in
    pre) rm -rf "$EXTRACT_DIR/x-run"; sync ;;
    run) "$BENCH_DIR/app.run" extract "$EXTRACT_DIR/x-run" > /dev/null 2>&1 ;;
  esac
}
cat "$BENCH_DIR/app.run" > /dev/null
t_tar=$(best tar_extract)
t_run=$(best run_extract)
if ! diff -r --no-dereference -q "$EXTRACT_DIR/x-tar" "$EXTRACT_DIR/x-run" > /dev/null; then
  echo "WARNING: the two extracted trees differ" >&2
fi

# --- peak RSS of extract --------------------------------------------------------------------
rm -rf "$EXTRACT_DIR/x-run"
rss_kb=$(/usr/bin/time -v "$BENCH_DIR/app.run" extract "$EXTRACT_DIR/x-run" 2>&1 >/dev/null |
  awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}')
rm -rf "$EXTRACT_DIR/x-run" "$EXTRACT_DIR/x-tar"

# --- inspect on a multi-GB file -------------------------------------------------------------
BIG_BLOBS=()
for _ in $(seq "$REPEAT_FOR_BIG"); do BIG_BLOBS+=("${BLOBS[@]}"); done
"$TOOL" pack "$STUB" "$BENCH_DIR/big.run" "${BIG_BLOBS[@]}" > /dev/null
big_size=$(stat -c %s "$BENCH_DIR/big.run")
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true   # cold cache when allowed
t0=$(now); "$BENCH_DIR/big.run" inspect > /dev/null; t1=$(now)
t_inspect_cold=$(elapsed "$t0" "$t1")
t0=$(now); "$BENCH_DIR/big.run" inspect --json > /dev/null; t1=$(now)
t_inspect=$(elapsed "$t0" "$t1")
rm -f "$BENCH_DIR/big.run"

blob_bytes=$(cat "${BLOBS[@]}" | wc -c)
tar_bytes=$(du -sb "$SMALL" "$LARGE" | awk '{s += $1} END {print s}')
stub_size=$(stat -c %s "$STUB")

echo
echo "extracting into $EXTRACT_DIR ($(stat -f -c %T "$EXTRACT_DIR")), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "corpus: $SMALL + $LARGE ($((tar_bytes >> 20)) MiB of files, $((blob_bytes >> 20)) MiB of zstd blobs), $(nproc) CPUs"
printf 'extract  app.run %.2f s   tar -I zstd -xf %.2f s   ratio %s (target <= 0.7)\n' "$t_run" "$t_tar" "$(ratio "$t_run" "$t_tar")"
printf 'pack     %.2f s   cp %.2f s   ratio %s (target <= 1.5)\n' "$t_pack" "$t_cp" "$(ratio "$t_pack" "$t_cp")"
printf 'inspect  %.1f ms cold, %.1f ms warm on a %.1f GiB file (target < 100 ms)\n' \
  "$(echo "$t_inspect_cold * 1000" | bc -l)" "$(echo "$t_inspect * 1000" | bc -l)" "$(echo "$big_size / 1073741824" | bc -l)"
printf 'rss      peak %d MiB during extract (target < 256 MiB)\n' "$((rss_kb / 1024))"
printf 'stub     %d bytes (%.1f MiB), %s\n' "$stub_size" "$(echo "$stub_size / 1048576" | bc -l)" "$(file -b "$STUB" | cut -d, -f1-5)"
