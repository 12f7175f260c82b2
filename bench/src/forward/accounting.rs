//! What a probe reads before and after its window: CPU time (of a thread, a process, a core) and
//! the counters the daemon under test publishes on its metrics page.

use anyhow::Context as _;

use super::{METRICS_PORT, Topology};

/// The daemon's Prometheus text (its metrics listen on loopback inside the forwarder's namespace).
pub(super) fn metrics_text(topo: &Topology) -> String {
    use std::io::{Read as _, Write as _};
    topo.forwarder
        .enter(|| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")?;
            let mut body = String::new();
            c.read_to_string(&mut body)?;
            Ok::<_, std::io::Error>(body)
        })
        .unwrap_or_default()
}

/// One I/O counter of the daemon under test, summed over workers.
pub(super) fn io_counter(body: &str, counter: &str) -> f64 {
    let key = format!("counter=\"{counter}\"}}");
    body.lines().filter(|l| l.starts_with("sluice_io_total") && l.contains(&key)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// A Prometheus counter summed over all label sets.
pub(crate) fn counter(body: &str, name: &str) -> f64 {
    body.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

pub(super) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid local we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// utime + stime of a process, from /proc (clock ticks → ns).
pub(crate) fn process_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// Busy jiffies of one CPU (everything but idle and iowait), from /proc/stat.
pub(super) fn core_busy_ticks(core: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let tag = format!("cpu{core} ");
    stat.lines()
        .find(|l| l.starts_with(&tag))
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            f.iter().take(8).sum::<u64>() - f.get(3).copied().unwrap_or(0) - f.get(4).copied().unwrap_or(0)
        })
        .unwrap_or(0)
}
