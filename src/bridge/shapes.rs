//! The JSON objects that the REST routes and the WebSocket both send, built in one place so
//! the two surfaces cannot drift apart: track ids, the track object and the session object.
//!
//! The objects are typed [`Serialize`] structs that borrow what they show: serializing one
//! writes straight into the answer's buffer, with no `serde_json::Value` tree to build and
//! free (that tree was most of what `GET /session/:id` cost). Their fields are declared in
//! alphabetical order, the order `serde_json::Value` objects serialize in, so the bytes on the
//! wire are what they were when the objects were `Value`s (tested below).

use std::fmt;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::control::{LiveSession, SessionInfo};
use crate::engine::TransportState;
use crate::store::{SessionRow, TrackRow};

/// `track_N` for track index N (1-based), the track id used on the wire.
pub fn track_id(index: u32) -> String {
    TrackId(index).to_string()
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

/// A track id (`track_N`) that serializes without building a `String` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackId(pub u32);

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "track_{}", self.0)
    }
}

impl Serialize for TrackId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A track object: `trackId`, `name`, `armed`, `level`, `pan`, `muted`, `soloed`,
/// `inputGain`, plus `channels`, `input`, `monitoring`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Track<'a> {
    armed: bool,
    channels: u8,
    input: &'a str,
    input_gain: f64,
    level: f64,
    monitoring: &'a str,
    muted: bool,
    name: &'a str,
    pan: f64,
    soloed: bool,
    track_id: TrackId,
}

impl<'a> Track<'a> {
    /// The track object of `row`.
    pub fn of(row: &'a TrackRow) -> Track<'a> {
        Track {
            armed: row.armed,
            channels: row.channels,
            input: &row.input,
            input_gain: row.input_gain,
            level: row.level,
            monitoring: &row.monitoring,
            muted: row.muted,
            name: &row.name,
            pan: row.pan,
            soloed: row.soloed,
            track_id: TrackId(row.index),
        }
    }
}

/// A session object as the multitrack-recorder API shapes it, plus `name`, `state`,
/// `position` (frames) and `positionSeconds`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session<'a> {
    buffer_size: u32,
    is_recording: bool,
    name: &'a str,
    position: u64,
    position_seconds: f64,
    project_id: Option<&'a str>,
    sample_rate: u32,
    session_id: &'a str,
    state: &'static str,
    #[serde(serialize_with = "track_list")]
    tracks: &'a [TrackRow],
    user_id: Option<&'a str>,
}

impl<'a> Session<'a> {
    /// The session object of a session whose record is `row`, with `tracks`, in `state` at
    /// `position`, on a graph of `buffer_size` frames per period.
    pub fn new(
        row: &'a SessionRow,
        state: TransportState,
        position: u64,
        tracks: &'a [TrackRow],
        buffer_size: u32,
    ) -> Session<'a> {
        Session {
            buffer_size,
            is_recording: state == TransportState::Recording,
            name: &row.name,
            position,
            position_seconds: seconds(position, row.sample_rate),
            project_id: row.project_id.as_deref(),
            sample_rate: row.sample_rate,
            session_id: &row.id,
            state: state.as_str(),
            tracks,
            user_id: row.user_id.as_deref(),
        }
    }

    /// The session object of a snapshot.
    pub fn of(info: &'a SessionInfo, buffer_size: u32) -> Session<'a> {
        Session::new(
            &info.row,
            info.state,
            info.position,
            &info.tracks,
            buffer_size,
        )
    }

    /// The session object of a published view at its live position.
    pub fn live(live: &'a LiveSession, buffer_size: u32) -> Session<'a> {
        let view = &live.view;
        Session::new(
            &view.row,
            view.state,
            live.position,
            &view.tracks,
            buffer_size,
        )
    }
}

fn track_list<S: Serializer>(tracks: &&[TrackRow], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(tracks.iter().map(Track::of))
}

/// `{"session":{..},"success":true}`: the multitrack API's answer holding a session.
#[derive(Serialize)]
pub struct SessionAnswer<'a> {
    /// The session object.
    pub session: Session<'a>,
    /// Always `true` (errors answer through [`super::ApiError`]).
    pub success: bool,
}

