#!/usr/bin/env bash
# What signing costs, each printed as a ratio against a baseline measured in the same run, the
# two sides alternated (not a timed test; run by hand on a quiet machine):
#
#   pack   : `sealer pack --sign KEY` vs `sealer pack` of the same ~1 GiB image   (target <= 1.05)
#   verify : `app.run verify --trust KEY` vs `app.run verify` of that package     (target <= 1.05)
#   check  : what the signature check itself adds to one `verify`, whatever the payload: the
#            mean of 200 alternated runs of each on a one-file package (a difference of means)
#
# Corpus: /usr/lib/llvm-14 and /usr/share copied into a build context (override with
# BENCH_CORPUS="DIR ..."), built once with the release `sealer build` into a store of its own.
# Scratch space: BENCH_DIR. BENCH_ROUNDS pairs are timed; each side's best is compared.
# BIN_DIR may name a directory holding release `sealer` and `sealer-stub` (default: build them).
set -euo pipefail

cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/tmp/sealer-bench-signing}
CORPUS=${BENCH_CORPUS:-/usr/lib/llvm-14 /usr/share}
ROUNDS=${BENCH_ROUNDS:-3}
if [[ -z ${BIN_DIR:-} ]]; then
  cargo build --release --bin sealer --bin sealer-stub -q
  BIN_DIR=target/x86_64-unknown-linux-gnu/release
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd)
SEALER=$BIN_DIR/sealer
export SEALER_STUB=$BIN_DIR/sealer-stub
export SEALER_ROOT=$BENCH_DIR/store
unset SEALER_TRUST_DIR

mkdir -p "$BENCH_DIR"
if [[ ! -d $BENCH_DIR/ctx ]]; then
  echo "copying the corpus ($CORPUS) into $BENCH_DIR/ctx..."
  mkdir -p "$BENCH_DIR/ctx.partial/data"
  for dir in $CORPUS; do
    cp -a "$dir" "$BENCH_DIR/ctx.partial/data/$(echo "$dir" | tr / _)"
  done
  printf 'FROM scratch\nCOPY data /data\n' > "$BENCH_DIR/ctx.partial/Kubefile"
  mv "$BENCH_DIR/ctx.partial" "$BENCH_DIR/ctx"
fi
if ! "$SEALER" inspect bench/signing:1 > /dev/null 2>&1; then
  echo "building bench/signing:1..."
  "$SEALER" build -t bench/signing:1 "$BENCH_DIR/ctx" > /dev/null
fi
rm -f "$BENCH_DIR/vendor.key" "$BENCH_DIR/vendor.pub"
"$SEALER" key generate -o "$BENCH_DIR/vendor" --unencrypted > /dev/null

now() { date +%s.%N; }
secs() { # seconds one run of a command takes, after a sync
  sync
  local t0 t1
  t0=$(now); "$@" > /dev/null 2>&1; t1=$(now)
  echo "$t1 - $t0" | bc -l
}
min() { if (( $(echo "$1 < $2" | bc -l) )); then echo "$1"; else echo "$2"; fi; }
ratio() { printf '%.3f' "$(echo "$1 / $2" | bc -l)"; }

plain=$BENCH_DIR/plain.run
signed=$BENCH_DIR/signed.run
pack_plain() { rm -f "$plain"; "$SEALER" pack bench/signing:1 -o "$plain"; }
pack_signed() {
  rm -f "$signed"
  "$SEALER" pack bench/signing:1 -o "$signed" --sign "$BENCH_DIR/vendor.key"
}
verify_plain() { "$signed" verify; }
verify_trust() { "$signed" verify --trust "$BENCH_DIR/vendor.pub"; }

# One untimed round warms the page cache and checks that every command works.
pack_plain > /dev/null && pack_signed > /dev/null
verify_plain > /dev/null && verify_trust > /dev/null

best_pack=999999; best_pack_sign=999999; best_verify=999999; best_verify_trust=999999
for ((round = 1; round <= ROUNDS; round++)); do
  best_pack=$(min "$best_pack" "$(secs pack_plain)")
  best_pack_sign=$(min "$best_pack_sign" "$(secs pack_signed)")
  best_verify=$(min "$best_verify" "$(secs verify_plain)")
  best_verify_trust=$(min "$best_verify_trust" "$(secs verify_trust)")
done

# --- the signature check alone, on a package with almost no payload --------------------------
if ! "$SEALER" inspect bench/signing-tiny:1 > /dev/null 2>&1; then
  mkdir -p "$BENCH_DIR/tiny"
  echo tiny > "$BENCH_DIR/tiny/file"
  printf 'FROM scratch\nCOPY file /file\n' > "$BENCH_DIR/tiny/Kubefile"
  "$SEALER" build -t bench/signing-tiny:1 "$BENCH_DIR/tiny" > /dev/null
fi
tiny=$BENCH_DIR/tiny.run
rm -f "$tiny"
"$SEALER" pack bench/signing-tiny:1 -o "$tiny" --sign "$BENCH_DIR/vendor.key" > /dev/null 2>&1
t_plain=0; t_trust=0
for _ in $(seq 200); do
  t0=$(now); "$tiny" verify > /dev/null 2>&1; t1=$(now)
  "$tiny" verify --trust "$BENCH_DIR/vendor.pub" > /dev/null 2>&1; t2=$(now)
  t_plain=$(echo "$t_plain + $t1 - $t0" | bc -l); t_trust=$(echo "$t_trust + $t2 - $t1" | bc -l)
done
rm -f "$tiny"

size=$(stat -c %s "$signed")
printf 'package: %s bytes (%.2f GiB), %s frames\n' "$size" "$(echo "$size / 1073741824" | bc -l)" \
  "$("$signed" inspect --json | grep -c '"sha256"')"
printf 'pack          %8.3f s   pack --sign       %8.3f s   ratio %s (target <= 1.05)\n' \
  "$best_pack" "$best_pack_sign" "$(ratio "$best_pack_sign" "$best_pack")"
printf 'verify        %8.3f s   verify --trust    %8.3f s   ratio %s (target <= 1.05)\n' \
  "$best_verify" "$best_verify_trust" "$(ratio "$best_verify_trust" "$best_verify")"
printf 'check         one-file package: verify %.2f ms, verify --trust %.2f ms (mean of 200): +%.2f ms\n' \
  "$(echo "$t_plain * 5" | bc -l)" "$(echo "$t_trust * 5" | bc -l)" \
  "$(echo "($t_trust - $t_plain) * 5" | bc -l)"
rm -f "$plain" "$signed"
