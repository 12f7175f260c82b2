//! The whole comparison: every profile, fan-out and backend searched, the core ceilings and the
//! latencies, printed as tables and returned for the JSON output.

use sluice_core::srtp::Profile;

use super::forwarder::parse_backend;
use super::probe::{core_ceiling, kernel_floor, run_one};
use super::search::{Row, search};
use super::{FORWARDER_CORE, GENERATOR_CORE, Load, MAX_LOSS, STREAMS, Topology};

/// Latency at half the maximum rate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Latency {
    /// Backend.
    pub backend: String,
    /// The SRTP profile.
    pub profile: String,
    /// Whether the forwarder used UDP GSO.
    pub gso: bool,
    /// Fan-out.
    pub fanout: u32,
    /// Offered packets/s.
    pub offered_pps: f64,
    /// One-way latency percentiles, microseconds.
    pub p50_us: f64,
    /// p99.
    pub p99_us: f64,
    /// p99.9.
    pub p999_us: f64,
    /// Samples.
    pub samples: u64,
}

impl Latency {
    /// The row of `backend` (with or without `gso`) at `fanout` and `offered_pps`, from the
    /// histogram `h` of one-way latencies in nanoseconds.
    fn from_histogram(backend: &str, profile: Profile, gso: bool, fanout: u32, offered_pps: f64, h: &hdrhistogram::Histogram<u64>) -> Self {
        Self {
            backend: backend.into(),
            profile: format!("{profile:?}"),
            gso,
            fanout,
            offered_pps,
            p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
            p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
            p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
            samples: h.len(),
        }
    }
}

/// The core-alone ceiling of one (profile, fan-out): packets out per CPU-second.
pub type Ceiling = (String, u32, f64);

