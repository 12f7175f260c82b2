//! RTP view: every accessor on any accepted input, and the in-place extension remap.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_core::wire::rtp::{ExtensionIdMap, Packet};

fuzz_target!(|data: &[u8]| {
    let Some((&map_seed, bytes)) = data.split_first() else { return };
    let Ok(pkt) = Packet::new_checked(bytes) else { return };
    let _ = (pkt.version(), pkt.marker(), pkt.payload_type(), pkt.sequence_number(), pkt.timestamp(), pkt.ssrc());
    let _ = pkt.csrcs().count();
    let _ = pkt.extensions().count();
    for id in 0..=15 {
        let _ = pkt.find_extension(id);
    }
    assert!(pkt.header_len() + pkt.payload().len() + pkt.padding_len() <= bytes.len());
    let mut copy = bytes.to_vec();
    let mut map = ExtensionIdMap::new();
    for id in 1..=14u8 {
        let _ = map.set(id, (id.wrapping_mul(map_seed)) % 15);
    }
    let mut pkt = Packet::new_checked(&mut copy[..]).expect("accepted once, accepted again");
    let before = pkt.payload().to_vec();
    if pkt.remap_extensions(&map).is_ok() {
        assert_eq!(pkt.payload(), &before[..], "remap never moves the payload");
    }
});
