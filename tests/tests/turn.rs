//! The embedded TURN server through the real `sluice-dataplane`: a four-party SRTP meeting where
//! one participant reaches Sluice through TURN over UDP, one over TCP, one over TLS (ChannelData
//! each way) and one directly, everyone authenticating everyone's media with no sequence gap;
//! meanwhile bad clients (wrong and expired credentials, a forged nonce, a user over its quota, a
//! forbidden peer, malformed ChannelData, a TCP client that stalls mid-frame, a TLS client that
//! never finishes its handshake) are refused with the RFC's codes or dropped and counted, and the
//! meeting keeps flowing. The relayed media never takes a relayed socket: the TURN thread hands it
//! to the leg's worker in process and the workers send it back as ChannelData (two workers, so
//! legs of both get it), which the counters of each path show, per transport and direction.

mod cp;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_bench::meeting::{self, Participant};
use sluice_bench::turn::Relayed;
use sluice_core::ids::Generation;
use sluice_core::srtp::Profile;
use sluice_core::table::Delta;
use sluice_core::turn::client::{Answer, TurnClient};
use sluice_core::turn::{ChannelNumber, rest_api_credentials};
use sluice_dataplane::control::{Client, Request, Response};
use sluice_tests::{Daemon, TempDir};

const SECRET: &str = "a-turn-secret-for-the-tests";
const TURN: &str = "127.0.0.1:34860";
const TURN_TLS: &str = "127.0.0.1:34861";
const METRICS: &str = "127.0.0.1:34862";
/// Meeting 231's legs: ports 34784.. (`Seat::port`).
const MEETING: u32 = 231;

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

