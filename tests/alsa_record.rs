//! Recording from an ALSA device through cpal. There is no sound card here, so the ALSA device
//! is the ALSA JACK plugin (`libasound2-plugins`) routed to a private dummy jackd: the daemon's
//! private `HOME` holds an `.asoundrc` whose `pcm.!default` is a `plug` over a `jack` PCM whose
//! capture ports are a feeder client's three outputs, each a distinct tone. Three tracks take
//! the device's channels `default:1..3`; every take holds its tone intact for the whole take,
//! all three from the same frame (aligned with each other).
#![cfg(all(feature = "alsa", feature = "jack"))]

mod common;

use common::jack::{Feeder, JackServer, Signal};
use common::*;

/// Tone channels (frequencies 200 + 20 × channel Hz) of the feeder's three outputs.
const CHANNELS: [usize; 3] = [3, 7, 11];

/// Frames per period asked of the ALSA device: four of the dummy jackd's 256-frame cycles.
/// cpal gives a capture stream two periods of buffer, and the JACK plugin drops, silently, a
/// cycle that finds that buffer full (a sound card would report an overrun). Eight cycles of
/// buffer rather than two absorb most of what a loaded machine does to the graph: a capture
/// thread woken late, a dummy jackd running its late cycles back to back. This test checks what
/// overdub makes of the device's channels, not how late its capture thread may run.
const ALSA_PERIOD: u32 = 1024;

/// The SCHED_FIFO priority overdub asks for its capture thread (libjack's threads, which the
/// plugin brings into the daemon, run at the dummy jackd's lower priorities).
const CAPTURE_PRIORITY: u32 = 70;

/// The `.asoundrc` routing ALSA's default device to the feeder (capture) and to the dummy
/// driver's playback ports (the master).
fn asoundrc() -> String {
    "pcm.overdub_jack {\n\
     \x20   type jack\n\
     \x20   capture_ports { 0 \"feeder:out_1\" 1 \"feeder:out_2\" 2 \"feeder:out_3\" }\n\
     \x20   playback_ports { 0 \"system:playback_1\" 1 \"system:playback_2\" }\n\
     }\n\
     pcm.!default {\n\
     \x20   type plug\n\
     \x20   slave.pcm \"overdub_jack\"\n\
     }\n"
    .to_string()
}

