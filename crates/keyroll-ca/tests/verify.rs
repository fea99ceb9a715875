//! Every `CertCode` produced by a real certificate through `verify` (SPEC §9).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use keyroll_ca::{
    CertCode, IdentityPolicy, KeySource, LeafRequest, NewAuthority, RevocationReason, RevokedEntry,
    Serial, Signer, SpiffeId, TrustDomain, TrustStore, Usage, crl, issue_leaf, new_intermediate,
    new_root, pem, verify, verify_pem_chain,
};
use keyroll_core::Timestamp;
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};

const NOW: Timestamp = Timestamp::from_unix_millis(1_780_000_000_000);
const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3600);

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

fn serial() -> Serial {
    use std::sync::atomic::{AtomicU8, Ordering};
    static N: AtomicU8 = AtomicU8::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut b = [0x11u8; 16];
    b[15] = n;
    Serial::from_random(b)
}

struct Pki {
    root: NewAuthority,
    root_signer: Signer,
    inter: NewAuthority,
    inter_signer: Signer,
}

fn pki(generation: u32, lifetime: Duration) -> Pki {
    let root = new_root(&td("example.org"), generation, NOW, lifetime, serial()).unwrap();
    let root_signer = Signer::from_parts(&root.cert_der, &root.key_pkcs8_der).unwrap();
    let inter = new_intermediate(
        &root_signer,
        &td("example.org"),
        generation,
        NOW,
        lifetime,
        serial(),
    )
    .unwrap();
    let inter_signer = Signer::from_parts(&inter.cert_der, &inter.key_pkcs8_der).unwrap();
    Pki {
        root,
        root_signer,
        inter,
        inter_signer,
    }
}

/// CRLs of both issuers (the root's lists nothing), valid for a day from NOW.
fn crls(p: &Pki, revoked: &[RevokedEntry]) -> Vec<Vec<u8>> {
    vec![
        crl(&p.root_signer, 1, NOW, NOW.saturating_add(DAY), &[]).unwrap(),
        crl(&p.inter_signer, 1, NOW, NOW.saturating_add(DAY), revoked).unwrap(),
    ]
}

fn store(p: &Pki, revoked: &[RevokedEntry]) -> TrustStore {
    TrustStore::new(vec![p.root.cert_der.clone()], vec![], crls(p, revoked)).unwrap()
}

fn leaf(p: &Pki, id: &SpiffeId, server_auth: bool) -> keyroll_ca::IssuedLeaf {
    let req = LeafRequest {
        identity: id.clone(),
        lifetime: DAY,
        server_auth,
        dns_names: vec![],
        ip_addresses: vec![],
        serial: serial(),
    };
    issue_leaf(&p.inter_signer, &req, KeySource::Generate, NOW).unwrap()
}

fn billing() -> SpiffeId {
    SpiffeId::from_parts(&td("example.org"), "prod", "billing").unwrap()
}

fn policy() -> IdentityPolicy {
    IdentityPolicy::new(td("example.org"), &["prod/*"]).unwrap()
}

fn at(p: &Pki, trust: &TrustStore, der: &[u8], now: Timestamp) -> keyroll_ca::CertDecision {
    verify(
        trust,
        &policy(),
        der,
        &[&p.inter.cert_der],
        Usage::Client,
        now,
    )
}

/// A leaf signed by the intermediate with parameters the CA would never write.
fn custom_leaf(p: &Pki, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let key = KeyPair::try_from(p.inter.key_pkcs8_der.as_bytes()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(&p.inter.cert_der.clone().into(), key).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://example.org/prod/billing".try_into().unwrap(),
    )];
    params.serial_number = Some(SerialNumber::from_slice(serial().as_bytes()));
    params.not_before =
        time::OffsetDateTime::from_unix_timestamp(NOW.unix_millis() / 1000 - 60).unwrap();
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(NOW.unix_millis() / 1000 + 86_400).unwrap();
    params.use_authority_key_identifier_extension = true;
    edit(&mut params);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    params.signed_by(&key, &issuer).unwrap().der().to_vec()
}

