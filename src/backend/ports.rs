//! What the graphs with ports per track (JACK, PipeWire) share: the input-word grammar, the
//! port names, the node table their process callbacks keep (commands in, retired things out),
//! running a node's processor over a cycle ([`run_cycle`]) and while its server is gone
//! ([`run_silent`]), and reading whether the server runs a thread in real time
//! ([`realtime_priority`]). [`apply_commands`] and [`run_cycle`] are real-time code.

use std::collections::BTreeMap;
use std::ops::Range;

use super::{BackendError, PlanarInputs};
use crate::engine::{
    touched_zeros, AudioInputs, ProcessContext, Processor, TrackOutputs, NO_INPUT,
};

/// Splits an input word into one group of source port names per channel: `none` (or empty),
/// or one group per channel separated by `,`, each one or more ports separated by `+`
/// (`system:capture_1,system:capture_2`; `a:out+b:out`).
pub(super) fn parse_input(input: &str, channels: u8) -> Result<Vec<Vec<String>>, BackendError> {
    let input = input.trim();
    if input.is_empty() || input == "none" {
        return Ok(vec![Vec::new(); usize::from(channels)]);
    }
    let groups: Vec<Vec<String>> = input
        .split(',')
        .map(|group| {
            group
                .split('+')
                .map(str::trim)
                .filter(|p| !p.is_empty() && *p != "none")
                .map(str::to_string)
                .collect()
        })
        .collect();
    if groups.len() != usize::from(channels) {
        return Err(BackendError::input(format!(
            "a {} track takes {} input group(s) separated by ',', got {}: {input:?}",
            if channels == 2 { "stereo" } else { "mono" },
            channels,
            groups.len()
        )));
    }
    Ok(groups)
}

/// Short port names of a track: `<session>.<base>.in`, or `.in_L` and `.in_R` for stereo;
/// `base` is the track part (a slug of the track's name).
pub(super) fn track_port_names(prefix: &str, base: &str, channels: u8) -> Vec<String> {
    if channels >= 2 {
        vec![
            format!("{prefix}.{base}.in_L"),
            format!("{prefix}.{base}.in_R"),
        ]
    } else {
        vec![format!("{prefix}.{base}.in")]
    }
}

/// The engine input channels of track `slot` on a graph with ports per track: the node copies
/// channel `c` of track `slot` into engine channel `2 × slot + c` ([`run_cycle`]).
pub(super) fn engine_inputs(slot: usize, channels: u8) -> [u16; 2] {
    let first = u16::try_from(2 * slot).unwrap_or(NO_INPUT);
    if channels >= 2 {
        [first, first.saturating_add(1)]
    } else {
        [first, NO_INPUT]
    }
}

/// Short names of a track's direct outputs: `<session>.<base>.out_L` and `.out_R`.
pub(super) fn track_out_names(prefix: &str, base: &str) -> [String; 2] {
    [
        format!("{prefix}.{base}.out_L"),
        format!("{prefix}.{base}.out_R"),
    ]
}

/// The role under which the direct output of the track in `slot` is stored with the session.
pub(super) fn track_out_role(slot: usize, side: &str) -> String {
    crate::store::track_output_role(u32::try_from(slot + 1).unwrap_or(u32::MAX), side)
}

/// The real-time priority of thread `tid` (0: the calling thread) when it runs `SCHED_FIFO` or
/// `SCHED_RR`, whether or not it also carries `SCHED_RESET_ON_FORK` (PipeWire's module-rt sets
/// it). `None` for any other policy, or a thread that has gone. Makes syscalls: not real-time
/// code.
pub(super) fn realtime_priority(tid: libc::pid_t) -> Option<i32> {
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: both calls only read the scheduling of thread `tid`; `param` is valid and outlives
    // the call. A thread that has gone answers -1.
    let policy = unsafe {
        libc::sched_getparam(tid, &mut param);
        libc::sched_getscheduler(tid)
    };
    matches!(
        policy & !libc::SCHED_RESET_ON_FORK,
        libc::SCHED_FIFO | libc::SCHED_RR
    )
    .then_some(param.sched_priority)
}

