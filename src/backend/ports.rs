//! What the graphs with ports per track (JACK, PipeWire) share: the input-word grammar, the
//! port names, the node table their process callbacks keep (commands in, retired things out),
//! and running a node's processor while its server is gone. Only [`apply_commands`] is
//! real-time code.

use super::BackendError;
use crate::engine::{AudioInputs, ProcessContext, Processor};

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
}

/// What a process callback hands back to be freed (or unregistered) off the real-time thread.
pub(super) enum Retired<N, P> {
    /// A detached or replaced node.
    Node { index: usize, node: Box<N> },
    /// A track's replaced ports.
    Track(Box<P>),
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
                let cell = nodes
                    .get_mut(index)
                    .and_then(|node| node.as_mut())
                    .and_then(|node| node.track_ports(slot));
                match cell {
                    Some(cell) => std::mem::replace(cell, ports).map(Retired::Track),
                    None => ports.map(Retired::Track),
                }
            }
        };
        if let Some(out) = out {
            // Room was checked above: one command retires at most one thing.
            let _ = retired.push(out);
        }
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
    }

    impl HostedNode for TestNode {
        type Ports = u8;
        fn track_ports(&mut self, slot: usize) -> Option<&mut Option<Box<u8>>> {
            self.tracks.get_mut(slot)
        }
    }

    #[test]
    fn commands_swap_nodes_and_ports_and_hand_back_what_they_replace() {
        let (mut tx, mut commands) = rtrb::RingBuffer::new(8);
        let (mut retired, mut back) = rtrb::RingBuffer::new(1);
        let mut nodes: Vec<Option<Box<TestNode>>> = vec![None, None];
        let node = |ports: Option<u8>| {
            Box::new(TestNode {
                tracks: vec![ports.map(Box::new), None],
            })
        };
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
            NodeCommand::Attach {
                index: 5,
                node: node(None),
            },
            NodeCommand::Detach { index: 0 },
        ] {
            assert!(tx.push(command).is_ok());
        }
        let mut handed = Vec::new();
        for _ in 0..4 {
            // One hand-back place: each round applies until it is full, then the test empties it.
            apply_commands(&mut nodes, &mut commands, &mut retired);
            while let Ok(item) = back.pop() {
                handed.push(match item {
                    Retired::Node { index, node } => format!("node {index} {:?}", node.tracks[0]),
                    Retired::Track(ports) => format!("ports {ports}"),
                });
            }
        }
        assert_eq!(handed, ["ports 1", "node 5 None", "node 0 Some(2)"]);
        assert!(nodes.iter().all(Option::is_none));
    }
}
