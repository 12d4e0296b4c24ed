//! The clock of the latest-value pushes (`position`, `meters`), shared by every connection.
//!
//! One task per distinct period (the position interval, each meter rate in use) serves all
//! the clients due at that period. On each tick it serializes each session's position and
//! meters once and hands the same bytes to every client that wants them. A hundred clients
//! at 20 Hz thus cost one timer, one serialization per session and topic, and one wake of
//! each client's writer per tick, instead of a timer, a task wake and a serialization per
//! client. A client whose position and meters share a period gets both in the same tick,
//! so its writer sends them in one write.
//!
//! A client takes a [`Seat`] and states what it wants with [`Seat::want`]; dropping the seat
//! (the connection ends) takes it off every beat. A beat with nobody left is removed and its
//! task ended at once, so the tasks are bounded by the periods in use, however often clients
//! change their rates.
//!
//! Not real-time: runs on tokio.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::task::AbortHandle;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use super::outbox::Outbox;
use super::push::{meter_period, Subscription};
use super::wire::{self, Topic};
use crate::control::Control;
use crate::engine::TransportState;

/// The shared clock of the latest-value pushes. Cheap to clone.
#[derive(Clone)]
pub struct Beats {
    inner: Arc<Inner>,
}

struct Inner {
    control: Control,
    position_interval: Duration,
    rate: u32,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next_client: u64,
    next_beat: u64,
    /// The running beats, by period.
    beats: HashMap<Duration, Beat>,
}

/// One period's task and its listeners (never empty while registered).
struct Beat {
    /// Tells this beat's task from one started later for the same period.
    id: u64,
    task: AbortHandle,
    listeners: Vec<Listener>,
}

/// One client on one beat.
struct Listener {
    client: u64,
    outbox: Arc<Outbox>,
    position: bool,
    meters: bool,
    /// Only this session; `None`: every active session.
    session: Option<String>,
}

/// A client's place on the beats; it leaves them when dropped.
pub struct Seat {
    inner: Arc<Inner>,
    client: u64,
    outbox: Arc<Outbox>,
}

impl Beats {
    /// The beats of the bridge: position pushes every `position_interval`.
    pub fn new(control: Control, position_interval: Duration) -> Beats {
        let rate = control.info().sample_rate;
        Beats {
            inner: Arc::new(Inner {
                control,
                position_interval,
                rate,
                registry: Mutex::default(),
            }),
        }
    }

    /// A seat for a new client whose pushes go to `outbox`; it wants nothing yet.
    pub fn seat(&self, outbox: Arc<Outbox>) -> Seat {
        let mut registry = self.inner.lock();
        let client = registry.next_client;
        registry.next_client += 1;
        Seat {
            inner: self.inner.clone(),
            client,
            outbox,
        }
    }
}

