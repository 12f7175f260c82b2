//! SRTP and SRTCP (RFC 3711, RFC 6188, RFC 7714).
//!
//! Contract:
//! - [`SrtpKeys`] holds the session keys and expanded cipher state for ONE direction of one leg.
//!   With key_derivation_rate 0 the session keys do not depend on the SSRC, so every SSRC on the
//!   leg shares it. It is built once, on the cold path, by [`SrtpKeys::new`] (key schedules).
//! - Per-SSRC state is small, `Clone`, and holds no pointer to the keys: [`RtpSendState`],
//!   [`RtpRecvState`], [`RtcpSendState`], [`RtcpRecvState`]. The caller owns them (in its
//!   subscription or in-stream tables) and passes them to the key methods.
//! - Packets are protected and unprotected IN PLACE in a caller-owned buffer: `buf[..len]` is
//!   the packet; protect needs [`Profile::rtp_overhead`] / [`Profile::rtcp_overhead`] spare
//!   bytes after `len`. Nothing allocates per packet.
//! - Every failure on the packet path is an [`SrtpError`] verdict (`#[repr(u8)]`, usable as a
//!   counter index); no input can panic. The replay window is checked before any crypto and
//!   updated only after the packet authenticated.
//!
//! Unprotect may leave `buf[..len]` modified when it fails (AES-GCM decrypts before the verdict
//! is known to the caller); the caller drops the packet anyway.
//!
//! [`SrtpKeys::plain`] is the profile "none" of a plain-RTP leg (a recording tap on a loopback or
//! private address, by explicit opt-in): protect is the identity (no tag, no SRTCP index), and
//! unprotect accepts nothing, since nothing authenticates without a key. It is one more arm of
//! the cipher match the AES-CM and AES-GCM paths already take, so they gain no branch.

mod kdf;
pub mod provider;
mod replay;

#[cfg(test)]
mod tests;

use provider::{AesCtr, AesGcm, AwsLc, CryptoProvider, HmacSha1};
pub use replay::{DEFAULT_WINDOW, MAX_WINDOW, MIN_WINDOW, ReplayWindow};
use subtle::ConstantTimeEq;

use kdf::Label;

/// An SRTP protection profile (RFC 5764 §4.1.2, RFC 7714 §14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Profile {
    /// SRTP_AES128_CM_HMAC_SHA1_80.
    AesCm128HmacSha1_80,
    /// SRTP_AES128_CM_HMAC_SHA1_32 (SRTCP keeps the 80-bit tag).
    AesCm128HmacSha1_32,
    /// SRTP_AEAD_AES_128_GCM.
    AeadAes128Gcm,
    /// SRTP_AEAD_AES_256_GCM.
    AeadAes256Gcm,
}

impl Profile {
    /// The DTLS-SRTP protection profile id (RFC 5764 §4.1.2, RFC 7714 §14.2).
    pub const fn dtls_id(self) -> u16 {
        match self {
            Self::AesCm128HmacSha1_80 => 0x0001,
            Self::AesCm128HmacSha1_32 => 0x0002,
            Self::AeadAes128Gcm => 0x0007,
            Self::AeadAes256Gcm => 0x0008,
        }
    }

    /// The profile for a DTLS-SRTP protection profile id, if supported.
    pub const fn from_dtls_id(id: u16) -> Option<Self> {
        match id {
            0x0001 => Some(Self::AesCm128HmacSha1_80),
            0x0002 => Some(Self::AesCm128HmacSha1_32),
            0x0007 => Some(Self::AeadAes128Gcm),
            0x0008 => Some(Self::AeadAes256Gcm),
            _ => None,
        }
    }

    /// Master (and session) encryption key length in octets.
    pub const fn key_len(self) -> usize {
        match self {
            Self::AeadAes256Gcm => 32,
            _ => 16,
        }
    }

    /// Master (and session) salt length in octets.
    pub const fn salt_len(self) -> usize {
        if self.is_aead() { 12 } else { 14 }
    }

    /// Whether the profile is an AEAD (RFC 7714) profile.
    pub const fn is_aead(self) -> bool {
        matches!(self, Self::AeadAes128Gcm | Self::AeadAes256Gcm)
    }

