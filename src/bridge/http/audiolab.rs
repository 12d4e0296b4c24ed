//! The AudioLab overdubbing API (issue 4). Field names are snake_case, as that API has them.
//!
//! A *project* is a session: `{project}` in a path is a session id. A *track* `{track}` is
//! either `SESSION_ID:track_N` (always unambiguous), or a bare `track_N`, which names track N
//! of the only active session (with no active session the answer is `404`, with several `400`
//! asking for the `SESSION_ID:track_N` form). Take ids are the store's take ids, as returned
//! by `record/start`.
//!
//! | method | path | input | answer |
//! |---|---|---|---|
//! | GET | `/health` | | `{"status":"healthy|degraded","environment":{..},"services":{..}}` |
//! | GET | `/api/audio/devices` | | `{"success":true,"backend","sample_rate","devices":[{"name","channels","direction","first_channel"}]}` |
//! | POST | `/api/audio/tracks/{track}/record/enable` | optional device: body `{"device"}` or `?device=` | `{"success":true,"track":{..}}` |
//! | POST | `/api/audio/tracks/{track}/record/start` | | `{"success":true,"session_id","track_id","take_id","path","state"}` |
//! | POST | `/api/audio/tracks/{track}/record/stop/{take}` | | `{"success":true,"take":{..},"metrics":{..}}` |
//! | GET | `/api/audio/recording/active` | | `{"success":true,"active","recordings":[..]}` |
//! | POST | `/api/audio/projects/{project}/playback/load`, `play`, `pause`, `stop` | | the playback status (`stop` adds `metrics`) |
//! | POST | `/api/audio/projects/{project}/playback/seek` | `position` (seconds) or `frame`, in the body or the query | the playback status |
//! | GET | `/api/audio/projects/{project}/playback/status` | | `{"success":true,"project_id","session_id","state","is_playing","is_recording","is_paused","position","position_frames","sample_rate"}` |
//! | POST | `/api/audio/tracks/{track}/volume?volume=0.8`, `mute?muted=true`, `solo?soloed=true` | query | `{"success":true,"track":{..}}` |
//!
//! Semantics: `record/enable` arms the track (and sets its input when a device is given);
//! `record/start` starts recording the track's session (every armed track records: the
//! transport is per session) unless it already records, and answers the track's open take;
//! `record/stop/{take}` stops the session's transport, finalizing every open take, and
//! answers that take as stored and the run's metrics. `load` activates a stored session;
//! `play` resumes a paused transport and starts a stopped one. `is_playing` is true while the
//! transport rolls (playing or recording). `volume` is the track's fader (`level`, 0–2).
//! `/health` answers `200` in both states: `status` is `degraded` when the database check (a
//! real query) fails, and `services.overdubbing_capable` is then false.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_track_id, track_id, OptionalJsonBody, PathArgs, QueryArgs};
use crate::backend::Direction;
use crate::bridge::{ApiError, AppState};
use crate::control::{Control, ControlError, DaemonInfo, ErrorCode, TrackUpdate};
use crate::engine::TransportState;
use crate::store::{TakeRow, TakeStatus, TrackRow};

/// The AudioLab routes (absolute paths).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/api/audio/devices", get(devices))
        .route(
            "/api/audio/tracks/{track}/record/enable",
            post(enable_record),
        )
        .route("/api/audio/tracks/{track}/record/start", post(start_record))
        .route(
            "/api/audio/tracks/{track}/record/stop/{take}",
            post(stop_record),
        )
        .route("/api/audio/recording/active", get(active_recordings))
        .route("/api/audio/projects/{project}/playback/load", post(load))
        .route("/api/audio/projects/{project}/playback/play", post(play))
        .route("/api/audio/projects/{project}/playback/pause", post(pause))
        .route("/api/audio/projects/{project}/playback/stop", post(stop))
        .route("/api/audio/projects/{project}/playback/seek", post(seek))
        .route("/api/audio/projects/{project}/playback/status", get(status))
        .route("/api/audio/tracks/{track}/volume", post(volume))
        .route("/api/audio/tracks/{track}/mute", post(mute))
        .route("/api/audio/tracks/{track}/solo", post(solo))
}

type Reply = Result<Json<Value>, ApiError>;

async fn health(State(state): State<AppState>) -> Json<Value> {
    let store_ok = state.control.store_ok().await;
    let active = state.control.active_sessions().await.len();
    Json(health_body(store_ok, &state.control.info(), active))
}

