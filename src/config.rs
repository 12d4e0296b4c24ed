//! Configuration: defaults, then the TOML file, then environment, then command-line flags
//! (later wins).
//!
//! Every option is documented, with its default, in `config/overdub.toml`. Unknown keys are
//! errors, so a typo never silently falls back to a default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backend::virtual_graph::{VirtualConfig, VirtualSignal};
use crate::backend::{AlsaOutput, AlsaSettings, JackSettings, TransportMode};

use crate::capture::{SampleFormat, SyncScope};

/// A configuration problem: the file cannot be read or parsed, or a value is out of range.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[daemon]`
    pub daemon: DaemonConfig,
    /// `[audio]`
    pub audio: AudioConfig,
    /// `[virtual]`
    #[serde(rename = "virtual")]
    pub virtual_graph: VirtualGraphConfig,
    /// `[jack]`
    pub jack: JackConfig,
    /// `[alsa]`
    pub alsa: AlsaConfig,
    /// `[engine]`
    pub engine: EngineLimits,
    /// `[session]`
    pub session: SessionDefaults,
    /// `[capture]`
    pub capture: CaptureConfig,
    /// `[http]`
    pub http: HttpConfig,
}

/// `[http]`: the HTTP + WebSocket bridge.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on (`127.0.0.1:7878`; port 0 picks a free one).
    pub listen: String,
    /// Shared secret required from clients; mandatory for a non-loopback `listen`.
    /// `$OVERDUB_TOKEN` overrides it.
    pub token: String,
    /// Browser `Origin` values allowed to connect (requests without `Origin` are not browsers).
    pub allowed_origins: Vec<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted WebSocket message, in bytes.
    pub max_ws_message_bytes: usize,
    /// WebSocket clients served at once.
    pub max_clients: usize,
    /// Commands one WebSocket client may send per second.
    pub commands_per_second: u32,
    /// Milliseconds between `position` pushes while rolling.
    pub position_interval_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:7878".into(),
            token: String::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: 64 * 1024,
            max_ws_message_bytes: 1024 * 1024,
            max_clients: 256,
            commands_per_second: 200,
            position_interval_ms: 50,
        }
    }
}

/// `[daemon]`: process-wide settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Data directory; empty means the default rule (see [`default_data_dir`]).
    pub data_dir: String,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing filter string).
    pub log_level: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            data_dir: String::new(),
            log_level: "info".into(),
        }
    }
}

/// `[audio]`: which audio graph to use and its clock.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AudioConfig {
    /// `auto` (JACK when a server answers, else PipeWire when one answers, else ALSA when its
    /// device opens, else virtual), `jack`, `pipewire`, `alsa` or `virtual`.
    pub backend: String,
    /// Frames per second for the virtual graph and ALSA (JACK sets its own).
    pub sample_rate: u32,
    /// Frames per cycle for the virtual graph and ALSA.
    pub period: u32,
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            backend: "auto".into(),
            sample_rate: 48_000,
            period: 256,
        }
    }
}

/// `[jack]`: the JACK client.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JackConfig {
    /// Client name (JACK appends `-01`… when it is taken); also the PipeWire node's `node.name`.
    pub client_name: String,
    /// `off`, `follow` (start, stop and locate with the JACK transport) or `lead` (drive it).
    pub transport: String,
    /// Give every track direct outputs carrying what it sends to the master (JACK and the
    /// PipeWire node).
    pub direct_outs: bool,
}

impl Default for JackConfig {
    fn default() -> Self {
        JackConfig {
            client_name: "overdub".into(),
            transport: "off".into(),
            direct_outs: false,
        }
    }
}

/// `[alsa]`: the ALSA backend (through cpal).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlsaConfig {
    /// Capture device: an ALSA PCM name (`default`, `hw:CARD=USB,DEV=0`, `plughw:1,0`…).
    pub device: String,
    /// Playback device for the master: `""` = the capture device when it plays (else the master
    /// is discarded), `"none"` = discard, or an ALSA PCM name (it must open).
    pub output_device: String,
    /// Channels captured from the device, 1–64.
    pub channels: u16,
}

