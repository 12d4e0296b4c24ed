//! The JACK backend: one JACK client (`overdub`, configurable) shared by every active session.
//!
//! Each session attaches a *node* to the client: its [`Processor`], one input port per track
//! channel (`<session>.<track>.in`, or `.in_L`/`.in_R` for stereo) and two master outputs
//! (`<session>.master_out_L/R`). Ports are registered off the real-time thread and swapped into
//! the node through a pre-allocated queue; what they replace comes back on another queue and is
//! unregistered off the real-time thread. A track's `input` word is the set of JACK ports
//! connected to its input ports: channels separated by `,`, several sources of one channel by
//! `+` (`system:capture_1,system:capture_2`). Connections made with other tools are noticed and
//! reported so control can store them.
//!
//! When the server goes away the graph recovers every node from the dead client (the process
//! handler hands its nodes over when it is dropped), reports the loss, and polls for the server;
//! when it returns, the ports are registered again, the nodes re-attached and the connections
//! restored.
//!
//! Real-time code: [`GraphProcess::process`] and what it calls. Everything else runs on
//! control's threads.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use jack::{
    AsyncClient, AudioIn, AudioOut, Client, ClientOptions, ClientStatus, Control, PortFlags,
    PortId, ProcessScope,
};

use super::ports::{
    self, engine_inputs, lock, parse_input, read_or_last, track_out_names, track_out_role,
    track_port_names, try_lock, ChunkOutputs, CycleBuffers, HostedNode, NodeBuffers, NodeCommand,
    TrackBuffers,
};
use super::{
    BackendError, BackendEvent, BackendInfo, DeviceInfo, Direction, JackSettings, RunningBackend,
    TransportMode, TransportRequest,
};
use crate::engine::{Processor, TrackOutputs};
use crate::store::MASTER_OUTPUT_ROLES;

/// Sessions one client can host (nodes are slots in a fixed array on the real-time thread).
pub const MAX_NODES: usize = 16;
/// Capacity of the command and hand-back queues between control and the process callback.
const QUEUE: usize = 1024;
/// How often a lost server is looked for.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);
/// How often the graph's thread does its housekeeping (retired ports, server loss and return).
const SERVICE_INTERVAL: Duration = Duration::from_millis(20);
/// How long detaching a node may wait for the process callback to hand it back.
const DETACH_TIMEOUT: Duration = Duration::from_secs(2);
/// JACK's type name for audio ports.
const AUDIO_TYPE: &str = "32 bit float mono audio";

/// The ports of one track, moved into the process callback: inputs, and the direct outputs
/// when `jack.direct_outs` is on; with the inputs' buffers of the current period.
struct TrackPorts {
    ports: [Option<jack::Port<AudioIn>>; 2],
    outs: Option<[jack::Port<AudioOut>; 2]>,
    buffers: CycleBuffers,
}

impl TrackBuffers for TrackPorts {
    fn cycle_buffers(&self) -> &CycleBuffers {
        &self.buffers
    }
}

/// The direct outputs of a node's tracks for one chunk of a period. Real-time safe.
struct DirectOuts<'s> {
    tracks: &'s [Option<Box<TrackPorts>>],
    scope: &'s ProcessScope,
    range: Range<usize>,
}

impl TrackOutputs for DirectOuts<'_> {
    fn track_output(&mut self, slot: usize) -> Option<(&mut [f32], &mut [f32])> {
        let [left, right] = self.tracks.get(slot)?.as_ref()?.outs.as_ref()?;
        let frames = self.scope.n_frames();
        // SAFETY: both are this client's registered ports, so inside its process callback
        // `jack_port_get_buffer` gives each a buffer of its own of the period's `frames`
        // samples (checked for null), valid until the callback returns. `Port::as_mut_slice`
        // would need the port table mutably, which `run_cycle` reads the inputs' buffers from
        // meanwhile. An input linked only to one of these outputs may share its buffer:
        // `run_cycle` copies the inputs and lets go of them before the processor runs. The two
        // slices borrow `self` mutably, so no other slice from this `DirectOuts` lives
        // meanwhile.
        let (left, right) = unsafe {
            let (left, right) = (
                left.buffer(frames).cast::<f32>(),
                right.buffer(frames).cast::<f32>(),
            );
            if left.is_null() || right.is_null() {
                return None;
            }
            (
                std::slice::from_raw_parts_mut(left, frames as usize),
                std::slice::from_raw_parts_mut(right, frames as usize),
            )
        };
        Some((
            left.get_mut(self.range.clone())?,
            right.get_mut(self.range.clone())?,
        ))
    }
}

impl ChunkOutputs for DirectOuts<'_> {
    fn set_chunk(&mut self, range: Range<usize>) {
        self.range = range;
    }

    fn as_track_outputs(&mut self) -> &mut dyn TrackOutputs {
        self
    }
}

/// One session in the process callback: its processor, its ports and its buffers.
struct Node {
    processor: Processor,
    tracks: Box<[Option<Box<TrackPorts>>]>,
    /// `None` while the node waits for a server (its ports died with the last one).
    master: Option<[jack::Port<AudioOut>; 2]>,
    /// What its cycles work in.
    buffers: NodeBuffers,
    /// Whether its tracks get direct outputs (`jack.direct_outs`): without them the processor
    /// is given no per-track outputs to ask for.
    direct_outs: bool,
}

impl Node {
    /// Runs the processor over the period ([`ports::run_cycle`]) on the tracks' port buffers
    /// and the master's, and the direct outputs. **Real-time safe**.
    fn run(&mut self, scope: &ProcessScope) {
        let Node {
            processor,
            tracks,
            master,
            buffers: node_buffers,
            direct_outs,
        } = self;
        let Some([left, right]) = master else {
            return;
        };
        let frames = scope.n_frames();
        // SAFETY (the three `Port::buffer` calls below): these are this client's registered
        // ports and this is its process callback, where `jack_port_get_buffer` answers the
        // period's buffer of each (or null: `run_cycle` reads a null input as silence and
        // leaves a null master buffer out). Raw pointers, not the crate's slices, so nothing
        // holds a reference that an input sharing one of the node's own outputs would alias.
        for track in tracks.iter_mut().flatten() {
            let TrackPorts { ports, buffers, .. } = &mut **track;
            for (port, buffer) in ports.iter().zip(buffers.0.iter_mut()) {
                *buffer = port
                    .as_ref()
                    .map(|port| unsafe { port.buffer(frames).cast::<f32>().cast_const() });
            }
        }
        let master = [left, right].map(|port| unsafe { port.buffer(frames).cast::<f32>() });
        let mut direct = DirectOuts {
            tracks,
            scope,
            range: 0..0,
        };
        // SAFETY: every track's buffers were set above to the period's port buffers (JACK's
        // are aligned floats, `frames` long), and so were the master's, which no reference
        // points into during the call.
        unsafe {
            ports::run_cycle(
                processor,
                tracks,
                frames as usize,
                node_buffers,
                master,
                direct_outs.then_some(&mut direct as &mut dyn ChunkOutputs),
            )
        };
    }
}

