//! The XDP first stage and the AF_XDP backend through the real `sluice-dataplane`, on a veth pair
//! between two network namespaces this test creates (root, BPF, XDP sockets: none of it skips).
//!
//! ```text
//!  ns sx5p<pid>: participants 10.55.0.2,            ns sx5d<pid>: sluice-dataplane on 10.55.0.1,
//!  strangers 10.55.0.3, relay peer 10.55.0.4  ──veth──  XDP stage attached to its veth end
//! ```
//!
//! Participants are real SRTP endpoints (`sluice_bench::meeting`) with their own keys; every
//! datagram they receive must authenticate and arrive in sequence.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sluice_bench::meeting::{self, Participant};
use sluice_bench::netns::{NetNs, PinGuard, Veth, mac_str};
use sluice_bench::turn::Relayed;
use sluice_core::ids::Generation;
use sluice_core::srtp::Profile;
use sluice_core::table::Delta;
use sluice_dataplane::control::{Client, Request, Response};
use sluice_dataplane::xdp::{PIN_ROOT, XdpStage};
use sluice_tests::{Daemon, TempDir};

const DAEMON_IP: &str = "10.55.0.1";
const METRICS: &str = "127.0.0.1:9311";
const TURN_SECRET: &str = "the-xdp-turn-secret";

struct Topo {
    peers: NetNs,
    dp: NetNs,
    veth: Veth,
    dir: TempDir,
}

impl Topo {
    fn new(tag: &str) -> Self {
        let peers = NetNs::new(&format!("{tag}p"));
        let dp = NetNs::new(&format!("{tag}d"));
        let veth = Veth::new(tag, &peers, &["10.55.0.2/24", "10.55.0.3/24", "10.55.0.4/24"], &dp, &["10.55.0.1/24"]);
        Self { peers, dp, veth, dir: TempDir::new(&format!("xdp-{tag}")) }
    }

    /// Starts the daemon in the dataplane namespace with one worker, `backend`, XDP `mode` on
    /// its veth end, pinned as `instance`, plus `extra` TOML under `[dataplane.xdp]`.
    fn start(&self, name: &str, backend: &str, mode: &str, instance: &str, extra: &str) -> (Daemon, PathBuf) {
        let sock = self.dir.path().join(format!("{name}.sock"));
        let cfg = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[dataplane]\nlisten_ip = \"{DAEMON_IP}\"\nworkers = 1\nbackend = \"{backend}\"\ncontrol_socket = \"{}\"\nmetrics = \"{METRICS}\"\nport_range = [33000, 33999]\n\
                 [dataplane.xdp]\nmode = \"{mode}\"\ninterface = \"{}\"\ninstance = \"{instance}\"\n{extra}",
                sock.display(),
                self.veth.b
            ),
        )
        .expect("write config");
        let log = self.dir.path().join(format!("{name}.log"));
        let mut d = Daemon::start_in_netns(&self.dp.name, "sluice-dataplane", &["--config", cfg.to_str().expect("utf-8")], &log);
        assert!(d.wait_for_path(&sock, Duration::from_secs(15)), "control socket never appeared:\n{}", d.log_text());
        (d, sock)
    }

    /// [`Topo::start`] for AF_XDP (`backend = "xsk"`, `mode = "af_xdp"`), the daemon running as
    /// the package's `sluice` user with only the capabilities `caps` (setpriv: ambient, inheritable
    /// and bounding sets, as systemd's `AmbientCapabilities=` gives them). Returns the daemon and
    /// its control socket once the socket appears, or the daemon's log if it exited first.
    fn start_as_service_user(&self, name: &str, instance: &str, caps: &[&str]) -> Result<(Daemon, PathBuf), String> {
        let sock = self.dir.path().join(format!("{name}.sock"));
        let cfg = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[dataplane]\nlisten_ip = \"{DAEMON_IP}\"\nworkers = 1\nbackend = \"xsk\"\ncontrol_socket = \"{}\"\nmetrics = \"{METRICS}\"\nport_range = [33000, 33999]\n\
                 [dataplane.xdp]\nmode = \"af_xdp\"\ninterface = \"{}\"\ninstance = \"{instance}\"\n",
                sock.display(),
                self.veth.b
            ),
        )
        .expect("write config");
        let set = if caps.is_empty() { "-all".to_owned() } else { caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",") };
        let bin = sluice_tests::bin_dir().join("sluice-dataplane");
        let net = format!("--net=/run/netns/{}", self.dp.name);
        let args = [
            net.as_str(),
            "setpriv",
            "--reuid=sluice",
            "--regid=sluice",
            "--clear-groups",
            &format!("--inh-caps=-all,{set}"),
            &format!("--ambient-caps=-all,{set}"),
            &format!("--bounding-set=-all,{set}"),
            bin.to_str().expect("utf-8"),
            "--config",
            cfg.to_str().expect("utf-8"),
        ];
        let log = self.dir.path().join(format!("{name}.log"));
        let mut d = Daemon::start_path(Path::new("/usr/bin/nsenter"), &args, &log);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if sock.exists() {
                return Ok((d, sock));
            }
            if d.wait_exit(Duration::from_millis(50)).is_some() {
                return Err(d.log_text());
            }
        }
        panic!("neither started nor exited:\n{}", d.log_text());
    }

    /// The daemon's metrics, scraped from inside its namespace: `(name{labels}, value)`.
    fn metrics(&self) -> Vec<(String, u64)> {
        let body = self.dp.http_get(METRICS, "/metrics");
        body.lines().filter(|l| l.starts_with("sluice_")).filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))).collect()
    }
}

