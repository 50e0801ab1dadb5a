//! Decoding: frames verified and decoded on the rayon pool into a bounded in-order window, and
//! read back as one layer's tar stream. Owns the frame checks; knows nothing of tar entries.
//!
//! The tar parser reads headers through [`Stream`] and skips what it does not read by seeking
//! forward. The content of a small file is not read through the parser: the tree takes it
//! where it lies ([`LayerReader::take_content`]), as a share of the decoded frame that the
//! writer threads write from, so it is not copied in this process (unless it spans two frames).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use super::{FrameProblem, LayerInput, UnpackError};
use crate::codec;

/// Frames larger than this (uncompressed) are decoded as a stream on the parsing thread instead
/// of whole in the decode window, so memory stays bounded for foreign single-frame blobs.
const MAX_WINDOW_FRAME: u64 = 32 << 20;

/// Decoded frames alive at most (in the window, being read, or shared by files waiting for the
/// writers) before file content is copied out of them instead of shared: one small file still
/// waiting in a slow directory keeps its whole frame.
const SHARED_MAX: usize = 128 << 20;

/// A decoded frame. The reader and the files cut out of it share it; its buffer goes back to
/// the decoders when the last of them lets go.
pub(super) struct Decoded {
    data: Vec<u8>,
    spare: Arc<Spare>,
}

impl Decoded {
    fn new(data: Vec<u8>, spare: &Arc<Spare>) -> Self {
        spare.held.fetch_add(data.len(), Ordering::Relaxed);
        Decoded {
            data,
            spare: Arc::clone(spare),
        }
    }
}

impl Drop for Decoded {
    fn drop(&mut self) {
        self.spare.give_back(std::mem::take(&mut self.data));
    }
}

/// The content of a file taken from the stream: a share of one decoded frame, or a copy when
/// it spans frames (or too many frames are held already).
pub(super) enum Content {
    Shared {
        frame: Arc<Decoded>,
        start: usize,
        len: usize,
    },
    Owned(Vec<u8>),
}

impl Content {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Content::Shared { frame, start, len } => &frame.data[*start..*start + *len],
            Content::Owned(data) => data,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.bytes().len()
    }
}

pub(super) enum Chunk<'a> {
    Bytes(Arc<Decoded>),
    Stream {
        reader: Box<dyn Read + 'a>,
        expected: u64,
        seen: u64,
    },
}

pub(super) struct FrameId {
    pub(super) layer: usize,
    pub(super) frame: usize,
}

pub(super) struct Pipeline<'s, 'a> {
    pub(super) scope: &'s rayon::Scope<'a>,
    pub(super) spare: &'a Arc<Spare>,
    pub(super) layers: &'a [LayerInput<'a>],
    pub(super) jobs: Vec<FrameId>,
    pub(super) next_job: usize,
    pub(super) window: usize,
    pub(super) in_flight: VecDeque<Slot>,
}

pub(super) enum Slot {
    Spawned(mpsc::Receiver<Result<Decoded, UnpackError>>),
    Inline(usize),
}

pub(super) fn frame_error(
    layer: &LayerInput<'_>,
    index: usize,
    problem: FrameProblem,
) -> UnpackError {
    let frame = &layer.frames[index];
    let start = layer.base + frame.offset;
    UnpackError::Frame {
        layer: layer.label.clone(),
        frame: index + 1,
        start,
        end: start + frame.compressed_len,
        problem,
    }
}

/// Read a frame's compressed bytes and check them against the index, unless the source holds
/// a verdict on exactly these bytes (they were hashed by a check before the extraction and the
/// file provably has not changed since; [`ByteSource::checked`]). `hashed` counts the frames
/// hashed here.
///
/// [`ByteSource::checked`]: crate::source::ByteSource::checked
pub(super) fn verified_bytes<'a>(
    layer: &'a LayerInput<'a>,
    index: usize,
    hashed: &AtomicU64,
) -> Result<Cow<'a, [u8]>, UnpackError> {
    let frame = &layer.frames[index];
    let offset = layer.base + frame.offset;
    let bytes = layer
        .source
        .bytes(offset, frame.compressed_len)
        .map_err(|e| frame_error(layer, index, FrameProblem::Unreadable(e)))?;
    if layer
        .source
        .checked(offset, frame.compressed_len, &frame.sha256)
    {
        return Ok(bytes);
    }
    hashed.fetch_add(1, Ordering::Relaxed);
    frame
        .check_digest(&bytes)
        .map_err(|problem| frame_error(layer, index, problem))?;
    Ok(bytes)
}

