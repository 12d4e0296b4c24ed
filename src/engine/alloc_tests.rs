//! `process` under the allocation detector, through every command path. The test binary's
//! global allocator is `assert_no_alloc::AllocDisabler` (see `mod.rs`): an allocation or free
//! inside `assert_no_alloc` aborts the whole test binary, which fails the run.
//! `detector_is_armed` proves that a violation really does kill the process.

use assert_no_alloc::assert_no_alloc;

use super::test_rig::{fill_ramp, params, Rig};
use super::*;

/// Runs one period of `frames` ramp frames with allocation forbidden.
fn run_checked(rig: &mut Rig, frames: usize) {
    let backend = &mut rig.backend;
    assert_no_alloc(|| {
        backend.run_period(frames, fill_ramp);
    });
}

fn slot(p: TrackParams, ring_samples: usize) -> Box<TrackSlot> {
    Box::new(TrackSlot {
        params: p,
        capture: rtrb::RingBuffer::new(ring_samples).0,
    })
}

#[test]
fn process_never_allocates_on_any_command_path() {
    let mut config = EngineConfig::new(48_000, 64, 4);
    config.event_capacity = 8;
    config.marker_capacity = 3;
    let mut rig = Rig::new(config);
    let send = |rig: &mut Rig, command| rig.send(command);

    // Install (mono with a tiny ring, stereo), mix, meters.
    rig.install(0, params(1, 0, true), 100);
    rig.install(1, params(2, 1, true), 1 << 14);
    run_checked(&mut rig, 64);
    // Invalid installs: occupied and out of range (handed back).
    send(
        &mut rig,
        ControlToEngine::InstallTrack {
            track: 0,
            slot: slot(params(1, 0, false), 8),
        },
    );
    send(
        &mut rig,
        ControlToEngine::InstallTrack {
            track: 9,
            slot: slot(params(1, 0, false), 8),
        },
    );
    run_checked(&mut rig, 64);
    rig.events();

    // Record, at_frame split, ring overflow and gap, a longer period than max_period.
    send(&mut rig, ControlToEngine::Record { at_frame: None });
    run_checked(&mut rig, 64);
    send(
        &mut rig,
        ControlToEngine::SetTrack {
            track: 1,
            params: params(2, 1, false),
            at_frame: Some(100),
        },
    );
    send(
        &mut rig,
        ControlToEngine::SetTrack {
            track: 1,
            params: params(2, 1, true),
            at_frame: Some(110),
        },
    );
    run_checked(&mut rig, 200);
    assert!(
        rig.shared().dropped_frames() > 0,
        "the mono ring overflowed"
    );
    rig.writer.drain();
    run_checked(&mut rig, 64); // gap marker + overflow event

    // Pause, seek rejected, resume, play (ends takes), seek accepted, stop.
    send(&mut rig, ControlToEngine::Pause);
    send(&mut rig, ControlToEngine::Seek { frame: 0 });
    run_checked(&mut rig, 64);
    send(&mut rig, ControlToEngine::Resume);
    run_checked(&mut rig, 64);
    send(&mut rig, ControlToEngine::Play);
    send(&mut rig, ControlToEngine::Seek { frame: 10 });
    run_checked(&mut rig, 64);
    send(&mut rig, ControlToEngine::Stop { at_frame: Some(20) });
    run_checked(&mut rig, 64);
    rig.writer.drain();
    rig.events();

    // Full marker queue: takes start and end with markers pending.
    send(&mut rig, ControlToEngine::Record { at_frame: None });
    run_checked(&mut rig, 64);
    send(&mut rig, ControlToEngine::Stop { at_frame: None });
    send(&mut rig, ControlToEngine::Record { at_frame: None }); // rejected: writer behind
    run_checked(&mut rig, 64);
    assert!(rig
        .events()
        .iter()
        .any(|e| matches!(e, EngineToControl::Rejected { .. })));

    // Full event queue: fill it, then remove a track (parked) and reinstall (waits).
    for _ in 0..8 {
        send(&mut rig, ControlToEngine::Pause); // rejected: fills the event queue
    }
    run_checked(&mut rig, 64);
    send(&mut rig, ControlToEngine::RemoveTrack { track: 0 });
    send(
        &mut rig,
        ControlToEngine::InstallTrack {
            track: 0,
            slot: slot(params(1, 0, false), 8),
        },
    );
    send(&mut rig, ControlToEngine::Pause);
    run_checked(&mut rig, 64);
    assert!(rig.shared().event_overflows() > 0, "events were dropped");
    let mut retired = 0;
    for _ in 0..4 {
        rig.writer.drain();
        // Boxes are freed here, outside the checked region.
        retired += rig
            .events()
            .iter()
            .filter(|e| matches!(e, EngineToControl::TrackRetired { .. }))
            .count();
        run_checked(&mut rig, 64);
    }
    assert_eq!(
        retired, 1,
        "the removed track came back once the queues drained"
    );
    assert_eq!(
        rig.writer.finished[0].len(),
        2,
        "both takes of the removed track ended"
    );
}

/// Allocates under the detector when asked to by `detector_is_armed`; otherwise does nothing.
#[test]
#[ignore = "run only as a child process by detector_is_armed"]
fn violation_probe() {
    if std::env::var_os("OVERDUB_ALLOC_PROBE").is_some() {
        let boxed = assert_no_alloc(|| std::hint::black_box(Box::new(7u64)));
        std::hint::black_box(boxed);
    }
}

