//! Writing one layer: a deterministic tar streamed through the framed zstd writer into a store
//! blob. Timestamps are fixed, ownership is root, entries come in the order callers add them
//! (callers sort), so the same inputs always give the same digest.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use packer::frames::FramedWriter;

use crate::store::{BlobWriter, Descriptor, Store, MEDIA_TYPE_LAYER_ZSTD};

use super::BuildError;

/// A finished layer blob in the store.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub descriptor: Descriptor,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
}

/// Streams tar entries into a new layer blob.
pub struct LayerWriter {
    tar: tar::Builder<FramedWriter<BlobWriter>>,
    mtime: u64,
    store: Store,
}

impl LayerWriter {
    pub fn new(store: &Store, level: i32, mtime: u64) -> Result<Self, BuildError> {
        let blob = store.blob_writer()?;
        let mut tar = tar::Builder::new(FramedWriter::new(blob, level));
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(LayerWriter {
            tar,
            mtime,
            store: store.clone(),
        })
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
        self.tar.append_data(&mut h, path, reader.take(size))?;
        self.boundary()
    }

    /// A regular file copied from `source` on disk, read straight into the frame being filled.
    pub fn add_file_from(&mut self, path: &str, mode: u32, source: &Path) -> io::Result<()> {
        let mut file = File::open(source)?;
        let size = file.metadata()?.len();
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

    pub fn add_symlink(&mut self, path: &str, target: &Path) -> io::Result<()> {
        let mut h = self.header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target)?;
        self.boundary()
    }

    pub fn add_hardlink(&mut self, path: &str, target: &str) -> io::Result<()> {
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
        self.tar
            .append_data(&mut h, format!("{dir}.wh.{name}"), io::empty())?;
        self.boundary()
    }

    /// Finish the tar, flush the last frame and move the blob into the store.
    pub fn finish(self) -> Result<BuiltLayer, BuildError> {
        let framed = self
            .tar
            .into_inner()
            .map_err(|e| BuildError::io("finishing a layer", e))?;
        let (blob, info) = framed
            .finish()
            .map_err(|e| BuildError::io("compressing a layer", e))?;
        let digest = format!("sha256:{}", info.digest);
        let (digest, size) = blob.commit(Some(&digest))?;
        self.store.put_frame_index(&digest, &info.frames);
        Ok(BuiltLayer {
            descriptor: Descriptor {
                media_type: MEDIA_TYPE_LAYER_ZSTD.to_string(),
                digest,
                size,
                annotations: Default::default(),
                platform: None,
            },
            diff_id: format!("sha256:{}", info.diff_id),
        })
    }
}
