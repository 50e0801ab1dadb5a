//! [`Builder`]: the state between two Kubefile instructions and one method per instruction group
//! (FROM; ARG/ENV/LABEL/KUBEVERSION/APPENV; CMD/CMDS/LAUNCH/APPCMDS/MAINTAINER; COPY/ADD;
//! APP/CNI/CSI; RUN). Words are expanded by [`Instruction::expanded`] and the text a step echoes is
//! [`Instruction::text`]: the kubefile module's own, so the builder has no second copy of either.

use std::borrow::Cow;
use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::container_images::{self, LABEL_CONTAINER_IMAGES};
use crate::kubefile::{
    self, AppSource, Command, Instruction, InstructionKind, Kubefile, KubefileError,
};
use crate::reference::Reference;
use crate::sbom;
use crate::store::{
    Descriptor, History, Image, ImageConfig, Manifest, RootFs, SealerConfig, Store, StoreError,
    MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST,
};
use crate::template::Template;

use super::cache::StepCache;
use super::context::{self, app_kind, Plan, PlanEntry};
use super::images::Collection;
use super::layer::{BuiltLayer, LayerWriter};
use super::lower;
use super::plugins::PluginRecord;
use super::run::WorkTree;
use super::{oci_arch, rfc3339, BuildError, BuildEvent, BuildOptions, BuildReport};

/// One build in progress: what the image is so far and how to reach the next step's cache entry.
pub(super) struct Builder<'a> {
    store: &'a Store,
    opts: &'a BuildOptions,
    kubefile: &'a Kubefile,
    progress: &'a mut dyn FnMut(BuildEvent),
    cache: StepCache,
    /// The image root RUN steps work in; made by the first RUN that misses the cache.
    tree: Option<WorkTree>,
    /// `created` of the image and of every history entry (from `SOURCE_DATE_EPOCH`).
    created: String,
    build_args: BTreeMap<String, String>,
    /// The line of the instruction being built, for errors.
    line: usize,
    /// Cache key of the filesystem so far: every layer step chains its key onto it.
    key: String,
    layers: Vec<Descriptor>,
    diff_ids: Vec<String>,
    config: ImageConfig,
    sealer: SealerConfig,
    /// ARG values in scope.
    args: BTreeMap<String, String>,
    history: Vec<History>,
    /// CMD/CMDS lines of this Kubefile, added after the base image's at the end.
    own_cmds: Option<Vec<String>>,
    cached_steps: usize,
    /// The container images collected before the first step: the last layer.
    images: Collection,
    /// The `FROM` image: its reference and manifest digest (for the bill of materials).
    base: Option<(String, String)>,
    /// What each layer does to `plugins/`, recorded in the config at the end.
    plugins: PluginRecord,
}

impl<'a> Builder<'a> {
    pub fn new(
        store: &'a Store,
        opts: &'a BuildOptions,
        kubefile: &'a Kubefile,
        progress: &'a mut dyn FnMut(BuildEvent),
        images: Collection,
    ) -> Self {
        let created = rfc3339(opts.source_date_epoch);
        let build_args: BTreeMap<String, String> = opts.build_args.iter().cloned().collect();
        let arch = build_args
            .get("ARCH")
            .cloned()
            .unwrap_or_else(|| oci_arch().to_string());
        Builder {
            store,
            opts,
            kubefile,
            progress,
            cache: StepCache::new(store),
            tree: None,
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
            created,
            build_args,
            line: 0,
            key: String::new(),
            layers: Vec::new(),
            diff_ids: Vec::new(),
            sealer: SealerConfig::default(),
            args: BTreeMap::from([("ARCH".to_string(), arch)]),
            history: Vec::new(),
            own_cmds: None,
            cached_steps: 0,
            images,
            base: None,
            plugins: PluginRecord::default(),
        }
    }

