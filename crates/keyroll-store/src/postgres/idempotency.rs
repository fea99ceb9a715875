//! `Idempotency-Key` records on PostgreSQL: the first answer to a request, remembered in the
//! transaction of the change it made, to be replayed on retry.
//!
//! Invariants:
//! - A record is written only inside the caller's write transaction
//!   ([`PostgresStore::remember_idempotency`]), so it exists exactly when its change committed;
//!   a key used twice fails that whole transaction with `IdempotencyKeyUsed`.
//! - No column holds a secret: `key` is a hash of the header value, `response` has no plaintext
//!   key, and `sealed_key` is sealed under a key derived from the header value, which the
//!   database never sees. Sealed keys older than [`IDEMPOTENT_KEY_WINDOW`] are cleared by the
//!   next idempotent write.
//!
//! [`IDEMPOTENT_KEY_WINDOW`]: crate::IDEMPOTENT_KEY_WINDOW

use sqlx::PgConnection;

use super::PostgresStore;
use super::decode::idempotency_from_row;
use super::errors::{Violation, violation};
use crate::{IdempotencyRecord, StoreError};

impl PostgresStore {
    /// Stores the record (if any) inside the caller's transaction, first clearing sealed keys
    /// past their replay window.
    pub(super) async fn remember_idempotency(
        &self,
        conn: &mut PgConnection,
        record: Option<&IdempotencyRecord>,
        doing: &str,
    ) -> Result<(), StoreError> {
        let Some(record) = record else {
            return Ok(());
        };
        // Prune on write: a sealed key outlives its replay window by at most the time until the
        // next idempotent write, and readers ignore it past the window anyway.
        let cutoff = record
            .created_at
            .saturating_sub(crate::IDEMPOTENT_KEY_WINDOW);
        sqlx::query(
            "UPDATE idempotency_keys SET sealed_key = NULL \
             WHERE sealed_key IS NOT NULL AND created_at < $1",
        )
        .bind(cutoff.unix_millis())
        .execute(&mut *conn)
        .await
        .map_err(|e| self.fail(doing, e))?;
        sqlx::query(
            "INSERT INTO idempotency_keys \
             (key, request_hash, status, response, created_at, sealed_key) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(record.key.as_str())
        .bind(record.request_hash.as_str())
        .bind(i64::from(record.status))
        .bind(record.response.as_str())
        .bind(record.created_at.unix_millis())
        .bind(record.sealed_key.as_deref())
        .execute(&mut *conn)
        .await
        .map_err(|e| match violation(&e) {
            Some(Violation::Unique(_)) => StoreError::IdempotencyKeyUsed,
            _ => self.fail(doing, e),
        })?;
        Ok(())
    }

    pub(super) async fn idempotency_find(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT key, request_hash, status, response, created_at, sealed_key \
             FROM idempotency_keys WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail("reading an idempotency key", e))?;
        row.as_ref()
            .map(|row| idempotency_from_row(row, key))
            .transpose()
    }
}
