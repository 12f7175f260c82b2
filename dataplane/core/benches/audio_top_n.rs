//! What top-N audio saves the core in an audio-heavy meeting (issue 16): 100 participants, each
//! publishing Opus-sized SRTP audio (AEAD_AES_128_GCM, 50 packets/s) with RFC 6464 levels;
//! three talk at a time (the talkers change every 5 s), the others are quiet (V = 0,
//! -100 dBov) or noisy (every fourth: -62 dBov, still not speech). Three ways, in one run:
//!
//! - **per track** (the reference row): everyone subscribes to everyone (99 copies a packet);
//! - **top-3 slots**: everyone gets three audio slots and no per-track subscription;
//! - **top-3, no drop**: the same with `CoreConfig::decrypt_silence`: every packet decrypted,
//!   to show what the drop before decryption itself saves.
//!
//! The whole meeting runs through one core in virtual time (`handle_rx` per packet,
//! `handle_timeout` when due); the figure is core CPU per participant (µs per second of
//! meeting) over 20 s after 2 s of warm-up, and the share of audio packets dropped before
//! decryption. The daemon's receive syscalls come on top (the XDP stage, which would spare
//! them too, is issue 16's next step).
//!
//! `cargo bench -p sluice-core --bench audio_top_n`

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant as WallInstant;

use sluice_core::forward::{Core, CoreConfig, OutBatch};
use sluice_core::ids::{Generation, SpeakerGroup};
use sluice_core::srtp::{Profile, RtpSendState, SrtpKeys};
use sluice_core::table::Delta;
use sluice_core::time::Instant;
use sluice_core::verdict::DropReason;
use sluice_sim::fixture::*;
use sluice_sim::media::talk_pattern_level;

const PEOPLE: u32 = 100;
const EXT: u8 = 3;
const GROUP: SpeakerGroup = SpeakerGroup(0x5ee);
const PROFILE: Profile = Profile::AeadAes128Gcm;
const WARM_MS: u64 = 2_000;
const RUN_MS: u64 = 20_000;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    PerTrack,
    Slots,
    SlotsNoDrop,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PerTrack => "per track (99 subscriptions each)",
            Mode::Slots => "top-3 slots",
            Mode::SlotsNoDrop => "top-3 slots, no drop",
        }
    }
}

fn core(mode: Mode) -> Core {
    let mut core = Core::new(CoreConfig { decrypt_silence: mode == Mode::SlotsNoDrop, ..CoreConfig::default() });
    let remotes: Vec<SocketAddr> = (1..=PEOPLE).map(addr).collect();
    let ops = audio_meeting_ops(PROFILE, 20_000, &remotes, EXT, GROUP, (mode != Mode::PerTrack).then_some(3));
    core.apply(Delta { generation: Generation(1), replace_all: false, ops }).expect("valid meeting");
    core
}

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8), 5000))
}

/// Runs the meeting for `WARM_MS + RUN_MS`; returns (core ns per participant per second over
/// the timed part, share of audio packets dropped before decryption in it).
fn run(mode: Mode) -> (f64, f64) {
    let mut core = core(mode);
    let keys: Vec<SrtpKeys> = (1..=PEOPLE).map(|i| material(PROFILE, i, 0)).map(|m| SrtpKeys::new(PROFILE, &m.key, &m.salt).expect("keys")).collect();
    let mut send: Vec<RtpSendState> = (0..PEOPLE).map(|_| RtpSendState::new()).collect();
    let mut out = OutBatch::new(512);
    let mut buf = vec![0u8; 256];
    let (mut busy_ns, mut packets, mut silent_before) = (0u128, 0u64, 0u64);
    let payload = [0x55u8; 80];
    for frame in 0..(WARM_MS + RUN_MS) / 20 {
        let now = Instant::from_nanos(frame * 20_000_000);
        let timed = frame * 20 >= WARM_MS;
        if frame * 20 == WARM_MS {
            silent_before = core.stats().drops_for(DropReason::SilentAudio);
        }
        for i in 1..=PEOPLE {
            let (voice, lvl) = talk_pattern_level(i, frame, PEOPLE);
            let plain = rtp_packet_with_level(0x100 + i, frame as u16, frame as u32 * 960, PT_OPUS, EXT, (voice, lvl), &payload);
            buf[..plain.len()].copy_from_slice(&plain);
            let n = keys[i as usize - 1].protect_rtp(&mut send[i as usize - 1], &mut buf, plain.len()).expect("room");
            out.clear();
            let t = WallInstant::now();
            core.handle_rx(now, 20_000 + i as u16, addr(i), &mut buf[..n], &mut out);
            if timed {
                busy_ns += t.elapsed().as_nanos();
                packets += 1;
            }
        }
        let t = WallInstant::now();
        while core.poll_timeout() <= now {
            out.clear();
            core.handle_timeout(now, &mut out);
        }
        while core.poll_event().is_some() {}
        if timed {
            busy_ns += t.elapsed().as_nanos();
        }
    }
    let secs = RUN_MS as f64 / 1e3;
    let silent = core.stats().drops_for(DropReason::SilentAudio) - silent_before;
    (busy_ns as f64 / f64::from(PEOPLE) / secs, silent as f64 / packets as f64)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("{PEOPLE}-participant audio meeting, 3 talkers, core CPU over {} s of meeting (best of 3 alternating rounds)", RUN_MS / 1000);
    println!("{:>36} {:>22} {:>10} {:>24}", "mode", "µs CPU / participant / s", "× ref", "dropped before decrypt");
    let modes = [Mode::PerTrack, Mode::Slots, Mode::SlotsNoDrop];
    let mut best = [(f64::MAX, 0.0); 3];
    for _ in 0..3 {
        for (k, m) in modes.iter().enumerate() {
            let (ns, share) = run(*m);
            if ns < best[k].0 {
                best[k] = (ns, share);
            }
        }
    }
    for (k, m) in modes.iter().enumerate() {
        println!("{:>36} {:>22.1} {:>10.3} {:>23.1}%", m.name(), best[k].0 / 1e3, best[k].0 / best[0].0, best[k].1 * 100.0);
    }
}
