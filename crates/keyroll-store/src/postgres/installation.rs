//! The installation a PostgreSQL database belongs to: its id, recorded by the first start that asks,
//! whether anything an operator makes exists yet, and the check value of its master key.
//!
//! The `installation` table has one row at most (`only_row = 1`; `only` is a reserved word in
//! PostgreSQL). Recording it is one `INSERT … ON CONFLICT DO NOTHING`, and the read that follows
//! in the same transaction sees the row that won, so two nodes starting on a new database agree
//! on one id.

use super::PostgresStore;
use super::decode::installation_from_row;
use crate::rows::unix_millis_now;
use crate::{Installation, StoreError};

impl PostgresStore {
    /// The installation's id, recording `new_id` when the database has none yet.
    pub(super) async fn installation_get(&self, new_id: &str) -> Result<Installation, StoreError> {
        let doing = "reading the installation id";
        let mut tx = self.begin_write(doing).await?;
        sqlx::query(
            "INSERT INTO installation (only_row, id, created_at) VALUES (1, $1, $2) \
             ON CONFLICT (only_row) DO NOTHING",
        )
        .bind(new_id)
        .bind(unix_millis_now())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        let row = sqlx::query(
            "SELECT id, created_at, \
             NOT EXISTS (SELECT 1 FROM admin_tokens) AND NOT EXISTS (SELECT 1 FROM environments) \
             AND NOT EXISTS (SELECT 1 FROM consumers) AND NOT EXISTS (SELECT 1 FROM audit_log) \
             FROM installation",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        self.commit_write(tx, doing).await?;
        installation_from_row(&row)
    }

    /// The recorded master-key check value, recording `check` when there is none. Two nodes
    /// starting at once agree: the second's `UPDATE` waits for the first's row, then re-checks
    /// `IS NULL` on it and changes nothing, and its read sees the first's value.
    pub(super) async fn installation_master_key_check(
        &self,
        check: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let doing = "recording the master key's check value";
        let mut tx = self.begin_write(doing).await?;
        sqlx::query("UPDATE installation SET master_key_check = $1 WHERE master_key_check IS NULL")
            .bind(check)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(doing, e))?;
        let recorded: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT master_key_check FROM installation")
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.fail(doing, e))?;
        self.commit_write(tx, doing).await?;
        match recorded {
            Some(Some(v)) => Ok(v),
            _ => Err(StoreError::NotFound(
                "the installation record (read the installation first)".to_owned(),
            )),
        }
    }
}
