//! Zero heap allocations per packet in steady state.
//!
//! A counting global allocator wraps `System` and counts, on the test's own thread only, every
//! allocation and reallocation while counting is switched on. A meeting with fan-out 4 (one
//! publisher with audio and two-layer VP8 video, four subscribers split over the layers) is
//! warmed up, then thousands of pre-protected datagrams go through `Core::handle_rx`: media,
//! NACKs answered from the cache, NACKs forwarded upstream, sender reports rewritten per
//! subscriber, receiver reports and PLIs; the audio carries RFC 6464 levels, is ranked on the
//! core's timers (`handle_timeout` runs as the worker runs it) and also reaches every subscriber
//! through an audio slot. The count must stay at zero, with one core and with two (hand-overs
//! between them in pooled buffers).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_core::forward::{Core, CoreConfig, Event, OutBatch, Shard};
use sluice_core::ids::{Generation, Pt, SpeakerGroup, Ssrc};
use sluice_core::srtp::{Profile, RtcpSendState, RtpSendState, SrtpKeys};
use sluice_core::table::{AudioSlotsSpec, Delta, LegSpec, Op, TrackSpec};
use sluice_core::time::Instant;
use sluice_core::verdict::DropReason;
use sluice_core::wire::rtcp;
use sluice_sim::fixture::*;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PROFILE: Profile = Profile::AeadAes128Gcm;
const SUBS: u32 = 4;
const AUDIO: u32 = 0x1000;
const LEVEL_EXT: u8 = 1;
const VIDEO: [(u32, u32); 2] = [(0x2000, 0x2001), (0x3000, 0x3001)];

struct Sender {
    port: u16,
    addr: SocketAddr,
    keys: SrtpKeys,
    rtp: Vec<(u32, RtpSendState)>,
    rtcp: Vec<(u32, RtcpSendState)>,
}

impl Sender {
    fn new(i: u32) -> Self {
        let m = material(PROFILE, i, 0);
        Self {
            port: 20_000 + i as u16,
            addr: SocketAddr::from((Ipv4Addr::new(10, 0, 0, i as u8), 5000)),
            keys: SrtpKeys::new(PROFILE, &m.key, &m.salt).unwrap(),
            rtp: Vec::new(),
            rtcp: Vec::new(),
        }
    }

    fn rtp(&mut self, plain: Vec<u8>) -> Vec<u8> {
        let ssrc = u32::from_be_bytes(plain[8..12].try_into().unwrap());
        let st = match self.rtp.iter().position(|(s, _)| *s == ssrc) {
            Some(p) => &mut self.rtp[p].1,
            None => {
                self.rtp.push((ssrc, RtpSendState::new()));
                &mut self.rtp.last_mut().unwrap().1
            }
        };
        let mut b = plain.clone();
        b.resize(plain.len() + 32, 0);
        let n = self.keys.protect_rtp(st, &mut b, plain.len()).unwrap();
        b.truncate(n);
        b
    }

    fn rtcp(&mut self, plain: &[u8]) -> Vec<u8> {
        let ssrc = u32::from_be_bytes(plain[4..8].try_into().unwrap());
        let st = match self.rtcp.iter().position(|(s, _)| *s == ssrc) {
            Some(p) => &mut self.rtcp[p].1,
            None => {
                self.rtcp.push((ssrc, RtcpSendState::new()));
                &mut self.rtcp.last_mut().unwrap().1
            }
        };
        let mut b = plain.to_vec();
        b.resize(plain.len() + 32, 0);
        let n = self.keys.protect_rtcp(st, &mut b, plain.len()).unwrap();
        b.truncate(n);
        b
    }
}

/// One scheduled datagram: (sender index, bytes, time in ms).
type Sched = Vec<(usize, Vec<u8>, u64)>;

