//! Test scaffolding: an engine on the offline backend with ramp inputs, and a simulated capture
//! writer that follows the marker contract of `messages.rs` strictly.

use rtrb::{Consumer, RingBuffer};

use super::*;
use crate::backend::offline::OfflineBackend;
use crate::backend::PlanarInputs;

/// Input channels of the rig.
pub(crate) const INPUTS: usize = 4;

/// The rig's input: channel `c` at backend frame `t` is `c × 1e6 + t` (exact in f32 below 2^24),
/// so every captured sample names the frame it came from.
pub(crate) fn ramp(channel: usize, frame: u64) -> f32 {
    (channel as u64 * 1_000_000 + frame) as f32
}

pub(crate) fn fill_ramp(first: u64, inputs: &mut PlanarInputs) {
    for channel in 0..INPUTS {
        for (k, sample) in inputs.channel_mut(channel).iter_mut().enumerate() {
            *sample = ramp(channel, first + k as u64);
        }
    }
}

/// Mono track on `input` (or stereo on `input`, `input + 1`), armed or not, monitored, unity.
pub(crate) fn params(channels: u8, input: u16, armed: bool) -> TrackParams {
    TrackParams {
        channels,
        input: [input, input.saturating_add(1)],
        armed,
        input_gain: 1.0,
        level: 1.0,
        pan: 0.0,
        muted: false,
        soloed: false,
        monitoring: Monitoring::Input,
    }
}

pub(crate) struct Rig {
    pub(crate) backend: OfflineBackend,
    pub(crate) handle: EngineHandle,
    pub(crate) writer: Writer,
}

impl Rig {
    pub(crate) fn new(config: EngineConfig) -> Rig {
        let (processor, handle, markers) = engine(config);
        Rig {
            backend: OfflineBackend::new(processor, INPUTS, 4096),
            handle,
            writer: Writer::new(config.max_tracks, markers),
        }
    }

    pub(crate) fn standard() -> Rig {
        Rig::new(EngineConfig::new(48_000, 64, 4))
    }

    pub(crate) fn send(&mut self, command: ControlToEngine) {
        assert!(self.handle.send(command).is_ok(), "command queue full");
    }

    /// Sends an `InstallTrack` with a capture ring of `ring_samples` samples.
    pub(crate) fn install(&mut self, track: u16, params: TrackParams, ring_samples: usize) {
        let (capture, ring) = RingBuffer::new(ring_samples);
        self.writer.attach(track, params.channels, ring);
        self.send(ControlToEngine::InstallTrack {
            track,
            slot: Box::new(TrackSlot { params, capture }),
        });
    }

    /// Attaches an inbound stream of `channels` to slot `track` with a ring of `ring_samples`
    /// samples; returns the producer end and the stats.
    pub(crate) fn attach_stream(
        &mut self,
        track: u16,
        channels: u8,
        prebuffer: usize,
        ring_samples: usize,
    ) -> (rtrb::Producer<f32>, std::sync::Arc<StreamStats>) {
        let (producer, consumer) = RingBuffer::new(ring_samples);
        let (stream, stats) = InboundStream::new(consumer, channels, prebuffer);
        self.send(ControlToEngine::AttachStream {
            track,
            stream: Box::new(stream),
        });
        (producer, stats)
    }

    /// Attaches tap `id` of `source` with a ring of `blocks` blocks.
    pub(crate) fn attach_tap(
        &mut self,
        id: u8,
        source: TapSource,
        blocks: usize,
    ) -> (Consumer<TapBlock>, std::sync::Arc<TapStats>) {
        let (producer, consumer) = RingBuffer::new(blocks);
        let (tap, stats) = MonitorTap::new(source, producer);
        self.send(ControlToEngine::AttachTap {
            id,
            tap: Box::new(tap),
        });
        (consumer, stats)
    }

    /// Runs one period of ramp input; returns the master.
    pub(crate) fn run(&mut self, frames: usize) -> (Vec<f32>, Vec<f32>) {
        let (left, right) = self.backend.run_period(frames, fill_ramp);
        (left.to_vec(), right.to_vec())
    }

