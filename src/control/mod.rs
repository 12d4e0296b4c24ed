//! The one command and query API of overdub. Every surface (D-Bus, CLI through D-Bus, and the
//! HTTP/WebSocket bridge) is a thin adapter over [`Control`]: validation, state and events
//! live here and nowhere else. Invalid input returns a [`ControlError`] and changes nothing.
//!
//! Not real-time: runs on tokio; SQLite runs on the store's own thread.

mod error;
mod session;
mod stream;
pub mod validate;
mod view;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, Mutex};

pub use error::{ControlError, ControlResult, ErrorCode};
use session::ActiveSession;
pub use stream::{
    MonitorSource, StreamHandle, TapHandle, STREAM_PREBUFFER_MS, STREAM_RING_SECONDS, TAP_RING_MS,
};
use view::Publications;
pub use view::{LiveSession, SessionView};

use crate::backend::{DeviceInfo, Graph};
use crate::capture::repair_wav;
use crate::config::Config;
use crate::engine::{Monitoring, TransportState};
use crate::store::{
    ClipRow, SessionRow, Store, TakeEvent, TakeMetrics, TakeRow, TakeStatus, TrackRow,
};

/// How often each active session's pump applies engine and writer reports when nobody calls.
const PUMP_INTERVAL: Duration = Duration::from_millis(20);

/// A track property, named in change events so surfaces signal only what changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackField {
    /// `name`
    Name,
    /// `armed`
    Armed,
    /// `inputGain`
    InputGain,
    /// `level`
    Level,
    /// `pan`
    Pan,
    /// `muted`
    Muted,
    /// `soloed`
    Soloed,
    /// `input`
    Input,
    /// `monitoring`
    Monitoring,
}

/// What happened, broadcast to every surface.
#[derive(Clone, Debug)]
pub enum Event {
    /// A session became active (its objects exist).
    SessionAdded {
        /// Session id.
        session: String,
    },
    /// A session stopped being active (closed or deleted).
    SessionRemoved {
        /// Session id.
        session: String,
    },
    /// The transport changed state.
    State {
        /// Session id.
        session: String,
        /// New state.
        state: TransportState,
        /// Position at the change.
        position: u64,
    },
    /// A track was added.
    TrackAdded {
        /// Session id.
        session: String,
        /// Track index (1-based).
        index: u32,
        /// The session's track indices after the change.
        tracks: Vec<u32>,
    },
    /// A track was removed.
    TrackRemoved {
        /// Session id.
        session: String,
        /// Track index (1-based).
        index: u32,
        /// The session's track indices after the change.
        tracks: Vec<u32>,
    },
    /// Track properties changed.
    TrackChanged {
        /// Session id.
        session: String,
        /// Which ones.
        fields: Vec<TrackField>,
        /// The track's settings after the change.
        track: TrackRow,
    },
    /// A take's file is final.
    TakeFinished {
        /// Session id.
        session: String,
        /// Track index (1-based).
        track: u32,
        /// Absolute path of the file.
        path: String,
        /// Frames in the file.
        frames: u64,
        /// `complete` or `failed`.
        status: TakeStatus,
    },
    /// Something failed outside a request (disk full, writer error).
    Error {
        /// Session id, if the error belongs to one.
        session: Option<String>,
        /// Stable code.
        code: ErrorCode,
        /// Message.
        message: String,
    },
}

/// The metrics dictionary (DESIGN.md §5.1) of a session's current or last recording run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// Session id.
    pub session_id: String,
    /// Takes recorded in the run.
    pub recorded_tracks: u32,
    /// Recorded time in milliseconds, pauses excluded.
    #[serde(rename = "totalDuration")]
    pub total_duration_ms: f64,
    /// Input-to-processing latency in milliseconds.
    #[serde(rename = "averageLatency")]
    pub average_latency_ms: f64,
    /// Xruns + capture ring overflows + playback underruns.
    pub buffer_underruns: u64,
    /// Bytes of audio captured.
    pub data_received: u64,
    /// Xruns reported by the audio graph.
    pub xruns: u64,
    /// Frames lost to full capture rings (written as silence).
    pub dropped_frames: u64,
    /// Lowest headroom seen in the capture buffers (1 = never used, 0 = overflowed).
    pub disk_buffer_min_fill: f64,
    /// Samples at or above full scale in the recorded tracks (after input gain).
    pub clip_count: u64,
}

/// Daemon-wide facts for the Manager properties and `status`.
#[derive(Clone, Debug)]
pub struct DaemonInfo {
    /// overdub's version.
    pub version: String,
    /// The audio graph in use (`virtual`).
    pub backend: String,
    /// Frames per second.
    pub sample_rate: u32,
    /// Frames per period (0 while the audio server, or an active session's ALSA device, is gone).
    pub buffer_size: u32,
    /// `desktop`, `container` or `ci`.
    pub environment: String,
}

