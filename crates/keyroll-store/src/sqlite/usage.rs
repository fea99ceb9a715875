//! Usage on SQLite: a batch of usage facts recorded in one write transaction, and the usage of
//! some versions read back in one snapshot. (The last use of every version at start is read by
//! [`load`](super::load).)
//!
//! Each part of a batch goes to the database as one JSON array bound to one statement, which
//! `json_each` turns back into rows. Why JSON: a flush carries around a thousand versions, each
//! with its hours and sources. One statement per row would be thousands of round trips to sqlx's
//! connection thread inside the write lock; a multi-row `VALUES` list would be a new statement
//! text (and a new prepared statement) for every batch size. A JSON parameter keeps four fixed,
//! cached statements per batch whatever its size, and SQLite's JSON functions are built in.
//!
//! Invariants: usage of a kid that no longer exists is dropped, never stored; each version keeps
//! only its `max_sources` most recently seen sources, trimmed in the batch's transaction.

use std::fmt::Write as _;

use keyroll_core::{Kid, Timestamp};

use super::SqliteStore;
use super::decode::{usage_hourly_from_row, usage_last_used_from_row, usage_source_from_row};
use crate::usage::{Hourly, LastUsed, Source};
use crate::{StoreError, UsageDelta, VersionUsage};

/// Adds each `[kid, last_used_at]` whose version exists, keeping the later time.
pub(super) const UPSERT_LAST_USED: &str = "INSERT INTO version_usage (kid, last_used_at) \
     SELECT u.value ->> 0, u.value ->> 1 FROM json_each(?1) AS u \
     WHERE EXISTS (SELECT 1 FROM key_versions AS k WHERE k.kid = u.value ->> 0) \
     ON CONFLICT (kid) DO UPDATE \
     SET last_used_at = max(version_usage.last_used_at, excluded.last_used_at)";

/// Adds each `[kid, hour, count]` whose version exists to its hour's count.
pub(super) const UPSERT_HOURLY: &str = "INSERT INTO usage_hourly (kid, hour, count) \
     SELECT u.value ->> 0, u.value ->> 1, u.value ->> 2 FROM json_each(?1) AS u \
     WHERE EXISTS (SELECT 1 FROM key_versions AS k WHERE k.kid = u.value ->> 0) \
     ON CONFLICT (kid, hour) DO UPDATE SET count = usage_hourly.count + excluded.count";

/// Adds each `[kid, address, user_agent, client_id, first_seen, last_seen, count]` whose version
/// exists to its source.
pub(super) const UPSERT_SOURCES: &str = "INSERT INTO usage_sources \
     (kid, address, user_agent, client_id, first_seen, last_seen, count) \
     SELECT u.value ->> 0, u.value ->> 1, u.value ->> 2, u.value ->> 3, u.value ->> 4, \
     u.value ->> 5, u.value ->> 6 FROM json_each(?1) AS u \
     WHERE EXISTS (SELECT 1 FROM key_versions AS k WHERE k.kid = u.value ->> 0) \
     ON CONFLICT (kid, address, user_agent, client_id) DO UPDATE \
     SET first_seen = min(usage_sources.first_seen, excluded.first_seen), \
     last_seen = max(usage_sources.last_seen, excluded.last_seen), \
     count = usage_sources.count + excluded.count";

/// The order of a version's sources, most recent first; ties broken so that trimming and
/// reading agree on which sources are "the most recent".
macro_rules! recent_first {
    () => {
        "last_seen DESC, count DESC, address, user_agent, client_id"
    };
}

/// Keeps only the `?2` most recently seen sources of each kid of the JSON array `?1` (of
/// `[kid, …]` arrays).
pub(super) const TRIM_SOURCES: &str = concat!(
    "DELETE FROM usage_sources WHERE (kid, address, user_agent, client_id) IN (\
     SELECT kid, address, user_agent, client_id FROM (\
     SELECT kid, address, user_agent, client_id, \
     row_number() OVER (PARTITION BY kid ORDER BY ",
    recent_first!(),
    ") AS position \
     FROM usage_sources WHERE kid IN (SELECT u.value ->> 0 FROM json_each(?1) AS u)\
     ) WHERE position > ?2)"
);

/// The last use of each kid of the JSON array `?1` (of strings) that has one.
pub(super) const SELECT_LAST_USED: &str = "SELECT kid, last_used_at FROM version_usage \
     WHERE kid IN (SELECT value FROM json_each(?1))";

/// The hours from `?2` on of each kid of `?1`, by kid, oldest first.
pub(super) const SELECT_HOURLY: &str = "SELECT kid, hour, count FROM usage_hourly \
     WHERE kid IN (SELECT value FROM json_each(?1)) AND hour >= ?2 ORDER BY kid, hour";

/// The sources of each kid of `?1`, by kid, most recent first.
pub(super) const SELECT_SOURCES: &str = concat!(
    "SELECT kid, address, user_agent, client_id, first_seen, last_seen, count \
     FROM usage_sources WHERE kid IN (SELECT value FROM json_each(?1)) ORDER BY kid, ",
    recent_first!()
);

