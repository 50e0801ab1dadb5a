//! What the deploy engine and the agent say to each other, and the one place it is written
//! down: the agent's commands as a typed [`AgentCommand`] with one encoder
//! ([`AgentCommand::to_args`]) and one parser ([`Invocation::parse`]); what travels on stdin and
//! stdout (the layer plan, frame records and their end marker, the hook request, the host
//! state); the exit statuses that carry meaning.
//!
//! Both sides use this module, and nothing else, to talk. It reads and writes only the reader
//! or writer it is handed; it knows nothing of SSH, of shells or of what the host does.
//! Errors are strings: they cross a process boundary.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use packer::frames::Frame;
use packer::unpack::Compression;

use crate::clusterfile::ConfigStrategy;

/// Exit status of an agent command that failed because the host's disk is full (ENOSPC or
/// EDQUOT): trying again cannot help until someone frees space.
pub const EXIT_DISK_FULL: i32 = 28;
/// Exit status of `run` when the script outlived its timeout (as coreutils `timeout`).
pub const EXIT_TIMED_OUT: i32 = 124;
/// Exit status of `lock` when another installer holds the cluster's lock (its holder on
/// stderr), as sysexits' EX_TEMPFAIL.
pub const EXIT_LOCKED: i32 = 75;

/// The largest layer plan a host accepts.
pub const MAX_PLAN_LEN: u64 = 64 << 20;
/// The largest frame a host accepts; sealer never writes one this large.
pub const MAX_FRAME_LEN: u64 = 1 << 30;

/// The words after `agent` on a host: one command and the options every command takes.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "agent",
    disable_help_subcommand = true,
    disable_version_flag = true
)]
pub struct Invocation {
    /// Seconds a read of stdin may wait for a byte before the agent concludes the installer is
    /// gone (default: the agent's own).
    #[arg(long, global = true, value_name = "SECS")]
    pub stall_timeout: Option<u64>,
    #[command(subcommand)]
    pub command: AgentCommand,
}

/// One thing the agent does. Each variant says what it reads on stdin and prints on stdout.
/// `work` is the cluster's work directory on the host (`<dataRoot>/<cluster>/.sealer`).
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum AgentCommand {
    /// Prints `sealer agent VERSION`.
    Version,
    /// Prints the [`HostState`] as JSON.
    State {
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
    },
    /// Reads sha256 hex lines; prints, one a line, those whose frame is not spooled intact.
    Have {
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
    },
    /// Reads frame records up to the end marker and spools them; prints how many arrived.
    /// With `dest`, the records are preceded by the layer plan and the rootfs is unpacked into
    /// `dest` while they arrive.
    Receive {
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
        #[arg(long, allow_hyphen_values = true)]
        dest: Option<PathBuf>,
    },
    /// Reads the layer plan; unpacks its frames, all spooled already, into `dest`.
    Unpack {
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
        #[arg(long, allow_hyphen_values = true)]
        dest: PathBuf,
    },
    /// Reads the step's name and records the step as done in the journal; prints what the step
    /// exported. With `installs`, the step put that payload's tree in place: the journal and
    /// exports of any other payload are cleared first (kept as the previous generation when the
    /// tree replaced another payload's), and the work directory records which payload the rootfs
    /// holds and which frames it was unpacked from. With `prune_spool`, the spool is pruned
    /// afterwards to the frames of the installed and the previous generation: what a later
    /// upgrade or rollback can reuse.
    Done {
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
        #[arg(long)]
        key: StepKey,
        #[arg(long)]
        prune_spool: bool,
        #[arg(long)]
        installs: Option<PayloadId>,
    },
    /// Reads a Config's data and writes it to `path` (relative to `rootfs`, never outside it).
    Config {
        #[arg(long, allow_hyphen_values = true)]
        rootfs: PathBuf,
        #[arg(long, allow_hyphen_values = true)]
        path: PathBuf,
        #[arg(long, value_parser = parse_strategy)]
        strategy: ConfigStrategy,
    },
    /// Reads a [`RenderRequest`] (JSON) and renders every `*.tmpl` file below `rootfs` into the
    /// file without the suffix; prints a [`RenderOutcome`] (JSON).
    Render {
        #[arg(long, allow_hyphen_values = true)]
        rootfs: PathBuf,
    },
    /// Reads a [`HookRequest`] (JSON) and runs it; passes on a bounded part of its output and
    /// exits with its status (or [`EXIT_TIMED_OUT`]).
    Run {
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
    },
    /// Removes what installs of cluster `cluster` put under `data_root`: only its rootfs, or
    /// (`all`) the whole cluster directory (rootfs, journal, spool, exports), then the agent
    /// directory and `data_root` itself when no other cluster is left there. Removing what is
    /// already gone succeeds.
    Remove {
        #[arg(long, allow_hyphen_values = true)]
        data_root: PathBuf,
        #[arg(long, allow_hyphen_values = true)]
        cluster: String,
        #[arg(long)]
        all: bool,
    },
    /// Brings back the previous generation: the trees are exchanged atomically, journal,
    /// exports, the installed payload and its frame list follow; the spool is pruned to the
    /// frames of the two generations. Prints the payload now installed.
    Rollback {
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
    },
    /// Takes the cluster's lock on this host (`file`) for `holder` and keeps it while stdin is
    /// open; refused at once with [`EXIT_LOCKED`] when another installer holds it.
    Lock {
        #[arg(long, allow_hyphen_values = true)]
        file: PathBuf,
        #[arg(long, allow_hyphen_values = true)]
        holder: String,
    },
    /// The host's pull-only image registry and containerd's way to it: see [`RegistryCommand`].
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
}

