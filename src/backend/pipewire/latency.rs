//! Port latencies of the PipeWire node.
//!
//! The server tells each port of the filter the latency of what it is linked with, as a
//! `SPA_PARAM_Latency` parameter: an input learns the *capture* latency of its sources (how long
//! ago the first sample of a cycle met the microphone), an output the *playback* latency of its
//! sinks (how long until the first sample of a cycle reaches the speaker). Each is a range in
//! quanta, frames and nanoseconds (`spa_latency_info`), so it follows the graph's quantum.
//!
//! The node sets `PW_FILTER_FLAG_CUSTOM_LATENCY` so these parameters reach overdub (PipeWire's
//! own algorithm keeps them to itself, and would mix every session's ports). [`Latencies`]
//! therefore also passes them on, along the way the signal flows through the node: a session's
//! master outputs report the combined capture latency of all its tracks' inputs, a track's
//! direct outputs that of its own inputs, and a track's inputs the combined playback latency of
//! the outputs they feed (the master's and the track's own). Combined means the shortest
//! minimum and the longest maximum, as PipeWire combines them. Programs downstream and
//! upstream, a DAW compensating for latency among them, read the whole chain.
//!
//! Nothing here runs on the real-time thread: the parameters arrive on the thread loop, and
//! ports are added and removed by control with the thread loop locked.

use std::collections::{BTreeSet, HashMap};
use std::ffi::c_void;
use std::ptr::NonNull;

use super::{pw_sys, spa_sys};

/// A port's latency parameter: direction (`SPA_DIRECTION_OUTPUT` for capture latency,
/// `SPA_DIRECTION_INPUT` for playback) and its range.
pub(super) type LatencyInfo = spa_sys::spa_latency_info;

/// Where a port of the filter sits in the signal flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Place {
    /// The session (its port names' prefix).
    pub node: String,
    /// The track (its port names' base), `None` for the master outputs.
    pub track: Option<String>,
}

/// What the peers of each port of the filter report and what overdub told each, keyed by the
/// port's `port_data` address.
#[derive(Default)]
pub(super) struct Latencies {
    ports: HashMap<usize, PortLatency>,
}

/// One port's entry in [`Latencies`].
struct PortLatency {
    output: bool,
    place: Place,
    /// The latency its peers reported: capture latency for an input, playback latency for an
    /// output (zero until they report one).
    reported: LatencyInfo,
    /// The latency overdub last set on it (the other direction's).
    told: Option<LatencyInfo>,
}

impl PortLatency {
    /// Whether the signal flows between these two ports through the node: an input feeds its
    /// session's master outputs and its own track's direct outputs.
    fn linked(&self, other: &PortLatency) -> bool {
        let (input, output) = match (self.output, other.output) {
            (false, true) => (self, other),
            (true, false) => (other, self),
            _ => return false,
        };
        input.place.node == output.place.node
            && (output.place.track.is_none() || output.place.track == input.place.track)
    }
}

/// Latency parameters to set on ports of the filter (see [`Update::apply`]).
#[must_use = "an update does nothing until it is applied"]
#[derive(Default)]
pub(super) struct Update {
    ports: Vec<(usize, LatencyInfo)>,
}

/// The latency direction a port of the filter is told about by its peers: inputs hear of
/// capture latency (`SPA_DIRECTION_OUTPUT`, it flows downstream), outputs of playback latency.
fn heard_by(output: bool) -> spa_sys::spa_direction {
    if output {
        spa_sys::SPA_DIRECTION_INPUT
    } else {
        spa_sys::SPA_DIRECTION_OUTPUT
    }
}

/// No latency, in `direction`.
fn zero(direction: spa_sys::spa_direction) -> LatencyInfo {
    LatencyInfo {
        direction,
        min_quantum: 0.0,
        max_quantum: 0.0,
        min_rate: 0,
        max_rate: 0,
        min_ns: 0,
        max_ns: 0,
    }
}

/// Whether two latency parameters say the same.
fn same(a: &LatencyInfo, b: &LatencyInfo) -> bool {
    (a.direction, a.min_rate, a.max_rate, a.min_ns, a.max_ns)
        == (b.direction, b.min_rate, b.max_rate, b.min_ns, b.max_ns)
        && a.min_quantum.to_bits() == b.min_quantum.to_bits()
        && a.max_quantum.to_bits() == b.max_quantum.to_bits()
}