    /// Build step `index` (1-based): echo it, expand its words, run its group's method.
    pub fn step(&mut self, index: usize, instruction: &Instruction) -> Result<(), BuildError> {
        self.line = instruction.line;
        (self.progress)(BuildEvent::Step {
            index,
            total: self.kubefile.instructions.len(),
            text: &echoed(&instruction.text),
        });
        use InstructionKind as K;
        if let K::Copy { chown: Some(_), .. } | K::Add { chown: Some(_), .. } = instruction.kind {
            return Err(self.fail("--chown is not supported: every file of a cluster image is owned by root (ownership is normalised for reproducible layers)"));
        }
        let expanded = match &instruction.kind {
            // A `--build-arg` replaces the default, which is then never expanded.
            K::Arg { name, .. } if self.build_args.contains_key(name) => Cow::Borrowed(instruction),
            _ => Cow::Owned(self.expand(instruction)?),
        };
        match &expanded.kind {
            K::From { image, .. } => self.from(image),
            K::Arg { name, default } => self.arg(name, default.as_deref()),
            K::Env(pairs) => self.env(pairs),
            K::Label(pairs) => self.label(pairs, &instruction.text),
            K::KubeVersion(range) => self.kube_version(range),
            K::AppEnv { name, env } => self.app_env(name, env),
            kind @ (K::Maintainer(_)
            | K::Cmd(_)
            | K::Cmds(_)
            | K::Launch(_)
            | K::AppCmds { .. }) => {
                self.install_time(kind);
                Ok(())
            }
            K::Copy {
                sources,
                dest,
                chmod,
                ..
            } => self.copy("COPY", sources, dest, chmod.as_deref()),
            K::Add {
                sources,
                dest,
                chmod,
                ..
            } => self.copy("ADD", sources, dest, chmod.as_deref()),
            kind @ (K::App { name, sources }
            | K::Cni { name, sources }
            | K::Csi { name, sources }) => self.app(kind.keyword(), name, sources),
            K::Run { command } => self.run(command),
        }
    }

