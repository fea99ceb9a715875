//! The JSON types of the certificate authority's API (SPEC §9): `ca init`, issuing and listing
//! workload certificates, revocation, the bundle, status and rotation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/ca/init`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CaInit {
    /// The SPIFFE trust domain (`example.org`).
    pub trust_domain: String,
    /// The root's lifetime (default `87600h`, ten years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_ttl: Option<String>,
    /// The intermediate's lifetime (default `8760h`, one year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_ttl: Option<String>,
}

/// One authority as `ca init` names it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuthorityRef {
    /// `ca_…`.
    pub id: String,
    /// Its certificate's serial (lowercase hex).
    pub serial: String,
    /// Its notAfter.
    pub not_after: String,
}

/// The answer of `POST /v1/ca/init`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CaInitialized {
    /// The trust domain.
    pub trust_domain: String,
    /// The bundle version after it (1).
    pub bundle_version: u64,
    /// The root.
    pub root: AuthorityRef,
    /// The intermediate that signs.
    pub intermediate: AuthorityRef,
}

/// `POST /v1/certs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct IssueCert {
    /// `ENV/SERVICE`: the environment must exist, the service follows the consumer-name rules.
    pub identity: String,
    /// Lifetime (default `24h`, at least `5m`, capped at the issuer's notAfter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Also allow serverAuth (clientAuth is always there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_auth: Option<bool>,
    /// Extra DNS SANs (only with `server_auth`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Extra IP SANs (only with `server_auth`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<String>,
    /// A PKCS#10 request (PEM): only its public key is used. Without it the server generates
    /// the key and returns it once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// `POST /v1/self/certificate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SelfCertRequest {
    /// A PKCS#10 request (PEM); the key stays with the workload.
    pub csr: String,
    /// Lifetime (default `24h`, at least `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Also allow serverAuth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_auth: Option<bool>,
}

/// An issued certificate, as `POST /v1/certs` and `POST /v1/self/certificate` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CertIssued {
    /// Lowercase hex, 32 digits.
    pub serial: String,
    /// `ENV/SERVICE`.
    pub identity: String,
    /// `spiffe://TRUST_DOMAIN/ENV/SERVICE`, the one URI SAN.
    pub spiffe_id: String,
    /// The intermediate that signed it.
    pub issuer_id: String,
    /// notBefore.
    pub not_before: String,
    /// notAfter.
    pub not_after: String,
    /// `sha256:…` of the DER.
    pub fingerprint: String,
    /// It carries the serverAuth EKU.
    pub server_auth: bool,
    /// The leaf then the intermediate, PEM.
    pub cert_pem: String,
    /// The generated private key (PKCS#8 PEM), only when no CSR was given: shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    /// The roots in the bundle, PEM.
    pub ca_pem: String,
    /// The bundle version `ca_pem` is.
    pub bundle_version: u64,
    /// When to renew (half of the lifetime; `/v1/self/certificate` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_after: Option<String>,
}

/// `GET /v1/ca/bundle?format=json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CaBundle {
    /// The bundle version.
    pub bundle_version: u64,
    /// The trust domain.
    pub trust_domain: String,
    /// Every root in the bundle (expired ones pruned), PEM.
    pub roots_pem: String,
    /// Every current intermediate, PEM.
    pub intermediates_pem: String,
    /// One CRL per issuer, PEM.
    pub crls_pem: String,
}

/// An issued certificate as listed (never its key).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex, 32 digits.
    pub serial: String,
    /// `ENV/SERVICE`.
    pub identity: String,
    /// The intermediate that signed it.
    pub issuer_id: String,
    /// notBefore.
    pub not_before: String,
    /// notAfter.
    pub not_after: String,
    /// `sha256:…` of the DER.
    pub fingerprint: String,
    /// It carries the serverAuth EKU.
    pub server_auth: bool,
    /// Who asked for it: a token id, `agent:ENV/NAME`, `cert:SERIAL`.
    pub requested_by: String,
    /// The certificate that renewed it.
    pub superseded_by: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Why (`key-compromise`, …).
    pub revocation_reason: Option<String>,
    /// `live`, `expired` or `revoked`.
    pub state: String,
}

