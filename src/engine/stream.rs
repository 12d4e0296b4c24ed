//! Audio that enters or leaves the engine through rings instead of backend ports: an
//! [`InboundStream`] replaces a track's input (remote recording: a browser microphone over
//! WebSocket), a [`MonitorTap`] copies the master mix or one track's monitor send out in fixed
//! [`TapBlock`]s. Both are built off the real-time thread, moved into the processor in a `Box`
//! and handed back in a `Box` so they are freed off it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rtrb::{Consumer, Producer};

/// Most taps one engine serves at once (a fixed array in the processor).
pub const MAX_TAPS: usize = 8;

/// Frames in one [`TapBlock`].
pub const TAP_BLOCK_FRAMES: usize = 256;

/// Counters of one inbound stream, shared by the processor (writer) and the bridge (reader).
/// Atomics only: every method is real-time safe.
#[derive(Debug, Default)]
pub struct StreamStats {
    underruns: AtomicU64,
    frames_played: AtomicU64,
    flowing: AtomicBool,
}

impl StreamStats {
    /// Times the ring ran dry while flowing (the stream then primes again).
    pub fn underruns(&self) -> u64 {
        self.underruns.load(Ordering::Relaxed)
    }

    /// Frames taken from the ring into the track.
    pub fn frames_played(&self) -> u64 {
        self.frames_played.load(Ordering::Relaxed)
    }

    /// Whether the stream is flowing (false while priming).
    pub fn flowing(&self) -> bool {
        self.flowing.load(Ordering::Relaxed)
    }
}

/// A track's input coming from a ring of interleaved `f32` frames, with a jitter buffer: it
/// starts *priming* and gives silence until the ring holds at least `prebuffer` frames, then
/// *flows*: each period takes what it needs; when fewer frames are there it takes them, pads
/// with silence, counts an underrun and primes again.
pub struct InboundStream {
    ring: Consumer<f32>,
    channels: usize,
    prebuffer: usize,
    flowing: bool,
    stats: Arc<StreamStats>,
}

impl InboundStream {
    /// A priming stream of `channels` (1 or 2; others are clamped) interleaved channels that
    /// starts flowing once `prebuffer` frames wait in `ring`. **Not** real-time safe (allocates
    /// the stats).
    pub fn new(ring: Consumer<f32>, channels: u8, prebuffer: usize) -> (Self, Arc<StreamStats>) {
        let stats = Arc::new(StreamStats::default());
        let stream = InboundStream {
            ring,
            channels: usize::from(channels.clamp(1, 2)),
            prebuffer: prebuffer.max(1),
            flowing: false,
            stats: Arc::clone(&stats),
        };
        (stream, stats)
    }

    /// Interleaved channels per frame.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Fills `left` (and `right` for a stereo stream; a mono stream leaves it alone) with the
    /// next frames times `gain`, silence where there are none. Real-time safe.
    pub(crate) fn read(&mut self, gain: f32, left: &mut [f32], right: &mut [f32]) {
        let frames = left.len().min(right.len());
        let available = self.ring.slots() / self.channels;
        if !self.flowing && available >= self.prebuffer {
            self.flowing = true;
            self.stats.flowing.store(true, Ordering::Relaxed);
        }
        let mut taken = 0;
        if self.flowing {
            taken = available.min(frames);
            if let Ok(chunk) = self.ring.read_chunk(taken * self.channels) {
                let (first, second) = chunk.as_slices();
                let samples = first.iter().chain(second);
                if self.channels == 2 {
                    let mut samples = samples;
                    for (l, r) in left.iter_mut().zip(right.iter_mut()).take(taken) {
                        *l = samples.next().copied().unwrap_or(0.0) * gain;
                        *r = samples.next().copied().unwrap_or(0.0) * gain;
                    }
                } else {
                    for (l, s) in left.iter_mut().zip(samples).take(taken) {
                        *l = s * gain;
                    }
                }
                chunk.commit_all();
            } else {
                taken = 0;
            }
            self.stats
                .frames_played
                .fetch_add(taken as u64, Ordering::Relaxed);
            if taken < frames {
                self.stats.underruns.fetch_add(1, Ordering::Relaxed);
                self.flowing = false;
                self.stats.flowing.store(false, Ordering::Relaxed);
            }
        }
        left[taken..frames].fill(0.0);
        if self.channels == 2 {
            right[taken..frames].fill(0.0);
        }
    }
}

