//! The reference signaling service: how a signaling developer puts browsers into a Sluice
//! meeting with nothing but Sluice's public gRPC API.
//!
//! ```text
//!   browser ── GET / ──────────────▶ the meeting page (static/meeting.html)
//!   browser ── WebSocket /ws ──────▶ {"ice": {room, name}}                 (before its offer)
//!   Routes.TurnCredentials(user = "room/name", ttl = the node's default)
//!   browser ◀───────────────────────── {"ice_servers": [{urls, username, credential}]}
//!                                         ([] when the control plane hands out no TURN)
//!   browser ── WebSocket /ws ──────▶ {"join": {room, name, offer, screen?: mid, topn?: true}}
//!       offer parsed: ICE ufrag/pwd, DTLS fingerprint, the microphone's SSRC, the camera's
//!       (and the screen share's) simulcast RIDs or SSRC, codec, payload types and
//!       header-extension ids, the receive slots (its recvonly m-lines)
//!   Routes.Apply(session = room): a WebRTC leg (Sluice DTLS-passive), audio, camera and screen
//!       tracks, subscriptions both ways with every member already there (each track into a
//!       free receive slot of its kind, on an SSRC the answer announces; a screen share's with
//!       allocator priority 2, so it keeps its full layer when a subscriber's bandwidth runs short)
//!   browser ◀───────────────────────── {"answer": sdp, "slots": {mid: track}}   (a=ice-lite,
//!                                         Sluice's candidate, credentials and fingerprint from
//!                                         the ApplyResponse)
//!   browser ◀───────────────────────── {"slots": {mid: track}} whenever its slots change
//!   WebSocket closed ──────────────▶ Routes.Apply: remove_leg (its tracks and every
//!                                    subscription to them go with it), its slots elsewhere
//!                                    refilled with tracks not shown yet
//! ```
//!
//! One RTCPeerConnection per participant, with its receive slots offered up front, so a join is
//! one offer/answer and nobody renegotiates: a participant sees as many others as it offered
//! slots for (the page's `?slots=`, default 2).
//!
//! Codecs: a participant publishes its camera in the first codec of its camera m-line that Sluice
//! forwards (VP8, VP9 profile 0, AV1 profile 0), so the page picks it with
//! `setCodecPreferences` (`?codec=vp9`, `?codec=av1`); today's page puts VP8 first. VP8 comes as
//! simulcast by RID (optionally with temporal layers, `?temporal=L1T3`); VP9 and AV1 as one SVC
//! stream (`?svc=L3T3_KEY`): one SSRC, one `Layer`, its spatial and temporal layers told apart by
//! the AV1 dependency descriptor, whose id becomes `Track.dependency_descriptor_ext`. Receive
//! slots take every codec Sluice forwards (a slot shows whichever track is free) and the
//! descriptor, which a subscription maps from the publisher's id to the slot's, for SVC tracks
//! only (across a simulcast switch its frame numbers would jump; VP8 carries its temporal layer
//! in its payload descriptor). `Subscription.max_spatial_layer`/`max_temporal_layer` are left
//! unset (every layer): whoever decides a subscriber's ceilings sets them over gRPC.
//!
//! TURN: when the control plane hands out TURN credentials (`[controlplane.turn]`), each page
//! asks for its ICE servers before it makes its offer and gets Sluice's TURN URLs with
//! credentials of its own (`Routes.TurnCredentials`, user `room/name`: the TURN server's
//! allocation quota is per participant), valid for the node's default lifetime (a day unless
//! configured: an allocation ends when its credentials expire, so they must outlast the call). A
//! participant behind a restrictive network relays through them; the page's `?relay=udp|tcp|tls`
//! (or `?relay=1`, any) makes it relay-only through the URLs of one transport. Without TURN, or
//! when the control plane cannot be asked, the answer is no ICE servers and the join goes on.
//!
//! With `topn` (the page's `?topn=1`) the participant's audio slots are Sluice's top-N audio
//! slots instead (`Leg.audio_slots` on their SSRCs, the session's `top_n_audio` set, N its number
//! of audio slots): they carry the loudest others whoever they are, the speaker's SSRC as CSRC,
//! and it gets no per-track audio subscription. Its page shows them as `top-n`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use sluice_controlplane::pb;
use sluice_controlplane::pb::change::Change as C;
use sluice_controlplane::pb::routes_client::RoutesClient;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

/// The page every participant loads.
pub const PAGE: &str = include_str!("../static/meeting.html");

/// One m-line of an offer, as far as signaling needs it.
#[derive(Clone, Debug, Default)]
struct MLine {
    kind: String,
    mid: String,
    direction: String,
    /// Payload types in the m= line's order (the offerer's preference).
    fmts: Vec<u32>,
    /// (payload type, encoding name) from a=rtpmap.
    rtpmap: Vec<(u32, String)>,
    /// (payload type, parameters) from a=fmtp.
    fmtp: Vec<(u32, String)>,
    /// (rtx payload type, apt) from a=fmtp ... apt=.
    apt: Vec<(u32, u32)>,
    /// (id, uri) from a=extmap.
    extmap: Vec<(u32, String)>,
    rids: Vec<String>,
    ssrc: Option<u32>,
    /// The first a=ssrc-group:FID: (media SSRC, its RTX SSRC).
    fid: Option<(u32, u32)>,
    /// (payload type, feedback) from a=rtcp-fb.
    rtcp_fb: Vec<(u32, String)>,
}

/// What an offer says.
#[derive(Clone, Debug, Default)]
struct Offer {
    ufrag: String,
    pwd: String,
    fingerprint: String,
    /// a=extmap-allow-mixed (RFC 8285 §6): one- and two-byte header extensions in one stream,
    /// which a dependency descriptor longer than 16 bytes (a keyframe's) needs.
    extmap_allow_mixed: bool,
    mlines: Vec<MLine>,
}

fn parse_offer(sdp: &str) -> anyhow::Result<Offer> {
    let mut o = Offer::default();
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            let mut words = m.split(' ');
            let kind = words.next().unwrap_or_default().to_string();
            let fmts = words.skip(2).filter_map(|pt| pt.parse().ok()).collect();
            o.mlines.push(MLine { kind, fmts, ..MLine::default() });
            continue;
        }
        let Some(a) = line.strip_prefix("a=") else { continue };
        let (key, value) = a.split_once(':').unwrap_or((a, ""));
        match (key, o.mlines.last_mut()) {
            ("ice-ufrag", _) => o.ufrag = value.into(),
            ("extmap-allow-mixed", _) => o.extmap_allow_mixed = true,
            ("ice-pwd", _) => o.pwd = value.into(),
            ("fingerprint", _) => o.fingerprint = value.into(),
            ("mid", Some(m)) => m.mid = value.into(),
            ("sendonly" | "recvonly" | "sendrecv" | "inactive", Some(m)) => m.direction = key.into(),
            ("rtpmap", Some(m)) => {
                if let Some((pt, enc)) = value.split_once(' ') {
                    m.rtpmap.push((pt.parse()?, enc.split('/').next().unwrap_or_default().to_string()));
                }
            }
            ("fmtp", Some(m)) => {
                if let Some((pt, params)) = value.split_once(' ') {
                    let pt = pt.parse()?;
                    if let Some(apt) = params.split(';').find_map(|p| p.trim().strip_prefix("apt=")) {
                        m.apt.push((pt, apt.parse()?));
                    }
                    m.fmtp.push((pt, params.trim().to_string()));
                }
            }
            ("extmap", Some(m)) => {
                if let Some((id, uri)) = value.split_once(' ') {
                    m.extmap.push((id.split('/').next().unwrap_or(id).parse()?, uri.trim().to_string()));
                }
            }
            ("rtcp-fb", Some(m)) => {
                if let Some((pt, fb)) = value.split_once(' ')
                    && let Ok(pt) = pt.parse()
                {
                    m.rtcp_fb.push((pt, fb.trim().to_string()));
                }
            }
            ("rid", Some(m)) => {
                if let Some((rid, "send")) = value.split_once(' ').map(|(r, d)| (r, d.split(' ').next().unwrap_or(d))) {
                    m.rids.push(rid.into());
                }
            }
            ("ssrc", Some(m)) if m.ssrc.is_none() => m.ssrc = value.split(' ').next().and_then(|s| s.parse().ok()),
            ("ssrc-group", Some(m)) if m.fid.is_none() => {
                if let ["FID", media, rtx] = value.split(' ').collect::<Vec<_>>()[..] {
                    m.fid = Some((media.parse()?, rtx.parse()?));
                }
            }
            _ => {}
        }
    }
    if o.ufrag.is_empty() || o.pwd.is_empty() || o.fingerprint.is_empty() {
        bail!("the offer lacks ICE credentials or a DTLS fingerprint");
    }
    Ok(o)
}

