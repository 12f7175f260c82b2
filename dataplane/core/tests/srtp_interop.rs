//! Interop against libsrtp2 (the system library, through `sluice-libsrtp`): for every profile,
//! thousands of random RTP and RTCP packets both ways, byte-exact comparison of the protected
//! output (both sides are deterministic), sequence wrap with a non-zero starting ROC, and
//! authentication-only SRTCP. Seeded RNG: failures reproduce.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_core::srtp::provider::RustCrypto;
use sluice_core::srtp::{Profile, RtcpRecvState, RtcpSendState, RtpRecvState, RtpSendState, SrtpKeys};
use sluice_libsrtp::{Direction, LibProfile, LibSrtp, SRTP_MAX_TRAILER_LEN};

const PROFILES: [(Profile, LibProfile); 4] = [
    (Profile::AesCm128HmacSha1_80, LibProfile::AesCm128HmacSha1_80),
    (Profile::AesCm128HmacSha1_32, LibProfile::AesCm128HmacSha1_32),
    (Profile::AeadAes128Gcm, LibProfile::AeadAes128Gcm),
    (Profile::AeadAes256Gcm, LibProfile::AeadAes256Gcm),
];

const BUF: usize = 2048;

fn random_rtp(rng: &mut ChaCha8Rng, seq: u16, ssrc: u32, out: &mut [u8; BUF]) -> usize {
    let cc = rng.random_range(0..=15u8);
    let ext = rng.random_bool(0.5);
    let marker = if rng.random_bool(0.3) { 0x80 } else { 0 };
    out[0] = 0x80 | if ext { 0x10 } else { 0 } | cc;
    out[1] = marker | rng.random_range(0..128u8);
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    rng.fill_bytes(&mut out[4..8]);
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let mut len = 12;
    rng.fill_bytes(&mut out[len..len + 4 * usize::from(cc)]);
    len += 4 * usize::from(cc);
    if ext {
        let words = rng.random_range(0..=8u16);
        out[len..len + 2].copy_from_slice(&[0xbe, 0xde]);
        out[len + 2..len + 4].copy_from_slice(&words.to_be_bytes());
        len += 4;
        rng.fill_bytes(&mut out[len..len + 4 * usize::from(words)]);
        len += 4 * usize::from(words);
    }
    let payload = if rng.random_bool(0.1) { 0 } else { rng.random_range(1..=1300) };
    rng.fill_bytes(&mut out[len..len + payload]);
    len + payload
}

