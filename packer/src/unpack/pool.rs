//! The writer pool: small files are created, written and closed on worker threads, in batches
//! under a byte budget. It writes what the tree hands it; it decides nothing about paths.
//!
//! Creating a file takes its directory's lock in the kernel: two workers creating in one
//! directory would only take turns, and the one waiting spins on the lock (a quarter of an
//! extraction's CPU on a 2-CPU machine, measured with `perf`). So a batch holds files of one
//! directory, and every batch of a directory is *opened* by the same worker (its lane). Writing
//! the content, the times and closing take no directory lock: an opened batch goes back to a
//! shared queue that any worker finishes. A directory of thousands of files (a `man1`) then
//! keeps one worker creating and the others writing, instead of one worker doing it all while
//! the rest wait. Where the process may open too few files for batches to stay open (a low
//! `ulimit -n`), each worker creates, writes and closes one file after the other instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::decode::Content;
use super::sys::{create_file, finish_file, Dir, Meta, Owners};
use super::{EntryProblem, UnpackError};

/// Bytes of file content queued for the writer pool at most. A directory of thousands of small
/// files (a `man1`) is created by one worker at the kernel's pace; the budget is what lets the
/// parser get past it and feed the other workers the directories that follow (48 MiB held the
/// parser behind `man1` on real software; 96 MiB made the extraction 5 % faster there without
/// raising the peak RSS: docs/benchmarks.md).
const POOL_BUDGET: usize = 96 << 20;

/// Opened batches waiting for a worker to write them, at most.
const OPENED_MAX: usize = 8;

/// Files open at once when opening and writing are split: every worker opening a batch, the
/// opened batches waiting, every worker writing one. With fewer allowed (a low `ulimit -n`),
/// each worker creates, writes and closes one file after the other, as before the split.
fn split_fits(workers: usize) -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return false;
    }
    let needed = (2 * workers + OPENED_MAX) * BATCH_FILES + 64;
    limit.rlim_cur >= needed as libc::rlim_t
}

pub(super) struct FileJob {
    pub(super) path: PathBuf,
    pub(super) shown: String,
    pub(super) layer: Arc<str>,
    pub(super) data: Content,
    pub(super) meta: Meta,
}

impl FileJob {
    fn failed(self, e: io::Error) -> UnpackError {
        UnpackError::Entry {
            layer: self.layer.to_string(),
            path: self.shown,
            problem: EntryProblem::Io(e),
        }
    }
}

/// Files are handed to the workers in batches, so the threads meet (a lock, a wake-up) once
/// per batch rather than once per file.
pub(super) const BATCH_FILES: usize = 32;
pub(super) const BATCH_BYTES: usize = 1 << 20;

/// Files of one directory.
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

    /// The directory as the queues know it.
    fn dir_key(&self) -> PathBuf {
        self.dir().unwrap_or(Path::new("")).to_path_buf()
    }
}

/// A batch whose files are created, their content not yet written.
struct Opened {
    files: Vec<(File, FileJob)>,
    bytes: usize,
    dir: PathBuf,
}

/// A batch written, or given up after a failure.
struct Done {
    bytes: usize,
    dir: PathBuf,
    failure: Option<UnpackError>,
}

/// What the workers and the parsing thread share, under one lock.
#[derive(Default)]
struct Queues {
    /// Batches to open, one queue per worker; a directory's batches always take the same one.
    lanes: Vec<VecDeque<Batch>>,
    /// Batches of each lane not yet opened, counting the one being opened.
    unopened: Vec<usize>,
    /// Opened batches, for any worker to write.
    opened: VecDeque<Opened>,
    /// Bytes of content sent and not yet written.
    queued_bytes: usize,
    /// Batches sent and not yet written.
    pending: usize,
    failure: Option<UnpackError>,
    /// The extraction is over: workers return, dropping what is left.
    stopped: bool,
    /// The lane of each directory files were sent for.
    lane_of: HashMap<PathBuf, usize>,
    /// Batches sent and not yet written, per directory (only directories with some).
    pending_in: HashMap<PathBuf, usize>,
}

