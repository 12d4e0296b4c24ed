//! The ALSA backend, through cpal: one capture device (`alsa.device`) whose channels are the
//! tracks' inputs, and optionally a playback device for the master (`alsa.output_device`).
//!
//! An ALSA device has no ports per track. Like the virtual graph, the backend offers the capture
//! device as one device of `alsa.channels` channels named after it (`default`, `hw:1`…), and a
//! track's input word names its channels: `default:3` (1-based), or the device name alone for
//! its first channel(s). Each active session opens its own streams (ALSA hardware devices are
//! exclusive: several sessions on one card need a sharing PCM such as `dsnoop`).
//!
//! The capture callback owns the session's [`Processor`]: it deinterleaves each buffer cpal
//! delivers into [`PlanarInputs`] allocated before the stream starts (in chunks of
//! [`CHUNK_FRAMES`] when a buffer is longer), runs the processor, and hands the master to the
//! playback stream through a ring (or discards it). The processor comes back when the callback
//! is dropped ([`CaptureCallback`]'s `Drop` sends it on a channel), which cpal does when the
//! stream is dropped or its device disappears.
//!
//! Xruns: cpal recovers from them itself (`snd_pcm_prepare` + restart, the `snd_pcm_recover`
//! semantics); the backend counts them and keeps going. A device that disappears (or a stream
//! that stops delivering for [`STALL_TIMEOUT`]) is reported [`BackendEvent::Lost`]; the streams
//! are dropped, the processor taken back, and the device is opened again every
//! [`RECONNECT_INTERVAL`] until it returns ([`BackendEvent::Restored`]).
//!
//! Real-time code: [`CaptureCallback::run`], the playback callback and the error callback.
//! Everything else runs on control's threads.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{BufferSize, FromSample, SampleFormat, SizedSample, StreamConfig};

use super::{
    resolve_input, AlsaOutput, AlsaSettings, BackendError, BackendEvent, BackendInfo, DeviceInfo,
    Direction, PlanarInputs, RunningBackend, TransportRequest,
};
use crate::engine::{touched_zeros, ProcessContext, Processor};

/// Frames deinterleaved per processor call; longer cpal buffers are run in chunks.
pub const CHUNK_FRAMES: usize = 2048;
/// How often a lost device is opened again.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);
/// A running capture stream that delivers nothing for this long counts as lost.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long closing the streams may wait for the capture callback to hand the processor back.
const HANDBACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the device's poll may sleep before cpal checks whether it was disconnected.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// SCHED_FIFO priority asked for cpal's capture thread (as for the virtual graph's thread).
const REALTIME_PRIORITY: libc::c_int = 70;
/// Frames of master the ring between the capture and playback streams holds.
const MASTER_RING_FRAMES: usize = 16_384;
/// Sample formats asked of a device, best first (converted to and from `f32` in the callbacks).
const FORMATS: [SampleFormat; 4] = [
    SampleFormat::F32,
    SampleFormat::I32,
    SampleFormat::I24,
    SampleFormat::I16,
];

/// How to open one stream, settled when the graph opens.
#[derive(Clone, Debug, PartialEq)]
struct StreamPlan {
    /// ALSA PCM name.
    device: String,
    config: StreamConfig,
    format: SampleFormat,
}

/// What the graph knows about its devices; every session opens its streams from it.
#[derive(Clone, Debug, PartialEq)]
struct DevicePlan {
    capture: StreamPlan,
    playback: Option<StreamPlan>,
}

impl DevicePlan {
    /// The capture device (input) and the playback device (output), as `overdub devices` shows.
    fn devices(&self) -> Vec<DeviceInfo> {
        let mut devices = vec![DeviceInfo {
            name: self.capture.device.clone(),
            channels: self.capture.config.channels,
            first_channel: 0,
            direction: Direction::Input,
        }];
        if let Some(playback) = &self.playback {
            devices.push(DeviceInfo {
                name: playback.device.clone(),
                channels: playback.config.channels,
                first_channel: 0,
                direction: Direction::Output,
            });
        }
        devices
    }
}

/// The daemon-wide ALSA choice: the probed devices. Sessions open their own streams with
/// [`AlsaGraph::start`]. Every method runs off the real-time thread.
pub struct AlsaGraph {
    plan: DevicePlan,
    /// Active sessions whose device is gone (each holds a [`DeviceGone`]).
    sessions_gone: Arc<AtomicUsize>,
}

/// Counts its session among those whose device is gone, for as long as it lives.
struct DeviceGone(Arc<AtomicUsize>);

impl DeviceGone {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        DeviceGone(Arc::clone(count))
    }
}

