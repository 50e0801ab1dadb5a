//! The Kubefile language: text in, a typed list of instructions out.
//!
//! This module owns the syntax (comments, parser directives, `\` continuations, quoting, JSON-array
//! forms), the per-instruction argument rules and the file-level rules (FROM first, one LAUNCH or
//! CMDS and last, LAUNCH exclusive with CMD/CMDS, apps declared before they are used), plus
//! [`expand`], the Docker-compatible word expansion the builder applies at build time.
//!
//! It must not touch the file system, the build context, the image store or the network: whether a
//! COPY source exists, what an APP directory contains or what the base image declares is the
//! builder's business. Words are kept **raw** (quotes and `$VAR` references intact) because ARG
//! values only exist at build time (`--build-arg`); each variant says which of its fields are
//! expanded, and [`Instruction::expanded`] applies exactly that (the builder expands through it).
//!
//! Reference for users: `docs/kubefile.md`.

mod expand;
mod parse;

#[cfg(test)]
mod tests;

pub use expand::{expand, ExpandError};
pub use parse::parse;

/// A parsed Kubefile: the instructions in file order, each with the line where it starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Kubefile {
    /// The name given to [`parse`]; used in every error message (`FILE:LINE: ...`).
    pub file: String,
    pub instructions: Vec<Instruction>,
}

/// One instruction and the 1-based line of the file where it starts (continuation lines belong to
/// the instruction they continue).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instruction {
    pub line: usize,
    pub kind: InstructionKind,
    /// The instruction as written, raw, on one line: its physical lines (comment and blank lines
    /// inside a continuation left out) each trimmed and joined by one space, keyword included.
    /// What build progress echoes and what LABEL records in the image history; not serialised.
    #[serde(skip)]
    pub text: String,
}

/// A command of RUN: Docker's two forms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Command {
    /// `RUN echo $HOME`: run as `/bin/sh -c "<text>"`; the text is passed as written (the shell,
    /// not the builder, expands variables from the environment).
    Shell(String),
    /// `RUN ["/bin/tool", "arg"]`: argv, executed without a shell and without any expansion.
    Exec(Vec<String>),
}

/// Where an APP, CNI or CSI takes its files from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum AppSource {
    /// `local://PATH`: a file or directory of the build context (the scheme is stripped here).
    /// PATH is a raw word: the builder expands it like a COPY source.
    Local(String),
    /// `http://...` or `https://...`: downloaded by the builder at build time (the full URL).
    Remote(String),
}

