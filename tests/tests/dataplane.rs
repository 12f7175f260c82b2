//! The dataplane daemon end to end on loopback: real processes, real UDP, real SRTP.
//!
//! Simulated participants (each with its own UDP socket and SRTP keys) publish audio and
//! three-layer simulcast video through `sluice-dataplane`, programmed over its control socket;
//! every datagram they receive must authenticate with their own keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use sluice_bench::meeting::{self, Participant};
use sluice_core::ids::{Generation, LegId, Ssrc};
use sluice_core::srtp::Profile;
use sluice_core::table::{Delta, KeyMaterial, LegSpec, Op};
use sluice_dataplane::control::{Client, Request, Response};
use sluice_tests::{Daemon, TempDir, participant_socket};

struct Run {
    /// Raw datagrams each participant received, sorted.
    received: Vec<Vec<Vec<u8>>>,
    /// Packets the daemon's workers emitted.
    daemon_tx: u64,
    /// Deltas applied (or hostile datagrams sent) while traffic flowed.
    updates: u64,
    /// Drops by reason, summed over workers.
    drops: Vec<(&'static str, u64)>,
    log: String,
}

#[derive(Clone, Copy)]
enum Updates {
    None,
    /// A delta every millisecond for the whole run.
    EveryMs,
    /// A delta every millisecond, then the control connection vanishes mid-run.
    EveryMsThenControlDies,
    /// No deltas, but hostile traffic at every leg port: garbage, truncations, forged SRTP with
    /// real SSRCs from the participants' own addresses (wrong keys), STUN/DTLS-looking bytes,
    /// and a flood from strangers.
    Hostile,
}

fn start_daemon(dir: &TempDir, backend: &str) -> (Daemon, std::path::PathBuf) {
    let sock = dir.path().join("dp.sock");
    let cfg = dir.path().join("dataplane.toml");
    // Meetings use 20000 + 64 m + i, the table-churn legs 39000-39499.
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nlisten_ip = \"127.0.0.1\"\nworkers = 2\nbackend = \"{backend}\"\nport_range = [20000, 39999]\ncontrol_socket = \"{}\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let mut d = Daemon::start("sluice-dataplane", &["--config", cfg.to_str().unwrap(), "--metrics", "off"], &dir.path().join(format!("{backend}.log")));
    assert!(d.wait_for_path(&sock, Duration::from_secs(10)), "control socket never appeared:\n{}", d.log_text());
    (d, sock)
}

fn dummy_leg(n: u32) -> LegSpec {
    let k = KeyMaterial::seeded(Profile::AeadAes128Gcm, 1);
    LegSpec::new(LegId(900_000 + n), 39_000 + (n % 500) as u16, k.clone(), k, Ssrc(1))
}

/// Runs meeting `m` of `size` through a fresh daemon on `backend` for `ticks` × 20 ms.
fn run(backend: &str, m: u32, size: u32, ticks: u64, updates: Updates) -> Run {
    let dir = TempDir::new(&format!("dp-{backend}-{m}"));
    let (daemon, sock) = start_daemon(&dir, backend);
    let (ops, mut people): (Vec<Op>, Vec<Participant>) = meeting::build(m, size, Profile::AeadAes128Gcm, 1);
    let mut control = Client::connect(&sock).unwrap();
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops })).unwrap();
    assert!(matches!(resp, Response::Applied(Generation(1))), "{resp:?}\n{}", daemon.log_text());
    drop(control);

    let sockets: Vec<_> = people.iter().map(|_| participant_socket()).collect();
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.addr = s.local_addr().unwrap();
    }
    let sfu = |p: &Participant| SocketAddr::from(([127, 0, 0, 1], p.port));
    let mut received: Vec<Vec<Vec<u8>>> = vec![Vec::new(); people.len()];
    let drain = |received: &mut Vec<Vec<Vec<u8>>>| {
        let mut buf = [0u8; 2048];
        for (i, s) in sockets.iter().enumerate() {
            s.set_nonblocking(true).unwrap();
            while let Ok(n) = s.recv(&mut buf) {
                received[i].push(buf[..n].to_vec());
            }
        }
    };
    // Hello: each participant's first packet teaches the SFU its address.
    for (p, s) in people.iter_mut().zip(&sockets) {
        s.send_to(&p.hello(), sfu(p)).unwrap();
    }
    thread::sleep(Duration::from_millis(100));
    drain(&mut received);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let targets: Vec<(SocketAddr, std::net::UdpSocket, u32)> =
        people.iter().zip(&sockets).map(|(p, s)| (sfu(p), s.try_clone().unwrap(), p.seat.audio_ssrc().0)).collect();
    let updater = {
        let (sock, stop) = (sock.clone(), stop.clone());
        thread::spawn(move || {
            let mut n = 0u64;
            if matches!(updates, Updates::None) {
                return n;
            }
            if matches!(updates, Updates::Hostile) {
                let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let mut x = 0x2545_f491_4f6c_dd1du64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (dst, own, ssrc) in &targets {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let len = 1 + (x % 1400) as usize;
                        let mut junk: Vec<u8> = (0..len).map(|i| (x >> (i % 57)) as u8).collect();
                        let kind = n % 5;
                        match kind {
                            // Garbage with an RTP-looking first byte, from the real address.
                            0 => junk[0] = 0x80,
                            // A "packet" with a real SSRC and random tail: wrong keys.
                            1 if len >= 12 => {
                                junk[..12].copy_from_slice(&[0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
                                junk[8..12].copy_from_slice(&ssrc.to_be_bytes());
                            }
                            // STUN- and DTLS-looking bytes on a media port.
                            2 => junk[0] = if x & 1 == 0 { 0x00 } else { 22 },
                            // Truncated RTP header.
                            3 => junk.truncate(len.min(7)),
                            _ => {}
                        }
                        let from = if kind == 4 { &stranger } else { own };
                        let _ = from.send_to(&junk, dst);
                        n += 1;
                    }
                    thread::sleep(Duration::from_micros(200));
                }
                return n;
            }
            let mut c = Client::connect(&sock).unwrap();
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if matches!(updates, Updates::EveryMsThenControlDies) && started.elapsed() > Duration::from_millis(400) {
                    // The control plane dies: its connection vanishes mid-stream, no goodbye.
                    drop(c);
                    return n;
                }
                let g = Generation(2 + n);
                let op = if n.is_multiple_of(2) { Op::UpsertLeg(dummy_leg(n as u32)) } else { Op::RemoveLeg(dummy_leg(n as u32 - 1).id) };
                match c.call(&Request::Apply(Delta { generation: g, replace_all: false, ops: vec![op] })).unwrap() {
                    Response::Applied(got) => assert_eq!(got, g),
                    other => panic!("update {n} refused: {other:?}"),
                }
                n += 1;
                thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };
    let start = Instant::now();
    for tick in 0..ticks {
        for i in 0..people.len() {
            let mut pkts = vec![people[i].audio(tick)];
            if tick * 3 / 5 != (tick + 1) * 3 / 5 {
                pkts.extend(people[i].video_frame());
            }
            for p in pkts {
                sockets[i].send_to(&p, sfu(&people[i])).unwrap();
            }
        }
        drain(&mut received);
        let next = start + Duration::from_millis(20 * (tick + 1));
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
    }
    thread::sleep(Duration::from_millis(200));
    drain(&mut received);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let updates = updater.join().unwrap();

    let mut control = Client::connect(&sock).expect("a new control plane can connect");
    let (daemon_tx, drops) = match control.call(&Request::Stats).unwrap() {
        Response::Stats(s) => (
            s.iter().map(|c| c.tx_packets).sum(),
            sluice_core::verdict::DropReason::ALL.iter().map(|r| (r.name(), s.iter().map(|c| c.drops_for(*r)).sum())).collect(),
        ),
        other => panic!("{other:?}"),
    };
    // Verify everything with the participants' own keys.
    if let Err(e) = meeting::verify_all(&mut people, &mut received) {
        panic!("{e}");
    }
    daemon.signal(libc::SIGTERM);
    let mut daemon = daemon;
    let status = daemon.wait_exit(Duration::from_secs(5)).expect("SIGTERM drains and exits");
    assert!(status.success(), "exit {status:?}\n{}", daemon.log_text());
    Run { received, daemon_tx, updates, drops, log: daemon.log_text() }
}

fn totals(r: &Run) -> BTreeMap<usize, usize> {
    r.received.iter().enumerate().map(|(i, v)| (i, v.len())).collect()
}

#[test]
fn uring_and_mmsg_forward_identically_and_every_copy_authenticates() {
    let uring = run("uring", 3, 3, 50, Updates::None);
    let mmsg = run("mmsg", 3, 3, 50, Updates::None);
    let received: u64 = uring.received.iter().map(|v| v.len() as u64).sum();
    // 3 participants, 50 audio ticks, 30 video frames; each subscriber gets both others' audio
    // and one other in HD (5 packets/frame), the other at the lowest layer (1 packet/frame).
    assert_eq!(received, 3 * (2 * 50 + 30 * (5 + 1)), "{:?}\n{}", totals(&uring), uring.log);
    assert_eq!(received, uring.daemon_tx, "every packet the daemon sent arrived");
    assert_eq!(uring.received, mmsg.received, "same input, byte-identical output on both backends");
    assert!(uring.log.contains("backend=\"uring\""), "the uring run really used io_uring:\n{}", uring.log);
    assert!(mmsg.log.contains("backend=\"mmsg\""), "{}", mmsg.log);
}

#[test]
fn table_updates_every_millisecond_lose_nothing_and_a_dead_control_plane_changes_nothing() {
    let quiet = run("mmsg", 4, 3, 40, Updates::None);
    let busy = run("uring", 4, 3, 40, Updates::EveryMs);
    assert!(busy.updates >= 100, "only {} updates were applied under load", busy.updates);
    assert_eq!(busy.received, quiet.received, "updates under load lost or misrouted packets");
    let orphaned = run("mmsg", 4, 3, 40, Updates::EveryMsThenControlDies);
    assert!(orphaned.updates > 10);
    assert_eq!(orphaned.received, quiet.received, "forwarding changed when the control plane died");
}

#[test]
fn hostile_traffic_is_dropped_and_counted_while_the_meeting_is_untouched() {
    let quiet = run("mmsg", 5, 3, 40, Updates::None);
    let attacked = run("mmsg", 5, 3, 40, Updates::Hostile);
    assert!(attacked.updates >= 1000, "only {} hostile datagrams", attacked.updates);
    assert_eq!(attacked.received, quiet.received, "hostile traffic changed what the participants received");
    let count = |r: &Run, name: &str| r.drops.iter().find(|(n, _)| *n == name).map_or(0, |(_, c)| *c);
    for reason in ["malformed", "not_media", "unknown_source", "auth_failed"] {
        assert!(count(&attacked, reason) > 0, "no {reason} drops counted: {:?}", attacked.drops);
    }
    assert_eq!(count(&quiet, "auth_failed") + count(&quiet, "unknown_source"), 0, "{:?}", quiet.drops);
}

/// One publisher, 60 subscribers: a burst of 64 video packets makes 3,840 copies, more than a
/// full receive batch's output buffer holds at the usual fan-out; the worker receives fewer
/// datagrams per batch instead of dropping copies, and every copy arrives and authenticates.
#[test]
fn a_wide_fan_out_loses_no_copy_to_a_full_output_buffer() {
    use sluice_bench::forward::{fanout_ops, publisher_keyframe};
    use sluice_core::srtp::{RtpRecvState, RtpSendState, SrtpKeys};
    const SUBS: u32 = 60;
    const BURST: u16 = 64;
    const BASE: u16 = 20_400;
    let profile = Profile::AeadAes128Gcm;
    let dir = TempDir::new("dp-wide");
    let (daemon, sock) = start_daemon(&dir, "mmsg");
    let publisher = participant_socket();
    let subscribers: Vec<_> = (0..SUBS).map(|_| participant_socket()).collect();
    let ops = fanout_ops(profile, SUBS, BASE, |l| (l > 1).then(|| subscribers[l as usize - 2].local_addr().unwrap()));
    let mut control = Client::connect(&sock).unwrap();
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops })).unwrap();
    assert!(matches!(resp, Response::Applied(_)), "{resp:?}\n{}", daemon.log_text());

    let up = KeyMaterial::seeded(profile, 1);
    let keys = SrtpKeys::new(up.profile, &up.key, &up.salt).unwrap();
    let mut state = RtpSendState::new();
    let sfu = SocketAddr::from(([127, 0, 0, 1], BASE + 1));
    for seq in 0..BURST {
        publisher.send_to(&publisher_keyframe(&keys, &mut state, seq, 1200), sfu).unwrap();
    }
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    let mut got = vec![0u16; SUBS as usize];
    for (i, s) in subscribers.iter().enumerate() {
        let l = i as u32 + 2;
        let down = KeyMaterial::seeded(profile, 100 + l);
        let keys = SrtpKeys::new(down.profile, &down.key, &down.salt).unwrap();
        let mut recv = RtpRecvState::new(1024);
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        while got[i] < BURST && Instant::now() < end {
            let Ok(n) = s.recv(&mut buf) else { continue };
            keys.unprotect_rtp(&mut recv, &mut buf, n).unwrap_or_else(|e| panic!("subscriber {l}: {e:?}"));
            got[i] += 1;
        }
    }
    let stats = match control.call(&Request::Stats).unwrap() {
        Response::Stats(s) => s,
        other => panic!("{other:?}"),
    };
    let full: u64 = stats.iter().map(|c| c.drops_for(sluice_core::verdict::DropReason::OutputFull)).sum();
    assert_eq!(full, 0, "copies dropped for a full output buffer");
    assert!(got.iter().all(|&g| g == BURST), "copies per subscriber: {got:?}\n{}", daemon.log_text());
}

