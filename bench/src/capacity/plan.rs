//! From a scenario to concrete meetings: legs with per-leg SRTP keys, tracks, subscriptions (as
//! the table ops the control plane is programmed with, one session per meeting), the streams each
//! publisher sends and, for every packet of a stream, how many subscribers must receive it.
//!
//! With adaptive publishers (the scenario's `publishers = "adaptive"`) every participant that
//! publishes also has a send leg: its tracks are published on it, and it negotiates transport-cc
//! (extension id [`TWCC_EXT`]), so Sluice sends it transport-cc feedback and RRs. Its own leg
//! keeps receiving without congestion control, so each subscription gets its target layer as
//! with fixed publishers and the sinks' checks stay exact. (A browser bundles both directions on
//! one transport; a leg with transport-cc is also one Sluice runs its downlink estimator and
//! allocator on, which would need the sinks to answer with transport-cc of their own.)
//!
//! Payload types, key material and leg specs are `sluice-sim`'s fixtures. SSRCs are numbered by
//! stream index rather than by `sluice_sim::ids` seats: a participant's streams depend on the
//! scenario (speakers, cameras, the sharer), and the lanes find a stream by its index.

use std::net::Ipv4Addr;

use sluice_core::ids::{LegId, Pt, Ssrc, TrackId};
use sluice_core::table::{Codec, FeedbackSpec, KeyMaterial, LayerSpec, LegSpec, MediaKind, Op, PayloadSpec, SubscriptionSpec, TrackSpec};
use sluice_sim::fixture;

use super::scenario::{PublisherMode, Scenario};

/// Audio payload type.
pub const AUDIO_PT: u8 = fixture::PT_OPUS;
/// Video (and screen share) payload type: VP8.
pub const VIDEO_PT: u8 = fixture::PT_VP8;
/// The publishers' transport-wide-cc-01 header-extension id (one-byte form).
pub const TWCC_EXT: u8 = 3;
/// Send legs have ids from here (participant leg id + this).
const SEND_LEG_BASE: u32 = 1_000_000;

/// What a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// Opus-sized audio.
    Audio,
    /// A camera simulcast layer (0 lowest).
    Video(u8),
    /// Screen share.
    Screen,
}

/// One RTP stream a publisher sends.
#[derive(Clone, Debug)]
pub struct Stream {
    /// Index of the publisher in [`Plan::participants`].
    pub publisher: usize,
    /// Its meeting.
    pub meeting: usize,
    /// Publisher SSRC.
    pub ssrc: u32,
    /// What it is.
    pub kind: StreamKind,
    /// Time between frames (audio: packets), ns.
    pub interval_ns: u64,
    /// RTP clock ticks per frame.
    pub ts_step: u32,
    /// Payload bytes of a normal frame (audio: of a packet).
    pub frame_bytes: u32,
    /// Payload bytes of a keyframe (video and screen).
    pub keyframe_bytes: u32,
    /// Largest payload per packet.
    pub packet_bytes: u32,
    /// Subscribers that receive every packet of it (webinar: with every viewer programmed).
    pub copies: u32,
    /// Whether the generator sends it on its schedule (false: the promoted viewer's audio, sent
    /// only while the promotion lasts).
    pub scheduled: bool,
}

/// One stream as one subscriber receives it (what the sink checks).
#[derive(Clone, Copy, Debug)]
pub struct OutStream {
    /// The subscriber, index in [`Plan::participants`].
    pub subscriber: usize,
    /// The SSRC the SFU sends it with.
    pub out_ssrc: u32,
    /// The published stream it carries.
    pub stream: usize,
}

