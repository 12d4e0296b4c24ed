//! Bad input gets a clear error and changes nothing: each case through the real daemon, over
//! the CLI and over `busctl`, with the state read back afterwards.

mod common;

use std::process::Command;

use common::*;

/// Runs `busctl VERB -- ARGS…` (the `--` lets values such as `-inf` through).
fn busctl(bus: &Bus, args: &[&str]) -> std::process::Output {
    Command::new("busctl")
        .arg(format!("--address={}", bus.address))
        .arg(args[0])
        .arg("--")
        .args(&args[1..])
        .output()
        .expect("busctl must be installed")
}

fn busctl_err(bus: &Bus, args: &[&str]) -> String {
    let out = busctl(bus, args);
    assert!(!out.status.success(), "busctl {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

const NAME: &str = "org.overdub.Overdub1";
const TRACK: &str = "org.overdub.Overdub1.Track";

#[test]
fn bad_values_names_ids_and_states_are_refused_and_change_nothing() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &Reach::Bus(bus.address.clone()),
        &dir.path().join("data"),
        &Settings {
            max_tracks: 16,
            ..Settings::default()
        },
    );
    let id = daemon.cli(&["session", "create", "strict", "--tracks", "2"]);
    let id = id.trim();
    let before = daemon.cli_json(&["session", "show", "--json"]);
    let track1 = format!("/org/overdub/Overdub1/session/{id}/track/1");

    // Levels, pans and gains: NaN, infinite, negative, out of range.
    for (flag, value) in [
        ("--level", "nan"),
        ("--level", "inf"),
        ("--level", "-0.5"),
        ("--level", "2.5"),
        ("--level", "+12dB"),
        ("--pan", "1.5"),
        ("--pan", "NaN"),
        ("--gain", "-1"),
        ("--gain", "100"),
    ] {
        let err = daemon.cli_err(&["track", "set", "1", flag, value]);
        assert!(err.contains("invalid_argument"), "{flag} {value}: {err}");
    }
    for (property, value) in [
        ("Level", "nan"),
        ("Pan", "-inf"),
        ("InputGain", "-0.1"),
        ("Level", "3"),
    ] {
        let err = busctl_err(
            &bus,
            &["set-property", NAME, &track1, TRACK, property, "d", value],
        );
        assert!(err.contains("must be"), "{property}={value}: {err}");
    }
    let err = busctl_err(
        &bus,
        &[
            "set-property",
            NAME,
            &track1,
            TRACK,
            "Monitoring",
            "s",
            "loud",
        ],
    );
    assert!(err.contains("monitoring"), "{err}");

    // Names: empty, 10 000 characters, control characters; a duplicate track name.
    let long = "x".repeat(10_000);
    for name in ["", "   ", long.as_str(), "bad\u{1b}[31mname"] {
        let err = daemon.cli_err(&["track", "set", "1", "--name", name]);
        assert!(err.contains("invalid_argument"), "{err}");
        let err = daemon.cli_err(&["session", "create", name]);
        assert!(err.contains("invalid_argument"), "{err}");
    }
    // Several changes at once: one bad value and none of them happens.
    let err = daemon.cli_err(&[
        "track", "set", "1", "--level", "0.5", "--mute", "--pan", "3",
    ]);
    assert!(err.contains("pan"), "{err}");
    let err = busctl_err(
        &bus,
        &[
            "call", NAME, &track1, TRACK, "Update", "a{sv}", "2", "Level", "d", "0.5", "Volume",
            "d", "1",
        ],
    );
    assert!(err.contains("unknown option"), "{err}");
    let err = daemon.cli_err(&["track", "set", "1", "--name", "Track 2"]);
    assert!(err.contains("already exists"), "{err}");

    // Unknown input, unknown track, unknown session, unknown object path.
    let err = daemon.cli_err(&["track", "set", "1", "--input", "system:capture_99"]);
    assert!(err.contains("unknown input"), "{err}");
    let err = daemon.cli_err(&["track", "set", "9", "--mute"]);
    assert!(err.contains("not_found"), "{err}");
    let err = daemon.cli_err(&["record", "--session", "ffffffffffff"]);
    assert!(err.contains("not_found"), "{err}");
    let err = busctl_err(
        &bus,
        &[
            "call",
            NAME,
            "/org/overdub/Overdub1",
            "org.overdub.Overdub1.Manager",
            "OpenSession",
            "s",
            "nope",
        ],
    );
    assert!(err.contains("no session"), "{err}");
    let err = busctl_err(
        &bus,
        &[
            "call",
            NAME,
            "/org/overdub/Overdub1/session/nope",
            "org.overdub.Overdub1.Session",
            "Record",
        ],
    );
    assert!(!err.is_empty());
    let session = format!("/org/overdub/Overdub1/session/{id}");
    let err = busctl_err(
        &bus,
        &[
            "call",
            NAME,
            &session,
            "org.overdub.Overdub1.Session",
            "RemoveTrack",
            "o",
            "/org/overdub/Overdub1/session/other/track/1",
        ],
    );
    assert!(err.contains("not a track"), "{err}");

    // Track counts: 0 and above the configured maximum; unknown and mistyped options.
    for tracks in ["0", "17"] {
        let err = daemon.cli_err(&["session", "create", "n", "--tracks", tracks]);
        assert!(err.contains("invalid_argument"), "tracks {tracks}: {err}");
    }
    let err = busctl_err(
        &bus,
        &[
            "call",
            NAME,
            "/org/overdub/Overdub1",
            "org.overdub.Overdub1.Manager",
            "CreateSession",
            "sa{sv}",
            "n",
            "1",
            "tracks",
            "s",
            "four",
        ],
    );
    assert!(err.contains("unsigned integer"), "{err}");
    let err = busctl_err(
        &bus,
        &[
            "call",
            NAME,
            "/org/overdub/Overdub1",
            "org.overdub.Overdub1.Manager",
            "CreateSession",
            "sa{sv}",
            "n",
            "1",
            "colour",
            "s",
            "red",
        ],
    );
    assert!(err.contains("unknown option"), "{err}");

    // Nothing above changed the session, and no session was created.
    assert_eq!(
        daemon.cli_json(&["session", "show", "--json"])["tracks"],
        before["tracks"]
    );
    assert_eq!(
        daemon
            .cli_json(&["session", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Record with nothing armed: an error, not a silent empty recording.
    daemon.cli(&["track", "set", "1", "--disarm"]);
    daemon.cli(&["track", "set", "2", "--disarm"]);
    let err = daemon.cli_err(&["record"]);
    assert!(
        err.contains("invalid_state") && err.contains("armed"),
        "{err}"
    );
    assert_eq!(
        daemon.cli_json(&["session", "show", "--json"])["state"],
        "stopped"
    );
    assert!(daemon.takes().is_empty());

    // Wrong-state transport verbs.
    assert!(daemon.cli_err(&["pause"]).contains("invalid_state"));
    assert!(daemon.cli_err(&["resume"]).contains("invalid_state"));

    // Arming during recording is allowed: the new take starts at that frame.
    daemon.cli(&["track", "set", "2", "--input", "Virtual Input 1"]);
    daemon.cli(&["track", "set", "1", "--arm"]);
    daemon.cli(&["record"]);
    assert!(daemon.cli_err(&["record"]).contains("already recording"));
    sleep(0.5);
    daemon.cli(&["track", "set", "2", "--arm"]);
    sleep(0.5);
    // Deleting an active recording session is refused; seeking while recording too.
    let err = daemon.cli_err(&["session", "delete", id]);
    assert!(err.contains("invalid_state"), "{err}");
    assert!(daemon.cli_err(&["seek", "0"]).contains("invalid_state"));
    assert!(daemon.cli_err(&["seek", "soon"]).contains("not a position"));
    daemon.cli(&["stop"]);
    let takes = daemon.takes();
    assert_eq!(takes.len(), 2);
    assert!(takes.iter().all(|t| t.status == "complete"));
    let first = takes.iter().find(|t| t.track_index == 1).unwrap();
    let late = takes.iter().find(|t| t.track_index == 2).unwrap();
    assert!(
        late.frames + 12_000 < first.frames && late.frames > 12_000,
        "the late-armed take starts later: {} vs {} frames",
        late.frames,
        first.frames
    );
    // Both tracks listen to the same input, so the late take must be exactly the first
    // take's tail: same graph clock, sample-aligned.
    let wav1 = read_wav(&first.path);
    let wav2 = read_wav(&late.path);
    let offset = wav1.frames() - wav2.frames();
    assert_eq!(wav2.samples, wav1.samples[offset..].to_vec());

    // Stopped now: delete works and removes the files.
    daemon.cli(&["session", "delete", id]);
    assert!(!daemon.takes_dir(id).exists());
    assert!(daemon
        .cli_json(&["session", "list", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
}
