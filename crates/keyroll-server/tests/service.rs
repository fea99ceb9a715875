//! The service layer and the sweeper driven at chosen instants, without HTTP: a real SQLite store
//! in a temporary directory, a manual clock, and the same `AppState` the server runs on.
//!
//! Each test sets the clock, makes a change or a sweep, and checks what the store, the audit log,
//! the events and the in-memory index say at that instant.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyroll_core::{
    ConsumerName, ConsumerRef, ConsumerSpec, EntropyUnavailable, Environment, Policy, RetireReason,
    StoredState, Timestamp, VersionNumber,
};
use keyroll_server::clock::{Clock, RandomSource, Randomness};
use keyroll_server::service::idempotency::IdempotencyKey;
use keyroll_server::service::{
    self, Actor, Answer, Change, Idempotency, Request, Rotation, ServiceError,
};
use keyroll_server::{AppState, Config, Overrides};
use keyroll_store::{EnvironmentRecord, SqliteStore};
use keyroll_verify::verify::{Presented, Recording, verify};
use serde_json::{Value, json};

const HOUR: Duration = Duration::from_secs(3600);

/// 2026-12-01T00:00:00Z.
fn t0() -> Timestamp {
    Timestamp::from_unix_millis(1_796_083_200_000)
}

struct World {
    state: Arc<AppState>,
    clock: Clock,
    _dir: tempfile::TempDir,
}

async fn world_with(randomness: Randomness) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("keyroll.db"))
        .await
        .unwrap();
    let overrides = Overrides {
        data_dir: Some(dir.path().to_path_buf()),
        ..Overrides::default()
    };
    let config = Config::load(None, &overrides).unwrap();
    let clock = Clock::manual(t0());
    let state = AppState::with(Arc::new(store), config, clock.clone(), randomness);
    state.load().await.unwrap();
    let prod = EnvironmentRecord {
        name: Environment::parse("prod").unwrap(),
        protected: false,
        rotate_after: None,
        created_at: t0(),
    };
    let actor = Actor::system("rq_setup".into());
    let audit = actor.audit(
        t0(),
        "environment.created",
        "environment prod".into(),
        &json!({}),
    );
    state.store.create_environment(&prod, &audit).await.unwrap();
    World {
        state,
        clock,
        _dir: dir,
    }
}

async fn world() -> World {
    world_with(Randomness::os()).await
}

fn app() -> ConsumerRef {
    ConsumerRef::parse("prod/app").unwrap()
}

fn operator(idempotency: Option<Idempotency>) -> Request {
    Request {
        actor: Actor {
            id: "tok_test".into(),
            request_id: "rq_test".into(),
            remote_addr: Some("192.0.2.10".into()),
        },
        idempotency,
    }
}

fn key_of(answer: &Answer) -> String {
    match answer {
        Answer::Fresh { body, .. } => body["key"].as_str().unwrap().to_owned(),
        Answer::Replayed(r) => r.body["key"].as_str().unwrap().to_owned(),
    }
}

/// Creates `prod/app` at the clock's time; returns its first key.
async fn create(w: &World, request: &Request) -> Result<Answer, ServiceError> {
    let spec = ConsumerSpec {
        environment: Environment::parse("prod").unwrap(),
        name: ConsumerName::parse("app").unwrap(),
        scopes: vec![],
        owner: None,
        policy: Policy::default(),
        schedule: Default::default(),
        managed: false,
    };
    let params = json!({});
    let change = Change {
        command: "consumer.create",
        params: &params,
        status: 201,
    };
    service::create_consumer(&w.state, request, spec, None, change, |c, key, at| {
        json!({ "consumer": c.reference(), "key": key.reveal(), "at": at.unix_millis() })
    })
    .await
}

/// Rotates `prod/app` with `grace` at the clock's time; returns the new key.
async fn rotate(w: &World, request: &Request, grace: Duration) -> Result<Answer, ServiceError> {
    rotate_on(&w.state, request, grace).await
}

