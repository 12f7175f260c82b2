//! Meetings across nodes: two complete nodes (each a `sluice-dataplane` in a network namespace of
//! its own, with its `sluice-controlplane`), joined by a cascade leg programmed over each node's
//! gRPC with the keys the signaling (this test) gives both ends, and a 6-party meeting with three
//! simulated SRTP participants on each node (in a third namespace, reaching each node over a
//! veth of its own; the nodes reach each other over a third veth).
//!
//! On each node the cascade leg subscribes to every local track as a relay (every simulcast
//! layer on a stream of its own, the publisher's SSRCs kept) and publishes the other node's
//! tracks; the local participants subscribe to those like to any track, each choosing its layer.
//! Shown: every participant receives and authenticates every other's audio and video, with no
//! sequence gap, across the link; of each publisher, the layers the far node watches cross the
//! link, each packet once, and no other (the far node tells the near one in RTCP, the cascade
//! legs being marked `cascade`; the link's packet count against what the publishers sent); a NACK from a subscriber on node B for a
//! packet lost before node A reaches the publisher on A in its own sequence space; a PLI from a
//! subscriber on B reaches the publisher on A; a stranger on the cascade port and a cascade leg
//! whose keys the other node does not have are dropped and counted (`unknown_source`,
//! `auth_failed`) while the rest of the meeting goes on, and the right keys bring it back.
//!
//! Also: a GStreamer subscriber on one node decodes a GStreamer publisher on the other; and a
//! node killed with SIGKILL mid-meeting has its meeting adopted by the other node from the
//! desired state it kept in Redis (a real `redis-server`), media flowing again within 3 s of its
//! heartbeat's expiry; and a live meeting moves from one node to the other with every stream
//! continuous (Export with freeze, Import), a move to a draining node refused first.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use sluice_bench::live::leg_name;
use sluice_bench::meeting::{self, LAYER_PACKETS};
use sluice_bench::netns::{NetNs, Veth};
use sluice_controlplane::pb;
use sluice_core::ids::Ssrc;
use sluice_core::ids::{LegId, Pt};
use sluice_core::srtp::Profile;
use sluice_core::table::{KeyMaterial, LayerSpec, LegSpec, Op, SubscriptionSpec, TrackSpec};
use sluice_sim::fixture::{PT_OPUS, PT_VP8, PT_VP8_RTX, leg_spec, material, subscription, video_track};
use sluice_tests::{Daemon, TempDir};

mod cp;
use cp::{Grpc, Media, changes, start_controlplane_cfg, start_dataplane_at, sum};

const PROFILE: Profile = Profile::AeadAes128Gcm;
const MEETING: u32 = 7;
const PEOPLE: u32 = 6;
/// Leg ports of node A and node B: no other test uses these.
const PORTS: [(u16, u16); 2] = [(34_200, 34_239), (34_240, 34_279)];
/// The nodes' addresses (on their loopback, routed over the veths).
const NODE_IP: [&str; 2] = ["10.77.0.1", "10.77.0.2"];
/// The participants' address towards each node.
const PEOPLE_IP: [&str; 2] = ["10.77.1.1", "10.77.2.1"];
/// The cascade legs: A's (towards B) and B's (towards A); one key pair, mirrored.
const CASCADE: [u32; 2] = [9_001, 9_002];
/// Each node's metrics, inside its namespace.
const METRICS: &str = "127.0.0.1:9500";
/// The GStreamer test's leg ports, and its subscriber's port in the participants' namespace.
const GST_PORTS: [(u16, u16); 2] = [(34_280, 34_289), (34_290, 34_299)];
const GST_SINK_PORT: u16 = 34_300;
/// The node-failure test's leg ports.
const FAIL_PORTS: [(u16, u16); 2] = [(34_310, 34_329), (34_330, 34_349)];
/// The migration test's leg ports.
const MOVE_PORTS: [(u16, u16); 2] = [(34_350, 34_369), (34_370, 34_389)];

/// The cascade leg of node `n`: it receives what the other node sends (`material(.., 0)` is
/// what B sends A) and sends with the other direction's keys.
fn cascade_leg(n: usize, remote: Option<SocketAddr>) -> LegSpec {
    let (ab, ba) = (material(PROFILE, CASCADE[0], 1), material(PROFILE, CASCADE[0], 0));
    let (rx, tx) = if n == 0 { (ba, ab) } else { (ab, ba) };
    LegSpec { remote, cascade: true, ..leg_spec(CASCADE[n], 0, rx, tx) }
}

