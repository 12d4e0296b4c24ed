//! The native PipeWire backend against a private `pipewire` (no session manager, quantum 256):
//! the node shows in `pw-cli ls Node` and its ports in `pw-jack jack_lsp`; a JACK client under
//! `pw-jack` feeds a distinct tone into each of three tracks, linked with `pw-link` (links made
//! by another program are stored as the track's input) and with the CLI; every take holds its
//! tone sample for sample and an impulse lands at the same index in two takes. The feeder's
//! capture latency reaches the master outputs and the metrics' `averageLatency`.
//!
//! The master outputs, read by probes under `pw-jack`, carry the monitor mix for several level,
//! pan, mute and solo settings, and so do a track's direct outputs (`jack.direct_outs`); their
//! links are stored, follow a rename and are made again after a daemon restart; the probes'
//! playback latency reaches the tracks' inputs, a new track's too.
//!
//! The other tests: the quantum forced from 256 to 4096 frames mid-take grows the node's
//! buffers and the takes stay whole and aligned; WirePlumber beside the server, linking a
//! capture stream to its default source, leaves the node and its links alone and the takes
//! are the same; a feeder stalling a cycle for 50 ms is an xrun counted and marked in the
//! take; a server killed mid-take leaves the daemon up with readable takes, and when the
//! server returns the node, its ports and links (inputs and the master's) are back and
//! recording resumes into new takes; links to programs that quit are kept and made again when
//! they return, also across a daemon restart.
#![cfg(all(feature = "pipewire", feature = "jack"))]

mod common;

use std::time::Duration;

use common::jack::IMPULSE;
use common::mix;
use common::pipewire::{run_feeder_process, PipeWireServer, PwFeeder, MANAGED_SOURCE, SINK_PORT};
use common::*;

/// Tone channels (frequencies 200 + 20 × channel Hz) of the feeder's three outputs.
const CHANNELS: [usize; 3] = [3, 7, 11];
/// Frames of capture latency the feeder's outputs report in the first test and after a server
/// restart.
const CAPTURE_LATENCY: u32 = 700;
/// Frames of playback latency the probes' inputs report in the mix test.
const PLAYBACK_LATENCY: u32 = 300;

/// Not a test: the feeder process the other tests run under `pw-jack`.
#[test]
#[ignore = "the feeder process of the other tests, run by them under pw-jack"]
fn feeder_process() {
    run_feeder_process();
}

fn start_daemon(server: &PipeWireServer, dir: &std::path::Path) -> Daemon {
    Daemon::start(
        &Reach::PeerToPeer(server.runtime_dir.clone()),
        &dir.join("data"),
        &settings(server, ""),
    )
}

/// The daemon's settings on `server`, with more configuration (whole TOML sections).
fn settings(server: &PipeWireServer, config: &str) -> Settings {
    Settings {
        backend: "pipewire",
        format: "f32",
        runtime_dir: Some(server.runtime_dir.clone()),
        extra_config: config.to_string(),
        ..Settings::default()
    }
}