/// Feedback crosses workers: the subscriber's leg port belongs to worker 1 and the publisher's
/// track to worker 0, so a PLI the subscriber sends for the video it receives arrives at worker
/// 1, is handed to worker 0 (by value, through its feedback queue) and reaches the publisher
/// translated to its own SSRC and keys. A PLI for an SSRC the subscriber does not receive is
/// dropped, not passed on.
#[test]
fn a_subscribers_pli_crosses_workers_to_the_publisher() {
    let dir = TempDir::new("dp-pli");
    let (daemon, sock) = start_daemon(&dir, "mmsg");
    // Meeting 11: legs on ports 20704 (worker 0 of 2) and 20705 (worker 1).
    let (ops, mut people): (Vec<Op>, Vec<Participant>) = meeting::build(11, 2, Profile::AeadAes128Gcm, 1);
    assert_eq!((people[0].port % 2, people[1].port % 2), (0, 1), "one leg per worker");
    let mut control = Client::connect(&sock).unwrap();
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops })).unwrap();
    assert!(matches!(resp, Response::Applied(_)), "{resp:?}\n{}", daemon.log_text());
    let sockets: Vec<_> = people.iter().map(|_| participant_socket()).collect();
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.addr = s.local_addr().unwrap();
    }
    let sfu = |p: &Participant| SocketAddr::from(([127, 0, 0, 1], p.port));
    let mut buf = [0u8; 2048];
    let mut pump = |people: &mut [Participant], until: Instant| {
        while Instant::now() < until {
            for (p, s) in people.iter_mut().zip(&sockets) {
                while let Ok(n) = s.recv(&mut buf) {
                    p.receive(&buf[..n]);
                }
            }
        }
    };
    for (p, s) in people.iter_mut().zip(&sockets) {
        s.send_to(&p.hello(), sfu(p)).unwrap();
    }
    // The publisher's video (a keyframe first) reaches the subscriber.
    for _ in 0..10 {
        for pkt in people[0].video_frame() {
            sockets[0].send_to(&pkt, sfu(&people[0])).unwrap();
        }
        pump(&mut people, Instant::now() + Duration::from_millis(30));
    }
    let video = people[1].received_ssrcs();
    assert!(!video.is_empty(), "the subscriber received nothing\n{}", daemon.log_text());
    // Past the SFU's own keyframe requests and its throttle (one per layer per 200 ms).
    pump(&mut people, Instant::now() + Duration::from_millis(400));
    let before = people[0].plis_received;
    let stranger_pli = people[1].pli(0x0bad_0bad);
    sockets[1].send_to(&stranger_pli, sfu(&people[1])).unwrap();
    pump(&mut people, Instant::now() + Duration::from_millis(300));
    assert_eq!(people[0].plis_received, before, "a PLI for an SSRC the subscriber does not receive is not passed on");
    let pli = people[1].pli(*video.last().unwrap());
    sockets[1].send_to(&pli, sfu(&people[1])).unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    while people[0].plis_received == before && Instant::now() < end {
        pump(&mut people, Instant::now() + Duration::from_millis(20));
    }
    assert!(people[0].plis_received > before, "the publisher got no PLI from the other worker\n{}", daemon.log_text());
    assert_eq!(people[0].verify_failures + people[1].verify_failures, 0);
}

