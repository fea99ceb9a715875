//! The CA on the service layer with a manual clock: `ca init` writes a root and an
//! intermediate whose keys are sealed under the master key, installs the trust store, and a
//! second init is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use keyroll_core::Timestamp;
use keyroll_server::clock::{Clock, Randomness};
use keyroll_server::service::ServiceError;
use keyroll_server::service::audit::Actor;
use keyroll_server::service::ca::{InitRequest, init, signer};
use keyroll_server::{AppState, Config, Overrides};
use keyroll_store::{AuthorityKind, AuthorityState, SqliteStore};

/// 2026-12-01T00:00:00Z.
fn t0() -> Timestamp {
    Timestamp::from_unix_millis(1_796_083_200_000)
}

async fn state(dir: &tempfile::TempDir) -> Arc<AppState> {
    let store = SqliteStore::open(&dir.path().join("keyroll.db"))
        .await
        .unwrap();
    let overrides = Overrides {
        data_dir: Some(dir.path().to_path_buf()),
        ..Overrides::default()
    };
    let config = Config::load(None, &overrides).unwrap();
    let state = AppState::with(
        Arc::new(store),
        config,
        Clock::manual(t0()),
        Randomness::os(),
    );
    state.load().await.unwrap();
    state
}

#[tokio::test]
async fn init_makes_a_sealed_root_and_intermediate_and_installs_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(&dir).await;
    assert!(state.ca.trust().borrow().is_none());
    let actor = Actor::system("rq_test".into());
    let req = InitRequest {
        trust_domain: keyroll_ca::TrustDomain::parse("example.org").unwrap(),
        root_ttl: None,
        intermediate_ttl: None,
    };
    let made = init(&state, &actor, req.clone()).await.unwrap();
    assert_eq!(made.bundle_version, 1);
    assert_eq!(state.ca.bundle_version(), 1);
    assert_eq!(state.ca.trust_domain().unwrap().as_str(), "example.org");
    let trust = state.ca.trust().borrow().clone().unwrap();
    assert_eq!(trust.anchors().count(), 1, "the root is the one anchor");

    let stored = state.store.ca_state().await.unwrap();
    assert_eq!(stored.authorities.len(), 2);
    assert_eq!(stored.crls.len(), 2, "one CRL per issuer");
    let root = &stored.authorities[0];
    let int = &stored.authorities[1];
    assert_eq!(root.kind, AuthorityKind::Root);
    assert_eq!(int.parent_id.as_deref(), Some(made.root.as_str()));
    assert_eq!(int.state, AuthorityState::Active);
    assert_eq!(root.serial.len(), 32, "16-byte serial in hex");
    assert_ne!(root.serial, int.serial);
    // The sealed key opens under the master key only with its own id.
    let s = signer(&state, int).unwrap();
    assert_eq!(s.cert_der(), int.cert_der.as_slice());
    let mut moved = int.clone();
    moved.id = root.id.clone();
    assert!(signer(&state, &moved).is_err());
    let audit = state.store.list_audit(10).await.unwrap();
    assert!(
        audit.iter().any(|a| a.action == "ca.initialized"),
        "{audit:?}"
    );
    // No private key text in the audit detail.
    assert!(audit.iter().all(|a| !a.detail.contains("PRIVATE")));

    let err = init(&state, &actor, req).await.unwrap_err();
    assert!(matches!(err, ServiceError::AlreadyExists(_)), "{err:?}");
    assert_eq!(state.store.ca_state().await.unwrap().authorities.len(), 2);
}

#[tokio::test]
async fn a_master_key_that_does_not_open_the_ca_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(&dir).await;
    let req = InitRequest {
        trust_domain: keyroll_ca::TrustDomain::parse("example.org").unwrap(),
        root_ttl: None,
        intermediate_ttl: None,
    };
    init(&state, &Actor::system("rq_test".into()), req)
        .await
        .unwrap();
    keyroll_server::service::ca::check_sealed_keys(&state)
        .await
        .unwrap();
    // Another state on the same database with a key of its own (AppState::with makes one).
    let other = AppState::with(
        Arc::clone(&state.store),
        state.config.clone(),
        Clock::manual(t0()),
        Randomness::os(),
    );
    let err = keyroll_server::service::ca::check_sealed_keys(&other)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not open") && err.contains("KEYROLL_MASTER_KEY") && !err.contains('\n'),
        "{err}"
    );
}

