//! The last certificate decisions in memory (handshakes and forwarded certificates), beside the
//! key decisions of [`super::history`], so `/v1/decisions` answers "what happened to this
//! certificate" as it does for a key.
//!
//! Kept apart from the key history on purpose: key entries are fixed-size and recorded without
//! allocation on the hot path, which a certificate's facts (identity, issuer, detail) would not
//! fit. Certificate decisions are far rarer (one per handshake, not per request), so two plain
//! rings under a lock each are enough. Rejections keep most of the room, as for keys.

use std::collections::VecDeque;
use std::net::SocketAddr;

use keyroll_ca::{AnchorId, CertCode, Fingerprint, Serial, SpiffeId};
use keyroll_core::Timestamp;
use parking_lot::Mutex;

use super::history::{REJECTED_SHARE, monotonic_ns};
use crate::client_addr::ClientAddr;
use crate::decided::{CertDecisionRecord, CertEdge};

/// One remembered certificate decision.
#[derive(Debug, Clone)]
pub struct CertEntry {
    /// Order of recording, on the same clock as key entries (so both merge newest first).
    pub seq: u64,
    /// When, unix milliseconds.
    pub ts_ms: i64,
    /// The code.
    pub code: CertCode,
    /// Where it was decided.
    pub edge: CertEdge,
    /// The verifier's sentence.
    pub detail: Box<str>,
    /// The leaf's serial, when it parsed.
    pub serial: Option<Serial>,
    /// The leaf's URI SAN (the SPIFFE id, or whatever URI it had).
    pub identity: Option<Box<str>>,
    /// The leaf's issuer.
    pub issuer: Option<Box<str>>,
    /// The leaf's notAfter.
    pub not_after: Option<Timestamp>,
    /// The anchor the chain ended at.
    pub anchor: Option<AnchorId>,
    /// SHA-256 of what was presented.
    pub fingerprint: Option<Fingerprint>,
    /// The request id (forward-auth; a handshake has none).
    pub request_id: Option<Box<str>>,
    /// The client after the trusted-proxy rule.
    pub remote_addr: Option<ClientAddr>,
    /// The TCP peer (the proxy, for a forwarded certificate).
    pub peer: Option<SocketAddr>,
}

impl CertEntry {
    /// `ENV/SERVICE` when the identity is a SPIFFE id.
    pub fn identity_path(&self) -> Option<String> {
        self.identity
            .as_deref()
            .and_then(|i| SpiffeId::parse(i).ok())
            .map(|id| id.path())
    }
}

/// What to look for among certificate decisions. Every given criterion must match.
#[derive(Debug, Clone, Default)]
pub struct CertQuery {
    /// Any of these codes (none: any).
    pub codes: Vec<CertCode>,
    /// This identity: `ENV/SERVICE`, or the whole `spiffe://…` URI.
    pub identity: Option<String>,
    /// This serial, lowercase hex (as written; a serial no certificate has matches nothing).
    pub serial: Option<String>,
    /// At or after this time, unix milliseconds.
    pub since_ms: Option<i64>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl CertQuery {
    fn matches(&self, e: &CertEntry) -> bool {
        self.since_ms.is_none_or(|t| e.ts_ms >= t)
            && (self.codes.is_empty() || self.codes.contains(&e.code))
            && self
                .serial
                .as_deref()
                .is_none_or(|s| e.serial.is_some_and(|have| have.to_string() == s))
            && self.identity.as_deref().is_none_or(|want| {
                e.identity.as_deref() == Some(want) || e.identity_path().as_deref() == Some(want)
            })
    }
}

#[derive(Debug)]
struct Ring {
    entries: Mutex<VecDeque<CertEntry>>,
    cap: usize,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        // Not reserved up front: most servers never see a certificate.
        Ring {
            entries: Mutex::new(VecDeque::new()),
            cap,
        }
    }

    fn push(&self, e: CertEntry) {
        if self.cap == 0 {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.len() == self.cap {
            entries.pop_front();
        }
        entries.push_back(e);
    }

    fn collect(&self, q: &CertQuery, out: &mut Vec<CertEntry>) {
        out.extend(self.entries.lock().iter().filter(|e| q.matches(e)).cloned());
    }
}

/// The certificate decision history.
#[derive(Debug)]
pub struct CertHistory {
    rejected: Ring,
    allowed: Ring,
}

/// The answer to a [`CertQuery`].
#[derive(Debug, Clone, Default)]
pub struct CertFound {
    /// Matching entries, newest first, at most `limit`.
    pub entries: Vec<CertEntry>,
    /// How many matched in all.
    pub matched: usize,
}

impl CertHistory {
    /// A history of `size` decisions, [`REJECTED_SHARE`] percent of them for rejections.
    pub fn new(size: usize) -> CertHistory {
        let rejected = size.saturating_mul(REJECTED_SHARE) / 100;
        CertHistory {
            rejected: Ring::new(rejected),
            allowed: Ring::new(size - rejected),
        }
    }