fn strategy_name(strategy: ConfigStrategy) -> &'static str {
    match strategy {
        ConfigStrategy::Overwrite => "overwrite",
        ConfigStrategy::Merge => "merge",
    }
}

fn parse_strategy(word: &str) -> Result<ConfigStrategy, String> {
    match word {
        "overwrite" => Ok(ConfigStrategy::Overwrite),
        "merge" => Ok(ConfigStrategy::Merge),
        other => Err(format!("unknown config strategy {other:?}")),
    }
}

impl AgentCommand {
    /// The words after `agent` that [`Invocation::parse`] reads back as this command. They are
    /// plain words: whoever puts them in a shell command line quotes each one.
    pub fn to_args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        let mut words: Vec<String> = Vec::new();
        let mut push = |name: &str, value: String| {
            words.push(format!("--{name}"));
            words.push(value);
        };
        let sub = match self {
            AgentCommand::Version => "version",
            AgentCommand::State { work } => {
                push("work", path(work));
                "state"
            }
            AgentCommand::Have { work } => {
                push("work", path(work));
                "have"
            }
            AgentCommand::Receive { work, dest } => {
                push("work", path(work));
                if let Some(dest) = dest {
                    push("dest", path(dest));
                }
                "receive"
            }
            AgentCommand::Unpack { work, dest } => {
                push("work", path(work));
                push("dest", path(dest));
                "unpack"
            }
            AgentCommand::Done {
                work,
                key,
                prune_spool,
                installs,
            } => {
                push("work", path(work));
                push("key", key.to_string());
                if let Some(id) = installs {
                    push("installs", id.to_string());
                }
                if *prune_spool {
                    words.push("--prune-spool".into());
                }
                "done"
            }
            AgentCommand::Config {
                rootfs,
                path: rel,
                strategy,
            } => {
                push("rootfs", path(rootfs));
                push("path", path(rel));
                push("strategy", strategy_name(*strategy).into());
                "config"
            }
            AgentCommand::Run { work } => {
                push("work", path(work));
                "run"
            }
            AgentCommand::Render { rootfs } => {
                push("rootfs", path(rootfs));
                "render"
            }
            AgentCommand::Remove {
                data_root,
                cluster,
                all,
            } => {
                push("data-root", path(data_root));
                push("cluster", cluster.clone());
                if *all {
                    words.push("--all".into());
                }
                "remove"
            }
            AgentCommand::Rollback { work } => {
                push("work", path(work));
                "rollback"
            }
            AgentCommand::Lock { file, holder } => {
                push("file", path(file));
                push("holder", holder.clone());
                "lock"
            }
            AgentCommand::Registry { command } => {
                words.extend(command.to_args());
                "registry"
            }
        };
        words.insert(0, sub.to_string());
        words
    }
}

