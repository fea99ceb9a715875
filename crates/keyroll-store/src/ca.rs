//! The certificate authority's records as the store keeps them (SPEC §9), shared by both
//! backends.
//!
//! The store knows nothing of X.509: certificates are DER bytes, serials and fingerprints are
//! the text the server gives them (lowercase hex, `sha256:…`), private keys arrive already
//! sealed under the server's master key. What the store guarantees is the write discipline:
//! every CA change is one transaction with its audit entries and events, guarded by the bundle
//! version when the caller asks, and a change that alters the trust bundle appends a `ca`
//! change to the cluster's change log so every node rebuilds its trust store.

use std::time::Duration;

use keyroll_core::{ConsumerRef, Timestamp};

use crate::{AuditRecord, EventRecord};

/// Root or intermediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityKind {
    /// A self-signed trust anchor.
    Root,
    /// Signed by a root; signs workload certificates.
    Intermediate,
}

impl AuthorityKind {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorityKind::Root => "root",
            AuthorityKind::Intermediate => "intermediate",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<AuthorityKind> {
        match s {
            "root" => Some(AuthorityKind::Root),
            "intermediate" => Some(AuthorityKind::Intermediate),
            _ => None,
        }
    }
}

/// Where an authority stands on the rotation timeline, as last written by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityState {
    /// Made; enters the bundle at `enters_bundle_at`.
    Next,
    /// In the bundle, not signing yet (from `signs_from`).
    Bundled,
    /// The one that signs (an intermediate), or the root above it.
    Active,
    /// Replaced; still in the bundle until the removal gate holds.
    Retiring,
    /// Out of the bundle for good.
    Removed,
}

impl AuthorityState {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorityState::Next => "next",
            AuthorityState::Bundled => "bundled",
            AuthorityState::Active => "active",
            AuthorityState::Retiring => "retiring",
            AuthorityState::Removed => "removed",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<AuthorityState> {
        Some(match s {
            "next" => AuthorityState::Next,
            "bundled" => AuthorityState::Bundled,
            "active" => AuthorityState::Active,
            "retiring" => AuthorityState::Retiring,
            "removed" => AuthorityState::Removed,
            _ => return None,
        })
    }
}

/// A root or intermediate CA. Its private key is only ever `sealed_key` (the server's AEAD
/// under its master key); `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorityRecord {
    /// `ca_…`.
    pub id: String,
    /// Root or intermediate.
    pub kind: AuthorityKind,
    /// 1 for the first of its kind, +1 with every rotation.
    pub generation: u32,
    /// The root that signed an intermediate (`None` for a root).
    pub parent_id: Option<String>,
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// The certificate's subject, for people.
    pub subject: String,
    /// The certificate.
    pub cert_der: Vec<u8>,
    /// The private key, sealed by the server (nonce + ciphertext).
    pub sealed_key: Vec<u8>,
    /// The certificate's serial (lowercase hex).
    pub serial: String,
    /// `sha256:…` of the certificate's DER (the trust anchor id of a root).
    pub fingerprint: String,
    /// Validity start.
    pub not_before: Timestamp,
    /// Validity end.
    pub not_after: Timestamp,
    /// When it enters the trust bundle.
    pub enters_bundle_at: Timestamp,
    /// When it starts signing (intermediates) or its intermediate does (roots).
    pub signs_from: Timestamp,
    /// How long no handshake may have chained to it before it may leave the bundle once
    /// replaced.
    pub idle: Duration,
    /// The bundle version it entered with (agents holding an older bundle do not trust it).
    pub entered_version: Option<u64>,
    /// When it left the bundle.
    pub removed_at: Option<Timestamp>,
    /// Its state as last written.
    pub state: AuthorityState,
    /// When it was made.
    pub created_at: Timestamp,
}

impl std::fmt::Debug for AuthorityRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityRecord")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("generation", &self.generation)
            .field("parent_id", &self.parent_id)
            .field("subject", &self.subject)
            .field("serial", &self.serial)
            .field("state", &self.state)
            .field("sealed_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// An issued workload certificate (never its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertRecord {
    /// Lowercase hex, 32 digits.
    pub serial: String,
    /// `ENV/SERVICE`.
    pub identity: ConsumerRef,
    /// The intermediate that signed it.
    pub issuer_id: String,
    /// Validity start.
    pub not_before: Timestamp,
    /// Validity end.
    pub not_after: Timestamp,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// `sha256:…` of its DER.
    pub fingerprint: String,
    /// It carries the serverAuth EKU.
    pub server_auth: bool,
    /// The actor that asked for it (token id, `agent:…`, `system`).
    pub requested_by: String,
    /// The certificate that renewed it (a renewal authenticated by this one).
    pub superseded_by: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Why (`key-compromise`, …).
    pub revocation_reason: Option<String>,
}

