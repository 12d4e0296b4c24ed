//! The HTTP + WebSocket bridge (DESIGN.md §5.3): thin adapters over [`Control`] for web
//! front-ends and remote rigs. REST routes live in [`http`], the WebSocket in [`ws`]; this
//! module holds what they share: state, the one mapping of control errors to HTTP, the token
//! and `Origin` checks, limits, and the server's life.
//!
//! Not real-time: runs on tokio.

pub mod http;
pub mod shapes;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
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

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
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
