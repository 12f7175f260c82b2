//! How deltas apply: every op validated against the state the ops before it left, every mutation
//! recorded inverted in an undo log, the whole delta rolled back at the first refusal; upserts keep
//! runtime state wherever keys and SSRCs are unchanged.

use super::spec::MAX_LAYERS;
use super::*;
use crate::audio::slot::SlotSet;

/// The mutations of the delta being applied, inverted, and which entities already have a saved
/// copy (each is saved once, before its first change).
#[derive(Default)]
struct UndoLog {
    entries: Vec<Undo>,
    saved_legs: std::collections::HashSet<LegId, RandomState>,
    saved_tracks: std::collections::HashSet<TrackId, RandomState>,
}

impl UndoLog {
    fn push(&mut self, u: Undo) {
        match &u {
            Undo::LegInserted(id) => {
                self.saved_legs.insert(*id);
            }
            Undo::LegReplaced(l) | Undo::LegRemoved(l) => {
                self.saved_legs.insert(l.spec.id);
            }
            Undo::TrackInserted(id) => {
                self.saved_tracks.insert(*id);
            }
            Undo::TrackReplaced(t) | Undo::TrackRemoved(t) => {
                self.saved_tracks.insert(t.spec.id);
            }
            // One subscription's own undo: the track is not saved whole (a webinar's track holds
            // thousands; saving them all for each added viewer made a delta cost the session).
            Undo::SubPushed(_) | Undo::SubReplaced(..) | Undo::SubRemoved(..) => {}
        }
        self.entries.push(u);
    }
}

/// The inverse of one mutation, for rollback.
enum Undo {
    LegInserted(LegId),
    LegReplaced(Box<Leg>),
    LegRemoved(Box<Leg>),
    TrackInserted(TrackId),
    TrackReplaced(Box<Track>),
    TrackRemoved(Box<Track>),
    /// A subscription was pushed onto the track's list (undone by popping it).
    SubPushed(TrackId),
    /// The subscription at this index of the track's list was this one.
    SubReplaced(TrackId, usize, Box<Subscription>),
    /// This subscription was swap-removed from this index of the track's list.
    SubRemoved(TrackId, usize, Box<Subscription>),
}

impl Tables {
    /// Applies a delta atomically: all ops, or none (the error says which op failed and why).
    pub fn apply(&mut self, delta: Delta) -> Result<Generation, DeltaError> {
        if !delta.replace_all && delta.generation.0 != self.generation.0 + 1 {
            return Err(DeltaError::Generation { current: self.generation, got: delta.generation });
        }
        let mut undo = UndoLog::default();
        let result = self.apply_ops(&delta, &mut undo);
        let result = match result {
            Ok(()) => {
                self.generation = delta.generation;
                Ok(self.generation)
            }
            Err(e) => {
                while let Some(u) = undo.entries.pop() {
                    self.revert(u);
                }
                Err(e)
            }
        };
        self.reindex_slots();
        self.reindex_owners();
        result
    }

    fn apply_ops(&mut self, delta: &Delta, undo: &mut UndoLog) -> Result<(), DeltaError> {
        for (i, op) in delta.ops.iter().enumerate() {
            match op {
                Op::UpsertLeg(spec) => self.upsert_leg(i, spec, undo)?,
                Op::RemoveLeg(id) => {
                    if !self.legs.contains_key(id) {
                        return Err(DeltaError::UnknownLeg { op: i, leg: *id });
                    }
                    self.remove_leg(*id, undo);
                }
                Op::UpsertTrack(spec) => self.upsert_track(i, spec, undo)?,
                Op::RemoveTrack(id) => {
                    if !self.tracks.contains_key(id) {
                        return Err(DeltaError::UnknownTrack { op: i, track: *id });
                    }
                    self.remove_track(*id, undo);
                }
                Op::UpsertSubscription(spec) => self.upsert_sub(i, spec, undo)?,
                Op::RemoveSubscription { subscriber, track } => {
                    let ok = self.tracks.get(track).and_then(|t| t.sub_index(*subscriber)).is_some();
                    if !ok {
                        return Err(DeltaError::UnknownSubscription { op: i, subscriber: *subscriber, track: *track });
                    }
                    for removed in self.remove_sub(*track, *subscriber, undo) {
                        self.retire_sub(&removed, undo);
                    }
                    self.reindex_egress(*subscriber, *track, undo);
                }
            }
        }
        if delta.replace_all {
            self.remove_unlisted(delta, undo);
        }
        Ok(())
    }

