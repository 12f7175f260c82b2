//! Pacing: a subscriber leg's packets leave at a rate derived from its bandwidth estimate, so a
//! burst (the keyframe a layer switch asks for: 30 kB at 360p, 100 kB for a 720p screen share,
//! a second of the layer's rate in one go) queues in Sluice instead of overflowing a shallow
//! bottleneck queue, where it would be lost and the loss would collapse the estimate.
//!
//! ```text
//!   egress builds, stamps and protects the copy ─▶ the leg's bucket has room and nothing waits?
//!        yes: into the output batch now          no: copied into the core's pool, queued
//!   handle_timeout at the bucket's next refill ─▶ queued copies out in order, at the pace rate
//! ```
//!
//! The rate is [`PACING_FACTOR`] times the estimate (libwebrtc's pacer uses the same factor:
//! media is encoded to the estimate, so only its bursts are slowed), raised so that what waits
//! leaves within [`MAX_QUEUE_TIME`]; the bucket holds [`BURST`] of it. The queue is FIFO, and
//! every stamped packet of the leg goes through it while anything waits, so the transport-wide
//! sequence numbers still leave in order; the send history gets each packet's real departure
//! time when it leaves. Memory: a fixed pool per core ([`POOL_SLOTS`] datagrams) and a bounded
//! queue of slot numbers per leg; when either is full the packet goes out unpaced (counted).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use core::time::Duration;

use crate::forward::{OutMeta, SLOT_BYTES};
use crate::ids::LegId;
use crate::time::Instant;

/// Pacer ids: a pool slot names the pacer whose packet it holds, so the slots of a pacer that
/// went away with its leg (or was replaced by an undone delta) are found and reclaimed.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The pace rate over the estimate.
pub const PACING_FACTOR: f64 = 2.5;
/// Whatever waits leaves within this: the rate rises to drain it.
pub const MAX_QUEUE_TIME: Duration = Duration::from_millis(300);
/// The bucket's depth, in time at the pace rate.
pub const BURST: Duration = Duration::from_millis(5);
const BURST_NS: u64 = BURST.as_nanos() as u64;
/// The most packets one leg may have waiting (a 720p keyframe is about 90).
pub const MAX_QUEUED: usize = 128;
/// Datagrams the core's pool holds for all its paced legs (1.5 MiB).
pub const POOL_SLOTS: usize = 1024;

/// One waiting packet: its bytes are in a pool slot.
#[derive(Clone, Copy, Debug)]
pub struct Queued {
    /// The pool slot.
    pub slot: u16,
    /// Where it goes.
    pub meta: OutMeta,
    /// The extended transport-wide sequence number it carries, if stamped.
    pub twcc_seq: Option<u64>,
    /// When it was queued.
    pub at: Instant,
}

/// A leg's pacer.
#[derive(Debug)]
pub struct Pacer {
    id: u64,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// Bytes the bucket allows now (may dip below zero by one packet).
    budget: f64,
    /// The pace rate for the leg's estimate, bytes per nanosecond (kept current by the leg's
    /// downlink, so a copy costs no estimator call).
    paced_per_ns: f64,
    last: Option<Instant>,
    /// Packets that waited.
    pub paced: u64,
    /// Packets sent unpaced because the queue or the pool was full.
    pub overflow: u64,
}

impl Default for Pacer {
    fn default() -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            // Allocated with the leg (a delta), never on the packet path.
            queue: VecDeque::with_capacity(MAX_QUEUED),
            queued_bytes: 0,
            budget: 0.0,
            paced_per_ns: PACING_FACTOR * crate::downlink::START_BPS as f64 / 8e9,
            last: None,
            paced: 0,
            overflow: 0,
        }
    }
}

impl Pacer {
    /// Its id (what its pool slots are tagged with).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sets the leg's estimate, bit/s.
    pub fn set_estimate(&mut self, estimate_bps: u64) {
        self.paced_per_ns = (PACING_FACTOR * estimate_bps as f64 / 8e9).max(1e-6);
    }

    /// The pace rate in bytes per nanosecond at `now`: [`PACING_FACTOR`] times the estimate,
    /// or faster so that what waits is out by the time the oldest has waited [`MAX_QUEUE_TIME`].
    fn rate(&self, now: Instant) -> f64 {
        let drain = self.queue.front().map_or(0.0, |q| {
            let left = MAX_QUEUE_TIME.saturating_sub(now.saturating_duration_since(q.at)).max(Duration::from_millis(10));
            self.queued_bytes as f64 / left.as_secs_f64() / 1e9
        });
        self.paced_per_ns.max(drain)
    }

