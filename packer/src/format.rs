//! The on-disk layout of a `.run` file (the spec is `docs/format.md`).
//!
//! ```text
//! volume 0 (app.run):  stub ‖ pad ‖ HEADER ‖ IMAGE DOCUMENTS ‖ MANIFEST ‖ pad ‖ layer frames (64 KiB-aligned) ‖ FOOTER
//! volume k > 0:        HEADER ‖ pad ‖ layer frames (64 KiB-aligned) ‖ FOOTER
//! ```
//!
//! This module owns the fixed-size [`Header`] and [`Footer`] records and the versioned JSON
//! [`RunManifest`], their encoding and validation, and the geometry rules (alignment, where the
//! header of volume 0 sits after the stub). It does no file I/O beyond parsing an ELF header
//! from bytes it is given; `write` and `read` do the I/O.

use sha2::{Digest, Sha256};

use crate::unpack::Compression;

/// Current format version, written in header, footer and manifest.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version readers still read: version 1 carried the image's documents inside the
/// manifest instead of beside it.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Alignment of the header of volume 0 and of every layer's first frame.
pub const ALIGN: u64 = 64 << 10;
/// Size of the header record.
pub const HEADER_LEN: u64 = 4096;
/// Size of the footer record at the end of every volume.
pub const FOOTER_LEN: u64 = 64;
/// Magic at the start of every header.
pub const HEADER_MAGIC: [u8; 8] = *b"SEALRUN\0";
/// Magic at the start of every footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"SEALEND\0";
/// The largest manifest a reader accepts. A manifest lists every frame (about 200 bytes each;
/// a terabyte image in 16 MiB frames needs about 13 MiB), so anything larger is damage, and a
/// damaged length field must not make the reader allocate it.
pub const MAX_MANIFEST_LEN: u64 = 64 << 20;
/// The largest image documents (OCI manifest and config together) a reader accepts. A config
/// carries the image's SBOM: about 9 MB for 25,000 files.
pub const MAX_DOCUMENTS_LEN: u64 = 256 << 20;
/// The most volumes a payload may have (a 4 GiB split of a petabyte).
pub const MAX_VOLUMES: u32 = 1 << 18;
/// Value of [`RunManifest::format`].
pub const MANIFEST_FORMAT: &str = "sealer.run";

/// Round `n` up to a multiple of `align` (a power of two); saturates at the largest multiple
/// instead of overflowing (only lengths read from a damaged file come near it).
pub fn align_up(n: u64, align: u64) -> u64 {
    n.div_ceil(align).saturating_mul(align)
}

