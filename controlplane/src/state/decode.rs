//! Decoding and validating one change set's gRPC changes into specs, against the state the
//! changes before them left (a stage of the desired state): ids, keys, payload types, extension
//! ids, ports.

use super::*;

/// A change set being applied to its session in place (taken out of the state meanwhile), every
/// step logged so a refused change set is taken back ([`undo_steps`]).
pub(super) struct Stage<'a> {
    pub(super) session: Session,
    pub(super) name: &'a str,
    pub(super) next_leg: u32,
    pub(super) next_track: u32,
    pub(super) next_port: u16,
    pub(super) range: PortRange,
    /// The workers new legs' ports are spread over ([`Placement::spread`]), if more than one.
    pub(super) spread: Option<Spread>,
    /// The placement: its shared ports.
    pub(super) placement: Placement,
    /// Each worker's round-robin cursor (see `Desired::cursors`).
    pub(super) cursors: Vec<u16>,
    /// Which session holds each port, kept in step with the legs the stage puts and takes.
    pub(super) index: &'a mut PortIndex,
    /// Ports other processes hold: never given to a new leg.
    pub(super) avoid: &'a BTreeSet<u16>,
    /// What each change did, to take it back.
    pub(super) steps: Vec<Step>,
    /// Subscriptions added less those removed.
    pub(super) subs_added: i64,
    /// Legs the change set's subscription upserts name, with the field of the first (a leg made
    /// a recording tap in the same change set refuses them there).
    pub(super) named_subs: BTreeMap<String, String>,
    pub(super) ports: Vec<(String, u16)>,
    pub(super) events: Vec<pb::Event>,
    pub(super) ice_secret: &'a [u8],
}

/// [`Placement`] with more than one worker.
#[derive(Clone, Copy, Debug)]
pub(super) struct Spread {
    pub(super) workers: u16,
    pub(super) session_affinity_legs: u32,
}

/// The first port from `from` on (round-robin over `range`, wrapping) that `ok` takes.
fn round_robin(range: PortRange, from: u16, ok: impl Fn(u16) -> bool) -> Option<u16> {
    let n = range.len();
    let start = u32::from(from.clamp(range.start, range.end)) - u32::from(range.start);
    (0..n).map(|k| ((start + k) % n + u32::from(range.start)) as u16).find(|&p| ok(p))
}

/// Moves the cursors past `port`, just allocated: the node's, and with `spread` the cursor of
/// the worker owning `port` (the others start at the node's when first set), so a just-freed
/// port is the last of its worker's to be reused.
pub(super) fn advance_cursors(range: PortRange, spread: Option<u16>, next_port: &mut u16, cursors: &mut Vec<u16>, port: u16) {
    let next = if port >= range.end { range.start } else { port + 1 };
    if let Some(w) = spread {
        if cursors.len() != usize::from(w) {
            cursors.resize(usize::from(w), *next_port);
        }
        if let Some(c) = cursors.get_mut(usize::from(port % w)) {
            *c = next;
        }
    }
    *next_port = next;
}

/// The index of the smallest count (ties: the lowest index).
fn fewest(counts: &[u32]) -> u16 {
    (0..counts.len()).min_by_key(|&i| (counts[i], i)).map_or(0, |i| i as u16)
}

/// The index of the largest count (ties: the lowest index).
fn most(counts: &[u32]) -> u16 {
    (0..counts.len()).max_by_key(|&i| (counts[i], std::cmp::Reverse(i))).map_or(0, |i| i as u16)
}

pub(super) fn event(e: pb::event::Event) -> pb::Event {
    pb::Event { session: String::new(), revision: 0, event: Some(e) }
}

