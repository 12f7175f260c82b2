//! Per-packet cost of the forwarding core: one publisher sending 1200-byte VP8 packets on one
//! layer, N subscribers on that layer, for both SRTP profiles. Beside it, in the same run and
//! with the same keys, the raw crypto the core cannot avoid: copy in + one unprotect +
//! N × (header into a slot + protect from the decrypted payload). The core's overhead is (core − raw) / raw.
//!
//! Each iteration feeds a fresh packet from a pre-protected ring of [`RING`] sequential sequence
//! numbers (SRTP replay protection drops repeats). When the ring is used up the core (or the raw
//! receive state) is rebuilt outside the timed region and the ring starts again at its keyframe.
//!
//! `cargo bench -p sluice-core --bench forward`; criterion reports time per *input* packet, the
//! per-output cost is that divided by N (throughput is given in output packets). Before the
//! criterion runs, a paired table measures core and raw alternately (same load for both) and
//! prints ns per output and the overhead ratio; `FORWARD_NO_PAIRED=1` skips it. With
//! `FORWARD_TWCC=1` every leg negotiated transport-cc (arrivals recorded, copies stamped,
//! checked against the leg's pacer and kept in the send history): the feedback loop's cost on
//! the packet path. `FORWARD_DESCRIPTORS=1` prints the cost of layer-aware forwarding (VP8
//! temporal layers) against the same stream without descriptors.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant as StdInstant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use sluice_core::forward::{Core, CoreConfig, OutBatch, SLOT_BYTES, Shard};
use sluice_core::ids::{Generation, LegId, Ssrc};
use sluice_core::srtp::{Profile, RtcpSendState, RtpRecvState, RtpSendState, SrtpKeys};
use sluice_core::table::{Delta, Op};
use sluice_core::time::Instant;
use sluice_core::wire::rtcp;
use sluice_sim::fixture::*;

const RING: usize = 4096;

/// `FORWARD_TWCC=1`: every leg negotiated transport-cc (the feedback loop's per-packet work).
fn twcc() -> bool {
    std::env::var_os("FORWARD_TWCC").is_some()
}
/// Virtual time between input packets. With transport-cc the subscriber legs are paced (2.5
/// times their 300 kbit/s start estimate), so the packets come 20 ms apart: the rate the pacer
/// lets straight through, as media within the estimate is; a burst's cost is the pacer's own
/// (its tests).
fn step_ns() -> u64 {
    if twcc() { 20_000_000 } else { 1000 }
}
const PACKET: usize = 1200;
const PUB_SSRC: u32 = 0x1000;

struct Setup {
    profile: Profile,
    fanout: usize,
    /// Subscribers (the last ones) that take temporal layer 0 only.
    temporal_0: usize,
    /// Protected publisher packets, sequential from a keyframe.
    ring: Vec<Vec<u8>>,
    pub_addr: SocketAddr,
}

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8), 5000))
}

impl Setup {
    fn new(profile: Profile, fanout: usize) -> Self {
        Self::with(profile, fanout, false, 0)
    }

