//! The `.run` format and everything that touches compressed layer bytes.
//!
//! This crate owns the framed-zstd layer encoding shared by the image store and the packer
//! (`frames`), the `.run` container (writer, reader, verification) and the one tar extraction
//! routine used by `extract`, remote unpack and `load` (`unpack`). It knows nothing about
//! Kubefiles, registries, Clusterfiles or SSH.

pub mod codec;
pub mod format;
pub mod frames;
pub mod read;
pub mod shell_notice;
pub mod signature;
pub mod source;
pub mod unpack;
pub mod write;

pub use codec::{Level, LevelError, STORE_ZSTD_LEVEL};
pub use format::{JsonText, RunManifest, FORMAT_VERSION};
pub use read::{Documents, ReadError, RunFile, Volumes};
pub use signature::SignatureRecord;
pub use source::{ByteSource, MappedFile, PositionedFile};
pub use unpack::{
    unpack, unpack_blob_files, Compression, EntryProblem, FrameProblem, LayerInput, UnpackError,
    UnpackOptions, UnpackReport,
};
pub use write::{write, write_signed, LayerBlob, ManifestSigner, PackReport, PackSpec, WriteError};