/// Forgets where the direct outputs of the track in `slot` went, as the track is removed (and
/// only then: a role without a port now, direct outputs turned off for instance, is kept). The
/// store deletes them with the track.
pub(super) fn forget_track_outputs(outputs: &mut BTreeMap<String, String>, slot: usize) {
    for side in ["L", "R"] {
        outputs.remove(&track_out_role(slot, side));
    }
}

/// The track part of a track's port names: its name's slug (`track` when nothing is left of
/// it), or, when `taken` says another track of the node has that already (names that differ
/// only in case or in letters the slug drops), the slug followed by the track's number
/// (`slot + 1`, then `+ 100` steps until free).
pub(super) fn unique_base(slot: usize, name: &str, taken: impl Fn(&str) -> bool) -> String {
    let mut slug = crate::control::validate::slug(name);
    if slug.is_empty() {
        slug = "track".into();
    }
    let mut base = slug.clone();
    let mut n = slot + 1;
    while taken(&base) {
        base = format!("{slug}-{n}");
        n += 100;
    }
    base
}

/// Locks a mutex of control-side graph state; a panic elsewhere while it was held leaves the
/// state usable (every update to it is a whole assignment).
pub(super) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `read` of what `mutex` guards, remembered in `last`, if nobody holds `mutex` now; else the
/// value last read. Never waits: for figures asked often from the control runtime (the period)
/// while a graph's housekeeping may hold its state for long.
pub(super) fn read_or_last<T>(
    mutex: &std::sync::Mutex<T>,
    last: &std::sync::atomic::AtomicU32,
    read: impl FnOnce(&T) -> u32,
) -> u32 {
    use std::sync::atomic::Ordering;
    let Some(guard) = try_lock(mutex) else {
        return last.load(Ordering::Relaxed);
    };
    let value = read(&guard);
    last.store(value, Ordering::Relaxed);
    value
}

