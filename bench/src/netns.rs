//! Network namespaces and veth pairs a test or benchmark creates for itself, named
//! `sx5<tag><pid>` (unique per process) and deleted in `Drop`, even when the test panics. A daemon runs inside one with
//! the prefix [`NetNs::nsenter_args`] gives (`nsenter --net`: only the network namespace changes, so `/sys/fs/bpf`
//! and the control socket's path stay shared with the test).

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::process::Command;

/// Runs `cmd args…`, panicking with its stderr on failure; its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Moves the calling thread into the namespace `name` (network namespaces are per thread:
/// sockets it creates afterwards live there).
pub fn join_thread(name: &str) -> std::io::Result<()> {
    let file = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: `file` is an open netns descriptor for the duration of the call; setns only
    // switches the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A named network namespace with loopback up; deleted (with its interfaces) on drop.
#[derive(Debug)]
pub struct NetNs {
    /// Its name (`/run/netns/<name>`).
    pub name: String,
}

impl NetNs {
    /// Creates `sx5<tag><pid>`.
    pub fn new(tag: &str) -> Self {
        let name = format!("sx5{tag}{}", std::process::id());
        // A leftover from a killed run whose PID was recycled.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <name> args…`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `cmd args…` inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.name.as_str(), cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread inside the namespace: sockets it creates stay in the namespace.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("open netns file");
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: `file` is an open netns descriptor for the whole call; setns switches only
                // this short-lived scoped thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {}: {}", self.name, std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Moves the calling thread into the namespace for good (a thread that keeps running there,
    /// such as a pinned load generator).
    pub fn enter_current_thread(&self) -> std::io::Result<()> {
        join_thread(&self.name)
    }

    /// The command line prefix that runs a program in the namespace: `nsenter --net=…` (which
    /// execs the program, so the child's PID is the program's).
    pub fn nsenter_args(&self) -> [String; 2] {
        ["/usr/bin/nsenter".into(), format!("--net=/run/netns/{}", self.name)]
    }

    /// Runs the receive processing of `dev` (an interface in this namespace) in its own NAPI
    /// kernel thread pinned to `core`, instead of in the softirq of whichever CPU transmitted
    /// into the veth. On veth the receiving end's XDP program and kernel stack otherwise run on
    /// the *sender's* CPU; a benchmark pins each end's receive to the core of the party it
    /// belongs to, as a NIC's RX queue IRQ would be, so no party is charged for another's work.
    /// (GRO is turned on: veth has a NAPI instance only with GRO or an XDP program; and UDP GRO
    /// forwarding, without which veth hands a socket's UDP datagrams straight to the sender's
    /// backlog, bypassing NAPI.)
    pub fn napi_thread_on(&self, dev: &str, core: usize) -> std::io::Result<()> {
        self.exec("ethtool", &["-K", dev, "gro", "on", "rx-udp-gro-forwarding", "on"]);
        self.exec("sh", &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")]);
        for pid in self.napi_threads(dev)? {
            // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it, and
            // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
            let rc = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_ZERO(&mut set);
                libc::CPU_SET(core, &mut set);
                libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The PIDs of `dev`'s NAPI kthreads (named `napi/<dev>-<id>`, truncated to the 15 bytes of a
    /// task name); an error when there is none.
    pub fn napi_threads(&self, dev: &str) -> std::io::Result<Vec<i32>> {
        let prefix = format!("napi/{dev}-");
        let prefix = &prefix[..prefix.len().min(15)];
        let pids: Vec<i32> = std::fs::read_dir("/proc")?
            .flatten()
            .filter_map(|entry| {
                let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
                let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
                comm.trim_end().starts_with(prefix).then_some(pid)
            })
            .collect();
        if pids.is_empty() {
            return Err(std::io::Error::other(format!("no NAPI thread for {dev} in {}", self.name)));
        }
        Ok(pids)
    }

    /// Gives the NAPI threads of `dev` (see [`NetNs::napi_thread_on`]) the real-time policy
    /// `SCHED_FIFO` at `priority`: the kernel receive then preempts whatever else runs on its core
    /// (a worker in the middle of a batch) instead of waiting for its time slice, as an operator
    /// sets with `chrt -f -p <priority> <pid>` for a NIC queue's thread (or gets with interrupts).
    pub fn napi_threads_fifo(&self, dev: &str, priority: i32) -> std::io::Result<()> {
        for pid in self.napi_threads(dev)? {
            let param = libc::sched_param { sched_priority: priority };
            // SAFETY: `param` is a valid sched_param for the call to read.
            if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &raw const param) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// A plain HTTP GET of `path` on `addr` from inside the namespace (the daemon's `/metrics`).
    pub fn http_get(&self, addr: &str, path: &str) -> String {
        self.enter(|| {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
            let mut body = String::new();
            s.read_to_string(&mut body).expect("response");
            body
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A veth pair, end `a` in one namespace and `b` in another, with fixed MACs, addresses, static
/// neighbour entries for each other, up, and TX checksum offload off (a socket sender's partial
/// checksum would otherwise reach XDP unfinished). Deleted with its namespaces.
#[derive(Debug)]
pub struct Veth {
    /// Name of end `a`.
    pub a: String,
    /// Name of end `b`.
    pub b: String,
    /// MAC of end `a`.
    pub mac_a: [u8; 6],
    /// MAC of end `b`.
    pub mac_b: [u8; 6],
}

impl Veth {
    /// Creates `sx5<tag>a<pid>` in `ns_a` and `sx5<tag>b<pid>` in `ns_b` (`tag`: at most 2
    /// characters, so the names fit IFNAMSIZ) with the given CIDR addresses.
    pub fn new(tag: &str, ns_a: &NetNs, addrs_a: &[&str], ns_b: &NetNs, addrs_b: &[&str]) -> Self {
        let pid = std::process::id();
        let (a, b) = (format!("sx5{tag}a{pid}"), format!("sx5{tag}b{pid}"));
        let salt = tag.bytes().fold(0u8, |h, c| h.wrapping_mul(31).wrapping_add(c));
        let mac_a = [0x02, 0x55, salt, (pid >> 8) as u8, pid as u8, 0x0a];
        let mac_b = [0x02, 0x55, salt, (pid >> 8) as u8, pid as u8, 0x0b];
        run(
            "ip",
            &[
                "link",
                "add",
                &a,
                "netns",
                &ns_a.name,
                "address",
                &mac_str(mac_a),
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                &ns_b.name,
                "address",
                &mac_str(mac_b),
            ],
        );
        for (ns, dev, addrs) in [(ns_a, &a, addrs_a), (ns_b, &b, addrs_b)] {
            for addr in addrs {
                ns.ip(&["addr", "add", addr, "dev", dev]);
            }
            ns.ip(&["link", "set", dev, "up"]);
            ns.exec("ethtool", &["-K", dev, "tx", "off"]);
        }
        let bare = |s: &&str| s.split('/').next().unwrap_or_default().to_owned();
        for (ns, dev, mac, addrs) in [(ns_a, &a, mac_b, addrs_b), (ns_b, &b, mac_a, addrs_a)] {
            for addr in addrs.iter().map(bare) {
                ns.ip(&["neigh", "replace", &addr, "lladdr", &mac_str(mac), "dev", dev, "nud", "permanent"]);
            }
        }
        Self { a, b, mac_a, mac_b }
    }
}

/// Removes an XDP pin directory (`/sys/fs/bpf/sluice/<instance>`) on drop, even when the test
/// panics: removing the link pin detaches the program (and the namespaces' deletion removes the
/// interfaces anyway).
#[derive(Debug)]
pub struct PinGuard(pub std::path::PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A `sluice-dataplane` this process started inside a namespace, stopped by PID (SIGTERM, then
/// reaped) when dropped, its control socket removed.
#[derive(Debug)]
pub struct NsDataplane {
    /// The process.
    pub child: std::process::Child,
    /// Its control socket.
    pub socket: std::path::PathBuf,
}

impl NsDataplane {
    /// Starts the `sluice-dataplane` next to this executable in `ns` with config `cfg` (whose
    /// control socket is `socket`), its log in `log`; waits up to 15 s for the socket.
    pub fn start(ns: &NetNs, cfg: &std::path::Path, socket: &std::path::Path, log: &std::path::Path) -> anyhow::Result<Self> {
        Self::start_on(ns, None, cfg, socket, log)
    }

    /// [`NsDataplane::start`], every thread of the daemon confined to `cores` (a `taskset -c`
    /// list) when given.
    pub fn start_on(ns: &NetNs, cores: Option<&str>, cfg: &std::path::Path, socket: &std::path::Path, log: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let exe = std::env::current_exe()?.with_file_name("sluice-dataplane");
        let [nsenter, net] = ns.nsenter_args();
        let mut cmd = match cores {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", c]).arg(nsenter);
                t
            }
            None => Command::new(nsenter),
        };
        let child = cmd
            .arg(net)
            .arg(&exe)
            .args(["--config", cfg.to_str().unwrap_or_default()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let d = Self { child, socket: socket.to_owned() };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !socket.exists() {
            if std::time::Instant::now() > end {
                anyhow::bail!("{} did not open its control socket (log in {})", exe.display(), log.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(d)
    }
}

impl Drop for NsDataplane {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of the child this process spawned and has not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