/// A participant: one leg.
#[derive(Clone, Debug)]
pub struct Member {
    /// Leg id (the control plane knows it as `leg-<id>`).
    pub leg: LegId,
    /// Its meeting.
    pub meeting: usize,
    /// Keys participant → SFU.
    pub up: KeyMaterial,
    /// Keys SFU → participant.
    pub down: KeyMaterial,
    /// The SFU port the control plane allocated to its leg (0 until programmed).
    pub port: u16,
    /// Adaptive publishers: the leg it publishes on, with transport-cc.
    pub send: Option<SendLeg>,
    /// Its own source address (webinar viewers on loopback: 127.1.x.y, programmed as the leg's
    /// remote); `None`: the lane socket's address, latched from its first packet.
    pub ip: Option<Ipv4Addr>,
}

/// A publisher's send leg (adaptive publishers only).
#[derive(Clone, Debug)]
pub struct SendLeg {
    /// Leg id.
    pub leg: LegId,
    /// Keys participant → SFU (its media).
    pub up: KeyMaterial,
    /// Keys SFU → participant (Sluice's feedback).
    pub down: KeyMaterial,
    /// The SFU port of the leg (0 until programmed).
    pub port: u16,
}

impl Member {
    /// The leg its media goes to, the keys it is protected with and the SFU port.
    pub fn publishing(&self) -> (LegId, &KeyMaterial, u16) {
        match &self.send {
            Some(s) => (s.leg, &s.up, s.port),
            None => (self.leg, &self.up, self.port),
        }
    }
}

/// One meeting.
#[derive(Clone, Debug)]
pub struct Meeting {
    /// Participants.
    pub size: u32,
    /// Index of its first participant.
    pub first: usize,
    /// Whether one participant shares a screen.
    pub screen_share: bool,
    /// The table ops that create it.
    pub ops: Vec<Op>,
}

/// Concrete meetings for a scenario.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Meetings, in the order the ramp activates them.
    pub meetings: Vec<Meeting>,
    /// Every participant.
    pub participants: Vec<Member>,
    /// Every published stream, grouped by meeting.
    pub streams: Vec<Stream>,
    /// Every subscription.
    pub out_streams: Vec<OutStream>,
    /// Publishers adapt to Sluice's feedback (they have send legs).
    pub adaptive: bool,
    /// A webinar: meeting 0 is the presenter, meeting k (1..) is viewer k alone.
    pub webinar: Option<WebinarPlan>,
}

/// What a webinar plan adds: which streams are the presenter's and each viewer's camera layer.
#[derive(Clone, Debug)]
pub struct WebinarPlan {
    /// The presenter's audio stream.
    pub audio: usize,
    /// The presenter's camera layers' streams, low first.
    pub camera: [usize; 3],
    /// The presenter's screen-share stream.
    pub screen: usize,
    /// The camera layer of each viewer (viewer k is participant k, meeting k; index k - 1).
    pub camera_layers: Vec<u8>,
    /// The promotion, when the scenario asks for one.
    pub promotion: Option<Promotion>,
}

/// A viewer promoted to speaker: the ops that promote it (its audio track, and the presenter's
/// and every other viewer's subscription to it); removing the track demotes it.
#[derive(Clone, Debug)]
pub struct Promotion {
    /// The promoted viewer (index in [`Plan::participants`]).
    pub participant: usize,
    /// Its audio stream (not scheduled: sent by the promotion).
    pub stream: usize,
    /// Its track's id.
    pub track: TrackId,
    /// The track.
    pub track_op: Op,
    /// The subscriptions to it: (subscriber, op), the presenter first, then the viewers in order.
    pub subscriptions: Vec<(usize, Op)>,
}

impl WebinarPlan {
    /// Copies of `stream` among the first `viewers` viewers, all subscribed.
    pub fn copies_among(&self, stream: usize, viewers: usize) -> u32 {
        if stream == self.audio || stream == self.screen {
            return viewers as u32;
        }
        match self.camera.iter().position(|&c| c == stream) {
            Some(l) => self.camera_layers.iter().take(viewers).filter(|&&x| usize::from(x) == l).count() as u32,
            None => 0,
        }
    }

    /// The presenter's stream viewer `k` (1..) receives per its subscriptions: audio, its camera
    /// layer, the screen.
    pub fn viewer_streams(&self, k: usize) -> [usize; 3] {
        [self.audio, self.camera[usize::from(self.camera_layers[k - 1])], self.screen]
    }
}

