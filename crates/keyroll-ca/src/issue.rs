//! Issuing workload certificates (SPEC §9, SPIFFE X.509-SVID): one URI SAN, not a CA, key usage
//! digitalSignature (critical), EKU clientAuth (+ serverAuth on request). The CA decides the
//! identity: a CSR only contributes its public key.

use std::net::IpAddr;
use std::time::Duration;

use keyroll_core::Timestamp;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateSigningRequestDer, SignatureVerificationAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::authority::{check_valid, gen_err, new_key};
use crate::inspect::key_algorithm;
use crate::time_conv::{to_datetime, truncate};
use crate::{CaError, Fingerprint, SecretDer, Serial, Signer, SpiffeId};

/// How far notBefore is set back from `now`: a relying party whose clock is up to a minute behind
/// the CA's must not see a fresh certificate as `cert_not_yet_valid`.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The shortest leaf lifetime accepted: 5 minutes.
pub const MIN_LEAF_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// The leaf lifetime when none is asked for: 24 hours.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Where the leaf's key comes from.
#[derive(Debug, Clone, Copy)]
pub enum KeySource<'a> {
    /// A new ECDSA P-256 key pair, returned in [`IssuedLeaf::key_pkcs8_der`].
    Generate,
    /// A PKCS#10 request, PEM or DER. Its signature is checked; its subject, SANs and extensions
    /// are ignored. Keys accepted: ECDSA P-256, ECDSA P-384, Ed25519.
    Csr(&'a [u8]),
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// The identity, written as the one URI SAN.
    pub identity: SpiffeId,
    /// How long the certificate is valid (at least [`MIN_LEAF_LIFETIME`]; capped at the issuer's
    /// notAfter).
    pub lifetime: Duration,
    /// Also allow serverAuth (clientAuth is always there).
    pub server_auth: bool,
    /// Extra DNS SANs; only with `server_auth`.
    pub dns_names: Vec<String>,
    /// Extra IP SANs; only with `server_auth`.
    pub ip_addresses: Vec<IpAddr>,
    /// The serial (from [`Serial::from_random`]).
    pub serial: Serial,
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The generated private key (PKCS#8 DER) with [`KeySource::Generate`]; `None` for a CSR.
    pub key_pkcs8_der: Option<SecretDer>,
    /// Its serial.
    pub serial: Serial,
    /// notBefore as written (whole seconds).
    pub not_before: Timestamp,
    /// notAfter as written (whole seconds).
    pub not_after: Timestamp,
    /// SHA-256 of the DER.
    pub fingerprint: Fingerprint,
}

/// Issues a workload certificate signed by `issuer` at `now`.
pub fn issue_leaf(
    issuer: &Signer,
    req: &LeafRequest,
    key: KeySource<'_>,
    now: Timestamp,
) -> Result<IssuedLeaf, CaError> {
    if req.lifetime < MIN_LEAF_LIFETIME {
        return Err(CaError::LifetimeTooShort {
            asked: req.lifetime,
            minimum: MIN_LEAF_LIFETIME,
        });
    }
    if !req.server_auth && (!req.dns_names.is_empty() || !req.ip_addresses.is_empty()) {
        return Err(CaError::SansWithoutServerAuth);
    }
    check_valid(issuer, now)?;
    let not_before = truncate(now.saturating_sub(CLOCK_SKEW));
    let not_after = truncate(now.saturating_add(req.lifetime)).min(issuer.not_after);

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // The CN is informative only (relying parties read the URI SAN): `ENV/SERVICE`.
    dn.push(DnType::CommonName, req.identity.path());
    params.distinguished_name = dn;
    let uri = req.identity.to_string();
    let mut sans = vec![SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|_| CaError::InvalidDnsName(uri.clone()))?,
    )];
    for d in &req.dns_names {
        sans.push(SanType::DnsName(d.as_str().try_into().map_err(|_| {
            CaError::InvalidDnsName(d.chars().take(80).collect())
        })?));
    }
    sans.extend(req.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    // rcgen always marks key usage critical (SPEC §9: digitalSignature, critical).
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if req.server_auth {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.serial_number = Some(SerialNumber::from_slice(req.serial.as_bytes()));
    params.not_before = to_datetime(not_before)?;
    params.not_after = to_datetime(not_after)?;
    params.use_authority_key_identifier_extension = true;

    let (cert, key_pkcs8_der) = match key {
        KeySource::Generate => {
            let key = new_key()?;
            let cert = params.signed_by(&key, &issuer.issuer).map_err(gen_err)?;
            (cert, Some(SecretDer::new(key.serialize_der())))
        }
        KeySource::Csr(bytes) => {
            let public = csr_public_key(bytes)?;
            (
                params.signed_by(&public, &issuer.issuer).map_err(gen_err)?,
                None,
            )
        }
    };
    let cert_der = cert.der().to_vec();
    Ok(IssuedLeaf {
        fingerprint: Fingerprint::of(&cert_der),
        cert_der,
        key_pkcs8_der,
        serial: req.serial,
        not_before,
        not_after,
    })
}

/// The public key of a CSR whose self-signature verifies. Everything else in it (subject, SANs,
/// extensions) is ignored: the CA decides the identity.
struct CsrKey {
    raw: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

/// Parses a PEM or DER PKCS#10 request, checks its key type and signature, returns its key.
fn csr_public_key(bytes: &[u8]) -> Result<CsrKey, CaError> {
    let der: Vec<u8> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateSigningRequestDer::from_pem_slice(bytes)
            .map_err(|_| {
                CaError::CsrMalformed("no readable CERTIFICATE REQUEST PEM section".to_owned())
            })?
            .as_ref()
            .to_vec()
    } else {
        bytes.to_vec()
    };
    let (_, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| CaError::CsrMalformed(format!("not DER PKCS#10: {e}")))?;
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let key_name = key_algorithm(&spki.algorithm);
    let sig_oid = csr.signature_algorithm.algorithm.to_id_string();
    // (key type, signature algorithm) -> what the certificate is written with, and the verifier.
    use webpki::aws_lc_rs as algs;
    let (alg, verifier): (
        &'static rcgen::SignatureAlgorithm,
        Option<&dyn SignatureVerificationAlgorithm>,
    ) = match (key_name.as_str(), sig_oid.as_str()) {
        ("ECDSA P-256", "1.2.840.10045.4.3.2") => (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(algs::ECDSA_P256_SHA256),
        ),
        ("ECDSA P-256", "1.2.840.10045.4.3.3") => (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(algs::ECDSA_P256_SHA384),
        ),
        ("ECDSA P-384", "1.2.840.10045.4.3.3") => (
            &rcgen::PKCS_ECDSA_P384_SHA384,
            Some(algs::ECDSA_P384_SHA384),
        ),
        ("ECDSA P-384", "1.2.840.10045.4.3.2") => (
            &rcgen::PKCS_ECDSA_P384_SHA384,
            Some(algs::ECDSA_P384_SHA256),
        ),
        ("Ed25519", "1.3.101.112") => (&rcgen::PKCS_ED25519, Some(algs::ED25519)),
        ("ECDSA P-256" | "ECDSA P-384" | "Ed25519", other) => {
            return Err(CaError::CsrMalformed(format!(
                "signature algorithm {other} does not match its {key_name} key"
            )));
        }
        (other, _) => return Err(CaError::CsrUnsupportedKey(other.to_owned())),
    };
    let raw = spki.subject_public_key.data.to_vec();
    let ok = verifier.is_some_and(|v| {
        v.verify_signature(&raw, info.raw, &csr.signature_value.data)
            .is_ok()
    });
    if !ok {
        return Err(CaError::CsrBadSignature);
    }
    Ok(CsrKey { raw, alg })
}
