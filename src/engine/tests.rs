//! Engine behaviour on the offline backend: mixing, capture, transport, overflow and the marker
//! contract, checked on the samples and markers that come out.

use super::test_rig::{params, ramp, Rig};
use super::*;

const CENTRE: f32 = std::f32::consts::FRAC_1_SQRT_2;

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

fn states(events: &[EngineToControl]) -> Vec<TransportState> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineToControl::State { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

fn rejections(events: &[EngineToControl]) -> Vec<&'static str> {
    events
        .iter()
        .filter_map(|e| match e {
            EngineToControl::Rejected { reason } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn ramp_range(channel: usize, frames: std::ops::Range<u64>) -> Vec<f32> {
    frames.map(|t| ramp(channel, t)).collect()
}

#[test]
fn level_pan_and_mute_shape_the_mix() {
    let mut rig = Rig::standard();
    let mut p = params(1, 0, false);
    p.level = 0.5;
    rig.install(0, p, 1024);
    let (left, right) = rig.run_constant(64, [0.5, 0.0, 0.0, 0.0]);
    assert!(left.iter().all(|&s| close(s, 0.25 * CENTRE)), "{}", left[0]);
    assert!(right.iter().all(|&s| close(s, 0.25 * CENTRE)));

    p.pan = -1.0;
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: p,
        at_frame: None,
    });
    let (left, right) = rig.run_constant(64, [0.5, 0.0, 0.0, 0.0]);
    assert!(left.iter().all(|&s| s == 0.25));
    assert!(right.iter().all(|&s| s == 0.0));

    p.muted = true;
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: p,
        at_frame: None,
    });
    let (left, right) = rig.run_constant(64, [0.5, 0.0, 0.0, 0.0]);
    assert!(left.iter().chain(&right).all(|&s| s == 0.0));
}

#[test]
fn solo_silences_the_other_tracks() {
    let mut rig = Rig::standard();
    let mut a = params(1, 0, false);
    a.pan = -1.0;
    let mut b = params(1, 1, false);
    b.pan = 1.0;
    rig.install(0, a, 64);
    rig.install(1, b, 64);
    let (left, right) = rig.run_constant(16, [0.5, 0.25, 0.0, 0.0]);
    assert_eq!((left[0], right[0]), (0.5, 0.25));
    b.soloed = true;
    rig.send(ControlToEngine::SetTrack {
        track: 1,
        params: b,
        at_frame: None,
    });
    let (left, right) = rig.run_constant(16, [0.5, 0.25, 0.0, 0.0]);
    assert_eq!((left[0], right[0]), (0.0, 0.25));
    // A soloed but muted track is silent, and still silences the others.
    b.muted = true;
    rig.send(ControlToEngine::SetTrack {
        track: 1,
        params: b,
        at_frame: None,
    });
    let (left, right) = rig.run_constant(16, [0.5, 0.25, 0.0, 0.0]);
    assert_eq!((left[0], right[0]), (0.0, 0.0));
}

#[test]
fn monitoring_modes_decide_what_is_heard() {
    let mut rig = Rig::standard();
    let mut p = params(1, 0, false);
    p.pan = -1.0;
    p.monitoring = Monitoring::Auto;
    rig.install(0, p, 64);
    let heard = |rig: &mut Rig| rig.run_constant(8, [0.5, 0.0, 0.0, 0.0]).0[0];
    assert_eq!(heard(&mut rig), 0.0, "auto, unarmed");
    p.armed = true;
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: p,
        at_frame: None,
    });
    assert_eq!(heard(&mut rig), 0.5, "auto, armed");
    p.monitoring = Monitoring::Off;
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: p,
        at_frame: None,
    });
    assert_eq!(heard(&mut rig), 0.0, "off, armed");
    p.monitoring = Monitoring::Input;
    p.armed = false;
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: p,
        at_frame: None,
    });
    assert_eq!(heard(&mut rig), 0.5, "input, unarmed");
}

#[test]
fn stereo_track_pans_each_side_with_the_same_law() {
    let mut rig = Rig::standard();
    let mut p = params(2, 1, false);
    p.level = 2.0;
    p.pan = 0.5;
    rig.install(0, p, 64);
    let (left, right) = rig.run_constant(8, [0.0, 0.25, 0.125, 0.0]);
    let (gl, gr) = pan_gains(0.5);
    assert!(close(left[0], 0.25 * 2.0 * gl));
    assert!(close(right[0], 0.125 * 2.0 * gr));
}

