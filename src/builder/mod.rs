//! `sealer build`: a Kubefile and a build context in, a CloudImage in the store out.
//!
//! [`build`] parses the Kubefile and walks its instructions through a `Builder` (`steps.rs`, one
//! method per instruction group), which expands ARG/ENV words with the kubefile module's
//! [`Instruction::expanded`](crate::kubefile::Instruction::expanded), turns each COPY/ADD/APP/RUN
//! into one framed-zstd layer, records install-time meaning (CMD, CMDS, APP, LAUNCH, ...) in the
//! image config, and names the image only when every step succeeded. Steps are cached by
//! parent state + instruction + content read, so an unchanged rebuild writes nothing and yields the
//! same digest. A `FROM` image missing from the store is pulled with [`BuildOptions::registry`].
//! It must not parse Kubefile text, join continuation lines or expand words (that is `kubefile`),
//! nor know about packing or installing.

mod cache;
mod context;
mod layer;
mod run;
mod steps;

use std::path::PathBuf;

use crate::kubefile::{self, KubefileError};
use crate::reference::Reference;
use crate::registry::RegistryOptions;
use crate::store::{Store, StoreError};

pub use layer::{BuiltLayer, LayerWriter};
use steps::Builder;

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
    /// How a `FROM` image that is not in the store is pulled (plain HTTP, extra CA, credential
    /// files); [`RegistryOptions::from_env`] unless the caller sets it.
    pub registry: RegistryOptions,
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
            registry: RegistryOptions::from_env(),
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
    drop(text);
    if !opts.context.is_dir() {
        return Err(BuildError::io(
            format!("build context {}", opts.context.display()),
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let _writers = store.writer_guard()?;
    let mut builder = Builder::new(store, opts, &kubefile, progress);
    for (i, instruction) in kubefile.instructions.iter().enumerate() {
        builder.step(i + 1, instruction)?;
    }
    builder.finish()
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
}
