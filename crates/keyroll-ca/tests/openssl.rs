//! The certificate profile checked by a real openssl: chains verify, the extensions are the ones
//! SPEC §9 asks for, CRLs list revoked serials with their reason, and CSRs made by `openssl req`
//! are honoured with their SANs ignored. Fails (does not skip) under `CI=true` without openssl.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keyroll_ca::{
    CaError, IssuedLeaf, KeySource, LeafRequest, RevocationReason, RevokedEntry, Serial, Signer,
    SpiffeId, TrustDomain, crl, issue_leaf, new_intermediate, new_root, pem,
};
use keyroll_core::Timestamp;

const NOW: Timestamp = Timestamp::from_unix_millis(1_780_000_000_000);
const DAY: Duration = Duration::from_secs(86_400);

/// openssl, or `None` outside CI when it is not installed.
fn openssl() -> Option<&'static str> {
    let found = Command::new("openssl").arg("version").output().is_ok();
    match (found, std::env::var("CI").as_deref() == Ok("true")) {
        (true, _) => Some("openssl"),
        (false, true) => panic!("openssl is required under CI=true but was not found"),
        (false, false) => {
            eprintln!("skipping: openssl not installed");
            None
        }
    }
}

fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn serial(n: u8) -> Serial {
    Serial::from_random([n; 16])
}

struct Ca {
    root: Signer,
    inter: Signer,
}

fn ca() -> Ca {
    let td = TrustDomain::parse("example.org").unwrap();
    let r = new_root(&td, 1, NOW, 365 * DAY, serial(1)).unwrap();
    let root = Signer::from_parts(&r.cert_der, &r.key_pkcs8_der).unwrap();
    let i = new_intermediate(&root, &td, 1, NOW, 90 * DAY, serial(2)).unwrap();
    let inter = Signer::from_parts(&i.cert_der, &i.key_pkcs8_der).unwrap();
    Ca { root, inter }
}

fn request(svc: &str, server_auth: bool, s: Serial) -> LeafRequest {
    let td = TrustDomain::parse("example.org").unwrap();
    LeafRequest {
        identity: SpiffeId::from_parts(&td, "prod", svc).unwrap(),
        lifetime: DAY,
        server_auth,
        dns_names: if server_auth {
            vec!["billing.internal".to_owned()]
        } else {
            vec![]
        },
        ip_addresses: vec![],
        serial: s,
    }
}

/// Writes cert.pem (leaf then intermediate) and ca.pem (root) as `keyroll cert issue` does.
fn write_chain(dir: &Path, ca: &Ca, leaf: &IssuedLeaf) {
    let chain = pem("CERTIFICATE", &leaf.cert_der) + &pem("CERTIFICATE", ca.inter.cert_der());
    std::fs::write(dir.join("cert.pem"), chain).unwrap();
    std::fs::write(dir.join("ca.pem"), pem("CERTIFICATE", ca.root.cert_der())).unwrap();
}