#[test]
fn capture_is_pre_fader_with_input_gain() {
    let mut rig = Rig::standard();
    let mut p = params(1, 2, true);
    p.input_gain = 0.5;
    p.level = 0.1;
    p.pan = 1.0;
    p.muted = true;
    rig.install(0, p, 4096);
    rig.send(ControlToEngine::Record { at_frame: None });
    for _ in 0..3 {
        let (left, right) = rig.run(64);
        assert!(
            left.iter().chain(&right).all(|&s| s == 0.0),
            "muted in the mix"
        );
    }
    rig.send(ControlToEngine::Stop { at_frame: None });
    rig.run(64);
    rig.writer.drain();
    let take = &rig.writer.finished[0][0];
    let expected: Vec<f32> = (0..192).map(|t| ramp(2, t) * 0.5).collect();
    assert_eq!(take.samples, expected);
    assert_eq!(take.length, Some(192));
}

#[test]
fn record_at_frame_is_sample_accurate() {
    let mut rig = Rig::standard();
    rig.install(0, params(1, 0, true), 4096);
    rig.send(ControlToEngine::Play);
    rig.run(64);
    rig.run(64);
    // A frame beyond this period waits at the head of the queue.
    rig.send(ControlToEngine::Record {
        at_frame: Some(250),
    });
    rig.run(64); // 128..192
    assert_eq!(rig.shared().state(), TransportState::Playing);
    rig.run(64); // 192..256: records from 250
    rig.send(ControlToEngine::Stop {
        at_frame: Some(300),
    });
    rig.run(64); // 256..320: stops at 300
    rig.run(64);
    assert_eq!(rig.shared().position(), 300);
    rig.writer.drain();
    let take = &rig.writer.finished[0][0];
    assert_eq!(take.frame, 250);
    assert_eq!(take.samples, ramp_range(0, 250..300));
    assert_eq!(rig.shared().recorded_frames(), 50);
    let events = rig.events();
    assert!(events.iter().any(|e| matches!(
        e,
        EngineToControl::TakeStarted {
            track: 0,
            frame: 250
        }
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        EngineToControl::TakeEnded {
            track: 0,
            frame: 300,
            frames: 50
        }
    )));
}

#[test]
fn past_at_frame_applies_at_once_and_arming_splits_the_period() {
    let mut rig = Rig::standard();
    rig.install(0, params(1, 0, false), 4096);
    rig.send(ControlToEngine::Play);
    rig.run(64);
    rig.send(ControlToEngine::Record { at_frame: Some(10) });
    rig.run(64); // applies at 64
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: params(1, 0, true),
        at_frame: Some(150),
    });
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: params(1, 0, false),
        at_frame: Some(170),
    });
    rig.run(64); // 128..192: armed at 150, disarmed at 170
    rig.run(64);
    rig.writer.drain();
    let take = &rig.writer.finished[0][0];
    assert_eq!(take.frame, 150);
    assert_eq!(take.samples, ramp_range(0, 150..170));
    assert_eq!(rig.shared().state(), TransportState::Recording);
}

#[test]
fn longer_periods_than_max_period_are_processed_in_chunks() {
    let mut rig = Rig::new(EngineConfig::new(48_000, 32, 2));
    let mut p = params(1, 0, true);
    p.pan = -1.0;
    rig.install(0, p, 4096);
    rig.send(ControlToEngine::Record { at_frame: None });
    rig.send(ControlToEngine::Stop { at_frame: Some(90) });
    let (left, _) = rig.run(100);
    assert_eq!(left, ramp_range(0, 0..100));
    assert_eq!(rig.shared().position(), 90);
    rig.writer.drain();
    assert_eq!(rig.writer.finished[0][0].samples, ramp_range(0, 0..90));
}

