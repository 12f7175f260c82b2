//! The daemon's side of the XDP stage: keeps the stage's allow-lists in step with the tables.
//!
//! One thread (`xdp-shield`) owns the [`XdpStage`] and is the only writer of its maps, so map
//! writes never touch a worker's packet path. It is fed through one bounded channel:
//!
//! ```text
//!  control thread ── Apply(delta) once every worker accepted it ──┐ (waits for the answer, so an
//!  workers ── RemoteLatched / SsrcLearned (try_send, never block) ─┤  `Applied` reply means the
//!                                                                  ▼  shield lets the leg in)
//!                    Model (legs: port + remote, tracks: layer SSRCs, latched, learned)
//!                    desired entries ── diff against installed ──▶ map inserts, then removals
//! ```
//!
//! Katran's shadow-state pattern: the thread keeps what it installed; each change recomputes the
//! desired entries from the model and writes only the difference. Inserts go before removals, so a
//! latched remote's exact entry is in place before the any-remote wildcard it replaces is gone.
//!
//! What is installed for a leg (see `sluice-common` for the key encodings):
//! - `SLUICE_LEGS`: (port, remote) → leg, where remote is the spec's or the latched one; a leg
//!   with neither gets the port's any-remote wildcard, so its first packet reaches the worker that
//!   authenticates it and latches the remote (`Event::RemoteLatched` then swaps in the exact entry).
//! - On a shared port (`LegSpec::shared_port`) only exact (port, remote) entries: the spec's
//!   remote of a static-key leg, the remote ICE selected for a WebRTC leg (its owning worker
//!   sends `Event::IceConnected` here); never the any-remote wildcard, which would let every
//!   source in. The stage checks that an RTP packet's SSRC belongs to the leg its source found,
//!   and SSRCs are keyed by port: on a shared port the legs' entries and their SSRCs' all carry
//!   one value per port ([`shared_leg`]), so any known remote with any SSRC announced on the port
//!   passes, and the worker (which finds the leg by remote, then the SSRC on that leg, then
//!   authenticates) does the exact check. (Two publishers on one shared port announcing the same
//!   SSRC then share one entry, which is harmless for the same reason.)
//! - `SLUICE_SSRCS`: every signalled SSRC and RTX SSRC of the tracks the leg publishes, plus those
//!   learned from RIDs (`Event::SsrcLearned`); while some layer's SSRC is still to be learned from
//!   its RID, the port's any-SSRC wildcard for that leg.
//!
//! At start the installed state is read back from the maps (a previous run's pins): entries no
//! current leg wants are removed on the first sync, so a restart never leaves a stale door open.
//! Relay legs come from the configuration and are reconciled the same way once at start.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use sluice_common::{FlowKey, LegValue, RelayTarget, SsrcKey, SsrcValue};
use sluice_core::forward::{Event, Shard};
use sluice_core::ids::{LegId, Ssrc, TrackId};
use sluice_core::table::{Delta, Op, TrackSpec};

pub use crate::bus::ShieldMsg;
use crate::xdp::{RelayRoute, VerdictCounts, XdpError, XdpStage, flow_key};

/// How often the thread reads the per-CPU verdict counters for `/metrics`.
const COUNTERS_EVERY: Duration = Duration::from_millis(250);
/// Capacity of the shield's inbox.
pub const SHIELD_QUEUE: usize = 8192;

/// The latest verdict counters, read by the metrics endpoint.
pub type SharedCounts = Arc<Mutex<Option<VerdictCounts>>>;

/// A relay leg from the configuration, resolved to its map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relay {
    /// Our port the relayed party sends to.
    pub local_port: u16,
    /// The relayed party.
    pub remote: SocketAddr,
    /// The rewrite.
    pub route: RelayRoute,
}

