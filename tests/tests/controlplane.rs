//! The control plane end to end: the real `sluice-dataplane` and `sluice-controlplane`
//! processes, a 3-party meeting programmed through gRPC (tonic client), real SRTP media from
//! simulated participants whose keys and SSRCs are the ones programmed.
//!
//! Covered: media flows through routes created over gRPC and authenticates at every
//! participant; pause and unsubscribe stop exactly that subscriber's stream; `kill -9` of the
//! control plane mid-traffic loses no forwarded packet, and after a restart the state is back
//! (GetSession) and the dataplane resynced without a change; bad requests get the right status
//! codes naming the field; drain refuses new sessions; deleting the session stops its media and
//! frees its ports.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use sluice_bench::live::{leg_name, subscription as sub, track_name};
use sluice_bench::meeting;
use sluice_controlplane::pb;
use sluice_controlplane::pb::change::Change as C;
use sluice_core::srtp::Profile;
use sluice_core::table::Op;
use sluice_tests::{Daemon, TempDir, participant_socket};
use tonic::Code;

mod cp;
use cp::{
    Grpc, Media, changes, expect_code, session_req, session_req_with, sluicectl, start_controlplane_cfg, start_controlplane_with, start_dataplane, sum,
    wait_until,
};

const SESSION: &str = "meeting-1";
/// Leg ports: below the ephemeral range (so no client socket takes one) and below the ports the
/// other tests' meetings use (20000 + 64 m + i).
const PORTS: (u16, u16) = (19_000, 19_007);

fn start_controlplane(dir: &Path, dp_sock: &Path, run: u32) -> (Daemon, SocketAddr) {
    start_controlplane_with(dir, dp_sock, run, PORTS)
}

fn req(changes: Vec<pb::Change>) -> pb::ChangeSet {
    pb::ChangeSet { session: SESSION.into(), idempotency_key: String::new(), expected_revision: None, changes }
}

