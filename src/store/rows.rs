//! The rows the store reads and writes: plain data, converted to and from SQLite here and
//! nowhere else. Nothing here is real-time safe (rows own `String`s).

use std::fmt;

use rusqlite::Row;

/// The roles under which a session's master outputs' connections are stored.
pub const MASTER_OUTPUT_ROLES: [&str; 2] = ["master_out_L", "master_out_R"];

/// The role under which the connections of a track's direct output (`side` `L` or `R`) are
/// stored: `track2.out_L` for track index 2. By index, so it survives renames.
pub fn track_output_role(index: u32, side: &str) -> String {
    format!("track{index}.out_{side}")
}

/// A stored session: the recording project's identity and settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRow {
    /// Stable session id (also the D-Bus object path segment and the folder name on disk).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Project this session belongs to (AudioLab routes map a project to a session).
    pub project_id: Option<String>,
    /// User who created the session, when a surface knows it.
    pub user_id: Option<String>,
    /// Sample rate every take and position of the session uses, in Hz.
    pub sample_rate: u32,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
    /// Whether the session is loaded in the engine (restored as active on start-up).
    pub active: bool,
}

/// A stored track of a session, with every user-visible setting.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackRow {
    /// Position in the session, 1-based; unique within the session.
    pub index: u32,
    /// Track name.
    pub name: String,
    /// 1 (mono) or 2 (stereo).
    pub channels: u8,
    /// Whether `record` captures this track.
    pub armed: bool,
    /// Pre-record trim, linear, >= 0.
    pub input_gain: f64,
    /// Fader, linear 0.0–2.0.
    pub level: f64,
    /// Pan, −1.0 (left) … +1.0 (right).
    pub pan: f64,
    /// Muted in monitoring, playback and mixdown.
    pub muted: bool,
    /// Soloed.
    pub soloed: bool,
    /// Source port or channel.
    pub input: String,
    /// Monitoring mode: `auto`, `input` or `off`.
    pub monitoring: String,
}

/// Life-cycle state of a take. Stored as its [`as_str`](TakeStatus::as_str) word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeStatus {
    /// Journaled and being written; a take still in this state at start-up needs recovery.
    Recording,
    /// Finalized normally by `stop`.
    Complete,
    /// Repaired from its file after a crash.
    Recovered,
    /// Capture failed; the file may be missing or unusable.
    Failed,
}

impl TakeStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [TakeStatus; 4] = [
        TakeStatus::Recording,
        TakeStatus::Complete,
        TakeStatus::Recovered,
        TakeStatus::Failed,
    ];

    /// The stored (and displayed) word: `recording`, `complete`, `recovered`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            TakeStatus::Recording => "recording",
            TakeStatus::Complete => "complete",
            TakeStatus::Recovered => "recovered",
            TakeStatus::Failed => "failed",
        }
    }

    /// Inverse of [`as_str`](TakeStatus::as_str); `None` for any other word.
    pub fn parse(word: &str) -> Option<TakeStatus> {
        TakeStatus::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

impl fmt::Display for TakeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the control layer knows when it journals a take, before the first sample is written.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTake {
    /// Session the take belongs to (must exist).
    pub session_id: String,
    /// Track index (1-based) the take records.
    pub track_index: u32,
    /// Audio file path, relative to the data directory.
    pub path: String,
    /// 1 or 2.
    pub channels: u8,
    /// Sample rate of the file, in Hz.
    pub sample_rate: u32,
    /// Sample format word (`s24`, `f32`, `s16`).
    pub format: String,
}

/// Measurements of one take, filled in when it is finished.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TakeMetrics {
    /// Recorded duration, milliseconds.
    pub duration_ms: f64,
    /// Backend xruns while the take was recording.
    pub xruns: u64,
    /// Frames lost to a full ring and written as silence.
    pub dropped_frames: u64,
    /// Average input-to-processing latency, milliseconds.
    pub average_latency_ms: f64,
    /// Bytes of audio data written.
    pub data_bytes: u64,
    /// `diskBufferMinFill` of DESIGN.md's metrics: the lowest disk-buffer level seen, 0–1.
    pub disk_buffer_min_fill: f64,
    /// Samples that clipped.
    pub clip_count: u64,
}

