//! A private JACK server (dummy driver) and small JACK clients that feed the daemon's ports and
//! read its outputs. Each test binary that uses these runs one test, because the clients find
//! their server through the process-wide `JACK_DEFAULT_SERVER`.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jack::{AudioIn, AudioOut, Client, ClientOptions, Control, LatencyType, Port, ProcessScope};

use super::RATE;

/// Daemon settings for the JACK backend on `server`, with `extra` TOML appended.
pub fn settings(server: &JackServer, extra: &str) -> super::Settings {
    super::Settings {
        backend: "jack",
        jack_server: Some(server.name.clone()),
        extra_config: extra.to_string(),
        ..super::Settings::default()
    }
}

/// A private `jackd -d dummy`, stopped by PID on drop.
pub struct JackServer {
    child: Option<Child>,
    pub name: String,
    pub period: u32,
}

impl JackServer {
    /// Starts a server named after this test process (and how many it started before) and
    /// points this process's JACK clients at it (`JACK_DEFAULT_SERVER`).
    pub fn start(period: u32) -> JackServer {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "overdub-test-{}-{}-{period}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        std::env::set_var("JACK_DEFAULT_SERVER", &name);
        let mut server = JackServer {
            child: None,
            name,
            period,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("jackd")
            // Real-time scheduling where permitted (jackd runs without it otherwise): the dummy
            // driver then keeps its clock under the load of parallel tests.
            .args(["-n", &self.name, "-d", "dummy", "-r"])
            .arg(RATE.to_string())
            .arg("-p")
            .arg(self.period.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("jackd must be installed (scripts/install-deps)");
        self.child = Some(child);
        let ok = Command::new("jack_wait")
            .args(["-w", "-t", "10"])
            .env("JACK_DEFAULT_SERVER", &self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("jack_wait must be installed (jackd2)");
        assert!(ok.success(), "jackd {} did not come up", self.name);
    }

    /// Kills the server with `signal` and waits for it to exit (SIGKILL after 10 s).
    pub fn kill(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            super::stop_child(&mut child, signal);
        }
    }

    /// Starts the server again under the same name.
    pub fn restart(&mut self) {
        self.kill(libc::SIGTERM);
        self.launch();
    }

    /// `jack_lsp` with `args`, against this server.
    pub fn lsp(&self, args: &[&str]) -> String {
        let out = Command::new("jack_lsp")
            .args(args)
            .env("JACK_DEFAULT_SERVER", &self.name)
            .output()
            .expect("jack_lsp must be installed (jackd2)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Changes the server's period with `jack_bufsize` (clients get JACK's buffer-size
    /// callback).
    pub fn set_period(&self, frames: u32) {
        let ok = Command::new("jack_bufsize")
            .arg(frames.to_string())
            .env("JACK_DEFAULT_SERVER", &self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("jack_bufsize must be installed (jackd2)");
        assert!(
            ok.success(),
            "jack_bufsize {frames} failed on {}",
            self.name
        );
    }

    /// Waits until `jack_lsp` lists `port`.
    pub fn wait_for_port(&self, port: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.lsp(&[]).lines().any(|l| l == port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The ports connected to `port`, as `jack_lsp -c` shows them.
    pub fn connections(&self, port: &str) -> Vec<String> {
        let listing = self.lsp(&["-c"]);
        let mut lines = listing.lines().skip_while(|l| *l != port).skip(1);
        let mut out = Vec::new();
        while let Some(line) = lines.next().filter(|l| l.starts_with("   ")) {
            out.push(line.trim().to_string());
        }
        out
    }
}

impl Drop for JackServer {
    fn drop(&mut self) {
        self.kill(libc::SIGTERM);
    }
}

/// What one feeder output carries.
#[derive(Clone, Copy)]
pub enum Signal {
    /// `super::tone(channel, frame)` at the feeder's own frame count.
    Tone(usize),
    /// A constant.
    Dc(f32),
}

struct FeederProcess {
    outs: Vec<Port<AudioOut>>,
    signals: Vec<Signal>,
    frame: Arc<AtomicU64>,
    impulse_at: Arc<AtomicU64>,
    /// The server's frame time the next cycle should start at.
    next_cycle: Option<u32>,
    /// Cycles the server ran without this client (its frame time jumped).
    missed: Arc<AtomicU64>,
    /// Cycles this client ran.
    cycles: Arc<AtomicU64>,
    /// When the last cycle began.
    last_start: Option<Instant>,
    /// Cycles that began within half a period of the one before: a server that was held back
    /// runs its late cycles back to back.
    catch_up: Arc<AtomicU64>,
    /// Microseconds the next cycle sleeps before writing (then back to 0).
    stall_us: Arc<AtomicU64>,
}

/// Value of an impulse the feeder puts on its first two outputs.
pub const IMPULSE: f32 = 0.9;

impl jack::ProcessHandler for FeederProcess {
    fn process(&mut self, _: &Client, scope: &ProcessScope) -> Control {
        let cycle = scope.last_frame_time();
        if let Some(expected) = self.next_cycle {
            // The frames the server ran on without this client, in cycles of this one's size.
            // A frame time that went back, or ahead by more than a second (a clock that
            // changed, not cycles run), counts as one.
            let skipped = cycle.wrapping_sub(expected);
            let cycles = match skipped {
                0 => 0,
                1..=super::RATE => skipped.div_ceil(scope.n_frames().max(1)),
                _ => 1,
            };
            self.missed.fetch_add(u64::from(cycles), Ordering::Relaxed);
        }
        self.next_cycle = Some(cycle.wrapping_add(scope.n_frames()));
        let now = Instant::now();
        let half_period =
            Duration::from_secs_f64(f64::from(scope.n_frames()) / 2.0 / f64::from(RATE));
        if self
            .last_start
            .is_some_and(|last| now.duration_since(last) < half_period)
        {
            self.catch_up.fetch_add(1, Ordering::Relaxed);
        }
        self.last_start = Some(now);
        let stall = self.stall_us.swap(0, Ordering::Relaxed);
        if stall > 0 {
            std::thread::sleep(Duration::from_micros(stall));
        }
        let start = self.frame.load(Ordering::Relaxed);
        let impulse = self.impulse_at.load(Ordering::Relaxed);
        for (index, (port, signal)) in self.outs.iter_mut().zip(&self.signals).enumerate() {
            for (k, sample) in port.as_mut_slice(scope).iter_mut().enumerate() {
                let frame = start + k as u64;
                *sample = if index < 2 && frame == impulse {
                    IMPULSE
                } else {
                    match signal {
                        Signal::Tone(channel) => super::tone(*channel, frame),
                        Signal::Dc(value) => *value,
                    }
                };
            }
        }
        self.frame
            .store(start + u64::from(scope.n_frames()), Ordering::Relaxed);
        self.cycles.fetch_add(1, Ordering::Relaxed);
        Control::Continue
    }
}

/// A JACK client `feeder` with outputs `out_1`… carrying `signals`.
pub struct Feeder {
    client: jack::AsyncClient<(), FeederProcess>,
    frame: Arc<AtomicU64>,
    impulse_at: Arc<AtomicU64>,
    missed: Arc<AtomicU64>,
    cycles: Arc<AtomicU64>,
    catch_up: Arc<AtomicU64>,
    stall_us: Arc<AtomicU64>,
}

impl Feeder {
    pub fn start(signals: &[Signal]) -> Feeder {
        let (client, _) = Client::new("feeder", ClientOptions::NO_START_SERVER)
            .expect("the feeder reaches the private jackd");
        let outs = (1..=signals.len())
            .map(|n| {
                client
                    .register_port(&format!("out_{n}"), AudioOut::default())
                    .unwrap()
            })
            .collect();
        let frame = Arc::new(AtomicU64::new(0));
        let impulse_at = Arc::new(AtomicU64::new(u64::MAX));
        let missed = Arc::new(AtomicU64::new(0));
        let cycles = Arc::new(AtomicU64::new(0));
        let catch_up = Arc::new(AtomicU64::new(0));
        let stall_us = Arc::new(AtomicU64::new(0));
        let process = FeederProcess {
            outs,
            signals: signals.to_vec(),
            frame: Arc::clone(&frame),
            impulse_at: Arc::clone(&impulse_at),
            next_cycle: None,
            missed: Arc::clone(&missed),
            cycles: Arc::clone(&cycles),
            last_start: None,
            catch_up: Arc::clone(&catch_up),
            stall_us: Arc::clone(&stall_us),
        };
        let client = client.activate_async((), process).unwrap();
        Feeder {
            client,
            frame,
            impulse_at,
            missed,
            cycles,
            catch_up,
            stall_us,
        }
    }

    /// Makes the feeder's next cycle sleep `time` before writing: far past a period, the
    /// server reports an xrun to every client.
    pub fn stall(&self, time: Duration) {
        self.stall_us
            .store(time.as_micros().max(1) as u64, Ordering::Relaxed);
    }

    /// Cycles the server ran without the feeder since it started: each leaves a period of
    /// its outputs stale and its tones a period behind the graph.
    pub fn missed_cycles(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// Moments the graph upstream of a device may have broken the feeder's tones: the cycles
    /// the server ran without the feeder ([`Feeder::missed_cycles`]), and the cycles it ran
    /// back to back to catch up after it was held back. A device that reads the graph through a
    /// small buffer, as the ALSA JACK plugin does, can find that buffer full in such a burst:
    /// the plugin then drops the cycle without reporting an overrun.
    pub fn disturbances(&self) -> u64 {
        self.missed_cycles() + self.catch_up.load(Ordering::Relaxed)
    }

    /// Cycles the feeder has run since it started.
    pub fn cycles(&self) -> u64 {
        self.cycles.load(Ordering::Relaxed)
    }

    /// Frames the feeder has produced.
    pub fn frame(&self) -> u64 {
        self.frame.load(Ordering::Relaxed)
    }

    /// Gives every output a capture latency of `frames`, as a sound card's capture ports report
    /// theirs. Under `pw-jack` PipeWire passes it on to the linked ports at once; jackd would
    /// overwrite it at its next latency computation (it keeps only what a latency callback
    /// sets), so this serves the PipeWire tests.
    pub fn set_capture_latency(&self, frames: u32) {
        set_own_latency(self.client.as_client(), LatencyType::Capture, frames);
    }

    /// Gives output `out_N` alone a capture latency of `frames` (see
    /// [`Feeder::set_capture_latency`]).
    pub fn set_output_capture_latency(&self, output: usize, frames: u32) {
        let client = self.client.as_client();
        let name = format!("{}:out_{output}", client.name());
        if let Some(port) = client.port_by_name(&name) {
            port.set_latency_range(LatencyType::Capture, (frames, frames));
        }
    }

    /// The (capture, playback) latency ranges of any port in the graph, as this client's
    /// library reports them.
    pub fn latency_of(&self, port: &str) -> Option<[(u32, u32); 2]> {
        let port = self.client.as_client().port_by_name(port)?;
        Some([
            port.get_latency_range(LatencyType::Capture),
            port.get_latency_range(LatencyType::Playback),
        ])
    }

    /// Puts an impulse on outputs 1 and 2 `after` frames from now; returns its feeder frame.
    pub fn impulse_in(&self, after: u64) -> u64 {
        let at = self.frame.load(Ordering::Relaxed) + after;
        self.impulse_at.store(at, Ordering::Relaxed);
        at
    }
}

struct ProbeProcess {
    ins: [Port<AudioIn>; 2],
    last: Arc<[AtomicU32; 2]>,
}

impl jack::ProcessHandler for ProbeProcess {
    fn process(&mut self, _: &Client, scope: &ProcessScope) -> Control {
        for (port, last) in self.ins.iter().zip(self.last.iter()) {
            if let Some(value) = port.as_slice(scope).last() {
                last.store(value.to_bits(), Ordering::Relaxed);
            }
        }
        Control::Continue
    }
}

/// Sets the latency range `mode` of every port of `client` to `frames` (see
/// [`Feeder::set_capture_latency`]).
fn set_own_latency(client: &Client, mode: LatencyType, frames: u32) {
    let own = format!("^{}:", client.name());
    for name in client.ports(Some(&own), None, jack::PortFlags::empty()) {
        if let Some(port) = client.port_by_name(&name) {
            port.set_latency_range(mode, (frames, frames));
        }
    }
}

/// A JACK client (`probe` unless named) with inputs `in_L`/`in_R` that keeps the last sample of
/// each.
pub struct Probe {
    client: jack::AsyncClient<(), ProbeProcess>,
    last: Arc<[AtomicU32; 2]>,
}

impl Probe {
    pub fn start() -> Probe {
        Probe::named("probe")
    }

    pub fn named(name: &str) -> Probe {
        let (client, _) = Client::new(name, ClientOptions::NO_START_SERVER)
            .expect("the probe reaches the private jackd");
        let ins = [
            client.register_port("in_L", AudioIn::default()).unwrap(),
            client.register_port("in_R", AudioIn::default()).unwrap(),
        ];
        let last = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let process = ProbeProcess {
            ins,
            last: Arc::clone(&last),
        };
        Probe {
            client: client.activate_async((), process).unwrap(),
            last,
        }
    }

    /// Gives both inputs a playback latency of `frames`, as a sound card's playback ports
    /// report theirs (under `pw-jack` only, see [`Feeder::set_capture_latency`]).
    pub fn set_playback_latency(&self, frames: u32) {
        set_own_latency(self.client.as_client(), LatencyType::Playback, frames);
    }

    /// The last (left, right) samples seen.
    pub fn last(&self) -> (f32, f32) {
        (
            f32::from_bits(self.last[0].load(Ordering::Relaxed)),
            f32::from_bits(self.last[1].load(Ordering::Relaxed)),
        )
    }
}

/// `jack_connect A B` against the server in `JACK_DEFAULT_SERVER`.
pub fn connect(a: &str, b: &str) {
    let ok = Command::new("jack_connect").args([a, b]).status().unwrap();
    assert!(ok.success(), "jack_connect {a} {b}");
}

pub fn disconnect(a: &str, b: &str) {
    let ok = Command::new("jack_disconnect")
        .args([a, b])
        .status()
        .unwrap();
    assert!(ok.success(), "jack_disconnect {a} {b}");
}
