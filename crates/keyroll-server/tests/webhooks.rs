//! The webhook sender's enqueue step driven without HTTP: a real SQLite store, a manual clock,
//! the service layer writing events. Each event becomes one delivery per subscribed endpoint,
//! once, however often the step runs; the cursor follows the outbox; a write wakes the sender.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyroll_core::{ConsumerName, ConsumerRef, ConsumerSpec, Environment, Timestamp};
use keyroll_server::clock::{Clock, Randomness};
use keyroll_server::service::{self, Actor, Change, Request, Rotation};
use keyroll_server::webhooks::sender::{enqueue, signing_secrets};
use keyroll_server::{AppState, Config, Overrides};
use keyroll_store::{DeliveryQuery, DeliveryState, SqliteStore};
use serde_json::{Value, json};

fn t0() -> Timestamp {
    Timestamp::from_unix_millis(1_796_083_200_000)
}

fn actor() -> Actor {
    Actor {
        id: "tok_test".into(),
        request_id: "rq_test".into(),
        remote_addr: None,
    }
}

async fn state(dir: &tempfile::TempDir) -> (Arc<AppState>, Clock) {
    let store = SqliteStore::open(&dir.path().join("keyroll.db"))
        .await
        .unwrap();
    let config = Config::load(
        None,
        &Overrides {
            data_dir: Some(dir.path().to_path_buf()),
            ..Overrides::default()
        },
    )
    .unwrap();
    let clock = Clock::manual(t0());
    let state = AppState::with(Arc::new(store), config, clock.clone(), Randomness::os());
    state.load().await.unwrap();
    (state, clock)
}

async fn consumer(state: &AppState, name: &str) -> ConsumerRef {
    let spec = ConsumerSpec {
        environment: Environment::parse("prod").unwrap(),
        name: ConsumerName::parse(name).unwrap(),
        scopes: vec![],
        owner: None,
        policy: Default::default(),
        schedule: Default::default(),
        managed: false,
    };
    let r = ConsumerRef {
        environment: spec.environment.clone(),
        name: spec.name.clone(),
    };
    let params = json!({});
    let request = Request {
        actor: actor(),
        idempotency: None,
    };
    service::create_consumer(
        state,
        &request,
        spec,
        None,
        Change {
            command: "consumer.create",
            params: &params,
            status: 201,
        },
        |_, _, _| Value::Null,
    )
    .await
    .unwrap();
    r
}

async fn rotate(state: &AppState, r: &ConsumerRef) {
    let params = json!({});
    let request = Request {
        actor: actor(),
        idempotency: None,
    };
    service::rotate(
        state,
        &request,
        r,
        Rotation {
            grace: Duration::from_secs(60),
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

#[tokio::test]
async fn each_event_is_enqueued_once_per_subscribed_endpoint_and_a_write_wakes_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let (state, clock) = state(&dir).await;
    service::create_environment(
        &state,
        &actor(),
        Environment::parse("prod").unwrap(),
        false,
        None,
    )
    .await
    .unwrap();
    let before = consumer(&state, "early").await;
    // Events from before any endpoint existed are passed over, not delivered later.
    assert_eq!(enqueue(&state).await.unwrap(), 0);
    let cursor = state.store.webhook_cursor().await.unwrap();
    assert_eq!(
        cursor,
        state
            .store
            .list_events(0, 1000)
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq
    );

    clock.advance(Duration::from_secs(1));
    let (rotations, secret) = service::webhooks::create(
        &state,
        &actor(),
        "http://hooks.example/r",
        vec!["rotation.started".into()],
        None,
    )
    .await
    .unwrap();
    let (all, _) = service::webhooks::create(
        &state,
        &actor(),
        "http://hooks.example/a",
        vec!["*".into()],
        None,
    )
    .await
    .unwrap();
    clock.advance(Duration::from_secs(1));
    let wake = state.webhook_wake.notified();
    rotate(&state, &before).await;
    tokio::time::timeout(Duration::from_secs(1), wake)
        .await
        .expect("a write with events wakes the sender");
    // issued v2 + retiring v1: one delivery to the rotation endpoint, two to the catch-all.
    assert_eq!(enqueue(&state).await.unwrap(), 3);
    assert_eq!(enqueue(&state).await.unwrap(), 0, "nothing twice");
    let deliveries = state
        .store
        .list_webhook_deliveries(&DeliveryQuery {
            limit: 100,
            ..DeliveryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 3);
    let to_rotations: Vec<_> = deliveries
        .iter()
        .filter(|d| d.endpoint_id == rotations.id)
        .collect();
    assert_eq!(to_rotations.len(), 1);
    let same_msg = deliveries
        .iter()
        .find(|d| d.endpoint_id == all.id && d.event_seq == to_rotations[0].event_seq)
        .unwrap();
    assert_eq!(
        same_msg.msg_id, to_rotations[0].msg_id,
        "one event, one webhook-id"
    );
    assert!(deliveries.iter().all(|d| d.state == DeliveryState::Pending
        && d.next_attempt_at == Some(clock.now())
        && d.attempts == 0));
    assert!(state.store.webhook_cursor().await.unwrap() > cursor);

    // The secret opens from its sealed form; after a rotation both sign until the overlap ends.
    let secrets = signing_secrets(&state, &rotations, clock.now()).unwrap();
    assert_eq!(secrets, vec![secret.clone()]);
    let (rotated, new) =
        service::webhooks::rotate_secret(&state, &actor(), &rotations.id, Duration::from_secs(60))
            .await
            .unwrap();
    assert_eq!(
        signing_secrets(&state, &rotated, clock.now()).unwrap(),
        vec![new.clone(), secret]
    );
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        signing_secrets(&state, &rotated, clock.now()).unwrap(),
        vec![new]
    );
    let audit = state.store.list_audit(100).await.unwrap();
    for action in ["webhook.created", "webhook.secret_rotated"] {
        assert!(audit.iter().any(|a| a.action == action), "{action} audited");
    }
}
