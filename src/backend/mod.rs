//! Audio backends: they own the [`Processor`] while running and call
//! [`Processor::process`] once per period with their input and output buffers.
//!
//! - [`jack`] (feature `jack`): one JACK client shared by the active sessions, ports per track.
//! - [`pipewire`] (feature `pipewire`): one native PipeWire filter node shared the same way.
//! - [`alsa`] (feature `alsa`): an ALSA capture device (and playback device) through cpal, one
//!   stream per session; tracks take the device's channels.
//! - [`virtual_graph`]: clock-driven tones or silence, for machines without an audio server.
//! - [`offline`]: pull-driven, as fast as asked, for tests, benchmarks and export.
//!
//! [`Graph`] is the daemon-wide choice (`audio.backend`); each active session starts its own
//! [`RunningBackend`] from it.

#[cfg(feature = "alsa")]
pub mod alsa;
#[cfg(feature = "jack")]
pub mod jack;
pub mod offline;
#[cfg(feature = "pipewire")]
pub mod pipewire;
#[cfg(any(feature = "jack", feature = "pipewire"))]
mod ports;
pub mod virtual_graph;

use std::fmt;
#[cfg(any(feature = "jack", feature = "pipewire"))]
use std::sync::Arc;

use crate::engine::{touched_zeros, AudioInputs, Processor, NO_INPUT};
use virtual_graph::{start_virtual, virtual_devices, VirtualConfig};

/// Why a backend refused or failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendError {
    /// The caller's input word was wrong (as opposed to the audio server failing).
    pub invalid_input: bool,
    /// What happened, for users.
    pub message: String,
}

impl BackendError {
    /// A bad input word (unknown port or device, wrong channel count).
    pub fn input(message: impl Into<String>) -> Self {
        BackendError {
            invalid_input: true,
            message: message.into(),
        }
    }

    /// The audio server or the graph failed.
    pub fn failed(message: impl Into<String>) -> Self {
        BackendError {
            invalid_input: false,
            message: message.into(),
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}

/// What a running backend reports to its session between periods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendEvent {
    /// The audio server went away: the processor no longer runs (see
    /// [`RunningBackend::run_detached`]).
    Lost,
    /// The server is back: ports and connections are restored and the processor runs again.
    Restored,
    /// The audio server's transport started rolling (followed transport).
    TransportStarted,
    /// The audio server's transport stopped (followed transport).
    TransportStopped,
    /// The audio server's transport was moved while stopped (followed transport).
    TransportLocated {
        /// New position.
        frame: u64,
    },
    /// The connections of one of the session's outputs changed (`port`: its role, e.g.
    /// `master_out_L`, `track2.out_R`; `peers`: what it feeds, joined with `+`, empty for
    /// nothing).
    OutputsChanged {
        /// The output's role.
        port: String,
        /// What it feeds now.
        peers: String,
    },
    /// Someone changed the connections of track `slot`'s ports; `input` is the new input word.
    InputChanged {
        /// Track slot (0-based).
        slot: u16,
        /// The input word now true of the graph.
        input: String,
    },
}

/// Whether a device captures or plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Audio into overdub (a track's input).
    Input,
    /// Audio out of overdub (the master).
    Output,
}

/// One device a backend offers, as a run of its channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Name shown to users.
    pub name: String,
    /// Number of channels.
    pub channels: u16,
    /// Backend channel index of the device's first channel (what `TrackParams::input` holds).
    pub first_channel: u16,
    /// Input or output.
    pub direction: Direction,
}

/// What a running backend reports about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// Backend name (`virtual`, `jack`, …).
    pub name: &'static str,
    /// Frames per second.
    pub sample_rate: u32,
    /// Frames per period.
    pub period: u32,
    /// Frames between the sound at an input and the processor seeing it.
    pub input_latency_frames: u32,
    /// Frames between the processor's output and the sound at an output.
    pub output_latency_frames: u32,
}

/// What a session asks of a transport it leads (JACK transport `lead`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportRequest {
    /// Start rolling.
    Start,
    /// Stop.
    Stop,
    /// Move to a frame.
    Locate(u64),
}

