//! The service manager's side of both daemons: systemd's readiness and watchdog notifications
//! (`Type=notify`, `WatchdogSec=`), through `$NOTIFY_SOCKET`. Outside systemd (no
//! `$NOTIFY_SOCKET`) every call is a no-op, so the daemons run the same by hand.
//!
//! A daemon says [`ready`] once it serves (the dataplane: every worker runs and the control
//! endpoint listens; the control plane: gRPC listens), then calls [`Watchdog::tick`] from its
//! supervision loop with the result of its own liveness check: the keep-alive is sent only while
//! the check passes, so a stalled worker stops the pings and systemd restarts the unit after
//! `WatchdogSec`.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Tells the service manager the daemon is ready, with a one-line status.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the daemon is stopping (it drains; the stop timeout applies).
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Updates the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "service manager notification failed");
    }
}

/// The watchdog keep-alive, when the service manager asked for one (`WatchdogSec=` sets
/// `$WATCHDOG_USEC` for the main process).
#[derive(Debug)]
pub struct Watchdog {
    every: Duration,
    last: Option<Instant>,
    failing: bool,
}

impl Watchdog {
    /// The watchdog the environment asks for, pinging at half its timeout; `None` without one.
    pub fn from_env() -> Option<Self> {
        let mut usec = 0;
        if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
            return None;
        }
        Some(Self { every: Duration::from_micros(usec / 2), last: None, failing: false })
    }

    /// How often [`Watchdog::tick`] should be called at least.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Called from the supervision loop with the liveness check's verdict (`Err` names what is
    /// stuck): pings when due and healthy; while unhealthy it does not ping (systemd then
    /// restarts the unit) and logs the reason once per failure.
    pub fn tick(&mut self, health: Result<(), String>) {
        match health {
            Ok(()) => {
                if self.failing {
                    tracing::info!("liveness check passes again: watchdog keep-alives resume");
                    self.failing = false;
                }
                if self.last.is_none_or(|t| t.elapsed() >= self.every) {
                    notify(&[NotifyState::Watchdog]);
                    self.last = Some(Instant::now());
                }
            }
            Err(why) => {
                if !self.failing {
                    tracing::error!(reason = %why, "liveness check failed: no watchdog keep-alive until it passes");
                    status(&format!("unhealthy: {why}"));
                    self.failing = true;
                }
            }
        }
    }
}