    /// `descriptors`: the VP8 packets carry the full payload descriptor of an L1T3 stream
    /// (15-bit picture id, TL0PICIDX, TID and layer sync; four packets per frame, temporal ids
    /// 0 2 1 2), which every copy has rewritten; `temporal_0` of the subscribers take only
    /// temporal layer 0 (a quarter of the frames).
    fn with(profile: Profile, fanout: usize, descriptors: bool, temporal_0: usize) -> Self {
        let up = material(profile, 1, 0);
        let keys = SrtpKeys::new(profile, &up.key, &up.salt).unwrap();
        let mut st = RtpSendState::new();
        let ring = (0..RING)
            .map(|i| {
                let mut payload = vec![0xabu8; PACKET - 12];
                if descriptors {
                    let (frame, first) = (i / 4, i % 4 == 0);
                    let tid = [0u8, 2, 1, 2][frame % 4];
                    let y = u8::from(frame % 4 != 0 && frame < 4);
                    let pid = (frame & 0x7fff) as u16;
                    let d0 = if first { 0x90 } else { 0x80 };
                    let header = if first && i > 0 { 0x01 } else { 0x00 };
                    payload[..7].copy_from_slice(&[d0, 0xE0, 0x80 | (pid >> 8) as u8, pid as u8, (frame / 4) as u8, tid << 6 | y << 5, header]);
                } else if i == 0 {
                    payload[..2].copy_from_slice(&[0x10, 0x00]);
                } else {
                    payload[..2].copy_from_slice(&[0x00, 0x00]);
                }
                let mut p = rtp_packet(PUB_SSRC, i as u16, (i as u32 / 4) * 3000, PT_VP8, i % 4 == 3, &[]);
                if twcc() {
                    // The publisher's transport-wide sequence number (one-byte extension id 3).
                    p[0] |= 0x10;
                    let [a, b] = (i as u16).to_be_bytes();
                    p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x31, a, b, 0]);
                    payload.truncate(payload.len() - 8);
                }
                p.extend_from_slice(&payload);
                let n = p.len();
                p.resize(n + 32, 0);
                let len = keys.protect_rtp(&mut st, &mut p, n).unwrap();
                p.truncate(len);
                p
            })
            .collect();
        Self { profile, fanout, temporal_0, ring, pub_addr: addr(1) }
    }

    /// A core with the meeting installed and every subscriber's address latched.
    fn core(&self) -> Core {
        self.core_of(Shard::default())
    }

    /// [`Setup::core`] as core `shard` of several (every core holds the tables; leg `i` on port
    /// `20000 + i` belongs to core `port % count`).
    fn core_of(&self, shard: Shard) -> Core {
        let mut core = Core::new(CoreConfig { shard, ..CoreConfig::default() });
        let mut ops = Vec::new();
        for i in 1..=self.fanout as u32 + 1 {
            let mut leg = leg_spec(i, 20_000 + i as u16, material(self.profile, i, 0), material(self.profile, i, 1));
            if twcc() {
                // Congestion control on every leg: the publisher's arrivals recorded, each copy
                // stamped with its leg's own sequence number and kept in its send history.
                leg.feedback.twcc_ext = Some(if i == 1 { 3 } else { 5 });
            }
            ops.push(Op::UpsertLeg(leg));
        }
        ops.push(Op::UpsertTrack(video_track(1, 1, &[(PUB_SSRC, PUB_SSRC + 1)])));
        for i in 2..=self.fanout as u32 + 1 {
            let mut sub = subscription(i, 1, 0x10_0000 * i, Some(0x10_0000 * i + 1), 0);
            if i as usize > self.fanout + 1 - self.temporal_0 {
                sub.max_temporal = Some(0);
            }
            ops.push(Op::UpsertSubscription(sub));
        }
        core.apply(Delta { generation: Generation(1), replace_all: false, ops }).unwrap();
        let mut out = OutBatch::new(64);
        for i in 1..=self.fanout as u32 + 1 {
            // Latched on the leg's own core, told to the others (as the worker glue does).
            if !shard.owns(20_000 + i as u16) {
                core.set_remote(LegId(i), addr(i)).expect("per-leg port");
                continue;
            }
            let m = material(self.profile, i, 0);
            let keys = SrtpKeys::new(self.profile, &m.key, &m.salt).unwrap();
            let mut buf = [0u8; 64];
            let n = rtcp::write_rr(&mut buf, Ssrc(i), &[]).unwrap();
            let n = keys.protect_rtcp(&mut RtcpSendState::new(), &mut buf, n).unwrap();
            core.handle_rx(Instant::from_nanos(0), 20_000 + i as u16, addr(i), &mut buf[..n], &mut out);
        }
        core
    }

    /// Times `iters` packets through the core.
    fn run_core(&self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut out = OutBatch::new(64);
        let mut buf = [0u8; 1600];
        let mut done = 0u64;
        while done < iters {
            let mut core = self.core();
            let chunk = (iters - done).min(RING as u64) as usize;
            let start = StdInstant::now();
            for (i, p) in self.ring[..chunk].iter().enumerate() {
                out.clear();
                let b = &mut buf[..p.len()];
                b.copy_from_slice(p);
                core.handle_rx(Instant::from_nanos(i as u64 * step_ns()), 20_001, self.pub_addr, b, &mut out);
            }
            total += start.elapsed();
            if self.temporal_0 == 0 {
                assert_eq!(out.len(), self.fanout, "every subscriber got the last packet");
                assert_eq!(core.stats().tx_packets, (chunk * self.fanout) as u64, "{:?}", core.stats());
            } else {
                let expect = chunk * (self.fanout - self.temporal_0) + chunk.div_ceil(16) * 4 * self.temporal_0;
                assert!(core.stats().tx_packets.abs_diff(expect as u64) <= 4 * self.temporal_0 as u64, "{expect} {:?}", core.stats());
            }
            black_box(&out);
            done += chunk as u64;
        }
        total
    }

    /// Times the crypto alone: copy in, unprotect, then per subscriber copy the header into a
    /// slot and protect the payload from the decrypted packet into it with that subscriber's keys
    /// (`protect_rtp_from`, as the core does).
    fn run_raw(&self, iters: u64) -> Duration {
        let up = material(self.profile, 1, 0);
        let rx = SrtpKeys::new(self.profile, &up.key, &up.salt).unwrap();
        let tx: Vec<SrtpKeys> = (2..=self.fanout as u32 + 1)
            .map(|i| {
                let m = material(self.profile, i, 1);
                SrtpKeys::new(self.profile, &m.key, &m.salt).unwrap()
            })
            .collect();
        let mut send: Vec<RtpSendState> = vec![RtpSendState::new(); self.fanout];
        let twcc = twcc();
        let mut slots = vec![0u8; SLOT_BYTES * self.fanout];
        let mut buf = [0u8; 1600];
        let mut total = Duration::ZERO;
        let mut done = 0u64;
        while done < iters {
            let mut recv = RtpRecvState::new(128);
            let chunk = (iters - done).min(RING as u64) as usize;
            let start = StdInstant::now();
            for p in &self.ring[..chunk] {
                let b = &mut buf[..p.len()];
                b.copy_from_slice(p);
                let n = rx.unprotect_rtp(&mut recv, b, p.len()).unwrap();
                let hl = if twcc { 20 } else { 12 };
                for (k, (keys, st)) in tx.iter().zip(send.iter_mut()).enumerate() {
                    let slot = &mut slots[k * SLOT_BYTES..(k + 1) * SLOT_BYTES];
                    slot[..hl].copy_from_slice(&b[..hl]);
                    black_box(keys.protect_rtp_from(st, slot, hl, &b[hl..n]).unwrap());
                }
            }
            total += start.elapsed();
            done += chunk as u64;
        }
        black_box(&slots);
        total
    }
}

