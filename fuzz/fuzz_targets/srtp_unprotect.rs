//! SRTP and SRTCP unprotect of arbitrary bytes under every profile: a verdict, never a panic,
//! and never a claimed plaintext longer than the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_core::srtp::{Profile, RtcpRecvState, RtpRecvState, SrtpKeys};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let profile = match sel % 4 {
        0 => Profile::AesCm128HmacSha1_80,
        1 => Profile::AesCm128HmacSha1_32,
        2 => Profile::AeadAes128Gcm,
        _ => Profile::AeadAes256Gcm,
    };
    let keys = SrtpKeys::new(profile, &[7u8; 32][..profile.key_len()], &[9u8; 14][..profile.salt_len()]).unwrap();
    let mut buf = bytes.to_vec();
    let len = buf.len();
    if sel & 0x80 == 0 {
        let mut st = RtpRecvState::new(128);
        if let Ok(n) = keys.unprotect_rtp(&mut st, &mut buf, len) {
            assert!(n <= len);
        }
    } else {
        let mut st = RtcpRecvState::new(128);
        if let Ok(n) = keys.unprotect_rtcp(&mut st, &mut buf, len) {
            assert!(n <= len);
        }
    }
});