/// `{"success":true,"track":{..}}`: the multitrack API's answer holding a track.
#[derive(Serialize)]
pub struct TrackAnswer<'a> {
    /// Always `true` (errors answer through [`super::ApiError`]).
    pub success: bool,
    /// The track object.
    pub track: Track<'a>,
}

/// A track object as a JSON value (the WebSocket's replies).
pub fn track(row: &TrackRow) -> Value {
    to_value(Track::of(row))
}

/// A session object as a JSON value (the WebSocket's replies).
pub fn session(info: &SessionInfo, buffer_size: u32) -> Value {
    to_value(Session::of(info, buffer_size))
}

/// The JSON value of one of the objects above. They hold only strings, numbers, booleans and
/// lists, and serialize with string keys, which `serde_json::to_value` cannot fail on.
fn to_value(object: impl Serialize) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn track_row(index: u32) -> TrackRow {
        TrackRow {
            index,
            name: format!("Track \"{index}\" é"),
            channels: 1,
            armed: index == 1,
            input_gain: 1.5,
            level: 0.7,
            pan: -0.2,
            muted: false,
            soloed: index == 2,
            input: format!("Virtual Input {index}"),
            monitoring: "auto".into(),
        }
    }

    fn info(project_id: Option<&str>) -> SessionInfo {
        SessionInfo {
            row: SessionRow {
                id: "abc".into(),
                name: "Demo".into(),
                project_id: project_id.map(String::from),
                user_id: Some("u".into()),
                sample_rate: 48_000,
                created_at_ms: 0,
                active: true,
            },
            state: TransportState::Recording,
            position: 24_000,
            tracks: vec![track_row(1), track_row(2)],
        }
    }

    /// The objects as they were built before they were typed: `serde_json::Value`s.
    fn track_value(row: &TrackRow) -> Value {
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

    fn session_value(info: &SessionInfo, buffer_size: u32) -> Value {
        json!({
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
            "tracks": info.tracks.iter().map(track_value).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn the_track_object_uses_the_wire_names() {
        let json = track(&track_row(3));
        assert_eq!(json["trackId"], "track_3");
        assert_eq!(json["inputGain"], 1.5);
        assert_eq!(json["level"], 0.7);
        assert_eq!(json["pan"], -0.2);
        assert_eq!(json["soloed"], false);
        assert_eq!(json["channels"], 1);
        assert_eq!(json.as_object().unwrap().len(), 11);
    }

    #[test]
    fn the_session_object_holds_its_tracks_and_answers_wrap_it() {
        let info = info(Some("p"));
        let answer = serde_json::to_value(SessionAnswer {
            session: Session::of(&info, 256),
            success: true,
        })
        .unwrap();
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

    #[test]
    fn typed_objects_serialize_to_the_same_bytes_as_the_values_they_replace() {
        for project_id in [Some("p"), None] {
            let info = info(project_id);
            let typed = serde_json::to_string(&SessionAnswer {
                session: Session::of(&info, 256),
                success: true,
            })
            .unwrap();
            let value = json!({"success": true, "session": session_value(&info, 256)});
            assert_eq!(typed, value.to_string());
            assert_eq!(session(&info, 256), session_value(&info, 256));
        }
        let row = track_row(12);
        let typed = serde_json::to_string(&TrackAnswer {
            success: true,
            track: Track::of(&row),
        })
        .unwrap();
        let value = json!({"success": true, "track": track_value(&row)});
        assert_eq!(typed, value.to_string());
    }

    #[test]
    fn track_ids_print_and_parse_back() {
        assert_eq!(track_id(7), "track_7");
        assert_eq!(
            serde_json::to_string(&TrackId(42)).unwrap(),
            r#""track_42""#
        );
        assert_eq!(parse_track_id(&track_id(u32::MAX)), Some(u32::MAX));
        assert_eq!(parse_track_id("track_0"), None);
    }
}
