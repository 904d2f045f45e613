//! The database file: connection settings, schema migrations and the startup load.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, Row, TransactionBehavior};

use super::error::StoreError;
use super::memory::{Memory, StoreState};
use super::types::{Durability, Item};

/// The database file's name inside the data directory.
pub(super) const DB_FILE: &str = "stockalert.db";

/// Page size of a new database, bytes (see `connect`).
const PAGE_SIZE: i64 = 1024;

/// Prepared statements kept by the connection; more than the store uses, so
/// the hot path never re-prepares.
const STATEMENT_CACHE: usize = 32;

/// Bytes of WAL kept on disk after a checkpoint lets SQLite restart the log;
/// the rest is truncated so a burst does not hold disk space forever.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Schema migrations; entry `n` takes `user_version` from `n` to `n + 1`.
///
/// Append new versions; never edit a shipped one.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "
    CREATE TABLE items (
        tenant_id TEXT NOT NULL,
        store_code TEXT NOT NULL,
        item_code TEXT NOT NULL,
        current_quantity REAL NOT NULL,
        minimum_quantity REAL NOT NULL,
        reorder_point REAL NOT NULL,
        reorder_quantity REAL NOT NULL,
        last_updated INTEGER NOT NULL,
        last_transaction_id TEXT,
        PRIMARY KEY (tenant_id, store_code, item_code)
    ) WITHOUT ROWID;

    CREATE TABLE updates (
        id INTEGER PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        store_code TEXT NOT NULL,
        item_code TEXT NOT NULL,
        update_type TEXT NOT NULL,
        quantity_change REAL NOT NULL,
        before_quantity REAL NOT NULL,
        after_quantity REAL NOT NULL,
        reference_id TEXT,
        created INTEGER NOT NULL,
        operator_id TEXT,
        note TEXT
    );
    CREATE INDEX updates_by_item ON updates (tenant_id, store_code, item_code, id);

    CREATE TABLE alert_seqs (
        tenant_id TEXT NOT NULL,
        store_code TEXT NOT NULL,
        last_seq INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, store_code)
    ) WITHOUT ROWID;

    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        store_code TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created INTEGER NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE UNIQUE INDEX alerts_by_seq ON alerts (tenant_id, store_code, seq);
    CREATE INDEX alerts_by_age ON alerts (created);

    CREATE TABLE idempotency (
        id INTEGER PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        store_code TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash BLOB NOT NULL,
        status INTEGER NOT NULL,
        body TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX idempotency_by_key ON idempotency (tenant_id, store_code, key);
    CREATE INDEX idempotency_by_age ON idempotency (created);
    ",
];

/// The schema version this build writes.
pub(super) fn schema_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Opens `<data_dir>/stockalert.db` with the store's settings: WAL, no busy
/// wait, no automatic checkpoint, `synchronous` from `durability`.
pub(super) fn connect(data_dir: &Path, durability: Durability) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
        path: data_dir.to_owned(),
        source,
    })?;

    let path = data_dir.join(DB_FILE);
    let conn = Connection::open(&path).map_err(|source| StoreError::Open { path, source })?;

    // Every call blocks the server's only thread: a lock held elsewhere must
    // fail at once, never wait.
    conn.busy_timeout(Duration::ZERO)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);

    // Every commit writes each page it touched whole to the WAL; rows here are small,
    // so 1 KiB pages write a quarter of the bytes of SQLite's default 4 KiB. It takes
    // effect only on a new database (before WAL mode is set); an existing one keeps its
    // page size.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NotWal { mode });
    }

    // Checkpoints run from the server's idle timer instead of inside some
    // unlucky commit.
    conn.pragma_update(
        None,
        "synchronous",
        super::types::synchronous_pragma(durability),
    )?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(conn)
}

/// Brings the schema up to `schema_version()` in one write transaction.
///
/// The version is read inside the transaction, so two processes starting
/// at once cannot both migrate. Also proves at startup that the database
/// is writable.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;

    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let supported = schema_version();
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }

    let applied = usize::try_from(found).unwrap_or(0);
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(version + 1).unwrap_or(i64::MAX),
        )?;
        crate::event!(
            log::Level::Info,
            "store_schema_migrated",
            version = version + 1
        );
    }

    tx.commit()?;
    Ok(())
}