    /// In a full snapshot, removes whatever the snapshot does not list.
    fn remove_unlisted(&mut self, delta: &Delta, undo: &mut UndoLog) {
        let mut legs = std::collections::HashSet::new();
        let mut tracks = std::collections::HashSet::new();
        let mut subs = std::collections::HashSet::new();
        for op in &delta.ops {
            match op {
                Op::UpsertLeg(s) => {
                    legs.insert(s.id);
                }
                Op::UpsertTrack(s) => {
                    tracks.insert(s.id);
                }
                Op::UpsertSubscription(s) => {
                    subs.insert((s.subscriber, s.track));
                }
                _ => {}
            }
        }
        let stale_legs: Vec<_> = self.legs.keys().filter(|l| !legs.contains(*l)).copied().collect();
        for l in stale_legs {
            self.remove_leg(l, undo);
        }
        let stale_tracks: Vec<_> = self.tracks.keys().filter(|t| !tracks.contains(*t)).copied().collect();
        for t in stale_tracks {
            self.remove_track(t, undo);
        }
        let stale_subs: Vec<_> =
            self.tracks.values().flat_map(|t| t.subs.iter().map(move |s| (s.subscriber, t.spec.id))).filter(|k| !subs.contains(k)).collect();
        for (subscriber, track) in stale_subs {
            for removed in self.remove_sub(track, subscriber, undo) {
                self.retire_sub(&removed, undo);
            }
            self.reindex_egress(subscriber, track, undo);
        }
    }

