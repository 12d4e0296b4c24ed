//! The WebSocket at `/ws` and its alias `/ws/audio/{sessionId}` (DESIGN.md §5.3; the
//! protocol is in docs/protocol.md). Text frames carry JSON: `control` commands answered by a
//! `reply` or an `error` frame, and `subscribe`/`unsubscribe` for pushes (`position`,
//! `meters`, `transport`, `track`, `take`, `system`). Binary frames carry audio ([`audio`]):
//! inbound chunks record into a track, `audio_out` sends the master or a track back.
//!
//! Each connection runs three tasks, plus one per outbound audio source: the reader (this
//! module: parses and runs commands and audio chunks, one at a time, so replies come back in
//! order), the pusher ([`push`]: fills the client's bounded [`outbox::Outbox`] with events)
//! and the writer (drains replies, the bounded audio queue and the outbox into the socket).
//! `position` and `meters` reach the outbox from [`Beats`], one clock shared by all clients.
//! Limits: `http.max_clients` (over: the upgrade is refused with 503 and a JSON error),
//! `http.max_ws_message_bytes` (over: close code 1009), `http.commands_per_second` per client
//! (over: an `invalid_state` error frame; the message is not run). Audio chunks do not count
//! against it: the stream's ring holds them back instead.
//!
//! Not real-time: runs on tokio.

mod audio;
mod beat;
mod commands;
mod outbox;
mod push;
mod wire;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use super::{error_body, ApiError, AppState};
use crate::control::{ControlError, ErrorCode};
pub use beat::Beats;
use outbox::Outbox;
use push::{Subscription, MAX_METER_RATE_HZ, MIN_METER_RATE_HZ};
use wire::Topic;

/// Event pushes a client may have waiting before the oldest are dropped (and counted).
const EVENT_QUEUE: usize = 256;
/// Replies waiting for a client that does not read; when full, its commands wait unread.
const REPLY_QUEUE: usize = 32;
/// Outbound audio chunks (about 10 ms each) waiting for a client; when full, new chunks are
/// dropped and counted.
const AUDIO_QUEUE: usize = 32;
/// How long a closing connection may take to hand its last frames to a client.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The WebSocket routes: `/ws` and `/ws/audio/{session_id}` (bound to that session).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/ws/audio/{session_id}", get(upgrade_bound))
}

async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    accept(state, ws, None)
}

/// The alias: the session must be active; commands without `sessionId` act on it.
async fn upgrade_bound(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(error) = state.control.transport(&session_id) {
        return ApiError(error).into_response();
    }
    accept(state, ws, Some(session_id))
}

fn accept(state: AppState, ws: WebSocketUpgrade, bound: Option<String>) -> Response {
    let Some(slot) = ClientSlot::take(&state.ws_clients, state.config.max_clients) else {
        let message = format!(
            "{} WebSocket clients are connected (http.max_clients): try again later",
            state.config.max_clients
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(error_body(ErrorCode::InvalidState, &message)),
        )
            .into_response();
    };
    let limit = state.config.max_ws_message_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve(socket, state, bound, slot))
}

