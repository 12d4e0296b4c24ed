//! The `overdub` binary: `overdub daemon` runs the recorder; every other verb talks to it over
//! D-Bus (see `overdub --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = overdub::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
