//! State the processor publishes through atomics, readable from any thread without locks.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::messages::TransportState;

/// One meter: a peak held until read, and the current RMS, both linear and stored as `f32` bits.
#[derive(Debug)]
pub(crate) struct MeterCell {
    /// Largest absolute sample since the last read (non-negative `f32` bits, so `fetch_max` on
    /// the bits orders like the floats).
    peak: AtomicU32,
    /// Latest RMS value published by the processor.
    rms: AtomicU32,
}

impl MeterCell {
    fn new() -> Self {
        MeterCell {
            peak: AtomicU32::new(0),
            rms: AtomicU32::new(0),
        }
    }

    /// Raises the held peak and replaces the RMS. Real-time safe (two atomic operations).
    pub(crate) fn publish(&self, peak: f32, rms: f32) {
        // Negative zero or NaN would break the bit ordering: keep only finite non-negatives.
        let peak = if peak.is_finite() && peak > 0.0 {
            peak
        } else {
            0.0
        };
        let rms = if rms.is_finite() && rms > 0.0 {
            rms
        } else {
            0.0
        };
        self.peak.fetch_max(peak.to_bits(), Ordering::Relaxed);
        self.rms.store(rms.to_bits(), Ordering::Relaxed);
    }

    /// Returns `(peak, rms)` and resets the held peak. Real-time safe.
    fn read(&self) -> (f32, f32) {
        let peak = f32::from_bits(self.peak.swap(0, Ordering::Relaxed));
        let rms = f32::from_bits(self.rms.load(Ordering::Relaxed));
        (peak, rms)
    }

    /// Forgets everything (a new track took the slot). Real-time safe.
    pub(crate) fn clear(&self) {
        self.peak.store(0, Ordering::Relaxed);
        self.rms.store(0, Ordering::Relaxed);
    }
}

/// Transport position, state, meters and run counters of one engine, shared between the
/// processor (writer) and any number of readers. Atomics only: every method is real-time safe
/// and lock-free.
#[derive(Debug)]
pub struct EngineShared {
    position: AtomicU64,
    state: AtomicU8,
    xruns: AtomicU64,
    dropped_frames: AtomicU64,
    recorded_frames: AtomicU64,
    clip_count: AtomicU64,
    master_clip_count: AtomicU64,
    event_overflows: AtomicU64,
    /// Smallest free fraction of any capture ring seen, as `f32` bits (non-negative).
    headroom_min: AtomicU32,
    tracks: Box<[MeterCell]>,
    master: [MeterCell; 2],
}

impl EngineShared {
    /// Creates the shared block for `max_tracks` track meters. **Not** real-time safe (allocates).
    pub(crate) fn new(max_tracks: usize) -> Self {
        EngineShared {
            position: AtomicU64::new(0),
            state: AtomicU8::new(TransportState::Stopped as u8),
            xruns: AtomicU64::new(0),
            dropped_frames: AtomicU64::new(0),
            recorded_frames: AtomicU64::new(0),
            clip_count: AtomicU64::new(0),
            master_clip_count: AtomicU64::new(0),
            event_overflows: AtomicU64::new(0),
            headroom_min: AtomicU32::new(1.0f32.to_bits()),
            tracks: (0..max_tracks).map(|_| MeterCell::new()).collect(),
            master: [MeterCell::new(), MeterCell::new()],
        }
    }

