#!/usr/bin/env bash
# What signing costs, each printed as a ratio against a baseline measured in the same run, the
# two sides alternated (not a timed test; run by hand on a quiet machine):
#
#   pack   : `sealer pack --sign KEY` vs `sealer pack` of the same ~1 GiB image   (target <= 1.05)
#   trust  : `sealer pack --trust PUB` (the image signed with `sealer sign IMAGE`) vs `sealer pack`
#   verify : `app.run verify --trust KEY` vs `app.run verify` of that package     (target <= 1.05)
#   check  : what the signature check itself adds to one `verify`, whatever the payload: the
#            mean of 200 alternated runs of each on a one-file package (a difference of means)
#
# Corpus: /usr/lib/llvm-14 and /usr/share copied into a build context (override with
# BENCH_CORPUS="DIR ..."), built once with the release `sealer build` into a store of its own.
# Scratch space: BENCH_DIR. BENCH_ROUNDS pairs are timed; each side's best is compared.
# BIN_DIR may name a directory holding release `sealer` and `sealer-stub` (default: build them).
# Each side's best wall time and best CPU time (user + system, far less disturbed by a loaded
# machine) are compared.
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
secs() { # "wall cpu": seconds one run of a command takes, after a sync
  sync
  local t0 t1
  t0=$(now)
  /usr/bin/time -f '%U %S' -o "$BENCH_DIR/cpu" bash -c "$1" > /dev/null 2>&1
  t1=$(now)
  echo "$(echo "$t1 - $t0" | bc -l) $(awk '{print $1 + $2}' "$BENCH_DIR/cpu")"
}
min() { if (( $(echo "$1 < $2" | bc -l) )); then echo "$1"; else echo "$2"; fi; }
ratio() { printf '%.3f' "$(echo "$1 / $2" | bc -l)"; }

signed=$BENCH_DIR/signed.run
out=$BENCH_DIR/out.run
# The timed packs write `out`, removed before each one outside the timing: removing (or renaming
# over) a 300 MiB file whose pages are cached costs system time, which must not fall on one side.
pack_plain() { "$SEALER" pack bench/signing:1 -o "$out"; }
pack_signed() { "$SEALER" pack bench/signing:1 -o "$out" --sign "$BENCH_DIR/vendor.key"; }
pack_trust() { "$SEALER" pack bench/signing:1 -o "$out" --trust "$BENCH_DIR/vendor.pub"; }
verify_plain() { "$signed" verify; }
verify_trust() { "$signed" verify --trust "$BENCH_DIR/vendor.pub"; }
# secs runs them under /usr/bin/time, in a child bash.
export -f pack_plain pack_signed pack_trust verify_plain verify_trust
export SEALER BENCH_DIR out signed

"$SEALER" sign bench/signing:1 --key "$BENCH_DIR/vendor.key" > /dev/null
# One untimed round warms the page cache and checks that every command works; it leaves the
# signed package that the verify rounds check.
pack_plain > /dev/null && pack_trust > /dev/null && pack_signed > /dev/null
mv "$out" "$signed"
verify_plain > /dev/null && verify_trust > /dev/null

declare -A wall cpu
for side in pack pack_sign pack_trust verify verify_trust; do wall[$side]=999999; cpu[$side]=999999; done
measure() { # side command: keep the side's best wall and best CPU time
  local w c
  rm -f "$out"
  read -r w c < <(secs "${@:2}")
  wall[$1]=$(min "${wall[$1]}" "$w"); cpu[$1]=$(min "${cpu[$1]}" "$c")
}
# Each round starts with another of the three packs, and flips the order of the two verifies.
packs=(pack:pack_plain pack_sign:pack_signed pack_trust:pack_trust)
for ((round = 1; round <= ROUNDS; round++)); do
  for i in 0 1 2; do
    entry=${packs[(round + i) % 3]}
    measure "${entry%%:*}" "${entry#*:}"
  done
  if ((round % 2)); then
    measure verify verify_plain
    measure verify_trust verify_trust
  else
    measure verify_trust verify_trust
    measure verify verify_plain
  fi
done
best_pack=${wall[pack]}; best_pack_sign=${wall[pack_sign]}
best_verify=${wall[verify]}; best_verify_trust=${wall[verify_trust]}

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
printf 'pack          %8.3f s   pack --trust      %8.3f s   ratio %s\n' \
  "$best_pack" "${wall[pack_trust]}" "$(ratio "${wall[pack_trust]}" "$best_pack")"
printf 'verify        %8.3f s   verify --trust    %8.3f s   ratio %s (target <= 1.05)\n' \
  "$best_verify" "$best_verify_trust" "$(ratio "$best_verify_trust" "$best_verify")"
printf 'CPU (user+sys, best of %s):\n' "$ROUNDS"
printf 'pack          %8.3f s   pack --sign       %8.3f s   ratio %s\n' \
  "${cpu[pack]}" "${cpu[pack_sign]}" "$(ratio "${cpu[pack_sign]}" "${cpu[pack]}")"
printf 'pack          %8.3f s   pack --trust      %8.3f s   ratio %s\n' \
  "${cpu[pack]}" "${cpu[pack_trust]}" "$(ratio "${cpu[pack_trust]}" "${cpu[pack]}")"
printf 'verify        %8.3f s   verify --trust    %8.3f s   ratio %s\n' \
  "${cpu[verify]}" "${cpu[verify_trust]}" "$(ratio "${cpu[verify_trust]}" "${cpu[verify]}")"
printf 'check         one-file package: verify %.2f ms, verify --trust %.2f ms (mean of 200): +%.2f ms\n' \
  "$(echo "$t_plain * 5" | bc -l)" "$(echo "$t_trust * 5" | bc -l)" \
  "$(echo "($t_trust - $t_plain) * 5" | bc -l)"
rm -f "$out" "$signed"
