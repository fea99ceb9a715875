//! The schedule's runner driven at chosen instants, without HTTP: a real SQLite store, a manual
//! clock and the same `AppState` the server runs on. Each test sets the clock, runs the schedule
//! once and checks the events, the audit log and the schedule's read model.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyroll_core::{
    ConsumerName, ConsumerRef, ConsumerSpec, Delivery, Environment, Policy, Schedule,
    ScheduleState, Timestamp,
};
use keyroll_server::clock::{Clock, Randomness};
use keyroll_server::schedule::{place_all, run_once};
use keyroll_server::service::{self, Actor, Change, EnvironmentChange, Request, Rotation};
use keyroll_server::{AppState, Config, Overrides};
use keyroll_store::SqliteStore;
use serde_json::{Value, json};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// 2026-12-01T00:00:00Z.
fn t0() -> Timestamp {
    Timestamp::from_unix_millis(1_796_083_200_000)
}

struct World {
    state: Arc<AppState>,
    clock: Clock,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
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
    let state = AppState::with(Arc::new(store), config, clock.clone(), Randomness::os());
    state.load().await.unwrap();
    World {
        state,
        clock,
        _dir: dir,
    }
}

fn actor() -> Actor {
    Actor {
        id: "tok_test".into(),
        request_id: "rq_test".into(),
        remote_addr: None,
    }
}

fn request() -> Request {
    Request {
        actor: actor(),
        idempotency: None,
    }
}

fn env(name: &str) -> Environment {
    Environment::parse(name).unwrap()
}

async fn environment(w: &World, name: &str, rotate_after: Option<&str>) {
    service::create_environment(&w.state, &actor(), env(name), false, rotate_after.map(env))
        .await
        .unwrap();
}

async fn consumer(w: &World, env_name: &str, name: &str, every: Duration, delivery: Delivery) {
    let spec = ConsumerSpec {
        environment: env(env_name),
        name: ConsumerName::parse(name).unwrap(),
        scopes: vec![],
        owner: None,
        policy: Policy::default(),
        schedule: Schedule {
            rotate_every: Some(every),
            grace: Some(HOUR),
            delivery,
        },
        managed: false,
    };
    create(w, spec, None).await;
}

async fn create(w: &World, spec: ConsumerSpec, expires_in: Option<Duration>) {
    let params = json!({});
    service::create_consumer(
        &w.state,
        &request(),
        spec,
        expires_in,
        Change {
            command: "consumer.create",
            params: &params,
            status: 201,
        },
        |_, _, _| Value::Null,
    )
    .await
    .unwrap();
}

async fn rotate(w: &World, r: &str) {
    let params = json!({});
    service::rotate(
        &w.state,
        &request(),
        &ConsumerRef::parse(r).unwrap(),
        Rotation {
            grace: HOUR,
            enforce: false,
            expires_in: None,
        },
        Change {
            command: "rotate",
            params: &params,
            status: 201,
        },
        |_, _, _| Value::Null,
    )
    .await
    .unwrap();
}

async fn events_of(w: &World, kind: &str) -> Vec<String> {
    w.state
        .store
        .list_events(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.consumer)
        .collect()
}

async fn state_of(w: &World, r: &str) -> ScheduleState {
    place_all(&w.state, None, w.clock.now())
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.consumer.reference() == r)
        .unwrap()
        .state
}

#[tokio::test]
async fn a_due_rotation_is_raised_once_by_the_scheduler_and_never_issues_a_key() {
    let w = world().await;
    environment(&w, "prod", None).await;
    consumer(&w, "prod", "billing", DAY, Delivery::Manual).await;
    // Not yet due: nothing raised.
    w.clock.advance(DAY - Duration::from_secs(1));
    assert_eq!(run_once(&w.state).await.due_raised, 0);
    // Due, and the server was down for a week after that: raised once, not once per period.
    w.clock.advance(7 * DAY);
    assert_eq!(run_once(&w.state).await.due_raised, 1);
    assert_eq!(run_once(&w.state).await.due_raised, 0, "once per version");
    assert_eq!(events_of(&w, "rotation.due").await, ["prod/billing"]);
    let stored = w
        .state
        .store
        .get_consumer(&ConsumerRef::parse("prod/billing").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.consumer.versions.len(),
        1,
        "the scheduler issues no key"
    );
    let audit = w.state.store.list_audit(100).await.unwrap();
    let due = audit.iter().find(|a| a.action == "rotation.due").unwrap();
    assert_eq!(due.actor, "scheduler");
    let detail: Value = serde_json::from_str(&due.detail).unwrap();
    assert_eq!(detail["effect"]["delivery"], "manual");
    // A rotation starts a new period, which falls due again one period later.
    rotate(&w, "prod/billing").await;
    assert!(matches!(
        state_of(&w, "prod/billing").await,
        ScheduleState::Scheduled(t) if t == w.clock.now().saturating_add(DAY)
    ));
}

