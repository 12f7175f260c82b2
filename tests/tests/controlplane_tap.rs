//! A recording tap through the real control plane and dataplane: the tap's subscriptions appear
//! for the tracks a session has and for later ones, and go with them, their SSRCs answered by
//! Apply and GetSession; a plain-RTP tap on loopback receives the tracks' packets unencrypted
//! on those SSRCs; plain RTP to a public address, plain RTP without its opt-in and explicit
//! subscriptions of a tap are refused naming the field; `kill -9` of the control plane and a
//! restart keep the tap (its streams, its numbering) and resync the dataplane without a change.

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use sluice_controlplane::pb;
use sluice_controlplane::pb::change::Change as C;
use sluice_core::srtp::{Profile, RtpSendState, SrtpKeys};
use sluice_core::table::KeyMaterial;
use sluice_tests::{TempDir, participant_socket};
use tonic::Code;

mod cp;
use cp::{Grpc, expect_code, session_req_with, start_controlplane_with, start_dataplane_in, wait_until};

const SESSION: &str = "taped";
/// Leg ports of this test (the recording tests use 34000-34039 and 34050-34099).
const PORTS: (u16, u16) = (34_040, 34_049);
const PROFILE: Profile = Profile::AeadAes128Gcm;

fn keys(m: &KeyMaterial) -> pb::KeyMaterial {
    pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes128Gcm as i32, key: m.key.clone(), salt: m.salt.clone() }
}

fn audio(id: &str, publisher: &str, ssrc: u32) -> pb::Change {
    pb::Change {
        change: Some(C::Track(pb::Track {
            id: id.into(),
            publisher_leg: publisher.into(),
            kind: pb::MediaKind::Audio as i32,
            clock_rate: 48_000,
            layers: vec![pb::Layer { ssrc: Some(ssrc), ..Default::default() }],
            payload_types: vec![pb::PayloadType { pt: 111, codec: pb::Codec::Audio as i32, rtx_pt: None }],
            ..Default::default()
        })),
    }
}

fn remove_track(id: &str) -> pb::Change {
    pb::Change { change: Some(C::RemoveTrack(id.into())) }
}

/// The tap's streams in an answer: (track, out-SSRC).
fn tap_streams(taps: &[pb::TapStreams]) -> Vec<(String, u32)> {
    taps.iter().find(|t| t.leg == "rec").map(|t| t.streams.iter().map(|s| (s.track.clone(), s.out_ssrc)).collect()).unwrap_or_default()
}

/// The publisher: SRTP audio packets on its tracks' SSRCs from its own socket.
struct Publisher {
    sock: UdpSocket,
    to: SocketAddr,
    keys: SrtpKeys,
    states: std::collections::HashMap<u32, RtpSendState>,
    seq: u16,
}

impl Publisher {
    fn send(&mut self, ssrc: u32, payload: &[u8]) {
        self.seq = self.seq.wrapping_add(1);
        let mut buf = vec![0x80, 111];
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&(u32::from(self.seq) * 960).to_be_bytes());
        buf.extend_from_slice(&ssrc.to_be_bytes());
        buf.extend_from_slice(payload);
        let len = buf.len();
        buf.resize(len + 16, 0);
        let st = self.states.entry(ssrc).or_default();
        let n = self.keys.protect_rtp(st, &mut buf, len).unwrap();
        self.sock.send_to(&buf[..n], self.to).unwrap();
    }
}

/// What the tap socket gets within `wait`: (SSRC, payload) of each plain RTP packet.
fn tap_received(tap: &UdpSocket, wait: Duration) -> Vec<(u32, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let end = Instant::now() + wait;
    while Instant::now() < end {
        let Ok(n) = tap.recv(&mut buf) else { continue };
        if n >= 12 && (200..=206).contains(&buf[1]) {
            continue;
        }
        assert!(n >= 12 && buf[0] >> 6 == 2, "plain RTP: {:02x?}", &buf[..n]);
        got.push((u32::from_be_bytes(buf[8..12].try_into().unwrap()), buf[12..n].to_vec()));
    }
    got
}

