//! What the control plane's end-to-end tests share: starting the real daemons, a blocking gRPC
//! client, and the requests and checks most tests make. Each test binary uses part of it.
#![allow(dead_code, reason = "each test binary that includes this module uses a different part of it")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use sluice_bench::live;
use sluice_bench::meeting;
use sluice_controlplane::pb;
use sluice_controlplane::pb::node_client::NodeClient;
use sluice_controlplane::pb::routes_client::RoutesClient;
use sluice_core::srtp::Profile;
use sluice_core::table::Op;
use sluice_tests::Daemon;
use tonic::Code;
use tonic::transport::Channel;

pub struct Grpc {
    pub rt: tokio::runtime::Runtime,
    pub routes: RoutesClient<Channel>,
    pub node: NodeClient<Channel>,
    pub channel: Channel,
}

impl Grpc {
    pub fn connect(addr: SocketAddr) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        let channel = loop {
            match rt.block_on(Channel::from_shared(format!("http://{addr}")).unwrap().connect()) {
                Ok(c) => break c,
                Err(e) if Instant::now() > end => panic!("control plane never listened: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        };
        Self { rt, routes: RoutesClient::new(channel.clone()), node: NodeClient::new(channel.clone()), channel }
    }

    pub fn apply(&mut self, req: pb::ChangeSet) -> Result<pb::ApplyResponse, tonic::Status> {
        self.rt.block_on(self.routes.apply(req)).map(tonic::Response::into_inner)
    }

    pub fn session(&mut self, id: &str) -> Result<pb::Session, tonic::Status> {
        self.rt.block_on(self.routes.get_session(pb::GetSessionRequest { session: id.into() })).map(tonic::Response::into_inner)
    }

    pub fn status(&mut self) -> pb::NodeStatus {
        self.rt.block_on(self.node.get_status(pb::GetStatusRequest {})).unwrap().into_inner()
    }
}

/// Starts the dataplane with leg ports 19000-19999 (the control plane tests' ranges).
pub fn start_dataplane(dir: &Path) -> (Daemon, PathBuf) {
    start_dataplane_in(dir, (19_000, 19_999))
}

/// Starts the dataplane with leg ports in `range`.
pub fn start_dataplane_in(dir: &Path, range: (u16, u16)) -> (Daemon, PathBuf) {
    start_dataplane_in_netns(dir, range, None)
}

/// [`start_dataplane_in`], the dataplane in network namespace `netns` when given (its control
/// socket is a path, so a control plane outside the namespace reaches it).
pub fn start_dataplane_in_netns(dir: &Path, range: (u16, u16), netns: Option<&str>) -> (Daemon, PathBuf) {
    let sock = dir.join("dp.sock");
    let cfg = dir.join("dataplane.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nlisten_ip = \"127.0.0.1\"\nworkers = 2\nbackend = \"mmsg\"\nport_range = [{}, {}]\ncontrol_socket = \"{}\"\n",
            range.0,
            range.1,
            sock.display()
        ),
    )
    .unwrap();
    let args = ["--config", cfg.to_str().unwrap(), "--metrics", "off"];
    let log = dir.join("dataplane.log");
    let mut d = match netns {
        Some(ns) => Daemon::start_in_netns(ns, "sluice-dataplane", &args, &log),
        None => Daemon::start("sluice-dataplane", &args, &log),
    };
    assert!(d.wait_for_path(&sock, Duration::from_secs(10)), "control socket never appeared:\n{}", d.log_text());
    (d, sock)
}

/// Starts the control plane on an ephemeral gRPC port (so parallel tests never share one) and
/// reads the address it bound from its log.
pub fn start_controlplane_with(dir: &Path, dp_sock: &Path, run: u32, ports: (u16, u16)) -> (Daemon, SocketAddr) {
    start_controlplane_cfg(dir, dp_sock, run, ports, "plaintext = true\n")
}

/// Like [`start_controlplane_with`], with `extra` appended to the `[controlplane]` table (it may
/// open sub-tables such as `[controlplane.tls]`).
pub fn start_controlplane_cfg(dir: &Path, dp_sock: &Path, run: u32, ports: (u16, u16), extra: &str) -> (Daemon, SocketAddr) {
    let cfg = dir.join("controlplane.toml");
    std::fs::write(
        &cfg,
        format!(
            "[controlplane]\ngrpc_listen = \"127.0.0.1:0\"\ndataplane_socket = \"{}\"\nstate_dir = \"{}\"\nport_range = [{}, {}]\n{extra}",
            dp_sock.display(),
            dir.join("state").display(),
            ports.0,
            ports.1
        ),
    )
    .unwrap();
    let mut d = Daemon::start("sluice-controlplane", &["--config", cfg.to_str().unwrap()], &dir.join(format!("controlplane-{run}.log")));
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let log = d.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("gRPC ready")) {
            let at = line.find("listen=").expect("listen field") + "listen=".len();
            let addr: String = line[at..].chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
            return (d, addr.parse().unwrap_or_else(|e| panic!("{addr:?}: {e}")));
        }
        assert!(Instant::now() < end && d.wait_exit(Duration::from_millis(20)).is_none(), "control plane did not start:\n{log}");
    }
}

/// The meeting `meeting::build` describes, as gRPC changes: the demo's own conversion.
pub fn changes(ops: &[Op]) -> Vec<pb::Change> {
    live::changes(ops).expect("meeting::build makes only upserts")
}

pub fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, field: &str) -> tonic::Status {
    let s = r.expect_err("must be refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains(field), "message {:?} does not name {field}", s.message());
    s
}

pub fn session_req(session: &str) -> pb::ChangeSet {
    let (ops, _) = meeting::build(9, 3, Profile::AeadAes128Gcm, 1);
    pb::ChangeSet { session: session.into(), idempotency_key: String::new(), expected_revision: None, changes: changes(&ops) }
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn session_req_with(session: &str, changes: Vec<pb::Change>) -> pb::ChangeSet {
    pb::ChangeSet { session: session.into(), idempotency_key: String::new(), expected_revision: None, changes }
}