/// A snapshot of an active session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The stored record.
    pub row: SessionRow,
    /// Transport state.
    pub state: TransportState,
    /// Position in frames.
    pub position: u64,
    /// Tracks, by index.
    pub tracks: Vec<TrackRow>,
}

/// A stored session, active or not.
#[derive(Clone, Debug)]
pub struct StoredSession {
    /// The stored record (its `active` flag says whether it is loaded).
    pub row: SessionRow,
    /// Number of tracks.
    pub tracks: u32,
}

/// Options of `CreateSession`.
#[derive(Clone, Debug, Default)]
pub struct CreateSession {
    /// Session name.
    pub name: String,
    /// Track count (default from config).
    pub tracks: Option<u32>,
    /// Caller's project id, kept with the session.
    pub project_id: Option<String>,
    /// Caller's user id, kept with the session.
    pub user_id: Option<String>,
}

/// Options of `AddTrack`.
#[derive(Clone, Debug, Default)]
pub struct AddTrack {
    /// Track name.
    pub name: String,
    /// 1 or 2 (default 1).
    pub channels: Option<u8>,
    /// Input (default: the track's own virtual input, or the line in for stereo).
    pub input: Option<String>,
    /// Start armed.
    pub armed: Option<bool>,
}

/// A change to some of a track's properties; `None` leaves one as it is.
#[derive(Clone, Debug, Default)]
pub struct TrackUpdate {
    /// New name.
    pub name: Option<String>,
    /// Arm or disarm.
    pub armed: Option<bool>,
    /// Pre-record trim (linear, 0–4).
    pub input_gain: Option<f64>,
    /// Fader (linear, 0–2).
    pub level: Option<f64>,
    /// Pan (−1…1).
    pub pan: Option<f64>,
    /// Mute.
    pub muted: Option<bool>,
    /// Solo.
    pub soloed: Option<bool>,
    /// Input (device name, `Device:N`, or `none`).
    pub input: Option<String>,
    /// `auto`, `input` or `off`.
    pub monitoring: Option<String>,
}

type SessionCell = Arc<Mutex<Option<ActiveSession>>>;

struct Inner {
    config: RwLock<Config>,
    data_dir: PathBuf,
    store: Store,
    events: broadcast::Sender<Event>,
    sessions: Mutex<BTreeMap<String, SessionCell>>,
    /// What each active session last published, for readers that must not take its lock.
    publications: Arc<Publications>,
    /// The audio graph every session runs on (chosen at start from `audio.backend`).
    graph: Graph,
    environment: String,
    /// Set by [`Control::shutdown`]: no session may become active any more.
    closing: std::sync::atomic::AtomicBool,
}

