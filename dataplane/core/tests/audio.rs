//! Audio levels and active speaker through the whole core, in virtual time: publishers send
//! SRTP audio carrying RFC 6464 levels, the worker loop calls `handle_timeout` when
//! `poll_timeout` says, and the test reads the `ActiveSpeakers` events.

use std::net::{Ipv4Addr, SocketAddr};

use sluice_core::forward::{Core, CoreConfig, Event, OutBatch, Shard};
use sluice_core::ids::{Generation, SpeakerGroup, TrackId};
use sluice_core::ids::{Pt, SeqNo, Ssrc};
use sluice_core::srtp::{Profile, RtpRecvState, RtpSendState, SrtpKeys};
use sluice_core::table::{AudioSlotsSpec, Delta, Op, TrackSpec};
use sluice_core::time::Instant;
use sluice_core::wire::rtp;
use sluice_sim::fixture::*;

const PROFILE: Profile = Profile::AeadAes128Gcm;
const EXT: u8 = 3;
const GROUP: SpeakerGroup = SpeakerGroup(0xfeed);

/// Talk pattern of one participant over one 20-ms frame: `Some((voice, level))` sends a packet.
type Pattern = fn(u64) -> Option<(bool, u8)>;

struct Room {
    core: Core,
    out: OutBatch,
    keys: Vec<SrtpKeys>,
    send: Vec<RtpSendState>,
    events: Vec<(u64, Event)>,
    now_ms: u64,
    /// Each participant's receive keys and per-SSRC state, and what it received (decrypted):
    /// (time, out-SSRC, sequence number, timestamp, CSRCs).
    down: Vec<(SrtpKeys, Vec<(Ssrc, RtpRecvState)>)>,
    received: Vec<Vec<Received>>,
    /// The XDP silence gates the core asked for: (port, SSRC) currently on.
    gates: Vec<(u16, Ssrc)>,
    /// Act as the XDP stage: drop a gated stream's quiet packets, all but every 32nd.
    xdp: bool,
    xdp_run: Vec<u32>,
    xdp_dropped: u64,
}

#[derive(Clone, Debug, PartialEq)]
struct Received {
    at: u64,
    ssrc: Ssrc,
    seq: SeqNo,
    ts: u32,
    csrcs: Vec<Ssrc>,
}

/// The out-SSRC of participant `i`'s slot `k` (top-N rooms).
fn slot_ssrc(i: u32, k: u32) -> Ssrc {
    Ssrc(0x7000 * i + k)
}

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, i as u8), 5000))
}

impl Room {
    /// `n` participants, each publishing audio track `i` (SSRC 0x100 + i) in the group, the
    /// first `with_level` of them naming the level extension; everyone subscribes to everyone.
    fn new(n: u32) -> Self {
        Self::with_slots(n, None)
    }

    /// `top_n`: every participant gets the group's audio in that many slots instead of
    /// per-track subscriptions.
    fn with_slots(n: u32, top_n: Option<u32>) -> Self {
        Self::on_shard(n, top_n, Shard::default())
    }

    /// As [`Room::with_slots`], on core `shard` of a multi-worker dataplane.
    fn on_shard(n: u32, top_n: Option<u32>, shard: Shard) -> Self {
        Self::configured(n, top_n, CoreConfig { shard, ..CoreConfig::default() })
    }

    /// As [`Room::with_slots`], with the core configured as `config`.
    fn configured(n: u32, top_n: Option<u32>, config: CoreConfig) -> Self {
        let mut core = Core::new(config);
        let mut ops = Vec::new();
        for i in 1..=n {
            let mut leg = leg_spec(i, 20_000 + i as u16, material(PROFILE, i, 0), material(PROFILE, i, 1));
            leg.audio_slots = top_n.map(|k| AudioSlotsSpec {
                group: GROUP,
                out_ssrcs: (0..k).map(|k| slot_ssrc(i, k)).collect(),
                pt_map: vec![(Pt(PT_OPUS), Pt(SUB_PT_OPUS))],
                ext_map: vec![(EXT, 1)],
            });
            ops.push(Op::UpsertLeg(leg));
            ops.push(Op::UpsertTrack(TrackSpec { audio_level_ext: Some(EXT), speaker_group: Some(GROUP), ..audio_track(i, i, 0x100 + i) }));
        }
        for i in (1..=n).filter(|_| top_n.is_none()) {
            for j in (1..=n).filter(|&j| j != i) {
                ops.push(Op::UpsertSubscription(subscription(i, j, 0x1000 * i + j, None, 0)));
            }
        }
        core.apply(Delta { generation: Generation(1), replace_all: false, ops }).unwrap();
        let keys = (1..=n).map(|i| material(PROFILE, i, 0)).map(|m| SrtpKeys::new(PROFILE, &m.key, &m.salt).unwrap()).collect();
        let down = (1..=n).map(|i| material(PROFILE, i, 1)).map(|m| (SrtpKeys::new(PROFILE, &m.key, &m.salt).unwrap(), Vec::new())).collect();
        Self {
            core,
            out: OutBatch::new(64),
            keys,
            send: (0..n).map(|_| RtpSendState::new()).collect(),
            events: Vec::new(),
            now_ms: 0,
            down,
            received: (0..n).map(|_| Vec::new()).collect(),
            gates: Vec::new(),
            xdp: false,
            xdp_run: vec![0; n as usize],
            xdp_dropped: 0,
        }
    }

