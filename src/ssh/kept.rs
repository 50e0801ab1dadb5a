//! Output of a command kept within a bound: the first bytes and the last bytes, with what lay
//! between counted and replaced by one line saying how much was left out. A command that prints
//! a gigabyte costs the process that collects its output a few MiB, not a gigabyte.

use std::collections::VecDeque;

/// Collects a stream's bytes, keeping at most `head` + `tail` of them.
#[derive(Debug)]
pub struct KeptOutput {
    head_limit: usize,
    tail_limit: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
}

impl KeptOutput {
    pub fn new(head: usize, tail: usize) -> Self {
        KeptOutput {
            head_limit: head,
            tail_limit: tail,
            head: Vec::new(),
            tail: VecDeque::new(),
            dropped: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.head.len() < self.head_limit {
            let n = bytes.len().min(self.head_limit - self.head.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        if bytes.len() >= self.tail_limit {
            self.dropped += (self.tail.len() + bytes.len() - self.tail_limit) as u64;
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_limit..]);
            return;
        }
        let excess = (self.tail.len() + bytes.len()).saturating_sub(self.tail_limit);
        if excess > 0 {
            self.tail.drain(..excess);
            self.dropped += excess as u64;
        }
        self.tail.extend(bytes);
    }

    /// Bytes left out so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept bytes; when some were left out, a line between head and tail says how many.
    pub fn into_bytes(self) -> Vec<u8> {
        let mut out = self.head;
        if self.dropped > 0 {
            if !out.ends_with(b"\n") && !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(
                format!("[... {} bytes of output left out ...]\n", self.dropped).as_bytes(),
            );
        }
        out.extend(self.tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_head_and_tail_of_a_long_stream_and_counts_the_rest() {
        let mut kept = KeptOutput::new(4, 3);
        for chunk in [&b"abcdefg"[..], b"hij", b"k", b"lmnopqrstuvwxyz"] {
            kept.push(chunk);
        }
        assert_eq!(kept.dropped(), 26 - 7);
        assert_eq!(
            String::from_utf8(kept.into_bytes()).unwrap(),
            "abcd\n[... 19 bytes of output left out ...]\nxyz"
        );
        let mut short = KeptOutput::new(4, 3);
        short.push(b"abcdef");
        assert_eq!(short.into_bytes(), b"abcdef");
    }
}
