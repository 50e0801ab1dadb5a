//! Compression of layer frames: which codec, at which level, and the one way to encode,
//! decode and check a frame.
//!
//! Every frame is an independent zstd frame or xz stream. This module owns the codecs' names,
//! their level ranges and defaults (one [`Level`] type, checked once where a level enters the
//! program), and the frame encoder and decoders that `unpack`, `write`, `read`, `load` and the
//! deploy engine use. It knows nothing of tar, files or the `.run` layout.

use std::borrow::Cow;
use std::io::{self, Read};
use std::ops::RangeInclusive;

/// How the frames of a layer are compressed. Every frame is an independent stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Xz,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        })
    }
}

/// The zstd level of every layer the builder writes unless `--level` says otherwise.
pub const STORE_ZSTD_LEVEL: u32 = 2;

impl Compression {
    /// The levels this codec accepts.
    pub const fn levels(self) -> RangeInclusive<u32> {
        match self {
            Compression::Zstd => 1..=22,
            Compression::Xz => 0..=9,
        }
    }

    /// The level used when none is asked for: zstd 2 (the store's own level: a third less CPU
    /// than zstd -3 for about 4 % more bytes, which keeping hard links and framing more than
    /// pays back; see docs/benchmarks.md), xz 6 (xz's own default).
    pub const fn default_level(self) -> Level {
        Level {
            compression: self,
            value: match self {
                Compression::Zstd => STORE_ZSTD_LEVEL,
                Compression::Xz => 6,
            },
        }
    }
}

/// A compression level that is valid for its codec (checked once, by [`Level::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Level {
    compression: Compression,
    value: u32,
}

/// A level outside its codec's range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "level {value} is out of range for {compression} ({} to {})",
    compression.levels().start(),
    compression.levels().end()
)]
pub struct LevelError {
    pub compression: Compression,
    pub value: i64,
}

impl Level {
    /// `value` as a level of `compression`, if the codec has it.
    pub fn new(compression: Compression, value: i64) -> Result<Level, LevelError> {
        let range = compression.levels();
        match u32::try_from(value) {
            Ok(v) if range.contains(&v) => Ok(Level {
                compression,
                value: v,
            }),
            _ => Err(LevelError { compression, value }),
        }
    }

    pub fn compression(self) -> Compression {
        self.compression
    }

    pub fn value(self) -> u32 {
        self.value
    }

    /// The level as the zstd library takes it.
    pub fn zstd(self) -> i32 {
        self.value as i32
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} level {}", self.compression, self.value)
    }
}

/// Compress `plain` into one independent frame at `level`.
pub fn encode_frame(level: Level, plain: &[u8]) -> io::Result<Vec<u8>> {
    match level.compression {
        Compression::Zstd => zstd::bulk::compress(plain, level.zstd()),
        Compression::Xz => {
            use std::io::Write;
            let mut encoder = xz2::write::XzEncoder::new(Vec::new(), level.value);
            encoder.write_all(plain)?;
            encoder.finish()
        }
    }
}

/// A zstd compression context that compresses whole frames at one level, reused frame after
/// frame (a layer writer's worker keeps one). With `split_blocks` false, zstd's pre-splitter
/// (`ZSTD_c_blockSplitterLevel`, which since zstd 1.5.6 cuts a 128 KiB block in smaller ones
/// before compressing it at fast levels) is off: every block is compressed whole, as zstd 1.5.4
/// and earlier do, which costs less CPU for a slightly larger output.
pub struct FrameCompressor {
    ctx: std::ptr::NonNull<zstd::zstd_safe::zstd_sys::ZSTD_CCtx>,
}

// The context is only ever used through `&mut self`, by one thread at a time.
unsafe impl Send for FrameCompressor {}

impl FrameCompressor {
    pub fn new(level: i32, split_blocks: bool) -> io::Result<Self> {
        use zstd::zstd_safe::zstd_sys::{self as sys, ZSTD_cParameter as P};
        // SAFETY: plain constructor; a null result is handled.
        let ctx = std::ptr::NonNull::new(unsafe { sys::ZSTD_createCCtx() })
            .ok_or_else(|| io::Error::other("zstd could not allocate a compression context"))?;
        let this = FrameCompressor { ctx };
        this.set(P::ZSTD_c_compressionLevel, level)?;
        if !split_blocks {
            // ZSTD_c_blockSplitterLevel: 1 = no pre-splitting.
            this.set(P::ZSTD_c_experimentalParam20, 1)?;
        }
        Ok(this)
    }

    fn set(&self, param: zstd::zstd_safe::zstd_sys::ZSTD_cParameter, value: i32) -> io::Result<()> {
        // SAFETY: `ctx` is a live context owned by `self`.
        let code = unsafe {
            zstd::zstd_safe::zstd_sys::ZSTD_CCtx_setParameter(self.ctx.as_ptr(), param, value)
        };
        zstd_result(code).map(|_| ())
    }

