//! The dataplane's checkpoint file reader (issue 15): any bytes are refused or read, never a
//! panic; and random corruption of a good checkpoint file never loads altered state: the reader
//! returns exactly what was written or refuses (the dataplane then starts without it).
#![no_main]
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;

#[path = "corrupt.rs"]
mod corrupt;
use corrupt::corrupt;
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
