//! The multitrack-recorder API (issue 4), mounted under `/api/v1/multitrack` and
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

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_track_id, JsonBody, PathArgs};
use crate::bridge::{shapes, ApiError, AppState};
use crate::control::{Control, ControlError, CreateSession, TrackUpdate};
use crate::engine::TransportState;

/// The multitrack routes, relative to their prefix.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/session", post(create))
        .route("/session/{session_id}", get(show).delete(delete))
        .route("/session/{session_id}/start", post(start))
        .route("/session/{session_id}/pause", post(pause))
        .route("/session/{session_id}/resume", post(resume))
        .route("/session/{session_id}/stop", post(stop))
        .route("/session/{session_id}/track/{track_id}", put(update_track))
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
) -> Reply {
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
    Ok(Json(shapes::success(
        "session",
        shapes::session(&info, control.info().buffer_size),
    )))
}

async fn show(State(state): State<AppState>, PathArgs(id): PathArgs<String>) -> Reply {
    let info = state.control.session(&id).await?;
    Ok(Json(shapes::success(
        "session",
        shapes::session(&info, state.control.info().buffer_size),
    )))
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
) -> Reply {
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
    Ok(Json(shapes::success("track", shapes::track(&row))))
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
