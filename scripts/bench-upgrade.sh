#!/usr/bin/env bash
# Benchmark (issue 11): an upgrade where 10 % of the frames changed, onto N testbed hosts whose
# links are shaped with `tc tbf` to the same rate B. v1 is a layer of F files of random bytes,
# each large enough to close a zstd frame of its own; v2 is the same with C of the files
# rewritten (10 % by default). v1 is installed unshaped (it is not what is measured), then every
# link is shaped and `sealer run v2` upgrades the cluster.
#
# The frames that changed are found independently of the install: both images are packed and
# `app.run inspect --manifest` lists every frame's sha256 and length; a frame of v2 whose sha256
# v1 does not have is a changed frame. Every host needs those bytes on its own link, all hosts at
# once, so the lower bound is (changed frame bytes) / B. Prints bytes sent per host (from
# `sealer run --json`) against the changed frames (target <= 1.1), the upgrade's time against
# the bound (target <= 1.3), and the floor measured in the same run: the same number of bytes
# through OpenSSH to every host at once. Then a rerun (0 B) and, for scale, what the upgrade
# sent before hosts kept frames: the whole image.
#
# Usage (root; needs the testbed's packages, see scripts/ci-deps.sh):
#   scripts/bench-upgrade.sh [--rate 10mbit] [--hosts 4] [--files 20] [--file-mib 12]
#                            [--changed 2] [--keep]
#   BIN_DIR=DIR scripts/bench-upgrade.sh ...   (release binaries built elsewhere)
#
# Everything (store, testbed, logs) is created fresh and removed on exit, also on failure or
# Ctrl-C (--keep leaves the logs).
set -euo pipefail
cd "$(dirname "$0")/.."

rate=10mbit
hosts=4
files=20
file_mib=12
changed=2
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --hosts) hosts=$2; shift 2 ;;
        --files) files=$2; shift 2 ;;
        --file-mib) file_mib=$2; shift 2 ;;
        --changed) changed=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--rate RATE] [--hosts N] [--files N] [--file-mib MIB] [--changed N] [--keep]" >&2
           exit 2 ;;
    esac
done
[ "$file_mib" -ge 9 ] && [ "$file_mib" -le 15 ] \
    || { echo "bench-upgrade: --file-mib must be 9..15 (one file, one frame)" >&2; exit 2; }
[ "$changed" -ge 1 ] && [ "$changed" -le "$files" ] || { echo "bench-upgrade: --changed must be 1..--files" >&2; exit 2; }
bench=bench-upgrade
tb_name=bench-upgrade
bench_tools="python3 ssh bc tc"
keep_drop="store ctx *.run"
. scripts/bench-common.sh
bench_release

