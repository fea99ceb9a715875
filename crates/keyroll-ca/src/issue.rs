//! Issuing workload certificates (SPEC §9, SPIFFE X.509-SVID): one URI SAN, not a CA, key usage
//! digitalSignature (critical), EKU clientAuth (+ serverAuth on request). The CA decides the
//! identity: a CSR only contributes its public key.

use std::net::IpAddr;
use std::time::Duration;

use keyroll_core::Timestamp;

use crate::{CaError, Fingerprint, SecretDer, Serial, Signer, SpiffeId};

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
    let _ = (issuer, req, key, now);
    todo!()
}
