//! `sealer build`: a Kubefile and a build context in, a CloudImage in the store out.
//!
//! The builder walks the parsed Kubefile, expands ARG/ENV words, turns each COPY/ADD/APP/RUN into
//! one framed-zstd layer, records install-time meaning (CMD, CMDS, APP, LAUNCH, ...) in the image
//! config, and names the image only when every step succeeded. Steps are cached by
//! parent state + instruction + content read, so an unchanged rebuild writes nothing and yields the
//! same digest. It must not parse Kubefile text (that is `kubefile`), nor know about packing or
//! installing.

mod cache;
mod context;
mod layer;
mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::kubefile::{self, AppSource, Command, InstructionKind, KubefileError};
use crate::reference::Reference;
use crate::store::{
    Descriptor, History, ImageConfig, Manifest, RootFs, SealerConfig, Store, StoreError,
    MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST,
};

pub use layer::{LayerBlob, LayerWriter};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The Kubefile; `CONTEXT/Kubefile` when absent.
    pub kubefile: Option<PathBuf>,
    /// The name the image gets.
    pub tag: Reference,
    /// `--build-arg K=V` values.
    pub build_args: Vec<(String, String)>,
    /// Ignore the step cache (results are still recorded in it).
    pub no_cache: bool,
    /// Level of new layers (a zstd level).
    pub level: packer::Level,
    /// Timestamp of every file and of the image (`SOURCE_DATE_EPOCH`; 0 when unset).
    pub source_date_epoch: u64,
}

impl BuildOptions {
    pub fn new(context: impl Into<PathBuf>, tag: Reference) -> Self {
        let epoch = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        BuildOptions {
            context: context.into(),
            kubefile: None,
            tag,
            build_args: Vec::new(),
            no_cache: false,
            level: packer::Compression::Zstd.default_level(),
            source_date_epoch: epoch,
        }
    }
}

