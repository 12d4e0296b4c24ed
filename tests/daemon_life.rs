//! The daemon's life: peer-to-peer fallback without a bus, refusal of a second daemon,
//! SIGTERM finalizing takes, sd_notify, SIGHUP reload, and start-up failures that must be clear
//! and harmless (corrupt database, read-only data dir, an ALSA device that does not open), and a
//! disk that fills mid-take.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Starts a daemon that is expected to fail; returns its stderr.
fn failing_start(reach: &Reach, data_dir: &Path, settings: &Settings) -> String {
    std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
    let config = write_config(data_dir.parent().unwrap(), settings);
    let mut command = Command::new(overdub_bin());
    command
        .args(["daemon", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data_dir)
        .envs(settings.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    match reach {
        Reach::Bus(address) => {
            command.args(["--bus-address", address]);
        }
        Reach::PeerToPeer(dir) => {
            command
                .env_remove("DBUS_SESSION_BUS_ADDRESS")
                .env("XDG_RUNTIME_DIR", dir);
        }
    }
    let out = command.output().unwrap();
    assert!(
        !out.status.success(),
        "the daemon should have refused to start"
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A tmpfs mount, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (tests run as root in CI)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn without_a_bus_the_daemon_serves_peer_to_peer_and_the_cli_follows() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let reach = Reach::PeerToPeer(runtime.clone());
    let mut daemon = Daemon::start(&reach, &dir.path().join("data"), &Settings::default());
    assert!(
        runtime.join("overdub/bus").exists(),
        "socket in $XDG_RUNTIME_DIR/overdub/bus"
    );
    daemon.cli(&["session", "create", "no bus", "--tracks", "1"]);
    daemon.cli(&["record"]);
    sleep(0.5);
    let metrics = daemon.cli_json(&["stop", "--json"]);
    assert_eq!(metrics["recordedTracks"], 1);
    assert_eq!(daemon.takes().len(), 1);
    // A second daemon on the same socket is refused.
    let err = failing_start(&reach, &dir.path().join("data2"), &Settings::default());
    assert!(err.contains("already serves"), "{err}");
    daemon.terminate();
    assert!(
        !runtime.join("overdub/bus").exists(),
        "socket removed at exit"
    );
}

#[test]
fn a_second_daemon_is_refused_on_the_same_bus_name_or_data_dir() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let reach = Reach::Bus(bus.address.clone());
    let _daemon = Daemon::start(&reach, &dir.path().join("data"), &Settings::default());
    let err = failing_start(&reach, &dir.path().join("other/data"), &Settings::default());
    assert!(err.contains("already owns org.overdub.Overdub1"), "{err}");
    let other_bus = Bus::start();
    let err = failing_start(
        &Reach::Bus(other_bus.address.clone()),
        &dir.path().join("data"),
        &Settings::default(),
    );
    assert!(err.contains("is using the data directory"), "{err}");
}

#[test]
fn sigterm_mid_take_finalizes_the_takes_and_exits_zero() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let reach = Reach::Bus(bus.address.clone());
    let data = dir.path().join("data");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Every sd_notify datagram, in order, until STOPPING=1 (or a 20 s silence).
    let notifications = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = notify.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = text.contains("STOPPING=1");
            seen.push(text);
            if done {
                break;
            }
        }
        seen
    });
    let settings = Settings {
        flush_interval: 30.0,
        ..Settings::default()
    };
    let config = write_config(dir.path(), &settings);
    let child = Command::new(overdub_bin())
        .args(["daemon", "--bus-address", &bus.address, "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Daemon::adopt(child, reach, &data, config);
    daemon.wait_ready();
    daemon.cli(&["session", "create", "term", "--tracks", "2"]);
    daemon.cli(&["record"]);
    sleep(1.5);
    daemon.terminate();
    let seen = notifications.join().unwrap();
    let ready = seen
        .iter()
        .position(|m| m.contains("READY=1"))
        .expect("READY=1");
    let watchdog = seen
        .iter()
        .position(|m| m == "WATCHDOG=1")
        .expect("WATCHDOG=1 pings");
    let stopping = seen
        .iter()
        .position(|m| m == "STOPPING=1")
        .expect("STOPPING=1");
    assert!(ready < watchdog && watchdog < stopping, "{seen:?}");
    assert!(
        seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 5,
        "pings every 100 ms over ~2 s: {seen:?}"
    );
    // With a 30 s flush interval only a finalized file holds 1.5 s: SIGTERM finalized it.
    let takes = daemon.takes();
    assert_eq!(takes.len(), 2);
    for take in takes {
        assert_eq!(take.status, "complete");
        assert!(take.frames > 60_000, "{} frames", take.frames);
        assert_eq!(read_wav(&take.path).frames() as u64, take.frames);
    }
}

#[test]
fn sighup_reloads_the_config() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &Reach::Bus(bus.address.clone()),
        &dir.path().join("data"),
        &Settings::default(),
    );
    std::fs::write(
        &daemon.config,
        "[capture]\nflush_interval = 0.5\n[daemon]\nlog_level = \"debug\"\n",
    )
    .unwrap();
    // SAFETY: kill(2) on our child's PID.
    unsafe { libc::kill(daemon.pid(), libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains("configuration reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload:\n{}",
            daemon.log()
        );
        sleep(0.05);
    }
    // A bad file is refused and the daemon keeps running on the old values.
    std::fs::write(&daemon.config, "[capture]\nflush_interval = -1\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(daemon.pid(), libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains("configuration not reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal:\n{}",
            daemon.log()
        );
        sleep(0.05);
    }
    daemon.cli(&["status"]);
}

