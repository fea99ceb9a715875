//! Admin-token changes through the service layer: create, revoke, rotate with an overlap. Each is
//! one store transaction with its audit entries, then its log line. The HTTP layer checks who
//! may do what (scopes, escalation) and renders; the rules of the tokens themselves live in
//! `admin_token`.

use std::time::Duration;

use keyroll_core::{Timestamp, rfc3339};
use keyroll_store::{AdminGuard, AdminTokenEntry, TokenRevocation};
use serde_json::json;

use super::{Actor, ServiceError};
use crate::admin_token::{self, NewToken};
use crate::state::AppState;

fn target(id: &str) -> String {
    format!("admin token {id}")
}

fn new_entry(
    state: &AppState,
    new: &NewToken<'_>,
    at: Timestamp,
) -> Result<(String, AdminTokenEntry), ServiceError> {
    admin_token::generate_entry(new, at, &mut state.randomness.entropy())
        .map_err(|e| ServiceError::EntropyUnavailable(e.to_string()))
}

/// Creates a token named `name` with `scopes` (sorted, deduplicated): the plaintext (shown
/// once) and its entry.
pub async fn create(
    state: &AppState,
    actor: &Actor,
    name: &str,
    scopes: &[String],
    expires_at: Option<Timestamp>,
) -> Result<(String, AdminTokenEntry), ServiceError> {
    let at = state.clock.now();
    let new = NewToken {
        name,
        scopes,
        created_by: &actor.id,
        expires_at,
    };
    let (plaintext, entry) = new_entry(state, &new, at)?;
    let id = entry.token.id.clone();
    let record = actor.audit(
        at,
        "admin_token.created",
        target(&id),
        &json!({ "name": name, "scopes": scopes, "expires_at": expires_at.map(rfc3339) }),
    );
    state
        .store
        .create_admin_token_entry(&entry, &record)
        .await?;
    tracing::info!(
        event = "admin_token.created",
        token_id = id.as_str(),
        actor = actor.id.as_str(),
        request_id = actor.request_id.as_str(),
        scopes = scopes.join(" ").as_str(),
        "admin token {id} created"
    );
    Ok((plaintext, entry))
}

/// Revokes `target`; without `force` the last working `admin` token is kept.
pub async fn revoke(
    state: &AppState,
    actor: &Actor,
    token: &AdminTokenEntry,
    reason: &str,
    force: bool,
) -> Result<TokenRevocation, ServiceError> {
    let at = state.clock.now();
    let id = token.token.id.as_str();
    let guard = if force {
        AdminGuard::Override
    } else {
        AdminGuard::KeepOne
    };
    let record = actor.audit(
        at,
        "admin_token.revoked",
        target(id),
        &json!({ "reason": reason, "forced": force, "name": token.token.name }),
    );
    let outcome = state
        .store
        .revoke_admin_token(id, at, reason, guard, &record)
        .await?;
    if let TokenRevocation::Revoked(_) = outcome {
        tracing::warn!(
            event = "admin_token.revoked",
            token_id = id,
            actor = actor.id.as_str(),
            request_id = actor.request_id.as_str(),
            reason,
            forced = force,
            "admin token {id} revoked"
        );
    }
    Ok(outcome)
}

/// Replaces `old` by a new token with the same name and scopes, living as long as `old` was
/// meant to; `old` keeps working for `overlap`. Returns the plaintext, the new entry and the
/// old one as it is now.
pub async fn rotate(
    state: &AppState,
    actor: &Actor,
    old: &AdminTokenEntry,
    overlap: Duration,
) -> Result<(String, AdminTokenEntry, AdminTokenEntry), ServiceError> {
    let at = state.clock.now();
    let id = old.token.id.as_str();
    let expires_at = old.expires_at.map(|e| {
        let lifetime = e
            .unix_millis()
            .saturating_sub(old.token.created_at.unix_millis());
        Timestamp::from_unix_millis(at.unix_millis().saturating_add(lifetime))
    });
    let new = NewToken {
        name: &old.token.name,
        scopes: &old.token.scopes,
        created_by: &actor.id,
        expires_at,
    };
    let (plaintext, entry) = new_entry(state, &new, at)?;
    let new_id = entry.token.id.clone();
    let retires_at = at.saturating_add(overlap);
    let records = [
        actor.audit(
            at,
            "admin_token.rotated",
            target(id),
            &json!({ "replaced_by": new_id, "overlap_ms": u64::try_from(overlap.as_millis()).unwrap_or(u64::MAX), "retires_at": rfc3339(retires_at) }),
        ),
        actor.audit(
            at,
            "admin_token.created",
            target(&new_id),
            &json!({ "name": old.token.name, "scopes": old.token.scopes, "expires_at": expires_at.map(rfc3339), "replaces": id }),
        ),
    ];
    let replaced = state
        .store
        .rotate_admin_token(id, retires_at, &entry, &records)
        .await?;
    tracing::info!(
        event = "admin_token.rotated",
        token_id = id,
        replaced_by = new_id.as_str(),
        actor = actor.id.as_str(),
        request_id = actor.request_id.as_str(),
        retires_at = replaced
            .retires_at
            .map(rfc3339)
            .unwrap_or_default()
            .as_str(),
        "admin token {id} rotated; {new_id} replaces it"
    );
    Ok((plaintext, entry, replaced))
}
