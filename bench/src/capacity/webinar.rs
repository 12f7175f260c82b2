//! The webinar's control side: viewers programmed over gRPC in batches while the presenter
//! sends, the time from each Apply's answer to each viewer's first verified copy, and the
//! promotion of a viewer to speaker and back.
//!
//! ```text
//!   Apply 0: the presenter's legs and tracks (session "webinar")
//!   lanes start; the presenter sends (an adaptive one first ramps to its three layers)
//!   per step: Apply × ceil(new viewers / apply_batch): each viewer's leg (remote: its own
//!             127.1.x.y at its lane's port) + audio, one camera layer, screen
//!             → the sink's first copy for each viewer (Shared::first_rx_ns)
//!   fixed + promote, halfway through the step: Apply (the viewer's audio track, the presenter's
//!             and every other viewer's subscription to it) → it speaks → Apply (remove the track)
//! ```
//!
//! A webinar is one control-plane session, so each Apply names the revision the previous one
//! answered (`expected_revision`), as a signaling service serialising its changes would.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_controlplane::pb;
use sluice_core::srtp::{RtpSendState, SrtpKeys};
use sluice_core::table::Op;
use sluice_dataplane::io::LegSocket;

use super::load::{Lane, PROMOTION_STEP, SENT_AT, STEP_AT, Shared, TAG_AT, stream_tag, write_header};
use super::plan::{AUDIO_PT, Plan};
use super::report::{FirstPacket, Programming};
use crate::live;

/// The webinar's control-plane session.
pub const SESSION: &str = "webinar";

/// Programs a webinar into the control plane, one batch of viewers at a time.
pub(super) struct Programmer {
    revision: u64,
    /// Viewers programmed so far (viewer k is participant k).
    pub(super) viewers: usize,
    /// Per participant: when the Apply that subscribed it was sent and answered, ns on the
    /// shared clock.
    requested_ns: Vec<u64>,
    answered_ns: Vec<u64>,
}

fn apply(grpc: &mut live::Grpc, revision: u64, key: String, changes: Vec<pb::Change>) -> anyhow::Result<pb::ApplyResponse> {
    let n = changes.len();
    let req = pb::ChangeSet { session: SESSION.into(), idempotency_key: key, expected_revision: Some(revision), changes };
    grpc.apply(req).map_err(|e| anyhow::anyhow!("Routes.Apply on session {SESSION} ({n} changes): {:?}: {}", e.code(), e.message()))
}

/// A subscription op as its gRPC change (its target layer as planned: the track is in an earlier
/// change set, so `live::changes` cannot see its layers).
fn subscription_change(op: &Op) -> anyhow::Result<pb::Change> {
    let Op::UpsertSubscription(s) = op else { anyhow::bail!("not a subscription: {op:?}") };
    Ok(pb::Change { change: Some(pb::change::Change::Subscription(live::subscription(s))) })
}

impl Programmer {
    /// Programs the presenter (meeting 0 of the plan) and records its ports in `plan`.
    pub(super) fn presenter(grpc: &mut live::Grpc, plan: &mut Plan) -> anyhow::Result<Self> {
        let r = apply(grpc, 0, "webinar-presenter".into(), live::changes(&plan.meetings[0].ops)?)?;
        let ports: HashMap<&str, u16> = r.ports.iter().map(|a| (a.leg.as_str(), a.local_port as u16)).collect();
        let port = |leg: u32| ports.get(live::leg_name(leg).as_str()).copied().with_context(|| format!("no port allocated for {}", live::leg_name(leg)));
        let p = &mut plan.participants[0];
        p.port = port(p.leg.0)?;
        if let Some(send) = &mut p.send {
            send.port = port(send.leg.0)?;
        }
        Ok(Self { revision: r.revision, viewers: 0, requested_ns: vec![0; plan.participants.len()], answered_ns: vec![0; plan.participants.len()] })
    }

