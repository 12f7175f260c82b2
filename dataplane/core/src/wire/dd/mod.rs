//! The AV1 Dependency Descriptor RTP header extension ("RTP Payload Format For AV1", Appendix A,
//! <https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension>).
//!
//! The descriptor tells an SFU, without looking at the (possibly end-to-end encrypted) payload,
//! which spatial and temporal layer a packet's frame belongs to, what it means to each *decode
//! target* (a spatial × temporal fidelity a subscriber can be given), which frames it depends on
//! and where the *chains* stand that make the stream decodable after a loss. Most packets carry
//! three bytes naming a *template*; the templates, one *template dependency structure* per coded
//! video sequence, travel once, on the first packet of a keyframe.
//!
//! Contract: [`read`] parses one extension value. The structure is per-track state the caller
//! keeps (it is about 4 KiB, fixed size, so it may be boxed once per track): a descriptor that
//! carries a new structure is parsed into the caller's `fresh` slot and used for that packet, and
//! the caller then swaps it in; every other descriptor is resolved against the `known` one.
//! Nothing here allocates or panics; a descriptor is never partly trusted: any error is a
//! [`DdError`], convertible into the one-byte [`WireError`] for the drop counters.
//! [`set_active_decode_targets`] rewrites the active-decode-targets bitmask in place, which is
//! how an SFU tells a subscriber which decode targets it will actually receive.
//! [`write()`] is the inverse of [`read`] (for tests, fuzzing and simulated publishers; the
//! forwarding path does not rewrite whole descriptors).
//!
//! The value is a bit stream, most significant bit first (§A.8.2; `f(n)` is an n-bit unsigned
//! field, `ns(n)` the non-symmetric encoding of a value in `0..n`):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |S|E|template id|         frame_number          |T|A|D|F|C|     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+     |
//! |  T: template_dependency_structure (below)                     |
//! |  A: active_decode_targets_bitmask   f(DtCnt)                  |
//! |  D: frame_dtis                      DtCnt × f(2)              |
//! |  F: frame_fdiffs  { next_fdiff_size f(2) != 0, f(4 × size) }, |
//! |                   f(2) = 0                                    |
//! |  C: frame_chains                    chain_cnt × f(8)          |
//! |                                  ... zero padding to the byte |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! S start_of_frame, E end_of_frame; T A D F C are present only when the value is longer
//! than 3 bytes, and each flag says whether its part follows.
//!
//! template_dependency_structure:
//!   template_id_offset f(6), dt_cnt_minus_one f(5)
//!   template layers:  next_layer_idc f(2) per template (0 same layer, 1 next temporal,
//!                     2 next spatial, 3 last template)
//!   template DTIs:    TemplateCnt × DtCnt × f(2)
//!   template fdiffs:  per template { fdiff_follows f(1) = 1, fdiff_minus_one f(4) }, f(1) = 0
//!   chains:           chain_cnt ns(DtCnt + 1); if > 0: decode_target_protected_by
//!                     DtCnt × ns(chain_cnt), template chain fdiffs TemplateCnt × chain_cnt × f(4)
//!   resolutions_present f(1); if 1: (max_render_width_minus_1 f(16),
//!                     max_render_height_minus_1 f(16)) per spatial layer
//! ```
//!
//! Limits: the syntax bounds decode targets (32), chains (at most one per decode target) and,
//! through the 6-bit template id, templates (64). AV1 bounds spatial ids to 4 and temporal ids to
//! 8 (its OBU extension header fields); libwebrtc enforces the same. Only the number of frame
//! differences per template or frame is unbounded in the syntax; AV1 frames have at most 7
//! references, and this parser accepts up to [`MAX_FDIFFS`], refusing more as [`DdError::Invalid`].

use super::WireError;

/// Templates in one structure: the template id is 6 bits and indexes modulo 64 (§A.8.2).
pub const MAX_TEMPLATES: usize = 64;
/// Decode targets in one structure (`dt_cnt_minus_one` is 5 bits).
pub const MAX_DECODE_TARGETS: usize = 32;
/// Chains in one structure: `chain_cnt` is `ns(DtCnt + 1)`, so at most one per decode target.
pub const MAX_CHAINS: usize = MAX_DECODE_TARGETS;
/// Spatial layers: AV1's `spatial_id` is 2 bits.
pub const MAX_SPATIAL_IDS: usize = 4;
/// Temporal layers: AV1's `temporal_id` is 3 bits.
pub const MAX_TEMPORAL_IDS: usize = 8;
/// Frame differences kept per template or frame (the syntax has no bound; AV1 refers to at most
/// 7 frames).
pub const MAX_FDIFFS: usize = 15;

