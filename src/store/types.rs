//! The store's records: items, stock updates, timestamps and write results.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize, Serializer};

/// An instant as milliseconds since the Unix epoch (UTC).
///
/// Serializes as RFC 3339 UTC with milliseconds and a `Z`, for example
/// `"2024-01-01T12:34:56.789Z"`. RFC 3339 can only spell years 0000-9999 and
/// the formatter starts at the epoch, so values outside
/// `0..=Timestamp::MAX.0` are clamped when formatted (never when stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The latest instant RFC 3339 can spell: 9999-12-31T23:59:59.999Z.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999);

    /// The current wall-clock time; an instant before the epoch reads as 0.
    pub fn now() -> Timestamp {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }

    /// RFC 3339 UTC with milliseconds and `Z`, the form every message carries.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }

    /// The instant as a `SystemTime`, clamped into `0..=Timestamp::MAX`.
    pub fn to_system_time(self) -> SystemTime {
        let millis = self.0.clamp(0, Timestamp::MAX.0).unsigned_abs();
        UNIX_EPOCH + Duration::from_millis(millis)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Clamping in `to_system_time` keeps humantime inside the range it
        // can format, so this never returns an error or panics.
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0))
    }
}

impl FromSql for Timestamp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_i64().map(Timestamp)
    }
}

/// Why a stock quantity changed, as a POS terminal reports it.
///
/// The store records the kind but does not interpret it: `quantity_change`
/// is always a signed delta (a sale carries a negative change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateType {
    /// Goods sold at a till.
    Sale,
    /// Goods a customer brought back.
    Return,
    /// A sale cancelled before completion.
    Void,
    /// A return cancelled before completion.
    VoidReturn,
    /// Goods received from a supplier.
    Purchase,
    /// A correction after a count.
    Adjustment,
    /// The first stock figure for an item.
    Initial,
    /// Goods written off as damaged.
    Damage,
    /// Goods received from another store.
    TransferIn,
    /// Goods sent to another store.
    TransferOut,
}

impl UpdateType {
    /// Every kind, in declaration order.
    pub const ALL: [UpdateType; 10] = [
        UpdateType::Sale,
        UpdateType::Return,
        UpdateType::Void,
        UpdateType::VoidReturn,
        UpdateType::Purchase,
        UpdateType::Adjustment,
        UpdateType::Initial,
        UpdateType::Damage,
        UpdateType::TransferIn,
        UpdateType::TransferOut,
    ];

    /// The wire and database spelling, the same as serde's.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateType::Sale => "sale",
            UpdateType::Return => "return",
            UpdateType::Void => "void",
            UpdateType::VoidReturn => "void_return",
            UpdateType::Purchase => "purchase",
            UpdateType::Adjustment => "adjustment",
            UpdateType::Initial => "initial",
            UpdateType::Damage => "damage",
            UpdateType::TransferIn => "transfer_in",
            UpdateType::TransferOut => "transfer_out",
        }
    }

    /// The kind spelled `text` by `as_str`, or `None` for any other text.
    pub fn parse(text: &str) -> Option<UpdateType> {
        UpdateType::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

impl ToSql for UpdateType {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for UpdateType {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        UpdateType::parse(text).ok_or_else(|| FromSqlError::Other(text.into()))
    }
}

pub use crate::config::Durability;

/// The value of `PRAGMA synchronous` for a durability mode.
pub(super) fn synchronous_pragma(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    }
}

/// One item's stock in one store of one tenant.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    /// The tenant that owns the store.
    pub tenant_id: String,
    /// The store inside the tenant.
    pub store_code: String,
    /// The item inside the store; unique per (tenant, store).
    pub item_code: String,
    /// Units on hand; finite, and may be negative (sold before received).
    pub current_quantity: f64,
    /// The level below which a minimum-stock alert fires; finite and >= 0.
    pub minimum_quantity: f64,
    /// The level at or below which a reorder alert fires; finite and >= 0.
    pub reorder_point: f64,
    /// How many units to reorder; finite and >= 0.
    pub reorder_quantity: f64,
    /// When any write last touched the item.
    pub last_updated: Timestamp,
    /// The `reference_id` of the item's last stock update, if it had one.
    pub last_transaction_id: Option<String>,
}

impl Item {
    /// The figures the alert rules look at.
    pub fn levels(&self) -> crate::alert::Levels {
        crate::alert::Levels {
            current_quantity: self.current_quantity,
            minimum_quantity: self.minimum_quantity,
            reorder_point: self.reorder_point,
            reorder_quantity: self.reorder_quantity,
        }
    }

