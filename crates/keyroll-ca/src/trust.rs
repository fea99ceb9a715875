//! What a relying party trusts and the verification of a presented certificate with a reason
//! code (SPEC §9). The chain, validity, usage and revocation are webpki's (directly, not through
//! rustls); keyroll adds the identity check, the mapping of every failure to a [`CertCode`], and
//! the facts of the certificate (serial, identity, issuer, validity) even when it is rejected.

use std::fmt;
use std::str::FromStr;

use std::sync::Arc;

use keyroll_core::{Timestamp, rfc3339};
use rustls_pki_types::{CertificateDer, TrustAnchor};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::inspect::info_of;
use crate::time_conv::to_unix_time;
use crate::{
    AnchorId, CaError, Fingerprint, Serial, SpiffeId, TrustDomain, inspect, parse_pem_certs,
    parse_pem_crls,
};

/// A trust anchor kept by the store.
#[derive(Debug, Clone)]
pub(crate) struct Anchor {
    pub(crate) id: AnchorId,
    pub(crate) der: Vec<u8>,
    pub(crate) subject: String,
    pub(crate) not_after: Timestamp,
    pub(crate) ta: TrustAnchor<'static>,
}

/// What a relying party trusts: anchors (root certificates), intermediates (peers send theirs, but
/// these fill in for a peer that omits it) and CRLs (one per issuer; a certificate whose issuer
/// has no current CRL is `cert_revocation_unknown`).
#[derive(Debug, Clone)]
pub struct TrustStore {
    pub(crate) anchors: Vec<Anchor>,
    pub(crate) intermediates: Vec<Vec<u8>>,
    pub(crate) crls: Vec<Vec<u8>>,
    pub(crate) parsed_crls: Arc<Vec<CertRevocationList<'static>>>,
}

