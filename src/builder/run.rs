//! RUN steps: a working copy of the image root filesystem, the command run in it on the build
//! host, and the difference it made turned into a layer (new and changed entries, deletions as
//! OCI whiteouts).
//!
//! The working tree is materialised with the project's one extraction routine
//! (`packer::unpack`), kept across consecutive RUN steps and rebuilt when other layers were added
//! in between. Changes are detected by comparing metadata snapshots (type, mode, size, mtime,
//! ctime, inode, link target) taken before and after the command.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use packer::unpack::{unpack_blob_files, UnpackOptions};

use crate::store::{Descriptor, Store};

use super::layer::{BuiltLayer, LayerWriter};
use super::BuildError;

#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryMeta {
    kind: u8,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    nlink: u64,
    target: Option<PathBuf>,
}

type Snapshot = BTreeMap<String, EntryMeta>;

/// What a RUN command did.
pub struct RunOutcome {
    pub success: bool,
    /// `exit code N` or `signal N`.
    pub status: String,
    /// The last lines it printed.
    pub tail: String,
}

/// The image root a RUN step works in.
pub struct WorkTree {
    holder: tempfile::TempDir,
    layers: Vec<Descriptor>,
    snapshot: Snapshot,
}

impl WorkTree {
    pub fn new(store: &Store) -> Result<Self, BuildError> {
        let holder = tempfile::Builder::new()
            .prefix(&Store::tmp_prefix("build"))
            .tempdir_in(store.tmp_dir())
            .map_err(|e| BuildError::io("creating a build directory", e))?;
        Ok(WorkTree {
            holder,
            layers: Vec::new(),
            snapshot: Snapshot::new(),
        })
    }

    /// The root filesystem directory.
    pub fn root(&self) -> PathBuf {
        self.holder.path().join("rootfs")
    }

    /// Make the tree hold exactly `layers`.
    pub fn catch_up(&mut self, store: &Store, layers: &[Descriptor]) -> Result<(), BuildError> {
        let root = self.root();
        if self.layers.as_slice() != layers || !root.is_dir() {
            if root.exists() {
                make_writable(&root);
                fs::remove_dir_all(&root)
                    .map_err(|e| BuildError::io(format!("clearing {}", root.display()), e))?;
            }
            let blobs = layers
                .iter()
                .map(|l| store.blob_path(&l.digest))
                .collect::<Result<Vec<_>, _>>()?;
            let options = UnpackOptions {
                ownership: false,
                devices: false,
                absolute_symlinks: true,
                ..UnpackOptions::default()
            };
            unpack_blob_files(&blobs, &root, &options).map_err(|e| {
                BuildError::io(
                    format!("materialising the image root in {}", root.display()),
                    std::io::Error::other(e.to_string()),
                )
            })?;
            self.layers = layers.to_vec();
        }
        self.snapshot = snapshot(&root)?;
        Ok(())
    }

    /// Run `argv` with the image root as working directory, in a process group of its own. The
    /// step ends when the command ends: whatever it left running in the background is sent
    /// SIGTERM, then SIGKILL after [`RUN_GRACE`], and its output is not waited for beyond that.
    pub fn run(
        &mut self,
        argv: &[String],
        env: &[(String, String)],
        output: &mut dyn FnMut(&str),
    ) -> Result<RunOutcome, BuildError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| BuildError::io("RUN", std::io::Error::other("empty command")))?;
        let mut child = Command::new(program)
            .args(args)
            .current_dir(self.root())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SEALER_ROOTFS", self.root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| BuildError::io(format!("starting {program}"), e))?;
        let group = child.id() as libc::pid_t;
        let (tx, rx) = mpsc::channel::<RunEvent>();
        let mut open_streams = 0;
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            open_streams += 1;
            std::thread::spawn(move || forward(out, tx));
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            open_streams += 1;
            std::thread::spawn(move || forward(err, tx));
        }
        std::thread::spawn(move || {
            wait_without_reaping(group);
            let _ = tx.send(RunEvent::Exited);
        });
        let mut tail: std::collections::VecDeque<String> = Default::default();
        // Set once the command has exited: when the group gets SIGKILL, and when to stop reading.
        let mut kill_at: Option<Instant> = None;
        let mut give_up_at: Option<Instant> = None;
        loop {
            if kill_at.is_some_and(|at| open_streams == 0 || Instant::now() >= at) {
                kill_at = None;
                signal_group(group, libc::SIGKILL);
                give_up_at = Some(Instant::now() + RUN_GRACE);
            }
            if give_up_at.is_some() && open_streams == 0 {
                break;
            }
            let deadline = kill_at.or(give_up_at);
            let event = match deadline {
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match event {
                Ok(RunEvent::Line(line)) => {
                    output(&line);
                    if tail.len() == 20 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                Ok(RunEvent::Closed) => open_streams -= 1,
                Ok(RunEvent::Exited) => {
                    // The leader is a zombie until reaped, so the group id cannot be reused yet.
                    signal_group(group, libc::SIGTERM);
                    kill_at = Some(Instant::now() + RUN_GRACE);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if kill_at.is_some() => {}
                // Output still held open by something that left the group: stop waiting for it.
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    signal_group(group, libc::SIGKILL);
                    break;
                }
            }
        }
        let status = child
            .wait()
            .map_err(|e| BuildError::io(format!("waiting for {program}"), e))?;
        let status_text = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "an unknown status".to_string(),
        };
        Ok(RunOutcome {
            success: status.success(),
            status: status_text,
            tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
        })
    }

    /// Turn what changed since the last snapshot into a layer; the tree then counts it as applied.
    pub fn commit_layer(
        &mut self,
        store: &Store,
        level: i32,
        mtime: u64,
    ) -> Result<BuiltLayer, BuildError> {
        let root = self.root();
        let after = snapshot(&root)?;
        let mut layer = LayerWriter::new(store, level, mtime)?;
        let io = |path: &str, e: std::io::Error| {
            BuildError::io(format!("adding {path} to the RUN layer"), e)
        };
        // Deleted: whiteout the topmost deleted path only.
        let mut deleted_dirs: Vec<&str> = Vec::new();
        let mut entries: Vec<(&str, bool)> = Vec::new();
        for path in self.snapshot.keys() {
            if !after.contains_key(path)
                && !deleted_dirs
                    .iter()
                    .any(|d| path.starts_with(d) && path.as_bytes().get(d.len()) == Some(&b'/'))
            {
                entries.push((path.as_str(), true));
                if self.snapshot[path].kind == b'd' {
                    deleted_dirs.push(path.as_str());
                }
            }
        }
        for (path, meta) in &after {
            if self.snapshot.get(path) != Some(meta) {
                entries.push((path.as_str(), false));
            }
        }
        entries.sort();
        let mut linked: HashMap<u64, String> = HashMap::new();
        for (path, whiteout) in entries {
            if whiteout {
                layer.add_whiteout(path).map_err(|e| io(path, e))?;
                continue;
            }
            let meta = &after[path];
            let full = root.join(path);
            match meta.kind {
                b'd' => layer.add_dir(path, meta.mode).map_err(|e| io(path, e))?,
                b'l' => {
                    let target = meta.target.as_deref().unwrap_or(Path::new(""));
                    if super::context::symlink_leaves_root(path, target) {
                        return Err(BuildError::io(
                            format!("RUN created {path}"),
                            std::io::Error::other(format!(
                                "it is a symlink to `{}`, which leads outside the image root; make it point inside the image (or absolute, counted from the image root)",
                                target.display()
                            )),
                        ));
                    }
                    layer.add_symlink(path, target).map_err(|e| io(path, e))?
                }
                b'f' => {
                    if meta.nlink > 1 {
                        if let Some(first) = linked.get(&meta.ino) {
                            layer.add_hardlink(path, first).map_err(|e| io(path, e))?;
                            continue;
                        }
                        linked.insert(meta.ino, path.to_string());
                    }
                    layer
                        .add_file_from(path, meta.mode, &full)
                        .map_err(|e| io(path, e))?
                }
                _ => {
                    return Err(BuildError::io(
                        format!("RUN created {path}"),
                        std::io::Error::other(
                            "devices, sockets and pipes cannot be part of an image layer",
                        ),
                    ))
                }
            }
        }
        let blob = layer.finish()?;
        self.layers.push(blob.descriptor.clone());
        self.snapshot = after;
        Ok(blob)
    }
}

