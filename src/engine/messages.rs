//! Messages between the control thread and the real-time processor, and from the processor to
//! the capture writer. Every type here is moved through a pre-allocated `rtrb` queue: none of
//! them allocates when sent or received, so all are real-time safe to push and pop.

use std::fmt;

use super::stream::{InboundStream, MonitorTap};

/// Transport state of one session's engine. `repr(u8)` so it can live in an `AtomicU8`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportState {
    /// Not rolling; position held.
    Stopped = 0,
    /// Rolling, nothing captured.
    Playing = 1,
    /// Rolling and capturing every armed track.
    Recording = 2,
    /// Position held; capture suspended. `Resume` continues the same takes.
    Paused = 3,
}

impl TransportState {
    /// The word used on every control surface (`stopped|playing|recording|paused`).
    pub fn as_str(self) -> &'static str {
        match self {
            TransportState::Stopped => "stopped",
            TransportState::Playing => "playing",
            TransportState::Recording => "recording",
            TransportState::Paused => "paused",
        }
    }

    /// Inverse of `self as u8`; unknown values read as `Stopped`.
    pub fn from_u8(value: u8) -> TransportState {
        match value {
            1 => TransportState::Playing,
            2 => TransportState::Recording,
            3 => TransportState::Paused,
            _ => TransportState::Stopped,
        }
    }
}

impl fmt::Display for TransportState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a track sends to the monitor mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitoring {
    /// Input while the track is armed, nothing otherwise (playback arrives with clips).
    Auto,
    /// Always the input.
    Input,
    /// Nothing.
    Off,
}

impl Monitoring {
    /// The word used on every control surface.
    pub fn as_str(self) -> &'static str {
        match self {
            Monitoring::Auto => "auto",
            Monitoring::Input => "input",
            Monitoring::Off => "off",
        }
    }

    /// Parses `auto`, `input` or `off`.
    pub fn parse(word: &str) -> Option<Monitoring> {
        match word {
            "auto" => Some(Monitoring::Auto),
            "input" => Some(Monitoring::Input),
            "off" => Some(Monitoring::Off),
            _ => None,
        }
    }
}

/// Backend input channel index meaning "no input": the track records silence.
pub const NO_INPUT: u16 = u16::MAX;

/// Everything the processor needs to know about one track. Validated by `control` before it is
/// sent: the processor trusts these values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackParams {
    /// 1 (mono) or 2 (stereo); fixed when the track is created.
    pub channels: u8,
    /// Backend input channel feeding each track channel (`NO_INPUT` for silence); only the
    /// first `channels` entries are used.
    pub input: [u16; 2],
    /// Captured while the transport records.
    pub armed: bool,
    /// Pre-record trim, linear. The take holds `input * input_gain`.
    pub input_gain: f32,
    /// Fader, linear 0.0–2.0. Shapes monitoring and mix only.
    pub level: f32,
    /// −1.0 (left) … +1.0 (right), constant-power law.
    pub pan: f32,
    /// Silenced in the mix.
    pub muted: bool,
    /// When any track is soloed, only soloed tracks are heard.
    pub soloed: bool,
    /// What the track sends to the monitor mix.
    pub monitoring: Monitoring,
}

/// The resources of one track, allocated by `control` off the real-time thread and moved into
/// the processor. The processor hands it back in [`EngineToControl::TrackRetired`] so it is
/// freed off the real-time thread.
pub struct TrackSlot {
    /// The track's settings.
    pub params: TrackParams,
    /// Interleaved `f32` frames (`params.channels` samples each) to the capture writer.
    pub capture: rtrb::Producer<f32>,
}