/// Why a dependency descriptor was refused.
///
/// [`NoStructure`](DdError::NoStructure) and [`UnknownTemplate`](DdError::UnknownTemplate) are
/// not corruption: the packet that carried the structure was lost or is late, and only a new
/// keyframe (which carries a new structure) repairs that; see [`DdError::needs_keyframe`].
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DdError {
    /// The value ends before a field it announces (or is shorter than the 3 mandatory bytes).
    #[error("dependency descriptor truncated")]
    Truncated = 0,
    /// The descriptor needs a template dependency structure, carries none, and none is known.
    #[error("no template dependency structure received")]
    NoStructure = 1,
    /// The template id is outside the known structure's range (the structure changed and the
    /// packet carrying the new one has not arrived).
    #[error("template id not in the known structure")]
    UnknownTemplate = 2,
    /// Self-contradictory: more than 64 templates, a spatial id past 3 or a temporal id past 7,
    /// more than [`MAX_FDIFFS`] frame differences, or a template id outside the structure the
    /// same descriptor carries.
    #[error("invalid dependency descriptor")]
    Invalid = 3,
}

impl DdError {
    /// Whether the remedy is a keyframe request (the structure is missing or stale), as opposed
    /// to dropping one corrupt packet.
    pub const fn needs_keyframe(self) -> bool {
        matches!(self, DdError::NoStructure | DdError::UnknownTemplate)
    }
}

impl From<DdError> for WireError {
    fn from(e: DdError) -> WireError {
        match e {
            DdError::Truncated => WireError::Truncated,
            DdError::NoStructure | DdError::UnknownTemplate => WireError::NoStructure,
            DdError::Invalid => WireError::BadExtension,
        }
    }
}

/// A Decode Target Indication: what a frame is to one decode target (§A.8.3, table A.1).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dti {
    /// `-`: the frame is not part of the decode target.
    NotPresent = 0,
    /// `D`: part of it, but no later frame of the decode target refers to it.
    Discardable = 1,
    /// `S`: part of it, and if this frame is decodable, every later frame of the decode target
    /// is: a switch point.
    Switch = 2,
    /// `R`: part of it, neither discardable nor a switch point.
    Required = 3,
}

impl Dti {
    const fn from_bits(v: u64) -> Dti {
        match v & 3 {
            0 => Dti::NotPresent,
            1 => Dti::Discardable,
            2 => Dti::Switch,
            _ => Dti::Required,
        }
    }

    /// The symbol the spec's tables use: `-`, `D`, `S` or `R`.
    pub const fn symbol(self) -> char {
        match self {
            Dti::NotPresent => '-',
            Dti::Discardable => 'D',
            Dti::Switch => 'S',
            Dti::Required => 'R',
        }
    }

    /// The inverse of [`Dti::symbol`].
    pub const fn from_symbol(c: char) -> Option<Dti> {
        match c {
            '-' => Some(Dti::NotPresent),
            'D' => Some(Dti::Discardable),
            'S' => Some(Dti::Switch),
            'R' => Some(Dti::Required),
            _ => None,
        }
    }
}

/// The DTIs of one frame or template, 2 bits per decode target (decode target 0 in the low bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Dtis(u64);

impl Dtis {
    /// The indication for decode target `dt` ([`Dti::NotPresent`] past the last one).
    pub const fn get(self, dt: u8) -> Dti {
        if dt as usize >= MAX_DECODE_TARGETS { Dti::NotPresent } else { Dti::from_bits(self.0 >> (2 * dt as u32)) }
    }

    /// A copy with decode target `dt`'s indication replaced (unchanged when `dt` is past 31).
    pub const fn with(self, dt: u8, dti: Dti) -> Dtis {
        if dt as usize >= MAX_DECODE_TARGETS {
            return self;
        }
        let shift = 2 * dt as u32;
        Dtis((self.0 & !(3 << shift)) | ((dti as u64) << shift))
    }

    /// From the spec's notation, decode target 0 first: `"SSD-"`. `None` for another character
    /// or more than 32 of them.
    pub fn from_symbols(s: &str) -> Option<Dtis> {
        let mut out = Dtis::default();
        for (dt, c) in s.chars().enumerate() {
            if dt >= MAX_DECODE_TARGETS {
                return None;
            }
            out = out.with(dt as u8, Dti::from_symbol(c)?);
        }
        Some(out)
    }

    /// The packed value, 2 bits per decode target.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

/// A render resolution (`max_render_width_minus_1 + 1` by `max_render_height_minus_1 + 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Resolution {
    /// Width in pixels, 1..=65536.
    pub width: u32,
    /// Height in pixels, 1..=65536.
    pub height: u32,
}

