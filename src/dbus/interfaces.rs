//! The D-Bus objects of DESIGN.md §5.1: thin adapters that parse arguments, call
//! [`Control`], and map [`ControlError`] to `org.overdub.Overdub1.Error.<Code>`.

use std::collections::HashMap;

use zbus::object_server::SignalEmitter;
use zbus::{interface, Connection};
use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant, Variant};

use crate::backend::Direction;
use crate::control::{
    AddTrack, Control, ControlError, CreateSession, ErrorCode, Metrics, TrackUpdate,
};

/// Root object path.
pub const ROOT_PATH: &str = "/org/overdub/Overdub1";

/// Errors as they appear on the bus: `org.overdub.Overdub1.Error.<Code>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.overdub.Overdub1.Error")]
pub enum OverdubError {
    /// A bus-level failure.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// `invalid_argument`
    InvalidArgument(String),
    /// `not_found`
    NotFound(String),
    /// `invalid_state`
    InvalidState(String),
    /// `storage`
    Storage(String),
    /// `backend`
    Backend(String),
    /// `unauthorized`
    Unauthorized(String),
}

/// The one place where control errors become D-Bus errors.
impl From<ControlError> for OverdubError {
    fn from(error: ControlError) -> Self {
        let message = error.message;
        match error.code {
            ErrorCode::InvalidArgument => OverdubError::InvalidArgument(message),
            ErrorCode::NotFound => OverdubError::NotFound(message),
            ErrorCode::InvalidState => OverdubError::InvalidState(message),
            ErrorCode::Storage => OverdubError::Storage(message),
            ErrorCode::Backend => OverdubError::Backend(message),
            ErrorCode::Unauthorized => OverdubError::Unauthorized(message),
        }
    }
}

/// Object path of a session.
pub fn session_path(id: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("{ROOT_PATH}/session/{id}")).expect("session ids are hex")
}

/// Object path of a track.
pub fn track_path(id: &str, index: u32) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("{ROOT_PATH}/session/{id}/track/{index}"))
        .expect("session ids are hex")
}

/// Parses a track object path of session `id` into its index.
fn track_index(id: &str, path: &ObjectPath<'_>) -> Result<u32, OverdubError> {
    let prefix = format!("{ROOT_PATH}/session/{id}/track/");
    path.as_str()
        .strip_prefix(&prefix)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| OverdubError::NotFound(format!("{path} is not a track of session {id}")))
}

fn value<'a>(v: impl Into<Variant<'a>>) -> OwnedVariant {
    OwnedVariant::try_from(v.into()).expect("plain values have no file descriptors")
}

/// The metrics dictionary with DESIGN.md §5.1 keys.
pub fn metrics_dict(metrics: &Metrics) -> HashMap<String, OwnedVariant> {
    HashMap::from([
        ("sessionId".into(), value(metrics.session_id.as_str())),
        ("recordedTracks".into(), value(metrics.recorded_tracks)),
        ("totalDuration".into(), value(metrics.total_duration_ms)),
        ("averageLatency".into(), value(metrics.average_latency_ms)),
        ("bufferUnderruns".into(), value(metrics.buffer_underruns)),
        ("dataReceived".into(), value(metrics.data_received)),
        ("xruns".into(), value(metrics.xruns)),
        ("droppedFrames".into(), value(metrics.dropped_frames)),
        (
            "diskBufferMinFill".into(),
            value(metrics.disk_buffer_min_fill),
        ),
        ("clipCount".into(), value(metrics.clip_count)),
    ])
}

/// Reads an unsigned option that clients may send as any integer type.
fn option_u32(
    options: &HashMap<String, OwnedVariant>,
    key: &str,
) -> Result<Option<u32>, OverdubError> {
    let Some(raw) = options.get(key) else {
        return Ok(None);
    };
    let number: Option<i64> = match &**raw {
        Variant::U8(v) => Some(i64::from(*v)),
        Variant::U16(v) => Some(i64::from(*v)),
        Variant::U32(v) => Some(i64::from(*v)),
        Variant::U64(v) => i64::try_from(*v).ok(),
        Variant::I16(v) => Some(i64::from(*v)),
        Variant::I32(v) => Some(i64::from(*v)),
        Variant::I64(v) => Some(*v),
        _ => None,
    };
    match number.map(u32::try_from) {
        Some(Ok(n)) => Ok(Some(n)),
        Some(Err(_)) => Err(OverdubError::InvalidArgument(format!(
            "option {key} is out of range"
        ))),
        None => Err(OverdubError::InvalidArgument(format!(
            "option {key} must be an unsigned integer"
        ))),
    }
}

