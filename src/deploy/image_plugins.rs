//! Hooks shipped inside an image: the `plugins/*.yaml` files of its root filesystem, read from
//! the payload's layers before any host is touched.
//!
//! Each layer is decoded frame by frame (every frame is an independent zstd or xz stream, so
//! memory stays bounded by one frame) and walked as a tar stream; only regular files directly
//! under `plugins/` whose names end in `.yaml` or `.yml` are kept. Layers apply in order with OCI
//! whiteouts (`plugins/.wh.NAME`, `plugins/.wh..wh..opq`, `.wh.plugins`), so the result is what
//! the unpacked rootfs holds. Files are parsed as plugin-only Clusterfiles in file-name order;
//! the engine runs them before the Clusterfile's own plugins, as sealer does. This module reads
//! the payload; it never writes and never talks to hosts.

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
    #[error("{layer} of {image}: reading plugins/{name}: {source}")]
    File {
        layer: String,
        image: String,
        name: String,
        source: io::Error,
    },
    #[error("plugins/{name} in image {image}: {source}")]
    Parse {
        name: String,
        image: String,
        source: Box<ClusterfileError>,
    },
}

/// Plugins files in the image, by file name (`plugins/NAME`), after all layers.
pub fn plugin_files(payload: &Payload) -> Result<BTreeMap<String, String>, ImagePluginError> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    // The images layer holds an OCI layout under `images/`, never `plugins/`.
    for layer in payload.layers.iter().filter(|l| !l.container_images) {
        let read_err = |source| ImagePluginError::Layer {
            layer: layer.label.clone(),
            image: payload.image.clone(),
            source,
        };
        let mut archive = tar::Archive::new(LayerTarStream::new(payload, layer));
        let entries = archive.entries().map_err(read_err)?;
        for entry in entries {
            let mut entry = entry.map_err(read_err)?;
            let path = entry
                .path()
                .map_err(|source| ImagePluginError::EntryName {
                    layer: layer.label.clone(),
                    image: payload.image.clone(),
                    source,
                })?
                .to_string_lossy()
                .into_owned();
            let path = path.trim_start_matches("./").trim_start_matches('/');
            let path = path.trim_end_matches('/');
            if path == ".wh.plugins" || path == "plugins" && !entry.header().entry_type().is_dir() {
                files.clear();
                continue;
            }
            let Some(name) = path.strip_prefix("plugins/") else {
                continue;
            };
            if name.contains('/') {
                continue;
            }
            if name == ".wh..wh..opq" {
                files.clear();
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                files.remove(hidden);
                continue;
            }
            if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
                continue;
            }
            if !entry.header().entry_type().is_file() {
                files.remove(name);
                continue;
            }
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|source| ImagePluginError::File {
                    layer: layer.label.clone(),
                    image: payload.image.clone(),
                    name: name.to_string(),
                    source,
                })?;
            files.insert(name.to_string(), text);
        }
    }
    Ok(files)
}

/// The image's plugins in file-name order; a malformed file is an error naming it.
pub fn image_plugins(payload: &Payload) -> Result<Vec<Plugin>, ImagePluginError> {
    let mut plugins = Vec::new();
    for (name, text) in plugin_files(payload)? {
        let file = Clusterfile::parse(&text).map_err(|source| ImagePluginError::Parse {
            name: name.clone(),
            image: payload.image.clone(),
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
    use std::sync::Arc;

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
            agent: Arc::new(Vec::new()),
            agent_sha256: "0".repeat(64),
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
    fn a_malformed_plugin_file_is_refused_naming_it() {
        let bad = tar_of(&[("plugins/broken.yaml", Some("kind: Plugin\nspec: [oops"))]);
        let err = image_plugins(&payload(vec![layer(bad)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("plugins/broken.yaml"), "{err}");
    }
}
