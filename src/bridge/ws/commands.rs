//! The `control` frames: each command's `data` parsed into a typed request and handed to
//! [`Control`], one to one. Validation of values (ranges, names, states) stays in control;
//! here only the shape of `data` is checked (types, unknown fields, track ids).

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::wire;
use crate::backend::Direction;
use crate::control::{AddTrack, Control, ControlError, ControlResult, CreateSession, TrackUpdate};

/// Every command, for the `unknown command` message and docs/protocol.md.
pub const COMMANDS: [&str; 24] = [
    "get_info",
    "get_devices",
    "list_sessions",
    "create_session",
    "get_session",
    "open_session",
    "close_session",
    "delete_session",
    "record",
    "play",
    "pause",
    "resume",
    "stop",
    "seek",
    "get_metrics",
    "get_meters",
    "get_track",
    "set_track",
    "add_track",
    "remove_track",
    "ping",
    "audio_out",
    "audio_out_stop",
    "audio_in_stop",
];

/// `data` of commands that only name a session.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Target {
    session_id: Option<String>,
}

/// `data` of `create_session`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct CreateData {
    name: Option<String>,
    tracks: Option<u32>,
    project_id: Option<String>,
    user_id: Option<String>,
}

/// `data` of `seek`: exactly one of `frame` and `seconds`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct SeekData {
    session_id: Option<String>,
    frame: Option<u64>,
    seconds: Option<f64>,
}

/// `data` of `get_track` and `remove_track`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TrackTarget {
    #[serde(default)]
    session_id: Option<String>,
    track_id: String,
}

/// `data` of `set_track`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SetTrackData {
    #[serde(default)]
    session_id: Option<String>,
    track_id: String,
    name: Option<String>,
    armed: Option<bool>,
    input_gain: Option<f64>,
    level: Option<f64>,
    pan: Option<f64>,
    muted: Option<bool>,
    soloed: Option<bool>,
    input: Option<String>,
    monitoring: Option<String>,
}

/// `data` of `add_track`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AddTrackData {
    #[serde(default)]
    session_id: Option<String>,
    name: String,
    channels: Option<u8>,
    input: Option<String>,
    armed: Option<bool>,
}

/// Runs one command for a connection bound to `bound` (the `/ws/audio/:sessionId` alias),
/// returning the reply's `data`.
pub async fn run(
    control: &Control,
    bound: Option<&str>,
    command: &str,
    data: Value,
) -> ControlResult<Value> {
    let session = |explicit: Option<String>| -> ControlResult<String> {
        explicit
            .or_else(|| bound.map(str::to_string))
            .ok_or_else(|| {
                ControlError::invalid_argument(format!(
                    "{command} needs data.sessionId (or a connection to /ws/audio/SESSION_ID)"
                ))
            })
    };
    match command {
        "ping" => {
            parse::<Target>(command, data)?;
            Ok(json!({}))
        }
        "get_info" => {
            parse::<Target>(command, data)?;
            Ok(wire::info(&control.info()))
        }
        "get_devices" => {
            parse::<Target>(command, data)?;
            let devices: Vec<Value> = control
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
                    })
                })
                .collect();
            Ok(json!({ "devices": devices }))
        }
        "list_sessions" => {
            parse::<Target>(command, data)?;
            let stored = control.stored_sessions().await?;
            Ok(json!({
                "sessions": stored.iter().map(wire::stored_session).collect::<Vec<_>>(),
            }))
        }
        "create_session" => {
            let d: CreateData = parse(command, data)?;
            let info = control
                .create_session(CreateSession {
                    name: d.name.unwrap_or_else(|| "Session".into()),
                    tracks: d.tracks,
                    project_id: d.project_id,
                    user_id: d.user_id,
                })
                .await?;
            Ok(wire::session(&info, control.info().buffer_size))
        }
        "get_session" => {
            let id = session(parse::<Target>(command, data)?.session_id)?;
            session_reply(control, &id).await
        }
        "open_session" => {
            let id = session(parse::<Target>(command, data)?.session_id)?;
            let info = control.open_session(&id).await?;
            Ok(wire::session(&info, control.info().buffer_size))
        }
        "close_session" => {
            let id = session(parse::<Target>(command, data)?.session_id)?;
            control.close_session(&id).await?;
            Ok(json!({ "sessionId": id }))
        }
        "delete_session" => {
            let id = session(parse::<Target>(command, data)?.session_id)?;
            control.delete_session(&id).await?;
            Ok(json!({ "sessionId": id }))
        }
        "record" | "play" | "pause" | "resume" => {
            let id = session(parse::<Target>(command, data)?.session_id)?;
            match command {
                "record" => control.record(&id).await?,
                "play" => control.play(&id).await?,
                "pause" => control.pause(&id).await?,
                _ => control.resume(&id).await?,
            }
            transport_reply(control, &id).await
        }
        "stop" => {
            let id = session(parse::<Target>(command, data)?.session_id)?;
            let metrics = control.stop(&id).await?;
            let mut reply = transport_reply(control, &id).await?;
            reply["metrics"] = to_value(&metrics)?;
            Ok(reply)
        }
        "seek" => {
            let d: SeekData = parse(command, data)?;
            let id = session(d.session_id)?;
            let frame = match (d.frame, d.seconds) {
                (Some(frame), None) => frame,
                (None, Some(seconds)) if seconds.is_finite() && seconds >= 0.0 => {
                    let rate = control.session(&id).await?.row.sample_rate;
                    (seconds * f64::from(rate)).round() as u64
                }
                (None, Some(seconds)) => {
                    return Err(ControlError::invalid_argument(format!(
                        "seconds must be a finite number >= 0, got {seconds}"
                    )))
                }
                _ => {
                    return Err(ControlError::invalid_argument(
                        "seek needs exactly one of data.frame and data.seconds",
                    ))
                }
            };
            control.seek(&id, frame).await?;
            transport_reply(control, &id).await
        }
        "get_metrics" => {
            let id = session(parse::<Target>(command, data)?.session_id)?;
            to_value(&control.metrics(&id).await?)
        }
        "get_meters" => {
            let id = session(parse::<Target>(command, data)?.session_id)?;
            let meters = control.track_meters(&id)?;
            Ok(json!({ "sessionId": id, "tracks": wire::meters_list(&meters) }))
        }
        "get_track" => {
            let d: TrackTarget = parse(command, data)?;
            let index = track_index(&d.track_id)?;
            let id = session(d.session_id)?;
            Ok(wire::track(&control.track(&id, index).await?))
        }
        "set_track" => {
            let d: SetTrackData = parse(command, data)?;
            let index = track_index(&d.track_id)?;
            let id = session(d.session_id)?;
            let update = TrackUpdate {
                name: d.name,
                armed: d.armed,
                input_gain: d.input_gain,
                level: d.level,
                pan: d.pan,
                muted: d.muted,
                soloed: d.soloed,
                input: d.input,
                monitoring: d.monitoring,
            };
            Ok(wire::track(
                &control.update_track(&id, index, update).await?,
            ))
        }
        "add_track" => {
            let d: AddTrackData = parse(command, data)?;
            let id = session(d.session_id)?;
            let row = control
                .add_track(
                    &id,
                    AddTrack {
                        name: d.name,
                        channels: d.channels,
                        input: d.input,
                        armed: d.armed,
                    },
                )
                .await?;
            Ok(wire::track(&row))
        }
        "remove_track" => {
            let d: TrackTarget = parse(command, data)?;
            let index = track_index(&d.track_id)?;
            let id = session(d.session_id)?;
            control.remove_track(&id, index).await?;
            Ok(json!({ "sessionId": id, "trackId": d.track_id }))
        }
        _ => Err(ControlError::invalid_argument(format!(
            "unknown command {command:?}; commands are {}",
            COMMANDS.join(", ")
        ))),
    }
}

