//! The programming-speed benchmark: how fast a change made over gRPC reaches the packets, and how
//! many changes per second the control plane and dataplane take.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sluice_controlplane::pb;
use sluice_controlplane::pb::change::Change as C;
use sluice_core::table::{Op, SubscriptionSpec};

use super::Options;
use super::daemons::{Children, Scratch, start_system};
use super::grpc::{Grpc, changes, leg_name, subscription};
use crate::meeting;

/// What the programming-speed benchmark measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgramSpeed {
    /// Subscription changes per second, one change per `Routes.Apply` (each returns after the
    /// dataplane acked it).
    pub single_changes_per_s: f64,
    /// Subscription changes per second, `batch` changes per `Routes.Apply`.
    pub batched_changes_per_s: f64,
    /// Changes per batched Apply.
    pub batch: usize,
    /// Subscription changes per second, one change per `Routes.Apply`, from `clients`
    /// concurrent callers (the control plane commits what queues up meanwhile as one group).
    pub concurrent_changes_per_s: f64,
    /// Concurrent callers behind `concurrent_changes_per_s`.
    pub clients: usize,
    /// Time from `Routes.Apply` returning (a paused audio subscription resumed) to the first
    /// packet of it reaching the subscriber, µs: p50, p99, max.
    pub first_packet_us: (f64, f64, f64),
    /// Samples behind `first_packet_us`.
    pub samples: usize,
    /// Interval between the publisher's packets, µs (the resolution of `first_packet_us`).
    pub publish_interval_us: u64,
}

