//! Admin tokens with their lifecycle on PostgreSQL: create with expiry, list, revoke (keeping one
//! working `admin` token unless told otherwise), rotate with an overlap window; and the first
//! calls, from before tokens had a lifecycle (`create_admin_token`, `find_admin_token`,
//! `count_admin_tokens`), on the same table.
//!
//! A token's validity is decided by the server from the stored times (`expires_at`,
//! `revoked_at`, `retires_at`), as a key version's is: nothing has to run when a time passes.
//!
//! Invariants:
//! - No column holds a secret: a token is stored as its public id and the SHA-256 of its
//!   secret.
//! - Each change and its audit entries are one transaction; a revocation counts the other valid
//!   `admin` tokens inside it, after taking the tokens' advisory lock ([`TOKENS_LOCK`]), so two
//!   revocations (on two nodes, say) cannot both pass the last-admin check; rotations take it
//!   too, so a token is replaced once.

use keyroll_core::Timestamp;

use super::decode::{admin_token_entry_from_row, admin_token_from_row};
use super::errors::{Violation, violation};
use super::{PostgresStore, TOKENS_LOCK, lock};
use crate::rows;
use crate::{
    AdminGuard, AdminTokenEntry, AdminTokenRecord, AuditRecord, StoreError, TokenRevocation,
};

/// A token with its lifecycle, in the order [`admin_token_entry_from_row`] reads it.
const COLUMNS: &str = "id, secret_hash, name, scopes, created_at, created_by, expires_at, \
                       revoked_at, revoke_reason, replaced_by, retires_at";

/// Other tokens that would still grant `admin` at `$2` if `$1` were revoked: not revoked, not
/// expired, not on their way out after a rotation.
const OTHER_VALID_ADMINS: &str = "SELECT count(*) FROM admin_tokens \
     WHERE id <> $1 AND revoked_at IS NULL AND replaced_by IS NULL \
     AND (expires_at IS NULL OR expires_at > $2) \
     AND (' ' || scopes || ' ') LIKE '% admin %'";