impl Default for AlsaConfig {
    fn default() -> Self {
        AlsaConfig {
            device: "default".into(),
            output_device: String::new(),
            channels: 2,
        }
    }
}

/// `[virtual]`: the built-in graph used when no audio server answers.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VirtualGraphConfig {
    /// `tones` (each input a distinct sine) or `silence`.
    pub signal: String,
}

impl Default for VirtualGraphConfig {
    fn default() -> Self {
        VirtualGraphConfig {
            signal: "tones".into(),
        }
    }
}

/// `[engine]`: limits that size the real-time engine's pre-allocated state.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineLimits {
    /// Tracks per session, 1–256.
    pub max_tracks: u32,
    /// Sessions loaded in the engine at once, 1–64.
    pub max_active_sessions: u32,
    /// Lock the daemon's memory (pages stay resident once touched, so the audio path never
    /// waits on swap) when the memlock limit allows it.
    pub lock_memory: bool,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_tracks: 64,
            max_active_sessions: 8,
            lock_memory: true,
        }
    }
}

/// `[session]`: defaults for new sessions.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionDefaults {
    /// Tracks in a new session when the caller does not say.
    pub default_tracks: u32,
    /// How many of those start armed.
    pub default_armed: u32,
}

impl Default for SessionDefaults {
    fn default() -> Self {
        SessionDefaults {
            default_tracks: 4,
            default_armed: 2,
        }
    }
}

/// `[capture]`: how takes reach the disk.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// `s16`, `s24` or `f32`.
    pub format: String,
    /// Seconds between header rewrites + syncs: the most a crash can lose.
    pub flush_interval: f64,
    /// How a flush makes takes durable: `filesystem` (one `syncfs` for all takes) or `files`
    /// (one `fdatasync` per take).
    pub sync: String,
    /// Seconds of audio each track's ring between the audio thread and the disk holds.
    pub ring_seconds: f64,
    /// Recording is refused when free space holds less than this many seconds of it.
    pub min_free_seconds: f64,
    /// Recording stops cleanly when free space falls below this many seconds of it.
    pub stop_free_seconds: f64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            format: "s24".into(),
            flush_interval: 1.0,
            sync: "filesystem".into(),
            ring_seconds: 2.0,
            min_free_seconds: 60.0,
            stop_free_seconds: 10.0,
        }
    }
}

impl CaptureConfig {
    /// The take sample format (validated by [`Config::validate`]).
    pub fn sample_format(&self) -> SampleFormat {
        SampleFormat::parse(&self.format).unwrap_or(SampleFormat::S24)
    }

    /// The sync scope (validated by [`Config::validate`]).
    pub fn sync_scope(&self) -> SyncScope {
        SyncScope::parse(&self.sync).unwrap_or(SyncScope::Filesystem)
    }

    /// The flush interval as a duration.
    pub fn flush_duration(&self) -> Duration {
        Duration::from_secs_f64(self.flush_interval)
    }
}