/// Why bytes are not a valid header, footer or manifest.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("no {what} magic")]
    BadMagic { what: &'static str },
    #[error("the {what} checksum does not match (the record is damaged)")]
    BadChecksum { what: &'static str },
    #[error("format version {found} is not supported (this program reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}); use a newer sealer")]
    Version { found: u32 },
    #[error("the manifest is not valid: {0}")]
    Manifest(String),
}

/// A version this program reads, or the error naming it.
fn check_version(found: u32) -> Result<(), FormatError> {
    if (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&found) {
        Ok(())
    } else {
        Err(FormatError::Version { found })
    }
}

fn checksum(bytes: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The record at the start of every volume's payload. Offsets are relative to the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    /// sha256 of the manifest bytes: the identity of the whole payload.
    pub payload_id: [u8; 32],
    pub volume_index: u32,
    pub volume_count: u32,
    /// Manifest position relative to the header (volume 0 only; zero elsewhere).
    pub manifest_offset: u64,
    pub manifest_len: u64,
    /// Bytes from the start of this header to the end of this volume, footer included.
    pub volume_len: u64,
    /// Bytes of all volumes' payloads together (each from its header to its end).
    pub payload_len: u64,
}

impl Header {
    /// Encode into exactly [`HEADER_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN as usize);
        b.extend_from_slice(&HEADER_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b.extend_from_slice(&self.payload_id);
        b.extend_from_slice(&self.volume_index.to_le_bytes());
        b.extend_from_slice(&self.volume_count.to_le_bytes());
        b.extend_from_slice(&self.manifest_offset.to_le_bytes());
        b.extend_from_slice(&self.manifest_len.to_le_bytes());
        b.extend_from_slice(&self.volume_len.to_le_bytes());
        b.extend_from_slice(&self.payload_len.to_le_bytes());
        let sum = checksum(&b);
        b.extend_from_slice(&sum);
        b.resize(HEADER_LEN as usize, 0);
        b
    }

    /// Parse the first [`HEADER_LEN`] (at least 96) bytes of a header.
    pub fn decode(b: &[u8]) -> Result<Header, FormatError> {
        if b.len() < 96 || b[..8] != HEADER_MAGIC {
            return Err(FormatError::BadMagic { what: "header" });
        }
        let body = 88;
        if checksum(&b[..body]) != b[body..body + 8] {
            return Err(FormatError::BadChecksum { what: "header" });
        }
        let version = u32_at(b, 8);
        check_version(version)?;
        let mut payload_id = [0u8; 32];
        payload_id.copy_from_slice(&b[16..48]);
        Ok(Header {
            version,
            payload_id,
            volume_index: u32_at(b, 48),
            volume_count: u32_at(b, 52),
            manifest_offset: u64_at(b, 56),
            manifest_len: u64_at(b, 64),
            volume_len: u64_at(b, 72),
            payload_len: u64_at(b, 80),
        })
    }
}

/// The fixed record at the very end of every volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub version: u32,
    pub volume_index: u32,
    /// Bytes from the start of the header to the end of the volume (locates the header).
    pub volume_len: u64,
    pub manifest_offset: u64,
    pub manifest_len: u64,
    /// First 16 bytes of the payload id.
    pub payload_id_prefix: [u8; 16],
}

impl Footer {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FOOTER_LEN as usize);
        b.extend_from_slice(&FOOTER_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.volume_index.to_le_bytes());
        b.extend_from_slice(&self.volume_len.to_le_bytes());
        b.extend_from_slice(&self.manifest_offset.to_le_bytes());
        b.extend_from_slice(&self.manifest_len.to_le_bytes());
        b.extend_from_slice(&self.payload_id_prefix);
        let sum = checksum(&b);
        b.extend_from_slice(&sum);
        debug_assert_eq!(b.len() as u64, FOOTER_LEN);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Footer, FormatError> {
        if b.len() != FOOTER_LEN as usize || b[..8] != FOOTER_MAGIC {
            return Err(FormatError::BadMagic { what: "footer" });
        }
        if checksum(&b[..56]) != b[56..64] {
            return Err(FormatError::BadChecksum { what: "footer" });
        }
        let version = u32_at(b, 8);
        check_version(version)?;
        let mut payload_id_prefix = [0u8; 16];
        payload_id_prefix.copy_from_slice(&b[40..56]);
        Ok(Footer {
            version,
            volume_index: u32_at(b, 12),
            volume_len: u64_at(b, 16),
            manifest_offset: u64_at(b, 24),
            manifest_len: u64_at(b, 32),
            payload_id_prefix,
        })
    }
}

/// Everything the installer knows about its payload; its sha256 is the payload id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    pub version: u32,
    pub image: ImageInfo,
    pub layers: Vec<LayerEntry>,
    pub volumes: Vec<VolumeEntry>,
    /// Sum of all volumes' `len`.
    pub payload_len: u64,
}

/// The image the payload was packed from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    /// `NAME:TAG` as the store names it.
    pub name: String,
    /// Digest of the OCI image manifest, `sha256:…`.
    pub manifest_digest: String,
    /// The OCI image manifest, byte for byte (empty if the packer was not given one). Version 1
    /// stores it here; version 2 in the image documents, from where the reader fills it in.
    #[serde(default, skip_serializing_if = "JsonText::is_empty")]
    pub manifest_json: JsonText,
    /// Digest of the OCI config, `sha256:…`.
    pub config_digest: String,
    /// The OCI image config (env, labels, cmds, the SBOM), byte for byte; stored like
    /// `manifest_json`.
    #[serde(default, skip_serializing_if = "JsonText::is_empty")]
    pub config_json: JsonText,
    /// Version 2: where the image documents lie, beside the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<DocumentsEntry>,
}

