//! Keyframe and layer detection on decrypted RTP payloads.
//!
//! The SFU switches a subscriber between simulcast/SVC layers only on a keyframe of the target
//! layer, so this runs on every video packet after SRTP unprotect. It reads a few bytes of the
//! payload descriptor, never allocates and never panics; a descriptor that claims more bytes
//! than the payload has is `Err`, so it can be counted instead of silently called a delta frame.
//! Mapping payload types to codecs is the caller's (it comes from signaling).

use super::{WireError, be16};

/// The video codec of an RTP payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    /// VP8, RFC 7741.
    Vp8,
    /// VP9, RFC 9628.
    Vp9,
    /// H.264, RFC 6184 (packetization modes 0 and 1).
    H264,
    /// AV1, "RTP Payload Format For AV1" (AOM, v1.0.0).
    Av1,
}

/// What [`inspect`] learned from one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameInfo {
    /// The packet starts (or, for H.264, carries the parameter sets or IDR slice of) a keyframe.
    pub is_keyframe: bool,
    /// Temporal layer id, when the descriptor carries one (VP8 T bit, VP9 L bit).
    pub temporal_id: Option<u8>,
    /// Spatial layer id, when the descriptor carries one (VP9 L bit).
    pub spatial_id: Option<u8>,
    /// The packet begins a (layer) frame: VP8 S=1 with partition 0, VP9 B=1. Layer decisions
    /// change only here, so a frame is forwarded whole or not at all.
    pub begins_frame: bool,
    /// The packet ends a layer frame (VP9 E=1): where the marker goes when the layers above are
    /// not forwarded.
    pub ends_layer_frame: bool,
    /// A temporal switching-up point: VP8 Y=1 (the frame depends only on temporal layer 0),
    /// VP9 U=1 (frames of higher temporal layers after it do not depend on earlier ones).
    pub switch_up: bool,
    /// Where the picture id is, for rewriting (VP8 and VP9 with the I bit).
    pub picture_id: Option<PictureId>,
    /// Offset of the TL0PICIDX byte in the payload (VP8 L bit, VP9 non-flexible mode).
    pub tl0picidx_at: Option<u8>,
    /// How many spatial layers the stream announces (a VP9 scalability structure, N_S + 1).
    pub spatial_layers: Option<u8>,
    /// The frame is predicted from earlier pictures (VP9 P=1).
    pub inter_picture: bool,
    /// A VP9 layer frame above spatial layer 0 of an inter-predicted picture that does not
    /// depend on the layer below (P=1, D=0): the stream is k-SVC (L*T*_KEY), whose spatial
    /// layers join only at keyframes.
    pub independent_layer: bool,
}

/// A picture id in a VP8 or VP9 payload descriptor: its value, offset and width (7 or 15 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureId {
    /// The value.
    pub value: u16,
    /// Offset of its first byte in the payload.
    pub at: u8,
    /// 15 bits (M=1), else 7.
    pub long: bool,
}

impl PictureId {
    /// The modulus of the field (2^15 or 2^7).
    pub fn modulus(self) -> u16 {
        if self.long { 0x8000 } else { 0x80 }
    }

    /// Writes `value` (taken modulo the field's width) in place of this picture id in `payload`
    /// (the payload it was read from). Returns false, touching nothing, if it does not fit.
    pub fn write(self, payload: &mut [u8], value: u16) -> bool {
        let at = usize::from(self.at);
        if self.long {
            let Some(b) = payload.get_mut(at..at + 2) else { return false };
            let v = value & 0x7fff;
            b[0] = 0x80 | (v >> 8) as u8;
            b[1] = v as u8;
        } else {
            let Some(b) = payload.get_mut(at) else { return false };
            *b = (value & 0x7f) as u8;
        }
        true
    }
}

/// Inspects a decrypted RTP payload of `codec`.
pub fn inspect(codec: VideoCodec, payload: &[u8]) -> Result<FrameInfo, WireError> {
    match codec {
        VideoCodec::Vp8 => vp8(payload),
        VideoCodec::Vp9 => vp9(payload),
        VideoCodec::H264 => h264(payload),
        VideoCodec::Av1 => av1(payload),
    }
}

/// Shorthand for `inspect(..).is_ok_and(|f| f.is_keyframe)`: malformed payloads are not keyframes.
pub fn is_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    inspect(codec, payload).is_ok_and(|f| f.is_keyframe)
}

fn byte(p: &[u8], i: usize) -> Result<u8, WireError> {
    p.get(i).copied().ok_or(WireError::Truncated)
}

