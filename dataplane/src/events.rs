//! Events from the workers to whoever subscribed on the control endpoint (the control plane's
//! Watch stream): legs active/idle, streams started/stopped, layer switches, keyframe requests,
//! receiver-report statistics, learned remotes and SSRCs.
//!
//! Workers push each [`Event`] into one bounded channel with `try_send` and count what does not
//! fit: the packet path never blocks on a slow subscriber. A pump thread drains that channel in
//! batches and hands every batch to each subscriber's own bounded queue; a subscriber that falls
//! behind loses batches (counted), never slows the others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use sluice_core::forward::Event;

/// Events the workers' channel holds before workers start dropping (and counting) them.
pub const WORKER_QUEUE: usize = 16 * 1024;
/// Batches a subscriber's queue holds before it starts losing them.
pub const SUBSCRIBER_QUEUE: usize = 256;
/// Largest batch the pump hands on at once.
pub const MAX_BATCH: usize = 1024;
/// Events kept while nobody is subscribed, for the next subscriber: a restarted dataplane
/// applies the control plane's resync (and reports what the restart broke) around the time the
/// control plane's event stream reconnects, and those events must not fall in the gap.
pub const BACKLOG: usize = 4096;
/// The oldest backlog event still handed on.
pub const BACKLOG_AGE: Duration = Duration::from_secs(30);

/// A batch of events, shared by every subscriber.
pub type Batch = Arc<[Event]>;

/// The workers' side: cloned into every worker.
pub fn channel() -> (Sender<Event>, Receiver<Event>) {
    crossbeam_channel::bounded(WORKER_QUEUE)
}

/// The subscribers, and what was lost on the way to them.
#[derive(Debug, Default)]
pub struct EventHub {
    subscribers: Mutex<Vec<Sender<Batch>>>,
    delivered: AtomicU64,
    lost: AtomicU64,
}

impl EventHub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A new subscription: batches of every event from now on.
    pub fn subscribe(&self) -> Receiver<Batch> {
        let (tx, rx) = crossbeam_channel::bounded(SUBSCRIBER_QUEUE);
        self.lock().push(tx);
        rx
    }

    /// Live subscriptions.
    pub fn subscribers(&self) -> usize {
        self.lock().len()
    }

    /// Batches handed to subscribers.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Batches a full subscriber queue lost.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sender<Batch>>> {
        self.subscribers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `batch` to every subscriber, forgetting those that went away.
    pub fn publish(&self, batch: &Batch) {
        self.lock().retain(|s| match s.try_send(batch.clone()) {
            Ok(()) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// Starts the pump: drains the workers' channel into batches until every worker's sender is
    /// gone. Events while nobody is subscribed wait in a backlog (at most [`BACKLOG`], none older
    /// than [`BACKLOG_AGE`]) for the next subscriber.
    pub fn spawn_pump(self: &Arc<Self>, from_workers: Receiver<Event>) -> std::io::Result<JoinHandle<()>> {
        let hub = self.clone();
        std::thread::Builder::new().name("events".into()).spawn(move || {
            let mut backlog: std::collections::VecDeque<(std::time::Instant, Event)> = std::collections::VecDeque::new();
            loop {
                let first = match from_workers.recv_timeout(Duration::from_millis(200)) {
                    Ok(e) => Some(e),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                let mut batch = Vec::with_capacity(64);
                batch.extend(first);
                batch.extend(from_workers.try_iter().take(MAX_BATCH - 1));
                if hub.subscribers() == 0 {
                    let now = std::time::Instant::now();
                    for e in batch {
                        if backlog.len() == BACKLOG {
                            backlog.pop_front();
                        }
                        backlog.push_back((now, e));
                    }
                    continue;
                }
                if !backlog.is_empty() {
                    let kept: Vec<Event> = backlog.drain(..).filter(|(at, _)| at.elapsed() <= BACKLOG_AGE).map(|(_, e)| e).collect();
                    for chunk in kept.chunks(MAX_BATCH) {
                        hub.publish(&Batch::from(chunk));
                    }
                }
                if !batch.is_empty() {
                    hub.publish(&Batch::from(batch));
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::ids::LegId;

    use super::*;

    #[test]
    fn events_before_anyone_subscribed_reach_the_first_subscriber() {
        let hub = EventHub::new();
        let (tx, rx) = channel();
        let pump = hub.spawn_pump(rx).unwrap();
        for i in 0..3 {
            tx.send(Event::LegIdle { leg: LegId(i) }).unwrap();
        }
        // The pump has taken them in while nobody listened.
        std::thread::sleep(Duration::from_millis(300));
        let sub = hub.subscribe();
        let got: Vec<Event> = sub.recv_timeout(Duration::from_secs(2)).unwrap().to_vec();
        assert_eq!(got, (0..3).map(|i| Event::LegIdle { leg: LegId(i) }).collect::<Vec<_>>());
        tx.send(Event::LegIdle { leg: LegId(9) }).unwrap();
        assert_eq!(sub.recv_timeout(Duration::from_secs(2)).unwrap().to_vec(), vec![Event::LegIdle { leg: LegId(9) }], "then live ones");
        drop(tx);
        pump.join().unwrap();
    }

    #[test]
    fn every_subscriber_gets_every_event_and_a_slow_one_loses_only_its_own() {
        let hub = EventHub::new();
        let (tx, rx) = channel();
        let pump = hub.spawn_pump(rx).unwrap();
        let fast = hub.subscribe();
        let slow = hub.subscribe();
        let gone = hub.subscribe();
        drop(gone);
        let total = 50_000u32;
        let mut got = Vec::new();
        for i in 0..total {
            // The workers' queue is bounded: a worker would count and drop; the test waits.
            while tx.try_send(Event::LegIdle { leg: LegId(i) }).is_err() {
                std::thread::yield_now();
            }
            // Each batch holds at least one event: draining after every send keeps the fast
            // subscriber's queue far from full.
            got.extend(fast.try_iter().flat_map(|b| b.to_vec()));
        }
        drop(tx);
        pump.join().unwrap();
        got.extend(fast.try_iter().flat_map(|b| b.to_vec()));
        let want: Vec<_> = (0..total).map(|i| Event::LegIdle { leg: LegId(i) }).collect();
        assert_eq!(got, want, "the fast subscriber got everything, in order");
        assert_eq!(hub.subscribers(), 2, "the dropped receiver was forgotten");
        // The slow subscriber never read: it lost whole batches once its queue filled, but what
        // it kept is in order, with nothing duplicated, and what it missed is counted as lost.
        let slow_got: Vec<u32> = slow
            .try_iter()
            .flat_map(|b| b.to_vec())
            .map(|e| match e {
                Event::LegIdle { leg } => leg.0,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(!slow_got.is_empty() && slow_got.windows(2).all(|w| w[0] < w[1]), "out of order or duplicated");
        if slow_got.len() < total as usize {
            assert!(hub.lost() > 0, "the batches it missed are counted as lost");
        }
    }
}
