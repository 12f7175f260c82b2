//! The live demo: meetings programmed over gRPC, participants sending real-time audio and
//! simulcast video, live numbers every second and a summary at the end.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_controlplane::pb;

use super::Options;
use super::daemons::{Children, Scratch, start_system, tail};
use super::grpc::{changes, leg_name};
use super::metrics::{cpu_seconds, scrape};
use crate::meeting::{self, Participant};

/// The totals at the end of a run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Packets the participants sent.
    pub sent: u64,
    /// Packets the participants received and verified.
    pub received: u64,
    /// Packets that failed to authenticate at their participant.
    pub verify_failures: u64,
    /// Sequence gaps seen by participants.
    pub gaps: u64,
    /// Whether SIGINT/SIGTERM ended the run early.
    pub interrupted: bool,
}

/// Runs the demo; `stop` is set by the SIGINT/SIGTERM handler. Prints live numbers and a summary.
pub fn run(o: &Options, stop: &Arc<AtomicBool>) -> anyhow::Result<Summary> {
    let dir = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = Scratch(dir.clone());
    let mut kids = Children::default();
    let result = run_with(o, stop, &scratch.0, &mut kids);
    let stopped = kids.stop();
    for (name, pid, status) in stopped {
        println!("  stopped {name} (pid {pid}): {status}");
    }
    if result.is_err() {
        // Show the end of the daemons' logs: the scratch directory goes away.
        for name in ["dataplane", "controlplane"] {
            let log = dir.join(format!("{name}.log"));
            if log.exists() {
                eprintln!("--- end of {name}.log ---\n{}", tail(&log, 10));
            }
        }
    }
    drop(scratch);
    result
}

