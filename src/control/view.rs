//! Published views of the active sessions: what the read paths (the bridge's
//! `GET /session/:id`, the WebSocket's position and meter pushes) need, readable without the
//! session's lock and without waiting on anything.
//!
//! The session's owner publishes: every operation under the session's lock and the session's
//! pump (every [`super::PUMP_INTERVAL`]) end with [`ActiveSession::publish`], and so does
//! every [`ActiveSession::drain`], where the transport state changes. A new view is built
//! only when something in it changed. The position and the meters are not in the view: they
//! are read live from the engine's atomics.
//!
//! Staleness: after an operation returns, the view reflects it. A change the engine makes on
//! its own (a transport follower, a full disk stopping the recording) shows at the next drain:
//! within one pump interval (20 ms), or sooner when an operation drains first. The position
//! is the engine's, as of the end of the last processed period.
//!
//! Not real-time: the locks here are held only to clone or swap an `Arc`.
//!
//! [`ActiveSession::publish`]: super::session::ActiveSession::publish
//! [`ActiveSession::drain`]: super::session::ActiveSession::drain

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::engine::{EngineShared, TransportState};
use crate::store::{SessionRow, TrackRow};

/// What an active session looked like when its owner last published it. Immutable; a change
/// publishes a new one with a new [`generation`](SessionView::generation).
#[derive(Debug)]
pub struct SessionView {
    /// Unique to this view among every view the process publishes: equal generations mean the
    /// same content, so a reader may cache what it derives from a view under it.
    pub generation: u64,
    /// The stored record.
    pub row: SessionRow,
    /// Transport state.
    pub state: TransportState,
    /// Tracks, by index.
    pub tracks: Vec<TrackRow>,
}

/// A published view with the live position: what `GET /session/:id` answers.
#[derive(Clone, Debug)]
pub struct LiveSession {
    /// The latest published view.
    pub view: Arc<SessionView>,
    /// Position in frames, read from the engine when this was taken.
    pub position: u64,
}

/// Generations of published views, process-wide.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// One active session's publication: its latest view and its engine's live counters.
pub(super) struct Publication {
    view: RwLock<Arc<SessionView>>,
    shared: Arc<EngineShared>,
}

impl Publication {
    /// A publication whose first view is `row`, `state` and `tracks`.
    pub fn new(
        row: &SessionRow,
        state: TransportState,
        tracks: Vec<TrackRow>,
        shared: Arc<EngineShared>,
    ) -> Publication {
        Publication {
            view: RwLock::new(Arc::new(SessionView {
                generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
                row: row.clone(),
                state,
                tracks,
            })),
            shared,
        }
    }

    /// The latest view.
    pub fn view(&self) -> Arc<SessionView> {
        // A panic while holding this lock leaves a whole `Arc` behind: still consistent.
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The latest view with the engine's current position.
    pub fn live(&self) -> LiveSession {
        LiveSession {
            view: self.view(),
            position: self.shared.position(),
        }
    }

    /// Peak and RMS (linear) of the track in engine slot `slot`.
    pub fn track_meter(&self, slot: usize) -> (f32, f32) {
        self.shared.track_meter(slot)
    }

    /// Publishes a new view if `row`, `state` or `tracks` differ from the latest one; the
    /// comparison allocates nothing, so calling this after every drain is cheap.
    pub fn update<'a>(
        &self,
        row: &SessionRow,
        state: TransportState,
        tracks: impl Iterator<Item = &'a TrackRow> + Clone,
    ) {
        let current = self.view();
        if current.state == state && current.row == *row && current.tracks.iter().eq(tracks.clone())
        {
            return;
        }
        let next = Arc::new(SessionView {
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            row: row.clone(),
            state,
            tracks: tracks.cloned().collect(),
        });
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = next;
    }
}

/// The publications of the active sessions, by session id.
#[derive(Default)]
pub(super) struct Publications {
    sessions: RwLock<HashMap<String, Arc<Publication>>>,
}

