//! Hooks shipped inside an image: the `plugins/*.yaml` files of its root filesystem, read from
//! the payload's layers before any host is touched.
//!
//! Each layer is decoded frame by frame (every frame is an independent zstd or xz stream, so
//! memory stays bounded by one frame) and walked as a tar stream; only regular files directly
//! under `plugins/` whose names end in `.yaml` or `.yml` are kept. Layers apply in order with OCI
//! whiteouts (`plugins/.wh.NAME`, `plugins/.wh..wh..opq`, `.wh.plugins`), so the result is what
//! the unpacked rootfs holds. sealer v0.5-v0.7 images keep their hooks in `plugin/`: those are
//! read the same way (with `plugin/.wh.NAME`, `.wh.plugin`, ...) and named `plugin/NAME`, so
//! they sort after most `plugins/` files. Files are parsed as plugin-only Clusterfiles in file-name order;
//! the engine runs them before the Clusterfile's own plugins, as sealer does. This module reads
//! the payload; it never writes and never talks to hosts.
//!
//! The build records the result in the image config (`sealer.plugins`, the file names and their
//! text): the layer writer notes what each entry does to `plugins/` ([`entry_effect`]) and the
//! builder folds the layers' [`PluginChange`]s. An image with the record is not decoded here at
//! all; an image built before the record existed is (the fallback).

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read};

use super::payload::{Payload, PayloadLayer};
use crate::clusterfile::{Clusterfile, ClusterfileError, Plugin};

/// Why the image's plugins could not be read. A plugin file the Clusterfile parser refuses keeps
/// its [`ClusterfileError`] (an unsupported feature stays one).
#[derive(Debug, thiserror::Error)]
pub enum ImagePluginError {
    #[error("reading {layer} of {image}: {source}")]
    Layer {
        layer: String,
        image: String,
        source: io::Error,
    },
    #[error("{layer} of {image}: bad entry name: {source}")]
    EntryName {
        layer: String,
        image: String,
        source: io::Error,
    },
    #[error("{layer} of {image}: reading {}: {source}", in_rootfs(name))]
    File {
        layer: String,
        image: String,
        name: String,
        source: io::Error,
    },
    #[error("{} in image {image}: {source}", in_rootfs(name))]
    Parse {
        name: String,
        image: String,
        source: Box<ClusterfileError>,
    },
}

/// What one layer does to the image's plugin files, in entry order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum PluginChange {
    /// `plugins/` replaced or made opaque: every lower file is gone.
    Clear,
    /// The same for `plugin/` (sealer v0.5-v0.7).
    ClearLegacy,
    /// `plugins/NAME` deleted or replaced by something that is not a regular file.
    Remove { name: String },
    /// `plugins/NAME` written with this text.
    Put { name: String, text: String },
}

/// What a tar entry at `path` does to the plugin files, before its content is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryEffect {
    Clear,
    ClearLegacy,
    Remove(String),
    /// A plugin file: its content (UTF-8 text) is the file's new text.
    Read(String),
}

/// The effect of a tar entry named `path` (as stored: `./` and `/` prefixes allowed) of the
/// given type; `None` when it does not touch `plugins/*.yaml`.
pub fn entry_effect(path: &str, entry_type: tar::EntryType) -> Option<EntryEffect> {
    let path = path.trim_start_matches("./").trim_start_matches('/');
    let path = path.trim_end_matches('/');
    if path == ".wh.plugins" || path == "plugins" && !entry_type.is_dir() {
        return Some(EntryEffect::Clear);
    }
    if path == ".wh.plugin" || path == "plugin" && !entry_type.is_dir() {
        return Some(EntryEffect::ClearLegacy);
    }
    // sealer v0.5-v0.7 images keep their hooks in `plugin/`: named `plugin/NAME` here.
    let (name, legacy) = match path.strip_prefix("plugins/") {
        Some(name) => (name, false),
        None => (path.strip_prefix("plugin/")?, true),
    };
    if name.contains('/') {
        return None;
    }
    let named = |n: &str| {
        if legacy {
            format!("{LEGACY_DIR}{n}")
        } else {
            n.to_string()
        }
    };
    if name == ".wh..wh..opq" {
        return Some(if legacy {
            EntryEffect::ClearLegacy
        } else {
            EntryEffect::Clear
        });
    }
    if let Some(hidden) = name.strip_prefix(".wh.") {
        return Some(EntryEffect::Remove(named(hidden)));
    }
    if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
        return None;
    }
    if !entry_type.is_file() {
        return Some(EntryEffect::Remove(named(name)));
    }
    Some(EntryEffect::Read(named(name)))
}

