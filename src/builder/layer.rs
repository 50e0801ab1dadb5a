//! Writing one layer: a deterministic tar streamed through the framed zstd writer into a store
//! blob. Timestamps are fixed, ownership is root, entries come in the order callers add them
//! (callers sort), so the same inputs always give the same digest.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use packer::frames::FramedWriter;

use crate::deploy::image_plugins::{entry_effect, EntryEffect, PluginChange};
use crate::store::{BlobWriter, Descriptor, Store, MEDIA_TYPE_LAYER_ZSTD};

use super::BuildError;

/// A finished layer blob in the store.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub descriptor: Descriptor,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// What the layer does to the image's `plugins/*.yaml`, noted while it was written; `None`
    /// when unknown (a cache entry from before the record, a plugin file that is not UTF-8):
    /// the builder then reads the layer.
    pub plugins: Option<Vec<PluginChange>>,
}

/// Why [`LayerWriter::add_file_streamed`] failed: the layer could not be written, or the
/// caller's `fill` failed (a download).
#[derive(Debug)]
pub enum StreamedError<E> {
    Io(io::Error),
    Fill(E),
}

/// Counts what passes through to the framed writer.
struct Counted<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Streams tar entries into a new layer blob.
pub struct LayerWriter {
    tar: tar::Builder<FramedWriter<BlobWriter>>,
    mtime: u64,
    store: Store,
    /// See [`BuiltLayer::plugins`].
    plugins: Option<Vec<PluginChange>>,
}

impl LayerWriter {
    pub fn new(store: &Store, level: i32, mtime: u64) -> Result<Self, BuildError> {
        // The framed writer hashes the compressed stream (the layer digest); the store need not.
        let blob = store.unhashed_blob_writer()?;
        let mut tar = tar::Builder::new(FramedWriter::new(blob, level));
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(LayerWriter {
            tar,
            mtime,
            store: store.clone(),
            plugins: Some(Vec::new()),
        })
    }