fn forward(c: &mut Criterion) {
    for profile in [Profile::AeadAes128Gcm, Profile::AesCm128HmacSha1_80] {
        let name = match profile {
            Profile::AeadAes128Gcm => "aead_aes_128_gcm",
            _ => "aes_cm_128_hmac_sha1_80",
        };
        let mut g = c.benchmark_group(format!("forward/{name}"));
        for fanout in [1usize, 4, 16] {
            let s = Setup::new(profile, fanout);
            g.throughput(Throughput::Elements(fanout as u64));
            g.bench_function(BenchmarkId::new("core", fanout), |b| b.iter_custom(|iters| s.run_core(iters)));
            g.bench_function(BenchmarkId::new("raw_crypto", fanout), |b| b.iter_custom(|iters| s.run_raw(iters)));
        }
        g.finish();
    }
}

/// Core and raw crypto measured alternately, chunk by chunk, so both see the same machine load;
/// the minimum over the rounds is the least disturbed figure. Printed as a table before the
/// criterion runs (which report each side separately, with confidence intervals).
fn paired_table() {
    const ROUNDS: usize = 15;
    eprintln!("paired measurement, {ROUNDS} alternating rounds of {RING} packets, 1200-byte RTP, minimum (median) per round:");
    eprintln!("{:<26} {:>6} {:>22} {:>22} {:>18}", "profile", "fanout", "core ns/output", "raw ns/output", "overhead");
    for profile in [Profile::AeadAes128Gcm, Profile::AesCm128HmacSha1_80] {
        for fanout in [1usize, 4, 16] {
            let s = Setup::new(profile, fanout);
            let (mut core, mut raw) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                core.push(s.run_core(RING as u64).as_nanos() as f64 / (RING * fanout) as f64);
                raw.push(s.run_raw(RING as u64).as_nanos() as f64 / (RING * fanout) as f64);
            }
            core.sort_by(f64::total_cmp);
            raw.sort_by(f64::total_cmp);
            let (c, r) = (core[0], raw[0]);
            let (cm, rm) = (core[ROUNDS / 2], raw[ROUNDS / 2]);
            eprintln!(
                "{:<26} {:>6} {:>10.1} ({:>8.1}) {:>10.1} ({:>8.1}) {:>7.1}% ({:>6.1}%)",
                format!("{profile:?}"),
                fanout,
                c,
                cm,
                r,
                rm,
                100.0 * (c - r) / r,
                100.0 * (cm - rm) / rm
            );
        }
    }
}