/// The largest latency `info` spans, in frames at `quantum` frames per cycle and `rate` frames
/// per second (as pipewire-jack converts it for `jack_port_get_latency_range`).
pub(super) fn max_frames(info: &LatencyInfo, quantum: u32, rate: u32) -> u32 {
    let frames = f64::from(info.max_quantum) * f64::from(quantum)
        + f64::from(info.max_rate)
        + info.max_ns as f64 * f64::from(rate) / 1e9;
    // Saturates: a nonsensical report cannot wrap to a small latency.
    frames.round() as u32
}

/// Reads a `SPA_PARAM_Latency` parameter.
///
/// # Safety
/// `param` is null or points to a valid pod that lives for the call.
pub(super) unsafe fn parse(param: *const spa_sys::spa_pod) -> Option<LatencyInfo> {
    if param.is_null() {
        return None;
    }
    let mut info = zero(spa_sys::SPA_DIRECTION_INPUT);
    // SAFETY: a valid pod (the caller's promise) and an `info` to write into.
    (unsafe { spa_sys::spa_latency_parse(param, &mut info) } >= 0).then_some(info)
}

impl Latencies {
    /// A new port of the filter at `place`, with no latency reported yet. Returns what it should
    /// report itself, and what the ports it is linked with should report now that it counts.
    pub(super) fn add(&mut self, port: NonNull<c_void>, output: bool, place: Place) -> Update {
        let key = port.as_ptr() as usize;
        self.ports.insert(
            key,
            PortLatency {
                output,
                place,
                reported: zero(heard_by(output)),
                told: None,
            },
        );
        let mut targets = self.linked_with(key);
        targets.insert(key);
        self.refresh(targets)
    }

    /// Ports removed from the filter (all of them already gone from it). Returns what the ports
    /// they were linked with should report now that they no longer count.
    pub(super) fn remove(&mut self, ports: impl IntoIterator<Item = NonNull<c_void>>) -> Update {
        let keys: Vec<usize> = ports.into_iter().map(|p| p.as_ptr() as usize).collect();
        let mut targets = BTreeSet::new();
        for key in &keys {
            targets.extend(self.linked_with(*key));
        }
        for key in &keys {
            self.ports.remove(key);
            targets.remove(key);
        }
        self.refresh(targets)
    }

    /// The peers of `port` report `info`. Returns what the ports it is linked with should
    /// report now; `None` for a port the filter does not have (any more), or a report of the
    /// latency `port` itself gives (PipeWire sends both directions).
    pub(super) fn reported(&mut self, port: NonNull<c_void>, info: LatencyInfo) -> Option<Update> {
        let key = port.as_ptr() as usize;
        let entry = self.ports.get_mut(&key)?;
        if info.direction != heard_by(entry.output) {
            return None;
        }
        entry.reported = info;
        let targets = self.linked_with(key);
        Some(self.refresh(targets))
    }

    /// The largest latency reported to session `node`'s inputs (capture) and to its outputs
    /// (playback), in frames at `quantum` and `rate`; 0 where nothing reports one.
    pub(super) fn frames(&self, node: &str, quantum: u32, rate: u32) -> (u32, u32) {
        let largest = |output: bool| {
            self.ports
                .values()
                .filter(|p| p.output == output && p.place.node == node)
                .map(|p| max_frames(&p.reported, quantum, rate))
                .max()
                .unwrap_or(0)
        };
        (largest(false), largest(true))
    }

    /// The ports the signal flows between `key` and (see [`PortLatency::linked`]).
    fn linked_with(&self, key: usize) -> BTreeSet<usize> {
        let Some(port) = self.ports.get(&key) else {
            return BTreeSet::new();
        };
        self.ports
            .iter()
            .filter(|(_, other)| port.linked(other))
            .map(|(&other, _)| other)
            .collect()
    }