/// One instance per control socket: a second dataplane on the first one's socket refuses to
/// start, naming the first one's PID, and leaves the first one's socket alone.
#[test]
fn a_second_dataplane_on_the_same_socket_refuses_to_start_naming_the_first() {
    let dir = TempDir::new("dp-one-instance");
    let (mut first, sock) = start_daemon(&dir, "mmsg");
    let cfg = dir.path().join("dataplane.toml");
    let mut second = Daemon::start("sluice-dataplane", &["--config", cfg.to_str().unwrap(), "--metrics", "off"], &dir.path().join("second.log"));
    let status = second.wait_exit(Duration::from_secs(20));
    let log = second.log_text();
    assert!(status.is_some_and(|s| !s.success()), "the second dataplane must exit with an error, not serve ({status:?}):\n{log}");
    assert!(log.contains(&format!("PID {}", first.pid())), "the error names the holder's PID {}:\n{log}", first.pid());
    // The first still serves its socket: a delta reaches it (its log sees the connection).
    let mut control = Client::connect(&sock).unwrap();
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops: vec![Op::UpsertLeg(dummy_leg(1))] })).unwrap();
    assert!(matches!(resp, Response::Applied(Generation(1))), "{resp:?}");
    assert!(first.wait_exit(Duration::from_millis(200)).is_none(), "the first is still running");
    assert!(first.log_text().contains("control plane connected"), "the first one answered:\n{}", first.log_text());
}