fn metric(text: &str, key: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

#[test]
fn a_meeting_through_turn_over_udp_tcp_and_tls_while_bad_clients_are_refused() {
    let dir = TempDir::new("turn");
    let out = std::process::Command::new(sluice_tests::bin_dir().join("sluicectl")).arg("certs").arg(dir.path()).output().expect("sluicectl certs");
    assert!(out.status.success(), "{out:?}");
    let sock = dir.path().join("dp.sock");
    let cfg = dir.path().join("dp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nlisten_ip = \"127.0.0.1\"\nworkers = 2\ncontrol_socket = \"{}\"\nmetrics = \"{METRICS}\"\nport_range = [34784, 34847]\n\
             [dataplane.turn]\nlisten = \"{TURN}\"\ntls_listen = \"{TURN_TLS}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nsecret = \"{SECRET}\"\nrelay_ports = [34870, 34899]\nstall_timeout_ms = 500\nmax_allocations_per_user = 1\n",
            sock.display(),
            dir.path().join("server.pem").display(),
            dir.path().join("server.key").display(),
        ),
    )
    .expect("config");
    let mut d = Daemon::start("sluice-dataplane", &["--config", cfg.to_str().expect("utf-8")], &dir.path().join("dp.log"));
    assert!(d.wait_for_path(&sock, Duration::from_secs(15)), "{}", d.log_text());

    let (ops, mut people): (_, Vec<Participant>) = meeting::build(MEETING, 4, Profile::AeadAes128Gcm, 1);
    let mut control = Client::connect(&sock).expect("control socket");
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops })).expect("apply");
    assert!(matches!(resp, Response::Applied(Generation(1))), "{resp:?}");
    let leg = |p: &Participant| SocketAddr::from(([127, 0, 0, 1], p.port));

    let turn: SocketAddr = TURN.parse().expect("addr");
    let mut relayed = [
        Relayed::udp(turn, SECRET, 1).expect("UDP"),
        Relayed::tcp(turn, SECRET, 2).expect("TCP"),
        Relayed::tls(TURN_TLS.parse().expect("addr"), &dir.path().join("ca.pem"), SECRET, 3).expect("TLS"),
    ];
    for (r, p) in relayed.iter_mut().zip(people.iter_mut()) {
        let addr = r.setup(leg(p)).expect("allocation and channel");
        assert!((34870..=34899).contains(&addr.port()), "{addr}");
        p.addr = addr;
    }
    let direct = UdpSocket::bind("127.0.0.1:0").expect("bind");
    direct.set_nonblocking(true).expect("nonblocking");
    people[3].addr = direct.local_addr().expect("addr");

    let mut received = vec![Vec::new(); people.len()];
    let drain = |relayed: &mut [Relayed; 3], received: &mut Vec<Vec<Vec<u8>>>| {
        for (i, r) in relayed.iter_mut().enumerate() {
            received[i].extend(r.recv_media());
        }
        let mut buf = [0u8; 2048];
        while let Ok(n) = direct.recv(&mut buf) {
            received[3].push(buf[..n].to_vec());
        }
    };
    let send = |relayed: &mut [Relayed; 3], i: usize, pkt: &[u8], port: u16| {
        if i < 3 {
            relayed[i].send_media(pkt).expect("send");
        } else {
            direct.send_to(pkt, SocketAddr::from(([127, 0, 0, 1], port))).expect("send");
        }
    };
    for (i, p) in people.iter_mut().enumerate() {
        let hello = p.hello();
        send(&mut relayed, i, &hello, p.port);
    }
    std::thread::sleep(Duration::from_millis(300));
    drain(&mut relayed, &mut received);

    const TICKS: u64 = 40;
    let start = Instant::now();
    let mut refusals_checked = false;
    for tick in 0..TICKS {
        for (i, p) in people.iter_mut().enumerate() {
            let mut pkts = vec![p.audio(tick)];
            if tick * 3 / 5 != (tick + 1) * 3 / 5 {
                pkts.extend(p.video_frame());
            }
            for pkt in pkts {
                send(&mut relayed, i, &pkt, p.port);
            }
        }
        drain(&mut relayed, &mut received);
        if tick == 10 {
            bad_clients(&dir, leg(&people[0]));
            refusals_checked = true;
        }
        if let Some(d) = (start + Duration::from_millis(20 * (tick + 1))).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    drain(&mut relayed, &mut received);
    assert!(refusals_checked);
    if let Err(e) = meeting::verify_all(&mut people, &mut received) {
        panic!("{e}\n{}", d.log_text());
    }
    // Each gets the three others' audio (40 ticks) and video: one in HD (5 packets a frame), two
    // at the lowest layer, 24 frames.
    let per = 3 * TICKS as usize + 24 * (5 + 1 + 1);
    for (i, r) in received.iter().enumerate() {
        assert_eq!(r.len(), per, "participant {i} ({})", ["TURN/UDP", "TURN/TCP", "TURN/TLS", "direct"][i]);
    }

    // The stalled clients were closed by now (500 ms).
    std::thread::sleep(Duration::from_millis(700));
    let m = scrape(METRICS);
    println!("{}", m.lines().filter(|l| l.starts_with("sluice_turn_") && !l.ends_with(" 0")).collect::<Vec<_>>().join("\n"));
    // The three participants and the client that got past the forged nonce.
    assert_eq!(metric(&m, "sluice_turn_allocations"), 4, "{m}");
    // The three participants' channels and the bad client's legitimate one.
    assert_eq!(metric(&m, "sluice_turn_routes"), 4, "{m}");
    // Every relayed participant's media went to its leg's worker in process and came back from
    // the workers: none of it took a relayed socket, over any transport, either way.
    let relayed = |direction: &str, path: &str, transport: &str| {
        metric(&m, &format!("sluice_turn_relayed_packets_total{{direction=\"{direction}\",path=\"{path}\",transport=\"{transport}\"}}"))
    };
    for transport in ["udp", "tcp", "tls"] {
        assert!(relayed("to_peer", "handoff", transport) > TICKS + 24 * 7, "{transport}: {m}");
        assert!(relayed("to_client", "handoff", transport) >= per as u64, "{transport}: {m}");
        assert_eq!(relayed("to_peer", "socket", transport), 0, "{transport}: {m}");
        assert_eq!(relayed("to_client", "socket", transport), 0, "{transport}: {m}");
    }
    assert!(!m.lines().any(|l| l.starts_with("sluice_turn_handoff_dropped_total{") && !l.ends_with(" 0")), "{m}");
    // The workers' side: both handled client datagrams (the legs are spread over them), and sent
    // what went to the UDP client themselves.
    let io = |worker: u32, counter: &str| metric(&m, &format!("sluice_io_total{{worker=\"{worker}\",counter=\"{counter}\"}}"));
    assert!(io(0, "turn_from_client") > 0 && io(1, "turn_from_client") > 0, "{m}");
    assert_eq!(io(0, "turn_from_client") + io(1, "turn_from_client"), (0..3).map(|t| relayed("to_peer", "handoff", ["udp", "tcp", "tls"][t])).sum::<u64>());
    assert!(io(0, "turn_to_client_udp") + io(1, "turn_to_client_udp") >= per as u64, "{m}");
    assert!(io(0, "turn_to_client_stream") + io(1, "turn_to_client_stream") >= 2 * per as u64, "{m}");
    for w in 0..2 {
        for counter in ["turn_queue_full", "turn_send_errors"] {
            assert_eq!(io(w, counter), 0, "worker {w} {counter}: {m}");
        }
    }
    for reason in ["bad_credentials", "expired_credentials", "peer_denied_range", "peer_control_port", "stale_nonce", "user_quota"] {
        assert!(metric(&m, &format!("sluice_turn_refusals_total{{reason=\"{reason}\"}}")) >= 1, "{reason} not counted:\n{m}");
    }
    assert!(metric(&m, "sluice_turn_refusals_total{reason=\"malformed\"}") >= 1, "{m}");
    assert!(metric(&m, "sluice_turn_connections_closed_total{reason=\"stalled\"}") >= 1, "{m}");
    assert!(metric(&m, "sluice_turn_connections_closed_total{reason=\"tls_handshake\"}") >= 1, "{m}");
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success(), "{}", d.log_text());
}

