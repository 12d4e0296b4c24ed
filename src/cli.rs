//! The `overdub` command line (DESIGN.md §5.2). `overdub daemon` runs the service; every other
//! verb is a D-Bus client of it.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value as Json};
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

use crate::config::{default_data_dir, p2p_socket_path, Config};
use crate::dbus::client::{Client, ClientError, MANAGER, SESSION, TRACK};
use crate::dbus::{BusChoice, ROOT_PATH};

/// overdub: a scriptable multitrack recorder.
#[derive(Parser, Debug)]
#[command(name = "overdub", version, about)]
pub struct Cli {
    #[command(flatten)]
    bus: BusArgs,
    #[command(subcommand)]
    command: Command,
}

/// Which bus to use (shared by the daemon and the client verbs).
#[derive(Args, Debug, Clone)]
struct BusArgs {
    /// Use the system bus.
    #[arg(long, global = true, conflicts_with = "bus_address")]
    system: bool,
    /// Use the bus at this address.
    #[arg(long, global = true, value_name = "ADDR")]
    bus_address: Option<String>,
    /// Data directory (also where clients look for the daemon's socket when no bus is there).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl BusArgs {
    fn choice(&self) -> Option<BusChoice> {
        if self.system {
            Some(BusChoice::System)
        } else {
            self.bus_address.clone().map(BusChoice::Address)
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the recording daemon.
    Daemon {
        /// Configuration file (default: $OVERDUB_CONFIG, else ~/.config/overdub/overdub.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Audio graph: auto (JACK, else PipeWire when a server answers, else ALSA when its
        /// device opens, else virtual), jack, pipewire, alsa or virtual.
        #[arg(long, value_name = "BACKEND")]
        backend: Option<String>,
        /// HTTP + WebSocket address (default `http.listen`, 127.0.0.1:7878).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Create, list, show, open, close and delete sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Change a track's settings.
    #[command(subcommand)]
    Track(TrackCommand),
    /// Record every armed track.
    Record(SessionArg),
    /// Roll without recording.
    Play(SessionArg),
    /// Hold the position and suspend capture.
    Pause(SessionArg),
    /// Continue into the same takes.
    Resume(SessionArg),
    /// Stop, finalize the takes and print the metrics.
    Stop(SessionJsonArg),
    /// Move the position: frames, seconds (`12.5s`) or `mm:ss.ms`.
    Seek {
        /// Position.
        position: String,
        #[command(flatten)]
        session: SessionArg,
    },
    /// The daemon and its active sessions.
    Status(JsonArg),
    /// The audio graph's devices.
    Devices(JsonArg),
    /// The current or last recording run's metrics.
    Metrics(SessionJsonArg),
}

#[derive(Args, Debug)]
struct SessionArg {
    /// Session id (default: the only active session).
    #[arg(long, value_name = "ID")]
    session: Option<String>,
}

#[derive(Args, Debug)]
struct JsonArg {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SessionJsonArg {
    #[command(flatten)]
    session: SessionArg,
    #[command(flatten)]
    json: JsonArg,
}

#[derive(Subcommand, Debug)]
enum SessionCommand {
    /// Create a session and print its id.
    Create {
        /// Name.
        name: String,
        /// Number of tracks (the first two start armed).
        #[arg(long)]
        tracks: Option<u32>,
    },
    /// Every stored session.
    List(JsonArg),
    /// One active session and its tracks.
    Show {
        /// Session id (default: the only active session).
        id: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Activate a stored session.
    Open {
        /// Session id.
        id: String,
    },
    /// Deactivate a session (it stays stored).
    Close {
        /// Session id (default: the only active session).
        id: Option<String>,
    },
    /// Delete a session with its takes.
    Delete {
        /// Session id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum TrackCommand {
    /// Change a track: TRACK is a 1-based index or a name.
    Set(TrackSet),
}

#[derive(Args, Debug)]
struct TrackSet {
    /// Track index (1-based) or name.
    track: String,
    #[command(flatten)]
    session: SessionArg,
    /// New name.
    #[arg(long)]
    name: Option<String>,
    /// Arm for recording.
    #[arg(long, conflicts_with = "disarm")]
    arm: bool,
    /// Disarm.
    #[arg(long)]
    disarm: bool,
    /// Pre-record trim: linear (`1.5`) or dB (`+3dB`).
    #[arg(long, allow_hyphen_values = true)]
    gain: Option<String>,
    /// Fader: linear (`0.8`) or dB (`-6dB`).
    #[arg(long, allow_hyphen_values = true)]
    level: Option<String>,
    /// Pan, −1 (left) … +1 (right).
    #[arg(long, allow_hyphen_values = true)]
    pan: Option<f64>,
    /// Mute.
    #[arg(long, conflicts_with = "unmute")]
    mute: bool,
    /// Unmute.
    #[arg(long)]
    unmute: bool,
    /// Solo.
    #[arg(long, conflicts_with = "unsolo")]
    solo: bool,
    /// Unsolo.
    #[arg(long)]
    unsolo: bool,
    /// Input: a device from `overdub devices`, `Device:N`, or `none`.
    #[arg(long)]
    input: Option<String>,
    /// Monitoring: auto, input or off.
    #[arg(long)]
    monitor: Option<String>,
}

/// A CLI failure: printed as `overdub: <message>`, exit status 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        CliError(error.to_string())
    }
}

/// Parses a level: linear (`0.8`) or decibels (`-6dB`, `+3 dB`).
pub fn parse_level(text: &str) -> Result<f64, CliError> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let value = if let Some(db) = lower.strip_suffix("db") {
        let db: f64 = db
            .trim()
            .parse()
            .map_err(|_| CliError(format!("{text:?} is not a level (try 0.8 or -6dB)")))?;
        10f64.powf(db / 20.0)
    } else {
        trimmed
            .parse()
            .map_err(|_| CliError(format!("{text:?} is not a level (try 0.8 or -6dB)")))?
    };
    Ok(value)
}

/// Parses a position into frames: `48000` (frames), `12.5s` (seconds) or `mm:ss.ms`.
pub fn parse_position(text: &str, sample_rate: u32) -> Result<u64, CliError> {
    let bad = || {
        CliError(format!(
            "{text:?} is not a position (frames, 12.5s or mm:ss.ms)"
        ))
    };
    let text = text.trim();
    let seconds = if let Some(s) = text.strip_suffix('s') {
        s.parse::<f64>().map_err(|_| bad())?
    } else if let Some((minutes, seconds)) = text.split_once(':') {
        let minutes: u64 = minutes.parse().map_err(|_| bad())?;
        let seconds: f64 = seconds.parse().map_err(|_| bad())?;
        if !(0.0..60.0).contains(&seconds) {
            return Err(bad());
        }
        minutes as f64 * 60.0 + seconds
    } else {
        return text.parse::<u64>().map_err(|_| bad());
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(bad());
    }
    Ok((seconds * f64::from(sample_rate)).round() as u64)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Daemon {
        config,
        backend,
        listen,
    } = cli.command
    {
        let options = crate::daemon::DaemonOptions {
            config,
            backend,
            listen,
            data_dir: cli.bus.data_dir.clone(),
            bus: cli.bus.choice(),
        };
        return crate::daemon::run(options)
            .await
            .map_err(|e| CliError(e.to_string()));
    }
    let client = connect(&cli.bus).await?;
    match cli.command {
        Command::Daemon { .. } => unreachable!("handled above"),
        Command::Session(command) => session_command(&client, command).await,
        Command::Track(TrackCommand::Set(set)) => track_set(&client, set).await,
        Command::Record(s) => transport(&client, s, "Record").await,
        Command::Play(s) => transport(&client, s, "Play").await,
        Command::Pause(s) => transport(&client, s, "Pause").await,
        Command::Resume(s) => transport(&client, s, "Resume").await,
        Command::Stop(s) => {
            let path = resolve_session(&client, s.session.session.as_deref()).await?;
            let metrics: HashMap<String, OwnedVariant> =
                client.call(&path, SESSION, "Stop", &()).await?;
            print_dict(&metrics, s.json.json);
            Ok(())
        }
        Command::Seek { position, session } => {
            let path = resolve_session(&client, session.session.as_deref()).await?;
            let rate: u32 = client.get(&path, SESSION, "SampleRate").await?;
            let frame = parse_position(&position, rate)?;
            let () = client.call(&path, SESSION, "Seek", &(frame,)).await?;
            Ok(())
        }
        Command::Status(json) => status(&client, json.json).await,
        Command::Devices(json) => devices(&client, json.json).await,
        Command::Metrics(s) => {
            let path = resolve_session(&client, s.session.session.as_deref()).await?;
            let metrics: HashMap<String, OwnedVariant> =
                client.call(&path, SESSION, "GetMetrics", &()).await?;
            print_dict(&metrics, s.json.json);
            Ok(())
        }
    }
}

async fn connect(bus: &BusArgs) -> Result<Client, CliError> {
    let (config, _) = Config::load(None).map_err(|e| CliError(e.to_string()))?;
    let data_dir =
        default_data_dir(bus.data_dir.as_deref(), &config).map_err(|e| CliError(e.to_string()))?;
    let socket = p2p_socket_path(&data_dir);
    let choice = bus.choice().unwrap_or(BusChoice::Session);
    Ok(Client::connect(&choice, &socket).await?)
}

fn session_id_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The object path of `--session ID`, or of the only active session.
async fn resolve_session(client: &Client, id: Option<&str>) -> Result<String, CliError> {
    let active = client.active_sessions().await?;
    if let Some(id) = id {
        return active
            .iter()
            .find(|p| session_id_of(p.as_str()) == id)
            .map(|p| p.to_string())
            .ok_or_else(|| {
                CliError(format!(
                    "not_found: no active session {id:?} (`overdub session open {id}` activates a stored one)"
                ))
            });
    }
    match active.as_slice() {
        [only] => Ok(only.to_string()),
        [] => Err(CliError(
            "no active session: create one with `overdub session create NAME`".into(),
        )),
        many => Err(CliError(format!(
            "{} sessions are active ({}): choose one with --session ID",
            many.len(),
            many.iter()
                .map(|p| session_id_of(p.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

async fn transport(client: &Client, session: SessionArg, method: &str) -> Result<(), CliError> {
    let path = resolve_session(client, session.session.as_deref()).await?;
    let () = client.call(&path, SESSION, method, &()).await?;
    Ok(())
}

async fn session_command(client: &Client, command: SessionCommand) -> Result<(), CliError> {
    match command {
        SessionCommand::Create { name, tracks } => {
            let mut options: HashMap<&str, Variant> = HashMap::new();
            if let Some(tracks) = tracks {
                options.insert("tracks", Variant::U32(tracks));
            }
            let path: OwnedObjectPath = client.manager("CreateSession", &(name, options)).await?;
            println!("{}", session_id_of(path.as_str()));
            Ok(())
        }
        SessionCommand::List(json) => {
            let sessions = client.stored_sessions().await?;
            let rows: Vec<Json> = sessions.iter().map(dict_to_json).collect();
            if json.json {
                println!("{}", Json::Array(rows));
            } else {
                println!("{:<14} {:<7} {:>6}  NAME", "ID", "ACTIVE", "TRACKS");
                for row in rows {
                    println!(
                        "{:<14} {:<7} {:>6}  {}",
                        row["id"].as_str().unwrap_or(""),
                        if row["active"].as_bool().unwrap_or(false) {
                            "yes"
                        } else {
                            "no"
                        },
                        row["tracks"].as_u64().unwrap_or(0),
                        row["name"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        SessionCommand::Show { id, json } => {
            let path = resolve_session(client, id.as_deref()).await?;
            let session = session_json(client, &path).await?;
            if json.json {
                println!("{session}");
            } else {
                print_session(&session);
            }
            Ok(())
        }
        SessionCommand::Open { id } => {
            let path: OwnedObjectPath = client.manager("OpenSession", &(id,)).await?;
            println!("{}", session_id_of(path.as_str()));
            Ok(())
        }
        SessionCommand::Close { id } => {
            let path = resolve_session(client, id.as_deref()).await?;
            let () = client.call(&path, SESSION, "Close", &()).await?;
            Ok(())
        }
        SessionCommand::Delete { id } => {
            let () = client.manager("DeleteSession", &(id,)).await?;
            Ok(())
        }
    }
}

/// Resolves TRACK (index or name) to its object path.
async fn resolve_track(client: &Client, session: &str, track: &str) -> Result<String, CliError> {
    let tracks: Vec<OwnedObjectPath> = client.get(session, SESSION, "Tracks").await?;
    if let Ok(index) = track.parse::<u32>() {
        let wanted = format!("{session}/track/{index}");
        if tracks.iter().any(|p| p.as_str() == wanted) {
            return Ok(wanted);
        }
    }
    for path in &tracks {
        let name: String = client.get(path, TRACK, "Name").await?;
        if name == track {
            return Ok(path.to_string());
        }
    }
    Err(CliError(format!(
        "not_found: no track {track:?} (give a 1-based index or a name; see `overdub session show`)"
    )))
}

async fn track_set(client: &Client, set: TrackSet) -> Result<(), CliError> {
    let session = resolve_session(client, set.session.session.as_deref()).await?;
    let path = resolve_track(client, &session, &set.track).await?;
    // Parse everything before changing anything.
    let gain = set.gain.as_deref().map(parse_level).transpose()?;
    let level = set.level.as_deref().map(parse_level).transpose()?;
    let flag = |on: bool, off: bool| {
        if on {
            Some(true)
        } else if off {
            Some(false)
        } else {
            None
        }
    };
    let mut changes: HashMap<&str, Variant<'static>> = HashMap::new();
    if let Some(name) = set.name {
        changes.insert("Name", Variant::from(name));
    }
    if let Some(gain) = gain {
        changes.insert("InputGain", Variant::F64(gain));
    }
    if let Some(level) = level {
        changes.insert("Level", Variant::F64(level));
    }
    if let Some(pan) = set.pan {
        changes.insert("Pan", Variant::F64(pan));
    }
    if let Some(input) = set.input {
        changes.insert("Input", Variant::from(input));
    }
    if let Some(monitor) = set.monitor {
        changes.insert("Monitoring", Variant::from(monitor));
    }
    if let Some(muted) = flag(set.mute, set.unmute) {
        changes.insert("Muted", Variant::Bool(muted));
    }
    if let Some(soloed) = flag(set.solo, set.unsolo) {
        changes.insert("Soloed", Variant::Bool(soloed));
    }
    if let Some(armed) = flag(set.arm, set.disarm) {
        changes.insert("Armed", Variant::Bool(armed));
    }
    if changes.is_empty() {
        return Err(CliError(
            "nothing to change: give at least one option (see `overdub track set --help`)".into(),
        ));
    }
    // One call: the daemon checks every value before changing any.
    let () = client.call(&path, TRACK, "Update", &(changes,)).await?;
    Ok(())
}

async fn session_json(client: &Client, path: &str) -> Result<Json, CliError> {
    let id: String = client.get(path, SESSION, "Id").await?;
    let name: String = client.get(path, SESSION, "Name").await?;
    let state: String = client.get(path, SESSION, "State").await?;
    let position: u64 = client.get(path, SESSION, "Position").await?;
    let rate: u32 = client.get(path, SESSION, "SampleRate").await?;
    let tracks: Vec<OwnedObjectPath> = client.get(path, SESSION, "Tracks").await?;
    let mut track_rows = Vec::new();
    for track in &tracks {
        let t = track.as_str();
        track_rows.push(json!({
            "index": client.get::<u32>(t, TRACK, "Index").await?,
            "name": client.get::<String>(t, TRACK, "Name").await?,
            "channels": client.get::<u32>(t, TRACK, "Channels").await?,
            "armed": client.get::<bool>(t, TRACK, "Armed").await?,
            "inputGain": client.get::<f64>(t, TRACK, "InputGain").await?,
            "level": client.get::<f64>(t, TRACK, "Level").await?,
            "pan": client.get::<f64>(t, TRACK, "Pan").await?,
            "muted": client.get::<bool>(t, TRACK, "Muted").await?,
            "soloed": client.get::<bool>(t, TRACK, "Soloed").await?,
            "input": client.get::<String>(t, TRACK, "Input").await?,
            "monitoring": client.get::<String>(t, TRACK, "Monitoring").await?,
        }));
    }
    let seconds_available: f64 = client
        .call(path, SESSION, "GetRecordTimeAvailable", &())
        .await?;
    Ok(json!({
        "id": id,
        "name": name,
        "state": state,
        "position": position,
        "positionSeconds": position as f64 / f64::from(rate.max(1)),
        "sampleRate": rate,
        "recordSecondsAvailable": if seconds_available.is_finite() { json!(seconds_available) } else { Json::Null },
        "tracks": track_rows,
    }))
}

fn print_session(session: &Json) {
    println!(
        "{} {:?}: {} at {:.3} s",
        session["id"].as_str().unwrap_or(""),
        session["name"].as_str().unwrap_or(""),
        session["state"].as_str().unwrap_or(""),
        session["positionSeconds"].as_f64().unwrap_or(0.0)
    );
    if let Some(seconds) = session["recordSecondsAvailable"].as_f64() {
        println!("disk space for {seconds:.0} s of recording of the armed tracks");
    }
    println!(
        "{:>3}  {:<20} {:<5} {:>6} {:>6} {:>5}  {:<5} {:<5} {:<8} INPUT",
        "#", "NAME", "ARMED", "GAIN", "LEVEL", "PAN", "MUTE", "SOLO", "MONITOR"
    );
    for t in session["tracks"].as_array().into_iter().flatten() {
        let yes = |key: &str| {
            if t[key].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "-"
            }
        };
        println!(
            "{:>3}  {:<20} {:<5} {:>6.2} {:>6.2} {:>5.2}  {:<5} {:<5} {:<8} {}",
            t["index"].as_u64().unwrap_or(0),
            t["name"].as_str().unwrap_or(""),
            yes("armed"),
            t["inputGain"].as_f64().unwrap_or(0.0),
            t["level"].as_f64().unwrap_or(0.0),
            t["pan"].as_f64().unwrap_or(0.0),
            yes("muted"),
            yes("soloed"),
            t["monitoring"].as_str().unwrap_or(""),
            t["input"].as_str().unwrap_or("")
        );
    }
}

async fn status(client: &Client, as_json: bool) -> Result<(), CliError> {
    let version: String = client.get(ROOT_PATH, MANAGER, "Version").await?;
    let backend: String = client.get(ROOT_PATH, MANAGER, "Backend").await?;
    let rate: u32 = client.get(ROOT_PATH, MANAGER, "SampleRate").await?;
    let period: u32 = client.get(ROOT_PATH, MANAGER, "BufferSize").await?;
    let environment: String = client.get(ROOT_PATH, MANAGER, "Environment").await?;
    let mut sessions = Vec::new();
    for path in client.active_sessions().await? {
        sessions.push(session_json(client, path.as_str()).await?);
    }
    let status = json!({
        "version": version,
        "backend": backend,
        "sampleRate": rate,
        "bufferSize": period,
        "environment": environment,
        "sessions": sessions,
    });
    if as_json {
        println!("{status}");
    } else {
        let period = match (period, backend.as_str()) {
            (0, "alsa") => "the ALSA device is gone; overdub opens it again when it returns".into(),
            (0, _) => "the audio server is gone; overdub reconnects when it returns".into(),
            (frames, _) => format!("{frames} frames per period"),
        };
        println!("overdub {version}: {backend} graph, {rate} Hz, {period} ({environment})");
        if sessions.is_empty() {
            println!("no active session");
        }
        for session in &sessions {
            println!();
            print_session(session);
        }
    }
    Ok(())
}

async fn devices(client: &Client, as_json: bool) -> Result<(), CliError> {
    let devices: Vec<HashMap<String, OwnedVariant>> = client.manager("ListDevices", &()).await?;
    let rows: Vec<Json> = devices.iter().map(dict_to_json).collect();
    if as_json {
        println!("{}", Json::Array(rows));
    } else {
        for row in rows {
            println!(
                "{:<7} {:>2} ch  {}",
                row["direction"].as_str().unwrap_or(""),
                row["channels"].as_u64().unwrap_or(0),
                row["name"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// Converts an `a{sv}` dictionary of plain values into JSON.
fn dict_to_json(dict: &HashMap<String, OwnedVariant>) -> Json {
    let mut object = serde_json::Map::new();
    for (key, value) in dict {
        object.insert(key.clone(), value_to_json(value));
    }
    Json::Object(object)
}

fn value_to_json(value: &Variant<'_>) -> Json {
    match value {
        Variant::Bool(b) => json!(b),
        Variant::U8(n) => json!(n),
        Variant::U16(n) => json!(n),
        Variant::U32(n) => json!(n),
        Variant::U64(n) => json!(n),
        Variant::I16(n) => json!(n),
        Variant::I32(n) => json!(n),
        Variant::I64(n) => json!(n),
        Variant::F64(n) => json!(n),
        Variant::Str(s) => json!(s.as_str()),
        Variant::ObjectPath(p) => json!(p.as_str()),
        Variant::Variant(inner) => value_to_json(inner),
        other => json!(other.to_string()),
    }
}

fn print_dict(dict: &HashMap<String, OwnedVariant>, as_json: bool) {
    let json = dict_to_json(dict);
    if as_json {
        println!("{json}");
        return;
    }
    let mut keys: Vec<&String> = dict.keys().collect();
    keys.sort();
    for key in keys {
        println!("{key}: {}", json[key.as_str()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_accept_linear_and_decibels() {
        assert_eq!(parse_level("0.8").unwrap(), 0.8);
        assert!((parse_level("-6dB").unwrap() - 0.501_187).abs() < 1e-6);
        assert!((parse_level("+3 dB").unwrap() - 1.412_538).abs() < 1e-6);
        assert_eq!(parse_level("0dB").unwrap(), 1.0);
        assert!(parse_level("loud").is_err());
        assert!(parse_level("dB").is_err());
    }

    #[test]
    fn positions_accept_frames_seconds_and_minutes() {
        assert_eq!(parse_position("48000", 48_000).unwrap(), 48_000);
        assert_eq!(parse_position("12.5s", 48_000).unwrap(), 600_000);
        assert_eq!(parse_position("01:02.5", 48_000).unwrap(), 3_000_000);
        assert!(parse_position("1:75", 48_000).is_err());
        assert!(parse_position("-1s", 48_000).is_err());
        assert!(parse_position("soon", 48_000).is_err());
    }
}
