use super::*;
use rand::{Rng, SeedableRng};

fn block(n: u32) -> ReportBlockInfo {
    ReportBlockInfo {
        ssrc: Ssrc(0x1000 + n),
        fraction_lost: 25,
        cumulative_lost: -3,
        highest_seq: 0x0001_FFFF,
        jitter: 42,
        last_sr: 0xAABB_CCDD,
        delay_since_last_sr: 65536,
    }
}

#[test]
fn written_sdes_cname_reads_back() {
    for cname in [&b""[..], b"s", b"sluice", b"sluice!", &[b'x'; 255]] {
        let mut buf = [0u8; 300];
        let n = write_sdes_cname(&mut buf, Ssrc(0xABCD), cname).unwrap();
        assert_eq!(n % 4, 0);
        let sdes = Sdes::new_checked(&buf[..n]).unwrap();
        let chunk = sdes.chunks().next().unwrap();
        assert_eq!(chunk.ssrc, Ssrc(0xABCD));
        assert_eq!(chunk.cname(), Some(cname));
    }
    assert_eq!(write_sdes_cname(&mut [0u8; 300], Ssrc(1), &[b'x'; 256]), Err(WireError::OutOfRange));
}

/// Every strict prefix of a written packet must be refused by the generic and typed views.
fn assert_truncations_refused(pkt: &[u8], typed_ok: impl Fn(&[u8]) -> bool) {
    for n in 0..pkt.len() {
        assert!(Packet::new_checked(&pkt[..n]).is_err(), "len {n}");
        assert!(!typed_ok(&pkt[..n]), "typed len {n}");
        assert_eq!(compound(&pkt[..n]).filter(Result::is_ok).count(), 0, "compound len {n}");
    }
}

/// Every too-small buffer must be refused by a writer, without writing past it.
fn assert_small_buffers_refused(len: usize, write: impl Fn(&mut [u8]) -> Result<usize, WireError>) {
    let mut buf = [0u8; 1024];
    for n in 0..len {
        assert_eq!(write(&mut buf[..n]), Err(WireError::BufferTooSmall), "buffer {n}");
    }
    assert_eq!(write(&mut buf[..len]), Ok(len));
}

#[test]
fn sr_round_trip() {
    let info = SenderInfo { ntp_timestamp: 0xE2F0_1234_8000_0000, rtp_timestamp: 90_000, packet_count: 12, octet_count: 3456 };
    let blocks = [block(1), block(2)];
    let mut buf = [0u8; 128];
    let n = write_sr(&mut buf, Ssrc(7), &info, &blocks).unwrap();
    assert_eq!(n, 28 + 48);
    let pkt = Packet::new_checked(&buf[..n]).unwrap();
    assert_eq!((pkt.kind(), pkt.count(), pkt.total_len()), (Kind::SenderReport, 2, n));
    let sr = SenderReport::new_checked(&buf[..n]).unwrap();
    assert_eq!(sr.sender_ssrc(), Ssrc(7));
    assert_eq!(sr.sender_info(), info);
    assert_eq!(sr.ntp_timestamp(), info.ntp_timestamp);
    assert_eq!((sr.rtp_timestamp(), sr.packet_count(), sr.octet_count()), (90_000, 12, 3456));
    assert_eq!(sr.report_count(), 2);
    assert!(sr.report_blocks().map(|b| b.info()).eq(blocks));
    assert!(sr.report_block(2).is_none());
    assert!(sr.extension().is_empty());
    assert_truncations_refused(&buf[..n], |b| SenderReport::new_checked(b).is_ok());
    assert_small_buffers_refused(n, |b| write_sr(b, Ssrc(7), &info, &blocks));

    let mut sr = SenderReport::new_checked(&mut buf[..n]).unwrap();
    sr.set_sender_ssrc(Ssrc(8));
    sr.set_rtp_timestamp(1);
    sr.set_packet_count(2);
    sr.set_octet_count(3);
    sr.set_ntp_timestamp(4);
    let mut rb = sr.report_block_mut(1).unwrap();
    rb.set_ssrc(Ssrc(99));
    rb.set_highest_seq(5);
    rb.set_last_sr(6);
    assert!(sr.report_block_mut(2).is_none());
    let sr = SenderReport::new_checked(&buf[..n]).unwrap();
    assert_eq!(sr.sender_ssrc(), Ssrc(8));
    assert_eq!(sr.sender_info(), SenderInfo { ntp_timestamp: 4, rtp_timestamp: 1, packet_count: 2, octet_count: 3 });
    let b = sr.report_block(1).unwrap().info();
    assert_eq!((b.ssrc, b.highest_seq, b.last_sr, b.jitter), (Ssrc(99), 5, 6, 42));
    assert_eq!(sr.report_block(0).unwrap().info(), block(1));
}