/// Node `n`'s tables, from the one-node meeting `all`: its participants' legs, tracks and
/// subscriptions; the other node's tracks published by its cascade leg; and a relay subscription
/// of the cascade leg to each local track (every layer, the publisher's SSRCs kept).
fn node_ops(n: usize, all: &[Op], local: &[LegId]) -> Vec<Op> {
    let cascade = LegId(CASCADE[n]);
    let same_pts = vec![(Pt(PT_OPUS), Pt(PT_OPUS)), (Pt(PT_VP8), Pt(PT_VP8)), (Pt(PT_VP8_RTX), Pt(PT_VP8_RTX))];
    let (mut legs, mut tracks, mut subs) = (vec![Op::UpsertLeg(cascade_leg(n, None))], Vec::new(), Vec::new());
    for op in all {
        match op {
            Op::UpsertLeg(l) if local.contains(&l.id) => legs.push(op.clone()),
            Op::UpsertTrack(t) if local.contains(&t.publisher) => {
                tracks.push(op.clone());
                let lane = |l: &sluice_core::table::LayerSpec| (l.ssrc.expect("signalled"), l.rtx_ssrc);
                let (out_ssrc, out_rtx_ssrc) = lane(&t.layers[0]);
                subs.push(Op::UpsertSubscription(SubscriptionSpec {
                    subscriber: cascade,
                    track: t.id,
                    out_ssrc,
                    out_rtx_ssrc,
                    pt_map: same_pts.clone(),
                    ext_map: Vec::new(),
                    target_layer: 0,
                    paused: false,
                    priority: 0,
                    max_spatial: None,
                    max_temporal: None,
                    relay: t.layers[1..].iter().map(lane).collect(),
                }));
            }
            Op::UpsertTrack(t) => {
                let mut t = t.clone();
                t.publisher = cascade;
                tracks.push(Op::UpsertTrack(t));
            }
            Op::UpsertSubscription(s) if local.contains(&s.subscriber) => subs.push(op.clone()),
            _ => {}
        }
    }
    legs.into_iter().chain(tracks).chain(subs).collect()
}

fn session(changes: Vec<pb::Change>) -> pb::ChangeSet {
    pb::ChangeSet { session: format!("meeting-{MEETING}"), idempotency_key: String::new(), expected_revision: None, changes }
}

/// A veth end's transmitted packets, read inside its namespace.
fn tx_packets(ns: &NetNs, dev: &str) -> u64 {
    ns.exec("cat", &[&format!("/sys/class/net/{dev}/statistics/tx_packets")]).trim().parse().expect("a count")
}

/// A node: its dataplane (in its namespace), its control plane and a gRPC client to it.
struct Node {
    dp: Daemon,
    cp: Daemon,
    grpc: Grpc,
}

/// The participants' namespace (P), two complete nodes in namespaces of their own (A, B), a
/// veth from P to each node and one between the nodes (`link`).
struct TwoNodes {
    p: NetNs,
    a: NetNs,
    _b: NetNs,
    link: Veth,
    _veths: [Veth; 2],
    nodes: Vec<Node>,
    /// Leg ports by "node/leg".
    ports: BTreeMap<String, u16>,
    dir: TempDir,
}

impl TwoNodes {
    /// `tag`: one letter, so this test's namespaces and interfaces are its own; `ports`: each
    /// node's leg port range.
    fn start(tag: &str, ports: [(u16, u16); 2]) -> Self {
        Self::start_with(tag, ports, &|_| "plaintext = true\n".to_owned())
    }

    /// [`TwoNodes::start`], node `n`'s control plane configured with `extra(n)`.
    fn start_with(tag: &str, ports: [(u16, u16); 2], extra: &dyn Fn(usize) -> String) -> Self {
        let dir = TempDir::new(&format!("cascade-{tag}"));
        let (p, a, b) = (NetNs::new(&format!("{tag}p")), NetNs::new(&format!("{tag}a")), NetNs::new(&format!("{tag}b")));
        let to_a = Veth::new(&format!("{tag}a"), &p, &["10.77.1.1/24"], &a, &["10.77.1.2/24"]);
        let to_b = Veth::new(&format!("{tag}b"), &p, &["10.77.2.1/24"], &b, &["10.77.2.2/24"]);
        let link = Veth::new(&format!("{tag}l"), &a, &["10.77.3.1/24"], &b, &["10.77.3.2/24"]);
        for (ns, ip) in [(&a, NODE_IP[0]), (&b, NODE_IP[1])] {
            ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        }
        p.ip(&["route", "add", &format!("{}/32", NODE_IP[0]), "via", "10.77.1.2"]);
        p.ip(&["route", "add", &format!("{}/32", NODE_IP[1]), "via", "10.77.2.2"]);
        a.ip(&["route", "add", &format!("{}/32", NODE_IP[1]), "via", "10.77.3.2"]);
        b.ip(&["route", "add", &format!("{}/32", NODE_IP[0]), "via", "10.77.3.1"]);
        let mut nodes = Vec::new();
        for (n, ns) in [&a, &b].into_iter().enumerate() {
            let d = dir.path().join(format!("node-{n}"));
            std::fs::create_dir_all(&d).unwrap();
            let (dp, sock) = start_dataplane_at(&d, ports[n], Some(&ns.name), NODE_IP[n], METRICS);
            let (cp, addr) = start_controlplane_cfg(&d, &sock, 0, ports[n], &extra(n));
            nodes.push(Node { dp, cp, grpc: Grpc::connect(addr) });
        }
        Self { p, a, _b: b, link, _veths: [to_a, to_b], nodes, ports: BTreeMap::new(), dir }
    }

