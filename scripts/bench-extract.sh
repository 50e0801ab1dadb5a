#!/usr/bin/env bash
# Extraction and the local install on disk, each against its baseline measured in the same run:
#
#   extract : `app.run extract DIR` vs `tar -I zstd -xf` of the same layer blobs   (target <= 0.6)
#   local   : `app.run install --local` vs `app.run extract` of the same package   (target <= 1.2)
#   rss     : peak RSS of extract and of install --local (/usr/bin/time)           (target < 256 MiB)
#
# Corpora:
#   real  : the install benchmark's real corpus (512 MiB of this machine's software, cached in
#           $BENCH_CACHE by `scripts/bench-install.sh --corpus real`; run that once first), built
#           with `sealer build` and packed with `sealer pack` (frames as the store keeps them);
#           tar gets the store's layer blobs, the very frames the package holds. `local` is
#           measured on this corpus only (a package made with `sealer pack`).
#   mixed : /usr/share (many small files, symlinks) + /usr/lib/llvm-14 (large files), as
#           scripts/bench-packer.sh builds them (its blobs in $BENCH_DIR are reused).
#
# Every destination is on DIR's file system (default /var/tmp, not tmpfs). Rounds alternate the
# sides (tar, extract, install); before each run `sync` writes back every dirty page, so no run
# pays for another's writeback. Prints the median of ROUNDS of wall and CPU (user + system) time
# per side, the ratios of the medians, and the load average.
#
# --fresh-fs SIZE: extract instead onto a new ext4 (made by mkfs.ext4, so with a journal) in a
# SIZE image file under DIR, attached with direct I/O so its pages are cached once. Every run
# starts on the same empty file system: the trees are compared in a first, untimed round, and
# each timed run's tree is removed right after it. On a long-used
# root file system without a journal the cost of creating a file depends on what was deleted
# in the last minutes (ext4 skips recently deleted inodes; docs/benchmarks.md), so rounds there
# drift. Needs root (losetup, mount).
#
# --against STUB: also extract, in the same rounds, a package of the same image made with
# another build's sealer-stub (the one before a change), and print its times and ratios.
#
# Usage: scripts/bench-extract.sh [--corpus real|mixed|both] [--rounds 3] [--dir /var/tmp]
#                                 [--fresh-fs 16G] [--against STUB]
# SEALER_BIN / STUB_BIN / PACK_TOOL: binaries built elsewhere (default: release builds here).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

corpus=both
rounds=3
base=/var/tmp
fresh_size=
against=
while [ $# -gt 0 ]; do
    case "$1" in
        --corpus) corpus=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --dir) base=$2; shift 2 ;;
        --fresh-fs) fresh_size=$2; shift 2 ;;
        --against) against=$2; shift 2 ;;
        *) echo "usage: $0 [--corpus real|mixed|both] [--rounds N] [--dir DIR] [--fresh-fs SIZE] [--against STUB]" >&2; exit 2 ;;
    esac
done
case "$corpus" in real|mixed|both) ;; *) echo "bench-extract: --corpus must be real, mixed or both" >&2; exit 2 ;; esac
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "bench-extract: --rounds must be a positive number" >&2; exit 2; }
if [ -n "$against" ] && [ ! -x "$against" ]; then
    echo "bench-extract: --against $against is not an executable sealer-stub" >&2; exit 2
fi
for tool in python3 /usr/bin/time tar zstd; do
    command -v "$tool" >/dev/null || { echo "bench-extract: missing $tool" >&2; exit 1; }
done

target=$repo/target/x86_64-unknown-linux-gnu/release
if [ -z "${SEALER_BIN:-}" ] || [ -z "${STUB_BIN:-}" ] || [ -z "${PACK_TOOL:-}" ]; then
    echo "bench-extract: building release binaries" >&2
    cargo build --release --bins -q
    cargo build --release -p packer --example bench_pack -q
