//! PEM in and out. Reading goes through `rustls-pki-types`' `PemObject` (HOUSE.md: not the
//! archived rustls-pemfile); writing is RFC 7468 with 64-column lines.

use base64::Engine;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::{CaError, SecretDer};

/// `-----BEGIN {label}-----`, base64 in 64-column lines, `-----END {label}-----`, each line ending
/// in `\n`. Labels used: `CERTIFICATE`, `PRIVATE KEY`, `X509 CRL`, `CERTIFICATE REQUEST`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// What went wrong reading PEM, without echoing the input (it may be a private key).
fn reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "a section is not valid base64".to_owned(),
        pem::Error::NoItemsFound => "no section of that type".to_owned(),
        pem::Error::SectionTooLarge => "a section is larger than 256 MB".to_owned(),
        _ => "unreadable PEM".to_owned(),
    }
}

/// Every `CERTIFICATE` section, in order (other sections are skipped). At least one is required.
pub fn parse_pem_certs(text: &[u8]) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(text) {
        let der = item.map_err(|e| CaError::Pem {
            label: "certificate",
            reason: reason(&e),
        })?;
        out.push(der.to_vec());
    }
    if out.is_empty() {
        return Err(CaError::Pem {
            label: "certificate",
            reason: "no CERTIFICATE section found".to_owned(),
        });
    }
    Ok(out)
}

/// Every `X509 CRL` section, in order (other sections are skipped); none is fine.
pub fn parse_pem_crls(text: &[u8]) -> Result<Vec<Vec<u8>>, CaError> {
    CertificateRevocationListDer::pem_slice_iter(text)
        .map(|item| {
            item.map(|der| der.to_vec()).map_err(|e| CaError::Pem {
                label: "CRL",
                reason: reason(&e),
            })
        })
        .collect()
}

/// The first private key (`PRIVATE KEY`, i.e. PKCS#8; SEC1 `EC PRIVATE KEY` and PKCS#1
/// `RSA PRIVATE KEY` are refused because the rest of keyroll stores PKCS#8 only).
pub fn parse_pem_private_key(text: &[u8]) -> Result<SecretDer, CaError> {
    match PrivateKeyDer::from_pem_slice(text) {
        Ok(PrivateKeyDer::Pkcs8(der)) => Ok(SecretDer::new(der.secret_pkcs8_der().to_vec())),
        Ok(_) => Err(CaError::Pem {
            label: "private key",
            reason: "the key is not PKCS#8 (expected a PRIVATE KEY section; convert with openssl pkcs8 -topk8 -nocrypt)".to_owned(),
        }),
        Err(e) => Err(CaError::Pem {
            label: "private key",
            reason: match e {
                pem::Error::NoItemsFound => "no PRIVATE KEY section found".to_owned(),
                other => reason(&other),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_wraps_at_64_columns() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = pem("CERTIFICATE", &der);
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(parse_pem_certs(text.as_bytes()), Ok(vec![der]));
    }

    #[test]
    fn no_certificate_is_a_clear_error() {
        let err = parse_pem_certs(b"hello").unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a PEM certificate: no CERTIFICATE section found"
        );
    }
}