/// Clients that get nothing but a refusal, while the meeting flows.
fn bad_clients(dir: &TempDir, leg: SocketAddr) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    // Wrong password: 401 again after the challenge.
    let mut c = Relayed::udp(TURN.parse().expect("addr"), SECRET, 10).expect("UDP");
    let (user, _) = rest_api_credentials(SECRET.as_bytes(), "mallory", now + 3600);
    c.client = TurnClient::new(user, "not-the-password", [10, 1, 2, 3]);
    assert_eq!(c.transact(|c, o| c.allocate(o).expect("allocate")).expect("an answer"), Answer::Retry(401));
    // Expired credentials: 401.
    let mut c = Relayed::udp(TURN.parse().expect("addr"), SECRET, 11).expect("UDP");
    let (user, pass) = rest_api_credentials(SECRET.as_bytes(), "late", now - 10);
    c.client = TurnClient::new(user, pass, [11, 1, 2, 3]);
    assert_eq!(c.transact(|c, o| c.allocate(o).expect("allocate")).expect("an answer"), Answer::Retry(401));
    // A nonce that is not the server's: 438, then the retry with the real one succeeds.
    let mut c = Relayed::udp(TURN.parse().expect("addr"), SECRET, 12).expect("UDP");
    let mut out = [0u8; 512];
    let n = c.client.allocate(&mut out).expect("allocate");
    c.write(&out[..n]).expect("send");
    std::thread::sleep(Duration::from_millis(50));
    let challenge = c.read_frames();
    assert!(challenge.iter().any(|f| c.client.on_answer(f) == Answer::Retry(401)));
    let mut forged = c.client.clone();
    forged.on_answer(&forged_challenge());
    c.client = forged;
    assert!(matches!(c.transact(|c, o| c.allocate(o).expect("allocate")).expect("an answer"), Answer::Success { .. }));
    // A second allocation of participant-1's user (quota 1): 486.
    let mut again = Relayed::udp(TURN.parse().expect("addr"), SECRET, 1).expect("UDP");
    assert_eq!(again.transact(|c, o| c.allocate(o).expect("allocate")).expect("an answer"), Answer::Error(486));
    // Forbidden peers: another port of the node (not a leg), the metrics endpoint.
    let metrics: SocketAddr = METRICS.parse().expect("addr");
    let ch = ChannelNumber::new(0x4001).expect("channel");
    assert_eq!(c.transact(|c, o| c.channel_bind(ch, SocketAddr::from(([127, 0, 0, 1], 22)), o).expect("bind")).expect("an answer"), Answer::Error(403));
    assert_eq!(c.transact(|c, o| c.channel_bind(ch, metrics, o).expect("bind")).expect("an answer"), Answer::Error(403));
    // A legitimate binding, then malformed ChannelData (a length beyond the datagram).
    assert!(matches!(c.transact(|c, o| c.channel_bind(ch, leg, o).expect("bind")).expect("an answer"), Answer::Success { .. }));
    c.write(&[0x40, 0x01, 0x04, 0x00, 1, 2, 3]).expect("send");
    c.write(&[0x4f]).expect("send");
    // TCP: half a frame, then silence; TLS: connect, never handshake.
    let mut half = TcpStream::connect(TURN).expect("tcp");
    half.write_all(&[0x00, 0x03, 0x00, 0x08, 0x21, 0x12]).expect("write");
    let _silent_tls = TcpStream::connect(TURN_TLS).expect("tls");
    std::thread::sleep(Duration::from_millis(50));
    let _ = dir;
    std::mem::forget(half);
    std::mem::forget(_silent_tls);
}