/// One frame dependency template of a [`Structure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    spatial_id: u8,
    temporal_id: u8,
    fdiff_cnt: u8,
    chain_cnt: u8,
    dtis: Dtis,
    fdiffs: [u8; MAX_FDIFFS],
    chain_fdiffs: [u8; MAX_CHAINS],
}

impl Template {
    const EMPTY: Template =
        Template { spatial_id: 0, temporal_id: 0, fdiff_cnt: 0, chain_cnt: 0, dtis: Dtis(0), fdiffs: [0; MAX_FDIFFS], chain_fdiffs: [0; MAX_CHAINS] };

    /// Spatial id of frames using this template.
    pub const fn spatial_id(&self) -> u8 {
        self.spatial_id
    }

    /// Temporal id of frames using this template.
    pub const fn temporal_id(&self) -> u8 {
        self.temporal_id
    }

    /// The template's DTIs.
    pub const fn dtis(&self) -> Dtis {
        self.dtis
    }

    /// Frame differences (1..=16) to the frames this template's frames refer to.
    pub fn fdiffs(&self) -> &[u8] {
        self.fdiffs.get(..usize::from(self.fdiff_cnt)).unwrap_or_default()
    }

    /// Per chain, the difference (0..=15) to the previous frame in that chain; 0 means the chain
    /// needs no earlier frame.
    pub fn chain_fdiffs(&self) -> &[u8] {
        self.chain_fdiffs.get(..usize::from(self.chain_cnt)).unwrap_or_default()
    }
}

/// A template dependency structure (§A.8.2 `template_dependency_structure`): the templates of a
/// coded video sequence, its decode targets and chains. Fixed size, no heap.
///
/// Built by [`read`] from a descriptor that carries one, or by hand with [`Structure::new`],
/// [`Structure::push_template`] and [`Structure::set_resolutions`] (which keep the invariants the
/// wire format implies, so [`write()`] can always encode it).
#[derive(Clone, PartialEq, Eq)]
pub struct Structure {
    template_id_offset: u8,
    dt_cnt: u8,
    chain_cnt: u8,
    template_cnt: u8,
    resolution_cnt: u8,
    protected_by: [u8; MAX_DECODE_TARGETS],
    dt_spatial: [u8; MAX_DECODE_TARGETS],
    dt_temporal: [u8; MAX_DECODE_TARGETS],
    resolutions: [Resolution; MAX_SPATIAL_IDS],
    templates: [Template; MAX_TEMPLATES],
}

impl Default for Structure {
    /// An empty structure (no decode targets, no templates): every descriptor resolved against
    /// it is [`DdError::UnknownTemplate`].
    fn default() -> Self {
        Structure::EMPTY
    }
}

impl core::fmt::Debug for Structure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Structure")
            .field("template_id_offset", &self.template_id_offset)
            .field("decode_targets", &self.dt_cnt)
            .field("chains", &self.chain_cnt)
            .field("protected_by", &self.protected_by.get(..usize::from(self.dt_cnt)))
            .field("resolutions", &self.resolutions.get(..usize::from(self.resolution_cnt)))
            .field("templates", &self.templates())
            .finish()
    }
}

impl Structure {
    const EMPTY: Structure = Structure {
        template_id_offset: 0,
        dt_cnt: 0,
        chain_cnt: 0,
        template_cnt: 0,
        resolution_cnt: 0,
        protected_by: [0; MAX_DECODE_TARGETS],
        dt_spatial: [0; MAX_DECODE_TARGETS],
        dt_temporal: [0; MAX_DECODE_TARGETS],
        resolutions: [Resolution { width: 0, height: 0 }; MAX_SPATIAL_IDS],
        templates: [Template::EMPTY; MAX_TEMPLATES],
    };

    /// A structure without templates yet: `decode_targets` in 1..=32, `chains` in
    /// 0..=`decode_targets`, and, when there are chains, the chain protecting each decode target
    /// (`protected_by.len() == decode_targets`; empty otherwise).
    pub fn new(template_id_offset: u8, decode_targets: u8, chains: u8, protected_by: &[u8]) -> Result<Structure, WireError> {
        let dt = usize::from(decode_targets);
        let ok = usize::from(template_id_offset) < MAX_TEMPLATES
            && (1..=MAX_DECODE_TARGETS).contains(&dt)
            && chains <= decode_targets
            && protected_by.len() == if chains == 0 { 0 } else { dt }
            && protected_by.iter().all(|&c| c < chains);
        if !ok {
            return Err(WireError::OutOfRange);
        }
        let mut s = Structure::EMPTY;
        s.template_id_offset = template_id_offset;
        s.dt_cnt = decode_targets;
        s.chain_cnt = chains;
        s.protected_by[..protected_by.len()].copy_from_slice(protected_by);
        Ok(s)
    }

