//! What the control plane's end-to-end tests share: starting the real daemons, a blocking gRPC
//! client, and the requests and checks most tests make. Each test binary uses part of it.
#![allow(dead_code, reason = "each test binary that includes this module uses a different part of it")]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use sluice_bench::live;
use sluice_bench::meeting::{self, Participant};
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

    pub fn adopt(&mut self, session: &str, from_node: &str) -> Result<pb::ApplyResponse, tonic::Status> {
        self.rt.block_on(self.routes.adopt(pb::AdoptRequest { session: session.into(), from_node: from_node.into() })).map(tonic::Response::into_inner)
    }

    pub fn export(&mut self, session: &str, freeze: bool) -> Result<pb::ExportedSession, tonic::Status> {
        self.rt.block_on(self.routes.export(pb::ExportRequest { session: session.into(), freeze })).map(tonic::Response::into_inner)
    }

    pub fn import(&mut self, exported: pb::ExportedSession) -> Result<pb::ApplyResponse, tonic::Status> {
        self.rt.block_on(self.routes.import(exported)).map(tonic::Response::into_inner)
    }

    pub fn drain(&mut self, on: bool) {
        if on {
            self.rt.block_on(self.node.drain(pb::DrainRequest {})).unwrap();
        } else {
            self.rt.block_on(self.node.undrain(pb::UndrainRequest {})).unwrap();
        }
    }

    pub fn place(&mut self, session: &str) -> Result<pb::PlaceResponse, tonic::Status> {
        self.rt.block_on(self.node.place(pb::PlaceRequest { session: session.into(), ..Default::default() })).map(tonic::Response::into_inner)
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
    start_dataplane_at(dir, range, netns, "127.0.0.1", "off")
}

/// Writes `dir/dataplane.toml`: two mmsg workers, legs on `listen_ip` in `range`, the control
/// socket `dir/dp.sock`; returns (the file, the socket).
pub fn dataplane_config(dir: &Path, range: (u16, u16), listen_ip: &str) -> (PathBuf, PathBuf) {
    let sock = dir.join("dp.sock");
    let cfg = dir.join("dataplane.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nlisten_ip = \"{listen_ip}\"\nworkers = 2\nbackend = \"mmsg\"\nport_range = [{}, {}]\ncontrol_socket = \"{}\"\n",
            range.0,
            range.1,
            sock.display()
        ),
    )
    .unwrap();
    (cfg, sock)
}