/// A 401 carrying the server's realm and a nonce it never issued.
fn forged_challenge() -> Vec<u8> {
    // Error response to Allocate (0x0113), transaction id of client 12's first request, ERROR-CODE 401, REALM
    // "sluice", NONCE "forged-nonce".
    let mut m = vec![0x01, 0x13, 0, 0, 0x21, 0x12, 0xa4, 0x42, 12, 0x75, 0x72, 0x6e, 0, 0, 0, 0, 0, 0, 0, 1];
    let attr = |m: &mut Vec<u8>, kind: u16, v: &[u8]| {
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&(v.len() as u16).to_be_bytes());
        m.extend_from_slice(v);
        m.resize(m.len().next_multiple_of(4), 0);
    };
    attr(&mut m, 0x0009, &[0, 0, 4, 1]);
    attr(&mut m, 0x0014, b"sluice");
    attr(&mut m, 0x0015, b"forged-nonce");
    let len = (m.len() - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m
}

/// `Routes.TurnCredentials` hands out what the dataplane's TURN server takes; bad requests get a
/// precise status; a node without `[controlplane.turn]` says so.
#[test]
fn the_control_plane_hands_out_turn_credentials_the_turn_server_accepts() {
    let dir = TempDir::new("turn-cp");
    let sock = dir.path().join("dp.sock");
    let cfg = dir.path().join("dp.toml");
    let turn = "127.0.0.1:34863";
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nlisten_ip = \"127.0.0.1\"\nworkers = 1\ncontrol_socket = \"{}\"\nmetrics = \"off\"\nport_range = [34848, 34859]\n[dataplane.turn]\nlisten = \"{turn}\"\nsecret = \"{SECRET}\"\nrelay_ports = [34864, 34869]\n",
            sock.display()
        ),
    )
    .expect("config");
    let mut d = Daemon::start("sluice-dataplane", &["--config", cfg.to_str().expect("utf-8")], &dir.path().join("dp.log"));
    assert!(d.wait_for_path(&sock, Duration::from_secs(15)), "{}", d.log_text());
    let (_cp, grpc) = cp::start_controlplane_cfg(
        dir.path(),
        &sock,
        1,
        (34848, 34859),
        &format!(
            "plaintext = true\n[controlplane.turn]\nsecret = \"{SECRET}\"\nurls = [\"turn:{turn}?transport=udp\", \"turn:{turn}?transport=tcp\"]\ndefault_ttl_seconds = 3600\nmax_ttl_seconds = 7200\n"
        ),
    );
    let grpc = grpc.to_string();
    let (ok, out, err) = cp::sluicectl(&["--addr", &grpc, "--json", "turn-credentials", "--user", "alice"]);
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["ttlSeconds"], 3600, "{v}");
    let username = v["username"].as_str().expect("username").to_owned();
    let password = v["password"].as_str().expect("password").to_owned();
    assert!(username.ends_with(":alice"), "{username}");
    assert_eq!(v["urls"][1], format!("turn:{turn}?transport=tcp"));
    // The TURN server takes them.
    let mut c = Relayed::udp(turn.parse().expect("addr"), SECRET, 20).expect("UDP");
    c.client = TurnClient::new(username, password, [20, 1, 2, 3]);
    assert!(matches!(c.transact(|c, o| c.allocate(o).expect("allocate")).expect("an answer"), Answer::Success { relayed: Some(_), .. }));
    // Bad requests.
    let (ok, _, err) = cp::sluicectl(&["--addr", &grpc, "turn-credentials", "--user", ""]);
    assert!(!ok && err.contains("InvalidArgument") && err.contains("user"), "{err}");
    let (ok, _, err) = cp::sluicectl(&["--addr", &grpc, "turn-credentials", "--user", "bob", "--ttl", "7201"]);
    assert!(!ok && err.contains("InvalidArgument") && err.contains("ttl_seconds"), "{err}");
    d.signal(libc::SIGTERM);
    let _ = d.wait_exit(Duration::from_secs(10));

    // A node without [controlplane.turn].
    let other = TempDir::new("turn-cp-none");
    let (_cp2, grpc2) = cp::start_controlplane_with(other.path(), &other.path().join("none.sock"), 2, (34848, 34859));
    let (ok, _, err) = cp::sluicectl(&["--addr", &grpc2.to_string(), "turn-credentials", "--user", "alice"]);
    assert!(!ok && err.contains("FailedPrecondition") && err.contains("controlplane.turn"), "{err}");
}
