//! The host side of an install: what `sealer-stub agent …` (and `sealer agent …`) does on each
//! host when the engine asks.
//!
//! It keeps a per-cluster work directory (`<dataRoot>/<cluster>/.sealer`): `spool/` holds received
//! compressed frames by sha256 (each verified, written to a temporary name and renamed), `journal/`
//! holds one file per finished step, `exports/` the `KEY=VALUE` lines hooks wrote. `unpack` turns
//! spooled frames into the rootfs through the project's one extraction routine, into a staging
//! directory swapped into place; `receive --dest` does both at once, unpacking each frame as soon
//! as it is spooled, so the transfer and the unpack overlap. It trusts nothing it receives: every frame is hashed.
//! `run` runs one hook or CMD: the script and its env arrive on stdin (never in a command line,
//! where `/proc/PID/cmdline` shows them to every user), the script runs in a process group of its
//! own that is killed when it outlives its timeout or the session that started it, and only a
//! bounded head and tail of its output is kept.
//!
//! Every read of stdin gives up after [`DEFAULT_STALL`] without a byte (`--stall-timeout SECS`
//! changes it): an installer whose link vanished leaves no agent waiting on the host.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use packer::frames::Frame;
use packer::source::ByteSource;
use packer::unpack::{unpack, Compression, LayerInput, UnpackOptions};
use sha2::{Digest, Sha256};

use crate::ssh::KeptOutput;

/// Exit status of an agent command that failed because the host's disk is full (ENOSPC or
/// EDQUOT): trying again cannot help until someone frees space.
pub const EXIT_DISK_FULL: i32 = 28;
/// Exit status of `run` when the script outlived its timeout (as coreutils `timeout`).
pub const EXIT_TIMED_OUT: i32 = 124;
/// How long a read of stdin waits for a byte before the agent concludes the installer is gone.
pub const DEFAULT_STALL: Duration = Duration::from_secs(90);
/// Bytes of a hook's stdout and of its stderr kept from the start, and from the end.
const HOOK_OUTPUT_HEAD: usize = 64 << 10;
const HOOK_OUTPUT_TAIL: usize = 64 << 10;

/// What `run` reads on stdin (JSON): one hook or CMD.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HookRequest {
    pub script: String,
    /// Variables set for the script, in order (a later one replaces an earlier of the same name).
    pub env: Vec<(String, String)>,
    /// Working directory (the rootfs).
    pub dir: String,
    /// The `$SEALER_EXPORT` file, created empty and private (0600, in a 0700 directory).
    pub export_file: String,
    pub timeout_secs: u64,
}

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
    if let Some(secs) = args
        .iter()
        .position(|a| a == "--stall-timeout")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<u64>().ok())
    {
        STALL_SECS.store(secs.max(1), std::sync::atomic::Ordering::Relaxed);
    }
    if args.first().map(String::as_str) == Some("run") {
        return match run_hook(&args[1..]) {
            Ok(status) => status,
            Err(message) => {
                eprintln!("sealer agent: {message}");
                exit_status_for(&message)
            }
        };
    }
    match dispatch(args) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("sealer agent: {message}");
            exit_status_for(&message)
        }
    }
}

/// [`EXIT_DISK_FULL`] for a failure caused by a full disk (every io error's text ends in its
/// `(os error N)`), else 1.
fn exit_status_for(message: &str) -> i32 {
    let full = [libc::ENOSPC, libc::EDQUOT]
        .iter()
        .any(|code| message.contains(&format!("(os error {code})")));
    if full {
        EXIT_DISK_FULL
    } else {
        1
    }
}

static STALL_SECS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_STALL.as_secs());

/// Stdin that fails with `TimedOut` when no byte arrives for the stall timeout: an installer
/// whose link was lost never closes the connection, and the agent must not wait for it forever.
struct Input {
    stall: Duration,
}