fn td() -> keyroll_ca::TrustDomain {
    keyroll_ca::TrustDomain::parse("example.org").unwrap()
}

async fn with_ca(dir: &tempfile::TempDir) -> Arc<AppState> {
    let state = state(dir).await;
    let actor = Actor::system("rq_test".into());
    let req = InitRequest {
        trust_domain: td(),
        root_ttl: None,
        intermediate_ttl: None,
    };
    init(&state, &actor, req).await.unwrap();
    keyroll_server::service::create_environment(
        &state,
        &actor,
        keyroll_core::Environment::parse("prod").unwrap(),
        false,
        None,
    )
    .await
    .unwrap();
    state
}

fn issue_req(identity: &str) -> keyroll_server::service::ca::IssueRequest {
    keyroll_server::service::ca::IssueRequest {
        identity: keyroll_core::ConsumerRef::parse(identity).unwrap(),
        ttl: None,
        server_auth: false,
        dns: vec![],
        ip: vec![],
        csr: None,
    }
}

/// The serials listed by a DER CRL.
fn crl_serials(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::FromDer;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
    crl.iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect()
}

#[tokio::test]
async fn revoking_writes_a_new_crl_bumps_the_bundle_and_the_trust_store_refuses_the_certificate() {
    use keyroll_server::service::ca::{RevokeTarget, issue, revoke};
    let dir = tempfile::tempdir().unwrap();
    let state = with_ca(&dir).await;
    let actor = Actor::system("rq_test".into());
    let a = issue(&state, &actor, issue_req("prod/billing"), None)
        .await
        .unwrap();
    let b = issue(&state, &actor, issue_req("prod/billing"), None)
        .await
        .unwrap();
    let other = issue(&state, &actor, issue_req("prod/api"), None)
        .await
        .unwrap();
    assert!(a.key_pem.is_some());
    assert_eq!(
        state.ca.bundle_version(),
        1,
        "issuing does not change the bundle"
    );

    let serial = keyroll_ca::Serial::parse(&a.record.serial).unwrap();
    let done = revoke(
        &state,
        &actor,
        RevokeTarget::Serial(serial),
        keyroll_ca::RevocationReason::KeyCompromise,
    )
    .await
    .unwrap();
    assert_eq!(done.revoked, vec![a.record.serial.clone()]);
    assert!(!done.identity_blocked);
    assert_eq!(done.bundle_version, 2);
    assert_eq!(
        state.ca.bundle_version(),
        2,
        "the trust store was reinstalled"
    );
    let ca = state.store.ca_state().await.unwrap();
    let crl = ca
        .crls
        .iter()
        .find(|c| c.issuer_id == a.record.issuer_id)
        .unwrap();
    assert_eq!(crl.number, 2);
    assert_eq!(crl_serials(&crl.der), vec![a.record.serial.clone()]);
    // The listener's trust store refuses the revoked certificate, accepts the other.
    let trust = state.ca.trust().borrow().clone().unwrap();
    let check = |pem: &str| {
        keyroll_ca::verify_pem_chain(
            &trust,
            &keyroll_ca::IdentityPolicy::any(td()),
            pem.as_bytes(),
            keyroll_ca::Usage::Client,
            state.clock.now(),
        )
        .code
    };
    assert_eq!(check(&a.cert_pem), keyroll_ca::CertCode::CertRevoked);
    assert!(check(&b.cert_pem).allowed());
    let stored = state
        .store
        .get_certificate(&a.record.serial)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.revocation_reason.as_deref(), Some("key-compromise"));

    // Revoking the identity: every live certificate of it, and no more self-renewal.
    let r = keyroll_core::ConsumerRef::parse("prod/billing").unwrap();
    let done = revoke(
        &state,
        &actor,
        RevokeTarget::Identity(r.clone()),
        keyroll_ca::RevocationReason::CessationOfOperation,
    )
    .await
    .unwrap();
    assert_eq!(
        done.revoked,
        vec![b.record.serial.clone()],
        "a was revoked already"
    );
    assert!(done.identity_blocked);
    assert_eq!(done.bundle_version, 3);
    let ca = state.store.ca_state().await.unwrap();
    let crl = ca
        .crls
        .iter()
        .find(|c| c.issuer_id == b.record.issuer_id)
        .unwrap();
    let mut listed = crl_serials(&crl.der);
    listed.sort();
    let mut want = vec![a.record.serial.clone(), b.record.serial.clone()];
    want.sort();
    assert_eq!(listed, want);
    let csr = {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    };
    let err = keyroll_server::service::ca::issue_self(
        &state,
        &keyroll_server::service::ca::SelfAuth::ConsumerKey(r.clone()),
        "rq_self".into(),
        None,
        csr.clone().into_bytes(),
        None,
        false,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            keyroll_server::service::ca::CaServiceError::IdentityRevoked(_)
        ),
        "{err:?}"
    );
    // Another identity still renews itself.
    keyroll_server::service::ca::issue_self(
        &state,
        &keyroll_server::service::ca::SelfAuth::ConsumerKey(other.record.identity.clone()),
        "rq_self".into(),
        None,
        csr.into_bytes(),
        None,
        false,
    )
    .await
    .unwrap();
    let audit = state.store.list_audit(50).await.unwrap();
    assert_eq!(
        audit.iter().filter(|a| a.action == "cert.revoked").count(),
        2
    );
    assert!(audit.iter().all(|a| !a.detail.contains("PRIVATE KEY")));
}