#[test]
fn pause_and_resume_continue_the_same_take_without_gap_or_duplicate() {
    let mut rig = Rig::standard();
    rig.install(0, params(1, 0, true), 4096);
    rig.install(1, params(2, 1, true), 4096);
    rig.send(ControlToEngine::Record { at_frame: None });
    rig.run(64);
    rig.run(64);
    rig.send(ControlToEngine::Pause);
    rig.run(64);
    rig.run(64);
    assert_eq!(rig.shared().position(), 128);
    rig.send(ControlToEngine::Resume);
    rig.run(64);
    rig.send(ControlToEngine::Stop { at_frame: None });
    rig.run(64);
    rig.writer.drain();
    let mono = &rig.writer.finished[0];
    assert_eq!(mono.len(), 1, "one take");
    let mut expected = ramp_range(0, 0..128);
    expected.extend(ramp_range(0, 256..320));
    assert_eq!(mono[0].samples, expected);
    assert_eq!(mono[0].length, Some(192));
    assert!(mono[0].gaps.is_empty());
    let stereo = &rig.writer.finished[1][0];
    let frames: Vec<u64> = (0..128).chain(256..320).collect();
    let expected: Vec<f32> = frames
        .iter()
        .flat_map(|&t| [ramp(1, t), ramp(2, t)])
        .collect();
    assert_eq!(stereo.samples, expected);
    assert_eq!(rig.shared().recorded_frames(), 192);
    assert_eq!(rig.shared().position(), 192);
    let events = rig.events();
    assert_eq!(
        states(&events),
        [
            TransportState::Recording,
            TransportState::Paused,
            TransportState::Recording,
            TransportState::Stopped
        ]
    );
}

#[test]
fn full_ring_becomes_a_gap_with_the_right_position_and_length() {
    let mut rig = Rig::standard();
    rig.install(0, params(1, 0, true), 100);
    rig.send(ControlToEngine::Record { at_frame: None });
    rig.run(64); // 64 delivered
    rig.run(64); // 36 delivered, gap from 100
    rig.run(64); // ring still full: gap grows to 92
    assert_eq!(rig.shared().dropped_frames(), 92);
    assert_eq!(rig.shared().capture_headroom_min(), 0.0);
    rig.writer.drain();
    rig.run(64); // the gap marker, then 64 samples
    rig.send(ControlToEngine::Stop { at_frame: None });
    rig.run(64);
    rig.writer.drain();
    let take = &rig.writer.finished[0][0];
    assert_eq!(take.gaps, [(100, 92)]);
    let mut expected = ramp_range(0, 0..100);
    expected.extend(std::iter::repeat_n(0.0, 92));
    expected.extend(ramp_range(0, 192..256));
    assert_eq!(take.samples, expected);
    assert_eq!(take.length, Some(256));
    assert_eq!(
        rig.writer.log,
        [
            CaptureMarker::TakeStart { track: 0, frame: 0 },
            CaptureMarker::Gap {
                track: 0,
                at: 100,
                frames: 92
            },
            CaptureMarker::TakeEnd { track: 0, at: 256 },
        ]
    );
    let overflows: Vec<(u64, u64)> = rig
        .events()
        .iter()
        .filter_map(|e| match e {
            EngineToControl::Overflow {
                track: 0,
                at,
                frames,
            } => Some((*at, *frames)),
            _ => None,
        })
        .collect();
    assert_eq!(overflows, [(100, 92)]);
}

#[test]
fn stereo_capture_writes_whole_frames_only() {
    let mut rig = Rig::standard();
    rig.install(0, params(2, 0, true), 5);
    rig.send(ControlToEngine::Record { at_frame: None });
    rig.run(4);
    rig.send(ControlToEngine::Stop { at_frame: None });
    rig.run(4);
    rig.writer.drain();
    let take = &rig.writer.finished[0][0];
    assert_eq!(take.gaps, [(2, 2)]);
    assert_eq!(
        take.samples,
        [
            ramp(0, 0),
            ramp(1, 0),
            ramp(0, 1),
            ramp(1, 1),
            0.0,
            0.0,
            0.0,
            0.0
        ]
    );
}

