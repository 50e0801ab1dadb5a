//! Where compressed frame bytes come from.
//!
//! The extraction engine and the `.run` reader read frames through [`ByteSource`] so the same
//! code works over a memory map (local disks), positioned reads (removable or network media,
//! where a failing device must give an error, not a SIGBUS) or an in-memory buffer (tests,
//! bytes received over SSH). This module only moves bytes; it never interprets them.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Random access to immutable bytes (a file, a mapping, a buffer).
pub trait ByteSource: Sync {
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
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Map all of `file`. The caller must have checked that the file lies on a local filesystem
    /// and that its length matches what the format expects (a shrinking file faults with SIGBUS).
    pub fn new(file: &File) -> io::Result<Self> {
        // SAFETY: the mapping is read-only and private to this process; the files we map are
        // images and installers that nothing rewrites while we read them. Lengths are checked
        // against the on-disk size before any byte is touched.
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        Ok(MappedFile { map })
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