#[test]
fn each_port_is_recorded_sample_aligned_through_pipewire() {
    let server = PipeWireServer::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(&server, dir.path());
    let status = daemon.cli_json(&["status", "--json"]);
    assert_eq!(status["backend"], "pipewire", "{status}");
    assert_eq!(status["sampleRate"], RATE, "{status}");
    assert_eq!(status["bufferSize"], PERIOD, "{status}");
    let nodes = server.output("pw-cli", &["ls", "Node"]);
    assert!(
        nodes.contains("node.name = \"overdub\""),
        "no overdub node:\n{nodes}"
    );
    assert_scheduling_logged_truly(&daemon);
    // Where the server's own data thread runs in real time, the same limits give overdub's
    // (both raised by PipeWire's module-rt).
    if !common::realtime_priorities(server.pid()).is_empty() {
        assert!(
            !daemon.realtime_priorities().is_empty(),
            "the server's data thread is real-time, overdub's is not:\n{}",
            daemon.log()
        );
    }

    daemon.cli(&["session", "create", "demo", "--tracks", "3"]);
    let jack_ports = server.output("pw-jack", &["jack_lsp"]);
    for port in [
        "overdub:demo.track-1.in",
        "overdub:demo.track-2.in",
        "overdub:demo.track-3.in",
        "overdub:demo.master_out_L",
        "overdub:demo.master_out_R",
    ] {
        assert!(
            jack_ports.lines().any(|l| l == port),
            "{port} missing from pw-jack jack_lsp:\n{jack_ports}"
        );
    }

    let mut feeder = PwFeeder::start(&server, "feeder_process", &CHANNELS);
    // Tracks 1 and 2 are linked by another program: overdub stores what it sees.
    for track in 1..=2 {
        server.link(
            &format!("feeder:out_{track}"),
            &format!("overdub:demo.track-{track}.in"),
        );
    }
    wait_for(
        || {
            let show = daemon.cli_json(&["session", "show", "--json"]);
            show["tracks"][0]["input"] == "feeder:out_1"
                && show["tracks"][1]["input"] == "feeder:out_2"
        },
        "links made with pw-link become the tracks' inputs",
    );
    // Track 3 is linked by overdub.
    daemon.cli(&["track", "set", "3", "--input", "feeder:out_3"]);
    assert_eq!(
        server.links_into("overdub:demo.track-3.in"),
        vec!["feeder:out_3"]
    );
    let error = daemon.cli_err(&["track", "set", "3", "--input", "feeder:out_9"]);
    assert!(error.contains("feeder:out_9"), "{error}");
    for track in 1..=3 {
        daemon.cli(&["track", "set", &track.to_string(), "--arm"]);
    }

    // The feeder's outputs report a capture latency, as a sound card's do (not a whole number
    // of quanta: PipeWire passes it on as 2 quanta and 188 frames). overdub passes it on to
    // its outputs, where a program downstream reads it.
    feeder.set_capture_latency(CAPTURE_LATENCY);
    let both = (CAPTURE_LATENCY, CAPTURE_LATENCY);
    wait_for(
        || {
            feeder
                .latency("overdub:demo.master_out_L")
                .is_some_and(|[capture, _]| capture == both)
        },
        "the master outputs report the capture latency of the tracks' sources",
    );

    let cycles = record_three(&daemon, &mut feeder, || {});

    // The sources' latency, plus the quantum the processor works in.
    let latency = daemon.cli_json(&["metrics", "--json"])["averageLatency"]
        .as_f64()
        .unwrap();
    let expected = f64::from(CAPTURE_LATENCY + PERIOD) * 1000.0 / f64::from(RATE);
    assert!(
        (latency - expected).abs() < 1e-6,
        "averageLatency {latency} ms, expected {expected}"
    );
    assert_three_takes_whole_and_aligned(&daemon, cycles, PERIOD);

    // A rename gives the track new ports with the same links.
    daemon.cli(&["track", "set", "3", "--name", "Lead Vox"]);
    assert_eq!(
        server.links_into("overdub:demo.lead-vox.in"),
        vec!["feeder:out_3"]
    );
    wait_for(
        || !server.has_port("overdub:demo.track-3.in", false),
        "the old port goes",
    );
    // A name that slugs like another track's gets a port name of its own, links kept.
    daemon.cli(&["track", "set", "3", "--name", "TRACK 1"]);
    assert_eq!(
        server.links_into("overdub:demo.track-1-3.in"),
        vec!["feeder:out_3"]
    );
    assert_eq!(
        server.links_into("overdub:demo.track-1.in"),
        vec!["feeder:out_1"]
    );
    // `none` unlinks.
    daemon.cli(&["track", "set", "1", "--input", "none"]);
    assert!(server.links_into("overdub:demo.track-1.in").is_empty());
    assert_eq!(
        server.links_into("overdub:demo.track-1-3.in"),
        vec!["feeder:out_3"]
    );
    drop(feeder);
    assert_no_misuse_reported(&daemon);
}

/// The quantum the graph is forced to mid-take: longer than a node's largest buffers (2048
/// frames), so each cycle also runs in chunks.
const GROWN_QUANTUM: u32 = 4096;