impl Input {
    fn stdin() -> Self {
        Input {
            stall: Duration::from_secs(STALL_SECS.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stdin = io::stdin();
        let fd = stdin.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = self.stall.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: one valid pollfd, bounded wait.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no input for {}s; the installer is gone (link lost or killed)",
                        self.stall.as_secs()
                    ),
                ));
            }
            break;
        }
        // SAFETY: reads at most buf.len() bytes into buf from our own stdin.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
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

/// Reads sha256 hex lines on stdin; prints those not in the spool. A spooled frame whose bytes
/// no longer hash to its name (a damaged disk, a file cut short) counts as missing and is removed,
/// so the engine sends it again.
fn have(work: &Path) -> Result<(), String> {
    let dir = spool(work);
    let mut out = io::stdout().lock();
    for line in io::BufReader::new(Input::stdin()).lines() {
        let line = line.map_err(io_context("reading stdin"))?;
        let sha = line.trim();
        if sha.is_empty() {
            continue;
        }
        valid_sha(sha)?;
        let path = dir.join(sha);
        if !spooled_intact(&path, sha) {
            if path.exists() {
                let _ = fs::remove_file(&path);
            }
            writeln!(out, "{sha}").map_err(io_context("writing stdout"))?;
        }
    }
    Ok(())
}

/// True when `path` is a regular file whose sha256 is `sha`.
fn spooled_intact(path: &Path, sha: &str) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return false,
        }
    }
    hex::encode(hasher.finalize()) == sha
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
    let mut input = io::BufReader::with_capacity(1 << 20, Input::stdin());
    let count = receive_frames(work, &mut input, None)?;
    println!("{count}");
    Ok(())
}

/// `receive --dest DIR`: stdin carries the layer plan (8-byte little-endian length, then JSON)
/// and then frame records. Frames are spooled as they arrive, as in `receive`, while the rootfs
/// is unpacked from the spool in parallel, each frame as soon as it is there; the transfer and
/// the unpack overlap instead of running one after the other.
fn receive_and_unpack(work: &Path, dest: &Path) -> Result<(), String> {
    let mut input = io::BufReader::with_capacity(1 << 20, Input::stdin());
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
    Input::stdin()
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
    Input::stdin()
        .read_to_string(&mut what)
        .map_err(io_context("reading stdin"))?;
    let tmp = dir.join(format!(".{key}.tmp"));
    fs::write(&tmp, what.as_bytes()).map_err(io_context(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, dir.join(key)).map_err(io_context("recording the step in the journal"))?;
    Ok(())
}

fn write_config(rootfs: &Path, rel: &str, strategy: &str) -> Result<(), String> {
    let target = path_in_root(rootfs, Path::new(rel))?;
    let mut data = String::new();
    Input::stdin()
        .read_to_string(&mut data)
        .map_err(io_context("reading the config data"))?;
    let existing = fs::read_to_string(&target).ok();
    let content = match (strategy, existing) {
        ("merge", Some(existing)) => crate::clusterfile::merge_yaml_documents(&existing, &data)?,
        ("merge" | "overwrite", _) => data,
        (other, _) => return Err(format!("unknown config strategy {other:?}")),
    };
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io_context(format!("creating {}", parent.display())))?;
    }
    let mut tmp_name = target.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".sealer-tmp");
    let tmp = target.with_file_name(tmp_name);
    // The image may hold a symlink by that name too: never write through one.
    let removed = match fs::symlink_metadata(&tmp) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&tmp),
        Ok(_) => fs::remove_file(&tmp),
        Err(_) => Ok(()),
    };
    removed.map_err(io_context(format!("removing {}", tmp.display())))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_context(format!("writing {}", tmp.display())))?;
    file.write_all(content.as_bytes())
        .map_err(io_context(format!("writing {}", tmp.display())))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(io_context(format!("writing {}", target.display())))?;
    Ok(())
}

