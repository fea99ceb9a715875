//! `GET /v1/audit`: the audit log with its hash chain (SPEC §8), oldest first, filtered and
//! paged, with the head of the whole chain. The server only reads what the store linked;
//! `keyroll audit verify` recomputes every link itself rather than trust this answer.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use keyroll_core::audit_chain::{ChainHash, GENESIS};
use keyroll_core::{Timestamp, parse_duration, parse_rfc3339, rfc3339};
use keyroll_proto as proto;
use keyroll_store::{AuditQuery, ChainedAudit};

use crate::http::ApiError;
use crate::http::auth::Admin;
use crate::state::AppState;

/// The most entries one page holds.
pub const MAX_LIMIT: u32 = 1000;
/// A page's size when `limit` is not given.
const DEFAULT_LIMIT: u32 = 100;

/// `GET /v1/audit?since=&target=&actor=&after=&limit=`.
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(
        ("since" = Option<String>, Query, description = "only entries within this DURATION (10m, 1h) or at or after this RFC 3339 time"),
        ("target" = Option<String>, Query, description = "only entries on this target; ENV/NAME also matches its versions (`ENV/NAME v2`)"),
        ("actor" = Option<String>, Query, description = "only entries by this actor (an admin token id, `sweeper`, `scheduler`, `system`)"),
        ("after" = Option<i64>, Query, description = "only entries after this position (paging)"),
        ("limit" = Option<u32>, Query, description = "at most this many (default 100)"),
    ),
    responses((status = 200, body = proto::AuditPage)),
    security(("admin_token" = ["audit:read"])))]
pub async fn audit(
    State(state): State<Arc<AppState>>,
    admin: Admin,
    uri: Uri,
) -> Result<Json<proto::AuditPage>, ApiError> {
    admin.require("audit:read")?;
    let query = parse_query(uri.query(), state.clock.now())?;
    let items = state
        .store
        .query_audit(&query)
        .await?
        .iter()
        .map(entry)
        .collect();
    // The head of the whole log, whatever the filters: its newest entry.
    let newest = state.store.list_audit(1).await?;
    let head = match newest.first() {
        None => None,
        Some(last) => state
            .store
            .query_audit(&AuditQuery {
                after_seq: Some(last.seq - 1),
                limit: 1,
                ..AuditQuery::default()
            })
            .await?
            .into_iter()
            .next(),
    };
    Ok(Json(proto::AuditPage {
        items,
        head: head
            .as_ref()
            .map_or(GENESIS, |h| h.hash.unwrap_or(GENESIS))
            .to_string(),
        head_seq: head.map(|h| h.entry.seq),
    }))
}

fn hex(h: Option<ChainHash>) -> Option<String> {
    h.map(|h| h.to_string())
}

fn entry(c: &ChainedAudit) -> proto::AuditEntry {
    let e = &c.entry;
    proto::AuditEntry {
        seq: e.seq,
        at: rfc3339(e.at),
        at_unix_ms: e.at.unix_millis(),
        actor: e.actor.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        detail: e.detail.clone(),
        request_id: e.request_id.clone(),
        remote_addr: e.remote_addr.clone(),
        prev_hash: hex(c.prev_hash),
        hash: hex(c.hash),
    }
}

/// The query string as a store query; `since` is a duration before `now` or an RFC 3339 time.
fn parse_query(query: Option<&str>, now: Timestamp) -> Result<AuditQuery, ApiError> {
    let mut q = AuditQuery {
        limit: DEFAULT_LIMIT,
        ..AuditQuery::default()
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "since" => {
                let since = match parse_rfc3339(&v) {
                    Some(t) => t,
                    None => now.saturating_sub(parse_duration(&v).map_err(|e| {
                        ApiError::bad_request(format!(
                            "since {v:?}: neither an RFC 3339 time nor a duration ({e})"
                        ))
                    })?),
                };
                q.since = Some(since);
            }
            "target" => q.target = Some(v.into_owned()),
            "actor" => q.actor = Some(v.into_owned()),
            "after" => {
                q.after_seq = Some(v.parse().map_err(|_| {
                    ApiError::bad_request(format!("after {v:?}: not a sequence number"))
                })?)
            }
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit {v:?}: expected a number from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; expected since, target, actor, after or limit"
                )));
            }
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let now = Timestamp::from_unix_millis(10_000_000);
        let q = parse_query(
            Some("since=1h&target=prod%2Fapp&actor=sweeper&after=7&limit=5"),
            now,
        )
        .unwrap();
        assert_eq!(
            q.since,
            Some(Timestamp::from_unix_millis(10_000_000 - 3_600_000))
        );
        assert_eq!(q.target.as_deref(), Some("prod/app"));
        assert_eq!(q.actor.as_deref(), Some("sweeper"));
        assert_eq!((q.after_seq, q.limit), (Some(7), 5));
        let q = parse_query(Some("since=1970-01-01T00:00:01Z"), now).unwrap();
        assert_eq!(q.since, Some(Timestamp::from_unix_millis(1_000)));
        assert_eq!(parse_query(None, now).unwrap().limit, DEFAULT_LIMIT);
        for bad in ["since=soon", "after=x", "limit=0", "limit=1001", "page=2"] {
            assert!(parse_query(Some(bad), now).is_err(), "{bad}");
        }
    }
}
