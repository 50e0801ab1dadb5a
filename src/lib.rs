//! sealer: cluster images that install anywhere, from one file.
//!
//! The library holds all behaviour; the `sealer` CLI (`src/cli/`) and the `sealer-stub` installer
//! (`stub/`) only parse arguments, call these functions and print.

pub mod address;
pub mod agent;
pub mod builder;
pub mod clusterfile;
pub mod clusters;
pub mod container_images;
pub mod deploy;
pub mod hashing;
pub mod host_key;
pub mod host_requirements;
pub mod inspect;
pub mod install;
pub mod kubefile;
pub mod package;
pub mod reference;
pub mod registry;
pub mod retry;
pub mod sbom;
pub mod sealer_image;
pub mod secret;
pub mod shell;
pub mod ssh;
pub mod store;
pub mod template;
pub mod trust;
pub mod ui;
pub mod variables;