impl Stage<'_> {
    pub(super) fn change(&mut self, i: usize, change: &pb::Change) -> Result<(), StateError> {
        use pb::change::Change as C;
        let at = format!("changes[{i}]");
        match &change.change {
            None => Err(invalid(at, "empty change: set one of leg, remove_leg, track, remove_track, subscription, remove_subscription, settings")),
            Some(C::Settings(s)) => {
                if s.audio_top_n > MAX_AUDIO_SLOTS as u32 {
                    return Err(invalid(format!("{at}.settings.audio_top_n"), format!("{} is more than {MAX_AUDIO_SLOTS} slots", s.audio_top_n)));
                }
                let was = std::mem::replace(&mut self.session.settings, Settings { top_n_audio: s.top_n_audio, audio_top_n: s.audio_top_n as u8 });
                self.steps.push(Step::Settings(was));
                Ok(())
            }
            Some(C::Leg(l)) => self.leg(&format!("{at}.leg"), l),
            Some(C::RemoveLeg(name)) => {
                let f = format!("{at}.remove_leg");
                check_id(&f, name)?;
                if !self.session.legs.contains_key(name) {
                    return Err(self.no_leg(&f, name));
                }
                for t in self.remove_leg(name) {
                    self.events.push(event(pb::event::Event::TrackRemoved(t)));
                }
                self.events.push(event(pb::event::Event::LegRemoved(name.clone())));
                Ok(())
            }
            Some(C::Track(t)) => self.track(&format!("{at}.track"), t),
            Some(C::RemoveTrack(name)) => {
                check_id(&format!("{at}.remove_track"), name)?;
                if !self.session.tracks.contains_key(name) {
                    return Err(self.no_track(&format!("{at}.remove_track"), name));
                }
                self.remove_track(name);
                self.events.push(event(pb::event::Event::TrackRemoved(name.clone())));
                Ok(())
            }
            Some(C::Subscription(s)) => self.subscription(&format!("{at}.subscription"), s),
            Some(C::RemoveSubscription(k)) => {
                let f = format!("{at}.remove_subscription");
                check_id(&format!("{f}.subscriber_leg"), &k.subscriber_leg)?;
                check_id(&format!("{f}.track"), &k.track)?;
                if self.session.taps.contains_key(&k.subscriber_leg) {
                    return Err(tap_owns_its_subscriptions(&format!("{f}.subscriber_leg"), &k.subscriber_leg));
                }
                if !self.take_sub(&k.subscriber_leg, &k.track) {
                    return Err(err(
                        ErrorKind::NotFound,
                        f,
                        format!("leg {} has no subscription to track {} in session {}", quote(&k.subscriber_leg), quote(&k.track), quote(self.name)),
                    ));
                }
                Ok(())
            }
        }
    }

    pub(super) fn no_leg(&self, field: &str, name: &str) -> StateError {
        err(ErrorKind::NotFound, field, format!("no leg {} in session {}", quote(name), quote(self.name)))
    }

    pub(super) fn no_track(&self, field: &str, name: &str) -> StateError {
        err(ErrorKind::NotFound, field, format!("no track {} in session {}", quote(name), quote(self.name)))
    }

    pub(super) fn allocate_port(&mut self, field: &str) -> Result<u16, StateError> {
        self.allocate_port_besides(field, None)
    }

    /// [`Stage::allocate_port`], also avoiding `taken` (a port the leg being decoded already
    /// got); with `prefer`, that port if it is free and in the range.
    ///
    /// A leg's RTP port decides its worker (`port % workers`), so with [`Stage::spread`] it is
    /// taken from [`Stage::worker_for_new_leg`]'s ports, round-robin from that worker's cursor,
    /// and from any worker's when none of those is free. A separate RTCP port (`taken`) goes
    /// wherever it is free: the dataplane opens it on the worker owning the leg's RTP port,
    /// whatever its number (`Tables::ports_of_legs`, and the XDP shield's leg entries).
    pub(super) fn allocate_port_besides(&mut self, field: &str, taken: Option<(u16, Option<u16>)>) -> Result<u16, StateError> {
        // Every session's ports (this one's as staged) through the index: the cost is a lookup,
        // not the session's size or the node's.
        let own = taken.map(|(t, _)| t);
        let (index, avoid, shared) = (&*self.index, self.avoid, self.placement.shared_ports());
        let used = |p: u16| own == Some(p) || index.holds(p) || avoid.contains(&p) || shared.contains(&p);
        if let Some(p) = taken.and_then(|(_, prefer)| prefer)
            && (self.range.start..=self.range.end).contains(&p)
            && !used(p)
        {
            return Ok(p);
        }
        // Round-robin from the cursor, so a just-freed port is the last to be reused.
        let worker = self.spread.filter(|_| taken.is_none()).map(|s| (s.workers, self.worker_for_new_leg(s)));
        let on_worker = worker.and_then(|(w, i)| {
            let cursor = self.cursors.get(usize::from(i)).copied().unwrap_or(self.next_port);
            round_robin(self.range, cursor, |p| p % w == i && !used(p))
        });
        let Some(p) = on_worker.or_else(|| round_robin(self.range, self.next_port, |p| !used(p))) else {
            let n = self.range.len();
            return Err(err(
                ErrorKind::ResourceExhausted,
                field,
                format!("no free local port: all {n} ports of {}-{} are in use", self.range.start, self.range.end),
            ));
        };
        advance_cursors(self.range, self.spread.map(|s| s.workers), &mut self.next_port, &mut self.cursors, p);
        Ok(p)
    }

    /// A shared port for a new leg: the one of the worker [`Stage::worker_for_new_leg`] picks
    /// (the only one without spread), which the leg counts towards. Never a port of its own:
    /// refused when the node has no shared ports, or that worker's is outside the range or
    /// held by a leg of its own (given out before the worker count grew).
    fn allocate_shared_port(&mut self, f: &str) -> Result<u16, StateError> {
        let field = format!("{f}.shared_port");
        if self.placement.shared_port_base.is_none() {
            return Err(err(ErrorKind::FailedPrecondition, field, "this node has no shared ports (controlplane.shared_port_base is not set)"));
        }
        let worker = self.spread.map_or(0, |s| self.worker_for_new_leg(s));
        let Some(port) = self.placement.shared_port_of(worker) else {
            return Err(err(ErrorKind::FailedPrecondition, field, format!("worker {worker} has no shared port (controlplane.shared_port_base is too high)")));
        };
        if !(self.range.start..=self.range.end).contains(&port) {
            return Err(err(
                ErrorKind::FailedPrecondition,
                field,
                format!("shared port {port} of worker {worker} is outside controlplane.port_range {}-{}", self.range.start, self.range.end),
            ));
        }
        if let Some(owner) = self.index.owner_alone(port) {
            return Err(err(
                ErrorKind::FailedPrecondition,
                field,
                format!("shared port {port} of worker {worker} is held by a leg of session {} as its own port (given out before it was shared)", quote(owner)),
            ));
        }
        Ok(port)
    }

    /// The worker a new leg of this session goes to: with no legs yet, the one with the fewest
    /// legs node-wide; while it has fewer than `session_affinity_legs`, the one holding most of
    /// its legs (all of them, unless a full worker or a new worker count put some elsewhere);
    /// from then on the one with the fewest of its legs. Ties go to the lowest index.
    fn worker_for_new_leg(&self, s: Spread) -> u16 {
        // This session's legs per worker as staged, from the index (not by visiting its legs).
        let mut mine = vec![0u32; usize::from(s.workers)];
        for (m, n) in mine.iter_mut().zip(self.index.session_legs(self.name)) {
            *m = *n;
        }
        let legs = self.session.legs.len();
        if legs == 0 {
            // None of them is this session's now: the node's are every other session's.
            let mut node = self.index.legs.clone();
            node.resize(usize::from(s.workers), 0);
            fewest(&node)
        } else if (legs as u64) < u64::from(s.session_affinity_legs) {
            most(&mine)
        } else {
            fewest(&mine)
        }
    }

    pub(super) fn leg(&mut self, f: &str, l: &pb::Leg) -> Result<(), StateError> {
        check_id(&format!("{f}.id"), &l.id)?;
        let (rx, tx, webrtc) = match (&l.webrtc, l.plain_rtp) {
            (Some(_), true) => {
                return Err(invalid(format!("{f}.plain_rtp"), "a WebRTC leg's media is DTLS-SRTP; plain RTP is only for a static (non-WebRTC) recording tap"));
            }
            (Some(w), false) => {
                if l.rx.is_some() || l.tx.is_some() {
                    return Err(invalid(format!("{f}.rx"), "a WebRTC leg takes no keys: DTLS-SRTP makes them"));
                }
                let k = KeyMaterial::placeholder();
                (k.clone(), k, Some(webrtc_remote(&format!("{f}.webrtc"), w)?))
            }
            (None, true) => {
                if l.tap.is_none() {
                    return Err(invalid(format!("{f}.plain_rtp"), "only a recording tap (leg.tap) may receive plain RTP"));
                }
                for (which, k) in [("rx", &l.rx), ("tx", &l.tx)] {
                    if k.is_some() {
                        return Err(invalid(format!("{f}.{which}"), "a plain-RTP leg takes no keys: it sends without SRTP and accepts nothing"));
                    }
                }
                let k = KeyMaterial::placeholder();
                (k.clone(), k, None)
            }
            (None, false) => {
                if l.rx.is_none() && l.tx.is_none() {
                    return Err(invalid(
                        format!("{f}.tx"),
                        "required: SRTP keys (a leg is never sent media in the clear by default; plain RTP needs the explicit opt-in plain_rtp, for a recording tap on a loopback or private address)",
                    ));
                }
                (key_material(&format!("{f}.rx"), l.rx.as_ref())?, key_material(&format!("{f}.tx"), l.tx.as_ref())?, None)
            }
        };
        let remote = if l.remote.is_empty() {
            None
        } else if l.remote.len() > MAX_REMOTE_LEN {
            return Err(invalid(format!("{f}.remote"), format!("is {} bytes; an ip:port address is at most {MAX_REMOTE_LEN}", l.remote.len())));
        } else {
            Some(l.remote.parse::<SocketAddr>().map_err(|_| invalid(format!("{f}.remote"), format!("{} is not an ip:port address", quote(&l.remote))))?)
        };
        if remote.is_some_and(|r| r.port() == 0) {
            return Err(invalid(format!("{f}.remote"), "port must not be 0"));
        }
        if l.plain_rtp {
            match remote {
                None => {
                    return Err(invalid(format!("{f}.remote"), "a plain-RTP leg needs its remote: nothing it sends authenticates, so it latches nothing"));
                }
                Some(r) if !plain_rtp_allowed(r.ip()) => return Err(not_private(&format!("{f}.remote"), r)),
                Some(_) => {}
            }
        }
        if l.separate_rtcp && l.webrtc.is_some() {
            return Err(invalid(format!("{f}.separate_rtcp"), "a WebRTC leg multiplexes RTCP with RTP (RFC 8834)"));
        }
        if !l.separate_rtcp && !l.rtcp_remote.is_empty() {
            return Err(invalid(format!("{f}.rtcp_remote"), "needs separate_rtcp"));
        }
        let rtcp_remote = if l.rtcp_remote.is_empty() {
            None
        } else if l.rtcp_remote.len() > MAX_REMOTE_LEN {
            return Err(invalid(format!("{f}.rtcp_remote"), format!("is {} bytes; an ip:port address is at most {MAX_REMOTE_LEN}", l.rtcp_remote.len())));
        } else {
            match l.rtcp_remote.parse::<SocketAddr>() {
                Ok(r) if r.port() != 0 && l.plain_rtp && !plain_rtp_allowed(r.ip()) => return Err(not_private(&format!("{f}.rtcp_remote"), r)),
                Ok(r) if r.port() != 0 => Some(r),
                _ => return Err(invalid(format!("{f}.rtcp_remote"), format!("{} is not an ip:port address with a port", quote(&l.rtcp_remote)))),
            }
        };
        if let Some(old) = self.session.legs.get(&l.id)
            && old.shared_port != l.shared_port
        {
            let (was, now) = if old.shared_port { ("a shared port", "a port of its own") } else { ("a port of its own", "a shared port") };
            return Err(invalid(format!("{f}.shared_port"), format!("leg {} is on {was} and cannot move to {now}: remove it and add it again", quote(&l.id))));
        }
        if l.shared_port {
            if l.separate_rtcp {
                return Err(invalid(format!("{f}.separate_rtcp"), "a leg on a shared port multiplexes RTCP with RTP"));
            }
            if l.webrtc.is_none() && remote.is_none() {
                return Err(invalid(
                    format!("{f}.remote"),
                    "a static-key leg on a shared port needs its remote: the port tells its legs apart by their source",
                ));
            }
        }
        let old_rtcp = self.session.legs.get(&l.id).and_then(|old| old.rtcp.as_deref().map(|c| c.local_port));
        let (id, port) = match self.session.legs.get(&l.id) {
            Some(old) => (old.id, old.local_port),
            None => {
                let port = if l.shared_port { self.allocate_shared_port(f)? } else { self.allocate_port(f)? };
                let id = LegId(self.next_leg);
                self.next_leg += 1;
                self.events.push(event(pb::event::Event::LegAdded(pb::LegAdded { leg: l.id.clone(), local_port: u32::from(port) })));
                (id, port)
            }
        };
        let edge = webrtc.map(|(remote, role, remote_fingerprint)| {
            Box::new(EdgeSpec { local: local_ice_credentials(self.ice_secret, id, &remote), remote, role, remote_fingerprint })
        });
        let feedback = match &l.feedback {
            None => FeedbackSpec::default(),
            Some(fb) => FeedbackSpec {
                twcc_ext: match fb.transport_cc_ext {
                    None => None,
                    Some(id @ 1..=14) => Some(id as u8),
                    Some(id) => {
                        return Err(invalid(format!("{f}.feedback.transport_cc_ext"), format!("{id} is not a one-byte header-extension id (1..=14)")));
                    }
                },
                remb: fb.remb,
            },
        };
        let audio_slots = l.audio_slots.as_ref().map(|a| self.audio_slots(&format!("{f}.audio_slots"), &l.id, a)).transpose()?;
        let rate_limit = l.rate_limit.map(|r| RateLimit {
            packets_per_s: r.packets_per_s,
            bytes_per_s: r.bytes_per_s,
            burst_ms: if r.burst_ms == 0 { 500 } else { r.burst_ms },
        });
        // The RTCP port stays the leg's once it has one; a new one is the RTP port + 1 when free.
        let rtcp = if l.separate_rtcp {
            let local_port = match old_rtcp {
                Some(p) => p,
                None => self.allocate_port_besides(&format!("{f}.separate_rtcp"), Some((port, port.checked_add(1))))?,
            };
            Some(Box::new(RtcpComponent { local_port, remote: rtcp_remote }))
        } else {
            None
        };
        let spec = LegSpec {
            id,
            local_port: port,
            remote,
            rx,
            tx,
            feedback_ssrc: Ssrc(l.feedback_ssrc),
            edge,
            feedback,
            audio_slots,
            rate_limit,
            rtcp,
            shared_port: l.shared_port,
            cascade: l.cascade,
            plain_rtp: l.plain_rtp,
        };
        spec.validate().map_err(|e| spec_invalid(f, e))?;
        if l.tap.is_some() {
            self.check_tap(f, l)?;
        }
        // One leg per (shared port, remote), over every session: the dataplane tells the legs of
        // a shared port apart by remote (and refuses a second delta-wide, `RemoteInUse`).
        if let Some(r) = spec.remote.filter(|_| spec.shared_port)
            && let Some((session, leg)) = self.index.remote_owner(port, r)
            && (session, leg) != (self.name, l.id.as_str())
        {
            return Err(invalid(
                format!("{f}.remote"),
                format!("{r} on shared port {port} is already the remote of leg {} in session {}", quote(leg), quote(session)),
            ));
        }
        self.put_leg(&l.id, spec);
        self.ports.retain(|(n, _)| n != &l.id);
        self.ports.push((l.id.clone(), port));
        self.sync_tap(&l.id, l.tap.as_ref());
        Ok(())
    }

    /// What a leg made (or kept) a recording tap must not have: audio slots, tracks of its own,
    /// subscriptions of its own (from earlier change sets, or named by this one).
    fn check_tap(&self, f: &str, l: &pb::Leg) -> Result<(), StateError> {
        if l.audio_slots.is_some() {
            return Err(invalid(format!("{f}.audio_slots"), "a recording tap receives every audio track on a stream of its own; it has no audio slots"));
        }
        if let Some((track, _)) = self.session.tracks.iter().find(|(_, t)| t.publisher == l.id) {
            return Err(invalid(
                format!("{f}.tap"),
                format!("leg {} publishes track {}; a recording tap publishes nothing (remove its tracks first)", quote(&l.id), quote(track)),
            ));
        }
        if let Some(at) = self.named_subs.get(&l.id) {
            return Err(invalid(
                at.clone(),
                format!("{f} makes leg {} a recording tap, whose subscriptions are the control plane's: a change set cannot also name one", quote(&l.id)),
            ));
        }
        let own = self.session.subs.get(&l.id).map_or(0, BTreeMap::len);
        if own > 0 && !self.session.taps.contains_key(&l.id) {
            return Err(invalid(
                format!("{f}.tap"),
                format!(
                    "leg {} has {own} subscription(s) of its own; a recording tap's subscriptions are the control plane's: remove them first",
                    quote(&l.id)
                ),
            ));
        }
        Ok(())
    }

    /// Keeps leg `name`'s recording-tap subscriptions as `tap` says (logged): with a tap, one
    /// per track of the session (the tracks it has now join in the order of their ids, which is
    /// the order they were created; a new
    /// `ssrc_base` renumbers them all); without, none (a tap ended).
    fn sync_tap(&mut self, name: &str, tap: Option<&pb::RecordingTap>) {
        let was = self.session.taps.get(name).copied();
        let Some(opts) = tap else {
            if was.is_some() {
                self.take_all_subs(name);
                self.put_tap(name, None);
            }
            return;
        };
        let fresh = Tap::new(opts.ssrc_base);
        let state = match was {
            Some(t) if t.ssrc_base == fresh.ssrc_base => t,
            Some(_) => {
                self.take_all_subs(name);
                fresh
            }
            None => fresh,
        };
        self.put_tap(name, Some(state));
        let mut tracks: Vec<(TrackId, String)> = self.session.tracks.iter().map(|(n, t)| (t.spec.id, n.clone())).collect();
        tracks.sort_unstable();
        for (_, track) in tracks {
            self.sync_tap_sub(name, &track);
        }
    }

    /// Gives recording tap `leg` its subscription to `track` (a new SSRC when it has none; the
    /// same SSRC, with the track's payload types and top layer, when it has one). Logged.
    fn sync_tap_sub(&mut self, leg: &str, track: &str) {
        let (Some(subscriber), Some(t), Some(mut tap)) = (self.session.legs.get(leg), self.session.tracks.get(track), self.session.taps.get(leg).copied())
        else {
            return;
        };
        if t.publisher == leg {
            return;
        }
        let (subscriber, spec) = (subscriber.id, t.spec.clone());
        let old = self.session.subs.get(leg).and_then(|m| m.get(track));
        let want = match old {
            Some(o) => tap_subscription(subscriber, &spec, o.out_ssrc),
            None => {
                let ssrc = tap.allocate();
                self.put_tap(leg, Some(tap));
                tap_subscription(subscriber, &spec, ssrc)
            }
        };
        if self.session.subs.get(leg).and_then(|m| m.get(track)) != Some(&want) {
            self.put_sub(leg, track, want);
        }
    }

    /// Puts (or with `None` takes) leg `name`'s recording-tap state (logged).
    fn put_tap(&mut self, name: &str, tap: Option<Tap>) {
        let was = match tap {
            Some(t) => self.session.taps.insert(name.to_owned(), t),
            None => self.session.taps.remove(name),
        };
        if was != tap {
            self.steps.push(Step::Tap(name.to_owned(), was));
        }
    }

    /// Takes every subscription of leg `name` (logged).
    fn take_all_subs(&mut self, name: &str) {
        let tracks: Vec<String> = self.session.subs.get(name).map(|s| s.keys().cloned().collect()).unwrap_or_default();
        for track in tracks {
            self.take_sub(name, &track);
        }
    }

    pub(super) fn track(&mut self, f: &str, t: &pb::Track) -> Result<(), StateError> {
        check_id(&format!("{f}.id"), &t.id)?;
        check_id(&format!("{f}.publisher_leg"), &t.publisher_leg)?;
        let Some(publisher) = self.session.legs.get(&t.publisher_leg) else {
            return Err(self.no_leg(&format!("{f}.publisher_leg"), &t.publisher_leg));
        };
        if self.session.taps.contains_key(&t.publisher_leg) {
            return Err(invalid(format!("{f}.publisher_leg"), format!("leg {} is a recording tap; a tap publishes nothing", quote(&t.publisher_leg))));
        }
        let old = self.session.tracks.get(&t.id);
        if let Some(old) = old
            && old.publisher != t.publisher_leg
        {
            return Err(invalid(
                format!("{f}.publisher_leg"),
                format!("track {} belongs to leg {}; a track cannot move to another leg", quote(&t.id), quote(&old.publisher)),
            ));
        }
        let kind = match pb::MediaKind::try_from(t.kind) {
            Ok(pb::MediaKind::Audio) => MediaKind::Audio,
            Ok(pb::MediaKind::Video) => MediaKind::Video,
            _ => return Err(invalid(format!("{f}.kind"), "must be MEDIA_KIND_AUDIO or MEDIA_KIND_VIDEO")),
        };
        if t.clock_rate == 0 {
            return Err(invalid(format!("{f}.clock_rate"), "must be positive"));
        }
        if t.layers.is_empty() || t.layers.len() > 8 {
            return Err(invalid(format!("{f}.layers"), format!("need 1 to 8 layers, got {}", t.layers.len())));
        }
        if kind == MediaKind::Audio && t.layers.len() != 1 {
            return Err(invalid(format!("{f}.layers"), "audio has exactly one layer"));
        }
        let rid_ext = ext_id(&format!("{f}.rid_ext"), t.rid_ext)?;
        let repaired_rid_ext = ext_id(&format!("{f}.repaired_rid_ext"), t.repaired_rid_ext)?;
        let mid = match (ext_id(&format!("{f}.mid_ext"), t.mid_ext)?, t.mid.is_empty()) {
            (None, true) => None,
            (Some(ext), false) => {
                // RFC 8843's MID is a token; Sluice takes what it takes for RIDs.
                check_rid(&format!("{f}.mid"), &t.mid)?;
                Some(MidSpec { ext, value: t.mid.clone() })
            }
            (None, false) => return Err(invalid(format!("{f}.mid_ext"), "a MID needs the MID extension id")),
            (Some(_), true) => return Err(invalid(format!("{f}.mid"), "the MID extension id is set but the MID is empty")),
        };
        if t.audio_level_ext.is_some_and(|id| !(1..=14).contains(&id)) {
            return Err(invalid(format!("{f}.audio_level_ext"), "header-extension ids are 1..=14"));
        }
        let audio_level_ext = t.audio_level_ext.map(|id| id as u8);
        if audio_level_ext.is_some() && kind != MediaKind::Audio {
            return Err(invalid(format!("{f}.audio_level_ext"), "only audio tracks carry an audio level"));
        }
        let dd_ext = match t.dependency_descriptor_ext {
            None => None,
            Some(id @ 1..=255) if kind == MediaKind::Video => Some(id as u8),
            Some(_) if kind != MediaKind::Video => {
                return Err(invalid(format!("{f}.dependency_descriptor_ext"), "only video tracks carry a dependency descriptor"));
            }
            Some(id) => return Err(invalid(format!("{f}.dependency_descriptor_ext"), format!("{id} is not a header-extension id (1..=255)"))),
        };
        let mut layers = Vec::new();
        let mut mine: BTreeMap<u32, String> = BTreeMap::new();
        for (j, l) in t.layers.iter().enumerate() {
            let lf = format!("{f}.layers[{j}]");
            check_rid(&format!("{lf}.rid"), &l.rid)?;
            if l.ssrc.is_none() && l.rid.is_empty() {
                return Err(invalid(lf, "a layer needs an SSRC or a RID"));
            }
            if l.ssrc.is_none() && rid_ext.is_none() {
                return Err(invalid(format!("{f}.rid_ext"), format!("layer {j} has no SSRC, so the RID extension id is needed")));
            }
            for (which, ssrc) in [("ssrc", l.ssrc), ("rtx_ssrc", l.rtx_ssrc)] {
                let Some(ssrc) = ssrc else { continue };
                let sf = format!("{lf}.{which}");
                if let Some(prev) = mine.insert(ssrc, sf.clone()) {
                    return Err(invalid(sf, format!("SSRC {ssrc} is already used by {prev}")));
                }
                if let Some((other, _)) = self
                    .session
                    .tracks
                    .iter()
                    .filter(|(n, _)| *n != &t.id)
                    .find(|(_, o)| o.spec.layers.iter().any(|ol| ol.ssrc == Some(Ssrc(ssrc)) || ol.rtx_ssrc == Some(Ssrc(ssrc))))
                {
                    return Err(invalid(sf, format!("SSRC {ssrc} is already used by track {} in session {}", quote(other), quote(self.name))));
                }
            }
            layers.push(LayerSpec { ssrc: l.ssrc.map(Ssrc), rtx_ssrc: l.rtx_ssrc.map(Ssrc), rid: (!l.rid.is_empty()).then(|| l.rid.clone()) });
        }
        if t.payload_types.is_empty() {
            return Err(invalid(format!("{f}.payload_types"), "need at least one payload type"));
        }
        let mut payload_types = Vec::new();
        for (k, p) in t.payload_types.iter().enumerate() {
            let pf = format!("{f}.payload_types[{k}]");
            let pt = payload_type(&format!("{pf}.pt"), p.pt)?;
            let rtx_pt = p.rtx_pt.map(|r| payload_type(&format!("{pf}.rtx_pt"), r)).transpose()?;
            let codec = match pb::Codec::try_from(p.codec) {
                Ok(pb::Codec::Audio) => Codec::Audio,
                Ok(pb::Codec::Vp8) => Codec::Vp8,
                Ok(pb::Codec::Vp9) => Codec::Vp9,
                Ok(pb::Codec::H264) => Codec::H264,
                Ok(pb::Codec::Av1) => Codec::Av1,
                _ => return Err(invalid(format!("{pf}.codec"), "must be one of CODEC_AUDIO, CODEC_VP8, CODEC_VP9, CODEC_H264, CODEC_AV1")),
            };
            payload_types.push(PayloadSpec { pt, codec, rtx_pt });
        }
        let id = match old {
            Some(o) => o.spec.id,
            None => {
                let id = TrackId(self.next_track);
                self.next_track += 1;
                self.events.push(event(pb::event::Event::TrackAdded(t.id.clone())));
                id
            }
        };
        let spec = TrackSpec {
            id,
            publisher: publisher.id,
            kind,
            clock_rate: t.clock_rate,
            layers,
            payload_types,
            rid_ext,
            repaired_rid_ext,
            mid,
            audio_level_ext,
            speaker_group: audio_level_ext.map(|_| speaker_group(self.name)),
            dd_ext,
        };
        spec.validate().map_err(|e| spec_invalid(f, e))?;
        // The dataplane clamps subscriptions to the track's highest layer; so does the desired state.
        let top = (spec.layers.len() - 1) as u8;
        let clamped: Vec<(String, SubscriptionSpec)> = self
            .session
            .subs
            .iter()
            .filter_map(|(leg, subs)| {
                subs.get(&t.id).filter(|s| s.target_layer > top).map(|s| (leg.clone(), SubscriptionSpec { target_layer: top, ..s.clone() }))
            })
            .collect();
        for (leg, s) in clamped {
            self.put_sub(&leg, &t.id, s);
        }
        self.put_track(&t.id, NamedTrack { publisher: t.publisher_leg.clone(), spec });
        let taps: Vec<String> = self.session.taps.keys().cloned().collect();
        for tap in taps {
            self.sync_tap_sub(&tap, &t.id);
        }
        Ok(())
    }

    /// A leg's audio slots: 1 to 8 distinct SSRCs no subscription of the leg uses, the maps as a
    /// subscription's; the group is the session's.
    fn audio_slots(&self, f: &str, leg: &str, a: &pb::AudioSlots) -> Result<AudioSlotsSpec, StateError> {
        for (k, &ssrc) in a.out_ssrcs.iter().enumerate() {
            if ssrc == 0 {
                return Err(invalid(format!("{f}.out_ssrcs[{k}]"), "must be set (non-zero)"));
            }
            if let Some((track, _)) = self.session.subs.get(leg).into_iter().flatten().find(|(_, o)| o.out_ssrc.0 == ssrc || o.out_rtx_ssrc == Some(Ssrc(ssrc)))
            {
                return Err(invalid(
                    format!("{f}.out_ssrcs[{k}]"),
                    format!("SSRC {ssrc} is already used by leg {}'s subscription to track {}", quote(leg), quote(track)),
                ));
            }
        }
        let (pt_map, ext_map) = maps(f, &a.pt_map, &a.ext_map)?;
        let spec = AudioSlotsSpec { group: speaker_group(self.name), out_ssrcs: a.out_ssrcs.iter().map(|&s| Ssrc(s)).collect(), pt_map, ext_map };
        // The dataplane's own checks (count, distinct, map ranges), before anything is journaled.
        spec.validate().map_err(|e| spec_invalid(f.trim_end_matches(".audio_slots"), e))?;
        Ok(spec)
    }

    pub(super) fn subscription(&mut self, f: &str, s: &pb::Subscription) -> Result<(), StateError> {
        check_id(&format!("{f}.subscriber_leg"), &s.subscriber_leg)?;
        check_id(&format!("{f}.track"), &s.track)?;
        let Some(subscriber) = self.session.legs.get(&s.subscriber_leg) else {
            return Err(self.no_leg(&format!("{f}.subscriber_leg"), &s.subscriber_leg));
        };
        if self.session.taps.contains_key(&s.subscriber_leg) {
            return Err(tap_owns_its_subscriptions(&format!("{f}.subscriber_leg"), &s.subscriber_leg));
        }
        self.named_subs.entry(s.subscriber_leg.clone()).or_insert_with(|| format!("{f}.subscriber_leg"));
        let Some(track) = self.session.tracks.get(&s.track) else {
            return Err(self.no_track(&format!("{f}.track"), &s.track));
        };
        if track.publisher == s.subscriber_leg {
            return Err(invalid(
                format!("{f}.subscriber_leg"),
                format!("leg {} publishes track {}; a leg cannot subscribe to its own track", quote(&s.subscriber_leg), quote(&s.track)),
            ));
        }
        let layers = track.spec.layers.len();
        if s.target_layer as usize >= layers {
            return Err(invalid(
                format!("{f}.target_layer"),
                format!("layer {} is out of range: track {} has {layers} layer(s), 0..={}", s.target_layer, quote(&s.track), layers - 1),
            ));
        }
        if s.out_ssrc == 0 {
            return Err(invalid(format!("{f}.out_ssrc"), "must be set (non-zero)"));
        }
        if s.out_rtx_ssrc == Some(s.out_ssrc) {
            return Err(invalid(format!("{f}.out_rtx_ssrc"), format!("SSRC {} is already the out_ssrc", s.out_ssrc)));
        }
        if s.relay_layers.len() >= layers {
            return Err(invalid(
                format!("{f}.relay_layers"),
                format!("{} lane(s) beside out_ssrc, but track {} has {layers} layer(s): at most {}", s.relay_layers.len(), quote(&s.track), layers - 1),
            ));
        }
        // Every SSRC the subscription sends on, named by its field.
        let mut mine: Vec<(String, u32)> = vec![("out_ssrc".into(), s.out_ssrc)];
        mine.extend(s.out_rtx_ssrc.map(|r| ("out_rtx_ssrc".into(), r)));
        for (k, l) in s.relay_layers.iter().enumerate() {
            mine.push((format!("relay_layers[{k}].out_ssrc"), l.out_ssrc));
            mine.extend(l.out_rtx_ssrc.map(|r| (format!("relay_layers[{k}].out_rtx_ssrc"), r)));
        }
        for (i, (which, ssrc)) in mine.iter().enumerate() {
            if *ssrc == 0 {
                return Err(invalid(format!("{f}.{which}"), "must be set (non-zero)"));
            }
            if let Some((first, _)) = mine[..i].iter().find(|(_, o)| o == ssrc) {
                return Err(invalid(format!("{f}.{which}"), format!("SSRC {ssrc} is already this subscription's {first}")));
            }
        }
        let others = self.session.subs.get(&s.subscriber_leg).into_iter().flatten().filter(|(t, _)| *t != &s.track);
        for (other, o) in others {
            for (which, ssrc) in &mine {
                let ssrc = *ssrc;
                if o.out_ssrcs().any(|x| x.0 == ssrc) {
                    return Err(invalid(
                        format!("{f}.{which}"),
                        format!("SSRC {ssrc} is already used by leg {}'s subscription to track {}", quote(&s.subscriber_leg), quote(other)),
                    ));
                }
            }
        }
        for (which, ssrc) in &mine {
            if let Some(k) = subscriber.audio_slots.as_ref().and_then(|a| a.out_ssrcs.iter().position(|x| x.0 == *ssrc)) {
                return Err(invalid(format!("{f}.{which}"), format!("SSRC is already leg {}'s audio slot {k}", quote(&s.subscriber_leg))));
            }
        }
        let (pt_map, ext_map) = maps(f, &s.pt_map, &s.ext_map)?;
        let layer_id = |field: &str, v: Option<u32>| match v {
            Some(v) if v > 7 => Err(invalid(format!("{f}.{field}"), format!("{v} is beyond the highest layer id a descriptor carries (7)"))),
            v => Ok(v.map(|v| v as u8)),
        };
        let spec = SubscriptionSpec {
            subscriber: subscriber.id,
            track: track.spec.id,
            out_ssrc: Ssrc(s.out_ssrc),
            out_rtx_ssrc: s.out_rtx_ssrc.map(Ssrc),
            pt_map,
            ext_map,
            target_layer: s.target_layer as u8,
            paused: s.paused,
            priority: u8::try_from(s.priority).map_err(|_| invalid(format!("{f}.priority"), format!("{} is not in 0..=255", s.priority)))?,
            max_spatial: layer_id("max_spatial_layer", s.max_spatial_layer)?,
            max_temporal: layer_id("max_temporal_layer", s.max_temporal_layer)?,
            relay: s.relay_layers.iter().map(|l| (Ssrc(l.out_ssrc), l.out_rtx_ssrc.map(Ssrc))).collect(),
        };
        // What the dataplane's tables would refuse is refused here, before it is journaled.
        spec.validate().map_err(|e| spec_invalid(f, e))?;
        self.put_sub(&s.subscriber_leg, &s.track, spec);
        Ok(())
    }

    /// Puts leg `name` (logged; its ports indexed).
    fn put_leg(&mut self, name: &str, spec: LegSpec) {
        let was = self.session.legs.remove(name);
        if let Some(w) = &was {
            self.index.remove_leg(self.name, name, w);
        }
        self.index.add_leg(self.name, name, &spec);
        self.session.legs.insert(name.to_owned(), spec);
        self.steps.push(Step::Leg(name.to_owned(), was));
    }

    /// Puts track `name` (logged).
    fn put_track(&mut self, name: &str, t: NamedTrack) {
        let was = self.session.tracks.insert(name.to_owned(), t);
        self.steps.push(Step::Track(name.to_owned(), was));
    }

    /// Puts the subscription of `leg` to `track` (logged).
    fn put_sub(&mut self, leg: &str, track: &str, spec: SubscriptionSpec) {
        let was = self.session.subs.entry(leg.to_owned()).or_default().insert(track.to_owned(), spec);
        if was.is_none() {
            self.subs_added += 1;
        }
        self.steps.push(Step::Sub(leg.to_owned(), track.to_owned(), was));
    }

    /// Takes the subscription of `leg` to `track` (logged); whether there was one.
    fn take_sub(&mut self, leg: &str, track: &str) -> bool {
        let Some(subs) = self.session.subs.get_mut(leg) else { return false };
        let was = subs.remove(track);
        if subs.is_empty() {
            self.session.subs.remove(leg);
        }
        let Some(was) = was else { return false };
        self.subs_added -= 1;
        self.steps.push(Step::Sub(leg.to_owned(), track.to_owned(), Some(was)));
        true
    }

    /// Removes track `name` and every subscription to it (logged).
    fn remove_track(&mut self, name: &str) {
        if let Some(was) = self.session.tracks.remove(name) {
            self.steps.push(Step::Track(name.to_owned(), Some(was)));
        }
        let subscribers: Vec<String> = self.session.subs.iter().filter(|(_, s)| s.contains_key(name)).map(|(l, _)| l.clone()).collect();
        for leg in subscribers {
            self.take_sub(&leg, name);
        }
    }

    /// Removes leg `name`, its subscriptions, its tracks and every subscription to them
    /// (logged); returns the tracks' names.
    fn remove_leg(&mut self, name: &str) -> Vec<String> {
        if let Some(was) = self.session.legs.remove(name) {
            self.index.remove_leg(self.name, name, &was);
            self.steps.push(Step::Leg(name.to_owned(), Some(was)));
        }
        self.put_tap(name, None);
        let subscribed: Vec<String> = self.session.subs.get(name).map(|s| s.keys().cloned().collect()).unwrap_or_default();
        for track in subscribed {
            self.take_sub(name, &track);
        }
        let tracks: Vec<String> = self.session.tracks.iter().filter(|(_, t)| t.publisher == name).map(|(n, _)| n.clone()).collect();
        for t in &tracks {
            self.remove_track(t);
        }
        tracks
    }
}

