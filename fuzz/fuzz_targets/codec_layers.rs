//! The VP8/VP9 payload descriptors and the layer choice built on them (issue 17): any payload
//! sequence, any ceilings. Never a panic; every field the parser points at is inside the
//! payload (a rewrite there reads back); a subscription's copies keep strictly increasing
//! sequence numbers for packets sent in order, skipped or not.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_core::forward::layers::{Frame, LayerChoice};
use sluice_core::forward::rewrite::SeqTsRewriter;
use sluice_core::ids::{SeqNo, Ssrc};
use sluice_core::time::Instant;
use sluice_core::wire::codec::{self, VideoCodec};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else { return };
    let codec = [VideoCodec::Vp8, VideoCodec::Vp9, VideoCodec::H264, VideoCodec::Av1][usize::from(head & 3)];
    let ceiling = |bits: u8| if bits == 7 { u8::MAX } else { bits };
    let mut choice = LayerChoice::default();
    let mut rewriter = SeqTsRewriter::new();
    let mut last_out: Option<u16> = None;
    let mut spatial_layers = None;
    let mut top = (0u8, 0u8);
    // Packets are length-prefixed: [len, ceilings, payload...].
    let (mut i, mut seq) = (0usize, 100u16);
    while i + 2 <= rest.len() {
        let (len, ctl) = (usize::from(rest[i]), rest[i + 1]);
        let end = (i + 2 + len).min(rest.len());
        let mut payload = rest[i + 2..end].to_vec();
        i = end;
        seq = seq.wrapping_add(1);
        let ceilings = (ceiling(ctl & 7), ceiling((ctl >> 3) & 7));
        let (key, frame) = match codec::inspect(codec, &payload) {
            Ok(info) => {
                if let Some(p) = info.picture_id {
                    assert!(p.write(&mut payload, p.value), "the picture id is inside the payload");
                    assert_eq!(codec::inspect(codec, &payload).map(|f| f.picture_id), Ok(Some(p)), "and reads back");
                }
                if let Some(at) = info.tl0picidx_at {
                    assert!(usize::from(at) < payload.len());
                }
                spatial_layers = info.spatial_layers.or(spatial_layers);
                (info.is_keyframe, Frame::of(codec, &info, &payload, spatial_layers))
            }
            Err(_) => (false, Frame::bad()),
        };
        if frame.layered && !frame.bad {
            top = (spatial_layers.map_or(top.0.max(frame.spatial), |n| n - 1), top.1.max(frame.temporal));
        }
        let now = Instant::from_nanos(u64::from(seq) * 1_000_000);
        if rewriter.source().is_none() {
            if !key {
                continue;
            }
            rewriter.switch_to(now, Ssrc(1), SeqNo(seq), 0, 90_000);
            choice.start(ceilings, &frame);
            last_out = rewriter.last_sent().map(|(s, _)| s.0);
            continue;
        }
        let d = choice.decide(ceilings, top, &frame, None);
        if d.forward {
            let out = rewriter.rewrite(now, Ssrc(1), SeqNo(seq), 0).expect("an in-order packet of the source maps");
            if let Some(l) = last_out {
                assert!(SeqNo(out.seq.0).is_after(SeqNo(l)), "sequence numbers increase: {l} then {}", out.seq.0);
            }
            last_out = Some(out.seq.0);
            let _ = choice.rewrite_ids(&frame);
        } else {
            assert!(rewriter.skip(Ssrc(1), SeqNo(seq)), "an in-order skip closes its hole");
            choice.skipped(&frame);
        }
    }
});