/// Runs the whole comparison and prints it; returns the rows, the core ceilings and latencies.
pub fn run(backends: &[String], fanouts: &[u32], profiles: &[Profile], seconds: f64, probes: u32) -> anyhow::Result<(Vec<Row>, Vec<Ceiling>, Vec<Latency>)> {
    let parsed: Vec<(&str, bool)> = backends.iter().map(|b| parse_backend(b).map(|(_, gso, _)| (b.as_str(), gso))).collect::<Result<_, _>>()?;
    let topo = Topology::new();
    let mut rows = Vec::new();
    let mut ceilings = Vec::new();
    println!(
        "forwarding benchmark: 1200-byte RTP, 1 publisher ({STREAMS} streams) → N subscribers, one pinned forwarder worker and its kernel receive on core {FORWARDER_CORE}; generator and the sink (XDP count+drop) on core {GENERATOR_CORE}; veth"
    );
    println!("flood: the generator as fast as it goes; sustained: the highest paced input rate with at most {:.1}% of the copies lost", MAX_LOSS * 100.0);
    println!(
        "{:<7} {:<16} {:>3} {:>4} | {:>10} | {:>9} {:>10} {:>7} {:>5} {:>10} {:>7} {:>7} {:>6} {:>6}",
        "profile", "backend", "gso", "fan", "flood out", "sust. in", "sust. out", "loss%", "core", "out/core-s", "worker", "rxbatch", "tx/sys", "gen"
    );
    for &profile in profiles {
        for &fanout in fanouts {
            let ceiling = core_ceiling(profile, fanout);
            println!("{:<7} {:<16} {:>3} {:>4} | {:>10} | core alone (no I/O), out per CPU-second: {ceiling:.0}", short(profile), "core", "-", fanout, "-");
            ceilings.push((format!("{profile:?}"), fanout, ceiling));
            for &(b, gso) in &parsed {
                let row = search(&topo, b, gso, profile, Load::Fanout(fanout), seconds, probes)?;
                let f = &row.flood;
                match &row.sustained {
                    Some(s) => println!(
                        "{:<7} {:<16} {:>3} {:>4} | {:>10.0} | {:>9.0} {:>10.0} {:>7.3} {:>4.0}% {:>10.0} {:>6.0}% {:>7.1} {:>6.1} {:>5.0}%{}",
                        short(profile),
                        b,
                        if gso { "on" } else { "off" },
                        fanout,
                        f.out_pps,
                        s.offered_pps,
                        s.out_pps,
                        s.loss * 100.0,
                        s.core_busy * 100.0,
                        s.out_per_core_s,
                        s.cpu * 100.0,
                        s.mean_rx_batch,
                        s.tx_per_syscall,
                        s.generator_cpu * 100.0,
                        if row.generator_limited { "  (generator-limited)" } else { "" }
                    ),
                    None => println!(
                        "{:<7} {:<16} {:>3} {:>4} | {:>10.0} | no paced rate sustained",
                        short(profile),
                        b,
                        if gso { "on" } else { "off" },
                        fanout,
                        f.out_pps
                    ),
                }
                rows.push(row);
            }
        }
    }
    let mut latencies = Vec::new();
    println!("\none-way latency (generator send → forwarder → the sink's kernel receive timestamp, veth) at 50% of each backend's sustained rate, fan-out 4");
    println!("{:<8} {:<16} {:>4} {:>12} {:>10} {:>10} {:>10} {:>9}", "profile", "backend", "gso", "offered/s", "p50 µs", "p99 µs", "p99.9 µs", "samples");
    for &profile in profiles {
        // The floor at the input rate of the first latency run (or 20k packets/s).
        let rate = rows
            .iter()
            .filter(|r| r.flood.fanout == 4 && r.flood.profile == format!("{profile:?}"))
            .find_map(|r| r.sustained.as_ref())
            .map_or(20_000.0, |s| s.offered_pps / 2.0);
        let h = kernel_floor(&topo, profile, seconds, rate)?;
        let l = Latency::from_histogram("kernel", profile, false, 1, rate, &h);
        println!(
            "{:<8} {:<16} {:>4} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>9}   (the kernel's IP forwarding, fan-out 1: the topology's floor)",
            short(profile),
            l.backend,
            "-",
            l.offered_pps,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.samples
        );
        latencies.push(l);
        // The same floor at fan-out 4's output rate: the sink (on the generator's core) then
        // receives as many packets as behind the forwarder, so what the row above does not
        // include (the sink's own load) is in both.
        let h = kernel_floor(&topo, profile, seconds, rate * 4.0)?;
        let l4 = Latency::from_histogram("kernel-x4", profile, false, 1, rate * 4.0, &h);
        println!(
            "{:<8} {:<16} {:>4} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>9}   (the same at 4x the rate: the sink as loaded as behind the forwarder at fan-out 4)",
            short(profile),
            l4.backend,
            "-",
            l4.offered_pps,
            l4.p50_us,
            l4.p99_us,
            l4.p999_us,
            l4.samples
        );
        latencies.push(l4);
        for &(b, gso) in &parsed {
            let Some(max) =
                rows.iter().find(|r| r.flood.backend == b && r.flood.gso == gso && r.flood.fanout == 4 && r.flood.profile == format!("{profile:?}"))
            else {
                continue;
            };
            let Some(sust) = &max.sustained else { continue };
            let rate = sust.offered_pps / 2.0;
            let (_, h) = run_one(&topo, b, gso, profile, Load::Fanout(4), seconds, rate, true)?;
            let l = Latency::from_histogram(b, profile, gso, 4, rate, &h);
            println!(
                "{:<8} {:<16} {:>4} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>9}",
                short(profile),
                l.backend,
                if gso { "on" } else { "off" },
                l.offered_pps,
                l.p50_us,
                l.p99_us,
                l.p999_us,
                l.samples
            );
            latencies.push(l);
        }
    }
    Ok((rows, ceilings, latencies))
}

pub(super) fn short(p: Profile) -> &'static str {
    match p {
        Profile::AeadAes128Gcm => "gcm128",
        Profile::AeadAes256Gcm => "gcm256",
        Profile::AesCm128HmacSha1_80 => "cm80",
        Profile::AesCm128HmacSha1_32 => "cm32",
    }
}