    fn refill(&mut self, now: Instant) {
        let rate = self.rate(now);
        // (Nanoseconds as u64, not Duration::as_nanos's u128: its float conversion is a
        // library call, on every copy.)
        let dt = self.last.map_or(BURST_NS, |t| now.as_nanos().saturating_sub(t.as_nanos())) as f64;
        self.last = Some(now);
        self.budget = (self.budget + rate * dt).min(rate * BURST_NS as f64);
    }

    /// Whether a packet of `len` bytes built at `now` leaves at once (and is charged); if not,
    /// the caller queues it with [`Pacer::push`].
    pub fn admit(&mut self, now: Instant, len: usize) -> bool {
        self.refill(now);
        if self.queue.is_empty() && self.budget >= 0.0 {
            self.budget -= len as f64;
            return true;
        }
        false
    }

    /// Whether anything waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether another packet fits in the queue.
    pub fn has_room(&self) -> bool {
        self.queue.len() < MAX_QUEUED
    }

    /// Queues a packet whose bytes are in `slot`.
    pub fn push(&mut self, q: Queued) {
        self.queued_bytes += usize::from(q.meta.len);
        self.queue.push_back(q);
        self.paced += 1;
    }

    /// The next packet that may leave at `now`, charged to the bucket.
    pub fn pop_due(&mut self, now: Instant) -> Option<Queued> {
        if self.queue.is_empty() {
            return None;
        }
        self.refill(now);
        if self.budget < 0.0 {
            return None;
        }
        let q = self.queue.pop_front()?;
        self.queued_bytes -= usize::from(q.meta.len);
        self.budget -= f64::from(q.meta.len);
        Some(q)
    }

    /// When the next waiting packet may leave.
    pub fn next_due(&self) -> Option<Instant> {
        let last = self.last?;
        if self.queue.is_empty() {
            return None;
        }
        if self.budget >= 0.0 {
            return Some(last);
        }
        let wait_ns = -self.budget / self.rate(last);
        Some(last + Duration::from_nanos(wait_ns as u64).max(Duration::from_micros(100)))
    }
}

/// One core's pacing: the pool its paced legs' waiting packets live in, and which legs have
/// packets waiting.
#[derive(Debug)]
pub struct Pacing {
    /// The waiting packets' bytes.
    pub pool: PacePool,
    /// Legs with packets waiting, with their pacer's id.
    pub legs: Vec<(LegId, u64)>,
    /// When packets are next due to leave.
    pub next: Option<Instant>,
}

impl Default for Pacing {
    fn default() -> Self {
        Self { pool: PacePool::default(), legs: Vec::with_capacity(256), next: None }
    }
}

impl Pacing {
    /// Queues the packet `bytes` (built for `meta`) on the pacer of its leg. False when the
    /// leg's queue or the pool is full: the caller sends it unpaced.
    pub fn queue(&mut self, now: Instant, pacer: &mut Pacer, bytes: &[u8], meta: OutMeta, twcc_seq: Option<u64>) -> bool {
        let leg = meta.leg;
        if !pacer.has_room() {
            pacer.overflow += 1;
            return false;
        }
        let Some(slot) = self.pool.store(bytes, pacer.id) else {
            pacer.overflow += 1;
            return false;
        };
        if pacer.is_empty() && !self.legs.iter().any(|&(l, id)| l == leg && id == pacer.id) {
            self.legs.push((leg, pacer.id));
        }
        pacer.push(Queued { slot, meta, twcc_seq, at: now });
        let due = pacer.next_due().unwrap_or(now);
        self.next = Some(self.next.map_or(due, |n| n.min(due)));
        true
    }
}

/// The core's store for waiting packets: fixed slots, allocated once.
#[derive(Debug)]
pub struct PacePool {
    data: Box<[u8]>,
    /// The pacer each slot holds a packet of (0: free).
    owner: Box<[u64]>,
    free: Vec<u16>,
}

impl Default for PacePool {
    fn default() -> Self {
        Self::new(POOL_SLOTS)
    }
}

impl PacePool {
    /// A pool of `slots` datagrams.
    pub fn new(slots: usize) -> Self {
        let slots = slots.min(usize::from(u16::MAX));
        Self { data: vec![0; slots * SLOT_BYTES].into_boxed_slice(), owner: vec![0; slots].into_boxed_slice(), free: (0..slots as u16).rev().collect() }
    }

