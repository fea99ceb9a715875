//! Usage on PostgreSQL: a batch of usage facts recorded in one write transaction, and the usage
//! of some versions read back in one snapshot. (The last use of every version at start is read
//! by [`load`](super::load).)
//!
//! Each part of a batch goes to the database as one statement whose columns are bound as
//! arrays and turned back into rows by `unnest`: a flush carries around a thousand versions, and
//! one statement per row would be thousands of round trips inside the transaction, while a
//! multi-row `VALUES` list would be a new statement text for every batch size. Arrays keep four
//! fixed, prepared statements per batch whatever its size.
//!
//! Invariants:
//! - Usage of a kid that no longer exists is dropped, never stored; each version keeps only its
//!   `max_sources` most recently seen sources, trimmed in the batch's transaction.
//! - Several nodes flush at once and their counts add up exactly: every row is an
//!   `INSERT … ON CONFLICT DO UPDATE SET count = t.count + excluded.count`, which PostgreSQL
//!   makes atomic against a concurrent insert or update of the same row. Flushes also hold the
//!   advisory lock [`USAGE_LOCK`] until they commit: without it, two flushes sharing kids could
//!   deadlock in the trim (each deleting a source row the other has just updated). Rows are also
//!   written in kid order, so what is locked is locked in one order.

use keyroll_core::{Kid, Timestamp};

use super::decode::{usage_hourly_from_row, usage_last_used_from_row, usage_source_from_row};
use super::{PostgresStore, USAGE_LOCK, lock};
use crate::{StoreError, UsageDelta, VersionUsage};

/// Adds each `(kid, last_used_at)` whose version exists, keeping the later time.
const UPSERT_LAST_USED: &str = "INSERT INTO version_usage (kid, last_used_at) \
     SELECT u.kid, u.at FROM unnest($1::text[], $2::bigint[]) AS u (kid, at) \
     WHERE EXISTS (SELECT 1 FROM key_versions AS k WHERE k.kid = u.kid) \
     ON CONFLICT (kid) DO UPDATE \
     SET last_used_at = GREATEST(version_usage.last_used_at, excluded.last_used_at)";

/// Adds each `(kid, hour, count)` whose version exists to its hour's count.
const UPSERT_HOURLY: &str = "INSERT INTO usage_hourly (kid, hour, count) \
     SELECT u.kid, u.hour, u.n FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
     AS u (kid, hour, n) \
     WHERE EXISTS (SELECT 1 FROM key_versions AS k WHERE k.kid = u.kid) \
     ON CONFLICT (kid, hour) DO UPDATE SET count = usage_hourly.count + excluded.count";

/// Adds each `(kid, address, user_agent, client_id, first_seen, last_seen, count)` whose
/// version exists to its source.
const UPSERT_SOURCES: &str = "INSERT INTO usage_sources \
     (kid, address, user_agent, client_id, first_seen, last_seen, count) \
     SELECT u.kid, u.address, u.user_agent, u.client_id, u.first_seen, u.last_seen, u.n \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
     $7::bigint[]) AS u (kid, address, user_agent, client_id, first_seen, last_seen, n) \
     WHERE EXISTS (SELECT 1 FROM key_versions AS k WHERE k.kid = u.kid) \
     ON CONFLICT (kid, address, user_agent, client_id) DO UPDATE \
     SET first_seen = LEAST(usage_sources.first_seen, excluded.first_seen), \
     last_seen = GREATEST(usage_sources.last_seen, excluded.last_seen), \
     count = usage_sources.count + excluded.count";

/// The order of a version's sources, most recent first; ties broken (by byte, as SQLite does)
/// so that trimming and reading agree on which sources are "the most recent".
macro_rules! recent_first {
    () => {
        "last_seen DESC, count DESC, address COLLATE \"C\", user_agent COLLATE \"C\", \
         client_id COLLATE \"C\""
    };
}

