#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo-fuzz, nightly) and runs each for SECONDS (default 60, or
# $FUZZ_SECONDS) on its corpus. The committed seeds and reproducers in fuzz/corpus/<target>/ are
# read; new inputs go to fuzz/target/corpus/<target>/ (not committed), crashes to
# fuzz/artifacts/<target>/. Exits non-zero when a target finds a crash, naming the file.
# Without a nightly toolchain it says so and exits 0: `cargo test` still replays the corpora on
# stable (packer/tests/fuzz_corpus.rs, tests/fuzz_corpus.rs). See docs/testing.md.
#
#   scripts/fuzz.sh [SECONDS]      FUZZ_TARGETS="run_reader kubefile" to run only some
#                                  FUZZ_SEED=N for a repeatable run (the test suite uses 1)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-${FUZZ_SECONDS:-60}}"
targets="${FUZZ_TARGETS:-unpack_tar run_reader kubefile clusterfile}"
if [ "$seconds" -le 0 ]; then
    echo "fuzz: 0 seconds asked, nothing to run"
    exit 0
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain, so the fuzz targets are not run (install one with" \
        "\`rustup toolchain install nightly\`); the corpus replay in \`cargo test\` still ran" >&2
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# No sanitizer: an ASan build takes as long again and runs about half as fast; the targets
# bound single allocations themselves (fuzz/src/checks/alloc_limit.rs) and libFuzzer bounds RSS.
started=$(date +%s)
(cd fuzz && cargo +nightly fuzz build -s none)
echo "fuzz: built in $(($(date +%s) - started)) s"

# Extraction and package files go to a private scratch directory (tmpfs when there is one).
scratch_base=/dev/shm
[ -d "$scratch_base" ] && [ -w "$scratch_base" ] || scratch_base="${TMPDIR:-/tmp}"
export SEALER_FUZZ_TMP="$scratch_base/sealer-fuzz-$$"
mkdir -p "$SEALER_FUZZ_TMP"
trap 'rm -rf "$SEALER_FUZZ_TMP"' EXIT

failed=()
for target in $targets; do
    work="fuzz/target/corpus/$target"
    log="fuzz/target/fuzz-$target.log"
    mkdir -p "$work" "fuzz/artifacts/$target"
    echo "fuzz: $target for $seconds s"
    if (cd fuzz && cargo +nightly fuzz run -s none "$target" "../$work" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=8192 -timeout=20 \
        -rss_limit_mb=512 -malloc_limit_mb=512 -print_final_stats=1 \
        ${FUZZ_SEED:+-seed="$FUZZ_SEED"}) >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
        echo "fuzz: $target: ${runs:-?} executions, no crash"
    else
        echo "fuzz: $target FAILED; the end of its log ($log):" >&2
        grep -v '^WARNING: Failed to find function' "$log" | tail -n 40 >&2
        failed+=("$target")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}; the inputs are in fuzz/artifacts/<target>/ (see" \
        "docs/testing.md: reproduce, then add the file to fuzz/corpus/<target>/ with the fix)" >&2
    exit 1
fi
