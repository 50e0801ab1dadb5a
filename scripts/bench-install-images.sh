#!/usr/bin/env bash
# Benchmark: installing a CloudImage whose bytes are mostly container images onto N testbed hosts
# (default 8: 3 masters, which serve the images, and 5 nodes) whose links are shaped with
# `tc tbf` to the same rate B. The registry hosts need every layer (rootfs and images layer), the
# nodes the rootfs layers only, every host on its own link in parallel, so the lower bound is
# (bytes of every layer) / B. Prints the install time, the bound, ours / bound (target <= 1.3),
# the transport floor measured in the same run (the same bytes through OpenSSH: every layer to
# each master, the rootfs layers to each node, all at once) and the bytes each host was sent
# (from `sealer run --json`). Then a second run (nothing to send) and an upgrade to an image
# whose list gained one image: bytes sent per registry host against that image's size, and
# what the first master's per-image journal steps did in each run.
#
# Usage (root; needs the testbed's packages, skopeo, docker-registry, see scripts/ci-deps.sh):
#   scripts/bench-install-images.sh [--rate 25mbit] [--hosts 8] [--masters 3] [--images-mib 192]
#                                   [--rootfs-mib 16] [--keep]
#
# The container images (4 images of 2 layers of gzipped random bytes, 192 MiB in all by
# default, plus a fifth for the upgrade) are written offline and served by Debian's
# docker-registry on 127.0.0.1; the rootfs is random and text-like bytes from a seeded
# generator. Release binaries are built first. Everything (store, registry, testbed, logs) is
# created fresh and removed on exit, also on failure or Ctrl-C (--keep leaves the logs).
set -euo pipefail
cd "$(dirname "$0")/.."

rate=25mbit
hosts=8
masters=3
images_mib=192
rootfs_mib=16
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --hosts) hosts=$2; shift 2 ;;
        --masters) masters=$2; shift 2 ;;
        --images-mib) images_mib=$2; shift 2 ;;
        --rootfs-mib) rootfs_mib=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--rate RATE] [--hosts N] [--masters N] [--images-mib MIB] [--rootfs-mib MIB] [--keep]" >&2
           exit 2 ;;
    esac
done
[ "$masters" -ge 1 ] && [ "$masters" -le "$hosts" ] || { echo "bench-install-images: --masters must be 1..--hosts" >&2; exit 2; }
bench=bench-install-images
tb_name=bench-images
bench_tools="python3 ssh bc tc skopeo docker-registry"
keep_drop="store registry-data layouts ctx"
. scripts/bench-common.sh
registry_pid=
bench_on_exit() {
    [ -z "$registry_pid" ] || { kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; }
}
bench_release

# --- Source registry and the container images ------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry-data
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" 2>"$work/registry.log" &
registry_pid=$!
for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done