/// The control service. Cheap to clone; every surface holds one.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl Control {
    /// Starts the service: recovers every take left `recording` by a crash, then reactivates
    /// the sessions that were active when the daemon last ran.
    pub async fn start(config: Config, data_dir: PathBuf, store: Store) -> ControlResult<Control> {
        let graph = Graph::choose(
            &config.audio.backend,
            config.virtual_config(),
            &config.jack_settings(),
            &config.alsa_settings(),
        )
        .map_err(|e| ControlError::backend(e.message))?;
        let (events, _) = broadcast::channel(1024);
        let control = Control {
            inner: Arc::new(Inner {
                config: RwLock::new(config),
                data_dir,
                store,
                events,
                sessions: Mutex::new(BTreeMap::new()),
                publications: Arc::new(Publications::default()),
                graph,
                environment: detect_environment(),
                closing: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        control.recover_takes().await?;
        for stored in control.inner.store.list_sessions().await? {
            if stored.active {
                if let Err(e) = control.activate(&stored.id).await {
                    tracing::error!(session = %stored.id, "not reactivated: {e}");
                }
            }
        }
        Ok(control)
    }

    /// The current configuration.
    pub fn config(&self) -> Config {
        self.inner.config.read().expect("config lock").clone()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Subscribes to events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Daemon-wide facts.
    pub fn info(&self) -> DaemonInfo {
        DaemonInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            backend: self.inner.graph.name().into(),
            sample_rate: self.inner.graph.sample_rate(),
            buffer_size: self.inner.graph.buffer_size(),
            environment: self.inner.environment.clone(),
        }
    }

    /// Frames per period of the audio graph (`info().buffer_size`, without building the rest
    /// of [`DaemonInfo`]).
    pub fn buffer_size(&self) -> u32 {
        self.inner.graph.buffer_size()
    }

    /// The devices of the audio graph.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        session::graph_call(|| self.inner.graph.devices())
    }

    /// Ids of the active sessions.
    pub async fn active_sessions(&self) -> Vec<String> {
        self.inner.sessions.lock().await.keys().cloned().collect()
    }

    /// Ids of the active sessions whose views are published, without waiting for the sessions'
    /// lock (which an operation in progress holds): for the pushes, which must not stall. A
    /// session being opened or closed may be missing or still listed.
    pub fn published_sessions(&self) -> Vec<String> {
        self.inner.publications.ids()
    }

    /// Every stored session, active or not.
    pub async fn stored_sessions(&self) -> ControlResult<Vec<StoredSession>> {
        let rows = self.inner.store.list_sessions().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let tracks = match self.inner.store.load_session(&row.id).await? {
                Some((_, tracks)) => tracks.len() as u32,
                None => 0,
            };
            out.push(StoredSession { row, tracks });
        }
        Ok(out)
    }

    /// Creates, stores and activates a session.
    pub async fn create_session(&self, request: CreateSession) -> ControlResult<SessionInfo> {
        let config = self.config();
        let name = validate::name("session", &request.name)?;
        let count = request.tracks.unwrap_or(config.session.default_tracks);
        if count == 0 || count > config.engine.max_tracks {
            return Err(ControlError::invalid_argument(format!(
                "tracks must be 1–{} (engine.max_tracks), got {count}",
                config.engine.max_tracks
            )));
        }
        for (what, value) in [
            ("project_id", &request.project_id),
            ("user_id", &request.user_id),
        ] {
            if let Some(value) = value {
                validate::name(what, value)?;
            }
        }
        self.check_capacity().await?;
        let id = new_session_id()?;
        let row = SessionRow {
            id: id.clone(),
            name,
            project_id: request.project_id,
            user_id: request.user_id,
            sample_rate: self.inner.graph.sample_rate(),
            created_at_ms: now_ms(),
            active: true,
        };
        // One hand-over of the worker for all the tracks' default inputs.
        let tracks = session::graph_call(|| {
            (1..=count)
                .map(|index| {
                    new_track(
                        index,
                        format!("Track {index}"),
                        1,
                        index <= config.session.default_armed,
                        self.inner.graph.default_input(index, 1),
                    )
                })
                .collect()
        });
        self.inner.store.create_session(row, tracks).await?;
        if let Err(error) = self.activate(&id).await {
            // A failed create leaves nothing behind.
            self.inner.store.delete_session(&id).await?;
            return Err(error);
        }
        tracing::info!(session = %id, tracks = count, "session created");
        self.session(&id).await
    }

    /// Activates a stored session (no-op when already active).
    pub async fn open_session(&self, id: &str) -> ControlResult<SessionInfo> {
        if self.activate(id).await? {
            self.inner.store.set_session_active(id, true).await?;
        }
        self.session(id).await
    }

    /// Deactivates a session: stops it, finalizes its takes, keeps it stored.
    pub async fn close_session(&self, id: &str) -> ControlResult<()> {
        let cell = self
            .inner
            .sessions
            .lock()
            .await
            .remove(id)
            .ok_or_else(|| not_found_session(id))?;
        self.inner.publications.remove(id);
        let session = cell.lock().await.take();
        let stopped = match session {
            Some(session) => session.shut_down().await,
            None => Ok(()),
        };
        let _ = self.inner.events.send(Event::SessionRemoved {
            session: id.to_string(),
        });
        self.inner.store.set_session_active(id, false).await?;
        tracing::info!(session = %id, "session closed");
        stopped
    }

    /// Deletes a session, its takes and its files. Refused while it records.
    pub async fn delete_session(&self, id: &str) -> ControlResult<()> {
        let active = self.inner.sessions.lock().await.get(id).cloned();
        if let Some(cell) = active {
            {
                let guard = cell.lock().await;
                if let Some(session) = guard.as_ref() {
                    if session.state != TransportState::Stopped || session.has_open_takes() {
                        return Err(ControlError::invalid_state(format!(
                            "session {id} is {}: stop it before deleting",
                            session.state
                        )));
                    }
                }
            }
            self.close_session(id).await?;
        }
        if !self.inner.store.delete_session(id).await? {
            return Err(not_found_session(id));
        }
        let dir = self.inner.data_dir.join("sessions").join(id);
        let removed = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| ControlError::storage(format!("removing {}: {e}", dir.display())))?;
        removed.map_err(|e| {
            ControlError::storage(format!("session deleted, but {}: {e}", dir.display()))
        })?;
        tracing::info!(session = %id, "session deleted");
        Ok(())
    }

    /// A snapshot of an active session.
    pub async fn session(&self, id: &str) -> ControlResult<SessionInfo> {
        self.with_session(id, |s| {
            Box::pin(async move {
                s.drain().await;
                Ok(SessionInfo {
                    row: s.row.clone(),
                    state: s.state,
                    position: s.position(),
                    tracks: s.tracks.values().map(|t| t.row.clone()).collect(),
                })
            })
        })
        .await
    }

    /// Starts recording every armed track.
    pub async fn record(&self, id: &str) -> ControlResult<()> {
        self.with_session(id, |s| Box::pin(s.record())).await
    }

    /// Starts playing.
    pub async fn play(&self, id: &str) -> ControlResult<()> {
        self.with_session(id, |s| Box::pin(s.play())).await
    }

    /// Pauses.
    pub async fn pause(&self, id: &str) -> ControlResult<()> {
        self.with_session(id, |s| Box::pin(s.pause())).await
    }

    /// Resumes.
    pub async fn resume(&self, id: &str) -> ControlResult<()> {
        self.with_session(id, |s| Box::pin(s.resume())).await
    }

    /// Stops, finalizes the takes and returns the run's metrics.
    pub async fn stop(&self, id: &str) -> ControlResult<Metrics> {
        self.with_session(id, |s| Box::pin(s.stop())).await
    }

    /// Moves the position.
    pub async fn seek(&self, id: &str, frame: u64) -> ControlResult<()> {
        self.with_session(id, move |s| Box::pin(s.seek(frame)))
            .await
    }

    /// The current or last run's metrics.
    pub async fn metrics(&self, id: &str) -> ControlResult<Metrics> {
        self.with_session(id, |s| {
            Box::pin(async move {
                s.drain().await;
                Ok(s.metrics())
            })
        })
        .await
    }

    /// Peak and RMS in dBFS per track (by index).
    pub async fn meters(&self, id: &str) -> ControlResult<Vec<(f64, f64)>> {
        self.with_session(id, |s| Box::pin(async move { Ok(s.meters()) }))
            .await
    }

    /// An active session as last published by its owner, with the live position: neither
    /// takes the session's lock nor waits on anything, so a read path (the bridge's `GET
    /// /session/:id`) costs a map lookup and two `Arc` clones. The state and the tracks
    /// reflect every operation that has returned; a change the engine makes on its own shows
    /// within one pump interval (20 ms). See [`SessionView`].
    pub fn live_session(&self, id: &str) -> ControlResult<LiveSession> {
        self.inner
            .publications
            .get(id)
            .map(|publication| publication.live())
            .ok_or_else(|| not_active(id))
    }

    /// Transport state and position of an active session, from its published view (see
    /// [`Control::live_session`]): cheap enough for the bridge's position pushes.
    pub fn transport(&self, id: &str) -> ControlResult<(TransportState, u64)> {
        let live = self.live_session(id)?;
        Ok((live.view.state, live.position))
    }

    /// Peak and RMS in dBFS per track, each with its track index, for surfaces that name
    /// tracks (the WebSocket `meters` push). Reads the published track list and the engine's
    /// meters, without the session's lock.
    pub fn track_meters(&self, id: &str) -> ControlResult<Vec<(u32, f64, f64)>> {
        let publication = self
            .inner
            .publications
            .get(id)
            .ok_or_else(|| not_active(id))?;
        let view = publication.view();
        Ok(view
            .tracks
            .iter()
            .map(|track| {
                let slot = usize::try_from(track.index.saturating_sub(1)).unwrap_or(usize::MAX);
                let (peak, rms) = publication.track_meter(slot);
                (track.index, session::to_dbfs(peak), session::to_dbfs(rms))
            })
            .collect())
    }

    /// Feeds track `track` (1-based) of an active session from outside instead of its input:
    /// the returned handle takes interleaved `f32` frames and detaches the stream when dropped.
    /// Errors: unknown session or track (`not_found`); `channels` other than the track's or
    /// `sample_rate` other than the session's (`invalid_argument`, naming both values); a track
    /// that already has a stream (`invalid_state`).
    pub async fn attach_stream(
        &self,
        id: &str,
        track: u32,
        channels: u8,
        sample_rate: u32,
    ) -> ControlResult<StreamHandle> {
        self.with_session(id, move |s| {
            Box::pin(async move {
                s.drain().await;
                s.attach_stream(track, channels, sample_rate)
            })
        })
        .await
    }

    /// Copies the master mix or a track's monitor send of an active session out, as blocks of
    /// stereo frames; the tap detaches when the handle is dropped. Errors: unknown session or
    /// track (`not_found`); every tap of the session in use (`invalid_state`).
    pub async fn attach_tap(&self, id: &str, source: MonitorSource) -> ControlResult<TapHandle> {
        self.with_session(id, move |s| {
            Box::pin(async move {
                s.drain().await;
                s.attach_tap(source)
            })
        })
        .await
    }

    /// Adds a track to an active session.
    pub async fn add_track(&self, id: &str, request: AddTrack) -> ControlResult<TrackRow> {
        let name = validate::name("track", &request.name)?;
        let channels = request.channels.unwrap_or(1);
        if !(1..=2).contains(&channels) {
            return Err(ControlError::invalid_argument(format!(
                "channels must be 1 or 2, got {channels}"
            )));
        }
        let store = self.inner.store.clone();
        let events = self.inner.events.clone();
        let inner = Arc::clone(&self.inner);
        self.with_session(id, move |s| {
            Box::pin(async move {
                if s.tracks.values().any(|t| t.row.name == name) {
                    return Err(ControlError::invalid_argument(format!(
                        "a track named {name:?} already exists"
                    )));
                }
                let index = s.free_index().ok_or_else(|| {
                    ControlError::invalid_state("the session has engine.max_tracks tracks")
                })?;
                let input = request.input.unwrap_or_else(|| {
                    session::graph_call(|| inner.graph.default_input(index, channels))
                });
                validate::input(&input)?;
                s.check_input(&input, channels)?;
                let armed = request.armed.unwrap_or(false);
                if armed && s.state != TransportState::Stopped {
                    return Err(ControlError::invalid_state(
                        "add the track disarmed while rolling, then arm it",
                    ));
                }
                let row = new_track(index, name, channels, armed, input);
                store.upsert_track(s.id(), row.clone()).await?;
                if let Err(error) = s.install_track(row.clone(), 1) {
                    // A track the graph refused is not kept: the session must reopen.
                    store.delete_track(s.id(), index).await?;
                    return Err(error);
                }
                let _ = events.send(Event::TrackAdded {
                    session: s.id().to_string(),
                    index,
                    tracks: s.tracks.keys().copied().collect(),
                });
                Ok(row)
            })
        })
        .await
    }

    /// Removes a track that is not recording.
    pub async fn remove_track(&self, id: &str, index: u32) -> ControlResult<()> {
        let store = self.inner.store.clone();
        let events = self.inner.events.clone();
        self.with_session(id, move |s| {
            Box::pin(async move {
                s.remove_track(index)?;
                store.delete_track(s.id(), index).await?;
                let _ = events.send(Event::TrackRemoved {
                    session: s.id().to_string(),
                    index,
                    tracks: s.tracks.keys().copied().collect(),
                });
                Ok(())
            })
        })
        .await
    }

    /// The settings of one track.
    pub async fn track(&self, id: &str, index: u32) -> ControlResult<TrackRow> {
        self.with_session(id, move |s| {
            Box::pin(async move {
                s.tracks
                    .get(&index)
                    .map(|t| t.row.clone())
                    .ok_or_else(|| not_found_track(index))
            })
        })
        .await
    }

    /// Changes some of a track's properties. Everything is validated before anything
    /// changes; the new settings are stored, then applied to the engine.
    pub async fn update_track(
        &self,
        id: &str,
        index: u32,
        update: TrackUpdate,
    ) -> ControlResult<TrackRow> {
        let store = self.inner.store.clone();
        self.with_session(id, move |s| {
            Box::pin(async move {
                let old = s
                    .tracks
                    .get(&index)
                    .map(|t| t.row.clone())
                    .ok_or_else(|| not_found_track(index))?;
                let (row, fields) = apply_update(&old, update)?;
                if fields.contains(&TrackField::Name)
                    && s.tracks
                        .values()
                        .any(|t| t.row.index != index && t.row.name == row.name)
                {
                    return Err(ControlError::invalid_argument(format!(
                        "a track named {:?} already exists",
                        row.name
                    )));
                }
                if row.input != old.input {
                    s.check_input(&row.input, row.channels)?;
                }
                if fields.is_empty() {
                    return Ok(old);
                }
                store.upsert_track(s.id(), row.clone()).await?;
                if let Err(e) = s.apply_track(index, row.clone()).await {
                    store.upsert_track(s.id(), old).await?;
                    return Err(e);
                }
                s.announce_track(fields, row.clone());
                Ok(row)
            })
        })
        .await
    }

    /// Every take of a session (active or stored), oldest first, as journaled in the store:
    /// the bridge reports take ids, paths and frames from it.
    pub async fn takes(&self, id: &str) -> ControlResult<Vec<TakeRow>> {
        if self.inner.store.load_session(id).await?.is_none() {
            return Err(not_found_session(id));
        }
        Ok(self.inner.store.list_takes(id).await?)
    }

    /// Seconds of recording of the armed tracks that the free disk space allows.
    pub async fn seconds_available(&self, id: &str) -> ControlResult<f64> {
        self.with_session(id, |s| {
            Box::pin(async move {
                let armed: Vec<u32> = s
                    .tracks
                    .values()
                    .filter(|t| t.row.armed)
                    .map(|t| t.row.index)
                    .collect();
                s.seconds_available(&armed)
            })
        })
        .await
    }

    /// Applies a reloaded configuration: only settings that may change live take effect; the
    /// others are logged as needing a restart.
    pub async fn reload(&self, config: Config) {
        let old = self.config();
        if config.audio != old.audio
            || config.engine != old.engine
            || config.virtual_graph != old.virtual_graph
            || config.capture.format != old.capture.format
            || config.capture.ring_seconds != old.capture.ring_seconds
            || config.capture.sync != old.capture.sync
            || config.daemon.data_dir != old.daemon.data_dir
        {
            tracing::warn!("config reloaded; audio, engine, format, ring, sync and data-dir changes take effect at restart");
        }
        let mut kept = old;
        kept.capture.flush_interval = config.capture.flush_interval;
        kept.capture.min_free_seconds = config.capture.min_free_seconds;
        kept.capture.stop_free_seconds = config.capture.stop_free_seconds;
        kept.daemon.log_level = config.daemon.log_level;
        kept.session = config.session;
        *self.inner.config.write().expect("config lock") = kept.clone();
        let cells: Vec<SessionCell> = self.inner.sessions.lock().await.values().cloned().collect();
        for cell in cells {
            if let Some(session) = cell.lock().await.as_mut() {
                session.reload(&kept);
            }
        }
    }

    /// Stops every session and finalizes every take; the sessions stay marked active so the
    /// next start brings them back.
    pub async fn shutdown(&self) {
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let cells: Vec<(String, SessionCell)> =
            std::mem::take(&mut *self.inner.sessions.lock().await)
                .into_iter()
                .collect();
        self.inner.publications.clear();
        for (id, cell) in cells {
            let session = cell.lock().await.take();
            if let Some(session) = session {
                if let Err(e) = session.shut_down().await {
                    tracing::error!(session = %id, "shutting down: {e}");
                }
            }
        }
    }

    /// Checks the store with a real query (health).
    pub async fn store_ok(&self) -> bool {
        self.inner.store.ping().await.is_ok()
    }

    async fn check_capacity(&self) -> ControlResult<()> {
        let max = self.config().engine.max_active_sessions as usize;
        if self.inner.sessions.lock().await.len() >= max {
            return Err(capacity_error(max));
        }
        Ok(())
    }

    /// Loads a stored session into the engine. Returns `false` when it was already active. The
    /// session map stays locked from the capacity check to the insertion, so two concurrent
    /// activations can neither both start an engine nor exceed `engine.max_active_sessions`.
    async fn activate(&self, id: &str) -> ControlResult<bool> {
        let mut sessions = self.inner.sessions.lock().await;
        if self.inner.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ControlError::invalid_state("the daemon is shutting down"));
        }
        if sessions.contains_key(id) {
            return Ok(false);
        }
        let config = self.config();
        let max = config.engine.max_active_sessions as usize;
        if sessions.len() >= max {
            return Err(capacity_error(max));
        }
        let (row, tracks) = self
            .inner
            .store
            .load_session(id)
            .await?
            .ok_or_else(|| not_found_session(id))?;
        let mut next_takes = BTreeMap::new();
        for take in self.inner.store.list_takes(id).await? {
            let next = next_takes.entry(take.track_index).or_insert(1);
            *next += 1;
        }
        let saved_outputs = self.inner.store.output_connections(id).await?;
        let session = session::graph_call(|| {
            ActiveSession::start(
                row,
                tracks,
                &next_takes,
                &saved_outputs,
                &self.inner.graph,
                &config,
                &self.inner.data_dir,
                self.inner.store.clone(),
                self.inner.events.clone(),
            )
        })?;
        self.inner
            .publications
            .insert(id, session.publication().clone());
        let cell: SessionCell = Arc::new(Mutex::new(Some(session)));
        sessions.insert(id.to_string(), cell.clone());
        drop(sessions);
        spawn_pump(Arc::downgrade(&cell));
        let _ = self.inner.events.send(Event::SessionAdded {
            session: id.to_string(),
        });
        Ok(true)
    }

    /// Runs `op` on an active session under its lock.
    async fn with_session<T, F>(&self, id: &str, op: F) -> ControlResult<T>
    where
        F: for<'a> FnOnce(
            &'a mut ActiveSession,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = ControlResult<T>> + Send + 'a>,
        >,
    {
        let cell = self
            .inner
            .sessions
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| not_active(id))?;
        let mut guard = cell.lock().await;
        let session = guard.as_mut().ok_or_else(|| not_active(id))?;
        let result = op(session).await;
        // Also after a failed operation: it may have drained reports or changed a track.
        session.publish();
        result
    }

    /// Marks every take left `recording` by a crash as `recovered`: repairs its file from its
    /// length and places it as a clip. A missing or foreign file marks the take `failed`.
    async fn recover_takes(&self) -> ControlResult<()> {
        let store = &self.inner.store;
        for take in store.takes_with_status(TakeStatus::Recording).await? {
            let path = self.inner.data_dir.join(&take.path);
            let repaired = tokio::task::spawn_blocking({
                let path = path.clone();
                move || repair_wav(&path)
            })
            .await
            .map_err(|e| ControlError::storage(format!("recovery task: {e}")))?;
            match repaired {
                Ok(wav) => {
                    let rate = f64::from(wav.sample_rate.max(1));
                    let metrics = TakeMetrics {
                        duration_ms: wav.frames as f64 * 1000.0 / rate,
                        data_bytes: wav.frames
                            * u64::from(wav.channels)
                            * u64::from(wav.format.bytes_per_sample()),
                        ..take.metrics.clone()
                    };
                    store
                        .finish_take(take.id, TakeStatus::Recovered, wav.frames, metrics)
                        .await?;
                    store
                        .add_take_event(TakeEvent {
                            take_id: take.id,
                            kind: "recovered".into(),
                            frame: wav.frames,
                            length: 0,
                            detail: "the daemon stopped mid-take; file repaired from its length"
                                .into(),
                        })
                        .await?;
                    if wav.frames > 0 {
                        store
                            .insert_clip(ClipRow {
                                id: 0,
                                session_id: take.session_id.clone(),
                                track_index: take.track_index,
                                take_id: Some(take.id),
                                path: take.path.clone(),
                                start: take.start_frame,
                                offset: 0,
                                length: wav.frames,
                                gain: 1.0,
                            })
                            .await?;
                    }
                    tracing::info!(take = take.id, frames = wav.frames, path = %path.display(), "take recovered");
                }
                Err(e) => {
                    store
                        .finish_take(take.id, TakeStatus::Failed, 0, take.metrics.clone())
                        .await?;
                    store
                        .add_take_event(TakeEvent {
                            take_id: take.id,
                            kind: "failed".into(),
                            frame: 0,
                            length: 0,
                            detail: format!("recovery: {e}"),
                        })
                        .await?;
                    tracing::error!(take = take.id, path = %path.display(), "take not recoverable: {e}");
                }
            }
        }
        Ok(())
    }
}