    /// Applies `ops` to node `n`'s meeting; remembers the ports its legs got.
    fn apply(&mut self, n: usize, ops: &[Op]) {
        let node = &mut self.nodes[n];
        let r = node.grpc.apply(session(changes(ops))).unwrap_or_else(|e| panic!("node {n}: {e:?}\n{}", node.cp.log_text()));
        for a in &r.ports {
            self.ports.insert(format!("{n}/{}", a.leg), a.local_port as u16);
        }
    }

    /// The port leg `leg` got on node `n`.
    fn port(&self, n: usize, leg: u32) -> u16 {
        self.ports[&format!("{n}/{}", leg_name(leg))]
    }

    /// Node `n`'s packets dropped for `reason` (its metrics, all workers).
    fn drops(&self, n: usize, reason: &str) -> u64 {
        let text = [&self.a, &self._b][n].http_get(METRICS, "/metrics");
        let label = format!("reason=\"{reason}\"");
        text.lines().filter(|l| l.starts_with("sluice_drops_total{") && l.contains(&label)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
    }

    /// Points each cascade leg at the other node's (known once both exist).
    fn connect_cascade(&mut self) {
        for n in 0..2 {
            let other = 1 - n;
            let remote = SocketAddr::new(NODE_IP[other].parse().unwrap(), self.port(other, CASCADE[other]));
            self.apply(n, &[Op::UpsertLeg(cascade_leg(n, Some(remote)))]);
        }
    }
}

#[test]
fn a_meeting_across_two_nodes_over_a_cascade_leg() {
    let mut two = TwoNodes::start("c", PORTS);
    // The meeting: seats 0-2 on node A, 3-5 on node B.
    let (all, mut people) = meeting::build(MEETING, PEOPLE, PROFILE, 1);
    let on = |i: usize| usize::from(i >= 3);
    for n in 0..2 {
        let local: Vec<LegId> = people.iter().enumerate().filter(|(i, _)| on(*i) == n).map(|(_, p)| p.leg).collect();
        two.apply(n, &node_ops(n, &all, &local));
    }
    two.connect_cascade();
    let p = &two.p;
    let (a, link) = (&two.a, &two.link);
    let sfu_ip: Vec<IpAddr> = (0..people.len()).map(|i| NODE_IP[on(i)].parse().unwrap()).collect();
    for (i, person) in people.iter_mut().enumerate() {
        person.port = two.port(on(i), person.leg.0);
    }
    let sockets: Vec<UdpSocket> =
        (0..people.len()).map(|i| p.enter(|| UdpSocket::bind(SocketAddr::new(PEOPLE_IP[on(i)].parse::<Ipv4Addr>().unwrap().into(), 0)).unwrap())).collect();
    for (person, s) in people.iter_mut().zip(&sockets) {
        person.addr = s.local_addr().unwrap();
    }
    let mut media = Media { people, sockets, tick: 0, sfu_ip };

    // Everyone gets everyone else: five audio streams, one other at the top layer and four at
    // the lowest, the four from the other node through the cascade.
    let video_per_frame = u64::from(LAYER_PACKETS[2] + 4 * LAYER_PACKETS[0]);
    media.hello();
    media.settle(|_, ticks, frames| 5 * ticks + frames * video_per_frame);
    // Past the time after which node B tells node A the layers nobody on B watches.
    media.run(150, |_| {});
    let link_before = tx_packets(a, &link.a);
    let (got, frames) = media.run(50, |_| {});
    let link_rtp = tx_packets(a, &link.a) - link_before;
    for (i, c) in got.iter().enumerate() {
        assert_eq!(sum(c), 5 * 50 + frames * video_per_frame, "participant {i}: {c:?}");
        assert_eq!(c.len(), 10, "participant {i} hears and sees the five others: {c:?}");
    }
    // Node B's subscribers watch seat 0 at layers 0 and 2 (seat 5 in HD) and seats 1 and 2 at
    // layer 0: those layers of A's publishers cross the link, each packet once (the three
    // subscribers on B get their copies from B), and no other (B told A so), plus a few RTCP
    // packets.
    let published = 3 * (50 + frames * u64::from(LAYER_PACKETS.iter().sum::<u16>()));
    let wanted = 3 * 50 + frames * u64::from(3 * LAYER_PACKETS[0] + LAYER_PACKETS[2]);
    eprintln!("link A -> B: {link_rtp} packets for the {wanted} of the layers B watches; A's three participants published {published} ({frames} frames)");
    assert!(
        link_rtp >= wanted && link_rtp <= wanted + wanted / 20 + 20,
        "A sent {link_rtp} packets over the link for the {wanted} B watches (all layers: {published}; a copy per subscriber on B: ~{})",
        3 * wanted
    );

    // A NACK from a subscriber on B for a packet lost before node A reaches the publisher on A.
    // Seat 0's layer-0 packet of the next frame never reaches A; seat 3 watches seat 0's
    // lowest layer, sees the gap and asks for it.
    let video = media.people[0].seat.video_track();
    let watched = media.people[3].seat.out_ssrc(video).0;
    let lost_seq = {
        let mut frame = media.people[0].video_frame();
        let lost = frame.remove(0);
        let to = media.sfu(0);
        for pkt in frame {
            media.sockets[0].send_to(&pkt, to).unwrap();
        }
        u16::from_be_bytes([lost[2], lost[3]])
    };
    media_frames(&mut media, 3);
    let missing: Vec<u16> = media.people[3].missing.iter().filter(|m| m.0 == watched).map(|m| m.1).collect();
    assert_eq!(missing.len(), 1, "seat 3 saw one packet of seat 0 missing: {:?}", media.people[3].missing);
    media.people[3].missing.clear();
    let nack = media.people[3].nack(watched, &missing);
    let to = media.sfu(3);
    media.sockets[3].send_to(&nack, to).unwrap();
    let layer0 = media.people[0].seat.layer_ssrc(0).0;
    wait_for(&mut media, "the NACK at the publisher", |m| m.people[0].nacks_received.contains(&(layer0, lost_seq)));

    // A PLI from a subscriber on B reaches the publisher on A (none arrives without it).
    media_frames(&mut media, 10);
    let before = media.people[0].plis_received;
    media_frames(&mut media, 10);
    assert_eq!(media.people[0].plis_received, before, "no keyframe request while nothing asks");
    let watched = media.people[4].seat.out_ssrc(video).0;
    let pli = media.people[4].pli(watched);
    let to = media.sfu(4);
    media.sockets[4].send_to(&pli, to).unwrap();
    wait_for(&mut media, "the PLI at the publisher", |m| m.people[0].plis_received > before);
    for (i, person) in media.people.iter().enumerate() {
        assert_eq!(person.verify_failures, 0, "participant {i}: datagrams that did not authenticate");
    }

    // Bad input on the cascade port. A stranger (node B's address, another port) is dropped
    // and counted, and reaches no one.
    let cascade_a = SocketAddr::new(NODE_IP[0].parse().unwrap(), two.port(0, CASCADE[0]));
    let unknown = two.drops(0, "unknown_source");
    let stranger = two._b.enter(|| UdpSocket::bind(SocketAddr::new(NODE_IP[1].parse::<Ipv4Addr>().unwrap().into(), 0)).unwrap());
    for tick in 0..20 {
        stranger.send_to(&media.people[3].audio(1000 + tick), cascade_a).unwrap();
    }
    cp::wait_until("the stranger's packets counted", Duration::from_secs(5), || two.drops(0, "unknown_source") >= unknown + 20);
    // Node B's cascade leg sending with keys node A does not have (a signaling mistake): A
    // refuses every packet as failing authentication, its participants get nothing from B's,
    // the rest of the meeting goes on; with the right keys again, B's media is back.
    let remote_a = Some(cascade_a);
    let wrong = LegSpec { tx: material(PROFILE, 4_242, 0), ..cascade_leg(1, remote_a) };
    two.apply(1, &[Op::UpsertLeg(wrong)]);
    media_frames(&mut media, 5);
    let failed = two.drops(0, "auth_failed");
    let (got, _) = media_frames(&mut media, 10);
    let from_b: Vec<u32> =
        (3..6).flat_map(|k| [media.people[k].seat.audio_track(), media.people[k].seat.video_track()]).map(|t| media.people[0].seat.out_ssrc(t).0).collect();
    assert!(got[0].keys().all(|s| !from_b.contains(s)), "seat 0 got B's media through a leg with wrong keys: {:?}", got[0]);
    assert!(got[0].len() == 4, "seat 0 still gets seats 1 and 2: {:?}", got[0]);
    assert!(two.drops(0, "auth_failed") >= failed + 30, "A counts B's packets as failing authentication");
    two.connect_cascade();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (got, _) = media_frames(&mut media, 3);
        if from_b.iter().all(|s| got[0].contains_key(s)) {
            break;
        }
        assert!(Instant::now() < end, "seat 0 never got B's seats back: {:?}", got[0]);
    }
}

