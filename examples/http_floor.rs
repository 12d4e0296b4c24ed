//! The floor under `scripts/bench-ws`'s HTTP figures: an axum server on the runtime the daemon
//! uses (multi-thread, one worker) that answers every GET with the same fixed JSON body of
//! BYTES bytes. Measured with the same wrk settings as the daemon's `GET /session/:id`, it
//! shows what loopback HTTP and the load generator cost on this machine before overdub does
//! any work of its own. Prints its address on stdout, then serves until killed.
//!
//! Usage: `cargo run --release --example http_floor -- BYTES`

use axum::{body::Bytes, http::header, routing::get, Router};

fn main() {
    let bytes: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024);
    // A JSON object padded to exactly `bytes` bytes (the smallest, `{"p":""}`, is 8).
    let body = Bytes::from(format!(
        "{{\"p\":\"{}\"}}",
        "x".repeat(bytes.saturating_sub(8))
    ));
    let app = Router::new().route(
        "/{*path}",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("start the runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        println!("{}", listener.local_addr().expect("the bound address"));
        axum::serve(listener, app).await.expect("serve");
    });
}