/// The leg value the stage's entries carry for every leg of shared port `port` (see the module
/// documentation); leg ids the control plane hands out stay far below it.
pub fn shared_leg(port: u16) -> u32 {
    0xffff_0000 | u32::from(port)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LegEntry {
    port: u16,
    /// On a shared port.
    shared: bool,
    remote: Option<SocketAddr>,
    /// A separate RTCP component: its port and fixed remote.
    rtcp: Option<(u16, Option<SocketAddr>)>,
}

/// What the tables say, as far as the shield cares.
#[derive(Debug, Default)]
struct Model {
    legs: BTreeMap<LegId, LegEntry>,
    tracks: BTreeMap<TrackId, TrackSpec>,
    latched: HashMap<LegId, SocketAddr>,
    /// (track, layer, rtx) → SSRC learned from a RID.
    learned: HashMap<(TrackId, u8, bool), Ssrc>,
}

impl Model {
    /// Mirrors `Tables::apply` for legs and tracks (the delta was already accepted by every
    /// worker, so it is valid): a full snapshot keeps only what it lists; removing a leg removes
    /// its tracks; a replaced leg keeps its latched remote unless the spec now names one; a
    /// replaced track keeps what was learned for layers whose RID did not change.
    fn apply(&mut self, delta: &Delta) {
        if delta.replace_all {
            let legs: Vec<LegId> = delta.ops.iter().filter_map(|o| if let Op::UpsertLeg(l) = o { Some(l.id) } else { None }).collect();
            let tracks: Vec<TrackId> = delta.ops.iter().filter_map(|o| if let Op::UpsertTrack(t) = o { Some(t.id) } else { None }).collect();
            self.legs.retain(|id, _| legs.contains(id));
            self.tracks.retain(|id, _| tracks.contains(id));
        }
        for op in &delta.ops {
            match op {
                Op::UpsertLeg(spec) => {
                    if spec.remote.is_some() {
                        self.latched.remove(&spec.id);
                    }
                    self.legs.insert(
                        spec.id,
                        LegEntry {
                            port: spec.local_port,
                            shared: spec.shared_port,
                            remote: spec.remote,
                            rtcp: spec.rtcp.as_deref().map(|c| (c.local_port, c.remote)),
                        },
                    );
                }
                Op::RemoveLeg(id) => {
                    self.legs.remove(id);
                    self.tracks.retain(|_, t| t.publisher != *id);
                }
                Op::UpsertTrack(spec) => {
                    if let Some(old) = self.tracks.get(&spec.id) {
                        let old_rids: Vec<_> = old.layers.iter().map(|l| l.rid.clone()).collect();
                        self.learned.retain(|(t, layer, _), _| {
                            *t != spec.id || spec.layers.get(usize::from(*layer)).is_some_and(|l| old_rids.get(usize::from(*layer)) == Some(&l.rid))
                        });
                    }
                    self.tracks.insert(spec.id, spec.clone());
                }
                Op::RemoveTrack(id) => {
                    self.tracks.remove(id);
                }
                Op::UpsertSubscription(_) | Op::RemoveSubscription { .. } => {}
            }
        }
        self.latched.retain(|id, _| self.legs.contains_key(id));
        self.learned.retain(|(t, _, _), _| self.tracks.contains_key(t));
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::RemoteLatched { leg, remote } if self.legs.get(&leg).is_some_and(|l| l.remote.is_none()) => {
                self.latched.insert(leg, remote);
            }
            Event::IceConnected { leg, remote } if self.legs.get(&leg).is_some_and(|l| l.shared && l.remote.is_none()) => {
                self.latched.insert(leg, remote);
            }
            Event::SsrcLearned { leg, track, layer, rtx, ssrc } if self.tracks.get(&track).is_some_and(|t| t.publisher == leg) => {
                self.learned.insert((track, layer, rtx), ssrc);
            }
            _ => {}
        }
    }

    /// The entries the maps should hold.
    fn desired(&self, workers: u16) -> Entries {
        let mut e = Entries::default();
        for (id, leg) in &self.legs {
            let owner = Shard { index: 0, count: workers.max(1) }.owner(leg.port);
            let value = LegValue { leg: if leg.shared { shared_leg(leg.port) } else { id.0 }, worker: u32::from(owner) };
            let key = match leg.remote.or_else(|| self.latched.get(id).copied()) {
                Some(remote) => flow_key(leg.port, remote),
                None if leg.shared => continue,
                None => FlowKey::any_remote(leg.port),
            };
            e.legs.insert(key, value);
            // A separate RTCP port: its remote if the spec names one, else anyone (the worker
            // latches the RTCP remote itself and checks it).
            if let Some((port, remote)) = leg.rtcp {
                e.legs.insert(remote.map_or(FlowKey::any_remote(port), |r| flow_key(port, r)), value);
            }
        }
        for (id, t) in &self.tracks {
            let Some(leg) = self.legs.get(&t.publisher) else { continue };
            let value = SsrcValue { leg: if leg.shared { shared_leg(leg.port) } else { t.publisher.0 } };
            let mut any = false;
            for (i, layer) in t.layers.iter().enumerate() {
                for (rtx, signalled, ext) in [(false, layer.ssrc, t.rid_ext), (true, layer.rtx_ssrc, t.repaired_rid_ext)] {
                    match signalled.or_else(|| self.learned.get(&(*id, i as u8, rtx)).copied()) {
                        Some(ssrc) => {
                            e.ssrcs.insert(SsrcKey::one(leg.port, ssrc.0), value);
                        }
                        None => any |= layer.rid.is_some() && ext.is_some(),
                    }
                }
            }
            if any {
                e.ssrcs.insert(SsrcKey::any(leg.port), value);
            }
        }
        e
    }
}