async fn rotate_on(
    state: &AppState,
    request: &Request,
    grace: Duration,
) -> Result<Answer, ServiceError> {
    let params = json!({ "grace": grace.as_secs() });
    let change = Change {
        command: "rotate",
        params: &params,
        status: 201,
    };
    let rotation = Rotation {
        grace,
        enforce: false,
        expires_in: None,
    };
    service::rotate(
        state,
        request,
        &app(),
        rotation,
        change,
        |_, p, _| json!({ "key": p.issued.as_ref().map(|k| k.reveal().to_owned()) }),
    )
    .await
}

/// A request with `key` on the hot path at the clock's time, counting as use.
fn use_key(w: &World, key: &str) -> bool {
    let none: [&str; 0] = [];
    verify(
        &w.state.index,
        Presented::Key(key.as_bytes()),
        Some("prod"),
        &none,
        Recording::CountsAsUse,
        w.clock.now(),
    )
    .code
    .allowed()
}

async fn stored(w: &World) -> keyroll_core::Consumer {
    w.state
        .store
        .get_consumer(&app())
        .await
        .unwrap()
        .unwrap()
        .consumer
}

fn strong_key(text: &str) -> IdempotencyKey {
    IdempotencyKey::parse(text.as_bytes()).unwrap()
}

#[tokio::test]
async fn a_change_is_written_audited_announced_and_indexed_at_the_clocks_instant() {
    let w = world().await;
    let v1 = key_of(&create(&w, &operator(None)).await.unwrap());
    assert!(use_key(&w, &v1), "the index knows the new consumer at once");

    w.clock.advance(HOUR);
    let v2 = key_of(&rotate(&w, &operator(None), HOUR).await.unwrap());
    let c = stored(&w).await;
    let old = c.version(VersionNumber(1)).unwrap();
    assert_eq!(old.state, StoredState::Retiring);
    assert_eq!(old.deadline, Some(t0().saturating_add(HOUR * 2)));
    assert_eq!(
        c.active_version().unwrap().created_at,
        t0().saturating_add(HOUR)
    );
    assert!(
        use_key(&w, &v1) && use_key(&w, &v2),
        "both work inside the grace window"
    );

    let audit = w.state.store.list_audit(10).await.unwrap();
    let rotation: Vec<_> = audit.iter().filter(|a| a.actor == "tok_test").collect();
    let actions: Vec<&str> = rotation.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "version.issued",
            "version.retiring",
            "version.issued",
            "consumer.created"
        ],
        "newest first: creation, then the rotation's two effects"
    );
    assert!(
        rotation
            .iter()
            .all(|a| a.remote_addr.as_deref() == Some("192.0.2.10"))
    );
    assert_eq!(rotation[0].at, t0().saturating_add(HOUR));
    let events = w.state.store.list_events(0, 10).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "consumer.created",
            "version.issued",
            "version.retiring",
            "version.issued"
        ]
    );
    for secret in [&v1, &v2] {
        assert!(
            audit.iter().all(|a| !a.detail.contains(secret.as_str()))
                && events.iter().all(|e| !e.detail.contains(secret.as_str())),
            "no secret in the audit log or the events"
        );
    }
}