    /// What each of `targets` should report (the combined latency of the ports it is linked
    /// with), for those whose figure changed since overdub last told them.
    fn refresh(&mut self, targets: BTreeSet<usize>) -> Update {
        let mut update = Update::default();
        for key in targets {
            let Some(port) = self.ports.get(&key) else {
                continue;
            };
            let direction = heard_by(!port.output);
            let mut info = zero(direction);
            // SAFETY: plain functions over the structs passed.
            unsafe {
                spa_sys::spa_latency_info_combine_start(&mut info, direction);
                for other in self.ports.values().filter(|other| port.linked(other)) {
                    spa_sys::spa_latency_info_combine(&mut info, &other.reported);
                }
                spa_sys::spa_latency_info_combine_finish(&mut info);
            }
            if port.told.is_some_and(|told| same(&told, &info)) {
                continue;
            }
            if let Some(port) = self.ports.get_mut(&key) {
                port.told = Some(info);
            }
            update.ports.push((key, info));
        }
        update
    }
}

impl Update {
    /// Sets the latency parameters on the ports of `filter` it names.
    ///
    /// # Safety
    /// `filter` is the live filter whose ports the [`Latencies`] that made this update tracks,
    /// and the caller holds its thread loop (the loop's own thread, or its lock), so none of
    /// those ports is removed meanwhile.
    pub(super) unsafe fn apply(&self, filter: *mut pw_sys::pw_filter) {
        for &(port, info) in &self.ports {
            let mut buffer = [0u8; 256];
            let size = buffer.len() as u32;
            // SAFETY: a zeroed builder is what `spa_pod_builder_init` initialises.
            let mut builder: spa_sys::spa_pod_builder = unsafe { std::mem::zeroed() };
            // SAFETY: the builder writes into `buffer` only, which outlives every use of the
            // pod; a latency object takes well under its 256 bytes, and a build that does not
            // fit returns null, which is checked.
            let param = unsafe {
                spa_sys::spa_pod_builder_init(&mut builder, buffer.as_mut_ptr().cast(), size);
                spa_sys::spa_latency_build(&mut builder, spa_sys::SPA_PARAM_Latency, &info)
            };
            if param.is_null() {
                continue;
            }
            let mut params = [param.cast_const()];
            // SAFETY: a port of the live filter (the caller's promise), its thread loop held;
            // PipeWire copies the parameter.
            unsafe {
                pw_sys::pw_filter_update_params(filter, port as *mut c_void, params.as_mut_ptr(), 1)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(max_quantum: f32, max_rate: u32, max_ns: u64) -> LatencyInfo {
        LatencyInfo {
            max_quantum,
            max_rate,
            max_ns,
            ..zero(spa_sys::SPA_DIRECTION_OUTPUT)
        }
    }

    fn playback(rate: u32) -> LatencyInfo {
        LatencyInfo {
            min_rate: rate,
            max_rate: rate,
            ..zero(spa_sys::SPA_DIRECTION_INPUT)
        }
    }

    fn port(n: usize) -> NonNull<c_void> {
        NonNull::new((n * 64) as *mut c_void).unwrap()
    }

    fn place(node: &str, track: Option<&str>) -> Place {
        Place {
            node: node.into(),
            track: track.map(Into::into),
        }
    }

    /// The ports an update sets, sorted, with the maximum frames (at quantum 256) of each.
    fn told(update: &Update) -> Vec<(usize, u32)> {
        let mut ports: Vec<(usize, u32)> = update
            .ports
            .iter()
            .map(|(key, info)| (key / 64, max_frames(info, 256, 48_000)))
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn frames_count_quanta_frames_and_nanoseconds() {
        // pipewire-jack sends a JACK client's 700 frames at quantum 256 as 2 quanta + 188.
        assert_eq!(max_frames(&capture(2.0, 188, 0), 256, 48_000), 700);
        assert_eq!(max_frames(&capture(0.0, 0, 1_000_000), 256, 48_000), 48);
        assert_eq!(max_frames(&capture(1.5, 10, 0), 1024, 48_000), 1546);
    }

    /// Session `a`: tracks `one` (input 1, direct outputs 3 and 4) and `two` (input 2, no direct
    /// outputs), master outputs 5 and 6. Session `b`: track `one` (input 7), master output 8.
    fn two_sessions() -> Latencies {
        let mut latencies = Latencies::default();
        for (n, output, node, track) in [
            (1, false, "a", Some("one")),
            (2, false, "a", Some("two")),
            (3, true, "a", Some("one")),
            (4, true, "a", Some("one")),
            (5, true, "a", None),
            (6, true, "a", None),
            (7, false, "b", Some("one")),
            (8, true, "b", None),
        ] {
            let _ = latencies.add(port(n), output, place(node, track));
        }
        latencies
    }

    #[test]
    fn capture_latency_flows_to_the_outputs_the_input_feeds_in_its_session() {
        let mut latencies = two_sessions();
        let update = latencies
            .reported(port(2), capture(2.0, 188, 0))
            .expect("an input's capture latency is passed on");
        // Track two feeds its session's master only.
        assert_eq!(told(&update), [(5, 700), (6, 700)]);
        let info = update.ports[0].1;
        assert_eq!(info.direction, spa_sys::SPA_DIRECTION_OUTPUT);
        // Track one reports none, so the shortest is none.
        assert_eq!((info.min_quantum, info.min_rate), (0.0, 0));
        assert_eq!(latencies.frames("a", 256, 48_000), (700, 0));
        assert_eq!(latencies.frames("b", 256, 48_000), (0, 0));

        // Track one's input feeds its direct outputs and the master; the master's longest
        // stays track two's, so only the direct outputs are told.
        let update = latencies.reported(port(1), capture(0.0, 100, 0)).unwrap();
        assert_eq!(told(&update), [(3, 100), (4, 100)]);
        // The same report again tells nobody anything.
        let update = latencies.reported(port(1), capture(0.0, 100, 0)).unwrap();
        assert!(told(&update).is_empty());

        // Its own direction's report on an input (what the input tells its peers) is not news.
        let own = LatencyInfo {
            direction: spa_sys::SPA_DIRECTION_INPUT,
            ..capture(9.0, 0, 0)
        };
        assert!(latencies.reported(port(2), own).is_none());
        assert!(latencies.reported(port(9), capture(9.0, 0, 0)).is_none());

        // Track two goes: the master carries track one's latency.
        let update = latencies.remove([port(2)]);
        assert_eq!(told(&update), [(5, 100), (6, 100)]);
        assert_eq!(latencies.frames("a", 256, 48_000), (100, 0));
    }

    #[test]
    fn playback_latency_flows_to_the_inputs_that_feed_the_output() {
        let mut latencies = two_sessions();
        let update = latencies.reported(port(5), playback(300)).unwrap();
        // Both of session a's tracks feed the master.
        assert_eq!(told(&update), [(1, 300), (2, 300)]);
        assert_eq!(update.ports[0].1.direction, spa_sys::SPA_DIRECTION_INPUT);
        // The shortest: the master's right side and the direct outputs report none.
        assert_eq!(update.ports[0].1.min_rate, 0);
        let update = latencies.reported(port(4), playback(500)).unwrap();
        assert_eq!(told(&update), [(1, 500)]);
        assert_eq!(latencies.frames("a", 256, 48_000), (0, 500));
        // That direct output goes: track one's input is back to the master's sinks' latency.
        let update = latencies.remove([port(4)]);
        assert_eq!(told(&update), [(1, 300)]);
        let _ = latencies.add(port(4), true, place("a", Some("one")));

        // A new track's input starts with what the master's sinks report.
        let update = latencies.add(port(9), false, place("a", Some("three")));
        assert_eq!(told(&update), [(9, 300)]);
        // A new output is told the capture latency of what feeds it, and its zero report
        // lowers the shortest playback latency of the inputs feeding it.
        let _ = latencies.reported(port(7), capture(0.0, 64, 0));
        let _ = latencies.reported(port(8), playback(200));
        let added = latencies.add(port(10), true, place("b", None));
        assert_eq!(told(&added), [(7, 200), (10, 64)]);
        let input = added
            .ports
            .iter()
            .find(|(key, _)| *key == 7 * 64)
            .unwrap()
            .1;
        assert_eq!((input.min_rate, input.max_rate), (0, 200));
    }
}
