//! The many-calls mode: N one-to-one audio calls through the one pinned worker, every leg on its
//! own UDP port or all of them on one shared port ([`LegSpec::shared_port`]).
//!
//! ```text
//!   generator (raw socket, ns gen)                forwarder, 1 worker                 sink (XDP count)
//!   10.77.1.2:GEN_PORT+i  ── call i's audio ──▶  leg A_i ─▶ leg B_i  ── copy ──▶  10.77.2.2:SINK_PORT+2+i
//! ```
//!
//! Call i is publisher leg A_i (one Opus-sized audio track: 172-byte SRTP datagrams, its own keys
//! and SSRC) forwarding to leg B_i. Every A_i has its own remote, the generator's address with the
//! call's own source port, and every B_i its own sink port, so a shared port tells all 2N legs
//! apart by remote address alone. The generator sends from ONE raw UDP socket that writes each
//! datagram's UDP header itself: N distinct source ports from one fd (no N sockets, no N source
//! addresses), every call's datagrams round-robin in one `sendmmsg` per burst, and no GSO — each
//! datagram is its own skb, as separate clients' audio is. (The forwarder's UDP GRO can then only
//! merge a flow's back-to-back datagrams, which happens in the 1-call rows alone: the `gro%`
//! column shows it.)
//!
//! Both port modes run the same tables except for the ports (remotes are set in both), so a row's
//! cost against the first call count of its mode is the price of the calls' spread over sockets.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant as WallInstant};

use anyhow::Context as _;
use sluice_core::ids::{LegId, Pt, Ssrc, TrackId};
use sluice_core::srtp::{Profile, RtpSendState, SrtpKeys};
use sluice_core::table::{Codec, KeyMaterial, LayerSpec, LegSpec, MediaKind, Op, PayloadSpec, SubscriptionSpec, TrackSpec};
use sluice_sim::fixture::subscription;

use super::accounting::thread_cpu_ns;
use super::forwarder::parse_backend;
use super::search::{Row, search};
use super::{FORWARDER_CORE, FORWARDER_IP, GENERATOR_CORE, GENERATOR_IP, MAX_LOSS, PUBLISHER_SSRC, SINK_IP, SINK_PORT, Topology};

/// The SRTP datagram of one Opus frame (20 ms at ~64 kbit/s), the UDP payload on the wire.
pub(super) const DATAGRAM: usize = 172;
/// The forwarder's first call port: per-leg ports are A_i = +2i, B_i = +2i+1; a shared port is
/// this one for every leg. Below the namespace's ephemeral range, apart from the fan-out ports.
const CALLS_PORT: u16 = 20_000;
/// The generator's source port of call i is this + i (never bound: the raw socket writes it).
const GEN_PORT: u16 = 20_000;
/// Most calls a run may have: the ports above must stay clear of the fan-out bench's.
pub const MAX_CALLS: u32 = 5_000;
const OPUS_PT: u8 = 111;

/// How the calls' legs get their local ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortMode {
    /// 2N ports, a socket per leg (how legs were placed before shared ports).
    PerLeg,
    /// Every leg on one port (`shared_port: true`, remotes set).
    Shared,
}

impl PortMode {
    fn name(self) -> &'static str {
        match self {
            Self::PerLeg => "per-leg",
            Self::Shared => "shared",
        }
    }
}

/// Call `i`'s legs: (publisher A_i, subscriber B_i).
fn legs(i: u32) -> (u32, u32) {
    (2 * i + 1, 2 * i + 2)
}

/// The forwarder port of leg `l` (1-based).
fn leg_port(mode: PortMode, l: u32) -> u16 {
    match mode {
        PortMode::PerLeg => CALLS_PORT + (l - 1) as u16,
        PortMode::Shared => CALLS_PORT,
    }
}

/// Where call `i`'s publisher sends from.
fn publisher_addr(i: u32) -> SocketAddr {
    SocketAddr::from((GENERATOR_IP, GEN_PORT + i as u16))
}

/// Where call `i`'s subscriber receives (the XDP sink counts `SINK_PORT..=SINK_PORT + calls + 1`).
fn subscriber_addr(i: u32) -> SocketAddr {
    SocketAddr::from((SINK_IP, SINK_PORT + 2 + i as u16))
}

