//! Recording from JACK ports: a private dummy jackd at 64 and at 256 frames, a feeder client
//! with a distinct tone on each of three outputs patched into three tracks with the CLI, and an
//! impulse at one frame on two of them. Every take holds its tone sample for sample, and the
//! impulse sits at the same index in both files; also when the period grows mid-take.
#![cfg(feature = "jack")]

mod common;

use common::jack::{self, Feeder, JackServer, Signal, IMPULSE};
use common::*;

/// Tone channels (frequencies 200 + 20 × channel Hz) of the feeder's three outputs.
const CHANNELS: [usize; 3] = [3, 7, 11];

/// At 64 and 256 frames, then with the server's period growing from 256 to 4096 frames during
/// the take: overdub's node, made for 256-frame cycles, runs each longer one in sixteen chunks
/// until it gets buffers for 2048-frame chunks.
/// (One test: the feeder finds its server through the process-wide `JACK_DEFAULT_SERVER`.)
#[test]
fn each_port_is_recorded_sample_aligned_at_64_and_256_frames_and_when_the_period_grows() {
    for (period, grow_to) in [(64, None), (256, None), (256, Some(4096))] {
        record_and_verify(period, grow_to);
    }
}

/// Records the feeder's ports on a server of `period` frames and checks the takes; with
/// `grow_to`, the server's period changes to that a quarter second into the take.
fn record_and_verify(period: u32, grow_to: Option<u32>) {
    let server = JackServer::start(period);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &Reach::PeerToPeer(dir.path().join("run")),
        &dir.path().join("data"),
        &Settings {
            format: "f32",
            ..jack::settings(&server, "")
        },
    );
    let status = daemon.cli_json(&["status", "--json"]);
    assert_eq!(status["backend"], "jack", "{status}");
    assert_eq!(status["bufferSize"], period, "{status}");

    daemon.cli(&["session", "create", "demo", "--tracks", "3"]);
    for track in 1..=3 {
        let port = format!("overdub:demo.track-{track}.in");
        assert!(
            server.lsp(&[]).lines().any(|l| l == port),
            "{port} missing:\n{}",
            server.lsp(&[])
        );
    }
    let feeder = Feeder::start(&CHANNELS.map(Signal::Tone));
    for track in 1..=3 {
        daemon.cli(&[
            "track",
            "set",
            &track.to_string(),
            "--arm",
            "--input",
            &format!("feeder:out_{track}"),
        ]);
        assert_eq!(
            server.connections(&format!("overdub:demo.track-{track}.in")),
            vec![format!("feeder:out_{track}")]
        );
    }

    let missed_before = feeder.missed_cycles();
    daemon.cli(&["record"]);
    sleep(0.25);
    if let Some(frames) = grow_to {
        server.set_period(frames);
        wait_for(
            || daemon.cli_json(&["status", "--json"])["bufferSize"] == frames,
            "the daemon sees the new period",
        );
    }
    sleep(0.25);
    let impulse = feeder.impulse_in(u64::from(RATE) / 4);
    // Stop once the feeder is a quarter second past the impulse (JACK's clock, not ours).
    wait_for(
        || feeder.frame() > impulse + u64::from(RATE) / 4,
        "the feeder passes the impulse",
    );
    let metrics = daemon.cli_json(&["stop", "--json"]);

    if grow_to.is_none() {
        // The dummy driver's capture ports report one period of latency; overdub's own period
        // comes on top: two periods from input to processing.
        let latency = metrics["averageLatency"].as_f64().unwrap();
        let expected = f64::from(2 * period) * 1000.0 / f64::from(RATE);
        assert!(
            (latency - expected).abs() < 1e-6,
            "period {period}: averageLatency {latency} ms, expected {expected}"
        );
    }

    if grow_to.is_some() {
        // The node got buffers for the longer cycles (2 048 frames, the longest chunk).
        assert!(
            daemon
                .log()
                .contains("a node's buffers grow to 2048-frame chunks"),
            "{}",
            daemon.log()
        );
    }

    let takes = daemon.takes();
    assert_eq!(takes.len(), 3, "{takes:?}");
    let wavs: Vec<Wav> = takes.iter().map(|t| read_wav(&t.path)).collect();
    for (take, wav) in takes.iter().zip(&wavs) {
        assert_eq!(take.status, "complete");
        assert!(wav.frames() > RATE as usize / 4, "{} frames", wav.frames());
        assert_eq!(sox_info(&take.path).0, RATE);
    }

    // The impulse lands on the same sample index in tracks 1 and 2. An xrun, or a cycle the
    // server ran without the feeder, may break the period that carried it (JACK hands a late
    // feeder's buffers on as they are, and a skipped feeder's stale ones): then files without
    // exactly one impulse are left to the tone checks below. `xruns` counts both.
    let xruns = metrics["xruns"].as_u64().unwrap() + feeder.missed_cycles() - missed_before;
    let impulses = |wav: &Wav| -> Vec<usize> {
        (0..wav.frames())
            .filter(|&i| wav.samples[i] == IMPULSE)
            .collect()
    };
    let (first, second) = (impulses(&wavs[0]), impulses(&wavs[1]));
    if xruns == 0 || (first.len() == 1 && second.len() == 1) {
        assert_eq!(
            first.len(),
            1,
            "period {period}: one impulse per file, found at {first:?} ({xruns} xruns or \
             missed feeder cycles)"
        );
        assert_eq!(first, second, "period {period}");
    }
    let at = first.first().copied().unwrap_or(usize::MAX);

    // Every file holds its tone, all three from the same feeder frame (sample-aligned).
    let tracks: Vec<(usize, &[f32])> = CHANNELS
        .iter()
        .zip(&wavs)
        .map(|(c, w)| (*c, w.samples.as_slice()))
        .collect();
    if xruns == 0 {
        // One unbroken run per file, from one common feeder frame; the impulse is the only
        // sample off the tone.
        let runs: Vec<(Vec<(usize, u64)>, usize)> = tracks
            .iter()
            .map(|(channel, samples)| tone_runs(*channel, samples, at))
            .collect();
        for (index, ((track_runs, matched), (_, samples))) in runs.iter().zip(&tracks).enumerate() {
            assert_eq!(track_runs.len(), 1, "track {}: {track_runs:?}", index + 1);
            assert_eq!(
                *matched,
                samples.len() - usize::from(index < 2),
                "track {}",
                index + 1
            );
            // Tone periods: 2400 frames for tracks 1 and 2, 800 for track 3.
            assert_eq!(
                track_runs[0].1 % 800,
                runs[0].0[0].1 % 800,
                "track {}",
                index + 1
            );
        }
    } else {
        // An xrun may break the tones (JACK hands a late client's buffer on as it is). Window
        // by window: wherever all three show their tones, they show them from one common
        // feeder frame, but for the periods an xrun broke: a feeder late past its deadline may
        // still be writing its ports while overdub copies them, leaving one track a period
        // behind for that period (seen with hundreds of xruns at 64 frames, before and after
        // overdub copied all inputs at once). At most two windows per xrun, and a tenth of the
        // windows, may show that; the tones are there most of the time.
        let frames = wavs[0].frames();
        let mut complete = 0;
        let mut out_of_step = Vec::new();
        let windows: Vec<usize> = (0..frames.saturating_sub(64)).step_by(256).collect();
        for &from in &windows {
            let phases: Vec<Option<u64>> = tracks
                .iter()
                .map(|(channel, samples)| {
                    find_offset(&[(*channel, *samples)], from).map(|k| k % 800)
                })
                .collect();
            if phases.iter().all(Option::is_some) {
                complete += 1;
                if !phases.windows(2).all(|pair| pair[0] == pair[1]) {
                    out_of_step.push((from, phases));
                }
            }
        }
        assert!(
            complete * 2 >= windows.len(),
            "period {period}: the tones are in only {complete} of {} windows ({xruns} xruns)",
            windows.len()
        );
        let bound = (2 * xruns as usize).min(complete / 10);
        assert!(
            out_of_step.len() <= bound,
            "period {period}: {} of {complete} windows have the tracks out of step, at most \
             {bound} allowed ({xruns} xruns); the first: {:?}",
            out_of_step.len(),
            out_of_step.first()
        );
        // A break lasts a period, so the take ends in step: a track that slipped for good,
        // however late in the take, fails here.
        let last = windows.iter().rev().find(|&&from| {
            tracks
                .iter()
                .all(|(channel, samples)| find_offset(&[(*channel, *samples)], from).is_some())
        });
        assert!(
            !last.is_some_and(|last| out_of_step.iter().any(|(from, _)| from == last)),
            "period {period}: the take ends out of step ({xruns} xruns): {out_of_step:?}"
        );
    }
    drop(feeder);
}

/// Cuts `samples` into runs of `channel`'s tone: (start index, feeder frame at that index), in
/// order, and counts the samples that match. The impulse at `impulse` and samples that match no
/// tone phase are skipped.
fn tone_runs(channel: usize, samples: &[f32], impulse: usize) -> (Vec<(usize, u64)>, usize) {
    let mut runs = Vec::new();
    let mut matched = 0;
    let mut pos = 0;
    while pos < samples.len() {
        if pos == impulse && samples[pos] == IMPULSE {
            pos += 1;
            continue;
        }
        match find_offset(&[(channel, samples)], pos) {
            Some(k) => {
                let k = k % 2400;
                let length = matching_run(channel, samples, pos, k).max(1);
                // A run the impulse splits continues with the same feeder frame after it.
                let continues = runs.last().is_some_and(|&(start, first): &(usize, u64)| {
                    pos == impulse + 1 && (first + (pos - start) as u64) % 2400 == k
                });
                if !continues {
                    runs.push((pos, k));
                }
                matched += matching_run(channel, samples, pos, k);
                pos += length;
            }
            None => pos += 1,
        }
    }
    (runs, matched)
}