impl Seat {
    /// Replaces what this client receives: the position and meters of `subscription`'s topics,
    /// for its session, else the connection's `bound` session, else every active session.
    /// Starts the task of a period nobody used yet (so it must run inside the runtime).
    pub fn want(&self, subscription: &Subscription, bound: Option<&str>) {
        let position = subscription.topics.contains(&Topic::Position);
        let meters = subscription.topics.contains(&Topic::Meters);
        let session = subscription
            .session
            .as_deref()
            .or(bound)
            .map(str::to_string);
        let position_period = self.inner.position_interval;
        let meter_period = meter_period(subscription.meter_rate_hz);
        let mut wants = Vec::with_capacity(2);
        if position && meters && position_period == meter_period {
            wants.push((position_period, true, true));
        } else {
            if position {
                wants.push((position_period, true, false));
            }
            if meters {
                wants.push((meter_period, false, true));
            }
        }
        let mut registry = self.inner.lock();
        // Off every beat, onto the wanted ones, and only then are emptied beats ended: a client
        // that keeps its period keeps its beat (and its next tick).
        registry.forget(self.client);
        for (period, position, meters) in wants {
            let listener = Listener {
                client: self.client,
                outbox: self.outbox.clone(),
                position,
                meters,
                session: session.clone(),
            };
            match registry.beats.get_mut(&period) {
                Some(beat) => beat.listeners.push(listener),
                None => {
                    let id = registry.next_beat;
                    registry.next_beat += 1;
                    let task = tokio::spawn(run_beat(self.inner.clone(), period, id));
                    registry.beats.insert(
                        period,
                        Beat {
                            id,
                            task: task.abort_handle(),
                            listeners: vec![listener],
                        },
                    );
                }
            }
        }
        registry.end_empty();
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.inner.lock().leave(self.client);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding this lock leaves whole listener lists behind: still consistent.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Registry {
    /// Takes `client` off every beat; a beat left with nobody is removed and its task ended.
    fn leave(&mut self, client: u64) {
        self.forget(client);
        self.end_empty();
    }

    /// Takes `client` off every beat, leaving emptied beats for [`Registry::end_empty`].
    fn forget(&mut self, client: u64) {
        for beat in self.beats.values_mut() {
            beat.listeners.retain(|listener| listener.client != client);
        }
    }

    /// Removes the beats nobody listens to and ends their tasks.
    fn end_empty(&mut self) {
        self.beats.retain(|_, beat| {
            if beat.listeners.is_empty() {
                beat.task.abort();
            }
            !beat.listeners.is_empty()
        });
    }
}

/// The task of beat `id`, of one period: on each tick, fills the outboxes of its listeners.
/// Ended by [`Registry::end_empty`] when its last listener leaves; it also ends by itself if it
/// finds another beat (or none) registered for its period.
async fn run_beat(inner: Arc<Inner>, period: Duration, id: u64) {
    let mut tick = ticker(period);
    let mut texts = TickTexts::default();
    loop {
        tick.tick().await;
        texts.clear();
        let registry = inner.lock();
        let Some(beat) = registry.beats.get(&period).filter(|beat| beat.id == id) else {
            return;
        };
        let listeners = &beat.listeners;
        let active = if listeners.iter().any(|listener| listener.session.is_none()) {
            inner.control.published_sessions()
        } else {
            Vec::new()
        };
        for listener in listeners {
            match listener.session.as_deref() {
                Some(id) => texts.push(&inner, listener, id),
                None => {
                    for id in &active {
                        texts.push(&inner, listener, id);
                    }
                }
            }
        }
    }
}

/// The pushes of one tick, serialized once per session and topic.
#[derive(Default)]
struct TickTexts {
    sessions: Vec<SessionTexts>,
}

struct SessionTexts {
    session: String,
    /// `None`: not made yet; `Some(None)`: nothing to push (not rolling, or not active).
    position: Option<Option<Utf8Bytes>>,
    meters: Option<Option<Utf8Bytes>>,
}

impl TickTexts {
    fn clear(&mut self) {
        self.sessions.clear();
    }

    /// Queues what `listener` wants of session `id`.
    fn push(&mut self, inner: &Inner, listener: &Listener, id: &str) {
        let texts = match self.sessions.iter().position(|texts| texts.session == id) {
            Some(at) => &mut self.sessions[at],
            None => {
                self.sessions.push(SessionTexts {
                    session: id.to_string(),
                    position: None,
                    meters: None,
                });
                let last = self.sessions.len() - 1;
                &mut self.sessions[last]
            }
        };
        if listener.position {
            let text = texts
                .position
                .get_or_insert_with(|| position_text(inner, id));
            if let Some(text) = text {
                listener
                    .outbox
                    .set_latest(Topic::Position, id, text.clone());
            }
        }
        if listener.meters {
            let text = texts.meters.get_or_insert_with(|| meters_text(inner, id));
            if let Some(text) = text {
                listener.outbox.set_latest(Topic::Meters, id, text.clone());
            }
        }
    }
}

/// Session `id`'s position push while it rolls, from its published view
/// ([`Control::transport`]: no lock of the session, no wait).
fn position_text(inner: &Inner, id: &str) -> Option<Utf8Bytes> {
    let (state, frame) = inner.control.transport(id).ok()?;
    matches!(state, TransportState::Playing | TransportState::Recording)
        .then(|| wire::position_push(id, state, frame, inner.rate).into())
}

/// Session `id`'s meters push ([`Control::track_meters`]: no lock of the session either).
fn meters_text(inner: &Inner, id: &str) -> Option<Utf8Bytes> {
    let meters = inner.control.track_meters(id).ok()?;
    Some(wire::meters_push(id, &meters).into())
}

/// A steady ticker that skips missed ticks instead of bursting to catch up. Its ticks fall on
/// a grid shared by every beat (multiples of `period` since the first ticker), so the beats
/// of the position interval and of an equal or multiple meter period tick together. The first
/// tick comes within one period.
fn ticker(period: Duration) -> Interval {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let mut tick = interval_at(next_on_grid(origin, Instant::now(), period), period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    tick
}

/// The first instant after `now` that is a whole number of `period`s after `origin`.
fn next_on_grid(origin: Instant, now: Instant, period: Duration) -> Instant {
    let step = period.as_nanos().max(1);
    let periods = now.saturating_duration_since(origin).as_nanos() / step + 1;
    origin + Duration::from_nanos(u64::try_from(periods * step).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tick_serializes_once_for_all_clients_and_empty_beats_end() {
        let dir = tempfile::tempdir().unwrap();
        let (control, id) =
            crate::control::testing::control_with_session(dir.path(), "beats", 2).await;
        control.record(&id).await.unwrap();
        let beats = Beats::new(control.clone(), Duration::from_millis(20));
        let outboxes: Vec<Arc<Outbox>> = (0..3).map(|_| Arc::new(Outbox::new(8))).collect();
        let seats: Vec<Seat> = outboxes.iter().map(|o| beats.seat(o.clone())).collect();
        let both = Subscription {
            topics: [Topic::Position, Topic::Meters].into(),
            meter_rate_hz: 50.0,
            session: Some(id.clone()),
        };
        seats[0].want(&both, None);
        // Its only client wanting the same again keeps the beat (and so its next tick).
        let beat_id = |beats: &Beats| beats.inner.lock().beats.values().next().unwrap().id;
        let before = beat_id(&beats);
        seats[0].want(&both, None);
        assert_eq!(beat_id(&beats), before);
        // Bound to the session by its connection instead of by the subscription.
        seats[1].want(
            &Subscription {
                session: None,
                ..both.clone()
            },
            Some(&id),
        );
        // Every active session: the one there is.
        seats[2].want(
            &Subscription {
                session: None,
                ..both.clone()
            },
            None,
        );
        assert_eq!(beats.inner.lock().beats.len(), 1, "one period, one beat");

        // Taken under the registry's lock, the outboxes hold the same tick.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let texts = loop {
            let registry = beats.inner.lock();
            let texts: Vec<Vec<Utf8Bytes>> = outboxes.iter().map(|o| o.take()).collect();
            drop(registry);
            if texts.iter().all(|t| t.len() == 2) {
                break texts;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no full tick: {texts:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let position: serde_json::Value = serde_json::from_str(&texts[0][0]).unwrap();
        assert_eq!(position["type"], "position");
        assert_eq!(position["sessionId"], id.as_str());
        assert_eq!(position["state"], "recording");
        let meters: serde_json::Value = serde_json::from_str(&texts[0][1]).unwrap();
        assert_eq!(meters["type"], "meters");
        assert_eq!(meters["tracks"].as_array().unwrap().len(), 2);
        for other in &texts[1..] {
            for (mine, theirs) in texts[0].iter().zip(other) {
                assert_eq!(mine.as_ptr(), theirs.as_ptr(), "one serialization, shared");
            }
        }

        // Meters at another rate: a second beat, and position alone on the first.
        seats[0].want(
            &Subscription {
                meter_rate_hz: 10.0,
                ..both.clone()
            },
            None,
        );
        {
            let registry = beats.inner.lock();
            assert_eq!(registry.beats.len(), 2);
            let on = |period: u64| {
                registry.beats[&Duration::from_millis(period)]
                    .listeners
                    .iter()
                    .filter(|l| l.client == seats[0].client)
                    .map(|l| (l.position, l.meters))
                    .collect::<Vec<_>>()
            };
            assert_eq!(on(20), [(true, false)]);
            assert_eq!(on(100), [(false, true)]);
        }

        // A client changing its meter rate over and over leaves no beat behind: each rate's
        // beat ends as the client moves on (not at its next tick, 10 s away at 0.1 Hz).
        let mut tasks = Vec::new();
        for step in 0..200 {
            seats[0].want(
                &Subscription {
                    meter_rate_hz: 0.1 + f64::from(step) * 0.01,
                    ..both.clone()
                },
                None,
            );
            let registry = beats.inner.lock();
            assert!(registry.beats.len() <= 2, "{} beats", registry.beats.len());
            tasks.extend(registry.beats.values().map(|beat| beat.task.clone()));
        }

        drop(seats);
        assert!(
            beats.inner.lock().beats.is_empty(),
            "a beat outlived its clients"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !tasks.iter().all(AbortHandle::is_finished) {
            assert!(
                std::time::Instant::now() < deadline,
                "a beat's task outlived its clients"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        control.stop(&id).await.unwrap();
    }

    #[test]
    fn ticks_fall_on_a_grid_shared_by_every_beat() {
        let origin = Instant::now();
        let period = Duration::from_millis(50);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(next_on_grid(origin, origin, period), origin + ms(50));
        assert_eq!(
            next_on_grid(origin, origin + ms(7), period),
            origin + ms(50)
        );
        assert_eq!(
            next_on_grid(origin, origin + ms(50), period),
            origin + ms(100)
        );
        assert_eq!(
            next_on_grid(origin, origin + ms(1234), period),
            origin + ms(1250)
        );
        // Before the origin (a clock that went back cannot happen, but must not panic).
        assert_eq!(
            next_on_grid(origin + ms(10), origin, period),
            origin + ms(60)
        );
    }
}
