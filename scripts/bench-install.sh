#!/usr/bin/env bash
# Benchmark: installing a ~500 MiB image onto 8 testbed hosts whose links are shaped with `tc tbf`
# to the same rate B, by both install paths:
#   a. `sealer run IMAGE` from the store (layers at `sealer build`'s default zstd level, 3);
#   b. `./app.run install` of the package a vendor made once with `sealer pack --level 19`
#      (frames recompressed; timed and printed, not part of the install time);
# each against the lower bound payload_size / B (every host fed in parallel on its own link), the
# transport floor (the same payload bytes through OpenSSH to every host) and the baseline sealer
# (Go) used: `scp -r` of the uncompressed root filesystem to every host in parallel. Everything is
# measured in the same run. Prints, per path, total install time, the bound, ours / bound (target
# <= 1.5), our speedup over the baseline (target >= 3) and the peak RSS of the installing process
# (target < 256 MiB).
#
# Usage (root; needs the testbed's packages, see scripts/ci-deps.sh):
#   scripts/bench-install.sh [--corpus real|synthetic] [--rate 25mbit] [--hosts 8] [--size-mib 512] [--keep]
#
# Corpus `real` (default): files copied from software installed on this machine (large executables
# and shared libraries, then docs, man pages and Python modules), chosen once and recorded in a
# file list so reruns on the same machine use the same files. `synthetic`: a seeded generator.
# Release binaries are built first. The root filesystem is cached in $BENCH_CACHE
# (/var/tmp/sealer-bench-install-cache); everything else (store, package, testbed, logs) is created
# fresh and removed on exit, also on failure or Ctrl-C (--keep leaves the logs).
set -euo pipefail
cd "$(dirname "$0")/.."

corpus=real
rate=25mbit
hosts=8
size_mib=512
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --corpus) corpus=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --hosts) hosts=$2; shift 2 ;;
        --size-mib) size_mib=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--corpus real|synthetic] [--rate RATE] [--hosts N] [--size-mib MIB] [--keep]" >&2
           exit 2 ;;
    esac
done
case "$corpus" in
    real|synthetic) ;;
    *) echo "bench-install: --corpus must be real or synthetic" >&2; exit 2 ;;
esac
bench=bench-install
tb_name=bench-install
bench_tools="python3 scp /usr/bin/time bc tc"
keep_drop="store app.run app.frames"
. scripts/bench-common.sh
bench_release

# --- The image: a root filesystem shaped like a cluster image --------------------------------
cache=${BENCH_CACHE:-/var/tmp/sealer-bench-install-cache}
mkdir -p "$cache"
if [ "$corpus" = synthetic ]; then
    ctx="$cache/ctx-${size_mib}m-g1"
    corpus_text='synthetic: seeded generator; 45 % text-like, 45 % binary-like, 10 % random bytes'
else
    ctx="$cache/ctx-real-${size_mib}m-r1"
    # The files chosen on the first run; later runs (and a rebuilt cache) copy exactly these.
    file_list="$cache/real-${size_mib}m-r1.files"
fi
if [ ! -f "$ctx/.complete" ]; then
    rm -rf "$ctx" "$ctx.tmp"
    mkdir -p "$ctx.tmp/rootfs"
    if [ "$corpus" = synthetic ]; then
        log "generating a $size_mib MiB root filesystem in $ctx"
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
    else
        log "copying a $size_mib MiB root filesystem from this machine's software into $ctx"
        python3 - "$ctx.tmp/rootfs" "$size_mib" "$file_list" "$ctx.tmp" <<'PY'
# Regular files only (no symlinks, sockets or devices; a hard-linked file once), in sorted path
# order within each group, each group filling the budget up to its cumulative share (a file that
# does not fit is skipped): first the executables and libraries a cluster image carries (75 %),
# then many small files (25 %, a third each for docs, man pages and Python modules; what one
# source lacks the next one fills).
import glob, os, shutil, stat, sys

root, total_mib, list_path, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
budget = total_mib << 20
binaries = budget * 3 // 4
small = budget - binaries

def walk(*tops):
    paths = []
    for top in tops:
        for d, _, names in os.walk(top):
            paths += [os.path.join(d, n) for n in names]
    return sorted(paths)

def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False

named = ["/usr/bin/docker-registry", "/usr/bin/etcd", "/usr/bin/etcdctl", "/usr/bin/node",
         "/usr/bin/skopeo"]
