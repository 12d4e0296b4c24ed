//! Mixing math: the pan law, the audible (mute/solo) rule and the monitoring rule. All functions
//! here are pure and real-time safe.

use std::f32::consts::FRAC_PI_4;

use super::messages::Monitoring;

/// Constant-power pan gains `(left, right)` for `pan` in −1.0 (left) … +1.0 (right):
/// `left² + right² = 1`, so a centred track is −3.01 dB on each side and a panned track keeps
/// its loudness. Out-of-range values are clamped; NaN counts as centre. Real-time safe.
pub fn pan_gains(pan: f32) -> (f32, f32) {
    let pan = if pan.is_nan() {
        0.0
    } else {
        pan.clamp(-1.0, 1.0)
    };
    // The ends are exact so a hard-panned track leaves the other side truly silent.
    if pan <= -1.0 {
        return (1.0, 0.0);
    }
    if pan >= 1.0 {
        return (0.0, 1.0);
    }
    let angle = (pan + 1.0) * FRAC_PI_4;
    (angle.cos(), angle.sin())
}

/// The audible rule of DESIGN.md §1: a track is heard iff it is not muted and either no track is
/// soloed or it is soloed itself. Real-time safe.
pub fn audible(muted: bool, soloed: bool, any_soloed: bool) -> bool {
    !muted && (!any_soloed || soloed)
}

/// Whether a track sends its input to the monitor mix: `auto` while armed, `input` always,
/// `off` never. Real-time safe.
pub(crate) fn monitors_input(monitoring: Monitoring, armed: bool) -> bool {
    match monitoring {
        Monitoring::Auto => armed,
        Monitoring::Input => true,
        Monitoring::Off => false,
    }
}

/// `dst[i] += src[i] * gain` over the common length. Real-time safe.
pub(crate) fn add_scaled(dst: &mut [f32], src: &[f32], gain: f32) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s * gain;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(gain: f32) -> f64 {
        20.0 * f64::from(gain).log10()
    }

    #[test]
    fn centre_is_minus_three_db_on_each_side() {
        let (l, r) = pan_gains(0.0);
        assert!((db(l) + 3.0103).abs() < 1e-3, "left {} dB", db(l));
        assert!((db(r) + 3.0103).abs() < 1e-3, "right {} dB", db(r));
    }

    #[test]
    fn hard_pans_silence_the_other_side() {
        assert_eq!(pan_gains(-1.0), (1.0, 0.0));
        assert_eq!(pan_gains(1.0), (0.0, 1.0));
        assert_eq!(pan_gains(-7.0), (1.0, 0.0));
        assert_eq!(pan_gains(f32::NAN), pan_gains(0.0));
    }

    #[test]
    fn power_is_constant_across_the_range() {
        for step in -10..=10 {
            let (l, r) = pan_gains(step as f32 / 10.0);
            assert!((l * l + r * r - 1.0).abs() < 1e-6, "pan {step}");
        }
        let (l, r) = pan_gains(0.5);
        assert!(r > l, "right of centre is louder on the right");
    }

    #[test]
    fn solo_and_mute_rule() {
        assert!(audible(false, false, false));
        assert!(!audible(true, false, false));
        assert!(!audible(false, false, true));
        assert!(audible(false, true, true));
        assert!(!audible(true, true, true), "mute wins over solo");
    }

    #[test]
    fn monitoring_modes() {
        assert!(monitors_input(Monitoring::Auto, true));
        assert!(!monitors_input(Monitoring::Auto, false));
        assert!(monitors_input(Monitoring::Input, false));
        assert!(!monitors_input(Monitoring::Off, true));
    }
}