#[tokio::test]
async fn the_crl_refresh_renews_each_crl_at_half_its_validity_in_one_write() {
    use keyroll_server::service::ca::CRL_VALIDITY;
    let dir = tempfile::tempdir().unwrap();
    let state = with_ca(&dir).await;
    let numbers =
        |ca: &keyroll_store::CaState| ca.crls.iter().map(|c| c.number).collect::<Vec<_>>();
    // Fresh CRLs: nothing to do.
    keyroll_server::jobs::ca_step(&state).await;
    let ca = state.store.ca_state().await.unwrap();
    assert_eq!(numbers(&ca), vec![1, 1]);
    assert_eq!(ca.bundle_version, 1);
    // Just before half of the validity: still nothing.
    state
        .clock
        .advance(CRL_VALIDITY / 2 - std::time::Duration::from_secs(1));
    keyroll_server::jobs::ca_step(&state).await;
    assert_eq!(state.store.ca_state().await.unwrap().bundle_version, 1);
    // At half: both CRLs renewed in one write (one bundle version), valid for CRL_VALIDITY.
    state.clock.advance(std::time::Duration::from_secs(1));
    keyroll_server::jobs::ca_step(&state).await;
    let ca = state.store.ca_state().await.unwrap();
    assert_eq!(numbers(&ca), vec![2, 2]);
    assert_eq!(ca.bundle_version, 2);
    assert_eq!(state.ca.bundle_version(), 2);
    let now = state.clock.now();
    for c in &ca.crls {
        assert_eq!(c.this_update, now);
        assert_eq!(c.next_update, now.saturating_add(CRL_VALIDITY));
    }
    // Run again at once: nothing is due.
    keyroll_server::jobs::ca_step(&state).await;
    assert_eq!(state.store.ca_state().await.unwrap().bundle_version, 2);
    let audit = state.store.list_audit(50).await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.action == "ca.crl_refreshed")
            .count(),
        1
    );
}

