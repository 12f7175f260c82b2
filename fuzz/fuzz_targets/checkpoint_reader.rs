//! The dataplane's checkpoint file reader (issue 15): any bytes are refused or read, never a
//! panic; and random corruption of a good checkpoint file never loads altered state: the reader
//! returns exactly what was written or refuses (the dataplane then starts without it).
#![no_main]
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use sluice_core::ids::{LegId, Ssrc};
use sluice_core::table::KeyDigest;
use sluice_core::table::checkpoint::{Checkpoint, LegCheckpoint};
use sluice_core::table::checkpoint_file::{decode, encode};

fn good() -> Checkpoint {
    Checkpoint {
        legs: vec![LegCheckpoint {
            leg: LegId(7),
            keys: KeyDigest([3; 16]),
            remote: Some("10.0.0.7:5000".parse().expect("an address")),
            ingress: vec![(Ssrc(0x1111), (1 << 16) + 12), (Ssrc(0x2222), 3)],
            rtcp_recv: vec![(Ssrc(0x1111), 40)],
            feedback_srtcp: 9,
        }],
        streams: Vec::new(),
        webrtc: vec![LegId(9)],
    }
}

/// Flips the bytes the input names (position, mask) and maybe cuts the end.
fn corrupt(good: &[u8], data: &[u8]) -> Vec<u8> {
    let mut bad = good.to_vec();
    let Some((&cut, rest)) = data.split_first() else { return bad };
    for c in rest.chunks_exact(3) {
        let at = usize::from(u16::from_be_bytes([c[0], c[1]])) % bad.len().max(1);
        if let Some(b) = bad.get_mut(at) {
            *b ^= c[2].max(1);
        }
    }
    if cut & 1 == 1 {
        bad.truncate(bad.len().saturating_sub(usize::from(cut >> 1)));
    }
    bad
}

fuzz_target!(|data: &[u8]| {
    // Any bytes.
    let _ = decode(data);

    // A good file, corrupted: exactly what was written, or refused.
    let taken = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let written = good();
    let bad = corrupt(&encode(&written, taken), data);
    if let Ok(loaded) = decode(&bad) {
        assert!(loaded.checkpoint == written && loaded.taken == taken, "an altered checkpoint loaded");
    }
});
