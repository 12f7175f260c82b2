//! Relayed legs: what a participant reaching Sluice through its embedded TURN server costs the
//! dataplane process per forwarded packet, against the same participants reaching it directly,
//! in one run of one daemon on loopback.
//!
//! Per row, two participants of an SRTP call (Opus-sized, 50 packets/s each, scaled up to the
//! requested rate by running many calls) send through their transport: `direct` (UDP to the
//! leg's port), `turn-udp`, `turn-tcp`, `turn-tls` (ChannelData through the TURN server, both
//! participants of every call relayed). Each packet makes one copy (fan-out 1). The daemon's CPU
//! (user + system, `/proc/<pid>/stat`) over the timed part, divided by the packets forwarded,
//! is the row's cost; the report gives each relayed row's ratio to `direct`.
//!
//! The client side of TURN used here ([`Relayed`]) is also the integration tests'.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use sluice_core::ids::Generation;
use sluice_core::srtp::Profile;
use sluice_core::table::Delta;
use sluice_core::turn::client::{Answer, TurnClient};
use sluice_core::turn::{ChannelData, ChannelNumber, Framing, StreamDeframer, encode_channel_data, rest_api_credentials};
use sluice_dataplane::control::{Client, Request, Response};
use sluice_sim::meeting::{self, Participant};

use crate::forward::process_cpu_ns;

/// A byte stream to a TURN server (TCP, or TLS over it).
pub trait Stream: Read + Write + Send {
    /// Makes the underlying socket non-blocking.
    fn set_nonblocking(&mut self) -> std::io::Result<()>;
}

impl Stream for TcpStream {
    fn set_nonblocking(&mut self) -> std::io::Result<()> {
        TcpStream::set_nonblocking(self, true)
    }
}

impl Stream for openssl::ssl::SslStream<TcpStream> {
    fn set_nonblocking(&mut self) -> std::io::Result<()> {
        self.get_ref().set_nonblocking(true)
    }
}

enum Via {
    Udp(UdpSocket),
    Stream(Box<dyn Stream>, StreamDeframer),
}

/// A participant's transport to Sluice through a TURN server: allocation, a channel to its leg,
/// media as ChannelData both ways. Reads wait at most 5 ms.
pub struct Relayed {
    via: Via,
    /// Its TURN client state (credentials, the server's realm and nonce).
    pub client: TurnClient,
    channel: ChannelNumber,
    /// The TURN server (where UDP datagrams go).
    pub server: SocketAddr,
}

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relayed").field("server", &self.server).field("stream", &self.is_stream()).finish_non_exhaustive()
    }
}

impl Relayed {
    /// Over UDP to `server`, with REST API credentials under `secret` for user `name-<seed>`.
    pub fn udp(server: SocketAddr, secret: &str, seed: u8) -> anyhow::Result<Self> {
        Self::udp_from("127.0.0.1:0".parse()?, server, secret, seed)
    }

