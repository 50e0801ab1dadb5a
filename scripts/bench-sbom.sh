#!/usr/bin/env bash
# What the bill of materials costs a build, with the SBOM step and without it
# (SEALER_BUILD_SBOM=0), alternated; every build is `--no-cache` in an empty store, so the step
# reads every layer and finds nothing in its cache (cache/sbom): the cost of a first build.
#
# Two builds (BENCH_MODE):
#   debs : real software installed the way the etcd fixture does it — a RUN step unpacks Debian
#          packages (containerd, runc, etcd, skopeo, Go 1.19 and its sources: about 600 MiB,
#          16,000 files) into the image root and writes their dpkg status. The .debs are fetched
#          once with `apt-get download` into BENCH_DIR/debs (the only network use) and read from
#          there by every build. (default)
#   copy : the worst case for the step — a build that does nothing but COPY about 1 GiB of
#          files (/usr/lib/llvm-14 and /usr/share; BENCH_CORPUS="DIR ..."), so the build's own
#          work per byte is the least it can be.
#
# Prints the mean CPU time (user + system, which a busy machine disturbs far less than wall
# time) and the mean wall time of each side, and the ratios (target: CPU ratio <= 1.10 for a
# build of real software); then the step alone, measured on cached rebuilds (see below), as a
# share of the build.
#
# Usage: scripts/bench-sbom.sh            (BENCH_ROUNDS pairs, default 3; builds release binaries)
#        BIN_DIR=DIR BENCH_MODE=copy scripts/bench-sbom.sh   (release binaries built elsewhere)
set -euo pipefail

cd "$(dirname "$0")/.."
BENCH_MODE=${BENCH_MODE:-debs}
BENCH_DIR=${BENCH_DIR:-/tmp/sealer-bench-sbom}
CORPUS=${BENCH_CORPUS:-/usr/lib/llvm-14 /usr/share}
DEBS=${BENCH_DEBS:-containerd runc etcd-server etcd-client skopeo golang-1.19-go golang-1.19-src}
ROUNDS=${BENCH_ROUNDS:-3}
if [[ -z ${BIN_DIR:-} ]]; then
  cargo build --release --bin sealer --bin sealer-stub -q
  BIN_DIR=target/x86_64-unknown-linux-gnu/release
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd)
SEALER=$BIN_DIR/sealer
export SEALER_STUB=$BIN_DIR/sealer-stub
unset SOURCE_DATE_EPOCH

mkdir -p "$BENCH_DIR"
case $BENCH_MODE in
copy)
  ctx=$BENCH_DIR/ctx
  if [[ ! -d $ctx ]]; then
    echo "copying the corpus ($CORPUS) into $ctx..."
    mkdir -p "$ctx.partial/data" "$ctx.partial/var/lib/dpkg"
    for dir in $CORPUS; do
      cp -a "$dir" "$ctx.partial/data/$(echo "$dir" | tr / _)"
    done
    cp /var/lib/dpkg/status "$ctx.partial/var/lib/dpkg/status"
    printf 'FROM scratch\nCOPY data /data\nCOPY var /var\n' > "$ctx.partial/Kubefile"
    mv "$ctx.partial" "$ctx"
  fi
  ;;
debs)
  ctx=$BENCH_DIR/debs-ctx
  debs=$BENCH_DIR/debs
  if [[ ! -d $debs ]]; then
    echo "apt-get download $DEBS..."
    mkdir -p "$debs.partial"
    chmod 755 "$debs.partial"
    chown _apt "$debs.partial" 2>/dev/null || true
    # shellcheck disable=SC2086
    (cd "$debs.partial" && apt-get download -q $DEBS)
    mv "$debs.partial" "$debs"
  fi
  mkdir -p "$ctx"
  {
    echo 'FROM scratch'
    echo "RUN set -e; mkdir -p var/lib/dpkg; for deb in $debs/*.deb; do dpkg -x \"\$deb\" .; \\"
    echo "    dpkg-deb -f \"\$deb\" Package Version Architecture >> var/lib/dpkg/status; \\"
    echo "    printf 'Status: install ok installed\\n\\n' >> var/lib/dpkg/status; done"
  } > "$ctx/Kubefile"
  ;;
