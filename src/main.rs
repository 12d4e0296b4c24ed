//! The `overdub` binary: `overdub daemon` runs the recorder; every other verb talks to it over
//! D-Bus (see `overdub --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = overdub::cli::Cli::parse();
    // One worker: the async side only moves control traffic (D-Bus, HTTP, WebSocket) and
    // reports; audio, disk and the store have threads of their own, blocking work goes to
    // `spawn_blocking`, and a call into the audio graph, which may wait on its server, hands
    // the worker's queue to another thread meanwhile (`control::session::graph_call`). A
    // second worker buys HTTP throughput nobody needs from a recorder and costs a
    // cross-thread wake each time one hands tasks to the other: with 100 WebSocket clients
    // that was 1 200 context switches a second instead of 320.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("overdub-tokio")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("overdub: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(overdub::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overdub: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
