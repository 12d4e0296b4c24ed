//! The JACK transport: with `jack.transport = "follow"` another client's transport start makes
//! overdub record (its tracks are armed), a stop stops it and a locate while stopped moves it;
//! with `"lead"` overdub's record, stop and seek drive the JACK transport.
#![cfg(feature = "jack")]

mod common;

use ::jack::{Client, ClientOptions, TransportState};

use common::jack::{self, JackServer};
use common::*;

fn state(daemon: &Daemon) -> String {
    daemon.cli_json(&["status", "--json"])["sessions"][0]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn overdub_follows_and_leads_the_jack_transport() {
    let server = JackServer::start(256);
    let (driver, _) = Client::new("driver", ClientOptions::NO_START_SERVER).unwrap();
    let transport = driver.transport();
    let dir = tempfile::tempdir().unwrap();
    let reach = Reach::PeerToPeer(dir.path().join("run"));
    let data = dir.path().join("data");

    let mut daemon = Daemon::start(
        &reach,
        &data,
        &jack::settings(&server, "[jack]\ntransport = \"follow\"\n"),
    );
    daemon.cli(&["session", "create", "follow", "--tracks", "2"]);
    transport.locate(48_000).unwrap();
    wait_for(
        || daemon.cli_json(&["status", "--json"])["sessions"][0]["position"] == 48_000,
        "a locate while stopped moves overdub",
    );
    transport.start().unwrap();
    wait_for(
        || state(&daemon) == "recording",
        "a transport start records",
    );
    sleep(0.5);
    transport.stop().unwrap();
    wait_for(|| state(&daemon) == "stopped", "a transport stop stops");
    let takes = daemon.takes();
    assert_eq!(takes.len(), 2, "{takes:?}");
    assert!(takes
        .iter()
        .all(|t| t.status == "complete" && t.frames > 4_800));
    daemon.terminate();

    let daemon = Daemon::start(
        &reach,
        &data,
        &jack::settings(&server, "[jack]\ntransport = \"lead\"\n"),
    );
    assert_eq!(transport.query_state().unwrap(), TransportState::Stopped);
    daemon.cli(&["seek", "2s"]);
    wait_for(
        || transport.query().unwrap().pos.frame() == 96_000,
        "seek locates the JACK transport",
    );
    daemon.cli(&["record"]);
    wait_for(
        || transport.query_state().unwrap() == TransportState::Rolling,
        "record starts the JACK transport",
    );
    daemon.cli(&["stop"]);
    wait_for(
        || transport.query_state().unwrap() == TransportState::Stopped,
        "stop stops the JACK transport",
    );
}
