//! The real-time processor: applies commands, runs the transport, feeds capture rings and mixes
//! the monitor output. Everything reachable from [`Processor::process`] is real-time safe: no
//! allocation, lock, syscall, logging or panic.

use std::sync::Arc;

use rtrb::{Consumer, Producer};

use super::messages::{
    CaptureMarker, ControlToEngine, EngineToControl, TrackParams, TrackSlot, TransportState,
    NO_INPUT,
};
use super::meter::Meter;
use super::mixer::{add_scaled, audible, monitors_input, pan_gains};
use super::shared::EngineShared;
use super::stream::{InboundStream, MonitorTap, TapSource, MAX_TAPS};

/// The backend's input channels for one period, planar. Implemented by each backend over its own
/// buffers; the processor only reads.
pub trait AudioInputs {
    /// Number of input channels the backend offers this period.
    fn channel_count(&self) -> usize;
    /// Samples of channel `index` (`< channel_count()`) for the period. A slice shorter than the
    /// period reads as silence after its end.
    fn channel(&self, index: usize) -> &[f32];
}

/// Per-track outputs a backend offers (JACK direct outs). The processor writes into each what
/// its track sends to the master (post level, pan, mute and solo; silence when not heard).
pub trait TrackOutputs {
    /// Left and right buffers of track `slot` for this call (as long as the call's period), or
    /// `None` when the track has no outputs. Must be real-time safe.
    fn track_output(&mut self, slot: usize) -> Option<(&mut [f32], &mut [f32])>;
}

/// Everything one call to [`Processor::process`] works on: the inputs and the master outputs.
pub struct ProcessContext<'a> {
    /// Frames in this period. Larger than the engine's `max_period` is allowed (processed in
    /// chunks); larger than the master buffers is clamped to them.
    pub frames: usize,
    /// Backend input channels.
    pub inputs: &'a dyn AudioInputs,
    /// Master output, left; overwritten.
    pub master_left: &'a mut [f32],
    /// Master output, right; overwritten.
    pub master_right: &'a mut [f32],
    /// Per-track outputs, where the backend has them; written for every installed track.
    pub track_outputs: Option<&'a mut dyn TrackOutputs>,
}

/// The open take of a track.
#[derive(Clone, Copy, Debug)]
struct Take {
    /// Take-relative frames so far (samples delivered plus gaps).
    len: u64,
}

/// Capture markers of one track not yet accepted by the marker queue, kept in contract order:
/// `TakeStart`, then the gap, then `TakeEnd`. While anything is pending no samples are pushed
/// (they become part of the gap), so the ordering contract of [`CaptureMarker`] always holds.
#[derive(Clone, Copy, Debug, Default)]
struct Backlog {
    /// Timeline frame of a `TakeStart` still to push.
    start: Option<u64>,
    /// Take-relative frame where the pending gap starts.
    gap_at: u64,
    /// Length of the pending gap (0 = none).
    gap_frames: u64,
    /// Length of a closed take whose `TakeEnd` is still to push.
    end: Option<u64>,
}

impl Backlog {
    fn add_gap(&mut self, at: u64, frames: u64) {
        if frames == 0 {
            return;
        }
        if self.gap_frames == 0 {
            self.gap_at = at;
        }
        self.gap_frames += frames;
    }

    /// Pushes what is pending, in order; the gap only if `with_gap` or a `TakeEnd` follows it.
    /// Returns whether nothing that must precede new samples is left. Real-time safe.
    fn flush(&mut self, track: u16, outlets: &mut Outlets, with_gap: bool) -> bool {
        if let Some(frame) = self.start {
            if !outlets.push_marker(CaptureMarker::TakeStart { track, frame }) {
                return false;
            }
            self.start = None;
        }
        if self.gap_frames > 0 && (with_gap || self.end.is_some()) {
            let (at, frames) = (self.gap_at, self.gap_frames);
            if !outlets.push_marker(CaptureMarker::Gap { track, at, frames }) {
                return false;
            }
            self.gap_frames = 0;
            outlets.emit(EngineToControl::Overflow { track, at, frames });
        }
        if let Some(at) = self.end {
            if !outlets.push_marker(CaptureMarker::TakeEnd { track, at }) {
                return false;
            }
            self.end = None;
        }
        true
    }
}

/// One track slot on the real-time side.
struct TrackState {
    slot: Option<Box<TrackSlot>>,
    take: Option<Take>,
    backlog: Backlog,
    /// A slot waiting to be handed back in `TrackRetired` (the event queue was full, or its
    /// `TakeEnd` is still pending). Never dropped here: dropping would free memory.
    retired: Option<Box<TrackSlot>>,
    /// Replaces the backend input while attached.
    stream: Option<Box<InboundStream>>,
    meter: Meter,
    /// The pan value last seen and its gains: the pan law's cos/sin only run when it changes.
    pan: (f32, (f32, f32)),
}