impl Invocation {
    /// Reads the words after `agent`.
    pub fn parse(args: &[String]) -> Result<Invocation, String> {
        Invocation::try_parse_from(std::iter::once("agent").chain(args.iter().map(String::as_str)))
            .map_err(|e| {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or_default();
                format!(
                    "the agent's command line is malformed: {}",
                    first.trim_start_matches("error: ")
                )
            })
    }

    /// The words after `agent` that [`Invocation::parse`] reads back as this invocation.
    pub fn to_args(&self) -> Vec<String> {
        let mut words = self.command.to_args();
        if let Some(secs) = self.stall_timeout {
            words.push("--stall-timeout".into());
            words.push(secs.to_string());
        }
        words
    }
}

/// What `run` reads on stdin (JSON): one hook or CMD. Script and env travel here, never in a
/// command line, where `/proc/PID/cmdline` shows them to every user of the host.
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

/// What `render` reads on stdin (JSON): the host's env, and the extra env of each app's files
/// (APPENV), by the app's directory relative to the rootfs.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RenderRequest {
    /// Variables in order (a later one replaces an earlier of the same name).
    pub env: Vec<(String, String)>,
    /// `application/apps/NAME` → that app's APPENV pairs, which win inside its directory.
    #[serde(default)]
    pub apps: BTreeMap<String, Vec<(String, String)>>,
}

/// What `render` prints (JSON): the files it wrote and what their templates read, so that the
/// engine knows whether the output depends on the cluster's members.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenderOutcome {
    /// The rendered files, relative to the rootfs, sorted.
    pub rendered: Vec<PathBuf>,
    /// Every key any template reads (`.Key`, in any branch), whether or not it has a value.
    pub reads: std::collections::BTreeSet<String>,
}

/// What `state` prints (JSON).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct HostState {
    /// The payload whose tree the rootfs holds; `None` before the first install (and on hosts
    /// installed before this was recorded).
    #[serde(default)]
    pub installed: Option<PayloadId>,
    /// The payload of the previous generation kept for a rollback, if any.
    #[serde(default)]
    pub previous: Option<PayloadId>,
    /// The payload the installed generation replaced, when it was installed over another one
    /// (an upgrade); `None` for a first install. It travels with the journal, so a rollback
    /// brings back the answer of the generation it brings back.
    #[serde(default)]
    pub upgraded_from: Option<PayloadId>,
    /// Finished steps.
    pub done: Vec<StepKey>,
    /// Exported `KEY=VALUE` text by step.
    pub exports: BTreeMap<StepKey, String>,
}

/// The identity of a payload's content (64 lowercase hex digits: the image manifest's or the
/// package manifest's sha256). A host records which one its rootfs holds.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct PayloadId(String);

/// The name of a finished step in a host's journal: 64 lowercase hex digits (the engine
/// hashes what the step does). It is a file name on the host, so nothing else is one.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct StepKey(String);

impl From<[u8; 32]> for StepKey {
    fn from(digest: [u8; 32]) -> Self {
        StepKey(hex::encode(digest))
    }
}

/// The methods of a newtype over a sha256 hex string (`$what` names it in errors): validated
/// on the way in (parse, serde), plain text on the way out.
macro_rules! sha256_name {
    ($name:ident, $what:literal) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                valid_sha256(text)
                    .map(|()| $name(text.to_string()))
                    .map_err(|_| format!("{text:?} is not a {} (64 lowercase hex digits)", $what))
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(text: String) -> Result<Self, String> {
                text.parse()
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

sha256_name!(PayloadId, "payload id");
sha256_name!(StepKey, "step key");

/// The `$SEALER_EXPORT` file of the step `key` in the work directory `work`: what `state` and
/// `done` report as the step's exports.
pub fn export_file(work: &Path, key: &StepKey) -> PathBuf {
    work.join("exports").join(format!("{key}.env"))
}

/// One layer of the plan the engine sends before `receive --dest` and `unpack`. A frame's
/// `offset` is where it sits in its layer on the installer's side; the host lays the frames out
/// in its own spool and does not use it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanLayer {
    pub label: String,
    pub compression: Compression,
    pub frames: Vec<Frame>,
}

/// The layer plan on the wire: 8-byte little-endian length, then JSON.
pub fn write_plan(out: &mut dyn Write, plan: &[PlanLayer]) -> io::Result<()> {
    let json = serde_json::to_vec(plan).map_err(io::Error::other)?;
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)
}