#[test]
fn the_alsa_device_channels_are_recorded_intact_and_aligned() {
    let server = JackServer::start(256);
    let feeder = Feeder::start(&CHANNELS.map(Signal::Tone));
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join(".asoundrc"), asoundrc()).unwrap();

    let daemon = Daemon::start(
        &Reach::PeerToPeer(dir.path().join("run")),
        &dir.path().join("data"),
        &Settings {
            backend: "alsa",
            period: ALSA_PERIOD,
            jack_server: Some(server.name.clone()),
            format: "f32",
            extra_config: "[alsa]\ndevice = \"default\"\nchannels = 3\n".into(),
            env: vec![
                ("HOME".into(), home.display().to_string()),
                ("JACK_NO_START_SERVER".into(), "1".into()),
            ],
            ..Settings::default()
        },
    );
    let status = daemon.cli_json(&["status", "--json"]);
    assert_eq!(status["backend"], "alsa", "{status}");
    assert_eq!(status["sampleRate"], RATE, "{status}");

    let devices = daemon.cli_json(&["devices", "--json"]);
    let listing = devices.to_string();
    assert!(
        listing.contains("\"default\"") && listing.contains('3'),
        "the capture device with its 3 channels: {listing}"
    );

    daemon.cli(&["session", "create", "demo", "--tracks", "3"]);
    // The graph's disturbances from here on can reach the take (the device's buffer holds what
    // it captured before the take began).
    let disturbed_before = feeder.disturbances();
    for track in 1..=3 {
        daemon.cli(&[
            "track",
            "set",
            &track.to_string(),
            "--arm",
            "--input",
            &format!("default:{track}"),
        ]);
    }
    let refused = daemon.cli_err(&["track", "set", "1", "--input", "default:4"]);
    assert!(refused.contains("channel 4"), "{refused}");

    daemon.cli(&["record"]);
    sleep(1.0);

    // The capture thread runs SCHED_FIFO at overdub's priority, or the log says it does not.
    let refused = "ALSA: the capture thread runs WITHOUT real-time scheduling";
    wait_for(
        || {
            daemon.log().contains(refused)
                || daemon.realtime_priorities().contains(&CAPTURE_PRIORITY)
        },
        "the capture thread runs in real time, or the log says it does not",
    );
    assert!(
        !(daemon.log().contains(refused)
            && daemon.realtime_priorities().contains(&CAPTURE_PRIORITY)),
        "the log says the capture thread is not real-time, but it is: {:?}\n{}",
        daemon.realtime_priorities(),
        daemon.log()
    );
    let metrics = daemon.cli(&["stop", "--json"]);
    let disturbances = feeder.disturbances() - disturbed_before;

    // The input latency is ALSA's capture delay as the run started: about the period the
    // callback was woken for (cpal's capture timestamps only go forward, which can make it
    // read a little less), at most what the device's buffer holds (two periods); the period
    // the processor works in comes on top.
    let latency: f64 = serde_json::from_str::<serde_json::Value>(&metrics).unwrap()
        ["averageLatency"]
        .as_f64()
        .unwrap();
    let periods = latency * f64::from(RATE) / 1000.0 / f64::from(ALSA_PERIOD);
    assert!(
        (1.5..=3.0).contains(&periods),
        "averageLatency {latency} ms is {periods} periods"
    );

    let takes = daemon.takes();
    assert_eq!(takes.len(), 3, "{takes:?}\n{}", daemon.log());
    let wavs: Vec<Wav> = takes.iter().map(|t| read_wav(&t.path)).collect();
    for (take, wav) in takes.iter().zip(&wavs) {
        assert_eq!(take.status, "complete");
        assert!(
            wav.frames() > RATE as usize / 2,
            "{} frames\n{}",
            wav.frames(),
            daemon.log()
        );
        assert_eq!(sox_info(&take.path).0, RATE);
    }
    assert!(
        wavs.iter().all(|w| w.frames() == wavs[0].frames()),
        "the takes have one length"
    );

    // Every take holds its own tone, all from one common frame (aligned with each other), with
    // no sample that is not its tone. The first frames may be silence while the JACK plugin
    // connects to the feeder: skip a leading silent run common to all.
    let tracks: Vec<(usize, &[f32])> = CHANNELS
        .iter()
        .zip(&wavs)
        .map(|(c, w)| (*c, w.samples.as_slice()))
        .collect();
    let start = tracks
        .iter()
        .map(|(_, s)| s.iter().position(|x| *x != 0.0).unwrap_or(s.len()))
        .min()
        .unwrap();
    assert!(
        start < RATE as usize / 4,
        "the tones arrive within 250 ms ({start} silent frames)"
    );
    let (runs, lost) = aligned_runs(&tracks, start);
    // A dummy jackd on a loaded machine can run cycles without the feeder (its tones fall a
    // cycle behind), or run late cycles back to back and so overfill the plugin's buffer (a
    // cycle dropped, ALSA reports no xrun): the tones then jump in every track at once, and a
    // few frames around the jump may be no clean tone. Allow two such jumps plus one per
    // disturbance the feeder saw, and one ALSA period of such frames each; every run must hold
    // all three tones from one common feeder frame.
    let upstream = 2 + usize::try_from(disturbances).unwrap();
    assert!(
        runs.len() <= 1 + upstream && lost <= upstream * ALSA_PERIOD as usize,
        "the tones are intact (runs (from, length, feeder frame): {runs:?}, {lost} frames off \
         the tones; {disturbances} disturbances of the graph)\n{metrics}\n{}",
        daemon.log()
    );
    if runs.len() > 1 {
        eprintln!("the JACK graph skipped upstream of ALSA: runs {runs:?}; {metrics}");
    }
    drop(daemon);
    drop(feeder);
}