    /// How many rejections and accepted certificates it keeps at most.
    pub fn capacity(&self) -> (usize, usize) {
        (self.rejected.cap, self.allowed.cap)
    }

    /// Remembers one decision.
    pub fn record(&self, r: &CertDecisionRecord<'_>) {
        let d = r.decision;
        let e = CertEntry {
            seq: monotonic_ns(),
            ts_ms: r.now.unix_millis(),
            code: d.code,
            edge: r.edge,
            detail: d.detail.as_str().into(),
            serial: d.serial,
            identity: d.identity.as_deref().map(Into::into),
            issuer: d.issuer.as_deref().map(Into::into),
            not_after: d.not_after,
            anchor: d.anchor,
            fingerprint: d.fingerprint,
            request_id: r.request_id.map(Into::into),
            remote_addr: r.client,
            peer: r.peer,
        };
        if d.allowed() {
            self.allowed.push(e);
        } else {
            self.rejected.push(e);
        }
    }

    /// The entries matching `q`, newest first.
    pub fn query(&self, q: &CertQuery) -> CertFound {
        let mut out = Vec::new();
        if q.codes.is_empty() || q.codes.iter().any(|c| !c.allowed()) {
            self.rejected.collect(q, &mut out);
        }
        if q.codes.is_empty() || q.codes.iter().any(|c| c.allowed()) {
            self.allowed.collect(q, &mut out);
        }
        let matched = out.len();
        out.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        out.truncate(q.limit);
        CertFound {
            entries: out,
            matched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(code: CertCode, serial: u8, identity: &str) -> keyroll_ca::CertDecision {
        keyroll_ca::CertDecision {
            code,
            detail: format!("{code} for {identity}"),
            serial: Some(Serial::from_random([serial; 16])),
            identity: Some(identity.to_owned()),
            issuer: Some("CN=keyroll intermediate CA g1".into()),
            not_before: None,
            not_after: None,
            anchor: None,
            fingerprint: None,
        }
    }

    fn record(h: &CertHistory, d: &keyroll_ca::CertDecision, ts: i64) {
        h.record(&CertDecisionRecord {
            decision: d,
            edge: CertEdge::ForwardAuthCert,
            peer: None,
            client: None,
            request_id: Some("rq_1"),
            now: Timestamp::from_unix_millis(ts),
        });
    }

    #[test]
    fn filtered_by_code_identity_and_serial_rejections_kept_longest() {
        let h = CertHistory::new(10);
        assert_eq!(h.capacity(), (8, 2));
        let billing = "spiffe://example.org/prod/billing";
        record(&h, &decision(CertCode::CertRevoked, 1, billing), 1);
        record(
            &h,
            &decision(CertCode::CertExpired, 2, "spiffe://example.org/ops/a"),
            2,
        );
        for ts in 3..50 {
            record(&h, &decision(CertCode::Valid, 3, billing), ts);
        }
        let all = h.query(&CertQuery {
            limit: 100,
            ..CertQuery::default()
        });
        assert_eq!(all.matched, 4, "two rejections and the two newest accepted");
        assert_eq!(all.entries[0].ts_ms, 49);
        let revoked = h.query(&CertQuery {
            codes: vec![CertCode::CertRevoked],
            limit: 100,
            ..CertQuery::default()
        });
        assert_eq!(revoked.matched, 1);
        let by_path = h.query(&CertQuery {
            identity: Some("prod/billing".into()),
            limit: 100,
            ..CertQuery::default()
        });
        assert_eq!(by_path.matched, 3);
        let by_uri = h.query(&CertQuery {
            identity: Some(billing.into()),
            serial: Some(Serial::from_random([1; 16]).to_string()),
            limit: 100,
            ..CertQuery::default()
        });
        assert_eq!(by_uri.matched, 1);
        assert_eq!(by_uri.entries[0].code, CertCode::CertRevoked);
        assert_eq!(CertHistory::new(0).capacity(), (0, 0));
    }
}