/// The `/health` document from the database check, the daemon's facts and the number of
/// active sessions (each runs its own engine).
fn health_body(store_ok: bool, info: &DaemonInfo, active_sessions: usize) -> Value {
    let hardware = info.backend != "virtual";
    json!({
        "status": if store_ok { "healthy" } else { "degraded" },
        "version": info.version,
        "environment": {
            "type": info.environment,
            "audio_capability": if hardware { "hardware" } else { "virtual" },
            "is_cloud_deployment": info.environment == "cloud",
            "has_audio_hardware": hardware,
        },
        "services": {
            "database": if store_ok { "connected" } else { "error" },
            "audio_engine": if active_sessions > 0 { "running" } else { "idle" },
            "recording_system": info.backend,
            "overdubbing_capable": store_ok,
        },
        "active_sessions": active_sessions,
        "sample_rate": info.sample_rate,
        "buffer_size": info.buffer_size,
    })
}

async fn devices(State(state): State<AppState>) -> Json<Value> {
    let info = state.control.info();
    let devices: Vec<Value> = state
        .control
        .devices()
        .iter()
        .map(|d| {
            json!({
                "name": d.name,
                "channels": d.channels,
                "direction": match d.direction {
                    Direction::Input => "input",
                    Direction::Output => "output",
                },
                "first_channel": d.first_channel,
            })
        })
        .collect();
    Json(json!({
        "success": true,
        "backend": info.backend,
        "sample_rate": info.sample_rate,
        "devices": devices,
    }))
}

/// `device` of `record/enable`, from the body or the query.
#[derive(Default, Deserialize)]
struct DeviceArgs {
    device: Option<String>,
}

async fn enable_record(
    State(state): State<AppState>,
    PathArgs(track): PathArgs<String>,
    QueryArgs(query): QueryArgs<DeviceArgs>,
    OptionalJsonBody(body): OptionalJsonBody<DeviceArgs>,
) -> Reply {
    let (session, index) = resolve_track(&state.control, &track).await?;
    let update = TrackUpdate {
        armed: Some(true),
        input: body.device.or(query.device),
        ..TrackUpdate::default()
    };
    let row = state.control.update_track(&session, index, update).await?;
    Ok(Json(
        json!({"success": true, "track": track_json(&session, &row)}),
    ))
}

async fn start_record(State(state): State<AppState>, PathArgs(track): PathArgs<String>) -> Reply {
    let control = &state.control;
    let (session, index) = resolve_track(control, &track).await?;
    if !control.track(&session, index).await?.armed {
        return Err(ApiError(ControlError::invalid_state(format!(
            "{} is not armed: POST /api/audio/tracks/{track}/record/enable first",
            track_id(index)
        ))));
    }
    if control.session(&session).await?.state != TransportState::Recording {
        control.record(&session).await?;
    }
    let take = control
        .takes(&session)
        .await?
        .into_iter()
        .rev()
        .find(|t| t.track_index == index && t.status == TakeStatus::Recording)
        .ok_or_else(|| {
            ApiError(ControlError::invalid_state(format!(
                "{} has no open take: it was armed after recording started and waits for the next one",
                track_id(index)
            )))
        })?;
    Ok(Json(json!({
        "success": true,
        "session_id": session,
        "track_id": track_id(index),
        "take_id": take.id,
        "path": state.control.data_dir().join(&take.path),
        "state": TransportState::Recording.as_str(),
    })))
}

async fn stop_record(
    State(state): State<AppState>,
    PathArgs((track, take)): PathArgs<(String, String)>,
) -> Reply {
    let take: i64 = take.parse().map_err(|_| {
        ControlError::invalid_argument(format!(
            "a take id is the number record/start answered, got {take:?}"
        ))
    })?;
    let control = &state.control;
    let (session, index) = resolve_track(control, &track).await?;
    let find = |takes: Vec<TakeRow>| {
        takes
            .into_iter()
            .find(|t| t.id == take && t.track_index == index)
            .ok_or_else(|| {
                ApiError(ControlError::not_found(format!(
                    "no take {take} on {} of session {session}",
                    track_id(index)
                )))
            })
    };
    let before = find(control.takes(&session).await?)?;
    if before.status != TakeStatus::Recording {
        return Err(ApiError(ControlError::invalid_state(format!(
            "take {take} is already {}",
            before.status.as_str()
        ))));
    }
    let metrics = control.stop(&session).await?;
    let after = find(control.takes(&session).await?)?;
    Ok(Json(json!({
        "success": true,
        "take": take_json(control, &after),
        "metrics": metrics,
    })))
}