/// The receive keys of call `i`'s publisher leg (what the generator protects with).
fn publisher_keys(profile: Profile, i: u32) -> KeyMaterial {
    KeyMaterial::seeded(profile, legs(i).0)
}

/// The send keys of leg `l` (what its subscriber decrypts with).
fn send_keys(profile: Profile, l: u32) -> KeyMaterial {
    KeyMaterial::seeded(profile, 100_000 + l)
}

/// The tables of `calls` one-to-one audio calls: per call two legs (remotes set), one audio track
/// (Opus on PT 111, SSRC 0x5000 + i) and one subscription.
pub(super) fn calls_ops(profile: Profile, calls: u32, mode: PortMode) -> Vec<Op> {
    let shared_port = mode == PortMode::Shared;
    let mut ops = Vec::with_capacity(calls as usize * 4);
    for i in 0..calls {
        let (a, b) = legs(i);
        for (l, remote) in [(a, publisher_addr(i)), (b, subscriber_addr(i))] {
            let spec = LegSpec::new(LegId(l), leg_port(mode, l), KeyMaterial::seeded(profile, l), send_keys(profile, l), Ssrc(0xfeed_0000 + l));
            ops.push(Op::UpsertLeg(LegSpec { remote: Some(remote), shared_port, ..spec }));
        }
        ops.push(Op::UpsertTrack(TrackSpec {
            dd_ext: None,
            id: TrackId(i + 1),
            publisher: LegId(a),
            kind: MediaKind::Audio,
            clock_rate: 48_000,
            layers: vec![LayerSpec { ssrc: Some(Ssrc(PUBLISHER_SSRC + i)), rtx_ssrc: None, rid: None }],
            payload_types: vec![PayloadSpec { pt: Pt(OPUS_PT), codec: Codec::Audio, rtx_pt: None }],
            rid_ext: None,
            repaired_rid_ext: None,
            mid: None,
            audio_level_ext: None,
            speaker_group: None,
        }));
        let sub = subscription(b, i + 1, 0x9000_0000 + i, None, 0);
        ops.push(Op::UpsertSubscription(SubscriptionSpec { pt_map: vec![(Pt(OPUS_PT), Pt(OPUS_PT))], ..sub }));
    }
    ops
}

/// One publisher's send side.
struct Call {
    keys: SrtpKeys,
    state: RtpSendState,
    seq: u16,
    ts: u32,
}

/// Writes call `i`'s next audio packet, protected, into `buf` (≥ [`DATAGRAM`] bytes); its length.
fn audio_packet(call: &mut Call, i: u32, profile: Profile, buf: &mut [u8]) -> usize {
    let rtp_len = DATAGRAM - profile.rtp_overhead();
    call.seq = call.seq.wrapping_add(1);
    call.ts = call.ts.wrapping_add(960);
    buf[..12].copy_from_slice(&[0x80, OPUS_PT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    buf[2..4].copy_from_slice(&call.seq.to_be_bytes());
    buf[4..8].copy_from_slice(&call.ts.to_be_bytes());
    buf[8..12].copy_from_slice(&(PUBLISHER_SSRC + i).to_be_bytes());
    buf[12..rtp_len].fill(0x5a);
    call.keys.protect_rtp(&mut call.state, buf, rtp_len).unwrap_or(0)
}

/// A raw IPv4 UDP socket: the caller writes each datagram's UDP header (any source port), the
/// kernel the IP header.
struct RawUdp(std::os::fd::OwnedFd);

impl RawUdp {
    fn new(src: Ipv4Addr) -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: socket(2) has no memory-safety preconditions; a valid fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_UDP) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("raw UDP socket (needs CAP_NET_RAW)");
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let sock = Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let addr = sockaddr(src);
        // SAFETY: bind reads a sockaddr_in of the length passed from the valid local.
        if unsafe { libc::bind(fd, (&raw const addr).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t) } != 0 {
            return Err(std::io::Error::last_os_error()).context("binding the raw socket");
        }
        // It also receives a copy of every UDP datagram to the namespace (none is expected):
        // keep that queue small; the send buffer as the daemon's sockets have theirs.
        for (opt, v) in [(libc::SO_RCVBUF, 4096), (libc::SO_SNDBUF, 4 << 20)] {
            let v: libc::c_int = v;
            // SAFETY: setsockopt reads one c_int from the valid local passed; the fd is open.
            unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&raw const v).cast(), size_of::<libc::c_int>() as libc::socklen_t) };
        }
        Ok(sock)
    }

    /// Sends `bufs[..n]` (UDP header and payload each, lengths `lens`) to `dst` in one
    /// `sendmmsg`; how many went.
    fn send(&self, dst: Ipv4Addr, bufs: &mut [Vec<u8>], lens: &[usize]) -> usize {
        use std::os::fd::AsRawFd as _;
        let mut name = sockaddr(dst);
        let mut iovs: Vec<libc::iovec> = bufs.iter_mut().zip(lens).map(|(b, &l)| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: l }).collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: msghdr is plain data; all-zero is a valid empty header.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_name = (&raw mut name).cast();
                h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = iov;
                h.msg_iovlen = 1;
                libc::mmsghdr { msg_hdr: h, msg_len: 0 }
            })
            .collect();
        // SAFETY: every header points at the live address, its own iovec and buffer of the
        // lengths given, all outliving the call.
        let n = unsafe { libc::sendmmsg(self.0.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as libc::c_uint, 0) };
        usize::try_from(n).unwrap_or(0)
    }
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    }
}

