//! The JSON shapes of the WebSocket protocol (docs/protocol.md): sessions, tracks, pushes and
//! error frames, camelCase like the multitrack-recorder API. Pure functions, no I/O.

use serde::{Serialize, Serializer};
use serde_json::{json, Value};

use crate::control::{ControlError, DaemonInfo, Event, StoredSession, TrackField};
use crate::engine::TransportState;

/// A push topic a client can subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topic {
    /// `position`: frame and seconds while the transport rolls (latest value).
    Position,
    /// `meters`: peak and RMS per track at the client's rate (latest value).
    Meters,
    /// `transport`: state changes.
    Transport,
    /// `track`: tracks added, removed or changed.
    Track,
    /// `take`: take files finalized.
    Take,
    /// `system`: sessions opened or closed, errors outside a request.
    System,
}

impl Topic {
    /// Every topic, in the order replies list them.
    pub const ALL: [Topic; 6] = [
        Topic::Position,
        Topic::Meters,
        Topic::Transport,
        Topic::Track,
        Topic::Take,
        Topic::System,
    ];

    /// The topic's word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Position => "position",
            Topic::Meters => "meters",
            Topic::Transport => "transport",
            Topic::Track => "track",
            Topic::Take => "take",
            Topic::System => "system",
        }
    }

    /// Inverse of [`Topic::as_str`].
    pub fn parse(word: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.as_str() == word)
    }
}

use crate::bridge::shapes::TrackId;
pub use crate::bridge::shapes::{parse_track_id, seconds, session, track, track_id};

/// A stored session in `list_sessions`.
pub fn stored_session(stored: &StoredSession) -> Value {
    json!({
        "sessionId": stored.row.id,
        "name": stored.row.name,
        "projectId": stored.row.project_id,
        "userId": stored.row.user_id,
        "sampleRate": stored.row.sample_rate,
        "createdAt": stored.row.created_at_ms,
        "active": stored.row.active,
        "trackCount": stored.tracks,
    })
}

/// The daemon facts of `get_info`.
pub fn info(info: &DaemonInfo) -> Value {
    json!({
        "version": info.version,
        "backend": info.backend,
        "sampleRate": info.sample_rate,
        "bufferSize": info.buffer_size,
        "environment": info.environment,
    })
}

/// A transport snapshot (`state`, `position`, `positionSeconds`) of `session`.
pub fn transport(session: &str, state: TransportState, frame: u64, rate: u32) -> Value {
    json!({
        "sessionId": session,
        "state": state.as_str(),
        "position": frame,
        "positionSeconds": seconds(frame, rate),
    })
}

/// `{"type":"reply","id","data"}`.
pub fn reply(id: &Value, data: Value) -> String {
    json!({"type": "reply", "id": id, "data": data}).to_string()
}

/// `{"type":"error","id","code","message"}`; `code` is [`crate::control::ErrorCode::as_str`].
pub fn error(id: &Value, error: &ControlError) -> String {
    json!({
        "type": "error",
        "id": id,
        "code": error.code.as_str(),
        "message": error.message,
    })
    .to_string()
}

/// The `position` push: `{"position","positionSeconds","sessionId","state","type"}`.
///
/// This and [`meters_push`] run for every client on every tick, so they serialize typed
/// structs straight into the text, with no `Value` tree in between (same bytes: fields in the
/// alphabetical order `Value` objects have).
pub fn position_push(session: &str, state: TransportState, frame: u64, rate: u32) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct PositionPush<'a> {
        position: u64,
        position_seconds: f64,
        session_id: &'a str,
        state: &'static str,
        r#type: &'static str,
    }
    text(&PositionPush {
        position: frame,
        position_seconds: seconds(frame, rate),
        session_id: session,
        state: state.as_str(),
        r#type: "position",
    })
}

/// The `meters` push: peak and RMS in dBFS (−120 for silence) per track:
/// `{"sessionId","tracks":[{"peak","rms","trackId"}],"type":"meters"}`.
pub fn meters_push(session: &str, meters: &[(u32, f64, f64)]) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct MetersPush<'a> {
        session_id: &'a str,
        #[serde(serialize_with = "meter_list")]
        tracks: &'a [(u32, f64, f64)],
        r#type: &'static str,
    }
    fn meter_list<S: Serializer>(
        meters: &&[(u32, f64, f64)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct TrackMeter {
            peak: f64,
            rms: f64,
            track_id: TrackId,
        }
        serializer.collect_seq(meters.iter().map(|&(index, peak, rms)| TrackMeter {
            peak,
            rms,
            track_id: TrackId(index),
        }))
    }
    text(&MetersPush {
        session_id: session,
        tracks: meters,
        r#type: "meters",
    })
}

/// A push as text. Serializing plain fields with string keys cannot fail; if it ever did,
/// the client would get an empty frame rather than the daemon a panic.
fn text(push: &impl Serialize) -> String {
    serde_json::to_string(push).unwrap_or_default()
}

/// `[{"trackId","peak","rms"}]`.
pub fn meters_list(meters: &[(u32, f64, f64)]) -> Vec<Value> {
    meters
        .iter()
        .map(|&(index, peak, rms)| json!({"trackId": track_id(index), "peak": peak, "rms": rms}))
        .collect()
}

/// The `system` push telling a slow client how many events it lost.
pub fn dropped_push(dropped: u64, total: u64) -> String {
    json!({
        "type": "system",
        "event": "eventsDropped",
        "droppedEvents": dropped,
        "totalDroppedEvents": total,
    })
    .to_string()
}

