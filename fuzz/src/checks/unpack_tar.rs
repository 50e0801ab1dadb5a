//! Fuzz check `unpack_tar`: a tar stream, raw or built from structured operations, cut into
//! independent zstd frames and extracted with [`packer::unpack`] into a fresh destination.
//!
//! Invariants: no panic; nothing outside the destination is created, changed or removed; and
//! no symlink left in the result resolves outside it. The destination's parent holds sentinels
//! (a directory with a file and a subdirectory, a file beside it, and one more file a level up);
//! that whole area is listed with modes, owners, link counts, times, link targets and content
//! hashes before and after, and the two listings must agree apart from the destination.
//!
//! Escapes are kept away from the real system: every absolute path the generator writes (entry
//! names, link targets) points into the sentinel area, relative names climb at most two levels
//! (from the staging directory that is the area itself), and raw inputs with an absolute name or
//! link, or one that climbs further, are skipped. An escape then shows up as a changed sentinel.
//!
//! The first input byte picks the mode: even = raw tar, odd = structured ([`Plan`], decoded
//! with `arbitrary`). Shared by the fuzz target and the stable replay
//! (`packer/tests/fuzz_corpus.rs`), which include this file by path.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::{Arbitrary, Unstructured};
use packer::frames::Frame;
use packer::{unpack, ByteSource, Compression, LayerInput, UnpackOptions};
use sha2::{Digest, Sha256};

/// Layers, operations per layer and frames per layer at most, so one input stays fast.
const MAX_LAYERS: usize = 4;
const MAX_OPS: usize = 24;
const MAX_FRAMES: usize = 6;
/// A file just above the extractor's writer-pool limit (4 MiB), to reach the streamed path.
const BIG_FILE: usize = (4 << 20) + 1;

/// Run one input. Panics (with the evidence) when an invariant does not hold.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let area = Area::new();
    let (layers, options_bits) = if mode & 1 == 0 {
        if !raw_is_contained(rest) {
            return;
        }
        (vec![LayerBytes::whole(rest.to_vec(), mode >> 1)], mode >> 4)
    } else {
        let Ok(plan) = Plan::arbitrary(&mut Unstructured::new(rest)) else {
            return;
        };
        (plan.build(&area), mode >> 1)
    };
    run(&area, &layers, options_bits);
}

fn run(area: &Area, layers: &[LayerBytes], bits: u8) {
    let absolute_symlinks = bits & 1 == 0;
    if bits & 2 != 0 {
        fs::create_dir(&area.dest).expect("creating the empty destination");
    }
    let options = UnpackOptions {
        ownership: is_root(),
        // Device nodes are refused: the fuzzer must not create real device files.
        devices: false,
        absolute_symlinks,
        writers: 2,
        progress: None,
    };
    let before = snapshot(&area.grand, &area.dest);
    let inputs: Vec<LayerInput<'_>> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| LayerInput {
            label: format!("layer {}", i + 1),
            compression: Compression::Zstd,
            base: 0,
            frames: &l.frames,
            source: &l.blob as &dyn ByteSource,
        })
        .collect();
    let result = unpack(&inputs, &area.dest, &options);
    let after = snapshot(&area.grand, &area.dest);
    if before != after {
        panic!(
            "unpack changed the filesystem outside its destination (result: {result:?}):\n{}",
            diff(&before, &after)
        );
    }
    if result.is_ok() {
        let meta = fs::symlink_metadata(&area.dest).expect("the destination after success");
        assert!(
            meta.is_dir(),
            "the destination is not a directory after success"
        );
        let mut escaping = Vec::new();
        symlinks_leading_out(&area.dest, &area.dest, absolute_symlinks, &mut escaping);
        assert!(
            escaping.is_empty(),
            "unpack succeeded but left symlinks that lead outside the destination: {escaping:?}"
        );
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------------------------
// The sentinel area.

/// `grand/outside.txt`, `grand/parent/{sentinel/{keep,sub/deep},sentinel.txt}`, and the
/// destination `grand/parent/dest` (absent, or an empty directory).
struct Area {
    grand: PathBuf,
    dest: PathBuf,
    /// Absolute paths links may point at (all inside `grand`).
    targets: Vec<PathBuf>,
}

impl Area {
    fn new() -> Area {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let grand = super::scratch::base_dir().join(format!("unpack-{}-{n}", std::process::id()));
        if grand.exists() {
            force_remove(&grand);
        }
        let parent = grand.join("parent");
        let sentinel = parent.join("sentinel");
        fs::create_dir_all(sentinel.join("sub")).expect("creating the sentinel area");
        fs::write(grand.join("outside.txt"), b"outside\n").expect("writing a sentinel");
        fs::write(sentinel.join("keep"), b"keep\n").expect("writing a sentinel");
        fs::write(sentinel.join("sub/deep"), b"deep\n").expect("writing a sentinel");
        fs::write(parent.join("sentinel.txt"), b"sentinel\n").expect("writing a sentinel");
        fs::set_permissions(sentinel.join("keep"), fs::Permissions::from_mode(0o640))
            .expect("setting a sentinel's mode");
        let targets = vec![
            sentinel.clone(),
            sentinel.join("keep"),
            sentinel.join("sub"),
            sentinel.join("sub/deep"),
            parent.join("sentinel.txt"),
            parent.clone(),
            grand.clone(),
            grand.join("outside.txt"),
            parent.join("dest"),
        ];
        Area {
            dest: parent.join("dest"),
            grand,
            targets,
        }
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        force_remove(&self.grand);
    }
}

/// Remove a tree even when extraction left directories without write or search permission.
fn force_remove(path: &Path) {
    if fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    fn open_up(dir: &Path) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&entry.path());
                }
            }
        }
    }
    open_up(path);
    let _ = fs::remove_dir_all(path);
}