/// The calls' publishers: `calls` audio streams round-robin, for `seconds` at `rate` packets/s in
/// all (0: as fast as it goes) from a thread pinned to `core` in the namespace `ns`. Returns
/// (packets sent in the timed part, packets sent in all, CPU seconds of the timed part), as
/// [`super::Generator::spawn_in`] does.
pub(super) fn spawn_generator(
    ns: String,
    profile: Profile,
    calls: u32,
    mode: PortMode,
    core: usize,
    seconds: f64,
    rate: f64,
) -> std::thread::JoinHandle<anyhow::Result<(u64, u64, f64)>> {
    std::thread::spawn(move || {
        crate::netns::join_thread(&ns).with_context(|| format!("entering {ns}"))?;
        if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == core)) {
            core_affinity::set_for_current(id);
        }
        let sock = RawUdp::new(GENERATOR_IP.into())?;
        let mut peers: Vec<Call> = (0..calls)
            .map(|i| {
                let m = publisher_keys(profile, i);
                Ok(Call { keys: SrtpKeys::new(profile, &m.key, &m.salt)?, state: RtpSendState::new(), seq: 0, ts: 0 })
            })
            .collect::<anyhow::Result<_>>()?;
        let dst_ports: Vec<u16> = (0..calls).map(|i| leg_port(mode, legs(i).0)).collect();
        const BURST: usize = 32;
        let mut bufs: Vec<Vec<u8>> = (0..BURST).map(|_| vec![0u8; 8 + DATAGRAM + 32]).collect();
        let mut lens = [0usize; BURST];
        let mut next = 0u32;
        // `SLUICE_BENCH_CALL_RUN=k`: each call sends k datagrams in a row before the next call's
        // (a diagnostic: how much of a shared port's cost is arrivals interleaved by call).
        let run = std::env::var("SLUICE_BENCH_CALL_RUN").ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(1).max(1);
        let mut in_run = 0u32;
        let mut send = |n: usize| {
            for (b, len) in bufs.iter_mut().zip(lens.iter_mut()).take(n) {
                let i = next;
                in_run += 1;
                if in_run >= run {
                    in_run = 0;
                    next = (next + 1) % calls;
                }
                let srtp = audio_packet(&mut peers[i as usize], i, profile, &mut b[8..]);
                // RFC 768 header; checksum 0: none (IPv4), as with the checksum offloaded.
                let udp_len = (8 + srtp) as u16;
                b[..8].copy_from_slice(&[0; 8]);
                b[0..2].copy_from_slice(&(GEN_PORT + i as u16).to_be_bytes());
                b[2..4].copy_from_slice(&dst_ports[i as usize].to_be_bytes());
                b[4..6].copy_from_slice(&udp_len.to_be_bytes());
                *len = usize::from(udp_len);
            }
            sock.send(FORWARDER_IP.into(), &mut bufs[..n], &lens[..n]) as u64
        };
        // Warm-up: every call's first packet, before the window opens.
        let mut warmup = 0;
        for _ in 0..calls.div_ceil(BURST as u32) {
            warmup += send(BURST);
        }
        std::thread::sleep(Duration::from_millis(100));
        let (t0, cpu0) = (WallInstant::now(), thread_cpu_ns());
        let burst = if rate > 0.0 { 8 } else { BURST };
        let mut sent = 0u64;
        while t0.elapsed().as_secs_f64() < seconds {
            if rate > 0.0 && sent as f64 >= t0.elapsed().as_secs_f64() * rate {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            sent += send(burst);
        }
        Ok((sent, sent + warmup, (thread_cpu_ns() - cpu0) as f64 / 1e9))
    })
}

