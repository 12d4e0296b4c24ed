//! An xrun on a private jackd: the feeder stalls one cycle for 50 ms in the middle of a take.
//! overdub counts it in its metrics, marks it in the take's events at the position where it
//! happened, and the take stays complete and readable.
#![cfg(feature = "jack")]

mod common;

use std::time::Duration;

use common::jack::{self, Feeder, JackServer, Signal};
use common::*;

#[test]
fn a_stalled_client_is_an_xrun_counted_and_marked_in_the_take() {
    let server = JackServer::start(256);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &Reach::PeerToPeer(dir.path().join("run")),
        &dir.path().join("data"),
        &jack::settings(&server, ""),
    );
    daemon.cli(&["session", "create", "demo", "--tracks", "1"]);
    let feeder = Feeder::start(&[Signal::Tone(3)]);
    daemon.cli(&["track", "set", "1", "--arm", "--input", "feeder:out_1"]);

    assert_a_stall_is_an_xrun_marked_in_the_take(&daemon, || {
        feeder.stall(Duration::from_millis(50))
    });
}
