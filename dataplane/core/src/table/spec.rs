//! What the control plane says: the specs inside a [`Delta`]. Plain data, validated by
//! [`super::Tables::apply`] as a whole before any of it takes effect.
//!
//! What can be checked on a spec alone (ranges, lengths, sizes the tables hold) is checked by its
//! `validate`, which [`super::Tables::apply`] runs and the control plane runs before it accepts
//! (and journals) a change: one definition, so the control plane never accepts what the
//! dataplane will refuse. Checks against the tables' state (ports, SSRC uniqueness, unknown ids)
//! stay in `apply`.

use std::net::SocketAddr;

use crate::ids::{Generation, LegId, Pt, SpeakerGroup, Ssrc, TrackId};
use crate::srtp::Profile;

/// A spec refused on its own, before any table state is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {why}")]
pub struct SpecError {
    /// The field, as `spec.field` (`subscription.pt_map`).
    pub field: &'static str,
    /// What is wrong, and what is allowed.
    pub why: &'static str,
}

const fn refuse(field: &'static str, why: &'static str) -> Result<(), SpecError> {
    Err(SpecError { field, why })
}

/// Most layers a track has (simulcast or SVC encodings).
pub const MAX_LAYERS: usize = 8;
/// The longest MID a track may name (browsers use a few digits).
pub const MAX_MID_LEN: usize = 16;

/// SRTP master key material for one direction of a leg.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeyMaterial {
    /// The protection profile.
    pub profile: Profile,
    /// The master key (16 or 32 bytes, as the profile says).
    pub key: Vec<u8>,
    /// The master salt (14 bytes for AES-CM, 12 for AEAD).
    pub salt: Vec<u8>,
    /// Set only in a redacted copy ([`KeyMaterial::redacted`]), whose key and salt are empty: a
    /// digest of the key material, so two copies can be compared without either being shown. A
    /// delta carrying it is refused (its key and salt lengths cannot match the profile).
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub digest: Option<KeyDigest>,
}

/// The digest of a [`KeyMaterial`] that stands in for it where keys are not shown: the first 16
/// bytes of SHA-256 over a domain label, the profile's key and salt lengths, the key and the salt.
/// Master keys are random (128 or 256 bits), so it reveals nothing a guess could check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeyDigest(pub [u8; 16]);

impl KeyMaterial {
    /// The keys a WebRTC leg is declared with: never used, since such a leg carries no media
    /// before its DTLS-SRTP handshake installs its own.
    pub fn placeholder() -> Self {
        Self { profile: Profile::AesCm128HmacSha1_80, key: vec![0; 16], salt: vec![0; 14], digest: None }
    }

    /// Material with this key and salt.
    pub fn new(profile: Profile, key: Vec<u8>, salt: Vec<u8>) -> Self {
        Self { profile, key, salt, digest: None }
    }

    /// A copy without the key and salt (both empty) but with their [`KeyDigest`]: what a table
    /// snapshot carries unless its reader asked for keys and may have them. Redacting twice
    /// keeps the first digest.
    pub fn redacted(&self) -> Self {
        let digest = self.digest.unwrap_or_else(|| {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            ctx.update(b"sluice key material v1");
            ctx.update(&[self.key.len() as u8, self.salt.len() as u8]);
            ctx.update(&self.key);
            ctx.update(&self.salt);
            let mut d = [0u8; 16];
            d.copy_from_slice(&ctx.finish().as_ref()[..16]);
            KeyDigest(d)
        });
        Self { profile: self.profile, key: Vec::new(), salt: Vec::new(), digest: Some(digest) }
    }

    /// Whether this is a redacted copy (no key bytes).
    pub fn is_redacted(&self) -> bool {
        self.digest.is_some()
    }