#[test]
fn rr_round_trip_and_lost_clamping() {
    let mut blocks = [block(1); 31];
    blocks[0].cumulative_lost = i32::MAX;
    blocks[1].cumulative_lost = i32::MIN;
    blocks[2].cumulative_lost = -0x80_0000;
    let mut buf = [0u8; 1024];
    let n = write_rr(&mut buf, Ssrc(1), &blocks).unwrap();
    assert_eq!(n, 8 + 31 * 24);
    let rr = ReceiverReport::new_checked(&buf[..n]).unwrap();
    assert_eq!((rr.sender_ssrc(), rr.report_count()), (Ssrc(1), 31));
    let lost: Vec<i32> = rr.report_blocks().take(4).map(|b| b.cumulative_lost()).collect();
    assert_eq!(lost, [0x7F_FFFF, -0x80_0000, -0x80_0000, -3]);
    assert_eq!(write_rr(&mut buf, Ssrc(1), &[block(1); 32]), Err(WireError::OutOfRange));
    let n = write_rr(&mut buf, Ssrc(1), &[]).unwrap();
    assert_eq!(n, 8);
    assert_eq!(ReceiverReport::new_checked(&buf[..n]).unwrap().report_blocks().count(), 0);
    let n = write_rr(&mut buf, Ssrc(1), &blocks[..1]).unwrap();
    assert_truncations_refused(&buf[..n], |b| ReceiverReport::new_checked(b).is_ok());
    assert_small_buffers_refused(n, |b| write_rr(b, Ssrc(1), &blocks[..1]));
    let mut rr = ReceiverReport::new_checked(&mut buf[..n]).unwrap();
    rr.set_sender_ssrc(Ssrc(2));
    rr.report_block_mut(0).unwrap().set_ssrc(Ssrc(3));
    let rr = ReceiverReport::new_checked(&buf[..n]).unwrap();
    assert_eq!((rr.sender_ssrc(), rr.report_block(0).unwrap().ssrc()), (Ssrc(2), Ssrc(3)));
    // RC larger than the length allows.
    buf[0] |= 2;
    assert_eq!(ReceiverReport::new_checked(&buf[..n]), Err(WireError::BadLength));
    // A PLI is not an RR.
    let n = write_pli(&mut buf, Ssrc(1), Ssrc(2)).unwrap();
    assert_eq!(ReceiverReport::new_checked(&buf[..n]), Err(WireError::WrongType));
}

