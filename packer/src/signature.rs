//! The signature record of a `.run` file: where a detached signature of the manifest is kept.
//!
//! A package is signed by signing its manifest bytes (which commit to every frame's sha256), so
//! the signature cannot live in the manifest, nor anywhere the manifest describes. It lives in
//! the unused tail of the header of volume 0, in two slots: a new signature is written into the
//! slot that does not hold the current one, then the old slot is cleared, so an interrupted
//! `sealer sign` leaves the previous state readable. Old readers never look at these bytes. This
//! module owns the slot encoding and the in-place rewrite; it knows nothing about keys or
//! cryptography: the text it stores is opaque to it (`sealer::trust` makes and checks it).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::format::HEADER_LEN;

/// Offsets of the two slots relative to the header of volume 0.
pub const SLOT_OFFSETS: [u64; 2] = [1024, 1024 + SLOT_LEN];
/// Bytes of one slot.
pub const SLOT_LEN: u64 = 1536;
/// Bytes before the signature text in a slot.
const SLOT_HEAD: usize = 32;
/// The longest signature text a slot holds.
pub const MAX_SIGNATURE_LEN: usize = SLOT_LEN as usize - SLOT_HEAD;
/// Magic at the start of a used slot.
pub const SLOT_MAGIC: [u8; 8] = *b"SEALSIG\0";

const _: () = assert!(SLOT_OFFSETS[1] + SLOT_LEN <= HEADER_LEN);

/// What the signature slots of a package hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureRecord {
    /// Both slots are empty (every package written before signing existed reads so).
    Unsigned,
    /// The newest intact slot: a minisign signature of the manifest bytes.
    Signed { text: String, generation: u64 },
    /// A slot is in use but none is intact: the record was damaged after it was written.
    Damaged,
}

/// Why a signature cannot be stored in a package.
#[derive(Debug, thiserror::Error)]
pub enum SignatureWriteError {
    #[error("the signature is {len} bytes; a package holds at most {MAX_SIGNATURE_LEN}")]
    TooLong { len: usize },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn checksum(head: &[u8], text: &[u8]) -> [u8; 8] {
    let mut hash = Sha256::new();
    hash.update(head);
    hash.update(text);
    let digest = hash.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Encode one slot: magic, generation, text length, checksum, text, zeros to [`SLOT_LEN`].
pub fn encode_slot(generation: u64, text: &str) -> Result<Vec<u8>, SignatureWriteError> {
    if text.len() > MAX_SIGNATURE_LEN {
        return Err(SignatureWriteError::TooLong { len: text.len() });
    }
    let mut b = Vec::with_capacity(SLOT_LEN as usize);
    b.extend_from_slice(&SLOT_MAGIC);
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&(text.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0u8; 4]);
    let sum = checksum(&b, text.as_bytes());
    b.extend_from_slice(&sum);
    b.extend_from_slice(text.as_bytes());
    b.resize(SLOT_LEN as usize, 0);
    Ok(b)
}

/// One slot's content.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Empty,
    Intact { generation: u64, text: String },
    Damaged,
}

fn decode_slot(b: &[u8]) -> Slot {
    if b.iter().all(|&x| x == 0) {
        return Slot::Empty;
    }
    if b.len() < SLOT_HEAD || b[..8] != SLOT_MAGIC {
        return Slot::Damaged;
    }
    let mut generation = [0u8; 8];
    generation.copy_from_slice(&b[8..16]);
    let len = u32::from_le_bytes([b[16], b[17], b[18], b[19]]) as usize;
    if len > MAX_SIGNATURE_LEN || SLOT_HEAD + len > b.len() {
        return Slot::Damaged;
    }
    let text = &b[SLOT_HEAD..SLOT_HEAD + len];
    if checksum(&b[..24], text) != b[24..32] {
        return Slot::Damaged;
    }
    match String::from_utf8(text.to_vec()) {
        Ok(text) => Slot::Intact {
            generation: u64::from_le_bytes(generation),
            text,
        },
        Err(_) => Slot::Damaged,
    }
}

fn decode_slots(region: &[u8]) -> [Slot; 2] {
    let len = SLOT_LEN as usize;
    let at = |i: usize| (SLOT_OFFSETS[i] - SLOT_OFFSETS[0]) as usize;
    let slot = |i: usize| {
        region
            .get(at(i)..at(i) + len)
            .map_or(Slot::Empty, decode_slot)
    };
    [slot(0), slot(1)]
}

/// The bytes of volume 0 that hold the slots, relative to its header: `(offset, length)`.
pub fn region() -> (u64, u64) {
    (
        SLOT_OFFSETS[0],
        SLOT_OFFSETS[1] + SLOT_LEN - SLOT_OFFSETS[0],
    )
}