async fn active_recordings(State(state): State<AppState>) -> Reply {
    let control = &state.control;
    let mut recordings = Vec::new();
    for id in control.active_sessions().await {
        let info = match control.session(&id).await {
            Ok(info) => info,
            // Closed since it was listed.
            Err(e) if e.code == ErrorCode::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let open: Vec<TakeRow> = control
            .takes(&id)
            .await?
            .into_iter()
            .filter(|t| t.status == TakeStatus::Recording)
            .collect();
        if open.is_empty() {
            continue;
        }
        let rate = f64::from(info.row.sample_rate.max(1));
        recordings.push(json!({
            "session_id": id,
            "project_id": info.row.project_id,
            "state": info.state.as_str(),
            "position": info.position as f64 / rate,
            "position_frames": info.position,
            "tracks": open.iter().map(|t| track_id(t.track_index)).collect::<Vec<_>>(),
            "takes": open.iter().map(|t| take_json(control, t)).collect::<Vec<_>>(),
        }));
    }
    Ok(Json(json!({
        "success": true,
        "active": !recordings.is_empty(),
        "recordings": recordings,
    })))
}

async fn load(State(state): State<AppState>, PathArgs(project): PathArgs<String>) -> Reply {
    state.control.open_session(&project).await?;
    playback_status(&state.control, &project, None).await
}

async fn play(State(state): State<AppState>, PathArgs(project): PathArgs<String>) -> Reply {
    let control = &state.control;
    match control.session(&project).await?.state {
        TransportState::Paused => control.resume(&project).await?,
        _ => control.play(&project).await?,
    }
    playback_status(control, &project, None).await
}

async fn pause(State(state): State<AppState>, PathArgs(project): PathArgs<String>) -> Reply {
    state.control.pause(&project).await?;
    playback_status(&state.control, &project, None).await
}

async fn stop(State(state): State<AppState>, PathArgs(project): PathArgs<String>) -> Reply {
    let metrics = state.control.stop(&project).await?;
    let metrics = serde_json::to_value(metrics)
        .map_err(|e| ApiError(ControlError::backend(format!("metrics: {e}"))))?;
    playback_status(&state.control, &project, Some(metrics)).await
}

/// Where `seek` goes: `position` in seconds or `frame`, exactly one of them.
#[derive(Default, Deserialize)]
struct SeekArgs {
    position: Option<f64>,
    frame: Option<u64>,
}

impl SeekArgs {
    /// The target frame at `rate`; a negative, non-finite or missing position is refused.
    fn frame(&self, rate: u32) -> Result<u64, ControlError> {
        match (self.position, self.frame) {
            (Some(_), Some(_)) => Err(ControlError::invalid_argument(
                "give either position (seconds) or frame, not both",
            )),
            (None, Some(frame)) => Ok(frame),
            (Some(seconds), None) => {
                if !seconds.is_finite() || seconds < 0.0 {
                    return Err(ControlError::invalid_argument(format!(
                        "position must be a finite number of seconds from 0, got {seconds}"
                    )));
                }
                let frame = (seconds * f64::from(rate)).round();
                if frame >= u64::MAX as f64 {
                    return Err(ControlError::invalid_argument(format!(
                        "position {seconds} s is out of range"
                    )));
                }
                Ok(frame as u64)
            }
            (None, None) => Err(ControlError::invalid_argument(
                "seek needs position (seconds) or frame, in the JSON body or the query string",
            )),
        }
    }
}

async fn seek(
    State(state): State<AppState>,
    PathArgs(project): PathArgs<String>,
    QueryArgs(query): QueryArgs<SeekArgs>,
    OptionalJsonBody(body): OptionalJsonBody<SeekArgs>,
) -> Reply {
    let control = &state.control;
    let rate = control.session(&project).await?.row.sample_rate;
    let args = if body.position.is_some() || body.frame.is_some() {
        body
    } else {
        query
    };
    control.seek(&project, args.frame(rate)?).await?;
    playback_status(control, &project, None).await
}

async fn status(State(state): State<AppState>, PathArgs(project): PathArgs<String>) -> Reply {
    playback_status(&state.control, &project, None).await
}

/// The playback status of a project, with the stop's metrics when there are some.
async fn playback_status(control: &Control, project: &str, metrics: Option<Value>) -> Reply {
    let info = control.session(project).await?;
    let rate = f64::from(info.row.sample_rate.max(1));
    let mut body = json!({
        "success": true,
        "project_id": project,
        "session_id": info.row.id,
        "name": info.row.name,
        "state": info.state.as_str(),
        "is_playing": matches!(info.state, TransportState::Playing | TransportState::Recording),
        "is_recording": info.state == TransportState::Recording,
        "is_paused": info.state == TransportState::Paused,
        "position": info.position as f64 / rate,
        "position_frames": info.position,
        "sample_rate": info.row.sample_rate,
        "tracks": info.tracks.iter().map(|t| track_json(project, t)).collect::<Vec<_>>(),
    });
    if let (Some(metrics), Some(map)) = (metrics, body.as_object_mut()) {
        map.insert("metrics".into(), metrics);
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
struct VolumeArgs {
    volume: f64,
}

#[derive(Deserialize)]
struct MuteArgs {
    muted: bool,
}

#[derive(Deserialize)]
struct SoloArgs {
    soloed: bool,
}

async fn volume(
    State(state): State<AppState>,
    PathArgs(track): PathArgs<String>,
    QueryArgs(args): QueryArgs<VolumeArgs>,
) -> Reply {
    let update = TrackUpdate {
        level: Some(args.volume),
        ..TrackUpdate::default()
    };
    set_track(&state.control, &track, update).await
}

async fn mute(
    State(state): State<AppState>,
    PathArgs(track): PathArgs<String>,
    QueryArgs(args): QueryArgs<MuteArgs>,
) -> Reply {
    let update = TrackUpdate {
        muted: Some(args.muted),
        ..TrackUpdate::default()
    };
    set_track(&state.control, &track, update).await
}

async fn solo(
    State(state): State<AppState>,
    PathArgs(track): PathArgs<String>,
    QueryArgs(args): QueryArgs<SoloArgs>,
) -> Reply {
    let update = TrackUpdate {
        soloed: Some(args.soloed),
        ..TrackUpdate::default()
    };
    set_track(&state.control, &track, update).await
}

async fn set_track(control: &Control, track: &str, update: TrackUpdate) -> Reply {
    let (session, index) = resolve_track(control, track).await?;
    let row = control.update_track(&session, index, update).await?;
    Ok(Json(
        json!({"success": true, "track": track_json(&session, &row)}),
    ))
}

/// The session and track index a `{track}` path segment names (module docs: the rule).
async fn resolve_track(control: &Control, track: &str) -> Result<(String, u32), ControlError> {
    if let Some((session, track)) = track.split_once(':') {
        return Ok((session.to_string(), parse_track_id(track)?));
    }
    let index = parse_track_id(track)?;
    let mut active = control.active_sessions().await;
    match active.len() {
        1 => Ok((active.remove(0), index)),
        0 => Err(ControlError::not_found(format!(
            "no active session to find {track} in"
        ))),
        n => Err(ControlError::invalid_argument(format!(
            "{n} sessions are active: name the track as SESSION_ID:{track}"
        ))),
    }
}

/// The AudioLab track object.
fn track_json(session: &str, row: &TrackRow) -> Value {
    json!({
        "track_id": track_id(row.index),
        "session_id": session,
        "name": row.name,
        "armed": row.armed,
        "volume": row.level,
        "pan": row.pan,
        "muted": row.muted,
        "soloed": row.soloed,
        "input_gain": row.input_gain,
        "input": row.input,
        "channels": row.channels,
        "monitoring": row.monitoring,
    })
}

/// The AudioLab take object (the path is absolute).
fn take_json(control: &Control, take: &TakeRow) -> Value {
    json!({
        "take_id": take.id,
        "session_id": take.session_id,
        "track_id": track_id(take.track_index),
        "status": take.status.as_str(),
        "path": control.data_dir().join(&take.path),
        "channels": take.channels,
        "sample_rate": take.sample_rate,
        "format": take.format,
        "start_frame": take.start_frame,
        "frames": take.frames,
        "duration_seconds": take.frames as f64 / f64::from(take.sample_rate.max(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(environment: &str) -> DaemonInfo {
        DaemonInfo {
            version: "0.1.0".into(),
            backend: "virtual".into(),
            sample_rate: 48_000,
            buffer_size: 256,
            environment: environment.into(),
        }
    }

    #[test]
    fn health_reports_a_failing_store_as_degraded() {
        let ok = health_body(true, &info("container"), 1);
        assert_eq!(ok["status"], "healthy");
        assert_eq!(ok["services"]["database"], "connected");
        assert_eq!(ok["services"]["recording_system"], "virtual");
        assert_eq!(ok["services"]["overdubbing_capable"], true);
        assert_eq!(ok["services"]["audio_engine"], "running");
        assert_eq!(ok["environment"]["type"], "container");
        assert_eq!(ok["environment"]["has_audio_hardware"], false);
        let bad = health_body(false, &info("ci"), 0);
        assert_eq!(bad["status"], "degraded");
        assert_eq!(bad["services"]["database"], "error");
        assert_eq!(bad["services"]["overdubbing_capable"], false);
        assert_eq!(bad["services"]["audio_engine"], "idle");
    }

    #[test]
    fn seek_takes_seconds_or_frames_and_refuses_the_rest() {
        let at = |position, frame| SeekArgs { position, frame }.frame(48_000);
        assert_eq!(at(Some(1.5), None).unwrap(), 72_000);
        assert_eq!(at(None, Some(480)).unwrap(), 480);
        assert_eq!(at(Some(0.0), None).unwrap(), 0);
        for bad in [
            at(Some(-1.0), None),
            at(Some(f64::NAN), None),
            at(Some(f64::INFINITY), None),
            at(Some(1e300), None),
            at(None, None),
            at(Some(1.0), Some(1)),
        ] {
            assert_eq!(bad.unwrap_err().code, ErrorCode::InvalidArgument);
        }
    }
}