    /// Note what an entry at `path` does to `plugins/`; `text` gives a plugin file's content
    /// when the caller has it (`None` makes the record unknown).
    fn note(&mut self, path: &str, kind: tar::EntryType, text: impl FnOnce() -> Option<String>) {
        let change = match entry_effect(path, kind) {
            None => return,
            Some(EntryEffect::Clear) => PluginChange::Clear,
            Some(EntryEffect::ClearLegacy) => PluginChange::ClearLegacy,
            Some(EntryEffect::Remove(name)) => PluginChange::Remove { name },
            Some(EntryEffect::Read(name)) => match text() {
                Some(text) => PluginChange::Put { name, text },
                None => {
                    self.plugins = None;
                    return;
                }
            },
        };
        if let Some(changes) = &mut self.plugins {
            changes.push(change);
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(self.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    /// Begin a new frame for the entries that follow, encoded as `mode` (see
    /// [`FramedWriter::start_frame`]): the images layer gives every blob a frame of its own.
    pub fn start_frame(&mut self, mode: packer::frames::FrameMode) -> io::Result<()> {
        self.tar.get_mut().start_frame(mode)
    }

    fn boundary(&mut self) -> io::Result<()> {
        self.tar.get_mut().entry_boundary()
    }

    /// A directory entry (`path` relative to the image root, without leading `/`).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Directory, mode, 0);
        let name = format!("{}/", path.trim_end_matches('/'));
        self.note(&name, tar::EntryType::Directory, || None);
        self.tar.append_data(&mut h, name, io::empty())?;
        self.boundary()
    }

    /// A regular file whose content is read from `reader` (exactly `size` bytes).
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        reader: impl Read,
    ) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Regular, mode, size);
        if entry_effect(path, tar::EntryType::Regular).is_some() {
            // A plugin file (small): read once, noted and written from memory.
            let mut bytes = Vec::new();
            reader.take(size).read_to_end(&mut bytes)?;
            self.note(path, tar::EntryType::Regular, || {
                String::from_utf8(bytes.clone()).ok()
            });
            self.tar.append_data(&mut h, path, &bytes[..])?;
            return self.boundary();
        }
        self.tar.append_data(&mut h, path, reader.take(size))?;
        self.boundary()
    }

    /// A regular file copied from `source` on disk, read straight into the frame being filled.
    pub fn add_file_from(&mut self, path: &str, mode: u32, source: &Path) -> io::Result<()> {
        let mut file = File::open(source)?;
        let size = file.metadata()?.len();
        self.note(path, tar::EntryType::Regular, || {
            std::fs::read_to_string(source).ok()
        });
        let mut h = self.header(tar::EntryType::Regular, mode, size);
        // The header (and any long-name entries) through the tar builder with no data: it
        // copies nothing and pads nothing for an empty reader. The content and its padding
        // follow here.
        self.tar.append_data(&mut h, path, io::empty())?;
        let framed = self.tar.get_mut();
        let copied = framed.write_from(&mut file, size)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} changed while it was read ({copied} of {size} bytes)",
                    source.display()
                ),
            ));
        }
        let padding = (512 - size % 512) % 512;
        framed.write_all(&[0u8; 512][..padding as usize])?;
        self.boundary()
    }

    /// A regular file of exactly `size` bytes that `fill` writes into the frame being filled as
    /// they arrive (a download streamed straight into the layer). `fill` returns its own error;
    /// a `fill` that writes a different number of bytes is an error too.
    pub fn add_file_streamed<E>(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), E>,
    ) -> Result<(), StreamedError<E>> {
        let mut h = self.header(tar::EntryType::Regular, mode, size);
        self.note(path, tar::EntryType::Regular, || None);
        self.tar
            .append_data(&mut h, path, io::empty())
            .map_err(StreamedError::Io)?;
        let mut counted = Counted {
            inner: self.tar.get_mut(),
            written: 0,
        };
        fill(&mut counted).map_err(StreamedError::Fill)?;
        let written = counted.written;
        if written != size {
            return Err(StreamedError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path}: {written} bytes arrived for an entry of {size}"),
            )));
        }
        let padding = (512 - size % 512) % 512;
        let framed = self.tar.get_mut();
        framed
            .write_all(&[0u8; 512][..padding as usize])
            .map_err(StreamedError::Io)?;
        self.boundary().map_err(StreamedError::Io)
    }

    pub fn add_symlink(&mut self, path: &str, target: &Path) -> io::Result<()> {
        self.note(path, tar::EntryType::Symlink, || None);
        let mut h = self.header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target)?;
        self.boundary()
    }

    pub fn add_hardlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.note(path, tar::EntryType::Link, || None);
        let mut h = self.header(tar::EntryType::Link, 0o644, 0);
        self.tar.append_link(&mut h, path, target)?;
        self.boundary()
    }

    /// An OCI whiteout: `path` is deleted by this layer.
    pub fn add_whiteout(&mut self, path: &str) -> io::Result<()> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path),
        };
        let mut h = self.header(tar::EntryType::Regular, 0o644, 0);
        let whiteout = format!("{dir}.wh.{name}");
        self.note(&whiteout, tar::EntryType::Regular, || None);
        self.tar.append_data(&mut h, whiteout, io::empty())?;
        self.boundary()
    }

    /// Finish the tar, flush the last frame and move the blob into the store.
    pub fn finish(self) -> Result<BuiltLayer, BuildError> {
        self.finish_staged()?.commit()
    }

    /// Finish the tar and flush the last frame, keeping the blob out of the store until
    /// [`StagedLayer::commit`] (dropping it removes it).
    pub fn finish_staged(self) -> Result<StagedLayer, BuildError> {
        let framed = self
            .tar
            .into_inner()
            .map_err(|e| BuildError::io("finishing a layer", e))?;
        let (blob, info) = framed
            .finish()
            .map_err(|e| BuildError::io("compressing a layer", e))?;
        let digest = format!("sha256:{}", info.digest);
        let blob = blob.finish(Some(&digest))?;
        Ok(StagedLayer {
            layer: BuiltLayer {
                descriptor: Descriptor {
                    media_type: MEDIA_TYPE_LAYER_ZSTD.to_string(),
                    digest,
                    size: blob.size(),
                    annotations: Default::default(),
                    platform: None,
                },
                diff_id: format!("sha256:{}", info.diff_id),
                plugins: self.plugins,
            },
            frames: info.frames,
            blob,
            store: self.store,
        })
    }
}

/// A layer written and checked but not yet in the store.
pub struct StagedLayer {
    pub layer: BuiltLayer,
    frames: Vec<packer::frames::Frame>,
    blob: crate::store::StagedBlob,
    store: Store,
}

impl StagedLayer {
    /// Where the blob is while staged (to read it back).
    pub fn path(&self) -> &Path {
        self.blob.path()
    }

    /// Move the blob into the store, with its frame index.
    pub fn commit(self) -> Result<BuiltLayer, BuildError> {
        self.blob.commit()?;
        self.store
            .put_frame_index(&self.layer.descriptor.digest, &self.frames);
        Ok(self.layer)
    }
}