/// Map contents, keyed as in the maps.
#[derive(Debug, Default, Clone, PartialEq)]
struct Entries {
    legs: HashMap<FlowKey, LegValue>,
    ssrcs: HashMap<SsrcKey, SsrcValue>,
}

/// The shield: the stage, the model and what is installed.
#[derive(Debug)]
pub struct Shield {
    stage: XdpStage,
    model: Model,
    installed: Entries,
    workers: u16,
    counts: SharedCounts,
}

impl Shield {
    /// Takes over `stage` (opened, attached and configured by the caller), reading back what a
    /// previous run left in its maps, and installs `relays` (removing relay entries no longer
    /// configured). `workers` is the number of workers (leg ownership is `port % workers`).
    pub fn new(stage: XdpStage, workers: usize, relays: &[Relay], turn_port: u16) -> Result<Self, XdpError> {
        let installed = Entries { legs: stage.flow_keys()?.into_iter().collect(), ssrcs: stage.ssrc_keys()?.into_iter().collect() };
        let mut shield = Self { stage, model: Model::default(), installed, workers: workers as u16, counts: SharedCounts::default() };
        // Silence gates are the workers' runtime decisions: a previous run's are stale (its
        // workers are gone); the new workers gate again after their first speaker ticks.
        for (key, _) in shield.stage.silence_gates()? {
            shield.stage.ungate_silence(key.local_port, sluice_core::ids::Ssrc(key.ssrc))?;
        }
        // TURN channel routes are the TURN server's, and a previous run's server is gone with its
        // allocations: none of its routes may stay open. The new server's come as it binds them.
        for (key, _) in shield.stage.channel_keys()? {
            shield.stage.remove_channel_key(key)?;
        }
        shield.stage.set_turn_port(turn_port)?;
        let existing: Vec<(FlowKey, RelayTarget)> = shield.stage.relay_keys()?;
        for r in relays {
            shield.stage.add_relay(r.local_port, r.remote, &r.route)?;
        }
        for (key, _) in existing {
            if !relays.iter().any(|r| flow_key(r.local_port, r.remote) == key) {
                shield.stage.remove_relay_key(key)?;
            }
        }
        Ok(shield)
    }

    /// The counters the thread publishes (for the metrics endpoint).
    pub fn counts(&self) -> SharedCounts {
        Arc::clone(&self.counts)
    }

    /// Applies an accepted delta and syncs the maps; returns the number of map writes.
    pub fn apply(&mut self, delta: &Delta) -> Result<usize, XdpError> {
        self.model.apply(delta);
        self.sync()
    }