    /// Deterministic key material for tests, simulations and benchmarks: distinct seeds give
    /// distinct keys (bytes of an xorshift64 stream started from `seed`). Anyone can compute it,
    /// so it exists only with the `test-support` feature.
    #[cfg(any(test, feature = "test-support"))]
    pub fn seeded(profile: Profile, seed: u32) -> Self {
        let mut x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        let key = (0..profile.key_len()).map(|_| next()).collect();
        let salt = (0..profile.salt_len()).map(|_| next()).collect();
        Self { profile, key, salt, digest: None }
    }
}

impl core::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Keys never reach logs.
        f.debug_struct("KeyMaterial").field("profile", &self.profile).finish_non_exhaustive()
    }
}

/// A leg: one transport to one participant.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LegSpec {
    /// Its id.
    pub id: LegId,
    /// The local UDP port it uses: the leg's own (no other leg's), or with `shared_port` a port
    /// it shares with other legs.
    pub local_port: u16,
    /// The participant's address. `None` until learned: the first authenticated packet on the
    /// port latches it.
    pub remote: Option<SocketAddr>,
    /// Keys for what the participant sends us.
    pub rx: KeyMaterial,
    /// Keys for what we send the participant.
    pub tx: KeyMaterial,
    /// The SSRC this leg uses as sender of the RTCP feedback the SFU originates towards the
    /// participant (NACK, PLI, FIR, RR).
    pub feedback_ssrc: Ssrc,
    /// A WebRTC leg (ICE-lite + DTLS-SRTP): `rx` and `tx` are then only placeholders, the leg
    /// carries no media until the dataplane's slow path installed the keys its DTLS handshake
    /// exported, and sends none while ICE consent is missing. `None`: static keys.
    #[cfg_attr(feature = "serde", serde(default))]
    pub edge: Option<Box<EdgeSpec>>,
    /// The congestion feedback the participant negotiated for what it sends us (receiver
    /// reports are always sent).
    #[cfg_attr(feature = "serde", serde(default))]
    pub feedback: FeedbackSpec,
    /// The participant receives a speaker group's audio in fixed slots (top-N audio): at most
    /// one stream per slot, the group's loudest recent speakers but never its own tracks. `None`:
    /// audio comes only through per-track subscriptions.
    #[cfg_attr(feature = "serde", serde(default))]
    pub audio_slots: Option<AudioSlotsSpec>,
    /// What the participant may send: a budget enforced before decryption (a valid participant
    /// sending at 100 times its rate must not make every subscriber's copies). `None`: no limit.
    #[cfg_attr(feature = "serde", serde(default))]
    pub rate_limit: Option<RateLimit>,
    /// RTCP on a port of its own (RFC 3550 §11; no rtcp-mux), as SIP equipment and ffmpeg send
    /// it: from their RTP port + 1 to ours. `None`: RTCP shares the RTP port (rtcp-mux, which
    /// WebRTC legs always use).
    #[cfg_attr(feature = "serde", serde(default))]
    pub rtcp: Option<Box<RtcpComponent>>,
    /// `local_port` is a shared port: other legs use it too (every leg on it says so), and a
    /// datagram's leg is the one whose remote it comes from — the spec's `remote`, which a
    /// static-key leg there must have, or for a WebRTC leg the remote ICE selected (a binding
    /// request from an unknown address finds its leg by the USERNAME's local ufrag). Nothing is
    /// latched on a shared port. `false`: the port is the leg's alone (and may latch).
    #[cfg_attr(feature = "serde", serde(default))]
    pub shared_port: bool,
    /// A cascade leg to another Sluice node: for the tracks it publishes here (the other node's
    /// relays), this node tells it in RTCP which layers its subscribers want
    /// ([`crate::forward::cascade`]), and it stops sending the others.
    #[cfg_attr(feature = "serde", serde(default))]
    pub cascade: bool,
    /// SRTP profile "none" ([`crate::srtp::SrtpKeys::plain`]): what Sluice sends the participant
    /// leaves as plain RTP and RTCP, and nothing the participant sends is accepted (nothing
    /// authenticates it; dropped and counted as [`crate::verdict::DropReason::SendOnly`]). For a
    /// recording tap on the same host or network only: the leg needs a `remote` (and an RTCP
    /// remote, if it has one) that [`plain_rtp_allowed`] takes, and is not a WebRTC leg. `rx`
    /// and `tx` are then placeholders ([`KeyMaterial::placeholder`]), never used.
    #[cfg_attr(feature = "serde", serde(default))]
    pub plain_rtp: bool,
}

