//! The `overdub-capture` thread: drains the processor's per-track rings into take files.
//!
//! The processor (real-time) pushes interleaved `f32` frames into one `rtrb` ring per track and
//! [`CaptureMarker`]s (take start, gap, take end) into one marker queue; it never waits on this
//! thread. Each pass of the writer (every [`PASS_INTERVAL`] or sooner when a message arrives):
//!
//! 1. applies the [`ControlToWriter`] messages;
//! 2. takes a snapshot of each ring's available frames **before** popping markers;
//! 3. pops every marker, and applies each after draining its track's ring exactly up to the
//!    marker's take-relative frame `at`;
//! 4. drains the rest of the snapshot into the open takes.
//!
//! The snapshot keeps samples pushed after a `TakeEnd` and a new `TakeStart` out of the old
//! take: whatever is in the snapshot was pushed before the markers that follow it were popped.
//!
//! Every flush interval, each open take is synced (a crash loses at most that interval) and the
//! free space of the watched filesystem is checked against the open takes' data rate.
//!
//! Nothing here is real-time safe; the processor's side (the rings) is.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::engine::messages::CaptureMarker;

use super::space::free_space;
use super::wav::WavWriter;
use super::{bytes_per_second, SampleFormat};

/// Time between two passes of the writer thread when no message wakes it.
pub const PASS_INTERVAL: Duration = Duration::from_millis(50);

/// Default time between two syncs of every open take (config `capture.flush_interval`).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Frames moved from a ring to a take per write.
const CHUNK_FRAMES: usize = 4096;

/// Settings of the writer thread.
#[derive(Clone, Debug, PartialEq)]
pub struct WriterConfig {
    /// Sample rate of every take (the session's rate).
    pub sample_rate: u32,
    /// Sample format of every take file.
    pub format: SampleFormat,
    /// Time between syncs of the open takes: the most a crash can lose. Zero syncs every pass.
    pub flush_interval: Duration,
    /// How the open takes are made durable at each flush.
    pub sync: SyncScope,
    /// The filesystem whose free space is watched (the takes' directory).
    pub watch_dir: PathBuf,
    /// [`WriterToControl::DiskLow`] is sent when free space is below this many seconds of the
    /// open takes; zero, negative or non-finite disables the check.
    pub stop_free_seconds: f64,
}

impl WriterConfig {
    /// A configuration with the defaults: 24-bit takes, a 1 s flush interval, and `DiskLow`
    /// when less than 30 s of recording is left.
    pub fn new(sample_rate: u32, watch_dir: PathBuf) -> Self {
        WriterConfig {
            sample_rate,
            format: SampleFormat::S24,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            sync: SyncScope::Filesystem,
            watch_dir,
            stop_free_seconds: 30.0,
        }
    }
}

/// How a flush makes the open takes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncScope {
    /// Headers of every open take are rewritten, then one `syncfs` per filesystem holding
    /// takes: one journal commit and one batch of I/O for all tracks. The sync also writes
    /// back other programs' pending data on that filesystem, so a busy shared disk can make it
    /// slower.
    Filesystem,
    /// One `fdatasync` per open take: touches only the takes, costs a journal commit each.
    Files,
}

impl SyncScope {
    /// Parses the `capture.sync` setting: `filesystem` or `files`.
    pub fn parse(text: &str) -> Option<SyncScope> {
        match text {
            "filesystem" => Some(SyncScope::Filesystem),
            "files" => Some(SyncScope::Files),
            _ => None,
        }
    }
}

/// Messages from `control` to the writer thread, applied at the start of the next pass.
pub enum ControlToWriter {
    /// A track exists in slot `track`; its processor side pushes interleaved frames into
    /// `ring`. Send it before installing the track in the processor. Adding a slot whose old
    /// track is still being removed (its take not ended yet) replaces it once that take ends.
    AddTrack {
        /// Slot (0-based).
        track: u16,
        /// 1 (mono) or 2 (stereo).
        channels: u8,
        /// Consumer side of the track's capture ring.
        ring: rtrb::Consumer<f32>,
    },
    /// Drops the track and its ring; sent after its take ended. If the `TakeEnd` marker has not
    /// been seen yet, the track goes once it is. Prepared takes never started are finalized
    /// empty ([`WriterToControl::TakeFinished`] with 0 frames).
    RemoveTrack {
        /// Slot.
        track: u16,
    },
    /// Journaled take: the file is created (header written) now; it is bound to the next
    /// TakeStart marker of `track` (a FIFO per track). Send it before the command that makes
    /// the processor start the take.
    PrepareTake {
        /// Slot.
        track: u16,
        /// The take's id in the store.
        take_id: i64,
        /// Where to create the file (it must not exist).
        path: PathBuf,
    },
    /// Withdraws a prepared take that the processor will never start (control's command was
    /// refused): it leaves the track's FIFO, its empty file is removed, and
    /// [`WriterToControl::TakeCancelled`] confirms. A take already bound is left alone.
    CancelTake {
        /// Slot.
        track: u16,
        /// The take's id in the store.
        take_id: i64,
    },
    /// Changes the time between syncs.
    SetFlushInterval(Duration),
    /// Changes the free-space threshold of [`WriterToControl::DiskLow`], in seconds.
    SetStopFreeSeconds(f64),
}

/// Events from the writer thread to `control`, delivered through the callback given to
/// [`CaptureWriter::spawn`] (called on the writer thread).
#[derive(Clone, Debug, PartialEq)]
pub enum WriterToControl {
    /// A TakeStart marker bound the take: its samples are being written.
    TakeStarted {
        /// The take.
        take_id: i64,
        /// Slot.
        track: u16,
        /// Timeline position of the take's first frame.
        frame: u64,
    },
    /// Silence was written for `frames` frames the processor lost at take-relative frame `at`.
    TakeGap {
        /// The take.
        take_id: i64,
        /// Take-relative frame where the gap starts.
        at: u64,
        /// Length of the gap.
        frames: u64,
    },
    /// The take ended and its file is complete and durable.
    TakeFinished {
        /// The take.
        take_id: i64,
        /// Slot.
        track: u16,
        /// Frames in the file (the `TakeEnd` marker's `at`).
        frames: u64,
        /// Audio bytes in the file.
        data_bytes: u64,
        /// The file.
        path: PathBuf,
    },
    /// An I/O error (or the 4 GiB limit) ended the take early: the file is kept valid up to
    /// `frames`; the rest of the take is discarded.
    TakeFailed {
        /// The take.
        take_id: i64,
        /// Slot.
        track: u16,
        /// Frames the file holds.
        frames: u64,
        /// What went wrong.
        message: String,
    },
    /// The file of a prepared take could not be created; the take will not be bound.
    PrepareFailed {
        /// The take.
        take_id: i64,
        /// Slot.
        track: u16,
        /// What went wrong.
        message: String,
    },
    /// Free space fell below the threshold (sent once per episode): stop recording.
    DiskLow {
        /// Bytes free on the watched filesystem.
        free_bytes: u64,
        /// Seconds of recording left at the open takes' data rate.
        seconds_left: f64,
    },
    /// A prepared take was withdrawn by [`ControlToWriter::CancelTake`]; its file is gone.
    TakeCancelled {
        /// The take's id in the store.
        take_id: i64,
        /// Slot.
        track: u16,
    },
    /// A TakeStart arrived with no prepared take: that take's samples are discarded.
    Unbound {
        /// Slot.
        track: u16,
    },
}

