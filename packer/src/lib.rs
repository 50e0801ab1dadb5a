//! The `.run` format and everything that touches compressed layer bytes.
//!
//! This crate owns the framed-zstd layer encoding shared by the image store and the packer
//! (`frames`), the `.run` container (writer, reader, verification) and the one tar extraction
//! routine used by `extract`, remote unpack and `load`. It knows nothing about Kubefiles,
//! registries, Clusterfiles or SSH.

pub mod frames;
