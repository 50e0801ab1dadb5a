//! A TCP connection to a host behind a jump host: a `direct-tcpip` channel over an
//! authenticated session to the jump host, presented to the inner session as an ordinary
//! socket. libssh2 runs a session over a file descriptor, not over another session's channel,
//! so the channel is pumped to one end of a loopback TCP pair by a thread of its own, and the
//! inner session gets the other end (a TCP socket, so its keepalive and silence checks work
//! as on a direct connection).
//!
//! Each tunnelled connection has its own jump-host session: libssh2 sessions are not safe to
//! share between threads, and the engine opens one connection per host and thread anyway.
//! The pump counts the bytes it carries each way. It ends when either side closes or fails;
//! the inner session then sees its socket close, as when a direct host drops.
//!
//! Jump-host sessions are opened at most [`JUMP_HANDSHAKES_AT_ONCE`] at a time per jump host
//! ([`handshake_slot`]), so that many hosts worked on at once stay below the jump host's
//! `MaxStartups`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ssh2::BlockDirections;

use super::{Session, SshError};

/// Jump-host sessions being opened (connected, not yet authenticated) to one jump host at once.
/// OpenSSH's sshd drops new connections at random once `MaxStartups` connections are
/// unauthenticated (default `10:30:100`: 30 % of new ones at 10, rising to all at 100), and
/// the engine opens one jump-host session per host it works on: 24 hosts at `--parallel 24`
/// had 5 handshakes cut ("Failed getting banner") and retried. A session holds its slot only
/// until it is authenticated, a fraction of a second. sshd's own count of them lags (its
/// listener learns that a connection authenticated only when it next reads that child's
/// pipe), so the limit leaves room under the 10: at 8, one round in two of tests/many_hosts
/// still had a handshake cut.
pub(super) const JUMP_HANDSHAKES_AT_ONCE: usize = 4;

/// Sessions being opened, per jump host (`ip:port`).
static OPENING: Mutex<Vec<(SocketAddr, Arc<Slots>)>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Slots {
    busy: Mutex<usize>,
    freed: Condvar,
}

/// A slot to open a session to a jump host; freed when dropped.
pub(super) struct HandshakeSlot(Arc<Slots>);