#[test]
fn a_good_certificate_is_valid_with_its_facts_and_anchor() {
    let p = pki(1, 365 * DAY);
    let trust = store(&p, &[]);
    let l = leaf(&p, &billing(), false);
    let d = at(&p, &trust, &l.cert_der, NOW.saturating_add(HOUR));
    assert_eq!(d.code, CertCode::Valid, "{}", d.detail);
    assert_eq!(d.serial, Some(l.serial));
    assert_eq!(
        d.identity.as_deref(),
        Some("spiffe://example.org/prod/billing")
    );
    assert_eq!(d.anchor, Some(keyroll_ca::AnchorId::of(&p.root.cert_der)));
    assert_eq!(d.fingerprint, Some(l.fingerprint));
    assert_eq!(d.not_after, Some(l.not_after));
    assert!(d.issuer.unwrap().contains("keyroll intermediate CA g1"));
}

#[test]
fn expired_and_not_yet_valid() {
    let p = pki(1, 365 * DAY);
    let trust = store(&p, &[]);
    let l = leaf(&p, &billing(), false);
    let d = at(&p, &trust, &l.cert_der, NOW.saturating_add(DAY + HOUR));
    // The CRLs expire at the same instant as the leaf here; expiry is checked first.
    assert_eq!(d.code, CertCode::CertExpired, "{}", d.detail);
    assert_eq!(
        d.serial,
        Some(l.serial),
        "a rejected certificate still has its facts"
    );
    let d = at(&p, &trust, &l.cert_der, NOW.saturating_sub(HOUR));
    assert_eq!(d.code, CertCode::CertNotYetValid, "{}", d.detail);
}

#[test]
fn a_foreign_ca_is_an_unknown_issuer() {
    let p = pki(1, 365 * DAY);
    let other = pki(2, 365 * DAY);
    let trust = store(&p, &[]);
    let l = leaf(&other, &billing(), false);
    let d = verify(
        &trust,
        &policy(),
        &l.cert_der,
        &[&other.inter.cert_der],
        Usage::Client,
        NOW,
    );
    assert_eq!(d.code, CertCode::CertUnknownIssuer, "{}", d.detail);
}

#[test]
fn revoked_and_revocation_unknown() {
    let p = pki(1, 365 * DAY);
    let l = leaf(&p, &billing(), false);
    let revoked = [RevokedEntry {
        serial: l.serial,
        revoked_at: NOW,
        reason: RevocationReason::KeyCompromise,
    }];
    let trust = store(&p, &revoked);
    assert_eq!(at(&p, &trust, &l.cert_der, NOW).code, CertCode::CertRevoked);

    // No CRL at all.
    let bare = TrustStore::new(vec![p.root.cert_der.clone()], vec![], vec![]).unwrap();
    assert_eq!(
        at(&p, &bare, &l.cert_der, NOW).code,
        CertCode::CertRevocationUnknown
    );
    // Only the root's CRL: the intermediate's certificates have no status.
    let root_only = TrustStore::new(
        vec![p.root.cert_der.clone()],
        vec![],
        vec![crl(&p.root_signer, 1, NOW, NOW.saturating_add(DAY), &[]).unwrap()],
    )
    .unwrap();
    assert_eq!(
        at(&p, &root_only, &l.cert_der, NOW).code,
        CertCode::CertRevocationUnknown
    );
    // An expired CRL.
    let short = vec![
        crl(&p.root_signer, 1, NOW, NOW.saturating_add(HOUR), &[]).unwrap(),
        crl(&p.inter_signer, 1, NOW, NOW.saturating_add(HOUR), &[]).unwrap(),
    ];
    let stale = TrustStore::new(vec![p.root.cert_der.clone()], vec![], short).unwrap();
    let d = at(&p, &stale, &l.cert_der, NOW.saturating_add(2 * HOUR));
    assert_eq!(d.code, CertCode::CertRevocationUnknown, "{}", d.detail);
}

#[test]
fn a_tampered_signature_is_bad() {
    let p = pki(1, 365 * DAY);
    let trust = store(&p, &[]);
    let mut der = leaf(&p, &billing(), false).cert_der;
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let d = at(&p, &trust, &der, NOW);
    assert_eq!(d.code, CertCode::CertBadSignature, "{}", d.detail);
}

