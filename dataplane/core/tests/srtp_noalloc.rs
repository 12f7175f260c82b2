//! The per-packet SRTP path allocates nothing on the Rust heap: a counting global allocator
//! watches protect/unprotect of RTP and RTCP for every profile and both providers.
//! (aws-lc's C code does not go through the Rust allocator; its AES-CTR and AES-GCM entry
//! points used here work on caller buffers and the pre-expanded key.) Only the test's own
//! thread is counted: the harness's threads allocate whenever they like.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_core::srtp::provider::{AwsLc, CryptoProvider, RustCrypto};
use sluice_core::srtp::{Profile, RtcpRecvState, RtcpSendState, RtpRecvState, RtpSendState, SrtpKeys};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// GlobalAlloc contract is exactly System's; the counter has no effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by `alloc` above, i.e. by System, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; `ptr` came from System with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn run<P: CryptoProvider>(profile: Profile) {
    let key: Vec<u8> = (0..profile.key_len() as u8).collect();
    let salt: Vec<u8> = (0..profile.salt_len() as u8).collect();
    let keys = SrtpKeys::<P>::with_provider(profile, &key, &salt).unwrap();
    let mut tx = RtpSendState::new();
    let mut rx = RtpRecvState::new(1024);
    let mut ctx = RtcpSendState::new();
    let mut crx = RtcpRecvState::new(128);
    let mut buf = [0u8; 1500];
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    for seq in 0..2000u16 {
        buf[0] = 0x90;
        buf[2..4].copy_from_slice(&seq.to_be_bytes());
        buf[8..12].copy_from_slice(&[1, 2, 3, 4]);
        buf[12..20].copy_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0x2a, 0, 0]);
        let n = keys.protect_rtp(&mut tx, &mut buf, 1200).unwrap();
        assert_eq!(keys.unprotect_rtp(&mut rx, &mut buf, n), Ok(1200));
        buf[0] = 0x80;
        buf[1] = 200;
        let n = keys.protect_rtcp(&mut ctx, &mut buf, 100).unwrap();
        assert_eq!(keys.unprotect_rtcp(&mut crx, &mut buf, n), Ok(100));
    }
    COUNTING.with(|c| c.set(false));
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "{profile:?}: the packet path allocated");
}

#[test]
fn packet_path_does_not_allocate() {
    // The counter works: one box, one allocation.
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    drop(std::hint::black_box(Box::new(7u64)));
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCS.load(Ordering::Relaxed) - before, 1, "the counting allocator sees allocations");
    for p in [Profile::AesCm128HmacSha1_80, Profile::AesCm128HmacSha1_32, Profile::AeadAes128Gcm, Profile::AeadAes256Gcm] {
        run::<AwsLc>(p);
        run::<RustCrypto>(p);
    }
}