/// Sends `frames` video frames (and the audio between them) from every participant, reading
/// what arrives; returns the packets received per participant by SSRC and the frames sent.
fn media_frames(media: &mut Media, frames: u64) -> (Vec<HashMap<u32, u64>>, u64) {
    let mut sent = 0;
    let mut got = vec![HashMap::new(); media.people.len()];
    while sent < frames {
        let tick = media.tick;
        media.tick += 1;
        let video = tick * 3 / 5 != (tick + 1) * 3 / 5;
        sent += u64::from(video);
        for i in 0..media.people.len() {
            let mut pkts = vec![media.people[i].audio(tick)];
            if video {
                pkts.extend(media.people[i].video_frame());
            }
            let to = media.sfu(i);
            for pkt in pkts {
                media.sockets[i].send_to(&pkt, to).unwrap();
            }
        }
        thread::sleep(Duration::from_millis(20));
        for (t, c) in got.iter_mut().zip(media.drain()) {
            for (k, v) in c {
                *t.entry(k).or_default() += v;
            }
        }
    }
    (got, sent)
}

/// Keeps the meeting flowing until `done` holds (at most 5 s).
fn wait_for(media: &mut Media, what: &str, done: impl Fn(&Media) -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !done(media) {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        media_frames(media, 1);
    }
    media.drain();
}