    /// Decrypts the batch's outputs into what each participant received.
    fn collect(&mut self) {
        let outs: Vec<(u32, Vec<u8>)> = self.out.iter().map(|(m, b)| (m.leg.0, b.to_vec())).collect();
        for (leg, mut b) in outs {
            if b[1] >= 192 && b[1] <= 223 {
                continue; // RTCP
            }
            let (keys, states) = &mut self.down[leg as usize - 1];
            let ssrc = Ssrc(u32::from_be_bytes(b[8..12].try_into().unwrap()));
            let st = match states.iter().position(|(s, _)| *s == ssrc) {
                Some(p) => &mut states[p].1,
                None => {
                    states.push((ssrc, RtpRecvState::new(1024)));
                    &mut states.last_mut().unwrap().1
                }
            };
            let len = b.len();
            let n = keys.unprotect_rtp(st, &mut b, len).expect("slot copies authenticate");
            let p = rtp::Packet::new_checked(&b[..n]).unwrap();
            self.received[leg as usize - 1].push(Received {
                at: self.now_ms,
                ssrc,
                seq: SeqNo(p.sequence_number()),
                ts: p.timestamp(),
                csrcs: p.csrcs().collect(),
            });
        }
    }

    fn send(&mut self, i: usize, plain: Vec<u8>) {
        let mut b = plain.clone();
        b.resize(plain.len() + 32, 0);
        let n = self.keys[i].protect_rtp(&mut self.send[i], &mut b, plain.len()).unwrap();
        b.truncate(n);
        self.out.clear();
        let now = Instant::from_nanos(self.now_ms * 1_000_000);
        self.core.handle_rx(now, 20_001 + i as u16, addr(i as u32 + 1), &mut b, &mut self.out);
        self.collect();
    }

