//! Per-signal metering state kept by the processor: the running mean square behind the RMS
//! value, plus per-block peak and clip counting. Published through
//! [`EngineShared`](super::EngineShared).

/// Time constant of the RMS average, in seconds.
const RMS_TIME_CONSTANT: f64 = 0.3;

/// What one block of samples contributed: its largest absolute sample and how many samples were
/// at or above full scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockLevel {
    pub(crate) peak: f32,
    pub(crate) clips: u64,
}

/// Exponential average of squared samples (a one-pole low-pass with a ~300 ms time constant),
/// advanced once per block: the block's mean square is blended in with the weight the filter
/// would give a block of that length, which for a constant signal is exactly the per-sample
/// filter and otherwise differs only in how energy is weighted inside one block (a few ms
/// against 300 ms). Per-sample work is a vectorisable sum of squares, peak and clip count.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meter {
    mean_square: f64,
    /// The last block length, its log retention and the retention computed for them: blocks
    /// are almost always one period long, so `exp` runs once, not once per block.
    retention: (usize, f64, f64),
}

/// Independent accumulators per pass, so the compiler can keep them in vector registers.
const LANES: usize = 8;

/// Sum of squares, peak magnitude and clipped-sample count of `samples`. Real-time safe.
fn scan(samples: &[f32]) -> (f64, BlockLevel) {
    let mut squares = [0.0f32; LANES];
    let mut peaks = [0.0f32; LANES];
    let mut clips = [0u32; LANES];
    let mut chunks = samples.chunks_exact(LANES);
    for chunk in &mut chunks {
        for lane in 0..LANES {
            let s = chunk[lane];
            let a = s.abs();
            squares[lane] += s * s;
            peaks[lane] = if a > peaks[lane] { a } else { peaks[lane] };
            clips[lane] += u32::from(a >= 1.0);
        }
    }
    let mut sum: f64 = squares.iter().map(|&x| f64::from(x)).sum();
    let mut level = BlockLevel {
        peak: peaks.iter().fold(0.0, |p, &a| if a > p { a } else { p }),
        clips: clips.iter().map(|&c| u64::from(c)).sum(),
    };
    for &s in chunks.remainder() {
        sum += f64::from(s) * f64::from(s);
        level.note(s.abs());
    }
    (sum, level)
}

impl Meter {
    /// Natural log of the per-sample retention of the average at `sample_rate`
    /// (`-1 / (τ · rate)`), the form [`feed_mono`](Self::feed_mono) takes. Not called in
    /// `process`.
    pub(crate) fn log_retention(sample_rate: u32) -> f64 {
        -1.0 / (RMS_TIME_CONSTANT * f64::from(sample_rate.max(1)))
    }

    /// Blends a block's mean square into the average. A block whose samples are not finite
    /// leaves the average as it was (one bad block must not blank the meter for good).
    /// Real-time safe.
    fn advance(&mut self, sum_of_squares: f64, count: usize, log_retention: f64) {
        if count == 0 || !sum_of_squares.is_finite() {
            return;
        }
        let (cached_count, cached_log, cached) = self.retention;
        let retention = if cached_count == count && cached_log == log_retention {
            cached
        } else {
            let retention = (log_retention * count as f64).exp();
            self.retention = (count, log_retention, retention);
            retention
        };
        let block = sum_of_squares / count as f64;
        self.mean_square = block + retention * (self.mean_square - block);
    }

    /// Feeds a mono block. Real-time safe.
    pub(crate) fn feed_mono(&mut self, samples: &[f32], log_retention: f64) -> BlockLevel {
        let (sum, level) = scan(samples);
        self.advance(sum, samples.len(), log_retention);
        level
    }

    /// Feeds a stereo block as one signal: the peak of both sides, the mean of their squares.
    /// Real-time safe.
    pub(crate) fn feed_stereo(
        &mut self,
        left: &[f32],
        right: &[f32],
        log_retention: f64,
    ) -> BlockLevel {
        let frames = left.len().min(right.len());
        let (sum_left, level_left) = scan(&left[..frames]);
        let (sum_right, level_right) = scan(&right[..frames]);
        self.advance(0.5 * (sum_left + sum_right), frames, log_retention);
        BlockLevel {
            peak: level_left.peak.max(level_right.peak),
            clips: level_left.clips + level_right.clips,
        }
    }

