//! Audio backends: they own the [`Processor`] while running and call
//! [`Processor::process`] once per period with their input and output buffers.
//!
//! - [`virtual_graph`]: clock-driven tones or silence, for machines without an audio server.
//! - [`offline`]: pull-driven, as fast as asked, for tests, benchmarks and export.

pub mod offline;
pub mod virtual_graph;

use crate::engine::{AudioInputs, Processor};

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

/// A backend whose audio thread is running the processor.
pub trait RunningBackend: Send {
    /// Rate, period and latencies.
    fn info(&self) -> BackendInfo;
    /// The devices (channel groups) tracks can take input from, and the outputs.
    fn devices(&self) -> Vec<DeviceInfo>;
    /// Stops the audio thread and hands the processor back (so it is dropped off the RT thread).
    fn stop(self: Box<Self>) -> Processor;
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
            samples: vec![0.0; channels * capacity].into_boxed_slice(),
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