impl MLine {
    fn pt_of(&self, codec: &str) -> Option<u32> {
        self.rtpmap.iter().find(|(_, c)| c.eq_ignore_ascii_case(codec)).map(|(pt, _)| *pt)
    }

    /// The video codecs Sluice forwards that this m-line offers, each once (its first payload
    /// type in the offerer's order with a profile every receiver decodes), in the offerer's order.
    fn video_codecs(&self) -> Vec<CodecPt> {
        let mut found: Vec<CodecPt> = Vec::new();
        for &pt in &self.fmts {
            let Some((_, name)) = self.rtpmap.iter().find(|(p, _)| *p == pt) else { continue };
            let fmtp = self.fmtp.iter().find(|(p, _)| *p == pt).map(|(_, f)| f.clone());
            let Some(codec) = VideoCodec::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(name)) else { continue };
            if codec.decodable_everywhere(fmtp.as_deref().unwrap_or_default()) && !found.iter().any(|f| f.codec == codec) {
                found.push(CodecPt { codec, pt, rtx: self.rtx_of(pt), fmtp });
            }
        }
        found
    }

    fn rtx_of(&self, pt: u32) -> Option<u32> {
        self.apt.iter().find(|(_, apt)| *apt == pt).map(|(rtx, _)| *rtx)
    }

    fn has_fb(&self, pt: u32, fb: &str) -> bool {
        self.rtcp_fb.iter().any(|(p, f)| *p == pt && f == fb)
    }

    fn ext(&self, uri: &str) -> Option<u32> {
        self.extmap.iter().find(|(_, u)| u == uri).map(|(id, _)| *id)
    }
}

const EXT_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const EXT_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const EXT_RRID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
/// The client-to-mixer audio level (RFC 6464): Sluice ranks active speakers from it.
const EXT_AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// Transport-wide sequence numbers: Sluice sends transport-cc feedback for what it receives.
const EXT_TWCC: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// The AV1 dependency descriptor: each frame's spatial and temporal layer and what it depends on,
/// for any codec. Sluice reads the layers from it; subscribers of an SVC track decode with it.
const EXT_DD: &str = "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/// A video codec Sluice forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VideoCodec {
    Vp8,
    Vp9,
    Av1,
}

impl VideoCodec {
    /// Today's default first: a receive slot answers them in this order.
    const ALL: [Self; 3] = [Self::Vp8, Self::Vp9, Self::Av1];

    /// The encoding name in a=rtpmap.
    fn name(self) -> &'static str {
        match self {
            Self::Vp8 => "VP8",
            Self::Vp9 => "VP9",
            Self::Av1 => "AV1",
        }
    }

    fn pb(self) -> pb::Codec {
        match self {
            Self::Vp8 => pb::Codec::Vp8,
            Self::Vp9 => pb::Codec::Vp9,
            Self::Av1 => pb::Codec::Av1,
        }
    }

    /// Sluice never transcodes, so a track's profile must be one every subscriber decodes: VP9
    /// profile 0 (RFC 9628 §6: profile-id absent means 0) and AV1 Main (profile 0, the AV1 RTP
    /// spec's default).
    fn decodable_everywhere(self, fmtp: &str) -> bool {
        let param = |key: &str| fmtp.split(';').find_map(|p| p.trim().strip_prefix(key)?.strip_prefix('='));
        match self {
            Self::Vp8 => true,
            Self::Vp9 => param("profile-id").is_none_or(|v| v == "0"),
            Self::Av1 => param("profile").is_none_or(|v| v == "0"),
        }
    }
}

/// A video codec as one participant's m-line negotiates it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CodecPt {
    codec: VideoCodec,
    pt: u32,
    rtx: Option<u32>,
    /// Its a=fmtp parameters (VP9's profile-id, AV1's profile/level/tier), answered as offered.
    fmtp: Option<String>,
}

impl CodecPt {
    /// Its lines in an answer: rtpmap, fmtp, the feedback Sluice takes and gives (NACK, PLI,
    /// FIR), its RTX.
    fn sdp_lines(&self) -> Vec<String> {
        let pt = self.pt;
        let mut lines = vec![format!("a=rtpmap:{pt} {}/90000", self.codec.name())];
        lines.extend(self.fmtp.iter().map(|f| format!("a=fmtp:{pt} {f}")));
        lines.extend([format!("a=rtcp-fb:{pt} nack"), format!("a=rtcp-fb:{pt} nack pli"), format!("a=rtcp-fb:{pt} ccm fir")]);
        if let Some(rtx) = self.rtx {
            lines.extend([format!("a=rtpmap:{rtx} rtx/90000"), format!("a=fmtp:{rtx} apt={pt}")]);
        }
        lines
    }

    /// Its payload types in an m= line: the codec's, then its RTX's.
    fn pts(&self) -> impl Iterator<Item = u32> + use<> {
        std::iter::once(self.pt).chain(self.rtx)
    }
}

/// The dependency descriptor's id on `m`, when Sluice uses it there: on a single-stream video
/// m-line (SVC, or one encoding; a simulcast switch would break the descriptor's frame numbering,
/// which Sluice does not rewrite, so simulcast goes without), one-byte (1..=14), or two-byte
/// (15..=255) when `a=extmap-allow-mixed` was offered.
fn dd_ext(offer: &Offer, m: &MLine) -> Option<u32> {
    m.ext(EXT_DD).filter(|id| m.kind == "video" && m.rids.is_empty() && ((1..=14).contains(id) || (offer.extmap_allow_mixed && *id <= 255)))
}

/// Allocator priority of a screen share's subscriptions: it keeps its full layer while cameras
/// give way when a subscriber's bandwidth runs short (cameras are 0).
pub const SCREEN_PRIORITY: u32 = 2;
/// A participant's receive budget in Sluice: packets per second...
pub const PARTICIPANT_PPS: u32 = 3_000;
/// ... and bytes per second (20 Mbit/s).
pub const PARTICIPANT_BYTES_PER_S: u64 = 2_500_000;
/// The most receive slots of one kind a participant may offer.
pub const MAX_SLOTS: usize = 16;
/// How long a page's ICE servers wait for `Routes.TurnCredentials`; after that it joins without
/// TURN rather than not at all.
pub const TURN_CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(2);

/// A receive slot: one recvonly m-line, and the track Sluice sends into it.
#[derive(Clone, Debug)]
struct Slot {
    mid: String,
    track: Option<String>,
}

