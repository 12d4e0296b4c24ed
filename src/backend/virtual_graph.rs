//! The virtual backend: a clock-driven audio thread that feeds the processor deterministic tones
//! (or silence) in real time, for containers and machines without an audio server. Its sink
//! meters the master output (the processor does) and discards it.

use std::f64::consts::TAU;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::{
    resolve_input, BackendError, BackendEvent, BackendInfo, DeviceInfo, Direction, PlanarInputs,
    RunningBackend, TransportRequest,
};
use crate::engine::{AudioInputs, ProcessContext, Processor};

/// Amplitude of every virtual tone (−12 dBFS).
pub const TONE_AMPLITUDE: f32 = 0.25;

/// Number of fixed virtual input channels before the "Virtual Input N" ones.
const FIXED_CHANNELS: usize = 5;

/// SCHED_FIFO priority asked for the audio thread.
const REALTIME_PRIORITY: libc::c_int = 70;

/// How often the audio thread wakes when periods are shorter than this. It runs as many whole
/// periods as fit in this time back to back on each wake (at least one: a longer period gets
/// a wake of its own): no device plays or captures the virtual graph in real time, so its
/// periods need not be spread out, and each wake of a thread costs far more than a period's
/// processing (at 256 frames and 48 kHz: 3 periods per wake, 62 wakes a second instead of
/// 188). The engine still sees `period`-frame blocks, and over time the frames run at the
/// sample rate; within a wake the engine is up to one wake ahead of the wall clock, and a
/// command takes effect at the next wake.
const WAKE_INTERVAL_NS: u64 = 20_000_000;

/// What the virtual inputs carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtualSignal {
    /// A distinct sine per channel ([`tone_sample`]).
    Tones,
    /// Zeros.
    Silence,
}

/// Settings of the virtual backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualConfig {
    /// Frames per second.
    pub sample_rate: u32,
    /// Frames per period.
    pub period: u32,
    /// Tones or silence.
    pub signal: VirtualSignal,
    /// Number of mono "Virtual Input N" channels after the fixed devices.
    pub input_count: usize,
}

/// Frequency in Hz of the tone on virtual channel `channel`: `200 + 20 × channel`.
pub fn tone_frequency(channel: usize) -> u32 {
    u32::try_from(channel)
        .ok()
        .and_then(|c| c.checked_mul(20))
        .and_then(|c| c.checked_add(200))
        .unwrap_or(u32::MAX)
}

/// The reference value of channel `channel` at backend frame `frame`:
/// `TONE_AMPLITUDE × sin(2π × ((f × frame) mod rate) / rate)`. Exact phase for any `frame`
/// (the modulo is taken in integers). Real-time safe.
pub fn tone_sample(channel: usize, frame: u64, sample_rate: u32) -> f32 {
    if sample_rate == 0 {
        return 0.0;
    }
    let rate = u128::from(sample_rate);
    let index = (u128::from(tone_frequency(channel)) * u128::from(frame)) % rate;
    let angle = TAU * index as f64 / rate as f64;
    (f64::from(TONE_AMPLITUDE) * angle.sin()) as f32
}

/// Every virtual channel's tone, precomputed, served in place: each table holds one full
/// period of its tone followed by its first `max_frames` samples again, so a run of up to
/// `max_frames` frames from any phase is one contiguous slice and a period's inputs cost no
/// copying (channels no track reads cost nothing).
pub struct ToneGenerator {
    tables: Box<[Box<[f32]>]>,
    /// Each channel's tone period in frames (the table length before the repeated head).
    periods: Box<[usize]>,
    max_frames: usize,
}

