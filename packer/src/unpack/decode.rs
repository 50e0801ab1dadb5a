//! Decoding: frames verified and decoded on the rayon pool into a bounded in-order window, and
//! read back as one layer's tar stream. Owns the frame checks; knows nothing of tar entries.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use super::{FrameProblem, LayerInput, UnpackError};
use crate::codec;

/// Frames larger than this (uncompressed) are decoded as a stream on the parsing thread instead
/// of whole in the decode window, so memory stays bounded for foreign single-frame blobs.
const MAX_WINDOW_FRAME: u64 = 32 << 20;

pub(super) enum Chunk<'a> {
    Bytes(Vec<u8>),
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
    pub(super) spare: &'a Spare,
    pub(super) layers: &'a [LayerInput<'a>],
    pub(super) jobs: Vec<FrameId>,
    pub(super) next_job: usize,
    pub(super) window: usize,
    pub(super) in_flight: VecDeque<Slot>,
}

pub(super) enum Slot {
    Spawned(mpsc::Receiver<Result<Vec<u8>, UnpackError>>),
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

/// What the decoding threads share: decoded-frame buffers handed back by the parser for
/// reuse, so each frame does not fault in fresh pages, and the count of frames hashed.
#[derive(Default)]
pub(super) struct Spare {
    buffers: Mutex<Vec<Vec<u8>>>,
    pub(super) hashed: AtomicU64,
}

pub(super) fn decode_frame(
    layer: &LayerInput<'_>,
    index: usize,
    spare: &Spare,
) -> Result<Vec<u8>, UnpackError> {
    let frame = &layer.frames[index];
    let bytes = verified_bytes(layer, index, &spare.hashed)?;
    let expected = frame.uncompressed_len;
    let mut data = spare
        .buffers
        .lock()
        .ok()
        .and_then(|mut s| s.pop())
        .unwrap_or_default();
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
    Ok(data)
}

impl<'s, 'a> Pipeline<'s, 'a> {
    pub(super) fn new(
        scope: &'s rayon::Scope<'a>,
        layers: &'a [LayerInput<'a>],
        window: usize,
        spare: &'a Spare,
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
    }

    /// The next frame of `layer`, in order. Callers ask exactly as many times as it has frames.
    pub(super) fn next(&mut self, layer: usize) -> Result<Chunk<'a>, UnpackError> {
        let slot = self.in_flight.pop_front();
        self.fill();
        let input = &self.layers[layer];
        match slot {
            Some(Slot::Spawned(rx)) => match rx.recv() {
                Ok(result) => result.map(Chunk::Bytes),
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
    pub(super) consumed: u64,
    pub(super) consumed_before: u64,
    pub(super) failure: Option<UnpackError>,
    pub(super) progress: Option<&'p (dyn Fn(u64) + Sync)>,
}

impl<'a> LayerReader<'_, '_, 'a> {
    pub(super) fn fetch(&mut self) -> Result<bool, UnpackError> {
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
                Some(Chunk::Bytes(data)) if self.pos < data.len() => {
                    let n = buf.len().min(data.len() - self.pos);
                    buf[..n].copy_from_slice(&data[self.pos..self.pos + n]);
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
                    if let Some(Chunk::Bytes(used)) = self.chunk.take() {
                        self.recycle(used);
                    }
                    if !self.fetch()? {
                        return Ok(0);
                    }
                }
            }
        }
    }

    /// Keep a consumed frame's buffer for a frame still to decode. Once every frame has been
    /// handed to a decoder, buffers are freed as they come back, while the writers still
    /// work, instead of all at once at the end.
    pub(super) fn recycle(&mut self, buffer: Vec<u8>) {
        let Ok(mut spare) = self.pipeline.spare.buffers.lock() else {
            return;
        };
        if self.pipeline.next_job < self.pipeline.jobs.len() {
            if spare.len() <= self.pipeline.window {
                spare.push(buffer);
            }
        } else {
            let unused = std::mem::take(&mut *spare);
            drop(spare);
            drop((unused, buffer));
        }
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
        match self.read_inner(buf) {
            Ok(n) => {
                self.consumed += n as u64;
                if let Some(progress) = self.progress {
                    if n > 0 && (self.consumed >> 20) != ((self.consumed - n as u64) >> 20) {
                        progress(self.consumed_before + self.consumed);
                    }
                }
                Ok(n)
            }
            Err(e) => {
                let message = e.to_string();
                self.failure = Some(e);
                Err(io::Error::other(message))
            }
        }
    }
}
