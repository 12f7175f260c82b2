//! Leg ports are in effect when acknowledged (issue 15, item 5, in part): the dataplane refuses a
//! leg outside its configured port range naming the leg and port, the control plane refuses a
//! change that would get such a port before journaling anything, and the dataplane raises its
//! descriptor limit at start and says how many legs it has room for; a port of the range another
//! process holds is skipped, and the skip is journaled so a restart keeps the ports.

use sluice_api::{Client, Request, Response};
use sluice_core::ids::Generation;
use sluice_core::table::{Delta, Op};
use sluice_tests::TempDir;
use tonic::Code;

mod cp;
use cp::{Grpc, expect_code, session_req, start_controlplane_with, start_dataplane_in, start_dataplane_in_netns, wait_until};

/// The control plane's range (33600-33607) is wider than the dataplane's (33600-33604): the
/// first session's three legs fit (33600-33602, or 33600, 33602 and 33604 on one of the
/// dataplane's two workers once the control plane knows them), the second's would get 33605
/// either way and the change is refused naming it, with nothing committed; a delta sent
/// straight to the dataplane with a leg outside its range is refused naming the leg and port.
/// (Before: both were acknowledged and the leg's port was bound outside the range the XDP stage
/// passes.)
#[test]
fn a_leg_outside_the_dataplanes_port_range_is_refused_naming_it() {
    let dir = TempDir::new("cp-port-range");
    let (dataplane, dp_sock) = start_dataplane_in(dir.path(), (33_600, 33_604));
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, (33_600, 33_607));
    let mut grpc = Grpc::connect(addr);
    let first = grpc.apply(session_req("first")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    assert!(first.ports.iter().all(|p| (33_600..=33_604).contains(&p.local_port)), "{first:?}");
    let s = expect_code(grpc.apply(session_req("second")), Code::FailedPrecondition, ".leg");
    assert!(s.message().contains("33605") && s.message().contains("[33600, 33604]"), "{s:?}");
    expect_code(grpc.session("second"), Code::NotFound, "second");
    assert_eq!(grpc.status().sessions, 1, "nothing of the refused change was committed");
    assert!(cp.log_text().contains("is not inside the dataplane's port_range"), "{}", cp.log_text());

    // The dataplane's own check, for a delta from any client.
    let mut control = Client::connect(&dp_sock).unwrap();
    let Response::Snapshot(snap) = control.call(&Request::Snapshot { keys: true }).unwrap() else { panic!("no snapshot") };
    let mut leg = snap.ops.iter().find_map(|o| if let Op::UpsertLeg(l) = o { Some(l.clone()) } else { None }).expect("a leg");
    leg.local_port = 33_700;
    let delta = Delta { generation: Generation(snap.generation.0 + 1), replace_all: false, ops: vec![Op::UpsertLeg(leg.clone())] };
    match control.call(&Request::Apply(delta)).unwrap() {
        Response::Rejected { reason, .. } => assert!(reason.contains("33700") && reason.contains(&leg.id.to_string()), "{reason}"),
        other => panic!("a leg outside the range was not refused: {other:?}"),
    }
    // And the descriptor limit: raised to the hard limit, the capacity logged.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", dataplane.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(v[3], v[4], "soft limit raised to the hard one: {line}");
    assert!(dataplane.log_text().contains("leg_capacity"), "{}", dataplane.log_text());
}

