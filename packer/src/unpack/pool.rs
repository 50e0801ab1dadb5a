//! The writer pool: small files are created, written and closed on worker threads, in batches
//! under a byte budget. It writes what the tree hands it; it decides nothing about paths.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use super::sys::{create_file, finish_file, Meta};
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

#[derive(Default)]
pub(super) struct Batch {
    pub(super) jobs: Vec<FileJob>,
    pub(super) bytes: usize,
}

pub(super) struct WriterPool {
    pub(super) jobs: Mutex<Option<mpsc::Sender<Batch>>>,
    /// Files collected by the parsing thread, not yet sent (only that thread touches it).
    pub(super) batch: Mutex<Batch>,
    pub(super) state: Arc<(Mutex<PoolState>, Condvar)>,
}

impl WriterPool {
    pub(super) fn start<'scope>(
        threads: &'scope std::thread::Scope<'scope, '_>,
        workers: usize,
        ownership: bool,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Batch>();
        let rx = Arc::new(Mutex::new(rx));
        let state: Arc<(Mutex<PoolState>, Condvar)> = Arc::default();
        for _ in 0..workers {
            let rx = Arc::clone(&rx);
            let state = Arc::clone(&state);
            threads.spawn(move || loop {
                let batch = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(batch) = batch else { return };
                let mut failure = None;
                for job in batch.jobs {
                    if let Err(e) = write_whole(&job.path, &job.data, job.meta, ownership) {
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
            jobs: Mutex::new(Some(tx)),
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
        let full = {
            let mut batch = match self.batch.lock() {
                Ok(b) => b,
                Err(poisoned) => poisoned.into_inner(),
            };
            batch.bytes += job.data.len();
            batch.jobs.push(job);
            if batch.jobs.len() >= BATCH_FILES || batch.bytes >= BATCH_BYTES {
                Some(std::mem::take(&mut *batch))
            } else {
                None
            }
        };
        match full {
            Some(batch) => self.send(batch),
            None => Ok(()),
        }
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
        let sent = match self.jobs.lock() {
            Ok(jobs) => jobs
                .as_ref()
                .map(|tx| tx.send(batch).is_ok())
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

pub(super) fn write_whole(path: &Path, data: &[u8], meta: Meta, ownership: bool) -> io::Result<()> {
    let mut file = create_file(path, meta.mode)?;
    file.write_all(data)?;
    finish_file(&file, meta, ownership)
}