    /// Appends a template. Templates are ordered by layer as the wire format requires: the first
    /// is (0, 0), and each next one has the same layers, the next temporal id of the same spatial
    /// layer, or temporal id 0 of the next spatial layer. `fdiffs` are 1..=16 (at most
    /// [`MAX_FDIFFS`]), `chain_fdiffs` 0..=15, one per chain. DTIs past the last decode target
    /// must be [`Dti::NotPresent`]. Resolutions, if any were set, are dropped (they depend on the
    /// number of spatial layers).
    pub fn push_template(&mut self, spatial_id: u8, temporal_id: u8, dtis: Dtis, fdiffs: &[u8], chain_fdiffs: &[u8]) -> Result<(), WireError> {
        let n = usize::from(self.template_cnt);
        let follows = match n.checked_sub(1).and_then(|i| self.templates.get(i)) {
            None => (spatial_id, temporal_id) == (0, 0),
            Some(p) => next_layer_idc(p, spatial_id, temporal_id).is_some(),
        };
        let ok = n < MAX_TEMPLATES
            && self.dt_cnt > 0
            && follows
            && usize::from(spatial_id) < MAX_SPATIAL_IDS
            && usize::from(temporal_id) < MAX_TEMPORAL_IDS
            && dtis.0 & !all_dti_bits(self.dt_cnt) == 0
            && fdiffs.len() <= MAX_FDIFFS
            && fdiffs.iter().all(|&d| (1..=16).contains(&d))
            && chain_fdiffs.len() == usize::from(self.chain_cnt)
            && chain_fdiffs.iter().all(|&d| d <= 15);
        if !ok {
            return Err(WireError::OutOfRange);
        }
        let mut t = Template::EMPTY;
        t.spatial_id = spatial_id;
        t.temporal_id = temporal_id;
        t.dtis = dtis;
        t.fdiff_cnt = fdiffs.len() as u8;
        t.fdiffs[..fdiffs.len()].copy_from_slice(fdiffs);
        t.chain_cnt = self.chain_cnt;
        t.chain_fdiffs[..chain_fdiffs.len()].copy_from_slice(chain_fdiffs);
        self.templates[n] = t;
        self.template_cnt += 1;
        self.resolution_cnt = 0;
        self.resolutions = [Resolution::default(); MAX_SPATIAL_IDS];
        self.derive_decode_target_layers();
        Ok(())
    }

    /// Sets the render resolution of each spatial layer, one per layer the templates use
    /// (or none, to clear them); each dimension in 1..=65536.
    pub fn set_resolutions(&mut self, resolutions: &[Resolution]) -> Result<(), WireError> {
        let ok = self.template_cnt > 0
            && (resolutions.is_empty() || resolutions.len() == usize::from(self.max_spatial_id()) + 1)
            && resolutions.iter().all(|r| (1..=65536).contains(&r.width) && (1..=65536).contains(&r.height));
        if !ok {
            return Err(WireError::OutOfRange);
        }
        self.resolutions = [Resolution::default(); MAX_SPATIAL_IDS];
        self.resolutions[..resolutions.len()].copy_from_slice(resolutions);
        self.resolution_cnt = resolutions.len() as u8;
        Ok(())
    }

    /// The `frame_dependency_template_id` of template index 0.
    pub const fn template_id_offset(&self) -> u8 {
        self.template_id_offset
    }

    /// Number of decode targets (`DtCnt`), 1..=32 (0 only for [`Structure::default`]).
    pub const fn decode_targets(&self) -> u8 {
        self.dt_cnt
    }

    /// Number of chains, 0..=`decode_targets`.
    pub const fn chains(&self) -> u8 {
        self.chain_cnt
    }

    /// The chain protecting decode target `dt`, when the structure uses chains.
    pub fn decode_target_protected_by(&self, dt: u8) -> Option<u8> {
        (self.chain_cnt > 0 && dt < self.dt_cnt).then(|| self.protected_by[usize::from(dt) % MAX_DECODE_TARGETS])
    }

    /// Every template, in template-index order.
    pub fn templates(&self) -> &[Template] {
        self.templates.get(..usize::from(self.template_cnt)).unwrap_or_default()
    }

    /// The template a descriptor's `frame_dependency_template_id` names, if in range.
    pub fn template(&self, template_id: u8) -> Option<&Template> {
        if usize::from(template_id) >= MAX_TEMPLATES {
            return None;
        }
        // §A.8.2 frame_dependency_definition(): templateIndex.
        let index = (usize::from(template_id) + MAX_TEMPLATES - usize::from(self.template_id_offset)) % MAX_TEMPLATES;
        self.templates().get(index)
    }

