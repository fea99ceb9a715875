//! Certificate authorities: making a root and an intermediate (ECDSA P-256, SPEC §9), and the
//! [`Signer`] an authority signs with once its certificate and key are loaded back.

use std::fmt;
use std::time::Duration;

use keyroll_core::{Timestamp, rfc3339};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;

use crate::time_conv::{to_datetime, truncate};
use crate::{CaError, Fingerprint, Serial, TrustDomain, inspect};

/// Private key bytes (PKCS#8 DER). Never printed: `Debug` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretDer(Vec<u8>);

impl SecretDer {
    /// Wraps key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretDer(bytes)
    }

    /// The key bytes, for encryption at rest or a key file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretDer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A freshly made authority: its certificate, its key, and what the store keeps about it.
#[derive(Debug, Clone)]
pub struct NewAuthority {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER (to be encrypted at rest by the caller).
    pub key_pkcs8_der: SecretDer,
    /// The certificate's serial.
    pub serial: Serial,
    /// notBefore as written in the certificate (whole seconds).
    pub not_before: Timestamp,
    /// notAfter as written in the certificate (whole seconds).
    pub not_after: Timestamp,
    /// The subject CN, e.g. `keyroll root CA g3 (example.org)`.
    pub subject: String,
}

/// An authority that can sign: a CA certificate with its private key.
pub struct Signer {
    pub(crate) cert_der: Vec<u8>,
    pub(crate) issuer: rcgen::Issuer<'static, KeyPair>,
    pub(crate) not_before: Timestamp,
    pub(crate) not_after: Timestamp,
    pub(crate) subject: String,
    pub(crate) fingerprint: Fingerprint,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("subject", &self.subject)
            .field("fingerprint", &self.fingerprint)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Signer {
    /// Loads an authority: its certificate (must be a CA allowed to sign certificates) and its
    /// PKCS#8 key (must match the certificate's public key).
    pub fn from_parts(cert_der: &[u8], key_pkcs8_der: &SecretDer) -> Result<Signer, CaError> {
        let info = inspect(cert_der)?;
        if !info.is_ca {
            return Err(CaError::NotAnIssuer {
                subject: info.subject,
                reason: "it is not a CA certificate (basicConstraints CA:FALSE or absent)"
                    .to_owned(),
            });
        }
        let key = KeyPair::try_from(key_pkcs8_der.as_bytes())
            .map_err(|_| CaError::Key("not a PKCS#8 ECDSA or Ed25519 private key".to_owned()))?;
        if key.public_key_raw() != info.public_key_raw.as_slice() {
            return Err(CaError::Key(format!(
                "the key does not belong to the certificate {:?}",
                info.subject
            )));
        }
        let issuer = rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(cert_der), key)
            .map_err(|e| CaError::NotAnIssuer {
                subject: info.subject.clone(),
                reason: e.to_string(),
            })?;
        Ok(Signer {
            cert_der: cert_der.to_vec(),
            issuer,
            not_before: info.not_before,
            not_after: info.not_after,
            subject: info.common_name.unwrap_or(info.subject),
            fingerprint: info.fingerprint,
        })
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// notBefore.
    pub fn not_before(&self) -> Timestamp {
        self.not_before
    }

    /// notAfter.
    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// The subject CN.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// SHA-256 of the certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// A self-signed root CA for `td`, generation `generation` (shown in its name so that rotated
/// roots are told apart), valid from `now` for `lifetime`.
pub fn new_root(
    td: &TrustDomain,
    generation: u32,
    now: Timestamp,
    lifetime: Duration,
    serial: Serial,
) -> Result<NewAuthority, CaError> {
    let subject = format!("keyroll root CA g{generation} ({td})");
    let not_before = truncate(now);
    let not_after = truncate(now.saturating_add(lifetime));
    let params = ca_params(&subject, None, not_before, not_after, serial)?;
    let key = new_key()?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(NewAuthority {
        cert_der: cert.der().to_vec(),
        key_pkcs8_der: SecretDer::new(key.serialize_der()),
        serial,
        not_before,
        not_after,
        subject,
    })
}

/// An intermediate CA signed by `root` (pathlen 0), valid from `now` for `lifetime` but never past
/// the root's notAfter.
pub fn new_intermediate(
    root: &Signer,
    td: &TrustDomain,
    generation: u32,
    now: Timestamp,
    lifetime: Duration,
    serial: Serial,
) -> Result<NewAuthority, CaError> {
    check_valid(root, now)?;
    let subject = format!("keyroll intermediate CA g{generation} ({td})");
    let not_before = truncate(now);
    let not_after = truncate(now.saturating_add(lifetime)).min(root.not_after);
    let params = ca_params(&subject, Some(0), not_before, not_after, serial)?;
    let key = new_key()?;
    let cert = params.signed_by(&key, &root.issuer).map_err(gen_err)?;
    Ok(NewAuthority {
        cert_der: cert.der().to_vec(),
        key_pkcs8_der: SecretDer::new(key.serialize_der()),
        serial,
        not_before,
        not_after,
        subject,
    })
}

/// An ECDSA P-256 key pair (SPEC §9), from the operating system's RNG inside aws-lc-rs.
pub(crate) fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Generate {
        what: "key pair",
        reason: e.to_string(),
    })
}

pub(crate) fn gen_err(e: rcgen::Error) -> CaError {
    CaError::Generate {
        what: "certificate",
        reason: e.to_string(),
    }
}

/// An error when `signer` is not valid at `now`: nothing is issued by an expired or future CA.
pub(crate) fn check_valid(signer: &Signer, now: Timestamp) -> Result<(), CaError> {
    if now < signer.not_before || now > signer.not_after {
        return Err(CaError::IssuerNotValid {
            subject: signer.subject.clone(),
            now: rfc3339(now),
            not_before: rfc3339(signer.not_before),
            not_after: rfc3339(signer.not_after),
        });
    }
    Ok(())
}

/// The profile shared by roots and intermediates: CN, basicConstraints (critical; rcgen always
/// marks it so), key usage keyCertSign + cRLSign (critical), the serial and validity given.
fn ca_params(
    subject: &str,
    path_len: Option<u8>,
    not_before: Timestamp,
    not_after: Timestamp,
    serial: Serial,
) -> Result<CertificateParams, CaError> {
    if not_after <= not_before {
        return Err(CaError::InvalidLifetime(
            subject.to_owned(),
            "the CA would expire before it is valid",
        ));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, subject);
    dn.push(DnType::OrganizationName, "keyroll");
    params.distinguished_name = dn;
    params.is_ca = match path_len {
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
        None => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    params.not_before = to_datetime(not_before)?;
    params.not_after = to_datetime(not_after)?;
    params.use_authority_key_identifier_extension = path_len.is_some();
    Ok(params)
}