impl PostgresStore {
    /// Adds a token without its lifecycle fields (they stay NULL), with its audit entry.
    pub(super) async fn token_create_record(
        &self,
        token: &AdminTokenRecord,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let scopes = rows::join_admin_scopes(&token.id, &token.scopes)?;
        let doing = format!("creating admin token {}", token.id);
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query(
            "INSERT INTO admin_tokens (id, secret_hash, name, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token.id.as_str())
        .bind(token.secret_hash.0.as_slice())
        .bind(token.name.as_str())
        .bind(scopes)
        .bind(token.created_at.unix_millis())
        .execute(&mut *tx)
        .await
        .map_err(|e| match violation(&e) {
            Some(Violation::Unique(_)) => {
                StoreError::AlreadyExists(format!("admin token {}", token.id))
            }
            _ => self.fail(&doing, e),
        })?;
        self.append_audit(&mut tx, std::slice::from_ref(audit), &doing)
            .await?;
        self.commit_write(tx, &doing).await
    }

    pub(super) async fn token_find_record(
        &self,
        id: &str,
    ) -> Result<Option<AdminTokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, secret_hash, name, scopes, created_at FROM admin_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail("reading an admin token", e))?;
        row.as_ref()
            .map(|row| admin_token_from_row(row, id))
            .transpose()
    }

    pub(super) async fn token_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM admin_tokens")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.fail("counting admin tokens", e))?;
        rows::count(n, &|| "admin_tokens".to_owned())
    }

    async fn insert_token(
        &self,
        conn: &mut sqlx::PgConnection,
        t: &AdminTokenEntry,
        doing: &str,
    ) -> Result<(), StoreError> {
        let scopes = rows::join_admin_scopes(&t.token.id, &t.token.scopes)?;
        sqlx::query(
            "INSERT INTO admin_tokens (id, secret_hash, name, scopes, created_at, created_by, \
             expires_at, revoked_at, revoke_reason, replaced_by, retires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(t.token.id.as_str())
        .bind(t.token.secret_hash.0.as_slice())
        .bind(t.token.name.as_str())
        .bind(scopes)
        .bind(t.token.created_at.unix_millis())
        .bind(t.created_by.as_deref())
        .bind(t.expires_at.map(Timestamp::unix_millis))
        .bind(t.revoked_at.map(Timestamp::unix_millis))
        .bind(t.revoke_reason.as_deref())
        .bind(t.replaced_by.as_deref())
        .bind(t.retires_at.map(Timestamp::unix_millis))
        .execute(&mut *conn)
        .await
        .map_err(|e| match violation(&e) {
            Some(Violation::Unique(_)) => {
                StoreError::AlreadyExists(format!("admin token {}", t.token.id))
            }
            _ => self.fail(doing, e),
        })?;
        Ok(())
    }

    async fn select_token(
        &self,
        conn: &mut sqlx::PgConnection,
        id: &str,
        doing: &str,
    ) -> Result<Option<AdminTokenEntry>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM admin_tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.fail(doing, e))?;
        row.as_ref().map(admin_token_entry_from_row).transpose()
    }

    pub(super) async fn token_create(
        &self,
        token: &AdminTokenEntry,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let doing = format!("creating admin token {}", token.token.id);
        let mut tx = self.begin_write(&doing).await?;
        self.insert_token(&mut tx, token, &doing).await?;
        self.append_audit(&mut tx, std::slice::from_ref(audit), &doing)
            .await?;
        self.commit(tx, &doing).await
    }

    pub(super) async fn token_get(&self, id: &str) -> Result<Option<AdminTokenEntry>, StoreError> {
        let doing = "reading an admin token";
        let mut conn = self.pool.acquire().await.map_err(|e| self.fail(doing, e))?;
        self.select_token(&mut conn, id, doing).await
    }

    pub(super) async fn token_list(&self) -> Result<Vec<AdminTokenEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM admin_tokens ORDER BY created_at, id COLLATE \"C\""
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("listing admin tokens", e))?;
        rows.iter().map(admin_token_entry_from_row).collect()
    }

    pub(super) async fn token_revoke(
        &self,
        id: &str,
        at: Timestamp,
        reason: &str,
        guard: AdminGuard,
        audit: &AuditRecord,
    ) -> Result<TokenRevocation, StoreError> {
        let doing = format!("revoking admin token {id}");
        // The lock is taken first, so the last-admin count cannot race another revoke.
        let mut tx = self.begin_write(&doing).await?;
        lock(&mut tx, TOKENS_LOCK)
            .await
            .map_err(|e| self.fail(&doing, e))?;
        let Some(current) = self.select_token(&mut tx, id, &doing).await? else {
            return Err(StoreError::NotFound(format!("admin token {id}")));
        };
        if current.revoked_at.is_some() {
            self.commit(tx, &doing).await?;
            return Ok(TokenRevocation::AlreadyRevoked(current));
        }
        if guard == AdminGuard::KeepOne && current.token.scopes.iter().any(|s| s == "admin") {
            let others: i64 = sqlx::query_scalar(OTHER_VALID_ADMINS)
                .bind(id)
                .bind(at.unix_millis())
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.fail(&doing, e))?;
            if others == 0 {
                self.commit(tx, &doing).await?;
                return Ok(TokenRevocation::LastAdmin);
            }
        }
        sqlx::query(
            "UPDATE admin_tokens SET revoked_at = $2, revoke_reason = $3 \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(at.unix_millis())
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(&doing, e))?;
        self.append_audit(&mut tx, std::slice::from_ref(audit), &doing)
            .await?;
        let revoked = self
            .select_token(&mut tx, id, &doing)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("admin token {id}")))?;
        self.commit(tx, &doing).await?;
        Ok(TokenRevocation::Revoked(revoked))
    }

    pub(super) async fn token_rotate(
        &self,
        old_id: &str,
        retires_at: Timestamp,
        new: &AdminTokenEntry,
        audit: &[AuditRecord],
    ) -> Result<AdminTokenEntry, StoreError> {
        let doing = format!("rotating admin token {old_id}");
        let mut tx = self.begin_write(&doing).await?;
        lock(&mut tx, TOKENS_LOCK)
            .await
            .map_err(|e| self.fail(&doing, e))?;
        let Some(current) = self.select_token(&mut tx, old_id, &doing).await? else {
            return Err(StoreError::NotFound(format!("admin token {old_id}")));
        };
        if current.revoked_at.is_some() || current.replaced_by.is_some() {
            self.commit(tx, &doing).await?;
            return Err(StoreError::Conflict(format!("admin token {old_id}")));
        }
        self.insert_token(&mut tx, new, &doing).await?;
        // An overlap never lengthens a token's life.
        let retires_at = match current.expires_at {
            Some(e) if e < retires_at => e,
            _ => retires_at,
        };
        sqlx::query(
            "UPDATE admin_tokens SET replaced_by = $2, retires_at = $3 \
             WHERE id = $1 AND revoked_at IS NULL AND replaced_by IS NULL",
        )
        .bind(old_id)
        .bind(new.token.id.as_str())
        .bind(retires_at.unix_millis())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(&doing, e))?;
        self.append_audit(&mut tx, audit, &doing).await?;
        let rotated = self
            .select_token(&mut tx, old_id, &doing)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("admin token {old_id}")))?;
        self.commit(tx, &doing).await?;
        Ok(rotated)
    }
}