    /// Runs `ms` milliseconds: every 20 ms each participant sends what its pattern says (the
    /// frame number counts from the start of the room), timers run as the worker runs them.
    fn run(&mut self, ms: u64, patterns: &[Pattern]) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            let frame = self.now_ms / 20;
            for (i, p) in patterns.iter().enumerate() {
                if let Some((voice, level)) = p(frame) {
                    let pkt = rtp_packet_with_level(0x101 + i as u32, frame as u16, frame as u32 * 960, PT_OPUS, EXT, (voice, level), &[0x55; 60]);
                    let gated = self.gates.contains(&(20_001 + i as u16, Ssrc(0x101 + i as u32)));
                    if self.xdp && gated && !(voice && level <= 55) {
                        self.xdp_run[i] += 1;
                        if self.xdp_run[i] < 32 {
                            self.xdp_dropped += 1;
                            continue;
                        }
                    }
                    self.xdp_run[i] = 0;
                    self.send(i, pkt);
                }
            }
            self.now_ms += 20;
            let now = Instant::from_nanos(self.now_ms * 1_000_000);
            while self.core.poll_timeout() <= now {
                self.out.clear();
                self.core.handle_timeout(now, &mut self.out);
            }
            while let Some(e) = self.core.poll_event() {
                match e {
                    Event::ActiveSpeakers { .. } => self.events.push((self.now_ms, e)),
                    Event::SilenceGate { port, ssrc, on, ext, .. } => {
                        assert_eq!(ext, EXT);
                        self.gates.retain(|g| *g != (port, ssrc));
                        if on {
                            self.gates.push((port, ssrc));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn level(&self, track: u32) -> u8 {
        self.core.tables().track(TrackId(track)).unwrap().level.level()
    }

    fn dominant(&self) -> Option<TrackId> {
        self.core.speakers().group(GROUP).and_then(|s| s.dominant())
    }

    /// The dominant speaker of each event, with when it came.
    fn floor_changes(&self) -> Vec<(u64, Option<TrackId>)> {
        let (mut v, mut last) = (Vec::new(), None);
        for (t, e) in &self.events {
            let Event::ActiveSpeakers { speakers, .. } = e else { continue };
            if speakers.dominant() != last {
                last = speakers.dominant();
                v.push((*t, last));
            }
        }
        v
    }
}

fn talk(_: u64) -> Option<(bool, u8)> {
    Some((true, 25))
}
fn quiet(_: u64) -> Option<(bool, u8)> {
    Some((false, 100))
}

#[test]
fn levels_are_read_from_every_packet_and_smoothed() {
    let mut r = Room::new(3);
    r.run(1000, &[talk, quiet, |_| None]);
    assert_eq!(r.level(1), 25);
    assert_eq!(r.level(2), 100);
    assert_eq!(r.level(3), 127, "nothing heard");
    // One loud packet in a quiet stream moves the level by an eighth of the way.
    r.run(20, &[talk, |_| Some((true, 4)), |_| None]);
    assert_eq!(r.level(2), 88);
    // A packet without the extension, or with the element under another id, changes nothing.
    let before = r.level(2);
    let mut p = rtp_packet(0x102, 999, 0, PT_OPUS, false, &[0x55; 60]);
    r.send(1, p.clone());
    p = rtp_packet_with_level(0x102, 1000, 0, PT_OPUS, EXT + 1, (true, 0), &[0x55; 60]);
    r.send(1, p);
    assert_eq!(r.level(2), before);
    assert_eq!(r.core.stats().drops_for(sluice_core::verdict::DropReason::Malformed), 0, "still forwarded");
}

/// Speaker 1 talks, speaker 2 coughs (200 ms, then 300 ms) while 1 pauses: the floor stays;
/// then 1 stops and 2 talks: the floor moves within 500 ms, once.
#[test]
fn a_cough_does_not_take_the_floor_sustained_speech_does() {
    let mut r = Room::new(3);
    r.run(2000, &[talk, quiet, quiet]);
    assert_eq!(r.dominant(), Some(TrackId(1)));
    let first = r.floor_changes();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].0 <= 600, "speaker 1 took the floor after {} ms", first[0].0);
    // Speaker 1 pauses for 1.2 s; speaker 2 coughs at 2.2 s for 200 ms and at 2.8 s for 300 ms.
    fn cough(f: u64) -> Option<(bool, u8)> {
        let t = f * 20;
        Some(if (2200..2400).contains(&t) || (2800..3100).contains(&t) { (true, 15) } else { (false, 100) })
    }
    r.run(1200, &[quiet, cough, quiet]);
    assert_eq!(r.dominant(), Some(TrackId(1)), "{:?}", r.floor_changes());
    // Speaker 1 is silent for good, speaker 2 speaks from 3.2 s.
    r.run(2000, &[quiet, talk, quiet]);
    let changes = r.floor_changes();
    assert_eq!(changes.iter().map(|c| c.1).collect::<Vec<_>>(), vec![Some(TrackId(1)), Some(TrackId(2))], "{changes:?}");
    assert!(changes[1].0 - 3200 <= 500, "speaker 2 took the floor {} ms after starting", changes[1].0 - 3200);
    // The ranking lists the dominant speaker first, with its level.
    let Some((_, Event::ActiveSpeakers { group, speakers })) = r.events.last() else { unreachable!() };
    assert_eq!(speakers.dominant(), Some(TrackId(2)));
    assert_eq!(*group, GROUP);
    assert_eq!(speakers.as_slice()[0].track, TrackId(2));
    assert!(speakers.as_slice()[0].level < 40);
}

/// Removing the group's tracks clears the floor (an event with nobody) and forgets the group.
#[test]
fn removing_the_tracks_clears_the_floor_and_forgets_the_group() {
    let mut r = Room::new(2);
    r.run(1000, &[talk, quiet]);
    assert_eq!(r.dominant(), Some(TrackId(1)));
    r.core.apply(Delta { generation: Generation(2), replace_all: false, ops: vec![Op::RemoveTrack(TrackId(1)), Op::RemoveTrack(TrackId(2))] }).unwrap();
    r.run(300, &[]);
    let Some((_, Event::ActiveSpeakers { speakers, .. })) = r.events.last() else { unreachable!() };
    assert!(speakers.as_slice().is_empty(), "{speakers:?}");
    assert!(r.core.speakers().group(GROUP).is_none());
}

/// Top-N in two slots among four participants: nobody ever receives more than two streams or
/// its own voice; every copy names its speaker in the CSRC list; when a speaker stops and a new
/// one starts, the new one continues a slot's sequence and timestamps without a gap.
#[test]
fn top_n_slots_carry_the_loudest_others_with_continuous_numbers() {
    let mut r = Room::with_slots(4, Some(2));
    // 1 and 2 talk, 3 and 4 are quiet, for 2 s.
    r.run(2000, &[talk, talk, quiet, quiet]);
    // 2 stops; 3 starts.
    r.run(2000, &[talk, quiet, talk, quiet]);
    for (i, got) in r.received.iter().enumerate() {
        let me = Ssrc(0x101 + i as u32);
        let slots: Vec<Ssrc> = (0..2).map(|k| slot_ssrc(i as u32 + 1, k)).collect();
        assert!(!got.is_empty(), "participant {} heard nobody", i + 1);
        assert!(got.iter().all(|p| slots.contains(&p.ssrc)), "only slot SSRCs reach participant {}", i + 1);
        assert!(got.iter().all(|p| p.csrcs.len() == 1 && p.csrcs[0] != me), "one CSRC, never its own: participant {}", i + 1);
        // Per 20-ms frame, at most two speakers.
        let mut frames: std::collections::BTreeMap<u64, Vec<Ssrc>> = Default::default();
        for p in got {
            frames.entry(p.at).or_default().push(p.csrcs[0]);
        }
        assert!(frames.values().all(|v| v.len() <= 2), "participant {}: {frames:?}", i + 1);
        // Each slot: sequence numbers without gap or repeat, timestamps never backwards.
        for s in &slots {
            let stream: Vec<&Received> = got.iter().filter(|p| p.ssrc == *s).collect();
            for w in stream.windows(2) {
                assert_eq!(w[1].seq.0, w[0].seq.0.wrapping_add(1), "participant {} slot {s}: {:?} then {:?}", i + 1, w[0], w[1]);
                assert!(w[1].ts.wrapping_sub(w[0].ts) < 0x8000_0000 && w[1].ts != w[0].ts, "{:?} then {:?}", w[0], w[1]);
            }
        }
    }
    // Participant 4 heard 1 and 2, then 1 and 3: a slot went from 2 to 3, continuously.
    let got = &r.received[3];
    let who = |p: &Received| p.csrcs[0].0 - 0x100;
    let late: std::collections::BTreeSet<u32> = got.iter().filter(|p| p.at > 3500).map(who).collect();
    assert_eq!(late, [1, 3].into(), "the top two at the end");
    let early: std::collections::BTreeSet<u32> = got.iter().filter(|p| p.at < 2000).map(who).collect();
    assert_eq!(early, [1, 2].into());
    let slot = got.iter().find(|p| who(p) == 3).unwrap().ssrc;
    let on_slot: Vec<u32> = got.iter().filter(|p| p.ssrc == slot).map(who).collect();
    let switch = on_slot.iter().position(|&w| w == 3).unwrap();
    assert!(switch > 0 && on_slot[switch - 1] == 2, "3 took over 2's slot: {on_slot:?}");
    assert!(on_slot[switch..].iter().all(|&w| w == 3));
    assert!(r.core.stats().audio_slot_switches >= 4 * 2, "{}", r.core.stats().audio_slot_switches);
    // Participant 1 (speaking) gets 2 then 3 in one slot, and never itself.
    assert!(r.received[0].iter().all(|p| who(p) != 1));
}

/// Every worker holds every leg's slot state, so only the worker that owns a subscriber leg may
/// feed its slots: two workers encrypting on one out-SSRC would reuse SRTP packet indexes.
#[test]
fn only_the_worker_owning_the_subscriber_feeds_its_slots() {
    // Worker 0 of 2 owns the even ports: legs 2 (20002) and 4 (20004).
    let mut r = Room::on_shard(4, Some(2), Shard { index: 0, count: 2 });
    r.run(1000, &[talk, talk, talk, talk]);
    assert!(r.received[0].is_empty() && r.received[2].is_empty(), "legs of worker 1 get nothing from worker 0");
    assert!(!r.received[1].is_empty() && !r.received[3].is_empty());
    // Worker 0 ranks the tracks it fans out (of legs 2 and 4): 2 hears 4, 4 hears 2.
    assert!(r.received[1].iter().all(|p| p.csrcs == [Ssrc(0x104)]), "{:?}", &r.received[1][..2]);
}

/// A speaker's sender report reaches the subscribers its audio feeds through a slot as the
/// slot's own sender report: the slot's SSRC, the RTP timestamp mapped through the slot's
/// timeline (so the receiver syncs the current speaker), the slot's packet count.
#[test]
fn a_speakers_sender_report_goes_out_on_the_slot_it_feeds() {
    use sluice_core::srtp::{RtcpRecvState, RtcpSendState};
    use sluice_core::wire::rtcp;
    let mut r = Room::with_slots(2, Some(1));
    r.run(1000, &[talk, quiet]);
    let got: Vec<&Received> = r.received[1].iter().filter(|p| p.csrcs == [Ssrc(0x101)]).collect();
    let last = got.last().expect("participant 2 hears 1 through its slot");
    let frame = r.now_ms / 20 - 1;
    let offset = last.ts.wrapping_sub(frame as u32 * 960);
    // Participant 1's sender report for its audio, at an RTP time 40 ms on.
    let sr_ts = (frame as u32 + 2) * 960;
    let mut b = [0u8; 128];
    let info = rtcp::SenderInfo { ntp_timestamp: 0x1234_5678_9abc_def0, rtp_timestamp: sr_ts, packet_count: 50, octet_count: 3000 };
    let n = rtcp::write_sr(&mut b, Ssrc(0x101), &info, &[]).unwrap();
    let n = r.keys[0].protect_rtcp(&mut RtcpSendState::new(), &mut b, n).unwrap();
    r.out.clear();
    r.core.handle_rx(Instant::from_nanos(r.now_ms * 1_000_000), 20_001, addr(1), &mut b[..n], &mut r.out);
    let to_2: Vec<Vec<u8>> = r.out.iter().filter(|(m, _)| m.leg.0 == 2).map(|(_, b)| b.to_vec()).collect();
    assert_eq!(to_2.len(), 1, "one report, on the slot");
    let mut sr = to_2[0].clone();
    let len = sr.len();
    let plain = r.down[1].0.unprotect_rtcp(&mut RtcpRecvState::new(128), &mut sr, len).expect("protected with the slot leg's key");
    let report = rtcp::SenderReport::new_checked(&sr[..plain]).unwrap();
    let out = report.sender_info();
    assert_eq!(report.sender_ssrc(), slot_ssrc(2, 0));
    assert_eq!(out.rtp_timestamp, sr_ts.wrapping_add(offset), "mapped through the slot's timeline");
    assert_eq!(out.ntp_timestamp, info.ntp_timestamp);
    assert_eq!(out.packet_count as usize, r.received[1].iter().filter(|p| p.ssrc == slot_ssrc(2, 0)).count(), "the slot's own count");
}

impl Room {
    /// Participant `i` (0-based) sends `plain` protected with its keys; with `break_tag` the
    /// authentication tag is damaged (a packet that is decrypted fails with AuthFailed).
    fn send_damaged(&mut self, i: usize, plain: Vec<u8>) {
        let mut b = plain.clone();
        b.resize(plain.len() + 32, 0);
        let n = self.keys[i].protect_rtp(&mut self.send[i], &mut b, plain.len()).unwrap();
        b.truncate(n);
        b[n - 1] ^= 0x40;
        self.out.clear();
        let now = Instant::from_nanos(self.now_ms * 1_000_000);
        self.core.handle_rx(now, 20_001 + i as u16, addr(i as u32 + 1), &mut b, &mut self.out);
        self.collect();
    }

    /// The loss participant `i`'s receiver report would give its audio stream now.
    fn reported_loss(&self, i: u32) -> (u8, i32) {
        let leg = self.core.tables().leg(sluice_core::ids::LegId(i)).unwrap();
        let mut stats = leg.ingress[0].stats;
        let b = stats.report(Ssrc(0x100 + i), Instant::from_nanos(self.now_ms * 1_000_000));
        (b.fraction_lost, b.cumulative_lost)
    }
}

fn drops(r: &Room, why: sluice_core::verdict::DropReason) -> u64 {
    r.core.stats().drops_for(why)
}

/// Issue 16 item 4, the worker half: a track only audio slots take (no per-track subscriber)
/// that is not ranked has its quiet packets dropped before decryption, all but every 32nd
/// (which keeps its SRTP state current); the holes count as received, so its receiver reports
/// show no loss; a quiet packet with a broken tag is dropped as silence (it was never
/// decrypted); and the moment it speaks it is decrypted, ranked and heard in the slots.
#[test]
fn silence_nobody_ranks_is_dropped_before_decryption_and_is_not_loss() {
    use sluice_core::verdict::DropReason::{AuthFailed, SilentAudio};
    let mut r = Room::with_slots(3, Some(2));
    // 1 talks; 2 and 3 are quiet for 4 s: 2 x 200 packets.
    r.run(4000, &[talk, quiet, quiet]);
    let silent = drops(&r, SilentAudio);
    assert!((370..=390).contains(&silent), "400 quiet packets, 1 in 32 decrypted: {silent} dropped");
    assert_eq!(r.reported_loss(2), (0, 0), "the dropped packets are not loss");
    assert_eq!(r.reported_loss(3), (0, 0));
    // 1 is heard by 2 and 3; nobody hears 2 or 3.
    let heard = |r: &Room, who: u32| r.received.iter().flatten().filter(|p| p.csrcs.first() == Some(&Ssrc(0x100 + who))).count();
    assert!(heard(&r, 1) > 300, "{}", heard(&r, 1));
    assert_eq!((heard(&r, 2), heard(&r, 3)), (0, 0));
    // 3 was quiet from its first packet and hears 1 from the start: its first packet was
    // decrypted (its address latched) although it was silence.
    let first = r.received[2].iter().find(|p| p.csrcs.first() == Some(&Ssrc(0x101))).map(|p| p.at);
    assert!(first.is_some_and(|t| t <= 300), "3 first heard 1 at {first:?} ms");
    // A quiet packet with a damaged tag: dropped before decryption, so not an AuthFailed.
    let auth_before = drops(&r, AuthFailed);
    let frame = r.now_ms / 20;
    let pkt = rtp_packet_with_level(0x102, frame as u16, frame as u32 * 960, PT_OPUS, EXT, (false, 100), &[0x55; 60]);
    r.send_damaged(1, pkt);
    assert_eq!((drops(&r, SilentAudio), drops(&r, AuthFailed)), (silent + 1, auth_before));
    // 2 speaks: decrypted, ranked, heard in the others' slots.
    r.run(1000, &[talk, talk, quiet]);
    assert!(heard(&r, 2) > 40, "{}", heard(&r, 2));
    assert!(r.core.speakers().group(GROUP).unwrap().ranking().as_slice().iter().any(|s| s.track == TrackId(2)));
    // A track with a per-track subscriber is never dropped: the rooms without slots drop nothing.
    let mut plain = Room::new(3);
    plain.run(2000, &[talk, quiet, quiet]);
    assert_eq!(drops(&plain, SilentAudio), 0);
}

/// The keepalive is what keeps a long silence decryptable: 2 is quiet for 40,000 packets (its
/// sequence numbers wrap; dropping all of them would leave its receive state 40,000 behind,
/// past what a rollover guess can bridge), then speaks and is heard.
#[test]
fn a_speaker_silent_past_the_sequence_wrap_is_heard_when_it_speaks() {
    let mut r = Room::with_slots(2, Some(1));
    r.run(800_000, &[quiet, quiet]);
    assert!(drops(&r, sluice_core::verdict::DropReason::SilentAudio) > 75_000);
    r.run(1000, &[quiet, talk]);
    let heard = r.received[0].iter().filter(|p| p.csrcs.first() == Some(&Ssrc(0x102)) && p.at > 800_000).count();
    assert!(heard > 40, "2's speech after the wrap reached 1's slot {heard} times");
    assert_eq!(r.core.stats().drops_for(sluice_core::verdict::DropReason::AuthFailed), 0);
    assert_eq!(r.reported_loss(2), (0, 0));
}

/// Two cores of one dataplane (legs on even ports belong to core 0, odd to core 1): each
/// participant's packets go to the core owning its leg, and everything the cores hand over
/// (speaker candidates, ranked speakers' audio) is delivered, as the workers' queues do.
struct TwoCores {
    rooms: [Room; 2],
    handed: u64,
}

impl TwoCores {
    fn new(n: u32, top_n: u32) -> Self {
        let rooms = [0, 1].map(|index| Room::on_shard(n, Some(top_n), Shard { index, count: 2 }));
        Self { rooms, handed: 0 }
    }

    fn owner(i: usize) -> usize {
        (20_001 + i) % 2
    }

    fn pump(&mut self, now: Instant) {
        loop {
            let mut any = false;
            for k in 0..2 {
                while let Some(mut h) = self.rooms[k].core.poll_handoff() {
                    any = true;
                    self.handed += 1;
                    let to = usize::from(h.to);
                    self.rooms[to].out.clear();
                    self.rooms[to].core.handle_handoff(now, &mut h, &mut self.rooms[to].out);
                    self.rooms[to].collect();
                    self.rooms[k].core.recycle(h);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn run(&mut self, ms: u64, patterns: &[Pattern]) {
        let end = self.rooms[0].now_ms + ms;
        while self.rooms[0].now_ms < end {
            let now_ms = self.rooms[0].now_ms;
            let now = Instant::from_nanos(now_ms * 1_000_000);
            let frame = now_ms / 20;
            for (i, p) in patterns.iter().enumerate() {
                let Some((voice, level)) = p(frame) else { continue };
                let plain = rtp_packet_with_level(0x101 + i as u32, frame as u16, frame as u32 * 960, PT_OPUS, EXT, (voice, level), &[0x55; 60]);
                let mut b = plain.clone();
                b.resize(plain.len() + 32, 0);
                let n = self.rooms[0].keys[i].protect_rtp(&mut self.rooms[0].send[i], &mut b, plain.len()).unwrap();
                b.truncate(n);
                let r = &mut self.rooms[Self::owner(i)];
                r.out.clear();
                r.core.handle_rx(now, 20_001 + i as u16, addr(i as u32 + 1), &mut b, &mut r.out);
                r.collect();
                self.pump(now);
            }
            let next = Instant::from_nanos((now_ms + 20) * 1_000_000);
            for r in &mut self.rooms {
                r.now_ms = now_ms + 20;
                while r.core.poll_timeout() <= next {
                    r.out.clear();
                    r.core.handle_timeout(next, &mut r.out);
                    r.collect();
                }
            }
            self.pump(next);
        }
    }

    /// Who participant `i` (0-based) heard through its slots: (time, speaker number).
    fn heard_by(&self, i: usize) -> Vec<(u64, u32)> {
        self.rooms[Self::owner(i)].received[i].iter().map(|p| (p.at, p.csrcs[0].0 - 0x100)).collect()
    }
}

/// Issue 16, groups across workers: speakers whose legs live on different workers are ranked
/// together on every worker (each hands the others its candidates every tick), and a ranked
/// speaker's packet reaches the slots of subscribers on the other worker (handed over once per
/// packet per worker), on continuous slot streams. Before: each worker ranked only its own
/// tracks and a subscriber's slots heard only the speakers on its own worker.
#[test]
fn slots_hear_speakers_on_every_worker() {
    let mut c = TwoCores::new(4, 2);
    // 1 (core 1) and 2 (core 0) talk; 3 (core 1) and 4 (core 0) are quiet.
    c.run(3000, &[talk, talk, quiet, quiet]);
    for (k, r) in c.rooms.iter().enumerate() {
        let ranked: Vec<u32> = r.core.speakers().group(GROUP).map(|s| s.ranking().as_slice().iter().map(|s| s.track.0).collect()).unwrap_or_default();
        assert!(ranked.contains(&1) && ranked.contains(&2), "core {k} ranks {ranked:?}");
    }
    assert!(c.handed > 0);
    for i in [2usize, 3] {
        let who: std::collections::BTreeSet<u32> = c.heard_by(i).into_iter().filter(|(t, _)| *t > 1000).map(|(_, w)| w).collect();
        assert_eq!(who, [1, 2].into(), "participant {} (core {}) hears both talkers", i + 1, TwoCores::owner(i));
        let got = &c.rooms[TwoCores::owner(i)].received[i];
        for s in (0..2).map(|k| slot_ssrc(i as u32 + 1, k)) {
            let stream: Vec<&Received> = got.iter().filter(|p| p.ssrc == s).collect();
            for w in stream.windows(2) {
                assert_eq!(w[1].seq.0, w[0].seq.0.wrapping_add(1), "participant {} slot {s}", i + 1);
            }
        }
    }
    // The talkers hear each other across the workers too, never themselves.
    assert!(c.heard_by(0).iter().any(|&(_, w)| w == 2) && c.heard_by(0).iter().all(|&(_, w)| w != 1));
    assert!(c.heard_by(1).iter().any(|&(_, w)| w == 1) && c.heard_by(1).iter().all(|&(_, w)| w != 2));
}

/// A speaker's sender report reaches the slots it feeds on the other worker too (handed over
/// with the speaker's audio), as that slot's own report.
#[test]
fn a_speakers_sender_report_reaches_its_slots_on_the_other_worker() {
    use sluice_core::srtp::{RtcpRecvState, RtcpSendState};
    use sluice_core::wire::rtcp;
    let mut c = TwoCores::new(4, 1);
    // 1 talks (its leg on core 1); 4 listens (its leg on core 0).
    c.run(2000, &[talk, quiet, quiet, quiet]);
    assert_eq!((TwoCores::owner(0), TwoCores::owner(3)), (1, 0));
    assert!(c.heard_by(3).iter().any(|&(_, w)| w == 1), "4 hears 1 across the workers");
    let mut b = [0u8; 128];
    let info = rtcp::SenderInfo { ntp_timestamp: 0x1234_5678_9abc_def0, rtp_timestamp: 99 * 960, packet_count: 100, octet_count: 6000 };
    let n = rtcp::write_sr(&mut b, Ssrc(0x101), &info, &[]).unwrap();
    let n = c.rooms[0].keys[0].protect_rtcp(&mut RtcpSendState::new(), &mut b, n).unwrap();
    let now = Instant::from_nanos(c.rooms[0].now_ms * 1_000_000);
    c.rooms[1].out.clear();
    c.rooms[1].core.handle_rx(now, 20_001, addr(1), &mut b[..n], &mut c.rooms[1].out);
    let mut h = c.rooms[1].core.poll_handoff().expect("the report is handed to core 0");
    assert_eq!(h.to, 0);
    c.rooms[0].out.clear();
    c.rooms[0].core.handle_handoff(now, &mut h, &mut c.rooms[0].out);
    let to_4: Vec<Vec<u8>> = c.rooms[0].out.iter().filter(|(m, _)| m.leg.0 == 4).map(|(_, b)| b.to_vec()).collect();
    assert_eq!(to_4.len(), 1, "one report, on 4's slot");
    let mut sr = to_4[0].clone();
    let len = sr.len();
    let plain = c.rooms[0].down[3].0.unprotect_rtcp(&mut RtcpRecvState::new(128), &mut sr, len).expect("protected with 4's key");
    let report = rtcp::SenderReport::new_checked(&sr[..plain]).unwrap();
    assert_eq!(report.sender_ssrc(), slot_ssrc(4, 0));
    assert_eq!(report.sender_info().ntp_timestamp, info.ntp_timestamp);
}

/// The XDP half, as the core drives it: the streams it gates are exactly the unranked,
/// slot-only ones with a latched remote (not a speaker, not a leg with transport-cc); with the
/// XDP stage dropping 31 of every 32 of their quiet packets the receive statistics still show
/// no loss (the holes are counted as received); a gated participant who speaks passes XDP
/// (speech is never gated), is ranked, and its gate is lifted.
#[test]
fn the_core_gates_unranked_silence_in_xdp_and_its_holes_are_not_loss() {
    let xdp = CoreConfig { xdp_silence_gate: true, ..CoreConfig::default() };
    let mut r = Room::configured(3, Some(2), xdp);
    r.run(1000, &[talk, quiet, quiet]);
    let mut gates = r.gates.clone();
    gates.sort();
    assert_eq!(gates, vec![(20_002, Ssrc(0x102)), (20_003, Ssrc(0x103))], "the two quiet ones, not the speaker");
    r.xdp = true;
    r.run(3000, &[talk, quiet, quiet]);
    assert!(r.xdp_dropped > 250, "{}", r.xdp_dropped);
    assert_eq!(r.reported_loss(2), (0, 0), "XDP's holes are not loss");
    assert_eq!(r.reported_loss(3), (0, 0));
    // A delta that changes 3's track (its streams are rebuilt) keeps its holes intentional.
    let track3 = TrackSpec { audio_level_ext: Some(EXT), speaker_group: Some(GROUP), clock_rate: 48_001, ..audio_track(3, 3, 0x103) };
    r.core.apply(Delta { generation: Generation(2), replace_all: false, ops: vec![Op::UpsertTrack(track3)] }).unwrap();
    r.run(2000, &[talk, quiet, quiet]);
    assert_eq!(r.reported_loss(3), (0, 0), "after a delta");
    r.run(1000, &[talk, talk, quiet]);
    assert_eq!(r.gates, vec![(20_003, Ssrc(0x103))], "2 speaks: ranked, ungated");
    let heard_2 = r.received[0].iter().filter(|p| p.csrcs.first() == Some(&Ssrc(0x102))).count();
    assert!(heard_2 > 30, "{heard_2}");
    // A room without slots gates nothing, and neither does a core without an XDP stage.
    let mut plain = Room::configured(3, None, xdp);
    plain.run(1000, &[talk, quiet, quiet]);
    assert!(plain.gates.is_empty());
    let mut no_xdp = Room::with_slots(3, Some(2));
    no_xdp.run(1000, &[talk, quiet, quiet]);
    assert!(no_xdp.gates.is_empty());
}

/// Top-N slots under a lossy, reordering network between the publishers and the SFU (seeded):
/// `loss` of the packets lost, 10 % delayed behind the next one; talkers change every 2 s. Returns
/// (holes in the slot streams, packets the network lost) after checking that every slot copy
/// authenticates (no SRTP index reused), no slot sequence number is sent twice and nobody gets
/// more than its 2 slots.
fn lossy_slots(loss: f64, seed: u64) -> (u64, u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut r = Room::with_slots(5, Some(2));
    let mut lost = 0u64;
    let mut held: Option<(usize, Vec<u8>)> = None;
    for frame in 0..400u64 {
        let turn = (frame / 100) as usize;
        for i in 0..5usize {
            let talking = i == turn || i == turn + 1;
            let (voice, level) = if talking { (true, 25) } else { (false, 100) };
            let pkt = rtp_packet_with_level(0x101 + i as u32, frame as u16, frame as u32 * 960, PT_OPUS, EXT, (voice, level), &[0x55; 60]);
            let x: f64 = rng.random();
            if x < loss {
                lost += 1;
                // Lost on the way: the publisher still used the SRTP index.
                let mut b = pkt.clone();
                b.resize(pkt.len() + 32, 0);
                let _ = r.keys[i].protect_rtp(&mut r.send[i], &mut b, pkt.len());
                continue;
            }
            if x < loss + 0.1 && held.is_none() {
                held = Some((i, pkt));
                continue;
            }
            r.send(i, pkt);
            if let Some((j, p)) = held.take() {
                r.send(j, p);
            }
        }
        r.now_ms = (frame + 1) * 20;
        let now = Instant::from_nanos(r.now_ms * 1_000_000);
        while r.core.poll_timeout() <= now {
            r.out.clear();
            r.core.handle_timeout(now, &mut r.out);
            r.collect();
        }
    }
    assert!(r.core.stats().audio_slot_switches >= 5 * 3, "the talkers changed three times: {}", r.core.stats().audio_slot_switches);
    let mut holes = 0u64;
    for (i, got) in r.received.iter().enumerate() {
        let slots: std::collections::BTreeSet<Ssrc> = got.iter().map(|p| p.ssrc).collect();
        assert!(slots.len() <= 2, "participant {}: {slots:?}", i + 1);
        for s in slots {
            let mut seqs: Vec<u16> = got.iter().filter(|p| p.ssrc == s).map(|p| p.seq.0).collect();
            let n = seqs.len();
            seqs.sort_unstable();
            seqs.dedup();
            assert_eq!(seqs.len(), n, "participant {} slot {s}: a sequence number sent twice", i + 1);
            holes += seqs.windows(2).map(|w| u64::from(w[1].wrapping_sub(w[0]).saturating_sub(1))).sum::<u64>();
        }
    }
    (holes, lost)
}

/// Slot streams under reordering alone have no hole at all, speaker switches included; with 5 %
/// loss on top, a hole only for a packet the network lost (each in the slots of at most the 4
/// others).
#[test]
fn slots_stay_continuous_under_loss_and_reordering() {
    for seed in [16, 17, 18] {
        let (holes, lost) = lossy_slots(0.0, seed);
        assert_eq!((holes, lost), (0, 0), "seed {seed}: reordering alone made holes");
        let (holes, lost) = lossy_slots(0.05, seed);
        assert!(holes <= lost * 4, "seed {seed}: {holes} holes in slot streams, {lost} packets lost upstream");
    }
}

/// A static-key leg's audio slot resumes after a dataplane restart like any stream: the restarted
/// core, given the checkpoint, continues the slot's SRTP index and sequence RESUME_MARGIN packets
/// on (an index is never used twice under the leg's key, whoever speaks first after the restart),
/// and the subscriber keeps decrypting. Before, slots started fresh streams (numbered from the
/// next speaker's sequence number).
#[test]
fn audio_slots_resume_from_a_checkpoint() {
    use sluice_core::table::checkpoint::{Checkpoint, RESUME_MARGIN};
    let mut r = Room::with_slots(3, Some(1));
    r.run(1000, &[talk, quiet, quiet]);
    let slot = slot_ssrc(2, 0);
    let last = r.received[1].iter().filter(|p| p.ssrc == slot).map(|p| p.seq.0).max().expect("2 hears 1 in its slot");
    let mut ck = Checkpoint::default();
    r.core.checkpoint(&mut ck);
    assert!(ck.streams.iter().any(|s| s.out_ssrc == slot), "the slot is checkpointed");
    // The restarted dataplane: a fresh core with the same tables, then the checkpoint.
    r.core = Room::with_slots(3, Some(1)).core;
    let now = Instant::from_nanos(r.now_ms * 1_000_000);
    let done = r.core.restore(&ck, now, core::time::Duration::from_millis(50));
    assert_eq!(done.streams, 2, "the slots of 2 and 3 (1 heard nobody): {done:?}");
    let before = r.received[1].len();
    r.run(1000, &[talk, quiet, quiet]);
    let after: Vec<u16> = r.received[1][before..].iter().filter(|p| p.ssrc == slot).map(|p| p.seq.0).collect();
    assert!(after.len() > 30, "2 hears 1 after the restart: {}", after.len());
    assert_eq!(after[0], last.wrapping_add(RESUME_MARGIN).wrapping_add(1), "the slot resumed {RESUME_MARGIN} packets on");
    assert!(after.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
}
