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

/// Exponential average of squared samples (a one-pole low-pass with a ~300 ms time constant).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meter {
    mean_square: f64,
}

impl Meter {
    /// Per-sample smoothing coefficient for `sample_rate`. Not called in `process`.
    pub(crate) fn coefficient(sample_rate: u32) -> f64 {
        let rate = f64::from(sample_rate.max(1));
        1.0 - (-1.0 / (RMS_TIME_CONSTANT * rate)).exp()
    }

    /// Feeds a mono block. Real-time safe.
    pub(crate) fn feed_mono(&mut self, samples: &[f32], coefficient: f64) -> BlockLevel {
        let mut level = BlockLevel {
            peak: 0.0,
            clips: 0,
        };
        for &s in samples {
            let a = s.abs();
            level.note(a);
            let x = f64::from(s);
            self.mean_square += coefficient * (x * x - self.mean_square);
        }
        level
    }

    /// Feeds a stereo block as one signal: the peak of both sides, the mean of their squares.
    /// Real-time safe.
    pub(crate) fn feed_stereo(
        &mut self,
        left: &[f32],
        right: &[f32],
        coefficient: f64,
    ) -> BlockLevel {
        let mut level = BlockLevel {
            peak: 0.0,
            clips: 0,
        };
        for (&l, &r) in left.iter().zip(right) {
            level.note(l.abs());
            level.note(r.abs());
            let (x, y) = (f64::from(l), f64::from(r));
            let square = 0.5 * (x * x + y * y);
            self.mean_square += coefficient * (square - self.mean_square);
        }
        level
    }

    /// Current RMS (linear). Real-time safe.
    pub(crate) fn rms(&self) -> f32 {
        if self.mean_square.is_finite() {
            self.mean_square.max(0.0).sqrt() as f32
        } else {
            0.0
        }
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

    #[test]
    fn rms_of_a_constant_converges_to_its_magnitude() {
        let coefficient = Meter::coefficient(48_000);
        let mut meter = Meter::default();
        let block = [-0.5f32; 4800];
        // 3 s = 10 time constants: within e^-10 of the target.
        for _ in 0..30 {
            meter.feed_mono(&block, coefficient);
        }
        assert!((meter.rms() - 0.5).abs() < 1e-3, "rms {}", meter.rms());
    }

    #[test]
    fn rms_time_constant_is_about_300_ms() {
        let coefficient = Meter::coefficient(48_000);
        let mut meter = Meter::default();
        meter.feed_mono(&[1.0f32; 14_400], coefficient);
        // After one time constant the mean square reaches 1 - 1/e.
        let expected = (1.0f64 - (-1.0f64).exp()).sqrt() as f32;
        assert!((meter.rms() - expected).abs() < 1e-3, "rms {}", meter.rms());
    }

    #[test]
    fn peak_and_clips() {
        let mut meter = Meter::default();
        let level = meter.feed_stereo(&[0.2, -1.0], &[0.5, 1.5], 0.1);
        assert_eq!(level.peak, 1.5);
        assert_eq!(level.clips, 2);
    }
}