    /// SRTP authentication tag length in octets.
    pub const fn rtp_tag_len(self) -> usize {
        match self {
            Self::AesCm128HmacSha1_80 => 10,
            Self::AesCm128HmacSha1_32 => 4,
            Self::AeadAes128Gcm | Self::AeadAes256Gcm => 16,
        }
    }

    /// SRTCP authentication tag length in octets (80 bits for both CM profiles).
    pub const fn rtcp_tag_len(self) -> usize {
        if self.is_aead() { 16 } else { 10 }
    }

    /// Bytes protect_rtp appends.
    pub const fn rtp_overhead(self) -> usize {
        self.rtp_tag_len()
    }

    /// Bytes protect_rtcp appends (tag + E flag/SRTCP index).
    pub const fn rtcp_overhead(self) -> usize {
        self.rtcp_tag_len() + 4
    }
}

/// Why a packet was not protected or unprotected. Fast path: `Copy`, one byte, no strings;
/// the discriminant indexes drop counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SrtpError {
    /// Shorter than a header plus the trailer.
    TooShort = 0,
    /// Not version 2, or CSRC/extension lengths run past the packet.
    Malformed = 1,
    /// The tag did not verify.
    AuthFailed = 2,
    /// The index was already accepted.
    Replayed = 3,
    /// The index is behind the replay window (or before the stream start).
    IndexTooOld = 4,
    /// The buffer has no room for the tag (protect) or `len` exceeds the buffer.
    BufferTooSmall = 5,
    /// The 48-bit SRTP or 31-bit SRTCP index space is used up; the leg must rekey.
    KeyExhausted = 6,
}

impl SrtpError {
    /// Number of variants, for counter arrays.
    pub const COUNT: usize = 7;
}

/// Cold-path errors building [`SrtpKeys`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SrtpKeyError {
    /// The master key has the wrong length for the profile.
    #[error("{profile:?}: master key is {got} bytes, expected {expected}")]
    MasterKeyLength {
        /// The profile.
        profile: Profile,
        /// Required length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// The master salt has the wrong length for the profile.
    #[error("{profile:?}: master salt is {got} bytes, expected {expected}")]
    MasterSaltLength {
        /// The profile.
        profile: Profile,
        /// Required length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// The crypto provider refused a derived key.
    #[error("{profile:?}: crypto provider rejected the {what} key")]
    Provider {
        /// The profile.
        profile: Profile,
        /// Which key.
        what: &'static str,
    },
}

/// Sender state for one RTP SSRC: rollover counter and highest sequence number sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpSendState {
    roc: u32,
    last_seq: u16,
    started: bool,
}

// The forwarding core keeps a whole subscription, SRTP send state included, under 512 bytes.
const _: () = assert!(size_of::<RtpSendState>() <= 8);
const _: () = assert!(size_of::<RtcpSendState>() <= 4);
// The receive side carries the inline 1024-bit bitmap.
const _: () = assert!(size_of::<RtpRecvState>() <= 160);
const _: () = assert!(size_of::<RtcpRecvState>() <= 152);
// Keys may be built off the worker (cold path) and moved to it, or shared read-only.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SrtpKeys<AwsLc>>();
};

impl RtpSendState {
    /// A fresh stream with ROC 0.
    pub const fn new() -> Self {
        Self { roc: 0, last_seq: 0, started: false }
    }

    /// A fresh stream starting at rollover counter `roc`.
    pub const fn with_roc(roc: u32) -> Self {
        Self { roc, last_seq: 0, started: false }
    }

    /// The current rollover counter.
    pub const fn roc(&self) -> u32 {
        self.roc
    }

    /// The index (ROC · 2¹⁶ + SEQ) of the highest packet protected, if any.
    pub const fn last_index(&self) -> Option<u64> {
        if self.started { Some(index(self.roc, self.last_seq)) } else { None }
    }

    /// A stream that has protected packets up to `last_index` (resumed from a checkpoint): the
    /// next packet must carry a higher index, and its ROC follows from there.
    pub const fn resumed(last_index: u64) -> Self {
        Self { roc: (last_index >> 16) as u32, last_seq: last_index as u16, started: true }
    }

    /// The ROC to use for `seq`, without committing it.
    fn roc_for(&self, seq: u16) -> Result<u32, SrtpError> {
        if !self.started {
            return Ok(self.roc);
        }
        estimate_roc(self.roc, self.last_seq, seq)
    }