/// Whether plain RTP ([`LegSpec::plain_rtp`]) may go to `ip`: a loopback address (127/8, ::1),
/// a private one (RFC 1918: 10/8, 172.16/12, 192.168/16; RFC 4193: fc00::/7) or a link-local
/// one (169.254/16, fe80::/10), an IPv4-mapped IPv6 address as its IPv4 address. Anything else
/// may cross networks Sluice does not control, where unencrypted media is readable by anyone on
/// the path.
pub fn plain_rtp_allowed(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// A leg's separate RTCP component (see [`LegSpec::rtcp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RtcpComponent {
    /// The local port RTCP arrives at and leaves from (not the RTP port; no other leg's).
    pub local_port: u16,
    /// Where the participant's RTCP comes from and goes to. `None`: the first authenticated RTCP
    /// packet on the port latches it (the RTP remote is latched apart, by RTP); until then RTCP
    /// goes to the RTP remote's port + 1.
    #[cfg_attr(feature = "serde", serde(default))]
    pub remote: Option<SocketAddr>,
}

/// A leg's receive budget: token buckets in packets and bytes, each holding `burst_ms` of its
/// rate. Every datagram of the leg's media (RTP and RTCP, before decryption) takes from both;
/// one that finds either empty is dropped and counted ([`crate::verdict::DropReason::RateLimited`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RateLimit {
    /// Packets per second (1..).
    pub packets_per_s: u32,
    /// Bytes per second (1..).
    pub bytes_per_s: u64,
    /// How much of each rate a bucket holds, ms (10..=5000).
    pub burst_ms: u32,
}

/// Most audio slots a leg may have (the most a ranking lists).
pub const MAX_AUDIO_SLOTS: usize = crate::audio::speaker::MAX_LISTED;

/// A subscriber leg's audio slots (see [`crate::audio::slot`]): one out-SSRC per slot, with one
/// continuous sequence and timestamp space whichever speaker feeds it; the speaker's own SSRC
/// goes in the CSRC list.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AudioSlotsSpec {
    /// The speaker group whose tracks feed the slots.
    pub group: SpeakerGroup,
    /// One out-SSRC per slot: N slots, 1 to [`MAX_AUDIO_SLOTS`], distinct.
    pub out_ssrcs: Vec<Ssrc>,
    /// Payload-type map, publisher → subscriber (every track of the group must use these).
    pub pt_map: Vec<(Pt, Pt)>,
    /// Header-extension id map, publisher → subscriber (as a subscription's).
    pub ext_map: Vec<(u8, u8)>,
}

impl AudioSlotsSpec {
    /// The checks on the spec alone: 1 to [`MAX_AUDIO_SLOTS`] distinct SSRCs, the maps as a
    /// subscription's.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.out_ssrcs.is_empty() || self.out_ssrcs.len() > MAX_AUDIO_SLOTS {
            return refuse("leg.audio_slots.out_ssrcs", "need 1 to 8 slots");
        }
        if self.out_ssrcs.iter().enumerate().any(|(i, s)| self.out_ssrcs[..i].contains(s)) {
            return refuse("leg.audio_slots.out_ssrcs", "each slot needs its own SSRC");
        }
        SubscriptionSpec::maps_valid(&self.pt_map, &self.ext_map).map_err(|why| SpecError { field: "leg.audio_slots", why })
    }
}

