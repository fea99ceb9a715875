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
