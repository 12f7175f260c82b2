//! The checkpoint's file format, pure (no I/O) so the dataplane, tools and the fuzzer share it:
//! one header line, then the body as JSON.
//!
//! ```text
//!   sluice-checkpoint 1 fnv64=<16 hex digits of the body's FNV-1a> len=<body bytes>\n
//!   {"taken_ms":<ms since the Unix epoch>,"checkpoint":{…}}
//! ```
//!
//! [`decode`] loads a file only if its header, length and checksum all hold and the body parses:
//! a flipped byte or a torn write is refused, never loaded as other state (the dataplane then
//! starts without it). The writing, atomic renames and set-aside of damaged files are the
//! dataplane's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::checkpoint::Checkpoint;
use crate::fingerprint::fnv64;

const MAGIC: &str = "sluice-checkpoint ";
const VERSION: u32 = 1;

/// A checkpoint read at start, with when it was taken.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Its content.
    pub checkpoint: Checkpoint,
    /// When it was written.
    pub taken: SystemTime,
}

impl Loaded {
    /// Time since it was taken (zero if the clock went back).
    pub fn age(&self) -> Duration {
        SystemTime::now().duration_since(self.taken).unwrap_or_default()
    }
}

/// The file's body.
#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    /// When it was taken (ms since the Unix epoch).
    taken_ms: u64,
    checkpoint: Checkpoint,
}

/// The body as written: [`Body`]'s fields, the checkpoint borrowed (a node with thousands of
/// legs would otherwise copy its whole checkpoint once a second only to serialize it).
#[derive(serde::Serialize)]
struct BodyRef<'a> {
    taken_ms: u64,
    checkpoint: &'a Checkpoint,
}

/// Encodes `ck`, taken at `taken`, as the file's bytes.
pub fn encode(ck: &Checkpoint, taken: SystemTime) -> Vec<u8> {
    let taken_ms = taken.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let body = serde_json::to_vec(&BodyRef { taken_ms, checkpoint: ck }).expect("a checkpoint serializes");
    let header = format!("{MAGIC}{VERSION} fnv64={:016x} len={}\n", fnv64(&body), body.len());
    let mut out = Vec::with_capacity(header.len() + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// A digest of `ck`'s content (not of when it was taken): what a writer keeps to tell whether
/// the state changed since it last wrote, instead of a copy of it.
pub fn digest(ck: &Checkpoint) -> u64 {
    fnv64(&serde_json::to_vec(ck).expect("a checkpoint serializes"))
}

/// Decodes and checks the file's bytes.
pub fn decode(bytes: &[u8]) -> Result<Loaded, String> {
    let nl = bytes.iter().position(|&b| b == b'\n').ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "the header is not text")?;
    let rest = header.strip_prefix(MAGIC).ok_or("not a checkpoint (bad magic)")?;
    let mut fields = rest.split(' ');
    let version: u32 = fields.next().and_then(|v| v.parse().ok()).ok_or("no version")?;
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    let mut field = |name: &str| -> Result<&str, String> { fields.next().and_then(|f| f.strip_prefix(name)).ok_or_else(|| format!("no {name} field")) };
    let sum = u64::from_str_radix(field("fnv64=")?, 16).map_err(|_| "bad checksum field")?;
    let len: usize = field("len=")?.parse().map_err(|_| "bad length field")?;
    if fields.next().is_some() {
        return Err("trailing header fields".into());
    }
    let body = &bytes[nl + 1..];
    if body.len() != len {
        return Err(format!("body is {} bytes, the header says {len}", body.len()));
    }
    if fnv64(body) != sum {
        return Err("checksum mismatch".into());
    }
    let Body { taken_ms, checkpoint } = serde_json::from_slice(body).map_err(|e| format!("body does not parse: {e}"))?;
    Ok(Loaded { checkpoint, taken: UNIX_EPOCH + Duration::from_millis(taken_ms) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{LegId, Ssrc};
    use crate::table::KeyDigest;
    use crate::table::checkpoint::LegCheckpoint;

    /// A checkpoint with one leg, for the file format's tests.
    pub(crate) fn sample() -> Checkpoint {
        Checkpoint {
            legs: vec![LegCheckpoint {
                leg: LegId(7),
                keys: KeyDigest([3; 16]),
                remote: Some("10.0.0.7:5000".parse().unwrap()),
                ingress: vec![(Ssrc(0x1111), (1 << 16) + 12)],
                rtcp_recv: vec![(Ssrc(0x1111), 40)],
                feedback_srtcp: 9,
            }],
            streams: Vec::new(),
            webrtc: vec![LegId(9)],
        }
    }

    #[test]
    fn a_checkpoint_round_trips_and_any_damage_is_caught() {
        let taken = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let bytes = encode(&sample(), taken);
        let back = decode(&bytes).unwrap();
        assert_eq!((back.checkpoint, back.taken), (sample(), taken));
        // Every single flipped byte is refused, never loaded as something else.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode(&b).is_err(), "byte {i} flipped and still loaded");
        }
        // A torn write (any prefix) too.
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "a {n}-byte prefix loaded");
        }
    }

    #[test]
    fn the_digest_follows_the_content_not_the_time() {
        let a = sample();
        assert_eq!(digest(&a), digest(&a.clone()));
        let mut b = sample();
        b.legs[0].feedback_srtcp += 1;
        assert_ne!(digest(&a), digest(&b));
        let mut c = sample();
        c.webrtc.clear();
        assert_ne!(digest(&a), digest(&c));
    }
}