/// A backend whose audio thread is running one session's processor. Every method runs off the
/// real-time thread.
pub trait RunningBackend: Send {
    /// Rate, period and latencies.
    fn info(&self) -> BackendInfo;
    /// The devices (channel groups) tracks can take input from, and the outputs.
    fn devices(&self) -> Vec<DeviceInfo>;
    /// Checks an input word for a track of `channels` channels, changing nothing.
    fn check_input(&self, input: &str, channels: u8) -> Result<(), BackendError>;
    /// Gives track `slot` its ports (where the backend has ports per track) and routes `input`
    /// to it; returns the engine input channels for [`TrackParams::input`](crate::engine::TrackParams).
    fn route_track(
        &mut self,
        slot: u16,
        name: &str,
        channels: u8,
        input: &str,
    ) -> Result<[u16; 2], BackendError>;
    /// Follows a track rename (port names).
    fn rename_track(&mut self, slot: u16, name: &str) -> Result<(), BackendError>;
    /// Releases track `slot`'s ports.
    fn remove_track(&mut self, slot: u16);
    /// Patches the session's outputs as saved (role, peers joined with `+`), where the backend
    /// has ports to patch; sources that do not exist now are connected when they appear.
    fn restore_outputs(&mut self, saved: &[(String, String)]);
    /// Housekeeping between periods: reports xruns through `xruns` and returns what changed.
    fn poll(&mut self, xruns: &dyn Fn(u64)) -> Vec<BackendEvent>;
    /// Whether the audio server is there and the processor runs.
    fn is_running(&self) -> bool;
    /// Whether [`poll`](RunningBackend::poll) may wait on something outside the process (an
    /// audio server, a device being opened again): the control runtime then makes that
    /// periodic call off its worker, as it does every other call into a backend.
    fn poll_may_wait(&self) -> bool;
    /// Passes a transport change of the session on to the server's transport when the backend
    /// leads it; does nothing otherwise.
    fn lead_transport(&mut self, request: TransportRequest);
    /// While the server is gone, runs the processor once over `frames` frames of silence on the
    /// calling thread (so queued commands such as a stop take effect). `false` if it is not
    /// detached.
    fn run_detached(&mut self, frames: usize) -> bool;
    /// Stops the audio thread and hands the processor back (so it is dropped off the RT
    /// thread); `None` if the audio server kept it.
    fn stop(self: Box<Self>) -> Option<Processor>;
}

/// How a JACK client relates to the server's transport (`jack.transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportMode {
    /// Ignore it.
    Off,
    /// Start (record when a track is armed, else play), stop and locate with it.
    Follow,
    /// Start, stop and locate it with overdub's transport.
    Lead,
}

impl TransportMode {
    /// Parses `off`, `follow` or `lead`.
    pub fn parse(word: &str) -> Option<TransportMode> {
        match word {
            "off" => Some(TransportMode::Off),
            "follow" => Some(TransportMode::Follow),
            "lead" => Some(TransportMode::Lead),
            _ => None,
        }
    }
}

/// The settings of the JACK client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JackSettings {
    /// Client name.
    pub client_name: String,
    /// Transport relation.
    pub transport: TransportMode,
    /// Give every track direct outputs (`<session>.<track>.out_L/R`).
    pub direct_outs: bool,
}

/// Where the ALSA backend sends the master (`alsa.output_device`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlsaOutput {
    /// The capture device, when it also plays (left out of the config): without it, the master
    /// is discarded.
    SameAsInput,
    /// This playback device; failing to open it is an error.
    Device(String),
    /// No playback: the master is metered and discarded (`"none"`).
    Discard,
}

/// The settings of the ALSA backend (`[alsa]`, and the rate and period of `[audio]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlsaSettings {
    /// The capture device's ALSA name (`default`, `hw:CARD=USB,DEV=0`, `plughw:1,0`, …).
    pub device: String,
    /// Where the master goes.
    pub output: AlsaOutput,
    /// Channels captured from the device.
    pub channels: u16,
    /// Frames per second asked of the device (sessions record at it).
    pub sample_rate: u32,
    /// Frames per period asked of the device (it may choose another).
    pub period: u32,
}

/// The audio graph the daemon runs on, chosen once at start (`audio.backend`).
pub enum Graph {
    /// The built-in clock-driven graph.
    Virtual(VirtualConfig),
    /// The shared JACK client.
    #[cfg(feature = "jack")]
    Jack(Arc<jack::JackGraph>),
    /// The shared PipeWire filter node.
    #[cfg(feature = "pipewire")]
    PipeWire(Arc<pipewire::PipeWireGraph>),
    /// An ALSA device through cpal.
    #[cfg(feature = "alsa")]
    Alsa(alsa::AlsaGraph),
}

