//! Placement across nodes (`Node.Place`, `sluicectl place`, admission) with a real
//! `redis-server` and real `sluice-controlplane` processes, each node with its own state
//! directory and Redis node id.
//!
//! The placement tests run control planes without a dataplane (their socket path does not
//! exist): Apply commits (answering UNAVAILABLE "committed as revision N ... installed when the
//! dataplane is back"), the node counts the session's legs, and Node.Place, heartbeats and
//! admission need nothing else. The load skew cannot come from traffic (no dataplane, so no
//! packet rate): each node has `max_legs = 15` and is given sessions of 3 legs each, so its
//! score is legs ÷ 15 (0.2 per session; ports in use stay below that share). The admission test
//! runs a real dataplane per node, so an admitted change is answered OK.
//!
//! Redis listens on a loopback port in 19900-19999 (one residue mod 10 per test, so parallel
//! tests never share one); gRPC on an ephemeral port per control plane.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use sluice_controlplane::pb;
use sluice_controlplane::placement;
use sluice_tests::{Daemon, TempDir};
use tonic::Code;

mod cp;
use cp::{Grpc, expect_code, session_req, sluicectl, start_controlplane_cfg, start_dataplane_in, wait_until};

/// Legs per session `session_req` makes.
const LEGS: u32 = 3;
/// Every node's leg quota: a session is 0.2 of a node.
const MAX_LEGS: u32 = 15;

/// A free loopback TCP port in 19900-19999 whose last digit is `slot`.
fn redis_port(slot: u16) -> u16 {
    (19_900..=19_999)
        .filter(|p| p % 10 == slot)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or_else(|| panic!("no free port in 19900-19999 ending in {slot}"))
}

fn redis_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

fn redis_conn(port: u16) -> redis::Connection {
    redis::Client::open(redis_url(port)).unwrap().get_connection().unwrap()
}

/// One node: its control plane, gRPC client and directory.
struct Node {
    id: String,
    cp: Daemon,
    addr: SocketAddr,
    grpc: Grpc,
    _dataplane: Option<Daemon>,
    _dir: TempDir,
}

struct NodeOpts {
    heartbeat_ms: u64,
    /// Leg ports (and the dataplane's range when it has one).
    ports: (u16, u16),
    dataplane: bool,
}

const NO_DATAPLANE: NodeOpts = NodeOpts { heartbeat_ms: 200, ports: (19_940, 19_971), dataplane: false };

fn start_node(test: &str, id: &str, redis_port: u16, opts: &NodeOpts) -> Node {
    let dir = TempDir::new(&format!("place-{test}-{id}"));
    let (dataplane, sock): (Option<Daemon>, PathBuf) = if opts.dataplane {
        let (d, s) = start_dataplane_in(dir.path(), opts.ports);
        (Some(d), s)
    } else {
        (None, dir.path().join("no-dataplane.sock"))
    };
    let extra = format!(
        "plaintext = true\nredis_url = \"{}\"\nnode_id = \"{id}\"\nheartbeat_ms = {}\nmax_legs = {MAX_LEGS}\n",
        redis_url(redis_port),
        opts.heartbeat_ms
    );
    let (cp, addr) = start_controlplane_cfg(dir.path(), &sock, 1, opts.ports, &extra);
    let grpc = Grpc::connect(addr);
    Node { id: id.to_owned(), cp, addr, grpc, _dataplane: dataplane, _dir: dir }
}

impl Node {
    /// Creates `session` here: admitted and committed (OK with a dataplane, UNAVAILABLE
    /// "committed" without one).
    fn create(&mut self, session: &str) {
        match self.grpc.apply(session_req(session)) {
            Ok(_) => {}
            Err(s) if s.code() == Code::Unavailable && s.message().contains("committed as revision 1") => {}
            Err(s) => panic!("creating {session} on {}: {s:?}\n{}", self.id, self.cp.log_text()),
        }
    }

    fn place(&mut self, req: pb::PlaceRequest) -> Result<pb::PlaceResponse, tonic::Status> {
        self.grpc.rt.block_on(self.grpc.node.place(req)).map(tonic::Response::into_inner)
    }

    fn drain(&mut self, on: bool) {
        let s = if on {
            self.grpc.rt.block_on(self.grpc.node.drain(pb::DrainRequest {}))
        } else {
            self.grpc.rt.block_on(self.grpc.node.undrain(pb::UndrainRequest {}))
        };
        assert_eq!(s.unwrap().into_inner().draining, on);
    }
}