    /// The highest spatial id of any template (`MaxSpatialId`).
    pub fn max_spatial_id(&self) -> u8 {
        self.templates().last().map_or(0, |t| t.spatial_id)
    }

    /// The highest temporal id of any template.
    pub fn max_temporal_id(&self) -> u8 {
        self.templates().iter().map(|t| t.temporal_id).max().unwrap_or(0)
    }

    /// The render resolution of frames of `spatial_id`, when the structure carries resolutions.
    pub fn resolution(&self, spatial_id: u8) -> Option<Resolution> {
        self.resolutions.get(..usize::from(self.resolution_cnt)).unwrap_or_default().get(usize::from(spatial_id)).copied()
    }

    /// The layers of decode target `dt` (§A.8.2 `decode_target_layers`): the highest spatial id
    /// and the highest temporal id over the templates whose DTI for `dt` is not
    /// [`Dti::NotPresent`]. `None` past the last decode target.
    pub fn decode_target_layers(&self, dt: u8) -> Option<(u8, u8)> {
        (dt < self.dt_cnt).then(|| {
            let i = usize::from(dt) % MAX_DECODE_TARGETS;
            (self.dt_spatial[i], self.dt_temporal[i])
        })
    }

    /// The decode target to forward to a subscriber capped at `max_spatial` and `max_temporal`:
    /// among the decode targets whose layers do not exceed the caps, the one with the highest
    /// layers, spatial id first (a higher resolution beats a higher frame rate), the lowest index
    /// on a tie. `None` when every decode target exceeds the caps.
    pub fn decode_target_for(&self, max_spatial: u8, max_temporal: u8) -> Option<u8> {
        self.decode_target_for_active(max_spatial, max_temporal, u32::MAX)
    }

    /// [`Structure::decode_target_for`] restricted to the decode targets set in `active` (bit
    /// `dt`, as in `active_decode_targets_bitmask`).
    pub fn decode_target_for_active(&self, max_spatial: u8, max_temporal: u8, active: u32) -> Option<u8> {
        let mut best: Option<(u8, (u8, u8))> = None;
        for dt in 0..self.dt_cnt.min(MAX_DECODE_TARGETS as u8) {
            let layers = (self.dt_spatial[usize::from(dt)], self.dt_temporal[usize::from(dt)]);
            if active >> dt & 1 == 0 || layers.0 > max_spatial || layers.1 > max_temporal {
                continue;
            }
            if best.is_none_or(|(_, b)| layers > b) {
                best = Some((dt, layers));
            }
        }
        best.map(|(dt, _)| dt)
    }

    /// A descriptor for a frame that follows template `template_index` exactly: start and end
    /// of frame set, no structure, no bitmask. Adjust its fields (or [`Descriptor::set_fdiffs`],
    /// [`Descriptor::set_chain_fdiffs`]) before [`write()`] to describe a custom frame.
    pub fn descriptor(&self, template_index: usize, frame_number: u16) -> Option<Descriptor> {
        let t = self.templates().get(template_index)?;
        let template_id = ((usize::from(self.template_id_offset) + template_index) % MAX_TEMPLATES) as u8;
        Some(Descriptor::from_template(self, t, template_id, frame_number))
    }

    /// Every decode target's bit (what a structure implies active).
    pub fn all_decode_targets(&self) -> u32 {
        all_decode_targets(self.dt_cnt)
    }

    /// §A.8.2 `decode_target_layers()`, kept with the structure so that per-packet lookups are
    /// table reads.
    fn derive_decode_target_layers(&mut self) {
        let n = usize::from(self.dt_cnt).min(MAX_DECODE_TARGETS);
        self.dt_spatial = [0; MAX_DECODE_TARGETS];
        self.dt_temporal = [0; MAX_DECODE_TARGETS];
        for t in self.templates.iter().take(usize::from(self.template_cnt)) {
            for dt in 0..n {
                if t.dtis.get(dt as u8) != Dti::NotPresent {
                    self.dt_spatial[dt] = self.dt_spatial[dt].max(t.spatial_id);
                    self.dt_temporal[dt] = self.dt_temporal[dt].max(t.temporal_id);
                }
            }
        }
    }
}