/// One video track a participant publishes (camera or screen share).
#[derive(Clone, Debug)]
struct VideoSource {
    /// Its m-line.
    mid: String,
    /// Simulcast layers (1 without simulcast, as with SVC: one stream holds every layer).
    layers: u32,
    /// Allocator priority of its subscriptions.
    priority: u32,
    /// The codec it sends: the first of its m-line's offered codecs that Sluice forwards.
    codec: CodecPt,
    /// Its dependency-descriptor id (see [`dd_ext`]).
    dd_ext: Option<u32>,
}

/// A participant in a room.
#[derive(Clone, Debug)]
struct Member {
    /// Join order across the service (makes its out-SSRCs unique).
    seq: u32,
    opus: u32,
    /// The video codecs its receive slots take (from its first recvonly video m-line).
    recv: Vec<CodecPt>,
    /// Its receive slots' dependency-descriptor id.
    recv_dd_ext: Option<u32>,
    camera: VideoSource,
    screen: Option<VideoSource>,
    /// Its receive slots (recvonly m-lines) and what each shows (`top-n` for Sluice's top-N
    /// audio slots).
    audio_slots: Vec<Slot>,
    video_slots: Vec<Slot>,
    /// Where slot changes are told to its page.
    notify: Option<mpsc::UnboundedSender<serde_json::Value>>,
}

impl Member {
    /// The SSRC Sluice sends audio (`video = false`) or video slot `slot` on.
    fn out_ssrc(&self, slot: usize, video: bool) -> u32 {
        0x5100_0000u32.wrapping_add(self.seq.wrapping_mul(64)) + if video { 16 } else { 0 } + slot as u32
    }

    /// The RTX SSRC of video slot `slot` (retransmissions, and the padding Sluice probes the
    /// subscriber's bandwidth with).
    fn out_rtx_ssrc(&self, slot: usize) -> Option<u32> {
        self.recv.iter().any(|c| c.rtx.is_some()).then(|| 0x5100_0000u32.wrapping_add(self.seq.wrapping_mul(64)) + 32 + slot as u32)
    }

    /// The tracks it publishes: (id suffix, video source; `None` for the microphone).
    fn published(&self) -> Vec<(&'static str, Option<&VideoSource>)> {
        let mut v = vec![("audio", None), ("video", Some(&self.camera))];
        v.extend(self.screen.as_ref().map(|s| ("screen", Some(s))));
        v
    }

    /// The video source published on m-line `mid`.
    fn source(&self, mid: &str) -> Option<&VideoSource> {
        std::iter::once(&self.camera).chain(&self.screen).find(|v| v.mid == mid)
    }

    /// What each receive slot shows, by mid, as its page is told.
    fn slot_map(&self) -> serde_json::Value {
        let m: serde_json::Map<String, serde_json::Value> =
            self.audio_slots.iter().chain(&self.video_slots).map(|s| (s.mid.clone(), s.track.clone().into())).collect();
        serde_json::json!({ "slots": m })
    }

    fn tell_slots(&self) {
        if let Some(n) = &self.notify {
            let _ = n.send(self.slot_map());
        }
    }
}

#[derive(Debug, Default)]
struct Rooms {
    next_seq: u32,
    rooms: BTreeMap<String, BTreeMap<String, Member>>,
}

/// What a subscription maps: payload types and header-extension ids, publisher → subscriber.
type Maps = (Vec<(u32, u32)>, Vec<(u32, u32)>);

fn subscription(subscriber: &str, track: &str, out_ssrc: u32, out_rtx_ssrc: Option<u32>, (pt_map, ext_map): Maps, top_layer: u32, priority: u32) -> pb::Change {
    let ids = |m: Vec<(u32, u32)>| m.into_iter().map(|(from, to)| pb::IdMapping { from, to }).collect();
    pb::Change {
        change: Some(C::Subscription(pb::Subscription {
            subscriber_leg: subscriber.into(),
            track: track.into(),
            out_ssrc,
            out_rtx_ssrc,
            pt_map: ids(pt_map),
            ext_map: ids(ext_map),
            // The top layer as the ceiling: the subscriber leg's bandwidth allocator picks what
            // its estimate allows, by priority.
            target_layer: top_layer,
            priority,
            ..Default::default()
        })),
    }
}

/// Puts each of `publisher`'s tracks that `subscriber` does not show yet into a free receive
/// slot of its kind, and returns the subscriptions. A track with no free slot is not shown (a
/// page offers as many slots as it wants to show).
fn subscribe(subscriber: (&str, &mut Member), publisher: (&str, &Member)) -> Vec<pb::Change> {
    let ((sname, s), (pname, p)) = (subscriber, publisher);
    let mut changes = Vec::new();
    for (suffix, video) in p.published() {
        let track = format!("{pname}-{suffix}");
        // The codec as the subscriber receives it.
        let received = video.map(|v| (v, s.recv.iter().find(|c| c.codec == v.codec.codec).cloned()));
        let slots = if video.is_some() { &mut s.video_slots } else { &mut s.audio_slots };
        if slots.iter().any(|x| x.track.as_deref() == Some(track.as_str())) {
            continue;
        }
        let Some(slot) = slots.iter().position(|x| x.track.is_none()) else {
            tracing::info!(subscriber = sname, %track, "no free receive slot: not shown");
            continue;
        };
        if let Some((v, None)) = &received {
            tracing::info!(subscriber = sname, %track, codec = v.codec.codec.name(), "the subscriber does not receive this codec: not shown");
            continue;
        }
        slots[slot].track = Some(track.clone());
        changes.push(match received {
            None => subscription(sname, &track, s.out_ssrc(slot, false), None, (vec![(p.opus, s.opus)], vec![]), 0, 0),
            Some((v, r)) => {
                let r = r.expect("checked above");
                let mut pts = vec![(v.codec.pt, r.pt)];
                let mut rtx = None;
                if let (Some(a), Some(b)) = (v.codec.rtx, r.rtx) {
                    pts.push((a, b));
                    rtx = s.out_rtx_ssrc(slot);
                }
                // The dependency descriptor reaches the subscriber when both sides negotiated it
                // (an id above 14 on the subscriber's side reaches it in two-byte-form packets
                // only: the publisher's keyframes).
                let ext = match (v.dd_ext, s.recv_dd_ext) {
                    (Some(from), Some(to)) => vec![(from, to)],
                    _ => vec![],
                };
                subscription(sname, &track, s.out_ssrc(slot, true), rtx, (pts, ext), v.layers.saturating_sub(1), v.priority)
            }
        });
    }
    changes
}