/// Sends `n` packets on each of `ssrcs` (payload: the SSRC's low byte, then k) and returns what
/// the tap got.
fn exchange(p: &mut Publisher, tap: &UdpSocket, ssrcs: &[u32], n: u8) -> Vec<(u32, Vec<u8>)> {
    for k in 0..n {
        for &s in ssrcs {
            p.send(s, &[s as u8, k, 0xAB, 0xCD]);
        }
        thread::sleep(Duration::from_millis(5));
    }
    tap_received(tap, Duration::from_millis(300))
}

#[test]
fn a_tap_follows_the_tracks_survives_a_control_plane_restart_and_refuses_what_contradicts_it() {
    let dir = TempDir::new("cp-tap");
    let (_dataplane, dp_sock) = start_dataplane_in(dir.path(), PORTS);
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS);
    let mut grpc = Grpc::connect(addr);
    let up = KeyMaterial::seeded(PROFILE, 31);
    let (pub_sock, tap_sock) = (participant_socket(), participant_socket());
    let leg = |id: &str, remote: SocketAddr| pb::Change {
        change: Some(C::Leg(pb::Leg {
            id: id.into(),
            rx: Some(keys(&up)),
            tx: Some(keys(&up)),
            remote: remote.to_string(),
            feedback_ssrc: 9,
            ..Default::default()
        })),
    };
    let tap = |remote: &str, plain: bool, base: u32| pb::Change {
        change: Some(C::Leg(pb::Leg {
            id: "rec".into(),
            remote: remote.into(),
            plain_rtp: plain,
            tap: Some(pb::RecordingTap { ssrc_base: base, streams: Vec::new() }),
            ..Default::default()
        })),
    };

    // --- Refused: plain RTP to a public address, plain RTP without the opt-in (no keys, no
    // plain_rtp), and a subscription named for a tap leg in the same change set.
    let s = expect_code(grpc.apply(session_req_with(SESSION, vec![tap("203.0.113.9:7000", true, 0)])), Code::InvalidArgument, "changes[0].leg.remote");
    assert!(s.message().contains("loopback, private"), "{s:?}");
    let s = expect_code(grpc.apply(session_req_with(SESSION, vec![tap("127.0.0.1:7000", false, 0)])), Code::InvalidArgument, "changes[0].leg.tx");
    assert!(s.message().contains("explicit opt-in plain_rtp"), "{s:?}");
    let mut explicit = tap(&tap_sock.local_addr().unwrap().to_string(), true, 0);
    if let Some(C::Leg(l)) = &mut explicit.change {
        l.id = "rec2".into();
    }
    let named = pb::Change {
        change: Some(C::Subscription(pb::Subscription {
            subscriber_leg: "rec2".into(),
            track: "voice".into(),
            out_ssrc: 5,
            pt_map: vec![pb::IdMapping { from: 111, to: 111 }],
            ..Default::default()
        })),
    };
    let s = expect_code(
        grpc.apply(session_req_with(SESSION, vec![leg("alice", pub_sock.local_addr().unwrap()), audio("voice", "alice", 0xA1), explicit, named])),
        Code::InvalidArgument,
        "changes[3].subscription.subscriber_leg",
    );
    assert!(s.message().contains("recording tap"), "{s:?}");
    assert_eq!(grpc.session(SESSION).unwrap_err().code(), Code::NotFound, "nothing of a refused change set stays");

    // --- A session with a track, then a plain tap on loopback: the tap gets the track at once.
    let created = grpc.apply(session_req_with(SESSION, vec![leg("alice", pub_sock.local_addr().unwrap()), audio("voice", "alice", 0xA1)])).unwrap();
    assert!(created.taps.is_empty());
    let tapped = grpc.apply(session_req_with(SESSION, vec![tap(&tap_sock.local_addr().unwrap().to_string(), true, 7_000)])).unwrap();
    assert_eq!(tap_streams(&tapped.taps), vec![("voice".to_string(), 7_000)]);
    let alice_port = tapped.taps[0].streams[0].clone();
    assert_eq!((alice_port.kind, alice_port.clock_rate, alice_port.publisher_leg.as_str()), (pb::MediaKind::Audio as i32, 48_000, "alice"));
    let view = grpc.session(SESSION).unwrap();
    let rec = view.legs.iter().find(|l| l.id == "rec").unwrap();
    assert!(rec.plain_rtp && rec.rx.is_none());
    assert_eq!(rec.tap.as_ref().map(|t| t.streams.clone()), Some(tapped.taps[0].streams.clone()), "GetSession shows what Apply answered");
    let alice = view.legs.iter().find(|l| l.id == "alice").unwrap().local_port;
    let mut publisher = Publisher {
        sock: pub_sock,
        to: SocketAddr::from(([127, 0, 0, 1], alice as u16)),
        keys: SrtpKeys::new(PROFILE, &up.key, &up.salt).unwrap(),
        states: Default::default(),
        seq: 0,
    };
    let got = exchange(&mut publisher, &tap_sock, &[0xA1], 10);
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(got.iter().enumerate().all(|(k, (ssrc, payload))| *ssrc == 7_000 && payload == &[0xA1, k as u8, 0xAB, 0xCD]), "plain, on the tap's SSRC: {got:?}");
    // A subscription named for the tap later is refused too, naming the field.
    let named = pb::Change {
        change: Some(C::Subscription(pb::Subscription {
            subscriber_leg: "rec".into(),
            track: "voice".into(),
            out_ssrc: 5,
            pt_map: vec![pb::IdMapping { from: 111, to: 111 }],
            ..Default::default()
        })),
    };
    expect_code(grpc.apply(session_req_with(SESSION, vec![named])), Code::InvalidArgument, "changes[0].subscription.subscriber_leg");

    // --- A later track joins with the next SSRC; removed, it leaves (and its packets stop).
    let added = grpc.apply(session_req_with(SESSION, vec![audio("music", "alice", 0xA2)])).unwrap();
    assert_eq!(tap_streams(&added.taps), vec![("voice".to_string(), 7_000), ("music".to_string(), 7_001)]);
    let got = exchange(&mut publisher, &tap_sock, &[0xA1, 0xA2], 10);
    assert_eq!((got.iter().filter(|(s, _)| *s == 7_000).count(), got.iter().filter(|(s, _)| *s == 7_001).count()), (10, 10), "{got:?}");
    let removed = grpc.apply(session_req_with(SESSION, vec![remove_track("music")])).unwrap();
    assert_eq!(tap_streams(&removed.taps), vec![("voice".to_string(), 7_000)]);
    let got = exchange(&mut publisher, &tap_sock, &[0xA1, 0xA2], 10);
    assert!(got.iter().all(|(s, _)| *s == 7_000) && got.len() == 10, "{got:?}");
    // The desired state; `live` (what the dataplane last reported of each leg) is not journaled.
    let before = pb::Session { live: Vec::new(), ..grpc.session(SESSION).unwrap() };
    let generation = removed.generation;

    // --- kill -9 the control plane, restart it on its state: the tap is back as it was, the
    // dataplane resynced without a change, media still reaches the tap.
    let mut cp = cp;
    cp.signal(libc::SIGKILL);
    assert!(cp.wait_exit(Duration::from_secs(5)).is_some());
    drop(grpc);
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 2, PORTS);
    let mut grpc = Grpc::connect(addr);
    let after = pb::Session { live: Vec::new(), ..grpc.session(SESSION).unwrap() };
    assert_eq!(after, before, "GetSession after the restart: the tap, its streams and flags are as they were");
    wait_until("the dataplane link", Duration::from_secs(10), || {
        let st = grpc.status();
        st.dataplane_connected && st.dataplane_generation > 0
    });
    assert_eq!(grpc.status().dataplane_generation, generation, "the restart resynced without changing anything:\n{}", cp.log_text());
    let got = exchange(&mut publisher, &tap_sock, &[0xA1], 10);
    assert!(got.len() == 10 && got.iter().all(|(s, _)| *s == 7_000), "{got:?}");
    // The numbering goes on after the restart: 7001 went to the removed track.
    let again = grpc.apply(session_req_with(SESSION, vec![audio("music", "alice", 0xA2)])).unwrap();
    assert_eq!(tap_streams(&again.taps), vec![("voice".to_string(), 7_000), ("music".to_string(), 7_002)]);
    let got = exchange(&mut publisher, &tap_sock, &[0xA2], 5);
    assert!(got.len() == 5 && got.iter().all(|(s, _)| *s == 7_002), "{got:?}");
}