#[test]
fn full_marker_queue_delays_markers_in_contract_order() {
    let mut config = EngineConfig::new(48_000, 64, 3);
    config.marker_capacity = 2;
    let mut rig = Rig::new(config);
    for track in 0..3 {
        rig.install(track, params(1, track, true), 4096);
    }
    rig.send(ControlToEngine::Record { at_frame: None });
    rig.run(64); // track 2's TakeStart does not fit: its frames become a gap
    assert_eq!(rig.shared().dropped_frames(), 64);
    rig.send(ControlToEngine::Stop { at_frame: None });
    rig.run(64);
    rig.send(ControlToEngine::Record { at_frame: None });
    rig.run(64);
    let events = rig.events();
    assert_eq!(
        rejections(&events),
        ["capture writer is behind: take end still pending"]
    );
    assert_eq!(states(&events).last(), Some(&TransportState::Stopped));
    let ended = events
        .iter()
        .filter(|e| matches!(e, EngineToControl::TakeEnded { frames: 64, .. }))
        .count();
    assert_eq!(ended, 3, "every take reports its end at once");
    // The writer catches up two markers at a time; the rest follow, one period each.
    for _ in 0..4 {
        rig.writer.drain();
        rig.run(64);
    }
    rig.writer.drain();
    for track in 0..2 {
        let take = &rig.writer.finished[track][0];
        assert_eq!(take.samples, ramp_range(track, 0..64));
        assert_eq!(take.length, Some(64));
    }
    let late = &rig.writer.finished[2][0];
    assert_eq!(late.samples, vec![0.0; 64]);
    assert_eq!(late.gaps, [(0, 64)]);
    let track2: Vec<CaptureMarker> = rig
        .writer
        .log
        .iter()
        .copied()
        .filter(|m| {
            matches!(
                m,
                CaptureMarker::TakeStart { track: 2, .. }
                    | CaptureMarker::Gap { track: 2, .. }
                    | CaptureMarker::TakeEnd { track: 2, .. }
            )
        })
        .collect();
    assert_eq!(
        track2,
        [
            CaptureMarker::TakeStart { track: 2, frame: 0 },
            CaptureMarker::Gap {
                track: 2,
                at: 0,
                frames: 64
            },
            CaptureMarker::TakeEnd { track: 2, at: 64 },
        ]
    );
    // Caught up: recording works again.
    rig.send(ControlToEngine::Record { at_frame: None });
    rig.run(64);
    assert_eq!(rig.shared().state(), TransportState::Recording);
}

#[test]
fn removed_track_is_handed_back_after_its_take_end_even_with_full_queues() {
    let mut config = EngineConfig::new(48_000, 64, 2);
    config.event_capacity = 2;
    let mut rig = Rig::new(config);
    rig.install(0, params(1, 0, true), 4096);
    rig.send(ControlToEngine::Record { at_frame: None }); // State + TakeStarted: queue full
    rig.run(64);
    rig.send(ControlToEngine::RemoveTrack { track: 0 });
    rig.send(ControlToEngine::InstallTrack {
        track: 0,
        slot: Box::new(TrackSlot {
            params: params(1, 1, false),
            capture: rtrb::RingBuffer::new(16).0,
        }),
    });
    rig.run(64);
    assert_eq!(rig.shared().event_overflows(), 1, "TakeEnded was dropped");
    rig.writer.drain();
    assert_eq!(rig.writer.finished[0][0].length, Some(64));
    // The retired slot waits for room; the new install waits for the slot.
    let first = rig.events();
    assert_eq!(first.len(), 2);
    rig.run(64);
    let retired: Vec<u16> = rig
        .events()
        .iter()
        .filter_map(|e| match e {
            EngineToControl::TrackRetired { track, slot } => {
                assert_eq!(slot.params.input[0], 0, "the removed track comes back");
                Some(*track)
            }
            _ => None,
        })
        .collect();
    assert_eq!(retired, [0]);
    // The install applies now: the mix hears input 1.
    let mut p = params(1, 1, false);
    p.pan = -1.0;
    rig.run(8);
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: p,
        at_frame: None,
    });
    let (left, _) = rig.run_constant(8, [0.0, 0.5, 0.0, 0.0]);
    assert_eq!(left[0], 0.5);
}

