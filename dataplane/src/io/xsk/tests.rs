use super::*;

#[test]
fn v4_headers_and_parse_round_trip() {
    let mut frame = vec![0u8; XSK_FRAME_SIZE];
    let payload = [0x80u8, 0x60, 0, 1, 0, 0, 0, 0, 0x11, 0x11, 0x11, 0x11, 9];
    frame[TX_HEADERS_V4..TX_HEADERS_V4 + payload.len()].copy_from_slice(&payload);
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 20000);
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5000);
    let len = write_v4_headers(&mut frame, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], src, dst, 7, payload.len(), UdpCsum::Full);
    assert_eq!(len, TX_HEADERS_V4 + payload.len());
    let f = &frame[..len];
    // A correct header/UDP checksum sums to 0xffff (folds to 0).
    assert_eq!(csum_fold(csum_add(0, &f[14..34])), 0);
    let mut acc = csum_add(0, &f[26..34]);
    acc += 17 + (len - 34) as u32;
    assert_eq!(csum_fold(csum_add(acc, &f[34..])), 0);
    let p = parse_frame(f).unwrap();
    assert_eq!(p.port, 5000);
    assert_eq!(p.src, SocketAddr::V4(src));
    assert_eq!(p.src_mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(&f[p.payload], &payload);
}

#[test]
fn v6_headers_and_parse_round_trip() {
    let mut frame = vec![0u8; XSK_FRAME_SIZE];
    let payload = [0x80u8, 0x60, 0, 2, 0, 0, 0, 0, 0x22, 0x22, 0x22, 0x22, 1, 2, 3];
    frame[TX_HEADERS_V6..TX_HEADERS_V6 + payload.len()].copy_from_slice(&payload);
    let src = SocketAddrV6::new("fd00::2".parse().unwrap(), 20000, 0, 0);
    let dst = SocketAddrV6::new("fd00::1".parse().unwrap(), 5000, 0, 0);
    let len = write_v6_headers(&mut frame, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], src, dst, payload.len(), UdpCsum::Full);
    assert_eq!(len, TX_HEADERS_V6 + payload.len());
    let f = &frame[..len];
    let mut acc = csum_add(0, &f[22..54]);
    acc += 17 + (len - 54) as u32;
    assert_eq!(csum_fold(csum_add(acc, &f[54..])), 0);
    let p = parse_frame(f).unwrap();
    assert_eq!((p.port, p.src), (5000, SocketAddr::V6(src)));
    assert_eq!(&f[p.payload], &payload);
}

/// What a device (or `skb_checksum_help`) does with a `CHECKSUM_PARTIAL` frame: sums from
/// `start` to the end, seed included, and stores the complement at `start + offset`.
fn finish_partial(frame: &mut [u8], start: usize, offset: usize) {
    let mut check = csum_fold(csum_add(0, &frame[start..]));
    if check == 0 {
        check = 0xffff;
    }
    frame[start + offset..start + offset + 2].copy_from_slice(&check.to_be_bytes());
}

#[test]
fn partial_udp_checksum_finishes_to_the_full_one() {
    for payload_len in [0usize, 1, 13, 1200, 1201] {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i * 37 + 11) as u8).collect();
        let (src4, dst4) = (SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 20000), SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5000));
        let (src6, dst6) = (SocketAddrV6::new("fd00::2".parse().unwrap(), 20000, 0, 0), SocketAddrV6::new("fd00::1".parse().unwrap(), 5000, 0, 0));
        for v6 in [false, true] {
            let (headers, l4) = if v6 { (TX_HEADERS_V6, ETH_HLEN + IPV6_HLEN) } else { (TX_HEADERS_V4, ETH_HLEN + IPV4_HLEN) };
            let build = |csum| {
                let mut frame = vec![0u8; XSK_FRAME_SIZE];
                frame[headers..headers + payload_len].copy_from_slice(&payload);
                let len = if v6 {
                    write_v6_headers(&mut frame, [2; 6], [4; 6], src6, dst6, payload_len, csum)
                } else {
                    write_v4_headers(&mut frame, [2; 6], [4; 6], src4, dst4, 9, payload_len, csum)
                };
                frame.truncate(len);
                frame
            };
            let full = build(UdpCsum::Full);
            let mut partial = build(UdpCsum::Partial);
            assert_ne!(partial, full, "v6 {v6}, {payload_len} bytes: the seed is not the checksum");
            finish_partial(&mut partial, l4, 6);
            assert_eq!(partial, full, "v6 {v6}, {payload_len} bytes");
        }
    }
    let mut md = [0xffu8; TX_META_LEN];
    write_tx_csum_request(&mut md, 34);
    assert_eq!(u64::from_ne_bytes(md[0..8].try_into().unwrap()), u64::from(libc::XDP_TXMD_FLAGS_CHECKSUM));
    assert_eq!(u16::from_ne_bytes([md[8], md[9]]), 34);
    assert_eq!(u16::from_ne_bytes([md[10], md[11]]), 6);
    assert!(md[12..].iter().all(|b| *b == 0));
}

