//! Distribution: the rootfs onto a host. The engine asks the agent which frames it lacks, sends
//! the layer plan and only those frames as one stream, and the agent unpacks while they arrive;
//! when every frame is spooled already (a run cut off before unpacking, or an upgrade to an
//! image whose frames the host keeps) only the unpack runs. The host keeps the frames of its
//! installed and previous generation (see `agent::spool`), so an upgrade sends only the frames
//! that changed, and says how much it reused. On this machine the payload is unpacked
//! directly, without a spool.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{command_failure, Engine, HostSlot, InstallEvent, Payload, StepFailure};
use crate::agent::protocol::{self, AgentCommand, PlanLayer};

/// The layer plan the host unpacks from: the layers `chosen` (indices into the payload's
/// layers) with all their frames.
pub(super) fn plan_of(payload: &Payload, chosen: &[usize]) -> Vec<PlanLayer> {
    chosen
        .iter()
        .map(|&i| &payload.layers[i])
        .map(|l| PlanLayer {
            label: l.label.clone(),
            compression: l.compression,
            frames: l.frames.clone(),
        })
        .collect()
}

impl Engine<'_> {
    /// The rootfs step: only the frames the host lacks travel; the host unpacks while they arrive.
    pub(super) fn distribute(&self, slot: &mut HostSlot) -> Result<(), StepFailure> {
        let local = slot.remote.as_ref().is_some_and(|r| r.is_local());
        let rootfs = self.rootfs();
        if local {
            return self.unpack_here(&rootfs).map_err(StepFailure::fatal);
        }
        let chosen = self.layers_for(&slot.host);
        let work = self.work_dir();
        // Which frames does the host lack?
        let missing = self.frames_missing(slot, &chosen)?;
        let wanted: Vec<(usize, usize)> = self
            .payload
            .layers
            .iter()
            .enumerate()
            .filter(|(li, _)| chosen.contains(li))
            .flat_map(|(li, l)| {
                l.frames
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| missing.contains(&f.sha256))
                    .map(move |(fi, _)| (li, fi))
            })
            .collect();
        let needed: u64 = chosen
            .iter()
            .flat_map(|&i| &self.payload.layers[i].frames)
            .map(|f| f.compressed_len)
            .sum();
        let to_send: u64 = wanted
            .iter()
            .map(|&(l, f)| self.payload.layers[l].frames[f].compressed_len)
            .sum();
        slot.bytes_needed = needed;
        slot.bytes_reused = needed - to_send;
        let frames = chosen
            .iter()
            .map(|&i| self.payload.layers[i].frames.len())
            .sum::<usize>();
        if wanted.len() < frames {
            (self.events)(InstallEvent::Note {
                host: Some(slot.host.ip),
                text: format!(
                    "frames: sending {} of {frames} ({} of {}), reusing {} the host keeps ({})",
                    wanted.len(),
                    crate::ui::human_bytes(to_send),
                    crate::ui::human_bytes(needed),
                    frames - wanted.len(),
                    crate::ui::human_bytes(needed - to_send),
                ),
            });
        }
        let mut plan = Vec::new();
        protocol::write_plan(&mut plan, &plan_of(self.payload, &chosen))
            .map_err(|e| StepFailure::fatal(e.to_string()))?;
        if wanted.is_empty() {
            // Every frame is spooled (an earlier run stopped before unpacking): unpack only.
            let remote = slot.connected()?;
            let cmd = self.agent_cmd(remote, &AgentCommand::Unpack { work, dest: rootfs })?;
            let mut plan_bytes: &[u8] = &plan;
            self.exec_ok(slot, "unpacking the rootfs", &cmd, Some(&mut plan_bytes))?;
            return Ok(());
        }
        // Send the plan, then the missing frames; the host unpacks while they arrive.
        // The spool is pruned only once the step is in the journal (see `run_step`): a run cut
        // off between the two finds every frame still there and sends nothing again.
        self.send_frames(
            slot,
            wanted,
            plan,
            Some(rootfs),
            "receiving and unpacking frames",
        )
    }

    /// Streams `prefix`, then the frames `wanted` (layer, frame), to the agent's `receive`,
    /// which spools them and, given `dest`, unpacks the plan at the head of `prefix` there as
    /// they arrive; counted in the bytes sent to the host and shown as its progress.
    fn send_frames(
        &self,
        slot: &mut HostSlot,
        wanted: Vec<(usize, usize)>,
        prefix: Vec<u8>,
        dest: Option<PathBuf>,
        doing: &str,
    ) -> Result<(), StepFailure> {
        let total: u64 = prefix.len() as u64
            + wanted
                .iter()
                .map(|&(l, f)| self.payload.layers[l].frames[f].compressed_len)
                .sum::<u64>();
        let remote = slot.connected()?;
        let cmd = self.agent_cmd(
            remote,
            &AgentCommand::Receive {
                work: self.work_dir(),
                dest,
            },
        )?;
        let ip = slot.host.ip;
        let events = self.events;
        let mut stream = FrameStream::new(self.payload, wanted, prefix, move |sent| {
            events(InstallEvent::Sent {
                host: ip,
                sent,
                total,
            })
        });
        let out = self.exec(slot, &cmd, Some(&mut stream))?;
        slot.bytes_sent += stream.sent;
        if let Some(err) = stream.error.take() {
            return Err(StepFailure::fatal(format!("reading the payload: {err}")));
        }
        if !out.success() {
            return Err(command_failure(doing, &out));
        }
        Ok(())
    }

    /// The frames of the layers `chosen` that the host's spool lacks (or holds damaged), as the
    /// agent's `have` says.
    pub(super) fn frames_missing(
        &self,
        slot: &mut HostSlot,
        chosen: &[usize],
    ) -> Result<HashSet<String>, StepFailure> {
        let mut list = Vec::new();
        let shas = chosen.iter().flat_map(|&i| &self.payload.layers[i].frames);
        protocol::write_frame_list(&mut list, shas.map(|f| f.sha256.as_str()))
            .map_err(|e| StepFailure::fatal(e.to_string()))?;
        let remote = slot.connected()?;
        let have_cmd = self.agent_cmd(
            remote,
            &AgentCommand::Have {
                work: self.work_dir(),
            },
        )?;
        let out = self.exec_ok(
            slot,
            "checking received frames",
            &have_cmd,
            Some(&mut &list[..]),
        )?;
        protocol::read_frame_list(&out.stdout[..])
            .collect::<Result<_, _>>()
            .map_err(|e| StepFailure::fatal(format!("the agent's list of missing frames: {e}")))
    }

    /// Sends the frames of layer `layer` named in `missing` into the host's spool, without
    /// unpacking anything; counted in the bytes sent to the host.
    pub(super) fn spool_frames(
        &self,
        slot: &mut HostSlot,
        layer: usize,
        missing: &HashSet<String>,
    ) -> Result<(), StepFailure> {
        let wanted: Vec<(usize, usize)> = self.payload.layers[layer]
            .frames
            .iter()
            .enumerate()
            .filter(|(_, f)| missing.contains(&f.sha256))
            .map(|(fi, _)| (layer, fi))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        self.send_frames(slot, wanted, Vec::new(), None, "receiving frames")
    }

    /// The layers `host` gets: all of them on a registry host, all but the images layer
    /// elsewhere.
    pub(super) fn layers_for(&self, host: &crate::clusterfile::Host) -> Vec<usize> {
        let serves = self.serves_images(host);
        (0..self.payload.layers.len())
            .filter(|&i| serves || !self.payload.layers[i].container_images)
            .collect()
    }

    /// Local install: unpack straight from the payload, no spool.
    fn unpack_here(&self, rootfs: &Path) -> Result<(), String> {
        crate::agent::install_rootfs(&self.payload.layer_inputs(), rootfs)
    }
}