/// GStreamer at both ends of a cascade: a publisher on node A (a live VP8 test pattern, SRTP
/// AEAD_AES_128_GCM through `srtpenc`) and a subscriber on node B (`srtpdec` → `vp8dec`, the
/// decoded frames written to a file), the track crossing from A to B on the cascade leg.
#[test]
fn a_gstreamer_subscriber_on_one_node_decodes_a_gstreamer_publisher_on_the_other() {
    const GST: &str = "/usr/bin/gst-launch-1.0";
    assert!(std::path::Path::new(GST).exists(), "{GST} is missing (scripts/setup.sh installs it)");
    const PUBLISHER: u32 = 9_100;
    const SUBSCRIBER: u32 = 9_101;
    const TRACK: u32 = 9_200;
    const SSRC: u32 = 0x4242_0001;
    const OUT: u32 = 0x4343_0001;
    const FRAMES: u64 = 150;
    let mut two = TwoNodes::start("g", GST_PORTS);
    let (up, down) = (material(PROFILE, PUBLISHER, 0), material(PROFILE, PUBLISHER, 1));
    let (sub_up, sub_down) = (material(PROFILE, SUBSCRIBER, 0), material(PROFILE, SUBSCRIBER, 1));
    let track = |publisher| TrackSpec { layers: vec![LayerSpec { ssrc: Some(Ssrc(SSRC)), rtx_ssrc: None, rid: None }], ..video_track(TRACK, publisher, &[]) };
    let vp8 =
        |subscriber, out| Op::UpsertSubscription(SubscriptionSpec { pt_map: vec![(Pt(PT_VP8), Pt(PT_VP8))], ..subscription(subscriber, TRACK, out, None, 0) });
    // Node A: the publisher, its track, the cascade leg's subscription to it.
    two.apply(
        0,
        &[
            Op::UpsertLeg(cascade_leg(0, None)),
            Op::UpsertLeg(leg_spec(PUBLISHER, 0, up.clone(), down)),
            Op::UpsertTrack(track(PUBLISHER)),
            vp8(CASCADE[0], SSRC),
        ],
    );
    // Node B: the track as the cascade leg publishes it, and the subscriber (its address given:
    // it sends nothing to be learned from).
    let sink = SocketAddr::from(([10, 77, 2, 1], GST_SINK_PORT));
    two.apply(
        1,
        &[
            Op::UpsertLeg(cascade_leg(1, None)),
            Op::UpsertTrack(track(CASCADE[1])),
            Op::UpsertLeg(LegSpec { remote: Some(sink), ..leg_spec(SUBSCRIBER, 0, sub_up, sub_down.clone()) }),
            vp8(SUBSCRIBER, OUT),
        ],
    );
    two.connect_cascade();
    let hex = |m: &KeyMaterial| m.key.iter().chain(&m.salt).map(|b| format!("{b:02x}")).collect::<String>();
    let net = format!("--net=/run/netns/{}", two.p.name);
    let decoded = two.dir.path().join("decoded.i420");
    let caps = format!(
        "caps=\"application/x-srtp,media=(string)video,clock-rate=(int)90000,encoding-name=(string)VP8,payload=(int)96,ssrc=(uint){OUT},srtp-key=(buffer){},srtp-cipher=(string)aes-128-gcm,srtp-auth=(string)null,srtcp-cipher=(string)aes-128-gcm,srtcp-auth=(string)null,roc=(uint)0\"",
        hex(&sub_down)
    );
    let sub_args = [
        net.as_str(),
        GST,
        "-e",
        "udpsrc",
        "address=10.77.2.1",
        &format!("port={GST_SINK_PORT}"),
        &caps,
        "!",
        "srtpdec",
        "!",
        "rtpjitterbuffer",
        "latency=200",
        "!",
        "rtpvp8depay",
        "!",
        "vp8dec",
        "!",
        "videoconvert",
        "!",
        "video/x-raw,format=I420,width=320,height=240",
        "!",
        "filesink",
        &format!("location={}", decoded.display()),
    ];
    let mut subscriber = Daemon::start_path(std::path::Path::new("/usr/bin/nsenter"), &sub_args, &two.dir.path().join("gst-subscriber.log"));
    thread::sleep(Duration::from_millis(500));
    let pub_args = [
        net.as_str(),
        GST,
        "videotestsrc",
        "is-live=true",
        &format!("num-buffers={FRAMES}"),
        "pattern=ball",
        "!",
        "video/x-raw,width=320,height=240,framerate=30/1",
        "!",
        "vp8enc",
        "deadline=1",
        "keyframe-max-dist=15",
        "!",
        "rtpvp8pay",
        "pt=96",
        &format!("ssrc={SSRC}"),
        "!",
        "srtpenc",
        &format!("key={}", hex(&up)),
        "rtp-cipher=aes-128-gcm",
        "rtp-auth=null",
        "rtcp-cipher=aes-128-gcm",
        "rtcp-auth=null",
        "!",
        "udpsink",
        "host=10.77.0.1",
        &format!("port={}", two.port(0, PUBLISHER)),
        "bind-address=10.77.1.1",
    ];
    let mut publisher = Daemon::start_path(std::path::Path::new("/usr/bin/nsenter"), &pub_args, &two.dir.path().join("gst-publisher.log"));
    let status = publisher.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("the publisher did not finish\n{}", publisher.log_text()));
    assert!(status.success(), "publisher: {status}\n{}", publisher.log_text());
    thread::sleep(Duration::from_millis(700));
    subscriber.signal(libc::SIGINT);
    let status = subscriber.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("the subscriber did not stop\n{}", subscriber.log_text()));
    assert!(status.success(), "subscriber: {status}\n{}", subscriber.log_text());
    let frames = std::fs::metadata(&decoded).map_or(0, |m| m.len()) / (320 * 240 * 3 / 2);
    eprintln!("the GStreamer subscriber on node B decoded {frames} of the {FRAMES} frames published on node A");
    // It joins at the first keyframe it gets (every half second, or the one B asks A for).
    assert!(frames >= FRAMES * 2 / 3, "decoded {frames} of {FRAMES} frames\n{}\n{}", subscriber.log_text(), two.nodes[1].cp.log_text());
}

