//! The WebSocket bridge against the real daemon on loopback (docs/protocol.md): control round
//! trips with the state read back (also through the CLI), position and meter push rates, a
//! client that stops reading (bounded memory, lost events counted and reported to it), 100
//! concurrent clients, bad input and every limit.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long a test waits for any one frame before failing.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

struct Client<S> {
    ws: WebSocketStream<S>,
    next_id: u64,
    /// Pushes that arrived while waiting for an answer, returned first by `next`.
    held: std::collections::VecDeque<Json>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send_json(&mut self, value: Json) {
        self.ws
            .send(Message::Text(value.to_string().into()))
            .await
            .unwrap();
    }

    /// The next text frame as JSON (pings and pongs skipped); `None` on close.
    async fn next(&mut self) -> Option<Json> {
        if let Some(frame) = self.held.pop_front() {
            return Some(frame);
        }
        self.receive().await
    }

    /// The next text frame from the socket itself.
    async fn receive(&mut self) -> Option<Json> {
        loop {
            let frame = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("no frame from the daemon in time")?;
            match frame.unwrap() {
                Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
                Message::Close(_) => return None,
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Sends a control command and returns its `reply` or `error` frame (pushes held).
    async fn call(&mut self, command: &str, data: Json) -> Json {
        self.next_id += 1;
        let id = format!("c{}", self.next_id);
        self.send_json(json!({"type": "control", "command": command, "id": id, "data": data}))
            .await;
        self.answer(&id).await
    }

    /// The `reply` or `error` frame with this id, skipping pushes.
    async fn answer(&mut self, id: &str) -> Json {
        loop {
            let frame = self
                .receive()
                .await
                .expect("connection closed before the answer");
            if (frame["type"] == "reply" || frame["type"] == "error") && frame["id"] == id {
                return frame;
            }
            self.held.push_back(frame);
        }
    }

    /// A command that must succeed; returns its `data`.
    async fn ok(&mut self, command: &str, data: Json) -> Json {
        let frame = self.call(command, data.clone()).await;
        assert_eq!(frame["type"], "reply", "{command} {data}: {frame}");
        frame["data"].clone()
    }

    /// A command that must fail with `code`; returns the error frame.
    async fn fails(&mut self, command: &str, data: Json, code: &str) -> Json {
        let frame = self.call(command, data.clone()).await;
        assert_eq!(frame["type"], "error", "{command} {data}: {frame}");
        assert_eq!(frame["code"], code, "{command} {data}: {frame}");
        assert!(!frame["message"].as_str().unwrap().is_empty());
        frame
    }

    async fn subscribe(&mut self, request: Json) -> Json {
        self.next_id += 1;
        let id = format!("s{}", self.next_id);
        let mut request = request;
        request["type"] = json!("subscribe");
        request["id"] = json!(id);
        self.send_json(request).await;
        let frame = self.answer(&id).await;
        assert_eq!(frame["type"], "reply", "{frame}");
        frame["data"].clone()
    }
}

type TcpClient = Client<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, path: &str) -> TcpClient {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("connecting to {path}: {e}"));
    Client {
        ws,
        next_id: 0,
        held: Default::default(),
    }
}

/// A daemon whose `[http]` section also holds `extra` (the harness writes only `listen`).
/// Its log goes where [`Daemon::adopt`] reads it, so [`Daemon::http_addr`] works.
fn daemon_with_http(dir: &Path, extra: &str) -> (Bus, Daemon) {
    let bus = Bus::start();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = write_config(dir, &Settings::default());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(data.join("no-log")).unwrap();
    let child = Command::new(overdub_bin())
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .arg("--bus-address")
        .arg(&bus.address)
        .env("OVERDUB_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let daemon = Daemon::adopt(child, Reach::Bus(bus.address.clone()), &data, config);
    daemon.wait_ready();
    (bus, daemon)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread")]
async fn control_round_trips_change_the_state_the_daemon_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = start_on_private_bus(dir.path());
    let addr = daemon.http_addr();
    let mut ws = connect(addr, "/ws").await;

    let info = ws.ok("get_info", json!(null)).await;
    assert_eq!(info["sampleRate"], RATE);
    assert_eq!(info["backend"], "virtual");

    let session = ws
        .ok(
            "create_session",
            json!({"name": "ws take", "tracks": 3, "projectId": "p1"}),
        )
        .await;
    let id = session["sessionId"].as_str().unwrap().to_string();
    assert_eq!(session["projectId"], "p1");
    assert_eq!(session["state"], "stopped");
    assert_eq!(session["isRecording"], false);
    let tracks = session["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 3);
    assert_eq!(tracks[2]["trackId"], "track_3");
    assert_eq!(tracks[2]["armed"], false);

    let track = ws
        .ok(
            "set_track",
            json!({"sessionId": id, "trackId": "track_3", "armed": true, "level": 0.7, "pan": -0.2}),
        )
        .await;
    assert_eq!(track["armed"], true);
    assert_eq!(track["level"], 0.7);
    let read = ws
        .ok("get_track", json!({"sessionId": id, "trackId": "track_3"}))
        .await;
    assert_eq!(read, track);
    // The same change seen through D-Bus by the CLI.
    let shown = daemon.cli_json(&["session", "show", &id, "--json"]);
    assert_eq!(shown["tracks"][2]["armed"], true);
    assert_eq!(shown["tracks"][2]["level"], 0.7);

    let recording = ws.ok("record", json!({"sessionId": id})).await;
    assert_eq!(recording["state"], "recording");
    let read = ws.ok("get_session", json!({"sessionId": id})).await;
    assert_eq!(read["state"], "recording");
    assert_eq!(read["isRecording"], true);
    assert_eq!(
        daemon.cli_json(&["status", "--json"])["sessions"][0]["state"],
        "recording"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stopped = ws.ok("stop", json!({"sessionId": id})).await;
    assert_eq!(stopped["state"], "stopped");
    let metrics = &stopped["metrics"];
    assert_eq!(metrics["sessionId"], id.as_str());
    assert_eq!(metrics["recordedTracks"], 3, "{metrics}");
    let duration = metrics["totalDuration"].as_f64().unwrap();
    assert!((300.0..5000.0).contains(&duration), "{metrics}");
    assert!(metrics["dataReceived"].as_u64().unwrap() > 0, "{metrics}");
    assert_eq!(
        ws.ok("get_metrics", json!({"sessionId": id})).await,
        *metrics
    );
    assert_eq!(
        daemon.cli_json(&["status", "--json"])["sessions"][0]["state"],
        "stopped"
    );
    let takes = daemon.takes();
    assert_eq!(takes.len(), 3);
    assert!(takes.iter().all(|t| t.status == "complete" && t.frames > 0));

    // The alias binds the connection: commands without sessionId act on that session.
    let mut bound = connect(addr, &format!("/ws/audio/{id}")).await;
    assert_eq!(
        bound.ok("get_session", json!({})).await["sessionId"],
        id.as_str()
    );
    assert_eq!(bound.ok("play", json!(null)).await["state"], "playing");
    assert_eq!(
        ws.ok("get_session", json!({"sessionId": id})).await["state"],
        "playing"
    );
    let seek = bound.fails("seek", json!({}), "invalid_argument").await;
    assert!(
        seek["message"].as_str().unwrap().contains("frame"),
        "{seek}"
    );
    assert_eq!(bound.ok("stop", json!(null)).await["state"], "stopped");
    assert_eq!(
        bound.ok("seek", json!({"seconds": 1.5})).await["position"],
        72_000
    );
    let meters = bound.ok("get_meters", json!(null)).await;
    assert_eq!(meters["tracks"].as_array().unwrap().len(), 3);

    let added = ws
        .ok("add_track", json!({"sessionId": id, "name": "Vox"}))
        .await;
    assert_eq!(added["trackId"], "track_4");
    ws.ok(
        "remove_track",
        json!({"sessionId": id, "trackId": "track_4"}),
    )
    .await;
    ws.fails(
        "get_track",
        json!({"sessionId": id, "trackId": "track_4"}),
        "not_found",
    )
    .await;
    let list = ws.ok("list_sessions", json!(null)).await;
    assert!(list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["sessionId"] == id.as_str() && s["active"] == true));

    // An alias naming a session that is not active is refused before the upgrade.
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws/audio/nosuchsession")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404);
            let body: Json = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "not_found");
        }
        other => panic!("expected a 404 refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn position_is_pushed_every_50_ms_while_rolling_and_meters_at_the_asked_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = start_on_private_bus(dir.path());
    let addr = daemon.http_addr();
    let mut ws = connect(addr, "/ws").await;
    let id = ws
        .ok("create_session", json!({"name": "pos", "tracks": 2}))
        .await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let sub = ws
        .subscribe(json!({"topics": ["position", "transport"]}))
        .await;
    assert_eq!(sub["topics"], json!(["position", "transport"]));

    // Stopped: no position at all.
    let quiet_until = Instant::now() + Duration::from_millis(400);
    if let Ok(frame) = tokio::time::timeout_at(quiet_until.into(), ws.next()).await {
        panic!("a push while stopped: {frame:?}");
    }

    ws.ok("play", json!({"sessionId": id})).await;
    let mut arrivals = Vec::new();
    let mut frames = Vec::new();
    let mut transport_seen = false;
    let until = Instant::now() + Duration::from_millis(1300);
    while Instant::now() < until {
        let frame = ws.next().await.unwrap();
        match frame["type"].as_str().unwrap() {
            "position" => {
                assert_eq!(frame["sessionId"], id.as_str());
                assert_eq!(frame["state"], "playing");
                arrivals.push(Instant::now());
                frames.push(frame["position"].as_u64().unwrap());
            }
            "transport" => {
                assert_eq!(frame["state"], "playing");
                transport_seen = true;
            }
            other => panic!("unexpected push {other}: {frame}"),
        }
    }
    assert!(transport_seen, "no transport push for play");
    // A late tick may repeat a position; positions never go back and do move on.
    assert!(
        frames.windows(2).all(|w| w[1] >= w[0]) && frames.last() > frames.first(),
        "positions not increasing: {frames:?}"
    );
    let (skip_first, n) = (1, arrivals.len());
    assert!(n > 10, "only {n} position pushes in 1.3 s");
    let mean = (arrivals[n - 1] - arrivals[skip_first]).as_secs_f64() * 1000.0
        / (n - 1 - skip_first) as f64;
    assert!(
        (35.0..=65.0).contains(&mean),
        "mean position interval {mean:.1} ms"
    );
    // Frames advance at the sample rate: ~2400 frames per 50 ms push.
    let per_push = (frames[n - 1] - frames[skip_first]) as f64 / (n - 1 - skip_first) as f64;
    assert!(
        (1200.0..=3600.0).contains(&per_push),
        "{per_push} frames per push"
    );

    ws.ok("stop", json!({"sessionId": id})).await;
    // Whatever was in flight at the stop has arrived after 200 ms; then nothing more.
    let settle = Instant::now() + Duration::from_millis(200);
    while tokio::time::timeout_at(settle.into(), ws.next())
        .await
        .is_ok()
    {}
    let quiet_until = Instant::now() + Duration::from_millis(500);
    while let Ok(frame) = tokio::time::timeout_at(quiet_until.into(), ws.next()).await {
        let frame = frame.unwrap();
        assert_ne!(
            frame["type"], "position",
            "position pushed while stopped: {frame}"
        );
    }

    // Meters at 20 Hz (they flow whether or not the transport rolls).
    let mut meters = connect(addr, "/ws").await;
    let sub = meters
        .subscribe(json!({"topics": ["meters"], "meterRateHz": 20, "sessionId": id}))
        .await;
    assert_eq!(sub["meterRateHz"], 20.0);
    let start = Instant::now();
    let mut count = 0;
    while start.elapsed() < Duration::from_secs(2) {
        let frame = meters.next().await.unwrap();
        assert_eq!(frame["type"], "meters", "{frame}");
        let tracks = frame["tracks"].as_array().unwrap();
        assert_eq!(tracks.len(), 2);
        assert_eq!(tracks[0]["trackId"], "track_1");
        assert!(tracks[0]["peak"].as_f64().unwrap() <= 0.0);
        count += 1;
    }
    assert!(
        (28..=52).contains(&count),
        "{count} meter pushes in 2 s at 20 Hz"
    );

    // A rate above the cap is capped at 60 Hz; unsubscribing stops the pushes.
    let sub = meters
        .subscribe(json!({"topics": ["meters"], "meterRateHz": 500}))
        .await;
    assert_eq!(sub["meterRateHz"], 60.0);
    meters
        .send_json(json!({"type": "unsubscribe", "id": "u", "topics": ["meters"]}))
        .await;
    let answer = meters.answer("u").await;
    assert_eq!(answer["data"]["topics"], json!([]));
    let settle = Instant::now() + Duration::from_millis(200);
    while tokio::time::timeout_at(settle.into(), meters.next())
        .await
        .is_ok()
    {}
    let quiet = tokio::time::timeout(Duration::from_millis(400), meters.next()).await;
    assert!(quiet.is_err(), "pushes after unsubscribe: {quiet:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_costs_bounded_memory_loses_events_and_is_told() {
    // No command limit here: the flooders must outrun the slow client's whole path.
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = daemon_with_http(dir.path(), "commands_per_second = 100000\n");
    let addr = daemon.http_addr();
    let mut control = connect(addr, "/ws").await;
    let id = control
        .ok("create_session", json!({"name": "slow", "tracks": 64}))
        .await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();

    // The slow client: a tiny receive buffer, subscribed to everything at the highest rate.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    let mut slow = Client {
        ws,
        next_id: 0,
        held: Default::default(),
    };
    slow.subscribe(json!({
        "topics": ["position", "meters", "transport", "track", "take", "system"],
        "meterRateHz": 60,
    }))
    .await;
    control.ok("play", json!({"sessionId": id})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(daemon.pid());

    // The slow client reads nothing while other clients make TRACK_CHANGES track changes (50
    // commands in flight each); they are answered all along. On its way to the slow client
    // an event can wait only in the daemon's bounded queue (256 events), one batch of it in
    // the WebSocket writer, the kernel's send buffer (at most bridge::SEND_BUFFER_BYTES) and
    // the client's 4 KiB receive buffer, which the 64-track meters at 60 Hz help fill: about
    // a thousand track events (972 of 1200 got through when measured). So 2400 changes
    // overflow the queue, and the loss is reported.
    const FLOODERS: u32 = 4;
    const TRACK_CHANGES: u32 = 2400;
    let mut flooders = Vec::new();
    for k in 0..FLOODERS {
        let id = id.clone();
        flooders.push(tokio::spawn(async move {
            let mut ws = connect(addr, "/ws").await;
            let mut i = 0u32;
            while i < TRACK_CHANGES / FLOODERS {
                for _ in 0..50 {
                    i += 1;
                    let level = f64::from(i % 100) / 100.0;
                    ws.send_json(json!({
                        "type": "control",
                        "command": "set_track",
                        "id": i,
                        "data": {"sessionId": id, "trackId": format!("track_{}", k + 1), "level": level},
                    }))
                    .await;
                }
                for _ in 0..50 {
                    let frame = ws.next().await.expect("a flooder was disconnected");
                    assert_eq!(frame["type"], "reply", "{frame}");
                }
            }
        }));
    }
    for flooder in flooders {
        flooder.await.unwrap();
    }
    let after = rss_kib(daemon.pid());
    assert!(
        after < before + 20 * 1024,
        "daemon RSS grew from {before} KiB to {after} KiB behind a slow client"
    );
    // Still serving others.
    assert_eq!(
        control.ok("get_session", json!({"sessionId": id})).await["state"],
        "playing"
    );

    // The slow client reads again: what waited for it, the notice of the events lost in its
    // queue, then the newest events. Every track change either arrives or is counted lost.
    let (mut track_events, mut lost, mut notices) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while track_events + lost < u64::from(TRACK_CHANGES) {
        assert!(
            Instant::now() < deadline,
            "{track_events} track events received and {lost} reported lost, of {TRACK_CHANGES}"
        );
        let frame = slow.next().await.expect("the slow client was disconnected");
        match frame["type"].as_str() {
            Some("track") => track_events += 1,
            Some("system") if frame["event"] == "eventsDropped" => {
                let dropped = frame["droppedEvents"].as_u64().unwrap();
                assert!(dropped > 0, "{frame}");
                lost += dropped;
                assert_eq!(frame["totalDroppedEvents"], lost, "{frame}");
                notices += 1;
            }
            Some(_) => {}
            None => panic!("a frame without a type: {frame}"),
        }
    }
    assert!(
        notices > 0 && lost > 0,
        "nothing was dropped: the test did not overflow the queue"
    );
    assert_eq!(track_events + lost, u64::from(TRACK_CHANGES));
    assert_eq!(
        slow.ok("get_session", json!({"sessionId": id})).await["sessionId"],
        id.as_str()
    );
    control.ok("stop", json!({"sessionId": id})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_clients_are_all_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = start_on_private_bus(dir.path());
    let addr = daemon.http_addr();
    let mut control = connect(addr, "/ws").await;
    let id = control
        .ok("create_session", json!({"name": "crowd", "tracks": 2}))
        .await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();

    let ready = Arc::new(tokio::sync::Barrier::new(101));
    let mut clients = Vec::new();
    for _ in 0..100 {
        let (id, ready) = (id.clone(), ready.clone());
        clients.push(tokio::spawn(async move {
            let mut ws = connect(addr, "/ws").await;
            ws.subscribe(json!({"topics": ["transport"], "sessionId": id}))
                .await;
            let session = ws.ok("get_session", json!({"sessionId": id})).await;
            assert_eq!(session["sessionId"], id.as_str());
            ready.wait().await;
            loop {
                let frame = ws.next().await.expect("closed before the transport push");
                if frame["type"] == "transport" && frame["state"] == "playing" {
                    return;
                }
            }
        }));
    }
    ready.wait().await;
    control.ok("play", json!({"sessionId": id})).await;
    for client in clients {
        client.await.unwrap();
    }
    control.ok("stop", json!({"sessionId": id})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_error_frames_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = start_on_private_bus(dir.path());
    let addr = daemon.http_addr();
    let mut ws = connect(addr, "/ws").await;
    let id = ws
        .ok("create_session", json!({"name": "bad", "tracks": 2}))
        .await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();

    // Not JSON, not an object, no type, unknown type: an error frame without an id.
    for text in [
        "{not json",
        "[1,2]",
        "{\"command\":\"play\"}",
        "{\"type\":\"shout\"}",
    ] {
        ws.ws.send(Message::Text(text.into())).await.unwrap();
        let frame = ws.next().await.unwrap();
        assert_eq!(frame["type"], "error", "{text}: {frame}");
        assert_eq!(frame["code"], "invalid_argument", "{text}: {frame}");
    }
    // Wrong types and out-of-range values: nothing changes.
    ws.fails(
        "set_track",
        json!({"sessionId": id, "trackId": "track_1", "level": "loud", "pan": 0.5}),
        "invalid_argument",
    )
    .await;
    ws.fails(
        "set_track",
        json!({"sessionId": id, "trackId": "track_1", "level": 5.0, "pan": 0.5}),
        "invalid_argument",
    )
    .await;
    ws.fails(
        "set_track",
        json!({"sessionId": id, "trackId": 1, "pan": 0.5}),
        "invalid_argument",
    )
    .await;
    ws.fails(
        "seek",
        json!({"sessionId": id, "frame": -5}),
        "invalid_argument",
    )
    .await;
    ws.fails("play", json!("now"), "invalid_argument").await;
    ws.fails(
        "play",
        json!({"sessionId": id, "loud": true}),
        "invalid_argument",
    )
    .await;
    let track = ws
        .ok("get_track", json!({"sessionId": id, "trackId": "track_1"}))
        .await;
    assert_eq!(track["level"], 1.0);
    assert_eq!(track["pan"], 0.0);
    let shown = daemon.cli_json(&["session", "show", &id, "--json"]);
    assert_eq!(shown["tracks"][0]["pan"], 0.0);
    // Unknown commands and ids.
    let unknown = ws.fails("explode", json!({}), "invalid_argument").await;
    assert!(
        unknown["message"].as_str().unwrap().contains("set_track"),
        "{unknown}"
    );
    ws.fails("play", json!({"sessionId": "000000000000"}), "not_found")
        .await;
    ws.fails(
        "get_track",
        json!({"sessionId": id, "trackId": "track_99"}),
        "not_found",
    )
    .await;
    ws.fails(
        "get_track",
        json!({"sessionId": id, "trackId": "vocals"}),
        "invalid_argument",
    )
    .await;
    ws.fails("play", json!({}), "invalid_argument").await;
    // Wrong state: stays stopped.
    ws.fails("pause", json!({"sessionId": id}), "invalid_state")
        .await;
    assert_eq!(
        ws.ok("get_session", json!({"sessionId": id})).await["state"],
        "stopped"
    );
    // Subscriptions with unknown topics or bad rates change nothing.
    ws.send_json(json!({"type": "subscribe", "id": 7, "topics": ["position", "gossip"]}))
        .await;
    let frame = ws.next().await.unwrap();
    assert_eq!(
        (frame["type"].as_str(), frame["id"].as_u64()),
        (Some("error"), Some(7))
    );
    ws.send_json(json!({"type": "subscribe", "id": 8, "topics": ["meters"], "meterRateHz": -1}))
        .await;
    assert_eq!(ws.next().await.unwrap()["code"], "invalid_argument");
    let sub = ws.subscribe(json!({"topics": []})).await;
    assert_eq!(sub["topics"], json!([]));

    // A binary frame too short for the audio header: an error frame, the connection stays
    // (tests/ws_audio.rs covers audio itself).
    ws.ws
        .send(Message::Binary(vec![1u8, 2, 3, 4].into()))
        .await
        .unwrap();
    let frame = ws.next().await.unwrap();
    assert_eq!(frame["type"], "error", "{frame}");
    assert!(
        frame["message"].as_str().unwrap().contains("header"),
        "{frame}"
    );
    assert_eq!(ws.ok("ping", json!(null)).await, json!({}));

    // Oversize (default limit 1 MiB): closed with 1009, others unaffected.
    let mut big = connect(addr, "/ws").await;
    let huge = format!(
        "{{\"type\":\"control\",\"command\":\"ping\",\"id\":\"x\",\"pad\":\"{}\"}}",
        "a".repeat(1_100_000)
    );
    big.ws.send(Message::Text(huge.into())).await.unwrap();
    let close = match tokio::time::timeout(FRAME_TIMEOUT, big.ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(frame))) => frame,
        Some(Ok(other)) => panic!("expected a close frame, got {other:?}"),
        Some(Err(e)) => panic!("expected a close frame, got error {e}"),
        None => panic!("connection ended without a close frame"),
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Size);
    assert!(close.reason.contains("max_ws_message_bytes"), "{close:?}");
    assert_eq!(
        ws.ok("get_session", json!({"sessionId": id})).await["state"],
        "stopped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_and_command_limits_refuse_only_the_excess() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = daemon_with_http(
        dir.path(),
        "max_clients = 3\ncommands_per_second = 50\nmax_ws_message_bytes = 4096\n",
    );
    let addr = daemon.http_addr();
    let mut first = connect(addr, "/ws").await;
    let _second = connect(addr, "/ws").await;
    let third = connect(addr, "/ws").await;
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body: Json = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["success"], false);
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("max_clients"),
                "{body}"
            );
        }
        other => panic!("a fourth client was not refused: {:?}", other.map(|_| ())),
    }
    assert_eq!(first.ok("ping", json!(null)).await, json!({}));
    // A place frees when a client leaves.
    drop(third);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fourth = loop {
        match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
            Ok((ws, _)) => {
                break Client {
                    ws,
                    next_id: 0,
                    held: Default::default(),
                }
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the freed place was not given back: {e}"),
        }
    };

    // 120 messages at once against 50 per second: the excess is refused, in order, each
    // with an answer; then the client is served again.
    for i in 0..120 {
        fourth
            .send_json(json!({"type": "control", "command": "ping", "id": i}))
            .await;
    }
    let (mut replies, mut limited) = (0, 0);
    for i in 0..120u64 {
        let frame = fourth.next().await.unwrap();
        assert_eq!(frame["id"], i, "{frame}");
        match frame["type"].as_str() {
            Some("reply") => replies += 1,
            Some("error") => {
                assert_eq!(frame["code"], "invalid_state", "{frame}");
                assert!(frame["message"].as_str().unwrap().contains("rate limited"));
                limited += 1;
            }
            _ => panic!("{frame}"),
        }
    }
    assert!(
        (50..=70).contains(&replies),
        "{replies} replies, {limited} refused"
    );
    assert_eq!(replies + limited, 120);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fourth.ok("ping", json!(null)).await, json!({}));
    // The other client was never limited.
    assert_eq!(first.ok("ping", json!(null)).await, json!({}));

    // The configured message limit (4 KiB) closes with 1009.
    first
        .ws
        .send(Message::Text("x".repeat(5000).into()))
        .await
        .unwrap();
    match tokio::time::timeout(FRAME_TIMEOUT, first.ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
    assert_eq!(fourth.ok("ping", json!(null)).await, json!({}));
}