/// A stream or tap waiting to be handed back (the event queue was full). Never dropped here.
enum Handback {
    Stream(u16, Box<InboundStream>),
    Tap(u8, Box<MonitorTap>),
}

/// The queues and atomics the processor reports through.
struct Outlets {
    events: Producer<EngineToControl>,
    markers: Producer<CaptureMarker>,
    shared: Arc<EngineShared>,
}

impl Outlets {
    /// Sends an event, counting it as an overflow if the queue is full. Never used for
    /// `TrackRetired` (whose box must not be dropped here). Real-time safe.
    fn emit(&mut self, event: EngineToControl) {
        if self.events.push(event).is_err() {
            self.shared.add_event_overflow();
        }
    }

    fn push_marker(&mut self, marker: CaptureMarker) -> bool {
        self.markers.push(marker).is_ok()
    }

    /// Tries to hand a stream or tap back; returns it if the event queue is full. Real-time
    /// safe.
    fn hand_back(&mut self, item: Handback) -> Option<Handback> {
        let event = match item {
            Handback::Stream(track, stream) => EngineToControl::StreamRetired { track, stream },
            Handback::Tap(id, tap) => EngineToControl::TapRetired { id, tap },
        };
        match self.events.push(event) {
            Ok(()) => None,
            Err(rtrb::PushError::Full(EngineToControl::StreamRetired { track, stream })) => {
                Some(Handback::Stream(track, stream))
            }
            Err(rtrb::PushError::Full(EngineToControl::TapRetired { id, tap })) => {
                Some(Handback::Tap(id, tap))
            }
            // Only the two variants above were pushed, so nothing else can come back.
            Err(rtrb::PushError::Full(_)) => None,
        }
    }

    /// Tries to hand a slot back; returns it if the event queue is full. Real-time safe.
    fn retire(&mut self, track: u16, slot: Box<TrackSlot>) -> Option<Box<TrackSlot>> {
        match self
            .events
            .push(EngineToControl::TrackRetired { track, slot })
        {
            Ok(()) => None,
            Err(rtrb::PushError::Full(EngineToControl::TrackRetired { slot, .. })) => Some(slot),
            // Only `TrackRetired` was pushed, so nothing else can come back.
            Err(rtrb::PushError::Full(_)) => None,
        }
    }
}

/// Every this many rendered segments the capture rings' read positions are re-read (one
/// cross-core cache miss per track) and their headroom published; in between, pushes use the
/// cached position unless it shows too little room. 8 periods of 256 frames are 43 ms, 2 % of
/// the default 2 s ring.
const RING_REFRESH_SEGMENTS: u32 = 8;

/// Pre-allocated per-period work buffers (`max_period` frames each).
struct Scratch {
    left: Box<[f32]>,
    right: Box<[f32]>,
    interleaved: Box<[f32]>,
}

/// The engine's real-time half: lives on the audio thread and is driven by a backend calling
/// [`process`](Processor::process) once per period. Created by [`engine`](super::engine).
pub struct Processor {
    commands: Consumer<ControlToEngine>,
    outlets: Outlets,
    tracks: Box<[TrackState]>,
    /// An `InstallTrack` for a slot index out of range, waiting to be handed back.
    rejected_install: Option<(u16, Box<TrackSlot>)>,
    scratch: Scratch,
    /// Attached taps, by id.
    taps: [Option<Box<MonitorTap>>; MAX_TAPS],
    /// Streams and taps still to hand back; `head_can_apply` keeps a free place for every
    /// command that may retire one.
    handbacks: Box<[Option<Handback>]>,
    /// Frames processed since the engine was built, rolling or not (tap blocks count in it).
    graph_frame: u64,
    master_meters: [Meter; 2],
    /// [`Meter::log_retention`] at the engine's sample rate.
    rms_retention: f64,
    /// Segments rendered, for [`RING_REFRESH_SEGMENTS`].
    segments: u32,
    max_period: usize,
    state: TransportState,
    paused_from: TransportState,
    position: u64,
}

/// Why a command applies now or later.
enum Due {
    /// Apply before rendering anything more.
    Now,
    /// Render this many frames first (the command's `at_frame` lies that far ahead).
    After(u64),
    /// Nothing queued.
    Empty,
}