/// Reads every item and alert seq into memory.
///
/// One ordered scan of `items` (its primary key order is the map order, as
/// SQLite's BINARY collation compares bytes like `str`); each row costs its
/// item's strings plus the map key.
pub(super) fn load(conn: &Connection) -> Result<Memory, StoreError> {
    let mut memory = Memory::default();

    let mut stmt = conn.prepare(
        "SELECT tenant_id, store_code, item_code, current_quantity, minimum_quantity,
                reorder_point, reorder_quantity, last_updated, last_transaction_id
         FROM items ORDER BY tenant_id, store_code, item_code",
    )?;
    let mut rows = stmt.query([])?;

    // Rows arrive grouped by store and sorted by item code inside it, so
    // each store's map is built in bulk from a sorted run instead of by
    // one search per insert.
    let mut run: Vec<(String, Item)> = Vec::new();
    while let Some(row) = rows.next()? {
        let item = Item {
            tenant_id: row.get(0)?,
            store_code: row.get(1)?,
            item_code: row.get(2)?,
            current_quantity: row.get(3)?,
            minimum_quantity: row.get(4)?,
            reorder_point: row.get(5)?,
            reorder_quantity: row.get(6)?,
            last_updated: row.get(7)?,
            last_transaction_id: row.get(8)?,
        };

        let same_store = run.first().is_none_or(|(_, first)| {
            first.tenant_id == item.tenant_id && first.store_code == item.store_code
        });
        if !same_store {
            load_run(&mut memory, &mut run);
        }
        run.push((item.item_code.clone(), item));
    }
    load_run(&mut memory, &mut run);

    let mut stmt = conn.prepare("SELECT tenant_id, store_code, last_seq FROM alert_seqs")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let last_seq = get_u64(row, 2)?;
        memory.load_seq(row.get(0)?, row.get(1)?, last_seq);
    }
    Ok(memory)
}

/// Moves one store's sorted run of items into `memory`, leaving `run`
/// empty (its capacity kept for the next store).
fn load_run(memory: &mut Memory, run: &mut Vec<(String, Item)>) {
    let Some((_, first)) = run.first() else {
        return;
    };
    let tenant = first.tenant_id.clone();
    let store = first.store_code.clone();
    let items = run.drain(..).collect();
    memory.load_store(tenant, store, StoreState { items, last_seq: 0 });
}

/// Reads a column that holds a count or seq: an integer that must not be
/// negative (SQLite stores only signed integers).
pub(super) fn get_u64(row: &Row<'_>, column: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(column)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(column, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_set_user_version_and_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(dir.path(), Durability::Full).unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();

        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, schema_version());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(dir.path(), Durability::Full).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();

        let err = migrate(&mut conn).unwrap_err();
        assert!(matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: 1
            }
        ));
    }

    #[test]
    fn load_groups_rows_by_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(dir.path(), Durability::Normal).unwrap();
        migrate(&mut conn).unwrap();
        conn.execute_batch(
            "INSERT INTO items VALUES ('t','s','B',1,0,0,0,5,NULL), ('t','s','A',2,0,0,0,5,'r'),
                                      ('t','s2','A',3,0,0,0,5,NULL), ('u','s','Z',4,0,0,0,5,NULL);
             INSERT INTO alert_seqs VALUES ('t','s',7), ('v','x',2);",
        )
        .unwrap();

        let memory = load(&conn).unwrap();

        assert_eq!(memory.item_count(), 4);
        let codes: Vec<&str> = memory
            .state("t", "s")
            .unwrap()
            .items
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(codes, ["A", "B"]);
        assert_eq!(
            memory
                .item("t", "s", "A")
                .unwrap()
                .last_transaction_id
                .as_deref(),
            Some("r")
        );
        assert_eq!(memory.item("u", "s", "Z").unwrap().current_quantity, 4.0);
        assert_eq!(memory.last_seq("t", "s"), 7);
        assert_eq!(memory.last_seq("v", "x"), 2);
        assert_eq!(memory.last_seq("t", "s2"), 0);
    }
}