#[test]
fn a_meeting_programmed_over_grpc_forwards_media_and_survives_a_control_plane_kill() {
    let dir = TempDir::new("cp-e2e");
    let (dataplane, dp_sock) = start_dataplane(dir.path());
    let (cp, addr) = start_controlplane(dir.path(), &dp_sock, 1);
    let mut grpc = Grpc::connect(addr);

    // --- Program the meeting over gRPC.
    let (ops, mut people) = meeting::build(7, 3, Profile::AeadAes128Gcm, 1);
    let subs: Vec<_> = ops.iter().filter_map(|o| if let Op::UpsertSubscription(s) = o { Some(s.clone()) } else { None }).collect();
    let mut r = req(changes(&ops));
    r.idempotency_key = "create-meeting".into();
    r.expected_revision = Some(0);
    let created = grpc.apply(r.clone()).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    assert_eq!(created.revision, 1);
    assert_eq!(created.ports.len(), 3);
    let ports: BTreeMap<String, u16> = created.ports.iter().map(|p| (p.leg.clone(), p.local_port as u16)).collect();
    for p in &mut people {
        p.port = ports[&leg_name(p.leg.0)];
        assert!((PORTS.0..=PORTS.1).contains(&p.port));
    }
    // A retry with the same idempotency key gets the original answer and changes nothing.
    let again = grpc.apply(r).unwrap();
    assert_eq!((again.revision, &again.ports), (1, &created.ports));

    let sockets: Vec<_> = people.iter().map(|_| participant_socket()).collect();
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.addr = s.local_addr().unwrap();
    }
    let mut media = Media::new(people, sockets);
    media.hello();
    media.settle(|_, ticks, frames| 2 * ticks + frames * 6);

    // --- Everyone gets both others' audio, one other in HD (5 packets/frame) and one at the
    // lowest layer (1 packet/frame), all authenticating with their own keys.
    let (got, frames) = media.run(25, |_| {});
    for c in &got {
        assert_eq!(sum(c), 2 * 25 + frames * (5 + 1), "{got:?}\n{}", dataplane.log_text());
    }

    // --- kill -9 the control plane mid-traffic, restart it a little later: no packet lost.
    // (From another thread, so the participants keep their 20 ms pace throughout.)
    let killer = {
        let (dir, dp_sock) = (dir.path().to_path_buf(), dp_sock.clone());
        let mut cp = cp;
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            cp.signal(libc::SIGKILL);
            assert!(cp.wait_exit(Duration::from_secs(5)).is_some());
            thread::sleep(Duration::from_millis(300));
            start_controlplane(&dir, &dp_sock, 2)
        })
    };
    let (got, frames) = media.run(40, |_| {});
    for c in &got {
        assert_eq!(sum(c), 2 * 40 + frames * (5 + 1), "packets lost across the control plane's kill -9: {got:?}");
    }
    let (cp, addr) = killer.join().unwrap();
    drop(grpc);
    let mut grpc = Grpc::connect(addr);
    let s = grpc.session(SESSION).unwrap();
    assert_eq!((s.revision, s.legs.len(), s.tracks.len(), s.subscriptions.len()), (1, 3, 6, 12), "state restored after restart");
    for l in &s.legs {
        assert_eq!(ports[&l.id], l.local_port as u16, "ports restored");
    }
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let st = grpc.status();
        if st.dataplane_connected && st.dataplane_generation > 0 {
            break st;
        }
        assert!(Instant::now() < end, "never reconnected to the dataplane:\n{}", cp.log_text());
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.dataplane_generation, created.generation, "the restart resynced without changing anything");
    assert!(cp.log_text().contains("dataplane resynced"), "{}", cp.log_text());
    assert_eq!((status.sessions, status.legs, status.tracks, status.subscriptions), (1, 3, 6, 12));
    assert_eq!(status.workers.len(), 2);
    assert!(status.workers.iter().map(|w| w.tx_packets).sum::<u64>() > 0);

    // --- Pause participant 0's HD view, unsubscribe participant 1 from participant 2's audio:
    // exactly those streams stop.
    let (p0, p1) = (media.people[0].leg, media.people[1].leg);
    let is_video = |s: &sluice_core::table::SubscriptionSpec| media.people.iter().any(|p| p.seat.video_track() == s.track);
    let hd = subs.iter().find(|s| s.subscriber == p0 && s.target_layer == 2 && is_video(s)).unwrap().clone();
    let audio_2_to_1 = subs.iter().find(|s| s.subscriber == p1 && s.track == media.people[2].seat.audio_track()).unwrap().clone();
    let mut paused = hd.clone();
    paused.paused = true;
    let r = grpc
        .apply(req(vec![
            pb::Change { change: Some(C::Subscription(sub(&paused))) },
            pb::Change {
                change: Some(C::RemoveSubscription(pb::SubscriptionKey {
                    subscriber_leg: leg_name(audio_2_to_1.subscriber.0),
                    track: track_name(audio_2_to_1.track.0),
                })),
            },
        ]))
        .unwrap();
    assert_eq!((r.revision, r.generation), (2, created.generation + 1), "one delta");
    let (got, frames) = media.run(25, |_| {});
    assert_eq!(got[0].get(&hd.out_ssrc.0), None, "a paused subscription receives nothing");
    assert_eq!(sum(&got[0]), 2 * 25 + frames, "participant 0 keeps both audios and its low-layer view");
    assert_eq!(got[1].get(&audio_2_to_1.out_ssrc.0), None, "an unsubscribed track receives nothing");
    assert_eq!(sum(&got[1]), 25 + frames * 6);
    assert_eq!(sum(&got[2]), 2 * 25 + frames * 6, "participant 2 is unaffected");

    // --- Bad requests: precise codes, messages naming the field.
    let bad_sub = |subscriber: &str, track: &str, layer: u32| pb::Change {
        change: Some(C::Subscription(pb::Subscription {
            subscriber_leg: subscriber.into(),
            track: track.into(),
            out_ssrc: 99,
            target_layer: layer,
            // Valid, so that each request is refused for what it names (an empty map is refused).
            pt_map: vec![pb::IdMapping { from: 96, to: 96 }],
            ..Default::default()
        })),
    };
    let l0 = leg_name(p0.0);
    let video_of: Vec<String> = media.people.iter().map(|p| track_name(p.seat.video_track().0)).collect();
    expect_code(grpc.apply(req(vec![bad_sub(&l0, "no-such-track", 0)])), Code::NotFound, "changes[0].subscription.track");
    let s = expect_code(grpc.apply(req(vec![bad_sub(&l0, &video_of[0], 0)])), Code::InvalidArgument, "changes[0].subscription.subscriber_leg");
    assert!(s.message().contains("own track"), "{s:?}");
    expect_code(
        grpc.apply(req(vec![bad_sub(&l0, &video_of[1], 0), bad_sub(&l0, &video_of[2], 3)])),
        Code::InvalidArgument,
        "changes[1].subscription.target_layer",
    );
    let mut stale = req(vec![bad_sub(&l0, &video_of[1], 0)]);
    stale.expected_revision = Some(1);
    expect_code(grpc.apply(stale), Code::Aborted, "expected_revision");
    let bad_key = pb::Change {
        change: Some(C::Leg(pb::Leg {
            id: "x".into(),
            rx: Some(pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes256Gcm as i32, key: vec![0; 16], salt: vec![0; 12] }),
            ..Default::default()
        })),
    };
    expect_code(grpc.apply(req(vec![bad_key])), Code::InvalidArgument, "changes[0].leg.rx.key");
    let many_legs = |n: usize| {
        (0..n)
            .map(|i| pb::Change {
                change: Some(C::Leg(pb::Leg {
                    id: format!("extra-{i}"),
                    rx: Some(pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes128Gcm as i32, key: vec![0; 16], salt: vec![0; 12] }),
                    tx: Some(pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes128Gcm as i32, key: vec![0; 16], salt: vec![0; 12] }),
                    ..Default::default()
                })),
            })
            .collect::<Vec<_>>()
    };
    let mut other = req(many_legs(6));
    other.session = "other".into();
    expect_code(grpc.apply(other.clone()), Code::ResourceExhausted, "changes[5].leg");
    assert_eq!(grpc.session(SESSION).unwrap().revision, 2, "refused change sets change nothing");
    expect_code(grpc.session("other"), Code::NotFound, "session");

    // --- Drain: new sessions are refused, existing ones still change.
    let st = grpc.rt.block_on(grpc.node.drain(pb::DrainRequest {})).unwrap().into_inner();
    assert!(st.draining);
    let mut small = other.clone();
    small.changes.truncate(1);
    let s = expect_code(grpc.apply(small.clone()), Code::FailedPrecondition, "session");
    assert!(s.message().contains("draining"), "{s:?}");
    grpc.rt.block_on(grpc.node.undrain(pb::UndrainRequest {})).unwrap();
    grpc.apply(small).unwrap();
    grpc.rt.block_on(grpc.routes.delete_session(pb::DeleteSessionRequest { session: "other".into(), expected_revision: Some(1) })).unwrap();

    // --- Deleting the session stops its media and frees its ports.
    let mut watch = grpc.rt.block_on(grpc.routes.watch(pb::WatchRequest { session: SESSION.into() })).unwrap().into_inner();
    grpc.rt.block_on(grpc.routes.delete_session(pb::DeleteSessionRequest { session: SESSION.into(), expected_revision: Some(2) })).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = grpc.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), watch.message()).await }).expect("watch event").unwrap().unwrap();
        // The dataplane's own events (legs going idle, streams stopping) interleave: skip them.
        if let e @ (pb::event::Event::ChangeApplied(_) | pb::event::Event::SessionDeleted(_)) = ev.event.unwrap() {
            seen.push(e);
        }
    }
    assert!(matches!(seen[0], pb::event::Event::ChangeApplied(_)), "{seen:?}");
    assert!(matches!(seen[1], pb::event::Event::SessionDeleted(true)), "{seen:?}");
    let (got, _) = media.run(10, |_| {});
    assert!(got.iter().all(|c| c.is_empty()), "media after the session was deleted: {got:?}");
    let st = grpc.status();
    assert_eq!((st.sessions, st.legs, st.ports_free), (0, 0, u32::from(PORTS.1 - PORTS.0 + 1)));
    expect_code(grpc.session(SESSION), Code::NotFound, "session");
}