#[tokio::test]
async fn prod_waits_for_stagings_completed_rotation_and_then_falls_due() {
    let w = world().await;
    environment(&w, "staging", None).await;
    environment(&w, "prod", Some("staging")).await;
    consumer(&w, "staging", "api", DAY, Delivery::Ci).await;
    consumer(&w, "prod", "api", DAY, Delivery::Ci).await;
    w.clock.advance(DAY + HOUR);
    assert!(matches!(
        state_of(&w, "staging/api").await,
        ScheduleState::Due(_)
    ));
    match state_of(&w, "prod/api").await {
        ScheduleState::Blocked(_, b) => assert_eq!(b[0].code(), "ordering"),
        other => panic!("expected prod blocked by ordering, got {other:?}"),
    }
    assert_eq!(run_once(&w.state).await.due_raised, 1);
    assert_eq!(events_of(&w, "rotation.due").await, ["staging/api"]);
    rotate(&w, "staging/api").await;
    // Staging's old version still in its grace window: prod keeps waiting.
    assert!(matches!(
        state_of(&w, "prod/api").await,
        ScheduleState::Blocked(..)
    ));
    // The grace window ends (no traffic, so no stall): prod may rotate now.
    w.clock.advance(HOUR + Duration::from_secs(1));
    assert!(matches!(
        state_of(&w, "prod/api").await,
        ScheduleState::Due(_)
    ));
    assert_eq!(run_once(&w.state).await.due_raised, 1);
    assert_eq!(
        events_of(&w, "rotation.due").await,
        ["staging/api", "prod/api"]
    );
}

#[tokio::test]
async fn a_version_nearing_its_hard_expiry_raises_key_expiring_seven_days_ahead_once() {
    let w = world().await;
    environment(&w, "prod", None).await;
    let spec = ConsumerSpec {
        environment: env("prod"),
        name: ConsumerName::parse("batch").unwrap(),
        scopes: vec![],
        owner: None,
        policy: Policy::default(),
        schedule: Schedule::default(),
        managed: false,
    };
    create(&w, spec, Some(30 * DAY)).await;
    w.clock.advance(22 * DAY);
    assert_eq!(run_once(&w.state).await.expiring_raised, 0);
    w.clock.advance(DAY + Duration::from_secs(1));
    assert_eq!(run_once(&w.state).await.expiring_raised, 1);
    assert_eq!(run_once(&w.state).await.expiring_raised, 0);
    assert_eq!(events_of(&w, "key.expiring").await, ["prod/batch"]);
}

#[tokio::test]
async fn an_ordering_rule_that_names_an_unknown_environment_or_closes_a_cycle_is_refused() {
    let w = world().await;
    environment(&w, "staging", None).await;
    environment(&w, "prod", Some("staging")).await;
    let err = service::create_environment(&w.state, &actor(), env("dev"), false, Some(env("qa")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("qa does not exist"), "{err}");
    let cycle = EnvironmentChange {
        rotate_after: Some(Some(env("prod"))),
        ..Default::default()
    };
    let err = service::update_environment(&w.state, &actor(), &env("staging"), cycle)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("staging -> prod -> staging"),
        "{err}"
    );
    let itself = EnvironmentChange {
        rotate_after: Some(Some(env("prod"))),
        ..Default::default()
    };
    let err = service::update_environment(&w.state, &actor(), &env("prod"), itself)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("prod -> prod"), "{err}");
    // Nothing was written by the refusals.
    let envs = w.state.store.list_environments().await.unwrap();
    assert_eq!(
        envs.iter()
            .map(|e| (
                e.name.to_string(),
                e.rotate_after.as_ref().map(|a| a.to_string())
            ))
            .collect::<Vec<_>>(),
        [
            ("prod".to_owned(), Some("staging".to_owned())),
            ("staging".to_owned(), None)
        ]
    );
}
