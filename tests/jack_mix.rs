//! The master outputs on JACK carry the monitor mix: a feeder puts a different constant on each
//! of three tracks, a probe client reads `master_out_L/R`, and for several level, pan, mute and
//! solo settings both sides equal Σ level × pan gain × input over the audible tracks, within
//! 0.1 dB. Track 3's direct outputs (`jack.direct_outs`) carry its own share of that mix, and
//! every port follows a rename; a direct output patched into another track carries its track
//! there (a bounce), not silence. Where the direct outputs go stays stored while they are turned
//! off, and is forgotten when the track is removed.
#![cfg(feature = "jack")]

mod common;

use common::jack::{self, connect, disconnect, Feeder, JackServer, Probe, Signal};
use common::mix::{self, INPUTS};
use common::*;

#[test]
fn master_outputs_carry_the_mix_within_a_tenth_of_a_db() {
    let server = JackServer::start(256);
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let start = |direct_outs: bool| {
        Daemon::start(
            &Reach::Bus(bus.address.clone()),
            &dir.path().join("data"),
            &jack::settings(&server, &format!("[jack]\ndirect_outs = {direct_outs}\n")),
        )
    };
    let daemon = start(true);
    daemon.cli(&["session", "create", "mix", "--tracks", "3"]);
    let _feeder = Feeder::start(&INPUTS.map(|v| Signal::Dc(v as f32)));
    let probe = Probe::start();
    connect("overdub:mix.master_out_L", "probe:in_L");
    connect("overdub:mix.master_out_R", "probe:in_R");
    let direct = Probe::named("direct");
    connect("overdub:mix.track-3.out_L", "direct:in_L");
    connect("overdub:mix.track-3.out_R", "direct:in_R");

    mix::check_scenarios(&daemon, || [probe.last(), direct.last()]);

    // Port names follow a rename; connections stay.
    daemon.cli(&["track", "set", "3", "--name", "Keys"]);
    let ports = server.lsp(&[]);
    for port in [
        "overdub:mix.keys.in",
        "overdub:mix.keys.out_L",
        "overdub:mix.keys.out_R",
    ] {
        assert!(ports.lines().any(|l| l == port), "{port} missing:\n{ports}");
    }
    assert!(!ports.contains("track-3"), "old names left:\n{ports}");
    assert_eq!(
        server.connections("overdub:mix.keys.in"),
        vec!["feeder:out_3"]
    );
    assert_eq!(
        server.connections("overdub:mix.keys.out_L"),
        vec!["direct:in_L"]
    );
    // A track's direct output patched into another track's input (a bounce) carries the
    // track into it, a period late, not silence: with both hard left at full level, track 1's
    // direct output carries track 3's input.
    for track in ["3", "1"] {
        daemon.cli(&[
            "track", "set", track, "--level", "1", "--pan", "-1", "--unmute", "--unsolo",
        ]);
    }
    daemon.cli(&["track", "set", "2", "--unsolo"]);
    daemon.cli(&["track", "set", "1", "--input", "overdub:mix.keys.out_L"]);
    let bounce = Probe::named("bounce");
    connect("overdub:mix.track-1.out_L", "bounce:in_L");
    wait_for(
        || (f64::from(bounce.last().0) - INPUTS[2]).abs() < 1e-4,
        "a direct output patched into a track carries its track",
    );
    daemon.cli(&["track", "set", "1", "--input", "feeder:out_1"]);
    drop(bounce);

    let direct_stored = |daemon: &Daemon| {
        let saved = daemon.saved_outputs();
        ["L", "R"].iter().all(|side| {
            saved.contains(&(format!("track3.out_{side}"), format!("direct:in_{side}")))
        })
    };
    wait_for(
        || direct_stored(&daemon),
        "the direct outputs' links are stored",
    );

    // With direct outputs turned off, where they went stays stored while the master's links
    // change, and it is restored when they are turned on again.
    let mut daemon = daemon;
    daemon.terminate();
    let mut daemon = start(false);
    wait_for(
        || server.connections("overdub:mix.master_out_L") == ["probe:in_L"],
        "the master's links are restored",
    );
    disconnect("overdub:mix.master_out_L", "probe:in_L");
    wait_for(
        || {
            !daemon
                .saved_outputs()
                .iter()
                .any(|(role, _)| role == "master_out_L")
        },
        "the master's unlinked side is forgotten",
    );
    connect("overdub:mix.master_out_L", "probe:in_L");
    // Stored again at a later poll: every change read before it is stored too.
    wait_for(
        || {
            daemon
                .saved_outputs()
                .contains(&("master_out_L".into(), "probe:in_L".into()))
        },
        "the master's link made again is stored",
    );
    assert!(direct_stored(&daemon), "{:?}", daemon.saved_outputs());
    daemon.terminate();
    let daemon = start(true);
    for side in ["L", "R"] {
        wait_for(
            || {
                server.connections(&format!("overdub:mix.keys.out_{side}"))
                    == [format!("direct:in_{side}")]
            },
            "the direct outputs' links are restored",
        );
    }

    // Removing the track forgets them.
    let session = daemon.session_id();
    let track_3 = format!("/org/overdub/Overdub1/session/{session}/track/3");
    bus.call_session(&session, "RemoveTrack", &["o", &track_3]);
    // Forgotten by the time the call returns.
    let saved = daemon.saved_outputs();
    assert!(
        !saved.iter().any(|(role, _)| role.starts_with("track3.")),
        "{saved:?}"
    );
}
