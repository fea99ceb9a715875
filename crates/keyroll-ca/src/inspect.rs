//! What a certificate says, read with x509-parser: for `keyroll cert inspect`, the store's
//! bookkeeping, and the reasons of a rejected certificate.

use keyroll_core::Timestamp;

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
}

/// Reads a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, CaError> {
    let _ = der;
    todo!()
}