/// The presenter's track ids in a webinar: audio, camera, screen; the promoted viewer's audio.
const WEBINAR_TRACKS: [u32; 4] = [1, 2, 3, 4];

/// The source address of webinar viewer `participant` on loopback: 127.1.0.0 + its index.
pub fn viewer_ip(participant: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + participant as u32)
}

/// How many of a meeting's participants publish (the first speakers and cameras, and the
/// sharer, who is the last): the legs a meeting needs beyond one per participant, with adaptive
/// publishers.
pub fn publishers_in(s: &Scenario, size: u32, screen_share: bool) -> u32 {
    let first = first_publishers(s, size);
    first + u32::from(screen_share && first < size)
}

/// The first participants of a meeting of `size` that speak or show their camera.
fn first_publishers(s: &Scenario, size: u32) -> u32 {
    size.min(s.audio.speakers).max(size.min(s.video.max_publishers))
}

/// The leg `id` (port 0: the control plane allocates it), with transport-cc on `twcc_ext`.
fn leg_spec(id: u32, rx: &KeyMaterial, tx: &KeyMaterial, twcc_ext: Option<u8>) -> Op {
    Op::UpsertLeg(LegSpec { feedback: FeedbackSpec { twcc_ext, remb: false }, ..fixture::leg_spec(id, 0, rx.clone(), tx.clone()) })
}

/// The keys of leg `id`: (participant → SFU, SFU → participant).
fn keys(profile: sluice_core::srtp::Profile, id: u32) -> (KeyMaterial, KeyMaterial) {
    (fixture::material(profile, id, 0), fixture::material(profile, id, 1))
}

/// Stream number `index` (its SSRC follows from it) of `publisher` in `meeting`: the schedule of
/// its kind from the scenario.
fn stream_for(s: &Scenario, index: usize, publisher: usize, meeting: usize, kind: StreamKind) -> Stream {
    let ssrc = 0x1000_0000 + (index as u32) * 4;
    let (interval_ns, ts_step, frame_bytes, keyframe_bytes, packet_bytes) = match kind {
        StreamKind::Audio => {
            let ms = u64::from(s.audio.packet_ms);
            (ms * 1_000_000, (48 * ms) as u32, s.audio.payload_bytes, s.audio.payload_bytes, s.audio.payload_bytes)
        }
        StreamKind::Video(l) => {
            let b = s.video.layers_kbps[usize::from(l)] * 1000 / 8 / s.video.fps;
            let b = b.max(16);
            (1_000_000_000 / u64::from(s.video.fps), 90_000 / s.video.fps, b, b * s.video.keyframe_factor, s.video.packet_bytes)
        }
        StreamKind::Screen => {
            let b = (s.screen.kbps * 1000 / 8 / s.screen.fps).max(16);
            (1_000_000_000 / u64::from(s.screen.fps), 90_000 / s.screen.fps, b, b * s.video.keyframe_factor, s.video.packet_bytes)
        }
    };
    Stream { publisher, meeting, ssrc, kind, interval_ns, ts_step, frame_bytes, keyframe_bytes, packet_bytes, copies: 0, scheduled: true }
}

/// The track `id` of `kind` published on `publisher` with the SSRCs of `streams` (one per layer).
fn track_op(id: u32, publisher: LegId, kind: StreamKind, ssrcs: &[u32]) -> Op {
    let layers = ssrcs.iter().map(|&ssrc| LayerSpec { ssrc: Some(Ssrc(ssrc)), rtx_ssrc: None, rid: None }).collect();
    let (media, clock_rate, pt, codec) = match kind {
        StreamKind::Audio => (MediaKind::Audio, 48_000, AUDIO_PT, Codec::Audio),
        _ => (MediaKind::Video, 90_000, VIDEO_PT, Codec::Vp8),
    };
    Op::UpsertTrack(TrackSpec {
        dd_ext: None,
        id: TrackId(id),
        publisher,
        kind: media,
        clock_rate,
        layers,
        payload_types: vec![PayloadSpec { pt: Pt(pt), codec, rtx_pt: None }],
        rid_ext: None,
        repaired_rid_ext: None,
        mid: None,
        audio_level_ext: None,
        speaker_group: None,
    })
}