fn metric(m: &[(String, u64)], key: &str) -> u64 {
    m.iter().filter(|(k, _)| k == key).map(|(_, v)| *v).sum()
}

fn xdp_verdict(m: &[(String, u64)], verdict: &str) -> u64 {
    metric(m, &format!("sluice_xdp_packets_total{{verdict=\"{verdict}\"}}"))
}

fn stop(mut d: Daemon) -> String {
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10)).expect("SIGTERM drains and exits");
    assert!(status.success(), "exit {status:?}\n{}", d.log_text());
    d.log_text()
}

struct Meeting {
    /// Raw datagrams each participant received, sorted.
    received: Vec<Vec<Vec<u8>>>,
    /// Datagrams the flood sent from strangers, and from real addresses with unknown SSRCs.
    strangers: u64,
    forged_ssrcs: u64,
}

/// Meeting `m` (3 participants, 40 ticks of 20 ms) through the daemon at `sock`, participants in
/// the peers' namespace; with `flood`, strangers hammer every leg port meanwhile.
fn meeting(t: &Topo, sock: &Path, m: u32, flood: bool) -> Meeting {
    meeting_via(t, sock, m, flood, None).0
}

/// [`meeting`], participant 0 reaching its leg through the daemon's TURN server over UDP at
/// `turn` (ChannelData both ways) when given; also returns the packets it sent through the
/// channel once it was bound.
fn meeting_via(t: &Topo, sock: &Path, m: u32, flood: bool, turn: Option<SocketAddr>) -> (Meeting, u64) {
    const TICKS: u64 = 40;
    let (ops, mut people): (_, Vec<Participant>) = meeting::build(m, 3, Profile::AeadAes128Gcm, 1);
    let mut control = Client::connect(sock).expect("control socket");
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops })).expect("apply");
    assert!(matches!(resp, Response::Applied(Generation(1))), "{resp:?}");
    let sockets: Vec<UdpSocket> = t.peers.enter(|| people.iter().map(|_| UdpSocket::bind("10.55.0.2:0").expect("bind")).collect());
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.addr = s.local_addr().expect("addr");
        s.set_nonblocking(true).expect("nonblocking");
    }
    let sfu = |p: &Participant| SocketAddr::new(DAEMON_IP.parse().expect("ip"), p.port);
    let mut relayed = turn.map(|server| {
        let mut r = t.peers.enter(|| Relayed::udp_from("10.55.0.2:0".parse().expect("addr"), server, TURN_SECRET, 1).expect("TURN client"));
        people[0].addr = r.setup(sfu(&people[0])).expect("allocation and channel");
        r.set_nonblocking().expect("nonblocking");
        r
    });
    let mut via_channel = 0u64;
    let mut received = vec![Vec::new(); people.len()];
    let drain = |received: &mut Vec<Vec<Vec<u8>>>, relayed: &mut Option<Relayed>| {
        let mut buf = [0u8; 2048];
        for (i, s) in sockets.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                received[i].push(buf[..n].to_vec());
            }
        }
        if let Some(r) = relayed {
            received[0].extend(r.recv_media());
        }
    };
    let mut send = |i: usize, pkt: &[u8], to: SocketAddr, relayed: &mut Option<Relayed>| match relayed {
        Some(r) if i == 0 => {
            r.send_media(pkt).expect("send through the channel");
            via_channel += 1;
        }
        _ => {
            sockets[i].send_to(pkt, to).expect("send");
        }
    };
    for (i, p) in people.iter_mut().enumerate() {
        let hello = p.hello();
        send(i, &hello, sfu(p), &mut relayed);
    }
    // The hellos latch the remotes; the shield swaps the legs' wildcards for exact entries.
    thread::sleep(Duration::from_millis(300));
    drain(&mut received, &mut relayed);

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood.then(|| {
        let targets: Vec<SocketAddr> = people.iter().map(sfu).collect();
        let own: Vec<UdpSocket> = sockets.iter().map(|s| s.try_clone().expect("clone")).collect();
        let strangers: Vec<UdpSocket> = t.peers.enter(|| (0..4).map(|_| UdpSocket::bind("10.55.0.3:0").expect("bind")).collect());
        let stop = stop.clone();
        thread::spawn(move || {
            let (mut n_strange, mut n_forged) = (0u64, 0u64);
            let mut seq = 0u16;
            // About 50k datagrams/s: a flood, but bursts well under veth's 256-frame ring, so
            // what the meeting loses (nothing) is the shield's doing, not the test's.
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..4 {
                    seq = seq.wrapping_add(1);
                    for (i, dst) in targets.iter().enumerate() {
                        let mut pkt = vec![0x80, 96, (seq >> 8) as u8, seq as u8, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
                        pkt.resize(200, 0x5a);
                        for s in &strangers {
                            n_strange += u64::from(s.send_to(&pkt, dst).is_ok());
                        }
                        pkt[8..12].copy_from_slice(&(0x0bad_0000 + u32::from(seq)).to_be_bytes());
                        n_forged += u64::from(own[i].send_to(&pkt, dst).is_ok());
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
            (n_strange, n_forged)
        })
    });
    let start = Instant::now();
    for tick in 0..TICKS {
        for (i, p) in people.iter_mut().enumerate() {
            let mut pkts = vec![p.audio(tick)];
            if tick * 3 / 5 != (tick + 1) * 3 / 5 {
                pkts.extend(p.video_frame());
            }
            for pkt in pkts {
                send(i, &pkt, sfu(p), &mut relayed);
            }
        }
        drain(&mut received, &mut relayed);
        if let Some(d) = (start + Duration::from_millis(20 * (tick + 1))).checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
    }
    thread::sleep(Duration::from_millis(300));
    drain(&mut received, &mut relayed);
    stop.store(true, Ordering::Relaxed);
    let (strangers, forged_ssrcs) = flooder.map_or((0, 0), |f| f.join().expect("flooder"));
    if let Err(e) = meeting::verify_all(&mut people, &mut received) {
        panic!("{e}");
    }
    (Meeting { received, strangers, forged_ssrcs }, via_channel)
}

/// 3 participants, 40 audio ticks, 24 video frames: each gets both others' audio, one other in HD
/// (5 packets per frame) and one at the lowest layer (1).
const EXPECTED: usize = 3 * (2 * 40 + 24 * (5 + 1));

fn total(m: &Meeting) -> usize {
    m.received.iter().map(Vec::len).sum()
}

#[test]
fn af_xdp_backend_forwards_byte_identically_to_uring() {
    let t = Topo::new("fa");
    let instance = format!("sx5fa{}", std::process::id());
    let _pins = PinGuard(Path::new(PIN_ROOT).join(&instance));

    let (uring, sock) = t.start("uring", "uring", "off", &instance, "");
    let by_uring = meeting(&t, &sock, 210, false);
    let uring_log = stop(uring);
    assert!(uring_log.contains("backend=\"uring\""), "{uring_log}");

    let (xsk, sock) = t.start("xsk", "xsk", "af_xdp", &instance, "");
    let by_xsk = meeting(&t, &sock, 210, false);
    thread::sleep(Duration::from_millis(400));
    let m = t.metrics();
    let xsk_log = stop(xsk);

    assert_eq!(total(&by_uring), EXPECTED, "uring run");
    assert_eq!(total(&by_xsk), EXPECTED, "AF_XDP run\n{xsk_log}");
    assert_eq!(by_xsk.received, by_uring.received, "same input, byte-identical output on AF_XDP and uring");
    assert!(xsk_log.contains("AF_XDP socket bound"), "{xsk_log}");
    assert!(xsk_log.contains("backend=\"xsk\""), "{xsk_log}");
    // Every media datagram the participants sent (3 hellos + 3 × (40 audio + 24 × 8 video)) went
    // through the XSK, none through the kernel's UDP stack.
    let sent = 3 + 3 * (40 + 24 * 8);
    assert_eq!(xdp_verdict(&m, "redirect_xsk"), sent, "{m:?}");
    assert_eq!(xdp_verdict(&m, "pass_media"), 0, "{m:?}");
    assert_eq!(metric(&m, "sluice_rx_packets_total{worker=\"0\"}"), sent);
    assert!(xsk_log.contains("tx=\"socket\""), "copy mode sends through the leg sockets by default: {xsk_log}");

    // The same through the XSK's TX ring (headers built by the worker, the UDP checksum asked of
    // the kernel through TX metadata).
    let (ring, sock) = t.start("xsk-ring", "xsk", "af_xdp", &instance, "af_xdp_tx = \"ring\"\naf_xdp_rx_frames = 4096\n");
    let by_ring = meeting(&t, &sock, 210, false);
    let ring_log = stop(ring);
    assert!(ring_log.contains("tx=\"ring\" tx_csum_offload=true rx_frames=4096"), "{ring_log}");
    assert_eq!(total(&by_ring), EXPECTED, "AF_XDP ring run\n{ring_log}");
    assert_eq!(by_ring.received, by_uring.received, "byte-identical output through the TX ring");
}

/// A participant behind TURN over UDP: its ChannelData is unwrapped by the XDP stage (the TURN
/// server relays none of its media), with the stage passing to the worker's socket (`shield`)
/// and redirecting to AF_XDP (`af_xdp`); everyone's media authenticates with no gap, and what
/// goes back to it is ChannelData from the TURN port.
#[test]
fn a_relayed_participants_channel_data_is_unwrapped_in_xdp() {
    let t = Topo::new("tu");
    for (backend, mode) in [("uring", "shield"), ("xsk", "af_xdp")] {
        let instance = format!("sx5tu{mode}{}", std::process::id());
        let _pins = PinGuard(Path::new(PIN_ROOT).join(&instance));
        let turn = format!("[dataplane.turn]\nlisten = \"{DAEMON_IP}:3478\"\nsecret = \"{TURN_SECRET}\"\nrelay_ports = [45000, 45099]\n");
        let (d, sock) = t.start(&format!("turn-{mode}"), backend, mode, &instance, &turn);
        let (run, via_channel) = meeting_via(&t, &sock, 212, false, Some(SocketAddr::new(DAEMON_IP.parse().expect("ip"), 3478)));
        thread::sleep(Duration::from_millis(400));
        let m = t.metrics();
        let log = stop(d);
        assert_eq!(total(&run), EXPECTED, "{mode}: the meeting was untouched\n{log}");
        let unwrapped = metric(&m, "sluice_xdp_turn_unwrapped_packets_total");
        // What the TURN thread relayed from clients, by either path (its socket or the hand-off).
        let by_server: u64 = m.iter().filter(|(k, _)| k.starts_with("sluice_turn_relayed_packets_total{direction=\"to_peer\"")).map(|(_, v)| v).sum();
        // And what went back: ChannelData the worker wrote itself (hand-off), none by the socket.
        let back_socket = metric(&m, "sluice_turn_relayed_packets_total{direction=\"to_client\",path=\"socket\",transport=\"udp\"}");
        let back_handoff = metric(&m, "sluice_turn_relayed_packets_total{direction=\"to_client\",path=\"handoff\",transport=\"udp\"}");
        let got = run.received[0].len() as u64;
        assert!(
            back_socket == 0 && back_handoff >= got,
            "{mode}: to the client {back_handoff} by the worker, {back_socket} by the relayed socket; it got {got}\n{log}"
        );
        // The channel route reaches the stage a moment after the ChannelBind answer: the first
        // datagrams may still be the server's.
        assert!(
            unwrapped <= via_channel && unwrapped + 5 >= via_channel && unwrapped + by_server == via_channel,
            "{mode}: {unwrapped} of {via_channel} ChannelData datagrams unwrapped in XDP, {by_server} relayed by the TURN server\n{log}"
        );
    }
}

#[test]
fn a_flood_from_strangers_dies_in_xdp_while_the_meeting_flows() {
    let t = Topo::new("fl");
    let instance = format!("sx5fl{}", std::process::id());
    let _pins = PinGuard(Path::new(PIN_ROOT).join(&instance));
    let (d, sock) = t.start("shield", "uring", "shield", &instance, "");
    let run = meeting(&t, &sock, 211, true);
    thread::sleep(Duration::from_millis(400));
    let m = t.metrics();
    let log = stop(d);

    assert_eq!(total(&run), EXPECTED, "the meeting was untouched\n{log}");
    assert!(run.strangers >= 10_000, "only {} flood datagrams", run.strangers);
    let (unknown_source, unknown_ssrc) = (xdp_verdict(&m, "unknown_source"), xdp_verdict(&m, "unknown_ssrc"));
    // veth may drop a little of a flood before XDP sees it (its ring is 256 deep), never after.
    assert!(
        unknown_source <= run.strangers && unknown_source * 100 >= run.strangers * 95,
        "{unknown_source} of {} strangers' datagrams dropped in XDP",
        run.strangers
    );
    assert!(
        unknown_ssrc <= run.forged_ssrcs && unknown_ssrc * 100 >= run.forged_ssrcs * 95,
        "{unknown_ssrc} of {} forged SSRCs dropped in XDP",
        run.forged_ssrcs
    );
    // Nothing of the flood reached the workers: they saw only the meeting.
    for reason in ["malformed", "unknown_source", "unknown_ssrc", "auth_failed"] {
        let n = metric(&m, &format!("sluice_drops_total{{worker=\"0\",reason=\"{reason}\"}}"));
        assert_eq!(n, 0, "{n} flood datagrams reached the worker ({reason})");
    }
    assert_eq!(xdp_verdict(&m, "pass_media"), 3 + 3 * (40 + 24 * 8), "the meeting's media passed the shield");
}

#[test]
fn relay_legs_keep_forwarding_through_a_daemon_restart() {
    const K: usize = 100;
    let t = Topo::new("rr");
    let instance = format!("sx5rr{}", std::process::id());
    let _pins = PinGuard(Path::new(PIN_ROOT).join(&instance));
    // XDP_TX frames on veth are delivered only if the other end runs an XDP program too: an
    // unpinned stage with its port range off (everything passes) on the peers' end.
    let mut peer_side = XdpStage::load_unpinned().expect("load");
    t.peers.enter(|| peer_side.attach(&t.veth.a)).expect("attach the peers' end");
    peer_side.clear_port_range().expect("range off");
    let (tx, rx) = t.peers.enter(|| (UdpSocket::bind("10.55.0.2:5000"), UdpSocket::bind("10.55.0.4:6000")));
    let (tx, rx) = (tx.expect("bind"), rx.expect("bind"));
    rx.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let relay = format!(
        "[[dataplane.xdp.relays]]\nlocal_port = 33100\nremote = \"10.55.0.2:5000\"\nsrc = \"{DAEMON_IP}:33101\"\ndst = \"10.55.0.4:6000\"\ndst_mac = \"{}\"\n",
        mac_str(t.veth.mac_a)
    );
    let exchange = |round: u8| {
        for i in 0..K {
            let mut p = vec![0x80, 96, 0, i as u8, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
            p.push(round);
            tx.send_to(&p, (DAEMON_IP, 33100)).expect("send");
        }
        let mut got = 0;
        let mut buf = [0u8; 2048];
        let from: SocketAddr = format!("{DAEMON_IP}:33101").parse().expect("addr");
        while let Ok((n, src)) = rx.recv_from(&mut buf) {
            got += usize::from(src == from && n == 13 && buf[12] == round);
            if got == K {
                break;
            }
        }
        got
    };

    let (d, _) = t.start("relay1", "uring", "shield", &instance, &relay);
    assert_eq!(exchange(1), K, "relayed in the kernel by the daemon's stage");
    let log = stop(d);
    assert!(log.contains("relays=1"), "{log}");
    assert_eq!(exchange(2), K, "still relaying with no daemon running (pinned link and maps)");

    let (d, _) = t.start("relay2", "uring", "shield", &instance, &relay);
    assert_eq!(exchange(3), K, "relaying after the restart");
    thread::sleep(Duration::from_millis(400));
    let m = t.metrics();
    let log = stop(d);
    assert!(log.contains("re-using pinned XDP link"), "{log}");
    assert_eq!(xdp_verdict(&m, "relay_tx"), 3 * K as u64, "pinned counters span both runs and the gap: {m:?}");
    assert_eq!(exchange(4), K, "and after the second daemon stopped");
}

/// Issue 16 item 4 end to end: a top-N meeting (3 participants with 2 audio slots each, levels
/// in extension 3, one speaking, two quiet) through the real daemon with its XDP stage on a veth:
/// the quiet participants' packets die in XDP once the worker gated them (about 31 of every 32
/// after the first speaker tick), never reaching the worker; the speaker reaches both others'
/// slots, every copy authenticating with their own keys.
#[test]
fn top_n_silence_dies_in_xdp_and_the_speaker_is_heard() {
    use sluice_core::ids::{LegId, Pt, SpeakerGroup, Ssrc};
    use sluice_core::table::{AudioSlotsSpec, LegSpec, Op, TrackSpec};
    use sluice_sim::endpoint::Endpoint;
    use sluice_sim::fixture::{PT_OPUS, SUB_PT_OPUS, audio_track, material, rtp_packet_with_level};
    const EXT: u8 = 3;
    const GROUP: SpeakerGroup = SpeakerGroup(0x70);
    const PROFILE: Profile = Profile::AeadAes128Gcm;
    const TICKS: u64 = 150;
    let t = Topo::new("sg");
    let instance = format!("sx5sg{}", std::process::id());
    let _pins = PinGuard(Path::new(PIN_ROOT).join(&instance));
    let (d, sock) = t.start("gate", "mmsg", "shield", &instance, "");
    let sockets: Vec<UdpSocket> = t.peers.enter(|| (0..3).map(|_| UdpSocket::bind("10.55.0.2:0").expect("bind")).collect());
    let mut ops = Vec::new();
    for (i, s) in (1..=3u32).zip(&sockets) {
        let leg = LegSpec {
            remote: Some(s.local_addr().unwrap()),
            audio_slots: Some(AudioSlotsSpec {
                group: GROUP,
                out_ssrcs: vec![Ssrc(0x7000 * i), Ssrc(0x7000 * i + 1)],
                pt_map: vec![(Pt(PT_OPUS), Pt(SUB_PT_OPUS))],
                ext_map: vec![(EXT, 1)],
            }),
            ..LegSpec::new(LegId(i), 33_100 + i as u16, material(PROFILE, i, 0), material(PROFILE, i, 1), Ssrc(0xf000_0000 + i))
        };
        ops.push(Op::UpsertLeg(leg));
        ops.push(Op::UpsertTrack(TrackSpec { audio_level_ext: Some(EXT), speaker_group: Some(GROUP), ..audio_track(i, i, 0x100 + i) }));
    }
    let mut control = Client::connect(&sock).expect("control socket");
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops })).expect("apply");
    assert!(matches!(resp, Response::Applied(Generation(1))), "{resp:?}");
    let mut endpoints: Vec<Endpoint> = (1..=3).map(|i| Endpoint::new(&material(PROFILE, i, 0), &material(PROFILE, i, 1)).unwrap()).collect();
    let mut heard: Vec<Vec<u32>> = vec![Vec::new(); 3];
    for s in &sockets {
        s.set_nonblocking(true).unwrap();
    }
    let start = Instant::now();
    for tick in 0..TICKS {
        for (i, s) in sockets.iter().enumerate() {
            let level = if i == 0 { (true, 25) } else { (false, 100) };
            let plain = rtp_packet_with_level(0x101 + i as u32, tick as u16, tick as u32 * 960, PT_OPUS, EXT, level, &[0x55; 80]);
            s.send_to(&endpoints[i].protect_rtp(&plain), SocketAddr::new(DAEMON_IP.parse().unwrap(), 33_101 + i as u16)).expect("send");
        }
        let mut buf = [0u8; 2048];
        for (i, s) in sockets.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                if (192..=223).contains(&buf[1]) {
                    continue;
                }
                let plain = endpoints[i].unprotect_rtp(&mut buf[..n]).expect("a slot copy authenticates with the subscriber's keys");
                let csrc = u32::from_be_bytes(buf[12..16].try_into().unwrap());
                assert!(buf[0] & 0x0f == 1 && plain > 16, "one CSRC");
                heard[i].push(csrc);
            }
        }
        if let Some(d) = (start + Duration::from_millis(20 * (tick + 1))).checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
    }
    thread::sleep(Duration::from_millis(300));
    let m = t.metrics();
    let log = stop(d);
    let silent_xdp = xdp_verdict(&m, "silent_audio");
    let silent_worker = metric(&m, "sluice_drops_total{worker=\"0\",reason=\"silent_audio\"}");
    let passed = xdp_verdict(&m, "pass_media");
    println!("top-N silence: {silent_xdp} quiet packets dropped in XDP, {silent_worker} in the worker, {passed} media packets passed to the worker");
    // 2 x 150 quiet packets: gated after the first speaker ticks (a few hundred ms), then 31 of 32.
    assert!(silent_xdp >= 200, "{silent_xdp} quiet packets died in XDP, {silent_worker} in the worker\n{log}");
    assert!(silent_worker < 60, "the worker dropped {silent_worker} (before the gate was installed)");
    for i in [1usize, 2] {
        assert!(heard[i].iter().filter(|&&c| c == 0x101).count() > 100, "participant {} heard 1 {} times", i + 1, heard[i].len());
        assert!(heard[i].iter().all(|&c| c == 0x101), "only the speaker: {:?}", &heard[i][..heard[i].len().min(10)]);
    }
    assert!(heard[0].is_empty(), "the speaker hears nobody (the others are quiet)");
}