/// Everything about the area except the destination and atimes, keyed by path.
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let parent = skip.parent().map(Path::to_path_buf);
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path == skip {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            out.insert(path, "missing".into());
            continue;
        };
        let ft = meta.file_type();
        // The destination's parent gains the destination and loses the staging directory:
        // its own mtime and link count change legitimately; its entries are compared one by one.
        let (mtime, nlink) = if Some(&path) == parent.as_ref() {
            (0, 0)
        } else {
            (
                meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                meta.nlink(),
            )
        };
        let common = format!(
            "mode={:o} owner={}:{} nlink={nlink} mtime={mtime}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
        );
        let desc = if ft.is_symlink() {
            let target = fs::read_link(&path).unwrap_or_default();
            format!("symlink -> {} {common}", target.display())
        } else if ft.is_file() {
            let digest = fs::read(&path)
                .map(|b| hex::encode(Sha256::digest(b)))
                .unwrap_or_else(|e| format!("unreadable ({e})"));
            format!("file size={} sha256={digest} {common}", meta.len())
        } else if ft.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
            format!("dir {common}")
        } else {
            format!("special rdev={} {common}", meta.rdev())
        };
        out.insert(path, desc);
    }
    out
}

fn diff(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> String {
    let mut lines = Vec::new();
    for (path, was) in before {
        match after.get(path) {
            None => lines.push(format!("  removed {}: {was}", path.display())),
            Some(now) if now != was => {
                lines.push(format!("  changed {}: {was} => {now}", path.display()))
            }
            _ => {}
        }
    }
    for (path, now) in after {
        if !before.contains_key(path) {
            lines.push(format!("  created {}: {now}", path.display()));
        }
    }
    lines.join("\n")
}

/// Symlinks under `dir` whose physical resolution (absolute targets rooted at `root` when
/// allowed; a loop counts as contained) climbs above `root`.
fn symlinks_leading_out(root: &Path, dir: &Path, absolute: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            symlinks_leading_out(root, &path, absolute, out);
        } else if ft.is_symlink() {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            if !resolves_inside(root, &rel, absolute) {
                out.push(rel);
            }
        }
    }
}