fn run_with(o: &Options, stop: &Arc<AtomicBool>, dir: &Path, kids: &mut Children) -> anyhow::Result<Summary> {
    let (mut grpc, metrics, dp_pid) = start_system(o, stop, dir, kids)?;

    // --- Program the meetings, one session each; the legs' ports are the ones allocated.
    let mut people: Vec<Participant> = Vec::new();
    for m in 0..o.meetings {
        let (ops, mut p) = meeting::build(m, o.size, o.profile, o.hd_views);
        let req = pb::ChangeSet {
            session: format!("demo-meeting-{m}"),
            idempotency_key: format!("demo-create-{m}"),
            expected_revision: Some(0),
            changes: changes(&ops)?,
        };
        let r = grpc.apply(req).map_err(|e| anyhow::anyhow!("Routes.Apply for meeting {m}: {:?}: {}", e.code(), e.message()))?;
        let ports: HashMap<&str, u16> = r.ports.iter().map(|a| (a.leg.as_str(), a.local_port as u16)).collect();
        for q in &mut p {
            q.port = *ports.get(leg_name(q.leg.0).as_str()).with_context(|| format!("no port allocated for {}", leg_name(q.leg.0)))?;
        }
        people.extend(p);
    }
    let st = grpc.status().map_err(|e| anyhow::anyhow!("Node.GetStatus: {e}"))?;
    println!(
        "sluice demo: {} meetings x {} participants, {:?}, over gRPC: {} sessions, {} legs, {} tracks, {} subscriptions (table generation {})",
        o.meetings, o.size, o.profile, st.sessions, st.legs, st.tracks, st.subscriptions, st.dataplane_generation
    );
    println!("every participant sends Opus-sized audio (20 ms) + 3-layer simulcast video (30 fps) as SRTP with its own keys");
    println!("from its own UDP socket on 127.0.0.1 to its leg's port, and verifies what it receives with its own keys\n");

    // --- Media.
    let sockets: Vec<UdpSocket> = people
        .iter()
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<std::io::Result<_>>()
        .context("participant sockets")?;
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.addr = s.local_addr()?;
    }
    let sfu = |p: &Participant| SocketAddr::from(([127, 0, 0, 1], p.port));
    let mut sent = 0u64;
    let mut send_errors = 0u64;
    let mut send = |s: &UdpSocket, pkt: &[u8], to: SocketAddr| match s.send_to(pkt, to) {
        Ok(_) => sent += 1,
        Err(_) => send_errors += 1,
    };
    for (p, s) in people.iter_mut().zip(&sockets) {
        let hello = p.hello();
        send(s, &hello, sfu(p));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut buf = vec![0u8; 2048];
    let drain = |people: &mut [Participant], buf: &mut [u8]| {
        for (p, s) in people.iter_mut().zip(&sockets) {
            while let Ok(n) = s.recv(buf) {
                p.receive(&buf[..n]);
            }
        }
    };
    drain(&mut people, &mut buf);

    let first = scrape(metrics).unwrap_or_default();
    let cpu0 = cpu_seconds(dp_pid).unwrap_or(0.0);
    let start = Instant::now();
    let audio_every = Duration::from_millis(meeting::AUDIO_MS);
    let video_every = Duration::from_nanos(1_000_000_000 / meeting::FPS);
    let (mut next_audio, mut next_video, mut next_report) = (Duration::ZERO, Duration::ZERO, Duration::from_secs(1));
    let (mut audio_tick, end) = (0u64, Duration::from_secs(o.seconds));
    let mut last = (first, 0u64, cpu0, Duration::ZERO);
    println!(
        "{:>4}  {:>9}  {:>9}  {:>8}  {:>10}  {:>10}  {:>7}  {:>5}  {:>6}  {:>8}  {:>4}",
        "t", "in pkt/s", "out pkt/s", "out Mb/s", "verified/s", "verified", "verify!", "gaps", "dp cpu", "sessions", "legs"
    );
    let mut interrupted = false;
    loop {
        let t = start.elapsed();
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        if t >= end {
            break;
        }
        if t >= next_audio {
            for (p, s) in people.iter_mut().zip(&sockets) {
                let pkt = p.audio(audio_tick);
                send(s, &pkt, sfu(p));
            }
            audio_tick += 1;
            next_audio += audio_every;
        }
        if t >= next_video {
            for (p, s) in people.iter_mut().zip(&sockets) {
                for pkt in p.video_frame() {
                    send(s, &pkt, sfu(p));
                }
            }
            next_video += video_every;
        }
        drain(&mut people, &mut buf);
        if t >= next_report {
            kids.check_alive("sluice-dataplane")?;
            kids.check_alive("sluice-controlplane")?;
            let now = scrape(metrics).unwrap_or(last.0);
            let cpu = cpu_seconds(dp_pid).unwrap_or(last.2);
            let window = (t - last.3).as_secs_f64().max(1e-3);
            let received: u64 = people.iter().map(|p| p.received).sum();
            let failures: u64 = people.iter().map(|p| p.verify_failures).sum();
            let gaps: u64 = people.iter().map(|p| p.gaps).sum();
            let (sessions, legs) = match grpc.status() {
                Ok(s) => (s.sessions.to_string(), s.legs.to_string()),
                Err(_) => ("?".into(), "?".into()),
            };
            println!(
                "{:>3}s  {:>9.0}  {:>9.0}  {:>8.1}  {:>10.0}  {:>10}  {:>7}  {:>5}  {:>5.1}%  {:>8}  {:>4}",
                t.as_secs(),
                (now.rx - last.0.rx) / window,
                (now.tx - last.0.tx) / window,
                (now.tx_bytes - last.0.tx_bytes) * 8.0 / window / 1e6,
                (received - last.1) as f64 / window,
                received,
                failures,
                gaps,
                100.0 * (cpu - last.2) / window,
                sessions,
                legs,
            );
            last = (now, received, cpu, t);
            next_report += Duration::from_secs(1);
        }
        let next = next_audio.min(next_video).min(next_report);
        let wait = next.saturating_sub(start.elapsed()).min(Duration::from_millis(5));
        std::thread::sleep(wait);
    }
    // What is still in flight.
    let quiet_end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < quiet_end {
        drain(&mut people, &mut buf);
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = scrape(metrics).unwrap_or(last.0);
    let cpu = cpu_seconds(dp_pid).unwrap_or(last.2);
    let st = grpc.status().ok();
    let summary = Summary {
        sent,
        received: people.iter().map(|p| p.received).sum(),
        verify_failures: people.iter().map(|p| p.verify_failures).sum(),
        gaps: people.iter().map(|p| p.gaps).sum(),
        interrupted,
    };
    println!("\nsummary after {elapsed:.1} s{}", if interrupted { " (interrupted)" } else { "" });
    println!("  participants sent {}   send errors {}", summary.sent, send_errors);
    println!(
        "  dataplane packets in {:.0}   out {:.0}   out {:.1} Mbit/s   SRTP failures at the SFU {:.0}",
        total.rx - first.rx,
        total.tx - first.tx,
        (total.tx_bytes - first.tx_bytes) * 8.0 / elapsed / 1e6,
        total.srtp_failures
    );
    println!("  received and verified by participants {}   failed to verify {}   sequence gaps {}", summary.received, summary.verify_failures, summary.gaps);
    println!("  dataplane CPU {:.2} s ({:.1}% of one core, {} workers)", cpu - cpu0, 100.0 * (cpu - cpu0) / elapsed, o.workers);
    if let Some(s) = st {
        println!(
            "  node: {} sessions, {} legs, {} tracks, {} subscriptions, {} of {} ports free",
            s.sessions,
            s.legs,
            s.tracks,
            s.subscriptions,
            s.ports_free,
            s.port_range_end - s.port_range_start + 1
        );
    }
    Ok(summary)
}