/// The image's OCI manifest and config, stored one after the other in volume 0 between the
/// header and the manifest (version 2). The manifest holds only their place and sha256, so
/// reading it stays quick when the config carries a large SBOM; a reader that needs the
/// documents reads and checks them, one that only extracts layers never does. The sha256 is in
/// the manifest, so the payload id and a signature cover the documents too.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DocumentsEntry {
    /// Offset relative to the header of volume 0.
    pub offset: u64,
    /// Length of the OCI image manifest, which comes first.
    pub manifest_len: u64,
    /// Length of the OCI image config, which follows it.
    pub config_len: u64,
    /// sha256 of both documents as stored, lowercase hex.
    pub sha256: String,
}

impl DocumentsEntry {
    pub fn total_len(&self) -> Option<u64> {
        self.manifest_len.checked_add(self.config_len)
    }
}

/// The sha256 [`DocumentsEntry::sha256`] names: of the OCI manifest and config as stored, one
/// after the other. Writer and reader both compute it here.
pub fn documents_sha256(oci_manifest: &[u8], config: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(oci_manifest);
    hash.update(config);
    hex::encode(hash.finalize())
}

/// A document carried as a JSON string inside the manifest (the image's OCI manifest and
/// config), decoded on first use.
///
/// An image config holds the image's SBOM: several megabytes for an image of real software.
/// Reading the manifest only finds where the string ends; commands that never look at the
/// config (`extract`, `verify`, `--help`) do not pay for decoding it. It reads as the decoded
/// text (`&str`) and is written back exactly as it was read.
#[derive(Clone, Default)]
pub struct JsonText {
    /// The JSON string literal as read, quotes and escapes included.
    raw: Option<Box<serde_json::value::RawValue>>,
    text: std::sync::OnceLock<String>,
}

impl JsonText {
    pub fn is_empty(&self) -> bool {
        self.text().is_empty()
    }

    /// True when it was read from a manifest (the key was there), whatever it holds.
    fn was_stored(&self) -> bool {
        self.raw.is_some()
    }

    fn text(&self) -> &str {
        self.text.get_or_init(|| match &self.raw {
            // The literal was checked to be a JSON string when it was read.
            Some(raw) => serde_json::from_str(raw.get()).unwrap_or_default(),
            None => String::new(),
        })
    }
}

impl From<String> for JsonText {
    fn from(text: String) -> Self {
        JsonText {
            raw: None,
            text: std::sync::OnceLock::from(text),
        }
    }
}

impl From<&str> for JsonText {
    fn from(text: &str) -> Self {
        JsonText::from(text.to_string())
    }
}

impl std::ops::Deref for JsonText {
    type Target = str;
    fn deref(&self) -> &str {
        self.text()
    }
}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.text(), f)
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl Eq for JsonText {}

impl serde::Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.raw {
            Some(raw) => raw.serialize(serializer),
            None => serializer.serialize_str(self.text()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        if !raw.get().starts_with('"') {
            return Err(serde::de::Error::custom("expected a JSON string"));
        }
        Ok(JsonText {
            raw: Some(raw),
            text: std::sync::OnceLock::new(),
        })
    }
}

/// One layer of the image and where its frames lie.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerEntry {
    /// OCI digest of the layer blob as the store holds it, `sha256:…`. For zstd layers the
    /// frames concatenated are that blob; xz layers are recompressed and do not hash to it.
    pub digest: String,
    /// sha256 of the uncompressed tar, `sha256:…`.
    pub diff_id: String,
    /// OCI media type of the layer blob as the store holds it.
    pub media_type: String,
    /// How the frames in this file are compressed.
    pub compression: Compression,
    pub compressed_len: u64,
    pub uncompressed_len: u64,
    pub frames: Vec<FrameEntry>,
}