/// Reads what [`write_plan`] wrote.
pub fn read_plan(input: &mut dyn Read) -> Result<Vec<PlanLayer>, String> {
    let mut len = [0u8; 8];
    input
        .read_exact(&mut len)
        .map_err(|e| format!("reading the layer plan length: {e}"))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_PLAN_LEN {
        return Err(format!(
            "a layer plan of {len} bytes is implausible; refusing it"
        ));
    }
    let mut text = vec![0u8; len as usize];
    input
        .read_exact(&mut text)
        .map_err(|e| format!("reading the layer plan: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("the layer plan is malformed: {e}"))
}

/// The part of a frame record before the frame's bytes: 8-byte little-endian length, then the
/// 32-byte sha256 of the bytes. A length of 0 is the end marker ([`write_end`]).
pub fn write_record_header(out: &mut dyn Write, sha256_hex: &str, len: u64) -> io::Result<()> {
    out.write_all(&len.to_le_bytes())?;
    let sha =
        hex::decode(sha256_hex).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if sha.len() != 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{sha256_hex:?} is not a sha256"),
        ));
    }
    out.write_all(&sha)
}

/// A whole frame record: [`write_record_header`], then the bytes.
pub fn write_record(out: &mut dyn Write, sha256_hex: &str, bytes: &[u8]) -> io::Result<()> {
    write_record_header(out, sha256_hex, bytes.len() as u64)?;
    out.write_all(bytes)
}

/// The end of the frame records.
pub fn write_end(out: &mut dyn Write) -> io::Result<()> {
    out.write_all(&0u64.to_le_bytes())
}

/// Reads one frame record into `buf`: the sha256 (hex) it claims, or `None` at the end marker.
/// The claim is not checked here; the receiver hashes the bytes.
pub fn read_record(input: &mut dyn Read, buf: &mut Vec<u8>) -> Result<Option<String>, String> {
    let mut len = [0u8; 8];
    input
        .read_exact(&mut len)
        .map_err(|e| format!("reading a frame length (the stream was cut): {e}"))?;
    let len = u64::from_le_bytes(len);
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_FRAME_LEN {
        return Err(format!(
            "a frame of {len} bytes is larger than any frame sealer writes; refusing it"
        ));
    }
    let mut sha = [0u8; 32];
    input
        .read_exact(&mut sha)
        .map_err(|e| format!("reading a frame digest: {e}"))?;
    let sha = hex::encode(sha);
    buf.resize(len as usize, 0);
    input
        .read_exact(buf)
        .map_err(|e| format!("reading frame {sha} (the stream was cut): {e}"))?;
    Ok(Some(sha))
}

/// The frame list of `have`, asked and answered: one sha256 (hex) a line.
pub fn write_frame_list<'a>(
    out: &mut dyn Write,
    shas: impl IntoIterator<Item = &'a str>,
) -> io::Result<()> {
    for sha in shas {
        writeln!(out, "{sha}")?;
    }
    Ok(())
}

/// Reads what [`write_frame_list`] wrote, a line at a time; blank lines are skipped and a line
/// that is not a sha256 is an error.
pub fn read_frame_list(input: impl BufRead) -> impl Iterator<Item = Result<String, String>> {
    input.lines().filter_map(|line| match line {
        Err(e) => Some(Err(format!("reading stdin: {e}"))),
        Ok(line) => {
            let sha = line.trim();
            (!sha.is_empty()).then(|| valid_sha256(sha).map(|()| sha.to_string()))
        }
    })
}

/// `Ok` when `sha` is 64 lowercase hex digits.
pub fn valid_sha256(sha: &str) -> Result<(), String> {
    if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("{sha:?} is not a sha256"))
    }
}