/// `data` as `T`; absent or `null` data reads as `{}`.
fn parse<T: DeserializeOwned>(command: &str, data: Value) -> ControlResult<T> {
    let data = if data.is_null() { json!({}) } else { data };
    if !data.is_object() {
        return Err(ControlError::invalid_argument(format!(
            "data of {command} must be an object"
        )));
    }
    serde_json::from_value(data)
        .map_err(|e| ControlError::invalid_argument(format!("data of {command}: {e}")))
}

/// The index of a `track_N` id.
fn track_index(track_id: &str) -> ControlResult<u32> {
    wire::parse_track_id(track_id).ok_or_else(|| {
        ControlError::invalid_argument(format!(
            "trackId must be track_N (N = 1, 2, …), got {track_id:?}"
        ))
    })
}

async fn session_reply(control: &Control, id: &str) -> ControlResult<Value> {
    let info = control.session(id).await?;
    Ok(wire::session(&info, control.info().buffer_size))
}

async fn transport_reply(control: &Control, id: &str) -> ControlResult<Value> {
    let info = control.session(id).await?;
    Ok(wire::transport(
        id,
        info.state,
        info.position,
        info.row.sample_rate,
    ))
}

fn to_value<T: serde::Serialize>(value: &T) -> ControlResult<Value> {
    serde_json::to_value(value)
        .map_err(|e| ControlError::invalid_state(format!("cannot encode the reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_with_a_wrong_type_or_an_unknown_field_is_an_invalid_argument() {
        let err =
            parse::<SetTrackData>("set_track", json!({"trackId": "track_1", "level": "loud"}))
                .err()
                .unwrap();
        assert_eq!(err.code, crate::control::ErrorCode::InvalidArgument);
        assert!(err.message.contains("set_track"), "{err}");
        let err = parse::<Target>("play", json!({"sesionId": "x"}))
            .err()
            .unwrap();
        assert!(err.message.contains("sesionId"), "{err}");
        let err = parse::<Target>("play", json!([1])).err().unwrap();
        assert!(err.message.contains("object"), "{err}");
    }

    #[test]
    fn absent_data_reads_as_empty() {
        let target: Target = parse("play", Value::Null).unwrap();
        assert!(target.session_id.is_none());
    }

    #[test]
    fn track_ids_must_be_track_n() {
        assert_eq!(track_index("track_2").unwrap(), 2);
        let err = track_index("2").unwrap_err();
        assert_eq!(err.code, crate::control::ErrorCode::InvalidArgument);
    }
}