*)
  echo "BENCH_MODE must be debs or copy" >&2
  exit 2
  ;;
esac
echo "mode $BENCH_MODE: $(du -sh "$ctx" | cut -f1) of build context"

# One build in a fresh store; prints "user+sys wall" seconds. $1: 1 with the SBOM, 0 without.
build() {
  local store=$BENCH_DIR/store
  rm -rf "$store"
  sync
  SEALER_ROOT=$store SEALER_BUILD_SBOM=$1 /usr/bin/time -f '%U %S %e' -o "$BENCH_DIR/time" \
    "$SEALER" build --no-cache -t bench/sbom:1 "$ctx" > "$BENCH_DIR/build.log"
  if [[ $1 == 1 ]]; then
    grep '^SBOM:' "$BENCH_DIR/build.log" > "$BENCH_DIR/sbom-line" || {
      echo "the build with the SBOM did not write one" >&2
      exit 1
    }
  fi
  awk '{printf "%.3f %.3f\n", $1 + $2, $3}' "$BENCH_DIR/time"
}

cpu_with=0; cpu_without=0; wall_with=0; wall_without=0
echo "round  without-SBOM cpu/wall   with-SBOM cpu/wall"
for ((round = 1; round <= ROUNDS; round++)); do
  read -r c0 w0 < <(build 0)
  read -r c1 w1 < <(build 1)
  printf '%5d  %8.2f s %8.2f s   %8.2f s %8.2f s\n' "$round" "$c0" "$w0" "$c1" "$w1"
  cpu_without=$(echo "$cpu_without + $c0" | bc -l); wall_without=$(echo "$wall_without + $w0" | bc -l)
  cpu_with=$(echo "$cpu_with + $c1" | bc -l); wall_with=$(echo "$wall_with + $w1" | bc -l)
done

# The step alone, far less noisy than a difference of two whole builds: rebuild the image with
# every step from the cache (the build then does little but read its cache, write the config and
# name the image), with the SBOM (its layer cache emptied first, so every layer is read) and
# without, alternated; the difference of the means is what the step costs.
SEALER_ROOT=$BENCH_DIR/store SEALER_BUILD_SBOM=0 "$SEALER" build -t bench/sbom:1 "$ctx" > /dev/null
cached() {
  rm -rf "$BENCH_DIR/store/cache/sbom"
  SEALER_ROOT=$BENCH_DIR/store SEALER_BUILD_SBOM=$1 /usr/bin/time -f '%U %S' -o "$BENCH_DIR/time" \
    "$SEALER" build -t bench/sbom:1 "$ctx" > /dev/null
  awk '{printf "%.3f\n", $1 + $2}' "$BENCH_DIR/time"
}
step_rounds=$((ROUNDS * 3))
step_with=0; step_without=0
for ((round = 1; round <= step_rounds; round++)); do
  step_without=$(echo "$step_without + $(cached 0)" | bc -l)
  step_with=$(echo "$step_with + $(cached 1)" | bc -l)
done
rm -rf "$BENCH_DIR/store"
step=$(echo "($step_with - $step_without) / $step_rounds" | bc -l)
cat "$BENCH_DIR/sbom-line"
printf 'the step alone: %.2f s CPU (cached rebuilds, mean of %d each: %.2f s with, %.2f s without) = %.1f %% of the mean build without it\n' \
  "$step" "$step_rounds" "$(echo "$step_with / $step_rounds" | bc -l)" \
  "$(echo "$step_without / $step_rounds" | bc -l)" \
  "$(echo "100 * $step / ($cpu_without / $ROUNDS)" | bc -l)"
printf 'mean CPU   without %.2f s   with %.2f s   ratio %.3f (target <= 1.10)\n' \
  "$(echo "$cpu_without / $ROUNDS" | bc -l)" "$(echo "$cpu_with / $ROUNDS" | bc -l)" \
  "$(echo "$cpu_with / $cpu_without" | bc -l)"
printf 'mean wall  without %.2f s   with %.2f s   ratio %.3f\n' \
  "$(echo "$wall_without / $ROUNDS" | bc -l)" "$(echo "$wall_with / $ROUNDS" | bc -l)" \
  "$(echo "$wall_with / $wall_without" | bc -l)"