/// Commands from control to the process callback.
type GraphCommand = NodeCommand<Node, TrackPorts>;

/// What the process callback hands back to be freed off the real-time thread.
type Retired = ports::Retired<Node, TrackPorts>;

impl HostedNode for Node {
    type Ports = TrackPorts;

    fn track_ports(&mut self, slot: usize) -> Option<&mut Option<Box<TrackPorts>>> {
        self.tracks.get_mut(slot)
    }

    fn buffers(&mut self) -> &mut NodeBuffers {
        &mut self.buffers
    }
}

/// The process handler: the nodes and the queues. Lives inside the JACK client.
struct GraphProcess {
    nodes: Box<[Option<Box<Node>>]>,
    commands: rtrb::Consumer<GraphCommand>,
    retired: rtrb::Producer<Retired>,
    /// Where the nodes go when the client is dropped (server loss or shutdown); used only in
    /// `Drop`, which runs off the real-time thread.
    rescue: mpsc::Sender<(usize, Box<Node>)>,
    /// Where the period is published.
    signals: Arc<GraphSignals>,
}

impl GraphProcess {
    /// Applies queued commands while the hand-back queue has room for what they replace.
    /// **Real-time safe**.
    fn apply_commands(&mut self) {
        ports::apply_commands(&mut self.nodes, &mut self.commands, &mut self.retired);
    }
}

impl jack::ProcessHandler for GraphProcess {
    /// Applies commands, then runs every node. **Real-time safe**.
    fn process(&mut self, _: &Client, scope: &ProcessScope) -> Control {
        self.apply_commands();
        for node in self.nodes.iter_mut().flatten() {
            node.run(scope);
        }
        Control::Continue
    }

    /// Publishes a new period (the nodes run any period length). **Real-time safe**.
    fn buffer_size(&mut self, _: &Client, frames: jack::Frames) -> Control {
        self.signals.period.store(frames, Ordering::Relaxed);
        Control::Continue
    }
}

impl Drop for GraphProcess {
    /// Hands every node to the graph so no session loses its processor with the client.
    /// Runs where the client is deactivated or closed, never on the real-time thread.
    fn drop(&mut self) {
        for (index, node) in self.nodes.iter_mut().enumerate() {
            if let Some(node) = node.take() {
                let _ = self.rescue.send((index, node));
            }
        }
        while let Ok(command) = self.commands.pop() {
            if let GraphCommand::Attach { index, node } = command {
                let _ = self.rescue.send((index, node));
            }
        }
    }
}

/// Facts the notification thread publishes for control.
struct GraphSignals {
    /// The server shut the client down.
    lost: AtomicBool,
    /// Xruns reported by the server since the client opened.
    xruns: AtomicU64,
    /// Full names of overdub's ports whose connections changed, and when, for control to
    /// re-read once they settle.
    touched: Mutex<Vec<(String, Instant)>>,
    /// Full names of other programs' ports registered since the last housekeeping.
    appeared: Mutex<Vec<String>>,
    /// Kernel thread ids of the threads JACK started for the client (notifications, process).
    threads: Mutex<Vec<i32>>,
    /// Frames per period, as the server last announced.
    period: AtomicU32,
}

impl Default for GraphSignals {
    fn default() -> Self {
        GraphSignals {
            lost: AtomicBool::new(false),
            xruns: AtomicU64::new(0),
            touched: Mutex::new(Vec::new()),
            appeared: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            period: AtomicU32::new(0),
        }
    }
}

/// The notification handler (a non-real-time JACK thread).
struct GraphNotifications {
    signals: Arc<GraphSignals>,
}

impl jack::NotificationHandler for GraphNotifications {
    /// Runs on each thread JACK starts for the client, before JACK makes the process thread
    /// real-time: notes its id, so control can check the scheduling once it runs.
    fn thread_init(&self, _: &Client) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        lock(&self.signals.threads).push(tid);
    }

    unsafe fn shutdown(&mut self, _status: ClientStatus, _reason: &str) {
        self.signals.lost.store(true, Ordering::Release);
    }

    fn xrun(&mut self, _: &Client) -> Control {
        self.signals.xruns.fetch_add(1, Ordering::Relaxed);
        Control::Continue
    }

    /// Notes which of overdub's own ports changed connections, for control to re-read.
    fn ports_connected(&mut self, client: &Client, a: PortId, b: PortId, _connected: bool) {
        let mut touched = lock(&self.signals.touched);
        let now = Instant::now();
        for port in [a, b].into_iter().filter_map(|id| client.port_by_id(id)) {
            if let (true, Ok(name)) = (client.is_mine(&port), port.name()) {
                match touched.iter_mut().find(|(n, _)| *n == name) {
                    Some(entry) => entry.1 = now,
                    None => touched.push((name, now)),
                }
            }
        }
    }

    /// Notes other programs' new ports: a track waiting for one connects to it.
    fn port_registration(&mut self, client: &Client, id: PortId, registered: bool) {
        if !registered {
            return;
        }
        if let Some(port) = client.port_by_id(id) {
            if let (false, Ok(name)) = (client.is_mine(&port), port.name()) {
                lock(&self.signals.appeared).push(name);
            }
        }
    }
}

/// What control knows about one track's ports.
#[derive(Clone, Debug)]
struct TrackMeta {
    /// The track part of its port names, unique in the node (the name's slug, made unique).
    base: String,
    channels: u8,
    /// The input word last routed (restored when the server returns).
    input: String,
    /// Its ports' connections changed: the session re-reads them at its next poll.
    dirty: bool,
    /// Full names of the input ports (one per channel), empty while the server is gone.
    ports: Vec<String>,
}

/// What control knows about one attached session.
#[derive(Debug)]
struct NodeMeta {
    prefix: String,
    max_tracks: usize,
    /// Frames of the chunks its buffers take (grown with the server's period).
    chunk: usize,
    tracks: BTreeMap<usize, TrackMeta>,
    /// Server losses and returns this session has not polled yet.
    lost_pending: bool,
    restored_pending: bool,
    /// The node was rescued from a lost client and waits to be attached to the next one.
    awaiting_attach: bool,
    /// Xruns already added to the session's counters.
    xruns_seen: u64,
    /// The server transport as this session last saw it (rolling, frame), when following.
    transport_seen: Option<(bool, u64)>,
    /// Where the outputs are patched: role (`master_out_L`, `track2.out_R`) → peers (`+`).
    outputs: BTreeMap<String, String>,
    /// The outputs' connections changed: the session re-reads them at its next poll.
    outputs_dirty: bool,
}

