#!/usr/bin/env bash
# The whole test suite: installs what the tests need (as root), checks formatting and lints,
# then runs every test of the workspace against real tools (skopeo, zstd, tar, sshd hosts in
# network namespaces, docker-registry on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
    scripts/ci-deps.sh
else
    echo "test: not root, so packages are not installed and the SSH testbed tests will skip" >&2
fi

echo "test: cargo fmt --check"
cargo fmt --all --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "test: cargo build"
cargo build --workspace --bins
echo "test: cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.log
echo "test: fuzz targets (scripts/fuzz.sh, ${FUZZ_SECONDS:-45} s each; FUZZ_SECONDS=0 skips)"
# A fixed seed keeps the short run repeatable: what passes here passes in CI; longer runs
# (docs/testing.md) explore further.
FUZZ_SECONDS="${FUZZ_SECONDS:-45}" FUZZ_SEED="${FUZZ_SEED:-1}" scripts/fuzz.sh
