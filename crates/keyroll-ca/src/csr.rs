//! The workload's side of issuance: a fresh ECDSA P-256 key pair and a PKCS#10 request for a
//! SPIFFE id, so that the private key never leaves the workload (SPEC §9: the agent sends a CSR).
//! The CA reads only the request's public key (see [`crate::issue`]); the SAN written here is
//! for the benefit of humans reading the request with `openssl req -text`.
//!
//! Like [`crate::KeySource::Generate`], making the key pair draws from the operating system's
//! RNG inside aws-lc-rs; nothing else here does IO.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

use crate::authority::{gen_err, new_key};
use crate::{CaError, SecretDer, SpiffeId, pem};

/// A key pair and the CSR that names it. `Debug` never shows the private key.
#[derive(Debug, Clone)]
pub struct CsrKeyPair {
    /// The private key, PKCS#8 DER. Stays with the workload (its `key.pem`).
    pub key_pkcs8_der: SecretDer,
    /// The request, DER.
    pub csr_der: Vec<u8>,
    /// The raw public key (the SubjectPublicKeyInfo's BIT STRING), to match the issued
    /// certificate against.
    pub public_key_raw: Vec<u8>,
}

impl CsrKeyPair {
    /// The request as PEM (`CERTIFICATE REQUEST`), what `POST /v1/self/certificate` takes.
    pub fn csr_pem(&self) -> String {
        pem("CERTIFICATE REQUEST", &self.csr_der)
    }

    /// The private key as PKCS#8 PEM (`PRIVATE KEY`), for the workload's 0600 `key.pem` only.
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", self.key_pkcs8_der.as_bytes())
    }

    /// Whether the certificate `cert_der` certifies this key pair's public key (a certificate
    /// for another key must never be written beside this key).
    pub fn certifies(&self, cert_der: &[u8]) -> bool {
        crate::inspect(cert_der).is_ok_and(|info| info.public_key_raw == self.public_key_raw)
    }
}

/// A new P-256 key pair and a CSR for `identity` (CN `ENV/SERVICE`, one URI SAN, signed with
/// ECDSA-SHA256).
pub fn new_csr(identity: &SpiffeId) -> Result<CsrKeyPair, CaError> {
    let key: KeyPair = new_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.path());
    params.distinguished_name = dn;
    let uri = identity.to_string();
    params.subject_alt_names = vec![SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|_| CaError::InvalidDnsName(uri.clone()))?,
    )];
    let csr = params.serialize_request(&key).map_err(gen_err)?;
    Ok(CsrKeyPair {
        key_pkcs8_der: SecretDer::new(key.serialize_der()),
        csr_der: csr.der().to_vec(),
        public_key_raw: key.public_key_raw().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use keyroll_core::Timestamp;

    use super::*;
    use crate::{
        KeySource, LeafRequest, Serial, TrustDomain, issue_leaf, new_intermediate, new_root,
    };

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/prod/api").unwrap()
    }

    #[test]
    fn the_csr_is_signed_by_a_fresh_p256_key_and_issues_a_certificate_for_that_key() {
        let now = Timestamp::from_unix_millis(1_800_000_000_000);
        let td = TrustDomain::parse("example.org").unwrap();
        let root = new_root(
            &td,
            1,
            now,
            Duration::from_secs(86_400 * 30),
            Serial::from_random([1; 16]),
        )
        .unwrap();
        let root_signer = crate::Signer::from_parts(&root.cert_der, &root.key_pkcs8_der).unwrap();
        let int = new_intermediate(
            &root_signer,
            &td,
            1,
            now,
            Duration::from_secs(86_400 * 10),
            Serial::from_random([2; 16]),
        )
        .unwrap();
        let signer = crate::Signer::from_parts(&int.cert_der, &int.key_pkcs8_der).unwrap();

        let a = new_csr(&id()).unwrap();
        let b = new_csr(&id()).unwrap();
        assert_ne!(a.public_key_raw, b.public_key_raw, "a new key every time");
        let pem_text = a.csr_pem();
        assert!(pem_text.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
        assert!(a.key_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        // The key parses back as the PKCS#8 the PEM says.
        let back = crate::parse_pem_private_key(a.key_pem().as_bytes()).unwrap();
        assert_eq!(back.as_bytes(), a.key_pkcs8_der.as_bytes());

        let req = LeafRequest {
            identity: id(),
            lifetime: crate::MIN_LEAF_LIFETIME,
            server_auth: false,
            dns_names: vec![],
            ip_addresses: vec![],
            serial: Serial::from_random([3; 16]),
        };
        let leaf = issue_leaf(&signer, &req, KeySource::Csr(pem_text.as_bytes()), now).unwrap();
        assert!(leaf.key_pkcs8_der.is_none());
        assert!(a.certifies(&leaf.cert_der));
        assert!(!b.certifies(&leaf.cert_der), "another key's certificate");
        assert!(!a.certifies(b"not a certificate"));
        let info = crate::inspect(&leaf.cert_der).unwrap();
        assert_eq!(info.uri_sans, vec![id().to_string()]);
        assert_eq!(info.key_algorithm, "ECDSA P-256");
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let a = new_csr(&id()).unwrap();
        let shown = format!("{a:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let b64 = a.key_pem();
        let body = b64.lines().nth(1).unwrap();
        assert!(!shown.contains(body));
    }
}
