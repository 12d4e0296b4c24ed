//! Typed operations on the store: each is one job on the store thread (one transaction where it
//! writes several rows). None is real-time safe; all are async and never block a tokio worker.

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{
    clip_from_row, session_from_row, take_event_from_row, take_from_row, to_sql_u64,
    track_from_row, track_output_role, ClipRow, NewTake, SessionRow, TakeEvent, TakeMetrics,
    TakeRow, TakeStatus, TrackRow, CLIP_COLUMNS, SESSION_COLUMNS, TAKE_COLUMNS, TAKE_EVENT_COLUMNS,
    TRACK_COLUMNS,
};
use super::{now_ms, Store, StoreError};

/// Inserts one track; fails on a duplicate index.
const INSERT_TRACK: &str = "INSERT INTO tracks (session_id, idx, name, channels, armed, \
     input_gain, level, pan, muted, soloed, input, monitoring) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// Inserts a track or updates it in place (never delete + insert, which would cascade to the
/// track's clips).
const UPSERT_TRACK: &str = "INSERT INTO tracks (session_id, idx, name, channels, armed, \
     input_gain, level, pan, muted, soloed, input, monitoring) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
     ON CONFLICT (session_id, idx) DO UPDATE SET name = excluded.name, \
     channels = excluded.channels, armed = excluded.armed, input_gain = excluded.input_gain, \
     level = excluded.level, pan = excluded.pan, muted = excluded.muted, \
     soloed = excluded.soloed, input = excluded.input, monitoring = excluded.monitoring";

/// Runs [`INSERT_TRACK`] or [`UPSERT_TRACK`] for `track` of `session_id`.
fn write_track(
    conn: &Connection,
    sql: &str,
    session_id: &str,
    track: &TrackRow,
) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute(params![
        session_id,
        track.index,
        track.name,
        track.channels,
        track.armed,
        track.input_gain,
        track.level,
        track.pan,
        track.muted,
        track.soloed,
        track.input,
        track.monitoring,
    ])?;
    Ok(())
}

/// Reads every row of `sql` (bound to `params`) through `map`.
fn query_all<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, map)?;
    rows.collect()
}

/// Brings every metric into the range the schema accepts: non-finite or negative durations and
/// latencies become 0, the buffer fill is clamped to 0–1 (NaN to 0), counters saturate at
/// `i64::MAX`. Returns the metrics and whether anything changed.
fn sanitize_metrics(metrics: TakeMetrics) -> (TakeMetrics, bool) {
    fn non_negative(value: f64) -> f64 {
        if value.is_finite() && value > 0.0 {
            value
        } else {
            0.0
        }
    }
    fn fraction(value: f64) -> f64 {
        if value.is_nan() {
            0.0
        } else {
            value.clamp(0.0, 1.0)
        }
    }
    fn counter(value: u64) -> u64 {
        value.min(i64::MAX as u64)
    }
    let clean = TakeMetrics {
        duration_ms: non_negative(metrics.duration_ms),
        xruns: counter(metrics.xruns),
        dropped_frames: counter(metrics.dropped_frames),
        average_latency_ms: non_negative(metrics.average_latency_ms),
        data_bytes: counter(metrics.data_bytes),
        disk_buffer_min_fill: fraction(metrics.disk_buffer_min_fill),
        clip_count: counter(metrics.clip_count),
    };
    // NaN never equals itself, so any NaN input also counts as a change.
    let changed = clean != metrics;
    (clean, changed)
}

