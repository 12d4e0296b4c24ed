//! The native PipeWire backend: one `pw_filter` node (named like the JACK client, `overdub` by
//! default) shared by every active session, run by a `pw_thread_loop`.
//!
//! The node has `node.always-process = true`, so the graph's driver (a sound card, or PipeWire's
//! Dummy-Driver when there is none) runs it even while nothing is linked, and its process
//! callback runs on PipeWire's real-time data thread (`PW_FILTER_FLAG_RT_PROCESS`). All ports
//! are DSP ports (`32 bit float mono audio`), as JACK clients see them through `pw-jack`.
//!
//! Each session attaches a *node* exactly as with JACK: its [`Processor`], one input port per
//! track channel (`<session>.<track>.in`, or `.in_L`/`.in_R` for stereo) and two master outputs
//! (`<session>.master_out_L/R`). Ports are added to the filter off the real-time thread (thread
//! loop locked) and swapped into the process callback through a pre-allocated queue; what they
//! replace comes back on another queue and is removed off the real-time thread. A track's
//! `input` word is the set of PipeWire ports linked to its input ports, named
//! `<node.name>:<port.name>` as `pw-link` shows them: channels separated by `,`, several sources
//! of one channel by `+` (`test-feeder:out_1,test-feeder:out_2`); `none` unlinks. Where the
//! master outputs are linked is kept the same way (role → `+` peers, as on JACK). Links are
//! created through the `link-factory`, and links made by other programs are seen in the registry
//! and reported so control can store them; a link whose peer's program quits stays in the word
//! and is made again when the peer's port appears.
//!
//! Latencies are read from the ports' `SPA_PARAM_Latency` and passed on through the node
//! ([`latency`]).
//!
//! When the server goes away (the core reports `EPIPE`, or the filter errors) the graph destroys
//! the filter, takes every node back from the process data (which it owns), reports the loss and
//! tries to connect again every [`RECONNECT_INTERVAL`]; when the server answers, the ports are
//! added again, the nodes re-attached and the links restored.
//!
//! Real-time code: [`on_process`] and what it calls. Everything else runs on control's threads
//! or on the thread loop.

use std::cell::UnsafeCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_int, c_void, CString};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::pipewire as pw;
use pw::context::ContextRc;
use pw::core::CoreRc;
use pw::link::Link;
use pw::properties::PropertiesBox;
use pw::registry::RegistryRc;
use pw::spa::sys as spa_sys;
use pw::sys as pw_sys;
use pw::thread_loop::ThreadLoopRc;
use pw::types::ObjectType;

use super::ports::{
    self, engine_inputs, lock, parse_input, read_or_last, track_out_names, track_out_role,
    track_port_names, ChunkOutputs, CycleBuffers, HostedNode, NodeBuffers, NodeCommand,
    TrackBuffers,
};
use super::{
    BackendError, BackendEvent, BackendInfo, DeviceInfo, Direction, RunningBackend,
    TransportRequest,
};
use crate::engine::{touched_zeros, Processor, TrackOutputs};
use crate::store::MASTER_OUTPUT_ROLES;

mod latency;

/// Sessions one node can host (nodes are slots in a fixed array on the real-time thread).
pub const MAX_NODES: usize = 16;
/// The most frames a DSP port buffer holds (pw_filter's `MAX_SAMPLES`); longer cycles are cut.
const MAX_DSP_FRAMES: usize = 8192;
/// Capacity of the command and hand-back queues between control and the process callback.
const QUEUE: usize = 1024;
/// How often a lost server is looked for.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);
/// How long detaching a node may wait for the process callback to hand it back.
const DETACH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for the server to confirm the node, a port or a link.
const SERVER_TIMEOUT: Duration = Duration::from_secs(3);
/// The DSP format of every port.
const DSP_FORMAT: &str = "32 bit float mono audio";
/// Proxies of links overdub made are dropped when the registry has not shown their link for
/// this long (the link was removed, or never came).
const LINK_PROXY_GRACE: Duration = Duration::from_secs(5);
/// How long the registry must have been still before control reads the links of touched
/// ports (see [`Model::changed`]).
const REGISTRY_SETTLE: Duration = Duration::from_millis(100);

/// The settings of the PipeWire node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeWireSettings {
    /// `node.name` of the filter (the JACK client name setting, `overdub` by default).
    pub node_name: String,
    /// Every track also gets direct outputs (`jack.direct_outs`).
    pub direct_outs: bool,
}

/// One port of the filter: the `port_data` pointer `pw_filter_add_port` returned, and the
/// connection it belongs to (ports of a lost connection are never touched again).
#[derive(Clone, Copy, Debug)]
struct PortHandle {
    data: NonNull<c_void>,
    generation: u64,
}

// SAFETY: the pointer is only dereferenced by PipeWire: in `pw_filter_get_dsp_buffer` on the
// data thread while the port is in the process callback's tables, and in `pw_filter_remove_port`
// on a control thread with the thread loop locked after the callback handed it back. Moving the
// handle between those threads is what the command queues do.
unsafe impl Send for PortHandle {}

impl PortHandle {
    /// The port's DSP buffer for this cycle, or null (an unlinked input or output).
    /// **Real-time safe** (PipeWire's `pw_filter_get_dsp_buffer` only pops a lock-free queue).
    fn buffer(self, frames: usize) -> *mut f32 {
        // SAFETY: `data` is a live port of the running filter (see `PortHandle`), called once
        // per port per cycle on the data thread as PipeWire requires.
        unsafe { pw_sys::pw_filter_get_dsp_buffer(self.data.as_ptr(), frames as u32).cast() }
    }
}

/// The ports of one track, moved into the process callback: its inputs, and its direct
/// outputs when `jack.direct_outs` is on; with the cycle's buffers of both.
struct TrackPorts {
    ports: [Option<PortHandle>; 2],
    outs: Option<[PortHandle; 2]>,
    buffers: CycleBuffers,
    out_buffers: OutBuffers,
}

impl TrackPorts {
    fn new(ports: [Option<PortHandle>; 2], outs: Option<[PortHandle; 2]>) -> Self {
        TrackPorts {
            ports,
            outs,
            buffers: CycleBuffers::default(),
            out_buffers: OutBuffers([ptr::null_mut(); 2]),
        }
    }

    /// Every port of the track, inputs then outputs.
    fn handles(&self) -> impl Iterator<Item = PortHandle> + '_ {
        self.ports
            .iter()
            .flatten()
            .chain(self.outs.iter().flatten())
            .copied()
    }
}

/// A track's direct-output buffers (left, right) for the current cycle, null where PipeWire
/// gave none (an unlinked output).
#[derive(Clone, Copy)]
struct OutBuffers([*mut f32; 2]);

// SAFETY: the pointers are dereferenced only by the process callback, during the cycle that
// set them; moving the (stale) values between threads reads nothing.
unsafe impl Send for OutBuffers {}

/// The direct outputs of a node's tracks for one chunk of a cycle. **Real-time safe**.
struct DirectOuts<'s> {
    tracks: &'s [Option<Box<TrackPorts>>],
    /// Where the side of a track that PipeWire gave no buffer (an unlinked output) is written
    /// and dropped, so a track linked on one side only still feeds that side.
    scratch: &'s mut [f32],
    frames: usize,
    range: Range<usize>,
}

