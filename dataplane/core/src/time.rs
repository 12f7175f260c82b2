//! The core's clock is an argument, never read: callers (the worker, once per batch; the
//! simulation, from its virtual clock) pass an [`Instant`] into every `handle_*` call.

use core::ops::{Add, Sub};
use core::time::Duration;

/// A point in time, as nanoseconds since an arbitrary epoch chosen by the caller (the worker uses
/// CLOCK_MONOTONIC; tests start at zero). Only differences mean anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later (clocks handed in by callers
    /// are trusted to be monotonic, but a saturating answer keeps a bad caller from panicking us).
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}