/// One revocation of an issued certificate, in a [`CaWrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRevocation {
    /// The certificate.
    pub serial: String,
    /// When.
    pub at: Timestamp,
    /// Why.
    pub reason: String,
}

/// An identity that may no longer renew itself (`keyroll cert revoke ENV/SERVICE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedIdentityRecord {
    /// `ENV/SERVICE`.
    pub identity: ConsumerRef,
    /// When.
    pub revoked_at: Timestamp,
    /// Why.
    pub reason: String,
    /// Who.
    pub revoked_by: String,
}

/// The current CRL of one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    /// The authority whose CRL it is.
    pub issuer_id: String,
    /// The CRL number (grows by one with every new CRL of the issuer).
    pub number: u64,
    /// Its thisUpdate.
    pub this_update: Timestamp,
    /// Its nextUpdate.
    pub next_update: Timestamp,
    /// The CRL.
    pub der: Vec<u8>,
}

/// Handshakes that chained to one trust anchor, by identity and peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeUse {
    /// The anchor's id (`sha256:…` of the root).
    pub anchor_id: String,
    /// `ENV/SERVICE` of the client certificate.
    pub identity: String,
    /// The peer's address without port, `""` when unknown.
    pub peer: String,
    /// The serial of the latest certificate seen.
    pub serial: String,
    /// The latest handshake.
    pub last_at: Timestamp,
    /// Handshakes (added on each flush).
    pub count: u64,
}

/// Everything the trust store is rebuilt from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaState {
    /// Every authority, removed ones included, oldest first.
    pub authorities: Vec<AuthorityRecord>,
    /// The current CRL of each issuer that has one.
    pub crls: Vec<CrlRecord>,
    /// The bundle version (0 before the first CA).
    pub bundle_version: u64,
}

/// Which issued certificates by state at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFilter {
    /// Not revoked and not yet expired.
    Live,
    /// Not revoked, expired.
    Expired,
    /// Revoked.
    Revoked,
}

impl CertFilter {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CertFilter::Live => "live",
            CertFilter::Expired => "expired",
            CertFilter::Revoked => "revoked",
        }
    }

    /// The filter named `s`.
    pub fn parse(s: &str) -> Option<CertFilter> {
        match s {
            "live" => Some(CertFilter::Live),
            "expired" => Some(CertFilter::Expired),
            "revoked" => Some(CertFilter::Revoked),
            _ => None,
        }
    }
}

/// Which certificates [`Store::list_certificates`](crate::Store::list_certificates) returns, by
/// serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertQuery {
    /// Only this identity's.
    pub identity: Option<ConsumerRef>,
    /// Only those this authority signed.
    pub issuer: Option<String>,
    /// Only in this state at `at`.
    pub state: Option<CertFilter>,
    /// The instant `state` is judged at.
    pub at: Timestamp,
    /// Only serials after this one (paging).
    pub after: Option<String>,
    /// At most this many.
    pub limit: u32,
}

/// One CA change: all of it commits, or none.
#[derive(Debug, Default)]
pub struct CaWrite<'a> {
    /// The bundle version the change was computed from: `Conflict` when it moved meanwhile.
    /// `None`: no guard (issuing a leaf does not depend on concurrent bundle changes).
    pub expected_bundle_version: Option<u64>,
    /// The change alters the trust bundle (an authority entered or left it, a new CRL): the
    /// version grows by one and a `ca` change is logged for the other nodes.
    pub bump_bundle: bool,
    /// Authorities to insert or replace (by id).
    pub authorities: &'a [AuthorityRecord],
    /// A certificate to record (`AlreadyExists` when its serial is taken).
    pub certificate: Option<&'a IssuedCertRecord>,
    /// The certificate the new one renews: its `superseded_by` is set.
    pub supersedes: Option<&'a str>,
    /// Certificates to revoke (already revoked ones keep their first revocation).
    pub revocations: &'a [CertRevocation],
    /// An identity that may no longer renew itself (replaces an earlier record).
    pub revoke_identity: Option<&'a RevokedIdentityRecord>,
    /// CRLs to store (replacing each issuer's previous one).
    pub crls: &'a [CrlRecord],
    /// Audit entries.
    pub audit: &'a [AuditRecord],
    /// Outbox events.
    pub events: &'a [EventRecord],
}

/// What a [`CaWrite`] committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaCommit {
    /// The bundle version after the write.
    pub bundle_version: u64,
    /// The seq of the `ca` change logged (when the bundle changed).
    pub change_seq: Option<i64>,
}