    /// Records a worker event and syncs the maps; a silence gate goes straight to its map
    /// (runtime state the workers decide, not derived from the tables).
    pub fn event(&mut self, e: Event) -> Result<usize, XdpError> {
        if let Event::SilenceGate { port, ssrc, ext, vad, on } = e {
            if on {
                self.stage.gate_silence(port, ssrc, ext, vad)?;
            } else {
                self.stage.ungate_silence(port, ssrc)?;
            }
            return Ok(1);
        }
        self.model.event(e);
        self.sync()
    }

    /// Installs or removes a TURN channel route's entry, so the stage unwraps its ChannelData
    /// (routes over UDP only: TCP and TLS stay with the TURN thread).
    pub fn turn_route(&mut self, change: sluice_core::turn::RouteChange) -> Result<usize, XdpError> {
        use sluice_core::turn::{RouteChange, Transport};
        let (RouteChange::Up(r) | RouteChange::Down(r)) = change;
        if r.client.transport != Transport::Udp {
            return Ok(0);
        }
        match change {
            RouteChange::Up(_) => self.stage.add_channel(r.client.client, r.client.server.port(), r.channel.get(), r.relayed, r.peer)?,
            RouteChange::Down(_) => self.stage.remove_channel_key(XdpStage::channel_key(r.client.client, r.client.server.port(), r.channel.get()))?,
        }
        Ok(1)
    }

    /// Writes the difference between the desired and the installed entries: inserts and changes
    /// first, then removals.
    fn sync(&mut self) -> Result<usize, XdpError> {
        let want = self.model.desired(self.workers);
        let mut writes = 0;
        for (k, v) in &want.legs {
            if self.installed.legs.get(k) != Some(v) {
                self.stage.insert_flow_key(*k, *v)?;
                self.installed.legs.insert(*k, *v);
                writes += 1;
            }
        }
        for (k, v) in &want.ssrcs {
            if self.installed.ssrcs.get(k) != Some(v) {
                self.stage.insert_ssrc_key(*k, LegId(v.leg))?;
                self.installed.ssrcs.insert(*k, *v);
                writes += 1;
            }
        }
        let stale: Vec<FlowKey> = self.installed.legs.keys().filter(|k| !want.legs.contains_key(k)).copied().collect();
        for k in stale {
            self.stage.remove_flow_key(k)?;
            self.installed.legs.remove(&k);
            writes += 1;
        }
        let stale: Vec<SsrcKey> = self.installed.ssrcs.keys().filter(|k| !want.ssrcs.contains_key(k)).copied().collect();
        for k in stale {
            self.stage.remove_ssrc_key(k)?;
            self.installed.ssrcs.remove(&k);
            writes += 1;
        }
        Ok(writes)
    }

    fn publish_counts(&self) {
        match self.stage.verdict_counts() {
            Ok(c) => *self.counts.lock().unwrap_or_else(PoisonError::into_inner) = Some(c),
            Err(e) => tracing::warn!(error = %e, "reading the XDP verdict counters"),
        }
    }

