//! Layers as sequences of independent zstd frames.
//!
//! A layer blob is a valid `tar+zstd` stream that any zstd decoder reads as one, but it is made of
//! frames of about [`FRAME_TARGET`] bytes of tar each, so a reader can verify and decode frames in
//! parallel. [`FramedWriter`] compresses frames on worker threads with bounded memory and reports
//! where every frame lies; [`scan_frames`] recovers the same index from an existing blob.
//! A caller that wants a frame to begin exactly where an entry begins (so that the same entry
//! gives the same frame in another blob) says so with [`FramedWriter::start_frame`], and can ask
//! for [`FrameMode::Stored`] frames for content that is already compressed.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use sha2::{Digest, Sha256};

/// Uncompressed bytes per frame at most (a file larger than this spans several frames).
pub const FRAME_TARGET: usize = 16 << 20;
/// At an entry boundary a frame is cut once it holds at least this much.
pub const FRAME_SOFT_CUT: usize = FRAME_TARGET / 2;

/// Where one frame lies inside a layer blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    /// Offset of the frame inside the layer blob.
    pub offset: u64,
    /// Compressed length in bytes.
    pub compressed_len: u64,
    /// Uncompressed length in bytes.
    pub uncompressed_len: u64,
    /// sha256 of the compressed bytes, lowercase hex: the frame's identity (a layer's frames
    /// concatenated are its OCI blob).
    pub sha256: String,
    /// BLAKE3 of the compressed bytes, lowercase hex: what [`Frame::check_digest`] compares
    /// when it is known (frame indexes written before it lack it). About four times faster
    /// than sha256 with the CPU's SHA instructions, which is 5 % of an extraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

impl Frame {
    /// Check a frame's compressed bytes against this entry: by BLAKE3 when the entry has it,
    /// by sha256 otherwise.
    pub fn check_digest(&self, bytes: &[u8]) -> Result<(), crate::codec::FrameProblem> {
        let (algorithm, expected, actual) = match &self.blake3 {
            Some(expected) => ("blake3", expected, blake3_hex(bytes)),
            None => ("sha256", &self.sha256, hex::encode(Sha256::digest(bytes))),
        };
        if actual.eq_ignore_ascii_case(expected) {
            return Ok(());
        }
        Err(crate::codec::FrameProblem::Checksum {
            algorithm,
            expected: expected.clone(),
            actual,
        })
    }
}

/// BLAKE3 of `bytes`, lowercase hex.
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The sha256 and BLAKE3 of a frame, fed piece by piece.
struct FrameDigests {
    sha256: Sha256,
    blake3: blake3::Hasher,
}

impl FrameDigests {
    fn new() -> Self {
        FrameDigests {
            sha256: Sha256::new(),
            blake3: blake3::Hasher::new(),
        }
    }

    fn update(&mut self, piece: &[u8]) {
        self.sha256.update(piece);
        self.blake3.update(piece);
    }

    fn finish(self) -> (String, String) {
        (
            hex::encode(self.sha256.finalize()),
            self.blake3.finalize().to_hex().to_string(),
        )
    }
}

/// The sha256 and BLAKE3 of a frame's compressed bytes, lowercase hex: what a [`Frame`]
/// records.
pub(crate) fn frame_digests(bytes: &[u8]) -> (String, String) {
    let mut digests = FrameDigests::new();
    digests.update(bytes);
    digests.finish()
}

/// What a finished [`FramedWriter`] knows about the blob it wrote.
#[derive(Debug, Clone)]
pub struct FramedLayer {
    pub frames: Vec<Frame>,
    /// sha256 of the whole compressed blob (the OCI layer digest), lowercase hex.
    pub digest: String,
    /// sha256 of the uncompressed stream (the OCI diff_id), lowercase hex.
    pub diff_id: String,
    pub compressed_len: u64,
    pub uncompressed_len: u64,
}

/// How the frames of the current entry are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameMode {
    /// zstd at the writer's level.
    #[default]
    Compressed,
    /// Raw blocks, not compressed ([`crate::codec::encode_stored_frame`]): for content that
    /// is already compressed.
    Stored,
}