/// One row of the many-calls comparison.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CallsRow {
    /// Calls (2 legs each).
    pub calls: u32,
    /// How the legs got their ports.
    pub ports: PortMode,
    /// Backend (as in `--backends`).
    pub backend: String,
    /// The SRTP profile.
    pub profile: String,
    /// The flood probe and the highest sustained paced probe (packets in = packets out).
    pub row: Row,
    /// Forwarder-core busy time per packet against the row of the first call count of the same
    /// mode, backend and profile (1.0 = as cheap; the issue's target: ≤ 1.2 on a shared port).
    pub core_cost_ratio: Option<f64>,
    /// The same for the daemon process's own CPU time.
    pub process_cost_ratio: Option<f64>,
}

/// Runs the many-calls comparison: for each profile and backend, each port mode at each call
/// count; prints the table and returns its rows.
pub fn run(backends: &[String], calls: &[u32], profiles: &[Profile], seconds: f64, probes: u32) -> anyhow::Result<Vec<CallsRow>> {
    let parsed: Vec<(&str, bool)> = backends
        .iter()
        .map(|b| parse_backend(b).map(|(k, gso, _)| (b.as_str(), k, gso)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter_map(|(b, k, gso)| {
            if k == "naive" {
                println!("backend {b}: skipped (the many-calls mode runs the daemon's backends only)");
                return None;
            }
            Some((b, gso))
        })
        .collect();
    let topo = Topology::new();
    // A veth's receive ring holds 256 skbs and drops (with no qdisc) what finds it full; the
    // fan-out generator's GSO bursts put 8 datagrams in each, but the calls' datagrams are an skb
    // each, and the forwarder's NAPI thread shares its core with the worker: a scheduler slice
    // of the worker's would overflow the ring at rates the worker carries. A queue on the
    // generator's end holds them instead (the veth stops its queue when the ring is full), as a
    // NIC's deeper RX ring and preempting softirq would: what is lost is then lost at the
    // forwarder's socket, the worker not keeping up.
    topo.generator.exec("tc", &["qdisc", "replace", "dev", &topo.generator_if, "root", "pfifo", "limit", "50000"]);
    println!(
        "many calls: N one-to-one audio calls ({DATAGRAM}-byte SRTP, one track each, every call from its own source port) through one pinned forwarder worker and its kernel receive on core {FORWARDER_CORE}; generator (one raw socket) and the sink (XDP count+drop) on core {GENERATOR_CORE}; veth"
    );
    println!(
        "sustained: the highest paced rate with at most {:.1}% lost; pkt/core-s: packets per busy second of the forwarder's core; pkt/cpu-s: per CPU-second of the daemon; cost×: CPU per packet against the first call count of the same ports mode",
        MAX_LOSS * 100.0
    );
    println!(
        "{:<7} {:<10} {:<7} {:>5} | {:>9} | {:>9} {:>7} {:>5} {:>10} {:>7} {:>10} {:>7} {:>5} {:>6} {:>5} | {:>6} {:>6}",
        "profile",
        "backend",
        "ports",
        "calls",
        "flood in",
        "sust. pps",
        "loss%",
        "core",
        "pkt/core-s",
        "worker",
        "pkt/cpu-s",
        "rxbatch",
        "gro%",
        "tx/sys",
        "gen",
        "cost×",
        "proc×"
    );
    let mut rows: Vec<CallsRow> = Vec::new();
    for &profile in profiles {
        for &(b, gso) in &parsed {
            for mode in [PortMode::PerLeg, PortMode::Shared] {
                // The first count's CPU per packet (core, process): what the others compare with.
                let mut base: Option<Option<(f64, f64)>> = None;
                for &n in calls {
                    let row = search(&topo, b, gso, profile, super::Load::Calls { calls: n, mode }, seconds, probes)?;
                    let f = &row.flood;
                    let (mut core_cost_ratio, mut process_cost_ratio) = (None, None);
                    match &row.sustained {
                        Some(s) => {
                            if let Some((core, process)) = *base.get_or_insert(Some((s.out_per_core_s, s.out_per_cpu_s))) {
                                let ratio = |b: f64, x: f64| (x > 0.0).then(|| b / x);
                                (core_cost_ratio, process_cost_ratio) = (ratio(core, s.out_per_core_s), ratio(process, s.out_per_cpu_s));
                            }
                            println!(
                                "{:<7} {:<10} {:<7} {:>5} | {:>9.0} | {:>9.0} {:>7.3} {:>4.0}% {:>10.0} {:>6.0}% {:>10.0} {:>7.1} {:>4.0}% {:>6.1} {:>4.0}% | {:>6.2} {:>6.2}{}",
                                super::report::short(profile),
                                b,
                                mode.name(),
                                n,
                                f.offered_pps,
                                s.out_pps,
                                s.loss * 100.0,
                                s.core_busy * 100.0,
                                s.out_per_core_s,
                                s.cpu * 100.0,
                                s.out_per_cpu_s,
                                s.mean_rx_batch,
                                s.rx_gro * 100.0,
                                s.tx_per_syscall,
                                s.generator_cpu * 100.0,
                                core_cost_ratio.unwrap_or(f64::NAN),
                                process_cost_ratio.unwrap_or(f64::NAN),
                                if row.generator_limited { "  (generator-limited)" } else { "" }
                            );
                        }
                        None => {
                            base.get_or_insert(None);
                            println!(
                                "{:<7} {:<10} {:<7} {:>5} | {:>9.0} | no paced rate sustained",
                                super::report::short(profile),
                                b,
                                mode.name(),
                                n,
                                f.offered_pps
                            );
                        }
                    }
                    rows.push(CallsRow { calls: n, ports: mode, backend: b.into(), profile: format!("{profile:?}"), row, core_cost_ratio, process_cost_ratio });
                }
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use sluice_core::forward::{Core, CoreConfig, OutBatch};
    use sluice_core::ids::Generation;
    use sluice_core::srtp::RtpRecvState;
    use sluice_core::table::Delta;
    use sluice_core::time::Instant;

    use super::*;

    /// Every call's packets, from its own remote, come out once each: from B_i's port to B_i's
    /// sink address, decryptable with B_i's keys — in both port modes.
    #[test]
    fn each_call_forwards_to_its_own_subscriber_in_both_port_modes() {
        let profile = Profile::AeadAes128Gcm;
        let calls = 5;
        for mode in [PortMode::PerLeg, PortMode::Shared] {
            let mut core = Core::new(CoreConfig::default());
            core.apply(Delta { generation: Generation(1), replace_all: false, ops: calls_ops(profile, calls, mode) }).expect("valid tables");
            let mut out = OutBatch::new(8);
            for i in 0..calls {
                let m = publisher_keys(profile, i);
                let mut call = Call { keys: SrtpKeys::new(profile, &m.key, &m.salt).expect("keys"), state: RtpSendState::new(), seq: 0, ts: 0 };
                let k = send_keys(profile, legs(i).1);
                let (sub_keys, mut sub_state) = (SrtpKeys::new(profile, &k.key, &k.salt).expect("keys"), RtpRecvState::new(64));
                for t in 0..3 {
                    let mut buf = vec![0u8; DATAGRAM + 32];
                    let len = audio_packet(&mut call, i, profile, &mut buf);
                    assert_eq!(len, DATAGRAM);
                    out.clear();
                    core.handle_rx(Instant::from_nanos(1_000 * (t + 1)), leg_port(mode, legs(i).0), publisher_addr(i), &mut buf[..len], &mut out);
                    let copies: Vec<_> = out.iter().map(|(meta, bytes)| (*meta, bytes.to_vec())).collect();
                    assert_eq!(copies.len(), 1, "{mode:?} call {i} packet {t}: one copy");
                    let (meta, mut bytes) = copies.into_iter().next().expect("one copy");
                    assert_eq!((meta.local_port, meta.dst), (leg_port(mode, legs(i).1), subscriber_addr(i)), "{mode:?} call {i}");
                    let n = bytes.len();
                    assert!(sub_keys.unprotect_rtp(&mut sub_state, &mut bytes, n).is_ok(), "{mode:?} call {i}: B_i's keys");
                }
            }
        }
    }
}