impl TrackOutputs for DirectOuts<'_> {
    fn track_output(&mut self, slot: usize) -> Option<(&mut [f32], &mut [f32])> {
        let OutBuffers([left, right]) = self.tracks.get(slot)?.as_ref()?.out_buffers;
        let (start, len) = (self.range.start, self.range.len());
        if self.range.end > self.frames {
            return None;
        }
        let scratch = self.scratch.get_mut(..len)?;
        // SAFETY: `Node::run` set each non-null pointer this cycle from
        // `pw_filter_get_dsp_buffer` on one of two distinct output ports of the filter: each
        // its own buffer of at least `frames` samples, valid until the callback returns, and
        // `range` lies within it. Nothing else refers to them meanwhile: the inputs were copied
        // out before the processor runs, and the slices borrow `self` mutably, so no other slice
        // from this `DirectOuts` lives.
        let port =
            |buffer: *mut f32| unsafe { std::slice::from_raw_parts_mut(buffer.add(start), len) };
        match (left.is_null(), right.is_null()) {
            (false, false) => Some((port(left), port(right))),
            (true, false) => Some((scratch, port(right))),
            (false, true) => Some((port(left), scratch)),
            (true, true) => None,
        }
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

impl TrackBuffers for TrackPorts {
    fn cycle_buffers(&self) -> &CycleBuffers {
        &self.buffers
    }
}

/// One session in the process callback: its processor, its ports and its buffers.
struct Node {
    processor: Processor,
    tracks: Box<[Option<Box<TrackPorts>>]>,
    master: [PortHandle; 2],
    /// What its cycles work in.
    buffers: NodeBuffers,
    /// Whether its tracks get direct outputs (`jack.direct_outs`): without them the processor
    /// is given no per-track outputs to ask for.
    direct_outs: bool,
    /// [`DirectOuts::scratch`]: [`MAX_DSP_FRAMES`] samples with direct outputs, else none.
    out_scratch: Box<[f32]>,
}

impl Node {
    /// Runs the processor over the cycle ([`ports::run_cycle`]) on the tracks' DSP buffers
    /// and the master's, and the direct outputs. **Real-time safe**.
    fn run(&mut self, frames: usize) {
        let frames = frames.min(MAX_DSP_FRAMES);
        let Node {
            processor,
            tracks,
            master,
            buffers: node_buffers,
            direct_outs,
            out_scratch,
        } = self;
        for track in tracks.iter_mut().flatten() {
            let TrackPorts {
                ports,
                outs,
                buffers,
                out_buffers,
            } = &mut **track;
            for (port, buffer) in ports.iter().zip(buffers.0.iter_mut()) {
                *buffer = port.map(|p| p.buffer(frames).cast_const());
            }
            *out_buffers = OutBuffers(outs.map_or([ptr::null_mut(); 2], |outs| {
                outs.map(|port| port.buffer(frames))
            }));
        }
        let master = [master[0].buffer(frames), master[1].buffer(frames)];
        let mut direct = DirectOuts {
            tracks,
            scratch: out_scratch,
            frames,
            range: 0..0,
        };
        // SAFETY: every track's buffers were set above for this cycle, and PipeWire's DSP
        // buffers (inputs and the master's, null where absent) hold at least `frames` samples
        // (clamped to `MAX_DSP_FRAMES`); nothing else refers to the master's buffers.
        unsafe {
            ports::run_cycle(
                processor,
                tracks,
                frames,
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

/// The real-time side: the nodes and the queues.
struct FilterProcess {
    nodes: Box<[Option<Box<Node>>]>,
    commands: rtrb::Consumer<GraphCommand>,
    retired: rtrb::Producer<Retired>,
    /// The driver clock's id and the position where the next cycle should start.
    expected: Option<(u32, u64)>,
}

impl FilterProcess {
    /// Applies queued commands while the hand-back queue has room for what they replace.
    /// **Real-time safe**.
    fn apply_commands(&mut self) {
        ports::apply_commands(&mut self.nodes, &mut self.commands, &mut self.retired);
    }

    /// Whether this cycle starts where the last one ended on the same driver clock: when the
    /// driver's position jumps ahead, cycles went by without this node (an xrun: the takes miss
    /// those frames). **Real-time safe**.
    fn missed_cycles(&mut self, clock: &spa_sys::spa_io_clock) -> bool {
        let missed =
            matches!(self.expected, Some((id, at)) if id == clock.id && clock.position > at);
        self.expected = Some((clock.id, clock.position.wrapping_add(clock.duration)));
        missed
    }

    /// One graph cycle: commands, then every node. **Real-time safe**.
    fn cycle(&mut self, frames: usize) {
        self.apply_commands();
        for node in self.nodes.iter_mut().flatten() {
            node.run(frames);
        }
    }

    /// Every node it holds or was sent, for a lost connection. **Not** real-time safe; only
    /// once the filter is destroyed.
    fn rescue(&mut self, parked: &mut [Option<Box<Node>>]) {
        let mut park = |index: usize, node: Box<Node>| {
            if let Some(cell) = parked.get_mut(index) {
                *cell = Some(node);
            }
        };
        for (index, node) in self.nodes.iter_mut().enumerate() {
            if let Some(node) = node.take() {
                park(index, node);
            }
        }
        while let Ok(command) = self.commands.pop() {
            if let GraphCommand::Attach { index, node } = command {
                park(index, node);
            }
        }
    }
}

/// What the filter's callbacks receive as user data.
struct FilterData {
    signals: Arc<GraphSignals>,
    /// The filter, once created (before it connects, so before any event).
    filter: AtomicPtr<pw_sys::pw_filter>,
    /// Touched only by the process callback while the filter lives, then by the graph.
    process: UnsafeCell<FilterProcess>,
}

/// The filter's process callback: runs every node over the cycle's `clock.duration` frames,
/// publishes that quantum and counts cycles the node missed as xruns. **Real-time safe**: no allocation, lock, syscall or
/// log; a panic is caught.
unsafe extern "C" fn on_process(data: *mut c_void, position: *mut spa_sys::spa_io_position) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `data` is the `FilterData` the graph registered with this filter; it outlives
        // the filter, and only this callback touches `process` while the filter lives.
        let Some(data) = (unsafe { data.cast::<FilterData>().as_ref() }) else {
            return;
        };
        // SAFETY: PipeWire passes the driver's position for this cycle (or null).
        let Some(position) = (unsafe { position.as_ref() }) else {
            return;
        };
        let frames = usize::try_from(position.clock.duration).unwrap_or(0);
        data.signals
            .period
            .store(u32::try_from(frames).unwrap_or(u32::MAX), Ordering::Relaxed);
        // SAFETY: see above: the process data is exclusively this callback's while it runs.
        let process = unsafe { &mut *data.process.get() };
        if process.missed_cycles(&position.clock) {
            data.signals.xruns.fetch_add(1, Ordering::Relaxed);
        }
        process.cycle(frames);
    }));
}

/// The filter's state callback (thread loop): an error state means the node is gone.
unsafe extern "C" fn on_state_changed(
    data: *mut c_void,
    _old: pw_sys::pw_filter_state,
    state: pw_sys::pw_filter_state,
    _error: *const std::ffi::c_char,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in `on_process`; only the `Sync` signals are read here.
        if let Some(data) = unsafe { data.cast::<FilterData>().as_ref() } {
            if state == pw_sys::pw_filter_state_PW_FILTER_STATE_ERROR {
                data.signals.lost.store(true, Ordering::Release);
            }
        }
    }));
}

/// The filter's parameter callback (thread loop): a port's `SPA_PARAM_Latency` (the latency of
/// what it is linked with) is kept for [`PipeWireGraph::info`] and passed on to the ports of
/// the other direction (see [`latency`]).
unsafe extern "C" fn on_param_changed(
    data: *mut c_void,
    port_data: *mut c_void,
    id: u32,
    param: *const spa_sys::spa_pod,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if id != spa_sys::SPA_PARAM_Latency {
            return;
        }
        // SAFETY: as in `on_process`; only the `Sync` parts are read here.
        let Some(data) = (unsafe { data.cast::<FilterData>().as_ref() }) else {
            return;
        };
        let (Some(port), Some(filter)) = (
            NonNull::new(port_data),
            NonNull::new(data.filter.load(Ordering::Acquire)),
        ) else {
            return;
        };
        // SAFETY: PipeWire passes a valid pod (or null) for the duration of the call.
        let Some(info) = (unsafe { latency::parse(param) }) else {
            return;
        };
        let update = lock(&data.signals.latencies).reported(port, info);
        if let Some(update) = update {
            // SAFETY: the live filter whose ports the signals track, on its thread loop.
            unsafe { update.apply(filter.as_ptr()) };
        }
    }));
}

/// The filter's events. Lives forever, as PipeWire requires of the table.
static FILTER_EVENTS: pw_sys::pw_filter_events = pw_sys::pw_filter_events {
    version: pw_sys::PW_VERSION_FILTER_EVENTS,
    destroy: None,
    state_changed: Some(on_state_changed),
    io_changed: None,
    param_changed: Some(on_param_changed),
    add_buffer: None,
    remove_buffer: None,
    process: Some(on_process),
    drained: None,
    command: None,
};

/// A port as the registry describes it.
#[derive(Clone, Debug)]
struct PortFacts {
    node: u32,
    name: String,
    output: bool,
    audio: bool,
    physical: bool,
    /// When the registry announced it.
    added: Instant,
}

/// The graph as the registry shows it, kept by the thread loop's listeners.
#[derive(Default)]
struct Model {
    /// Node id → `node.name`.
    nodes: BTreeMap<u32, String>,
    ports: BTreeMap<u32, PortFacts>,
    /// Link id → (output port, input port).
    links: BTreeMap<u32, (u32, u32)>,
    /// Ports whose links changed since control last looked (both ends of each link).
    touched: Vec<u32>,
    /// When a node, port or link last came or went: a program that quits has its links, ports
    /// and node removed one event at a time, so control reads touched ports only once this is
    /// [`REGISTRY_SETTLE`] old (a link gone while its port still shows is not a user's unlink).
    /// Other objects (clients such as `pw-link` connecting) do not count.
    changed: Option<Instant>,
    /// `default.clock.rate` and `default.clock.quantum` from the core's info.
    default_rate: Option<u32>,
    default_quantum: Option<u32>,
}

impl Model {
    /// `<node.name>:<port.name>` of a port.
    fn full_name(&self, port: u32) -> Option<String> {
        let facts = self.ports.get(&port)?;
        let node = self.nodes.get(&facts.node)?;
        Some(format!("{node}:{}", facts.name))
    }

    /// The port called `<node.name>:<port.name>`.
    fn find(&self, full: &str) -> Option<(u32, &PortFacts)> {
        self.ports
            .iter()
            .find(|(_, facts)| {
                self.nodes.get(&facts.node).is_some_and(|node| {
                    full.strip_prefix(node.as_str())
                        .and_then(|rest| rest.strip_prefix(':'))
                        == Some(facts.name.as_str())
                })
            })
            .map(|(&id, facts)| (id, facts))
    }

    /// Whether the port called `full` is away: it does not exist, or it came after `since`
    /// (its program started again after the links were last read, so a link it lacks was lost
    /// with the program, not taken away by the user).
    fn away(&self, full: &str, since: Instant) -> bool {
        self.find(full).is_none_or(|(_, facts)| facts.added > since)
    }

    /// The ports linked with `port` (into it when `port` is an input, out of it when an
    /// output), as a `+` group sorted by name, keeping the names of `saved` whose ports are
    /// [away](Model::away) since `since`: a link gone because its peer's program quit (or has
    /// not started yet) is not the user's, and is made again when the port appears.
    fn read_peers(&self, port: u32, saved: &[String], since: Instant) -> String {
        let mut names: Vec<String> = self
            .links
            .values()
            .filter_map(|&(from, to)| match (from == port, to == port) {
                (_, true) => self.full_name(from),
                (true, _) => self.full_name(to),
                _ => None,
            })
            .collect();
        for missing in saved {
            if self.away(missing, since) && !names.contains(missing) {
                names.push(missing.clone());
            }
        }
        names.sort();
        names.join("+")
    }

    /// The input word of a track's ports as the graph has them linked now (sources of the
    /// `stored` word that are away since `since` stay in it, see [`Model::read_peers`]).
    fn read_input(&self, ports: &[u32], stored: &str, since: Instant) -> String {
        let channels = u8::try_from(ports.len()).unwrap_or(2);
        let stored = parse_input(stored, channels).unwrap_or_default();
        let groups: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(channel, &port)| {
                self.read_peers(port, stored.get(channel).map_or(&[], Vec::as_slice), since)
            })
            .collect();
        if groups.iter().all(String::is_empty) {
            "none".into()
        } else {
            groups.join(",")
        }
    }

    /// Whether control should read the touched ports now (see [`Model::changed`]).
    fn settled(&self) -> bool {
        self.changed
            .is_none_or(|at| at.elapsed() >= REGISTRY_SETTLE)
    }

    fn global(
        &mut self,
        id: u32,
        type_: &ObjectType,
        props: Option<&pw::spa::utils::dict::DictRef>,
    ) {
        if matches!(
            type_,
            ObjectType::Node | ObjectType::Port | ObjectType::Link
        ) {
            self.changed = Some(Instant::now());
        }
        let get = |key: &str| props.and_then(|p| p.get(key));
        let number = |key: &str| get(key).and_then(|v| v.parse::<u32>().ok());
        match type_ {
            ObjectType::Node => {
                if let Some(name) = get("node.name") {
                    self.nodes.insert(id, name.to_string());
                }
            }
            ObjectType::Port => {
                let (Some(node), Some(name)) = (number("node.id"), get("port.name")) else {
                    return;
                };
                self.ports.insert(
                    id,
                    PortFacts {
                        node,
                        name: name.to_string(),
                        output: get("port.direction") == Some("out"),
                        audio: get("format.dsp").is_some_and(|f| f.contains("audio")),
                        physical: get("port.physical") == Some("true"),
                        added: Instant::now(),
                    },
                );
            }
            ObjectType::Link => {
                if let (Some(from), Some(to)) =
                    (number("link.output.port"), number("link.input.port"))
                {
                    self.links.insert(id, (from, to));
                    self.touch(to);
                    self.touch(from);
                }
            }
            _ => {}
        }
    }

    fn global_remove(&mut self, id: u32) {
        let node = self.nodes.remove(&id).is_some();
        let port = self.ports.remove(&id).is_some();
        if port {
            self.touched.retain(|&port| port != id);
        }
        let link = self.links.remove(&id);
        if node || port || link.is_some() {
            self.changed = Some(Instant::now());
        }
        if let Some((from, to)) = link {
            for port in [to, from] {
                if self.ports.contains_key(&port) {
                    self.touch(port);
                }
            }
        }
    }

    fn touch(&mut self, port: u32) {
        if !self.touched.contains(&port) {
            self.touched.push(port);
        }
    }
}