fn req(session: &str) -> pb::PlaceRequest {
    pb::PlaceRequest { session: session.into(), new_node: false, known_nodes: Vec::new(), threshold: None }
}

fn hget(r: &mut redis::Connection, node: &str, field: &str) -> Option<String> {
    redis::cmd("HGET").arg(format!("sluice:node:{node}")).arg(field).query(r).unwrap()
}

fn members(r: &mut redis::Connection, session: &str) -> BTreeSet<String> {
    redis::cmd("SMEMBERS").arg(placement::session_nodes_key(session)).query(r).unwrap()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until `node`'s heartbeat says `field` = `value`.
fn wait_field(r: &mut redis::Connection, node: &str, field: &str, value: &str) {
    wait_until(&format!("{node} {field} = {value}"), Duration::from_secs(10), || hget(r, node, field).as_deref() == Some(value));
}

/// Waits until `node`'s published score is `sessions` sessions' worth of legs.
fn wait_score(r: &mut redis::Connection, node: &str, sessions: u32) {
    wait_field(r, node, "score", &format!("{:.6}", f64::from(sessions * LEGS) / f64::from(MAX_LEGS)));
}

/// Three nodes with skewed load (a 0.4, b 0.2, c 0.0): the heartbeat hash carries the score and
/// what a placer needs; Place picks the least loaded; a node drained with Node.Drain, or with
/// its Redis drain flag, is never picked though least loaded, and picked again once undrained;
/// a node whose control plane is killed (by PID) is never picked once its key has expired;
/// with every node excluded Place answers RESOURCE_EXHAUSTED saying why for each (draining,
/// full with its score, dead); an empty session is INVALID_ARGUMENT naming `session`.
#[test]
fn place_picks_the_least_loaded_live_node_that_is_not_draining() {
    let dir = TempDir::new("place-least");
    let port = redis_port(0);
    let _redis = sluice_tests::start_redis(port, &dir.path().join("redis.log"));
    let mut r = redis_conn(port);
    let mut a = start_node("least", "node-a", port, &NO_DATAPLANE);
    let mut b = start_node("least", "node-b", port, &NO_DATAPLANE);
    let mut c = start_node("least", "node-c", port, &NO_DATAPLANE);
    for s in ["a1", "a2"] {
        a.create(s);
    }
    b.create("b1");
    wait_score(&mut r, "node-a", 2);
    wait_score(&mut r, "node-b", 1);
    wait_score(&mut r, "node-c", 0);

    // The heartbeat: what it had, and what placement needs.
    assert_eq!(hget(&mut r, "node-a", "score_reason").as_deref(), Some("legs 6/15"));
    assert_eq!(hget(&mut r, "node-a", "grpc"), Some(a.addr.to_string()));
    assert_eq!(hget(&mut r, "node-a", "draining").as_deref(), Some("0"));
    assert_eq!(hget(&mut r, "node-a", "interval_ms").as_deref(), Some("200"));
    assert_eq!(hget(&mut r, "node-a", "capacity_pps").as_deref(), Some("400000"));
    assert_eq!(hget(&mut r, "node-a", "sessions").as_deref(), Some("2"));
    assert_eq!(hget(&mut r, "node-a", "legs").as_deref(), Some("6"));
    for f in ["heartbeat_unix_ms", "packets_per_second", "ports_free", "dataplane_connected", "drained", "dataplane_pps"] {
        assert!(hget(&mut r, "node-a", f).is_some(), "{f} missing");
    }
    let (redis_now, _): (u64, u64) = redis::cmd("TIME").query(&mut r).unwrap();
    let beat: u64 = hget(&mut r, "node-a", "heartbeat_redis_ms").unwrap().parse().unwrap();
    assert!(beat <= redis_now * 1000 + 1000 && beat + 2000 >= redis_now * 1000, "heartbeat {beat} vs Redis time {redis_now} s");

    let p = a.place(req("m1")).unwrap();
    assert_eq!((p.node_id.as_str(), p.grpc.as_str(), p.already_placed), ("node-c", c.addr.to_string().as_str(), false), "{p:?}");
    assert_eq!(p.score, 0.0);
    assert_eq!(members(&mut r, "m1"), set(&["node-c"]));

    // Drained with Node.Drain: b, though c is less loaded.
    c.drain(true);
    wait_field(&mut r, "node-c", "draining", "1");
    assert_eq!(a.place(req("m2")).unwrap().node_id, "node-b");
    // And m1, whose node drains, gets another node too.
    let p = a.place(req("m1")).unwrap();
    assert_eq!((p.node_id.as_str(), p.already_placed), ("node-b", false), "{p:?}");
    assert!(p.reason.contains("none of the session's nodes"), "{p:?}");
    assert_eq!(members(&mut r, "m1"), set(&["node-b", "node-c"]));
    c.drain(false);
    wait_field(&mut r, "node-c", "draining", "0");
    assert_eq!(a.place(req("m3")).unwrap().node_id, "node-c");

    // Drained with the Redis flag.
    redis::cmd("SET").arg("sluice:node:node-c:drain").arg("1").query::<()>(&mut r).unwrap();
    wait_field(&mut r, "node-c", "draining", "1");
    assert_eq!(a.place(req("m4")).unwrap().node_id, "node-b");
    redis::cmd("DEL").arg("sluice:node:node-c:drain").query::<()>(&mut r).unwrap();
    wait_field(&mut r, "node-c", "draining", "0");
    assert_eq!(a.place(req("m5")).unwrap().node_id, "node-c");

    // Killed: never picked once its key has expired, though it was the least loaded.
    c.cp.signal(libc::SIGKILL);
    assert!(c.cp.wait_exit(Duration::from_secs(5)).is_some());
    wait_until("node-c's key to expire", Duration::from_secs(5), || redis::cmd("EXISTS").arg("sluice:node:node-c").query::<i64>(&mut r).unwrap() == 0);
    for s in ["m6", "m7"] {
        assert_eq!(b.place(req(s)).unwrap().node_id, "node-b", "{s}");
    }

    // Nothing left: a draining, b full, c dead; each named with its reason.
    a.drain(true);
    for s in ["b2", "b3", "b4", "b5"] {
        b.create(s);
    }
    wait_score(&mut r, "node-b", 5);
    wait_field(&mut r, "node-a", "draining", "1");
    let s = expect_code(b.place(req("m8")), Code::ResourceExhausted, "m8");
    for why in ["node-a: draining", "node-b: full (score 1.000: legs 15/15)", "node-c: dead (no heartbeat for"] {
        assert!(s.message().contains(why), "{why:?} not in {:?}", s.message());
    }
    assert!(members(&mut r, "m8").is_empty());

    expect_code(a.place(req("")), Code::InvalidArgument, "session");
}

/// A meeting on node c (created there: admission records c) is placed on c again while c is
/// below the threshold, though a is less loaded; `new_node` adds the least-loaded other node,
/// and its retry with `known_nodes` answers that node again without adding one; once c is at
/// the threshold (0.8) another session of c's goes to a, which is added. `sluicectl place`
/// answers the same through a node's gRPC and straight from Redis.
#[test]
fn a_meetings_node_is_kept_below_the_threshold_and_another_added_over_it() {
    let dir = TempDir::new("place-threshold");
    let port = redis_port(1);
    let _redis = sluice_tests::start_redis(port, &dir.path().join("redis.log"));
    let mut r = redis_conn(port);
    let mut a = start_node("threshold", "node-a", port, &NO_DATAPLANE);
    let mut b = start_node("threshold", "node-b", port, &NO_DATAPLANE);
    let mut c = start_node("threshold", "node-c", port, &NO_DATAPLANE);
    b.create("b1");
    for s in ["c1", "c2", "meet"] {
        c.create(s);
    }
    assert_eq!(members(&mut r, "meet"), set(&["node-c"]), "admission records the node");
    wait_score(&mut r, "node-a", 0);
    wait_score(&mut r, "node-b", 1);
    wait_score(&mut r, "node-c", 3);

    let p = a.place(req("meet")).unwrap();
    assert_eq!((p.node_id.as_str(), p.already_placed, p.nodes.as_slice()), ("node-c", true, &["node-c".to_owned()][..]), "{p:?}");
    assert!(p.reason.contains("already has node node-c"), "{p:?}");
    let (ok, out, err) = sluicectl(&["--addr", &b.addr.to_string(), "place", "--session", "meet"]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("node") && l.trim_end().ends_with("node-c")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("already placed") && l.trim_end().ends_with("yes")), "{out}");
    let (ok, out, err) = sluicectl(&["--json", "place", "--session", "meet", "--redis", &redis_url(port)]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((v["node_id"].as_str(), v["already_placed"].as_bool(), v["grpc"].as_str()), (Some("node-c"), Some(true), Some(c.addr.to_string().as_str())));

    // new_node: the least-loaded node the meeting does not have; a retry adds nothing.
    let p = b.place(pb::PlaceRequest { new_node: true, ..req("meet") }).unwrap();
    assert_eq!((p.node_id.as_str(), p.already_placed), ("node-a", false), "{p:?}");
    assert_eq!(members(&mut r, "meet"), set(&["node-a", "node-c"]));
    let retry = pb::PlaceRequest { new_node: true, known_nodes: vec!["node-c".into()], ..req("meet") };
    let p = b.place(retry.clone()).unwrap();
    assert_eq!((p.node_id.as_str(), p.already_placed), ("node-a", true), "{p:?}");
    let (ok, out, err) = sluicectl(&["--addr", &b.addr.to_string(), "--json", "place", "--session", "meet", "--new-node", "--known-node", "node-c"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"node_id\":\"node-a\"") && out.contains("\"already_placed\":true"), "{out}");
    assert_eq!(members(&mut r, "meet"), set(&["node-a", "node-c"]));

    // c at the threshold (0.8): its session "big" stays on c only with a request's threshold
    // above 0.8; with the default it goes to a, added.
    c.create("big");
    assert_eq!(members(&mut r, "big"), set(&["node-c"]));
    wait_score(&mut r, "node-c", 4);
    let p = a.place(pb::PlaceRequest { threshold: Some(0.9), ..req("big") }).unwrap();
    assert_eq!((p.node_id.as_str(), p.already_placed), ("node-c", true), "{p:?}");
    let p = a.place(req("big")).unwrap();
    assert_eq!((p.node_id.as_str(), p.already_placed), ("node-a", false), "{p:?}");
    assert!(p.reason.contains("over the threshold 0.8"), "{p:?}");
    assert_eq!(members(&mut r, "big"), set(&["node-a", "node-c"]));
    // The meeting's nodes are preferred: "meet" (on a and c) stays on a, below the threshold.
    let p = b.place(req("meet")).unwrap();
    assert_eq!((p.node_id.as_str(), p.already_placed), ("node-a", true), "{p:?}");
    expect_code(a.place(pb::PlaceRequest { threshold: Some(1.5), ..req("x") }), Code::InvalidArgument, "threshold");
}

/// Eight threads place each of 40 new sessions at once (half through the three nodes' gRPC,
/// half with the library call), while the nodes' published scores flip every millisecond
/// (another thread rewrites node-a's and node-b's in Redis, as a fast-changing load would, and
/// keeps node-c's at 0.5): every thread gets
/// the same node for a session and the session's set has exactly one member. A placer whose
/// decision and write were not one atomic step would, with loads changing under it, add a
/// second node.
#[test]
fn concurrent_places_for_a_new_session_agree_on_one_node() {
    let dir = TempDir::new("place-concurrent");
    let port = redis_port(2);
    let _redis = sluice_tests::start_redis(port, &dir.path().join("redis.log"));
    let mut r = redis_conn(port);
    // Slow heartbeats: the flipping scores below stand for a few seconds between them.
    let opts = NodeOpts { heartbeat_ms: 2000, ..NO_DATAPLANE };
    let nodes: Vec<Node> = ["node-a", "node-b", "node-c"].iter().map(|id| start_node("concurrent", id, port, &opts)).collect();
    for n in &nodes {
        wait_field(&mut r, &n.id, "draining", "0");
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut r = redis_conn(port);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (x, y) = if i.is_multiple_of(2) { ("0.1", "0.3") } else { ("0.3", "0.1") };
                let mut pipe = redis::pipe();
                for (node, score) in [("node-a", x), ("node-b", y), ("node-c", "0.5")] {
                    pipe.cmd("HSET").arg(format!("sluice:node:{node}")).arg("score").arg(score).ignore();
                }
                pipe.query::<()>(&mut r).unwrap();
                thread::sleep(Duration::from_millis(1));
            }
        })
    };

    const THREADS: usize = 8;
    const SESSIONS: usize = 40;
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = barrier.clone();
            let addr = addrs[t % addrs.len()];
            thread::spawn(move || {
                let mut grpc = (t % 2 == 0).then(|| Grpc::connect(addr));
                let placer = placement::Placer::new(&redis_url(port), placement::DEFAULT_THRESHOLD).unwrap();
                let mut answers = Vec::new();
                for s in 0..SESSIONS {
                    let session = format!("race-{s}");
                    barrier.wait();
                    // An error is kept, not panicked on: the other threads wait at the barrier.
                    let node = match &mut grpc {
                        Some(g) => g.rt.block_on(g.node.place(req(&session))).map(|p| p.into_inner().node_id).map_err(|e| format!("{e:?}")),
                        None => placer.place(&placement::Request::new(session.clone())).map(|p| p.node_id).map_err(|e| e.to_string()),
                    };
                    answers.push(node.unwrap_or_else(|e| format!("error: {e}")));
                }
                answers
            })
        })
        .collect();
    let answers: Vec<Vec<String>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();

    let mut chosen = BTreeSet::new();
    for s in 0..SESSIONS {
        let session = format!("race-{s}");
        let got: BTreeSet<&String> = answers.iter().map(|a| &a[s]).collect();
        assert_eq!(got.len(), 1, "{session}: threads got {got:?}");
        assert!(!got.iter().any(|n| n.starts_with("error")), "{session}: {got:?}");
        let node = (*got.iter().next().unwrap()).clone();
        assert_eq!(members(&mut r, &session), set(&[node.as_str()]), "{session}");
        chosen.insert(node);
    }
    // The flipping load did reach the decisions: both flipped nodes were chosen (node-c only
    // in the moment after one of its own heartbeats, which publish its real score, 0).
    assert!(chosen.contains("node-a") && chosen.contains("node-b"), "{chosen:?}");
}