    /// Copies `bytes` into a free slot, tagged with pacer `owner`.
    pub fn store(&mut self, bytes: &[u8], owner: u64) -> Option<u16> {
        if bytes.len() > SLOT_BYTES {
            return None;
        }
        let slot = self.free.pop()?;
        self.owner[usize::from(slot)] = owner;
        let at = usize::from(slot) * SLOT_BYTES;
        self.data[at..at + bytes.len()].copy_from_slice(bytes);
        Some(slot)
    }

    /// The first `len` bytes of `slot`.
    pub fn get(&self, slot: u16, len: usize) -> &[u8] {
        let at = usize::from(slot) * SLOT_BYTES;
        &self.data[at..at + len.min(SLOT_BYTES)]
    }

    /// Returns `slot` to the pool.
    pub fn release(&mut self, slot: u16) {
        if self.owner[usize::from(slot)] != 0 {
            self.owner[usize::from(slot)] = 0;
            self.free.push(slot);
        }
    }

    /// Returns every slot pacer `owner` held (it went away with its queue).
    pub fn reclaim(&mut self, owner: u64) -> usize {
        let mut n = 0;
        for (i, o) in self.owner.iter_mut().enumerate() {
            if *o == owner {
                *o = 0;
                self.free.push(i as u16);
                n += 1;
            }
        }
        n
    }

    /// Free slots.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;

    fn meta(len: u16) -> OutMeta {
        OutMeta { local_port: 1, dst: SocketAddr::from((Ipv4Addr::LOCALHOST, 2)), leg: LegId(1), len }
    }

    #[test]
    fn a_burst_leaves_at_the_pace_rate_and_in_order() {
        let t0 = Instant::from_nanos(1_000_000_000);
        let mut p = Pacer::default();
        let mut pool = PacePool::new(64);
        // 400 kbit/s estimate: 1 Mbit/s pace = 125 kB/s; a 5 ms bucket holds 625 bytes.
        p.set_estimate(400_000);
        assert!(p.admit(t0, 1200), "the first packet goes at once");
        let mut queued = 0;
        for i in 0..20u16 {
            assert!(!p.admit(t0, 1200));
            let slot = pool.store(&i.to_be_bytes(), p.id()).unwrap();
            p.push(Queued { slot, meta: meta(1200), twcc_seq: Some(u64::from(i)), at: t0 });
            queued += 1;
        }
        // 24 kB at 125 kB/s (or faster, to drain within 300 ms: 80 kB/s is slower) = ~190 ms.
        let mut now = t0;
        let mut out = Vec::new();
        while let Some(due) = p.next_due() {
            now = due.max(now);
            while let Some(q) = p.pop_due(now) {
                out.push((now, q.twcc_seq.unwrap()));
                pool.release(q.slot);
            }
        }
        assert_eq!(out.len(), queued);
        assert!(out.windows(2).all(|w| w[0].1 < w[1].1), "in order");
        let took = now.saturating_duration_since(t0);
        assert!(took >= Duration::from_millis(170) && took <= Duration::from_millis(210), "{took:?}");
        assert_eq!(pool.available(), 64);
        // A pacer that went away: its slots come back.
        let gone = Pacer::default();
        for _ in 0..5 {
            pool.store(&[1, 2, 3], gone.id()).unwrap();
        }
        assert_eq!((pool.available(), pool.reclaim(gone.id()), pool.available()), (59, 5, 64));
    }

    #[test]
    fn a_long_queue_drains_within_the_max_queue_time() {
        let t0 = Instant::from_nanos(1_000_000_000);
        let mut p = Pacer::default();
        // A tiny estimate (100 kbit/s → 31 kB/s paced) and 200 packets (240 kB) waiting.
        p.set_estimate(100_000);
        assert!(p.admit(t0, 1200));
        for i in 0..200u16 {
            p.push(Queued { slot: i, meta: meta(1200), twcc_seq: None, at: t0 });
        }
        let mut now = t0;
        let mut n = 0;
        while let Some(due) = p.next_due() {
            now = due.max(now);
            while p.pop_due(now).is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 200);
        let took = now.saturating_duration_since(t0);
        assert!(took <= MAX_QUEUE_TIME + Duration::from_millis(20), "the rate rises to drain it: {took:?}");
    }
}