/// An SSRC learned from a layer's RID on the worker that owns the publisher's leg reaches every
/// worker's tables: a later delta that clashes with it is refused by all workers alike, so the
/// next delta still applies everywhere. (Without it, the other worker applied the clashing
/// delta, its generation moved on alone, and every later delta failed.)
#[test]
fn a_learned_ssrc_is_refused_alike_on_every_worker() {
    use sluice_core::ids::{Pt, TrackId};
    use sluice_core::srtp::{RtpSendState, SrtpKeys};
    use sluice_core::table::{Codec, LayerSpec, MediaKind, PayloadSpec, TrackSpec};
    let dir = TempDir::new("dp-learned");
    let (daemon, sock) = start_daemon(&dir, "mmsg");
    let mut control = Client::connect(&sock).unwrap();
    let keys = KeyMaterial::seeded(Profile::AeadAes128Gcm, 7);
    // The publisher's leg on port 20901: worker 1 of 2 owns it.
    let publisher = LegSpec { id: LegId(1), local_port: 20_901, ..dummy_leg(1) };
    let publisher = LegSpec { rx: keys.clone(), tx: keys.clone(), ..publisher };
    let track = |id: u32, layer: LayerSpec| TrackSpec {
        dd_ext: None,
        id: TrackId(id),
        publisher: LegId(1),
        kind: MediaKind::Video,
        clock_rate: 90_000,
        layers: vec![layer],
        payload_types: vec![PayloadSpec { pt: Pt(96), codec: Codec::Vp8, rtx_pt: None }],
        rid_ext: Some(5),
        repaired_rid_ext: None,
        mid: None,
        audio_level_ext: None,
        speaker_group: None,
    };
    let rid = LayerSpec { ssrc: None, rtx_ssrc: None, rid: Some("h".into()) };
    let apply =
        |control: &mut Client, g: u64, ops: Vec<Op>| control.call(&Request::Apply(Delta { generation: Generation(g), replace_all: false, ops })).unwrap();
    let r = apply(&mut control, 1, vec![Op::UpsertLeg(publisher), Op::UpsertTrack(track(1, rid))]);
    assert!(matches!(r, Response::Applied(_)), "{r:?}");
    // The layer announces SSRC 0xABC with its RID (one-byte extension 5 = "h").
    let tx = SrtpKeys::new(keys.profile, &keys.key, &keys.salt).unwrap();
    let mut st = RtpSendState::new();
    let s = participant_socket();
    for seq in 0..5u16 {
        let mut p = vec![0x90, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0xbc, 0xBE, 0xDE, 0, 1, 0x50, b'h', 0, 0, 0x10, 0, 1, 2, 3];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        let n = p.len();
        p.resize(n + 32, 0);
        let n = tx.protect_rtp(&mut st, &mut p, n).unwrap();
        s.send_to(&p[..n], ("127.0.0.1", 20_901)).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    // A second track claiming the learned SSRC: refused...
    let claim = LayerSpec { ssrc: Some(Ssrc(0xabc)), rtx_ssrc: None, rid: None };
    let r = apply(&mut control, 2, vec![Op::UpsertTrack(track(2, claim))]);
    assert!(matches!(r, Response::Rejected { ref reason, .. } if reason.contains("ssrc 2748")), "the clash must be refused: {r:?}\n{}", daemon.log_text());
    // ... by every worker: the tables are still at generation 1 everywhere, and the next delta
    // applies.
    let r = apply(&mut control, 2, vec![Op::UpsertLeg(dummy_leg(7))]);
    assert!(matches!(r, Response::Applied(_)), "the next delta must apply on every worker: {r:?}\n{}", daemon.log_text());
}

/// Transport-cc feedback reports when each packet arrived, not when the worker last went to
/// sleep: a publisher sends with irregular gaps (1 to 14 ms, so the worker waits between
/// packets, up to its 5 ms cap) and the receive deltas Sluice reports match the send gaps.
/// A browser's delay-based estimator reads these deltas; stamped with the time the worker
/// started waiting they carry up to 5 ms of noise that looks like queueing.
#[test]
fn transport_cc_feedback_reports_arrival_times_not_wake_times() {
    use sluice_bench::forward::fanout_ops;
    use sluice_core::srtp::{RtcpRecvState, RtpSendState, SrtpKeys};
    use sluice_core::wire::rtcp;
    const BASE: u16 = 38_800;
    const EXT: u8 = 5;
    let dir = TempDir::new("dp-twcc");
    let (daemon, sock) = start_daemon(&dir, "uring");
    let publisher = participant_socket();
    let subscriber = participant_socket();
    let mut ops = fanout_ops(Profile::AeadAes128Gcm, 1, BASE, |l| (l > 1).then(|| subscriber.local_addr().unwrap()));
    for op in &mut ops {
        if let Op::UpsertLeg(l) = op
            && l.id == LegId(1)
        {
            l.feedback.twcc_ext = Some(EXT);
        }
    }
    let mut control = Client::connect(&sock).unwrap();
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops })).unwrap();
    assert!(matches!(resp, Response::Applied(_)), "{resp:?}\n{}", daemon.log_text());

    let (rx, tx) = (KeyMaterial::seeded(Profile::AeadAes128Gcm, 1), KeyMaterial::seeded(Profile::AeadAes128Gcm, 101));
    let up = SrtpKeys::new(rx.profile, &rx.key, &rx.salt).unwrap();
    let down = SrtpKeys::new(tx.profile, &tx.key, &tx.salt).unwrap();
    let mut send_state = RtpSendState::new();
    let mut recv_state = RtcpRecvState::new(1024);
    let gaps_ms = [1u64, 9, 3, 14, 2, 6, 11, 4];
    let mut sent = BTreeMap::new();
    let mut reported: BTreeMap<u16, Option<i64>> = BTreeMap::new();
    let mut buf = [0u8; 2048];
    let mut drain = |reported: &mut BTreeMap<u16, Option<i64>>| {
        while let Ok(n) = publisher.recv(&mut buf) {
            let Ok(len) = down.unprotect_rtcp(&mut recv_state, &mut buf, n) else { continue };
            for p in rtcp::compound(&buf[..len]).flatten() {
                if p.kind() != rtcp::Kind::TransportCc {
                    continue;
                }
                let t = rtcp::TransportCc::new_checked(p.as_bytes()).unwrap();
                let mut at = i64::from(t.reference_time()) * 64_000;
                for r in t.packets().flatten() {
                    reported.insert(
                        r.seq,
                        r.delta.map(|d| {
                            at += i64::from(d) * 250;
                            at
                        }),
                    );
                }
            }
        }
    };
    let start = Instant::now();
    for k in 0..120u16 {
        // A VP8 keyframe start carrying the transport-wide sequence number `k`.
        let mut p = vec![0x90, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x00, 0xBE, 0xDE, 0, 1, (EXT << 4) | 1, 0, 0, 0, 0x10, 0x00];
        p[2..4].copy_from_slice(&k.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(k) * 3000).to_be_bytes());
        p[17..19].copy_from_slice(&k.to_be_bytes());
        p.resize(300, 0xa5);
        p.resize(316, 0);
        let n = up.protect_rtp(&mut send_state, &mut p, 300).unwrap();
        sent.insert(k, start.elapsed());
        publisher.send_to(&p[..n], ("127.0.0.1", BASE + 1)).unwrap();
        let until = Instant::now() + Duration::from_millis(gaps_ms[usize::from(k) % gaps_ms.len()]);
        while Instant::now() < until {
            drain(&mut reported);
            thread::sleep(Duration::from_micros(200));
        }
    }
    let end = Instant::now() + Duration::from_secs(2);
    while reported.len() < sent.len() && Instant::now() < end {
        drain(&mut reported);
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(reported.len(), sent.len(), "every packet reported\n{}", daemon.log_text());
    // Each reported gap against the gap the publisher left (µs); loopback adds no queue.
    let mut errors: Vec<i64> = sent
        .keys()
        .zip(sent.keys().skip(1))
        .filter_map(|(a, b)| {
            let (ra, rb) = (reported[a]?, reported[b]?);
            Some(((rb - ra) - (sent[b].as_micros() as i64 - sent[a].as_micros() as i64)).abs())
        })
        .collect();
    assert!(errors.len() >= 100, "{} packets reported received", errors.len());
    errors.sort_unstable();
    let median = errors[errors.len() / 2];
    eprintln!("receive gap error: median {median} µs, 90th {} µs", errors[errors.len() * 9 / 10]);
    // 250 µs ticks at both ends, plus the scheduler: the median stays well under a millisecond.
    assert!(median <= 600, "reported receive gaps are off by a median of {median} µs (sorted errors {errors:?})");
}

