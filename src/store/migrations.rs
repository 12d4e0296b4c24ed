//! Schema migrations: the SQL files under `migrations/`, embedded in the binary in order, and
//! the code that applies the pending ones. None of this is real-time safe (it is SQLite I/O);
//! it runs once, on the thread that calls `Store::open`.

use rusqlite::{Connection, OptionalExtension};

/// One schema migration: a numbered SQL script applied exactly once, inside a transaction.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Version number: strictly increasing, recorded in `schema_migrations.version`.
    pub version: i64,
    /// Short name (the file name without number and extension), recorded for humans.
    pub name: &'static str,
    /// The SQL script, executed as one batch.
    pub sql: &'static str,
}

/// Every migration this build knows, in the order they must be applied.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "output_connections",
        sql: include_str!("../../migrations/0002_output_connections.sql"),
    },
];

/// The highest schema version this build knows (the last entry of [`MIGRATIONS`]).
pub fn known_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Whether `schema_migrations` exists, without creating it. Read-only.
pub(crate) fn has_migrations_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'",
        [],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

/// Whether the database holds any table of its own (that is, it is not a fresh, empty file).
/// Read-only.
pub(crate) fn has_user_tables(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' LIMIT 1",
        [],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

/// The highest version recorded in `schema_migrations`, or 0 when none is (or when the table
/// does not exist yet). Read-only.
pub(crate) fn current_version(conn: &Connection) -> rusqlite::Result<i64> {
    if !has_migrations_table(conn)? {
        return Ok(0);
    }
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )
}

/// Applies, in order, every migration of `migrations` not yet recorded in `schema_migrations`
/// (creating that table first if needed). Each migration and its record commit together in
/// one transaction, so a failure leaves the database at the previous version. Returns the
/// versions applied. The caller has already refused databases newer than `migrations`.
pub(crate) fn apply_pending(
    conn: &mut Connection,
    migrations: &[Migration],
    now_ms: i64,
) -> rusqlite::Result<Vec<i64>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version       INTEGER NOT NULL PRIMARY KEY,
             name          TEXT    NOT NULL,
             applied_at_ms INTEGER NOT NULL
         )",
    )?;
    let mut applied = Vec::new();
    for migration in migrations {
        let tx = conn.transaction()?;
        let done: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
            [migration.version],
            |row| row.get(0),
        )?;
        if done {
            continue;
        }
        tx.execute_batch(migration.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?1, ?2, ?3)",
            rusqlite::params![migration.version, migration.name, now_ms],
        )?;
        tx.commit()?;
        applied.push(migration.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_strictly_increasing_and_named() {
        assert!(!MIGRATIONS.is_empty());
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version, "{pair:?}");
        }
        assert_eq!(MIGRATIONS[0].version, 1);
        assert!(MIGRATIONS
            .iter()
            .all(|m| !m.name.is_empty() && !m.sql.trim().is_empty()));
        assert_eq!(known_version(), MIGRATIONS[MIGRATIONS.len() - 1].version);
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        let broken = [
            Migration {
                version: 1,
                name: "one",
                sql: "CREATE TABLE a (x INTEGER);",
            },
            Migration {
                version: 2,
                name: "two",
                sql: "CREATE TABLE b (x INTEGER); INSERT INTO missing VALUES (1);",
            },
        ];
        assert!(apply_pending(&mut conn, &broken, 5).is_err());
        assert_eq!(current_version(&conn).unwrap(), 1);
        // Table b was created inside the failed transaction: it must have been rolled back.
        let b_exists: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'b')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(!b_exists);
        // Fixing the script lets the next start apply it, and only it.
        let fixed = [
            broken[0],
            Migration {
                version: 2,
                name: "two",
                sql: "CREATE TABLE b (x);",
            },
        ];
        assert_eq!(apply_pending(&mut conn, &fixed, 6).unwrap(), vec![2]);
        assert_eq!(current_version(&conn).unwrap(), 2);
    }

    #[test]
    fn every_known_migration_applies_to_an_empty_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(current_version(&conn).unwrap(), 0);
        let applied = apply_pending(&mut conn, MIGRATIONS, 1).unwrap();
        assert_eq!(
            applied,
            MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
        );
        assert_eq!(current_version(&conn).unwrap(), known_version());
        assert!(apply_pending(&mut conn, MIGRATIONS, 2).unwrap().is_empty());
    }
}