/// The programming-speed benchmark: one meeting of `o.size` participants over gRPC; participant 0
/// publishes audio every `interval`; subscription (1 ← 0's audio) is paused and resumed
/// `samples` times, timing Apply-return → first packet; then changes/s, single and batched.
/// `background`: (meetings, participants each) programmed before measuring.
pub fn program_speed(
    o: &Options,
    stop: &Arc<AtomicBool>,
    samples: usize,
    changes_n: usize,
    batch: usize,
    background: (u32, u32),
    clients: usize,
) -> anyhow::Result<ProgramSpeed> {
    let dir = std::env::temp_dir().join(format!("sluice-program-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = Scratch(dir.clone());
    let mut kids = Children::default();
    let result = program_speed_with(o, stop, &scratch.0, &mut kids, samples, changes_n, batch, background, clients);
    kids.stop();
    drop(scratch);
    result
}

#[expect(clippy::too_many_arguments, reason = "the whole measurement, called once")]
fn program_speed_with(
    o: &Options,
    stop: &Arc<AtomicBool>,
    dir: &Path,
    kids: &mut Children,
    samples: usize,
    changes_n: usize,
    batch: usize,
    background: (u32, u32),
    clients: usize,
) -> anyhow::Result<ProgramSpeed> {
    let (mut grpc, _metrics, _pid) = start_system(o, stop, dir, kids)?;
    for m in 1..=background.0 {
        let (ops, _) = meeting::build(m, background.1.max(2), o.profile, 0);
        grpc.apply(pb::ChangeSet { session: format!("background-{m}"), idempotency_key: String::new(), expected_revision: None, changes: changes(&ops)? })
            .map_err(|e| anyhow::anyhow!("background Routes.Apply: {:?}: {}", e.code(), e.message()))?;
    }
    let session = "program-speed".to_string();
    let (ops, mut people) = meeting::build(0, o.size.max(2), o.profile, 0);
    let r = grpc
        .apply(pb::ChangeSet { session: session.clone(), idempotency_key: String::new(), expected_revision: None, changes: changes(&ops)? })
        .map_err(|e| anyhow::anyhow!("Routes.Apply: {:?}: {}", e.code(), e.message()))?;
    let ports: HashMap<&str, u16> = r.ports.iter().map(|a| (a.leg.as_str(), a.local_port as u16)).collect();
    for q in &mut people {
        q.port = *ports.get(leg_name(q.leg.0).as_str()).context("no port allocated")?;
    }
    // The subscription under test: participant 1 receiving participant 0's audio.
    let spec = ops
        .iter()
        .find_map(|op| match op {
            Op::UpsertSubscription(s) if s.subscriber == people[1].leg && s.track == people[0].seat.audio_track() => Some(s.clone()),
            _ => None,
        })
        .context("the meeting has no subscription 1 <- 0 audio")?;
    let sockets: Vec<UdpSocket> = people.iter().map(|_| UdpSocket::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.addr = s.local_addr()?;
        s.send_to(&p.hello(), SocketAddr::from(([127, 0, 0, 1], p.port)))?;
    }
    sockets[1].set_read_timeout(Some(Duration::from_millis(200)))?;
    // Publisher thread: audio every `interval` from participant 0.
    let interval = Duration::from_micros(500);
    let publisher_stop = Arc::new(AtomicBool::new(false));
    let mut publisher = people.remove(0);
    let pub_sock = sockets[0].try_clone()?;
    let pub_dst = SocketAddr::from(([127, 0, 0, 1], publisher.port));
    let ps = publisher_stop.clone();
    let pub_thread = std::thread::spawn(move || {
        let mut tick = 0u64;
        let start = Instant::now();
        while !ps.load(Ordering::Relaxed) {
            let _ = pub_sock.send_to(&publisher.audio(tick), pub_dst);
            tick += 1;
            let next = start + interval * tick as u32;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
    });
    let out_ssrc = spec.out_ssrc.0.to_be_bytes();
    let set_paused = |grpc: &mut Grpc, paused: bool| -> anyhow::Result<()> {
        let mut s = spec.clone();
        s.paused = paused;
        grpc.apply(pb::ChangeSet {
            session: session.clone(),
            idempotency_key: String::new(),
            expected_revision: None,
            changes: vec![pb::Change { change: Some(C::Subscription(subscription(&s))) }],
        })
        .map_err(|e| anyhow::anyhow!("Routes.Apply: {:?}: {}", e.code(), e.message()))?;
        Ok(())
    };
    let is_ours = |b: &[u8]| b.len() >= 12 && b[8..12] == out_ssrc;
    let mut buf = [0u8; 2048];
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        set_paused(&mut grpc, true)?;
        // Drain what was already in flight.
        sockets[1].set_nonblocking(true)?;
        std::thread::sleep(Duration::from_millis(3));
        while sockets[1].recv(&mut buf).is_ok() {}
        sockets[1].set_nonblocking(false)?;
        set_paused(&mut grpc, false)?;
        let t0 = Instant::now();
        loop {
            match sockets[1].recv(&mut buf) {
                Ok(n) if is_ours(&buf[..n]) => break,
                Ok(_) => {}
                Err(e) => bail!("no packet after resuming: {e}"),
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    // Changes/s: toggle the same subscription's pause flag, one change per Apply...
    let t = Instant::now();
    for i in 0..changes_n {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        set_paused(&mut grpc, i % 2 == 0)?;
    }
    let single = changes_n as f64 / t.elapsed().as_secs_f64();
    // ... and `batch` subscription changes per Apply (every subscription's target layer flips).
    let subs: Vec<SubscriptionSpec> = ops.iter().filter_map(|op| if let Op::UpsertSubscription(s) = op { Some(s.clone()) } else { None }).collect();
    let t = Instant::now();
    let mut done = 0usize;
    let mut round = 0u32;
    while done < changes_n {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let chunk: Vec<pb::Change> = (0..batch)
            .map(|k| {
                let mut s = subs[k % subs.len()].clone();
                s.paused = (round + k as u32 / subs.len() as u32) % 2 == 1;
                pb::Change { change: Some(C::Subscription(subscription(&s))) }
            })
            .collect();
        grpc.apply(pb::ChangeSet { session: session.clone(), idempotency_key: String::new(), expected_revision: None, changes: chunk })
            .map_err(|e| anyhow::anyhow!("batched Routes.Apply: {:?}: {}", e.code(), e.message()))?;
        done += batch;
        round += 1;
    }
    let batched = done as f64 / t.elapsed().as_secs_f64();
    // ... and one change per Apply from `clients` concurrent callers, each on a subscription of
    // its own (over one HTTP/2 connection, as one signaling service would).
    let clients = clients.max(1);
    let per_client = changes_n.div_ceil(clients);
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            let mut routes = grpc.routes.clone();
            let (session, s) = (session.clone(), subs[k % subs.len()].clone());
            let stop = stop.clone();
            grpc.rt.spawn(async move {
                for i in 0..per_client {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut s = s.clone();
                    s.paused = i % 2 == 0;
                    let change = pb::Change { change: Some(C::Subscription(subscription(&s))) };
                    routes
                        .apply(pb::ChangeSet { session: session.clone(), idempotency_key: String::new(), expected_revision: None, changes: vec![change] })
                        .await?;
                }
                Ok::<_, tonic::Status>(())
            })
        })
        .collect();
    for task in tasks {
        grpc.rt.block_on(task)?.map_err(|e| anyhow::anyhow!("concurrent Routes.Apply: {:?}: {}", e.code(), e.message()))?;
    }
    let concurrent = (per_client * clients) as f64 / t.elapsed().as_secs_f64();
    publisher_stop.store(true, Ordering::Relaxed);
    let _ = pub_thread.join();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    Ok(ProgramSpeed {
        single_changes_per_s: single,
        batched_changes_per_s: batched,
        batch,
        concurrent_changes_per_s: concurrent,
        clients,
        first_packet_us: (q(0.5), q(0.99), q(1.0)),
        samples: lat.len(),
        publish_interval_us: interval.as_micros() as u64,
    })
}
