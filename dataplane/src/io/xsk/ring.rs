//! The AF_XDP socket and its memory: the UMEM mapping, the four rings (fill, RX, TX,
//! completion) with their producer/consumer indices, and the socket options that set them up.

use super::*;

/// One mmap'd region, unmapped on drop.
#[derive(Debug)]
pub(super) struct Mapping {
    pub(super) ptr: *mut u8,
    pub(super) len: usize,
}

impl Mapping {
    /// `mmap(len, PROT_READ|PROT_WRITE, flags, fd, offset)`.
    pub(super) fn new(len: usize, flags: libc::c_int, fd: libc::c_int, offset: libc::off_t) -> io::Result<Self> {
        // SAFETY: a fresh mapping (address chosen by the kernel), no existing memory is affected;
        // the result is checked before use.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr: ptr.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and nothing borrows the mapping once
        // its owner is dropped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One of the four single-producer single-consumer rings shared with the kernel.
#[derive(Debug)]
pub(super) struct Ring {
    /// Held for its lifetime: the pointers below point into it.
    pub(super) _map: Mapping,
    pub(super) producer: *const AtomicU32,
    pub(super) consumer: *const AtomicU32,
    pub(super) flags: *const AtomicU32,
    pub(super) desc: *mut u8,
    /// Entries (a power of two), and that minus one.
    pub(super) size: u32,
    pub(super) mask: u32,
    /// Our copy of the index we own, and the last seen value of the kernel's.
    pub(super) cached_prod: u32,
    pub(super) cached_cons: u32,
}

impl Ring {
    /// Maps ring `pgoff` of `fd` with the kernel-reported offsets, `size` entries of `desc_len`.
    pub(super) fn map(fd: libc::c_int, off: &libc::xdp_ring_offset, pgoff: u64, desc_len: usize, size: u32) -> io::Result<Self> {
        debug_assert!(size.is_power_of_two());
        let len = off.desc as usize + size as usize * desc_len;
        let map = Mapping::new(len, libc::MAP_SHARED | libc::MAP_POPULATE, fd, pgoff as libc::off_t)?;
        // SAFETY: the kernel guarantees the offsets lie inside the ring mapping of that length;
        // producer, consumer and flags are naturally aligned u32s.
        let (producer, consumer, flags, desc) = unsafe {
            (
                map.ptr.add(off.producer as usize).cast::<AtomicU32>(),
                map.ptr.add(off.consumer as usize).cast::<AtomicU32>(),
                map.ptr.add(off.flags as usize).cast::<AtomicU32>(),
                map.ptr.add(off.desc as usize),
            )
        };
        let mut ring = Self { _map: map, producer, consumer, flags, desc, size, mask: size - 1, cached_prod: 0, cached_cons: 0 };
        ring.cached_prod = ring.producer().load(Ordering::Acquire);
        ring.cached_cons = ring.consumer().load(Ordering::Acquire);
        Ok(ring)
    }

    pub(super) fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into `self.map`, which lives as long as `self`; the kernel accesses it
        // only atomically.
        unsafe { &*self.producer }
    }

    pub(super) fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { &*self.consumer }
    }

    pub(super) fn needs_wakeup(&self) -> bool {
        // SAFETY: as in `producer`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Producer side: how many of `want` entries are free to write.
    pub(super) fn free(&mut self, want: u32) -> u32 {
        let mut free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free < want {
            self.cached_cons = self.consumer().load(Ordering::Acquire);
            free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        }
        free.min(want)
    }

    /// Producer side: publishes `n` entries written after the last submit.
    pub(super) fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.producer().store(self.cached_prod, Ordering::Release);
    }

    /// Consumer side: how many entries (at most `max`) are ready to read.
    pub(super) fn ready(&mut self, max: u32) -> u32 {
        let mut avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail == 0 {
            self.cached_prod = self.producer().load(Ordering::Acquire);
            avail = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        avail.min(max)
    }

    /// Consumer side: hands `n` read entries back to the kernel.
    pub(super) fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.consumer().store(self.cached_cons, Ordering::Release);
    }

