//! Webhook endpoints, deliveries, attempts and the sender's cursor on PostgreSQL.
//!
//! Invariants:
//! - The append-only `events` table is only read here; delivery state lives in its own tables.
//! - Each event is enqueued once: [`PostgresStore::webhook_enqueue`] moves the cursor only from
//!   the position the caller read, in the transaction that adds the deliveries (a second sender
//!   that read the same position gets `Conflict` and nothing is added twice).
//! - An attempt and the delivery's new state are written together.
//! - Secrets arrive sealed (the server's master key); no column holds one in the clear.

use keyroll_core::Timestamp;

use super::PostgresStore;
use super::decode::{
    webhook_attempt_from_row, webhook_delivery_from_row, webhook_endpoint_from_row,
};
use super::errors::{Violation, violation};
use crate::rows::{events_json, ms};
use crate::{
    AuditRecord, DeliveryQuery, EventRecord, StoreError, WebhookAttempt, WebhookDelivery,
    WebhookEndpoint,
};

const ENDPOINT_COLUMNS: &str = "id, url, events, description, sealed_secret, \
     sealed_previous_secret, previous_secret_until, created_at, disabled_at, disabled_reason";
const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_seq, msg_id, state, attempts, \
     next_attempt_at, last_status, last_error, created_at, delivered_at";

impl PostgresStore {
    pub(super) async fn webhook_endpoint_create(
        &self,
        e: &WebhookEndpoint,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let doing = format!("registering webhook endpoint {}", e.id);
        let mut tx = self.begin_write(&doing).await?;
        sqlx::query(&format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(e.id.as_str())
        .bind(e.url.as_str())
        .bind(events_json(&e.events))
        .bind(e.description.as_deref())
        .bind(e.sealed_secret.as_slice())
        .bind(e.previous_secret.as_ref().map(|(s, _)| s.as_slice()))
        .bind(e.previous_secret.as_ref().map(|(_, t)| t.unix_millis()))
        .bind(e.created_at.unix_millis())
        .bind(e.disabled.as_ref().map(|(t, _)| t.unix_millis()))
        .bind(e.disabled.as_ref().map(|(_, r)| r.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(|err| match violation(&err) {
            Some(Violation::Unique(_)) => {
                StoreError::AlreadyExists(format!("webhook endpoint {}", e.id))
            }
            _ => self.fail(&doing, err),
        })?;
        self.append_audit(&mut tx, std::slice::from_ref(audit), &doing)
            .await?;
        self.commit_write(tx, &doing).await
    }

    pub(super) async fn webhook_endpoint_get(
        &self,
        id: &str,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.fail(&format!("reading webhook endpoint {id}"), e))?;
        row.as_ref().map(webhook_endpoint_from_row).transpose()
    }

    pub(super) async fn webhook_endpoint_list(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id COLLATE \"C\""
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("listing webhook endpoints", e))?;
        rows.iter().map(webhook_endpoint_from_row).collect()
    }

    pub(super) async fn webhook_endpoint_update(
        &self,
        e: &WebhookEndpoint,
        audit: &[AuditRecord],
        events: &[EventRecord],
    ) -> Result<(), StoreError> {
        let doing = format!("updating webhook endpoint {}", e.id);
        let mut tx = self.begin_write(&doing).await?;
        let updated = sqlx::query(
            "UPDATE webhook_endpoints SET sealed_secret = $2, sealed_previous_secret = $3, \
             previous_secret_until = $4, disabled_at = $5, disabled_reason = $6 WHERE id = $1",
        )
        .bind(e.id.as_str())
        .bind(e.sealed_secret.as_slice())
        .bind(e.previous_secret.as_ref().map(|(s, _)| s.as_slice()))
        .bind(e.previous_secret.as_ref().map(|(_, t)| t.unix_millis()))
        .bind(e.disabled.as_ref().map(|(t, _)| t.unix_millis()))
        .bind(e.disabled.as_ref().map(|(_, r)| r.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(|err| self.fail(&doing, err))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("webhook endpoint {}", e.id)));
        }
        self.append_audit(&mut tx, audit, &doing).await?;
        self.append_events(&mut tx, events, &doing).await?;
        self.commit_write(tx, &doing).await
    }