#[test]
fn wrong_usage_server_only_and_ca_as_leaf() {
    let p = pki(1, 365 * DAY);
    let trust = store(&p, &[]);
    let server_only = custom_leaf(&p, |c| {
        c.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    let d = at(&p, &trust, &server_only, NOW);
    assert_eq!(d.code, CertCode::CertWrongUsage, "{}", d.detail);
    let d = verify(
        &trust,
        &policy(),
        &p.inter.cert_der,
        &[],
        Usage::Client,
        NOW,
    );
    assert_eq!(d.code, CertCode::CertWrongUsage, "{}", d.detail);
}

#[test]
fn wrong_identity_domain_pattern_and_two_uris() {
    let p = pki(1, 365 * DAY);
    let trust = store(&p, &[]);
    let foreign = SpiffeId::from_parts(&td("other.org"), "prod", "billing").unwrap();
    let d = at(&p, &trust, &leaf(&p, &foreign, false).cert_der, NOW);
    assert_eq!(d.code, CertCode::CertWrongIdentity);
    assert!(d.detail.contains("other.org"), "{}", d.detail);

    let staging = SpiffeId::from_parts(&td("example.org"), "staging", "billing").unwrap();
    let d = at(&p, &trust, &leaf(&p, &staging, false).cert_der, NOW);
    assert_eq!(d.code, CertCode::CertWrongIdentity);
    assert!(d.detail.contains("staging/billing"), "{}", d.detail);
    let any_billing = IdentityPolicy::new(td("example.org"), &["*/billing"]).unwrap();
    let ok = verify(
        &trust,
        &any_billing,
        &leaf(&p, &staging, false).cert_der,
        &[&p.inter.cert_der],
        Usage::Client,
        NOW,
    );
    assert_eq!(ok.code, CertCode::Valid, "{}", ok.detail);

    let two = custom_leaf(&p, |c| {
        c.subject_alt_names.push(SanType::URI(
            "spiffe://example.org/prod/admin".try_into().unwrap(),
        ));
    });
    let d = at(&p, &trust, &two, NOW);
    assert_eq!(d.code, CertCode::CertWrongIdentity);
    assert!(d.detail.contains("2 URI SANs"), "{}", d.detail);
}

#[test]
fn garbage_is_malformed_and_nothing_is_missing() {
    let p = pki(1, 365 * DAY);
    let trust = store(&p, &[]);
    let d = at(&p, &trust, b"\x30\x03garbage", NOW);
    assert_eq!(d.code, CertCode::CertMalformed);
    assert!(d.fingerprint.is_some());
    assert_eq!(at(&p, &trust, b"", NOW).code, CertCode::CertMissing);
    assert_eq!(
        verify_pem_chain(&trust, &policy(), b"  \n", Usage::Client, NOW).code,
        CertCode::CertMissing
    );
    assert_eq!(
        verify_pem_chain(&trust, &policy(), b"nonsense", Usage::Client, NOW).code,
        CertCode::CertMalformed
    );
}

#[test]
fn the_anchor_is_the_right_one_during_rotation_and_pruning_drops_expired_roots() {
    let old = pki(1, 30 * DAY);
    let new = pki(2, 365 * DAY);
    let mut all_crls = crls(&old, &[]);
    all_crls.extend(crls(&new, &[]));
    let bundle = format!(
        "{}{}{}{}",
        pem("CERTIFICATE", &old.root.cert_der),
        pem("CERTIFICATE", &new.root.cert_der),
        pem("CERTIFICATE", &new.inter.cert_der),
        all_crls
            .iter()
            .map(|c| pem("X509 CRL", c))
            .collect::<String>()
    );
    let mut trust = TrustStore::from_bundle_pem(bundle.as_bytes()).unwrap();
    assert_eq!(trust.anchors().count(), 2);
    let l = leaf(&new, &billing(), false);
    // The new intermediate comes from the bundle: the peer sends only its leaf.
    let d = verify(&trust, &policy(), &l.cert_der, &[], Usage::Client, NOW);
    assert_eq!(d.code, CertCode::Valid, "{}", d.detail);
    assert_eq!(d.anchor, Some(keyroll_ca::AnchorId::of(&new.root.cert_der)));
    let lo = leaf(&old, &billing(), false);
    let d = at(&old, &trust, &lo.cert_der, NOW);
    assert_eq!(d.anchor, Some(keyroll_ca::AnchorId::of(&old.root.cert_der)));

    let pruned = trust.prune_expired(NOW.saturating_add(31 * DAY));
    assert_eq!(pruned, vec![keyroll_ca::AnchorId::of(&old.root.cert_der)]);
    let d = at(&old, &trust, &lo.cert_der, NOW);
    assert_eq!(d.code, CertCode::CertUnknownIssuer, "{}", d.detail);
}
