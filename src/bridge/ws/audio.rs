//! Audio over the WebSocket (docs/protocol.md, "Audio"): binary frames of a 24-byte header and
//! PCM, in both directions.
//!
//! Inbound, the first frame for a track attaches a [`StreamHandle`] on the connection's session
//! and later frames must follow on without a gap (a forward gap of at most one second is filled
//! with silence). Samples are converted to `f32` here, off the audio thread; when the stream's
//! ring is full the reader waits, so the client is held back through TCP instead of the daemon
//! buffering without bound. Outbound, `audio_out` starts a task per source that polls its
//! [`TapHandle`] and hands binary frames to the client's writer through a bounded queue: a
//! client too slow for its audio loses whole chunks, counted and reported, never daemon memory.
//!
//! Not real-time: runs on tokio.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::outbox::Outbox;
use crate::control::{
    Control, ControlError, ControlResult, MonitorSource, StreamHandle, TapHandle,
};
use crate::engine::TapBlock;

/// The control commands served here rather than by `commands::run`: they act on the
/// connection's own streams and taps.
pub const COMMANDS: [&str; 3] = ["audio_out", "audio_out_stop", "audio_in_stop"];

/// Bytes of the header in front of every binary frame.
pub const HEADER_BYTES: usize = 24;
/// The first four bytes of every binary frame.
pub const MAGIC: [u8; 4] = *b"OVDA";
/// The header version this daemon reads and writes.
pub const VERSION: u8 = 1;
/// Longest an inbound chunk waits for room in its stream's ring before it is given up.
pub const BACKPRESSURE_LIMIT: Duration = Duration::from_secs(2);
/// How often a waiting chunk looks for room again.
const BACKPRESSURE_POLL: Duration = Duration::from_millis(5);
/// How often an outbound task polls its tap.
pub const TAP_POLL: Duration = Duration::from_millis(10);
/// Most frames in one outbound binary frame.
const MAX_OUT_FRAMES: usize = 4096;

/// Sample format of the PCM after the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcmFormat {
    /// Signed 16-bit little endian; `x / 32768` in, `round(x × 32768)` clamped out.
    S16,
    /// IEEE float 32-bit little endian, as is.
    F32,
}

impl PcmFormat {
    /// The header's format byte.
    pub fn code(self) -> u8 {
        match self {
            PcmFormat::S16 => 1,
            PcmFormat::F32 => 2,
        }
    }

    /// The word in JSON (`s16le`, `f32le`).
    pub fn as_str(self) -> &'static str {
        match self {
            PcmFormat::S16 => "s16le",
            PcmFormat::F32 => "f32le",
        }
    }

    /// Bytes per sample.
    pub fn bytes(self) -> usize {
        match self {
            PcmFormat::S16 => 2,
            PcmFormat::F32 => 4,
        }
    }

    fn from_code(code: u8) -> Option<PcmFormat> {
        match code {
            1 => Some(PcmFormat::S16),
            2 => Some(PcmFormat::F32),
            _ => None,
        }
    }

    fn parse(word: &str) -> Option<PcmFormat> {
        match word {
            "s16le" => Some(PcmFormat::S16),
            "f32le" => Some(PcmFormat::F32),
            _ => None,
        }
    }
}

/// The header of an audio frame (all fields little endian):
///
/// | bytes | field |
/// |---|---|
/// | 0–3 | magic `OVDA` |
/// | 4 | version (1) |
/// | 5 | format (1 = s16le, 2 = f32le) |
/// | 6 | channels |
/// | 7 | flags (0) |
/// | 8–9 | track (1-based; 0 = master on outbound frames) |
/// | 10–11 | reserved (0) |
/// | 12–15 | sample rate |
/// | 16–23 | first frame |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Sample format.
    pub format: PcmFormat,
    /// Interleaved channels.
    pub channels: u8,
    /// Track (1-based), or 0 for the master.
    pub track: u16,
    /// Frames per second.
    pub sample_rate: u32,
    /// Inbound: the stream's own frame counter; outbound: the session's graph frame.
    pub first_frame: u64,
}

