//! Deep YAML merge for `Config` documents with `strategy: merge`: mappings merge key by key,
//! sequences and scalars from the Config replace the existing ones. Multi-document files are
//! matched document by document: by `apiVersion`+`kind`+`metadata.name` when the Config document
//! has a `kind`, otherwise by position. Pure text in, text out.

use serde::Deserialize;
use serde_yaml::Value;

/// Why two YAML files could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("the existing file is not YAML: {0}")]
    Existing(serde_yaml::Error),
    #[error("the Config data is not YAML: {0}")]
    Patch(serde_yaml::Error),
    #[error("{0}")]
    Write(serde_yaml::Error),
}

fn documents(text: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn identity(doc: &Value) -> Option<(Value, Value, Value)> {
    let kind = doc.get("kind")?.clone();
    let api = doc.get("apiVersion").cloned().unwrap_or(Value::Null);
    let name = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .cloned()
        .unwrap_or(Value::Null);
    Some((api, kind, name))
}

/// Merges `patch` into `base` in place.
pub fn merge_value(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Mapping(base), Value::Mapping(patch)) => {
            for (key, value) in patch {
                match base.get_mut(&key) {
                    Some(existing) => merge_value(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, patch) => *base = patch,
    }
}

/// `existing` with every document of `patch` merged in; unmatched patch documents are appended.
pub fn merge_yaml_documents(existing: &str, patch: &str) -> Result<String, MergeError> {
    let mut base = documents(existing).map_err(MergeError::Existing)?;
    let patches = documents(patch).map_err(MergeError::Patch)?;
    for (position, patch) in patches.into_iter().enumerate() {
        let target = match identity(&patch) {
            Some(id) => base
                .iter()
                .position(|doc| identity(doc).as_ref() == Some(&id)),
            None if position < base.len() => Some(position),
            None => None,
        };
        match target {
            Some(i) => merge_value(&mut base[i], patch),
            None => base.push(patch),
        }
    }
    let mut out = String::new();
    for (i, doc) in base.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(doc).map_err(MergeError::Write)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_untouched_keys_and_replaces_leaves_and_lists() {
        let existing = "a: 1\nb:\n  c: 2\n  d: [1, 2]\n";
        let patch = "b:\n  d: [9]\n  e: new\n";
        let merged: Value =
            serde_yaml::from_str(&merge_yaml_documents(existing, patch).unwrap()).unwrap();
        let want: Value = serde_yaml::from_str("a: 1\nb: {c: 2, d: [9], e: new}\n").unwrap();
        assert_eq!(merged, want);
    }

    #[test]
    fn merge_matches_documents_by_kind_and_name() {
        let existing =
            "kind: A\nmetadata: {name: x}\nv: 1\n---\nkind: B\nmetadata: {name: y}\nv: 1\n";
        let patch = "kind: B\nmetadata: {name: y}\nv: 2\n";
        let out = merge_yaml_documents(existing, patch).unwrap();
        let docs = documents(&out).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["v"], Value::from(1));
        assert_eq!(docs[1]["v"], Value::from(2));
    }
}
