#!/usr/bin/env bash
# Real-host testbed for the SSH install tests: N Debian hosts, each a real OpenSSH server with its
# own network namespace, address, hostname and root filesystem (an overlay over one cached
# debootstrap tree). Nothing is mocked and nothing leaves the machine: the testbed's bridge carries
# traffic only between the root namespace (.1) and its hosts; hosts have no default route and the
# bridge never forwards.
#
#   testbed.sh base                                   build the cached base rootfs if missing
#   testbed.sh up --name NAME --hosts N [--owner-pid PID]
#   testbed.sh down --name NAME
#   testbed.sh gc                                     remove testbeds whose owner process is gone
#   testbed.sh status --name NAME                     print the host table
#   testbed.sh kill-sshd NAME HOST | start-sshd NAME HOST
#   testbed.sh link-down NAME HOST | link-up NAME HOST
#   testbed.sh shape NAME HOST RATE|off               tc tbf on the host's link (both directions)
#   testbed.sh regen-hostkey NAME HOST                new host keys, sshd restarted
#   testbed.sh exec NAME HOST CMD...                  run CMD (via /bin/sh -c) inside the host
#
# HOST is a 1-based index, an address or a hostname. `up` and `status` print one line per host:
#   host <index> <ip> <hostname> <netns> <veth>
# then `bridge <name> <ip>`, `key`, `encrypted-key`, `passphrase`, `root-password`,
# `deploy-password`, `known-hosts` and `run-dir` lines.
#
# Layout: base cache  $TESTBED_CACHE_DIR (/var/cache/sealer-testbed)/base-<suite>-r<recipe>
#         run state   $TESTBED_RUN_DIR (/var/tmp/sealer-testbed)/<name>/
# Kernel objects of testbed index X (10.244.X.0/24): bridge stbX, netns stbXhI, veth vbXhI.
set -euo pipefail
umask 022

readonly RECIPE=1
readonly CACHE_DIR=${TESTBED_CACHE_DIR:-/var/cache/sealer-testbed}
readonly RUN_ROOT=${TESTBED_RUN_DIR:-/var/tmp/sealer-testbed}
readonly SUBNET_PREFIX=10.244
readonly ROOT_PASSWORD=sealer-test
readonly DEPLOY_PASSWORD=deploy-test
readonly KEY_PASSPHRASE=sealer-passphrase
readonly MAX_HOSTS=200
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

log() { printf 'testbed: %s\n' "$*" >&2; }
die() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (netns, overlay mounts, chroot)"; }

need_tools() {
    local missing=() t
    for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
    [ "${#missing[@]}" -eq 0 ] || die "missing tools: ${missing[*]} (run scripts/ci-deps.sh as root)"
}

# ---------------------------------------------------------------------------------------------
# Base root filesystem

