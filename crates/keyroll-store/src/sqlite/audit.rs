//! The audit log and the event outbox on SQLite: appended inside the transaction of the change
//! they describe, read newest first (audit) or after a position (events).
//!
//! Invariants:
//! - Nothing is appended on its own: [`SqliteStore::append_audit`] and
//!   [`SqliteStore::append_events`] take the connection of the caller's write transaction, so an
//!   entry exists exactly when its change committed (one lifecycle change = one transaction).
//! - Both tables are append-only (triggers of the schema refuse an `UPDATE` or `DELETE`); `seq`
//!   is the database's, the caller's is ignored.
//! - No column holds a secret: `detail` is JSON text made by the caller without one.

use sqlx::sqlite::SqliteConnection;

use super::SqliteStore;
use super::decode::{audit_from_row, event_from_row};
use crate::{AuditRecord, EventRecord, StoreError};

impl SqliteStore {
    /// Appends audit entries inside the caller's transaction.
    pub(super) async fn append_audit(
        &self,
        conn: &mut SqliteConnection,
        entries: &[AuditRecord],
        doing: &str,
    ) -> Result<(), StoreError> {
        for entry in entries {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, target, detail, request_id, remote_addr) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(entry.at.unix_millis())
            .bind(entry.actor.as_str())
            .bind(entry.action.as_str())
            .bind(entry.target.as_str())
            .bind(entry.detail.as_str())
            .bind(entry.request_id.as_deref())
            .bind(entry.remote_addr.as_deref())
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        }
        Ok(())
    }

    /// Appends events to the outbox inside the caller's transaction.
    pub(super) async fn append_events(
        &self,
        conn: &mut SqliteConnection,
        events: &[EventRecord],
        doing: &str,
    ) -> Result<(), StoreError> {
        for event in events {
            sqlx::query(
                "INSERT INTO events (at, kind, consumer, version, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
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
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, target, detail, request_id, remote_addr \
             FROM audit_log ORDER BY seq DESC LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("reading the audit log", e))?;
        rows.iter().map(audit_from_row).collect()
    }

    pub(super) async fn event_list(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, consumer, version, detail FROM events \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("reading the event outbox", e))?;
        rows.iter().map(event_from_row).collect()
    }
}
