//! A private PipeWire server (own `XDG_RUNTIME_DIR`, quantum 256 at 48 kHz through a config
//! drop-in; no session manager, or WirePlumber on a private bus with a virtual sink and source
//! and no access to real devices; the quantum can be forced larger mid-test) and a feeder:
//! this test binary run again under `pw-jack` as a JACK client (`feeder`, outputs `out_1`… carrying tones, see [`super::jack::Feeder`]).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::jack::{Feeder, Probe, Signal};
use super::{stop_child, Bus, PERIOD, RATE};

/// A private `pipewire`, stopped by PID on drop (its session manager first, if it has one).
pub struct PipeWireServer {
    child: Option<Child>,
    session_manager: Option<SessionManager>,
    _dir: tempfile::TempDir,
    pub runtime_dir: PathBuf,
    config_dir: PathBuf,
    state_dir: PathBuf,
}

/// A `wireplumber` serving one private server, on its own `dbus-daemon`.
struct SessionManager {
    child: Child,
    _bus: Bus,
}

impl PipeWireServer {
    /// Starts a server in a fresh runtime dir, quantum fixed at [`PERIOD`], and waits until it
    /// answers.
    pub fn start() -> PipeWireServer {
        PipeWireServer::start_with_max_quantum(PERIOD)
    }

    /// Starts a server whose quantum is [`PERIOD`] unless forced up to `max_quantum` frames
    /// ([`PipeWireServer::force_quantum`]).
    pub fn start_with_max_quantum(max_quantum: u32) -> PipeWireServer {
        let mut server = PipeWireServer::configured(max_quantum);
        server.launch();
        server
    }

    /// A server's directories and quantum drop-in, not launched.
    fn configured(max_quantum: u32) -> PipeWireServer {
        let dir = tempfile::tempdir().unwrap();
        let runtime_dir = dir.path().join("run");
        let config_dir = dir.path().join("config");
        let state_dir = dir.path().join("state");
        let drop_in = config_dir.join("pipewire/pipewire.conf.d");
        std::fs::create_dir_all(&runtime_dir).unwrap();
        std::fs::create_dir_all(&drop_in).unwrap();
        std::fs::write(
            drop_in.join("10-quantum.conf"),
            format!(
                "context.properties = {{\n  default.clock.rate = {RATE}\n  \
                 default.clock.quantum = {PERIOD}\n  default.clock.min-quantum = {PERIOD}\n  \
                 default.clock.max-quantum = {max_quantum}\n}}\n"
            ),
        )
        .unwrap();
        PipeWireServer {
            child: None,
            session_manager: None,
            _dir: dir,
            runtime_dir,
            config_dir,
            state_dir,
        }
    }