/// A subscription of recording tap `leg` named by a change (at `field`): refused, the tap's are
/// the control plane's.
fn tap_owns_its_subscriptions(field: &str, leg: &str) -> StateError {
    invalid(field, format!("leg {} is a recording tap: its subscriptions are the control plane's, one per track of the session (see RecordingTap)", quote(leg)))
}

/// Plain RTP to `r`, which is not a loopback, private or link-local address: refused at `field`.
fn not_private(field: &str, r: SocketAddr) -> StateError {
    invalid(field, format!("plain RTP (plain_rtp) goes only to a loopback, private (RFC 1918, RFC 4193) or link-local address; {} is none of those", r.ip()))
}

/// The tables' own refusal of a spec ([`SpecError`], the check `SpecSet::apply` makes), as the
/// field of the request at `f`: `changes[2].subscription` and `subscription.pt_map` make
/// `changes[2].subscription.pt_map`.
pub(super) fn spec_invalid(f: &str, e: SpecError) -> StateError {
    let field = e.field.split_once('.').map_or(e.field, |(_, rest)| rest);
    invalid(format!("{f}.{field}"), e.why)
}

/// Whether `b` may appear in an id: ASCII letters, digits and `- _ . : @ /` (what names,
/// UUIDs, URIs' paths and `user@host` need; nothing a terminal or a log line interprets).
pub(super) fn id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.:@/".contains(&b)
}

