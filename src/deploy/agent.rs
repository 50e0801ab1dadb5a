//! The host side of an install: what `sealer-stub agent …` (and `sealer agent …`) does on each
//! host when the engine asks.
//!
//! It keeps a per-cluster work directory (`<dataRoot>/<cluster>/.sealer`): `spool/` holds received
//! compressed frames by sha256 (each verified, written to a temporary name and renamed), `journal/`
//! holds one file per finished step, `exports/` the `KEY=VALUE` lines hooks wrote. `unpack` turns
//! spooled frames into the rootfs through the project's one extraction routine, into a staging
//! directory swapped into place; `receive --dest` does both at once, unpacking each frame as soon
//! as it is spooled, so the transfer and the unpack overlap. It trusts nothing it receives: every frame is hashed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use packer::frames::Frame;
use packer::source::ByteSource;
use packer::unpack::{unpack, Compression, LayerInput, UnpackOptions};
use sha2::{Digest, Sha256};

/// A layer as the engine describes it to the agent for `unpack`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlanLayer {
    pub label: String,
    pub compression: Compression,
    pub frames: Vec<PlanFrame>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlanFrame {
    pub sha256: String,
    pub compressed_len: u64,
    pub uncompressed_len: u64,
}

/// What `agent state` prints.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct HostState {
    /// Journal keys of finished steps.
    pub done: Vec<String>,
    /// Exported `KEY=VALUE` text by step key.
    pub exports: BTreeMap<String, String>,
}

fn io_context(what: impl Into<String>) -> impl FnOnce(io::Error) -> String {
    let what = what.into();
    move |e| format!("{what}: {e}")
}

/// Run one agent subcommand; `args` are the words after `agent`. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    match dispatch(args) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("sealer agent: {message}");
            1
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Result<&'a str, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .ok_or_else(|| format!("missing {name}"))
}