fn resolves_inside(root: &Path, link: &Path, absolute: bool) -> bool {
    let mut stack: Vec<OsString> = link
        .parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default();
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let mut next = fs::read_link(root.join(link)).ok();
    let mut hops = 0;
    loop {
        if let Some(target) = next.take() {
            if target.has_root() {
                if !absolute {
                    return false;
                }
                stack.clear();
            }
            let mut parts: VecDeque<OsString> = target.iter().map(|c| c.to_os_string()).collect();
            parts.extend(pending.drain(..));
            pending = parts;
        }
        let Some(part) = pending.pop_front() else {
            return true;
        };
        match part.as_bytes() {
            b"/" | b"." | b"" => {}
            b".." => {
                if stack.pop().is_none() {
                    return false;
                }
            }
            _ => {
                stack.push(part);
                let here: PathBuf = stack.iter().collect();
                let full = root.join(&here);
                if fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink()) {
                    hops += 1;
                    if hops > 40 {
                        return true;
                    }
                    stack.pop();
                    next = fs::read_link(&full).ok();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw mode.

/// The number of `..` components of a tar name or link target.
fn climbs(name: &[u8]) -> usize {
    name.split(|&b| b == b'/').filter(|c| *c == b"..").count()
}

/// False when an entry name or link target of `tar` (as the `tar` crate reads it, like the
/// extractor) is absolute or climbs more than two levels: such an input could reach beyond the
/// sentinel area if the extractor failed, so it is not run.
fn raw_is_contained(tar: &[u8]) -> bool {
    let mut archive = tar::Archive::new(tar);
    let Ok(entries) = archive.entries() else {
        return true;
    };
    for entry in entries {
        let Ok(entry) = entry else { break };
        let path = entry.path_bytes();
        if path.starts_with(b"/") || climbs(&path) > 2 {
            return false;
        }
        if let Some(link) = entry.link_name_bytes() {
            if link.starts_with(b"/") || climbs(&link) > 2 {
                return false;
            }
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Framing.

/// One layer: its framed blob and frame index.
struct LayerBytes {
    blob: Vec<u8>,
    frames: Vec<Frame>,
}

impl LayerBytes {
    /// `tar` cut into frames: `cuts` picks the cut points (in 512-byte blocks, or raw bytes).
    fn framed(tar: &[u8], cuts: &[u16]) -> LayerBytes {
        let mut points: Vec<usize> = cuts
            .iter()
            .take(MAX_FRAMES - 1)
            .map(|&c| {
                if c & 1 == 0 {
                    (c as usize >> 1) * 512
                } else {
                    c as usize >> 1
                }
            })
            .filter(|&p| p > 0 && p < tar.len())
            .collect();
        points.sort_unstable();
        points.dedup();
        let mut blob = Vec::new();
        let mut frames = Vec::new();
        let mut start = 0;
        for end in points.into_iter().chain(std::iter::once(tar.len())) {
            let chunk = &tar[start..end];
            if chunk.is_empty() {
                continue;
            }
            let compressed = zstd::bulk::compress(chunk, 1).expect("zstd compression");
            frames.push(Frame {
                offset: blob.len() as u64,
                compressed_len: compressed.len() as u64,
                uncompressed_len: chunk.len() as u64,
                sha256: hex::encode(Sha256::digest(&compressed)),
                blake3: Some(packer::frames::blake3_hex(&compressed)),
            });
            blob.extend_from_slice(&compressed);
            start = end;
        }
        LayerBytes { blob, frames }
    }

    fn whole(tar: Vec<u8>, cut_bits: u8) -> LayerBytes {
        let cut = (cut_bits & 7) as u16;
        LayerBytes::framed(&tar, &[cut * 2 * 3])
    }
}

// ---------------------------------------------------------------------------------------------
// Structured mode.

/// Layers of tar operations, as `arbitrary` decodes them from the input.
#[derive(Debug, Arbitrary)]
pub struct Plan {
    layers: Vec<LayerPlan>,
}

#[derive(Debug, Arbitrary)]
struct LayerPlan {
    ops: Vec<Op>,
    /// Frame cut points (see [`LayerBytes::framed`]).
    cuts: Vec<u16>,
    /// Drop the end-of-archive blocks.
    unterminated: bool,
}

#[derive(Debug, Arbitrary)]
enum Op {
    File {
        path: Name,
        mode: u16,
        content: Content,
    },
    Dir {
        path: Name,
        mode: u16,
    },
    Symlink {
        path: Name,
        target: Target,
    },
    HardLink {
        path: Name,
        target: Name,
    },
    Whiteout {
        dir: Name,
        of: Part,
    },
    Opaque {
        dir: Name,
    },
    Fifo {
        path: Name,
    },
    Device {
        path: Name,
    },
    /// The attack of issue 15 item 1: `dir/file`, then `dir` replaced by a symlink.
    FileThenParentSymlink {
        dir: Name,
        file: Part,
        target: Target,
    },
    /// A directory, a file in it, then the directory replaced by a file or a hard link.
    DirThenReplaced {
        dir: Name,
        file: Part,
        with_link: bool,
        target: Name,
    },
}

#[derive(Debug, Arbitrary)]
enum Content {
    Empty,
    Small(u8),
    Text(Vec<u8>),
    Big,
}

#[derive(Debug, Arbitrary)]
struct Name {
    lead: Lead,
    parts: Vec<Part>,
    trailing_slash: bool,
}

#[derive(Debug, Arbitrary)]
enum Lead {
    None,
    Dot,
    /// An absolute name inside the sentinel area (the extractor must refuse it).
    Area(u8),
}

#[derive(Debug, Arbitrary)]
enum Part {
    Name(u8),
    Dot,
    DotDot,
    Empty,
    Whiteout(u8),
    Long(u8),
}

#[derive(Debug, Arbitrary)]
enum Target {
    Relative(Name),
    /// An absolute path inside the sentinel area, with more parts after it.
    Area(u8, Vec<Part>),
    Empty,
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "d",
    "evil",
    "sentinel",
    "dest",
    "parent",
    "keep",
    "sub",
    ".wh..opq",
    "...",
    "x y",
    "\u{e9}t\u{e9}",
    "dest.partial",
];

struct NameBuilder<'a> {
    area: &'a Area,
    /// `..` components still allowed in this name.
    climbs_left: usize,
}

impl NameBuilder<'_> {
    fn part(&mut self, part: &Part, out: &mut Vec<u8>) {
        match part {
            Part::Name(i) => out.extend_from_slice(NAMES[*i as usize % NAMES.len()].as_bytes()),
            Part::Dot => out.push(b'.'),
            Part::DotDot if self.climbs_left > 0 => {
                self.climbs_left -= 1;
                out.extend_from_slice(b"..");
            }
            Part::DotDot => out.push(b'c'),
            Part::Empty => {}
            Part::Whiteout(i) => {
                out.extend_from_slice(b".wh.");
                out.extend_from_slice(NAMES[*i as usize % NAMES.len()].as_bytes());
            }
            Part::Long(n) => out.extend(std::iter::repeat_n(b'l', 90 + *n as usize)),
        }
    }

    fn parts(&mut self, parts: &[Part], out: &mut Vec<u8>) {
        for (i, part) in parts.iter().take(6).enumerate() {
            if i > 0 || (!out.is_empty() && !out.ends_with(b"/")) {
                out.push(b'/');
            }
            self.part(part, out);
        }
    }

    fn area_path(&self, pick: u8) -> Vec<u8> {
        let t = &self.area.targets[pick as usize % self.area.targets.len()];
        t.as_os_str().as_bytes().to_vec()
    }

    fn name(&mut self, name: &Name) -> Vec<u8> {
        let mut out = match name.lead {
            Lead::None => Vec::new(),
            Lead::Dot => b"./".to_vec(),
            Lead::Area(pick) => {
                let mut p = self.area_path(pick);
                p.push(b'/');
                p
            }
        };
        self.parts(&name.parts, &mut out);
        if out.is_empty() || out == b"./" {
            out.extend_from_slice(b"a");
        }
        if name.trailing_slash {
            out.push(b'/');
        }
        out
    }

    fn target(&mut self, target: &Target) -> Vec<u8> {
        match target {
            Target::Relative(name) => {
                let mut out = Vec::new();
                self.parts(&name.parts, &mut out);
                if name.trailing_slash {
                    out.push(b'/');
                }
                out
            }
            Target::Area(pick, parts) => {
                let mut out = self.area_path(*pick);
                self.parts(parts, &mut out);
                out
            }
            Target::Empty => Vec::new(),
        }
    }
}

impl Plan {
    fn build(&self, area: &Area) -> Vec<LayerBytes> {
        self.layers
            .iter()
            .take(MAX_LAYERS)
            .map(|layer| {
                let mut tar = Vec::new();
                for op in layer.ops.iter().take(MAX_OPS) {
                    op.emit(area, &mut tar);
                }
                if !layer.unterminated {
                    tar.extend_from_slice(&[0u8; 1024]);
                }
                LayerBytes::framed(&tar, &layer.cuts)
            })
            .collect()
    }
}

impl Op {
    fn emit(&self, area: &Area, tar: &mut Vec<u8>) {
        // Two climbs at most per name: from the staging directory that is the sentinel area.
        let nb = || NameBuilder {
            area,
            climbs_left: 2,
        };
        let mode = |m: &u16| u32::from(*m) & 0o7777;
        match self {
            Op::File {
                path,
                mode: m,
                content,
            } => {
                let data = match content {
                    Content::Empty => Vec::new(),
                    Content::Small(n) => vec![b'x'; *n as usize],
                    Content::Text(t) => t.iter().take(256).copied().collect(),
                    Content::Big => vec![b'B'; BIG_FILE],
                };
                entry(tar, &nb().name(path), b'0', mode(m), b"", &data);
            }
            Op::Dir { path, mode: m } => entry(tar, &nb().name(path), b'5', mode(m), b"", b""),
            Op::Symlink { path, target } => {
                let name = nb().name(path);
                entry(tar, &name, b'2', 0o777, &nb().target(target), b"");
            }
            Op::HardLink { path, target } => {
                let name = nb().name(path);
                entry(tar, &name, b'1', 0o644, &nb().name(target), b"");
            }
            Op::Whiteout { dir, of } => {
                let mut name = nb().name(dir);
                if !name.ends_with(b"/") {
                    name.push(b'/');
                }
                name.extend_from_slice(b".wh.");
                nb().part(of, &mut name);
                entry(tar, &name, b'0', 0o644, b"", b"");
            }
            Op::Opaque { dir } => {
                let mut name = nb().name(dir);
                if !name.ends_with(b"/") {
                    name.push(b'/');
                }
                name.extend_from_slice(b".wh..wh..opq");
                entry(tar, &name, b'0', 0o644, b"", b"");
            }
            Op::Fifo { path } => entry(tar, &nb().name(path), b'6', 0o644, b"", b""),
            Op::Device { path } => entry(tar, &nb().name(path), b'3', 0o644, b"", b""),
            Op::FileThenParentSymlink { dir, file, target } => {
                let d = nb().name(dir);
                let d = d.strip_suffix(b"/").unwrap_or(&d).to_vec();
                let mut f = d.clone();
                f.push(b'/');
                nb().part(file, &mut f);
                entry(tar, &f, b'0', 0o644, b"", b"* * * * * root evil\n");
                entry(tar, &d, b'2', 0o777, &nb().target(target), b"");
            }
            Op::DirThenReplaced {
                dir,
                file,
                with_link,
                target,
            } => {
                let d = nb().name(dir);
                let d = d.strip_suffix(b"/").unwrap_or(&d).to_vec();
                entry(tar, &d, b'5', 0o755, b"", b"");
                let mut f = d.clone();
                f.push(b'/');
                nb().part(file, &mut f);
                entry(tar, &f, b'0', 0o644, b"", b"inner\n");
                if *with_link {
                    entry(tar, &d, b'1', 0o644, &nb().name(target), b"");
                } else {
                    entry(tar, &d, b'0', 0o644, b"", b"replaced\n");
                }
            }
        }
    }
}

/// Append one tar entry with raw control over the name and link (GNU long-name records when
/// they do not fit), so names with `..`, leading `/` and odd bytes reach the extractor as is.
fn entry(tar: &mut Vec<u8>, name: &[u8], kind: u8, mode: u32, link: &[u8], data: &[u8]) {
    if link.len() >= 100 {
        long_record(tar, b'K', link);
    }
    if name.len() >= 100 {
        long_record(tar, b'L', name);
    }
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().expect("a GNU header");
        let n = name.len().min(99);
        gnu.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(99);
        gnu.linkname[..l].copy_from_slice(&link[..l]);
    }
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_mtime(1_600_000_000);
    header.set_uid(1000);
    header.set_gid(1000);
    if kind == b'3' {
        let _ = header.set_device_major(1);
        let _ = header.set_device_minor(3);
    }
    header.set_cksum();
    tar.extend_from_slice(header.as_bytes());
    tar.extend_from_slice(data);
    pad(tar);
}

fn long_record(tar: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().expect("a GNU header");
        gnu.name[..13].copy_from_slice(b"././@LongLink");
    }
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_mode(0o644);
    header.set_size(value.len() as u64 + 1);
    header.set_cksum();
    tar.extend_from_slice(header.as_bytes());
    tar.extend_from_slice(value);
    tar.push(0);
    pad(tar);
}

fn pad(tar: &mut Vec<u8>) {
    let rem = tar.len() % 512;
    if rem != 0 {
        tar.resize(tar.len() + 512 - rem, 0);
    }
}

/// A raw-mode input (mode byte 0, then a tar) of `(name, type, link, data)` entries: how the
/// corpus seeds are written, since the structured encoding depends on `arbitrary`'s version.
pub fn raw_input(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, kind, link, data) in entries {
        entry(
            &mut tar,
            name.as_bytes(),
            *kind,
            0o644,
            link.as_bytes(),
            data,
        );
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut input = vec![0u8];
    input.extend_from_slice(&tar);
    input
}