fn random_rtcp(rng: &mut ChaCha8Rng, ssrc: u32, out: &mut [u8; BUF]) -> usize {
    let words = rng.random_range(1..=200usize);
    out[0] = 0x80 | rng.random_range(0..32u8);
    out[1] = rng.random_range(200..=206u8);
    out[2..4].copy_from_slice(&(words as u16).to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    let len = 4 + 4 * words;
    rng.fill_bytes(&mut out[8..len]);
    len
}

struct Pair {
    ours: SrtpKeys,
    ours_rc: SrtpKeys<RustCrypto>,
    lib_tx: LibSrtp,
    lib_rx: LibSrtp,
}

fn setup(rng: &mut ChaCha8Rng, profile: Profile, lib: LibProfile, ssrc: u32, srtcp_encrypt: bool) -> Pair {
    let mut key = vec![0u8; profile.key_len()];
    let mut salt = vec![0u8; profile.salt_len()];
    rng.fill_bytes(&mut key);
    rng.fill_bytes(&mut salt);
    let mut ours = SrtpKeys::new(profile, &key, &salt).unwrap();
    let mut ours_rc = SrtpKeys::<RustCrypto>::with_provider(profile, &key, &salt).unwrap();
    ours.set_rtcp_encryption(srtcp_encrypt);
    ours_rc.set_rtcp_encryption(srtcp_encrypt);
    let mk = |d| LibSrtp::with_options(lib, &key, &salt, ssrc, d, 0, srtcp_encrypt).unwrap();
    Pair { ours, ours_rc, lib_tx: mk(Direction::Outbound), lib_rx: mk(Direction::Inbound) }
}

/// Runs `count` RTP packets from `start_seq` in rollover period `roc` through both stacks.
fn rtp_run(seed: u64, profile: Profile, lib: LibProfile, roc: u32, start_seq: u16, count: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ssrc = rng.next_u32();
    let mut p = setup(&mut rng, profile, lib, ssrc, true);
    if roc != 0 {
        p.lib_tx.set_roc(ssrc, roc).unwrap();
        p.lib_rx.set_roc(ssrc, roc).unwrap();
    }
    let mut tx = RtpSendState::with_roc(roc);
    let mut tx_rc = RtpSendState::with_roc(roc);
    let mut rx = RtpRecvState::with_roc(roc, 128);
    let mut plain = [0u8; BUF];
    let mut seq = start_seq;
    for i in 0..count {
        let ctx = format!("seed {seed} {profile:?} packet {i} seq {seq}");
        let len = random_rtp(&mut rng, seq, ssrc, &mut plain);

        let mut ours = plain;
        let n = p.ours.protect_rtp(&mut tx, &mut ours, len).expect(&ctx);
        assert_eq!(n, len + profile.rtp_overhead(), "{ctx}");
        let mut ours_rc = plain;
        let n_rc = p.ours_rc.protect_rtp(&mut tx_rc, &mut ours_rc, len).expect(&ctx);
        let mut theirs = [0u8; BUF + SRTP_MAX_TRAILER_LEN];
        theirs[..len].copy_from_slice(&plain[..len]);
        let m = p.lib_tx.protect(&mut theirs, len).expect(&ctx);
        assert_eq!(ours[..n], theirs[..m], "{ctx}: protected bytes differ from libsrtp");
        assert_eq!(ours_rc[..n_rc], theirs[..m], "{ctx}: rustcrypto provider differs");

        // ours -> libsrtp
        let mut b = [0u8; BUF + SRTP_MAX_TRAILER_LEN];
        b[..n].copy_from_slice(&ours[..n]);
        let k = p.lib_rx.unprotect(&mut b, n).expect(&ctx);
        assert_eq!(b[..k], plain[..len], "{ctx}: libsrtp unprotect");
        // libsrtp -> ours
        let k = p.ours.unprotect_rtp(&mut rx, &mut theirs, m).expect(&ctx);
        assert_eq!(theirs[..k], plain[..len], "{ctx}: our unprotect");

        // Skip a few sequence numbers now and then (loss), never more than the window.
        seq = seq.wrapping_add(if rng.random_bool(0.05) { rng.random_range(2..50) } else { 1 });
    }
}

#[test]
fn rtp_random_packets_every_profile() {
    for (i, (profile, lib)) in PROFILES.into_iter().enumerate() {
        rtp_run(100 + i as u64, profile, lib, 0, 1, 3000);
    }
}

#[test]
fn rtp_sequence_wrap_and_rollover() {
    for (i, (profile, lib)) in PROFILES.into_iter().enumerate() {
        // Wrap from ROC 0 to 1, and from a large signalled ROC.
        rtp_run(200 + i as u64, profile, lib, 0, u16::MAX - 1499, 3000);
        rtp_run(300 + i as u64, profile, lib, 0x00ab_cdef, u16::MAX - 699, 1500);
    }
}

#[test]
fn rtp_full_sequence_cycle() {
    // Through all 65536 sequence numbers and beyond, for one CM and one GCM profile.
    for (i, (profile, lib)) in [PROFILES[0], PROFILES[2]].into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(400 + i as u64);
        let ssrc = rng.next_u32();
        let mut p = setup(&mut rng, profile, lib, ssrc, true);
        let mut tx = RtpSendState::new();
        let mut rx = RtpRecvState::new(128);
        let mut pkt = [0u8; BUF + SRTP_MAX_TRAILER_LEN];
        for s in 0..70_000u32 {
            let seq = (s % 65536) as u16;
            let hdr = [0x80, 96];
            pkt[..2].copy_from_slice(&hdr);
            pkt[2..4].copy_from_slice(&seq.to_be_bytes());
            pkt[4..8].copy_from_slice(&s.to_be_bytes());
            pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
            pkt[12..44].fill(s as u8);
            let mut ours = pkt;
            let n = p.ours.protect_rtp(&mut tx, &mut ours, 44).unwrap();
            let m = p.lib_tx.protect(&mut pkt, 44).unwrap();
            assert_eq!(ours[..n], pkt[..m], "{profile:?} seq {s}");
            let k = p.lib_rx.unprotect(&mut ours, n).unwrap();
            assert_eq!(k, 44);
            let k = p.ours.unprotect_rtp(&mut rx, &mut pkt, m).unwrap();
            assert_eq!(k, 44);
        }
        assert_eq!(tx.roc(), 1);
        assert_eq!(rx.roc(), 1);
    }
}

