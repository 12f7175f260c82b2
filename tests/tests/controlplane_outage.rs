//! The control plane while its dataplane does not answer (stopped with SIGSTOP, so its socket
//! still accepts connections but nothing is read): reads are served from the control plane's own
//! state at once, health and Node status say the dataplane is not answering, a change is
//! committed (durable) and answered at once, and reaches the dataplane when it runs again.

use std::thread;
use std::time::{Duration, Instant};

use sluice_core::table::Op;
use sluice_tests::TempDir;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

mod cp;
use cp::{Grpc, expect_code, session_req, start_controlplane_cfg, start_controlplane_with, start_dataplane, start_dataplane_in, wait_until};

/// How long a read may take while the dataplane is stopped.
const READ_BOUND: Duration = Duration::from_millis(200);

fn health(grpc: &mut Grpc, service: &str) -> i32 {
    let mut client = HealthClient::new(grpc.channel.clone());
    grpc.rt.block_on(client.check(HealthCheckRequest { service: service.into() })).unwrap().into_inner().status
}

/// Legs the dataplane has installed, from its own snapshot.
fn installed_legs(sock: &std::path::Path) -> usize {
    let mut control = sluice_api::Client::connect(sock).unwrap();
    let sluice_api::Response::Snapshot(snap) = control.call(&sluice_api::Request::Snapshot { keys: false }).unwrap() else { panic!("no snapshot") };
    snap.ops.iter().filter(|o| matches!(o, Op::UpsertLeg(_))).count()
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < READ_BOUND, "{what} took {took:?} while the dataplane is stopped (bound {READ_BOUND:?})");
    out
}

/// Item 8 of issue 15: before, every call blocked 5-10 s behind the engine lock while the
/// dataplane was stopped, and health said SERVING throughout.
#[test]
fn a_stopped_dataplane_does_not_freeze_the_api() {
    const PORTS: (u16, u16) = (33_500, 33_515);
    let dir = TempDir::new("cp-dp-stopped");
    let (dataplane, dp_sock) = start_dataplane_in(dir.path(), (33_500, 33_599));
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS);
    let mut grpc = Grpc::connect(addr);
    grpc.apply(session_req("before")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    for service in ["", "sluice.v1.Routes", "sluice.v1.Node"] {
        assert_eq!(health(&mut grpc, service), ServingStatus::Serving as i32, "{service:?}");
    }

    dataplane.signal(libc::SIGSTOP);
    // Reads answer from the control plane's state, at once, from the first moment on.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        let s = timed("GetSession", || grpc.session("before")).unwrap();
        assert_eq!(s.revision, 1);
        let list = timed("ListSessions", || grpc.rt.block_on(grpc.routes.list_sessions(sluice_controlplane::pb::ListSessionsRequest {}))).unwrap();
        assert_eq!(list.into_inner().sessions.len(), 1);
        timed("GetStatus", || grpc.status());
        timed("Watch", || grpc.rt.block_on(grpc.routes.watch(sluice_controlplane::pb::WatchRequest { session: String::new() }))).unwrap();
        thread::sleep(Duration::from_millis(100));
    }
    // Health and status say so within a few seconds, and the log once.
    wait_until("health NOT_SERVING", Duration::from_secs(5), || health(&mut grpc, "sluice.v1.Routes") == ServingStatus::NotServing as i32);
    assert_eq!(health(&mut grpc, ""), ServingStatus::NotServing as i32);
    assert!(!timed("GetStatus", || grpc.status()).dataplane_connected);

    // A change while it is stopped: committed (durable), answered at once per Apply's semantics.
    let start = Instant::now();
    let s = expect_code(grpc.apply(session_req("during")), Code::Unavailable, "committed as revision 1");
    assert!(start.elapsed() < Duration::from_secs(1), "Apply took {:?} while the dataplane is stopped", start.elapsed());
    assert!(s.message().contains("installed when the dataplane is back"), "{s:?}");
    assert_eq!(timed("GetSession", || grpc.session("during")).unwrap().revision, 1);
    thread::sleep(Duration::from_secs(1));
    let log = cp.log_text();
    assert_eq!(log.matches("dataplane not answering").count(), 1, "logged once:\n{log}");

    dataplane.signal(libc::SIGCONT);
    wait_until("health SERVING again", Duration::from_secs(15), || health(&mut grpc, "sluice.v1.Routes") == ServingStatus::Serving as i32);
    wait_until("the change made during the stop installed", Duration::from_secs(10), || installed_legs(&dp_sock) == 6);
    let st = grpc.status();
    assert!(st.dataplane_connected && st.dataplane_generation > 0, "{st:?}");
    assert_eq!(st.sessions, 2);
    grpc.apply(session_req("after")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
}

/// Watch streams are bounded (issue 15 item 6): a client cannot hold more than
/// `max_watchers_per_connection` on one connection, nor all clients more than `max_watchers`;
/// the one over the limit gets RESOURCE_EXHAUSTED naming the setting, and closing a stream
/// frees its place at once. (3,000 stalled streams grew an unbounded control plane by 1.55 GB.)
#[test]
fn watch_streams_are_capped_per_connection_and_per_node() {
    use sluice_controlplane::pb;
    use sluice_controlplane::pb::routes_client::RoutesClient;
    let dir = TempDir::new("cp-watch-cap");
    let (_dp, sock) = start_dataplane(dir.path());
    let (_cp, addr) = start_controlplane_cfg(dir.path(), &sock, 1, (19_700, 19_709), "plaintext = true\nmax_watchers = 5\nmax_watchers_per_connection = 3\n");
    let a = Grpc::connect(addr);
    let b = Grpc::connect(addr);
    let watch = |g: &Grpc| {
        let mut r = RoutesClient::new(g.channel.clone());
        g.rt.block_on(r.watch(pb::WatchRequest { session: String::new() })).map(tonic::Response::into_inner)
    };
    let mut held: Vec<_> = (0..3).map(|_| watch(&a).expect("within the connection's limit")).collect();
    let e = watch(&a).expect_err("a fourth on one connection");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_watchers_per_connection"), "{e:?}");
    held.extend((0..2).map(|_| watch(&b).expect("another connection")));
    let e = watch(&b).expect_err("a sixth on the node");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_watchers"), "{e:?}");
    // Closing one gives its place back.
    drop(held.pop());
    let end = Instant::now() + Duration::from_secs(5);
    let again = loop {
        match watch(&b) {
            Ok(s) => break s,
            Err(e) if Instant::now() < end && e.code() == Code::ResourceExhausted => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the freed place was not given back: {e:?}"),
        }
    };
    drop((again, held));
}
