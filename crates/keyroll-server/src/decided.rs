//! A decision as everything after it sees it: the request's facts, built once by the edge that
//! received it ([`DecisionFacts`]), and the verification ([`DecisionRecord`]).
//!
//! Transport-neutral: nothing here is HTTP. The forward-auth and `/v1/verify` handlers build the
//! facts from a request (so would an mTLS verifier or a tower layer, from what they have), then
//! hand the record one way to the response, the log line, metrics, history and usage; none of
//! those reads a header or calls back into the edge. A leaf module: it imports only
//! [`crate::client_addr`], so every consumer of a decision can import it without a circle.
//!
//! Borrowed: building owned copies would cost more than the verification (this is the hot path);
//! the detail sentences are built later, only for rejections and enabled log lines.

use std::net::SocketAddr;

use keyroll_core::Timestamp;

use crate::client_addr::ClientAddr;
use keyroll_verify::verify::{Recording, Verification};

/// Which edge made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// `/v1/forward-auth[/…]`: a gateway asks about a request it holds.
    ForwardAuth,
    /// `POST /v1/verify`: an SDK asks about a key in a JSON body (no original request).
    VerifyApi,
}

impl Edge {
    /// The endpoint, as `(method, path)`, that the log line names when there is no original
    /// request (SPEC §5's `method` and `uri` fields): the request keyroll itself received.
    pub fn endpoint(self) -> Option<(&'static str, &'static str)> {
        match self {
            Edge::ForwardAuth => None,
            Edge::VerifyApi => Some(("POST", "/v1/verify")),
        }
    }
}

/// An environment name the request required, checked once against the core's grammar
/// ([`keyroll_core::Environment::is_valid`]) where it was read: consumers trust it as a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequiredEnvironment<'a>(&'a str);

impl<'a> RequiredEnvironment<'a> {
    /// `Some` when `name` is an environment name.
    pub fn new(name: &'a str) -> Option<RequiredEnvironment<'a>> {
        keyroll_core::Environment::is_valid(name).then_some(RequiredEnvironment(name))
    }

    /// An environment that is one by type (the configuration's, validated when it was loaded):
    /// no check again per request.
    pub fn of(environment: &'a keyroll_core::Environment) -> RequiredEnvironment<'a> {
        RequiredEnvironment(environment.as_str())
    }

    /// The name.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

/// The original request behind a decision, when the transport has one (a gateway's
/// subrequest names it; `/v1/verify` has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// Its method.
    pub method: &'a str,
    /// Its URI (path and query), as received: redacted where it is written.
    pub uri: &'a str,
}

/// What is known of the request a decision was made for, built once at the edge.
#[derive(Debug, Clone, Copy)]
pub struct DecisionFacts<'a> {
    /// The edge that decided.
    pub edge: Edge,
    /// The request id.
    pub request_id: &'a str,
    /// The TCP peer (the gateway, behind one).
    pub peer: Option<SocketAddr>,
    /// The client, after the trusted-proxy rule ([`crate::client_addr::client_addr`]).
    pub client: Option<ClientAddr>,
    /// The original request, when there is one and something reads it: only the decision's
    /// log line does, so an edge may leave it out when that line is not enabled.
    pub origin: Option<Origin<'a>>,
    /// The client's `User-Agent` (empty when absent).
    pub user_agent: &'a str,
    /// The client's `X-Client-Id`, if any.
    pub client_id: Option<&'a str>,
    /// The environment the request had to belong to, if any.
    pub required_environment: Option<RequiredEnvironment<'a>>,
    /// Whether an allowed decision counts as use.
    pub recording: Recording,
    /// When the decision was made.
    pub now: Timestamp,
    /// Time spent deciding, in microseconds (filled in once the verification is done).
    pub latency_us: u64,
}

impl<'a> DecisionFacts<'a> {
    /// The method and URI the log line names: the original request's, else the endpoint's.
    pub fn request_line(&self) -> Option<(&'a str, &'a str)> {
        match self.origin {
            Some(o) => Some((o.method, o.uri)),
            None => self.edge.endpoint(),
        }
    }
}

/// One decision: the facts and the verification, handed as one value to everything that follows
/// it.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRecord<'a> {
    /// The request's facts.
    pub facts: &'a DecisionFacts<'a>,
    /// The verification.
    pub verification: &'a Verification,
}

impl DecisionRecord<'_> {
    /// Whether usage recording counts this decision: allowed, and not an operator's check.
    pub fn counts_as_use(&self) -> bool {
        self.verification.code.allowed() && self.facts.recording == Recording::CountsAsUse
    }
}

/// Which edge made a certificate decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertEdge {
    /// The listener's TLS handshake (`[tls] client_auth`).
    TlsHandshake,
    /// `/v1/forward-auth-cert`: a proxy forwarded the certificate it verified.
    ForwardAuthCert,
}

impl CertEdge {
    /// The log field's and metric label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            CertEdge::TlsHandshake => "tls_handshake",
            CertEdge::ForwardAuthCert => "forward_auth_cert",
        }
    }
}

/// One certificate decision as everything after it sees it (log line, metrics), beside the key
/// [`DecisionRecord`]: the verifier's decision and what the edge knows of the connection.
#[derive(Debug, Clone, Copy)]
pub struct CertDecisionRecord<'a> {
    /// The verification.
    pub decision: &'a keyroll_ca::CertDecision,
    /// The edge that decided.
    pub edge: CertEdge,
    /// The TCP peer (the proxy, for a forwarded certificate).
    pub peer: Option<SocketAddr>,
    /// The client after the trusted-proxy rule: the TCP peer of a handshake, the address a
    /// trusted proxy forwarded for a forwarded certificate.
    pub client: Option<ClientAddr>,
    /// The request id (forward-auth; a handshake has none).
    pub request_id: Option<&'a str>,
    /// When.
    pub now: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_environments_follow_the_core_grammar() {
        assert_eq!(
            RequiredEnvironment::new("prod").map(|e| e.as_str()),
            Some("prod")
        );
        assert!(RequiredEnvironment::new("Prod").is_none());
        assert!(RequiredEnvironment::new("prod-eu").is_none());
        assert!(RequiredEnvironment::new("").is_none());
    }

    fn facts(edge: Edge, origin: Option<Origin<'static>>) -> DecisionFacts<'static> {
        DecisionFacts {
            edge,
            request_id: "rq_1",
            peer: None,
            client: None,
            origin,
            user_agent: "",
            client_id: None,
            required_environment: None,
            recording: Recording::CountsAsUse,
            now: Timestamp::EPOCH,
            latency_us: 0,
        }
    }

    #[test]
    fn the_log_names_the_origin_else_the_endpoint() {
        let o = Origin {
            method: "PUT",
            uri: "/x",
        };
        assert_eq!(
            facts(Edge::ForwardAuth, Some(o)).request_line(),
            Some(("PUT", "/x"))
        );
        assert_eq!(facts(Edge::ForwardAuth, None).request_line(), None);
        assert_eq!(
            facts(Edge::VerifyApi, None).request_line(),
            Some(("POST", "/v1/verify"))
        );
    }
}
