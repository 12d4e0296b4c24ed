//! The one error type of the control layer, with the stable codes every surface maps once.

use std::fmt;

/// Stable error codes (DESIGN.md §5). Surfaces map them exactly once: D-Bus error names in
/// `crate::dbus`, and later HTTP statuses and WebSocket codes in the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request itself is wrong: NaN, out of range, empty name, unknown word.
    InvalidArgument,
    /// An id, path or name that does not exist.
    NotFound,
    /// The request is fine but not now: recording with nothing armed, deleting while recording.
    InvalidState,
    /// The database or the disk failed or is full.
    Storage,
    /// The audio graph failed.
    Backend,
    /// The caller is not allowed.
    Unauthorized,
}

impl ErrorCode {
    /// `invalid_argument`, `not_found`, … as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::Storage => "storage",
            ErrorCode::Backend => "backend",
            ErrorCode::Unauthorized => "unauthorized",
        }
    }

    /// `InvalidArgument`, `NotFound`, … as in D-Bus error names.
    pub fn camel_case(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "InvalidArgument",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::InvalidState => "InvalidState",
            ErrorCode::Storage => "Storage",
            ErrorCode::Backend => "Backend",
            ErrorCode::Unauthorized => "Unauthorized",
        }
    }

    /// Inverse of [`ErrorCode::camel_case`], for clients reading D-Bus errors.
    pub fn from_camel_case(word: &str) -> Option<ErrorCode> {
        [
            ErrorCode::InvalidArgument,
            ErrorCode::NotFound,
            ErrorCode::InvalidState,
            ErrorCode::Storage,
            ErrorCode::Backend,
            ErrorCode::Unauthorized,
        ]
        .into_iter()
        .find(|code| code.camel_case() == word)
    }
}

/// A failed control operation: a code and a message for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What went wrong, in words a user can act on.
    pub message: String,
}

impl ControlError {
    /// An `invalid_argument` error.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    /// A `not_found` error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// An `invalid_state` error.
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidState, message)
    }
    /// A `storage` error.
    pub fn storage(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Storage, message)
    }
    /// A `backend` error.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Backend, message)
    }

    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ControlError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ControlError {}

impl From<crate::store::StoreError> for ControlError {
    fn from(error: crate::store::StoreError) -> Self {
        ControlError::storage(error.to_string())
    }
}

/// Result of a control operation.
pub type ControlResult<T> = Result<T, ControlError>;
