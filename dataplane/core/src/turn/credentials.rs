//! Long-term credentials (RFC 8489 §9.2) in the time-limited shared-secret form of the "TURN REST
//! API" convention (draft-uberti-behave-turn-rest, as coturn's `use-auth-secret` implements it):
//!
//! ```text
//!   username = "<expiry, unix seconds>:<user>"
//!   password = base64(HMAC-SHA1(shared secret, username))
//!   key      = MD5(username ":" realm ":" password)          (RFC 8489 §9.2.2)
//! ```
//!
//! The signaling service hands out `(username, password)` from [`rest_api_credentials`]; the
//! server recomputes the password from the username and the shared secret, so it keeps no user
//! database. Usernames and passwords of this form are ASCII, for which SASLprep (RFC 4013, which
//! RFC 8489 asks for on the password) is the identity: this module implements no SASLprep.
//!
//! Nonces are stateless: `hex(expiry) || hex(HMAC-SHA1(nonce key, expiry || client address))[..16]`,
//! so the server remembers nothing per unauthenticated client, and a nonce is only good from the
//! address it was issued to and until it expires.

use std::net::SocketAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use crate::time::Instant;

fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    // HMAC takes keys of any length, so this constructor cannot fail.
    let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(key) else { return [0; 20] };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The password the TURN REST API derives from `username` and the shared `secret`.
pub fn rest_api_password(secret: &[u8], username: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha1(secret, &[username.as_bytes()]))
}

/// Time-limited credentials for `user`, valid until `expiry_unix` (seconds since the Unix
/// epoch): `(username, password)` for the client's `RTCIceServer`.
pub fn rest_api_credentials(secret: &[u8], user: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{user}");
    let password = rest_api_password(secret, &username);
    (username, password)
}

/// The long-term credential key MD5(username ":" realm ":" password) (RFC 8489 §9.2.2), with
/// the three already SASLprep'd (see the module docs).
pub fn long_term_key(username: &[u8], realm: &[u8], password: &[u8]) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(username);
    md5.update(b":");
    md5.update(realm);
    md5.update(b":");
    md5.update(password);
    md5.finalize().into()
}

/// Splits a REST API username into its expiry and user; `None` if it is not of that form.
pub fn parse_rest_username(username: &str) -> Option<(u64, &str)> {
    let (expiry, user) = username.split_once(':')?;
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((expiry.parse().ok()?, user))
}

/// Length of a nonce this server issues.
pub const NONCE_LEN: usize = 32;

/// What a NONCE attribute turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    /// Issued by us to this client and not expired.
    Fresh,
    /// Not ours, not for this client, or expired: answer 438 with a new one.
    Stale,
}

/// Issues and checks stateless nonces (see the module docs).
#[derive(Clone)]
pub(crate) struct NonceMint {
    key: [u8; 32],
}

impl core::fmt::Debug for NonceMint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NonceMint(..)")
    }
}

fn hex16(v: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().take(16).enumerate() {
        *o = HEX[((v >> (60 - 4 * i)) & 0xF) as usize];
    }
}

fn client_bytes(client: SocketAddr) -> [u8; 18] {
    let mut b = [0u8; 18];
    let ip = match client.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    b[..16].copy_from_slice(&ip);
    b[16..].copy_from_slice(&client.port().to_be_bytes());
    b
}

impl NonceMint {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn tag(&self, expires: u64, client: SocketAddr) -> u64 {
        let mac = hmac_sha1(&self.key, &[&expires.to_be_bytes(), &client_bytes(client)]);
        u64::from_be_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], mac[6], mac[7]])
    }

    /// A nonce for `client`, valid until `expires`.
    pub(crate) fn issue(&self, expires: Instant, client: SocketAddr) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        hex16(expires.as_nanos(), &mut n[..16]);
        hex16(self.tag(expires.as_nanos(), client), &mut n[16..]);
        n
    }

    pub(crate) fn check(&self, nonce: &[u8], client: SocketAddr, now: Instant) -> NonceCheck {
        let Some(expires) = nonce.get(..16).and_then(|h| core::str::from_utf8(h).ok()).and_then(|h| u64::from_str_radix(h, 16).ok()) else {
            return NonceCheck::Stale;
        };
        let mut want = [0u8; 16];
        hex16(self.tag(expires, client), &mut want);
        let ours = nonce.len() == NONCE_LEN && bool::from(want.ct_eq(&nonce[16..]));
        if ours && now.as_nanos() < expires { NonceCheck::Fresh } else { NonceCheck::Stale }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_api_credentials_match_coturn() {
        let (u, p) = rest_api_credentials(b"north", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        // echo -n 1700000000:alice | openssl dgst -sha1 -hmac north -binary | base64
        assert_eq!(p, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
        assert_ne!(p, rest_api_password(b"south", "1700000000:alice"));
        assert_eq!(parse_rest_username(&u), Some((1_700_000_000, "alice")));
        assert_eq!(parse_rest_username("1:a:b"), Some((1, "a:b")));
        for bad in ["alice", ":alice", "x1:alice", "-1:alice", "99999999999999999999999:a"] {
            assert_eq!(parse_rest_username(bad), None, "{bad}");
        }
    }

    #[test]
    fn hmac_and_md5_known_answers() {
        // RFC 2202 test case 2 for HMAC-SHA1, base64 of 0xeffcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        assert_eq!(rest_api_password(b"Jefe", "what do ya want for nothing?"), "7/zfauXrL6LSdBbV8YTfnCWafHk=");
        // MD5("a:b:c") = 02cc8f08398a4f3113b554e8105ebe4c (coreutils md5sum).
        assert_eq!(long_term_key(b"a", b"b", b"c"), [0x02, 0xcc, 0x8f, 0x08, 0x39, 0x8a, 0x4f, 0x31, 0x13, 0xb5, 0x54, 0xe8, 0x10, 0x5e, 0xbe, 0x4c]);
    }

    #[test]
    fn nonces_are_bound_to_client_and_expiry() {
        let mint = NonceMint::new([9; 32]);
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let t = |s: u64| Instant::from_nanos(s * 1_000_000_000);
        let n = mint.issue(t(600), a);
        assert_eq!(mint.check(&n, a, t(599)), NonceCheck::Fresh);
        assert_eq!(mint.check(&n, a, t(600)), NonceCheck::Stale);
        assert_eq!(mint.check(&n, b, t(1)), NonceCheck::Stale);
        assert_eq!(mint.check(&n[..31], a, t(1)), NonceCheck::Stale);
        assert_eq!(mint.check(b"not a nonce at all", a, t(1)), NonceCheck::Stale);
        let mut forged = n;
        forged[15] = b'f';
        assert_eq!(mint.check(&forged, a, t(1)), NonceCheck::Stale);
        assert_ne!(NonceMint::new([8; 32]).issue(t(600), a), n);
    }
}
