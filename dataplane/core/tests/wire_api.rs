//! The wire views as a downstream crate sees them: owned buffers, handing them back, and a
//! publisher-to-subscriber rewrite of one RTP packet and one RTCP compound.

use sluice_core::wire::{
    PacketClass, Ssrc, WireError, classify,
    codec::{self, VideoCodec},
    rtcp, rtp,
};

#[test]
fn forward_one_rtp_packet_in_an_owned_buffer() {
    // VP8 keyframe start with a one-byte extension block {1: audio-level-like, 2: [0xAB, 0xCD]}.
    let mut frame: Vec<u8> = vec![
        0x90, 96, 0x00, 0x10, 0, 0, 0x10, 0x00, 0xAA, 0xBB, 0xCC, 0xDD, //
        0xBE, 0xDE, 0x00, 0x02, 0x10, 0x85, 0x21, 0xAB, 0xCD, 0x00, 0x00, 0x00, //
        0x10, 0x50, 0x9d, 0x01, 0x2a,
    ];
    assert_eq!(classify(&frame), PacketClass::Rtp);
    let mut map = rtp::ExtensionIdMap::new();
    map.set(2, 5).unwrap();

    let mut pkt = rtp::Packet::new_checked(frame).unwrap();
    assert!(codec::is_keyframe(VideoCodec::Vp8, pkt.payload()));
    pkt.set_ssrc(Ssrc(0x1234_5678));
    pkt.set_sequence_number(7);
    pkt.set_payload_type(100);
    pkt.remap_extensions(&map).unwrap();
    frame = pkt.into_inner();

    let pkt = rtp::Packet::new_checked(&frame[..]).unwrap();
    assert_eq!((pkt.ssrc(), pkt.sequence_number(), pkt.payload_type()), (Ssrc(0x1234_5678), 7, 100));
    assert_eq!(pkt.find_extension(1), None);
    assert_eq!(pkt.find_extension(5), Some(&[0xAB, 0xCD][..]));
    assert_eq!(pkt.payload(), &[0x10, 0x50, 0x9d, 0x01, 0x2a]);
}

#[test]
fn translate_subscriber_feedback() {
    let mut dgram = [0u8; 64];
    let mut len = rtcp::write_rr(&mut dgram, Ssrc(1), &[]).unwrap();
    len += rtcp::write_pli(&mut dgram[len..], Ssrc(1), Ssrc(0xBEEF)).unwrap();
    assert_eq!(classify(&dgram[..len]), PacketClass::Rtcp);
    for pkt in rtcp::compound_mut(&mut dgram[..len]) {
        let mut pkt = pkt.unwrap();
        if pkt.kind() == rtcp::Kind::Pli {
            let mut pli = rtcp::Pli::new_checked(pkt.as_bytes_mut()).unwrap();
            pli.set_media_ssrc(Ssrc(0xF00D));
        }
    }
    let pli = rtcp::compound(&dgram[..len]).nth(1).unwrap().unwrap();
    assert_eq!(rtcp::Pli::new_checked(pli.as_bytes()).unwrap().media_ssrc(), Ssrc(0xF00D));
    assert_eq!(rtcp::write_pli(&mut [0u8; 11], Ssrc(1), Ssrc(2)), Err(WireError::BufferTooSmall));
    assert_eq!(WireError::BufferTooSmall as u8, 7);
    assert!((WireError::BadPayload as usize) < WireError::COUNT);
}
