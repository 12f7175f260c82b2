//! The dataplane as a library: a [`Node`] started in this process on loopback, programmed over
//! its control socket, forwarding real SRTP, then shut down. Its own test binary, so the
//! process's thread list holds only this node's threads.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sluice_api::{Client, Request, Response};
use sluice_bench::forward::{fanout_ops, publisher_keyframe};
use sluice_core::ids::Generation;
use sluice_core::srtp::{Profile, RtpRecvState, RtpSendState, SrtpKeys};
use sluice_core::table::{Delta, KeyMaterial};
use sluice_dataplane::config::{BackendChoice, Config};
use sluice_dataplane::node::Node;
use sluice_tests::{TempDir, participant_socket};

/// Leg ports `BASE + 1..`: no other test uses this range.
const BASE: u16 = 33_400;
const SUBS: u32 = 3;
const PACKETS: u16 = 20;

/// Names of the threads a node starts (as /proc shows them, at most 15 bytes).
const NODE_THREADS: [&str; 9] = ["worker-0", "worker-1", "slow-path", "events", "control", "control-conn", "metrics", "metrics-conn", "checkpoint"];

/// This process's threads' names.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_owned())
        .collect()
}

fn node_threads() -> Vec<String> {
    thread_names().into_iter().filter(|n| NODE_THREADS.contains(&n.as_str())).collect()
}

fn config(dir: &TempDir) -> Config {
    Config {
        listen_ip: [127, 0, 0, 1].into(),
        workers: 2,
        backend: BackendChoice::Mmsg,
        control_socket: dir.path().join("dp.sock"),
        metrics: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        port_range: (BASE, BASE + 99),
        ..Config::default()
    }
}

/// Start, program one publisher and three subscribers, forward a burst of VP8 keyframes that
/// every subscriber authenticates with its own keys, shut down: every thread the node started
/// is gone, the control socket is removed and its lock released (a second node starts on it),
/// and every leg's port can be bound again.
#[test]
fn a_node_in_process_forwards_srtp_and_shuts_down_cleanly() {
    let profile = Profile::AeadAes128Gcm;
    let dir = TempDir::new("node-in-process");
    assert!(node_threads().is_empty(), "{:?}", thread_names());
    let node = Node::start(config(&dir)).expect("the node starts");
    let sock = node.control_socket().to_path_buf();
    assert!(sock.exists());
    let metrics = node.metrics_addr().expect("metrics on");
    assert_ne!(metrics.port(), 0, "the bound port, not the configured 0");

    let publisher = participant_socket();
    let subscribers: Vec<UdpSocket> = (0..SUBS).map(|_| participant_socket()).collect();
    let ops = fanout_ops(profile, SUBS, BASE, |l| (l > 1).then(|| subscribers[l as usize - 2].local_addr().unwrap()));
    let mut control = Client::connect(&sock).unwrap();
    let resp = control.call(&Request::Apply(Delta { generation: Generation(1), replace_all: false, ops })).unwrap();
    assert!(matches!(resp, Response::Applied(Generation(1))), "{resp:?}");
    assert_eq!(node.workers().generation(), Generation(1), "the library handle sees what the socket applied");

    let up = KeyMaterial::seeded(profile, 1);
    let keys = SrtpKeys::new(up.profile, &up.key, &up.salt).unwrap();
    let mut state = RtpSendState::new();
    for seq in 0..PACKETS {
        publisher.send_to(&publisher_keyframe(&keys, &mut state, seq, 400), ("127.0.0.1", BASE + 1)).unwrap();
    }
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    for (i, s) in subscribers.iter().enumerate() {
        let l = i as u32 + 2;
        let down = KeyMaterial::seeded(profile, 100 + l);
        let keys = SrtpKeys::new(down.profile, &down.key, &down.salt).unwrap();
        let mut recv = RtpRecvState::new(1024);
        let mut got = 0;
        while got < PACKETS && Instant::now() < end {
            let Ok(n) = s.recv(&mut buf) else { continue };
            let plain = keys.unprotect_rtp(&mut recv, &mut buf, n).unwrap_or_else(|e| panic!("subscriber {l}: {e:?}"));
            assert_eq!(u32::from_be_bytes(buf[8..12].try_into().unwrap()), 0x9000 + l, "its own out-SSRC");
            assert_eq!(plain, 400, "the payload arrives whole");
            got += 1;
        }
        assert_eq!(got, PACKETS, "subscriber {l}");
    }
    // Workers publish their counters between batches, now and then: wait for them.
    let mut sent = 0;
    let end = Instant::now() + Duration::from_secs(5);
    while sent < u64::from(SUBS) * u64::from(PACKETS) && Instant::now() < end {
        sent = match control.call(&Request::Stats).unwrap() {
            Response::Stats(s) => s.iter().map(|c| c.tx_packets).sum(),
            other => panic!("{other:?}"),
        };
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sent, u64::from(SUBS) * u64::from(PACKETS), "the stats count every copy");
    let scrape = {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(metrics).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    };
    assert!(scrape.contains("sluice_tx_packets_total"), "{scrape}");
    drop(control);
    assert!(node_threads().iter().any(|n| n == "worker-1"), "{:?}", thread_names());

    node.shutdown();
    // Connection threads end once they see their peers gone; everything else has been joined.
    let end = Instant::now() + Duration::from_secs(5);
    while !node_threads().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(node_threads().is_empty(), "threads left after shutdown: {:?}", thread_names());
    assert!(!sock.exists(), "the control socket is removed");
    for l in 1..=SUBS + 1 {
        let port = BASE + l as u16;
        UdpSocket::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("leg port {port} is still bound: {e}"));
    }
    assert!(std::net::TcpListener::bind(metrics).is_ok(), "the metrics port is released");
    assert!(Client::connect(&sock).is_err(), "nothing serves the socket");

    // The lock went with the endpoint: a second node takes the same socket.
    let again = Node::start(config(&dir)).expect("a second node on the same socket");
    let mut control = Client::connect(again.control_socket()).unwrap();
    assert!(matches!(control.call(&Request::Generation).unwrap(), Response::Generation(Generation(0))));
    drop(control);
    again.shutdown();
}
