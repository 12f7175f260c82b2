//! Sluice as the receiver of every publisher leg (the uplink half of the feedback loop): what it
//! tells a participant about the media the participant sends, so the participant's own
//! congestion controller can ramp (a browser stays at its 300 kbit/s start estimate without it).
//!
//! ```text
//!   every authenticated RTP packet of the leg
//!     ├─ RecvStats of its stream (RFC 3550 A.1/A.3/A.8: extended seq, loss, jitter)
//!     └─ TwccRecorder of the leg (transport-wide sequence number → arrival time)
//!   every SR of the participant ─ LSR + arrival time for DLSR
//!   handle_timeout (see forward::uplink for where the packets are built):
//!     every RR interval ── RR (one block per stream) + SDES CNAME, compound (RFC 3550 §6.1)
//!     every TWCC_INTERVAL ─ transport-cc feedback for what arrived since the last one
//! ```
//!
//! Everything here is per leg and lives on the worker that owns the leg, next to its receive
//! state; nothing crosses workers.

mod recv_stats;
mod remb;
mod twcc;

use core::time::Duration;

pub use recv_stats::RecvStats;
pub use remb::RembEstimate;
pub use twcc::{MAX_PER_FEEDBACK, RING as TWCC_RING, TwccRecorder};

use crate::table::FeedbackSpec;
use crate::time::Instant;

/// How often a WebRTC leg gets receiver reports: RFC 4585 §3.4 lets AVPF legs go below RFC
/// 3550's 5 s minimum, and browsers report every second.
pub const RR_INTERVAL_WEBRTC: Duration = Duration::from_secs(1);
/// How often a static-key leg gets receiver reports (RFC 3550 §6.2's minimum interval).
pub const RR_INTERVAL: Duration = Duration::from_secs(5);
/// How often transport-cc feedback is sent while packets arrive (libwebrtc sends it every
/// 50–250 ms; the draft leaves it to the receiver).
pub const TWCC_INTERVAL: Duration = Duration::from_millis(50);

/// One leg's uplink feedback state.
#[derive(Clone, Debug, Default)]
pub struct Uplink {
    /// Arrival times by transport-wide sequence number, when transport-cc was negotiated.
    pub twcc: Option<Box<TwccRecorder>>,
    /// The receive-side estimate sent as REMB, when only REMB was negotiated.
    pub remb: Option<RembEstimate>,
    /// When the next receiver report is due (set once the leg received media).
    pub next_rr: Option<Instant>,
    /// When the next transport-cc feedback is due (set when packets wait to be reported).
    pub next_twcc: Option<Instant>,
    /// When transport-cc feedback was last sent.
    pub last_twcc: Option<Instant>,
    /// Receiver reports sent.
    pub rr_sent: u64,
    /// Transport-cc feedback packets sent.
    pub twcc_sent: u64,
}

impl Uplink {
    /// The state for a leg with `spec`.
    pub fn new(spec: &FeedbackSpec) -> Self {
        let mut u = Self::default();
        u.respec(spec);
        u
    }

    /// Follows a changed spec: the recorder exists exactly while transport-cc is negotiated.
    pub fn respec(&mut self, spec: &FeedbackSpec) {
        match (spec.twcc_ext.is_some(), self.twcc.is_some()) {
            (true, false) => self.twcc = Some(Box::default()),
            (false, true) => {
                self.twcc = None;
                self.next_twcc = None;
            }
            _ => {}
        }
        // REMB only where transport-cc is not negotiated (a browser prefers transport-cc).
        let remb = spec.remb && spec.twcc_ext.is_none();
        if remb != self.remb.is_some() {
            self.remb = remb.then(RembEstimate::default);
        }
    }

    /// The earliest deadline of the leg.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.next_rr, self.next_twcc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
