//! Crash safety: `kill -9` mid-take, restart, and every take is back, playable, marked
//! `recovered`, missing at most the flush interval — five times over, with no earlier take lost.
//! And a clean restart brings sessions and track settings back identical.

mod common;

use common::*;

#[test]
fn kill_minus_nine_five_times_loses_no_take() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let settings = Settings {
        flush_interval: 0.25,
        ..Settings::default()
    };
    let reach = Reach::Bus(bus.address.clone());
    let mut daemon = Daemon::start(&reach, &data, &settings);
    let id = daemon.cli(&["session", "create", "crashy", "--tracks", "2"]);
    let id = id.trim().to_string();

    let mut expected_min_frames = Vec::new();
    for round in 1..=5 {
        daemon.cli(&["record"]);
        let started = std::time::Instant::now();
        sleep(1.2);
        let rolled = started.elapsed().as_secs_f64();
        daemon.crash();
        // At most the flush interval (plus one CLI round trip of slack) may be lost.
        let min_frames = ((rolled - settings.flush_interval - 0.2) * f64::from(RATE)) as u64;
        expected_min_frames.push(min_frames);

        daemon = Daemon::start(&reach, &data, &settings);
        // The session came back active, with its id.
        assert_eq!(daemon.session_id(), id, "round {round}");
        let takes = daemon.takes();
        assert_eq!(
            takes.len(),
            2 * round,
            "round {round}: every take journaled"
        );
        for (n, take) in takes.iter().enumerate() {
            assert_eq!(take.status, "recovered", "round {round}: take {}", take.id);
            let wav = read_wav(&take.path);
            assert_eq!(
                wav.frames() as u64,
                take.frames,
                "round {round}: take {}",
                take.id
            );
            let (rate, channels, bits, samples) = sox_info(&take.path);
            assert_eq!((rate, channels, bits, samples), (RATE, 1, 24, take.frames));
            let min = expected_min_frames[n / 2];
            assert!(
                take.frames >= min,
                "round {round}: take {} kept {} frames; at least {min} expected",
                take.id,
                take.frames
            );
            // What was kept is the real signal, not garbage.
            let channel = default_channel(take.track_index);
            let k = find_offset(&[(channel, &wav.samples[..])], 0).expect("tone at the start");
            assert_eq!(matching_run(channel, &wav.samples, 0, k), wav.frames());
        }
    }
    daemon.terminate();
}

#[test]
fn sessions_and_track_settings_survive_a_restart() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let reach = Reach::Bus(bus.address.clone());
    let mut daemon = Daemon::start(&reach, &data, &Settings::default());
    daemon.cli(&["session", "create", "keeper", "--tracks", "3"]);
    daemon.cli(&[
        "track",
        "set",
        "2",
        "--name",
        "Bass DI",
        "--level",
        "-6dB",
        "--pan",
        "-0.25",
        "--gain",
        "1.5",
        "--mute",
        "--monitor",
        "input",
        "--input",
        "Virtual Microphone 1",
    ]);
    daemon.cli(&["track", "set", "Track 3", "--solo", "--arm"]);
    daemon.cli(&["track", "set", "1", "--disarm"]);
    let before = daemon.cli_json(&["session", "show", "--json"]);
    let list_before = daemon.cli_json(&["session", "list", "--json"]);
    daemon.terminate();

    let daemon = Daemon::start(&reach, &data, &Settings::default());
    let after = daemon.cli_json(&["session", "show", "--json"]);
    assert_eq!(before["id"], after["id"]);
    assert_eq!(before["name"], after["name"]);
    assert_eq!(before["tracks"], after["tracks"]);
    assert_eq!(list_before, daemon.cli_json(&["session", "list", "--json"]));
    let bass = &after["tracks"][1];
    assert_eq!(bass["name"], "Bass DI");
    assert!((bass["level"].as_f64().unwrap() - 0.501_187).abs() < 1e-5);
    assert_eq!(bass["pan"], -0.25);
    assert_eq!(bass["inputGain"], 1.5);
    assert_eq!(bass["muted"], true);
    assert_eq!(bass["monitoring"], "input");
    assert_eq!(bass["input"], "Virtual Microphone 1");
    assert_eq!(after["tracks"][2]["soloed"], true);
    assert_eq!(after["tracks"][0]["armed"], false);

    // A closed session stays stored and can be reopened with the same settings.
    let id = after["id"].as_str().unwrap().to_string();
    daemon.cli(&["session", "close"]);
    let list = daemon.cli_json(&["session", "list", "--json"]);
    assert_eq!(list[0]["active"], false);
    daemon.cli_err(&["session", "show"]);
    daemon.cli(&["session", "open", &id]);
    assert_eq!(
        daemon.cli_json(&["session", "show", "--json"])["tracks"],
        before["tracks"]
    );
}