/// Congestion feedback towards a participant about the media it sends (the uplink): what its
/// offer negotiated, so its send-side bandwidth estimator can ramp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FeedbackSpec {
    /// The participant's header-extension id of transport-wide-cc-01
    /// (`http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01`, 1..=14 in
    /// the one-byte form): Sluice reads its transport-wide sequence numbers and sends
    /// transport-cc feedback (`a=rtcp-fb:* transport-cc`). `None`: not negotiated.
    #[cfg_attr(feature = "serde", serde(default))]
    pub twcc_ext: Option<u8>,
    /// `a=rtcp-fb:* goog-remb` negotiated: Sluice sends REMB with its estimate of the rate the
    /// participant's uplink carries.
    #[cfg_attr(feature = "serde", serde(default))]
    pub remb: bool,
}

impl LegSpec {
    /// A static-key leg with nothing optional: no fixed remote (latched from the first
    /// authenticated packet), no WebRTC, no congestion feedback, no audio slots, no receive
    /// budget. Set the rest with struct update syntax (`LegSpec { remote, ..LegSpec::new(…) }`),
    /// so a new optional field does not touch every place a leg is built.
    pub fn new(id: LegId, local_port: u16, rx: KeyMaterial, tx: KeyMaterial, feedback_ssrc: Ssrc) -> Self {
        Self {
            id,
            local_port,
            remote: None,
            rx,
            tx,
            feedback_ssrc,
            edge: None,
            feedback: FeedbackSpec::default(),
            audio_slots: None,
            rate_limit: None,
            rtcp: None,
            shared_port: false,
            cascade: false,
            plain_rtp: false,
        }
    }

    /// The local ports the leg holds: its RTP port and, without rtcp-mux, its RTCP port.
    pub fn ports(&self) -> impl Iterator<Item = u16> + use<> {
        core::iter::once(self.local_port).chain(self.rtcp.as_deref().map(|c| c.local_port))
    }

    /// The checks on the spec alone: a non-zero port, a one-byte transport-cc extension id, key
    /// and salt lengths that match their profiles, a remote for a static-key leg on a shared
    /// port.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.local_port == 0 {
            return refuse("leg.local_port", "must not be 0");
        }
        if self.feedback.twcc_ext.is_some_and(|id| !(1..=14).contains(&id)) {
            return refuse("leg.feedback.twcc_ext", "header-extension ids are 1..=14");
        }
        if let Some(a) = &self.audio_slots {
            a.validate()?;
        }
        if let Some(c) = &self.rtcp {
            if c.local_port == 0 || c.local_port == self.local_port {
                return refuse("leg.rtcp.local_port", "must be a port of its own, not 0 and not the RTP port");
            }
            if self.edge.is_some() {
                return refuse("leg.rtcp", "WebRTC legs multiplex RTCP with RTP (RFC 8834)");
            }
        }
        if self.shared_port {
            if self.edge.is_none() && self.remote.is_none() {
                return refuse("leg.remote", "a static-key leg on a shared port needs its remote: the port tells its legs apart by their source");
            }
            if self.rtcp.is_some() {
                return refuse("leg.rtcp", "a leg on a shared port multiplexes RTCP with RTP");
            }
        }
        if self.plain_rtp {
            if self.edge.is_some() {
                return refuse("leg.plain_rtp", "a WebRTC leg uses DTLS-SRTP; plain RTP is for static legs");
            }
            let remotes = [self.remote, self.rtcp.as_deref().and_then(|c| c.remote)];
            if self.remote.is_none() {
                return refuse("leg.remote", "a plain-RTP leg authenticates nothing, so it latches nothing: it needs its remote");
            }
            if remotes.into_iter().flatten().any(|r| !plain_rtp_allowed(r.ip())) {
                return refuse("leg.remote", "plain RTP goes only to a loopback, private (RFC 1918, RFC 4193) or link-local address");
            }
        }
        if let Some(r) = &self.rate_limit {
            if r.packets_per_s == 0 || r.bytes_per_s == 0 {
                return refuse("leg.rate_limit", "packets_per_s and bytes_per_s must be positive");
            }
            if !(10..=5000).contains(&r.burst_ms) {
                return refuse("leg.rate_limit.burst_ms", "must be 10..=5000");
            }
        }
        for (field, k) in [("leg.rx", &self.rx), ("leg.tx", &self.tx)] {
            if k.is_redacted() {
                return refuse(field, "redacted key material (from a snapshot taken without keys) cannot be installed");
            }
            if k.key.len() != k.profile.key_len() || k.salt.len() != k.profile.salt_len() {
                return refuse(field, "key or salt length does not match the profile");
            }
        }
        Ok(())
    }
}