impl Graph {
    /// Chooses the graph for `backend` (`auto`, `jack`, `pipewire`, `alsa` or `virtual`):
    /// `auto` takes the first that works of JACK (a server answers), PipeWire (a server
    /// answers), ALSA (the configured device opens) and the virtual graph, and logs why each was
    /// skipped. The others fail when theirs does not. The PipeWire node is named like the JACK
    /// client (`jack.client_name`).
    pub fn choose(
        backend: &str,
        virtual_config: VirtualConfig,
        jack: &JackSettings,
        alsa: &AlsaSettings,
    ) -> Result<Graph, BackendError> {
        match backend {
            "virtual" => Ok(Graph::Virtual(virtual_config)),
            #[cfg(feature = "jack")]
            "jack" => Ok(Graph::Jack(jack::JackGraph::open(jack)?)),
            #[cfg(feature = "pipewire")]
            "pipewire" => Ok(Graph::PipeWire(Arc::new(pipewire::PipeWireGraph::open(
                &pipewire_settings(jack),
            )?))),
            #[cfg(feature = "alsa")]
            "alsa" => Ok(Graph::Alsa(alsa::AlsaGraph::open(alsa)?)),
            "auto" => Ok(Graph::choose_auto(virtual_config, jack, alsa)),
            other => Err(BackendError::failed(format!(
                "backend {other:?} is not available in this build (auto, {}virtual)",
                Graph::compiled()
            ))),
        }
    }

    /// The server and device backends this build has, for messages (`"jack, pipewire, "`).
    fn compiled() -> String {
        let mut names = String::new();
        for (on, name) in [
            (cfg!(feature = "jack"), "jack, "),
            (cfg!(feature = "pipewire"), "pipewire, "),
            (cfg!(feature = "alsa"), "alsa, "),
        ] {
            if on {
                names.push_str(name);
            }
        }
        names
    }

    /// `auto`: JACK → PipeWire → ALSA → virtual, logging why each was skipped.
    fn choose_auto(
        virtual_config: VirtualConfig,
        jack: &JackSettings,
        alsa: &AlsaSettings,
    ) -> Graph {
        #[cfg(feature = "jack")]
        match jack::JackGraph::open(jack) {
            Ok(graph) => {
                tracing::info!(
                    client = graph.client_name(),
                    rate = graph.sample_rate(),
                    "backend auto: a JACK server answers; using JACK"
                );
                return Graph::Jack(graph);
            }
            Err(e) => tracing::info!("backend auto: JACK skipped: {e}"),
        }
        #[cfg(not(feature = "jack"))]
        tracing::info!("backend auto: JACK skipped: this build has no JACK support");
        #[cfg(feature = "pipewire")]
        match pipewire::PipeWireGraph::open(&pipewire_settings(jack)) {
            Ok(graph) => {
                tracing::info!(
                    node = graph.node_name(),
                    rate = graph.sample_rate(),
                    "backend auto: a PipeWire server answers; using PipeWire"
                );
                return Graph::PipeWire(Arc::new(graph));
            }
            Err(e) => tracing::info!("backend auto: PipeWire skipped: {e}"),
        }
        #[cfg(not(feature = "pipewire"))]
        tracing::info!("backend auto: PipeWire skipped: this build has no PipeWire support");
        #[cfg(not(any(feature = "jack", feature = "pipewire")))]
        let _ = jack;
        #[cfg(feature = "alsa")]
        match alsa::AlsaGraph::open(alsa) {
            Ok(graph) => {
                tracing::info!(
                    device = alsa.device,
                    rate = graph.sample_rate(),
                    "backend auto: the ALSA device opens; using ALSA"
                );
                return Graph::Alsa(graph);
            }
            Err(e) => tracing::info!("backend auto: ALSA skipped: {e}"),
        }
        #[cfg(not(feature = "alsa"))]
        {
            let _ = alsa;
            tracing::info!("backend auto: ALSA skipped: this build has no ALSA support");
        }
        tracing::info!("backend auto: using the virtual graph");
        Graph::Virtual(virtual_config)
    }