/// What the decoding threads share: decoded-frame buffers given back for reuse, so each frame
/// does not fault in fresh pages, the bytes of decoded frames alive, and the count of frames
/// hashed.
pub(super) struct Spare {
    buffers: Mutex<Vec<Vec<u8>>>,
    /// Buffers kept for reuse at most.
    keep: usize,
    /// Every frame has been handed to a decoder: buffers are freed as they come back, while
    /// the writers still work, instead of all at once at the end.
    all_started: AtomicBool,
    held: AtomicUsize,
    pub(super) hashed: AtomicU64,
}

impl Spare {
    pub(super) fn new(keep: usize) -> Self {
        Spare {
            buffers: Mutex::new(Vec::new()),
            keep,
            all_started: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            hashed: AtomicU64::new(0),
        }
    }

    fn take(&self) -> Vec<u8> {
        self.buffers
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_default()
    }

    fn give_back(&self, buffer: Vec<u8>) {
        self.held.fetch_sub(buffer.len(), Ordering::Relaxed);
        if self.all_started.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut spare) = self.buffers.lock() {
            if spare.len() < self.keep {
                spare.push(buffer);
            }
        }
    }

    fn all_started(&self) {
        if !self.all_started.swap(true, Ordering::Relaxed) {
            let unused = self
                .buffers
                .lock()
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default();
            drop(unused);
        }
    }
}

pub(super) fn decode_frame(
    layer: &LayerInput<'_>,
    index: usize,
    spare: &Arc<Spare>,
) -> Result<Decoded, UnpackError> {
    let frame = &layer.frames[index];
    let bytes = verified_bytes(layer, index, &spare.hashed)?;
    let expected = frame.uncompressed_len;
    let mut data = spare.take();
    let decoded = codec::decode_frame(layer.compression, &bytes, expected, &mut data);
    drop(bytes);
    layer
        .source
        .release(layer.base + frame.offset, frame.compressed_len);
    if layer.source.changed() {
        // The bytes may have changed between the hash and the decode.
        return Err(frame_error(layer, index, FrameProblem::Changed));
    }
    decoded.map_err(|problem| frame_error(layer, index, problem))?;
    Ok(Decoded::new(data, spare))
}

impl<'s, 'a> Pipeline<'s, 'a> {
    pub(super) fn new(
        scope: &'s rayon::Scope<'a>,
        layers: &'a [LayerInput<'a>],
        window: usize,
        spare: &'a Arc<Spare>,
    ) -> Self {
        let jobs = layers
            .iter()
            .enumerate()
            .flat_map(|(layer, input)| {
                (0..input.frames.len()).map(move |frame| FrameId { layer, frame })
            })
            .collect();
        let mut pipeline = Pipeline {
            scope,
            spare,
            layers,
            jobs,
            next_job: 0,
            window,
            in_flight: VecDeque::new(),
        };
        pipeline.fill();
        pipeline
    }

    pub(super) fn fill(&mut self) {
        while self.in_flight.len() < self.window && self.next_job < self.jobs.len() {
            let FrameId { layer, frame } = self.jobs[self.next_job];
            self.next_job += 1;
            let input = &self.layers[layer];
            if input.frames[frame].uncompressed_len > MAX_WINDOW_FRAME {
                self.in_flight.push_back(Slot::Inline(frame));
                continue;
            }
            let (tx, rx) = mpsc::sync_channel(1);
            let spare = self.spare;
            self.scope.spawn(move |_| {
                let _ = tx.send(decode_frame(input, frame, spare));
            });
            self.in_flight.push_back(Slot::Spawned(rx));
        }
        if self.next_job == self.jobs.len() {
            self.spare.all_started();
        }
    }

    /// The next frame of `layer`, in order. Callers ask exactly as many times as it has frames.
    pub(super) fn next(&mut self, layer: usize) -> Result<Chunk<'a>, UnpackError> {
        let slot = self.in_flight.pop_front();
        self.fill();
        let input = &self.layers[layer];
        match slot {
            Some(Slot::Spawned(rx)) => match rx.recv() {
                Ok(result) => result.map(|decoded| Chunk::Bytes(Arc::new(decoded))),
                Err(_) => Err(UnpackError::Io {
                    what: "decoding frames for",
                    path: PathBuf::from(&input.label),
                    source: io::Error::other("a decoder thread stopped"),
                }),
            },
            Some(Slot::Inline(index)) => {
                let bytes = verified_bytes(input, index, &self.spare.hashed)?;
                let reader = codec::frame_reader(input.compression, bytes)
                    .map_err(|problem| frame_error(input, index, problem))?;
                Ok(Chunk::Stream {
                    reader,
                    expected: input.frames[index].uncompressed_len,
                    seen: 0,
                })
            }
            None => Err(UnpackError::Io {
                what: "decoding frames for",
                path: PathBuf::from(&input.label),
                source: io::Error::other("asked for more frames than the layer has"),
            }),
        }
    }
}