/// Where the plugin file `name` (as [`plugin_files`] names it) is in the rootfs.
fn in_rootfs(name: &str) -> String {
    if name.starts_with(LEGACY_DIR) {
        name.to_string()
    } else {
        format!("plugins/{name}")
    }
}

/// The prefix of the names of hooks found in `plugin/` (sealer v0.5-v0.7) rather than `plugins/`.
pub const LEGACY_DIR: &str = "plugin/";

/// Apply one change to the plugin files.
pub fn apply(files: &mut BTreeMap<String, String>, change: PluginChange) {
    match change {
        PluginChange::Clear => files.retain(|name, _| name.starts_with(LEGACY_DIR)),
        PluginChange::ClearLegacy => files.retain(|name, _| !name.starts_with(LEGACY_DIR)),
        PluginChange::Remove { name } => {
            files.remove(&name);
        }
        PluginChange::Put { name, text } => {
            files.insert(name, text);
        }
    }
}

/// The plugin changes of one layer's uncompressed tar stream. `layer` and `image` name it in
/// errors.
pub fn tar_changes(
    stream: impl Read,
    layer: &str,
    image: &str,
) -> Result<Vec<PluginChange>, ImagePluginError> {
    let read_err = |source| ImagePluginError::Layer {
        layer: layer.to_string(),
        image: image.to_string(),
        source,
    };
    let mut changes = Vec::new();
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let path = entry
            .path()
            .map_err(|source| ImagePluginError::EntryName {
                layer: layer.to_string(),
                image: image.to_string(),
                source,
            })?
            .to_string_lossy()
            .into_owned();
        match entry_effect(&path, entry.header().entry_type()) {
            None => {}
            Some(EntryEffect::Clear) => changes.push(PluginChange::Clear),
            Some(EntryEffect::ClearLegacy) => changes.push(PluginChange::ClearLegacy),
            Some(EntryEffect::Remove(name)) => changes.push(PluginChange::Remove { name }),
            Some(EntryEffect::Read(name)) => {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|source| ImagePluginError::File {
                        layer: layer.to_string(),
                        image: image.to_string(),
                        name: name.clone(),
                        source,
                    })?;
                changes.push(PluginChange::Put { name, text });
            }
        }
    }
    Ok(changes)
}

/// Plugins files in the image, by file name (`plugins/NAME`), after all layers: the record the
/// build kept in the config, else (an image built before it) read from the layers.
pub fn plugin_files(payload: &Payload) -> Result<BTreeMap<String, String>, ImagePluginError> {
    if let Some(recorded) = payload
        .config
        .sealer
        .as_ref()
        .and_then(|s| s.plugins.as_ref())
    {
        return Ok(recorded.clone());
    }
    decoded_plugin_files(payload)
}

/// [`plugin_files`] by decoding every layer (but the images layer).
pub fn decoded_plugin_files(
    payload: &Payload,
) -> Result<BTreeMap<String, String>, ImagePluginError> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    // The images layer holds an OCI layout under `images/`, never `plugins/`.
    for layer in payload.layers.iter().filter(|l| !l.container_images) {
        for change in tar_changes(
            LayerTarStream::new(payload, layer),
            &layer.label,
            &payload.image,
        )? {
            apply(&mut files, change);
        }
    }
    Ok(files)
}

/// The image's plugins in file-name order; a malformed file is an error naming it.
pub fn image_plugins(payload: &Payload) -> Result<Vec<Plugin>, ImagePluginError> {
    parse_plugin_files(&plugin_files(payload)?, &payload.image)
}

/// The plugins of `files` (`plugins/NAME` to its text, as [`plugin_files`] gives them or the
/// config records them) in file-name order; a malformed file is an error naming it.
pub fn parse_plugin_files(
    files: &BTreeMap<String, String>,
    image: &str,
) -> Result<Vec<Plugin>, ImagePluginError> {
    let mut plugins = Vec::new();
    for (name, text) in files {
        let file = Clusterfile::parse(text).map_err(|source| ImagePluginError::Parse {
            name: name.clone(),
            image: image.to_string(),
            source: Box::new(source),
        })?;
        plugins.extend(file.plugins);
    }
    Ok(plugins)
}

/// A layer's uncompressed tar stream, decoded one frame at a time.
struct LayerTarStream<'a> {
    layer: &'a PayloadLayer,
    source: &'a dyn packer::source::ByteSource,
    next: usize,
    current: Cursor<Vec<u8>>,
}