/// The dataplane dies (kill -9) and comes back empty: a change made meanwhile is committed and
/// answered UNAVAILABLE, and on reconnect the control plane resyncs the whole desired state
/// (including that change) so media flows again.
#[test]
fn a_restarted_dataplane_is_resynced_with_the_changes_made_while_it_was_away() {
    const PORTS2: (u16, u16) = (19_100, 19_107);
    let dir = TempDir::new("cp-dp-restart");
    let (mut dataplane, dp_sock) = start_dataplane(dir.path());
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS2);
    let mut grpc = Grpc::connect(addr);

    // Health and reflection answer, so grpcurl works.
    let health = grpc
        .rt
        .block_on(
            tonic_health::pb::health_client::HealthClient::new(grpc.channel.clone())
                .check(tonic_health::pb::HealthCheckRequest { service: "sluice.v1.Routes".into() }),
        )
        .unwrap()
        .into_inner();
    assert_eq!(health.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(grpc.channel.clone());
        let ask = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let names: Vec<String> = grpc.rt.block_on(async {
            let mut answers = client.server_reflection_info(tokio_stream_once(ask)).await.unwrap().into_inner();
            match answers.message().await.unwrap().unwrap().message_response.unwrap() {
                MessageResponse::ListServicesResponse(l) => l.service.into_iter().map(|s| s.name).collect(),
                other => panic!("{other:?}"),
            }
        });
        for want in ["sluice.v1.Routes", "sluice.v1.Node", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == want), "reflection lists {names:?}, not {want}");
        }
    }

    let (ops, mut people) = meeting::build(8, 3, Profile::AeadAes128Gcm, 1);
    let subs: Vec<_> = ops.iter().filter_map(|o| if let Op::UpsertSubscription(s) = o { Some(s.clone()) } else { None }).collect();
    let created = grpc.apply(req(changes(&ops))).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let ports: BTreeMap<String, u16> = created.ports.iter().map(|p| (p.leg.clone(), p.local_port as u16)).collect();
    let sockets: Vec<_> = people.iter().map(|_| participant_socket()).collect();
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.port = ports[&leg_name(p.leg.0)];
        p.addr = s.local_addr().unwrap();
    }
    let mut media = Media::new(people, sockets);
    media.hello();
    media.settle(|_, ticks, frames| 2 * ticks + frames * 6);
    let (got, frames) = media.run(10, |_| {});
    for c in &got {
        assert_eq!(sum(c), 2 * 10 + frames * 6, "{got:?}");
    }

    dataplane.signal(libc::SIGKILL);
    assert!(dataplane.wait_exit(Duration::from_secs(5)).is_some());
    let p0 = media.people[0].leg;
    let mut hd =
        subs.iter().find(|s| s.subscriber == p0 && s.target_layer == 2 && media.people.iter().any(|p| p.seat.video_track() == s.track)).unwrap().clone();
    hd.paused = true;
    let s = expect_code(grpc.apply(req(vec![pb::Change { change: Some(C::Subscription(sub(&hd))) }])), Code::Unavailable, "committed as revision 2");
    assert!(s.message().contains("installed when the dataplane is back"), "{s:?}");
    assert_eq!(grpc.session(SESSION).unwrap().revision, 2, "the change is desired state");
    assert!(!grpc.status().dataplane_connected);

    let mut watch = grpc.rt.block_on(grpc.routes.watch(pb::WatchRequest { session: String::new() })).unwrap().into_inner();
    let (dataplane, _) = start_dataplane(dir.path());
    let resynced = loop {
        let ev = grpc
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), watch.message()).await })
            .unwrap_or_else(|_| panic!("no resync event:\n{}", cp.log_text()))
            .unwrap()
            .unwrap();
        if let Some(pb::event::Event::DataplaneResynced(r)) = ev.event {
            break r;
        }
    };
    assert_eq!(resynced.differing, 3 + 6 + 12, "everything was missing from the new dataplane");

    // Fresh participants with the same keys and SSRCs (the new dataplane's SRTP contexts are new).
    media.drain();
    let (_, mut people) = meeting::build(8, 3, Profile::AeadAes128Gcm, 1);
    for (new, old) in people.iter_mut().zip(&media.people) {
        new.port = old.port;
        new.addr = old.addr;
    }
    media.people = people;
    media.hello();
    media.settle(|i, ticks, frames| if i == 0 { 2 * ticks + frames } else { 2 * ticks + frames * 6 });
    let (got, frames) = media.run(25, |_| {});
    assert_eq!(got[0].get(&hd.out_ssrc.0), None, "the change made while the dataplane was away is installed");
    assert_eq!(sum(&got[0]), 2 * 25 + frames, "{got:?}\n{}", dataplane.log_text());
    for c in &got[1..] {
        assert_eq!(sum(c), 2 * 25 + frames * 6, "{got:?}");
    }
}

/// A one-item request stream.
fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::codegen::tokio_stream::Stream<Item = T> + Send + 'static {
    tonic::codegen::tokio_stream::iter([item])
}

fn redis_conn(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap()
}