/// A node dies (its dataplane and control plane killed with SIGKILL) in a meeting's full flow:
/// the meeting's desired state, which the node kept in Redis, is adopted by the other node when
/// the dead node's heartbeat has expired (the signaling asks `Node.Place`, then `Routes.Adopt`),
/// the participants re-point to the ports it answers, and media flows again, measured from the
/// heartbeat's expiry.
#[test]
fn a_dead_nodes_meeting_forwards_again_on_another_node() {
    const HEARTBEAT_MS: u64 = 200;
    let dir = TempDir::new("cascade-fail");
    let redis_port = sluice_tests::free_tcp_port();
    let _redis = sluice_tests::start_redis(redis_port, &dir.path().join("redis.log"));
    let mut r = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/")).unwrap().get_connection().unwrap();
    let extra = |n: usize| {
        format!(
            "plaintext = true\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\nnode_id = \"node-{n}\"\nheartbeat_ms = {HEARTBEAT_MS}\nstate_in_redis = true\n"
        )
    };
    let mut two = TwoNodes::start_with("f", FAIL_PORTS, &extra);
    let session = format!("meeting-{MEETING}");
    let media = three_on_node_0(&mut two);
    let state_key = format!("sluice:session:{session}:state:node-0");
    cp::wait_until("node 0's state in redis", Duration::from_secs(5), || redis::cmd("EXISTS").arg(&state_key).query::<bool>(&mut r).unwrap());
    // Adoption while node 0 lives is refused.
    let refused = two.nodes[1].grpc.adopt(&session, "node-0").expect_err("node 0 is alive");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    // Node 0 dies.
    for d in [&two.nodes[0].dp, &two.nodes[0].cp] {
        d.signal(libc::SIGKILL);
    }
    let killed = Instant::now();
    let node_key = "sluice:node:node-0";
    cp::wait_until("node 0's heartbeat to expire", Duration::from_secs(5), || !redis::cmd("EXISTS").arg(node_key).query::<bool>(&mut r).unwrap());
    let expired = Instant::now();
    // The signaling: where does the meeting go now, then that node takes it.
    let placed = two.nodes[1].grpc.place(&session).unwrap_or_else(|e| panic!("{e:?}\n{}", two.nodes[1].cp.log_text()));
    assert_eq!(placed.node_id, "node-1", "{placed:?}");
    let adopted = two.nodes[1].grpc.adopt(&session, "node-0").unwrap_or_else(|e| panic!("{e:?}\n{}", two.nodes[1].cp.log_text()));
    let new_ports: BTreeMap<String, u16> = adopted.ports.iter().map(|p| (p.leg.clone(), p.local_port as u16)).collect();
    let mut media = to_node_1(&two, media, &new_ports, true);
    let back = Instant::now();
    eprintln!(
        "node 0 killed; its heartbeat expired after {} ms; media forwarded again on node 1 {} ms after the expiry ({} ms after the kill)",
        (expired - killed).as_millis(),
        (back - expired).as_millis(),
        (back - killed).as_millis()
    );
    assert!(back - expired < Duration::from_secs(3), "back {} ms after the expiry", (back - expired).as_millis());
    // Exact again, with nothing lost or failing.
    media.settle(three_per_tick);
    // Adopted once: the state is gone, and Redis says the meeting is on node 1.
    let again = two.nodes[1].grpc.adopt(&session, "node-0").expect_err("adopted once");
    assert_eq!(again.code(), tonic::Code::NotFound, "{again:?}");
    let nodes: Vec<String> = redis::cmd("SMEMBERS").arg(format!("sluice:session:{session}:nodes")).query(&mut r).unwrap();
    assert_eq!(nodes, ["node-1"]);
}