/// The session an event belongs to, if any.
pub fn event_session(event: &Event) -> Option<&str> {
    match event {
        Event::SessionAdded { session }
        | Event::SessionRemoved { session }
        | Event::State { session, .. }
        | Event::TrackAdded { session, .. }
        | Event::TrackRemoved { session, .. }
        | Event::TrackChanged { session, .. }
        | Event::TakeFinished { session, .. } => Some(session),
        Event::Error { session, .. } => session.as_deref(),
    }
}

/// The topic of an event and its push message. `rate` gives seconds for positions.
pub fn event_push(event: &Event, rate: u32) -> (Topic, String) {
    match event {
        Event::SessionAdded { session } => (
            Topic::System,
            json!({"type": "system", "event": "sessionAdded", "sessionId": session}).to_string(),
        ),
        Event::SessionRemoved { session } => (
            Topic::System,
            json!({"type": "system", "event": "sessionRemoved", "sessionId": session}).to_string(),
        ),
        Event::State {
            session,
            state,
            position,
        } => {
            let mut value = transport(session, *state, *position, rate);
            value["type"] = json!("transport");
            (Topic::Transport, value.to_string())
        }
        Event::TrackAdded {
            session,
            index,
            tracks,
        }
        | Event::TrackRemoved {
            session,
            index,
            tracks,
        } => {
            let word = if matches!(event, Event::TrackAdded { .. }) {
                "added"
            } else {
                "removed"
            };
            (
                Topic::Track,
                json!({
                    "type": "track",
                    "event": word,
                    "sessionId": session,
                    "trackId": track_id(*index),
                    "tracks": tracks.iter().map(|&i| track_id(i)).collect::<Vec<_>>(),
                })
                .to_string(),
            )
        }
        Event::TrackChanged {
            session,
            fields,
            track: row,
        } => (
            Topic::Track,
            json!({
                "type": "track",
                "event": "changed",
                "sessionId": session,
                "trackId": track_id(row.index),
                "fields": fields.iter().map(|f| field_name(*f)).collect::<Vec<_>>(),
                "track": track(row),
            })
            .to_string(),
        ),
        Event::TakeFinished {
            session,
            track,
            path,
            frames,
            status,
        } => (
            Topic::Take,
            json!({
                "type": "take",
                "event": "finished",
                "sessionId": session,
                "trackId": track_id(*track),
                "path": path,
                "frames": frames,
                "seconds": seconds(*frames, rate),
                "status": status.as_str(),
            })
            .to_string(),
        ),
        Event::Error {
            session,
            code,
            message,
        } => (
            Topic::System,
            json!({
                "type": "system",
                "event": "error",
                "sessionId": session,
                "code": code.as_str(),
                "message": message,
            })
            .to_string(),
        ),
    }
}

/// A track field's JSON name.
fn field_name(field: TrackField) -> &'static str {
    match field {
        TrackField::Name => "name",
        TrackField::Armed => "armed",
        TrackField::InputGain => "inputGain",
        TrackField::Level => "level",
        TrackField::Pan => "pan",
        TrackField::Muted => "muted",
        TrackField::Soloed => "soloed",
        TrackField::Input => "input",
        TrackField::Monitoring => "monitoring",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ErrorCode;

    #[test]
    fn track_ids_round_trip_and_reject_junk() {
        assert_eq!(track_id(3), "track_3");
        assert_eq!(parse_track_id("track_3"), Some(3));
        assert_eq!(parse_track_id("track_12"), Some(12));
        for junk in [
            "track_0", "track_", "track_-1", "track_+1", "tracks_1", "3", "track_1x",
        ] {
            assert_eq!(parse_track_id(junk), None, "{junk}");
        }
    }

    #[test]
    fn topics_parse_their_own_words_only() {
        for topic in Topic::ALL {
            assert_eq!(Topic::parse(topic.as_str()), Some(topic));
        }
        assert_eq!(Topic::parse("Position"), None);
        assert_eq!(Topic::parse("audio"), None);
    }

    #[test]
    fn a_state_event_becomes_a_transport_push_with_seconds() {
        let event = Event::State {
            session: "abc".into(),
            state: TransportState::Recording,
            position: 24_000,
        };
        let (topic, text) = event_push(&event, 48_000);
        assert_eq!(topic, Topic::Transport);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "transport");
        assert_eq!(value["state"], "recording");
        assert_eq!(value["position"], 24_000);
        assert_eq!(value["positionSeconds"], 0.5);
        assert_eq!(event_session(&event), Some("abc"));
    }

    #[test]
    fn error_frames_carry_the_stable_code_and_the_id() {
        let text = error(&json!("7"), &ControlError::not_found("no track 9"));
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "error");
        assert_eq!(value["id"], "7");
        assert_eq!(value["code"], ErrorCode::NotFound.as_str());
        assert_eq!(value["message"], "no track 9");
    }

    #[test]
    fn typed_pushes_serialize_to_the_same_bytes_as_the_values_they_replace() {
        let mut position = transport("abc", TransportState::Recording, 36_000, 48_000);
        position["type"] = json!("position");
        assert_eq!(
            position_push("abc", TransportState::Recording, 36_000, 48_000),
            position.to_string()
        );
        let meters = [(1, -6.5, -9.25), (3, -120.0, -120.0)];
        let value = json!({"type": "meters", "sessionId": "a\"b", "tracks": meters_list(&meters)});
        assert_eq!(meters_push("a\"b", &meters), value.to_string());
        assert_eq!(
            meters_push("s", &[]),
            r#"{"sessionId":"s","tracks":[],"type":"meters"}"#
        );
    }

    #[test]
    fn meters_name_their_tracks() {
        let text = meters_push("s", &[(1, -6.0, -9.0), (3, -120.0, -120.0)]);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["tracks"][1]["trackId"], "track_3");
        assert_eq!(value["tracks"][0]["peak"], -6.0);
    }
}