    fn upsert_leg(&mut self, op: usize, spec: &LegSpec, undo: &mut UndoLog) -> Result<(), DeltaError> {
        for port in spec.ports() {
            if let Some(&owner) = self.by_port.get(&port)
                && owner != spec.id
            {
                return Err(DeltaError::PortInUse { op, port, owner });
            }
            // A port is one leg's or shared, never both.
            if !(spec.shared_port && port == spec.local_port)
                && self.shared.contains_key(&port)
                && let Some(owner) = self.legs.values().find(|l| l.spec.shared_port && l.spec.local_port == port && l.spec.id != spec.id)
            {
                return Err(DeltaError::PortInUse { op, port, owner: owner.spec.id });
            }
        }
        spec.validate().map_err(|e| DeltaError::invalid(op, e))?;
        if spec.shared_port {
            self.check_shared(op, spec)?;
        }
        // Slot SSRCs are out-SSRCs of the leg like its subscriptions'.
        if let (Some(a), Some(old)) = (&spec.audio_slots, self.legs.get(&spec.id))
            && let Some(&s) = a.out_ssrcs.iter().find(|s| old.egress.iter().any(|(e, _)| e == *s))
        {
            return Err(DeltaError::DuplicateSsrc { op, leg: spec.id, ssrc: s });
        }
        let rx = leg_keys(spec.plain_rtp, &spec.rx).map_err(|_| DeltaError::Invalid {
            op,
            field: "leg.rx",
            why: "key or salt length does not match the profile",
        })?;
        let tx = leg_keys(spec.plain_rtp, &spec.tx).map_err(|_| DeltaError::Invalid {
            op,
            field: "leg.tx",
            why: "key or salt length does not match the profile",
        })?;
        match self.legs.get(&spec.id) {
            Some(old) => {
                // A WebRTC leg whose ICE/DTLS parameters did not change keeps its handshake's
                // keys and consent whatever the placeholder keys say.
                let keep_edge = spec.edge.is_some() && old.spec.edge == spec.edge;
                // Plain and SRTP legs may have the same (placeholder) material: not the same keys.
                let same_kind = old.spec.plain_rtp == spec.plain_rtp;
                let same_rx = keep_edge || (same_kind && old.spec.rx == spec.rx && old.edge.as_ref().is_none_or(|e| e.keys.is_none()));
                let same_tx = keep_edge || (same_kind && old.spec.tx == spec.tx && old.edge.as_ref().is_none_or(|e| e.keys.is_none()));
                self.save_leg(spec.id, undo);
                self.unindex_leg(spec.id);
                let leg = self.legs.get_mut(&spec.id).expect("present");
                if !keep_edge {
                    leg.edge = spec.edge.as_ref().map(|_| EdgeState::new());
                }
                leg.uplink.respec(&spec.feedback);
                if spec.feedback.twcc_ext.is_some() != leg.downlink.is_some() {
                    leg.downlink = spec.feedback.twcc_ext.map(|_| Box::default());
                }
                if spec.remote.is_some() {
                    leg.remote = spec.remote;
                }
                if leg.spec.audio_slots != spec.audio_slots {
                    leg.slots = spec.audio_slots.as_ref().map(|a| Box::new(SlotSet::new(spec.id, a, leg.slots.take().map(|b| *b))));
                }
                if leg.spec != *spec {
                    // A new spec may fix what was wrong: its drops are news again.
                    leg.drops_reported = 0;
                }
                leg.spec = spec.clone();
                if !same_rx || !same_tx {
                    leg.keys_digest = checkpoint::keys_digest(spec);
                }
                if spec.rtcp.as_deref().is_none_or(|c| c.remote.is_some()) {
                    leg.rtcp_remote = None;
                }
                self.index_leg(spec.id);
                self.rekey(spec.id, (!same_rx).then_some(rx), (!same_tx).then_some(tx));
            }
            None => {
                self.legs.insert(
                    spec.id,
                    Box::new(Leg {
                        spec: spec.clone(),
                        remote: spec.remote,
                        rx,
                        tx,
                        ingress: Vec::new(),
                        egress: Vec::new(),
                        rtcp_recv: Vec::new(),
                        feedback_srtcp: RtcpSendState::default(),
                        tracks: Vec::new(),
                        activity: Activity::default(),
                        traffic: Default::default(),
                        stats: LegStats::default(),
                        edge: spec.edge.as_ref().map(|_| EdgeState::new()),
                        uplink: Uplink::new(&spec.feedback),
                        downlink: spec.feedback.twcc_ext.map(|_| Box::default()),
                        retired: Vec::new(),
                        slots: spec.audio_slots.as_ref().map(|a| Box::new(SlotSet::new(spec.id, a, None))),
                        limiter: Limiter::default(),
                        keys_digest: checkpoint::keys_digest(spec),
                        rtcp_remote: None,
                        drops_reported: 0,
                    }),
                );
                self.index_leg(spec.id);
                undo.push(Undo::LegInserted(spec.id));
            }
        }
        Ok(())
    }

    /// The checks of a leg on a shared port against the other legs there: its remote (the
    /// spec's, or the one it has) and, for a WebRTC leg, its local ufrag must be its own.
    fn check_shared(&self, op: usize, spec: &LegSpec) -> Result<(), DeltaError> {
        let port = spec.local_port;
        let remote = spec.remote.or_else(|| self.legs.get(&spec.id).and_then(|l| l.remote));
        if let Some(remote) = remote
            && let Some(&owner) = self.by_remote.get(&(port, remote))
            && owner != spec.id
        {
            return Err(DeltaError::RemoteInUse { op, port, remote, owner });
        }
        if let Some(e) = &spec.edge
            && self.by_ufrag.get(&e.local.ufrag).is_some_and(|&o| o != spec.id)
        {
            return Err(DeltaError::Invalid { op, field: "leg.edge.local.ufrag", why: "another WebRTC leg on a shared port has this ufrag" });
        }
        Ok(())
    }