    fn commit(&mut self, roc: u32, seq: u16) {
        let idx = index(roc, seq);
        if !self.started || idx > index(self.roc, self.last_seq) {
            self.roc = roc;
            self.last_seq = seq;
            self.started = true;
        }
    }
}

/// Receiver state for one RTP SSRC: the replay window, whose highest index carries the ROC and
/// the highest sequence number (RFC 3711 §3.3.1 `s_l`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RtpRecvState {
    window: ReplayWindow,
    initial_roc: u32,
}

impl RtpRecvState {
    /// A fresh stream with ROC 0 and a window of `window` packets (see [`ReplayWindow::new`]).
    pub const fn new(window: u16) -> Self {
        Self { window: ReplayWindow::new(window), initial_roc: 0 }
    }

    /// A fresh stream whose first packet is taken to be in rollover period `roc`.
    pub const fn with_roc(roc: u32, window: u16) -> Self {
        Self { window: ReplayWindow::new(window), initial_roc: roc }
    }

    /// A stream that has accepted every index up to `highest` (resumed from a checkpoint): the
    /// ROC continues from it, and nothing at or below it is accepted again.
    pub const fn resumed(highest: u64, window: u16) -> Self {
        Self { window: ReplayWindow::resumed(window, highest), initial_roc: (highest >> 16) as u32 }
    }

    /// The rollover counter of the highest authenticated packet.
    pub fn roc(&self) -> u32 {
        self.window.highest().map_or(self.initial_roc, |i| (i >> 16) as u32)
    }

    /// The replay window.
    pub const fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// RFC 3711 §3.3.1: the packet index this `seq` most likely has.
    fn estimate(&self, seq: u16) -> Result<u64, SrtpError> {
        match self.window.highest() {
            None => Ok(index(self.initial_roc, seq)),
            Some(h) => Ok(index(estimate_roc((h >> 16) as u32, h as u16, seq)?, seq)),
        }
    }
}

/// Sender state for one RTCP SSRC: the next SRTCP index (31 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpSendState {
    next: u32,
}

impl Default for RtcpSendState {
    fn default() -> Self {
        Self::new()
    }
}

impl RtcpSendState {
    /// Starts at index 1, as libsrtp does (any start is valid; this one makes outputs
    /// comparable byte for byte).
    pub const fn new() -> Self {
        Self { next: 1 }
    }

    /// Starts at `index` (masked to 31 bits).
    pub const fn with_next_index(index: u32) -> Self {
        Self { next: index & SRTCP_INDEX_MASK }
    }

    /// The index the next packet will carry.
    pub const fn next_index(&self) -> u32 {
        self.next
    }
}

/// Receiver state for one RTCP SSRC: the replay window over SRTCP indices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RtcpRecvState {
    window: ReplayWindow,
}

impl RtcpRecvState {
    /// A window of `window` packets.
    pub const fn new(window: u16) -> Self {
        Self { window: ReplayWindow::new(window) }
    }

    /// A sender whose SRTCP indexes up to `highest` were accepted (resumed from a checkpoint).
    pub const fn resumed(highest: u32, window: u16) -> Self {
        Self { window: ReplayWindow::resumed(window, highest as u64) }
    }

    /// The replay window.
    pub const fn window(&self) -> &ReplayWindow {
        &self.window
    }
}

const SRTCP_INDEX_MASK: u32 = 0x7fff_ffff;
const SRTCP_E_FLAG: u32 = 0x8000_0000;

#[inline]
const fn index(roc: u32, seq: u16) -> u64 {
    (roc as u64) << 16 | seq as u64
}

/// RFC 3711 §3.3.1 and Appendix A: the ROC `v` for `seq`, given the highest sequence number
/// `s_l` accepted so far in rollover period `roc`.
#[inline]
fn estimate_roc(roc: u32, s_l: u16, seq: u16) -> Result<u32, SrtpError> {
    if s_l < 0x8000 {
        if u32::from(seq) > u32::from(s_l) + 0x8000 { roc.checked_sub(1).ok_or(SrtpError::IndexTooOld) } else { Ok(roc) }
    } else if u32::from(s_l) - 0x8000 > u32::from(seq) {
        roc.checked_add(1).ok_or(SrtpError::KeyExhausted)
    } else {
        Ok(roc)
    }
}