/// Redis stopped (SIGSTOP: commands time out; then killed: refused): Place answers UNAVAILABLE
/// naming Redis and the error, through gRPC, the library and sluicectl; the nodes keep
/// answering Routes (reads, and a new session admitted on local state). Redis restarts empty:
/// the node holding session "s" tells it so before its heartbeat makes it a candidate again, so
/// Place answers that node for "s" (already placed) though another is less loaded, and the
/// session's set has one member; a new session is placed as before.
#[test]
fn while_redis_is_down_place_is_unavailable_and_the_nodes_keep_serving() {
    let dir = TempDir::new("place-outage");
    let port = redis_port(3);
    let redis = sluice_tests::start_redis(port, &dir.path().join("redis.log"));
    let mut r = redis_conn(port);
    let mut a = start_node("outage", "node-a", port, &NO_DATAPLANE);
    let mut b = start_node("outage", "node-b", port, &NO_DATAPLANE);
    wait_score(&mut r, "node-a", 0);
    wait_score(&mut r, "node-b", 0);
    let p = b.place(req("s")).unwrap();
    assert_eq!(p.node_id, "node-a", "tie: the smaller id");
    a.create("s");
    wait_score(&mut r, "node-a", 1);
    let at = format!("redis at 127.0.0.1:{port}");

    // Stopped: commands time out.
    redis.signal(libc::SIGSTOP);
    let start = Instant::now();
    let s = expect_code(b.place(req("s")), Code::Unavailable, &at);
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert!(s.message().to_lowercase().contains("timed out") || s.message().contains("temporarily unavailable"), "{s:?}");
    redis.signal(libc::SIGCONT);
    drop(redis);

    // Gone: refused.
    let s = expect_code(b.place(req("s")), Code::Unavailable, &at);
    assert!(s.message().contains("refused"), "{s:?}");
    let placer = placement::Placer::new(&redis_url(port), 0.8).unwrap();
    let e = placer.place(&placement::Request::new("s")).unwrap_err();
    assert!(matches!(e, placement::PlaceError::Redis { .. }) && e.to_string().contains(&at), "{e}");
    let (ok, _, err) = sluicectl(&["--addr", &a.addr.to_string(), "place", "--session", "s"]);
    assert!(!ok && err.contains("Unavailable") && err.contains(&at), "{err}");
    let (ok, _, err) = sluicectl(&["place", "--session", "s", "--redis", &redis_url(port)]);
    assert!(!ok && err.contains("Unavailable") && err.contains(&at), "{err}");
    expect_code(b.place(req("")), Code::InvalidArgument, "session");

    // The nodes keep serving Routes.
    for n in [&mut a, &mut b] {
        let start = Instant::now();
        let list = n.grpc.rt.block_on(n.grpc.routes.list_sessions(pb::ListSessionsRequest {})).unwrap().into_inner();
        assert!(start.elapsed() < Duration::from_secs(1), "ListSessions took {:?}", start.elapsed());
        assert_eq!(list.sessions.len(), usize::from(n.id == "node-a"), "{}", n.id);
    }
    assert_eq!(a.grpc.session("s").unwrap().legs.len(), LEGS as usize);
    b.create("during-outage");

    // Back, empty: "s" is still node-a's, though node-b (0.2, like node-a now) ties and "t"
    // goes to the less-loaded one.
    let _redis = sluice_tests::start_redis(port, &dir.path().join("redis-2.log"));
    let mut r = redis_conn(port);
    wait_score(&mut r, "node-a", 1);
    wait_score(&mut r, "node-b", 1);
    b.grpc.rt.block_on(b.grpc.routes.delete_session(pb::DeleteSessionRequest { session: "during-outage".into(), expected_revision: None })).ok();
    wait_score(&mut r, "node-b", 0);
    assert!(a.cp.log_text().contains("told redis which sessions this node holds"), "{}", a.cp.log_text());
    for _ in 0..2 {
        let p = b.place(req("s")).unwrap();
        assert_eq!((p.node_id.as_str(), p.already_placed), ("node-a", true), "{p:?}");
    }
    assert_eq!(members(&mut r, "s"), set(&["node-a"]));
    assert_eq!(members(&mut r, "during-outage"), set(&["node-b"]), "announced by node-b on reconnecting\n{}", b.cp.log_text());
    let p = a.place(req("t")).unwrap();
    assert_eq!((p.node_id.as_str(), p.already_placed), ("node-b", false), "{p:?}");
}