/// What the handle sends to the thread.
enum Inbox {
    Control(ControlToWriter),
    Shutdown,
}

/// Handle to the `overdub-capture` thread. Dropping it shuts the thread down like
/// [`shutdown`](CaptureWriter::shutdown).
pub struct CaptureWriter {
    inbox: Sender<Inbox>,
    thread: Option<JoinHandle<()>>,
}

impl CaptureWriter {
    /// Spawns the `overdub-capture` thread. `events` is called on that thread. **Not**
    /// real-time safe.
    pub fn spawn(
        config: WriterConfig,
        markers: rtrb::Consumer<CaptureMarker>,
        events: Box<dyn FnMut(WriterToControl) + Send>,
    ) -> io::Result<CaptureWriter> {
        let (inbox, receiver) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("overdub-capture".into())
            .spawn(move || Writer::new(config, markers, events, receiver).run())?;
        Ok(CaptureWriter {
            inbox,
            thread: Some(thread),
        })
    }

    /// Queues a message for the next pass; never blocks. **Not** real-time safe (allocates).
    pub fn send(&self, message: ControlToWriter) {
        if self.inbox.send(Inbox::Control(message)).is_err() {
            tracing::error!("capture writer thread is gone; message dropped");
        }
    }

    /// Drains whatever the processor already delivered, finalizes every open take
    /// (TakeFinished), and joins the thread. Blocks until the files are durable.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Asks the thread to finish and joins it (once).
    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // A send error means the thread already ended; joining reports how.
            let _ = self.inbox.send(Inbox::Shutdown);
            if thread.join().is_err() {
                tracing::error!("capture writer thread panicked");
            }
        }
    }
}

impl Drop for CaptureWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A take whose file exists, waiting for its TakeStart marker.
struct PreparedTake {
    take_id: i64,
    path: PathBuf,
    wav: WavWriter,
}

/// What a track's samples currently go to.
enum Take {
    /// No take: no samples are expected.
    Idle,
    /// Samples are written to the file.
    Open {
        take_id: i64,
        path: PathBuf,
        wav: WavWriter,
    },
    /// Samples are discarded until the TakeEnd: the take was unbound, or failed.
    Discard,
}

impl Take {
    /// Hands interleaved samples to the take; `warned_stray` notes samples outside a take
    /// (reported once).
    fn deliver(&mut self, id: u16, samples: &[f32], warned_stray: &mut bool, events: &mut Events) {
        match self {
            Take::Open { wav, .. } => {
                if let Err(error) = wav.write_frames(samples) {
                    self.fail(id, &error, events);
                }
            }
            Take::Discard => {}
            Take::Idle => {
                if !*warned_stray {
                    *warned_stray = true;
                    tracing::warn!(track = id, "capture samples outside a take; discarded");
                }
            }
        }
    }

    /// Ends an open take after an I/O error (the file was already made valid) and discards
    /// the rest of it.
    fn fail(&mut self, id: u16, error: &io::Error, events: &mut Events) {
        if let Take::Open { take_id, path, wav } = std::mem::replace(self, Take::Discard) {
            let frames = wav.frames();
            tracing::error!(track = id, take_id, frames, %error, path = %path.display(), "take failed");
            events(WriterToControl::TakeFailed {
                take_id,
                track: id,
                frames,
                message: format!("{}: {error}", path.display()),
            });
        }
    }
}

/// A track as the writer sees it.
struct Track {
    channels: u16,
    ring: rtrb::Consumer<f32>,
    prepared: VecDeque<PreparedTake>,
    take: Take,
    /// Take-relative frames consumed so far (samples and gaps).
    position: u64,
    /// Frames of this pass's snapshot not drained yet.
    snapshot: u64,
    /// RemoveTrack arrived before the take ended.
    removing: bool,
    /// A new track for this slot, installed when the removal completes.
    replacement: Option<(u16, rtrb::Consumer<f32>)>,
    /// Samples arrived outside a take (already reported once).
    warned_stray: bool,
}

/// Callback type for events.
type Events = Box<dyn FnMut(WriterToControl) + Send>;

impl Track {
    fn new(channels: u16, ring: rtrb::Consumer<f32>) -> Track {
        Track {
            channels,
            ring,
            prepared: VecDeque::new(),
            take: Take::Idle,
            position: 0,
            snapshot: 0,
            removing: false,
            replacement: None,
            warned_stray: false,
        }
    }

    /// Channels of the takes prepared from now on (a pending replacement's).
    fn next_channels(&self) -> u16 {
        self.replacement
            .as_ref()
            .map_or(self.channels, |(channels, _)| *channels)
    }

    /// Whole frames waiting in the ring.
    fn available_frames(&self) -> u64 {
        (self.ring.slots() / usize::from(self.channels)) as u64
    }

    /// Moves up to `frames` frames from the ring to the current take; returns how many were
    /// moved (fewer only when the ring holds fewer).
    fn drain(&mut self, id: u16, frames: u64, scratch: &mut Vec<f32>, events: &mut Events) -> u64 {
        let channels = usize::from(self.channels);
        let mut moved = 0;
        while moved < frames {
            let chunk = (frames - moved)
                .min(CHUNK_FRAMES as u64)
                .min(self.available_frames()) as usize;
            if chunk == 0 {
                break;
            }
            let Ok(read) = self.ring.read_chunk(chunk * channels) else {
                break;
            };
            let (first, second) = read.as_slices();
            if first.len() % channels == 0 {
                // The ring wraps between frames (as it does when its capacity is a whole number
                // of frames): encode straight from it.
                self.take.deliver(id, first, &mut self.warned_stray, events);
                if !second.is_empty() {
                    self.take
                        .deliver(id, second, &mut self.warned_stray, events);
                }
            } else {
                scratch.clear();
                scratch.extend_from_slice(first);
                scratch.extend_from_slice(second);
                self.take
                    .deliver(id, scratch, &mut self.warned_stray, events);
            }
            read.commit_all();
            moved += chunk as u64;
        }
        self.position += moved;
        self.snapshot = self.snapshot.saturating_sub(moved);
        moved
    }

