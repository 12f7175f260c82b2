//! The slow path of WebRTC legs: ICE-lite answers and DTLS-SRTP handshakes (RFC 5763/5764), on
//! one thread of its own so that no handshake ever stalls a worker.
//!
//! ```text
//!   worker k: core.handle_rx ── STUN/DTLS of a WebRTC leg (token bucket per leg) ──▶ poll_slow
//!             └─ try_send ──▶ bounded queue (full: dropped, counted) ──▶ slow-path thread
//!   slow path, per leg:
//!     STUN  → sluice_core::ice::IceAgent: check USERNAME/MESSAGE-INTEGRITY/FINGERPRINT, answer
//!             through the leg's socket (SendRegistry), nominate / rebind → SetRemote to every
//!             worker, consent → EdgeConsent to every worker
//!     DTLS  → record framing checked, accepted only from an ICE-validated address, fed to an
//!             OpenSSL DTLS 1.2 state machine over in-memory datagrams (server or client role);
//!             bounded: handshake timeout, datagrams per handshake, the core's per-leg rate
//!     done  → peer certificate checked against the signalled fingerprint, SRTP profile and
//!             keys exported ("EXTRACTOR-dtls_srtp") → EdgeKeys to every worker
//!   events (IceConnected, DtlsConnected, EdgeFailed) → the event sink (the control plane)
//! ```
//!
//! Keys and generations: the exported keys are runtime state of the leg (see
//! `sluice_core::table::EdgeState`), installed in every worker between two batches, like a
//! latched remote address. They do not bump the table generation, which stays the control
//! plane's, and a full resync from the control plane keeps them because it re-sends the same
//! `EdgeSpec`; keys never leave the dataplane. A changed `EdgeSpec` (an ICE restart) drops them
//! in the workers and here, and the leg handshakes again.
//!
//! The certificate is made with rcgen per dataplane process (ECDSA P-256, self-signed, as
//! WebRTC does) and can be rotated: new handshakes use the new one, connected legs keep theirs.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as WallInstant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslOptions, SslStream, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use sluice_core::forward::{Event, SlowDatagram};
use sluice_core::ice::{self, EdgeFailure, IceAgent, IceConfig, IceEvent, StunDrop};
use sluice_core::ids::LegId;
use sluice_core::srtp::Profile;
use sluice_core::table::{Delta, DtlsRole, EdgeSpec, KeyMaterial, Op};
use sluice_core::time::Instant;
use sluice_core::wire::demux::{self, PacketClass};

pub use crate::bus::{LegChange, SlowMsg};
use crate::bus::{WorkerMsg, Workers};
use crate::io::SendRegistry;

/// The DTLS-SRTP profiles offered and accepted, most preferred first (RFC 7714 GCM, then the
/// RFC 5764 ones every browser has).
const SRTP_PROFILES: &str = "SRTP_AEAD_AES_128_GCM:SRTP_AEAD_AES_256_GCM:SRTP_AES128_CM_SHA1_80:SRTP_AES128_CM_SHA1_32";
/// DTLS record size limit: fits a 1280-byte IPv6 path with UDP/IP headers.
const DTLS_MTU: u32 = 1200;
/// How often timers run (consent, handshake timeouts and DTLS retransmissions).
const TICK: Duration = Duration::from_millis(50);

/// Settings of the slow path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeConfig {
    /// ICE timing (consent timeout, rebinding).
    pub ice: IceConfig,
    /// A handshake not complete this long after it started fails.
    pub handshake_timeout: Duration,
    /// A handshake that took this many DTLS datagrams from the peer without completing fails.
    pub max_handshake_datagrams: u32,
    /// Capacity of the queue from the workers.
    pub queue: usize,
    /// The address the leg sockets are bound to (reported to the control plane for candidates).
    pub listen_ip: Option<std::net::IpAddr>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self { ice: IceConfig::default(), handshake_timeout: Duration::from_secs(20), max_handshake_datagrams: 48, queue: 1024, listen_ip: None }
    }
}