/// What `agent registry …` does: serve an OCI image layout (the images layer's `images/`
/// directory) as a pull-only registry, run that as a service, and point containerd at it.
/// Nothing is read on stdin. Exit status 0 on success, 1 with one sentence on stderr otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum RegistryCommand {
    /// Serves the layout at `root` on `listen` in the foreground until the process is killed.
    Serve {
        #[arg(long, allow_hyphen_values = true)]
        root: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Starts `serve` as the service `unit` (a systemd unit where systemd is PID 1, else a
    /// supervised daemon) and waits until it accepts connections; prints one line saying
    /// whether it was started, restarted (it ran with other arguments) or left running.
    Start {
        #[arg(long, allow_hyphen_values = true)]
        root: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
        #[arg(long)]
        unit: UnitName,
        #[arg(long, value_enum, default_value_t = ServiceManager::Auto)]
        manager: ServiceManager,
    },
    /// The daemon's supervisor, which `start` runs detached; not for the engine.
    #[command(hide = true)]
    Supervise {
        #[arg(long, allow_hyphen_values = true)]
        root: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
        #[arg(long)]
        unit: UnitName,
    },
    /// Prints the [`ServiceStatus`] of `unit` as JSON (exit status 0 whether it runs or not).
    Status {
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
        #[arg(long)]
        unit: UnitName,
    },
    /// Stops `unit` and removes its unit or pid file; prints whether it was running.
    Stop {
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
        #[arg(long)]
        unit: UnitName,
    },
    /// Writes `config_path/REGISTRY/hosts.toml` sending pulls of `registry` to `endpoints` in
    /// order (with `prefix`: to `ENDPOINT/v2/PREFIX`, `override_path`); prints
    /// whether the file changed.
    Mirror {
        #[arg(long, allow_hyphen_values = true)]
        config_path: PathBuf,
        #[arg(long)]
        registry: String,
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Removes `config_path/REGISTRY/hosts.toml` when sealer wrote it; prints `removed`,
    /// `absent` or that another's file was left alone.
    Unmirror {
        #[arg(long, allow_hyphen_values = true)]
        config_path: PathBuf,
        #[arg(long)]
        registry: String,
    },
    /// Prints the CRI registry `config_path` of containerd's `config` (default
    /// `/etc/containerd/config.toml`); fails, naming the file and the line to add, when unset.
    ConfigPath {
        #[arg(long, allow_hyphen_values = true)]
        config: Option<PathBuf>,
    },
    /// The container images' steps: reads [`ImageCheck`] lines (JSON) and checks that the
    /// layout at `root` holds each image (`index.json` names it; its manifest, config and
    /// layers are there at their size). An image the journal in `work` records (or the
    /// previous generation's, which an upgrade carries over) is only looked at; another one has
    /// every file hashed too, and is recorded in the journal when whole. Prints one
    /// [`ImageChecked`] line (JSON) per image; an incomplete image is not an error.
    Check {
        #[arg(long, allow_hyphen_values = true)]
        root: PathBuf,
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
    },
    /// Reads the layer plan of the images layer, its frames all spooled, and writes the files
    /// `paths` (relative to `root`: `blobs/sha256/HEX`, `index.json`) back into the layout from
    /// them, each checked against its digest; prints how many it wrote.
    Repair {
        #[arg(long, allow_hyphen_values = true)]
        root: PathBuf,
        #[arg(long, allow_hyphen_values = true)]
        work: PathBuf,
        #[arg(long = "path", required = true, allow_hyphen_values = true)]
        paths: Vec<String>,
    },
}

/// One container image `registry check` is asked about: its step's key, its manifest digest
/// and its reference (for messages).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageCheck {
    pub key: StepKey,
    pub digest: String,
    pub image: String,
}

/// What `registry check` found for one image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageChecked {
    pub digest: String,
    pub state: ImageState,
    /// The files the layout lacks (or holds damaged) for the image, relative to its root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// Whether an image's step had to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    /// The journal had it (or the generation the upgrade replaced did) and its files are there.
    Served,
    /// Checked now, every file hashed, and recorded.
    Checked,
    /// Files are missing or damaged: see `missing`. Not recorded (and no longer recorded).
    Incomplete,
}