    /// `plain` as one frame (content size in its header, no checksum) into `out`, replacing
    /// what `out` held; `out`'s allocation is reused.
    pub fn compress_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        use zstd::zstd_safe::zstd_sys as sys;
        out.clear();
        // SAFETY: pure function of its argument.
        let bound = unsafe { sys::ZSTD_compressBound(plain.len()) };
        out.reserve(bound);
        // SAFETY: `out` has `out.capacity()` writable bytes; zstd writes at most that many and
        // returns how many it wrote (or an error code), after which they are initialised.
        let written = unsafe {
            sys::ZSTD_compress2(
                self.ctx.as_ptr(),
                out.as_mut_ptr().cast(),
                out.capacity(),
                plain.as_ptr().cast(),
                plain.len(),
            )
        };
        let written = zstd_result(written)?;
        // SAFETY: see above.
        unsafe { out.set_len(written) };
        Ok(())
    }
}

impl Drop for FrameCompressor {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from ZSTD_createCCtx and is freed once.
        unsafe {
            zstd::zstd_safe::zstd_sys::ZSTD_freeCCtx(self.ctx.as_ptr());
        }
    }
}

/// A zstd return value as a size or an error.
fn zstd_result(code: usize) -> io::Result<usize> {
    use zstd::zstd_safe::zstd_sys as sys;
    // SAFETY: both take any value; the error name is a static C string.
    unsafe {
        if sys::ZSTD_isError(code) != 0 {
            let name = std::ffi::CStr::from_ptr(sys::ZSTD_getErrorName(code));
            return Err(io::Error::other(format!(
                "zstd: {}",
                name.to_string_lossy()
            )));
        }
    }
    Ok(code)
}

/// The largest block a zstd frame may hold (`Block_Maximum_Size`, RFC 8878 §3.1.1.2.4).
const ZSTD_MAX_BLOCK: usize = 128 << 10;

/// `plain` as one independent zstd frame of raw (uncompressed) blocks: a "stored" frame.
///
/// For content that is already compressed (gzip or zstd image layers), where compressing again
/// costs time and gains nothing. Any zstd decoder reads it; its bytes depend only on `plain`, so
/// the same content always gives the same frame. The header declares the content size (single
/// segment, no checksum), as frames from [`encode_frame`] do, so the declared-size checks apply.
pub fn encode_stored_frame(plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored_frame_len(plain.len()));
    stored_frame_pieces(plain, |piece| out.extend_from_slice(piece));
    out
}

/// The length of [`encode_stored_frame`]'s frame for `plain_len` bytes of content.
pub fn stored_frame_len(plain_len: usize) -> usize {
    let blocks = plain_len.div_ceil(ZSTD_MAX_BLOCK).max(1);
    let size_field = match plain_len as u64 {
        0..=255 => 1,
        256..=65_791 => 2,
        65_792..=0xFFFF_FFFF => 4,
        _ => 8,
    };
    4 + 1 + size_field + 3 * blocks + plain_len
}

/// [`encode_stored_frame`]'s frame handed to `piece` in order, without copying `plain`: the
/// frame header, then each block header followed by its slice of `plain`. Writing the pieces
/// one after the other gives exactly the bytes [`encode_stored_frame`] returns.
pub fn stored_frame_pieces(plain: &[u8], mut piece: impl FnMut(&[u8])) {
    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    let size = plain.len() as u64;
    // Frame_Header_Descriptor: Single_Segment (bit 5) and Frame_Content_Size_flag (bits 6-7),
    // whose field is 1, 2 (size - 256), 4 or 8 bytes.
    match size {
        0..=255 => header.extend_from_slice(&[0x20, size as u8]),
        256..=65_791 => {
            header.push(0x60);
            header.extend_from_slice(&((size - 256) as u16).to_le_bytes());
        }
        65_792..=0xFFFF_FFFF => {
            header.push(0xA0);
            header.extend_from_slice(&(size as u32).to_le_bytes());
        }
        _ => {
            header.push(0xE0);
            header.extend_from_slice(&size.to_le_bytes());
        }
    }
    let mut chunks = plain.chunks(ZSTD_MAX_BLOCK).peekable();
    if chunks.peek().is_none() {
        // An empty frame still has one (empty, last) block.
        header.extend_from_slice(&[1, 0, 0]);
    }
    piece(&header);
    while let Some(chunk) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        // Block_Header: Last_Block (bit 0), Block_Type 0 = Raw (bits 1-2), Block_Size (bits 3-23).
        let block = last | ((chunk.len() as u32) << 3);
        piece(&block.to_le_bytes()[..3]);
        piece(chunk);
    }
}

/// Why a frame could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FrameProblem {
    #[error("cannot be read ({0})")]
    Unreadable(io::Error),
    #[error("is corrupt ({algorithm} {actual}, expected {expected})")]
    Checksum {
        /// `blake3` or `sha256`: the digest the check used.
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("is corrupt (not a valid {compression} stream: {reason})")]
    Decode {
        compression: Compression,
        reason: String,
    },
    #[error("is corrupt (decodes to {actual} bytes, expected {expected})")]
    Length { expected: u64, actual: u64 },
    #[error("changed while it was being read (the file was truncated or rewritten)")]
    Changed,
}