impl ToneGenerator {
    /// Precomputes `channels` tones (one period each, at most `sample_rate` samples; 2 400 at
    /// 48 kHz) for runs of up to `max_frames` frames. **Not** real-time safe (allocates).
    pub fn new(channels: usize, sample_rate: u32, max_frames: usize) -> Self {
        let rate = sample_rate.max(1);
        let periods: Box<[usize]> = (0..channels)
            .map(|channel| (rate / gcd(rate, tone_frequency(channel))) as usize)
            .collect();
        let tables = periods
            .iter()
            .enumerate()
            .map(|(channel, &period)| {
                (0..period + max_frames)
                    .map(|frame| tone_sample(channel, (frame % period) as u64, rate))
                    .collect()
            })
            .collect();
        ToneGenerator {
            tables,
            periods,
            max_frames,
        }
    }

    /// The inputs of the run of `frames` frames (at most `max_frames`) starting at backend
    /// frame `frame`. Real-time safe.
    pub fn inputs(&self, frame: u64, frames: usize) -> ToneInputs<'_> {
        ToneInputs {
            tones: self,
            frame,
            frames: frames.min(self.max_frames),
        }
    }

    /// Copies every channel's tone for the run starting at backend frame `frame` into
    /// `inputs` (`inputs.frames()` frames, any number). Real-time safe.
    pub fn fill(&self, frame: u64, inputs: &mut PlanarInputs) {
        for (channel, &period) in self.periods.iter().enumerate() {
            let table = &self.tables[channel][..period];
            let mut at = (frame % period as u64) as usize;
            let mut out = inputs.channel_mut(channel);
            while !out.is_empty() {
                let run = out.len().min(table.len() - at);
                let (head, rest) = out.split_at_mut(run);
                head.copy_from_slice(&table[at..at + run]);
                out = rest;
                at = 0;
            }
        }
    }
}

/// One run of the virtual tones as the processor's inputs, read straight from the tables.
/// Real-time safe.
pub struct ToneInputs<'a> {
    tones: &'a ToneGenerator,
    frame: u64,
    frames: usize,
}