/// Length of the RTP header including CSRCs and the header extension (RFC 3550 §5.1, §5.3.1).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// |V=2|P|X|  CC   |M|     PT      |       sequence number         |
/// |                           timestamp                           |
/// |                             SSRC                              |
/// |                    CSRC list (CC x 32 bits)                   |
/// |   defined by profile          |           length (words)      |  (if X)
/// |                    header extension (length x 32 bits)        |
/// ```
#[inline]
fn rtp_header_len(pkt: &[u8]) -> Result<usize, SrtpError> {
    let Some(&b0) = pkt.first() else {
        return Err(SrtpError::TooShort);
    };
    if pkt.len() < 12 {
        return Err(SrtpError::TooShort);
    }
    if b0 >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let mut len = 12 + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        let Some(ext) = pkt.get(len + 2..len + 4) else {
            return Err(SrtpError::Malformed);
        };
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    if len > pkt.len() { Err(SrtpError::Malformed) } else { Ok(len) }
}

#[inline]
fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

enum Cipher<P: CryptoProvider> {
    /// AES-CM + HMAC-SHA1 (RFC 3711 §4.1.1, §4.2.1). Boxed: its expanded AES key and HMAC
    /// states are ~600 bytes inline, and a GCM leg (the common one) would carry that size four
    /// times in every worker's copy of the leg for nothing.
    Cm(Box<CmCipher<P>>),
    /// AES-GCM (RFC 7714).
    Gcm { gcm: P::Gcm, salt: [u8; 12] },
    /// No protection ([`SrtpKeys::plain`]): sends the packet as it is, authenticates nothing.
    Plain,
}

/// The AES-CM + HMAC-SHA1 state of one of [`Cipher`]'s directions.
struct CmCipher<P: CryptoProvider> {
    ctr: P::Ctr,
    mac: HmacSha1,
    salt: [u8; 14],
}

/// Session keys and expanded cipher state for one direction of one leg (see the module docs).
pub struct SrtpKeys<P: CryptoProvider = AwsLc> {
    /// `None`: plain ([`SrtpKeys::plain`]).
    profile: Option<Profile>,
    rtp: Cipher<P>,
    rtcp: Cipher<P>,
    /// Bytes protect_rtp appends: the profile's RTP tag (0 when plain).
    rtp_tag: u8,
    /// Bytes protect_rtcp appends: the profile's SRTCP tag and index (0 when plain).
    rtcp_overhead: u8,
    encrypt_rtcp: bool,
}

impl<P: CryptoProvider> std::fmt::Debug for SrtpKeys<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys").field("profile", &self.profile).field("encrypt_rtcp", &self.encrypt_rtcp).finish_non_exhaustive()
    }
}

/// The overheads an SRTP profile's keys carry (`(rtp_tag, rtcp_overhead)`), as bytes.
const fn overheads(profile: Profile) -> (u8, u8) {
    (profile.rtp_overhead() as u8, profile.rtcp_overhead() as u8)
}

impl SrtpKeys<AwsLc> {
    /// Derives the session keys from the master key and salt with the default provider.
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpKeyError> {
        Self::with_provider(profile, master_key, master_salt)
    }
}

