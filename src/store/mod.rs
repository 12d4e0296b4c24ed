//! The SQLite store: sessions, tracks, the take journal and clips, on a thread of its own.
//!
//! One `rusqlite::Connection` lives on the thread `overdub-store`; every other thread (tokio
//! workers included) reaches it through a cheap, cloneable [`Store`] handle that sends boxed
//! jobs over a std channel and gets the answer back on a `tokio::sync::oneshot` (async callers)
//! or a std channel (blocking callers at start-up and shutdown). So SQLite never blocks a
//! tokio worker, and there is exactly one writer.
//!
//! Nothing in this module is real-time safe: it allocates, locks and does file I/O. The audio
//! callback never touches it; the control layer does.
//!
//! Opening is conservative: a file that is not a healthy overdub database is reported
//! ([`StoreError::Corrupt`], [`StoreError::NewerSchema`], [`StoreError::ReadOnly`]) and left
//! exactly as it was: the store never recreates, truncates or downgrades an existing file.

mod error;
mod migrations;
mod ops;
mod rows;

pub use error::StoreError;
pub use rows::{
    track_output_role, ClipRow, NewTake, SessionRow, TakeEvent, TakeMetrics, TakeRow, TakeStatus,
    TrackRow, MASTER_OUTPUT_ROLES,
};

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, MAIN_DB};
use tokio::sync::oneshot;

use error::{from_io, from_sqlite};

/// How long a statement waits for a lock held by another connection (an operator's `sqlite3`
/// shell, a backup) before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Name of the thread that owns the connection.
const THREAD_NAME: &str = "overdub-store";

/// A job as the store thread sees it: it runs against the connection and delivers its own reply.
type Job = Box<dyn FnOnce(&mut Connection) + Send + 'static>;

