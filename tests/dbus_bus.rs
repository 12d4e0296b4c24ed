//! The D-Bus contract over a real bus, driven by `busctl` and watched by `gdbus monitor`:
//! methods, properties, PropertiesChanged, TakeFinished, ObjectManager, and the introspection
//! XML in `dbus/` compared with what the daemon serves.

mod common;

use std::process::{Command, Stdio};

use common::*;

const NAME: &str = "org.overdub.Overdub1";
const MANAGER: &str = "org.overdub.Overdub1.Manager";
const SESSION: &str = "org.overdub.Overdub1.Session";
const TRACK: &str = "org.overdub.Overdub1.Track";

fn busctl(bus: &Bus, args: &[&str]) -> String {
    let out = Command::new("busctl")
        .arg(format!("--address={}", bus.address))
        .args(args)
        .output()
        .expect("busctl must be installed");
    assert!(
        out.status.success(),
        "busctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The `<interface name="org.overdub.Overdub1.*">` blocks of an introspection document, each
/// once (the daemon also describes child objects inline), with whitespace normalized.
fn our_interfaces(xml: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<interface name=\"org.overdub.Overdub1.") {
        let end = rest[start..].find("</interface>").unwrap() + start + "</interface>".len();
        let block: Vec<&str> = rest[start..end]
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("<!--"))
            .collect();
        let block = block.join("\n");
        if !blocks
            .iter()
            .any(|b| b.lines().next() == block.lines().next())
        {
            blocks.push(block);
        }
        rest = &rest[end..];
    }
    blocks
}

