//! REAL-TIME engine: the [`Processor`] that runs in the audio callback, the [`EngineHandle`]
//! that `control` drives it with, and the [`EngineShared`] atomics both sides read.
//!
//! Built as a pair by [`engine`]; commands travel on one pre-allocated queue, events and capture
//! markers come back on two others. Nothing here reaches tokio, zbus or rusqlite.

#[cfg(all(test, debug_assertions))]
mod alloc_tests;
pub mod messages;
mod meter;
mod mixer;
mod processor;
mod shared;
mod stream;
#[cfg(test)]
mod test_rig;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use messages::*;
pub use mixer::{audible, pan_gains};
pub use processor::{AudioInputs, ProcessContext, Processor, TrackOutputs};
pub use shared::EngineShared;
pub use stream::{
    InboundStream, MonitorTap, StreamStats, TapBlock, TapSource, TapStats, MAX_TAPS,
    TAP_BLOCK_FRAMES,
};

/// The test binary's allocator refuses (aborts on) any allocation inside `assert_no_alloc`, so
/// the real-time tests fail if `process` allocates.
#[cfg(all(test, debug_assertions))]
#[global_allocator]
static ALLOCATOR: assert_no_alloc::AllocDisabler = assert_no_alloc::AllocDisabler;

/// Sizes of one engine. All buffers and queues are allocated once from these in [`engine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Frames per second (drives the meter time constants).
    pub sample_rate: u32,
    /// Largest period processed in one go; longer periods are processed in chunks.
    pub max_period: usize,
    /// Number of track slots.
    pub max_tracks: usize,
    /// Capacity of the command queue (control → processor).
    pub command_capacity: usize,
    /// Capacity of the event queue (processor → control).
    pub event_capacity: usize,
    /// Capacity of the capture-marker queue (processor → capture writer).
    pub marker_capacity: usize,
}

impl EngineConfig {
    /// A configuration with queue capacities derived from the track count: room for a burst of
    /// per-track commands, and for several take boundaries per track between two reads.
    pub fn new(sample_rate: u32, max_period: usize, max_tracks: usize) -> Self {
        EngineConfig {
            sample_rate,
            max_period,
            max_tracks,
            command_capacity: 64 + 8 * max_tracks,
            event_capacity: 256 + 8 * max_tracks,
            marker_capacity: 256 + 8 * max_tracks,
        }
    }
}

/// Builds an engine: the [`Processor`] for the audio thread, the [`EngineHandle`] for `control`,
/// and the consumer of capture markers for the capture writer. **Not** real-time safe
/// (allocates every buffer the processor will ever use). Zero sizes are raised to 1.
pub fn engine(config: EngineConfig) -> (Processor, EngineHandle, rtrb::Consumer<CaptureMarker>) {
    let (command_tx, command_rx) = rtrb::RingBuffer::new(config.command_capacity.max(1));
    let (event_tx, event_rx) = touched_ring(config.event_capacity.max(1));
    let (marker_tx, marker_rx) = touched_ring(config.marker_capacity.max(1));
    let shared = Arc::new(EngineShared::new(config.max_tracks));
    let processor = Processor::new(
        config.sample_rate,
        config.max_period,
        config.max_tracks,
        command_rx,
        event_tx,
        marker_tx,
        Arc::clone(&shared),
    );
    let handle = EngineHandle {
        commands: command_tx,
        events: event_rx,
        shared,
    };
    (processor, handle, marker_rx)
}

/// A ring of `capacity` slots whose memory has been written once, for a producer on the
/// audio thread. A new allocation is only address space until first written: the kernel maps
/// each page on its first write, a page fault that may wait for the process's memory-map lock.
/// Written here, off the audio thread, those faults never land in the callback (and with the
/// process memory locked, the pages stay). The bytes written are not zero, so that neither
/// the compiler (an allocation followed by zeroes is a `calloc`) nor the kernel (all-zero
/// pages of a huge page may go back to the shared zero page) can undo the writing. The ring
/// is empty: the writes are never committed. **Not** real-time safe (allocates, faults the
/// pages in).
pub fn touched_ring<T>(capacity: usize) -> (rtrb::Producer<T>, rtrb::Consumer<T>) {
    let (mut producer, consumer) = rtrb::RingBuffer::new(capacity);
    if let Ok(mut chunk) = producer.write_chunk_uninit(capacity) {
        let (first, second) = chunk.as_mut_slices();
        for slots in [first, second] {
            // SAFETY: `slots` is writable memory of the ring, and any bytes are a valid
            // `MaybeUninit<T>`; the slots are never committed, so never read as a `T`.
            unsafe { std::ptr::write_bytes(slots.as_mut_ptr(), 0x55, slots.len()) };
        }
    }
    (producer, consumer)
}

/// `len` zeroed samples whose every page has been written once, for a buffer the audio thread
/// works in: like [`touched_ring`], this takes the page faults of the first writes here, off
/// the audio thread. Unlike the ring's pattern these bytes are zeros, since the buffers must
/// start silent: where the kernel backs one with a transparent huge page and later splits it,
/// it may map its all-zero pages back to the shared zero page, and the next write there faults
/// again. **Not** real-time safe (allocates, faults the pages in).
pub fn touched_zeros(len: usize) -> Box<[f32]> {
    let mut buffer = Vec::<f32>::with_capacity(len);
    for slot in buffer.spare_capacity_mut() {
        // SAFETY: `slot` is valid, aligned memory of the allocation. The writes are volatile so
        // that the compiler can neither drop them nor turn the allocation and its zeroes into
        // one zeroed allocation, whose fresh pages would stay unmapped until first written.
        unsafe { std::ptr::write_volatile(slot.as_mut_ptr(), 0.0) };
    }
    // SAFETY: the loop above initialized every slot of the capacity, which is at least `len`.
    unsafe { buffer.set_len(len) };
    buffer.into_boxed_slice()
}

/// The control side of an engine: sends commands, receives events. Not used on the real-time
/// thread; every method is lock-free and non-blocking.
pub struct EngineHandle {
    commands: rtrb::Producer<ControlToEngine>,
    events: rtrb::Consumer<EngineToControl>,
    shared: Arc<EngineShared>,
}

impl EngineHandle {
    /// Queues a command for the next period. Hands it back if the queue is full (the caller
    /// decides whether to retry or report).
    pub fn send(&mut self, command: ControlToEngine) -> Result<(), ControlToEngine> {
        self.commands
            .push(command)
            .map_err(|rtrb::PushError::Full(command)| command)
    }

    /// The next event from the processor, if any.
    pub fn pop_event(&mut self) -> Option<EngineToControl> {
        self.events.pop().ok()
    }

    /// The atomics the processor publishes.
    pub fn shared(&self) -> &Arc<EngineShared> {
        &self.shared
    }
}