impl Drop for DeviceGone {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn cpal_error(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::failed(format!("{what}: {e}"))
}

/// Runs `f` with alsa-lib's error messages on this thread collected instead of printed to
/// stderr, and returns them (one per line; also in the debug log). alsa-lib prints each step
/// of a failed device lookup, eight lines for a `default` PCM without a card, which a daemon
/// probing at start or opening a lost device every [`RECONNECT_INTERVAL`] would repeat;
/// overdub logs its own line, with alsa-lib's last message, instead. **Not** real-time safe.
fn collecting_alsa_lib_messages<T>(f: impl FnOnce() -> T) -> (T, String) {
    /// Gives the thread back alsa-lib's default error handler when dropped, also when `f`
    /// panics (the thread may go on, as tokio's do).
    struct DefaultHandlerOnDrop;
    impl Drop for DefaultHandlerOnDrop {
        fn drop(&mut self) {
            // SAFETY: resets this thread's local error handler; no pointer is passed.
            unsafe { alsa_sys::snd_lib_error_set_local(None) };
        }
    }
    let collected = ::alsa::Output::local_error_handler().ok();
    let reset = DefaultHandlerOnDrop;
    let result = f();
    drop(reset);
    let mut messages = collected
        .map(|output| output.borrow().to_string())
        .unwrap_or_default();
    messages.truncate(messages.trim_end().len());
    if !messages.is_empty() {
        tracing::debug!("alsa-lib: {messages}");
    }
    (result, messages)
}

/// `error` with alsa-lib's last message (`messages` from [`collecting_alsa_lib_messages`])
/// appended, when there is one: the failing call and the reason in alsa-lib's words
/// (`snd_pcm_open_noupdate: Unknown PCM default`). The failing step is the last that ran, so its
/// message comes last.
fn with_alsa_lib_reason(mut error: BackendError, messages: &str) -> BackendError {
    if let Some(last) = messages.lines().rev().find(|line| !line.trim().is_empty()) {
        error.message = format!("{} (alsa-lib: {})", error.message, last.trim());
    }
    error
}

impl AlsaGraph {
    /// Finds the capture device, checks that it offers `settings.channels` channels at
    /// `settings.sample_rate` in a format overdub converts, and settles the playback device
    /// (see [`AlsaOutput`]). Opens the devices to ask, so a device that does not open fails here.
    /// **Not** real-time safe.
    pub fn open(settings: &AlsaSettings) -> Result<AlsaGraph, BackendError> {
        let (plan, messages) = collecting_alsa_lib_messages(|| {
            let host = cpal::host_from_id(cpal::HostId::Alsa)
                .map_err(|e| cpal_error("ALSA is not available", e))?;
            let capture = probe(&host, settings, &settings.device, Direction::Input)?;
            let playback = match &settings.output {
                AlsaOutput::Discard => None,
                AlsaOutput::Device(name) => Some(probe(&host, settings, name, Direction::Output)?),
                AlsaOutput::SameAsInput => {
                    match probe(&host, settings, &settings.device, Direction::Output) {
                        Ok(plan) => Some(plan),
                        Err(e) => {
                            tracing::info!("ALSA: {e}; the master is metered and discarded");
                            None
                        }
                    }
                }
            };
            Ok(DevicePlan { capture, playback })
        });
        let plan = plan.map_err(|e| with_alsa_lib_reason(e, &messages))?;
        Ok(AlsaGraph::with_plan(plan))
    }

