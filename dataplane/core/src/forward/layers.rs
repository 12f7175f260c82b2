//! Spatial and temporal layers inside one stream: which frames of a VP8/VP9 (payload descriptor)
//! or dependency-descriptor stream a subscription takes, and how its copy stays a valid stream.
//!
//! The simulcast gate (`select`) picks the publisher SSRC; this picks frames within it, per
//! subscription, against two targets: the spatial and temporal ceilings the signaling set
//! (`max_spatial`, `max_temporal`). Decisions change only where a frame begins, so a frame is
//! forwarded whole or not at all:
//!
//! ```text
//!   temporal: down at once; up at a switching point (VP8 Y=1 on the frame of the new layer,
//!             VP9 U=1 on a frame at or below the layer in force, a dependency descriptor's
//!             switch indication for the higher decode target)
//!   spatial:  up at a keyframe, asked for; down at the start of the next picture where the
//!             lower layer's frames all went to the subscriber (full SVC), else at a keyframe
//!             too (k-SVC: a subscriber on the top layer gets the lower layers of keyframe
//!             pictures only)
//!   a new source (simulcast switch, a subscription's first keyframe) starts at the targets
//! ```
//!
//! With a dependency descriptor the layers in force name a decode target of the stream's
//! template structure, and a frame goes when that target needs it (its DTI is not "not
//! present"); the copy's active-decode-targets bitmask, where the publisher's descriptor carries
//! one, is rewritten to the targets the subscriber can decode.
//!
//! A skipped packet closes its hole in the subscriber's sequence numbers
//! ([`super::rewrite::SeqTsRewriter::skip`]), a skipped VP8 picture in its picture ids
//! ([`PictureIds`]; VP9 ids keep their gaps, since VP9 references count in them); picture ids
//! and TL0PICIDX run on across simulcast switches; where the layers above the one in force are
//! cut, the marker goes on the last packet of the layer in force (VP9 E bit).
//!
//! Bad input, by rule: a payload whose descriptor does not parse, or whose spatial id is beyond
//! what the stream announced, is forwarded unchanged to a subscription that takes every layer
//! (nothing to decide) and skipped, counted in `bad_descriptors`, for the others.

use crate::wire::codec::{FrameInfo, PictureId, VideoCodec};
use crate::wire::dd::{Descriptor, Dti, Dtis, Structure};

/// No ceiling: every layer.
pub const ALL: u8 = u8::MAX;

/// What the layer choice needs to know of one packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// The stream carries layer ids (VP8 T bit, VP9 L bit, a dependency descriptor); without
    /// them every packet is forwarded.
    pub layered: bool,
    /// The descriptor was unreadable or contradicted the stream (see the module docs).
    pub bad: bool,
    /// Spatial layer id (0 without one).
    pub spatial: u8,
    /// Temporal layer id (0 without one).
    pub temporal: u8,
    /// The packet begins a frame (a layer frame, for VP9).
    pub begins: bool,
    /// The packet ends a layer frame (VP9 E bit): the marker goes here when the layers above
    /// are cut.
    pub ends_layer: bool,
    /// A keyframe begins here.
    pub keyframe: bool,
    /// A temporal switching point: see [`SwitchUp`].
    pub switch_up: SwitchUp,
    /// The picture id, to rewrite.
    pub picture_id: Option<PictureId>,
    /// A frame is a whole picture (VP8; a VP9 picture has a layer frame per spatial layer, and
    /// its ids are referenced by difference): skipped ones close up in the picture ids.
    pub whole_picture: bool,
    /// The TL0PICIDX byte's offset in the payload and its value.
    pub tl0: Option<(u8, u8)>,
    /// The frame's decode target indications, from its dependency descriptor (then the layer
    /// choice follows the decode targets of the stream's structure).
    pub dtis: Option<Dtis>,
    /// The descriptor carries the active-decode-targets bitmask (rewritten per copy).
    pub dd_mask: bool,
    /// The stream is k-SVC (VP9 L*T*_KEY: upper spatial layers predicted from themselves
    /// only): a subscriber gets the lower layers' frames of keyframe pictures only, so it can
    /// go down only at a keyframe too.
    pub ksvc: bool,
    /// The frame is predicted from earlier pictures (VP9 P=1).
    pub inter_picture: bool,
}