/// One parsed dependency descriptor, resolved against its structure: template values with the
/// frame's custom DTIs, frame differences and chain differences applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// The packet's payload starts a frame.
    pub start_of_frame: bool,
    /// The packet ends a frame.
    pub end_of_frame: bool,
    /// `frame_dependency_template_id`, 0..=63.
    pub template_id: u8,
    /// `frame_number`, wrapping, increasing in decode order.
    pub frame_number: u16,
    /// The frame's spatial id (from its template).
    pub spatial_id: u8,
    /// The frame's temporal id (from its template).
    pub temporal_id: u8,
    /// The frame's DTIs.
    pub dtis: Dtis,
    /// Number of decode targets of the structure the descriptor was resolved against.
    pub decode_targets: u8,
    /// The active decode targets (bit `dt`): the explicit bitmask when the descriptor carries
    /// one, all decode targets when it carries a structure without one (§A.4), else `None`
    /// (the last update still holds).
    pub active_decode_targets: Option<u32>,
    /// The descriptor carried a template dependency structure (it is in `fresh`).
    pub carries_structure: bool,
    /// The render resolution of the frame's spatial layer, when the structure carries them.
    pub resolution: Option<Resolution>,
    fdiff_cnt: u8,
    fdiffs: [u16; MAX_FDIFFS],
    chain_cnt: u8,
    chain_fdiffs: [u8; MAX_CHAINS],
    /// Bit offset of `active_decode_targets_bitmask` in the value, 0 when absent (the mandatory
    /// fields come first, so a real offset is at least 29).
    mask_at: u32,
}

impl Descriptor {
    fn from_template(s: &Structure, t: &Template, template_id: u8, frame_number: u16) -> Descriptor {
        let mut fdiffs = [0; MAX_FDIFFS];
        for (d, &f) in fdiffs.iter_mut().zip(t.fdiffs()) {
            *d = u16::from(f);
        }
        Descriptor {
            start_of_frame: true,
            end_of_frame: true,
            template_id,
            frame_number,
            spatial_id: t.spatial_id,
            temporal_id: t.temporal_id,
            dtis: t.dtis,
            decode_targets: s.dt_cnt,
            active_decode_targets: None,
            carries_structure: false,
            resolution: s.resolution(t.spatial_id),
            fdiff_cnt: t.fdiff_cnt,
            fdiffs,
            chain_cnt: t.chain_cnt,
            chain_fdiffs: t.chain_fdiffs,
            mask_at: 0,
        }
    }

    /// The frame's DTI for decode target `dt`.
    pub const fn dti(&self, dt: u8) -> Dti {
        if dt >= self.decode_targets { Dti::NotPresent } else { self.dtis.get(dt) }
    }

    /// Differences (1..=4096) between `frame_number` and the frame numbers of the frames this
    /// frame refers to.
    pub fn fdiffs(&self) -> &[u16] {
        self.fdiffs.get(..usize::from(self.fdiff_cnt)).unwrap_or_default()
    }

    /// Per chain, the difference (0..=255) between `frame_number` and the previous frame in
    /// that chain; 0: the chain needs no earlier frame.
    pub fn chain_fdiffs(&self) -> &[u8] {
        self.chain_fdiffs.get(..usize::from(self.chain_cnt)).unwrap_or_default()
    }

    /// Whether the descriptor carries an explicit `active_decode_targets_bitmask` that
    /// [`set_active_decode_targets`] can rewrite.
    pub const fn has_active_decode_targets_bitmask(&self) -> bool {
        self.mask_at != 0
    }

    /// Replaces the frame differences (each 1..=4096, at most [`MAX_FDIFFS`]).
    pub fn set_fdiffs(&mut self, fdiffs: &[u16]) -> Result<(), WireError> {
        if fdiffs.len() > MAX_FDIFFS || !fdiffs.iter().all(|&d| (1..=4096).contains(&d)) {
            return Err(WireError::OutOfRange);
        }
        self.fdiffs = [0; MAX_FDIFFS];
        self.fdiffs[..fdiffs.len()].copy_from_slice(fdiffs);
        self.fdiff_cnt = fdiffs.len() as u8;
        Ok(())
    }

    /// Replaces the chain differences, one per chain of the structure.
    pub fn set_chain_fdiffs(&mut self, chain_fdiffs: &[u8]) -> Result<(), WireError> {
        if chain_fdiffs.len() != usize::from(self.chain_cnt) {
            return Err(WireError::OutOfRange);
        }
        self.chain_fdiffs[..chain_fdiffs.len()].copy_from_slice(chain_fdiffs);
        Ok(())
    }
}