/// Load-balancer state in a real `redis-server`: the control plane starts while Redis is down
/// (and serves), publishes its heartbeat with a TTL once Redis is up, refuses sessions placed on
/// another node and new sessions while Redis' drain flag is set, reports the drained node, its
/// key expires after the control plane is killed, and goes at once when it stops cleanly.
#[test]
fn load_balancer_state_in_redis() {
    const PORTS3: (u16, u16) = (19_200, 19_215);
    let dir = TempDir::new("cp-redis");
    let (_dataplane, dp_sock) = start_dataplane(dir.path());
    let port = sluice_tests::free_tcp_port();
    let extra = format!("plaintext = true\nredis_url = \"redis://127.0.0.1:{port}/\"\nnode_id = \"node-a\"\nheartbeat_ms = 200\n");
    let (mut cp, addr) = start_controlplane_cfg(dir.path(), &dp_sock, 1, PORTS3, &extra);
    let mut grpc = Grpc::connect(addr);
    // Redis is not there yet: the node still works on its own.
    grpc.apply(session_req("early")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    assert!(!grpc.status().draining);

    let redis = sluice_tests::start_redis(port, &dir.path().join("redis.log"));
    let mut r = redis_conn(port);
    let key = "sluice:node:node-a";
    wait_until("the heartbeat", Duration::from_secs(10), || redis::cmd("EXISTS").arg(key).query::<i64>(&mut r).unwrap() == 1);
    let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut r).unwrap();
    assert!(ttl > 0 && ttl <= 600, "TTL {ttl} ms");
    let hget = |r: &mut redis::Connection, f: &str| redis::cmd("HGET").arg(key).arg(f).query::<Option<String>>(r).unwrap();
    assert_eq!(hget(&mut r, "sessions").as_deref(), Some("1"));
    assert_eq!(hget(&mut r, "legs").as_deref(), Some("3"));
    assert_eq!(hget(&mut r, "draining").as_deref(), Some("0"));
    assert!(hget(&mut r, "packets_per_second").is_some());
    assert!(cp.log_text().contains("redis unreachable"), "{}", cp.log_text());

    // Placement.
    redis::cmd("SET").arg("sluice:placement:elsewhere").arg("node-b").query::<()>(&mut r).unwrap();
    let s = expect_code(grpc.apply(session_req("elsewhere")), Code::FailedPrecondition, "session");
    assert!(s.message().contains("node-b"), "{s:?}");
    redis::cmd("SET").arg("sluice:placement:here").arg("node-a").query::<()>(&mut r).unwrap();
    grpc.apply(session_req("here")).unwrap();

    // Drain flag in Redis.
    redis::cmd("SET").arg("sluice:node:node-a:drain").arg("1").query::<()>(&mut r).unwrap();
    let s = expect_code(grpc.apply(session_req("new-1")), Code::FailedPrecondition, "session");
    assert!(s.message().contains("draining"), "{s:?}");
    wait_until("draining in the heartbeat", Duration::from_secs(5), || hget(&mut r, "draining").as_deref() == Some("1"));
    assert!(grpc.status().draining);
    for id in ["early", "here"] {
        grpc.rt.block_on(grpc.routes.delete_session(pb::DeleteSessionRequest { session: id.into(), expected_revision: None })).unwrap();
    }
    wait_until("drained", Duration::from_secs(5), || hget(&mut r, "drained").as_deref() == Some("1"));
    wait_until("drained in the log", Duration::from_secs(5), || cp.log_text().contains("drained: the last session"));
    redis::cmd("DEL").arg("sluice:node:node-a:drain").query::<()>(&mut r).unwrap();
    grpc.apply(session_req("new-2")).unwrap();

    // Redis goes away and comes back (empty): the node keeps working, then publishes again.
    drop(redis);
    grpc.apply(session_req("while-redis-is-down")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    assert_eq!(grpc.status().sessions, 2);
    let _redis = sluice_tests::start_redis(port, &dir.path().join("redis-2.log"));
    let mut r = redis_conn(port);
    wait_until("the heartbeat after redis is back", Duration::from_secs(10), || hget(&mut r, "sessions").as_deref() == Some("2"));
    assert!(cp.log_text().contains("redis reachable again"), "{}", cp.log_text());

    // Killed: the key expires on its own.
    cp.signal(libc::SIGKILL);
    assert!(cp.wait_exit(Duration::from_secs(5)).is_some());
    wait_until("the node key to expire", Duration::from_secs(5), || redis::cmd("EXISTS").arg(key).query::<i64>(&mut r).unwrap() == 0);

    // Restarted, then stopped cleanly: the key goes at once, long before its TTL.
    let extra = format!("plaintext = true\nredis_url = \"redis://127.0.0.1:{port}/\"\nnode_id = \"node-a\"\nheartbeat_ms = 2000\n");
    let (mut cp, _) = start_controlplane_cfg(dir.path(), &dp_sock, 2, PORTS3, &extra);
    wait_until("the heartbeat after the restart", Duration::from_secs(10), || redis::cmd("EXISTS").arg(key).query::<i64>(&mut r).unwrap() == 1);
    assert_eq!(hget(&mut r, "sessions").as_deref(), Some("2"), "the recovered sessions are counted");
    let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut r).unwrap();
    assert!(ttl > 2000, "TTL {ttl} ms");
    cp.signal(libc::SIGTERM);
    assert!(cp.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()), "{}", cp.log_text());
    assert_eq!(redis::cmd("EXISTS").arg(key).query::<i64>(&mut r).unwrap(), 0, "{}", cp.log_text());
}

