//! RFC 3711 Appendix B, RFC 6188 §7.2 and RFC 7714 §16/§17 vectors, plus ROC estimation and
//! malformed-input cases.

use super::provider::{AesCtr, AwsLc, CryptoProvider, RustCrypto};
use super::*;

fn h(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).unwrap()
}

// RFC 3711 §B.2: AES-CM keystream, session key 2B7E..., salt F0..FD, SSRC 0, index 0.
fn b2<P: CryptoProvider>() {
    let ctr = P::Ctr::new(&h("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap();
    let salt: [u8; 14] = h("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
    let iv = cm_iv(&salt, 0, 0);
    assert_eq!(iv.to_vec(), h("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"));
    let mut ks = vec![0u8; 65282 * 16];
    ctr.apply_keystream(&iv, &mut ks);
    assert_eq!(
        ks[..48],
        h("E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB
           41E95B3BB0A2E8DD477901E4FCA894C0")[..]
    );
    assert_eq!(
        ks[ks.len() - 48..],
        h("EC8CDF7398607CB0F2D21675EA9EA1E4 362B7C3C6773516318A077D7FC5073AE
           6A2CC3787889374FBEB4C81B17BA6C44")[..]
    );
}

#[test]
fn rfc3711_b2_aes_cm_keystream() {
    b2::<AwsLc>();
    b2::<RustCrypto>();
}

fn kdf_case<P: CryptoProvider>(mk: &str, ms: &str, enc: &str, salt: &str, auth: &str) {
    let mk = h(mk);
    let ms = h(ms);
    let master = P::Ctr::new(&mk).unwrap();
    let mut k = vec![0u8; mk.len()];
    kdf::derive(&master, &ms, Label::RtpEncryption, &mut k);
    assert_eq!(k, h(enc));
    let mut s = [0u8; 14];
    kdf::derive(&master, &ms, Label::RtpSalt, &mut s);
    assert_eq!(s.to_vec(), h(salt));
    let mut a = [0u8; 20];
    kdf::derive(&master, &ms, Label::RtpAuth, &mut a);
    assert_eq!(a.to_vec(), h(auth));
}

// RFC 3711 §B.3: key derivation.
#[test]
fn rfc3711_b3_key_derivation() {
    let v = (
        "E1F97A0D3E018BE0D64FA32C06DE4139",
        "0EC675AD498AFEEBB6960B3AABE6",
        "C61E7A93744F39EE10734AFE3FF7A087",
        "30CBBC08863D8C85D49DB34A9AE1",
        "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4",
    );
    kdf_case::<AwsLc>(v.0, v.1, v.2, v.3, v.4);
    kdf_case::<RustCrypto>(v.0, v.1, v.2, v.3, v.4);
    // The full 94-octet auth keystream the appendix prints.
    let master = <AwsLc as CryptoProvider>::Ctr::new(&h(v.0)).unwrap();
    let mut a = [0u8; 94];
    kdf::derive(&master, &h(v.1), Label::RtpAuth, &mut a);
    assert_eq!(
        a.to_vec(),
        h("CEBE321F6FF7716B6FD4AB49AF256A15 6D38BAA48F0A0ACF3C34E2359E6CDBCE
           E049646C43D9327AD175578EF7227098 6371C10C9A369AC2F94A8C5FBCDDDC25
           6D6E919A48B610EF17C2041E47403576 6B68642C59BBFC2F34DB60DBDFB2")
    );
}

// RFC 6188 §7.2: the same PRF with an AES-256 master key (what AEAD_AES_256_GCM relies on).
#[test]
fn rfc6188_7_2_aes256_key_derivation() {
    let v = (
        "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6",
        "3b04803de51ee7c96423ab5b78d2",
        "5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4",
        "fa31791685ca444a9e07c6c64e93",
        "fd9c32d39ed5fbb5a9dc96b30818454d1313dc05",
    );
    kdf_case::<AwsLc>(v.0, v.1, v.2, v.3, v.4);
    kdf_case::<RustCrypto>(v.0, v.1, v.2, v.3, v.4);
}

const GCM_KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
const GCM_KEY_256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const GCM_SALT: &str = "517569642070726f2071756f";
// RFC 7714 §16: SSRC 5501a0b2, seq f17b, ROC 0, "Gallia est omnis divisa in partes tres".
const RTP_PLAIN: &str = "8040f17b8041f8d35501a0b247616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573";
const SRTP_128: &str = "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce";
const SRTP_256: &str = "8040f17b8041f8d35501a0b232b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a0276ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13";
// RFC 7714 §17: SSRC "Mars", SRTCP index 0x5d4.
const RTCP_PLAIN: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
const SRTCP_128: &str =
    "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4";
const SRTCP_256: &str =
    "81c8000d4d617273d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1110555be8415f658c61de0476f1b6fad1d1eb30c4446839f57ff6f6cb26ac3be800005d4";
const SRTCP_128_AUTH_ONLY: &str =
    "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61deadbeefdeadbeefdeadbeefdeadbeefdeadbeef841dd9683dd78ec92ae58790125f62b3000005d4";

fn gcm_keys<P: CryptoProvider>(profile: Profile) -> SrtpKeys<P> {
    let key = if profile == Profile::AeadAes256Gcm { GCM_KEY_256 } else { GCM_KEY_128 };
    SrtpKeys::<P>::from_session_keys(profile, &h(key), &h(GCM_SALT), &[])
}

fn rfc7714_srtp<P: CryptoProvider>(profile: Profile, expected: &str) {
    let keys = gcm_keys::<P>(profile);
    let plain = h(RTP_PLAIN);
    let expected = h(expected);
    let mut buf = [0u8; 256];
    buf[..plain.len()].copy_from_slice(&plain);
    let mut tx = RtpSendState::new();
    let n = keys.protect_rtp(&mut tx, &mut buf, plain.len()).unwrap();
    assert_eq!(buf[..n], expected[..], "{profile:?} protect");

    let mut rx = RtpRecvState::new(128);
    let mut pkt = expected.clone();
    let n = keys.unprotect_rtp(&mut rx, &mut pkt, expected.len()).unwrap();
    assert_eq!(pkt[..n], plain[..], "{profile:?} unprotect");

    // Replayed: the same packet again is rejected before any crypto.
    let mut pkt = expected.clone();
    assert_eq!(keys.unprotect_rtp(&mut rx, &mut pkt, expected.len()), Err(SrtpError::Replayed));

    // Tampered tag, ciphertext and header are rejected and do not move the window.
    for at in [expected.len() - 1, 20, 1] {
        let mut rx = RtpRecvState::new(128);
        let mut pkt = expected.clone();
        pkt[at] ^= 0x01;
        assert_eq!(keys.unprotect_rtp(&mut rx, &mut pkt, expected.len()), Err(SrtpError::AuthFailed), "{profile:?} tamper at {at}");
        assert_eq!(rx.window().highest(), None);
        let mut pkt = expected.clone();
        keys.unprotect_rtp(&mut rx, &mut pkt, expected.len()).unwrap();
    }
}

/// `protect_rtp_from` (payload encrypted straight from a separate buffer) gives exactly the bytes
/// `protect_rtp` gives for the same packet, for every profile and both providers; the RFC 7714
/// vector through it too.
fn protect_from_matches<P: CryptoProvider>() {
    let key: Vec<u8> = (0..32u8).collect();
    let salt: Vec<u8> = (0..14u8).map(|b| b.wrapping_mul(7)).collect();
    for profile in ALL {
        let keys = SrtpKeys::<P>::with_provider(profile, &key[..profile.key_len()], &salt[..profile.salt_len()]).unwrap();
        for (seq, payload) in [(1u16, 0usize), (2, 1), (3, 15), (4, 160), (5, 1200)] {
            let p = rtp_packet(seq, 0x5eed, payload);
            let hl = 12 + 8 + 8;
            let len = p.len() - 16;
            let (mut a, mut b) = ([0u8; 1500], [0xeeu8; 1500]);
            a[..len].copy_from_slice(&p[..len]);
            let (mut sa, mut sb) = (RtpSendState::new(), RtpSendState::new());
            let na = keys.protect_rtp(&mut sa, &mut a, len).unwrap();
            b[..hl].copy_from_slice(&p[..hl]);
            let nb = keys.protect_rtp_from(&mut sb, &mut b, hl, &p[hl..len]).unwrap();
            assert_eq!((nb, &b[..nb]), (na, &a[..na]), "{profile:?}, {payload}-byte payload");
        }
        // A header length that is not the header's, and a buffer too short for the tag.
        let p = rtp_packet(9, 1, 10);
        let mut b = [0u8; 64];
        b[..28].copy_from_slice(&p[..28]);
        assert_eq!(keys.protect_rtp_from(&mut RtpSendState::new(), &mut b, 24, &p[24..38]), Err(SrtpError::Malformed));
        assert_eq!(keys.protect_rtp_from(&mut RtpSendState::new(), &mut b[..40], 28, &p[28..38]), Err(SrtpError::BufferTooSmall));
    }
    for (profile, expected) in [(Profile::AeadAes128Gcm, SRTP_128), (Profile::AeadAes256Gcm, SRTP_256)] {
        let keys = gcm_keys::<P>(profile);
        let plain = h(RTP_PLAIN);
        let mut buf = [0u8; 256];
        buf[..12].copy_from_slice(&plain[..12]);
        let n = keys.protect_rtp_from(&mut RtpSendState::new(), &mut buf, 12, &plain[12..]).unwrap();
        assert_eq!(buf[..n], h(expected)[..], "{profile:?} RFC 7714 vector, out of place");
    }
}

#[test]
fn protect_rtp_from_is_protect_rtp() {
    protect_from_matches::<AwsLc>();
    protect_from_matches::<RustCrypto>();
}

#[test]
fn rfc7714_16_srtp_gcm() {
    rfc7714_srtp::<AwsLc>(Profile::AeadAes128Gcm, SRTP_128);
    rfc7714_srtp::<AwsLc>(Profile::AeadAes256Gcm, SRTP_256);
    rfc7714_srtp::<RustCrypto>(Profile::AeadAes128Gcm, SRTP_128);
    rfc7714_srtp::<RustCrypto>(Profile::AeadAes256Gcm, SRTP_256);
}

fn rfc7714_srtcp<P: CryptoProvider>(profile: Profile, expected: &str, encrypt: bool) {
    let mut keys = gcm_keys::<P>(profile);
    keys.set_rtcp_encryption(encrypt);
    let plain = h(RTCP_PLAIN);
    let expected = h(expected);
    let mut buf = [0u8; 256];
    buf[..plain.len()].copy_from_slice(&plain);
    let mut tx = RtcpSendState::with_next_index(0x5d4);
    let n = keys.protect_rtcp(&mut tx, &mut buf, plain.len()).unwrap();
    assert_eq!(hex::encode(&buf[..n]), hex::encode(&expected), "{profile:?} protect");
    assert_eq!(tx.next_index(), 0x5d5);

    let mut rx = RtcpRecvState::new(128);
    let mut pkt = expected.clone();
    let n = keys.unprotect_rtcp(&mut rx, &mut pkt, expected.len()).unwrap();
    assert_eq!(pkt[..n], plain[..], "{profile:?} unprotect");

    let mut pkt = expected.clone();
    assert_eq!(keys.unprotect_rtcp(&mut rx, &mut pkt, expected.len()), Err(SrtpError::Replayed));

    // Tampered tag, body, E flag/index: rejected without moving the window.
    for at in [expected.len() - 5, 10, expected.len() - 4, expected.len() - 1] {
        let mut rx = RtcpRecvState::new(128);
        let mut pkt = expected.clone();
        pkt[at] ^= 0x80;
        assert_eq!(keys.unprotect_rtcp(&mut rx, &mut pkt, expected.len()), Err(SrtpError::AuthFailed), "{profile:?} tamper at {at}");
        assert_eq!(rx.window().highest(), None);
    }
}

#[test]
fn rfc7714_17_srtcp_gcm() {
    rfc7714_srtcp::<AwsLc>(Profile::AeadAes128Gcm, SRTCP_128, true);
    rfc7714_srtcp::<AwsLc>(Profile::AeadAes256Gcm, SRTCP_256, true);
    rfc7714_srtcp::<AwsLc>(Profile::AeadAes128Gcm, SRTCP_128_AUTH_ONLY, false);
    rfc7714_srtcp::<RustCrypto>(Profile::AeadAes128Gcm, SRTCP_128, true);
    rfc7714_srtcp::<RustCrypto>(Profile::AeadAes256Gcm, SRTCP_256, true);
    rfc7714_srtcp::<RustCrypto>(Profile::AeadAes128Gcm, SRTCP_128_AUTH_ONLY, false);
}

#[test]
fn roc_estimation_edges() {
    // RFC 3711 §3.3.1 cases around the half-space boundary.
    assert_eq!(estimate_roc(5, 100, 101), Ok(5));
    assert_eq!(estimate_roc(5, 100, 100 + 0x8000), Ok(5));
    assert_eq!(estimate_roc(5, 100, 101 + 0x8000), Ok(4));
    assert_eq!(estimate_roc(5, 0, 0xffff), Ok(4));
    assert_eq!(estimate_roc(0, 0, 0xffff), Err(SrtpError::IndexTooOld));
    assert_eq!(estimate_roc(5, 0xffff, 0), Ok(6));
    assert_eq!(estimate_roc(5, 0xffff, 0x7fff), Ok(5));
    assert_eq!(estimate_roc(5, 0xffff, 0x7ffe), Ok(6));
    assert_eq!(estimate_roc(5, 0x8000, 0), Ok(5));
    assert_eq!(estimate_roc(u32::MAX, 0xffff, 0), Err(SrtpError::KeyExhausted));
}

#[test]
fn rollover_and_reorder_across_wrap() {
    for profile in ALL {
        let keys = keys_for(profile);
        let mut tx = RtpSendState::with_roc(7);
        let mut rx = RtpRecvState::with_roc(7, 128);
        let mut sent = Vec::new();
        for seq in (0xff80u32..0x1_0048).map(|s| s as u16) {
            let mut buf = rtp_packet(seq, 0xdead_beef, 100);
            let len = buf.len() - 16;
            let n = keys.protect_rtp(&mut tx, &mut buf, len).unwrap();
            buf.truncate(n);
            sent.push(buf);
        }
        assert_eq!(tx.roc(), 8);
        // Deliver with a local reorder across the wrap: swap each pair, and hold one packet
        // from just before the wrap back by 20 places.
        let mut order: Vec<usize> = (0..sent.len()).map(|i| i ^ 1).collect();
        let held = order.remove(125);
        order.insert(145, held);
        for p in order.into_iter().map(|i| &sent[i]) {
            let mut b = p.clone();
            let n = b.len();
            keys.unprotect_rtp(&mut rx, &mut b, n).unwrap();
        }
        assert_eq!(rx.roc(), 8);
        // A late packet from before the wrap still decodes with ROC 7 but is a replay now.
        let mut b = sent[0].clone();
        let n = b.len();
        assert_eq!(keys.unprotect_rtp(&mut rx, &mut b, n), Err(SrtpError::IndexTooOld));
        let mut b = sent[100].clone();
        let n = b.len();
        assert_eq!(keys.unprotect_rtp(&mut rx, &mut b, n), Err(SrtpError::Replayed));
    }
}

const ALL: [Profile; 4] = [Profile::AesCm128HmacSha1_80, Profile::AesCm128HmacSha1_32, Profile::AeadAes128Gcm, Profile::AeadAes256Gcm];

fn keys_for(profile: Profile) -> SrtpKeys {
    let key: Vec<u8> = (0..profile.key_len() as u8).collect();
    let salt: Vec<u8> = (0..profile.salt_len() as u8).map(|b| b.wrapping_mul(7)).collect();
    SrtpKeys::new(profile, &key, &salt).unwrap()
}

/// RTP packet with 2 CSRCs and a one-word extension, plus 16 spare bytes.
fn rtp_packet(seq: u16, ssrc: u32, payload: usize) -> Vec<u8> {
    let mut p = vec![0x92, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&1234u32.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]);
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
    p.extend((0..payload).map(|i| i as u8));
    p.extend_from_slice(&[0; 16]);
    p
}

#[test]
fn every_truncation_is_a_verdict_not_a_panic() {
    for profile in ALL {
        let keys = keys_for(profile);
        let mut buf = rtp_packet(1, 2, 40);
        let len = buf.len() - 16;
        let n = keys.protect_rtp(&mut RtpSendState::new(), &mut buf, len).unwrap();
        for cut in 0..n {
            let mut b = buf.clone();
            let mut rx = RtpRecvState::default();
            assert!(keys.unprotect_rtp(&mut rx, &mut b, cut).is_err());
            // Protect of a truncated plaintext must not panic either.
            let mut b = buf.clone();
            let _ = keys.protect_rtp(&mut RtpSendState::new(), &mut b, cut.min(len));
        }
        // len beyond the buffer, and a buffer without tag room.
        let mut b = buf.clone();
        assert_eq!(keys.unprotect_rtp(&mut RtpRecvState::default(), &mut b, n + 100), Err(SrtpError::BufferTooSmall));
        let mut b = buf[..len].to_vec();
        assert_eq!(keys.protect_rtp(&mut RtpSendState::new(), &mut b, len), Err(SrtpError::BufferTooSmall));

        let rtcp = h(RTCP_PLAIN);
        let mut buf = rtcp.clone();
        buf.resize(rtcp.len() + 32, 0);
        let n = keys.protect_rtcp(&mut RtcpSendState::new(), &mut buf, rtcp.len()).unwrap();
        for cut in 0..n {
            let mut b = buf.clone();
            assert!(keys.unprotect_rtcp(&mut RtcpRecvState::default(), &mut b, cut).is_err());
            let mut b = buf.clone();
            let _ = keys.protect_rtcp(&mut RtcpSendState::new(), &mut b, cut.min(rtcp.len()));
        }
    }
}

#[test]
fn header_length_helper() {
    assert_eq!(rtp_header_len(&[0x80; 11]), Err(SrtpError::TooShort));
    assert_eq!(rtp_header_len(&[0x40; 12]), Err(SrtpError::Malformed));
    assert_eq!(rtp_header_len(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Ok(12));
    let mut p = [0u8; 16];
    p[0] = 0x81;
    assert_eq!(rtp_header_len(&p), Ok(16));
    p[0] = 0x82;
    assert_eq!(rtp_header_len(&p), Err(SrtpError::Malformed));
    p[0] = 0x90;
    assert_eq!(rtp_header_len(&p), Ok(16)); // extension of 0 words
    p[15] = 1;
    assert_eq!(rtp_header_len(&p), Err(SrtpError::Malformed));
    let pkt = rtp_packet(1, 2, 0);
    assert_eq!(rtp_header_len(&pkt[..pkt.len() - 16]), Ok(28));
}

#[test]
fn key_errors_name_the_problem() {
    assert_eq!(
        SrtpKeys::new(Profile::AeadAes256Gcm, &[0; 16], &[0; 12]).unwrap_err(),
        SrtpKeyError::MasterKeyLength { profile: Profile::AeadAes256Gcm, expected: 32, got: 16 }
    );
    assert_eq!(
        SrtpKeys::new(Profile::AesCm128HmacSha1_80, &[0; 16], &[0; 12]).unwrap_err(),
        SrtpKeyError::MasterSaltLength { profile: Profile::AesCm128HmacSha1_80, expected: 14, got: 12 }
    );
}

#[test]
fn srtcp_index_exhaustion_and_window() {
    let keys = keys_for(Profile::AesCm128HmacSha1_80);
    let rtcp = h(RTCP_PLAIN);
    let mut tx = RtcpSendState::with_next_index(SRTCP_INDEX_MASK);
    let mut buf = rtcp.clone();
    buf.resize(rtcp.len() + 32, 0);
    keys.protect_rtcp(&mut tx, &mut buf, rtcp.len()).unwrap();
    let mut buf = rtcp.clone();
    buf.resize(rtcp.len() + 32, 0);
    assert_eq!(keys.protect_rtcp(&mut tx, &mut buf, rtcp.len()), Err(SrtpError::KeyExhausted));

    // Out-of-order SRTCP within the window is accepted once; far behind is too old.
    let mut tx = RtcpSendState::new();
    let mut rx = RtcpRecvState::new(64);
    let pkts: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let mut b = rtcp.clone();
            b.resize(rtcp.len() + 32, 0);
            let n = keys.protect_rtcp(&mut tx, &mut b, rtcp.len()).unwrap();
            b.truncate(n);
            b
        })
        .collect();
    let mut un = |i: usize| {
        let mut b = pkts[i].clone();
        let n = b.len();
        keys.unprotect_rtcp(&mut rx, &mut b, n).map(|n| b[..n] == rtcp[..])
    };
    assert_eq!(un(150), Ok(true));
    assert_eq!(un(100), Ok(true));
    assert_eq!(un(100), Err(SrtpError::Replayed));
    assert_eq!(un(86), Err(SrtpError::IndexTooOld));
    assert_eq!(un(199), Ok(true));
}

#[test]
fn random_garbage_is_a_verdict() {
    use rand::{Rng, RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for profile in ALL {
        let keys = keys_for(profile);
        let mut rx = RtpRecvState::default();
        let mut crx = RtcpRecvState::default();
        let mut buf = [0u8; 300];
        for _ in 0..5000 {
            let len = rng.random_range(0..=buf.len());
            rng.fill_bytes(&mut buf[..len]);
            if rng.random_bool(0.7) {
                buf[0] = buf[0] & 0x3f | 0x80;
            }
            assert!(keys.unprotect_rtp(&mut rx, &mut buf, len).is_err());
            rng.fill_bytes(&mut buf[..len]);
            assert!(keys.unprotect_rtcp(&mut crx, &mut buf, len).is_err());
            let plen = rng.random_range(0..=buf.len());
            let _ = keys.protect_rtp(&mut RtpSendState::new(), &mut buf, plen);
            let _ = keys.protect_rtcp(&mut RtcpSendState::new(), &mut buf, plen);
        }
        assert_eq!(rx.window().highest(), None);
        assert_eq!(crx.window().highest(), None);
    }
}

#[test]
fn profile_parameters() {
    for p in ALL {
        assert_eq!(Profile::from_dtls_id(p.dtls_id()), Some(p));
    }
    assert_eq!(Profile::from_dtls_id(0x0003), None);
    let lens: Vec<_> = ALL.iter().map(|p| (p.key_len(), p.salt_len(), p.rtp_overhead(), p.rtcp_overhead())).collect();
    assert_eq!(lens, [(16, 14, 10, 14), (16, 14, 4, 14), (16, 12, 16, 20), (32, 12, 16, 20)]);
}

/// The profile "none" of a plain-RTP leg: protect leaves the packet as it was and appends
/// nothing (RTP in place and from a separate payload, RTCP), and unprotect refuses everything.
#[test]
fn plain_keys_protect_as_the_identity_and_authenticate_nothing() {
    let keys = SrtpKeys::<AwsLc>::plain();
    assert!(keys.is_plain());
    assert_eq!((keys.profile(), keys.rtp_overhead(), keys.rtcp_overhead()), (None, 0, 0));
    let mut st = RtpSendState::new();
    for (seq, payload) in [(1u16, 0usize), (2, 1), (3, 160), (4, 1200)] {
        let p = rtp_packet(seq, 0x5eed, payload);
        let len = p.len() - 16;
        let mut a = [0u8; 1500];
        a[..len].copy_from_slice(&p[..len]);
        assert_eq!(keys.protect_rtp(&mut st, &mut a, len), Ok(len));
        assert_eq!(a[..len], p[..len]);
        let hl = 12 + 8 + 8;
        let mut b = [0xeeu8; 1500];
        b[..hl].copy_from_slice(&p[..hl]);
        assert_eq!(keys.protect_rtp_from(&mut RtpSendState::new(), &mut b, hl, &p[hl..len]), Ok(len));
        assert_eq!(b[..len], p[..len], "{payload}-byte payload from a separate buffer");
        let mut rx = RtpRecvState::new(128);
        assert_eq!(keys.unprotect_rtp(&mut rx, &mut a, len), Err(SrtpError::AuthFailed));
        assert_eq!(rx.window().highest(), None, "nothing accepted");
    }
    assert_eq!(st.last_index(), Some(4), "the send state still follows the stream");
    let rr = [0x80, 201, 0, 1, 0, 0, 0, 7];
    let mut buf = [0u8; 64];
    buf[..8].copy_from_slice(&rr);
    assert_eq!(keys.protect_rtcp(&mut RtcpSendState::new(), &mut buf, 8), Ok(8));
    assert_eq!(buf[..8], rr);
    assert_eq!(keys.unprotect_rtcp(&mut RtcpRecvState::new(128), &mut buf, 8), Err(SrtpError::AuthFailed));
    // Exact-size buffers suffice: nothing is appended.
    let p = rtp_packet(5, 1, 10);
    let mut exact = p[..p.len() - 16].to_vec();
    let n = exact.len();
    assert_eq!(keys.protect_rtp(&mut RtpSendState::new(), &mut exact, n), Ok(n));
}