    /// Drains the ring up to take-relative frame `at`. If the ring holds fewer frames (the
    /// processor broke the ordering contract), silence fills the rest so positions stay right.
    fn drain_to(&mut self, id: u16, at: u64, scratch: &mut Vec<f32>, events: &mut Events) {
        let Some(needed) = at.checked_sub(self.position) else {
            tracing::warn!(
                track = id,
                at,
                position = self.position,
                "capture marker behind the writer; ignored"
            );
            return;
        };
        let moved = self.drain(id, needed, scratch, events);
        if moved < needed {
            tracing::warn!(
                track = id,
                missing = needed - moved,
                "capture ring short of a marker; silence written"
            );
            self.silence(id, needed - moved, events);
        }
    }

    /// Writes `frames` frames of silence into the current take.
    fn silence(&mut self, id: u16, frames: u64, events: &mut Events) {
        if let Take::Open { wav, .. } = &mut self.take {
            if let Err(error) = wav.write_silence(frames) {
                self.fail(id, &error, events);
            }
        }
        self.position += frames;
    }

    /// Ends the open take after an I/O error (the file was already made valid) and discards
    /// the rest of it.
    fn fail(&mut self, id: u16, error: &io::Error, events: &mut Events) {
        self.take.fail(id, error, events);
    }

    /// Ends the current take: an open one is synced and closed (TakeFinished, or TakeFailed
    /// when the last sync fails).
    fn finalize(&mut self, id: u16, events: &mut Events) {
        if let Take::Open { take_id, path, wav } = std::mem::replace(&mut self.take, Take::Idle) {
            finish_take(id, take_id, path, wav, events);
        }
        self.position = 0;
        self.warned_stray = false;
    }

    /// Finalizes every prepared take that never started as an empty file.
    fn discard_prepared(&mut self, id: u16, events: &mut Events) {
        for prepared in self.prepared.drain(..) {
            finish_take(id, prepared.take_id, prepared.path, prepared.wav, events);
        }
    }
}

/// Syncs and closes a take's file and reports it: TakeFinished, or TakeFailed when the last
/// sync fails.
fn finish_take(id: u16, take_id: i64, path: PathBuf, mut wav: WavWriter, events: &mut Events) {
    let failed = |frames: u64, error: io::Error, events: &mut Events| {
        tracing::error!(track = id, take_id, %error, "take failed at its end");
        events(WriterToControl::TakeFailed {
            take_id,
            track: id,
            frames,
            message: format!("{}: {error}", path.display()),
        });
    };
    if let Err(error) = wav.sync() {
        // `sync` made the file valid up to `frames` before failing.
        failed(wav.frames(), error, events);
        return;
    }
    let frames = wav.frames();
    let data_bytes = wav.data_bytes();
    match wav.finish() {
        Ok(_) => events(WriterToControl::TakeFinished {
            take_id,
            track: id,
            frames,
            data_bytes,
            path,
        }),
        Err(error) => failed(frames, error, events),
    }
}

/// The state of the writer thread.
struct Writer {
    config: WriterConfig,
    markers: rtrb::Consumer<CaptureMarker>,
    events: Events,
    inbox: Receiver<Inbox>,
    tracks: BTreeMap<u16, Track>,
    /// A marker that needs a message not applied yet (unknown track, or a TakeStart with no
    /// prepared take): retried once, after the next round of messages.
    held: Option<CaptureMarker>,
    scratch: Vec<f32>,
    last_flush: Instant,
    /// A DiskLow episode is under way (reported once).
    disk_low: bool,
}

impl Writer {
    fn new(
        config: WriterConfig,
        markers: rtrb::Consumer<CaptureMarker>,
        events: Events,
        inbox: Receiver<Inbox>,
    ) -> Writer {
        Writer {
            config,
            markers,
            events,
            inbox,
            tracks: BTreeMap::new(),
            held: None,
            scratch: Vec::with_capacity(CHUNK_FRAMES * 2),
            last_flush: Instant::now(),
            disk_low: false,
        }
    }

    /// The thread's main loop.
    fn run(mut self) {
        loop {
            let shutdown = self.receive();
            self.pass(shutdown);
            if shutdown {
                break;
            }
            if self.last_flush.elapsed() >= self.config.flush_interval {
                self.last_flush = Instant::now();
                self.flush();
            }
        }
        self.close();
    }

    /// Finalizes every open take with what arrived, and every prepared take as an empty file.
    fn close(&mut self) {
        for (&id, track) in &mut self.tracks {
            track.finalize(id, &mut self.events);
            track.discard_prepared(id, &mut self.events);
        }
    }

    /// Waits up to a pass interval for messages and applies all that arrived; true when the
    /// thread must shut down.
    fn receive(&mut self) -> bool {
        let mut next = match self.inbox.recv_timeout(PASS_INTERVAL) {
            Ok(message) => Some(message),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return true,
        };
        while let Some(message) = next {
            match message {
                Inbox::Control(message) => self.apply(message),
                Inbox::Shutdown => return true,
            }
            next = self.inbox.try_recv().ok();
        }
        false
    }

    /// Applies one control message.
    fn apply(&mut self, message: ControlToWriter) {
        match message {
            ControlToWriter::AddTrack {
                track,
                channels,
                ring,
            } => self.add_track(track, u16::from(channels), ring),
            ControlToWriter::RemoveTrack { track } => match self.tracks.get_mut(&track) {
                Some(state) if matches!(state.take, Take::Idle) => self.remove_track(track),
                Some(state) => state.removing = true,
                None => tracing::warn!(track, "RemoveTrack for an unknown track"),
            },
            ControlToWriter::PrepareTake {
                track,
                take_id,
                path,
            } => self.prepare(track, take_id, path),
            ControlToWriter::CancelTake { track, take_id } => self.cancel(track, take_id),
            ControlToWriter::SetFlushInterval(interval) => self.config.flush_interval = interval,
            ControlToWriter::SetStopFreeSeconds(seconds) => self.config.stop_free_seconds = seconds,
        }
    }

