//! The offline backend: runs the processor on demand, as fast as asked, with inputs the caller
//! writes each period. For tests, benchmarks and (later) export.

use std::sync::Arc;

use super::virtual_graph::ToneGenerator;
use super::PlanarInputs;
use crate::engine::{EngineShared, ProcessContext, Processor};

/// Owns a [`Processor`] and pre-allocated buffers, and runs one period per call.
pub struct OfflineBackend {
    processor: Processor,
    inputs: PlanarInputs,
    left: Box<[f32]>,
    right: Box<[f32]>,
    frame: u64,
}

impl OfflineBackend {
    /// Wraps `processor` with `input_channels` input channels and buffers for periods of up to
    /// `max_frames` frames. **Not** real-time safe (allocates).
    pub fn new(processor: Processor, input_channels: usize, max_frames: usize) -> Self {
        OfflineBackend {
            processor,
            inputs: PlanarInputs::new(input_channels, max_frames),
            left: vec![0.0; max_frames].into_boxed_slice(),
            right: vec![0.0; max_frames].into_boxed_slice(),
            frame: 0,
        }
    }

    /// Backend frames run so far (the first frame of the next period).
    pub fn frame(&self) -> u64 {
        self.frame
    }

    /// The processor's shared atomics.
    pub fn shared(&self) -> &Arc<EngineShared> {
        self.processor.shared()
    }

    /// Runs one period of `frames` frames (clamped to `max_frames`): zeroes the inputs, lets
    /// `fill(first_frame, inputs)` write them, processes, and returns the master `(left, right)`
    /// for the frames run. Real-time safe if `fill` is.
    pub fn run_period<F>(&mut self, frames: usize, fill: F) -> (&[f32], &[f32])
    where
        F: FnOnce(u64, &mut PlanarInputs),
    {
        self.inputs.set_frames(frames);
        let frames = self.inputs.frames();
        for channel in 0..crate::engine::AudioInputs::channel_count(&self.inputs) {
            self.inputs.channel_mut(channel).fill(0.0);
        }
        fill(self.frame, &mut self.inputs);
        self.processor.process(&mut ProcessContext {
            frames,
            inputs: &self.inputs,
            master_left: &mut self.left,
            master_right: &mut self.right,
            track_outputs: None,
        });
        self.frame += frames as u64;
        (&self.left[..frames], &self.right[..frames])
    }

    /// Runs one period whose inputs are the virtual tones at the backend's running frame.
    /// Real-time safe.
    pub fn run_tones(&mut self, frames: usize, tones: &ToneGenerator) -> (&[f32], &[f32]) {
        self.run_period(frames, |frame, inputs| tones.fill(frame, inputs))
    }

    /// Hands the processor back. **Not** real-time safe (frees the buffers).
    pub fn into_processor(self) -> Processor {
        self.processor
    }
}
