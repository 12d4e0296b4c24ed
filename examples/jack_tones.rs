//! A JACK client `tones` with N outputs `out_1`…`out_N`, each a distinct sine (200 + 20 × n Hz,
//! −12 dBFS), for `scripts/bench-jack`. Runs until killed.
//!
//! Usage: `cargo run --release --example jack_tones -- N`

use std::f32::consts::TAU;

use jack::{AudioOut, Client, ClientOptions, Control, Port, ProcessScope};

struct Tones {
    outs: Vec<Port<AudioOut>>,
    /// Per output: phase and phase step per frame (radians).
    phases: Vec<(f32, f32)>,
}

impl jack::ProcessHandler for Tones {
    fn process(&mut self, _: &Client, scope: &ProcessScope) -> Control {
        for (port, (phase, step)) in self.outs.iter_mut().zip(self.phases.iter_mut()) {
            for sample in port.as_mut_slice(scope) {
                *sample = 0.25 * phase.sin();
                *phase = (*phase + *step) % TAU;
            }
        }
        Control::Continue
    }
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(8);
    let (client, _) = Client::new("tones", ClientOptions::NO_START_SERVER)
        .unwrap_or_else(|e| panic!("no JACK server: {e}"));
    let rate = client.sample_rate() as f32;
    let outs = (1..=count)
        .map(|n| {
            client
                .register_port(&format!("out_{n}"), AudioOut::default())
                .expect("register a port")
        })
        .collect();
    let phases = (1..=count)
        .map(|n| (0.0, TAU * (200.0 + 20.0 * n as f32) / rate))
        .collect();
    let _active = client
        .activate_async((), Tones { outs, phases })
        .expect("activate");
    loop {
        std::thread::park();
    }
}
