//! The durable stock store: items in memory, everything on disk in SQLite.
//!
//! Reads of items and alert seqs come from memory. Writes go to memory and,
//! inside one open SQLite transaction per server pass (group commit), to
//! disk. The server calls `commit` at the end of a pass and answers clients
//! only once it returns `Ok`; `rollback` (or a failed `commit`) takes back
//! memory and disk together, using an undo log kept by every write.
//!
//! Every call blocks the server's only thread, so the connection never
//! waits for a lock (busy timeout 0), reuses prepared statements, and leaves
//! WAL checkpoints to `checkpoint`, run from the server's idle timer.
//!
//! Known gaps: memory is loaded once, so this process must be the database's
//! only writer (another writer's changes are not seen until restart);
//! `alerts_since` returns every missed alert in one `Vec`, so a caller that
//! replays to slow subscribers should cap `since` distance itself; and every
//! `UpdateType` is applied as a signed delta (an `Initial` or `Adjustment`
//! is not an absolute count) until the API says otherwise.

mod error;
mod housekeeping;
mod memory;
mod schema;
mod types;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

pub use error::StoreError;
pub use types::{
    Applied, CheckpointStats, Durability, Item, Replay, StoredResponse, Timestamp, UpdateInput,
    UpdateRecord, UpdateType,
};

use memory::{Memory, Undo};

/// Largest history page size a caller may ask for.
pub const MAX_HISTORY_LIMIT: u32 = 1000;

/// Writes one item's whole row, creating it if absent.
const UPSERT_ITEM: &str = "INSERT INTO items (tenant_id, store_code, item_code, current_quantity,
        minimum_quantity, reorder_point, reorder_quantity, last_updated, last_transaction_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT (tenant_id, store_code, item_code) DO UPDATE SET
        current_quantity = excluded.current_quantity,
        minimum_quantity = excluded.minimum_quantity,
        reorder_point = excluded.reorder_point,
        reorder_quantity = excluded.reorder_quantity,
        last_updated = excluded.last_updated,
        last_transaction_id = excluded.last_transaction_id";

/// Appends one record to the update history.
const INSERT_UPDATE: &str = "INSERT INTO updates (tenant_id, store_code, item_code,
        update_type, quantity_change, before_quantity, after_quantity, reference_id, created,
        operator_id, note)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// Where the server's pass transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// No transaction: the undo log is empty and memory matches the disk.
    Idle,
    /// `BEGIN IMMEDIATE` ran; writes since are in the undo log.
    Open,
    /// SQLite rolled the transaction back by itself after an error (it does
    /// so on some disk-full and I/O errors); memory still holds the pass's
    /// writes until `rollback`, and no write is accepted before it.
    Aborted,
}

/// The stock store; see the module docs for the pass protocol.
///
/// Invariant: outside a pass (`Pass::Idle`), `memory` equals what
/// `schema::load` would read from the committed database.
pub struct Store {
    /// The only connection to `<data_dir>/stockalert.db`.
    conn: Connection,
    /// Every item and alert seq, including this pass's writes.
    memory: Memory,
    /// The pass transaction's state.
    pass: Pass,
    /// How to take back this pass's memory changes, oldest first; empty
    /// when `pass` is `Idle`.
    undo: Vec<Undo>,
    /// A failure to fake, for testing error paths SQLite will not produce
    /// on demand.
    #[cfg(test)]
    fault: Option<Fault>,
}