/// The uncompressed tar stream of one layer, read frame after frame from the pipeline.
pub(super) struct LayerReader<'p, 's, 'a> {
    pub(super) pipeline: &'p mut Pipeline<'s, 'a>,
    pub(super) layer: usize,
    pub(super) frames_total: usize,
    pub(super) frames_taken: usize,
    pub(super) chunk: Option<Chunk<'a>>,
    pub(super) pos: usize,
    /// Bytes of the stream passed so far, by the parser or by the tree.
    pub(super) consumed: u64,
    pub(super) consumed_before: u64,
    /// Bytes the tree took since the parser last moved: the parser's next skip is that much
    /// shorter.
    pub(super) lent: u64,
    pub(super) failure: Option<UnpackError>,
    pub(super) progress: Option<&'p (dyn Fn(u64) + Sync)>,
}

/// Bytes of scratch for content taken from a frame decoded as a stream.
const STREAM_SCRATCH: usize = 256 << 10;

impl<'a> LayerReader<'_, '_, 'a> {
    /// Let go of the current frame (its buffer goes back to the decoders once no file shares
    /// it any more) and take the next one; false when the layer has no more.
    pub(super) fn fetch(&mut self) -> Result<bool, UnpackError> {
        self.chunk = None;
        if self.frames_taken == self.frames_total {
            return Ok(false);
        }
        let chunk = self.pipeline.next(self.layer)?;
        self.frames_taken += 1;
        self.chunk = Some(chunk);
        self.pos = 0;
        Ok(true)
    }

