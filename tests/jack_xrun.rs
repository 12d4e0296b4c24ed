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

    daemon.cli(&["record"]);
    sleep(0.3);
    let xruns = || {
        daemon.cli_json(&["metrics", "--json"])["xruns"]
            .as_u64()
            .unwrap()
    };
    let before = xruns();
    let position = daemon.cli_json(&["status", "--json"])["sessions"][0]["position"]
        .as_u64()
        .unwrap();
    feeder.stall(Duration::from_millis(50));
    wait_for(|| xruns() > before, "overdub counts the xrun");
    sleep(0.3);
    let metrics = daemon.cli_json(&["stop", "--json"]);
    let counted = metrics["xruns"].as_u64().unwrap();
    assert!(counted > before, "{metrics}");
    assert!(
        metrics["bufferUnderruns"].as_u64().unwrap() >= counted,
        "{metrics}"
    );

    let takes = daemon.takes();
    assert_eq!(takes.len(), 1, "{takes:?}");
    let take = &takes[0];
    assert_eq!(take.status, "complete", "{take:?}");
    let wav = read_wav(&take.path);
    assert_eq!(wav.frames() as u64, take.frames);
    assert_eq!(sox_info(&take.path).0, RATE);

    // The take's events: "take_id kind frame length detail", one line each.
    let events = daemon.take_events();
    let marked: Vec<(u64, u64)> = events
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(1) == Some(&"xrun"))
                .then(|| (fields[2].parse().unwrap(), fields[3].parse().unwrap()))
        })
        .collect();
    // Marks count the xruns the take saw (one counted outside it, between `record` and the
    // take's first frame or after its last drain, is in the metrics only).
    let marked_count: u64 = marked.iter().map(|(_, count)| count).sum();
    assert!(
        (1..=counted).contains(&marked_count),
        "{marked_count} xruns marked, {counted} counted: {events}"
    );
    // The stall came after `position`, and the mark lies inside the take.
    assert!(
        marked
            .iter()
            .any(|&(frame, _)| frame >= position && frame <= take.frames),
        "an xrun marked between frame {position} and the take's end ({}): {events}",
        take.frames
    );
}