/// `subscriber` receiving `track` at `layer` as `out_ssrc`.
fn subscription_op(subscriber: LegId, track: u32, out_ssrc: u32, layer: u8) -> Op {
    Op::UpsertSubscription(SubscriptionSpec {
        max_temporal: None,
        max_spatial: None,
        subscriber,
        track: TrackId(track),
        out_ssrc: Ssrc(out_ssrc),
        out_rtx_ssrc: None,
        pt_map: vec![(Pt(AUDIO_PT), Pt(AUDIO_PT)), (Pt(VIDEO_PT), Pt(VIDEO_PT))],
        ext_map: vec![],
        target_layer: layer,
        paused: false,
        priority: 0,
        relay: Vec::new(),
    })
}

/// Packets per frame of `bytes` at `packet_bytes` each (at least one).
pub fn packets_for(bytes: u32, packet_bytes: u32) -> u32 {
    bytes.div_ceil(packet_bytes).max(1)
}

impl Plan {
    /// The first `n` meetings of the scenario's mix.
    pub fn build(s: &Scenario, n: usize) -> anyhow::Result<Self> {
        let profile = s.srtp_profile()?;
        let mut plan = Plan { adaptive: s.publishers == PublisherMode::Adaptive, ..Plan::default() };
        let mut next_track = 1u32;
        let mut next_out_ssrc = 0x4000_0000u32;
        for (m, size) in s.meeting_sizes(n).into_iter().enumerate() {
            let first = plan.participants.len();
            let screen_share = s.has_screen_share(m);
            let mut ops = Vec::new();
            let first_pub = first_publishers(s, size) as usize;
            for i in 0..size as usize {
                let id = (first + i + 1) as u32;
                let (up, down) = keys(profile, id);
                ops.push(leg_spec(id, &up, &down, None));
                let publishes = plan.adaptive && (i < first_pub || (screen_share && i + 1 == size as usize));
                let send = publishes.then(|| {
                    let sid = SEND_LEG_BASE + id;
                    let (up, down) = keys(profile, sid);
                    ops.push(leg_spec(sid, &up, &down, Some(TWCC_EXT)));
                    SendLeg { leg: LegId(sid), up, down, port: 0 }
                });
                plan.participants.push(Member { leg: LegId(id), meeting: m, up, down, port: 0, send, ip: None });
            }
            // Tracks: audio of the speakers, camera of the publishers, the sharer's screen.
            // (track id, publisher, kind, [stream index per layer])
            let mut tracks: Vec<(u32, usize, StreamKind, Vec<usize>)> = Vec::new();
            let add_stream = |plan: &mut Plan, publisher: usize, kind: StreamKind| {
                plan.streams.push(stream_for(s, plan.streams.len(), publisher, m, kind));
                plan.streams.len() - 1
            };
            for i in 0..size.min(s.audio.speakers) as usize {
                let st = add_stream(&mut plan, first + i, StreamKind::Audio);
                tracks.push((next_track, first + i, StreamKind::Audio, vec![st]));
                next_track += 1;
            }
            for i in 0..size.min(s.video.max_publishers) as usize {
                let st: Vec<usize> = (0..3).map(|l| add_stream(&mut plan, first + i, StreamKind::Video(l))).collect();
                tracks.push((next_track, first + i, StreamKind::Video(0), st));
                next_track += 1;
            }
            if screen_share {
                let sharer = first + size as usize - 1;
                let st = add_stream(&mut plan, sharer, StreamKind::Screen);
                tracks.push((next_track, sharer, StreamKind::Screen, vec![st]));
                next_track += 1;
            }
            for (id, publisher, kind, streams) in &tracks {
                let ssrcs: Vec<u32> = streams.iter().map(|&st| plan.streams[st].ssrc).collect();
                ops.push(track_op(*id, plan.participants[*publisher].publishing().0, *kind, &ssrcs));
            }
            // Subscriptions: everyone hears every speaker and sees the screen; each subscriber
            // views the camera publishers after itself in rotation (so views spread over all
            // publishers): the first views_high at the top layer, then views_mid, then views_low.
            for sub in first..first + size as usize {
                let cameras: Vec<&(u32, usize, StreamKind, Vec<usize>)> = tracks.iter().filter(|t| matches!(t.2, StreamKind::Video(_))).collect();
                let n = cameras.len();
                let start = cameras.iter().position(|t| t.1 > sub).unwrap_or(0);
                let mut rank = 0u32;
                let mut subscribe = |plan: &mut Plan, ops: &mut Vec<Op>, track: u32, layer: u8, stream: usize| {
                    let out_ssrc = next_out_ssrc;
                    next_out_ssrc += 2;
                    plan.streams[stream].copies += 1;
                    plan.out_streams.push(OutStream { subscriber: sub, out_ssrc, stream });
                    ops.push(subscription_op(plan.participants[sub].leg, track, out_ssrc, layer));
                };
                for k in 0..n {
                    let t = cameras[(start + k) % n];
                    if t.1 == sub {
                        continue;
                    }
                    let layer = if rank < s.video.views_high {
                        2
                    } else if rank < s.video.views_high + s.video.views_mid {
                        1
                    } else if rank < s.video.views_high + s.video.views_mid + s.video.views_low {
                        0
                    } else {
                        break;
                    };
                    rank += 1;
                    subscribe(&mut plan, &mut ops, t.0, layer, t.3[usize::from(layer)]);
                }
                for t in tracks.iter().filter(|t| !matches!(t.2, StreamKind::Video(_)) && t.1 != sub) {
                    subscribe(&mut plan, &mut ops, t.0, 0, t.3[0]);
                }
            }
            plan.meetings.push(Meeting { size, first, screen_share, ops });
        }
        Ok(plan)
    }

