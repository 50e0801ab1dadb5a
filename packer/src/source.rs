//! Where compressed frame bytes come from.
//!
//! The extraction engine and the `.run` reader read frames through [`ByteSource`] so the same
//! code works over a memory map (local disks), positioned reads (removable or network media,
//! where a failing device must give an error, not a SIGBUS) or an in-memory buffer (tests,
//! bytes received over SSH). This module only moves bytes; it never interprets them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::frames::Frame;

/// Random access to immutable bytes (a file, a mapping, a buffer).
pub trait ByteSource: Send + Sync {
    /// The `len` bytes at `offset`; an error if they are not all there.
    fn bytes(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>>;

    /// Total length of the source in bytes.
    fn len(&self) -> u64;

    /// True when the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A hint that the bytes at `offset..offset + len` will not be read again, so a mapping may
    /// drop its pages (keeps resident memory bounded while a large file is streamed).
    fn release(&self, _offset: u64, _len: u64) {}

    /// True when the bytes under this source changed after it was opened in a way that may
    /// have changed what earlier calls returned (a mapped file truncated under it, or a file
    /// whose check is being reused modified since). Readers check it before trusting what they
    /// decoded.
    fn changed(&self) -> bool {
        false
    }

    /// True when the `len` bytes at `offset` were checked against `sha256` since this source
    /// was opened and the file provably has not changed since (see [`CheckedFile`]): a reader
    /// may use them without hashing them again. A reader that relies on it must still ask
    /// [`changed`](ByteSource::changed) before it keeps what it made of them.
    fn checked(&self, _offset: u64, _len: u64, _sha256: &str) -> bool {
        false
    }
}

/// A source shared between threads (a check on one, the extraction on another) is the source.
impl<T: ByteSource + ?Sized> ByteSource for std::sync::Arc<T> {
    fn bytes(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        (**self).bytes(offset, len)
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn release(&self, offset: u64, len: u64) {
        (**self).release(offset, len)
    }
    fn changed(&self) -> bool {
        (**self).changed()
    }
    fn checked(&self, offset: u64, len: u64, sha256: &str) -> bool {
        (**self).checked(offset, len, sha256)
    }
}

fn out_of_range(offset: u64, len: u64, have: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "bytes {offset}–{} are beyond the end of the data ({have} bytes)",
            offset.saturating_add(len)
        ),
    )
}

fn slice_at(data: &[u8], offset: u64, len: u64) -> io::Result<&[u8]> {
    let end = offset
        .checked_add(len)
        .filter(|end| *end <= data.len() as u64)
        .ok_or_else(|| out_of_range(offset, len, data.len() as u64))?;
    Ok(&data[offset as usize..end as usize])
}

impl ByteSource for &[u8] {
    fn bytes(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        slice_at(self, offset, len).map(Cow::Borrowed)
    }
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
}

impl ByteSource for Vec<u8> {
    fn bytes(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        slice_at(self, offset, len).map(Cow::Borrowed)
    }
    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }
}

/// A read-only memory map of a file on a local filesystem.
///
/// If the file is truncated while mapped, touching a page past its new end raises SIGBUS. The
/// mapping is registered with [`fault_guard`], whose handler puts a page of zeros in place of
/// the missing one and marks the mapping [changed](ByteSource::changed): the read goes on,
/// the frame's sha256 no longer matches, and the reader reports that the file changed
/// instead of the process dying.
pub struct MappedFile {
    map: memmap2::Mmap,
    guard: Option<fault_guard::Slot>,
}

impl MappedFile {
    /// Map all of `file`. The caller must have checked that its length matches what the
    /// format expects.
    pub fn new(file: &File) -> io::Result<Self> {
        // SAFETY: the mapping is read-only and private to this process. A file truncated
        // under it is handled by the fault guard (see the type's documentation); a file
        // rewritten in place changes bytes that every reader hashes before use.
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        let guard = fault_guard::register(map.as_ptr() as usize, map.len());
        Ok(MappedFile { map, guard })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }
}

impl ByteSource for MappedFile {
    fn bytes(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        slice_at(&self.map, offset, len).map(Cow::Borrowed)
    }
    fn len(&self) -> u64 {
        self.map.len() as u64
    }
    fn changed(&self) -> bool {
        self.guard.as_ref().is_some_and(fault_guard::Slot::faulted)
    }
    fn release(&self, offset: u64, len: u64) {
        const PAGE: u64 = 4096;
        let start = offset.div_ceil(PAGE) * PAGE;
        let end = (offset + len) / PAGE * PAGE;
        if end > start && end <= self.map.len() as u64 {
            // Dropping clean, shared file pages only unmaps them; they refault from the page
            // cache if touched again, so this cannot change what later reads see.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start as usize,
                    (end - start) as usize,
                )
            };
        }
    }
}

