//! The build step cache under `$SEALER_ROOT/cache`.
//!
//! `steps/<key>` maps a step's cache key (parent state + instruction + content read) to the layer
//! it produced; `memo/<fingerprint>` maps a metadata fingerprint of COPY sources to the hash of
//! their content, so an unchanged rebuild finds its layers without reading file contents. The
//! cache is advisory: an entry whose blob is gone is a miss, and failing to record one is not an
//! error.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use crate::store::{Descriptor, Store};

use super::layer::BuiltLayer;

pub struct StepCache {
    dir: PathBuf,
    store: Store,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StepEntry {
    layer: Descriptor,
    diff_id: String,
    /// See [`BuiltLayer::plugins`]; absent in entries written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plugins: Option<Vec<crate::deploy::image_plugins::PluginChange>>,
}

impl StepCache {
    pub fn new(store: &Store) -> Self {
        let dir = store.cache_dir();
        let _ = fs::create_dir_all(dir.join("steps"));
        let _ = fs::create_dir_all(dir.join("memo"));
        StepCache {
            dir,
            store: store.clone(),
        }
    }

    pub fn memo(&self, fingerprint: &str) -> Option<String> {
        fs::read_to_string(self.dir.join("memo").join(fingerprint)).ok()
    }

    pub fn record_memo(&self, fingerprint: &str, content: &str) {
        self.write(self.dir.join("memo").join(fingerprint), content.as_bytes());
    }

    pub fn step(&self, key: &str) -> Option<BuiltLayer> {
        let bytes = fs::read(self.dir.join("steps").join(key)).ok()?;
        let entry: StepEntry = serde_json::from_slice(&bytes).ok()?;
        self.store
            .has_blob(&entry.layer.digest)
            .then_some(BuiltLayer {
                descriptor: entry.layer,
                diff_id: entry.diff_id,
                plugins: entry.plugins,
            })
    }

    pub fn record_step(&self, key: &str, blob: &BuiltLayer) {
        let entry = StepEntry {
            layer: blob.descriptor.clone(),
            diff_id: blob.diff_id.clone(),
            plugins: blob.plugins.clone(),
        };
        if let Ok(bytes) = serde_json::to_vec(&entry) {
            self.write(self.dir.join("steps").join(key), &bytes);
        }
    }

    fn write(&self, path: PathBuf, bytes: &[u8]) {
        let Some(dir) = path.parent() else { return };
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
            if tmp.write_all(bytes).is_ok() {
                let _ = tmp.persist(&path);
            }
        }
    }
}