/// One independently compressed frame.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameEntry {
    /// Index of the volume holding the frame (0 = the executable itself).
    pub volume: u32,
    /// Offset relative to that volume's header.
    pub offset: u64,
    pub compressed_len: u64,
    pub uncompressed_len: u64,
    /// sha256 of the compressed bytes, lowercase hex.
    pub sha256: String,
    /// BLAKE3 of the compressed bytes, lowercase hex: what readers check when it is there
    /// (every frame this packer writes; packages from before it lack it and are checked by
    /// sha256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

/// One file of a split payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeEntry {
    pub index: u32,
    /// Bytes from the volume's header to its end, footer included.
    pub len: u64,
    /// File name the packer gave the volume (a hint only; volumes are found by payload id).
    pub name: String,
}

impl RunManifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse and check the manifest's own consistency.
    pub fn from_bytes(bytes: &[u8]) -> Result<RunManifest, FormatError> {
        let manifest: RunManifest =
            serde_json::from_slice(bytes).map_err(|e| FormatError::Manifest(e.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(FormatError::Manifest(format!(
                "format is {:?}, expected {MANIFEST_FORMAT:?}",
                manifest.format
            )));
        }
        check_version(manifest.version)?;
        let image = &manifest.image;
        if manifest.version >= 2
            && (image.manifest_json.was_stored() || image.config_json.was_stored())
        {
            return Err(FormatError::Manifest(format!(
                "a version {} manifest carries image documents inside it",
                manifest.version
            )));
        }
        if (manifest.version >= 2) != manifest.image.documents.is_some() {
            return Err(FormatError::Manifest(format!(
                "a version {} manifest {} the image documents' place",
                manifest.version,
                if manifest.version >= 2 {
                    "lacks"
                } else {
                    "names"
                }
            )));
        }
        if manifest.volumes.is_empty() || manifest.volumes.len() > MAX_VOLUMES as usize {
            return Err(FormatError::Manifest(format!(
                "it lists {} volumes (1 to {MAX_VOLUMES} are possible)",
                manifest.volumes.len()
            )));
        }
        let count = manifest.volumes.len() as u32;
        for (i, v) in manifest.volumes.iter().enumerate() {
            if v.index != i as u32 {
                return Err(FormatError::Manifest(format!(
                    "volume {i} is listed with index {}",
                    v.index
                )));
            }
        }
        if let Some(documents) = &manifest.image.documents {
            let fits = documents
                .total_len()
                .filter(|len| *len <= MAX_DOCUMENTS_LEN)
                .and_then(|len| documents.offset.checked_add(len))
                .and_then(|end| end.checked_add(FOOTER_LEN))
                .is_some_and(|end| {
                    documents.offset >= HEADER_LEN && end <= manifest.volumes[0].len
                });
            if !fits {
                return Err(FormatError::Manifest(
                    "the image documents lie outside volume 0".into(),
                ));
            }
        }
        for (l, layer) in manifest.layers.iter().enumerate() {
            for (f, frame) in layer.frames.iter().enumerate() {
                let fits = manifest
                    .volumes
                    .get(frame.volume as usize)
                    .is_some_and(|v| {
                        frame
                            .offset
                            .checked_add(frame.compressed_len)
                            .and_then(|end| end.checked_add(FOOTER_LEN))
                            .is_some_and(|end| end <= v.len)
                    });
                if frame.volume >= count || !fits {
                    return Err(FormatError::Manifest(format!(
                        "frame {} of layer {} lies outside its volume",
                        f + 1,
                        l + 1
                    )));
                }
            }
            let sum = |len: fn(&FrameEntry) -> u64| {
                layer
                    .frames
                    .iter()
                    .try_fold(0u64, |total, frame| total.checked_add(len(frame)))
            };
            if sum(|f| f.compressed_len) != Some(layer.compressed_len)
                || sum(|f| f.uncompressed_len) != Some(layer.uncompressed_len)
            {
                return Err(FormatError::Manifest(format!(
                    "the lengths of layer {} do not add up to the lengths of its frames",
                    l + 1
                )));
            }
        }
        let total = manifest
            .volumes
            .iter()
            .try_fold(0u64, |total, v| total.checked_add(v.len));
        if total != Some(manifest.payload_len) {
            return Err(FormatError::Manifest(
                "the volume lengths do not add up to the payload length".into(),
            ));
        }
        Ok(manifest)
    }

    /// Uncompressed bytes of all layers.
    pub fn uncompressed_len(&self) -> u64 {
        self.layers.iter().map(|l| l.uncompressed_len).sum()
    }

    pub fn frame_count(&self) -> usize {
        self.layers.iter().map(|l| l.frames.len()).sum()
    }
}