/// Issue 15, item 5: a port of the range held by another process is never given to a leg
/// (before: the Apply answered OK and the dataplane logged "cannot open leg port", the leg dead
/// both ways), and the control plane's restart keeps every acknowledged leg's port although the
/// port is free by then (the skipped ports are journaled with the change). The dataplane runs
/// two workers: a session's legs get worker 0's ports (even ones), the next session worker 1's.
#[test]
fn a_port_held_by_another_process_is_skipped_and_replay_keeps_the_ports() {
    const PORTS: (u16, u16) = (33_640, 33_647);
    let dir = TempDir::new("cp-port-held");
    let held = std::net::UdpSocket::bind(("127.0.0.1", 33_642)).expect("the test's own socket on 33642");
    let (dataplane, dp_sock) = start_dataplane_in(dir.path(), PORTS);
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS);
    wait_until("the control plane to know the dataplane's workers", std::time::Duration::from_secs(20), || {
        cp.log_text().contains("new legs' ports follow the dataplane's workers")
    });
    let mut grpc = Grpc::connect(addr);
    let first = grpc.apply(session_req("first")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let ports: Vec<u16> = first.ports.iter().map(|p| p.local_port as u16).collect();
    assert_eq!(ports, [33_640, 33_644, 33_646], "33642 is held and skipped");
    assert!(cp.log_text().contains("ports held by another process were skipped"), "{}", cp.log_text());
    // Every leg's port is open on the dataplane (its workers log each port they cannot bind).
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!dataplane.log_text().contains("cannot open leg port"), "{}", dataplane.log_text());

    // The port comes free; a restarted control plane replays the journal onto the same ports.
    drop(held);
    cp.signal(libc::SIGKILL);
    drop(cp);
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 2, PORTS);
    let mut grpc = Grpc::connect(addr);
    let session = grpc.session("first").unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let mut after: Vec<u16> = session.legs.iter().map(|l| l.local_port as u16).collect();
    after.sort_unstable();
    assert_eq!(after, ports, "acknowledged legs keep their ports across the restart");
    // And the allocation goes on from where it was: the worker count is journaled too, so the
    // next session goes to the other worker.
    let second = grpc.apply(session_req("second")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let next: Vec<u16> = second.ports.iter().map(|p| p.local_port as u16).collect();
    assert_eq!(next, [33_641, 33_643, 33_645]);
}

/// Issue 15 item 5: the control plane never moves an acknowledged leg's port because its
/// configured range changed. Restarted with a range that leaves out a leg's port, it refuses to
/// start and names the leg, the port and what to do; with the range back it starts and the leg
/// still has its port.
#[test]
fn a_narrowed_port_range_refuses_to_start_naming_the_legs_it_would_move() {
    let dir = TempDir::new("cp-range-narrowed");
    let (_dataplane, dp_sock) = start_dataplane_in(dir.path(), (33_620, 33_629));
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, (33_620, 33_629));
    let mut grpc = Grpc::connect(addr);
    let first = grpc.apply(session_req("first")).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let held: Vec<u32> = first.ports.iter().map(|p| p.local_port).collect();
    drop(grpc);
    drop(cp);
    let (mut narrowed, _) = {
        // (start_controlplane_with waits for "gRPC ready"; this one must exit instead.)
        let cfg = dir.path().join("controlplane-narrow.toml");
        std::fs::write(
            &cfg,
            format!(
                "[controlplane]\nplaintext = true\ngrpc_listen = \"127.0.0.1:0\"\ndataplane_socket = \"{}\"\nstate_dir = \"{}\"\nport_range = [33625, 33629]\n",
                dp_sock.display(),
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        (sluice_tests::Daemon::start("sluice-controlplane", &["--config", cfg.to_str().unwrap()], &dir.path().join("narrow.log")), ())
    };
    let status = narrowed.wait_exit(std::time::Duration::from_secs(20)).unwrap_or_else(|| panic!("it did not refuse to start:\n{}", narrowed.log_text()));
    assert!(!status.success());
    let log = narrowed.log_text();
    assert!(log.contains("leaves out") && log.contains("session first") && log.contains(&format!("port {}", held[0])), "{log}");
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 3, (33_620, 33_629));
    let mut grpc = Grpc::connect(addr);
    let s = grpc.session("first").unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let mut ports: Vec<u32> = s.legs.iter().map(|l| l.local_port).collect();
    ports.sort_unstable();
    let mut want = held.clone();
    want.sort_unstable();
    assert_eq!(ports, want, "the legs kept their ports");
}

/// Whether UDP `port` on 127.0.0.1 is held by someone in namespace `ns` (a bind there fails).
fn held_in(ns: &sluice_bench::netns::NetNs, port: u16) -> bool {
    ns.enter(|| matches!(std::net::UdpSocket::bind(("127.0.0.1", port)), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse))
}