    /// [`Relayed::udp`] from a socket bound to `bind` (in the calling thread's namespace).
    pub fn udp_from(bind: SocketAddr, server: SocketAddr, secret: &str, seed: u8) -> anyhow::Result<Self> {
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(Duration::from_millis(5)))?;
        Ok(Self::new(Via::Udp(s), server, secret, seed))
    }

    /// Over TCP.
    pub fn tcp(server: SocketAddr, secret: &str, seed: u8) -> anyhow::Result<Self> {
        let s = TcpStream::connect(server).context("TURN over TCP")?;
        s.set_read_timeout(Some(Duration::from_millis(5)))?;
        s.set_nodelay(true)?;
        Ok(Self::new(Via::Stream(Box::new(s), StreamDeframer::new(Framing::Turn, 70_000)), server, secret, seed))
    }

    /// Over TLS, verifying the server against `ca` for the name "localhost".
    pub fn tls(server: SocketAddr, ca: &Path, secret: &str, seed: u8) -> anyhow::Result<Self> {
        let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())?;
        b.set_ca_file(ca)?;
        let s = TcpStream::connect(server).context("TURN over TLS")?;
        s.set_nodelay(true)?;
        let tls = b.build().connect("localhost", s).map_err(|e| anyhow::anyhow!("TLS handshake with the TURN server: {e}"))?;
        tls.get_ref().set_read_timeout(Some(Duration::from_millis(5)))?;
        Ok(Self::new(Via::Stream(Box::new(tls), StreamDeframer::new(Framing::Turn, 70_000)), server, secret, seed))
    }

    fn new(via: Via, server: SocketAddr, secret: &str, seed: u8) -> Self {
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
        let (user, pass) = rest_api_credentials(secret.as_bytes(), &format!("participant-{seed}"), expiry);
        Self { via, client: TurnClient::new(user, pass, [seed, 0x75, 0x72, 0x6e]), channel: ChannelNumber::new(0x4000).expect("a valid channel"), server }
    }

    /// Reads stop waiting at all (for a sender that must keep its pace): after the set-up.
    pub fn set_nonblocking(&mut self) -> std::io::Result<()> {
        match &mut self.via {
            Via::Udp(s) => s.set_nonblocking(true),
            Via::Stream(s, _) => s.set_nonblocking(),
        }
    }

    /// Whether it is a stream transport.
    pub fn is_stream(&self) -> bool {
        matches!(self.via, Via::Stream(..))
    }

    /// Writes raw bytes (a datagram, or bytes on the stream).
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.via {
            Via::Udp(s) => s.send_to(bytes, self.server).map(|_| ()),
            Via::Stream(s, _) => s.write_all(bytes),
        }
    }

    /// Everything that arrived, as frames (a UDP datagram each; a stream split by its framing).
    pub fn read_frames(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = [0u8; 4096];
        match &mut self.via {
            Via::Udp(s) => {
                while let Ok(n) = s.recv(&mut buf) {
                    frames.push(buf[..n].to_vec());
                }
            }
            Via::Stream(s, d) => {
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    d.push(&buf[..n]);
                }
                while let Ok(Some(f)) = d.next_frame() {
                    frames.push(f.to_vec());
                }
            }
        }
        frames
    }

    /// Sends a request built by `make` and waits for its answer, answering a 401/438 challenge
    /// once (a second challenge is the answer: the credentials were refused).
    pub fn transact(&mut self, mut make: impl FnMut(&mut TurnClient, &mut [u8]) -> usize) -> anyhow::Result<Answer> {
        let mut last = None;
        for _ in 0..2 {
            let mut out = [0u8; 512];
            let n = make(&mut self.client, &mut out);
            self.write(&out[..n])?;
            let t0 = Instant::now();
            let answer = loop {
                if t0.elapsed() > Duration::from_secs(3) {
                    bail!("no TURN answer");
                }
                if let Some(a) = self.read_frames().into_iter().map(|f| self.client.on_answer(&f)).find(|a| *a != Answer::NotAnAnswer) {
                    break a;
                }
            };
            if !matches!(answer, Answer::Retry(_)) {
                return Ok(answer);
            }
            last = Some(answer);
        }
        last.context("two answers")
    }

    /// Allocate, then bind the channel to `leg`; returns the relayed address.
    pub fn setup(&mut self, leg: SocketAddr) -> anyhow::Result<SocketAddr> {
        let Answer::Success { relayed: Some(relayed), .. } = self.transact(|c, o| c.allocate(o).unwrap_or(0))? else { bail!("allocation refused") };
        let ch = self.channel;
        match self.transact(|c, o| c.channel_bind(ch, leg, o).unwrap_or(0))? {
            Answer::Success { .. } => Ok(relayed),
            other => bail!("ChannelBind to {leg}: {other:?}"),
        }
    }

    /// Deletes the allocation (Refresh with lifetime 0; a stream's closing does it too), without
    /// waiting for the answer: a UDP allocation otherwise outlives its client by its lifetime, and
    /// a later socket that happens to get the same port would be answered 437.
    pub fn release(&mut self) {
        let mut out = [0u8; 512];
        if let Ok(n) = self.client.refresh(0, &mut out) {
            let _ = self.write(&out[..n]);
        }
    }

    /// Sends `payload` through the channel.
    pub fn send_media(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut out = vec![0u8; payload.len() + 8];
        let n = encode_channel_data(&mut out, self.channel, payload, self.is_stream())
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, format!("{e:?}")))?;
        self.write(&out[..n])
    }

    /// Media that came back through the channel.
    pub fn recv_media(&mut self) -> Vec<Vec<u8>> {
        self.read_frames().into_iter().filter_map(|f| ChannelData::new_checked(f).ok().map(|c| c.data().to_vec())).collect()
    }
}

/// The participants of a benchmark row, each either direct (a UDP socket of its own) or through
/// the TURN server: sends each one's packets its way and counts what they all received.
#[derive(Debug, Default)]
pub struct Calls {
    relayed: Vec<Relayed>,
    direct: Vec<UdpSocket>,
}

