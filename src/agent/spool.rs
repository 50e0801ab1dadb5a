//! The spool (`spool/` in the work directory): compressed frames received from the engine,
//! stored by sha256 once their bytes hash to it, and read back as one [`ByteSource`] to unpack
//! the rootfs from, while they are still arriving or afterwards. `have` tells the engine which
//! frames are missing, so a rerun sends only those.
//!
//! The spool outlives the install: it is the host's store of the frames its trees were unpacked
//! from, so an upgrade sends only the frames the new image does not share with the installed
//! one (a container image already served, a layer's unchanged frames). Which frames a tree was
//! unpacked from is a frame list beside the journal (`frames`, and `frames.prev` for the
//! previous generation, moved with it by an upgrade and a rollback); after either, the spool is
//! pruned to the frames of those two lists, so it holds at most the compressed frames of the
//! two generations on the host, plus those of one upgrade that stopped before it finished.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use packer::frames::Frame;
use packer::source::ByteSource;
use packer::unpack::LayerInput;
use sha2::{Digest, Sha256};

use super::input::Input;
use super::io_context;
use super::protocol::{
    read_frame_list, read_plan, read_record, valid_sha256, write_frame_list, PlanLayer,
};
use super::rootfs::install_rootfs;

fn spool(work: &Path) -> PathBuf {
    work.join("spool")
}

/// In the work directory: the frame list of the tree the rootfs holds, one sha256 a line. The
/// journal moves it with the generation (`frames.prev`).
pub(super) const FRAMES: &str = "frames";
/// The frame list of a tree unpacked whose step the journal has not recorded yet.
const FRAMES_UNPACKED: &str = "frames.unpacked";

/// After an unpack: the frames of `plan` are the list of the tree now in place, adopted by the
/// journal when it records the step ([`adopt_unpacked`]).
fn record_unpacked(work: &Path, plan: &[PlanLayer]) -> Result<(), String> {
    let mut list = Vec::new();
    let shas = plan
        .iter()
        .flat_map(|l| &l.frames)
        .map(|f| f.sha256.as_str());
    write_frame_list(&mut list, shas).map_err(io_context("writing the frame list"))?;
    let tmp = work.join(format!(".{FRAMES_UNPACKED}.tmp"));
    fs::write(&tmp, &list).map_err(io_context(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, work.join(FRAMES_UNPACKED)).map_err(io_context(format!(
        "recording the frames of {}",
        work.display()
    )))
}

/// `done --installs`: the frame list of the tree just unpacked becomes the installed one. An
/// install without a spool (on the installer's own machine) leaves none.
pub(super) fn adopt_unpacked(work: &Path) -> Result<(), String> {
    match fs::rename(work.join(FRAMES_UNPACKED), work.join(FRAMES)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_context(format!(
            "recording the frames of {}",
            work.display()
        ))(e)),
        _ => Ok(()),
    }
}

/// The frames listed in the work directory's list `name`; none when it is missing or unreadable
/// (a frame not kept is only sent again).
fn listed(work: &Path, name: &str) -> HashSet<String> {
    match fs::read(work.join(name)) {
        Ok(text) => read_frame_list(&text[..]).filter_map(Result::ok).collect(),
        Err(_) => HashSet::new(),
    }
}