/// A failure `Store` fakes in tests.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq)]
enum Fault {
    /// Fail an update of this item code after its SQL ran.
    Item(String),
    /// Fail the next `commit` as if `COMMIT` had failed.
    Commit,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/stockalert.db`, migrates its
    /// schema and loads every item and alert seq into memory.
    ///
    /// Fails with `StoreError::Locked` at once when another process holds
    /// the database's write lock.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Store, StoreError> {
        let mut conn = schema::connect(data_dir, durability)?;
        schema::migrate(&mut conn)?;
        let memory = schema::load(&conn)?;

        Ok(Store {
            conn,
            memory,
            pass: Pass::Idle,
            undo: Vec::new(),
            #[cfg(test)]
            fault: None,
        })
    }

    /// One item, including this pass's writes.
    pub fn item(&self, tenant: &str, store: &str, item: &str) -> Option<&Item> {
        self.memory.item(tenant, store, item)
    }

    /// One store's items in item-code order; empty for an unknown store.
    pub fn items<'a>(
        &'a self,
        tenant: &str,
        store: &str,
    ) -> impl Iterator<Item = &'a Item> + use<'a> {
        self.memory
            .state(tenant, store)
            .into_iter()
            .flat_map(|state| state.items.values())
    }

    /// Items in one store.
    pub fn store_item_count(&self, tenant: &str, store: &str) -> usize {
        self.memory
            .state(tenant, store)
            .map_or(0, |state| state.items.len())
    }

    /// Items across all stores.
    pub fn item_count(&self) -> usize {
        self.memory.item_count()
    }

    /// The seq of the store's newest alert; 0 when it has none.
    pub fn last_seq(&self, tenant: &str, store: &str) -> u64 {
        self.memory.last_seq(tenant, store)
    }

    /// One page of an item's update history, newest first, and the total
    /// number of records it has. `page` is 1-based; `limit` is
    /// `1..=MAX_HISTORY_LIMIT`. Sees this pass's own writes.
    pub fn history(
        &self,
        tenant: &str,
        store: &str,
        item: &str,
        page: u32,
        limit: u32,
    ) -> Result<(Vec<UpdateRecord>, u64), StoreError> {
        if page == 0 || limit == 0 || limit > MAX_HISTORY_LIMIT {
            return Err(StoreError::InvalidPage { page, limit });
        }
        let offset = i64::from(page - 1) * i64::from(limit);

        let mut count = self.conn.prepare_cached(
            "SELECT COUNT(*) FROM updates WHERE tenant_id = ?1 AND store_code = ?2
             AND item_code = ?3",
        )?;
        let total =
            count.query_row(params![tenant, store, item], |row| schema::get_u64(row, 0))?;

        let mut select = self.conn.prepare_cached(
            "SELECT tenant_id, store_code, item_code, update_type, quantity_change,
                    before_quantity, after_quantity, reference_id, created, operator_id, note
             FROM updates WHERE tenant_id = ?1 AND store_code = ?2 AND item_code = ?3
             ORDER BY id DESC LIMIT ?4 OFFSET ?5",
        )?;
        let rows = select.query_map(params![tenant, store, item, limit, offset], |row| {
            Ok(UpdateRecord {
                tenant_id: row.get(0)?,
                store_code: row.get(1)?,
                item_code: row.get(2)?,
                update_type: row.get(3)?,
                quantity_change: row.get(4)?,
                before_quantity: row.get(5)?,
                after_quantity: row.get(6)?,
                reference_id: row.get(7)?,
                timestamp: row.get(8)?,
                operator_id: row.get(9)?,
                note: row.get(10)?,
            })
        })?;
        let records = rows.collect::<Result<Vec<_>, _>>()?;
        Ok((records, total))
    }

    /// The store's alerts with seq > `since`, or `Replay::Truncated` when
    /// some of them were purged. `since >= last_seq` gives no alerts.
    pub fn alerts_since(
        &self,
        tenant: &str,
        store: &str,
        since: u64,
    ) -> Result<Replay, StoreError> {
        let last_seq = self.last_seq(tenant, store);
        if since >= last_seq {
            return Ok(Replay::Alerts(Vec::new()));
        }

        // since < last_seq, and seqs are stored as i64, so this fits.
        let after = i64::try_from(since).unwrap_or(i64::MAX);
        let mut select = self.conn.prepare_cached(
            "SELECT seq, payload FROM alerts WHERE tenant_id = ?1 AND store_code = ?2
             AND seq > ?3 ORDER BY seq",
        )?;
        let mut rows = select.query(params![tenant, store, after])?;

        // Any gap, at the start or inside, means a purge took alerts the
        // subscriber never saw (a clock step back can purge out of order).
        let mut expected = since + 1;
        let mut payloads = Vec::new();
        while let Some(row) = rows.next()? {
            let seq = schema::get_u64(row, 0)?;
            if seq != expected {
                return Ok(Replay::Truncated);
            }
            payloads.push(row.get(1)?);
            expected += 1;
        }
        if expected != last_seq + 1 {
            return Ok(Replay::Truncated);
        }
        Ok(Replay::Alerts(payloads))
    }

    /// Applies one stock change in the pass transaction and returns the
    /// history record and the item after it. A missing item is created at
    /// zero first. On `Err`, memory and disk are as before the call.
    pub fn apply_update(
        &mut self,
        tenant: &str,
        store: &str,
        item: &str,
        input: &UpdateInput,
        now: Timestamp,
    ) -> Result<Applied, StoreError> {
        check_change(input)?;
        self.write(|this| this.apply_line(tenant, store, item, input, now))
    }

    /// Applies several stock changes to one store, in order, all or none: a
    /// savepoint wraps them, and on `Err` memory and disk are as before the
    /// call. An item listed twice gets both changes, the second seeing the
    /// first.
    pub fn apply_batch(
        &mut self,
        tenant: &str,
        store: &str,
        lines: &[(String, UpdateInput)],
        now: Timestamp,
    ) -> Result<Vec<Applied>, StoreError> {
        for (_, input) in lines {
            check_change(input)?;
        }
        self.write(|this| {
            let mut applied = Vec::with_capacity(lines.len());
            for (item, input) in lines {
                applied.push(this.apply_line(tenant, store, item, input, now)?);
            }
            Ok(applied)
        })
    }

    /// Sets an item's reorder point and quantity (both finite and >= 0),
    /// creating it at zero stock if absent; returns the item after.
    pub fn set_reorder(
        &mut self,
        tenant: &str,
        store: &str,
        item: &str,
        reorder_point: f64,
        reorder_quantity: f64,
        now: Timestamp,
    ) -> Result<Item, StoreError> {
        check_threshold("reorder point", reorder_point)?;
        check_threshold("reorder quantity", reorder_quantity)?;
        self.write(|this| {
            let mut next = this.item_or_new(tenant, store, item, now);
            next.reorder_point = reorder_point;
            next.reorder_quantity = reorder_quantity;
            next.last_updated = now;
            this.save_item(next)
        })
    }

    /// Sets an item's minimum quantity (finite and >= 0), creating it at
    /// zero stock if absent; returns the item after.
    pub fn set_minimum(
        &mut self,
        tenant: &str,
        store: &str,
        item: &str,
        minimum_quantity: f64,
        now: Timestamp,
    ) -> Result<Item, StoreError> {
        check_threshold("minimum quantity", minimum_quantity)?;
        self.write(|this| {
            let mut next = this.item_or_new(tenant, store, item, now);
            next.minimum_quantity = minimum_quantity;
            next.last_updated = now;
            this.save_item(next)
        })
    }

    /// Appends one alert to the store's log: takes the next seq, asks
    /// `payload(seq)` for the JSON text to keep, stores both and returns
    /// them. Seqs strictly increase and a committed seq is never reused,
    /// even after a purge; a rolled-back seq is given out again.
    pub fn log_alert(
        &mut self,
        tenant: &str,
        store: &str,
        now: Timestamp,
        payload: impl FnOnce(u64) -> String,
    ) -> Result<(u64, String), StoreError> {
        self.write(|this| {
            let seq = this.memory.last_seq(tenant, store) + 1;
            let text = payload(seq);
            let seq_sql =
                i64::try_from(seq).map_err(|_| StoreError::InvalidNumber { what: "alert seq" })?;

            this.conn
                .prepare_cached(
                    "INSERT INTO alert_seqs (tenant_id, store_code, last_seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant_id, store_code)
                     DO UPDATE SET last_seq = excluded.last_seq",
                )?
                .execute(params![tenant, store, seq_sql])?;
            this.conn
                .prepare_cached(
                    "INSERT INTO alerts (tenant_id, store_code, seq, created, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![tenant, store, seq_sql, now, text])?;

            this.memory.set_last_seq(tenant, store, seq, &mut this.undo);
            Ok((seq, text))
        })
    }

    /// The response stored under an idempotency key of one store, if any.
    /// Sees this pass's own records.
    pub fn idempotency_lookup(
        &self,
        tenant: &str,
        store: &str,
        key: &str,
    ) -> Result<Option<StoredResponse>, StoreError> {
        let mut select = self.conn.prepare_cached(
            "SELECT request_hash, status, body FROM idempotency
             WHERE tenant_id = ?1 AND store_code = ?2 AND key = ?3",
        )?;
        let found = select
            .query_row(params![tenant, store, key], |row| {
                Ok(StoredResponse {
                    request_hash: row.get(0)?,
                    status: row.get(1)?,
                    body: row.get(2)?,
                })
            })
            .optional()?;
        Ok(found)
    }

    /// Stores a response under an idempotency key in the pass transaction.
    /// Fails with `IdempotencyKeyTaken` when the key is already stored.
    // The signature is the server's contract; a parameter struct would only
    // move the same seven values around.
    #[allow(clippy::too_many_arguments)]
    pub fn idempotency_record(
        &mut self,
        tenant: &str,
        store: &str,
        key: &str,
        request_hash: [u8; 32],
        status: u16,
        body: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(|this| {
            let mut insert = this.conn.prepare_cached(
                "INSERT INTO idempotency (tenant_id, store_code, key, request_hash, status,
                    body, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let result =
                insert.execute(params![tenant, store, key, request_hash, status, body, now]);
            match result {
                Ok(_) => Ok(()),
                Err(err)
                    if err.sqlite_error_code()
                        == Some(rusqlite::ErrorCode::ConstraintViolation) =>
                {
                    Err(StoreError::IdempotencyKeyTaken)
                }
                Err(err) => Err(err.into()),
            }
        })
    }

    /// SHA-256 over a request's method, path and body, for telling a
    /// replayed idempotent request from a different one under the same key.
    /// Method and path are length-prefixed so no two requests share input.
    pub fn request_hash(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [method.as_bytes(), path.as_bytes()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.update(body);
        hasher.finalize().into()
    }

    /// Whether a pass transaction is open (or aborted) and needs `commit`
    /// or `rollback`.
    pub fn has_pending(&self) -> bool {
        self.pass != Pass::Idle
    }

    /// Commits the pass transaction; `Ok` with nothing pending.
    ///
    /// On `Err` the pass is rolled back, memory included, and the store is
    /// ready for the next pass.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        match self.pass {
            Pass::Idle => return Ok(()),
            Pass::Aborted => {
                self.rollback();
                return Err(StoreError::PassAborted);
            }
            Pass::Open => {}
        }

        #[cfg(test)]
        if self.fault == Some(Fault::Commit) {
            self.fault = None;
            self.rollback();
            return Err(injected_failure());
        }

        if let Err(err) = self.exec("COMMIT") {
            crate::event!(
                log::Level::Debug,
                "store_commit_failed",
                writes = self.undo.len(),
                error = err.to_string()
            );
            self.rollback();
            return Err(err);
        }
        self.undo.clear();
        self.pass = Pass::Idle;
        Ok(())
    }

    /// Takes back every write of the pass, in memory and on disk; a no-op
    /// with nothing pending. The store is ready for the next pass after.
    pub fn rollback(&mut self) {
        if self.pass == Pass::Idle {
            return;
        }

        // SQLite may already have rolled back by itself (Pass::Aborted).
        if !self.conn.is_autocommit() {
            if let Err(err) = self.exec("ROLLBACK") {
                crate::event!(
                    log::Level::Error,
                    "store_rollback_failed",
                    error = err.to_string()
                );
            }
        }

        self.memory.revert(self.undo.drain(..).rev());
        self.pass = Pass::Idle;
    }

    /// Runs one write step inside the pass transaction (opening it first if
    /// needed) and a savepoint, so that on `Err` memory and disk are as
    /// before the call. `step` changes memory only through `put_item` /
    /// `set_last_seq` with `self.undo`.
    fn write<T>(
        &mut self,
        step: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self.pass {
            Pass::Open => {}
            Pass::Aborted => return Err(StoreError::PassAborted),
            Pass::Idle => {
                self.exec("BEGIN IMMEDIATE")?;
                self.pass = Pass::Open;
            }
        }

        let mark = self.undo.len();
        if let Err(err) = self.exec("SAVEPOINT step") {
            self.note_failure();
            return Err(err);
        }

        let result = step(self).and_then(|value| self.exec("RELEASE step").map(|()| value));
        if result.is_err() {
            self.memory.revert(self.undo.drain(mark..).rev());
            if !self.conn.is_autocommit() {
                let undone = self
                    .exec("ROLLBACK TO step")
                    .and_then(|()| self.exec("RELEASE step"));
                if let Err(err) = undone {
                    crate::event!(
                        log::Level::Error,
                        "store_undo_failed",
                        error = err.to_string()
                    );
                }
            }
            self.note_failure();
        }
        result
    }

    /// After a failed write: if SQLite ended the transaction by itself,
    /// refuse further writes until `rollback`, so none is autocommitted
    /// outside the pass.
    fn note_failure(&mut self) {
        if self.pass == Pass::Open && self.conn.is_autocommit() {
            crate::event!(log::Level::Warn, "store_pass_aborted_by_database");
            self.pass = Pass::Aborted;
        }
    }

    /// Applies one checked stock change; only for use inside `write`.
    fn apply_line(
        &mut self,
        tenant: &str,
        store: &str,
        item: &str,
        input: &UpdateInput,
        now: Timestamp,
    ) -> Result<Applied, StoreError> {
        let mut next = self.item_or_new(tenant, store, item, now);
        let before = next.current_quantity;
        let after = before + input.quantity_change;
        if !after.is_finite() {
            return Err(StoreError::InvalidNumber {
                what: "stock after the change",
            });
        }
        next.current_quantity = after;
        next.last_updated = now;
        next.last_transaction_id.clone_from(&input.reference_id);

        let record = UpdateRecord {
            tenant_id: tenant.to_owned(),
            store_code: store.to_owned(),
            item_code: item.to_owned(),
            update_type: input.update_type,
            quantity_change: input.quantity_change,
            before_quantity: before,
            after_quantity: after,
            reference_id: input.reference_id.clone(),
            timestamp: now,
            operator_id: input.operator_id.clone(),
            note: input.note.clone(),
        };
        self.conn.prepare_cached(INSERT_UPDATE)?.execute(params![
            record.tenant_id,
            record.store_code,
            record.item_code,
            record.update_type,
            record.quantity_change,
            record.before_quantity,
            record.after_quantity,
            record.reference_id,
            record.timestamp,
            record.operator_id,
            record.note,
        ])?;

        #[cfg(test)]
        if self
            .fault
            .as_ref()
            .is_some_and(|fault| *fault == Fault::Item(item.to_owned()))
        {
            return Err(injected_failure());
        }

        let item = self.save_item(next)?;
        Ok(Applied { record, item })
    }

    /// A copy of the item, or a new one at zero when absent.
    fn item_or_new(&self, tenant: &str, store: &str, item: &str, now: Timestamp) -> Item {
        match self.memory.item(tenant, store, item) {
            Some(found) => found.clone(),
            None => Item::new(tenant, store, item, now),
        }
    }

    /// Writes the item's row, then puts it in memory (with undo); returns a
    /// copy. Only for use inside `write`.
    fn save_item(&mut self, item: Item) -> Result<Item, StoreError> {
        self.conn.prepare_cached(UPSERT_ITEM)?.execute(params![
            item.tenant_id,
            item.store_code,
            item.item_code,
            item.current_quantity,
            item.minimum_quantity,
            item.reorder_point,
            item.reorder_quantity,
            item.last_updated,
            item.last_transaction_id,
        ])?;
        self.memory.put_item(item.clone(), &mut self.undo);
        Ok(item)
    }

    /// Runs one parameterless statement through the statement cache.
    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }
}

/// Refuses a stock change that is not a finite number.
fn check_change(input: &UpdateInput) -> Result<(), StoreError> {
    if input.quantity_change.is_finite() {
        Ok(())
    } else {
        Err(StoreError::InvalidNumber {
            what: "quantity change",
        })
    }
}

/// Refuses a threshold that is not finite or is negative; the HTTP layer
/// checks the sign first, so a negative one here is a bug.
fn check_threshold(what: &'static str, value: f64) -> Result<(), StoreError> {
    debug_assert!(
        value.is_nan() || value >= 0.0,
        "{what} is negative: {value}"
    );
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(StoreError::InvalidNumber { what })
    }
}

/// The error a `Fault` fakes: an I/O error, as a failing disk gives.
#[cfg(test)]
fn injected_failure() -> StoreError {
    let code = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR);
    StoreError::from(rusqlite::Error::SqliteFailure(
        code,
        Some("injected".to_owned()),
    ))
}

#[cfg(test)]
mod tests;