/// Checks an id (session, leg, track, idempotency key): 1 to [`MAX_ID_LEN`] bytes of
/// [`id_byte`]s. The message never echoes the id: it names the first bad character and where.
pub fn check_id(field: &str, id: &str) -> Result<(), StateError> {
    if id.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid(field, format!("is {} bytes; ids are at most {MAX_ID_LEN}", id.len())));
    }
    if let Some((at, c)) = id.char_indices().find(|&(_, c)| !c.is_ascii() || !id_byte(c as u8)) {
        return Err(invalid(field, format!("character {} at byte {at} is not allowed: ids use ASCII letters, digits and - _ . : @ /", describe_char(c))));
    }
    Ok(())
}

/// Checks a RID (RFC 8851 §10 rid-id: letters, digits, `-`, `_`), 1 to [`MAX_RID_LEN`] bytes.
pub(super) fn check_rid(field: &str, rid: &str) -> Result<(), StateError> {
    if rid.len() > MAX_RID_LEN {
        return Err(invalid(field, format!("is {} bytes; a RID is at most {MAX_RID_LEN}", rid.len())));
    }
    if let Some((at, c)) = rid.char_indices().find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        return Err(invalid(
            field,
            format!("character {} at byte {at} is not allowed: a RID uses ASCII letters, digits, - and _ (RFC 8851)", describe_char(c)),
        ));
    }
    Ok(())
}