#[test]
fn pli_fir_round_trip() {
    let mut buf = [0u8; 64];
    let n = write_pli(&mut buf, Ssrc(1), Ssrc(2)).unwrap();
    assert_eq!(&buf[..n], &[0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
    let pli = Pli::new_checked(&buf[..n]).unwrap();
    assert_eq!((pli.sender_ssrc(), pli.media_ssrc()), (Ssrc(1), Ssrc(2)));
    assert_eq!(Packet::new_checked(&buf[..n]).unwrap().kind(), Kind::Pli);
    assert_truncations_refused(&buf[..n], |b| Pli::new_checked(b).is_ok());
    assert_small_buffers_refused(n, |b| write_pli(b, Ssrc(1), Ssrc(2)));
    let mut pli = Pli::new_checked(&mut buf[..n]).unwrap();
    pli.set_sender_ssrc(Ssrc(3));
    pli.set_media_ssrc(Ssrc(4));
    let pli = Pli::new_checked(&buf[..n]).unwrap();
    assert_eq!((pli.sender_ssrc(), pli.media_ssrc()), (Ssrc(3), Ssrc(4)));
    assert_eq!(Fir::new_checked(&buf[..n]), Err(WireError::WrongType));

    let entries = [FirEntry { ssrc: Ssrc(10), seq: 1 }, FirEntry { ssrc: Ssrc(11), seq: 255 }];
    let n = write_fir(&mut buf, Ssrc(1), &entries).unwrap();
    assert_eq!(n, 28);
    assert_eq!(&buf[12..20], &[0, 0, 0, 10, 1, 0, 0, 0]);
    let fir = Fir::new_checked(&buf[..n]).unwrap();
    assert_eq!((fir.sender_ssrc(), fir.media_ssrc()), (Ssrc(1), Ssrc(0)));
    assert!(fir.entries().eq(entries));
    assert_eq!(Packet::new_checked(&buf[..n]).unwrap().kind(), Kind::Fir);
    assert_truncations_refused(&buf[..n], |b| Fir::new_checked(b).is_ok());
    assert_small_buffers_refused(n, |b| write_fir(b, Ssrc(1), &entries));
    let mut fir = Fir::new_checked(&mut buf[..n]).unwrap();
    fir.set_entry_ssrc(1, Ssrc(12)).unwrap();
    fir.set_entry_seq(1, 7).unwrap();
    assert_eq!(fir.set_entry_ssrc(2, Ssrc(0)), Err(WireError::OutOfRange));
    assert_eq!(fir.entry(1), Some(FirEntry { ssrc: Ssrc(12), seq: 7 }));
}

#[test]
fn nack_round_trip_and_expansion() {
    let item = NackItem { pid: 100, blp: 0b101 };
    assert!(item.sequence_numbers().eq([100, 101, 103]));
    let wrap = NackItem { pid: 65535, blp: 0x8001 };
    assert!(wrap.sequence_numbers().eq([65535, 0, 15]));

    let mut items = [NackItem::default(); 8];
    let lost = [65530u16, 65535, 0, 9, 10, 11, 500, 500, 516, 517];
    let k = pack_nack_items(lost, &mut items).unwrap();
    // 65530 covers through 10 (wrapping); 516 is 500 + 16; 517 is one too far.
    assert_eq!(k, 4);
    let mut buf = [0u8; 64];
    let n = write_nack(&mut buf, Ssrc(1), Ssrc(2), &items[..k]).unwrap();
    assert_eq!(n, 12 + 4 * k);
    let nack = Nack::new_checked(&buf[..n]).unwrap();
    assert_eq!((nack.sender_ssrc(), nack.media_ssrc(), nack.item_count()), (Ssrc(1), Ssrc(2), 4));
    let mut expect: Vec<u16> = lost.to_vec();
    expect.dedup();
    assert!(nack.sequence_numbers().eq(expect));
    assert_eq!(Packet::new_checked(&buf[..n]).unwrap().kind(), Kind::Nack);
    assert_truncations_refused(&buf[..n], |b| Nack::new_checked(b).is_ok());
    assert_small_buffers_refused(n, |b| write_nack(b, Ssrc(1), Ssrc(2), &items[..k]));
    assert_eq!(pack_nack_items(lost, &mut items[..2]), Err(WireError::BufferTooSmall));

    let mut nack = Nack::new_checked(&mut buf[..n]).unwrap();
    nack.set_item(0, NackItem { pid: 1, blp: 2 }).unwrap();
    nack.set_sender_ssrc(Ssrc(5));
    nack.set_media_ssrc(Ssrc(6));
    assert_eq!(nack.set_item(4, item), Err(WireError::OutOfRange));
    assert_eq!(nack.item(0), Some(NackItem { pid: 1, blp: 2 }));
    assert_eq!((nack.sender_ssrc(), nack.media_ssrc()), (Ssrc(5), Ssrc(6)));
}

#[test]
fn remb_round_trip() {
    let mut buf = [0u8; 64];
    let ssrcs = [Ssrc(0x1111), Ssrc(0x2222)];
    let n = write_remb(&mut buf, Ssrc(1), 2_500_000, &ssrcs).unwrap();
    assert_eq!(n, 28);
    let remb = Remb::new_checked(&buf[..n]).unwrap();
    assert_eq!(Packet::new_checked(&buf[..n]).unwrap().kind(), Kind::Remb);
    // 2.5 Mbps needs 22 bits: exp 4, mantissa 156250.
    assert_eq!((remb.bitrate_exp(), remb.bitrate_mantissa()), (4, 156_250));
    assert_eq!(remb.bitrate(), 2_500_000);
    assert!(remb.ssrcs().eq(ssrcs));
    assert_eq!(remb.ssrc_count(), 2);
    assert_truncations_refused(&buf[..n], |b| Remb::new_checked(b).is_ok());
    assert_small_buffers_refused(n, |b| write_remb(b, Ssrc(1), 2_500_000, &ssrcs));
    let mut remb = Remb::new_checked(&mut buf[..n]).unwrap();
    remb.set_ssrc(1, Ssrc(0x3333)).unwrap();
    assert_eq!(remb.set_ssrc(2, Ssrc(0)), Err(WireError::OutOfRange));
    remb.set_bitrate(u64::MAX);
    assert_eq!(remb.bitrate(), u64::MAX >> 46 << 46);
    remb.set_bitrate(100);
    assert_eq!((remb.bitrate_exp(), remb.bitrate()), (0, 100));
    remb.set_sender_ssrc(Ssrc(9));
    assert_eq!(remb.ssrc(1), Some(Ssrc(0x3333)));
    assert_eq!(remb.sender_ssrc(), Ssrc(9));
    // Maximal exponent with a large mantissa saturates instead of overflowing.
    buf[17] = 0xFF;
    assert_eq!(Remb::new_checked(&buf[..n]).unwrap().bitrate(), u64::MAX);
    // Not "REMB": another application-layer feedback.
    buf[12] = b'X';
    assert_eq!(Packet::new_checked(&buf[..n]).unwrap().kind(), Kind::OtherPsfb);
    assert_eq!(Remb::new_checked(&buf[..n]), Err(WireError::WrongType));
}

#[test]
fn transport_cc_header() {
    // Base seq 1, 3 statuses, reference time -1 (24-bit), fb count 5, one run-length
    // chunk (3 x "received, small delta") and three 1-byte deltas plus a padding byte.
    let pkt = [0x8F, 205, 0, 6, 0, 0, 0, 1, 0, 0, 0, 2, 0x00, 0x01, 0x00, 0x03, 0xFF, 0xFF, 0xFF, 0x05, 0x20, 0x03, 0x04, 0x04, 0x04, 0x00, 0x00, 0x00];
    let t = TransportCc::new_checked(&pkt[..]).unwrap();
    assert_eq!(Packet::new_checked(&pkt[..]).unwrap().kind(), Kind::TransportCc);
    assert_eq!((t.sender_ssrc(), t.media_ssrc()), (Ssrc(1), Ssrc(2)));
    assert_eq!((t.base_sequence_number(), t.packet_status_count()), (1, 3));
    assert_eq!((t.reference_time(), t.feedback_packet_count()), (-1, 5));
    assert_eq!(t.chunks_and_deltas(), &pkt[20..]);
    let pkts: Vec<_> = t.packets().collect();
    assert_eq!(pkts, (1..=3).map(|seq| Ok(TwccPacket { seq, status: TwccStatus::SmallDelta, delta: Some(4) })).collect::<Vec<_>>());
    assert_truncations_refused(&pkt, |b| TransportCc::new_checked(b).is_ok());
    assert_eq!(Nack::new_checked(&pkt[..]), Err(WireError::WrongType));
}

#[test]
fn transport_cc_status_vectors() {
    // Base seq 65534, 10 statuses: a 2-bit vector [large, not received, small, 0 x4], then
    // a 1-bit vector [1, 0, 1, 0 x11] of which only 3 symbols count. Deltas: -2 (large),
    // 8, 1, 2 (small). 20 + 4 + 5 = 29 bytes, padded with zeros to 32.
    let pkt = [
        0x8F, 205, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0xFF, 0xFE, 0x00, 10, 0, 0, 0, 0, //
        0xE1, 0x00, 0xA8, 0x00, 0xFF, 0xFE, 8, 1, 2, 0, 0, 0,
    ];
    let t = TransportCc::new_checked(&pkt[..]).unwrap();
    let got: Vec<_> = t.packets().map(Result::unwrap).collect();
    use TwccStatus::*;
    let want = [
        (65534, LargeDelta, Some(-2)),
        (65535, NotReceived, None),
        (0, SmallDelta, Some(8)),
        (1, NotReceived, None),
        (2, NotReceived, None),
        (3, NotReceived, None),
        (4, NotReceived, None),
        (5, SmallDelta, Some(1)),
        (6, NotReceived, None),
        (7, SmallDelta, Some(2)),
    ]
    .map(|(seq, status, delta)| TwccPacket { seq, status, delta });
    assert_eq!(got, want);
    // Claiming more statuses than the chunks and deltas hold ends in one error.
    let mut b = pkt;
    b[15] = 30;
    let t = TransportCc::new_checked(&b[..]).unwrap();
    let got: Vec<_> = t.packets().collect();
    assert_eq!(got.last(), Some(&Err(WireError::BadLength)));
    assert!(got.len() <= 30);
}

/// SDES with two chunks: CNAME "user@example.com" + NAME "Al"; a chunk with only a CNAME.
const SDES: [u8; 40] = [
    0x82, 202, 0, 9, //
    0, 0, 0, 1, 1, 16, b'u', b's', b'e', b'r', b'@', b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c', b'o', b'm', 2, 2, b'A', b'l', 0,
    0, // chunk 1 (28 bytes)
    0, 0, 0, 2, 1, 1, b'x', 0, // chunk 2 (8 bytes)
];

#[test]
fn sdes_chunks_and_items() {
    let sdes = Sdes::new_checked(&SDES[..]).unwrap();
    assert_eq!(sdes.chunk_count(), 2);
    let chunks: Vec<_> = sdes.chunks().collect();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].ssrc, Ssrc(1));
    assert_eq!(chunks[0].cname(), Some(&b"user@example.com"[..]));
    let items: Vec<_> = chunks[0].items().map(|i| (i.kind, i.value)).collect();
    assert_eq!(items, [(1, &b"user@example.com"[..]), (2, &b"Al"[..])]);
    assert_eq!((chunks[1].ssrc, chunks[1].cname()), (Ssrc(2), Some(&b"x"[..])));
    assert_truncations_refused(&SDES, |b| Sdes::new_checked(b).is_ok());
    // SC says three chunks.
    let mut b = SDES;
    b[0] = 0x83;
    assert_eq!(Sdes::new_checked(&b[..]), Err(WireError::BadLength));
    // An item running past the packet.
    let mut b = SDES;
    b[37] = 9;
    assert_eq!(Sdes::new_checked(&b[..]), Err(WireError::BadLength));
    // Missing END octet in the last chunk.
    let mut b = SDES;
    b[39] = b'y';
    assert_eq!(Sdes::new_checked(&b[..]), Err(WireError::BadLength));
}