    /// A webinar of `viewers` viewers (the scenario's `[webinar]`): meeting 0 is the presenter
    /// (its legs and tracks), meeting k is viewer k (its leg, with its own address as the remote
    /// when `distinct_ips`, and its three subscriptions). With `webinar.promote`, the middle
    /// viewer's audio track and the subscriptions to it are planned, to be applied at promotion.
    pub fn build_webinar(s: &Scenario, viewers: usize, distinct_ips: bool) -> anyhow::Result<Self> {
        let w = s.webinar.as_ref().ok_or_else(|| anyhow::anyhow!("the scenario has no [webinar]"))?;
        let profile = s.srtp_profile()?;
        let mut plan = Plan { adaptive: s.publishers == PublisherMode::Adaptive, ..Plan::default() };
        let [audio_track, camera_track, screen_track, promo_track] = WEBINAR_TRACKS;
        // The presenter: its leg (and send leg), audio, three camera layers, screen share.
        let mut ops = Vec::new();
        let (up, down) = keys(profile, 1);
        ops.push(leg_spec(1, &up, &down, None));
        let send = plan.adaptive.then(|| {
            let sid = SEND_LEG_BASE + 1;
            let (up, down) = keys(profile, sid);
            ops.push(leg_spec(sid, &up, &down, Some(TWCC_EXT)));
            SendLeg { leg: LegId(sid), up, down, port: 0 }
        });
        plan.participants.push(Member { leg: LegId(1), meeting: 0, up, down, port: 0, send, ip: None });
        let add = |plan: &mut Plan, publisher: usize, meeting: usize, kind: StreamKind| {
            plan.streams.push(stream_for(s, plan.streams.len(), publisher, meeting, kind));
            plan.streams.len() - 1
        };
        let audio = add(&mut plan, 0, 0, StreamKind::Audio);
        let camera = [0u8, 1, 2].map(|l| add(&mut plan, 0, 0, StreamKind::Video(l)));
        let screen = add(&mut plan, 0, 0, StreamKind::Screen);
        let publisher = plan.participants[0].publishing().0;
        ops.push(track_op(audio_track, publisher, StreamKind::Audio, &[plan.streams[audio].ssrc]));
        ops.push(track_op(camera_track, publisher, StreamKind::Video(0), &camera.map(|c| plan.streams[c].ssrc)));
        ops.push(track_op(screen_track, publisher, StreamKind::Screen, &[plan.streams[screen].ssrc]));
        plan.meetings.push(Meeting { size: 1, first: 0, screen_share: true, ops });
        // The viewers: receive only, each on its own leg.
        let layers = w.camera_layers(viewers);
        let mut next_out_ssrc = 0x4000_0000u32;
        let mut subscribe = |plan: &mut Plan, sub: usize, track: u32, layer: u8, stream: usize| {
            let out_ssrc = next_out_ssrc;
            next_out_ssrc += 2;
            plan.streams[stream].copies += 1;
            plan.out_streams.push(OutStream { subscriber: sub, out_ssrc, stream });
            subscription_op(plan.participants[sub].leg, track, out_ssrc, layer)
        };
        for (k, &layer) in (1..=viewers).zip(&layers) {
            let id = (k + 1) as u32;
            let (up, down) = keys(profile, id);
            let mut ops = vec![leg_spec(id, &up, &down, None)];
            let ip = distinct_ips.then(|| viewer_ip(k));
            plan.participants.push(Member { leg: LegId(id), meeting: k, up, down, port: 0, send: None, ip });
            ops.push(subscribe(&mut plan, k, audio_track, 0, audio));
            ops.push(subscribe(&mut plan, k, camera_track, layer, camera[usize::from(layer)]));
            ops.push(subscribe(&mut plan, k, screen_track, 0, screen));
            plan.meetings.push(Meeting { size: 1, first: k, screen_share: false, ops });
        }
        // The promotion: the middle viewer's audio, heard by the presenter and every other viewer.
        let promotion = (w.promote && viewers >= 2).then(|| {
            let speaker = 1 + viewers / 2;
            let stream = plan.streams.len();
            let mut st = stream_for(s, stream, speaker, speaker, StreamKind::Audio);
            st.scheduled = false;
            plan.streams.push(st);
            let track_op = track_op(promo_track, plan.participants[speaker].leg, StreamKind::Audio, &[plan.streams[stream].ssrc]);
            let subscriptions = (0..=viewers).filter(|&p| p != speaker).map(|p| (p, subscribe(&mut plan, p, promo_track, 0, stream))).collect();
            Promotion { participant: speaker, stream, track: TrackId(promo_track), track_op, subscriptions }
        });
        plan.webinar = Some(WebinarPlan { audio, camera, screen, camera_layers: layers, promotion });
        Ok(plan)
    }

