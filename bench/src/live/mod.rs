//! The whole system on loopback: the real `sluice-dataplane` and `sluice-controlplane`
//! processes, meetings programmed through the control plane's gRPC Routes API, and simulated
//! participants sending real-time SRTP over real UDP sockets and verifying what comes back.
//!
//! ```text
//!   participants (UDP, 127.0.0.1) ──SRTP──▶ sluice-dataplane (2 workers) ──SRTP──▶ participants
//!                                                 ▲ Unix socket (table deltas)
//!   this process ──gRPC (Routes.Apply, Node.GetStatus)──▶ sluice-controlplane
//! ```
//!
//! The daemons are children of this process, started from the directory of the current
//! executable, each in its own process group (so a terminal's Ctrl-C reaches only us) and with a
//! parent-death signal; [`Children`] stops exactly those PIDs (SIGTERM, then SIGKILL) on every way
//! out: normal end, error, SIGINT/SIGTERM.

use sluice_core::srtp::Profile;

mod daemons;
mod demo;
mod grpc;
mod metrics;
mod program;

pub use daemons::Children;
pub(crate) use daemons::{Scratch, start_system, tail};
pub use demo::{Summary, run};
pub(crate) use grpc::Grpc;
pub use grpc::{changes, leg_name, subscription, track_name};
pub(crate) use metrics::{metric, metrics_body, per_worker, scrape};
pub use program::{ProgramSpeed, program_speed};

/// What the live demo runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Meetings (one control-plane session each).
    pub meetings: u32,
    /// Participants per meeting.
    pub size: u32,
    /// Seconds of media.
    pub seconds: u64,
    /// SRTP profile of every leg.
    pub profile: Profile,
    /// Others each participant watches at the top simulcast layer.
    pub hd_views: u32,
    /// Dataplane worker threads.
    pub workers: u32,
    /// Leg ports, inclusive (below the ephemeral range, so no participant socket takes one).
    pub port_range: (u16, u16),
    /// More `[dataplane]` settings, TOML lines (e.g. `backend = "uring"`).
    pub dataplane_extra: String,
    /// More `[controlplane]` settings, TOML lines (e.g. `session_affinity_legs = 1`).
    pub controlplane_extra: String,
}
