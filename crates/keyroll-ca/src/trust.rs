//! What a relying party trusts and the verification of a presented certificate with a reason
//! code (SPEC §9). The chain, validity, usage and revocation are webpki's (directly, not through
//! rustls); keyroll adds the identity check, the mapping of every failure to a [`CertCode`], and
//! the facts of the certificate (serial, identity, issuer, validity) even when it is rejected.

use std::fmt;
use std::str::FromStr;

use keyroll_core::Timestamp;

use crate::{AnchorId, CaError, Fingerprint, Serial, TrustDomain};

/// A trust anchor kept by the store.
#[derive(Debug, Clone)]
pub(crate) struct Anchor {
    pub(crate) id: AnchorId,
    pub(crate) der: Vec<u8>,
    pub(crate) subject: String,
    pub(crate) not_after: Timestamp,
}

/// What a relying party trusts: anchors (root certificates), intermediates (peers send theirs, but
/// these fill in for a peer that omits it) and CRLs (one per issuer; a certificate whose issuer
/// has no current CRL is `cert_revocation_unknown`).
#[derive(Debug, Clone)]
pub struct TrustStore {
    pub(crate) anchors: Vec<Anchor>,
    pub(crate) intermediates: Vec<Vec<u8>>,
    pub(crate) crls: Vec<Vec<u8>>,
}

impl TrustStore {
    /// A store from DERs. Every certificate and CRL must parse.
    pub fn new(
        anchors: Vec<Vec<u8>>,
        intermediates: Vec<Vec<u8>>,
        crls: Vec<Vec<u8>>,
    ) -> Result<TrustStore, CaError> {
        let _ = (anchors, intermediates, crls);
        todo!()
    }

    /// A store from a PEM bundle (what `/v1/ca/bundle` serves): self-signed `CERTIFICATE`s are
    /// anchors, other certificates intermediates, `X509 CRL`s the CRLs.
    pub fn from_bundle_pem(pem: &[u8]) -> Result<TrustStore, CaError> {
        let _ = pem;
        todo!()
    }

    /// Removes anchors whose notAfter is before `now` and returns them: webpki would still accept
    /// chains to an expired root (HOUSE.md), so the store must not hold one.
    pub fn prune_expired(&mut self, now: Timestamp) -> Vec<AnchorId> {
        let _ = now;
        todo!()
    }

    /// The anchors with their subjects.
    pub fn anchors(&self) -> impl Iterator<Item = (AnchorId, &str)> {
        self.anchors.iter().map(|a| (a.id, a.subject.as_str()))
    }

    /// The anchors' DERs.
    pub fn anchor_ders(&self) -> impl Iterator<Item = &[u8]> {
        self.anchors.iter().map(|a| a.der.as_slice())
    }

    /// The intermediates' DERs.
    pub fn intermediate_ders(&self) -> impl Iterator<Item = &[u8]> {
        self.intermediates.iter().map(Vec::as_slice)
    }

    /// The CRLs' DERs.
    pub fn crl_ders(&self) -> impl Iterator<Item = &[u8]> {
        self.crls.iter().map(Vec::as_slice)
    }
}

/// Which identities a relying party accepts: one trust domain and `ENV/SERVICE` patterns where
/// either part may be `*` (`prod/*`, `*/billing`, `*/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPolicy {
    trust_domain: TrustDomain,
    patterns: Vec<(String, String)>,
}

impl IdentityPolicy {
    /// A policy; every pattern must be `ENV/SERVICE` with names or `*`.
    pub fn new<S: AsRef<str>>(
        trust_domain: TrustDomain,
        patterns: &[S],
    ) -> Result<IdentityPolicy, CaError> {
        let _ = (trust_domain, patterns);
        todo!()
    }