/// Where the rootfs-relative `rel` leads inside `root`, resolving symlinks as if `root` were `/`:
/// an absolute link target starts again at `root`, and `..` never climbs above it (Debian's
/// `var/run -> /run` leads to `root/run`, an image's `ext -> /outside` to `root/outside`). The
/// result holds no symlink up to its last existing component, so writing to it cannot leave
/// the rootfs. `rel` must name something below `root` (not `.`), without `..`.
pub fn path_in_root(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let outside = || {
        format!(
            "config path {} must name a file inside the rootfs (relative, without `..`, not `.`)",
            rel.display()
        )
    };
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        || !rel.components().any(|c| matches!(c, Component::Normal(_)))
    {
        return Err(outside());
    }
    let mut todo: std::collections::VecDeque<std::ffi::OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            done.pop();
            continue;
        }
        let candidate: PathBuf = std::iter::once(root.as_os_str())
            .chain(done.iter().map(|d| d.as_os_str()))
            .chain(std::iter::once(part.as_os_str()))
            .collect();
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(format!(
                        "config path {}: too many symlinks in the rootfs",
                        rel.display()
                    ));
                }
                let target = fs::read_link(&candidate)
                    .map_err(io_context(format!("reading {}", candidate.display())))?;
                if target.is_absolute() {
                    done.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push_front(n.to_os_string()),
                        Component::ParentDir => todo.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            _ => done.push(part),
        }
    }
    if done.is_empty() {
        return Err(outside());
    }
    Ok(std::iter::once(root.as_os_str())
        .chain(done.iter().map(|d| d.as_os_str()))
        .collect())
}

/// Creates `dir` (and its parents) and makes it readable by root alone.
fn private_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(io_context(format!("creating {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_context(format!("making {} private", dir.display())))
}

/// `run --work DIR`: runs the [`HookRequest`] on stdin and returns the exit status to report:
/// the script's, [`EXIT_TIMED_OUT`] when it outlived its timeout. Its stdout and stderr are
/// passed on after it ends, each cut to a bounded head and tail.
fn run_hook(args: &[String]) -> Result<i32, String> {
    let work = PathBuf::from(flag(args, "--work")?);
    let mut text = Vec::new();
    Input::stdin()
        .take(64 << 20)
        .read_to_end(&mut text)
        .map_err(io_context("reading the hook request"))?;
    let request: HookRequest =
        serde_json::from_slice(&text).map_err(|e| format!("the hook request is malformed: {e}"))?;
    drop(text);
    private_dir(&work)?;
    let export_file = PathBuf::from(&request.export_file);
    if let Some(dir) = export_file.parent() {
        private_dir(dir)?;
    }
    let _ = fs::remove_file(&export_file);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&export_file)
        .map_err(io_context(format!("creating {}", export_file.display())))?;
    // The script goes to a private file, not into a command line.
    let scripts = work.join("run");
    private_dir(&scripts)?;
    let script = scripts.join(format!("hook-{}.sh", std::process::id()));
    let _ = fs::remove_file(&script);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&script)
        .and_then(|mut f| f.write_all(request.script.as_bytes()))
        .map_err(io_context(format!("writing {}", script.display())))?;
    let result = supervise(&request, &script);
    let _ = fs::remove_file(&script);
    // A script that replaced the file must not make it readable to others.
    if fs::symlink_metadata(&export_file).is_ok_and(|m| m.is_file()) {
        let _ = fs::set_permissions(&export_file, fs::Permissions::from_mode(0o600));
    }
    result
}

fn spawn_shell(
    shell: &str,
    request: &HookRequest,
    script: &Path,
) -> io::Result<std::process::Child> {
    let mut command = std::process::Command::new(shell);
    command
        .arg(script)
        .current_dir(&request.dir)
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    command.spawn()
}

