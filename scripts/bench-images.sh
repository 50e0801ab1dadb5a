#!/usr/bin/env bash
# Benchmark: collecting container images at build (`sealer build` with a `manifests/imageList`)
# against `skopeo copy` of the same image into an OCI directory, in the same run, alternated,
# several rounds: a ~200 MiB image of gzipped noise layers served by Debian's docker-registry on
# 127.0.0.1. Each sealer round builds into a fresh store (every blob is fetched). Prints the
# median wall time and CPU time (user + system) of each and the ratios sealer / skopeo (target
# <= 1.2), then the time of a rebuild with the store kept (nothing fetched). On a busy machine the
# CPU ratio is the steadier figure.
#
# Usage: scripts/bench-images.sh [--size-mib 200] [--layers 8] [--rounds 5] [--release]
#   --release   use the release build of sealer (default: the dev build, whose dependencies
#               are optimised: sha256, zstd and the HTTP stack run at opt-level 2)
# Needs python3, skopeo and docker-registry (scripts/ci-deps.sh). Everything lives in a temporary
# directory removed on exit; the registry listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=200
layers=8
rounds=5
profile=debug
while [ $# -gt 0 ]; do
    case "$1" in
        --size-mib) size_mib=$2; shift 2 ;;
        --layers) layers=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --release) profile=release; shift ;;
        *) echo "usage: $0 [--size-mib N] [--layers N] [--rounds N] [--release]" >&2; exit 2 ;;
    esac
done

if [ "$profile" = release ]; then
    cargo build --release --bin sealer >&2
else
    cargo build --bin sealer >&2
fi
sealer=$PWD/target/x86_64-unknown-linux-gnu/$profile/sealer

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1" >&2; exit 1
}

arch=$(uname -m); case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
echo "writing a ${size_mib} MiB image of $layers layers" >&2
python3 - "$work/layout" "$size_mib" "$layers" "$arch" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
root, size_mib, layers, arch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.makedirs(f"{root}/blobs/sha256")
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(f"{root}/blobs/sha256/{d}", "wb").write(data)
    return "sha256:" + d
descs, diff_ids = [], []
per = size_mib * 1024 * 1024 // layers
for i in range(layers):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        data = os.urandom(per)
        info = tarfile.TarInfo(f"layer{i}.bin"); info.size = len(data)
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
    "annotations": {"org.opencontainers.image.ref.name": "big:1"}}]}
open(f"{root}/index.json", "w").write(json.dumps(index))
open(f"{root}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY

port=$(free_port)
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
pids+=("$!")
wait_port "$port"
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:big:1" "docker://127.0.0.1:$port/library/big:1"

mkdir -p "$work/ctx/manifests"
printf 'FROM scratch\nCOPY manifests manifests\n' >"$work/ctx/Kubefile"
echo "127.0.0.1:$port/library/big:1" >"$work/ctx/manifests/imageList"

# "WALL CPU" seconds of a command (CPU = user + system, children included).
secs() {
    /usr/bin/time -f '%e %U %S' -o "$work/time" "$@" >/dev/null 2>"$work/stderr" \
        || { cat "$work/stderr" >&2; exit 1; }
    awk '{printf "%.2f %.2f\n", $1, $2 + $3}' "$work/time"
}
skopeo_round() {
    rm -rf "$work/out"
    secs skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:$port/library/big:1" "oci:$work/out:big"
}
sealer_round() {
    rm -rf "$work/store"
    SEALER_ROOT=$work/store secs "$sealer" build -t bench:1 --insecure "$work/ctx"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

ours=()
theirs=()
ours_cpu=()
theirs_cpu=()
for r in $(seq "$rounds"); do
    read -r t_ours c_ours < <(sealer_round)
    read -r t_theirs c_theirs < <(skopeo_round)
    printf 'round %d: sealer build %.2f s (CPU %.2f s), skopeo copy %.2f s (CPU %.2f s)\n' \
        "$r" "$t_ours" "$c_ours" "$t_theirs" "$c_theirs" >&2
    ours+=("$t_ours"); ours_cpu+=("$c_ours")
    theirs+=("$t_theirs"); theirs_cpu+=("$c_theirs")
done
read -r rebuild _ < <(SEALER_ROOT=$work/store secs "$sealer" build -t bench:2 --insecure "$work/ctx")
m_ours=$(printf '%s\n' "${ours[@]}" | median)
m_theirs=$(printf '%s\n' "${theirs[@]}" | median)
mc_ours=$(printf '%s\n' "${ours_cpu[@]}" | median)
mc_theirs=$(printf '%s\n' "${theirs_cpu[@]}" | median)
blob_mib=$(du -sm "$work/layout/blobs" | cut -f1)
echo "image: $layers layers, $blob_mib MiB of blobs; $rounds rounds, sealer $profile build; load average $(cut -d' ' -f1 /proc/loadavg)"
printf 'median wall: sealer build %.2f s, skopeo copy to oci: %.2f s, sealer / skopeo %.2f (target <= 1.2)\n' \
    "$m_ours" "$m_theirs" "$(echo "$m_ours / $m_theirs" | bc -l)"
printf 'median CPU:  sealer build %.2f s, skopeo copy to oci: %.2f s, sealer / skopeo %.2f\n' \
    "$mc_ours" "$mc_theirs" "$(echo "$mc_ours / $mc_theirs" | bc -l)"
printf 'rebuild with the store kept (nothing fetched): %.2f s\n' "$rebuild"
