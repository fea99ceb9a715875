//! How a failure of PostgreSQL becomes a [`StoreError`]: the one place that reads SQLSTATEs.
//!
//! The rule, as for SQLite: data the schema refuses and a schema this version cannot read are
//! `Corrupt`; a concurrent transaction that made ours fail (a serialization failure, a deadlock)
//! is `Conflict`, which callers retry; everything else (the server down, restarting or
//! unreachable, a dropped connection, no pooled connection within the timeout, a full disk, a
//! read-only server) is `Unavailable`. Messages name the database with its password redacted,
//! what was being done and PostgreSQL's own words. Unique and foreign-key violations that mean
//! something to the caller (a name taken, a kid collision, a reused Idempotency-Key, an unknown
//! environment) are told apart by constraint name in [`violation`] and mapped by each operation;
//! marking the store down on `Unavailable` is the job of `PostgresStore::fail` (see
//! [`health`](super::health)).

use sqlx::migrate::MigrateError;

use crate::StoreError;

/// What a constraint violation was about: the violated constraint's name (the migrations name
/// every constraint that the store tells apart).
pub(super) enum Violation {
    Unique(String),
    ForeignKey,
}

pub(super) fn violation(err: &sqlx::Error) -> Option<Violation> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    match db.code().as_deref() {
        Some("23505") => Some(Violation::Unique(
            db.constraint().unwrap_or(db.message()).to_owned(),
        )),
        Some("23503") => Some(Violation::ForeignKey),
        _ => None,
    }
}

/// The SQLSTATE of a database error.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The words of an error without sqlx's wrapping, and without a URL's password should the
/// driver have quoted one.
fn cause(err: &sqlx::Error) -> String {
    let text = match err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::PoolTimedOut => format!(
            "no database connection within {} s: the server is down, unreachable or refusing \
             connections",
            super::ACQUIRE_TIMEOUT.as_secs()
        ),
        sqlx::Error::Io(e) => format!("connection failed: {e}"),
        other => other.to_string(),
    };
    keyroll_core::redact_url(&text)
}

/// What a SQLSTATE means for the caller.
enum Class {
    Corrupt,
    Refused,
    Conflict,
    Unavailable,
}

fn class_of(code: &str) -> Class {
    match code {
        // serialization_failure, deadlock_detected: another transaction won; retry.
        "40001" | "40P01" => Class::Conflict,
        // Integrity violations (check, not null, unique and foreign keys not told apart by the
        // operation), data exceptions (a value out of range), and a trigger's refusal (the
        // append-only logs): the caller handed over something the schema forbids.
        c if c.starts_with("23") || c.starts_with("22") || c == "P0001" => Class::Refused,
        // data_corrupted, index_corrupted; undefined tables or columns and the like: a
        // schema that is not the one this version migrated.
        "XX001" | "XX002" => Class::Corrupt,
        c if c.starts_with("42") => Class::Corrupt,
        // Connection exceptions (08), operator intervention (57: admin_shutdown,
        // crash_shutdown, cannot_connect_now), insufficient resources (53: disk full, out of
        // memory, too many connections), read-only transactions on a standby (25006),
        // and everything else the server can say.
        _ => Class::Unavailable,
    }
}

/// Maps a failure during operation (see the module documentation).
pub(super) fn classify(location: &str, doing: &str, err: sqlx::Error) -> StoreError {
    let message = format!("PostgreSQL database {location}: {doing}: {}", cause(&err));
    match &err {
        sqlx::Error::Database(_) => match sqlstate(&err).as_deref().map(class_of) {
            // Displayed as "… was changed concurrently; retry".
            Some(Class::Conflict) => StoreError::Conflict(format!(
                "what {doing} read, on PostgreSQL database {location} ({}),",
                cause(&err)
            )),
            Some(Class::Refused) => {
                StoreError::Corrupt(format!("{message} (refused by the schema)"))
            }
            Some(Class::Corrupt) => StoreError::Corrupt(message),
            Some(Class::Unavailable) | None => StoreError::Unavailable(message),
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(message),
        _ => StoreError::Unavailable(message),
    }
}

/// Maps a failure to connect at open: always `Unavailable` (the server is down or unreachable,
/// the login or the database name is wrong), naming the database.
pub(super) fn open_error(location: &str, err: sqlx::Error) -> StoreError {
    let why = match &err {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let hint = match code.as_str() {
                "3D000" => " (create it first, or fix the database name in the URL)",
                "28P01" | "28000" => " (check the user and password in the URL)",
                _ => "",
            };
            format!("{}{hint}", cause(&err))
        }
        _ => cause(&err),
    };
    StoreError::Unavailable(format!("cannot open PostgreSQL database {location}: {why}"))
}

pub(super) fn migrate_error(location: &str, err: MigrateError) -> StoreError {
    match err {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => {
            let message = format!(
                "cannot migrate PostgreSQL database {location}: {}",
                cause(&e)
            );
            match sqlstate(&e).as_deref().map(class_of) {
                Some(Class::Corrupt | Class::Refused) => StoreError::Corrupt(message),
                _ => StoreError::Unavailable(message),
            }
        }
        MigrateError::VersionMissing(v) => StoreError::Corrupt(format!(
            "PostgreSQL database {location} has schema migration {v}, which this version of \
             keyroll does not know: it was written by a newer keyroll"
        )),
        MigrateError::VersionMismatch(v) => StoreError::Corrupt(format!(
            "PostgreSQL database {location}: schema migration {v} differs from the one this \
             version of keyroll ships"
        )),
        MigrateError::Dirty(v) => StoreError::Corrupt(format!(
            "PostgreSQL database {location}: schema migration {v} was only partly applied"
        )),
        other => StoreError::Corrupt(format!(
            "cannot migrate PostgreSQL database {location}: {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_what_the_caller_does() {
        for (code, expected) in [
            ("40001", "conflict"),
            ("40P01", "conflict"),
            ("23514", "refused"),
            ("23502", "refused"),
            ("22003", "refused"),
            ("P0001", "refused"),
            ("42P01", "corrupt"),
            ("XX001", "corrupt"),
            ("57P01", "unavailable"),
            ("57P03", "unavailable"),
            ("08006", "unavailable"),
            ("53100", "unavailable"),
            ("25006", "unavailable"),
        ] {
            let got = match class_of(code) {
                Class::Conflict => "conflict",
                Class::Refused => "refused",
                Class::Corrupt => "corrupt",
                Class::Unavailable => "unavailable",
            };
            assert_eq!(got, expected, "{code}");
        }
    }

    #[test]
    fn pool_timeouts_and_io_errors_are_unavailable_and_say_so() {
        let err = classify("postgres://u:***@db/k", "ping", sqlx::Error::PoolTimedOut);
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("postgres://u:***@db/k"), "{message}");
        assert!(
            message.contains("no database connection within 2 s"),
            "{message}"
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(matches!(
            classify("x", "ping", sqlx::Error::Io(io)),
            StoreError::Unavailable(_)
        ));
    }
}
