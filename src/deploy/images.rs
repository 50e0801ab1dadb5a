//! The cluster's container images: the images layer goes only to the registry hosts (every
//! master, or master0 with `ha: false`), where the agent serves it pull-only as a service that
//! outlives the session (`agent registry start`, found running or started again on every run);
//! every host gets containerd's `hosts.toml` for each registry the images name, listing the
//! registry hosts in order so a pull fails over, with no way out to the original registry.
//! Preflight reads containerd's `config_path` on each host; a host without one is refused,
//! naming the file. A host leaving the cluster loses the service and the files.
//!
//! With an external registry (`spec.registry.externalRegistry`) no host serves anything: the
//! installer pushes the images layer's images there before any host is changed (its
//! credentials checked first, so wrong ones stop the install with nothing done), and every
//! host's `hosts.toml` points each registry at `EXTERNAL/v2/[PREFIX/]REGISTRY` with
//! `override_path`. The push runs where the package is, so no image byte crosses SSH and the
//! agent needs no registry client; the installer must reach the registry, as the hosts must.
//!
//! On a registry host each container image is a journal step of its own, keyed by its manifest
//! digest: the agent checks that the served layout holds the image (and records it), so an
//! upgrade whose list gained one image checks only that one, a rerun finds them all served,
//! and an image whose files went missing on the host is put back from the images layer's
//! frames.
//!
//! This module decides what runs where; the agent does the work (`agent::registry`).

use std::collections::BTreeSet;

use super::{command_failure, Change, Engine, HostSlot, InstallEvent, StepFailure};
use crate::agent::protocol::{
    AgentCommand, ImageCheck, ImageChecked, ImageState, RegistryCommand, ServiceManager,
};
use crate::clusterfile::Host;
use crate::container_images::ContainerImage;