# --- The CloudImages: v1, and v2 with C of the F files rewritten -------------------------------
# $1: directory; $2: the seed offset of the rewritten files (0 for v1).
write_files() {
    python3 - "$1" "$files" "$file_mib" "$changed" "$2" <<'PY'
import os, random, sys
root, files, mib, changed, salt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
os.makedirs(root, exist_ok=True)
rewritten = {i * files // changed for i in range(changed)} if salt else set()
for i in range(files):
    seed = 1000 + i + (salt if i in rewritten else 0)
    data = random.Random(seed).randbytes(mib << 20)
    open(f"{root}/f{i:03d}", "wb").write(data)
PY
}
mkdir -p "$work/ctx"
printf 'FROM scratch\nCOPY data data\n' >"$work/ctx/Kubefile"
log "sealer build bench/upgrade:1 ($files files of $file_mib MiB)"
write_files "$work/ctx/data" 0
"$bin" build -t bench/upgrade:1 "$work/ctx" >"$work/build1.log" 2>&1 || { cat "$work/build1.log" >&2; exit 1; }
log "sealer build bench/upgrade:2 ($changed of the files rewritten)"
write_files "$work/ctx/data" 7777
"$bin" build -t bench/upgrade:2 "$work/ctx" >"$work/build2.log" 2>&1 || { cat "$work/build2.log" >&2; exit 1; }

# Both packed, their frames read from the packages' manifests.
for v in 1 2; do
    "$bin" pack bench/upgrade:$v -o "$work/v$v.run" >"$work/pack$v.log" 2>&1 || { cat "$work/pack$v.log" >&2; exit 1; }
    "$work/v$v.run" inspect --manifest >"$work/manifest$v.json" 2>"$work/inspect$v.log" \
        || { cat "$work/inspect$v.log" >&2; exit 1; }
done
# "CHANGED_BYTES CHANGED_FRAMES ALL_BYTES ALL_FRAMES" of v2 against v1.
read -r changed_bytes changed_frames all_bytes all_frames < <(python3 - "$work/manifest1.json" "$work/manifest2.json" <<'PY'
import json, sys
def frames(path):
    doc = json.load(open(path))
    out = {}
    for layer in doc["layers"]:
        for f in layer["frames"]:
            out[f["sha256"]] = f["compressed_len"]
    return out
old, new = frames(sys.argv[1]), frames(sys.argv[2])
diff = {k: v for k, v in new.items() if k not in old}
print(sum(diff.values()), len(diff), sum(new.values()), len(new))
PY
)
rm -f "$work"/v1.run "$work"/v2.run

# --- Testbed: N hosts ----------------------------------------------------------------------
bench_testbed_up "$hosts"
ips=("${all_ips[@]}")
master_ips=${ips[0]}
node_ips=$(IFS=,; echo "${ips[*]:1}")

# sealer run of image $1 onto the hosts, --json report into $work/$2.json; sets `took` and `cpu`
# (the installer's user + system seconds).
install() {
    local t0 t1
    sync
    log "sealer run $1 onto ${#ips[@]} hosts ($3)"
    t0=$(now)
    /usr/bin/time -f '%U %S' -o "$work/$2.time" \
        "$bin" run "$1" -m "$master_ips" ${node_ips:+-n "$node_ips"} --pk "$key" \
        --known-hosts "$known_hosts" --json >"$work/$2.json" 2>"$work/$2.log" \
        || { cat "$work/$2.log" >&2; log "sealer run $1 failed"; exit 1; }
    t1=$(now)
    took=$(echo "$t1 - $t0" | bc -l)
    cpu=$(awk '{print $1 + $2}' "$work/$2.time")
}
# "MIN_SENT MAX_SENT MIN_REUSED" over the hosts of report $1.
sent() {
    python3 - "$work/$1.json" <<'PY'
import json, sys
hosts = json.load(open(sys.argv[1]))["hosts"]
print(min(h["bytes_sent"] for h in hosts), max(h["bytes_sent"] for h in hosts),
      min(h.get("bytes_reused", 0) for h in hosts))
PY
}

install bench/upgrade:1 first unshaped
first=$took
for ip in "${ips[@]}"; do "$testbed" shape "$tb_name" "$ip" "$rate"; done
install bench/upgrade:2 upgrade "every link at $rate"
upgrade=$took
upgrade_cpu=$cpu
read -r up_min up_max up_reused < <(sent upgrade)
install bench/upgrade:2 rerun "every link at $rate"
rerun=$took
read -r _ rerun_max _ < <(sent rerun)

# --- Floor: the changed frames' bytes through OpenSSH, every link at once -------------------------
head -c "$changed_bytes" /dev/urandom >"$work/changed.bin"
sync
log "floor: ssh cat of $changed_bytes B onto ${#ips[@]} hosts at $rate each"
t0=$(now)
pids=()
for ip in "${ips[@]}"; do
    ssh -c aes128-gcm@openssh.com -i "$key" -o BatchMode=yes -o UserKnownHostsFile="$known_hosts" \
        -o StrictHostKeyChecking=yes "root@$ip" 'cat > /dev/null' <"$work/changed.bin" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { log "ssh cat failed"; exit 1; }; done
floor=$(echo "$(now) - $t0" | bc -l)

# --- Report ----------------------------------------------------------------------------------
bytes_per_s=$((rate_mbit * 1000000 / 8))
bound=$(echo "$changed_bytes / $bytes_per_s" | bc -l)
mib() { echo "$1 / 1048576" | bc -l; }
div() { echo "$1 / $2" | bc -l; }
{
    printf '\n'
    printf 'image bench/upgrade:1: %d frames, %.1f MiB; bench/upgrade:2 changes %d of them (%.1f MiB, %.0f %% of the bytes)\n' \
        "$all_frames" "$(mib "$all_bytes")" "$changed_frames" "$(mib "$changed_bytes")" \
        "$(div "$((changed_bytes * 100))" "$all_bytes")"
    printf 'hosts: %d, each link shaped to %s (tc tbf) for the upgrade\n' "${#ips[@]}" "$rate"
    printf 'machine: %d CPUs, load average %s at the end\n\n' "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-52s %10.1fs  (unshaped, not measured against a bound)\n' "first install of v1" "$first"
    printf '%-52s %8.1f MiB .. %.1f MiB per host\n' "sent by the upgrade" "$(mib "$up_min")" "$(mib "$up_max")"
    printf '%-52s %8.1f MiB\n' "changed frames (from the packages' manifests)" "$(mib "$changed_bytes")"
    printf '%-52s %10.3fx  (target <= 1.1)\n' "sent / changed frames (the most sent to a host)" "$(div "$up_max" "$changed_bytes")"
    printf '%-52s %8.1f MiB per host at least\n' "reused from the hosts' frames" "$(mib "$up_reused")"
    printf '%-52s %10.1fs  (installer CPU %.1f s)\n' "upgrade" "$upgrade" "$upgrade_cpu"
    printf '%-52s %10.1fs\n' "lower bound: changed frame bytes / B" "$bound"
    printf '%-52s %10.2fx  (target <= 1.3)\n' "ours / bound" "$(div "$upgrade" "$bound")"
    printf '%-52s %10.1fs  (%.2fx the bound)\n' "floor: ssh cat of the same bytes, all hosts" "$floor" "$(div "$floor" "$bound")"
    printf '%-52s %10.2fx\n' "ours / floor" "$(div "$upgrade" "$floor")"
    printf '%-52s %10.1fs  (%d B to the host sent most)\n' "rerun (nothing to do)" "$rerun" "$rerun_max"
    printf '%-52s %10.1fs  (every frame: %.1f MiB per host)\n' "for scale: the whole image at B" \
        "$(div "$all_bytes" "$bytes_per_s")" "$(mib "$all_bytes")"
} | tee "$work/result.txt"