    pub(super) fn read_inner(&mut self, buf: &mut [u8]) -> Result<usize, UnpackError> {
        loop {
            match &mut self.chunk {
                Some(Chunk::Bytes(frame)) if self.pos < frame.data.len() => {
                    let n = buf.len().min(frame.data.len() - self.pos);
                    buf[..n].copy_from_slice(&frame.data[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
                Some(Chunk::Stream {
                    reader,
                    expected,
                    seen,
                }) => {
                    let index = self.frames_taken - 1;
                    let input = &self.pipeline.layers[self.layer];
                    let n = reader.read(buf).map_err(|e| {
                        frame_error(
                            input,
                            index,
                            FrameProblem::Decode {
                                compression: input.compression,
                                reason: e.to_string(),
                            },
                        )
                    })?;
                    *seen += n as u64;
                    if *seen > *expected || (n == 0 && *seen != *expected) {
                        let actual = *seen;
                        return Err(frame_error(
                            input,
                            index,
                            FrameProblem::Length {
                                expected: *expected,
                                actual,
                            },
                        ));
                    }
                    if n > 0 {
                        return Ok(n);
                    }
                    self.chunk = None;
                }
                _ => {
                    if !self.fetch()? {
                        return Ok(0);
                    }
                }
            }
        }
    }

    /// Count `n` bytes passed and report progress at every MiB.
    fn moved(&mut self, n: usize) {
        self.consumed += n as u64;
        if let Some(progress) = self.progress {
            if n > 0 && (self.consumed >> 20) != ((self.consumed - n as u64) >> 20) {
                progress(self.consumed_before + self.consumed);
            }
        }
    }

    /// True when the stream stands at `position` with nothing taken since the parser last
    /// moved: an entry whose content starts there may take it.
    pub(super) fn at(&self, position: u64) -> bool {
        self.failure.is_none() && self.lent == 0 && self.consumed == position
    }

    /// Move `n` bytes forward, handing each piece to `visit` where it lies: in a decoded
    /// frame, or, for a frame decoded as a stream, in a scratch buffer.
    fn advance(&mut self, mut n: u64, visit: &mut dyn FnMut(&[u8])) -> Result<(), UnpackError> {
        let mut scratch = Vec::new();
        while n > 0 {
            match &self.chunk {
                Some(Chunk::Bytes(frame)) if self.pos < frame.data.len() => {
                    let k =
                        (frame.data.len() - self.pos).min(usize::try_from(n).unwrap_or(usize::MAX));
                    visit(&frame.data[self.pos..self.pos + k]);
                    self.pos += k;
                    n -= k as u64;
                    self.moved(k);
                }
                Some(Chunk::Bytes(_)) | None => {
                    if !self.fetch()? {
                        return Err(self.ended_early());
                    }
                }
                Some(Chunk::Stream { .. }) => {
                    if scratch.is_empty() {
                        scratch = vec![0u8; STREAM_SCRATCH];
                    }
                    let want = scratch.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    let got = self.read_inner(&mut scratch[..want])?;
                    if got == 0 {
                        return Err(self.ended_early());
                    }
                    visit(&scratch[..got]);
                    n -= got as u64;
                    self.moved(got);
                }
            }
        }
        Ok(())
    }

    fn ended_early(&self) -> UnpackError {
        UnpackError::Tar {
            layer: self.pipeline.layers[self.layer].label.clone(),
            offset: None,
            error: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ends inside an entry",
            ),
        }
    }

    /// Take the next `len` bytes, a file's content, for the writers: a share of the decoded
    /// frame when they lie in one (and the frames held stay under [`SHARED_MAX`]), else a copy.
    pub(super) fn take_content(&mut self, len: usize) -> Result<Content, UnpackError> {
        if let Some(Chunk::Bytes(frame)) = &self.chunk {
            if len > 0 && self.pos == frame.data.len() {
                // Content that starts a frame is shared from that frame.
                self.fetch()?;
            }
        }
        if let Some(Chunk::Bytes(frame)) = &self.chunk {
            let room = frame.data.len().saturating_sub(self.pos);
            if len <= room && frame.spare.held.load(Ordering::Relaxed) <= SHARED_MAX {
                let content = Content::Shared {
                    frame: Arc::clone(frame),
                    start: self.pos,
                    len,
                };
                self.pos += len;
                self.lent += len as u64;
                self.moved(len);
                return Ok(content);
            }
        }
        let mut data = Vec::with_capacity(len);
        self.advance(len as u64, &mut |piece| data.extend_from_slice(piece))?;
        self.lent += len as u64;
        Ok(Content::Owned(data))
    }

    /// The parser skips forward by `delta`, less what the tree took since it last moved.
    fn skip(&mut self, to: SeekFrom) -> io::Result<u64> {
        if self.failure.is_some() {
            return Err(io::Error::other("an earlier frame failed"));
        }
        let SeekFrom::Current(delta) = to else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the layer stream only moves forward",
            ));
        };
        let rest = u64::try_from(delta)
            .ok()
            .and_then(|delta| delta.checked_sub(self.lent))
            .ok_or_else(|| io::Error::other("the tar parser asked to move backwards"))?;
        self.lent = 0;
        match self.advance(rest, &mut |_| {}) {
            Ok(()) => Ok(self.consumed),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Keep the first failure for the caller (who reports it whole) and give the parser a
    /// message.
    fn failed(&mut self, e: UnpackError) -> io::Error {
        let message = e.to_string();
        self.failure = Some(e);
        io::Error::other(message)
    }

    /// Read (and so verify) whatever the tar parser left unread: padding after the end marker.
    pub(super) fn drain(&mut self) -> Result<(), UnpackError> {
        let mut sink = vec![0u8; 64 << 10];
        while self.read_inner(&mut sink)? > 0 {}
        Ok(())
    }
}

impl Read for LayerReader<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("an earlier frame failed"));
        }
        if self.lent != 0 {
            // Content the tree took is passed by the parser's next skip, never read.
            return Err(io::Error::other(
                "the tar parser read where the tree took content",
            ));
        }
        match self.read_inner(buf) {
            Ok(n) => {
                self.moved(n);
                Ok(n)
            }
            Err(e) => Err(self.failed(e)),
        }
    }
}

/// The layer's stream as the tar parser sees it: it reads headers and seeks forward over what
/// it does not read; the tree takes content through the same [`RefCell`] between the
/// parser's calls.
pub(super) struct Stream<'r, 'p, 's, 'a>(pub(super) &'r RefCell<LayerReader<'p, 's, 'a>>);

impl Read for Stream<'_, '_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

impl Seek for Stream<'_, '_, '_, '_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.0.borrow_mut().skip(to)
    }
}