impl AudioInputs for ToneInputs<'_> {
    fn channel_count(&self) -> usize {
        self.tones.tables.len()
    }

    fn channel(&self, index: usize) -> &[f32] {
        let (Some(table), Some(&period)) =
            (self.tones.tables.get(index), self.tones.periods.get(index))
        else {
            return &[];
        };
        let at = (self.frame % period.max(1) as u64) as usize;
        table.get(at..at + self.frames).unwrap_or(&[])
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Total input channels for a configuration.
fn input_channels(config: &VirtualConfig) -> usize {
    FIXED_CHANNELS + config.input_count
}

/// The devices of the virtual graph: "Virtual Microphone 1" (mono, channel 0), "Virtual
/// Microphone 2" (stereo, 1–2), "Virtual Line In" (stereo, 3–4), "Virtual Input 1".."N" (mono,
/// 5..), and the output "Virtual Sink" (stereo).
pub fn virtual_devices(config: &VirtualConfig) -> Vec<DeviceInfo> {
    let input = |name: String, channels: u16, first_channel: usize| DeviceInfo {
        name,
        channels,
        first_channel: u16::try_from(first_channel).unwrap_or(u16::MAX),
        direction: Direction::Input,
    };
    let mut devices = vec![
        input("Virtual Microphone 1".to_owned(), 1, 0),
        input("Virtual Microphone 2".to_owned(), 2, 1),
        input("Virtual Line In".to_owned(), 2, 3),
    ];
    devices.extend(
        (0..config.input_count)
            .map(|n| input(format!("Virtual Input {}", n + 1), 1, FIXED_CHANNELS + n)),
    );
    devices.push(DeviceInfo {
        name: "Virtual Sink".to_owned(),
        channels: 2,
        first_channel: 0,
        direction: Direction::Output,
    });
    devices
}

/// Starts the virtual audio thread (`overdub-virtual`), which owns `processor` and runs it on
/// `period`-frame blocks against absolute deadlines of the monotonic clock, a few blocks per
/// wake ([`WAKE_INTERVAL_NS`]). **Not** real-time safe.
/// Fails on a zero rate or period, or if the thread cannot be spawned.
pub fn start_virtual(
    config: VirtualConfig,
    processor: Processor,
) -> io::Result<Box<dyn RunningBackend>> {
    if config.sample_rate == 0 || config.period == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "virtual backend needs a non-zero sample rate and period",
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name("overdub-virtual".to_owned())
        .spawn(move || run(config, processor, &thread_stop))?;
    Ok(Box::new(VirtualBackend {
        info: BackendInfo {
            name: "virtual",
            sample_rate: config.sample_rate,
            period: config.period,
            input_latency_frames: config.period,
            output_latency_frames: config.period,
        },
        devices: virtual_devices(&config),
        stop,
        thread,
    }))
}

/// The running virtual backend.
struct VirtualBackend {
    info: BackendInfo,
    devices: Vec<DeviceInfo>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Processor>,
}

impl RunningBackend for VirtualBackend {
    fn info(&self) -> BackendInfo {
        self.info
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.clone()
    }

    fn check_input(&self, input: &str, channels: u8) -> Result<(), BackendError> {
        resolve_input(&self.devices, input, channels).map(|_| ())
    }

    /// The virtual graph has no ports per track: the input word names virtual channels.
    fn route_track(
        &mut self,
        _slot: u16,
        _name: &str,
        channels: u8,
        input: &str,
    ) -> Result<[u16; 2], BackendError> {
        resolve_input(&self.devices, input, channels)
    }

    fn rename_track(&mut self, _slot: u16, _name: &str) -> Result<(), BackendError> {
        Ok(())
    }

    fn remove_track(&mut self, _slot: u16) {}

    /// No ports to patch: the outputs go where the device goes.
    fn restore_outputs(&mut self, _saved: &[(String, String)]) {}

    /// The audio thread counts its own xruns; nothing else changes.
    fn poll(&mut self, _xruns: &dyn Fn(u64)) -> Vec<BackendEvent> {
        Vec::new()
    }

    fn is_running(&self) -> bool {
        true
    }

    /// Nothing to wait for: `poll` returns at once.
    fn poll_may_wait(&self) -> bool {
        false
    }

    /// The virtual graph has no shared transport.
    fn lead_transport(&mut self, _request: TransportRequest) {}

    fn run_detached(&mut self, _frames: usize) -> bool {
        false
    }

    fn stop(self: Box<Self>) -> Option<Processor> {
        self.stop.store(true, Ordering::Release);
        match self.thread.join() {
            Ok(processor) => Some(processor),
            // `run` catches the processor's panics, so this is a panic in the thread's own set-up
            // code: propagate it rather than invent a processor.
            Err(payload) => std::panic::resume_unwind(payload),
        }
    }
}

/// Monotonic clock in nanoseconds. Real-time safe (vDSO `clock_gettime`).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Sleeps until the monotonic clock reaches `deadline_ns` (absolute, so no drift accumulates).
fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(deadline_ns / 1_000_000_000).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::try_from(deadline_ns % 1_000_000_000).unwrap_or(0),
    };
    loop {
        // SAFETY: `ts` is a valid timespec; the remaining-time pointer may be null with
        // TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// Asks for SCHED_FIFO; logs once (before the loop) if refused.
fn try_realtime_priority() {
    let param = libc::sched_param {
        sched_priority: REALTIME_PRIORITY,
    };
    // SAFETY: `pthread_self()` names the calling thread, which is alive; `param` is a valid
    // sched_param that outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        tracing::info!(
            error = %io::Error::from_raw_os_error(rc),
            "virtual backend: SCHED_FIFO refused, running at normal priority"
        );
    }
}