/// ICE short-term credentials (RFC 8445 §5.3): `a=ice-ufrag` / `a=ice-pwd`.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IceCredentials {
    /// The username fragment.
    pub ufrag: String,
    /// The password.
    pub pwd: String,
}

impl core::fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Passwords never reach logs.
        f.debug_struct("IceCredentials").field("ufrag", &self.ufrag).finish_non_exhaustive()
    }
}

/// The DTLS role Sluice takes on a leg (RFC 5763 §5: `a=setup:active` is the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum DtlsRole {
    /// Sluice waits for the peer's ClientHello (`a=setup:passive` on Sluice's side).
    Server,
    /// Sluice sends the ClientHello once ICE selected a pair (`a=setup:active`).
    Client,
}

/// How a WebRTC leg connects: ICE-lite credentials of both sides and the DTLS parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EdgeSpec {
    /// Sluice's credentials on this leg (the peer signs its checks with `local.pwd`).
    pub local: IceCredentials,
    /// The peer's credentials (its USERNAME half is checked; its password is not needed by a
    /// lite agent, which never sends checks).
    pub remote: IceCredentials,
    /// Sluice's DTLS role.
    pub role: DtlsRole,
    /// The certificate fingerprint the peer announced (`a=fingerprint`), as
    /// `sha-256 AB:CD:...`; the handshake fails unless the peer's certificate matches it.
    pub remote_fingerprint: String,
}

/// Media kind of a track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MediaKind {
    /// Audio: no layers, no keyframes, no retransmission cache.
    Audio,
    /// Video: simulcast layers, keyframes, NACK answered from the cache.
    Video,
}

/// A video codec, for keyframe detection at layer switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Codec {
    /// Opus or any audio codec (never waits for a keyframe).
    Audio,
    /// VP8 (RFC 7741).
    Vp8,
    /// VP9.
    Vp9,
    /// H.264 (RFC 6184).
    H264,
    /// AV1.
    Av1,
}

impl Codec {
    /// The video codec whose payload the wire parser reads (keyframes, layers), `None` for audio.
    pub fn video(self) -> Option<crate::wire::codec::VideoCodec> {
        use crate::wire::codec::VideoCodec;
        match self {
            Codec::Audio => None,
            Codec::Vp8 => Some(VideoCodec::Vp8),
            Codec::Vp9 => Some(VideoCodec::Vp9),
            Codec::H264 => Some(VideoCodec::H264),
            Codec::Av1 => Some(VideoCodec::Av1),
        }
    }
}

/// A payload type the publisher uses on a track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PayloadSpec {
    /// The publisher's payload type.
    pub pt: Pt,
    /// What it carries.
    pub codec: Codec,
    /// The publisher's RTX payload type for it (RFC 4588 `apt`), if any.
    pub rtx_pt: Option<Pt>,
}

/// One simulcast layer (or the only encoding of a non-simulcast track).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LayerSpec {
    /// The SSRC, when signalled. Unsignalled layers are learned from the RID header extension.
    pub ssrc: Option<Ssrc>,
    /// The RTX SSRC, when signalled (else learned from repaired-RID).
    pub rtx_ssrc: Option<Ssrc>,
    /// The RID (`a=rid`), for unsignalled SSRCs.
    pub rid: Option<String>,
}