#[test]
fn openssl_verifies_the_chain_and_sees_the_spec_profile() {
    let Some(_) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let leaf = issue_leaf(
        &ca.inter,
        &request("billing", false, serial(3)),
        KeySource::Generate,
        NOW,
    )
    .unwrap();
    assert!(leaf.key_pkcs8_der.is_some());
    write_chain(dir.path(), &ca, &leaf);
    let at = (NOW.unix_millis() / 1000 + 60).to_string();
    let (ok, out) = run(
        dir.path(),
        &[
            "verify",
            "-attime",
            &at,
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "cert.pem",
            "cert.pem",
        ],
    );
    assert!(ok, "openssl verify failed: {out}");
    assert!(out.contains("cert.pem: OK"), "{out}");

    let (ok, text) = run(dir.path(), &["x509", "-in", "cert.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("URI:spiffe://example.org/prod/billing"),
        "{text}"
    );
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(!text.contains("DNS:"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");
    // notBefore is one minute before `now` (clock skew), notAfter `now` + 24h.
    let (_, dates) = run(
        dir.path(),
        &["x509", "-in", "cert.pem", "-noout", "-dates", "-serial"],
    );
    assert!(
        dates.contains("notBefore=May 28 20:25:40 2026 GMT"),
        "{dates}"
    );
    assert!(
        dates.contains("notAfter=May 29 20:26:40 2026 GMT"),
        "{dates}"
    );
    let serial_line = dates
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap()
        .to_ascii_lowercase();
    assert_eq!(serial_line, leaf.serial.to_string());
    assert_eq!(serial_line.len(), 32, "16-byte serial");
}

#[test]
fn server_auth_adds_the_eku_and_dns_names() {
    let Some(_) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let leaf = issue_leaf(
        &ca.inter,
        &request("billing", true, serial(4)),
        KeySource::Generate,
        NOW,
    )
    .unwrap();
    write_chain(dir.path(), &ca, &leaf);
    let (ok, text) = run(dir.path(), &["x509", "-in", "cert.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("TLS Web Client Authentication, TLS Web Server Authentication")
            || text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("DNS:billing.internal"), "{text}");
}

#[test]
fn serials_differ_per_leaf_and_lifetime_is_capped_by_the_issuer() {
    let ca = ca();
    let a = issue_leaf(
        &ca.inter,
        &request("a", false, serial(5)),
        KeySource::Generate,
        NOW,
    )
    .unwrap();
    let b = issue_leaf(
        &ca.inter,
        &request("a", false, serial(6)),
        KeySource::Generate,
        NOW,
    )
    .unwrap();
    assert_ne!(a.serial, b.serial);
    assert_ne!(a.fingerprint, b.fingerprint);
    let mut long = request("a", false, serial(7));
    long.lifetime = 1000 * DAY;
    let capped = issue_leaf(&ca.inter, &long, KeySource::Generate, NOW).unwrap();
    assert_eq!(capped.not_after, ca.inter.not_after());
}

#[test]
fn refusals_have_clear_messages() {
    let ca = ca();
    let mut short = request("a", false, serial(8));
    short.lifetime = Duration::from_secs(60);
    let err = issue_leaf(&ca.inter, &short, KeySource::Generate, NOW).unwrap_err();
    assert!(matches!(err, CaError::LifetimeTooShort { .. }));
    assert_eq!(err.to_string(), "lifetime 1m is below the minimum of 5m");

    let mut dns = request("a", false, serial(9));
    dns.dns_names = vec!["x.internal".to_owned()];
    assert_eq!(
        issue_leaf(&ca.inter, &dns, KeySource::Generate, NOW).unwrap_err(),
        CaError::SansWithoutServerAuth
    );

    let later = NOW.saturating_add(100 * DAY);
    let err = issue_leaf(
        &ca.inter,
        &request("a", false, serial(10)),
        KeySource::Generate,
        later,
    )
    .unwrap_err();
    assert!(matches!(err, CaError::IssuerNotValid { .. }), "{err}");

    let err = issue_leaf(
        &ca.inter,
        &request("a", false, serial(11)),
        KeySource::Csr(b"not a csr"),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(err, CaError::CsrMalformed(_)), "{err}");
}

#[test]
fn openssl_lists_revoked_serials_with_their_reason() {
    let Some(_) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let revoked = serial(12);
    let der = crl(
        &ca.inter,
        7,
        NOW,
        NOW.saturating_add(DAY),
        &[RevokedEntry {
            serial: revoked,
            revoked_at: NOW,
            reason: RevocationReason::KeyCompromise,
        }],
    )
    .unwrap();
    std::fs::write(dir.path().join("crl.pem"), pem("X509 CRL", &der)).unwrap();
    std::fs::write(
        dir.path().join("inter.pem"),
        pem("CERTIFICATE", ca.inter.cert_der()),
    )
    .unwrap();
    let (ok, text) = run(dir.path(), &["crl", "-in", "crl.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("serial number: {revoked}")),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let (ok, out) = run(
        dir.path(),
        &["crl", "-in", "crl.pem", "-noout", "-CAfile", "inter.pem"],
    );
    assert!(ok && out.contains("verify OK"), "{out}");
}

#[test]
fn an_openssl_csr_is_honoured_and_its_sans_ignored() {
    let Some(_) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = run(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "req.pem",
            "-subj",
            "/CN=evil",
            "-addext",
            "subjectAltName=URI:spiffe://evil.org/prod/admin,DNS:evil.example",
        ],
    );
    assert!(ok, "{out}");
    let csr = std::fs::read(dir.path().join("req.pem")).unwrap();
    let ca = ca();
    let leaf = issue_leaf(
        &ca.inter,
        &request("billing", false, serial(13)),
        KeySource::Csr(&csr),
        NOW,
    )
    .unwrap();
    assert!(leaf.key_pkcs8_der.is_none());
    write_chain(dir.path(), &ca, &leaf);
    let (ok, text) = run(dir.path(), &["x509", "-in", "cert.pem", "-noout", "-text"]);
    assert!(ok);
    assert!(
        text.contains("URI:spiffe://example.org/prod/billing"),
        "{text}"
    );
    assert!(!text.contains("evil"), "{text}");
    // The certificate carries the CSR's key.
    let (_, cert_key) = run(
        dir.path(),
        &["x509", "-in", "cert.pem", "-noout", "-pubkey"],
    );
    let (_, csr_key) = run(dir.path(), &["pkey", "-in", "key.pem", "-pubout"]);
    assert_eq!(cert_key, csr_key);

    // DER works too.
    let (ok, _) = run(
        dir.path(),
        &[
            "req", "-in", "req.pem", "-outform", "DER", "-out", "req.der",
        ],
    );
    assert!(ok);
    let der = std::fs::read(dir.path().join("req.der")).unwrap();
    issue_leaf(
        &ca.inter,
        &request("billing", false, serial(14)),
        KeySource::Csr(&der),
        NOW,
    )
    .unwrap();

    // A flipped byte in the signature is refused.
    let mut broken = der.clone();
    let last = broken.len() - 3;
    broken[last] ^= 0x55;
    let err = issue_leaf(
        &ca.inter,
        &request("b", false, serial(15)),
        KeySource::Csr(&broken),
        NOW,
    )
    .unwrap_err();
    assert!(
        matches!(err, CaError::CsrBadSignature | CaError::CsrMalformed(_)),
        "{err}"
    );
}

#[test]
fn an_rsa_csr_is_refused_with_a_clear_error() {
    let Some(_) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = run(
        dir.path(),
        &[
            "req", "-new", "-newkey", "rsa:1024", "-nodes", "-keyout", "key.pem", "-out",
            "req.pem", "-subj", "/CN=old",
        ],
    );
    assert!(ok, "{out}");
    let csr = std::fs::read(dir.path().join("req.pem")).unwrap();
    let ca = ca();
    let err = issue_leaf(
        &ca.inter,
        &request("a", false, serial(16)),
        KeySource::Csr(&csr),
        NOW,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the CSR's key is not accepted: RSA (accepted: ECDSA P-256, ECDSA P-384, Ed25519)"
    );
}