/// The 3-party meeting's participants re-pointed to node 1 of `two`, at the ports its answer
/// gave their legs (`rejoin`: what they receive starts afresh, as after a failure); returns once
/// every participant gets its four streams from there.
fn to_node_1(two: &TwoNodes, mut media: Media, ports: &BTreeMap<String, u16>, rejoin: bool) -> Media {
    let (people, tick): (Vec<_>, u64) = (media.people.drain(..).collect(), media.tick);
    let ports: Vec<u16> = people.iter().map(|p| ports[&leg_name(p.leg.0)]).collect();
    let mut media = join(&two.p, people, &ports, PEOPLE_IP[1], NODE_IP[1]);
    media.tick = tick;
    if rejoin {
        for p in &mut media.people {
            p.rejoin();
        }
    }
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, _) = media_frames(&mut media, 1);
        if got.iter().all(|c| c.len() == 4) {
            return media;
        }
        assert!(Instant::now() < end, "the meeting never came back on node 1: {got:?}\n{}", two.nodes[1].cp.log_text());
    }
}

/// A 3-party meeting on node 0 of `two`, its media settled (everyone gets what it should).
fn three_on_node_0(two: &mut TwoNodes) -> Media {
    let (ops, people) = meeting::build(MEETING, 3, PROFILE, 1);
    two.apply(0, &ops);
    let ports: Vec<u16> = people.iter().map(|p| two.port(0, p.leg.0)).collect();
    let mut media = join(&two.p, people, &ports, PEOPLE_IP[0], NODE_IP[0]);
    media.settle(three_per_tick);
    media
}

