//! `sealer build`: a Kubefile and a build context in, a CloudImage in the store out.
//!
//! [`build`] parses the Kubefile and walks its instructions through a `Builder` (`steps.rs`, one
//! method per instruction group), which expands ARG/ENV words with the kubefile module's
//! [`Instruction::expanded`](crate::kubefile::Instruction::expanded), turns each COPY/ADD/APP/RUN
//! into one framed-zstd layer, records install-time meaning (CMD, CMDS, APP, LAUNCH, ...) in the
//! image config, and names the image only when every step succeeded. Steps are cached by
//! parent state + instruction + content read, so an unchanged rebuild writes nothing and yields the
//! same digest. A `FROM` image missing from the store is pulled with [`BuildOptions::registry`].
//!
//! Container images (`manifests/imageList`, `--image-list`, the pod specs of kube manifests; see
//! `container_images`) are declared, resolved, pinned and fetched before the first step, so a bad
//! reference or an unreachable image leaves the store as it was; after the last step they become
//! the images layer (`images.rs`), the image's last layer.
//! It must not parse Kubefile text, join continuation lines or expand words (that is `kubefile`),
//! nor know about packing or installing.

mod cache;
mod context;
mod images;
mod layer;
mod lower;
mod plugins;
mod run;
mod steps;

use std::path::PathBuf;

use crate::container_images::{self, Declarations, DeclareError, DeclaredImage};
use crate::kubefile::{self, AppSource, InstructionKind, Kubefile, KubefileError};
use crate::reference::Reference;
use crate::registry::{RegistryError, RegistryOptions};
use crate::store::{Store, StoreError};