/// A stored take.
#[derive(Clone, Debug, PartialEq)]
pub struct TakeRow {
    /// Take id (SQLite rowid), assigned on insert.
    pub id: i64,
    /// Session the take belongs to.
    pub session_id: String,
    /// Track index (1-based) the take recorded.
    pub track_index: u32,
    /// Audio file path, relative to the data directory.
    pub path: String,
    /// Life-cycle state.
    pub status: TakeStatus,
    /// 1 or 2.
    pub channels: u8,
    /// Sample rate of the file, in Hz.
    pub sample_rate: u32,
    /// Sample format word.
    pub format: String,
    /// Session frame at which the take's first sample was captured.
    pub start_frame: u64,
    /// Frames in the file.
    pub frames: u64,
    /// Journal time, unix milliseconds.
    pub created_at_ms: i64,
    /// Time the take was finished (complete, recovered or failed); `None` while recording.
    pub finished_at_ms: Option<i64>,
    /// Measurements recorded when the take was finished (zero while recording).
    pub metrics: TakeMetrics,
}

/// One entry in a take's log.
#[derive(Clone, Debug, PartialEq)]
pub struct TakeEvent {
    /// Take the event belongs to.
    pub take_id: i64,
    /// What happened: `gap`, `xrun`, `interrupted`, `disk_low`, `recovered`, ...
    pub kind: String,
    /// Frame in the take's file where it happened.
    pub frame: u64,
    /// Frames affected (0 when the event is instantaneous).
    pub length: u64,
    /// Free-form detail for humans.
    pub detail: String,
}

/// A region of an audio file placed on a track's timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipRow {
    /// Clip id (SQLite rowid); ignored on insert, set on read.
    pub id: i64,
    /// Session the clip belongs to.
    pub session_id: String,
    /// Track (1-based index) the clip sits on; must exist.
    pub track_index: u32,
    /// Take the audio came from, if any (imports have none).
    pub take_id: Option<i64>,
    /// Audio file path, relative to the data directory.
    pub path: String,
    /// Timeline position of the clip's first frame.
    pub start: u64,
    /// First frame used within the file.
    pub offset: u64,
    /// Frames used.
    pub length: u64,
    /// Linear clip gain.
    pub gain: f64,
}

/// Converts a frame count or counter for storage; SQLite integers are signed 64-bit.
pub(crate) fn to_sql_u64(value: u64) -> rusqlite::Result<i64> {
    i64::try_from(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Reads an unsigned 64-bit column (stored as a non-negative INTEGER).
fn get_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// Columns read by [`session_from_row`], in order.
pub(crate) const SESSION_COLUMNS: &str =
    "id, name, project_id, user_id, sample_rate, created_at_ms, active";

/// Builds a [`SessionRow`] from a row selected with [`SESSION_COLUMNS`].
pub(crate) fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: row.get(0)?,
        name: row.get(1)?,
        project_id: row.get(2)?,
        user_id: row.get(3)?,
        sample_rate: row.get(4)?,
        created_at_ms: row.get(5)?,
        active: row.get(6)?,
    })
}

/// Columns read by [`track_from_row`], in order.
pub(crate) const TRACK_COLUMNS: &str =
    "idx, name, channels, armed, input_gain, level, pan, muted, soloed, input, monitoring";

