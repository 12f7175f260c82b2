//! Grouping one send batch into UDP GSO runs.
//!
//! The worker emits packets in the order it forwards them: for each received packet, one copy per
//! subscriber, so a video frame for subscriber A is *interleaved* with the same frame for B, C, ...
//! Grouping only adjacent packets would find nothing; instead packets are grouped per flow
//! `(local_port, dst)` across the whole batch:
//!
//! - a packet joins the open group of its flow if it has the group's segment size, or is shorter
//!   (then it is the group's last: the kernel only allows the final segment to be short);
//! - a group holds at most [`MAX_GSO_SEGMENTS`] packets and [`MAX_GSO_BYTES`] bytes;
//! - otherwise (longer packet, full or closed group, GSO off, empty payload) it starts a new group.
//!
//! Within a group packets keep their batch order, and a flow's groups are emitted in the order
//! they were opened, so every subscriber sees its packets in the order the worker produced them.
//! Across flows there is no order to keep. [`TxPlan::order`] lists groups sorted by local port
//! (ties by opening order), so `sendmmsg` can take each port's groups in one call.
//!
//! Pure bookkeeping: no pointers, no syscalls; reused batch after batch without allocating once
//! its vectors have grown.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS};

/// One send: one datagram, or a GSO run of datagrams of one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// Local port it leaves from.
    pub local_port: u16,
    /// Destination.
    pub dst: SocketAddr,
    /// Size of every segment but possibly the last (the first packet's size).
    pub segment: usize,
    /// How many datagrams.
    pub count: usize,
    /// Total payload bytes.
    pub bytes: usize,
    /// Where its packets start in [`TxPlan::slots`] (valid after [`TxPlan::finish`]).
    pub start: usize,
    open: bool,
}

impl Group {
    /// Whether it goes out as a GSO send.
    pub fn is_gso(&self) -> bool {
        self.count > 1
    }
}

/// A send batch being grouped.
#[derive(Debug, Default)]
pub struct TxPlan {
    flows: HashMap<(u16, SocketAddr), u32, foldhash::fast::FixedState>,
    groups: Vec<Group>,
    pkt_group: Vec<u32>,
    slots: Vec<u32>,
    cursor: Vec<usize>,
    order: Vec<u32>,
}