/// Parses one dependency descriptor extension value (`ext` is the extension's data, its length
/// the `sz` of §A.8.2).
///
/// A descriptor that carries a template dependency structure is parsed into `fresh` and resolved
/// against it (`carries_structure` is then set and the caller should keep `fresh` as the track's
/// structure from now on); any other is resolved against `known`. `fresh` is overwritten as soon
/// as a structure starts, so it holds a usable structure only after `Ok` with
/// `carries_structure`. Trailing bits after the last field are padding and are not checked.
///
/// The caller's side, per track:
///
/// ```
/// use sluice_core::wire::dd::{self, Structure};
///
/// let mut known: Option<Box<Structure>> = None;
/// let mut fresh = Box::<Structure>::default();
/// // Chrome's first descriptor of a single-layer stream: frame 1, a structure, 480x270.
/// let ext = [0x80, 0x00, 0x01, 0x80, 0x00, 0x3a, 0x41, 0x01, 0x80, 0xef, 0x80, 0x86, 0x80];
/// match dd::read(&ext, known.as_deref(), &mut fresh) {
///     Ok(d) => {
///         if d.carries_structure {
///             match &mut known {
///                 Some(k) => std::mem::swap(k, &mut fresh),
///                 None => known = Some(std::mem::take(&mut fresh)),
///             }
///         }
///         assert_eq!((d.frame_number, d.spatial_id, d.temporal_id), (1, 0, 0));
///     }
///     Err(e) if e.needs_keyframe() => { /* drop, and ask the publisher for a keyframe */ }
///     Err(_) => { /* drop, and count it */ }
/// }
/// assert_eq!(known.map(|s| s.decode_targets()), Some(1));
/// ```
pub fn read(ext: &[u8], known: Option<&Structure>, fresh: &mut Structure) -> Result<Descriptor, DdError> {
    let mut b = BitReader { buf: ext, pos: 0 };
    // Mandatory fields.
    let start_of_frame = b.f(1)? == 1;
    let end_of_frame = b.f(1)? == 1;
    let template_id = b.f(6)? as u8;
    let frame_number = b.f(16)? as u16;
    // Extended fields, when the value is longer than the mandatory 3 bytes.
    let mut flags = [false; 5];
    if ext.len() > 3 {
        for flag in &mut flags {
            *flag = b.f(1)? == 1;
        }
    }
    let [structure_present, mask_present, custom_dtis, custom_fdiffs, custom_chains] = flags;
    let s: &Structure = if structure_present {
        read_structure(&mut b, fresh)?;
        fresh
    } else {
        known.ok_or(DdError::NoStructure)?
    };
    let mut active_decode_targets = structure_present.then(|| s.all_decode_targets());
    let mut mask_at = 0;
    if mask_present {
        mask_at = u32::try_from(b.pos).map_err(|_| DdError::Invalid)?;
        active_decode_targets = Some(b.f(u32::from(s.dt_cnt))?);
    }
    // Frame dependency definition.
    let Some(t) = s.template(template_id) else {
        return Err(if structure_present { DdError::Invalid } else { DdError::UnknownTemplate });
    };
    let mut d = Descriptor::from_template(s, t, template_id, frame_number);
    d.start_of_frame = start_of_frame;
    d.end_of_frame = end_of_frame;
    d.active_decode_targets = active_decode_targets;
    d.carries_structure = structure_present;
    d.mask_at = mask_at;
    if custom_dtis {
        let mut dtis = Dtis::default();
        for dt in 0..s.dt_cnt {
            dtis = dtis.with(dt, Dti::from_bits(u64::from(b.f(2)?)));
        }
        d.dtis = dtis;
    }
    if custom_fdiffs {
        d.fdiffs = [0; MAX_FDIFFS];
        d.fdiff_cnt = 0;
        loop {
            let size = b.f(2)?;
            if size == 0 {
                break;
            }
            let slot = d.fdiffs.get_mut(usize::from(d.fdiff_cnt)).ok_or(DdError::Invalid)?;
            *slot = b.f(4 * size)? as u16 + 1;
            d.fdiff_cnt += 1;
        }
    }
    if custom_chains {
        for c in d.chain_fdiffs.iter_mut().take(usize::from(s.chain_cnt)) {
            *c = b.f(8)? as u8;
        }
    }
    Ok(d)
}

