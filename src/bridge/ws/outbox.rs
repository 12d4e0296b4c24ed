//! One client's outbound queue. A client that stops reading must never grow the daemon's
//! memory, so everything here is bounded: events wait in a queue of fixed capacity (when it
//! is full the oldest is dropped and counted), latest-value topics (`position`, `meters`)
//! keep one message per topic and session (a newer one replaces it), and the count of lost
//! events is handed to the writer, which tells the client.
//!
//! Not real-time: runs on tokio. The lock is held only to move a few values in or out.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::wire::{self, Topic};

/// A client's bounded outbound queue of pushes; the connection's writer drains it.
pub struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
    capacity: usize,
}

#[derive(Default)]
struct Pending {
    events: VecDeque<String>,
    latest: BTreeMap<(Topic, String), String>,
    dropped: u64,
    total_dropped: u64,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            pending: Mutex::new(Pending::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues an event push; when the queue is full the oldest event is dropped and counted.
    pub fn push_event(&self, text: String) {
        let mut pending = self.lock();
        if pending.events.len() >= self.capacity {
            pending.events.pop_front();
            pending.dropped += 1;
            pending.total_dropped += 1;
        }
        pending.events.push_back(text);
        drop(pending);
        self.ready.notify_one();
    }

    /// Counts `n` events lost before they reached this outbox (a lagging event receiver).
    pub fn count_lost(&self, n: u64) {
        let mut pending = self.lock();
        pending.dropped += n;
        pending.total_dropped += n;
        drop(pending);
        self.ready.notify_one();
    }

    /// Sets the newest value of a latest-value topic for `session`, replacing an unsent one.
    pub fn set_latest(&self, topic: Topic, session: &str, text: String) {
        let mut pending = self.lock();
        match pending.latest.get_mut(&(topic, session.to_string())) {
            Some(slot) => *slot = text,
            None => {
                pending.latest.insert((topic, session.to_string()), text);
            }
        }
        drop(pending);
        self.ready.notify_one();
    }

    /// Waits until something was queued since the last [`Outbox::take`].
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Takes everything queued, in sending order: the lost-events notice (if any events were
    /// lost since the last call), the events, then the latest values.
    pub fn take(&self) -> Vec<String> {
        let mut pending = self.lock();
        let mut out = Vec::with_capacity(pending.events.len() + pending.latest.len() + 1);
        if pending.dropped > 0 {
            out.push(wire::dropped_push(pending.dropped, pending.total_dropped));
            pending.dropped = 0;
        }
        out.extend(pending.events.drain(..));
        out.extend(std::mem::take(&mut pending.latest).into_values());
        out
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock leaves only strings behind: still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_and_reports_the_loss_once() {
        let outbox = Outbox::new(3);
        for i in 0..5 {
            outbox.push_event(format!("e{i}"));
        }
        let out = outbox.take();
        let notice: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(notice["droppedEvents"], 2);
        assert_eq!(notice["totalDroppedEvents"], 2);
        assert_eq!(&out[1..], ["e2", "e3", "e4"]);
        outbox.push_event("e5".into());
        assert_eq!(outbox.take(), ["e5"]);
        outbox.count_lost(4);
        let notice: serde_json::Value = serde_json::from_str(&outbox.take()[0]).unwrap();
        assert_eq!(notice["droppedEvents"], 4);
        assert_eq!(notice["totalDroppedEvents"], 6);
    }

    #[test]
    fn latest_values_coalesce_per_topic_and_session() {
        let outbox = Outbox::new(8);
        for i in 0..1000 {
            outbox.set_latest(Topic::Position, "a", format!("pa{i}"));
            outbox.set_latest(Topic::Meters, "a", format!("ma{i}"));
        }
        outbox.set_latest(Topic::Position, "b", "pb".into());
        let mut out = outbox.take();
        out.sort();
        assert_eq!(out, ["ma999", "pa999", "pb"]);
        assert!(outbox.take().is_empty());
    }
}
