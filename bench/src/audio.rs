//! The top-N audio benchmark (issue 16): what the whole dataplane process spends on an
//! audio-heavy meeting with and without top-N, in one run, on one veth pair between two network
//! namespaces it creates:
//!
//! ```text
//!  ns sx5ag<pid> "gen"                                   ns sx5ad<pid> "dut"
//!  10.57.0.2: 100 participants, one UDP socket each ──veth──▶ 10.57.0.1 sluice-dataplane,
//!  (Opus-sized SRTP with RFC 6464 levels, 50 packets/s;       1 worker, [XDP stage]
//!   3 talkers at a time, changing every 5 s; the rest
//!   quiet, every fourth noisy: -62 dBov, still not speech)
//! ```
//!
//! Three rows, each a fresh daemon: **per track** (the reference: everyone subscribes to everyone,
//! so every packet, silence too, makes 99 copies), **top-3, worker drop** (three audio slots per
//! participant, no XDP stage: silence is dropped by the worker before decryption), and **top-3,
//! XDP drop** (the same with the daemon's XDP stage, which drops the gated silence in the
//! kernel). Per row: the daemon's CPU (user + system, `/proc/<pid>/stat`) per participant and
//! second of meeting over the timed part, copies sent, and where the audio packets ended: dropped
//! in XDP, dropped by the worker before decryption, or decrypted. In the per-track row the copies
//! go back to the participants' sockets unread (the kernel drops what overflows: the generator's
//! receive is not the dataplane's cost).
//!
//! The top-N rows also check the result against the ground truth the generator knows: every
//! participant's socket is read and the distinct SSRCs it received counted (never more than the
//! 3 slots), and the dataplane's `ActiveSpeakers` events (its control socket's event stream) are
//! timed against each talker's first packet of a turn: how long until the new talker is ranked
//! (the worst over the run is reported).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sluice_core::ids::{Generation, SpeakerGroup};
use sluice_core::srtp::{Profile, RtpSendState, SrtpKeys};
use sluice_core::table::Delta;
use sluice_core::verdict::DropReason;
use sluice_dataplane::control::{Client, Request, Response};
use sluice_dataplane::xdp::PIN_ROOT;
use sluice_sim::fixture::{PT_OPUS, audio_meeting_ops, material, rtp_packet_with_level};
use sluice_sim::media::talk_pattern_level as level;

use crate::forward::process_cpu_ns;
use crate::live::metric;
use crate::netns::{NetNs, NsDataplane, PinGuard, Veth};

const DUT_IP: &str = "10.57.0.1";
const GEN_IP: &str = "10.57.0.2";
const METRICS: &str = "127.0.0.1:9312";
const EXT: u8 = 3;
const GROUP: SpeakerGroup = SpeakerGroup(0xa0d1);
const PROFILE: Profile = Profile::AeadAes128Gcm;
const BASE_PORT: u16 = 36_000;
const PACKET_MS: u64 = 20;

/// One row of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// What ran.
    pub mode: String,
    /// Daemon CPU, µs per participant per second of meeting.
    pub cpu_us_per_participant_s: f64,
    /// Audio packets the participants sent in the timed part.
    pub sent: u64,
    /// Copies the daemon sent.
    pub copies: u64,
    /// Audio packets dropped in XDP as silence.
    pub dropped_in_xdp: u64,
    /// Audio packets dropped by the worker before decryption as silence.
    pub dropped_by_worker: u64,
    /// Top-N rows: the most distinct SSRCs one participant received (at most the 3 slots).
    pub max_streams_per_participant: Option<usize>,
    /// Top-N rows: the longest a talker waited, after its turn began, to be ranked (ms), and
    /// how many turns began in the timed part.
    pub worst_rank_delay_ms: Option<u64>,
    /// Top-N rows: turns (a talker starting) seen in the run.
    pub turns: u64,
}

/// The benchmark's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Participants in the meeting.
    pub participants: u32,
    /// Timed seconds per row.
    pub seconds: f64,
    /// The rows; the first is the reference.
    pub rows: Vec<Row>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    PerTrack,
    TopNWorker,
    TopNXdp,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PerTrack => "per track (everyone to everyone)",
            Mode::TopNWorker => "top-3 slots, worker drop",
            Mode::TopNXdp => "top-3 slots, XDP drop",
        }
    }
}

