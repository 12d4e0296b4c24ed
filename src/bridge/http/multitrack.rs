//! The multitrack-recorder API (issue 4), served under `/api/v1/multitrack` and
//! `/api/v1/ai/multitrack`. JSON in camelCase; a session's tracks are `track_1`, `track_2`, ….
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | POST | `/session` | `{"projectId","userId","name"?,"tracks"?:[{"name","level","pan","armed","muted","soloed","inputGain"}]}` | `{"success":true,"session":{..}}` |
//! | GET | `/session/{sessionId}` | | `{"success":true,"session":{..}}` |
//! | POST | `/session/{sessionId}/start` (record), `/pause`, `/resume` | | `{"success":true,"sessionId","state","position","positionSeconds","isRecording"}` |
//! | POST | `/session/{sessionId}/stop` | | `{"success":true,"metrics":{..}}` |
//! | PUT | `/session/{sessionId}/track/{trackId}` | any of `level`, `pan`, `muted`, `soloed`, `armed`, `name`, `inputGain`, `input`, `monitoring` | `{"success":true,"track":{..}}` |
//! | DELETE | `/session/{sessionId}` | | `{"success":true,"sessionId","deleted":true}` |
//!
//! The session object: `sessionId`, `projectId`, `userId`, `name`, `tracks`, `sampleRate`,
//! `bufferSize`, `isRecording`, `state` (`stopped|playing|recording|paused`), `position`
//! (frames), `positionSeconds`. A track: `trackId`, `name`, `armed`, `level`, `pan`, `muted`,
//! `soloed`, `inputGain`, `channels`, `input`, `monitoring`.
//!
//! `tracks` in the create body is optional (default: `session.default_tracks` tracks, the first
//! `session.default_armed` armed); when given, the session gets that many tracks and each
//! entry's fields are applied as by the PUT route (omitted fields keep their defaults). If any
//! value is refused, the new session is deleted again and the error names the entry
//! (`tracks[1]: pan must be …`). Export arrives with the export issue; until then its route
//! does not exist (404).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{parse_track_id, JsonBody, PathArgs};
use crate::bridge::shapes::{Session, SessionAnswer, Track, TrackAnswer};
use crate::bridge::{ApiError, AppState};
use crate::control::{Control, ControlError, CreateSession, LiveSession, TrackUpdate};
use crate::engine::TransportState;

/// The multitrack routes under each of `prefixes`. Registered with their full paths rather
/// than nested: a nested router rewrites every request's URI to strip its prefix.
pub fn routes(prefixes: &[&str]) -> Router<AppState> {
    let bodies = Arc::new(SessionBodies::default());
    let show = get(move |state, path| show(state, path, bodies.clone()));
    let mut router = Router::new();
    for prefix in prefixes {
        router = router
            .route(&format!("{prefix}/session"), post(create))
            .route(
                &format!("{prefix}/session/{{session_id}}"),
                show.clone().delete(delete),
            )
            .route(
                &format!("{prefix}/session/{{session_id}}/start"),
                post(start),
            )
            .route(
                &format!("{prefix}/session/{{session_id}}/pause"),
                post(pause),
            )
            .route(
                &format!("{prefix}/session/{{session_id}}/resume"),
                post(resume),
            )
            .route(&format!("{prefix}/session/{{session_id}}/stop"), post(stop))
            .route(
                &format!("{prefix}/session/{{session_id}}/track/{{track_id}}"),
                put(update_track),
            );
    }
    router
}

type Reply = Result<Json<Value>, ApiError>;

/// Body of `POST /session`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    project_id: String,
    user_id: String,
    /// Session name (default: the project id).
    name: Option<String>,
    tracks: Option<Vec<TrackChange>>,
}

/// Track fields a client may set; `None` (absent or `null`) leaves one as it is.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrackChange {
    name: Option<String>,
    armed: Option<bool>,
    level: Option<f64>,
    pan: Option<f64>,
    muted: Option<bool>,
    soloed: Option<bool>,
    input_gain: Option<f64>,
    input: Option<String>,
    monitoring: Option<String>,
}

impl TrackChange {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.armed.is_none()
            && self.level.is_none()
            && self.pan.is_none()
            && self.muted.is_none()
            && self.soloed.is_none()
            && self.input_gain.is_none()
            && self.input.is_none()
            && self.monitoring.is_none()
    }

    fn into_update(self) -> TrackUpdate {
        TrackUpdate {
            name: self.name,
            armed: self.armed,
            input_gain: self.input_gain,
            level: self.level,
            pan: self.pan,
            muted: self.muted,
            soloed: self.soloed,
            input: self.input,
            monitoring: self.monitoring,
        }
    }
}