#[test]
fn a_corrupt_database_is_a_clear_error_and_is_not_overwritten() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(data.join("overdub.db"), &garbage).unwrap();
    let err = failing_start(
        &Reach::Bus(bus.address.clone()),
        &data,
        &Settings::default(),
    );
    assert!(err.contains("overdub.db"), "names the file: {err}");
    assert!(
        err.to_lowercase().contains("corrupt") || err.contains("not a database"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(data.join("overdub.db")).unwrap(),
        garbage,
        "file untouched"
    );
}

/// alsa-lib's reason comes in overdub's one error line, not as lines of its own on stderr.
#[cfg(feature = "alsa")]
#[test]
fn an_alsa_device_that_does_not_open_is_a_clear_error_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join(".asoundrc"), ASOUNDRC_MISSING_CARD).unwrap();
    let err = failing_start(
        &Reach::PeerToPeer(dir.path().join("run")),
        &dir.path().join("data"),
        &Settings {
            backend: "alsa",
            env: vec![("HOME".into(), home.display().to_string())],
            ..Settings::default()
        },
    );
    assert!(
        err.contains("the ALSA capture device \"default\" does not open")
            && err.contains("(alsa-lib: ")
            && err.contains("OverdubNoSuchCard"),
        "names the device and alsa-lib's reason: {err}"
    );
    assert!(!err.contains("ALSA lib"), "{err}");
}

#[test]
fn a_read_only_data_dir_is_a_clear_error() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ro");
    let _mount = Tmpfs::mount(&data, "ro,size=1m");
    let err = failing_start(
        &Reach::Bus(bus.address.clone()),
        &data,
        &Settings::default(),
    );
    assert!(
        err.contains(&data.display().to_string()),
        "names the directory: {err}"
    );
    assert!(
        err.contains("Read-only") || err.contains("read-only"),
        "{err}"
    );
}

#[test]
fn a_filling_disk_stops_recording_cleanly_and_refuses_more() {
    let bus = Bus::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("small");
    let _mount = Tmpfs::mount(&data, "size=4m");
    let settings = Settings {
        min_free_seconds: 2.0,
        stop_free_seconds: 1.0,
        flush_interval: 0.1,
        ..Settings::default()
    };
    let daemon = Daemon::start(&Reach::Bus(bus.address.clone()), &data, &settings);
    daemon.cli(&["session", "create", "tiny", "--tracks", "4"]);
    for track in ["3", "4"] {
        daemon.cli(&["track", "set", track, "--arm"]);
    }
    let available = daemon.cli_json(&["session", "show", "--json"])["recordSecondsAvailable"]
        .as_f64()
        .unwrap();
    // 4 MiB at 4 × 144 000 B/s: about 7 s.
    assert!((3.0..8.0).contains(&available), "{available} s available");
    daemon.cli(&["record"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while daemon.cli_json(&["session", "show", "--json"])["state"] != "stopped" {
        assert!(
            std::time::Instant::now() < deadline,
            "recording did not stop:\n{}",
            daemon.log()
        );
        sleep(0.1);
    }
    assert!(daemon.log().contains("almost full"), "{}", daemon.log());
    let takes = daemon.takes();
    assert_eq!(takes.len(), 4);
    for take in &takes {
        assert_eq!(take.status, "complete", "{take:?}");
        let wav = read_wav(&take.path);
        assert_eq!(wav.frames() as u64, take.frames);
        assert!(take.frames > 48_000, "{take:?}");
    }
    let err = daemon.cli_err(&["record"]);
    assert!(
        err.contains("storage") && err.contains("fit on the disk"),
        "{err}"
    );
}