fn start(dut: &NetNs, veth: &Veth, dir: &Path, name: &str, xdp: Option<&str>) -> anyhow::Result<NsDataplane> {
    let socket = dir.join(format!("{name}.sock"));
    let cfg = dir.join(format!("{name}.toml"));
    let stage = xdp.map_or_else(String::new, |instance| format!("[dataplane.xdp]\nmode = \"shield\"\ninterface = \"{}\"\ninstance = \"{instance}\"\n", veth.b));
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nlisten_ip = \"{DUT_IP}\"\nworkers = 1\ncores = [1]\nbackend = \"mmsg\"\ncontrol_socket = \"{}\"\nmetrics = \"{METRICS}\"\nport_range = [{BASE_PORT}, {}]\ncheckpoint = \"off\"\n{stage}",
            socket.display(),
            BASE_PORT + 999
        ),
    )?;
    NsDataplane::start(dut, &cfg, &socket, &dir.join(format!("{name}.log")))
}

/// One row: a fresh daemon, the meeting, `warm` then `seconds` of audio.
fn row(t: &(NetNs, NetNs, Veth), dir: &Path, mode: Mode, people: u32, warm: f64, seconds: f64) -> anyhow::Result<Row> {
    let (gen_ns, dut, veth) = t;
    let instance = format!("sx5au{}", std::process::id());
    let _pins = PinGuard(Path::new(PIN_ROOT).join(&instance));
    let d = start(dut, veth, dir, &format!("row{}", mode as u8), (mode == Mode::TopNXdp).then_some(instance.as_str()))?;
    let sockets: Vec<UdpSocket> = gen_ns.enter(|| (0..people).map(|_| UdpSocket::bind(format!("{GEN_IP}:0"))).collect::<std::io::Result<_>>())?;
    let addrs: Vec<SocketAddr> = sockets.iter().map(UdpSocket::local_addr).collect::<std::io::Result<_>>()?;
    let mut control = Client::connect(&d.socket)?;
    match control.call(&Request::Apply(Delta {
        generation: Generation(1),
        replace_all: false,
        ops: audio_meeting_ops(PROFILE, BASE_PORT, &addrs, EXT, GROUP, (mode != Mode::PerTrack).then_some(3)),
    }))? {
        Response::Applied(_) | Response::AppliedUnbound { .. } => {}
        other => bail!("the dataplane refused the meeting: {other:?}"),
    }
    let keys: Vec<SrtpKeys> = (1..=people).map(|i| material(PROFILE, i, 0)).map(|m| SrtpKeys::new(PROFILE, &m.key, &m.salt)).collect::<Result<_, _>>()?;
    let mut send: Vec<RtpSendState> = (0..people).map(|_| RtpSendState::new()).collect();
    let frames = ((warm + seconds) * 1000.0) as u64 / PACKET_MS;
    let warm_frames = (warm * 1000.0) as u64 / PACKET_MS;
    let dsts: Vec<SocketAddr> = (1..=people).map(|i| SocketAddr::new(DUT_IP.parse().expect("ip"), BASE_PORT + i as u16)).collect();
    let payload = [0x55u8; 80];
    let mut buf = [0u8; 256];
    let (mut sent, mut at_start) = (0u64, None);
    // The dataplane's rankings as they come: (when, the ranked tracks).
    let rankings = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, Vec<u32>)>::new()));
    if mode != Mode::PerTrack {
        let mut events = Client::connect(&d.socket)?;
        events.subscribe(0)?;
        let out = rankings.clone();
        std::thread::spawn(move || {
            while let Ok(r) = events.receive() {
                if let Response::Events(evs) = r {
                    for e in evs {
                        if let sluice_core::forward::Event::ActiveSpeakers { speakers, .. } = e {
                            out.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push((Instant::now(), speakers.as_slice().iter().map(|s| s.track.0).collect()));
                        }
                    }
                }
            }
        });
        for s in &sockets {
            s.set_nonblocking(true)?;
        }
    }
    // Ground truth: when each talker's turn began (its first packet of the turn).
    let mut turns: Vec<(Instant, u32)> = Vec::new();
    let mut received: Vec<std::collections::BTreeSet<u32>> = vec![Default::default(); sockets.len()];
    let mut rx = [0u8; 2048];
    let start_t = Instant::now();
    for frame in 0..frames {
        if mode != Mode::PerTrack {
            if frame % 250 == 0 {
                let now = Instant::now();
                turns.extend((1..=people).filter(|&i| level(i, frame, people).0 && (frame == 0 || !level(i, frame - 1, people).0)).map(|i| (now, i)));
            }
            for (k, s) in sockets.iter().enumerate() {
                while let Ok(n) = s.recv(&mut rx) {
                    if n >= 12 && !(192..=223).contains(&rx[1]) {
                        received[k].insert(u32::from_be_bytes([rx[8], rx[9], rx[10], rx[11]]));
                    }
                }
            }
        }
        if frame == warm_frames {
            let body = dut.http_get(METRICS, "/metrics");
            at_start = Some((process_cpu_ns(d.child.id())?, body));
        }
        for (k, s) in sockets.iter().enumerate() {
            let i = k as u32 + 1;
            let plain = rtp_packet_with_level(0x100 + i, frame as u16, frame as u32 * 960, PT_OPUS, EXT, level(i, frame, people), &payload);
            buf[..plain.len()].copy_from_slice(&plain);
            let n = keys[k].protect_rtp(&mut send[k], &mut buf, plain.len()).map_err(|e| anyhow::anyhow!("protect: {e:?}"))?;
            if s.send_to(&buf[..n], dsts[k]).is_ok() && frame >= warm_frames {
                sent += 1;
            }
        }
        if let Some(w) = (start_t + Duration::from_millis((frame + 1) * PACKET_MS)).checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let cpu1 = process_cpu_ns(d.child.id())?;
    let body = dut.http_get(METRICS, "/metrics");
    let (cpu0, body0) = at_start.context("no timed part")?;
    let delta = |key: &str| (metric(&body, key) - metric(&body0, key)).max(0.0) as u64;
    let worker_silent = format!("sluice_drops_total{{worker=\"0\",reason=\"{}\"}}", DropReason::SilentAudio.name());
    // Each turn: the first ranking that lists its talker, after the turn began.
    let ranked = rankings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let delays: Vec<u64> = turns
        .iter()
        .filter_map(|(at, who)| ranked.iter().find(|(t, tracks)| t >= at && tracks.contains(who)).map(|(t, _)| t.duration_since(*at).as_millis() as u64))
        .collect();
    let top_n = mode != Mode::PerTrack;
    if top_n && delays.len() != turns.len() {
        bail!("{} of {} talkers were never ranked after their turn began", turns.len() - delays.len(), turns.len());
    }
    Ok(Row {
        max_streams_per_participant: top_n.then(|| received.iter().map(std::collections::BTreeSet::len).max().unwrap_or(0)),
        worst_rank_delay_ms: top_n.then(|| delays.iter().copied().max().unwrap_or(0)),
        turns: turns.len() as u64,
        mode: mode.name().into(),
        cpu_us_per_participant_s: (cpu1 - cpu0) as f64 / 1e3 / f64::from(people) / seconds,
        sent,
        copies: delta("sluice_tx_packets_total"),
        dropped_in_xdp: delta("sluice_xdp_packets_total{verdict=\"silent_audio\"}"),
        dropped_by_worker: delta(&worker_silent),
    })
}

