//! The agent's stdin, which gives up after the stall timeout without a byte: an installer whose
//! link was lost never closes the connection, and the agent must not wait for it forever.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::DEFAULT_STALL;

static STALL_SECS: AtomicU64 = AtomicU64::new(DEFAULT_STALL.as_secs());

/// Sets the stall timeout of every later [`Input`].
pub(super) fn set_stall(stall: Duration) {
    STALL_SECS.store(stall.as_secs(), Ordering::Relaxed);
}

/// Stdin that fails with `TimedOut` when no byte arrives for the stall timeout.
pub(super) struct Input {
    stall: Duration,
}

impl Input {
    pub(super) fn stdin() -> Self {
        Input {
            stall: Duration::from_secs(STALL_SECS.load(Ordering::Relaxed)),
        }
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stdin = io::stdin();
        let fd = stdin.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = self.stall.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: one valid pollfd, bounded wait.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no input for {}s; the installer is gone (link lost or killed)",
                        self.stall.as_secs()
                    ),
                ));
            }
            break;
        }
        // SAFETY: reads at most buf.len() bytes into buf from our own stdin.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}