/// A published track: one media source of a publisher leg.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TrackSpec {
    /// Its id.
    pub id: TrackId,
    /// The leg that publishes it.
    pub publisher: LegId,
    /// Audio or video.
    pub kind: MediaKind,
    /// RTP clock rate in Hz (48000 for Opus, 90000 for video).
    pub clock_rate: u32,
    /// Layers, lowest quality first; the index is the layer number subscriptions target.
    pub layers: Vec<LayerSpec>,
    /// The payload types the publisher uses.
    pub payload_types: Vec<PayloadSpec>,
    /// The publisher's header-extension id for RID (`urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id`).
    pub rid_ext: Option<u8>,
    /// The publisher's header-extension id for repaired RID.
    pub repaired_rid_ext: Option<u8>,
    /// The m-line its RIDs belong to: a layer is learned only from a packet that also carries
    /// this MID (RIDs are scoped to their m-line, RFC 8843/8852, so a bundled camera and screen
    /// share may both send RID "h").
    #[cfg_attr(feature = "serde", serde(default))]
    pub mid: Option<MidSpec>,
    /// The publisher's header-extension id for the client-to-mixer audio level
    /// (`urn:ietf:params:rtp-hdrext:ssrc-audio-level`, RFC 6464; 1..=14), on an audio track:
    /// the core reads every packet's level into the track's [`crate::audio::TrackLevel`].
    #[cfg_attr(feature = "serde", serde(default))]
    pub audio_level_ext: Option<u8>,
    /// The group this audio track competes in for active speaker (the control plane sets one
    /// per session; `None`: the track is never ranked). Needs `audio_level_ext`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub speaker_group: Option<SpeakerGroup>,
    /// The publisher's header-extension id for the AV1 dependency descriptor (one-byte ids
    /// 1..=14, two-byte ids up to 255), on a video track: frames are then selected by the
    /// descriptor's decode targets (see [`crate::wire::dd`]), whatever the codec.
    #[cfg_attr(feature = "serde", serde(default))]
    pub dd_ext: Option<u8>,
}

/// The MID (RFC 8843) a track's RIDs are scoped to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MidSpec {
    /// The publisher's header-extension id for `urn:ietf:params:rtp-hdrext:sdes:mid` (1..=14).
    pub ext: u8,
    /// The MID value (`a=mid`), 1 to 16 bytes.
    pub value: String,
}

impl MidSpec {
    /// Whether the RTP packet `pkt` carries this MID.
    pub fn matches<T: AsRef<[u8]>>(&self, pkt: &crate::wire::rtp::Packet<T>) -> bool {
        pkt.find_extension(self.ext) == Some(self.value.as_bytes())
    }
}