impl Queues {
    /// The lane for a batch of files in `dir`: the lane of the directory's earlier batches
    /// (two workers creating in one directory would only contend for its lock), else, for a
    /// directory not seen before, the lane with the fewest batches waiting, so a directory of
    /// thousands of files does not hold up others behind it.
    fn lane_for(&mut self, dir: &Path) -> usize {
        if let Some(&lane) = self.lane_of.get(dir) {
            return lane;
        }
        let lane = (0..self.lanes.len())
            .min_by_key(|&lane| self.unopened[lane])
            .unwrap_or(0);
        self.lane_of.insert(dir.to_path_buf(), lane);
        lane
    }

    /// The next thing worker `lane` should do, if any.
    fn take(&mut self, lane: usize) -> Option<Work> {
        // Opening runs ahead of writing only so far: past that, write first.
        if self.opened.len() >= OPENED_MAX {
            return self.opened.pop_front().map(Work::Write);
        }
        if let Some(batch) = self.lanes[lane].pop_front() {
            return Some(Work::Open(batch));
        }
        self.opened.pop_front().map(Work::Write)
    }

    /// A batch is done (written, or given up after a failure).
    fn done(&mut self, done: Done) {
        self.queued_bytes -= done.bytes;
        self.pending -= 1;
        if let Some(left) = self.pending_in.get_mut(&done.dir) {
            *left -= 1;
            if *left == 0 {
                self.pending_in.remove(&done.dir);
            }
        }
        if self.failure.is_none() {
            self.failure = done.failure;
        }
    }
}

enum Work {
    Open(Batch),
    Write(Opened),
}

pub(super) struct WriterPool {
    queues: Mutex<Queues>,
    /// Workers wait here for work.
    work: Condvar,
    /// The parsing thread waits here for room under the budget, or for the pool to drain.
    room: Condvar,
    /// Files collected by the parsing thread, not yet sent (only that thread touches it).
    batch: Mutex<Batch>,
    owners: Owners,
    /// Opening and writing are done by different workers ([`split_fits`]).
    split: bool,
}

