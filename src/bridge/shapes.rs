//! The JSON objects that the REST routes and the WebSocket both send, built in one place so
//! the two surfaces cannot drift apart: track ids, the track object and the session object.

use serde_json::{json, Value};

use crate::control::SessionInfo;
use crate::engine::TransportState;
use crate::store::TrackRow;

/// `track_N` for track index N (1-based), the track id used on the wire.
pub fn track_id(index: u32) -> String {
    format!("track_{index}")
}

/// Inverse of [`track_id`]: `Some(N)` for `track_N` with N ≥ 1.
pub fn parse_track_id(id: &str) -> Option<u32> {
    let digits = id.strip_prefix("track_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n >= 1)
}

/// Seconds at `rate` frames per second.
pub fn seconds(frame: u64, rate: u32) -> f64 {
    frame as f64 / f64::from(rate.max(1))
}

/// A track object: `trackId`, `name`, `armed`, `level`, `pan`, `muted`, `soloed`,
/// `inputGain`, plus `channels`, `input`, `monitoring`.
pub fn track(row: &TrackRow) -> Value {
    json!({
        "trackId": track_id(row.index),
        "name": row.name,
        "armed": row.armed,
        "level": row.level,
        "pan": row.pan,
        "muted": row.muted,
        "soloed": row.soloed,
        "inputGain": row.input_gain,
        "channels": row.channels,
        "input": row.input,
        "monitoring": row.monitoring,
    })
}

/// A session object as the multitrack-recorder API shapes it, plus `name`, `state`,
/// `position` (frames) and `positionSeconds`.
pub fn session(info: &SessionInfo, buffer_size: u32) -> Value {
    let mut session = json!({
        "sessionId": info.row.id,
        "name": info.row.name,
        "projectId": info.row.project_id,
        "userId": info.row.user_id,
        "sampleRate": info.row.sample_rate,
        "bufferSize": buffer_size,
        "isRecording": info.state == TransportState::Recording,
        "state": info.state.as_str(),
        "position": info.position,
        "positionSeconds": seconds(info.position, info.row.sample_rate),
    });
    // Moved in, not through `json!`: that would copy every track object once more.
    session["tracks"] = Value::Array(info.tracks.iter().map(track).collect());
    session
}

/// `{"success": true, key: value}`: an answer of the multitrack API, `value` moved in (`json!`
/// would copy it, and a session object is most of what `GET /session/:id` costs).
pub fn success(key: &str, value: Value) -> Value {
    let mut answer = serde_json::Map::new();
    answer.insert("success".into(), Value::Bool(true));
    answer.insert(key.into(), value);
    Value::Object(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_track_object_uses_the_wire_names() {
        let row = TrackRow {
            index: 3,
            name: "Bass".into(),
            channels: 1,
            armed: true,
            input_gain: 1.5,
            level: 0.7,
            pan: -0.2,
            muted: false,
            soloed: true,
            input: "Virtual Input 3".into(),
            monitoring: "auto".into(),
        };
        let json = track(&row);
        assert_eq!(json["trackId"], "track_3");
        assert_eq!(json["inputGain"], 1.5);
        assert_eq!(json["level"], 0.7);
        assert_eq!(json["pan"], -0.2);
        assert_eq!(json["soloed"], true);
    }

    #[test]
    fn the_session_object_holds_its_tracks_and_answers_wrap_it() {
        let row = |index: u32| TrackRow {
            index,
            name: format!("Track {index}"),
            channels: 1,
            armed: index == 1,
            input_gain: 1.0,
            level: 1.0,
            pan: 0.0,
            muted: false,
            soloed: false,
            input: String::new(),
            monitoring: "auto".into(),
        };
        let info = SessionInfo {
            row: crate::store::SessionRow {
                id: "abc".into(),
                name: "Demo".into(),
                project_id: Some("p".into()),
                user_id: Some("u".into()),
                sample_rate: 48_000,
                created_at_ms: 0,
                active: true,
            },
            state: TransportState::Recording,
            position: 24_000,
            tracks: vec![row(1), row(2)],
        };
        let answer = success("session", session(&info, 256));
        assert_eq!(answer["success"], true);
        let json = &answer["session"];
        assert_eq!(json["sessionId"], "abc");
        assert_eq!(json["isRecording"], true);
        assert_eq!(json["positionSeconds"], 0.5);
        assert_eq!(json["bufferSize"], 256);
        assert_eq!(json["tracks"][1]["trackId"], "track_2");
        assert_eq!(json["tracks"][0]["armed"], true);
        assert_eq!(json["tracks"].as_array().unwrap().len(), 2);
    }
}
