//! The agent's certificate calls (SPEC §9/§10): `POST /v1/self/certificate` with a CSR, made
//! with the consumer's own key like the other `/v1/self*` calls, and the public trust bundle
//! `GET /v1/ca/bundle?format=json`. The answers are read leniently (unknown fields ignored) so
//! an agent keeps working against a server that says more.

use serde::{Deserialize, Serialize};

use crate::{Answer, Client, ClientError};

/// `POST /v1/self/certificate`: a certificate for the caller's own identity. The CA takes only
/// the CSR's public key; the identity is the consumer's `ENV/NAME`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SelfCertificateRequest {
    /// The PKCS#10 request, PEM.
    pub csr: String,
    /// The lifetime asked for (`24h`, `30m`; the server's default without it, at least 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Also allow serverAuth.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub server_auth: bool,
}

/// An issued certificate, as `POST /v1/self/certificate` answers (never a private key: the key
/// stayed with the caller).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The serial, hex.
    pub serial: String,
    /// `ENV/SERVICE`.
    pub identity: String,
    /// `spiffe://TRUST_DOMAIN/ENV/SERVICE`.
    pub spiffe_id: String,
    /// The issuing intermediate's id.
    #[serde(default)]
    pub issuer_id: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// `sha256:…` of the DER.
    #[serde(default)]
    pub fingerprint: String,
    /// Whether serverAuth is allowed.
    #[serde(default)]
    pub server_auth: bool,
    /// The leaf, then the intermediate.
    pub cert_pem: String,
    /// The roots in the trust bundle.
    pub ca_pem: String,
    /// The bundle version `ca_pem` is from.
    pub bundle_version: u64,
    /// The half-life instant, for information (the agent draws its own jitter around it).
    #[serde(default)]
    pub renew_after: Option<String>,
}

/// `GET /v1/ca/bundle?format=json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaBundle {
    /// The bundle's version (`X-Keyroll-Bundle-Version`).
    pub bundle_version: u64,
    /// The CA's trust domain.
    pub trust_domain: String,
    /// Every root in the bundle, PEM (what a workload's `ca.pem` holds).
    pub roots_pem: String,
    /// The current intermediates, PEM.
    #[serde(default)]
    pub intermediates_pem: String,
    /// One CRL per issuer, PEM.
    #[serde(default)]
    pub crls_pem: String,
}

impl Client {
    /// `POST /v1/self/certificate`: 403 `identity_revoked` when the identity may no longer
    /// renew itself, 404 `no_ca` before `keyroll ca init`.
    pub async fn self_certificate(
        &self,
        req: &SelfCertificateRequest,
    ) -> Result<Answer<IssuedCertificate>, ClientError> {
        self.call(
            reqwest::Method::POST,
            "/v1/self/certificate",
            Some(req),
            None,
        )
        .await
    }

    /// `GET /v1/ca/bundle?format=json` (public; no token needed): 404 `no_ca` before
    /// `keyroll ca init`.
    pub async fn ca_bundle(&self) -> Result<Answer<CaBundle>, ClientError> {
        self.call(
            reqwest::Method::GET,
            "/v1/ca/bundle?format=json",
            None,
            None,
        )
        .await
    }
}
