//! The reference signaling service: how a signaling developer puts browsers into a Sluice
//! meeting with nothing but Sluice's public gRPC API.
//!
//! ```text
//!   browser ── GET / ──────────────▶ the meeting page (static/meeting.html)
//!   browser ── WebSocket /ws ──────▶ {"join": {room, name, offer}}
//!       offer parsed: ICE ufrag/pwd, DTLS fingerprint, the microphone's SSRC, the camera's
//!       simulcast RIDs, payload types and header-extension ids, the receive slots
//!       Routes.Apply(session = room): a WebRTC leg (Sluice DTLS-passive), an audio and a video
//!       track, subscriptions both ways with every member already there (each into a free
//!       receive slot, on an SSRC the answer announces)
//!   browser ◀───────────────────────── {"answer": sdp}   (a=ice-lite, Sluice's candidate,
//!                                         credentials and fingerprint from the ApplyResponse)
//!   WebSocket closed ──────────────▶ Routes.Apply: remove_leg (its tracks and every
//!                                    subscription to them go with it)
//! ```
//!
//! One RTCPeerConnection per participant, with two receive slots (audio + video each) offered up
//! front, so a join is one offer/answer and nobody renegotiates: a meeting holds three.

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
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

/// The page every participant loads.
pub const PAGE: &str = include_str!("../static/meeting.html");
/// Receive slots per participant (the page offers as many): a meeting holds `SLOTS + 1`.
pub const SLOTS: usize = 2;

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
/// Transport-wide sequence numbers: Sluice sends transport-cc feedback for what it receives.
const EXT_TWCC: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// A participant in a room.
#[derive(Clone, Debug)]
struct Member {
    /// Join order across the service (makes its out-SSRCs unique).
    seq: u32,
    /// Which member each receive slot shows.
    slots: [Option<String>; SLOTS],
    opus: u32,
    vp8: u32,
    vp8_rtx: Option<u32>,
    /// Simulcast layers the camera sends (1 without simulcast).
    video_layers: u32,
}

impl Member {
    /// The SSRC Sluice sends slot `slot`'s audio (`video = false`) or video on.
    fn out_ssrc(&self, slot: usize, video: bool) -> u32 {
        0x5100_0000 + self.seq * 16 + slot as u32 * 2 + u32::from(video)
    }

    /// The RTX SSRC of slot `slot`'s video (retransmissions, and the padding Sluice probes the
    /// subscriber's bandwidth with).
    fn out_rtx_ssrc(&self, slot: usize) -> Option<u32> {
        self.vp8_rtx.map(|_| 0x5100_0000 + self.seq * 16 + 8 + slot as u32)
    }
}

#[derive(Debug, Default)]
struct Rooms {
    next_seq: u32,
    rooms: BTreeMap<String, BTreeMap<String, Member>>,
}

fn subscription(subscriber: &str, track: &str, out_ssrc: u32, out_rtx_ssrc: Option<u32>, pt_map: Vec<(u32, u32)>, top_layer: u32) -> pb::Change {
    pb::Change {
        change: Some(C::Subscription(pb::Subscription {
            subscriber_leg: subscriber.into(),
            track: track.into(),
            out_ssrc,
            out_rtx_ssrc,
            pt_map: pt_map.into_iter().map(|(from, to)| pb::IdMapping { from, to }).collect(),
            // The top layer as the ceiling: the subscriber leg's bandwidth allocator picks what
            // its estimate allows.
            target_layer: top_layer,
            ..Default::default()
        })),
    }
}

