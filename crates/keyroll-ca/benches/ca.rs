//! Issuance and verification throughput of keyroll-ca (docs/benchmarks.md, "Certificate
//! authority"): `issue/generate` and `issue/csr` (budget ≥ 1,000 certificates/s), and
//! `verify/keyroll` against `verify/webpki_alone` on the same chain and CRLs (budget ≤ 2×).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keyroll_ca::{
    CertCode, IdentityPolicy, KeySource, LeafRequest, Serial, Signer, SpiffeId, TrustDomain,
    TrustStore, Usage, crl, issue_leaf, new_intermediate, new_root, verify,
};
use keyroll_core::Timestamp;
use rustls_pki_types::{CertificateDer, UnixTime};

const NOW: Timestamp = Timestamp::from_unix_millis(1_780_000_000_000);
const DAY: Duration = Duration::from_secs(86_400);

fn benches(c: &mut Criterion) {
    let td = TrustDomain::parse("example.org").unwrap();
    let root = new_root(&td, 1, NOW, 365 * DAY, Serial::from_random([1; 16])).unwrap();
    let root_s = Signer::from_parts(&root.cert_der, &root.key_pkcs8_der).unwrap();
    let inter =
        new_intermediate(&root_s, &td, 1, NOW, 90 * DAY, Serial::from_random([2; 16])).unwrap();
    let inter_s = Signer::from_parts(&inter.cert_der, &inter.key_pkcs8_der).unwrap();
    let req = LeafRequest {
        identity: SpiffeId::from_parts(&td, "prod", "billing").unwrap(),
        lifetime: DAY,
        server_auth: false,
        dns_names: vec![],
        ip_addresses: vec![],
        serial: Serial::from_random([3; 16]),
    };
    let csr_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&csr_key)
        .unwrap();
    let csr_der = csr.der().to_vec();

    let mut g = c.benchmark_group("issue");
    g.bench_function("generate", |b| {
        b.iter(|| issue_leaf(&inter_s, black_box(&req), KeySource::Generate, NOW).unwrap())
    });
    g.bench_function("csr", |b| {
        b.iter(|| issue_leaf(&inter_s, black_box(&req), KeySource::Csr(&csr_der), NOW).unwrap())
    });
    g.finish();

    let leaf = issue_leaf(&inter_s, &req, KeySource::Generate, NOW).unwrap();
    let crls = vec![
        crl(&root_s, 1, NOW, NOW.saturating_add(DAY), &[]).unwrap(),
        crl(&inter_s, 1, NOW, NOW.saturating_add(DAY), &[]).unwrap(),
    ];
    let trust = TrustStore::new(vec![root.cert_der.clone()], vec![], crls.clone()).unwrap();
    let policy = IdentityPolicy::new(td.clone(), &["prod/*"]).unwrap();
    let at = NOW.saturating_add(Duration::from_secs(3600));
    assert_eq!(
        verify(
            &trust,
            &policy,
            &leaf.cert_der,
            &[&inter.cert_der],
            Usage::Client,
            at
        )
        .code,
        CertCode::Valid
    );

    // webpki alone: the same anchors, intermediate and CRLs, parsed once outside the loop.
    let root_der = CertificateDer::from(root.cert_der.clone());
    let anchors = vec![
        webpki::anchor_from_trusted_cert(&root_der)
            .unwrap()
            .to_owned(),
    ];
    let inter_der = vec![CertificateDer::from(inter.cert_der.clone())];
    let parsed: Vec<webpki::CertRevocationList<'static>> = crls
        .iter()
        .map(|d| webpki::OwnedCertRevocationList::from_der(d).unwrap().into())
        .collect();
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = parsed.iter().collect();
    let leaf_der = CertificateDer::from(leaf.cert_der.clone());
    let time = UnixTime::since_unix_epoch(Duration::from_secs((at.unix_millis() / 1000) as u64));

    let mut g = c.benchmark_group("verify");
    g.bench_function("keyroll", |b| {
        b.iter(|| {
            verify(
                &trust,
                &policy,
                black_box(&leaf.cert_der),
                &[&inter.cert_der],
                Usage::Client,
                at,
            )
        })
    });
    g.bench_function("webpki_alone", |b| {
        b.iter(|| {
            let ee = webpki::EndEntityCert::try_from(black_box(&leaf_der)).unwrap();
            let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
                .unwrap()
                .with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                .build();
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &inter_der,
                time,
                webpki::KeyUsage::client_auth(),
                Some(revocation),
                None,
            )
            .map(|_| ())
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(ca, benches);
criterion_main!(ca);
