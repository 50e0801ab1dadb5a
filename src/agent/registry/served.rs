//! The container images' journal steps on a registry host (`agent registry check` and
//! `repair`): whether the layout the registry serves holds each image, one step per image
//! keyed by its manifest digest, and putting back the files of an image found incomplete from
//! the images layer's frames the host keeps in its spool.
//!
//! An image holds when `index.json` names its manifest and the manifest, its config and its
//! layers are regular files of the sizes the descriptors give. An image whose step the journal
//! has is only looked at that way (a `stat` per file), so a rerun costs nothing but it still
//! finds a blob someone deleted; an image checked for the first time has every file hashed
//! too, and is then recorded. It never changes a file that is there; `repair` only writes
//! missing or damaged ones, each checked against its digest before it is renamed into place.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::layout::{read_bounded, BlobDigest, MAX_INDEX_LEN, MAX_MANIFEST_LEN};
use crate::agent::input::Input;
use crate::agent::io_context;
use crate::agent::journal;
use crate::agent::protocol::{read_plan, ImageCheck, ImageChecked, ImageState};
use crate::agent::spool::LayerReader;

#[derive(serde::Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

#[derive(serde::Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
struct Links {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// `registry check`: one [`ImageChecked`] line per [`ImageCheck`] line on stdin.
pub fn check(root: &Path, work: &Path) -> Result<(), String> {
    check_from(
        root,
        work,
        io::BufReader::new(Input::stdin()),
        &mut io::stdout().lock(),
    )
}

fn check_from(
    root: &Path,
    work: &Path,
    input: impl BufRead,
    out: &mut dyn Write,
) -> Result<(), String> {
    let index = listed_manifests(root);
    for line in input.lines() {
        let line = line.map_err(io_context("reading stdin"))?;
        if line.trim().is_empty() {
            continue;
        }
        let asked: ImageCheck = serde_json::from_str(&line)
            .map_err(|e| format!("an image check request is malformed: {e}"))?;
        let done = journal::recorded(work, &asked.key, true);
        let missing = missing_files(root, &index, &asked.digest, !done)?;
        let state = if !missing.is_empty() {
            journal::forget(work, &asked.key)?;
            ImageState::Incomplete
        } else if done {
            if !journal::recorded(work, &asked.key, false) {
                // Checked for the generation an upgrade replaced; its files are content
                // addressed and still whole: it holds for this one too.
                journal::record(work, &asked.key, &step_name(&asked))?;
            }
            ImageState::Served
        } else {
            journal::record(work, &asked.key, &step_name(&asked))?;
            ImageState::Checked
        };
        let answer = ImageChecked {
            digest: asked.digest,
            state,
            missing,
        };
        let text = serde_json::to_string(&answer).map_err(|e| e.to_string())?;
        writeln!(out, "{text}").map_err(io_context("writing stdout"))?;
    }
    Ok(())
}

/// What the journal file of an image's step says.
fn step_name(asked: &ImageCheck) -> String {
    format!("image {} {}", asked.digest, asked.image)
}

/// The manifest digests `index.json` names (with their sizes); none when it is missing or
/// unreadable, so every image reports it missing.
fn listed_manifests(root: &Path) -> Option<HashSet<(String, u64)>> {
    let bytes = read_bounded(&root.join("index.json"), MAX_INDEX_LEN).ok()?;
    let index: Index = serde_json::from_slice(&bytes).ok()?;
    Some(
        index
            .manifests
            .into_iter()
            .map(|d| (d.digest, d.size))
            .collect(),
    )
}

/// The files (relative to `root`) the image `digest` lacks: `index.json` when it does not name
/// the image, the manifest, its config and layers when they are absent, not regular files, of
/// another size or (with `hash`) of other bytes.
fn missing_files(
    root: &Path,
    index: &Option<HashSet<(String, u64)>>,
    digest: &str,
    hash: bool,
) -> Result<Vec<String>, String> {
    let manifest = BlobDigest::parse(digest)
        .ok_or_else(|| format!("{digest:?} is not sha256: and 64 lowercase hex digits"))?;
    let relative = |d: &BlobDigest| format!("blobs/sha256/{}", d.hex());
    let mut missing = BTreeSet::new();
    let listed = index.as_ref().and_then(|index| {
        index
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, size)| *size)
    });
    if listed.is_none() {
        missing.insert("index.json".to_string());
    }
    let bytes = read_bounded(&manifest.path(root), MAX_MANIFEST_LEN)
        .ok()
        .filter(|b| hex::encode(Sha256::digest(b)) == manifest.hex())
        .filter(|b| listed.is_none_or(|size| size == b.len() as u64));
    let Some(bytes) = bytes else {
        missing.insert(relative(&manifest));
        return Ok(missing.into_iter().collect());
    };
    let links: Links = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the manifest {digest} is not valid JSON: {e}"))?;
    for blob in links.config.iter().chain(&links.layers) {
        let Some(d) = BlobDigest::parse(&blob.digest) else {
            return Err(format!(
                "the manifest {digest} names {:?}, which is not a sha256 digest",
                blob.digest
            ));
        };
        if !holds_blob(root, &d, blob.size, hash) {
            missing.insert(relative(&d));
        }
    }
    Ok(missing.into_iter().collect())
}