impl Store {
    /// Stores a new session and its tracks in one transaction: either all rows are written or
    /// none (a duplicate id or track index fails the whole call).
    pub async fn create_session(
        &self,
        session: SessionRow,
        tracks: Vec<TrackRow>,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO sessions (id, name, project_id, user_id, sample_rate, \
                 created_at_ms, active) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    session.id,
                    session.name,
                    session.project_id,
                    session.user_id,
                    session.sample_rate,
                    session.created_at_ms,
                    session.active,
                ],
            )?;
            for track in &tracks {
                write_track(&tx, INSERT_TRACK, &session.id, track)?;
            }
            tx.commit()
        })
        .await
    }

    /// Every stored session, oldest first (by `created_at_ms`, then id).
    pub async fn list_sessions(&self) -> Result<Vec<SessionRow>, StoreError> {
        self.call(|conn| {
            let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at_ms, id");
            query_all(conn, &sql, [], session_from_row)
        })
        .await
    }

    /// One session and its tracks (by index), or `None` if no session has this id.
    pub async fn load_session(
        &self,
        id: &str,
    ) -> Result<Option<(SessionRow, Vec<TrackRow>)>, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
            let Some(session) = tx
                .prepare_cached(&sql)?
                .query_row([&id], session_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            let sql =
                format!("SELECT {TRACK_COLUMNS} FROM tracks WHERE session_id = ?1 ORDER BY idx");
            let tracks = query_all(&tx, &sql, [&id], track_from_row)?;
            tx.commit()?;
            Ok(Some((session, tracks)))
        })
        .await
    }

    /// Marks a session as loaded in the engine (restored on start-up) or not. An unknown id is
    /// an error.
    pub async fn set_session_active(&self, id: &str, active: bool) -> Result<(), StoreError> {
        let key = id.to_owned();
        let changed = self
            .call(move |conn| {
                conn.execute(
                    "UPDATE sessions SET active = ?2 WHERE id = ?1",
                    params![key, active],
                )
            })
            .await?;
        if changed == 0 {
            return Err(self.sqlite_error(format!("no session {id:?}")));
        }
        Ok(())
    }

    /// Deletes a session with its tracks, takes, take events and clips (foreign-key cascade).
    /// `false` if no session had this id. The audio files are not touched.
    pub async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |conn| conn.execute("DELETE FROM sessions WHERE id = ?1", [&id]))
            .await
            .map(|deleted| deleted > 0)
    }

    /// Inserts a track, or updates every setting of the track with the same index in place
    /// (its clips stay). The session must exist.
    pub async fn upsert_track(&self, session_id: &str, track: TrackRow) -> Result<(), StoreError> {
        let session_id = session_id.to_owned();
        self.call(move |conn| write_track(conn, UPSERT_TRACK, &session_id, &track))
            .await
    }

    /// Deletes a track, its clips and where its direct outputs were patched (a later track with
    /// its index starts unpatched); its takes stay on record. An unknown track is an error.
    pub async fn delete_track(&self, session_id: &str, index: u32) -> Result<(), StoreError> {
        let key = session_id.to_owned();
        let deleted = self
            .call(move |conn| {
                let tx = conn.transaction()?;
                let deleted = tx.execute(
                    "DELETE FROM tracks WHERE session_id = ?1 AND idx = ?2",
                    params![key, index],
                )?;
                tx.execute(
                    "DELETE FROM output_connections WHERE session_id = ?1 AND port IN (?2, ?3)",
                    params![
                        key,
                        track_output_role(index, "L"),
                        track_output_role(index, "R")
                    ],
                )?;
                tx.commit()?;
                Ok(deleted)
            })
            .await?;
        if deleted == 0 {
            return Err(self.sqlite_error(format!("no track {index} in session {session_id:?}")));
        }
        Ok(())
    }

    /// Where a session's outputs are patched: (output role, peers joined with `+`).
    pub async fn output_connections(
        &self,
        session_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let session_id = session_id.to_owned();
        self.call(move |conn| {
            query_all(
                conn,
                "SELECT port, peers FROM output_connections WHERE session_id = ?1 ORDER BY port",
                [&session_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
        })
        .await
    }

    /// Records where one output of a session is patched; no peers removes the record.
    pub async fn set_output_connection(
        &self,
        session_id: &str,
        port: &str,
        peers: &str,
    ) -> Result<(), StoreError> {
        let (session_id, port, peers) = (session_id.to_owned(), port.to_owned(), peers.to_owned());
        self.call(move |conn| {
            if peers.is_empty() {
                conn.execute(
                    "DELETE FROM output_connections WHERE session_id = ?1 AND port = ?2",
                    params![session_id, port],
                )
            } else {
                conn.execute(
                    "INSERT INTO output_connections (session_id, port, peers) VALUES (?1, ?2, ?3)
                     ON CONFLICT (session_id, port) DO UPDATE SET peers = excluded.peers",
                    params![session_id, port, peers],
                )
            }
            .map(|_| ())
        })
        .await
    }

    /// Journals a take as `recording` (call it before the first sample is written) and returns
    /// its id. The session must exist.
    pub async fn insert_take(&self, take: NewTake) -> Result<i64, StoreError> {
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT INTO takes (session_id, track_index, path, status, channels, \
                 sample_rate, format, created_at_ms) \
                 VALUES (?1, ?2, ?3, 'recording', ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                take.session_id,
                take.track_index,
                take.path,
                take.channels,
                take.sample_rate,
                take.format,
                now_ms(),
            ])?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    /// Records the session frame at which a take's first sample was captured. An unknown take
    /// is an error.
    pub async fn set_take_started(&self, take_id: i64, start_frame: u64) -> Result<(), StoreError> {
        let changed = self
            .call(move |conn| {
                conn.prepare_cached("UPDATE takes SET start_frame = ?2 WHERE id = ?1")?
                    .execute(params![take_id, to_sql_u64(start_frame)?])
            })
            .await?;
        if changed == 0 {
            return Err(self.sqlite_error(format!("no take {take_id}")));
        }
        Ok(())
    }

    /// Finishes a take: its final status (`complete`, `recovered` or `failed`; `recording` is
    /// refused), its length in frames, its metrics, and the time it was finished. An unknown
    /// take is an error. Metrics outside their range (NaN, negative, a fill above 1, a counter
    /// beyond SQLite's integers) are clamped with a warning rather than refused: a bad
    /// measurement must never leave the take journaled as `recording`.
    pub async fn finish_take(
        &self,
        take_id: i64,
        status: TakeStatus,
        frames: u64,
        metrics: TakeMetrics,
    ) -> Result<(), StoreError> {
        if status == TakeStatus::Recording {
            return Err(self.sqlite_error(format!(
                "take {take_id} cannot be finished with status \"recording\""
            )));
        }
        let (metrics, clamped) = sanitize_metrics(metrics);
        if clamped {
            tracing::warn!(take_id, ?metrics, "take metrics out of range were clamped");
        }
        let changed = self
            .call(move |conn| {
                conn.prepare_cached(
                    "UPDATE takes SET status = ?2, frames = ?3, finished_at_ms = ?4, \
                     duration_ms = ?5, xruns = ?6, dropped_frames = ?7, \
                     average_latency_ms = ?8, data_bytes = ?9, disk_buffer_min_fill = ?10, \
                     clip_count = ?11 WHERE id = ?1",
                )?
                .execute(params![
                    take_id,
                    status.as_str(),
                    to_sql_u64(frames)?,
                    now_ms(),
                    metrics.duration_ms,
                    to_sql_u64(metrics.xruns)?,
                    to_sql_u64(metrics.dropped_frames)?,
                    metrics.average_latency_ms,
                    to_sql_u64(metrics.data_bytes)?,
                    metrics.disk_buffer_min_fill,
                    to_sql_u64(metrics.clip_count)?,
                ])
            })
            .await?;
        if changed == 0 {
            return Err(self.sqlite_error(format!("no take {take_id}")));
        }
        Ok(())
    }

    /// Appends an entry to a take's log (the take must exist).
    pub async fn add_take_event(&self, event: TakeEvent) -> Result<(), StoreError> {
        self.add_take_events(vec![event]).await
    }

    /// Appends several events in one transaction (one commit, one sync): an xrun during a
    /// 64-track take is one write, not 64.
    pub async fn add_take_events(&self, events: Vec<TakeEvent>) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO take_events (take_id, kind, frame, length, detail, created_at_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                let now = now_ms();
                for event in events {
                    insert.execute(params![
                        event.take_id,
                        event.kind,
                        to_sql_u64(event.frame)?,
                        to_sql_u64(event.length)?,
                        event.detail,
                        now,
                    ])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Every take in `status`, across sessions, oldest first (start-up recovery asks for
    /// `Recording`).
    pub async fn takes_with_status(&self, status: TakeStatus) -> Result<Vec<TakeRow>, StoreError> {
        self.call(move |conn| {
            let sql = format!("SELECT {TAKE_COLUMNS} FROM takes WHERE status = ?1 ORDER BY id");
            query_all(conn, &sql, [status.as_str()], take_from_row)
        })
        .await
    }

    /// Every take of a session, oldest first.
    pub async fn list_takes(&self, session_id: &str) -> Result<Vec<TakeRow>, StoreError> {
        let session_id = session_id.to_owned();
        self.call(move |conn| {
            let sql = format!("SELECT {TAKE_COLUMNS} FROM takes WHERE session_id = ?1 ORDER BY id");
            query_all(conn, &sql, [&session_id], take_from_row)
        })
        .await
    }

    /// A take's log, in the order the entries were added.
    pub async fn take_events(&self, take_id: i64) -> Result<Vec<TakeEvent>, StoreError> {
        self.call(move |conn| {
            let sql = format!(
                "SELECT {TAKE_EVENT_COLUMNS} FROM take_events WHERE take_id = ?1 ORDER BY id"
            );
            query_all(conn, &sql, [take_id], take_event_from_row)
        })
        .await
    }

    /// Places a clip on a track (the track must exist) and returns its id; `clip.id` is ignored.
    pub async fn insert_clip(&self, clip: ClipRow) -> Result<i64, StoreError> {
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT INTO clips (session_id, track_index, take_id, path, start, offset, \
                 length, gain) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                clip.session_id,
                clip.track_index,
                clip.take_id,
                clip.path,
                to_sql_u64(clip.start)?,
                to_sql_u64(clip.offset)?,
                to_sql_u64(clip.length)?,
                clip.gain,
            ])?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    /// Every clip of a session, by track index, then timeline start, then id.
    pub async fn list_clips(&self, session_id: &str) -> Result<Vec<ClipRow>, StoreError> {
        let session_id = session_id.to_owned();
        self.call(move |conn| {
            let sql = format!(
                "SELECT {CLIP_COLUMNS} FROM clips WHERE session_id = ?1 \
                 ORDER BY track_index, start, id"
            );
            query_all(conn, &sql, [&session_id], clip_from_row)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    async fn open_store() -> (TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("overdub.db")).unwrap();
        (dir, store)
    }

    fn session(id: &str, created_at_ms: i64) -> SessionRow {
        SessionRow {
            id: id.to_owned(),
            name: format!("Session {id}"),
            project_id: Some(format!("project-{id}")),
            user_id: None,
            sample_rate: 48_000,
            created_at_ms,
            active: false,
        }
    }

    fn track(index: u32) -> TrackRow {
        TrackRow {
            index,
            name: format!("Track {index}"),
            channels: if index % 2 == 0 { 2 } else { 1 },
            armed: index <= 2,
            input_gain: 1.25,
            level: 0.8,
            pan: -0.3,
            muted: index == 3,
            soloed: false,
            input: format!("system:capture_{index}"),
            monitoring: "auto".to_owned(),
        }
    }

    fn new_take(session_id: &str, track_index: u32) -> NewTake {
        NewTake {
            session_id: session_id.to_owned(),
            track_index,
            path: format!("sessions/{session_id}/takes/{track_index:02}-track-take1.wav"),
            channels: 1,
            sample_rate: 48_000,
            format: "s24".to_owned(),
        }
    }

    fn clip(session_id: &str, track_index: u32, take_id: Option<i64>, start: u64) -> ClipRow {
        ClipRow {
            id: 0,
            session_id: session_id.to_owned(),
            track_index,
            take_id,
            path: "sessions/x/takes/01-track-take1.wav".to_owned(),
            start,
            offset: 480,
            length: 96_000,
            gain: 0.5,
        }
    }

    /// Rows in `table` whose `column` equals `value`, counted through the store.
    async fn count(store: &Store, table: &'static str, column: &'static str, value: String) -> i64 {
        store
            .call(move |conn| {
                conn.query_row(
                    &format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1"),
                    [value],
                    |r| r.get(0),
                )
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn sessions_and_tracks_round_trip() {
        let (_dir, store) = open_store().await;
        let tracks = vec![track(1), track(2), track(3)];
        // Stored out of creation order: listing sorts by created_at.
        store
            .create_session(session("b", 2_000), vec![track(1)])
            .await
            .unwrap();
        store
            .create_session(session("a", 1_000), tracks.clone())
            .await
            .unwrap();

        let listed = store.list_sessions().await.unwrap();
        assert_eq!(listed, vec![session("a", 1_000), session("b", 2_000)]);
        assert_eq!(
            store.load_session("a").await.unwrap(),
            Some((session("a", 1_000), tracks.clone()))
        );
        assert_eq!(store.load_session("nope").await.unwrap(), None);

        store.set_session_active("a", true).await.unwrap();
        let (loaded, _) = store.load_session("a").await.unwrap().unwrap();
        assert!(loaded.active);
        store.set_session_active("a", false).await.unwrap();
        assert!(!store.load_session("a").await.unwrap().unwrap().0.active);
        assert!(matches!(
            store.set_session_active("nope", true).await,
            Err(StoreError::Sqlite(m)) if m.contains("nope")
        ));

        // Upsert: update track 2 in place, add track 4 (inserted out of order, read by index).
        let mut changed = track(2);
        changed.name = "Vocals".to_owned();
        changed.level = 2.0;
        changed.pan = 1.0;
        changed.soloed = true;
        changed.monitoring = "input".to_owned();
        store.upsert_track("a", track(4)).await.unwrap();
        store.upsert_track("a", changed.clone()).await.unwrap();
        for (port, peers) in [
            ("master_out_L", "system:playback_1"),
            ("track1.out_L", "fx:in_1"),
            ("track1.out_R", "fx:in_2"),
            ("track2.out_L", "fx:in_3"),
        ] {
            store.set_output_connection("a", port, peers).await.unwrap();
        }
        store.delete_track("a", 1).await.unwrap();
        // Where the deleted track's direct outputs went goes with it.
        assert_eq!(
            store.output_connections("a").await.unwrap(),
            vec![
                ("master_out_L".to_owned(), "system:playback_1".to_owned()),
                ("track2.out_L".to_owned(), "fx:in_3".to_owned()),
            ]
        );
        let (_, tracks) = store.load_session("a").await.unwrap().unwrap();
        assert_eq!(tracks, vec![changed, track(3), track(4)]);
        assert!(store.delete_track("a", 1).await.is_err());
        // Session b was not touched.
        assert_eq!(
            store.load_session("b").await.unwrap().unwrap().1,
            vec![track(1)]
        );
        // A track needs an existing session.
        assert!(store.upsert_track("nope", track(1)).await.is_err());
    }

    #[tokio::test]
    async fn create_session_is_all_or_nothing() {
        let (_dir, store) = open_store().await;
        let err = store
            .create_session(session("a", 1), vec![track(1), track(2), track(1)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
        assert_eq!(store.load_session("a").await.unwrap(), None);
        assert_eq!(count(&store, "tracks", "session_id", "a".into()).await, 0);

        store.create_session(session("a", 1), vec![]).await.unwrap();
        assert!(store.create_session(session("a", 1), vec![]).await.is_err());
        assert_eq!(store.list_sessions().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn out_of_range_values_are_refused_and_change_nothing() {
        let (_dir, store) = open_store().await;
        store
            .create_session(session("a", 1), vec![track(1)])
            .await
            .unwrap();
        let bad_tracks = [
            TrackRow {
                level: 2.5,
                ..track(1)
            },
            TrackRow {
                pan: -1.5,
                ..track(1)
            },
            TrackRow {
                input_gain: f64::NAN,
                ..track(1)
            },
            TrackRow {
                channels: 3,
                ..track(1)
            },
            TrackRow {
                index: 0,
                ..track(0)
            },
            TrackRow {
                monitoring: "loud".into(),
                ..track(1)
            },
        ];
        for bad in bad_tracks {
            assert!(
                store.upsert_track("a", bad.clone()).await.is_err(),
                "{bad:?} was accepted"
            );
        }
        assert_eq!(
            store.load_session("a").await.unwrap().unwrap().1,
            vec![track(1)]
        );
        let take_id = store.insert_take(new_take("a", 1)).await.unwrap();
        assert!(store.set_take_started(take_id, u64::MAX).await.is_err());
        assert!(store
            .set_take_started(take_id, i64::MAX as u64 + 1)
            .await
            .is_err());
        let takes = store.list_takes("a").await.unwrap();
        assert_eq!(
            (takes[0].status, takes[0].start_frame),
            (TakeStatus::Recording, 0)
        );
    }

    #[tokio::test]
    async fn bad_metrics_are_clamped_so_the_take_still_finishes() {
        let (_dir, store) = open_store().await;
        store
            .create_session(session("a", 1), vec![track(1)])
            .await
            .unwrap();
        let take_id = store.insert_take(new_take("a", 1)).await.unwrap();
        let bad = TakeMetrics {
            duration_ms: f64::NAN,
            xruns: u64::MAX,
            dropped_frames: 3,
            average_latency_ms: -1.0,
            data_bytes: 10,
            disk_buffer_min_fill: 1.5,
            clip_count: 2,
        };
        store
            .finish_take(take_id, TakeStatus::Complete, 10, bad)
            .await
            .unwrap();
        let take = &store.list_takes("a").await.unwrap()[0];
        assert_eq!((take.status, take.frames), (TakeStatus::Complete, 10));
        assert_eq!(
            take.metrics,
            TakeMetrics {
                duration_ms: 0.0,
                xruns: i64::MAX as u64,
                dropped_frames: 3,
                average_latency_ms: 0.0,
                data_bytes: 10,
                disk_buffer_min_fill: 1.0,
                clip_count: 2,
            }
        );
    }

    #[test]
    fn sanitize_metrics_reports_only_real_changes() {
        let good = TakeMetrics {
            duration_ms: 1.5,
            xruns: 1,
            dropped_frames: 2,
            average_latency_ms: 3.0,
            data_bytes: 4,
            disk_buffer_min_fill: 0.5,
            clip_count: 5,
        };
        assert_eq!(sanitize_metrics(good.clone()), (good.clone(), false));
        let nan_fill = TakeMetrics {
            disk_buffer_min_fill: f64::NAN,
            ..good.clone()
        };
        assert_eq!(
            sanitize_metrics(nan_fill),
            (
                TakeMetrics {
                    disk_buffer_min_fill: 0.0,
                    ..good
                },
                true
            )
        );
    }

    #[tokio::test]
    async fn takes_round_trip_through_their_life_cycle() {
        let (_dir, store) = open_store().await;
        store
            .create_session(session("a", 1), vec![track(1), track(2)])
            .await
            .unwrap();
        let before = now_ms();
        let first = store.insert_take(new_take("a", 1)).await.unwrap();
        let second = store.insert_take(new_take("a", 2)).await.unwrap();
        let after = now_ms();
        assert_ne!(first, second);

        let recording = store
            .takes_with_status(TakeStatus::Recording)
            .await
            .unwrap();
        assert_eq!(
            recording.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![first, second]
        );
        let journaled = &recording[0];
        assert_eq!(
            journaled,
            &TakeRow {
                id: first,
                session_id: "a".into(),
                track_index: 1,
                path: new_take("a", 1).path,
                status: TakeStatus::Recording,
                channels: 1,
                sample_rate: 48_000,
                format: "s24".into(),
                start_frame: 0,
                frames: 0,
                created_at_ms: journaled.created_at_ms,
                finished_at_ms: None,
                metrics: TakeMetrics::default(),
            }
        );
        assert!((before..=after).contains(&journaled.created_at_ms));

        store.set_take_started(first, 123_456).await.unwrap();
        let metrics = TakeMetrics {
            duration_ms: 2_000.5,
            xruns: 3,
            dropped_frames: 256,
            average_latency_ms: 5.333,
            data_bytes: 288_000,
            disk_buffer_min_fill: 0.25,
            clip_count: 7,
        };
        let finished_before = now_ms();
        store
            .finish_take(first, TakeStatus::Complete, 96_024, metrics.clone())
            .await
            .unwrap();
        store
            .finish_take(second, TakeStatus::Recovered, 5, TakeMetrics::default())
            .await
            .unwrap();

        let takes = store.list_takes("a").await.unwrap();
        assert_eq!(takes.len(), 2);
        let done = &takes[0];
        assert_eq!(
            (done.status, done.start_frame, done.frames, &done.metrics),
            (TakeStatus::Complete, 123_456, 96_024, &metrics)
        );
        assert!(done.finished_at_ms.is_some_and(|t| t >= finished_before));
        assert_eq!(takes[1].status, TakeStatus::Recovered);
        assert!(store
            .takes_with_status(TakeStatus::Recording)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store.takes_with_status(TakeStatus::Complete).await.unwrap(),
            vec![done.clone()]
        );
        assert!(store
            .takes_with_status(TakeStatus::Failed)
            .await
            .unwrap()
            .is_empty());

        assert!(store
            .finish_take(first, TakeStatus::Recording, 1, TakeMetrics::default())
            .await
            .is_err());
        assert!(store
            .finish_take(9_999, TakeStatus::Failed, 1, TakeMetrics::default())
            .await
            .is_err());
        assert!(store.set_take_started(9_999, 1).await.is_err());
        assert!(store.insert_take(new_take("nope", 1)).await.is_err());
        assert_eq!(store.list_takes("a").await.unwrap(), takes);
    }

    #[tokio::test]
    async fn take_events_round_trip_in_insertion_order() {
        let (_dir, store) = open_store().await;
        store
            .create_session(session("a", 1), vec![track(1)])
            .await
            .unwrap();
        let take_id = store.insert_take(new_take("a", 1)).await.unwrap();
        let other = store.insert_take(new_take("a", 1)).await.unwrap();
        let events = vec![
            TakeEvent {
                take_id,
                kind: "gap".into(),
                frame: 48_000,
                length: 256,
                detail: "ring full".into(),
            },
            TakeEvent {
                take_id,
                kind: "xrun".into(),
                frame: 1_000,
                length: 0,
                detail: String::new(),
            },
            TakeEvent {
                take_id,
                kind: "recovered".into(),
                frame: 90_000,
                length: 0,
                detail: "from file length".into(),
            },
        ];
        for event in &events {
            store.add_take_event(event.clone()).await.unwrap();
        }
        store
            .add_take_event(TakeEvent {
                take_id: other,
                kind: "disk_low".into(),
                frame: 0,
                length: 0,
                detail: "x".into(),
            })
            .await
            .unwrap();
        assert_eq!(store.take_events(take_id).await.unwrap(), events);
        assert_eq!(store.take_events(other).await.unwrap().len(), 1);
        assert!(store.take_events(12_345).await.unwrap().is_empty());
        let orphan = TakeEvent {
            take_id: 12_345,
            ..events[0].clone()
        };
        assert!(store.add_take_event(orphan.clone()).await.is_err());
        // A batch is one transaction: with an orphan in it, nothing of it is kept.
        let batch = vec![
            TakeEvent {
                take_id: other,
                ..events[1].clone()
            },
            orphan,
        ];
        assert!(store.add_take_events(batch).await.is_err());
        assert_eq!(store.take_events(other).await.unwrap().len(), 1);
        let batch = vec![
            TakeEvent {
                take_id: other,
                ..events[1].clone()
            },
            TakeEvent {
                take_id,
                ..events[1].clone()
            },
        ];
        store.add_take_events(batch).await.unwrap();
        assert_eq!(store.take_events(other).await.unwrap().len(), 2);
        assert_eq!(
            store.take_events(take_id).await.unwrap().len(),
            events.len() + 1
        );
    }

    #[tokio::test]
    async fn clips_round_trip_and_follow_their_track() {
        let (_dir, store) = open_store().await;
        store
            .create_session(session("a", 1), vec![track(1), track(2)])
            .await
            .unwrap();
        let take_id = store.insert_take(new_take("a", 1)).await.unwrap();
        let late = clip("a", 1, Some(take_id), 96_000);
        let early = clip("a", 1, None, 0);
        let other_track = clip("a", 2, None, 10);
        let late_id = store.insert_clip(late.clone()).await.unwrap();
        let early_id = store.insert_clip(early.clone()).await.unwrap();
        let other_id = store.insert_clip(other_track.clone()).await.unwrap();
        let expected = vec![
            ClipRow {
                id: early_id,
                ..early
            },
            ClipRow {
                id: late_id,
                ..late
            },
            ClipRow {
                id: other_id,
                ..other_track.clone()
            },
        ];
        assert_eq!(store.list_clips("a").await.unwrap(), expected);

        // Updating a track in place keeps its clips; deleting it removes them (and only them).
        store
            .upsert_track(
                "a",
                TrackRow {
                    name: "renamed".into(),
                    ..track(1)
                },
            )
            .await
            .unwrap();
        assert_eq!(store.list_clips("a").await.unwrap(), expected);
        store.delete_track("a", 1).await.unwrap();
        assert_eq!(
            store.list_clips("a").await.unwrap(),
            vec![ClipRow {
                id: other_id,
                ..other_track
            }]
        );
        // The track's take stays on record.
        assert_eq!(store.list_takes("a").await.unwrap().len(), 1);
        // A clip needs an existing track.
        assert!(store.insert_clip(clip("a", 1, None, 0)).await.is_err());
    }

    #[tokio::test]
    async fn deleting_a_session_cascades_to_everything_it_owns() {
        let (_dir, store) = open_store().await;
        for id in ["doomed", "kept"] {
            store
                .create_session(session(id, 1), vec![track(1), track(2)])
                .await
                .unwrap();
            let take_id = store.insert_take(new_take(id, 1)).await.unwrap();
            store
                .add_take_event(TakeEvent {
                    take_id,
                    kind: "xrun".into(),
                    frame: 1,
                    length: 0,
                    detail: String::new(),
                })
                .await
                .unwrap();
            store
                .insert_clip(clip(id, 1, Some(take_id), 0))
                .await
                .unwrap();
        }
        let kept_before = (
            store.load_session("kept").await.unwrap(),
            store.list_takes("kept").await.unwrap(),
            store.list_clips("kept").await.unwrap(),
        );

        assert!(store.delete_session("doomed").await.unwrap());
        assert_eq!(store.load_session("doomed").await.unwrap(), None);
        for table in ["tracks", "takes", "clips"] {
            assert_eq!(
                count(&store, table, "session_id", "doomed".into()).await,
                0,
                "{table}"
            );
        }
        let events_left: i64 = store
            .call(|conn| conn.query_row("SELECT COUNT(*) FROM take_events", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(events_left, 1, "only the kept session's event remains");
        assert!(!store.delete_session("doomed").await.unwrap());

        let kept_after = (
            store.load_session("kept").await.unwrap(),
            store.list_takes("kept").await.unwrap(),
            store.list_clips("kept").await.unwrap(),
        );
        assert_eq!(kept_after, kept_before);
    }

    #[tokio::test]
    async fn data_survives_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overdub.db");
        let store = Store::open(&path).unwrap();
        store
            .create_session(session("a", 1), vec![track(1)])
            .await
            .unwrap();
        let take_id = store.insert_take(new_take("a", 1)).await.unwrap();
        store
            .insert_clip(clip("a", 1, Some(take_id), 0))
            .await
            .unwrap();
        let before = (
            store.list_takes("a").await.unwrap(),
            store.list_clips("a").await.unwrap(),
        );
        store.close();

        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.load_session("a").await.unwrap(),
            Some((session("a", 1), vec![track(1)]))
        );
        let after = (
            store.list_takes("a").await.unwrap(),
            store.list_clips("a").await.unwrap(),
        );
        assert_eq!(after, before);
        // The journal still says "recording": that is what start-up recovery looks for.
        assert_eq!(
            store
                .takes_with_status(TakeStatus::Recording)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_from_many_tasks_all_complete() {
        let (_dir, store) = open_store().await;
        let tasks: Vec<_> = (0..24)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let id = format!("s{n:02}");
                    store
                        .create_session(session(&id, n), vec![track(1), track(2)])
                        .await?;
                    let take_id = store.insert_take(new_take(&id, 1)).await?;
                    for frame in 0..5 {
                        store
                            .add_take_event(TakeEvent {
                                take_id,
                                kind: "gap".into(),
                                frame,
                                length: 1,
                                detail: id.clone(),
                            })
                            .await?;
                    }
                    store.ping().await?;
                    store
                        .finish_take(
                            take_id,
                            TakeStatus::Complete,
                            100 + n as u64,
                            TakeMetrics::default(),
                        )
                        .await?;
                    Ok::<_, StoreError>(take_id)
                })
            })
            .collect();
        let mut take_ids = Vec::new();
        for task in tasks {
            take_ids.push(task.await.unwrap().unwrap());
        }
        let sessions = store.list_sessions().await.unwrap();
        assert_eq!(sessions.len(), 24);
        assert_eq!(sessions[0].id, "s00");
        let complete = store.takes_with_status(TakeStatus::Complete).await.unwrap();
        assert_eq!(complete.len(), 24);
        for take in &complete {
            let n: u64 = take.session_id[1..].parse().unwrap();
            assert_eq!(take.frames, 100 + n);
            assert_eq!(store.take_events(take.id).await.unwrap().len(), 5);
        }
        take_ids.sort_unstable();
        take_ids.dedup();
        assert_eq!(take_ids.len(), 24);
    }
}