#[test]
fn transport_rejects_what_makes_no_sense_and_changes_nothing() {
    let mut rig = Rig::standard();
    rig.install(0, params(1, 0, true), 1 << 16);
    rig.send(ControlToEngine::Pause);
    rig.send(ControlToEngine::Resume);
    rig.send(ControlToEngine::Stop { at_frame: None });
    rig.send(ControlToEngine::Seek { frame: 1000 });
    rig.run(16);
    assert_eq!(rig.shared().position(), 1000);
    rig.send(ControlToEngine::Play);
    rig.send(ControlToEngine::Play);
    rig.send(ControlToEngine::Seek { frame: 500 });
    rig.send(ControlToEngine::Pause);
    rig.send(ControlToEngine::Seek { frame: 400 }); // paused from playing: allowed
    rig.send(ControlToEngine::Record { at_frame: None });
    rig.run(16);
    assert_eq!(rig.shared().position(), 400);
    rig.send(ControlToEngine::Resume);
    rig.send(ControlToEngine::Record { at_frame: None });
    rig.send(ControlToEngine::Record { at_frame: None });
    rig.send(ControlToEngine::Seek { frame: 0 });
    rig.run(16);
    rig.send(ControlToEngine::Pause);
    rig.send(ControlToEngine::Seek { frame: 0 });
    rig.send(ControlToEngine::RemoveTrack { track: 3 });
    rig.send(ControlToEngine::SetTrack {
        track: 9,
        params: params(1, 0, true),
        at_frame: None,
    });
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: params(2, 0, true),
        at_frame: None,
    });
    rig.run(16);
    assert_eq!(rig.shared().position(), 416);
    let events = rig.events();
    assert_eq!(
        rejections(&events),
        [
            "not rolling",
            "not paused",
            "already stopped",
            "already playing",
            "paused: resume or stop first",
            "already recording",
            "cannot seek while recording",
            "cannot seek while recording",
            "no track in that slot",
            "no track in that slot",
            "a track's channel count cannot change",
        ]
    );
    assert_eq!(
        states(&events),
        [
            TransportState::Playing,
            TransportState::Paused,
            TransportState::Playing,
            TransportState::Recording,
            TransportState::Paused,
        ]
    );
    assert_eq!(rig.shared().state(), TransportState::Paused);
}

#[test]
fn invalid_install_is_handed_back() {
    let mut rig = Rig::new(EngineConfig::new(48_000, 64, 1));
    rig.install(0, params(1, 0, false), 16);
    for track in [0, 5] {
        rig.send(ControlToEngine::InstallTrack {
            track,
            slot: Box::new(TrackSlot {
                params: params(1, 3, false),
                capture: rtrb::RingBuffer::new(16).0,
            }),
        });
    }
    rig.run(16);
    let events = rig.events();
    assert_eq!(
        rejections(&events),
        ["track slot occupied", "track slot out of range"]
    );
    let returned: Vec<(u16, u16)> = events
        .iter()
        .filter_map(|e| match e {
            EngineToControl::TrackRetired { track, slot } => Some((*track, slot.params.input[0])),
            _ => None,
        })
        .collect();
    assert_eq!(returned, [(0, 3), (5, 3)]);
}

#[test]
fn meters_hold_peaks_until_read_and_count_clips() {
    let mut rig = Rig::standard();
    let mut p = params(1, 0, false);
    p.pan = -1.0;
    p.input_gain = 2.0;
    rig.install(0, p, 64);
    rig.run_constant(64, [0.25, 0.0, 0.0, 0.0]);
    rig.run_constant(64, [0.125, 0.0, 0.0, 0.0]);
    let (peak, rms) = rig.shared().track_meter(0);
    assert_eq!(peak, 0.5, "post input gain, held");
    assert!(rms > 0.0 && rms < 0.5);
    assert_eq!(rig.shared().master_meter()[0].0, 0.5);
    assert_eq!(rig.shared().master_meter()[1].0, 0.0, "reset by the read");
    assert_eq!(rig.shared().clip_count(), 0);
    rig.run_constant(64, [0.0, 0.0, 0.0, 0.0]);
    assert_eq!(rig.shared().track_meter(0).0, 0.0, "reset by the read");
    // Full scale after input gain clips on the track and on the master, counted apart.
    rig.run_constant(10, [0.5, 0.0, 0.0, 0.0]);
    assert_eq!(rig.shared().clip_count(), 10);
    assert_eq!(rig.shared().master_clip_count(), 10);
    // RMS of a steady signal settles on its level.
    for _ in 0..50 {
        rig.run_constant(4096, [0.2, 0.0, 0.0, 0.0]);
    }
    let (_, rms) = rig.shared().track_meter(0);
    assert!((rms - 0.4).abs() < 1e-3, "rms {rms}");
}