log "writing 5 container images (4 x $((images_mib / 4)) MiB, and one more for the upgrade)"
arch=$(uname -m); case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
python3 - "$work/layouts" "$images_mib" "$arch" <<'PY'
# Each image: 2 layers of gzipped random bytes (already compressed, like most image layers) and
# a config, as an OCI layout tagged `1`.
import gzip, hashlib, io, json, os, sys, tarfile
root, images_mib, arch = sys.argv[1], int(sys.argv[2]), sys.argv[3]
per_layer = images_mib * 1024 * 1024 // 8
for n in range(5):
    layout = f"{root}/img{n}"
    os.makedirs(f"{layout}/blobs/sha256")
    def put(data):
        d = hashlib.sha256(data).hexdigest()
        open(f"{layout}/blobs/sha256/{d}", "wb").write(data)
        return "sha256:" + d
    descs, diff_ids = [], []
    for i in range(2):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            data = os.urandom(per_layer)
            info = tarfile.TarInfo(f"img{n}-layer{i}.bin"); info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        tar = buf.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = gzip.compress(tar, compresslevel=1)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(gz), "size": len(gz)})
    config = json.dumps({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
        "layers": descs}).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put(manifest), "size": len(manifest),
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": "1"}}]}
    open(f"{layout}/index.json", "w").write(json.dumps(index))
    open(f"{layout}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
for n in 0 1 2 3 4; do
    skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
        "oci:$work/layouts/img$n:1" "docker://127.0.0.1:$port/library/img$n:1"
done

# --- The CloudImages: v1 (4 images), v2 (the same and a fifth) ---------------------------------
mkdir -p "$work/ctx/rootfs/usr/share/bench" "$work/ctx/manifests"
python3 - "$work/ctx/rootfs/usr/share/bench" "$rootfs_mib" <<'PY'
# Half random bytes, half text-like lines, in 1 MiB files, from a seeded generator.
import random, sys
root, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
words = [("".join(rnd.choice("abcdefghij") for _ in range(rnd.randint(2, 9)))).encode() for _ in range(5000)]
for i in range(mib):
    if i % 2:
        data = rnd.randbytes(1 << 20)
    else:
        data = b" ".join(rnd.choice(words) for _ in range(200000))[: 1 << 20]
    open(f"{root}/f{i:04d}", "wb").write(data)
PY
printf 'FROM scratch\nCOPY rootfs/usr /usr\nCOPY manifests manifests\n' >"$work/ctx/Kubefile"
export SEALER_ROOT="$work/store"
list() { for n in "$@"; do echo "127.0.0.1:$port/library/img$n:1"; done; }
list 0 1 2 3 >"$work/ctx/manifests/imageList"
log "sealer build bench/images:1"
"$bin" build -t bench/images:1 --insecure "$work/ctx" >"$work/build1.log" 2>&1 || { cat "$work/build1.log" >&2; exit 1; }
list 0 1 2 3 4 >"$work/ctx/manifests/imageList"
log "sealer build bench/images:2 (one more image)"
"$bin" build -t bench/images:2 --insecure "$work/ctx" >"$work/build2.log" 2>&1 || { cat "$work/build2.log" >&2; exit 1; }

# "IMAGES OTHERS" compressed bytes of the images layer and of the other layers of image $1.
layer_bytes() {
    python3 - "$SEALER_ROOT/oci" "$1" <<'PY'
import json, sys
oci, ref = sys.argv[1], sys.argv[2]
blob = lambda d: f"{oci}/blobs/{d.replace(':', '/')}"
index = json.load(open(f"{oci}/index.json"))
m = next(m for m in index["manifests"]
         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref)
images = others = 0
for layer in json.load(open(blob(m["digest"])))["layers"]:
    if layer.get("annotations", {}).get("io.sealer.layer.content") == "container-images":
        images += layer["size"]
    else:
        others += layer["size"]
print(images, others)
PY
}
# The store's layer files of image $1: "images" or "others".
layer_files() {
    python3 - "$SEALER_ROOT/oci" "$1" "$2" <<'PY'
import json, sys
oci, ref, which = sys.argv[1], sys.argv[2], sys.argv[3]
blob = lambda d: f"{oci}/blobs/{d.replace(':', '/')}"
index = json.load(open(f"{oci}/index.json"))
m = next(m for m in index["manifests"]
         if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref)
for layer in json.load(open(blob(m["digest"])))["layers"]:
    is_images = layer.get("annotations", {}).get("io.sealer.layer.content") == "container-images"
    if is_images == (which == "images"):
        print(blob(layer["digest"]))
PY
}
read -r images_bytes other_bytes < <(layer_bytes bench/images:1)
read -r images_bytes2 _ < <(layer_bytes bench/images:2)
added_image_bytes=$(du -bc "$work"/layouts/img4/blobs/sha256/* | tail -1 | cut -f1)

# --- Testbed: N hosts, every link shaped to B, containerd's config_path on each -------------
bench_testbed_up "$hosts"
ips=("${all_ips[@]}")
for ip in "${ips[@]}"; do
    "$testbed" shape "$tb_name" "$ip" "$rate"
    "$testbed" exec "$tb_name" "$ip" 'mkdir -p /etc/containerd && printf "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n" >/etc/containerd/config.toml'
done
master_ips=$(IFS=,; echo "${ips[*]:0:$masters}")
node_ips=$(IFS=,; echo "${ips[*]:$masters}")

# sealer run of image $1 onto the hosts, --json report into $work/$2.json; sets `took`.
install() {
    local t0 t1
    sync
    log "sealer run $1 onto ${#ips[@]} hosts ($masters masters) at $rate each"
    t0=$(now)
    "$bin" run "$1" -m "$master_ips" ${node_ips:+-n "$node_ips"} --pk "$key" \
        --known-hosts "$known_hosts" --json >"$work/$2.json" 2>"$work/$2.log" \
        || { cat "$work/$2.log" >&2; log "sealer run $1 failed"; exit 1; }
    t1=$(now)
    took=$(echo "$t1 - $t0" | bc -l)
}
# "MAX_MASTER MAX_NODE" bytes sent per host in report $1.
sent() {
    python3 - "$work/$1.json" "$masters" <<'PY'
import json, sys
doc, masters = json.load(open(sys.argv[1])), int(sys.argv[2])
hosts = doc["hosts"]
m = max(h["bytes_sent"] for h in hosts[:masters])
n = max([h["bytes_sent"] for h in hosts[masters:]] or [0])
print(m, n)
PY
}

install bench/images:1 first
first=$took
read -r first_master first_node < <(sent first)
install bench/images:1 second
second=$took
read -r second_master second_node < <(sent second)
install bench/images:2 upgrade
upgrade=$took
read -r upgrade_master upgrade_node < <(sent upgrade)

# --- Transport floor: the same layers through OpenSSH, every link at once ---------------------
mapfile -t all_files < <(layer_files bench/images:1 images; layer_files bench/images:1 others)
mapfile -t rootfs_files < <(layer_files bench/images:1 others)
sync
log "floor: ssh cat of the layers onto ${#ips[@]} hosts at $rate each"
t0=$(now)
pids=()
for i in "${!ips[@]}"; do
    if [ "$i" -lt "$masters" ]; then files=("${all_files[@]}"); else files=("${rootfs_files[@]}"); fi
    cat "${files[@]}" | ssh -c aes128-gcm@openssh.com -i "$key" -o BatchMode=yes \
        -o UserKnownHostsFile="$known_hosts" -o StrictHostKeyChecking=yes "root@${ips[$i]}" 'cat > /dev/null' &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { log "ssh cat failed"; exit 1; }; done
floor=$(echo "$(now) - $t0" | bc -l)

# What the first master's image steps did in run $1 ("N already served, M checked (...)").
image_steps() {
    grep -o "\[${ips[0]}\] container images: .*" "$work/$1.log" | head -n 1 | sed 's/.*container images: //'
}

# --- Report ----------------------------------------------------------------------------------
bytes_per_s=$((rate_mbit * 1000000 / 8))
bound=$(echo "($images_bytes + $other_bytes) / $bytes_per_s" | bc -l)
mib() { echo "$1 / 1048576" | bc -l; }
div() { echo "$1 / $2" | bc -l; }
{
    printf '\n'
    printf 'image bench/images:1: images layer %.1f MiB (4 container images), other layers %.1f MiB (%.0f %% images)\n' \
        "$(mib "$images_bytes")" "$(mib "$other_bytes")" "$(div "$((images_bytes * 100))" "$((images_bytes + other_bytes))")"
    printf 'hosts: %d (%d masters serving the images, %d nodes), each link shaped to %s (tc tbf)\n' \
        "${#ips[@]}" "$masters" "$((${#ips[@]} - masters))" "$rate"
    printf 'machine: %d CPUs, load average %s at the end\n\n' "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%-52s %10.1fs\n' "first install" "$first"
    printf '%-52s %10.1fs\n' "lower bound: bytes a registry host needs / B" "$bound"
    printf '%-52s %10.2fx  (target <= 1.3)\n' "ours / bound" "$(div "$first" "$bound")"
    printf '%-52s %10.1fs  (%.2fx the bound)\n' "floor: ssh cat of the same bytes, all hosts" "$floor" "$(div "$floor" "$bound")"
    printf '%-52s %10.2fx\n' "ours / floor" "$(div "$first" "$floor")"
    printf '%-52s %8.1f MiB per master, %.1f MiB per node\n' "sent by the first install" \
        "$(mib "$first_master")" "$(mib "$first_node")"
    printf '%-52s %10.1fs  (%d B per master, %d B per node)\n' "second install (nothing to do)" \
        "$second" "$second_master" "$second_node"
    printf '%-52s %10.1fs\n' "upgrade to bench/images:2 (one more image)" "$upgrade"
    printf '%-52s %8.1f MiB per master, %.1f MiB per node\n' "  sent by the upgrade" \
        "$(mib "$upgrade_master")" "$(mib "$upgrade_node")"
    printf '%-52s %8.1f MiB (images layer of v2: %.1f MiB)\n' "  the added image's blobs" \
        "$(mib "$added_image_bytes")" "$(mib "$images_bytes2")"
    printf '%-52s %s\n' "image steps on ${ips[0]}: first install" "$(image_steps first)"
    printf '%-52s %s\n' "  second install" "$(image_steps second)"
    printf '%-52s %s\n' "  upgrade" "$(image_steps upgrade)"
} | tee "$work/result.txt"
