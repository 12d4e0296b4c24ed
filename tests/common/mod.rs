//! Shared harness for the integration tests: a private `dbus-daemon`, the real `overdub`
//! binary, the CLI, and checks on the WAV files it writes. Every server is private (own socket,
//! own temp dir) and stopped by PID, so tests run in parallel and twice in a row. A missing
//! server binary fails the test.
#![allow(dead_code)]

#[cfg(feature = "jack")]
pub mod jack;
#[cfg(feature = "jack")]
pub mod mix;
#[cfg(all(feature = "pipewire", feature = "jack"))]
pub mod pipewire;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

pub const RATE: u32 = 48_000;
pub const PERIOD: u32 = 256;

/// A private `dbus-daemon`, killed on drop.
pub struct Bus {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    pub fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix:path={}", dir.path().join("bus").display());
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address=1"])
            .arg(format!("--address={address}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed (scripts/install-deps)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("unix:"),
            "dbus-daemon did not start: {line:?}"
        );
        Bus {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Bus {
    /// Calls `method` of session `session_id`'s `org.overdub.Overdub1.Session` with `busctl`
    /// (`args`: the signature, then the values) and asserts that it succeeded.
    pub fn call_session(&self, session_id: &str, method: &str, args: &[&str]) {
        let out = Command::new("busctl")
            .args(["--address", &self.address, "call", "org.overdub.Overdub1"])
            .arg(format!("/org/overdub/Overdub1/session/{session_id}"))
            .args(["org.overdub.Overdub1.Session", method])
            .args(args)
            .output()
            .expect("busctl must be installed (systemd)");
        assert!(
            out.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test configuration knobs written to the daemon's config file.
#[derive(Clone)]
pub struct Settings {
    pub flush_interval: f64,
    pub min_free_seconds: f64,
    pub stop_free_seconds: f64,
    pub format: &'static str,
    pub max_tracks: u32,
    /// `audio.backend`.
    pub backend: &'static str,
    /// `audio.period`: frames per cycle of the virtual graph, and per period asked of an ALSA
    /// device.
    pub period: u32,
    /// The private JACK server the daemon talks to (`JACK_DEFAULT_SERVER`).
    pub jack_server: Option<String>,
    /// `XDG_RUNTIME_DIR` of the daemon (where it finds a private PipeWire server).
    pub runtime_dir: Option<PathBuf>,
    /// More TOML appended to the config file (whole sections).
    pub extra_config: String,
    /// Extra environment of the daemon (e.g. `HOME` for an `.asoundrc`).
    pub env: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            flush_interval: 1.0,
            min_free_seconds: 1.0,
            stop_free_seconds: 0.5,
            format: "s24",
            max_tracks: 64,
            backend: "virtual",
            period: PERIOD,
            jack_server: None,
            runtime_dir: None,
            extra_config: String::new(),
            env: Vec::new(),
        }
    }
}

/// Where a daemon reaches its clients.
#[derive(Clone)]
pub enum Reach {
    /// A private bus.
    Bus(String),
    /// No bus: peer-to-peer under this runtime dir.
    PeerToPeer(PathBuf),
}

/// A running `overdub daemon`.
pub struct Daemon {
    pub child: Option<Child>,
    pub reach: Reach,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    stderr_log: PathBuf,
}

pub fn overdub_bin() -> &'static str {
    env!("CARGO_BIN_EXE_overdub")
}

/// The command that starts the daemon: the binary, or, when `OVERDUB_TEST_DAEMON_LAUNCHER` names
/// a program, that program with the binary as its first argument (`scripts/test-pipewire-1x`
/// runs the daemon against another libpipewire that way).
pub fn daemon_command() -> Command {
    match std::env::var_os("OVERDUB_TEST_DAEMON_LAUNCHER") {
        Some(launcher) => {
            let mut command = Command::new(launcher);
            command.arg(overdub_bin());
            command
        }
        None => Command::new(overdub_bin()),
    }
}

pub fn write_config(dir: &Path, settings: &Settings) -> PathBuf {
    let path = dir.join("overdub.toml");
    std::fs::write(
        &path,
        format!(
            "[audio]\nbackend = \"{}\"\nsample_rate = {RATE}\nperiod = {}\n\
             [engine]\nmax_tracks = {}\n\
             [capture]\nformat = \"{}\"\nflush_interval = {}\nmin_free_seconds = {}\nstop_free_seconds = {}\n\
             [http]\nlisten = \"127.0.0.1:0\"\n{}",
            settings.backend,
            settings.period,
            settings.max_tracks,
            settings.format,
            settings.flush_interval,
            settings.min_free_seconds,
            settings.stop_free_seconds,
            settings.extra_config
        ),
    )
    .unwrap();
    path
}

impl Daemon {
    /// Starts the daemon and waits until it answers the CLI.
    pub fn start(reach: &Reach, data_dir: &Path, settings: &Settings) -> Daemon {
        let daemon = Daemon::spawn(reach, data_dir, settings);
        daemon.wait_ready();
        daemon
    }

    /// Starts the daemon without waiting.
    pub fn spawn(reach: &Reach, data_dir: &Path, settings: &Settings) -> Daemon {
        std::fs::create_dir_all(data_dir).unwrap();
        let config = write_config(data_dir.parent().unwrap_or(data_dir), settings);
        let stderr_log = data_dir
            .parent()
            .unwrap_or(data_dir)
            .join(format!("daemon-{}.log", std::process::id()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .unwrap();
        let mut command = daemon_command();
        command
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("OVERDUB_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(dir) = &settings.runtime_dir {
            command.env("XDG_RUNTIME_DIR", dir);
        }
        apply_reach(&mut command, reach);
        match &settings.jack_server {
            Some(name) => command.env("JACK_DEFAULT_SERVER", name),
            None => command.env_remove("JACK_DEFAULT_SERVER"),
        };
        command.envs(settings.env.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().unwrap();
        Daemon {
            child: Some(child),
            reach: reach.clone(),
            data_dir: data_dir.to_path_buf(),
            config,
            stderr_log,
        }
    }

    /// Wraps a daemon process the test started itself (its log is not captured).
    pub fn adopt(child: Child, reach: Reach, data_dir: &Path, config: PathBuf) -> Daemon {
        Daemon {
            child: Some(child),
            reach,
            data_dir: data_dir.to_path_buf(),
            config,
            stderr_log: data_dir.join("no-log"),
        }
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli_output(&["status", "--json"]);
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "daemon not ready: {}\n--- daemon log ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The bridge's address, from the daemon's log line.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("bridge listening"))
            .unwrap_or_else(|| panic!("no bridge address in the log:\n{log}"));
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unreadable bridge line: {line}"));
        addr.parse().unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The real-time priorities of the daemon's threads (see [`realtime_priorities`]).
    pub fn realtime_priorities(&self) -> Vec<u32> {
        realtime_priorities(self.pid())
    }

    /// Runs the CLI against this daemon.
    pub fn cli_output(&self, args: &[&str]) -> Output {
        let mut command = Command::new(overdub_bin());
        command.args(args).arg("--data-dir").arg(&self.data_dir);
        apply_reach(&mut command, &self.reach);
        command.stdin(Stdio::null()).output().unwrap()
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "overdub {args:?} failed: {}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI and asserts failure; returns stderr.
    pub fn cli_err(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            !out.status.success(),
            "overdub {args:?} should have failed; printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> Json {
        serde_json::from_str(&self.cli(args)).unwrap()
    }

    /// Sends a signal and waits for exit; returns the exit status code (None if killed).
    pub fn signal_and_wait(&mut self, signal: i32) -> Option<i32> {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: kill(2) on the PID of a child we own and have not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not exit after signal {signal}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub fn crash(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// SIGTERM; asserts exit status 0.
    pub fn terminate(&mut self) {
        let code = self.signal_and_wait(libc::SIGTERM);
        assert_eq!(code, Some(0), "daemon exit status\n{}", self.log());
    }

    /// The only active session's id.
    pub fn session_id(&self) -> String {
        self.cli_json(&["session", "show", "--json"])["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn takes_dir(&self, session: &str) -> PathBuf {
        self.data_dir.join("sessions").join(session).join("takes")
    }

    /// The daemon's database, read-only (beside the daemon, independent of it).
    pub fn database(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.data_dir.join("overdub.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    /// Take rows straight from the database (independent of the daemon).
    pub fn takes(&self) -> Vec<TakeRecord> {
        let db = self.database();
        let mut stmt = db
            .prepare("SELECT id, track_index, path, status, frames FROM takes ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| {
            Ok(TakeRecord {
                id: r.get(0)?,
                track_index: r.get(1)?,
                path: self.data_dir.join(r.get::<_, String>(2)?),
                status: r.get(3)?,
                frames: r.get::<_, i64>(4)? as u64,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }
}

impl Daemon {
    /// Where the session's outputs are patched as stored: (role, peers) rows from the database.
    pub fn saved_outputs(&self) -> Vec<(String, String)> {
        let db = self.database();
        let mut stmt = db
            .prepare("SELECT port, peers FROM output_connections ORDER BY port")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Every journaled take event as `take kind frame length detail` lines (for diagnostics).
    pub fn take_events(&self) -> String {
        let db = self.database();
        let mut stmt = db
            .prepare("SELECT take_id, kind, frame, length, detail FROM take_events ORDER BY id")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok(format!(
                    "{} {} {} {} {}",
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?
                ))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows.join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn apply_reach(command: &mut Command, reach: &Reach) {
    match reach {
        Reach::Bus(address) => {
            command.arg("--bus-address").arg(address);
        }
        Reach::PeerToPeer(runtime_dir) => {
            command
                .env_remove("DBUS_SESSION_BUS_ADDRESS")
                .env("XDG_RUNTIME_DIR", runtime_dir);
        }
    }
}

#[derive(Debug, Clone)]
pub struct TakeRecord {
    pub id: i64,
    pub track_index: u32,
    pub path: PathBuf,
    pub status: String,
    pub frames: u64,
}

/// A WAV file read back with hound.
pub struct Wav {
    pub spec: hound::WavSpec,
    /// Samples as f32 in −1…1, interleaved.
    pub samples: Vec<f32>,
}

impl Wav {
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.spec.channels)
    }
}

pub fn read_wav(path: &Path) -> Wav {
    let reader = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("hound cannot read {}: {e}", path.display()));
    let spec = reader.spec();
    let samples = match spec.sample_format {
        hound::SampleFormat::Float => reader.into_samples::<f32>().map(|s| s.unwrap()).collect(),
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.unwrap() as f32 / scale)
                .collect()
        }
    };
    Wav { spec, samples }
}

/// `sox --i` on a file: (rate, channels, bits, samples).
pub fn sox_info(path: &Path) -> (u32, u32, u32, u64) {
    let field = |flag: &str| -> String {
        let out = Command::new("sox")
            .args(["--i", flag])
            .arg(path)
            .output()
            .expect("sox must be installed (scripts/install-deps)");
        assert!(
            out.status.success(),
            "sox --i {flag} {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    (
        field("-r").parse().unwrap(),
        field("-c").parse().unwrap(),
        field("-b").parse().unwrap(),
        field("-s").parse().unwrap(),
    )
}

/// The virtual graph's input channel for a mono track's default input (`Virtual Input n`).
pub fn default_channel(track_index: u32) -> usize {
    5 + track_index as usize - 1
}

/// The reference tone.
pub fn tone(channel: usize, frame: u64) -> f32 {
    overdub::backend::virtual_graph::tone_sample(channel, frame, RATE)
}

/// Tolerance for comparing a recorded sample with the reference (24-bit quantization and the
/// generator's own error, with margin).
pub const TOLERANCE: f32 = 2e-5;

/// An `.asoundrc` whose `default` PCM names a sound card that does not exist: alsa-lib then
/// complains (on stderr, unless overdub collects it) at every attempt to open it.
pub const ASOUNDRC_MISSING_CARD: &str =
    "pcm.!default {\n type hw\n card \"OverdubNoSuchCard\"\n}\n";

/// Finds the graph frame `k` (mod 4800, the common period of every tone at 48 kHz) at which
/// `samples[from..]` of all `tracks` (channel, samples) match their tones.
pub fn find_offset(tracks: &[(usize, &[f32])], from: usize) -> Option<u64> {
    (0..4800u64).find(|&k| {
        tracks.iter().all(|(channel, samples)| {
            (0..32).all(|i| {
                samples
                    .get(from + i)
                    .is_some_and(|s| (s - tone(*channel, k + i as u64)).abs() < TOLERANCE)
            })
        })
    })
}

/// Length of the run of `samples[from..]` that matches `channel`'s tone from graph frame `k`.
pub fn matching_run(channel: usize, samples: &[f32], from: usize, k: u64) -> usize {
    samples[from..]
        .iter()
        .enumerate()
        .take_while(|(i, s)| (**s - tone(channel, k + *i as u64)).abs() < TOLERANCE)
        .count()
}

/// A private bus and a daemon with default settings on it, data under `dir/data`.
pub fn start_on_private_bus(dir: &Path) -> (Bus, Daemon) {
    let bus = Bus::start();
    let daemon = Daemon::start(
        &Reach::Bus(bus.address.clone()),
        &dir.join("data"),
        &Settings::default(),
    );
    (bus, daemon)
}

/// The keys of the metrics dictionary (DESIGN.md §5.1), as JSON carries them.
pub const METRICS_KEYS: [&str; 10] = [
    "sessionId",
    "recordedTracks",
    "totalDuration",
    "averageLatency",
    "bufferUnderruns",
    "dataReceived",
    "xruns",
    "droppedFrames",
    "diskBufferMinFill",
    "clipCount",
];

/// Asserts that `metrics` has every key of the metrics dictionary.
pub fn assert_metrics_keys(metrics: &Json) {
    for key in METRICS_KEYS {
        assert!(metrics.get(key).is_some(), "metrics lack {key}: {metrics}");
    }
}

/// Records the daemon's armed track and calls `stall` mid-take (a client stalling a cycle);
/// checks that overdub counts the xrun in its metrics, that the one take is complete and
/// readable, and that its events mark between 1 and the counted xruns, one of them inside the
/// take after the position where the stall came.
pub fn assert_a_stall_is_an_xrun_marked_in_the_take(daemon: &Daemon, stall: impl FnOnce()) {
    daemon.cli(&["record"]);
    // A stall before the take's first frame would not be marked in it.
    wait_for_position(daemon, u64::from(RATE) / 4);
    let xruns = || {
        daemon.cli_json(&["metrics", "--json"])["xruns"]
            .as_u64()
            .unwrap()
    };
    let before = xruns();
    let position = session_position(daemon);
    stall();
    wait_for(|| xruns() > before, "overdub counts the xrun");
    wait_for_position(daemon, session_position(daemon) + u64::from(RATE) / 4);
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

/// Reads all of a child's stdout in a thread (for monitors).
pub fn collect_stdout(mut child: Child) -> (Child, std::thread::JoinHandle<String>) {
    let mut stdout = child.stdout.take().unwrap();
    let handle = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    (child, handle)
}

pub fn sleep(seconds: f64) {
    std::thread::sleep(Duration::from_secs_f64(seconds));
}

/// Splits the takes from frame `from` into runs over which every track matches its tone from
/// one common feeder frame, and counts the frames (in steps of 16) where the tracks are not
/// their tones from one common frame. Returns the runs (first frame, length, feeder frame mod
/// 4800) and that count.
pub fn aligned_runs(tracks: &[(usize, &[f32])], from: usize) -> (Vec<(usize, usize, u64)>, usize) {
    const STEP: usize = 16;
    let frames = tracks[0].1.len();
    let mut runs = Vec::new();
    let mut lost = 0;
    let mut at = from;
    while at < frames {
        let Some(k) = find_offset(tracks, at) else {
            let step = STEP.min(frames - at);
            lost += step;
            at += step;
            continue;
        };
        // A jump can be invisible in a tone whose cycle divides it: the run ends where the
        // first track breaks.
        let length = tracks
            .iter()
            .map(|(channel, samples)| matching_run(*channel, samples, at, k))
            .min()
            .unwrap_or(0);
        runs.push((at, length, k));
        at += length.max(1);
    }
    (runs, lost)
}

/// The first session's transport position (frames), from `status`.
pub fn session_position(daemon: &Daemon) -> u64 {
    daemon.cli_json(&["status", "--json"])["sessions"][0]["position"]
        .as_u64()
        .unwrap()
}

/// Waits until the first session's position has reached `frames`.
pub fn wait_for_position(daemon: &Daemon, frames: u64) {
    wait_for(
        || session_position(daemon) >= frames,
        &format!("the position reaches frame {frames}"),
    );
}

/// Signals a child this test spawned and waits for it to exit; kills it after 10 s.
pub fn stop_child(child: &mut Child, signal: i32) {
    // SAFETY: kill(2) on the PID of a child the caller spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + Duration::from_secs(10);
    // (An error from try_wait ends the wait: this runs in drops, maybe while unwinding.)
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        sleep(0.02);
    }
}

/// Waits up to 10 s for `condition`, failing with `what` if it never holds.
pub fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        sleep(0.02);
    }
}

/// The real-time priorities of process `pid`'s threads that run `SCHED_FIFO` or `SCHED_RR`, from
/// `/proc/PID/task/*/stat` (fields 40 and 41, rt_priority and policy).
pub fn realtime_priorities(pid: i32) -> Vec<u32> {
    let mut priorities = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended
        };
        // Fields after the command name, which is in parentheses: field 3 comes first.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let priority: u32 = fields[40 - 3].parse().unwrap();
        let policy: u32 = fields[41 - 3].parse().unwrap();
        if policy == libc::SCHED_FIFO as u32 || policy == libc::SCHED_RR as u32 {
            priorities.push(priority);
        }
    }
    priorities
}