#[test]
fn busctl_records_and_the_bus_sees_every_change() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &Reach::Bus(bus.address.clone()),
        &dir.path().join("data"),
        &Settings::default(),
    );
    let monitor = Command::new("gdbus")
        .args(["monitor", "--address", &bus.address, "--dest", NAME])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gdbus must be installed (libglib2.0-bin)");
    let (mut monitor, output) = collect_stdout(monitor);
    sleep(0.3);

    // Manager properties.
    assert_eq!(
        busctl(
            &bus,
            &[
                "get-property",
                NAME,
                "/org/overdub/Overdub1",
                MANAGER,
                "Backend"
            ]
        ),
        "s \"virtual\""
    );
    assert_eq!(
        busctl(
            &bus,
            &[
                "get-property",
                NAME,
                "/org/overdub/Overdub1",
                MANAGER,
                "SampleRate"
            ]
        ),
        "u 48000"
    );
    assert_eq!(
        busctl(
            &bus,
            &[
                "get-property",
                NAME,
                "/org/overdub/Overdub1",
                MANAGER,
                "BufferSize"
            ]
        ),
        "u 256"
    );
    let devices = busctl(
        &bus,
        &[
            "call",
            NAME,
            "/org/overdub/Overdub1",
            MANAGER,
            "ListDevices",
        ],
    );
    assert!(
        devices.contains("\"Virtual Microphone 1\"") && devices.contains("\"Virtual Line In\""),
        "{devices}"
    );

    let created = busctl(
        &bus,
        &[
            "call",
            NAME,
            "/org/overdub/Overdub1",
            MANAGER,
            "CreateSession",
            "sa{sv}",
            "over the bus",
            "2",
            "tracks",
            "u",
            "3",
            "project_id",
            "s",
            "p-42",
        ],
    );
    let path = created
        .trim_start_matches("o ")
        .trim_matches('"')
        .to_string();
    assert!(
        path.starts_with("/org/overdub/Overdub1/session/"),
        "{created}"
    );
    let track3 = format!("{path}/track/3");
    assert_eq!(
        busctl(&bus, &["get-property", NAME, &path, SESSION, "State"]),
        "s \"stopped\""
    );
    assert_eq!(
        busctl(&bus, &["get-property", NAME, &path, SESSION, "Name"]),
        "s \"over the bus\""
    );
    let tracks = busctl(&bus, &["get-property", NAME, &path, SESSION, "Tracks"]);
    assert!(tracks.starts_with("ao 3 "), "{tracks}");
    let listed = busctl(
        &bus,
        &[
            "call",
            NAME,
            "/org/overdub/Overdub1",
            MANAGER,
            "ListSessions",
        ],
    );
    assert!(listed.contains(&path), "{listed}");

    busctl(
        &bus,
        &["set-property", NAME, &track3, TRACK, "Armed", "b", "true"],
    );
    busctl(
        &bus,
        &["set-property", NAME, &track3, TRACK, "Level", "d", "0.5"],
    );
    busctl(
        &bus,
        &["set-property", NAME, &track3, TRACK, "Name", "s", "Overdub"],
    );
    assert_eq!(
        busctl(&bus, &["get-property", NAME, &track3, TRACK, "Level"]),
        "d 0.5"
    );
    assert_eq!(
        busctl(&bus, &["get-property", NAME, &track3, TRACK, "Index"]),
        "u 3"
    );
    assert_eq!(
        busctl(&bus, &["get-property", NAME, &track3, TRACK, "Channels"]),
        "u 1"
    );

    busctl(&bus, &["call", NAME, &path, SESSION, "Record"]);
    assert_eq!(
        busctl(&bus, &["get-property", NAME, &path, SESSION, "State"]),
        "s \"recording\""
    );
    sleep(1.0);
    let meters = busctl(&bus, &["call", NAME, &path, SESSION, "GetMeters"]);
    assert!(meters.starts_with("a(dd) 3 "), "{meters}");
    // The virtual tones are at −12 dBFS peak on every track.
    let values: Vec<f64> = meters
        .split_whitespace()
        .skip(2)
        .map(|v| v.parse().unwrap())
        .collect();
    for pair in values.chunks(2) {
        assert!(
            (pair[0] + 12.04).abs() < 0.5,
            "peak {} dBFS in {meters}",
            pair[0]
        );
        assert!(
            (pair[1] + 15.05).abs() < 1.0,
            "rms {} dBFS in {meters}",
            pair[1]
        );
    }
    let position: u64 = busctl(&bus, &["get-property", NAME, &path, SESSION, "Position"])
        .trim_start_matches("t ")
        .parse()
        .unwrap();
    assert!(position > 24_000, "position {position}");
    let stopped = busctl(&bus, &["call", NAME, &path, SESSION, "Stop"]);
    assert!(stopped.starts_with("a{sv} 10 "), "{stopped}");
    assert!(stopped.contains("\"recordedTracks\" u 3"), "{stopped}");
    assert_eq!(
        busctl(&bus, &["get-property", NAME, &path, SESSION, "State"]),
        "s \"stopped\""
    );
    let metrics = busctl(&bus, &["call", NAME, &path, SESSION, "GetMetrics"]);
    assert!(metrics.contains("\"totalDuration\" d "), "{metrics}");

    // Three takes, one per armed track; track 3's file is named after its new name.
    let id = path.rsplit('/').next().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(daemon.takes_dir(id))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "01-track-1-take1.wav",
            "02-track-2-take1.wav",
            "03-overdub-take1.wav"
        ]
    );
    // Recording is pre-fader: the level 0.5 did not touch the take.
    let wav = read_wav(&daemon.takes_dir(id).join("03-overdub-take1.wav"));
    let peak = wav.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!((peak - 0.25).abs() < 1e-3, "take peak {peak}");

    // The ObjectManager lists the session and its tracks.
    let managed = busctl(
        &bus,
        &[
            "call",
            NAME,
            "/org/overdub/Overdub1",
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        ],
    );
    assert!(
        managed.contains(&track3) && managed.contains(SESSION),
        "{managed}"
    );

    // Introspection served == dbus/org.overdub.Overdub1.xml.
    let served = [
        busctl(
            &bus,
            &[
                "introspect",
                "--xml-interface",
                NAME,
                "/org/overdub/Overdub1",
            ],
        ),
        busctl(&bus, &["introspect", "--xml-interface", NAME, &path]),
        busctl(&bus, &["introspect", "--xml-interface", NAME, &track3]),
    ]
    .join("\n");
    let served = our_interfaces(&served);
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dbus/org.overdub.Overdub1.xml"
    ))
    .unwrap();
    let documented = our_interfaces(&file);
    assert_eq!(served.len(), 3);
    assert_eq!(
        served, documented,
        "dbus/org.overdub.Overdub1.xml differs from what the daemon serves"
    );

    // Signals seen on the bus.
    busctl(&bus, &["call", NAME, &path, SESSION, "Close"]);
    sleep(0.5);
    let _ = monitor.kill();
    let _ = monitor.wait();
    let seen = output.join().unwrap();
    assert!(
        seen.contains("InterfacesAdded") && seen.contains(&path),
        "InterfacesAdded:\n{seen}"
    );
    assert!(
        seen.contains("{'State': <'recording'>}"),
        "State change to recording:\n{seen}"
    );
    assert!(
        seen.contains("{'State': <'stopped'>}"),
        "State change to stopped:\n{seen}"
    );
    assert!(seen.contains("{'Armed': <true>}"), "Armed change:\n{seen}");
    assert!(seen.contains("{'Level': <0.5>}"), "Level change:\n{seen}");
    assert!(
        !seen
            .lines()
            .any(|l| l.contains("PropertiesChanged") && l.contains("'Position'")),
        "Position must not signal:\n{seen}"
    );
    assert_eq!(
        seen.matches(".TakeFinished").count(),
        3,
        "three TakeFinished:\n{seen}"
    );
    assert!(seen.contains("03-overdub-take1.wav"), "{seen}");
    assert!(
        seen.contains("InterfacesRemoved"),
        "InterfacesRemoved on close:\n{seen}"
    );
}