#[test]
fn detector_is_armed() {
    let exe = std::env::current_exe().expect("test binary path");
    let status = std::process::Command::new(exe)
        .args([
            "--exact",
            "engine::alloc_tests::violation_probe",
            "--ignored",
            "--test-threads=1",
        ])
        .env("OVERDUB_ALLOC_PROBE", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run the probe");
    assert!(
        !status.success(),
        "an allocation under assert_no_alloc must fail the test"
    );
    let control = std::process::Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            "engine::alloc_tests::violation_probe",
            "--ignored",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run the probe");
    assert!(
        control.success(),
        "the probe passes when it does not allocate"
    );
}

#[test]
fn process_never_allocates_with_streams_and_taps() {
    let mut config = EngineConfig::new(48_000, 64, 4);
    config.event_capacity = 2;
    let mut rig = Rig::new(config);
    rig.install(0, params(1, 0, true), 1 << 12);
    rig.install(1, params(2, 1, true), 1 << 12);
    let (mut mono, _) = rig.attach_stream(0, 1, 16, 1024);
    let (mut stereo, _) = rig.attach_stream(1, 2, 16, 1024);
    let (mut master, _) = rig.attach_tap(0, TapSource::Master, 2);
    let (mut track, _) = rig.attach_tap(1, TapSource::Track(1), 2);
    let (_empty, _) = rig.attach_tap(2, TapSource::Track(9), 2);
    rig.send(ControlToEngine::Record { at_frame: None });
    mono.push_entire_slice(&[0.25; 100]).unwrap();
    stereo.push_entire_slice(&[0.5; 200]).unwrap();
    // Priming, flowing, underrun, full tap rings (dropped blocks), a long period in chunks.
    for frames in [64, 64, 300, 1000] {
        run_checked(&mut rig, frames);
        rig.writer.drain();
    }
    while master.pop().is_ok() {}
    while track.pop().is_ok() {}
    // Refusals and detaches with the event queue full: the boxes are parked, then handed back.
    rig.events();
    for _ in 0..3 {
        rig.send(ControlToEngine::Pause); // rejected: fills the event queue
    }
    rig.send(ControlToEngine::DetachStream { track: 0 });
    rig.send(ControlToEngine::DetachTap { id: 1 });
    let _ = rig.attach_tap(0, TapSource::Master, 2); // id in use
    let _ = rig.attach_stream(3, 1, 16, 64); // empty slot
    rig.send(ControlToEngine::RemoveTrack { track: 1 }); // orphans the stereo stream
    run_checked(&mut rig, 64);
    let mut handed_back = 0;
    for _ in 0..8 {
        rig.writer.drain();
        // Boxes are freed here, outside the checked region.
        handed_back += rig
            .events()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    EngineToControl::StreamRetired { .. } | EngineToControl::TapRetired { .. }
                )
            })
            .count();
        run_checked(&mut rig, 64);
    }
    assert_eq!(handed_back, 5, "every stream and tap came back");
}

/// Direct outputs over plain buffers, as a backend would offer them.
struct Outputs {
    buffers: Vec<[Vec<f32>; 2]>,
}

impl TrackOutputs for Outputs {
    fn track_output(&mut self, slot: usize) -> Option<(&mut [f32], &mut [f32])> {
        let [left, right] = self.buffers.get_mut(slot)?;
        Some((left.as_mut_slice(), right.as_mut_slice()))
    }
}

#[test]
fn direct_outputs_carry_each_tracks_send_without_allocating() {
    use crate::backend::PlanarInputs;

    let (mut processor, mut handle, _markers) = engine(EngineConfig::new(48_000, 64, 4));
    let mut loud = params(1, 0, true);
    loud.level = 0.5;
    loud.pan = -1.0;
    let mut muted = params(1, 1, true);
    muted.muted = true;
    for (track, p) in [(0, loud), (1, muted)] {
        assert!(handle
            .send(ControlToEngine::InstallTrack {
                track,
                slot: slot(p, 1024),
            })
            .is_ok());
    }
    // 150 frames: more than the engine's 64-frame chunks, so the offsets are exercised.
    let frames = 150;
    let mut inputs = PlanarInputs::new(2, frames);
    inputs.set_frames(frames);
    inputs.channel_mut(0).fill(0.4);
    inputs.channel_mut(1).fill(0.3);
    let mut outputs = Outputs {
        buffers: (0..4)
            .map(|_| [vec![9.0; frames], vec![9.0; frames]])
            .collect(),
    };
    let (mut left, mut right) = (vec![0.0; frames], vec![0.0; frames]);
    assert_no_alloc(|| {
        processor.process(&mut ProcessContext {
            frames,
            inputs: &inputs,
            master_left: &mut left,
            master_right: &mut right,
            track_outputs: Some(&mut outputs),
        });
    });
    // Track 1, hard left at level 0.5: 0.2 on the left, nothing on the right.
    assert!(outputs.buffers[0][0]
        .iter()
        .all(|&s| (s - 0.2).abs() < 1e-6));
    assert!(outputs.buffers[0][1].iter().all(|&s| s.abs() < 1e-6));
    // Track 2 is muted: silence on both sides.
    assert!(outputs.buffers[1].iter().flatten().all(|&s| s == 0.0));
    // Slots without a track are left alone.
    assert!(outputs.buffers[2].iter().flatten().all(|&s| s == 9.0));
    assert_eq!(left, outputs.buffers[0][0]);
}