/// Sluice's answer: ICE-lite, DTLS passive, the camera's simulcast (or SVC stream) received in
/// the codec it prefers, each receive slot sent on its announced SSRC in any codec Sluice forwards
/// (a slot shows whichever track is free, so it takes them all).
fn answer(offer: &Offer, w: &pb::WebRtcLocal, me: &Member, twcc_ext: Option<u32>) -> anyhow::Result<String> {
    let c = w.candidates.first().ok_or_else(|| anyhow!("Sluice announced no candidate"))?;
    let mids: Vec<&str> = offer.mlines.iter().map(|m| m.mid.as_str()).collect();
    let mut s = vec![
        "v=0".to_string(),
        "o=- 1 1 IN IP4 127.0.0.1".into(),
        "s=sluice".into(),
        "t=0 0".into(),
        format!("a=group:BUNDLE {}", mids.join(" ")),
        "a=ice-lite".into(),
        "a=msid-semantic: WMS *".into(),
    ];
    // Two-byte header extensions where one-byte ones do not fit: a keyframe's dependency
    // descriptor carries its whole structure (more than 16 bytes).
    let dd_anywhere = (me.recv_dd_ext.is_some() && !me.video_slots.is_empty()) || std::iter::once(&me.camera).chain(&me.screen).any(|v| v.dd_ext.is_some());
    if offer.extmap_allow_mixed && dd_anywhere {
        s.push("a=extmap-allow-mixed".into());
    }
    for m in &offer.mlines {
        let video = m.kind == "video";
        let sending = m.direction == "sendonly";
        // What the participant sends on a publishing m-line, what Sluice may send it on a slot.
        let codecs: Vec<&CodecPt> = match (video, sending) {
            (true, true) => vec![&me.source(&m.mid).unwrap_or(&me.camera).codec],
            (true, false) => me.recv.iter().collect(),
            (false, _) => vec![],
        };
        let (pts, codec_lines): (Vec<u32>, Vec<String>) = if video {
            (codecs.iter().flat_map(|c| c.pts()).collect(), codecs.iter().flat_map(|c| c.sdp_lines()).collect())
        } else {
            (vec![me.opus], vec![format!("a=rtpmap:{} opus/48000/2", me.opus), format!("a=fmtp:{} minptime=10;useinbandfec=1", me.opus)])
        };
        let transport_cc = |s: &mut Vec<String>| {
            let first = if video { codecs.iter().map(|c| c.pt).collect() } else { vec![me.opus] };
            s.extend(first.into_iter().map(|pt| format!("a=rtcp-fb:{pt} transport-cc")));
        };
        s.push(format!("m={} {} UDP/TLS/RTP/SAVPF {}", m.kind, c.port, pts.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")));
        s.extend([
            format!("c=IN IP4 {}", c.ip),
            format!("a=ice-ufrag:{}", w.ice_ufrag),
            format!("a=ice-pwd:{}", w.ice_pwd),
            format!("a=fingerprint:{}", w.fingerprint),
            "a=setup:passive".into(),
            format!("a=mid:{}", m.mid),
            "a=rtcp-mux".into(),
        ]);
        s.extend(codec_lines);
        if sending {
            s.push("a=recvonly".into());
            // Transport-wide congestion control on what the participant sends, when its offer
            // has it with the id the leg was programmed with (one id per transport).
            if let Some(id) = m.ext(EXT_TWCC).filter(|id| Some(*id) == twcc_ext) {
                s.push(format!("a=extmap:{id} {EXT_TWCC}"));
                transport_cc(&mut s);
            } else if let Some(c) = codecs.first().filter(|c| twcc_ext.is_none() && m.has_fb(c.pt, "goog-remb")) {
                s.push(format!("a=rtcp-fb:{} goog-remb", c.pt));
            }
            if !video && let Some(id) = m.ext(EXT_AUDIO_LEVEL).filter(|id| (1..=14).contains(id)) {
                s.push(format!("a=extmap:{id} {EXT_AUDIO_LEVEL}"));
            }
            if video {
                for uri in [EXT_MID, EXT_RID, EXT_RRID] {
                    if let Some(id) = m.ext(uri) {
                        s.push(format!("a=extmap:{id} {uri}"));
                    }
                }
                if let Some(id) = me.source(&m.mid).and_then(|v| v.dd_ext) {
                    s.push(format!("a=extmap:{id} {EXT_DD}"));
                }
                if !m.rids.is_empty() {
                    s.extend(m.rids.iter().map(|r| format!("a=rid:{r} recv")));
                    s.push(format!("a=simulcast:recv {}", m.rids.join(";")));
                }
            }
        } else {
            // A receive slot: Sluice sends on the SSRC it announces here.
            let slots = if video { &me.video_slots } else { &me.audio_slots };
            let slot = slots.iter().position(|x| x.mid == m.mid).ok_or_else(|| anyhow!("m-line {} is no receive slot", m.mid))?;
            let ssrc = me.out_ssrc(slot, video);
            let rtx = if video { me.out_rtx_ssrc(slot) } else { None };
            s.push("a=sendonly".into());
            // Sluice stamps its own transport-wide sequence numbers on what it sends and reads
            // the subscriber's transport-cc feedback (its congestion control for this leg).
            if let Some(id) = m.ext(EXT_TWCC).filter(|id| Some(*id) == twcc_ext) {
                s.push(format!("a=extmap:{id} {EXT_TWCC}"));
                transport_cc(&mut s);
            }
            // The dependency descriptor of SVC tracks, on the id this slot's offer gave it.
            if video && let Some(id) = me.recv_dd_ext.filter(|id| m.ext(EXT_DD) == Some(*id)) {
                s.push(format!("a=extmap:{id} {EXT_DD}"));
            }
            s.push(format!("a=msid:sluice-{ssrc} sluice-{ssrc}"));
            if let Some(rtx) = rtx {
                s.push(format!("a=ssrc-group:FID {ssrc} {rtx}"));
            }
            for x in std::iter::once(ssrc).chain(rtx) {
                s.extend([format!("a=ssrc:{x} cname:sluice"), format!("a=ssrc:{x} msid:sluice-{ssrc} sluice-{ssrc}")]);
            }
        }
        s.push(format!("a={}", c.candidate));
        s.push("a=end-of-candidates".into());
    }
    s.push(String::new());
    Ok(s.join("\r\n"))
}

/// The service: rooms, and the gRPC client every change goes through.
#[derive(Debug, Clone)]
pub struct Signaling {
    routes: RoutesClient<Channel>,
    rooms: Arc<Mutex<Rooms>>,
}

impl Signaling {
    /// Connects to the control plane's gRPC endpoint (`http://host:port`).
    pub async fn connect(grpc: &str) -> anyhow::Result<Self> {
        let routes = RoutesClient::connect(grpc.to_string()).await.with_context(|| format!("connecting to {grpc}"))?;
        Ok(Self { routes, rooms: Arc::default() })
    }

    /// Serves the page and the WebSocket on `listen` until the process ends.
    pub async fn serve(self, listen: SocketAddr) -> anyhow::Result<()> {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        tracing::info!(%listen, "signaling ready: open http://{listen}/?room=demo&name=alice");
        loop {
            let (stream, peer) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.connection(stream).await {
                    tracing::warn!(%peer, error = %e, "signaling connection failed");
                }
            });
        }
    }

    async fn connection(self, mut stream: TcpStream) -> anyhow::Result<()> {
        let mut head = [0u8; 2048];
        let n = stream.peek(&mut head).await?;
        let text = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
        if !text.contains("upgrade: websocket") {
            let body = PAGE;
            let resp =
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            stream.write_all(resp.as_bytes()).await?;
            return Ok(());
        }
        let mut ws = tokio_tungstenite::accept_async(stream).await?;
        let (notify, mut told) = mpsc::unbounded_channel::<serde_json::Value>();
        let mut joined: Option<(String, String)> = None;
        let result = loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                Some(v) = told.recv() => {
                    if let Err(e) = ws.send(Message::text(v.to_string())).await {
                        break Err(e.into());
                    }
                    continue;
                }
            };
            let Some(msg) = msg else { break Ok(()) };
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(e) => break Err(e.into()),
            };
            let v: serde_json::Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => break Err(e.into()),
            };
            if let Some(i) = v.get("ice") {
                let servers = self.ice_servers(i["room"].as_str().unwrap_or("demo"), i["name"].as_str().unwrap_or_default()).await;
                if let Err(e) = ws.send(Message::text(serde_json::json!({ "ice_servers": servers }).to_string())).await {
                    break Err(e.into());
                }
                continue;
            }
            let Some(j) = v.get("join") else { continue };
            if joined.is_some() {
                break Err(anyhow!("joined twice on one connection"));
            }
            let (room, name, offer) =
                (j["room"].as_str().unwrap_or("demo").to_string(), j["name"].as_str().unwrap_or_default().to_string(), j["offer"].as_str().unwrap_or_default());
            let reply = match self.join(&room, &name, offer, (j["screen"].as_str(), j["topn"].as_bool().unwrap_or(false)), notify.clone()).await {
                Ok((sdp, slots)) => {
                    joined = Some((room, name));
                    serde_json::json!({ "answer": sdp, "slots": slots["slots"] })
                }
                Err(e) => {
                    tracing::warn!(room, name, error = format!("{e:#}"), "join refused");
                    serde_json::json!({ "error": format!("{e:#}") })
                }
            };
            if let Err(e) = ws.send(Message::text(reply.to_string())).await {
                break Err(e.into());
            }
        };
        if let Some((room, name)) = joined {
            self.leave(&room, &name).await?;
        }
        result
    }

    /// The ICE servers of participant `name` in `room`, as the page's RTCPeerConnection takes
    /// them: Sluice's TURN URLs with credentials from `Routes.TurnCredentials`, or none when the
    /// control plane hands out no TURN credentials or does not answer in time (logged, not fatal:
    /// host and ICE-TCP candidates need no TURN).
    async fn ice_servers(&self, room: &str, name: &str) -> serde_json::Value {
        let user = format!("{room}/{name}");
        // ttl 0: the node's default, which it sizes to outlast any call.
        let mut routes = self.routes.clone();
        let ask = routes.turn_credentials(pb::TurnCredentialsRequest { user: user.clone(), ttl_seconds: 0 });
        let answered = match tokio::time::timeout(TURN_CREDENTIALS_TIMEOUT, ask).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer within {TURN_CREDENTIALS_TIMEOUT:?}"))),
        };
        match &answered {
            Ok(c) => tracing::debug!(user, urls = ?c.urls, ttl_seconds = c.ttl_seconds, "TURN credentials handed out"),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => tracing::debug!(user, "the control plane hands out no TURN credentials"),
            Err(s) => tracing::warn!(user, code = ?s.code(), error = s.message(), "Routes.TurnCredentials failed: joining without TURN"),
        }
        ice_servers(answered.ok())
    }

    /// Puts `name` into `room`: its leg, its tracks (microphone, camera, and the screen share
    /// on m-line `screen` when given) and subscriptions both ways with every member there, in
    /// one `Routes.Apply`. Returns the answer and the joiner's slot map.
    async fn join(
        &self,
        room: &str,
        name: &str,
        sdp: &str,
        (screen, top_n): (Option<&str>, bool),
        notify: mpsc::UnboundedSender<serde_json::Value>,
    ) -> anyhow::Result<(String, serde_json::Value)> {
        let offer = parse_offer(sdp)?;
        let (audio, video, screen_line) = publishing(&offer, screen)?;
        let mic_ssrc = audio.ssrc.ok_or_else(|| anyhow!("the microphone's SSRC is not in the offer"))?;
        let mut rooms = self.rooms.lock().await;
        let seq = rooms.next_seq;
        let mut me = Member { notify: Some(notify), ..member(&offer, seq, screen)? };
        let opus = me.opus;
        // Top-N: the audio slots are Sluice's (marked taken, so no per-track audio goes there).
        let level_ext = audio.ext(EXT_AUDIO_LEVEL).filter(|id| (1..=14).contains(id));
        if top_n {
            if level_ext.is_none() || me.audio_slots.is_empty() || me.audio_slots.len() > 8 {
                bail!("top-N audio needs the ssrc-audio-level extension and 1 to 8 audio receive slots");
            }
            for s in &mut me.audio_slots {
                s.track = Some("top-n".into());
            }
        }
        let audio_slots = top_n.then(|| pb::AudioSlots {
            out_ssrcs: (0..me.audio_slots.len()).map(|k| me.out_ssrc(k, false)).collect(),
            pt_map: vec![pb::IdMapping { from: opus, to: opus }],
            ext_map: level_ext.map(|id| pb::IdMapping { from: id, to: id }).into_iter().collect(),
        });
        let others: Vec<(String, Member)> = rooms.rooms.get(room).map(|r| r.iter().map(|(n, m)| (n.clone(), m.clone())).collect()).unwrap_or_default();
        if others.iter().any(|(n, _)| n == name) {
            bail!("{name:?} is already in {room:?}");
        }
        // Sluice reads one transport-wide sequence number per leg: the camera's id, which a
        // browser uses on every m-line of the bundle.
        let twcc_ext = video.ext(EXT_TWCC).filter(|id| (1..=14).contains(id));
        // REMB only for a client that offers it without transport-cc.
        let remb = twcc_ext.is_none() && video.has_fb(me.camera.codec.pt, "goog-remb");
        let mut changes = vec![
            pb::Change {
                change: Some(C::Leg(pb::Leg {
                    id: name.into(),
                    feedback_ssrc: 0x5eed_0000 + seq,
                    feedback: Some(pb::UplinkFeedback { transport_cc_ext: twcc_ext, remb }),
                    // A browser sends at most a few Mbit/s (three 720p layers, a screen share,
                    // its probes): a budget well above that still stops one participant from
                    // flooding every subscriber.
                    rate_limit: Some(pb::RateLimit { packets_per_s: PARTICIPANT_PPS, bytes_per_s: PARTICIPANT_BYTES_PER_S, burst_ms: 1000 }),
                    audio_slots: audio_slots.clone(),
                    webrtc: Some(pb::WebRtc {
                        remote_ice_ufrag: offer.ufrag.clone(),
                        remote_ice_pwd: offer.pwd.clone(),
                        remote_fingerprint: offer.fingerprint.clone(),
                        setup: pb::DtlsSetup::Passive as i32,
                    }),
                    ..Default::default()
                })),
            },
            pb::Change {
                change: Some(C::Track(pb::Track {
                    id: format!("{name}-audio"),
                    publisher_leg: name.into(),
                    kind: pb::MediaKind::Audio as i32,
                    clock_rate: 48_000,
                    layers: vec![pb::Layer { ssrc: Some(mic_ssrc), ..Default::default() }],
                    payload_types: vec![pb::PayloadType { pt: opus, codec: pb::Codec::Audio as i32, rtx_pt: None }],
                    // The same id the answer accepts (one-byte ids only).
                    audio_level_ext: audio.ext(EXT_AUDIO_LEVEL).filter(|id| (1..=14).contains(id)),
                    ..Default::default()
                })),
            },
            video_track(&format!("{name}-video"), name, video, &me.camera),
        ];
        changes.extend(screen_line.zip(me.screen.as_ref()).map(|(m, v)| video_track(&format!("{name}-screen"), name, m, v)));
        if let Some(a) = &audio_slots {
            changes.push(pb::Change { change: Some(C::Settings(pb::SessionSettings { top_n_audio: true, audio_top_n: a.out_ssrcs.len() as u32 })) });
        }
        let mut updated = Vec::new();
        for (other_name, other) in &others {
            changes.extend(subscribe((name, &mut me), (other_name, other)));
            let mut other = other.clone();
            let theirs = subscribe((other_name, &mut other), (name, &me));
            if !theirs.is_empty() {
                changes.extend(theirs);
                updated.push((other_name.clone(), other));
            }
        }
        let resp = self
            .routes
            .clone()
            .apply(pb::ChangeSet { session: room.into(), changes, ..Default::default() })
            .await
            .map_err(|s| anyhow!("Routes.Apply: {}", s.message()))?
            .into_inner();
        rooms.next_seq += 1;
        let w = resp.ports.iter().find(|p| p.leg == name).and_then(|p| p.webrtc.clone()).ok_or_else(|| anyhow!("no WebRTC answer for {name}"))?;
        let sdp = answer(&offer, &w, &me, twcc_ext)?;
        let slot_map = me.slot_map();
        let (codec, dd) = (me.camera.codec.codec.name(), me.camera.dd_ext);
        let r = rooms.rooms.entry(room.into()).or_default();
        for (n, m) in updated {
            m.tell_slots();
            r.insert(n, m);
        }
        r.insert(name.into(), me);
        tracing::info!(room, name, revision = resp.revision, screen = screen.is_some(), codec, dd = ?dd, "joined");
        Ok((sdp, slot_map))
    }

    /// Removes `name`'s leg (its tracks and every subscription to them go with it) and fills
    /// the slots it showed with tracks their members did not show yet, in one `Routes.Apply`.
    async fn leave(&self, room: &str, name: &str) -> anyhow::Result<()> {
        let mut rooms = self.rooms.lock().await;
        let Some(r) = rooms.rooms.get_mut(room) else { return Ok(()) };
        r.remove(name);
        let prefix = format!("{name}-");
        let mut changes = vec![pb::Change { change: Some(C::RemoveLeg(name.into())) }];
        let mut next = r.clone();
        for (n, m) in next.iter_mut() {
            for s in m.audio_slots.iter_mut().chain(m.video_slots.iter_mut()) {
                if s.track.as_deref().is_some_and(|t| t.starts_with(&prefix)) {
                    s.track = None;
                }
            }
            for (o, other) in r.iter().filter(|(o, _)| *o != n) {
                changes.extend(subscribe((n, m), (o, other)));
            }
        }
        self.routes
            .clone()
            .apply(pb::ChangeSet { session: room.into(), changes, ..Default::default() })
            .await
            .map_err(|s| anyhow!("Routes.Apply: {}", s.message()))?;
        for m in next.values() {
            m.tell_slots();
        }
        *r = next;
        tracing::info!(room, name, "left");
        Ok(())
    }
}