impl Calls {
    /// Connects every participant: `direct` binds a socket for it, else `relayed(seed)` makes a
    /// TURN client that allocates and binds a channel to its leg (`leg`); its address becomes the
    /// socket's or the relayed one.
    pub fn connect(
        people: &mut [Participant],
        direct: bool,
        leg: impl Fn(&Participant) -> SocketAddr,
        mut bind: impl FnMut() -> std::io::Result<UdpSocket>,
        mut relayed: impl FnMut(u8) -> anyhow::Result<Relayed>,
    ) -> anyhow::Result<Self> {
        let mut calls = Self::default();
        for (i, p) in people.iter_mut().enumerate() {
            if direct {
                let s = bind()?;
                s.set_nonblocking(true)?;
                p.addr = s.local_addr()?;
                calls.direct.push(s);
            } else {
                let mut r = relayed((i % 250) as u8 + 1)?;
                p.addr = r.setup(leg(p))?;
                r.set_nonblocking()?;
                calls.relayed.push(r);
            }
        }
        Ok(calls)
    }

    /// Sends participant `i`'s `pkt` to its leg at `leg` (direct) or through its channel.
    pub fn send(&mut self, i: usize, pkt: &[u8], leg: SocketAddr) -> std::io::Result<()> {
        match self.direct.get(i) {
            Some(s) => s.send_to(pkt, leg).map(|_| ()),
            None => self.relayed[i].send_media(pkt),
        }
    }