/// Issue 15 item 3, end to end: the dataplane is killed (SIGKILL) mid-call after the
/// publisher's sequence numbers wrapped, and started again on the same configuration; the
/// test, playing the control plane, sends it the same tables. From its checkpoint file the
/// new process takes the publisher's rollover counter (its packets past the wrap authenticate:
/// a fresh receive state would take ROC 0 and refuse all of them), the subscriber's stream
/// position (it decrypts on with the receive state it had, the stream RESUME_MARGIN packets on)
/// and the latched remotes: five packets captured before the kill and replayed from another
/// address neither latch the leg nor reach the subscriber.
#[test]
fn a_dataplane_killed_mid_call_resumes_it_from_its_checkpoint() {
    use sluice_bench::forward::{fanout_ops, publisher_keyframe};
    use sluice_core::srtp::{RtpRecvState, RtpSendState, SrtpKeys};
    const BASE: u16 = 38_900;
    const PROFILE: Profile = Profile::AeadAes128Gcm;
    let dir = TempDir::new("dp-checkpoint");
    let sock = dir.path().join("dp.sock");
    let cfg = dir.path().join("dataplane.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nlisten_ip = \"127.0.0.1\"\nworkers = 2\nbackend = \"mmsg\"\nport_range = [20000, 39999]\ncontrol_socket = \"{}\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let start = |log: &str| {
        let d = Daemon::start("sluice-dataplane", &["--config", cfg.to_str().unwrap(), "--metrics", "off"], &dir.path().join(log));
        // (The killed one's socket file is still there until the new one replaces it.)
        let until = Instant::now() + Duration::from_secs(10);
        while Client::connect(&sock).is_err() && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(Client::connect(&sock).is_ok(), "the control socket never answered:\n{}", d.log_text());
        d
    };
    let publisher = participant_socket();
    let subscriber = participant_socket();
    subscriber.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let ops = fanout_ops(PROFILE, 1, BASE, |l| (l > 1).then(|| subscriber.local_addr().unwrap()));
    let program = |d: &Daemon| {
        let mut control = Client::connect(&sock).unwrap();
        let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: true, ops: ops.clone() })).unwrap();
        assert!(matches!(resp, Response::Applied(_)), "{resp:?}\n{}", d.log_text());
    };
    let up = KeyMaterial::seeded(PROFILE, 1);
    let up = SrtpKeys::new(up.profile, &up.key, &up.salt).unwrap();
    let down = KeyMaterial::seeded(PROFILE, 102);
    let down = SrtpKeys::new(down.profile, &down.key, &down.salt).unwrap();
    let mut send = RtpSendState::new();
    let mut recv = RtpRecvState::new(1024);
    let mut buf = [0u8; 2048];
    // Sends publisher packets `seqs`; returns them as sent and what the subscriber decrypted
    // (its sequence numbers), and counts datagrams that did not authenticate.
    let mut bad = 0;
    let mut exchange = |seqs: &mut dyn Iterator<Item = u16>, send: &mut RtpSendState, recv: &mut RtpRecvState, bad: &mut u32| {
        let mut sent = Vec::new();
        let mut got = Vec::new();
        // Reads as it sends (a socket buffer holds fewer small datagrams than it seems).
        let mut read_until = |until: Instant, got: &mut Vec<u16>, bad: &mut u32| {
            while Instant::now() < until {
                let Ok(n) = subscriber.recv(&mut buf) else { continue };
                match down.unprotect_rtp(recv, &mut buf, n) {
                    Ok(_) => got.push(u16::from_be_bytes([buf[2], buf[3]])),
                    Err(_) => *bad += 1,
                }
            }
        };
        for seq in seqs {
            let p = publisher_keyframe(&up, send, seq, 200);
            publisher.send_to(&p, ("127.0.0.1", BASE + 1)).unwrap();
            sent.push(p);
            read_until(Instant::now() + Duration::from_millis(2), &mut got, bad);
        }
        read_until(Instant::now() + Duration::from_millis(300), &mut got, bad);
        (sent, got)
    };

    let mut first = start("first.log");
    program(&first);
    // 65400 ..= 65535, then 0 ..= 99: the publisher's ROC is 1.
    let (sent, got) = exchange(&mut (0..236u16).map(|k| 65_400u16.wrapping_add(k)), &mut send, &mut recv, &mut bad);
    let drops = || match Client::connect(&sock).unwrap().call(&Request::Stats).unwrap() {
        Response::Stats(s) => sluice_core::verdict::DropReason::ALL
            .iter()
            .map(|r| (r.name(), s.iter().map(|c| c.drops_for(*r)).sum::<u64>()))
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), sent.len(), "every packet reached the subscriber before the kill; drops {:?}\n{}", drops(), first.log_text());
    assert_eq!(recv.roc(), 0, "the subscriber's stream started in the lower half: no wrap yet");
    let last_before = *got.last().unwrap();
    // Two checkpoint periods, then the kill.
    thread::sleep(Duration::from_millis(300));
    let state = dir.path().join("dp.state");
    assert!(state.exists(), "no checkpoint beside the control socket\n{}", first.log_text());
    first.signal(libc::SIGKILL);
    assert!(first.wait_exit(Duration::from_secs(5)).is_some());

    let second = start("second.log");
    program(&second);
    // An attacker replays five captured packets from another address before the publisher's
    // next packet: refused, the leg stays latched to the publisher.
    let attacker = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    attacker.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    for p in &sent[200..205] {
        attacker.send_to(p, ("127.0.0.1", BASE + 1)).unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    let (sent2, got2) = exchange(&mut (100..150u16), &mut send, &mut recv, &mut bad);
    assert_eq!(got2.len(), sent2.len(), "the call goes on after the restart: {got2:?}\n{}", second.log_text());
    assert!(got2[0].wrapping_sub(last_before) > 1000, "the stream resumed past the margin: {last_before} then {}", got2[0]);
    assert_eq!(bad, 0, "every datagram the subscriber got authenticated");
    assert!(attacker.recv(&mut buf).is_err(), "the attacker got nothing");
    let log = second.log_text();
    assert!(log.contains("restored from the checkpoint"), "{log}");
}