impl RegistryCommand {
    /// The words after `agent registry`.
    pub fn to_args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        let mut words: Vec<String> = Vec::new();
        let mut push = |name: &str, value: String| {
            words.push(format!("--{name}"));
            words.push(value);
        };
        let sub = match self {
            RegistryCommand::Serve { root, listen } => {
                push("root", path(root));
                push("listen", listen.to_string());
                "serve"
            }
            RegistryCommand::Start {
                root,
                listen,
                work,
                unit,
                manager,
            } => {
                push("root", path(root));
                push("listen", listen.to_string());
                push("work", path(work));
                push("unit", unit.to_string());
                push("manager", manager.as_str().into());
                "start"
            }
            RegistryCommand::Supervise {
                root,
                listen,
                work,
                unit,
            } => {
                push("root", path(root));
                push("listen", listen.to_string());
                push("work", path(work));
                push("unit", unit.to_string());
                "supervise"
            }
            RegistryCommand::Status { work, unit } => {
                push("work", path(work));
                push("unit", unit.to_string());
                "status"
            }
            RegistryCommand::Stop { work, unit } => {
                push("work", path(work));
                push("unit", unit.to_string());
                "stop"
            }
            RegistryCommand::Mirror {
                config_path,
                registry,
                endpoints,
                prefix,
            } => {
                push("config-path", path(config_path));
                push("registry", registry.clone());
                for endpoint in endpoints {
                    push("endpoint", endpoint.clone());
                }
                if let Some(prefix) = prefix {
                    push("prefix", prefix.clone());
                }
                "mirror"
            }
            RegistryCommand::Unmirror {
                config_path,
                registry,
            } => {
                push("config-path", path(config_path));
                push("registry", registry.clone());
                "unmirror"
            }
            RegistryCommand::ConfigPath { config } => {
                if let Some(config) = config {
                    push("config", path(config));
                }
                "config-path"
            }
            RegistryCommand::Check { root, work } => {
                push("root", path(root));
                push("work", path(work));
                "check"
            }
            RegistryCommand::Repair { root, work, paths } => {
                push("root", path(root));
                push("work", path(work));
                for p in paths {
                    push("path", p.clone());
                }
                "repair"
            }
        };
        words.insert(0, sub.to_string());
        words
    }
}

/// Who keeps the registry running: systemd, or the agent's own supervised daemon; `auto`
/// picks systemd where it is PID 1.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceManager {
    Auto,
    Systemd,
    Daemon,
}

impl ServiceManager {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceManager::Auto => "auto",
            ServiceManager::Systemd => "systemd",
            ServiceManager::Daemon => "daemon",
        }
    }
}

/// The name of a registry service: a systemd unit name (without `.service`) and the stem of
/// its files on the host, so 1 to 64 letters, digits, `_`, `.`, `-`, not starting with `.`
/// or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UnitName(String);

impl std::str::FromStr for UnitName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let valid = (1..=64).contains(&text.len())
            && !text.starts_with(['.', '-'])
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if valid {
            Ok(UnitName(text.to_string()))
        } else {
            Err(format!(
                "{text:?} is not a service name (1 to 64 letters, digits, '_', '.', '-')"
            ))
        }
    }
}

