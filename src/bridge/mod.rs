//! The HTTP + WebSocket bridge (DESIGN.md §5.3): thin adapters over [`Control`] for web
//! front-ends and remote rigs. REST routes live in [`http`], the WebSocket in [`ws`]; this
//! module holds what they share: state, the one mapping of control errors to HTTP, the token
//! and `Origin` checks, limits, and the server's life.
//!
//! Every accepted connection gets a bounded kernel send buffer ([`SEND_BUFFER_BYTES`]) and
//! `TCP_NODELAY`: a client that stops reading then holds at most that much of the kernel's
//! memory (the WebSocket's own queues are bounded in [`ws`]), and small pushes and replies
//! leave at once instead of waiting for the peer's delayed ACK.
//!
//! Not real-time: runs on tokio.

pub mod http;
pub mod shapes;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::json;

use crate::config::HttpConfig;
use crate::control::{Control, ControlError, ErrorCode};

/// Why the bridge cannot start.
#[derive(Debug)]
pub struct BridgeError(pub String);

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BridgeError {}

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The control service.
    pub control: Control,
    /// Limits and security settings (fixed while the daemon runs).
    pub config: Arc<HttpConfig>,
    /// The token in force (`$OVERDUB_TOKEN` or `http.token`), if any.
    pub token: Option<Arc<str>>,
    /// WebSocket clients currently connected (bounded by `http.max_clients`).
    pub ws_clients: Arc<AtomicUsize>,
    /// The clock of the WebSocket's `position` and `meters` pushes, shared by all clients.
    pub beats: ws::Beats,
}

impl AppState {
    /// The state of a bridge serving `control` with settings `config`.
    pub fn new(control: Control, config: HttpConfig) -> AppState {
        AppState {
            token: token_from(&config),
            beats: ws::Beats::new(
                control.clone(),
                Duration::from_millis(config.position_interval_ms),
            ),
            control,
            config: Arc::new(config),
            ws_clients: Arc::default(),
        }
    }
}

/// The HTTP status of each error code: the one place control errors become HTTP.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidState => StatusCode::CONFLICT,
        ErrorCode::Storage => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Backend => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
    }
}

/// The JSON error body: `{"success":false,"error":{"code","message"}}`.
pub fn error_body(code: ErrorCode, message: &str) -> serde_json::Value {
    json!({"success": false, "error": {"code": code.as_str(), "message": message}})
}

/// A control error as an HTTP response.
pub struct ApiError(pub ControlError);

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        ApiError(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            status_of(self.0.code),
            Json(error_body(self.0.code, &self.0.message)),
        )
            .into_response()
    }
}