/// One place among `http.max_clients`, given back when dropped (also when an upgrade fails).
struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    fn take(clients: &Arc<AtomicUsize>, max: usize) -> Option<ClientSlot> {
        clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientSlot(clients.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the reader hands the writer.
enum Outgoing {
    Text(Utf8Bytes),
    Binary(Vec<u8>),
    Close(u16, &'static str),
}

/// Runs one connection until the client leaves, the socket fails or a limit closes it.
async fn serve(socket: WebSocket, state: AppState, bound: Option<String>, slot: ClientSlot) {
    let (sink, mut stream) = socket.split();
    let outbox = Arc::new(Outbox::new(EVENT_QUEUE));
    let (replies, replies_rx) = mpsc::channel(REPLY_QUEUE);
    let (audio_tx, audio_rx) = mpsc::channel(AUDIO_QUEUE);
    let mut writer = tokio::spawn(write(sink, replies_rx, audio_rx, outbox.clone()));
    let (subscription, subscription_rx) = watch::channel(Subscription::default());
    let pusher = tokio::spawn(push::run(
        state.control.clone(),
        state.beats.seat(outbox.clone()),
        bound.clone(),
        subscription_rx,
        outbox.clone(),
    ));
    let mut limiter = RateLimiter::new(state.config.commands_per_second, Instant::now());
    let mut connection = Connection {
        state: &state,
        bound: bound.as_deref(),
        subscription: &subscription,
        audio_in: audio::AudioIn::default(),
        audio_out: audio::AudioOut::new(audio_tx, outbox),
    };
    while let Some(received) = stream.next().await {
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                // tungstenite refuses a frame or message over the limit before reading it.
                if error.to_string().contains("Message too long") {
                    let _ = replies
                        .send(Outgoing::Close(
                            close_code::SIZE,
                            "message larger than http.max_ws_message_bytes",
                        ))
                        .await;
                }
                break;
            }
        };
        let out = match message {
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(bytes)
                if connection.audio_in.would_attach(&bytes) && !limiter.allow(Instant::now()) =>
            {
                wire::error(
                    &Value::Null,
                    &ControlError::invalid_state(format!(
                        "rate limited: more than {} messages per second (http.commands_per_second); the chunk was not recorded",
                        state.config.commands_per_second
                    )),
                )
            }
            Message::Binary(bytes) => match connection.audio_chunk(&bytes).await {
                Ok(()) => continue,
                Err(error) => wire::error(&Value::Null, &error),
            },
            message if !limiter.allow(Instant::now()) => wire::error(
                &id_of(&message),
                &ControlError::invalid_state(format!(
                    "rate limited: more than {} messages per second (http.commands_per_second); this one was not run",
                    state.config.commands_per_second
                )),
            ),
            Message::Text(text) => connection.handle(text.as_str()).await,
        };
        if replies.send(Outgoing::Text(out.into())).await.is_err() {
            break;
        }
    }
    pusher.abort();
    // Detaches every stream and tap of the connection.
    drop(connection);
    drop(replies);
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    drop(slot);
}

/// Sends replies and pushes until the reader is done; stops at the first failed send.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut replies: mpsc::Receiver<Outgoing>,
    mut audio: mpsc::Receiver<Vec<u8>>,
    outbox: Arc<Outbox>,
) {
    loop {
        let batch = tokio::select! {
            biased;
            reply = replies.recv() => match reply {
                Some(reply) => vec![reply],
                None => break,
            },
            Some(chunk) = audio.recv() => vec![Outgoing::Binary(chunk)],
            () = outbox.ready() => outbox.take().into_iter().map(Outgoing::Text).collect(),
        };
        for item in batch {
            let sent = match item {
                Outgoing::Text(text) => sink.feed(Message::Text(text)).await,
                Outgoing::Binary(bytes) => sink.feed(Message::Binary(bytes.into())).await,
                Outgoing::Close(code, reason) => {
                    let frame = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return;
                }
            };
            if sent.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// The reader's view of its connection.
struct Connection<'a> {
    state: &'a AppState,
    bound: Option<&'a str>,
    subscription: &'a watch::Sender<Subscription>,
    audio_in: audio::AudioIn,
    audio_out: audio::AudioOut,
}

impl Connection<'_> {
    /// Answers one text frame: a `reply` or an `error` frame, never a dropped connection.
    async fn handle(&mut self, text: &str) -> String {
        let mut frame = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(frame)) => frame,
            Ok(_) => return bad(&Value::Null, "a message must be a JSON object".into()),
            Err(e) => return bad(&Value::Null, format!("the message is not valid JSON: {e}")),
        };
        let id = frame.remove("id").unwrap_or(Value::Null);
        if !(id.is_null() || id.is_string() || id.is_number()) {
            return bad(&Value::Null, "id must be a string or a number".into());
        }
        let kind = frame.remove("type");
        let result = match kind.as_ref().map(|k| k.as_str().ok_or(k)) {
            Some(Ok("control")) => self.control(frame).await,
            Some(Ok("subscribe")) => self.subscribe(frame, true).await,
            Some(Ok("unsubscribe")) => self.subscribe(frame, false).await,
            Some(Ok(other)) => Err(ControlError::invalid_argument(format!(
                "unknown message type {other:?}; types are control, subscribe, unsubscribe"
            ))),
            Some(Err(_)) => Err(ControlError::invalid_argument("type must be a string")),
            None => Err(ControlError::invalid_argument(
                "type is missing (control, subscribe or unsubscribe)",
            )),
        };
        match result {
            Ok(data) => wire::reply(&id, data),
            Err(error) => wire::error(&id, &error),
        }
    }

    async fn control(&mut self, mut frame: Map<String, Value>) -> Result<Value, ControlError> {
        let command = match frame.remove("command") {
            Some(Value::String(command)) => command,
            Some(_) => return Err(ControlError::invalid_argument("command must be a string")),
            None => return Err(ControlError::invalid_argument("command is missing")),
        };
        let data = frame.remove("data").unwrap_or(Value::Null);
        no_other_fields(&frame)?;
        let control = &self.state.control;
        if audio::COMMANDS.contains(&command.as_str()) {
            self.audio_out
                .command(&mut self.audio_in, control, self.bound, &command, data)
                .await
        } else {
            commands::run(control, self.bound, &command, data).await
        }
    }

    /// Records one inbound audio chunk (see [`audio::AudioIn::chunk`]).
    async fn audio_chunk(&mut self, bytes: &[u8]) -> Result<(), ControlError> {
        self.audio_in
            .chunk(&self.state.control, self.bound, bytes)
            .await
    }

    /// `subscribe` adds topics (and may set `meterRateHz` and `sessionId`); `unsubscribe`
    /// removes the listed topics, or all when none are listed. Nothing changes on error.
    async fn subscribe(
        &mut self,
        mut frame: Map<String, Value>,
        adding: bool,
    ) -> Result<Value, ControlError> {
        let topics = match frame.remove("topics") {
            Some(Value::Array(words)) => words
                .iter()
                .map(|w| {
                    w.as_str().and_then(Topic::parse).ok_or_else(|| {
                        ControlError::invalid_argument(format!(
                            "unknown topic {w}; topics are position, meters, transport, track, take, system"
                        ))
                    })
                })
                .collect::<Result<BTreeSet<Topic>, _>>()?,
            Some(Value::Null) | None if !adding => Topic::ALL.into_iter().collect(),
            Some(_) => return Err(ControlError::invalid_argument("topics must be an array of strings")),
            None => return Err(ControlError::invalid_argument("topics is missing")),
        };
        let mut next = self.subscription.borrow().clone();
        if adding {
            match frame.remove("meterRateHz") {
                None | Some(Value::Null) => {}
                Some(rate) => {
                    let rate = rate
                        .as_f64()
                        .filter(|r| r.is_finite() && *r >= MIN_METER_RATE_HZ)
                        .ok_or_else(|| {
                            ControlError::invalid_argument(format!(
                                "meterRateHz must be a number >= {MIN_METER_RATE_HZ} (capped at {MAX_METER_RATE_HZ}), got {rate}"
                            ))
                        })?;
                    next.meter_rate_hz = rate.min(MAX_METER_RATE_HZ);
                }
            }
            match frame.remove("sessionId") {
                None | Some(Value::Null) => {}
                Some(Value::String(id)) => {
                    self.state.control.transport(&id)?;
                    next.session = Some(id);
                }
                Some(_) => {
                    return Err(ControlError::invalid_argument("sessionId must be a string"))
                }
            }
            next.topics.extend(topics);
        } else {
            next.topics.retain(|t| !topics.contains(t));
        }
        no_other_fields(&frame)?;
        let reply = json!({
            "topics": next.topics.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "meterRateHz": next.meter_rate_hz,
            "sessionId": next.session.as_deref().or(self.bound),
        });
        self.subscription.send_replace(next);
        Ok(reply)
    }
}

