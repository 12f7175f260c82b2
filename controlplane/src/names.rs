//! Names of the dataplane's numeric ids (leg and track names, layer RIDs), kept beside the
//! desired state, and the translation of the dataplane's events into `Routes.Watch` events.

use std::collections::{BTreeSet, HashMap};

use sluice_core::forward::Event;
use sluice_core::ids::{LegId, TrackId};

use crate::pb;
use crate::pb::event::Event as Ev;
use crate::state::{Desired, Touched};

/// Names of the dataplane's numeric ids, built from the desired state and kept up to date one
/// session at a time ([`Names::update`]).
#[derive(Debug, Default)]
pub struct Names {
    legs: HashMap<LegId, (String, String)>,
    tracks: HashMap<TrackId, (String, String, Vec<String>)>,
    /// The ids each session's entries have, to replace them when the session changes.
    by_session: HashMap<String, (BTreeSet<LegId>, BTreeSet<TrackId>)>,
}

/// A track's layers' RIDs (empty for a layer without one).
fn rids(t: &crate::state::NamedTrack) -> Vec<String> {
    t.spec.layers.iter().map(|l| l.rid.clone().unwrap_or_default()).collect()
}

impl Names {
    /// The names in `desired`.
    pub fn build(desired: &Desired) -> Self {
        let mut n = Self::default();
        for session in desired.sessions.keys() {
            n.update(desired, session);
        }
        n
    }

    /// Replaces `session`'s names with what `desired` has for it now (none once deleted).
    pub fn update(&mut self, desired: &Desired, session: &str) {
        if let Some((legs, tracks)) = self.by_session.remove(session) {
            for l in legs {
                self.legs.remove(&l);
            }
            for t in tracks {
                self.tracks.remove(&t);
            }
        }
        let Some(s) = desired.sessions.get(session) else { return };
        let mut ids = (BTreeSet::new(), BTreeSet::new());
        for (leg, spec) in &s.legs {
            self.legs.insert(spec.id, (session.to_owned(), leg.clone()));
            ids.0.insert(spec.id);
        }
        for (track, t) in &s.tracks {
            self.tracks.insert(t.spec.id, (session.to_owned(), track.clone(), rids(t)));
            ids.1.insert(t.spec.id);
        }
        self.by_session.insert(session.to_owned(), ids);
    }

    /// Updates the names of the legs and tracks of `session` that `touched` names (by their
    /// old ids and their names): the cost is the change's, not the session's.
    pub fn update_touched(&mut self, desired: &Desired, session: &str, touched: &Touched) {
        let Some(s) = desired.sessions.get(session) else { return self.update(desired, session) };
        let ids = self.by_session.entry(session.to_owned()).or_default();
        for (name, old) in &touched.legs {
            for id in old {
                self.legs.remove(id);
                ids.0.remove(id);
            }
            if let Some(spec) = s.legs.get(name) {
                self.legs.insert(spec.id, (session.to_owned(), name.clone()));
                ids.0.insert(spec.id);
            }
        }
        for (name, old) in &touched.tracks {
            for id in old {
                self.tracks.remove(id);
                ids.1.remove(id);
            }
            if let Some(t) = s.tracks.get(name) {
                self.tracks.insert(t.spec.id, (session.to_owned(), name.clone(), rids(t)));
                ids.1.insert(t.spec.id);
            }
        }
    }

    /// The session and name of leg `id`.
    pub(crate) fn leg(&self, id: LegId) -> Option<(&str, &str)> {
        self.legs.get(&id).map(|(s, l)| (s.as_str(), l.as_str()))
    }

    fn track(&self, id: TrackId, layer: u8) -> Option<(&str, pb::StreamLayer)> {
        let (session, track, rids) = self.tracks.get(&id)?;
        let rid = rids.get(usize::from(layer)).cloned().unwrap_or_default();
        Some((session, pb::StreamLayer { track: track.clone(), layer: u32::from(layer), rid }))
    }