/// A new track's settings: unity gain and level, centred, unmuted, unsoloed, auto monitoring.
fn new_track(index: u32, name: String, channels: u8, armed: bool, input: String) -> TrackRow {
    TrackRow {
        index,
        name,
        channels,
        armed,
        input_gain: 1.0,
        level: 1.0,
        pan: 0.0,
        muted: false,
        soloed: false,
        input,
        monitoring: Monitoring::Auto.as_str().into(),
    }
}

/// Validates `update` against `old`: returns the new row and the fields that changed.
fn apply_update(old: &TrackRow, update: TrackUpdate) -> ControlResult<(TrackRow, Vec<TrackField>)> {
    let mut row = old.clone();
    let mut fields = Vec::new();
    if let Some(name) = update.name {
        row.name = validate::name("track", &name)?;
        if row.name != old.name {
            fields.push(TrackField::Name);
        }
    }
    if let Some(gain) = update.input_gain {
        row.input_gain = validate::number("inputGain", gain, validate::INPUT_GAIN_RANGE)?;
        if row.input_gain != old.input_gain {
            fields.push(TrackField::InputGain);
        }
    }
    if let Some(level) = update.level {
        row.level = validate::number("level", level, validate::LEVEL_RANGE)?;
        if row.level != old.level {
            fields.push(TrackField::Level);
        }
    }
    if let Some(pan) = update.pan {
        row.pan = validate::number("pan", pan, validate::PAN_RANGE)?;
        if row.pan != old.pan {
            fields.push(TrackField::Pan);
        }
    }
    if let Some(monitoring) = update.monitoring {
        let mode = Monitoring::parse(&monitoring).ok_or_else(|| {
            ControlError::invalid_argument(format!(
                "monitoring must be auto, input or off, got {monitoring:?}"
            ))
        })?;
        row.monitoring = mode.as_str().into();
        if row.monitoring != old.monitoring {
            fields.push(TrackField::Monitoring);
        }
    }
    if let Some(input) = update.input {
        validate::input(&input)?;
        row.input = input;
        if row.input != old.input {
            fields.push(TrackField::Input);
        }
    }
    for (value, target, field) in [
        (update.armed, &mut row.armed, TrackField::Armed),
        (update.muted, &mut row.muted, TrackField::Muted),
        (update.soloed, &mut row.soloed, TrackField::Soloed),
    ] {
        if let Some(value) = value {
            if *target != value {
                *target = value;
                fields.push(field);
            }
        }
    }
    Ok((row, fields))
}

