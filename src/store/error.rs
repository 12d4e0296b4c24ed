//! The store layer's one error type, and the mapping from SQLite errors to it.

use std::fmt;
use std::path::Path;

use rusqlite::ErrorCode;

/// Everything that can go wrong in the store. The `String`s are complete details that already
/// name the database file, so `Display` reads well in a log line or a control-surface error.
#[derive(Debug)]
pub enum StoreError {
    /// The file at the database path is damaged or is not an overdub database. The file was left
    /// exactly as it was found.
    Corrupt(String),
    /// The database (or the directory it lives in) cannot be written.
    ReadOnly(String),
    /// The database was migrated by a newer overdub: refuse rather than downgrade it.
    NewerSchema {
        /// Highest migration version recorded in the file.
        found: i64,
        /// Highest migration version this build knows.
        known: i64,
    },
    /// An operating-system error (missing directory, disk full, I/O failure).
    Io(String),
    /// Any other SQLite failure: a constraint violation, a missing row, a type mismatch.
    Sqlite(String),
    /// The store thread has stopped (after `Store::close` or the last handle was dropped).
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Corrupt(detail) => write!(
                f,
                "cannot use the database: {detail}. The file was left untouched: restore it \
                 from a backup, or move it aside to start with an empty database"
            ),
            StoreError::ReadOnly(detail) => write!(f, "the database is not writable: {detail}"),
            StoreError::NewerSchema { found, known } => write!(
                f,
                "the database was written by a newer overdub (schema version {found}, this \
                 build knows up to {known}); refusing to open it rather than downgrade it: \
                 upgrade overdub or use another data directory"
            ),
            StoreError::Io(detail) => write!(f, "database I/O error: {detail}"),
            StoreError::Sqlite(detail) => write!(f, "database error: {detail}"),
            StoreError::Closed => write!(f, "the database store is closed"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Maps a SQLite error to the store's error, naming the database file. Not real-time safe
/// (formats a message).
pub(crate) fn from_sqlite(path: &Path, error: &rusqlite::Error) -> StoreError {
    let detail = format!("{}: {error}", path.display());
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt(detail),
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => StoreError::ReadOnly(detail),
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::NoLargeFileSupport,
        ) => StoreError::Io(detail),
        _ => StoreError::Sqlite(detail),
    }
}

/// Maps an operating-system error on `path` to the store's error: a read-only file system or a
/// denied permission is `ReadOnly`, anything else `Io`. Not real-time safe.
pub(crate) fn from_io(path: &Path, what: &str, error: &std::io::Error) -> StoreError {
    let detail = format!("{}: {what}: {error}", path.display());
    match error.raw_os_error() {
        Some(libc::EROFS | libc::EACCES | libc::EPERM) => StoreError::ReadOnly(detail),
        _ => StoreError::Io(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_codes_map_to_the_right_variant() {
        let path = Path::new("/data/overdub.db");
        let failure = |code| {
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some("boom".into()))
        };
        assert!(matches!(
            from_sqlite(path, &failure(rusqlite::ffi::SQLITE_NOTADB)),
            StoreError::Corrupt(m) if m.contains("/data/overdub.db")
        ));
        assert!(matches!(
            from_sqlite(path, &failure(rusqlite::ffi::SQLITE_CORRUPT)),
            StoreError::Corrupt(_)
        ));
        assert!(matches!(
            from_sqlite(path, &failure(rusqlite::ffi::SQLITE_READONLY)),
            StoreError::ReadOnly(_)
        ));
        assert!(matches!(
            from_sqlite(path, &failure(rusqlite::ffi::SQLITE_FULL)),
            StoreError::Io(_)
        ));
        assert!(matches!(
            from_sqlite(path, &failure(rusqlite::ffi::SQLITE_CONSTRAINT)),
            StoreError::Sqlite(_)
        ));
        assert!(matches!(
            from_sqlite(path, &rusqlite::Error::QueryReturnedNoRows),
            StoreError::Sqlite(_)
        ));
    }

    #[test]
    fn io_errors_distinguish_read_only_from_other_failures() {
        let path = Path::new("/data");
        let rofs = std::io::Error::from_raw_os_error(libc::EROFS);
        let nospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(
            matches!(from_io(path, "create", &rofs), StoreError::ReadOnly(m) if m.contains("/data"))
        );
        assert!(matches!(from_io(path, "create", &nospc), StoreError::Io(_)));
    }

    #[test]
    fn display_names_the_file_and_the_remedy() {
        let corrupt = StoreError::Corrupt("/data/overdub.db: file is not a database".into());
        let text = corrupt.to_string();
        assert!(text.contains("/data/overdub.db"), "{text}");
        assert!(text.contains("left untouched"), "{text}");
        let newer = StoreError::NewerSchema { found: 7, known: 1 }.to_string();
        assert!(
            newer.contains("schema version 7") && newer.contains("up to 1"),
            "{newer}"
        );
    }
}