#[test]
fn a_quantum_forced_up_mid_take_grows_the_buffers_and_keeps_the_takes_whole_and_aligned() {
    let server = PipeWireServer::start_with_max_quantum(GROWN_QUANTUM);
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(&server, dir.path());
    let mut feeder = three_tracks_fed(&server, &daemon);
    // The impulse comes after the change.
    let cycles = record_three(&daemon, &mut feeder, || {
        wait_for_position(&daemon, u64::from(RATE) / 4);
        server.force_quantum(GROWN_QUANTUM);
        wait_for(
            || daemon.cli_json(&["status", "--json"])["bufferSize"] == GROWN_QUANTUM,
            "the status reports the forced quantum",
        );
    });

    let log = daemon.log();
    assert!(
        log.contains("a node's buffers grow to 2048-frame chunks"),
        "the node's buffers did not grow:\n{log}"
    );
    assert_three_takes_whole_and_aligned(&daemon, cycles, GROWN_QUANTUM);
    assert_no_misuse_reported(&daemon);
}

/// WirePlumber, the session manager of PipeWire desktops, runs beside the node with a default
/// source to link capture streams to, and does link one (`pw-record`): its policy is at work.
/// It leaves overdub's node and its links alone (it links nothing of its own to the node's
/// ports), and the takes hold the tones, aligned, as they do without it.
#[test]
fn with_a_session_manager_the_node_and_its_links_are_left_alone_and_record_the_same() {
    let mut server = PipeWireServer::start_with_session_manager();
    let dir = tempfile::tempdir().unwrap();
    let _stream = server.capture_stream(&dir.path().join("stream.wav"));
    wait_for(
        || server.links_into("pw-record:input_FL") == [format!("{MANAGED_SOURCE}:capture_FL")],
        "wireplumber links a capture stream to the default source",
    );
    let daemon = start_daemon(&server, dir.path());
    let mut feeder = three_tracks_fed(&server, &daemon);
    let cycles = record_three(&daemon, &mut feeder, || {});

    assert!(
        server.session_manager_running(),
        "wireplumber exited during the test"
    );
    for track in 1..=3 {
        assert_eq!(
            server.links_into(&format!("overdub:demo.track-{track}.in")),
            vec![format!("feeder:out_{track}")]
        );
    }
    let links = server.output("pw-link", &["-l"]);
    assert!(
        !links.contains("overdub:demo.master_out_L\n  |->")
            && !links.contains("overdub:demo.master_out_R\n  |->"),
        "the master outputs were linked by someone:\n{links}"
    );
    assert_three_takes_whole_and_aligned(&daemon, cycles, PERIOD);
    assert_no_misuse_reported(&daemon);
}

/// The feeder stalls one cycle for 50 ms mid-take: the cycles PipeWire runs without overdub's
/// node are counted as xruns and marked in the take at the position where they happened, and
/// the take stays complete and readable.
#[test]
fn a_stalled_client_is_an_xrun_counted_and_marked_in_the_take() {
    let server = PipeWireServer::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(&server, dir.path());
    daemon.cli(&["session", "create", "demo", "--tracks", "1"]);
    let mut feeder = PwFeeder::start(&server, "feeder_process", &CHANNELS[..1]);
    daemon.cli(&["track", "set", "1", "--arm", "--input", "feeder:out_1"]);

    assert_a_stall_is_an_xrun_marked_in_the_take(&daemon, || {
        feeder.stall(Duration::from_millis(50))
    });
    assert_no_misuse_reported(&daemon);
}

