//! A per-session watchdog: while an operation is armed with a deadline, a thread waits; if the
//! deadline passes, it shuts the TCP socket down, which makes every blocked libssh2 call return.
//! It knows nothing about SSH; it only guarantees that no call on the socket blocks forever.

use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    fired: bool,
    stop: bool,
}

pub(super) struct Watchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent even if a holder panicked: every write is a single field.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watchdog {
    pub fn spawn(socket: TcpStream) -> Watchdog {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ssh-watchdog".into())
            .spawn(move || {
                let (mutex, cv) = &*theirs;
                let mut state = lock(mutex);
                loop {
                    if state.stop {
                        return;
                    }
                    match state.deadline {
                        None => {
                            state = cv.wait(state).unwrap_or_else(|p| p.into_inner());
                        }
                        Some(deadline) => {
                            let now = Instant::now();
                            if now >= deadline {
                                let _ = socket.shutdown(Shutdown::Both);
                                state.fired = true;
                                state.deadline = None;
                            } else {
                                state = cv
                                    .wait_timeout(state, deadline - now)
                                    .unwrap_or_else(|p| p.into_inner())
                                    .0;
                            }
                        }
                    }
                }
            })
            .ok();
        Watchdog { shared, thread }
    }

    /// Arms the watchdog for `limit` from now; the returned guard disarms it when dropped.
    pub fn arm(&self, limit: Duration) -> Armed {
        let (mutex, cv) = &*self.shared;
        lock(mutex).deadline = Some(Instant::now() + limit);
        cv.notify_all();
        Armed {
            shared: Arc::clone(&self.shared),
        }
    }

    /// True once the watchdog has shut the socket down; the session is unusable afterwards.
    pub fn fired(&self) -> bool {
        lock(&self.shared.0).fired
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (mutex, cv) = &*self.shared;
        lock(mutex).stop = true;
        cv.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An armed deadline; dropping it disarms the watchdog.
pub(super) struct Armed {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        lock(&self.shared.0).deadline = None;
    }
}