/// What `fstat` says of a file that a change to its bytes would also change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(file: &File) -> Option<FileStamp> {
        let meta = file.metadata().ok()?;
        Some(FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// A file whose bytes were checked, kept with what proves they are still the bytes checked, so
/// the check's verdict can be reused instead of hashing every byte a second time.
///
/// Every way of changing a file's bytes through the file system sets its change time (`write`,
/// `truncate`, the first write to a page of a shared mapping after it was written back), and
/// nobody but the kernel can set it back. So a file whose `fstat` (device, inode, size, mtime,
/// ctime) is the same after the check as before it, and again when its bytes are used, holds
/// the bytes that were checked, provided that
/// - its change time was at least [`SETTLED`] old before the check: a change within the same
///   tick of the file system's clock would leave the change time as it was;
/// - nobody had it open for writing when the check started (a read lease could be taken): a
///   writer already holding a shared writable mapping with dirty pages could change them
///   without touching the change time again.
///
/// When either cannot be established (a file changed a moment ago, a writer present, a user
/// who may not take leases, a file system without them) there is no [`CheckedFile`] and
/// readers hash again, as they would without the check.
#[derive(Debug)]
pub struct CheckedFile {
    file: File,
    stamp: FileStamp,
}

/// A check's verdict on frames of one or more files: which frames were checked, and what
/// proves each file still holds the bytes checked.
#[derive(Debug)]
pub struct Verdict {
    files: Vec<CheckedFile>,
    /// Offset in the source → (compressed length, sha256) of each frame checked.
    frames: HashMap<u64, (u64, String)>,
}

impl Verdict {
    /// After a passing check of `frames` in `files` (each taken with
    /// [`CheckedFile::before_check`]): `None` when a file changed during the check.
    pub fn after_check<'f>(
        files: Vec<CheckedFile>,
        frames: impl IntoIterator<Item = &'f Frame>,
    ) -> Option<Verdict> {
        if !files.iter().all(CheckedFile::unchanged) {
            return None;
        }
        let frames = frames
            .into_iter()
            .map(|f| (f.offset, (f.compressed_len, f.sha256.clone())))
            .collect();
        Some(Verdict { files, frames })
    }

    /// True when the frame at `offset` was checked as `len` bytes with `sha256` and every file
    /// is unchanged.
    pub fn covers(&self, offset: u64, len: u64, sha256: &str) -> bool {
        self.frames
            .get(&offset)
            .is_some_and(|(l, sha)| *l == len && sha.eq_ignore_ascii_case(sha256))
            && self.first_changed().is_none()
    }

    /// The index of the first file that changed since the check.
    pub fn first_changed(&self) -> Option<usize> {
        self.files.iter().position(|f| !f.unchanged())
    }
}

/// A source with a check's verdict on its frames (see [`ByteSource::checked`]).
pub struct Vouched<S> {
    source: S,
    verdict: Option<Verdict>,
}

impl<S: ByteSource> Vouched<S> {
    pub fn new(source: S, verdict: Option<Verdict>) -> Self {
        Vouched { source, verdict }
    }
}

impl<S: ByteSource> ByteSource for Vouched<S> {
    fn bytes(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        self.source.bytes(offset, len)
    }
    fn len(&self) -> u64 {
        self.source.len()
    }
    fn release(&self, offset: u64, len: u64) {
        self.source.release(offset, len)
    }
    fn changed(&self) -> bool {
        self.source.changed()
            || self
                .verdict
                .as_ref()
                .is_some_and(|v| v.first_changed().is_some())
    }
    fn checked(&self, offset: u64, len: u64, sha256: &str) -> bool {
        !self.source.changed()
            && self
                .verdict
                .as_ref()
                .is_some_and(|v| v.covers(offset, len, sha256))
    }
}

/// How old a file's change time must be for its stamp to prove anything.
pub const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

impl CheckedFile {
    /// Taken just before `file`'s bytes are checked; `None` when the check's verdict could not
    /// be trusted later.
    pub fn before_check(file: &File) -> Option<CheckedFile> {
        let stamp = FileStamp::of(file)?;
        let changed_at = std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(
            u64::try_from(stamp.ctime.0).ok()?,
            u32::try_from(stamp.ctime.1).ok()?,
        ))?;
        let age = std::time::SystemTime::now()
            .duration_since(changed_at)
            .ok()?;
        if age < SETTLED || !nobody_writes(file) {
            return None;
        }
        Some(CheckedFile {
            file: file.try_clone().ok()?,
            stamp,
        })
    }

    /// True while the file is as it was when [`before_check`](CheckedFile::before_check) was
    /// taken.
    pub fn unchanged(&self) -> bool {
        FileStamp::of(&self.file) == Some(self.stamp)
    }
}