    /// Puts new keys in place on a leg, restarting the SRTP state under them: receive state
    /// (ROC, replay windows) for new `rx`, send state of the leg's feedback and of every
    /// subscription to it for new `tx`.
    pub(super) fn rekey(&mut self, id: LegId, rx: Option<SrtpKeys>, tx: Option<SrtpKeys>) {
        let Some(leg) = self.legs.get_mut(&id) else { return };
        if let Some(rx) = rx {
            leg.rx = rx;
            for i in &mut leg.ingress {
                i.recv = RtpRecvState::new(self.config.replay_window);
            }
            leg.rtcp_recv.clear();
        }
        if let Some(tx) = tx {
            leg.tx = tx;
            leg.feedback_srtcp = RtcpSendState::default();
            for s in leg.slots.iter_mut().flat_map(|set| set.slots.iter_mut()) {
                s.sub.srtp = RtpSendState::default();
                s.sub.srtcp = RtcpSendState::default();
            }
            for r in &mut leg.retired {
                r.srtp = RtpSendState::default();
                r.rtx_srtp = RtpSendState::default();
                r.srtcp = RtcpSendState::default();
            }
            for track in self.tracks.values_mut() {
                for s in track.subs.iter_mut().filter(|s| s.subscriber == id) {
                    s.srtp = RtpSendState::default();
                    s.rtx_srtp = RtpSendState::default();
                    s.srtcp = RtcpSendState::default();
                }
            }
        }
    }

    fn upsert_track(&mut self, op: usize, spec: &TrackSpec, undo: &mut UndoLog) -> Result<(), DeltaError> {
        let Some(publisher) = self.legs.get(&spec.publisher) else {
            return Err(DeltaError::UnknownLeg { op, leg: spec.publisher });
        };
        spec.validate().map_err(|e| DeltaError::invalid(op, e))?;
        // Publisher SSRCs are unique on the leg, across its tracks and within this one.
        let mut ssrcs: Vec<Ssrc> = spec.layers.iter().flat_map(|l| [l.ssrc, l.rtx_ssrc]).flatten().collect();
        ssrcs.sort_unstable();
        if let Some(w) = ssrcs.windows(2).find(|w| w[0] == w[1]) {
            return Err(DeltaError::DuplicateSsrc { op, leg: spec.publisher, ssrc: w[0] });
        }
        if let Some(clash) = publisher.ingress.iter().find(|i| i.track != spec.id && ssrcs.contains(&i.ssrc)) {
            return Err(DeltaError::DuplicateSsrc { op, leg: spec.publisher, ssrc: clash.ssrc });
        }
        if let Some(old) = self.tracks.get(&spec.id)
            && old.spec.publisher != spec.publisher
        {
            return Err(DeltaError::Invalid { op, field: "track.publisher", why: "a track cannot move to another leg" });
        }
        let cache_packets = self.config.rtx_cache_packets;
        let new_layer = |l: &LayerSpec| LayerState {
            ssrc: l.ssrc,
            rtx_ssrc: l.rtx_ssrc,
            cache: (spec.kind == MediaKind::Video && cache_packets > 0).then(|| RtxCache::new(cache_packets)),
            last_keyframe_request: None,
            fir_seq: 0,
            seen_keyframe: false,
            activity: Activity::default(),
            rate: LayerRate::default(),
            demand: (true, None),
            wanted_by: 0,
            last_wanted: None,
            top: (0, 0),
            spatial_layers: None,
            ksvc: false,
            spatial_rates: Default::default(),
            dd: spec.dd_ext.map(|_| Box::default()),
        };
        match self.tracks.get(&spec.id) {
            Some(_) => {
                self.save_track(spec.id, undo);
                let t = self.tracks.get_mut(&spec.id).expect("present");
                let mut old_layers = core::mem::take(&mut t.layers);
                t.layers = spec
                    .layers
                    .iter()
                    .map(|l| match old_layers.iter().position(|o| o.ssrc.is_some() && o.ssrc == l.ssrc) {
                        Some(p) => {
                            let mut kept = old_layers.swap_remove(p);
                            kept.rtx_ssrc = l.rtx_ssrc;
                            match (spec.dd_ext, &kept.dd) {
                                (Some(_), None) => kept.dd = Some(Box::default()),
                                (None, Some(_)) => kept.dd = None,
                                _ => {}
                            }
                            kept
                        }
                        None => new_layer(l),
                    })
                    .collect();
                t.spec = spec.clone();
                let n = t.layers.len();
                for s in &mut t.subs {
                    // A relay lane stays on its layer (one above the track's carries nothing).
                    if !s.relay {
                        s.target_layer = s.target_layer.min(n as u8 - 1);
                    }
                    if s.current_layer.is_some_and(|c| usize::from(c) >= n) {
                        s.current_layer = None;
                    }
                }
            }
            None => {
                self.tracks.insert(
                    spec.id,
                    Track {
                        spec: spec.clone(),
                        layers: spec.layers.iter().map(new_layer).collect(),
                        subs: Vec::new(),
                        sub_pos: Map::default(),
                        level: Default::default(),
                        owners: 0,
                        demand_told: None,
                        cascade_told: None,
                    },
                );
                undo.push(Undo::TrackInserted(spec.id));
                self.save_leg(spec.publisher, undo);
                self.legs.get_mut(&spec.publisher).expect("checked").tracks.push(spec.id);
            }
        }
        self.reindex_ingress(spec.publisher, undo);
        Ok(())
    }

