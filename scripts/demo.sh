#!/usr/bin/env bash
# Builds sealer and runs the main job on the embedded default: build the example image in
# fixtures/hello, pack it into one self-extracting file, verify it, and install it on this
# machine (twice: the second run finds nothing to do). Everything lands under target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins
bin="$PWD/target/x86_64-unknown-linux-gnu/release"
demo="$PWD/target/demo"
mkdir -p "$demo"
export SEALER_ROOT="$demo/store"

step() { printf '\n== %s\n' "$*"; }

step "sealer build -t hello:v1 fixtures/hello"
"$bin/sealer" build -t hello:v1 fixtures/hello
"$bin/sealer" images

step "sealer pack hello:v1 -o $demo/hello.run"
"$bin/sealer" pack hello:v1 -o "$demo/hello.run"

step "./hello.run (what it is)"
"$demo/hello.run"

step "./hello.run verify"
"$demo/hello.run" verify

step "./hello.run install --local --data-root $demo/data"
"$demo/hello.run" install --local --data-root "$demo/data"

step "./hello.run install --local --data-root $demo/data (again: nothing to do)"
"$demo/hello.run" install --local --data-root "$demo/data"

step "installed: $(cat "$demo/data/my-cluster/app/banner")"