pub(super) fn payload_type(field: &str, v: u32) -> Result<Pt, StateError> {
    if v > 127 {
        return Err(invalid(field, format!("payload type {v} is over 127")));
    }
    Ok(Pt(v as u8))
}

pub(super) fn ext_id(field: &str, v: Option<u32>) -> Result<Option<u8>, StateError> {
    match v {
        None => Ok(None),
        Some(v) if (1..=255).contains(&v) => Ok(Some(v as u8)),
        Some(v) => Err(invalid(field, format!("header extension id {v} is outside 1..=255"))),
    }
}

/// The core profile for a protobuf profile.
pub fn profile_from_pb(p: i32) -> Option<Profile> {
    match pb::SrtpProfile::try_from(p).ok()? {
        pb::SrtpProfile::Aes128CmHmacSha180 => Some(Profile::AesCm128HmacSha1_80),
        pb::SrtpProfile::Aes128CmHmacSha132 => Some(Profile::AesCm128HmacSha1_32),
        pb::SrtpProfile::AeadAes128Gcm => Some(Profile::AeadAes128Gcm),
        pb::SrtpProfile::AeadAes256Gcm => Some(Profile::AeadAes256Gcm),
        pb::SrtpProfile::Unspecified => None,
    }
}

/// The protobuf profile for a core profile.
pub fn profile_to_pb(p: Profile) -> pb::SrtpProfile {
    match p {
        Profile::AesCm128HmacSha1_80 => pb::SrtpProfile::Aes128CmHmacSha180,
        Profile::AesCm128HmacSha1_32 => pb::SrtpProfile::Aes128CmHmacSha132,
        Profile::AeadAes128Gcm => pb::SrtpProfile::AeadAes128Gcm,
        Profile::AeadAes256Gcm => pb::SrtpProfile::AeadAes256Gcm,
    }
}