fn dispatch(args: &[String]) -> Result<(), String> {
    let sub = args.first().map(String::as_str).unwrap_or("");
    let rest = &args[args.len().min(1)..];
    match sub {
        "state" => state(Path::new(flag(rest, "--work")?)),
        "have" => have(Path::new(flag(rest, "--work")?)),
        "receive" => match flag(rest, "--dest") {
            Ok(dest) => receive_and_unpack(Path::new(flag(rest, "--work")?), Path::new(dest)),
            Err(_) => receive(Path::new(flag(rest, "--work")?)),
        },
        "unpack" => unpack_rootfs(
            Path::new(flag(rest, "--work")?),
            Path::new(flag(rest, "--dest")?),
        ),
        "done" => done(Path::new(flag(rest, "--work")?), flag(rest, "--key")?),
        "config" => write_config(
            Path::new(flag(rest, "--rootfs")?),
            flag(rest, "--path")?,
            flag(rest, "--strategy")?,
        ),
        "version" => {
            println!("sealer agent {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => Err(format!("unknown agent command {other:?}")),
    }
}

fn state(work: &Path) -> Result<(), String> {
    let mut out = HostState::default();
    if let Ok(entries) = fs::read_dir(work.join("journal")) {
        for e in entries.flatten() {
            out.done.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.done.sort();
    if let Ok(entries) = fs::read_dir(work.join("exports")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(key) = name.strip_suffix(".env") {
                if let Ok(text) = fs::read_to_string(e.path()) {
                    out.exports.insert(key.to_string(), text);
                }
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string(&out).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn spool(work: &Path) -> PathBuf {
    work.join("spool")
}

/// Reads sha256 hex lines on stdin; prints those not in the spool.
fn have(work: &Path) -> Result<(), String> {
    let dir = spool(work);
    let stdin = io::stdin();
    let mut out = io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.map_err(io_context("reading stdin"))?;
        let sha = line.trim();
        if sha.is_empty() {
            continue;
        }
        valid_sha(sha)?;
        if !dir.join(sha).is_file() {
            writeln!(out, "{sha}").map_err(io_context("writing stdout"))?;
        }
    }
    Ok(())
}

fn valid_sha(sha: &str) -> Result<(), String> {
    if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("{sha:?} is not a sha256"))
    }
}

/// Frame record on the wire: 8-byte little-endian length, 32-byte sha256, the bytes. Length 0 ends.
pub fn write_record(out: &mut dyn Write, sha256_hex: &str, bytes: &[u8]) -> io::Result<()> {
    write_record_header(out, sha256_hex, bytes.len() as u64)?;
    out.write_all(bytes)
}

/// The part of a frame record before the frame's bytes (see [`write_record`]).
pub fn write_record_header(out: &mut dyn Write, sha256_hex: &str, len: u64) -> io::Result<()> {
    out.write_all(&len.to_le_bytes())?;
    let sha =
        hex::decode(sha256_hex).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    out.write_all(&sha)
}

fn receive(work: &Path) -> Result<(), String> {
    let mut input = io::BufReader::with_capacity(1 << 20, io::stdin().lock());
    let count = receive_frames(work, &mut input, None)?;
    println!("{count}");
    Ok(())
}

/// `receive --dest DIR`: stdin carries the layer plan (8-byte little-endian length, then JSON)
/// and then frame records. Frames are spooled as they arrive, as in `receive`, while the rootfs
/// is unpacked from the spool in parallel, each frame as soon as it is there; the transfer and
/// the unpack overlap instead of running one after the other.
fn receive_and_unpack(work: &Path, dest: &Path) -> Result<(), String> {
    let mut input = io::BufReader::with_capacity(1 << 20, io::stdin().lock());
    let count = receive_and_unpack_from(work, dest, &mut input)?;
    println!("{count}");
    Ok(())
}

fn receive_and_unpack_from(work: &Path, dest: &Path, input: &mut dyn Read) -> Result<u64, String> {
    let mut len = [0u8; 8];
    input
        .read_exact(&mut len)
        .map_err(io_context("reading the layer plan length"))?;
    let len = u64::from_le_bytes(len);
    if len > 64 << 20 {
        return Err(format!(
            "a layer plan of {len} bytes is implausible; refusing it"
        ));
    }
    let mut text = vec![0u8; len as usize];
    input
        .read_exact(&mut text)
        .map_err(io_context("reading the layer plan"))?;
    let plan: Vec<PlanLayer> =
        serde_json::from_slice(&text).map_err(|e| format!("the layer plan is malformed: {e}"))?;
    let arrivals = Arrivals::default();
    let (spool, frames) = spool_for_plan(work, &plan, Some(&arrivals))?;
    let (received, unpacked) = std::thread::scope(|threads| {
        let unpacker = threads.spawn(|| unpack_plan(&plan, &frames, &spool, dest));
        let received = receive_frames(work, input, Some(&arrivals));
        arrivals.finish();
        let unpacked = unpacker
            .join()
            .unwrap_or_else(|_| Err("the unpacking thread failed".to_string()));
        (received, unpacked)
    });
    // A broken transfer explains a failed unpack; report it first.
    let count = received?;
    unpacked?;
    Ok(count)
}

/// Reads frame records until the end marker, storing each verified frame in the spool.
/// Returns how many frames were stored.
fn receive_frames(
    work: &Path,
    input: &mut dyn Read,
    arrivals: Option<&Arrivals>,
) -> Result<u64, String> {
    let dir = spool(work);
    fs::create_dir_all(&dir).map_err(io_context(format!("creating {}", dir.display())))?;
    let mut count = 0u64;
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 8];
        input
            .read_exact(&mut len)
            .map_err(io_context("reading a frame length (the stream was cut)"))?;
        let len = u64::from_le_bytes(len);
        if len == 0 {
            break;
        }
        if len > 1 << 30 {
            return Err(format!(
                "a frame of {len} bytes is larger than any frame sealer writes; refusing it"
            ));
        }
        let mut sha = [0u8; 32];
        input
            .read_exact(&mut sha)
            .map_err(io_context("reading a frame digest"))?;
        let sha = hex::encode(sha);
        buf.resize(len as usize, 0);
        input.read_exact(&mut buf).map_err(io_context(format!(
            "reading frame {sha} (the stream was cut)"
        )))?;
        let actual = hex::encode(Sha256::digest(&buf));
        if actual != sha {
            return Err(format!(
                "frame {sha} arrived corrupt (its bytes hash to {actual})"
            ));
        }
        let tmp = dir.join(format!(".{sha}.tmp"));
        fs::write(&tmp, &buf).map_err(io_context(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, dir.join(&sha)).map_err(io_context(format!("storing frame {sha}")))?;
        if let Some(arrivals) = arrivals {
            arrivals.arrived();
        }
        count += 1;
    }
    Ok(count)
}

/// Tells an unpack that reads the spool while frames are still arriving when a frame was stored
/// and when no more will come.
#[derive(Default)]
struct Arrivals {
    finished: Mutex<bool>,
    changed: Condvar,
}

impl Arrivals {
    fn arrived(&self) {
        let _guard = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    fn finish(&self) {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        *finished = true;
        self.changed.notify_all();
    }

    /// Waits until `path` exists; an error once receiving ended without it.
    fn wait_for(&self, path: &Path) -> io::Result<()> {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        while !path.is_file() {
            if *finished {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} was not received", path.display()),
                ));
            }
            finished = self
                .changed
                .wait(finished)
                .unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }
}

/// The spooled frames of all layers, laid end to end at synthetic offsets.
struct Spool<'a> {
    files: Vec<(u64, PathBuf)>,
    total: u64,
    /// Set while frames are still arriving: a read waits for its frame.
    arrivals: Option<&'a Arrivals>,
}

impl ByteSource for Spool<'_> {
    fn bytes(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        let i = self
            .files
            .partition_point(|(start, _)| *start <= offset)
            .saturating_sub(1);
        let (start, path) = self
            .files
            .get(i)
            .ok_or_else(|| io::Error::other("offset beyond the spool"))?;
        if let Some(arrivals) = self.arrivals {
            arrivals.wait_for(path)?;
        }
        let data = fs::read(path)?;
        let from = (offset - start) as usize;
        let to = from + len as usize;
        if to > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} is shorter than expected", path.display()),
            ));
        }
        Ok(Cow::Owned(data[from..to].to_vec()))
    }

    fn len(&self) -> u64 {
        self.total
    }
}