/// Builds `frames` frames of traffic starting at frame `from`, with feedback mixed in.
fn traffic(senders: &mut [Sender], from: u32, frames: u32) -> Sched {
    let mut s = Sched::new();
    let mut buf = [0u8; 256];
    for f in from..from + frames {
        let t = u64::from(f) * 20;
        // Audio every 20 ms.
        // Audio every 20 ms, with its level (speech for 1 s, then silence for 1 s).
        let p = rtp_packet_with_level(AUDIO, f as u16, f * 960, PT_OPUS, LEVEL_EXT, if f % 100 < 50 { (true, 25) } else { (false, 110) }, &[0x55; 80]);
        s.push((0, senders[0].rtp(p), t));
        // Video: 25 fps-ish, layer 0 one packet per frame, layer 1 three; keyframe at frame 0.
        for (l, &(ssrc, _)) in VIDEO.iter().enumerate() {
            let per = if l == 0 { 1 } else { 3 };
            for k in 0..per {
                let seq = (f * per + k) as u16;
                let mut payload = vec![0x42u8; 900];
                payload[..2].copy_from_slice(match (k, f) {
                    (0, 0) => &[0x10, 0x00],
                    (0, _) => &[0x10, 0x01],
                    _ => &[0x00, 0x00],
                });
                let p = rtp_packet(ssrc, seq, f * 3600, PT_VP8, k + 1 == per, &payload);
                s.push((0, senders[0].rtp(p), t));
            }
        }
        if f == 0 {
            continue;
        }
        let sub = 1 + (f % SUBS) as usize;
        let out_ssrc = 0x10_0000 * (sub as u32 + 1) + 0x100 * 2; // the subscriber's video out-SSRC
        if f % 5 == 0 {
            // A NACK the cache answers: two recent packets of the layer the subscriber is on.
            let layer = (sub - 1) % 2;
            let per = if layer == 0 { 1 } else { 3 };
            let pid = ((f - 1) * per) as u16;
            let n = rtcp::write_nack(&mut buf, Ssrc(sub as u32 + 1), Ssrc(out_ssrc), &[rtcp::NackItem { pid, blp: 1 }]).unwrap();
            let w = senders[sub].rtcp(&buf[..n]);
            s.push((sub, w, t));
        }
        if f % 7 == 0 {
            // A NACK for something long gone: forwarded upstream.
            let layer = (sub - 1) % 2;
            let per = if layer == 0 { 1 } else { 3 };
            let pid = ((f - 1) * per) as u16;
            let n = rtcp::write_nack(&mut buf, Ssrc(sub as u32 + 1), Ssrc(out_ssrc), &[rtcp::NackItem { pid: pid.wrapping_sub(600), blp: 0 }]).unwrap();
            let w = senders[sub].rtcp(&buf[..n]);
            s.push((sub, w, t));
        }
        if f % 11 == 0 {
            let n = rtcp::write_pli(&mut buf, Ssrc(sub as u32 + 1), Ssrc(out_ssrc)).unwrap();
            let w = senders[sub].rtcp(&buf[..n]);
            s.push((sub, w, t));
        }
        if f % 13 == 0 {
            let block = rtcp::ReportBlockInfo { ssrc: Ssrc(out_ssrc), highest_seq: f, ..Default::default() };
            let n = rtcp::write_rr(&mut buf, Ssrc(sub as u32 + 1), &[block]).unwrap();
            let w = senders[sub].rtcp(&buf[..n]);
            s.push((sub, w, t));
        }
        if f % 50 == 0 {
            // Sender reports for the audio and both layers.
            for (ssrc, ts) in [(AUDIO, f * 960), (VIDEO[0].0, f * 3600), (VIDEO[1].0, f * 3600)] {
                let info = rtcp::SenderInfo { ntp_timestamp: u64::from(f) << 28, rtp_timestamp: ts, packet_count: f, octet_count: f * 900 };
                let n = rtcp::write_sr(&mut buf, Ssrc(ssrc), &info, &[]).unwrap();
                let w = senders[0].rtcp(&buf[..n]);
                s.push((0, w, t));
            }
        }
    }
    s
}