    /// Runs the shield on its own thread until [`ShieldMsg::Stop`] or every sender is gone.
    pub fn spawn(mut self, inbox: Receiver<ShieldMsg>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("xdp-shield".into()).spawn(move || {
            self.publish_counts();
            let mut last = Instant::now();
            loop {
                match inbox.recv_timeout(COUNTERS_EVERY) {
                    Ok(ShieldMsg::Apply(delta, reply)) => {
                        let r = self.apply(&delta).map_err(|e| e.to_string());
                        if let Err(e) = &r {
                            tracing::error!(error = %e, generation = delta.generation.0, "XDP shield out of step with the tables");
                        }
                        let _ = reply.send(r);
                    }
                    Ok(ShieldMsg::Event(e)) => {
                        if let Err(err) = self.event(e) {
                            tracing::error!(error = %err, event = ?e, "XDP shield: applying a worker event");
                        }
                    }
                    Ok(ShieldMsg::TurnRoute(change)) => {
                        if let Err(err) = self.turn_route(change) {
                            tracing::error!(error = %err, change = ?change, "XDP shield: a TURN channel route");
                        }
                    }
                    Ok(ShieldMsg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                if last.elapsed() >= COUNTERS_EVERY {
                    self.publish_counts();
                    last = Instant::now();
                }
            }
            self.publish_counts();
        })
    }
}

/// The control thread's handle on the shield thread.
#[derive(Debug, Clone)]
pub struct ShieldHandle {
    tx: Sender<ShieldMsg>,
}

impl ShieldHandle {
    /// A channel pair: the handle (and worker senders cloned from [`ShieldHandle::sender`]) and
    /// the inbox for [`Shield::spawn`].
    pub fn channel() -> (Self, Receiver<ShieldMsg>) {
        let (tx, rx) = crossbeam_channel::bounded(SHIELD_QUEUE);
        (Self { tx }, rx)
    }

    /// A sender for workers' events.
    pub fn sender(&self) -> Sender<ShieldMsg> {
        self.tx.clone()
    }

    /// Syncs the shield with an applied delta and waits (up to 10 s) until its maps say so.
    pub fn apply(&self, delta: Arc<Delta>) -> Result<usize, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx.send(ShieldMsg::Apply(delta, tx)).map_err(|_| "the XDP shield thread is gone".to_string())?;
        rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "the XDP shield did not answer within 10 s".to_string())?
    }