/// Admission (two nodes, each with its dataplane): a session placed on node-a is refused on
/// node-b (FAILED_PRECONDITION naming the session and node-a) and admitted on node-a; once
/// `new_node` adds node-b, node-b admits it too. A session no key knows is admitted where it is
/// first created and recorded there, so the other node refuses it; the legacy placement key
/// still decides for a session without a set.
#[test]
fn admission_follows_the_sessions_nodes() {
    let dir = TempDir::new("place-admit");
    let port = redis_port(4);
    let _redis = sluice_tests::start_redis(port, &dir.path().join("redis.log"));
    let mut r = redis_conn(port);
    let mut a = start_node("admit", "node-a", port, &NodeOpts { heartbeat_ms: 200, ports: (19_940, 19_955), dataplane: true });
    let mut b = start_node("admit", "node-b", port, &NodeOpts { heartbeat_ms: 200, ports: (19_960, 19_975), dataplane: true });
    wait_score(&mut r, "node-a", 0);
    wait_score(&mut r, "node-b", 0);

    assert_eq!(b.place(req("m")).unwrap().node_id, "node-a");
    let s = expect_code(b.grpc.apply(session_req("m")), Code::FailedPrecondition, "session");
    assert!(s.message().contains("\"node-a\"") && s.message().contains("sluice:session:m:nodes"), "{s:?}");
    a.grpc.apply(session_req("m")).unwrap_or_else(|e| panic!("{e:?}"));
    let p = a.place(pb::PlaceRequest { new_node: true, ..req("m") }).unwrap();
    assert_eq!(p.node_id, "node-b");
    b.grpc.apply(session_req("m")).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(members(&mut r, "m"), set(&["node-a", "node-b"]));

    // Neither key: admitted where it is created, and recorded there.
    b.grpc.apply(session_req("fresh")).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(members(&mut r, "fresh"), set(&["node-b"]));
    let s = expect_code(a.grpc.apply(session_req("fresh")), Code::FailedPrecondition, "session");
    assert!(s.message().contains("\"node-b\""), "{s:?}");

    // The legacy key.
    redis::cmd("SET").arg("sluice:placement:old").arg("node-b").query::<()>(&mut r).unwrap();
    let s = expect_code(a.grpc.apply(session_req("old")), Code::FailedPrecondition, "session");
    assert!(s.message().contains("\"node-b\""), "{s:?}");
    b.grpc.apply(session_req("old")).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(a.grpc.session("old").unwrap_err().code(), Code::NotFound);
    assert_eq!(b.grpc.session("old").unwrap().legs.len(), LEGS as usize);
}