/// `done --prune-spool` and `rollback`: everything in the spool that is not a frame of the
/// installed or the previous generation goes (frames of an image no longer on the host, of an
/// upgrade that did not finish, temporary files of a cut transfer). Returns how many frames and
/// bytes stay.
pub(super) fn prune(work: &Path) -> Result<(usize, u64), String> {
    let mut keep = listed(work, FRAMES);
    keep.extend(listed(work, &format!("{FRAMES}.prev")));
    let dir = spool(work);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io_context(format!("reading {}", dir.display()))(e)),
    };
    let (mut kept, mut bytes) = (0, 0);
    for entry in entries {
        let entry = entry.map_err(io_context(format!("reading {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && keep.contains(&name) {
            kept += 1;
            bytes += entry.metadata().map_or(0, |m| m.len());
            continue;
        }
        let path = entry.path();
        let removed = if is_file {
            fs::remove_file(&path)
        } else {
            fs::remove_dir_all(&path)
        };
        removed.map_err(io_context(format!("removing {}", path.display())))?;
    }
    if kept == 0 {
        // Nothing to keep: no empty directory left behind either.
        let _ = fs::remove_dir(&dir);
    }
    Ok((kept, bytes))
}

/// `have`: reads sha256 hex lines on stdin; prints those not in the spool. A spooled frame whose bytes
/// no longer hash to its name (a damaged disk, a file cut short) counts as missing and is removed,
/// so the engine sends it again.
///
/// A frame kept for the installed or previous tree is not hashed here: it was hashed when it
/// arrived, and the unpack hashes every frame it decodes; when one no longer matches, the
/// unpack fails and removes the damaged frames ([`drop_damaged`]), so the next try sends them.
/// An upgrade does not read every kept frame twice.
pub(super) fn have(work: &Path) -> Result<(), String> {
    fs::create_dir_all(work).map_err(io_context(format!("creating {}", work.display())))?;
    let dir = spool(work);
    let mut kept = listed(work, FRAMES);
    kept.extend(listed(work, &format!("{FRAMES}.prev")));
    let mut out = io::stdout().lock();
    for sha in read_frame_list(io::BufReader::new(Input::stdin())) {
        let sha = sha?;
        let path = dir.join(&sha);
        let present = if kept.contains(&sha) {
            fs::symlink_metadata(&path).is_ok_and(|m| m.is_file())
        } else {
            spooled_intact(&path, &sha)
        };
        if !present {
            if path.exists() {
                let _ = fs::remove_file(&path);
            }
            write_frame_list(&mut out, [sha.as_str()]).map_err(io_context("writing stdout"))?;
        }
    }
    Ok(())
}

/// True when `path` is a regular file whose sha256 is `sha`.
fn spooled_intact(path: &Path, sha: &str) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return false,
        }
    }
    hex::encode(hasher.finalize()) == sha
}

/// `receive`: frame records on stdin go to the spool.
pub(super) fn receive(work: &Path) -> Result<(), String> {
    let mut input = io::BufReader::with_capacity(1 << 20, Input::stdin());
    let count = receive_frames(work, &mut input, None)?;
    println!("{count}");
    Ok(())
}

/// `receive --dest DIR`: stdin carries the layer plan and then frame records. Frames are spooled as they arrive, as in `receive`, while the rootfs
/// is unpacked from the spool in parallel, each frame as soon as it is there; the transfer and
/// the unpack overlap instead of running one after the other.
pub(super) fn receive_and_unpack(work: &Path, dest: &Path) -> Result<(), String> {
    let mut input = io::BufReader::with_capacity(1 << 20, Input::stdin());
    let count = receive_and_unpack_from(work, dest, &mut input)?;
    println!("{count}");
    Ok(())
}

fn receive_and_unpack_from(work: &Path, dest: &Path, input: &mut dyn Read) -> Result<u64, String> {
    let plan = read_plan(input)?;
    let arrivals = Arrivals::default();
    let (spool, frames) = spool_for_plan(work, &plan, Some(&arrivals))?;
    let (received, unpacked) = std::thread::scope(|threads| {
        let unpacker = threads.spawn(|| unpack_plan(&plan, &frames, &spool, dest));
        let received = receive_frames(work, input, Some(&arrivals));
        arrivals.finish();
        let unpacked = unpacker
            .join()
            .unwrap_or_else(|_| Err("the unpacking thread failed".to_string()));
        (received, unpacked)
    });
    // A broken transfer explains a failed unpack; report it first.
    let count = received?;
    unpacked.inspect_err(|_| drop_damaged(work, &plan))?;
    record_unpacked(work, &plan)?;
    Ok(count)
}

/// Reads frame records until the end marker, storing each verified frame in the spool.
/// Returns how many frames were stored.
fn receive_frames(
    work: &Path,
    input: &mut dyn Read,
    arrivals: Option<&Arrivals>,
) -> Result<u64, String> {
    let dir = spool(work);
    fs::create_dir_all(&dir).map_err(io_context(format!("creating {}", dir.display())))?;
    let mut count = 0u64;
    let mut buf = Vec::new();
    while let Some(sha) = read_record(input, &mut buf)? {
        let actual = hex::encode(Sha256::digest(&buf));
        if actual != sha {
            return Err(format!(
                "frame {sha} arrived corrupt (its bytes hash to {actual})"
            ));
        }
        let tmp = dir.join(format!(".{sha}.tmp"));
        fs::write(&tmp, &buf).map_err(io_context(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, dir.join(&sha)).map_err(io_context(format!("storing frame {sha}")))?;
        if let Some(arrivals) = arrivals {
            arrivals.arrived();
        }
        count += 1;
    }
    Ok(count)
}

/// Tells an unpack that reads the spool while frames are still arriving when a frame was stored
/// and when no more will come.
#[derive(Default)]
struct Arrivals {
    finished: Mutex<bool>,
    changed: Condvar,
}

impl Arrivals {
    fn arrived(&self) {
        let _guard = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    fn finish(&self) {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        *finished = true;
        self.changed.notify_all();
    }

    /// Waits until `path` exists; an error once receiving ended without it.
    fn wait_for(&self, path: &Path) -> io::Result<()> {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        while !path.is_file() {
            if *finished {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} was not received", path.display()),
                ));
            }
            finished = self
                .changed
                .wait(finished)
                .unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }
}