/// `sluicectl` against a real control plane: status, sessions (legs and ports), one session,
/// drain and undrain, as tables and as JSON.
#[test]
fn sluicectl_shows_and_drains_a_node() {
    const PORTS4: (u16, u16) = (19_300, 19_315);
    let dir = TempDir::new("cp-ctl");
    let (_dataplane, dp_sock) = start_dataplane(dir.path());
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS4);
    let mut grpc = Grpc::connect(addr);
    let created = grpc.apply(session_req("standup")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let a = addr.to_string();

    let (ok, out, err) = sluicectl(&["--addr", &a, "status"]);
    assert!(ok, "{err}");
    assert!(out.contains("draining") && out.contains("no") && out.lines().any(|l| l.starts_with("sessions") && l.ends_with(" 1")), "{out}");

    let (ok, out, err) = sluicectl(&["--addr", &a, "sessions"]);
    assert!(ok, "{err}");
    assert!(out.contains("standup") && out.contains("1 session(s)"), "{out}");
    for p in &created.ports {
        assert!(out.lines().any(|l| l.contains(&p.leg) && l.contains(&p.local_port.to_string())), "{} {} not in\n{out}", p.leg, p.local_port);
    }
    let (ok, out, err) = sluicectl(&["--addr", &a, "--json", "sessions"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["sessions"][0]["id"], "standup");
    assert_eq!(v["sessions"][0]["legs"].as_array().unwrap().len(), 3);
    let ports: Vec<u64> = v["sessions"][0]["legs"].as_array().unwrap().iter().map(|l| l["local_port"].as_u64().unwrap()).collect();
    assert!(ports.iter().all(|p| (u64::from(PORTS4.0)..=u64::from(PORTS4.1)).contains(p)), "{ports:?}");

    let (ok, out, err) = sluicectl(&["--addr", &a, "session", "standup"]);
    assert!(ok, "{err}");
    assert!(out.contains("session standup") && out.contains("TRACK") && out.contains("SUBSCRIBER"), "{out}");
    let (ok, _, err) = sluicectl(&["--addr", &a, "session", "nope"]);
    assert!(!ok && err.contains("NotFound"), "{err}");

    let (ok, out, err) = sluicectl(&["--addr", &a, "--json", "drain"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["draining"], true, "{out}");
    expect_code(grpc.apply(session_req("late")), Code::FailedPrecondition, "session");
    let (ok, out, err) = sluicectl(&["--addr", &a, "undrain"]);
    assert!(ok && out.lines().any(|l| l.starts_with("draining") && l.ends_with("no")), "{out}{err}");
    grpc.apply(session_req("late")).unwrap();
}

/// TLS: `sluicectl certs` writes a CA and certificates; a control plane with
/// `[controlplane.tls]` and a client CA (mTLS) serves a client holding the client certificate
/// and refuses one without it (and plain text). Plain text must be asked for, and only on
/// loopback.
#[test]
fn mtls_with_sluicectl_certs() {
    const PORTS5: (u16, u16) = (19_400, 19_415);
    let dir = TempDir::new("cp-tls");
    let certs = dir.path().join("certs");
    let (ok, out, err) = sluicectl(&["certs", certs.to_str().unwrap()]);
    assert!(ok, "{err}");
    for f in sluice_controlplane::certs::FILES {
        assert!(certs.join(f).exists() && out.contains(f), "{f}: {out}");
    }
    let c = |f: &str| certs.join(f).display().to_string();

    // Plain text is refused unless configured, and off loopback.
    for (extra, run) in [("", 1), ("plaintext = true\ngrpc_listen = \"0.0.0.0:0\"\n", 2)] {
        let cfg = dir.path().join(format!("bad-{run}.toml"));
        std::fs::write(&cfg, format!("[controlplane]\nstate_dir = \"{}\"\n{extra}", dir.path().join("state-bad").display())).unwrap();
        let mut d = Daemon::start("sluice-controlplane", &["--config", cfg.to_str().unwrap()], &dir.path().join(format!("bad-{run}.log")));
        assert!(d.wait_exit(Duration::from_secs(10)).is_some_and(|s| !s.success()), "{}", d.log_text());
        assert!(d.log_text().contains("controlplane.plaintext"), "{}", d.log_text());
    }

    let (_dataplane, dp_sock) = start_dataplane(dir.path());
    let extra = format!("[controlplane.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n", c("server.pem"), c("server.key"), c("ca.pem"));
    let (cp, addr) = start_controlplane_cfg(dir.path(), &dp_sock, 1, PORTS5, &extra);
    assert!(cp.log_text().contains("transport=\"mtls\""), "{}", cp.log_text());
    let a = addr.to_string();

    let (ok, out, err) = sluicectl(&["--addr", &a, "--ca", &c("ca.pem"), "--cert", &c("client.pem"), "--key", &c("client.key"), "status"]);
    assert!(ok, "mTLS client refused: {err}\n{}", cp.log_text());
    assert!(out.contains("sessions"), "{out}");
    // By IP name too (the server certificate has 127.0.0.1).
    let (ok, _, err) =
        sluicectl(&["--addr", &a, "--server-name", "127.0.0.1", "--ca", &c("ca.pem"), "--cert", &c("client.pem"), "--key", &c("client.key"), "status"]);
    assert!(ok, "{err}");

    // No client certificate: refused.
    let (ok, _, err) = sluicectl(&["--addr", &a, "--ca", &c("ca.pem"), "status"]);
    assert!(!ok, "a client without a certificate got an answer");
    assert!(err.contains("transport error"), "{err}");
    // Plain text: refused.
    let (ok, _, _) = sluicectl(&["--addr", &a, "status"]);
    assert!(!ok, "a plain-text client got an answer");
    // A client certificate from another CA: refused.
    let other = dir.path().join("other");
    assert!(sluicectl(&["certs", other.to_str().unwrap()]).0);
    let (ok, _, _) = sluicectl(&[
        "--addr",
        &a,
        "--ca",
        &c("ca.pem"),
        "--cert",
        &other.join("client.pem").display().to_string(),
        "--key",
        &other.join("client.key").display().to_string(),
        "status",
    ]);
    assert!(!ok, "a client certificate from another CA got an answer");
}

/// What the dataplane sees comes out of Watch, named by session, leg and track: legs active and
/// idle, streams started and stopped, layer switches, receiver-report statistics; NodeStatus
/// carries packet rates from the dataplane's stats stream.
#[test]
fn dataplane_events_reach_watch_and_node_status_reports_rates() {
    const PORTS6: (u16, u16) = (19_500, 19_507);
    let dir = TempDir::new("cp-events");
    let (dataplane, dp_sock) = start_dataplane(dir.path());
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS6);
    let mut grpc = Grpc::connect(addr);
    let (ops, mut people) = meeting::build(7, 3, Profile::AeadAes128Gcm, 1);
    let created = grpc.apply(req(changes(&ops))).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let ports: BTreeMap<String, u16> = created.ports.iter().map(|p| (p.leg.clone(), p.local_port as u16)).collect();
    for p in &mut people {
        p.port = ports[&leg_name(p.leg.0)];
    }
    let mut watch = grpc.rt.block_on(grpc.routes.watch(pb::WatchRequest { session: SESSION.into() })).unwrap().into_inner();
    // The operator's view of the same stream.
    let ctl_out = dir.path().join("sluicectl-watch.out");
    let mut ctl = std::process::Command::new(sluice_tests::bin_dir().join("sluicectl"))
        .args(["--addr", &addr.to_string(), "watch", SESSION])
        .stdout(std::fs::File::create(&ctl_out).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&ctl_out).unwrap_or_default().contains("# watching") {
        assert!(Instant::now() < end, "sluicectl watch never started");
        thread::sleep(Duration::from_millis(20));
    }
    let sockets: Vec<_> = people.iter().map(|_| participant_socket()).collect();
    for (p, s) in people.iter_mut().zip(&sockets) {
        p.addr = s.local_addr().unwrap();
    }
    let mut media = Media::new(people, sockets);
    media.hello();
    media.settle(|_, ticks, frames| 2 * ticks + frames * 6);
    let mut busy = None;
    media.run(100, |k| {
        if k == 99 {
            busy = Some(grpc.status());
        }
    });
    for i in 0..media.people.len() {
        let to = media.sfu(i);
        media.sockets[i].send_to(&media.people[i].receiver_report(), to).unwrap();
    }
    let busy = busy.unwrap();
    let tx_rate: f64 = busy.workers.iter().map(|w| w.tx_packets_per_second).sum();
    // 3 participants × (2 audios + 6 video packets per frame × 30 fps) ≈ 690 packets/s out.
    assert!(tx_rate > 100.0, "rates in NodeStatus while media flows: {busy:?}");

    // Media has stopped: within the idle thresholds (2 s streams, 5 s legs) everything is reported.
    let legs: Vec<String> = media.people.iter().map(|p| leg_name(p.leg.0)).collect();
    let (mut active, mut idle, mut stats) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let (mut started, mut stopped, mut switched) = (0, 0, 0);
    let end = Instant::now() + Duration::from_secs(20);
    while idle.len() < 3 && Instant::now() < end {
        let Ok(Some(Ok(ev))) = grpc.rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), watch.message()).await }).map(Result::transpose) else {
            continue;
        };
        assert_eq!(ev.session, SESSION);
        match ev.event.unwrap() {
            pb::event::Event::LegActive(a) => {
                let remote: SocketAddr = a.remote.parse().unwrap();
                active.insert(a.leg, remote);
            }
            pb::event::Event::LegIdle(l) => {
                assert!(active.contains_key(&l), "idle before active: {l}");
                idle.insert(l, ());
            }
            pb::event::Event::StreamStarted(_) => started += 1,
            pb::event::Event::StreamStopped(s) => {
                assert!(s.layer < 3);
                stopped += 1;
            }
            pb::event::Event::LayerSwitched(s) => {
                assert!(legs.contains(&s.subscriber), "{s:?}");
                switched += 1;
            }
            pb::event::Event::LegStats(s) => {
                assert_eq!((s.fraction_lost, s.cumulative_lost), (0, 0), "{s:?}");
                stats.insert(s.leg, s.reports);
            }
            _ => {}
        }
    }
    let addrs: BTreeMap<String, SocketAddr> = media.people.iter().map(|p| (leg_name(p.leg.0), p.addr)).collect();
    assert_eq!(active, addrs, "every leg reported active from its participant's address\n{}", dataplane.log_text());
    assert_eq!(idle.len(), 3, "every leg reported idle once media stopped");
    // 3 participants × (audio + 3 video layers) started, and stopped.
    assert_eq!((started, stopped), (12, 12));
    assert!(switched >= 6, "each of the 6 video subscriptions switched to its layer: {switched}");
    assert_eq!(stats.len(), 3, "each leg's receiver report: {stats:?}");
    // sluicectl is a second subscriber of the same stream: it may print the last events a moment
    // after this test's own Watch saw them, so wait (bounded) for each kind before ending it.
    let kinds = ["LegActive", "StreamStarted", "LayerSwitched", "LegStats", "StreamStopped", "LegIdle"];
    let shows = |lines: &str, what: &str| lines.lines().any(|l| l.starts_with(SESSION) && l.contains(what));
    let end = Instant::now() + Duration::from_secs(10);
    let mut lines = std::fs::read_to_string(&ctl_out).unwrap_or_default();
    while !kinds.iter().all(|w| shows(&lines, w)) && Instant::now() < end {
        thread::sleep(Duration::from_millis(50));
        lines = std::fs::read_to_string(&ctl_out).unwrap_or_default();
    }
    // Our own child, ended through its handle.
    let _ = ctl.kill();
    let _ = ctl.wait();
    for what in kinds {
        assert!(shows(&lines, what), "sluicectl watch shows no {what}:\n{lines}");
    }
}