    /// A new item at zero stock with zero thresholds, as any first write
    /// creates it.
    pub fn new(tenant: &str, store: &str, item: &str, now: Timestamp) -> Item {
        Item {
            tenant_id: tenant.to_owned(),
            store_code: store.to_owned(),
            item_code: item.to_owned(),
            current_quantity: 0.0,
            minimum_quantity: 0.0,
            reorder_point: 0.0,
            reorder_quantity: 0.0,
            last_updated: now,
            last_transaction_id: None,
        }
    }
}

/// One applied stock change, as kept in the update history.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRecord {
    /// The tenant that owns the store.
    pub tenant_id: String,
    /// The store inside the tenant.
    pub store_code: String,
    /// The item that changed.
    pub item_code: String,
    /// Why it changed.
    pub update_type: UpdateType,
    /// The signed delta applied; `after_quantity - before_quantity`.
    pub quantity_change: f64,
    /// Stock before the change.
    pub before_quantity: f64,
    /// Stock after the change.
    pub after_quantity: f64,
    /// The POS transaction this change belongs to, if given.
    pub reference_id: Option<String>,
    /// When the store applied it.
    pub timestamp: Timestamp,
    /// Who made the change, if given.
    pub operator_id: Option<String>,
    /// Free text from the terminal, if given.
    pub note: Option<String>,
}

/// A stock change as a terminal asks for it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateInput {
    /// The signed delta to apply; must be finite.
    pub quantity_change: f64,
    /// Why the stock changes.
    pub update_type: UpdateType,
    /// The POS transaction, kept as the item's `last_transaction_id`.
    pub reference_id: Option<String>,
    /// Who makes the change.
    pub operator_id: Option<String>,
    /// Free text.
    pub note: Option<String>,
}

/// The result of one applied stock change.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The history record written.
    pub record: UpdateRecord,
    /// The item after the change.
    pub item: Item,
}

/// A response kept under an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    /// SHA-256 of the request that produced it (see `Store::request_hash`).
    pub request_hash: [u8; 32],
    /// The HTTP status sent.
    pub status: u16,
    /// The body sent.
    pub body: String,
}

/// What a reconnecting alert subscriber missed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Every alert after the subscriber's seq, as stored payloads in seq
    /// order; empty when it missed nothing.
    Alerts(Vec<String>),
    /// Some alerts it missed were purged; it must resynchronise from the
    /// item list instead.
    Truncated,
}

/// What one passive WAL checkpoint did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointStats {
    /// A reader or writer kept the checkpoint from finishing.
    pub busy: bool,
    /// Pages in the write-ahead log.
    pub wal_pages: u64,
    /// Pages of the log copied back into the database file.
    pub checkpointed_pages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_serializes_as_rfc3339_millis() {
        let json = serde_json::to_string(&Timestamp(1_704_112_496_789)).unwrap();
        assert_eq!(json, "\"2024-01-01T12:34:56.789Z\"");

        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn timestamp_out_of_range_is_clamped_not_a_panic() {
        assert_eq!(Timestamp(-5).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(i64::MAX).to_string(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn update_type_spellings_match_serde() {
        for kind in UpdateType::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(UpdateType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(UpdateType::VoidReturn.as_str(), "void_return");
        assert_eq!(UpdateType::parse("Sale"), None);
    }

    #[test]
    fn item_serializes_camel_case() {
        let mut item = Item::new("t1", "s1", "A", Timestamp(1_704_112_496_789));
        item.current_quantity = 40.0;
        item.reorder_point = 50.0;
        item.reorder_quantity = 100.0;
        let json = serde_json::to_string(&item).unwrap();
        assert_eq!(
            json,
            "{\"tenantId\":\"t1\",\"storeCode\":\"s1\",\"itemCode\":\"A\",\
             \"currentQuantity\":40.0,\"minimumQuantity\":0.0,\"reorderPoint\":50.0,\
             \"reorderQuantity\":100.0,\"lastUpdated\":\"2024-01-01T12:34:56.789Z\",\
             \"lastTransactionId\":null}"
        );
    }

    #[test]
    fn update_input_reads_camel_case_with_optional_fields() {
        let input: UpdateInput =
            serde_json::from_str(r#"{"quantityChange":-2.5,"updateType":"transfer_out"}"#)
                .unwrap();
        assert_eq!(input.quantity_change, -2.5);
        assert_eq!(input.update_type, UpdateType::TransferOut);
        assert_eq!(input.reference_id, None);
    }
}
