//! The REST bridge over real loopback sockets, driven with `curl` (a test without curl fails):
//! the multitrack recorder's documented flow, the AudioLab flow, bad input (state read back
//! unchanged), the body limit, the token and the `Origin` check.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value as Json};

/// One HTTP answer.
struct Reply {
    status: u16,
    content_type: String,
    body: Json,
}

impl Reply {
    /// Asserts the status and returns the body.
    fn expect(self, status: u16) -> Json {
        assert_eq!(self.status, status, "answer: {}", self.body);
        self.body
    }

    /// Asserts an error answer with this status and code; returns the message.
    fn expect_error(self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "answer: {}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "error content type {:?}",
            self.content_type
        );
        assert_eq!(self.body["success"], false, "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        let message = self.body["error"]["message"].as_str().unwrap().to_string();
        assert!(!message.is_empty());
        message
    }
}

/// Runs `curl` with `method`, an optional body (sent as JSON) and extra headers.
fn curl(method: &str, url: &str, body: Option<&[u8]>, headers: &[&str]) -> Reply {
    let mut command = Command::new("curl");
    command
        .args(["-s", "-S", "-g", "--max-time", "30", "-X", method])
        .args(["-w", "\n%{http_code}\n%{content_type}"]);
    for header in headers {
        command.args(["-H", header]);
    }
    if body.is_some() {
        command
            .args(["-H", "Content-Type: application/json"])
            .args(["--data-binary", "@-"]);
    }
    let mut child = command
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl must be installed (scripts/install-deps)");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(body) = body {
        stdin.write_all(body).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "curl {method} {url}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parts = text.rsplitn(3, '\n');
    let content_type = parts.next().unwrap().to_string();
    let status: u16 = parts.next().unwrap().parse().unwrap();
    let raw = parts.next().unwrap_or("");
    let body = serde_json::from_str(raw)
        .unwrap_or_else(|e| panic!("{method} {url} answered {status} with non-JSON {raw:?}: {e}"));
    Reply {
        status,
        content_type,
        body,
    }
}

/// A client for one daemon's bridge.
struct Api {
    base: String,
}

impl Api {
    fn of(daemon: &Daemon) -> Api {
        Api {
            base: format!("http://{}", daemon.http_addr()),
        }
    }

    fn get(&self, path: &str) -> Reply {
        curl("GET", &format!("{}{path}", self.base), None, &[])
    }

    fn post(&self, path: &str) -> Reply {
        curl("POST", &format!("{}{path}", self.base), None, &[])
    }

    fn send(&self, method: &str, path: &str, body: &Json) -> Reply {
        let body = body.to_string();
        curl(
            method,
            &format!("{}{path}", self.base),
            Some(body.as_bytes()),
            &[],
        )
    }

    fn send_raw(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        curl(method, &format!("{}{path}", self.base), Some(body), &[])
    }
}

