//! The writer pool: small files are created, written and closed on worker threads, in batches
//! under a byte budget. It writes what the tree hands it; it decides nothing about paths.
//!
//! A batch holds files of one directory, and every batch of a directory goes to the same
//! worker. Creating a file takes its directory's lock in the kernel: two workers creating in
//! one directory would only take turns, and the one waiting spins on the lock (a quarter of
//! an extraction's CPU on a 2-CPU machine, measured with `perf`), while workers on different
//! directories do not meet.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use super::sys::{create_file, finish_file, Meta, Owners};
use super::{EntryProblem, UnpackError};

/// Bytes of file content queued for the writer pool at most.
const POOL_BUDGET: usize = 48 << 20;

pub(super) struct FileJob {
    pub(super) path: PathBuf,
    pub(super) shown: String,
    pub(super) layer: String,
    pub(super) data: Vec<u8>,
    pub(super) meta: Meta,
}

#[derive(Default)]
pub(super) struct PoolState {
    pub(super) queued_bytes: usize,
    /// Batches sent and not yet written.
    pub(super) pending: usize,
    pub(super) failure: Option<UnpackError>,
}

/// Files are handed to the workers in batches, so the threads meet (a lock, a wake-up) once
/// per batch rather than once per file.
pub(super) const BATCH_FILES: usize = 32;
pub(super) const BATCH_BYTES: usize = 1 << 20;

/// Files of one directory, written by one worker.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) jobs: Vec<FileJob>,
    pub(super) bytes: usize,
}

impl Batch {
    /// The directory of the batch's files.
    fn dir(&self) -> Option<&Path> {
        self.jobs.first().and_then(|job| job.path.parent())
    }
}

pub(super) struct WriterPool {
    /// One queue per worker; a directory's batches always take the same one.
    pub(super) jobs: Mutex<Option<Vec<mpsc::Sender<Batch>>>>,
    /// Files collected by the parsing thread, not yet sent (only that thread touches it).
    pub(super) batch: Mutex<Batch>,
    pub(super) state: Arc<(Mutex<PoolState>, Condvar)>,
}

impl WriterPool {
    pub(super) fn start<'scope>(
        threads: &'scope std::thread::Scope<'scope, '_>,
        workers: usize,
        owners: Owners,
    ) -> Self {
        let state: Arc<(Mutex<PoolState>, Condvar)> = Arc::default();
        let mut senders = Vec::with_capacity(workers.max(1));
        for _ in 0..workers.max(1) {
            let (tx, rx) = mpsc::channel::<Batch>();
            senders.push(tx);
            let state = Arc::clone(&state);
            threads.spawn(move || loop {
                let Ok(batch) = rx.recv() else { return };
                let mut failure = None;
                for job in batch.jobs {
                    if let Err(e) = write_whole(&job.path, &job.data, job.meta, owners) {
                        failure = Some(UnpackError::Entry {
                            layer: job.layer,
                            path: job.shown,
                            problem: EntryProblem::Io(e),
                        });
                        break;
                    }
                }
                let (lock, wake) = &*state;
                let mut st = match lock.lock() {
                    Ok(st) => st,
                    Err(poisoned) => poisoned.into_inner(),
                };
                st.queued_bytes -= batch.bytes;
                st.pending -= 1;
                if st.failure.is_none() {
                    st.failure = failure;
                }
                wake.notify_one();
            });
        }
        WriterPool {
            jobs: Mutex::new(Some(senders)),
            batch: Mutex::new(Batch::default()),
            state,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        match self.state.0.lock() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(super) fn submit(&self, job: FileJob) -> Result<(), UnpackError> {
        let (other_dir, full) = {
            let mut batch = match self.batch.lock() {
                Ok(b) => b,
                Err(poisoned) => poisoned.into_inner(),
            };
            // A file of another directory starts a new batch.
            let other_dir = match batch.dir() {
                Some(dir) if Some(dir) != job.path.parent() => Some(std::mem::take(&mut *batch)),
                _ => None,
            };
            batch.bytes += job.data.len();
            batch.jobs.push(job);
            let full = if batch.jobs.len() >= BATCH_FILES || batch.bytes >= BATCH_BYTES {
                Some(std::mem::take(&mut *batch))
            } else {
                None
            };
            (other_dir, full)
        };
        for batch in other_dir.into_iter().chain(full) {
            self.send(batch)?;
        }
        Ok(())
    }

    pub(super) fn send(&self, batch: Batch) -> Result<(), UnpackError> {
        if batch.jobs.is_empty() {
            return Ok(());
        }
        {
            let mut st = self.lock();
            while st.queued_bytes > 0
                && st.queued_bytes + batch.bytes > POOL_BUDGET
                && st.failure.is_none()
            {
                st = match self.state.1.wait(st) {
                    Ok(st) => st,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            if let Some(failure) = st.failure.take() {
                return Err(failure);
            }
            st.queued_bytes += batch.bytes;
            st.pending += 1;
        }
        let mut hasher = DefaultHasher::new();
        batch.dir().hash(&mut hasher);
        let lane = hasher.finish() as usize;
        let sent = match self.jobs.lock() {
            Ok(jobs) => jobs
                .as_ref()
                .filter(|senders| !senders.is_empty())
                .map(|senders| senders[lane % senders.len()].send(batch).is_ok())
                .unwrap_or(false),
            Err(_) => false,
        };
        if !sent {
            return Err(UnpackError::Io {
                what: "writing files under",
                path: PathBuf::new(),
                source: io::Error::other("the writer threads stopped"),
            });
        }
        Ok(())
    }

    /// Wait until every submitted file is on disk; report the first failure.
    pub(super) fn drain(&self) -> Result<(), UnpackError> {
        let rest = match self.batch.lock() {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        self.send(rest)?;
        let mut st = self.lock();
        while st.pending > 0 {
            st = match self.state.1.wait(st) {
                Ok(st) => st,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        match st.failure.take() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    pub(super) fn stop(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }
}

pub(super) fn write_whole(path: &Path, data: &[u8], meta: Meta, owners: Owners) -> io::Result<()> {
    let mut file = create_file(path, meta.mode)?;
    file.write_all(data)?;
    finish_file(&file, meta, owners)
}