/// Applies engine and writer reports every [`PUMP_INTERVAL`] while the session lives.
fn spawn_pump(cell: std::sync::Weak<Mutex<Option<ActiveSession>>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PUMP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(cell) = cell.upgrade() else { return };
            let mut guard = cell.lock().await;
            match guard.as_mut() {
                Some(session) => {
                    session.drain().await;
                    session.service_backend().await;
                    session.publish();
                }
                None => return,
            }
        }
    });
}

fn capacity_error(max: usize) -> ControlError {
    ControlError::invalid_state(format!(
        "{max} sessions are active (engine.max_active_sessions): close one first"
    ))
}

fn not_found_session(id: &str) -> ControlError {
    ControlError::not_found(format!("no session {id:?}"))
}

fn not_active(id: &str) -> ControlError {
    ControlError::not_found(format!(
        "no active session {id:?} (see `overdub session list`; `overdub session open ID` activates a stored one)"
    ))
}

fn not_found_track(index: u32) -> ControlError {
    ControlError::not_found(format!("no track {index}"))
}

/// A new session id: 12 lowercase hex digits from the kernel's random source (valid in D-Bus
/// object paths and file names).
fn new_session_id() -> ControlResult<String> {
    use std::io::Read;
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ControlError::backend(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `ci` under CI, `container` inside a container, else `desktop`.
fn detect_environment() -> String {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        return "ci".into();
    }
    let in_container = Path::new("/.dockerenv").exists()
        || Path::new("/run/.containerenv").exists()
        || std::env::var_os("container").is_some()
        || std::fs::read_to_string("/proc/1/cgroup")
            .map(|s| s.contains("docker") || s.contains("kubepods") || s.contains("lxc"))
            .unwrap_or(false);
    if in_container {
        "container".into()
    } else {
        "desktop".into()
    }
}

/// What unit tests elsewhere in the crate need to run a real control.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Control, CreateSession};

    /// A control on the default configuration (virtual graph) with its store and data in
    /// `dir`, and one session named `name` of `tracks` tracks; returns the session's id.
    pub(crate) async fn control_with_session(
        dir: &std::path::Path,
        name: &str,
        tracks: u32,
    ) -> (Control, String) {
        let store = crate::store::Store::open(&dir.join("overdub.db")).unwrap();
        let control = Control::start(crate::config::Config::default(), dir.into(), store)
            .await
            .unwrap();
        let session = control
            .create_session(CreateSession {
                name: name.into(),
                tracks: Some(tracks),
                ..CreateSession::default()
            })
            .await
            .unwrap();
        (control, session.row.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> TrackRow {
        TrackRow {
            index: 1,
            name: "Track 1".into(),
            channels: 1,
            armed: false,
            input_gain: 1.0,
            level: 1.0,
            pan: 0.0,
            muted: false,
            soloed: false,
            input: "Virtual Input 1".into(),
            monitoring: "auto".into(),
        }
    }

    #[test]
    fn an_update_with_one_bad_value_changes_nothing() {
        let update = TrackUpdate {
            level: Some(0.5),
            pan: Some(f64::NAN),
            ..TrackUpdate::default()
        };
        let err = apply_update(&row(), update).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("pan"), "{err}");
    }

    #[test]
    fn an_update_reports_only_changed_fields() {
        let update = TrackUpdate {
            level: Some(1.0),
            pan: Some(-0.5),
            armed: Some(true),
            ..TrackUpdate::default()
        };
        let (new, fields) = apply_update(&row(), update).unwrap();
        assert_eq!(fields, vec![TrackField::Pan, TrackField::Armed]);
        assert_eq!(new.pan, -0.5);
        assert!(new.armed);
    }

    #[test]
    fn session_ids_are_path_safe_and_distinct() {
        let a = new_session_id().unwrap();
        let b = new_session_id().unwrap();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