/// The `id` of a text frame, to answer a message that is not run; `null` when there is none.
fn id_of(message: &Message) -> Value {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<Value>,
    }
    match message {
        Message::Text(text) => serde_json::from_str::<Id>(text.as_str())
            .ok()
            .and_then(|frame| frame.id)
            .filter(|id| id.is_string() || id.is_number())
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn no_other_fields(frame: &Map<String, Value>) -> Result<(), ControlError> {
    match frame.keys().next() {
        Some(key) => Err(ControlError::invalid_argument(format!(
            "unknown field {key:?} in the message"
        ))),
        None => Ok(()),
    }
}

fn bad(id: &Value, message: String) -> String {
    wire::error(id, &ControlError::invalid_argument(message))
}

/// A token bucket: `per_second` messages per second, bursts up to `per_second`.
struct RateLimiter {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(per_second: u32, now: Instant) -> RateLimiter {
        let per_second = f64::from(per_second.max(1));
        RateLimiter {
            per_second,
            tokens: per_second,
            last: now,
        }
    }

    /// Whether one more message may run at `now` (and spends its token if so).
    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiter_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, start);
        assert_eq!((0..15).filter(|_| limiter.allow(start)).count(), 10);
        let later = start + Duration::from_millis(500);
        assert_eq!((0..15).filter(|_| limiter.allow(later)).count(), 5);
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..15).filter(|_| limiter.allow(much_later)).count(), 10);
    }

    #[test]
    fn client_slots_stop_at_the_limit_and_come_back_when_dropped() {
        let clients = Arc::new(AtomicUsize::new(0));
        let a = ClientSlot::take(&clients, 2).unwrap();
        let _b = ClientSlot::take(&clients, 2).unwrap();
        assert!(ClientSlot::take(&clients, 2).is_none());
        drop(a);
        assert!(ClientSlot::take(&clients, 2).is_some());
        assert_eq!(clients.load(Ordering::Acquire), 1);
    }
}