#[test]
fn steady_state_forwarding_allocates_nothing() {
    steady_state(1);
}

/// The same with two cores (the publisher's leg on core 1, the subscribers' on both): media and
/// sender reports handed to core 0, keyframe requests and upstream NACKs back to core 1, layer
/// demand, speaker candidates; every hand-over's buffer returns to its pool.
#[test]
fn steady_state_forwarding_across_two_cores_allocates_nothing() {
    steady_state(2);
}

fn steady_state(count: u16) {
    let mut cores: Vec<Core> = (0..count).map(|index| Core::new(CoreConfig { shard: Shard { index, count }, ..CoreConfig::default() })).collect();
    let mut senders: Vec<Sender> = (1..=SUBS + 1).map(Sender::new).collect();
    // Every subscriber also has one audio slot of the group (top-N audio, N = 1).
    let slot = |i: u32| AudioSlotsSpec {
        group: SpeakerGroup(7),
        out_ssrcs: vec![Ssrc(0x10_0000 * i + 0x300)],
        pt_map: vec![(Pt(PT_OPUS), Pt(SUB_PT_OPUS))],
        ext_map: vec![],
    };
    let mut ops: Vec<Op> = (1..=SUBS + 1)
        .map(|i| LegSpec { audio_slots: (i > 1).then(|| slot(i)), ..leg_spec(i, 20_000 + i as u16, material(PROFILE, i, 0), material(PROFILE, i, 1)) })
        .map(Op::UpsertLeg)
        .collect();
    ops.push(Op::UpsertTrack(TrackSpec { audio_level_ext: Some(LEVEL_EXT), speaker_group: Some(SpeakerGroup(7)), ..audio_track(1, 1, AUDIO) }));
    ops.push(Op::UpsertTrack(video_track(2, 1, &VIDEO)));
    for i in 2..=SUBS + 1 {
        ops.push(Op::UpsertSubscription(subscription(i, 1, 0x10_0000 * i + 0x100, None, 0)));
        let layer = ((i - 2) % 2) as u8;
        ops.push(Op::UpsertSubscription(subscription(i, 2, 0x10_0000 * i + 0x200, Some(0x10_0000 * i + 0x201), layer)));
    }
    for core in &mut cores {
        core.apply(Delta { generation: Generation(1), replace_all: false, ops: ops.clone() }).unwrap();
    }
    // Latch every address with an RR.
    let mut latch = Sched::new();
    let mut buf = [0u8; 64];
    for (i, s) in senders.iter_mut().enumerate() {
        let n = rtcp::write_rr(&mut buf, Ssrc(i as u32 + 1), &[]).unwrap();
        latch.push((i, s.rtcp(&buf[..n]), 0));
    }
    let warm = traffic(&mut senders, 0, 250);
    let measured = traffic(&mut senders, 250, 1000);

    let mut out = OutBatch::new(128);
    let mut work = [0u8; 1600];
    let mut outputs = 0u64;
    let mut rankings = 0u64;
    let mut latched = Vec::with_capacity(16);
    let mut run = |cores: &mut [Core], sched: &Sched, outputs: &mut u64, rankings: &mut u64| {
        for (i, bytes, t) in sched {
            let s = &senders[*i];
            let c = usize::from(s.port % count);
            out.clear();
            let b = &mut work[..bytes.len()];
            b.copy_from_slice(bytes);
            let now = Instant::from_nanos(t * 1_000_000);
            cores[c].handle_rx(now, s.port, s.addr, b, &mut out);
            *outputs += out.len() as u64;
            for k in 0..cores.len() {
                // The timers too (speaker ticks, reports, sweeps), as the worker runs them.
                while cores[k].poll_timeout() <= now {
                    out.clear();
                    cores[k].handle_timeout(now, &mut out);
                }
                while let Some(e) = cores[k].poll_event() {
                    match e {
                        Event::ActiveSpeakers { .. } => *rankings += 1,
                        Event::RemoteLatched { leg, remote } => latched.push((leg, remote)),
                        _ => {}
                    }
                }
                // What a core learned, every core's tables get (the worker glue's messages).
                for &(leg, remote) in &latched {
                    for other in cores.iter_mut() {
                        other.set_remote(leg, remote).expect("no other leg has the remote");
                    }
                }
                latched.clear();
            }
            // Hand-overs, until none is left; each buffer goes back to its core's pool.
            let mut any = true;
            while any {
                any = false;
                for k in 0..cores.len() {
                    while let Some(mut h) = cores[k].poll_handoff() {
                        any = true;
                        let to = usize::from(h.to);
                        out.clear();
                        cores[to].handle_handoff(now, &mut h, &mut out);
                        *outputs += out.len() as u64;
                        cores[k].recycle(h);
                    }
                }
            }
        }
    };
    run(&mut cores, &latch, &mut outputs, &mut rankings);
    run(&mut cores, &warm, &mut outputs, &mut rankings);
    let sum = |cores: &[Core]| {
        let mut t = sluice_core::stats::CoreStats::default();
        for c in cores {
            let s = c.stats();
            t.nack_answered += s.nack_answered;
            t.nack_forwarded += s.nack_forwarded;
            t.keyframe_requests += s.keyframe_requests;
            t.handoffs_out += s.handoffs_out;
            t.audio_slot_switches += s.audio_slot_switches;
            for (a, b) in t.drops.iter_mut().zip(s.drops) {
                *a += b;
            }
        }
        t
    };
    let warm_stats = sum(&cores);
    assert!(warm_stats.nack_answered > 0 && warm_stats.nack_forwarded > 0, "{warm_stats:?}");

    // The counter works: one box, one allocation.
    ALLOCS.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    drop(std::hint::black_box(Box::new(7u64)));
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCS.load(Ordering::Relaxed), 1, "the counting allocator sees allocations");

    outputs = 0;
    ALLOCS.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    rankings = 0;
    run(&mut cores, &measured, &mut outputs, &mut rankings);
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.load(Ordering::Relaxed);

    let st = sum(&cores);
    let d = |f: fn(&sluice_core::stats::CoreStats) -> u64| f(&st) - f(&warm_stats);
    eprintln!(
        "{count} core(s): {} datagrams, {outputs} outputs, nack answered {}, forwarded {}, keyframe requests {}, hand-overs {}, {allocs} allocations",
        measured.len(),
        d(|s| s.nack_answered),
        d(|s| s.nack_forwarded),
        d(|s| s.keyframe_requests),
        d(|s| s.handoffs_out),
    );
    assert!(d(|s| s.nack_answered) > 100, "NACKs answered from the cache in the measured run");
    assert!(d(|s| s.nack_forwarded) > 50, "NACKs forwarded upstream in the measured run");
    assert!(outputs > 4 * 1000 * 2, "fan-out 4 of audio and video");
    if count > 1 {
        assert!(d(|s| s.handoffs_out) > 1000, "media crossed between the cores");
    }
    assert_eq!(st.drops_for(DropReason::AuthFailed), 0);
    assert_eq!(st.drops_for(DropReason::Replayed), 0);
    assert_eq!(st.drops_for(DropReason::OutputFull), 0);
    let publisher = usize::from(20_001 % count);
    let dominant = cores[publisher].speakers().group(SpeakerGroup(7)).and_then(|s| s.dominant());
    assert_eq!(dominant, Some(sluice_core::ids::TrackId(1)), "the speaker ticks ran ({rankings} ranking events measured)");
    assert!(st.audio_slot_switches >= 4, "the slots carried the speaker: {}", st.audio_slot_switches);
    assert_eq!(allocs, 0, "heap allocations while forwarding {} datagrams", measured.len());
}