// ---- inbound streams and monitor taps ----

/// Distinct, exactly representable sample values: `(k + 1) / 4096`.
fn known(k: usize) -> f32 {
    (k as f32 + 1.0) / 4096.0
}

fn blocks(ring: &mut rtrb::Consumer<TapBlock>) -> Vec<TapBlock> {
    std::iter::from_fn(|| ring.pop().ok()).collect()
}

#[test]
fn stream_samples_land_in_the_capture_bit_exact_and_replace_the_input() {
    let mut rig = Rig::standard();
    let mut p = params(2, 0, true);
    p.input_gain = 0.5;
    rig.install(0, p, 1 << 14);
    let (mut producer, stats) = rig.attach_stream(0, 2, 32, 1024);
    let sent: Vec<f32> = (0..400).map(known).collect();
    producer.push_entire_slice(&sent).unwrap();
    rig.send(ControlToEngine::Record { at_frame: None });
    for _ in 0..4 {
        rig.run(64);
    }
    rig.send(ControlToEngine::Stop { at_frame: None });
    rig.run(64);
    rig.writer.drain();
    let take = &rig.writer.finished[0][0];
    assert_eq!(take.length, Some(256));
    // 200 stereo frames times the input gain, then silence: never the ramp on the inputs.
    let expected: Vec<f32> = sent.iter().map(|s| s * 0.5).collect();
    assert_eq!(take.samples[..400], expected[..]);
    assert!(take.samples[400..].iter().all(|&s| s == 0.0));
    assert_eq!(stats.frames_played(), 200);
    assert_eq!(stats.underruns(), 1, "ran dry in the fourth period");
    assert!(!stats.flowing(), "priming again after the underrun");
}

#[test]
fn a_stream_primes_until_its_prebuffer_then_flows_and_primes_again_after_an_underrun() {
    let mut rig = Rig::standard();
    let mut p = params(1, 0, false);
    p.pan = -1.0;
    rig.install(0, p, 64);
    let (mut producer, stats) = rig.attach_stream(0, 1, 100, 1024);
    let sent: Vec<f32> = (0..140).map(known).collect();
    producer.push_entire_slice(&sent[..50]).unwrap();
    let (left, _) = rig.run(64);
    assert!(left.iter().all(|&s| s == 0.0), "priming: nothing read");
    assert_eq!(producer.slots(), 1024 - 50, "the 50 frames still wait");
    producer.push_entire_slice(&sent[50..110]).unwrap();
    let (left, _) = rig.run(64);
    assert_eq!(left, sent[..64], "110 >= 100 frames: flowing");
    let (left, _) = rig.run(64);
    assert_eq!(left[..46], sent[64..110]);
    assert!(left[46..].iter().all(|&s| s == 0.0), "padded with silence");
    assert_eq!(stats.underruns(), 1);
    producer.push_entire_slice(&sent[110..140]).unwrap();
    let (left, _) = rig.run(64);
    assert!(
        left.iter().all(|&s| s == 0.0),
        "priming again: 30 < 100 frames"
    );
    assert_eq!(stats.frames_played(), 110);
    assert_eq!(stats.underruns(), 1, "no underrun counted while priming");
}

#[test]
fn a_tap_of_the_master_equals_the_master_output_from_the_frame_it_was_attached() {
    let mut rig = Rig::standard();
    let mut a = params(1, 0, false);
    a.pan = -0.3;
    rig.install(0, a, 64);
    rig.install(1, params(2, 1, false), 64);
    let mut master = Vec::new();
    let (l, r) = rig.run(100);
    master.extend(l.into_iter().zip(r));
    let (mut ring, stats) = rig.attach_tap(3, TapSource::Master, 64);
    for frames in [100, 37, 500, 300] {
        let (l, r) = rig.run(frames);
        master.extend(l.into_iter().zip(r));
    }
    let got = blocks(&mut ring);
    assert_eq!(got.len(), 937 / TAP_BLOCK_FRAMES, "only whole blocks");
    assert_eq!(stats.pushed_blocks(), got.len() as u64);
    for (n, block) in got.iter().enumerate() {
        let first = 100 + (n * TAP_BLOCK_FRAMES) as u64;
        assert_eq!(block.first_frame, first);
        assert_eq!(usize::from(block.frames), TAP_BLOCK_FRAMES);
        for (k, pair) in block.interleaved().chunks_exact(2).enumerate() {
            let (l, r) = master[first as usize + k];
            assert_eq!((pair[0], pair[1]), (l, r), "frame {}", first as usize + k);
        }
    }
    // Taps run while the transport is stopped: the graph frame advanced without rolling.
    assert_eq!(rig.shared().position(), 0);
}