/// RTCIceServer dictionaries from TURN credentials: one server with every URL the control plane
/// lists; none without credentials (or URLs).
fn ice_servers(turn: Option<pb::TurnCredentialsResponse>) -> serde_json::Value {
    match turn {
        Some(c) if !c.urls.is_empty() => serde_json::json!([{ "urls": c.urls, "username": c.username, "credential": c.password }]),
        _ => serde_json::json!([]),
    }
}

/// The m-lines an offer publishes on: microphone, camera, and the screen share on m-line `screen`
/// when given.
fn publishing<'a>(offer: &'a Offer, screen: Option<&str>) -> anyhow::Result<(&'a MLine, &'a MLine, Option<&'a MLine>)> {
    let sending = |kind: &'static str| offer.mlines.iter().filter(move |m| m.kind == kind && m.direction == "sendonly");
    let audio = sending("audio").next().ok_or_else(|| anyhow!("no microphone m-line"))?;
    let video = sending("video").find(|m| Some(m.mid.as_str()) != screen).ok_or_else(|| anyhow!("no camera m-line"))?;
    let screen_line = match screen {
        Some(mid) => Some(sending("video").find(|m| m.mid == mid).ok_or_else(|| anyhow!("the screen share's m-line {mid:?} is not a sendonly video m-line"))?),
        None => None,
    };
    Ok((audio, video, screen_line))
}