impl Processor {
    /// Builds the processor around its queues and pre-allocates every buffer. **Not**
    /// real-time safe (allocates); called by [`engine`](super::engine).
    pub(crate) fn new(
        sample_rate: u32,
        max_period: usize,
        max_tracks: usize,
        commands: Consumer<ControlToEngine>,
        events: Producer<EngineToControl>,
        markers: Producer<CaptureMarker>,
        shared: Arc<EngineShared>,
    ) -> Self {
        let max_period = max_period.max(1);
        let tracks = (0..max_tracks)
            .map(|_| TrackState {
                slot: None,
                take: None,
                backlog: Backlog::default(),
                retired: None,
                stream: None,
                meter: Meter::default(),
                pan: (0.0, pan_gains(0.0)),
            })
            .collect();
        let handbacks = (0..max_tracks + MAX_TAPS + 4).map(|_| None).collect();
        Processor {
            commands,
            outlets: Outlets {
                events,
                markers,
                shared,
            },
            tracks,
            rejected_install: None,
            scratch: Scratch {
                left: super::touched_zeros(max_period),
                right: super::touched_zeros(max_period),
                interleaved: super::touched_zeros(2 * max_period),
            },
            taps: Default::default(),
            handbacks,
            graph_frame: 0,
            master_meters: [Meter::default(); 2],
            rms_retention: Meter::log_retention(sample_rate),
            segments: 0,
            max_period,
            state: TransportState::Stopped,
            paused_from: TransportState::Stopped,
            position: 0,
        }
    }

    /// The atomics this processor publishes. Real-time safe.
    pub fn shared(&self) -> &Arc<EngineShared> {
        &self.outlets.shared
    }

    /// Runs one period: retries pending markers and hand-backs, applies due commands (splitting
    /// the period at their `at_frame`), captures armed tracks while recording and writes the
    /// monitor mix to the master outputs. **Real-time safe**: no allocation, lock, syscall,
    /// logging or panic; full queues are counted, never waited on.
    pub fn process(&mut self, ctx: &mut ProcessContext<'_>) {
        let frames = ctx
            .frames
            .min(ctx.master_left.len())
            .min(ctx.master_right.len());
        ctx.master_left[..frames].fill(0.0);
        ctx.master_right[..frames].fill(0.0);
        self.service_backlogs();

        let mut done = 0;
        while done < frames {
            let chunk = (frames - done).min(self.max_period);
            let segment = self.apply_due_commands(chunk);
            let end = done + segment;
            self.render(
                ctx.inputs,
                done,
                &mut ctx.master_left[done..end],
                &mut ctx.master_right[done..end],
                ctx.track_outputs.as_deref_mut(),
            );
            done = end;
        }
        self.outlets.shared.set_position(self.position);
    }

    fn is_rolling(&self) -> bool {
        matches!(
            self.state,
            TransportState::Playing | TransportState::Recording
        )
    }

    /// Recording, or paused from recording: takes are open.
    fn in_recording_run(&self) -> bool {
        self.state == TransportState::Recording
            || (self.state == TransportState::Paused
                && self.paused_from == TransportState::Recording)
    }

    /// Retries every pending marker and hand-back. Real-time safe.
    fn service_backlogs(&mut self) {
        for index in 0..self.tracks.len() {
            self.service_track(index);
        }
        self.service_rejected_install();
        for place in self.handbacks.iter_mut() {
            if let Some(item) = place.take() {
                *place = self.outlets.hand_back(item);
            }
        }
    }

    /// Hands a stream or tap back now, or parks it in a free place to retry every period.
    /// `head_can_apply` guarantees a free place for every command that gets here; should none
    /// be free anyway, the box is leaked rather than freed on this thread. Real-time safe.
    fn retire_later(&mut self, item: Handback) {
        if let Some(item) = self.outlets.hand_back(item) {
            match self.handbacks.iter_mut().find(|place| place.is_none()) {
                Some(place) => *place = Some(item),
                None => std::mem::forget(item),
            }
        }
    }

    /// Retries handing back an `InstallTrack` slot whose index was out of range. Real-time safe.
    fn service_rejected_install(&mut self) {
        if let Some((track, slot)) = self.rejected_install.take() {
            self.rejected_install = self.outlets.retire(track, slot).map(|slot| (track, slot));
        }
    }

    /// Pushes a track's pending markers (a pending `TakeEnd` with the gap before it), then hands
    /// back a retired slot once its `TakeEnd` is out. Real-time safe.
    fn service_track(&mut self, index: usize) {
        let track = slot_id(index);
        let Some(state) = self.tracks.get_mut(index) else {
            return;
        };
        if state.backlog.start.is_some() || state.backlog.end.is_some() {
            state.backlog.flush(track, &mut self.outlets, false);
        }
        if state.backlog.end.is_none() {
            if let Some(slot) = state.retired.take() {
                state.retired = self.outlets.retire(track, slot);
            }
        }
    }

