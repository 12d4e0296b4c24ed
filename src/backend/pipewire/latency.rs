//! Port latencies of the PipeWire node.
//!
//! The server tells each port of the filter the latency of what it is linked with, as a
//! `SPA_PARAM_Latency` parameter: an input learns the *capture* latency of its sources (how long
//! ago the first sample of a cycle met the microphone), an output the *playback* latency of its
//! sinks (how long until the first sample of a cycle reaches the speaker). Each is a span in
//! quanta, frames and nanoseconds (`spa_latency_info`), so it follows the graph's quantum.
//!
//! The node sets `PW_FILTER_FLAG_CUSTOM_LATENCY` so these parameters reach overdub (PipeWire's
//! own algorithm keeps them to itself). [`Latencies`] therefore also passes them on as that
//! algorithm does: every output reports the combined capture latency of all inputs (what the
//! master and direct outputs carry was captured that long ago), and every input the combined
//! playback latency of all outputs. Programs linked downstream, a DAW compensating for
//! latency among them, read the same figures as before.
//!
//! Nothing here runs on the real-time thread: the parameters arrive on the thread loop, and
//! ports come and go on control's threads with the thread loop locked.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr::NonNull;

use super::{pw_sys, spa_sys};

/// A port's latency parameter: direction (`SPA_DIRECTION_OUTPUT` for capture latency,
/// `SPA_DIRECTION_INPUT` for playback) and its span.
pub(super) type LatencyInfo = spa_sys::spa_latency_info;

/// What the peers of each port of the filter report, keyed by the port's `port_data` address.
#[derive(Default)]
pub(super) struct Latencies {
    ports: HashMap<usize, PortLatency>,
}

/// One port's side of [`Latencies`].
struct PortLatency {
    output: bool,
    /// The latency its peers reported: capture latency for an input, playback latency for an
    /// output (zero until they report one).
    reported: LatencyInfo,
}

/// Latency parameters to set on ports of the filter (see [`Update::apply`]).
#[must_use = "an update does nothing until it is applied"]
pub(super) struct Update {
    info: LatencyInfo,
    ports: Vec<usize>,
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
    /// A new port of the filter, with no latency reported yet. Returns what it should report
    /// itself: the other side's combined latency.
    pub(super) fn add(&mut self, port: NonNull<c_void>, output: bool) -> Update {
        self.ports.insert(
            port.as_ptr() as usize,
            PortLatency {
                output,
                reported: zero(heard_by(output)),
            },
        );
        Update {
            info: self.combined(!output),
            ports: vec![port.as_ptr() as usize],
        }
    }

    /// Ports removed from the filter (all of them already gone from it). Returns what the
    /// ports left on the other side of each should report now that their latency no longer
    /// counts.
    pub(super) fn remove(
        &mut self,
        ports: impl IntoIterator<Item = NonNull<c_void>>,
    ) -> Vec<Update> {
        let mut sides = [false; 2];
        for port in ports {
            if let Some(removed) = self.ports.remove(&(port.as_ptr() as usize)) {
                sides[usize::from(removed.output)] = true;
            }
        }
        [false, true]
            .into_iter()
            .filter(|&output| sides[usize::from(output)])
            .map(|output| self.passed_on(output))
            .collect()
    }

    /// The peers of `port` report `info`. Returns what the other side should report now;
    /// `None` for a port the filter does not have (any more), or a report of the latency `port`
    /// itself gives (PipeWire sends both directions).
    pub(super) fn reported(&mut self, port: NonNull<c_void>, info: LatencyInfo) -> Option<Update> {
        let entry = self.ports.get_mut(&(port.as_ptr() as usize))?;
        if info.direction != heard_by(entry.output) {
            return None;
        }
        entry.reported = info;
        let output = entry.output;
        Some(self.passed_on(output))
    }

    /// The largest latency reported to the inputs (capture) and to the outputs (playback), in
    /// frames at `quantum` and `rate`; 0 where nothing reports one.
    pub(super) fn frames(&self, quantum: u32, rate: u32) -> (u32, u32) {
        let largest = |output: bool| {
            self.ports
                .values()
                .filter(|p| p.output == output)
                .map(|p| max_frames(&p.reported, quantum, rate))
                .max()
                .unwrap_or(0)
        };
        (largest(false), largest(true))
    }

    /// The latency the ports of one side were told, combined (shortest minimum, longest
    /// maximum), as PipeWire combines it.
    fn combined(&self, output: bool) -> LatencyInfo {
        let mut info = zero(heard_by(output));
        // SAFETY: plain functions over the structs passed.
        unsafe {
            spa_sys::spa_latency_info_combine_start(&mut info, heard_by(output));
            for port in self.ports.values().filter(|p| p.output == output) {
                spa_sys::spa_latency_info_combine(&mut info, &port.reported);
            }
            spa_sys::spa_latency_info_combine_finish(&mut info);
        }
        info
    }