/// Frame-sized buffers kept for reuse: a writer fills, compresses and writes the same few
/// buffers over and over instead of asking the allocator for fresh (zeroed) pages per frame.
#[derive(Clone, Default)]
struct Pool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Buffers kept at most; more in flight at once are freed when done.
    keep: usize,
}

impl Pool {
    fn new(keep: usize) -> Self {
        Pool {
            free: Arc::default(),
            keep,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        let mut buf = reused.unwrap_or_default();
        buf.clear();
        buf.reserve(capacity);
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.keep {
                free.push(buf);
            }
        }
    }
}

/// The uncompressed content of one frame, shared by the diff_id thread and a worker; the last
/// one done with it returns the buffer to its pool.
struct FrameBuf {
    data: Vec<u8>,
    pool: Pool,
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}

/// A frame to encode: its sequence number, its content and how.
type FrameJob = (u64, Arc<FrameBuf>, FrameMode);

/// One encoded frame, ready to be written.
enum Encoded {
    /// zstd output, in a buffer of the output pool.
    Bytes(Vec<u8>),
    /// A stored frame of this content: written as [`crate::codec::stored_frame_pieces`], so the
    /// content is never copied into a second buffer.
    Stored(Arc<FrameBuf>),
}

struct Compressed {
    seq: u64,
    /// The frame and its sha256 and BLAKE3, computed on the worker.
    bytes: io::Result<(Encoded, (String, String))>,
    uncompressed_len: usize,
}

/// Writes an uncompressed stream (normally a tar) as independent zstd frames into `sink`.
///
/// Call [`FramedWriter::entry_boundary`] between tar entries so frames are cut there when they
/// are large enough; the writer also cuts any frame that reaches [`FRAME_TARGET`].
/// Memory stays bounded: at most `2 × workers + 2` frames are in flight.
pub struct FramedWriter<W: Write> {
    sink: W,
    level: i32,
    /// How the frame being filled will be encoded.
    mode: FrameMode,
    buf: Vec<u8>,
    /// Buffers for frame contents (the workers and the digest thread share the output pool).
    inputs: Pool,
    next_seq: u64,
    written_seq: u64,
    pending: BTreeMap<u64, Compressed>,
    jobs: Option<mpsc::SyncSender<FrameJob>>,
    /// Frames in order, to the thread computing the diff_id (off the producer's thread).
    diff_jobs: Option<mpsc::SyncSender<Arc<FrameBuf>>>,
    diff_thread: Option<thread::JoinHandle<Sha256>>,
    results: mpsc::Receiver<Compressed>,
    workers: Vec<thread::JoinHandle<()>>,
    in_flight: usize,
    max_in_flight: usize,
    frames: Vec<Frame>,
    offset: u64,
    uncompressed_len: u64,
    /// Frames as written, to the thread hashing the whole blob (the layer digest) off the
    /// producer's thread; it hands zstd output buffers back to their pool.
    whole_jobs: Option<mpsc::SyncSender<Encoded>>,
    whole_thread: Option<thread::JoinHandle<Sha256>>,
}

impl<W: Write> FramedWriter<W> {
    /// A writer compressing at zstd `level` on as many threads as rayon would use.
    pub fn new(sink: W, level: i32) -> Self {
        let threads = thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self::with_threads(sink, level, threads)
    }