/// A SIP-style peer without rtcp-mux through the daemon (issue 15 item 11): RTP from its port P
/// to the leg's port, RTCP from P + 1 to the leg's RTCP port (which, with two workers, has the
/// other parity: it still belongs to the worker of the leg's RTP port). Its RTCP does not steal
/// the RTP latch (the bug: every RTP packet after the first RTCP was dropped as from an unknown
/// source), and a subscriber's keyframe request reaches it at P + 1, from the leg's RTCP port.
#[test]
fn a_peer_without_rtcp_mux_sends_rtcp_from_the_next_port_and_its_media_keeps_flowing() {
    use sluice_bench::forward::{fanout_ops, publisher_keyframe};
    use sluice_core::srtp::{RtcpRecvState, RtcpSendState, RtpRecvState, RtpSendState, SrtpKeys};
    use sluice_core::table::RtcpComponent;
    use sluice_core::wire::rtcp;
    const BASE: u16 = 38_950;
    const PROFILE: Profile = Profile::AeadAes128Gcm;
    let dir = TempDir::new("dp-no-mux");
    let (daemon, sock) = start_daemon(&dir, "mmsg");
    // The peer's two sockets: P and P + 1.
    let (rtp, rtcp_sock) = (0..50)
        .find_map(|_| {
            let a = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            let p = a.local_addr().ok()?.port();
            let b = std::net::UdpSocket::bind(("127.0.0.1", p.checked_add(1)?)).ok()?;
            Some((a, b))
        })
        .expect("two consecutive ports");
    for s in [&rtp, &rtcp_sock] {
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    }
    let subscriber = participant_socket();
    let mut ops = fanout_ops(PROFILE, 1, BASE, |l| (l > 1).then(|| subscriber.local_addr().unwrap()));
    for op in &mut ops {
        if let Op::UpsertLeg(l) = op
            && l.id == LegId(1)
        {
            l.rtcp = Some(Box::new(RtcpComponent { local_port: BASE + 10, remote: None }));
        }
    }
    let mut control = Client::connect(&sock).unwrap();
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops })).unwrap();
    assert!(matches!(resp, Response::Applied(_)), "{resp:?}\n{}", daemon.log_text());
    let keys = |seed| {
        let k = KeyMaterial::seeded(PROFILE, seed);
        SrtpKeys::new(k.profile, &k.key, &k.salt).unwrap()
    };
    let (up, down, sub_up, sub_down) = (keys(1), keys(101), keys(2), keys(102));
    let (mut send, mut rtcp_send, mut sub_rtcp_send) = (RtpSendState::new(), RtcpSendState::new(), RtcpSendState::new());
    let mut sub_recv = RtpRecvState::new(1024);
    let mut buf = [0u8; 2048];
    let mut forwarded = 0;
    let mut pump = |seqs: std::ops::Range<u16>, send: &mut RtpSendState, forwarded: &mut u32| {
        for seq in seqs {
            rtp.send_to(&publisher_keyframe(&up, send, seq, 200), ("127.0.0.1", BASE + 1)).unwrap();
            thread::sleep(Duration::from_millis(2));
            while let Ok(n) = subscriber.recv(&mut buf) {
                if sub_down.unprotect_rtp(&mut sub_recv, &mut buf, n).is_ok() {
                    *forwarded += 1;
                }
            }
        }
    };
    pump(0..20, &mut send, &mut forwarded);
    // The peer's sender report, from P + 1 to the RTCP port.
    let mut sr = [0u8; 64];
    let info = rtcp::SenderInfo { ntp_timestamp: 1 << 32, rtp_timestamp: 0, packet_count: 20, octet_count: 4000 };
    let n = rtcp::write_sr(&mut sr, Ssrc(0x5000), &info, &[]).unwrap();
    let mut wire = sr[..n].to_vec();
    wire.resize(n + 32, 0);
    let len = up.protect_rtcp(&mut rtcp_send, &mut wire, n).unwrap();
    rtcp_sock.send_to(&wire[..len], ("127.0.0.1", BASE + 10)).unwrap();
    thread::sleep(Duration::from_millis(50));
    pump(20..60, &mut send, &mut forwarded);
    assert!(forwarded >= 55, "the peer's RTP kept flowing after its RTCP: {forwarded}/60\n{}", daemon.log_text());
    // The subscriber asks for a keyframe: the PLI reaches the peer at P + 1, from the RTCP port.
    let mut pli = [0u8; 12];
    let n = rtcp::write_pli(&mut pli, Ssrc(0xfeed0002), Ssrc(0x9002)).unwrap();
    let mut wire = pli[..n].to_vec();
    wire.resize(n + 32, 0);
    let len = sub_up.protect_rtcp(&mut sub_rtcp_send, &mut wire, n).unwrap();
    subscriber.send_to(&wire[..len], ("127.0.0.1", BASE + 2)).unwrap();
    let mut got_pli = false;
    let mut rtcp_recv = RtcpRecvState::new(1024);
    let end = Instant::now() + Duration::from_secs(3);
    while !got_pli && Instant::now() < end {
        if let Ok((n, from)) = rtcp_sock.recv_from(&mut buf) {
            assert_eq!(from.port(), BASE + 10, "RTCP leaves from the leg's RTCP port");
            let Ok(plain) = down.unprotect_rtcp(&mut rtcp_recv, &mut buf, n) else { continue };
            got_pli = rtcp::compound(&buf[..plain]).flatten().any(|p| p.kind() == rtcp::Kind::Pli);
        }
    }
    assert!(got_pli, "no PLI at the peer's RTCP port\n{}", daemon.log_text());
}