/// The audio thread: allocates its buffers, then loops until `stop` (no allocation inside).
fn run(config: VirtualConfig, mut processor: Processor, stop: &AtomicBool) -> Processor {
    try_realtime_priority();
    let period = config.period as usize;
    let rate = u128::from(config.sample_rate);
    let period_ns =
        u64::try_from(u128::from(config.period) * 1_000_000_000 / rate).unwrap_or(u64::MAX);
    let periods_per_wake = (WAKE_INTERVAL_NS / period_ns.max(1)).max(1);
    let wake_ns = period_ns.saturating_mul(periods_per_wake);
    let channels = input_channels(&config);
    let mut silence = PlanarInputs::new(channels, period);
    silence.set_frames(period);
    let tones = ToneGenerator::new(channels, config.sample_rate, period);
    let mut left = vec![0.0f32; period];
    let mut right = vec![0.0f32; period];

    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let shared = Arc::clone(processor.shared());
        let mut frame: u64 = 0;
        let mut base = now_ns();
        let mut cycles: u64 = 0;
        while !stop.load(Ordering::Acquire) {
            let offset = u128::from(cycles) * u128::from(config.period) * 1_000_000_000 / rate;
            let deadline = base.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX));
            sleep_until(deadline);
            let now = now_ns();
            if now > deadline.saturating_add(wake_ns) {
                // More than a wake late: count it and restart the clock (no burst catch-up).
                shared.add_xrun();
                base = now;
                cycles = 0;
            }
            for _ in 0..periods_per_wake {
                let tone_inputs = tones.inputs(frame, period);
                processor.process(&mut ProcessContext {
                    frames: period,
                    inputs: match config.signal {
                        VirtualSignal::Tones => &tone_inputs,
                        VirtualSignal::Silence => &silence,
                    },
                    master_left: &mut left,
                    master_right: &mut right,
                    track_outputs: None,
                });
                frame = frame.wrapping_add(u64::from(config.period));
            }
            cycles += periods_per_wake;
        }
    }));
    if outcome.is_err() {
        tracing::error!("virtual backend: the processor panicked; audio thread stopped");
    }
    processor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_matches_the_reference_within_1e_6() {
        let rate = 48_000;
        let tones = ToneGenerator::new(8, rate, 4096);
        let mut inputs = PlanarInputs::new(8, 4096);
        inputs.set_frames(4096);
        let check = |channel: usize, start: u64, samples: &[f32]| {
            for (k, &sample) in samples.iter().enumerate() {
                let expected = tone_sample(channel, start + k as u64, rate);
                assert!(
                    (sample - expected).abs() <= 1e-6,
                    "channel {channel} frame {}: {sample} vs {expected}",
                    start + k as u64
                );
            }
        };
        // A huge start frame checks the exact integer phase; 2 399 ends one period short.
        for start in [0u64, 2_399, 4096, 123_456_789_000] {
            tones.fill(start, &mut inputs);
            let view = tones.inputs(start, 4096);
            assert_eq!(view.channel_count(), 8);
            for channel in 0..8 {
                check(channel, start, inputs.channel_mut(channel));
                let served = view.channel(channel);
                assert_eq!(served.len(), 4096, "a whole run in place");
                check(channel, start, served);
            }
            assert!(view.channel(8).is_empty());
        }
    }

    #[test]
    fn reference_tone_values() {
        assert_eq!(tone_frequency(0), 200);
        assert_eq!(tone_frequency(3), 260);
        assert_eq!(tone_sample(0, 0, 48_000), 0.0);
        // A quarter of a 200 Hz cycle at 48 kHz is 60 frames: the crest.
        assert!((tone_sample(0, 60, 48_000) - TONE_AMPLITUDE).abs() < 1e-7);
        assert_eq!(tone_sample(0, 5, 0), 0.0);
    }

    /// Pops everything from a capture ring.
    fn drain(ring: &mut rtrb::Consumer<f32>) -> Vec<f32> {
        std::iter::from_fn(|| ring.pop().ok()).collect()
    }

    #[test]
    fn virtual_backend_records_the_reference_tones() {
        use crate::engine::{
            engine, ControlToEngine, EngineConfig, Monitoring, TrackParams, TrackSlot,
        };

        let config = VirtualConfig {
            sample_rate: 48_000,
            period: 256,
            signal: VirtualSignal::Tones,
            input_count: 2,
        };
        let (processor, mut handle, _markers) = engine(EngineConfig::new(48_000, 256, 4));
        // Microphone 1 (channel 0), Microphone 2 (stereo, 1-2), Virtual Input 2 (channel 6).
        let mut rings = Vec::new();
        for (track, (channels, first)) in [(1u8, 0u16), (2, 1), (1, 6)].into_iter().enumerate() {
            let (capture, ring) = rtrb::RingBuffer::new(96_000);
            rings.push((channels, first, ring));
            let params = TrackParams {
                channels,
                input: [first, first + 1],
                armed: true,
                input_gain: 1.0,
                level: 1.0,
                pan: 0.0,
                muted: false,
                soloed: false,
                monitoring: Monitoring::Auto,
            };
            let sent = handle.send(ControlToEngine::InstallTrack {
                track: track as u16,
                slot: Box::new(TrackSlot { params, capture }),
            });
            assert!(sent.is_ok());
        }
        assert!(handle
            .send(ControlToEngine::Record { at_frame: None })
            .is_ok());
        let backend = start_virtual(config, processor).expect("virtual backend starts");
        assert_eq!(backend.info().period, 256);
        assert_eq!(backend.devices(), virtual_devices(&config));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let processor = backend
            .stop()
            .expect("the virtual thread hands the processor back");
        let recorded = processor.shared().recorded_frames();

        // Per track and channel: (virtual channel, samples).
        let mut streams = Vec::new();
        for (channels, first, ring) in &mut rings {
            let samples = drain(ring);
            let channels = usize::from(*channels);
            assert_eq!(samples.len() as u64, recorded * channels as u64);
            for side in 0..channels {
                let stream: Vec<f32> = samples
                    .iter()
                    .skip(side)
                    .step_by(channels)
                    .copied()
                    .collect();
                streams.push((usize::from(*first) + side, stream));
            }
        }
        assert!(recorded >= 256, "the thread ran ({recorded} frames)");
        assert!(
            recorded < 48_000 * 5,
            "not faster than real time by far ({recorded} frames)"
        );
        // The take began on some period boundary of the backend clock: find it, then every
        // sample of every channel must be the reference tone from there.
        let start = (0..200u64)
            .map(|cycle| cycle * 256)
            .find(|&start| {
                streams.iter().all(|(channel, stream)| {
                    stream.iter().take(64).enumerate().all(|(k, &s)| {
                        (s - tone_sample(*channel, start + k as u64, 48_000)).abs() <= 1e-6
                    })
                })
            })
            .expect("captured audio matches the reference tones");
        for (channel, stream) in &streams {
            for (k, &sample) in stream.iter().enumerate() {
                let expected = tone_sample(*channel, start + k as u64, 48_000);
                assert!(
                    (sample - expected).abs() <= 1e-6,
                    "channel {channel}, take frame {k}: {sample} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn device_list() {
        let config = VirtualConfig {
            sample_rate: 48_000,
            period: 256,
            signal: VirtualSignal::Tones,
            input_count: 2,
        };
        let devices = virtual_devices(&config);
        let summary: Vec<(&str, u16, u16, Direction)> = devices
            .iter()
            .map(|d| (d.name.as_str(), d.channels, d.first_channel, d.direction))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("Virtual Microphone 1", 1, 0, Direction::Input),
                ("Virtual Microphone 2", 2, 1, Direction::Input),
                ("Virtual Line In", 2, 3, Direction::Input),
                ("Virtual Input 1", 1, 5, Direction::Input),
                ("Virtual Input 2", 1, 6, Direction::Input),
                ("Virtual Sink", 2, 0, Direction::Output),
            ]
        );
    }
}