fn unpack_rootfs(work: &Path, dest: &Path) -> Result<(), String> {
    let mut text = String::new();
    io::stdin()
        .read_to_string(&mut text)
        .map_err(io_context("reading the layer plan"))?;
    let plan: Vec<PlanLayer> =
        serde_json::from_str(&text).map_err(|e| format!("the layer plan is malformed: {e}"))?;
    let (spool, frames) = spool_for_plan(work, &plan, None)?;
    unpack_plan(&plan, &frames, &spool, dest)
}

/// The spool laid out for `plan`, and each layer's frames at their offsets in it. Without
/// `arrivals` every frame must already be in the spool.
fn spool_for_plan<'a>(
    work: &Path,
    plan: &[PlanLayer],
    arrivals: Option<&'a Arrivals>,
) -> Result<(Spool<'a>, Vec<Vec<Frame>>), String> {
    let dir = spool(work);
    let mut spool = Spool {
        files: Vec::new(),
        total: 0,
        arrivals,
    };
    let mut frames: Vec<Vec<Frame>> = Vec::new();
    for layer in plan {
        let mut list = Vec::new();
        for f in &layer.frames {
            valid_sha(&f.sha256)?;
            let path = dir.join(&f.sha256);
            if arrivals.is_none() && !path.is_file() {
                return Err(format!(
                    "frame {} of {} has not been received",
                    f.sha256, layer.label
                ));
            }
            list.push(Frame {
                offset: spool.total,
                compressed_len: f.compressed_len,
                uncompressed_len: f.uncompressed_len,
                sha256: f.sha256.clone(),
            });
            spool.files.push((spool.total, path));
            spool.total += f.compressed_len;
        }
        frames.push(list);
    }
    Ok((spool, frames))
}