    fn add_track(&mut self, id: u16, channels: u16, ring: rtrb::Consumer<f32>) {
        if channels == 0 {
            tracing::error!(track = id, "AddTrack with zero channels ignored");
            return;
        }
        match self.tracks.get_mut(&id) {
            Some(old) if old.removing => old.replacement = Some((channels, ring)),
            Some(old) => {
                tracing::warn!(track = id, "AddTrack replaces a track that was not removed");
                old.finalize(id, &mut self.events);
                old.discard_prepared(id, &mut self.events);
                self.tracks.insert(id, Track::new(channels, ring));
            }
            None => {
                self.tracks.insert(id, Track::new(channels, ring));
            }
        }
    }

    /// Drops a track whose take has ended, or swaps in its pending replacement.
    fn remove_track(&mut self, id: u16) {
        let Some(mut track) = self.tracks.remove(&id) else {
            return;
        };
        if let Some((channels, ring)) = track.replacement.take() {
            // Takes prepared meanwhile belong to the new track.
            let mut new = Track::new(channels, ring);
            new.prepared = std::mem::take(&mut track.prepared);
            self.tracks.insert(id, new);
        } else {
            track.discard_prepared(id, &mut self.events);
        }
    }

    fn cancel(&mut self, id: u16, take_id: i64) {
        let Some(track) = self.tracks.get_mut(&id) else {
            tracing::warn!(track = id, take_id, "CancelTake for an unknown track");
            return;
        };
        let Some(at) = track.prepared.iter().position(|p| p.take_id == take_id) else {
            tracing::warn!(
                track = id,
                take_id,
                "CancelTake for a take that is not waiting"
            );
            return;
        };
        if let Some(prepared) = track.prepared.remove(at) {
            drop(prepared.wav);
            if let Err(error) = std::fs::remove_file(&prepared.path) {
                tracing::warn!(take_id, %error, "cannot remove the cancelled take's file");
            }
            (self.events)(WriterToControl::TakeCancelled { take_id, track: id });
        }
    }

    fn prepare(&mut self, id: u16, take_id: i64, path: PathBuf) {
        let Some(track) = self.tracks.get_mut(&id) else {
            (self.events)(WriterToControl::PrepareFailed {
                take_id,
                track: id,
                message: format!("no capture track in slot {id}"),
            });
            return;
        };
        match WavWriter::create(
            &path,
            track.next_channels(),
            self.config.sample_rate,
            self.config.format,
        ) {
            Ok(wav) => track
                .prepared
                .push_back(PreparedTake { take_id, path, wav }),
            Err(error) => (self.events)(WriterToControl::PrepareFailed {
                take_id,
                track: id,
                message: format!("{}: {error}", path.display()),
            }),
        }
    }

    /// One pass: snapshot, markers, rest of the snapshot. On the last pass nothing is held.
    fn pass(&mut self, last: bool) {
        self.take_snapshot();
        if self.apply_markers(last) {
            self.drain_snapshot();
        }
    }

    /// Records each ring's available frames, before any marker is popped.
    fn take_snapshot(&mut self) {
        for track in self.tracks.values_mut() {
            track.snapshot = track.available_frames();
        }
    }

    /// Pops and applies every marker; false when one is held (then later markers and samples
    /// wait until it is resolved, and the snapshot must not be drained).
    fn apply_markers(&mut self, last: bool) -> bool {
        if let Some(marker) = self.held.take() {
            // Messages were applied since it was held: decide now.
            self.marker(marker, false);
        }
        while let Ok(marker) = self.markers.pop() {
            if !self.marker(marker, !last) {
                self.held = Some(marker);
                return false;
            }
        }
        true
    }

    /// Drains what is left of the snapshot into the current takes.
    fn drain_snapshot(&mut self) {
        for (&id, track) in &mut self.tracks {
            let frames = track.snapshot;
            track.drain(id, frames, &mut self.scratch, &mut self.events);
        }
    }

    /// Applies one marker; false (nothing done) when `may_hold` and the marker needs a message
    /// that may not have been applied yet.
    fn marker(&mut self, marker: CaptureMarker, may_hold: bool) -> bool {
        let id = match marker {
            CaptureMarker::TakeStart { track, .. }
            | CaptureMarker::Gap { track, .. }
            | CaptureMarker::TakeEnd { track, .. } => track,
        };
        let Some(track) = self.tracks.get_mut(&id) else {
            if may_hold {
                return false;
            }
            tracing::warn!(?marker, "capture marker for an unknown track ignored");
            return true;
        };
        let events = &mut self.events;
        let scratch = &mut self.scratch;
        match marker {
            CaptureMarker::TakeStart { frame, .. } => {
                if track.prepared.is_empty() && may_hold {
                    return false;
                }
                if !matches!(track.take, Take::Idle) {
                    tracing::warn!(track = id, "TakeStart before the previous TakeEnd");
                    track.finalize(id, events);
                }
                track.position = 0;
                match track.prepared.pop_front() {
                    Some(PreparedTake { take_id, path, wav }) => {
                        track.take = Take::Open { take_id, path, wav };
                        events(WriterToControl::TakeStarted {
                            take_id,
                            track: id,
                            frame,
                        });
                    }
                    None => {
                        track.take = Take::Discard;
                        events(WriterToControl::Unbound { track: id });
                    }
                }
            }
            CaptureMarker::Gap { at, frames, .. } => {
                track.drain_to(id, at, scratch, events);
                if let Take::Open { take_id, .. } = track.take {
                    track.silence(id, frames, events);
                    if matches!(track.take, Take::Open { .. }) {
                        events(WriterToControl::TakeGap {
                            take_id,
                            at,
                            frames,
                        });
                    }
                } else {
                    track.position += frames;
                }
            }
            CaptureMarker::TakeEnd { at, .. } => {
                track.drain_to(id, at, scratch, events);
                track.finalize(id, events);
                if track.removing {
                    self.remove_track(id);
                }
            }
        }
        true
    }