/// Handle to the store thread. Cheap to clone; all clones talk to the same connection.
///
/// The thread stops when [`Store::close`] is called on any handle, or when the last handle is
/// dropped; either way it first runs the jobs already queued, then checkpoints the WAL into the
/// database file and closes the connection.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// State shared by every clone of a [`Store`].
struct Shared {
    /// Database file, for error messages.
    path: Arc<Path>,
    /// Job queue to the store thread; `None` once closed.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The store thread, joined on close; `None` once joined.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The store thread's id, to refuse blocking calls that would wait on themselves.
    thread_id: ThreadId,
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the store thread. **Blocking**, not
    /// real-time safe: call it at start-up, before or outside the tokio runtime's hot path.
    ///
    /// Creates the parent directory if it is missing. Then, in order: refuses a path whose file
    /// or directory is not writable ([`StoreError::ReadOnly`]; nothing is created); opens the
    /// file; runs `PRAGMA quick_check` and refuses anything but `ok`, including a file that is
    /// not a database or a database without overdub's `schema_migrations` table
    /// ([`StoreError::Corrupt`]); refuses a schema newer than this build
    /// ([`StoreError::NewerSchema`]). None of these checks writes to the file, and the file is
    /// never recreated. Only then does it switch to WAL mode, turn on foreign keys and full
    /// synchronous commits, and apply the pending migrations, each in its own transaction.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = open_connection(path)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread_path = path.to_path_buf();
        let thread = thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || serve(conn, &queue, &thread_path))
            .map_err(|e| from_io(path, "cannot start the store thread", &e))?;
        Ok(Store {
            shared: Arc::new(Shared {
                path: Arc::from(path),
                thread_id: thread.thread().id(),
                jobs: Mutex::new(Some(jobs)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The database file this store was opened on.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Runs `job` on the store thread and returns its result; an `Err` from SQLite is mapped to
    /// [`StoreError`] naming the file. Not real-time safe (allocates, sends to a channel), but
    /// never blocks the calling tokio worker. If the future is dropped, the job still runs.
    /// A job that panics is reported as [`StoreError::Sqlite`]; the store keeps running.
    /// [`StoreError::Closed`] once the store is closed.
    pub async fn call<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(job, move |outcome| {
            // The caller may have given up waiting (dropped future): nothing to deliver then.
            let _ = reply.send(outcome);
        })?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Like [`Store::call`], but **blocks** the calling thread until the job has run: for
    /// start-up and shutdown code outside tokio. Never call it on a tokio worker or from inside
    /// a job (the latter is refused with an error instead of deadlocking).
    pub fn call_blocking<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        if thread::current().id() == self.shared.thread_id {
            return Err(StoreError::Sqlite(format!(
                "{}: call_blocking from inside a store job would wait on itself",
                self.shared.path.display()
            )));
        }
        let (reply, answer) = mpsc::channel();
        self.submit(job, move |outcome| {
            let _ = reply.send(outcome);
        })?;
        answer.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Health check: runs a real query on the store thread. Not real-time safe.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.call(|conn| {
            conn.query_row("SELECT COUNT(*) FROM schema_migrations", [], |row| {
                row.get::<_, i64>(0)
            })
        })
        .await
        .map(|_| ())
    }

    /// Stops the store for every handle: jobs already queued still run, then the WAL is
    /// checkpointed into the database file and the connection closed; later calls get
    /// [`StoreError::Closed`]. **Blocks** until that is done, so the data is on disk when it
    /// returns (shutdown's "flush the store" step). Idempotent. Not real-time safe.
    pub fn close(&self) {
        self.shared.shutdown();
    }

    /// Wraps `job` so that it maps its error, survives a panic and hands its outcome to `reply`,
    /// then queues it. `Closed` if the store thread is gone.
    fn submit<R, F>(
        &self,
        job: F,
        reply: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let path = Arc::clone(&self.shared.path);
        let job: Job = Box::new(move |conn| {
            let outcome = match panic::catch_unwind(AssertUnwindSafe(|| job(conn))) {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(from_sqlite(&path, &e)),
                Err(payload) => Err(StoreError::Sqlite(format!(
                    "{}: a store job panicked: {}",
                    path.display(),
                    panic_message(payload.as_ref())
                ))),
            };
            reply(outcome);
        });
        match lock(&self.shared.jobs).as_ref() {
            Some(jobs) => jobs.send(job).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }

    /// A `Sqlite` error naming the file: an update or delete that matched no row, a refused value.
    fn sqlite_error(&self, what: String) -> StoreError {
        StoreError::Sqlite(format!("{}: {what}", self.shared.path.display()))
    }
}

impl Shared {
    /// Drops the job queue so the thread drains it and exits, then waits for it. Idempotent.
    fn shutdown(&self) {
        drop(lock(&self.jobs).take());
        let Some(thread) = lock(&self.thread).take() else {
            return;
        };
        if thread.thread().id() == thread::current().id() {
            // The last handle was dropped by a job on the store thread itself: it cannot join
            // itself, and it exits on its own once this job returns (the queue is closed).
            return;
        }
        if thread.join().is_err() {
            tracing::error!(path = %self.path.display(), "the store thread panicked");
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Locks `mutex`, recovering the data if a panicking thread poisoned it (the guarded values,
/// an `Option` of a sender or a join handle, cannot be left half-updated).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Text of a panic payload, for the error reported to the caller.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

/// Current time as unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The store thread's loop: runs jobs until every sender is gone, then checkpoints the WAL and
/// closes the connection.
fn serve(mut conn: Connection, queue: &mpsc::Receiver<Job>, path: &Path) {
    for job in queue.iter() {
        job(&mut conn);
        if !conn.is_autocommit() {
            // A job left a transaction open (a raw BEGIN, or a panic between BEGIN and COMMIT):
            // never let it swallow the next job's writes.
            tracing::warn!(path = %path.display(), "a store job left a transaction open; rolling it back");
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(path = %path.display(), error = %e, "rollback failed");
            }
        }
    }
    let checkpoint = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    });
    match checkpoint {
        Ok((0, _, _)) => tracing::debug!(path = %path.display(), "store closed, WAL checkpointed"),
        Ok((_, log, done)) => tracing::warn!(
            path = %path.display(), log, done, "WAL checkpoint blocked by another connection"
        ),
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "WAL checkpoint failed"),
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(path = %path.display(), error = %e, "closing the database failed");
    }
}

/// Fails with `ReadOnly` (or `Io`) naming `path` unless the calling process may write to it.
fn check_writable(path: &Path, what: &str) -> Result<(), StoreError> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| StoreError::Io(format!("{}: path contains a NUL byte", path.display())))?;
    // SAFETY: `c_path` is a valid NUL-terminated string that lives across the call, and
    // faccessat only reads it; AT_FDCWD makes relative paths resolve as std's do.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::W_OK,
            libc::AT_EACCESS,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(from_io(path, what, &std::io::Error::last_os_error()))
    }
}

/// Opens, checks, configures and migrates the database; see [`Store::open`] for the order.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let exists = match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(StoreError::Io(format!(
                "{}: is a directory, not a database file",
                path.display()
            )))
        }
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(from_io(path, "cannot inspect the database file", &e)),
    };
    if !exists && !dir.is_dir() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| from_io(&dir, "cannot create the database directory", &e))?;
    }
    // SQLite creates the database and its -wal and -shm files next to it: all need the directory.
    check_writable(&dir, "the database directory is not writable")?;
    if exists {
        check_writable(path, "the database file is not writable")?;
    }

    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let sqlite = |e: rusqlite::Error| from_sqlite(path, &e);
    let mut conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
    // Until the file has passed every check, closing must not checkpoint anything into it.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    if conn.is_readonly(MAIN_DB).map_err(sqlite)? {
        return Err(StoreError::ReadOnly(format!(
            "{}: SQLite opened the file read-only",
            path.display()
        )));
    }

    check_integrity(&conn, path)?;
    let found = migrations::current_version(&conn).map_err(sqlite)?;
    let known = migrations::known_version();
    if found > known {
        return Err(StoreError::NewerSchema { found, known });
    }
    if !migrations::has_migrations_table(&conn).map_err(sqlite)?
        && migrations::has_user_tables(&conn).map_err(sqlite)?
    {
        return Err(StoreError::Corrupt(format!(
            "{}: this SQLite database was not made by overdub (it has tables but no \
             schema_migrations)",
            path.display()
        )));
    }

    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Io(format!(
            "{}: cannot switch to WAL mode (journal mode stays {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(sqlite)?;
    let applied =
        migrations::apply_pending(&mut conn, migrations::MIGRATIONS, now_ms()).map_err(sqlite)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
        .map_err(sqlite)?;
    tracing::info!(
        path = %path.display(),
        schema_version = known,
        ?applied,
        "database opened"
    );
    Ok(conn)
}

/// Runs `PRAGMA quick_check`; anything but a single `ok` row is `Corrupt`. Read-only.
fn check_integrity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let sqlite = |e: rusqlite::Error| from_sqlite(path, &e);
    let mut stmt = conn.prepare("PRAGMA quick_check").map_err(sqlite)?;
    let report = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(sqlite)?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(sqlite)?;
    if report.len() == 1 && report[0] == "ok" {
        return Ok(());
    }
    let mut summary = report
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if report.len() > 5 {
        summary.push_str(&format!("; and {} more problems", report.len() - 5));
    }
    Err(StoreError::Corrupt(format!(
        "{}: integrity check failed: {summary}",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use tempfile::TempDir;

    fn temp_db() -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overdub.db");
        (dir, path)
    }

    /// `(version, name, applied_at_ms)` rows of `schema_migrations`, read through the store.
    fn migration_rows(store: &Store) -> Vec<(i64, String, i64)> {
        store
            .call_blocking(|conn| {
                let mut stmt = conn.prepare(
                    "SELECT version, name, applied_at_ms FROM schema_migrations ORDER BY version",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .unwrap()
    }

    fn session_count(store: &Store) -> i64 {
        store
            .call_blocking(|conn| conn.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0)))
            .unwrap()
    }

    fn insert_raw_session(store: &Store, id: &str, name: &str) {
        let (id, name) = (id.to_owned(), name.to_owned());
        store
            .call_blocking(move |conn| {
                conn.execute(
                    "INSERT INTO sessions (id, name, sample_rate, created_at_ms) \
                     VALUES (?1, ?2, 48000, 1)",
                    [id, name],
                )
            })
            .unwrap();
    }

    /// The WAL is folded into the database file: no `-wal` file, or an empty one.
    fn assert_wal_checkpointed(path: &Path) {
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
        assert_eq!(len, 0, "{} still holds {len} bytes", wal.display());
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn expect_open_error(path: &Path) -> StoreError {
        match Store::open(path) {
            Ok(_) => panic!("{} opened, but it should have been refused", path.display()),
            Err(e) => e,
        }
    }

    #[test]
    fn fresh_open_applies_every_migration_and_reopen_applies_none() {
        let (_dir, path) = temp_db();
        let before = now_ms();
        let store = Store::open(&path).unwrap();
        let after = now_ms();
        let rows = migration_rows(&store);
        let expected: Vec<(i64, &str)> = migrations::MIGRATIONS
            .iter()
            .map(|m| (m.version, m.name))
            .collect();
        assert_eq!(
            rows.iter()
                .map(|(v, n, _)| (*v, n.as_str()))
                .collect::<Vec<_>>(),
            expected
        );
        assert!(
            rows.iter().all(|(_, _, at)| (before..=after).contains(at)),
            "{rows:?}"
        );
        let (mode, fk): (String, i64) = store
            .call_blocking(|conn| {
                let mode = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let fk = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
                Ok((mode, fk))
            })
            .unwrap();
        assert_eq!((mode.as_str(), fk), ("wal", 1));
        insert_raw_session(&store, "s1", "first");
        store.close();

        let store = Store::open(&path).unwrap();
        assert_eq!(
            migration_rows(&store),
            rows,
            "reopening must not re-apply migrations"
        );
        assert_eq!(session_count(&store), 1);
        store.close();
    }

    #[test]
    fn missing_parent_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/overdub.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.path(), path.as_path());
        assert_eq!(session_count(&store), 0);
        store.close();
        assert!(path.is_file());
    }

    #[test]
    fn random_bytes_are_corrupt_and_left_untouched() {
        let (dir, path) = temp_db();
        let original = noise(16 * 1024);
        std::fs::write(&path, &original).unwrap();
        let err = expect_open_error(&path);
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains(&*path.to_string_lossy())),
            "{err:?}"
        );
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), original);
        assert_eq!(dir_entries(dir.path()), vec!["overdub.db"]);
    }

    #[test]
    fn a_text_file_is_corrupt_and_left_untouched() {
        let (dir, path) = temp_db();
        let original = b"these are my notes, not a database\n".repeat(40);
        std::fs::write(&path, &original).unwrap();
        let err = expect_open_error(&path);
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), original);
        assert_eq!(dir_entries(dir.path()), vec!["overdub.db"]);
    }

    #[test]
    fn a_truncated_database_is_corrupt_and_left_untouched() {
        let (_dir, path) = temp_db();
        let store = Store::open(&path).unwrap();
        store
            .call_blocking(|conn| {
                let tx = conn.transaction()?;
                for i in 0..400 {
                    tx.execute(
                        "INSERT INTO sessions (id, name, sample_rate, created_at_ms) \
                         VALUES (?1, ?2, 48000, ?3)",
                        rusqlite::params![format!("session-{i}"), "x".repeat(200), i],
                    )?;
                }
                tx.commit()
            })
            .unwrap();
        store.close();
        let full = std::fs::read(&path).unwrap();
        assert!(
            full.len() > 16 * 4096,
            "test database too small: {}",
            full.len()
        );
        let truncated = &full[..full.len() / 2];
        std::fs::write(&path, truncated).unwrap();

        let err = expect_open_error(&path);
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), truncated);
    }

    #[test]
    fn a_foreign_sqlite_database_is_refused_and_left_untouched() {
        let (_dir, path) = temp_db();
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("CREATE TABLE recipes (name TEXT); INSERT INTO recipes VALUES ('soup');")
            .unwrap();
        other.close().unwrap();
        let original = std::fs::read(&path).unwrap();
        let err = expect_open_error(&path);
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("not made by overdub")),
            "{err:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), original);
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_untouched() {
        let (_dir, path) = temp_db();
        Store::open(&path).unwrap().close();
        let newer = migrations::known_version() + 1;
        let other = Connection::open(&path).unwrap();
        other
            .execute(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?1, 'future', 0)",
                [newer],
            )
            .unwrap();
        other.close().unwrap();
        let original = std::fs::read(&path).unwrap();

        let err = expect_open_error(&path);
        match err {
            StoreError::NewerSchema { found, known } => {
                assert_eq!((found, known), (newer, migrations::known_version()));
            }
            other => panic!("expected NewerSchema, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), original);
    }

    /// A tmpfs mounted for a test, unmounted when dropped (also when the test fails).
    struct TmpfsMount(PathBuf);

    impl TmpfsMount {
        /// Mounts a 4 MiB tmpfs on `dir` with `options`; `None` if mounting is not permitted.
        fn new(dir: &Path, options: &str) -> Option<TmpfsMount> {
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("{options},size=4m"), "tmpfs"])
                .arg(dir)
                .status()
                .ok()?;
            status.success().then(|| TmpfsMount(dir.to_path_buf()))
        }

        fn remount_read_only(&self) {
            let status = Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(&self.0)
                .status()
                .unwrap();
            assert!(status.success(), "remount read-only failed");
        }
    }

    impl Drop for TmpfsMount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    fn running_as_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// Makes `dir` unwritable for this process. Root ignores permission bits, so as root it
    /// mounts a read-only tmpfs there instead (`None` when mounting is not permitted either).
    fn read_only_dir(dir: &Path) -> Option<Option<TmpfsMount>> {
        if running_as_root() {
            TmpfsMount::new(dir, "ro").map(Some)
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            Some(None)
        }
    }

    #[test]
    fn a_read_only_directory_is_refused_and_nothing_is_created() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ro");
        std::fs::create_dir(&dir).unwrap();
        let _mount = read_only_dir(&dir)
            .expect("as root this test mounts a read-only tmpfs; mounting must be permitted");
        let path = dir.join("overdub.db");
        let err = expect_open_error(&path);
        assert!(
            matches!(&err, StoreError::ReadOnly(m) if m.contains(&*dir.to_string_lossy())),
            "{err:?}"
        );
        assert!(dir_entries(&dir).is_empty(), "{:?}", dir_entries(&dir));
    }

    #[test]
    fn an_existing_database_on_a_read_only_file_system_is_refused_and_left_untouched() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("overdub.db");
        let mount = if running_as_root() {
            Some(TmpfsMount::new(&dir, "rw").expect("mounting a tmpfs must be permitted as root"))
        } else {
            None
        };
        let store = Store::open(&path).unwrap();
        insert_raw_session(&store, "s1", "kept");
        store.close();
        let original = std::fs::read(&path).unwrap();
        match &mount {
            Some(mount) => mount.remount_read_only(),
            None => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            }
        }
        let err = expect_open_error(&path);
        assert!(matches!(err, StoreError::ReadOnly(_)), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), original);
    }

    #[test]
    fn a_directory_at_the_database_path_is_an_io_error() {
        let (_dir, path) = temp_db();
        std::fs::create_dir(&path).unwrap();
        assert!(matches!(expect_open_error(&path), StoreError::Io(_)));
    }

    #[test]
    fn close_checkpoints_stops_every_handle_and_is_idempotent() {
        let (_dir, path) = temp_db();
        let store = Store::open(&path).unwrap();
        let other = store.clone();
        insert_raw_session(&store, "s1", "one");
        store.close();
        assert_wal_checkpointed(&path);
        assert!(matches!(
            store.call_blocking(|_| Ok(())),
            Err(StoreError::Closed)
        ));
        assert!(matches!(
            other.call_blocking(|_| Ok(())),
            Err(StoreError::Closed)
        ));
        other.close();
        store.close();
        // The checkpointed file alone holds the data.
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn async_calls_after_close_report_closed() {
        let (_dir, path) = temp_db();
        let store = Store::open(&path).unwrap();
        store.ping().await.unwrap();
        store.close();
        assert!(matches!(store.ping().await, Err(StoreError::Closed)));
        assert!(matches!(
            store.list_sessions().await,
            Err(StoreError::Closed)
        ));
    }

    #[test]
    fn dropping_the_last_handle_stops_the_thread_and_checkpoints() {
        let (_dir, path) = temp_db();
        let store = Store::open(&path).unwrap();
        let other = store.clone();
        insert_raw_session(&store, "s1", "one");
        drop(store);
        // One handle left: the store still serves it.
        assert_eq!(session_count(&other), 1);
        drop(other);
        assert_wal_checkpointed(&path);
        let store = Store::open(&path).unwrap();
        assert_eq!(session_count(&store), 1);
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_store_keeps_serving() {
        let (_dir, path) = temp_db();
        let store = Store::open(&path).unwrap();
        let err = store
            .call_blocking(|_| -> rusqlite::Result<()> { panic!("job exploded") })
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Sqlite(m) if m.contains("job exploded")),
            "{err:?}"
        );
        assert_eq!(session_count(&store), 0);
    }

    #[test]
    fn a_transaction_left_open_by_a_job_is_rolled_back() {
        let (_dir, path) = temp_db();
        let store = Store::open(&path).unwrap();
        store
            .call_blocking(|conn| {
                conn.execute_batch(
                    "BEGIN; INSERT INTO sessions (id, name, sample_rate, created_at_ms) \
                     VALUES ('half', 'half', 48000, 1);",
                )
            })
            .unwrap();
        let autocommit = store
            .call_blocking(|conn| Ok(conn.is_autocommit()))
            .unwrap();
        assert!(autocommit);
        assert_eq!(session_count(&store), 0);
    }

    #[test]
    fn call_blocking_from_inside_a_job_is_refused_instead_of_deadlocking() {
        let (_dir, path) = temp_db();
        let store = Store::open(&path).unwrap();
        let inner = store.clone();
        let nested = store
            .call_blocking(move |_| Ok(inner.call_blocking(|_| Ok(())).is_err()))
            .unwrap();
        assert!(nested);
    }

    #[test]
    fn sqlite_errors_from_jobs_name_the_file() {
        let (_dir, path) = temp_db();
        let store = Store::open(&path).unwrap();
        let err = store
            .call_blocking(|conn| conn.execute("INSERT INTO nowhere VALUES (1)", []))
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Sqlite(m) if m.contains(&*path.to_string_lossy()) && m.contains("nowhere")),
            "{err:?}"
        );
    }
}