    fn upsert_sub(&mut self, op: usize, spec: &SubscriptionSpec, undo: &mut UndoLog) -> Result<(), DeltaError> {
        let Some(track) = self.tracks.get(&spec.track) else {
            return Err(DeltaError::UnknownTrack { op, track: spec.track });
        };
        let Some(subscriber) = self.legs.get(&spec.subscriber) else {
            return Err(DeltaError::UnknownLeg { op, leg: spec.subscriber });
        };
        if track.spec.publisher == spec.subscriber {
            return Err(DeltaError::SelfSubscription { op, leg: spec.subscriber, track: spec.track });
        }
        if spec.out_rtx_ssrc == Some(spec.out_ssrc) {
            return Err(DeltaError::DuplicateSsrc { op, leg: spec.subscriber, ssrc: spec.out_ssrc });
        }
        spec.validate().map_err(|e| DeltaError::invalid(op, e))?;
        for out in spec.out_ssrcs() {
            let slot = subscriber.spec.audio_slots.as_ref().is_some_and(|a| a.out_ssrcs.contains(&out));
            if slot || subscriber.egress.iter().any(|&(s, t)| s == out && t != spec.track) {
                return Err(DeltaError::DuplicateSsrc { op, leg: spec.subscriber, ssrc: out });
            }
        }
        let layers = track.layers.len();
        // Only this subscription is saved (unless the whole track already is).
        let whole = undo.saved_tracks.contains(&spec.track);
        self.save_leg(spec.subscriber, undo);
        let t = self.tracks.get_mut(&spec.track).expect("present");
        let leg = self.legs.get_mut(&spec.subscriber).expect("checked above");
        // Lane by lane (one, or a relay's): lanes are contiguous from 0.
        let lanes = spec.lanes() as u8;
        for lane in 0..MAX_LAYERS as u8 {
            let found = t.lane_index(spec.subscriber, lane);
            if lane >= lanes {
                // A relay lane the spec no longer has: its stream state stays on the leg.
                let Some(p) = found else { break };
                let removed = t.swap_remove_sub(p);
                leg.retire(removed.retired());
                if !whole {
                    undo.push(Undo::SubRemoved(spec.track, p, Box::new(removed)));
                }
                continue;
            }
            let mut fresh = Subscription::compile_lane(spec, layers, lane);
            if !whole {
                undo.push(match found {
                    Some(p) => Undo::SubReplaced(spec.track, p, Box::new(t.subs[p].clone())),
                    None => Undo::SubPushed(spec.track),
                });
            }
            match found {
                Some(p) if t.subs[p].out_ssrc == fresh.out_ssrc && t.subs[p].out_rtx_ssrc == fresh.out_rtx_ssrc => t.subs[p].update(fresh),
                found => {
                    // A new stream for the subscriber, or the continuation of one it had before.
                    // A leg with congestion control starts on the lowest layer, and its allocator
                    // raises it within a tick as far as the estimate allows: a top layer's keyframe
                    // into a link nothing is known about yet is the worst first burst.
                    if leg.downlink.is_some() && !fresh.relay {
                        fresh.alloc_layer = Some(0);
                    }
                    if let Some(p) = found {
                        leg.retire(t.subs[p].retired());
                    }
                    if let Some(r) = leg.take_retired(fresh.out_ssrc) {
                        fresh.resume(r);
                    }
                    match found {
                        Some(p) => t.subs[p] = fresh,
                        None => t.push_sub(fresh),
                    }
                }
            }
        }
        self.reindex_egress(spec.subscriber, spec.track, undo);
        Ok(())
    }