    /// `virtual`, `jack`, `pipewire` or `alsa`.
    pub fn name(&self) -> &'static str {
        match self {
            Graph::Virtual(_) => "virtual",
            #[cfg(feature = "jack")]
            Graph::Jack(_) => "jack",
            #[cfg(feature = "alsa")]
            Graph::Alsa(_) => "alsa",
            #[cfg(feature = "pipewire")]
            Graph::PipeWire(_) => "pipewire",
        }
    }

    /// Frames per second new sessions record at.
    pub fn sample_rate(&self) -> u32 {
        match self {
            Graph::Virtual(config) => config.sample_rate,
            #[cfg(feature = "jack")]
            Graph::Jack(graph) => graph.sample_rate(),
            #[cfg(feature = "alsa")]
            Graph::Alsa(graph) => graph.sample_rate(),
            #[cfg(feature = "pipewire")]
            Graph::PipeWire(graph) => graph.sample_rate(),
        }
    }

    /// Frames per period now, what clients are told: 0 while the audio server is gone, or an
    /// active session's ALSA device (a new session's engine is still built for
    /// [`Graph::period`]).
    pub fn buffer_size(&self) -> u32 {
        match self {
            #[cfg(feature = "alsa")]
            Graph::Alsa(graph) if graph.device_gone() => 0,
            _ => self.period(),
        }
    }

    /// Frames per period now (0 while the JACK or PipeWire server is gone).
    pub fn period(&self) -> u32 {
        match self {
            Graph::Virtual(config) => config.period,
            #[cfg(feature = "jack")]
            Graph::Jack(graph) => graph.period(),
            #[cfg(feature = "pipewire")]
            Graph::PipeWire(graph) => graph.period(),
            #[cfg(feature = "alsa")]
            Graph::Alsa(graph) => graph.period(),
        }
    }

    /// The devices tracks can take input from, and the outputs.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        match self {
            Graph::Virtual(config) => virtual_devices(config),
            #[cfg(feature = "jack")]
            Graph::Jack(graph) => graph.devices(),
            #[cfg(feature = "alsa")]
            Graph::Alsa(graph) => graph.devices(),
            #[cfg(feature = "pipewire")]
            Graph::PipeWire(graph) => graph.devices(),
        }
    }

    /// Checks an input word for a track of `channels` channels, changing nothing.
    pub fn check_input(&self, input: &str, channels: u8) -> Result<(), BackendError> {
        match self {
            Graph::Virtual(config) => {
                resolve_input(&virtual_devices(config), input, channels).map(|_| ())
            }
            #[cfg(feature = "jack")]
            Graph::Jack(graph) => graph.check_input(input, channels),
            #[cfg(feature = "alsa")]
            Graph::Alsa(graph) => graph.check_input(input, channels),
            #[cfg(feature = "pipewire")]
            Graph::PipeWire(graph) => graph.check_input(input, channels),
        }
    }

    /// The input a new track `index` (1-based) gets when none is given.
    pub fn default_input(&self, index: u32, channels: u8) -> String {
        match self {
            Graph::Virtual(_) if channels == 2 => "Virtual Line In".into(),
            Graph::Virtual(_) => format!("Virtual Input {index}"),
            #[cfg(feature = "jack")]
            Graph::Jack(graph) => graph.default_input(index, channels),
            #[cfg(feature = "alsa")]
            Graph::Alsa(graph) => graph.default_input(index, channels),
            #[cfg(feature = "pipewire")]
            Graph::PipeWire(graph) => graph.default_input(index, channels),
        }
    }

    /// Starts a session's audio: its own virtual thread, a node on the shared JACK client or
    /// PipeWire node, or its own ALSA streams.
    pub fn start(
        &self,
        session_name: &str,
        sample_rate: u32,
        max_tracks: usize,
        processor: Processor,
    ) -> Result<Box<dyn RunningBackend>, BackendError> {
        // Only graphs with ports per session name them.
        #[cfg(not(any(feature = "jack", feature = "pipewire")))]
        let _ = session_name;
        match self {
            Graph::Virtual(config) => {
                let config = VirtualConfig {
                    sample_rate,
                    input_count: max_tracks,
                    ..*config
                };
                start_virtual(config, processor).map_err(|e| {
                    BackendError::failed(format!("cannot start the virtual graph: {e}"))
                })
            }
            #[cfg(feature = "jack")]
            Graph::Jack(graph) => graph.attach(session_name, sample_rate, max_tracks, processor),
            #[cfg(feature = "alsa")]
            Graph::Alsa(graph) => graph.start(sample_rate, processor),
            #[cfg(feature = "pipewire")]
            Graph::PipeWire(graph) => {
                graph.attach(session_name, sample_rate, max_tracks, processor)
            }
        }
    }
}