#[test]
fn the_master_and_the_direct_outputs_carry_the_mix_and_keep_their_links_across_a_rename() {
    let server = PipeWireServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let daemon = Daemon::start(
        &Reach::Bus(bus.address.clone()),
        &dir.path().join("data"),
        &settings(&server, "[jack]\ndirect_outs = true\n"),
    );
    daemon.cli(&["session", "create", "mix", "--tracks", "3"]);
    let mut feeder = PwFeeder::start_constants(
        &server,
        "feeder_process",
        &mix::INPUTS,
        &["probe", "direct"],
    );
    for side in ["L", "R"] {
        server.link(
            &format!("overdub:mix.master_out_{side}"),
            &format!("probe:in_{side}"),
        );
        server.link(
            &format!("overdub:mix.track-3.out_{side}"),
            &format!("direct:in_{side}"),
        );
    }
    mix::check_scenarios(&daemon, || [feeder.probe("probe"), feeder.probe("direct")]);
    // The probes' inputs report a playback latency, as a sound card's do; overdub passes the
    // longest on to its inputs, where a program upstream reads it.
    feeder.set_playback_latency(PLAYBACK_LATENCY);
    wait_for(
        || reports_playback_latency(&mut feeder, "overdub:mix.track-1.in"),
        "the inputs report the playback latency of the outputs' sinks",
    );
    // A track's direct outputs report its own source's capture latency, the master the
    // longest of all the tracks' sources. (PipeWire combines the quanta and the frames of a
    // latency separately: 900 is 3 quanta + 132 frames and 300 is 1 + 44, so the longest is
    // 900 either way.)
    feeder.set_output_capture_latency(1, 900);
    feeder.set_output_capture_latency(3, 300);
    let capture = |feeder: &mut PwFeeder, port: &str| feeder.latency(port).map(|[c, _]| c);
    wait_for(
        || {
            capture(&mut feeder, "overdub:mix.track-3.out_L") == Some((300, 300))
                && capture(&mut feeder, "overdub:mix.master_out_L") == Some((0, 900))
        },
        "latency passes from each track's source to the outputs it feeds",
    );
    let stored = |daemon: &Daemon| {
        let saved = daemon.saved_outputs();
        ["L", "R"].iter().all(|side| {
            saved.contains(&(format!("master_out_{side}"), format!("probe:in_{side}")))
                && saved.contains(&(format!("track3.out_{side}"), format!("direct:in_{side}")))
        })
    };
    wait_for(|| stored(&daemon), "where the outputs are linked is stored");

    // A rename gives the track new ports, linked like the old ones, direct outputs included,
    // and the mix goes on through them.
    daemon.cli(&["track", "set", "3", "--name", "Keys"]);
    wait_for(
        || !server.has_port("overdub:mix.track-3.out_L", true),
        "the old ports go",
    );
    assert_eq!(server.links_into("overdub:mix.keys.in"), ["feeder:out_3"]);
    wait_for(
        || reports_playback_latency(&mut feeder, "overdub:mix.keys.in"),
        "a new input reports the playback latency too",
    );
    for side in ["L", "R"] {
        wait_for(
            || {
                server.links_into(&format!("direct:in_{side}"))
                    == [format!("overdub:mix.keys.out_{side}")]
            },
            "the new direct outputs are linked like the old ones",
        );
    }
    mix::check_scenarios(&daemon, || [feeder.probe("probe"), feeder.probe("direct")]);
    assert!(stored(&daemon), "{:?}", daemon.saved_outputs());

    // A direct output linked on one side only still carries that side: unlinked, the right
    // side is forgotten, so the ports of the next rename link the left side only.
    let ok = server
        .command("pw-link")
        .args(["-d", "overdub:mix.keys.out_R", "direct:in_R"])
        .status()
        .unwrap();
    assert!(ok.success(), "pw-link -d");
    wait_for(
        || {
            !daemon
                .saved_outputs()
                .iter()
                .any(|(role, _)| role == "track3.out_R")
        },
        "the unlinked side is forgotten",
    );
    daemon.cli(&["track", "set", "3", "--name", "Keys 2"]);
    assert!(server.links_into("direct:in_R").is_empty());
    daemon.cli(&[
        "track", "set", "3", "--level", "1", "--pan", "-1", "--unmute", "--unsolo",
    ]);
    daemon.cli(&["track", "set", "1", "--unsolo"]);
    wait_for(
        || {
            let (left, _) = feeder.probe("direct");
            server.links_into("direct:in_L") == ["overdub:mix.keys-2.out_L"]
                && (f64::from(left) - mix::INPUTS[2]).abs() < 1e-4
        },
        "the linked side of a half-linked direct output carries the track",
    );
    daemon.cli(&["track", "set", "3", "--name", "Keys"]);
    server.link("overdub:mix.keys.out_R", "direct:in_R");
    wait_for(|| stored(&daemon), "the link made again is stored");

    // After a daemon restart the stored links are made again and carry the mix.
    let mut daemon = daemon;
    daemon.terminate();
    wait_for(
        || !server.has_port("overdub:mix.keys.in", false),
        "the node's ports go with the daemon",
    );
    let daemon = Daemon::start(
        &Reach::Bus(bus.address.clone()),
        &dir.path().join("data"),
        &settings(&server, "[jack]\ndirect_outs = true\n"),
    );
    for side in ["L", "R"] {
        wait_for(
            || {
                server.links_into(&format!("probe:in_{side}"))
                    == [format!("overdub:mix.master_out_{side}")]
                    && server.links_into(&format!("direct:in_{side}"))
                        == [format!("overdub:mix.keys.out_{side}")]
            },
            "the outputs' stored links are made again",
        );
    }
    mix::check_scenarios(&daemon, || [feeder.probe("probe"), feeder.probe("direct")]);

    // Removing the track forgets where its direct outputs went.
    let session = daemon.session_id();
    let track_3 = format!("/org/overdub/Overdub1/session/{session}/track/3");
    bus.call_session(&session, "RemoveTrack", &["o", &track_3]);
    // Forgotten by the time the call returns; the master's stay.
    let saved = daemon.saved_outputs();
    assert!(
        !saved.iter().any(|(role, _)| role.starts_with("track3."))
            && saved
                .iter()
                .filter(|(role, _)| role.starts_with("master"))
                .count()
                == 2,
        "{saved:?}"
    );

    // A track added now reports the outputs' playback latency at once: nothing else (a link,
    // a port removed) passes it on to its new input.
    bus.call_session(&session, "AddTrack", &["sa{sv}", "Pad", "0"]);
    wait_for(
        || reports_playback_latency(&mut feeder, "overdub:mix.pad.in"),
        "a new input reports the playback latency of the outputs' sinks",
    );
    drop(feeder);
    let mut daemon = daemon;
    daemon.terminate();
    assert_no_misuse_reported(&daemon);
}