/// Issue 15 item 6: leg ports another process holds are logged once each, at most ten per
/// worker and delta, then one line with the count; a later delta that retries them (every delta
/// with legs does) logs nothing new for them. (50,000 unbindable legs wrote 465,000 lines.)
#[test]
fn ports_that_cannot_be_opened_are_logged_once_and_summarized() {
    const BASE: u16 = 38_700;
    let dir = TempDir::new("dp-bind-log");
    let (daemon, sock) = start_daemon(&dir, "mmsg");
    let held: Vec<_> = (0..30).map(|i| std::net::UdpSocket::bind(("127.0.0.1", BASE + i)).expect("the test holds the port")).collect();
    let k = KeyMaterial::seeded(Profile::AeadAes128Gcm, 1);
    let leg = |i: u16| Op::UpsertLeg(LegSpec::new(LegId(700_000 + u32::from(i)), BASE + i, k.clone(), k.clone(), Ssrc(1)));
    let mut control = Client::connect(&sock).unwrap();
    // Every answer names the ports the dataplane could not open (all of them, each delta).
    let apply = |control: &mut Client, g: u64, ops: Vec<Op>| {
        let resp = control.call(&Request::Apply(Delta { generation: Generation(g), replace_all: false, ops })).unwrap();
        let Response::AppliedUnbound { generation, unbound } = resp else { panic!("the held ports are not named: {resp:?}") };
        assert_eq!(generation, Generation(g));
        let mut ports: Vec<u16> = unbound.iter().map(|u| u.port).collect();
        ports.sort_unstable();
        assert_eq!(ports, (BASE..BASE + 30).collect::<Vec<_>>());
        assert!(unbound.iter().all(|u| u.error.contains("in use")), "{unbound:?}");
    };
    apply(&mut control, 1, (0..30).map(leg).collect());
    let count = |log: &str, what: &str| log.lines().filter(|l| l.contains(what)).count();
    let log = daemon.log_text();
    // Two workers, 15 held ports each: ten listed and one summary line each.
    assert_eq!(count(&log, "cannot open leg port;"), 20, "{log}");
    assert_eq!(count(&log, "cannot open more leg ports"), 2, "{log}");
    assert!(log.contains("ports=5"), "{log}");
    // Another delta with a leg retries the held ports and logs nothing about them.
    apply(&mut control, 2, vec![leg(40)]);
    let log = daemon.log_text();
    assert_eq!((count(&log, "cannot open leg port;"), count(&log, "cannot open more leg ports")), (20, 2), "{log}");
    drop(held);
}