/// True when nobody has `file` open for writing: a read lease can be taken (and is let go at
/// once). A writer opening the file in between waits for the release; the lease-break signal
/// is set to SIGURG, which is ignored unless a program asks for it.
fn nobody_writes(file: &File) -> bool {
    /// `F_SETSIG` of Linux's `fcntl.h` (not in the libc crate for every target).
    const F_SETSIG: libc::c_int = 10;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function borrows; no memory is passed.
    unsafe {
        if libc::fcntl(fd, F_SETSIG, libc::SIGURG) != 0 {
            return false;
        }
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) != 0 {
            return false;
        }
        libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
    }
    true
}

/// A file read with positioned reads (`pread`): a device error is an `io::Error`, never a signal.
pub struct PositionedFile {
    file: File,
    len: u64,
    path: PathBuf,
}

impl PositionedFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        Self::new(file, path)
    }

    pub fn new(file: File, path: &Path) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(PositionedFile {
            file,
            len,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ByteSource for PositionedFile {
    fn bytes(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(out_of_range(offset, len, self.len));
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Cow::Owned(buf))
    }
    fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // Unregister before the mapping goes away (fields drop after this body).
        self.guard.take();
    }
}

/// SIGBUS on mapped files: turns "the file shrank under the mapping" into a flag.
///
/// A process-wide table of registered mappings; the handler looks the faulting address up,
/// maps an anonymous zero page over the faulting page (`MAP_FIXED`, async-signal-safe), sets
/// the mapping's flag and returns, so the faulting load is retried and reads zeros. A fault
/// at an address no registered mapping covers restores the default action and returns: the
/// retried load faults again and the process ends as it would have without the guard.
pub mod fault_guard {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Once;

    const SLOTS: usize = 256;
    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: AtomicUsize = AtomicUsize::new(0);
    #[allow(clippy::declare_interior_mutable_const)]
    const CLEAR: AtomicBool = AtomicBool::new(false);
    static STARTS: [AtomicUsize; SLOTS] = [FREE; SLOTS];
    static ENDS: [AtomicUsize; SLOTS] = [FREE; SLOTS];
    static FAULTED: [AtomicBool; SLOTS] = [CLEAR; SLOTS];
    static PAGE: AtomicUsize = AtomicUsize::new(4096);
    static INSTALL: Once = Once::new();

    /// A registered mapping; unregisters itself when dropped.
    #[derive(Debug)]
    pub struct Slot(usize);

    impl Slot {
        /// True once a page of this mapping was replaced by zeros.
        pub fn faulted(&self) -> bool {
            FAULTED[self.0].load(Ordering::SeqCst)
        }
    }

    impl Drop for Slot {
        fn drop(&mut self) {
            ENDS[self.0].store(0, Ordering::SeqCst);
            FAULTED[self.0].store(false, Ordering::SeqCst);
            STARTS[self.0].store(0, Ordering::SeqCst);
        }
    }

    /// Register `start..start + len`; `None` if the table is full or the range is empty
    /// (the mapping then works as before, without the guard).
    pub fn register(start: usize, len: usize) -> Option<Slot> {
        if start == 0 || len == 0 {
            return None;
        }
        INSTALL.call_once(install);
        for i in 0..SLOTS {
            if STARTS[i]
                .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                FAULTED[i].store(false, Ordering::SeqCst);
                ENDS[i].store(start + len, Ordering::SeqCst);
                return Some(Slot(i));
            }
        }
        None
    }

    fn install() {
        // SAFETY: sysconf and sigaction with a handler that only touches atomics and calls
        // mmap/signal, which are async-signal-safe.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::SeqCst);
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }

    extern "C" fn handler(_signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel hands a valid siginfo for SA_SIGINFO handlers.
        let addr = unsafe { (*info).si_addr() } as usize;
        let page = PAGE.load(Ordering::SeqCst);
        for i in 0..SLOTS {
            let start = STARTS[i].load(Ordering::SeqCst);
            let end = ENDS[i].load(Ordering::SeqCst);
            if start != 0 && addr >= start && addr < end {
                let base = addr & !(page - 1);
                // SAFETY: the page lies inside a live read-only mapping this module
                // registered; replacing it with zeros changes only what that mapping reads.
                let mapped = unsafe {
                    libc::mmap(
                        base as *mut libc::c_void,
                        page,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                if mapped != libc::MAP_FAILED {
                    FAULTED[i].store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
        // Not ours: let the retried access end the process as SIGBUS always did.
        // SAFETY: signal() is async-signal-safe.
        unsafe {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        }
    }
}
