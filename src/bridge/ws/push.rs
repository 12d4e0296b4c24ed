//! A client's subscriptions and the task that feeds its [`Outbox`] with events from
//! [`Control::subscribe`] as they happen. `position` (every `http.position_interval_ms` while a
//! session rolls) and `meters` (at the client's rate) come from the shared clock in
//! [`super::beat`], which this task keeps told of the subscription. Neither waits on the
//! client: they only fill the bounded outbox, so a slow client costs no memory and no other
//! client any time.
//!
//! Not real-time: runs on tokio.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::beat::Seat;
use super::outbox::Outbox;
use super::wire::{self, Topic};
use crate::control::Control;

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

/// Feeds `outbox` according to `subscription` until the connection drops the sender: events
/// here, `position` and `meters` through the client's `seat` on the shared
/// [`Beats`](super::beat::Beats).
pub async fn run(
    control: Control,
    seat: Seat,
    bound: Option<String>,
    mut subscription: watch::Receiver<Subscription>,
    outbox: Arc<Outbox>,
) {
    let rate = control.info().sample_rate;
    let mut events = control.subscribe();
    let mut current = subscription.borrow_and_update().clone();
    seat.want(&current, bound.as_deref());
    loop {
        tokio::select! {
            changed = subscription.changed() => {
                if changed.is_err() {
                    return;
                }
                current = subscription.borrow_and_update().clone();
                seat.want(&current, bound.as_deref());
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
        }
    }
}

/// The time between meter pushes at `rate_hz` (already within the accepted range).
pub fn meter_period(rate_hz: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate_hz.clamp(MIN_METER_RATE_HZ, MAX_METER_RATE_HZ))
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
}
