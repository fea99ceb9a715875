//! What happens after every decision, whichever endpoint made it: the observer (log line with
//! flood collapsing, metrics, decision history) and, for allowed keys, usage recording.
//!
//! One call site for `/v1/forward-auth` and `/v1/verify`, so the two can never drift apart.

use std::net::SocketAddr;

use axum::http::{HeaderMap, Method, Uri};
use keyroll_core::Timestamp;

use crate::client_addr::ClientAddr;
use crate::state::AppState;
use keyroll_verify::verify::{Recording, Verification};

/// The request a decision was made for. Borrowed: building owned copies costs more than the
/// verification, so consumers take only what they need, when they need it.
#[derive(Debug, Clone, Copy)]
pub struct DecisionContext<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The TCP peer.
    pub peer: Option<SocketAddr>,
    /// The client, after the trusted-proxy rule ([`crate::client_addr::client_addr`]), computed once at the edge.
    pub client: Option<ClientAddr>,
    /// The environment the request had to belong to, if any (already validated).
    pub required_environment: Option<&'a str>,
    /// Whether an allowed decision counts as use.
    pub recording: Recording,
    /// The method of the request keyroll received.
    pub method: &'a Method,
    /// The URI keyroll received.
    pub uri: &'a Uri,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// Time spent deciding, in microseconds.
    pub latency_us: u64,
    /// When the decision was made.
    pub now: Timestamp,
}

/// The original request behind a forward-auth subrequest, as far as the gateway says.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The original method (`X-Forwarded-Method`, `X-Original-Method`, else ours).
    pub method: &'a str,
    /// The original URI (`X-Forwarded-Uri`, `X-Original-URI`, else the path below the endpoint).
    pub uri: String,
    /// The client's `User-Agent`.
    pub user_agent: &'a str,
}

impl<'a> DecisionContext<'a> {
    /// A header as text, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The original request's method, URI and user agent.
    pub fn origin(&self) -> Origin<'a> {
        let method = self
            .header("x-forwarded-method")
            .or_else(|| self.header("x-original-method"))
            .unwrap_or(self.method.as_str());
        let uri = match self
            .header("x-forwarded-uri")
            .or_else(|| self.header("x-original-uri"))
        {
            Some(u) => u.to_owned(),
            None => {
                let path = self.uri.path();
                match path.strip_prefix("/v1/forward-auth") {
                    Some("") => "/".to_owned(),
                    Some(rest) => rest.to_owned(),
                    None => path.to_owned(),
                }
            }
        };
        Origin {
            method,
            uri,
            user_agent: self.header("user-agent").unwrap_or(""),
        }
    }
}

/// Runs everything that follows a decision.
#[inline]
pub fn after(state: &AppState, v: &Verification, ctx: &DecisionContext<'_>) {
    state
        .observer
        .decision(v, ctx, state.config.log_allowed_at_info);
    if v.code.allowed() && ctx.recording == Recording::CountsAsUse {
        state.usage.record(v, ctx);
    }
}
