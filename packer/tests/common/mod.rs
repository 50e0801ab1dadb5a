//! Helpers shared by the packer integration tests: crafting tar layers, framing them, and
//! fingerprinting extracted trees so two extractions can be compared.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use packer::frames::{FramedLayer, FramedWriter};
use sha2::{Digest, Sha256};

/// A tar layer under construction, with raw-header control for malicious entries.
pub struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

fn raw_header(name: &[u8], kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().expect("gnu header");
        assert!(name.len() < gnu.name.len(), "test names stay short");
        gnu.name[..name.len()].copy_from_slice(name);
    }
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(1_600_000_000);
    header.set_uid(1000);
    header.set_gid(1000);
    header
}

impl LayerTar {
    pub fn new() -> Self {
        LayerTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        let mut h = raw_header(name.as_bytes(), tar::EntryType::Directory, mode, 0);
        h.set_cksum();
        self.builder.append(&h, &[][..]).unwrap();
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        let mut h = raw_header(
            name.as_bytes(),
            tar::EntryType::Regular,
            mode,
            data.len() as u64,
        );
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    pub fn file_with_mtime(&mut self, name: &str, mode: u32, mtime: u64, data: &[u8]) -> &mut Self {
        let mut h = raw_header(
            name.as_bytes(),
            tar::EntryType::Regular,
            mode,
            data.len() as u64,
        );
        h.set_mtime(mtime);
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = raw_header(name.as_bytes(), tar::EntryType::Symlink, 0o777, 0);
        h.as_gnu_mut().unwrap().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.builder.append(&h, &[][..]).unwrap();
        self
    }

    pub fn hard_link(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = raw_header(name.as_bytes(), tar::EntryType::Link, 0o644, 0);
        h.as_gnu_mut().unwrap().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.builder.append(&h, &[][..]).unwrap();
        self
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = raw_header(name.as_bytes(), tar::EntryType::Char, 0o600, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.builder.append(&h, &[][..]).unwrap();
        self
    }

    /// A file with a long name, written by the `tar` crate (GNU long-name extension).
    pub fn long_file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        self.builder.append_data(&mut h, name, data).unwrap();
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }
}

/// Compress a tar as framed zstd (as the image store keeps layers).
pub fn framed(tar: &[u8]) -> (Vec<u8>, FramedLayer) {
    let mut w = FramedWriter::with_threads(Vec::new(), 3, 2);
    w.write_all(tar).unwrap();
    w.finish().unwrap()
}

/// Deterministic bytes that compress moderately.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 4 == 0 {
                (x & 0xff) as u8
            } else {
                b'a' + (i % 11) as u8
            }
        })
        .collect()
}

/// Everything about a tree that extraction must preserve, keyed by relative path.
pub fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, String>,
    inodes: &mut BTreeMap<u64, String>,
) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let owner = format!("{}:{}", meta.uid(), meta.gid());
        let desc = if ft.is_symlink() {
            format!(
                "symlink -> {} {owner}",
                fs::read_link(&path).unwrap().display()
            )
        } else if ft.is_dir() {
            // Directory times are left out: implicit directories get the time of extraction,
            // and GNU tar lets later layers and its delayed symlinks touch them.
            format!("dir {:o} {owner}", meta.mode() & 0o7777)
        } else if ft.is_file() {
            let link = if meta.nlink() > 1 {
                let first = inodes.entry(meta.ino()).or_insert_with(|| rel.clone());
                format!(" linked-with={first}")
            } else {
                String::new()
            };
            let digest = hex::encode(Sha256::digest(fs::read(&path).unwrap()));
            format!(
                "file {:o} size={} mtime={} sha={} {owner}{link}",
                meta.mode() & 0o7777,
                meta.len(),
                meta.mtime(),
                &digest[..16]
            )
        } else {
            format!("special {:o} rdev={} {owner}", meta.mode(), meta.rdev())
        };
        out.insert(rel, desc);
        if ft.is_dir() {
            walk(root, &path, out, inodes);
        }
    }
}

/// Extract framed-zstd blobs one after the other with the zstd and GNU tar command-line tools.
pub fn gnu_tar_extract(blobs: &[&Path], dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    for blob in blobs {
        let status = Command::new("sh")
            .arg("-c")
            .arg("zstd -dc \"$1\" | tar --numeric-owner -xpf - -C \"$2\"")
            .arg("sh")
            .arg(blob)
            .arg(dest)
            .status()
            .unwrap();
        assert!(status.success(), "GNU tar failed on {}", blob.display());
    }
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Bytes that do not compress (each frame of them stays about as large as its input).
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