/// Read the record from the bytes at [`region`].
pub fn decode_record(region: &[u8]) -> SignatureRecord {
    let slots = decode_slots(region);
    let newest = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Intact { generation, text } => Some((*generation, text)),
            _ => None,
        })
        .max_by_key(|(generation, _)| *generation);
    match newest {
        Some((generation, text)) => SignatureRecord::Signed {
            text: text.clone(),
            generation,
        },
        None if slots.contains(&Slot::Damaged) => SignatureRecord::Damaged,
        None => SignatureRecord::Unsigned,
    }
}

/// The slot a new signature goes into and its generation, given the slots now: never the slot
/// that holds the newest intact signature.
fn next_slot(slots: &[Slot; 2]) -> (usize, u64) {
    let generation = |s: &Slot| match s {
        Slot::Intact { generation, .. } => Some(*generation),
        _ => None,
    };
    match (generation(&slots[0]), generation(&slots[1])) {
        (Some(a), Some(b)) if a >= b => (1, a.saturating_add(1)),
        (Some(_), Some(b)) => (0, b.saturating_add(1)),
        (Some(a), None) => (1, a.saturating_add(1)),
        (None, Some(b)) => (0, b.saturating_add(1)),
        (None, None) => (0, 1),
    }
}

/// Store `text` as the signature of the package whose volume 0 is `path` with its header at
/// `header_offset`, in place: the free slot is written and synced, then the other slot is
/// cleared and synced. Only these bytes change, so split packages are signed the same way.
pub fn write_record(
    path: &Path,
    header_offset: u64,
    text: &str,
) -> Result<(), SignatureWriteError> {
    let io_err = |what| {
        move |source| SignatureWriteError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let (offset, len) = region();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("opening for writing"))?;
    let mut current = vec![0u8; len as usize];
    file.read_exact_at(&mut current, header_offset + offset)
        .map_err(io_err("reading the signature record of"))?;
    let (slot, generation) = next_slot(&decode_slots(&current));
    let bytes = encode_slot(generation, text)?;
    file.write_all_at(&bytes, header_offset + SLOT_OFFSETS[slot])
        .map_err(io_err("writing the signature record of"))?;
    file.sync_data()
        .map_err(io_err("writing the signature record of"))?;
    let other = SLOT_OFFSETS[1 - slot];
    file.write_all_at(&vec![0u8; SLOT_LEN as usize], header_offset + other)
        .map_err(io_err("clearing the old signature of"))?;
    file.sync_data()
        .map_err(io_err("clearing the old signature of"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region_with(slots: [Option<Vec<u8>>; 2]) -> Vec<u8> {
        let (_, len) = region();
        let mut r = vec![0u8; len as usize];
        for (i, s) in slots.into_iter().enumerate() {
            if let Some(s) = s {
                let at = (SLOT_OFFSETS[i] - SLOT_OFFSETS[0]) as usize;
                r[at..at + s.len()].copy_from_slice(&s);
            }
        }
        r
    }

    #[test]
    fn zeros_read_as_unsigned() {
        assert_eq!(
            decode_record(&region_with([None, None])),
            SignatureRecord::Unsigned
        );
    }

    #[test]
    fn the_newest_intact_slot_wins_and_a_torn_one_is_skipped() {
        let old = encode_slot(1, "old").unwrap();
        let mut new = encode_slot(2, "new").unwrap();
        assert_eq!(
            decode_record(&region_with([Some(old.clone()), Some(new.clone())])),
            SignatureRecord::Signed {
                text: "new".into(),
                generation: 2
            }
        );
        new[SLOT_HEAD] ^= 1;
        assert_eq!(
            decode_record(&region_with([Some(old), Some(new.clone())])),
            SignatureRecord::Signed {
                text: "old".into(),
                generation: 1
            }
        );
        assert_eq!(
            decode_record(&region_with([None, Some(new)])),
            SignatureRecord::Damaged
        );
    }

    #[test]
    fn a_new_signature_never_overwrites_the_current_one() {
        let intact = |generation| Slot::Intact {
            generation,
            text: String::new(),
        };
        assert_eq!(next_slot(&[Slot::Empty, Slot::Empty]), (0, 1));
        assert_eq!(next_slot(&[intact(1), Slot::Empty]), (1, 2));
        assert_eq!(next_slot(&[intact(1), intact(2)]), (0, 3));
        assert_eq!(next_slot(&[Slot::Damaged, intact(5)]), (0, 6));
    }

    #[test]
    fn a_signature_too_long_for_a_slot_is_refused() {
        let text = "x".repeat(MAX_SIGNATURE_LEN + 1);
        assert!(matches!(
            encode_slot(1, &text),
            Err(SignatureWriteError::TooLong { .. })
        ));
    }
}