/// Progress of a build, for the CLI to print.
#[derive(Debug)]
pub enum BuildEvent<'a> {
    /// Step `index` of `total` starts (1-based); `text` is the instruction as written.
    Step {
        index: usize,
        total: usize,
        text: &'a str,
    },
    /// The step's result came from the cache.
    Cached,
    /// The step wrote a new layer.
    Layer { digest: &'a str, size: u64 },
    /// A line a RUN command printed.
    Output(&'a str),
}

/// The outcome of a successful build.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub reference: Reference,
    /// Manifest digest.
    pub digest: String,
    pub layers: usize,
    pub steps: usize,
    pub cached_steps: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Kubefile(#[from] KubefileError),
    #[error("{file}:{line}: {message}")]
    Step {
        file: String,
        line: usize,
        message: String,
    },
    #[error(
        "{file}:{line}: RUN failed with {status}; the store is unchanged. Last output:\n{output}"
    )]
    RunFailed {
        file: String,
        line: usize,
        status: String,
        output: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BuildError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Where the builder is between steps.
struct State {
    /// Cache key of the filesystem so far.
    key: String,
    layers: Vec<Descriptor>,
    diff_ids: Vec<String>,
    config: ImageConfig,
    sealer: SealerConfig,
    args: BTreeMap<String, String>,
    history: Vec<History>,
}

impl State {
    fn lookup(&self, name: &str) -> Option<String> {
        for item in self.config.config.env.iter().rev() {
            if let Some((k, v)) = item.split_once('=') {
                if k == name {
                    return Some(v.to_string());
                }
            }
        }
        self.args.get(name).cloned()
    }

    fn set_env(&mut self, key: &str, value: &str) {
        self.config
            .config
            .env
            .retain(|item| item.split_once('=').map(|(k, _)| k) != Some(key));
        self.config.config.env.push(format!("{key}={value}"));
    }

    fn push_layer(&mut self, key: String, blob: &LayerBlob, created_by: String, created: &str) {
        self.key = key;
        self.layers.push(blob.descriptor.clone());
        self.diff_ids.push(blob.diff_id.clone());
        self.history.push(History {
            created: Some(created.to_string()),
            created_by: Some(created_by),
            empty_layer: false,
        });
    }

    fn push_empty(&mut self, created_by: String, created: &str) {
        self.history.push(History {
            created: Some(created.to_string()),
            created_by: Some(created_by),
            empty_layer: true,
        });
    }
}

impl BuildOptions {
    /// The compression level changes a layer's bytes, so it is part of every step key.
    fn level_key(&self) -> String {
        self.level.to_string()
    }
}

fn chain(prev: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The architecture name OCI uses for this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Build the image described by `opts`.
pub fn build(
    store: &Store,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<BuildReport, BuildError> {
    let kubefile_path = opts
        .kubefile
        .clone()
        .unwrap_or_else(|| opts.context.join("Kubefile"));
    let text = std::fs::read_to_string(&kubefile_path)
        .map_err(|e| BuildError::io(format!("reading Kubefile {}", kubefile_path.display()), e))?;
    let file_name = kubefile_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Kubefile".into());
    let kubefile = kubefile::parse(&text, &file_name)?;
    if !opts.context.is_dir() {
        return Err(BuildError::io(
            format!("build context {}", opts.context.display()),
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let _writers = store.writer_guard()?;
    let created = rfc3339(opts.source_date_epoch);
    let build_args: BTreeMap<String, String> = opts.build_args.iter().cloned().collect();
    let mut state = State {
        key: String::new(),
        layers: Vec::new(),
        diff_ids: Vec::new(),
        config: ImageConfig {
            created: Some(created.clone()),
            architecture: oci_arch().to_string(),
            os: "linux".to_string(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: Vec::new(),
            },
            ..Default::default()
        },
        sealer: SealerConfig::default(),
        args: BTreeMap::from([(
            "ARCH".to_string(),
            build_args
                .get("ARCH")
                .cloned()
                .unwrap_or_else(|| oci_arch().to_string()),
        )]),
        history: Vec::new(),
    };
    let cache = cache::StepCache::new(store);
    let mut rootfs: Option<run::WorkTree> = None;
    let total = kubefile.instructions.len();
    let mut cached_steps = 0;
    let mut own_cmds: Option<Vec<String>> = None;
    let lines: Vec<&str> = text.lines().collect();

    for (i, instruction) in kubefile.instructions.iter().enumerate() {
        let line = instruction.line;
        let shown = instruction_text(&lines, line);
        progress(BuildEvent::Step {
            index: i + 1,
            total,
            text: &echoed(&shown),
        });
        let step_err = |message: String| BuildError::Step {
            file: file_name.clone(),
            line,
            message,
        };
        let expand = |state: &State, word: &str| -> Result<String, BuildError> {
            kubefile::expand(word, &|name: &str| state.lookup(name)).map_err(|e| BuildError::Step {
                file: file_name.clone(),
                line,
                message: e.to_string(),
            })
        };
        match &instruction.kind {
            InstructionKind::From { image, .. } => {
                let image = expand(&state, image)?;
                if image.eq_ignore_ascii_case("scratch") {
                    state.key = chain("", &["scratch"]);
                } else {
                    let reference =
                        Reference::parse(&image).map_err(|e| step_err(e.to_string()))?;
                    let base = match store.image(&reference) {
                        Ok(base) => base,
                        Err(StoreError::ImageNotFound(_)) => {
                            pull_base(store, &reference).map_err(&step_err)?
                        }
                        Err(e) => return Err(e.into()),
                    };
                    state.key = chain("", &["from", &base.digest]);
                    state.layers = base.manifest.layers.clone();
                    state.diff_ids = base.config.rootfs.diff_ids.clone();
                    state.config.config = base.config.config.clone();
                    state.config.author = base.config.author.clone();
                    state.history = base.config.history.clone();
                    state.sealer = base.config.sealer.clone().unwrap_or_default();
                    let inherited = state.sealer.apps.clone();
                    kubefile.check_apps(&|app| inherited.contains_key(app))?;
                }
                state.push_empty(format!("FROM {image}"), &created);
            }
            InstructionKind::Arg { name, default } => {
                let value = match build_args.get(name) {
                    Some(v) => Some(v.clone()),
                    None => default.as_deref().map(|d| expand(&state, d)).transpose()?,
                };
                if let Some(v) = value {
                    check_env_text(name, &v, "ARG").map_err(&step_err)?;
                    state.args.insert(name.clone(), v);
                }
            }
            InstructionKind::Env(pairs) => {
                // As in Docker, every pair sees the values from before this line.
                let expanded = pairs
                    .iter()
                    .map(|(k, v)| Ok((expand(&state, k)?, expand(&state, v)?)))
                    .collect::<Result<Vec<_>, BuildError>>()?;
                for (k, v) in &expanded {
                    check_env_text(k, v, "ENV").map_err(&step_err)?;
                }
                let shown: Vec<String> = expanded.iter().map(|(k, v)| format!("{k}={v}")).collect();
                for (k, v) in &expanded {
                    state.set_env(k, v);
                }
                state.push_empty(format!("ENV {}", shown.join(" ")), &created);
            }
            InstructionKind::Label(pairs) => {
                for (k, v) in pairs {
                    let k = expand(&state, k)?;
                    let v = expand(&state, v)?;
                    state.config.config.labels.insert(k, v);
                }
                state.push_empty(
                    format!(
                        "LABEL {}",
                        shown.trim_start_matches(|c: char| c.is_alphabetic()).trim()
                    ),
                    &created,
                );
            }
            InstructionKind::Maintainer(who) => {
                state.config.author = Some(who.clone());
                state.push_empty(format!("MAINTAINER {who}"), &created);
            }
            InstructionKind::Cmd(cmds) => {
                own_cmds
                    .get_or_insert_with(Vec::new)
                    .extend(cmds.iter().cloned());
                state.push_empty(format!("CMD {}", cmds.join(" && ")), &created);
            }
            InstructionKind::Cmds(cmds) => {
                own_cmds = Some(cmds.clone());
                state.sealer.cmds.clear();
                state.push_empty(format!("CMDS {}", cmds.join(" && ")), &created);
            }
            InstructionKind::Launch(apps) => {
                state.sealer.launch = apps.clone();
                state.push_empty(format!("LAUNCH {}", apps.join(" ")), &created);
            }
            InstructionKind::KubeVersion(range) => {
                let range = expand(&state, range)?;
                state.config.config.labels.insert(
                    kubefile::LABEL_SUPPORTED_KUBE_VERSION.to_string(),
                    range.clone(),
                );
                state.sealer.kube_version = Some(range.clone());
                state.push_empty(format!("KUBEVERSION {range}"), &created);
            }
            InstructionKind::AppCmds { name, cmds } => {
                state.sealer.apps.entry(name.clone()).or_default().cmds = cmds.clone();
                state.push_empty(format!("APPCMDS {name} {}", cmds.join(" && ")), &created);
            }
            InstructionKind::AppEnv { name, env } => {
                let mut list = Vec::new();
                for (k, v) in env {
                    let (k, v) = (expand(&state, k)?, expand(&state, v)?);
                    check_env_text(&k, &v, "APPENV").map_err(&step_err)?;
                    list.push(format!("{k}={v}"));
                }
                state
                    .sealer
                    .apps
                    .entry(name.clone())
                    .or_default()
                    .env
                    .extend(list.clone());
                state.push_empty(format!("APPENV {name} {}", list.join(" ")), &created);
            }
            InstructionKind::Copy {
                sources,
                dest,
                chown,
                chmod,
            }
            | InstructionKind::Add {
                sources,
                dest,
                chown,
                chmod,
            } => {
                let is_add = matches!(instruction.kind, InstructionKind::Add { .. });
                if chown.is_some() {
                    return Err(step_err("--chown is not supported: every file of a cluster image is owned by root (ownership is normalised for reproducible layers)".into()));
                }
                let mode = chmod
                    .as_deref()
                    .map(|m| {
                        u32::from_str_radix(m, 8)
                            .map_err(|_| step_err(format!("--chmod={m} is not an octal mode")))
                    })
                    .transpose()?;
                let sources = sources
                    .iter()
                    .map(|s| expand(&state, s))
                    .collect::<Result<Vec<_>, _>>()?;
                let dest = expand(&state, dest)?;
                let mut plan =
                    context::plan(&opts.context, &sources, &dest, is_add).map_err(step_err)?;
                if let Some(mode) = mode {
                    plan.set_mode(mode);
                }
                let keyword = if is_add { "ADD" } else { "COPY" };
                let text = format!(
                    "{keyword} {} {dest}{}",
                    sources.join(" "),
                    mode.map(|m| format!(" --chmod={m:o}")).unwrap_or_default()
                );
                let hit = layer_step(
                    store, &cache, &mut state, &plan, &text, opts, &created, progress,
                )
                .map_err(step_err)?;
                cached_steps += hit as usize;
            }
            InstructionKind::App { name, sources }
            | InstructionKind::Cni { name, sources }
            | InstructionKind::Csi { name, sources } => {
                let mut local = Vec::new();
                for source in sources {
                    match source {
                        AppSource::Local(path) => local.push(expand(&state, path)?),
                        AppSource::Remote(url) => {
                            return Err(step_err(format!(
                                "APP source {url} is remote; builds run offline, so download it into the build context and use local://PATH"
                            )))
                        }
                    }
                }
                let dest = format!("application/apps/{name}/");
                let plan = context::plan(&opts.context, &local, &dest, false).map_err(step_err)?;
                let keyword = instruction.kind.keyword();
                let text = format!("{keyword} {name} {}", local.join(" "));
                let hit = layer_step(
                    store, &cache, &mut state, &plan, &text, opts, &created, progress,
                )
                .map_err(step_err)?;
                cached_steps += hit as usize;
                let app = state.sealer.apps.entry(name.clone()).or_default();
                app.path = format!("application/apps/{name}");
                app.files = plan.files_below(&format!("application/apps/{name}"));
                app.kind = app_kind(&app.files).to_string();
                match keyword {
                    "CNI" => {
                        app.role = Some("cni".into());
                        state.config.config.labels.insert(
                            format!("{}{name}", kubefile::LABEL_KUBE_CNI_PREFIX),
                            "true".into(),
                        );
                    }
                    "CSI" => {
                        app.role = Some("csi".into());
                        state.config.config.labels.insert(
                            format!("{}{name}", kubefile::LABEL_KUBE_CSI_PREFIX),
                            "true".into(),
                        );
                    }
                    _ => {}
                }
            }
            InstructionKind::Run { command } => {
                let env: Vec<(String, String)> = state
                    .args
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain(state.config.config.env.iter().filter_map(|e| {
                        e.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    }))
                    .collect();
                let (argv, text) = match command {
                    Command::Shell(s) => (
                        vec!["/bin/sh".to_string(), "-c".to_string(), s.clone()],
                        format!("RUN {s}"),
                    ),
                    Command::Exec(v) => (
                        v.clone(),
                        format!("RUN {}", serde_json::to_string(v).unwrap_or_default()),
                    ),
                };
                let env_text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let key = chain(
                    &state.key,
                    &[&text, &env_text.join("\n"), &opts.level_key()],
                );
                if !opts.no_cache {
                    if let Some(blob) = cache.step(&key) {
                        progress(BuildEvent::Cached);
                        state.push_layer(key, &blob, text, &created);
                        cached_steps += 1;
                        continue;
                    }
                }
                let tree = match rootfs.as_mut() {
                    Some(tree) => tree,
                    None => rootfs.insert(run::WorkTree::new(store)?),
                };
                tree.catch_up(store, &state.layers)?;
                let outcome =
                    tree.run(&argv, &env, &mut |line| progress(BuildEvent::Output(line)))?;
                if !outcome.success {
                    return Err(BuildError::RunFailed {
                        file: file_name.clone(),
                        line,
                        status: outcome.status,
                        output: outcome.tail,
                    });
                }
                let blob = tree.commit_layer(store, opts.level.zstd(), opts.source_date_epoch)?;
                cache.record_step(&key, &blob);
                progress(BuildEvent::Layer {
                    digest: &blob.descriptor.digest,
                    size: blob.descriptor.size,
                });
                state.push_layer(key, &blob, text, &created);
            }
        }
    }

    if let Some(cmds) = own_cmds {
        state.sealer.cmds.extend(cmds);
    }
    for (k, _) in &opts.build_args {
        if !state.args.contains_key(k) {
            progress(BuildEvent::Output(&format!(
                "warning: --build-arg {k} is not declared by any ARG"
            )));
        }
    }
    state.config.rootfs.diff_ids = state.diff_ids.clone();
    state.config.history = state.history.clone();
    state.config.sealer = (!state.sealer.is_empty()).then(|| state.sealer.clone());
    let config_bytes = serde_json::to_vec(&state.config)
        .map_err(|e| BuildError::io("encoding the image config", std::io::Error::other(e)))?;
    let (config_digest, config_size) = store.put_blob(&config_bytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.to_string()),
        config: Descriptor {
            media_type: MEDIA_TYPE_CONFIG.to_string(),
            digest: config_digest,
            size: config_size,
            annotations: Default::default(),
            platform: None,
        },
        layers: state.layers.clone(),
        annotations: Default::default(),
    };
    let digest = store.commit_image(&opts.tag, &manifest)?;
    Ok(BuildReport {
        reference: opts.tag.clone(),
        digest,
        layers: state.layers.len(),
        steps: total,
        cached_steps,
    })
}

/// A COPY/ADD/APP step: find it in the cache or write its layer. Returns true on a cache hit.
#[allow(clippy::too_many_arguments)]
fn layer_step(
    store: &Store,
    cache: &cache::StepCache,
    state: &mut State,
    plan: &context::Plan,
    text: &str,
    opts: &BuildOptions,
    created: &str,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<bool, String> {
    let level = opts.level_key();
    let fingerprint = chain(&plan.stat_fingerprint()?, &[text]);
    if !opts.no_cache {
        if let Some(content) = cache.memo(&fingerprint) {
            let key = chain(&state.key, &[text, &content, &level]);
            if let Some(blob) = cache.step(&key) {
                progress(BuildEvent::Cached);
                state.push_layer(key, &blob, text.to_string(), created);
                return Ok(true);
            }
        }
    }
    let mut layer = LayerWriter::new(store, opts.level.zstd(), opts.source_date_epoch)
        .map_err(|e| e.to_string())?;
    plan.write(&mut layer)?;
    let blob = layer.finish().map_err(|e| e.to_string())?;
    let content = blob.diff_id.clone();
    let key = chain(&state.key, &[text, &content, &level]);
    cache.record_memo(&fingerprint, &content);
    cache.record_step(&key, &blob);
    progress(BuildEvent::Layer {
        digest: &blob.descriptor.digest,
        size: blob.descriptor.size,
    });
    state.push_layer(key, &blob, text.to_string(), created);
    Ok(false)
}

/// A base image that is not in the store: pulled when its reference names a registry.
fn pull_base(store: &Store, reference: &Reference) -> Result<crate::store::Image, String> {
    if reference.registry.is_none() {
        return Err(format!(
            "base image {reference} is not in the local store; build or load it first (`sealer images` lists what is there), or name it with its registry (REGISTRY/REPO:TAG) to pull it"
        ));
    }
    crate::registry::pull(
        store,
        reference,
        &crate::registry::RegistryOptions::from_env(),
        &|_| {},
    )
    .map_err(|e| format!("pulling base image {reference}: {e}"))
}

/// The most characters of an instruction the build progress shows.
const ECHO_LIMIT: usize = 200;

/// An instruction as the progress lines show it: its first [`ECHO_LIMIT`] characters and its
/// length when it is longer (a 50 MB line is not printed whole).
fn echoed(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()).into(),
        None => text.into(),
    }
}

/// An environment variable must be passable to a process: no NUL byte in its name or value.
fn check_env_text(key: &str, value: &str, keyword: &str) -> Result<(), String> {
    if key.contains('\0') || value.contains('\0') {
        let which = if key.contains('\0') { "name" } else { "value" };
        return Err(format!(
            "{keyword} {}: the {which} contains a NUL byte, which no environment variable can hold; remove it",
            echoed(&key.replace('\0', "\\0"))
        ));
    }
    Ok(())
}

/// The instruction starting at 1-based `line`, continuation lines joined into one.
fn instruction_text(lines: &[&str], line: usize) -> String {
    let mut text = String::new();
    for l in lines.iter().skip(line.saturating_sub(1)) {
        let l = l.trim();
        if text.is_empty() || !l.starts_with('#') {
            match l.strip_suffix('\\') {
                Some(part) => {
                    text.push_str(part.trim_end());
                    text.push(' ');
                }
                None => {
                    text.push_str(l);
                    break;
                }
            }
        }
    }
    text.trim().to_string()
}

/// sealer's app type detection: helm chart, plain Kubernetes YAML, shell scripts, or other.
fn app_kind(files: &[String]) -> &'static str {
    let has = |name: &str| files.iter().any(|f| f == name);
    if has("Chart.yaml") && has("values.yaml") && files.iter().any(|f| f.starts_with("templates/"))
    {
        "helm"
    } else if !files.is_empty()
        && files
            .iter()
            .all(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
    {
        "kube"
    } else if !files.is_empty() && files.iter().all(|f| f.ends_with(".sh")) {
        "shell"
    } else {
        "other"
    }
}

/// `1970-01-01T00:00:00Z` style time for a Unix timestamp.
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn long_instructions_are_echoed_shortened_with_their_length() {
        let line = format!("RUN echo {}", "x".repeat(50 << 20));
        let shown = echoed(&line);
        assert!(shown.chars().count() < 250, "{}", shown.len());
        assert!(shown.starts_with("RUN echo xxx"));
        assert!(
            shown.ends_with(&format!("… ({} bytes)", line.len())),
            "{shown}"
        );
        assert_eq!(echoed("COPY a b"), "COPY a b");
        let multibyte = "é".repeat(300);
        assert!(echoed(&multibyte).starts_with(&"é".repeat(ECHO_LIMIT)));
    }

    #[test]
    fn app_kinds_follow_sealer_detection() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            app_kind(&s(&["Chart.yaml", "values.yaml", "templates/a.yaml"])),
            "helm"
        );
        assert_eq!(app_kind(&s(&["a.yaml", "b.yml"])), "kube");
        assert_eq!(app_kind(&s(&["install.sh"])), "shell");
        assert_eq!(app_kind(&s(&["bin/tool", "x.sh"])), "other");
    }
}
