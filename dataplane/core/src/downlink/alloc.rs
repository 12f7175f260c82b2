//! The bandwidth allocator of one subscriber leg: spends the leg's estimate on its
//! subscriptions by priority, choosing each one's simulcast layer (libwebrtc's
//! `BitrateAllocator` and mediasoup's consumer priorities are the models).
//!
//! ```text
//!   the budget: 85 % of the leg's estimate (forward::downlink)
//!   audio: always (its rate is taken off the budget first)
//!   pass 1, by priority: every video subscription its lowest flowing layer
//!   pass 2, by priority: each one up to the highest flowing layer <= its ceiling that fits;
//!           going above the layer it receives now needs 5 % headroom (no flapping)
//! ```
//! A layer that is not flowing (its publisher's encoder dropped it) is never chosen. The
//! signaling's target layer is the ceiling.

/// Headroom needed to go above the layer a subscription receives now.
pub const UP_HEADROOM: f64 = 1.05;
/// The most layers a track has.
pub const MAX_LAYERS: usize = 8;

/// One subscription, as the allocator sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    /// Higher goes first (screen share above prominent above the rest).
    pub priority: u8,
    /// Audio: not switchable, its rate is reserved.
    pub audio: bool,
    /// The layer it receives now.
    pub current: Option<u8>,
    /// The highest layer it may get (the signaling's target).
    pub ceiling: u8,
    /// Measured rate of each layer, bit/s; 0 = not flowing.
    pub rates: [u64; MAX_LAYERS],
}

impl Demand {
    fn flowing(&self, max: u8) -> impl DoubleEndedIterator<Item = u8> + '_ {
        (0..=max.min(MAX_LAYERS as u8 - 1)).filter(|&l| self.rates[usize::from(l)] > 0)
    }

    /// The best flowing layer up to its ceiling.
    pub fn best(&self) -> Option<u8> {
        self.flowing(self.ceiling).next_back()
    }

    /// What it would take at its ceiling (the best flowing layer up to it).
    pub fn wanted(&self) -> u64 {
        if self.audio {
            return self.rates[0];
        }
        self.best().map_or(0, |l| self.rates[usize::from(l)])
    }
}

/// Chooses a layer for each subscription in `demands` within `budget` bit/s into `out` (same
/// order; `None` for audio and for video with no flowing layer). Returns the bit/s allocated.
pub fn allocate(budget: u64, demands: &[Demand], out: &mut [Option<u8>]) -> u64 {
    let mut left = budget as f64;
    for (d, o) in demands.iter().zip(out.iter_mut()) {
        *o = None;
        if d.audio {
            left -= d.rates[0] as f64;
        }
    }
    let mut order: [usize; 64] = [0; 64];
    let n = demands.len().min(order.len());
    for (i, o) in order.iter_mut().enumerate().take(n) {
        *o = i;
    }
    order[..n].sort_by_key(|&i| (core::cmp::Reverse(demands[i].priority), i));
    // Pass 1: the lowest flowing layer for everyone (a frozen picture is worse than a small one).
    for &i in &order[..n] {
        let d = &demands[i];
        if d.audio {
            continue;
        }
        if let Some(l) = d.flowing(d.ceiling).next() {
            out[i] = Some(l);
            left -= d.rates[usize::from(l)] as f64;
        }
    }
    // Pass 2: upgrades by priority.
    for &i in &order[..n] {
        let d = &demands[i];
        let Some(base) = out[i] else { continue };
        let base_rate = d.rates[usize::from(base)] as f64;
        let best = d.flowing(d.ceiling).rev().find(|&l| {
            let need = d.rates[usize::from(l)] as f64 - base_rate;
            let headroom = if d.current.is_some_and(|c| l > c) { UP_HEADROOM } else { 1.0 };
            l == base || need * headroom <= left
        });
        if let Some(l) = best {
            left -= d.rates[usize::from(l)] as f64 - base_rate;
            out[i] = Some(l);
        }
    }
    (budget as f64 - left).max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(priority: u8, current: u8, ceiling: u8) -> Demand {
        let mut rates = [0; MAX_LAYERS];
        rates[..3].copy_from_slice(&[150_000, 500_000, 1_500_000]);
        Demand { priority, audio: false, current: Some(current), ceiling, rates }
    }

    fn run(budget: u64, d: &[Demand]) -> Vec<Option<u8>> {
        let mut out = vec![None; d.len()];
        allocate(budget, d, &mut out);
        out
    }

    #[test]
    fn the_estimate_is_spent_by_priority_within_ceilings() {
        let audio = Demand { audio: true, rates: [40_000, 0, 0, 0, 0, 0, 0, 0], ..Demand::default() };
        // Plenty: everyone at the ceiling.
        assert_eq!(run(10_000_000, &[audio, video(0, 2, 2), video(0, 2, 1)]), vec![None, Some(2), Some(1)]);
        // 1.5 Mbit/s with a screen share (priority 2) and two cameras: the share keeps its top.
        assert_eq!(run(1_900_000, &[video(0, 0, 2), video(2, 2, 2), video(0, 0, 2)]), vec![Some(0), Some(2), Some(0)]);
        // Too little for anyone's base: everybody still gets the lowest layer.
        assert_eq!(run(100_000, &[video(0, 2, 2), video(0, 2, 2)]), vec![Some(0), Some(0)]);
    }

    #[test]
    fn going_up_needs_headroom_and_going_down_does_not() {
        // 1.5 M needs 1.35 M over the base: with 5 % headroom 1.4175 M + 0.15 M, so 1.55 M keeps m...
        assert_eq!(run(1_550_000, &[video(0, 1, 2)]), vec![Some(1)]);
        assert_eq!(run(1_570_000, &[video(0, 1, 2)]), vec![Some(2)]);
        // ... but a subscription already on h keeps it at the same budget.
        assert_eq!(run(1_550_000, &[video(0, 2, 2)]), vec![Some(2)]);
        // A layer that stopped flowing is never chosen: the best that flows instead.
        let mut d = video(0, 2, 2);
        d.rates[2] = 0;
        assert_eq!(run(10_000_000, &[d]), vec![Some(1)]);
    }
}