/// sha256 of the manifest bytes, the payload id.
pub fn payload_id(manifest_bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(manifest_bytes).into()
}

/// Where the header of volume 0 sits for a stub (or ELF image) of `len` bytes.
pub fn header_offset_after(len: u64) -> u64 {
    align_up(len, ALIGN)
}

/// The size of the ELF image at the start of `bytes` (AppImage rule: the end of whatever lies
/// furthest among section headers, sections and segments), or `None` if it is not ELF64.
pub fn elf_size(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let phoff = u64_at(bytes, 32);
    let shoff = u64_at(bytes, 40);
    let phentsize = u16::from_le_bytes([bytes[54], bytes[55]]) as u64;
    let phnum = u16::from_le_bytes([bytes[56], bytes[57]]) as u64;
    let shentsize = u16::from_le_bytes([bytes[58], bytes[59]]) as u64;
    let shnum = u16::from_le_bytes([bytes[60], bytes[61]]) as u64;
    let mut end = shoff.saturating_add(shentsize.saturating_mul(shnum));
    end = end.max(phoff.saturating_add(phentsize.saturating_mul(phnum)));
    // Offsets come from the file: every sum is checked (a damaged header must not overflow).
    let entry = |table: u64, i: u64, size: u64, len: u64| {
        let at = table.checked_add(i.checked_mul(size)?)?;
        (at.checked_add(len)? <= bytes.len() as u64).then_some(at as usize)
    };
    for i in 0..phnum {
        let Some(at) = entry(phoff, i, phentsize, 56) else {
            break;
        };
        end = end.max(u64_at(bytes, at + 8).saturating_add(u64_at(bytes, at + 32)));
    }
    for i in 0..shnum {
        let Some(at) = entry(shoff, i, shentsize, 64) else {
            break;
        };
        let kind = u32_at(bytes, at + 4);
        const SHT_NOBITS: u32 = 8;
        if kind != SHT_NOBITS {
            end = end.max(u64_at(bytes, at + 24).saturating_add(u64_at(bytes, at + 32)));
        }
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            version: FORMAT_VERSION,
            payload_id: [7; 32],
            volume_index: 1,
            volume_count: 3,
            manifest_offset: HEADER_LEN,
            manifest_len: 1234,
            volume_len: 99 << 20,
            payload_len: 300 << 20,
        }
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = header();
        let mut bytes = h.encode();
        assert_eq!(bytes.len() as u64, HEADER_LEN);
        assert_eq!(Header::decode(&bytes).unwrap(), h);
        bytes[60] ^= 1;
        assert!(matches!(
            Header::decode(&bytes),
            Err(FormatError::BadChecksum { .. })
        ));
    }

    #[test]
    fn footer_round_trips_and_detects_damage() {
        let f = Footer {
            version: FORMAT_VERSION,
            volume_index: 0,
            volume_len: 5 << 30,
            manifest_offset: HEADER_LEN,
            manifest_len: 77,
            payload_id_prefix: [9; 16],
        };
        let mut bytes = f.encode();
        assert_eq!(Footer::decode(&bytes).unwrap(), f);
        bytes[20] ^= 1;
        assert!(Footer::decode(&bytes).is_err());
    }

    #[test]
    fn newer_version_is_named() {
        let mut h = header();
        h.version = 9;
        let err = Header::decode(&h.encode()).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    /// A version-1 manifest, which carries the image documents inside.
    fn manifest_with_config(config: &str) -> RunManifest {
        RunManifest {
            format: MANIFEST_FORMAT.to_string(),
            version: 1,
            image: ImageInfo {
                name: "app:1".into(),
                manifest_digest: "sha256:00".into(),
                manifest_json: "{}".into(),
                config_digest: "sha256:11".into(),
                config_json: config.into(),
                documents: None,
            },
            layers: Vec::new(),
            volumes: vec![VolumeEntry {
                index: 0,
                len: 1,
                name: "app.run".into(),
            }],
            payload_len: 1,
        }
    }

    #[test]
    fn documents_read_lazily_are_the_text_written_and_are_written_back_byte_for_byte() {
        let config = "{\"config\":{\"Env\":[\"A=\\\"q\\\" é\\n\"]}}\u{7f}\t";
        let written = manifest_with_config(config).to_bytes();
        let read = RunManifest::from_bytes(&written).unwrap();
        assert_eq!(&*read.image.config_json, config);
        assert_eq!(read.to_bytes(), written, "read and untouched");
        let _ = read.image.config_json.len();
        assert_eq!(read.to_bytes(), written, "read and decoded");
        // Escapes another writer chose are kept as they were, and decoded on use.
        let foreign = String::from_utf8(written)
            .unwrap()
            .replace(r#""config_json":"{"#, r#""config_json":"\u007b"#);
        let read = RunManifest::from_bytes(foreign.as_bytes()).unwrap();
        assert_eq!(&*read.image.config_json, config);
        assert_eq!(read.to_bytes(), foreign.as_bytes());
    }

    #[test]
    fn the_image_documents_are_named_from_version_2_on_and_must_lie_in_volume_0() {
        let mut m = manifest_with_config("{}");
        m.volumes[0].len = 1 << 20;
        m.payload_len = 1 << 20;
        let entry = DocumentsEntry {
            offset: HEADER_LEN,
            manifest_len: 2,
            config_len: 2,
            sha256: "00".into(),
        };
        let refused = |m: &RunManifest| RunManifest::from_bytes(&m.to_bytes()).unwrap_err();
        m.version = 2;
        assert!(
            refused(&m).to_string().contains("inside it"),
            "{}",
            refused(&m)
        );
        // Version 2 keeps them beside the manifest, never in it: not even an empty string.
        let inline = m.to_bytes();
        m.image.manifest_json = JsonText::default();
        m.image.config_json = JsonText::default();
        assert!(refused(&m).to_string().contains("lacks"), "{}", refused(&m));
        m.image.documents = Some(entry.clone());
        assert!(RunManifest::from_bytes(&m.to_bytes()).is_ok());
        let empty_config = String::from_utf8(m.to_bytes())
            .unwrap()
            .replace(r#""config_digest""#, r#""config_json":"","config_digest""#);
        assert!(RunManifest::from_bytes(empty_config.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("inside it"));
        assert!(RunManifest::from_bytes(&inline).is_err());
        m.version = 1;
        assert!(refused(&m).to_string().contains("names"), "{}", refused(&m));
        m.version = 2;
        for outside in [
            DocumentsEntry {
                offset: 0,
                ..entry.clone()
            },
            DocumentsEntry {
                offset: (1 << 20) - 66,
                ..entry.clone()
            },
            DocumentsEntry {
                config_len: u64::MAX,
                ..entry.clone()
            },
            DocumentsEntry {
                config_len: MAX_DOCUMENTS_LEN,
                ..entry.clone()
            },
        ] {
            m.image.documents = Some(outside);
            assert!(
                refused(&m).to_string().contains("outside volume 0"),
                "{}",
                refused(&m)
            );
        }
    }

    #[test]
    fn a_document_that_is_not_a_json_string_is_refused() {
        let written = String::from_utf8(manifest_with_config("{}").to_bytes()).unwrap();
        let object = written.replace(r#""config_json":"{}""#, r#""config_json":{}"#);
        assert_ne!(object, written);
        let err = RunManifest::from_bytes(object.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("JSON string"), "{err}");
    }

    #[test]
    fn elf_size_of_this_test_binary_is_within_the_file() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let size = elf_size(&exe).unwrap();
        assert!(size <= exe.len() as u64 && size > exe.len() as u64 / 2);
        assert_eq!(
            elf_size(b"not an elf file at all, just some text padding it out...."),
            None
        );
    }
}
