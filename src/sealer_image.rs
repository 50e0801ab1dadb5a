//! Images that sealer (Go, v0.9 and later) built: what their `sealer.image.extension` manifest
//! annotation says (apps, launch list and commands, env, labels), read into this project's
//! image config so that `FROM <sealer image>` + `LAUNCH [...]` builds and `sealer run` installs
//! them. Only an image without a `sealer` section of its own is read this way; the annotation is
//! parsed here and nowhere else. It reads JSON; it touches no file.

use std::collections::BTreeMap;

use crate::store::{App, ImageConfig, Manifest, SealerConfig, SealerExtension};

pub use crate::store::ANNOTATION_SEALER_EXTENSION as ANNOTATION_EXTENSION;

/// Why an image's extension annotation cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("the image's {ANNOTATION_EXTENSION} annotation is not sealer's image extension JSON: {0}")]
pub struct ExtensionError(serde_json::Error);

/// `config` with what the manifest's `sealer.image.extension` says, when the config has no
/// `sealer` section of its own (an image this project built keeps its own). Env and labels of
/// the extension fill in keys the config lacks.
pub fn with_extension(
    manifest: &Manifest,
    mut config: ImageConfig,
) -> Result<ImageConfig, ExtensionError> {
    let Some(text) = manifest.annotations.get(ANNOTATION_EXTENSION) else {
        return Ok(config);
    };
    if config.sealer.as_ref().is_some_and(|s| !s.is_empty()) {
        return Ok(config);
    }
    let ext: SealerExtension = serde_json::from_str(text).map_err(ExtensionError)?;
    let mut sealer = config.sealer.take().unwrap_or_default();
    for app in ext.applications {
        let kind = match app.kind.as_str() {
            "kube" | "helm" | "shell" => app.kind.clone(),
            _ => "other".to_string(),
        };
        sealer.apps.insert(
            app.name.clone(),
            App {
                path: format!("application/apps/{}", app.name),
                kind,
                files: app.files,
                cmds: app.cmds,
                env: app.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                role: None,
            },
        );
    }
    sealer.launch = ext.launch.app_names;
    sealer.cmds = ext.launch.cmds;
    for (k, v) in ext.env {
        let set = config
            .config
            .env
            .iter()
            .any(|e| e.split_once('=').map(|(key, _)| key) == Some(k.as_str()));
        if !set {
            config.config.env.push(format!("{k}={v}"));
        }
    }
    for (k, v) in ext.labels {
        config.config.labels.entry(k).or_insert(v);
    }
    sealer.image_type = ext.image_type;
    config.sealer = (!sealer.is_empty()).then_some(sealer);
    Ok(config)
}

/// An image extension for `config`'s sealer section, as sealer writes it (for tests and for
/// images this project pushes to sealer users).
pub fn extension_of(sealer: &SealerConfig) -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": "v1alpha1",
        "type": sealer.image_type.name(),
        "applications": sealer.apps.iter().map(|(name, app)| serde_json::json!({
            "name": name,
            "type": app.kind,
            "files": app.files,
            "version": "v1",
            "cmds": app.cmds,
            "env": app.env.iter().filter_map(|e| e.split_once('=')).collect::<BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
        "launch": {"cmds": sealer.cmds, "app_names": sealer.launch},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(ext: &str) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:00", "size": 0},
            "layers": []
        }))
        .unwrap();
        m.annotations
            .insert(ANNOTATION_EXTENSION.to_string(), ext.to_string());
        m
    }

    #[test]
    fn sealers_extension_becomes_apps_launch_env_and_labels() {
        let ext = r#"{"buildClient":{"sealerVersion":"v0.9.3","buildahVersion":"v1.27"},"schemaVersion":"v1alpha1","type":"app-installer",
            "applications":[{"name":"nginx","type":"kube","files":["nginx.yaml"],"version":"v1","env":{"replicas":"3"}}],
            "launch":{"app_names":["nginx"]},"env":{"registryDomain":"sea.hub","A":"ext"},"labels":{"l":"v"}}"#;
        let mut config = ImageConfig::default();
        config.config.env.push("A=own".into());
        let config = with_extension(&manifest(ext), config).unwrap();
        let sealer = config.sealer.clone().unwrap();
        assert_eq!(sealer.launch, vec!["nginx"]);
        let app = &sealer.apps["nginx"];
        assert_eq!(app.path, "application/apps/nginx");
        assert_eq!(app.kind, "kube");
        assert_eq!(app.files, vec!["nginx.yaml"]);
        assert_eq!(app.env, vec!["replicas=3"]);
        assert!(config
            .config
            .env
            .contains(&"registryDomain=sea.hub".to_string()));
        assert!(config.config.env.contains(&"A=own".to_string()));
        assert!(!config.config.env.contains(&"A=ext".to_string()));
        assert_eq!(config.config.labels["l"], "v");
        assert_eq!(sealer.image_type, crate::store::ImageType::AppInstaller);
    }

    #[test]
    fn a_malformed_extension_is_an_error_and_an_own_sealer_section_wins() {
        assert!(with_extension(&manifest("{not json"), ImageConfig::default()).is_err());
        let own = ImageConfig {
            sealer: Some(SealerConfig {
                cmds: vec!["echo own".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let kept = with_extension(&manifest("{not json"), own.clone()).unwrap();
        assert_eq!(kept, own);
    }
}
