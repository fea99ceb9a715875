//! The audit log and the event outbox on PostgreSQL: appended inside the transaction of the
//! change they describe, read in `seq` order (audit, with its hash chain) or after a position
//! (events).
//!
//! Invariants:
//! - Nothing is appended on its own: [`PostgresStore::append_audit`] and
//!   [`PostgresStore::append_events`] take the connection of the caller's write transaction, so
//!   an entry exists exactly when its change committed (one lifecycle change = one transaction).
//! - The audit log is one hash chain (`keyroll_core::audit_chain`), even with several nodes
//!   appending at once. Before reading the chain's head, the appending transaction takes the
//!   advisory lock [`APPEND_LOCK`], held until it commits or rolls back: the next appender, on
//!   any connection of any node, waits for it and then (READ COMMITTED: each statement sees what
//!   committed before it started) reads the head it committed. So two concurrent changes never
//!   both link to the same entry. `seq` is taken from the identity's sequence under the same lock
//!   (the chain covers it), so positions grow in commit order; a rolled-back append leaves a gap,
//!   and a position is never reused.
//! - Events take the same lock before taking their `seq`: events commit in `seq` order, so a
//!   reader paging by `seq` (the webhook sender) never moves past a position that a transaction
//!   still running would fill later.
//! - Entries written before the chain existed (migration 0006) are chained once, at open, while
//!   no entry has a hash yet ([`PostgresStore::chain_unchained_audit`]); a row without hashes
//!   found later is left as it is, for `keyroll audit verify` to report.
//! - Both tables are append-only (triggers of the schema refuse an `UPDATE` or `DELETE`, except
//!   filling in the hashes of an unchained audit entry); the caller's `seq` is ignored.
//! - No column holds a secret: `detail` is JSON text made by the caller without one.

use keyroll_core::audit_chain::{ChainHash, GENESIS, link};
use sqlx::PgConnection;
use sqlx::Row;

use super::decode::{chained_audit_from_row, event_from_row};
use super::{APPEND_LOCK, PostgresStore, lock};
use crate::rows::chain_entry;
use crate::{AuditQuery, AuditRecord, ChainedAudit, EventRecord, StoreError};

/// The columns of an audit row as [`chained_audit_from_row`] reads them.
const AUDIT_COLUMNS: &str =
    "seq, at, actor, action, target, detail, request_id, remote_addr, prev_hash, hash";