#[test]
fn bye_and_app() {
    let bye = [0x82, 203, 0, 4, 0, 0, 0, 1, 0, 0, 0, 2, 5, b'c', b'i', b'a', b'o', 0, 0, 0];
    let b = Bye::new_checked(&bye[..]).unwrap();
    assert!(b.ssrcs().eq([Ssrc(1), Ssrc(2)]));
    assert_eq!(b.reason(), Some(&b"ciao"[..]).map(|_| &bye[13..18]));
    assert_truncations_refused(&bye, |b| Bye::new_checked(b).is_ok());
    let mut m = bye;
    Bye::new_checked(&mut m[..]).unwrap().set_ssrc(1, Ssrc(3)).unwrap();
    assert_eq!(Bye::new_checked(&m[..]).unwrap().ssrc(1), Some(Ssrc(3)));
    // Reason longer than the packet.
    m[12] = 8;
    assert_eq!(Bye::new_checked(&m[..]), Err(WireError::BadLength));
    // No reason.
    let short = [0x81, 203, 0, 1, 0, 0, 0, 9];
    assert_eq!(Bye::new_checked(&short[..]).unwrap().reason(), None);

    let app = [0x85, 204, 0, 3, 0, 0, 0, 7, b'T', b'E', b'S', b'T', 1, 2, 3, 4];
    let a = App::new_checked(&app[..]).unwrap();
    assert_eq!((a.subtype(), a.ssrc(), a.name()), (5, Ssrc(7), *b"TEST"));
    assert_eq!(a.data(), &[1, 2, 3, 4]);
    assert_truncations_refused(&app, |b| App::new_checked(b).is_ok());
}