    /// Transport position in frames, as of the end of the last processed period.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    /// Current transport state.
    pub fn state(&self) -> TransportState {
        TransportState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Counts one xrun. Backends call this when the audio clock slipped; real-time safe.
    pub fn add_xrun(&self) {
        self.xruns.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` xruns reported by an audio server (off the real-time thread). Real-time safe.
    pub fn add_xruns(&self, n: u64) {
        self.xruns.fetch_add(n, Ordering::Relaxed);
    }

    /// Xruns reported by the backend since the last [`reset_run_counters`](Self::reset_run_counters).
    pub fn xruns(&self) -> u64 {
        self.xruns.load(Ordering::Relaxed)
    }

    /// Frames lost because a capture ring (or the marker queue) was full.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames.load(Ordering::Relaxed)
    }

    /// Timeline frames rolled while recording (pauses excluded).
    pub fn recorded_frames(&self) -> u64 {
        self.recorded_frames.load(Ordering::Relaxed)
    }

    /// Samples at or above full scale in the tracks after input gain: what a take records.
    pub fn clip_count(&self) -> u64 {
        self.clip_count.load(Ordering::Relaxed)
    }

    /// Samples at or above full scale in the master (monitor) output.
    pub fn master_clip_count(&self) -> u64 {
        self.master_clip_count.load(Ordering::Relaxed)
    }

    /// Events dropped because the event queue to `control` was full.
    pub fn event_overflows(&self) -> u64 {
        self.event_overflows.load(Ordering::Relaxed)
    }

    /// `1.0 -` the worst capture-ring occupancy seen (1.0 = rings always empty, 0.0 = a ring
    /// was full).
    pub fn capture_headroom_min(&self) -> f32 {
        f32::from_bits(self.headroom_min.load(Ordering::Relaxed))
    }

    /// `(peak, rms)` of track slot `slot`, linear, measured after input gain. The peak is the
    /// largest sample since the previous read, which resets it. Unknown slots read `(0, 0)`.
    pub fn track_meter(&self, slot: usize) -> (f32, f32) {
        self.tracks.get(slot).map_or((0.0, 0.0), MeterCell::read)
    }

    /// `(peak, rms)` of the master output, left then right; peaks reset by the read.
    pub fn master_meter(&self) -> [(f32, f32); 2] {
        [self.master[0].read(), self.master[1].read()]
    }

    /// Zeroes xruns, dropped, recorded frames and clips, and restores the headroom to 1.0, for a
    /// new recording run.
    pub fn reset_run_counters(&self) {
        self.xruns.store(0, Ordering::Relaxed);
        self.dropped_frames.store(0, Ordering::Relaxed);
        self.recorded_frames.store(0, Ordering::Relaxed);
        self.clip_count.store(0, Ordering::Relaxed);
        self.master_clip_count.store(0, Ordering::Relaxed);
        self.headroom_min.store(1.0f32.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn set_position(&self, frame: u64) {
        self.position.store(frame, Ordering::Relaxed);
    }

    pub(crate) fn set_state(&self, state: TransportState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub(crate) fn add_dropped(&self, frames: u64) {
        self.dropped_frames.fetch_add(frames, Ordering::Relaxed);
    }

    pub(crate) fn add_recorded(&self, frames: u64) {
        self.recorded_frames.fetch_add(frames, Ordering::Relaxed);
    }

    pub(crate) fn add_master_clips(&self, clips: u64) {
        if clips > 0 {
            self.master_clip_count.fetch_add(clips, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_clips(&self, clips: u64) {
        if clips > 0 {
            self.clip_count.fetch_add(clips, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_event_overflow(&self) {
        self.event_overflows.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a ring's free fraction if it is the lowest seen. Real-time safe.
    pub(crate) fn note_headroom(&self, free: f32) {
        let free = free.clamp(0.0, 1.0);
        self.headroom_min
            .fetch_min(free.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn track_cell(&self, slot: usize) -> Option<&MeterCell> {
        self.tracks.get(slot)
    }

    pub(crate) fn master_cell(&self, side: usize) -> Option<&MeterCell> {
        self.master.get(side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_held_until_read_and_reset_by_it() {
        let shared = EngineShared::new(2);
        let cell = shared.track_cell(1).expect("slot 1 exists");
        cell.publish(0.5, 0.1);
        cell.publish(0.25, 0.2);
        assert_eq!(shared.track_meter(1), (0.5, 0.2));
        assert_eq!(shared.track_meter(1), (0.0, 0.2));
        assert_eq!(shared.track_meter(7), (0.0, 0.0));
    }

    #[test]
    fn headroom_keeps_the_minimum_and_resets() {
        let shared = EngineShared::new(1);
        shared.note_headroom(0.75);
        shared.note_headroom(0.9);
        assert_eq!(shared.capture_headroom_min(), 0.75);
        shared.add_xrun();
        shared.add_clips(3);
        shared.reset_run_counters();
        assert_eq!(shared.capture_headroom_min(), 1.0);
        assert_eq!(shared.xruns(), 0);
        assert_eq!(shared.clip_count(), 0);
    }
}