    /// Stops the thread.
    pub fn stop(&self) {
        let _ = self.tx.send(ShieldMsg::Stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::ids::{Generation, Pt};
    use sluice_core::srtp::Profile;
    use sluice_core::table::{Codec, KeyMaterial, LayerSpec, LegSpec, MediaKind, PayloadSpec};

    fn leg(id: u32, port: u16, remote: Option<&str>) -> Op {
        let k = KeyMaterial::seeded(Profile::AeadAes128Gcm, 1);
        Op::UpsertLeg(LegSpec { remote: remote.map(|r| r.parse().unwrap()), ..LegSpec::new(LegId(id), port, k.clone(), k, Ssrc(1)) })
    }

    fn track(id: u32, publisher: u32, layers: Vec<LayerSpec>) -> Op {
        Op::UpsertTrack(TrackSpec {
            dd_ext: None,
            id: TrackId(id),
            publisher: LegId(publisher),
            kind: MediaKind::Video,
            clock_rate: 90_000,
            layers,
            payload_types: vec![PayloadSpec { pt: Pt(96), codec: Codec::Vp8, rtx_pt: Some(Pt(97)) }],
            rid_ext: Some(4),
            repaired_rid_ext: Some(5),
            mid: None,
            audio_level_ext: None,
            speaker_group: None,
        })
    }

    fn delta(generation: u64, replace_all: bool, ops: Vec<Op>) -> Delta {
        Delta { generation: Generation(generation), replace_all, ops }
    }

    fn legs(e: &Entries) -> Vec<(u16, Option<SocketAddr>, u32)> {
        let mut v: Vec<_> = e
            .legs
            .iter()
            .map(|(k, v)| {
                let remote = (k.remote_port != 0).then(|| {
                    let ip = std::net::Ipv6Addr::from(k.remote_addr);
                    SocketAddr::new(ip.to_ipv4_mapped().map_or(ip.into(), Into::into), k.remote_port)
                });
                (k.local_port, remote, v.leg)
            })
            .collect();
        v.sort();
        v
    }

    fn ssrcs(e: &Entries) -> Vec<(u16, Option<u32>, u32)> {
        let mut v: Vec<_> = e.ssrcs.iter().map(|(k, v)| (k.local_port, (k.scope == 0).then_some(k.ssrc), v.leg)).collect();
        v.sort();
        v
    }

    #[test]
    fn legs_wildcard_until_latched_then_exact() {
        let mut m = Model::default();
        m.apply(&delta(1, false, vec![leg(1, 33_000, None), leg(2, 33_001, Some("10.0.0.2:5000"))]));
        let e = m.desired(2);
        assert_eq!(legs(&e), vec![(33_000, None, 1), (33_001, Some("10.0.0.2:5000".parse().unwrap()), 2)]);
        assert_eq!(e.legs[&FlowKey::any_remote(33_000)].worker, 0);
        assert_eq!(e.legs.values().find(|v| v.leg == 2).unwrap().worker, 1, "owner is port % workers");
        m.event(Event::RemoteLatched { leg: LegId(1), remote: "10.0.0.9:7000".parse().unwrap() });
        assert_eq!(legs(&m.desired(2))[0], (33_000, Some("10.0.0.9:7000".parse().unwrap()), 1));
        // A replaced spec without a remote keeps the latched one (as the core does) ...
        m.apply(&delta(2, false, vec![leg(1, 33_000, None)]));
        assert_eq!(legs(&m.desired(2))[0].1, Some("10.0.0.9:7000".parse().unwrap()));
        // ... a spec naming a remote wins; a latch for a leg with a spec remote is ignored.
        m.apply(&delta(3, false, vec![leg(1, 33_000, Some("10.0.0.3:1"))]));
        m.event(Event::RemoteLatched { leg: LegId(1), remote: "10.0.0.9:7000".parse().unwrap() });
        assert_eq!(legs(&m.desired(2))[0].1, Some("10.0.0.3:1".parse().unwrap()));
        m.apply(&delta(4, false, vec![Op::RemoveLeg(LegId(1))]));
        assert_eq!(legs(&m.desired(2)).len(), 1);
        m.apply(&delta(9, true, vec![]));
        assert!(m.desired(2).legs.is_empty(), "a full snapshot keeps only what it lists");
    }

    #[test]
    fn signalled_ssrcs_exact_unsignalled_wildcard_until_learned() {
        let mut m = Model::default();
        let layer = |ssrc: Option<u32>, rtx: Option<u32>, rid: &str| LayerSpec { ssrc: ssrc.map(Ssrc), rtx_ssrc: rtx.map(Ssrc), rid: Some(rid.into()) };
        m.apply(&delta(1, false, vec![leg(1, 33_000, None), track(10, 1, vec![layer(Some(0xa), Some(0xb), "q"), layer(None, None, "h")])]));
        assert_eq!(ssrcs(&m.desired(1)), vec![(33_000, None, 1), (33_000, Some(0xa), 1), (33_000, Some(0xb), 1)]);
        m.event(Event::SsrcLearned { leg: LegId(1), track: TrackId(10), layer: 1, rtx: false, ssrc: Ssrc(0xc) });
        assert!(ssrcs(&m.desired(1)).contains(&(33_000, None, 1)), "the RTX SSRC of layer 1 is still unknown");
        m.event(Event::SsrcLearned { leg: LegId(1), track: TrackId(10), layer: 1, rtx: true, ssrc: Ssrc(0xd) });
        assert_eq!(ssrcs(&m.desired(1)), vec![(33_000, Some(0xa), 1), (33_000, Some(0xb), 1), (33_000, Some(0xc), 1), (33_000, Some(0xd), 1)]);
        // A learn claimed by a leg that does not publish the track is ignored.
        m.event(Event::SsrcLearned { leg: LegId(2), track: TrackId(10), layer: 0, rtx: false, ssrc: Ssrc(0xe) });
        assert_eq!(ssrcs(&m.desired(1)).len(), 4);
        // Re-sending the same track keeps what was learned; changing a layer's RID forgets it.
        m.apply(&delta(2, false, vec![track(10, 1, vec![layer(Some(0xa), Some(0xb), "q"), layer(None, None, "h")])]));
        assert_eq!(ssrcs(&m.desired(1)).len(), 4);
        m.apply(&delta(3, false, vec![track(10, 1, vec![layer(Some(0xa), Some(0xb), "q"), layer(None, None, "f")])]));
        assert!(ssrcs(&m.desired(1)).contains(&(33_000, None, 1)));
        // Removing the publisher removes its tracks' SSRCs.
        m.apply(&delta(4, false, vec![Op::RemoveLeg(LegId(1))]));
        assert!(m.desired(1).ssrcs.is_empty());
    }

    #[test]
    fn shared_port_legs_get_exact_entries_and_one_value_per_port() {
        let mut m = Model::default();
        let shared = |op: Op| match op {
            Op::UpsertLeg(l) => Op::UpsertLeg(LegSpec { shared_port: true, ..l }),
            other => other,
        };
        let one = |ssrc: u32| vec![LayerSpec { ssrc: Some(Ssrc(ssrc)), rtx_ssrc: None, rid: None }];
        let webrtc =
            LegSpec { remote: None, shared_port: true, ..LegSpec::new(LegId(3), 34_000, KeyMaterial::placeholder(), KeyMaterial::placeholder(), Ssrc(3)) };
        m.apply(&delta(
            1,
            false,
            vec![
                shared(leg(1, 34_000, Some("10.0.0.1:5000"))),
                shared(leg(2, 34_000, Some("10.0.0.2:5000"))),
                Op::UpsertLeg(webrtc),
                track(10, 1, one(0xa)),
                track(20, 2, one(0xb)),
            ],
        ));
        let v = shared_leg(34_000);
        // No any-remote entry for the WebRTC leg: the port would be open to everyone.
        assert_eq!(legs(&m.desired(2)), vec![(34_000, Some("10.0.0.1:5000".parse().unwrap()), v), (34_000, Some("10.0.0.2:5000".parse().unwrap()), v)]);
        assert_eq!(ssrcs(&m.desired(2)), vec![(34_000, Some(0xa), v), (34_000, Some(0xb), v)]);
        assert!(m.desired(2).legs.values().all(|l| l.worker == u32::from(34_000u16 % 2)), "one owner: port % workers");
        // ICE selected the WebRTC leg's remote: its exact entry comes in.
        m.event(Event::IceConnected { leg: LegId(3), remote: "10.0.0.3:5000".parse().unwrap() });
        assert!(legs(&m.desired(2)).contains(&(34_000, Some("10.0.0.3:5000".parse().unwrap()), v)));
        // A per-leg port's WebRTC leg keeps its wildcard (IceConnected does not touch it).
        m.apply(&delta(2, false, vec![leg(4, 34_001, None)]));
        m.event(Event::IceConnected { leg: LegId(4), remote: "10.0.0.4:5000".parse().unwrap() });
        assert!(legs(&m.desired(2)).contains(&(34_001, None, 4)));
    }

    /// The real maps: a pinned-less stage, synced, read back.
    #[test]
    fn sync_writes_only_the_difference_and_reads_back_a_previous_run() {
        let stage = XdpStage::load_unpinned().expect("load the XDP program (needs root)");
        let mut s = Shield::new(stage, 1, &[], 0).unwrap();
        let d = delta(1, false, vec![leg(1, 33_000, None), track(10, 1, vec![LayerSpec { ssrc: Some(Ssrc(0xa)), rtx_ssrc: None, rid: None }])]);
        assert_eq!(s.apply(&d).unwrap(), 2, "one leg wildcard, one SSRC");
        assert_eq!(s.apply(&delta(2, false, vec![leg(1, 33_000, None)])).unwrap(), 0, "nothing changed");
        let latched = Event::RemoteLatched { leg: LegId(1), remote: "10.0.0.9:7000".parse().unwrap() };
        assert_eq!(s.event(latched).unwrap(), 2, "exact in, wildcard out");
        let keys = s.stage.flow_keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].0, flow_key(33_000, "10.0.0.9:7000".parse().unwrap()));
        // A new shield on the same maps (a restart) removes what no leg wants any more.
        let Shield { stage, .. } = s;
        let mut s = Shield::new(stage, 1, &[], 0).unwrap();
        assert_eq!(s.installed.legs.len() + s.installed.ssrcs.len(), 2);
        assert_eq!(s.apply(&delta(1, true, vec![])).unwrap(), 2);
        assert!(s.stage.flow_keys().unwrap().is_empty() && s.stage.ssrc_keys().unwrap().is_empty());
    }
}
