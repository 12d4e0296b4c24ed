//! REST routes (DESIGN.md §5.3): the multitrack-recorder API ([`multitrack`], served under both
//! `/api/v1/multitrack` and `/api/v1/ai/multitrack`) and the AudioLab API ([`audiolab`]). Both
//! are thin adapters over [`Control`](crate::control::Control).
//!
//! Every failure answers `{"success":false,"error":{"code","message"}}` through
//! [`ApiError`]: control errors with their one status mapping ([`super::status_of`]); bodies
//! and query strings that do not parse (malformed JSON, wrong types, missing fields) as `400
//! invalid_argument` naming the problem; a body over `http.max_body_bytes` as `413`; an unknown
//! route as `404 not_found`; a known route with the wrong method as `405`.
//!
//! Not real-time: runs on tokio.

pub mod audiolab;
pub mod multitrack;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use super::{error_body, ApiError, AppState};
use crate::control::{ControlError, ErrorCode};

/// The REST routes: both multitrack prefixes, the AudioLab routes, and JSON answers for
/// unknown routes and wrong methods.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(multitrack::routes(&[
            "/api/v1/multitrack",
            "/api/v1/ai/multitrack",
        ]))
        .merge(audiolab::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
}

/// `404 not_found` for a path no route serves (the query string is left out: it may hold the
/// token).
async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError(ControlError::not_found(format!(
        "no route for {method} {}",
        uri.path()
    )))
}

/// `405` for a path served under other methods.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(error_body(
            ErrorCode::InvalidArgument,
            &format!("{method} is not allowed on {}", uri.path()),
        )),
    )
        .into_response()
}

/// A JSON request body. Malformed JSON, wrong types and missing fields are rejected as `400
/// invalid_argument` with serde's description (field, line, column); a body larger than
/// `http.max_body_bytes` as `413`. The `Content-Type` is not checked: the body is JSON or an
/// error.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read_body(request, state).await?;
        parse_json(&bytes)
            .map(JsonBody)
            .map_err(IntoResponse::into_response)
    }
}

/// Like [`JsonBody`], but an empty body stands for `T::default()` (routes whose body is
/// optional).
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read_body(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&bytes)
            .map(OptionalJsonBody)
            .map_err(IntoResponse::into_response)
    }
}

/// Query-string arguments; a missing or mistyped one is `400 invalid_argument`. Parameters a
/// route does not know (such as `token`) are ignored.
pub struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(args)| QueryArgs(args))
            .map_err(|e| ApiError(ControlError::invalid_argument(e.body_text())))
    }
}

/// Path parameters; one that does not parse (a take id that is not a number) is `400
/// invalid_argument`.
pub struct PathArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(args)| PathArgs(args))
            .map_err(|e| ApiError(ControlError::invalid_argument(e.body_text())))
    }
}

/// Reads the whole body within the configured limit.
async fn read_body(request: Request, state: &AppState) -> Result<Bytes, Response> {
    Bytes::from_request(request, state).await.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the request body is larger than http.max_body_bytes ({} bytes)",
                state.config.max_body_bytes
            )
        } else {
            format!("cannot read the request body: {}", e.body_text())
        };
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        (
            status,
            Json(error_body(ErrorCode::InvalidArgument, &message)),
        )
            .into_response()
    })
}

/// Parses a JSON body; the error names what is wrong and where.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let message = match e.classify() {
            serde_json::error::Category::Data => format!("invalid request body: {e}"),
            serde_json::error::Category::Eof if bytes.is_empty() => {
                "the request body must be a JSON object, got nothing".to_string()
            }
            _ => format!("malformed JSON in the request body: {e}"),
        };
        ApiError(ControlError::invalid_argument(message))
    })
}

/// The 1-based index in a wire track id `track_N`.
pub fn parse_track_id(id: &str) -> Result<u32, ControlError> {
    super::shapes::parse_track_id(id).ok_or_else(|| {
        ControlError::invalid_argument(format!("a track id is track_N with N from 1, got {id:?}"))
    })
}

pub use super::shapes::track_id;

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn track_ids_round_trip_and_reject_everything_else() {
        assert_eq!(parse_track_id("track_1").unwrap(), 1);
        assert_eq!(parse_track_id(&track_id(17)).unwrap(), 17);
        for bad in [
            "track_0",
            "track_",
            "track_+1",
            "track_-1",
            "1",
            "Track_1",
            "track_1x",
            "track_99999999999",
        ] {
            let err = parse_track_id(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{bad}");
        }
    }

    #[derive(Debug, Deserialize)]
    struct Body {
        level: f64,
    }

    #[test]
    fn body_errors_say_what_is_wrong() {
        let err = parse_json::<Body>(br#"{"level": "loud"}"#).unwrap_err().0;
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("invalid type"), "{}", err.message);
        let err = parse_json::<Body>(b"{}").unwrap_err().0;
        assert!(
            err.message.contains("missing field `level`"),
            "{}",
            err.message
        );
        let err = parse_json::<Body>(b"{\"level\": ").unwrap_err().0;
        assert!(err.message.starts_with("malformed JSON"), "{}", err.message);
        let err = parse_json::<Body>(b"").unwrap_err().0;
        assert!(err.message.contains("got nothing"), "{}", err.message);
        let body = parse_json::<Body>(b"{\"level\": 1}")
            .map_err(|e| e.0)
            .unwrap();
        assert_eq!(body.level, 1.0);
    }
}
