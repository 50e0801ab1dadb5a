//! The record of an image's `plugins/*.yaml` kept in its config (`sealer.plugins`): what each
//! layer does to `plugins/`, noted by the layer writer as it writes (or kept with the step cache
//! entry), folded over the image's layers at the end of the build. A run reads the record
//! instead of decoding every layer (`deploy::image_plugins`). A layer whose changes are unknown
//! (a cache entry from before the record, a base image built before it) is read from the store
//! once, here.

use std::collections::BTreeMap;

use crate::deploy::image_plugins::{apply, tar_changes, PluginChange};
use crate::store::{Descriptor, ImageConfig, Store};

use super::BuildError;

/// The plugin files of the base image and the changes of each layer since.
#[derive(Default)]
pub(super) struct PluginRecord {
    /// The base image's record, when it has one (its layers then change nothing more).
    base: BTreeMap<String, String>,
    /// One entry per layer of the image being built, in order; `None`: unknown, read the layer.
    layers: Vec<Option<Vec<PluginChange>>>,
}

impl PluginRecord {
    /// Start from a base image's config and its `layers` layers (the images layer removed).
    pub fn from_base(config: &ImageConfig, layers: usize) -> Self {
        match config.sealer.as_ref().and_then(|s| s.plugins.clone()) {
            Some(base) => PluginRecord {
                base,
                layers: vec![Some(Vec::new()); layers],
            },
            None => PluginRecord {
                base: BTreeMap::new(),
                layers: vec![None; layers],
            },
        }
    }

    /// The next layer's changes.
    pub fn push(&mut self, changes: Option<Vec<PluginChange>>) {
        self.layers.push(changes);
    }

    /// The plugin files after `layers` (the image's, in order, matching what was pushed).
    pub fn files(
        &self,
        store: &Store,
        layers: &[Descriptor],
        image: &str,
    ) -> Result<BTreeMap<String, String>, BuildError> {
        let mut files = self.base.clone();
        for (i, desc) in layers.iter().enumerate() {
            // The images layer holds an OCI layout under `images/`, never `plugins/`.
            if crate::container_images::is_images_layer(desc) {
                continue;
            }
            let changes = match self.layers.get(i).cloned().flatten() {
                Some(changes) => changes,
                None => read_layer(store, desc, i + 1, image)?,
            };
            for change in changes {
                apply(&mut files, change);
            }
        }
        Ok(files)
    }
}

/// The plugin changes of a stored layer, by decoding it.
fn read_layer(
    store: &Store,
    desc: &Descriptor,
    number: usize,
    image: &str,
) -> Result<Vec<PluginChange>, BuildError> {
    let path = store.blob_path(&desc.digest)?;
    let io =
        |e: std::io::Error| BuildError::io(format!("reading layer {number} for its plugins"), e);
    let file = std::io::BufReader::new(std::fs::File::open(&path).map_err(io)?);
    let stream: Box<dyn std::io::Read> = if desc.media_type.ends_with("gzip") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if desc.media_type.ends_with("zstd") {
        Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io)?)
    } else {
        Box::new(file)
    };
    tar_changes(stream, &format!("layer {number}"), image)
        .map_err(|e| BuildError::io("recording the image's plugins", std::io::Error::other(e)))
}
