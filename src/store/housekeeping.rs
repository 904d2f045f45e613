//! Bounded housekeeping steps run from the server's idle timer.

use rusqlite::params;

use super::{CheckpointStats, Pass, Store, StoreError, Timestamp};

impl Store {
    /// Deletes up to `max_rows` idempotency records created before
    /// `older_than`, oldest first; returns how many went. Needs no pass
    /// open (`PassOpen` otherwise).
    pub fn purge_idempotency(
        &mut self,
        older_than: Timestamp,
        max_rows: usize,
    ) -> Result<usize, StoreError> {
        self.purge(
            "DELETE FROM idempotency WHERE id IN
                (SELECT id FROM idempotency WHERE created < ?1 ORDER BY created LIMIT ?2)",
            older_than,
            max_rows,
        )
    }

    /// Deletes up to `max_rows` alerts created before `older_than`, oldest
    /// first; returns how many went. Seqs are kept apart, so none is ever
    /// reused. Needs no pass open (`PassOpen` otherwise).
    pub fn purge_alerts(
        &mut self,
        older_than: Timestamp,
        max_rows: usize,
    ) -> Result<usize, StoreError> {
        self.purge(
            "DELETE FROM alerts WHERE id IN
                (SELECT id FROM alerts WHERE created < ?1 ORDER BY created LIMIT ?2)",
            older_than,
            max_rows,
        )
    }

    /// Copies what it can of the WAL back into the database without waiting
    /// for readers (`PRAGMA wal_checkpoint(PASSIVE)`). Needs no pass open.
    pub fn checkpoint(&mut self) -> Result<CheckpointStats, StoreError> {
        if self.pass != Pass::Idle {
            return Err(StoreError::PassOpen);
        }

        let (busy, log, done): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;

        // SQLite reports -1 for both counts when the log could not be read.
        Ok(CheckpointStats {
            busy: busy != 0,
            wal_pages: u64::try_from(log).unwrap_or(0),
            checkpointed_pages: u64::try_from(done).unwrap_or(0),
        })
    }

    /// Whether the write lock can be taken right now, tried by taking and
    /// dropping it. With a pass open the store holds the lock already:
    /// `true`, or `false` if the pass was aborted.
    pub fn writable_probe(&mut self) -> bool {
        match self.pass {
            Pass::Open => return true,
            Pass::Aborted => return false,
            Pass::Idle => {}
        }

        if let Err(err) = self.exec("BEGIN IMMEDIATE") {
            crate::event!(
                log::Level::Debug,
                "store_write_probe_failed",
                error = err.to_string()
            );
            return false;
        }
        if let Err(err) = self.exec("ROLLBACK") {
            crate::event!(
                log::Level::Error,
                "store_probe_rollback_failed",
                error = err.to_string()
            );
        }
        true
    }

    /// Runs one bounded purge statement outside any pass; `sql` takes the
    /// cutoff and the row limit.
    fn purge(
        &mut self,
        sql: &str,
        older_than: Timestamp,
        max_rows: usize,
    ) -> Result<usize, StoreError> {
        if self.pass != Pass::Idle {
            return Err(StoreError::PassOpen);
        }
        let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let deleted = self
            .conn
            .prepare_cached(sql)?
            .execute(params![older_than, limit])?;
        Ok(deleted)
    }
}