    fn remove_leg(&mut self, id: LegId, undo: &mut UndoLog) {
        let Some(leg) = self.legs.get(&id) else { return };
        let published = leg.tracks.clone();
        for t in published {
            self.remove_track(t, undo);
        }
        let subscribed: Vec<TrackId> = self.legs[&id].egress.iter().map(|&(_, t)| t).collect();
        for t in subscribed {
            self.remove_sub(t, id, undo);
        }
        self.unindex_leg(id);
        let leg = self.legs.remove(&id).expect("present");
        undo.push(Undo::LegRemoved(leg));
    }

    fn remove_track(&mut self, id: TrackId, undo: &mut UndoLog) {
        let Some(track) = self.tracks.remove(&id) else { return };
        let publisher = track.spec.publisher;
        let subscribers: Vec<LegId> = track.subs.iter().map(|s| s.subscriber).collect();
        for s in &track.subs {
            self.retire_sub(s, undo);
        }
        undo.push(Undo::TrackRemoved(Box::new(track)));
        self.reindex_ingress(publisher, undo);
        for s in subscribers {
            self.reindex_egress(s, id, undo);
        }
    }

    /// Rebuilds a publisher leg's ingress index from its tracks, keeping the SRTP receive state
    /// of SSRCs that stay.
    fn reindex_ingress(&mut self, leg_id: LegId, undo: &mut UndoLog) {
        if !self.legs.contains_key(&leg_id) {
            return;
        }
        self.save_leg(leg_id, undo);
        let window = self.config.replay_window;
        let leg = self.legs.get_mut(&leg_id).expect("present");
        let tracks = &self.tracks;
        leg.tracks.retain(|t| tracks.contains_key(t));
        let mut old = core::mem::take(&mut leg.ingress);
        for &tid in &leg.tracks {
            let t = &self.tracks[&tid];
            for (layer, l) in t.layers.iter().enumerate() {
                for (ssrc, rtx) in [(l.ssrc, false), (l.rtx_ssrc, true)] {
                    let Some(ssrc) = ssrc else { continue };
                    // The runtime state of SSRCs that stay (SRTP, statistics, top-N's silence).
                    let mut i = match old.iter().position(|i| i.ssrc == ssrc) {
                        Some(p) => old.swap_remove(p),
                        None => Ingress::new(ssrc, tid, RtpRecvState::new(window)),
                    };
                    (i.track, i.layer, i.rtx, i.clock_rate) = (tid, layer as u8, rtx, t.spec.clock_rate);
                    i.level_gate = Ingress::level_gate_of(&t.spec, rtx);
                    leg.ingress.push(i);
                }
            }
        }
    }

