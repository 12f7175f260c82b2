//! The per-publisher retransmission cache: the last N decrypted packets of a video stream, so a
//! subscriber's NACK is answered by the SFU (one hop, no publisher round trip) and the publisher
//! is asked only for what the cache no longer holds.
//!
//! Slots are indexed by `seq % N`, so insert and lookup are O(1) and the memory is allocated once
//! when the stream is created (cold path), never per packet. A slot holds the whole plaintext RTP
//! packet (header + payload, no SRTP tag).

use core::time::Duration;

use crate::ids::SeqNo;
use crate::time::Instant;

/// How long a sequence number asked of the publisher is not asked again: subscribers that lost
/// the same packet (lost before it reached the SFU, so lost for all of them) NACK it within
/// their jitter of each other, and the publisher needs to hear it once.
pub const NACK_REPEAT_AFTER: Duration = Duration::from_millis(100);

/// The largest packet the cache keeps; larger ones are not cached (and so are NACK-forwarded).
pub const MAX_CACHED_PACKET: usize = 1500;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    seq: u16,
    len: u16,
    valid: bool,
    /// The last sequence number of this slot asked of the publisher, and when.
    asked: Option<(u16, Instant)>,
}

/// A ring of the last `capacity` packets of one stream.
#[derive(Debug)]
pub struct RtxCache {
    slots: Box<[Slot]>,
    bytes: Box<[u8]>,
}

impl RtxCache {
    /// A cache of `capacity` packets (`capacity * 1500` bytes). 256 holds about 1.7 s of a
    /// 1.5 Mbit/s layer in 1200-byte packets, longer than any useful retransmission.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { slots: vec![Slot::default(); capacity].into_boxed_slice(), bytes: vec![0; capacity * MAX_CACHED_PACKET].into_boxed_slice() }
    }

    /// How many packets it can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Keeps a copy of `packet` (plaintext RTP) under `seq`, replacing whatever shared its slot.
    pub fn insert(&mut self, seq: SeqNo, packet: &[u8]) {
        let i = usize::from(seq.0) % self.slots.len();
        if packet.len() > MAX_CACHED_PACKET {
            self.slots[i].valid = false;
            return;
        }
        let off = i * MAX_CACHED_PACKET;
        self.bytes[off..off + packet.len()].copy_from_slice(packet);
        self.slots[i] = Slot { seq: seq.0, len: packet.len() as u16, valid: true, asked: self.slots[i].asked };
    }

    /// Whether to ask the publisher for `seq` (not in the cache) now: false when it was asked
    /// less than [`NACK_REPEAT_AFTER`] ago; otherwise records the request.
    pub fn should_ask(&mut self, seq: SeqNo, now: Instant) -> bool {
        let i = usize::from(seq.0) % self.slots.len();
        let slot = &mut self.slots[i];
        if let Some((asked, at)) = slot.asked
            && asked == seq.0
            && now.saturating_duration_since(at) < NACK_REPEAT_AFTER
        {
            return false;
        }
        slot.asked = Some((seq.0, now));
        true
    }

    /// The cached plaintext packet with sequence number `seq`, if it is still there.
    pub fn get(&self, seq: SeqNo) -> Option<&[u8]> {
        let i = usize::from(seq.0) % self.slots.len();
        let slot = self.slots[i];
        if !slot.valid || slot.seq != seq.0 {
            return None;
        }
        let off = i * MAX_CACHED_PACKET;
        self.bytes.get(off..off + usize::from(slot.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_packet_is_asked_for_once_per_repeat_interval() {
        let mut c = RtxCache::new(4);
        let t = |ms: u64| Instant::from_nanos(ms * 1_000_000);
        assert!(c.should_ask(SeqNo(9), t(0)), "first subscriber's NACK goes upstream");
        assert!(!c.should_ask(SeqNo(9), t(30)), "the others' within 100 ms do not");
        assert!(c.should_ask(SeqNo(5), t(30)), "another sequence number is its own");
        assert!(c.should_ask(SeqNo(9), t(101)), "a repeat after the interval goes upstream again");
        c.insert(SeqNo(9), &[1; 10]);
        assert!(!c.should_ask(SeqNo(9), t(150)), "the slot's packet does not reset the request memory");
    }

    #[test]
    fn keeps_the_last_capacity_packets() {
        let mut c = RtxCache::new(4);
        for s in 0u16..6 {
            c.insert(SeqNo(s), &[s as u8; 10]);
        }
        assert_eq!(c.get(SeqNo(1)), None, "evicted by 5");
        assert_eq!(c.get(SeqNo(5)), Some(&[5u8; 10][..]));
        assert_eq!(c.get(SeqNo(2)), Some(&[2u8; 10][..]));
        c.insert(SeqNo(7), &[0; MAX_CACHED_PACKET + 1]);
        assert_eq!(c.get(SeqNo(3)), None, "slot invalidated by an uncacheable packet");
        assert_eq!(c.get(SeqNo(7)), None);
    }

    #[test]
    fn wraps_with_the_sequence_space() {
        let mut c = RtxCache::new(256);
        c.insert(SeqNo(65535), b"a");
        c.insert(SeqNo(0), b"b");
        assert_eq!(c.get(SeqNo(65535)), Some(&b"a"[..]));
        assert_eq!(c.get(SeqNo(0)), Some(&b"b"[..]));
    }
}
