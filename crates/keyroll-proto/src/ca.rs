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