/// The subscriptions that put `publisher`'s audio and video into `subscriber`'s slot `slot`.
fn subscribe(subscriber: (&str, &Member), publisher: (&str, &Member), slot: usize) -> [pb::Change; 2] {
    let (s, p) = (subscriber.1, publisher.1);
    let mut video_pts = vec![(p.vp8, s.vp8)];
    let mut rtx = None;
    if let (Some(a), Some(b)) = (p.vp8_rtx, s.vp8_rtx) {
        video_pts.push((a, b));
        rtx = s.out_rtx_ssrc(slot);
    }
    [
        subscription(subscriber.0, &format!("{}-audio", publisher.0), s.out_ssrc(slot, false), None, vec![(p.opus, s.opus)], 0),
        subscription(subscriber.0, &format!("{}-video", publisher.0), s.out_ssrc(slot, true), rtx, video_pts, p.video_layers.saturating_sub(1)),
    ]
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
    let mut slot_of_kind: BTreeMap<&str, usize> = BTreeMap::new();
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
            let slot = slot_of_kind.entry(if video { "video" } else { "audio" }).or_default();
            let ssrc = me.out_ssrc(*slot, video);
            let rtx = if video { me.out_rtx_ssrc(*slot) } else { None };
            *slot += 1;
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
        let mut joined: Option<(String, String)> = None;
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg? else { continue };
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let Some(j) = v.get("join") else { continue };
            let (room, name, offer) =
                (j["room"].as_str().unwrap_or("demo").to_string(), j["name"].as_str().unwrap_or_default().to_string(), j["offer"].as_str().unwrap_or_default());
            let reply = match self.join(&room, &name, offer).await {
                Ok(sdp) => {
                    joined = Some((room, name));
                    serde_json::json!({ "answer": sdp })
                }
                Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
            };
            ws.send(Message::text(reply.to_string())).await?;
        }
        if let Some((room, name)) = joined {
            self.leave(&room, &name).await?;
        }
        Ok(())
    }

    async fn join(&self, room: &str, name: &str, sdp: &str) -> anyhow::Result<String> {
        let offer = parse_offer(sdp)?;
        let audio = offer.mlines.iter().find(|m| m.kind == "audio" && m.direction == "sendonly").ok_or_else(|| anyhow!("no microphone m-line"))?;
        let video = offer.mlines.iter().find(|m| m.kind == "video" && m.direction == "sendonly").ok_or_else(|| anyhow!("no camera m-line"))?;
        let opus = audio.pt_of("opus").ok_or_else(|| anyhow!("no opus"))?;
        let vp8 = video.pt_of("VP8").ok_or_else(|| anyhow!("no VP8"))?;
        let mic_ssrc = audio.ssrc.ok_or_else(|| anyhow!("the microphone's SSRC is not in the offer"))?;
        let mut rooms = self.rooms.lock().await;
        let seq = rooms.next_seq;
        rooms.next_seq += 1;
        let mut me = Member { seq, slots: [None, None], opus, vp8, vp8_rtx: video.rtx_of(vp8), video_layers: video.rids.len().max(1) as u32 };
        let others: Vec<(String, Member)> = rooms.rooms.get(room).map(|r| r.iter().map(|(n, m)| (n.clone(), m.clone())).collect()).unwrap_or_default();
        if others.iter().any(|(n, _)| n == name) {
            bail!("{name:?} is already in {room:?}");
        }
        if others.len() > SLOTS {
            bail!("room {room:?} is full ({} participants)", SLOTS + 1);
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
                    ..Default::default()
                })),
            },
            pb::Change {
                change: Some(C::Track(pb::Track {
                    id: format!("{name}-video"),
                    publisher_leg: name.into(),
                    kind: pb::MediaKind::Video as i32,
                    clock_rate: 90_000,
                    layers: if video.rids.is_empty() {
                        vec![pb::Layer { ssrc: video.ssrc, ..Default::default() }]
                    } else {
                        video.rids.iter().map(|r| pb::Layer { rid: r.clone(), ..Default::default() }).collect()
                    },
                    payload_types: vec![pb::PayloadType { pt: vp8, codec: pb::Codec::Vp8 as i32, rtx_pt: video.rtx_of(vp8) }],
                    rid_ext: video.ext(EXT_RID),
                    repaired_rid_ext: video.ext(EXT_RRID),
                })),
            },
        ];
        let mut updated = Vec::new();
        for (slot, (other_name, other)) in others.iter().enumerate() {
            me.slots[slot] = Some(other_name.clone());
            changes.extend(subscribe((name, &me), (other_name, other), slot));
            let mut other = other.clone();
            if let Some(free) = other.slots.iter().position(Option::is_none) {
                other.slots[free] = Some(name.into());
                changes.extend(subscribe((other_name, &other), (name, &me), free));
            }
            updated.push((other_name.clone(), other));
        }
        let resp = self
            .routes
            .clone()
            .apply(pb::ChangeSet { session: room.into(), changes, ..Default::default() })
            .await
            .map_err(|s| anyhow!("Routes.Apply: {}", s.message()))?
            .into_inner();
        let w = resp.ports.iter().find(|p| p.leg == name).and_then(|p| p.webrtc.clone()).ok_or_else(|| anyhow!("no WebRTC answer for {name}"))?;
        let sdp = answer(&offer, &w, &me, twcc_ext)?;
        let r = rooms.rooms.entry(room.into()).or_default();
        r.extend(updated);
        r.insert(name.into(), me);
        tracing::info!(room, name, revision = resp.revision, "joined");
        Ok(sdp)
    }

    async fn leave(&self, room: &str, name: &str) -> anyhow::Result<()> {
        let mut rooms = self.rooms.lock().await;
        let Some(r) = rooms.rooms.get_mut(room) else { return Ok(()) };
        r.remove(name);
        for m in r.values_mut() {
            for s in &mut m.slots {
                if s.as_deref() == Some(name) {
                    *s = None;
                }
            }
        }
        let change = pb::Change { change: Some(C::RemoveLeg(name.into())) };
        self.routes
            .clone()
            .apply(pb::ChangeSet { session: room.into(), changes: vec![change], ..Default::default() })
            .await
            .map_err(|s| anyhow!("Routes.Apply: {}", s.message()))?;
        tracing::info!(room, name, "left");
        Ok(())
    }
}