/// What a [`MonitorTap`] copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// The master mix after every track.
    Master,
    /// What the track in this slot sends to the master: post level and pan, stereo; silence
    /// while it is not heard (muted, not soloed, monitoring off) or the slot is empty.
    Track(u16),
}

/// A fixed-size block of stereo frames from a tap. Blocks are pushed whole or not at all, so a
/// reader finds any gap from `first_frame`.
#[derive(Clone, Copy, Debug)]
pub struct TapBlock {
    /// Graph frame of the first frame (the processor's frame counter, which advances every
    /// period whether the transport rolls or not).
    pub first_frame: u64,
    /// Frames in the block (`TAP_BLOCK_FRAMES` for every block the processor pushes).
    pub frames: u16,
    /// Interleaved left/right samples; the first `2 × frames` are valid.
    pub samples: [f32; 2 * TAP_BLOCK_FRAMES],
}

impl TapBlock {
    /// An empty block starting at `first_frame`. Real-time safe.
    pub fn empty(first_frame: u64) -> Self {
        TapBlock {
            first_frame,
            frames: 0,
            samples: [0.0; 2 * TAP_BLOCK_FRAMES],
        }
    }

    /// The valid interleaved samples.
    pub fn interleaved(&self) -> &[f32] {
        let valid = (2 * usize::from(self.frames)).min(self.samples.len());
        &self.samples[..valid]
    }
}

/// Counters of one tap. Atomics only: every method is real-time safe.
#[derive(Debug, Default)]
pub struct TapStats {
    pushed: AtomicU64,
    dropped: AtomicU64,
}

impl TapStats {
    /// Blocks pushed to the ring.
    pub fn pushed_blocks(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }

    /// Blocks not pushed because the ring was full (the reader sees the gap).
    pub fn dropped_blocks(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// An outbound copy of the master or of one track's monitor send, as [`TapBlock`]s on a ring.
pub struct MonitorTap {
    source: TapSource,
    ring: Producer<TapBlock>,
    /// The block being filled.
    block: TapBlock,
    /// Whether `block.first_frame` is set (the first frame after attaching).
    started: bool,
    stats: Arc<TapStats>,
}

impl MonitorTap {
    /// A tap of `source` pushing into `ring`. **Not** real-time safe (allocates the stats).
    pub fn new(source: TapSource, ring: Producer<TapBlock>) -> (Self, Arc<TapStats>) {
        let stats = Arc::new(TapStats::default());
        let tap = MonitorTap {
            source,
            ring,
            block: TapBlock::empty(0),
            started: false,
            stats: Arc::clone(&stats),
        };
        (tap, stats)
    }

    /// What it copies.
    pub fn source(&self) -> TapSource {
        self.source
    }

    /// Appends `frames` frames starting at graph frame `frame`, frame `i` being `sample(i)`
    /// (left, right), and pushes every block that fills. Real-time safe if `sample` is.
    pub(crate) fn feed(&mut self, frame: u64, frames: usize, sample: impl Fn(usize) -> (f32, f32)) {
        if !self.started {
            self.block = TapBlock::empty(frame);
            self.started = true;
        }
        let mut done = 0;
        while done < frames {
            let filled = usize::from(self.block.frames);
            let run = (TAP_BLOCK_FRAMES - filled).min(frames - done);
            let out = &mut self.block.samples[2 * filled..2 * (filled + run)];
            for (k, pair) in out.chunks_exact_mut(2).enumerate() {
                let (l, r) = sample(done + k);
                pair[0] = l;
                pair[1] = r;
            }
            done += run;
            self.block.frames += run as u16;
            if usize::from(self.block.frames) == TAP_BLOCK_FRAMES {
                let next = self.block.first_frame + TAP_BLOCK_FRAMES as u64;
                if self.ring.push(self.block).is_ok() {
                    self.stats.pushed.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                self.block.first_frame = next;
                self.block.frames = 0;
            }
        }
    }
}