    /// Starts a server as [`PipeWireServer::start`] does, with a virtual sink and a virtual
    /// source ([`MANAGED_SOURCE`]) as a desktop's devices, then WirePlumber, its session
    /// manager, on a private bus (it needs one), and waits until WirePlumber has made that
    /// source the default: its policy is at work. WirePlumber's monitors of real devices (ALSA,
    /// Bluetooth, cameras) are off, so it touches none of the machine's own.
    pub fn start_with_session_manager() -> PipeWireServer {
        // The settings below are WirePlumber 0.4's Lua configuration, which 0.5 ignores.
        let version = Command::new("wireplumber")
            .arg("--version")
            .output()
            .expect("wireplumber must be installed (scripts/install-deps)");
        let version = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.contains("libwireplumber 0.4."),
            "these tests configure WirePlumber 0.4 (its Lua files); found:\n{version}"
        );
        let mut server = PipeWireServer::configured(PERIOD);
        let devices = |name: &str, class: &str| {
            format!(
                "  {{ factory = adapter\n    args = {{\n      factory.name = \
                 support.null-audio-sink\n      node.name = \"{name}\"\n      media.class = \
                 \"{class}\"\n      audio.position = \"FL,FR\"\n    }}\n  }}\n"
            )
        };
        std::fs::write(
            server
                .config_dir
                .join("pipewire/pipewire.conf.d/20-devices.conf"),
            format!(
                "context.objects = [\n{}{}]\n",
                devices("test-sink", "Audio/Sink"),
                devices(MANAGED_SOURCE, "Audio/Source/Virtual")
            ),
        )
        .unwrap();
        for (dir, settings) in [
            (
                "main.lua.d",
                "alsa_monitor.enabled = false\nv4l2_monitor.enabled = false\n\
                 libcamera_monitor.enabled = false\n",
            ),
            ("bluetooth.lua.d", "bluez_monitor.enabled = false\n"),
        ] {
            let dir = server.config_dir.join("wireplumber").join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("51-no-hardware.lua"), settings).unwrap();
        }
        server.launch();
        let bus = Bus::start();
        let child = server
            .command("wireplumber")
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireplumber must be installed (scripts/install-deps)");
        server.session_manager = Some(SessionManager { child, _bus: bus });
        let deadline = Instant::now() + Duration::from_secs(10);
        let source_is_default =
            format!("'default.audio.source' value:'{{\"name\":\"{MANAGED_SOURCE}\"}}'");
        while !server
            .output("pw-metadata", &["-n", "default", "0"])
            .contains(&source_is_default)
        {
            assert!(
                Instant::now() < deadline,
                "wireplumber did not make {MANAGED_SOURCE} the default source"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Starts `pw-record` into `file`: a capture stream, which a session manager links to the
    /// default source. Stopped on drop.
    pub fn capture_stream(&self, file: &std::path::Path) -> Program {
        let child = self
            .command("pw-record")
            .args([
                "--rate",
                &RATE.to_string(),
                "--channels",
                "2",
                "--format",
                "s16",
            ])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pw-record must be installed (pipewire-bin)");
        Program { child }
    }

    /// Starts `jack_iodelay` under `pw-jack`: another program with an input port,
    /// [`SINK_PORT`], for the master to be linked to. Stopped on drop.
    pub fn sink(&self) -> Program {
        let child = self
            .command("pw-jack")
            .arg("jack_iodelay")
            .env("PIPEWIRE_QUANTUM", format!("{PERIOD}/{RATE}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pw-jack (pipewire-jack) and jack_iodelay (jackd2) must be installed");
        assert!(
            self.wait_for_port(SINK_PORT, false, Duration::from_secs(5)),
            "{SINK_PORT} missing:\n{}",
            self.output("pw-link", &["-i"])
        );
        Program { child }
    }

    /// Whether this server's session manager is still running (false when it has none).
    pub fn session_manager_running(&mut self) -> bool {
        self.session_manager
            .as_mut()
            .is_some_and(|manager| manager.child.try_wait().unwrap().is_none())
    }

    /// A command that reaches this server (and no other).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("XDG_CONFIG_HOME", &self.config_dir)
            .env("XDG_STATE_HOME", &self.state_dir)
            .env_remove("PIPEWIRE_REMOTE")
            .env_remove("WIREPLUMBER_CONFIG_DIR")
            .env_remove("JACK_DEFAULT_SERVER")
            .stdin(Stdio::null());
        command
    }

    fn launch(&mut self) {
        let child = self
            .command("pipewire")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pipewire must be installed (scripts/install-deps)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answered = self
                .command("pw-cli")
                .args(["info", "0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("pw-cli must be installed (pipewire-bin)");
            if answered.success() {
                return;
            }
            assert!(Instant::now() < deadline, "pipewire did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("the server runs").id() as i32
    }

    /// Kills the server with `signal` and waits for it to exit (SIGKILL after 10 s).
    pub fn kill(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, signal);
        }
    }

    /// Starts the server again in the same runtime dir.
    pub fn restart(&mut self) {
        self.kill(libc::SIGTERM);
        self.launch();
    }

    /// Stdout of `program args` against this server.
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} must be installed (pipewire-bin): {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Forces the graph's quantum to `frames` (`clock.force-quantum` in the `settings`
    /// metadata, as a desktop's `pw-metadata` does).
    pub fn force_quantum(&self, frames: u32) {
        let ok = self
            .command("pw-metadata")
            .args([
                "-n",
                "settings",
                "0",
                "clock.force-quantum",
                &frames.to_string(),
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "pw-metadata clock.force-quantum {frames}");
    }

    /// `pw-link A B`.
    pub fn link(&self, output: &str, input: &str) {
        let ok = self
            .command("pw-link")
            .args([output, input])
            .status()
            .unwrap();
        assert!(ok.success(), "pw-link {output} {input}");
    }

    /// The output ports linked into `input`, as `pw-link -l` shows them.
    pub fn links_into(&self, input: &str) -> Vec<String> {
        let listing = self.output("pw-link", &["-l"]);
        let mut lines = listing.lines().skip_while(|l| *l != input).skip(1);
        let mut out = Vec::new();
        while let Some(line) = lines.next().filter(|l| l.starts_with("  |<- ")) {
            out.push(line.trim_start_matches("  |<- ").to_string());
        }
        out.sort();
        out
    }

    /// Whether `pw-link -i` (inputs) or `-o` (outputs) lists `port`.
    pub fn has_port(&self, port: &str, output: bool) -> bool {
        let flag = if output { "-o" } else { "-i" };
        self.output("pw-link", &[flag]).lines().any(|l| l == port)
    }

    /// Waits until [`PipeWireServer::has_port`].
    pub fn wait_for_port(&self, port: &str, output: bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.has_port(port, output) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for PipeWireServer {
    fn drop(&mut self) {
        if let Some(mut manager) = self.session_manager.take() {
            stop_child(&mut manager.child, libc::SIGTERM);
        }
        self.kill(libc::SIGTERM);
    }
}

/// The input port of [`PipeWireServer::sink`].
pub const SINK_PORT: &str = "jack_delay:in";

/// The virtual source a server with a session manager has, made the default by WirePlumber.
pub const MANAGED_SOURCE: &str = "test-source";

/// A program a test started against the server (a capture stream, a sink); stopped on drop.
pub struct Program {
    child: Child,
}

impl Drop for Program {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGTERM);
    }
}

/// Environment variable that turns this test binary into the feeder process: its outputs'
/// signals, `,`-separated (a tone channel, or `dc:VALUE`).
pub const FEEDER_ENV: &str = "OVERDUB_TEST_PW_FEEDER";
/// The feeder process's probes, `,`-separated names.
pub const PROBES_ENV: &str = "OVERDUB_TEST_PW_PROBES";

/// The feeder process: `pw-jack <this test binary> <feeder test>` with tone channels in
/// [`FEEDER_ENV`]. Killed on drop.
pub struct PwFeeder {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl PwFeeder {
    /// Starts the feeder with one output per tone channel and waits for its ports.
    pub fn start(server: &PipeWireServer, test_name: &str, channels: &[usize]) -> PwFeeder {
        let list: Vec<String> = channels.iter().map(usize::to_string).collect();
        PwFeeder::launch(server, test_name, &list, &[])
    }

    /// Starts the feeder with one output per constant in `values`, and a probe (a JACK client
    /// with inputs `in_L`/`in_R`, see [`Probe`]) called each of `probes`, and waits for their
    /// ports.
    pub fn start_constants(
        server: &PipeWireServer,
        test_name: &str,
        values: &[f64],
        probes: &[&str],
    ) -> PwFeeder {
        let list: Vec<String> = values.iter().map(|v| format!("dc:{v}")).collect();
        let feeder = PwFeeder::launch(server, test_name, &list, probes);
        for probe in probes {
            for side in ["L", "R"] {
                let port = format!("{probe}:in_{side}");
                assert!(
                    server.wait_for_port(&port, false, Duration::from_secs(5)),
                    "{port} missing:\n{}",
                    server.output("pw-link", &["-i"])
                );
            }
        }
        feeder
    }

    fn launch(
        server: &PipeWireServer,
        test_name: &str,
        signals: &[String],
        probes: &[&str],
    ) -> PwFeeder {
        let mut child = server
            .command("pw-jack")
            .arg(std::env::current_exe().unwrap())
            .args([test_name, "--exact", "--ignored", "--nocapture"])
            .env(FEEDER_ENV, signals.join(","))
            .env(PROBES_ENV, probes.join(","))
            .env("PIPEWIRE_QUANTUM", format!("{PERIOD}/{RATE}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pw-jack must be installed (pipewire-jack)");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.any(|line| line.is_ok_and(|l| l == "feeder ready"));
        assert!(ready, "the feeder did not start under pw-jack");
        for n in 1..=signals.len() {
            assert!(
                server.wait_for_port(&format!("feeder:out_{n}"), true, Duration::from_secs(5)),
                "feeder:out_{n} missing:\n{}",
                server.output("pw-link", &["-o"])
            );
        }
        PwFeeder {
            child,
            stdin,
            stdout: lines,
        }
    }

    /// Sends `command` and returns the number the feeder answers with (`<command> N`).
    fn ask(&mut self, command: &str) -> u64 {
        self.answer(command).parse().unwrap()
    }

    /// Sends `command` and returns the rest of the feeder's answer line (`<command> …`).
    fn answer(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let prefix = format!("{command} ");
        let line = self
            .stdout
            .find_map(|line| line.ok().filter(|l| l.starts_with(&prefix)))
            .expect("the feeder answers");
        line[prefix.len()..].to_string()
    }

    /// The last (left, right) samples probe `name` has seen (see [`Probe::last`]).
    pub fn probe(&mut self, name: &str) -> (f32, f32) {
        let answer = self.answer(&format!("last {name}"));
        let (left, right) = answer.split_once(' ').expect("two samples");
        (left.parse().unwrap(), right.parse().unwrap())
    }

    /// Cycles the graph ran without the feeder so far (see [`Feeder::missed_cycles`]).
    pub fn missed_cycles(&mut self) -> u64 {
        self.ask("missed")
    }

    /// Cycles the feeder has run so far.
    pub fn cycles(&mut self) -> u64 {
        self.ask("cycles")
    }

    /// Frames the feeder has produced so far.
    pub fn frame(&mut self) -> u64 {
        self.ask("frame")
    }

    /// Asks for an impulse on outputs 1 and 2 a quarter second from now; returns its feeder
    /// frame (see [`PwFeeder::frame`]).
    pub fn impulse(&mut self) -> u64 {
        self.ask("impulse")
    }

    /// Gives the feeder's outputs a capture latency of `frames` (see
    /// [`Feeder::set_capture_latency`]).
    pub fn set_capture_latency(&mut self, frames: u32) {
        assert_eq!(self.answer(&format!("capture-latency {frames}")), "ok");
    }

    /// Gives the feeder's output `out_N` alone a capture latency of `frames`.
    pub fn set_output_capture_latency(&mut self, output: usize, frames: u32) {
        let command = format!("capture-latency {frames} out_{output}");
        assert_eq!(self.answer(&command), "ok");
    }

    /// Gives the inputs of every probe a playback latency of `frames` (see
    /// [`Probe::set_playback_latency`]).
    pub fn set_playback_latency(&mut self, frames: u32) {
        assert_eq!(self.answer(&format!("playback-latency {frames}")), "ok");
    }

    /// The (capture, playback) latency ranges of `port` as pipewire-jack reports them (see
    /// [`Feeder::latency_of`]), `None` while the feeder does not know the port (yet).
    pub fn latency(&mut self, port: &str) -> Option<[(u32, u32); 2]> {
        let answer = self.answer(&format!("latency {port}"));
        let n: Vec<u32> = answer
            .split(' ')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        Some([(n[0], n[1]), (n[2], n[3])])
    }

    /// Makes the feeder's next cycle sleep for `duration` before writing (see
    /// [`Feeder::stall`]).
    pub fn stall(&mut self, duration: Duration) {
        writeln!(self.stdin, "stall {}", duration.as_micros()).unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for PwFeeder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of the feeder process: a [`Feeder`] over the JACK API (PipeWire's libjack under
/// `pw-jack`) that, until stdin closes, answers each line on stdin: `impulse` puts an impulse
/// on outputs 1 and 2 a quarter second ahead and prints `impulse FRAME`; `missed`, `cycles`
/// and `frame` print `missed N` (its missed cycles), `cycles N` (cycles run) and `frame N`;
/// `stall MICROSECONDS` stalls its next cycle; `last PROBE` prints `last PROBE LEFT RIGHT`,
/// the last samples that probe saw; `capture-latency FRAMES [out_N]` and `playback-latency
/// FRAMES` set the latency of the outputs (or of one) and of every probe's inputs (and echo
/// the command);
/// `latency PORT` prints `latency PORT` and the port's capture and playback ranges (four
/// numbers, or `none`). Returns at once when [`FEEDER_ENV`] is not set.
pub fn run_feeder_process() {
    let Ok(list) = std::env::var(FEEDER_ENV) else {
        return;
    };
    let signals: Vec<Signal> = list
        .split(',')
        .map(|c| match c.strip_prefix("dc:") {
            Some(value) => Signal::Dc(value.parse().unwrap()),
            None => Signal::Tone(c.parse().unwrap()),
        })
        .collect();
    let feeder = Feeder::start(&signals);
    let probes: Vec<(String, Probe)> = std::env::var(PROBES_ENV)
        .unwrap_or_default()
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| (name.to_string(), Probe::named(name)))
        .collect();
    println!("feeder ready");
    for line in std::io::stdin().lines() {
        match line.unwrap().trim() {
            "impulse" => println!("impulse {}", feeder.impulse_in(u64::from(RATE) / 4)),
            "missed" => println!("missed {}", feeder.missed_cycles()),
            "cycles" => println!("cycles {}", feeder.cycles()),
            "frame" => println!("frame {}", feeder.frame()),
            command => {
                if let Some(rest) = command.strip_prefix("capture-latency ") {
                    match rest.split_once(" out_") {
                        Some((frames, output)) => feeder.set_output_capture_latency(
                            output.parse().unwrap(),
                            frames.parse().unwrap(),
                        ),
                        None => feeder.set_capture_latency(rest.parse().unwrap()),
                    }
                    println!("{command} ok");
                } else if let Some(frames) = command.strip_prefix("playback-latency ") {
                    for (_, probe) in &probes {
                        probe.set_playback_latency(frames.parse().unwrap());
                    }
                    println!("{command} ok");
                } else if let Some(port) = command.strip_prefix("latency ") {
                    match feeder.latency_of(port) {
                        Some([(c0, c1), (p0, p1)]) => println!("{command} {c0} {c1} {p0} {p1}"),
                        None => println!("{command} none"),
                    }
                } else if let Some(micros) = command.strip_prefix("stall ") {
                    feeder.stall(Duration::from_micros(micros.parse().unwrap()));
                } else if let Some(name) = command.strip_prefix("last ") {
                    // An unknown probe answers NaN, which no check accepts.
                    let (left, right) = probes
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or((f32::NAN, f32::NAN), |(_, probe)| probe.last());
                    println!("last {name} {left} {right}");
                }
            }
        }
    }
}