    pub(super) async fn webhook_endpoint_delete(
        &self,
        id: &str,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let doing = format!("removing webhook endpoint {id}");
        let mut tx = self.begin_write(&doing).await?;
        let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|err| self.fail(&doing, err))?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("webhook endpoint {id}")));
        }
        self.append_audit(&mut tx, std::slice::from_ref(audit), &doing)
            .await?;
        self.commit_write(tx, &doing).await
    }

    pub(super) async fn webhook_cursor_get(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT last_seq FROM webhook_cursor WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.fail("reading the webhook cursor", e))
            .map(|v| v.unwrap_or(0))
    }

    pub(super) async fn webhook_enqueue(
        &self,
        from: i64,
        to: i64,
        deliveries: &[WebhookDelivery],
    ) -> Result<(), StoreError> {
        let doing = "enqueueing webhook deliveries";
        let mut tx = self.begin_write(doing).await?;
        let moved = sqlx::query(
            "INSERT INTO webhook_cursor (id, last_seq) VALUES (1, $2) \
             ON CONFLICT (id) DO UPDATE SET last_seq = $2 WHERE webhook_cursor.last_seq = $1",
        )
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        if moved.rows_affected() == 0 {
            return Err(StoreError::Conflict("the webhook cursor".into()));
        }
        for d in deliveries {
            sqlx::query(&format!(
                "INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (endpoint_id, event_seq) DO NOTHING"
            ))
            .bind(d.id.as_str())
            .bind(d.endpoint_id.as_str())
            .bind(d.event_seq)
            .bind(d.msg_id.as_str())
            .bind(d.state.as_str())
            .bind(i64::from(d.attempts))
            .bind(ms(d.next_attempt_at))
            .bind(d.last_status.map(i64::from))
            .bind(d.last_error.as_deref())
            .bind(d.created_at.unix_millis())
            .bind(ms(d.delivered_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| match violation(&e) {
                Some(Violation::ForeignKey) => {
                    StoreError::NotFound(format!("webhook endpoint {}", d.endpoint_id))
                }
                _ => self.fail(doing, e),
            })?;
        }
        self.commit_write(tx, doing).await
    }

    pub(super) async fn webhook_due(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, event_seq LIMIT $2"
        ))
        .bind(now.unix_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("reading due webhook deliveries", e))?;
        rows.iter().map(webhook_delivery_from_row).collect()
    }

    pub(super) async fn webhook_record_attempt(
        &self,
        d: &WebhookDelivery,
        attempt: Option<&WebhookAttempt>,
    ) -> Result<(), StoreError> {
        let doing = format!("recording an attempt of webhook delivery {}", d.id);
        let mut tx = self.begin_write(&doing).await?;
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET state = $2, attempts = $3, next_attempt_at = $4, \
             last_status = $5, last_error = $6, delivered_at = $7 WHERE id = $1",
        )
        .bind(d.id.as_str())
        .bind(d.state.as_str())
        .bind(i64::from(d.attempts))
        .bind(ms(d.next_attempt_at))
        .bind(d.last_status.map(i64::from))
        .bind(d.last_error.as_deref())
        .bind(ms(d.delivered_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(&doing, e))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("webhook delivery {}", d.id)));
        }
        if let Some(a) = attempt {
            sqlx::query(
                "INSERT INTO webhook_attempts \
                 (delivery_id, n, at, status, duration_ms, error, retry_after_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(a.delivery_id.as_str())
            .bind(i64::from(a.n))
            .bind(a.at.unix_millis())
            .bind(a.status.map(i64::from))
            .bind(i64::try_from(a.duration_ms).unwrap_or(i64::MAX))
            .bind(a.error.as_deref())
            .bind(
                a.retry_after_ms
                    .map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
            )
            .execute(&mut *tx)
            .await
            .map_err(|e| match violation(&e) {
                Some(Violation::Unique(_)) => StoreError::Conflict(format!(
                    "attempt {} of webhook delivery {}",
                    a.n, a.delivery_id
                )),
                _ => self.fail(&doing, e),
            })?;
        }
        self.commit_write(tx, &doing).await
    }

    pub(super) async fn webhook_delivery_list(
        &self,
        q: &DeliveryQuery,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE ($1::text IS NULL OR endpoint_id = $1) AND ($2::text IS NULL OR state = $2) \
             ORDER BY created_at DESC, event_seq DESC, id COLLATE \"C\" LIMIT $3"
        ))
        .bind(q.endpoint_id.as_deref())
        .bind(q.state.map(|s| s.as_str()))
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.fail("listing webhook deliveries", e))?;
        rows.iter().map(webhook_delivery_from_row).collect()
    }

    pub(super) async fn webhook_delivery_get(
        &self,
        id: &str,
    ) -> Result<Option<(WebhookDelivery, Vec<WebhookAttempt>)>, StoreError> {
        let doing = format!("reading webhook delivery {id}");
        let mut tx = self.begin_read(&doing).await?;
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.fail(&doing, e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let delivery = webhook_delivery_from_row(&row)?;
        let attempts = sqlx::query(
            "SELECT delivery_id, n, at, status, duration_ms, error, retry_after_ms \
             FROM webhook_attempts WHERE delivery_id = $1 ORDER BY n",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.fail(&doing, e))?;
        let attempts = attempts
            .iter()
            .map(webhook_attempt_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.commit(tx, &doing).await?;
        Ok(Some((delivery, attempts)))
    }
}