/// The protobuf codec for a core codec.
pub fn codec_to_pb(c: Codec) -> pb::Codec {
    match c {
        Codec::Audio => pb::Codec::Audio,
        Codec::Vp8 => pb::Codec::Vp8,
        Codec::Vp9 => pb::Codec::Vp9,
        Codec::H264 => pb::Codec::H264,
        Codec::Av1 => pb::Codec::Av1,
    }
}

pub(super) fn key_material(field: &str, k: Option<&pb::KeyMaterial>) -> Result<KeyMaterial, StateError> {
    let k = k.ok_or_else(|| invalid(field, "required"))?;
    let profile = profile_from_pb(k.profile).ok_or_else(|| invalid(format!("{field}.profile"), "must name an SRTP profile"))?;
    if k.key.len() != profile.key_len() {
        return Err(invalid(
            format!("{field}.key"),
            format!("{:?} needs a {}-byte master key, got {}", profile_to_pb(profile).as_str_name(), profile.key_len(), k.key.len()),
        ));
    }
    if k.salt.len() != profile.salt_len() {
        return Err(invalid(
            format!("{field}.salt"),
            format!("{:?} needs a {}-byte master salt, got {}", profile_to_pb(profile).as_str_name(), profile.salt_len(), k.salt.len()),
        ));
    }
    Ok(KeyMaterial::new(profile, k.key.clone(), k.salt.clone()))
}

/// A payload-type map and a header-extension-id map, publisher → subscriber.
type Maps = (Vec<(Pt, Pt)>, Vec<(u8, u8)>);

/// A payload-type and a header-extension map as the API gives them (`f`: the message's path).
fn maps(f: &str, pt: &[pb::IdMapping], ext: &[pb::IdMapping]) -> Result<Maps, StateError> {
    let mut pt_map = Vec::new();
    for (k, m) in pt.iter().enumerate() {
        pt_map.push((payload_type(&format!("{f}.pt_map[{k}].from"), m.from)?, payload_type(&format!("{f}.pt_map[{k}].to"), m.to)?));
    }
    let mut ext_map = Vec::new();
    for (k, m) in ext.iter().enumerate() {
        let from = ext_id(&format!("{f}.ext_map[{k}].from"), Some(m.from))?.unwrap_or_default();
        let to = ext_id(&format!("{f}.ext_map[{k}].to"), Some(m.to))?.unwrap_or_default();
        ext_map.push((from, to));
    }
    Ok((pt_map, ext_map))
}

