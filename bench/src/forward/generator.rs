//! The publisher: SRTP video protected on the fly and sent in GSO bursts, from a thread pinned in
//! the generator's namespace.

use std::net::SocketAddr;
use std::time::{Duration, Instant as WallInstant};

use anyhow::Context as _;
use sluice_core::srtp::{Profile, RtpSendState, SrtpKeys};
use sluice_core::table::KeyMaterial;
use sluice_dataplane::io::{Backend, BackendKind, IoConfig, SendRegistry, Transmit};

use super::accounting::thread_cpu_ns;
use super::{PAYLOAD, PUBLISHER_SSRC, STREAMS};

/// The publisher: protects packets on the fly (so sequence numbers never repeat) and sends them
/// in bursts through the same batched I/O the dataplane uses (one GSO send per burst).
pub(crate) struct Generator {
    io: Backend,
    port: u16,
    keys: SrtpKeys,
    /// Per stream: send state and last sequence number; packets go round-robin.
    streams: Vec<(RtpSendState, u16)>,
    next: usize,
    bufs: Vec<Vec<u8>>,
    epoch: WallInstant,
}

impl Generator {
    /// A publisher on `ip`, in the calling thread's network namespace.
    pub(crate) fn new(profile: Profile, epoch: WallInstant, ip: std::net::IpAddr) -> anyhow::Result<Self> {
        let mut io = Backend::new(BackendKind::Mmsg, IoConfig { local_ip: ip, gso: true, ..IoConfig::default() }, SendRegistry::new())?;
        let port = io.add_port(0)?;
        let m = KeyMaterial::seeded(profile, 1);
        Ok(Self {
            io,
            port,
            keys: SrtpKeys::new(profile, &m.key, &m.salt)?,
            streams: vec![(RtpSendState::new(), 0)],
            next: 0,
            bufs: (0..64).map(|_| vec![0u8; 1300]).collect(),
            epoch,
        })
    }

    /// Spreads the packets over `n` streams (SSRC 0x5000..), as [`STREAMS`] explains.
    pub(crate) fn with_streams(mut self, n: u32) -> Self {
        self.streams = (0..n.max(1)).map(|_| (RtpSendState::new(), 0)).collect();
        self
    }

    /// Sends `n` (≤ 64) packets to `dst`; the first 8 payload bytes carry the send time.
    pub(crate) fn send(&mut self, dst: SocketAddr, n: usize) -> usize {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut lens = [0usize; 64];
        for (i, b) in self.bufs.iter_mut().take(n).enumerate() {
            let k = self.next;
            self.next = (self.next + 1) % self.streams.len();
            let (state, seq) = &mut self.streams[k];
            *seq = seq.wrapping_add(1);
            b[..12].copy_from_slice(&[0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            b[2..4].copy_from_slice(&seq.to_be_bytes());
            b[4..8].copy_from_slice(&((now / 11_111) as u32).to_be_bytes());
            b[8..12].copy_from_slice(&(PUBLISHER_SSRC + k as u32).to_be_bytes());
            b[12] = 0x10; // VP8 descriptor: start of partition 0 ...
            b[13] = 0x00; // ... keyframe, so the subscription starts at once
            b[14..22].copy_from_slice(&now.to_be_bytes());
            lens[i] = self.keys.protect_rtp(state, b, 12 + PAYLOAD).unwrap_or(0);
        }
        let port = self.port;
        self.io.send_batch(self.bufs.iter().zip(&lens).take(n).map(|(b, &l)| Transmit { local_port: port, dst, payload: &b[..l] }))
    }

    /// Sends for `seconds` at `rate` packets/s (0: as fast as it can) from a thread pinned to
    /// `core` in the namespace `ns`, from `ip` to `dst`.
    /// Returns (packets sent in the timed part, packets sent in all, CPU seconds of the timed part).
    #[expect(clippy::too_many_arguments, reason = "one load's whole description")]
    pub(crate) fn spawn_in(
        ns: String,
        ip: std::net::IpAddr,
        profile: Profile,
        epoch: WallInstant,
        core: usize,
        seconds: f64,
        rate: f64,
        dst: SocketAddr,
    ) -> std::thread::JoinHandle<anyhow::Result<(u64, u64, f64)>> {
        std::thread::spawn(move || {
            crate::netns::join_thread(&ns).with_context(|| format!("entering {ns}"))?;
            if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == core)) {
                core_affinity::set_for_current(id);
            }
            let mut g = Generator::new(profile, epoch, ip)?.with_streams(STREAMS);
            // The subscriptions start at the first keyframe; every packet is one.
            let warmup = g.send(dst, 8) as u64;
            std::thread::sleep(Duration::from_millis(100));
            let (t0, cpu0) = (WallInstant::now(), thread_cpu_ns());
            let burst = if rate > 0.0 { 8 } else { 32 };
            let mut sent = 0u64;
            while t0.elapsed().as_secs_f64() < seconds {
                if rate > 0.0 && sent as f64 >= t0.elapsed().as_secs_f64() * rate {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                sent += g.send(dst, burst) as u64;
            }
            Ok((sent, sent + warmup, (thread_cpu_ns() - cpu0) as f64 / 1e9))
        })
    }
}