impl<'a> LayerTarStream<'a> {
    fn new(payload: &'a Payload, layer: &'a PayloadLayer) -> Self {
        LayerTarStream {
            layer,
            source: payload.sources[layer.source].as_ref(),
            next: 0,
            current: Cursor::new(Vec::new()),
        }
    }

    /// Decode the next frame; false at the end of the layer.
    fn advance(&mut self) -> io::Result<bool> {
        let Some(frame) = self.layer.frames.get(self.next) else {
            return Ok(false);
        };
        self.next += 1;
        let compressed = self
            .source
            .bytes(self.layer.base + frame.offset, frame.compressed_len)?;
        let mut plain = Vec::new();
        packer::codec::frame_reader(self.layer.compression, compressed)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.detail()))?
            .read_to_end(&mut plain)?;
        self.source
            .release(self.layer.base + frame.offset, frame.compressed_len);
        self.current = Cursor::new(plain);
        Ok(true)
    }
}

impl Read for LayerTarStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            if !self.advance()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::payload::Agent;

    /// A tar stream of `(path, Some(content) | None for a directory)`.
    fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            match content {
                Some(text) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(text.len() as u64);
                    header.set_mode(0o644);
                    builder
                        .append_data(&mut header, path, text.as_bytes())
                        .unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, &[][..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    /// A layer whose tar is split into two independent zstd frames at an arbitrary byte.
    fn layer(tar: Vec<u8>) -> (PayloadLayer, Vec<u8>) {
        let cut = tar.len() / 3;
        let mut blob = Vec::new();
        let mut frames = Vec::new();
        for part in [&tar[..cut], &tar[cut..]] {
            let compressed = zstd::bulk::compress(part, 3).unwrap();
            frames.push(packer::frames::Frame {
                offset: blob.len() as u64,
                compressed_len: compressed.len() as u64,
                uncompressed_len: part.len() as u64,
                sha256: String::new(),
                blake3: None,
            });
            blob.extend_from_slice(&compressed);
        }
        let layer = PayloadLayer {
            label: "layer".into(),
            compression: packer::Compression::Zstd,
            base: 0,
            frames,
            source: 0,
            container_images: false,
        };
        (layer, blob)
    }

    fn payload(parts: Vec<(PayloadLayer, Vec<u8>)>) -> Payload {
        let mut layers = Vec::new();
        let mut sources: Vec<Box<dyn packer::source::ByteSource>> = Vec::new();
        for (mut layer, blob) in parts {
            layer.source = sources.len();
            sources.push(Box::new(blob));
            layers.push(layer);
        }
        Payload {
            id: "0".repeat(64),
            image: "test:v1".into(),
            config: Default::default(),
            layers,
            sources,
            agent: Agent::from_bytes(Vec::new()),
            container_images: Vec::new(),
        }
    }

    fn shell(name: &str, phase: &str) -> String {
        format!(
            "apiVersion: sealer.io/v1\nkind: Plugin\nmetadata:\n  name: {name}\nspec:\n  type: SHELL\n  action: {phase}\n  scope: master\n  data: |\n    echo {name}\n"
        )
    }

    #[test]
    fn plugins_come_from_plugins_yaml_across_layers_with_whiteouts() {
        let a = shell("a", "post-init-host");
        let b = shell("b", "pre-init-host");
        let c = shell("c", "post-install");
        let lower = tar_of(&[
            ("plugins", None),
            ("plugins/b.yaml", Some(&b)),
            ("plugins/gone.yaml", Some(&shell("gone", "pre-install"))),
            ("plugins/readme.txt", Some("not a plugin")),
            ("etc/plugins/x.yaml", Some("not: [valid")),
        ]);
        let upper = tar_of(&[
            ("./plugins/a.yaml", Some(&a)),
            ("plugins/.wh.gone.yaml", Some("")),
            ("plugins/nested", None),
            (
                "plugins/nested/n.yaml",
                Some("ignored: deeper than plugins/"),
            ),
            ("plugins/c.yml", Some(&c)),
        ]);
        let p = payload(vec![layer(lower), layer(upper)]);
        let names: Vec<String> = image_plugins(&p)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn an_opaque_plugins_dir_hides_lower_plugins() {
        let lower = tar_of(&[("plugins/old.yaml", Some(&shell("old", "pre-init-host")))]);
        let upper = tar_of(&[
            ("plugins/.wh..wh..opq", Some("")),
            ("plugins/new.yaml", Some(&shell("new", "pre-init-host"))),
        ]);
        let plugins = image_plugins(&payload(vec![layer(lower), layer(upper)])).unwrap();
        assert_eq!(plugins.len(), 1);
        assert_eq!(plugins[0].name, "new");
    }

    #[test]
    fn the_record_the_build_kept_is_used_without_reading_the_layers() {
        // Layers that cannot be read at all: with the record they are never touched.
        let (mut broken, _) = layer(tar_of(&[("plugins/x.yaml", Some("x"))]));
        broken.frames[0].compressed_len += 1_000_000;
        let mut p = payload(vec![(broken, b"not zstd".to_vec())]);
        let recorded: BTreeMap<String, String> =
            [("r.yaml".to_string(), shell("r", "pre-init-host"))].into();
        p.config.sealer = Some(crate::store::SealerConfig {
            plugins: Some(recorded.clone()),
            ..Default::default()
        });
        assert_eq!(plugin_files(&p).unwrap(), recorded);
        let names: Vec<String> = image_plugins(&p)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["r"]);
        // An image without the record (built before it existed) is read from its layers.
        p.config.sealer = Some(Default::default());
        assert!(plugin_files(&p).is_err());
        let lower = tar_of(&[("plugins/l.yaml", Some(&shell("l", "pre-init-host")))]);
        let mut p = payload(vec![layer(lower)]);
        p.config.sealer = Some(Default::default());
        assert_eq!(
            plugin_files(&p).unwrap().keys().collect::<Vec<_>>(),
            ["l.yaml"]
        );
    }

    #[test]
    fn entry_effects_follow_the_rootfs_rules() {
        use tar::EntryType as T;
        let read = |n: &str| Some(EntryEffect::Read(n.to_string()));
        assert_eq!(entry_effect("plugins/a.yaml", T::Regular), read("a.yaml"));
        assert_eq!(entry_effect("./plugins/b.yml", T::Regular), read("b.yml"));
        assert_eq!(entry_effect("/plugins/readme.txt", T::Regular), None);
        assert_eq!(entry_effect("plugins/x/a.yaml", T::Regular), None);
        assert_eq!(entry_effect("plugins/", T::Directory), None);
        assert_eq!(
            entry_effect("plugins", T::Symlink),
            Some(EntryEffect::Clear)
        );
        assert_eq!(
            entry_effect(".wh.plugins", T::Regular),
            Some(EntryEffect::Clear)
        );
        assert_eq!(
            entry_effect("plugins/.wh..wh..opq", T::Regular),
            Some(EntryEffect::Clear)
        );
        assert_eq!(
            entry_effect("plugins/.wh.a.yaml", T::Regular),
            Some(EntryEffect::Remove("a.yaml".into()))
        );
        assert_eq!(
            entry_effect("plugins/a.yaml", T::Link),
            Some(EntryEffect::Remove("a.yaml".into()))
        );
    }

    #[test]
    fn a_malformed_plugin_file_is_refused_naming_it() {
        let bad = tar_of(&[("plugins/broken.yaml", Some("kind: Plugin\nspec: [oops"))]);
        let err = image_plugins(&payload(vec![layer(bad)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("plugins/broken.yaml"), "{err}");
    }

    #[test]
    fn hooks_under_plugin_are_found_like_those_under_plugins() {
        use tar::EntryType;
        let file = EntryType::Regular;
        assert_eq!(
            entry_effect("./plugin/old.yaml", file),
            Some(EntryEffect::Read("plugin/old.yaml".into()))
        );
        assert_eq!(
            entry_effect("plugin/.wh.old.yaml", file),
            Some(EntryEffect::Remove("plugin/old.yaml".into()))
        );
        assert_eq!(
            entry_effect(".wh.plugin", file),
            Some(EntryEffect::ClearLegacy)
        );
        assert_eq!(entry_effect("plugin/x/deep.yaml", file), None);
        let mut files = BTreeMap::from([
            ("a.yaml".to_string(), "a".to_string()),
            ("plugin/old.yaml".to_string(), "o".to_string()),
        ]);
        apply(&mut files, PluginChange::ClearLegacy);
        assert_eq!(files.keys().collect::<Vec<_>>(), vec!["a.yaml"]);
        files.insert("plugin/old.yaml".into(), "o".into());
        apply(&mut files, PluginChange::Clear);
        assert_eq!(files.keys().collect::<Vec<_>>(), vec!["plugin/old.yaml"]);
    }
}