impl TrackSpec {
    /// The checks on the spec alone: 1 to [`MAX_LAYERS`] layers (one for audio), each with an
    /// SSRC or a RID (and then the RID extension id), a clock rate, 7-bit payload types.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.layers.is_empty() || self.layers.len() > MAX_LAYERS {
            return refuse("track.layers", "need 1 to 8 layers");
        }
        if self.kind == MediaKind::Audio && self.layers.len() != 1 {
            return refuse("track.layers", "audio has exactly one layer");
        }
        if self.clock_rate == 0 {
            return refuse("track.clock_rate", "must be positive");
        }
        if self.payload_types.is_empty() {
            return refuse("track.payload_types", "need at least one");
        }
        if self.payload_types.iter().any(|p| p.pt.0 > 127 || p.rtx_pt.is_some_and(|r| r.0 > 127)) {
            return refuse("track.payload_types", "payload types are 7 bits");
        }
        if self.layers.iter().any(|l| l.ssrc.is_none() && l.rid.is_none()) {
            return refuse("track.layers", "a layer needs an SSRC or a RID");
        }
        if self.layers.iter().any(|l| l.ssrc.is_none()) && self.rid_ext.is_none() {
            return refuse("track.rid_ext", "layers without SSRC need the RID extension id");
        }
        if self.audio_level_ext.is_some_and(|id| !(1..=14).contains(&id)) {
            return refuse("track.audio_level_ext", "header-extension ids are 1..=14");
        }
        if self.audio_level_ext.is_some() && self.kind != MediaKind::Audio {
            return refuse("track.audio_level_ext", "only audio tracks carry an audio level");
        }
        if self.speaker_group.is_some() && self.audio_level_ext.is_none() {
            return refuse("track.speaker_group", "ranking speakers needs the audio-level extension id");
        }
        if self.dd_ext == Some(0) {
            return refuse("track.dependency_descriptor_ext", "header-extension ids are 1..=255");
        }
        if self.dd_ext.is_some() && self.kind != MediaKind::Video {
            return refuse("track.dependency_descriptor_ext", "only video tracks carry a dependency descriptor");
        }
        if let Some(m) = &self.mid {
            if !(1..=14).contains(&m.ext) {
                return refuse("track.mid_ext", "header-extension ids are 1..=14");
            }
            if m.value.is_empty() || m.value.len() > MAX_MID_LEN {
                return refuse("track.mid", "a MID is 1 to 16 bytes");
            }
        }
        Ok(())
    }
}

/// A subscription: a leg receiving a track.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SubscriptionSpec {
    /// The receiving leg.
    pub subscriber: LegId,
    /// The track it receives.
    pub track: TrackId,
    /// The SSRC the subscriber sees.
    pub out_ssrc: Ssrc,
    /// The RTX SSRC the subscriber sees; without one, retransmissions are sent as the original.
    pub out_rtx_ssrc: Option<Ssrc>,
    /// Payload-type map, publisher → subscriber (RTX payload types included). A publisher payload
    /// type missing here is not forwarded.
    pub pt_map: Vec<(Pt, Pt)>,
    /// Header-extension id map, publisher → subscriber (ids 1..=255; at most two mappings with
    /// an id above 14, which only two-byte-form packets carry). Extensions not in the map are
    /// removed.
    pub ext_map: Vec<(u8, u8)>,
    /// The layer the subscriber should get (clamped to the track's highest).
    pub target_layer: u8,
    /// A paused subscription receives nothing.
    pub paused: bool,
    /// How the subscriber leg's bandwidth allocator ranks it: higher first (a screen share
    /// above a prominent speaker above the rest). 0 is the default.
    #[cfg_attr(feature = "serde", serde(default))]
    pub priority: u8,
    /// The highest spatial layer inside the stream (VP9/AV1 SVC) the subscriber gets; `None`:
    /// all.
    #[cfg_attr(feature = "serde", serde(default))]
    pub max_spatial: Option<u8>,
    /// The highest temporal layer the subscriber gets; `None`: all.
    #[cfg_attr(feature = "serde", serde(default))]
    pub max_temporal: Option<u8>,
    /// A relay (non-empty): the subscriber gets every layer of the track, each as a stream of
    /// its own, and no layer is chosen for it: layer 0 as `out_ssrc`/`out_rtx_ssrc`, layer
    /// `k ≥ 1` as `relay[k - 1]` (SSRC, RTX SSRC). For cascade legs between two nodes: the other
    /// node's subscribers choose among the layers. `target_layer` and the ceilings are ignored;
    /// no allocator or fallback touches a relay.
    #[cfg_attr(feature = "serde", serde(default))]
    pub relay: Vec<(Ssrc, Option<Ssrc>)>,
}