/// The participant an offer describes (the `seq`-th to join, its page not told anything yet):
/// what it publishes in which codec, and its receive slots with the codecs they take.
fn member(offer: &Offer, seq: u32, screen: Option<&str>) -> anyhow::Result<Member> {
    let (audio, video, screen_line) = publishing(offer, screen)?;
    let slots = |kind: &str| -> anyhow::Result<Vec<Slot>> {
        let v: Vec<Slot> =
            offer.mlines.iter().filter(|m| m.kind == kind && m.direction == "recvonly").map(|m| Slot { mid: m.mid.clone(), track: None }).collect();
        if v.len() > MAX_SLOTS {
            bail!("{} {kind} receive slots offered, at most {MAX_SLOTS}", v.len());
        }
        Ok(v)
    };
    let (recv, recv_dd_ext) = receive_codecs(offer)?;
    Ok(Member {
        seq,
        opus: audio.pt_of("opus").ok_or_else(|| anyhow!("no opus"))?,
        recv,
        recv_dd_ext,
        camera: video_source(offer, video, 0)?,
        screen: screen_line.map(|m| video_source(offer, m, SCREEN_PRIORITY)).transpose()?,
        audio_slots: slots("audio")?,
        video_slots: slots("video")?,
        notify: None,
    })
}

/// A published video source from its m-line: the first codec Sluice forwards in the offerer's
/// order (a page picks VP9 or AV1 by putting it first), its layers, its dependency descriptor.
fn video_source(offer: &Offer, m: &MLine, priority: u32) -> anyhow::Result<VideoSource> {
    let codec = m.video_codecs().into_iter().next().ok_or_else(|| anyhow!("m-line {} offers none of VP8, VP9 (profile 0), AV1 (profile 0)", m.mid))?;
    Ok(VideoSource { mid: m.mid.clone(), layers: m.rids.len().max(1) as u32, priority, codec, dd_ext: dd_ext(offer, m) })
}

/// The video codecs the participant's receive slots take, and their dependency-descriptor id
/// (one-byte only: Sluice rewrites ids 1..=14), from its recvonly video m-lines, which must agree
/// (a subscription maps one set of payload types).
fn receive_codecs(offer: &Offer) -> anyhow::Result<(Vec<CodecPt>, Option<u32>)> {
    let mut slots = offer.mlines.iter().filter(|m| m.kind == "video" && m.direction == "recvonly");
    let Some(first) = slots.next() else { return Ok((vec![], None)) };
    let of = |m: &MLine| {
        let mut codecs = m.video_codecs();
        // Answered in Sluice's order (VP8 first, as before SVC), whatever the offer's.
        codecs.sort_by_key(|c| VideoCodec::ALL.iter().position(|x| *x == c.codec));
        (codecs, m.ext(EXT_DD).filter(|id| (1..=14).contains(id)))
    };
    let recv = of(first);
    if recv.0.is_empty() {
        bail!("receive slot {} offers none of VP8, VP9 (profile 0), AV1 (profile 0)", first.mid);
    }
    if let Some(m) = slots.find(|m| of(m) != recv) {
        bail!("receive slot {} offers other payload types or extension ids than {}", m.mid, first.mid);
    }
    Ok(recv)
}

/// A published video track: simulcast layers by RID when the offer has them, else its SSRC (and
/// its RTX SSRC from a=ssrc-group:FID): one stream, e.g. SVC, whose layers the dependency
/// descriptor tells apart.
fn video_track(id: &str, leg: &str, m: &MLine, v: &VideoSource) -> pb::Change {
    pb::Change {
        change: Some(C::Track(pb::Track {
            dependency_descriptor_ext: v.dd_ext,
            id: id.into(),
            publisher_leg: leg.into(),
            kind: pb::MediaKind::Video as i32,
            clock_rate: 90_000,
            layers: if m.rids.is_empty() {
                let rtx_ssrc = m.fid.filter(|(media, _)| Some(*media) == m.ssrc).map(|(_, rtx)| rtx);
                vec![pb::Layer { ssrc: m.ssrc, rtx_ssrc, ..Default::default() }]
            } else {
                m.rids.iter().map(|r| pb::Layer { rid: r.clone(), ..Default::default() }).collect()
            },
            payload_types: vec![pb::PayloadType { pt: v.codec.pt, codec: v.codec.codec.pb() as i32, rtx_pt: v.codec.rtx }],
            rid_ext: m.ext(EXT_RID),
            repaired_rid_ext: m.ext(EXT_RRID),
            // RIDs are scoped to their m-line: the camera and the screen share both send "l".
            mid_ext: m.ext(EXT_MID).filter(|_| !m.rids.is_empty()),
            mid: if m.rids.is_empty() || m.ext(EXT_MID).is_none() { String::new() } else { m.mid.clone() },
            audio_level_ext: None,
        })),
    }
}