    /// Brings a subscriber leg's out-SSRC index in line with its subscription to `track` (or
    /// its absence).
    fn reindex_egress(&mut self, leg_id: LegId, track: TrackId, undo: &mut UndoLog) {
        if !self.legs.contains_key(&leg_id) {
            return;
        }
        self.save_leg(leg_id, undo);
        let t = self.tracks.get(&track);
        let lanes = (0..MAX_LAYERS as u8).map_while(|l| t.and_then(|t| Some(&t.subs[t.lane_index(leg_id, l)?])));
        let outs: Vec<(Ssrc, Option<Ssrc>)> = lanes.map(|s| (s.out_ssrc, s.out_rtx_ssrc)).collect();
        let leg = self.legs.get_mut(&leg_id).expect("present");
        leg.egress.retain(|&(_, t)| t != track);
        for (out, rtx) in outs {
            leg.egress.push((out, track));
            if let Some(r) = rtx {
                leg.egress.push((r, track));
            }
        }
    }

    /// Removes `subscriber`'s subscription to `track` (every lane of a relay), saving only it
    /// for a rollback (unless the whole track is saved already); returns its lanes.
    fn remove_sub(&mut self, track: TrackId, subscriber: LegId, undo: &mut UndoLog) -> Vec<Subscription> {
        let whole = undo.saved_tracks.contains(&track);
        let Some(t) = self.tracks.get_mut(&track) else { return Vec::new() };
        let mut removed = Vec::new();
        for lane in 0..MAX_LAYERS as u8 {
            let Some(pos) = t.lane_index(subscriber, lane) else { break };
            let sub = t.swap_remove_sub(pos);
            if !whole {
                undo.push(Undo::SubRemoved(track, pos, Box::new(sub.clone())));
            }
            removed.push(sub);
        }
        removed
    }

    /// Keeps a removed subscription's stream state on its subscriber leg (if the leg stays).
    fn retire_sub(&mut self, sub: &Subscription, undo: &mut UndoLog) {
        if !self.legs.contains_key(&sub.subscriber) {
            return;
        }
        self.save_leg(sub.subscriber, undo);
        self.legs.get_mut(&sub.subscriber).expect("present").retire(sub.retired());
    }

    /// Records a leg's state before its first change in this delta. Legs are not `Clone` (their
    /// keys are not), so the copy re-derives keys from the spec: cold path only.
    fn save_leg(&mut self, id: LegId, undo: &mut UndoLog) {
        if undo.saved_legs.contains(&id) {
            return;
        }
        let Some(leg) = self.legs.get(&id) else { return };
        // Derived keys are re-derived from their material (it validated when installed).
        let (rxm, txm) = leg.key_material();
        let (Ok(rx), Ok(tx)) = (leg_keys(leg.spec.plain_rtp, rxm), leg_keys(leg.spec.plain_rtp, txm)) else {
            unreachable!("keys of an installed leg were validated when it was installed")
        };
        let copy = Leg {
            spec: leg.spec.clone(),
            remote: leg.remote,
            rx,
            tx,
            ingress: leg.ingress.clone(),
            egress: leg.egress.clone(),
            rtcp_recv: leg.rtcp_recv.clone(),
            feedback_srtcp: leg.feedback_srtcp,
            tracks: leg.tracks.clone(),
            activity: leg.activity,
            traffic: leg.traffic,
            stats: leg.stats,
            edge: leg.edge.clone(),
            uplink: leg.uplink.clone(),
            downlink: leg.downlink.clone(),
            retired: leg.retired.clone(),
            slots: leg.slots.clone(),
            limiter: leg.limiter,
            keys_digest: leg.keys_digest,
            rtcp_remote: leg.rtcp_remote,
            drops_reported: leg.drops_reported,
        };
        undo.push(Undo::LegReplaced(Box::new(copy)));
    }