anything = lambda path, size: True
groups = [  # name, cumulative share of the budget, candidates, which of them
    ("named executables (etcd, etcdctl, docker-registry, skopeo, node, /usr/lib/cni)", binaries,
     lambda: named + walk("/usr/lib/cni"), anything),
    ("other ELF files of 1 MiB or more in /usr/bin, /usr/sbin", binaries,
     lambda: walk("/usr/bin", "/usr/sbin"), lambda path, size: size >= 1 << 20 and is_elf(path)),
    ("shared libraries in /usr/lib/x86_64-linux-gnu", binaries,
     lambda: walk("/usr/lib/x86_64-linux-gnu"),
     lambda path, size: ".so" in os.path.basename(path) and is_elf(path)),
    ("/usr/share/doc", binaries + small // 3, lambda: walk("/usr/share/doc"), anything),
    ("/usr/share/man", binaries + 2 * small // 3, lambda: walk("/usr/share/man"), anything),
    ("/usr/lib/python3*", budget, lambda: walk(*sorted(glob.glob("/usr/lib/python3*"))), anything),
]

def usable(path):
    """(size, inode key) of a regular, readable file, else None."""
    if "\n" in path or "\t" in path or not path.startswith("/usr/"):
        return None
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        with open(path, "rb"):
            pass
    except OSError:
        return None
    return st.st_size, (st.st_dev, st.st_ino)

chosen = []  # (group, size, path)
if os.path.exists(list_path):
    with open(list_path) as f:
        for line in f:
            group, size, path = line.rstrip("\n").split("\t")
            got = usable(path)
            if got is None or got[0] != int(size):
                sys.exit(f"bench-install: {path} from {list_path} is gone or changed size; "
                         f"remove {list_path} to choose the files anew")
            chosen.append((int(group), int(size), path))
else:
    used, seen = 0, set()
    for gi, (_, cap, candidates, wanted) in enumerate(groups):
        for path in candidates():
            got = usable(path)
            if got is None or got[1] in seen or used + got[0] > cap or not wanted(path, got[0]):
                continue
            seen.add(got[1])
            chosen.append((gi, got[0], path))
            used += got[0]

for _, _, path in chosen:
    dest = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copyfile(path, dest)
    os.chmod(dest, os.stat(path).st_mode & 0o755)
with open(os.path.join(out_dir, "files"), "w") as f:
    f.writelines(f"{g}\t{size}\t{path}\n" for g, size, path in chosen)
with open(os.path.join(out_dir, "corpus.txt"), "w") as f:
    f.write("real: files copied from this machine's software, in sorted path order per group\n")
    for gi, (name, _, _, _) in enumerate(groups):
        sizes = [size for g, size, _ in chosen if g == gi]
        f.write(f"  {len(sizes):6d} files {sum(sizes) / 1048576:7.1f} MiB  {name}\n")
print(f"{len(chosen)} files")
PY
        [ -f "$file_list" ] || { cp "$ctx.tmp/files" "$file_list.tmp"; mv "$file_list.tmp" "$file_list"; }
    fi
    printf 'FROM scratch\nCOPY rootfs/usr /usr\n' >"$ctx.tmp/Kubefile"
    touch "$ctx.tmp/.complete"
    mv "$ctx.tmp" "$ctx"
fi
[ "$corpus" = synthetic ] || corpus_text=$(cat "$ctx/corpus.txt")
read -r rootfs_files rootfs_file_bytes < <(find "$ctx/rootfs" -type f -printf '%s\n' \
    | awk '{ s += $1 } END { print NR, s + 0 }')

# Sizes and paths of the layer blobs of image $1 in the store, one "size path" line each.
image_layers() {
    python3 - "$SEALER_ROOT/oci" "$1" <<'PY'
import json, sys
oci, ref = sys.argv[1], sys.argv[2]
def blob(d):
    return f"{oci}/blobs/{d.replace(':', '/')}"
index = json.load(open(f"{oci}/index.json"))
m = next(m for m in index["manifests"]
         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref)
for layer in json.load(open(blob(m["digest"])))["layers"]:
    print(layer["size"], blob(layer["digest"]))
PY
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "sealer build"
export SEALER_ROOT="$work/store"
"$bin" build -t bench/install:1 "$ctx" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
mapfile -t run_blobs < <(image_layers bench/install:1 | cut -d' ' -f2-)
compressed_bytes=$(image_layers bench/install:1 | awk '{ s += $1 } END { print s + 0 }')

# --- The vendor's one-time cost: the image packed into app.run at zstd level 19 -------------
log "vendor: sealer pack --level 19"
t0=$(now)
"$bin" pack bench/install:1 -o "$work/app.run" --level 19 >"$work/pack.log" 2>&1 \
    || { cat "$work/pack.log" >&2; exit 1; }
t1=$(now)
vendor_pack=$(echo "$t1 - $t0" | bc -l)
# The package's payload as it describes itself (the sum of its frames), and those frames copied
# out of it, each checked against its sha256, for the transport floor below.
"$work/app.run" inspect --json >"$work/app.json"
pkg_bytes=$(python3 - "$work/app.json" "$work/app.frames" <<'PY'
import hashlib, json, sys
doc = json.load(open(sys.argv[1]))
base, total = doc["header_offset"], 0
with open(doc["file"], "rb") as run, open(sys.argv[2], "wb") as out:
    for layer in doc["manifest"]["layers"]:
        for f in layer["frames"]:
            if f["volume"] != 0:
                sys.exit("bench-install: app.run has more than one volume")
            run.seek(base + f["offset"])
            data = run.read(f["compressed_len"])
            if hashlib.sha256(data).hexdigest() != f["sha256"]:
                sys.exit(f"bench-install: a frame at {f['offset']} does not match its sha256")
            out.write(data)
            total += len(data)
print(total)
PY
)

# --- Testbed: N hosts, every link shaped to B ------------------------------------------------
bench_testbed_up "$hosts"
ips=("${all_ips[@]}")
for ip in "${ips[@]}"; do "$testbed" shape "$tb_name" "$ip" "$rate"; done
nodes=$(IFS=,; echo "${ips[*]:1}")

# Write back every dirty page before a timed measurement, so that none pays for the writeback of
# an earlier one (one install writes ~4 GiB onto the hosts' file system, which is this machine's).
settle() { sync; }

# Run an installer (CMD... then the host flags) under /usr/bin/time; its output, each line
# timestamped, goes to $work/<TAG with dashes>.log. Sets `took` (seconds) and `rss_kib`.
install_onto_hosts() {
    local tag=$1 file=${1// /-} t0 t1 rc
    shift
    settle
    log "$tag onto ${#ips[@]} hosts at $rate each"
    t0=$(now)
    set +e
    /usr/bin/time -v -o "$work/$file.time" "$@" -m "${ips[0]}" ${nodes:+-n "$nodes"} \
        --pk "$key" --known-hosts "$known_hosts" 2>&1 \
        | while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$work/$file.log"
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" = 0 ] || { cat "$work/$file.log" >&2; log "$tag failed (exit $rc)"; exit 1; }
    t1=$(now)
    took=$(echo "$t1 - $t0" | bc -l)
    rss_kib=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/$file.time")
}

# Every host must hold the whole tree: as many files and bytes as the root filesystem.
verify_hosts() {
    local i got
    for i in "${!ips[@]}"; do
        got=$("$testbed" exec "$tb_name" "${ips[$i]}" \
            "find /var/lib/sealer/data/my-cluster/rootfs/usr -type f -printf '%s\n' | awk '{ s += \$1 } END { print NR, s + 0 }'")
        [ "$got" = "$rootfs_files $rootfs_file_bytes" ] || {
            log "host ${ips[$i]} has $got (files bytes), not $rootfs_files $rootfs_file_bytes, after $1"; exit 1; }
    done
}

# --- Ours (a): sealer run from the store -----------------------------------------------------
install_onto_hosts "sealer run" "$bin" run bench/install:1
ours_run=$took
rss_run_kib=$rss_kib
verify_hosts "sealer run"

# Nothing of (a) may help (b): rootfs, spool, journal (<dataRoot>/<cluster>/.sealer) and the
# agent (<dataRoot>/.agent) all live under /var/lib/sealer.
log "wiping /var/lib/sealer on ${#ips[@]} hosts"
for ip in "${ips[@]}"; do
    "$testbed" exec "$tb_name" "$ip" 'rm -rf /var/lib/sealer && [ ! -e /var/lib/sealer ]' \
        || { log "could not wipe /var/lib/sealer on $ip"; exit 1; }
done

# --- Ours (b): app.run install ---------------------------------------------------------------
install_onto_hosts "app.run install" "$work/app.run" install
ours_pkg=$took
rss_pkg_kib=$rss_kib
verify_hosts "app.run install"

# --- Transport floor: the same compressed bytes through OpenSSH to every host, nothing else ----
# What this machine's links and CPUs deliver for a payload (ssh -c aes128-gcm, cat > /dev/null):
# the gap between it and the bound is the machine, the gap between it and the install is ours.
# Sets `floor` (seconds). The testbed starts with an empty known_hosts: the hosts' keys in it are
# the ones `sealer run` recorded on first contact, which OpenSSH then checks strictly.
ssh_cat_floor() {
    local t0 t1 ip pid pids=()
    settle
    t0=$(now)
    for ip in "${ips[@]}"; do
        cat "$@" | ssh -c aes128-gcm@openssh.com -i "$key" -o BatchMode=yes \
            -o UserKnownHostsFile="$known_hosts" -o StrictHostKeyChecking=yes "root@$ip" 'cat > /dev/null' &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || { log "ssh cat failed"; exit 1; }; done
    t1=$(now)
    floor=$(echo "$t1 - $t0" | bc -l)
}
log "floor: ssh cat of the store's layer onto ${#ips[@]} hosts at $rate each"
ssh_cat_floor "${run_blobs[@]}"
floor_run=$floor
log "floor: ssh cat of app.run's frames onto ${#ips[@]} hosts at $rate each"
ssh_cat_floor "$work/app.frames"
floor_pkg=$floor

# --- Baseline: scp -r of the uncompressed rootfs to every host in parallel -------------------
settle
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
bound_run=$(echo "$compressed_bytes / $bytes_per_s" | bc -l)
bound_pkg=$(echo "$pkg_bytes / $bytes_per_s" | bc -l)
scp_bound=$(echo "$rootfs_file_bytes / $bytes_per_s" | bc -l)
mib() { echo "$1 / 1048576" | bc -l; }
div() { echo "$1 / $2" | bc -l; }
{
    printf '\n'
    printf 'corpus: %s\n' "$corpus_text"
    printf 'image: %d files, %.1f MiB uncompressed\n' "$rootfs_files" "$(mib "$rootfs_file_bytes")"
    printf '  store layers (sealer build, zstd -3):   %7.1f MiB (%.2fx)\n' \
        "$(mib "$compressed_bytes")" "$(div "$rootfs_file_bytes" "$compressed_bytes")"
    printf '  app.run frames (pack --level 19):       %7.1f MiB (%.2fx)\n' \
        "$(mib "$pkg_bytes")" "$(div "$rootfs_file_bytes" "$pkg_bytes")"
    printf 'vendor, once (not install time): sealer pack --level 19 %.1fs\n' "$vendor_pack"
    printf 'hosts: %d, each link shaped to %s (tc tbf, both directions)\n' "${#ips[@]}" "$rate"
    printf 'machine: %d CPUs, load average %s at the start, %s at the end\n\n' \
        "$(nproc)" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-40s %12s %16s  %s\n' "measure" "sealer run" "app.run install" "target"
    printf '%-40s %11.1fs %15.1fs\n' "total install time" "$ours_run" "$ours_pkg"
    printf '%-40s %11.1fs %15.1fs\n' "lower bound: payload size / B" "$bound_run" "$bound_pkg"
    printf '%-40s %11.2fx %15.2fx  <= 1.5\n' "ours / bound" \
        "$(div "$ours_run" "$bound_run")" "$(div "$ours_pkg" "$bound_pkg")"
    printf '%-40s %11.1fs %15.1fs\n' "floor: ssh cat of the payload, all hosts" "$floor_run" "$floor_pkg"
    printf '%-40s %11.2fx %15.2fx\n' "ours / floor" \
        "$(div "$ours_run" "$floor_run")" "$(div "$ours_pkg" "$floor_pkg")"
    printf '%-40s %11.2fx %15.2fx\n' "floor / bound" \
        "$(div "$floor_run" "$bound_run")" "$(div "$floor_pkg" "$bound_pkg")"
    printf '%-40s %11.2fx %15.2fx  >= 3\n' "speedup over the baseline" \
        "$(div "$scp_time" "$ours_run")" "$(div "$scp_time" "$ours_pkg")"
    printf '%-40s %8d MiB %12d MiB  < 256 MiB\n' "peak RSS of the installing process" \
        "$((rss_run_kib / 1024))" "$((rss_pkg_kib / 1024))"
    printf '\n%-40s %11.1fs\n' "baseline: scp -r of the rootfs, all hosts" "$scp_time"
    printf '%-40s %11.1fs\n' "its bound: uncompressed size / B" "$scp_bound"
    printf '%-40s %11.2fx\n' "baseline / its bound" "$(div "$scp_time" "$scp_bound")"
} | tee "$work/result.txt"
