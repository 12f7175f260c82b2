//! The output batch: caller-owned, fixed-size slots the core writes forwarded packets into.
//!
//! The I/O layer owns it and reuses it batch after batch, so the core never allocates per packet:
//! each output is written straight into its slot (copy of the plaintext, header rewrite, SRTP
//! protect in place), and the I/O layer sends from the slots (sendmmsg iovecs, GSO runs, UMEM
//! copies) and then [`OutBatch::clear`]s it.

use std::net::SocketAddr;

use crate::ids::LegId;
use crate::stats::LegTraffic;

/// The largest datagram the core accepts or emits (UDP payload). Media paths keep packets under
/// the usual 1500-byte MTU; anything larger is dropped as malformed.
pub const MAX_DATAGRAM: usize = 1500;
/// Bytes per slot: the largest datagram plus the largest SRTP/SRTCP overhead, rounded up.
pub const SLOT_BYTES: usize = 1536;

/// Where one output packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutMeta {
    /// The local port to send from (the destination leg's port).
    pub local_port: u16,
    /// The destination.
    pub dst: SocketAddr,
    /// The destination leg.
    pub leg: LegId,
    /// Length of the packet in its slot.
    pub len: u16,
}

/// A batch of output packets.
#[derive(Debug)]
pub struct OutBatch {
    data: Box<[u8]>,
    meta: Vec<OutMeta>,
    capacity: usize,
}

impl OutBatch {
    /// A batch with room for `capacity` packets (allocated once, here).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { data: vec![0; capacity * SLOT_BYTES].into_boxed_slice(), meta: Vec::with_capacity(capacity), capacity }
    }

    /// How many packets it holds.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// How many packets it has room for in all.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many more packets fit.
    pub fn remaining(&self) -> usize {
        self.capacity - self.meta.len()
    }

    /// Forgets every packet (after the caller sent them).
    pub fn clear(&mut self) {
        self.meta.clear();
    }

    /// The packets, in the order they were written.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&OutMeta, &[u8])> + '_ {
        self.meta.iter().enumerate().map(|(i, m)| (m, &self.data[i * SLOT_BYTES..i * SLOT_BYTES + usize::from(m.len)]))
    }

    /// The i-th packet.
    pub fn get(&self, i: usize) -> Option<(&OutMeta, &[u8])> {
        let m = self.meta.get(i)?;
        Some((m, &self.data[i * SLOT_BYTES..i * SLOT_BYTES + usize::from(m.len)]))
    }

    /// The next free slot, to be filled and then committed with [`OutBatch::commit`].
    pub(crate) fn next_slot(&mut self) -> Option<&mut [u8; SLOT_BYTES]> {
        if self.meta.len() >= self.capacity {
            return None;
        }
        let i = self.meta.len();
        (&mut self.data[i * SLOT_BYTES..(i + 1) * SLOT_BYTES]).try_into().ok()
    }

    /// The first `len` bytes of the next (uncommitted) slot: what was just built in it.
    pub(crate) fn next_bytes(&self, len: usize) -> &[u8] {
        let i = self.meta.len().min(self.capacity - 1);
        &self.data[i * SLOT_BYTES..i * SLOT_BYTES + len.min(SLOT_BYTES)]
    }

    /// Commits the slot returned by the last [`OutBatch::next_slot`], counted as sent on the
    /// destination leg's `traffic` (taking it here is what makes every output counted).
    #[inline]
    pub(crate) fn commit(&mut self, meta: OutMeta, traffic: &mut LegTraffic) {
        debug_assert!(usize::from(meta.len) <= SLOT_BYTES);
        if self.meta.len() < self.capacity {
            traffic.sent(usize::from(meta.len));
            self.meta.push(meta);
        }
    }
}
