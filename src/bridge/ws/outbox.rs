//! One client's outbound queue. A client that stops reading must never grow the daemon's
//! memory, so everything here is bounded: events wait in a queue of fixed capacity (when it
//! is full the oldest is dropped and counted), latest-value topics (`position`, `meters`)
//! keep one message per topic and session (a newer one replaces it), and the count of lost
//! events is handed to the writer, which tells the client.
//!
//! Latest values live in slots, one per topic and session, that outlast a [`Outbox::take`]:
//! a steady push (every tick of a rolling session) refills its slot without allocating a key.
//! A slot that was not refilled between two takes is dropped, so the slots are bounded by
//! what the client currently receives.
//!
//! Not real-time: runs on tokio. The lock is held only to move a few values in or out.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::extract::ws::Utf8Bytes;
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
    events: VecDeque<Utf8Bytes>,
    latest: Vec<Latest>,
    dropped: u64,
    total_dropped: u64,
}

/// The newest unsent value of one latest-value topic of one session.
struct Latest {
    topic: Topic,
    session: String,
    /// `None` once taken.
    text: Option<Utf8Bytes>,
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
        pending.events.push_back(text.into());
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
    /// The text is shared: every client due the same push holds the same bytes.
    pub fn set_latest(&self, topic: Topic, session: &str, text: Utf8Bytes) {
        let mut pending = self.lock();
        let slot = pending
            .latest
            .iter_mut()
            .find(|slot| slot.topic == topic && slot.session == session);
        match slot {
            Some(slot) => slot.text = Some(text),
            None => pending.latest.push(Latest {
                topic,
                session: session.to_string(),
                text: Some(text),
            }),
        }
        drop(pending);
        self.ready.notify_one();
    }

    /// Waits until something was queued since the last [`Outbox::take`].
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Takes everything queued, in sending order: the lost-events notice (if any events were
    /// lost since the last call), the events, then the latest values (in the order their
    /// topic and session first came). Slots with nothing new since the last call are dropped.
    pub fn take(&self) -> Vec<Utf8Bytes> {
        let mut pending = self.lock();
        let mut out = Vec::with_capacity(pending.events.len() + pending.latest.len() + 1);
        if pending.dropped > 0 {
            out.push(wire::dropped_push(pending.dropped, pending.total_dropped).into());
            pending.dropped = 0;
        }
        out.extend(pending.events.drain(..));
        pending.latest.retain(|slot| slot.text.is_some());
        out.extend(
            pending
                .latest
                .iter_mut()
                .filter_map(|slot| slot.text.take()),
        );
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
            outbox.set_latest(Topic::Position, "a", format!("pa{i}").into());
            outbox.set_latest(Topic::Meters, "a", format!("ma{i}").into());
        }
        outbox.set_latest(Topic::Position, "b", Utf8Bytes::from_static("pb"));
        assert_eq!(outbox.take(), ["pa999", "ma999", "pb"]);
        assert!(outbox.take().is_empty());
        // The empty slots went with that take; new values start new ones.
        outbox.set_latest(Topic::Meters, "b", Utf8Bytes::from_static("mb"));
        outbox.set_latest(Topic::Position, "a", Utf8Bytes::from_static("pa"));
        assert_eq!(outbox.take(), ["mb", "pa"]);
        assert_eq!(outbox.lock().latest.len(), 2);
        outbox.set_latest(Topic::Position, "a", Utf8Bytes::from_static("pa2"));
        assert_eq!(outbox.take(), ["pa2"]);
        assert_eq!(outbox.lock().latest.len(), 1);
        assert!(outbox.take().is_empty());
        assert!(outbox.lock().latest.is_empty());
    }
}
