//! A simulated participant's SRTP endpoint: the keys it sends with (its leg's rx keys on the SFU,
//! "up") and receives with (the leg's tx keys, "down"), and the send and receive contexts of
//! every SSRC it has used, as a browser keeps them.
//!
//! Contexts are per SSRC in both directions and for both RTP and RTCP (SRTCP's index is per
//! sender SSRC, RFC 3711 §3.4). Receive contexts get the largest replay window
//! ([`MAX_WINDOW`]): the simulations reorder, and what they check is the SFU's output, not the
//! endpoint's patience. Maps are ordered so that anything iterating them is deterministic.

use std::collections::BTreeMap;

use sluice_core::srtp::{MAX_WINDOW, RtcpRecvState, RtcpSendState, RtpRecvState, RtpSendState, SrtpError, SrtpKeyError, SrtpKeys};
use sluice_core::table::KeyMaterial;

/// Room a protected packet needs beyond its plaintext (the largest tag, plus SRTCP's index).
const TRAILER: usize = 32;

/// One participant's SRTP state.
#[derive(Debug)]
pub struct Endpoint {
    up: SrtpKeys,
    down: SrtpKeys,
    up_rtp: BTreeMap<u32, RtpSendState>,
    up_rtcp: BTreeMap<u32, RtcpSendState>,
    down_rtp: BTreeMap<u32, RtpRecvState>,
    down_rtcp: BTreeMap<u32, RtcpRecvState>,
}

impl Endpoint {
    /// An endpoint that protects with `up` and unprotects with `down`: the participant's side of
    /// a leg whose spec has `rx: up, tx: down` (see [`crate::fixture::leg_spec`]).
    pub fn new(up: &KeyMaterial, down: &KeyMaterial) -> Result<Self, SrtpKeyError> {
        Ok(Self {
            up: SrtpKeys::new(up.profile, &up.key, &up.salt)?,
            down: SrtpKeys::new(down.profile, &down.key, &down.salt)?,
            up_rtp: BTreeMap::new(),
            up_rtcp: BTreeMap::new(),
            down_rtp: BTreeMap::new(),
            down_rtcp: BTreeMap::new(),
        })
    }

    /// SRTP of the plaintext RTP packet `plain`, in the send context of its SSRC.
    ///
    /// # Panics
    /// If `plain` is not an RTP packet (the simulator built it wrong).
    pub fn protect_rtp(&mut self, plain: &[u8]) -> Vec<u8> {
        let ssrc = u32::from_be_bytes(plain[8..12].try_into().expect("an RTP header"));
        let mut b = plain.to_vec();
        b.resize(plain.len() + TRAILER, 0);
        let st = self.up_rtp.entry(ssrc).or_default();
        let n = self.up.protect_rtp(st, &mut b, plain.len()).expect("a well-formed RTP packet");
        b.truncate(n);
        b
    }

    /// SRTCP of the plaintext (compound) RTCP packet `plain`, in the send context of its sender
    /// SSRC.
    ///
    /// # Panics
    /// If `plain` is not an RTCP packet.
    pub fn protect_rtcp(&mut self, plain: &[u8]) -> Vec<u8> {
        let ssrc = u32::from_be_bytes(plain[4..8].try_into().expect("an RTCP header"));
        let mut b = plain.to_vec();
        b.resize(plain.len() + TRAILER, 0);
        let st = self.up_rtcp.entry(ssrc).or_default();
        let n = self.up.protect_rtcp(st, &mut b, plain.len()).expect("a well-formed RTCP packet");
        b.truncate(n);
        b
    }