    /// Applies every command due before the next frame and returns how many frames (at most
    /// `limit`, at least 1) to render before looking again. Real-time safe.
    fn apply_due_commands(&mut self, limit: usize) -> usize {
        loop {
            match self.head_due() {
                Due::Empty => return limit,
                Due::After(frames) => {
                    return usize::try_from(frames).map_or(limit, |frames| frames.min(limit));
                }
                Due::Now => {
                    if !self.head_can_apply() {
                        // Its slot is still being handed back: try again next period.
                        return limit;
                    }
                    match self.commands.pop() {
                        Ok(command) => self.apply(command),
                        Err(_) => return limit,
                    }
                }
            }
        }
    }

    fn head_due(&self) -> Due {
        let Ok(command) = self.commands.peek() else {
            return Due::Empty;
        };
        let at_frame = match command {
            ControlToEngine::SetTrack { at_frame, .. }
            | ControlToEngine::Record { at_frame }
            | ControlToEngine::Stop { at_frame } => *at_frame,
            _ => None,
        };
        match at_frame {
            // The timeline only reaches a future frame while rolling; otherwise apply now.
            Some(frame) if self.is_rolling() && frame > self.position => {
                Due::After(frame - self.position)
            }
            _ => Due::Now,
        }
    }

    /// Whether the head command can be applied without dropping a box: a slot must not be
    /// reused or parked while a previous one still waits there to be handed back.
    fn head_can_apply(&self) -> bool {
        match self.commands.peek() {
            Ok(ControlToEngine::InstallTrack { track, .. }) => {
                match self.tracks.get(usize::from(*track)) {
                    Some(state) => state.retired.is_none() && state.backlog.end.is_none(),
                    None => self.rejected_install.is_none(),
                }
            }
            Ok(ControlToEngine::RemoveTrack { track }) => {
                // Room for the track's stream and for every tap of the track.
                let taps = self
                    .taps
                    .iter()
                    .flatten()
                    .filter(|tap| tap.source() == TapSource::Track(*track))
                    .count();
                self.tracks
                    .get(usize::from(*track))
                    .is_none_or(|state| state.retired.is_none())
                    && self
                        .handbacks
                        .iter()
                        .filter(|place| place.is_none())
                        .count()
                        > taps
            }
            Ok(
                ControlToEngine::AttachStream { .. }
                | ControlToEngine::DetachStream { .. }
                | ControlToEngine::AttachTap { .. }
                | ControlToEngine::DetachTap { .. },
            ) => self.handback_free(),
            _ => true,
        }
    }

    /// Whether a stream or tap could be parked if the event queue were full.
    fn handback_free(&self) -> bool {
        self.handbacks.iter().any(Option::is_none)
    }

    fn apply(&mut self, command: ControlToEngine) {
        match command {
            ControlToEngine::InstallTrack { track, slot } => self.install(track, slot),
            ControlToEngine::RemoveTrack { track } => self.remove(track),
            ControlToEngine::SetTrack { track, params, .. } => self.set_track(track, params),
            ControlToEngine::Record { .. } => self.record(),
            ControlToEngine::Play => self.play(),
            ControlToEngine::Pause => self.pause(),
            ControlToEngine::Resume => self.resume(),
            ControlToEngine::Stop { .. } => self.stop(),
            ControlToEngine::Seek { frame } => self.seek(frame),
            ControlToEngine::AttachStream { track, stream } => self.attach_stream(track, stream),
            ControlToEngine::DetachStream { track } => self.detach_stream(track),
            ControlToEngine::AttachTap { id, tap } => self.attach_tap(id, tap),
            ControlToEngine::DetachTap { id } => self.detach_tap(id),
        }
    }

    fn reject(&mut self, reason: &'static str) {
        self.outlets.emit(EngineToControl::Rejected { reason });
    }

    fn set_state(&mut self, state: TransportState) {
        self.state = state;
        self.outlets.shared.set_state(state);
        self.outlets.emit(EngineToControl::State {
            state,
            frame: self.position,
        });
    }