/// Why the slow path could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Making the certificate failed.
    #[error("generating the DTLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// OpenSSL refused a setting.
    #[error("OpenSSL: {op}: {source}")]
    Ssl {
        /// What was being set up.
        op: &'static str,
        /// OpenSSL's errors.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// The thread could not be started.
    #[error("starting the slow-path thread: {0}")]
    Thread(#[from] io::Error),
}

fn ssl_err(op: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> EdgeError {
    move |source| EdgeError::Ssl { op, source }
}

/// The WebRTC-leg changes an applied delta makes.
pub fn changes_of(delta: &Delta) -> Vec<LegChange> {
    let mut out = Vec::new();
    for op in &delta.ops {
        match op {
            Op::UpsertLeg(l) => out.push(match &l.edge {
                Some(spec) => LegChange::Upsert { leg: l.id, port: l.local_port, spec: (**spec).clone() },
                None => LegChange::Remove(l.id),
            }),
            Op::RemoveLeg(id) => out.push(LegChange::Remove(*id)),
            _ => {}
        }
    }
    if delta.replace_all {
        let keep = delta.ops.iter().filter_map(|op| if let Op::UpsertLeg(l) = op { l.edge.as_ref().map(|_| l.id) } else { None });
        out.push(LegChange::Retain(keep.collect()));
    }
    out
}

pub use sluice_api::EdgeStatus;

/// Counters of the slow path; names in [`COUNTER_NAMES`].
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    stun_answered: u64,
    stun_dropped: [u64; StunDrop::COUNT],
    dtls_datagrams: u64,
    dtls_malformed: u64,
    dtls_unvalidated_source: u64,
    dtls_ignored: u64,
    handshakes_started: u64,
    handshakes_completed: u64,
    handshakes_failed: u64,
    unknown_leg: u64,
    send_errors: u64,
    not_stun_or_dtls: u64,
}

impl Counters {
    fn named(&self) -> Vec<(String, u64)> {
        let mut v = vec![("stun_answered".to_string(), self.stun_answered)];
        v.extend(StunDrop::ALL.iter().map(|r| (format!("stun_dropped_{}", r.name()), self.stun_dropped[*r as usize])));
        v.extend(
            [
                ("dtls_datagrams", self.dtls_datagrams),
                ("dtls_malformed", self.dtls_malformed),
                ("dtls_unvalidated_source", self.dtls_unvalidated_source),
                ("dtls_ignored", self.dtls_ignored),
                ("handshakes_started", self.handshakes_started),
                ("handshakes_completed", self.handshakes_completed),
                ("handshakes_failed", self.handshakes_failed),
                ("unknown_leg", self.unknown_leg),
                ("send_errors", self.send_errors),
                ("not_stun_or_dtls", self.not_stun_or_dtls),
            ]
            .map(|(n, v)| (n.to_string(), v)),
        );
        v
    }
}

/// A DTLS certificate and the OpenSSL context that uses it.
pub struct Certificate {
    ctx: SslContext,
    fingerprint: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

/// `sha-256 AB:CD:...` of a DER certificate.
fn fingerprint_of(cert: &X509) -> Result<String, EdgeError> {
    let d = cert.digest(MessageDigest::sha256()).map_err(ssl_err("certificate digest"))?;
    Ok(format!("sha-256 {}", d.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")))
}

/// Parses `a=fingerprint` text (`sha-256 AB:CD:...`) into the digest and its bytes.
pub fn parse_fingerprint(s: &str) -> Option<(MessageDigest, Vec<u8>)> {
    let (alg, hex) = s.trim().split_once(' ')?;
    let md = match alg.to_ascii_lowercase().as_str() {
        "sha-1" => MessageDigest::sha1(),
        "sha-256" => MessageDigest::sha256(),
        "sha-384" => MessageDigest::sha384(),
        "sha-512" => MessageDigest::sha512(),
        _ => return None,
    };
    let bytes = hex.trim().split(':').map(|h| u8::from_str_radix(h, 16).ok().filter(|_| h.len() == 2)).collect::<Option<Vec<u8>>>()?;
    (bytes.len() == md.size()).then_some((md, bytes))
}

impl Certificate {
    /// A fresh self-signed ECDSA P-256 certificate and its DTLS context.
    pub fn generate() -> Result<Self, EdgeError> {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec!["sluice".to_string()])?;
        let x509 = X509::from_der(cert.der()).map_err(ssl_err("reading the certificate"))?;
        let key = PKey::private_key_from_der(&signing_key.serialize_der()).map_err(ssl_err("reading the key"))?;
        let mut b = SslContext::builder(SslMethod::dtls()).map_err(ssl_err("DTLS context"))?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2)).map_err(ssl_err("DTLS 1.2 minimum"))?;
        b.set_certificate(&x509).map_err(ssl_err("certificate"))?;
        b.set_private_key(&key).map_err(ssl_err("private key"))?;
        b.check_private_key().map_err(ssl_err("key matches certificate"))?;
        b.set_tlsext_use_srtp(SRTP_PROFILES).map_err(ssl_err("use_srtp profiles"))?;
        b.set_cipher_list("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
            .map_err(ssl_err("cipher list"))?;
        // WebRTC peers present self-signed certificates: trust comes from the fingerprint in
        // signaling, checked once the handshake is done. A certificate is still required.
        b.set_verify_callback(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT, |_, _| true);
        // The BIO is in memory: OpenSSL must not ask it for a path MTU.
        b.set_options(SslOptions::NO_QUERY_MTU);
        let fingerprint = fingerprint_of(&x509)?;
        Ok(Self { ctx: b.build(), fingerprint })
    }

    /// `sha-256 AB:CD:...`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// In-memory datagram transport under OpenSSL: one `read` is one received datagram, one
/// `write` one datagram to send.
#[derive(Debug, Default)]
struct Datagrams {
    incoming: VecDeque<Vec<u8>>,
    outgoing: Vec<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.incoming.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Dtls {
    /// No handshake yet.
    Idle,
    /// Handshaking since `started`, after `datagrams` datagrams from the peer.
    Handshaking { stream: Box<SslStream<Datagrams>>, started: WallInstant, datagrams: u32 },
    /// Keys installed; the association stays for retransmitted flights and alerts.
    Connected { stream: Box<SslStream<Datagrams>> },
    /// Failed; nothing more is fed to DTLS until the leg's spec changes.
    Failed,
}

struct EdgeLeg {
    port: u16,
    spec: EdgeSpec,
    ice: IceAgent,
    dtls: Dtls,
    /// Where DTLS goes: the selected remote, or the validated address the peer's DTLS came from.
    dtls_peer: Option<SocketAddr>,
}

impl EdgeLeg {
    fn new(port: u16, spec: EdgeSpec, config: &EdgeConfig) -> Self {
        let ice = IceAgent::new(spec.local.clone(), Some(spec.remote.ufrag.clone()), config.ice);
        Self { port, spec, ice, dtls: Dtls::Idle, dtls_peer: None }
    }
}

/// Where the slow path reports ICE and DTLS events.
pub type EventSink = Box<dyn FnMut(Event) + Send>;

struct SlowPath {
    config: EdgeConfig,
    cert: Certificate,
    legs: HashMap<LegId, EdgeLeg>,
    workers: Workers,
    registry: Arc<SendRegistry>,
    events: EventSink,
    counters: Counters,
    epoch: WallInstant,
    status: Arc<Mutex<EdgeStatus>>,
}

/// A running slow path.
#[derive(Debug)]
pub struct SlowPathHandle {
    /// Where workers and the control endpoint send it datagrams and requests.
    pub sender: Sender<SlowMsg>,
    /// Its status, kept current for metrics.
    pub status: Arc<Mutex<EdgeStatus>>,
    /// Its thread.
    pub thread: JoinHandle<()>,
}

/// Starts the slow-path thread.
pub fn spawn(config: EdgeConfig, workers: Workers, registry: Arc<SendRegistry>, events: EventSink, epoch: WallInstant) -> Result<SlowPathHandle, EdgeError> {
    let cert = Certificate::generate()?;
    let (tx, rx) = crossbeam_channel::bounded(config.queue.max(1));
    let status = Arc::new(Mutex::new(EdgeStatus { fingerprint: cert.fingerprint.clone(), ..EdgeStatus::default() }));
    let mut sp = SlowPath { config, cert, legs: HashMap::new(), workers, registry, events, counters: Counters::default(), epoch, status: status.clone() };
    let thread = std::thread::Builder::new().name("slow-path".into()).spawn(move || sp.run(rx))?;
    Ok(SlowPathHandle { sender: tx, status, thread })
}

impl SlowPath {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    fn run(&mut self, rx: Receiver<SlowMsg>) {
        let mut next_tick = WallInstant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(WallInstant::now());
            match rx.recv_timeout(wait) {
                Ok(SlowMsg::Datagram(d)) => self.datagram(&d),
                Ok(SlowMsg::Legs(changes)) => self.legs_changed(changes),
                Ok(SlowMsg::Rotate(reply)) => {
                    match Certificate::generate() {
                        Ok(c) => {
                            tracing::info!(fingerprint = %c.fingerprint, "DTLS certificate rotated");
                            self.cert = c;
                        }
                        Err(e) => tracing::error!(error = %e, "DTLS certificate rotation failed; keeping the current one"),
                    }
                    self.publish();
                    let _ = reply.send(self.status());
                }
                Ok(SlowMsg::Status(reply)) => {
                    let _ = reply.send(self.status());
                }
                Ok(SlowMsg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if WallInstant::now() >= next_tick {
                self.tick();
                self.publish();
                next_tick = WallInstant::now() + TICK;
            }
        }
    }

    fn status(&self) -> EdgeStatus {
        EdgeStatus {
            fingerprint: self.cert.fingerprint.clone(),
            legs: self.legs.len() as u64,
            listen_ip: self.config.listen_ip,
            counters: self.counters.named(),
            port_range: None,
            workers: None,
            ice_tcp_port: None,
        }
    }

    fn publish(&self) {
        if let Ok(mut s) = self.status.lock() {
            *s = self.status();
        }
    }

    fn legs_changed(&mut self, changes: Vec<LegChange>) {
        for c in changes {
            match c {
                LegChange::Upsert { leg, port, spec } => match self.legs.get_mut(&leg) {
                    Some(l) if l.spec == spec => l.port = port,
                    _ => {
                        self.legs.insert(leg, EdgeLeg::new(port, spec, &self.config));
                    }
                },
                LegChange::Remove(leg) => {
                    self.legs.remove(&leg);
                }
                LegChange::Retain(keep) => self.legs.retain(|id, _| keep.contains(id)),
            }
        }
    }

    fn send(&mut self, port: u16, dst: SocketAddr, bytes: &[u8]) {
        let sent = self.registry.get(port).map(|s| s.socket().send_to(bytes, dst));
        if !matches!(sent, Some(Ok(_))) {
            self.counters.send_errors += 1;
        }
    }

    fn datagram(&mut self, d: &SlowDatagram) {
        if !self.legs.contains_key(&d.leg) {
            self.counters.unknown_leg += 1;
            return;
        }
        match demux::classify(d.bytes()) {
            PacketClass::Stun => self.stun(d),
            PacketClass::Dtls => self.dtls(d),
            _ => self.counters.not_stun_or_dtls += 1,
        }
    }

    fn stun(&mut self, d: &SlowDatagram) {
        let now = self.now();
        let Some(leg) = self.legs.get_mut(&d.leg) else { return };
        let mut out = [0u8; ice::MAX_RESPONSE];
        match leg.ice.handle_stun(now, d.remote, d.bytes(), &mut out) {
            Ok(n) => {
                self.counters.stun_answered += 1;
                let port = leg.port;
                self.send(port, d.remote, &out[..n]);
                self.ice_events(d.leg);
            }
            Err(reason) => self.counters.stun_dropped[reason as usize] += 1,
        }
    }

    /// Acts on what ICE reported: remote and consent to the workers, events out, and a client
    /// handshake started once a pair is selected.
    fn ice_events(&mut self, id: LegId) {
        while let Some(e) = self.legs.get_mut(&id).and_then(|l| l.ice.poll_event()) {
            match e {
                IceEvent::Selected(remote) => {
                    tracing::info!(leg = %id, %remote, "ICE selected a pair");
                    self.workers.broadcast(|| WorkerMsg::SetRemote(id, remote));
                    self.workers.broadcast(|| WorkerMsg::EdgeConsent(id, true));
                    (self.events)(Event::IceConnected { leg: id, remote });
                    if let Some(l) = self.legs.get_mut(&id) {
                        l.dtls_peer = Some(remote);
                        if l.spec.role == DtlsRole::Client && matches!(l.dtls, Dtls::Idle) {
                            self.start_handshake(id);
                        }
                    }
                }
                IceEvent::ConsentRestored => {
                    self.workers.broadcast(|| WorkerMsg::EdgeConsent(id, true));
                    if let Some(remote) = self.legs.get(&id).and_then(|l| l.ice.selected()) {
                        (self.events)(Event::IceConnected { leg: id, remote });
                    }
                }
                IceEvent::ConsentExpired => {
                    tracing::info!(leg = %id, "ICE consent expired; media to the leg stops");
                    self.workers.broadcast(|| WorkerMsg::EdgeConsent(id, false));
                    (self.events)(Event::EdgeFailed { leg: id, reason: EdgeFailure::ConsentExpired });
                }
            }
        }
    }

    fn start_handshake(&mut self, id: LegId) {
        let Some(leg) = self.legs.get_mut(&id) else { return };
        let stream = Ssl::new(&self.cert.ctx).and_then(|mut ssl| {
            ssl.set_mtu(DTLS_MTU)?;
            match leg.spec.role {
                DtlsRole::Server => ssl.set_accept_state(),
                DtlsRole::Client => ssl.set_connect_state(),
            }
            SslStream::new(ssl, Datagrams::default())
        });
        match stream {
            Ok(stream) => {
                self.counters.handshakes_started += 1;
                leg.dtls = Dtls::Handshaking { stream: Box::new(stream), started: WallInstant::now(), datagrams: 0 };
                self.drive(id);
            }
            Err(e) => {
                tracing::error!(leg = %id, error = %e, "cannot create a DTLS session");
                self.fail(id, EdgeFailure::HandshakeFailed);
            }
        }
    }

    fn dtls(&mut self, d: &SlowDatagram) {
        self.counters.dtls_datagrams += 1;
        if ice::dtls_records(d.bytes()).is_err() {
            self.counters.dtls_malformed += 1;
            return;
        }
        let max = self.config.max_handshake_datagrams;
        let Some(leg) = self.legs.get_mut(&d.leg) else { return };
        if !leg.ice.is_validated(d.remote) {
            self.counters.dtls_unvalidated_source += 1;
            return;
        }
        if matches!(leg.dtls, Dtls::Failed) {
            self.counters.dtls_ignored += 1;
            return;
        }
        leg.dtls_peer = Some(d.remote);
        if matches!(leg.dtls, Dtls::Idle) {
            if leg.spec.role == DtlsRole::Client {
                // We speak first as the client; a peer's DTLS before our hello is out of turn.
                self.counters.dtls_ignored += 1;
                return;
            }
            self.start_handshake(d.leg);
        }
        let Some(leg) = self.legs.get_mut(&d.leg) else { return };
        let too_many = match &mut leg.dtls {
            Dtls::Handshaking { stream, datagrams, .. } => {
                *datagrams += 1;
                stream.get_mut().incoming.push_back(d.bytes().to_vec());
                *datagrams > max
            }
            Dtls::Connected { stream } => {
                stream.get_mut().incoming.push_back(d.bytes().to_vec());
                false
            }
            _ => false,
        };
        if too_many {
            self.fail(d.leg, EdgeFailure::TooManyDatagrams);
            return;
        }
        self.drive(d.leg);
    }

    /// Runs the leg's DTLS state machine on what it has, sends what it wrote, and finishes the
    /// handshake when it completes.
    fn drive(&mut self, id: LegId) {
        let Some(leg) = self.legs.get_mut(&id) else { return };
        let (result, port, peer) = match &mut leg.dtls {
            Dtls::Handshaking { stream, .. } => (Some(stream.do_handshake()), leg.port, leg.dtls_peer),
            Dtls::Connected { stream } => {
                let mut buf = [0u8; 1500];
                // Application data (data channels) is not supported: read and discard; this also
                // answers retransmitted flights and processes alerts.
                let closed = loop {
                    match stream.ssl_read(&mut buf) {
                        Ok(_) => {}
                        Err(e) if e.code() == ErrorCode::WANT_READ => break false,
                        Err(_) => break true,
                    }
                };
                let out = std::mem::take(&mut stream.get_mut().outgoing);
                let (port, peer) = (leg.port, leg.dtls_peer);
                if let Some(peer) = peer {
                    for o in out {
                        self.send(port, peer, &o);
                    }
                }
                if closed {
                    self.fail(id, EdgeFailure::PeerClosed);
                }
                return;
            }
            _ => return,
        };
        let out = match &mut leg.dtls {
            Dtls::Handshaking { stream, .. } => std::mem::take(&mut stream.get_mut().outgoing),
            _ => Vec::new(),
        };
        if let Some(peer) = peer {
            for o in out {
                self.send(port, peer, &o);
            }
        }
        match result {
            Some(Ok(())) => self.connected(id),
            Some(Err(e)) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {}
            Some(Err(e)) => {
                tracing::warn!(leg = %id, error = %e, "DTLS handshake failed");
                self.fail(id, EdgeFailure::HandshakeFailed);
            }
            None => {}
        }
    }

    fn connected(&mut self, id: LegId) {
        let Some(leg) = self.legs.get_mut(&id) else { return };
        let Dtls::Handshaking { stream, .. } = std::mem::replace(&mut leg.dtls, Dtls::Failed) else { return };
        let ssl = stream.ssl();
        let matches = parse_fingerprint(&leg.spec.remote_fingerprint)
            .is_some_and(|(md, want)| ssl.peer_certificate().and_then(|c| c.digest(md).ok()).is_some_and(|got| *got == *want));
        if !matches {
            self.fail(id, EdgeFailure::FingerprintMismatch);
            return;
        }
        let Some(profile) = ssl.selected_srtp_profile().and_then(|p| Profile::from_dtls_id(p.id().as_raw() as u16)) else {
            self.fail(id, EdgeFailure::NoSrtpProfile);
            return;
        };
        // RFC 5764 §4.2: client key | server key | client salt | server salt.
        let (kl, sl) = (profile.key_len(), profile.salt_len());
        let mut m = vec![0u8; 2 * (kl + sl)];
        if ssl.export_keying_material(&mut m, "EXTRACTOR-dtls_srtp", None).is_err() {
            self.fail(id, EdgeFailure::HandshakeFailed);
            return;
        }
        let client = KeyMaterial::new(profile, m[..kl].to_vec(), m[2 * kl..2 * kl + sl].to_vec());
        let server = KeyMaterial::new(profile, m[kl..2 * kl].to_vec(), m[2 * kl + sl..].to_vec());
        let (rx, tx) = match leg.spec.role {
            DtlsRole::Server => (client, server),
            DtlsRole::Client => (server, client),
        };
        leg.dtls = Dtls::Connected { stream };
        self.counters.handshakes_completed += 1;
        tracing::info!(leg = %id, ?profile, "DTLS-SRTP connected");
        let keys = Arc::new((rx, tx));
        self.workers.broadcast(|| WorkerMsg::EdgeKeys(id, keys.clone()));
        (self.events)(Event::DtlsConnected { leg: id, profile });
    }

    fn fail(&mut self, id: LegId, reason: EdgeFailure) {
        if let Some(l) = self.legs.get_mut(&id) {
            l.dtls = Dtls::Failed;
        }
        self.counters.handshakes_failed += 1;
        tracing::warn!(leg = %id, reason = reason.name(), "WebRTC leg failed");
        (self.events)(Event::EdgeFailed { leg: id, reason });
    }

    /// Timers: consent expiry, handshake timeouts, DTLS retransmissions (OpenSSL checks its
    /// retransmission timer whenever the handshake is driven).
    fn tick(&mut self) {
        let now = self.now();
        let ids: Vec<LegId> = self.legs.keys().copied().collect();
        for id in ids {
            let Some(leg) = self.legs.get_mut(&id) else { continue };
            leg.ice.handle_timeout(now);
            let timed_out = matches!(&leg.dtls, Dtls::Handshaking { started, .. } if started.elapsed() >= self.config.handshake_timeout);
            self.ice_events(id);
            if timed_out {
                self.fail(id, EdgeFailure::HandshakeTimeout);
            } else if matches!(self.legs.get(&id).map(|l| &l.dtls), Some(Dtls::Handshaking { .. })) {
                self.drive(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_and_certificates_differ() {
        let a = Certificate::generate().unwrap();
        let b = Certificate::generate().unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        let (md, bytes) = parse_fingerprint(a.fingerprint()).unwrap();
        assert_eq!((md.size(), bytes.len()), (32, 32));
        assert!(parse_fingerprint("sha-256 AB:CD").is_none());
        assert!(parse_fingerprint("md5 AB").is_none());
        assert!(parse_fingerprint("nonsense").is_none());
    }

    #[test]
    fn delta_changes() {
        use sluice_core::ids::{Generation, Ssrc};
        use sluice_core::table::{IceCredentials, LegSpec};
        let k = KeyMaterial::placeholder();
        let edge = EdgeSpec {
            local: IceCredentials { ufrag: "a".into(), pwd: "b".into() },
            remote: IceCredentials { ufrag: "c".into(), pwd: "d".into() },
            role: DtlsRole::Server,
            remote_fingerprint: String::new(),
        };
        let leg = |id, edge: Option<Box<EdgeSpec>>| Op::UpsertLeg(LegSpec { edge, ..LegSpec::new(LegId(id), 1000 + id as u16, k.clone(), k.clone(), Ssrc(1)) });
        let d = Delta { generation: Generation(1), replace_all: true, ops: vec![leg(1, Some(Box::new(edge.clone()))), leg(2, None), Op::RemoveLeg(LegId(3))] };
        assert_eq!(
            changes_of(&d),
            vec![
                LegChange::Upsert { leg: LegId(1), port: 1001, spec: edge },
                LegChange::Remove(LegId(2)),
                LegChange::Remove(LegId(3)),
                LegChange::Retain(vec![LegId(1)]),
            ]
        );
    }
}