/// Whether `blobs/sha256/HEX` is a regular file of `size` bytes (with `hash`: whose sha256 is
/// its name).
fn holds_blob(root: &Path, digest: &BlobDigest, size: u64, hash: bool) -> bool {
    let path = digest.path(root);
    let Ok(meta) = fs::symlink_metadata(&path) else {
        return false;
    };
    if !meta.is_file() || meta.len() != size {
        return false;
    }
    !hash || file_sha256(&path).is_ok_and(|h| h == digest.hex())
}

fn file_sha256(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `registry repair`: reads the images layer's plan on stdin and writes `paths` back into the
/// layout at `root` from the layer's spooled frames; prints how many files it wrote.
pub fn repair(root: &Path, work: &Path, paths: &[String]) -> Result<(), String> {
    let written = repair_from(root, work, paths, &mut Input::stdin())?;
    println!("{written}");
    Ok(())
}

fn repair_from(
    root: &Path,
    work: &Path,
    paths: &[String],
    input: &mut dyn Read,
) -> Result<usize, String> {
    let plan = read_plan(input)?;
    let [layer] = &plan[..] else {
        return Err(format!(
            "a repair reads one layer, the images layer; the plan has {}",
            plan.len()
        ));
    };
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for p in paths {
        let valid = p == "index.json"
            || p.strip_prefix("blobs/sha256/")
                .is_some_and(|hex| BlobDigest::parse(&format!("sha256:{hex}")).is_some());
        if !valid {
            return Err(format!(
                "{p:?} is not a file of an OCI layout's (index.json or blobs/sha256/HEX)"
            ));
        }
        wanted.insert(p.clone());
    }
    let prefix = format!("{}/", crate::container_images::IMAGES_DIR);
    let reader = LayerReader::new(work, layer)?;
    let mut tar = tar::Archive::new(reader);
    let mut written = 0usize;
    let entries = tar
        .entries()
        .map_err(|e| format!("reading the images layer: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the images layer: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("reading the images layer: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let Some(relative) = name.strip_prefix(&prefix) else {
            continue;
        };
        if !wanted.remove(relative) {
            continue;
        }
        write_checked(root, relative, &mut entry)?;
        written += 1;
        if wanted.is_empty() {
            break;
        }
    }
    if !wanted.is_empty() {
        let left: Vec<String> = wanted.into_iter().collect();
        return Err(format!(
            "the images layer holds no {}; the package does not carry it",
            left.join(", ")
        ));
    }
    Ok(written)
}

/// Writes `relative` under `root` from `body` through a temporary file renamed into place; a
/// blob's bytes must hash to its name.
fn write_checked(root: &Path, relative: &str, body: &mut dyn Read) -> Result<(), String> {
    let path = root.join(relative);
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).map_err(io_context(format!("creating {}", dir.display())))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.repair"));
    let mut out =
        fs::File::create(&tmp).map_err(io_context(format!("writing {}", tmp.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| format!("reading {relative} from the images layer: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io_context(format!("writing {}", tmp.display())))?;
    }
    out.sync_all()
        .map_err(io_context(format!("writing {}", tmp.display())))?;
    if let Some(hex) = relative.strip_prefix("blobs/sha256/") {
        let actual = hex::encode(hasher.finalize());
        if actual != hex {
            let _ = fs::remove_file(&tmp);
            return Err(format!(
                "{relative} in the images layer hashes to {actual}; the package is damaged"
            ));
        }
    }
    fs::rename(&tmp, &path).map_err(io_context(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::{write_plan, PlanLayer, StepKey};
    use packer::frames::Frame;
    use packer::unpack::Compression;

    fn digest(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// A layout of one image (config, one layer, manifest, `index.json`) written under
    /// `root`, and the same files as an images layer in `work`'s spool, one zstd frame per
    /// file. Returns the manifest digest, the layer digest and the layer's plan.
    fn image(root: &Path, work: &Path) -> (String, String, PlanLayer) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let layer = vec![7u8; 300_000];
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
            digest(&config),
            config.len(),
            digest(&layer),
            layer.len()
        )
        .into_bytes();
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{}}}]}}"#,
            digest(&manifest),
            manifest.len()
        )
        .into_bytes();
        let mut files: Vec<(String, Vec<u8>)> = [&config, &layer, &manifest]
            .iter()
            .map(|b| (format!("blobs/sha256/{}", &digest(b)[7..]), b.to_vec()))
            .collect();
        files.push(("index.json".into(), index));
        let spool = work.join("spool");
        fs::create_dir_all(&spool).unwrap();
        let mut frames = Vec::new();
        let mut offset = 0;
        for (name, body) in &files {
            let path = root.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, body).unwrap();
            let mut tar = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("images/{name}"), &body[..])
                .unwrap();
            let mut plain = tar.into_inner().unwrap();
            // Only the last frame ends the archive.
            plain.truncate(plain.len() - 1024);
            if name == "index.json" {
                plain.extend_from_slice(&[0u8; 1024]);
            }
            let compressed = zstd::bulk::compress(&plain, 3).unwrap();
            let sha = hex::encode(Sha256::digest(&compressed));
            fs::write(spool.join(&sha), &compressed).unwrap();
            frames.push(Frame {
                offset,
                compressed_len: compressed.len() as u64,
                uncompressed_len: plain.len() as u64,
                sha256: sha,
                blake3: None,
            });
            offset += compressed.len() as u64;
        }
        let plan = PlanLayer {
            label: "images layer".into(),
            compression: Compression::Zstd,
            frames,
        };
        (digest(&manifest), digest(&layer), plan)
    }

    fn ask(root: &Path, work: &Path, manifest: &str) -> ImageChecked {
        let request = ImageCheck {
            key: StepKey::from([9u8; 32]),
            digest: manifest.into(),
            image: "docker.io/library/foo:1".into(),
        };
        let line = serde_json::to_string(&request).unwrap();
        let mut out = Vec::new();
        check_from(root, work, line.as_bytes(), &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn an_image_is_checked_once_then_served_and_a_deleted_layer_is_found_and_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let (root, work) = (dir.path().join("images"), dir.path().join("work"));
        let (manifest, layer, plan) = image(&root, &work);
        let key = StepKey::from([9u8; 32]);

        let first = ask(&root, &work, &manifest);
        assert_eq!(first.state, ImageState::Checked, "{first:?}");
        assert!(journal::recorded(&work, &key, false));
        assert_eq!(ask(&root, &work, &manifest).state, ImageState::Served);

        let layer_path = root.join(format!("blobs/sha256/{}", &layer[7..]));
        let bytes = fs::read(&layer_path).unwrap();
        fs::remove_file(&layer_path).unwrap();
        let gone = ask(&root, &work, &manifest);
        assert_eq!(gone.state, ImageState::Incomplete);
        assert_eq!(gone.missing, vec![format!("blobs/sha256/{}", &layer[7..])]);
        assert!(!journal::recorded(&work, &key, false), "still recorded");

        let mut wire = Vec::new();
        write_plan(&mut wire, std::slice::from_ref(&plan)).unwrap();
        let written = repair_from(&root, &work, &gone.missing, &mut &wire[..]).unwrap();
        assert_eq!(written, 1);
        assert_eq!(fs::read(&layer_path).unwrap(), bytes);
        assert_eq!(ask(&root, &work, &manifest).state, ImageState::Checked);
    }

    #[test]
    fn a_damaged_layer_is_found_when_checked_and_a_truncated_one_even_when_served() {
        let dir = tempfile::tempdir().unwrap();
        let (root, work) = (dir.path().join("images"), dir.path().join("work"));
        let (manifest, layer, _) = image(&root, &work);
        let layer_path = root.join(format!("blobs/sha256/{}", &layer[7..]));
        let mut bytes = fs::read(&layer_path).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&layer_path, &bytes).unwrap();
        assert_eq!(ask(&root, &work, &manifest).state, ImageState::Incomplete);
        bytes[10] ^= 0xff;
        fs::write(&layer_path, &bytes).unwrap();
        assert_eq!(ask(&root, &work, &manifest).state, ImageState::Checked);
        fs::write(&layer_path, &bytes[..100]).unwrap();
        assert_eq!(ask(&root, &work, &manifest).state, ImageState::Incomplete);
    }

    #[test]
    fn a_repair_without_the_frames_names_the_missing_frame_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (root, work) = (dir.path().join("images"), dir.path().join("work"));
        let (_, layer, plan) = image(&root, &work);
        let layer_path = root.join(format!("blobs/sha256/{}", &layer[7..]));
        fs::remove_file(&layer_path).unwrap();
        for f in &plan.frames {
            fs::remove_file(work.join("spool").join(&f.sha256)).unwrap();
        }
        let mut wire = Vec::new();
        write_plan(&mut wire, std::slice::from_ref(&plan)).unwrap();
        let paths = vec![format!("blobs/sha256/{}", &layer[7..])];
        let err = repair_from(&root, &work, &paths, &mut &wire[..]).unwrap_err();
        assert!(err.contains(&plan.frames[0].sha256), "{err}");
        assert!(!layer_path.exists());
        let bad = vec!["../etc/passwd".to_string()];
        let err = repair_from(&root, &work, &bad, &mut &wire[..]).unwrap_err();
        assert!(err.contains("not a file of an OCI layout"), "{err}");
    }
}