/// [`start_dataplane_in_netns`] with its legs on `listen_ip` and its metrics on `metrics`
/// (an address, or "off").
pub fn start_dataplane_at(dir: &Path, range: (u16, u16), netns: Option<&str>, listen_ip: &str, metrics: &str) -> (Daemon, PathBuf) {
    let (cfg, sock) = dataplane_config(dir, range, listen_ip);
    let args = ["--config", cfg.to_str().unwrap(), "--metrics", metrics];
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

/// Runs `sluicectl` with `args`; (success, stdout, stderr).
pub fn sluicectl(args: &[&str]) -> (bool, String, String) {
    let path = sluice_tests::bin_dir().join("sluicectl");
    assert!(path.exists(), "{} is not built", path.display());
    let out = std::process::Command::new(&path).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
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

/// The participants, their sockets and what they received (RTP packets by SSRC).
pub struct Media {
    pub people: Vec<Participant>,
    pub sockets: Vec<UdpSocket>,
    pub tick: u64,
    /// The SFU address of each participant's leg (its port is the participant's).
    pub sfu_ip: Vec<IpAddr>,
}

impl Media {
    /// Participants whose SFU is on loopback.
    pub fn new(people: Vec<Participant>, sockets: Vec<UdpSocket>) -> Self {
        let sfu_ip = vec![IpAddr::from([127, 0, 0, 1]); people.len()];
        Self { people, sockets, tick: 0, sfu_ip }
    }

    /// Participant `i`'s SFU address.
    pub fn sfu(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.sfu_ip[i], self.people[i].port)
    }

    pub fn hello(&mut self) {
        for i in 0..self.people.len() {
            let to = self.sfu(i);
            self.sockets[i].send_to(&self.people[i].hello(), to).unwrap();
        }
        thread::sleep(Duration::from_millis(100));
        self.drain();
    }

    /// Reads everything waiting; verifies it; returns RTP packet counts per participant by SSRC.
    pub fn drain(&mut self) -> Vec<HashMap<u32, u64>> {
        let mut counts = vec![HashMap::new(); self.people.len()];
        let mut buf = [0u8; 2048];
        for (i, s) in self.sockets.iter().enumerate() {
            s.set_nonblocking(true).unwrap();
            while let Ok(n) = s.recv(&mut buf) {
                let d = &buf[..n];
                self.people[i].receive(d);
                if n >= 12 && !(192..=223).contains(&d[1]) {
                    *counts[i].entry(u32::from_be_bytes([d[8], d[9], d[10], d[11]])).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Runs short phases until one delivers exactly what `expect(participant, ticks, frames)`
    /// says: the dataplane learns each participant's address from its first packets, and a
    /// subscriber joins a video layer at its next keyframe, so the very first packets of a
    /// meeting may legitimately go nowhere (more so on a loaded machine). Later phases are exact.
    pub fn settle(&mut self, expect: impl Fn(usize, u64, u64) -> u64) {
        for _ in 0..20 {
            let (got, frames) = self.run(5, |_| {});
            if got.iter().enumerate().all(|(i, c)| sum(c) == expect(i, 5, frames)) {
                return;
            }
        }
        panic!("media never settled into the programmed routes");
    }

    /// Sends `ticks` × 20 ms of audio (every tick) and video (3 frames every 5 ticks), calling
    /// `at(tick_index)` before each tick; returns what arrived, by participant and SSRC.
    pub fn run(&mut self, ticks: u64, mut at: impl FnMut(u64)) -> (Vec<HashMap<u32, u64>>, u64) {
        let mut total = vec![HashMap::new(); self.people.len()];
        let add = |total: &mut Vec<HashMap<u32, u64>>, c: Vec<HashMap<u32, u64>>| {
            for (t, c) in total.iter_mut().zip(c) {
                for (k, v) in c {
                    *t.entry(k).or_default() += v;
                }
            }
        };
        let start = Instant::now();
        let mut frames = 0;
        for k in 0..ticks {
            at(k);
            let tick = self.tick;
            self.tick += 1;
            let video = tick * 3 / 5 != (tick + 1) * 3 / 5;
            frames += u64::from(video);
            for i in 0..self.people.len() {
                let mut pkts = vec![self.people[i].audio(tick)];
                if video {
                    pkts.extend(self.people[i].video_frame());
                }
                for p in pkts {
                    self.sockets[i].send_to(&p, self.sfu(i)).unwrap();
                }
            }
            let c = self.drain();
            add(&mut total, c);
            let next = start + Duration::from_millis(20 * (k + 1));
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                thread::sleep(d);
            }
        }
        // Until nothing more arrives for 300 ms (a loaded machine delays, it must not lose).
        let (mut quiet, end) = (0, Instant::now() + Duration::from_secs(5));
        while quiet < 3 && Instant::now() < end {
            thread::sleep(Duration::from_millis(100));
            let c = self.drain();
            quiet = if c.iter().all(HashMap::is_empty) { quiet + 1 } else { 0 };
            add(&mut total, c);
        }
        for p in &self.people {
            assert_eq!(p.verify_failures, 0, "participant {:?}: datagrams that did not authenticate", p.leg);
            assert_eq!(p.gaps, 0, "participant {:?}: sequence gaps", p.leg);
        }
        (total, frames)
    }
}

pub fn sum(c: &HashMap<u32, u64>) -> u64 {
    c.values().sum()
}