    /// Stages every open take (appends its buffer, rewrites its header), then syncs each
    /// filesystem holding one; returns the filesystems (`st_dev`) whose sync succeeded. A take
    /// on a filesystem whose sync failed is synced on its own by `flush`, which finds out
    /// which file the error belongs to.
    fn sync_filesystems(&mut self) -> Vec<u64> {
        let mut synced = Vec::new();
        // (device, a track with an open take on it)
        let mut devices: Vec<(u64, u16)> = Vec::new();
        for (&id, track) in &mut self.tracks {
            let Take::Open { wav, .. } = &mut track.take else {
                continue;
            };
            match wav.stage() {
                Ok(()) if devices.iter().all(|&(device, _)| device != wav.device()) => {
                    devices.push((wav.device(), id));
                }
                Ok(()) => {}
                Err(error) => track.fail(id, &error, &mut self.events),
            }
        }
        for (device, id) in devices {
            let Some(Track {
                take: Take::Open { wav, .. },
                ..
            }) = self.tracks.get(&id)
            else {
                continue;
            };
            match wav.sync_filesystem() {
                Ok(()) => synced.push(device),
                Err(error) => {
                    tracing::warn!(%error, "syncing the takes' filesystem failed; syncing each take")
                }
            }
        }
        synced
    }