    /// The Watch event for a dataplane event, or `None` when its leg or track is unknown.
    pub fn translate(&self, desired: &Desired, e: &Event) -> Option<pb::Event> {
        use pb::web_rtc_state::State;
        let (session, event) = match *e {
            Event::LegActive { leg, remote } => {
                let (s, l) = self.leg(leg)?;
                (s, Ev::LegActive(pb::LegActive { leg: l.into(), remote: remote.to_string() }))
            }
            Event::LegIdle { leg } => {
                let (s, l) = self.leg(leg)?;
                (s, Ev::LegIdle(l.into()))
            }
            Event::StreamStarted { track, layer } => {
                let (s, t) = self.track(track, layer)?;
                (s, Ev::StreamStarted(t))
            }
            Event::StreamStopped { track, layer } => {
                let (s, t) = self.track(track, layer)?;
                (s, Ev::StreamStopped(t))
            }
            Event::KeyframeRequested { track, layer } => {
                let (s, t) = self.track(track, layer)?;
                (s, Ev::KeyframeRequested(t))
            }
            Event::LayerSwitched { track, subscriber, layer, spatial, temporal } => {
                let (s, t) = self.track(track, layer)?;
                let (_, sub) = self.leg(subscriber)?;
                (
                    s,
                    Ev::LayerSwitched(pb::LayerSwitched {
                        track: t.track,
                        subscriber: sub.into(),
                        layer: t.layer,
                        rid: t.rid,
                        spatial_layer: spatial.map(u32::from),
                        temporal_layer: temporal.map(u32::from),
                    }),
                )
            }
            Event::LegStats { leg, stats } => {
                let (s, l) = self.leg(leg)?;
                (
                    s,
                    Ev::LegStats(pb::LegStats {
                        leg: l.into(),
                        fraction_lost: u32::from(stats.fraction_lost),
                        cumulative_lost: stats.cumulative_lost,
                        jitter: stats.jitter,
                        rtt_us: stats.rtt_us,
                        reports: stats.reports,
                    }),
                )
            }
            Event::SsrcLearned { leg, track, layer, rtx, ssrc } => {
                let (s, l) = self.leg(leg)?;
                let (_, t) = self.track(track, layer)?;
                (s, Ev::SsrcLearned(pb::SsrcLearned { leg: l.into(), track: t.track, layer: t.layer, rtx, ssrc: ssrc.0 }))
            }
            // The link already reports where legs are (RemoteLatched precedes LegActive).
            Event::RemoteLatched { .. } => return None,
            // The dataplane logs it (a diagnostic for the operator, not a state change).
            Event::FirstDrop { .. } => return None,
            Event::IceConnected { leg, remote } => {
                let (s, l) = self.leg(leg)?;
                (s, Ev::Webrtc(pb::WebRtcState { leg: l.into(), state: State::IceConnected as i32, remote: remote.to_string(), ..Default::default() }))
            }
            Event::DtlsConnected { leg, profile } => {
                let (s, l) = self.leg(leg)?;
                let profile = crate::state::profile_to_pb(profile) as i32;
                (s, Ev::Webrtc(pb::WebRtcState { leg: l.into(), state: State::DtlsConnected as i32, profile, ..Default::default() }))
            }
            Event::BandwidthEstimate { leg, bps } => {
                let (s, l) = self.leg(leg)?;
                (s, Ev::BandwidthEstimate(pb::BandwidthEstimate { leg: l.into(), bps }))
            }
            Event::LayerAllocated { track, subscriber, layer } => {
                let (s, t) = self.track(track, layer.unwrap_or(0))?;
                let (_, sub) = self.leg(subscriber)?;
                (s, Ev::LayerAllocated(pb::LayerAllocated { track: t.track, subscriber: sub.into(), layer: layer.map(u32::from) }))
            }
            Event::LayerDemand { track, layer, wanted } => {
                let (s, t) = self.track(track, layer)?;
                (s, Ev::LayerDemand(pb::LayerDemand { layer: Some(t), wanted }))
            }
            Event::ActiveSpeakers { group, speakers } => {
                // The group is a hash of the session's name (state::speaker_group); an empty
                // ranking names no track, so the session is found by its group.
                let session = desired.sessions.keys().find(|s| crate::state::speaker_group(s) == group)?;
                let listed = speakers.as_slice().iter().filter_map(|sp| {
                    let (s, t) = self.track(sp.track, 0)?;
                    (s == session).then(|| pb::SpeakerLevel { track: t.track, level: u32::from(sp.level) })
                });
                (session.as_str(), Ev::ActiveSpeakers(pb::ActiveSpeakers { speakers: listed.collect(), dominant: speakers.dominant().is_some() }))
            }
            Event::RateLimited { leg, dropped } => {
                let (s, l) = self.leg(leg)?;
                (s, Ev::RateLimited(pb::RateLimited { leg: l.into(), dropped }))
            }
            Event::EdgeFailed { leg, reason } => {
                let (s, l) = self.leg(leg)?;
                (s, Ev::Webrtc(pb::WebRtcState { leg: l.into(), state: State::Failed as i32, reason: reason.name().into(), ..Default::default() }))
            }
            // Between a worker and its XDP shield (workers do not send it on).
            Event::SilenceGate { .. } => return None,
        };
        let revision = desired.sessions.get(session).map_or(0, |s| s.revision);
        Some(pb::Event { session: session.into(), revision, event: Some(event) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PortRange;
    use crate::state::fixtures::*;

    /// Names follow each session's changes without a rebuild: a removed leg's events are
    /// dropped, a new one's are named, another session's stay as they were.
    #[test]
    fn names_follow_one_session_at_a_time() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
        d.apply(&pair("m")).unwrap();
        d.apply(&pair("n")).unwrap();
        let mut names = Names::build(&d);
        let id = |d: &Desired, s: &str, l: &str| d.sessions[s].legs[l].id;
        let (ma, na) = (id(&d, "m", "a"), id(&d, "n", "a"));
        let idle = |leg| Event::LegIdle { leg };
        let named = |names: &Names, d: &Desired, leg| names.translate(d, &idle(leg)).map(|e| e.session);
        assert_eq!(named(&names, &d, ma).as_deref(), Some("m"));
        d.apply(&req("m", vec![pb::Change { change: Some(pb::change::Change::RemoveLeg("a".into())) }, leg("c")])).unwrap();
        names.update(&d, "m");
        assert_eq!(named(&names, &d, ma), None, "a removed leg's events are dropped");
        assert_eq!(named(&names, &d, id(&d, "m", "c")).as_deref(), Some("m"));
        assert_eq!(named(&names, &d, na).as_deref(), Some("n"), "the other session is untouched");
        d.delete_session(&pb::DeleteSessionRequest { session: "n".into(), expected_revision: None }).unwrap();
        names.update(&d, "n");
        assert_eq!(named(&names, &d, na), None);
        let rebuilt = Names::build(&d);
        assert_eq!((rebuilt.legs, rebuilt.tracks), (names.legs, names.tracks), "incremental = rebuilt");
    }

    /// A speaker ranking names its session by its group (also when it lists nobody) and its
    /// tracks by name; a group no session has is dropped.
    #[test]
    fn active_speakers_are_named_by_the_sessions_group() {
        use sluice_core::audio::{ActiveSpeakers, Speaker};
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
        d.apply(&pair("m")).unwrap();
        let names = Names::build(&d);
        let va = d.sessions["m"].tracks["va"].spec.id;
        let vb = d.sessions["m"].tracks["vb"].spec.id;
        let ranked = ActiveSpeakers::new(&[Speaker { track: vb, level: 20 }, Speaker { track: va, level: 90 }], true);
        let group = crate::state::speaker_group("m");
        let e = names.translate(&d, &Event::ActiveSpeakers { group, speakers: ranked }).expect("named");
        assert_eq!(e.session, "m");
        let Some(Ev::ActiveSpeakers(a)) = e.event else { panic!("{e:?}") };
        assert!(a.dominant);
        assert_eq!(a.speakers.iter().map(|s| (s.track.as_str(), s.level)).collect::<Vec<_>>(), vec![("vb", 20), ("va", 90)]);
        let nobody = names.translate(&d, &Event::ActiveSpeakers { group, speakers: ActiveSpeakers::default() }).expect("named");
        assert_eq!(nobody.session, "m");
        let other = crate::state::speaker_group("n");
        assert_eq!(names.translate(&d, &Event::ActiveSpeakers { group: other, speakers: ranked }), None);
    }

    /// A leg over its receive budget is reported by session and leg name.
    #[test]
    fn rate_limited_legs_are_named() {
        let mut d = Desired::new(PortRange { start: 30_000, end: 30_099 });
        d.apply(&pair("m")).unwrap();
        let names = Names::build(&d);
        let leg = d.sessions["m"].legs["a"].id;
        let e = names.translate(&d, &Event::RateLimited { leg, dropped: 42 }).expect("named");
        assert_eq!(e.session, "m");
        assert_eq!(e.event, Some(Ev::RateLimited(pb::RateLimited { leg: "a".into(), dropped: 42 })));
    }
}
