#!/usr/bin/env bash
# Installs what the test suite needs on a Debian host (CI or a developer VM) and builds the
# testbed's cached base root filesystem. Idempotent: packages already installed are not touched,
# `apt-get update` runs at most once per invocation and only when something is missing, and the
# base rootfs is built only when its cache is absent.
#
# Nothing is started globally: services shipped by the packages (sshd, docker-registry, etcd, containerd) are
# kept from starting during installation by a temporary policy-rc.d, and stopped/disabled if a
# previous installation started them. Tests start their own instances (sshd inside testbed hosts,
# docker-registry on 127.0.0.1 on a port of their choosing).
#
# Usage: scripts/ci-deps.sh [--no-base]     (must run as root)
set -euo pipefail

log() { printf 'ci-deps: %s\n' "$*"; }
die() { printf 'ci-deps: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the testbed needs netns, overlay mounts and apt)"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian/Ubuntu only"

build_base=1
[ "${1:-}" = "--no-base" ] && build_base=0

# Wanted packages; any that this distribution does not carry is reported and skipped.
wanted=(openssh-server openssh-client debootstrap skopeo docker-registry zstd iproute2 xz-utils
        tar file binutils time sudo etcd-client etcd-server sshpass util-linux procps
        apache2-utils openssl bc minisign containerd python3-grpcio systemd busybox
        man-db groff-base zsh fish python3-venv tmux b3sum)

missing=()
for pkg in "${wanted[@]}"; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        log "present: $pkg"
    else
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get update (missing: ${missing[*]})"
    apt-get update -qq
    installable=()
    for pkg in "${missing[@]}"; do
        cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then
            installable+=("$pkg")
        else
            log "not packaged here, skipped: $pkg"
        fi
    done
    if [ "${#installable[@]}" -gt 0 ]; then
        # Keep package maintainer scripts from starting daemons while installing.
        policy=/usr/sbin/policy-rc.d
        restore_policy=""
        if [ -e "$policy" ]; then
            restore_policy=$(mktemp)
            cp -p "$policy" "$restore_policy"
        fi
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        log "apt-get install ${installable[*]}"
        rc=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${installable[@]}" || rc=$?
        if [ -n "$restore_policy" ]; then
            mv "$restore_policy" "$policy"
        else
            rm -f "$policy"
        fi
        [ "$rc" -eq 0 ] || die "apt-get install failed (exit $rc)"
    fi
else
    log "all packages present, no apt-get update needed"
fi

# The CycloneDX JSON schema validator tests/sbom.rs judges SBOMs with: cyclonedx-python-lib from
# PyPI (it ships the CycloneDX 1.5 schema files, so validating needs no network) in a venv of its
# own, away from the system Python.
cyclonedx_venv=${SEALER_CYCLONEDX_VENV:-/opt/sealer-ci/cyclonedx}
if "$cyclonedx_venv/bin/python" -c 'import cyclonedx.validation.json' 2>/dev/null; then
    log "present: cyclonedx-python-lib in $cyclonedx_venv"
else
    log "pip install cyclonedx-python-lib[json-validation] into $cyclonedx_venv"
    /usr/bin/python3 -m venv "$cyclonedx_venv"
    "$cyclonedx_venv/bin/pip" install -q 'cyclonedx-python-lib[json-validation]>=7,<12'
fi

# Daemons the packages may have started on a systemd host: stop and disable them, tests run
# their own instances.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    for unit in ssh.service ssh.socket docker-registry.service etcd.service containerd.service; do
        if systemctl is-active --quiet "$unit" 2>/dev/null || systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            log "stopping and disabling global $unit (tests start their own)"
            systemctl disable --now "$unit" >/dev/null 2>&1 || true
        fi
    done
fi

# Kernel pieces the testbed uses (no-ops where built in or already loaded).
for mod in overlay veth bridge sch_tbf; do
    modprobe "$mod" 2>/dev/null || true
done

if [ "$build_base" -eq 1 ]; then
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    log "ensuring the testbed base root filesystem"
    "$here/../tests/testbed/testbed.sh" base
    log "removing testbeds left by crashed test runs"
    "$here/../tests/testbed/testbed.sh" gc
fi
log "done"