    /// Syncs every open take and checks the free space against their data rate.
    fn flush(&mut self) {
        let synced_devices = match self.config.sync {
            SyncScope::Filesystem => self.sync_filesystems(),
            SyncScope::Files => Vec::new(),
        };
        let mut rate = 0u64;
        for (&id, track) in &mut self.tracks {
            if let Take::Open { wav, .. } = &mut track.take {
                let synced = if synced_devices.contains(&wav.device()) {
                    Ok(())
                } else {
                    wav.sync()
                };
                match synced {
                    Ok(()) => {
                        rate += bytes_per_second(
                            self.config.format,
                            track.channels,
                            self.config.sample_rate,
                        )
                    }
                    Err(error) => track.fail(id, &error, &mut self.events),
                }
            }
        }
        let threshold = self.config.stop_free_seconds;
        if rate == 0 || !threshold.is_finite() || threshold <= 0.0 {
            self.disk_low = false;
            return;
        }
        match free_space(&self.config.watch_dir) {
            Ok(free) if (free as f64) < threshold * rate as f64 => {
                if !self.disk_low {
                    self.disk_low = true;
                    let seconds_left = free as f64 / rate as f64;
                    tracing::warn!(free, seconds_left, "disk almost full");
                    (self.events)(WriterToControl::DiskLow {
                        free_bytes: free,
                        seconds_left,
                    });
                }
            }
            Ok(_) => self.disk_low = false,
            Err(error) => {
                tracing::warn!(%error, dir = %self.config.watch_dir.display(), "free space unknown")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtrb::{Producer, RingBuffer};
    use std::path::Path;

    /// An event callback that forwards to a channel the test reads.
    fn event_channel() -> (Events, Receiver<WriterToControl>) {
        let (sender, receiver) = mpsc::channel();
        let events: Events = Box::new(move |event| {
            // The receiver outlives every writer in these tests.
            let _ = sender.send(event);
        });
        (events, receiver)
    }

    /// Take-relative frames `start..start + frames` of a test signal unique to `take`
    /// (exactly representable, so f32 files compare exactly).
    fn signal(take: u64, start: u64, frames: u64, channels: u64) -> Vec<f32> {
        (start * channels..(start + frames) * channels)
            .map(|i| ((take * 7919 + i) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// The processor's side: pushes samples; the test rings are sized so they never fill.
    fn push(ring: &mut Producer<f32>, samples: &[f32]) {
        ring.push_entire_slice(samples)
            .expect("test ring large enough");
    }

    fn mark(markers: &mut Producer<CaptureMarker>, marker: CaptureMarker) {
        markers.push(marker).expect("marker queue large enough");
    }

    fn read_f32(path: &Path) -> Vec<f32> {
        let mut reader = hound::WavReader::open(path).expect("hound opens the take");
        reader.samples::<f32>().map(|s| s.unwrap()).collect()
    }

    fn config(dir: &Path, format: SampleFormat, flush: Duration) -> WriterConfig {
        WriterConfig {
            format,
            flush_interval: flush,
            stop_free_seconds: 0.0,
            ..WriterConfig::new(48_000, dir.to_path_buf())
        }
    }

    #[test]
    fn writer_thread_end_to_end_syncing_the_filesystem() {
        writer_thread_end_to_end(SyncScope::Filesystem);
    }

    #[test]
    fn writer_thread_end_to_end_syncing_each_file() {
        writer_thread_end_to_end(SyncScope::Files);
    }

    /// Two tracks through takes, a gap, back-to-back takes, an unprepared take and shutdown;
    /// mid-take, what was flushed is a valid file holding the samples.
    fn writer_thread_end_to_end(sync: SyncScope) {
        let dir = tempfile::tempdir().unwrap();
        let flush = Duration::from_millis(100);
        let (mut markers, marker_consumer) = RingBuffer::new(64);
        let (mut mono, mono_ring) = RingBuffer::new(48_000);
        let (mut stereo, stereo_ring) = RingBuffer::new(96_000);
        let (events, received) = event_channel();
        let writer = CaptureWriter::spawn(
            WriterConfig {
                sync,
                ..config(dir.path(), SampleFormat::F32, flush)
            },
            marker_consumer,
            events,
        )
        .unwrap();
        let first = dir.path().join("01-mono-take1.wav");
        let stereo_take = dir.path().join("02-stereo-take1.wav");
        let second = dir.path().join("01-mono-take2.wav");
        writer.send(ControlToWriter::AddTrack {
            track: 0,
            channels: 1,
            ring: mono_ring,
        });
        writer.send(ControlToWriter::AddTrack {
            track: 1,
            channels: 2,
            ring: stereo_ring,
        });
        for (track, take_id, path) in [(0, 1, &first), (1, 2, &stereo_take), (0, 3, &second)] {
            writer.send(ControlToWriter::PrepareTake {
                track,
                take_id,
                path: path.clone(),
            });
        }

        // Record: both takes start at timeline frame 1000.
        mark(
            &mut markers,
            CaptureMarker::TakeStart {
                track: 0,
                frame: 1000,
            },
        );
        mark(
            &mut markers,
            CaptureMarker::TakeStart {
                track: 1,
                frame: 1000,
            },
        );
        push(&mut mono, &signal(1, 0, 9600, 1));
        push(&mut stereo, &signal(2, 0, 9600, 2));

        // Pause-like hole: no samples, no markers. The writer's own flush clock must make what
        // arrived durable; waiting for it is bounded generously because a loaded CI machine can
        // stall a sync for seconds, while a writer that never flushes still fails.
        let one_interval = 48_000 * flush.as_millis() as usize / 1000;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mid_take = loop {
            let durable = hound::WavReader::open(&first)
                .map(|mut reader| reader.samples::<f32>().map_while(Result::ok).collect())
                .unwrap_or_else(|_| Vec::new());
            if durable.len() >= 9600 - one_interval || Instant::now() > deadline {
                break durable;
            }
            std::thread::sleep(flush);
        };
        assert!(
            mid_take.len() >= 9600 - one_interval,
            "only {} frames durable mid-take after 10 s",
            mid_take.len()
        );
        assert_eq!(mid_take, signal(1, 0, mid_take.len() as u64, 1));

        push(&mut mono, &signal(1, 9600, 2400, 1));
        push(&mut stereo, &signal(2, 9600, 2400, 2));
        // 480 frames lost on the stereo track, then 1000 more delivered.
        mark(
            &mut markers,
            CaptureMarker::Gap {
                track: 1,
                at: 12_000,
                frames: 480,
            },
        );
        push(&mut stereo, &signal(2, 12_480, 1000, 2));
        // The mono take ends and the next one starts at once: its samples must not leak back.
        mark(
            &mut markers,
            CaptureMarker::TakeEnd {
                track: 0,
                at: 12_000,
            },
        );
        mark(
            &mut markers,
            CaptureMarker::TakeStart {
                track: 0,
                frame: 13_000,
            },
        );
        push(&mut mono, &signal(3, 0, 5000, 1));
        mark(
            &mut markers,
            CaptureMarker::TakeEnd {
                track: 1,
                at: 13_480,
            },
        );
        // A take nobody prepared: discarded.
        mark(
            &mut markers,
            CaptureMarker::TakeStart {
                track: 1,
                frame: 20_000,
            },
        );
        push(&mut stereo, &signal(4, 0, 300, 2));
        mark(&mut markers, CaptureMarker::TakeEnd { track: 1, at: 300 });
        // The second mono take has no TakeEnd: shutdown finalizes what arrived.
        writer.shutdown();

        let events: Vec<WriterToControl> = received.try_iter().collect();
        let expected = [
            WriterToControl::TakeStarted {
                take_id: 1,
                track: 0,
                frame: 1000,
            },
            WriterToControl::TakeStarted {
                take_id: 2,
                track: 1,
                frame: 1000,
            },
            WriterToControl::TakeGap {
                take_id: 2,
                at: 12_000,
                frames: 480,
            },
            WriterToControl::TakeFinished {
                take_id: 1,
                track: 0,
                frames: 12_000,
                data_bytes: 48_000,
                path: first.clone(),
            },
            WriterToControl::TakeStarted {
                take_id: 3,
                track: 0,
                frame: 13_000,
            },
            WriterToControl::TakeFinished {
                take_id: 2,
                track: 1,
                frames: 13_480,
                data_bytes: 13_480 * 8,
                path: stereo_take.clone(),
            },
            WriterToControl::Unbound { track: 1 },
            WriterToControl::TakeFinished {
                take_id: 3,
                track: 0,
                frames: 5000,
                data_bytes: 20_000,
                path: second.clone(),
            },
        ];
        assert_eq!(events, expected);

        assert_eq!(read_f32(&first), signal(1, 0, 12_000, 1));
        let mut stereo_expected = signal(2, 0, 12_000, 2);
        stereo_expected.extend(std::iter::repeat_n(0.0, 480 * 2));
        stereo_expected.extend(signal(2, 12_480, 1000, 2));
        assert_eq!(read_f32(&stereo_take), stereo_expected);
        assert_eq!(read_f32(&second), signal(3, 0, 5000, 1));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    /// Drives a writer by hand (no thread), so each pass is deterministic.
    fn manual_writer(
        dir: &Path,
    ) -> (
        Writer,
        Sender<Inbox>,
        Producer<CaptureMarker>,
        Receiver<WriterToControl>,
    ) {
        let (inbox, receiver) = mpsc::channel();
        let (markers, marker_consumer) = RingBuffer::new(64);
        let (events, received) = event_channel();
        let writer = Writer::new(
            config(dir, SampleFormat::F32, Duration::from_secs(1)),
            marker_consumer,
            events,
            receiver,
        );
        (writer, inbox, markers, received)
    }

    fn send(inbox: &Sender<Inbox>, message: ControlToWriter) {
        inbox.send(Inbox::Control(message)).unwrap();
    }

    #[test]
    fn late_prepare_is_held_for_one_pass_then_unbound_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, inbox, mut markers, received) = manual_writer(dir.path());
        let (mut ring, consumer) = RingBuffer::new(4096);
        send(
            &inbox,
            ControlToWriter::AddTrack {
                track: 0,
                channels: 1,
                ring: consumer,
            },
        );
        writer.receive();

        // The marker is visible before the PrepareTake sent ahead of it was applied.
        let path = dir.path().join("a.wav");
        mark(
            &mut markers,
            CaptureMarker::TakeStart { track: 0, frame: 5 },
        );
        push(&mut ring, &signal(7, 0, 100, 1));
        send(
            &inbox,
            ControlToWriter::PrepareTake {
                track: 0,
                take_id: 7,
                path: path.clone(),
            },
        );
        writer.pass(false);
        assert!(received.try_recv().is_err(), "held, not unbound");
        writer.receive();
        writer.pass(false);
        assert_eq!(
            received.try_recv().unwrap(),
            WriterToControl::TakeStarted {
                take_id: 7,
                track: 0,
                frame: 5
            }
        );
        mark(&mut markers, CaptureMarker::TakeEnd { track: 0, at: 100 });
        // Nothing prepared this time: held once, then Unbound, its samples discarded.
        mark(
            &mut markers,
            CaptureMarker::TakeStart {
                track: 0,
                frame: 200,
            },
        );
        push(&mut ring, &signal(8, 0, 50, 1));
        writer.pass(false);
        writer.receive();
        writer.pass(false);
        mark(&mut markers, CaptureMarker::TakeEnd { track: 0, at: 50 });
        writer.receive();
        writer.pass(false);
        writer.close();
        let events: Vec<_> = received.try_iter().collect();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(
            events[0],
            WriterToControl::TakeFinished {
                take_id: 7,
                frames: 100,
                ..
            }
        ));
        assert_eq!(events[1], WriterToControl::Unbound { track: 0 });
        assert_eq!(read_f32(&path), signal(7, 0, 100, 1));
        assert!(writer.tracks[&0].ring.is_empty(), "unbound samples drained");
    }

    #[test]
    fn a_cancelled_take_leaves_the_fifo_so_the_next_start_binds_the_right_take() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, inbox, mut markers, received) = manual_writer(dir.path());
        let (mut ring, consumer) = RingBuffer::new(4096);
        send(
            &inbox,
            ControlToWriter::AddTrack {
                track: 0,
                channels: 1,
                ring: consumer,
            },
        );
        let refused = dir.path().join("refused.wav");
        let kept = dir.path().join("kept.wav");
        for (take_id, path) in [(1, &refused), (2, &kept)] {
            send(
                &inbox,
                ControlToWriter::PrepareTake {
                    track: 0,
                    take_id,
                    path: path.clone(),
                },
            );
        }
        send(
            &inbox,
            ControlToWriter::CancelTake {
                track: 0,
                take_id: 1,
            },
        );
        writer.receive();
        assert!(
            !refused.exists(),
            "the cancelled take's empty file is removed"
        );
        assert_eq!(
            received.try_recv().unwrap(),
            WriterToControl::TakeCancelled {
                take_id: 1,
                track: 0
            }
        );
        mark(
            &mut markers,
            CaptureMarker::TakeStart { track: 0, frame: 9 },
        );
        push(&mut ring, &signal(3, 0, 64, 1));
        mark(&mut markers, CaptureMarker::TakeEnd { track: 0, at: 64 });
        writer.pass(false);
        // Cancelling a bound take changes nothing.
        send(
            &inbox,
            ControlToWriter::CancelTake {
                track: 0,
                take_id: 2,
            },
        );
        writer.receive();
        writer.close();
        let events: Vec<_> = received.try_iter().collect();
        assert_eq!(
            events[0],
            WriterToControl::TakeStarted {
                take_id: 2,
                track: 0,
                frame: 9
            }
        );
        assert!(
            matches!(
                events[1],
                WriterToControl::TakeFinished {
                    take_id: 2,
                    frames: 64,
                    ..
                }
            ),
            "{events:?}"
        );
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(read_f32(&kept), signal(3, 0, 64, 1));
    }

    #[test]
    fn remove_before_take_end_waits_for_it_and_a_replacement_takes_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, inbox, mut markers, received) = manual_writer(dir.path());
        let (mut mono, consumer) = RingBuffer::new(4096);
        let mono_take = dir.path().join("mono.wav");
        let stereo_take = dir.path().join("stereo.wav");
        let unused = dir.path().join("unused.wav");
        send(
            &inbox,
            ControlToWriter::AddTrack {
                track: 0,
                channels: 1,
                ring: consumer,
            },
        );
        send(
            &inbox,
            ControlToWriter::PrepareTake {
                track: 0,
                take_id: 1,
                path: mono_take.clone(),
            },
        );
        writer.receive();
        mark(
            &mut markers,
            CaptureMarker::TakeStart { track: 0, frame: 0 },
        );
        push(&mut mono, &signal(1, 0, 30, 1));
        writer.pass(false);

        // The processor ended the take, control reacted before the writer saw the TakeEnd.
        push(&mut mono, &signal(1, 30, 20, 1));
        mark(&mut markers, CaptureMarker::TakeEnd { track: 0, at: 50 });
        let (mut stereo, consumer) = RingBuffer::new(4096);
        send(&inbox, ControlToWriter::RemoveTrack { track: 0 });
        send(
            &inbox,
            ControlToWriter::AddTrack {
                track: 0,
                channels: 2,
                ring: consumer,
            },
        );
        send(
            &inbox,
            ControlToWriter::PrepareTake {
                track: 0,
                take_id: 2,
                path: stereo_take.clone(),
            },
        );
        send(
            &inbox,
            ControlToWriter::PrepareTake {
                track: 0,
                take_id: 3,
                path: unused.clone(),
            },
        );
        writer.receive();
        mark(
            &mut markers,
            CaptureMarker::TakeStart {
                track: 0,
                frame: 900,
            },
        );
        push(&mut stereo, &signal(2, 0, 10, 2));
        mark(&mut markers, CaptureMarker::TakeEnd { track: 0, at: 10 });
        writer.pass(false);
        send(&inbox, ControlToWriter::RemoveTrack { track: 0 });
        writer.receive();
        assert!(writer.tracks.is_empty());

        let events: Vec<_> = received.try_iter().collect();
        let finished = |take_id, frames, data_bytes, path: &Path| WriterToControl::TakeFinished {
            take_id,
            track: 0,
            frames,
            data_bytes,
            path: path.to_path_buf(),
        };
        assert_eq!(
            events,
            [
                WriterToControl::TakeStarted {
                    take_id: 1,
                    track: 0,
                    frame: 0
                },
                finished(1, 50, 200, &mono_take),
                WriterToControl::TakeStarted {
                    take_id: 2,
                    track: 0,
                    frame: 900
                },
                finished(2, 10, 80, &stereo_take),
                finished(3, 0, 0, &unused),
            ]
        );
        assert_eq!(read_f32(&mono_take), signal(1, 0, 50, 1));
        assert_eq!(read_f32(&stereo_take), signal(2, 0, 10, 2));
        assert_eq!(hound::WavReader::open(&unused).unwrap().spec().channels, 2);
    }

