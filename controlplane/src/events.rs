//! Dataplane events on the Watch stream: a thread subscribes on the dataplane's control endpoint
//! (its own connection, beside the link that programs tables), names each event's legs and tracks
//! by the session they belong to, and publishes it to watchers. The same subscription streams the
//! dataplane's counters every second, from which the node's packet rates come, and each leg's
//! traffic counters (only the legs whose counters moved since the stream's previous report).
//!
//! Events of legs or tracks no session knows (removed since) are dropped. If the dataplane goes
//! away the thread reconnects; events in between are lost, which watchers learn from the
//! `DataplaneResynced` event the link publishes when it comes back.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_api::{Client, KEEPALIVE, Response};

use crate::controller::Shared;

/// How often the dataplane streams its counters.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the thread that follows the dataplane's event stream at `socket`.
pub fn spawn(engine: Shared, socket: PathBuf) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("dataplane-events".into()).spawn(move || {
        let mut connected = false;
        loop {
            match follow(&engine, &socket, &mut connected) {
                Ok(()) => {}
                Err(e) if connected => {
                    tracing::warn!(error = %e, "dataplane event stream lost; reconnecting");
                    connected = false;
                }
                Err(e) => tracing::debug!(error = %e, "dataplane event stream not available yet"),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
}

fn follow(engine: &Shared, socket: &std::path::Path, connected: &mut bool) -> std::io::Result<()> {
    let mut client = Client::connect(socket)?;
    client.set_timeout(Some(KEEPALIVE * 3))?;
    client.subscribe(STATS_INTERVAL.as_millis() as u32)?;
    // A new stream's first report names every leg with traffic; later ones, those that moved.
    engine.engine().dataplane_stats_restarted();
    *connected = true;
    tracing::info!(socket = %socket.display(), "following dataplane events");
    loop {
        match client.receive()? {
            Response::Events(events) if !events.is_empty() => engine.engine().dataplane_events(&events),
            Response::Stats(stats) => engine.engine().dataplane_stats(&stats),
            _ => {}
        }
    }
}