/// What an instruction says. "Raw" fields keep quotes and `$VAR` references exactly as written;
/// "expanded" below means the builder passes the field through [`expand`] (quote removal plus
/// `$VAR`/`${VAR...}` substitution with the ARG and ENV values in scope at that instruction).
/// Serialises (serde) to a stable JSON shape, usable in build-cache keys once expanded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum InstructionKind {
    /// `FROM [--platform=P] IMAGE`. Build time: the base whose layers and config the image starts
    /// from; `scratch` (any case, see [`InstructionKind::is_scratch`]) means an empty root. Only one
    /// FROM per file (no multi-stage builds). Expanded, with the ARGs declared before FROM only.
    From {
        image: String,
        platform: Option<String>,
    },
    /// `COPY [--chown=U:G] [--chmod=MODE] SRC... DEST` or the JSON form `COPY ["SRC", ..., "DEST"]`.
    /// Build time, one layer: context files, directories or globs into DEST, relative to the image
    /// root. All fields expanded (sealer images use `${ARCH}` in sources).
    Copy {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
        chmod: Option<String>,
    },
    /// `ADD` with the same syntax as COPY; local tar archives (tar, tar.gz, tar.zst) are unpacked
    /// into DEST. All fields expanded.
    Add {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
        chmod: Option<String>,
    },
    /// `RUN CMD` or `RUN ["argv", ...]`. Build time, one layer: runs on the build host with the
    /// image root as working directory and the ARG/ENV values in its environment. Not expanded.
    Run { command: Command },
    /// `ENV K V` (one pair, value = rest of the line) or `ENV K=V K2="V 2" ...`. Build time (in the
    /// environment of later RUNs) and install time (image config env, exported to CMDs, LAUNCH and
    /// hooks; cluster env wins). Keys and values expanded.
    Env(Vec<(String, String)>),
    /// `ARG NAME[=DEFAULT]` (one instruction per name when a line declares several). Build time
    /// only: overridden by `--build-arg NAME=V`; visible to later instructions and RUN. DEFAULT is
    /// expanded.
    Arg {
        name: String,
        default: Option<String>,
    },
    /// `LABEL K=V ...` (or the legacy `LABEL K V`): image config labels. Keys and values expanded.
    Label(Vec<(String, String)>),
    /// `MAINTAINER TEXT` (deprecated in Docker): the image config `author`. Not expanded.
    Maintainer(String),
    /// `CMD TEXT` or `CMD ["cmd 1", "cmd 2"]`. Install time: shell command lines run on master0 in
    /// the image root (`cd <rootfs> && <cmd>`), in order, after the cluster is up. Several CMD lines
    /// accumulate (sealer semantics, unlike Docker). The JSON form is a list of command *lines*, as
    /// sealer v0.8 defined it, not an argv. Not expanded at build time.
    Cmd(Vec<String>),
    /// `CMDS ["cmd 1", "cmd 2"]`: like CMD (install-time shell command lines on master0). At most
    /// one, and it must be the last instruction. Not expanded.
    Cmds(Vec<String>),
    /// `APP NAME SOURCE...`: files of application NAME, copied at build time to
    /// `application/apps/<NAME>/`; launched at install time when LAUNCH names it (the builder
    /// detects helm / kube yaml / shell, or APPCMDS says how). Source paths expanded.
    App {
        name: String,
        sources: Vec<AppSource>,
    },
    /// `APPCMDS NAME ["cmd", ...]`: install-time command lines that launch app NAME (run in
    /// `application/apps/<NAME>/`), replacing the generated ones. Not expanded.
    AppCmds { name: String, cmds: Vec<String> },
    /// `APPENV NAME K=V ...`: env of app NAME only (rendering and launch); wins over ENV.
    /// Keys and values expanded.
    AppEnv {
        name: String,
        env: Vec<(String, String)>,
    },
    /// `LAUNCH ["app1", "app2"]` or `LAUNCH app1 app2`: apps launched at install time, in this
    /// order. At most one, last instruction, exclusive with CMD and CMDS. Not expanded.
    Launch(Vec<String>),
    /// `KUBEVERSION RANGE`: the Kubernetes versions the image supports (a semver range, e.g.
    /// `>=1.20 <1.26`), stored as label `app.alpha.sealer.io/supported-kube-version`. Expanded.
    KubeVersion(String),
    /// `CNI NAME SOURCE...`: an APP that is the cluster network plugin; also labels the image
    /// `cluster.alpha.sealer.io/kube-cni-<NAME>=true`. Source paths expanded.
    Cni {
        name: String,
        sources: Vec<AppSource>,
    },
    /// `CSI NAME SOURCE...`: an APP that is a storage plugin; also labels the image
    /// `cluster.alpha.sealer.io/kube-csi-<NAME>=true`. Source paths expanded.
    Csi {
        name: String,
        sources: Vec<AppSource>,
    },
}

/// Label recording KUBEVERSION (sealer's key).
pub const LABEL_SUPPORTED_KUBE_VERSION: &str = "app.alpha.sealer.io/supported-kube-version";
/// Prefix of the label a CNI instruction adds (`<prefix><name>=true`).
pub const LABEL_KUBE_CNI_PREFIX: &str = "cluster.alpha.sealer.io/kube-cni-";
/// Prefix of the label a CSI instruction adds (`<prefix><name>=true`).
pub const LABEL_KUBE_CSI_PREFIX: &str = "cluster.alpha.sealer.io/kube-csi-";