    #[test]
    fn samples_after_the_snapshot_stay_out_of_the_ended_take() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, inbox, mut markers, received) = manual_writer(dir.path());
        let (mut ring, consumer) = RingBuffer::new(4096);
        let (old, new) = (dir.path().join("old.wav"), dir.path().join("new.wav"));
        send(
            &inbox,
            ControlToWriter::AddTrack {
                track: 0,
                channels: 1,
                ring: consumer,
            },
        );
        send(
            &inbox,
            ControlToWriter::PrepareTake {
                track: 0,
                take_id: 1,
                path: old.clone(),
            },
        );
        send(
            &inbox,
            ControlToWriter::PrepareTake {
                track: 0,
                take_id: 2,
                path: new.clone(),
            },
        );
        writer.receive();
        mark(
            &mut markers,
            CaptureMarker::TakeStart { track: 0, frame: 0 },
        );
        push(&mut ring, &signal(1, 0, 40, 1));
        writer.take_snapshot();
        assert!(writer.apply_markers(false));
        // The processor runs between the marker pops and the drain: it delivers the tail of
        // the take, ends it, starts the next one and delivers its first samples.
        push(&mut ring, &signal(1, 40, 10, 1));
        mark(&mut markers, CaptureMarker::TakeEnd { track: 0, at: 50 });
        mark(
            &mut markers,
            CaptureMarker::TakeStart {
                track: 0,
                frame: 60,
            },
        );
        push(&mut ring, &signal(2, 0, 25, 1));
        writer.drain_snapshot();
        writer.pass(false);
        writer.close();
        assert_eq!(read_f32(&old), signal(1, 0, 50, 1));
        assert_eq!(read_f32(&new), signal(2, 0, 25, 1));
        let finished: Vec<_> = received
            .try_iter()
            .filter_map(|event| match event {
                WriterToControl::TakeFinished {
                    take_id, frames, ..
                } => Some((take_id, frames)),
                _ => None,
            })
            .collect();
        assert_eq!(finished, [(1, 50), (2, 25)]);
    }

    #[test]
    fn prepare_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, inbox, _markers, received) = manual_writer(dir.path());
        let (_ring, consumer) = RingBuffer::new(16);
        send(
            &inbox,
            ControlToWriter::PrepareTake {
                track: 4,
                take_id: 1,
                path: dir.path().join("x.wav"),
            },
        );
        send(
            &inbox,
            ControlToWriter::AddTrack {
                track: 4,
                channels: 1,
                ring: consumer,
            },
        );
        send(
            &inbox,
            ControlToWriter::PrepareTake {
                track: 4,
                take_id: 2,
                path: dir.path().join("no/such/dir.wav"),
            },
        );
        writer.receive();
        let events: Vec<_> = received.try_iter().collect();
        assert!(
            matches!(&events[..], [
            WriterToControl::PrepareFailed { take_id: 1, track: 4, .. },
            WriterToControl::PrepareFailed { take_id: 2, track: 4, message },
        ] if message.contains("no/such/dir.wav")),
            "{events:?}"
        );
        assert!(!dir.path().join("x.wav").exists());
    }

    #[test]
    fn disk_low_is_sent_once_per_episode() {
        let dir = tempfile::tempdir().unwrap();
        let (mut markers, marker_consumer) = RingBuffer::new(8);
        let (_ring, consumer) = RingBuffer::<f32>::new(16);
        let (events, received) = event_channel();
        let mut config = config(dir.path(), SampleFormat::S24, Duration::from_millis(10));
        // No disk has a million years of stereo 24-bit audio free.
        config.stop_free_seconds = 3.0e13;
        let writer = CaptureWriter::spawn(config, marker_consumer, events).unwrap();
        writer.send(ControlToWriter::AddTrack {
            track: 0,
            channels: 2,
            ring: consumer,
        });
        writer.send(ControlToWriter::PrepareTake {
            track: 0,
            take_id: 1,
            path: dir.path().join("t.wav"),
        });
        mark(
            &mut markers,
            CaptureMarker::TakeStart { track: 0, frame: 0 },
        );
        let disk_low = |event| match event {
            WriterToControl::DiskLow {
                free_bytes,
                seconds_left,
            } => Some((free_bytes, seconds_left)),
            _ => None,
        };
        // The first report may take a while on a loaded machine; then 200 ms more for a second
        // one, which must not come.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut low = Vec::new();
        while low.is_empty() && std::time::Instant::now() < deadline {
            if let Ok(event) = received.recv_timeout(Duration::from_millis(50)) {
                low.extend(disk_low(event));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        writer.shutdown();
        low.extend(received.try_iter().filter_map(disk_low));
        assert_eq!(low.len(), 1, "{low:?}");
        let (free_bytes, seconds_left) = low[0];
        assert!(free_bytes > 0);
        let expected = free_bytes as f64 / 288_000.0;
        assert!(
            (seconds_left - expected).abs() < 1e-6,
            "{seconds_left} vs {expected}"
        );
    }

    /// Unmounts the test's tmpfs even when the test fails.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(dir: &Path, size: &str) -> Tmpfs {
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size}"))
                .arg("tmpfs")
                .arg(dir)
                .status()
                .expect("mount must be available");
            assert!(
                status.success(),
                "mount -t tmpfs failed (this test needs root)"
            );
            Tmpfs(dir.to_path_buf())
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn disk_full_fails_the_take_and_keeps_the_file_valid() {
        let dir = tempfile::tempdir().unwrap();
        let _tmpfs = Tmpfs::mount(dir.path(), "256k");
        let path = dir.path().join("full.wav");
        let (mut markers, marker_consumer) = RingBuffer::new(8);
        let (mut ring, consumer) = RingBuffer::new(96_000);
        let (events, received) = event_channel();
        let writer = CaptureWriter::spawn(
            config(dir.path(), SampleFormat::S24, Duration::from_millis(20)),
            marker_consumer,
            events,
        )
        .unwrap();
        writer.send(ControlToWriter::AddTrack {
            track: 0,
            channels: 2,
            ring: consumer,
        });
        writer.send(ControlToWriter::PrepareTake {
            track: 0,
            take_id: 9,
            path: path.clone(),
        });
        mark(
            &mut markers,
            CaptureMarker::TakeStart { track: 0, frame: 0 },
        );
        // Push up to 3 s of stereo s24 (864 kB) into 256 kB, waiting for room in the ring.
        let block = 4800u64;
        let mut pushed = 0u64;
        let mut failure = None;
        while pushed < 3 * 48_000 && failure.is_none() {
            if ring.slots() >= 2 * block as usize {
                push(&mut ring, &signal(9, pushed, block, 2));
                pushed += block;
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
            for event in received.try_iter() {
                if let WriterToControl::TakeFailed {
                    take_id,
                    track,
                    frames,
                    message,
                } = event
                {
                    failure = Some((take_id, track, frames, message));
                }
            }
        }
        mark(
            &mut markers,
            CaptureMarker::TakeEnd {
                track: 0,
                at: pushed,
            },
        );
        writer.shutdown();
        for event in received.try_iter() {
            assert!(
                !matches!(event, WriterToControl::TakeFinished { .. }),
                "{event:?}"
            );
            if let WriterToControl::TakeFailed {
                take_id,
                track,
                frames,
                message,
            } = event
            {
                failure = Some((take_id, track, frames, message));
            }
        }
        let (take_id, track, frames, message) = failure.expect("TakeFailed must arrive");
        assert_eq!((take_id, track), (9, 0));
        assert!(message.contains("full.wav"), "{message}");
        assert!(frames > 0 && frames < pushed);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, 44 + frames * 6, "truncated to whole frames");
        let mut reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(u64::from(reader.duration()), frames);
        let expected = signal(9, 0, frames, 2);
        for (i, (read, want)) in reader.samples::<i32>().zip(expected).enumerate() {
            let want = (want.clamp(-1.0, 1.0) * 8_388_607.0).round() as i32;
            assert!((read.unwrap() - want).abs() <= 1, "sample {i}");
        }
    }
}