#[tokio::test]
async fn an_idempotent_replay_answers_the_first_answer_and_a_reused_key_is_refused() {
    let w = world().await;
    create(&w, &operator(None)).await.unwrap();
    let header = "3f9c2a7e-51d4-4b8a-9e62-0c7d1f5ab934";
    let idem = |body: &[u8; 32]| Idempotency::new(strong_key(header), "POST", "/rotate", body);
    let first = rotate(&w, &operator(Some(idem(&[1; 32]))), HOUR)
        .await
        .unwrap();
    let key = key_of(&first);
    assert!(matches!(first, Answer::Fresh { .. }));

    w.clock.advance(Duration::from_secs(60));
    let again = rotate(&w, &operator(Some(idem(&[1; 32]))), HOUR)
        .await
        .unwrap();
    let Answer::Replayed(replayed) = &again else {
        panic!("a repeated request is a replay: {again:?}")
    };
    assert_eq!(replayed.status, 201);
    assert_eq!(replayed.body["replayed"], Value::Bool(true));
    assert_eq!(
        key_of(&again),
        key,
        "the sealed key is shown again inside the window"
    );
    assert_eq!(
        stored(&w).await.versions.len(),
        2,
        "rotated once, not twice"
    );

    let other = rotate(&w, &operator(Some(idem(&[2; 32]))), HOUR)
        .await
        .unwrap_err();
    assert!(
        matches!(other, ServiceError::IdempotencyKeyReused { first_used } if first_used == t0()),
        "{other:?}"
    );

    // Past the replay window the answer is still replayed, but without the key.
    w.clock
        .advance(keyroll_store::IDEMPOTENT_KEY_WINDOW + Duration::from_secs(1));
    let late = rotate(&w, &operator(Some(idem(&[1; 32]))), HOUR)
        .await
        .unwrap();
    let Answer::Replayed(late) = late else {
        panic!("still a replay")
    };
    assert_eq!(late.body["key"], Value::Null);
    assert!(
        late.body["key_unavailable"]
            .as_str()
            .unwrap()
            .contains("kept for replays")
    );
}

#[tokio::test]
async fn concurrent_writers_each_land_once_on_fresh_state() {
    let w = world().await;
    create(&w, &operator(None)).await.unwrap();
    // Eight rotations race for the same consumer: the losers of each write recompute from the
    // state the winner wrote, so none is lost and none is applied twice.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let state = Arc::clone(&w.state);
        tasks.push(tokio::spawn(async move {
            rotate_on(&state, &operator(None), HOUR)
                .await
                .map(|a| key_of(&a))
        }));
    }
    let mut keys = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(k) => keys.push(k),
            // Five attempts each: a writer that lost every race says so instead of writing.
            Err(ServiceError::Busy(what)) => assert_eq!(what, "prod/app"),
            Err(e) => panic!("{e}"),
        }
    }
    let c = stored(&w).await;
    assert_eq!(
        c.versions.len(),
        1 + keys.len(),
        "one version per successful rotation"
    );
    let numbers: Vec<u32> = c.versions.iter().map(|v| v.number.0).collect();
    assert_eq!(numbers, (1..=c.versions.len() as u32).collect::<Vec<_>>());
    assert_eq!(
        c.versions
            .iter()
            .filter(|v| v.state == StoredState::Active)
            .count(),
        1
    );
    let newest = keys.iter().filter(|k| use_key(&w, k)).count();
    assert_eq!(
        newest,
        keys.len(),
        "the index holds every version the store holds"
    );
}

#[tokio::test]
async fn a_deadline_passing_is_settled_by_the_sweeper_at_that_instant() {
    let w = world().await;
    let v1 = key_of(&create(&w, &operator(None)).await.unwrap());
    let v2 = key_of(&rotate(&w, &operator(None), HOUR).await.unwrap());
    assert!(use_key(&w, &v2));

    // One second before the deadline nothing is due: v1 has been quiet since it was issued for
    // less than `idle` (1h), so not even when-idle retires it early.
    w.clock
        .set(t0().saturating_add(HOUR - Duration::from_secs(1)));
    assert_eq!(keyroll_server::sweeper::sweep_once(&w.state).await, 0);
    let c = stored(&w).await;
    assert_eq!(
        c.version(VersionNumber(1)).unwrap().state,
        StoredState::Retiring
    );

    w.clock
        .set(t0().saturating_add(HOUR + Duration::from_secs(1)));
    assert!(
        !use_key(&w, &v1),
        "past its deadline the hot path rejects v1 by itself"
    );
    keyroll_server::sweeper::sweep_once(&w.state).await;
    let c = stored(&w).await;
    let old = c.version(VersionNumber(1)).unwrap();
    assert_eq!(old.state, StoredState::Retired);
    let events = w.state.store.list_events(0, 20).await.unwrap();
    let retired = events.iter().find(|e| e.kind == "version.retired").unwrap();
    assert_eq!(retired.at, w.clock.now(), "written at the sweep's instant");
    let detail: Value = serde_json::from_str(&retired.detail).unwrap();
    assert_eq!(detail["reason"], RetireReason::Deadline.as_str());
    assert_eq!(
        keyroll_server::sweeper::sweep_once(&w.state).await,
        0,
        "a second sweep finds nothing left to write"
    );
}

