//! Audio in and out of a session through rings instead of ports: [`StreamHandle`] feeds a
//! track from outside (the WebSocket's remote recording), [`TapHandle`] reads the master mix
//! or a track's monitor send. Each handle owns its ring end and detaches when dropped: the
//! drop only queues a release, which the session applies the next time it drains (at most
//! [`super::PUMP_INTERVAL`] later), so handles can be dropped anywhere, also outside tokio.
//!
//! Not real-time: runs on tokio; the rings are lock-free and the handles never block.

use std::collections::BTreeMap;
use std::sync::Arc;

use rtrb::{Consumer, Producer, RingBuffer};
use tokio::sync::mpsc;

use super::error::{ControlError, ControlResult};
use super::session::ActiveSession;
use crate::engine::{
    ControlToEngine, InboundStream, MonitorTap, StreamStats, TapBlock, TapSource, TapStats,
    MAX_TAPS, TAP_BLOCK_FRAMES,
};

/// How much audio an inbound stream waits for before it starts (and after an underrun): the
/// jitter buffer, 100 ms. Larger absorbs more network jitter and adds as much latency.
pub const STREAM_PREBUFFER_MS: u32 = 100;
/// Capacity of an inbound stream's ring, in seconds of audio: a client may run this far ahead
/// of the audio clock before it is back-pressured.
pub const STREAM_RING_SECONDS: u32 = 2;
/// Capacity of a tap's ring, in milliseconds of audio: how long its reader may stall before
/// blocks are dropped.
pub const TAP_RING_MS: u32 = 500;

/// What a tap copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitorSource {
    /// The master mix.
    Master,
    /// What the track with this (1-based) index sends to the master: post level and pan,
    /// stereo; silence while it is not heard.
    Track(u32),
}

/// A handle asking its session to detach something when it is dropped.
enum Release {
    Stream { track: u32, generation: u64 },
    Tap { id: u8, generation: u64 },
}

/// A session's streams and taps: which are attached (with a generation, so a late release of
/// an old handle never detaches a newer one) and the releases of dropped handles.
pub(super) struct AudioLinks {
    streams: BTreeMap<u32, u64>,
    taps: [Option<u64>; MAX_TAPS],
    next_generation: u64,
    releases: mpsc::UnboundedSender<Release>,
    released: mpsc::UnboundedReceiver<Release>,
}

impl AudioLinks {
    pub(super) fn new() -> AudioLinks {
        let (releases, released) = mpsc::unbounded_channel();
        AudioLinks {
            streams: BTreeMap::new(),
            taps: [None; MAX_TAPS],
            next_generation: 1,
            releases,
            released,
        }
    }