/// How a codec marks a temporal switching point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SwitchUp {
    /// Not one.
    #[default]
    No,
    /// This frame's temporal layer may be joined here (VP8 Y: the frame depends only on
    /// temporal layer 0).
    Here,
    /// Every higher temporal layer may be joined from the next frame on (VP9 U: later frames
    /// above this layer depend on nothing before this one).
    After,
}

impl Frame {
    /// The layer view of a parsed payload descriptor. `spatial_layers` is how many spatial
    /// layers the stream announced, if it did (a VP9 scalability structure).
    pub fn of(codec: VideoCodec, info: &FrameInfo, payload: &[u8], spatial_layers: Option<u8>) -> Self {
        let tl0 = info.tl0picidx_at.and_then(|at| payload.get(usize::from(at)).map(|v| (at, *v)));
        let spatial = info.spatial_id.unwrap_or(0);
        Frame {
            layered: info.temporal_id.is_some() || info.spatial_id.is_some(),
            bad: spatial_layers.is_some_and(|n| spatial >= n),
            spatial,
            temporal: info.temporal_id.unwrap_or(0),
            begins: info.begins_frame,
            ends_layer: info.ends_layer_frame,
            keyframe: info.is_keyframe,
            switch_up: match (info.switch_up, codec) {
                (false, _) => SwitchUp::No,
                (true, VideoCodec::Vp9) => SwitchUp::After,
                (true, _) => SwitchUp::Here,
            },
            picture_id: info.picture_id,
            whole_picture: codec != VideoCodec::Vp9,
            tl0,
            dtis: None,
            dd_mask: false,
            ksvc: false,
            inter_picture: info.inter_picture,
        }
    }

    /// The layer view of a dependency descriptor (`keyframe`: the payload's own keyframe
    /// detection, which a descriptor carrying a structure at a frame's start implies too).
    pub fn of_dd(d: &Descriptor, keyframe: bool) -> Self {
        Frame {
            layered: true,
            spatial: d.spatial_id,
            temporal: d.temporal_id,
            begins: d.start_of_frame,
            ends_layer: d.end_of_frame,
            keyframe: keyframe || (d.carries_structure && d.start_of_frame),
            dtis: Some(d.dtis),
            dd_mask: d.has_active_decode_targets_bitmask(),
            ..Frame::default()
        }
    }

    /// An unreadable descriptor.
    pub fn bad() -> Self {
        Frame { bad: true, ..Frame::default() }
    }
}

/// A subscription's layer state inside its current source. No heap; `Copy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerChoice {
    /// The spatial layer in force (frames above it are skipped).
    pub spatial: u8,
    /// The temporal layer in force.
    pub temporal: u8,
    /// The picture ids the subscriber sees.
    pub pictures: PictureIds,
    /// TL0PICIDX: the offset applied and the last value sent.
    tl0: Option<(u8, u8)>,
    /// The active decode targets the subscriber was last told (dependency descriptor); `None`:
    /// none since its stream began (all, as a structure implies).
    pub announced: Option<u32>,
}

/// What [`LayerChoice::decide`] says of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Forward it.
    pub forward: bool,
    /// The layers in force changed (spatial, temporal), for the event.
    pub changed: bool,
    /// A keyframe would let the subscription go up a spatial layer.
    pub want_keyframe: bool,
    /// Set the marker bit on the copy (the last packet of the highest layer frame forwarded).
    pub marker: bool,
}

impl LayerChoice {
    /// The last picture id and TL0PICIDX sent (for the checkpoint).
    pub fn last_ids(&self) -> (Option<u16>, Option<u8>) {
        (self.pictures.last_out, self.tl0.map(|t| t.1))
    }

    /// A choice whose stream last sent these ids (resumed from a checkpoint): the next source
    /// continues after them.
    pub fn resumed(ids: (Option<u16>, Option<u8>)) -> Self {
        LayerChoice { pictures: PictureIds { last_out: ids.0, ..PictureIds::default() }, tl0: ids.1.map(|t| (0, t)), ..LayerChoice::default() }
    }