    /// Programs viewers up to `viewers`, `batch` per Apply: each viewer's leg with its own address
    /// (at its lane's port) as the remote, and its subscriptions. After each answer the viewers'
    /// copies are owed (`Shared::copies`) and their sinks learn their ports.
    pub(super) fn program_to(
        &mut self,
        grpc: &mut live::Grpc,
        plan: &mut Plan,
        viewers: usize,
        batch: usize,
        lanes: &[Lane],
        shared: &Shared,
    ) -> anyhow::Result<Programming> {
        let w = plan.webinar.clone().context("not a webinar plan")?;
        let mut out = Programming::default();
        let t0 = Instant::now();
        while self.viewers < viewers {
            let range = self.viewers + 1..=(self.viewers + batch).min(viewers);
            let mut changes = Vec::new();
            for k in range.clone() {
                let ops = &plan.meetings[k].ops;
                let mut leg = live::changes(&ops[..1])?;
                // The remote is programmed, as a signaling service that knows it would: the viewer's
                // own address at its lane's port (or, in a namespace, the lane socket's address,
                // which the lane's viewers share; each leg still has its own SFU port).
                let lane = lanes[k % lanes.len()].addr;
                let remote = plan.participants[k].ip.map_or(lane, |ip| SocketAddr::new(IpAddr::V4(ip), lane.port()));
                if let Some(pb::Change { change: Some(pb::change::Change::Leg(l)) }) = leg.first_mut() {
                    l.remote = remote.to_string();
                }
                changes.extend(leg);
                for op in &ops[1..] {
                    changes.push(subscription_change(op)?);
                }
            }
            let t = Instant::now();
            let requested = shared.now_ns();
            let r = apply(grpc, self.revision, format!("webinar-viewers-{}", range.start()), changes)?;
            let answered = shared.now_ns();
            out.max_apply_ms = out.max_apply_ms.max(t.elapsed().as_secs_f64() * 1e3);
            self.revision = r.revision;
            out.applies += 1;
            let ports: HashMap<&str, u16> = r.ports.iter().map(|a| (a.leg.as_str(), a.local_port as u16)).collect();
            let mut per_lane: Vec<Vec<(u16, usize)>> = vec![Vec::new(); lanes.len()];
            for k in range.clone() {
                let name = live::leg_name(plan.participants[k].leg.0);
                let port = ports.get(name.as_str()).copied().with_context(|| format!("no port allocated for {name}"))?;
                plan.participants[k].port = port;
                per_lane[k % lanes.len()].push((port, k));
                self.answered_ns[k] = answered;
                self.requested_ns[k] = requested;
                for st in w.viewer_streams(k) {
                    shared.copies[st].fetch_add(1, Ordering::Relaxed);
                }
            }
            for (lane, ports) in lanes.iter().zip(per_lane) {
                let _ = lane.ports.send(ports);
            }
            out.viewers += range.end() + 1 - range.start();
            self.viewers = *range.end();
        }
        out.seconds = t0.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Apply → first copy of viewers `from..=to` (participants), as the sinks saw them.
    pub(super) fn first_packets(&self, shared: &Shared, from: usize, to: usize) -> FirstPacket {
        let (mut h, mut from_request) = (super::load::histogram(), super::load::histogram());
        let mut out = FirstPacket::default();
        for k in from..=to {
            let first = shared.first_rx_ns[k].load(Ordering::Relaxed);
            if first == 0 {
                out.missing += 1;
                continue;
            }
            if first < self.answered_ns[k] {
                out.before_answer += 1;
            }
            let _ = h.record(first.saturating_sub(self.answered_ns[k]).max(100));
            let _ = from_request.record(first.saturating_sub(self.requested_ns[k]).max(100));
        }
        out.samples = h.len() as usize;
        if !h.is_empty() {
            // Under 0.1 ms is "before the answer" or as good as it.
            let ms = |ns: u64| if ns <= 100 { 0.0 } else { ns as f64 / 1e6 };
            out.p50_ms = ms(h.value_at_quantile(0.5));
            out.p99_ms = ms(h.value_at_quantile(0.99));
            out.max_ms = ms(h.max());
            out.from_request_p50_ms = ms(from_request.value_at_quantile(0.5));
            out.from_request_p99_ms = ms(from_request.value_at_quantile(0.99));
            out.from_request_max_ms = ms(from_request.max());
        }
        out
    }

    /// Promotes the plan's speaker: its audio track, and the presenter's and every programmed
    /// viewer's subscription to it. Returns the subscribers and the Apply's duration, ms.
    pub(super) fn promote(&mut self, grpc: &mut live::Grpc, plan: &Plan) -> anyhow::Result<(usize, f64)> {
        let p = plan.webinar.as_ref().and_then(|w| w.promotion.as_ref()).context("no promotion planned")?;
        let mut changes = live::changes(std::slice::from_ref(&p.track_op))?;
        let mut subscribers = 0;
        for (_, op) in p.subscriptions.iter().filter(|(sub, _)| *sub <= self.viewers) {
            changes.push(subscription_change(op)?);
            subscribers += 1;
        }
        let t = Instant::now();
        let r = apply(grpc, self.revision, "webinar-promote".into(), changes)?;
        self.revision = r.revision;
        Ok((subscribers, t.elapsed().as_secs_f64() * 1e3))
    }

    /// Demotes the speaker: its track removed (the subscriptions to it go with it). Returns the
    /// Apply's duration, ms.
    pub(super) fn demote(&mut self, grpc: &mut live::Grpc, plan: &Plan) -> anyhow::Result<f64> {
        let p = plan.webinar.as_ref().and_then(|w| w.promotion.as_ref()).context("no promotion planned")?;
        let change = pb::Change { change: Some(pb::change::Change::RemoveTrack(live::track_name(p.track.0))) };
        let t = Instant::now();
        let r = apply(grpc, self.revision, "webinar-demote".into(), vec![change])?;
        self.revision = r.revision;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }
}

/// The promoted viewer speaking: its audio on its schedule, from its own address through its
/// lane's socket to its leg, stamped [`PROMOTION_STEP`] so the sinks count it apart, until
/// `stop`. Each packet is owed to `subscribers`.
pub(super) fn speak(
    plan: &Plan,
    shared: Arc<Shared>,
    socket: Arc<LegSocket>,
    sfu_ip: IpAddr,
    subscribers: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let p = plan.webinar.as_ref().and_then(|w| w.promotion.as_ref()).context("no promotion planned")?;
    let st = plan.streams[p.stream].clone();
    let member = &plan.participants[p.participant];
    let ip = member.ip;
    let dst = SocketAddr::new(sfu_ip, member.port);
    let keys = SrtpKeys::new(member.up.profile, &member.up.key, &member.up.salt).map_err(|e| anyhow::anyhow!("keys of the speaker: {e:?}"))?;
    let thread = std::thread::Builder::new().name("speaker".into()).spawn(move || {
        let mut srtp = RtpSendState::new();
        let mut buf = vec![0u8; 1500];
        let c = &shared.steps[PROMOTION_STEP];
        let start = Instant::now();
        let mut seq = 0x3000u16;
        for frame in 0u64.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let due = start + Duration::from_nanos(frame * st.interval_ns);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            seq = seq.wrapping_add(1);
            let ts = (frame as u32).wrapping_mul(st.ts_step).wrapping_add(st.ssrc);
            let h = write_header(&mut buf, AUDIO_PT | 0x80, seq, ts, st.ssrc, None);
            let payload = st.frame_bytes as usize;
            let b = &mut buf[h..h + payload];
            b.fill(0);
            b[STEP_AT] = PROMOTION_STEP as u8;
            b[TAG_AT] = stream_tag(st.kind);
            b[SENT_AT..SENT_AT + 8].copy_from_slice(&shared.now_ns().to_be_bytes());
            let Ok(len) = keys.protect_rtp(&mut srtp, &mut buf, h + payload) else { continue };
            let sent = match ip {
                Some(ip) => super::source::send_from(socket.socket(), ip, dst, &buf[..len]).is_ok(),
                None => socket.socket().send_to(&buf[..len], dst).is_ok(),
            };
            if sent {
                c.sent.fetch_add(1, Ordering::Relaxed);
                c.sent_bytes.fetch_add(payload as u64, Ordering::Relaxed);
                c.expected.fetch_add(subscribers as u64, Ordering::Relaxed);
            }
        }
    })?;
    Ok(thread)
}

/// What the bench's control plane journals, and where: its state directory's files and the
/// filesystem they are on (a tmpfs makes each Apply's fsync nearly free).
pub(super) fn journal(state_dir: &std::path::Path) -> String {
    let files: Vec<String> = std::fs::read_dir(state_dir)
        .map(|d| {
            let mut v: Vec<String> = d.flatten().filter_map(|e| Some(format!("{} {} B", e.file_name().to_string_lossy(), e.metadata().ok()?.len()))).collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    let fs = filesystem(state_dir);
    if files.iter().any(|f| f.starts_with("journal.bin")) {
        format!("on: every Apply is journaled and fsynced before it is answered, in {} ({fs}; {})", state_dir.display(), files.join(", "))
    } else {
        format!("NOT FOUND: no journal.bin in {} ({fs})", state_dir.display())
    }
}

/// The filesystem type of `path`, from statfs(2).
fn filesystem(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return "unknown filesystem".into() };
    // SAFETY: all-zero bytes are a valid statfs (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs, both live for the call.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return "unknown filesystem".into();
    }
    match st.f_type as i64 {
        0x0102_1994 => "tmpfs".into(),
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("filesystem type {other:#x}"),
    }
}