    /// The combined latency of the `output` side, for every port of the other side.
    fn passed_on(&self, output: bool) -> Update {
        Update {
            info: self.combined(output),
            ports: self
                .ports
                .iter()
                .filter(|(_, p)| p.output != output)
                .map(|(&key, _)| key)
                .collect(),
        }
    }
}

impl Update {
    /// Sets the latency parameter on the ports of `filter` it names.
    ///
    /// # Safety
    /// `filter` is the live filter whose ports the [`Latencies`] that made this update tracks,
    /// and the caller holds its thread loop (the loop's own thread, or its lock), so none of
    /// those ports is removed meanwhile.
    pub(super) unsafe fn apply(&self, filter: *mut pw_sys::pw_filter) {
        if self.ports.is_empty() {
            return;
        }
        let mut buffer = [0u8; 256];
        let size = buffer.len() as u32;
        // SAFETY: a zeroed builder is what `spa_pod_builder_init` initialises.
        let mut builder: spa_sys::spa_pod_builder = unsafe { std::mem::zeroed() };
        // SAFETY: the builder writes into `buffer` only, which outlives every use of the pod;
        // a latency object takes well under its 256 bytes, and a build that does not fit
        // returns null, which is checked.
        let param = unsafe {
            spa_sys::spa_pod_builder_init(&mut builder, buffer.as_mut_ptr().cast(), size);
            spa_sys::spa_latency_build(&mut builder, spa_sys::SPA_PARAM_Latency, &self.info)
        };
        if param.is_null() {
            return;
        }
        let mut params = [param.cast_const()];
        for &port in &self.ports {
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

    fn port(n: usize) -> NonNull<c_void> {
        NonNull::new((n * 64) as *mut c_void).unwrap()
    }

    #[test]
    fn frames_count_quanta_frames_and_nanoseconds() {
        // pipewire-jack sends a JACK client's 700 frames at quantum 256 as 2 quanta + 188.
        assert_eq!(max_frames(&capture(2.0, 188, 0), 256, 48_000), 700);
        assert_eq!(max_frames(&capture(0.0, 0, 1_000_000), 256, 48_000), 48);
        assert_eq!(max_frames(&capture(1.5, 10, 0), 1024, 48_000), 1546);
    }

    #[test]
    fn the_outputs_carry_the_longest_capture_latency_of_the_inputs() {
        let mut latencies = Latencies::default();
        let _ = latencies.add(port(1), false);
        let _ = latencies.add(port(2), false);
        let first = latencies.add(port(3), true);
        assert_eq!(first.ports, vec![port(3).as_ptr() as usize]);
        assert_eq!(first.info.max_rate, 0);

        let update = latencies
            .reported(port(1), capture(2.0, 188, 0))
            .expect("an input's capture latency is passed on");
        assert_eq!(update.ports, vec![port(3).as_ptr() as usize]);
        assert_eq!(update.info.direction, spa_sys::SPA_DIRECTION_OUTPUT);
        assert_eq!((update.info.max_quantum, update.info.max_rate), (2.0, 188));
        // The unlinked input reports nothing, so the shortest is none.
        assert_eq!((update.info.min_quantum, update.info.min_rate), (0.0, 0));
        assert_eq!(latencies.frames(256, 48_000), (700, 0));

        // A new output starts with what the others report.
        let joined = latencies.add(port(4), true);
        assert_eq!(joined.info.max_rate, 188);

        // Its own direction's report on an input (what the input tells its peers) is not news.
        let own = LatencyInfo {
            direction: spa_sys::SPA_DIRECTION_INPUT,
            ..capture(9.0, 0, 0)
        };
        assert!(latencies.reported(port(1), own).is_none());
        assert!(latencies.reported(port(9), capture(9.0, 0, 0)).is_none());

        // The linked input goes: the outputs carry no capture latency any more.
        let updates = latencies.remove([port(1), port(7)]);
        assert_eq!(updates.len(), 1, "only inputs went");
        let update = &updates[0];
        let mut ports = update.ports.clone();
        ports.sort_unstable();
        assert_eq!(
            ports,
            vec![port(3).as_ptr() as usize, port(4).as_ptr() as usize]
        );
        assert_eq!(update.info.max_rate, 0);
        assert_eq!(latencies.frames(256, 48_000), (0, 0));
    }

    #[test]
    fn the_inputs_carry_the_longest_playback_latency_of_the_outputs() {
        let mut latencies = Latencies::default();
        let _ = latencies.add(port(1), false);
        let _ = latencies.add(port(2), true);
        let _ = latencies.add(port(3), true);
        let playback = |max_rate| LatencyInfo {
            max_rate,
            min_rate: max_rate,
            ..zero(spa_sys::SPA_DIRECTION_INPUT)
        };
        let _ = latencies.reported(port(2), playback(300));
        let update = latencies.reported(port(3), playback(100)).unwrap();
        assert_eq!(update.ports, vec![port(1).as_ptr() as usize]);
        assert_eq!(update.info.direction, spa_sys::SPA_DIRECTION_INPUT);
        assert_eq!((update.info.min_rate, update.info.max_rate), (100, 300));
        assert_eq!(latencies.frames(256, 48_000), (0, 300));
    }
}