/// `FORWARD_DESCRIPTORS=1`: what layer-aware forwarding costs per copy, at fan-out 4 (GCM),
/// against the reference row of the same stream without payload-descriptor fields, measured in
/// alternating rounds: every copy of a stream with descriptors (picture id, TL0PICIDX and
/// marker rewritten per copy), and the same with two subscribers on temporal layer 0 (cost per
/// copy actually sent).
fn descriptor_table() {
    const ROUNDS: usize = 15;
    let rows = [("plain VP8 (reference)", false, 0usize), ("L1T3 descriptors, all layers", true, 0), ("L1T3, 2 of 4 on temporal 0", true, 2)];
    let setups: Vec<Setup> = rows.iter().map(|&(_, d, t)| Setup::with(Profile::AeadAes128Gcm, 4, d, t)).collect();
    let mut times = vec![Vec::new(); rows.len()];
    for _ in 0..ROUNDS {
        for (s, t) in setups.iter().zip(&mut times) {
            let copies = RING * (s.fanout - s.temporal_0) + RING.div_ceil(16) * 4 * s.temporal_0;
            t.push(s.run_core(RING as u64).as_nanos() as f64 / copies as f64);
        }
    }
    eprintln!("layer-aware forwarding, GCM, fan-out 4, {ROUNDS} alternating rounds of {RING} packets, ns per copy sent, median (min):");
    let med = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        (t[ROUNDS / 2], t[0])
    };
    let (reference, _) = med(&mut times[0].clone());
    for ((name, _, _), t) in rows.iter().zip(&mut times) {
        let (m, lo) = med(t);
        eprintln!("{name:<32} {m:>8.1} ({lo:>7.1})  {:>+6.1}%", 100.0 * (m - reference) / reference);
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Two cores on two threads, as two workers run them: the presenter's core receives in batches
/// of 32 and sends what it hands over to the other thread after each batch, in one message;
/// the other core builds its copies and sends the batch's buffers back. Returns the CPU time of both threads together
/// and each core's copies.
fn webinar_threads(s: &Setup, packets: usize) -> (Duration, u64, u64) {
    use std::sync::mpsc::sync_channel;
    type Batch = Vec<sluice_core::forward::Handoff>;
    let viewers = s.fanout;
    // One message per batch (a worker wakes its peer once per batch, not per packet); the
    // batch's vector comes back with the buffers in it.
    let (to_0, from_1) = sync_channel::<Batch>(64);
    let (back, returned) = sync_channel::<Batch>(64);
    let mut core0 = s.core_of(Shard { index: 0, count: 2 });
    let mut core1 = s.core_of(Shard { index: 1, count: 2 });
    let other = std::thread::spawn(move || {
        let start = thread_cpu();
        let mut out = OutBatch::new(viewers + 8);
        for mut batch in from_1 {
            for h in &mut batch {
                out.clear();
                core0.handle_handoff(Instant::from_nanos(0), h, &mut out);
                black_box(&out);
            }
            let _ = back.send(batch);
        }
        (thread_cpu() - start, core0.stats().tx_packets)
    });
    let start = thread_cpu();
    let mut out = OutBatch::new(viewers + 8);
    let mut buf = [0u8; 1600];
    let mut spare: Vec<Batch> = (0..8).map(|_| Vec::with_capacity(64)).collect();
    for (k, batch) in s.ring[..packets].chunks(32).enumerate() {
        let mut handed = spare.pop().unwrap_or_default();
        for (i, p) in batch.iter().enumerate() {
            out.clear();
            let b = &mut buf[..p.len()];
            b.copy_from_slice(p);
            core1.handle_rx(Instant::from_nanos((k * 32 + i) as u64 * step_ns()), 20_001, s.pub_addr, b, &mut out);
            black_box(&out);
            handed.extend(std::iter::from_fn(|| core1.poll_handoff()));
        }
        to_0.send(handed).unwrap();
        for mut v in returned.try_iter() {
            for h in v.drain(..) {
                core1.recycle(h);
            }
            spare.push(v);
        }
    }
    drop(to_0);
    let mine = thread_cpu() - start;
    let (theirs, copies0) = other.join().unwrap();
    (mine + theirs, copies0, core1.stats().tx_packets)
}

/// `FORWARD_WEBINAR=1`: egress ownership's cost, one presenter to many viewers (GCM): the copies
/// built by one core alone (the reference row), against two cores (the presenter's leg on core
/// 1, the viewers' legs alternating): core 1 decrypts, builds its viewers' copies and hands the
/// packet over once; core 0 builds the rest from the handed-over packet; the buffer goes back to
/// core 1's pool. Two rows for two cores: both on this one thread (no queue, but one CPU cache
/// for both cores' tables), and on two threads as two workers run them (thread CPU time of
/// both); each core's share of the copies. All rows are thread CPU time (other processes' load does
/// not count). Alternating rounds, median (min).
fn webinar_table() {
    const ROUNDS: usize = 11;
    const PACKETS: usize = 256;
    eprintln!("egress ownership (GCM), {ROUNDS} alternating rounds of {PACKETS} packets, ns per copy, median (min):");
    eprintln!(
        "{:>8} {:>20} {:>20} {:>8} {:>20} {:>8} {:>16}",
        "viewers", "one core", "two, one thread", "ratio", "two threads (CPU)", "ratio", "core 0 / core 1"
    );
    for viewers in [16usize, 64, 200, 1000] {
        let s = Setup::new(Profile::AeadAes128Gcm, viewers);
        let (mut one, mut two, mut threads) = (Vec::new(), Vec::new(), Vec::new());
        let mut share = (0u64, 0u64);
        for _ in 0..ROUNDS {
            let mut core = s.core();
            let mut out = OutBatch::new(viewers + 8);
            let mut buf = [0u8; 1600];
            let start = thread_cpu();
            for (i, p) in s.ring[..PACKETS].iter().enumerate() {
                out.clear();
                let b = &mut buf[..p.len()];
                b.copy_from_slice(p);
                core.handle_rx(Instant::from_nanos(i as u64 * step_ns()), 20_001, s.pub_addr, b, &mut out);
            }
            one.push((thread_cpu() - start).as_nanos() as f64 / (PACKETS * viewers) as f64);
            assert_eq!(core.stats().tx_packets, (PACKETS * viewers) as u64);
            let mut cores = [s.core_of(Shard { index: 0, count: 2 }), s.core_of(Shard { index: 1, count: 2 })];
            let mut outs = [OutBatch::new(viewers + 8), OutBatch::new(viewers + 8)];
            let start = thread_cpu();
            for (i, p) in s.ring[..PACKETS].iter().enumerate() {
                let now = Instant::from_nanos(i as u64 * step_ns());
                outs[1].clear();
                let b = &mut buf[..p.len()];
                b.copy_from_slice(p);
                cores[1].handle_rx(now, 20_001, s.pub_addr, b, &mut outs[1]);
                while let Some(mut h) = cores[1].poll_handoff() {
                    outs[0].clear();
                    cores[0].handle_handoff(now, &mut h, &mut outs[0]);
                    cores[1].recycle(h);
                }
                black_box(&outs);
            }
            two.push((thread_cpu() - start).as_nanos() as f64 / (PACKETS * viewers) as f64);
            let (t0, t1) = (cores[0].stats().tx_packets, cores[1].stats().tx_packets);
            assert_eq!(t0 + t1, (PACKETS * viewers) as u64, "every copy built once");
            assert_eq!(cores[1].stats().handoff_buffers, 1, "one pooled buffer serves the run");
            share = (t0, t1);
            let (cpu, c0, c1) = webinar_threads(&s, PACKETS);
            assert_eq!(c0 + c1, (PACKETS * viewers) as u64, "every copy built once, on two threads");
            threads.push(cpu.as_nanos() as f64 / (PACKETS * viewers) as f64);
        }
        let med = |t: &mut Vec<f64>| {
            t.sort_by(f64::total_cmp);
            (t[ROUNDS / 2], t[0])
        };
        let ((o, omin), (t, tmin), (th, thmin)) = (med(&mut one), med(&mut two), med(&mut threads));
        let total = (share.0 + share.1) as f64;
        eprintln!(
            "{:>8} {:>10.1} ({:>7.1}) {:>10.1} ({:>7.1}) {:>8.3} {:>10.1} ({:>7.1}) {:>8.3} {:>7.1}% / {:.1}%",
            viewers,
            o,
            omin,
            t,
            tmin,
            t / o,
            th,
            thmin,
            th / o,
            100.0 * share.0 as f64 / total,
            100.0 * share.1 as f64 / total
        );
    }
}

/// `FORWARD_CHECKPOINT=1`: what a worker's checkpoint export costs (every 100 ms it walks its
/// legs and streams, see `sluice_core::table::checkpoint`), against the reference row of
/// forwarding one packet to the same subscribers. Median of 31 exports.
fn checkpoint_table() {
    use sluice_core::table::checkpoint::Checkpoint;
    eprintln!("checkpoint export (GCM), median of 31:");
    eprintln!("{:>8} {:>14} {:>14} {:>22} {:>16}", "streams", "export µs", "ns/stream", "one packet's fan-out µs", "share of 100 ms");
    for fanout in [16usize, 256, 2048] {
        let s = Setup::new(Profile::AeadAes128Gcm, fanout);
        let mut core = s.core();
        let mut out = OutBatch::new(fanout + 8);
        let mut fan = Vec::new();
        for (i, p) in s.ring[..32].iter().enumerate() {
            let mut b = p.clone();
            out.clear();
            let t = StdInstant::now();
            core.handle_rx(Instant::from_nanos(i as u64 * step_ns()), 20_001, s.pub_addr, &mut b, &mut out);
            fan.push(t.elapsed().as_nanos() as f64);
        }
        assert_eq!(out.len(), fanout, "every subscriber got the packet");
        let mut times = Vec::new();
        for _ in 0..31 {
            let mut ck = Checkpoint::default();
            let t = StdInstant::now();
            core.checkpoint(&mut ck);
            times.push(t.elapsed().as_nanos() as f64);
            assert_eq!(ck.streams.len(), fanout);
            black_box(&ck);
        }
        times.sort_by(f64::total_cmp);
        fan.sort_by(f64::total_cmp);
        let (export, one) = (times[15], fan[16]);
        eprintln!("{:>8} {:>14.1} {:>14.1} {:>22.1} {:>15.3}%", fanout, export / 1e3, export / fanout as f64, one / 1e3, export / 1e6);
    }
}

criterion_group!(benches, forward);

/// `FORWARD_ONLY=core|raw|setup FORWARD_PROFILE=gcm|cm FORWARD_FANOUT=n FORWARD_PACKETS=n`:
/// runs exactly that many packets through one side and exits, for `perf stat -e cycles:u`
/// (per-process counts, unlike wall time, do not move with other processes' load; subtract a
/// `setup` run to remove building the ring).
fn single_side() -> bool {
    let Ok(which) = std::env::var("FORWARD_ONLY") else { return false };
    let profile = match std::env::var("FORWARD_PROFILE").as_deref() {
        Ok("cm") => Profile::AesCm128HmacSha1_80,
        _ => Profile::AeadAes128Gcm,
    };
    let fanout = std::env::var("FORWARD_FANOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let packets = std::env::var("FORWARD_PACKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(RING as u64 * 10);
    let s = Setup::new(profile, fanout);
    let t = match which.as_str() {
        "core" => s.run_core(packets),
        "raw" => s.run_raw(packets),
        _ => Duration::ZERO,
    };
    eprintln!("{which} {profile:?} fanout {fanout}: {packets} packets in {t:?}");
    true
}

fn main() {
    if single_side() {
        return;
    }
    if std::env::var_os("FORWARD_CHECKPOINT").is_some() {
        checkpoint_table();
        return;
    }
    if std::env::var_os("FORWARD_WEBINAR").is_some() {
        webinar_table();
        return;
    }
    if std::env::var_os("FORWARD_DESCRIPTORS").is_some() {
        descriptor_table();
        return;
    }
    if !std::env::args().any(|a| a == "--list") && std::env::var_os("FORWARD_NO_PAIRED").is_none() {
        paired_table();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