impl Config {
    /// Reads and validates `path`. A missing file is an error here: callers decide whether a
    /// missing *default* path means "use defaults" (see [`Config::load`]).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError(format!("invalid config {}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// Loads the configuration: `explicit` (must exist), else `$OVERDUB_CONFIG` (must exist),
    /// else the default path if it exists, else defaults.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
        if let Some(path) = explicit {
            return Ok((Config::from_file(path)?, Some(path.to_path_buf())));
        }
        if let Some(path) = std::env::var_os("OVERDUB_CONFIG").filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            return Ok((Config::from_file(&path)?, Some(path)));
        }
        match default_config_path() {
            Some(path) if path.exists() => Ok((Config::from_file(&path)?, Some(path))),
            _ => Ok((Config::default(), None)),
        }
    }

    /// The JACK client's settings.
    pub fn jack_settings(&self) -> JackSettings {
        JackSettings {
            client_name: self.jack.client_name.clone(),
            transport: TransportMode::parse(&self.jack.transport).unwrap_or(TransportMode::Off),
            direct_outs: self.jack.direct_outs,
        }
    }

    /// The ALSA backend's settings.
    pub fn alsa_settings(&self) -> AlsaSettings {
        AlsaSettings {
            device: self.alsa.device.clone(),
            output: match self.alsa.output_device.as_str() {
                "" => AlsaOutput::SameAsInput,
                "none" => AlsaOutput::Discard,
                name => AlsaOutput::Device(name.to_string()),
            },
            channels: self.alsa.channels,
            sample_rate: self.audio.sample_rate,
            period: self.audio.period,
        }
    }

    /// The virtual graph's settings (its input count follows `engine.max_tracks`).
    pub fn virtual_config(&self) -> VirtualConfig {
        VirtualConfig {
            sample_rate: self.audio.sample_rate,
            period: self.audio.period,
            signal: if self.virtual_graph.signal == "silence" {
                VirtualSignal::Silence
            } else {
                VirtualSignal::Tones
            },
            input_count: self.engine.max_tracks as usize,
        }
    }

    /// Checks every value's range; the message names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("config {key}: {why}")));
        if !matches!(
            self.audio.backend.as_str(),
            "auto" | "jack" | "pipewire" | "alsa" | "virtual"
        ) {
            return bad(
                "audio.backend",
                "must be \"auto\", \"jack\", \"pipewire\", \"alsa\" or \"virtual\"",
            );
        }
        if self.alsa.device.is_empty() || self.alsa.device.contains('\0') {
            return bad(
                "alsa.device",
                "must be an ALSA device name such as \"default\"",
            );
        }
        if self.alsa.output_device.contains('\0') {
            return bad(
                "alsa.output_device",
                "must be \"\", \"none\" or an ALSA device name",
            );
        }
        if !(1..=64).contains(&self.alsa.channels) {
            return bad("alsa.channels", "must be 1–64");
        }
        if self.jack.client_name.is_empty()
            || self.jack.client_name.len() > 48
            || self.jack.client_name.contains([':', '\0'])
        {
            return bad("jack.client_name", "must be 1–48 characters without ':'");
        }
        if TransportMode::parse(&self.jack.transport).is_none() {
            return bad("jack.transport", "must be \"off\", \"follow\" or \"lead\"");
        }
        if !(8_000..=384_000).contains(&self.audio.sample_rate) {
            return bad("audio.sample_rate", "must be 8000–384000");
        }
        if !(16..=8192).contains(&self.audio.period) {
            return bad("audio.period", "must be 16–8192 frames");
        }
        if !matches!(self.virtual_graph.signal.as_str(), "tones" | "silence") {
            return bad("virtual.signal", "must be \"tones\" or \"silence\"");
        }
        if !(1..=256).contains(&self.engine.max_tracks) {
            return bad("engine.max_tracks", "must be 1–256");
        }
        if !(1..=64).contains(&self.engine.max_active_sessions) {
            return bad("engine.max_active_sessions", "must be 1–64");
        }
        if self.session.default_tracks < 1 || self.session.default_tracks > self.engine.max_tracks {
            return bad("session.default_tracks", "must be 1–engine.max_tracks");
        }
        if self.session.default_armed > self.session.default_tracks {
            return bad("session.default_armed", "must not exceed default_tracks");
        }
        if SampleFormat::parse(&self.capture.format).is_none() {
            return bad("capture.format", "must be \"s16\", \"s24\" or \"f32\"");
        }
        let c = &self.capture;
        if !(0.05..=60.0).contains(&c.flush_interval) {
            return bad("capture.flush_interval", "must be 0.05–60 seconds");
        }
        if SyncScope::parse(&c.sync).is_none() {
            return bad("capture.sync", "must be \"filesystem\" or \"files\"");
        }
        if !(0.5..=60.0).contains(&c.ring_seconds) {
            return bad("capture.ring_seconds", "must be 0.5–60 seconds");
        }
        if !(0.0..=86_400.0).contains(&c.min_free_seconds) {
            return bad("capture.min_free_seconds", "must be 0–86400 seconds");
        }
        if !(0.0..=86_400.0).contains(&c.stop_free_seconds) {
            return bad("capture.stop_free_seconds", "must be 0–86400 seconds");
        }
        let h = &self.http;
        if h.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "http.listen",
                "must be an IP address and port, e.g. 127.0.0.1:7878",
            );
        }
        if !(1024..=64 * 1024 * 1024).contains(&h.max_body_bytes) {
            return bad("http.max_body_bytes", "must be 1024–67108864");
        }
        if !(1024..=64 * 1024 * 1024).contains(&h.max_ws_message_bytes) {
            return bad("http.max_ws_message_bytes", "must be 1024–67108864");
        }
        if !(1..=10_000).contains(&h.max_clients) {
            return bad("http.max_clients", "must be 1–10000");
        }
        if !(1..=100_000).contains(&h.commands_per_second) {
            return bad("http.commands_per_second", "must be 1–100000");
        }
        if !(10..=10_000).contains(&h.position_interval_ms) {
            return bad("http.position_interval_ms", "must be 10–10000");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.daemon.log_level).is_err() {
            return bad("daemon.log_level", "is not a valid log filter");
        }
        Ok(())
    }
}