/// Number of stored sessions, read from the database directly.
fn stored_sessions(daemon: &Daemon) -> i64 {
    let db = daemon.database();
    db.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn the_multitrack_recorder_flow_records_three_tracks() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = start_on_private_bus(dir.path());
    let api = Api::of(&daemon);

    let created = api
        .send(
            "POST",
            "/api/v1/multitrack/session",
            &json!({
                "projectId": "proj-42",
                "userId": "user-7",
                "tracks": [
                    {"name": "Vocal", "level": 1.0, "pan": 0.0, "armed": true},
                    {"name": "Guitar", "level": 0.9, "pan": 0.4, "armed": true},
                    {"name": "Bass", "level": 1.2, "pan": -0.5, "armed": true},
                ],
            }),
        )
        .expect(200);
    assert_eq!(created["success"], true);
    let session = &created["session"];
    let id = session["sessionId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 12, "{session}");
    assert_eq!(session["projectId"], "proj-42");
    assert_eq!(session["userId"], "user-7");
    assert_eq!(session["sampleRate"], RATE);
    assert_eq!(session["bufferSize"], PERIOD);
    assert_eq!(session["isRecording"], false);
    let tracks = session["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 3);
    for (n, (name, level, pan)) in [
        ("Vocal", 1.0, 0.0),
        ("Guitar", 0.9, 0.4),
        ("Bass", 1.2, -0.5),
    ]
    .into_iter()
    .enumerate()
    {
        let track = &tracks[n];
        assert_eq!(track["trackId"], format!("track_{}", n + 1));
        assert_eq!(track["name"], name);
        assert_eq!(track["armed"], true);
        assert_eq!(track["level"], level);
        assert_eq!(track["pan"], pan);
        assert_eq!(track["muted"], false);
        assert_eq!(track["soloed"], false);
        assert_eq!(track["inputGain"], 1.0);
    }

    // The same session under the AI prefix, with state and position.
    let shown = api
        .get(&format!("/api/v1/ai/multitrack/session/{id}"))
        .expect(200);
    assert_eq!(shown["session"]["state"], "stopped");
    assert_eq!(shown["session"]["position"], 0);
    assert_eq!(shown["session"]["tracks"], session["tracks"]);

    let started = api
        .post(&format!("/api/v1/multitrack/session/{id}/start"))
        .expect(200);
    assert_eq!(started["success"], true);
    assert_eq!(started["state"], "recording");
    assert_eq!(started["isRecording"], true);
    sleep(0.8);
    let track = api
        .send(
            "PUT",
            &format!("/api/v1/multitrack/session/{id}/track/track_1"),
            &json!({"level": 0.7, "pan": -0.2}),
        )
        .expect(200);
    assert_eq!(track["track"]["trackId"], "track_1");
    assert_eq!(track["track"]["level"], 0.7);
    assert_eq!(track["track"]["pan"], -0.2);
    assert_eq!(track["track"]["name"], "Vocal");
    let shown = api
        .get(&format!("/api/v1/multitrack/session/{id}"))
        .expect(200);
    assert_eq!(shown["session"]["state"], "recording");
    assert_eq!(shown["session"]["isRecording"], true);
    assert!(shown["session"]["position"].as_u64().unwrap() > 0);
    assert_eq!(shown["session"]["tracks"][0]["level"], 0.7);
    assert_eq!(shown["session"]["tracks"][0]["pan"], -0.2);
    sleep(0.8);

    let stopped = api
        .post(&format!("/api/v1/ai/multitrack/session/{id}/stop"))
        .expect(200);
    assert_eq!(stopped["success"], true);
    let metrics = &stopped["metrics"];
    assert_metrics_keys(metrics);
    assert_eq!(metrics["sessionId"], id);
    assert_eq!(metrics["recordedTracks"], 3);
    let duration_ms = metrics["totalDuration"].as_f64().unwrap();
    assert!(
        (1000.0..20_000.0).contains(&duration_ms),
        "recorded {duration_ms} ms for ~1.6 s of rolling"
    );
    let latency = metrics["averageLatency"].as_f64().unwrap();
    assert!((0.0..1000.0).contains(&latency), "latency {latency} ms");
    assert!(metrics["bufferUnderruns"].as_u64().is_some());

    // The takes exist: three complete 24-bit files, as long as the metrics say, carrying their
    // inputs' tones untouched by the fader (recording is pre-fader).
    let takes = daemon.takes();
    assert_eq!(takes.len(), 3, "{takes:?}");
    let mut bytes = 0;
    for take in &takes {
        assert_eq!(take.status, "complete");
        let wav = read_wav(&take.path);
        assert_eq!(wav.spec.sample_rate, RATE);
        assert_eq!(wav.spec.bits_per_sample, 24);
        assert_eq!(wav.frames() as u64, take.frames);
        let recorded_ms = wav.frames() as f64 * 1000.0 / f64::from(RATE);
        assert!(
            (recorded_ms - duration_ms).abs() <= 1000.0 * f64::from(PERIOD) / f64::from(RATE),
            "take of {recorded_ms} ms, metrics {duration_ms} ms"
        );
        let channel = default_channel(take.track_index);
        let k = find_offset(&[(channel, &wav.samples[..])], 0)
            .unwrap_or_else(|| panic!("track {} does not start with its tone", take.track_index));
        assert_eq!(
            matching_run(channel, &wav.samples, 0, k),
            wav.frames(),
            "track {}: one continuous stretch of its tone",
            take.track_index
        );
        bytes += wav.frames() as u64 * 3;
    }
    assert_eq!(metrics["dataReceived"], bytes);

    // Delete: the session, its rows and its files go.
    let deleted = api
        .send(
            "DELETE",
            &format!("/api/v1/multitrack/session/{id}"),
            &json!({}),
        )
        .expect(200);
    assert_eq!(deleted["success"], true);
    api.get(&format!("/api/v1/multitrack/session/{id}"))
        .expect_error(404, "not_found");
    assert!(!daemon.takes_dir(&id).exists());
    assert_eq!(stored_sessions(&daemon), 0);
}

#[test]
fn a_create_with_a_refused_track_value_leaves_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = start_on_private_bus(dir.path());
    let api = Api::of(&daemon);

    let message = api
        .send(
            "POST",
            "/api/v1/multitrack/session",
            &json!({
                "projectId": "p",
                "userId": "u",
                "tracks": [{"name": "Keys", "pan": 0.5}, {"level": 2.5}],
            }),
        )
        .expect_error(400, "invalid_argument");
    assert!(
        message.contains("tracks[1]") && message.contains("level"),
        "{message}"
    );
    assert_eq!(stored_sessions(&daemon), 0);
    assert_eq!(api.get("/health").expect(200)["active_sessions"], 0);
    assert!(
        !daemon.data_dir.join("sessions").exists()
            || std::fs::read_dir(daemon.data_dir.join("sessions"))
                .unwrap()
                .next()
                .is_none(),
        "no session folder left behind"
    );

    // Without tracks: the defaults (4 tracks, the first 2 armed).
    let created = api
        .send(
            "POST",
            "/api/v1/multitrack/session",
            &json!({"projectId": "p", "userId": "u"}),
        )
        .expect(200);
    let armed: Vec<bool> = created["session"]["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["armed"].as_bool().unwrap())
        .collect();
    assert_eq!(armed, [true, true, false, false]);
    assert_eq!(stored_sessions(&daemon), 1);
}

#[test]
fn the_audiolab_flow_arms_records_and_plays_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = start_on_private_bus(dir.path());
    let api = Api::of(&daemon);

    let health = api.get("/health").expect(200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["services"]["database"], "connected");
    assert_eq!(health["services"]["recording_system"], "virtual");
    assert_eq!(health["services"]["overdubbing_capable"], true);
    let environment = health["environment"]["type"].as_str().unwrap();
    assert!(
        ["desktop", "cloud", "container", "ci"].contains(&environment),
        "{health}"
    );
    assert_eq!(health["environment"]["has_audio_hardware"], false);
    assert_eq!(health["environment"]["is_cloud_deployment"], false);

    let devices = api.get("/api/audio/devices").expect(200);
    let list = devices["devices"].as_array().unwrap();
    let mic = list
        .iter()
        .find(|d| d["name"] == "Virtual Microphone 1")
        .unwrap_or_else(|| panic!("no Virtual Microphone 1 in {devices}"));
    assert_eq!(mic["channels"], 1);
    assert_eq!(mic["direction"], "input");
    let mic_channel = mic["first_channel"].as_u64().unwrap() as usize;

    // A project of three disarmed tracks.
    let created = api
        .send(
            "POST",
            "/api/v1/multitrack/session",
            &json!({
                "projectId": "lab",
                "userId": "u",
                "tracks": [{"armed": false}, {"armed": false}, {"armed": false}],
            }),
        )
        .expect(200);
    let project = created["session"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();

    let message = api
        .post("/api/audio/tracks/track_3/record/start")
        .expect_error(409, "invalid_state");
    assert!(message.contains("not armed"), "{message}");
    let enabled = api
        .send(
            "POST",
            "/api/audio/tracks/track_3/record/enable",
            &json!({"device": "Virtual Microphone 1"}),
        )
        .expect(200);
    assert_eq!(enabled["track"]["track_id"], "track_3");
    assert_eq!(enabled["track"]["armed"], true);
    assert_eq!(enabled["track"]["input"], "Virtual Microphone 1");

    let active = api.get("/api/audio/recording/active").expect(200);
    assert_eq!(active["active"], false);
    assert_eq!(active["recordings"], json!([]));

    let started = api
        .post("/api/audio/tracks/track_3/record/start")
        .expect(200);
    assert_eq!(started["session_id"], project.as_str());
    assert_eq!(started["track_id"], "track_3");
    let take = started["take_id"].as_i64().unwrap();
    let active = api.get("/api/audio/recording/active").expect(200);
    assert_eq!(active["active"], true);
    assert_eq!(active["recordings"][0]["session_id"], project.as_str());
    assert_eq!(active["recordings"][0]["tracks"], json!(["track_3"]));
    assert_eq!(active["recordings"][0]["takes"][0]["take_id"], take);
    let status = api
        .get(&format!("/api/audio/projects/{project}/playback/status"))
        .expect(200);
    assert_eq!(status["state"], "recording");
    assert_eq!(status["is_recording"], true);
    sleep(1.0);

    api.post(&format!(
        "/api/audio/tracks/track_3/record/stop/{}",
        take + 1000
    ))
    .expect_error(404, "not_found");
    let stopped = api
        .post(&format!(
            "/api/audio/tracks/{project}:track_3/record/stop/{take}"
        ))
        .expect(200);
    assert_eq!(stopped["take"]["take_id"], take);
    assert_eq!(stopped["take"]["status"], "complete");
    assert_eq!(stopped["metrics"]["recordedTracks"], 1);
    let frames = stopped["take"]["frames"].as_u64().unwrap();
    assert!(frames > u64::from(RATE) / 2, "{stopped}");
    let path = stopped["take"]["path"].as_str().unwrap();
    let wav = read_wav(Path::new(path));
    assert_eq!(wav.frames() as u64, frames);
    let k = find_offset(&[(mic_channel, &wav.samples[..])], 0)
        .expect("the take carries Virtual Microphone 1's tone");
    assert_eq!(matching_run(mic_channel, &wav.samples, 0, k), wav.frames());
    api.post(&format!("/api/audio/tracks/track_3/record/stop/{take}"))
        .expect_error(409, "invalid_state");
    assert_eq!(
        api.get("/api/audio/recording/active").expect(200)["active"],
        false
    );

    // Playback.
    let playback = format!("/api/audio/projects/{project}/playback");
    let status = api.get(&format!("{playback}/status")).expect(200);
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["is_playing"], false);
    assert_eq!(status["is_recording"], false);
    assert_eq!(status["sample_rate"], RATE);
    let sought = api
        .post(&format!("{playback}/seek?position=0.5"))
        .expect(200);
    assert_eq!(sought["position_frames"], RATE / 2);
    assert_eq!(sought["position"], 0.5);
    let sought = api
        .send("POST", &format!("{playback}/seek"), &json!({"frame": 480}))
        .expect(200);
    assert_eq!(sought["position_frames"], 480);
    let loaded = api.post(&format!("{playback}/load")).expect(200);
    assert_eq!(loaded["session_id"], project.as_str());
    assert_eq!(
        api.post(&format!("{playback}/play")).expect(200)["state"],
        "playing"
    );
    let paused = api.post(&format!("{playback}/pause")).expect(200);
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["is_paused"], true);
    assert_eq!(
        api.post(&format!("{playback}/play")).expect(200)["state"],
        "playing"
    );
    let stopped = api.post(&format!("{playback}/stop")).expect(200);
    assert_eq!(stopped["state"], "stopped");
    assert!(stopped["metrics"].is_object(), "{stopped}");

    // Mixer routes, read back through the status.
    let track = api
        .post("/api/audio/tracks/track_2/volume?volume=0.8")
        .expect(200);
    assert_eq!(track["track"]["volume"], 0.8);
    api.post("/api/audio/tracks/track_2/mute?muted=true")
        .expect(200);
    api.post(&format!(
        "/api/audio/tracks/{project}:track_1/solo?soloed=true"
    ))
    .expect(200);
    let status = api.get(&format!("{playback}/status")).expect(200);
    assert_eq!(status["tracks"][1]["volume"], 0.8);
    assert_eq!(status["tracks"][1]["muted"], true);
    assert_eq!(status["tracks"][0]["soloed"], true);
    assert_eq!(status["tracks"][0]["muted"], false);

    // With two active sessions a bare track id is ambiguous; the qualified form is not.
    api.send(
        "POST",
        "/api/v1/multitrack/session",
        &json!({"projectId": "other", "userId": "u"}),
    )
    .expect(200);
    let message = api
        .post("/api/audio/tracks/track_1/mute?muted=true")
        .expect_error(400, "invalid_argument");
    assert!(message.contains("SESSION_ID:track_1"), "{message}");
    api.post(&format!(
        "/api/audio/tracks/{project}:track_1/mute?muted=true"
    ))
    .expect(200);
    assert_eq!(
        api.get(&format!("{playback}/status")).expect(200)["tracks"][0]["muted"],
        true
    );
    assert_eq!(api.get("/health").expect(200)["active_sessions"], 2);
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = start_on_private_bus(dir.path());
    let api = Api::of(&daemon);
    let created = api
        .send(
            "POST",
            "/api/v1/multitrack/session",
            &json!({"projectId": "p", "userId": "u", "tracks": [{"level": 0.5, "pan": 0.25}, {}]}),
        )
        .expect(200);
    let id = created["session"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let session = format!("/api/v1/multitrack/session/{id}");
    let track_1 = format!("{session}/track/track_1");
    let before = api.get(&session).expect(200)["session"].clone();
    let unchanged = || {
        let now = api.get(&session).expect(200);
        assert_eq!(now["session"]["tracks"], before["tracks"], "state changed");
        assert_eq!(now["session"]["state"], "stopped");
    };

    // Malformed JSON, wrong types, missing fields.
    let message = api
        .send_raw(
            "POST",
            "/api/v1/multitrack/session",
            b"{\"projectId\": \"p\",",
        )
        .expect_error(400, "invalid_argument");
    assert!(message.contains("malformed JSON"), "{message}");
    let message = api
        .send_raw("PUT", &track_1, b"{\"level\": 0.9, \"pan\": }")
        .expect_error(400, "invalid_argument");
    assert!(message.contains("malformed JSON"), "{message}");
    let message = api
        .send("PUT", &track_1, &json!({"level": "loud"}))
        .expect_error(400, "invalid_argument");
    assert!(message.contains("invalid type"), "{message}");
    api.send("PUT", &track_1, &json!({"muted": "yes"}))
        .expect_error(400, "invalid_argument");
    api.send("PUT", &track_1, &json!([1, 2]))
        .expect_error(400, "invalid_argument");
    let message = api
        .send(
            "POST",
            "/api/v1/multitrack/session",
            &json!({"projectId": "p"}),
        )
        .expect_error(400, "invalid_argument");
    assert!(message.contains("userId"), "{message}");
    api.send(
        "POST",
        "/api/v1/multitrack/session",
        &json!({"projectId": "p", "userId": "u", "tracks": "four"}),
    )
    .expect_error(400, "invalid_argument");
    api.send_raw("PUT", &track_1, b"")
        .expect_error(400, "invalid_argument");
    let message = api
        .send("PUT", &track_1, &json!({"levle": 0.1}))
        .expect_error(400, "invalid_argument");
    assert!(message.contains("nothing to change"), "{message}");
    unchanged();

    // Out of range, alone or next to a valid value: nothing changes.
    for body in [
        json!({"level": 2.5}),
        json!({"pan": -1.5}),
        json!({"inputGain": 9}),
        json!({"level": 0.3, "pan": 7}),
        json!({"name": ""}),
        json!({"name": "x".repeat(500)}),
        json!({"monitoring": "loud"}),
    ] {
        let message = api
            .send("PUT", &track_1, &body)
            .expect_error(400, "invalid_argument");
        assert!(!message.contains("tracks["), "{message}");
    }
    api.post("/api/audio/tracks/track_1/volume?volume=3")
        .expect_error(400, "invalid_argument");
    api.post("/api/audio/tracks/track_1/volume?volume=abc")
        .expect_error(400, "invalid_argument");
    api.post("/api/audio/tracks/track_1/volume")
        .expect_error(400, "invalid_argument");
    api.post("/api/audio/tracks/track_1/mute?muted=maybe")
        .expect_error(400, "invalid_argument");
    unchanged();

    // Unknown ids.
    api.get("/api/v1/multitrack/session/000000000000")
        .expect_error(404, "not_found");
    api.post("/api/v1/multitrack/session/000000000000/start")
        .expect_error(404, "not_found");
    api.send(
        "PUT",
        "/api/v1/multitrack/session/000000000000/track/track_1",
        &json!({"level": 1.0}),
    )
    .expect_error(404, "not_found");
    api.send(
        "PUT",
        &format!("{session}/track/track_9"),
        &json!({"level": 1.0}),
    )
    .expect_error(404, "not_found");
    let message = api
        .send(
            "PUT",
            &format!("{session}/track/vocals"),
            &json!({"level": 1.0}),
        )
        .expect_error(400, "invalid_argument");
    assert!(message.contains("track_N"), "{message}");
    api.post("/api/audio/tracks/track_9/mute?muted=true")
        .expect_error(404, "not_found");
    api.post("/api/audio/tracks/000000000000:track_1/mute?muted=true")
        .expect_error(404, "not_found");
    let message = api
        .post("/api/audio/tracks/track_1/record/stop/notanumber")
        .expect_error(400, "invalid_argument");
    assert!(message.contains("take id"), "{message}");
    api.post("/api/audio/projects/000000000000/playback/load")
        .expect_error(404, "not_found");
    api.get("/api/audio/projects/000000000000/playback/status")
        .expect_error(404, "not_found");
    api.send(
        "DELETE",
        "/api/v1/multitrack/session/000000000000",
        &json!({}),
    )
    .expect_error(404, "not_found");

    // Seek: a position is required, non-negative and finite.
    let seek = format!("/api/audio/projects/{id}/playback/seek");
    api.post(&seek).expect_error(400, "invalid_argument");
    api.post(&format!("{seek}?position=-1"))
        .expect_error(400, "invalid_argument");
    api.send("POST", &seek, &json!({"position": "soon"}))
        .expect_error(400, "invalid_argument");
    api.send("POST", &seek, &json!({"position": 1.0, "frame": 5}))
        .expect_error(400, "invalid_argument");
    assert_eq!(api.get(&session).expect(200)["session"]["position"], 0);

    // Wrong state: pausing or stopping-by-take a stopped session.
    api.post(&format!("{session}/pause"))
        .expect_error(409, "invalid_state");
    unchanged();

    // Unknown routes and methods, and the removed export route, answer JSON.
    api.get("/api/v1/nothing/here")
        .expect_error(404, "not_found");
    api.post(&format!("{session}/export"))
        .expect_error(404, "not_found");
    let reply = api.get("/api/v1/multitrack/session");
    assert_eq!(reply.status, 405, "{}", reply.body);
    assert_eq!(reply.body["success"], false);

    // An oversize body: 413 with a JSON error, and the session is still there, unchanged.
    let big = format!(
        "{{\"name\": \"{}\", \"level\": 0.1}}",
        "x".repeat(200 * 1024)
    );
    let message = api
        .send_raw("PUT", &track_1, big.as_bytes())
        .expect_error(413, "invalid_argument");
    assert!(message.contains("max_body_bytes"), "{message}");
    unchanged();
}

/// Spawns a daemon with extra `[http]` lines, environment and arguments; returns it once its
/// bridge is listening, with the bridge's address.
fn spawn_custom(
    dir: &Path,
    http: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Bus, Daemon, std::net::SocketAddr) {
    let bus = Bus::start();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = write_config(dir, &Settings::default());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(http);
    std::fs::write(&config, text).unwrap();
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(overdub_bin());
    command
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .arg("--bus-address")
        .arg(&bus.address)
        .args(args)
        .env_remove("OVERDUB_TOKEN")
        .envs(env.iter().copied())
        .env("OVERDUB_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let child = command.spawn().unwrap();
    let daemon = Daemon::adopt(child, Reach::Bus(bus.address.clone()), &data, config);
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find(|l| l.contains("bridge listening"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
        {
            break addr.parse::<std::net::SocketAddr>().unwrap();
        }
        assert!(Instant::now() < deadline, "bridge not listening:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    daemon.wait_ready();
    (bus, daemon, addr)
}

#[test]
fn a_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, _daemon, addr) = spawn_custom(dir.path(), "token = \"s3cret-token\"\n", &[], &[]);
    let url = format!("http://{addr}/api/audio/devices");
    let message = curl("GET", &url, None, &[]).expect_error(401, "unauthorized");
    assert!(message.contains("token"), "{message}");
    curl("GET", &url, None, &["Authorization: Bearer wrong-token!"])
        .expect_error(401, "unauthorized");
    curl("GET", &format!("{url}?token=s3cret-tokeX"), None, &[]).expect_error(401, "unauthorized");
    curl("GET", &format!("http://{addr}/no/such/route"), None, &[])
        .expect_error(401, "unauthorized");
    let ok = curl("GET", &url, None, &["Authorization: Bearer s3cret-token"]).expect(200);
    assert_eq!(ok["success"], true);
    curl("GET", &format!("{url}?token=s3cret-token"), None, &[]).expect(200);
    // A query token next to the route's own arguments.
    curl(
        "POST",
        &format!("http://{addr}/api/audio/tracks/track_1/volume?token=s3cret-token&volume=0.5"),
        None,
        &[],
    )
    .expect_error(404, "not_found");
    // A refused request changed nothing: no session was created.
    curl(
        "POST",
        &format!("http://{addr}/api/v1/multitrack/session"),
        Some(br#"{"projectId":"p","userId":"u"}"#),
        &[],
    )
    .expect_error(401, "unauthorized");
    let health = curl(
        "GET",
        &format!("http://{addr}/health?token=s3cret-token"),
        None,
        &[],
    )
    .expect(200);
    assert_eq!(health["active_sessions"], 0);
}

#[test]
fn a_non_loopback_listen_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Settings::default());
    let mut child: Child = Command::new(overdub_bin())
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "0.0.0.0:0"])
        .env_remove("OVERDUB_TOKEN")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started on 0.0.0.0 without a token");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0") && stderr.contains("OVERDUB_TOKEN"),
        "{stderr}"
    );

    // With OVERDUB_TOKEN it starts and demands the token.
    let (_bus, _daemon, addr) = spawn_custom(
        &dir.path().join("with-token"),
        "",
        &[("OVERDUB_TOKEN", "env-token-123")],
        &["--listen", "0.0.0.0:0"],
    );
    assert!(addr.ip().is_unspecified(), "{addr}");
    let url = format!("http://127.0.0.1:{}/health", addr.port());
    curl("GET", &url, None, &[]).expect_error(401, "unauthorized");
    let health = curl("GET", &url, None, &["Authorization: Bearer env-token-123"]).expect(200);
    assert_eq!(health["status"], "healthy");
}

#[test]
fn a_disallowed_origin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, _daemon, addr) = spawn_custom(
        dir.path(),
        "allowed_origins = [\"http://studio.example\"]\n",
        &[],
        &[],
    );
    let url = format!("http://{addr}/api/audio/devices");
    let message =
        curl("GET", &url, None, &["Origin: http://evil.example"]).expect_error(403, "unauthorized");
    assert!(message.contains("Origin"), "{message}");
    curl(
        "POST",
        &format!("http://{addr}/api/v1/multitrack/session"),
        Some(br#"{"projectId":"p","userId":"u"}"#),
        &["Origin: http://evil.example"],
    )
    .expect_error(403, "unauthorized");
    curl("GET", &url, None, &["Origin: http://studio.example"]).expect(200);
    // No Origin: not a browser.
    curl("GET", &url, None, &[]).expect(200);
    let health = curl("GET", &format!("http://{addr}/health"), None, &[]).expect(200);
    assert_eq!(
        health["active_sessions"], 0,
        "the refused create did nothing"
    );
}