/// The speaker group of a session's audio tracks: the dataplane ranks active speakers per group
/// (see `sluice_core::audio`). A stable hash of the session name (the journal's FNV-1a): the same
/// after a restart or a journal replay without a stored counter, and with 64 bits two sessions
/// of one node collide with odds of about n²/2⁶⁵ (10⁻¹³ for a thousand sessions).
pub fn speaker_group(session: &str) -> SpeakerGroup {
    SpeakerGroup(fingerprint(session.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::pb::change::Change as C;

    /// `audio_level_ext` is a one-byte extension id (1..=14) of an audio track; the track then
    /// joins its session's speaker group, which is the same for the session's tracks, differs
    /// between sessions, and comes back in GetSession.
    #[test]
    fn audio_level_ext_is_validated_and_puts_the_track_in_its_sessions_speaker_group() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_009 });
        d.apply(&pair("m")).unwrap();
        let mut video_with_level = video("v9", "a", 900);
        if let Some(C::Track(t)) = &mut video_with_level.change {
            t.audio_level_ext = Some(1);
        }
        for (change, why) in [(audio("x", "a", 7, Some(0)), "1..=14"), (audio("x", "a", 7, Some(15)), "1..=14"), (video_with_level, "only audio")] {
            let before = d.clone();
            let e = d.apply(&req("m", vec![change])).expect_err("refused");
            assert_eq!((e.kind, e.field.as_str()), (ErrorKind::InvalidArgument, "changes[0].track.audio_level_ext"), "{e}");
            assert!(e.message.contains(why), "{e}");
            assert_eq!(d, before);
        }
        d.apply(&req("m", vec![audio("xa", "a", 7, Some(1)), audio("xb", "b", 8, Some(14)), audio("plain", "a", 9, None)])).unwrap();
        d.apply(&req("n", vec![leg("c"), audio("xc", "c", 7, Some(1))])).unwrap();
        let spec = |s: &str, t: &str| d.sessions[s].tracks[t].spec.clone();
        assert_eq!(spec("m", "xa").audio_level_ext, Some(1));
        assert_eq!(spec("m", "xa").speaker_group, Some(speaker_group("m")));
        assert_eq!(spec("m", "xb").speaker_group, Some(speaker_group("m")));
        assert_eq!(spec("m", "plain").speaker_group, None, "no level, not ranked");
        assert_eq!(spec("n", "xc").speaker_group, Some(speaker_group("n")));
        assert_ne!(speaker_group("m"), speaker_group("n"));
        let view = d.session_view("m", &EdgeInfo::default()).unwrap();
        assert_eq!(view.tracks.iter().find(|t| t.id == "xb").and_then(|t| t.audio_level_ext), Some(14));
    }

    /// The SVC fields: a dependency-descriptor extension id (1..=255, video only) on a track,
    /// spatial and temporal ceilings (0..=7) on a subscription; refused with the field named and
    /// nothing changed, stored and shown by GetSession when valid.
    #[test]
    fn svc_fields_are_validated_stored_and_shown() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_009 });
        d.apply(&pair("m")).unwrap();
        let with_dd = |mut c: pb::Change, id| {
            if let Some(C::Track(t)) = &mut c.change {
                t.dependency_descriptor_ext = Some(id);
            }
            c
        };
        let with_ceilings = |mut c: pb::Change, s: Option<u32>, t: Option<u32>| {
            if let Some(C::Subscription(x)) = &mut c.change {
                (x.max_spatial_layer, x.max_temporal_layer) = (s, t);
            }
            c
        };
        let bad = [
            (with_dd(video("v9", "a", 900), 0), "changes[0].track.dependency_descriptor_ext"),
            (with_dd(video("v9", "a", 900), 256), "changes[0].track.dependency_descriptor_ext"),
            (with_dd(audio("x", "a", 7, None), 3), "changes[0].track.dependency_descriptor_ext"),
            (with_ceilings(sub("b", "va", 77, 0, false), Some(8), None), "changes[0].subscription.max_spatial_layer"),
            (with_ceilings(sub("b", "va", 77, 0, false), None, Some(9)), "changes[0].subscription.max_temporal_layer"),
        ];
        for (change, field) in bad {
            let before = d.clone();
            let e = d.apply(&req("m", vec![change])).expect_err("refused");
            assert_eq!((e.kind, e.field.as_str()), (ErrorKind::InvalidArgument, field), "{e}");
            assert_eq!(d, before);
        }
        d.apply(&req("m", vec![with_dd(video("v9", "a", 900), 200), with_ceilings(sub("b", "v9", 77, 0, false), Some(1), Some(0))])).unwrap();
        assert_eq!(d.sessions["m"].tracks["v9"].spec.dd_ext, Some(200));
        let view = d.session_view("m", &EdgeInfo::default()).unwrap();
        assert_eq!(view.tracks.iter().find(|t| t.id == "v9").and_then(|t| t.dependency_descriptor_ext), Some(200));
        let s = view.subscriptions.iter().find(|s| s.track == "v9").unwrap();
        assert_eq!((s.max_spatial_layer, s.max_temporal_layer), (Some(1), Some(0)));
    }

    fn settings(on: bool, n: u32) -> pb::Change {
        pb::Change { change: Some(C::Settings(pb::SessionSettings { top_n_audio: on, audio_top_n: n })) }
    }

    fn slotted(id: &str, ssrcs: &[u32]) -> pb::Change {
        let mut c = leg(id);
        if let Some(C::Leg(l)) = &mut c.change {
            l.audio_slots = Some(pb::AudioSlots {
                out_ssrcs: ssrcs.to_vec(),
                pt_map: vec![pb::IdMapping { from: 111, to: 109 }],
                ext_map: vec![pb::IdMapping { from: 1, to: 1 }],
            });
        }
        c
    }

    /// Top-N audio over gRPC: N from the session's settings (default 3, at most 8); a leg's
    /// slot SSRCs are validated like the dataplane does and never clash with its subscriptions;
    /// the dataplane gets the first N slots of each leg, and none while top-N is off.
    #[test]
    fn top_n_settings_and_audio_slots_are_validated_and_compiled() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_009 });
        d.apply(&pair("m")).unwrap();
        let refused = [
            (req("m", vec![settings(true, 9)]), "changes[0].settings.audio_top_n"),
            (req("m", vec![slotted("c", &[])]), "changes[0].leg.audio_slots.out_ssrcs"),
            (req("m", vec![slotted("c", &[1, 2, 3, 4, 5, 6, 7, 8, 9])]), "changes[0].leg.audio_slots.out_ssrcs"),
            (req("m", vec![slotted("c", &[5, 5])]), "changes[0].leg.audio_slots.out_ssrcs"),
            (req("m", vec![slotted("c", &[5, 0])]), "changes[0].leg.audio_slots.out_ssrcs[1]"),
            // Leg a's subscription to vb uses 1000 (and 1001 for RTX).
            (req("m", vec![slotted("a", &[7, 1001])]), "changes[0].leg.audio_slots.out_ssrcs[1]"),
            (req("m", vec![slotted("c", &[2000]), sub("c", "va", 2000, 0, false)]), "changes[1].subscription.out_ssrc"),
        ];
        for (r, field) in refused {
            let before = d.clone();
            let e = d.apply(&r).expect_err("refused");
            assert_eq!((e.kind, e.field.as_str()), (ErrorKind::InvalidArgument, field), "{e}");
            assert_eq!(d, before);
        }
        d.apply(&req("m", vec![slotted("a", &[11, 12, 13, 14, 15])])).unwrap();
        let slots_of = |d: &Desired| d.tables().legs.values().find_map(|l| l.audio_slots.clone());
        assert_eq!(slots_of(&d), None, "top-N off: no slots in the dataplane");
        d.apply(&req("m", vec![settings(true, 0)])).unwrap();
        let a = slots_of(&d).expect("slots");
        assert_eq!(a.out_ssrcs, vec![Ssrc(11), Ssrc(12), Ssrc(13)], "the default N is 3");
        assert_eq!(a.group, speaker_group("m"));
        assert_eq!((a.pt_map, a.ext_map), (vec![(Pt(111), Pt(109))], vec![(1, 1)]));
        d.apply(&req("m", vec![settings(true, 2)])).unwrap();
        assert_eq!(slots_of(&d).unwrap().out_ssrcs.len(), 2);
        let view = d.session_view("m", &EdgeInfo::default()).unwrap();
        assert_eq!(view.settings, Some(pb::SessionSettings { top_n_audio: true, audio_top_n: 2 }));
        let a = view.legs.iter().find(|l| l.id == "a").and_then(|l| l.audio_slots.clone()).unwrap();
        assert_eq!(a.out_ssrcs, vec![11, 12, 13, 14, 15], "the leg keeps what it asked for");
    }

    fn relay(leg: &str, track: &str, out: u32, lanes: &[u32]) -> pb::Change {
        let mut c = sub(leg, track, out, 0, false);
        if let Some(C::Subscription(s)) = &mut c.change {
            s.relay_layers = lanes.iter().map(|&l| pb::RelayLayer { out_ssrc: l, out_rtx_ssrc: (l != 0).then_some(l + 1) }).collect();
        }
        c
    }

    /// A relay (cascade) subscription over gRPC: each lane's SSRCs are validated like the
    /// subscription's own (named by field), never clash with the leg's other streams, and the
    /// lanes reach the dataplane's spec and the session view.
    #[test]
    fn relay_subscriptions_are_validated_compiled_and_shown() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_009 });
        d.apply(&pair("m")).unwrap();
        d.apply(&req("m", vec![leg("c"), sub("c", "vb", 4000, 0, false)])).unwrap();
        let refused = [
            (req("m", vec![relay("c", "va", 3000, &[3010, 3020, 3030])]), "changes[0].subscription.relay_layers"),
            (req("m", vec![relay("c", "va", 3000, &[0])]), "changes[0].subscription.relay_layers[0].out_ssrc"),
            (req("m", vec![relay("c", "va", 3000, &[3010, 3000])]), "changes[0].subscription.relay_layers[1].out_ssrc"),
            (req("m", vec![relay("c", "va", 3000, &[3010, 3010])]), "changes[0].subscription.relay_layers[1].out_ssrc"),
            // c's subscription to vb sends 4000 and 4001.
            (req("m", vec![relay("c", "va", 3000, &[3999])]), "changes[0].subscription.relay_layers[0].out_rtx_ssrc"),
        ];
        for (r, field) in refused {
            let before = d.clone();
            let e = d.apply(&r).expect_err("refused");
            assert_eq!((e.kind, e.field.as_str()), (ErrorKind::InvalidArgument, field), "{e}");
            assert_eq!(d, before);
        }
        d.apply(&req("m", vec![relay("c", "va", 3000, &[3010, 3020])])).unwrap();
        let spec = d.tables().subs.values().find(|s| s.out_ssrc == Ssrc(3000)).cloned().expect("compiled");
        assert_eq!(spec.relay, vec![(Ssrc(3010), Some(Ssrc(3011))), (Ssrc(3020), Some(Ssrc(3021)))]);
        let view = d.session_view("m", &EdgeInfo::default()).unwrap();
        let s = view.subscriptions.iter().find(|s| s.out_ssrc == 3000).unwrap();
        assert_eq!(s.relay_layers.iter().map(|l| (l.out_ssrc, l.out_rtx_ssrc)).collect::<Vec<_>>(), [(3010, Some(3011)), (3020, Some(3021))]);
        // Another subscription of c cannot take a lane's SSRC.
        let e = d.apply(&req("m", vec![sub("c", "vb", 3020, 0, false)])).expect_err("refused");
        assert_eq!(e.field, "changes[0].subscription.out_ssrc", "{e}");
    }

    /// A leg's receive budget over gRPC: validated (field named), stored, shown, compiled.
    #[test]
    fn a_legs_rate_limit_is_validated_and_compiled() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_009 });
        d.apply(&pair("m")).unwrap();
        let limited = |id: &str, pps: u32, bps: u64, burst: u32| {
            let mut c = leg(id);
            if let Some(C::Leg(l)) = &mut c.change {
                l.rate_limit = Some(pb::RateLimit { packets_per_s: pps, bytes_per_s: bps, burst_ms: burst });
            }
            c
        };
        for (r, field) in [
            (req("m", vec![limited("c", 0, 1000, 100)]), "changes[0].leg.rate_limit"),
            (req("m", vec![limited("c", 10, 0, 100)]), "changes[0].leg.rate_limit"),
            (req("m", vec![limited("c", 10, 1000, 6000)]), "changes[0].leg.rate_limit.burst_ms"),
        ] {
            let before = d.clone();
            let e = d.apply(&r).expect_err("refused");
            assert_eq!((e.kind, e.field.as_str()), (ErrorKind::InvalidArgument, field), "{e}");
            assert_eq!(d, before);
        }
        d.apply(&req("m", vec![limited("c", 100, 200_000, 0)])).unwrap();
        let spec = d.tables().legs.values().find_map(|l| l.rate_limit).expect("compiled");
        assert_eq!(spec, RateLimit { packets_per_s: 100, bytes_per_s: 200_000, burst_ms: 500 }, "burst 0 means 500 ms");
        let view = d.session_view("m", &EdgeInfo::default()).unwrap();
        let shown = view.legs.iter().find(|l| l.id == "c").and_then(|l| l.rate_limit).unwrap();
        assert_eq!((shown.packets_per_s, shown.bytes_per_s, shown.burst_ms), (100, 200_000, 500));
    }

    /// With top-N on, a leg with slots is not also subscribed to ranked audio in the dataplane
    /// (it would hear each speaker twice); the subscription stays desired and comes back when
    /// top-N goes off.
    #[test]
    fn slots_replace_per_track_subscriptions_to_ranked_audio() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_009 });
        d.apply(&pair("m")).unwrap();
        d.apply(&req("m", vec![audio("ab", "b", 300, Some(1)), sub("a", "ab", 3000, 0, false), slotted("a", &[11, 12])])).unwrap();
        let track = d.sessions["m"].tracks["ab"].spec.id;
        let installed = |d: &Desired| d.tables().subs.keys().any(|(_, t)| *t == track);
        assert!(installed(&d), "top-N off: the per-track subscription");
        d.apply(&req("m", vec![settings(true, 2)])).unwrap();
        assert!(!installed(&d), "top-N on: the slots instead");
        assert!(d.tables().subs.keys().any(|(_, t)| *t != track), "video subscriptions stay");
        d.apply(&req("m", vec![settings(false, 2)])).unwrap();
        assert!(installed(&d), "top-N off again: back");
    }
}