/// The spooled frames of all layers, laid end to end at synthetic offsets.
struct Spool<'a> {
    files: Vec<(u64, PathBuf)>,
    total: u64,
    /// Set while frames are still arriving: a read waits for its frame.
    arrivals: Option<&'a Arrivals>,
}

impl ByteSource for Spool<'_> {
    fn bytes(&self, offset: u64, len: u64) -> io::Result<Cow<'_, [u8]>> {
        let i = self
            .files
            .partition_point(|(start, _)| *start <= offset)
            .saturating_sub(1);
        let (start, path) = self
            .files
            .get(i)
            .ok_or_else(|| io::Error::other("offset beyond the spool"))?;
        if let Some(arrivals) = self.arrivals {
            arrivals.wait_for(path)?;
        }
        let data = fs::read(path)?;
        let from = (offset - start) as usize;
        let to = from + len as usize;
        if to > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} is shorter than expected", path.display()),
            ));
        }
        Ok(Cow::Owned(data[from..to].to_vec()))
    }

    fn len(&self) -> u64 {
        self.total
    }
}

/// The uncompressed bytes of one layer of a plan (a tar), read in order from its frames in
/// the spool. Each frame is hashed before it is decoded: a missing one is an error naming it,
/// a damaged one too, and it is removed, so `have` reports it and the engine sends it again.
pub(super) struct LayerReader<'a> {
    dir: PathBuf,
    layer: &'a PlanLayer,
    next: usize,
    current: Option<Box<dyn Read + Send>>,
}

impl<'a> LayerReader<'a> {
    pub(super) fn new(work: &Path, layer: &'a PlanLayer) -> Result<Self, String> {
        for f in &layer.frames {
            valid_sha256(&f.sha256)?;
        }
        Ok(LayerReader {
            dir: spool(work),
            layer,
            next: 0,
            current: None,
        })
    }

    fn open_next(&mut self) -> io::Result<bool> {
        let Some(frame) = self.layer.frames.get(self.next) else {
            return Ok(false);
        };
        self.next += 1;
        let path = self.dir.join(&frame.sha256);
        let label = &self.layer.label;
        let bytes = fs::read(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "frame {} of {label} is not in the spool ({e})",
                    frame.sha256
                ),
            )
        })?;
        if hex::encode(Sha256::digest(&bytes)) != frame.sha256 {
            let _ = fs::remove_file(&path);
            return Err(io::Error::other(format!(
                "frame {} of {label} is damaged in the spool; it was removed, run again to receive it",
                frame.sha256
            )));
        }
        let reader = packer::codec::frame_reader(self.layer.compression, Cow::Owned(bytes))
            .map_err(|e| io::Error::other(format!("frame {} {e}", frame.sha256)))?;
        self.current = Some(reader);
        Ok(true)
    }
}

impl Read for LayerReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(current) = &mut self.current {
                let n = current.read(out)?;
                if n > 0 || out.is_empty() {
                    return Ok(n);
                }
                self.current = None;
            }
            if !self.open_next()? {
                return Ok(0);
            }
        }
    }
}

/// `unpack`: the layer plan on stdin, its frames all spooled already.
pub(super) fn unpack(work: &Path, dest: &Path) -> Result<(), String> {
    let plan = read_plan(&mut Input::stdin())?;
    let (spool, frames) = spool_for_plan(work, &plan, None)?;
    unpack_plan(&plan, &frames, &spool, dest).inspect_err(|_| drop_damaged(work, &plan))?;
    record_unpacked(work, &plan)
}

/// After a failed unpack: every spooled frame of `plan` whose bytes no longer hash to its name
/// is removed, so that `have` reports it missing and the next try sends it again.
fn drop_damaged(work: &Path, plan: &[PlanLayer]) {
    let dir = spool(work);
    for frame in plan.iter().flat_map(|l| &l.frames) {
        let path = dir.join(&frame.sha256);
        if valid_sha256(&frame.sha256).is_ok()
            && path.exists()
            && !spooled_intact(&path, &frame.sha256)
        {
            let _ = fs::remove_file(&path);
        }
    }
}