/// A root rotation on the manual clock: the next CA enters the bundle first, signs later, and
/// the old one leaves only once its last live certificate expired and no handshake chained to
/// it for `idle`; an expired anchor is pruned.
#[tokio::test]
async fn a_root_rotation_follows_the_timeline_and_the_removal_gate() {
    use keyroll_server::service::ca::{RotateRequest, issue, rotate, signing_intermediate};
    use keyroll_store::AuthorityState as S;
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    let dir = tempfile::tempdir().unwrap();
    let state = with_ca(&dir).await;
    let actor = Actor::system("rq_test".into());
    let step = || keyroll_server::jobs::ca_step(&state);
    // Root then intermediate of each generation (the store orders by creation only).
    let ordered = |ca: &keyroll_store::CaState| {
        let mut a = ca.authorities.clone();
        a.sort_by_key(|a| (a.generation, a.kind != AuthorityKind::Root));
        a
    };
    let states =
        |ca: &keyroll_store::CaState| ordered(ca).iter().map(|a| a.state).collect::<Vec<_>>();
    let before = ordered(&state.store.ca_state().await.unwrap());
    let old_root = before[0].clone();
    let old_int = before[1].clone();
    let old_cert = issue(&state, &actor, issue_req("prod/billing"), None)
        .await
        .unwrap();

    let t = state.clock.now();
    rotate(
        &state,
        &actor,
        RotateRequest {
            root: true,
            enters_bundle_at: Some(t.saturating_add(HOUR)),
            signs_from: Some(t.saturating_add(2 * HOUR)),
            idle: Some(HOUR),
        },
    )
    .await
    .unwrap();
    // A second rotation while one is under way is refused.
    assert!(
        rotate(&state, &actor, RotateRequest::default())
            .await
            .is_err()
    );
    step().await;
    let ca = state.store.ca_state().await.unwrap();
    assert_eq!(states(&ca), vec![S::Active, S::Active, S::Next, S::Next]);
    assert_eq!(ca.bundle_version, 1, "nothing entered yet");

    // Enters the bundle (root and intermediate, each with its CRL), does not sign yet.
    state.clock.advance(HOUR);
    step().await;
    let ca = state.store.ca_state().await.unwrap();
    assert_eq!(
        states(&ca),
        vec![S::Active, S::Active, S::Bundled, S::Bundled]
    );
    assert_eq!(ca.bundle_version, 3, "one step per write");
    assert_eq!(ca.crls.len(), 4);
    assert_eq!(
        state
            .ca
            .trust()
            .borrow()
            .as_ref()
            .unwrap()
            .anchors()
            .count(),
        2
    );
    let b = keyroll_server::service::ca::bundle(&state).await.unwrap();
    assert_eq!(b.roots_pem.matches("BEGIN CERTIFICATE").count(), 2);
    let still = issue(&state, &actor, issue_req("prod/billing"), None)
        .await
        .unwrap();
    assert_eq!(
        still.record.issuer_id, old_int.id,
        "not signing before signs_from"
    );

    // Signs from signs_from; the old pair retires.
    state.clock.advance(HOUR);
    step().await;
    let ca = state.store.ca_state().await.unwrap();
    assert_eq!(
        states(&ca),
        vec![S::Retiring, S::Retiring, S::Active, S::Active]
    );
    let new_int = signing_intermediate(&ca, state.clock.now())
        .unwrap()
        .id
        .clone();
    assert_ne!(new_int, old_int.id);
    let fresh = issue(&state, &actor, issue_req("prod/billing"), None)
        .await
        .unwrap();
    assert_eq!(fresh.record.issuer_id, new_int);

    // A handshake chained to the old root keeps it (and so its intermediate's certificates
    // expire first anyway) in the bundle.
    let anchor = keyroll_ca::AnchorId(keyroll_ca::Fingerprint::of(&old_root.cert_der));
    let serial = keyroll_ca::Serial::parse(&still.record.serial).unwrap();
    state
        .ca
        .record_handshake(&anchor, "prod/billing", &serial, None, state.clock.now());
    keyroll_server::jobs::flush_handshakes(&state).await;
    let (ca, deps, _) = keyroll_server::service::ca::status(&state).await.unwrap();
    let i = ca
        .authorities
        .iter()
        .position(|a| a.id == old_root.id)
        .unwrap();
    assert_eq!(
        deps[i].live_certificates.len(),
        2,
        "the old root's live certificates"
    );
    assert_eq!(deps[i].recent_handshakes.len(), 1);

    // The old certificates expire (24h); until then nothing leaves.
    state.clock.advance(22 * HOUR);
    step().await;
    assert_eq!(
        states(&state.store.ca_state().await.unwrap())[..2],
        [S::Retiring, S::Retiring]
    );
    // Past the last expiry: the intermediate (no handshakes are counted against it) leaves;
    // the root waits for `idle` after its last handshake.
    state.clock.advance(2 * HOUR);
    state
        .ca
        .record_handshake(&anchor, "prod/billing", &serial, None, state.clock.now());
    keyroll_server::jobs::flush_handshakes(&state).await;
    step().await;
    let ca = state.store.ca_state().await.unwrap();
    assert_eq!(
        states(&ca),
        vec![S::Retiring, S::Removed, S::Active, S::Active]
    );
    state.clock.advance(HOUR / 2);
    step().await;
    assert_eq!(
        states(&state.store.ca_state().await.unwrap())[0],
        S::Retiring,
        "handshake within idle"
    );
    state.clock.advance(HOUR);
    step().await;
    let ca = state.store.ca_state().await.unwrap();
    assert_eq!(
        states(&ca),
        vec![S::Removed, S::Removed, S::Active, S::Active]
    );
    let trust = state.ca.trust().borrow().clone().unwrap();
    assert_eq!(trust.anchors().count(), 1, "the old root left the bundle");
    let b = keyroll_server::service::ca::bundle(&state).await.unwrap();
    assert_eq!(b.roots_pem.matches("BEGIN CERTIFICATE").count(), 1);
    assert_eq!(b.crls.len(), 2);
    assert!(old_cert.record.not_after <= state.clock.now());
    let audit = state.store.list_audit(100).await.unwrap();
    for action in [
        "ca.rotation_started",
        "ca.authority_bundled",
        "ca.signing_switched",
        "ca.authority_removed",
    ] {
        assert!(
            audit.iter().any(|a| a.action == action),
            "{action}: {audit:?}"
        );
    }
}