fi
sealer=${SEALER_BIN:-$target/sealer}
export SEALER_STUB=${STUB_BIN:-$target/sealer-stub}
tool=${PACK_TOOL:-$target/examples/bench_pack}

work=$(mktemp -d "$base/sealer-bench-extract.XXXXXX")
loop=
cleanup() {
    if [ -n "$loop" ]; then
        umount "$work/mnt" 2>/dev/null || true
        losetup -d "$loop" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Where the trees are written: $work, or the fresh file system mounted at $work/mnt.
dest=$work
if [ -n "$fresh_size" ]; then
    for needed in mkfs.ext4 losetup mount; do
        command -v "$needed" >/dev/null || { echo "bench-extract: --fresh-fs needs $needed" >&2; exit 1; }
    done
    truncate -s "$fresh_size" "$work/fs.img"
    # Inode tables and journal written now: left lazy, a kernel thread zeroes them in the
    # background during the first rounds.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$work/fs.img"
    loop=$(losetup --direct-io=on -f --show "$work/fs.img")
    mkdir "$work/mnt"
    mount "$loop" "$work/mnt"
    dest=$work/mnt
fi
fs_type=$(findmnt -n -o FSTYPE -T "$dest" 2>/dev/null || stat -f -c %T "$dest")
if [ -n "$fresh_size" ]; then fs_type="a fresh $fs_type with a journal ($fresh_size image, direct I/O)"; fi
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# One timed run: `timed NAME CMD...` appends "wall cpu rss_kib" to $work/NAME.times.
timed() {
    local name=$1; shift
    sync
    if [ -n "$loop" ]; then sync; fi   # the loop device's writes reach the image file
    /usr/bin/time -f '%e %U %S %M' -o "$work/time.out" "$@" >"$work/$name.log" 2>&1 \
        || { cat "$work/$name.log" >&2; echo "bench-extract: $name failed" >&2; exit 1; }
    # Round 0 (the untimed check round on the fresh file system) is not counted.
    if [ "${TIMED:-1}" = 0 ]; then return; fi
    awk '{ printf "%s %.2f %s\n", $1, $2 + $3, $4 }' "$work/time.out" >>"$work/$name.times"
}
# `median NAME COLUMN` (1 wall, 2 cpu, 3 rss KiB) of NAME's runs.
median() {
    python3 -c 'import statistics, sys; print(statistics.median(float(l.split()[int(sys.argv[2]) - 1]) for l in open(sys.argv[1])))' \
        "$work/$1.times" "$2"
}
ratio() { python3 -c 'import sys; print(f"{float(sys.argv[1]) / float(sys.argv[2]):.2f}")' "$1" "$2"; }
all() { awk -v c="$2" '{ printf "%s%s", sep, $c; sep = "/" }' "$work/$1.times"; }

# The same tree, whoever wrote it (names, kinds, modes, sizes, hard-link counts, contents).
same_tree() {
    if ! diff -r --no-dereference -q "$1" "$2" >/dev/null; then
        echo "bench-extract: $1 and $2 differ" >&2; exit 1
    fi
    local a b
    # Directory sizes depend on the order names were added; not compared.
    a=$(cd "$1" && find . \( -type d -printf '%y %m - %n %p\n' \) -o -printf '%y %m %s %n %p\n' | sort | sha256sum)
    b=$(cd "$2" && find . \( -type d -printf '%y %m - %n %p\n' \) -o -printf '%y %m %s %n %p\n' | sort | sha256sum)
    [ "$a" = "$b" ] || { echo "bench-extract: $1 and $2 differ in modes or links" >&2; exit 1; }
}

# `measure CORPUS PACKAGE BLOB...`: the rounds of one corpus; install --local when LOCAL=1, the
# package AGAINST (another stub's) extracted too when it is set.
# Every run writes a new directory and nothing is removed until the end: on ext4 without a
# journal, creating files right after a large tree was deleted scans the deleted inodes
# (`recently_deleted`, for 60 s or more), which would charge one side for the other's removal.
#
# On the fresh file system every run starts on the same empty file system instead: the trees
# are compared in a first round that is not timed, and each timed run's tree is removed right
# after it, so no side extracts next to the trees of the sides before it.
measure() {
    local name=$1 run=$2; shift 2
    local blobs=("$@") r out first=1
    cat "$run" "${blobs[@]}" >/dev/null   # both sides read their input from the page cache
    if [ -n "$loop" ]; then first=0; fi
    for r in $(seq "$first" "$rounds"); do
        out=$dest/$name-$r
        mkdir -p "$out/tar"
        TIMED=$r timed "$name-tar" sh -c 'for b; do tar -I zstd -xf "$b" -C "$0" || exit 1; done' "$out/tar" "${blobs[@]}"
        cleared "$r" "$out/tar"
        TIMED=$r timed "$name-extract" "$run" extract "$out/run"
        if [ "$r" = "$first" ]; then same_tree "$out/tar" "$out/run"; fi
        cleared "$r" "$out/run"
        if [ -n "${AGAINST:-}" ]; then
            TIMED=$r timed "$name-against" "$AGAINST" extract "$out/against"
            if [ "$r" = "$first" ]; then same_tree "$out/tar" "$out/against"; fi
            cleared "$r" "$out/against"
        fi
        if [ "${LOCAL:-0}" = 1 ]; then
            SEALER_ROOT=$out/state TIMED=$r timed "$name-local" "$run" install --local --data-root "$out/data"
            if [ "$r" = "$first" ]; then
                local rootfs
                rootfs=$(find "$out/data" -mindepth 2 -maxdepth 2 -name rootfs -type d)
                [ -n "$rootfs" ] || { echo "bench-extract: install --local left no rootfs" >&2; exit 1; }
                same_tree "$rootfs" "$out/run"
            fi
        fi
        if [ -n "$loop" ]; then rm -rf "$out"; sync; fi
    done
}

# `cleared ROUND DIR`: on the fresh file system, remove a timed run's tree before the next run
# (round 0's trees stay: they are compared).
cleared() {
    if [ -n "$loop" ] && [ "$1" != 0 ]; then rm -rf "$2"; sync; fi
}

# `side LABEL NAME`: one measured side's line (medians, rounds, peak RSS).
side() {
    printf '  %-17s wall %6.2f s  cpu %6.2f s   (rounds %s s)  peak RSS %d MiB\n' \
        "$1" "$(median "$2" 1)" "$(median "$2" 2)" "$(all "$2" 1)" "$(($(median "$2" 3 | cut -d. -f1) / 1024))"
}

report() {
    local name=$1 title=$2
    local tw tc ew ec
    tw=$(median "$name-tar" 1); tc=$(median "$name-tar" 2)
    ew=$(median "$name-extract" 1); ec=$(median "$name-extract" 2)
    echo "$title"
    printf '  tar -I zstd -xf   wall %6.2f s  cpu %6.2f s   (rounds %s s)\n' "$tw" "$tc" "$(all "$name-tar" 1)"
    side "app.run extract" "$name-extract"
    printf '  extract / tar     wall %s  cpu %s   (target wall <= 0.6)\n' "$(ratio "$ew" "$tw")" "$(ratio "$ec" "$tc")"
    if [ -f "$work/$name-against.times" ]; then
        local aw ac
        aw=$(median "$name-against" 1); ac=$(median "$name-against" 2)
        side "--against extract" "$name-against"
        printf '  --against / tar   wall %s  cpu %s;  extract / --against wall %s\n' \
            "$(ratio "$aw" "$tw")" "$(ratio "$ac" "$tc")" "$(ratio "$ew" "$aw")"
    fi
    if [ -f "$work/$name-local.times" ]; then
        local lw lc
        lw=$(median "$name-local" 1); lc=$(median "$name-local" 2)
        side "install --local" "$name-local"
        printf '  install / extract wall %s  cpu %s   (target wall <= 1.2)\n' "$(ratio "$lw" "$ew")" "$(ratio "$lc" "$ec")"
    fi
}

if [ "$corpus" != mixed ]; then
    cache=${BENCH_CACHE:-/var/tmp/sealer-bench-install-cache}
    ctx=$cache/ctx-real-512m-r1
    [ -f "$ctx/.complete" ] || { echo "bench-extract: no real corpus in $ctx; run scripts/bench-install.sh --corpus real once first" >&2; exit 1; }
    echo "bench-extract: real corpus: sealer build and sealer pack" >&2
    SEALER_ROOT=$work/store "$sealer" build -t bench/extract:1 "$ctx" >"$work/build.log" 2>&1 \
        || { cat "$work/build.log" >&2; exit 1; }
    SEALER_ROOT=$work/store "$sealer" pack bench/extract:1 -o "$work/real.run" >"$work/pack.log" 2>&1 \
        || { cat "$work/pack.log" >&2; exit 1; }
    if [ -n "$against" ]; then
        SEALER_STUB=$against SEALER_ROOT=$work/store "$sealer" pack bench/extract:1 -o "$work/real-against.run" \
            >"$work/pack.log" 2>&1 || { cat "$work/pack.log" >&2; exit 1; }
    fi
    # The store's layer blobs, in order: the same frames the package holds.
    mapfile -t real_blobs < <(python3 - "$work/store/oci" bench/extract:1 <<'PY'
import json, sys
oci, ref = sys.argv[1], sys.argv[2]
def blob(d):
    return f"{oci}/blobs/{d.replace(':', '/')}"
index = json.load(open(f"{oci}/index.json"))
m = next(m for m in index["manifests"]
         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref)
for layer in json.load(open(blob(m["digest"])))["layers"]:
    print(blob(layer["digest"]))
PY
)
    echo "bench-extract: real corpus: $rounds rounds" >&2
    LOCAL=1 AGAINST=${against:+$work/real-against.run} measure real "$work/real.run" "${real_blobs[@]}"
fi
if [ "$corpus" != real ]; then
    bench=${BENCH_DIR:-/tmp/sealer-bench}
    mkdir -p "$bench"
    if [[ ! -f $bench/small.tar.frames.json || ! -f $bench/large.tar.frames.json ]]; then
        echo "bench-extract: mixed corpus: layer blobs of /usr/share and /usr/lib/llvm-14" >&2
        "$tool" layer /usr/share "$bench/small.tar.zst" 3 >/dev/null
        "$tool" layer /usr/lib/llvm-14 "$bench/large.tar.zst" 3 >/dev/null
    fi
    mixed_blobs=("$bench/small.tar.zst" "$bench/large.tar.zst")
    "$tool" pack "$SEALER_STUB" "$work/mixed.run" "${mixed_blobs[@]}" >/dev/null
    if [ -n "$against" ]; then "$tool" pack "$against" "$work/mixed-against.run" "${mixed_blobs[@]}" >/dev/null; fi
    echo "bench-extract: mixed corpus: $rounds rounds" >&2
    AGAINST=${against:+$work/mixed-against.run} measure mixed "$work/mixed.run" "${mixed_blobs[@]}"
fi

echo
echo "on $fs_type ($work), $(nproc) CPUs, load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo "median of $rounds alternated rounds; cpu = user + system of the process and its children"
if [ "$corpus" != mixed ]; then
    report real "real corpus ($(du -sm "$ctx/rootfs" | cut -f1) MiB of files, $(cat "${real_blobs[@]}" | wc -c | awk '{printf "%.0f", $1 / 1048576}') MiB of layer blobs)"
fi
if [ "$corpus" != real ]; then
    report mixed "mixed corpus (/usr/share + /usr/lib/llvm-14, $(cat "${mixed_blobs[@]}" | wc -c | awk '{printf "%.0f", $1 / 1048576}') MiB of layer blobs)"
fi