/// A real client without rtcp-mux: ffmpeg sends a PCMU tone as SRTP (AES_CM_128_HMAC_SHA1_80,
/// SDES-style keys) from its local port L to the leg's port P, and its RTCP from L + 1 to
/// P + 1, the leg's RTCP port. Sluice authenticates and forwards the audio to a subscriber,
/// which decrypts it with its own keys; ffmpeg's RTCP is taken (sender reports consumed) and
/// nothing is dropped as from an unknown source.
#[test]
fn ffmpeg_without_rtcp_mux_publishes_through_a_leg_with_its_own_rtcp_port() {
    use sluice_core::ids::{Pt, TrackId};
    use sluice_core::srtp::{RtpRecvState, SrtpKeys};
    use sluice_core::table::{Codec, PayloadSpec, RtcpComponent, SubscriptionSpec, TrackSpec};
    const P: u16 = 38_970;
    const PUBLISHER_SSRC: u32 = 0x1234_5678;
    assert!(std::path::Path::new("/usr/bin/ffmpeg").exists(), "/usr/bin/ffmpeg is missing (scripts/setup.sh installs it)");
    let dir = TempDir::new("dp-ffmpeg");
    let (daemon, sock) = start_daemon(&dir, "mmsg");
    let up = KeyMaterial::seeded(Profile::AesCm128HmacSha1_80, 7);
    let down = KeyMaterial::seeded(Profile::AesCm128HmacSha1_80, 8);
    let subscriber = participant_socket();
    let publisher = LegSpec {
        rtcp: Some(Box::new(RtcpComponent { local_port: P + 1, remote: None })),
        ..LegSpec::new(LegId(1), P, up.clone(), up.clone(), Ssrc(0xfeed_0001))
    };
    let sub_leg = LegSpec { remote: Some(subscriber.local_addr().unwrap()), ..LegSpec::new(LegId(2), P + 2, down.clone(), down.clone(), Ssrc(0xfeed_0002)) };
    // PCMU (payload type 0, 8 kHz), as ffmpeg sends it.
    let track = TrackSpec {
        clock_rate: 8000,
        payload_types: vec![PayloadSpec { pt: Pt(0), codec: Codec::Audio, rtx_pt: None }],
        ..sluice_sim::fixture::audio_track(1, 1, PUBLISHER_SSRC)
    };
    let sub = SubscriptionSpec {
        max_temporal: None,
        max_spatial: None,
        subscriber: LegId(2),
        track: TrackId(1),
        out_ssrc: Ssrc(0x2222),
        out_rtx_ssrc: None,
        pt_map: vec![(Pt(0), Pt(0))],
        ext_map: vec![],
        target_layer: 0,
        paused: false,
        priority: 0,
        relay: Vec::new(),
    };
    let ops = vec![Op::UpsertLeg(publisher), Op::UpsertLeg(sub_leg), Op::UpsertTrack(track), Op::UpsertSubscription(sub)];
    let mut control = Client::connect(&sock).unwrap();
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops })).unwrap();
    assert!(matches!(resp, Response::Applied(_)), "{resp:?}\n{}", daemon.log_text());
    // SDES inline key: base64 of the 16-byte master key and 14-byte salt.
    let key_b64 = base64(&[up.key.as_slice(), up.salt.as_slice()].concat());
    let local = {
        // ffmpeg's own ports: a free pair L, L + 1.
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let l = a.local_addr().unwrap().port();
        drop(a);
        l - l % 2
    };
    let url = format!("srtp://127.0.0.1:{P}?rtcpport={}&localrtpport={local}&localrtcpport={}", P + 1, local + 1);
    let ffmpeg = std::process::Command::new("/usr/bin/ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=8000",
            "-t",
            "3",
            "-c:a",
            "pcm_mulaw",
            "-ac",
            "1",
        ])
        .args([
            "-f",
            "rtp",
            "-ssrc",
            &PUBLISHER_SSRC.to_string(),
            "-payload_type",
            "0",
            "-srtp_out_suite",
            "AES_CM_128_HMAC_SHA1_80",
            "-srtp_out_params",
            &key_b64,
            &url,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ffmpeg starts");
    let keys = SrtpKeys::new(down.profile, &down.key, &down.salt).unwrap();
    let mut recv = RtpRecvState::new(1024);
    let mut buf = [0u8; 2048];
    let (mut got, mut bad) = (0, 0);
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end && got < 20 {
        let Ok(n) = subscriber.recv(&mut buf) else { continue };
        match keys.unprotect_rtp(&mut recv, &mut buf, n) {
            Ok(_) => got += 1,
            Err(_) => bad += 1,
        }
    }
    let out = ffmpeg.wait_with_output().unwrap();
    let stats = match control.call(&Request::Stats).unwrap() {
        Response::Stats(s) => s,
        other => panic!("{other:?}"),
    };
    let drops = |r: sluice_core::verdict::DropReason| stats.iter().map(|c| c.drops_for(r)).sum::<u64>();
    let log = daemon.log_text();
    assert!(got >= 20 && bad == 0, "the subscriber decrypted {got} packets ({bad} failed); ffmpeg: {}\n{log}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(drops(sluice_core::verdict::DropReason::UnknownSource), 0, "{log}");
    assert_eq!(drops(sluice_core::verdict::DropReason::AuthFailed), 0, "{log}");
    assert!(drops(sluice_core::verdict::DropReason::RtcpConsumed) >= 1, "ffmpeg's sender reports were taken at the RTCP port\n{log}");
}

/// Standard base64 (RFC 4648) with padding.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