/// What each participant of a 3-party meeting gets in `ticks` with `frames` video frames: two
/// audio streams, one other's video at the top layer and one at the lowest.
fn three_per_tick(_: usize, ticks: u64, frames: u64) -> u64 {
    2 * ticks + frames * u64::from(LAYER_PACKETS[2] + LAYER_PACKETS[0])
}

/// The participants `people` on sockets of their own at `ip` in `p`, their legs at `ports` of
/// the node at `node_ip`; they say hello (the node learns their addresses).
fn join(p: &NetNs, mut people: Vec<meeting::Participant>, ports: &[u16], ip: &str, node_ip: &str) -> Media {
    let sockets: Vec<UdpSocket> =
        people.iter().map(|_| p.enter(|| UdpSocket::bind(SocketAddr::new(ip.parse::<Ipv4Addr>().unwrap().into(), 0)).unwrap())).collect();
    for ((person, s), &port) in people.iter_mut().zip(&sockets).zip(ports) {
        person.addr = s.local_addr().unwrap();
        person.port = port;
    }
    let sfu_ip = vec![node_ip.parse().unwrap(); people.len()];
    let mut media = Media { people, sockets, tick: 0, sfu_ip };
    media.hello();
    media
}

/// Node 0 is drained with a meeting in full flow, which moves to node 1: `Export` with freeze
/// on node 0 (nothing more
/// leaves it for the meeting; the exact position of every stream), `Import` on node 1 (applied,
/// the streams resumed exactly there), the participants re-pointed to the ports it answers.
/// Every subscriber's streams continue with no sequence gap and no authentication failure (the
/// participants keep their receive state across the move); the media gap is measured. Make before
/// break: node 1 is programmed (Export without freeze, Import) while node 0 forwards, refused
/// first while node 1 drains (nothing changes on node 0).
#[test]
fn a_meeting_moves_to_another_node_with_its_streams_continuous() {
    let mut two = TwoNodes::start("m", MOVE_PORTS);
    let session = format!("meeting-{MEETING}");
    let mut media = three_on_node_0(&mut two);
    media.run(25, |_| {});

    // Make before break: node 1 is programmed first (the desired state, no freeze) while node 0
    // forwards. Refused while node 1 drains: nothing changed on node 0, the meeting goes on.
    two.nodes[1].grpc.drain(true);
    let desired = two.nodes[0].grpc.export(&session, false).unwrap();
    assert!(desired.stream_state.is_empty(), "no positions without freeze");
    let refused = two.nodes[1].grpc.import(desired.clone()).expect_err("node 1 drains");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    media.run(25, |_| {});
    two.nodes[1].grpc.drain(false);
    let ready = two.nodes[1].grpc.import(desired).unwrap_or_else(|e| panic!("{e:?}\n{}", two.nodes[1].cp.log_text()));
    media.run(25, |_| {});

    // Node 0 is drained: it takes no new session, and its meeting moves.
    two.nodes[0].grpc.drain(true);
    let last_on_0 = Instant::now();
    let exported = two.nodes[0].grpc.export(&session, true).unwrap();
    assert!(!exported.stream_state.is_empty(), "the streams' positions");
    let (got, _) = media_frames(&mut media, 3);
    assert!(got.iter().all(HashMap::is_empty), "nothing leaves a frozen meeting: {got:?}");
    let answer = two.nodes[1].grpc.import(exported).unwrap_or_else(|e| panic!("{e:?}\n{}", two.nodes[1].cp.log_text()));
    assert_eq!(answer.ports, ready.ports, "the same legs, ready before the freeze");
    let new_ports: BTreeMap<String, u16> = answer.ports.iter().map(|p| (p.leg.clone(), p.local_port as u16)).collect();
    let mut media = to_node_1(&two, media, &new_ports, false);
    let gap = last_on_0.elapsed();
    eprintln!("moved: every participant got all its streams again from node 1 {} ms after node 0 stopped sending", gap.as_millis());
    // Exact, with no gap and no failure across the move (Media::run checks every participant's
    // continuity since the meeting began).
    media.settle(three_per_tick);
    media.run(25, |_| {});
    assert!(gap < Duration::from_secs(4), "the media gap ({} ms) is within one keyframe interval (4 s)", gap.as_millis());
    let grpc = &mut two.nodes[0].grpc;
    let left = grpc.rt.block_on(grpc.routes.delete_session(pb::DeleteSessionRequest { session: session.clone(), ..Default::default() }));
    assert!(left.is_ok(), "{left:?}");
    let status = grpc.status();
    assert!(status.draining && status.sessions == 0, "node 0 drained: {status:?}");
}
