//! Living with a JACK server: connections set with the CLI show in `jack_lsp -c` and come back
//! after a daemon restart and after a jackd restart; tracks whose names slug alike get distinct
//! ports; a source whose program quit stays in the track's input and is connected again when
//! it returns; when jackd is killed mid-take the daemon stays up, closes readable takes and
//! signals `Error` on D-Bus, and when jackd returns its ports are back within 5 s and recording
//! resumes into new takes. Where the master outputs are patched is kept and restored the same
//! way.
#![cfg(feature = "jack")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::jack::{self, Feeder, JackServer, Signal};
use common::*;

#[test]
fn connections_survive_restarts_and_a_killed_jackd_is_survived() {
    let mut server = JackServer::start(256);
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = jack::settings(&server, "");
    let reach = Reach::Bus(bus.address.clone());
    let data = dir.path().join("data");
    let mut daemon = Daemon::start(&reach, &data, &settings);
    daemon.cli(&["session", "create", "live", "--tracks", "2"]);
    let track2 = "overdub:live.track-2.in";
    daemon.cli(&["track", "set", "2", "--input", "system:capture_1"]);
    assert_eq!(server.connections(track2), vec!["system:capture_1"]);

    // Connections made by another program are stored as the track's input.
    let ok = Command::new("jack_connect")
        .args(["system:capture_2", "overdub:live.track-1.in"])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let input = daemon.cli_json(&["session", "show", "--json"])["tracks"][0]["input"].clone();
        if input == "system:capture_1+system:capture_2" {
            break;
        }
        assert!(Instant::now() < deadline, "track 1 input stays {input}");
        sleep(0.05);
    }

    // Where the master is patched is stored too.
    let ok = Command::new("jack_connect")
        .args(["overdub:live.master_out_L", "system:playback_1"])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_for(
        || {
            daemon
                .saved_outputs()
                .contains(&("master_out_L".into(), "system:playback_1".into()))
        },
        "the master's connection is stored",
    );

    // Two tracks whose names slug the same get distinct ports; one is fed by a client that is
    // gone when the daemon restarts.
    let feeder = Feeder::start(&[Signal::Dc(0.1)]);
    let session = daemon.session_id();
    for (name, input) in [("Гитара", "feeder:out_1"), ("Бас", "none")] {
        bus.call_session(
            &session,
            "AddTrack",
            &["sa{sv}", name, "1", "input", "s", input],
        );
    }
    let ports = server.lsp(&[]);
    for port in ["overdub:live.track.in", "overdub:live.track-4.in"] {
        assert!(ports.lines().any(|l| l == port), "{port} missing:\n{ports}");
    }
    assert_eq!(
        server.connections("overdub:live.track.in"),
        vec!["feeder:out_1"]
    );
    assert!(server.connections("overdub:live.track-4.in").is_empty());
    drop(feeder);

    // Daemon restart: the session comes back active with its connections; the input whose
    // source is gone is kept for when it returns.
    daemon.terminate();
    let mut daemon = Daemon::start(&reach, &data, &settings);
    assert!(server.wait_for_port(track2, Duration::from_secs(5)));
    let shown = daemon.cli_json(&["session", "show", "--json"]);
    assert_eq!(shown["tracks"][2]["input"], "feeder:out_1", "{shown}");
    assert_eq!(
        server.connections("overdub:live.master_out_L"),
        vec!["system:playback_1"]
    );
    // ... and connected again when its program starts again.
    let feeder = Feeder::start(&[Signal::Dc(0.1)]);
    wait_for(
        || server.connections("overdub:live.track.in") == ["feeder:out_1"],
        "a source that comes back is connected again",
    );
    drop(feeder);
    assert_eq!(server.connections(track2), vec!["system:capture_1"]);
    assert_eq!(
        server.connections("overdub:live.track-1.in"),
        vec!["system:capture_1", "system:capture_2"]
    );

    // jackd restart while idle: ports and connections come back.
    server.restart();
    assert!(
        server.wait_for_port(track2, Duration::from_secs(5)),
        "ports back after a jackd restart:\n{}",
        daemon.log()
    );
    wait_for(
        || server.connections(track2) == ["system:capture_1"],
        "connections restored",
    );
    wait_for(
        || server.connections("overdub:live.master_out_L") == ["system:playback_1"],
        "the master's connection restored",
    );

    // Kill jackd mid-take.
    let monitor = Command::new("gdbus")
        .args([
            "monitor",
            "--address",
            &bus.address,
            "--dest",
            "org.overdub.Overdub1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gdbus must be installed (libglib2.0-bin)");
    let (mut monitor, signals) = collect_stdout(monitor);
    sleep(0.3);
    daemon.cli(&["record"]);
    sleep(1.0);
    server.kill(libc::SIGKILL);
    wait_for(
        || daemon.cli_json(&["status", "--json"])["sessions"][0]["state"] == "stopped",
        "the transport stops when the server dies",
    );
    let takes = daemon.takes();
    assert_eq!(takes.len(), 2, "{takes:?}");
    for take in &takes {
        assert_eq!(take.status, "complete", "{take:?}");
        let (rate, channels, _, samples) = sox_info(&take.path);
        assert_eq!((rate, channels), (RATE, 1));
        assert!(
            samples > u64::from(RATE) / 2,
            "{samples} samples in {take:?}"
        );
        assert_eq!(samples, take.frames);
    }
    assert!(
        daemon.take_events().contains("interrupted"),
        "{}",
        daemon.take_events()
    );
    // `status` says the server is gone, and the bus reports no period (once the graph's
    // housekeeping has let go of its state: until then the last period read is answered).
    wait_for(
        || daemon.cli_json(&["status", "--json"])["bufferSize"] == 0,
        "no period while the server is gone",
    );
    let status = daemon.cli(&["status"]);
    assert!(
        status.contains("the audio server is gone; overdub reconnects when it returns"),
        "{status}"
    );

    // jackd returns: ports within 5 s, recording resumed into new takes.
    server.restart();
    assert!(
        server.wait_for_port(track2, Duration::from_secs(5)),
        "ports back within 5 s:\n{}",
        daemon.log()
    );
    wait_for(
        || daemon.cli_json(&["status", "--json"])["sessions"][0]["state"] == "recording",
        "recording resumes",
    );
    sleep(0.5);
    daemon.cli(&["stop"]);
    let takes = daemon.takes();
    assert_eq!(takes.len(), 4, "two new takes: {takes:?}");
    assert!(takes.iter().all(|t| t.status == "complete"), "{takes:?}");
    assert_eq!(server.connections(track2), vec!["system:capture_1"]);

    // SAFETY: kill(2) on the monitor this test spawned.
    unsafe { libc::kill(monitor.id() as i32, libc::SIGTERM) };
    let _ = monitor.wait();
    let signals = signals.join().unwrap();
    assert!(
        signals.contains("org.overdub.Overdub1.Session.Error")
            && signals.contains("audio server went away"),
        "no Error signal:\n{signals}"
    );
    daemon.terminate();
}
