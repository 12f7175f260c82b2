//! The numbering of simulated participants: every id a participant has follows from its [`Seat`]
//! (its meeting and its index in it), so a test that knows a participant knows its leg, port,
//! address, SSRCs and tracks, and a subscriber's out-SSRC for any track.
//!
//! ```text
//!   global       = meeting * MEETING_SEATS + index
//!   leg          = global + 1
//!   port         = base + meeting * 64 + index          (base: the caller's range)
//!   address      = 10.0.0.0 + 0x01_0000 + meeting * 1024 + index, port 40000 + index
//!   audio SSRC   = 0x0100_0000 + global * 0x100
//!   layer l SSRC = audio SSRC + 0x10 + 2 l,  its RTX SSRC + 1
//!   audio track  = 2 global + 1,  video track = 2 global + 2 (video tracks are even)
//!   out-SSRC     = 0x4000_0000 + subscriber index * 0x10000 + (track - 2 meeting * MEETING_SEATS) * 4,
//!                  its RTX SSRC + 1
//! ```
//!
//! Meeting 0 is the core's deterministic simulation (`dataplane/core/tests/sim.rs`): its seeds are
//! recorded against exactly these values. Publisher SSRCs are unique across meetings; out-SSRCs
//! only per subscriber leg, which is all the core and the control plane ask (an RTP session's SSRC
//! space is the subscriber's). Distinct for meetings below 16 000 of up to [`MEETING_SEATS`]
//! participants; ports are distinct for meetings of up to 64.

use std::net::{Ipv4Addr, SocketAddr};

use sluice_core::ids::{LegId, Ssrc, TrackId};

/// Participants one meeting can number (the stride of [`Seat::global`]).
pub const MEETING_SEATS: u32 = 1000;

/// Where a simulated participant sits: its meeting and its index in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seat {
    /// The meeting (0 for a single-meeting simulation).
    pub meeting: u32,
    /// The participant's index in its meeting, below [`MEETING_SEATS`].
    pub index: u32,
}

impl Seat {
    /// Participant `index` of meeting `meeting`.
    pub const fn new(meeting: u32, index: u32) -> Self {
        Self { meeting, index }
    }

    /// The participant's number across all meetings.
    pub const fn global(self) -> u32 {
        self.meeting * MEETING_SEATS + self.index
    }

    /// Its leg.
    pub const fn leg(self) -> LegId {
        LegId(self.global() + 1)
    }

    /// The SFU port of its leg, in a range starting at `base`.
    pub const fn port(self, base: u16) -> u16 {
        base + (self.meeting * 64 + self.index) as u16
    }

    /// Its own (simulated) address.
    pub fn addr(self) -> SocketAddr {
        let host = (0x01_0000 + self.meeting * 1024 + self.index) & 0x00ff_ffff;
        SocketAddr::from((Ipv4Addr::from(0x0a00_0000 | host), 40_000 + self.index as u16))
    }

    /// The SSRC of its audio.
    pub const fn audio_ssrc(self) -> Ssrc {
        Ssrc(0x0100_0000 + self.global() * 0x100)
    }

    /// The SSRC of simulcast layer `layer` (0 lowest) of its camera.
    pub const fn layer_ssrc(self, layer: usize) -> Ssrc {
        Ssrc(self.audio_ssrc().0 + 0x10 + layer as u32 * 2)
    }

    /// The RTX SSRC of simulcast layer `layer`.
    pub const fn layer_rtx_ssrc(self, layer: usize) -> Ssrc {
        Ssrc(self.layer_ssrc(layer).0 + 1)
    }

    /// Its audio track.
    pub const fn audio_track(self) -> TrackId {
        TrackId(self.global() * 2 + 1)
    }

    /// Its camera track (three simulcast layers).
    pub const fn video_track(self) -> TrackId {
        TrackId(self.global() * 2 + 2)
    }

    /// The SSRC this participant, as a subscriber, receives `track` with; `track` is a track of
    /// its own meeting.
    pub const fn out_ssrc(self, track: TrackId) -> Ssrc {
        let local = track.0.wrapping_sub(self.meeting * MEETING_SEATS * 2);
        Ssrc(0x4000_0000u32.wrapping_add(self.index * 0x10000).wrapping_add(local.wrapping_mul(4)))
    }

    /// The SSRC this participant receives retransmissions of `track` with.
    pub const fn out_rtx_ssrc(self, track: TrackId) -> Ssrc {
        Ssrc(self.out_ssrc(track).0.wrapping_add(1))
    }
}

/// Whether `track` is a camera track ([`Seat::video_track`]) rather than audio.
pub const fn is_video(track: TrackId) -> bool {
    track.0.is_multiple_of(2)
}

/// The SSRC the SFU sends its own RTCP on leg `leg` with.
pub const fn feedback_ssrc(leg: LegId) -> Ssrc {
    Ssrc(0xf000_0000 + leg.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meeting_zero_is_the_core_simulation_s_numbering() {
        // The values dataplane/core/tests/sim.rs was written (and its seeds recorded) against.
        let s = Seat::new(0, 3);
        assert_eq!(s.leg(), LegId(4));
        assert_eq!(s.port(30_000), 30_003);
        assert_eq!(s.addr(), SocketAddr::from((Ipv4Addr::new(10, 1, 0, 3), 40_003)));
        assert_eq!(s.audio_ssrc(), Ssrc(0x0100_0300));
        assert_eq!((s.layer_ssrc(2), s.layer_rtx_ssrc(2)), (Ssrc(0x0100_0314), Ssrc(0x0100_0315)));
        assert_eq!((s.audio_track(), s.video_track()), (TrackId(7), TrackId(8)));
        assert_eq!(s.out_ssrc(TrackId(8)), Ssrc(0x4003_0020));
    }

    #[test]
    fn ids_are_distinct_where_the_core_needs_them() {
        let seats: Vec<Seat> = (0..3).flat_map(|m| (0..20).map(move |i| Seat::new(m * 7, i))).collect();
        let mut ssrcs: Vec<u32> =
            seats.iter().flat_map(|s| [s.audio_ssrc().0].into_iter().chain((0..3).flat_map(|l| [s.layer_ssrc(l).0, s.layer_rtx_ssrc(l).0]))).collect();
        let n = ssrcs.len();
        ssrcs.sort_unstable();
        ssrcs.dedup();
        assert_eq!(ssrcs.len(), n, "publisher SSRCs are unique across meetings");
        let mut legs: Vec<LegId> = seats.iter().map(|s| s.leg()).collect();
        legs.sort_unstable();
        legs.dedup();
        assert_eq!(legs.len(), seats.len());
        let mut ports: Vec<u16> = seats.iter().map(|s| s.port(20_000)).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), seats.len());
        for sub in &seats {
            let mut outs: Vec<u32> = seats
                .iter()
                .filter(|p| p.meeting == sub.meeting && p != &sub)
                .flat_map(|p| [sub.out_ssrc(p.audio_track()).0, sub.out_ssrc(p.video_track()).0, sub.out_rtx_ssrc(p.video_track()).0])
                .collect();
            let n = outs.len();
            outs.sort_unstable();
            outs.dedup();
            assert_eq!(outs.len(), n, "a subscriber's out-SSRCs are unique");
            assert!(outs.iter().all(|o| !ssrcs.contains(o)), "out-SSRCs never look like a publisher's");
        }
        assert!(seats.iter().all(|s| !is_video(s.audio_track()) && is_video(s.video_track())));
    }
}
