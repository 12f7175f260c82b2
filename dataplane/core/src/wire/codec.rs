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
    let mut temporal_id = None;
    if d & 0x80 != 0 {
        let x = byte(p, 1)?;
        i = 2;
        if x & 0x80 != 0 {
            let m = byte(p, i)? & 0x80 != 0;
            i += if m { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            let tk = byte(p, i)?;
            if x & 0x20 != 0 {
                temporal_id = Some(tk >> 6);
            }
            i += 1;
        }
    }
    let start_of_partition_0 = d & 0x10 != 0 && d & 0x07 == 0;
    // The payload header exists only at the start of the first partition; elsewhere a byte of
    // the descriptor's claimed length must still be present to make the packet well-formed.
    let h = byte(p, i)?;
    let is_keyframe = start_of_partition_0 && h & 0x01 == 0;
    Ok(FrameInfo { is_keyframe, temporal_id, spatial_id: None })
}

/// VP9 payload descriptor (RFC 9628 §4.2).
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
/// ```
///
/// A keyframe starts where B (beginning of frame) is set, P (inter-picture predicted) is clear,
/// and, when layer indices are present, the spatial layer is 0: upper spatial layers of a
/// keyframe are inter-layer predicted and cannot be decoded alone.
fn vp9(p: &[u8]) -> Result<FrameInfo, WireError> {
    let d = byte(p, 0)?;
    let mut i = 1;
    if d & 0x80 != 0 {
        let m = byte(p, i)? & 0x80 != 0;
        i += if m { 2 } else { 1 };
    }
    let (mut temporal_id, mut spatial_id) = (None, None);
    if d & 0x20 != 0 {
        let l = byte(p, i)?;
        temporal_id = Some(l >> 5);
        spatial_id = Some((l >> 1) & 0x07);
        if d & 0x10 == 0 {
            byte(p, i + 1)?;
        }
    } else if d & 0x80 != 0 {
        // Make sure a truncated extended picture id is reported.
        byte(p, i - 1)?;
    }
    let is_keyframe = d & 0x08 != 0 && d & 0x40 == 0 && spatial_id.unwrap_or(0) == 0;
    Ok(FrameInfo { is_keyframe, temporal_id, spatial_id })
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
    Ok(FrameInfo { is_keyframe, temporal_id: None, spatial_id: None })
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
    Ok(FrameInfo { is_keyframe: h & 0x08 != 0, temporal_id: None, spatial_id: None })
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
        assert!(f.is_keyframe);
        assert_eq!(f.temporal_id, Some(2));
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
        // I=1 M=1, L=1, F=0 (TL0PICIDX), B=1, P=0: keyframe at SID 0, TID 0.
        let p = [0xA8 | 0x02, 0x80, 0x01, 0x00, 0x00, 0xAA];
        let f = inspect(VideoCodec::Vp9, &p).unwrap();
        assert!(f.is_keyframe);
        assert_eq!((f.temporal_id, f.spatial_id), (Some(0), Some(0)));
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
        let p = [0xA8 | 0x02, 0x80, 0x01, 0x00, 0x00];
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