    /// Starts on a new source at its keyframe, at the ceilings.
    pub fn start(&mut self, ceilings: (u8, u8), f: &Frame) {
        self.spatial = ceilings.0;
        self.temporal = ceilings.1;
        self.pictures.start(f.picture_id);
        self.tl0 = match (f.tl0, self.tl0) {
            (Some((_, v)), Some((_, last))) => Some((last.wrapping_add(1).wrapping_sub(v), last.wrapping_add(1))),
            (Some((_, v)), None) => Some((0, v)),
            (None, keep) => keep,
        };
    }

    /// Decides for one packet of the current source, given the subscription's ceilings
    /// (spatial, temporal; [`ALL`] for none) and the highest layer ids the stream has shown or
    /// announced (`top`). The layers in force are kept at the ceilings (not capped by `top`), so
    /// a layer the publisher adds later is taken once it can be.
    pub fn decide(&mut self, ceilings: (u8, u8), top: (u8, u8), f: &Frame, dd: Option<&Structure>) -> Decision {
        let mut d = Decision { forward: true, changed: false, want_keyframe: false, marker: false };
        if f.bad {
            d.forward = ceilings.0 >= top.0 && ceilings.1 >= top.1;
            return d;
        }
        if !f.layered {
            return d;
        }
        if let (Some(dtis), Some(s)) = (f.dtis, dd) {
            return self.decide_dd(ceilings, top, f, dtis, s);
        }
        let before = (self.spatial, self.temporal);
        if f.begins {
            self.keyframe_or_lower(ceilings, f);
            // Temporal: up at a switching point.
            if ceilings.1 > self.temporal {
                match f.switch_up {
                    SwitchUp::Here if f.temporal > self.temporal && f.temporal <= ceilings.1 => self.temporal = f.temporal,
                    SwitchUp::After if f.temporal <= self.temporal => self.temporal = ceilings.1,
                    _ => {}
                }
            }
            // Spatial: down at the start of a picture (its lowest layer frame), of a k-SVC
            // stream at a keyframe; up only at a keyframe.
            if ceilings.0 < self.spatial && f.spatial == 0 && !f.ksvc {
                self.spatial = ceilings.0;
            }
        }
        d.want_keyframe = ceilings.0.min(top.0) != self.spatial.min(top.0) && (f.ksvc || ceilings.0 > self.spatial);
        d.changed = (self.spatial, self.temporal) != before;
        // A k-SVC subscriber needs the lower layers of keyframe pictures only.
        let own_layer = !f.ksvc || !f.inter_picture || f.spatial >= self.spatial.min(top.0);
        d.forward = f.spatial <= self.spatial && f.temporal <= self.temporal && own_layer;
        // (A stream with no layer above the one in force keeps the publisher's marker.)
        d.marker = d.forward && f.ends_layer && f.spatial == self.spatial;
        d
    }

    /// [`LayerChoice::decide`] for a frame with a dependency descriptor: the layers in force
    /// name a decode target of the structure (the highest within them), and a frame goes when
    /// that decode target needs it (its DTI is not "not present"). Temporal layers go down at
    /// once and up at a frame that is a switch indication for the higher decode target. A
    /// spatial layer changes at a keyframe (asked for), or at once going down where the lower
    /// decode target needs no frame the current one left out (full SVC: yes; k-SVC, whose
    /// upper layers skip the lower layers' delta frames: no). A switch indication is not
    /// enough to go up a spatial layer: the frames before it on the new layer's chain were
    /// never forwarded.
    fn decide_dd(&mut self, ceilings: (u8, u8), top: (u8, u8), f: &Frame, dtis: Dtis, s: &Structure) -> Decision {
        let before = (self.spatial, self.temporal);
        if f.begins {
            self.keyframe_or_lower(ceilings, f);
            if ceilings.0 < self.spatial
                && f.spatial == 0
                && let (Some(from), Some(to)) = (s.decode_target_for(self.spatial, self.temporal), s.decode_target_for(ceilings.0, self.temporal))
                && covers(s, from, to)
            {
                self.spatial = ceilings.0;
            }
            if ceilings.1 > self.temporal {
                let now = s.decode_target_for(self.spatial, self.temporal);
                let up = s.decode_target_for(self.spatial, ceilings.1);
                if up != now && up.is_some_and(|t| dtis.get(t) == Dti::Switch) {
                    self.temporal = ceilings.1;
                }
            }
        }
        let dt = s.decode_target_for(self.spatial, self.temporal);
        let forward = dt.is_some_and(|t| dtis.get(t) != Dti::NotPresent);
        let layers = dt.and_then(|t| s.decode_target_layers(t));
        let spatial_in_force = self.spatial.min(top.0);
        Decision {
            forward,
            changed: (self.spatial, self.temporal) != before,
            want_keyframe: ceilings.0.min(top.0) != spatial_in_force,
            marker: forward && f.ends_layer && layers.is_some_and(|(sp, _)| f.spatial == sp),
        }
    }