impl NodeMeta {
    /// The node's outputs: (role, full port name) for the master and, with direct outs, for
    /// every track.
    fn output_ports(&self, client_name: &str, direct_outs: bool) -> Vec<(String, String)> {
        let mut ports: Vec<(String, String)> = MASTER_OUTPUT_ROLES
            .iter()
            .zip(["L", "R"])
            .map(|(role, side)| {
                (
                    role.to_string(),
                    format!("{client_name}:{}.master_out_{side}", self.prefix),
                )
            })
            .collect();
        if direct_outs {
            for (slot, track) in &self.tracks {
                for (side, name) in ["L", "R"]
                    .iter()
                    .zip(track_out_names(&self.prefix, &track.base))
                {
                    ports.push((track_out_role(*slot, side), format!("{client_name}:{name}")));
                }
            }
        }
        ports
    }
}

/// The live client and its queues.
struct Connection {
    client: AsyncClient<GraphNotifications, GraphProcess>,
    commands: rtrb::Producer<GraphCommand>,
    retired: rtrb::Consumer<Retired>,
    signals: Arc<GraphSignals>,
}

/// Mutable state of the graph, behind one lock (control threads only).
struct GraphState {
    connection: Option<Connection>,
    rescue_tx: mpsc::Sender<(usize, Box<Node>)>,
    rescue_rx: mpsc::Receiver<(usize, Box<Node>)>,
    /// Nodes out of the process callback: detached on request, or rescued from a lost client.
    parked: Vec<Option<Box<Node>>>,
    nodes: Vec<Option<NodeMeta>>,
    last_attempt: Instant,
    /// Nodes detached after their session stopped waiting for them: dropped when they return.
    abandoned: Vec<usize>,
}

/// The shared JACK client. Cheap to share behind an `Arc`; every method runs off the
/// real-time thread.
pub struct JackGraph {
    client_name: String,
    transport: TransportMode,
    direct_outs: bool,
    sample_rate: u32,
    state: Mutex<GraphState>,
    /// The period [`JackGraph::period`] last read, answered while the state is held.
    last_period: AtomicU32,
}

fn jack_error(what: &str, e: jack::Error) -> BackendError {
    BackendError::failed(format!("{what}: {e}"))
}

impl JackGraph {
    /// Opens and activates the client `client_name` on the server named by
    /// `$JACK_DEFAULT_SERVER` (or the default one), and starts the graph's housekeeping thread
    /// (`overdub-jack`, [`SERVICE_INTERVAL`]; it ends with the graph). Fails quickly when no
    /// server answers; never starts a server.
    pub fn open(settings: &JackSettings) -> Result<Arc<JackGraph>, BackendError> {
        let (rescue_tx, rescue_rx) = mpsc::channel();
        let connection = connect(&settings.client_name, &rescue_tx)?;
        let sample_rate = connection.client.as_client().sample_rate();
        let client_name = connection.client.as_client().name().to_string();
        let signals = Arc::clone(&connection.signals);
        // Checked off the start-up path: the answer takes up to half a second.
        let _ = std::thread::Builder::new()
            .name("overdub-jack-rt".into())
            .spawn(move || log_scheduling(&signals));
        let graph = Arc::new(JackGraph {
            client_name,
            transport: settings.transport,
            direct_outs: settings.direct_outs,
            sample_rate,
            last_period: AtomicU32::new(connection.signals.period.load(Ordering::Relaxed)),
            state: Mutex::new(GraphState {
                connection: Some(connection),
                rescue_tx,
                rescue_rx,
                parked: (0..MAX_NODES).map(|_| None).collect(),
                nodes: (0..MAX_NODES).map(|_| None).collect(),
                last_attempt: Instant::now(),
                abandoned: Vec::new(),
            }),
        });
        let weak = Arc::downgrade(&graph);
        std::thread::Builder::new()
            .name("overdub-jack".into())
            .spawn(move || {
                while let Some(graph) = weak.upgrade() {
                    graph.service(&mut lock(&graph.state));
                    drop(graph);
                    std::thread::sleep(SERVICE_INTERVAL);
                }
            })
            .map_err(|e| BackendError::failed(format!("cannot start the JACK thread: {e}")))?;
        Ok(graph)
    }

    /// The client's name as JACK registered it.
    pub fn client_name(&self) -> &str {
        &self.client_name
    }

    /// The server's sample rate when the client opened (sessions are fixed to it).
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Frames per period now (0 while the server is gone). Never waits (every HTTP GET of a
    /// session asks): while the state is held (a reconnect, port work) it answers the period
    /// it last read.
    pub fn period(&self) -> u32 {
        read_or_last(&self.state, &self.last_period, |state| {
            state
                .connection
                .as_ref()
                .map_or(0, |c| c.signals.period.load(Ordering::Relaxed))
        })
    }

    /// Rate, period and the latency of the physical ports, as the server reports them now.
    pub fn info(&self) -> BackendInfo {
        let state = lock(&self.state);
        let (period, input_latency, output_latency) = match &state.connection {
            Some(c) => {
                let client = c.client.as_client();
                (
                    c.signals.period.load(Ordering::Relaxed),
                    physical_latency(client, PortFlags::IS_OUTPUT),
                    physical_latency(client, PortFlags::IS_INPUT),
                )
            }
            None => (0, 0, 0),
        };
        BackendInfo {
            name: "jack",
            sample_rate: self.sample_rate,
            period,
            input_latency_frames: input_latency,
            output_latency_frames: output_latency,
        }
    }

    /// Whether the server is there.
    pub fn is_running(&self) -> bool {
        lock(&self.state)
            .connection
            .as_ref()
            .is_some_and(|c| !c.signals.lost.load(Ordering::Acquire))
    }

    /// Audio ports of other clients: their outputs are inputs for tracks (one mono device per
    /// port, named by its full name), their inputs are where overdub's outputs can go.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        let state = lock(&self.state);
        let Some(connection) = &state.connection else {
            return Vec::new();
        };
        let client = connection.client.as_client();
        let own = format!("{}:", self.client_name);
        let mut devices = Vec::new();
        for (flags, direction) in [
            (PortFlags::IS_OUTPUT, Direction::Input),
            (PortFlags::IS_INPUT, Direction::Output),
        ] {
            for (n, name) in client
                .ports(None, Some(AUDIO_TYPE), flags)
                .into_iter()
                .filter(|name| !name.starts_with(&own))
                .enumerate()
            {
                devices.push(DeviceInfo {
                    name,
                    channels: 1,
                    first_channel: u16::try_from(n).unwrap_or(u16::MAX),
                    direction,
                });
            }
        }
        devices
    }

    /// The default input of track `index` (1-based): the physical capture port(s) of the same
    /// number, or `none` when there are not enough.
    pub fn default_input(&self, index: u32, channels: u8) -> String {
        let state = lock(&self.state);
        let Some(connection) = &state.connection else {
            return "none".into();
        };
        let physical = connection.client.as_client().ports(
            None,
            Some(AUDIO_TYPE),
            PortFlags::IS_OUTPUT | PortFlags::IS_PHYSICAL,
        );
        let first = (index as usize).saturating_sub(1) * usize::from(channels);
        match physical.get(first..first + usize::from(channels)) {
            Some(ports) => ports.join(","),
            None => "none".into(),
        }
    }