    /// Any identity of the trust domain.
    pub fn any(trust_domain: TrustDomain) -> IdentityPolicy {
        IdentityPolicy {
            trust_domain,
            patterns: vec![("*".to_owned(), "*".to_owned())],
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

/// What the certificate is presented for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Usage {
    /// A client authenticating to a server (EKU clientAuth).
    Client,
    /// A server authenticating to a client (EKU serverAuth).
    Server,
}

/// The outcome of one certificate verification (SPEC §9 codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertCode {
    /// The certificate is accepted.
    Valid,
    /// No certificate was presented.
    CertMissing,
    /// Past notAfter.
    CertExpired,
    /// Before notBefore.
    CertNotYetValid,
    /// Does not chain to a trusted anchor.
    CertUnknownIssuer,
    /// Listed on its issuer's CRL.
    CertRevoked,
    /// Its issuer has no CRL, or only an expired one.
    CertRevocationUnknown,
    /// A signature in the chain does not verify, or uses an algorithm not accepted.
    CertBadSignature,
    /// Not allowed for this use (wrong EKU, a CA certificate as a leaf).
    CertWrongUsage,
    /// Not exactly one SPIFFE URI SAN of the trust domain, or not allowed by the policy.
    CertWrongIdentity,
    /// Not a parseable certificate.
    CertMalformed,
}

impl CertCode {
    /// Every code.
    pub const ALL: [CertCode; 11] = [
        CertCode::Valid,
        CertCode::CertMissing,
        CertCode::CertExpired,
        CertCode::CertNotYetValid,
        CertCode::CertUnknownIssuer,
        CertCode::CertRevoked,
        CertCode::CertRevocationUnknown,
        CertCode::CertBadSignature,
        CertCode::CertWrongUsage,
        CertCode::CertWrongIdentity,
        CertCode::CertMalformed,
    ];

    /// The snake_case code of SPEC §9 (`valid` for an accepted certificate).
    pub fn as_str(self) -> &'static str {
        match self {
            CertCode::Valid => "valid",
            CertCode::CertMissing => "cert_missing",
            CertCode::CertExpired => "cert_expired",
            CertCode::CertNotYetValid => "cert_not_yet_valid",
            CertCode::CertUnknownIssuer => "cert_unknown_issuer",
            CertCode::CertRevoked => "cert_revoked",
            CertCode::CertRevocationUnknown => "cert_revocation_unknown",
            CertCode::CertBadSignature => "cert_bad_signature",
            CertCode::CertWrongUsage => "cert_wrong_usage",
            CertCode::CertWrongIdentity => "cert_wrong_identity",
            CertCode::CertMalformed => "cert_malformed",
        }
    }

    /// Parses a code.
    pub fn parse(input: &str) -> Option<CertCode> {
        CertCode::ALL.into_iter().find(|c| c.as_str() == input)
    }

    /// Whether the certificate is accepted.
    pub fn allowed(self) -> bool {
        self == CertCode::Valid
    }
}

impl fmt::Display for CertCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CertCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CertCode::parse(s).ok_or_else(|| format!("unknown certificate code {s:?}"))
    }
}

/// One verification's outcome with what is known of the certificate, for the log (§5 style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDecision {
    /// The code.
    pub code: CertCode,
    /// One sentence naming what failed (or what was accepted); never key material.
    pub detail: String,
    /// The leaf's serial, when it parsed.
    pub serial: Option<Serial>,
    /// The leaf's URI SAN (the SPIFFE id, or whatever URI it had), when it parsed.
    pub identity: Option<String>,
    /// The leaf's issuer, RFC 4514, when it parsed.
    pub issuer: Option<String>,
    /// The leaf's notBefore, when it parsed.
    pub not_before: Option<Timestamp>,
    /// The leaf's notAfter, when it parsed.
    pub not_after: Option<Timestamp>,
    /// The trust anchor the chain ended at, when it chained.
    pub anchor: Option<AnchorId>,
    /// SHA-256 of the leaf's DER (also for garbage), `None` only for a missing certificate.
    pub fingerprint: Option<Fingerprint>,
}

impl CertDecision {
    /// Whether the certificate is accepted.
    pub fn allowed(&self) -> bool {
        self.code.allowed()
    }
}

/// Verifies `end_entity_der` (with the peer's `intermediates`) for `usage` at `now` against the
/// store and the identity policy.
pub fn verify(
    trust: &TrustStore,
    policy: &IdentityPolicy,
    end_entity_der: &[u8],
    intermediates: &[&[u8]],
    usage: Usage,
    now: Timestamp,
) -> CertDecision {
    let _ = (trust, policy, end_entity_der, intermediates, usage, now);
    todo!()
}

/// [`verify`] for a PEM chain (leaf first, then intermediates), e.g. the certificate a proxy
/// forwarded (URL-unescaped by the caller). Empty or whitespace-only text is `cert_missing`.
pub fn verify_pem_chain(
    trust: &TrustStore,
    policy: &IdentityPolicy,
    chain_pem: &[u8],
    usage: Usage,
    now: Timestamp,
) -> CertDecision {
    let _ = (trust, policy, chain_pem, usage, now);
    todo!()
}