impl TrustStore {
    /// A store from DERs. Every certificate and CRL must parse.
    pub fn new(
        anchors: Vec<Vec<u8>>,
        intermediates: Vec<Vec<u8>>,
        crls: Vec<Vec<u8>>,
    ) -> Result<TrustStore, CaError> {
        let anchors = anchors
            .into_iter()
            .map(|der| {
                let info = inspect(&der)?;
                let ta = webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .map_err(|e| CaError::CertificateMalformed(format!("{e:?}")))?
                    .to_owned();
                Ok(Anchor {
                    id: AnchorId::of(&der),
                    subject: info.common_name.unwrap_or(info.subject),
                    not_after: info.not_after,
                    ta,
                    der,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        for der in &intermediates {
            inspect(der)?;
        }
        let parsed = crls
            .iter()
            .map(|der| {
                OwnedCertRevocationList::from_der(der)
                    .map(CertRevocationList::from)
                    .map_err(|e| CaError::CrlMalformed(format!("{e:?}")))
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        Ok(TrustStore {
            anchors,
            intermediates,
            crls,
            parsed_crls: Arc::new(parsed),
        })
    }

    /// A store from a PEM bundle (what `/v1/ca/bundle` serves): self-signed `CERTIFICATE`s are
    /// anchors, other certificates intermediates, `X509 CRL`s the CRLs.
    pub fn from_bundle_pem(pem: &[u8]) -> Result<TrustStore, CaError> {
        let certs = parse_pem_certs(pem)?;
        let crls = parse_pem_crls(pem)?;
        let mut anchors = Vec::new();
        let mut intermediates = Vec::new();
        for der in certs {
            if inspect(&der)?.self_issued {
                anchors.push(der);
            } else {
                intermediates.push(der);
            }
        }
        TrustStore::new(anchors, intermediates, crls)
    }

    /// Removes anchors whose notAfter is before `now` and returns them: webpki would still accept
    /// chains to an expired root (HOUSE.md), so the store must not hold one.
    pub fn prune_expired(&mut self, now: Timestamp) -> Vec<AnchorId> {
        let (expired, kept): (Vec<Anchor>, Vec<Anchor>) = std::mem::take(&mut self.anchors)
            .into_iter()
            .partition(|a| a.not_after < now);
        self.anchors = kept;
        expired.into_iter().map(|a| a.id).collect()
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
        let part_ok = |p: &str, env: bool| {
            p == "*"
                || if env {
                    keyroll_core::Environment::is_valid(p)
                } else {
                    keyroll_core::ConsumerName::parse(p).is_ok()
                }
        };
        let patterns = patterns
            .iter()
            .map(|p| {
                let p = p.as_ref();
                match p.split_once('/') {
                    Some((e, s)) if part_ok(e, true) && part_ok(s, false) => {
                        Ok((e.to_owned(), s.to_owned()))
                    }
                    _ => Err(CaError::InvalidPattern(p.chars().take(80).collect())),
                }
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        Ok(IdentityPolicy {
            trust_domain,
            patterns,
        })
    }

    /// Whether `id` (already in the trust domain) is allowed by a pattern.
    fn allows(&self, id: &SpiffeId) -> bool {
        self.patterns
            .iter()
            .any(|(e, s)| (e == "*" || e == id.environment()) && (s == "*" || s == id.service()))
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
    let mut d = CertDecision {
        code: CertCode::Valid,
        detail: String::new(),
        serial: None,
        identity: None,
        issuer: None,
        not_before: None,
        not_after: None,
        anchor: None,
        fingerprint: None,
    };
    if end_entity_der.is_empty() {
        d.code = CertCode::CertMissing;
        d.detail = "no client certificate was presented".to_owned();
        return d;
    }
    d.fingerprint = Some(Fingerprint::of(end_entity_der));
    // Parsed once, before webpki, so that a rejected certificate still reports its facts.
    let cert = match X509Certificate::from_der(end_entity_der) {
        Ok(([], cert)) => cert,
        Ok(_) => return malformed(d, "trailing bytes after the certificate"),
        Err(e) => return malformed(d, &e.to_string()),
    };
    let info = info_of(&cert, end_entity_der);
    d.serial = info.serial;
    d.identity = info.uri_sans.first().cloned();
    d.issuer = Some(info.issuer.clone());
    d.not_before = Some(info.not_before);
    d.not_after = Some(info.not_after);

    let ee_der = CertificateDer::from(end_entity_der);
    let ee = match EndEntityCert::try_from(&ee_der) {
        Ok(ee) => ee,
        Err(e) => return malformed(d, &format!("{e:?}")),
    };
    let mut chain: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(*c))
        .collect();
    chain.extend(
        trust
            .intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice())),
    );
    let anchors: Vec<TrustAnchor<'_>> = trust.anchors.iter().map(|a| a.ta.clone()).collect();
    let crl_refs: Vec<&CertRevocationList<'_>> = trust.parsed_crls.iter().collect();
    let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
        b.with_depth(RevocationCheckDepth::Chain)
            .with_status_policy(UnknownStatusPolicy::Deny)
            .with_expiration_policy(ExpirationPolicy::Enforce)
            .build()
    });
    let no_crls = revocation.is_none();
    let eku = match usage {
        Usage::Client => KeyUsage::client_auth(),
        Usage::Server => KeyUsage::server_auth(),
    };
    let verified = ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain,
        to_unix_time(now),
        eku,
        revocation,
        None,
    );
    match verified {
        Ok(path) => {
            let ta = path.anchor();
            d.anchor = trust
                .anchors
                .iter()
                .find(|a| {
                    a.ta.subject_public_key_info == ta.subject_public_key_info
                        && a.ta.subject == ta.subject
                })
                .map(|a| a.id);
        }
        Err(e) => {
            let (code, detail) = webpki_code(&e, &info, usage, now);
            d.code = code;
            d.detail = detail;
            return d;
        }
    }
    if no_crls {
        d.code = CertCode::CertRevocationUnknown;
        d.detail = format!(
            "no CRL is known for the issuer {:?}, so revocation cannot be checked",
            info.issuer
        );
        return d;
    }

    // The identity: exactly one URI SAN, a SPIFFE id of the policy's trust domain, allowed.
    if info.uri_sans.len() != 1 {
        d.code = CertCode::CertWrongIdentity;
        d.detail = format!(
            "the certificate has {} URI SANs; exactly one spiffe:// URI is required",
            info.uri_sans.len()
        );
        return d;
    }
    let uri = &info.uri_sans[0];
    let id = match SpiffeId::parse(uri) {
        Ok(id) => id,
        Err(e) => {
            d.code = CertCode::CertWrongIdentity;
            d.detail = e.to_string();
            return d;
        }
    };
    if id.trust_domain() != policy.trust_domain() {
        d.code = CertCode::CertWrongIdentity;
        d.detail = format!(
            "the identity {id} is not in the trust domain {}",
            policy.trust_domain()
        );
        return d;
    }
    if !policy.allows(&id) {
        d.code = CertCode::CertWrongIdentity;
        d.detail = format!("the identity {} is not allowed here", id.path());
        return d;
    }
    d.detail = format!("{id} accepted");
    d
}

fn malformed(mut d: CertDecision, why: &str) -> CertDecision {
    d.code = CertCode::CertMalformed;
    d.detail = format!("the certificate does not parse: {why}");
    d
}

/// The code and sentence of a webpki failure (the deprecated variants are still matched: older
/// paths of webpki may return them).
#[allow(deprecated)]
fn webpki_code(
    e: &webpki::Error,
    info: &crate::CertInfo,
    usage: Usage,
    now: Timestamp,
) -> (CertCode, String) {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => (
            CertCode::CertExpired,
            format!(
                "a certificate in the chain expired (the leaf's notAfter is {}, now is {})",
                rfc3339(info.not_after),
                rfc3339(now)
            ),
        ),
        E::CertNotValidYet { .. } => (
            CertCode::CertNotYetValid,
            format!(
                "a certificate in the chain is not valid yet (the leaf's notBefore is {}, now is {})",
                rfc3339(info.not_before),
                rfc3339(now)
            ),
        ),
        E::UnknownIssuer => (
            CertCode::CertUnknownIssuer,
            format!(
                "the issuer {:?} does not chain to a trusted anchor",
                info.issuer
            ),
        ),
        E::CertRevoked => (
            CertCode::CertRevoked,
            "a certificate in the chain is listed on its issuer's CRL".to_owned(),
        ),
        E::UnknownRevocationStatus => (
            CertCode::CertRevocationUnknown,
            "no CRL covers a certificate of the chain, so revocation cannot be checked".to_owned(),
        ),
        E::CrlExpired { .. } => (
            CertCode::CertRevocationUnknown,
            "the issuer's CRL is past its nextUpdate, so revocation cannot be checked".to_owned(),
        ),
        E::InvalidSignatureForPublicKey
        | E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | E::SignatureAlgorithmMismatch
        | E::InvalidCrlSignatureForPublicKey => (
            CertCode::CertBadSignature,
            format!("a signature in the chain does not verify ({e:?})"),
        ),
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => (
            CertCode::CertWrongUsage,
            format!(
                "the certificate is not allowed for {} authentication (extended key usage)",
                match usage {
                    Usage::Client => "client",
                    Usage::Server => "server",
                }
            ),
        ),
        E::CaUsedAsEndEntity => (
            CertCode::CertWrongUsage,
            "a CA certificate was presented as a workload certificate".to_owned(),
        ),
        E::EndEntityUsedAsCa | E::PathLenConstraintViolated => (
            CertCode::CertWrongUsage,
            format!("a certificate in the chain is used beyond its constraints ({e:?})"),
        ),
        other => (
            CertCode::CertMalformed,
            format!("the chain could not be checked: {other:?}"),
        ),
    }
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
    if chain_pem.trim_ascii().is_empty() {
        return verify(trust, policy, &[], &[], usage, now);
    }
    match parse_pem_certs(chain_pem) {
        Ok(certs) => {
            let rest: Vec<&[u8]> = certs[1..].iter().map(Vec::as_slice).collect();
            verify(trust, policy, &certs[0], &rest, usage, now)
        }
        Err(e) => CertDecision {
            code: CertCode::CertMalformed,
            detail: e.to_string(),
            serial: None,
            identity: None,
            issuer: None,
            not_before: None,
            not_after: None,
            anchor: None,
            fingerprint: Some(Fingerprint::of(chain_pem)),
        },
    }
}