/// What the packaged unit gives the dataplane for AF_XDP (packaging/systemd/sluice-dataplane.service).
const SERVICE_CAPS: [&str; 5] = ["net_admin", "bpf", "perfmon", "net_raw", "ipc_lock"];

#[test]
fn af_xdp_runs_as_the_service_user_with_the_units_capabilities_and_each_is_needed() {
    let sysusers = std::fs::File::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/sluice.sysusers")).expect("sysusers entry");
    let out = std::process::Command::new("systemd-sysusers").arg("-").stdin(sysusers).output().expect("systemd-sysusers");
    assert!(out.status.success(), "{out:?}");
    let t = Topo::new("su");
    let chown = |p: &Path| {
        let out = std::process::Command::new("chown").arg("sluice:sluice").arg(p).output().expect("chown");
        assert!(out.status.success(), "{out:?}");
    };
    chown(t.dir.path());
    let instance = format!("sx5su{}", std::process::id());
    let pins = Path::new(PIN_ROOT).join(&instance);
    std::fs::create_dir_all(&pins).expect("pin dir");
    chown(&pins);
    let _pins = PinGuard(pins);

    // With the unit's five capabilities and nothing else, the sluice user forwards a meeting
    // through AF_XDP exactly as root does.
    let (d, sock) = t.start_as_service_user("svc", &instance, &SERVICE_CAPS).unwrap_or_else(|log| panic!("did not start:\n{log}"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("status");
    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).unwrap_or_default().to_owned();
    let uid = String::from_utf8(std::process::Command::new("id").args(["-u", "sluice"]).output().expect("id").stdout).expect("utf-8");
    assert_eq!(field("Uid:"), uid.trim(), "runs as sluice");
    assert_eq!(field("CapEff:"), "000000c000007000", "exactly NET_ADMIN, NET_RAW, IPC_LOCK, PERFMON, BPF");
    let m = meeting(&t, &sock, 211, false);
    thread::sleep(Duration::from_millis(400));
    let metrics = t.metrics();
    let log = stop(d);
    assert_eq!(total(&m), EXPECTED, "{log}");
    assert!(log.contains("AF_XDP socket bound"), "{log}");
    assert_eq!(xdp_verdict(&metrics, "redirect_xsk"), 3 + 3 * (40 + 24 * 8), "{metrics:?}");

    // Each of them is needed: without it the daemon refuses to start, naming the step. IPC_LOCK
    // only while the memlock limit is below the UMEM (32 MiB of receive frames plus the rings).
    let mut memlock = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut memlock) }, 0);
    for (i, missing) in SERVICE_CAPS.iter().enumerate() {
        let caps: Vec<&str> = SERVICE_CAPS.iter().copied().filter(|c| c != missing).collect();
        match t.start_as_service_user(&format!("no-{missing}"), &instance, &caps) {
            Err(log) => {
                let step = match *missing {
                    "net_raw" => "AF_XDP bind",
                    "ipc_lock" => "No buffer space available",
                    // The program array of the TURN stage's tail calls needs CAP_BPF to exist.
                    "bpf" => "failed to create map `SLUICE_PROGS`",
                    _ => "load (verify) program",
                };
                assert!(log.contains(step), "without CAP_{}: expected the failure at {step:?}:\n{log}", missing.to_uppercase());
                println!("without CAP_{}: refused ({step})", missing.to_uppercase());
            }
            Ok((d, _)) => {
                let log = stop(d);
                assert!(*missing == "ipc_lock" && memlock.rlim_cur >= 64 << 20, "started without CAP_{} (case {i}):\n{log}", missing.to_uppercase());
            }
        }
    }
}