    /// Producer side: entries written and not yet consumed by the kernel.
    pub(super) fn outstanding(&mut self) -> u32 {
        self.cached_cons = self.consumer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// The `u64` address slot `i` entries past our index (fill/completion rings).
    pub(super) fn addr_slot(&self, index: u32) -> *mut u64 {
        // SAFETY: `index & mask` < size, and the mapping holds `size` u64 descriptors
        // from `desc`, which the kernel aligns to 8.
        unsafe { self.desc.cast::<u64>().add((index & self.mask) as usize) }
    }

    /// The `xdp_desc` slot at `index` (RX/TX rings).
    pub(super) fn desc_slot(&self, index: u32) -> *mut libc::xdp_desc {
        // SAFETY: as in `addr_slot`, with `size` 16-byte descriptors.
        unsafe { self.desc.cast::<libc::xdp_desc>().add((index & self.mask) as usize) }
    }
}

/// An AF_XDP socket bound to one queue of one interface, with its UMEM and rings.
#[derive(Debug)]
pub struct XskSocket {
    // Drop order: rings and the socket before the UMEM they reference.
    pub(super) fill: Ring,
    pub(super) comp: Ring,
    pub(super) rx: Ring,
    pub(super) tx: Ring,
    pub(super) fd: OwnedFd,
    pub(super) umem: Mapping,
    pub(super) zerocopy: bool,
    /// Whether TX frames carry `struct xsk_tx_metadata` asking for the UDP checksum
    /// (`TX_META_LEN` bytes before each packet, see [`Self::tx_csum_offload`]).
    pub(super) tx_meta: bool,
    /// Receive frames not in the fill ring.
    pub(super) rx_free: Vec<u64>,
    /// Transmit frames we own.
    pub(super) tx_free: Vec<u64>,
}

// SAFETY: the raw pointers point into mappings this struct owns; the kernel side of the rings is
// synchronised through the producer/consumer atomics, and `&mut self` serialises the user side.
// Moving the socket to another thread changes nothing about either.
unsafe impl Send for XskSocket {}

impl XskSocket {
    /// Binds to `queue` of interface `ifindex` (in the calling thread's network namespace):
    /// zero-copy if the driver supports it, else copy mode.
    ///
    /// In copy mode the UMEM is registered with TX metadata when the kernel takes it (Linux 6.11+,
    /// `XDP_UMEM_TX_METADATA_LEN`), so that sends leave the UDP checksum to the device or to the
    /// kernel's transmit path instead of summing every payload here. Zero-copy mode sums in
    /// software: whether a driver honours the request is a per-driver feature.
    ///
    /// `rx_frames` (a power of two) receive frames, also the fill and RX rings' size.
    pub fn open(ifindex: u32, queue: u32, rx_frames: usize) -> Result<Self, IoError> {
        if !rx_frames.is_power_of_two() || rx_frames > 1 << 20 {
            return Err(IoError::Os { op: "AF_XDP receive frames (a power of two)", source: io::ErrorKind::InvalidInput.into() });
        }
        let open_with = |mode, tx_meta| Self::open_with(ifindex, queue, rx_frames, mode, tx_meta);
        match open_with(libc::XDP_ZEROCOPY, false) {
            Ok(s) => Ok(s),
            Err(zc) => {
                let s = match open_with(libc::XDP_COPY, true) {
                    Ok(s) => s,
                    Err(meta) => {
                        tracing::debug!(error = %meta, "AF_XDP TX metadata refused: UDP checksums summed in software");
                        open_with(libc::XDP_COPY, false).map_err(os_err("AF_XDP bind (copy mode)"))?
                    }
                };
                tracing::info!(ifindex, queue, zerocopy_error = %zc, tx_csum_offload = s.tx_meta, "AF_XDP socket bound in copy mode");
                Ok(s)
            }
        }
    }

