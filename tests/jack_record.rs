//! Recording from JACK ports: a private dummy jackd at 64 and at 256 frames, a feeder client
//! with a distinct tone on each of three outputs patched into three tracks with the CLI, and an
//! impulse at one frame on two of them. Every take holds its tone sample for sample, and the
//! impulse sits at the same index in both files.
#![cfg(feature = "jack")]

mod common;

use common::jack::{Feeder, JackServer, Signal, IMPULSE};
use common::*;

/// Tone channels (frequencies 200 + 20 × channel Hz) of the feeder's three outputs.
const CHANNELS: [usize; 3] = [3, 7, 11];

#[test]
fn each_port_is_recorded_sample_aligned_at_64_and_256_frames() {
    for period in [64, 256] {
        record_and_verify(period);
    }
}

fn record_and_verify(period: u32) {
    let server = JackServer::start(period);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &Reach::PeerToPeer(dir.path().join("run")),
        &dir.path().join("data"),
        &Settings {
            backend: "jack",
            jack_server: Some(server.name.clone()),
            format: "f32",
            ..Settings::default()
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

    daemon.cli(&["record"]);
    sleep(0.5);
    feeder.impulse_in(u64::from(RATE) / 4);
    sleep(0.7);
    daemon.cli(&["stop"]);

    let takes = daemon.takes();
    assert_eq!(takes.len(), 3, "{takes:?}");
    let wavs: Vec<Wav> = takes.iter().map(|t| read_wav(&t.path)).collect();
    for (take, wav) in takes.iter().zip(&wavs) {
        assert_eq!(take.status, "complete");
        assert!(wav.frames() > RATE as usize, "{} frames", wav.frames());
        assert_eq!(sox_info(&take.path).0, RATE);
    }

    // The impulse lands on the same sample index in tracks 1 and 2.
    let impulse_at = |wav: &Wav| {
        let hits: Vec<usize> = (0..wav.frames())
            .filter(|&i| wav.samples[i] == IMPULSE)
            .collect();
        assert_eq!(hits.len(), 1, "one impulse per file, found at {hits:?}");
        hits[0]
    };
    let at = impulse_at(&wavs[0]);
    assert_eq!(impulse_at(&wavs[1]), at, "period {period}");

    // Every file holds its tone, all three from the same feeder frame (sample-aligned), the whole
    // take long except the impulse sample.
    let tracks: Vec<(usize, &[f32])> = CHANNELS
        .iter()
        .zip(&wavs)
        .map(|(c, w)| (*c, w.samples.as_slice()))
        .collect();
    let k = find_offset(&tracks, 0).expect("the takes start with their tones, aligned");
    for (index, (channel, samples)) in tracks.iter().enumerate() {
        let run = matching_run(*channel, samples, 0, k);
        if index < 2 {
            assert_eq!(
                run,
                at,
                "track {} matches its tone up to the impulse",
                index + 1
            );
            let after = matching_run(*channel, samples, at + 1, k + at as u64 + 1);
            assert_eq!(
                at + 1 + after,
                samples.len(),
                "track {} after the impulse",
                index + 1
            );
        } else {
            assert_eq!(run, samples.len(), "track 3 is its tone throughout");
        }
    }
    drop(feeder);
}