/// Runs the three rows with `people` participants, `seconds` timed each after 3 s of warm-up;
/// prints the table.
pub fn run(people: u32, seconds: f64) -> anyhow::Result<Report> {
    if !(6..=900).contains(&people) {
        bail!("participants: 6 to 900");
    }
    let gen_ns = NetNs::new("ag");
    let dut = NetNs::new("ad");
    let veth = Veth::new("au", &gen_ns, &[&format!("{GEN_IP}/24")], &dut, &[&format!("{DUT_IP}/24")]);
    let dir = std::env::temp_dir().join(format!("sluice-bench-audio-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let t = (gen_ns, dut, veth);
    let mut rows = Vec::new();
    for mode in [Mode::PerTrack, Mode::TopNWorker, Mode::TopNXdp] {
        rows.push(row(&t, &dir, mode, people, 3.0, seconds)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{people}-participant audio meeting (GCM, 50 packets/s each, 3 talkers), dataplane process CPU over {seconds} s:");
    println!("{:>34} {:>12} {:>8} {:>10} {:>12} {:>12} {:>16}", "mode", "µs/part./s", "× ref", "copies/s", "XDP drop", "worker drop", "never userspace");
    let reference = rows[0].cpu_us_per_participant_s.max(f64::MIN_POSITIVE);
    for r in &rows {
        println!(
            "{:>34} {:>12.1} {:>8.3} {:>10.0} {:>11.1}% {:>11.1}% {:>15.1}%",
            r.mode,
            r.cpu_us_per_participant_s,
            r.cpu_us_per_participant_s / reference,
            r.copies as f64 / seconds,
            100.0 * r.dropped_in_xdp as f64 / r.sent.max(1) as f64,
            100.0 * r.dropped_by_worker as f64 / r.sent.max(1) as f64,
            100.0 * r.dropped_in_xdp as f64 / r.sent.max(1) as f64,
        );
    }
    for r in rows.iter().filter(|r| r.max_streams_per_participant.is_some()) {
        println!(
            "{}: at most {} audio streams per participant; {} talker turns, each ranked at most {} ms after it began",
            r.mode,
            r.max_streams_per_participant.unwrap_or(0),
            r.turns,
            r.worst_rank_delay_ms.unwrap_or(0)
        );
    }
    Ok(Report { participants: people, seconds, rows })
}