/// Builds a [`TrackRow`] from a row selected with [`TRACK_COLUMNS`].
pub(crate) fn track_from_row(row: &Row<'_>) -> rusqlite::Result<TrackRow> {
    Ok(TrackRow {
        index: row.get(0)?,
        name: row.get(1)?,
        channels: row.get(2)?,
        armed: row.get(3)?,
        input_gain: row.get(4)?,
        level: row.get(5)?,
        pan: row.get(6)?,
        muted: row.get(7)?,
        soloed: row.get(8)?,
        input: row.get(9)?,
        monitoring: row.get(10)?,
    })
}

/// Columns read by [`take_from_row`], in order.
pub(crate) const TAKE_COLUMNS: &str = "id, session_id, track_index, path, status, channels, \
     sample_rate, format, start_frame, frames, created_at_ms, finished_at_ms, duration_ms, \
     xruns, dropped_frames, average_latency_ms, data_bytes, disk_buffer_min_fill, clip_count";

/// Builds a [`TakeRow`] from a row selected with [`TAKE_COLUMNS`].
pub(crate) fn take_from_row(row: &Row<'_>) -> rusqlite::Result<TakeRow> {
    let status: String = row.get(4)?;
    let status = TakeStatus::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Text,
            format!("unknown take status {status:?}").into(),
        )
    })?;
    Ok(TakeRow {
        id: row.get(0)?,
        session_id: row.get(1)?,
        track_index: row.get(2)?,
        path: row.get(3)?,
        status,
        channels: row.get(5)?,
        sample_rate: row.get(6)?,
        format: row.get(7)?,
        start_frame: get_u64(row, 8)?,
        frames: get_u64(row, 9)?,
        created_at_ms: row.get(10)?,
        finished_at_ms: row.get(11)?,
        metrics: TakeMetrics {
            duration_ms: row.get(12)?,
            xruns: get_u64(row, 13)?,
            dropped_frames: get_u64(row, 14)?,
            average_latency_ms: row.get(15)?,
            data_bytes: get_u64(row, 16)?,
            disk_buffer_min_fill: row.get(17)?,
            clip_count: get_u64(row, 18)?,
        },
    })
}

/// Columns read by [`take_event_from_row`], in order.
pub(crate) const TAKE_EVENT_COLUMNS: &str = "take_id, kind, frame, length, detail";

/// Builds a [`TakeEvent`] from a row selected with [`TAKE_EVENT_COLUMNS`].
pub(crate) fn take_event_from_row(row: &Row<'_>) -> rusqlite::Result<TakeEvent> {
    Ok(TakeEvent {
        take_id: row.get(0)?,
        kind: row.get(1)?,
        frame: get_u64(row, 2)?,
        length: get_u64(row, 3)?,
        detail: row.get(4)?,
    })
}

/// Columns read by [`clip_from_row`], in order.
pub(crate) const CLIP_COLUMNS: &str =
    "id, session_id, track_index, take_id, path, start, offset, length, gain";

/// Builds a [`ClipRow`] from a row selected with [`CLIP_COLUMNS`].
pub(crate) fn clip_from_row(row: &Row<'_>) -> rusqlite::Result<ClipRow> {
    Ok(ClipRow {
        id: row.get(0)?,
        session_id: row.get(1)?,
        track_index: row.get(2)?,
        take_id: row.get(3)?,
        path: row.get(4)?,
        start: get_u64(row, 5)?,
        offset: get_u64(row, 6)?,
        length: get_u64(row, 7)?,
        gain: row.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_status_words_round_trip() {
        for status in TakeStatus::ALL {
            assert_eq!(TakeStatus::parse(status.as_str()), Some(status));
            assert_eq!(status.to_string(), status.as_str());
        }
        assert_eq!(TakeStatus::Recovered.as_str(), "recovered");
        assert_eq!(TakeStatus::parse("Complete"), None);
        assert_eq!(TakeStatus::parse(""), None);
    }

    #[test]
    fn u64_values_beyond_sqlite_integers_are_refused() {
        assert_eq!(to_sql_u64(i64::MAX as u64).unwrap(), i64::MAX);
        assert!(to_sql_u64(u64::MAX).is_err());
    }
}