#[tokio::test]
async fn a_version_still_in_use_at_its_deadline_stalls_once_then_retires() {
    let w = world().await;
    let v1 = key_of(&create(&w, &operator(None)).await.unwrap());
    rotate(&w, &operator(None), HOUR).await.unwrap();
    // The old key is still used a minute before its deadline; the new one never.
    w.clock
        .set(t0().saturating_add(HOUR - Duration::from_secs(60)));
    assert!(use_key(&w, &v1));

    w.clock
        .set(t0().saturating_add(HOUR + Duration::from_secs(1)));
    assert!(
        use_key(&w, &v1),
        "a stalled version keeps working on its extension"
    );
    keyroll_server::sweeper::sweep_once(&w.state).await;
    let c = stored(&w).await;
    let old = c.version(VersionNumber(1)).unwrap();
    assert_eq!(old.state, StoredState::Retiring);
    assert!(old.extended);
    assert_eq!(old.deadline, Some(t0().saturating_add(HOUR * 2)));
    let events = w.state.store.list_events(0, 20).await.unwrap();
    let stall = events
        .iter()
        .find(|e| e.kind == "rotation.stalled")
        .unwrap();
    let detail: Value = serde_json::from_str(&stall.detail).unwrap();
    assert!(detail.get("sources").is_some() || detail.get("sources_unavailable").is_some());

    // Extended once only: past the extension it retires, in use or not.
    w.clock
        .set(t0().saturating_add(HOUR * 2 - Duration::from_secs(10)));
    assert!(use_key(&w, &v1));
    w.clock
        .set(t0().saturating_add(HOUR * 2 + Duration::from_secs(1)));
    assert!(!use_key(&w, &v1));
    keyroll_server::sweeper::sweep_once(&w.state).await;
    let c = stored(&w).await;
    assert_eq!(
        c.version(VersionNumber(1)).unwrap().state,
        StoredState::Retired
    );
    let effects = service::settle(&w.state, &app()).await.unwrap();
    assert!(effects.is_empty(), "nothing left to settle: {effects:?}");
    let audit = w.state.store.list_audit(20).await.unwrap();
    let retired = audit
        .iter()
        .find(|a| a.action == "version.retired")
        .unwrap();
    assert_eq!(retired.actor, "sweeper");
    let detail: Value = serde_json::from_str(&retired.detail).unwrap();
    assert_eq!(detail["effect"]["reason"], RetireReason::Deadline.as_str());
}

#[tokio::test]
async fn without_randomness_no_key_is_issued_and_nothing_is_written() {
    struct Broken;
    impl RandomSource for Broken {
        fn fill(&self, _: &mut [u8]) -> Result<(), EntropyUnavailable> {
            Err(EntropyUnavailable("test source down".into()))
        }
    }
    let w = world_with(Randomness::from_source(Broken)).await;
    let err = create(&w, &operator(None)).await.unwrap_err();
    assert!(
        matches!(err, ServiceError::EntropyUnavailable(_)),
        "{err:?}"
    );
    assert!(w.state.store.get_consumer(&app()).await.unwrap().is_none());
    assert!(w.state.store.list_events(0, 10).await.unwrap().is_empty());
}
