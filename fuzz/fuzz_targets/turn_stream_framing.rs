//! Stream deframers (TURN over TCP and RFC 4571) on arbitrary byte chunks: frames are bounded by
//! the maximum, every frame is a prefix-consistent slice, and nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_core::turn::{ChannelData, Framing, StreamDeframer};
use sluice_core::wire::stun::Message;

fuzz_target!(|data: &[u8]| {
    let max = 64 + usize::from(data.first().copied().unwrap_or(0)) * 8;
    for framing in [Framing::Turn, Framing::Rfc4571] {
        let mut d = StreamDeframer::new(framing, max);
        // The second byte sets the chunk size the stream is cut into.
        let chunk = usize::from(data.get(1).copied().unwrap_or(1)).max(1);
        for piece in data.get(2..).unwrap_or(&[]).chunks(chunk) {
            d.push(piece);
            loop {
                match d.next_frame() {
                    Ok(Some(frame)) => {
                        assert!(frame.len() <= max);
                        if framing == Framing::Turn {
                            assert!(Message::new_checked(frame).is_ok() || ChannelData::new_checked(frame).is_ok());
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            assert!(d.buffered() <= max + chunk);
        }
    }
});