/// The PipeWire node's settings: it is named like the JACK client and has direct outputs
/// when the JACK client would.
#[cfg(feature = "pipewire")]
fn pipewire_settings(jack: &JackSettings) -> pipewire::PipeWireSettings {
    pipewire::PipeWireSettings {
        node_name: jack.client_name.clone(),
        direct_outs: jack.direct_outs,
    }
}

/// Resolves an input word against a device list (the virtual graph's, ALSA's): `none`, a
/// device name (its first channels) or `Device:N` (1-based channel). A whole word that names a
/// device is that device, so ALSA names such as `hw:1` are not read as channel 1 of `hw`.
/// Returns the engine channels.
pub fn resolve_input(
    devices: &[DeviceInfo],
    input: &str,
    channels: u8,
) -> Result<[u16; 2], BackendError> {
    if input == "none" || input.is_empty() {
        return Ok([NO_INPUT, NO_INPUT]);
    }
    let whole = devices
        .iter()
        .any(|d| matches!(d.direction, Direction::Input) && d.name == input);
    let (name, channel) = match input.rsplit_once(':') {
        Some((name, n)) if !whole && n.parse::<u16>().is_ok() => (name, n.parse::<u16>().ok()),
        _ => (input, None),
    };
    let unknown = || {
        let names: Vec<&str> = devices
            .iter()
            .filter(|d| matches!(d.direction, Direction::Input))
            .map(|d| d.name.as_str())
            .take(8)
            .collect();
        BackendError::input(format!(
            "unknown input {input:?}; inputs include {} (see `overdub devices`), or \"none\"",
            names.join(", ")
        ))
    };
    let device = devices
        .iter()
        .find(|d| matches!(d.direction, Direction::Input) && d.name == name)
        .ok_or_else(unknown)?;
    let first = match channel {
        Some(0) => return Err(unknown()),
        Some(n) if n > device.channels => {
            return Err(BackendError::input(format!(
                "{name} has {} channel(s); channel {n} does not exist",
                device.channels
            )))
        }
        Some(n) => device.first_channel + n - 1,
        None => device.first_channel,
    };
    let available = device.first_channel + device.channels - first;
    if u16::from(channels) > available {
        return Err(BackendError::input(format!(
            "a stereo track needs two channels; {input} offers {available}"
        )));
    }
    Ok(if channels == 2 {
        [first, first + 1]
    } else {
        [first, NO_INPUT]
    })
}

/// Planar input buffers allocated once for `channels × capacity` frames; what a backend hands
/// the processor as [`AudioInputs`].
pub struct PlanarInputs {
    samples: Box<[f32]>,
    channels: usize,
    capacity: usize,
    frames: usize,
}

impl PlanarInputs {
    /// Allocates silent buffers. **Not** real-time safe.
    pub fn new(channels: usize, capacity: usize) -> Self {
        PlanarInputs {
            samples: touched_zeros(channels * capacity),
            channels,
            capacity,
            frames: 0,
        }
    }

    /// Frames a period may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Frames in the current period.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Sets the current period length, clamped to the capacity. Real-time safe.
    pub fn set_frames(&mut self, frames: usize) {
        self.frames = frames.min(self.capacity);
    }

    /// Writes silence over all of channel `index` (every frame it may hold; nothing for an
    /// unknown channel). Real-time safe.
    pub fn silence(&mut self, index: usize) {
        if index >= self.channels {
            return;
        }
        let start = index * self.capacity;
        if let Some(channel) = self.samples.get_mut(start..start + self.capacity) {
            channel.fill(0.0);
        }
    }

    /// Channel `index` for writing (`frames()` long; empty for an unknown channel).
    /// Real-time safe.
    pub fn channel_mut(&mut self, index: usize) -> &mut [f32] {
        if index >= self.channels {
            return &mut [];
        }
        let start = index * self.capacity;
        self.samples
            .get_mut(start..start + self.frames)
            .unwrap_or(&mut [])
    }
}

impl AudioInputs for PlanarInputs {
    fn channel_count(&self) -> usize {
        self.channels
    }

    fn channel(&self, index: usize) -> &[f32] {
        if index >= self.channels {
            return &[];
        }
        let start = index * self.capacity;
        self.samples.get(start..start + self.frames).unwrap_or(&[])
    }
}
