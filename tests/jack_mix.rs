//! The master outputs on JACK carry the monitor mix: a feeder puts a different constant on each
//! of three tracks, a probe client reads `master_out_L/R`, and for several level, pan, mute and
//! solo settings both sides equal Σ level × pan gain × input over the audible tracks, within
//! 0.1 dB. Track 3's direct outputs (`jack.direct_outs`) carry its own share of that mix, and
//! every port follows a rename.
#![cfg(feature = "jack")]

mod common;

use common::jack::{self, connect, Feeder, JackServer, Probe, Signal};
use common::mix::{self, INPUTS};
use common::*;

#[test]
fn master_outputs_carry_the_mix_within_a_tenth_of_a_db() {
    let server = JackServer::start(256);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &Reach::PeerToPeer(dir.path().join("run")),
        &dir.path().join("data"),
        &jack::settings(&server, "[jack]\ndirect_outs = true\n"),
    );
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
}
