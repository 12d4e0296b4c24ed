//! Cost of one `Processor::process` call with every track armed and recording a mono tone.
//!
//! Sizes: 8, 32 and 64 tracks × 64 and 256 frames. Capture rings are drained outside the timed
//! section (`iter_custom` times only `process`). After each size the bench prints the mean time
//! per period and its share of the period's real time at 48 kHz.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use overdub::backend::virtual_graph::ToneGenerator;
use overdub::backend::PlanarInputs;
use overdub::engine::{
    engine, CaptureMarker, ControlToEngine, EngineConfig, EngineHandle, Monitoring, ProcessContext,
    Processor, TrackParams, TrackSlot,
};

const SAMPLE_RATE: u32 = 48_000;
/// First "Virtual Input N" channel of the virtual graph.
const FIRST_INPUT: usize = 5;

struct Setup {
    processor: Processor,
    handle: EngineHandle,
    markers: rtrb::Consumer<CaptureMarker>,
    rings: Vec<rtrb::Consumer<f32>>,
    inputs: PlanarInputs,
    left: Vec<f32>,
    right: Vec<f32>,
    frames: usize,
}

impl Setup {
    fn new(tracks: usize, frames: usize) -> Setup {
        let (processor, mut handle, markers) =
            engine(EngineConfig::new(SAMPLE_RATE, frames, tracks));
        let mut rings = Vec::with_capacity(tracks);
        for track in 0..tracks {
            let (capture, ring) = rtrb::RingBuffer::new(16 * frames);
            rings.push(ring);
            let input = u16::try_from(FIRST_INPUT + track).expect("few tracks");
            let params = TrackParams {
                channels: 1,
                input: [input, input],
                armed: true,
                input_gain: 1.0,
                level: 0.8,
                pan: (track as f32 / tracks as f32) * 2.0 - 1.0,
                muted: false,
                soloed: false,
                monitoring: Monitoring::Auto,
            };
            let slot = Box::new(TrackSlot { params, capture });
            let track = u16::try_from(track).expect("few tracks");
            assert!(handle
                .send(ControlToEngine::InstallTrack { track, slot })
                .is_ok());
        }
        assert!(handle
            .send(ControlToEngine::Record { at_frame: None })
            .is_ok());
        let mut inputs = PlanarInputs::new(FIRST_INPUT + tracks, frames);
        inputs.set_frames(frames);
        ToneGenerator::new(FIRST_INPUT + tracks, SAMPLE_RATE, frames).fill(0, &mut inputs);
        let mut setup = Setup {
            processor,
            handle,
            markers,
            rings,
            inputs,
            left: vec![0.0; frames],
            right: vec![0.0; frames],
            frames,
        };
        setup.process();
        setup.drain();
        setup
    }

    fn process(&mut self) {
        self.processor.process(&mut ProcessContext {
            frames: self.frames,
            inputs: &self.inputs,
            master_left: &mut self.left,
            master_right: &mut self.right,
            track_outputs: None,
        });
    }

    /// Empties the capture rings and queues, as the writer and control threads would.
    fn drain(&mut self) {
        for ring in &mut self.rings {
            let available = ring.slots();
            if let Ok(chunk) = ring.read_chunk(available) {
                chunk.commit_all();
            }
        }
        while self.markers.pop().is_ok() {}
        while self.handle.pop_event().is_some() {}
    }
}

fn bench_process(c: &mut Criterion) {
    let mut group = c.benchmark_group("process");
    for tracks in [8usize, 32, 64] {
        for frames in [64usize, 256] {
            let mut setup = Setup::new(tracks, frames);
            let mut total = Duration::ZERO;
            let mut periods: u64 = 0;
            let id = BenchmarkId::new(format!("{tracks}_tracks"), format!("{frames}_frames"));
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        setup.drain();
                        let start = Instant::now();
                        setup.process();
                        timed += start.elapsed();
                    }
                    total += timed;
                    periods += iters;
                    timed
                });
            });
            assert_eq!(
                setup.processor.shared().dropped_frames(),
                0,
                "rings never filled"
            );
            let mean = total.as_secs_f64() / periods.max(1) as f64;
            let period = frames as f64 / f64::from(SAMPLE_RATE);
            println!(
                "process {tracks} tracks x {frames} frames: {:.2} us per period = {:.2} % of the \
                 {:.0} us period at 48 kHz",
                mean * 1e6,
                100.0 * mean / period,
                period * 1e6
            );
        }
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_process(&mut criterion);
    criterion.final_summary();
}