/// Keeps only the `$2` most recently seen sources of each kid of `$1`.
const TRIM_SOURCES: &str = concat!(
    "DELETE FROM usage_sources WHERE (kid, address, user_agent, client_id) IN (\
     SELECT kid, address, user_agent, client_id FROM (\
     SELECT kid, address, user_agent, client_id, \
     row_number() OVER (PARTITION BY kid ORDER BY ",
    recent_first!(),
    ") AS position \
     FROM usage_sources WHERE kid = ANY($1::text[])\
     ) AS ranked WHERE position > $2)"
);

/// The last use of each kid of `$1` that has one.
const SELECT_LAST_USED: &str =
    "SELECT kid, last_used_at FROM version_usage WHERE kid = ANY($1::text[])";

/// The hours from `$2` on of each kid of `$1`, oldest first.
const SELECT_HOURLY: &str = "SELECT kid, hour, count FROM usage_hourly \
     WHERE kid = ANY($1::text[]) AND hour >= $2 ORDER BY kid, hour";

/// The sources of each kid of `$1`, most recent first.
const SELECT_SOURCES: &str = concat!(
    "SELECT kid, address, user_agent, client_id, first_seen, last_seen, count \
     FROM usage_sources WHERE kid = ANY($1::text[]) ORDER BY kid, ",
    recent_first!()
);

impl PostgresStore {
    /// Adds a batch of usage in one write transaction (see [`crate::Store::record_usage`]).
    pub(super) async fn usage_record(
        &self,
        batch: &[UsageDelta],
        max_sources: u32,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut merged = crate::usage::merge(batch);
        merged.last_used.sort_unstable();
        merged.hourly.sort_unstable();
        merged.sources.sort_unstable_by(|a, b| {
            (a.kid, a.address, a.user_agent, a.client_id).cmp(&(
                b.kid,
                b.address,
                b.user_agent,
                b.client_id,
            ))
        });
        let doing = format!("recording the usage of {} versions", merged.last_used.len());
        let kids: Vec<&str> = merged.last_used.iter().map(|(kid, _)| *kid).collect();
        let fail = |e| self.fail(&doing, e);
        let mut tx = self.begin_write(&doing).await?;
        lock(&mut tx, USAGE_LOCK).await.map_err(fail)?;
        sqlx::query(UPSERT_LAST_USED)
            .bind(&kids)
            .bind(
                merged
                    .last_used
                    .iter()
                    .map(|(_, at)| *at)
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        if !merged.hourly.is_empty() {
            let h = &merged.hourly;
            sqlx::query(UPSERT_HOURLY)
                .bind(h.iter().map(|r| r.0).collect::<Vec<_>>())
                .bind(h.iter().map(|r| r.1).collect::<Vec<_>>())
                .bind(h.iter().map(|r| r.2).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
        if !merged.sources.is_empty() {
            let s = &merged.sources;
            sqlx::query(UPSERT_SOURCES)
                .bind(s.iter().map(|r| r.kid).collect::<Vec<_>>())
                .bind(s.iter().map(|r| r.address).collect::<Vec<_>>())
                .bind(s.iter().map(|r| r.user_agent).collect::<Vec<_>>())
                .bind(s.iter().map(|r| r.client_id).collect::<Vec<_>>())
                .bind(s.iter().map(|r| r.first_seen).collect::<Vec<_>>())
                .bind(s.iter().map(|r| r.last_seen).collect::<Vec<_>>())
                .bind(s.iter().map(|r| r.count).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
        // Every kid of the batch, not only those with new sources: a smaller `max_sources` than
        // last time applies to them too.
        sqlx::query(TRIM_SOURCES)
            .bind(&kids)
            .bind(i64::from(max_sources))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
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
        let asked: Vec<&str> = kids.iter().map(Kid::as_str).collect();
        let fail = |e: sqlx::Error| self.fail(&doing, e);
        let mut tx = self.begin_read(&doing).await?;
        let last_used = sqlx::query(SELECT_LAST_USED)
            .bind(&asked)
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        let hourly = sqlx::query(SELECT_HOURLY)
            .bind(&asked)
            .bind(since.unix_millis())
            .fetch_all(&mut *tx)
            .await
            .map_err(fail)?;
        let sources = sqlx::query(SELECT_SOURCES)
            .bind(&asked)
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