    fn save_track(&mut self, id: TrackId, undo: &mut UndoLog) {
        if undo.saved_tracks.contains(&id) {
            return;
        }
        let Some(t) = self.tracks.get_mut(&id) else { return };
        // The caches are large and the packet path never runs during apply: move them into the
        // saved copy and back on commit would cost a copy; instead the saved copy has none and a
        // rollback restores the live track's caches from the current one.
        let copy = Track {
            spec: t.spec.clone(),
            layers: t
                .layers
                .iter()
                .map(|l| LayerState {
                    ssrc: l.ssrc,
                    rtx_ssrc: l.rtx_ssrc,
                    cache: None,
                    last_keyframe_request: l.last_keyframe_request,
                    fir_seq: l.fir_seq,
                    seen_keyframe: l.seen_keyframe,
                    activity: l.activity,
                    rate: l.rate,
                    demand: l.demand,
                    wanted_by: l.wanted_by,
                    last_wanted: l.last_wanted,
                    top: l.top,
                    spatial_layers: l.spatial_layers,
                    ksvc: l.ksvc,
                    spatial_rates: l.spatial_rates,
                    dd: l.dd.clone(),
                })
                .collect(),
            subs: t.subs.clone(),
            sub_pos: t.sub_pos.clone(),
            level: t.level,
            owners: t.owners,
            demand_told: t.demand_told,
            cascade_told: t.cascade_told,
        };
        undo.push(Undo::TrackReplaced(Box::new(copy)));
    }

    fn revert(&mut self, u: Undo) {
        match u {
            Undo::LegInserted(id) => {
                self.unindex_leg(id);
                self.legs.remove(&id);
            }
            Undo::LegReplaced(old) | Undo::LegRemoved(old) => {
                let id = old.spec.id;
                self.unindex_leg(id);
                self.legs.insert(id, old);
                self.index_leg(id);
            }
            Undo::TrackInserted(id) => {
                self.tracks.remove(&id);
            }
            Undo::TrackReplaced(mut old) => {
                // Give back the caches of layers that still exist in the live track.
                if let Some(mut cur) = self.tracks.remove(&old.spec.id) {
                    for l in &mut old.layers {
                        if let Some(c) = cur.layers.iter_mut().find(|c| c.ssrc == l.ssrc && c.cache.is_some()) {
                            l.cache = c.cache.take();
                        }
                    }
                }
                let cache_packets = self.config.rtx_cache_packets;
                for l in &mut old.layers {
                    if l.cache.is_none() && old.spec.kind == MediaKind::Video && cache_packets > 0 {
                        l.cache = Some(RtxCache::new(cache_packets));
                    }
                }
                self.tracks.insert(old.spec.id, *old);
            }
            Undo::TrackRemoved(old) => {
                self.tracks.insert(old.spec.id, *old);
            }
            // Undone last-in first-out: the list is as this op left it.
            Undo::SubPushed(track) => {
                if let Some(t) = self.tracks.get_mut(&track) {
                    t.pop_sub();
                }
            }
            Undo::SubRemoved(track, p, old) => {
                if let Some(t) = self.tracks.get_mut(&track) {
                    t.unswap_remove_sub(p, *old);
                }
            }
            Undo::SubReplaced(track, p, old) => {
                if let Some(slot) = self.tracks.get_mut(&track).and_then(|t| t.subs.get_mut(p)) {
                    *slot = *old;
                }
            }
        }
    }
}

/// The derived keys of one direction of a leg with key material `m`: the plain ones
/// ([`SrtpKeys::plain`]) for a plain-RTP leg (`LegSpec::plain_rtp`), whose material is a
/// placeholder.
fn leg_keys(plain: bool, m: &KeyMaterial) -> Result<SrtpKeys, crate::srtp::SrtpKeyError> {
    if plain { Ok(SrtpKeys::plain()) } else { SrtpKeys::new(m.profile, &m.key, &m.salt) }
}