#[test]
fn a_track_tap_follows_level_pan_and_mute_and_ignores_the_other_tracks() {
    let mut rig = Rig::standard();
    let mut p = params(1, 0, false);
    p.level = 0.5;
    p.pan = -1.0;
    rig.install(0, p, 64);
    rig.install(1, params(1, 1, false), 64);
    let (mut ring, _) = rig.attach_tap(0, TapSource::Track(0), 64);
    rig.run_constant(256, [0.5, 0.25, 0.0, 0.0]);
    p.pan = 0.0;
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: p,
        at_frame: None,
    });
    rig.run_constant(256, [0.5, 0.25, 0.0, 0.0]);
    p.muted = true;
    rig.send(ControlToEngine::SetTrack {
        track: 0,
        params: p,
        at_frame: None,
    });
    rig.run_constant(256, [0.5, 0.25, 0.0, 0.0]);
    let got = blocks(&mut ring);
    assert_eq!(got.len(), 3);
    let pairs = |b: &TapBlock| -> Vec<(f32, f32)> {
        b.interleaved()
            .chunks_exact(2)
            .map(|p| (p[0], p[1]))
            .collect()
    };
    assert!(
        pairs(&got[0]).iter().all(|&p| p == (0.25, 0.0)),
        "hard left"
    );
    assert!(pairs(&got[1])
        .iter()
        .all(|&(l, r)| close(l, 0.25 * CENTRE) && close(r, 0.25 * CENTRE)));
    assert!(pairs(&got[2]).iter().all(|&p| p == (0.0, 0.0)), "muted");
    // A tap of an empty slot carries silence, not garbage.
    let (mut empty, _) = rig.attach_tap(1, TapSource::Track(3), 8);
    rig.run_constant(256, [0.5, 0.25, 0.0, 0.0]);
    let got = blocks(&mut empty);
    assert_eq!(got.len(), 1);
    assert!(got[0].interleaved().iter().all(|&s| s == 0.0));
}

#[test]
fn a_full_tap_ring_drops_whole_blocks_and_the_gap_shows_in_first_frame() {
    let mut rig = Rig::standard();
    rig.install(0, params(1, 0, false), 64);
    let (mut ring, stats) = rig.attach_tap(0, TapSource::Master, 2);
    for _ in 0..4 {
        rig.run(256);
    }
    assert_eq!(stats.dropped_blocks(), 2);
    let got = blocks(&mut ring);
    assert_eq!(got.len(), 2);
    rig.run(256);
    let later = blocks(&mut ring);
    assert_eq!(later[0].first_frame, 4 * 256, "blocks 2 and 3 are missing");
}