/// Every truncation of valid IPv4, IPv6 and VLAN frames, and 50,000 corruptions of them:
/// `parse_frame` never panics, and a payload it returns lies inside the frame.
#[test]
fn parse_frame_takes_any_bytes() {
    let payload = [0x80u8, 0x60, 0, 1, 0, 0, 0, 0, 0x11, 0x11, 0x11, 0x11, 9, 8, 7];
    let mut frames = Vec::new();
    for v6 in [false, true] {
        let mut f = vec![0u8; XSK_FRAME_SIZE];
        let headers = if v6 { TX_HEADERS_V6 } else { TX_HEADERS_V4 };
        f[headers..headers + payload.len()].copy_from_slice(&payload);
        let len = if v6 {
            let (s, d) = (SocketAddrV6::new("fd00::2".parse().unwrap(), 1, 0, 0), SocketAddrV6::new("fd00::1".parse().unwrap(), 2, 0, 0));
            write_v6_headers(&mut f, [2; 6], [4; 6], s, d, payload.len(), UdpCsum::Full)
        } else {
            let (s, d) = (SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 1), SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 2));
            write_v4_headers(&mut f, [2; 6], [4; 6], s, d, 1, payload.len(), UdpCsum::Full)
        };
        f.truncate(len);
        assert_eq!(&f[parse_frame(&f).unwrap().payload], &payload);
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        tagged.extend_from_slice(&f[12..]);
        assert_eq!(&tagged[parse_frame(&tagged).unwrap().payload], &payload, "one VLAN tag");
        frames.push(f);
        frames.push(tagged);
    }
    let check = |f: &[u8]| {
        if let Some(p) = parse_frame(f) {
            assert!(p.payload.start <= p.payload.end && p.payload.end <= f.len(), "{:?} of {}", p.payload, f.len());
        }
    };
    for f in &frames {
        for n in 0..f.len() {
            check(&f[..n]);
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..50_000 {
        let mut f = frames[(next() % frames.len() as u64) as usize].clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % f.len() as u64) as usize;
            f[i] = next() as u8;
        }
        let keep = f.len() - (next() % 8) as usize;
        check(&f[..keep]);
    }
}

#[test]
fn parse_mac_and_reject_short() {
    assert_eq!(parse_mac("02:5c:00:01:02:0a"), Some([2, 0x5c, 0, 1, 2, 0x0a]));
    assert_eq!(parse_mac("02:5c:00"), None);
    assert!(parse_frame(&[0u8; 20]).is_none());
}

/// The waker contract ([`crate::io::wake`]) on an AF_XDP backend: an XSK bound (copy mode) to the
/// loopback of a network namespace of the test's own, so nothing outside sees it; the datagram
/// reaches the kernel socket of the port (no XDP program redirects anything to the XSK). Needs root.
#[test]
fn xsk_waker_ends_the_wait() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (a network namespace and an AF_XDP socket)");
    // A thread of its own: network namespaces are per thread, and this one ends with it.
    let run = std::thread::spawn(|| {
        // SAFETY: moves only the calling thread, which this test owns, into a new namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", io::Error::last_os_error());
        // A child inherits the spawning thread's namespace.
        let out = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).output().expect("run ip");
        assert!(out.status.success(), "ip link set lo up: {}", String::from_utf8_lossy(&out.stderr));
        let local = Ipv4Addr::LOCALHOST;
        let config = IoConfig { local_ip: local.into(), rx_batch: 16, xsk_interface: Some("lo".to_owned()), xsk_rx_frames: 2048, ..IoConfig::default() };
        let mut b = crate::io::Backend::new(crate::io::BackendKind::Xsk, config, SendRegistry::new()).expect("AF_XDP backend on lo");
        let port = b.add_port(0).unwrap();
        let peer = std::net::UdpSocket::bind((local, 0)).unwrap();
        crate::io::wake::tests::check_waker(&mut b, port, &peer, SocketAddr::new(local.into(), port));
    });
    if let Err(panic) = run.join() {
        std::panic::resume_unwind(panic);
    }
}