/// The token in force: `$OVERDUB_TOKEN`, else `http.token`; none when both are empty.
pub fn token_from(config: &HttpConfig) -> Option<Arc<str>> {
    std::env::var("OVERDUB_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| Some(config.token.clone()).filter(|t| !t.is_empty()))
        .map(Arc::from)
}

/// Binds the listener. A non-loopback address without a token is refused: the bridge would
/// hand the recorder to anyone on the network.
pub async fn bind(
    config: &HttpConfig,
    listen: Option<&str>,
) -> Result<tokio::net::TcpListener, BridgeError> {
    let listen = listen.unwrap_or(&config.listen);
    let addr: SocketAddr = listen.parse().map_err(|_| {
        BridgeError(format!(
            "--listen {listen:?} is not an IP address and port (e.g. 127.0.0.1:7878)"
        ))
    })?;
    if !addr.ip().is_loopback() && token_from(config).is_none() {
        return Err(BridgeError(format!(
            "refusing to listen on {addr} without a token: set http.token or OVERDUB_TOKEN (only loopback addresses may go without)"
        )));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| BridgeError(format!("cannot listen on {addr}: {e}")))
}

/// The whole router: REST and WebSocket routes behind the token and `Origin` checks and the
/// body limit.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .merge(http::routes())
        .merge(ws::routes())
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The kernel send buffer (`SO_SNDBUF`) of each accepted connection, in bytes. Linux doubles
/// it for its bookkeeping and stops growing it on its own (autotuning would let a stalled
/// client pin up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default). 64 KiB still carries
/// more than 1 MB/s over a 100 ms round trip: a monitor stream's 384 kB/s at 48 kHz stereo f32.
pub const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// Serves until `shutdown` completes. Each accepted connection is set up by
/// [`tune_connection`] first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|stream| {
        if let Err(e) = tune_connection(stream) {
            tracing::warn!("cannot set up an accepted connection: {e}");
        }
    });
    // No `ConnectInfo`: no handler needs the peer's address, and it costs every request an
    // extension map.
    axum::serve(listener, router(state).into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Bounds an accepted connection's kernel send buffer to [`SEND_BUFFER_BYTES`] and sets
/// `TCP_NODELAY`. A failure leaves the connection usable with the kernel's defaults.
pub fn tune_connection(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    set_send_buffer(stream, SEND_BUFFER_BYTES)
}

/// Sets `SO_SNDBUF` of a socket to `bytes` (the kernel may round it, and caps it at
/// `net.core.wmem_max`).
fn set_send_buffer(socket: &impl AsFd, bytes: usize) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a send buffer of {bytes} bytes is too large"),
        )
    })?;
    // SAFETY: the descriptor is an open socket borrowed for the whole call, and the option
    // value points to a live `c_int` whose size is the length passed.
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Checks the browser `Origin` (when sent) against `http.allowed_origins`, and the token
/// (`Authorization: Bearer` or `?token=`) when one is in force, in constant time.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| state.config.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            return refuse(
                StatusCode::FORBIDDEN,
                "this Origin is not in http.allowed_origins",
            );
        }
    }
    if let Some(token) = &state.token {
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let query = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")));
        let presented = bearer.or(query).unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "a valid token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)",
            );
        }
    }
    next.run(request).await
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(error_body(ErrorCode::Unauthorized, message))).into_response()
}

/// Compares without leaking where the first difference is (length differences still show).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    /// `SO_SNDBUF` as the kernel reports it (Linux: twice the value set).
    fn send_buffer_of(socket: &impl AsFd) -> usize {
        let mut value: libc::c_int = 0;
        let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is an open socket borrowed for the call; value and length
        // point to live locals of the sizes given.
        let result = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                std::ptr::from_mut(&mut value).cast(),
                &mut length,
            )
        };
        assert_eq!(result, 0, "{}", std::io::Error::last_os_error());
        usize::try_from(value).unwrap()
    }

    #[tokio::test]
    async fn accepted_connections_get_a_bounded_send_buffer_and_no_delay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (_client, (server, _)) = (client.unwrap(), accepted.unwrap());
        assert!(!server.nodelay().unwrap());
        tune_connection(&server).unwrap();
        assert_eq!(
            send_buffer_of(&server),
            kernel_send_buffer(SEND_BUFFER_BYTES)
        );
        assert!(server.nodelay().unwrap());
    }

    /// What Linux reports for `SO_SNDBUF` set to `bytes`: capped at `net.core.wmem_max`, then
    /// doubled (socket(7)).
    fn kernel_send_buffer(bytes: usize) -> usize {
        let cap = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap();
        2 * bytes.min(cap)
    }

    #[test]
    fn a_send_buffer_too_large_for_the_kernel_is_refused_before_the_call() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = send_buffer_of(&socket);
        let error = set_send_buffer(&socket, usize::MAX).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(send_buffer_of(&socket), before);
        set_send_buffer(&socket, 24 * 1024).unwrap();
        assert_eq!(send_buffer_of(&socket), kernel_send_buffer(24 * 1024));
    }

    #[test]
    fn every_error_code_has_its_status() {
        assert_eq!(
            status_of(ErrorCode::InvalidArgument),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status_of(ErrorCode::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(status_of(ErrorCode::InvalidState), StatusCode::CONFLICT);
        assert_eq!(status_of(ErrorCode::Unauthorized), StatusCode::UNAUTHORIZED);
        let body = error_body(ErrorCode::NotFound, "no session");
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], "not_found");
    }
}
