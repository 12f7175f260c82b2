//! What Sluice sent on a leg, by its own transport-wide sequence number: the send side of
//! transport-cc. Feedback from the participant turns entries into (sent, arrived, size) samples
//! for the estimator; fixed memory per leg ([`HISTORY`] entries).

use crate::time::Instant;

/// Entries per leg: about 1 s of a 10 Mbit/s leg, several feedback intervals.
pub const HISTORY: usize = 1024;

/// One packet sent: 16 bytes, so a leg's history is 16 KiB and a stamp touches one cache line.
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// The low 32 bits of the extended sequence number + 1 (0: empty). The ring is rewritten
    /// long before 2^32 packets could alias a slot.
    tag: u32,
    size: u16,
    /// The probe cluster (0: media) in the low 15 bits; the top bit: feedback already reported
    /// it (received or lost), so later feedback for it is ignored.
    cluster: u16,
    sent: Instant,
}

const ACKED: u16 = 0x8000;

/// A sent packet as feedback resolves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Its extended transport-wide sequence number.
    pub seq: u64,
    /// When Sluice sent it.
    pub sent: Instant,
    /// When the participant received it (its clock), `None` if reported lost.
    pub arrived: Option<Instant>,
    /// Its size on the wire (SRTP included).
    pub size: u16,
    /// Its probe cluster (0: media).
    pub cluster: u16,
}

/// The send history of one leg.
#[derive(Clone, Debug)]
pub struct SendHistory {
    entries: Box<[Entry; HISTORY]>,
    /// The next sequence number to stamp (extended).
    next: u64,
}

impl Default for SendHistory {
    fn default() -> Self {
        Self { entries: Box::new([Entry::default(); HISTORY]), next: 1 << 16 }
    }
}

impl SendHistory {
    /// The sequence number the next packet carries.
    pub fn next_seq(&self) -> u16 {
        self.next as u16
    }

    /// Records the packet that carried [`SendHistory::next_seq`]: sent at `now`, `size` bytes.
    pub fn sent(&mut self, now: Instant, size: usize, cluster: u16) {
        let e = &mut self.entries[(self.next % HISTORY as u64) as usize];
        *e = Entry { tag: (self.next + 1) as u32, sent: now, size: size.min(usize::from(u16::MAX)) as u16, cluster: cluster & !ACKED };
        self.next += 1;
    }

    /// The extended sequence number of the packet recorded last.
    pub fn last_seq(&self) -> u64 {
        self.next - 1
    }

    /// Moves the send time of `seq` (recorded, not yet reported) to `now`: a paced packet
    /// leaves after it was built and recorded.
    pub fn set_sent(&mut self, seq: u64, now: Instant) {
        let e = &mut self.entries[(seq % HISTORY as u64) as usize];
        if e.tag == (seq + 1) as u32 && e.cluster & ACKED == 0 {
            e.sent = now;
        }
    }

    /// The extended sequence number of a 16-bit one from feedback: the closest one sent.
    pub fn unwrap(&self, seq: u16) -> u64 {
        let last = self.next - 1;
        last.wrapping_add_signed(i64::from(seq.wrapping_sub(last as u16) as i16))
    }

    /// Resolves feedback for `seq`: the sample, once; `None` for a packet never sent, too old,
    /// or already reported.
    pub fn resolve(&mut self, seq: u64, arrived: Option<Instant>) -> Option<Sample> {
        if seq >= self.next {
            return None;
        }
        let e = &mut self.entries[(seq % HISTORY as u64) as usize];
        if e.tag != (seq + 1) as u32 || e.cluster & ACKED != 0 || self.next - seq > HISTORY as u64 {
            return None;
        }
        e.cluster |= ACKED;
        Some(Sample { seq, sent: e.sent, arrived, size: e.size, cluster: e.cluster & !ACKED })
    }
}