/// Facts the thread loop and the process callback publish for control.
#[derive(Default)]
struct GraphSignals {
    /// The server went away (core `EPIPE`) or refused the node.
    lost: AtomicBool,
    /// `clock.duration` of the last cycle (0 before the first).
    period: AtomicU32,
    /// Cycles the node missed (the driver's position jumped past it) since it connected.
    xruns: AtomicU64,
    /// The registry's view. Lock order: the thread loop's lock first (its listeners run with it
    /// held), then this one; never the thread loop's while holding this.
    model: Mutex<Model>,
    /// What the filter's ports are told of latency. Lock order as for `model` (never both).
    latencies: Mutex<latency::Latencies>,
}

/// Holds a thread loop's lock (the thread loop does not dispatch while it is held).
struct LoopLock(*mut pw_sys::pw_thread_loop);

impl LoopLock {
    fn new(thread_loop: &ThreadLoopRc) -> LoopLock {
        let raw = thread_loop.as_raw_ptr();
        // SAFETY: the thread loop lives as long as the connection that owns it and this lock.
        unsafe { pw_sys::pw_thread_loop_lock(raw) };
        LoopLock(raw)
    }
}

impl Drop for LoopLock {
    fn drop(&mut self) {
        // SAFETY: locked in `new` by this thread.
        unsafe { pw_sys::pw_thread_loop_unlock(self.0) };
    }
}

/// Work for the data thread and its result (see [`between_cycles`]).
struct Job {
    work: Option<Box<dyn FnOnce() -> *mut c_void>>,
    result: Option<*mut c_void>,
}

// SAFETY: a job runs once, on the data thread (or at once on the queuing thread when that loop
// is not running), while the thread that queued it holds the thread loop's lock and waits for
// it; its one user captures nothing and returns a plain value carried as a pointer.
unsafe impl Send for Job {}

type JobCell = (Mutex<Job>, std::sync::Condvar);

/// The context's properties: `client-rt.conf` before libpipewire 1.3.81, whose `client.conf`
/// loads no module to give the data thread real-time priority (later versions give every
/// client's data thread real-time priority from `client.conf`, and call `client-rt.conf`
/// deprecated). `$PIPEWIRE_CONFIG_NAME` still wins, as PipeWire reads it first.
fn realtime_context_properties() -> Option<PropertiesBox> {
    // SAFETY: a static NUL-terminated string owned by libpipewire.
    let version = unsafe { std::ffi::CStr::from_ptr(pw_sys::pw_get_library_version()) };
    let version = parse_version(&version.to_string_lossy());
    (version < (1, 3, 81)).then(|| {
        let mut props = PropertiesBox::new();
        props.insert("config.name", "client-rt.conf");
        props
    })
}