impl Header {
    /// The 24 header bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4] = VERSION;
        bytes[5] = self.format.code();
        bytes[6] = self.channels;
        bytes[7] = 0;
        bytes[8..10].copy_from_slice(&self.track.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.sample_rate.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.first_frame.to_le_bytes());
        bytes
    }

    /// Splits a binary frame into its header and whole frames of PCM, or says what is wrong.
    pub fn parse(frame: &[u8]) -> ControlResult<(Header, &[u8])> {
        let bad = |message: String| Err(ControlError::invalid_argument(message));
        let Some((head, pcm)) = frame.split_first_chunk::<HEADER_BYTES>() else {
            return bad(format!(
                "a binary frame of {} bytes is shorter than the {HEADER_BYTES}-byte audio header",
                frame.len()
            ));
        };
        if head[0..4] != MAGIC {
            return bad(format!(
                "bad magic {:02x?}: audio frames start with \"OVDA\"",
                &head[0..4]
            ));
        }
        if head[4] != VERSION {
            return bad(format!(
                "audio header version {} is not supported (this daemon speaks {VERSION})",
                head[4]
            ));
        }
        let Some(format) = PcmFormat::from_code(head[5]) else {
            return bad(format!(
                "unknown sample format {} (1 = s16le, 2 = f32le)",
                head[5]
            ));
        };
        let channels = head[6];
        if !(1..=2).contains(&channels) {
            return bad(format!("channels must be 1 or 2, got {channels}"));
        }
        if head[7] != 0 || head[10..12] != [0, 0] {
            return bad("the header's flags and reserved bytes must be 0".into());
        }
        let header = Header {
            format,
            channels,
            track: u16::from_le_bytes([head[8], head[9]]),
            sample_rate: u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
            first_frame: u64::from_le_bytes(head[16..24].try_into().unwrap_or([0; 8])),
        };
        let frame_bytes = usize::from(channels) * format.bytes();
        if pcm.is_empty() || pcm.len() % frame_bytes != 0 {
            return bad(format!(
                "{} bytes of PCM are not a whole number of {channels}-channel {} frames ({frame_bytes} bytes each)",
                pcm.len(),
                format.as_str()
            ));
        }
        Ok((header, pcm))
    }

    /// Frames in `pcm` (whole frames, as [`Header::parse`] guarantees).
    fn frames(&self, pcm: &[u8]) -> usize {
        pcm.len() / (usize::from(self.channels) * self.format.bytes())
    }
}