/// Unpack `plan`'s layers from `spool` into a tree swapped into `dest`.
fn unpack_plan(
    plan: &[PlanLayer],
    frames: &[Vec<Frame>],
    spool: &Spool<'_>,
    dest: &Path,
) -> Result<(), String> {
    let inputs: Vec<LayerInput<'_>> = plan
        .iter()
        .zip(frames)
        .map(|(layer, frames)| LayerInput {
            label: layer.label.clone(),
            compression: layer.compression,
            base: 0,
            frames,
            source: spool,
        })
        .collect();
    install_tree(dest, |staging| {
        unpack(
            &inputs,
            staging,
            &UnpackOptions {
                absolute_symlinks: true,
                ..UnpackOptions::default()
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
}

/// Build a new tree with `fill` beside `dest` and swap it into place; the old tree is removed.
pub fn install_tree(
    dest: &Path,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    let parent = dest
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", dest.display()))?;
    fs::create_dir_all(parent).map_err(io_context(format!("creating {}", parent.display())))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let incoming = parent.join(format!("{name}.incoming"));
    let old = parent.join(format!("{name}.old"));
    for leftover in [&incoming, &old] {
        if leftover.exists() {
            fs::remove_dir_all(leftover)
                .map_err(io_context(format!("removing {}", leftover.display())))?;
        }
    }
    fill(&incoming)?;
    if dest.exists() {
        fs::rename(dest, &old).map_err(io_context(format!(
            "moving the old {} aside",
            dest.display()
        )))?;
    }
    fs::rename(&incoming, dest).map_err(io_context(format!(
        "moving the new tree to {}",
        dest.display()
    )))?;
    if old.exists() {
        let _ = fs::remove_dir_all(&old);
    }
    Ok(())
}

fn done(work: &Path, key: &str) -> Result<(), String> {
    valid_sha(key)?;
    let dir = work.join("journal");
    fs::create_dir_all(&dir).map_err(io_context(format!("creating {}", dir.display())))?;
    let mut what = String::new();
    io::stdin()
        .read_to_string(&mut what)
        .map_err(io_context("reading stdin"))?;
    let tmp = dir.join(format!(".{key}.tmp"));
    fs::write(&tmp, what.as_bytes()).map_err(io_context(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, dir.join(key)).map_err(io_context("recording the step in the journal"))?;
    Ok(())
}

fn write_config(rootfs: &Path, rel: &str, strategy: &str) -> Result<(), String> {
    let rel = Path::new(rel);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "config path {} must be relative to the rootfs and stay inside it",
            rel.display()
        ));
    }
    let mut data = String::new();
    io::stdin()
        .read_to_string(&mut data)
        .map_err(io_context("reading the config data"))?;
    let target = rootfs.join(rel);
    let existing = fs::read_to_string(&target).ok();
    let content = match (strategy, existing) {
        ("merge", Some(existing)) => crate::clusterfile::merge_yaml_documents(&existing, &data)?,
        ("merge" | "overwrite", _) => data,
        (other, _) => return Err(format!("unknown config strategy {other:?}")),
    };
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_context(format!("creating {}", parent.display())))?;
    }
    let tmp = target.with_extension("sealer-tmp");
    fs::write(&tmp, content).map_err(io_context(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, &target).map_err(io_context(format!("writing {}", target.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-file tar cut in two independent zstd frames, as plan and wire stream.
    fn two_frame_stream() -> (Vec<PlanLayer>, Vec<Vec<u8>>) {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, body) in [
            ("etc/hello", b"hello\n".repeat(3000)),
            ("usr/bin/tool", vec![7u8; 40000]),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, &body[..]).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let mid = tar.len() / 2;
        let frames: Vec<Vec<u8>> = [&tar[..mid], &tar[mid..]]
            .iter()
            .map(|part| zstd::bulk::compress(part, 3).unwrap())
            .collect();
        let plan = vec![PlanLayer {
            label: "layer 1".into(),
            compression: Compression::Zstd,
            frames: frames
                .iter()
                .zip([mid, tar.len() - mid])
                .map(|(f, raw)| PlanFrame {
                    sha256: hex::encode(Sha256::digest(f)),
                    compressed_len: f.len() as u64,
                    uncompressed_len: raw as u64,
                })
                .collect(),
        }];
        (plan, frames)
    }

    fn wire(plan: &[PlanLayer], frames: &[Vec<u8>], end: bool) -> Vec<u8> {
        let json = serde_json::to_vec(plan).unwrap();
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&json);
        for (f, p) in frames.iter().zip(&plan[0].frames) {
            write_record(&mut out, &p.sha256, f).unwrap();
        }
        if end {
            out.extend_from_slice(&0u64.to_le_bytes());
        }
        out
    }

    #[test]
    fn receive_with_dest_unpacks_frames_as_they_arrive_and_keeps_them_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let (work, dest) = (dir.path().join("work"), dir.path().join("rootfs"));
        let (plan, frames) = two_frame_stream();
        let stream = wire(&plan, &frames, true);
        let count = receive_and_unpack_from(&work, &dest, &mut &stream[..]).unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            fs::read(dest.join("etc/hello")).unwrap(),
            b"hello\n".repeat(3000)
        );
        assert_eq!(
            fs::read(dest.join("usr/bin/tool")).unwrap(),
            vec![7u8; 40000]
        );
        for f in &plan[0].frames {
            assert!(spool(&work).join(&f.sha256).is_file());
        }
    }

    #[test]
    fn receive_with_dest_cut_mid_stream_fails_leaves_no_rootfs_and_keeps_what_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let (work, dest) = (dir.path().join("work"), dir.path().join("rootfs"));
        let (plan, frames) = two_frame_stream();
        let stream = wire(&plan, &frames[..1], false);
        let err = receive_and_unpack_from(&work, &dest, &mut &stream[..]).unwrap_err();
        assert!(err.contains("the stream was cut"), "{err}");
        assert!(!dest.exists());
        assert!(spool(&work).join(&plan[0].frames[0].sha256).is_file());
        assert!(!spool(&work).join(&plan[0].frames[1].sha256).exists());
    }
}
