//! The monitor mix check shared by the JACK and PipeWire backends: three tracks fed the
//! constants [`INPUTS`], and for several level, pan, mute and solo settings the master equals
//! Σ level × pan gain × input over the audible tracks, and track 3's direct outputs its own
//! share, within 0.1 dB.

use std::f64::consts::FRAC_PI_4;

use super::{sleep, Daemon};

/// The constant each of the three tracks is fed.
pub const INPUTS: [f64; 3] = [0.1, 0.2, 0.3];

/// One track's mix settings in a scenario.
struct TrackMix {
    level: f64,
    pan: f64,
    muted: bool,
    soloed: bool,
}

/// Constant-power pan: left = cos θ, right = sin θ, θ = (pan + 1) π/4. Tracks outside `only`
/// are left out.
fn expected(mix: &[TrackMix], only: &[usize]) -> (f64, f64) {
    let any_solo = mix.iter().any(|t| t.soloed);
    mix.iter()
        .zip(INPUTS)
        .enumerate()
        .filter(|(i, (t, _))| only.contains(i) && !t.muted && (!any_solo || t.soloed))
        .map(|(_, pair)| pair)
        .fold((0.0, 0.0), |(l, r), (t, input)| {
            let theta = (t.pan + 1.0) * FRAC_PI_4;
            (
                l + input * t.level * theta.cos(),
                r + input * t.level * theta.sin(),
            )
        })
}

fn db_apart(a: f64, b: f64) -> f64 {
    (20.0 * (a.abs() / b.abs()).log10()).abs()
}

/// Sets each scenario through the CLI (track `n` fed from `feeder:out_n`) and waits up to 5 s
/// for `read` — the last samples (left, right) of the master and of track 3's direct outputs —
/// to show its mix; fails with the first side that does not.
pub fn check_scenarios(daemon: &Daemon, mut read: impl FnMut() -> [(f32, f32); 2]) {
    // Each track: level, pan, muted, soloed.
    let mix = |level, pan, muted, soloed| TrackMix {
        level,
        pan,
        muted,
        soloed,
    };
    let scenarios: [[TrackMix; 3]; 4] = [
        [
            mix(1.0, 0.0, false, false),
            mix(0.5, -1.0, false, false),
            mix(0.25, 0.5, false, false),
        ],
        [
            mix(1.0, 0.0, false, false),
            mix(0.5, -1.0, true, false),
            mix(1.5, 0.3, false, false),
        ],
        [
            mix(0.8, -0.4, false, true),
            mix(0.5, -1.0, false, false),
            mix(1.0, 1.0, false, true),
        ],
        [
            mix(2.0, 0.0, true, true),
            mix(0.7, 0.2, false, false),
            mix(1.0, 1.0, false, true),
        ],
    ];
    for (n, mix) in scenarios.iter().enumerate() {
        for (index, track) in mix.iter().enumerate() {
            let mut args = vec![
                "track".to_string(),
                "set".to_string(),
                (index + 1).to_string(),
                "--arm".to_string(),
                "--input".to_string(),
                format!("feeder:out_{}", index + 1),
                "--level".to_string(),
                track.level.to_string(),
                "--pan".to_string(),
                track.pan.to_string(),
            ];
            args.push(if track.muted { "--mute" } else { "--unmute" }.into());
            args.push(if track.soloed { "--solo" } else { "--unsolo" }.into());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            daemon.cli(&args);
        }
        // The new mix reaches the probes a cycle or two after the CLI returns: read until every
        // side is right, then assert on the last reading.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let [(left, right), (direct_left, direct_right)] = read();
            let (want_left, want_right) = expected(mix, &[0, 1, 2]);
            let (want_direct_left, want_direct_right) = expected(mix, &[2]);
            let sides = [
                ("left", left, want_left),
                ("right", right, want_right),
                ("track 3 direct left", direct_left, want_direct_left),
                ("track 3 direct right", direct_right, want_direct_right),
            ];
            let wrong = sides.iter().find_map(|&(side, got, want)| {
                let got = f64::from(got);
                let ok = if want.abs() < 1e-9 {
                    got.abs() < 1e-6
                } else {
                    db_apart(got, want) < 0.1
                };
                (!ok).then(|| format!("scenario {n} {side}: {got} vs {want}"))
            });
            match wrong {
                None => break,
                Some(why) if std::time::Instant::now() > deadline => {
                    panic!("{why}; all sides (got, want): {sides:?}")
                }
                Some(_) => sleep(0.02),
            }
        }
    }
}