/// How long what a RUN left running gets after SIGTERM, and its output after SIGKILL.
pub const RUN_GRACE: Duration = Duration::from_secs(2);

enum RunEvent {
    Line(String),
    /// One of the command's output streams reached its end.
    Closed,
    /// The command (the group leader) exited; it is not reaped yet.
    Exited,
}

fn forward(stream: impl std::io::Read, tx: mpsc::Sender<RunEvent>) {
    for line in BufReader::new(stream).lines() {
        match line {
            Ok(line) => {
                if tx.send(RunEvent::Line(line)).is_err() {
                    return;
                }
            }
            Err(_) => break,
        }
    }
    let _ = tx.send(RunEvent::Closed);
}

/// Block until process `pid` (a child) has exited, leaving it to be reaped by `Child::wait`.
fn wait_without_reaping(pid: libc::pid_t) {
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t; waitid only fills it in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Send `signal` to every process of the group `group` (errors mean nobody is left).
fn signal_group(group: libc::pid_t, signal: libc::c_int) {
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe {
        libc::killpg(group, signal);
    }
}

fn make_writable(root: &Path) {
    // A RUN may leave read-only directories behind; removal needs write permission on them.
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = fs::symlink_metadata(&dir) {
            if meta.is_dir() {
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
                if let Ok(entries) = fs::read_dir(&dir) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
            }
        }
    }
}

fn snapshot(root: &Path) -> Result<Snapshot, BuildError> {
    let mut out = Snapshot::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let entries = fs::read_dir(&dir)
            .map_err(|e| BuildError::io(format!("reading {}", dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| BuildError::io(format!("reading {}", dir.display()), e))?;
            let name = entry.file_name().into_string().map_err(|n| {
                BuildError::io(
                    format!("RUN created {n:?} in {}", dir.display()),
                    std::io::Error::other("file names must be UTF-8"),
                )
            })?;
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(entry.path())
                .map_err(|e| BuildError::io(format!("reading {path}"), e))?;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                b'd'
            } else if ft.is_symlink() {
                b'l'
            } else if ft.is_file() {
                b'f'
            } else {
                b'?'
            };
            let target = if kind == b'l' {
                fs::read_link(entry.path()).ok()
            } else {
                None
            };
            out.insert(
                path.clone(),
                EntryMeta {
                    kind,
                    mode: meta.permissions().mode() & 0o7777,
                    size: if kind == b'd' { 0 } else { meta.len() },
                    mtime: if kind == b'd' {
                        (0, 0)
                    } else {
                        (meta.mtime(), meta.mtime_nsec())
                    },
                    ctime: if kind == b'd' {
                        (0, 0)
                    } else {
                        (meta.ctime(), meta.ctime_nsec())
                    },
                    ino: meta.ino(),
                    nlink: meta.nlink(),
                    target,
                },
            );
            if kind == b'd' {
                stack.push(path);
            }
        }
    }
    Ok(out)
}