#[test]
fn a_killed_pipewire_is_survived_and_recording_resumes_when_it_returns() {
    let mut server = PipeWireServer::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(&server, dir.path());
    daemon.cli(&["session", "create", "live", "--tracks", "1"]);
    let feeder = PwFeeder::start(&server, "feeder_process", &CHANNELS[..1]);
    daemon.cli(&["track", "set", "1", "--arm", "--input", "feeder:out_1"]);
    // Where the master is linked is stored, as on JACK.
    let sink = server.sink();
    server.link(MASTER_L, SINK_PORT);
    let stored = vec![("master_out_L".to_string(), SINK_PORT.to_string())];
    wait_for(
        || daemon.saved_outputs() == stored,
        "the master's link is stored",
    );

    daemon.cli(&["record"]);
    wait_for_position(&daemon, u64::from(RATE) * 3 / 4);
    server.kill(libc::SIGKILL);
    drop(feeder);
    drop(sink);
    wait_for(
        || daemon.cli_json(&["status", "--json"])["sessions"][0]["state"] == "stopped",
        "the transport stops when the server dies",
    );
    let takes = daemon.takes();
    assert_eq!(takes.len(), 1, "{takes:?}");
    let take = &takes[0];
    assert_eq!(take.status, "complete", "{take:?}");
    let wav = read_wav(&take.path);
    assert!(wav.frames() > RATE as usize / 2, "{} frames", wav.frames());
    assert_eq!(wav.frames() as u64, take.frames);
    assert!(
        find_offset(&[(CHANNELS[0], &wav.samples)], 0).is_some(),
        "the take starts with the tone"
    );
    assert!(
        daemon.take_events().contains("interrupted"),
        "{}",
        daemon.take_events()
    );

    // The server returns: the node and its ports within 5 s, the links once the feeder and the
    // sink are back, and recording resumes into a new take.
    server.restart();
    assert!(
        server.wait_for_port(TRACK_1, false, Duration::from_secs(5)),
        "ports back within 5 s:\n{}",
        daemon.log()
    );
    let mut feeder = PwFeeder::start(&server, "feeder_process", &CHANNELS[..1]);
    let sink = server.sink();
    wait_for(
        || server.links_into(TRACK_1) == ["feeder:out_1"],
        "the link is restored when the feeder returns",
    );
    // Latencies pass through the node on the new connection too.
    feeder.set_capture_latency(CAPTURE_LATENCY);
    wait_for(
        || {
            feeder
                .latency(MASTER_L)
                .is_some_and(|[capture, _]| capture == (CAPTURE_LATENCY, CAPTURE_LATENCY))
        },
        "the master reports the restored source's capture latency",
    );
    wait_for(
        || server.links_into(SINK_PORT) == [MASTER_L],
        "the master's link is restored when its sink returns",
    );
    wait_for(
        || daemon.cli_json(&["status", "--json"])["sessions"][0]["state"] == "recording",
        "recording resumes",
    );
    sleep(0.5);
    daemon.cli(&["stop"]);
    let takes = daemon.takes();
    assert_eq!(takes.len(), 2, "a new take: {takes:?}");
    assert!(takes.iter().all(|t| t.status == "complete"), "{takes:?}");

    // Programs that quit while the server runs: the links they had stay the track's input and
    // the master's stored link.
    drop(feeder);
    drop(sink);
    wait_for(
        || !server.has_port("feeder:out_1", true) && !server.has_port(SINK_PORT, false),
        "the feeder and the sink are gone",
    );
    sleep(0.5);
    let input = || daemon.cli_json(&["session", "show", "--json"])["tracks"][0]["input"].clone();
    assert_eq!(input(), "feeder:out_1", "{}", daemon.log());
    assert_eq!(daemon.saved_outputs(), stored);

    // A daemon restart while they are gone: the session comes back with its ports, the input
    // and the master's link are kept, and both are linked when their programs start again.
    let mut daemon = daemon;
    daemon.terminate();
    wait_for(
        || !server.has_port(TRACK_1, false),
        "the node's ports go with the daemon",
    );
    let mut daemon = start_daemon(&server, dir.path());
    assert!(
        server.wait_for_port(TRACK_1, false, Duration::from_secs(5)),
        "ports back after a daemon restart:\n{}",
        daemon.log()
    );
    let input = || daemon.cli_json(&["session", "show", "--json"])["tracks"][0]["input"].clone();
    assert_eq!(input(), "feeder:out_1", "{}", daemon.log());
    let feeder = PwFeeder::start(&server, "feeder_process", &CHANNELS[..1]);
    let sink = server.sink();
    wait_for(
        || server.links_into(TRACK_1) == ["feeder:out_1"],
        "the stored link is made again after a daemon restart",
    );
    wait_for(
        || server.links_into(SINK_PORT) == [MASTER_L],
        "the master's stored link is made again after a daemon restart",
    );
    assert_eq!(daemon.saved_outputs(), stored);
    drop(feeder);
    drop(sink);
    daemon.terminate();
    assert_no_misuse_reported(&daemon);
}