    pub fn with_threads(sink: W, level: i32, threads: usize) -> Self {
        let threads = threads.max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<FrameJob>(threads);
        let max_in_flight = 2 * threads + 2;
        let (diff_tx, diff_rx) = mpsc::sync_channel::<Arc<FrameBuf>>(max_in_flight);
        let diff_thread = thread::spawn(move || {
            let mut diff = Sha256::new();
            for frame in diff_rx {
                diff.update(&frame.data[..]);
            }
            diff
        });
        // Every frame in flight, the one being filled and one more, so that filling never waits
        // for the allocator.
        let inputs = Pool::new(max_in_flight + 2);
        let outputs = Pool::new(max_in_flight + 2);
        let (whole_tx, whole_rx) = mpsc::sync_channel::<Encoded>(max_in_flight);
        let whole_outputs = outputs.clone();
        let whole_thread = thread::spawn(move || {
            let mut whole = Sha256::new();
            for encoded in whole_rx {
                match encoded {
                    Encoded::Bytes(bytes) => {
                        whole.update(&bytes);
                        whole_outputs.give(bytes);
                    }
                    Encoded::Stored(frame) => {
                        crate::codec::stored_frame_pieces(&frame.data, |piece| whole.update(piece))
                    }
                }
            }
            whole
        });
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (res_tx, res_rx) = mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let job_rx = job_rx.clone();
                let res_tx = res_tx.clone();
                let outputs = outputs.clone();
                thread::spawn(move || {
                    // One compression context per worker, reused for every frame.
                    // zstd's pre-splitter off: ~5 % less CPU for ~0.7 % more bytes on real
                    // software (docs/benchmarks.md).
                    let mut compressor = crate::codec::FrameCompressor::new(level, false);
                    loop {
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok((seq, frame, mode)) = job else { return };
                        let uncompressed_len = frame.data.len();
                        let bytes = match (mode, compressor.as_mut()) {
                            (FrameMode::Stored, _) => {
                                let mut digests = FrameDigests::new();
                                crate::codec::stored_frame_pieces(&frame.data, |piece| {
                                    digests.update(piece)
                                });
                                Ok((Encoded::Stored(frame), digests.finish()))
                            }
                            (FrameMode::Compressed, Ok(c)) => {
                                let mut out =
                                    outputs.take(zstd::zstd_safe::compress_bound(uncompressed_len));
                                let done = c.compress_into(&frame.data[..], &mut out);
                                done.map(|_| {
                                    let digests = frame_digests(&out);
                                    (Encoded::Bytes(out), digests)
                                })
                            }
                            (FrameMode::Compressed, Err(e)) => {
                                Err(io::Error::new(e.kind(), e.to_string()))
                            }
                        };
                        if res_tx
                            .send(Compressed {
                                seq,
                                bytes,
                                uncompressed_len,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                })
            })
            .collect();
        FramedWriter {
            sink,
            level,
            mode: FrameMode::Compressed,
            buf: inputs.take(FRAME_TARGET),
            inputs,
            next_seq: 0,
            written_seq: 0,
            pending: BTreeMap::new(),
            jobs: Some(job_tx),
            diff_jobs: Some(diff_tx),
            diff_thread: Some(diff_thread),
            results: res_rx,
            workers,
            in_flight: 0,
            max_in_flight,
            frames: Vec::new(),
            offset: 0,
            uncompressed_len: 0,
            whole_jobs: Some(whole_tx),
            whole_thread: Some(whole_thread),
        }
    }

    /// The zstd level this writer compresses at.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Reads up to `len` bytes from `reader` straight into the frame being filled (no
    /// intermediate buffer) and returns how many arrived; fewer than `len` means `reader` ended.
    pub fn write_from(&mut self, reader: &mut impl io::Read, len: u64) -> io::Result<u64> {
        let mut left = len;
        while left > 0 {
            let take = ((FRAME_TARGET - self.buf.len()) as u64).min(left);
            let before = self.buf.len();
            io::Read::read_to_end(&mut io::Read::take(&mut *reader, take), &mut self.buf)?;
            let got = (self.buf.len() - before) as u64;
            left -= got;
            if self.buf.len() >= FRAME_TARGET {
                self.cut()?;
            }
            if got < take {
                break;
            }
        }
        Ok(len - left)
    }

    /// Begin a new frame here (ending the one being filled, however small) and encode the frames
    /// that follow as `mode` until the next call. An entry written after this call starts its
    /// own frame, so the same entry bytes give the same frame bytes in any blob; an entry larger
    /// than [`FRAME_TARGET`] still spans several frames, cut at the same offsets.
    pub fn start_frame(&mut self, mode: FrameMode) -> io::Result<()> {
        self.cut()?;
        self.mode = mode;
        Ok(())
    }

    /// Tell the writer that a tar entry ends here; the frame is cut if it is large enough.
    pub fn entry_boundary(&mut self) -> io::Result<()> {
        if self.buf.len() >= FRAME_SOFT_CUT {
            self.cut()?;
        }
        Ok(())
    }

    fn cut(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self.inputs.take(FRAME_TARGET);
        let data = Arc::new(FrameBuf {
            data: std::mem::replace(&mut self.buf, next),
            pool: self.inputs.clone(),
        });
        self.diff_jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("framed writer already finished"))?
            .send(data.clone())
            .map_err(|_| io::Error::other("diff_id thread stopped"))?;
        self.uncompressed_len += data.data.len() as u64;
        while self.in_flight >= self.max_in_flight {
            self.receive_one()?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight += 1;
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("framed writer already finished"))?
            .send((seq, data, self.mode))
            .map_err(|_| io::Error::other("zstd worker thread stopped"))?;
        self.drain_ready()
    }

