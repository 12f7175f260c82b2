//! The control plane's gRPC side: the clients, and `meeting::build`'s table ops as gRPC changes
//! (names instead of dataplane ids).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sluice_controlplane::pb;
use sluice_controlplane::pb::change::Change as C;
use sluice_controlplane::pb::node_client::NodeClient;
use sluice_controlplane::pb::routes_client::RoutesClient;
use sluice_controlplane::state::{codec_to_pb, profile_to_pb};
use sluice_core::table::{KeyMaterial, MediaKind, Op, SubscriptionSpec};
use tonic::transport::Channel;

/// The gRPC clients, on a small runtime of their own.
pub(crate) struct Grpc {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) routes: RoutesClient<Channel>,
    node: NodeClient<Channel>,
}

impl Grpc {
    pub(super) fn connect(addr: SocketAddr, stop: &AtomicBool) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let end = Instant::now() + Duration::from_secs(20);
        let channel = loop {
            match rt.block_on(Channel::from_shared(format!("http://{addr}"))?.connect()) {
                Ok(c) => break c,
                Err(e) if Instant::now() > end || stop.load(Ordering::Relaxed) => return Err(e).context("connecting to the control plane"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        Ok(Self { rt, routes: RoutesClient::new(channel.clone()), node: NodeClient::new(channel) })
    }

    pub(crate) fn apply(&mut self, req: pb::ChangeSet) -> Result<pb::ApplyResponse, tonic::Status> {
        self.rt.block_on(self.routes.apply(req)).map(tonic::Response::into_inner)
    }

    pub(crate) fn status(&mut self) -> Result<pb::NodeStatus, tonic::Status> {
        let mut node = self.node.clone();
        self.rt
            .block_on(async move { tokio::time::timeout(Duration::from_millis(500), node.get_status(pb::GetStatusRequest {})).await })
            .map_err(|_| tonic::Status::deadline_exceeded("GetStatus took over 500 ms"))?
            .map(tonic::Response::into_inner)
    }
}

fn keys(k: &KeyMaterial) -> pb::KeyMaterial {
    pb::KeyMaterial { profile: profile_to_pb(k.profile) as i32, key: k.key.clone(), salt: k.salt.clone() }
}

/// The name a leg of `meeting::build` gets on the control plane.
pub fn leg_name(id: u32) -> String {
    format!("leg-{id}")
}

/// The name a track of `meeting::build` gets on the control plane.
pub fn track_name(id: u32) -> String {
    format!("track-{id}")
}

/// A subscription of `meeting::build`, as gRPC.
pub fn subscription(s: &SubscriptionSpec) -> pb::Subscription {
    pb::Subscription {
        max_temporal_layer: None,
        max_spatial_layer: None,
        subscriber_leg: leg_name(s.subscriber.0),
        track: track_name(s.track.0),
        out_ssrc: s.out_ssrc.0,
        out_rtx_ssrc: s.out_rtx_ssrc.map(|x| x.0),
        pt_map: s.pt_map.iter().map(|(f, t)| pb::IdMapping { from: u32::from(f.0), to: u32::from(t.0) }).collect(),
        ext_map: s.ext_map.iter().map(|(f, t)| pb::IdMapping { from: u32::from(*f), to: u32::from(*t) }).collect(),
        target_layer: u32::from(s.target_layer),
        paused: s.paused,
        priority: u32::from(s.priority),
        relay_layers: s.relay.iter().map(|&(o, r)| pb::RelayLayer { out_ssrc: o.0, out_rtx_ssrc: r.map(|r| r.0) }).collect(),
    }
}

/// The table ops `meeting::build` makes, as gRPC changes: names instead of dataplane ids, and no
/// local ports (the control plane allocates them).
pub fn changes(ops: &[Op]) -> anyhow::Result<Vec<pb::Change>> {
    let layers: HashMap<u32, usize> = ops.iter().filter_map(|o| if let Op::UpsertTrack(t) = o { Some((t.id.0, t.layers.len())) } else { None }).collect();
    ops.iter()
        .map(|op| {
            let c = match op {
                Op::UpsertLeg(l) => C::Leg(pb::Leg {
                    id: leg_name(l.id.0),
                    local_port: 0,
                    remote: l.remote.map(|r| r.to_string()).unwrap_or_default(),
                    cascade: l.cascade,
                    rx: Some(keys(&l.rx)),
                    tx: Some(keys(&l.tx)),
                    feedback_ssrc: l.feedback_ssrc.0,
                    feedback: (l.feedback != Default::default())
                        .then(|| pb::UplinkFeedback { transport_cc_ext: l.feedback.twcc_ext.map(u32::from), remb: l.feedback.remb }),
                    ..Default::default()
                }),
                Op::UpsertTrack(t) => C::Track(pb::Track {
                    dependency_descriptor_ext: None,
                    id: track_name(t.id.0),
                    publisher_leg: leg_name(t.publisher.0),
                    kind: match t.kind {
                        MediaKind::Audio => pb::MediaKind::Audio,
                        MediaKind::Video => pb::MediaKind::Video,
                    } as i32,
                    clock_rate: t.clock_rate,
                    layers: t
                        .layers
                        .iter()
                        .map(|l| pb::Layer { ssrc: l.ssrc.map(|s| s.0), rtx_ssrc: l.rtx_ssrc.map(|s| s.0), rid: l.rid.clone().unwrap_or_default() })
                        .collect(),
                    payload_types: t
                        .payload_types
                        .iter()
                        .map(|p| pb::PayloadType { pt: u32::from(p.pt.0), codec: codec_to_pb(p.codec) as i32, rtx_pt: p.rtx_pt.map(|r| u32::from(r.0)) })
                        .collect(),
                    rid_ext: t.rid_ext.map(u32::from),
                    repaired_rid_ext: t.repaired_rid_ext.map(u32::from),
                    audio_level_ext: t.audio_level_ext.map(u32::from),
                    mid_ext: t.mid.as_ref().map(|m| u32::from(m.ext)),
                    mid: t.mid.as_ref().map(|m| m.value.clone()).unwrap_or_default(),
                }),
                Op::UpsertSubscription(s) => {
                    // meeting::build asks for layer 2 of audio too (the dataplane clamps it); the
                    // control plane wants a layer the track has.
                    let mut s = s.clone();
                    let n = layers.get(&s.track.0).copied().unwrap_or(1).max(1);
                    s.target_layer = s.target_layer.min(n as u8 - 1);
                    C::Subscription(subscription(&s))
                }
                other => bail!("meeting::build made an op the demo cannot send: {other:?}"),
            };
            Ok(pb::Change { change: Some(c) })
        })
        .collect()
}