impl SubscriptionSpec {
    /// The checks on the spec alone: 1 to [`super::MAX_PT_MAP`] payload-type mappings of 7-bit
    /// payload types, one-byte extension ids (1..=14) on both sides of the extension map; a
    /// relay's lanes fit [`MAX_LAYERS`] and all its SSRCs differ.
    pub fn validate(&self) -> Result<(), SpecError> {
        Self::maps_valid(&self.pt_map, &self.ext_map).map_err(|why| {
            let field = if why.starts_with("extension") { "subscription.ext_map" } else { "subscription.pt_map" };
            SpecError { field, why }
        })?;
        if self.relay.len() >= MAX_LAYERS {
            return Err(SpecError { field: "subscription.relay", why: "a relay has at most 7 lanes beside the subscription's own SSRC" });
        }
        let all: Vec<Ssrc> = self.out_ssrcs().collect();
        if all.iter().enumerate().any(|(i, s)| all[..i].contains(s)) {
            return Err(SpecError { field: "subscription.relay", why: "every SSRC of a relay (and its RTX SSRCs) must differ" });
        }
        Ok(())
    }

    /// Every SSRC the subscriber receives this subscription on: the out-SSRC, its RTX SSRC and
    /// a relay's lanes'.
    pub fn out_ssrcs(&self) -> impl Iterator<Item = Ssrc> + '_ {
        [Some(self.out_ssrc), self.out_rtx_ssrc].into_iter().chain(self.relay.iter().flat_map(|&(s, r)| [Some(s), r])).flatten()
    }

    /// The number of streams it is: 1, or a relay's lanes.
    pub fn lanes(&self) -> usize {
        1 + self.relay.len()
    }

    /// The checks on a payload-type and an extension-id map (shared with audio slots).
    pub(crate) fn maps_valid(pt_map: &[(Pt, Pt)], ext_map: &[(u8, u8)]) -> Result<(), &'static str> {
        if pt_map.is_empty() || pt_map.len() > super::MAX_PT_MAP {
            return Err("need 1 to 8 payload-type mappings");
        }
        if pt_map.iter().any(|(a, b)| a.0 > 127 || b.0 > 127) {
            return Err("payload types are 7 bits");
        }
        if ext_map.iter().any(|&(a, b)| a == 0 || b == 0) {
            return Err("extension ids are 1..=255");
        }
        if ext_map.iter().filter(|&&(a, b)| a > 14 || b > 14).count() > crate::wire::rtp::ExtensionIdMap::WIDE {
            return Err("extension maps hold at most 2 ids above 14 (two-byte form)");
        }
        Ok(())
    }
}

/// One change in a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Op {
    /// Create or replace a leg. Replacing keeps the leg's SRTP stream state when the keys are
    /// unchanged.
    UpsertLeg(LegSpec),
    /// Remove a leg, its tracks and every subscription from or to it.
    RemoveLeg(LegId),
    /// Create or replace a track. Replacing keeps the state of layers whose SSRC is unchanged.
    UpsertTrack(TrackSpec),
    /// Remove a track and its subscriptions.
    RemoveTrack(TrackId),
    /// Create or replace a subscription. Replacing keeps its rewriter and SRTP send state, so
    /// pause, resume and layer changes are seamless.
    UpsertSubscription(SubscriptionSpec),
    /// Remove a subscription.
    RemoveSubscription {
        /// The receiving leg.
        subscriber: LegId,
        /// The track.
        track: TrackId,
    },
}

/// A versioned, atomic change set: all of it applies, or none of it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Delta {
    /// The generation the tables have after this delta: the current generation + 1, or anything
    /// for a full snapshot.
    pub generation: Generation,
    /// A full snapshot: everything not in `ops` is removed (state of what stays is kept).
    pub replace_all: bool,
    /// The changes, in order.
    pub ops: Vec<Op>,
}

impl Delta {
    /// Replaces every leg's key material by its redacted copy ([`KeyMaterial::redacted`]).
    pub fn redact_keys(&mut self) {
        for op in &mut self.ops {
            if let Op::UpsertLeg(l) = op {
                l.rx = l.rx.redacted();
                l.tx = l.tx.redacted();
            }
        }
    }
}
