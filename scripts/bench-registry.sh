#!/usr/bin/env bash
# Benchmark: the agent's pull-only registry (`sealer-stub agent registry serve`) against Debian's
# docker-registry (distribution 2.8) serving the same image, in the same run: `skopeo copy` of a
# ~200 MiB multi-layer image (gzipped layers of noise) from each into a `dir:` destination,
# alternated, several rounds. Prints the median copy time of each, ours / theirs (target <= 1.0)
# and the peak RSS of each server after all rounds (target for ours < 32 MiB).
#
# Usage: scripts/bench-registry.sh [--size-mib 200] [--layers 8] [--rounds 5] [--debug]
#   --debug   use the dev build of sealer-stub (default: the release build, built first)
# Needs python3, skopeo and docker-registry (scripts/ci-deps.sh). Everything lives in a temporary
# directory removed on exit; both servers listen on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=200
layers=8
rounds=5
profile=release
while [ $# -gt 0 ]; do
    case "$1" in
        --size-mib) size_mib=$2; shift 2 ;;
        --layers) layers=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --debug) profile=debug; shift ;;
        *) echo "usage: $0 [--size-mib N] [--layers N] [--rounds N] [--debug]" >&2; exit 2 ;;
    esac
done

if [ "$profile" = release ]; then
    cargo build --release --bin sealer-stub >&2
else
    cargo build --bin sealer-stub >&2
fi
stub=$PWD/target/x86_64-unknown-linux-gnu/$profile/sealer-stub

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

echo "writing a ${size_mib} MiB image of $layers layers" >&2
python3 - "$work/layout" "$size_mib" "$layers" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
root, size_mib, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
    "layers": descs}).encode()
index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": put(manifest), "size": len(manifest),
    "platform": {"architecture": "amd64", "os": "linux"},
    "annotations": {"org.opencontainers.image.ref.name": "docker.io/library/big:1"}}]}
open(f"{root}/index.json", "w").write(json.dumps(index))
open(f"{root}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY

ours_port=$(free_port)
"$stub" agent registry serve --root "$work/layout" --listen "127.0.0.1:$ours_port" 2>"$work/ours.log" &
ours_pid=$!
pids+=("$ours_pid")
wait_port "$ours_port"

theirs_port=$(free_port)
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
  addr: 127.0.0.1:$theirs_port
YML
docker-registry serve "$work/registry.yml" 2>"$work/theirs.log" &
theirs_pid=$!
pids+=("$theirs_pid")
wait_port "$theirs_port"

echo "pushing the image to docker-registry (from our registry)" >&2
skopeo copy --quiet --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
    "docker://127.0.0.1:$ours_port/library/big:1" "docker://127.0.0.1:$theirs_port/library/big:1"

copy_secs() {
    rm -rf "$work/out"
    local start end
    start=$(date +%s.%N)
    skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:$1/library/big:1" "dir:$work/out"
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

ours=()
theirs=()
for r in $(seq "$rounds"); do
    t_ours=$(copy_secs "$ours_port")
    t_theirs=$(copy_secs "$theirs_port")
    printf 'round %d: ours %.2f s, docker-registry %.2f s\n' "$r" "$t_ours" "$t_theirs" >&2
    ours+=("$t_ours")
    theirs+=("$t_theirs")
done
m_ours=$(printf '%s\n' "${ours[@]}" | median)
m_theirs=$(printf '%s\n' "${theirs[@]}" | median)
rss() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
blob_mib=$(du -sm "$work/layout/blobs" | cut -f1)
echo "image: $layers layers, $blob_mib MiB of blobs; $rounds rounds, sealer-stub $profile build"
printf 'skopeo copy, median: ours %.2f s, docker-registry %.2f s, ours / docker-registry %.2f (target <= 1.0)\n' \
    "$m_ours" "$m_theirs" "$(echo "$m_ours / $m_theirs" | bc -l)"
echo "peak RSS: ours $(rss "$ours_pid") MiB (target < 32), docker-registry $(rss "$theirs_pid") MiB"
