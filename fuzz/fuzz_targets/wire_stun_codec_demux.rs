//! STUN view, RFC 7983 demultiplexing and codec keyframe detection.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_core::wire::{codec, demux, stun};

fuzz_target!(|data: &[u8]| {
    let _ = demux::classify(data);
    if let Ok(msg) = stun::Message::new_checked(data) {
        let _ = (msg.class(), msg.method(), msg.transaction_id());
        assert!(msg.total_len() <= data.len());
        let _ = msg.attributes().take(64).count();
    }
    for c in [codec::VideoCodec::Vp8, codec::VideoCodec::Vp9, codec::VideoCodec::H264, codec::VideoCodec::Av1] {
        let _ = codec::inspect(c, data);
    }
});