/// Waits until fewer than [`JUMP_HANDSHAKES_AT_ONCE`] sessions to the jump host at `ip:port`
/// are being opened by this process, and takes a slot.
pub(super) fn handshake_slot(ip: IpAddr, port: u16) -> HandshakeSlot {
    let addr = SocketAddr::new(ip, port);
    let slots = {
        // A counter stays consistent even if a thread panicked holding the lock.
        let mut all = OPENING.lock().unwrap_or_else(|e| e.into_inner());
        match all.iter().find(|(a, _)| *a == addr) {
            Some((_, slots)) => slots.clone(),
            None => {
                let slots = Arc::new(Slots::default());
                all.push((addr, slots.clone()));
                slots
            }
        }
    };
    {
        let mut busy = slots.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= JUMP_HANDSHAKES_AT_ONCE {
            busy = slots.freed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
    }
    HandshakeSlot(slots)
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut busy = self.0.busy.lock().unwrap_or_else(|e| e.into_inner());
        *busy = busy.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

/// Opens a `direct-tcpip` channel to `ip:port` over `jump` and returns the socket the inner
/// session talks through. `relayed` counts the bytes carried (both ways).
pub(super) fn open(
    jump: Session,
    ip: IpAddr,
    port: u16,
    relayed: Arc<AtomicU64>,
) -> Result<TcpStream, SshError> {
    let channel = {
        let _armed = jump.watchdog.arm(jump.timeouts.handshake);
        jump.sess
            .channel_direct_tcpip(&ip.to_string(), port, None)
            .map_err(|e| {
                let host = jump.name.clone();
                match jump.protocol("opening a tunnel", &e) {
                    SshError::Protocol { message, .. } => SshError::Unreachable {
                        host,
                        reason: format!(
                            "the jump host could not connect to {} ({message}); check that it reaches the host and that its sshd allows TCP forwarding (AllowTcpForwarding)",
                            crate::address::endpoint(ip, port)
                        ),
                    },
                    other => other,
                }
            })?
    };
    let jump_name = jump.name.clone();
    let local = |what: &str, source: io::Error| SshError::Local {
        host: jump_name.clone(),
        what: what.to_string(),
        source,
    };
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
        .map_err(|e| local("opening a loopback socket for the tunnel", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| local("opening a loopback socket for the tunnel", e))?;
    let inner = TcpStream::connect(addr).map_err(|e| local("connecting the tunnel socket", e))?;
    let (outer, _) = listener
        .accept()
        .map_err(|e| local("connecting the tunnel socket", e))?;
    if outer.peer_addr().ok() != inner.local_addr().ok() {
        return Err(local(
            "connecting the tunnel socket",
            io::Error::other("another process connected to the tunnel's loopback port first"),
        ));
    }
    let _ = outer.set_nodelay(true);
    let _ = inner.set_nodelay(true);
    outer
        .set_nonblocking(true)
        .map_err(|e| local("setting up the tunnel socket", e))?;
    std::thread::Builder::new()
        .name(format!("tunnel {}", crate::address::endpoint(ip, port)))
        .spawn(move || pump(jump, channel, outer, &relayed))
        .map_err(|e| local("starting the tunnel thread", e))?;
    Ok(inner)
}

/// Moves bytes between the channel and the loopback socket until one side ends; then closes
/// both, which the inner session sees as its connection closing.
fn pump(jump: Session, mut channel: ssh2::Channel, mut outer: TcpStream, relayed: &AtomicU64) {
    jump.sess.set_blocking(false);
    let mut up = vec![0u8; 256 * 1024]; // inner session -> channel
    let (mut up_start, mut up_end) = (0usize, 0usize);
    let mut down = vec![0u8; 256 * 1024]; // channel -> inner session
    let (mut down_start, mut down_end) = (0usize, 0usize);
    let mut inner_closed = false;
    let mut last_keepalive = Instant::now();
    let keepalive = jump.timeouts.keepalive;
    loop {
        let mut progress = false;
        // Inner session -> jump host.
        if up_start == up_end && !inner_closed {
            match outer.read(&mut up) {
                Ok(0) => inner_closed = true,
                Ok(n) => (up_start, up_end) = (0, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if up_start < up_end {
            match channel.write(&up[up_start..up_end]) {
                Ok(n) => {
                    up_start += n;
                    relayed.fetch_add(n as u64, Ordering::Relaxed);
                    progress |= n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if inner_closed && up_start == up_end {
            break;
        }
        // Jump host -> inner session.
        if down_start == down_end {
            match channel.read(&mut down) {
                Ok(0) if channel.eof() => break,
                Ok(0) => {}
                Ok(n) => {
                    (down_start, down_end) = (0, n);
                    relayed.fetch_add(n as u64, Ordering::Relaxed);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if down_start < down_end {
            match outer.write(&down[down_start..down_end]) {
                Ok(n) => {
                    down_start += n;
                    progress |= n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if progress {
            continue;
        }
        if last_keepalive.elapsed() >= keepalive {
            let _ = jump.sess.keepalive_send();
            last_keepalive = Instant::now();
        }
        wait(&jump, &outer, up_start == up_end, down_start < down_end);
    }
    // Either side ended: the inner session sees its socket close; the jump host's session
    // goes with this thread (its Drop is bounded by its watchdog).
    let _ = outer.shutdown(Shutdown::Both);
    drop(channel);
    drop(jump);
}

/// Waits until the jump host's socket or the loopback socket can move data, at most 200 ms.
fn wait(jump: &Session, outer: &TcpStream, want_up: bool, want_down: bool) {
    let jump_events = match jump.sess.block_directions() {
        BlockDirections::Outbound => libc::POLLOUT,
        BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
        _ => libc::POLLIN,
    };
    let mut outer_events = 0;
    if want_up {
        outer_events |= libc::POLLIN;
    }
    if want_down {
        outer_events |= libc::POLLOUT;
    }
    let mut fds = [
        libc::pollfd {
            fd: jump.socket.as_raw_fd(),
            events: jump_events,
            revents: 0,
        },
        libc::pollfd {
            fd: outer.as_raw_fd(),
            events: outer_events,
            revents: 0,
        },
    ];
    let limit = Duration::from_millis(200);
    // SAFETY: two valid pollfds, bounded wait.
    unsafe {
        libc::poll(fds.as_mut_ptr(), 2, limit.as_millis() as i32);
    }
}