/// `major.minor.micro` as numbers, from each part's leading digits (`1.3.81-12-gabc` is
/// 1.3.81; parts missing or without digits count as 0).
fn parse_version(version: &str) -> (u32, u32, u32) {
    let mut parts = version.split('.').map(|part| {
        let digits = part.trim().split(|c: char| !c.is_ascii_digit()).next();
        digits.and_then(|d| d.parse::<u32>().ok()).unwrap_or(0)
    });
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// Runs `work` on PipeWire's data thread between two cycles and waits for its result (it reads
/// that thread's scheduling, see [`Connection::log_scheduling`]). Called with the thread loop
/// locked. The job is queued without PipeWire's blocking wait (which was seen to return before
/// the job ran) and shared, so a job that has not started when the wait gives up is cancelled,
/// and one that runs late finds its cell alive. `None` if it did not run. A job that has started
/// is waited for to its end. Filter calls are never made here: libpipewire 1.x objects to them
/// off the thread that holds the thread loop's lock (1.4 warns; later versions refuse them).
fn between_cycles(
    data_loop: *mut pw_sys::pw_data_loop,
    work: impl FnOnce() -> *mut c_void + 'static,
) -> Option<*mut c_void> {
    unsafe extern "C" fn trampoline(
        _loop: *mut spa_sys::spa_loop,
        _async: bool,
        _seq: u32,
        _data: *const c_void,
        _size: usize,
        user_data: *mut c_void,
    ) -> c_int {
        // SAFETY: `user_data` is the reference `between_cycles` leaked for this call.
        let cell = unsafe { Arc::from_raw(user_data.cast_const().cast::<JobCell>()) };
        let work = lock(&cell.0).work.take();
        if let Some(work) = work {
            let result = catch_unwind(AssertUnwindSafe(work)).unwrap_or(ptr::null_mut());
            lock(&cell.0).result = Some(result);
            cell.1.notify_all();
        }
        0
    }
    let cell: Arc<JobCell> = Arc::new((
        Mutex::new(Job {
            work: Some(Box::new(work)),
            result: None,
        }),
        std::sync::Condvar::new(),
    ));
    let user_data = Arc::into_raw(Arc::clone(&cell));
    // SAFETY: a non-blocking invoke on the context's data loop (run at once when that loop is
    // not running); the trampoline owns the reference passed as user data.
    let queued = unsafe {
        pw_sys::pw_data_loop_invoke(
            data_loop,
            Some(trampoline),
            0,
            ptr::null(),
            0,
            false,
            user_data.cast_mut().cast(),
        )
    };
    let mut job = lock(&cell.0);
    if queued < 0 {
        job.work = None;
        return job.result;
    }
    let deadline = Instant::now() + SERVER_TIMEOUT;
    while job.result.is_none() {
        let now = Instant::now();
        if now >= deadline {
            if job.work.take().is_some() {
                return None;
            }
            // Running now: wait for it to end, saying why the caller is held up (the job's
            // mutex released meanwhile, so the job can finish while the log is written).
            drop(job);
            tracing::warn!(
                "a job on PipeWire's data thread has run for over {} s; waiting for it",
                SERVER_TIMEOUT.as_secs()
            );
            job = lock(&cell.0);
            while job.result.is_none() {
                job = cell.1.wait(job).unwrap_or_else(|p| p.into_inner());
            }
            return job.result;
        }
        job = cell
            .1
            .wait_timeout(job, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    job.result
}

/// The live connection: thread loop, context, core, registry, the filter and its queues.
struct Connection {
    generation: u64,
    thread_loop: ThreadLoopRc,
    context: Option<ContextRc>,
    core: Option<CoreRc>,
    registry: Option<RegistryRc>,
    core_listener: Option<pw::core::Listener>,
    registry_listener: Option<pw::registry::Listener>,
    filter: NonNull<pw_sys::pw_filter>,
    /// The filter's listener hook: never read, but PipeWire holds its address until the
    /// filter is destroyed in `close`.
    _filter_hook: Box<spa_sys::spa_hook>,
    /// The callbacks' user data; owned here, reclaimed in `close`.
    data: NonNull<FilterData>,
    data_loop: *mut pw_sys::pw_data_loop,
    node_id: u32,
    commands: rtrb::Producer<GraphCommand>,
    retired: rtrb::Consumer<Retired>,
    signals: Arc<GraphSignals>,
    /// Proxies of the links overdub made, by (output port, input port), with when they were
    /// last seen in the registry (dropping a proxy destroys its link).
    links: HashMap<(u32, u32), (Instant, Link)>,
    closed: bool,
}

// SAFETY: the PipeWire objects (and the `Rc`s around them) are used only by the thread that
// holds the graph's state mutex, with the thread loop locked or stopped; the thread loop's
// listeners capture only the `Arc<GraphSignals>`, and the process callback touches only the
// `FilterData` it was given.
unsafe impl Send for Connection {}

impl Connection {
    /// Connects to the server (`$PIPEWIRE_REMOTE` or the default socket in
    /// `$XDG_RUNTIME_DIR`), creates and connects the filter node and waits until the server has
    /// confirmed it. Fails quickly when no server answers; never starts one.
    fn open(node_name: &str, generation: u64) -> Result<Connection, BackendError> {
        let failed = |what: &str, e: pw::Error| BackendError::failed(format!("{what}: {e}"));
        // SAFETY: creates a thread loop (and initializes PipeWire once); no other requirement.
        let thread_loop = unsafe { ThreadLoopRc::new(Some("overdub-pipewire"), None) }
            .map_err(|e| failed("cannot create the PipeWire thread loop", e))?;
        let context = match realtime_context_properties() {
            Some(props) => ContextRc::new(&thread_loop, Some(props)).or_else(|e| {
                tracing::warn!("PipeWire's client-rt.conf did not load ({e}); using client.conf");
                ContextRc::new(&thread_loop, None)
            }),
            None => ContextRc::new(&thread_loop, None),
        }
        .map_err(|e| failed("cannot create a PipeWire context", e))?;
        let core = context
            .connect_rc(None)
            .map_err(|e| failed("no PipeWire server answers", e))?;
        let signals = Arc::new(GraphSignals::default());
        let on_info = Arc::clone(&signals);
        let on_error = Arc::clone(&signals);
        let core_listener = core
            .add_listener_local()
            .info(move |info| {
                let Some(props) = info.props() else { return };
                let number = |key: &str| props.get(key).and_then(|v| v.parse::<u32>().ok());
                let mut model = lock(&on_info.model);
                model.default_rate = number("default.clock.rate").or(model.default_rate);
                model.default_quantum = number("default.clock.quantum").or(model.default_quantum);
            })
            .error(move |id, _seq, res, message| {
                if id == pw_sys::PW_ID_CORE && res == -libc::EPIPE {
                    on_error.lost.store(true, Ordering::Release);
                } else {
                    tracing::warn!("PipeWire error on object {id}: {message} ({res})");
                }
            })
            .register();
        let registry = core
            .get_registry_rc()
            .map_err(|e| failed("cannot read the PipeWire registry", e))?;
        let on_global = Arc::clone(&signals);
        let on_remove = Arc::clone(&signals);
        let registry_listener = registry
            .add_listener_local()
            .global(move |global| {
                lock(&on_global.model).global(global.id, &global.type_, global.props);
            })
            .global_remove(move |id| lock(&on_remove.model).global_remove(id))
            .register();

        let (command_tx, command_rx) = rtrb::RingBuffer::new(QUEUE);
        let (retired_tx, retired_rx) = crate::engine::touched_ring(QUEUE);
        let data = Box::new(FilterData {
            signals: Arc::clone(&signals),
            filter: AtomicPtr::new(ptr::null_mut()),
            process: UnsafeCell::new(FilterProcess {
                nodes: (0..MAX_NODES).map(|_| None).collect(),
                commands: command_rx,
                retired: retired_tx,
                expected: None,
            }),
        });
        let data = NonNull::from(Box::leak(data));
        let mut props = PropertiesBox::new();
        props.insert("node.name", node_name);
        // pipewire-jack names a node's JACK client after its description.
        props.insert("node.description", node_name);
        props.insert("media.type", "Audio");
        props.insert("media.category", "Duplex");
        props.insert("media.role", "Production");
        props.insert("node.always-process", "true");
        let name = CString::new(node_name)
            .map_err(|_| BackendError::failed("the node name contains a NUL byte"))?;
        // SAFETY: the core is connected; the properties' ownership passes to the filter.
        let filter =
            unsafe { pw_sys::pw_filter_new(core.as_raw_ptr(), name.as_ptr(), props.into_raw()) };
        let Some(filter) = NonNull::new(filter) else {
            // SAFETY: never given to a filter: reclaim it.
            drop(unsafe { Box::from_raw(data.as_ptr()) });
            return Err(BackendError::failed(
                "cannot create the PipeWire filter node",
            ));
        };
        // SAFETY: leaked above and alive until `close`; nothing else refers to it yet.
        unsafe { data.as_ref() }
            .filter
            .store(filter.as_ptr(), Ordering::Release);
        // SAFETY: a zeroed `spa_hook` is its documented initial state.
        let mut filter_hook: Box<spa_sys::spa_hook> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: the filter is new and the loop not started yet; the hook, the static events
        // and the user data all outlive the filter (see `close`).
        let connected = unsafe {
            pw_sys::pw_filter_add_listener(
                filter.as_ptr(),
                &mut *filter_hook,
                &FILTER_EVENTS,
                data.as_ptr().cast(),
            );
            pw_sys::pw_filter_connect(
                filter.as_ptr(),
                pw_sys::pw_filter_flags_PW_FILTER_FLAG_RT_PROCESS
                    | pw_sys::pw_filter_flags_PW_FILTER_FLAG_CUSTOM_LATENCY,
                ptr::null_mut(),
                0,
            )
        };
        // SAFETY: the context is alive for the connection's life.
        let data_loop = unsafe { pw_sys::pw_context_get_data_loop(context.as_raw_ptr()) };
        let mut connection = Connection {
            generation,
            thread_loop,
            context: Some(context),
            core: Some(core),
            registry: Some(registry),
            core_listener: Some(core_listener),
            registry_listener: Some(registry_listener),
            filter,
            _filter_hook: filter_hook,
            data,
            data_loop,
            node_id: pw_sys::PW_ID_ANY,
            commands: command_tx,
            retired: retired_rx,
            signals,
            links: HashMap::new(),
            closed: false,
        };
        if connected < 0 {
            return Err(BackendError::failed(format!(
                "cannot connect the PipeWire filter node ({connected})"
            )));
        }
        connection.thread_loop.start();
        let node_id = connection.wait(|conn| {
            let id = {
                let _lock = LoopLock::new(&conn.thread_loop);
                // SAFETY: the filter lives; the thread loop is locked.
                unsafe { pw_sys::pw_filter_get_node_id(conn.filter.as_ptr()) }
            };
            let model = lock(&conn.signals.model);
            (id != pw_sys::PW_ID_ANY
                && model.nodes.contains_key(&id)
                && model.default_rate.is_some())
            .then_some(id)
        });
        match node_id {
            Some(id) => {
                connection.node_id = id;
                connection.log_scheduling();
            }
            None if connection.signals.lost.load(Ordering::Acquire) => {
                return Err(BackendError::failed("the PipeWire server refused the node"))
            }
            None => {
                return Err(BackendError::failed(
                    "the PipeWire server did not confirm the node in time",
                ))
            }
        }
        Ok(connection)
    }

    /// Logs whether the data thread, where the process callback runs, has real-time scheduling.
    /// Asked on that thread, between two cycles.
    fn log_scheduling(&self) {
        let scheduling = {
            let _lock = LoopLock::new(&self.thread_loop);
            between_cycles(self.data_loop, || {
                // The answer travels as the job's pointer: the priority plus one, 0 for none.
                let answer = ports::realtime_priority(0).map_or(0, |priority| priority + 1);
                usize::try_from(answer).unwrap_or(0) as *mut c_void
            })
        };
        match scheduling.map(|answer| answer as usize) {
            Some(0) => tracing::warn!(
                "PipeWire runs overdub's audio thread WITHOUT real-time scheduling (PipeWire's \
                 module-rt raises it where the rtprio limit, `ulimit -r`, or RTKit allows; \
                 client-rt.conf loads it before libpipewire 1.3.81, client.conf since); expect \
                 xruns under load"
            ),
            Some(answer) => tracing::info!(
                priority = answer - 1,
                "PipeWire runs overdub's audio thread with real-time scheduling"
            ),
            None => tracing::warn!("PipeWire's data thread did not answer in time"),
        }
    }

    /// Polls `check` until it answers, the server is lost or [`SERVER_TIMEOUT`] passes. Never
    /// holds a lock while sleeping. Lock order: the thread loop's lock, then the model's (the
    /// thread loop's listeners take the model's with the loop's held); never the other way.
    fn wait<T>(&self, mut check: impl FnMut(&Connection) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            let found = check(self);
            if found.is_some() {
                return found;
            }
            if Instant::now() >= deadline || self.signals.lost.load(Ordering::Acquire) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the server went away.
    fn lost(&self) -> bool {
        self.signals.lost.load(Ordering::Acquire)
    }

    /// Adds a DSP port called `name` to the node (`output` for the masters and direct outputs)
    /// at `place` in the signal flow (see [`latency`]).
    fn add_port(
        &mut self,
        name: &str,
        output: bool,
        place: latency::Place,
    ) -> Result<PortHandle, BackendError> {
        let mut props = PropertiesBox::new();
        props.insert("format.dsp", DSP_FORMAT);
        props.insert("port.name", name);
        let props = props.into_raw();
        let direction = if output {
            spa_sys::SPA_DIRECTION_OUTPUT
        } else {
            spa_sys::SPA_DIRECTION_INPUT
        };
        let filter = self.filter;
        let _lock = LoopLock::new(&self.thread_loop);
        // SAFETY: the filter lives and its thread loop is locked by this thread, as PipeWire
        // requires of every filter call but the real-time ones (libpipewire 1.x objects to the
        // call otherwise); the properties' ownership passes to the port. PipeWire's own process
        // function may be walking the filter's port list meanwhile: that is its design for
        // every filter user; overdub's callback sees the port only once it is queued to it.
        let data = unsafe {
            pw_sys::pw_filter_add_port(
                filter.as_ptr(),
                direction,
                pw_sys::pw_filter_port_flags_PW_FILTER_PORT_FLAG_MAP_BUFFERS,
                0,
                props,
                ptr::null_mut(),
                0,
            )
        };
        match NonNull::new(data) {
            Some(data) => {
                let update = lock(&self.signals.latencies).add(data, output, place);
                // SAFETY: the live filter, its thread loop locked.
                unsafe { update.apply(filter.as_ptr()) };
                Ok(PortHandle {
                    data,
                    generation: self.generation,
                })
            }
            None => Err(BackendError::failed(format!(
                "cannot add the PipeWire port {name:?}"
            ))),
        }
    }

    /// Removes ports of this connection (handles of an earlier one are ignored).
    fn remove_ports(&mut self, ports: impl IntoIterator<Item = PortHandle>) {
        let ports: Vec<PortHandle> = ports
            .into_iter()
            .filter(|p| p.generation == self.generation)
            .collect();
        if ports.is_empty() {
            return;
        }
        let removed: Vec<NonNull<c_void>> = ports.iter().map(|p| p.data).collect();
        let _lock = LoopLock::new(&self.thread_loop);
        for port in &ports {
            // SAFETY: a port of the live filter that the process callback handed back (or never
            // had), so overdub's callback never touches it again; the thread loop is locked as in
            // `add_port` (PipeWire unlinks the port from its data loop before freeing it).
            unsafe { pw_sys::pw_filter_remove_port(port.data.as_ptr()) };
        }
        let update = lock(&self.signals.latencies).remove(removed);
        // SAFETY: the live filter, its thread loop locked; the removed ports are not among
        // those the update names.
        unsafe { update.apply(self.filter.as_ptr()) };
    }

    /// The registry id of this node's port `name`, once the server shows it.
    fn port_id(&self, name: &str) -> Option<u32> {
        let node = self.node_id;
        self.wait(|conn| {
            lock(&conn.signals.model)
                .ports
                .iter()
                .find(|(_, facts)| facts.node == node && facts.name == name)
                .map(|(&id, _)| id)
        })
    }

    /// Resolves an input word into one set of source port ids per channel, every source
    /// present now.
    fn resolve(&self, input: &str, channels: u8) -> Result<Vec<Vec<u32>>, BackendError> {
        let (ids, missing) = self.resolve_present(input, channels)?;
        match missing.first() {
            Some(name) => Err(BackendError::input(format!(
                "no PipeWire port {name:?} (see `overdub devices` or `pw-link -o`)"
            ))),
            None => Ok(ids),
        }
    }

    /// Resolves an input word into one set of source port ids per channel, leaving out the
    /// sources that do not exist now, which come back by name. A port that exists but is no
    /// audio output of another node is an error.
    fn resolve_present(
        &self,
        input: &str,
        channels: u8,
    ) -> Result<(Vec<Vec<u32>>, Vec<String>), BackendError> {
        let groups = parse_input(input, channels)?;
        let model = lock(&self.signals.model);
        let mut missing = Vec::new();
        let mut ids = Vec::with_capacity(groups.len());
        for group in &groups {
            let mut channel = Vec::with_capacity(group.len());
            for name in group {
                match model.find(name) {
                    Some((id, facts))
                        if facts.output && facts.audio && facts.node != self.node_id =>
                    {
                        channel.push(id)
                    }
                    Some(_) => {
                        return Err(BackendError::input(format!(
                            "{name:?} is not an audio output port of another node, so it cannot feed a track"
                        )))
                    }
                    None => missing.push(name.clone()),
                }
            }
            ids.push(channel);
        }
        Ok((ids, missing))
    }

    /// Whether the registry is settled and shows no change to `ports`' links that control has
    /// not read yet.
    fn quiet(&self, ports: &[u32]) -> bool {
        let model = lock(&self.signals.model);
        model.settled() && !ports.iter().any(|p| model.touched.contains(p))
    }

    /// Whether a source of `input` exists now but is not linked into its port of `ports`, with
    /// every change to their links read (see [`Connection::quiet`]).
    fn source_appeared(&self, ports: &[u32], input: &str) -> bool {
        let channels = u8::try_from(ports.len()).unwrap_or(2);
        let Ok((wanted, _)) = self.resolve_present(input, channels) else {
            return false;
        };
        if !self.quiet(ports) {
            return false;
        }
        let model = lock(&self.signals.model);
        ports.iter().zip(&wanted).any(|(&port, sources)| {
            sources
                .iter()
                .any(|&source| !model.links.values().any(|&l| l == (source, port)))
        })
    }

    /// Makes the links into `ports` exactly those of `input` (of its sources that exist now)
    /// and waits until the registry shows them. Answers whether every source was there: the
    /// others are linked when they appear (see [`PipeWireSession::poll`]).
    fn link_input(&mut self, ports: &[u32], input: &str) -> Result<bool, BackendError> {
        let channels = u8::try_from(ports.len()).unwrap_or(2);
        let (wanted, missing) = self.resolve_present(input, channels)?;
        let mut stale = Vec::new();
        let mut new = Vec::new();
        {
            let model = lock(&self.signals.model);
            for (&port, sources) in ports.iter().zip(&wanted) {
                for (&id, &(from, to)) in &model.links {
                    if to == port && !sources.contains(&from) {
                        stale.push((id, (from, to)));
                    }
                }
                for &source in sources {
                    if !model.links.values().any(|&l| l == (source, port))
                        && !new.contains(&(source, port))
                    {
                        new.push((source, port));
                    }
                }
            }
        }
        self.relink(&stale, &new)?;
        let settled = self.wait(|conn| {
            let model = lock(&conn.signals.model);
            ports
                .iter()
                .zip(&wanted)
                .all(|(port, sources)| {
                    let mut now: Vec<u32> = model
                        .links
                        .values()
                        .filter(|(_, to)| to == port)
                        .map(|(from, _)| *from)
                        .collect();
                    now.sort_unstable();
                    let mut want = sources.clone();
                    want.sort_unstable();
                    want.dedup();
                    now == want
                })
                .then_some(())
        });
        settled.ok_or_else(|| {
            BackendError::failed(format!(
                "PipeWire did not make the links of {input:?} in time"
            ))
        })?;
        Ok(missing.is_empty())
    }

    /// Links output `port` to each of `peers` (input port names, `+` separated) that exists
    /// and is not linked to it yet, leaving its other links alone, and waits until the registry
    /// shows them. Answers whether every peer was there (the others are linked when they
    /// appear).
    fn link_output(&mut self, port: u32, peers: &str) -> Result<bool, BackendError> {
        let mut new = Vec::new();
        let mut missing = false;
        {
            let model = lock(&self.signals.model);
            for name in peers.split('+').filter(|p| !p.is_empty()) {
                match model.find(name) {
                    Some((id, facts))
                        if !facts.output && facts.audio && facts.node != self.node_id =>
                    {
                        if !model.links.values().any(|&l| l == (port, id)) {
                            new.push((port, id));
                        }
                    }
                    Some(_) => {
                        return Err(BackendError::failed(format!(
                            "{name:?} is not an audio input port of another node"
                        )))
                    }
                    None => missing = true,
                }
            }
        }
        self.relink(&[], &new)?;
        let settled = self.wait(|conn| {
            let model = lock(&conn.signals.model);
            new.iter()
                .all(|pair| model.links.values().any(|l| l == pair))
                .then_some(())
        });
        settled.ok_or_else(|| {
            BackendError::failed(format!(
                "PipeWire did not make the links to {peers:?} in time"
            ))
        })?;
        Ok(!missing)
    }

    /// Destroys the `stale` links (id, (output port, input port)) and creates the `new` ones
    /// through the link-factory, keeping their proxies.
    fn relink(
        &mut self,
        stale: &[(u32, (u32, u32))],
        new: &[(u32, u32)],
    ) -> Result<(), BackendError> {
        if stale.is_empty() && new.is_empty() {
            return Ok(());
        }
        let _lock = LoopLock::new(&self.thread_loop);
        let (Some(core), Some(registry)) = (self.core.as_ref(), self.registry.as_ref()) else {
            return Err(BackendError::failed("the PipeWire server is gone"));
        };
        for (id, pair) in stale {
            if self.links.remove(pair).is_none() {
                let _ = registry.destroy_global(*id);
            }
        }
        for &(from, to) in new {
            // A proxy without its link (removed by someone else): replace it.
            self.links.remove(&(from, to));
            let props = pw::properties::properties! {
                "link.output.port" => from.to_string(),
                "link.input.port" => to.to_string(),
            };
            let link = core
                .create_object::<Link>("link-factory", &props)
                .map_err(|e| {
                    BackendError::failed(format!("cannot link port {from} to {to}: {e}"))
                })?;
            self.links.insert((from, to), (Instant::now(), link));
        }
        Ok(())
    }

    /// Drops the proxies of links the registry has not shown for a while.
    fn prune_links(&mut self) {
        let now = Instant::now();
        let model = lock(&self.signals.model);
        let present: Vec<(u32, u32)> = model.links.values().copied().collect();
        drop(model);
        let _lock = LoopLock::new(&self.thread_loop);
        self.links.retain(|pair, (seen, _)| {
            if present.contains(pair) {
                *seen = now;
            }
            now.duration_since(*seen) < LINK_PROXY_GRACE
        });
    }

    /// Stops the thread loop, destroys the filter (its callbacks never run again) and every
    /// PipeWire object, and hands the process data back.
    fn close(&mut self) -> Option<FilterProcess> {
        if std::mem::replace(&mut self.closed, true) {
            return None;
        }
        self.thread_loop.stop();
        self.links.clear();
        // SAFETY: the thread loop is stopped, so nothing else uses the filter; after this the
        // filter's callbacks never run again and its ports are freed.
        unsafe { pw_sys::pw_filter_destroy(self.filter.as_ptr()) };
        self.registry_listener = None;
        self.core_listener = None;
        self.registry = None;
        self.core = None;
        self.context = None;
        // SAFETY: `data` came from `Box::leak` in `open` and the filter that used it is gone.
        let data = unsafe { Box::from_raw(self.data.as_ptr()) };
        Some(data.process.into_inner())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        drop(self.close());
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
    /// Registry ids of the input ports (one per channel), empty while the server is gone.
    port_ids: Vec<u32>,
    /// Registry ids of the direct outputs (left, right), empty without them or while the
    /// server is gone.
    out_ids: Vec<u32>,
    /// The filter ports, empty while the server is gone.
    handles: Vec<PortHandle>,
    /// Some source of the input does not exist now (its program is not running): each is
    /// linked at the first poll that finds it.
    pending: bool,
}

/// What control knows about one attached session.
struct NodeMeta {
    prefix: String,
    max_tracks: usize,
    /// Frames of the chunks its buffers take (grown with the server's quantum).
    chunk: usize,
    tracks: BTreeMap<usize, TrackMeta>,
    /// Server losses and returns this session has not polled yet.
    lost_pending: bool,
    restored_pending: bool,
    /// Xruns of the connection already added to the session's counters.
    xruns_seen: u64,
    /// Registry ids of the master outputs (L, R), empty while the server is gone.
    master_ids: Vec<u32>,
    /// Where the outputs are linked: role (`master_out_L`) → peers (`+`), as stored with the
    /// session; peers that do not exist now stay.
    outputs: BTreeMap<String, String>,
    /// Some saved peer of an output does not exist now: linked at the first poll that finds it.
    outputs_pending: bool,
    /// When its ports' links were last read (see [`Model::away`]).
    last_read: Instant,
}

impl NodeMeta {
    /// The node's outputs as they are now: (role, registry id) for the master and every
    /// track's direct outputs.
    fn output_ports(&self) -> Vec<(String, u32)> {
        let master = MASTER_OUTPUT_ROLES
            .iter()
            .zip(&self.master_ids)
            .map(|(role, &id)| (role.to_string(), id));
        let tracks = self.tracks.iter().flat_map(|(&slot, track)| {
            ["L", "R"]
                .iter()
                .zip(&track.out_ids)
                .map(move |(side, &id)| (track_out_role(slot, side), id))
        });
        master.chain(tracks).collect()
    }
}

/// Links a node's outputs to their saved peers that exist (see [`Connection::link_output`]);
/// answers whether some peer is still missing.
fn link_outputs(connection: &mut Connection, meta: &NodeMeta) -> bool {
    let mut pending = false;
    for (role, port) in meta.output_ports() {
        let Some(peers) = meta.outputs.get(&role) else {
            continue;
        };
        match connection.link_output(port, peers) {
            Ok(complete) => pending |= !complete,
            Err(e) => tracing::warn!("restoring the links of {role}: {e}"),
        }
    }
    pending
}

/// Mutable state of the graph, behind one lock (control threads only).
struct GraphState {
    connection: Option<Connection>,
    /// Generation of the next connection (port handles remember theirs).
    next_generation: u64,
    /// Nodes out of the process callback: detached on request, or rescued from a lost server.
    parked: Vec<Option<Box<Node>>>,
    nodes: Vec<Option<NodeMeta>>,
    last_attempt: Instant,
    /// Nodes detached after their session stopped waiting for them: dropped when they return.
    abandoned: Vec<usize>,
}

/// The quantum of the graph's last cycle (the server's default before the first; 0 while the
/// server is gone).
fn period_of(state: &GraphState) -> u32 {
    match &state.connection {
        Some(c) => match c.signals.period.load(Ordering::Relaxed) {
            0 => lock(&c.signals.model).default_quantum.unwrap_or(0),
            period => period,
        },
        None => 0,
    }
}

/// The shared PipeWire node. Cheap to share behind an `Arc`; every method runs off the
/// real-time thread.
pub struct PipeWireGraph {
    node_name: String,
    direct_outs: bool,
    sample_rate: u32,
    state: Mutex<GraphState>,
    /// The period [`PipeWireGraph::period`] last read, answered while the state is held.
    last_period: AtomicU32,
}

impl PipeWireGraph {
    /// Connects to the PipeWire server and creates the node `settings.node_name`. Fails quickly
    /// when no server answers; never starts one.
    pub fn open(settings: &PipeWireSettings) -> Result<PipeWireGraph, BackendError> {
        let connection = Connection::open(&settings.node_name, 0)?;
        let sample_rate = lock(&connection.signals.model)
            .default_rate
            .unwrap_or(48_000);
        let graph = PipeWireGraph {
            node_name: settings.node_name.clone(),
            direct_outs: settings.direct_outs,
            sample_rate,
            last_period: AtomicU32::new(0),
            state: Mutex::new(GraphState {
                connection: Some(connection),
                next_generation: 1,
                parked: (0..MAX_NODES).map(|_| None).collect(),
                nodes: (0..MAX_NODES).map(|_| None).collect(),
                last_attempt: Instant::now(),
                abandoned: Vec::new(),
            }),
        };
        // The first read sets the period answered while the state is held.
        graph.period();
        Ok(graph)
    }

    /// The node's `node.name`.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The graph's rate when the node was created (sessions are fixed to it).
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Rate and quantum of the graph's last cycle (the server's defaults before the first), and
    /// the latencies PipeWire reports on session `index`'s ports at that quantum: the longest
    /// capture latency of what is linked into its tracks, and the longest playback latency of
    /// what its outputs are linked to (0 where nothing is linked, or a peer reports none).
    pub fn info(&self, index: usize) -> BackendInfo {
        let state = lock(&self.state);
        let period = period_of(&state);
        self.last_period.store(period, Ordering::Relaxed);
        let node = state.nodes.get(index).and_then(Option::as_ref);
        let (input, output) = match (state.connection.as_ref(), node) {
            (Some(c), Some(node)) => {
                lock(&c.signals.latencies).frames(&node.prefix, period, self.sample_rate)
            }
            _ => (0, 0),
        };
        BackendInfo {
            name: "pipewire",
            sample_rate: self.sample_rate,
            period,
            input_latency_frames: input,
            output_latency_frames: output,
        }
    }

    /// Frames per cycle now (0 while the server is gone). Never waits (every HTTP GET of a
    /// session asks): while the state is held (a reconnect, port work) it answers the period
    /// it last read.
    pub fn period(&self) -> u32 {
        read_or_last(&self.state, &self.last_period, period_of)
    }

    /// Whether the server is there.
    pub fn is_running(&self) -> bool {
        lock(&self.state)
            .connection
            .as_ref()
            .is_some_and(|c| !c.lost())
    }

    /// Audio ports of other nodes: their outputs are inputs for tracks (one mono device per
    /// port, named `<node.name>:<port.name>`), their inputs are where the masters can go.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        let state = lock(&self.state);
        let Some(connection) = &state.connection else {
            return Vec::new();
        };
        let model = lock(&connection.signals.model);
        let mut devices = Vec::new();
        for (output, direction) in [(true, Direction::Input), (false, Direction::Output)] {
            let ports = model
                .ports
                .iter()
                .filter(|(_, f)| f.audio && f.output == output && f.node != connection.node_id)
                .filter_map(|(&id, _)| model.full_name(id));
            for (n, name) in ports.enumerate() {
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
        let model = lock(&connection.signals.model);
        let physical: Vec<String> = model
            .ports
            .iter()
            .filter(|(_, f)| f.audio && f.output && f.physical)
            .filter_map(|(&id, _)| model.full_name(id))
            .collect();
        let first = (index as usize).saturating_sub(1) * usize::from(channels);
        match physical.get(first..first + usize::from(channels)) {
            Some(ports) => ports.join(","),
            None => "none".into(),
        }
    }

    /// Checks an input word for a track of `channels` channels against the ports that exist
    /// now: `none`, or one group per channel (`,`), each one or more output ports (`+`).
    pub fn check_input(&self, input: &str, channels: u8) -> Result<(), BackendError> {
        parse_input(input, channels)?;
        let state = lock(&self.state);
        let Some(connection) = &state.connection else {
            return Err(BackendError::failed(
                "the PipeWire server is gone; inputs can be set when it returns",
            ));
        };
        connection.resolve(input, channels).map(|_| ())
    }

    /// Attaches a session's processor as a node: adds its master outputs (the node's tracks
    /// are added with `route_track`). Fails when the server is gone, the rate differs or every
    /// node slot is taken.
    pub fn attach(
        self: &Arc<Self>,
        session_name: &str,
        sample_rate: u32,
        max_tracks: usize,
        processor: Processor,
    ) -> Result<Box<dyn RunningBackend>, BackendError> {
        if sample_rate != self.sample_rate {
            return Err(BackendError::failed(format!(
                "the session runs at {sample_rate} Hz but the PipeWire graph at {} Hz",
                self.sample_rate
            )));
        }
        let mut state = lock(&self.state);
        self.service(&mut state);
        let Some(index) = (0..MAX_NODES).find(|&i| {
            state.nodes[i].is_none() && state.parked[i].is_none() && !state.abandoned.contains(&i)
        }) else {
            return Err(BackendError::failed(format!(
                "one PipeWire node hosts at most {MAX_NODES} sessions"
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
        let period = period_of(&state) as usize;
        let connection = state
            .connection
            .as_mut()
            .ok_or_else(|| BackendError::failed("the PipeWire server is gone"))?;
        let (master, master_ids) = add_master(connection, &prefix)?;
        let buffers = NodeBuffers::new(max_tracks, period);
        let chunk = buffers.chunk();
        let node = Box::new(Node {
            processor,
            tracks: (0..max_tracks).map(|_| None).collect(),
            master,
            buffers,
            direct_outs: self.direct_outs,
            out_scratch: touched_zeros(if self.direct_outs { MAX_DSP_FRAMES } else { 0 }),
        });
        if let Err(rtrb::PushError::Full(GraphCommand::Attach { node, .. })) = connection
            .commands
            .push(GraphCommand::Attach { index, node })
        {
            connection.remove_ports(node.master);
            return Err(BackendError::failed("the PipeWire command queue is full"));
        }
        let xruns_seen = connection.signals.xruns.load(Ordering::Relaxed);
        state.nodes[index] = Some(NodeMeta {
            prefix,
            max_tracks,
            chunk,
            tracks: BTreeMap::new(),
            lost_pending: false,
            restored_pending: false,
            xruns_seen,
            master_ids,
            outputs: BTreeMap::new(),
            outputs_pending: false,
            last_read: Instant::now(),
        });
        Ok(Box::new(PipeWireSession {
            graph: Arc::clone(self),
            index,
        }))
    }

    /// Housekeeping, called with the state locked by every session poll: removes retired
    /// ports, grows the nodes' buffers to the quantum, notices a lost server and parks the
    /// rescued nodes, and looks for a lost server.
    fn service(&self, state: &mut GraphState) {
        let mut lost = false;
        if let Some(connection) = state.connection.as_mut() {
            while let Ok(retired) = connection.retired.pop() {
                match retired {
                    Retired::Track(ports) => connection.remove_ports(ports.handles()),
                    Retired::Buffers(buffers) => drop(buffers),
                    Retired::Node { index, node } => {
                        if let Some(at) = state.abandoned.iter().position(|&i| i == index) {
                            state.abandoned.remove(at);
                            remove_node_ports(connection, &node);
                        } else if let Some(cell) = state.parked.get_mut(index) {
                            *cell = Some(node);
                        }
                    }
                }
            }
            lost = connection.lost();
            if !lost {
                connection.prune_links();
                // Buffers for the quantum when it outgrew a node's, so each cycle's inputs
                // are copied at once again.
                let period = connection.signals.period.load(Ordering::Relaxed) as usize;
                for (index, meta) in state.nodes.iter_mut().enumerate() {
                    let Some(meta) = meta.as_mut() else { continue };
                    if state.parked[index].is_none() {
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
        }
        if lost {
            tracing::error!("the PipeWire server went away; closing takes and waiting for it");
            if let Some(mut connection) = state.connection.take() {
                if let Some(mut process) = connection.close() {
                    process.rescue(&mut state.parked);
                }
                // Nodes the callback handed back after the last look.
                while let Ok(retired) = connection.retired.pop() {
                    if let Retired::Node { index, node } = retired {
                        if let Some(cell) = state.parked.get_mut(index) {
                            *cell = Some(node);
                        }
                    }
                }
            }
            for meta in state.nodes.iter_mut().flatten() {
                meta.lost_pending = true;
                meta.restored_pending = false;
                meta.master_ids.clear();
                for track in meta.tracks.values_mut() {
                    track.port_ids.clear();
                    track.out_ids.clear();
                    track.handles.clear();
                }
            }
            state.last_attempt = Instant::now();
            return;
        }
        if state.connection.is_none() && state.last_attempt.elapsed() >= RECONNECT_INTERVAL {
            state.last_attempt = Instant::now();
            self.reconnect(state);
        }
    }

    /// Connects again, adds every parked node's ports again, re-attaches the nodes and
    /// restores their links.
    fn reconnect(&self, state: &mut GraphState) {
        let generation = state.next_generation;
        let Ok(mut connection) = Connection::open(&self.node_name, generation) else {
            return;
        };
        state.next_generation += 1;
        let rate = lock(&connection.signals.model).default_rate.unwrap_or(0);
        if rate != self.sample_rate {
            tracing::error!(
                "the PipeWire server is back at {rate} Hz, but the sessions run at {} Hz; waiting for a server at that rate",
                self.sample_rate
            );
            return;
        }
        tracing::info!("the PipeWire server is back; restoring ports and links");
        for index in 0..MAX_NODES {
            let (Some(meta), Some(mut node)) =
                (state.nodes[index].as_mut(), state.parked[index].take())
            else {
                continue;
            };
            match add_master(&mut connection, &meta.prefix) {
                Ok((master, ids)) => {
                    node.master = master;
                    meta.master_ids = ids;
                }
                Err(e) => {
                    tracing::error!("{e}");
                    state.parked[index] = Some(node);
                    continue;
                }
            }
            for cell in node.tracks.iter_mut() {
                *cell = None;
            }
            // A SetBuffers the lost server never ran: the meta follows the node's own buffers.
            meta.chunk = node.buffers.chunk();
            for (&slot, track) in meta.tracks.iter_mut() {
                let added = add_track(
                    &mut connection,
                    &meta.prefix,
                    &track.base,
                    track.channels,
                    self.direct_outs,
                );
                match added {
                    Ok(added) => {
                        track.set_ports(&added);
                        if let Some(cell) = node.tracks.get_mut(slot) {
                            *cell = Some(Box::new(added.ports));
                        }
                    }
                    Err(e) => tracing::error!("{e}"),
                }
            }
            if let Err(rtrb::PushError::Full(GraphCommand::Attach { node, .. })) = connection
                .commands
                .push(GraphCommand::Attach { index, node })
            {
                state.parked[index] = Some(node);
                continue;
            }
            for track in meta.tracks.values_mut() {
                track.pending = match connection.link_input(&track.port_ids, &track.input) {
                    Ok(complete) => !complete,
                    Err(e) => {
                        tracing::warn!("restoring the input of track {:?}: {e}", track.base);
                        true
                    }
                };
            }
            meta.outputs_pending = link_outputs(&mut connection, meta);
            meta.lost_pending = false;
            meta.restored_pending = true;
            meta.xruns_seen = connection.signals.xruns.load(Ordering::Relaxed);
        }
        state.connection = Some(connection);
    }
}

/// Adds the master outputs of a session and waits for their registry ids.
fn add_master(
    connection: &mut Connection,
    prefix: &str,
) -> Result<([PortHandle; 2], Vec<u32>), BackendError> {
    let names = ["L", "R"].map(|side| format!("{prefix}.master_out_{side}"));
    let place = latency::Place {
        node: prefix.to_string(),
        track: None,
    };
    let (handles, ids) = add_ports(connection, &names, true, &place)?;
    Ok(([handles[0], handles[1]], ids))
}

/// The track part of a track's port names, unique among the node's other tracks.
fn unique_base(meta: &NodeMeta, slot: usize, name: &str) -> String {
    ports::unique_base(slot, name, |base| {
        meta.tracks
            .iter()
            .any(|(&other, track)| other != slot && track.base == base)
    })
}

/// A track's ports as added to the filter, with their registry ids.
struct AddedTrack {
    ports: TrackPorts,
    ids: Vec<u32>,
    out_ids: Vec<u32>,
}

impl TrackMeta {
    /// Takes the handles and registry ids of the track's new ports.
    fn set_ports(&mut self, added: &AddedTrack) {
        self.handles = added.ports.handles().collect();
        self.port_ids = added.ids.clone();
        self.out_ids = added.out_ids.clone();
    }
}

/// Adds a track's input ports and, with `direct_outs`, its direct outputs (`base`: the track
/// part of their names), and waits for their registry ids.
fn add_track(
    connection: &mut Connection,
    prefix: &str,
    base: &str,
    channels: u8,
    direct_outs: bool,
) -> Result<AddedTrack, BackendError> {
    let place = latency::Place {
        node: prefix.to_string(),
        track: Some(base.to_string()),
    };
    let inputs = track_port_names(prefix, base, channels);
    let (inputs, ids) = add_ports(connection, &inputs, false, &place)?;
    let (outs, out_ids) = if direct_outs {
        match add_ports(connection, &track_out_names(prefix, base), true, &place) {
            Ok((outs, out_ids)) => (Some([outs[0], outs[1]]), out_ids),
            Err(e) => {
                connection.remove_ports(inputs);
                return Err(e);
            }
        }
    } else {
        (None, Vec::new())
    };
    Ok(AddedTrack {
        ports: TrackPorts::new([inputs.first().copied(), inputs.get(1).copied()], outs),
        ids,
        out_ids,
    })
}

/// Adds a port for each of `names` (outputs or inputs) at `place` and waits for their registry
/// ids; on failure, removes the ones it added.
fn add_ports(
    connection: &mut Connection,
    names: &[String],
    output: bool,
    place: &latency::Place,
) -> Result<(Vec<PortHandle>, Vec<u32>), BackendError> {
    let mut handles = Vec::with_capacity(names.len());
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        let added = connection
            .add_port(name, output, place.clone())
            .and_then(|port| {
                handles.push(port);
                connection.port_id(name).ok_or_else(|| {
                    BackendError::failed(format!("PipeWire did not show the port {name:?} in time"))
                })
            });
        match added {
            Ok(id) => ids.push(id),
            Err(e) => {
                connection.remove_ports(handles);
                return Err(e);
            }
        }
    }
    Ok((handles, ids))
}

/// Removes every port of a node handed back by the process callback.
fn remove_node_ports(connection: &mut Connection, node: &Node) {
    let tracks = node.tracks.iter().flatten().flat_map(|t| t.handles());
    let all: Vec<PortHandle> = tracks.chain(node.master).collect();
    connection.remove_ports(all);
}

/// Reads the links of a node's `touched` ports into its tracks' input words and its outputs'
/// peers, reporting what changed; marks what waits for a program to start again.
fn read_touched(
    model: &Model,
    meta: &mut NodeMeta,
    touched: &[u32],
    events: &mut Vec<BackendEvent>,
) {
    let since = std::mem::replace(&mut meta.last_read, Instant::now());
    for (&slot, track) in meta.tracks.iter_mut() {
        if !track.port_ids.iter().any(|p| touched.contains(p)) {
            continue;
        }
        let input = model.read_input(&track.port_ids, &track.input, since);
        track.pending = parse_input(&input, track.channels)
            .unwrap_or_default()
            .iter()
            .flatten()
            .any(|source| model.away(source, since));
        if input != track.input {
            track.input = input.clone();
            events.push(BackendEvent::InputChanged {
                slot: u16::try_from(slot).unwrap_or(u16::MAX),
                input,
            });
        }
    }
    for (role, port) in meta.output_ports() {
        if !touched.contains(&port) {
            continue;
        }
        let saved = meta.outputs.get(&role).cloned().unwrap_or_default();
        let saved_peers: Vec<String> = saved
            .split('+')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        let peers = model.read_peers(port, &saved_peers, since);
        meta.outputs_pending |= saved_peers.iter().any(|p| model.away(p, since));
        if peers != saved {
            if peers.is_empty() {
                meta.outputs.remove(&role);
            } else {
                meta.outputs.insert(role.clone(), peers.clone());
            }
            events.push(BackendEvent::OutputsChanged { port: role, peers });
        }
    }
}

/// One session's handle on the shared graph.
struct PipeWireSession {
    graph: Arc<PipeWireGraph>,
    index: usize,
}

impl PipeWireSession {
    fn with_state<T>(&self, op: impl FnOnce(&PipeWireGraph, &mut GraphState, usize) -> T) -> T {
        let mut state = lock(&self.graph.state);
        op(&self.graph, &mut state, self.index)
    }
}

impl RunningBackend for PipeWireSession {
    /// Links the outputs (the master's and, with them, the tracks' direct outputs) as they were
    /// stored; peers that do not exist now are linked when they appear.
    fn restore_outputs(&mut self, saved: &[(String, String)]) {
        self.with_state(|_, state, index| {
            let Some(meta) = state.nodes[index].as_mut() else {
                return;
            };
            meta.outputs = saved.iter().cloned().collect();
            if let Some(connection) = state.connection.as_mut() {
                meta.outputs_pending = link_outputs(connection, meta);
            }
        });
    }

    fn info(&self) -> BackendInfo {
        self.graph.info(self.index)
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
        self.with_state(|graph, state, index| {
            let (prefix, existing, base) = match state.nodes[index].as_ref() {
                Some(meta) if slot < meta.max_tracks => {
                    let existing = meta.tracks.get(&slot).cloned();
                    let base = match &existing {
                        Some(track) => track.base.clone(),
                        None => unique_base(meta, slot, name),
                    };
                    (meta.prefix.clone(), existing, base)
                }
                _ => return Err(BackendError::failed(format!("no track slot {slot}"))),
            };
            let mut track = existing.clone().unwrap_or_else(|| TrackMeta {
                base,
                channels,
                input: String::new(),
                port_ids: Vec::new(),
                out_ids: Vec::new(),
                handles: Vec::new(),
                pending: false,
            });
            track.channels = channels;
            track.input = input.to_string();
            let Some(connection) = state.connection.as_mut() else {
                if let Some(meta) = state.nodes[index].as_mut() {
                    meta.tracks.insert(slot, track);
                }
                return Ok(engine_inputs(slot, channels));
            };
            let fresh = existing
                .as_ref()
                .is_none_or(|t| t.channels != channels || t.port_ids.is_empty());
            if fresh {
                let added = add_track(
                    connection,
                    &prefix,
                    &track.base,
                    channels,
                    graph.direct_outs,
                )?;
                track.set_ports(&added);
                if let Err(rtrb::PushError::Full(GraphCommand::SetTrack {
                    ports: Some(ports),
                    ..
                })) = connection.commands.push(GraphCommand::SetTrack {
                    index,
                    slot,
                    ports: Some(Box::new(added.ports)),
                }) {
                    connection.remove_ports(ports.handles().collect::<Vec<_>>());
                    return Err(BackendError::failed("the PipeWire command queue is full"));
                }
            }
            // Control checked the word; a source that has gone since (a synth not started
            // yet, when a session reopens) keeps the word and is linked when it appears.
            track.pending = match connection.link_input(&track.port_ids, input) {
                Ok(complete) => !complete,
                Err(e) => {
                    tracing::warn!("track {name:?}: {e}");
                    true
                }
            };
            if let Some(meta) = state.nodes[index].as_mut() {
                meta.tracks.insert(slot, track);
                // New direct outputs are linked like their roles were.
                meta.outputs_pending = link_outputs(connection, meta);
            }
            Ok(engine_inputs(slot, channels))
        })
    }

    fn rename_track(&mut self, slot: u16, name: &str) -> Result<(), BackendError> {
        let slot = usize::from(slot);
        self.with_state(|graph, state, index| {
            let Some(meta) = state.nodes[index].as_mut() else {
                return Ok(());
            };
            let prefix = meta.prefix.clone();
            let base = unique_base(meta, slot, name);
            let Some(track) = meta.tracks.get_mut(&slot) else {
                return Ok(());
            };
            if track.base == base {
                return Ok(());
            }
            let Some(connection) = state.connection.as_mut() else {
                track.base = base;
                return Ok(());
            };
            // PipeWire shows a port's name as the registry announced it, so the track gets new
            // ports. They replace the old ones in the process callback first and are linked
            // like them after: a filter input that is linked but not run for a few cycles gets
            // no buffers from then on (its track would stay silent), so no linked port may wait
            // outside the callback. The track misses the cycles its new links take to come up
            // (a few milliseconds). The old ports are removed when the callback hands them back.
            let added = add_track(
                connection,
                &prefix,
                &base,
                track.channels,
                graph.direct_outs,
            )?;
            let handles: Vec<PortHandle> = added.ports.handles().collect();
            if let Err(rtrb::PushError::Full(_)) =
                connection.commands.push(GraphCommand::SetTrack {
                    index,
                    slot,
                    ports: Some(Box::new(added.ports)),
                })
            {
                connection.remove_ports(handles);
                return Err(BackendError::failed("the PipeWire command queue is full"));
            }
            track.base = base;
            track.handles = handles;
            track.port_ids = added.ids;
            track.out_ids = added.out_ids;
            track.pending = match connection.link_input(&track.port_ids, &track.input) {
                Ok(complete) => !complete,
                Err(e) => {
                    tracing::warn!("track {name:?}: {e}");
                    true
                }
            };
            meta.outputs_pending = link_outputs(connection, meta);
            Ok(())
        })
    }

    fn remove_track(&mut self, slot: u16) {
        let slot = usize::from(slot);
        self.with_state(|_, state, index| {
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

    /// Reports cycles the node missed as xruns (a `pw_filter` cannot read its driver's own
    /// xrun count), a lost or restored server, and links changed by other programs; links
    /// inputs and outputs to saved peers that have appeared.
    fn poll(&mut self, xruns: &dyn Fn(u64)) -> Vec<BackendEvent> {
        self.with_state(|graph, state, index| {
            graph.service(state);
            let mut events = Vec::new();
            // The ports of the other sessions, whose touched links are theirs to read.
            let others: Vec<u32> = state
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != index)
                .flat_map(|(_, meta)| meta.iter())
                .flat_map(|meta| {
                    meta.output_ports().into_iter().map(|(_, id)| id).chain(
                        meta.tracks
                            .values()
                            .flat_map(|t| t.port_ids.iter().copied()),
                    )
                })
                .collect();
            let Some(meta) = state.nodes[index].as_mut() else {
                return events;
            };
            if std::mem::take(&mut meta.lost_pending) {
                events.push(BackendEvent::Lost);
            }
            if std::mem::take(&mut meta.restored_pending) {
                events.push(BackendEvent::Restored);
            }
            let Some(connection) = state.connection.as_mut() else {
                return events;
            };
            let total = connection.signals.xruns.load(Ordering::Relaxed);
            if total > meta.xruns_seen {
                xruns(total - meta.xruns_seen);
                meta.xruns_seen = total;
            }
            {
                let mut model = lock(&connection.signals.model);
                if !model.settled() {
                    return events;
                }
                let touched = std::mem::take(&mut model.touched);
                read_touched(&model, meta, &touched, &mut events);
                // Touched ports of other programs are forgotten.
                model
                    .touched
                    .extend(touched.into_iter().filter(|port| others.contains(port)));
            }
            // Links to programs that have started again, now that every change of the node's
            // links is read (an unlink by hand is not undone).
            for track in meta.tracks.values_mut().filter(|t| t.pending) {
                if !connection.source_appeared(&track.port_ids, &track.input) {
                    continue;
                }
                match connection.link_input(&track.port_ids, &track.input) {
                    Ok(complete) => {
                        track.pending = !complete;
                        tracing::info!("linked the input of track {:?} again", track.base);
                    }
                    Err(e) => {
                        track.pending = false;
                        tracing::warn!("restoring the input of track {:?}: {e}", track.base);
                    }
                }
            }
            let outputs: Vec<u32> = meta.output_ports().into_iter().map(|(_, id)| id).collect();
            if meta.outputs_pending && connection.quiet(&outputs) {
                meta.outputs_pending = link_outputs(connection, meta);
            }
            events
        })
    }

    fn is_running(&self) -> bool {
        self.graph.is_running()
    }

    /// `poll` does the graph's housekeeping, which looks for a lost server.
    fn poll_may_wait(&self) -> bool {
        true
    }

    /// PipeWire has no transport to lead.
    fn lead_transport(&mut self, _request: TransportRequest) {}

    fn run_detached(&mut self, frames: usize) -> bool {
        self.with_state(|_, state, index| {
            let Some(node) = state.parked[index].as_mut() else {
                return false;
            };
            ports::run_silent(&mut node.processor, frames);
            true
        })
    }

    fn stop(self: Box<Self>) -> Option<Processor> {
        let index = self.index;
        let deadline = Instant::now() + DETACH_TIMEOUT;
        {
            let mut state = lock(&self.graph.state);
            if state.parked[index].is_none() {
                if let Some(connection) = state.connection.as_mut() {
                    let _ = connection.commands.push(GraphCommand::Detach { index });
                }
            }
        }
        loop {
            let mut state = lock(&self.graph.state);
            self.graph.service(&mut state);
            if let Some(node) = state.parked[index].take() {
                state.nodes[index] = None;
                if let Some(connection) = state.connection.as_mut() {
                    remove_node_ports(connection, &node);
                }
                return Some(node.processor);
            }
            if Instant::now() >= deadline || state.connection.is_none() {
                tracing::error!("the PipeWire node did not hand the session's node back in time");
                state.nodes[index] = None;
                state.abandoned.push(index);
                return None;
            }
            drop(state);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let mut model = Model::default();
        model.nodes.insert(10, "feeder".into());
        model.nodes.insert(20, "overdub".into());
        let port = |node, name: &str, output| PortFacts {
            node,
            name: name.into(),
            output,
            audio: true,
            physical: false,
            added: Instant::now(),
        };
        model.ports.insert(11, port(10, "out_1", true));
        model.ports.insert(12, port(10, "out_2", true));
        model.ports.insert(21, port(20, "demo.track-1.in", false));
        model.ports.insert(22, port(20, "demo.master_out_L", true));
        model.nodes.insert(50, "speakers".into());
        model.ports.insert(51, port(50, "playback_1", false));
        model
    }

    #[test]
    fn the_model_names_ports_and_reads_links_back_as_input_words() {
        let mut model = model();
        assert_eq!(model.find("feeder:out_2").map(|(id, _)| id), Some(12));
        assert!(model.find("feeder:out_3").is_none());
        assert!(model.find("feede:out_1").is_none());
        assert_eq!(model.read_input(&[21], "none", Instant::now()), "none");
        model.links.insert(30, (12, 21));
        model.links.insert(31, (11, 21));
        assert_eq!(
            model.read_input(&[21], "none", Instant::now()),
            "feeder:out_1+feeder:out_2"
        );
    }

    #[test]
    fn a_stored_peer_stays_while_its_port_is_gone_but_not_once_unlinked_by_hand() {
        let mut model = model();
        model.links.insert(30, (11, 21));
        let stored = "feeder:out_1+synth:out_L";
        assert_eq!(
            model.read_input(&[21], stored, Instant::now()),
            "feeder:out_1+synth:out_L",
            "synth:out_L does not exist: its program is not running"
        );
        model.links.clear();
        assert_eq!(
            model.read_input(&[21], stored, Instant::now()),
            "synth:out_L",
            "feeder:out_1 exists and is no longer linked: unlinked by hand"
        );
        let before = Instant::now();
        model.ports.get_mut(&11).unwrap().added = before + Duration::from_millis(1);
        assert_eq!(
            model.read_input(&[21], "feeder:out_1", before),
            "feeder:out_1",
            "its program started again since the last read: the link went with it"
        );
        model.ports.remove(&11);
        assert_eq!(
            model.read_input(&[21], "feeder:out_1", Instant::now()),
            "feeder:out_1",
            "its program quit"
        );
        // An output reads the inputs it feeds.
        model.links.insert(32, (22, 51));
        let saved = ["other:in".to_string()];
        assert_eq!(
            model.read_peers(22, &saved, Instant::now()),
            "other:in+speakers:playback_1"
        );
        model.links.clear();
        assert_eq!(model.read_peers(22, &[], Instant::now()), "");
    }

    #[test]
    fn a_jump_of_the_driver_position_is_a_missed_cycle() {
        let (_commands, commands) = rtrb::RingBuffer::new(1);
        let (retired, _retired) = rtrb::RingBuffer::new(1);
        let mut process = FilterProcess {
            nodes: Box::new([]),
            commands,
            retired,
            expected: None,
        };
        // SAFETY: `spa_io_clock` is plain data; all zeros is a valid value.
        let mut clock: spa_sys::spa_io_clock = unsafe { std::mem::zeroed() };
        clock.id = 7;
        clock.duration = 256;
        let mut at = |position: u64, id: u32| {
            clock.position = position;
            clock.id = id;
            process.missed_cycles(&clock)
        };
        assert!(!at(1000, 7), "the first cycle");
        assert!(!at(1256, 7), "the next one");
        assert!(at(1768, 7), "one cycle went by without the node");
        assert!(!at(2024, 7));
        assert!(!at(90_000, 8), "another driver's clock starts anywhere");
    }

    #[test]
    fn library_versions_parse_as_numbers() {
        assert_eq!(parse_version("0.3.65"), (0, 3, 65));
        assert_eq!(parse_version("1.3.81"), (1, 3, 81));
        assert!(parse_version("1.4.2") >= (1, 3, 81));
        assert!(parse_version("1.2.7") < (1, 3, 81));
        assert_eq!(parse_version("1.10"), (1, 10, 0));
        assert_eq!(parse_version("1.3.81-12-gabc"), (1, 3, 81));
        assert_eq!(parse_version("x"), (0, 0, 0));
    }

    #[test]
    fn link_globals_touch_both_ports_both_ways_and_mark_the_registry_unsettled() {
        let mut model = model();
        let props = pw::properties::properties! {
            "link.output.port" => "11",
            "link.input.port" => "21",
        };
        assert!(model.settled(), "nothing changed yet");
        model.global(40, &ObjectType::Link, Some(props.dict()));
        assert!(!model.settled(), "a link just appeared");
        assert_eq!(model.links.get(&40), Some(&(11, 21)));
        assert_eq!(std::mem::take(&mut model.touched), vec![21, 11]);
        model.global_remove(40);
        assert!(model.links.is_empty());
        assert_eq!(model.touched, vec![21, 11]);
        // A port that goes is forgotten (nothing grows while no session looks).
        model.global_remove(21);
        model.global_remove(11);
        assert!(model.touched.is_empty());
        model.changed = Some(Instant::now() - REGISTRY_SETTLE);
        assert!(model.settled());
    }
}