    pub(super) fn open_with(ifindex: u32, queue: u32, rx_frames: usize, mode: u16, tx_meta: bool) -> io::Result<Self> {
        // SAFETY: plain socket creation; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mapping::new((rx_frames + XSK_TX_FRAMES) * XSK_FRAME_SIZE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1, 0)?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr as u64,
            len: umem.len as u64,
            chunk_size: XSK_FRAME_SIZE as u32,
            headroom: 0,
            flags: if tx_meta { libc::XDP_UMEM_TX_METADATA_LEN } else { 0 },
            tx_metadata_len: if tx_meta { TX_META_LEN as u32 } else { 0 },
        };
        setsockopt(raw, libc::XDP_UMEM_REG, &reg)?;
        let (rx_ring, tx_ring) = (rx_frames as u32, XSK_TX_FRAMES as u32);
        for (opt, size) in
            [(libc::XDP_UMEM_FILL_RING, rx_ring), (libc::XDP_UMEM_COMPLETION_RING, tx_ring), (libc::XDP_RX_RING, rx_ring), (libc::XDP_TX_RING, tx_ring)]
        {
            setsockopt(raw, opt, &(size as libc::c_int))?;
        }
        // SAFETY: all-zero is a valid xdp_mmap_offsets (plain integers).
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off`/`len` describe a writable buffer of the right size.
        let rc = unsafe { libc::getsockopt(raw, libc::SOL_XDP, libc::XDP_MMAP_OFFSETS, (&raw mut off).cast(), &mut len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let fill = Ring::map(raw, &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING, 8, rx_ring)?;
        let comp = Ring::map(raw, &off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING, 8, tx_ring)?;
        let rx = Ring::map(raw, &off.rx, libc::XDP_PGOFF_RX_RING as u64, 16, rx_ring)?;
        let tx = Ring::map(raw, &off.tx, libc::XDP_PGOFF_TX_RING as u64, 16, tx_ring)?;
        let sxdp = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: mode | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sxdp` is a valid sockaddr_xdp of the length passed.
        let rc = unsafe { libc::bind(raw, (&raw const sxdp).cast(), std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if mode == libc::XDP_COPY {
            // Copy mode transmits at most `max_tx_budget` frames per kick, 32 unless raised
            // (Linux 6.17+: XDP_MAX_TX_SKB_BUDGET, at most the TX ring's size). Older kernels
            // refuse the option and keep 32; `flush` kicks again while frames are left.
            let budget = tx_ring;
            match setsockopt(raw, XDP_MAX_TX_SKB_BUDGET, &budget) {
                Ok(()) => tracing::debug!(budget, "AF_XDP copy-mode TX budget raised"),
                Err(e) => tracing::debug!(error = %e, "AF_XDP copy-mode TX budget stays 32"),
            }
        }
        let mut s = Self {
            fill,
            comp,
            rx,
            tx,
            fd,
            umem,
            zerocopy: mode == libc::XDP_ZEROCOPY,
            tx_meta,
            rx_free: (0..rx_frames as u64).map(|i| i * XSK_FRAME_SIZE as u64).collect(),
            tx_free: (rx_frames as u64..(rx_frames + XSK_TX_FRAMES) as u64).map(|i| i * XSK_FRAME_SIZE as u64).collect(),
        };
        s.refill();
        Ok(s)
    }

    /// Whether the socket runs in zero-copy mode (else copy mode).
    pub fn zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// Whether sends ask for the UDP checksum through TX metadata (`XDP_TXMD_FLAGS_CHECKSUM`):
    /// the frame carries the pseudo-header sum and the kernel's transmit path marks the skb
    /// `CHECKSUM_PARTIAL`, for the device to finish or `validate_xmit_skb` to sum in software
    /// when the device has no checksum offload.
    pub fn tx_csum_offload(&self) -> bool {
        self.tx_meta
    }

    /// Gives free receive frames to the kernel.
    pub(super) fn refill(&mut self) {
        let n = self.fill.free(self.rx_free.len() as u32);
        for i in 0..n {
            let addr = self.rx_free.pop().unwrap_or_default();
            // SAFETY: slot `i` past our producer index is ours to write until `submit`.
            unsafe { self.fill.addr_slot(self.fill.cached_prod.wrapping_add(i)).write(addr) };
        }
        if n > 0 {
            self.fill.submit(n);
        }
    }

    /// Takes finished transmit frames back.
    pub(super) fn reclaim(&mut self) {
        let n = self.comp.ready(self.comp.size);
        for i in 0..n {
            // SAFETY: entries between the consumer and producer indices were written by the kernel
            // and are ours to read until `release`.
            let addr = unsafe { self.comp.addr_slot(self.comp.cached_cons.wrapping_add(i)).read() };
            self.tx_free.push(addr & !(XSK_FRAME_SIZE as u64 - 1));
        }
        if n > 0 {
            self.comp.release(n);
        }
    }

    /// The UMEM bytes of frame `addr` (chunk-relative offsets allowed), `len` long.
    pub(super) fn frame_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        if end > self.umem.len {
            return None;
        }
        // SAFETY: `start..end` lies inside the UMEM mapping; the frame belongs to user space (it
        // came off the RX ring or the TX free list) so the kernel does not write it meanwhile, and
        // the borrow of `self` keeps the slice unique.
        Some(unsafe { std::slice::from_raw_parts_mut(self.umem.ptr.add(start), len) })
    }

    /// The kernel's counters for this socket (`XDP_STATISTICS`).
    pub(super) fn statistics(&self) -> io::Result<libc::xdp_statistics> {
        // SAFETY: all-zero is a valid xdp_statistics (plain integers).
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `st`/`len` describe a writable buffer of the right size.
        let rc = unsafe { libc::getsockopt(self.fd.as_raw_fd(), libc::SOL_XDP, libc::XDP_STATISTICS, (&raw mut st).cast(), &mut len) };
        if rc == 0 { Ok(st) } else { Err(io::Error::last_os_error()) }
    }

    /// Tells the kernel to transmit what the TX ring holds (copy mode: does the transmitting, at
    /// most 32 frames per call, `EAGAIN` when more are left).
    pub(super) fn kick(&self) -> Result<(), io::Error> {
        // SAFETY: a zero-length sendto with no buffer or address: only wakes the socket's TX path.
        let rc = unsafe { libc::sendto(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

pub(super) fn setsockopt<T>(fd: libc::c_int, opt: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` is a live `T` of the size passed.
    let rc = unsafe { libc::setsockopt(fd, libc::SOL_XDP, opt, (val as *const T).cast(), std::mem::size_of::<T>() as libc::socklen_t) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
