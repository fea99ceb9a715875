//! How a failure of SQLite becomes a [`StoreError`]: the one place that reads SQLite's result
//! codes, for sqlx's errors and for rusqlite's (the bulk reads of [`load`](super::load)).
//!
//! The rule, whichever driver: damage (a corrupt file, not a database, a schema from a newer
//! keyroll) and data the schema refuses are `Corrupt`; everything else (locked, read-only, disk
//! full, I/O, pool exhausted) is `Unavailable`. Messages name the database, what was being done
//! and SQLite's own words, without the driver's wrapping. Constraint violations that mean
//! something to the caller (a name taken, an unknown environment) are told apart by
//! [`violation`] and mapped by each operation; marking the store down on `Unavailable` is the
//! job of `SqliteStore::fail` (see [`health`](super::health)).

use std::path::Path;

use rusqlite::ErrorCode;
use sqlx::error::DatabaseError;
use sqlx::migrate::MigrateError;

use crate::StoreError;

// Primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the low
// byte.
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_CONSTRAINT: i32 = 19;
const SQLITE_NOTADB: i32 = 26;

/// What a constraint violation was about: the constraint's name where the database gives one,
/// else its message (SQLite: `UNIQUE constraint failed: key_versions.kid`).
pub(super) enum Violation {
    Unique(String),
    ForeignKey,
}

pub(super) fn violation(err: &sqlx::Error) -> Option<Violation> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let target = || db.constraint().unwrap_or(db.message()).to_owned();
    if db.is_unique_violation() {
        Some(Violation::Unique(target()))
    } else if db.is_foreign_key_violation() {
        Some(Violation::ForeignKey)
    } else {
        None
    }
}

/// SQLite's primary result code of a database error.
fn primary_code(db: &dyn DatabaseError) -> Option<i32> {
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .map(|c| c & 0xff)
}

/// The words of an error without sqlx's "error returned from database: (code: 8)" wrapping.
fn cause(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// Maps a failure during operation: damage and rejected data are `Corrupt`, everything else
/// (locked, read-only, disk full, I/O, pool exhausted) is `Unavailable`.
pub(super) fn classify(location: &str, doing: &str, err: sqlx::Error) -> StoreError {
    let message = format!("SQLite database {location}: {doing}: {}", cause(&err));
    match &err {
        sqlx::Error::Database(db) => match primary_code(db.as_ref()) {
            Some(SQLITE_CORRUPT | SQLITE_NOTADB) => StoreError::Corrupt(message),
            // A CHECK, NOT NULL or trigger refusal: the caller handed over something the schema
            // forbids; storing it anyway would make the data unreadable.
            Some(SQLITE_CONSTRAINT) => {
                StoreError::Corrupt(format!("{message} (refused by the schema)"))
            }
            _ => StoreError::Unavailable(message),
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(message),
        _ => StoreError::Unavailable(message),
    }
}

/// Maps a failure to open, naming the path and, where the file system tells more than SQLite's
/// "unable to open database file", the actual cause.
pub(super) fn open_error(location: &str, path: Option<&Path>, err: sqlx::Error) -> StoreError {
    let mut why = cause(&err);
    let code = match &err {
        sqlx::Error::Database(db) => primary_code(db.as_ref()),
        _ => None,
    };
    if let Some(diagnosis) = path.and_then(diagnose_path) {
        // The diagnosis names a path, which holds a URL's userinfo if one was given.
        why = format!("{} ({why})", keyroll_core::redact_url(&diagnosis));
    } else if code == Some(SQLITE_CANTOPEN) {
        match path {
            // A URL with `mode=ro` or `mode=rw` does not create the file.
            Some(p) if !p.exists() => why = format!("{why}: the file does not exist"),
            _ => why = format!("{why}; check that it and its directory are writable by this user"),
        }
    }
    let message = format!("cannot open SQLite database {location}: {why}");
    match code {
        Some(SQLITE_CORRUPT | SQLITE_NOTADB) => StoreError::Corrupt(message),
        _ => StoreError::Unavailable(message),
    }
}

/// What is wrong with the place a database file should be, if the file system can tell.
fn diagnose_path(path: &Path) -> Option<String> {
    if path.is_dir() {
        return Some("it is a directory".to_owned());
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty())?;
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => None,
        Ok(_) => Some(format!("{} is not a directory", parent.display())),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            // The parent may itself sit under a regular file: name the component that is one.
            let file = parent.ancestors().skip(1).find(|a| a.is_file());
            Some(match file {
                Some(file) => format!("{} is a file, not a directory", file.display()),
                None => format!("directory {} does not exist", parent.display()),
            })
        }
        Err(e) => Some(format!("{}: {e}", parent.display())),
    }
}

pub(super) fn migrate_error(location: &str, path: Option<&Path>, err: MigrateError) -> StoreError {
    match err {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => {
            let damaged = matches!(
                &e,
                sqlx::Error::Database(db)
                    if matches!(primary_code(db.as_ref()), Some(SQLITE_CORRUPT | SQLITE_NOTADB))
            );
            let message = format!("cannot migrate SQLite database {location}: {}", cause(&e));
            if damaged {
                StoreError::Corrupt(message)
            } else if let Some(d) = path.and_then(diagnose_path) {
                StoreError::Unavailable(format!("{message} ({d})"))
            } else {
                StoreError::Unavailable(message)
            }
        }
        MigrateError::VersionMissing(v) => StoreError::Corrupt(format!(
            "SQLite database {location} has schema migration {v}, which this version of keyroll \
             does not know: it was written by a newer keyroll"
        )),
        MigrateError::VersionMismatch(v) => StoreError::Corrupt(format!(
            "SQLite database {location}: schema migration {v} differs from the one this version \
             of keyroll ships"
        )),
        MigrateError::Dirty(v) => StoreError::Corrupt(format!(
            "SQLite database {location}: schema migration {v} was only partly applied"
        )),
        other => StoreError::Corrupt(format!(
            "cannot migrate SQLite database {location}: {other}"
        )),
    }
}

/// Maps a rusqlite failure as [`classify`] maps sqlx's: damage is `Corrupt`, the rest (cannot
/// open, locked, I/O) `Unavailable`.
pub(super) fn classify_rusqlite(location: &str, doing: &str, err: rusqlite::Error) -> StoreError {
    let damaged = matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    );
    let cause = match &err {
        rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
        other => other.to_string(),
    };
    let message = format!("SQLite database {location}: {doing}: {cause}");
    if damaged {
        StoreError::Corrupt(message)
    } else {
        StoreError::Unavailable(message)
    }
}
