//! Audio over the WebSocket against the real daemon on loopback (docs/protocol.md, "Audio"):
//! a tone streamed into an armed track comes back bit-exact from the take; the master and a
//! track's send arrive as the virtual graph's tones at the frames the headers name; every kind
//! of bad chunk gets an error frame, leaves the connection usable and records nothing.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::Message;

const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A frame from the daemon: JSON text or audio.
enum Frame {
    Text(Json),
    Audio(Vec<u8>),
}

struct Client {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    /// Text frames that arrived while waiting for something else.
    held: Vec<Json>,
}

impl Client {
    async fn connect(addr: SocketAddr, path: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
            .await
            .unwrap_or_else(|e| panic!("connecting to {path}: {e}"));
        Client {
            ws,
            next_id: 0,
            held: Vec::new(),
        }
    }

    async fn receive(&mut self) -> Frame {
        loop {
            let frame = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("no frame from the daemon in time")
                .expect("connection closed")
                .unwrap();
            match frame {
                Message::Text(text) => return Frame::Text(serde_json::from_str(&text).unwrap()),
                Message::Binary(bytes) => return Frame::Audio(bytes.to_vec()),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next text frame (audio frames are skipped).
    async fn next_text(&mut self) -> Json {
        loop {
            if let Frame::Text(json) = self.receive().await {
                return json;
            }
        }
    }

    async fn call(&mut self, command: &str, data: Json) -> Json {
        self.next_id += 1;
        let id = format!("c{}", self.next_id);
        let message = json!({"type": "control", "command": command, "id": id, "data": data});
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = self.next_text().await;
            if frame["id"] == id.as_str() {
                return frame;
            }
            self.held.push(frame);
        }
    }

    async fn ok(&mut self, command: &str, data: Json) -> Json {
        let frame = self.call(command, data.clone()).await;
        assert_eq!(frame["type"], "reply", "{command} {data}: {frame}");
        frame["data"].clone()
    }

    async fn send_audio(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// Sends a bad chunk: expects one error frame naming `word`, then a working connection.
    async fn refused(&mut self, bytes: Vec<u8>, code: &str, word: &str) {
        self.send_audio(bytes).await;
        let frame = self.next_text().await;
        assert_eq!(frame["type"], "error", "{frame}");
        assert_eq!(frame["code"], code, "{frame}");
        let message = frame["message"].as_str().unwrap();
        assert!(message.contains(word), "expected {word:?} in {message:?}");
        assert_eq!(self.ok("ping", json!(null)).await, json!({}));
    }
}

/// An audio frame: the 24-byte header of docs/protocol.md, then `pcm`.
fn chunk(format: u8, channels: u8, track: u16, rate: u32, first_frame: u64, pcm: &[u8]) -> Vec<u8> {
    let mut bytes = b"OVDA".to_vec();
    bytes.extend_from_slice(&[1, format, channels, 0]);
    bytes.extend_from_slice(&track.to_le_bytes());
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&first_frame.to_le_bytes());
    bytes.extend_from_slice(pcm);
    bytes
}

fn s16(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A daemon whose config also holds `extra` (TOML appended after the harness's sections).
/// Its log goes where [`Daemon::adopt`] reads it, so [`Daemon::http_addr`] works.
fn daemon_with(dir: &Path, extra: &str) -> (Bus, Daemon) {
    let bus = Bus::start();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = write_config(dir, &Settings::default());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(data.join("no-log")).unwrap();
    let child = std::process::Command::new(overdub_bin())
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .arg("--bus-address")
        .arg(&bus.address)
        .env("OVERDUB_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let daemon = Daemon::adopt(child, Reach::Bus(bus.address.clone()), &data, config);
    daemon.wait_ready();
    (bus, daemon)
}

/// Samples of the take of `track` (1-based), read back from its WAV file.
fn take_samples(daemon: &Daemon, track: u32) -> Vec<f32> {
    let takes = daemon.takes();
    let take = takes
        .iter()
        .find(|t| t.track_index == track)
        .unwrap_or_else(|| panic!("no take of track {track}: {takes:?}"));
    assert_eq!(take.status, "complete", "{take:?}");
    read_wav(&take.path).samples
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tone_streamed_into_an_armed_track_is_in_the_take_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = daemon_with(dir.path(), "[virtual]\nsignal = \"silence\"\n");
    let addr = daemon.http_addr();
    let mut setup = Client::connect(addr, "/ws").await;
    let session = setup.ok("create_session", json!({"tracks": 2})).await;
    let id = session["sessionId"].as_str().unwrap().to_string();
    setup.ok("record", json!({"sessionId": id})).await;

    // One second of 440 Hz at half scale, in chunks of 960 frames, as fast as the socket
    // takes them; the stream's own frame counter starts at an arbitrary 5000.
    let tone: Vec<i16> = (0..RATE as usize)
        .map(|n| {
            let phase = std::f64::consts::TAU * 440.0 * n as f64 / f64::from(RATE);
            (phase.sin() * 16384.0).round() as i16
        })
        .collect();
    let mut ws = Client::connect(addr, &format!("/ws/audio/{id}")).await;
    for (k, samples) in tone.chunks(960).enumerate() {
        let first = 5000 + (k * 960) as u64;
        ws.send_audio(chunk(1, 1, 1, RATE, first, &s16(samples)))
            .await;
    }
    assert_eq!(ws.ok("ping", json!(null)).await, json!({}));
    assert!(ws.held.is_empty(), "no chunk was refused: {:?}", ws.held);
    // 1 s of audio after a 100 ms prebuffer: wait until track 1 was heard and fell silent.
    let mut heard = false;
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let meters = ws.ok("get_meters", json!(null)).await;
        let peak = meters["tracks"][0]["peak"].as_f64().unwrap();
        if peak > -20.0 {
            heard = true;
        } else if heard && peak <= -119.0 {
            break;
        }
    }
    assert!(heard, "the stream never reached track 1's meter");
    let probe = ws.call("audio_in_stop", json!({"track": 2})).await;
    assert_eq!(probe["code"], "not_found", "{probe}");
    let stats = ws.ok("audio_in_stop", json!({"track": 1})).await;
    assert_eq!(stats["framesPlayed"], RATE, "{stats}");
    assert_eq!(stats["nextFrame"], 5000 + u64::from(RATE), "{stats}");
    let metrics = ws.ok("stop", json!(null)).await;
    assert_eq!(metrics["state"], "stopped");

    // s16 → f32 → s24 is exact (×256), and so is the way back.
    let take = take_samples(&daemon, 1);
    let sent: Vec<f32> = tone.iter().map(|&s| f32::from(s) / 32768.0).collect();
    let first_sent = sent.iter().position(|&s| s != 0.0).unwrap();
    let first_taken = take
        .iter()
        .position(|&s| s != 0.0)
        .expect("the take holds the stream");
    let start = first_taken - first_sent;
    assert!(
        take.len() >= start + sent.len(),
        "take of {} frames",
        take.len()
    );
    assert_eq!(
        &take[start..start + sent.len()],
        &sent[..],
        "one contiguous, bit-exact run"
    );
    assert!(take[..start].iter().all(|&s| s == 0.0));
    assert!(take[start + sent.len()..].iter().all(|&s| s == 0.0));
    // The other armed track recorded its own (silent) input, untouched by the stream.
    assert!(take_samples(&daemon, 2).iter().all(|&s| s == 0.0));
}

/// A parsed outbound audio frame.
struct Received {
    format: u8,
    track: u16,
    rate: u32,
    first_frame: u64,
    samples: Vec<f32>,
}

fn parse_audio(bytes: &[u8]) -> Received {
    assert_eq!(&bytes[0..4], b"OVDA");
    assert_eq!(bytes[4], 1, "version");
    assert_eq!(bytes[6], 2, "stereo");
    let format = bytes[5];
    let pcm = &bytes[24..];
    let samples = match format {
        1 => pcm
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect(),
        2 => pcm
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        other => panic!("format {other}"),
    };
    Received {
        format,
        track: u16::from_le_bytes([bytes[8], bytes[9]]),
        rate: u32::from_le_bytes(bytes[12..16].try_into().unwrap()),
        first_frame: u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
        samples,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_master_and_a_track_send_arrive_as_the_virtual_tones_at_their_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = start_on_private_bus(dir.path());
    let addr = daemon.http_addr();
    let mut ws = Client::connect(addr, "/ws").await;
    let session = ws.ok("create_session", json!({"tracks": 2})).await;
    let id = session["sessionId"].as_str().unwrap().to_string();
    // Tracks 1 and 2 are armed (auto monitoring: heard); hard left and hard right make the
    // master exactly their tones, one per side.
    ws.ok(
        "set_track",
        json!({"sessionId": id, "trackId": "track_1", "pan": -1.0}),
    )
    .await;
    ws.ok(
        "set_track",
        json!({"sessionId": id, "trackId": "track_2", "pan": 1.0, "level": 0.5}),
    )
    .await;
    let reply = ws
        .ok("audio_out", json!({"source": "master", "format": "f32le"}))
        .await;
    assert_eq!(
        (
            reply["track"].as_u64(),
            reply["formatCode"].as_u64(),
            reply["channels"].as_u64(),
            reply["sampleRate"].as_u64(),
            reply["headerBytes"].as_u64()
        ),
        (Some(0), Some(2), Some(2), Some(u64::from(RATE)), Some(24))
    );
    let reply = ws
        .ok("audio_out", json!({"source": "track_2", "format": "s16le"}))
        .await;
    assert_eq!(reply["track"], 2);
    let (left, right) = (default_channel(1), default_channel(2));
    let mut master_frames = 0;
    let mut track_frames = 0;
    let mut last_master: Option<u64> = None;
    while master_frames < RATE as usize / 2 || track_frames < RATE as usize / 2 {
        let Frame::Audio(bytes) = ws.receive().await else {
            continue;
        };
        let audio = parse_audio(&bytes);
        assert_eq!(audio.rate, RATE);
        let frames = audio.samples.len() / 2;
        for (k, pair) in audio.samples.chunks_exact(2).enumerate() {
            let frame = audio.first_frame + k as u64;
            match audio.track {
                0 => {
                    assert_eq!(audio.format, 2);
                    assert_eq!(pair[0], tone(left, frame), "master left at {frame}");
                    assert_eq!(pair[1], 0.5 * tone(right, frame), "master right at {frame}");
                }
                2 => {
                    assert_eq!(audio.format, 1);
                    assert_eq!(pair[0], 0.0, "track 2 is hard right");
                    let expected = 0.5 * tone(right, frame);
                    assert!(
                        (pair[1] - expected).abs() <= 0.5 / 32768.0 + 1e-7,
                        "track 2 at {frame}: {} vs {expected}",
                        pair[1]
                    );
                }
                other => panic!("audio of track {other}"),
            }
        }
        if audio.track == 0 {
            if let Some(last) = last_master {
                assert!(audio.first_frame >= last, "frames go forward");
            }
            last_master = Some(audio.first_frame + frames as u64);
            master_frames += frames;
        } else {
            track_frames += frames;
        }
    }
    ws.ok("audio_out_stop", json!({"source": "master"})).await;
    ws.ok("audio_out_stop", json!({"source": "track_2"})).await;
    let err = ws.call("audio_out_stop", json!({"source": "master"})).await;
    assert_eq!(err["code"], "not_found", "{err}");
    // Bad requests name what is wrong.
    for (data, word) in [
        (json!({"source": "track_x"}), "source"),
        (json!({"source": "master", "format": "u8"}), "format"),
        (json!({"source": "track_9"}), "track 9"),
    ] {
        let err = ws.call("audio_out", data.clone()).await;
        assert_eq!(err["type"], "error", "{data}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains(word),
            "{data}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_chunks_get_an_error_each_and_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, daemon) = daemon_with(dir.path(), "[virtual]\nsignal = \"silence\"\n");
    let addr = daemon.http_addr();
    let mut ws = Client::connect(addr, "/ws").await;
    let session = ws.ok("create_session", json!({"tracks": 2})).await;
    let id = session["sessionId"].as_str().unwrap().to_string();
    ws.ok("record", json!({"sessionId": id})).await;
    let loud = s16(&[12_000; 960]);
    ws.refused(
        chunk(1, 1, 1, 44_100, 0, &loud),
        "invalid_argument",
        "44100",
    )
    .await;
    ws.refused(
        chunk(1, 2, 1, RATE, 0, &loud),
        "invalid_argument",
        "channel",
    )
    .await;
    let mut bad_magic = chunk(1, 1, 1, RATE, 0, &loud);
    bad_magic[0] = b'X';
    ws.refused(bad_magic, "invalid_argument", "magic").await;
    ws.refused(
        chunk(1, 1, 1, RATE, 0, &loud[..3]),
        "invalid_argument",
        "whole number",
    )
    .await;
    ws.refused(chunk(1, 1, 9, RATE, 0, &loud), "not_found", "track 9")
        .await;
    ws.refused(chunk(7, 1, 1, RATE, 0, &loud), "invalid_argument", "format")
        .await;
    ws.refused(
        chunk(1, 1, 0, RATE, 0, &loud),
        "invalid_argument",
        "1-based",
    )
    .await;
    // A good (silent) chunk attaches the stream; one that goes back in time, or skips more
    // than a second, is refused and the stream stays.
    ws.send_audio(chunk(1, 1, 1, RATE, 0, &s16(&[0; 960])))
        .await;
    ws.refused(
        chunk(1, 1, 1, RATE, 0, &loud),
        "invalid_argument",
        "expects frame 960",
    )
    .await;
    ws.refused(
        chunk(1, 1, 1, RATE, 960 + u64::from(RATE) + 1, &loud),
        "invalid_argument",
        "expects frame 960",
    )
    .await;
    ws.refused(
        chunk(1, 2, 1, RATE, 960, &loud),
        "invalid_argument",
        "channel",
    )
    .await;
    let stats = ws.ok("audio_in_stop", json!({"track": 1})).await;
    assert_eq!(stats["nextFrame"], 960);
    ws.ok("stop", json!({"sessionId": id})).await;
    for track in [1, 2] {
        let take = take_samples(&daemon, track);
        assert!(!take.is_empty());
        assert!(
            take.iter().all(|&s| s == 0.0),
            "track {track}: nothing of a refused chunk was recorded"
        );
    }
}