/// Issue 15 item 5, the rest: a port the control plane's check cannot see taken (here held in
/// the dataplane's own network namespace; the same as a port taken between the check and the
/// dataplane's bind) is not acknowledged. The dataplane names the ports it could not open in its
/// answer to the delta; the control plane moves the new leg to another port, journals the move
/// and installs it before answering, so the answer gives a port the dataplane holds, and a
/// restart replays the move. A port of an acknowledged leg that cannot be opened (the dataplane
/// restarted while another process took it) is reported: the leg keeps its port, the log and
/// the node's status say so. (Before: the Apply answered OK with 33660 and that leg was dead.)
#[test]
fn a_port_the_dataplane_cannot_open_is_never_acknowledged() {
    const PORTS: (u16, u16) = (33_660, 33_667);
    let dir = TempDir::new("cp-port-unopened");
    let ns = sluice_bench::netns::NetNs::new("pu");
    let holder = ns.enter(|| std::net::UdpSocket::bind(("127.0.0.1", 33_660))).expect("the test's own socket on 33660 in its namespace");
    let (dataplane, dp_sock) = start_dataplane_in_netns(dir.path(), PORTS, Some(&ns.name));
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS);
    let mut grpc = Grpc::connect(addr);
    let first = grpc.apply(session_req("first")).unwrap_or_else(|e| panic!("{e:?}\n{}\n{}", cp.log_text(), dataplane.log_text()));
    let ports: Vec<u16> = first.ports.iter().map(|p| p.local_port as u16).collect();
    assert!(!ports.contains(&33_660), "a port the dataplane could not open was acknowledged: {ports:?}\n{}", cp.log_text());
    assert_eq!(ports.len(), 3);
    assert!(cp.log_text().contains("the leg gets another"), "{}", cp.log_text());
    for &p in &ports {
        assert!(held_in(&ns, p), "port {p} of the answer is not open in the dataplane's namespace\n{}", dataplane.log_text());
    }
    assert_eq!(grpc.status().unbound_ports, 0, "every leg's port is open");
    let session = grpc.session("first").unwrap();
    let mut legs: Vec<u16> = session.legs.iter().map(|l| l.local_port as u16).collect();
    legs.sort_unstable();
    let mut want = ports.clone();
    want.sort_unstable();
    assert_eq!(legs, want, "the session shows the ports the answer gave");

    // The move is journaled: a restarted control plane has the same ports (the dataplane
    // keeps its tables, so nothing needs to move again).
    cp.signal(libc::SIGKILL);
    drop(cp);
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 2, PORTS);
    let mut grpc = Grpc::connect(addr);
    let mut after: Vec<u16> = grpc.session("first").unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text())).legs.iter().map(|l| l.local_port as u16).collect();
    after.sort_unstable();
    assert_eq!(after, want, "the replay keeps the moved port");

    // An acknowledged leg whose port is taken while the dataplane is down keeps its port and is
    // reported once the dataplane is back and the tables are installed again.
    drop(holder);
    dataplane.signal(libc::SIGKILL);
    drop(dataplane);
    let _ = std::fs::remove_file(&dp_sock);
    let taken = ns.enter(|| std::net::UdpSocket::bind(("127.0.0.1", want[0]))).expect("take an acknowledged leg's port");
    let (dataplane, _) = start_dataplane_in_netns(dir.path(), PORTS, Some(&ns.name));
    wait_until("the status to count the port the dataplane cannot open", std::time::Duration::from_secs(20), || grpc.status().unbound_ports == 1);
    assert!(cp.log_text().contains("the dataplane cannot open a leg port; the leg receives nothing"), "{}", cp.log_text());
    let mut kept: Vec<u16> = grpc.session("first").unwrap().legs.iter().map(|l| l.local_port as u16).collect();
    kept.sort_unstable();
    assert_eq!(kept, want, "an acknowledged leg is not moved");
    drop(taken);
    drop(dataplane);
}
