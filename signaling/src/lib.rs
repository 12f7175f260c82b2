//! The reference signaling service: how a signaling developer puts browsers into a Sluice
//! meeting with nothing but Sluice's public gRPC API.
//!
//! ```text
//!   browser ── GET / ──────────────▶ the meeting page (static/meeting.html)
//!   browser ── WebSocket /ws ──────▶ {"join": {room, name, offer, screen?: mid, topn?: true}}
//!       offer parsed: ICE ufrag/pwd, DTLS fingerprint, the microphone's SSRC, the camera's
//!       (and the screen share's) simulcast RIDs, payload types and header-extension ids, the
//!       receive slots (its recvonly m-lines)
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
//! With `topn` (the page's `?topn=1`) the participant's audio slots are Sluice's top-N audio
//! slots instead (`Leg.audio_slots` on their SSRCs, the session's `top_n_audio` set, N its number
//! of audio slots): they carry the loudest others whoever they are, the speaker's SSRC as CSRC,
//! and it gets no per-track audio subscription. Its page shows them as `top-n`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

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
    /// (payload type, encoding name) from a=rtpmap.
    rtpmap: Vec<(u32, String)>,
    /// (rtx payload type, apt) from a=fmtp ... apt=.
    apt: Vec<(u32, u32)>,
    /// (id, uri) from a=extmap.
    extmap: Vec<(u32, String)>,
    rids: Vec<String>,
    ssrc: Option<u32>,
    /// (payload type, feedback) from a=rtcp-fb.
    rtcp_fb: Vec<(u32, String)>,
}

/// What an offer says.
#[derive(Clone, Debug, Default)]
struct Offer {
    ufrag: String,
    pwd: String,
    fingerprint: String,
    mlines: Vec<MLine>,
}