/// One instance per state directory: a second control plane on the first one's state directory
/// refuses to start, naming the first one's PID, and the first keeps serving.
#[test]
fn a_second_controlplane_on_the_same_state_dir_refuses_to_start_naming_the_first() {
    const PORTS7: (u16, u16) = (19_600, 19_607);
    let dir = TempDir::new("cp-one-instance");
    let (_dataplane, dp_sock) = start_dataplane(dir.path());
    let (first, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS7);
    let mut grpc = Grpc::connect(addr);
    grpc.apply(session_req("before")).unwrap_or_else(|e| panic!("{e:?}\n{}", first.log_text()));
    let cfg = dir.path().join("controlplane.toml");
    let mut second = Daemon::start("sluice-controlplane", &["--config", cfg.to_str().unwrap()], &dir.path().join("controlplane-2.log"));
    let status = second.wait_exit(Duration::from_secs(20));
    let log = second.log_text();
    assert!(status.is_some_and(|s| !s.success()), "the second control plane must exit with an error, not serve ({status:?}):\n{log}");
    assert!(log.contains(&format!("PID {}", first.pid())), "the error names the holder's PID {}:\n{log}", first.pid());
    assert!(log.contains(&dir.path().join("state").display().to_string()), "the error names the state directory:\n{log}");
    // The first still serves, with its state.
    grpc.apply(session_req("after")).unwrap_or_else(|e| panic!("{e:?}\n{}", first.log_text()));
    assert_eq!(grpc.status().sessions, 2);
}