/// The spool laid out for `plan`, and each layer's frames at their offsets in it (the offsets
/// the engine sent are its own). Without `arrivals` every frame must already be in the spool.
fn spool_for_plan<'a>(
    work: &Path,
    plan: &[PlanLayer],
    arrivals: Option<&'a Arrivals>,
) -> Result<(Spool<'a>, Vec<Vec<Frame>>), String> {
    let dir = spool(work);
    let mut spool = Spool {
        files: Vec::new(),
        total: 0,
        arrivals,
    };
    let mut frames: Vec<Vec<Frame>> = Vec::new();
    for layer in plan {
        let mut list = Vec::new();
        for f in &layer.frames {
            valid_sha256(&f.sha256)?;
            let path = dir.join(&f.sha256);
            if arrivals.is_none() && !path.is_file() {
                return Err(format!(
                    "frame {} of {} has not been received",
                    f.sha256, layer.label
                ));
            }
            list.push(Frame {
                offset: spool.total,
                ..f.clone()
            });
            spool.files.push((spool.total, path));
            spool.total += f.compressed_len;
        }
        frames.push(list);
    }
    Ok((spool, frames))
}

/// Unpack `plan`'s layers from `spool` into a tree swapped into `dest`.
fn unpack_plan(
    plan: &[PlanLayer],
    frames: &[Vec<Frame>],
    spool: &Spool<'_>,
    dest: &Path,
) -> Result<(), String> {
    let inputs: Vec<LayerInput<'_>> = plan
        .iter()
        .zip(frames)
        .map(|(layer, frames)| LayerInput {
            label: layer.label.clone(),
            compression: layer.compression,
            base: 0,
            frames,
            source: spool,
        })
        .collect();
    install_rootfs(&inputs, dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::{write_end, write_plan, write_record};
    use packer::unpack::Compression;

    /// A two-file tar cut in two independent zstd frames, as plan and frame bytes.
    fn two_frame_stream() -> (Vec<PlanLayer>, Vec<Vec<u8>>) {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, body) in [
            ("etc/hello", b"hello\n".repeat(3000)),
            ("usr/bin/tool", vec![7u8; 40000]),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, &body[..]).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let mid = tar.len() / 2;
        let frames: Vec<Vec<u8>> = [&tar[..mid], &tar[mid..]]
            .iter()
            .map(|part| zstd::bulk::compress(part, 3).unwrap())
            .collect();
        let mut offset = 0;
        let plan = vec![PlanLayer {
            label: "layer 1".into(),
            compression: Compression::Zstd,
            frames: frames
                .iter()
                .zip([mid, tar.len() - mid])
                .map(|(f, raw)| {
                    offset += f.len() as u64;
                    Frame {
                        offset: offset - f.len() as u64,
                        sha256: hex::encode(Sha256::digest(f)),
                        blake3: None,
                        compressed_len: f.len() as u64,
                        uncompressed_len: raw as u64,
                    }
                })
                .collect(),
        }];
        (plan, frames)
    }

    /// What the engine sends to `receive --dest`, written by the protocol's own writers.
    fn wire(plan: &[PlanLayer], frames: &[Vec<u8>], end: bool) -> Vec<u8> {
        let mut out = Vec::new();
        write_plan(&mut out, plan).unwrap();
        for (f, p) in frames.iter().zip(&plan[0].frames) {
            write_record(&mut out, &p.sha256, f).unwrap();
        }
        if end {
            write_end(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn receive_with_dest_unpacks_frames_as_they_arrive_and_keeps_them_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let (work, dest) = (dir.path().join("work"), dir.path().join("rootfs"));
        let (plan, frames) = two_frame_stream();
        let stream = wire(&plan, &frames, true);
        let count = receive_and_unpack_from(&work, &dest, &mut &stream[..]).unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            fs::read(dest.join("etc/hello")).unwrap(),
            b"hello\n".repeat(3000)
        );
        assert_eq!(
            fs::read(dest.join("usr/bin/tool")).unwrap(),
            vec![7u8; 40000]
        );
        for f in &plan[0].frames {
            assert!(spool(&work).join(&f.sha256).is_file());
        }
        // The tree's frame list waits for the journal to adopt it.
        let unpacked = listed(&work, FRAMES_UNPACKED);
        assert_eq!(unpacked.len(), 2);
        assert!(plan[0].frames.iter().all(|f| unpacked.contains(&f.sha256)));
        adopt_unpacked(&work).unwrap();
        assert_eq!(listed(&work, FRAMES), unpacked);
        assert!(!work.join(FRAMES_UNPACKED).exists());
    }

    #[test]
    fn a_kept_frame_damaged_on_disk_fails_the_unpack_and_is_then_reported_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (work, dest) = (dir.path().join("work"), dir.path().join("rootfs"));
        let (plan, frames) = two_frame_stream();
        let stream = wire(&plan, &frames, true);
        receive_and_unpack_from(&work, &dest, &mut &stream[..]).unwrap();
        adopt_unpacked(&work).unwrap();
        let damaged = spool(&work).join(&plan[0].frames[1].sha256);
        let mut bytes = fs::read(&damaged).unwrap();
        bytes[0] ^= 0xff;
        fs::write(&damaged, bytes).unwrap();
        // Kept frames are trusted by `have`; the unpack, which hashes every frame, is not fooled.
        let err = {
            let (spool, laid) = spool_for_plan(&work, &plan, None).unwrap();
            unpack_plan(&plan, &laid, &spool, &dest)
                .inspect_err(|_| drop_damaged(&work, &plan))
                .unwrap_err()
        };
        assert!(err.contains(&plan[0].frames[1].sha256), "{err}");
        assert!(!damaged.exists(), "the damaged frame is still spooled");
        assert!(spool(&work).join(&plan[0].frames[0].sha256).is_file());
        assert_eq!(
            fs::read(dest.join("etc/hello")).unwrap(),
            b"hello\n".repeat(3000)
        );
    }

    #[test]
    fn pruning_keeps_the_frames_of_the_installed_and_the_previous_generation_only() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let store = spool(&work);
        fs::create_dir_all(&store).unwrap();
        let frame = |body: &str| {
            let sha = hex::encode(Sha256::digest(body.as_bytes()));
            fs::write(store.join(&sha), body).unwrap();
            sha
        };
        let (installed, previous, shared, gone) =
            (frame("new"), frame("old"), frame("both"), frame("older"));
        fs::write(store.join(format!(".{gone}.tmp")), b"cut").unwrap();
        let list = |name: &str, shas: &[&String]| {
            let mut text = Vec::new();
            write_frame_list(&mut text, shas.iter().map(|s| s.as_str())).unwrap();
            fs::write(work.join(name), text).unwrap();
        };
        list(FRAMES, &[&installed, &shared]);
        list(&format!("{FRAMES}.prev"), &[&previous, &shared]);
        assert_eq!(prune(&work).unwrap(), (3, 10));
        let mut left: Vec<String> = fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![installed, previous, shared];
        want.sort();
        assert_eq!(left, want);
        // Without lists (a host installed before they were kept) nothing stays, not even the
        // directory.
        fs::remove_file(work.join(FRAMES)).unwrap();
        fs::remove_file(work.join(format!("{FRAMES}.prev"))).unwrap();
        assert_eq!(prune(&work).unwrap(), (0, 0));
        assert!(!store.exists());
        assert_eq!(prune(&work).unwrap(), (0, 0));
    }

    #[test]
    fn receive_with_dest_cut_mid_stream_fails_leaves_no_rootfs_and_keeps_what_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let (work, dest) = (dir.path().join("work"), dir.path().join("rootfs"));
        let (plan, frames) = two_frame_stream();
        let stream = wire(&plan, &frames[..1], false);
        let err = receive_and_unpack_from(&work, &dest, &mut &stream[..]).unwrap_err();
        assert!(err.contains("the stream was cut"), "{err}");
        assert!(!dest.exists());
        assert!(spool(&work).join(&plan[0].frames[0].sha256).is_file());
        assert!(!spool(&work).join(&plan[0].frames[1].sha256).exists());
    }

    #[test]
    fn a_frame_whose_bytes_do_not_match_its_digest_is_refused_and_not_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let (plan, mut frames) = two_frame_stream();
        frames[1][0] ^= 0xff;
        let mut stream = Vec::new();
        for (f, p) in frames.iter().zip(&plan[0].frames) {
            write_record(&mut stream, &p.sha256, f).unwrap();
        }
        write_end(&mut stream).unwrap();
        let err = receive_frames(&work, &mut &stream[..], None).unwrap_err();
        assert!(err.contains("arrived corrupt"), "{err}");
        assert!(spool(&work).join(&plan[0].frames[0].sha256).is_file());
        assert!(!spool(&work).join(&plan[0].frames[1].sha256).exists());
    }

    #[test]
    fn a_spooled_frame_counts_only_when_its_bytes_match_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"frame bytes".to_vec();
        let sha = hex::encode(Sha256::digest(&body));
        let path = dir.path().join(&sha);
        fs::write(&path, &body).unwrap();
        assert!(spooled_intact(&path, &sha));
        fs::write(&path, b"frame bytez").unwrap();
        assert!(!spooled_intact(&path, &sha));
        fs::write(&path, b"frame").unwrap();
        assert!(!spooled_intact(&path, &sha));
    }
}
