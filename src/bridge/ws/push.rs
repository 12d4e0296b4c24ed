//! A client's subscriptions and the task that feeds its [`Outbox`]: events from
//! [`Control::subscribe`] as they happen, `position` every `http.position_interval_ms` while a
//! session rolls, `meters` at the client's rate. This task never waits on the client: it only
//! fills the bounded outbox, so a slow client costs no memory and no other client any time.
//!
//! Not real-time: runs on tokio.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{broadcast, watch};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use super::outbox::Outbox;
use super::wire::{self, Topic};
use crate::control::Control;
use crate::engine::TransportState;

/// The highest `meterRateHz` served; higher requests are capped to it.
pub const MAX_METER_RATE_HZ: f64 = 60.0;
/// The lowest `meterRateHz` accepted.
pub const MIN_METER_RATE_HZ: f64 = 0.1;
/// `meterRateHz` until the client asks for another.
pub const DEFAULT_METER_RATE_HZ: f64 = 10.0;

/// What a client wants pushed.
#[derive(Clone, Debug, PartialEq)]
pub struct Subscription {
    /// Subscribed topics.
    pub topics: BTreeSet<Topic>,
    /// Meter pushes per second (`MIN_METER_RATE_HZ`–`MAX_METER_RATE_HZ`).
    pub meter_rate_hz: f64,
    /// Only this session's pushes; `None`: the connection's bound session, else every session.
    pub session: Option<String>,
}

impl Default for Subscription {
    fn default() -> Self {
        Subscription {
            topics: BTreeSet::new(),
            meter_rate_hz: DEFAULT_METER_RATE_HZ,
            session: None,
        }
    }
}

/// Feeds `outbox` according to `subscription` until the connection drops the sender.
pub async fn run(
    control: Control,
    position_interval: Duration,
    bound: Option<String>,
    mut subscription: watch::Receiver<Subscription>,
    outbox: Arc<Outbox>,
) {
    let rate = control.info().sample_rate;
    let mut events = control.subscribe();
    let mut current = subscription.borrow_and_update().clone();
    let mut position_tick = ticker(position_interval);
    let mut meter_tick = ticker(meter_period(current.meter_rate_hz));
    loop {
        let wants_position = current.topics.contains(&Topic::Position);
        let wants_meters = current.topics.contains(&Topic::Meters);
        tokio::select! {
            changed = subscription.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = subscription.borrow_and_update().clone();
                if next.meter_rate_hz != current.meter_rate_hz {
                    meter_tick = ticker(meter_period(next.meter_rate_hz));
                }
                current = next;
            }
            received = events.recv() => match received {
                Ok(event) => {
                    let scope = current.session.as_deref().or(bound.as_deref());
                    if scope.is_some_and(|s| wire::event_session(&event) != Some(s)) {
                        continue;
                    }
                    let (topic, text) = wire::event_push(&event, rate);
                    if current.topics.contains(&topic) {
                        outbox.push_event(text);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(lost)) => {
                    if current.topics.iter().any(|t| !matches!(t, Topic::Position | Topic::Meters)) {
                        outbox.count_lost(lost);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = position_tick.tick(), if wants_position => {
                // Meters due at the same instant go in the same wake, so the writer sends
                // both in one write.
                let meters = wants_meters && meter_tick.tick().now_or_never().is_some();
                push_ticks(&control, &outbox, &current, bound.as_deref(), rate, true, meters).await;
            }
            _ = meter_tick.tick(), if wants_meters => {
                let position = wants_position && position_tick.tick().now_or_never().is_some();
                push_ticks(&control, &outbox, &current, bound.as_deref(), rate, position, true).await;
            }
        }
    }
}

/// Queues the position and/or meters of the subscription's session (the connection's bound
/// session, else every active session).
async fn push_ticks(
    control: &Control,
    outbox: &Outbox,
    subscription: &Subscription,
    bound: Option<&str>,
    rate: u32,
    position: bool,
    meters: bool,
) {
    let push = |id: &str| {
        if position {
            push_position(control, outbox, id, rate);
        }
        if meters {
            push_meters(control, outbox, id);
        }
    };
    match subscription.session.as_deref().or(bound) {
        Some(id) => push(id),
        None => {
            for id in control.active_sessions().await {
                push(&id);
            }
        }
    }
}

/// Queues session `id`'s position while it rolls. Reads the session's published view
/// ([`Control::transport`]): no lock of the session, no wait.
fn push_position(control: &Control, outbox: &Outbox, id: &str, rate: u32) {
    if let Ok((state, frame)) = control.transport(id) {
        if matches!(state, TransportState::Playing | TransportState::Recording) {
            outbox.set_latest(
                Topic::Position,
                id,
                wire::position_push(id, state, frame, rate),
            );
        }
    }
}

/// Queues session `id`'s meters ([`Control::track_meters`]: no lock of the session either).
fn push_meters(control: &Control, outbox: &Outbox, id: &str) {
    if let Ok(meters) = control.track_meters(id) {
        outbox.set_latest(Topic::Meters, id, wire::meters_push(id, &meters));
    }
}

/// The time between meter pushes at `rate_hz` (already within the accepted range).
pub fn meter_period(rate_hz: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate_hz.clamp(MIN_METER_RATE_HZ, MAX_METER_RATE_HZ))
}

/// A steady ticker that skips missed ticks instead of bursting to catch up. Its ticks fall on
/// a grid shared by every connection (multiples of `period` since the first ticker), so all
/// clients with the same period tick together: the runtime wakes once per tick for all of
/// them instead of once per client and topic, and a client's `position` and `meters`, due at
/// the same instant, leave in one write. The first tick comes within one period.
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

    #[test]
    fn meter_periods_follow_the_rate_within_the_cap() {
        assert_eq!(meter_period(20.0), Duration::from_millis(50));
        assert_eq!(meter_period(1000.0), meter_period(MAX_METER_RATE_HZ));
        assert_eq!(meter_period(0.0), Duration::from_secs(10));
    }

    #[test]
    fn ticks_fall_on_a_grid_shared_by_every_client() {
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