fn option_string(
    options: &HashMap<String, OwnedVariant>,
    key: &str,
) -> Result<Option<String>, OverdubError> {
    match options.get(key).map(|v| &**v) {
        None => Ok(None),
        Some(Variant::Str(s)) => Ok(Some(s.to_string())),
        Some(_) => Err(OverdubError::InvalidArgument(format!(
            "option {key} must be a string"
        ))),
    }
}

fn option_f64(
    options: &HashMap<String, OwnedVariant>,
    key: &str,
) -> Result<Option<f64>, OverdubError> {
    match options.get(key).map(|v| &**v) {
        None => Ok(None),
        Some(Variant::F64(n)) => Ok(Some(*n)),
        Some(_) => Err(OverdubError::InvalidArgument(format!(
            "option {key} must be a double"
        ))),
    }
}

fn option_bool(
    options: &HashMap<String, OwnedVariant>,
    key: &str,
) -> Result<Option<bool>, OverdubError> {
    match options.get(key).map(|v| &**v) {
        None => Ok(None),
        Some(Variant::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(OverdubError::InvalidArgument(format!(
            "option {key} must be a boolean"
        ))),
    }
}

fn reject_unknown(
    options: &HashMap<String, OwnedVariant>,
    known: &[&str],
) -> Result<(), OverdubError> {
    match options.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(OverdubError::InvalidArgument(format!(
            "unknown option {key:?}; known: {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// `org.overdub.Overdub1.Manager` at `/org/overdub/Overdub1`.
pub struct Manager {
    pub(super) control: Control,
}

#[interface(name = "org.overdub.Overdub1.Manager")]
impl Manager {
    /// Creates a session and returns its object path. Options: `tracks` (u), `project_id` (s),
    /// `user_id` (s).
    async fn create_session(
        &self,
        name: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<OwnedObjectPath, OverdubError> {
        reject_unknown(&options, &["tracks", "project_id", "user_id"])?;
        let request = CreateSession {
            name,
            tracks: option_u32(&options, "tracks")?,
            project_id: option_string(&options, "project_id")?,
            user_id: option_string(&options, "user_id")?,
        };
        let info = self.control.create_session(request).await?;
        super::export_session(connection, &self.control, &info.row.id).await?;
        Ok(session_path(&info.row.id))
    }

    /// Object paths of the active sessions.
    async fn list_sessions(&self) -> Vec<OwnedObjectPath> {
        self.control
            .active_sessions()
            .await
            .iter()
            .map(|id| session_path(id))
            .collect()
    }

    /// Every stored session, active or not: `id`, `name`, `tracks`, `active`, `createdAt`
    /// (unix ms), and `path` for active ones.
    async fn list_stored_sessions(
        &self,
    ) -> Result<Vec<HashMap<String, OwnedVariant>>, OverdubError> {
        let sessions = self.control.stored_sessions().await?;
        Ok(sessions
            .into_iter()
            .map(|s| {
                let mut dict = HashMap::from([
                    ("id".to_string(), value(s.row.id.as_str())),
                    ("name".to_string(), value(s.row.name.as_str())),
                    ("tracks".to_string(), value(s.tracks)),
                    ("active".to_string(), value(s.row.active)),
                    ("createdAt".to_string(), value(s.row.created_at_ms)),
                ]);
                if s.row.active {
                    dict.insert("path".into(), value(session_path(&s.row.id)));
                }
                dict
            })
            .collect())
    }

    /// Deletes a stored session (active or not) with its takes and files; refused while it
    /// records.
    async fn delete_session(&self, id: String) -> Result<(), OverdubError> {
        Ok(self.control.delete_session(&id).await?)
    }

    /// Activates a stored session and returns its object path.
    async fn open_session(
        &self,
        id: String,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<OwnedObjectPath, OverdubError> {
        let info = self.control.open_session(&id).await?;
        super::export_session(connection, &self.control, &info.row.id).await?;
        Ok(session_path(&info.row.id))
    }

    /// The audio graph's devices: `name`, `channels`, `direction` (`input`/`output`),
    /// `firstChannel`.
    async fn list_devices(&self) -> Vec<HashMap<String, OwnedVariant>> {
        self.control
            .devices()
            .into_iter()
            .map(|d| {
                HashMap::from([
                    ("name".to_string(), value(d.name.as_str())),
                    ("channels".to_string(), value(u32::from(d.channels))),
                    (
                        "firstChannel".to_string(),
                        value(u32::from(d.first_channel)),
                    ),
                    (
                        "direction".to_string(),
                        value(match d.direction {
                            Direction::Input => "input",
                            Direction::Output => "output",
                        }),
                    ),
                ])
            })
            .collect()
    }

    /// overdub's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        self.control.info().version
    }

    /// The audio graph in use.
    #[zbus(property(emits_changed_signal = "const"))]
    fn backend(&self) -> String {
        self.control.info().backend
    }

    /// Frames per second.
    #[zbus(property(emits_changed_signal = "const"))]
    fn sample_rate(&self) -> u32 {
        self.control.info().sample_rate
    }

    /// Frames per period now, 0 while the audio server, or an active session's ALSA device, is
    /// gone (overdub reconnects when it returns). The server can change it at any time: read it
    /// when needed; it sends no change signal.
    #[zbus(property(emits_changed_signal = "false"))]
    fn buffer_size(&self) -> u32 {
        self.control.info().buffer_size
    }

    /// `desktop`, `container` or `ci`.
    #[zbus(property(emits_changed_signal = "const"))]
    fn environment(&self) -> String {
        self.control.info().environment
    }
}

/// `org.overdub.Overdub1.Session` at `/org/overdub/Overdub1/session/<id>`.
pub struct Session {
    pub(super) control: Control,
    pub(super) id: String,
}

#[interface(name = "org.overdub.Overdub1.Session")]
impl Session {
    /// Starts recording every armed track (existing clips play along).
    async fn record(&self) -> Result<(), OverdubError> {
        Ok(self.control.record(&self.id).await?)
    }

    /// Starts rolling without recording.
    async fn play(&self) -> Result<(), OverdubError> {
        Ok(self.control.play(&self.id).await?)
    }

    /// Holds the position and suspends capture.
    async fn pause(&self) -> Result<(), OverdubError> {
        Ok(self.control.pause(&self.id).await?)
    }

    /// Continues into the same takes.
    async fn resume(&self) -> Result<(), OverdubError> {
        Ok(self.control.resume(&self.id).await?)
    }

    /// Stops, finalizes the takes and returns the metrics.
    async fn stop(&self) -> Result<HashMap<String, OwnedVariant>, OverdubError> {
        Ok(metrics_dict(&self.control.stop(&self.id).await?))
    }

    /// Moves the position (frames).
    async fn seek(&self, frame: u64) -> Result<(), OverdubError> {
        Ok(self.control.seek(&self.id, frame).await?)
    }

    /// Adds a track; options: `channels` (u, 1 or 2), `input` (s), `armed` (b).
    async fn add_track(
        &self,
        name: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<OwnedObjectPath, OverdubError> {
        reject_unknown(&options, &["channels", "input", "armed"])?;
        let channels = option_u32(&options, "channels")?
            .map(|c| {
                u8::try_from(c)
                    .map_err(|_| OverdubError::InvalidArgument("channels must be 1 or 2".into()))
            })
            .transpose()?;
        let request = AddTrack {
            name,
            channels,
            input: option_string(&options, "input")?,
            armed: option_bool(&options, "armed")?,
        };
        let row = self.control.add_track(&self.id, request).await?;
        super::export_track(connection, &self.control, &self.id, row.index).await?;
        Ok(track_path(&self.id, row.index))
    }

    /// Removes a track that is not recording.
    async fn remove_track(&self, track: ObjectPath<'_>) -> Result<(), OverdubError> {
        let index = track_index(&self.id, &track)?;
        Ok(self.control.remove_track(&self.id, index).await?)
    }

    /// The current or last recording run's metrics.
    async fn get_metrics(&self) -> Result<HashMap<String, OwnedVariant>, OverdubError> {
        Ok(metrics_dict(&self.control.metrics(&self.id).await?))
    }

    /// Peak and RMS in dBFS per track, in track order.
    async fn get_meters(&self) -> Result<Vec<(f64, f64)>, OverdubError> {
        Ok(self.control.meters(&self.id).await?)
    }

    /// Seconds of recording of the armed tracks that the free disk space allows.
    async fn get_record_time_available(&self) -> Result<f64, OverdubError> {
        Ok(self.control.seconds_available(&self.id).await?)
    }

    /// Deactivates the session (it stays stored).
    async fn close(&self) -> Result<(), OverdubError> {
        Ok(self.control.close_session(&self.id).await?)
    }

    /// Deletes the session, its takes and files (refused while it records).
    async fn delete(&self) -> Result<(), OverdubError> {
        Ok(self.control.delete_session(&self.id).await?)
    }

    /// A take's file is final.
    #[zbus(signal)]
    pub async fn take_finished(
        emitter: &SignalEmitter<'_>,
        track: ObjectPath<'_>,
        path: &str,
        frames: u64,
    ) -> zbus::Result<()>;

    /// Something failed outside a request (disk full, writer error).
    #[zbus(signal)]
    pub async fn error(emitter: &SignalEmitter<'_>, code: &str, message: &str) -> zbus::Result<()>;

    /// Session id.
    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> String {
        self.id.clone()
    }

    /// Session name.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn name(&self) -> Result<String, OverdubError> {
        Ok(self.control.session(&self.id).await?.row.name)
    }

    /// `stopped`, `playing`, `recording` or `paused`.
    #[zbus(property)]
    async fn state(&self) -> Result<String, OverdubError> {
        Ok(self.control.session(&self.id).await?.state.as_str().into())
    }

    /// Position in frames (read it when needed; it sends no change signal).
    #[zbus(property(emits_changed_signal = "false"))]
    async fn position(&self) -> Result<u64, OverdubError> {
        Ok(self.control.session(&self.id).await?.position)
    }

    /// Frames per second.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn sample_rate(&self) -> Result<u32, OverdubError> {
        Ok(self.control.session(&self.id).await?.row.sample_rate)
    }

    /// Track object paths, in index order.
    #[zbus(property)]
    async fn tracks(&self) -> Result<Vec<OwnedObjectPath>, OverdubError> {
        let info = self.control.session(&self.id).await?;
        Ok(info
            .tracks
            .iter()
            .map(|t| track_path(&self.id, t.index))
            .collect())
    }
}

/// `org.overdub.Overdub1.Track` at `/org/overdub/Overdub1/session/<id>/track/<n>`.
pub struct Track {
    pub(super) control: Control,
    pub(super) id: String,
    pub(super) index: u32,
}

impl Track {
    async fn row(&self) -> Result<crate::store::TrackRow, OverdubError> {
        Ok(self.control.track(&self.id, self.index).await?)
    }

    async fn apply(&self, update: TrackUpdate) -> Result<(), OverdubError> {
        self.control
            .update_track(&self.id, self.index, update)
            .await?;
        Ok(())
    }
}

#[interface(name = "org.overdub.Overdub1.Track")]
impl Track {
    /// Changes several properties at once: every value is checked before any changes, so a
    /// bad one changes nothing. Keys are the property names: `Name` (s), `Armed` (b),
    /// `InputGain` (d), `Level` (d), `Pan` (d), `Muted` (b), `Soloed` (b), `Input` (s),
    /// `Monitoring` (s).
    async fn update(&self, changes: HashMap<String, OwnedVariant>) -> Result<(), OverdubError> {
        reject_unknown(
            &changes,
            &[
                "Name",
                "Armed",
                "InputGain",
                "Level",
                "Pan",
                "Muted",
                "Soloed",
                "Input",
                "Monitoring",
            ],
        )?;
        self.apply(TrackUpdate {
            name: option_string(&changes, "Name")?,
            armed: option_bool(&changes, "Armed")?,
            input_gain: option_f64(&changes, "InputGain")?,
            level: option_f64(&changes, "Level")?,
            pan: option_f64(&changes, "Pan")?,
            muted: option_bool(&changes, "Muted")?,
            soloed: option_bool(&changes, "Soloed")?,
            input: option_string(&changes, "Input")?,
            monitoring: option_string(&changes, "Monitoring")?,
        })
        .await
    }

    /// Track name (unique within the session).
    #[zbus(property)]
    async fn name(&self) -> Result<String, OverdubError> {
        Ok(self.row().await?.name)
    }
    #[zbus(property)]
    async fn set_name(&self, value: String) -> Result<(), OverdubError> {
        self.apply(TrackUpdate {
            name: Some(value),
            ..TrackUpdate::default()
        })
        .await
    }

    /// Recorded when the transport records.
    #[zbus(property)]
    async fn armed(&self) -> Result<bool, OverdubError> {
        Ok(self.row().await?.armed)
    }
    #[zbus(property)]
    async fn set_armed(&self, value: bool) -> Result<(), OverdubError> {
        self.apply(TrackUpdate {
            armed: Some(value),
            ..TrackUpdate::default()
        })
        .await
    }

    /// Pre-record trim, linear 0–4.
    #[zbus(property)]
    async fn input_gain(&self) -> Result<f64, OverdubError> {
        Ok(self.row().await?.input_gain)
    }
    #[zbus(property)]
    async fn set_input_gain(&self, value: f64) -> Result<(), OverdubError> {
        self.apply(TrackUpdate {
            input_gain: Some(value),
            ..TrackUpdate::default()
        })
        .await
    }

    /// Fader, linear 0–2.
    #[zbus(property)]
    async fn level(&self) -> Result<f64, OverdubError> {
        Ok(self.row().await?.level)
    }
    #[zbus(property)]
    async fn set_level(&self, value: f64) -> Result<(), OverdubError> {
        self.apply(TrackUpdate {
            level: Some(value),
            ..TrackUpdate::default()
        })
        .await
    }

    /// Pan, −1 (left) … +1 (right).
    #[zbus(property)]
    async fn pan(&self) -> Result<f64, OverdubError> {
        Ok(self.row().await?.pan)
    }
    #[zbus(property)]
    async fn set_pan(&self, value: f64) -> Result<(), OverdubError> {
        self.apply(TrackUpdate {
            pan: Some(value),
            ..TrackUpdate::default()
        })
        .await
    }

    /// Silenced in the mix.
    #[zbus(property)]
    async fn muted(&self) -> Result<bool, OverdubError> {
        Ok(self.row().await?.muted)
    }
    #[zbus(property)]
    async fn set_muted(&self, value: bool) -> Result<(), OverdubError> {
        self.apply(TrackUpdate {
            muted: Some(value),
            ..TrackUpdate::default()
        })
        .await
    }

    /// Soloed.
    #[zbus(property)]
    async fn soloed(&self) -> Result<bool, OverdubError> {
        Ok(self.row().await?.soloed)
    }
    #[zbus(property)]
    async fn set_soloed(&self, value: bool) -> Result<(), OverdubError> {
        self.apply(TrackUpdate {
            soloed: Some(value),
            ..TrackUpdate::default()
        })
        .await
    }

    /// Input: a device name, `Device:N`, or `none`.
    #[zbus(property)]
    async fn input(&self) -> Result<String, OverdubError> {
        Ok(self.row().await?.input)
    }
    #[zbus(property)]
    async fn set_input(&self, value: String) -> Result<(), OverdubError> {
        self.apply(TrackUpdate {
            input: Some(value),
            ..TrackUpdate::default()
        })
        .await
    }

    /// `auto`, `input` or `off`.
    #[zbus(property)]
    async fn monitoring(&self) -> Result<String, OverdubError> {
        Ok(self.row().await?.monitoring)
    }
    #[zbus(property)]
    async fn set_monitoring(&self, value: String) -> Result<(), OverdubError> {
        self.apply(TrackUpdate {
            monitoring: Some(value),
            ..TrackUpdate::default()
        })
        .await
    }

    /// 1-based index.
    #[zbus(property(emits_changed_signal = "const"))]
    fn index(&self) -> u32 {
        self.index
    }

    /// 1 (mono) or 2 (stereo).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn channels(&self) -> Result<u32, OverdubError> {
        Ok(u32::from(self.row().await?.channels))
    }
}
