//! What can go wrong in the store, in words an operator can act on.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;

use rusqlite::ErrorCode;

/// A failed store operation.
///
/// SQLite failures are sorted by cause so the server can log something
/// actionable and pick a status (503 for `Locked`, 507 for `DiskFull`, ...).
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the database write lock; with no busy timeout
    /// the store never waits for it.
    Locked,
    /// The filesystem holding the database is full.
    DiskFull,
    /// The database file or its directory cannot be written.
    ReadOnly,
    /// The operating system reported an I/O error on the database files.
    Io(rusqlite::Error),
    /// The database file is damaged or is not a database.
    Corrupt,
    /// The data directory could not be created.
    CreateDir {
        /// The directory asked for.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// SQLite could not open the database file.
    Open {
        /// The database file.
        path: PathBuf,
        /// Why it failed.
        source: rusqlite::Error,
    },
    /// The database was written by a newer build with a newer schema.
    SchemaTooNew {
        /// `user_version` found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// SQLite refused to switch the database to WAL mode.
    NotWal {
        /// The journal mode SQLite reported instead.
        mode: String,
    },
    /// A stored row holds a value this build cannot read.
    BadRow(rusqlite::Error),
    /// A quantity or threshold was NaN, infinite, negative where it must not
    /// be, or a change would make the stock overflow.
    InvalidNumber {
        /// Which number: "quantity change", "reorder point", ...
        what: &'static str,
    },
    /// A history page or limit is out of range (page >= 1, limit 1..=1000).
    InvalidPage {
        /// The page asked for.
        page: u32,
        /// The limit asked for.
        limit: u32,
    },
    /// SQLite rolled the pass transaction back by itself after an error; no
    /// write is accepted until the server calls `rollback`.
    PassAborted,
    /// A housekeeping step was asked for while a pass transaction is open.
    PassOpen,
    /// The idempotency key is already stored for this store.
    IdempotencyKeyTaken,
    /// Any other SQLite failure.
    Sqlite(rusqlite::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Locked => f.write_str("database is locked by another process"),
            StoreError::DiskFull => f.write_str("disk is full"),
            StoreError::ReadOnly => f.write_str("database is read-only (check permissions)"),
            StoreError::Io(err) => write!(f, "disk i/o error on the database: {err}"),
            StoreError::Corrupt => f.write_str("database file is corrupt or not a database"),
            StoreError::CreateDir { path, source } => {
                write!(
                    f,
                    "cannot create data directory {}: {source}",
                    path.display()
                )
            }
            StoreError::Open { path, source } => {
                write!(f, "cannot open database {}: {source}", path.display())
            }
            StoreError::SchemaTooNew { found, supported } => write!(
                f,
                "database schema version {found} is newer than this build supports ({supported})"
            ),
            StoreError::NotWal { mode } => {
                write!(f, "database cannot use WAL mode (journal mode is {mode})")
            }
            StoreError::BadRow(err) => write!(f, "database holds an unreadable value: {err}"),
            StoreError::InvalidNumber { what } => {
                write!(f, "{what} is not a finite number in range")
            }
            StoreError::InvalidPage { page, limit } => write!(
                f,
                "history page {page} with limit {limit} is out of range (page >= 1, \
                 limit 1..=1000)"
            ),
            StoreError::PassAborted => {
                f.write_str("database aborted the pass transaction; it must be rolled back")
            }
            StoreError::PassOpen => f.write_str("housekeeping needs no pass transaction open"),
            StoreError::IdempotencyKeyTaken => f.write_str("idempotency key is already stored"),
            StoreError::Sqlite(err) => write!(f, "database error: {err}"),
        }
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            StoreError::Io(err)
            | StoreError::BadRow(err)
            | StoreError::Sqlite(err)
            | StoreError::Open { source: err, .. } => Some(err),
            StoreError::CreateDir { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    /// Sorts a SQLite failure by what the operator must do about it.
    fn from(err: rusqlite::Error) -> StoreError {
        if let rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) = err
        {
            return StoreError::BadRow(err);
        }

        match err.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked,
            Some(ErrorCode::DiskFull) => StoreError::DiskFull,
            Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => StoreError::ReadOnly,
            Some(ErrorCode::SystemIoFailure) => StoreError::Io(err),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt,
            _ => StoreError::Sqlite(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn sqlite_failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn sqlite_codes_map_to_operator_messages() {
        let busy = StoreError::from(sqlite_failure(ffi::SQLITE_BUSY));
        assert_eq!(busy.to_string(), "database is locked by another process");

        let full = StoreError::from(sqlite_failure(ffi::SQLITE_FULL));
        assert_eq!(full.to_string(), "disk is full");

        let io = StoreError::from(sqlite_failure(ffi::SQLITE_IOERR_WRITE));
        assert!(matches!(io, StoreError::Io(_)));
        assert!(io.to_string().starts_with("disk i/o error"));

        let other = StoreError::from(sqlite_failure(ffi::SQLITE_CONSTRAINT));
        assert!(matches!(other, StoreError::Sqlite(_)));
    }

    #[test]
    fn messages_are_lowercase() {
        let errors = [
            StoreError::Locked,
            StoreError::DiskFull,
            StoreError::PassAborted,
            StoreError::InvalidNumber {
                what: "reorder point",
            },
            StoreError::InvalidPage { page: 0, limit: 5 },
            StoreError::SchemaTooNew {
                found: 9,
                supported: 1,
            },
        ];
        for err in errors {
            let text = err.to_string();
            let first = text.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{text}");
        }
    }
}