impl TxPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the previous batch (keeps the allocations).
    pub fn clear(&mut self) {
        self.flows.clear();
        self.groups.clear();
        self.pkt_group.clear();
        self.slots.clear();
        self.order.clear();
    }

    /// How many packets were pushed.
    pub fn len(&self) -> usize {
        self.pkt_group.len()
    }

    /// Whether no packet was pushed.
    pub fn is_empty(&self) -> bool {
        self.pkt_group.is_empty()
    }

    /// Adds the next packet of the batch (packet index = number of earlier pushes).
    pub fn push(&mut self, local_port: u16, dst: SocketAddr, len: usize, gso: bool) {
        let groupable = gso && len > 0;
        if let Some(&g) = self.flows.get(&(local_port, dst)) {
            let group = &mut self.groups[g as usize];
            if groupable && group.open && len <= group.segment && group.count < MAX_GSO_SEGMENTS && group.bytes + len <= MAX_GSO_BYTES {
                group.count += 1;
                group.bytes += len;
                if len < group.segment {
                    group.open = false;
                }
                self.pkt_group.push(g);
                return;
            }
            // Whatever this packet is, nothing after it may join an earlier group of its flow.
            group.open = false;
        }
        let g = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
        self.groups.push(Group { local_port, dst, segment: len, count: 1, bytes: len, start: 0, open: groupable });
        if groupable {
            self.flows.insert((local_port, dst), g);
        }
        self.pkt_group.push(g);
    }

    /// Lays the packets out group by group ([`TxPlan::slots`]) and sorts [`TxPlan::order`].
    pub fn finish(&mut self) {
        let mut start = 0;
        self.cursor.clear();
        for g in &mut self.groups {
            g.start = start;
            self.cursor.push(start);
            start += g.count;
        }
        self.slots.clear();
        self.slots.resize(self.pkt_group.len(), 0);
        for (i, &g) in self.pkt_group.iter().enumerate() {
            let c = &mut self.cursor[g as usize];
            self.slots[*c] = u32::try_from(i).unwrap_or(u32::MAX);
            *c += 1;
        }
        self.order.clear();
        self.order.extend(0..u32::try_from(self.groups.len()).unwrap_or(u32::MAX));
        let groups = &self.groups;
        self.order.sort_unstable_by_key(|&g| (groups[g as usize].local_port, g));
    }

    /// The groups, in the order they were opened.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Packet indices laid out group after group: group `g`'s packets are
    /// `slots()[g.start..g.start + g.count]`, in batch order.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// Group indices sorted by local port, then opening order.
    pub fn order(&self) -> &[u32] {
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], p))
    }

    fn plan(pkts: &[(u16, u16, usize)], gso: bool) -> TxPlan {
        let mut p = TxPlan::new();
        for &(port, dst, len) in pkts {
            p.push(port, addr(dst), len, gso);
        }
        p.finish();
        p
    }

    fn members(p: &TxPlan, g: &Group) -> Vec<u32> {
        p.slots()[g.start..g.start + g.count].to_vec()
    }

    #[test]
    fn interleaved_fanout_groups_per_subscriber_in_order() {
        // Three frame packets, each fanned out to subscribers A (1) and B (2), the last shorter.
        let p = plan(&[(7, 1, 1000), (8, 2, 1000), (7, 1, 1000), (8, 2, 1000), (7, 1, 400), (8, 2, 400)], true);
        assert_eq!(p.groups().len(), 2);
        let a = p.groups()[0];
        assert_eq!((a.local_port, a.segment, a.count, a.bytes), (7, 1000, 3, 2400));
        assert_eq!(members(&p, &a), [0, 2, 4]);
        assert_eq!(members(&p, &p.groups()[1]), [1, 3, 5]);
    }

    #[test]
    fn short_packet_closes_group_and_longer_opens_new() {
        let p = plan(&[(7, 1, 1000), (7, 1, 500), (7, 1, 500), (7, 1, 1200), (7, 1, 1200)], true);
        let g: Vec<_> = p.groups().iter().map(|g| (g.segment, g.count)).collect();
        assert_eq!(g, [(1000, 2), (500, 1), (1200, 2)]);
        assert_eq!(p.slots(), [0, 1, 2, 3, 4], "one flow: batch order kept");
    }

    #[test]
    fn caps_segments_and_bytes() {
        let pkts: Vec<_> = (0..150).map(|_| (7, 1, 100)).collect();
        let p = plan(&pkts, true);
        let counts: Vec<_> = p.groups().iter().map(|g| g.count).collect();
        assert_eq!(counts, [64, 64, 22]);
        let pkts: Vec<_> = (0..64).map(|_| (7, 1, 1500)).collect();
        let p = plan(&pkts, true);
        assert!(p.groups().iter().all(|g| g.bytes <= MAX_GSO_BYTES));
        assert_eq!(p.groups()[0].count, MAX_GSO_BYTES / 1500);
    }

    #[test]
    fn gso_off_or_empty_payloads_stay_single() {
        let p = plan(&[(7, 1, 100), (7, 1, 100)], false);
        assert_eq!(p.groups().len(), 2);
        let p = plan(&[(7, 1, 0), (7, 1, 0)], true);
        assert_eq!(p.groups().len(), 2);
    }

    #[test]
    fn an_ungroupable_packet_closes_its_flows_run() {
        // The middle packet is too long for GSO (the caller passes gso=false for it): the packet
        // after it must not jump ahead by joining the first run.
        let mut p = TxPlan::new();
        p.push(7, addr(1), 100, true);
        p.push(7, addr(1), 100, true);
        p.push(7, addr(1), 1500, false);
        p.push(7, addr(1), 100, true);
        p.push(7, addr(1), 0, true);
        p.push(7, addr(1), 100, true);
        p.finish();
        let g: Vec<_> = p.groups().iter().map(|g| (members(&p, g), g.is_gso())).collect();
        assert_eq!(g, [(vec![0, 1], true), (vec![2], false), (vec![3], false), (vec![4], false), (vec![5], false)]);
        let emitted: Vec<u32> = p.order().iter().flat_map(|&g| members(&p, &p.groups()[g as usize])).collect();
        assert_eq!(emitted, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn order_sorts_by_port_keeping_flow_order() {
        let p = plan(&[(9, 1, 100), (7, 2, 100), (9, 1, 50), (9, 1, 100), (7, 2, 100)], true);
        let order: Vec<_> = p.order().iter().map(|&g| (p.groups()[g as usize].local_port, members(&p, &p.groups()[g as usize]))).collect();
        assert_eq!(order, [(7, vec![1, 4]), (9, vec![0, 2]), (9, vec![3])]);
    }
}
