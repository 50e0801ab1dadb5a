//! The host's pull-only image registry (`agent registry …`); not to be confused with
//! `crate::registry`, the client that moves images between the store and registries.
//!
//! At install the images layer lands as `<rootfs>/images/`, an OCI image layout whose
//! `index.json` names each container image by its `org.opencontainers.image.ref.name`
//! annotation. This module serves that directory over the read half of the OCI distribution
//! API, with the original names kept (containerd's `ns` query tells `docker.io/…` from
//! `quay.io/…`), runs it as a service that outlives the SSH session, and writes containerd's
//! `hosts.toml` so that pulls go to the registry hosts and nowhere else. It never writes into
//! the layout, never contacts another registry and never restarts containerd.
//!
//! The jobs: `layout` (what the directory offers, name resolution), `server` (HTTP),
//! `service` (systemd unit or supervised daemon), `containerd` (`hosts.toml`, `config_path`),
//! `served` (each container image's journal step: the layout holds it, or is repaired).

pub mod containerd;
pub mod layout;
pub mod served;
pub mod server;
pub mod service;

use std::path::Path;

use super::protocol::RegistryCommand;
pub use containerd::{config_path, registries_of, remove_mirror, Mirror, Removal};
pub use service::{ServiceSpec, StartOutcome};

/// Does `command`; the exit status to report when it did not fail.
pub(super) fn run(command: RegistryCommand) -> Result<i32, String> {
    match command {
        RegistryCommand::Serve { root, listen } => {
            server::serve(&root, listen).map_err(|e| e.to_string())?;
        }
        RegistryCommand::Start {
            root,
            listen,
            work,
            unit,
            manager,
        } => {
            let spec = ServiceSpec {
                unit,
                root,
                listen,
                work,
            };
            let outcome = service::start(&spec, manager).map_err(|e| e.to_string())?;
            let what = match outcome {
                StartOutcome::Started => "started",
                StartOutcome::Restarted => "restarted with new arguments",
                StartOutcome::Unchanged => "already running",
            };
            println!(
                "registry {}: {what}, serving {} on {}",
                spec.unit,
                spec.root.display(),
                spec.listen
            );
        }
        RegistryCommand::Supervise {
            root,
            listen,
            work,
            unit,
        } => {
            let spec = ServiceSpec {
                unit,
                root,
                listen,
                work,
            };
            service::supervise(&spec).map_err(|e| e.to_string())?;
        }
        RegistryCommand::Status { work, unit } => {
            let status = service::status(&work, &unit).map_err(|e| e.to_string())?;
            let text = serde_json::to_string(&status).map_err(|e| e.to_string())?;
            println!("{text}");
        }
        RegistryCommand::Stop { work, unit } => {
            let was_running = service::stop(&work, &unit).map_err(|e| e.to_string())?;
            println!(
                "registry {unit}: {}",
                if was_running {
                    "stopped"
                } else {
                    "was not running"
                }
            );
        }
        RegistryCommand::Mirror {
            config_path,
            registry,
            endpoints,
            prefix,
        } => {
            let mirror =
                Mirror::new(&registry, &endpoints, prefix.as_deref()).map_err(|e| e.to_string())?;
            let changed = mirror.write(&config_path).map_err(|e| e.to_string())?;
            println!(
                "{}: {}",
                mirror.file(&config_path).display(),
                if changed { "written" } else { "unchanged" }
            );
        }
        RegistryCommand::Unmirror {
            config_path,
            registry,
        } => {
            let file = config_path.join(&registry).join("hosts.toml");
            let what = match remove_mirror(&config_path, &registry).map_err(|e| e.to_string())? {
                Removal::Removed => "removed",
                Removal::Absent => "absent",
                Removal::NotOurs => "not written by sealer, left alone",
            };
            println!("{}: {what}", file.display());
        }
        RegistryCommand::Check { root, work } => served::check(&root, &work)?,
        RegistryCommand::Repair { root, work, paths } => served::repair(&root, &work, &paths)?,
        RegistryCommand::ConfigPath { config } => {
            let config = config.unwrap_or_else(|| containerd::DEFAULT_CONFIG.into());
            let found = config_path(Path::new(&config)).map_err(|e| e.to_string())?;
            println!("{}", found.display());
        }
    }
    Ok(0)
}
