//! The search for the highest input rate a configuration sustains.

use sluice_core::srtp::Profile;

use super::probe::{Sample, run_one};
use super::{Load, MAX_LOSS, Topology};

/// One configuration: the flood probe (as fast as the generator goes; the forwarder drops what it
/// cannot take) and the highest paced rate it carried with at most `MAX_LOSS` of the copies
/// missing (a search of up to `probes` paced runs starting from the flood's forwarded rate).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// The flood probe.
    pub flood: Sample,
    /// The highest sustained paced probe, if any passed.
    pub sustained: Option<Sample>,
    /// Whether the generator could not offer the rate the search asked for (then the figure is
    /// the generator's limit, not the forwarder's).
    pub generator_limited: bool,
}

pub(super) fn search(topo: &Topology, backend: &str, gso: bool, profile: Profile, load: Load, seconds: f64, probes: u32) -> anyhow::Result<Row> {
    let (flood, _) = run_one(topo, backend, gso, profile, load, seconds, 0.0, false)?;
    let start = flood.out_pps / f64::from(load.copies());
    let (sustained, generator_limited) = search_rate(start, probes, |rate| {
        let (s, _) = run_one(topo, backend, gso, profile, load, seconds, rate, false)?;
        Ok((s.loss <= MAX_LOSS, s.offered_pps >= 0.97 * rate, s))
    })?;
    Ok(Row { flood, sustained, generator_limited })
}

/// Searches for the highest paced rate that `probe(rate)` passes, from `start` (grown by 25%
/// until a probe fails, then bisected) in at most `probes` probes; `probe` says whether the
/// rate was carried and whether the generator reached it. Returns the highest passing probe's
/// result, and whether the search stopped because the generator could not offer the rate.
pub(crate) fn search_rate<T>(start: f64, probes: u32, mut probe: impl FnMut(f64) -> anyhow::Result<(bool, bool, T)>) -> anyhow::Result<(Option<T>, bool)> {
    let (mut lo, mut hi): (Option<(f64, T)>, Option<f64>) = (None, None);
    let mut rate = start.max(1000.0);
    let mut generator_limited = false;
    for _ in 0..probes {
        let (carried, reached, result) = probe(rate)?;
        if carried && reached {
            lo = Some((rate, result));
        } else {
            generator_limited = !reached && carried;
            hi = Some(rate);
            if generator_limited {
                break;
            }
        }
        let low = lo.as_ref().map_or(0.0, |(r, _)| *r);
        rate = match hi {
            Some(h) if low > 0.0 => (low + h) / 2.0,
            Some(h) => h * 0.75,
            None => rate * 1.25,
        };
        if hi.is_some_and(|h| (h - low) / h < 0.04) {
            break;
        }
    }
    Ok((lo.map(|(_, t)| t), generator_limited))
}
