//! The cluster's container images: the images layer goes only to the registry hosts (every
//! master, or master0 with `ha: false`), where the agent serves it pull-only as a service that
//! outlives the session (`agent registry start`, found running or started again on every run);
//! every host gets containerd's `hosts.toml` for each registry the images name, listing the
//! registry hosts in order so a pull fails over, with no way out to the original registry.
//! Preflight reads containerd's `config_path` on each host; a host without one is refused,
//! naming the file. A host leaving the cluster loses the service and the files.
//!
//! This module decides what runs where; the agent does the work (`agent::registry`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{command_failure, Change, Engine, HostSlot, InstallEvent, StepFailure};
use crate::agent::protocol::{AgentCommand, RegistryCommand, ServiceManager};
use crate::clusterfile::Host;

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

    /// `http://HOST:PORT` of every registry host, in host order.
    pub(super) fn registry_endpoints(&self) -> Vec<String> {
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

    /// What the hosts.toml files say, for the step's key.
    pub(super) fn mirror_text(&self) -> String {
        format!(
            "{:?} -> {:?}",
            self.image_registries(),
            self.registry_endpoints()
        )
    }

    fn unit(&self) -> Result<crate::agent::protocol::UnitName, StepFailure> {
        format!("sealer-registry-{}", self.cluster.name)
            .parse()
            .map_err(StepFailure::fatal)
    }

    /// Preflight for hosts that will pull the image's container images: containerd's
    /// `config_path`, where the hosts.toml files go. Refused when it is not set.
    pub(super) fn containerd_config_path(
        &self,
        slot: &mut HostSlot,
    ) -> Result<Option<PathBuf>, StepFailure> {
        if self.payload.container_images.is_empty() {
            return Ok(None);
        }
        let remote = slot.connected()?;
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::Registry {
                command: RegistryCommand::ConfigPath { config: None },
            },
        );
        let out = self.exec(slot, &cmd, None)?;
        if out.success() {
            return Ok(Some(PathBuf::from(out.stdout_text().trim())));
        }
        if matches!(self.opts.change, Change::Delete { .. }) {
            return Ok(None);
        }
        Err(StepFailure::fatal(format!(
            "the image carries container images for containerd, and {}",
            out.tail()
        )))
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
                    root: self
                        .cluster
                        .rootfs()
                        .join(crate::container_images::IMAGES_DIR),
                    listen,
                    work: self.work_dir(),
                    unit: self.unit()?,
                    manager: ServiceManager::Auto,
                },
            },
        );
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
                        prefix: None,
                    },
                },
            );
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
        );
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
                );
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