impl TryFrom<String> for UnitName {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<UnitName> for String {
    fn from(name: UnitName) -> String {
        name.0
    }
}

impl std::fmt::Display for UnitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `registry status` prints (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceStatus {
    pub unit: UnitName,
    /// Who runs it; `None` when nothing was started under this name.
    pub manager: Option<ServiceManager>,
    /// The unit is active, or the daemon's supervisor holds its pid file.
    pub running: bool,
    /// It runs and its address accepts connections.
    pub serving: bool,
    /// The server's (systemd) or the supervisor's (daemon) pid.
    pub pid: Option<u32>,
    pub root: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(cmd: &AgentCommand) -> Vec<String> {
        cmd.to_args()
    }

    #[test]
    fn every_command_reads_back_as_it_was_written() {
        let odd = PathBuf::from("/var/lib/my data/-x/it's \"here\"");
        let key: StepKey = "ab".repeat(32).parse().unwrap();
        let commands = [
            AgentCommand::Version,
            AgentCommand::State { work: odd.clone() },
            AgentCommand::Have { work: odd.clone() },
            AgentCommand::Receive {
                work: odd.clone(),
                dest: None,
            },
            AgentCommand::Receive {
                work: odd.clone(),
                dest: Some(odd.join("rootfs")),
            },
            AgentCommand::Unpack {
                work: odd.clone(),
                dest: PathBuf::from("-rootfs"),
            },
            AgentCommand::Done {
                work: odd.clone(),
                key: key.clone(),
                prune_spool: false,
                installs: None,
            },
            AgentCommand::Done {
                work: odd.clone(),
                key: key.clone(),
                prune_spool: true,
                installs: Some(key.as_str().parse().unwrap()),
            },
            AgentCommand::Config {
                rootfs: odd.clone(),
                path: PathBuf::from("--etc/app.yaml"),
                strategy: ConfigStrategy::Merge,
            },
            AgentCommand::Remove {
                data_root: odd.clone(),
                cluster: "-c1".into(),
                all: true,
            },
            AgentCommand::Rollback { work: odd.clone() },
            AgentCommand::Remove {
                data_root: odd.clone(),
                cluster: "c 2".into(),
                all: false,
            },
            AgentCommand::Config {
                rootfs: odd.clone(),
                path: PathBuf::from("etc/app.yaml"),
                strategy: ConfigStrategy::Overwrite,
            },
            AgentCommand::Run { work: odd.clone() },
            AgentCommand::Registry {
                command: RegistryCommand::Serve {
                    root: odd.join("images"),
                    listen: "0.0.0.0:5000".parse().unwrap(),
                },
            },
            AgentCommand::Registry {
                command: RegistryCommand::Start {
                    root: PathBuf::from("-images"),
                    listen: "[::1]:5001".parse().unwrap(),
                    work: odd.clone(),
                    unit: "sealer-registry".parse().unwrap(),
                    manager: ServiceManager::Daemon,
                },
            },
            AgentCommand::Registry {
                command: RegistryCommand::Supervise {
                    root: odd.clone(),
                    listen: "127.0.0.1:5000".parse().unwrap(),
                    work: odd.clone(),
                    unit: "r".parse().unwrap(),
                },
            },
            AgentCommand::Registry {
                command: RegistryCommand::Status {
                    work: odd.clone(),
                    unit: "r".parse().unwrap(),
                },
            },
            AgentCommand::Registry {
                command: RegistryCommand::Check {
                    root: PathBuf::from("-images"),
                    work: odd.clone(),
                },
            },
            AgentCommand::Registry {
                command: RegistryCommand::Repair {
                    root: odd.join("images"),
                    work: odd.clone(),
                    paths: vec!["blobs/sha256/ab".into(), "--index.json".into()],
                },
            },
            AgentCommand::Registry {
                command: RegistryCommand::Stop {
                    work: odd.clone(),
                    unit: "r".parse().unwrap(),
                },
            },
            AgentCommand::Registry {
                command: RegistryCommand::Mirror {
                    config_path: odd.clone(),
                    registry: "docker.io".into(),
                    endpoints: vec!["http://10.0.0.1:5000".into(), "http://10.0.0.2:5000".into()],
                    prefix: Some("mirror".into()),
                },
            },
            AgentCommand::Registry {
                command: RegistryCommand::Unmirror {
                    config_path: odd.clone(),
                    registry: "quay.io".into(),
                },
            },
            AgentCommand::Registry {
                command: RegistryCommand::ConfigPath { config: Some(odd) },
            },
            AgentCommand::Registry {
                command: RegistryCommand::ConfigPath { config: None },
            },
        ];
        for command in commands {
            for stall_timeout in [None, Some(4)] {
                let sent = Invocation {
                    stall_timeout,
                    command: command.clone(),
                };
                assert_eq!(Invocation::parse(&sent.to_args()), Ok(sent), "{command:?}");
            }
        }
    }

    #[test]
    fn a_unit_name_is_a_plain_file_and_unit_name() {
        for good in ["sealer-registry", "r", "a.b_c-1"] {
            assert!(good.parse::<UnitName>().is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", &"a".repeat(65)] {
            assert!(bad.parse::<UnitName>().is_err(), "{bad}");
        }
        let args = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = Invocation::parse(&args(&[
            "registry", "stop", "--work", "/w", "--unit", "../x",
        ]))
        .unwrap_err();
        assert!(err.contains("not a service name"), "{err}");
    }

    #[test]
    fn the_stall_timeout_may_come_before_or_after_the_command() {
        let args = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let after = Invocation::parse(&args(&["receive", "--work", "/w", "--stall-timeout", "4"]));
        let before = Invocation::parse(&args(&["--stall-timeout", "4", "receive", "--work", "/w"]));
        assert_eq!(after, before);
        assert_eq!(after.unwrap().stall_timeout, Some(4));
    }

    #[test]
    fn a_malformed_command_line_is_one_sentence() {
        let args = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for bad in [
            &["explode"][..],
            &["receive"],
            &[
                "config",
                "--rootfs",
                "/r",
                "--path",
                "x",
                "--strategy",
                "append",
            ],
            &["state", "--work", "/w", "--extra", "1"],
        ] {
            let err = Invocation::parse(&args(bad)).unwrap_err();
            assert!(
                err.starts_with("the agent's command line is malformed"),
                "{err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
        assert_eq!(words(&AgentCommand::Version), vec!["version".to_string()]);
    }

    #[test]
    fn a_step_key_is_64_lowercase_hex_digits_on_the_command_line_and_in_json() {
        let key = "0f".repeat(32);
        assert_eq!(key.parse::<StepKey>().map(String::from), Ok(key.clone()));
        for bad in ["", "../../etc/passwd", &"0F".repeat(32), &"0f".repeat(31)] {
            assert!(bad.parse::<StepKey>().is_err(), "{bad}");
            let json = format!(r#"{{"done":["{bad}"],"exports":{{}}}}"#);
            assert!(serde_json::from_str::<HostState>(&json).is_err(), "{bad}");
        }
        let args = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = Invocation::parse(&args(&["done", "--work", "/w", "--key", "../x"])).unwrap_err();
        assert!(err.contains("not a step key"), "{err}");
    }

    #[test]
    fn records_and_the_end_marker_read_back() {
        let frames: [&[u8]; 2] = [b"one frame", b"another frame"];
        let mut wire = Vec::new();
        for f in frames {
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(f));
            write_record(&mut wire, &sha, f).unwrap();
        }
        write_end(&mut wire).unwrap();
        let mut input = &wire[..];
        let mut buf = Vec::new();
        for f in frames {
            let sha = read_record(&mut input, &mut buf).unwrap().unwrap();
            assert_eq!(sha, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(f)));
            assert_eq!(buf, f);
        }
        assert_eq!(read_record(&mut input, &mut buf), Ok(None));
        assert!(input.is_empty());
        let err = read_record(&mut &wire[..8 + 32 + 3], &mut buf).unwrap_err();
        assert!(err.contains("the stream was cut"), "{err}");
    }

    #[test]
    fn a_frame_list_reads_back_and_refuses_what_is_not_a_sha256() {
        let shas = ["a".repeat(64), "b".repeat(64)];
        let mut wire = Vec::new();
        write_frame_list(&mut wire, shas.iter().map(String::as_str)).unwrap();
        wire.extend_from_slice(b"\n");
        let read: Result<Vec<String>, String> = read_frame_list(&wire[..]).collect();
        assert_eq!(read, Ok(shas.to_vec()));
        let bad: Result<Vec<String>, String> = read_frame_list(&b"../etc/passwd\n"[..]).collect();
        assert!(bad.unwrap_err().contains("is not a sha256"));
    }

    #[test]
    fn a_plan_reads_back_and_an_implausible_one_is_refused() {
        let plan = vec![PlanLayer {
            label: "layer 1".into(),
            compression: Compression::Zstd,
            frames: vec![Frame {
                offset: 0,
                compressed_len: 10,
                uncompressed_len: 20,
                sha256: "cd".repeat(32),
                blake3: None,
            }],
        }];
        let mut wire = Vec::new();
        write_plan(&mut wire, &plan).unwrap();
        assert_eq!(read_plan(&mut &wire[..]), Ok(plan));
        let huge = (MAX_PLAN_LEN + 1).to_le_bytes();
        let err = read_plan(&mut &huge[..]).unwrap_err();
        assert!(err.contains("implausible"), "{err}");
    }
}