    fn install(&mut self, track: u16, slot: Box<TrackSlot>) {
        let index = usize::from(track);
        let Some(state) = self.tracks.get_mut(index) else {
            self.rejected_install = Some((track, slot));
            self.reject("track slot out of range");
            self.service_rejected_install();
            return;
        };
        if state.slot.is_some() {
            state.retired = Some(slot);
            self.reject("track slot occupied");
            self.service_track(index);
            return;
        }
        let opens_take = slot.params.armed;
        state.slot = Some(slot);
        state.take = None;
        state.backlog = Backlog::default();
        state.meter = Meter::default();
        if let Some(cell) = self.outlets.shared.track_cell(index) {
            cell.clear();
        }
        if opens_take && self.in_recording_run() {
            self.open_take(index);
        }
    }

    fn remove(&mut self, track: u16) {
        let index = usize::from(track);
        let occupied = self
            .tracks
            .get(index)
            .is_some_and(|state| state.slot.is_some());
        if !occupied {
            self.reject("no track in that slot");
            return;
        }
        self.close_take(index);
        let mut stream = None;
        if let Some(state) = self.tracks.get_mut(index) {
            state.retired = state.slot.take();
            stream = state.stream.take();
        }
        if let Some(stream) = stream {
            self.retire_later(Handback::Stream(track, stream));
        }
        // Taps of the track end with it (a new track in the slot is not theirs).
        for id in 0..self.taps.len() {
            let of_track = self.taps[id]
                .as_ref()
                .is_some_and(|tap| tap.source() == TapSource::Track(track));
            if of_track {
                if let Some(tap) = self.taps[id].take() {
                    self.retire_later(Handback::Tap(u8::try_from(id).unwrap_or(u8::MAX), tap));
                }
            }
        }
        self.service_track(index);
    }

    fn attach_stream(&mut self, track: u16, stream: Box<InboundStream>) {
        let fits = self.tracks.get(usize::from(track)).and_then(|state| {
            let slot = state.slot.as_ref()?;
            Some((
                state.stream.is_none(),
                usize::from(slot.params.channels) == stream.channels(),
            ))
        });
        let reason = match fits {
            None => "no track in that slot",
            Some((false, _)) => "the track already has a stream",
            Some((true, false)) => "the stream's channel count differs from the track's",
            Some((true, true)) => {
                if let Some(state) = self.tracks.get_mut(usize::from(track)) {
                    state.stream = Some(stream);
                }
                return;
            }
        };
        self.reject(reason);
        self.retire_later(Handback::Stream(track, stream));
    }

    fn detach_stream(&mut self, track: u16) {
        let stream = self
            .tracks
            .get_mut(usize::from(track))
            .and_then(|state| state.stream.take());
        match stream {
            Some(stream) => self.retire_later(Handback::Stream(track, stream)),
            None => self.reject("no stream on that track"),
        }
    }

    fn attach_tap(&mut self, id: u8, tap: Box<MonitorTap>) {
        match self.taps.get_mut(usize::from(id)) {
            Some(place @ None) => *place = Some(tap),
            Some(Some(_)) => {
                self.reject("tap id in use");
                self.retire_later(Handback::Tap(id, tap));
            }
            None => {
                self.reject("tap id out of range");
                self.retire_later(Handback::Tap(id, tap));
            }
        }
    }

    fn detach_tap(&mut self, id: u8) {
        match self.taps.get_mut(usize::from(id)).and_then(Option::take) {
            Some(tap) => self.retire_later(Handback::Tap(id, tap)),
            None => self.reject("no tap with that id"),
        }
    }

    fn set_track(&mut self, track: u16, params: TrackParams) {
        let index = usize::from(track);
        let recording = self.in_recording_run();
        let Some(state) = self.tracks.get_mut(index) else {
            self.reject("no track in that slot");
            return;
        };
        let Some(slot) = state.slot.as_deref_mut() else {
            self.reject("no track in that slot");
            return;
        };
        if slot.params.channels != params.channels {
            self.reject("a track's channel count cannot change");
            return;
        }
        let arming = params.armed && !slot.params.armed;
        let disarming = !params.armed && slot.params.armed;
        let backlogged = state.backlog.end.is_some();
        if arming && recording && backlogged {
            self.reject("capture writer is behind: take end still pending");
            return;
        }
        slot.params = params;
        if arming && recording {
            self.open_take(index);
        } else if disarming {
            self.close_take(index);
        }
    }

    fn record(&mut self) {
        match self.state {
            TransportState::Stopped | TransportState::Playing => {}
            TransportState::Recording => return self.reject("already recording"),
            TransportState::Paused => return self.reject("paused: resume or stop first"),
        }
        let backlogged = self.tracks.iter().any(|state| {
            state.backlog.end.is_some() && state.slot.as_ref().is_some_and(|s| s.params.armed)
        });
        if backlogged {
            return self.reject("capture writer is behind: take end still pending");
        }
        self.set_state(TransportState::Recording);
        for index in 0..self.tracks.len() {
            let armed = self
                .tracks
                .get(index)
                .is_some_and(|state| state.slot.as_ref().is_some_and(|slot| slot.params.armed));
            if armed {
                self.open_take(index);
            }
        }
    }