# Suite and mirror that apt already uses here (deb822 sources first, then one-line sources).
detect_suite_mirror() {
    local suite="${TESTBED_SUITE:-}" mirror="${TESTBED_MIRROR:-}" f line uris suites s
    if [ -z "$suite" ] || [ -z "$mirror" ]; then
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            uris="" suites=""
            while IFS= read -r line || [ -n "$line" ]; do
                case "$line" in
                    URIs:*) uris=${line#URIs:} ;;
                    Suites:*) suites=${line#Suites:} ;;
                    "")
                        if [ -n "$uris" ] && [ -n "$suites" ]; then break; fi ;;
                esac
            done <"$f"
            for s in $suites; do
                case "$s" in *-*|*/*) continue ;; esac
                for u in $uris; do
                    case "$u" in */debian|*/debian/) [ -n "$mirror" ] || mirror=$u; [ -n "$suite" ] || suite=$s ;; esac
                done
            done
            [ -n "$suite" ] && [ -n "$mirror" ] && break
        done
    fi
    if { [ -z "$suite" ] || [ -z "$mirror" ]; } && [ -f /etc/apt/sources.list ]; then
        while read -r typ rest; do
            [ "$typ" = deb ] || continue
            set -- $rest
            case "$1" in \[*) shift ;; esac
            case "$2" in *-*|*/*) continue ;; esac
            [ -n "$mirror" ] || mirror=$1
            [ -n "$suite" ] || suite=$2
            break
        done </etc/apt/sources.list
    fi
    if [ -z "$suite" ]; then
        suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    fi
    [ -n "$suite" ] || die "cannot tell the Debian suite from /etc/apt/sources.list{,.d}; set TESTBED_SUITE"
    mirror=${mirror:-http://deb.debian.org/debian}
    mirror=${mirror%/}
    printf '%s %s\n' "$suite" "$mirror"
}


# Unmount everything at or below $1, deepest first.
unmount_below() {
    local dir mnts
    dir=$(realpath -m "$1")
    mapfile -t mnts < <(awk -v d="$dir" '{ gsub(/\\040/, " ", $5); if ($5 == d || index($5, d "/") == 1) print $5 }' /proc/self/mountinfo | sort -r)
    local m
    for m in "${mnts[@]}"; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done
}

remove_tree() {
    [ -e "$1" ] || return 0
    unmount_below "$1"
    rm -rf --one-file-system -- "$1"
}

cmd_base() {
    need_root
    local suite mirror dir tmp sm
    sm=$(detect_suite_mirror)
    read -r suite mirror <<<"$sm"
    dir="$CACHE_DIR/base-$suite-r$RECIPE"
    if [ -f "$dir/.testbed-base-ok" ]; then
        printf '%s\n' "$dir"
        return 0
    fi
    need_tools debootstrap flock
    mkdir -p "$CACHE_DIR"
    exec 8>"$CACHE_DIR/.base.lock"
    flock 8
    if [ -f "$dir/.testbed-base-ok" ]; then
        exec 8>&-
        printf '%s\n' "$dir"
        return 0
    fi
    # Leftovers of interrupted builds (their mounts included) are never reused.
    local stale
    for stale in "$CACHE_DIR"/base-*.tmp.*; do
        [ -e "$stale" ] || continue
        log "removing interrupted build $stale"
        remove_tree "$stale"
    done
    [ -e "$dir" ] && { log "removing incomplete base $dir"; remove_tree "$dir"; }
    tmp="$dir.tmp.$$"
    log "building base rootfs: debootstrap --variant=minbase $suite $mirror (once; cached in $dir)"
    local t0=$SECONDS
    if ! debootstrap --variant=minbase \
        --include=openssh-server,sudo,iproute2,procps,ca-certificates \
        "$suite" "$tmp" "$mirror" >"$CACHE_DIR/debootstrap.log" 2>&1; then
        tail -n 20 "$CACHE_DIR/debootstrap.log" >&2
        remove_tree "$tmp"
        die "debootstrap failed (log: $CACHE_DIR/debootstrap.log)"
    fi
    unmount_below "$tmp/proc"; unmount_below "$tmp/sys"; unmount_below "$tmp/dev"
    configure_base "$tmp"
    touch "$tmp/.testbed-base-ok"
    mv -T "$tmp" "$dir"
    exec 8>&-
    log "base rootfs ready in $((SECONDS - t0))s: $dir"
    printf '%s\n' "$dir"
}

configure_base() {
    local r=$1
    rm -f "$r"/etc/ssh/ssh_host_*
    mkdir -p "$r/etc/ssh/sshd_config.d"
    cat >"$r/etc/ssh/sshd_config.d/00-testbed.conf" <<'EOF'
# sealer testbed host
PermitRootLogin yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
EOF
    # No login accounting in a namespace without audit: keep PAM sessions from failing on it.
    sed -i 's/^\(session\s\+\)required\(\s\+pam_loginuid\.so\)/\1optional\2/' "$r/etc/pam.d/sshd"
    echo "root:$ROOT_PASSWORD" | chroot "$r" /usr/sbin/chpasswd
    chroot "$r" /usr/sbin/useradd --create-home --shell /bin/bash deploy
    echo "deploy:$DEPLOY_PASSWORD" | chroot "$r" /usr/sbin/chpasswd
    printf 'deploy ALL=(ALL) NOPASSWD: ALL\n' >"$r/etc/sudoers.d/deploy"
    chmod 0440 "$r/etc/sudoers.d/deploy"
    mkdir -p "$r/root/.ssh" && chmod 700 "$r/root/.ssh"
    mkdir -p "$r/home/deploy/.ssh" && chmod 700 "$r/home/deploy/.ssh"
    chroot "$r" chown deploy:deploy /home/deploy/.ssh
    chmod 1777 "$r/tmp"
    rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
    # PID 1 of every host: starts sshd and reaps orphans (bash reaps any child on SIGCHLD).
    cat >"$r/sbin/testbed-init" <<'EOF'
#!/bin/bash
/usr/sbin/sshd -D -e >>/var/log/sshd.log 2>&1 &
while :; do sleep 3600 & wait $!; done
EOF
    chmod 755 "$r/sbin/testbed-init"
}

# ---------------------------------------------------------------------------------------------
# Run state

tb_dir() { printf '%s/%s\n' "$RUN_ROOT" "$1"; }

check_name() {
    [[ "$1" =~ ^[a-z0-9][a-z0-9-]{0,23}$ ]] || die "bad testbed name '$1': use [a-z0-9-], at most 24 characters"
}

# Start time (clock ticks since boot) of a pid, or empty when it does not exist or is a zombie.
proc_start() {
    local stat
    [ -n "$1" ] || return 0
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    set -- $stat
    [ "$1" = Z ] && return 0
    printf '%s\n' "${20}"
}

pid_alive() { # pid starttime
    [ -n "$1" ] && [ -n "$2" ] && [ "$(proc_start "$1")" = "$2" ]
}

# Index file of a testbed; host lines are "index ip hostname netns veth".
tb_index() { cat "$(tb_dir "$1")/index" 2>/dev/null; }

resolve_host() { # name host-spec -> index
    local name=$1 spec=$2 i ip hn _rest
    while read -r i ip hn _rest; do
        if [ "$spec" = "$i" ] || [ "$spec" = "$ip" ] || [ "$spec" = "$hn" ]; then
            printf '%s\n' "$i"
            return 0
        fi
    done <"$(tb_dir "$name")/hosts"
    die "testbed $name has no host '$spec'"
}

host_field() { # name index field(2=ip,3=hostname,4=netns,5=veth)
    awk -v i="$2" -v f="$3" '$1 == i { print $f }' "$(tb_dir "$1")/hosts"
}

# PID (root namespace) of the host's PID 1, verified against its recorded start time.
host_init_pid() {
    local d pid start
    d="$(tb_dir "$1")/h$2"
    pid=$(cat "$d/init.pid" 2>/dev/null || true)
    start=$(cat "$d/init.start" 2>/dev/null || true)
    if pid_alive "$pid" "$start"; then printf '%s\n' "$pid"; fi
}

# With br_netfilter loaded, bridged host-to-host traffic crosses the root namespace's iptables
# FORWARD chain, whose policy may be DROP (Docker sets it). One rule scoped to the testbed's own
# bridge (in and out) lets its hosts reach each other; nothing else is opened.
bridge_firewall() { # add|del X
    local x=$1 op=$2 rule
    command -v iptables >/dev/null 2>&1 || return 0
    rule=(FORWARD -i "stb$x" -o "stb$x" -m comment --comment "sealer-testbed stb$x" -j ACCEPT)
    if [ "$op" = add ]; then
        [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0)" = 1 ] || return 0
        iptables -w -C "${rule[@]}" 2>/dev/null || iptables -w -I "${rule[@]}" 2>/dev/null || \
            log "could not add an iptables FORWARD rule for stb$x; hosts may not reach each other"
    else
        while iptables -w -D "${rule[@]}" 2>/dev/null; do :; done
    fi
    return 0
}

# Remove kernel objects of index X that no state directory owns any more.
purge_index_objects() {
    local x=$1 ns link
    bridge_firewall "$x" del
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^stb${x}h[0-9]+$" || true); do
        kill_netns_procs "$ns"
        ip netns del "$ns" 2>/dev/null || true
    done
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^(vb${x}h[0-9]+|stb${x})$" || true); do
        ip link del "$link" 2>/dev/null || true
    done
}

# Kill processes living in a named netns (only those, by pid; `ip netns pids` matches the
# namespace itself, not names).
kill_netns_procs() {
    local p
    for p in $(ip netns pids "$1" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    return 0
}

cmd_down() {
    local name=$1 d x i ip hn ns veth pid
    d=$(tb_dir "$name")
    [ -d "$d" ] || { log "testbed $name: nothing to remove"; return 0; }
    x=$(tb_index "$name" || true)
    if [ -f "$d/hosts" ]; then
        while read -r i ip hn ns veth; do
            pid=$(host_init_pid "$name" "$i")
            if [ -n "$pid" ]; then
                kill -9 "$pid" 2>/dev/null || true
                for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
            fi
            kill_netns_procs "$ns"
            ip netns del "$ns" 2>/dev/null || true
            ip link del "$veth" 2>/dev/null || true
        done <"$d/hosts"
    fi
    if [ -n "$x" ]; then purge_index_objects "$x"; fi
    remove_tree "$d"
    [ -e "$d" ] && die "testbed $name: could not remove $d"
    log "testbed $name: down"
}

# Testbeds whose owner process is gone (crashed test binaries) are removed. A testbed being set up
# is protected by its setup pid; one brought up without an owner only goes once no host runs.
cmd_gc() {
    local d name opid
    for d in "$RUN_ROOT"/*/; do
        [ -d "$d" ] || continue
        name=$(basename "$d")
        pid_alive "$(cat "$d/setup.pid" 2>/dev/null)" "$(cat "$d/setup.start" 2>/dev/null)" && continue
        opid=$(cat "$d/owner.pid" 2>/dev/null || true)
        if [ -n "$opid" ]; then
            pid_alive "$opid" "$(cat "$d/owner.start" 2>/dev/null)" && continue
        elif [ -f "$d/hosts" ] && any_host_alive "$name"; then
            continue
        fi
        log "reaping testbed $name (owner ${opid:-none} gone, or never finished setting up)"
        cmd_down "$name"
    done
}