impl Engine<'_> {
    /// Whether the payload carries container images in an images layer.
    pub(super) fn has_images_layer(&self) -> bool {
        self.payload.layers.iter().any(|l| l.container_images)
    }

    /// Whether `host` serves the cluster's container images.
    pub(super) fn serves_images(&self, host: &Host) -> bool {
        self.has_images_layer()
            && self
                .cluster
                .registry_hosts()
                .iter()
                .any(|h| h.ip == host.ip)
    }

    /// The registries the image's container images are named by (`docker.io`, `quay.io`, …).
    pub(super) fn image_registries(&self) -> BTreeSet<String> {
        crate::agent::registry::containerd::registries_of(
            self.payload
                .container_images
                .iter()
                .map(|i| i.image.as_str()),
        )
        .unwrap_or_default()
    }

    /// `http://HOST:PORT` of every registry host, in host order; the external registry's
    /// address when there is one.
    pub(super) fn registry_endpoints(&self) -> Vec<String> {
        if let Some(external) = &self.cluster.registry.external {
            return vec![external.endpoint()];
        }
        let port = self.cluster.registry.port;
        self.cluster
            .registry_hosts()
            .iter()
            .map(|h| match h.ip {
                std::net::IpAddr::V6(ip) => format!("http://[{ip}]:{port}"),
                ip => format!("http://{ip}:{port}"),
            })
            .collect()
    }

    /// The repository path under the external registry holding `registry`'s images.
    fn mirror_prefix(&self, registry: &str) -> Option<String> {
        self.cluster
            .registry
            .external
            .as_ref()
            .map(|e| e.path_for(registry))
    }

    /// What the hosts.toml files say, for the step's key.
    pub(super) fn mirror_text(&self) -> String {
        let prefixes: Vec<Option<String>> = self
            .image_registries()
            .iter()
            .map(|r| self.mirror_prefix(r))
            .collect();
        format!(
            "{:?} -> {:?} {prefixes:?}",
            self.image_registries(),
            self.registry_endpoints()
        )
    }

    /// With an external registry: check the credentials, then push every container image of
    /// the images layer there (blobs it holds are not sent again). Runs on the installer
    /// before any host is changed; an error stops the install. Returns what was pushed.
    pub(super) fn push_to_external(
        &self,
    ) -> Result<Option<crate::registry::LayoutPushReport>, String> {
        let Some(external) = &self.cluster.registry.external else {
            return Ok(None);
        };
        if !matches!(self.opts.change, Change::Install | Change::Join { .. }) {
            return Ok(None);
        }
        let Some(layer) = self.payload.layers.iter().position(|l| l.container_images) else {
            return Ok(None);
        };
        let address = &external.address;
        let opts = external_options(external);
        let whose = if opts.credentials.is_some() {
            "the Clusterfile's username/password"
        } else {
            "the credentials `sealer login` keeps"
        };
        let refused = |e: crate::registry::RegistryError| {
            match e {
            crate::registry::RegistryError::WrongCredentials { username, .. } => format!(
                "the external registry {address} (spec.registry.externalRegistry) rejected the user name or password for {username} (from {whose}); nothing was pushed or installed: correct them, or run `sealer login {address}` and leave them out of the Clusterfile"
            ),
            e => format!(
                "the external registry {address} (spec.registry.externalRegistry): {e}; nothing was installed (credentials: {whose})"
            ),
        }
        };
        if let Some(creds) = opts.credentials_for(address).map_err(refused)? {
            crate::registry::verify_credentials(address, &creds, &opts).map_err(refused)?;
        }
        let (_work, layout, images) = self.external_images(external, layer)?;
        (self.events)(InstallEvent::Note {
            host: None,
            text: format!("pushing {} container image(s) to {address}", images.len()),
        });
        let report = crate::registry::push_layout(address, &layout, &images, &opts, &|_| {})
            .map_err(refused)?;
        (self.events)(InstallEvent::Note {
            host: None,
            text: format!(
                "{address} holds the {} container image(s): {} blob(s) sent ({} bytes), {} already there, {} mounted",
                report.images,
                report.uploaded.len(),
                report.bytes_uploaded,
                report.already_present,
                report.mounted
            ),
        });
        Ok(Some(report))
    }

    /// The images layer (number `layer` of the payload) unpacked in a temporary directory (kept
    /// while the first value lives), its OCI layout, and the images in it as they go to the
    /// `external` registry.
    fn external_images(
        &self,
        external: &crate::clusterfile::ExternalRegistry,
        layer: usize,
    ) -> Result<
        (
            tempfile::TempDir,
            std::path::PathBuf,
            Vec<crate::registry::LayoutImage>,
        ),
        String,
    > {
        let work = tempfile::Builder::new()
            .prefix("sealer-images-")
            .tempdir()
            .map_err(|e| format!("creating a directory to read the images layer in: {e}"))?;
        let tree = work.path().join("tree");
        let inputs = self.payload.layer_inputs();
        crate::agent::install_rootfs(&inputs[layer..=layer], &tree)
            .map_err(|e| format!("reading the images layer: {e}"))?;
        let layout = tree.join(crate::container_images::IMAGES_DIR);
        let index_path = layout.join("index.json");
        let index: crate::store::Index = std::fs::read(&index_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("{}: {e}; the package is damaged", index_path.display()))?;
        let mut images = Vec::new();
        for entry in index.manifests {
            let Some(name) = entry
                .annotations
                .get(crate::store::ANNOTATION_REF_NAME)
                .and_then(|n| crate::container_images::ImageName::parse(n).ok())
            else {
                continue;
            };
            images.push(crate::registry::LayoutImage {
                repository: external.repository(&name.registry, &name.repository),
                tag: name.tag.clone(),
                manifest: entry,
            });
        }
        Ok((work, layout, images))
    }

    /// For the dry run, with an external registry: what the install would push there from this
    /// machine before any host is changed: the images, and of their config and layer blobs
    /// those the registry lacks (asked with `HEAD`, as the push does), those it holds and
    /// those a mount would give, as the name of the step. When the registry cannot be asked,
    /// every blob, as an upper bound, and why. `None` without an external registry, images
    /// layer or a change that installs.
    pub(super) fn external_push_plan(&self) -> Option<String> {
        let external = self.cluster.registry.external.as_ref()?;
        if !matches!(self.opts.change, Change::Install | Change::Join { .. }) {
            return None;
        }
        let layer = self
            .payload
            .layers
            .iter()
            .position(|l| l.container_images)?;
        let address = &external.address;
        let (_work, layout, images) = match self.external_images(external, layer) {
            Ok(read) => read,
            Err(e) => {
                return Some(format!(
                    "push the container images to the external registry {address} from this machine (not counted: {e})"
                ))
            }
        };
        let head = |blobs: &[(String, u64)]| {
            let bytes: u64 = blobs.iter().map(|(_, size)| size).sum();
            format!("{} blob(s), {}", blobs.len(), crate::ui::human_bytes(bytes))
        };
        // The registry is asked which blobs it holds (HEAD, nothing written).
        let opts = external_options(external);
        match crate::registry::plan_layout_push(address, &layout, &images, &opts) {
            Ok(plan) => Some(format!(
                "push {} container image(s) to the external registry {address} from this machine: {} to send; {} it holds already, {} to mount from a repository the push fills first",
                plan.images,
                head(&plan.to_upload),
                head(&plan.already_present),
                plan.mounted.len()
            )),
            Err(e) => {
                let mut blobs = std::collections::BTreeMap::new();
                let counted = images
                    .iter()
                    .try_for_each(|i| layout_blobs(&layout, &i.manifest.digest, &mut blobs));
                let all: Vec<(String, u64)> = blobs.into_iter().collect();
                Some(match counted {
                    Ok(()) => format!(
                        "push {} container image(s) to the external registry {address} from this machine: at most {} (the registry could not be asked which it holds: {e})",
                        images.len(),
                        head(&all)
                    ),
                    Err(read) => format!(
                        "push the container images to the external registry {address} from this machine (not counted: {read}; the registry could not be asked: {e})"
                    ),
                })
            }
        }
    }

    fn unit(&self) -> Result<crate::agent::protocol::UnitName, StepFailure> {
        format!("sealer-registry-{}", self.cluster.name)
            .parse()
            .map_err(StepFailure::fatal)
    }

    /// The registry service on a registry host: started, or found running. Returns whether it
    /// had to be started.
    pub(super) fn start_registry(&self, slot: &mut HostSlot) -> Result<bool, StepFailure> {
        let remote = slot.connected()?;
        let listen = std::net::SocketAddr::new(
            match slot.host.ip {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            self.cluster.registry.port,
        );
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::Registry {
                command: RegistryCommand::Start {
                    root: self.images_root(),
                    listen,
                    work: self.work_dir(),
                    unit: self.unit()?,
                    manager: ServiceManager::Auto,
                },
            },
        )?;
        let out = self.exec(slot, &cmd, None)?;
        if !out.success() {
            return Err(command_failure("starting the registry", &out));
        }
        let said = out.stdout_text();
        let started = !said.contains("already running");
        if started {
            (self.events)(InstallEvent::Note {
                host: Some(slot.host.ip),
                text: said.trim().to_string(),
            });
        }
        Ok(started)
    }

    /// The container images that have a journal step of their own: every listed image with a
    /// manifest digest, once per digest.
    pub(super) fn image_steps(&self) -> Vec<&ContainerImage> {
        let mut seen = BTreeSet::new();
        self.payload
            .container_images
            .iter()
            .filter(|i| !i.digest.is_empty() && seen.insert(i.digest.as_str()))
            .collect()
    }

    /// The OCI layout the registry serves on a registry host.
    pub(super) fn images_root(&self) -> std::path::PathBuf {
        self.rootfs().join(crate::container_images::IMAGES_DIR)
    }

    /// Asks the agent whether the served layout holds each of `images` (see
    /// [`RegistryCommand::Check`]): it checks those it has not recorded, and records them.
    fn ask_images(
        &self,
        slot: &mut HostSlot,
        images: &[&ContainerImage],
    ) -> Result<Vec<ImageChecked>, StepFailure> {
        let mut input = Vec::new();
        for image in images {
            let line = serde_json::to_string(&ImageCheck {
                key: self.image_key(&image.digest),
                digest: image.digest.clone(),
                image: image.image.clone(),
            })
            .map_err(|e| StepFailure::fatal(e.to_string()))?;
            input.extend_from_slice(line.as_bytes());
            input.push(b'\n');
        }
        let remote = slot.connected()?;
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::Registry {
                command: RegistryCommand::Check {
                    root: self.images_root(),
                    work: self.work_dir(),
                },
            },
        )?;
        let out = self.exec_ok(
            slot,
            "checking the container images",
            &cmd,
            Some(&mut &input[..]),
        )?;
        let answers: Vec<ImageChecked> = out
            .stdout_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                StepFailure::fatal(format!("the agent's answer on the container images: {e}"))
            })?;
        if answers.len() != images.len()
            || answers
                .iter()
                .zip(images)
                .any(|(a, i)| a.digest != i.digest)
        {
            return Err(StepFailure::fatal(format!(
                "the agent answered on {} container image(s) for {} asked",
                answers.len(),
                images.len()
            )));
        }
        Ok(answers)
    }

    /// The container images' steps on a registry host, once its tree is in place and the
    /// registry runs: each image the journal has and whose files are there is already served;
    /// each other one is checked (every file hashed) and recorded. An image whose files are
    /// missing or damaged has them put back from the images layer's frames (those the host's
    /// spool lacks are sent first) and is checked again; one still incomplete fails the host,
    /// naming it.
    pub(super) fn check_images(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let images = self.image_steps();
        if images.is_empty() {
            return Ok(());
        }
        let answers = self.ask_images(slot, &images)?;
        let mut served = 0;
        let mut checked: Vec<&ContainerImage> = Vec::new();
        let mut broken: Vec<&ContainerImage> = Vec::new();
        let mut paths = BTreeSet::new();
        for (image, answer) in images.iter().zip(&answers) {
            match answer.state {
                ImageState::Served => served += 1,
                ImageState::Checked => checked.push(image),
                ImageState::Incomplete => {
                    (self.events)(InstallEvent::Note {
                        host: Some(slot.host.ip),
                        text: format!(
                            "{}: the registry's store lacks {}; putting it back from the images layer",
                            self.image_step_name(image),
                            few(&answer.missing)
                        ),
                    });
                    paths.extend(answer.missing.iter().cloned());
                    broken.push(image);
                }
            }
        }
        if !broken.is_empty() {
            self.repair_images(slot, paths.into_iter().collect())?;
            let again = self.ask_images(slot, &broken)?;
            for (image, answer) in broken.iter().zip(&again) {
                if answer.state == ImageState::Incomplete {
                    return Err(StepFailure::fatal(format!(
                        "{}: the registry's store {} still lacks {} after it was put back from the images layer; run again, or `sealer delete` the host and install it anew",
                        self.image_step_name(image),
                        self.images_root().display(),
                        few(&answer.missing)
                    )));
                }
                checked.push(image);
            }
        }
        slot.steps_run += checked.len();
        slot.steps_skipped += served;
        slot.images_served += served;
        slot.images_checked += checked.len();
        let names: Vec<&str> = checked.iter().map(|i| i.image.as_str()).collect();
        let checked_text = match names.len() {
            0 => "none checked".to_string(),
            n => format!("{n} checked ({})", few(&names)),
        };
        let repaired = match broken.len() {
            0 => String::new(),
            n => format!(", {n} of them repaired"),
        };
        (self.events)(InstallEvent::Note {
            host: Some(slot.host.ip),
            text: format!("container images: {served} already served, {checked_text}{repaired}"),
        });
        Ok(())
    }

    /// Puts the files `paths` of the served layout back from the images layer: its frames the
    /// spool lacks are sent, then the agent writes the files from them.
    fn repair_images(&self, slot: &mut HostSlot, paths: Vec<String>) -> Result<(), StepFailure> {
        let Some(layer) = self.payload.layers.iter().position(|l| l.container_images) else {
            return Err(StepFailure::fatal(
                "the payload has no images layer to repair the registry's store from".into(),
            ));
        };
        let missing = self.frames_missing(slot, &[layer])?;
        self.spool_frames(slot, layer, &missing)?;
        let mut plan = Vec::new();
        crate::agent::protocol::write_plan(
            &mut plan,
            &super::distribute::plan_of(self.payload, &[layer]),
        )
        .map_err(|e| StepFailure::fatal(e.to_string()))?;
        let remote = slot.connected()?;
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::Registry {
                command: RegistryCommand::Repair {
                    root: self.images_root(),
                    work: self.work_dir(),
                    paths,
                },
            },
        )?;
        self.exec_ok(
            slot,
            "repairing the registry's store",
            &cmd,
            Some(&mut &plan[..]),
        )?;
        Ok(())
    }

    /// containerd's hosts.toml on a host, one per registry the images name.
    pub(super) fn write_mirrors(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let Some(config_path) = slot.containerd_certs.clone() else {
            return Ok(());
        };
        let endpoints = self.registry_endpoints();
        for registry in self.image_registries() {
            let remote = slot.connected()?;
            let cmd = self.agent_cmd(
                remote,
                &AgentCommand::Registry {
                    command: RegistryCommand::Mirror {
                        config_path: config_path.clone(),
                        registry: registry.clone(),
                        endpoints: endpoints.clone(),
                        prefix: self.mirror_prefix(&registry),
                    },
                },
            )?;
            self.exec_ok(slot, &format!("hosts.toml for {registry}"), &cmd, None)?;
        }
        Ok(())
    }

    /// On a host leaving the cluster: the registry service stopped, the hosts.toml removed.
    pub(super) fn unregister(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let remote = slot.connected()?;
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::Registry {
                command: RegistryCommand::Stop {
                    work: self.work_dir(),
                    unit: self.unit()?,
                },
            },
        )?;
        self.exec_ok(slot, "stopping the registry", &cmd, None)?;
        if let Some(config_path) = slot.containerd_certs.clone() {
            for registry in self.image_registries() {
                let remote = slot.connected()?;
                let cmd = self.agent_cmd(
                    remote,
                    &AgentCommand::Registry {
                        command: RegistryCommand::Unmirror {
                            config_path: config_path.clone(),
                            registry: registry.clone(),
                        },
                    },
                )?;
                self.exec_ok(
                    slot,
                    &format!("removing hosts.toml of {registry}"),
                    &cmd,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

/// The registry client's options for the external registry: plain HTTP when it is
/// `insecure`, the Clusterfile's credentials when it has them (else `sealer login`'s).
fn external_options(
    external: &crate::clusterfile::ExternalRegistry,
) -> crate::registry::RegistryOptions {
    let mut opts = crate::registry::RegistryOptions::from_env();
    if external.insecure {
        opts.insecure_registries.push(external.address.clone());
    }
    if let (Some(username), Some(password)) = (&external.username, &external.password) {
        opts.credentials = Some(crate::registry::Credentials {
            username: username.clone(),
            password: password.clone(),
        });
    }
    opts
}

/// Up to three of `items`, then how many more: `a, b, c and 4 more`.
fn few<T: AsRef<str>>(items: &[T]) -> String {
    let shown: Vec<&str> = items.iter().take(3).map(|i| i.as_ref()).collect();
    match items.len().saturating_sub(3) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// Adds to `blobs` (digest → size) the config and layer blobs of the manifest `digest` in the
/// OCI `layout`, and of every manifest an index there lists.
fn layout_blobs(
    layout: &std::path::Path,
    digest: &str,
    blobs: &mut std::collections::BTreeMap<String, u64>,
) -> Result<(), String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{digest} is not a sha256 digest"))?;
    let path = layout.join("blobs/sha256").join(hex);
    let doc: serde_json::Value = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: {e}; the package is damaged", path.display()))?;
    let descriptors = doc["config"]
        .is_object()
        .then_some(&doc["config"])
        .into_iter()
        .chain(doc["layers"].as_array().into_iter().flatten());
    for d in descriptors {
        if let (Some(digest), Some(size)) = (d["digest"].as_str(), d["size"].as_u64()) {
            blobs.insert(digest.to_string(), size);
        }
    }
    for child in doc["manifests"].as_array().into_iter().flatten() {
        if let Some(digest) = child["digest"].as_str() {
            layout_blobs(layout, digest, blobs)?;
        }
    }
    Ok(())
}