    /// At the start of a frame: a keyframe takes the ceilings (every layer can be joined there),
    /// and a temporal ceiling below the layer in force applies at once.
    fn keyframe_or_lower(&mut self, ceilings: (u8, u8), f: &Frame) {
        if f.keyframe {
            (self.spatial, self.temporal) = ceilings;
        }
        if ceilings.1 < self.temporal {
            self.temporal = ceilings.1;
        }
    }

    /// The active decode targets a copy announces: those whose layers are within the layers in
    /// force (what the subscriber can decode from what it gets).
    pub fn active_mask(&self, s: &Structure) -> u32 {
        (0..s.decode_targets())
            .filter(|&dt| s.decode_target_layers(dt).is_some_and(|(sp, t)| sp <= self.spatial && t <= self.temporal))
            .fold(0, |m, dt| m | 1 << dt)
    }

    /// Whether a retransmitted packet of `f` is in the layers in force (a bad descriptor is not).
    pub fn admits(&self, f: &Frame) -> bool {
        if f.bad {
            return (self.spatial, self.temporal) == (ALL, ALL);
        }
        !f.layered || (f.spatial <= self.spatial && f.temporal <= self.temporal)
    }

    /// Records that `f` was skipped: a VP8 frame (a whole picture) closes up in the picture
    /// ids. VP9 picture ids keep their gaps: the descriptor's references (flexible mode's
    /// P_DIFFs, the scalability structure's picture group) count in the publisher's ids, so a
    /// closed-up id would point a receiver at the wrong picture.
    pub fn skipped(&mut self, f: &Frame) {
        if let Some(p) = f.picture_id
            && !f.bad
            && f.whole_picture
        {
            self.pictures.skip(p);
        }
    }

    /// The picture id and TL0PICIDX a retransmission of a packet of `f` carries: its first
    /// copy's (the offsets in force; exact unless a picture was skipped or the source switched
    /// since).
    pub fn map_ids(&self, f: &Frame) -> (Option<u16>, Option<u8>) {
        (f.picture_id.map(|p| self.pictures.map(p)), f.tl0.map(|(_, v)| self.tl0.map_or(v, |(offset, _)| v.wrapping_add(offset))))
    }

    /// The picture id and TL0PICIDX to write into this forwarded packet, if it has them.
    pub fn rewrite_ids(&mut self, f: &Frame) -> (Option<u16>, Option<u8>) {
        let pid = f.picture_id.map(|p| self.pictures.forward(p));
        let tl0 = match (f.tl0, &mut self.tl0) {
            (Some((_, v)), Some((offset, last))) => {
                let out = v.wrapping_add(*offset);
                if out.wrapping_sub(*last) < 0x80 {
                    *last = out;
                }
                Some(out)
            }
            (Some((_, v)), none) => {
                *none = Some((0, v));
                Some(v)
            }
            (None, _) => None,
        };
        (pid, tl0)
    }
}

/// Whether decode target `from` took every frame decode target `to` needs (by the structure's
/// templates): then a subscription can move from one to the other at once.
fn covers(s: &Structure, from: u8, to: u8) -> bool {
    s.templates().iter().all(|t| t.dtis().get(to) == Dti::NotPresent || t.dtis().get(from) != Dti::NotPresent)
}

/// VP8/VP9 picture ids as the subscriber sees them: one offset, set at each new source so ids
/// run on from the last one sent, and moved down by one for each picture left out (so a
/// temporal layer cut leaves no hole in the ids, as the receiver's reference finder expects of
/// a stream it decodes whole). Ids keep the width the publisher uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PictureIds {
    offset: u16,
    /// The newest publisher id seen (sent or skipped) and the last id sent.
    newest_in: Option<u16>,
    last_out: Option<u16>,
}

