//! Dashboard sessions on SQLite (table `ui_sessions`, migration 0014): one row per logged-in
//! browser, keyed by SHA-256 of its session id.
//!
//! Invariant: no column holds a secret. The session id and the CSRF token exist in plaintext
//! only in the browser's cookies; the row keeps their hashes, so a copy of the database opens
//! no session. Validity (idle and absolute expiry, the token's own state) is the server's
//! decision from the stored times; pruning only keeps the table small.

use keyroll_core::Timestamp;
use sqlx::Row;

use super::SqliteStore;
use super::errors::{Violation, violation};
use crate::{StoreError, UiSession};

fn hash32(bytes: Vec<u8>, column: &str) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| StoreError::Corrupt(format!("ui_sessions.{column} is not 32 bytes")))
}

impl SqliteStore {
    pub(super) async fn session_create(&self, session: &UiSession) -> Result<(), StoreError> {
        let doing = format!(
            "creating a dashboard session for admin token {}",
            session.token_id
        );
        self.check_file(&doing)?;
        sqlx::query(
            "INSERT INTO ui_sessions (id_hash, token_id, csrf_hash, created_at, expires_at, last_seen_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(session.id_hash.as_slice())
        .bind(session.token_id.as_str())
        .bind(session.csrf_hash.as_slice())
        .bind(session.created_at.unix_millis())
        .bind(session.expires_at.unix_millis())
        .bind(session.last_seen_at.unix_millis())
        .execute(&self.pool)
        .await
        .map_err(|e| match violation(&e) {
            Some(Violation::Unique(_)) => StoreError::AlreadyExists("dashboard session".to_owned()),
            Some(Violation::ForeignKey) => {
                StoreError::NotFound(format!("admin token {}", session.token_id))
            }
            None => self.fail(&doing, e),
        })?;
        self.set_outage(None);
        Ok(())
    }

    pub(super) async fn session_get(
        &self,
        id_hash: &[u8; 32],
    ) -> Result<Option<UiSession>, StoreError> {
        let doing = "reading a dashboard session";
        let row = sqlx::query(
            "SELECT id_hash, token_id, csrf_hash, created_at, expires_at, last_seen_at \
             FROM ui_sessions WHERE id_hash = ?1",
        )
        .bind(id_hash.as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail(doing, e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let corrupt = |e: sqlx::Error| StoreError::Corrupt(format!("ui_sessions: {e}"));
        Ok(Some(UiSession {
            id_hash: hash32(row.try_get(0).map_err(corrupt)?, "id_hash")?,
            token_id: row.try_get(1).map_err(corrupt)?,
            csrf_hash: hash32(row.try_get(2).map_err(corrupt)?, "csrf_hash")?,
            created_at: Timestamp::from_unix_millis(row.try_get(3).map_err(corrupt)?),
            expires_at: Timestamp::from_unix_millis(row.try_get(4).map_err(corrupt)?),
            last_seen_at: Timestamp::from_unix_millis(row.try_get(5).map_err(corrupt)?),
        }))
    }

    pub(super) async fn session_touch(
        &self,
        id_hash: &[u8; 32],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let doing = "noting a dashboard session's activity";
        self.check_file(doing)?;
        sqlx::query(
            "UPDATE ui_sessions SET last_seen_at = ?2 WHERE id_hash = ?1 AND last_seen_at < ?2",
        )
        .bind(id_hash.as_slice())
        .bind(at.unix_millis())
        .execute(&self.pool)
        .await
        .map_err(|e| self.fail(doing, e))?;
        self.set_outage(None);
        Ok(())
    }

    pub(super) async fn session_delete(&self, id_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let doing = "ending a dashboard session";
        self.check_file(doing)?;
        let done = sqlx::query("DELETE FROM ui_sessions WHERE id_hash = ?1")
            .bind(id_hash.as_slice())
            .execute(&self.pool)
            .await
            .map_err(|e| self.fail(doing, e))?;
        self.set_outage(None);
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn session_prune(
        &self,
        now: Timestamp,
        idle_before: Timestamp,
    ) -> Result<u64, StoreError> {
        let doing = "pruning ended dashboard sessions";
        self.check_file(doing)?;
        let done =
            sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= ?1 OR last_seen_at < ?2")
                .bind(now.unix_millis())
                .bind(idle_before.unix_millis())
                .execute(&self.pool)
                .await
                .map_err(|e| self.fail(doing, e))?;
        self.set_outage(None);
        Ok(done.rows_affected())
    }
}
