//! One active session: its engine, audio graph, capture writer and take bookkeeping.
//!
//! Not real-time: everything here runs on tokio tasks, under the session's mutex. It talks to
//! the processor only through the engine handle's lock-free queues and atomics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};

use crate::backend::{
    BackendError, BackendEvent, BackendInfo, Graph, RunningBackend, TransportRequest,
};
use crate::capture::{
    bytes_per_second, free_space, CaptureWriter, ControlToWriter, SampleFormat, WriterConfig,
    WriterToControl,
};
use crate::config::Config;
use crate::engine::{
    engine, ControlToEngine, EngineConfig, EngineHandle, EngineShared, EngineToControl, Monitoring,
    TrackParams, TrackSlot, TransportState,
};
use crate::store::{
    ClipRow, NewTake, SessionRow, Store, TakeEvent, TakeMetrics, TakeStatus, TrackRow,
};

use super::error::{ControlError, ControlResult};
use super::view::Publication;
use super::{Event, Metrics, TrackField};

/// How long an operation waits for the audio thread to apply a command.
const ENGINE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `stop` waits for the writer to finalize the takes.
const FINALIZE_TIMEOUT: Duration = Duration::from_secs(10);

/// A take being recorded.
struct OpenTake {
    take_id: i64,
    path: PathBuf,
    /// Timeline position of its first frame, once the writer has bound it.
    start_frame: Option<u64>,
    dropped_frames: u64,
}

/// One track of an active session.
pub(super) struct TrackState {
    pub row: TrackRow,
    pub params: TrackParams,
    /// Engine slot (index − 1).
    slot: u16,
    /// Takes prepared or recording, oldest first.
    takes: Vec<OpenTake>,
    next_take: u32,
    /// Takes the engine has opened on this track (to confirm an arm while recording).
    engine_starts: u64,
}

/// Counters of the current (or last) recording run, for the metrics dictionary.
#[derive(Default)]
struct RunStats {
    takes: u32,
    finished_bytes: u64,
    overflows: u64,
    last: Option<Metrics>,
}

/// An active session. Lives behind a tokio mutex in [`super::Control`].
pub(super) struct ActiveSession {
    pub row: SessionRow,
    pub tracks: BTreeMap<u32, TrackState>,
    pub state: TransportState,
    /// The rolling state a pause came from (`Recording` means takes are open and waiting).
    paused_from: TransportState,
    /// The engine's reason for refusing the last command, since the last [`Self::command`].
    rejection: Option<&'static str>,
    engine: EngineHandle,
    shared: Arc<EngineShared>,
    backend: Option<Box<dyn RunningBackend>>,
    writer: Option<CaptureWriter>,
    writer_events: mpsc::UnboundedReceiver<WriterToControl>,
    /// The graph's input latency and period as the last recording run started (at open before
    /// the first): what the metrics' `averageLatency` counts. The period is also what the
    /// engine is run with while the server is gone.
    input_latency_frames: u32,
    period: u32,
    format: SampleFormat,
    ring_seconds: f64,
    max_tracks: u32,
    min_free_seconds: f64,
    data_dir: PathBuf,
    store: Store,
    events: broadcast::Sender<Event>,
    run: RunStats,
    xruns_seen: u64,
    /// The audio server went away while this session recorded: record again when it returns.
    resume_on_return: bool,
    /// Inbound streams and taps attached through handles.
    pub(super) audio: super::stream::AudioLinks,
    /// What read paths see of this session without its lock ([`Self::publish`]).
    publication: Arc<Publication>,
}

/// Runs `call`, which goes into the audio graph, without holding up the runtime. A server's
/// graph may wait on its server there: a port registered, a node attached, a lost server
/// looked for (milliseconds; seconds while the server is in trouble), or wait for the graph's
/// lock while another thread does one of these. The runtime has a single worker
/// (`src/main.rs`), so for the call's duration that worker's queue moves to another thread
/// and D-Bus, the bridge and the other sessions carry on. Needs the multi-thread runtime.
pub(super) fn graph_call<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