#[cfg(test)]
mod rtcp_tests {
    use super::*;
    use crate::pb::change::Change as C;
    use crate::state::fixtures::{leg, req};

    fn sip_leg(id: &str, rtcp_remote: &str) -> pb::Change {
        let mut c = leg(id);
        if let Some(C::Leg(l)) = &mut c.change {
            l.separate_rtcp = true;
            l.rtcp_remote = rtcp_remote.into();
        }
        c
    }

    /// A leg without rtcp-mux gets its RTP port + 1 for RTCP (when free), keeps it, and no other
    /// leg of any session gets it; the view shows it. WebRTC legs and an RTCP remote without a
    /// separate RTCP port are refused, naming the field.
    #[test]
    fn a_leg_without_rtcp_mux_gets_the_next_port_for_rtcp() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_009 });
        d.apply(&req("m", vec![sip_leg("sip", "")])).unwrap();
        let spec = &d.sessions["m"].legs["sip"];
        assert_eq!((spec.local_port, spec.rtcp.as_deref().map(|c| c.local_port)), (30_000, Some(30_001)));
        let out = d.apply(&req("n", vec![leg("other")])).unwrap();
        assert_eq!(out.committed.ports, vec![("other".into(), 30_002)], "the RTCP port is taken");
        d.apply(&req("m", vec![sip_leg("sip", "10.0.0.5:7001")])).unwrap();
        let spec = &d.sessions["m"].legs["sip"];
        assert_eq!(spec.rtcp.as_deref().copied(), Some(RtcpComponent { local_port: 30_001, remote: Some("10.0.0.5:7001".parse().unwrap()) }), "kept");
        let view = d.session_view("m", &EdgeInfo { ip: None, fingerprint: String::new(), ice_tcp_port: None }).unwrap();
        let l = view.legs.iter().find(|l| l.id == "sip").unwrap();
        assert_eq!((l.separate_rtcp, l.rtcp_port, l.rtcp_remote.as_str()), (true, 30_001, "10.0.0.5:7001"));
        // With RTP port + 1 taken, another free port.
        d.apply(&req("m", vec![leg("x"), sip_leg("sip2", "")])).unwrap();
        let spec = &d.sessions["m"].legs["sip2"];
        assert_eq!((spec.local_port, spec.rtcp.as_deref().map(|c| c.local_port)), (30_004, Some(30_005)));

        let mut web = sip_leg("w", "");
        if let Some(C::Leg(l)) = &mut web.change {
            l.rx = None;
            l.tx = None;
            l.webrtc = Some(pb::WebRtc {
                remote_ice_ufrag: "abcd".into(),
                remote_ice_pwd: "p".repeat(24),
                remote_fingerprint: format!("sha-256 {}", vec!["AB"; 32].join(":")),
                setup: pb::DtlsSetup::Passive as i32,
            });
        }
        let e = d.apply(&req("m", vec![web])).unwrap_err();
        assert_eq!(e.field, "changes[0].leg.separate_rtcp", "{e:?}");
        let mut lone = leg("y");
        if let Some(C::Leg(l)) = &mut lone.change {
            l.rtcp_remote = "10.0.0.5:7001".into();
        }
        let e = d.apply(&req("m", vec![lone])).unwrap_err();
        assert_eq!(e.field, "changes[0].leg.rtcp_remote", "{e:?}");
        assert!(e.message.contains("separate_rtcp"), "{e:?}");
    }
}