async fn create(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let control = &state.control;
    let info = control
        .create_session(CreateSession {
            name: request.name.unwrap_or_else(|| request.project_id.clone()),
            tracks: request.tracks.as_ref().map(|t| t.len() as u32),
            project_id: Some(request.project_id),
            user_id: Some(request.user_id),
        })
        .await?;
    let id = info.row.id.clone();
    for (i, change) in request.tracks.into_iter().flatten().enumerate() {
        if change.is_empty() {
            continue;
        }
        let index = i as u32 + 1;
        if let Err(error) = control.update_track(&id, index, change.into_update()).await {
            // Atomic create: a refused track value leaves no session behind.
            if let Err(cleanup) = control.delete_session(&id).await {
                tracing::error!(session = %id, "deleting a half-created session: {cleanup}");
            }
            return Err(ApiError(ControlError {
                code: error.code,
                message: format!("tracks[{i}]: {}", error.message),
            }));
        }
    }
    let info = control.session(&id).await?;
    let answer = SessionAnswer {
        session: Session::of(&info, control.info().buffer_size),
        success: true,
    };
    Ok(json_response(&answer, session_capacity(info.tracks.len())))
}

/// `GET /session/{sessionId}`: the session as its owner last published it, at the live
/// position ([`Control::live_session`]). It takes neither the session's lock nor the session
/// map's, and waits on nothing: the state and tracks reflect every command that has returned
/// (a change the engine makes on its own, within 20 ms); the position is the engine's. The
/// answer is serialized once per view and position ([`SessionBodies`]).
async fn show(
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
    bodies: Arc<SessionBodies>,
) -> Result<Response, ApiError> {
    let live = state.control.live_session(&id)?;
    let body = bodies.get_or_insert(&id, &live, || {
        let answer = SessionAnswer {
            session: Session::live(&live, state.control.buffer_size()),
            success: true,
        };
        json_bytes(&answer, session_capacity(live.view.tracks.len()))
    })?;
    Ok(json_answer(body))
}

/// The last `GET /session/{sessionId}` answer of each session, with the view generation and
/// position it shows: while neither changes (the position moves once per audio period, about
/// every 5 ms), every GET sends the same bytes, so they are serialized once and shared.
///
/// Bounded: when [`MAX_CACHED_SESSIONS`] sessions have answers here and another comes, the
/// answers are forgotten (only sessions found active are cached, so in steady use this never
/// happens: it is there for sessions that came and went). The lock is held to compare two
/// numbers and clone a `Bytes`, or to store a new one; the serializing happens outside it.
#[derive(Default)]
pub struct SessionBodies {
    bodies: Mutex<HashMap<String, SessionBody>>,
}

/// How many sessions' answers [`SessionBodies`] keeps at most.
pub const MAX_CACHED_SESSIONS: usize = 64;

struct SessionBody {
    generation: u64,
    position: u64,
    bytes: Bytes,
}