    /// The image: config and manifest written, the tag set. Only called when every step succeeded.
    pub fn finish(mut self) -> Result<BuildReport, BuildError> {
        if let Some(cmds) = self.own_cmds.take() {
            self.sealer.cmds.extend(cmds);
        }
        for (k, _) in &self.opts.build_args {
            if !self.args.contains_key(k) {
                (self.progress)(BuildEvent::Output(&format!(
                    "warning: --build-arg {k} is not declared by any ARG"
                )));
            }
        }
        for (k, v) in &self.opts.labels {
            crate::host_requirements::check_label(k, v).map_err(|message| BuildError::Flag {
                flag: "--label",
                message,
            })?;
            self.config.config.labels.insert(k.clone(), v.clone());
        }
        let mut annotations: std::collections::BTreeMap<String, String> =
            self.opts.annotations.iter().cloned().collect();
        let images = std::mem::take(&mut self.images);
        if !images.is_empty() {
            let label = images.label();
            let created_by = images.created_by();
            (self.progress)(BuildEvent::ImagesLayer {
                images: images.images.len(),
            });
            let (layer, _) = images.layer(self.store, self.opts, &self.cache, self.progress)?;
            let key = self.key.clone();
            self.push_layer(key, &layer, created_by);
            self.config
                .config
                .labels
                .insert(LABEL_CONTAINER_IMAGES.to_string(), label.clone());
            annotations.insert(LABEL_CONTAINER_IMAGES.to_string(), label);
        }
        self.config.rootfs.diff_ids = self.diff_ids.clone();
        self.config.history = self.history.clone();
        self.sealer.plugins = Some(self.plugins.files(
            self.store,
            &self.layers,
            &self.opts.tag.to_string(),
        )?);
        if let Some(image_type) = self.opts.image_type {
            self.sealer.image_type = image_type;
        }
        self.config.sealer = (!self.sealer.is_empty()).then(|| self.sealer.clone());
        if self.opts.sbom {
            self.write_sbom()?;
        }
        let config_bytes = serde_json::to_vec(&self.config)
            .map_err(|e| BuildError::io("encoding the image config", std::io::Error::other(e)))?;
        let (config_digest, config_size) = self.store.put_blob(&config_bytes)?;
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
            layers: self.layers.clone(),
            annotations,
        };
        let digest = self.store.commit_image(&self.opts.tag, &manifest)?;
        Ok(BuildReport {
            reference: self.opts.tag.clone(),
            digest,
            layers: self.layers.len(),
            steps: self.kubefile.instructions.len(),
            cached_steps: self.cached_steps,
        })
    }

    /// The last step: the bill of materials of the finished layers, into the config.
    fn write_sbom(&mut self) -> Result<(), BuildError> {
        let layers: Vec<(Descriptor, String)> = self
            .layers
            .iter()
            .cloned()
            .zip(self.diff_ids.iter().cloned())
            .collect();
        let images = container_images::listed_images(&self.config);
        let bom = sbom::generate(
            self.store,
            &sbom::SbomInput {
                image: &self.opts.tag.store_key(),
                layers: &layers,
                container_images: &images,
                base: self.base.as_ref().map(|(r, d)| (r.as_str(), d.as_str())),
                created: Some(&self.created),
            },
        )
        .map_err(|e| BuildError::io("writing the bill of materials", std::io::Error::other(e)))?;
        (self.progress)(BuildEvent::Sbom {
            packages: bom.components_of("library").count(),
            files: bom.components_of("file").count(),
            images: images.len(),
        });
        let carried = sbom::EmbeddedBom::new(&bom).map_err(|e| {
            BuildError::io("writing the bill of materials", std::io::Error::other(e))
        })?;
        self.config.sbom = Some(carried);
        Ok(())
    }

    /// FROM: an empty root, or the layers, config and apps of a base image (pulled when it names
    /// a registry and is not in the store).
    fn from(&mut self, image: &str) -> Result<(), BuildError> {
        if image.eq_ignore_ascii_case("scratch") {
            self.key = chain("", &["scratch"]);
        } else {
            let reference = Reference::parse(image).map_err(|e| self.fail(e))?;
            let base = match self.store.image(&reference) {
                Ok(base) => base,
                Err(StoreError::ImageNotFound(_)) => {
                    self.pull_base(&reference).map_err(|e| self.fail(e))?
                }
                Err(e) => return Err(e.into()),
            };
            // An image sealer built says what it installs in its manifest's extension.
            let base = Image {
                config: crate::sealer_image::with_extension(&base.manifest, base.config.clone())
                    .map_err(|e| self.fail(format!("base image {image}: {e}")))?,
                ..base
            };
            self.key = chain("", &["from", &base.digest]);
            self.base = Some((reference.to_string(), base.digest.clone()));
            self.layers = base.manifest.layers.clone();
            self.diff_ids = base.config.rootfs.diff_ids.clone();
            self.config.config = base.config.config.clone();
            self.config.author = base.config.author.clone();
            self.history = base.config.history.clone();
            self.sealer = base.config.sealer.clone().unwrap_or_default();
            if let Some(at) = container_images::images_layer_index(&base.manifest) {
                // The base's container images join this build's; they are written again in
                // this image's own images layer, its last.
                let layer = self.layers.remove(at);
                if at < self.diff_ids.len() {
                    self.diff_ids.remove(at);
                }
                if let Some(h) = self
                    .history
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| !h.empty_layer)
                    .nth(at)
                    .map(|(i, _)| i)
                {
                    self.history.remove(h);
                }
                let listed = container_images::listed_images(&base.config);
                self.images.inherit(self.store, &layer, &listed)?;
            }
            self.plugins = PluginRecord::from_base(&base.config, self.layers.len());
            let inherited = &self.sealer.apps;
            self.kubefile
                .check_apps(&|app| inherited.contains_key(app))?;
        }
        self.push_empty(format!("FROM {image}"));
        Ok(())
    }

    /// A base image that is not in the store: pulled with the build's registry options when its
    /// reference names a registry.
    fn pull_base(&self, reference: &Reference) -> Result<Image, String> {
        if reference.registry.is_none() {
            return Err(format!(
                "base image {reference} is not in the local store; build or load it first (`sealer images` lists what is there), or name it with its registry (REGISTRY/REPO:TAG) to pull it"
            ));
        }
        crate::registry::pull(self.store, reference, &self.opts.registry, &|_| {})
            .map_err(|e| format!("pulling base image {reference}: {e}"))
    }

    fn arg(&mut self, name: &str, default: Option<&str>) -> Result<(), BuildError> {
        let value = match self.build_args.get(name) {
            Some(v) => Some(v.clone()),
            None => default.map(str::to_string),
        };
        if let Some(v) = value {
            check_env_text(name, &v, "ARG").map_err(|e| self.fail(e))?;
            // sealer v0.8: an ARG's value is the default of an install-time variable of CMD and
            // LAUNCH. ARGs before FROM only choose the base (`key` is empty until FROM).
            if !self.key.is_empty() {
                self.sealer.args.insert(name.to_string(), v.clone());
            }
            self.args.insert(name.to_string(), v);
        }
        Ok(())
    }

    /// ENV: every pair was expanded with the values from before this line, as in Docker.
    fn env(&mut self, pairs: &[(String, String)]) -> Result<(), BuildError> {
        for (k, v) in pairs {
            check_env_text(k, v, "ENV").map_err(|e| self.fail(e))?;
        }
        let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for (k, v) in pairs {
            self.config
                .config
                .env
                .retain(|item| item.split_once('=').map(|(key, _)| key) != Some(k.as_str()));
            self.config.config.env.push(format!("{k}={v}"));
        }
        self.push_empty(format!("ENV {}", shown.join(" ")));
        Ok(())
    }

    /// LABEL: the history records the line as written (`text`, without its keyword).
    fn label(&mut self, pairs: &[(String, String)], text: &str) -> Result<(), BuildError> {
        for (k, v) in pairs {
            crate::host_requirements::check_label(k, v).map_err(|e| self.fail(e))?;
            self.config.config.labels.insert(k.clone(), v.clone());
        }
        self.push_empty(format!(
            "LABEL {}",
            text.trim_start_matches(|c: char| c.is_alphabetic()).trim()
        ));
        Ok(())
    }

    fn kube_version(&mut self, range: &str) -> Result<(), BuildError> {
        self.config.config.labels.insert(
            kubefile::LABEL_SUPPORTED_KUBE_VERSION.to_string(),
            range.to_string(),
        );
        self.sealer.kube_version = Some(range.to_string());
        self.push_empty(format!("KUBEVERSION {range}"));
        Ok(())
    }

    fn app_env(&mut self, name: &str, env: &[(String, String)]) -> Result<(), BuildError> {
        let mut list = Vec::new();
        for (k, v) in env {
            check_env_text(k, v, "APPENV").map_err(|e| self.fail(e))?;
            list.push(format!("{k}={v}"));
        }
        self.sealer
            .apps
            .entry(name.to_string())
            .or_default()
            .env
            .extend(list.iter().cloned());
        self.push_empty(format!("APPENV {name} {}", list.join(" ")));
        Ok(())
    }

    /// MAINTAINER, CMD, CMDS, LAUNCH, APPCMDS: what the image records for install time.
    fn install_time(&mut self, kind: &InstructionKind) {
        let created_by = match kind {
            InstructionKind::Maintainer(who) => {
                self.config.author = Some(who.clone());
                format!("MAINTAINER {who}")
            }
            InstructionKind::Cmd(cmds) => {
                let cmds = self.sealos_references(cmds);
                self.own_cmds
                    .get_or_insert_with(Vec::new)
                    .extend(cmds.iter().cloned());
                format!("CMD {}", cmds.join(" && "))
            }
            InstructionKind::Cmds(cmds) => {
                let cmds = self.sealos_references(cmds);
                self.own_cmds = Some(cmds.clone());
                self.sealer.cmds.clear();
                format!("CMDS {}", cmds.join(" && "))
            }
            InstructionKind::Launch(apps) => {
                self.sealer.launch = apps.clone();
                format!("LAUNCH {}", apps.join(" "))
            }
            InstructionKind::AppCmds { name, cmds } => {
                self.sealer.apps.entry(name.clone()).or_default().cmds = cmds.clone();
                format!("APPCMDS {name} {}", cmds.join(" && "))
            }
            // `step` sends only the five kinds above here.
            other => other.keyword().to_string(),
        };
        self.push_empty(created_by);
    }

    /// sealos writes variables in CMD as `$(NAME)`; a shell would run NAME as a command. A
    /// `$(NAME)` whose NAME is declared (ARG, ENV) or written in capitals becomes `${NAME}`, the
    /// variable, and the build says so; `$(lowercase)` stays a command substitution.
    fn sealos_references(&mut self, cmds: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for cmd in cmds {
            let (line, names) = sealos_to_shell(cmd, &|name| self.lookup(name).is_some());
            if !names.is_empty() {
                (self.progress)(BuildEvent::Output(&format!(
                    "note: {} in CMD read as variable{} (sealos' $(NAME)), not run as command{}",
                    names
                        .iter()
                        .map(|n| format!("$({n})"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if names.len() == 1 { "" } else { "s" },
                    if names.len() == 1 { "" } else { "s" },
                )));
            }
            out.push(line);
        }
        out
    }

    /// COPY and ADD (`keyword`): build-context files into one layer.
    fn copy(
        &mut self,
        keyword: &str,
        sources: &[String],
        dest: &str,
        chmod: Option<&str>,
    ) -> Result<(), BuildError> {
        let mode = chmod
            .map(|m| {
                u32::from_str_radix(m, 8)
                    .map_err(|_| self.fail(format!("--chmod={m} is not an octal mode")))
            })
            .transpose()?;
        let mut plan = context::plan(&self.opts.context, sources, dest, keyword == "ADD")
            .map_err(|e| self.fail(e))?;
        // One file onto a directory the image already has goes into it (sealer's collector and
        // buildah do the same); it does not replace the directory.
        let into = format!("{}/", dest.trim_end_matches('/'));
        let dest = if self.lands_on_directory(&plan, dest)? {
            plan = context::plan(&self.opts.context, sources, &into, keyword == "ADD")
                .map_err(|e| self.fail(e))?;
            into.as_str()
        } else {
            dest
        };
        if let Some(mode) = mode {
            plan.set_mode(mode);
        }
        self.check_templates(&plan)?;
        let text = format!(
            "{keyword} {} {dest}{}",
            sources.join(" "),
            mode.map(|m| format!(" --chmod={m:o}")).unwrap_or_default()
        );
        self.layer(&plan, &text).map_err(|e| self.fail(e))
    }

    /// Every `.tmpl` file the plan copies parses as the template subset install renders; the
    /// error names the template's own line after the instruction's.
    fn check_templates(&self, plan: &Plan) -> Result<(), BuildError> {
        for entry in &plan.entries {
            let PlanEntry::File { dest, source, .. } = entry else {
                continue;
            };
            if !dest.ends_with(".tmpl") {
                continue;
            }
            let context = self.opts.context.canonicalize().unwrap_or_default();
            let shown = source.strip_prefix(&context).unwrap_or(source);
            let text = std::fs::read(source)
                .map_err(|e| self.fail(format!("reading template {}: {e}", shown.display())))?;
            let text = String::from_utf8(text).map_err(|_| {
                self.fail(format!(
                    "template {} is not UTF-8 text; rename it if it is not a template",
                    shown.display()
                ))
            })?;
            if let Err(e) = Template::parse(&text) {
                return Err(self.fail(format!(
                    "template {}:{}: {}; install renders `.tmpl` files, so fix it or rename the file",
                    shown.display(),
                    e.line,
                    e.message
                )));
            }
        }
        Ok(())
    }

    /// Whether `plan` puts one file (or symlink) at `dest` itself where the image so far has a
    /// directory.
    fn lands_on_directory(&self, plan: &Plan, dest: &str) -> Result<bool, BuildError> {
        if dest.ends_with('/') {
            return Ok(false);
        }
        let [PlanEntry::File { dest: at, .. } | PlanEntry::Symlink { dest: at, .. }] =
            plan.entries.as_slice()
        else {
            return Ok(false);
        };
        if at.is_empty() || self.layers.is_empty() {
            return Ok(false);
        }
        let kind = lower::path_kind(self.store, &self.layers, at)
            .map_err(|e| self.fail(format!("reading the image so far to find {at}: {e}")))?;
        Ok(kind == lower::PathKind::Dir)
    }

    /// APP, CNI and CSI (`keyword`): the app's files into one layer under
    /// `application/apps/NAME/`, and what the image records about the app.
    fn app(&mut self, keyword: &str, name: &str, sources: &[AppSource]) -> Result<(), BuildError> {
        let mut local = Vec::new();
        for source in sources {
            match source {
                AppSource::Local(path) => local.push(path.clone()),
                AppSource::Remote(url) => {
                    return Err(self.fail(format!(
                        "APP source {url} is remote; builds run offline, so download it into the build context and use local://PATH"
                    )))
                }
            }
        }
        let dest = format!("application/apps/{name}/");
        let plan =
            context::plan(&self.opts.context, &local, &dest, false).map_err(|e| self.fail(e))?;
        self.check_templates(&plan)?;
        let text = format!("{keyword} {name} {}", local.join(" "));
        self.layer(&plan, &text).map_err(|e| self.fail(e))?;
        let app = self.sealer.apps.entry(name.to_string()).or_default();
        app.path = format!("application/apps/{name}");
        app.files = plan.files_below(&format!("application/apps/{name}"));
        app.kind = app_kind(&app.files).to_string();
        let label_prefix = match keyword {
            "CNI" => kubefile::LABEL_KUBE_CNI_PREFIX,
            "CSI" => kubefile::LABEL_KUBE_CSI_PREFIX,
            _ => return Ok(()),
        };
        app.role = Some(keyword.to_ascii_lowercase());
        self.config
            .config
            .labels
            .insert(format!("{label_prefix}{name}"), "true".into());
        Ok(())
    }

    /// RUN: the command on the build host in the image root; what it changed is the layer.
    fn run(&mut self, command: &Command) -> Result<(), BuildError> {
        let env: Vec<(String, String)> = self
            .args
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(self.config.config.env.iter().filter_map(|e| {
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
            &self.key,
            &[&text, &env_text.join("\n"), &self.opts.level.to_string()],
        );
        if !self.opts.no_cache {
            if let Some(blob) = self.cache.step(&key) {
                (self.progress)(BuildEvent::Cached);
                self.cached_steps += 1;
                self.push_layer(key, &blob, text);
                return Ok(());
            }
        }
        let tree = match self.tree.as_mut() {
            Some(tree) => tree,
            None => self.tree.insert(WorkTree::new(self.store)?),
        };
        tree.catch_up(self.store, &self.layers)?;
        let progress = &mut *self.progress;
        let outcome = tree
            .run(&argv, &env, &mut |line| progress(BuildEvent::Output(line)))
            .map_err(|e| match (e, command) {
                (BuildError::Io { context, source }, Command::Exec(_)) => BuildError::Step {
                    file: self.kubefile.file.clone(),
                    line: self.line,
                    message: format!(
                        "{text}: {context}: {source}; the exec form runs the program as written, \
                         without a shell (found in this machine's PATH, run in the build root): \
                         give its full path, or write the shell form RUN {}",
                        argv.join(" ")
                    ),
                },
                (e, _) => e,
            })?;
        if !outcome.success {
            return Err(BuildError::RunFailed {
                file: self.kubefile.file.clone(),
                line: self.line,
                command: text,
                status: outcome.status,
                output: outcome.tail,
            });
        }
        let blob = tree.commit_layer(
            self.store,
            self.opts.level.zstd(),
            self.opts.source_date_epoch,
        )?;
        self.cache.record_step(&key, &blob);
        (self.progress)(BuildEvent::Layer {
            digest: &blob.descriptor.digest,
            size: blob.descriptor.size,
        });
        self.push_layer(key, &blob, text);
        Ok(())
    }

    /// A COPY/ADD/APP layer: found in the cache (by a metadata fingerprint of its sources, then
    /// by content) or written.
    fn layer(&mut self, plan: &Plan, text: &str) -> Result<(), String> {
        let level = self.opts.level.to_string();
        let fingerprint = chain(&plan.stat_fingerprint()?, &[text]);
        if !self.opts.no_cache {
            if let Some(content) = self.cache.memo(&fingerprint) {
                let key = chain(&self.key, &[text, &content, &level]);
                if let Some(blob) = self.cache.step(&key) {
                    (self.progress)(BuildEvent::Cached);
                    self.cached_steps += 1;
                    self.push_layer(key, &blob, text.to_string());
                    return Ok(());
                }
            }
        }
        let mut layer = LayerWriter::new(
            self.store,
            self.opts.level.zstd(),
            self.opts.source_date_epoch,
        )
        .map_err(|e| e.to_string())?;
        plan.write(&mut layer)?;
        let blob = layer.finish().map_err(|e| e.to_string())?;
        let key = chain(&self.key, &[text, &blob.diff_id, &level]);
        self.cache.record_memo(&fingerprint, &blob.diff_id);
        self.cache.record_step(&key, &blob);
        (self.progress)(BuildEvent::Layer {
            digest: &blob.descriptor.digest,
            size: blob.descriptor.size,
        });
        self.push_layer(key, &blob, text.to_string());
        Ok(())
    }

    /// The instruction with its words expanded by the ARG and ENV values in scope. The error keeps
    /// the builder's `FILE:LINE: message` form.
    fn expand(&self, instruction: &Instruction) -> Result<Instruction, BuildError> {
        instruction
            .expanded(&self.kubefile.file, &|name| self.lookup(name))
            .map_err(|e| match e {
                KubefileError::Expand { source, .. } => self.fail(source),
                other => other.into(),
            })
    }

    /// A variable's value: the last ENV that set it, else the ARG.
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

    /// An error of the current step: `FILE:LINE: message`.
    fn fail(&self, message: impl ToString) -> BuildError {
        BuildError::Step {
            file: self.kubefile.file.clone(),
            line: self.line,
            message: message.to_string(),
        }
    }

    fn push_layer(&mut self, key: String, blob: &BuiltLayer, created_by: String) {
        self.key = key;
        self.layers.push(blob.descriptor.clone());
        self.diff_ids.push(blob.diff_id.clone());
        self.plugins.push(blob.plugins.clone());
        self.history.push(History {
            created: Some(self.created.clone()),
            created_by: Some(created_by),
            empty_layer: false,
        });
    }

    fn push_empty(&mut self, created_by: String) {
        self.history.push(History {
            created: Some(self.created.clone()),
            created_by: Some(created_by),
            empty_layer: true,
        });
    }
}

/// `line` with every sealos-style `$(NAME)` reference turned into `${NAME}`, and the names
/// turned: NAME is a shell name that `declared` knows or that has no lowercase letter.
fn sealos_to_shell(line: &str, declared: &dyn Fn(&str) -> bool) -> (String, Vec<String>) {
    let mut out = String::with_capacity(line.len());
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("$(") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let is_ref = after[name_len..].starts_with(')')
            && crate::clusterfile::is_env_name(name)
            && (declared(name) || !name.chars().any(|c| c.is_ascii_lowercase()));
        if is_ref {
            out.push_str(&format!("${{{name}}}"));
            names.push(name.to_string());
            rest = &after[name_len + 1..];
        } else {
            out.push_str("$(");
            rest = after;
        }
    }
    out.push_str(rest);
    (out, names)
}

/// A step's cache key: the previous key and the step's parts, hashed.
pub(super) fn chain(prev: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The most characters of an instruction the build progress shows.
const ECHO_LIMIT: usize = 200;

/// An instruction as the progress lines show it: its first [`ECHO_LIMIT`] characters and its
/// length when it is longer (a 50 MB line is not printed whole).
fn echoed(text: &str) -> Cow<'_, str> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealos_variable_references_become_shell_variables_and_commands_stay() {
        let declared = |n: &str| n == "port";
        let (line, names) = sealos_to_shell(
            "helm install x --set p=$(port) --set v=$(VERSION) --set h=$(hostname) $((1+2)) $(A B)",
            &declared,
        );
        assert_eq!(
            line,
            "helm install x --set p=${port} --set v=${VERSION} --set h=$(hostname) $((1+2)) $(A B)"
        );
        assert_eq!(names, vec!["port", "VERSION"]);
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
}