impl WriterPool {
    pub(super) fn new(workers: usize, owners: Owners) -> Self {
        WriterPool {
            queues: Mutex::new(Queues {
                lanes: (0..workers.max(1)).map(|_| VecDeque::new()).collect(),
                unopened: vec![0; workers.max(1)],
                ..Queues::default()
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            batch: Mutex::new(Batch::default()),
            owners,
            split: split_fits(workers.max(1)),
        }
    }

    /// Start one worker per lane on `threads`; they return after [`WriterPool::stop`].
    pub(super) fn start<'scope, 'env>(
        &'env self,
        threads: &'scope std::thread::Scope<'scope, 'env>,
    ) {
        let lanes = self.lock().lanes.len();
        for lane in 0..lanes {
            threads.spawn(move || self.work_lane(lane));
        }
    }

    fn work_lane(&self, lane: usize) {
        let mut queues = self.lock();
        loop {
            if queues.stopped {
                return;
            }
            let Some(work) = queues.take(lane) else {
                queues = wait(&self.work, queues);
                continue;
            };
            drop(queues);
            let finished = match work {
                Work::Open(batch) => {
                    let opened = if self.split {
                        self.open(batch)
                    } else {
                        Err(Box::new(self.write_each(batch)))
                    };
                    queues = self.lock();
                    queues.unopened[lane] -= 1;
                    match opened {
                        Ok(opened) => {
                            queues.opened.push_back(opened);
                            self.work.notify_one();
                            continue;
                        }
                        Err(done) => *done,
                    }
                }
                Work::Write(opened) => {
                    let done = self.write(opened);
                    queues = self.lock();
                    done
                }
            };
            queues.done(finished);
            self.room.notify_all();
        }
    }

    /// Create every file of `batch`; on a failure, the batch is done with that failure.
    fn open(&self, batch: Batch) -> Result<Opened, Box<Done>> {
        let dir = batch.dir().map(Dir::open);
        let key = batch.dir_key();
        let mut files = Vec::with_capacity(batch.jobs.len());
        for job in batch.jobs {
            let created = match (&dir, job.path.file_name()) {
                (Some(Ok(dir)), Some(name)) => dir.create(name, job.meta.mode),
                _ => create_file(&job.path, job.meta.mode),
            };
            match created {
                Ok(file) => files.push((file, job)),
                Err(e) => {
                    return Err(Box::new(Done {
                        bytes: batch.bytes,
                        dir: key,
                        failure: Some(job.failed(e)),
                    }))
                }
            }
        }
        Ok(Opened {
            files,
            bytes: batch.bytes,
            dir: key,
        })
    }

    /// Create, write, time and close the files of `batch` one after the other.
    fn write_each(&self, batch: Batch) -> Done {
        let dir = batch.dir_key();
        let failure = batch.jobs.into_iter().find_map(|job| {
            create_file(&job.path, job.meta.mode)
                .and_then(|mut file| self.fill(&mut file, &job))
                .err()
                .map(|e| job.failed(e))
        });
        Done {
            bytes: batch.bytes,
            dir,
            failure,
        }
    }

    /// Write, time and close every file of an opened batch; the first failure ends it.
    fn write(&self, opened: Opened) -> Done {
        let failure = opened
            .files
            .into_iter()
            .find_map(|(mut file, job)| self.fill(&mut file, &job).err().map(|e| job.failed(e)));
        Done {
            bytes: opened.bytes,
            dir: opened.dir,
            failure,
        }
    }

    /// A created file gets its content, owner, mode and times.
    fn fill(&self, file: &mut File, job: &FileJob) -> io::Result<()> {
        file.write_all(job.data.bytes())?;
        finish_file(file, job.meta, self.owners)
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        match self.queues.lock() {
            Ok(queues) => queues,
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
        let mut queues = self.lock();
        while queues.queued_bytes > 0
            && queues.queued_bytes + batch.bytes > POOL_BUDGET
            && queues.failure.is_none()
        {
            queues = wait(&self.room, queues);
        }
        if let Some(failure) = queues.failure.take() {
            return Err(failure);
        }
        if queues.stopped {
            return Err(UnpackError::Io {
                what: "writing files under",
                path: PathBuf::new(),
                source: io::Error::other("the writer threads stopped"),
            });
        }
        queues.queued_bytes += batch.bytes;
        queues.pending += 1;
        let dir = batch.dir_key();
        let lane = queues.lane_for(&dir);
        *queues.pending_in.entry(dir).or_default() += 1;
        queues.lanes[lane].push_back(batch);
        queues.unopened[lane] += 1;
        // Every worker may be the lane's owner or a writer in waiting: wake them all, once
        // per batch.
        self.work.notify_all();
        Ok(())
    }

    /// Hand the files collected so far to the workers.
    fn flush(&self) -> Result<(), UnpackError> {
        let rest = match self.batch.lock() {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        self.send(rest)
    }

    /// The directories (full paths) that files submitted so far are still to be written in.
    pub(super) fn busy_dirs(&self) -> Result<HashSet<PathBuf>, UnpackError> {
        self.flush()?;
        Ok(self.lock().pending_in.keys().cloned().collect())
    }

    /// Wait until every submitted file is on disk; report the first failure.
    pub(super) fn drain(&self) -> Result<(), UnpackError> {
        self.flush()?;
        let mut queues = self.lock();
        while queues.pending > 0 {
            queues = wait(&self.room, queues);
        }
        match queues.failure.take() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Let the workers return; whatever is still queued is dropped.
    pub(super) fn stop(&self) {
        self.lock().stopped = true;
        self.work.notify_all();
    }
}

fn wait<'a>(condvar: &Condvar, guard: MutexGuard<'a, Queues>) -> MutexGuard<'a, Queues> {
    match condvar.wait(guard) {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