impl SessionBodies {
    /// The answer for session `id` as `live` shows it: the cached one if it shows the same
    /// view and position, else `build`'s, which is then cached.
    fn get_or_insert(
        &self,
        id: &str,
        live: &LiveSession,
        build: impl FnOnce() -> Result<Bytes, ApiError>,
    ) -> Result<Bytes, ApiError> {
        let shows = |body: &SessionBody| {
            body.generation == live.view.generation && body.position == live.position
        };
        if let Some(body) = self.lock().get(id).filter(|b| shows(b)) {
            return Ok(body.bytes.clone());
        }
        let bytes = build()?;
        let mut bodies = self.lock();
        if bodies.len() >= MAX_CACHED_SESSIONS && !bodies.contains_key(id) {
            bodies.clear();
        }
        let body = SessionBody {
            generation: live.view.generation,
            position: live.position,
            bytes: bytes.clone(),
        };
        match bodies.get_mut(id) {
            Some(slot) => *slot = body,
            None => {
                bodies.insert(id.to_string(), body);
            }
        }
        Ok(bytes)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, SessionBody>> {
        // A panic while holding this lock leaves whole entries behind: still consistent.
        self.bodies.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Room for a session answer with `tracks` tracks, so that serializing it does not grow the
/// buffer (about 250 bytes a track and for the rest).
fn session_capacity(tracks: usize) -> usize {
    256 * (tracks + 1)
}

/// `value` as an `application/json` answer, serialized straight into a buffer of `capacity`
/// bytes (as `Json` does, without its 128-byte start that a session answer outgrows four
/// times).
fn json_response(value: &impl Serialize, capacity: usize) -> Response {
    match json_bytes(value, capacity) {
        Ok(body) => json_answer(body),
        Err(error) => error.into_response(),
    }
}

/// `value` serialized into a buffer of `capacity` bytes.
fn json_bytes(value: &impl Serialize, capacity: usize) -> Result<Bytes, ApiError> {
    let mut body = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut body, value)
        .map(|()| Bytes::from(body))
        // Only a failing `Serialize` impl gets here; ours hold plain data.
        .map_err(|e| {
            ApiError(ControlError::invalid_state(format!(
                "cannot encode the answer: {e}"
            )))
        })
}

/// A JSON body as a `200 application/json` answer.
fn json_answer(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn start(State(state): State<AppState>, PathArgs(id): PathArgs<String>) -> Reply {
    state.control.record(&id).await?;
    transport_reply(&state.control, &id).await
}

async fn pause(State(state): State<AppState>, PathArgs(id): PathArgs<String>) -> Reply {
    state.control.pause(&id).await?;
    transport_reply(&state.control, &id).await
}

async fn resume(State(state): State<AppState>, PathArgs(id): PathArgs<String>) -> Reply {
    state.control.resume(&id).await?;
    transport_reply(&state.control, &id).await
}

async fn stop(State(state): State<AppState>, PathArgs(id): PathArgs<String>) -> Reply {
    let metrics = state.control.stop(&id).await?;
    Ok(Json(json!({"success": true, "metrics": metrics})))
}

async fn update_track(
    State(state): State<AppState>,
    PathArgs((id, track)): PathArgs<(String, String)>,
    JsonBody(change): JsonBody<TrackChange>,
) -> Result<Response, ApiError> {
    let index = parse_track_id(&track)?;
    if change.is_empty() {
        return Err(ApiError(ControlError::invalid_argument(
            "nothing to change: give any of level, pan, muted, soloed, armed, name, inputGain, input, monitoring",
        )));
    }
    let row = state
        .control
        .update_track(&id, index, change.into_update())
        .await?;
    let answer = TrackAnswer {
        success: true,
        track: Track::of(&row),
    };
    Ok(json_response(&answer, 512))
}

async fn delete(State(state): State<AppState>, PathArgs(id): PathArgs<String>) -> Reply {
    state.control.delete_session(&id).await?;
    Ok(Json(
        json!({"success": true, "sessionId": id, "deleted": true}),
    ))
}

/// The answer of start/pause/resume: the transport after the change.
async fn transport_reply(control: &Control, id: &str) -> Reply {
    let info = control.session(id).await?;
    let rate = f64::from(info.row.sample_rate.max(1));
    Ok(Json(json!({
        "success": true,
        "sessionId": info.row.id,
        "state": info.state.as_str(),
        "position": info.position,
        "positionSeconds": info.position as f64 / rate,
        "isRecording": info.state == TransportState::Recording,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::SessionView;
    use crate::store::SessionRow;

    fn live(id: &str, generation: u64, position: u64) -> LiveSession {
        LiveSession {
            view: Arc::new(SessionView {
                generation,
                row: SessionRow {
                    id: id.into(),
                    name: id.into(),
                    project_id: None,
                    user_id: None,
                    sample_rate: 48_000,
                    created_at_ms: 0,
                    active: true,
                },
                state: TransportState::Recording,
                tracks: Vec::new(),
            }),
            position,
        }
    }

    /// Answers from the cache, counting how often `build` ran.
    fn answer(bodies: &SessionBodies, live: &LiveSession, builds: &mut u32) -> Bytes {
        bodies
            .get_or_insert(&live.view.row.id, live, || {
                *builds += 1;
                json_bytes(
                    &SessionAnswer {
                        session: Session::live(live, 256),
                        success: true,
                    },
                    64,
                )
            })
            .map_err(|e| e.0)
            .unwrap()
    }

    #[test]
    fn a_session_answer_is_built_once_per_view_and_position() {
        let bodies = SessionBodies::default();
        let mut builds = 0;
        let first = answer(&bodies, &live("a", 1, 100), &mut builds);
        assert_eq!(answer(&bodies, &live("a", 1, 100), &mut builds), first);
        assert_eq!(builds, 1);
        let moved = answer(&bodies, &live("a", 1, 356), &mut builds);
        assert_eq!(builds, 2);
        let json: Value = serde_json::from_slice(&moved).unwrap();
        assert_eq!(json["session"]["position"], 356);
        answer(&bodies, &live("a", 2, 356), &mut builds);
        assert_eq!(builds, 3);
        // Another session has its own answer.
        let other: Value =
            serde_json::from_slice(&answer(&bodies, &live("b", 2, 356), &mut builds)).unwrap();
        assert_eq!(other["session"]["sessionId"], "b");
        assert_eq!(builds, 4);
    }

    #[test]
    fn the_answer_cache_stays_bounded() {
        let bodies = SessionBodies::default();
        let mut builds = 0;
        for n in 0..3 * MAX_CACHED_SESSIONS {
            answer(&bodies, &live(&format!("s{n}"), 1, 0), &mut builds);
            assert!(bodies.lock().len() <= MAX_CACHED_SESSIONS);
        }
        assert_eq!(builds as usize, 3 * MAX_CACHED_SESSIONS);
    }

    #[test]
    fn a_change_with_only_unknown_or_null_fields_is_empty() {
        let change: TrackChange = serde_json::from_str(r#"{"levle": 0.5, "pan": null}"#).unwrap();
        assert!(change.is_empty());
        let change: TrackChange =
            serde_json::from_str(r#"{"inputGain": 2, "muted": true}"#).unwrap();
        assert!(!change.is_empty());
        let update = change.into_update();
        assert_eq!(update.input_gain, Some(2.0));
        assert_eq!(update.muted, Some(true));
        assert_eq!(update.level, None);
    }
}