    fn receive_one(&mut self) -> io::Result<()> {
        let done = self
            .results
            .recv()
            .map_err(|_| io::Error::other("zstd worker thread stopped"))?;
        self.pending.insert(done.seq, done);
        self.write_ready()
    }

    fn drain_ready(&mut self) -> io::Result<()> {
        while let Ok(done) = self.results.try_recv() {
            self.pending.insert(done.seq, done);
        }
        self.write_ready()
    }

    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(done) = self.pending.remove(&self.written_seq) {
            let (encoded, (sha256, blake3)) = done.bytes?;
            let compressed_len = match &encoded {
                Encoded::Bytes(bytes) => {
                    self.sink.write_all(bytes)?;
                    bytes.len()
                }
                Encoded::Stored(frame) => {
                    let sink = &mut self.sink;
                    let mut written = Ok(());
                    crate::codec::stored_frame_pieces(&frame.data, |piece| {
                        if written.is_ok() {
                            written = sink.write_all(piece);
                        }
                    });
                    written?;
                    crate::codec::stored_frame_len(frame.data.len())
                }
            };
            self.whole_jobs
                .as_ref()
                .ok_or_else(|| io::Error::other("framed writer already finished"))?
                .send(encoded)
                .map_err(|_| io::Error::other("layer digest thread stopped"))?;
            self.frames.push(Frame {
                offset: self.offset,
                compressed_len: compressed_len as u64,
                uncompressed_len: done.uncompressed_len as u64,
                sha256,
                blake3: Some(blake3),
            });
            self.offset += compressed_len as u64;
            self.written_seq += 1;
            self.in_flight -= 1;
        }
        Ok(())
    }

    /// Flush the last frame, wait for all workers and return the sink and the layer's index.
    pub fn finish(mut self) -> io::Result<(W, FramedLayer)> {
        self.cut()?;
        self.jobs = None;
        while self.in_flight > 0 {
            self.receive_one()?;
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        self.sink.flush()?;
        self.diff_jobs = None;
        let diff = self
            .diff_thread
            .take()
            .ok_or_else(|| io::Error::other("framed writer already finished"))?
            .join()
            .map_err(|_| io::Error::other("diff_id thread panicked"))?;
        self.whole_jobs = None;
        let whole = self
            .whole_thread
            .take()
            .ok_or_else(|| io::Error::other("framed writer already finished"))?
            .join()
            .map_err(|_| io::Error::other("layer digest thread panicked"))?;
        let layer = FramedLayer {
            frames: std::mem::take(&mut self.frames),
            digest: hex::encode(whole.finalize()),
            diff_id: hex::encode(diff.finalize()),
            compressed_len: self.offset,
            uncompressed_len: self.uncompressed_len,
        };
        // `self` has a Drop-free layout; move the sink out by swapping in nothing is not possible,
        // so FramedWriter keeps `sink` last and we take it by destructuring.
        let FramedWriter { sink, .. } = self;
        Ok((sink, layer))
    }
}

impl<W: Write> Write for FramedWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let room = FRAME_TARGET - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() >= FRAME_TARGET {
                self.cut()?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Error found while indexing the frames of an existing blob.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("bytes {offset}.. are not a zstd frame: {reason}")]
    NotZstd { offset: u64, reason: String },
}

