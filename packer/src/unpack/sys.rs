//! System calls for the extractor: file creation with the right mode, owner and times, devices.
//! Knows paths and modes only, nothing of layers or entries.

use std::ffi::CString;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// What a tar header says of an entry beyond its name and kind: applied to what is created.
#[derive(Clone, Copy)]
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) mtime: u64,
    pub(super) uid: u64,
    pub(super) gid: u64,
}

/// Buffer for streaming large files.
const STREAM_BUF: usize = 1 << 20;

pub(super) enum StreamError {
    Read(io::Error),
    Write(io::Error),
}

/// The process umask, read without changing it (`None` if unknown).
pub(super) fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Umask:"))?;
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
    })
}

/// True when creating a file with `mode` already gives exactly `mode` (no fchmod needed).
pub(super) fn mode_survives_creation(mode: u32) -> bool {
    mode & 0o7000 == 0 && umask().is_some_and(|mask| mode & mask == 0)
}

/// The mode a new file is created with: its own when that is what the kernel will give it,
/// else owner-only until `finish_file` sets it.
fn initial_mode(mode: u32) -> u32 {
    if mode_survives_creation(mode) {
        mode
    } else {
        0o600
    }
}

pub(super) fn create_file(path: &Path, mode: u32) -> io::Result<File> {
    create_at(libc::AT_FDCWD, &c_path(path)?, mode)
}

/// Create the new file `name` relative to the directory `dir` (or the working directory):
/// write-only, never through a symlink, never over an existing name.
fn create_at(dir: libc::c_int, name: &std::ffi::CStr, mode: u32) -> io::Result<File> {
    // SAFETY: a plain openat of a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            initial_mode(mode) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A directory opened once so that the files of a batch are created by name inside it,
/// without walking the whole path again for each (the walk is a tenth of a create).
pub(super) struct Dir(OwnedFd);

impl Dir {
    pub(super) fn open(path: &Path) -> io::Result<Dir> {
        let c = c_path(path)?;
        // SAFETY: a plain open of a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Create the new file `name` in this directory, as [`create_file`] does.
    pub(super) fn create(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        create_at(self.0.as_raw_fd(), &c_path(Path::new(name))?, mode)
    }
}

/// Who owns the files an extraction creates.
#[derive(Clone, Copy)]
pub(super) struct Owners {
    /// Owners come from the tar headers.
    pub(super) restore: bool,
    /// The owner a new file gets from the kernel: this process's user, and its group or the
    /// group of the set-group-ID directory it is created in. Files the headers give this owner
    /// need no `fchown` (most of a root filesystem extracted as root).
    pub(super) created: Option<(u64, u64)>,
}

impl Owners {
    /// For files created under `root` (the staging directory: everything below it is made by
    /// the extraction with plain modes, so it is set-group-ID only if `root` inherited that
    /// from its parent).
    pub(super) fn under(root: &Path, restore: bool) -> Owners {
        use std::os::unix::fs::MetadataExt;
        let created = fs::metadata(root).ok().map(|meta| {
            // SAFETY: plain getters.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            let gid = if meta.mode() & libc::S_ISGID != 0 {
                meta.gid()
            } else {
                gid
            };
            (u64::from(uid), u64::from(gid))
        });
        Owners { restore, created }
    }

    fn need_chown(&self, meta: &Meta) -> bool {
        self.restore && self.created != Some((meta.uid, meta.gid))
    }
}

pub(super) fn finish_file(file: &File, meta: Meta, owners: Owners) -> io::Result<()> {
    let fd = file.as_raw_fd();
    if owners.need_chown(&meta)
        && unsafe { libc::fchown(fd, meta.uid as u32, meta.gid as u32) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    if !mode_survives_creation(meta.mode) && unsafe { libc::fchmod(fd, meta.mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let times = [timespec(meta.mtime), timespec(meta.mtime)];
    if unsafe { libc::futimens(fd, times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn write_streamed(
    path: &Path,
    entry: &mut impl Read,
    meta: Meta,
    owners: Owners,
) -> Result<(), StreamError> {
    let mut file = create_file(path, meta.mode).map_err(StreamError::Write)?;
    let mut buf = vec![0u8; STREAM_BUF];
    loop {
        let n = entry.read(&mut buf).map_err(StreamError::Read)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(StreamError::Write)?;
    }
    finish_file(&file, meta, owners).map_err(StreamError::Write)
}

pub(super) fn timespec(secs: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    }
}

pub(super) fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

pub(super) fn set_times(path: &Path, mtime: u64, follow: bool) -> io::Result<()> {
    let c = c_path(path)?;
    let times = [timespec(mtime), timespec(mtime)];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn lchown(path: &Path, uid: u64, gid: u64) -> io::Result<()> {
    let c = c_path(path)?;
    if unsafe { libc::lchown(c.as_ptr(), uid as u32, gid as u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn mknod(path: &Path, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    let c = c_path(path)?;
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}