any_host_alive() {
    local i _r
    while read -r i _r; do
        [ -n "$(host_init_pid "$1" "$i")" ] && return 0
    done <"$(tb_dir "$1")/hosts"
    return 1
}

subnet_in_use() {
    ip -4 -o addr show 2>/dev/null | grep -q " $SUBNET_PREFIX\.$1\." && return 0
    ip -4 route show 2>/dev/null | grep -q "^$SUBNET_PREFIX\.$1\." && return 0
    return 1
}

allocate_index() { # called with the run lock held
    local x used=" " f
    for f in "$RUN_ROOT"/*/index; do
        [ -f "$f" ] && used+="$(cat "$f") "
    done
    for x in $(seq 1 254); do
        case "$used" in *" $x "*) continue ;; esac
        purge_index_objects "$x"
        subnet_in_use "$x" && continue
        printf '%s\n' "$x"
        return 0
    done
    die "no free 10.244.X.0/24 subnet for a new testbed (254 in use; run 'testbed.sh gc')"
}

# ---------------------------------------------------------------------------------------------
# Hosts

start_host() { # name index
    local name=$1 i=$2 d hd root ns hn pid child
    d=$(tb_dir "$name")
    hd="$d/h$i"
    root="$hd/root"
    ns=$(host_field "$name" "$i" 4)
    hn=$(host_field "$name" "$i" 3)
    # The setup runs as PID 1 of the new PID namespace, in a private mount namespace: mounts made
    # here vanish with the host.
    setsid ip netns exec "$ns" unshare --mount --uts --pid --fork --propagation private \
        /bin/bash -c '
            set -e
            r=$1
            hostname "$2"
            mount -t proc proc "$r/proc"
            mount -t sysfs -o ro sysfs "$r/sys"
            mount -t tmpfs -o mode=755,size=1m dev "$r/dev"
            for n in null zero full random urandom tty; do
                touch "$r/dev/$n"; mount --bind "/dev/$n" "$r/dev/$n"
            done
            mkdir -p "$r/dev/pts" "$r/dev/shm"
            mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$r/dev/pts"
            ln -s pts/ptmx "$r/dev/ptmx"
            mount -t tmpfs -o mode=1777 shm "$r/dev/shm"
            ln -s /proc/self/fd "$r/dev/fd"
            ln -s /proc/self/fd/0 "$r/dev/stdin"
            ln -s /proc/self/fd/1 "$r/dev/stdout"
            ln -s /proc/self/fd/2 "$r/dev/stderr"
            mount -t tmpfs -o mode=755 run "$r/run"
            mkdir -p "$r/run/sshd" "$r/run/lock"
            chmod 0755 "$r/run/sshd"
            exec chroot "$r" /sbin/testbed-init
        ' testbed-host "$root" "$hn" </dev/null >>"$hd/host.log" 2>&1 &
    pid=$!
    child=""
    for _ in $(seq 100); do
        child=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null | awk '{print $1}')
        [ -n "$child" ] && break
        sleep 0.05
    done
    [ -n "$child" ] || die "host $hn: its namespace process did not start (log: $hd/host.log)"
    printf '%s\n' "$child" >"$hd/init.pid"
    proc_start "$child" >"$hd/init.start"
}

# Run a command inside a host: its network, mount, UTS and PID namespaces and its root.
host_exec() { # name index cmd...
    local name=$1 i=$2 pid
    shift 2
    pid=$(host_init_pid "$name" "$i")
    [ -n "$pid" ] || die "host $i of testbed $name is not running"
    nsenter --target "$pid" --mount --uts --pid --net --root --wd \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LC_ALL=C /bin/sh -c "$*"
}

# sshd processes of one host (listener and sessions), as pids in the root namespace.
host_sshd_pids() {
    local pid ino p
    pid=$(host_init_pid "$1" "$2")
    [ -n "$pid" ] || return 0
    ino=$(stat -L -c %i "/proc/$pid/ns/pid") || return 0
    for p in /proc/[0-9]*; do
        [ "$(stat -L -c %i "$p/ns/pid" 2>/dev/null)" = "$ino" ] || continue
        [ "$(cat "$p/comm" 2>/dev/null)" = sshd ] && printf '%s\n' "${p#/proc/}"
    done
    return 0
}

wait_port() { # ip port seconds want(open|closed)
    local deadline=$((SECONDS + $3))
    while [ $SECONDS -le $deadline ]; do
        if timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then
            [ "$4" = open ] && return 0
        else
            [ "$4" = closed ] && return 0
        fi
        sleep 0.1
    done
    return 1
}

cmd_kill_sshd() {
    local name=$1 i=$2 p
    for p in $(host_sshd_pids "$name" "$i"); do kill -9 "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        [ -z "$(host_sshd_pids "$name" "$i")" ] && return 0
        sleep 0.1
    done
    die "host $i of testbed $name: sshd still running after SIGKILL"
}

cmd_start_sshd() {
    local name=$1 i=$2 ip
    [ -n "$(host_sshd_pids "$name" "$i")" ] && { log "host $i: sshd already running"; return 0; }
    host_exec "$name" "$i" 'mkdir -p /run/sshd; /usr/sbin/sshd -D -e >>/var/log/sshd.log 2>&1 </dev/null & exit 0'
    ip=$(host_field "$name" "$i" 2)
    wait_port "$ip" 22 10 open || die "host $i of testbed $name: sshd did not come back on $ip:22"
}

cmd_regen_hostkey() {
    local name=$1 i=$2 root
    root="$(tb_dir "$name")/h$i/root"
    gen_host_keys "$root"
    cmd_kill_sshd "$name" "$i"
    cmd_start_sshd "$name" "$i"
}

# Fresh host keys (ed25519, ecdsa, rsa 2048: a 3072-bit key costs over a second per host).
gen_host_keys() {
    local root=$1
    rm -f "$root"/etc/ssh/ssh_host_*
    ssh-keygen -q -t ed25519 -N '' -C root@testbed -f "$root/etc/ssh/ssh_host_ed25519_key"
    ssh-keygen -q -t ecdsa -N '' -C root@testbed -f "$root/etc/ssh/ssh_host_ecdsa_key"
    ssh-keygen -q -t rsa -b 2048 -N '' -C root@testbed -f "$root/etc/ssh/ssh_host_rsa_key"
}

rate_bytes() { # tc rate (e.g. 100mbit, 5mbps, 1gbit, 800kbit) -> bytes/s
    local v=$1 n u
    n=${v%%[a-zA-Z]*}
    u=${v#"$n"}
    [[ "$n" =~ ^[0-9]+$ ]] || die "bad rate '$v' (examples: 100mbit, 20mbps, 1gbit)"
    case "${u,,}" in
        bit|"") echo $((n / 8)) ;;
        kbit) echo $((n * 1000 / 8)) ;;
        mbit) echo $((n * 1000000 / 8)) ;;
        gbit) echo $((n * 1000000000 / 8)) ;;
        bps) echo "$n" ;;
        kbps) echo $((n * 1000)) ;;
        mbps) echo $((n * 1000000)) ;;
        gbps) echo $((n * 1000000000)) ;;
        *) die "bad rate unit in '$v' (bit, kbit, mbit, gbit, bps, kbps, mbps, gbps)" ;;
    esac
}

cmd_shape() {
    local name=$1 i=$2 rate=$3 veth bytes burst
    veth=$(host_field "$name" "$i" 5)
    if [ "$rate" = off ]; then
        tc qdisc del dev "$veth" root 2>/dev/null || true
        ip netns exec "$(host_field "$name" "$i" 4)" tc qdisc del dev eth0 root 2>/dev/null || true
        return 0
    fi
    bytes=$(rate_bytes "$rate")
    burst=$((bytes / 50))
    [ "$burst" -ge 32768 ] || burst=32768
    tc qdisc replace dev "$veth" root tbf rate "$rate" burst "$burst" latency 100ms
    ip netns exec "$(host_field "$name" "$i" 4)" \
        tc qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency 100ms
}

cmd_up() {
    local name="" n="" owner=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --name) name=$2; shift 2 ;;
            --hosts) n=$2; shift 2 ;;
            --owner-pid) owner=$2; shift 2 ;;
            *) die "up: unknown argument '$1'" ;;
        esac
    done
    [ -n "$name" ] || die "up: --name NAME is required"
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le $MAX_HOSTS ] || die "up: --hosts must be 1..$MAX_HOSTS"
    check_name "$name"
    need_root
    need_tools ip unshare nsenter chroot setsid flock mount umount ssh-keygen tc timeout awk
    local t0=$SECONDS base d x
    base=$(cmd_base)
    mkdir -p "$RUN_ROOT"
    d=$(tb_dir "$name")
    exec 9>"$RUN_ROOT/.lock"
    flock 9
    cmd_gc
    if [ -e "$d" ]; then
        log "testbed $name: removing leftovers of an earlier run"
        cmd_down "$name"
    fi
    x=$(allocate_index)
    mkdir -p "$d"
    printf '%s\n' "$$" >"$d/setup.pid"
    proc_start "$$" >"$d/setup.start"
    printf '%s\n' "$x" >"$d/index"
    if [ -n "$owner" ]; then
        printf '%s\n' "$owner" >"$d/owner.pid"
        proc_start "$owner" >"$d/owner.start"
    fi
    exec 9>&-
    # From here on any failure removes everything this run created.
    UP_NAME=$name
    trap 'rc=$?; if [ $rc -ne 0 ]; then log "up failed; cleaning up"; cmd_down "$UP_NAME" || true; fi' EXIT

    local bridge="stb$x" i ip hn
    ip link add "$bridge" type bridge
    sysctl -qw "net.ipv4.conf.$bridge.forwarding=0"
    sysctl -qw "net.ipv6.conf.$bridge.disable_ipv6=1" 2>/dev/null || true
    ip addr add "$SUBNET_PREFIX.$x.1/24" dev "$bridge"
    ip link set "$bridge" up
    bridge_firewall "$x" add

    mkdir -p "$d/keys"
    ssh-keygen -q -t ed25519 -N '' -C "sealer-testbed-$name" -f "$d/keys/id_ed25519"
    ssh-keygen -q -t ed25519 -N "$KEY_PASSPHRASE" -C "sealer-testbed-$name-encrypted" -f "$d/keys/id_ed25519_encrypted"
    printf '%s\n' "$KEY_PASSPHRASE" >"$d/keys/passphrase"
    : >"$d/known_hosts"

    : >"$d/hosts"
    for i in $(seq 1 "$n"); do
        printf '%s %s %s %s %s\n' "$i" "$SUBNET_PREFIX.$x.$((10 + i))" "$name-h$i" "stb${x}h$i" "vb${x}h$i" >>"$d/hosts"
    done

    local hosts_file
    hosts_file=$(printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n'; awk '{print $2, $3}' "$d/hosts")

    local ns veth root hd mac
    while read -r i ip hn ns veth; do
        hd="$d/h$i"
        root="$hd/root"
        mkdir -p "$hd/upper" "$hd/work" "$root"
        mount -t overlay overlay -o "lowerdir=$base,upperdir=$hd/upper,workdir=$hd/work" "$root"
        printf '%s\n' "$hn" >"$root/etc/hostname"
        printf '%s\n' "$hosts_file" >"$root/etc/hosts"
        cat "$d/keys/id_ed25519.pub" "$d/keys/id_ed25519_encrypted.pub" >"$root/root/.ssh/authorized_keys"
        cp "$root/root/.ssh/authorized_keys" "$root/home/deploy/.ssh/authorized_keys"
        chmod 600 "$root/root/.ssh/authorized_keys" "$root/home/deploy/.ssh/authorized_keys"
        chroot "$root" chown deploy:deploy /home/deploy/.ssh/authorized_keys
        gen_host_keys "$root" &

        ip netns add "$ns"
        ip link add "$veth" type veth peer name eth0 netns "$ns"
        ip link set "$veth" master "$bridge" up
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
        ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" link set eth0 up
        # A static neighbour entry: with the link down, packets to the host vanish (a connect
        # times out) instead of failing fast on ARP.
        mac=$(ip -n "$ns" -o link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
        ip neigh replace "$ip" lladdr "$mac" dev "$bridge" nud permanent
    done <"$d/hosts"
    wait

    while read -r i ip hn ns veth; do
        start_host "$name" "$i"
    done <"$d/hosts"
    while read -r i ip hn ns veth; do
        wait_port "$ip" 22 20 open || die "host $hn ($ip): sshd not listening after 20s (log: $d/h$i/root/var/log/sshd.log)"
    done <"$d/hosts"
    trap - EXIT
    rm -f "$d/setup.pid" "$d/setup.start"

    log "testbed $name: $n host(s) up on $SUBNET_PREFIX.$x.0/24 in $((SECONDS - t0))s"
    cmd_status "$name"
}

cmd_status() {
    local name=$1 d i ip hn ns veth
    d=$(tb_dir "$name")
    [ -f "$d/hosts" ] || die "no testbed named $name"
    while read -r i ip hn ns veth; do printf 'host %s %s %s %s %s\n' "$i" "$ip" "$hn" "$ns" "$veth"; done <"$d/hosts"
    printf 'bridge stb%s %s.%s.1\n' "$(cat "$d/index")" "$SUBNET_PREFIX" "$(cat "$d/index")"
    printf 'key %s\n' "$d/keys/id_ed25519"
    printf 'encrypted-key %s\n' "$d/keys/id_ed25519_encrypted"
    printf 'passphrase %s\n' "$KEY_PASSPHRASE"
    printf 'root-password %s\n' "$ROOT_PASSWORD"
    printf 'deploy-password %s\n' "$DEPLOY_PASSWORD"
    printf 'known-hosts %s\n' "$d/known_hosts"
    printf 'run-dir %s\n' "$d"
}

main() {
    local cmd=${1:-}
    [ $# -gt 0 ] && shift
    case "$cmd" in
        base) cmd_base ;;
        up) cmd_up "$@" ;;
        down)
            [ "${1:-}" = --name ] && [ -n "${2:-}" ] || die "usage: down --name NAME"
            check_name "$2"; need_root; cmd_down "$2" ;;
        gc) need_root; mkdir -p "$RUN_ROOT"; exec 9>"$RUN_ROOT/.lock"; flock 9; cmd_gc ;;
        status)
            [ "${1:-}" = --name ] && [ -n "${2:-}" ] || die "usage: status --name NAME"
            cmd_status "$2" ;;
        kill-sshd|start-sshd|link-down|link-up|regen-hostkey|exec|shape)
            [ $# -ge 2 ] || die "usage: $cmd NAME HOST${cmd/exec/ CMD}"
            local name=$1 i
            check_name "$name"; need_root
            [ -f "$(tb_dir "$name")/hosts" ] || die "no testbed named $name"
            i=$(resolve_host "$name" "$2")
            shift 2
            case "$cmd" in
                kill-sshd) cmd_kill_sshd "$name" "$i" ;;
                start-sshd) cmd_start_sshd "$name" "$i" ;;
                link-down) ip link set "$(host_field "$name" "$i" 5)" down ;;
                link-up) ip link set "$(host_field "$name" "$i" 5)" up ;;
                regen-hostkey) cmd_regen_hostkey "$name" "$i" ;;
                shape) [ $# -eq 1 ] || die "usage: shape NAME HOST RATE|off"; cmd_shape "$name" "$i" "$1" ;;
                exec) [ $# -ge 1 ] || die "usage: exec NAME HOST CMD..."; host_exec "$name" "$i" "$@" ;;
            esac ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
}

main "$@"
