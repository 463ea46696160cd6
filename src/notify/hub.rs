//! The event hub of one process: reads the events every process writes to the outbox
//! and hands them to this process's WebSocket clients.
//!
//! PostgreSQL wakes it with `NOTIFY haven_events` from the committing transaction;
//! polling (every 250 ms) is the guarantee, and the only way on SQLite. A transaction
//! that took its `seq` earlier can commit after a later one: the poll looks back over
//! the last seconds and skips what it already sent.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, Notify};

use super::Event;
use crate::store::Store;

const POLL: Duration = Duration::from_millis(250);
/// How far back (in time) the poll looks for late commits.
const LATE_COMMIT_WINDOW: chrono::Duration = chrono::Duration::seconds(5);

/// Fans events out to subscribers. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<Event>>,
    wake: Arc<Notify>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(4096);
        EventHub {
            sender,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }

    /// Reads new events until `shutdown`, handing each to the subscribers once.
    pub async fn run(
        self,
        store: Arc<dyn Store>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let listener = tokio::spawn(listen(store.clone(), self.wake.clone()));
        let mut high = loop {
            match store.latest_event_seq().await {
                Ok(seq) => break seq,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the event position failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        // Positions sent recently, to skip them when the look-back reads them again.
        let mut sent: BTreeSet<i64> = BTreeSet::new();
        loop {
            let since = crate::domain::now() - LATE_COMMIT_WINDOW;
            match store.events_after(high, since, 1000).await {
                Ok(events) => {
                    for event in events {
                        if event.seq <= high - 256 || !sent.insert(event.seq) {
                            continue;
                        }
                        high = high.max(event.seq);
                        // No subscriber is not an error: nobody is watching.
                        let _ = self.sender.send(Arc::new(event));
                    }
                    let floor = high - 256;
                    sent = sent.split_off(&floor);
                }
                Err(e) => tracing::debug!(error = %e, "reading events failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
        listener.abort();
    }
}

/// Wakes the hub on `NOTIFY haven_events` (PostgreSQL); returns at once on SQLite.
async fn listen(store: Arc<dyn Store>, wake: Arc<Notify>) {
    let on_event = || wake.notify_one();
    loop {
        match store.watch_events(&on_event).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "event notifications interrupted; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}