/// VP8 payload descriptor (RFC 7741 §4.2) and payload header (§4.3).
///
/// ```text
///       0 1 2 3 4 5 6 7
///      +-+-+-+-+-+-+-+-+
///      |X|R|N|S|R| PID | (REQUIRED)
///      +-+-+-+-+-+-+-+-+
/// X:   |I|L|T|K| RSV   | (OPTIONAL)
///      +-+-+-+-+-+-+-+-+
/// I:   |M| PictureID   | (OPTIONAL)
///      +-+-+-+-+-+-+-+-+
///      |   PictureID   | (present if M)
///      +-+-+-+-+-+-+-+-+
/// L:   |   TL0PICIDX   | (OPTIONAL)
///      +-+-+-+-+-+-+-+-+
/// T/K: |TID|Y| KEYIDX  | (OPTIONAL)
///      +-+-+-+-+-+-+-+-+
///      |Size0|H| VER |P| payload header, only at S=1 and PID=0; P=0 is a key frame
///      +-+-+-+-+-+-+-+-+
/// ```
fn vp8(p: &[u8]) -> Result<FrameInfo, WireError> {
    let d = byte(p, 0)?;
    let mut i = 1;
    let mut f = FrameInfo::default();
    if d & 0x80 != 0 {
        let x = byte(p, 1)?;
        i = 2;
        if x & 0x80 != 0 {
            let m = byte(p, i)? & 0x80 != 0;
            let value = if m { u16::from(byte(p, i)? & 0x7f) << 8 | u16::from(byte(p, i + 1)?) } else { u16::from(byte(p, i)?) };
            f.picture_id = Some(PictureId { value, at: i as u8, long: m });
            i += if m { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            byte(p, i)?;
            f.tl0picidx_at = Some(i as u8);
            i += 1;
        }
        if x & 0x30 != 0 {
            let tk = byte(p, i)?;
            if x & 0x20 != 0 {
                f.temporal_id = Some(tk >> 6);
                f.switch_up = tk & 0x20 != 0;
            }
            i += 1;
        }
    }
    let start_of_partition_0 = d & 0x10 != 0 && d & 0x07 == 0;
    // The payload header exists only at the start of the first partition; elsewhere a byte of
    // the descriptor's claimed length must still be present to make the packet well-formed.
    let h = byte(p, i)?;
    f.is_keyframe = start_of_partition_0 && h & 0x01 == 0;
    f.begins_frame = start_of_partition_0;
    Ok(f)
}

/// VP9 payload descriptor (RFC 9628 §4.2), both modes, with the scalability structure.
///
/// ```text
///       0 1 2 3 4 5 6 7
///      +-+-+-+-+-+-+-+-+
///      |I|P|L|F|B|E|V|Z| (REQUIRED)
///      +-+-+-+-+-+-+-+-+
/// I:   |M| PICTURE ID  | (RECOMMENDED)
///      +-+-+-+-+-+-+-+-+
/// M:   | EXTENDED PID  | (RECOMMENDED)
///      +-+-+-+-+-+-+-+-+
/// L:   | TID |U| SID |D| (Conditionally RECOMMENDED)
///      +-+-+-+-+-+-+-+-+
///      |   TL0PICIDX   | (non-flexible mode, F=0, only)
///      +-+-+-+-+-+-+-+-+
/// P,F: | P_DIFF      |N| (flexible mode, F=1 and P=1: up to 3 times, N: another follows)
///      +-+-+-+-+-+-+-+-+
/// V:   | N_S |Y|G|-|-|-| scalability structure: N_S+1 spatial layers,
///      |  WIDTH, HEIGHT  | Y: (N_S+1) × 4 bytes of resolutions,
///      |      N_G      | G: N_G pictures in the group of frames, each
///      |TID|U| R |-|-| | R P_DIFFs  one byte, then R bytes of P_DIFF
///      +-+-+-+-+-+-+-+-+
/// ```
///
/// A keyframe starts where B (beginning of frame) is set, P (inter-picture predicted) is clear,
/// and, when layer indices are present, the spatial layer is 0: upper spatial layers of a
/// keyframe are inter-layer predicted and cannot be decoded alone. The whole descriptor must be
/// present (a truncated P_DIFF list or scalability structure is an error).
fn vp9(p: &[u8]) -> Result<FrameInfo, WireError> {
    let d = byte(p, 0)?;
    let (has_pid, inter_picture, has_layers, flexible) = (d & 0x80 != 0, d & 0x40 != 0, d & 0x20 != 0, d & 0x10 != 0);
    let mut f = FrameInfo { begins_frame: d & 0x08 != 0, ends_layer_frame: d & 0x04 != 0, ..FrameInfo::default() };
    let mut i = 1;
    if has_pid {
        let m = byte(p, i)? & 0x80 != 0;
        let value = if m { u16::from(byte(p, i)? & 0x7f) << 8 | u16::from(byte(p, i + 1)?) } else { u16::from(byte(p, i)?) };
        f.picture_id = Some(PictureId { value, at: i as u8, long: m });
        i += if m { 2 } else { 1 };
    }
    let mut inter_layer = false;
    if has_layers {
        let l = byte(p, i)?;
        inter_layer = l & 0x01 != 0;
        f.temporal_id = Some(l >> 5);
        f.switch_up = l & 0x10 != 0;
        f.spatial_id = Some((l >> 1) & 0x07);
        i += 1;
        if !flexible {
            byte(p, i)?;
            f.tl0picidx_at = Some(i as u8);
            i += 1;
        }
    }
    if flexible && inter_picture {
        for _ in 0..3 {
            let n = byte(p, i)? & 0x01 != 0;
            i += 1;
            if !n {
                break;
            }
        }
    }
    if d & 0x02 != 0 {
        f.spatial_layers = Some((byte(p, i)? >> 5) + 1);
        i = vp9_scalability_structure(p, i)?;
    }
    if i > p.len() {
        return Err(WireError::Truncated);
    }
    f.is_keyframe = f.begins_frame && !inter_picture && f.spatial_id.unwrap_or(0) == 0;
    f.independent_layer = inter_picture && !inter_layer && f.spatial_id.unwrap_or(0) > 0;
    f.inter_picture = inter_picture;
    Ok(f)
}

/// Skips a VP9 scalability structure starting at `i`; returns the offset after it.
fn vp9_scalability_structure(p: &[u8], mut i: usize) -> Result<usize, WireError> {
    let v = byte(p, i)?;
    i += 1;
    let spatial_layers = usize::from(v >> 5) + 1;
    if v & 0x10 != 0 {
        i += 4 * spatial_layers;
        byte(p, i - 1)?;
    }
    if v & 0x08 != 0 {
        let groups = byte(p, i)?;
        i += 1;
        for _ in 0..groups {
            let r = usize::from((byte(p, i)? >> 2) & 0x03);
            i += 1 + r;
            if r > 0 {
                byte(p, i - 1)?;
            }
        }
    }
    Ok(i)
}

/// Writes TL0PICIDX `value` at `at` in `payload` (from [`FrameInfo::tl0picidx_at`]).
pub fn write_tl0picidx(payload: &mut [u8], at: u8, value: u8) -> bool {
    match payload.get_mut(usize::from(at)) {
        Some(b) => {
            *b = value;
            true
        }
        None => false,
    }
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

fn h264_key_nal(nal_type: u8) -> bool {
    nal_type == NAL_IDR || nal_type == NAL_SPS
}

/// H.264 NAL unit / aggregation / fragmentation headers (RFC 6184 §5.3, §5.7.1, §5.8).
///
/// ```text
/// NAL header:  |F|NRI|  Type   |        Type 1..=23 single NAL unit, 24 STAP-A, 28 FU-A
/// STAP-A:      |STAP-A hdr| NALU 1 size (16) | NALU 1 | NALU 2 size | NALU 2 | ...
/// FU-A:        |FU indicator|S|E|R|  Type   | FU payload ...
/// ```
///
/// IDR slices (5) and SPS (7) count as keyframe material: browsers send SPS/PPS in a STAP-A
/// right before the IDR, and either is a valid point to switch a subscriber.
fn h264(p: &[u8]) -> Result<FrameInfo, WireError> {
    let nal_type = byte(p, 0)? & 0x1F;
    let is_keyframe = match nal_type {
        NAL_STAP_A => {
            if p.len() < 2 {
                return Err(WireError::BadPayload);
            }
            let mut i = 1;
            let mut key = false;
            while i < p.len() {
                if i + 2 > p.len() {
                    return Err(WireError::BadPayload);
                }
                let size = usize::from(be16(p, i));
                i += 2;
                if size == 0 || i + size > p.len() {
                    return Err(WireError::BadPayload);
                }
                key |= h264_key_nal(p[i] & 0x1F);
                i += size;
            }
            key
        }
        NAL_FU_A => {
            let fu = byte(p, 1)?;
            fu & 0x80 != 0 && h264_key_nal(fu & 0x1F)
        }
        t => h264_key_nal(t),
    };
    // Without a dependency descriptor H.264 carries no layers: any packet but an FU-A middle
    // or end may begin a frame, which is all the layer choice needs to know.
    let begins_frame = nal_type != NAL_FU_A || p.get(1).is_some_and(|fu| fu & 0x80 != 0);
    Ok(FrameInfo { is_keyframe, begins_frame, ..FrameInfo::default() })
}

/// AV1 aggregation header (AV1 RTP spec §4.4).
///
/// ```text
///  0 1 2 3 4 5 6 7
/// +-+-+-+-+-+-+-+-+
/// |Z|Y| W |N|-|-|-|
/// +-+-+-+-+-+-+-+-+
/// ```
///
/// N is set on the first packet of a coded video sequence, which begins with a key frame.
fn av1(p: &[u8]) -> Result<FrameInfo, WireError> {
    let h = byte(p, 0)?;
    // Z=0: the first element is not the continuation of an OBU from the previous packet.
    Ok(FrameInfo { is_keyframe: h & 0x08 != 0, begins_frame: h & 0x80 == 0, ..FrameInfo::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(codec: VideoCodec, p: &[u8]) -> bool {
        inspect(codec, p).unwrap().is_keyframe
    }

    #[test]
    fn vp8_minimal() {
        // S=1, PID=0; payload header P=0 (key frame: 0x9d 0x01 0x2a start code follows).
        assert!(key(VideoCodec::Vp8, &[0x10, 0x50, 0x34, 0x01, 0x9d, 0x01, 0x2a]));
        // P=1: inter frame.
        assert!(!key(VideoCodec::Vp8, &[0x10, 0x51, 0x34, 0x01]));
        // S=0: continuation; first payload byte is not a payload header.
        assert!(!key(VideoCodec::Vp8, &[0x00, 0x50]));
        // PID=1 partition start.
        assert!(!key(VideoCodec::Vp8, &[0x11, 0x50]));
    }

    #[test]
    fn vp8_extended_fields() {
        // X=1; I L T K all set; M=1 (15-bit picture id); TID=2.
        let p = [0x90, 0xF0, 0x80 | 0x12, 0x34, 0x07, 0x80 | 0x05, 0x50];
        let f = inspect(VideoCodec::Vp8, &p).unwrap();
        assert!(f.is_keyframe && f.begins_frame);
        assert_eq!(f.temporal_id, Some(2));
        assert!(!f.switch_up);
        assert_eq!(f.picture_id, Some(PictureId { value: 0x1234, at: 2, long: true }));
        assert_eq!(f.tl0picidx_at, Some(4));
        // TID 1 with the layer-sync bit: a switching-up point.
        let f = inspect(VideoCodec::Vp8, &[0x90, 0xE0, 0x12, 0x07, 0x60, 0x50]).unwrap();
        assert_eq!((f.temporal_id, f.switch_up), (Some(1), true));
        assert_eq!(f.picture_id, Some(PictureId { value: 0x12, at: 2, long: false }));
        // Same with 7-bit picture id and only K (KEYIDX byte but no TID).
        let p = [0x90, 0x90, 0x12, 0x05, 0x50];
        let f = inspect(VideoCodec::Vp8, &p).unwrap();
        assert!(f.is_keyframe);
        assert_eq!(f.temporal_id, None);
        // Every truncation of the first packet is an error.
        let p = [0x90, 0xF0, 0x80 | 0x12, 0x34, 0x07, 0x80 | 0x05, 0x50];
        for n in 0..p.len() {
            assert!(inspect(VideoCodec::Vp8, &p[..n]).is_err(), "len {n}");
        }
    }

    #[test]
    fn vp9_descriptor() {
        // I=1 M=1, L=1, F=0 (TL0PICIDX), B=1, V=1, P=0: keyframe at SID 0, TID 0, with a
        // scalability structure of three spatial layers (resolutions) and one picture group entry.
        let ss = [0x58, 0x01, 0x40, 0x00, 0xB4, 0x02, 0x80, 0x01, 0x68, 0x05, 0x00, 0x02, 0xD0, 0x01, 0x04, 0x01];
        let mut p = vec![0xA8 | 0x02, 0x80, 0x01, 0x00, 0x07];
        p.extend_from_slice(&ss);
        p.push(0xAA);
        let f = inspect(VideoCodec::Vp9, &p).unwrap();
        assert!(f.is_keyframe && f.begins_frame && !f.ends_layer_frame);
        assert_eq!((f.temporal_id, f.spatial_id), (Some(0), Some(0)));
        assert_eq!(f.picture_id, Some(PictureId { value: 1, at: 1, long: true }));
        assert_eq!(f.tl0picidx_at, Some(4));
        assert_eq!(f.spatial_layers, Some(3));
        // Every truncation inside the scalability structure is an error.
        for n in 0..p.len() - 1 {
            assert!(inspect(VideoCodec::Vp9, &p[..n]).is_err(), "len {n}");
        }
        // Flexible mode, inter-picture predicted: two P_DIFFs (N=1 on the first), U=1, E=1.
        let p = [0xF4 | 0x08, 0x23, 0x20 | 0x10 | 0x02, 0x03, 0x02, 0xAA];
        let f = inspect(VideoCodec::Vp9, &p).unwrap();
        assert!(!f.is_keyframe && f.begins_frame && f.ends_layer_frame && f.switch_up);
        assert!(f.independent_layer, "P=1, D=0 at spatial layer 1: k-SVC");
        assert_eq!((f.temporal_id, f.spatial_id, f.tl0picidx_at), (Some(1), Some(1), None));
        assert_eq!(f.picture_id, Some(PictureId { value: 0x23, at: 1, long: false }));
        assert!(inspect(VideoCodec::Vp9, &p[..4]).is_err(), "the second P_DIFF is missing");
        // Same with SID=1: not a switch point.
        let p = [0xA8, 0x80, 0x01, 0x02, 0x00, 0xAA];
        let f = inspect(VideoCodec::Vp9, &p).unwrap();
        assert!(!f.is_keyframe);
        assert_eq!(f.spatial_id, Some(1));
        // TID=3 SID=2, P=1.
        let p = [0xE8, 0x05, 0x60 | 0x04, 0x00];
        let f = inspect(VideoCodec::Vp9, &p).unwrap();
        assert!(!f.is_keyframe);
        assert_eq!((f.temporal_id, f.spatial_id), (Some(3), Some(2)));
        // No layer info, B=1 P=0: keyframe.
        assert!(key(VideoCodec::Vp9, &[0x08, 0x00]));
        assert!(!key(VideoCodec::Vp9, &[0x00, 0x00]));
        // Flexible mode (F=1): no TL0PICIDX needed.
        assert!(key(VideoCodec::Vp9, &[0x38, 0x00]));
        let p = [0xA8, 0x80, 0x01, 0x00, 0x00];
        for n in 0..p.len() {
            assert!(inspect(VideoCodec::Vp9, &p[..n]).is_err(), "len {n}");
        }
    }

    #[test]
    fn h264_units() {
        assert!(key(VideoCodec::H264, &[0x65, 0x88]));
        assert!(key(VideoCodec::H264, &[0x67, 0x42]));
        assert!(!key(VideoCodec::H264, &[0x68, 0xce])); // PPS alone
        assert!(!key(VideoCodec::H264, &[0x41, 0x9a])); // non-IDR slice
        // STAP-A with SPS + PPS.
        let stap = [0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce];
        assert!(key(VideoCodec::H264, &stap));
        for n in 1..stap.len() {
            if n != 5 {
                assert!(inspect(VideoCodec::H264, &stap[..n]).is_err(), "len {n}");
            }
        }
        // Truncating exactly after the first aggregated unit is a complete STAP-A.
        assert!(key(VideoCodec::H264, &stap[..5]));
        // STAP-A with only PPS + SEI.
        assert!(!key(VideoCodec::H264, &[0x78, 0x00, 0x01, 0x68, 0x00, 0x01, 0x06]));
        // FU-A start of IDR, and its middle fragment.
        assert!(key(VideoCodec::H264, &[0x7c, 0x85, 0x88]));
        assert!(!key(VideoCodec::H264, &[0x7c, 0x05, 0x88]));
        assert!(!key(VideoCodec::H264, &[0x7c, 0x81, 0x88]));
        assert!(inspect(VideoCodec::H264, &[0x7c]).is_err());
        assert!(inspect(VideoCodec::H264, &[]).is_err());
    }

    #[test]
    fn av1_aggregation_header() {
        assert!(key(VideoCodec::Av1, &[0x18, 0x0a]));
        assert!(!key(VideoCodec::Av1, &[0x10, 0x0a]));
        assert!(!key(VideoCodec::Av1, &[0x80 | 0x10]));
        assert!(inspect(VideoCodec::Av1, &[]).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7741);
        let mut buf = [0u8; 24];
        for _ in 0..50_000 {
            let n = rng.random_range(0..buf.len());
            rng.fill(&mut buf[..n]);
            for c in [VideoCodec::Vp8, VideoCodec::Vp9, VideoCodec::H264, VideoCodec::Av1] {
                let _ = inspect(c, &buf[..n]);
            }
        }
    }
}