    fn play(&mut self) {
        match self.state {
            TransportState::Playing => self.reject("already playing"),
            TransportState::Stopped => self.set_state(TransportState::Playing),
            TransportState::Recording | TransportState::Paused => {
                self.close_all_takes();
                self.set_state(TransportState::Playing);
            }
        }
    }

    fn pause(&mut self) {
        if self.is_rolling() {
            self.paused_from = self.state;
            self.set_state(TransportState::Paused);
        } else {
            self.reject("not rolling");
        }
    }

    fn resume(&mut self) {
        if self.state == TransportState::Paused {
            self.set_state(self.paused_from);
        } else {
            self.reject("not paused");
        }
    }

    fn stop(&mut self) {
        if self.state == TransportState::Stopped {
            return self.reject("already stopped");
        }
        self.close_all_takes();
        self.set_state(TransportState::Stopped);
    }

    fn seek(&mut self, frame: u64) {
        if self.in_recording_run() {
            return self.reject("cannot seek while recording");
        }
        self.position = frame;
        self.outlets.shared.set_position(frame);
    }

    /// Opens a take at the current position: `TakeStart` marker (or pending) and event.
    fn open_take(&mut self, index: usize) {
        let track = slot_id(index);
        let frame = self.position;
        let Some(state) = self.tracks.get_mut(index) else {
            return;
        };
        state.take = Some(Take { len: 0 });
        state.backlog.start = Some(frame);
        state.backlog.flush(track, &mut self.outlets, false);
        self.outlets
            .emit(EngineToControl::TakeStarted { track, frame });
    }

    /// Closes a track's take, if open: pending gap, then `TakeEnd` (kept pending if the marker
    /// queue is full), then the event.
    fn close_take(&mut self, index: usize) {
        let track = slot_id(index);
        let frame = self.position;
        let Some(state) = self.tracks.get_mut(index) else {
            return;
        };
        let Some(take) = state.take.take() else {
            return;
        };
        state.backlog.end = Some(take.len);
        state.backlog.flush(track, &mut self.outlets, true);
        self.outlets.emit(EngineToControl::TakeEnded {
            track,
            frame,
            frames: take.len,
        });
    }

    fn close_all_takes(&mut self) {
        for index in 0..self.tracks.len() {
            self.close_take(index);
        }
    }

    /// Renders `left.len()` frames starting `offset` frames into the period. Real-time safe.
    fn render<'o>(
        &mut self,
        inputs: &dyn AudioInputs,
        offset: usize,
        left: &mut [f32],
        right: &mut [f32],
        mut outputs: Option<&mut (dyn TrackOutputs + 'o)>,
    ) {
        let frames = left.len().min(right.len()).min(self.max_period);
        let capturing = self.state == TransportState::Recording;
        let any_soloed = self
            .tracks
            .iter()
            .any(|state| state.slot.as_ref().is_some_and(|slot| slot.params.soloed));
        let mut clips = 0;
        let first_frame = self.graph_frame;
        for (index, state) in self.tracks.iter_mut().enumerate() {
            let (track_clips, send) = render_track(
                state,
                slot_id(index),
                TrackRender {
                    inputs,
                    offset,
                    frames,
                    capturing,
                    any_soloed,
                    rms_retention: self.rms_retention,
                    refresh_rings: self.segments % RING_REFRESH_SEGMENTS == 0,
                },
                &mut self.outlets,
                &mut self.scratch,
                &mut left[..frames],
                &mut right[..frames],
            );
            clips += track_clips;
            if state.slot.is_some() {
                if let Some((out_left, out_right)) =
                    outputs.as_deref_mut().and_then(|o| o.track_output(index))
                {
                    write_send(
                        out_left.get_mut(offset..offset + frames),
                        out_right.get_mut(offset..offset + frames),
                        &self.scratch,
                        send,
                    );
                }
            }
            let source = TapSource::Track(slot_id(index));
            for tap in self.taps.iter_mut().flatten() {
                if tap.source() == source {
                    feed_send(tap, first_frame, frames, &self.scratch, send);
                }
            }
        }
        let track_count = self.tracks.len();
        for tap in self.taps.iter_mut().flatten() {
            match tap.source() {
                TapSource::Master => {
                    let (l, r) = (&left[..frames], &right[..frames]);
                    tap.feed(first_frame, frames, |i| (l[i], r[i]));
                }
                TapSource::Track(slot) if usize::from(slot) >= track_count => {
                    tap.feed(first_frame, frames, |_| (0.0, 0.0));
                }
                TapSource::Track(_) => {}
            }
        }
        self.graph_frame = self.graph_frame.wrapping_add(frames as u64);
        self.segments = self.segments.wrapping_add(1);
        let shared = &self.outlets.shared;
        let mut master_clips = 0;
        for (side, out) in [&left[..frames], &right[..frames]].into_iter().enumerate() {
            if let Some(meter) = self.master_meters.get_mut(side) {
                let level = meter.feed_mono(out, self.rms_retention);
                master_clips += level.clips;
                if let Some(cell) = shared.master_cell(side) {
                    cell.publish(level.peak, meter.rms());
                }
            }
        }
        shared.add_clips(clips);
        shared.add_master_clips(master_clips);
        let frames = frames as u64;
        if capturing {
            shared.add_recorded(frames);
        }
        if self.is_rolling() {
            self.position = self.position.saturating_add(frames);
        }
    }
}