impl InstructionKind {
    /// The instruction keyword as written in upper case (`"COPY"`, `"APPCMDS"`, ...).
    pub fn keyword(&self) -> &'static str {
        match self {
            InstructionKind::From { .. } => "FROM",
            InstructionKind::Copy { .. } => "COPY",
            InstructionKind::Add { .. } => "ADD",
            InstructionKind::Run { .. } => "RUN",
            InstructionKind::Env(_) => "ENV",
            InstructionKind::Arg { .. } => "ARG",
            InstructionKind::Label(_) => "LABEL",
            InstructionKind::Maintainer(_) => "MAINTAINER",
            InstructionKind::Cmd(_) => "CMD",
            InstructionKind::Cmds(_) => "CMDS",
            InstructionKind::App { .. } => "APP",
            InstructionKind::AppCmds { .. } => "APPCMDS",
            InstructionKind::AppEnv { .. } => "APPENV",
            InstructionKind::Launch(_) => "LAUNCH",
            InstructionKind::KubeVersion(_) => "KUBEVERSION",
            InstructionKind::Cni { .. } => "CNI",
            InstructionKind::Csi { .. } => "CSI",
        }
    }

    /// True for `FROM scratch` (compared without regard to case).
    pub fn is_scratch(&self) -> bool {
        matches!(self, InstructionKind::From { image, .. } if image.eq_ignore_ascii_case("scratch"))
    }

    /// The app an APP, CNI or CSI instruction declares.
    pub fn declared_app(&self) -> Option<(&str, &[AppSource])> {
        match self {
            InstructionKind::App { name, sources }
            | InstructionKind::Cni { name, sources }
            | InstructionKind::Csi { name, sources } => Some((name, sources)),
            _ => None,
        }
    }
}

impl Instruction {
    /// This instruction with every field that Docker expands passed through [`expand`] (the
    /// fields each variant documents as "expanded"; the others are returned unchanged). `vars`
    /// gives the ARG and ENV values in scope *before* this instruction: like Docker, all pairs of
    /// one ENV line see the same values. Errors name `FILE:LINE` and the instruction.
    pub fn expanded(
        &self,
        file: &str,
        vars: &impl Fn(&str) -> Option<String>,
    ) -> Result<Instruction, KubefileError> {
        let x = |word: &str| {
            expand(word, vars).map_err(|source| KubefileError::Expand {
                file: file.to_string(),
                line: self.line,
                instruction: self.kind.keyword(),
                source,
            })
        };
        let pairs = |list: &[(String, String)]| -> Result<Vec<(String, String)>, KubefileError> {
            list.iter().map(|(k, v)| Ok((x(k)?, x(v)?))).collect()
        };
        let sources = |list: &[AppSource]| -> Result<Vec<AppSource>, KubefileError> {
            list.iter()
                .map(|s| match s {
                    AppSource::Local(path) => Ok(AppSource::Local(x(path)?)),
                    remote => Ok(remote.clone()),
                })
                .collect()
        };
        let files = |list: &[String]| -> Result<Vec<String>, KubefileError> {
            list.iter().map(|w| x(w)).collect()
        };
        let opt = |o: &Option<String>| o.as_deref().map(&x).transpose();
        use InstructionKind as K;
        let kind = match &self.kind {
            K::From { image, platform } => K::From {
                image: x(image)?,
                platform: opt(platform)?,
            },
            K::Copy {
                sources: s,
                dest,
                chown,
                chmod,
            } => K::Copy {
                sources: files(s)?,
                dest: x(dest)?,
                chown: opt(chown)?,
                chmod: opt(chmod)?,
            },
            K::Add {
                sources: s,
                dest,
                chown,
                chmod,
            } => K::Add {
                sources: files(s)?,
                dest: x(dest)?,
                chown: opt(chown)?,
                chmod: opt(chmod)?,
            },
            K::Env(list) => K::Env(pairs(list)?),
            K::Label(list) => K::Label(pairs(list)?),
            K::Arg { name, default } => K::Arg {
                name: name.clone(),
                default: opt(default)?,
            },
            K::AppEnv { name, env } => K::AppEnv {
                name: name.clone(),
                env: pairs(env)?,
            },
            K::KubeVersion(range) => K::KubeVersion(x(range)?),
            K::App { name, sources: s } => K::App {
                name: name.clone(),
                sources: sources(s)?,
            },
            K::Cni { name, sources: s } => K::Cni {
                name: name.clone(),
                sources: sources(s)?,
            },
            K::Csi { name, sources: s } => K::Csi {
                name: name.clone(),
                sources: sources(s)?,
            },
            other @ (K::Run { .. }
            | K::Maintainer(_)
            | K::Cmd(_)
            | K::Cmds(_)
            | K::AppCmds { .. }
            | K::Launch(_)) => other.clone(),
        };
        Ok(Instruction {
            line: self.line,
            kind,
            text: self.text.clone(),
        })
    }
}