    /// Packets received by all of them since the last call.
    pub fn drain(&mut self) -> u64 {
        let mut n = 0;
        for r in &mut self.relayed {
            n += r.recv_media().len() as u64;
        }
        let mut buf = [0u8; 2048];
        for s in &self.direct {
            while s.recv(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Deletes the TURN allocations ([`Relayed::release`]).
    pub fn release(&mut self) {
        for r in &mut self.relayed {
            r.release();
        }
    }
}

const SECRET: &str = "the-turn-benchmark-secret";
const TURN: &str = "127.0.0.1:36860";
const TURN_TLS: &str = "127.0.0.1:36861";
/// Legs: meeting m's seat i is on 20000 + 64 m + i; each call is a meeting of two, the rows'
/// calls are meetings from here on.
const FIRST_MEETING: u32 = 100;
/// The most calls a row runs.
const MAX_CALLS: u32 = 16;

/// One row of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// `direct`, `turn-udp`, `turn-tcp` or `turn-tls`.
    pub transport: String,
    /// Calls (two participants each) in the row.
    pub calls: u32,
    /// Packets the participants sent in the timed part.
    pub sent: u64,
    /// Copies they received.
    pub received: u64,
    /// The daemon's CPU over the timed part, ns.
    pub cpu_ns: u64,
    /// CPU per received copy, ns.
    pub ns_per_packet: f64,
    /// `ns_per_packet` over the direct row's.
    pub ratio: f64,
}

/// The rows, in one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Rows, `direct` first.
    pub rows: Vec<Row>,
}

/// `calls` calls from meeting `first` on, each a meeting of two (every packet makes one copy, to
/// the other participant): the tables and the participants.
pub(crate) fn two_party_calls(first: u32, calls: u32) -> (Vec<sluice_core::table::Op>, Vec<Participant>) {
    let mut ops = Vec::new();
    let mut people = Vec::new();
    for c in 0..calls {
        let (o, p) = meeting::build(first + c, 2, Profile::AeadAes128Gcm, 0);
        ops.extend(o);
        people.extend(p);
    }
    (ops, people)
}

/// A fresh `/tmp/sluice-bench-<name>-<pid>` holding the dev CA and the TURN server's TLS
/// certificate (`sluicectl certs`: `ca.pem`, `server.pem`, `server.key`).
pub(crate) fn scratch_with_certs(name: &str) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(format!("/tmp/sluice-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sluicectl = std::env::current_exe()?.with_file_name("sluicectl");
    let out = Command::new(sluicectl).arg("certs").arg(&dir).output().context("sluicectl certs")?;
    if !out.status.success() {
        bail!("sluicectl certs: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(dir)
}

/// Runs `calls` calls per row for `seconds` (after 1 s of warm-up) per transport.
pub fn run(calls: u32, seconds: f64) -> anyhow::Result<Report> {
    let dir = scratch_with_certs("turn")?;
    let bin = std::env::current_exe()?.parent().context("bin dir")?.to_path_buf();
    let sock = dir.join("dp.sock");
    let cfg = dir.join("dp.toml");
    let calls = calls.clamp(1, MAX_CALLS);
    let lo = 20_000 + 64 * FIRST_MEETING as u16;
    let hi = lo + (64 * 4 * MAX_CALLS) as u16 - 1;
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\nlisten_ip = \"127.0.0.1\"\nworkers = 1\ncontrol_socket = \"{}\"\nmetrics = \"off\"\nport_range = [{lo}, {hi}]\n[dataplane.turn]\nlisten = \"{TURN}\"\ntls_listen = \"{TURN_TLS}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nsecret = \"{SECRET}\"\nrelay_ports = [45000, 45999]\nmax_allocations_per_user = 4\n",
            sock.display(),
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("dp.log"))?;
    let mut child =
        Command::new(bin.join("sluice-dataplane")).arg("--config").arg(&cfg).stdout(Stdio::null()).stderr(log).spawn().context("sluice-dataplane")?;
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let _kill = Kill(&mut child);
    let t0 = Instant::now();
    while !sock.exists() {
        if t0.elapsed() > Duration::from_secs(15) {
            bail!("the dataplane did not start: {}", std::fs::read_to_string(dir.join("dp.log")).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut control = Client::connect(&sock)?;
    let mut rows: Vec<Row> = Vec::new();
    println!("{:<10} {:>6} {:>10} {:>10} {:>12} {:>8}", "transport", "calls", "sent", "received", "ns/packet", "ratio");
    for (r, transport) in ["direct", "turn-udp", "turn-tcp", "turn-tls"].into_iter().enumerate() {
        let row = run_row(&mut control, pid, transport, FIRST_MEETING + r as u32 * MAX_CALLS, calls, seconds, &dir, r as u64 + 1)?;
        let base = rows.first().map_or(row.ns_per_packet, |d| d.ns_per_packet);
        let row = Row { ratio: row.ns_per_packet / base, ..row };
        println!("{:<10} {:>6} {:>10} {:>10} {:>12.0} {:>8.3}", row.transport, row.calls, row.sent, row.received, row.ns_per_packet, row.ratio);
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report { rows })
}

#[expect(clippy::too_many_arguments, reason = "one row's settings")]
fn run_row(control: &mut Client, pid: u32, transport: &str, first_meeting: u32, calls: u32, seconds: f64, dir: &Path, generation: u64) -> anyhow::Result<Row> {
    let (ops, mut people) = two_party_calls(first_meeting, calls);
    match control.call(&Request::Apply(Delta { generation: Generation(generation), replace_all: false, ops }))? {
        Response::Applied(_) => {}
        other => bail!("apply: {other:?}"),
    }
    let leg = |p: &Participant| SocketAddr::from(([127, 0, 0, 1], p.port));
    let server: SocketAddr = TURN.parse()?;
    let mut row_calls = Calls::connect(
        &mut people,
        transport == "direct",
        leg,
        || UdpSocket::bind("127.0.0.1:0"),
        |seed| match transport {
            "turn-udp" => Relayed::udp(server, SECRET, seed),
            "turn-tcp" => Relayed::tcp(server, SECRET, seed),
            _ => Relayed::tls(TURN_TLS.parse()?, &dir.join("ca.pem"), SECRET, seed),
        },
    )?;
    let mut received = 0u64;
    let mut sent = 0u64;
    let warm = Duration::from_secs(1);
    let timed = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tick = 0u64;
    let mut cpu0 = None;
    let mut counted_from = 0u64;
    while start.elapsed() < warm + timed {
        if cpu0.is_none() && start.elapsed() >= warm {
            cpu0 = Some(process_cpu_ns(pid)?);
            counted_from = received;
            sent = 0;
        }
        for (i, p) in people.iter_mut().enumerate() {
            let pkt = p.audio(tick);
            row_calls.send(i, &pkt, leg(p))?;
            sent += 1;
        }
        received += row_calls.drain();
        tick += 1;
        if let Some(d) = (start + Duration::from_millis(20 * tick)).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let cpu1 = process_cpu_ns(pid)?;
    std::thread::sleep(Duration::from_millis(200));
    received += row_calls.drain();
    row_calls.release();
    let got = received - counted_from;
    let cpu = cpu1 - cpu0.unwrap_or(cpu1);
    Ok(Row { transport: transport.into(), calls, sent, received: got, cpu_ns: cpu, ns_per_packet: cpu as f64 / got.max(1) as f64, ratio: 1.0 })
}