/// The per-segment values every track render needs.
#[derive(Clone, Copy)]
struct TrackRender<'a> {
    inputs: &'a dyn AudioInputs,
    offset: usize,
    frames: usize,
    capturing: bool,
    any_soloed: bool,
    /// [`Meter::log_retention`] at the engine's sample rate.
    rms_retention: f64,
    /// Re-read the capture rings' read positions and publish their headroom this segment.
    refresh_rings: bool,
}

/// Slot index as the `u16` used in messages (slots are created from `u16` indices).
fn slot_id(index: usize) -> u16 {
    u16::try_from(index).unwrap_or(u16::MAX)
}

/// Reads one input channel (`NO_INPUT` or unknown → silence) times `gain` into `dst`.
/// Real-time safe.
fn read_input(inputs: &dyn AudioInputs, channel: u16, offset: usize, gain: f32, dst: &mut [f32]) {
    let channel = usize::from(channel);
    let source: &[f32] = if channel == usize::from(NO_INPUT) || channel >= inputs.channel_count() {
        &[]
    } else {
        inputs.channel(channel).get(offset..).unwrap_or(&[])
    };
    let available = source.len().min(dst.len());
    for (d, s) in dst.iter_mut().zip(&source[..available]) {
        *d = s * gain;
    }
    dst[available..].fill(0.0);
}

/// What one track sends to the master in a segment: its signal (in the scratch buffers, the
/// right one only for a stereo track) times these gains; `None` when it is not heard.
#[derive(Clone, Copy)]
struct TrackSend {
    stereo: bool,
    gains: (f32, f32),
}

/// The signal a track sent this segment, as (left source, right source, left gain, right gain)
/// over the track's scratch buffers (a mono track feeds both sides); `None` when it sent
/// nothing. Real-time safe.
fn send_sources(
    scratch: &Scratch,
    frames: usize,
    send: Option<TrackSend>,
) -> Option<(&[f32], &[f32], f32, f32)> {
    let send = send?;
    let frames = frames.min(scratch.left.len());
    let left = &scratch.left[..frames];
    let right = if send.stereo {
        &scratch.right[..frames]
    } else {
        left
    };
    Some((left, right, send.gains.0, send.gains.1))
}

/// Writes what a track sent to its direct outputs (silence when nothing). Real-time safe.
fn write_send(
    left: Option<&mut [f32]>,
    right: Option<&mut [f32]>,
    scratch: &Scratch,
    send: Option<TrackSend>,
) {
    let (Some(out_left), Some(out_right)) = (left, right) else {
        return;
    };
    let frames = out_left.len().min(out_right.len());
    let Some((source_left, source_right, gain_left, gain_right)) =
        send_sources(scratch, frames, send)
    else {
        out_left.fill(0.0);
        out_right.fill(0.0);
        return;
    };
    for (out, sample) in out_left.iter_mut().zip(source_left) {
        *out = sample * gain_left;
    }
    for (out, sample) in out_right.iter_mut().zip(source_right) {
        *out = sample * gain_right;
    }
}

/// Feeds a track tap with what its track sent (silence when nothing). Real-time safe.
fn feed_send(
    tap: &mut MonitorTap,
    first_frame: u64,
    frames: usize,
    scratch: &Scratch,
    send: Option<TrackSend>,
) {
    match send_sources(scratch, frames, send) {
        Some((left, right, gain_left, gain_right)) => {
            tap.feed(first_frame, left.len(), |i| {
                (left[i] * gain_left, right[i] * gain_right)
            });
        }
        None => tap.feed(first_frame, frames.min(scratch.left.len()), |_| (0.0, 0.0)),
    }
}