fn is_after(a: u16, b: u16, modulus: u16) -> bool {
    let d = a.wrapping_sub(b) & (modulus - 1);
    d != 0 && d < modulus / 2
}

impl PictureIds {
    /// A new source whose first picture is `first`: ids continue after the last one sent.
    pub fn start(&mut self, first: Option<PictureId>) {
        let Some(p) = first else { return };
        self.offset = match self.last_out {
            Some(last) => last.wrapping_add(1).wrapping_sub(p.value) & (p.modulus() - 1),
            None => 0,
        };
        self.newest_in = Some(p.value);
    }

    /// The picture `p` is left out: later pictures close up (when it is the newest one seen).
    pub fn skip(&mut self, p: PictureId) {
        if self.newest_in.is_none_or(|n| is_after(p.value, n, p.modulus())) {
            self.newest_in = Some(p.value);
            self.offset = self.offset.wrapping_sub(1) & (p.modulus() - 1);
        }
    }

    /// The subscriber's id for picture `p` at the offset in force, nothing remembered.
    pub fn map(&self, p: PictureId) -> u16 {
        p.value.wrapping_add(self.offset) & (p.modulus() - 1)
    }

    /// The subscriber's id for a forwarded packet of picture `p`.
    pub fn forward(&mut self, p: PictureId) -> u16 {
        let m = p.modulus();
        if self.newest_in.is_none_or(|n| is_after(p.value, n, m)) {
            self.newest_in = Some(p.value);
        }
        let out = p.value.wrapping_add(self.offset) & (m - 1);
        if self.last_out.is_none_or(|l| is_after(out, l, m)) {
            self.last_out = Some(out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream with three spatial and three temporal layers.
    const TOP: (u8, u8) = (2, 2);

    fn vp8(temporal: u8, y: bool, pid: u16) -> Frame {
        Frame {
            layered: true,
            temporal,
            begins: true,
            switch_up: if y { SwitchUp::Here } else { SwitchUp::No },
            picture_id: Some(PictureId { value: pid, at: 2, long: true }),
            whole_picture: true,
            ..Frame::default()
        }
    }

    /// L1T3 (TIDs 0 2 1 2 0 2 1 2 …): at temporal target 0 one frame in four goes, ids run on
    /// without holes; raising the target takes effect at a layer-sync frame of the new layer;
    /// lowering it at once.
    #[test]
    fn vp8_temporal_layers() {
        let pattern = [0u8, 2, 1, 2];
        let mut c = LayerChoice::default();
        let mut key = vp8(0, false, 100);
        key.keyframe = true;
        c.start((ALL, 0), &key);
        let mut sent = vec![];
        for i in 0..16u16 {
            let mut f = vp8(pattern[usize::from(i % 4)], false, 100 + i);
            f.keyframe = i == 0;
            let d = c.decide((ALL, 0), TOP, &f, None);
            if d.forward {
                sent.push(c.rewrite_ids(&f).0.unwrap());
            } else {
                c.skipped(&f);
            }
        }
        assert_eq!(sent, vec![100, 101, 102, 103], "a quarter of the frames, ids continuous");
        // Up to 2: not at frames without Y; at the next one with Y.
        assert!(c.decide((ALL, 2), TOP, &vp8(0, false, 116), None).forward);
        assert_eq!(c.rewrite_ids(&vp8(0, false, 116)).0, Some(104));
        for (tid, pid) in [(2, 117), (1, 118)] {
            assert!(!c.decide((ALL, 2), TOP, &vp8(tid, false, pid), None).forward, "{pid}");
            c.skipped(&vp8(tid, false, pid));
        }
        let d = c.decide((ALL, 2), TOP, &vp8(2, true, 119), None);
        assert!(d.forward && d.changed && c.temporal == 2);
        assert_eq!(c.rewrite_ids(&vp8(2, true, 119)).0, Some(105));
        // A picture never seen (lost upstream) stays a hole in the ids.
        assert_eq!(c.rewrite_ids(&vp8(2, true, 121)).0, Some(107));
        // Down at once.
        let d = c.decide((ALL, 0), TOP, &vp8(1, false, 122), None);
        assert!(!d.forward && d.changed && c.temporal == 0);
    }

    fn vp9(spatial: u8, temporal: u8, begins: bool, ends: bool) -> Frame {
        Frame { layered: true, spatial, temporal, begins, ends_layer: ends, ..Frame::default() }
    }

    /// L3T3_KEY: frames above the spatial target are skipped and the marker moves to the end of
    /// the highest layer frame sent; up waits for a keyframe (and asks for one), down is at once.
    #[test]
    fn vp9_spatial_layers() {
        let mut c = LayerChoice::default();
        let mut key = vp9(0, 0, true, false);
        key.keyframe = true;
        c.start((1, ALL), &key);
        assert!(c.decide((1, ALL), TOP, &key, None).forward);
        let d = c.decide((1, ALL), TOP, &vp9(1, 0, true, true), None);
        assert!(d.forward && d.marker, "the end of layer 1 gets the marker");
        assert!(!c.decide((1, ALL), TOP, &vp9(2, 0, true, true), None).forward);
        // Up to 2: not before a keyframe, which is asked for.
        let d = c.decide((2, ALL), TOP, &vp9(0, 1, true, true), None);
        assert!(d.forward && d.want_keyframe && !d.marker);
        assert!(!c.decide((2, ALL), TOP, &vp9(2, 1, true, true), None).forward);
        let d = c.decide((2, ALL), TOP, &key, None);
        assert!(d.forward && d.changed && !d.want_keyframe);
        assert!(c.decide((2, ALL), TOP, &vp9(2, 0, true, true), None).forward);
        // Down to 0 at the next picture.
        assert!(c.decide((0, ALL), TOP, &vp9(1, 0, false, false), None).forward, "the picture under way completes");
        let d = c.decide((0, ALL), TOP, &vp9(0, 1, true, true), None);
        assert!(d.forward && d.changed && d.marker && c.spatial == 0);
    }

    /// k-SVC (L3T3_KEY) by the VP9 descriptor: a subscriber on layer 2 gets the lower layers of
    /// keyframe pictures only, so a lower layer is joined at a keyframe, asked for, like a
    /// higher one.
    #[test]
    fn ksvc_spatial_down_waits_for_a_keyframe() {
        let ksvc = |sid, key| Frame { ksvc: true, keyframe: key, inter_picture: !key, ..vp9(sid, 0, true, true) };
        let mut c = LayerChoice::default();
        c.start((2, ALL), &ksvc(0, true));
        assert!(c.decide((2, ALL), TOP, &ksvc(1, true), None).forward, "a keyframe picture's lower layers go");
        assert!(!c.decide((2, ALL), TOP, &ksvc(1, false), None).forward, "a delta picture's lower layers do not");
        let d = c.decide((0, ALL), TOP, &ksvc(0, false), None);
        assert!(!d.forward && d.want_keyframe && c.spatial == 2, "still on 2, a keyframe asked for");
        assert!(c.decide((0, ALL), TOP, &ksvc(2, false), None).forward);
        let d = c.decide((0, ALL), TOP, &ksvc(0, true), None);
        assert!(d.forward && d.changed && !d.want_keyframe && c.spatial == 0);
        assert!(!c.decide((0, ALL), TOP, &ksvc(1, true), None).forward);
    }

    /// The frame of template `i` of `s` (a keyframe when `key`).
    fn dd_frame(s: &Structure, i: usize, key: bool) -> Frame {
        let mut d = s.descriptor(i, 7).unwrap();
        d.carries_structure = key;
        Frame::of_dd(&d, key)
    }

    /// By dependency descriptor, L3T3_KEY: a subscriber on spatial layer 2 does not get layer
    /// 0's delta frames, so it can go down only at a keyframe (asked for); full L3T3: down at
    /// once (layer 2 took every frame layer 0 needs). Up, in both, only at a keyframe: a switch
    /// indication on the upper layer does not make up for its chain never forwarded.
    #[test]
    fn dependency_descriptor_spatial_switches() {
        use crate::wire::dd::tests::{libwebrtc_l3t3, libwebrtc_l3t3_key};
        let key = libwebrtc_l3t3_key(0, &[]);
        let mut c = LayerChoice::default();
        c.start((ALL, ALL), &dd_frame(&key, 0, true));
        assert!(!c.decide((ALL, ALL), TOP, &dd_frame(&key, 1, false), Some(&key)).forward, "k-SVC: S0 delta not needed on S2");
        let d = c.decide((0, ALL), TOP, &dd_frame(&key, 1, false), Some(&key));
        assert!(!d.forward && d.want_keyframe && c.spatial == ALL, "down waits for a keyframe");
        let d = c.decide((0, ALL), TOP, &dd_frame(&key, 0, true), Some(&key));
        assert!(d.forward && d.changed && !d.want_keyframe && c.spatial == 0);
        assert!(c.decide((0, ALL), TOP, &dd_frame(&key, 1, false), Some(&key)).forward);
        let full = libwebrtc_l3t3(0, &[]);
        let mut c = LayerChoice::default();
        c.start((ALL, ALL), &dd_frame(&full, 1, true));
        // Template 0 of libwebrtc's L3T3 is S0T0 delta ("SSSRRRRRR"): needed by every target.
        assert!(c.decide((ALL, ALL), TOP, &dd_frame(&full, 0, false), Some(&full)).forward);
        let d = c.decide((0, ALL), TOP, &dd_frame(&full, 0, false), Some(&full));
        assert!(d.forward && d.changed && c.spatial == 0, "full SVC: down at once");
        // Up to 2 at an S2T0 delta frame with a switch indication for it: not taken.
        let s2 = full.templates().iter().position(|t| t.spatial_id() == 2 && t.temporal_id() == 0).unwrap();
        let d = c.decide((2, ALL), TOP, &dd_frame(&full, s2, false), Some(&full));
        assert!(!d.forward && d.want_keyframe && c.spatial == 0, "up waits for a keyframe");
    }

    /// VP9 U bit: after a switching-up point at or below the layer in force, every layer up to
    /// the target may be joined.
    #[test]
    fn vp9_switch_up_after() {
        let mut c = LayerChoice::default();
        let mut key = vp9(0, 0, true, true);
        key.keyframe = true;
        c.start((ALL, 0), &key);
        assert!(!c.decide((ALL, 2), TOP, &vp9(0, 2, true, true), None).forward);
        let mut u = vp9(0, 0, true, true);
        u.switch_up = SwitchUp::After;
        assert!(c.decide((ALL, 2), TOP, &u, None).changed);
        assert!(c.decide((ALL, 2), TOP, &vp9(0, 2, true, true), None).forward);
    }

    /// Bad descriptors: forwarded unchanged where every layer is taken, skipped elsewhere.
    #[test]
    fn bad_descriptors_by_rule() {
        let mut c = LayerChoice::default();
        assert!(c.decide((ALL, ALL), TOP, &Frame::bad(), None).forward);
        assert!(!c.decide((1, ALL), TOP, &Frame::bad(), None).forward);
        let f = Frame::of(VideoCodec::Vp9, &FrameInfo { spatial_id: Some(3), temporal_id: Some(0), ..FrameInfo::default() }, &[], Some(3));
        assert!(f.bad, "spatial id 3 of a stream that announced 3 layers");
    }

    /// Picture ids and TL0PICIDX run on across a new source.
    #[test]
    fn ids_continue_across_sources() {
        let mut c = LayerChoice::default();
        let mut a = vp8(0, false, 0x7ffe);
        a.keyframe = true;
        a.tl0 = Some((4, 250));
        c.start((ALL, ALL), &a);
        assert_eq!(c.rewrite_ids(&a), (Some(0x7ffe), Some(250)));
        let mut a2 = vp8(0, false, 0x7fff);
        a2.tl0 = Some((4, 251));
        assert_eq!(c.rewrite_ids(&a2), (Some(0x7fff), Some(251)));
        let mut b = vp8(0, false, 5);
        b.keyframe = true;
        b.tl0 = Some((4, 9));
        c.start((ALL, ALL), &b);
        assert_eq!(c.rewrite_ids(&b), (Some(0), Some(252)), "the 15-bit id wraps; TL0PICIDX runs on");
    }
}
