//! An ALSA device that goes away mid-take: the ALSA JACK plugin's jackd is stopped while the
//! daemon records from it (the plugin reports no error: the stream just stops delivering, which
//! the backend's stall watchdog notices). The daemon stays up, closes the take (readable,
//! `complete`), and when the device opens again it records into a new take that holds the tone.
#![cfg(all(feature = "alsa", feature = "jack"))]

mod common;

use std::time::{Duration, Instant};

use common::jack::{Feeder, JackServer, Signal};
use common::*;

const CHANNEL: usize = 5;

#[test]
fn a_lost_alsa_device_closes_the_takes_and_recording_resumes_when_it_returns() {
    let mut server = JackServer::start(256);
    let feeder = Feeder::start(&[Signal::Tone(CHANNEL)]);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join(".asoundrc"),
        "pcm.!default {\n type plug\n slave.pcm { type jack capture_ports { 0 \"feeder:out_1\" } }\n}\n",
    )
    .unwrap();
    let daemon = Daemon::start(
        &Reach::PeerToPeer(dir.path().join("run")),
        &dir.path().join("data"),
        &Settings {
            backend: "alsa",
            jack_server: Some(server.name.clone()),
            format: "f32",
            extra_config: "[alsa]\nchannels = 1\noutput_device = \"none\"\n".into(),
            env: vec![
                ("HOME".into(), home.display().to_string()),
                ("JACK_NO_START_SERVER".into(), "1".into()),
                ("OVERDUB_LOG".into(), "overdub=debug".into()),
            ],
            ..Settings::default()
        },
    );
    daemon.cli(&["session", "create", "demo", "--tracks", "1"]);
    daemon.cli(&["track", "set", "1", "--arm", "--input", "default:1"]);
    daemon.cli(&["record"]);
    sleep(0.6);

    drop(feeder);
    server.kill(libc::SIGTERM);
    let lost = wait_for(&daemon, "closing takes");
    assert!(lost, "the loss is noticed:\n{}", daemon.log());
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.takes().iter().any(|t| t.status != "complete") && Instant::now() < deadline {
        sleep(0.05);
    }
    let takes = daemon.takes();
    assert_eq!(takes.len(), 1, "{takes:?}");
    assert_eq!(takes[0].status, "complete", "{}", daemon.log());
    let first = read_wav(&takes[0].path);
    assert!(
        first.frames() > RATE as usize / 4,
        "{} frames",
        first.frames()
    );

    // While the device is gone, `status` says so.
    let status = daemon.cli_json(&["status", "--json"]);
    assert_eq!(status["bufferSize"], 0, "{status}");
    let text = daemon.cli(&["status"]);
    assert!(
        text.contains("the ALSA device is gone; overdub opens it again when it returns"),
        "{text}"
    );

    // While the device is gone, the attempts to open it again every 500 ms leave stderr to
    // overdub's own lines: with a `default` that names a missing card, alsa-lib complains at
    // every attempt. (alsa-lib reads the file again when its modification time, in whole
    // seconds, changes: the first was written seconds ago.) The debug log shows an attempt
    // that met the missing card.
    let asoundrc = std::fs::read_to_string(home.join(".asoundrc")).unwrap();
    std::fs::write(home.join(".asoundrc"), ASOUNDRC_MISSING_CARD).unwrap();
    assert!(
        wait_for(&daemon, "OverdubNoSuchCard"),
        "an attempt to open the device meets the missing card:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        !log.contains("ALSA lib"),
        "alsa-lib's messages reached stderr:\n{log}"
    );
    std::fs::write(home.join(".asoundrc"), asoundrc).unwrap();

    server.restart();
    let feeder = Feeder::start(&[Signal::Tone(CHANNEL)]);
    assert!(
        wait_for(&daemon, "the ALSA device is back"),
        "the device is opened again:\n{}",
        daemon.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.cli_json(&["status", "--json"])["bufferSize"] != PERIOD {
        assert!(Instant::now() < deadline, "status shows the device back");
        sleep(0.05);
    }
    sleep(0.6);
    daemon.cli(&["stop"]);
    let takes = daemon.takes();
    assert_eq!(
        takes.len(),
        2,
        "recording resumed into a new take: {takes:?}"
    );
    let second = read_wav(&takes[1].path);
    assert_eq!(takes[1].status, "complete");
    let samples = second.samples.as_slice();
    let start = samples
        .iter()
        .position(|x| *x != 0.0)
        .unwrap_or(samples.len());
    // The tone, unbroken but for what a jackd just restarted may do upstream of ALSA, as in
    // `alsa_record`: two jumps plus one per disturbance of the graph the feeder saw (cycles run
    // without it, late cycles run back to back), with up to 1024 frames that are no clean tone
    // each.
    let (runs, lost) = aligned_runs(&[(CHANNEL, samples)], start);
    let disturbances = feeder.disturbances();
    let upstream = 2 + usize::try_from(disturbances).unwrap();
    let toned: usize = runs.iter().map(|(_, length, _)| length).sum();
    assert!(
        toned > RATE as usize / 4 && runs.len() <= 1 + upstream && lost <= upstream * 1024,
        "the new take holds the tone from frame {start} of {}: runs (from, length, feeder \
         frame) {runs:?}, {lost} frames off it, {disturbances} disturbances of the graph\n{}",
        samples.len(),
        daemon.log()
    );
    if runs.len() > 1 {
        eprintln!("the JACK graph skipped upstream of ALSA: runs {runs:?}");
    }
    drop(feeder);
}

/// Waits up to 10 s for `needle` in the daemon's log.
fn wait_for(daemon: &Daemon, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if daemon.log().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