    /// Verifies and decrypts the SRTP packet `buf` in place, in the receive context of its SSRC
    /// (made on first sight, even if the packet then fails); returns the RTP length. The header
    /// stays readable in `buf` whatever the outcome.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let Some(ssrc) = buf.get(8..12) else { return Err(SrtpError::TooShort) };
        let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
        let st = self.down_rtp.entry(ssrc).or_insert_with(|| RtpRecvState::new(MAX_WINDOW));
        let len = buf.len();
        self.down.unprotect_rtp(st, buf, len)
    }

    /// Verifies and decrypts the SRTCP packet `buf` in place, in the receive context of its
    /// sender SSRC; returns the RTCP length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let Some(ssrc) = buf.get(4..8) else { return Err(SrtpError::TooShort) };
        let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
        let st = self.down_rtcp.entry(ssrc).or_insert_with(|| RtcpRecvState::new(MAX_WINDOW));
        let len = buf.len();
        self.down.unprotect_rtcp(st, buf, len)
    }

    /// Forgets what it received (replay windows and rollover counters of every stream), as a
    /// client that joins again after its SFU failed: the streams it gets next start afresh.
    pub fn reset_receive(&mut self) {
        self.down_rtp.clear();
        self.down_rtcp.clear();
    }

    /// The keys it receives with, for a harness that decrypts the same traffic with replay state
    /// of its own (a tap).
    pub fn down_keys(&self) -> &SrtpKeys {
        &self.down
    }

    /// The SSRCs it has had SRTP on (authenticated or not), ascending.
    pub fn rtp_ssrcs(&self) -> impl Iterator<Item = u32> + '_ {
        self.down_rtp.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::srtp::Profile;

    use super::*;
    use crate::fixture::{material, rtp_packet};

    /// A participant on leg `seed` and the SFU's side of that leg (the keys the other way round).
    fn pair(profile: Profile, seed: u32) -> (Endpoint, Endpoint) {
        let (up, down) = (material(profile, seed, 0), material(profile, seed, 1));
        (Endpoint::new(&up, &down).unwrap(), Endpoint::new(&down, &up).unwrap())
    }

    #[test]
    fn round_trips_with_matching_keys_and_refuses_other_keys() {
        for profile in [Profile::AeadAes128Gcm, Profile::AesCm128HmacSha1_80] {
            let (mut alice, mut sfu) = pair(profile, 7);
            let (_, mut stranger) = pair(profile, 8);
            let plain = rtp_packet(0x1234, 9, 960, 111, false, b"hello");
            let wire = alice.protect_rtp(&plain);
            assert_ne!(&wire[12..17], b"hello", "{profile:?}: the payload is encrypted");
            let mut got = wire.clone();
            let n = sfu.unprotect_rtp(&mut got).expect("the leg's own keys");
            assert_eq!(&got[..n], &plain[..]);
            let mut again = wire.clone();
            assert_eq!(sfu.unprotect_rtp(&mut again), Err(SrtpError::Replayed), "{profile:?}");
            let mut wrong = wire;
            assert_eq!(stranger.unprotect_rtp(&mut wrong), Err(SrtpError::AuthFailed), "{profile:?}");
            assert_eq!(stranger.rtp_ssrcs().collect::<Vec<_>>(), [0x1234], "a context even for a failure");

            let rr = [0x80, 201, 0, 1, 0, 0, 0, 5];
            let mut wire = alice.protect_rtcp(&rr);
            let mut copy = wire.clone();
            let n = sfu.unprotect_rtcp(&mut wire).expect("SRTCP with the leg's keys");
            assert_eq!(&wire[..n], &rr);
            assert_eq!(stranger.unprotect_rtcp(&mut copy), Err(SrtpError::AuthFailed), "{profile:?}");
        }
    }

    #[test]
    fn each_ssrc_has_its_own_context() {
        let (mut alice, mut sfu) = pair(Profile::AeadAes128Gcm, 1);
        // Same sequence number on two SSRCs: two streams, neither a replay of the other.
        for ssrc in [1, 2] {
            let mut wire = alice.protect_rtp(&rtp_packet(ssrc, 100, 0, 96, false, &[0; 20]));
            assert!(sfu.unprotect_rtp(&mut wire).is_ok());
        }
        assert!(sfu.unprotect_rtp(&mut [0x80, 96, 0]).is_err(), "too short for a header");
    }
}
