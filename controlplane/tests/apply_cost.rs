//! An Apply's cost is the size of its change, not of its session: adding ten viewers (a leg
//! and three subscriptions each) to a webinar of 100 viewers and to one of 4,000 makes the
//! control plane allocate the same bytes — validation, the commit, the journal record, the
//! names and the part of the tables the link installs. Counted with a counting allocator (this
//! test binary's own), not timed: deterministic on any machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sluice_controlplane::engine::Engine;
use sluice_controlplane::journal::Journal;
use sluice_controlplane::state::PortRange;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static BYTES: AtomicU64 = AtomicU64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

mod webinar;
use webinar::{presenter, viewers};

/// (bytes, allocations) the control plane allocates to commit ten more viewers into a webinar
/// of `size` viewers and to take the tables the link installs for them.
fn cost_of_ten_more(size: usize) -> (u64, u64) {
    let dir = std::env::temp_dir().join(format!("sluice-apply-cost-{}-{size}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (journal, desired, _) = Journal::open(&dir, PortRange { start: 1024, end: 65_000 }).unwrap();
    let mut engine = Engine::new(desired, journal);
    let presenter = presenter();
    let mut group = vec![presenter];
    group.extend((0..size).step_by(100).map(|at| viewers(at, 100.min(size - at))));
    for chunk in group.chunks(8) {
        let (answers, committed) = engine.commit_many(chunk);
        assert!(answers.iter().all(Option::is_none), "{answers:?}");
        assert_eq!(committed.len(), chunk.len());
        let _ = engine.take_changes();
    }
    let req = viewers(size, 10);
    BYTES.store(0, Ordering::Relaxed);
    ALLOCS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let (answers, committed) = engine.commit_many(std::slice::from_ref(&req));
    let part = engine.take_changes();
    COUNTING.store(false, Ordering::Relaxed);
    assert!(answers[0].is_none() && committed.len() == 1, "{answers:?}");
    drop(part);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    (BYTES.load(Ordering::Relaxed), ALLOCS.load(Ordering::Relaxed))
}

#[test]
fn adding_viewers_costs_the_same_in_a_small_and_a_big_webinar() {
    let small = cost_of_ten_more(100);
    let big = cost_of_ten_more(4_000);
    println!("ten more viewers: {} bytes in {} allocations at 100 viewers, {} bytes in {} allocations at 4,000", small.0, small.1, big.0, big.1);
    // 40 times the session: the same work, give or take a deeper tree and longer names.
    assert!(big.0 < 2 * small.0, "bytes grow with the session: {small:?} at 100 viewers, {big:?} at 4,000");
    assert!(big.1 < 2 * small.1, "allocations grow with the session: {small:?} at 100 viewers, {big:?} at 4,000");
}