/// `[["kid", last_used_at], …]`.
pub(super) fn last_used_json(rows: &[LastUsed<'_>]) -> String {
    array(rows, |out, (kid, at)| {
        string(out, kid);
        let _ = write!(out, ",{at}");
    })
}

/// `[["kid", hour, count], …]`.
pub(super) fn hourly_json(rows: &[Hourly<'_>]) -> String {
    array(rows, |out, (kid, hour, count)| {
        string(out, kid);
        let _ = write!(out, ",{hour},{count}");
    })
}

/// `[["kid", "address", "user agent", "client id", first_seen, last_seen, count], …]`.
pub(super) fn sources_json(rows: &[Source<'_>]) -> String {
    array(rows, |out, s| {
        for text in [s.kid, s.address, s.user_agent, s.client_id] {
            string(out, text);
            out.push(',');
        }
        let _ = write!(out, "{},{},{}", s.first_seen, s.last_seen, s.count);
    })
}

/// `["kid", …]`.
pub(super) fn kids_json<'k>(kids: impl Iterator<Item = &'k str>) -> String {
    let mut out = String::from("[");
    for (i, kid) in kids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(&mut out, kid);
    }
    out.push(']');
    out
}

/// A JSON array of arrays, one per row, each written by `row` (without its brackets).
fn array<T>(rows: &[T], row: impl Fn(&mut String, &T)) -> String {
    let mut out = String::with_capacity(2 + rows.len() * 64);
    out.push('[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        row(&mut out, r);
        out.push(']');
    }
    out.push(']');
    out
}

/// A JSON string. Addresses and User-Agents come from clients: anything JSON needs escaped is
/// escaped, everything else (any Unicode) is passed through, as JSON allows.
fn string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl SqliteStore {
    /// Adds a batch of usage in one write transaction (see [`crate::Store::record_usage`]).
    pub(super) async fn usage_record(
        &self,
        batch: &[UsageDelta],
        max_sources: u32,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let merged = crate::usage::merge(batch);
        let doing = format!("recording the usage of {} versions", merged.last_used.len());
        // Made before taking the write lock, which is held only for the statements.
        let last_used = last_used_json(&merged.last_used);
        let hourly = (!merged.hourly.is_empty()).then(|| hourly_json(&merged.hourly));
        let sources = (!merged.sources.is_empty()).then(|| sources_json(&merged.sources));
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query(UPSERT_LAST_USED)
            .bind(last_used.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(&doing, e))?;
        if let Some(hourly) = &hourly {
            sqlx::query(UPSERT_HOURLY)
                .bind(hourly.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.fail(&doing, e))?;
        }
        if let Some(sources) = &sources {
            sqlx::query(UPSERT_SOURCES)
                .bind(sources.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.fail(&doing, e))?;
        }
        // Every kid of the batch, not only those with new sources: a smaller `max_sources` than
        // last time applies to them too.
        sqlx::query(TRIM_SOURCES)
            .bind(last_used.as_str())
            .bind(i64::from(max_sources))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(&doing, e))?;
        self.commit_write(tx, &doing).await
    }

    /// The usage of `kids` from `since` on, in the order asked, read in one snapshot.
    pub(super) async fn usage_read(
        &self,
        kids: &[Kid],
        since: Timestamp,
    ) -> Result<Vec<VersionUsage>, StoreError> {
        if kids.is_empty() {
            return Ok(Vec::new());
        }
        let doing = format!("reading the usage of {} versions", kids.len());
        let json = kids_json(kids.iter().map(Kid::as_str));
        let fail = |e: sqlx::Error| self.fail(&doing, e);
        let mut tx = self.begin_read(&doing).await?;
        let last_used = sqlx::query(SELECT_LAST_USED)
            .bind(json.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        let hourly = sqlx::query(SELECT_HOURLY)
            .bind(json.as_str())
            .bind(since.unix_millis())
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        let sources = sqlx::query(SELECT_SOURCES)
            .bind(json.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        self.commit(tx, &doing).await?;

        let last_used = last_used
            .iter()
            .map(usage_last_used_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let hourly = hourly
            .iter()
            .map(usage_hourly_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let sources = sources
            .iter()
            .map(usage_source_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::usage::answer(kids, last_used, hourly, sources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        string(&mut out, "a\"b\\c\n\u{1}é\u{7f}");
        assert_eq!(out, "\"a\\\"b\\\\c\\u000a\\u0001é\u{7f}\"");
        assert_eq!(kids_json([].into_iter()), "[]");
        assert_eq!(
            last_used_json(&[("AAAAAAAAAAAA", -5), ("BBBBBBBBBBBB", 7)]),
            "[[\"AAAAAAAAAAAA\",-5],[\"BBBBBBBBBBBB\",7]]"
        );
    }
}