/// `GET /v1/certs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CertList {
    /// One page, by serial.
    pub certificates: Vec<CertInfo>,
    /// The `after` of the next page, when there may be one.
    pub next_after: Option<String>,
}

/// `POST /v1/certs/revoke`: exactly one of `serial` and `identity`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RevokeCert {
    /// One certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Every live certificate of `ENV/SERVICE`; the identity may no longer renew itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// kebab-case: unspecified (default), key-compromise, ca-compromise, affiliation-changed,
    /// superseded, cessation-of-operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer of `POST /v1/certs/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CertsRevoked {
    /// The serials revoked by this request.
    pub revoked: Vec<String>,
    /// The identity may no longer renew itself.
    pub identity_blocked: bool,
    /// The bundle version with the new CRL.
    pub bundle_version: u64,
}

/// A live certificate an authority's removal waits for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DependentCert {
    /// `ENV/SERVICE`.
    pub identity: String,
    /// Its serial.
    pub serial: String,
    /// Its notAfter.
    pub not_after: String,
}

/// Handshakes that chained to a root within its `idle`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DependentHandshake {
    /// `ENV/SERVICE` of the client certificate.
    pub identity: String,
    /// The peer's address, `""` when unknown.
    pub peer: String,
    /// The latest certificate's serial.
    pub serial: String,
    /// The latest handshake.
    pub last_at: String,
    /// Handshakes counted.
    pub count: u64,
}

/// An agent whose reported bundle does not hold the authority's successor.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DependentAgent {
    /// `ENV/NAME`.
    pub consumer: String,
    /// The agent.
    pub agent_id: String,
    /// The bundle version it reported.
    pub bundle_version: u64,
}

/// What an authority's removal from the bundle waits for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq, Default)]
pub struct Depends {
    /// Certificates it (or, for a root, its intermediates) signed that are still valid.
    pub live_certificates: Vec<DependentCert>,
    /// Handshakes that chained to it (roots) within its `idle`.
    pub recent_handshakes: Vec<DependentHandshake>,
    /// Agents whose bundle is older than the one its successor entered with.
    pub agents_on_old_bundle: Vec<DependentAgent>,
}

/// One root or intermediate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Authority {
    /// `ca_…`.
    pub id: String,
    /// `root` or `intermediate`.
    pub kind: String,
    /// 1, then +1 with each rotation.
    pub generation: u32,
    /// The root above an intermediate.
    pub parent_id: Option<String>,
    /// `next`, `bundled`, `active`, `retiring` or `removed`.
    pub state: String,
    /// The certificate's subject.
    pub subject: String,
    /// Its serial.
    pub serial: String,
    /// `sha256:…` of its DER.
    pub fingerprint: String,
    /// notBefore.
    pub not_before: String,
    /// notAfter.
    pub not_after: String,
    /// When it enters (entered) the bundle.
    pub enters_bundle_at: String,
    /// When it signs (signed) from.
    pub signs_from: String,
    /// When it left the bundle.
    pub removed_at: Option<String>,
    /// What its removal waits for.
    pub depends: Depends,
}

/// The timeline's next step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct NextStep {
    /// `prune`, `enter_bundle`, `switch_signing`, `retire` or `start_rotation`.
    pub kind: String,
    /// The authority it concerns (none for `start_rotation`).
    pub authority: Option<String>,
    /// When it is due (now or later).
    pub at: String,
}

/// `GET /v1/ca/status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CaStatus {
    /// The trust domain.
    pub trust_domain: String,
    /// The bundle version.
    pub bundle_version: u64,
    /// Every authority, oldest first.
    pub authorities: Vec<Authority>,
    /// What the timeline does next, if anything is foreseeable.
    pub next_step: Option<NextStep>,
}

/// `POST /v1/ca/rotate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CaRotate {
    /// Rotate the root as well (a new root and a new intermediate under it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<bool>,
    /// When the new CA enters the bundle (RFC 3339; default at half the current one's life).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enters_bundle_at: Option<String>,
    /// When it starts signing (RFC 3339; default at five sixths of the current one's life).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signs_from: Option<String>,
    /// How long no handshake may have chained to the old CA before it leaves (default `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
}
