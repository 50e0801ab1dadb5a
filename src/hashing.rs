//! A reader that hashes what passes through it: the one way the library learns the sha256 of a
//! stream while it is being used (an upload, an archive being unpacked). It only hashes.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// Passes reads through to `inner` and hashes every byte read.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The sha256 of everything read so far, lowercase hex.
    pub fn hex_digest(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