/// PCM bytes to `f32` samples.
pub fn decode(format: PcmFormat, pcm: &[u8]) -> Vec<f32> {
    match format {
        PcmFormat::S16 => pcm
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect(),
        PcmFormat::F32 => pcm
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

/// `f32` samples appended to `out` as PCM bytes.
pub fn encode(format: PcmFormat, samples: &[f32], out: &mut Vec<u8>) {
    match format {
        PcmFormat::S16 => {
            for s in samples {
                let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        PcmFormat::F32 => {
            for s in samples {
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
    }
}

/// One inbound stream of a connection.
struct Inbound {
    handle: StreamHandle,
    /// The stream frame the next chunk must start at.
    next_frame: u64,
}

/// A connection's inbound streams, by track.
#[derive(Default)]
pub struct AudioIn {
    streams: BTreeMap<u16, Inbound>,
}

impl AudioIn {
    /// Whether `frame` would attach a new stream (a session round trip: such frames count
    /// against the connection's message rate; chunks of an attached stream do not).
    pub fn would_attach(&self, frame: &[u8]) -> bool {
        match Header::parse(frame) {
            Ok((header, _)) => header.track != 0 && !self.streams.contains_key(&header.track),
            Err(_) => false,
        }
    }

    /// Records one binary frame into its track; an error names what was wrong, and nothing
    /// of a refused chunk is recorded. Waits (at most [`BACKPRESSURE_LIMIT`]) while the
    /// stream's ring is full.
    pub async fn chunk(
        &mut self,
        control: &Control,
        bound: Option<&str>,
        frame: &[u8],
    ) -> ControlResult<()> {
        let (header, pcm) = Header::parse(frame)?;
        if header.track == 0 {
            return Err(ControlError::invalid_argument(
                "track 0 is the master, which cannot be recorded into: tracks are 1-based",
            ));
        }
        let track = header.track;
        if let Some(inbound) = self.streams.get(&track) {
            let handle = &inbound.handle;
            if header.channels != handle.channels() {
                return Err(ControlError::invalid_argument(format!(
                    "the chunk has {} channel(s) but track {track} has {}",
                    header.channels,
                    handle.channels()
                )));
            }
            if header.sample_rate != handle.sample_rate() {
                return Err(ControlError::invalid_argument(format!(
                    "the chunk is at {} Hz but the session runs at {} Hz",
                    header.sample_rate,
                    handle.sample_rate()
                )));
            }
            let expected = inbound.next_frame;
            let gap = header.first_frame.wrapping_sub(expected);
            if header.first_frame < expected || gap > u64::from(handle.sample_rate()) {
                return Err(ControlError::invalid_argument(format!(
                    "track {track}: the chunk starts at frame {} but the stream expects frame {expected} (forward gaps of at most 1 s are filled with silence); chunk dropped",
                    header.first_frame
                )));
            }
        } else {
            let session = session_for(control, bound).await?;
            let handle = control
                .attach_stream(
                    &session,
                    u32::from(track),
                    header.channels,
                    header.sample_rate,
                )
                .await?;
            self.streams.insert(
                track,
                Inbound {
                    handle,
                    next_frame: header.first_frame,
                },
            );
        }
        let Some(inbound) = self.streams.get_mut(&track) else {
            return Err(ControlError::invalid_state("the stream went away"));
        };
        let channels = usize::from(header.channels);
        let gap = (header.first_frame - inbound.next_frame) as usize;
        let mut samples = vec![0.0; gap * channels];
        samples.extend(decode(header.format, pcm));
        let frames = gap + header.frames(pcm);
        let pushed = push_waiting(&mut inbound.handle, &samples).await;
        inbound.next_frame += pushed as u64;
        if inbound.handle.is_detached() {
            self.streams.remove(&track);
            return Err(ControlError::invalid_state(format!(
                "track {track}'s stream was detached (track removed or session closed); send again to attach a new one"
            )));
        }
        if pushed < frames {
            return Err(ControlError::invalid_state(format!(
                "track {track}: the stream's buffer stayed full for {} s; {pushed} of {frames} frames were queued, the rest dropped (send from frame {})",
                BACKPRESSURE_LIMIT.as_secs(),
                inbound.next_frame
            )));
        }
        Ok(())
    }

    /// Detaches the stream of `track`; returns its counters, or `None` if there was none.
    pub fn stop(&mut self, track: u16) -> Option<Value> {
        let inbound = self.streams.remove(&track)?;
        let stats = inbound.handle.stats();
        Some(json!({
            "track": track,
            "nextFrame": inbound.next_frame,
            "framesPlayed": stats.frames_played(),
            "underruns": stats.underruns(),
        }))
    }
}

/// Pushes `samples` into the stream, waiting for room; returns the frames pushed (fewer only
/// when the ring stayed full for [`BACKPRESSURE_LIMIT`] or the stream was detached).
async fn push_waiting(handle: &mut StreamHandle, samples: &[f32]) -> usize {
    let channels = usize::from(handle.channels());
    let total = samples.len() / channels;
    let mut done = 0;
    let mut deadline = Instant::now() + BACKPRESSURE_LIMIT;
    while done < total {
        let pushed = handle.push(&samples[done * channels..]);
        done += pushed;
        if done == total || handle.is_detached() {
            break;
        }
        if pushed > 0 {
            deadline = Instant::now() + BACKPRESSURE_LIMIT;
        } else if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(BACKPRESSURE_POLL).await;
    }
    done
}

/// The session a connection's audio goes to: the bound one, else the only active one.
async fn session_for(control: &Control, bound: Option<&str>) -> ControlResult<String> {
    if let Some(id) = bound {
        return Ok(id.to_string());
    }
    let mut active = control.active_sessions().await;
    match active.len() {
        1 => Ok(active.remove(0)),
        0 => Err(ControlError::not_found(
            "no active session to stream audio into: create or open one",
        )),
        n => Err(ControlError::invalid_argument(format!(
            "{n} sessions are active: connect to /ws/audio/SESSION_ID to choose one"
        ))),
    }
}

/// `data` of `audio_out`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OutData {
    source: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
}

/// `data` of `audio_out_stop`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutStopData {
    source: String,
}

/// `data` of `audio_in_stop`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InStopData {
    track: u16,
}

/// The header track of a source word: `master` → 0, `track_N` → N.
fn source_track(word: &str) -> ControlResult<u16> {
    if word == "master" {
        return Ok(0);
    }
    super::wire::parse_track_id(word)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| {
            ControlError::invalid_argument(format!(
                "source must be \"master\" or \"track_N\", got {word:?}"
            ))
        })
}

fn parse<T: serde::de::DeserializeOwned>(command: &str, data: Value) -> ControlResult<T> {
    serde_json::from_value(data)
        .map_err(|e| ControlError::invalid_argument(format!("data of {command}: {e}")))
}

/// A connection's outbound audio: one task per source, all feeding one bounded queue.
pub struct AudioOut {
    tasks: BTreeMap<u16, JoinHandle<()>>,
    queue: mpsc::Sender<Vec<u8>>,
    outbox: Arc<Outbox>,
}

impl AudioOut {
    /// Outbound audio into `queue` (drained by the connection's writer); loss notices go to
    /// `outbox`.
    pub fn new(queue: mpsc::Sender<Vec<u8>>, outbox: Arc<Outbox>) -> AudioOut {
        AudioOut {
            tasks: BTreeMap::new(),
            queue,
            outbox,
        }
    }

    /// Runs one of [`COMMANDS`].
    pub async fn command(
        &mut self,
        audio_in: &mut AudioIn,
        control: &Control,
        bound: Option<&str>,
        command: &str,
        data: Value,
    ) -> ControlResult<Value> {
        match command {
            "audio_in_stop" => parse::<InStopData>(command, data).and_then(|d| {
                audio_in.stop(d.track).ok_or_else(|| {
                    ControlError::not_found(format!(
                        "no audio is streaming into track {} on this connection",
                        d.track
                    ))
                })
            }),
            "audio_out" => match parse::<OutData>(command, data) {
                Ok(d) => self.start(control, bound, d).await,
                Err(e) => Err(e),
            },
            "audio_out_stop" => parse::<OutStopData>(command, data).and_then(|d| {
                let track = source_track(&d.source)?;
                match self.tasks.remove(&track) {
                    Some(task) => {
                        task.abort();
                        Ok(json!({ "source": d.source }))
                    }
                    None => Err(ControlError::not_found(format!(
                        "no audio_out of {} on this connection",
                        d.source
                    ))),
                }
            }),
            _ => Err(ControlError::invalid_argument(format!(
                "{command:?} is not an audio command"
            ))),
        }
    }

    async fn start(
        &mut self,
        control: &Control,
        bound: Option<&str>,
        d: OutData,
    ) -> ControlResult<Value> {
        let track = source_track(&d.source)?;
        let format_word = d.format.as_deref().unwrap_or("f32le");
        let format = PcmFormat::parse(format_word).ok_or_else(|| {
            ControlError::invalid_argument(format!(
                "format must be \"s16le\" or \"f32le\", got {format_word:?}"
            ))
        })?;
        if self.tasks.get(&track).is_some_and(|t| !t.is_finished()) {
            return Err(ControlError::invalid_state(format!(
                "audio of {} already flows on this connection: audio_out_stop it first",
                d.source
            )));
        }
        let session = match d.session_id {
            Some(id) => id,
            None => session_for(control, bound).await?,
        };
        let source = match track {
            0 => MonitorSource::Master,
            n => MonitorSource::Track(u32::from(n)),
        };
        let tap = control.attach_tap(&session, source).await?;
        let header = Header {
            format,
            channels: 2,
            track,
            sample_rate: tap.sample_rate(),
            first_frame: 0,
        };
        let task = tokio::spawn(pump(
            tap,
            header,
            d.source.clone(),
            self.queue.clone(),
            self.outbox.clone(),
        ));
        self.tasks.insert(track, task);
        Ok(json!({
            "sessionId": session,
            "source": d.source,
            "track": track,
            "format": format.as_str(),
            "formatCode": format.code(),
            "channels": 2,
            "sampleRate": header.sample_rate,
            "headerBytes": HEADER_BYTES,
            "version": VERSION,
        }))
    }
}

impl Drop for AudioOut {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

/// Polls `tap` every [`TAP_POLL`], batches contiguous blocks into binary frames and offers
/// them to the writer's bounded queue; a full queue drops the chunk and tells the client.
async fn pump(
    mut tap: TapHandle,
    header: Header,
    source: String,
    queue: mpsc::Sender<Vec<u8>>,
    outbox: Arc<Outbox>,
) {
    let mut tick = tokio::time::interval(TAP_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut total_dropped: u64 = 0;
    let mut pending: Option<(u64, Vec<f32>)> = None;
    loop {
        tick.tick().await;
        let mut chunks = Vec::new();
        while let Some(block) = tap.pop() {
            append(&mut pending, &block, &mut chunks);
        }
        if let Some(run) = pending.take() {
            chunks.push(run);
        }
        let mut dropped = 0;
        for (first_frame, samples) in chunks {
            let mut bytes = Vec::with_capacity(HEADER_BYTES + samples.len() * 4);
            bytes.extend_from_slice(
                &Header {
                    first_frame,
                    ..header
                }
                .encode(),
            );
            encode(header.format, &samples, &mut bytes);
            match queue.try_send(bytes) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        if dropped > 0 {
            total_dropped += dropped;
            outbox.push_event(
                json!({
                    "type": "system",
                    "event": "audioDropped",
                    "source": source,
                    "droppedChunks": dropped,
                    "totalDroppedChunks": total_dropped,
                    "tapDroppedBlocks": tap.stats().dropped_blocks(),
                })
                .to_string(),
            );
        }
        if tap.is_detached() {
            outbox.push_event(
                json!({
                    "type": "system",
                    "event": "audioEnded",
                    "source": source,
                    "message": "the session closed or the track was removed",
                })
                .to_string(),
            );
            return;
        }
    }
}

/// Adds `block` to the run being built, starting a new run (and finishing the old one into
/// `chunks`) at a gap or when the run is full.
fn append(
    pending: &mut Option<(u64, Vec<f32>)>,
    block: &TapBlock,
    chunks: &mut Vec<(u64, Vec<f32>)>,
) {
    let frames = usize::from(block.frames);
    if let Some((first, samples)) = pending.as_mut() {
        let run = samples.len() / 2;
        if *first + run as u64 == block.first_frame && run + frames <= MAX_OUT_FRAMES {
            samples.extend_from_slice(block.interleaved());
            return;
        }
    }
    if let Some(run) = pending.take() {
        chunks.push(run);
    }
    *pending = Some((block.first_frame, block.interleaved().to_vec()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(header: &Header, pcm: &[u8]) -> Vec<u8> {
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(pcm);
        bytes
    }

    const HEADER: Header = Header {
        format: PcmFormat::S16,
        channels: 2,
        track: 3,
        sample_rate: 48_000,
        first_frame: 960,
    };

    #[test]
    fn the_header_has_the_documented_bytes() {
        let bytes = HEADER.encode();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // The worked example of docs/protocol.md.
        assert_eq!(hex, "4f564441010102000300000080bb0000c003000000000000");
        let pcm = [0u8; 8];
        let bytes = frame(&HEADER, &pcm);
        let parsed = Header::parse(&bytes).unwrap();
        assert_eq!(parsed, (HEADER, &pcm[..]));
    }

    #[test]
    fn every_broken_header_is_named() {
        let good = frame(&HEADER, &[0u8; 8]);
        type Breaker = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: [(Breaker, &str); 7] = [
            (Box::new(|b| b.truncate(10)), "shorter than"),
            (Box::new(|b| b[0] = b'X'), "magic"),
            (Box::new(|b| b[4] = 2), "version"),
            (Box::new(|b| b[5] = 9), "format"),
            (Box::new(|b| b[6] = 3), "channels"),
            (Box::new(|b| b[7] = 1), "reserved"),
            (Box::new(|b| b.truncate(HEADER_BYTES + 6)), "whole number"),
        ];
        for (break_it, word) in cases {
            let mut bytes = good.clone();
            break_it(&mut bytes);
            let err = Header::parse(&bytes).unwrap_err();
            assert!(err.message.contains(word), "{word}: {err}");
        }
        let err = Header::parse(&HEADER.encode()).unwrap_err();
        assert!(err.message.contains("PCM"), "no PCM at all: {err}");
    }

    #[test]
    fn s16_decodes_exactly_and_round_trips() {
        let values: [i16; 5] = [i16::MIN, -1, 0, 1, i16::MAX];
        let pcm: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let samples = decode(PcmFormat::S16, &pcm);
        assert_eq!(samples[0], -1.0);
        assert_eq!(samples[3], 1.0 / 32768.0);
        let mut back = Vec::new();
        encode(PcmFormat::S16, &samples, &mut back);
        assert_eq!(back, pcm);
        let mut clipped = Vec::new();
        encode(PcmFormat::S16, &[2.0, -2.0], &mut clipped);
        assert_eq!(clipped, [0xff, 0x7f, 0x00, 0x80]);
        let mut floats = Vec::new();
        encode(PcmFormat::F32, &[0.1, -0.7], &mut floats);
        assert_eq!(decode(PcmFormat::F32, &floats), [0.1, -0.7]);
    }

    #[test]
    fn contiguous_blocks_join_and_gaps_split() {
        let block = |first_frame: u64| TapBlock {
            first_frame,
            frames: crate::engine::TAP_BLOCK_FRAMES as u16,
            samples: [0.5; 2 * crate::engine::TAP_BLOCK_FRAMES],
        };
        let mut pending = None;
        let mut chunks = Vec::new();
        for first in [0, 256, 512, 1024, 1280] {
            append(&mut pending, &block(first), &mut chunks);
        }
        chunks.extend(pending.take());
        let runs: Vec<(u64, usize)> = chunks.iter().map(|(f, s)| (*f, s.len() / 2)).collect();
        assert_eq!(runs, [(0, 768), (1024, 512)]);
    }
}