#[test]
fn padding() {
    // RR with no blocks, then 4 bytes of padding (P set, count 4).
    let pkt = [0xA0, 201, 0, 2, 0, 0, 0, 1, 0, 0, 0, 4];
    let p = Packet::new_checked(&pkt[..]).unwrap();
    assert_eq!((p.padding_len(), p.body()), (4, &pkt[4..8]));
    assert!(ReceiverReport::new_checked(&pkt[..]).unwrap().extension().is_empty());
    let mut b = pkt;
    b[11] = 0;
    assert_eq!(Packet::new_checked(&b[..]), Err(WireError::BadPadding));
    b[11] = 9;
    assert_eq!(Packet::new_checked(&b[..]), Err(WireError::BadPadding));
    // Padding eating the sender SSRC makes the RR too short.
    b[11] = 8;
    assert_eq!(ReceiverReport::new_checked(&b[..]), Err(WireError::BadLength));
    // Padding that leaves a partial NACK item.
    let mut n = [0u8; 20];
    let len = write_nack(&mut n, Ssrc(1), Ssrc(2), &[NackItem { pid: 1, blp: 0 }; 2]).unwrap();
    n[0] |= 0x20;
    n[len - 1] = 2;
    assert_eq!(Nack::new_checked(&n[..len]), Err(WireError::BadLength));
    n[len - 1] = 4;
    assert_eq!(Nack::new_checked(&n[..len]).unwrap().item_count(), 1);
}