/// The wire stream of `agent receive`: a prefix (the layer plan), records of the wanted frames,
/// then an end marker.
///
/// Frame bytes are served straight from the payload's source, without copying a whole frame,
/// and released as they are sent: the installing process holds a few MiB per host whatever the
/// frame size, host count or image size.
struct FrameStream<'a, F: Fn(u64)> {
    payload: &'a Payload,
    wanted: Vec<(usize, usize)>,
    next: usize,
    /// Record header of the current frame (or the end marker) and how much of it was sent.
    head: Vec<u8>,
    head_pos: usize,
    body: Option<FrameBody<'a>>,
    sent: u64,
    finished: bool,
    progress: F,
    error: Option<io::Error>,
}

/// The frame being sent.
struct FrameBody<'a> {
    bytes: std::borrow::Cow<'a, [u8]>,
    source: &'a dyn packer::source::ByteSource,
    /// Where the frame starts in `source`.
    offset: u64,
    pos: usize,
    released: usize,
}

/// Sent bytes of a frame are released in steps of this size.
const RELEASE_STEP: usize = 4 << 20;

impl<'a, F: Fn(u64)> FrameStream<'a, F> {
    /// `prefix` goes out before the first record.
    fn new(
        payload: &'a Payload,
        wanted: Vec<(usize, usize)>,
        prefix: Vec<u8>,
        progress: F,
    ) -> Self {
        FrameStream {
            payload,
            wanted,
            next: 0,
            head: prefix,
            head_pos: 0,
            body: None,
            sent: 0,
            finished: false,
            progress,
            error: None,
        }
    }