impl PostgresStore {
    /// Appends audit entries inside the caller's write transaction, each linked to the one
    /// before it.
    pub(super) async fn append_audit(
        &self,
        conn: &mut PgConnection,
        entries: &[AuditRecord],
        doing: &str,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        lock(&mut *conn, APPEND_LOCK)
            .await
            .map_err(|e| self.fail(doing, e))?;
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        let mut prev = match last {
            None => GENESIS,
            Some(row) => {
                let seq: i64 = row.try_get(0).map_err(|e| self.fail(doing, e))?;
                let hash: Option<Vec<u8>> = row.try_get(1).map_err(|e| self.fail(doing, e))?;
                // Only a manual edit leaves the last entry without a hash; linking to anything
                // else would hide it, and a change whose entry cannot be written is not made.
                hash.as_deref()
                    .and_then(ChainHash::from_slice)
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "{} ({doing}): audit_log row (seq {seq}) has no valid hash, so the \
                             audit chain cannot be continued; see keyroll audit verify",
                            self.location
                        ))
                    })?
            }
        };
        // The positions, from the identity's sequence (its values are never handed out twice).
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('audit_log', 'seq')) \
             FROM generate_series(1, $1::bigint)",
        )
        .bind(i64::try_from(entries.len()).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| self.fail(doing, e))?;
        for (&seq, entry) in seqs.iter().zip(entries) {
            let hash = link(&prev, &chain_entry(seq, entry));
            sqlx::query(
                "INSERT INTO audit_log \
                 (seq, at, actor, action, target, detail, request_id, remote_addr, prev_hash, hash) \
                 OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(seq)
            .bind(entry.at.unix_millis())
            .bind(entry.actor.as_str())
            .bind(entry.action.as_str())
            .bind(entry.target.as_str())
            .bind(entry.detail.as_str())
            .bind(entry.request_id.as_deref())
            .bind(entry.remote_addr.as_deref())
            .bind(&prev.0[..])
            .bind(&hash.0[..])
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
            prev = hash;
        }
        Ok(())
    }

    /// Chains the entries written before the chain existed, once: when entries exist and none
    /// has a hash yet (the first open after migration 0006). Later, a row without hashes is a
    /// manual edit and stays as it is, for verification to report.
    pub(super) async fn chain_unchained_audit(&self) -> Result<(), StoreError> {
        let doing = "chaining the audit log's earlier entries";
        // Whether there is anything to do, decided first by a read: an up-to-date database
        // opened read-only must still open.
        const TO_CHAIN: &str = "SELECT EXISTS (SELECT 1 FROM audit_log) \
             AND NOT EXISTS (SELECT 1 FROM audit_log WHERE hash IS NOT NULL)";
        let to_chain: bool = sqlx::query_scalar(TO_CHAIN)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.fail(doing, e))?;
        if !to_chain {
            return Ok(());
        }
        let mut tx = self.begin_write(doing).await?;
        lock(&mut tx, APPEND_LOCK)
            .await
            .map_err(|e| self.fail(doing, e))?;
        // Again inside the lock: another node may have chained them meanwhile.
        let to_chain: bool = sqlx::query_scalar(TO_CHAIN)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.fail(doing, e))?;
        if !to_chain {
            return Ok(());
        }
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        let mut prev = GENESIS;
        for row in &rows {
            let stored = chained_audit_from_row(row)?;
            let hash = link(&prev, &chain_entry(stored.entry.seq, &stored.entry));
            sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3")
                .bind(&prev.0[..])
                .bind(&hash.0[..])
                .bind(stored.entry.seq)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.fail(doing, e))?;
            prev = hash;
        }
        self.commit_write(tx, doing).await
    }

    /// Appends events to the outbox inside the caller's transaction.
    pub(super) async fn append_events(
        &self,
        conn: &mut PgConnection,
        events: &[EventRecord],
        doing: &str,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // Reentrant: a transaction that appended audit entries holds it already.
        lock(&mut *conn, APPEND_LOCK)
            .await
            .map_err(|e| self.fail(doing, e))?;
        for event in events {
            sqlx::query(
                "INSERT INTO events (at, kind, consumer, version, detail) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(event.at.unix_millis())
            .bind(event.kind.as_str())
            .bind(event.consumer.as_str())
            .bind(event.version.map(i64::from))
            .bind(event.detail.as_str())
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        }
        Ok(())
    }

    pub(super) async fn audit_list(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("reading the audit log", e))?;
        rows.iter()
            .map(|r| chained_audit_from_row(r).map(|c| c.entry))
            .collect()
    }

    pub(super) async fn audit_query(
        &self,
        q: &AuditQuery,
    ) -> Result<Vec<ChainedAudit>, StoreError> {
        // A target matches itself and what is inside it: `prod/app` matches `prod/app v2`
        // (compared as a prefix, not with LIKE, whose wildcards names may contain).
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log \
             WHERE ($1::bigint IS NULL OR at >= $1) \
             AND ($2::text IS NULL OR target = $2 \
                  OR substr(target, 1, length($2) + 1) = $2 || ' ') \
             AND ($3::text IS NULL OR actor = $3) \
             AND ($4::bigint IS NULL OR seq > $4) \
             ORDER BY seq LIMIT $5"
        ))
        .bind(q.since.map(|t| t.unix_millis()))
        .bind(q.target.as_deref())
        .bind(q.actor.as_deref())
        .bind(q.after_seq)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("reading the audit log", e))?;
        rows.iter().map(chained_audit_from_row).collect()
    }

    pub(super) async fn event_list(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, consumer, version, detail FROM events \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("reading the event outbox", e))?;
        rows.iter().map(event_from_row).collect()
    }
}