/// Runs the script in a process group of its own and waits for it, killing the group when the
/// timeout passes or the session that started the agent is gone.
fn supervise(request: &HookRequest, script: &Path) -> Result<i32, String> {
    let mut child = match spawn_shell("bash", request, script) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => spawn_shell("sh", request, script),
        other => other,
    }
    .map_err(io_context(format!(
        "starting the script in {}",
        request.dir
    )))?;
    let group = child.id() as libc::pid_t;
    let keep = |pipe: Option<Box<dyn Read + Send>>| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut kept = KeptOutput::new(HOOK_OUTPUT_HEAD, HOOK_OUTPUT_TAIL);
            if let Some(mut pipe) = pipe {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    kept.push(&buf[..n]);
                }
            }
            let _ = sender.send(kept.into_bytes());
        });
        receiver
    };
    let stdout = keep(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = keep(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let session = Session::watch();
    let started = Instant::now();
    let timeout = Duration::from_secs(request.timeout_secs.max(1));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the script: {e}")),
        }
        if started.elapsed() >= timeout {
            kill_group(group, &mut child);
            let mut err = stderr
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_default();
            let _ = io::stdout().write_all(
                &stdout
                    .recv_timeout(Duration::from_secs(1))
                    .unwrap_or_default(),
            );
            err.extend_from_slice(
                format!(
                    "\nsealer agent: the script ran longer than its timeout of {}s; it was killed with its process group\n",
                    timeout.as_secs()
                )
                .as_bytes(),
            );
            let _ = io::stderr().write_all(&err);
            return Ok(EXIT_TIMED_OUT);
        }
        if session.gone() {
            kill_group(group, &mut child);
            return Err("the session that started the script is gone; the script was killed with its process group".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Background processes the script started may keep its pipes open: wait a moment, not forever.
    let out = stdout
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    let err = stderr
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_default();
    let _ = io::stdout().write_all(&out);
    let _ = io::stderr().write_all(&err);
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// SIGTERM to the whole group, SIGKILL to what is left after 5 s.
fn kill_group(group: libc::pid_t, child: &mut std::process::Child) {
    // SAFETY: signals a process group this agent created (the child's own).
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above; members that ignored SIGTERM, and the child if it is still there.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
}

/// Whether the session that started the agent (sshd's channel, or the local installer) still
/// exists: the agent's parent is replaced when it dies, and the reading end of its stdout
/// closes when the channel or the installer goes.
struct Session {
    parent: libc::pid_t,
}

impl Session {
    fn watch() -> Self {
        // SAFETY: getppid has no preconditions.
        Session {
            parent: unsafe { libc::getppid() },
        }
    }

    fn gone(&self) -> bool {
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != self.parent {
            return true;
        }
        let mut pfd = libc::pollfd {
            fd: io::stdout().as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        rc > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
    }
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

    #[test]
    fn config_paths_resolve_symlinks_as_if_the_rootfs_were_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("var")).unwrap();
        std::os::unix::fs::symlink("/outside", root.join("ext")).unwrap();
        std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("etc/link.conf")).unwrap();
        let cases = [
            ("ext/evil.conf", "outside/evil.conf"),
            ("var/run/app.pid", "run/app.pid"),
            ("etc/up/etc/x", "etc/x"),
            ("etc/link.conf", "etc/passwd"),
            ("./etc/app.yaml", "etc/app.yaml"),
        ];
        for (rel, inside) in cases {
            assert_eq!(
                path_in_root(&root, Path::new(rel)).unwrap(),
                root.join(inside),
                "{rel}"
            );
        }
        for rel in [".", "./", "", "etc/..", "../x", "/etc/x"] {
            let err = path_in_root(&root, Path::new(rel)).unwrap_err();
            assert!(err.contains("inside the rootfs"), "{rel}: {err}");
        }
    }

    #[test]
    fn a_spooled_frame_counts_only_when_its_bytes_match_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"frame bytes".to_vec();
        let sha = hex::encode(Sha256::digest(&body));
        let path = dir.path().join(&sha);
        fs::write(&path, &body).unwrap();
        assert!(spooled_intact(&path, &sha));
        fs::write(&path, b"frame bytez").unwrap();
        assert!(!spooled_intact(&path, &sha));
        fs::write(&path, b"frame").unwrap();
        assert!(!spooled_intact(&path, &sha));
    }

    #[test]
    fn a_full_disk_gets_its_own_exit_status() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(
            exit_status_for(&format!("writing x: {full}")),
            EXIT_DISK_FULL
        );
        let other = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(exit_status_for(&format!("writing x: {other}")), 1);
    }
}