    /// Runs one period with a constant on each input channel; returns the master.
    pub(crate) fn run_constant(
        &mut self,
        frames: usize,
        values: [f32; INPUTS],
    ) -> (Vec<f32>, Vec<f32>) {
        let (left, right) = self.backend.run_period(frames, |_, inputs| {
            for (channel, value) in values.iter().enumerate() {
                inputs.channel_mut(channel).fill(*value);
            }
        });
        (left.to_vec(), right.to_vec())
    }

    pub(crate) fn events(&mut self) -> Vec<EngineToControl> {
        std::iter::from_fn(|| self.handle.pop_event()).collect()
    }

    pub(crate) fn shared(&self) -> &EngineShared {
        self.handle.shared()
    }
}

/// A finished or open take as the writer rebuilt it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct WrittenTake {
    pub(crate) frame: u64,
    /// Interleaved samples, gaps written as silence.
    pub(crate) samples: Vec<f32>,
    pub(crate) gaps: Vec<(u64, u64)>,
    pub(crate) length: Option<u64>,
}

/// Simulated capture writer: checks every marker against the ring contents.
pub(crate) struct Writer {
    markers: Consumer<CaptureMarker>,
    rings: Vec<Option<(u8, Consumer<f32>)>>,
    open: Vec<Option<WrittenTake>>,
    pub(crate) finished: Vec<Vec<WrittenTake>>,
    /// Every marker seen, in order.
    pub(crate) log: Vec<CaptureMarker>,
}

impl Writer {
    fn new(tracks: usize, markers: Consumer<CaptureMarker>) -> Writer {
        Writer {
            markers,
            rings: (0..tracks).map(|_| None).collect(),
            open: vec![None; tracks],
            finished: vec![Vec::new(); tracks],
            log: Vec::new(),
        }
    }

    fn attach(&mut self, track: u16, channels: u8, ring: Consumer<f32>) {
        if let Some(entry) = self.rings.get_mut(usize::from(track)) {
            *entry = Some((channels, ring));
        }
    }

    /// Moves `frames` frames from the ring into the open take; panics if they are not there.
    fn take_frames(&mut self, track: usize, frames: u64) {
        let (channels, ring) = self.rings[track].as_mut().expect("ring attached");
        let take = self.open[track].as_mut().expect("samples outside a take");
        let count = frames as usize * usize::from(*channels);
        assert!(
            ring.slots() >= count,
            "track {track}: marker expects {count} samples, ring has {}",
            ring.slots()
        );
        for _ in 0..count {
            take.samples.push(ring.pop().expect("checked"));
        }
    }

    fn written(&self, track: usize) -> u64 {
        let (channels, _) = self.rings[track].as_ref().expect("ring attached");
        let take = self.open[track].as_ref().expect("marker outside a take");
        take.samples.len() as u64 / u64::from(*channels)
    }

    /// Handles every queued marker, then moves what is left in the rings into the open takes.
    pub(crate) fn drain(&mut self) {
        while let Ok(marker) = self.markers.pop() {
            self.log.push(marker);
            match marker {
                CaptureMarker::TakeStart { track, frame } => {
                    let t = usize::from(track);
                    assert!(self.open[t].is_none(), "TakeStart inside a take");
                    self.open[t] = Some(WrittenTake {
                        frame,
                        ..WrittenTake::default()
                    });
                }
                CaptureMarker::Gap { track, at, frames } => {
                    let t = usize::from(track);
                    let before = at - self.written(t);
                    self.take_frames(t, before);
                    let channels = usize::from(self.rings[t].as_ref().expect("ring").0);
                    let take = self.open[t].as_mut().expect("open");
                    take.gaps.push((at, frames));
                    take.samples
                        .extend(std::iter::repeat_n(0.0, frames as usize * channels));
                }
                CaptureMarker::TakeEnd { track, at } => {
                    let t = usize::from(track);
                    let before = at - self.written(t);
                    self.take_frames(t, before);
                    let mut take = self.open[t].take().expect("open");
                    take.length = Some(at);
                    self.finished[t].push(take);
                }
            }
        }
        for t in 0..self.rings.len() {
            let Some((_, ring)) = self.rings[t].as_ref() else {
                continue;
            };
            let available = ring.slots();
            if self.open[t].is_some() {
                let channels = u64::from(self.rings[t].as_ref().expect("ring").0);
                self.take_frames(t, available as u64 / channels);
            } else {
                assert_eq!(available, 0, "track {t}: samples outside a take");
            }
        }
    }
}