/// Check one frame's compressed `bytes` against its index entry: the sha256 first (the bytes
/// are the ones indexed), then what `depth` asks of the content (the index describes them).
pub fn check_frame_bytes(
    frame: &Frame,
    compression: crate::codec::Compression,
    bytes: &[u8],
    depth: crate::codec::FrameCheck,
) -> Result<(), crate::codec::FrameProblem> {
    frame.check_digest(bytes)?;
    crate::codec::check_frame_content(compression, bytes, frame.uncompressed_len, depth)
}

/// Check `blob` against a frame index kept for it (the store's, written when the blob was):
/// every frame's sha256 and the content size it declares, in parallel. Returns the first bad
/// frame (0-based) and what is wrong with it. One pass over the bytes, on every core, instead
/// of the sequential scan [`scan_frames`] does to build an index.
pub fn check_frames(
    blob: &[u8],
    frames: &[Frame],
) -> Result<(), (usize, crate::codec::FrameProblem)> {
    check_and_copy_frames(blob, frames, |_, _| Ok(()))
}

/// [`check_frames`], handing each good frame's bytes to `sink` on the worker that checked it
/// (the packer writes them into the package there, so checking and copying share the cores).
/// A `sink` error is reported as the frame being unwritable.
pub fn check_and_copy_frames(
    blob: &[u8],
    frames: &[Frame],
    sink: impl Fn(&Frame, &[u8]) -> io::Result<()> + Sync,
) -> Result<(), (usize, crate::codec::FrameProblem)> {
    use crate::codec::{Compression, FrameCheck, FrameProblem};
    use rayon::prelude::*;
    let bad = frames
        .par_iter()
        .enumerate()
        .filter_map(|(index, frame)| {
            let range = frame
                .offset
                .checked_add(frame.compressed_len)
                .and_then(|end| blob.get(frame.offset as usize..end as usize));
            let Some(data) = range else {
                return Some((
                    index,
                    FrameProblem::Unreadable(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the frame lies beyond the end of the blob",
                    )),
                ));
            };
            check_frame_bytes(frame, Compression::Zstd, data, FrameCheck::DeclaredSize)
                .and_then(|()| sink(frame, data).map_err(FrameProblem::Unreadable))
                .err()
                .map(|problem| (index, problem))
        })
        .min_by_key(|(index, _)| *index);
    match bad {
        Some(bad) => Err(bad),
        None => Ok(()),
    }
}

/// Recover the frame index of a framed zstd blob by walking zstd frame headers.
///
/// Skippable frames are passed over. Frames that do not record their content size are decoded to
/// learn it. Frames are hashed in parallel on the rayon pool. The result is what
/// [`FramedWriter`] reported when the blob was written.
pub fn scan_frames(blob: &[u8]) -> Result<Vec<Frame>, ScanError> {
    let mut frames = Vec::new();
    let mut offset = 0usize;
    while offset < blob.len() {
        let rest = &blob[offset..];
        let len = zstd::zstd_safe::find_frame_compressed_size(rest).map_err(|code| {
            ScanError::NotZstd {
                offset: offset as u64,
                reason: zstd::zstd_safe::get_error_name(code).to_string(),
            }
        })?;
        let bytes = &rest[..len];
        let skippable = rest.len() >= 4
            && (u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) & 0xFFFF_FFF0)
                == 0x184D_2A50;
        if !skippable {
            let uncompressed_len = match zstd::zstd_safe::get_frame_content_size(bytes) {
                Ok(Some(n)) => n,
                _ => {
                    let mut counter = CountingSink(0);
                    zstd::stream::copy_decode(bytes, &mut counter).map_err(|e| {
                        ScanError::NotZstd {
                            offset: offset as u64,
                            reason: e.to_string(),
                        }
                    })?;
                    counter.0
                }
            };
            frames.push(Frame {
                offset: offset as u64,
                compressed_len: len as u64,
                uncompressed_len,
                sha256: String::new(),
                blake3: None,
            });
        }
        offset += len;
    }
    // Hashing is most of the work; frames are independent, so hash them in parallel.
    use rayon::prelude::*;
    frames.par_iter_mut().for_each(|frame| {
        let start = frame.offset as usize;
        let bytes = &blob[start..start + frame.compressed_len as usize];
        let (sha256, blake3) = frame_digests(bytes);
        frame.sha256 = sha256;
        frame.blake3 = Some(blake3);
    });
    Ok(frames)
}

struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 3 == 0 {
                    (x & 0xff) as u8
                } else {
                    b'a' + (i % 7) as u8
                }
            })
            .collect()
    }

    #[test]
    fn large_stream_is_cut_into_frames_that_concatenate_back() {
        let data = pseudo_random(FRAME_TARGET * 2 + 12345, 7);
        let mut w = FramedWriter::with_threads(Vec::new(), 3, 2);
        w.write_all(&data).unwrap();
        let (blob, layer) = w.finish().unwrap();
        assert_eq!(layer.frames.len(), 3);
        assert_eq!(layer.uncompressed_len, data.len() as u64);
        assert_eq!(zstd::decode_all(&blob[..]).unwrap(), data);
        assert_eq!(scan_frames(&blob).unwrap(), layer.frames);
        assert_eq!(layer.diff_id, hex::encode(Sha256::digest(&data)));
        assert_eq!(layer.digest, hex::encode(Sha256::digest(&blob)));
    }

    #[test]
    fn boundary_cuts_only_once_frame_is_half_full() {
        let mut w = FramedWriter::with_threads(Vec::new(), 1, 1);
        w.write_all(&vec![1u8; 1000]).unwrap();
        w.entry_boundary().unwrap();
        w.write_all(&vec![2u8; FRAME_SOFT_CUT]).unwrap();
        w.entry_boundary().unwrap();
        w.write_all(&[3u8; 10]).unwrap();
        let (_, layer) = w.finish().unwrap();
        let sizes: Vec<u64> = layer.frames.iter().map(|f| f.uncompressed_len).collect();
        assert_eq!(sizes, vec![1000 + FRAME_SOFT_CUT as u64, 10]);
    }

    #[test]
    fn started_frames_begin_at_the_entry_and_stored_ones_are_raw() {
        let packed = pseudo_random(300_000, 3);
        let text = vec![b'x'; 10_000];
        let write = |prefix: &[u8]| {
            let mut w = FramedWriter::with_threads(Vec::new(), 3, 2);
            w.write_all(prefix).unwrap();
            w.start_frame(FrameMode::Stored).unwrap();
            w.write_all(&packed).unwrap();
            w.start_frame(FrameMode::Compressed).unwrap();
            w.write_all(&text).unwrap();
            w.finish().unwrap()
        };
        let (blob, layer) = write(b"one");
        let (other_blob, other) = write(b"a different prefix");
        let sizes: Vec<u64> = layer.frames.iter().map(|f| f.uncompressed_len).collect();
        assert_eq!(sizes, vec![3, 300_000, 10_000]);
        // The same entries give the same frames after a different start.
        assert_eq!(layer.frames[1].sha256, other.frames[1].sha256);
        assert_eq!(layer.frames[2].sha256, other.frames[2].sha256);
        let stored = &layer.frames[1];
        assert_eq!(
            &blob[stored.offset as usize..][..stored.compressed_len as usize],
            &crate::codec::encode_stored_frame(&packed)[..]
        );
        assert!(layer.frames[2].compressed_len < 1_000);
        let mut all = b"one".to_vec();
        all.extend_from_slice(&packed);
        all.extend_from_slice(&text);
        assert_eq!(zstd::decode_all(&blob[..]).unwrap(), all);
        assert_eq!(scan_frames(&blob).unwrap(), layer.frames);
        assert!(zstd::decode_all(&other_blob[..]).is_ok());
    }

    #[test]
    fn empty_stream_has_no_frames() {
        let w = FramedWriter::with_threads(Vec::new(), 3, 1);
        let (blob, layer) = w.finish().unwrap();
        assert!(blob.is_empty());
        assert!(layer.frames.is_empty());
    }

    #[test]
    fn garbage_is_not_a_frame() {
        assert!(scan_frames(b"this is not zstd at all").is_err());
    }
}