/// `$XDG_CONFIG_HOME/overdub/overdub.toml`, else `~/.config/overdub/overdub.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    xdg_dir("XDG_CONFIG_HOME", ".config").map(|d| d.join("overdub").join("overdub.toml"))
}

/// The data directory: `flag`, else `$OVERDUB_DATA_DIR`, else the config's `daemon.data_dir`,
/// else `$XDG_DATA_HOME/overdub`, else `~/.local/share/overdub`. Never `/tmp`.
pub fn default_data_dir(flag: Option<&Path>, config: &Config) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = flag {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("OVERDUB_DATA_DIR").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if !config.daemon.data_dir.is_empty() {
        return Ok(PathBuf::from(&config.daemon.data_dir));
    }
    xdg_dir("XDG_DATA_HOME", ".local/share")
        .map(|d| d.join("overdub"))
        .ok_or_else(|| {
            ConfigError("no data directory: set --data-dir, OVERDUB_DATA_DIR or HOME".into())
        })
}

/// The directory of the peer-to-peer control socket used when no bus is reachable:
/// `$XDG_RUNTIME_DIR/overdub`, else the data directory.
pub fn p2p_socket_path(data_dir: &Path) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("overdub").join("bus"),
        None => data_dir.join("bus"),
    }
}

fn xdg_dir(var: &str, home_relative: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|p| !p.is_empty())
        .map(|home| PathBuf::from(home).join(home_relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_documented_example_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/overdub.toml");
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key_named() {
        let err = toml::from_str::<Config>("[capture]\nflush_intervall = 2.0\n").unwrap_err();
        assert!(err.to_string().contains("flush_intervall"), "{err}");
        let mut config = Config::default();
        config.capture.flush_interval = 0.0;
        let err = config.validate().unwrap_err();
        assert!(err.0.contains("capture.flush_interval"), "{err}");
        let mut config = Config::default();
        config.capture.format = "mp3".into();
        assert!(config.validate().unwrap_err().0.contains("capture.format"));
        config.capture.format = "s24".into();
        config.capture.sync = "never".into();
        assert!(config.validate().unwrap_err().0.contains("capture.sync"));
        let mut config = Config::default();
        config.engine.max_tracks = 0;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.alsa.channels = 0;
        assert!(config.validate().unwrap_err().0.contains("alsa.channels"));
    }

    #[test]
    fn alsa_output_device_words() {
        let mut config: Config =
            toml::from_str("[audio]\nbackend = \"alsa\"\n[alsa]\ndevice = \"hw:1\"\n").unwrap();
        config.validate().unwrap();
        let settings = config.alsa_settings();
        assert_eq!(settings.device, "hw:1");
        assert_eq!(settings.output, AlsaOutput::SameAsInput);
        assert_eq!((settings.channels, settings.sample_rate), (2, 48_000));
        config.alsa.output_device = "none".into();
        assert_eq!(config.alsa_settings().output, AlsaOutput::Discard);
        config.alsa.output_device = "plughw:0".into();
        assert_eq!(
            config.alsa_settings().output,
            AlsaOutput::Device("plughw:0".into())
        );
    }
}
