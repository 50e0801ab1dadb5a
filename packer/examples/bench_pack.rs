//! Helper for `scripts/bench-packer.sh`: turn directories into framed `tar+zstd` layer blobs
//! (as the image store writes them) and pack blobs into a `.run` file, without an image store.
//!
//! ```text
//! bench_pack layer SRC_DIR OUT_BLOB [LEVEL]
//! bench_pack pack STUB OUT BLOB...
//! bench_pack extract RUN DIR      (what `RUN extract DIR` does, without the stub around it)
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use packer::frames::FramedWriter;
use packer::{write, Compression, LayerBlob, PackSpec};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("layer") if args.len() >= 3 => {
            let level = args.get(3).map(|l| l.parse()).transpose()?.unwrap_or(3);
            layer(Path::new(&args[1]), Path::new(&args[2]), level)
        }
        Some("pack") if args.len() >= 4 => {
            pack(Path::new(&args[1]), Path::new(&args[2]), &args[3..])
        }
        Some("extract") if args.len() == 3 => {
            let run = packer::RunFile::open(Path::new(&args[1]))?;
            let report = run
                .payload()?
                .extract(Path::new(&args[2]), &Default::default())?;
            println!("{report:?}");
            Ok(())
        }
        _ => bail!("usage: bench_pack layer SRC_DIR OUT_BLOB [LEVEL] | pack STUB OUT BLOB... | extract RUN DIR"),
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        out.push(path.strip_prefix(root)?.to_path_buf());
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

fn layer(src: &Path, out: &Path, level: i32) -> Result<()> {
    let mut paths = Vec::new();
    walk(src, src, &mut paths)?;
    // Entries keep their place in the file system (`usr/share/...`), so relative symlinks
    // such as `../../lib/file/magic.mgc` stay inside the tree.
    let prefix = src.strip_prefix("/").unwrap_or(src).to_path_buf();
    let sink =
        BufWriter::new(File::create(out).with_context(|| format!("creating {}", out.display()))?);
    let mut builder = tar::Builder::new(FramedWriter::new(sink, level));
    builder.follow_symlinks(false);
    for rel in &paths {
        builder
            .append_path_with_name(src.join(rel), prefix.join(rel))
            .with_context(|| format!("adding {}", rel.display()))?;
        builder.get_mut().entry_boundary()?;
    }
    let framed = builder.into_inner()?;
    let (mut sink, info) = framed.finish()?;
    sink.flush()?;
    // The frame index beside the blob, as an image store may keep it.
    let index = out.with_extension("frames.json");
    std::fs::write(&index, serde_json::to_vec(&info.frames)?)?;
    println!(
        "{} entries, {} frames, {} -> {} bytes, digest sha256:{} diff_id sha256:{}",
        paths.len(),
        info.frames.len(),
        info.uncompressed_len,
        info.compressed_len,
        info.digest,
        info.diff_id
    );
    Ok(())
}

fn pack(stub: &Path, out: &Path, blobs: &[String]) -> Result<()> {
    let layers = blobs
        .iter()
        .map(|b| {
            let path = PathBuf::from(b);
            let frames = std::fs::read(path.with_extension("frames.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            LayerBlob {
                path,
                media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
                digest: "sha256:unknown".into(),
                diff_id: String::new(),
                frames,
                keep_frames: false,
            }
        })
        .collect();
    let spec = PackSpec {
        stub: stub.to_path_buf(),
        image_name: "bench/corpus:latest".into(),
        manifest_digest: "sha256:unknown".into(),
        manifest_json: String::new(),
        config_digest: "sha256:unknown".into(),
        config_json: "{}".into(),
        layers,
        compression: Compression::Zstd,
        level: None,
        split_size: None,
        output: out.to_path_buf(),
    };
    let report = write(&spec, None)?;
    println!(
        "packed {} ({} layers copied) payload {}",
        out.display(),
        report.copied_layers,
        report.payload_id
    );
    Ok(())
}