    /// Participants in the first `n` meetings.
    pub fn participants_in(&self, n: usize) -> usize {
        self.meetings.get(n).map_or(self.participants.len(), |m| m.first)
    }

    /// Offered load of the first `n` meetings (webinar: the presenter and `n - 1` viewers) with
    /// every layer flowing: (packets/s into the SFU, packets/s it should send out, bits/s out),
    /// from the stream schedules.
    pub fn nominal_rates(&self, n: usize) -> (f64, f64, f64) {
        let (mut pin, mut pout, mut bout) = (0.0, 0.0, 0.0);
        for (i, st) in self.streams.iter().enumerate().filter(|(_, st)| st.meeting < n && st.scheduled) {
            let copies = match &self.webinar {
                Some(w) => w.copies_among(i, n.saturating_sub(1)),
                None => st.copies,
            };
            let fps = 1e9 / st.interval_ns as f64;
            let pkts = f64::from(packets_for(st.frame_bytes, st.packet_bytes)) * fps;
            pin += pkts;
            pout += pkts * f64::from(copies);
            bout += f64::from(st.frame_bytes) * 8.0 * fps * f64::from(copies);
        }
        (pin, pout, bout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meeting_has_the_scenario_s_streams_and_views() {
        let s = Scenario::default();
        // The mix's first meetings; pick one of 20 (12 cameras, 3 speakers).
        let plan = Plan::build(&s, 40).expect("plan");
        let (m, meeting) = plan.meetings.iter().enumerate().find(|(_, m)| m.size == 20).expect("a meeting of 20");
        let streams: Vec<&Stream> = plan.streams.iter().filter(|st| st.meeting == m).collect();
        let audio = streams.iter().filter(|st| st.kind == StreamKind::Audio).count();
        let video = streams.iter().filter(|st| matches!(st.kind, StreamKind::Video(_))).count();
        assert_eq!(audio, 3);
        assert_eq!(video, 12 * 3);
        // Everyone but the speaker hears each speaker; each subscriber views 6 cameras.
        for st in streams.iter().filter(|st| st.kind == StreamKind::Audio) {
            assert_eq!(st.copies, 19);
        }
        let views: u32 = streams.iter().filter(|st| matches!(st.kind, StreamKind::Video(_))).map(|st| st.copies).sum();
        assert_eq!(views, 20 * 6);
        let high: u32 = streams.iter().filter(|st| st.kind == StreamKind::Video(2)).map(|st| st.copies).sum();
        assert_eq!(high, 20);
        // A 1.5 Mbit/s layer at 30 fps in 1200-byte packets: 6250 bytes a frame, 6 packets.
        let top = streams.iter().find(|st| st.kind == StreamKind::Video(2)).expect("top layer");
        assert_eq!(top.frame_bytes, 6250);
        assert_eq!(packets_for(top.frame_bytes, top.packet_bytes), 6);
        // Adaptive publishers (the default): the 12 cameras (the speakers among them) and the
        // sharer, if any, publish on send legs with transport-cc; the rest have none.
        let sends = plan.participants[meeting.first..meeting.first + 20].iter().filter(|p| p.send.is_some()).count();
        assert_eq!(sends as u32, publishers_in(&s, 20, meeting.screen_share));
        assert_eq!(sends, 12 + usize::from(meeting.screen_share));
        let feedback: Vec<Option<u8>> = meeting.ops.iter().filter_map(|o| if let Op::UpsertLeg(l) = o { Some(l.feedback.twcc_ext) } else { None }).collect();
        assert_eq!(feedback.iter().filter(|f| **f == Some(TWCC_EXT)).count(), sends);
        assert_eq!(feedback.len(), 20 + sends);
        let fixed = Plan::build(&Scenario { publishers: PublisherMode::Fixed, ..s.clone() }, 40).expect("plan");
        assert!(fixed.participants.iter().all(|p| p.send.is_none()) && !fixed.adaptive);
        // Every leg has its own keys.
        let legs = &plan.participants[meeting.first..meeting.first + 20];
        for (i, a) in legs.iter().enumerate() {
            assert_ne!(a.up.key, a.down.key);
            for b in &legs[i + 1..] {
                assert_ne!(a.up.key, b.up.key);
            }
        }
    }

    #[test]
    fn a_webinar_has_one_presenter_and_receive_only_viewers_on_the_mix() {
        let mut s = Scenario::parse(include_str!("../../scenarios/webinar.toml")).expect("webinar.toml");
        s.webinar.as_mut().expect("[webinar]").promote = true;
        s.publishers = PublisherMode::Adaptive;
        let plan = Plan::build_webinar(&s, 10, true).expect("plan");
        let w = plan.webinar.as_ref().expect("a webinar plan");
        // The presenter, then one meeting per viewer.
        assert_eq!((plan.meetings.len(), plan.participants.len()), (11, 11));
        let count = |ops: &[Op], f: fn(&Op) -> bool| ops.iter().filter(|o| f(o)).count();
        let (legs, tracks, subs) =
            (|o: &Op| matches!(o, Op::UpsertLeg(_)), |o: &Op| matches!(o, Op::UpsertTrack(_)), |o: &Op| matches!(o, Op::UpsertSubscription(_)));
        let presenter = &plan.meetings[0].ops;
        // Adaptive: its own leg and a send leg with transport-cc; audio, camera (3 layers), screen.
        assert_eq!((count(presenter, legs), count(presenter, tracks), count(presenter, subs)), (2, 3, 0));
        assert!(plan.participants[0].send.is_some() && plan.participants[0].ip.is_none());
        let fixed = Plan::build_webinar(&Scenario { publishers: PublisherMode::Fixed, ..s.clone() }, 10, true).expect("plan");
        assert_eq!(count(&fixed.meetings[0].ops, legs), 1);
        for m in &plan.meetings[1..] {
            assert_eq!((m.size, count(&m.ops, legs), count(&m.ops, tracks), count(&m.ops, subs)), (1, 1, 0, 3));
        }
        assert!(plan.participants[1..].iter().all(|p| p.send.is_none()));
        // Each viewer: audio, its camera layer, screen; 2/3/5 of 10 on low/mid/high.
        assert_eq!(plan.streams[w.audio].copies, 10);
        assert_eq!(plan.streams[w.screen].copies, 10);
        assert_eq!(w.camera.map(|c| plan.streams[c].copies), [2, 3, 5]);
        assert_eq!(plan.streams[w.camera[2]].kind, StreamKind::Video(2));
        assert_eq!(plan.streams[w.screen].kind, StreamKind::Screen);
        // Prefixes: the first 5 viewers are high, mid, low, high, mid (smooth round robin).
        assert_eq!(w.camera.map(|c| w.copies_among(c, 5)), [1, 2, 2]);
        assert_eq!(w.copies_among(w.audio, 5), 5);
        // Distinct addresses, the presenter's being the lane socket's.
        let ips: std::collections::HashSet<Ipv4Addr> = plan.participants[1..].iter().filter_map(|p| p.ip).collect();
        assert_eq!(ips.len(), 10);
        assert_eq!(plan.participants[1].ip, Some(Ipv4Addr::new(127, 1, 0, 1)));
        assert!(Plan::build_webinar(&s, 10, false).expect("plan").participants.iter().all(|p| p.ip.is_none()));
        // The promotion: the middle viewer's audio (not scheduled), heard by the presenter and
        // the 9 other viewers, programmed only when it happens.
        let p = w.promotion.as_ref().expect("promotion");
        assert_eq!(p.participant, 6);
        assert!(!plan.streams[p.stream].scheduled && plan.streams[p.stream].publisher == 6);
        assert_eq!(p.subscriptions.len(), 10);
        assert_eq!(p.subscriptions[0].0, 0);
        assert!(p.subscriptions.iter().all(|(sub, _)| *sub != 6));
        assert!(matches!(&p.track_op, Op::UpsertTrack(t) if t.publisher == plan.participants[6].leg));
        assert_eq!(plan.out_streams.len(), 10 * 3 + 10);
        // Out SSRCs are unique; the nominal load counts the presenter's streams only.
        let ssrcs: std::collections::HashSet<u32> = plan.out_streams.iter().map(|o| o.out_ssrc).collect();
        assert_eq!(ssrcs.len(), plan.out_streams.len());
        let (pin, pout, _) = plan.nominal_rates(11);
        // 50 audio + (30 + 90 + 180) camera + 10 x 21 screen packets/s in.
        assert!((pin - (50.0 + 300.0 + 210.0)).abs() < 1.0, "{pin}");
        assert!((pout - (10.0 * 50.0 + 2.0 * 30.0 + 3.0 * 90.0 + 5.0 * 180.0 + 10.0 * 210.0)).abs() < 1.0, "{pout}");
        // Every leg has its own keys.
        for (i, a) in plan.participants.iter().enumerate() {
            for b in &plan.participants[i + 1..] {
                assert_ne!(a.up.key, b.up.key);
            }
        }
    }
}