/// A subscription the dataplane's tables would refuse (an empty `pt_map`, more than 8 payload
/// type mappings, an extension id above 14) is refused at Apply with INVALID_ARGUMENT naming the
/// field, by the validation the tables use: it is never journaled nor sent, so it cannot wedge
/// the node (before, it was accepted, refused by the dataplane, and every later Apply on every
/// session answered UNAVAILABLE).
#[test]
fn a_subscription_the_dataplane_would_refuse_is_invalid_at_apply_and_the_node_keeps_working() {
    const PORTS8: (u16, u16) = (19_700, 19_715);
    let dir = TempDir::new("cp-validate");
    let (_dataplane, dp_sock) = start_dataplane(dir.path());
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS8);
    let mut grpc = Grpc::connect(addr);
    grpc.apply(session_req("m1")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let (ops, _) = meeting::build(9, 3, Profile::AeadAes128Gcm, 1);
    let base = changes(&ops).into_iter().find_map(|c| if let Some(C::Subscription(s)) = c.change { Some(s) } else { None }).expect("a subscription");
    let change = |edit: &dyn Fn(&mut pb::Subscription)| {
        let mut s = base.clone();
        edit(&mut s);
        pb::ChangeSet {
            session: "m1".into(),
            idempotency_key: String::new(),
            expected_revision: None,
            changes: vec![pb::Change { change: Some(C::Subscription(s)) }],
        }
    };
    let s = expect_code(grpc.apply(change(&|s| s.pt_map.clear())), Code::InvalidArgument, "changes[0].subscription.pt_map");
    assert!(s.message().contains("1 to 8"), "{s:?}");
    let nine = (0..9).map(|i| pb::IdMapping { from: 96 + i, to: 96 + i }).collect::<Vec<_>>();
    expect_code(grpc.apply(change(&|s| s.pt_map = nine.clone())), Code::InvalidArgument, "changes[0].subscription.pt_map");
    let three_wide = (15..18).map(|id| pb::IdMapping { from: id, to: 3 }).collect::<Vec<_>>();
    let s = expect_code(grpc.apply(change(&|s| s.ext_map = three_wide.clone())), Code::InvalidArgument, "changes[0].subscription.ext_map");
    assert!(s.message().contains("at most 2 ids above 14"), "{s:?}");
    expect_code(grpc.apply(change(&|s| s.ext_map = vec![pb::IdMapping { from: 3, to: 256 }])), Code::InvalidArgument, "changes[0].subscription.ext_map");
    // Nothing was journaled or sent: later changes apply, on this session and on a new one.
    grpc.apply(change(&|s| s.paused = true)).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    grpc.apply(session_req("m2")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    assert_eq!(grpc.session("m1").unwrap().revision, 2);
    assert_eq!(grpc.status().sessions, 2);
}

/// A journal written by an older build that accepted a subscription the dataplane refuses (an
/// empty `pt_map`): the node starts, leaves that change out (saying so), installs its healthy
/// session on the dataplane and keeps answering Apply (before, every resync was refused and
/// every Apply answered UNAVAILABLE; with today's validation alone, the start was refused).
#[test]
fn a_journaled_change_the_dataplane_refuses_does_not_wedge_the_node() {
    use sluice_controlplane::journal::{Journal, Record};
    use sluice_controlplane::state::PortRange;
    const PORTS9: (u16, u16) = (19_800, 19_815);
    let dir = TempDir::new("cp-poisoned");
    {
        let ports = PortRange { start: PORTS9.0, end: PORTS9.1 };
        let (mut journal, _, _) = Journal::open(&dir.path().join("state"), ports).unwrap();
        let healthy = session_req("healthy");
        let mut bad = healthy.changes.iter().find(|c| matches!(c.change, Some(C::Subscription(_)))).cloned().expect("a subscription");
        if let Some(C::Subscription(s)) = &mut bad.change {
            s.pt_map.clear();
        }
        journal.append(&Record::Apply(healthy)).unwrap();
        // As the older build journaled it: its validation did not look at the map.
        journal.append(&Record::Apply(pb::ChangeSet { changes: vec![bad], ..session_req("healthy") })).unwrap();
    }
    let (_dataplane, dp_sock) = start_dataplane(dir.path());
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS9);
    let mut grpc = Grpc::connect(addr);
    grpc.apply(session_req("next")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    assert!(cp.log_text().contains("left out of the recovered state"), "{}", cp.log_text());
    assert_eq!(grpc.session("healthy").unwrap().revision, 1);
    // Both sessions are on the dataplane.
    let mut control = sluice_dataplane::control::Client::connect(&dp_sock).unwrap();
    let sluice_dataplane::control::Response::Snapshot(snap) = control.call(&sluice_dataplane::control::Request::Snapshot { keys: false }).unwrap() else {
        panic!("no snapshot")
    };
    let legs = snap.ops.iter().filter(|o| matches!(o, Op::UpsertLeg(_))).count();
    assert_eq!(legs, 6, "three legs of each session");
}

/// Input hygiene over real gRPC: ids with NUL, newline, an ANSI escape or a bidi override, and a
/// 1 MB idempotency key or RID, are INVALID_ARGUMENT naming the field, with a short message that
/// carries none of those characters; Get and Watch refuse such names too; nothing was created.
#[test]
fn hostile_ids_and_huge_strings_are_invalid_with_short_messages() {
    const PORTS10: (u16, u16) = (19_900, 19_915);
    let dir = TempDir::new("cp-hygiene");
    let (_dataplane, dp_sock) = start_dataplane(dir.path());
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS10);
    let mut grpc = Grpc::connect(addr);
    let huge = "k".repeat(1 << 20);
    let keys = || Some(pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes128Gcm as i32, key: vec![0; 16], salt: vec![0; 12] });
    let leg_change = |id: &str| pb::Change { change: Some(C::Leg(pb::Leg { id: id.into(), rx: keys(), tx: keys(), ..Default::default() })) };
    let base = session_req("ok-session");
    let mut cases: Vec<(pb::ChangeSet, &str)> = Vec::new();
    for bad in ["nul\0id", "new\nline", "esc\u{1b}[31mred", "bidi\u{202e}txt.exe"] {
        let mut r = base.clone();
        r.session = bad.into();
        cases.push((r, "session"));
        cases.push((session_req_with("ok-session", vec![leg_change(bad)]), "changes[0].leg.id"));
    }
    let mut r = base.clone();
    r.idempotency_key = huge.clone();
    cases.push((r, "idempotency_key"));
    let mut r = base.clone();
    r.idempotency_key = "key\u{2066}".into();
    cases.push((r, "idempotency_key"));
    let mut r = base.clone();
    let (i, rid_field) = r
        .changes
        .iter()
        .enumerate()
        .find_map(|(i, c)| if let Some(C::Track(_)) = c.change { Some((i, format!("changes[{i}].track.layers[0].rid"))) } else { None })
        .expect("a track");
    if let Some(C::Track(t)) = &mut r.changes[i].change {
        t.layers[0].rid = huge.clone();
    }
    cases.push((r, rid_field.as_str()));
    for (r, field) in cases {
        let what = format!("{:?}", r.session.chars().take(20).collect::<String>());
        let s = expect_code(grpc.apply(r), Code::InvalidArgument, field);
        assert!(s.message().len() < 200, "{what}: {} bytes: {:?}", s.message().len(), s.message());
        assert!(!s.message().chars().any(|c| c.is_control() || ('\u{2000}'..='\u{206f}').contains(&c)), "{what}: {:?}", s.message());
    }
    let s = expect_code(grpc.session("new\nline"), Code::InvalidArgument, "session");
    assert!(!s.message().contains('\n'), "{s:?}");
    let watch = grpc.rt.block_on(grpc.routes.watch(pb::WatchRequest { session: "esc\u{1b}[2J".into() }));
    expect_code(watch.map(|_| ()), Code::InvalidArgument, "session");
    assert_eq!(grpc.status().sessions, 0, "nothing was created:\n{}", cp.log_text());
    grpc.apply(base).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
}