fn parse_offer(sdp: &str) -> anyhow::Result<Offer> {
    let mut o = Offer::default();
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            let kind = m.split(' ').next().unwrap_or_default().to_string();
            o.mlines.push(MLine { kind, ..MLine::default() });
            continue;
        }
        let Some(a) = line.strip_prefix("a=") else { continue };
        let (key, value) = a.split_once(':').unwrap_or((a, ""));
        match (key, o.mlines.last_mut()) {
            ("ice-ufrag", _) => o.ufrag = value.into(),
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
                if let Some((pt, params)) = value.split_once(' ')
                    && let Some(apt) = params.split(';').find_map(|p| p.trim().strip_prefix("apt="))
                {
                    m.apt.push((pt.parse()?, apt.parse()?));
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

/// Allocator priority of a screen share's subscriptions: it keeps its full layer while cameras
/// give way when a subscriber's bandwidth runs short (cameras are 0).
pub const SCREEN_PRIORITY: u32 = 2;
/// A participant's receive budget in Sluice: packets per second...
pub const PARTICIPANT_PPS: u32 = 3_000;
/// ... and bytes per second (20 Mbit/s).
pub const PARTICIPANT_BYTES_PER_S: u64 = 2_500_000;
/// The most receive slots of one kind a participant may offer.
pub const MAX_SLOTS: usize = 16;

/// A receive slot: one recvonly m-line, and the track Sluice sends into it.
#[derive(Clone, Debug)]
struct Slot {
    mid: String,
    track: Option<String>,
}

/// One video track a participant publishes (camera or screen share).
#[derive(Clone, Copy, Debug)]
struct VideoSource {
    /// Simulcast layers (1 without simulcast).
    layers: u32,
    /// Allocator priority of its subscriptions.
    priority: u32,
}

/// A participant in a room.
#[derive(Clone, Debug)]
struct Member {
    /// Join order across the service (makes its out-SSRCs unique).
    seq: u32,
    opus: u32,
    vp8: u32,
    vp8_rtx: Option<u32>,
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
        self.vp8_rtx.map(|_| 0x5100_0000u32.wrapping_add(self.seq.wrapping_mul(64)) + 32 + slot as u32)
    }

    /// The tracks it publishes: (id suffix, video source; `None` for the microphone).
    fn published(&self) -> Vec<(&'static str, Option<VideoSource>)> {
        let mut v = vec![("audio", None), ("video", Some(self.camera))];
        v.extend(self.screen.map(|s| ("screen", Some(s))));
        v
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

fn subscription(subscriber: &str, track: &str, out_ssrc: u32, out_rtx_ssrc: Option<u32>, pt_map: Vec<(u32, u32)>, top_layer: u32, priority: u32) -> pb::Change {
    pb::Change {
        change: Some(C::Subscription(pb::Subscription {
            subscriber_leg: subscriber.into(),
            track: track.into(),
            out_ssrc,
            out_rtx_ssrc,
            pt_map: pt_map.into_iter().map(|(from, to)| pb::IdMapping { from, to }).collect(),
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
        let slots = if video.is_some() { &mut s.video_slots } else { &mut s.audio_slots };
        if slots.iter().any(|x| x.track.as_deref() == Some(track.as_str())) {
            continue;
        }
        let Some(slot) = slots.iter().position(|x| x.track.is_none()) else {
            tracing::info!(subscriber = sname, %track, "no free receive slot: not shown");
            continue;
        };
        slots[slot].track = Some(track.clone());
        changes.push(match video {
            None => subscription(sname, &track, s.out_ssrc(slot, false), None, vec![(p.opus, s.opus)], 0, 0),
            Some(v) => {
                let mut pts = vec![(p.vp8, s.vp8)];
                let mut rtx = None;
                if let (Some(a), Some(b)) = (p.vp8_rtx, s.vp8_rtx) {
                    pts.push((a, b));
                    rtx = s.out_rtx_ssrc(slot);
                }
                subscription(sname, &track, s.out_ssrc(slot, true), rtx, pts, v.layers.saturating_sub(1), v.priority)
            }
        });
    }
    changes
}

/// Sluice's answer: ICE-lite, DTLS passive, the camera's simulcast received, each receive slot
/// sent on its announced SSRC.
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
    for m in &offer.mlines {
        let video = m.kind == "video";
        let (pts, codec_lines) = if video {
            let mut pts = vec![me.vp8];
            let mut lines = vec![
                format!("a=rtpmap:{} VP8/90000", me.vp8),
                format!("a=rtcp-fb:{} nack", me.vp8),
                format!("a=rtcp-fb:{} nack pli", me.vp8),
                format!("a=rtcp-fb:{} ccm fir", me.vp8),
            ];
            if let Some(rtx) = me.vp8_rtx {
                pts.push(rtx);
                lines.extend([format!("a=rtpmap:{rtx} rtx/90000"), format!("a=fmtp:{rtx} apt={}", me.vp8)]);
            }
            (pts, lines)
        } else {
            (vec![me.opus], vec![format!("a=rtpmap:{} opus/48000/2", me.opus), format!("a=fmtp:{} minptime=10;useinbandfec=1", me.opus)])
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
        if m.direction == "sendonly" {
            s.push("a=recvonly".into());
            // Transport-wide congestion control on what the participant sends, when its offer
            // has it with the id the leg was programmed with (one id per transport).
            if let Some(id) = m.ext(EXT_TWCC).filter(|id| Some(*id) == twcc_ext) {
                s.push(format!("a=extmap:{id} {EXT_TWCC}"));
                s.push(format!("a=rtcp-fb:{} transport-cc", pts[0]));
            } else if video && twcc_ext.is_none() && m.has_fb(me.vp8, "goog-remb") {
                s.push(format!("a=rtcp-fb:{} goog-remb", me.vp8));
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
                s.push(format!("a=rtcp-fb:{} transport-cc", pts[0]));
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
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
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
        let sending = |kind: &'static str| offer.mlines.iter().filter(move |m| m.kind == kind && m.direction == "sendonly");
        let audio = sending("audio").next().ok_or_else(|| anyhow!("no microphone m-line"))?;
        let video = sending("video").find(|m| Some(m.mid.as_str()) != screen).ok_or_else(|| anyhow!("no camera m-line"))?;
        let screen_line = match screen {
            Some(mid) => {
                Some(sending("video").find(|m| m.mid == mid).ok_or_else(|| anyhow!("the screen share's m-line {mid:?} is not a sendonly video m-line"))?)
            }
            None => None,
        };
        let opus = audio.pt_of("opus").ok_or_else(|| anyhow!("no opus"))?;
        let vp8 = video.pt_of("VP8").ok_or_else(|| anyhow!("no VP8"))?;
        if let Some(s) = screen_line
            && (s.pt_of("VP8") != Some(vp8) || s.rtx_of(vp8) != video.rtx_of(vp8))
        {
            bail!("the screen share's VP8 payload types differ from the camera's");
        }
        let mic_ssrc = audio.ssrc.ok_or_else(|| anyhow!("the microphone's SSRC is not in the offer"))?;
        let slots = |kind: &str| -> anyhow::Result<Vec<Slot>> {
            let v: Vec<Slot> =
                offer.mlines.iter().filter(|m| m.kind == kind && m.direction == "recvonly").map(|m| Slot { mid: m.mid.clone(), track: None }).collect();
            if v.len() > MAX_SLOTS {
                bail!("{} {kind} receive slots offered, at most {MAX_SLOTS}", v.len());
            }
            Ok(v)
        };
        let source = |m: &MLine, priority| VideoSource { layers: m.rids.len().max(1) as u32, priority };
        let mut rooms = self.rooms.lock().await;
        let seq = rooms.next_seq;
        let mut me = Member {
            seq,
            opus,
            vp8,
            vp8_rtx: video.rtx_of(vp8),
            camera: source(video, 0),
            screen: screen_line.map(|m| source(m, SCREEN_PRIORITY)),
            audio_slots: slots("audio")?,
            video_slots: slots("video")?,
            notify: Some(notify),
        };
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
        let remb = twcc_ext.is_none() && video.has_fb(vp8, "goog-remb");
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
            video_track(&format!("{name}-video"), name, video, vp8),
        ];
        changes.extend(screen_line.map(|m| video_track(&format!("{name}-screen"), name, m, vp8)));
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
        let r = rooms.rooms.entry(room.into()).or_default();
        for (n, m) in updated {
            m.tell_slots();
            r.insert(n, m);
        }
        r.insert(name.into(), me);
        tracing::info!(room, name, revision = resp.revision, screen = screen.is_some(), "joined");
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

/// A published video track: simulcast layers by RID when the offer has them, else its SSRC.
fn video_track(id: &str, leg: &str, m: &MLine, vp8: u32) -> pb::Change {
    pb::Change {
        change: Some(C::Track(pb::Track {
            dependency_descriptor_ext: None,
            id: id.into(),
            publisher_leg: leg.into(),
            kind: pb::MediaKind::Video as i32,
            clock_rate: 90_000,
            layers: if m.rids.is_empty() {
                vec![pb::Layer { ssrc: m.ssrc, ..Default::default() }]
            } else {
                m.rids.iter().map(|r| pb::Layer { rid: r.clone(), ..Default::default() }).collect()
            },
            payload_types: vec![pb::PayloadType { pt: vp8, codec: pb::Codec::Vp8 as i32, rtx_pt: m.rtx_of(vp8) }],
            rid_ext: m.ext(EXT_RID),
            repaired_rid_ext: m.ext(EXT_RRID),
            // RIDs are scoped to their m-line: the camera and the screen share both send "l".
            mid_ext: m.ext(EXT_MID).filter(|_| !m.rids.is_empty()),
            mid: if m.rids.is_empty() || m.ext(EXT_MID).is_none() { String::new() } else { m.mid.clone() },
            audio_level_ext: None,
        })),
    }
}
