-- overdub schema, version 1: sessions, tracks, takes (the capture journal), take events, clips.
-- Applied once, inside a transaction, by src/store/migrations.rs. Never edit a released
-- migration: add a new numbered file instead.
--
-- Conventions: timestamps are unix milliseconds (INTEGER); frame positions and counts are
-- INTEGER >= 0 at the session's sample rate; booleans are INTEGER 0/1. STRICT tables reject
-- values of the wrong type, and NaN (stored by SQLite as NULL) fails the NOT NULL constraints.

CREATE TABLE sessions (
    id            TEXT    NOT NULL PRIMARY KEY CHECK (length(id) > 0),
    name          TEXT    NOT NULL,
    project_id    TEXT,
    user_id       TEXT,
    sample_rate   INTEGER NOT NULL CHECK (sample_rate > 0),
    created_at_ms INTEGER NOT NULL,
    active        INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1))
) STRICT;

CREATE INDEX sessions_by_created ON sessions (created_at_ms, id);
CREATE INDEX sessions_by_project ON sessions (project_id) WHERE project_id IS NOT NULL;

CREATE TABLE tracks (
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL CHECK (idx >= 1),
    name       TEXT    NOT NULL,
    channels   INTEGER NOT NULL CHECK (channels IN (1, 2)),
    armed      INTEGER NOT NULL CHECK (armed IN (0, 1)),
    input_gain REAL    NOT NULL CHECK (input_gain >= 0.0),
    level      REAL    NOT NULL CHECK (level BETWEEN 0.0 AND 2.0),
    pan        REAL    NOT NULL CHECK (pan BETWEEN -1.0 AND 1.0),
    muted      INTEGER NOT NULL CHECK (muted IN (0, 1)),
    soloed     INTEGER NOT NULL CHECK (soloed IN (0, 1)),
    input      TEXT    NOT NULL,
    monitoring TEXT    NOT NULL CHECK (monitoring IN ('auto', 'input', 'off')),
    PRIMARY KEY (session_id, idx)
) STRICT, WITHOUT ROWID;

-- One row per recording pass of one track, journaled before the first sample is written.
-- Takes belong to the session, not to the track row: removing a track keeps its takes (and
-- their files) on record.
CREATE TABLE takes (
    id                   INTEGER NOT NULL PRIMARY KEY,
    session_id           TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    track_index          INTEGER NOT NULL CHECK (track_index >= 1),
    path                 TEXT    NOT NULL CHECK (length(path) > 0),
    status               TEXT    NOT NULL DEFAULT 'recording'
                         CHECK (status IN ('recording', 'complete', 'recovered', 'failed')),
    channels             INTEGER NOT NULL CHECK (channels BETWEEN 1 AND 2),
    sample_rate          INTEGER NOT NULL CHECK (sample_rate > 0),
    format               TEXT    NOT NULL CHECK (length(format) > 0),
    start_frame          INTEGER NOT NULL DEFAULT 0 CHECK (start_frame >= 0),
    frames               INTEGER NOT NULL DEFAULT 0 CHECK (frames >= 0),
    created_at_ms        INTEGER NOT NULL,
    finished_at_ms       INTEGER,
    duration_ms          REAL    NOT NULL DEFAULT 0 CHECK (duration_ms >= 0.0),
    xruns                INTEGER NOT NULL DEFAULT 0 CHECK (xruns >= 0),
    dropped_frames       INTEGER NOT NULL DEFAULT 0 CHECK (dropped_frames >= 0),
    average_latency_ms   REAL    NOT NULL DEFAULT 0 CHECK (average_latency_ms >= 0.0),
    data_bytes           INTEGER NOT NULL DEFAULT 0 CHECK (data_bytes >= 0),
    disk_buffer_min_fill REAL    NOT NULL DEFAULT 0
                         CHECK (disk_buffer_min_fill BETWEEN 0.0 AND 1.0),
    clip_count           INTEGER NOT NULL DEFAULT 0 CHECK (clip_count >= 0),
    CHECK ((status = 'recording') = (finished_at_ms IS NULL))
) STRICT;

CREATE INDEX takes_by_session ON takes (session_id, track_index, id);
CREATE INDEX takes_by_status ON takes (status, id);

-- Per-take log: gaps written as silence, xruns, interruptions, low disk, recovery.
CREATE TABLE take_events (
    id            INTEGER NOT NULL PRIMARY KEY,
    take_id       INTEGER NOT NULL REFERENCES takes (id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL CHECK (length(kind) > 0),
    frame         INTEGER NOT NULL CHECK (frame >= 0),
    length        INTEGER NOT NULL CHECK (length >= 0),
    detail        TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX take_events_by_take ON take_events (take_id, id);

-- A region of an audio file placed on a track's timeline. Removing the track removes its
-- clips; removing the take a clip came from keeps the clip (the file is still there).
CREATE TABLE clips (
    id          INTEGER NOT NULL PRIMARY KEY,
    session_id  TEXT    NOT NULL,
    track_index INTEGER NOT NULL,
    take_id     INTEGER REFERENCES takes (id) ON DELETE SET NULL,
    path        TEXT    NOT NULL CHECK (length(path) > 0),
    start       INTEGER NOT NULL CHECK (start >= 0),
    offset      INTEGER NOT NULL CHECK (offset >= 0),
    length      INTEGER NOT NULL CHECK (length >= 0),
    gain        REAL    NOT NULL CHECK (gain >= 0.0),
    FOREIGN KEY (session_id, track_index) REFERENCES tracks (session_id, idx) ON DELETE CASCADE
) STRICT;

CREATE INDEX clips_by_track ON clips (session_id, track_index, start, id);
CREATE INDEX clips_by_take ON clips (take_id) WHERE take_id IS NOT NULL;