impl<P: CryptoProvider> SrtpKeys<P> {
    /// Derives the session keys (RFC 3711 §4.3, kdr 0) with provider `P`.
    pub fn with_provider(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpKeyError> {
        if master_key.len() != profile.key_len() {
            return Err(SrtpKeyError::MasterKeyLength { profile, expected: profile.key_len(), got: master_key.len() });
        }
        if master_salt.len() != profile.salt_len() {
            return Err(SrtpKeyError::MasterSaltLength { profile, expected: profile.salt_len(), got: master_salt.len() });
        }
        let prov = |what| SrtpKeyError::Provider { profile, what };
        let master = P::Ctr::new(master_key).map_err(|_| prov("master"))?;
        let mut key = [0u8; 32];
        let key = &mut key[..profile.key_len()];
        let build = |enc: Label, auth: Label, salt_label: Label, key: &mut [u8]| {
            kdf::derive(&master, master_salt, enc, key);
            if profile.is_aead() {
                let mut salt = [0u8; 12];
                kdf::derive(&master, master_salt, salt_label, &mut salt);
                let gcm = P::Gcm::new(key).map_err(|_| prov("session"))?;
                Ok(Cipher::Gcm { gcm, salt })
            } else {
                let mut salt = [0u8; 14];
                kdf::derive(&master, master_salt, salt_label, &mut salt);
                let mut auth_key = [0u8; 20];
                kdf::derive(&master, master_salt, auth, &mut auth_key);
                let ctr = P::Ctr::new(key).map_err(|_| prov("session"))?;
                Ok(Cipher::Cm(Box::new(CmCipher { ctr, mac: HmacSha1::new(&auth_key), salt })))
            }
        };
        let rtp = build(Label::RtpEncryption, Label::RtpAuth, Label::RtpSalt, key)?;
        let rtcp = build(Label::RtcpEncryption, Label::RtcpAuth, Label::RtcpSalt, key)?;
        key.fill(0);
        let (rtp_tag, rtcp_overhead) = overheads(profile);
        Ok(Self { profile: Some(profile), rtp, rtcp, rtp_tag, rtcp_overhead, encrypt_rtcp: true })
    }

    /// The SRTP profile "none" of a plain-RTP leg: protect leaves RTP and RTCP as they are (no
    /// tag, no SRTCP index appended), unprotect refuses every packet
    /// ([`SrtpError::AuthFailed`]: nothing authenticates without a key). Only for a peer on a
    /// loopback or private address that asked for it (see `LegSpec::plain_rtp`).
    pub const fn plain() -> Self {
        Self { profile: None, rtp: Cipher::Plain, rtcp: Cipher::Plain, rtp_tag: 0, rtcp_overhead: 0, encrypt_rtcp: false }
    }

    /// Whether these are the plain keys ([`SrtpKeys::plain`]).
    pub const fn is_plain(&self) -> bool {
        self.profile.is_none()
    }

    /// Test hook: keys from already-derived session material (RFC 7714 §16/§17 vectors are
    /// stated that way). Both RTP and RTCP use the same key and salt.
    #[cfg(test)]
    pub(crate) fn from_session_keys(profile: Profile, key: &[u8], salt: &[u8], auth: &[u8]) -> Self {
        let mk = || {
            if profile.is_aead() {
                let mut s = [0u8; 12];
                s.copy_from_slice(salt);
                Cipher::Gcm { gcm: P::Gcm::new(key).unwrap(), salt: s }
            } else {
                let mut s = [0u8; 14];
                s.copy_from_slice(salt);
                Cipher::Cm(Box::new(CmCipher { ctr: P::Ctr::new(key).unwrap(), mac: HmacSha1::new(auth), salt: s }))
            }
        };
        let (rtp_tag, rtcp_overhead) = overheads(profile);
        Self { profile: Some(profile), rtp: mk(), rtcp: mk(), rtp_tag, rtcp_overhead, encrypt_rtcp: true }
    }

    /// Chooses whether [`protect_rtcp`](Self::protect_rtcp) encrypts (E = 1, the default) or
    /// only authenticates (E = 0). Unprotect follows the E flag of each packet.
    pub fn set_rtcp_encryption(&mut self, encrypt: bool) {
        self.encrypt_rtcp = encrypt;
    }

    /// The profile these keys were derived for (`None`: plain, [`SrtpKeys::plain`]).
    pub const fn profile(&self) -> Option<Profile> {
        self.profile
    }

    /// Bytes [`protect_rtp`](Self::protect_rtp) appends: the profile's tag (0 when plain).
    #[inline]
    pub const fn rtp_overhead(&self) -> usize {
        self.rtp_tag as usize
    }

    /// Bytes [`protect_rtcp`](Self::protect_rtcp) appends: the profile's tag and SRTCP index
    /// (0 when plain).
    #[inline]
    pub const fn rtcp_overhead(&self) -> usize {
        self.rtcp_overhead as usize
    }

    /// Protects the RTP packet `buf[..len]` in place and returns the SRTP length
    /// (`len + profile.rtp_overhead()`).
    pub fn protect_rtp(&self, state: &mut RtpSendState, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let Some(pkt) = buf.get(..len) else {
            return Err(SrtpError::BufferTooSmall);
        };
        let hl = rtp_header_len(pkt)?;
        self.protect_rtp_with(state, buf, hl, len, None)
    }

    /// [`protect_rtp`](Self::protect_rtp) of the RTP packet whose header is `buf[..header_len]`
    /// and whose payload is `payload`, encrypting the payload straight from `payload` into
    /// `buf[header_len..]` (the forwarder's fan-out: one decrypted packet, a copy per subscriber,
    /// no plaintext copy into each). Returns the SRTP length, as `protect_rtp` does for the same
    /// packet laid out in `buf`, with the same bytes.
    pub fn protect_rtp_from(&self, state: &mut RtpSendState, buf: &mut [u8], header_len: usize, payload: &[u8]) -> Result<usize, SrtpError> {
        let Some(hdr) = buf.get(..header_len) else {
            return Err(SrtpError::BufferTooSmall);
        };
        if rtp_header_len(hdr)? != header_len {
            return Err(SrtpError::Malformed);
        }
        self.protect_rtp_with(state, buf, header_len, header_len + payload.len(), Some(payload))
    }

    /// The packet is `buf[..hl]` (header) then the payload: `buf[hl..len]` in place when `from`
    /// is `None`, else `from` (`len - hl` bytes), encrypted into `buf[hl..len]`.
    fn protect_rtp_with(&self, state: &mut RtpSendState, buf: &mut [u8], hl: usize, len: usize, from: Option<&[u8]>) -> Result<usize, SrtpError> {
        let out_len = len + self.rtp_overhead();
        if out_len > buf.len() {
            return Err(SrtpError::BufferTooSmall);
        }
        let seq = be_u16(buf, 2);
        let ssrc = be_u32(buf, 8);
        let roc = state.roc_for(seq)?;
        match &self.rtp {
            Cipher::Cm(cm) => {
                let CmCipher { ctr, mac, salt } = &**cm;
                let iv = cm_iv(salt, ssrc, index(roc, seq));
                // AES-CM stays in place (HMAC-SHA1 dominates its cost): the payload is copied in.
                if let Some(payload) = from {
                    buf[hl..len].copy_from_slice(payload);
                }
                ctr.apply_keystream(&iv, &mut buf[hl..len]);
                // RFC 3711 §4.2: M = authenticated portion || ROC.
                let tag = mac.tag(&buf[..len], &roc.to_be_bytes());
                buf[len..out_len].copy_from_slice(&tag[..out_len - len]);
            }
            Cipher::Gcm { gcm, salt } => {
                let nonce = gcm_rtp_nonce(salt, ssrc, roc, seq);
                let (hdr, body) = buf[..len].split_at_mut(hl);
                let tag = match from {
                    None => gcm.seal(&nonce, hdr, body),
                    Some(payload) => gcm.seal_to(&nonce, hdr, payload, body),
                };
                buf[len..out_len].copy_from_slice(&tag);
            }
            Cipher::Plain => {
                if let Some(payload) = from {
                    buf[hl..len].copy_from_slice(payload);
                }
            }
        }
        state.commit(roc, seq);
        Ok(out_len)
    }

    /// Verifies and decrypts the SRTP packet `buf[..len]` in place; returns the RTP length.
    pub fn unprotect_rtp(&self, state: &mut RtpRecvState, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let Some(pkt) = buf.get(..len) else {
            return Err(SrtpError::BufferTooSmall);
        };
        let tag_len = self.rtp_overhead();
        let Some(body) = len.checked_sub(tag_len) else {
            return Err(SrtpError::TooShort);
        };
        let hl = rtp_header_len(&pkt[..body])?;
        let seq = be_u16(pkt, 2);
        let ssrc = be_u32(pkt, 8);
        let idx = state.estimate(seq)?;
        state.window.check(idx)?;
        let roc = (idx >> 16) as u32;
        match &self.rtp {
            Cipher::Cm(cm) => {
                let CmCipher { ctr, mac, salt } = &**cm;
                let tag = mac.tag(&buf[..body], &roc.to_be_bytes());
                if !bool::from(tag[..tag_len].ct_eq(&buf[body..len])) {
                    return Err(SrtpError::AuthFailed);
                }
                ctr.apply_keystream(&cm_iv(salt, ssrc, idx), &mut buf[hl..body]);
            }
            Cipher::Gcm { gcm, salt } => {
                let mut tag = [0u8; 16];
                tag.copy_from_slice(&buf[body..len]);
                let nonce = gcm_rtp_nonce(salt, ssrc, roc, seq);
                let (hdr, payload) = buf[..body].split_at_mut(hl);
                if !gcm.open(&nonce, hdr, payload, &tag) {
                    return Err(SrtpError::AuthFailed);
                }
            }
            Cipher::Plain => return Err(SrtpError::AuthFailed),
        }
        state.window.update(idx);
        Ok(body)
    }

    /// Protects the RTCP compound packet `buf[..len]` in place and returns the SRTCP length
    /// (`len + profile.rtcp_overhead()`).
    ///
    /// ```text
    /// AES-CM:  | RTCP header (8) | encrypted portion | E | SRTCP index (31) | tag (10) |
    /// AES-GCM: | RTCP header (8) | encrypted portion | tag (16) | E | SRTCP index (31) |
    /// ```
    pub fn protect_rtcp(&self, state: &mut RtcpSendState, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let Some(pkt) = buf.get(..len) else {
            return Err(SrtpError::BufferTooSmall);
        };
        check_rtcp_header(pkt)?;
        let out_len = len + self.rtcp_overhead();
        if out_len > buf.len() {
            return Err(SrtpError::BufferTooSmall);
        }
        let srtcp_index = state.next;
        if srtcp_index > SRTCP_INDEX_MASK {
            return Err(SrtpError::KeyExhausted);
        }
        let ssrc = be_u32(buf, 4);
        let e_idx = if self.encrypt_rtcp { srtcp_index | SRTCP_E_FLAG } else { srtcp_index };
        let e_idx_bytes = e_idx.to_be_bytes();
        match &self.rtcp {
            Cipher::Cm(cm) => {
                let CmCipher { ctr, mac, salt } = &**cm;
                if self.encrypt_rtcp {
                    let iv = cm_iv(salt, ssrc, u64::from(srtcp_index));
                    ctr.apply_keystream(&iv, &mut buf[8..len]);
                }
                buf[len..len + 4].copy_from_slice(&e_idx_bytes);
                // RFC 3711 §3.4: the tag covers header, encrypted portion, E and index.
                let tag = mac.tag(&buf[..len + 4], &[]);
                buf[len + 4..out_len].copy_from_slice(&tag[..10]);
            }
            Cipher::Gcm { gcm, salt } => {
                let nonce = gcm_rtcp_nonce(salt, ssrc, srtcp_index);
                let tag = if self.encrypt_rtcp {
                    // RFC 7714 §9.3 / §17: AAD = first 8 octets || E+index.
                    let mut aad = [0u8; 12];
                    aad[..8].copy_from_slice(&buf[..8]);
                    aad[8..].copy_from_slice(&e_idx_bytes);
                    gcm.seal(&nonce, &aad, &mut buf[8..len])
                } else {
                    // RFC 7714 §9.3: AAD = whole packet || E+index, empty plaintext. Lay the
                    // index where the tag goes so the AAD is contiguous, then move it.
                    buf[len..len + 4].copy_from_slice(&e_idx_bytes);
                    gcm.seal(&nonce, &buf[..len + 4], &mut [])
                };
                buf[len..len + 16].copy_from_slice(&tag);
                buf[len + 16..out_len].copy_from_slice(&e_idx_bytes);
            }
            Cipher::Plain => {}
        }
        state.next = srtcp_index + 1;
        Ok(out_len)
    }

    /// Verifies and (if E is set) decrypts the SRTCP packet `buf[..len]` in place; returns the
    /// RTCP length.
    pub fn unprotect_rtcp(&self, state: &mut RtcpRecvState, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let Some(pkt) = buf.get(..len) else {
            return Err(SrtpError::BufferTooSmall);
        };
        let overhead = self.rtcp_overhead();
        let Some(body) = len.checked_sub(overhead) else {
            return Err(SrtpError::TooShort);
        };
        check_rtcp_header(&pkt[..body])?;
        let ssrc = be_u32(pkt, 4);
        match &self.rtcp {
            Cipher::Cm(cm) => {
                let CmCipher { ctr, mac, salt } = &**cm;
                let e_idx = be_u32(pkt, body);
                let srtcp_index = e_idx & SRTCP_INDEX_MASK;
                state.window.check(u64::from(srtcp_index))?;
                let tag = mac.tag(&buf[..body + 4], &[]);
                if !bool::from(tag[..10].ct_eq(&buf[body + 4..len])) {
                    return Err(SrtpError::AuthFailed);
                }
                if e_idx & SRTCP_E_FLAG != 0 {
                    let iv = cm_iv(salt, ssrc, u64::from(srtcp_index));
                    ctr.apply_keystream(&iv, &mut buf[8..body]);
                }
                state.window.update(u64::from(srtcp_index));
            }
            Cipher::Gcm { gcm, salt } => {
                let e_idx_bytes = [pkt[len - 4], pkt[len - 3], pkt[len - 2], pkt[len - 1]];
                let e_idx = u32::from_be_bytes(e_idx_bytes);
                let srtcp_index = e_idx & SRTCP_INDEX_MASK;
                state.window.check(u64::from(srtcp_index))?;
                let mut tag = [0u8; 16];
                tag.copy_from_slice(&pkt[body..body + 16]);
                let nonce = gcm_rtcp_nonce(salt, ssrc, srtcp_index);
                let ok = if e_idx & SRTCP_E_FLAG != 0 {
                    let mut aad = [0u8; 12];
                    aad[..8].copy_from_slice(&buf[..8]);
                    aad[8..].copy_from_slice(&e_idx_bytes);
                    gcm.open(&nonce, &aad, &mut buf[8..body], &tag)
                } else {
                    buf[body..body + 4].copy_from_slice(&e_idx_bytes);
                    gcm.open(&nonce, &buf[..body + 4], &mut [], &tag)
                };
                if !ok {
                    return Err(SrtpError::AuthFailed);
                }
                state.window.update(u64::from(srtcp_index));
            }
            Cipher::Plain => return Err(SrtpError::AuthFailed),
        }
        Ok(body)
    }
}

/// An RTCP packet starts with version 2 and is at least the 8-octet header + sender SSRC.
#[inline]
fn check_rtcp_header(pkt: &[u8]) -> Result<(), SrtpError> {
    match pkt.first() {
        _ if pkt.len() < 8 => Err(SrtpError::TooShort),
        Some(b0) if b0 >> 6 == 2 => Ok(()),
        _ => Err(SrtpError::Malformed),
    }
}

/// RFC 3711 §4.1.1: IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16).
///
/// ```text
/// byte   0..3   4..7    8..13          14 15
///        salt   salt^SSRC  salt^index(48)  00 00
/// ```
#[inline]
fn cm_iv(salt: &[u8; 14], ssrc: u32, idx: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (d, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *d ^= s;
    }
    for (d, s) in iv[8..14].iter_mut().zip(&idx.to_be_bytes()[2..]) {
        *d ^= s;
    }
    iv
}

/// RFC 7714 §8.1: IV = (00 00 || SSRC || ROC || SEQ) XOR salt.
#[inline]
fn gcm_rtp_nonce(salt: &[u8; 12], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    let mut n = *salt;
    for (d, s) in n[2..6].iter_mut().zip(ssrc.to_be_bytes()) {
        *d ^= s;
    }
    for (d, s) in n[6..10].iter_mut().zip(roc.to_be_bytes()) {
        *d ^= s;
    }
    for (d, s) in n[10..12].iter_mut().zip(seq.to_be_bytes()) {
        *d ^= s;
    }
    n
}

/// RFC 7714 §9.1: IV = (00 00 || SSRC || 00 00 || 0 + SRTCP index(31)) XOR salt.
#[inline]
fn gcm_rtcp_nonce(salt: &[u8; 12], ssrc: u32, srtcp_index: u32) -> [u8; 12] {
    let mut n = *salt;
    for (d, s) in n[2..6].iter_mut().zip(ssrc.to_be_bytes()) {
        *d ^= s;
    }
    for (d, s) in n[8..12].iter_mut().zip((srtcp_index & SRTCP_INDEX_MASK).to_be_bytes()) {
        *d ^= s;
    }
    n
}