#[cfg(test)]
mod tests {
    //! The SDP handling against offers the meeting page made in Debian's headless Chromium 156
    //! (`testdata/`, one receive slot each): `?codec=vp9` (VP9 L3T3_KEY), `?codec=av1` (AV1
    //! L3T3), and the default (VP8 simulcast l/m/h; `?temporal=L1T3` makes the same SDP).
    use super::*;

    const VP9: &str = include_str!("../testdata/chromium156-vp9-l3t3-key.sdp");
    const AV1: &str = include_str!("../testdata/chromium156-av1-l3t3.sdp");
    const VP8: &str = include_str!("../testdata/chromium156-vp8-simulcast.sdp");
    /// Chromium's id for the dependency descriptor in all three offers.
    const DD_ID: u32 = 12;

    fn vp9(pt: u32, rtx: u32) -> CodecPt {
        CodecPt { codec: VideoCodec::Vp9, pt, rtx: Some(rtx), fmtp: Some("profile-id=0".into()) }
    }

    fn av1(pt: u32, rtx: u32) -> CodecPt {
        CodecPt { codec: VideoCodec::Av1, pt, rtx: Some(rtx), fmtp: Some("level-idx=5;profile=0;tier=0".into()) }
    }

    fn vp8(pt: u32, rtx: u32) -> CodecPt {
        CodecPt { codec: VideoCodec::Vp8, pt, rtx: Some(rtx), fmtp: None }
    }