impl FrameProblem {
    /// The problem without the leading verb, for messages that already say "is corrupt".
    pub fn detail(&self) -> String {
        match self {
            FrameProblem::Unreadable(e) => format!("it cannot be read ({e})"),
            FrameProblem::Checksum {
                algorithm,
                expected,
                actual,
            } => format!("{algorithm} {actual}, expected {expected}"),
            FrameProblem::Decode {
                compression,
                reason,
            } => format!("not a valid {compression} stream ({reason})"),
            FrameProblem::Length { expected, actual } => {
                format!("it decodes to {actual} bytes, expected {expected}")
            }
            FrameProblem::Changed => "the file changed while it was being read".into(),
        }
    }
}

/// Decode one whole frame into `out` (cleared first; its capacity is reused) and check that it
/// yields exactly `expected` bytes. For frames the caller keeps in memory whole; larger ones
/// are read through [`frame_reader`].
pub fn decode_frame(
    compression: Compression,
    bytes: &[u8],
    expected: u64,
    out: &mut Vec<u8>,
) -> Result<(), FrameProblem> {
    let decode_error = |reason: String| FrameProblem::Decode {
        compression,
        reason,
    };
    out.clear();
    out.reserve(expected as usize);
    match compression {
        Compression::Zstd => {
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(bytes, out))
                .map_err(|e| decode_error(e.to_string()))?;
        }
        Compression::Xz => {
            xz2::read::XzDecoder::new(bytes)
                .take(expected + 1)
                .read_to_end(out)
                .map_err(|e| decode_error(e.to_string()))?;
        }
    }
    if out.len() as u64 != expected {
        return Err(FrameProblem::Length {
            expected,
            actual: out.len() as u64,
        });
    }
    Ok(())
}

/// A streaming decoder over one frame's compressed bytes (borrowed from a mapping or owned
/// after a positioned read).
pub fn frame_reader<'a>(
    compression: Compression,
    bytes: Cow<'a, [u8]>,
) -> Result<Box<dyn Read + Send + 'a>, FrameProblem> {
    let decode_error = |e: io::Error| FrameProblem::Decode {
        compression,
        reason: e.to_string(),
    };
    Ok(match (compression, bytes) {
        (Compression::Zstd, Cow::Borrowed(b)) => {
            Box::new(zstd::stream::read::Decoder::with_buffer(b).map_err(decode_error)?)
        }
        (Compression::Zstd, Cow::Owned(v)) => {
            Box::new(zstd::stream::read::Decoder::new(io::Cursor::new(v)).map_err(decode_error)?)
        }
        (Compression::Xz, Cow::Borrowed(b)) => Box::new(xz2::read::XzDecoder::new(b)),
        (Compression::Xz, Cow::Owned(v)) => Box::new(xz2::read::XzDecoder::new(io::Cursor::new(v))),
    })
}

/// How thoroughly [`check_frame_content`] looks at a frame whose sha256 already matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCheck {
    /// Compare the content size a zstd frame declares in its header with the index (cheap;
    /// xz frames and zstd frames without a declared size pass).
    DeclaredSize,
    /// Decode the whole frame (into a small reused buffer) and count what it yields.
    Decode,
}

/// Check that verified compressed `bytes` are a valid `compression` stream of exactly
/// `expected` uncompressed bytes. The sha256 only proves the bytes are the ones the packer
/// indexed; this proves the index describes them.
pub fn check_frame_content(
    compression: Compression,
    bytes: &[u8],
    expected: u64,
    depth: FrameCheck,
) -> Result<(), FrameProblem> {
    let decode_error = |reason: String| FrameProblem::Decode {
        compression,
        reason,
    };
    if compression == Compression::Zstd {
        match zstd::zstd_safe::get_frame_content_size(bytes) {
            Ok(Some(declared)) if declared != expected => {
                return Err(FrameProblem::Length {
                    expected,
                    actual: declared,
                })
            }
            Ok(_) => {}
            Err(_) => return Err(decode_error("no valid zstd frame header".into())),
        }
    }
    if depth == FrameCheck::DeclaredSize {
        return Ok(());
    }
    let mut reader = frame_reader(compression, Cow::Borrowed(bytes))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut seen = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| decode_error(e.to_string()))?;
        if n == 0 {
            break;
        }
        seen += n as u64;
        if seen > expected {
            break;
        }
    }
    if seen != expected {
        return Err(FrameProblem::Length {
            expected,
            actual: seen,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_frames_decode_to_their_content_and_declare_its_size() {
        for len in [
            0usize,
            1,
            255,
            256,
            65_791,
            65_792,
            ZSTD_MAX_BLOCK,
            3 * ZSTD_MAX_BLOCK + 7,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let frame = encode_stored_frame(&plain);
            assert_eq!(zstd::decode_all(&frame[..]).unwrap(), plain, "{len}");
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&frame).ok(),
                Some(Some(len as u64)),
                "{len}"
            );
            assert_eq!(
                zstd::zstd_safe::find_frame_compressed_size(&frame),
                Ok(frame.len()),
                "{len}"
            );
            check_frame_content(Compression::Zstd, &frame, len as u64, FrameCheck::Decode).unwrap();
        }
    }
}
