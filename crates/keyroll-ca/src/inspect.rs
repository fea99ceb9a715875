//! What a certificate says, read with x509-parser: for `keyroll cert inspect`, the store's
//! bookkeeping, and the reasons of a rejected certificate.

use keyroll_core::Timestamp;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::time_conv::from_unix_secs;
use crate::{CaError, Fingerprint, Serial};

/// The fields of a certificate keyroll cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The serial as lowercase hex of its INTEGER bytes (no leading zero byte), as
    /// `openssl x509 -serial` prints it, lowercased.
    pub serial_hex: String,
    /// The serial, when it fits keyroll's 16-byte form (always, for certificates keyroll made).
    pub serial: Option<Serial>,
    /// The subject, RFC 4514 text (`CN=...`).
    pub subject: String,
    /// The issuer, RFC 4514 text.
    pub issuer: String,
    /// notBefore.
    pub not_before: Timestamp,
    /// notAfter.
    pub not_after: Timestamp,
    /// URI SANs, in order.
    pub uri_sans: Vec<String>,
    /// DNS SANs, in order.
    pub dns_sans: Vec<String>,
    /// IP SANs, in order.
    pub ip_sans: Vec<std::net::IpAddr>,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// EKU clientAuth.
    pub client_auth: bool,
    /// EKU serverAuth.
    pub server_auth: bool,
    /// SHA-256 of the DER.
    pub fingerprint: Fingerprint,
    /// The authority key identifier, when present.
    pub authority_key_id: Option<Vec<u8>>,
    /// The subject key identifier, when present.
    pub subject_key_id: Option<Vec<u8>>,
    /// Whether subject and issuer are the same name (a root).
    pub self_issued: bool,
    /// The public key's algorithm, e.g. `ECDSA P-256`.
    pub key_algorithm: String,
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
    /// The raw public key bits (the BIT STRING of the SubjectPublicKeyInfo).
    pub public_key_raw: Vec<u8>,
}

/// Reads a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, CaError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CaError::CertificateMalformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::CertificateMalformed(format!(
            "{} bytes after the certificate",
            rest.len()
        )));
    }
    Ok(info_of(&cert, der))
}

/// The fields of an already parsed certificate (shared with verification, which parses once).
pub(crate) fn info_of(cert: &X509Certificate<'_>, der: &[u8]) -> CertInfo {
    let raw_serial = cert.raw_serial();
    let trimmed: &[u8] = match raw_serial.iter().position(|b| *b != 0) {
        Some(i) => &raw_serial[i..],
        None => &raw_serial[raw_serial.len().saturating_sub(1)..],
    };
    let mut uri_sans = Vec::new();
    let mut dns_sans = Vec::new();
    let mut ip_sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ip_sans.push(std::net::IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ip_sans.push(std::net::IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    let (client_auth, server_auth) = match cert.extended_key_usage() {
        Ok(Some(eku)) => (
            eku.value.client_auth || eku.value.any,
            eku.value.server_auth || eku.value.any,
        ),
        _ => (false, false),
    };
    let mut authority_key_id = None;
    let mut subject_key_id = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ski) => {
                subject_key_id = Some(ski.0.to_vec());
            }
            _ => {}
        }
    }
    let spki = cert.public_key();
    CertInfo {
        serial_hex: hex::encode(trimmed),
        serial: Serial::from_der_integer(raw_serial),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: from_unix_secs(cert.validity().not_before.timestamp()),
        not_after: from_unix_secs(cert.validity().not_after.timestamp()),
        uri_sans,
        dns_sans,
        ip_sans,
        is_ca: cert.is_ca(),
        client_auth,
        server_auth,
        fingerprint: Fingerprint::of(der),
        authority_key_id,
        subject_key_id,
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        key_algorithm: key_algorithm(&spki.algorithm),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        public_key_raw: spki.subject_public_key.data.to_vec(),
    }
}

/// A readable name of a SubjectPublicKeyInfo algorithm.
pub(crate) fn key_algorithm(alg: &x509_parser::x509::AlgorithmIdentifier<'_>) -> String {
    let oid = alg.algorithm.to_id_string();
    let curve = alg
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    match (oid.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => "ECDSA P-256".to_owned(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => "ECDSA P-384".to_owned(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.35")) => "ECDSA P-521".to_owned(),
        ("1.2.840.10045.2.1", c) => format!("ECDSA curve {}", c.unwrap_or("?")),
        ("1.3.101.112", _) => "Ed25519".to_owned(),
        ("1.2.840.113549.1.1.1", _) => "RSA".to_owned(),
        (other, _) => format!("algorithm {other}"),
    }
}
