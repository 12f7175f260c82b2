//! The subscribers' end: copies counted and dropped by XDP, or received in userspace for one-way
//! latency against the kernel's receive timestamps.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant as WallInstant;

use hdrhistogram::Histogram;
use sluice_core::srtp::{Profile, RtpRecvState, SrtpKeys};
use sluice_core::table::KeyMaterial;
use sluice_dataplane::xdp::XdpStage;

use super::{SINK_IP, SINK_PORT, Topology};

/// CLOCK_REALTIME in nanoseconds (the clock of the kernel's receive timestamps).
fn realtime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid local we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `SCM_TIMESTAMPNS` of a received message, in CLOCK_REALTIME nanoseconds.
fn kernel_stamp(hdr: &libc::msghdr) -> Option<u64> {
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // `msg_controllen`; the timestamp is read unaligned from inside that buffer.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// What the subscribers receive: counted by an XDP program on the sink's interface (it drops
/// every copy after counting it, so the sink is never the bottleneck), or, for latency, received
/// and decrypted by a userspace thread that reads each packet's send time.
pub(super) enum Sink {
    Xdp(XdpStage),
    Userspace { stop: Arc<AtomicBool>, received: Arc<AtomicU64>, thread: Option<std::thread::JoinHandle<Histogram<u64>>> },
}

impl Sink {
    /// Counts every datagram to `SINK_PORT..=SINK_PORT + ports + 1` (subscriber `l` of a fan-out
    /// at `SINK_PORT + l`, call i's subscriber at `SINK_PORT + 2 + i`).
    pub(super) fn xdp(topo: &Topology, ports: u32) -> anyhow::Result<Self> {
        let iface = topo.sink_if.clone();
        let stage = topo.sink.enter(move || {
            let mut stage = XdpStage::load_unpinned()?;
            stage.attach(&iface)?;
            // No leg is known: every datagram to the subscribers' ports is counted and dropped.
            stage.set_port_range(SINK_PORT..=SINK_PORT + ports as u16 + 1)?;
            Ok::<_, anyhow::Error>(stage)
        })?;
        Ok(Self::Xdp(stage))
    }

    /// Receives in userspace and records one-way latency: the send time the generator wrote
    /// into the payload against the kernel's receive timestamp of the datagram (`SO_TIMESTAMPNS`,
    /// taken in the sink's NAPI thread), so the sink thread's own wake-ups are not measured.
    /// `subscribers`: (port, key seed) of each receiving subscriber.
    pub(super) fn userspace(topo: &Topology, profile: Profile, subscribers: Vec<(u16, u8)>, epoch: WallInstant, core: usize) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let sockets: Vec<(u16, UdpSocket)> = topo.sink.enter(|| {
            subscribers
                .iter()
                .map(|&(port, _)| {
                    let sock = UdpSocket::bind(SocketAddr::from((SINK_IP, port)))?;
                    sock.set_nonblocking(true)?;
                    let one: libc::c_int = 1;
                    let size: libc::c_int = 4 << 20;
                    for (opt, v) in [(libc::SO_TIMESTAMPNS, &one), (libc::SO_RCVBUF, &size)] {
                        // SAFETY: setsockopt reads one c_int from the valid reference passed.
                        let rc = unsafe {
                            libc::setsockopt(
                                sock.as_raw_fd(),
                                libc::SOL_SOCKET,
                                opt,
                                (v as *const libc::c_int).cast(),
                                size_of::<libc::c_int>() as libc::socklen_t,
                            )
                        };
                        if rc != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok((port, sock))
                })
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        let keys: Vec<SrtpKeys> = subscribers
            .iter()
            .map(|&(_, seed)| {
                let m = KeyMaterial::seeded(profile, u32::from(seed));
                SrtpKeys::new(profile, &m.key, &m.salt).expect("valid")
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|i| i.id == core)) {
                core_affinity::set_for_current(id);
            }
            let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
            let mut states: std::collections::HashMap<(usize, [u8; 4]), RtpRecvState> = std::collections::HashMap::new();
            // The generator's clock is `epoch`; the kernel stamps CLOCK_REALTIME.
            let realtime_at_epoch = realtime_ns() as i128 - epoch.elapsed().as_nanos() as i128;
            const BATCH: usize = 64;
            let mut bufs = vec![[0u8; 2048]; BATCH];
            let mut cmsgs = vec![[0u64; 8]; BATCH];
            let mut pfds: Vec<libc::pollfd> = sockets.iter().map(|(_, s)| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
            while !s.load(Ordering::Relaxed) {
                // SAFETY: `pfds` is a valid array of pollfd of the length passed.
                let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
                if n <= 0 {
                    continue;
                }
                for (k, pfd) in pfds.iter().enumerate() {
                    if pfd.revents & libc::POLLIN == 0 {
                        continue;
                    }
                    loop {
                        let mut iovs: Vec<libc::iovec> = bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
                        let mut msgs: Vec<libc::mmsghdr> = iovs
                            .iter_mut()
                            .zip(cmsgs.iter_mut())
                            .map(|(iov, c)| {
                                // SAFETY: msghdr is plain data; all-zero is a valid empty header.
                                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                                h.msg_iov = iov;
                                h.msg_iovlen = 1;
                                h.msg_control = c.as_mut_ptr().cast();
                                h.msg_controllen = size_of::<[u64; 8]>();
                                libc::mmsghdr { msg_hdr: h, msg_len: 0 }
                            })
                            .collect();
                        // SAFETY: every header points at its own live buffer, iovec and control
                        // buffer of the sizes given, all outliving the call.
                        let got = unsafe { libc::recvmmsg(pfd.fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
                        if got <= 0 {
                            break;
                        }
                        for (i, m) in msgs.iter().take(got as usize).enumerate() {
                            r.fetch_add(1, Ordering::Relaxed);
                            let stamp = kernel_stamp(&m.msg_hdr);
                            let (len, buf) = (m.msg_len as usize, &mut bufs[i]);
                            let Some(&[s0, s1, s2, s3]) = buf.get(8..12) else { continue };
                            let state = states.entry((k, [s0, s1, s2, s3])).or_insert_with(|| RtpRecvState::new(1024));
                            if let (Ok(n), Some(at)) = (keys[k].unprotect_rtp(state, &mut buf[..], len), stamp)
                                && n >= 22
                            {
                                let sent = u64::from_be_bytes(buf[14..22].try_into().unwrap_or_default());
                                let at = (at as i128 - realtime_at_epoch).max(0) as u64;
                                let _ = hist.record(at.saturating_sub(sent).max(1));
                            }
                        }
                        if (got as usize) < BATCH {
                            break;
                        }
                    }
                }
            }
            hist
        });
        Ok(Self::Userspace { stop, received, thread: Some(thread) })
    }

    pub(super) fn received(&self) -> u64 {
        match self {
            Self::Xdp(stage) => stage.verdict_counts().map(|c| c.total()).unwrap_or(0),
            Self::Userspace { received, .. } => received.load(Ordering::Relaxed),
        }
    }

    pub(super) fn finish(self) -> Histogram<u64> {
        match self {
            Self::Xdp(_) => Histogram::new(3).expect("histogram"),
            Self::Userspace { stop, mut thread, .. } => {
                stop.store(true, Ordering::Relaxed);
                thread.take().and_then(|t| t.join().ok()).unwrap_or_else(|| Histogram::new(3).expect("histogram"))
            }
        }
    }
}