pub use images::ImageEvent;
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
    /// files); [`RegistryOptions::from_env`] unless the caller sets it. Container images are
    /// fetched the same way.
    pub registry: RegistryOptions,
    /// `--image-list FILE`s: more container images to collect, besides `manifests/imageList`.
    pub image_lists: Vec<PathBuf>,
    /// `--ignored-image-list FILE`s: container images not to collect.
    pub ignored_image_lists: Vec<PathBuf>,
    /// Write the image's bill of materials (the build's last step); true unless `--no-sbom` or
    /// `SEALER_BUILD_SBOM=0`.
    pub sbom: bool,
    /// `--type`: the image's kind; `None` keeps the `FROM` image's (a cluster image from
    /// scratch).
    pub image_type: Option<crate::store::ImageType>,
    /// `--label K=V`: config labels set after the last instruction.
    pub labels: Vec<(String, String)>,
    /// `--annotation K=V`: annotations of the image manifest.
    pub annotations: Vec<(String, String)>,
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
            image_lists: Vec::new(),
            ignored_image_lists: Vec::new(),
            sbom: std::env::var("SEALER_BUILD_SBOM").map_or(true, |v| v.trim() != "0"),
            image_type: None,
            labels: Vec::new(),
            annotations: Vec::new(),
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
    /// After the last step: the images layer of `images` container images is written (then
    /// `Layer`) or found in the cache (then `Cached`).
    ImagesLayer { images: usize },
    /// `done` of the `total` bytes of image layers the store lacks have been fetched into the
    /// images layer being written.
    ImagesFetching { done: u64, total: u64 },
    /// The images layer is written; `bytes` of it were fetched from registries.
    ImagesFetched { bytes: u64 },
    /// After the last layer: the bill of materials lists this many Debian packages, files and
    /// container images.
    Sbom {
        packages: usize,
        files: usize,
        images: usize,
    },
    /// A container image being collected (before the first step).
    ContainerImage {
        reference: &'a str,
        event: ImageEvent<'a>,
    },
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
        "{file}:{line}: {command} failed with {status}; the store is unchanged. {}",
        run_output(output)
    )]
    RunFailed {
        file: String,
        line: usize,
        /// The step as written (`RUN make install`).
        command: String,
        status: String,
        output: String,
    },
    /// A build option with a value the build refuses (`--label`).
    #[error("{flag} {message}; nothing was written to the store")]
    Flag { flag: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A container-image declaration that cannot be read; nothing was written.
    #[error(transparent)]
    Declare(#[from] DeclareError),
    /// A container image that cannot be collected; nothing was written.
    #[error("{origin}: container image {reference}: {source}; nothing was written to the store")]
    ContainerImage {
        reference: String,
        /// `FILE:LINE` of its first declaration.
        origin: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a failed RUN printed, for its error: the last lines, or what to do when it printed
/// nothing.
fn run_output(output: &str) -> String {
    if output.trim().is_empty() {
        "It printed nothing, so it says nothing about why: make the command report its failure \
         (cmd || { echo \"cmd failed: ...\" >&2; exit 1; }) or run it by hand to see"
            .to_string()
    } else {
        format!("Last output:\n{output}")
    }
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

/// The architecture a build targets: its `ARCH` build argument, else this machine's
/// ([`oci_arch`]). Container images are collected for `linux/<this>`.
pub fn target_arch(opts: &BuildOptions) -> String {
    opts.build_args
        .iter()
        .rev()
        .find(|(k, _)| k == "ARCH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| oci_arch().to_string())
}

/// The container images a build of `opts` would collect, each with where it was declared
/// (`sealer build --list-images`). Reads the Kubefile and the build context only.
pub fn declared_images(opts: &BuildOptions) -> Result<Vec<DeclaredImage>, BuildError> {
    let kubefile = read_kubefile(opts)?;
    declarations(opts, &kubefile)
}

fn declarations(
    opts: &BuildOptions,
    kubefile: &Kubefile,
) -> Result<Vec<DeclaredImage>, BuildError> {
    // APP sources as the build will expand them: build arguments, ARCH, then ARG defaults.
    let mut defaults: Vec<(String, String)> = Vec::new();
    for instruction in &kubefile.instructions {
        if let InstructionKind::Arg {
            name,
            default: Some(value),
        } = &instruction.kind
        {
            defaults.push((name.clone(), value.clone()));
        }
    }
    let arch = target_arch(opts);
    let lookup = |name: &str| -> Option<String> {
        opts.build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| (name == "ARCH").then(|| arch.clone()))
            .or_else(|| {
                defaults
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
    };
    let mut apps = Vec::new();
    for instruction in &kubefile.instructions {
        if !matches!(
            instruction.kind,
            InstructionKind::App { .. } | InstructionKind::Cni { .. } | InstructionKind::Csi { .. }
        ) {
            continue;
        }
        // An APP whose words do not expand here fails at its own step with the real error.
        let Ok(expanded) = instruction.expanded(&kubefile.file, &lookup) else {
            continue;
        };
        if let InstructionKind::App { name, sources }
        | InstructionKind::Cni { name, sources }
        | InstructionKind::Csi { name, sources } = &expanded.kind
        {
            for source in sources {
                if let AppSource::Local(path) = source {
                    let path = path.trim_start_matches('/');
                    apps.push((name.clone(), opts.context.join(path)));
                }
            }
        }
    }
    Ok(container_images::declared_images(&Declarations {
        context: opts.context.clone(),
        image_lists: opts.image_lists.clone(),
        ignored_lists: opts.ignored_image_lists.clone(),
        apps,
    })?)
}

fn read_kubefile(opts: &BuildOptions) -> Result<Kubefile, BuildError> {
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
    Ok(kubefile)
}

/// Build the image described by `opts`.
pub fn build(
    store: &Store,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(BuildEvent),
) -> Result<BuildReport, BuildError> {
    let kubefile = read_kubefile(opts)?;
    let declared = declarations(opts, &kubefile)?;
    let _writers = store.writer_guard()?;
    let collection = images::collect(store, opts, &declared, &target_arch(opts), progress)?;
    let mut builder = Builder::new(store, opts, &kubefile, progress, collection);
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
