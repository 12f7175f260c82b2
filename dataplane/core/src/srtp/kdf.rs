//! The SRTP key derivation function with key_derivation_rate 0 (RFC 3711 §4.3).
//!
//! ```text
//!   key_id = label || r          (r = index DIV kdr = 0, 48 bits)
//!   x      = key_id XOR master_salt     (key_id right-aligned in the 112-bit salt)
//!   out    = AES-CM(master_key, IV = x * 2^16)   truncated to the wanted length
//!
//!   IV byte:  0 .. 6  7      8 .. 13        14 15
//!             salt    salt^label  salt     00 00
//! ```
//!
//! The same PRF serves AES-256 master keys (RFC 6188 §7.2). For the AEAD profiles the master
//! salt is 96 bits (RFC 7714 §11); like libsrtp we place it at the front of the 112-bit field
//! and zero-pad the last two octets, and the session salt is the first 12 keystream octets.
//! The libsrtp interop test pins this interpretation.

use super::provider::AesCtr;

/// RFC 3711 §4.3.1 / §4.3.2 labels.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(crate) enum Label {
    RtpEncryption = 0,
    RtpAuth = 1,
    RtpSalt = 2,
    RtcpEncryption = 3,
    RtcpAuth = 4,
    RtcpSalt = 5,
}

/// Fills `out` with the PRF output for `label`. `master_salt` is at most 14 octets.
pub(crate) fn derive<C: AesCtr>(master: &C, master_salt: &[u8], label: Label, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label as u8;
    out.fill(0);
    master.apply_keystream(&iv, out);
}