    /// Start the next record (or the end marker); false when everything was sent.
    fn advance(&mut self) -> io::Result<bool> {
        self.head.clear();
        self.head_pos = 0;
        if let Some(&(li, fi)) = self.wanted.get(self.next) {
            let layer = &self.payload.layers[li];
            let frame = &layer.frames[fi];
            let source = self.payload.sources[layer.source].as_ref();
            let offset = layer.base + frame.offset;
            let bytes = source.bytes(offset, frame.compressed_len)?;
            protocol::write_record_header(&mut self.head, &frame.sha256, frame.compressed_len)?;
            self.body = Some(FrameBody {
                bytes,
                source,
                offset,
                pos: 0,
                released: 0,
            });
            self.next += 1;
            Ok(true)
        } else if !self.finished {
            protocol::write_end(&mut self.head)?;
            self.finished = true;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn fill(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.head_pos < self.head.len() {
                let n = out.len().min(self.head.len() - self.head_pos);
                out[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
                self.head_pos += n;
                return Ok(n);
            }
            if let Some(body) = &mut self.body {
                if body.pos < body.bytes.len() {
                    let n = out.len().min(body.bytes.len() - body.pos);
                    out[..n].copy_from_slice(&body.bytes[body.pos..body.pos + n]);
                    body.pos += n;
                    if body.pos - body.released >= RELEASE_STEP {
                        body.source.release(
                            body.offset + body.released as u64,
                            (body.pos - body.released) as u64,
                        );
                        body.released = body.pos;
                    }
                    return Ok(n);
                }
                body.source.release(body.offset, body.bytes.len() as u64);
                self.body = None;
            }
            if !self.advance()? {
                return Ok(0);
            }
        }
    }
}

impl<F: Fn(u64)> Read for FrameStream<'_, F> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self.fill(out) {
            Ok(n) => {
                self.sent += n as u64;
                if n > 0 {
                    (self.progress)(self.sent);
                }
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                Err(copy)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::payload::Agent;
    use crate::deploy::PayloadLayer;
    use packer::frames::Frame;
    use packer::unpack::Compression;
    use sha2::{Digest, Sha256};

    #[test]
    fn the_frame_stream_sends_the_plan_then_only_the_wanted_frames_then_the_end_marker() {
        let frames: [&[u8]; 3] = [b"first frame", b"second, longer frame", b"third"];
        // The layer starts 5 bytes into its source; frame offsets are relative to it.
        let mut blob = b"head:".to_vec();
        let mut list = Vec::new();
        for f in frames {
            list.push(Frame {
                offset: blob.len() as u64 - 5,
                compressed_len: f.len() as u64,
                uncompressed_len: 2 * f.len() as u64,
                sha256: hex::encode(Sha256::digest(f)),
                blake3: None,
            });
            blob.extend_from_slice(f);
        }
        let payload = Payload {
            id: "0".repeat(64),
            image: "test:v1".into(),
            config: Default::default(),
            layers: vec![PayloadLayer {
                label: "layer 1".into(),
                compression: Compression::Zstd,
                base: 5,
                frames: list,
                source: 0,
                container_images: false,
            }],
            sources: vec![Box::new(blob)],
            agent: Agent::from_bytes(Vec::new()),
            container_images: Vec::new(),
        };
        let mut prefix = Vec::new();
        protocol::write_plan(&mut prefix, &plan_of(&payload, &[0])).unwrap();
        let mut stream = FrameStream::new(&payload, vec![(0, 0), (0, 2)], prefix, |_| {});
        let mut wire = Vec::new();
        stream.read_to_end(&mut wire).unwrap();
        assert_eq!(stream.sent, wire.len() as u64);

        let mut input = &wire[..];
        assert_eq!(protocol::read_plan(&mut input), Ok(plan_of(&payload, &[0])));
        let mut buf = Vec::new();
        for f in [frames[0], frames[2]] {
            let sha = protocol::read_record(&mut input, &mut buf).unwrap();
            assert_eq!(sha, Some(hex::encode(Sha256::digest(f))));
            assert_eq!(buf, f);
        }
        assert_eq!(protocol::read_record(&mut input, &mut buf), Ok(None));
        assert!(input.is_empty());
    }
}