#[test]
fn streams_and_taps_come_back_when_detached_refused_or_orphaned() {
    let mut rig = Rig::standard();
    rig.install(0, params(1, 0, false), 64);
    let retired = |events: &[EngineToControl]| -> (Vec<u16>, Vec<u8>) {
        let mut streams = Vec::new();
        let mut taps = Vec::new();
        for event in events {
            match event {
                EngineToControl::StreamRetired { track, .. } => streams.push(*track),
                EngineToControl::TapRetired { id, .. } => taps.push(*id),
                _ => {}
            }
        }
        (streams, taps)
    };
    let (_p, stats) = rig.attach_stream(0, 1, 1, 64);
    let (_r, _) = rig.attach_tap(2, TapSource::Master, 4);
    rig.run(64);
    assert!(rig.events().is_empty());
    // Refused: a second stream, a stream on an empty slot, a stereo stream on a mono track,
    // a tap id in use or out of range.
    let _ = rig.attach_stream(0, 1, 1, 64);
    let _ = rig.attach_stream(2, 1, 1, 64);
    rig.send(ControlToEngine::DetachStream { track: 0 });
    let _ = rig.attach_stream(0, 2, 1, 64);
    let _ = rig.attach_tap(2, TapSource::Master, 4);
    let _ = rig.attach_tap(MAX_TAPS as u8, TapSource::Master, 4);
    rig.run(64);
    let events = rig.events();
    assert_eq!(
        rejections(&events),
        [
            "the track already has a stream",
            "no track in that slot",
            "the stream's channel count differs from the track's",
            "tap id in use",
            "tap id out of range"
        ]
    );
    assert_eq!(
        retired(&events),
        (vec![0, 2, 0, 0], vec![2, MAX_TAPS as u8])
    );
    drop(events);
    assert_eq!(
        std::sync::Arc::strong_count(&stats),
        1,
        "the detached stream's box was handed back and dropped here"
    );
    // Orphaned: removing the track hands its stream and its taps back with the slot; a tap of
    // another track stays.
    let _ = rig.attach_stream(0, 1, 1, 64);
    let (_t, _) = rig.attach_tap(5, TapSource::Track(0), 4);
    let (_u, _) = rig.attach_tap(6, TapSource::Track(1), 4);
    rig.run(64);
    rig.send(ControlToEngine::RemoveTrack { track: 0 });
    rig.send(ControlToEngine::DetachTap { id: 2 });
    rig.run(64);
    let events = rig.events();
    assert_eq!(retired(&events), (vec![0], vec![5, 2]));
    assert!(events
        .iter()
        .any(|e| matches!(e, EngineToControl::TrackRetired { track: 0, .. })));
}

/// How many of the pages `slots` spans are resident (by `mincore`), and how many it spans.
fn resident_pages<T>(slots: &[T]) -> (usize, usize) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let start = slots.as_ptr() as usize / page * page;
    let end = (slots.as_ptr() as usize + std::mem::size_of_val(slots)).div_ceil(page) * page;
    let pages = (end - start) / page;
    let mut residency = vec![0u8; pages];
    // SAFETY: `start..end` covers only pages of the live allocation behind `slots`, and
    // `residency` has one byte per page, as mincore writes.
    let rc = unsafe {
        libc::mincore(
            start as *mut libc::c_void,
            end - start,
            residency.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    (residency.iter().filter(|&&r| r & 1 == 1).count(), pages)
}

#[test]
fn touched_ring_is_resident_and_empty() {
    // 64 MiB: above glibc's largest mmap threshold, so a fresh mapping whose pages are not
    // resident until written (the untouched ring below shows it).
    const SLOTS: usize = 16 << 20;
    let (mut producer, consumer) = touched_ring::<f32>(SLOTS);
    assert_eq!(consumer.slots(), 0, "nothing was committed");
    assert_eq!(producer.slots(), SLOTS);
    let mut chunk = producer.write_chunk_uninit(SLOTS).unwrap();
    let (first, second) = chunk.as_mut_slices();
    assert!(second.is_empty());
    let (resident, pages) = resident_pages(first);
    assert_eq!(
        resident, pages,
        "every page of the touched ring is resident"
    );

    let (mut untouched, _consumer) = rtrb::RingBuffer::<f32>::new(SLOTS);
    let mut chunk = untouched.write_chunk_uninit(SLOTS).unwrap();
    let (resident, pages) = resident_pages(chunk.as_mut_slices().0);
    assert!(
        resident < pages / 2,
        "a plain ring starts mostly unmapped ({resident} of {pages} pages resident)"
    );
}

#[test]
fn touched_zeros_are_resident_and_zero() {
    // 36 MiB: above glibc's largest mmap threshold (32 MiB), so a fresh mapping, like the
    // plain allocation below, not resident until written.
    const SAMPLES: usize = 9 << 20;
    let buffer = touched_zeros(SAMPLES);
    assert_eq!(buffer.len(), SAMPLES);
    let (resident, pages) = resident_pages(&buffer);
    assert_eq!(resident, pages, "every page of the buffer is resident");
    assert!(buffer.iter().all(|&s| s == 0.0));

    let mut plain = Vec::<f32>::with_capacity(SAMPLES);
    let (resident, pages) = resident_pages(plain.spare_capacity_mut());
    assert!(
        resident < pages / 2,
        "a plain allocation starts mostly unmapped ({resident} of {pages} pages resident)"
    );
}