/// [`lock`] if nobody holds `mutex` now; `None` instead of waiting.
pub(super) fn try_lock<T>(mutex: &std::sync::Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// A session's node as a process callback hosts it: its tracks' port sets can be swapped.
pub(super) trait HostedNode {
    /// One track's ports.
    type Ports;
    /// The port-set cell of track `slot`, if the node has that slot. Real-time safe.
    fn track_ports(&mut self, slot: usize) -> Option<&mut Option<Box<Self::Ports>>>;
    /// What the node's cycles work in. Real-time safe.
    fn buffers(&mut self) -> &mut NodeBuffers;
}

/// Commands from control to a process callback's node table.
pub(super) enum NodeCommand<N, P> {
    /// Puts a node in slot `index`.
    Attach { index: usize, node: Box<N> },
    /// Takes the node out of slot `index` and hands it back.
    Detach { index: usize },
    /// Replaces the ports of track `slot` of node `index`.
    SetTrack {
        index: usize,
        slot: usize,
        ports: Option<Box<P>>,
    },
    /// Replaces the buffers of node `index` (made for the server's longer cycles).
    SetBuffers {
        index: usize,
        buffers: Box<NodeBuffers>,
    },
}

/// Sends node `index`, whose buffers take `chunk` frames, buffers for the server's
/// `period`-frame cycles when they outgrew its own ([`NodeBuffers::grown`]); `chunk` follows
/// once the command is queued (a full queue is tried again at the next call). **Not**
/// real-time safe (allocates).
pub(super) fn grow_node_buffers<N>(
    commands: &mut rtrb::Producer<NodeCommand<N, impl Sized>>,
    index: usize,
    max_tracks: usize,
    chunk: &mut usize,
    period: usize,
) {
    if let Some(buffers) = NodeBuffers::grown(max_tracks, *chunk, period) {
        let grown = buffers.chunk();
        if commands
            .push(NodeCommand::SetBuffers { index, buffers })
            .is_ok()
        {
            tracing::info!(
                node = index,
                period,
                "a node's buffers grow to {grown}-frame chunks for the server's longer cycles"
            );
            *chunk = grown;
        }
    }
}

/// What a process callback hands back to be freed (or unregistered) off the real-time thread.
pub(super) enum Retired<N, P> {
    /// A detached or replaced node.
    Node { index: usize, node: Box<N> },
    /// A track's replaced ports.
    Track(Box<P>),
    /// A node's replaced buffers.
    Buffers(Box<NodeBuffers>),
}

/// Applies queued commands to `nodes` while the hand-back queue has room for what they
/// replace (so nothing is ever dropped on the real-time thread). **Real-time safe**.
pub(super) fn apply_commands<N: HostedNode>(
    nodes: &mut [Option<Box<N>>],
    commands: &mut rtrb::Consumer<NodeCommand<N, N::Ports>>,
    retired: &mut rtrb::Producer<Retired<N, N::Ports>>,
) {
    while retired.slots() > 0 {
        let Ok(command) = commands.pop() else {
            return;
        };
        let out = match command {
            NodeCommand::Attach { index, node } => match nodes.get_mut(index) {
                Some(cell) => cell
                    .replace(node)
                    .map(|old| Retired::Node { index, node: old }),
                None => Some(Retired::Node { index, node }),
            },
            NodeCommand::Detach { index } => nodes
                .get_mut(index)
                .and_then(Option::take)
                .map(|node| Retired::Node { index, node }),
            NodeCommand::SetTrack { index, slot, ports } => {
                match nodes.get_mut(index).and_then(|node| node.as_deref_mut()) {
                    Some(node) => match node.track_ports(slot) {
                        Some(cell) => {
                            let old = std::mem::replace(cell, ports);
                            // A channel the new ports lack is not copied each cycle: it reads
                            // as silence, not as what the slot's last ports left there.
                            node.buffers().silence_track(slot);
                            old.map(Retired::Track)
                        }
                        None => ports.map(Retired::Track),
                    },
                    None => ports.map(Retired::Track),
                }
            }
            NodeCommand::SetBuffers { index, mut buffers } => {
                if let Some(node) = nodes.get_mut(index).and_then(|node| node.as_deref_mut()) {
                    std::mem::swap(node.buffers(), &mut *buffers);
                }
                Some(Retired::Buffers(buffers))
            }
        };
        if let Some(out) = out {
            // Room was checked above: one command retires at most one thing.
            let _ = retired.push(out);
        }
    }
}

/// A track's input buffers for the current cycle, one per channel: set on the real-time thread
/// at the start of every cycle and read by [`run_cycle`] during that cycle only. `None` where
/// the track has no port (a mono track's second channel, which nothing reads, so nothing is
/// copied); null where the server gave a port no buffer (read as silence).
#[derive(Clone, Copy, Default)]
pub(super) struct CycleBuffers(pub [Option<*const f32>; 2]);

// SAFETY: the pointers are dereferenced only by `run_cycle`, on the real-time thread, during
// the cycle that set them; moving the (stale) values between threads reads nothing.
unsafe impl Send for CycleBuffers {}

/// The ports of a track as a process callback holds them: its buffers for this cycle.
pub(super) trait TrackBuffers {
    fn cycle_buffers(&self) -> &CycleBuffers;
}

/// A backend's per-track outputs (JACK's direct outputs) for one chunk of a cycle at a time.
pub(super) trait ChunkOutputs: TrackOutputs {
    /// Makes [`TrackOutputs::track_output`] answer frames `range` of the cycle's buffers.
    fn set_chunk(&mut self, range: Range<usize>);
    /// These outputs as the processor takes them.
    fn as_track_outputs(&mut self) -> &mut dyn TrackOutputs;
}

/// The shortest and longest chunk a node's buffers take ([`NodeBuffers::new`]).
const CHUNK_FRAMES: std::ops::RangeInclusive<usize> = 256..=2048;

/// What a node's cycle works in, allocated with the node: the tracks' inputs as copied from
/// their ports, and the master as the processor mixes it, one chunk of a cycle at a time.
pub(super) struct NodeBuffers {
    inputs: PlanarInputs,
    scratch: [Box<[f32]>; 2],
}

impl NodeBuffers {
    /// Buffers for a node of `max_tracks` tracks on a server running `period`-frame cycles:
    /// chunks of that period, within [`CHUNK_FRAMES`]. All of it is written once here, so
    /// sized to the period it is no larger than a cycle needs (128 KiB of inputs for 64 tracks
    /// at 256 frames). A longer cycle later runs in more chunks, and [`run_cycle`] then copies
    /// all tracks' inputs at once per chunk rather than per cycle, until the backend swaps in
    /// [`grown`](Self::grown) buffers. **Not** real-time safe (allocates).
    pub(super) fn new(max_tracks: usize, period: usize) -> Self {
        NodeBuffers::with_chunk(
            max_tracks,
            period.clamp(*CHUNK_FRAMES.start(), *CHUNK_FRAMES.end()),
        )
    }

    /// Buffers for a node whose buffers take `chunk` frames, now that the server runs
    /// `period`-frame cycles: `Some` when those are longer and a longer chunk is possible, so
    /// that [`run_cycle`] copies all tracks' inputs of a cycle at once again. **Not** real-time
    /// safe (allocates).
    pub(super) fn grown(max_tracks: usize, chunk: usize, period: usize) -> Option<Box<Self>> {
        (period > chunk && chunk < *CHUNK_FRAMES.end())
            .then(|| Box::new(NodeBuffers::new(max_tracks, period)))
    }

    /// Frames of each chunk these buffers take.
    pub(super) fn chunk(&self) -> usize {
        self.inputs.capacity()
    }

    /// Writes silence over all of track `slot`'s input channels. **Real-time safe**.
    pub(super) fn silence_track(&mut self, slot: usize) {
        for channel in [2 * slot, 2 * slot + 1] {
            self.inputs.silence(channel);
        }
    }

    /// Buffers for chunks of `chunk` frames (at least 1).
    fn with_chunk(max_tracks: usize, chunk: usize) -> Self {
        let chunk = chunk.max(1);
        NodeBuffers {
            inputs: PlanarInputs::new(2 * max_tracks, chunk),
            scratch: [touched_zeros(chunk), touched_zeros(chunk)],
        }
    }
}

/// Runs `processor` over a cycle of `frames` frames, a chunk of `buffers` at a time. Each
/// chunk first copies every track's input buffers into the node's inputs (channel `2 × slot +
/// c` is channel `c` of track `slot`; silence where a buffer is null, untouched where the track
/// has no such port), then runs the processor
/// into the node's scratch master, then copies that to the `master` buffers (a null one is
/// left out); the backend's per-track `outputs` are told each chunk's range.
///
/// The copy takes all tracks' inputs of a chunk before any processing. An upstream client late
/// past its deadline may still be writing its buffers while this one runs; copied together,
/// the tracks can come out a period apart only if the copy itself meets the late writer.
/// Reading the ports in place while processing spread each track's read over the period, and
/// under xruns tracks of one take came out a period apart far more often. The master goes
/// through the scratch buffers so the processor never holds a port buffer: a null one is simply not
/// copied to, and no `&mut` reaches memory that an input of the node's own may share.
/// **Real-time safe**.
///
/// # Safety
/// Every track's [`CycleBuffers`] were set in this cycle, each non-null one aligned and
/// holding at least `frames` samples (which a late upstream client may still be writing: the
/// copy then reads a mix of two periods, the race JACK and PipeWire allow); each non-null
/// `master` pointer is aligned, may be written for `frames` samples, and no reference to those
/// samples is alive during the call.
pub(super) unsafe fn run_cycle<P: TrackBuffers>(
    processor: &mut Processor,
    tracks: &[Option<Box<P>>],
    frames: usize,
    buffers: &mut NodeBuffers,
    master: [*mut f32; 2],
    mut outputs: Option<&mut dyn ChunkOutputs>,
) {
    let NodeBuffers {
        inputs,
        scratch: [left, right],
    } = buffers;
    let chunk = inputs.capacity();
    let mut done = 0;
    while done < frames {
        let len = (frames - done).min(chunk);
        inputs.set_frames(len);
        for (slot, track) in tracks.iter().enumerate() {
            let Some(track) = track else { continue };
            for (channel, source) in track.cycle_buffers().0.iter().enumerate() {
                let Some(source) = *source else { continue };
                let target = inputs.channel_mut(2 * slot + channel);
                if source.is_null() {
                    target.fill(0.0);
                } else {
                    // SAFETY: by the contract above a non-null buffer holds `frames` samples,
                    // and `done + len <= frames`.
                    let source = unsafe { std::slice::from_raw_parts(source.add(done), len) };
                    let n = source.len().min(target.len());
                    target[..n].copy_from_slice(&source[..n]);
                }
            }
        }
        let (left, right) = (&mut left[..len], &mut right[..len]);
        if let Some(outputs) = outputs.as_deref_mut() {
            // Every track's outputs start the chunk silent (a track whose ports arrived before
            // the processor installed it sends silence), once the chunk's inputs are copied: an
            // input patched from one of the node's own direct outputs shares its buffer on
            // JACK, and so reads the previous cycle's samples (a bounce a period late).
            outputs.set_chunk(done..done + len);
            for slot in 0..tracks.len() {
                if let Some((left, right)) = outputs.track_output(slot) {
                    left.fill(0.0);
                    right.fill(0.0);
                }
            }
        }
        processor.process(&mut ProcessContext {
            frames: len,
            inputs,
            master_left: left,
            master_right: right,
            track_outputs: outputs.as_deref_mut().map(|o| o.as_track_outputs()),
        });
        for (output, mix) in master.iter().zip([&*left, &*right]) {
            if !output.is_null() {
                // SAFETY: by the contract above, `output` may be written for `frames` samples
                // and `done + len <= frames`; no other reference to it is alive.
                unsafe { std::slice::from_raw_parts_mut(output.add(done), len) }
                    .copy_from_slice(mix);
            }
        }
        done += len;
    }
}

/// No input channels: every track reads silence.
struct NoInputs;

impl AudioInputs for NoInputs {
    fn channel_count(&self) -> usize {
        0
    }

    fn channel(&self, _index: usize) -> &[f32] {
        &[]
    }
}

/// Runs `processor` over `frames` frames of silence and drops the master: how a node parked
/// while its server is gone still takes queued commands (a stop) into effect. Allocates the
/// master buffers: not real-time code.
pub(super) fn run_silent(processor: &mut Processor, frames: usize) {
    let mut left = vec![0.0; frames];
    let mut right = vec![0.0; frames];
    processor.process(&mut ProcessContext {
        frames,
        inputs: &NoInputs,
        master_left: &mut left,
        master_right: &mut right,
        track_outputs: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_words_split_into_channel_groups() {
        assert_eq!(
            parse_input("none", 2).unwrap(),
            vec![Vec::<String>::new(); 2]
        );
        assert_eq!(
            parse_input("a:1+b:2, c:3", 2).unwrap(),
            vec![
                vec!["a:1".to_string(), "b:2".into()],
                vec!["c:3".to_string()]
            ]
        );
        let error = parse_input("a:1,b:2", 1).unwrap_err();
        assert!(error.invalid_input, "{error}");
    }

    #[test]
    fn port_names_carry_session_and_track() {
        assert_eq!(
            track_port_names("demo", "track-1", 1),
            vec!["demo.track-1.in"]
        );
        assert_eq!(
            track_port_names("demo", "keys", 2),
            vec!["demo.keys.in_L", "demo.keys.in_R"]
        );
    }

    struct TestNode {
        tracks: Vec<Option<Box<u8>>>,
        buffers: NodeBuffers,
    }

    impl HostedNode for TestNode {
        type Ports = u8;
        fn track_ports(&mut self, slot: usize) -> Option<&mut Option<Box<u8>>> {
            self.tracks.get_mut(slot)
        }
        fn buffers(&mut self) -> &mut NodeBuffers {
            &mut self.buffers
        }
    }

    /// Whether every sample of `channel` of `buffers` reads as silence.
    fn silent(buffers: &NodeBuffers, channel: usize) -> bool {
        buffers.inputs.channel(channel).iter().all(|&s| s == 0.0)
    }

    #[test]
    fn commands_swap_nodes_ports_and_buffers_and_hand_back_what_they_replace() {
        let (mut tx, mut commands) = rtrb::RingBuffer::new(8);
        let (mut retired, mut back) = rtrb::RingBuffer::new(1);
        let mut nodes: Vec<Option<Box<TestNode>>> = vec![None, None];
        // A node of one track whose 4-frame buffers hold no silence.
        let node = |ports: Option<u8>| {
            let mut buffers = NodeBuffers::with_chunk(1, 4);
            buffers.inputs.set_frames(4);
            for channel in 0..2 {
                buffers.inputs.channel_mut(channel).fill(7.0);
            }
            Box::new(TestNode {
                tracks: vec![ports.map(Box::new), None],
                buffers,
            })
        };
        let buffers = |chunk| Box::new(NodeBuffers::with_chunk(1, chunk));
        for command in [
            NodeCommand::Attach {
                index: 0,
                node: node(Some(1)),
            },
            NodeCommand::SetTrack {
                index: 0,
                slot: 0,
                ports: Some(Box::new(2)),
            },
            NodeCommand::SetBuffers {
                index: 0,
                buffers: buffers(8),
            },
            NodeCommand::SetBuffers {
                index: 1,
                buffers: buffers(16),
            },
            NodeCommand::Attach {
                index: 5,
                node: node(None),
            },
            NodeCommand::Detach { index: 0 },
        ] {
            assert!(tx.push(command).is_ok());
        }
        let mut handed = Vec::new();
        for _ in 0..8 {
            // One hand-back place: each round applies until it is full, then the test empties it.
            apply_commands(&mut nodes, &mut commands, &mut retired);
            while let Ok(item) = back.pop() {
                handed.push(match item {
                    Retired::Node { index, node } => format!(
                        "node {index} {:?}, chunk {}, silent {}",
                        node.tracks[0],
                        node.buffers.chunk(),
                        silent(&node.buffers, 0) && silent(&node.buffers, 1)
                    ),
                    Retired::Track(ports) => format!("ports {ports}"),
                    Retired::Buffers(buffers) => format!(
                        "buffers, chunk {}, silent {}",
                        buffers.chunk(),
                        silent(&buffers, 0) && silent(&buffers, 1)
                    ),
                });
            }
        }
        assert_eq!(
            handed,
            [
                "ports 1",
                // Node 0's first buffers: new ports in track 0 silenced its channels.
                "buffers, chunk 4, silent true",
                // No node 1: the buffers come back as they went.
                "buffers, chunk 16, silent true",
                "node 5 None, chunk 4, silent false",
                "node 0 Some(2), chunk 8, silent true",
            ]
        );
        assert!(nodes.iter().all(Option::is_none));
    }

    /// A track's ports as plain buffers.
    struct Buffers(CycleBuffers);

    impl TrackBuffers for Buffers {
        fn cycle_buffers(&self) -> &CycleBuffers {
            &self.0
        }
    }

    /// Per-track outputs over plain buffers, answering the chunk's range like JACK's.
    struct Outs {
        left: Vec<f32>,
        right: Vec<f32>,
        range: Range<usize>,
        chunks: Vec<Range<usize>>,
    }

    impl TrackOutputs for Outs {
        fn track_output(&mut self, slot: usize) -> Option<(&mut [f32], &mut [f32])> {
            (slot == 1).then_some(())?;
            let range = self.range.clone();
            Some((&mut self.left[range.clone()], &mut self.right[range]))
        }
    }

    impl ChunkOutputs for Outs {
        fn set_chunk(&mut self, range: Range<usize>) {
            self.chunks.push(range.clone());
            self.range = range;
        }

        fn as_track_outputs(&mut self) -> &mut dyn TrackOutputs {
            self
        }
    }

    #[test]
    fn run_cycle_carries_every_frame_through_chunks_and_splits() {
        use crate::engine::{engine, ControlToEngine, EngineConfig, Monitoring, TrackParams};
        // The node's buffers take 100 frames, the processor splits at 64: a 150-frame cycle
        // runs as 64 + 36 and 50.
        let (mut processor, mut handle, _markers) = engine(EngineConfig::new(48_000, 64, 2));
        let (capture, _ring) = rtrb::RingBuffer::new(1024);
        let params = TrackParams {
            channels: 1,
            input: [3, 0],
            armed: true,
            input_gain: 1.0,
            level: 1.0,
            pan: -1.0,
            muted: false,
            soloed: false,
            monitoring: Monitoring::Input,
        };
        let slot = Box::new(crate::engine::TrackSlot { params, capture });
        assert!(handle
            .send(ControlToEngine::InstallTrack { track: 1, slot })
            .is_ok());

        const FRAMES: usize = 150;
        let ramp: Vec<f32> = (0..FRAMES).map(|i| i as f32 / 1000.0).collect();
        let noise = vec![9.0f32; FRAMES];
        // The mono track in slot 1 reads input 3, slot 1's second buffer (the ramp); input 2,
        // the first, holds noise that must not reach the mix.
        let tracks = vec![
            None,
            Some(Box::new(Buffers(CycleBuffers([
                Some(noise.as_ptr()),
                Some(ramp.as_ptr()),
            ])))),
        ];
        let mut master = [vec![-1.0f32; FRAMES], vec![-1.0f32; FRAMES]];
        let mut outs = Outs {
            left: vec![-1.0; FRAMES],
            right: vec![-1.0; FRAMES],
            range: 0..0,
            chunks: Vec::new(),
        };
        // SAFETY: the track's buffers and the master hold FRAMES samples, alive and otherwise
        // unreferenced for the call.
        unsafe {
            run_cycle(
                &mut processor,
                &tracks,
                FRAMES,
                &mut NodeBuffers::with_chunk(2, 100),
                [master[0].as_mut_ptr(), master[1].as_mut_ptr()],
                Some(&mut outs),
            )
        };
        assert_eq!(outs.chunks, [0..100, 100..150]);
        // Panned hard left at unity: the left master and direct output carry the ramp itself.
        assert_eq!(master[0], ramp);
        assert!(master[1].iter().all(|&s| s.abs() < 1e-6), "{:?}", master[1]);
        assert_eq!(outs.left, ramp);
        assert!(outs.right.iter().all(|&s| s.abs() < 1e-6));
    }

    #[test]
    fn run_cycle_reads_a_null_buffer_as_silence_and_leaves_a_missing_port_alone() {
        let (mut processor, _handle, _markers) =
            crate::engine::engine(crate::engine::EngineConfig::new(48_000, 64, 2));
        let mut buffers = NodeBuffers::with_chunk(2, 64);
        buffers.inputs.set_frames(64);
        for channel in 0..4 {
            buffers.inputs.channel_mut(channel).fill(7.0);
        }
        // Slot 0: a port the server gave no buffer, and no second port.
        let tracks = vec![
            Some(Box::new(Buffers(CycleBuffers([
                Some(std::ptr::null()),
                None,
            ])))),
            None,
        ];
        // SAFETY: no buffer is dereferenced: the track's one pointer and the master's are null.
        unsafe {
            run_cycle(
                &mut processor,
                &tracks,
                64,
                &mut buffers,
                [std::ptr::null_mut(); 2],
                None,
            )
        };
        assert!(buffers.inputs.channel(0).iter().all(|&s| s == 0.0));
        assert!(buffers.inputs.channel(1).iter().all(|&s| s == 7.0));

        // New ports in the slot: both of its channels read as silence until copied into.
        buffers.silence_track(0);
        assert!(buffers.inputs.channel(1).iter().all(|&s| s == 0.0));
        assert!(buffers.inputs.channel(2).iter().all(|&s| s == 7.0));
    }
}