/// Commands from `control` to the processor, applied at the start of the next period, or at
/// `at_frame` inside a period where one is given and falls inside it.
pub enum ControlToEngine {
    /// Puts a track in slot `track` (0-based; the user-facing index is `track + 1`).
    InstallTrack {
        /// Slot, `< max_tracks`.
        track: u16,
        /// The track's resources (boxed so the queue's elements stay small).
        slot: Box<TrackSlot>,
    },
    /// Takes the track out of slot `track`, ending its take if it has one, and hands its
    /// resources back in [`EngineToControl::TrackRetired`].
    RemoveTrack {
        /// Slot.
        track: u16,
    },
    /// Replaces a track's settings. Arming while recording (or paused from recording) opens a
    /// take at that frame; disarming closes it.
    SetTrack {
        /// Slot.
        track: u16,
        /// New settings (`channels` must not change).
        params: TrackParams,
        /// Frame at which to apply, if sample accuracy is wanted.
        at_frame: Option<u64>,
    },
    /// Starts rolling (if stopped) and capturing every armed track: one take each.
    Record {
        /// Frame at which to start, if sample accuracy is wanted.
        at_frame: Option<u64>,
    },
    /// Starts rolling without capturing; from `Recording` this ends every take (punch out).
    Play,
    /// Holds the position and suspends capture; takes stay open.
    Pause,
    /// Continues what was paused, into the same takes.
    Resume,
    /// Stops rolling and ends every take.
    Stop {
        /// Frame at which to stop, if sample accuracy is wanted.
        at_frame: Option<u64>,
    },
    /// Moves the position (refused by the processor while recording or paused from recording).
    Seek {
        /// New position.
        frame: u64,
    },
    /// Feeds slot `track` from `stream` instead of its backend input (input gain, meters,
    /// capture and monitoring as if it came from the port). Refused (and handed back in
    /// [`EngineToControl::StreamRetired`]) when the slot is empty or already has a stream.
    AttachStream {
        /// Slot.
        track: u16,
        /// The stream (boxed so the queue's elements stay small).
        stream: Box<InboundStream>,
    },
    /// Gives slot `track` its backend input back and hands the stream back in
    /// [`EngineToControl::StreamRetired`].
    DetachStream {
        /// Slot.
        track: u16,
    },
    /// Starts copying [`MonitorTap::source`] into `tap`'s ring. Refused (and handed back in
    /// [`EngineToControl::TapRetired`]) when `id` is not below `MAX_TAPS` or is in use.
    AttachTap {
        /// Tap id, `< MAX_TAPS`.
        id: u8,
        /// The tap (boxed so the queue's elements stay small).
        tap: Box<MonitorTap>,
    },
    /// Stops tap `id` and hands it back in [`EngineToControl::TapRetired`].
    DetachTap {
        /// Tap id.
        id: u8,
    },
}

/// Events from the processor to `control`.
pub enum EngineToControl {
    /// The transport changed state at `frame`.
    State {
        /// New state.
        state: TransportState,
        /// Position when it changed.
        frame: u64,
    },
    /// A take opened on a track at timeline position `frame`.
    TakeStarted {
        /// Slot.
        track: u16,
        /// Timeline position of the take's first frame.
        frame: u64,
    },
    /// A take closed after `frames` frames (gaps included).
    TakeEnded {
        /// Slot.
        track: u16,
        /// Timeline position where it ended.
        frame: u64,
        /// Length of the take.
        frames: u64,
    },
    /// A capture ring was full: `frames` frames starting at take-relative frame `at` were not
    /// delivered; the writer fills them with silence.
    Overflow {
        /// Slot.
        track: u16,
        /// Take-relative frame where the gap starts.
        at: u64,
        /// Length of the gap.
        frames: u64,
    },
    /// A command could not be applied (e.g. `Seek` while recording); nothing changed.
    Rejected {
        /// Short static reason.
        reason: &'static str,
    },
    /// A removed track's resources, to be dropped off the real-time thread.
    TrackRetired {
        /// Slot it occupied.
        track: u16,
        /// Its resources.
        slot: Box<TrackSlot>,
    },
    /// A detached, refused or orphaned (its track removed) inbound stream, to be dropped off
    /// the real-time thread.
    StreamRetired {
        /// Slot it fed (or was meant to feed).
        track: u16,
        /// The stream.
        stream: Box<InboundStream>,
    },
    /// A detached or refused tap, to be dropped off the real-time thread.
    TapRetired {
        /// Its id.
        id: u8,
        /// The tap.
        tap: Box<MonitorTap>,
    },
}

/// Take boundaries from the processor to the capture writer, on one queue for all tracks.
///
/// Ordering contract: a `TakeStart` is pushed before the take's first sample enters the track's
/// ring; a `Gap` is pushed before any sample that follows the gap; a `TakeEnd` is pushed after
/// the take's last sample. `at` counts take-relative frames (samples delivered plus gap frames)
/// before the marker, so the writer can drain the ring exactly up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMarker {
    /// The samples that follow on `track`'s ring belong to a new take starting at timeline
    /// position `frame`.
    TakeStart {
        /// Slot.
        track: u16,
        /// Timeline position of the first frame.
        frame: u64,
    },
    /// `frames` frames were lost at take-relative frame `at`; write silence there.
    Gap {
        /// Slot.
        track: u16,
        /// Take-relative frame where the gap starts.
        at: u64,
        /// Length of the gap.
        frames: u64,
    },
    /// The take ends after take-relative frame `at`.
    TakeEnd {
        /// Slot.
        track: u16,
        /// Total take length in frames (samples delivered plus gaps).
        at: u64,
    },
}