fn rtcp_run(seed: u64, profile: Profile, lib: LibProfile, encrypt: bool, count: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ssrc = rng.next_u32();
    let mut p = setup(&mut rng, profile, lib, ssrc, encrypt);
    let mut tx = RtcpSendState::new();
    let mut tx_rc = RtcpSendState::new();
    let mut rx = RtcpRecvState::new(128);
    let mut plain = [0u8; BUF];
    for i in 0..count {
        let ctx = format!("seed {seed} {profile:?} E={encrypt} rtcp {i}");
        let len = random_rtcp(&mut rng, ssrc, &mut plain);
        let mut ours = plain;
        let n = p.ours.protect_rtcp(&mut tx, &mut ours, len).expect(&ctx);
        assert_eq!(n, len + profile.rtcp_overhead(), "{ctx}");
        let mut ours_rc = plain;
        let n_rc = p.ours_rc.protect_rtcp(&mut tx_rc, &mut ours_rc, len).expect(&ctx);
        let mut theirs = [0u8; BUF + SRTP_MAX_TRAILER_LEN];
        theirs[..len].copy_from_slice(&plain[..len]);
        let m = p.lib_tx.protect_rtcp(&mut theirs, len).expect(&ctx);
        assert_eq!(ours[..n], theirs[..m], "{ctx}: protected bytes differ from libsrtp");
        assert_eq!(ours_rc[..n_rc], theirs[..m], "{ctx}: rustcrypto provider differs");

        let mut b = [0u8; BUF + SRTP_MAX_TRAILER_LEN];
        b[..n].copy_from_slice(&ours[..n]);
        let k = p.lib_rx.unprotect_rtcp(&mut b, n).expect(&ctx);
        assert_eq!(b[..k], plain[..len], "{ctx}: libsrtp unprotect");
        let k = p.ours.unprotect_rtcp(&mut rx, &mut theirs, m).expect(&ctx);
        assert_eq!(theirs[..k], plain[..len], "{ctx}: our unprotect");
    }
}

#[test]
fn rtcp_random_packets_every_profile() {
    for (i, (profile, lib)) in PROFILES.into_iter().enumerate() {
        rtcp_run(500 + i as u64, profile, lib, true, 2000);
        rtcp_run(600 + i as u64, profile, lib, false, 500);
    }
}

#[test]
fn tampered_packets_rejected_by_both() {
    for (i, (profile, lib)) in PROFILES.into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(700 + i as u64);
        let ssrc = rng.next_u32();
        let mut p = setup(&mut rng, profile, lib, ssrc, true);
        let mut tx = RtpSendState::new();
        let mut rx = RtpRecvState::new(128);
        let mut plain = [0u8; BUF];
        for seq in 1..300u16 {
            let len = random_rtp(&mut rng, seq, ssrc, &mut plain);
            let mut ours = plain;
            let n = p.ours.protect_rtp(&mut tx, &mut ours, len).unwrap();
            let at = rng.random_range(0..n);
            ours[at] ^= 1 << rng.random_range(0..8);
            let mut b = [0u8; BUF + SRTP_MAX_TRAILER_LEN];
            b[..n].copy_from_slice(&ours[..n]);
            assert!(p.lib_rx.unprotect(&mut b, n).is_err(), "{profile:?} libsrtp byte {at}");
            assert!(p.ours.unprotect_rtp(&mut rx, &mut ours, n).is_err(), "{profile:?} ours byte {at}");
        }
    }
}