/// Meters, captures and mixes one track for one segment; returns its clipped samples and what
/// it sent to the master. Real-time safe.
fn render_track(
    state: &mut TrackState,
    track: u16,
    job: TrackRender<'_>,
    outlets: &mut Outlets,
    scratch: &mut Scratch,
    master_left: &mut [f32],
    master_right: &mut [f32],
) -> (u64, Option<TrackSend>) {
    let Some(slot) = state.slot.as_deref_mut() else {
        return (0, None);
    };
    let params = slot.params;
    let stereo = params.channels >= 2;
    let frames = job.frames.min(scratch.left.len());
    let left = &mut scratch.left[..frames];
    let right = &mut scratch.right[..frames];
    if let Some(stream) = state.stream.as_deref_mut() {
        stream.read(params.input_gain, left, right);
    } else {
        read_input(
            job.inputs,
            params.input[0],
            job.offset,
            params.input_gain,
            left,
        );
        if stereo {
            read_input(
                job.inputs,
                params.input[1],
                job.offset,
                params.input_gain,
                right,
            );
        }
    }
    let level = if stereo {
        state.meter.feed_stereo(left, right, job.rms_retention)
    } else {
        state.meter.feed_mono(left, job.rms_retention)
    };
    if let Some(cell) = outlets.shared.track_cell(usize::from(track)) {
        cell.publish(level.peak, state.meter.rms());
    }

    if job.capturing {
        if let Some(take) = state.take.as_mut() {
            let channels = if stereo { 2 } else { 1 };
            let samples = if stereo {
                let interleaved = &mut scratch.interleaved[..2 * frames];
                for (pair, (l, r)) in interleaved
                    .chunks_exact_mut(2)
                    .zip(left.iter().zip(right.iter()))
                {
                    pair[0] = *l;
                    pair[1] = *r;
                }
                &scratch.interleaved[..2 * frames]
            } else {
                &scratch.left[..frames]
            };
            capture(
                take,
                &mut state.backlog,
                &mut slot.capture,
                track,
                channels,
                samples,
                job.refresh_rings,
                outlets,
            );
        }
    }

    let mut send = None;
    if monitors_input(params.monitoring, params.armed)
        && audible(params.muted, params.soloed, job.any_soloed)
    {
        if state.pan.0.to_bits() != params.pan.to_bits() {
            state.pan = (params.pan, pan_gains(params.pan));
        }
        let (gain_left, gain_right) = state.pan.1;
        let (gain_left, gain_right) = (gain_left * params.level, gain_right * params.level);
        let left = &scratch.left[..frames];
        let right = if stereo {
            &scratch.right[..frames]
        } else {
            left
        };
        add_scaled(master_left, left, gain_left);
        add_scaled(master_right, right, gain_right);
        send = Some(TrackSend {
            stereo,
            gains: (gain_left, gain_right),
        });
    }
    (level.clips, send)
}

/// Pushes whole frames of `samples` (interleaved, `channels` per frame) to a capture ring;
/// what does not fit, or cannot follow yet because a marker is pending, becomes a gap.
/// The writer's read position is a cache line another core writes, so it is only re-read when
/// `refresh` is set or the cached view of the free space is too small; the headroom is
/// published whenever it was re-read. Real-time safe.
#[allow(clippy::too_many_arguments)]
fn capture(
    take: &mut Take,
    backlog: &mut Backlog,
    ring: &mut Producer<f32>,
    track: u16,
    channels: usize,
    samples: &[f32],
    refresh: bool,
    outlets: &mut Outlets,
) {
    let frames = samples.len() / channels;
    let mut free = ring.cached_slots();
    let refresh = refresh || free < samples.len();
    if refresh {
        free = ring.slots();
    }
    let fit = free / channels;
    let mut pushed = 0;
    if fit > 0 && backlog.flush(track, outlets, true) {
        pushed = fit.min(frames);
        if ring
            .push_entire_slice(&samples[..pushed * channels])
            .is_err()
        {
            pushed = 0;
        }
    }
    let lost = (frames - pushed) as u64;
    backlog.add_gap(take.len + pushed as u64, lost);
    if lost > 0 {
        outlets.shared.add_dropped(lost);
    }
    take.len += frames as u64;
    let capacity = ring.buffer().capacity();
    if refresh && capacity > 0 {
        outlets
            .shared
            .note_headroom(ring.cached_slots() as f32 / capacity as f32);
    }
}