/// The input port of track 1 and the left master output of session `live`.
const TRACK_1: &str = "overdub:live.track-1.in";
const MASTER_L: &str = "overdub:live.master_out_L";

/// libpipewire reported no call made from the wrong thread (1.x checks every filter call, prints
/// `called from wrong context` to the daemon's stderr, and in later versions refuses the call).
fn assert_no_misuse_reported(daemon: &Daemon) {
    let log = daemon.log();
    assert!(!log.contains("called from wrong context"), "{log}");
}

/// The daemon logs whether PipeWire's data thread runs in real time, and the log is true of
/// the daemon's threads (on PipeWire, overdub raises none of its own).
fn assert_scheduling_logged_truly(daemon: &Daemon) {
    let log = daemon.log();
    let realtime = daemon.realtime_priorities();
    if let Some(line) = log
        .lines()
        .find(|l| l.contains("PipeWire runs overdub's audio thread with real-time scheduling"))
    {
        let priority: u32 = line
            .split("priority=")
            .nth(1)
            .and_then(|p| p.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no priority in {line:?}"));
        assert!(
            realtime.contains(&priority),
            "{realtime:?} against {line:?}"
        );
    } else {
        assert!(
            log.contains("PipeWire runs overdub's audio thread WITHOUT real-time scheduling"),
            "no scheduling line in the log:\n{log}"
        );
        assert!(
            realtime.is_empty(),
            "real-time threads {realtime:?}:\n{log}"
        );
    }
}

/// Creates session `demo` of three tracks, starts the feeder and links each track to its
/// output with the CLI, armed.
fn three_tracks_fed(server: &PipeWireServer, daemon: &Daemon) -> PwFeeder {
    daemon.cli(&["session", "create", "demo", "--tracks", "3"]);
    let feeder = PwFeeder::start(server, "feeder_process", &CHANNELS);
    for track in 1..=3 {
        let input = format!("feeder:out_{track}");
        let index = track.to_string();
        daemon.cli(&["track", "set", &index, "--input", &input, "--arm"]);
    }
    feeder
}

/// The graph's cycles during a take as the feeder saw them.
#[derive(Clone, Copy, Debug)]
struct FeederCycles {
    /// Cycles the feeder ran.
    ran: u64,
    /// Cycles the graph ran without the feeder.
    missed: u64,
}

/// Whether `port` reports the probes' [`PLAYBACK_LATENCY`] as its longest playback latency.
fn reports_playback_latency(feeder: &mut PwFeeder, port: &str) -> bool {
    feeder
        .latency(port)
        .is_some_and(|[_, (_, longest)]| longest == PLAYBACK_LATENCY)
}

/// Records: `record`, then `during` (mid-take), an impulse from the feeder, and `stop` once
/// the feeder is a quarter second past the impulse (the graph's clock, not ours) and the take
/// is over 1.2 s long. Returns the feeder's cycles from `record` to `stop`.
fn record_three(daemon: &Daemon, feeder: &mut PwFeeder, during: impl FnOnce()) -> FeederCycles {
    let (ran, missed) = (feeder.cycles(), feeder.missed_cycles());
    daemon.cli(&["record"]);
    during();
    let impulse = feeder.impulse();
    wait_for(
        || feeder.frame() > impulse + u64::from(RATE) / 4,
        "the feeder passes the impulse",
    );
    wait_for_position(daemon, 6 * u64::from(RATE) / 5);
    daemon.cli(&["stop"]);
    FeederCycles {
        ran: feeder.cycles() - ran,
        missed: feeder.missed_cycles() - missed,
    }
}

/// Checks the three takes of the recording that just stopped: complete, more than a second
/// long, 48 kHz to sox, the feeder's impulse at the same index in the first two, and the tones
/// aligned ([`assert_tones_aligned`], cycles of up to `longest_cycle` frames). `feeder` is what
/// [`record_three`] returned.
fn assert_three_takes_whole_and_aligned(daemon: &Daemon, feeder: FeederCycles, longest_cycle: u32) {
    let takes = daemon.takes();
    assert_eq!(takes.len(), 3, "{takes:?}");
    let wavs: Vec<Wav> = takes.iter().map(|t| read_wav(&t.path)).collect();
    for (take, wav) in takes.iter().zip(&wavs) {
        assert_eq!(take.status, "complete");
        assert!(wav.frames() > RATE as usize, "{} frames", wav.frames());
        assert_eq!(sox_info(&take.path).0, RATE);
    }
    let xruns = daemon.cli_json(&["metrics", "--json"])["xruns"]
        .as_u64()
        .unwrap();
    // The impulse lands once, at the same index, in tracks 1 and 2. A cycle the graph ran
    // without the feeder repeats its stale buffer (one more impulse at most per such cycle)
    // and may catch it writing; an xrun may skip the cycle that carried it. Files without
    // exactly one impulse are then left to the tone checks.
    let impulses = |wav: &Wav| -> Vec<usize> {
        (0..wav.frames())
            .filter(|&i| wav.samples[i] == IMPULSE)
            .collect()
    };
    let (first, second) = (impulses(&wavs[0]), impulses(&wavs[1]));
    let most = 1 + feeder.missed as usize;
    assert!(
        first.len() <= most && second.len() <= most,
        "impulses at {first:?} and {second:?} with {} feeder misses",
        feeder.missed
    );
    assert!(
        xruns > 0 || !(first.is_empty() && second.is_empty()),
        "no impulse in the takes, and no xrun"
    );
    if xruns + feeder.missed == 0 || (first.len() == 1 && second.len() == 1) {
        assert_eq!(first.len(), 1, "one impulse per file, found at {first:?}");
        assert_eq!(first, second);
    }
    let at = first.first().copied().unwrap_or(usize::MAX);
    assert_tones_aligned(&wavs, at, longest_cycle, xruns, feeder);
}

/// Checks that every take holds its tone, all three from the same feeder frame
/// (sample-aligned), the whole take long except the impulse at `at` in the first two.
///
/// On a loaded machine PipeWire may run cycles without overdub's node (an xrun: the takes jump
/// ahead together) or without the feeder (its outputs stay stale for a cycle and its tones fall
/// a cycle behind). Every jump falls on a cycle boundary. One xrun may do both, and the feeder
/// does not always see the cycle it missed then, so each xrun or missed cycle counted allows
/// two jumps and at most a cycle (`longest_cycle` frames) that is no tone. With none counted,
/// the tones must run unbroken. With more than one of the take's cycles in eight missed, the
/// take is too disturbed for these checks to mean anything, and the test fails.
fn assert_tones_aligned(
    wavs: &[Wav],
    at: usize,
    longest_cycle: u32,
    xruns: u64,
    feeder: FeederCycles,
) {
    let misses = xruns + feeder.missed;
    let cycles = feeder.ran + feeder.missed;
    assert!(
        misses * 8 <= cycles,
        "{xruns} xruns and {} feeder misses in {cycles} cycles: too disturbed to check",
        feeder.missed
    );
    let tracks: Vec<(usize, &[f32])> = CHANNELS
        .iter()
        .zip(wavs)
        .map(|(c, w)| (*c, w.samples.as_slice()))
        .collect();
    let len = tracks[0].1.len();
    let mut from = 0;
    let mut jumps = 0;
    let mut lost = 0;
    while from < len {
        let Some(k) = find_offset(&tracks, from) else {
            let step = 16.min(len - from);
            lost += step;
            from += step;
            continue;
        };
        let run = tracks
            .iter()
            .enumerate()
            .map(|(index, (channel, samples))| {
                let run = matching_run(*channel, samples, from, k);
                if index < 2 && from + run == at {
                    let skip = at + 1 - from;
                    skip + matching_run(*channel, samples, at + 1, k + skip as u64)
                } else {
                    run
                }
            })
            .min()
            .unwrap();
        from += run;
        if from < len {
            jumps += 1;
            assert_eq!(
                from % PERIOD as usize,
                0,
                "a jump at {from} is not a cycle boundary"
            );
        }
    }
    let feeder_missed = feeder.missed;
    eprintln!(
        "{jumps} jump(s) and {lost} frames off the tones in the takes, {xruns} xrun(s), \
         {feeder_missed} of {cycles} cycle(s) the feeder missed"
    );
    assert!(
        jumps as u64 <= 2 * misses,
        "{jumps} jumps in the takes but {xruns} xruns and {feeder_missed} feeder misses"
    );
    assert!(
        lost as u64 <= misses * u64::from(longest_cycle),
        "{lost} frames off the tones with {xruns} xruns and {feeder_missed} feeder misses"
    );
}