/// Shared ports end to end: with `shared_port_base`, two 3-party meetings whose static-key legs
/// all ask for `shared_port` get the dataplane's two workers' shared ports (33720, 33721: one
/// UDP port each, many legs), and media flows exactly as on ports of their own, every packet
/// authenticating at its receiver; a stranger sending a valid participant's SRTP to either
/// shared port from an address no leg has gets nothing forwarded and nothing back. A leg
/// claiming another session's (shared port, remote) is INVALID_ARGUMENT naming `leg.remote`,
/// and GetSession shows the flag.
#[test]
fn legs_of_two_sessions_on_shared_ports_forward_media_and_strangers_get_nowhere() {
    const SHARED: (u16, u16) = (33_720, 33_727);
    let dir = TempDir::new("cp-shared-ports");
    let (dataplane, dp_sock) = cp::start_dataplane_in(dir.path(), SHARED);
    let (cp, addr) = start_controlplane_cfg(dir.path(), &dp_sock, 1, SHARED, "plaintext = true\nshared_port_base = 33720\n");
    wait_until("the control plane to know the dataplane's workers", Duration::from_secs(20), || {
        cp.log_text().contains("new legs' ports follow the dataplane's workers")
    });
    let mut grpc = Grpc::connect(addr);

    let mut people = Vec::new();
    let mut sockets = Vec::new();
    let mut session_ports = Vec::new();
    for (session, m) in [("shared-a", 11), ("shared-b", 12)] {
        let (ops, mut ps) = meeting::build(m, 3, Profile::AeadAes128Gcm, 1);
        let socks: Vec<UdpSocket> = ps.iter().map(|_| participant_socket()).collect();
        for (p, s) in ps.iter_mut().zip(&socks) {
            p.addr = s.local_addr().unwrap();
        }
        let mut cs = changes(&ops);
        for c in &mut cs {
            if let Some(C::Leg(l)) = &mut c.change {
                let p = ps.iter().find(|p| leg_name(p.leg.0) == l.id).expect("a participant per leg");
                (l.shared_port, l.remote) = (true, p.addr.to_string());
            }
        }
        let created = grpc.apply(session_req_with(session, cs)).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
        let ports: BTreeMap<String, u16> = created.ports.iter().map(|p| (p.leg.clone(), p.local_port as u16)).collect();
        for p in &mut ps {
            p.port = ports[&leg_name(p.leg.0)];
        }
        let distinct: std::collections::BTreeSet<u16> = ports.values().copied().collect();
        assert_eq!(distinct.len(), 1, "a small session's legs share its worker's shared port: {ports:?}");
        session_ports.push(*distinct.first().unwrap());
        let view = grpc.session(session).unwrap();
        assert!(view.legs.iter().all(|l| l.shared_port && !l.remote.is_empty()), "{view:?}");
        people.extend(ps);
        sockets.extend(socks);
    }
    session_ports.sort_unstable();
    assert_eq!(session_ports, [33_720, 33_721], "one shared port per worker, each session on the emptier worker");

    // A remote is one leg's per shared port, across sessions: refused, nothing committed.
    let taken = people[0].addr.to_string();
    let mut dup = pb::Leg {
        id: "copycat".into(),
        shared_port: true,
        remote: taken,
        rx: Some(pb::KeyMaterial { profile: pb::SrtpProfile::AeadAes128Gcm as i32, key: vec![0; 16], salt: vec![0; 12] }),
        ..Default::default()
    };
    dup.tx = dup.rx.clone();
    let s =
        expect_code(grpc.apply(session_req_with("shared-c", vec![pb::Change { change: Some(C::Leg(dup)) }])), Code::InvalidArgument, "changes[0].leg.remote");
    assert!(s.message().contains("shared port"), "{s:?}");
    expect_code(grpc.session("shared-c"), Code::NotFound, "session");

    let mut media = Media::new(people, sockets);
    media.hello();
    media.settle(|_, ticks, frames| 2 * ticks + frames * 6);
    let (got, frames) = media.run(25, |_| {});
    for c in &got {
        assert_eq!(sum(c), 2 * 25 + frames * (5 + 1), "{got:?}\n{}", dataplane.log_text());
    }

    // A stranger: participant 0's keys and SSRCs (a fresh copy of its meeting), its sequence
    // numbers well ahead of the real one's (fresh to the SRTP replay window), sent to both
    // shared ports from an address no leg has. Forwarded, it would add packets (and gaps) at
    // every subscriber of participant 0; taken as participant 0's, it would push the window
    // past participant 0's own packets, which would then go missing.
    let (_, mut copies) = meeting::build(11, 3, Profile::AeadAes128Gcm, 1);
    let mut stranger = copies.swap_remove(0);
    for t in 0..3000 {
        stranger.audio(t);
    }
    let stranger_socket = participant_socket();
    let (got, frames) = media.run(25, |k| {
        let pkt = stranger.audio(3000 + k);
        for port in [33_720, 33_721] {
            stranger_socket.send_to(&pkt, ("127.0.0.1", port)).unwrap();
        }
    });
    for c in &got {
        assert_eq!(sum(c), 2 * 25 + frames * (5 + 1), "a stranger's datagrams went somewhere: {got:?}");
    }
    stranger_socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    assert!(stranger_socket.recv(&mut buf).is_err(), "the stranger got something back");
}