#[test]
fn compound_walk_and_rewrite() {
    let mut dgram = [0u8; 256];
    let mut len = write_sr(&mut dgram, Ssrc(1), &SenderInfo::default(), &[block(1)]).unwrap();
    dgram[len..len + SDES.len()].copy_from_slice(&SDES);
    len += SDES.len();
    len += write_pli(&mut dgram[len..], Ssrc(1), Ssrc(2)).unwrap();
    len += write_nack(&mut dgram[len..], Ssrc(1), Ssrc(2), &[NackItem { pid: 7, blp: 1 }]).unwrap();
    let kinds: Vec<_> = compound(&dgram[..len]).map(|p| p.unwrap().kind()).collect();
    assert_eq!(kinds, [Kind::SenderReport, Kind::Sdes, Kind::Pli, Kind::Nack]);

    // Rewrite every sender SSRC in place, as feedback translation does.
    for pkt in compound_mut(&mut dgram[..len]) {
        let mut pkt = pkt.unwrap();
        match pkt.kind() {
            Kind::SenderReport => SenderReport::new_checked(pkt.as_bytes_mut()).unwrap().set_sender_ssrc(Ssrc(9)),
            Kind::Pli => Pli::new_checked(pkt.as_bytes_mut()).unwrap().set_media_ssrc(Ssrc(8)),
            Kind::Nack => Nack::new_checked(pkt.as_bytes_mut()).unwrap().set_media_ssrc(Ssrc(8)),
            _ => {}
        }
    }
    let mut it = compound(&dgram[..len]);
    let sr = it.next().unwrap().unwrap();
    assert_eq!(SenderReport::new_checked(sr.as_bytes()).unwrap().sender_ssrc(), Ssrc(9));
    it.next();
    let pli = it.next().unwrap().unwrap();
    assert_eq!(Pli::new_checked(pli.as_bytes()).unwrap().media_ssrc(), Ssrc(8));
    let nack = it.next().unwrap().unwrap();
    assert!(Nack::new_checked(nack.as_bytes()).unwrap().sequence_numbers().eq([7, 8]));
    assert!(it.next().is_none());

    // A truncated last packet: the good ones come out, then one error, then nothing.
    let items: Vec<_> = compound(&dgram[..len - 1]).map(|p| p.map(|p| p.kind())).collect();
    assert_eq!(items, [Ok(Kind::SenderReport), Ok(Kind::Sdes), Ok(Kind::Pli), Err(WireError::Truncated)]);
    assert_eq!(compound(&[]).count(), 0);
    assert_eq!(is_reduced_size(&dgram[..len]), Some(false));
    let pli_at = len - 16 - 12;
    assert_eq!(is_reduced_size(&dgram[pli_at..len]), Some(true));
    assert_eq!(is_reduced_size(&dgram[pli_at..pli_at + 3]), None);
    assert_eq!(compound(&[0x40, 200, 0, 0]).next(), Some(Err(WireError::BadVersion)));
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5506);
    let mut buf = [0u8; 96];
    for _ in 0..100_000 {
        let n = rng.random_range(0..buf.len());
        rng.fill(&mut buf[..n]);
        buf[0] = 0x80 | (buf[0] & 0x3F);
        if n > 3 {
            buf[1] = rng.random_range(200..=206);
            buf[2] = 0;
            buf[3] = rng.random_range(0..(n as u8 / 4).max(1) + 1);
        }
        if rng.random_bool(0.3) && n > 16 {
            buf[12..16].copy_from_slice(b"REMB");
        }
        for pkt in compound_mut(&mut buf[..n]) {
            let Ok(mut pkt) = pkt else { break };
            let _ = (pkt.kind(), pkt.body().len());
            let b = pkt.as_bytes_mut();
            if let Ok(mut v) = SenderReport::new_checked(&mut *b) {
                let _ = (v.sender_info(), v.report_blocks().count(), v.extension().len());
                if let Some(mut rb) = v.report_block_mut(0) {
                    rb.set_ssrc(Ssrc(1));
                }
            }
            if let Ok(v) = ReceiverReport::new_checked(&*b) {
                for b in v.report_blocks() {
                    let _ = b.info();
                }
                let _ = v.extension().len();
            }
            if let Ok(v) = Sdes::new_checked(&*b) {
                for c in v.chunks() {
                    let _ = (c.cname(), c.items().count());
                }
            }
            if let Ok(v) = Bye::new_checked(&*b) {
                let _ = (v.ssrcs().count(), v.reason());
            }
            if let Ok(v) = App::new_checked(&*b) {
                let _ = v.data();
            }
            if let Ok(mut v) = Nack::new_checked(&mut *b) {
                let _ = v.sequence_numbers().count();
                let _ = v.set_item(0, NackItem::default());
            }
            if let Ok(v) = TransportCc::new_checked(&*b) {
                let _ = (v.reference_time(), v.chunks_and_deltas().len());
                assert!(v.packets().count() <= usize::from(v.packet_status_count()));
            }
            if let Ok(mut v) = Fir::new_checked(&mut *b) {
                let _ = v.entries().count();
                let _ = v.set_entry_ssrc(0, Ssrc(1));
            }
            if let Ok(mut v) = Remb::new_checked(&mut *b) {
                let _ = (v.bitrate(), v.ssrcs().count());
                let _ = v.set_ssrc(0, Ssrc(1));
                v.set_bitrate(12345);
            }
            let _ = Pli::new_checked(&*b).map(|v| v.media_ssrc());
        }
    }
}