    /// A graph over `plan` with no session yet.
    fn with_plan(plan: DevicePlan) -> AlsaGraph {
        AlsaGraph {
            plan,
            sessions_gone: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// An active session's device is gone (overdub opens it again every
    /// [`RECONNECT_INTERVAL`]).
    pub fn device_gone(&self) -> bool {
        self.sessions_gone.load(Ordering::Acquire) > 0
    }

    /// Frames per second sessions record at.
    pub fn sample_rate(&self) -> u32 {
        self.plan.capture.config.sample_rate
    }

    /// Frames per period asked of the capture device (it may pick another; a running session's
    /// [`RunningBackend::info`] says which).
    pub fn period(&self) -> u32 {
        match self.plan.capture.config.buffer_size {
            BufferSize::Fixed(frames) => frames,
            BufferSize::Default => CHUNK_FRAMES as u32,
        }
    }

    /// The capture device and the playback device.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.plan.devices()
    }

    /// Checks an input word (`none`, `<device>`, `<device>:N`) for a track of `channels`.
    pub fn check_input(&self, input: &str, channels: u8) -> Result<(), BackendError> {
        resolve_input(&self.plan.devices(), input, channels).map(|_| ())
    }

    /// The default input of track `index` (1-based): the device's channel(s) of the same
    /// number (`<device>:index` for mono, channels `2·index−1` and `2·index` for stereo), or
    /// `none` when the device has too few.
    pub fn default_input(&self, index: u32, channels: u8) -> String {
        let width = u32::from(channels.max(1));
        let first = index.saturating_sub(1).saturating_mul(width) + 1;
        let last = first + width - 1;
        if index == 0 || last > u32::from(self.plan.capture.config.channels) {
            return "none".into();
        }
        format!("{}:{first}", self.plan.capture.device)
    }

    /// Opens a session's streams around `processor` and starts them. Fails when the session
    /// records at another rate than the device runs at, or the device does not open.
    /// **Not** real-time safe.
    pub fn start(
        &self,
        sample_rate: u32,
        processor: Processor,
    ) -> Result<Box<dyn RunningBackend>, BackendError> {
        if sample_rate != self.sample_rate() {
            return Err(BackendError::failed(format!(
                "the session runs at {sample_rate} Hz but the ALSA device at {} Hz \
                 (audio.sample_rate)",
                self.sample_rate()
            )));
        }
        let (rescue_tx, rescue_rx) = mpsc::channel();
        let mut session = AlsaSession {
            plan: self.plan.clone(),
            devices: self.plan.devices(),
            streams: None,
            parked: None,
            rescue_tx,
            rescue_rx,
            signals: Arc::new(StreamSignals::default()),
            period: self.period(),
            xruns_seen: 0,
            errors_seen: 0,
            callbacks_seen: 0,
            last_progress: Instant::now(),
            last_attempt: Instant::now(),
            sessions_gone: Arc::clone(&self.sessions_gone),
            gone: None,
        };
        session.open(processor)?;
        Ok(Box::new(session))
    }
}

/// Finds device `name` for `direction` and settles the stream it runs: `settings.channels`
/// (capture) or stereo, else mono, else its fewest (playback), at `settings.sample_rate`, the
/// first of [`FORMATS`] it offers, and `settings.period` frames when in its range.
fn probe(
    host: &cpal::Host,
    settings: &AlsaSettings,
    name: &str,
    direction: Direction,
) -> Result<StreamPlan, BackendError> {
    let role = match direction {
        Direction::Input => "capture",
        Direction::Output => "playback",
    };
    let device = find_device(host, name, direction)
        .ok_or_else(|| BackendError::failed(format!("no ALSA {role} device {name:?}")))?;
    let configs: Vec<cpal::SupportedStreamConfigRange> = match direction {
        Direction::Input => device.supported_input_configs().map(Iterator::collect),
        Direction::Output => device.supported_output_configs().map(Iterator::collect),
    }
    .map_err(|e| cpal_error(&format!("the ALSA {role} device {name:?} does not open"), e))?;
    let rate = settings.sample_rate;
    let at_rate: Vec<&cpal::SupportedStreamConfigRange> = configs
        .iter()
        .filter(|c| (c.min_sample_rate()..=c.max_sample_rate()).contains(&rate))
        .filter(|c| FORMATS.contains(&c.sample_format()))
        .collect();
    let channels = match direction {
        Direction::Input => Some(settings.channels),
        Direction::Output => [2, 1]
            .into_iter()
            .find(|n| at_rate.iter().any(|c| c.channels() == *n))
            .or_else(|| at_rate.iter().map(|c| c.channels()).min()),
    };
    let chosen = FORMATS.iter().find_map(|format| {
        at_rate
            .iter()
            .find(|c| Some(c.channels()) == channels && c.sample_format() == *format)
    });
    let Some(chosen) = chosen else {
        let mut offered: Vec<String> = configs
            .iter()
            .map(|c| {
                format!(
                    "{} ch {} {}–{} Hz",
                    c.channels(),
                    c.sample_format(),
                    c.min_sample_rate(),
                    c.max_sample_rate()
                )
            })
            .collect();
        offered.dedup();
        offered.truncate(12);
        return Err(BackendError::failed(format!(
            "the ALSA {role} device {name:?} offers no {}{rate} Hz stream in f32, i32, i24 or \
             i16 (it offers: {})",
            channels
                .map(|n| format!("{n}-channel "))
                .unwrap_or_default(),
            offered.join("; ")
        )));
    };
    let buffer_size = match chosen.buffer_size() {
        cpal::SupportedBufferSize::Range { min, max }
            if (*min..=*max).contains(&settings.period) =>
        {
            BufferSize::Fixed(settings.period)
        }
        _ => BufferSize::Default,
    };
    Ok(StreamPlan {
        device: name.to_string(),
        config: StreamConfig {
            channels: chosen.channels(),
            sample_rate: rate,
            buffer_size,
        },
        format: chosen.sample_format(),
    })
}

/// The ALSA device named `name`: `default`, or a PCM that ALSA's hints or cards list.
fn find_device(host: &cpal::Host, name: &str, direction: Direction) -> Option<cpal::Device> {
    if name == "default" {
        return match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        };
    }
    host.device_by_id(&cpal::DeviceId::new(cpal::HostId::Alsa, name))
}

/// Copies `interleaved` frames of `channels` channels into `inputs` as planar `f32` (at most
/// `inputs.capacity()` frames; channels past `inputs.channel_count()` are left out) and sets
/// `inputs.frames()`. **Real-time safe**.
pub fn deinterleave<T>(interleaved: &[T], channels: usize, inputs: &mut PlanarInputs)
where
    T: Copy,
    f32: FromSample<T>,
{
    let frames = interleaved.len().checked_div(channels).unwrap_or(0);
    inputs.set_frames(frames);
    for channel in 0..channels {
        let target = inputs.channel_mut(channel);
        for (out, frame) in target.iter_mut().zip(interleaved.chunks_exact(channels)) {
            *out = frame.get(channel).map_or(0.0, |s| f32::from_sample_(*s));
        }
    }
}

/// Writes master frames into an interleaved playback buffer of `channels` channels: left and
/// right on the first two (their mean on a mono device), the other channels untouched. Writes
/// `min(master.len(), out.len() / channels)` frames. **Real-time safe**.
pub fn interleave_master<T>(master: &[[f32; 2]], out: &mut [T], channels: usize)
where
    T: FromSample<f32>,
{
    if channels == 0 {
        return;
    }
    for (frame, [left, right]) in out.chunks_exact_mut(channels).zip(master) {
        match frame {
            [mono] => *mono = T::from_sample_(0.5 * (left + right)),
            [l, r, ..] => {
                *l = T::from_sample_(*left);
                *r = T::from_sample_(*right);
            }
            [] => {}
        }
    }
}

/// What the stream callbacks tell control (the counters only grow).
#[derive(Default)]
struct StreamSignals {
    /// Frames between the first sample of the last captured buffer reaching the device and the
    /// callback that got it (ALSA's delay, through cpal's capture timestamp).
    capture_delay: AtomicU32,
    /// `capture_delay` has been measured.
    capture_measured: AtomicBool,
    /// Xruns cpal reported (and recovered from), plus periods whose master the playback ring
    /// had no room for.
    xruns: AtomicU64,
    /// Other stream errors.
    errors: AtomicU64,
    /// Capture callbacks run.
    callbacks: AtomicU64,
    /// A device disappeared.
    lost: AtomicBool,
    /// The processor panicked; the capture callback stopped running it.
    panicked: AtomicBool,
    /// The error `pthread_setschedparam` returned for the capture thread (0 = none yet).
    realtime_refused: std::sync::atomic::AtomicI32,
}

impl StreamSignals {
    /// The capture delay the stream's last callback measured, or `period` before its first.
    fn input_latency(&self, period: u32) -> u32 {
        if self.capture_measured.load(Ordering::Acquire) {
            self.capture_delay.load(Ordering::Relaxed)
        } else {
            period
        }
    }
}

/// The error callback of both streams: counts, never blocks. **Real-time safe** (it only drops
/// the error cpal made).
fn on_stream_error(signals: &StreamSignals, error: cpal::Error) {
    match error.kind() {
        cpal::ErrorKind::Xrun => {
            signals.xruns.fetch_add(1, Ordering::Relaxed);
        }
        cpal::ErrorKind::DeviceNotAvailable
        | cpal::ErrorKind::StreamInvalidated
        | cpal::ErrorKind::HostUnavailable => signals.lost.store(true, Ordering::Release),
        _ => {
            signals.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The capture stream's callback state: the session's processor and the buffers it needs,
/// all allocated before the stream starts.
struct CaptureCallback {
    /// `None` only after `Drop` took it.
    processor: Option<Processor>,
    inputs: PlanarInputs,
    left: Box<[f32]>,
    right: Box<[f32]>,
    channels: usize,
    master: Option<rtrb::Producer<[f32; 2]>>,
    signals: Arc<StreamSignals>,
    /// Frames per second of the capture stream.
    rate: u32,
    /// Where the processor goes when the callback is dropped.
    rescue: mpsc::Sender<Processor>,
    /// The processor panicked: it is not run again.
    broken: bool,
    /// The capture thread has asked for real-time priority.
    promoted: bool,
}

impl CaptureCallback {
    /// Allocates the buffers. **Not** real-time safe.
    fn new(
        processor: Processor,
        channels: usize,
        master: Option<rtrb::Producer<[f32; 2]>>,
        signals: Arc<StreamSignals>,
        rate: u32,
        rescue: mpsc::Sender<Processor>,
    ) -> Self {
        CaptureCallback {
            processor: Some(processor),
            inputs: PlanarInputs::new(channels, CHUNK_FRAMES),
            left: touched_zeros(CHUNK_FRAMES),
            right: touched_zeros(CHUNK_FRAMES),
            channels,
            master,
            signals,
            rate,
            rescue,
            broken: false,
            promoted: false,
        }
    }

    /// Runs the processor over one captured buffer, [`CHUNK_FRAMES`] at a time, and queues the
    /// master for playback; notes how long ago the buffer began (`info`'s timestamps).
    /// **Real-time safe**.
    fn run<T>(&mut self, data: &[T], info: &cpal::InputCallbackInfo)
    where
        T: Copy,
        f32: FromSample<T>,
    {
        self.signals.callbacks.fetch_add(1, Ordering::Relaxed);
        let stamp = info.timestamp();
        let delay = stamp.callback.duration_since(stamp.capture);
        let frames = delay.as_secs_f64() * f64::from(self.rate);
        // Saturates: an absurd delay cannot wrap to a small one.
        self.signals
            .capture_delay
            .store(frames.round() as u32, Ordering::Relaxed);
        self.signals.capture_measured.store(true, Ordering::Release);
        if !self.promoted {
            self.promoted = true;
            promote_current_thread(&self.signals);
        }
        let CaptureCallback {
            processor,
            inputs,
            left,
            right,
            channels,
            master,
            signals,
            broken,
            ..
        } = self;
        let (Some(processor), false, true) = (processor.as_mut(), *broken, *channels > 0) else {
            return;
        };
        let step = inputs.capacity() * *channels;
        for chunk in data.chunks(step.max(1)) {
            deinterleave(chunk, *channels, inputs);
            let frames = inputs.frames();
            let (Some(left), Some(right)) = (left.get_mut(..frames), right.get_mut(..frames))
            else {
                return;
            };
            let ran = catch_unwind(AssertUnwindSafe(|| {
                processor.process(&mut ProcessContext {
                    frames,
                    inputs,
                    master_left: left,
                    master_right: right,
                    track_outputs: None,
                });
            }));
            if ran.is_err() {
                *broken = true;
                signals.panicked.store(true, Ordering::Release);
                return;
            }
            if let Some(ring) = master.as_mut() {
                let room = ring.slots().min(frames);
                if let Ok(slots) = ring.write_chunk_uninit(room) {
                    slots.fill_from_iter(left.iter().zip(right.iter()).map(|(l, r)| [*l, *r]));
                }
                if room < frames {
                    signals.xruns.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Asks SCHED_FIFO for the calling thread (cpal's capture thread, which runs the processor); a
/// refusal is left in `signals` for control to log. One syscall, made once before the first
/// period is processed (cpal's own promotion skips plugin devices such as `plug`), so a late
/// reader does not lose audio the device had no room to keep.
fn promote_current_thread(signals: &StreamSignals) {
    let param = libc::sched_param {
        sched_priority: REALTIME_PRIORITY,
    };
    // SAFETY: `pthread_self()` names the calling thread, which is alive; `param` is a valid
    // sched_param that outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        signals.realtime_refused.store(rc, Ordering::Relaxed);
    }
}

impl Drop for CaptureCallback {
    /// Hands the processor back to the session. Runs where cpal drops the callback: when its
    /// stream thread ends (the stream was dropped or the device disappeared) or when building
    /// the stream failed; never inside the real-time loop.
    fn drop(&mut self) {
        if let Some(processor) = self.processor.take() {
            let _ = self.rescue.send(processor);
        }
    }
}

/// Builds the capture stream in `plan.format` around `callback`. On failure the callback is
/// dropped, so the processor comes back on the rescue channel.
fn build_capture(
    device: &cpal::Device,
    plan: &StreamPlan,
    mut callback: CaptureCallback,
    signals: Arc<StreamSignals>,
) -> Result<cpal::Stream, BackendError> {
    let errors = move |e| on_stream_error(&signals, e);
    let timeout = Some(POLL_TIMEOUT);
    let built = match plan.format {
        SampleFormat::F32 => device.build_input_stream(
            plan.config,
            move |data: &[f32], info: &_| callback.run(data, info),
            errors,
            timeout,
        ),
        SampleFormat::I32 => device.build_input_stream(
            plan.config,
            move |data: &[i32], info: &_| callback.run(data, info),
            errors,
            timeout,
        ),
        SampleFormat::I24 => device.build_input_stream(
            plan.config,
            move |data: &[cpal::I24], info: &_| callback.run(data, info),
            errors,
            timeout,
        ),
        SampleFormat::I16 => device.build_input_stream(
            plan.config,
            move |data: &[i16], info: &_| callback.run(data, info),
            errors,
            timeout,
        ),
        other => {
            return Err(BackendError::failed(format!(
                "overdub does not convert {other} samples"
            )))
        }
    };
    built.map_err(|e| cpal_error(&format!("cannot open ALSA capture {:?}", plan.device), e))
}

/// Builds the playback stream in `plan.format`, fed from `master`.
fn build_playback(
    device: &cpal::Device,
    plan: &StreamPlan,
    master: rtrb::Consumer<[f32; 2]>,
    signals: Arc<StreamSignals>,
) -> Result<cpal::Stream, BackendError> {
    /// Plays what the ring holds; the rest of the buffer stays silent. **Real-time safe**.
    fn feed<T: FromSample<f32>>(master: &mut rtrb::Consumer<[f32; 2]>, out: &mut [T], ch: usize) {
        let frames = out.len().checked_div(ch).unwrap_or(0);
        if let Ok(chunk) = master.read_chunk(master.slots().min(frames)) {
            let (first, second) = chunk.as_slices();
            let split = first.len().saturating_mul(ch).min(out.len());
            let (head, tail) = out.split_at_mut(split);
            interleave_master(first, head, ch);
            interleave_master(second, tail, ch);
            chunk.commit_all();
        }
    }
    fn stream<T: SizedSample + FromSample<f32>>(
        device: &cpal::Device,
        plan: &StreamPlan,
        mut master: rtrb::Consumer<[f32; 2]>,
        signals: Arc<StreamSignals>,
    ) -> Result<cpal::Stream, cpal::Error> {
        let ch = usize::from(plan.config.channels);
        device.build_output_stream(
            plan.config,
            move |out: &mut [T], _: &_| feed(&mut master, out, ch),
            move |e| on_stream_error(&signals, e),
            Some(POLL_TIMEOUT),
        )
    }
    let built = match plan.format {
        SampleFormat::F32 => stream::<f32>(device, plan, master, signals),
        SampleFormat::I32 => stream::<i32>(device, plan, master, signals),
        SampleFormat::I24 => stream::<cpal::I24>(device, plan, master, signals),
        SampleFormat::I16 => stream::<i16>(device, plan, master, signals),
        other => {
            return Err(BackendError::failed(format!(
                "overdub does not convert {other} samples"
            )))
        }
    };
    built.map_err(|e| cpal_error(&format!("cannot open ALSA playback {:?}", plan.device), e))
}

/// A session's open streams. The capture stream is dropped first (it owns the processor).
struct Streams {
    _capture: cpal::Stream,
    _playback: Option<cpal::Stream>,
}

/// One session's ALSA streams.
struct AlsaSession {
    plan: DevicePlan,
    devices: Vec<DeviceInfo>,
    streams: Option<Streams>,
    /// The processor while the device is gone.
    parked: Option<Processor>,
    rescue_tx: mpsc::Sender<Processor>,
    rescue_rx: mpsc::Receiver<Processor>,
    signals: Arc<StreamSignals>,
    /// The capture period the device chose.
    period: u32,
    xruns_seen: u64,
    errors_seen: u64,
    callbacks_seen: u64,
    /// When the capture callback last ran (as seen by `poll`).
    last_progress: Instant,
    last_attempt: Instant,
    /// The graph's count of sessions whose device is gone.
    sessions_gone: Arc<AtomicUsize>,
    /// Counts this session there while its device is gone.
    gone: Option<DeviceGone>,
}

impl AlsaSession {
    /// Opens and starts the streams around `processor`. On failure the processor is parked.
    fn open(&mut self, processor: Processor) -> Result<(), BackendError> {
        // A new stream's delay is its own: until its first callback, one period is assumed.
        self.signals
            .capture_measured
            .store(false, Ordering::Release);
        let (opened, messages) = collecting_alsa_lib_messages(|| self.try_open(processor));
        match opened.map_err(|e| with_alsa_lib_reason(e, &messages)) {
            Ok(streams) => {
                self.signals.lost.store(false, Ordering::Release);
                self.streams = Some(streams);
                self.callbacks_seen = self.signals.callbacks.load(Ordering::Relaxed);
                self.last_progress = Instant::now();
                Ok(())
            }
            Err(e) => {
                self.parked = self.rescue_rx.recv_timeout(HANDBACK_TIMEOUT).ok();
                Err(e)
            }
        }
    }

    /// Builds the playback stream (if any), then the capture stream with the processor, and
    /// starts them. On failure the processor is on the rescue channel.
    fn try_open(&mut self, processor: Processor) -> Result<Streams, BackendError> {
        let (master_tx, master_rx) = crate::engine::touched_ring(MASTER_RING_FRAMES);
        let host = cpal::host_from_id(cpal::HostId::Alsa);
        let host = match host {
            Ok(host) => host,
            Err(e) => {
                let _ = self.rescue_tx.send(processor);
                return Err(cpal_error("ALSA is not available", e));
            }
        };
        let playback = match &self.plan.playback {
            None => None,
            Some(plan) => {
                let built = find_device(&host, &plan.device, Direction::Output)
                    .ok_or_else(|| {
                        BackendError::failed(format!("no ALSA playback device {:?}", plan.device))
                    })
                    .and_then(|device| {
                        build_playback(&device, plan, master_rx, Arc::clone(&self.signals))
                    });
                match built {
                    Ok(stream) => Some(stream),
                    Err(e) => {
                        let _ = self.rescue_tx.send(processor);
                        return Err(e);
                    }
                }
            }
        };
        let plan = &self.plan.capture;
        let callback = CaptureCallback::new(
            processor,
            usize::from(plan.config.channels),
            playback.is_some().then_some(master_tx),
            Arc::clone(&self.signals),
            plan.config.sample_rate,
            self.rescue_tx.clone(),
        );
        let Some(device) = find_device(&host, &plan.device, Direction::Input) else {
            drop(callback);
            return Err(BackendError::failed(format!(
                "no ALSA capture device {:?}",
                plan.device
            )));
        };
        let capture = build_capture(&device, plan, callback, Arc::clone(&self.signals))?;
        if let Some(playback) = &playback {
            playback
                .play()
                .map_err(|e| cpal_error("cannot start ALSA playback", e))?;
        }
        capture
            .play()
            .map_err(|e| cpal_error("cannot start ALSA capture", e))?;
        if let Ok(frames) = capture.buffer_size() {
            self.period = frames;
        }
        Ok(Streams {
            _capture: capture,
            _playback: playback,
        })
    }

    /// Drops the streams and takes the processor back (parked).
    fn close(&mut self) {
        let Some(streams) = self.streams.take() else {
            return;
        };
        drop(streams);
        match self.rescue_rx.recv_timeout(HANDBACK_TIMEOUT) {
            Ok(processor) => self.parked = Some(processor),
            Err(_) => tracing::error!("the ALSA capture stream did not hand the processor back"),
        }
    }
}

impl RunningBackend for AlsaSession {
    /// The input latency is ALSA's capture delay at the last callback (one period until the
    /// first); the output latency is estimated as two periods (the ring to the playback stream
    /// and the device's period).
    fn info(&self) -> BackendInfo {
        let out_period = self.plan.playback.as_ref().map_or(0, |_| 2 * self.period);
        BackendInfo {
            name: "alsa",
            sample_rate: self.plan.capture.config.sample_rate,
            period: self.period,
            input_latency_frames: self.signals.input_latency(self.period),
            output_latency_frames: out_period,
        }
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.clone()
    }

    fn check_input(&self, input: &str, channels: u8) -> Result<(), BackendError> {
        resolve_input(&self.devices, input, channels).map(|_| ())
    }

    /// ALSA has no ports per track: the input word names the device's channels.
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

    /// Reports xruns, notices a lost or stalled device (streams dropped, processor parked) and
    /// opens it again every [`RECONNECT_INTERVAL`] while it is gone.
    fn poll(&mut self, xruns: &dyn Fn(u64)) -> Vec<BackendEvent> {
        let mut events = Vec::new();
        let total = self.signals.xruns.load(Ordering::Relaxed);
        if total > self.xruns_seen {
            xruns(total - self.xruns_seen);
            self.xruns_seen = total;
        }
        let errors = self.signals.errors.load(Ordering::Relaxed);
        if errors > self.errors_seen {
            tracing::warn!(
                device = self.plan.capture.device,
                "ALSA: {} stream error(s)",
                errors - self.errors_seen
            );
            self.errors_seen = errors;
        }
        let refused = self.signals.realtime_refused.swap(0, Ordering::Relaxed);
        if refused != 0 {
            tracing::warn!(
                error = %std::io::Error::from_raw_os_error(refused),
                "ALSA: the capture thread runs WITHOUT real-time scheduling (SCHED_FIFO refused: \
                 raise the rtprio limit, LimitRTPRIO= in the unit or \"@audio - rtprio 95\" in \
                 limits.conf); the device holds two periods, so a late capture thread loses \
                 audio: expect xruns under load, fewer with a longer audio.period"
            );
        }
        if self.signals.panicked.swap(false, Ordering::AcqRel) {
            tracing::error!("the processor panicked; the ALSA capture no longer runs it");
        }
        if self.streams.is_some() {
            let callbacks = self.signals.callbacks.load(Ordering::Relaxed);
            if callbacks != self.callbacks_seen {
                self.callbacks_seen = callbacks;
                self.last_progress = Instant::now();
            }
            let lost = self.signals.lost.load(Ordering::Acquire);
            let stalled = self.last_progress.elapsed() >= STALL_TIMEOUT;
            if lost || stalled {
                tracing::error!(
                    device = self.plan.capture.device,
                    "the ALSA device {}; closing takes and opening it again every {} ms",
                    if lost {
                        "went away"
                    } else {
                        "stopped delivering audio"
                    },
                    RECONNECT_INTERVAL.as_millis()
                );
                self.close();
                self.last_attempt = Instant::now();
                self.gone = Some(DeviceGone::new(&self.sessions_gone));
                events.push(BackendEvent::Lost);
            }
        } else if self.last_attempt.elapsed() >= RECONNECT_INTERVAL {
            self.last_attempt = Instant::now();
            if let Some(processor) = self.parked.take() {
                match self.open(processor) {
                    Ok(()) => {
                        tracing::info!(
                            device = self.plan.capture.device,
                            "the ALSA device is back"
                        );
                        self.gone = None;
                        events.push(BackendEvent::Restored);
                    }
                    Err(e) => tracing::debug!("the ALSA device is still gone: {e}"),
                }
            }
        }
        events
    }

    fn is_running(&self) -> bool {
        self.streams.is_some()
    }

    /// A lost device is opened again from `poll`.
    fn poll_may_wait(&self) -> bool {
        true
    }

    /// ALSA has no shared transport.
    fn lead_transport(&mut self, _request: TransportRequest) {}

    fn run_detached(&mut self, frames: usize) -> bool {
        let Some(processor) = self.parked.as_mut() else {
            return false;
        };
        let mut left = vec![0.0; frames];
        let mut right = vec![0.0; frames];
        let mut inputs = PlanarInputs::new(usize::from(self.plan.capture.config.channels), frames);
        inputs.set_frames(frames);
        processor.process(&mut ProcessContext {
            frames,
            inputs: &inputs,
            master_left: &mut left,
            master_right: &mut right,
            track_outputs: None,
        });
        true
    }

    fn stop(mut self: Box<Self>) -> Option<Processor> {
        self.close();
        self.parked.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::AudioInputs;

    #[test]
    fn deinterleave_splits_channels_and_converts_integers() {
        let mut inputs = PlanarInputs::new(3, 8);
        let interleaved: Vec<f32> = (0..12).map(|i| i as f32).collect();
        deinterleave(&interleaved, 3, &mut inputs);
        assert_eq!(inputs.frames(), 4);
        assert_eq!(inputs.channel(0), &[0.0, 3.0, 6.0, 9.0]);
        assert_eq!(inputs.channel(1), &[1.0, 4.0, 7.0, 10.0]);
        assert_eq!(inputs.channel(2), &[2.0, 5.0, 8.0, 11.0]);

        let ints: [i16; 4] = [i16::MIN, 16_384, 0, -16_384];
        deinterleave(&ints, 2, &mut inputs);
        assert_eq!(inputs.frames(), 2);
        assert_eq!(inputs.channel(0), &[-1.0, 0.0]);
        assert_eq!(inputs.channel(1), &[0.5, -0.5]);
    }

    #[test]
    fn deinterleave_clamps_to_capacity_and_ignores_extra_channels() {
        // Two planar channels of four frames, fed six frames of three channels.
        let mut inputs = PlanarInputs::new(2, 4);
        let interleaved: Vec<f32> = (0..18).map(|i| i as f32).collect();
        deinterleave(&interleaved, 3, &mut inputs);
        assert_eq!(inputs.frames(), 4);
        assert_eq!(inputs.channel(0), &[0.0, 3.0, 6.0, 9.0]);
        assert_eq!(inputs.channel(1), &[1.0, 4.0, 7.0, 10.0]);
        // A ragged tail (not a whole frame) is left out; no channels means no frames.
        deinterleave(&interleaved[..7], 3, &mut inputs);
        assert_eq!(inputs.frames(), 2);
        deinterleave(&interleaved, 0, &mut inputs);
        assert_eq!(inputs.frames(), 0);
    }

    #[test]
    fn master_is_interleaved_onto_stereo_mono_and_wider_devices() {
        let master = [[0.5f32, -0.25], [1.0, 0.0]];
        let mut stereo = [9.0f32; 4];
        interleave_master(&master, &mut stereo, 2);
        assert_eq!(stereo, [0.5, -0.25, 1.0, 0.0]);
        let mut mono = [9.0f32; 2];
        interleave_master(&master, &mut mono, 1);
        assert_eq!(mono, [0.125, 0.5]);
        let mut quad = [0.0f32; 8];
        interleave_master(&master, &mut quad, 4);
        assert_eq!(quad, [0.5, -0.25, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        let mut ints = [0i16; 2];
        interleave_master(&master[..1], &mut ints, 2);
        assert_eq!(ints, [16_384, -8_192]);
    }

    fn plan(channels: u16, playback: bool) -> DevicePlan {
        let stream = |device: &str, channels| StreamPlan {
            device: device.into(),
            config: StreamConfig {
                channels,
                sample_rate: 48_000,
                buffer_size: BufferSize::Fixed(256),
            },
            format: SampleFormat::F32,
        };
        DevicePlan {
            capture: stream("hw:1", channels),
            playback: playback.then(|| stream("default", 2)),
        }
    }

    #[test]
    fn inputs_name_the_capture_device_channels() {
        let graph = AlsaGraph::with_plan(plan(4, true));
        assert_eq!(graph.sample_rate(), 48_000);
        assert_eq!(graph.period(), 256);
        let devices = graph.devices();
        assert_eq!(devices.len(), 2);
        assert_eq!(
            (
                devices[0].name.as_str(),
                devices[0].channels,
                devices[0].direction
            ),
            ("hw:1", 4, Direction::Input)
        );
        assert_eq!(devices[1].direction, Direction::Output);
        // The whole device name is the device, even though it ends in ":1".
        assert_eq!(
            resolve_input(&devices, "hw:1", 1),
            Ok([0, crate::engine::NO_INPUT])
        );
        assert_eq!(resolve_input(&devices, "hw:1:3", 2), Ok([2, 3]));
        assert!(graph.check_input("hw:1:4", 2).is_err());
        assert!(graph.check_input("hw:1:5", 1).is_err());
        assert!(
            graph.check_input("default:1", 1).is_err(),
            "outputs are no inputs"
        );
        assert_eq!(graph.default_input(1, 1), "hw:1:1");
        assert_eq!(graph.default_input(4, 1), "hw:1:4");
        assert_eq!(graph.default_input(5, 1), "none");
        assert_eq!(graph.default_input(2, 2), "hw:1:3");
        assert_eq!(graph.default_input(3, 2), "none");
        assert_eq!(AlsaGraph::with_plan(plan(2, false)).devices().len(), 1);
    }

    #[test]
    fn stream_errors_are_counted_and_loss_is_flagged() {
        let signals = StreamSignals::default();
        on_stream_error(&signals, cpal::ErrorKind::Xrun.into());
        on_stream_error(&signals, cpal::ErrorKind::Xrun.into());
        on_stream_error(&signals, cpal::ErrorKind::BackendError.into());
        assert_eq!(signals.xruns.load(Ordering::Relaxed), 2);
        assert_eq!(signals.errors.load(Ordering::Relaxed), 1);
        assert!(!signals.lost.load(Ordering::Relaxed));
        on_stream_error(&signals, cpal::ErrorKind::DeviceNotAvailable.into());
        assert!(signals.lost.load(Ordering::Relaxed));
    }

    #[test]
    fn the_capture_callback_runs_the_processor_in_chunks_notes_the_delay_and_hands_it_back() {
        use crate::engine::{engine, EngineConfig};
        let (processor, _handle, _markers) = engine(EngineConfig::new(48_000, 256, 2));
        let (rescue_tx, rescue_rx) = mpsc::channel();
        let (master_tx, mut master_rx) = rtrb::RingBuffer::new(MASTER_RING_FRAMES);
        let signals = Arc::new(StreamSignals::default());
        assert_eq!(signals.input_latency(256), 256, "one period until measured");
        let mut callback = CaptureCallback::new(
            processor,
            2,
            Some(master_tx),
            Arc::clone(&signals),
            48_000,
            rescue_tx,
        );
        // Longer than a chunk: processed as CHUNK_FRAMES + the rest, all of it reaching the
        // master ring. Its first sample was captured 10 ms before the callback.
        let frames = CHUNK_FRAMES + 100;
        let info = cpal::InputCallbackInfo::new(cpal::InputStreamTimestamp {
            callback: cpal::StreamInstant::new(5, 10_000_000),
            capture: cpal::StreamInstant::new(5, 0),
        });
        callback.run(&vec![0.0f32; 2 * frames], &info);
        assert_eq!(signals.callbacks.load(Ordering::Relaxed), 1);
        assert_eq!(signals.input_latency(256), 480);
        assert_eq!(master_rx.slots(), frames);
        assert_eq!(signals.xruns.load(Ordering::Relaxed), 0);
        assert!(rescue_rx.try_recv().is_err());
        drop(callback);
        let processor = rescue_rx
            .try_recv()
            .expect("dropping the callback hands the processor back");
        drop(processor);
        assert_eq!(master_rx.pop().ok(), Some([0.0, 0.0]));
    }
}