    /// Checks an input word for a track of `channels` channels against the ports that exist
    /// now: `none`, or one group per channel (`,`), each one or more output ports (`+`).
    pub fn check_input(&self, input: &str, channels: u8) -> Result<(), BackendError> {
        let groups = parse_input(input, channels)?;
        let state = lock(&self.state);
        let Some(connection) = &state.connection else {
            return Err(BackendError::failed(
                "the JACK server is gone; inputs can be set when it returns",
            ));
        };
        let client = connection.client.as_client();
        for port in groups.iter().flatten() {
            let Some(found) = client.port_by_name(port) else {
                return Err(BackendError::input(format!(
                    "no JACK port {port:?} (see `overdub devices` or `jack_lsp`)"
                )));
            };
            if !found.flags().contains(PortFlags::IS_OUTPUT)
                || found.port_type().ok().as_deref() != Some(AUDIO_TYPE)
            {
                return Err(BackendError::input(format!(
                    "{port:?} is not an audio output port, so it cannot feed a track"
                )));
            }
        }
        Ok(())
    }

    /// Attaches a session's processor as a node: registers its master outputs (the node's
    /// tracks are added with [`JackSession::route_track`]). Fails when the server is gone, the
    /// rate differs or every node slot is taken.
    pub fn attach(
        self: &Arc<Self>,
        session_name: &str,
        sample_rate: u32,
        max_tracks: usize,
        processor: Processor,
    ) -> Result<Box<dyn RunningBackend>, BackendError> {
        if sample_rate != self.sample_rate {
            return Err(BackendError::failed(format!(
                "the session runs at {sample_rate} Hz but the JACK server at {} Hz",
                self.sample_rate
            )));
        }
        let mut state = lock(&self.state);
        let Some(index) = (0..MAX_NODES).find(|&i| {
            state.nodes[i].is_none() && state.parked[i].is_none() && !state.abandoned.contains(&i)
        }) else {
            return Err(BackendError::failed(format!(
                "one JACK client hosts at most {MAX_NODES} sessions"
            )));
        };
        let base = crate::control::validate::slug(session_name);
        let mut prefix = base.clone();
        let mut n = 2;
        while state
            .nodes
            .iter()
            .flatten()
            .any(|meta| meta.prefix == prefix)
        {
            prefix = format!("{base}-{n}");
            n += 1;
        }
        let connection = state
            .connection
            .as_mut()
            .ok_or_else(|| BackendError::failed("the JACK server is gone"))?;
        let master = Some(register_master(connection.client.as_client(), &prefix)?);
        let buffers = NodeBuffers::new(
            max_tracks,
            connection.signals.period.load(Ordering::Relaxed) as usize,
        );
        let chunk = buffers.chunk();
        let node = Box::new(Node {
            processor,
            tracks: (0..max_tracks).map(|_| None).collect(),
            master,
            buffers,
            direct_outs: self.direct_outs,
        });
        if let Err(rtrb::PushError::Full(command)) = connection
            .commands
            .push(GraphCommand::Attach { index, node })
        {
            if let GraphCommand::Attach { node, .. } = command {
                unregister_node(connection.client.as_client(), *node);
            }
            return Err(BackendError::failed("the JACK command queue is full"));
        }
        let xruns_seen = connection.signals.xruns.load(Ordering::Relaxed);
        let transport_seen = transport_position(connection.client.as_client());
        state.nodes[index] = Some(NodeMeta {
            prefix,
            max_tracks,
            chunk,
            tracks: BTreeMap::new(),
            lost_pending: false,
            restored_pending: false,
            awaiting_attach: false,
            xruns_seen,
            transport_seen,
            outputs: BTreeMap::new(),
            outputs_dirty: false,
        });
        Ok(Box::new(JackSession {
            graph: Arc::clone(self),
            index,
            stopped: false,
        }))
    }

    /// Housekeeping, run every [`SERVICE_INTERVAL`] by the graph's own thread (never on the
    /// control runtime: reconnecting blocks on the server): unregisters retired ports, grows
    /// the nodes' buffers to the period, notices a lost server and parks the rescued nodes,
    /// looks for the server when it is gone, and attaches the parked nodes to it when it is
    /// back.
    fn service(&self, state: &mut GraphState) {
        collect_retired(state);
        mark_touched(state);
        connect_appeared(state, self.direct_outs);
        let lost = state
            .connection
            .as_ref()
            .is_some_and(|c| c.signals.lost.load(Ordering::Acquire));
        if lost {
            self.park_all(state);
            return;
        }
        grow_buffers(state);
        if state.connection.is_none() {
            if state.last_attempt.elapsed() < RECONNECT_INTERVAL {
                return;
            }
            state.last_attempt = Instant::now();
            self.reconnect(state);
        }
        if state.connection.is_some() {
            for index in 0..MAX_NODES {
                let waiting = state.nodes[index]
                    .as_ref()
                    .is_some_and(|meta| meta.awaiting_attach);
                if waiting && state.parked[index].is_some() {
                    self.reattach(state, index);
                }
            }
        }
    }

    /// The server went away: takes the nodes back from the dead client, drops the ports they
    /// held (they belong to that client) and the nodes no session waits for any more.
    fn park_all(&self, state: &mut GraphState) {
        tracing::error!("the JACK server went away; closing takes and waiting for it");
        let connection = state.connection.take();
        // Deactivating a dead client may fail; either way the process handler is dropped here
        // and hands its nodes over through the rescue channel.
        drop(connection.map(|c| c.client.deactivate()));
        while let Ok((index, mut node)) = state.rescue_rx.try_recv() {
            if let Some(at) = state.abandoned.iter().position(|&i| i == index) {
                state.abandoned.remove(at);
                continue;
            }
            for ports in node.tracks.iter_mut() {
                *ports = None;
            }
            node.master = None;
            if let Some(cell) = state.parked.get_mut(index) {
                *cell = Some(node);
            }
        }
        for meta in state.nodes.iter_mut().flatten() {
            meta.lost_pending = true;
            meta.restored_pending = false;
            meta.awaiting_attach = true;
            for track in meta.tracks.values_mut() {
                track.ports.clear();
            }
        }
        state.last_attempt = Instant::now();
    }

    /// Opens a new client when a server at the sessions' rate answers.
    fn reconnect(&self, state: &mut GraphState) {
        let Ok(connection) = connect(&self.client_name, &state.rescue_tx) else {
            return;
        };
        let rate = connection.client.as_client().sample_rate();
        if rate != self.sample_rate {
            tracing::error!(
                "the JACK server is back at {rate} Hz, but the sessions run at {} Hz; waiting for a server at that rate",
                self.sample_rate
            );
            return;
        }
        let client_name = connection.client.as_client().name().to_string();
        tracing::info!(client = %client_name, "the JACK server is back; restoring ports and connections");
        if client_name != self.client_name {
            tracing::warn!(
                "JACK named the client {client_name:?} this time (another client holds {:?})",
                self.client_name
            );
        }
        state.connection = Some(connection);
    }