    /// Current RMS (linear). Real-time safe.
    pub(crate) fn rms(&self) -> f32 {
        self.mean_square.max(0.0).sqrt() as f32
    }
}

impl BlockLevel {
    fn note(&mut self, magnitude: f32) {
        if magnitude > self.peak {
            self.peak = magnitude;
        }
        if magnitude >= 1.0 {
            self.clips += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-sample one-pole filter the block form stands for.
    fn per_sample_mean_square(samples: &[f32], sample_rate: u32) -> f64 {
        let coefficient = 1.0 - Meter::log_retention(sample_rate).exp();
        samples.iter().fold(0.0, |ms, &s| {
            let x = f64::from(s);
            ms + coefficient * (x * x - ms)
        })
    }

    #[test]
    fn rms_of_a_constant_converges_to_its_magnitude() {
        let retention = Meter::log_retention(48_000);
        let mut meter = Meter::default();
        let block = [-0.5f32; 4800];
        // 3 s = 10 time constants: within e^-10 of the target.
        for _ in 0..30 {
            meter.feed_mono(&block, retention);
        }
        assert!((meter.rms() - 0.5).abs() < 1e-3, "rms {}", meter.rms());
    }

    #[test]
    fn rms_time_constant_is_about_300_ms() {
        let retention = Meter::log_retention(48_000);
        let mut meter = Meter::default();
        // 14 400 frames = 300 ms, in periods of 240.
        for _ in 0..60 {
            meter.feed_mono(&[1.0f32; 240], retention);
        }
        // After one time constant the mean square reaches 1 - 1/e.
        let expected = (1.0f64 - (-1.0f64).exp()).sqrt() as f32;
        assert!((meter.rms() - expected).abs() < 1e-4, "rms {}", meter.rms());
    }

    #[test]
    fn blocks_follow_the_per_sample_filter() {
        // A 440 Hz tone that starts at 200 ms, fed in 256-frame periods.
        let rate = 48_000;
        let signal: Vec<f32> = (0..rate as usize / 2)
            .map(|i| {
                let t = i as f32 / rate as f32;
                if t < 0.2 {
                    0.0
                } else {
                    0.5 * (std::f32::consts::TAU * 440.0 * t).sin()
                }
            })
            .collect();
        let retention = Meter::log_retention(rate);
        let mut meter = Meter::default();
        for block in signal.chunks(256) {
            meter.feed_mono(block, retention);
        }
        let exact = per_sample_mean_square(&signal, rate).sqrt() as f32;
        assert!(exact > 0.2, "exact {exact}");
        assert!(
            (meter.rms() - exact).abs() < 0.01 * exact,
            "block {} exact {exact}",
            meter.rms()
        );
    }

    #[test]
    fn peak_and_clips() {
        let mut meter = Meter::default();
        let level = meter.feed_stereo(&[0.2, -1.0], &[0.5, 1.5], -0.1);
        assert_eq!(level.peak, 1.5);
        assert_eq!(level.clips, 2);
    }

    #[test]
    fn peak_and_clips_in_whole_lanes_and_the_remainder() {
        let mut samples = [0.1f32; 21];
        samples[3] = -0.9;
        samples[8] = 1.0;
        samples[20] = -2.0;
        let level = Meter::default().feed_mono(&samples, -0.1);
        assert_eq!(level.peak, 2.0);
        assert_eq!(level.clips, 2);
        samples[20] = 0.0;
        let level = Meter::default().feed_mono(&samples, -0.1);
        assert_eq!(level.peak, 1.0);
        assert_eq!(level.clips, 1);
    }

    #[test]
    fn a_block_that_is_not_finite_leaves_the_average() {
        let retention = Meter::log_retention(48_000);
        let mut meter = Meter::default();
        meter.feed_mono(&[0.5; 48_000], retention);
        let before = meter.rms();
        let mut bad = [0.5f32; 256];
        bad[7] = f32::NAN;
        meter.feed_mono(&bad, retention);
        assert_eq!(meter.rms(), before);
        meter.feed_mono(&[0.5; 256], retention);
        assert!(meter.rms().is_finite() && meter.rms() > 0.4);
    }
}