/// An authority past its notAfter is pruned from the bundle by the timeline, even unreplaced.
#[tokio::test]
async fn an_expired_intermediate_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(&dir).await;
    let actor = Actor::system("rq_test".into());
    init(
        &state,
        &actor,
        InitRequest {
            trust_domain: td(),
            root_ttl: None,
            intermediate_ttl: Some(std::time::Duration::from_secs(48 * 3600)),
        },
    )
    .await
    .unwrap();
    // At half life the timeline starts the intermediate's rotation on its own.
    state
        .clock
        .advance(std::time::Duration::from_secs(24 * 3600));
    keyroll_server::jobs::ca_step(&state).await;
    let ca = state.store.ca_state().await.unwrap();
    assert_eq!(ca.authorities.len(), 3, "{:?}", ca.authorities);
    assert!(
        ca.authorities
            .iter()
            .any(|a| a.generation == 2 && a.kind == AuthorityKind::Intermediate)
    );
    // Past the old intermediate's notAfter it is out, whatever else.
    state
        .clock
        .advance(std::time::Duration::from_secs(25 * 3600));
    keyroll_server::jobs::ca_step(&state).await;
    let ca = state.store.ca_state().await.unwrap();
    let int = |g: u32| {
        ca.authorities
            .iter()
            .find(|a| a.generation == g && a.kind == AuthorityKind::Intermediate)
            .unwrap()
            .state
    };
    assert_eq!(int(1), AuthorityState::Removed);
    assert_eq!(int(2), AuthorityState::Active);
}