impl ActiveSession {
    /// Builds the engine, starts the audio graph and the capture writer, and installs the
    /// tracks. Waits on the audio server: call it through [`graph_call`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        row: SessionRow,
        tracks: Vec<TrackRow>,
        next_takes: &BTreeMap<u32, u32>,
        saved_outputs: &[(String, String)],
        graph: &Graph,
        config: &Config,
        data_dir: &Path,
        store: Store,
        events: broadcast::Sender<Event>,
    ) -> ControlResult<ActiveSession> {
        let sample_rate = row.sample_rate;
        let period = graph.period().max(1);
        let max_tracks = config.engine.max_tracks;
        let (processor, handle, markers) = engine(EngineConfig::new(
            sample_rate,
            period as usize,
            max_tracks as usize,
        ));
        let shared = handle.shared().clone();
        let (writer_tx, writer_events) = mpsc::unbounded_channel();
        let writer = CaptureWriter::spawn(
            WriterConfig {
                sample_rate,
                format: config.capture.sample_format(),
                flush_interval: config.capture.flush_duration(),
                sync: config.capture.sync_scope(),
                watch_dir: data_dir.to_path_buf(),
                stop_free_seconds: config.capture.stop_free_seconds,
            },
            markers,
            Box::new(move |event| {
                let _ = writer_tx.send(event);
            }),
        )
        .map_err(|e| ControlError::storage(format!("cannot start the capture writer: {e}")))?;
        let backend = graph
            .start(&row.name, sample_rate, max_tracks as usize, processor)
            .map_err(backend_error)?;
        let info = backend.info();
        let publication = Arc::new(Publication::new(
            &row,
            TransportState::Stopped,
            Vec::new(),
            shared.clone(),
        ));
        let mut session = ActiveSession {
            row,
            tracks: BTreeMap::new(),
            state: TransportState::Stopped,
            paused_from: TransportState::Stopped,
            rejection: None,
            engine: handle,
            shared,
            backend: Some(backend),
            writer: Some(writer),
            writer_events,
            input_latency_frames: info.input_latency_frames,
            period: info.period,
            format: config.capture.sample_format(),
            ring_seconds: config.capture.ring_seconds,
            max_tracks,
            min_free_seconds: config.capture.min_free_seconds,
            data_dir: data_dir.to_path_buf(),
            store,
            events,
            run: RunStats::default(),
            xruns_seen: 0,
            resume_on_return: false,
            audio: super::stream::AudioLinks::new(),
            publication,
        };
        for track in tracks {
            let next = next_takes.get(&track.index).copied().unwrap_or(1);
            session.install_track(track, next)?;
        }
        session.publish();
        if let Some(backend) = session.backend.as_mut() {
            backend.restore_outputs(saved_outputs);
        }
        Ok(session)
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.row.id
    }

    /// This session's publication, for the registry of [`super::Control`].
    pub fn publication(&self) -> &Arc<Publication> {
        &self.publication
    }

    /// Publishes the session's view (row, transport state, tracks) for lock-free readers if it
    /// changed since the last call (see [`super::view`]). Cheap when nothing changed: it
    /// compares, it does not allocate.
    pub fn publish(&self) {
        self.publication
            .update(&self.row, self.state, self.tracks.values().map(|t| &t.row));
    }

    /// Current position in frames.
    pub fn position(&self) -> u64 {
        self.shared.position()
    }

    /// Applies the settings that may change while the session runs (SIGHUP).
    pub fn reload(&mut self, config: &Config) {
        self.min_free_seconds = config.capture.min_free_seconds;
        if let Some(writer) = &self.writer {
            writer.send(ControlToWriter::SetFlushInterval(
                config.capture.flush_duration(),
            ));
            writer.send(ControlToWriter::SetStopFreeSeconds(
                config.capture.stop_free_seconds,
            ));
        }
    }

    /// Whether any take is prepared or open.
    pub fn has_open_takes(&self) -> bool {
        self.tracks.values().any(|t| !t.takes.is_empty())
    }

    /// The lowest free track index, if below the limit.
    pub fn free_index(&self) -> Option<u32> {
        (1..=self.max_tracks).find(|i| !self.tracks.contains_key(i))
    }

    /// Checks an input word for a track of `channels` channels against the session's audio
    /// graph, changing nothing.
    pub fn check_input(&self, input: &str, channels: u8) -> ControlResult<()> {
        match &self.backend {
            Some(backend) => {
                graph_call(|| backend.check_input(input, channels)).map_err(backend_error)
            }
            None => Err(ControlError::backend(
                "the session's audio graph is stopped",
            )),
        }
    }

    /// Routes a track's input in the audio graph (ports and connections where the graph has
    /// them) and returns the engine input channels.
    fn route_track(&mut self, row: &TrackRow) -> ControlResult<[u16; 2]> {
        let backend = self
            .backend
            .as_mut()
            .ok_or_else(|| ControlError::backend("the session's audio graph is stopped"))?;
        graph_call(|| {
            backend.route_track((row.index - 1) as u16, &row.name, row.channels, &row.input)
        })
        .map_err(backend_error)
    }

    /// Creates the track's ring, hands one end to the engine and the other to the writer.
    pub fn install_track(&mut self, row: TrackRow, next_take: u32) -> ControlResult<()> {
        let slot = (row.index - 1) as u16;
        let params = params_from_row(&row, self.route_track(&row)?)?;
        let capacity = (self.ring_seconds * f64::from(self.row.sample_rate)) as usize
            * usize::from(row.channels);
        let (producer, consumer) = crate::engine::touched_ring(capacity.max(1024));
        if let Some(writer) = &self.writer {
            writer.send(ControlToWriter::AddTrack {
                track: slot,
                channels: row.channels,
                ring: consumer,
            });
        }
        self.send(ControlToEngine::InstallTrack {
            track: slot,
            slot: Box::new(TrackSlot {
                params,
                capture: producer,
            }),
        })?;
        self.tracks.insert(
            row.index,
            TrackState {
                row,
                params,
                slot,
                takes: Vec::new(),
                next_take,
                engine_starts: 0,
            },
        );
        Ok(())
    }

    /// Removes a track that has no open take.
    pub fn remove_track(&mut self, index: u32) -> ControlResult<()> {
        let track = self
            .tracks
            .get(&index)
            .ok_or_else(|| ControlError::not_found(format!("no track {index}")))?;
        if !track.takes.is_empty() {
            return Err(ControlError::invalid_state(format!(
                "track {index} is recording; disarm it or stop first"
            )));
        }
        let slot = track.slot;
        self.send(ControlToEngine::RemoveTrack { track: slot })?;
        if let Some(backend) = self.backend.as_mut() {
            graph_call(|| backend.remove_track(slot));
        }
        if let Some(writer) = &self.writer {
            writer.send(ControlToWriter::RemoveTrack { track: slot });
        }
        self.tracks.remove(&index);
        self.audio.forget_track(index);
        Ok(())
    }

    /// Applies new settings to a track. Arming while recording journals and prepares a take
    /// first, so the take exists before its first sample, and commits the new settings only
    /// once the engine has opened the take (a refusal withdraws the prepared take).
    pub async fn apply_track(&mut self, index: u32, row: TrackRow) -> ControlResult<()> {
        let (old, slot, was_armed, starts) = {
            let track = self
                .tracks
                .get(&index)
                .ok_or_else(|| ControlError::not_found(format!("no track {index}")))?;
            (
                track.row.clone(),
                track.slot,
                track.params.armed,
                track.engine_starts,
            )
        };
        let mut inputs = self
            .tracks
            .get(&index)
            .map(|t| t.params.input)
            .unwrap_or_default();
        if row.input != old.input {
            inputs = self.route_track(&row)?;
        }
        if row.name != old.name {
            if let Some(backend) = self.backend.as_mut() {
                graph_call(|| backend.rename_track(slot, &row.name)).map_err(backend_error)?;
            }
        }
        let params = params_from_row(&row, inputs)?;
        let opens_take = self.capturing() && params.armed && !was_armed;
        let mut prepared = None;
        if opens_take {
            self.check_free_space(&[index])?;
            prepared = Some(self.prepare_take(index).await?);
        }
        let sent = self
            .command(
                ControlToEngine::SetTrack {
                    track: slot,
                    params,
                    at_frame: None,
                },
                |s| {
                    !opens_take
                        || s.tracks
                            .get(&index)
                            .is_some_and(|t| t.engine_starts > starts)
                },
            )
            .await;
        if let Err(error) = sent {
            if let Some(take_id) = prepared {
                self.cancel_take(index, take_id, &error.message).await;
            }
            return Err(error);
        }
        let track = self.tracks.get_mut(&index).expect("checked above");
        track.params = params;
        track.row = row;
        Ok(())
    }

    /// Whether the engine is recording, or paused from recording (its takes stay open).
    fn capturing(&self) -> bool {
        match self.state {
            TransportState::Recording => true,
            TransportState::Paused => self.paused_from == TransportState::Recording,
            _ => false,
        }
    }

    /// `record`: journal a take per armed track, prepare its file, start the transport.
    pub async fn record(&mut self) -> ControlResult<()> {
        self.drain().await;
        match self.state {
            TransportState::Recording => {
                return Err(ControlError::invalid_state("already recording"))
            }
            TransportState::Paused => {
                return Err(ControlError::invalid_state(
                    "the transport is paused: resume or stop first",
                ))
            }
            _ => {}
        }
        let armed: Vec<u32> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.params.armed)
            .map(|(i, _)| *i)
            .collect();
        if armed.is_empty() {
            return Err(ControlError::invalid_state(
                "no track is armed: arm one with `overdub track set N --arm`",
            ));
        }
        self.check_free_space(&armed)?;
        let timing = self.graph_timing();
        self.shared.reset_run_counters();
        self.xruns_seen = 0;
        self.run = RunStats::default();
        let mut prepared = Vec::new();
        let mut result = Ok(());
        for index in &armed {
            match self.prepare_take(*index).await {
                Ok(take_id) => prepared.push((*index, take_id)),
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self
                .command(ControlToEngine::Record { at_frame: None }, |s| {
                    s.state == TransportState::Recording
                })
                .await;
        }
        match &result {
            Ok(()) => {
                if let Some(info) = timing {
                    self.period = info.period;
                    self.input_latency_frames = info.input_latency_frames;
                }
                self.lead(TransportRequest::Start)
            }
            Err(error) => {
                for (index, take_id) in prepared {
                    self.cancel_take(index, take_id, &error.message).await;
                }
            }
        }
        result
    }

    /// The graph's period and input latency now, for the run about to start: both change with
    /// the server's buffer size, and the latency with what is linked into the tracks. `None`
    /// while the server is gone (what was read before stays).
    fn graph_timing(&self) -> Option<BackendInfo> {
        let backend = self.backend.as_ref()?;
        let info = graph_call(|| backend.is_running().then(|| backend.info()))?;
        (info.period > 0).then_some(info)
    }

    /// `play`: roll without capturing.
    pub async fn play(&mut self) -> ControlResult<()> {
        self.drain().await;
        match self.state {
            TransportState::Playing => return Ok(()),
            TransportState::Paused => {
                return Err(ControlError::invalid_state(
                    "the transport is paused: resume or stop first",
                ))
            }
            _ => {}
        }
        self.command(ControlToEngine::Play, |s| {
            s.state == TransportState::Playing
        })
        .await?;
        self.lead(TransportRequest::Start);
        self.wait_for_takes().await
    }

    /// `pause`: hold the position, suspend capture.
    pub async fn pause(&mut self) -> ControlResult<()> {
        self.drain().await;
        if !matches!(
            self.state,
            TransportState::Playing | TransportState::Recording
        ) {
            return Err(ControlError::invalid_state(format!(
                "cannot pause while {}",
                self.state
            )));
        }
        self.command(ControlToEngine::Pause, |s| {
            s.state == TransportState::Paused
        })
        .await?;
        self.lead(TransportRequest::Stop);
        Ok(())
    }

    /// `resume`: continue what was paused, into the same takes.
    pub async fn resume(&mut self) -> ControlResult<()> {
        self.drain().await;
        if self.state != TransportState::Paused {
            return Err(ControlError::invalid_state(format!(
                "cannot resume while {}",
                self.state
            )));
        }
        self.command(ControlToEngine::Resume, |s| {
            s.state != TransportState::Paused
        })
        .await?;
        self.lead(TransportRequest::Start);
        Ok(())
    }

    /// `stop`: end every take, wait until their files are final, return the metrics.
    pub async fn stop(&mut self) -> ControlResult<Metrics> {
        self.drain().await;
        if self.state != TransportState::Stopped {
            self.command(ControlToEngine::Stop { at_frame: None }, |s| {
                s.state == TransportState::Stopped
            })
            .await?;
            self.lead(TransportRequest::Stop);
        }
        self.wait_for_takes().await?;
        let metrics = self.metrics();
        self.run.last = Some(metrics.clone());
        Ok(metrics)
    }

    /// `seek`: move the position (not while recording).
    pub async fn seek(&mut self, frame: u64) -> ControlResult<()> {
        self.drain().await;
        if self.capturing() {
            return Err(ControlError::invalid_state(
                "cannot seek while recording: stop first",
            ));
        }
        self.command(ControlToEngine::Seek { frame }, move |s| {
            s.state == TransportState::Playing || s.shared.position() == frame
        })
        .await?;
        self.lead(TransportRequest::Locate(frame));
        Ok(())
    }

    /// The metrics of the current recording run, or of the last one when stopped.
    pub fn metrics(&self) -> Metrics {
        if self.state == TransportState::Stopped && !self.has_open_takes() {
            if let Some(last) = &self.run.last {
                return last.clone();
            }
        }
        let rate = f64::from(self.row.sample_rate);
        let recorded = self.shared.recorded_frames();
        let open_bytes: u64 = self
            .tracks
            .values()
            .filter(|t| !t.takes.is_empty())
            .map(|t| {
                recorded * u64::from(t.row.channels) * u64::from(self.format.bytes_per_sample())
            })
            .sum();
        let xruns = self.shared.xruns();
        Metrics {
            session_id: self.row.id.clone(),
            recorded_tracks: self.run.takes,
            total_duration_ms: recorded as f64 * 1000.0 / rate,
            average_latency_ms: f64::from(self.input_latency_frames + self.period) * 1000.0 / rate,
            buffer_underruns: xruns + self.run.overflows,
            data_received: self.run.finished_bytes + open_bytes,
            xruns,
            dropped_frames: self.shared.dropped_frames(),
            disk_buffer_min_fill: f64::from(self.shared.capture_headroom_min()),
            clip_count: self.shared.clip_count(),
        }
    }

    /// Peak and RMS per track, in dBFS, by track index.
    pub fn meters(&self) -> Vec<(f64, f64)> {
        self.tracks
            .values()
            .map(|t| {
                let (peak, rms) = self.shared.track_meter(usize::from(t.slot));
                (to_dbfs(peak), to_dbfs(rms))
            })
            .collect()
    }

    /// How many seconds of recording of `tracks` the free space allows.
    pub fn seconds_available(&self, tracks: &[u32]) -> ControlResult<f64> {
        let free = free_space(&self.data_dir).map_err(|e| {
            ControlError::storage(format!(
                "cannot read free space of {}: {e}",
                self.data_dir.display()
            ))
        })?;
        let rate: u64 = tracks
            .iter()
            .filter_map(|i| self.tracks.get(i))
            .map(|t| bytes_per_second(self.format, u16::from(t.row.channels), self.row.sample_rate))
            .sum();
        Ok(if rate == 0 {
            f64::INFINITY
        } else {
            free as f64 / rate as f64
        })
    }

    fn check_free_space(&self, tracks: &[u32]) -> ControlResult<()> {
        let seconds = self.seconds_available(tracks)?;
        let min = self.min_free_seconds;
        if seconds < min {
            return Err(ControlError::storage(format!(
                "only {seconds:.1} s of recording fit on the disk of {} (capture.min_free_seconds = {min})",
                self.data_dir.display()
            )));
        }
        Ok(())
    }

    /// Journals a take in the store, then has the writer create its file. Returns its id.
    async fn prepare_take(&mut self, index: u32) -> ControlResult<i64> {
        let track = self.tracks.get_mut(&index).expect("caller checked");
        let dir = self
            .data_dir
            .join("sessions")
            .join(&self.row.id)
            .join("takes");
        std::fs::create_dir_all(&dir)
            .map_err(|e| ControlError::storage(format!("cannot create {}: {e}", dir.display())))?;
        let slug = super::validate::slug(&track.row.name);
        let (file, number) = loop {
            let number = track.next_take;
            track.next_take += 1;
            let file = format!("{:02}-{slug}-take{number}.wav", track.row.index);
            if !dir.join(&file).exists() {
                break (file, number);
            }
        };
        let relative = format!("sessions/{}/takes/{file}", self.row.id);
        let path = self.data_dir.join(&relative);
        let take_id = self
            .store
            .insert_take(NewTake {
                session_id: self.row.id.clone(),
                track_index: index,
                path: relative,
                channels: track.row.channels,
                sample_rate: self.row.sample_rate,
                format: self.format.as_str().into(),
            })
            .await?;
        tracing::debug!(session = %self.row.id, track = index, take = number, "take journaled");
        if let Some(writer) = &self.writer {
            writer.send(ControlToWriter::PrepareTake {
                track: track.slot,
                take_id,
                path: path.clone(),
            });
        }
        track.takes.push(OpenTake {
            take_id,
            path,
            start_frame: None,
            dropped_frames: 0,
        });
        self.run.takes += 1;
        Ok(take_id)
    }

    /// Withdraws a prepared take that the engine will never start: out of the writer's FIFO
    /// (its empty file removed), and journaled `failed` with the reason.
    async fn cancel_take(&mut self, index: u32, take_id: i64, reason: &str) {
        let Some(track) = self.tracks.get_mut(&index) else {
            return;
        };
        track.takes.retain(|k| k.take_id != take_id);
        if let Some(writer) = &self.writer {
            writer.send(ControlToWriter::CancelTake {
                track: track.slot,
                take_id,
            });
        }
        self.run.takes = self.run.takes.saturating_sub(1);
        if let Err(e) = self
            .store
            .finish_take(take_id, TakeStatus::Failed, 0, TakeMetrics::default())
            .await
        {
            self.report(e.into());
        }
        self.journal_event(TakeEvent {
            take_id,
            kind: "cancelled".into(),
            frame: 0,
            length: 0,
            detail: format!("never started: {reason}"),
        })
        .await;
    }

    pub(super) fn send(&mut self, command: ControlToEngine) -> ControlResult<()> {
        self.engine
            .send(command)
            .map_err(|_| ControlError::backend("the audio thread's command queue is full"))
    }

    /// Sends `command` to the engine and waits until `done` holds, the engine refuses it
    /// (`invalid_state` with the engine's reason), or [`ENGINE_REPLY_TIMEOUT`] passes.
    async fn command(
        &mut self,
        command: ControlToEngine,
        done: impl Fn(&Self) -> bool,
    ) -> ControlResult<()> {
        self.drain().await;
        if !graph_call(|| self.graph_running())
            && matches!(
                command,
                ControlToEngine::Record { .. } | ControlToEngine::Play | ControlToEngine::Resume
            )
        {
            return Err(ControlError::backend(
                "the audio server is gone; overdub reconnects when it returns",
            ));
        }
        self.rejection = None;
        self.send(command)?;
        let deadline = Instant::now() + ENGINE_REPLY_TIMEOUT;
        loop {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let period = self.period as usize;
            if let Some(backend) = self.backend.as_mut() {
                graph_call(|| {
                    if !backend.is_running() {
                        backend.run_detached(period);
                    }
                });
            }
            self.drain().await;
            if let Some(reason) = self.rejection.take() {
                return Err(ControlError::invalid_state(reason));
            }
            if done(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ControlError::backend(format!(
                    "the audio thread did not answer in {} s (state {})",
                    ENGINE_REPLY_TIMEOUT.as_secs(),
                    self.state
                )));
            }
        }
    }

    /// Waits until every take the engine has ended is final on disk; an error if the writer
    /// has not finished them in [`FINALIZE_TIMEOUT`] (they stay open and finish later).
    async fn wait_for_takes(&mut self) -> ControlResult<()> {
        let deadline = Instant::now() + FINALIZE_TIMEOUT;
        while self.has_open_takes() && !self.capturing() {
            if Instant::now() > deadline {
                return Err(ControlError::storage(format!(
                    "the takes were not finalized within {} s; they will be when the disk catches up",
                    FINALIZE_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.drain().await;
        }
        Ok(())
    }

    /// Applies everything the engine and the writer reported since the last call: state,
    /// take boundaries, gaps, finished takes, xruns, low disk. Called by every operation and by
    /// the session's periodic pump.
    pub async fn drain(&mut self) {
        self.apply_releases();
        while let Some(event) = self.engine.pop_event() {
            match event {
                EngineToControl::State { state, frame } => {
                    if state == TransportState::Paused {
                        self.paused_from = self.state;
                    }
                    self.state = state;
                    let _ = self.events.send(Event::State {
                        session: self.row.id.clone(),
                        state,
                        position: frame,
                    });
                }
                EngineToControl::Overflow { .. } => self.run.overflows += 1,
                EngineToControl::Rejected { reason } => {
                    tracing::warn!(session = %self.row.id, reason, "audio thread refused a command");
                    self.rejection = Some(reason);
                }
                EngineToControl::TrackRetired { slot, .. } => drop(slot),
                EngineToControl::StreamRetired { stream, .. } => drop(stream),
                EngineToControl::TapRetired { tap, .. } => drop(tap),
                EngineToControl::TakeStarted { track, .. } => {
                    if let Some(t) = self.tracks.values_mut().find(|t| t.slot == track) {
                        t.engine_starts += 1;
                    }
                }
                EngineToControl::TakeEnded { .. } => {}
            }
        }
        // Readers see a new transport state before the writer's reports are journaled.
        self.publish();
        while let Ok(event) = self.writer_events.try_recv() {
            self.apply_writer_event(event).await;
        }
        let xruns = self.shared.xruns();
        if xruns > self.xruns_seen {
            let position = self.shared.position();
            let events: Vec<TakeEvent> = self
                .open_take_ids()
                .into_iter()
                .map(|take_id| TakeEvent {
                    take_id,
                    kind: "xrun".into(),
                    frame: position,
                    length: xruns - self.xruns_seen,
                    detail: String::new(),
                })
                .collect();
            if !events.is_empty() {
                if let Err(e) = self.store.add_take_events(events).await {
                    self.report(e.into());
                }
            }
            self.xruns_seen = xruns;
        }
    }

    fn open_take_ids(&self) -> Vec<i64> {
        self.tracks
            .values()
            .flat_map(|t| t.takes.iter().filter(|k| k.start_frame.is_some()))
            .map(|k| k.take_id)
            .collect()
    }

    async fn apply_writer_event(&mut self, event: WriterToControl) {
        match event {
            WriterToControl::TakeStarted { take_id, frame, .. } => {
                if let Some(take) = self.find_take(take_id) {
                    take.start_frame = Some(frame);
                }
                if let Err(e) = self.store.set_take_started(take_id, frame).await {
                    self.report(ControlError::from(e));
                }
            }
            WriterToControl::TakeGap {
                take_id,
                at,
                frames,
            } => {
                if let Some(take) = self.find_take(take_id) {
                    take.dropped_frames += frames;
                }
                self.journal_event(TakeEvent {
                    take_id,
                    kind: "gap".into(),
                    frame: at,
                    length: frames,
                    detail: "capture buffer overflow: silence written".into(),
                })
                .await;
            }
            WriterToControl::TakeFinished {
                take_id,
                track,
                frames,
                data_bytes,
                path,
            } => {
                self.finish_take(
                    take_id,
                    track,
                    frames,
                    data_bytes,
                    &path,
                    TakeStatus::Complete,
                )
                .await;
            }
            WriterToControl::TakeFailed {
                take_id,
                track,
                frames,
                message,
            } => {
                self.journal_event(TakeEvent {
                    take_id,
                    kind: "failed".into(),
                    frame: frames,
                    length: 0,
                    detail: message.clone(),
                })
                .await;
                self.report(ControlError::storage(format!("take {take_id}: {message}")));
                let path = self.take_path(take_id).unwrap_or_default();
                let bytes = frames
                    * u64::from(self.format.bytes_per_sample())
                    * u64::from(self.channels_of_slot(track));
                self.finish_take(take_id, track, frames, bytes, &path, TakeStatus::Failed)
                    .await;
            }
            WriterToControl::PrepareFailed {
                take_id,
                track,
                message,
            } => {
                self.report(ControlError::storage(format!(
                    "cannot create the file of take {take_id}: {message}"
                )));
                self.finish_take(take_id, track, 0, 0, Path::new(""), TakeStatus::Failed)
                    .await;
            }
            WriterToControl::DiskLow {
                free_bytes,
                seconds_left,
            } => {
                self.report(ControlError::storage(format!(
                    "the disk is almost full ({free_bytes} bytes, {seconds_left:.1} s of recording left): recording stopped"
                )));
                if self.state != TransportState::Stopped {
                    let _ = self.send(ControlToEngine::Stop { at_frame: None });
                }
                for take_id in self.open_take_ids() {
                    self.journal_event(TakeEvent {
                        take_id,
                        kind: "disk_low".into(),
                        frame: self.shared.position(),
                        length: 0,
                        detail: format!("{seconds_left:.1} s left"),
                    })
                    .await;
                }
            }
            WriterToControl::TakeCancelled { take_id, .. } => {
                tracing::debug!(session = %self.row.id, take_id, "prepared take withdrawn");
            }
            WriterToControl::Unbound { track } => {
                self.report(ControlError::backend(format!(
                    "audio for track slot {track} arrived with no journaled take and was discarded"
                )));
            }
        }
    }

    fn channels_of_slot(&self, slot: u16) -> u8 {
        self.tracks
            .values()
            .find(|t| t.slot == slot)
            .map(|t| t.row.channels)
            .unwrap_or(1)
    }

    fn find_take(&mut self, take_id: i64) -> Option<&mut OpenTake> {
        self.tracks
            .values_mut()
            .flat_map(|t| t.takes.iter_mut())
            .find(|k| k.take_id == take_id)
    }

    fn take_path(&self, take_id: i64) -> Option<PathBuf> {
        self.tracks
            .values()
            .flat_map(|t| t.takes.iter())
            .find(|k| k.take_id == take_id)
            .map(|k| k.path.clone())
    }

    /// Records a finished take in the store (status, metrics, clip) and announces it.
    async fn finish_take(
        &mut self,
        take_id: i64,
        slot: u16,
        frames: u64,
        data_bytes: u64,
        path: &Path,
        status: TakeStatus,
    ) {
        let Some((index, take)) = self.tracks.iter_mut().find_map(|(i, t)| {
            let at = t.takes.iter().position(|k| k.take_id == take_id)?;
            Some((*i, t.takes.remove(at)))
        }) else {
            tracing::warn!(
                take_id,
                slot,
                "the writer finished a take control does not know"
            );
            return;
        };
        let rate = f64::from(self.row.sample_rate);
        let metrics = TakeMetrics {
            duration_ms: frames as f64 * 1000.0 / rate,
            xruns: self.shared.xruns(),
            dropped_frames: take.dropped_frames,
            average_latency_ms: f64::from(self.input_latency_frames + self.period) * 1000.0 / rate,
            data_bytes,
            disk_buffer_min_fill: f64::from(self.shared.capture_headroom_min()),
            clip_count: self.shared.clip_count(),
        };
        self.run.finished_bytes += data_bytes;
        if let Err(e) = self
            .store
            .finish_take(take_id, status, frames, metrics)
            .await
        {
            self.report(e.into());
        }
        if frames > 0 {
            let relative = path
                .strip_prefix(&self.data_dir)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            let clip = ClipRow {
                id: 0,
                session_id: self.row.id.clone(),
                track_index: index,
                take_id: Some(take_id),
                path: relative,
                start: take.start_frame.unwrap_or(0),
                offset: 0,
                length: frames,
                gain: 1.0,
            };
            if let Err(e) = self.store.insert_clip(clip).await {
                self.report(e.into());
            }
        }
        let _ = self.events.send(Event::TakeFinished {
            session: self.row.id.clone(),
            track: index,
            path: path.to_string_lossy().into_owned(),
            frames,
            status,
        });
    }

    async fn journal_event(&mut self, event: TakeEvent) {
        if let Err(e) = self.store.add_take_event(event).await {
            self.report(e.into());
        }
    }

    /// Logs an error and sends it to every surface as an `Error` event.
    fn report(&self, error: ControlError) {
        tracing::error!(session = %self.row.id, "{error}");
        let _ = self.events.send(Event::Error {
            session: Some(self.row.id.clone()),
            code: error.code,
            message: error.message,
        });
    }

    /// Sends a track's change to every surface.
    pub fn announce_track(&self, fields: Vec<TrackField>, track: TrackRow) {
        let _ = self.events.send(Event::TrackChanged {
            session: self.row.id.clone(),
            fields,
            track,
        });
    }

    /// Whether the audio graph runs the processor (false while the audio server is gone).
    fn graph_running(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| b.is_running())
    }

    /// Reads what the audio graph reports: xruns into the metrics, a lost server (takes closed,
    /// an `Error` event), its return (recording resumed into new takes if it was recording),
    /// and connections changed by other programs (stored as the track's new input).
    pub async fn service_backend(&mut self) {
        let Some(backend) = self.backend.as_mut() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let xruns = |n| shared.add_xruns(n);
        // Every pump: handing the worker over costs a thread wake, so only where it may wait.
        let events = if backend.poll_may_wait() {
            graph_call(|| backend.poll(&xruns))
        } else {
            backend.poll(&xruns)
        };
        for event in events {
            match event {
                BackendEvent::Lost => self.on_graph_lost().await,
                BackendEvent::Restored => self.on_graph_restored().await,
                BackendEvent::InputChanged { slot, input } => {
                    self.on_input_changed(slot, input).await
                }
                BackendEvent::OutputsChanged { port, peers } => {
                    if let Err(e) = self
                        .store
                        .set_output_connection(&self.row.id, &port, &peers)
                        .await
                    {
                        self.report(e.into());
                    }
                }
                BackendEvent::TransportStarted => self.follow_start().await,
                BackendEvent::TransportStopped => {
                    if self.state != TransportState::Stopped {
                        if let Err(e) = self.stop().await {
                            self.report(e);
                        }
                    }
                }
                BackendEvent::TransportLocated { frame } => {
                    if self.state == TransportState::Stopped && self.position() != frame {
                        if let Err(e) = self.seek(frame).await {
                            self.report(e);
                        }
                    }
                }
            }
        }
    }

    async fn on_graph_lost(&mut self) {
        self.resume_on_return = self.capturing();
        let frame = self.position();
        let open: Vec<i64> = self
            .tracks
            .values()
            .flat_map(|t| t.takes.iter().map(|k| k.take_id))
            .collect();
        for take_id in open {
            self.journal_event(TakeEvent {
                take_id,
                kind: "interrupted".into(),
                frame,
                length: 0,
                detail: "the audio server went away; the take was closed here".into(),
            })
            .await;
        }
        let stopped = if self.state == TransportState::Stopped {
            Ok(())
        } else {
            self.stop().await.map(|_| ())
        };
        let mut message =
            "the audio server went away; overdub reconnects when it returns".to_string();
        if self.resume_on_return {
            message.push_str(" and records again into new takes");
        }
        if let Err(e) = stopped {
            message.push_str(&format!(" (closing the takes: {})", e.message));
        }
        self.report(ControlError::backend(message));
    }

    /// The followed transport started: record when a track is armed, else play.
    async fn follow_start(&mut self) {
        if self.state != TransportState::Stopped {
            return;
        }
        let result = if self.tracks.values().any(|t| t.params.armed) {
            self.record().await
        } else {
            self.play().await
        };
        if let Err(e) = result {
            self.report(ControlError {
                code: e.code,
                message: format!(
                    "the JACK transport started, but overdub did not: {}",
                    e.message
                ),
            });
        }
    }

    /// Passes a transport change on to a led server transport.
    fn lead(&mut self, request: TransportRequest) {
        if let Some(backend) = self.backend.as_mut() {
            graph_call(|| backend.lead_transport(request));
        }
    }

    async fn on_graph_restored(&mut self) {
        tracing::info!(session = %self.row.id, "the audio server is back");
        if std::mem::take(&mut self.resume_on_return) {
            if let Err(e) = self.record().await {
                self.report(ControlError::backend(format!(
                    "the audio server is back, but recording did not resume: {}",
                    e.message
                )));
            }
        }
    }

    async fn on_input_changed(&mut self, slot: u16, input: String) {
        let Some(track) = self.tracks.values_mut().find(|t| t.slot == slot) else {
            return;
        };
        if track.row.input == input {
            return;
        }
        track.row.input = input;
        let row = track.row.clone();
        if let Err(e) = self.store.upsert_track(&self.row.id, row.clone()).await {
            self.report(e.into());
            return;
        }
        self.announce_track(vec![TrackField::Input], row);
    }

    /// Stops the transport, finalizes every take, and shuts the audio graph and writer down.
    pub async fn shut_down(mut self) -> ControlResult<()> {
        let stopped = self.stop().await;
        let backend = self.backend.take();
        let writer = self.writer.take();
        let joined = tokio::task::spawn_blocking(move || {
            if let Some(backend) = backend {
                drop(backend.stop());
            }
            if let Some(writer) = writer {
                writer.shutdown();
            }
        })
        .await;
        while let Ok(event) = self.writer_events.try_recv() {
            self.apply_writer_event(event).await;
        }
        joined.map_err(|e| ControlError::backend(format!("shutting the session down: {e}")))?;
        stopped.map(|_| ())
    }
}

/// Engine parameters for a stored track (values were validated when they were set).
fn params_from_row(row: &TrackRow, input: [u16; 2]) -> ControlResult<TrackParams> {
    Ok(TrackParams {
        channels: row.channels,
        input,
        armed: row.armed,
        input_gain: row.input_gain as f32,
        level: row.level as f32,
        pan: row.pan as f32,
        muted: row.muted,
        soloed: row.soloed,
        monitoring: Monitoring::parse(&row.monitoring).ok_or_else(|| {
            ControlError::invalid_argument(format!("unknown monitoring mode {:?}", row.monitoring))
        })?,
    })
}

/// Maps a backend error to control's: a bad input word is the caller's mistake.
fn backend_error(error: BackendError) -> ControlError {
    if error.invalid_input {
        ControlError::invalid_argument(error.message)
    } else {
        ControlError::backend(error.message)
    }
}

/// Linear amplitude in dBFS, floored at −120.
pub(super) fn to_dbfs(linear: f32) -> f64 {
    if linear <= 1e-6 {
        -120.0
    } else {
        (20.0 * f64::from(linear).log10()).max(-120.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// On the daemon's runtime (one worker), a graph call that waits on its server leaves the
    /// other tasks running: here a 10 ms ticker keeps ticking through a 300 ms call.
    #[test]
    fn a_waiting_graph_call_leaves_the_one_worker_running() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ticks = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&ticks);
        let during = runtime.block_on(async move {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                loop {
                    tick.tick().await;
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            });
            tokio::time::sleep(Duration::from_millis(30)).await;
            tokio::spawn(async move {
                let before = ticks.load(Ordering::Relaxed);
                super::graph_call(|| std::thread::sleep(Duration::from_millis(300)));
                ticks.load(Ordering::Relaxed) - before
            })
            .await
            .unwrap()
        });
        assert!(during >= 10, "only {during} ticks during the call");
    }
}