    /// Registers a parked node's ports on the live client, attaches it and restores its
    /// connections; on failure the node stays parked and the next service tries again.
    fn reattach(&self, state: &mut GraphState, index: usize) {
        let (Some(connection), Some(meta), Some(mut node)) = (
            state.connection.as_mut(),
            state.nodes[index].as_mut(),
            state.parked[index].take(),
        ) else {
            return;
        };
        // A SetBuffers the lost client never ran: the meta follows the node's own buffers.
        meta.chunk = node.buffers.chunk();
        let client = connection.client.as_client();
        match register_master(client, &meta.prefix) {
            Ok(master) => node.master = Some(master),
            Err(e) => {
                tracing::error!("{e}");
                state.parked[index] = Some(node);
                return;
            }
        }
        for (&slot, track) in meta.tracks.iter_mut() {
            match register_track(
                client,
                &meta.prefix,
                &track.base,
                track.channels,
                self.direct_outs,
            ) {
                Ok(ports) => {
                    track.ports = port_names(&ports);
                    if let Some(cell) = node.tracks.get_mut(slot) {
                        *cell = Some(Box::new(ports));
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        if let Err(rtrb::PushError::Full(GraphCommand::Attach { mut node, .. })) = connection
            .commands
            .push(GraphCommand::Attach { index, node })
        {
            // Give the ports back and try again at the next service.
            unregister_ports(client, &mut node);
            state.parked[index] = Some(node);
            return;
        }
        for track in meta.tracks.values() {
            if let Err(e) = connect_input(client, &track.ports, &track.input) {
                tracing::warn!("restoring the input of {:?}: {e}", track.base);
            }
        }
        connect_outputs(client, meta, self.direct_outs);
        meta.awaiting_attach = false;
        meta.lost_pending = false;
        meta.restored_pending = true;
        meta.xruns_seen = connection.signals.xruns.load(Ordering::Relaxed);
        meta.transport_seen = None;
    }
}

/// Logs whether JACK runs overdub's process thread in real time: whether any thread JACK
/// started for the client runs `SCHED_FIFO`/`SCHED_RR` after the first cycles (JACK raises the
/// process thread's priority after `thread_init`; this waits at most 0.5 s).
fn log_scheduling(signals: &GraphSignals) {
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut realtime = None;
    while realtime.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        realtime = lock(&signals.threads)
            .iter()
            .find_map(|&tid| ports::realtime_priority(tid));
    }
    match realtime {
        Some(priority) => tracing::info!(
            priority,
            "JACK runs the audio thread with real-time scheduling"
        ),
        None => tracing::warn!(
            "JACK runs the audio thread WITHOUT real-time scheduling (jackd was started without \
             -R or may not use it: check its rtprio limit); expect xruns under load"
        ),
    }
}

/// The server transport now: (rolling, frame). `None` if it cannot be read.
fn transport_position(client: &Client) -> Option<(bool, u64)> {
    let now = client.transport().query().ok()?;
    Some((
        now.state == jack::TransportState::Rolling,
        u64::from(now.pos.frame()),
    ))
}

/// What changed in the server transport between `seen` and `now`, for a follower.
fn transport_change(seen: Option<(bool, u64)>, now: (bool, u64)) -> Option<BackendEvent> {
    let (was_rolling, was_at) = seen.unwrap_or((false, now.1));
    match (was_rolling, now.0) {
        (false, true) => Some(BackendEvent::TransportStarted),
        (true, false) => Some(BackendEvent::TransportStopped),
        (false, false) if now.1 != was_at => Some(BackendEvent::TransportLocated { frame: now.1 }),
        _ => None,
    }
}

/// How long a changed connection settles before it is read: a program that quits disconnects
/// its ports a moment before they disappear, and a source that disappeared is kept (see
/// [`read_input`]).
const TOUCH_SETTLE: Duration = Duration::from_millis(100);

/// Marks the tracks whose ports' connections changed (and have settled) for their sessions
/// to re-read.
fn mark_touched(state: &mut GraphState) {
    let Some(connection) = state.connection.as_ref() else {
        return;
    };
    let settled: Vec<String> = {
        let mut touched = lock(&connection.signals.touched);
        let (ready, waiting): (Vec<_>, Vec<_>) = touched
            .drain(..)
            .partition(|(_, at)| at.elapsed() >= TOUCH_SETTLE);
        *touched = waiting;
        ready.into_iter().map(|(name, _)| name).collect()
    };
    if settled.is_empty() {
        return;
    }
    let client_name = connection.client.as_client().name().to_string();
    for meta in state.nodes.iter_mut().flatten() {
        if meta
            .output_ports(&client_name, true)
            .iter()
            .any(|(_, port)| settled.contains(port))
        {
            meta.outputs_dirty = true;
        }
        for track in meta.tracks.values_mut() {
            if track.ports.iter().any(|p| settled.contains(p)) {
                track.dirty = true;
            }
        }
    }
}

/// Connects a node's outputs to their saved peers that exist and are not connected yet.
fn connect_outputs(client: &Client, meta: &NodeMeta, direct_outs: bool) {
    for (role, port) in meta.output_ports(client.name(), direct_outs) {
        let Some(peers) = meta.outputs.get(&role) else {
            continue;
        };
        let current = client
            .port_by_name(&port)
            .map(|p| p.get_connections())
            .unwrap_or_default();
        for peer in peers
            .split('+')
            .filter(|p| !p.is_empty() && !current.iter().any(|c| c == p))
        {
            if client.port_by_name(peer).is_some() {
                if let Err(e) = client.connect_ports_by_name(&port, peer) {
                    tracing::warn!("cannot connect {port} to {peer}: {e}");
                }
            }
        }
    }
}

/// The peers word of one output as JACK has it connected now, keeping saved peers whose ports
/// do not exist now (see [`read_input`]).
fn read_output(client: &Client, port: &str, saved: &str) -> String {
    let mut peers = client
        .port_by_name(port)
        .map(|p| p.get_connections())
        .unwrap_or_default();
    for missing in saved.split('+').filter(|p| !p.is_empty()) {
        if client.port_by_name(missing).is_none() && !peers.iter().any(|p| p == missing) {
            peers.push(missing.to_string());
        }
    }
    peers.sort();
    peers.join("+")
}

/// Connects the tracks and outputs that wait for a port that has just appeared (a program started again).
fn connect_appeared(state: &mut GraphState, direct_outs: bool) {
    let Some(connection) = state.connection.as_ref() else {
        return;
    };
    let appeared: Vec<String> = std::mem::take(&mut *lock(&connection.signals.appeared));
    if appeared.is_empty() {
        return;
    }
    let client = connection.client.as_client();
    for meta in state.nodes.iter().flatten() {
        let waits = meta
            .outputs
            .values()
            .flat_map(|peers| peers.split('+'))
            .any(|peer| appeared.iter().any(|a| a == peer));
        if waits {
            connect_outputs(client, meta, direct_outs);
        }
    }
    for track in state
        .nodes
        .iter()
        .flatten()
        .flat_map(|meta| meta.tracks.values())
    {
        let wanted = parse_input(&track.input, u8::try_from(track.ports.len()).unwrap_or(2))
            .unwrap_or_default();
        if wanted
            .iter()
            .flatten()
            .any(|source| appeared.contains(source))
        {
            if let Err(e) = connect_input(client, &track.ports, &track.input) {
                tracing::warn!("reconnecting {:?}: {e}", track.base);
            }
        }
    }
}

/// Gives every node in the process callback buffers for the server's period when it outgrew
/// theirs ([`ports::grow_node_buffers`]), so each cycle's inputs are copied at once again.
fn grow_buffers(state: &mut GraphState) {
    let Some(connection) = state.connection.as_mut() else {
        return;
    };
    let period = connection.signals.period.load(Ordering::Relaxed) as usize;
    for (index, meta) in state.nodes.iter_mut().enumerate() {
        let Some(meta) = meta.as_mut() else { continue };
        if !meta.awaiting_attach && state.parked[index].is_none() {
            ports::grow_node_buffers(
                &mut connection.commands,
                index,
                meta.max_tracks,
                &mut meta.chunk,
                period,
            );
        }
    }
}

/// Takes what the process callback handed back: unregisters retired ports, parks detached
/// nodes, and frees the nodes no session waits for.
fn collect_retired(state: &mut GraphState) {
    let Some(connection) = state.connection.as_mut() else {
        return;
    };
    while let Ok(retired) = connection.retired.pop() {
        match retired {
            Retired::Track(ports) => unregister_track(connection.client.as_client(), *ports),
            Retired::Buffers(buffers) => drop(buffers),
            Retired::Node { index, node } => {
                if let Some(at) = state.abandoned.iter().position(|&i| i == index) {
                    state.abandoned.remove(at);
                    unregister_node(connection.client.as_client(), *node);
                } else if let Some(cell) = state.parked.get_mut(index) {
                    *cell = Some(node);
                }
            }
        }
    }
}

/// Opens and activates a client with an empty node table.
fn connect(
    client_name: &str,
    rescue: &mpsc::Sender<(usize, Box<Node>)>,
) -> Result<Connection, BackendError> {
    let (client, _status) = Client::new(client_name, ClientOptions::NO_START_SERVER)
        .map_err(|e| jack_error("no JACK server answers", e))?;
    let (command_tx, command_rx) = rtrb::RingBuffer::new(QUEUE);
    let (retired_tx, retired_rx) = crate::engine::touched_ring(QUEUE);
    let signals = Arc::new(GraphSignals::default());
    signals
        .period
        .store(client.buffer_size(), Ordering::Relaxed);
    let process = GraphProcess {
        nodes: (0..MAX_NODES).map(|_| None).collect(),
        commands: command_rx,
        retired: retired_tx,
        rescue: rescue.clone(),
        signals: Arc::clone(&signals),
    };
    let notifications = GraphNotifications {
        signals: Arc::clone(&signals),
    };
    let client = client
        .activate_async(notifications, process)
        .map_err(|e| jack_error("cannot activate the JACK client", e))?;
    Ok(Connection {
        client,
        commands: command_tx,
        retired: retired_rx,
        signals,
    })
}

/// Largest latency of the physical ports with `flags` (capture: outputs; playback: inputs).
fn physical_latency(client: &Client, flags: PortFlags) -> u32 {
    let mode = if flags.contains(PortFlags::IS_OUTPUT) {
        jack::LatencyType::Capture
    } else {
        jack::LatencyType::Playback
    };
    client
        .ports(None, Some(AUDIO_TYPE), flags | PortFlags::IS_PHYSICAL)
        .iter()
        .filter_map(|name| client.port_by_name(name))
        .map(|port| port.get_latency_range(mode).1)
        .max()
        .unwrap_or(0)
}

fn register_master(
    client: &Client,
    prefix: &str,
) -> Result<[jack::Port<AudioOut>; 2], BackendError> {
    let left = client
        .register_port(&format!("{prefix}.master_out_L"), AudioOut::default())
        .map_err(|e| jack_error("cannot register the master outputs", e))?;
    let right = match client.register_port(&format!("{prefix}.master_out_R"), AudioOut::default()) {
        Ok(port) => port,
        Err(e) => {
            let _ = client.unregister_port(left);
            return Err(jack_error("cannot register the master outputs", e));
        }
    };
    Ok([left, right])
}

/// The track part of a track's port names, unique among the node's other tracks.
fn unique_base(meta: &NodeMeta, slot: usize, name: &str) -> String {
    ports::unique_base(slot, name, |base| {
        meta.tracks
            .iter()
            .any(|(&other, track)| other != slot && track.base == base)
    })
}

fn register_track(
    client: &Client,
    prefix: &str,
    track: &str,
    channels: u8,
    direct_outs: bool,
) -> Result<TrackPorts, BackendError> {
    let mut ports = TrackPorts {
        ports: [None, None],
        outs: None,
        buffers: CycleBuffers::default(),
    };
    if direct_outs {
        let [left, right] = track_out_names(prefix, track);
        let left = client
            .register_port(&left, AudioOut::default())
            .map_err(|e| jack_error(&format!("cannot register port {left:?}"), e))?;
        match client.register_port(&right, AudioOut::default()) {
            Ok(right) => ports.outs = Some([left, right]),
            Err(e) => {
                let _ = client.unregister_port(left);
                return Err(jack_error(&format!("cannot register port {right:?}"), e));
            }
        }
    }
    for (channel, name) in track_port_names(prefix, track, channels).iter().enumerate() {
        match client.register_port(name, AudioIn::default()) {
            Ok(port) => ports.ports[channel] = Some(port),
            Err(e) => {
                unregister_track(client, ports);
                return Err(jack_error(&format!("cannot register port {name:?}"), e));
            }
        }
    }
    Ok(ports)
}

fn port_names(ports: &TrackPorts) -> Vec<String> {
    ports
        .ports
        .iter()
        .flatten()
        .filter_map(|port| port.name().ok())
        .collect()
}

fn unregister_track(client: &Client, ports: TrackPorts) {
    for port in ports.ports.into_iter().flatten() {
        let _ = client.unregister_port(port);
    }
    for port in ports.outs.into_iter().flatten() {
        let _ = client.unregister_port(port);
    }
}

/// Unregisters every port of a node that is out of the process callback, leaving it portless.
fn unregister_ports(client: &Client, node: &mut Node) {
    for ports in node.tracks.iter_mut() {
        if let Some(ports) = ports.take() {
            unregister_track(client, *ports);
        }
    }
    for port in node.master.take().into_iter().flatten() {
        let _ = client.unregister_port(port);
    }
}

fn unregister_node(client: &Client, mut node: Node) {
    unregister_ports(client, &mut node);
}

/// The input word of a track's ports as JACK has them connected now.
///
/// Sources of the `stored` word whose ports do not exist now (their program quit, or has not
/// started yet) stay in it: a disconnection because a port went away is not the user's, and
/// the connection is made again when the port returns.
fn read_input(client: &Client, ports: &[String], stored: &str) -> String {
    let stored = parse_input(stored, u8::try_from(ports.len()).unwrap_or(2)).unwrap_or_default();
    let groups: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(channel, name)| {
            let mut sources = client
                .port_by_name(name)
                .map(|port| port.get_connections())
                .unwrap_or_default();
            for missing in stored.get(channel).into_iter().flatten() {
                if client.port_by_name(missing).is_none() && !sources.contains(missing) {
                    sources.push(missing.clone());
                }
            }
            sources.sort();
            sources.join("+")
        })
        .collect();
    if groups.iter().all(String::is_empty) {
        "none".into()
    } else {
        groups.join(",")
    }
}

/// Makes the connections of `ports` those of `input`: connects every source that exists (and
/// is not connected yet) and disconnects what the word does not name. Sources that do not exist
/// now are reported in the error after everything else is done.
fn connect_input(client: &Client, ports: &[String], input: &str) -> Result<(), BackendError> {
    let groups = parse_input(input, u8::try_from(ports.len()).unwrap_or(2))?;
    let mut failed = Vec::new();
    for (port, sources) in ports.iter().zip(&groups) {
        let current = client
            .port_by_name(port)
            .map(|p| p.get_connections())
            .unwrap_or_default();
        for old in current.iter().filter(|old| !sources.contains(old)) {
            let _ = client.disconnect_ports_by_name(old, port);
        }
        for source in sources.iter().filter(|s| !current.contains(s)) {
            if let Err(e) = client.connect_ports_by_name(source, port) {
                failed.push(format!("{source} → {port} ({e})"));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(BackendError::failed(format!(
            "cannot connect {}",
            failed.join(", ")
        )))
    }
}

/// One session's handle on the shared graph.
struct JackSession {
    graph: Arc<JackGraph>,
    index: usize,
    /// `stop` ran: nothing left to release.
    stopped: bool,
}

impl Drop for JackSession {
    /// A session dropped without `stop` (its start failed half-way) still gives its node
    /// back: detached from the client without waiting, freed when it returns.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let index = self.index;
        let mut state = lock(&self.graph.state);
        state.nodes[index] = None;
        if state.parked[index].take().is_none() {
            if let Some(connection) = state.connection.as_mut() {
                let _ = connection.commands.push(GraphCommand::Detach { index });
                state.abandoned.push(index);
            }
        }
    }
}

impl JackSession {
    fn with_meta<T>(&self, op: impl FnOnce(&JackGraph, &mut GraphState, usize) -> T) -> T {
        let mut state = lock(&self.graph.state);
        op(&self.graph, &mut state, self.index)
    }
}

impl RunningBackend for JackSession {
    fn info(&self) -> BackendInfo {
        self.graph.info()
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.graph.devices()
    }

    fn check_input(&self, input: &str, channels: u8) -> Result<(), BackendError> {
        self.graph.check_input(input, channels)
    }

    fn route_track(
        &mut self,
        slot: u16,
        name: &str,
        channels: u8,
        input: &str,
    ) -> Result<[u16; 2], BackendError> {
        let slot = usize::from(slot);
        self.with_meta(|_, state, index| {
            let prefix = match state.nodes[index].as_ref() {
                Some(meta) if slot < meta.max_tracks => meta.prefix.clone(),
                _ => return Err(BackendError::failed(format!("no track slot {slot}"))),
            };
            let existing = state.nodes[index]
                .as_ref()
                .and_then(|meta| meta.tracks.get(&slot))
                .cloned();
            let mut ports_names = existing
                .as_ref()
                .map(|t| t.ports.clone())
                .unwrap_or_default();
            let base = match (&existing, state.nodes[index].as_ref()) {
                (Some(track), _) => track.base.clone(),
                (None, Some(meta)) => unique_base(meta, slot, name),
                (None, None) => crate::control::validate::slug(name),
            };
            if let Some(connection) = state.connection.as_mut() {
                let client = connection.client.as_client();
                let fresh = existing
                    .as_ref()
                    .is_none_or(|t| t.channels != channels || t.ports.is_empty());
                if fresh {
                    let ports =
                        register_track(client, &prefix, &base, channels, self.graph.direct_outs)?;
                    ports_names = port_names(&ports);
                    if let Err(rtrb::PushError::Full(GraphCommand::SetTrack { ports, .. })) =
                        connection.commands.push(GraphCommand::SetTrack {
                            index,
                            slot,
                            ports: Some(Box::new(ports)),
                        })
                    {
                        if let Some(ports) = ports {
                            unregister_track(client, *ports);
                        }
                        return Err(BackendError::failed("the JACK command queue is full"));
                    }
                }
                // Control checked the word; a source that has gone since (a synth not started
                // yet, when a session reopens) keeps the word, so a later restore finds it.
                if let Err(e) = connect_input(client, &ports_names, input) {
                    tracing::warn!("track {:?}: {e}", name);
                }
            }
            if let Some(meta) = state.nodes[index].as_mut() {
                meta.tracks.insert(
                    slot,
                    TrackMeta {
                        base,
                        channels,
                        input: input.to_string(),
                        dirty: false,
                        ports: ports_names,
                    },
                );
            }
            Ok(engine_inputs(slot, channels))
        })
    }

    fn rename_track(&mut self, slot: u16, name: &str) -> Result<(), BackendError> {
        let slot = usize::from(slot);
        self.with_meta(|_, state, index| {
            let Some(meta) = state.nodes[index].as_mut() else {
                return Ok(());
            };
            let prefix = meta.prefix.clone();
            let base = unique_base(meta, slot, name);
            let Some(track) = meta.tracks.get_mut(&slot) else {
                return Ok(());
            };
            let old_base = track.base.clone();
            let new_names = track_port_names(&prefix, &base, track.channels);
            if let Some(connection) = state.connection.as_ref() {
                let client = connection.client.as_client();
                let mut renamed = Vec::new();
                for (full, short) in track.ports.iter().zip(&new_names) {
                    let mut port = client
                        .port_by_name(full)
                        .ok_or_else(|| BackendError::failed(format!("port {full:?} is gone")))?;
                    port.set_name(short)
                        .map_err(|e| jack_error(&format!("cannot rename {full:?}"), e))?;
                    renamed.push(port.name().unwrap_or_else(|_| full.clone()));
                }
                track.ports = renamed;
                if self.graph.direct_outs {
                    let own = format!("{}:", client.name());
                    let old_names = track_out_names(&prefix, &old_base);
                    for (old, new) in old_names.iter().zip(track_out_names(&prefix, &base)) {
                        if let Some(mut port) = client.port_by_name(&format!("{own}{old}")) {
                            port.set_name(&new)
                                .map_err(|e| jack_error(&format!("cannot rename {old:?}"), e))?;
                        }
                    }
                }
            }
            track.base = base;
            Ok(())
        })
    }

    fn remove_track(&mut self, slot: u16) {
        let slot = usize::from(slot);
        self.with_meta(|_, state, index| {
            if let Some(meta) = state.nodes[index].as_mut() {
                meta.tracks.remove(&slot);
                ports::forget_track_outputs(&mut meta.outputs, slot);
            }
            if let Some(node) = state.parked[index].as_mut() {
                if let Some(cell) = node.tracks.get_mut(slot) {
                    *cell = None;
                }
            }
            if let Some(connection) = state.connection.as_mut() {
                let _ = connection.commands.push(GraphCommand::SetTrack {
                    index,
                    slot,
                    ports: None,
                });
            }
        });
    }

    /// Never waits: while the graph's state is held elsewhere (the housekeeping thread looking
    /// for a lost server or attaching nodes, another session's port work) this poll reports
    /// nothing, and what changed stays marked for the next one.
    fn poll(&mut self, xruns: &dyn Fn(u64)) -> Vec<BackendEvent> {
        let Some(mut guard) = try_lock(&self.graph.state) else {
            return Vec::new();
        };
        let state = &mut *guard;
        let graph = &*self.graph;
        let index = self.index;
        let mut events = Vec::new();
        let total_xruns = state
            .connection
            .as_ref()
            .map(|c| c.signals.xruns.load(Ordering::Relaxed));
        let Some(meta) = state.nodes[index].as_mut() else {
            return events;
        };
        if let Some(total) = total_xruns {
            if total > meta.xruns_seen {
                xruns(total - meta.xruns_seen);
                meta.xruns_seen = total;
            }
        }
        if std::mem::take(&mut meta.lost_pending) {
            events.push(BackendEvent::Lost);
        }
        if std::mem::take(&mut meta.restored_pending) {
            events.push(BackendEvent::Restored);
            meta.transport_seen = None;
        }
        if graph.transport == TransportMode::Follow {
            if let Some(now) = state
                .connection
                .as_ref()
                .and_then(|c| transport_position(c.client.as_client()))
            {
                if meta.transport_seen.is_some() {
                    events.extend(transport_change(meta.transport_seen, now));
                }
                meta.transport_seen = Some(now);
            }
        }
        if let Some(connection) = state.connection.as_ref() {
            let client = connection.client.as_client();
            if std::mem::take(&mut meta.outputs_dirty) {
                let ports = meta.output_ports(client.name(), graph.direct_outs);
                for (role, port) in &ports {
                    let saved = meta.outputs.get(role).cloned().unwrap_or_default();
                    let peers = read_output(client, port, &saved);
                    if peers != saved {
                        if peers.is_empty() {
                            meta.outputs.remove(role);
                        } else {
                            meta.outputs.insert(role.clone(), peers.clone());
                        }
                        events.push(BackendEvent::OutputsChanged {
                            port: role.clone(),
                            peers,
                        });
                    }
                }
            }
            for (&slot, track) in meta.tracks.iter_mut() {
                if !std::mem::take(&mut track.dirty) {
                    continue;
                }
                let input = read_input(client, &track.ports, &track.input);
                if input != track.input {
                    track.input = input.clone();
                    events.push(BackendEvent::InputChanged {
                        slot: u16::try_from(slot).unwrap_or(u16::MAX),
                        input,
                    });
                }
            }
        }
        events
    }

    fn restore_outputs(&mut self, saved: &[(String, String)]) {
        let direct_outs = self.graph.direct_outs;
        self.with_meta(|_, state, index| {
            let Some(meta) = state.nodes[index].as_mut() else {
                return;
            };
            meta.outputs = saved.iter().cloned().collect();
            if let Some(connection) = state.connection.as_ref() {
                connect_outputs(connection.client.as_client(), meta, direct_outs);
            }
        });
    }

    /// The server is there and this session's node is in the process callback.
    fn is_running(&self) -> bool {
        let state = lock(&self.graph.state);
        let attached = state.parked[self.index].is_none()
            && state.nodes[self.index]
                .as_ref()
                .is_some_and(|meta| !meta.awaiting_attach);
        attached
            && state
                .connection
                .as_ref()
                .is_some_and(|c| !c.signals.lost.load(Ordering::Acquire))
    }

    /// `poll` only tries the graph's state (see there).
    fn poll_may_wait(&self) -> bool {
        false
    }

    fn lead_transport(&mut self, request: TransportRequest) {
        if self.graph.transport != TransportMode::Lead {
            return;
        }
        let state = lock(&self.graph.state);
        let Some(connection) = state.connection.as_ref() else {
            return;
        };
        let transport = connection.client.as_client().transport();
        let result = match request {
            TransportRequest::Start => transport.start(),
            TransportRequest::Stop => transport.stop(),
            TransportRequest::Locate(frame) => {
                transport.locate(u32::try_from(frame).unwrap_or(u32::MAX))
            }
        };
        if let Err(e) = result {
            tracing::warn!("JACK transport {request:?}: {e}");
        }
    }

    fn run_detached(&mut self, frames: usize) -> bool {
        self.with_meta(|_, state, index| {
            let Some(node) = state.parked[index].as_mut() else {
                return false;
            };
            ports::run_silent(&mut node.processor, frames);
            true
        })
    }

    fn stop(mut self: Box<Self>) -> Option<Processor> {
        self.stopped = true;
        let index = self.index;
        let deadline = Instant::now() + DETACH_TIMEOUT;
        {
            let mut state = lock(&self.graph.state);
            if let Some(meta) = state.nodes[index].as_mut() {
                meta.awaiting_attach = false;
            }
            if state.parked[index].is_none() {
                if let Some(connection) = state.connection.as_mut() {
                    let _ = connection.commands.push(GraphCommand::Detach { index });
                }
            }
        }
        loop {
            let mut state = lock(&self.graph.state);
            collect_retired(&mut state);
            if let Some(mut node) = state.parked[index].take() {
                state.nodes[index] = None;
                if let Some(connection) = state.connection.as_ref() {
                    unregister_ports(connection.client.as_client(), &mut node);
                }
                return Some(node.processor);
            }
            if Instant::now() >= deadline || state.connection.is_none() {
                tracing::error!("the JACK client did not hand the session's node back in time");
                state.nodes[index] = None;
                state.abandoned.push(index);
                return None;
            }
            drop(state);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