impl Publications {
    /// The publication of active session `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Publication>> {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Adds (or replaces) the publication of a session that became active.
    pub fn insert(&self, id: &str, publication: Arc<Publication>) {
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), publication);
    }

    /// The ids of the sessions published now.
    pub fn ids(&self) -> Vec<String> {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Forgets a session that stopped being active.
    pub fn remove(&self, id: &str) {
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Forgets every session (shutdown).
    pub fn clear(&self) {
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> SessionRow {
        SessionRow {
            id: "s".into(),
            name: "Demo".into(),
            project_id: None,
            user_id: None,
            sample_rate: 48_000,
            created_at_ms: 0,
            active: true,
        }
    }

    fn track(index: u32, level: f64) -> TrackRow {
        TrackRow {
            index,
            name: format!("Track {index}"),
            channels: 1,
            armed: false,
            input_gain: 1.0,
            level,
            pan: 0.0,
            muted: false,
            soloed: false,
            input: String::new(),
            monitoring: "auto".into(),
        }
    }

    fn publication(tracks: Vec<TrackRow>) -> Publication {
        let (_processor, handle, _markers) =
            crate::engine::engine(crate::engine::EngineConfig::new(48_000, 256, 4));
        Publication::new(
            &row(),
            TransportState::Stopped,
            tracks,
            handle.shared().clone(),
        )
    }

    #[test]
    fn an_unchanged_session_keeps_its_view_and_a_change_publishes_a_new_one() {
        let tracks = vec![track(1, 1.0), track(2, 1.0)];
        let publication = publication(tracks.clone());
        let first = publication.view();
        publication.update(&row(), TransportState::Stopped, tracks.iter());
        assert!(Arc::ptr_eq(&first, &publication.view()));

        publication.update(&row(), TransportState::Recording, tracks.iter());
        let second = publication.view();
        assert_eq!(second.state, TransportState::Recording);
        assert!(second.generation > first.generation);

        let changed = vec![track(1, 1.0), track(2, 0.5)];
        publication.update(&row(), TransportState::Recording, changed.iter());
        let third = publication.view();
        assert_eq!(third.tracks, changed);
        assert!(third.generation > second.generation);

        publication.update(&row(), TransportState::Recording, changed[..1].iter());
        assert_eq!(publication.view().tracks.len(), 1);

        let mut renamed = row();
        renamed.name = "Other".into();
        publication.update(&renamed, TransportState::Recording, changed[..1].iter());
        assert_eq!(publication.view().row.name, "Other");
    }

    /// Regression guard for the lock-free GET: every operation's effect is in the published
    /// view as soon as the operation returns, with no pump tick in between.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_view_read_right_after_each_operation_reflects_it() {
        use super::super::{Control, ErrorCode, TrackUpdate};
        let dir = tempfile::tempdir().unwrap();
        let (control, id) =
            super::super::testing::control_with_session(dir.path(), "views", 2).await;
        let state = |control: &Control| control.live_session(&id).unwrap().view.state;
        let live = control.live_session(&id).unwrap();
        assert_eq!(live.view.row.name, "views");
        assert_eq!(live.view.tracks.len(), 2);
        assert_eq!(live.view.state, TransportState::Stopped);

        control.record(&id).await.unwrap();
        assert_eq!(state(&control), TransportState::Recording);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while control.live_session(&id).unwrap().position == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the position never moved"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        control.pause(&id).await.unwrap();
        assert_eq!(state(&control), TransportState::Paused);
        control.resume(&id).await.unwrap();
        assert_eq!(state(&control), TransportState::Recording);
        control.stop(&id).await.unwrap();
        assert_eq!(state(&control), TransportState::Stopped);
        assert_eq!(control.transport(&id).unwrap().0, TransportState::Stopped);

        let before = control.live_session(&id).unwrap().view.generation;
        control
            .update_track(
                &id,
                2,
                TrackUpdate {
                    level: Some(0.25),
                    name: Some("Bass".into()),
                    ..TrackUpdate::default()
                },
            )
            .await
            .unwrap();
        let view = control.live_session(&id).unwrap().view;
        assert!(view.generation > before);
        assert_eq!(view.tracks[1].level, 0.25);
        assert_eq!(view.tracks[1].name, "Bass");
        let meters = control.track_meters(&id).unwrap();
        assert_eq!(meters.iter().map(|m| m.0).collect::<Vec<_>>(), vec![1, 2]);

        control.remove_track(&id, 1).await.unwrap();
        let view = control.live_session(&id).unwrap().view;
        assert_eq!(view.tracks.iter().map(|t| t.index).collect::<Vec<_>>(), [2]);

        control.close_session(&id).await.unwrap();
        let gone = control.live_session(&id).unwrap_err();
        assert_eq!(gone.code, ErrorCode::NotFound);
        assert_eq!(
            control.track_meters(&id).unwrap_err().code,
            ErrorCode::NotFound
        );
        control.shutdown().await;
    }

    #[test]
    fn the_registry_finds_active_sessions_only() {
        let publications = Publications::default();
        publications.insert("a", Arc::new(publication(vec![track(1, 1.0)])));
        publications.insert("b", Arc::new(publication(Vec::new())));
        assert_eq!(publications.get("a").unwrap().view().tracks.len(), 1);
        assert_eq!(publications.get("a").unwrap().live().position, 0);
        publications.remove("a");
        assert!(publications.get("a").is_none());
        assert!(publications.get("b").is_some());
        publications.clear();
        assert!(publications.get("b").is_none());
    }
}