    /// The engine hands a removed track's stream back by itself: forget it here.
    pub(super) fn forget_track(&mut self, index: u32) {
        self.streams.remove(&index);
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

/// The sending end of an inbound stream into one track: interleaved `f32` frames of the
/// track's channel count at the session's rate. Dropping it detaches the stream (the track
/// gets its own input back).
pub struct StreamHandle {
    producer: Producer<f32>,
    stats: Arc<StreamStats>,
    track: u32,
    channels: u8,
    sample_rate: u32,
    generation: u64,
    releases: mpsc::UnboundedSender<Release>,
}

impl StreamHandle {
    /// The track fed (1-based).
    pub fn track(&self) -> u32 {
        self.track
    }

    /// Interleaved channels per frame.
    pub fn channels(&self) -> u8 {
        self.channels
    }

    /// Frames per second.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Whole frames the ring has room for now.
    pub fn free_frames(&self) -> usize {
        self.producer.slots() / usize::from(self.channels)
    }

    /// Pushes the whole frames of `samples` (interleaved) that fit; returns how many frames.
    /// Never blocks.
    pub fn push(&mut self, samples: &[f32]) -> usize {
        let channels = usize::from(self.channels);
        let frames = (samples.len() / channels).min(self.free_frames());
        match self.producer.write_chunk_uninit(frames * channels) {
            Ok(chunk) => {
                chunk.fill_from_iter(samples.iter().copied());
                frames
            }
            Err(_) => 0,
        }
    }

    /// Underruns, frames played, priming or flowing.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Whether the engine has let go of the stream (its track was removed or the session
    /// closed): nothing pushed will be heard.
    pub fn is_detached(&self) -> bool {
        self.producer.is_abandoned()
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let _ = self.releases.send(Release::Stream {
            track: self.track,
            generation: self.generation,
        });
    }
}

/// The reading end of a tap: [`TapBlock`]s of stereo frames at the session's rate. Dropping it
/// detaches the tap.
pub struct TapHandle {
    consumer: Consumer<TapBlock>,
    stats: Arc<TapStats>,
    id: u8,
    source: MonitorSource,
    sample_rate: u32,
    generation: u64,
    releases: mpsc::UnboundedSender<Release>,
}

impl TapHandle {
    /// What it copies.
    pub fn source(&self) -> MonitorSource {
        self.source
    }

    /// Frames per second.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The next block, if one is ready. Never blocks.
    pub fn pop(&mut self) -> Option<TapBlock> {
        self.consumer.pop().ok()
    }

    /// Blocks pushed and dropped by the engine (a dropped block is a gap in `first_frame`).
    pub fn stats(&self) -> &TapStats {
        &self.stats
    }

    /// Whether the engine has let go of the tap (the session closed).
    pub fn is_detached(&self) -> bool {
        self.consumer.is_abandoned()
    }
}

impl Drop for TapHandle {
    fn drop(&mut self) {
        let _ = self.releases.send(Release::Tap {
            id: self.id,
            generation: self.generation,
        });
    }
}

impl ActiveSession {
    /// Detaches what dropped handles released. Called by [`ActiveSession::drain`].
    pub(super) fn apply_releases(&mut self) {
        while let Ok(release) = self.audio.released.try_recv() {
            let command = match release {
                Release::Stream { track, generation } => {
                    if self.audio.streams.get(&track) != Some(&generation) {
                        continue;
                    }
                    self.audio.streams.remove(&track);
                    ControlToEngine::DetachStream {
                        track: slot_of(track),
                    }
                }
                Release::Tap { id, generation } => {
                    let Some(place) = self.audio.taps.get_mut(usize::from(id)) else {
                        continue;
                    };
                    if *place != Some(generation) {
                        continue;
                    }
                    *place = None;
                    ControlToEngine::DetachTap { id }
                }
            };
            if let Err(e) = self.send(command) {
                tracing::error!(session = %self.row.id, "detaching audio: {e}");
            }
        }
    }

    /// See [`super::Control::attach_stream`].
    pub(super) fn attach_stream(
        &mut self,
        track: u32,
        channels: u8,
        sample_rate: u32,
    ) -> ControlResult<StreamHandle> {
        let row = &self
            .tracks
            .get(&track)
            .ok_or_else(|| ControlError::not_found(format!("no track {track}")))?
            .row;
        if channels != row.channels {
            return Err(ControlError::invalid_argument(format!(
                "the stream has {channels} channel(s) but track {track} has {}",
                row.channels
            )));
        }
        let rate = self.row.sample_rate;
        if sample_rate != rate {
            return Err(ControlError::invalid_argument(format!(
                "the stream is at {sample_rate} Hz but the session runs at {rate} Hz"
            )));
        }
        if self.audio.streams.contains_key(&track) {
            return Err(ControlError::invalid_state(format!(
                "track {track} already has a stream"
            )));
        }
        let frames = (STREAM_RING_SECONDS * rate) as usize;
        let (producer, consumer) = RingBuffer::new(frames * usize::from(channels));
        let prebuffer = (u64::from(rate) * u64::from(STREAM_PREBUFFER_MS) / 1000) as usize;
        let (stream, stats) = InboundStream::new(consumer, channels, prebuffer);
        self.send(ControlToEngine::AttachStream {
            track: slot_of(track),
            stream: Box::new(stream),
        })?;
        let generation = self.audio.generation();
        self.audio.streams.insert(track, generation);
        Ok(StreamHandle {
            producer,
            stats,
            track,
            channels,
            sample_rate: rate,
            generation,
            releases: self.audio.releases.clone(),
        })
    }

    /// See [`super::Control::attach_tap`].
    pub(super) fn attach_tap(&mut self, source: MonitorSource) -> ControlResult<TapHandle> {
        let engine_source = match source {
            MonitorSource::Master => TapSource::Master,
            MonitorSource::Track(index) => {
                if !self.tracks.contains_key(&index) {
                    return Err(ControlError::not_found(format!("no track {index}")));
                }
                TapSource::Track(slot_of(index))
            }
        };
        let id = self
            .audio
            .taps
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| {
                ControlError::invalid_state(format!(
                    "all {MAX_TAPS} audio taps of this session are in use"
                ))
            })?;
        let rate = self.row.sample_rate;
        let blocks = (u64::from(rate) * u64::from(TAP_RING_MS) / 1000)
            .div_ceil(TAP_BLOCK_FRAMES as u64)
            .max(2) as usize;
        let (producer, consumer) = crate::engine::touched_ring(blocks);
        let (tap, stats) = MonitorTap::new(engine_source, producer);
        let id = id as u8;
        self.send(ControlToEngine::AttachTap {
            id,
            tap: Box::new(tap),
        })?;
        let generation = self.audio.generation();
        self.audio.taps[usize::from(id)] = Some(generation);
        Ok(TapHandle {
            consumer,
            stats,
            id,
            source,
            sample_rate: rate,
            generation,
            releases: self.audio.releases.clone(),
        })
    }
}

/// The engine slot of a 1-based track index (indices are bounded by `engine.max_tracks`).
fn slot_of(index: u32) -> u16 {
    u16::try_from(index.saturating_sub(1)).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::{Control, ErrorCode};
    use super::*;

    async fn control(dir: &std::path::Path) -> (Control, String) {
        super::super::testing::control_with_session(dir, "streams", 2).await
    }

    /// Polls `ready` (draining the session) until it holds; fails after 5 s.
    async fn until(control: &Control, id: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ready() {
            assert!(Instant::now() < deadline, "condition not reached in 5 s");
            control.session(id).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attach_stream_checks_its_arguments_and_one_stream_per_track() {
        let dir = tempfile::tempdir().unwrap();
        let (control, id) = control(dir.path()).await;
        let rate = control.info().sample_rate;
        let err = control
            .attach_stream("nope", 1, 1, rate)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, ErrorCode::NotFound);
        let err = control.attach_stream(&id, 9, 1, rate).await.err().unwrap();
        assert_eq!(err.code, ErrorCode::NotFound);
        let err = control.attach_stream(&id, 1, 2, rate).await.err().unwrap();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(
            err.message.contains('2') && err.message.contains('1'),
            "{err}"
        );
        let err = control
            .attach_stream(&id, 1, 1, 44_100)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(
            err.message.contains("44100") && err.message.contains(&rate.to_string()),
            "{err}"
        );

        let mut stream = control.attach_stream(&id, 1, 1, rate).await.unwrap();
        let err = control.attach_stream(&id, 1, 1, rate).await.err().unwrap();
        assert_eq!(err.code, ErrorCode::InvalidState);
        let capacity = (STREAM_RING_SECONDS * rate) as usize;
        assert_eq!(stream.free_frames(), capacity);
        // More than the prebuffer: the engine starts taking frames.
        let pushed = stream.push(&vec![0.25; rate as usize / 5]);
        assert_eq!(pushed, rate as usize / 5);
        until(&control, &id, || stream.stats().frames_played() > 0).await;
        // Dropping the handle detaches it: the same track takes a new stream.
        drop(stream);
        let again = control.attach_stream(&id, 1, 1, rate).await.unwrap();
        assert!(!again.is_detached());
        // Removing the track lets go of its stream.
        control.remove_track(&id, 1).await.unwrap();
        until(&control, &id, || again.is_detached()).await;
        control.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn taps_deliver_contiguous_blocks_and_are_limited_per_session() {
        let dir = tempfile::tempdir().unwrap();
        let (control, id) = control(dir.path()).await;
        let err = control
            .attach_tap(&id, MonitorSource::Track(7))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, ErrorCode::NotFound);
        let mut taps = Vec::new();
        for n in 0..MAX_TAPS {
            let source = if n == 0 {
                MonitorSource::Master
            } else {
                MonitorSource::Track(1)
            };
            taps.push(control.attach_tap(&id, source).await.unwrap());
        }
        let err = control
            .attach_tap(&id, MonitorSource::Master)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code, ErrorCode::InvalidState);
        // The virtual graph runs while stopped: the master tap fills with contiguous blocks.
        let mut got: Vec<TapBlock> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 8 {
            assert!(Instant::now() < deadline, "no tap blocks in 5 s");
            got.extend(std::iter::from_fn(|| taps[0].pop()));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for pair in got.windows(2) {
            assert_eq!(
                pair[1].first_frame,
                pair[0].first_frame + TAP_BLOCK_FRAMES as u64
            );
        }
        assert!(
            got.iter()
                .any(|b| b.interleaved().iter().any(|&s| s != 0.0)),
            "the armed tracks' tones are heard"
        );
        // A dropped handle frees its tap id.
        taps.pop();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match control.attach_tap(&id, MonitorSource::Master).await {
                Ok(tap) => {
                    taps.push(tap);
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "tap id not freed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        control.shutdown().await;
    }
}