/// §A.8.2 `template_dependency_structure()`, into `s` (reset first).
fn read_structure(b: &mut BitReader<'_>, s: &mut Structure) -> Result<(), DdError> {
    *s = Structure::EMPTY;
    s.template_id_offset = b.f(6)? as u8;
    s.dt_cnt = b.f(5)? as u8 + 1;
    // template_layers(): the layers of each next template follow from next_layer_idc.
    let (mut spatial_id, mut temporal_id) = (0u8, 0u8);
    loop {
        let t = s.templates.get_mut(usize::from(s.template_cnt)).ok_or(DdError::Invalid)?;
        t.spatial_id = spatial_id;
        t.temporal_id = temporal_id;
        s.template_cnt += 1;
        match b.f(2)? {
            0 => {}
            1 => temporal_id += 1,
            2 => (spatial_id, temporal_id) = (spatial_id + 1, 0),
            _ => break,
        }
        if usize::from(spatial_id) >= MAX_SPATIAL_IDS || usize::from(temporal_id) >= MAX_TEMPORAL_IDS {
            return Err(DdError::Invalid);
        }
    }
    let n = usize::from(s.template_cnt);
    for t in &mut s.templates[..n] {
        for dt in 0..s.dt_cnt {
            t.dtis = t.dtis.with(dt, Dti::from_bits(u64::from(b.f(2)?)));
        }
    }
    for t in &mut s.templates[..n] {
        while b.f(1)? == 1 {
            let slot = t.fdiffs.get_mut(usize::from(t.fdiff_cnt)).ok_or(DdError::Invalid)?;
            *slot = b.f(4)? as u8 + 1;
            t.fdiff_cnt += 1;
        }
    }
    // template_chains()
    s.chain_cnt = b.ns(u32::from(s.dt_cnt) + 1)? as u8;
    if s.chain_cnt > 0 {
        for p in &mut s.protected_by[..usize::from(s.dt_cnt)] {
            *p = b.ns(u32::from(s.chain_cnt))? as u8;
        }
        for t in &mut s.templates[..n] {
            t.chain_cnt = s.chain_cnt;
            for c in &mut t.chain_fdiffs[..usize::from(s.chain_cnt)] {
                *c = b.f(4)? as u8;
            }
        }
    }
    s.derive_decode_target_layers();
    if b.f(1)? == 1 {
        let layers = usize::from(s.max_spatial_id()) + 1;
        for r in &mut s.resolutions[..layers] {
            r.width = b.f(16)? + 1;
            r.height = b.f(16)? + 1;
        }
        s.resolution_cnt = layers as u8;
    }
    Ok(())
}

/// Rewrites the `active_decode_targets_bitmask` of the descriptor `d` was read from (`ext`, the
/// same bytes) to `mask` (bits past the last decode target are ignored). Returns `false`, and
/// leaves `ext` untouched, when the descriptor carries no explicit bitmask (an implicit "all
/// active" of a structure cannot be rewritten in place) or `ext` is too short for it.
pub fn set_active_decode_targets(ext: &mut [u8], d: &Descriptor, mask: u32) -> bool {
    let (at, width) = (d.mask_at as usize, u32::from(d.decode_targets));
    if at == 0 || width as usize > MAX_DECODE_TARGETS || at + width as usize > ext.len() * 8 {
        return false;
    }
    let mut w = BitWriter { buf: ext, pos: at };
    w.f(width, mask & all_decode_targets(d.decode_targets)).is_ok()
}

const fn all_decode_targets(dt_cnt: u8) -> u32 {
    if dt_cnt as usize >= MAX_DECODE_TARGETS { u32::MAX } else { (1 << dt_cnt) - 1 }
}

const fn all_dti_bits(dt_cnt: u8) -> u64 {
    if dt_cnt as usize >= MAX_DECODE_TARGETS { u64::MAX } else { (1 << (2 * dt_cnt as u32)) - 1 }
}

/// §A.8.2 `f(n)` and `ns(n)` over a byte slice, most significant bit first.
struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    /// `f(n)`, `n` ≤ 32.
    fn f(&mut self, n: u32) -> Result<u32, DdError> {
        let end = self.pos + n as usize;
        if n > 32 || end > self.buf.len() * 8 {
            return Err(DdError::Truncated);
        }
        let mut v: u64 = 0;
        while self.pos < end {
            let byte = self.buf[self.pos / 8];
            let avail = 8 - self.pos % 8;
            let take = avail.min(end - self.pos);
            let bits = (byte >> (avail - take)) & ((1u16 << take) - 1) as u8;
            v = (v << take) | u64::from(bits);
            self.pos += take;
        }
        Ok(v as u32)
    }

    /// `ns(n)`, `n` ≥ 1: a value in `0..n`, the lower part of the range one bit shorter.
    fn ns(&mut self, n: u32) -> Result<u32, DdError> {
        let w = u32::BITS - n.leading_zeros();
        let m = (1u32 << w) - n;
        let v = self.f(w.saturating_sub(1))?;
        if v < m {
            return Ok(v);
        }
        let extra = self.f(1)?;
        Ok((v << 1) - m + extra)
    }
}

mod write;
pub use write::write;
use write::{BitWriter, next_layer_idc};

#[cfg(test)]
pub(crate) mod tests;