    fn camera_track(sdp: &str) -> pb::Track {
        let offer = parse_offer(sdp).unwrap();
        let me = member(&offer, 0, None).unwrap();
        let (_, video, _) = publishing(&offer, None).unwrap();
        match video_track("alice-video", "alice", video, &me.camera).change {
            Some(C::Track(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    /// The video subscription among `changes`.
    fn video_sub(changes: &[pb::Change]) -> &pb::Subscription {
        changes
            .iter()
            .find_map(|c| match &c.change {
                Some(C::Subscription(s)) if s.track.ends_with("-video") => Some(s),
                _ => None,
            })
            .expect("a video subscription")
    }

    fn ids(m: &[pb::IdMapping]) -> Vec<(u32, u32)> {
        m.iter().map(|i| (i.from, i.to)).collect()
    }

    /// Sluice's side, as an ApplyResponse gives it.
    fn local() -> pb::WebRtcLocal {
        pb::WebRtcLocal {
            ice_ufrag: "sluiceufrag".into(),
            ice_pwd: "sluicepasswordsluicepassword".into(),
            fingerprint: "sha-256 00:11".into(),
            candidates: vec![pb::IceCandidate {
                candidate: "candidate:1 1 udp 2130706431 127.0.0.1 32101 typ host".into(),
                ip: "127.0.0.1".into(),
                port: 32101,
            }],
            setup: pb::DtlsSetup::Passive as i32,
        }
    }

    /// The answer's lines for m-line `mid`.
    fn section(answer: &str, mid: &str) -> Vec<String> {
        let sections: Vec<Vec<String>> = answer.split("\r\nm=").skip(1).map(|s| format!("m={s}").split("\r\n").map(str::to_string).collect()).collect();
        sections.into_iter().find(|s| s.iter().any(|l| *l == format!("a=mid:{mid}"))).unwrap_or_else(|| panic!("no m-line {mid} in\n{answer}"))
    }

    #[test]
    fn a_vp9_svc_camera_is_one_stream_with_its_dependency_descriptor() {
        let offer = parse_offer(VP9).unwrap();
        assert!(offer.extmap_allow_mixed);
        let me = member(&offer, 0, None).unwrap();
        assert_eq!(me.camera.codec, vp9(98, 99), "VP9 profile 0 comes first in the camera's m-line");
        assert_eq!((me.camera.layers, me.camera.dd_ext), (1, Some(DD_ID)));
        let t = camera_track(VP9);
        assert_eq!(t.payload_types, vec![pb::PayloadType { pt: 98, codec: pb::Codec::Vp9 as i32, rtx_pt: Some(99) }]);
        // One SSRC and its RTX (a=ssrc-group:FID): no RIDs, no MID to scope them.
        assert_eq!(t.layers, vec![pb::Layer { ssrc: Some(3_828_103_177), rtx_ssrc: Some(639_057_009), rid: String::new() }]);
        assert_eq!((t.dependency_descriptor_ext, t.mid_ext, t.mid.as_str()), (Some(DD_ID), None, ""));
    }

    #[test]
    fn an_av1_svc_camera_is_one_stream_with_its_dependency_descriptor() {
        let me = member(&parse_offer(AV1).unwrap(), 0, None).unwrap();
        assert_eq!(me.camera.codec, av1(45, 46));
        let t = camera_track(AV1);
        assert_eq!(t.payload_types, vec![pb::PayloadType { pt: 45, codec: pb::Codec::Av1 as i32, rtx_pt: Some(46) }]);
        assert_eq!(t.layers, vec![pb::Layer { ssrc: Some(3_717_266_453), rtx_ssrc: Some(1_970_958_138), rid: String::new() }]);
        assert_eq!(t.dependency_descriptor_ext, Some(DD_ID));
    }

    /// Today's default stays as it was: VP8 simulcast by RID, and no descriptor (Chromium offers
    /// it, but across a simulcast switch its frame numbers would jump).
    #[test]
    fn the_default_camera_stays_vp8_simulcast_without_the_descriptor() {
        let me = member(&parse_offer(VP8).unwrap(), 0, None).unwrap();
        assert_eq!(me.camera.codec, vp8(96, 97));
        assert_eq!((me.camera.layers, me.camera.dd_ext), (3, None));
        let t = camera_track(VP8);
        assert_eq!(t.payload_types, vec![pb::PayloadType { pt: 96, codec: pb::Codec::Vp8 as i32, rtx_pt: Some(97) }]);
        assert_eq!(t.layers.iter().map(|l| l.rid.as_str()).collect::<Vec<_>>(), ["l", "m", "h"]);
        assert_eq!((t.dependency_descriptor_ext, t.mid.as_str()), (None, "1"));
    }

    #[test]
    fn receive_slots_take_every_forwarded_codec_and_the_descriptor() {
        for sdp in [VP8, VP9, AV1] {
            let me = member(&parse_offer(sdp).unwrap(), 0, None).unwrap();
            // VP8 first (as before), VP9 profile 0 (not 2, 1, 3), AV1 profile 0 (not 1).
            assert_eq!(me.recv, vec![vp8(96, 97), vp9(98, 99), av1(45, 46)]);
            assert_eq!(me.recv_dd_ext, Some(DD_ID));
        }
    }

    /// A subscription maps the track's codec (and its RTX) to the subscriber's payload types, and
    /// the descriptor to the slot's id for SVC tracks only.
    #[test]
    fn subscriptions_map_the_codec_and_the_descriptor_of_svc_tracks() {
        let publisher = |sdp: &str, seq| member(&parse_offer(sdp).unwrap(), seq, None).unwrap();
        let (vp9_pub, av1_pub, vp8_pub) = (publisher(VP9, 0), publisher(AV1, 1), publisher(VP8, 2));
        for (p, pts, ext, top) in [
            (&vp9_pub, vec![(98, 98), (99, 99)], vec![(DD_ID, DD_ID)], 0),
            (&av1_pub, vec![(45, 45), (46, 46)], vec![(DD_ID, DD_ID)], 0),
            (&vp8_pub, vec![(96, 96), (97, 97)], vec![], 2),
        ] {
            let mut bob = publisher(VP8, 3);
            let changes = subscribe(("bob", &mut bob), ("alice", p));
            let s = video_sub(&changes);
            assert_eq!((ids(&s.pt_map), ids(&s.ext_map), s.target_layer), (pts, ext, top), "{:?}", p.camera.codec);
            assert_eq!((s.out_ssrc, s.out_rtx_ssrc), (bob.out_ssrc(0, true), bob.out_rtx_ssrc(0)));
            assert!(s.out_rtx_ssrc.is_some());
            // Every layer: ceilings are for whoever decides them.
            assert_eq!((s.max_spatial_layer, s.max_temporal_layer), (None, None));
            assert_eq!(bob.video_slots[0].track.as_deref(), Some("alice-video"));
        }
    }

    #[test]
    fn the_answer_takes_the_svc_camera_and_gives_the_slots_every_codec() {
        let offer = parse_offer(VP9).unwrap();
        let me = member(&offer, 0, None).unwrap();
        let a = answer(&offer, &local(), &me, Some(3)).unwrap();
        assert!(a.contains("\r\na=extmap-allow-mixed\r\n"), "{a}");
        let camera = section(&a, "1");
        assert_eq!(camera[0], "m=video 32101 UDP/TLS/RTP/SAVPF 98 99");
        for line in [
            "a=rtpmap:98 VP9/90000",
            "a=fmtp:98 profile-id=0",
            "a=rtpmap:99 rtx/90000",
            "a=fmtp:99 apt=98",
            "a=recvonly",
            "a=rtcp-fb:98 transport-cc",
            &format!("a=extmap:{DD_ID} {EXT_DD}"),
        ] {
            assert!(camera.iter().any(|l| l == line), "{line} missing from\n{}", camera.join("\n"));
        }
        assert!(!camera.iter().any(|l| l.starts_with("a=simulcast") || l.contains("VP8")), "{}", camera.join("\n"));
        let slot = section(&a, "3");
        assert_eq!(slot[0], "m=video 32101 UDP/TLS/RTP/SAVPF 96 97 98 99 45 46");
        for line in [
            "a=sendonly",
            "a=rtpmap:96 VP8/90000",
            "a=rtpmap:98 VP9/90000",
            "a=fmtp:98 profile-id=0",
            "a=rtpmap:45 AV1/90000",
            "a=fmtp:45 level-idx=5;profile=0;tier=0",
            "a=fmtp:46 apt=45",
            "a=rtcp-fb:45 nack pli",
            "a=rtcp-fb:45 transport-cc",
            &format!("a=extmap:{DD_ID} {EXT_DD}"),
        ] {
            assert!(slot.iter().any(|l| l == line), "{line} missing from\n{}", slot.join("\n"));
        }
    }

    /// TURN credentials become one RTCIceServer with every URL, in the page's spelling
    /// (`credential`); without them (no `[controlplane.turn]`, an error) there are none.
    #[test]
    fn turn_credentials_become_the_pages_ice_servers() {
        let c = pb::TurnCredentialsResponse {
            username: "1700000000:e2e/alice".into(),
            password: "Cd/49soE35ICqcJF/bCTn8Z4OyE=".into(),
            ttl_seconds: 86_400,
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into(), "turns:127.0.0.1:5349?transport=tcp".into()],
        };
        assert_eq!(
            ice_servers(Some(c.clone())),
            serde_json::json!([{
                "urls": ["turn:127.0.0.1:3478?transport=udp", "turns:127.0.0.1:5349?transport=tcp"],
                "username": "1700000000:e2e/alice",
                "credential": "Cd/49soE35ICqcJF/bCTn8Z4OyE=",
            }])
        );
        assert_eq!(ice_servers(None), serde_json::json!([]));
        assert_eq!(ice_servers(Some(pb::TurnCredentialsResponse { urls: vec![], ..c })), serde_json::json!([]));
    }

    /// The default camera's part of the answer, line for line as before SVC.
    #[test]
    fn the_default_camera_is_answered_as_before() {
        let offer = parse_offer(VP8).unwrap();
        let me = member(&offer, 0, None).unwrap();
        let a = answer(&offer, &local(), &me, Some(3)).unwrap();
        let expected = [
            "m=video 32101 UDP/TLS/RTP/SAVPF 96 97",
            "c=IN IP4 127.0.0.1",
            "a=ice-ufrag:sluiceufrag",
            "a=ice-pwd:sluicepasswordsluicepassword",
            "a=fingerprint:sha-256 00:11",
            "a=setup:passive",
            "a=mid:1",
            "a=rtcp-mux",
            "a=rtpmap:96 VP8/90000",
            "a=rtcp-fb:96 nack",
            "a=rtcp-fb:96 nack pli",
            "a=rtcp-fb:96 ccm fir",
            "a=rtpmap:97 rtx/90000",
            "a=fmtp:97 apt=96",
            "a=recvonly",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "a=rtcp-fb:96 transport-cc",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
            "a=rid:l recv",
            "a=rid:m recv",
            "a=rid:h recv",
            "a=simulcast:recv l;m;h",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 32101 typ host",
            "a=end-of-candidates",
        ];
        assert_eq!(section(&a, "1").iter().filter(|l| !l.is_empty()).collect::<Vec<_>>(), expected);
    }

    /// The publisher's order decides, among what every receiver decodes: VP9 profile 2 first is
    /// passed over for the next VP9 profile 0, and with none, the next codec.
    #[test]
    fn a_profile_not_every_receiver_decodes_is_passed_over() {
        let first_line = "m=video 9 UDP/TLS/RTP/SAVPF 98 99 96 97 102 103 104 107 108 109 114 115 116 117 39 40 45 46 100 101 118 119 120";
        assert!(VP9.contains(first_line));
        let profile2_first =
            VP9.replace(first_line, "m=video 9 UDP/TLS/RTP/SAVPF 100 101 98 99 96 97 102 103 104 107 108 109 114 115 116 117 39 40 45 46 118 119 120");
        assert_eq!(member(&parse_offer(&profile2_first).unwrap(), 0, None).unwrap().camera.codec, vp9(98, 99));
        let profile2_only = VP9.replace(first_line, "m=video 9 UDP/TLS/RTP/SAVPF 100 101 96 97");
        assert_eq!(member(&parse_offer(&profile2_only).unwrap(), 0, None).unwrap().camera.codec, vp8(96, 97));
    }

    /// A descriptor on a two-byte id (above 14) tells Sluice the publisher's layers and is
    /// mapped to each subscriber's id like any other.
    #[test]
    fn a_descriptor_above_14_is_read_and_forwarded() {
        let dd = format!("a=extmap:{DD_ID} {EXT_DD}");
        let two_byte = VP9.replace(&dd, &format!("a=extmap:15 {EXT_DD}"));
        let alice = member(&parse_offer(&two_byte).unwrap(), 0, None).unwrap();
        assert_eq!((alice.camera.dd_ext, alice.recv_dd_ext), (Some(15), None));
        let mut bob = member(&parse_offer(VP8).unwrap(), 1, None).unwrap();
        let changes = subscribe(("bob", &mut bob), ("alice", &alice));
        assert_eq!(ids(&video_sub(&changes).ext_map), vec![(15, 12)]);
        // Without a=extmap-allow-mixed a two-byte id is not usable at all.
        let one_byte_only = two_byte.replace("a=extmap-allow-mixed\r\n", "");
        assert_eq!(member(&parse_offer(&one_byte_only).unwrap(), 0, None).unwrap().camera.dd_ext, None);
    }
}