impl Kubefile {
    /// The FROM instruction's image (`"scratch"` or a reference), as written.
    pub fn base_image(&self) -> Option<&str> {
        self.instructions.iter().find_map(|i| match &i.kind {
            InstructionKind::From { image, .. } => Some(image.as_str()),
            _ => None,
        })
    }

    /// Check that every app named by APPCMDS, APPENV and LAUNCH is declared by an earlier
    /// APP/CNI/CSI of this file or is one of the base image's apps (`inherited`). [`parse`] already
    /// runs this with no inherited apps when the base is `scratch`; the builder calls it once it
    /// knows the base image's apps.
    pub fn check_apps(&self, inherited: &dyn Fn(&str) -> bool) -> Result<(), KubefileError> {
        let mut declared: Vec<&str> = Vec::new();
        for instruction in &self.instructions {
            let used: Vec<&str> = match &instruction.kind {
                InstructionKind::AppCmds { name, .. } | InstructionKind::AppEnv { name, .. } => {
                    vec![name.as_str()]
                }
                InstructionKind::Launch(apps) => apps.iter().map(String::as_str).collect(),
                kind => {
                    if let Some((name, _)) = kind.declared_app() {
                        declared.push(name);
                    }
                    continue;
                }
            };
            for app in used {
                if !declared.contains(&app) && !inherited(app) {
                    return Err(KubefileError::UndeclaredApp {
                        file: self.file.clone(),
                        line: instruction.line,
                        instruction: instruction.kind.keyword(),
                        app: app.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Why a Kubefile was rejected. Every variant names the file and the 1-based line, and its message
/// says what is wrong and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubefileError {
    /// Malformed text: missing or extra arguments, bad JSON array, bad `KEY=VALUE`, bad quoting.
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    /// A keyword that is neither a Kubefile instruction nor a Dockerfile one.
    #[error(
        "{file}:{line}: unknown instruction `{name}`; Kubefile instructions are FROM, COPY, ADD, \
         RUN, ENV, ARG, LABEL, MAINTAINER, CMD, CMDS, APP, APPCMDS, APPENV, LAUNCH, KUBEVERSION, \
         CNI and CSI"
    )]
    UnknownInstruction {
        file: String,
        line: usize,
        name: String,
    },
    /// A Docker feature Kubefiles do not have (WORKDIR, multi-stage, heredocs, RUN --mount, ...).
    #[error("{file}:{line}: {message}")]
    Unsupported {
        file: String,
        line: usize,
        message: String,
    },
    /// A file-level rule: FROM first, LAUNCH/CMDS once and last, LAUNCH exclusive with CMD/CMDS.
    #[error("{file}:{line}: {message}")]
    Order {
        file: String,
        line: usize,
        message: String,
    },
    /// APPCMDS, APPENV or LAUNCH names an app that no earlier APP/CNI/CSI (nor the base) declares.
    #[error(
        "{file}:{line}: {instruction} names app `{app}`, which is not declared before it; add \
         `APP {app} local://...` above this line (or use a base image that has it)"
    )]
    UndeclaredApp {
        file: String,
        line: usize,
        instruction: &'static str,
        app: String,
    },
    /// A word could not be expanded at build time (bad `${...}`, `${VAR:?msg}` unset, bad quotes).
    #[error("{file}:{line}: {instruction}: {source}")]
    Expand {
        file: String,
        line: usize,
        instruction: &'static str,
        source: ExpandError,
    },
}

impl KubefileError {
    /// The file name given to [`parse`].
    pub fn file(&self) -> &str {
        match self {
            KubefileError::Syntax { file, .. }
            | KubefileError::UnknownInstruction { file, .. }
            | KubefileError::Unsupported { file, .. }
            | KubefileError::Order { file, .. }
            | KubefileError::UndeclaredApp { file, .. }
            | KubefileError::Expand { file, .. } => file,
        }
    }

    /// The 1-based line of the offending instruction.
    pub fn line(&self) -> usize {
        match self {
            KubefileError::Syntax { line, .. }
            | KubefileError::UnknownInstruction { line, .. }
            | KubefileError::Unsupported { line, .. }
            | KubefileError::Order { line, .. }
            | KubefileError::UndeclaredApp { line, .. }
            | KubefileError::Expand { line, .. } => *line,
        }
    }
}
