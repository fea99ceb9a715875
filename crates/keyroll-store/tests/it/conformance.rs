//! The `Store` conformance suite: what every backend must do, written once against `&dyn Store`.
//!
//! A backend runs it with `conformance_suite!(fresh)`, where `fresh().await` returns a
//! [`Backend`] on an empty database; the macro makes one `#[tokio::test]` per function below.
//! A function missing from the macro's list is dead code, which the lints turn into an error, so
//! the list cannot silently fall behind.

use std::time::Duration;

use async_trait::async_trait;
use keyroll_core::audit_chain::{self, ChainEntry, Head, StoredLink};
use keyroll_core::{
    Command, Consumer, ConsumerName, ConsumerRef, ConsumerUpdate, Delivery, Effect, Entropy,
    EntropyUnavailable, Environment, IssuedKey, Kid, NewVersion, OnStall, Policy, RetirePolicy,
    Schedule, Scope, SecretHash, StoredState, Timestamp, Usage, VersionNumber, issue_key,
};
use keyroll_store::{
    AdminTokenRecord, AuditQuery, AuditRecord, ChangeKind, ChangeRecord, ConsumerWrite,
    EnvironmentRecord, EventRecord, IdempotencyRecord, Lease, NodeRecord, SourceSeen, Store,
    StoreError, StoredConsumer, UiSession, UsageDelta, VersionUsage,
};
use keyroll_store::{
    AuthorityKind, AuthorityRecord, AuthorityState, CaCommit, CaState, CaWrite, CertFilter,
    CertQuery, CertRevocation, CrlRecord, HandshakeUse, IssuedCertRecord, RevokedIdentityRecord,
};

/// One test's database, however the backend provides it.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The store under test.
    fn store(&self) -> &dyn Store;
    /// Every cell of every table as raw bytes (text as UTF-8, numbers as their decimal text),
    /// read behind the store's back.
    async fn dump_cells(&self) -> Vec<Cell>;
}

/// One cell of a table.
#[derive(Debug)]
pub struct Cell {
    pub table: String,
    pub column: String,
    pub bytes: Vec<u8>,
}

/// Generates one `#[tokio::test]` per conformance function for a backend.
///
/// `conformance_suite!(fresh)`: `fresh().await` returns the backend. `conformance_suite!(optional
/// fresh)`: it returns an `Option`, and `None` skips the test (a database server that is not
/// there outside CI; the function says so loudly).
macro_rules! conformance_suite {
    ($fresh:path) => {
        $crate::conformance::conformance_suite!(@lists $fresh, required);
    };
    (optional $fresh:path) => {
        $crate::conformance::conformance_suite!(@lists $fresh, optional);
    };
    (@lists $fresh:path, $mode:ident) => {
        $crate::conformance::conformance_suite!(@store $fresh, $mode;
            ping_and_backend,
            environments_create_list_get_duplicate,
            consumers_create_get_list,
            consumer_duplicate_and_unknown_environment,
            write_round_trips_every_version_field,
            stale_write_conflicts,
            concurrent_writers_one_wins,
            kid_collision_on_create_and_on_rotate,
            idempotency_key_reuse,
            write_guards_refuse_bad_writes,
            admin_tokens,
            audit_in_order_newest_first,
            load_all_returns_everything,
            policy_and_stall_fields_round_trip,
            events_are_written_with_their_change_and_paged,
            creation_events_commit_with_the_consumer_or_not_at_all,
            record_usage_adds_keeps_the_latest_and_trims,
            usage_filters_hours_and_answers_every_kid_asked,
            last_used_all_lists_every_used_version,
            idempotency_sealed_key_round_trips_and_is_cleared_after_its_window,
            admin_token_lifecycle,
            admin_token_last_admin_guard,
            audit_chain_links_every_change,
            audit_query_filters_and_pages,
            schedule_fields_and_ordering_round_trip,
            schedule_candidates_are_what_the_schedule_must_look_at,
            webhook_endpoints_round_trip_update_and_delete,
            webhook_deliveries_enqueue_once_and_record_attempts,
            agents_deliveries_and_handovers,
            master_key_check_is_recorded_once,
            ui_sessions_round_trip_touch_delete_and_prune,
            changes_are_gapless_and_in_commit_order,
            consumers_by_id_reads_the_ones_asked,
            prune_changes_removes_old_rows_and_keeps_the_head,
            nodes_upsert_list_remove,
            lease_acquire_renew_contend_expire_release,
            concurrent_lease_acquires_one_wins,
            last_used_since_lists_recent_uses,
            listen_changes_notifies_committed_changes,
            concurrent_writes_take_gapless_seqs,
            concurrent_usage_on_one_kid_sums,
            concurrent_audit_appends_keep_one_chain,
            ca_authorities_crls_and_bundle_version,
            ca_certificates_record_list_and_revoke,
            ca_handshake_uses_add_up,
            agents_report_their_bundle_version,
                );
        $crate::conformance::conformance_suite!(@backend $fresh, $mode;
            no_secret_in_any_column,
            idempotency_columns_hold_neither_header_nor_key,
            no_secret_in_admin_token_lifecycle_columns,
            no_secret_in_webhook_columns,
            no_secret_in_ui_session_columns,
                );
    };
    (@get required $fresh:path) => {
        Some($fresh().await)
    };
    (@get optional $fresh:path) => {
        $fresh().await
    };
    (@store $fresh:path, $mode:ident; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some(backend) = $crate::conformance::conformance_suite!(@get $mode $fresh)
                else {
                    return;
                };
                $crate::conformance::$name($crate::conformance::Backend::store(&backend)).await;
            }
        )*
    };
    (@backend $fresh:path, $mode:ident; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some(backend) = $crate::conformance::conformance_suite!(@get $mode $fresh)
                else {
                    return;
                };
                $crate::conformance::$name(&backend).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A deterministic random source (xorshift64); keyroll-core's own is private to its tests.
pub struct TestEntropy(pub u64);

impl Entropy for TestEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyUnavailable> {
        for b in dest {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0 >> 24) as u8;
        }
        Ok(())
    }
}

/// A key for `environment` from a seeded source.
pub fn issue(environment: &Environment, entropy: &mut TestEntropy) -> IssuedKey {
    issue_key(environment, entropy).unwrap()
}

pub fn env(name: &str) -> Environment {
    Environment::parse(name).unwrap()
}

pub fn consumer_ref(env_name: &str, name: &str) -> ConsumerRef {
    ConsumerRef {
        environment: env(env_name),
        name: ConsumerName::parse(name).unwrap(),
    }
}

pub fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

pub fn audit(when: i64, action: &str, target: &str) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: at(when),
        actor: "tok_test".to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail: format!("{{\"action\":\"{action}\"}}"),
        request_id: Some(format!("req-{when}")),
        remote_addr: None,
    }
}

fn new_version(
    environment: &Environment,
    entropy: &mut TestEntropy,
    expires_at: Option<i64>,
) -> (NewVersion, IssuedKey) {
    let key = issue(environment, entropy);
    let version = NewVersion {
        kid: key.kid,
        secret_hash: key.secret_hash,
        fingerprint: key.fingerprint,
        expires_at: expires_at.map(at),
    };
    (version, key)
}

/// The plaintext secret part of a key: `kr_<env>_<kid>_<secret><check>`.
fn secret_part(key: &IssuedKey) -> &str {
    let s = key.reveal();
    &s[s.len() - 6 - 32..s.len() - 6]
}

async fn make_env(store: &dyn Store, name: &str, protected: bool) {
    let record = EnvironmentRecord {
        name: env(name),
        protected,
        rotate_after: None,
        created_at: at(1_000),
    };
    store
        .create_environment(
            &record,
            &audit(1_000, "environment.created", &format!("environment {name}")),
        )
        .await
        .unwrap();
}

/// A consumer with `v1`, not yet stored.
pub fn draft(env_name: &str, name: &str, seed: u64, now: i64) -> (Consumer, IssuedKey) {
    let mut entropy = TestEntropy(seed);
    let environment = env(env_name);
    let (first, key) = new_version(&environment, &mut entropy, Some(now + 90 * 86_400_000));
    let consumer = Consumer::create(
        environment,
        ConsumerName::parse(name).unwrap(),
        vec![
            Scope::parse("invoices:write").unwrap(),
            Scope::parse("invoices:read").unwrap(),
        ],
        Some("team-billing@example.com".to_owned()),
        first,
        at(now),
    );
    (consumer, key)
}

pub async fn create(store: &dyn Store, env_name: &str, name: &str, seed: u64) -> StoredConsumer {
    let (consumer, _) = draft(env_name, name, seed, 2_000);
    let target = consumer.reference();
    store
        .create_consumer(
            &consumer,
            &[audit(2_000, "consumer.created", &target)],
            &[],
            None,
        )
        .await
        .unwrap()
}

/// Applies `command` at `now`, knowing no usage, and writes the result with one audit entry and
/// one event per effect.
async fn apply(
    store: &dyn Store,
    current: &StoredConsumer,
    command: Command,
    now: i64,
) -> Result<StoredConsumer, StoreError> {
    apply_with(store, current, command, &Usage::NONE, now).await
}

/// [`apply`] with what is known of the versions' use.
async fn apply_with(
    store: &dyn Store,
    current: &StoredConsumer,
    command: Command,
    usage: &Usage<'_>,
    now: i64,
) -> Result<StoredConsumer, StoreError> {
    let transition = current.consumer.apply(command, usage, at(now)).unwrap();
    let target = current.consumer.reference();
    let entries: Vec<AuditRecord> = transition
        .effects
        .iter()
        .map(|e| audit(now, e.kind(), &target))
        .collect();
    let events: Vec<EventRecord> = transition
        .effects
        .iter()
        .map(|e| event(now, e, &target))
        .collect();
    store
        .write_consumer(ConsumerWrite {
            expected_revision: current.revision,
            id: current.id,
            consumer: &transition.consumer,
            audit: &entries,
            idempotency: None,
            events: &events,
            handover: None,
        })
        .await
}

/// The outbox event for an effect.
pub fn event(when: i64, effect: &Effect, consumer: &str) -> EventRecord {
    let version = effect.version().map(|v| v.0);
    EventRecord {
        seq: 0,
        at: at(when),
        kind: effect.kind().to_owned(),
        consumer: consumer.to_owned(),
        version,
        detail: format!("{{\"kind\":\"{}\",\"at\":{when}}}", effect.kind()),
    }
}

/// A source of requests.
pub fn source(
    address: &str,
    user_agent: &str,
    client_id: Option<&str>,
    first_seen: i64,
    last_seen: i64,
    count: u64,
) -> SourceSeen {
    SourceSeen {
        address: address.to_owned(),
        user_agent: user_agent.to_owned(),
        client_id: client_id.map(str::to_owned),
        first_seen: at(first_seen),
        last_seen: at(last_seen),
        count,
    }
}

/// Usage of one version.
pub fn delta(
    kid: Kid,
    last_used_at: i64,
    hourly: &[(i64, u64)],
    sources: Vec<SourceSeen>,
) -> UsageDelta {
    UsageDelta {
        kid,
        last_used_at: at(last_used_at),
        hourly: hourly.iter().map(|&(hour, n)| (at(hour), n)).collect(),
        sources,
    }
}

const HOUR: i64 = 3_600_000;

fn rotate(environment: &Environment, seed: u64, grace: Duration, enforce: bool) -> Command {
    let (new_version, _) = new_version(environment, &mut TestEntropy(seed), None);
    Command::Rotate {
        grace,
        enforce,
        new_version,
    }
}

async fn audit_len(store: &dyn Store) -> usize {
    store.list_audit(u32::MAX).await.unwrap().len()
}

// ---------------------------------------------------------------------------------------------
// The suite

pub async fn ping_and_backend(store: &dyn Store) {
    store.ping().await.unwrap();
    assert!(["sqlite", "postgres"].contains(&store.backend()));
}

pub async fn environments_create_list_get_duplicate(store: &dyn Store) {
    assert!(store.list_environments().await.unwrap().is_empty());
    make_env(store, "staging", false).await;
    make_env(store, "prod", true).await;

    let listed = store.list_environments().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["prod", "staging"], "listed by name");
    assert_eq!(
        store.get_environment(&env("prod")).await.unwrap(),
        Some(EnvironmentRecord {
            name: env("prod"),
            protected: true,
            rotate_after: None,
            created_at: at(1_000)
        })
    );
    assert!(
        !store
            .get_environment(&env("staging"))
            .await
            .unwrap()
            .unwrap()
            .protected
    );
    assert_eq!(store.get_environment(&env("nope")).await.unwrap(), None);

    let again = EnvironmentRecord {
        name: env("prod"),
        protected: false,
        rotate_after: None,
        created_at: at(5),
    };
    let err = store
        .create_environment(&again, &audit(5, "environment.created", "environment prod"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists(what) if what == "environment prod"),
        "{err:?}"
    );
    assert!(
        store
            .get_environment(&env("prod"))
            .await
            .unwrap()
            .unwrap()
            .protected,
        "duplicate changed nothing"
    );
    assert_eq!(
        audit_len(store).await,
        2,
        "a refused create leaves no audit entry"
    );
}

pub async fn consumers_create_get_list(store: &dyn Store) {
    make_env(store, "prod", true).await;
    make_env(store, "staging", false).await;
    let (billing, _) = draft("prod", "billing-app", 1, 2_000);
    let created = store
        .create_consumer(
            &billing,
            &[audit(2_000, "consumer.created", "prod/billing-app")],
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(created.consumer, billing);
    let other = create(store, "staging", "billing-app", 2).await;
    let alpha = create(store, "prod", "alpha", 3).await;
    assert!(
        created.id != other.id && other.id != alpha.id && created.id != alpha.id,
        "ids are distinct"
    );

    let got = store
        .get_consumer(&consumer_ref("prod", "billing-app"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got, created,
        "get returns what create returned, revision included"
    );
    assert_eq!(got.consumer.versions.len(), 1);
    assert_eq!(got.consumer.versions[0].state, StoredState::Active);
    assert_eq!(
        store
            .get_consumer(&consumer_ref("prod", "nobody"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_consumer(&consumer_ref("nowhere", "billing-app"))
            .await
            .unwrap(),
        None
    );

    let all = store.list_consumers(None).await.unwrap();
    let refs: Vec<String> = all.iter().map(|c| c.consumer.reference()).collect();
    assert_eq!(
        refs,
        ["prod/alpha", "prod/billing-app", "staging/billing-app"],
        "by environment then name"
    );
    let prod = store.list_consumers(Some(&env("prod"))).await.unwrap();
    assert_eq!(prod, vec![alpha, created]);
    assert!(
        store
            .list_consumers(Some(&env("nowhere")))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn consumer_duplicate_and_unknown_environment(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let first = create(store, "prod", "billing-app", 1).await;
    let before = audit_len(store).await;

    let (dup, _) = draft("prod", "billing-app", 2, 3_000);
    let err = store
        .create_consumer(
            &dup,
            &[audit(3_000, "consumer.created", "prod/billing-app")],
            &[],
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists(what) if what == "consumer prod/billing-app"),
        "{err:?}"
    );

    let (lost, _) = draft("nowhere", "billing-app", 3, 3_000);
    let err = store
        .create_consumer(
            &lost,
            &[audit(3_000, "consumer.created", "nowhere/billing-app")],
            &[],
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(what) if what == "environment nowhere"),
        "{err:?}"
    );

    assert_eq!(
        audit_len(store).await,
        before,
        "refused creates leave no audit entry"
    );
    assert_eq!(store.list_consumers(None).await.unwrap(), vec![first]);
}

pub async fn write_round_trips_every_version_field(store: &dyn Store) {
    make_env(store, "prod", true).await;
    let environment = env("prod");
    let mut current = create(store, "prod", "billing-app", 1).await;
    let reference = consumer_ref("prod", "billing-app");
    let hour = Duration::from_secs(3_600);

    let steps = [
        (rotate(&environment, 10, hour, true), 10_000),
        (rotate(&environment, 11, Duration::ZERO, false), 20_000),
        (
            Command::Revoke {
                version: VersionNumber(1),
                reason: "leaked in CI logs".to_owned(),
            },
            30_000,
        ),
        (rotate(&environment, 12, hour, false), 40_000),
        (
            Command::Retire {
                version: VersionNumber(3),
            },
            50_000,
        ),
        (Command::Disable, 60_000),
        (Command::Enable, 70_000),
        (Command::Disable, 80_000),
    ];
    for (command, now) in steps {
        let written = apply(store, &current, command.clone(), now).await.unwrap();
        assert_eq!(written.id, current.id);
        assert_eq!(
            written.revision,
            current.revision + 1,
            "every write moves the revision"
        );
        let read = store.get_consumer(&reference).await.unwrap().unwrap();
        assert_eq!(read, written, "after {command:?}");
        current = read;
    }

    // The sequence above leaves v1 with every optional field set, so all of them went through
    // the database and came back equal.
    let v1 = &current.consumer.versions[0];
    assert_eq!(v1.state, StoredState::Revoked);
    assert!(v1.deadline.is_some() && v1.expires_at.is_some() && v1.retired_at.is_some());
    assert!(v1.revoked_at.is_some() && v1.revoke_reason.is_some());
    assert_eq!(
        v1.replaced_by,
        Some(VersionNumber(3)),
        "the latest rotation that demoted it"
    );
    assert!(v1.enforced);
    let states: Vec<StoredState> = current.consumer.versions.iter().map(|v| v.state).collect();
    assert_eq!(
        states,
        [
            StoredState::Revoked,
            StoredState::Retired,
            StoredState::Retired,
            StoredState::Active
        ]
    );
    assert!(current.consumer.disabled);
    assert_eq!(store.load_all().await.unwrap(), vec![current]);
}

pub async fn stale_write_conflicts(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let stale = create(store, "prod", "billing-app", 1).await;
    let fresh = apply(store, &stale, Command::Disable, 10_000)
        .await
        .unwrap();
    let before = audit_len(store).await;

    let err = apply(
        store,
        &stale,
        rotate(&env("prod"), 5, Duration::from_secs(60), false),
        11_000,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(what) if what == "prod/billing-app"),
        "{err:?}"
    );
    assert_eq!(
        store
            .get_consumer(&consumer_ref("prod", "billing-app"))
            .await
            .unwrap()
            .unwrap(),
        fresh,
        "nothing written"
    );
    assert_eq!(audit_len(store).await, before, "nor audited");

    // Reading again and retrying is the documented way out.
    let retried = apply(
        store,
        &fresh,
        rotate(&env("prod"), 5, Duration::from_secs(60), false),
        11_000,
    )
    .await
    .unwrap();
    assert_eq!(retried.revision, fresh.revision + 1);
    assert_eq!(retried.consumer.versions.len(), 2);
}

pub async fn concurrent_writers_one_wins(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let base = create(store, "prod", "billing-app", 1).await;
    let environment = env("prod");
    let (a, b) = tokio::join!(
        apply(
            store,
            &base,
            rotate(&environment, 21, Duration::from_secs(60), false),
            10_000
        ),
        apply(
            store,
            &base,
            rotate(&environment, 22, Duration::from_secs(60), false),
            10_000
        ),
    );
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        other => panic!("exactly one writer must win: {other:?}"),
    };
    assert!(matches!(lost, StoreError::Conflict(_)), "{lost:?}");
    let read = store
        .get_consumer(&consumer_ref("prod", "billing-app"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, won);
    assert_eq!(read.consumer.versions.len(), 2);
}

pub async fn kid_collision_on_create_and_on_rotate(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let taken = create(store, "prod", "first", 1).await;
    let other = create(store, "prod", "second", 2).await;
    let taken_kid = taken.consumer.versions[0].kid;
    let before = audit_len(store).await;

    // A new consumer whose v1 has a kid already in use.
    let (mut clash, _) = draft("prod", "third", 3, 3_000);
    clash.versions[0].kid = taken_kid;
    let err = store
        .create_consumer(
            &clash,
            &[audit(3_000, "consumer.created", "prod/third")],
            &[],
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::KidCollision), "{err:?}");
    assert_eq!(
        store
            .get_consumer(&consumer_ref("prod", "third"))
            .await
            .unwrap(),
        None,
        "the whole create rolled back"
    );

    // A rotation whose new version has a kid already in use.
    let (mut new_version, _) = new_version(&env("prod"), &mut TestEntropy(4), None);
    new_version.kid = taken_kid;
    let command = Command::Rotate {
        grace: Duration::from_secs(60),
        enforce: false,
        new_version,
    };
    let err = apply(store, &other, command, 4_000).await.unwrap_err();
    assert!(matches!(err, StoreError::KidCollision), "{err:?}");
    assert_eq!(
        store
            .get_consumer(&consumer_ref("prod", "second"))
            .await
            .unwrap()
            .unwrap(),
        other,
        "the whole write rolled back"
    );
    assert_eq!(audit_len(store).await, before);
}

pub async fn idempotency_key_reuse(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let record = IdempotencyRecord {
        key: "8c2a6e1f-retry-me".to_owned(),
        request_hash: "ab".repeat(32),
        status: 201,
        response: "{\"consumer\":\"prod/billing-app\",\"key\":null}".to_owned(),
        created_at: at(2_000),
        sealed_key: None,
    };
    assert_eq!(store.find_idempotency(&record.key).await.unwrap(), None);
    let (consumer, _) = draft("prod", "billing-app", 1, 2_000);
    let created = store
        .create_consumer(
            &consumer,
            &[audit(2_000, "consumer.created", "prod/billing-app")],
            &[],
            Some(&record),
        )
        .await
        .unwrap();
    assert_eq!(
        store.find_idempotency(&record.key).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(store.find_idempotency("another-key").await.unwrap(), None);
    let before = audit_len(store).await;

    // Reused by a lifecycle write: nothing of the write happens.
    let transition = created
        .consumer
        .apply(Command::Disable, &Usage::NONE, at(3_000))
        .unwrap();
    let reused = IdempotencyRecord {
        status: 200,
        created_at: at(3_000),
        ..record.clone()
    };
    let err = store
        .write_consumer(ConsumerWrite {
            expected_revision: created.revision,
            id: created.id,
            consumer: &transition.consumer,
            audit: &[audit(3_000, "consumer.disabled", "prod/billing-app")],
            idempotency: Some(&reused),
            events: &[],
            handover: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IdempotencyKeyUsed), "{err:?}");
    assert_eq!(
        store
            .get_consumer(&consumer_ref("prod", "billing-app"))
            .await
            .unwrap()
            .unwrap(),
        created
    );
    assert_eq!(audit_len(store).await, before);

    // Reused by a create: the consumer is not created.
    let (second, _) = draft("prod", "other-app", 2, 3_000);
    let err = store
        .create_consumer(
            &second,
            &[audit(3_000, "consumer.created", "prod/other-app")],
            &[],
            Some(&reused),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IdempotencyKeyUsed), "{err:?}");
    assert_eq!(
        store
            .get_consumer(&consumer_ref("prod", "other-app"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.find_idempotency(&record.key).await.unwrap(),
        Some(record),
        "the first answer stays"
    );
}

pub async fn write_guards_refuse_bad_writes(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let stored = create(store, "prod", "billing-app", 1).await;
    let other = create(store, "prod", "other-app", 2).await;
    let write = |consumer: &Consumer, id: i64| {
        let consumer = consumer.clone();
        async move {
            store
                .write_consumer(ConsumerWrite {
                    expected_revision: 1,
                    id,
                    consumer: &consumer,
                    audit: &[audit(5_000, "consumer.disabled", "prod/billing-app")],
                    idempotency: None,
                    events: &[],
                    handover: None,
                })
                .await
        }
    };

    // An id that does not exist, or that belongs to another consumer.
    let err = write(&stored.consumer, stored.id + other.id + 100)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = write(&stored.consumer, other.id).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    // Two active versions.
    let mut two_active = stored.consumer.clone();
    let mut extra = two_active.versions[0].clone();
    extra.number = VersionNumber(2);
    extra.kid = issue(&env("prod"), &mut TestEntropy(99)).kid;
    two_active.versions.push(extra);
    let err = write(&two_active, stored.id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");

    // Changed key material of an existing version.
    let mut swapped = stored.consumer.clone();
    swapped.versions[0].secret_hash = SecretHash::of(b"another secret");
    let err = write(&swapped, stored.id).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("key material")),
        "{err:?}"
    );

    // A dropped version.
    let rotated = apply(
        store,
        &stored,
        rotate(&env("prod"), 7, Duration::from_secs(60), false),
        6_000,
    )
    .await
    .unwrap();
    let mut dropped = rotated.consumer.clone();
    dropped.versions.remove(0);
    let err = store
        .write_consumer(ConsumerWrite {
            expected_revision: rotated.revision,
            id: rotated.id,
            consumer: &dropped,
            audit: &[],
            idempotency: None,
            events: &[],
            handover: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("never deleted")),
        "{err:?}"
    );

    assert_eq!(
        store
            .get_consumer(&consumer_ref("prod", "billing-app"))
            .await
            .unwrap()
            .unwrap(),
        rotated,
        "nothing written"
    );
    assert_eq!(
        store
            .get_consumer(&consumer_ref("prod", "other-app"))
            .await
            .unwrap()
            .unwrap(),
        other
    );
}

pub async fn admin_tokens(store: &dyn Store) {
    assert_eq!(store.count_admin_tokens().await.unwrap(), 0);
    assert_eq!(store.find_admin_token("tok_first").await.unwrap(), None);
    let token = AdminTokenRecord {
        id: "tok_first".to_owned(),
        secret_hash: SecretHash::of(b"admin secret"),
        name: "bootstrap".to_owned(),
        scopes: vec!["admin".to_owned(), "consumers:write".to_owned()],
        created_at: at(1_000),
    };
    store
        .create_admin_token(
            &token,
            &audit(1_000, "admin_token.created", "admin token tok_first"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.find_admin_token("tok_first").await.unwrap(),
        Some(token.clone())
    );
    assert_eq!(store.count_admin_tokens().await.unwrap(), 1);

    let err = store
        .create_admin_token(
            &token,
            &audit(2_000, "admin_token.created", "admin token tok_first"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists(what) if what == "admin token tok_first"),
        "{err:?}"
    );

    let scopeless = AdminTokenRecord {
        id: "tok_second".to_owned(),
        scopes: Vec::new(),
        ..token.clone()
    };
    store
        .create_admin_token(
            &scopeless,
            &audit(3_000, "admin_token.created", "admin token tok_second"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.find_admin_token("tok_second").await.unwrap(),
        Some(scopeless)
    );
    assert_eq!(store.count_admin_tokens().await.unwrap(), 2);
    assert_eq!(audit_len(store).await, 2);
}

pub async fn audit_in_order_newest_first(store: &dyn Store) {
    assert!(store.list_audit(10).await.unwrap().is_empty());
    make_env(store, "prod", false).await;
    let (consumer, _) = draft("prod", "billing-app", 1, 2_000);
    let entries = [
        audit(2_000, "consumer.created", "prod/billing-app"),
        AuditRecord {
            remote_addr: Some("192.0.2.7:51234".to_owned()),
            request_id: None,
            ..audit(2_000, "version.issued", "prod/billing-app v1")
        },
    ];
    let created = store
        .create_consumer(&consumer, &entries, &[], None)
        .await
        .unwrap();
    apply(store, &created, Command::Disable, 3_000)
        .await
        .unwrap();

    let newest_first = store.list_audit(100).await.unwrap();
    let actions: Vec<&str> = newest_first.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "consumer.disabled",
            "version.issued",
            "consumer.created",
            "environment.created"
        ]
    );
    assert!(
        newest_first.windows(2).all(|w| w[0].seq > w[1].seq),
        "seq grows with every append"
    );
    for (got, sent) in newest_first[1..3].iter().zip(entries.iter().rev()) {
        assert_eq!(
            got,
            &AuditRecord {
                seq: got.seq,
                ..sent.clone()
            },
            "every field round-trips"
        );
    }
    assert_eq!(store.list_audit(2).await.unwrap(), newest_first[..2]);
    assert!(store.list_audit(0).await.unwrap().is_empty());
}

pub async fn load_all_returns_everything(store: &dyn Store) {
    assert!(store.load_all().await.unwrap().is_empty());
    make_env(store, "prod", false).await;
    make_env(store, "dev", false).await;
    let mut expected = Vec::new();
    for i in 0..30u64 {
        let env_name = if i % 3 == 0 { "dev" } else { "prod" };
        let mut current = create(store, env_name, &format!("app-{i:02}"), 100 + i).await;
        // Between 1 and 4 versions, so consumers' versions interleave in the versions table.
        for r in 0..(i % 4) {
            let command = rotate(
                &env(env_name),
                1_000 + i * 10 + r,
                Duration::from_secs(600),
                false,
            );
            current = apply(store, &current, command, 10_000 + i64::try_from(r).unwrap())
                .await
                .unwrap();
        }
        expected.push(current);
    }
    expected.sort_by_key(|c| c.consumer.reference());
    let mut loaded = store.load_all().await.unwrap();
    loaded.sort_by_key(|c| c.consumer.reference());
    assert_eq!(loaded, expected);
    let versions: usize = loaded.iter().map(|c| c.consumer.versions.len()).sum();
    assert_eq!(versions, 30 + (0..30).map(|i| i % 4).sum::<usize>());
}

pub async fn policy_and_stall_fields_round_trip(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let environment = env("prod");
    let reference = consumer_ref("prod", "billing-app");
    let policy = Policy {
        retire: RetirePolicy::AtDeadline,
        idle: Duration::from_secs(1_800),
        on_stall: OnStall::Extend,
    };
    let (mut drafted, _) = draft("prod", "billing-app", 1, 2_000);
    drafted.policy = policy;
    let created = store
        .create_consumer(
            &drafted,
            &[audit(2_000, "consumer.created", "prod/billing-app")],
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(created.consumer.policy, policy);
    assert_eq!(
        store.get_consumer(&reference).await.unwrap().unwrap(),
        created
    );

    // Rotated with an hour of grace: v1 is retiring until `deadline`, and keeps the grace as
    // the one extension a stall may get.
    let grace = Duration::from_secs(3_600);
    let rotated = apply(
        store,
        &created,
        rotate(&environment, 10, grace, false),
        10_000,
    )
    .await
    .unwrap();
    let deadline = 10_000 + HOUR;
    let read = store.get_consumer(&reference).await.unwrap().unwrap();
    assert_eq!(read, rotated);
    let v1 = &read.consumer.versions[0];
    assert_eq!(
        (v1.state, v1.deadline, v1.grace),
        (StoredState::Retiring, Some(at(deadline)), grace)
    );
    assert_eq!(read.consumer.versions[1].grace, Duration::ZERO);

    // At the deadline v1 was still seen a minute ago: stalled, extended once by its grace.
    let seen = [
        (VersionNumber(1), at(deadline - 60_000)),
        (VersionNumber(2), at(deadline - 1_000)),
    ];
    let transition = read
        .consumer
        .apply(Command::Settle, &Usage::new(&seen), at(deadline + 1_000))
        .unwrap();
    assert!(
        transition
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Stalled { .. })),
        "{:?}",
        transition.effects
    );
    let stalled = apply_with(
        store,
        &read,
        Command::Settle,
        &Usage::new(&seen),
        deadline + 1_000,
    )
    .await
    .unwrap();
    let read = store.get_consumer(&reference).await.unwrap().unwrap();
    assert_eq!(read, stalled);
    let v1 = &read.consumer.versions[0];
    assert_eq!(v1.state, StoredState::Retiring);
    assert!(v1.extended, "the extension is written down");
    assert_eq!(v1.deadline, Some(at(deadline + HOUR)));
    assert_eq!(v1.grace, grace);

    // A day after v2 was issued nobody has used it (as far as this usage knows): reported once;
    // v1's extended deadline has passed too.
    let day_later = 10_000 + 24 * HOUR;
    let settled = apply(store, &read, Command::Settle, day_later)
        .await
        .unwrap();
    let read = store.get_consumer(&reference).await.unwrap().unwrap();
    assert_eq!(read, settled);
    let (v1, v2) = (&read.consumer.versions[0], &read.consumer.versions[1]);
    assert_eq!(v1.state, StoredState::Retired);
    assert!(v1.extended && !v1.unused_reported);
    assert_eq!(v2.state, StoredState::Active);
    assert!(v2.unused_reported && !v2.extended);

    // A policy change alone is a write like any other.
    let mut changed = read.consumer.clone();
    changed.policy = Policy {
        retire: RetirePolicy::WhenIdle,
        idle: Duration::from_millis(300_001),
        on_stall: OnStall::Retire,
    };
    let written = store
        .write_consumer(ConsumerWrite {
            expected_revision: read.revision,
            id: read.id,
            consumer: &changed,
            audit: &[audit(day_later, "consumer.updated", "prod/billing-app")],
            idempotency: None,
            events: &[],
            handover: None,
        })
        .await
        .unwrap();
    assert_eq!(written.consumer.policy, changed.policy);
    let read = store.get_consumer(&reference).await.unwrap().unwrap();
    assert_eq!(read, written);
    assert_eq!(
        store.list_consumers(None).await.unwrap(),
        vec![read.clone()]
    );
    assert_eq!(store.load_all().await.unwrap(), vec![read.clone()]);

    // Durations the columns cannot hold exactly (whole milliseconds) are refused, not rounded.
    let mut sub_milli = read.consumer.clone();
    sub_milli.policy.idle = Duration::from_micros(1_500);
    let mut sub_milli_grace = read.consumer.clone();
    sub_milli_grace.versions[0].grace = Duration::from_nanos(1);
    for bad in [&sub_milli, &sub_milli_grace] {
        let err = store
            .write_consumer(ConsumerWrite {
                expected_revision: read.revision,
                id: read.id,
                consumer: bad,
                audit: &[],
                idempotency: None,
                events: &[],
                handover: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("whole number of milliseconds")),
            "{err:?}"
        );
    }
    let (mut bad_create, _) = draft("prod", "other-app", 2, 2_000);
    bad_create.policy.idle = Duration::from_micros(1);
    let err = store
        .create_consumer(&bad_create, &[], &[], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(store.load_all().await.unwrap(), vec![read]);
}

pub async fn creation_events_commit_with_the_consumer_or_not_at_all(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let (consumer, _) = draft("prod", "billing-app", 1, 2_000);
    let events = [
        event(2_000, &Effect::Created, "prod/billing-app"),
        event(2_000, &Effect::Issued(VersionNumber(1)), "prod/billing-app"),
    ];
    store
        .create_consumer(
            &consumer,
            &[audit(2_000, "consumer.created", "prod/billing-app")],
            &events,
            None,
        )
        .await
        .unwrap();
    let kinds = |all: Vec<EventRecord>| -> Vec<(String, Option<u32>)> {
        all.into_iter().map(|e| (e.kind, e.version)).collect()
    };
    let expected = vec![
        ("consumer.created".to_owned(), None),
        ("version.issued".to_owned(), Some(1)),
    ];
    assert_eq!(kinds(store.list_events(0, 10).await.unwrap()), expected);
    // A creation that fails (the consumer exists) leaves no event behind.
    let (again, _) = draft("prod", "billing-app", 2, 3_000);
    let err = store
        .create_consumer(
            &again,
            &[audit(3_000, "consumer.created", "prod/billing-app")],
            &[event(3_000, &Effect::Created, "prod/billing-app")],
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(kinds(store.list_events(0, 10).await.unwrap()), expected);
}

pub async fn events_are_written_with_their_change_and_paged(store: &dyn Store) {
    assert!(store.list_events(0, 100).await.unwrap().is_empty());
    make_env(store, "prod", false).await;
    let environment = env("prod");
    let created = create(store, "prod", "billing-app", 1).await;
    assert!(
        store.list_events(0, 100).await.unwrap().is_empty(),
        "creating writes no event"
    );
    let hour = Duration::from_secs(3_600);
    let rotated = apply(
        store,
        &created,
        rotate(&environment, 10, hour, false),
        10_000,
    )
    .await
    .unwrap();
    let disabled = apply(store, &rotated, Command::Disable, 20_000)
        .await
        .unwrap();
    let revoked = apply(
        store,
        &disabled,
        Command::Revoke {
            version: VersionNumber(1),
            reason: "leaked".to_owned(),
        },
        30_000,
    )
    .await
    .unwrap();

    let all = store.list_events(0, 100).await.unwrap();
    let kinds: Vec<(&str, Option<u32>)> =
        all.iter().map(|e| (e.kind.as_str(), e.version)).collect();
    assert_eq!(
        kinds,
        [
            ("version.retiring", Some(1)),
            ("version.issued", Some(2)),
            ("consumer.disabled", None),
            ("version.revoked", Some(1)),
        ],
        "oldest first, in the order each write listed them"
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "seq grows");
    assert!(all[0].seq > 0);
    let expected = EventRecord {
        seq: all[2].seq,
        ..event(20_000, &Effect::Disabled, "prod/billing-app")
    };
    assert_eq!(all[2], expected, "every field round-trips");

    // Paging: after the last seq seen, at most `limit`.
    assert_eq!(store.list_events(0, 2).await.unwrap(), all[..2]);
    assert_eq!(store.list_events(all[1].seq, 2).await.unwrap(), all[2..]);
    assert_eq!(store.list_events(all[2].seq, 100).await.unwrap(), all[3..]);
    assert!(store.list_events(all[3].seq, 100).await.unwrap().is_empty());
    assert!(store.list_events(0, 0).await.unwrap().is_empty());
    assert_eq!(store.list_events(-5, 100).await.unwrap(), all);

    // A write that fails appends none of its events.
    let err = apply(store, &rotated, Command::Enable, 40_000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let stray = event(40_000, &Effect::Enabled, "prod/billing-app");
    let mut dropped = revoked.consumer.clone();
    dropped.versions.pop();
    let err = store
        .write_consumer(ConsumerWrite {
            expected_revision: revoked.revision,
            id: revoked.id,
            consumer: &dropped,
            audit: &[],
            idempotency: None,
            events: std::slice::from_ref(&stray),
            handover: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(store.list_events(0, 100).await.unwrap(), all);

    // A write may carry events without any audit entry.
    let written = store
        .write_consumer(ConsumerWrite {
            expected_revision: revoked.revision,
            id: revoked.id,
            consumer: &revoked.consumer,
            audit: &[],
            idempotency: None,
            events: std::slice::from_ref(&stray),
            handover: None,
        })
        .await
        .unwrap();
    assert_eq!(written.revision, revoked.revision + 1);
    let after = store.list_events(all[3].seq, 100).await.unwrap();
    assert_eq!(
        after,
        [EventRecord {
            seq: after[0].seq,
            ..stray
        }]
    );
}

/// Two versions of `prod/billing-app` (v1 retiring, v2 active) and a kid no version has.
async fn two_versions(store: &dyn Store) -> (Kid, Kid, Kid) {
    make_env(store, "prod", false).await;
    let created = create(store, "prod", "billing-app", 1).await;
    let rotated = apply(
        store,
        &created,
        rotate(&env("prod"), 10, Duration::from_secs(3_600), false),
        10_000,
    )
    .await
    .unwrap();
    let unknown = issue(&env("prod"), &mut TestEntropy(999)).kid;
    let kids: Vec<Kid> = rotated.consumer.versions.iter().map(|v| v.kid).collect();
    assert!(!kids.contains(&unknown));
    (kids[0], kids[1], unknown)
}

pub async fn record_usage_adds_keeps_the_latest_and_trims(store: &dyn Store) {
    let (k1, k2, unknown) = two_versions(store).await;
    let base = 100 * HOUR;
    store.record_usage(&[], 3).await.unwrap();
    let odd_agent = "Mozilla/5.0 \"quoted\" \\ back\tslash \u{e9}";

    let first = [
        delta(
            k1,
            base + 5_000,
            &[(base, 3), (base + HOUR, 2)],
            vec![
                source("10.0.0.1", "curl/8.5", None, base + 1_000, base + 5_000, 3),
                source(
                    "10.0.0.2",
                    "billing/2.1",
                    Some("billing-worker"),
                    base + HOUR,
                    base + HOUR + 10,
                    2,
                ),
            ],
        ),
        // A kid that does not exist (a version of a consumer never stored): skipped, and the
        // rest of the batch is written.
        delta(
            unknown,
            base + 9_000,
            &[(base, 7)],
            vec![source("10.0.0.9", "x", None, base, base, 1)],
        ),
        delta(
            k2,
            base + HOUR + 500,
            &[(base + HOUR, 1)],
            vec![source(
                "10.0.0.3",
                "",
                None,
                base + HOUR + 500,
                base + HOUR + 500,
                1,
            )],
        ),
    ];
    store.record_usage(&first, 3).await.unwrap();

    let second = [
        delta(
            k1,
            base + 1_000, // earlier than stored: the stored time stays
            &[(base + HOUR, 4), (base + 2 * HOUR, 1)],
            vec![
                // Seen before, first earlier and last later than stored.
                source("10.0.0.1", "curl/8.5", None, base, base + 2 * HOUR, 1),
                source(
                    "10.0.0.4",
                    odd_agent,
                    None,
                    base + 2 * HOUR + 1,
                    base + 2 * HOUR + 1,
                    1,
                ),
                // The least recent of four: trimmed by max_sources = 3.
                source("10.0.0.5", "old/1", None, base - 100, base - 100, 9),
            ],
        ),
        // The same kid twice in one batch.
        delta(k1, base + 4_000, &[(base + 2 * HOUR, 2)], vec![]),
    ];
    store.record_usage(&second, 3).await.unwrap();

    let usage = store.usage(&[k1, k2, unknown], at(0)).await.unwrap();
    assert_eq!(
        usage[0],
        VersionUsage {
            kid: k1,
            last_used_at: Some(at(base + 5_000)),
            hourly: vec![
                (at(base), 3),
                (at(base + HOUR), 6),
                (at(base + 2 * HOUR), 3)
            ],
            sources: vec![
                source(
                    "10.0.0.4",
                    odd_agent,
                    None,
                    base + 2 * HOUR + 1,
                    base + 2 * HOUR + 1,
                    1
                ),
                source("10.0.0.1", "curl/8.5", None, base, base + 2 * HOUR, 4),
                source(
                    "10.0.0.2",
                    "billing/2.1",
                    Some("billing-worker"),
                    base + HOUR,
                    base + HOUR + 10,
                    2
                ),
            ],
        }
    );
    assert_eq!(
        usage[1],
        VersionUsage {
            kid: k2,
            last_used_at: Some(at(base + HOUR + 500)),
            hourly: vec![(at(base + HOUR), 1)],
            sources: vec![source(
                "10.0.0.3",
                "",
                None,
                base + HOUR + 500,
                base + HOUR + 500,
                1
            )],
        }
    );
    assert_eq!(
        usage[2],
        VersionUsage {
            kid: unknown,
            last_used_at: None,
            hourly: vec![],
            sources: vec![],
        },
        "nothing was stored for the unknown kid"
    );

    // A smaller max_sources trims the versions of the next batch, even without new sources.
    store
        .record_usage(&[delta(k1, base, &[], vec![])], 1)
        .await
        .unwrap();
    let usage = store.usage(&[k1, k2], at(0)).await.unwrap();
    assert_eq!(usage[0].sources.len(), 1);
    assert_eq!(usage[0].sources[0].address, "10.0.0.4");
    assert_eq!(usage[0].last_used_at, Some(at(base + 5_000)));
    assert_eq!(usage[1].sources.len(), 1, "k2 was not in that batch");

    // A batch of nothing but unknown kids is no error either.
    store
        .record_usage(&[delta(unknown, base, &[(base, 1)], vec![])], 3)
        .await
        .unwrap();
    let mut last = store.last_used_all().await.unwrap();
    last.sort();
    let mut expected = vec![(k1, at(base + 5_000)), (k2, at(base + HOUR + 500))];
    expected.sort();
    assert_eq!(last, expected);
}

pub async fn usage_filters_hours_and_answers_every_kid_asked(store: &dyn Store) {
    let (k1, k2, unknown) = two_versions(store).await;
    assert!(store.usage(&[], at(0)).await.unwrap().is_empty());
    let unseen = store.usage(&[k2, k1], at(0)).await.unwrap();
    assert_eq!(
        unseen.iter().map(|u| u.kid).collect::<Vec<_>>(),
        [k2, k1],
        "every kid asked, in the order asked, used or not"
    );
    assert!(
        unseen
            .iter()
            .all(|u| u.last_used_at.is_none() && u.hourly.is_empty() && u.sources.is_empty())
    );

    let base = 500 * HOUR;
    let hours: Vec<(i64, u64)> = (0..5)
        .map(|h| (base + h * HOUR, 10 + h.unsigned_abs()))
        .collect();
    store
        .record_usage(
            &[delta(
                k1,
                base + 4 * HOUR + 1,
                &hours,
                vec![source(
                    "192.0.2.1",
                    "ua",
                    None,
                    base,
                    base + 4 * HOUR + 1,
                    60,
                )],
            )],
            10,
        )
        .await
        .unwrap();

    let since = |t: i64| async move { store.usage(&[k1], at(t)).await.unwrap().remove(0) };
    let all = since(0).await;
    assert_eq!(all.hourly.len(), 5);
    assert!(
        all.hourly.windows(2).all(|w| w[0].0 < w[1].0),
        "oldest first"
    );
    let recent = since(base + 3 * HOUR).await;
    assert_eq!(
        recent.hourly,
        [(at(base + 3 * HOUR), 13), (at(base + 4 * HOUR), 14)],
        "from `since` on, the hour starting at `since` included"
    );
    let between = since(base + 3 * HOUR - 1).await;
    assert_eq!(between.hourly, recent.hourly);
    let future = since(base + 10 * HOUR).await;
    assert!(future.hourly.is_empty());
    assert_eq!(
        future.last_used_at,
        Some(at(base + 4 * HOUR + 1)),
        "since filters hours only"
    );
    assert_eq!(future.sources.len(), 1, "since filters hours only");

    // A kid asked twice is answered twice; unknown kids are answered as unused.
    let twice = store
        .usage(&[k1, unknown, k1], at(base + 4 * HOUR))
        .await
        .unwrap();
    assert_eq!(twice.len(), 3);
    assert_eq!(twice[0], twice[2]);
    assert_eq!(twice[0].hourly, [(at(base + 4 * HOUR), 14)]);
    assert_eq!(twice[1].kid, unknown);
    assert!(twice[1].last_used_at.is_none());
}

pub async fn last_used_all_lists_every_used_version(store: &dyn Store) {
    assert!(store.last_used_all().await.unwrap().is_empty());
    let (k1, k2, _) = two_versions(store).await;
    assert!(
        store.last_used_all().await.unwrap().is_empty(),
        "nothing used yet"
    );
    store
        .record_usage(&[delta(k2, 7_000, &[], vec![])], 5)
        .await
        .unwrap();
    assert_eq!(store.last_used_all().await.unwrap(), [(k2, at(7_000))]);
    store
        .record_usage(
            &[delta(k1, 9_000, &[], vec![]), delta(k2, 6_000, &[], vec![])],
            5,
        )
        .await
        .unwrap();
    let mut all = store.last_used_all().await.unwrap();
    all.sort();
    let mut expected = vec![(k1, at(9_000)), (k2, at(7_000))];
    expected.sort();
    assert_eq!(all, expected, "the later time stays");
}

pub async fn no_secret_in_any_column(backend: &dyn Backend) {
    let store = backend.store();
    make_env(store, "prod", false).await;
    let (consumer, first_key) = draft("prod", "billing-app", 42, 2_000);
    let idempotency = IdempotencyRecord {
        key: "create-billing".to_owned(),
        request_hash: "cd".repeat(32),
        status: 201,
        response: "{\"kid\":\"stripped\"}".to_owned(),
        created_at: at(2_000),
        sealed_key: None,
    };
    let created = store
        .create_consumer(
            &consumer,
            &[audit(2_000, "consumer.created", "prod/billing-app")],
            &[],
            Some(&idempotency),
        )
        .await
        .unwrap();
    let (next, second_key) = new_version(&env("prod"), &mut TestEntropy(43), None);
    let command = Command::Rotate {
        grace: Duration::from_secs(60),
        enforce: false,
        new_version: next,
    };
    let rotated = apply(store, &created, command, 3_000).await.unwrap();
    // Usage of both versions, with sources, and the events of the rotation and a revocation.
    let usage: Vec<UsageDelta> = rotated
        .consumer
        .versions
        .iter()
        .map(|v| {
            delta(
                v.kid,
                3_500,
                &[(0, 4)],
                vec![source(
                    "198.51.100.7",
                    "billing/2.1",
                    Some("billing-worker"),
                    3_100,
                    3_500,
                    4,
                )],
            )
        })
        .collect();
    store.record_usage(&usage, 10).await.unwrap();
    apply(
        store,
        &rotated,
        Command::Revoke {
            version: VersionNumber(1),
            reason: "rotated after a leak".to_owned(),
        },
        3_600,
    )
    .await
    .unwrap();
    let admin_secret = "adminsecretQ7rT2kLm9ZpX4vB8nW3cY6";
    let token = AdminTokenRecord {
        id: "tok_admin".to_owned(),
        secret_hash: SecretHash::of(admin_secret.as_bytes()),
        name: "ops".to_owned(),
        scopes: vec!["admin".to_owned()],
        created_at: at(4_000),
    };
    store
        .create_admin_token(
            &token,
            &audit(4_000, "admin_token.created", "admin token tok_admin"),
        )
        .await
        .unwrap();

    let cells = backend.dump_cells().await;
    // The dump must see the data, or the check below proves nothing.
    for key in [&first_key, &second_key] {
        assert!(
            cells
                .iter()
                .any(|c| c.table == "key_versions" && c.bytes == key.kid.as_str().as_bytes()),
            "the dump does not show kid {}",
            key.kid
        );
    }
    for table in ["version_usage", "usage_hourly", "usage_sources", "events"] {
        assert!(
            cells
                .iter()
                .any(|c| c.table == table && !c.bytes.is_empty()),
            "the dump does not show table {table}"
        );
    }
    let secrets: [&[u8]; 5] = [
        secret_part(&first_key).as_bytes(),
        secret_part(&second_key).as_bytes(),
        first_key.reveal().as_bytes(),
        second_key.reveal().as_bytes(),
        admin_secret.as_bytes(),
    ];
    for cell in &cells {
        for secret in secrets {
            assert!(
                !cell.bytes.windows(secret.len()).any(|w| w == secret),
                "{}.{} holds a plaintext secret",
                cell.table,
                cell.column
            );
        }
    }
}

/// A sealed key comes back as written, and a later idempotent write more than
/// `IDEMPOTENT_KEY_WINDOW` after it clears it (the rest of the record stays for replays).
pub async fn idempotency_sealed_key_round_trips_and_is_cleared_after_its_window(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let window = keyroll_store::IDEMPOTENT_KEY_WINDOW.as_millis() as i64;
    let first = IdempotencyRecord {
        key: "11".repeat(32),
        request_hash: "ab".repeat(32),
        status: 201,
        response: "{\"key\":null}".to_owned(),
        created_at: at(2_000),
        sealed_key: Some(vec![0, 1, 2, 250, 251, 252]),
    };
    let (consumer, _) = draft("prod", "billing-app", 1, 2_000);
    let created = store
        .create_consumer(
            &consumer,
            &[audit(2_000, "consumer.created", "prod/billing-app")],
            &[],
            Some(&first),
        )
        .await
        .unwrap();
    assert_eq!(
        store.find_idempotency(&first.key).await.unwrap(),
        Some(first.clone())
    );
    // Inside the window: another write leaves it alone.
    let inside = IdempotencyRecord {
        key: "22".repeat(32),
        created_at: at(2_000 + window),
        sealed_key: None,
        ..first.clone()
    };
    let transition = created
        .consumer
        .apply(Command::Disable, &Usage::NONE, at(2_000 + window))
        .unwrap();
    let written = store
        .write_consumer(ConsumerWrite {
            expected_revision: created.revision,
            id: created.id,
            consumer: &transition.consumer,
            audit: &[audit(
                2_000 + window,
                "consumer.disabled",
                "prod/billing-app",
            )],
            idempotency: Some(&inside),
            events: &[],
            handover: None,
        })
        .await
        .unwrap();
    assert_eq!(
        store.find_idempotency(&first.key).await.unwrap(),
        Some(first.clone()),
        "exactly the window old: still kept"
    );
    // Past the window: the next idempotent write clears the ciphertext, not the record.
    let (second, _) = draft("prod", "other-app", 2, 3_001 + window);
    let later = IdempotencyRecord {
        key: "33".repeat(32),
        created_at: at(2_001 + window),
        sealed_key: Some(vec![9; 40]),
        ..first.clone()
    };
    store
        .create_consumer(
            &second,
            &[audit(2_001 + window, "consumer.created", "prod/other-app")],
            &[],
            Some(&later),
        )
        .await
        .unwrap();
    let cleared = store.find_idempotency(&first.key).await.unwrap().unwrap();
    assert_eq!(cleared.sealed_key, None, "cleared after its window");
    assert_eq!(
        cleared,
        IdempotencyRecord {
            sealed_key: None,
            ..first
        },
        "the rest of the record stays"
    );
    assert_eq!(
        store.find_idempotency(&later.key).await.unwrap(),
        Some(later),
        "the new one keeps its sealed key"
    );
    assert!(written.consumer.disabled);
}

/// The store keeps what it is given, so the server's contract is checked here at the bytes: a
/// record written the way the server writes it (a lookup hash, a sealed key) leaves neither the
/// `Idempotency-Key` header value nor the plaintext key in any column.
pub async fn idempotency_columns_hold_neither_header_nor_key(backend: &dyn Backend) {
    let store = backend.store();
    make_env(store, "prod", false).await;
    let header = "3f2b9c1e-7a4d-4e8b-9c2f-5a6b7c8d9e0f";
    let (consumer, key) = draft("prod", "billing-app", 7, 2_000);
    // Stand-ins for the server's derivations: a digest of the header and a keyed transform of
    // the key; what matters is that the raw values never reach the store.
    let lookup: String = header
        .bytes()
        .map(|b| format!("{:02x}", b ^ 0x5a))
        .collect();
    let sealed: Vec<u8> = key.reveal().bytes().map(|b| b ^ 0xa5).collect();
    let record = IdempotencyRecord {
        key: lookup.clone(),
        request_hash: "cd".repeat(32),
        status: 201,
        response: "{\"key\":null}".to_owned(),
        created_at: at(2_000),
        sealed_key: Some(sealed.clone()),
    };
    store
        .create_consumer(
            &consumer,
            &[audit(2_000, "consumer.created", "prod/billing-app")],
            &[],
            Some(&record),
        )
        .await
        .unwrap();
    let cells = backend.dump_cells().await;
    assert!(
        cells
            .iter()
            .any(|c| c.table == "idempotency_keys" && c.bytes == sealed),
        "the dump shows the sealed key, so the check below means something"
    );
    assert!(
        cells
            .iter()
            .any(|c| c.table == "idempotency_keys" && c.bytes == lookup.as_bytes()),
        "the dump shows the lookup hash"
    );
    for cell in &cells {
        for needle in [
            header.as_bytes(),
            key.reveal().as_bytes(),
            secret_part(&key).as_bytes(),
        ] {
            assert!(
                !cell.bytes.windows(needle.len()).any(|w| w == needle),
                "{}.{} holds the Idempotency-Key or the plaintext key",
                cell.table,
                cell.column
            );
        }
    }
}

fn token_entry(
    id: &str,
    secret: &str,
    scopes: &[&str],
    created: i64,
) -> keyroll_store::AdminTokenEntry {
    keyroll_store::AdminTokenEntry {
        token: AdminTokenRecord {
            id: id.to_owned(),
            secret_hash: SecretHash::of(secret.as_bytes()),
            name: "deploy".to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            created_at: at(created),
        },
        created_by: Some("tok_test".to_owned()),
        expires_at: None,
        revoked_at: None,
        revoke_reason: None,
        replaced_by: None,
        retires_at: None,
    }
}

pub async fn admin_token_lifecycle(store: &dyn Store) {
    use keyroll_store::{AdminGuard, TokenRevocation};
    assert_eq!(store.get_admin_token("tok_a").await.unwrap(), None);
    assert!(store.list_admin_tokens().await.unwrap().is_empty());

    // Every lifecycle field round-trips, and the old read path still sees the token.
    let mut a = token_entry("tok_a", "secret a", &["keys:read", "verify"], 1_000);
    a.expires_at = Some(at(90_000));
    store
        .create_admin_token_entry(
            &a,
            &audit(1_000, "admin_token.created", "admin token tok_a"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_admin_token("tok_a").await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        store.find_admin_token("tok_a").await.unwrap(),
        Some(a.token.clone())
    );
    let err = store
        .create_admin_token_entry(
            &a,
            &audit(1_500, "admin_token.created", "admin token tok_a"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");

    // A token made by the first-token path reads back with an empty lifecycle.
    let legacy = token_entry("tok_legacy", "secret legacy", &["admin"], 500);
    store
        .create_admin_token(
            &legacy.token,
            &audit(500, "admin_token.created", "admin token tok_legacy"),
        )
        .await
        .unwrap();
    let read = store.get_admin_token("tok_legacy").await.unwrap().unwrap();
    assert_eq!(read.created_by, None);
    assert_eq!(
        (
            read.expires_at,
            read.revoked_at,
            read.replaced_by,
            read.retires_at
        ),
        (None, None, None, None)
    );
    let ids: Vec<String> = store
        .list_admin_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.token.id)
        .collect();
    assert_eq!(ids, ["tok_legacy", "tok_a"], "oldest first");

    // Rotation: the new token exists, the old one names it and ends at the overlap.
    let b = token_entry("tok_b", "secret b", &["keys:read", "verify"], 2_000);
    let old = store
        .rotate_admin_token(
            "tok_a",
            at(5_000),
            &b,
            &[audit(2_000, "admin_token.rotated", "admin token tok_a")],
        )
        .await
        .unwrap();
    assert_eq!(old.replaced_by.as_deref(), Some("tok_b"));
    assert_eq!(old.retires_at, Some(at(5_000)));
    assert_eq!(
        store.get_admin_token("tok_b").await.unwrap(),
        Some(b.clone())
    );
    // A replaced token cannot be rotated again (that would fork the line).
    let c = token_entry("tok_c", "secret c", &["verify"], 3_000);
    let err = store
        .rotate_admin_token(
            "tok_a",
            at(6_000),
            &c,
            &[audit(3_000, "admin_token.rotated", "admin token tok_a")],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        store.get_admin_token("tok_c").await.unwrap(),
        None,
        "nothing of a refused rotation is kept"
    );
    let err = store
        .rotate_admin_token(
            "tok_nope",
            at(6_000),
            &c,
            &[audit(3_000, "admin_token.rotated", "admin token tok_nope")],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // An overlap never outlives the token's own expiry.
    let mut d = token_entry("tok_d", "secret d", &["verify"], 3_000);
    d.expires_at = Some(at(4_000));
    store
        .create_admin_token_entry(
            &d,
            &audit(3_000, "admin_token.created", "admin token tok_d"),
        )
        .await
        .unwrap();
    let e = token_entry("tok_e", "secret e", &["verify"], 3_500);
    let old_d = store
        .rotate_admin_token(
            "tok_d",
            at(9_000),
            &e,
            &[audit(3_500, "admin_token.rotated", "admin token tok_d")],
        )
        .await
        .unwrap();
    assert_eq!(old_d.retires_at, Some(at(4_000)));

    // Revocation records time and reason; a second one changes nothing and writes no audit.
    let before = audit_len(store).await;
    let revoked = store
        .revoke_admin_token(
            "tok_b",
            at(7_000),
            "laptop lost",
            AdminGuard::KeepOne,
            &audit(7_000, "admin_token.revoked", "admin token tok_b"),
        )
        .await
        .unwrap();
    let TokenRevocation::Revoked(entry) = revoked else {
        panic!("expected Revoked, got {revoked:?}");
    };
    assert_eq!(entry.revoked_at, Some(at(7_000)));
    assert_eq!(entry.revoke_reason.as_deref(), Some("laptop lost"));
    assert_eq!(audit_len(store).await, before + 1);
    let again = store
        .revoke_admin_token(
            "tok_b",
            at(8_000),
            "again",
            AdminGuard::KeepOne,
            &audit(8_000, "admin_token.revoked", "admin token tok_b"),
        )
        .await
        .unwrap();
    assert!(
        matches!(&again, TokenRevocation::AlreadyRevoked(e) if e.revoked_at == Some(at(7_000)) && e.revoke_reason.as_deref() == Some("laptop lost")),
        "{again:?}"
    );
    assert_eq!(audit_len(store).await, before + 1);
    let err = store
        .revoke_admin_token(
            "tok_nope",
            at(8_000),
            "x",
            AdminGuard::KeepOne,
            &audit(8_000, "admin_token.revoked", "admin token tok_nope"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // A revoked token cannot be rotated.
    let err = store
        .rotate_admin_token(
            "tok_b",
            at(9_000),
            &c,
            &[audit(9_000, "admin_token.rotated", "admin token tok_b")],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

pub async fn admin_token_last_admin_guard(store: &dyn Store) {
    use keyroll_store::{AdminGuard, TokenRevocation};
    let revoke = |id: &'static str, when: i64, guard: AdminGuard| async move {
        store
            .revoke_admin_token(
                id,
                at(when),
                "test",
                guard,
                &audit(when, "admin_token.revoked", id),
            )
            .await
            .unwrap()
    };
    let root = token_entry("tok_root", "secret root", &["admin"], 1_000);
    store
        .create_admin_token_entry(&root, &audit(1_000, "admin_token.created", "tok_root"))
        .await
        .unwrap();
    // Non-admin tokens do not count as a way back in.
    let reader = token_entry("tok_reader", "secret reader", &["consumers:read"], 1_000);
    store
        .create_admin_token_entry(&reader, &audit(1_000, "admin_token.created", "tok_reader"))
        .await
        .unwrap();
    // Nor does an expired admin token.
    let mut old = token_entry("tok_old", "secret old", &["admin"], 1_000);
    old.expires_at = Some(at(2_000));
    store
        .create_admin_token_entry(&old, &audit(1_000, "admin_token.created", "tok_old"))
        .await
        .unwrap();
    assert_eq!(
        revoke("tok_root", 3_000, AdminGuard::KeepOne).await,
        TokenRevocation::LastAdmin
    );
    assert_eq!(
        store
            .get_admin_token("tok_root")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None
    );
    // Revoking a non-admin token is never guarded.
    assert!(matches!(
        revoke("tok_reader", 3_000, AdminGuard::KeepOne).await,
        TokenRevocation::Revoked(_)
    ));

    // With a second valid admin token, the first can go; then the second is the last.
    let second = token_entry(
        "tok_second",
        "secret second",
        &["consumers:read", "admin"],
        3_000,
    );
    store
        .create_admin_token_entry(&second, &audit(3_000, "admin_token.created", "tok_second"))
        .await
        .unwrap();
    assert!(matches!(
        revoke("tok_root", 4_000, AdminGuard::KeepOne).await,
        TokenRevocation::Revoked(_)
    ));
    assert_eq!(
        revoke("tok_second", 4_000, AdminGuard::KeepOne).await,
        TokenRevocation::LastAdmin
    );

    // A token on its way out after a rotation does not count either: its replacement is the one.
    let next = token_entry("tok_next", "secret next", &["admin"], 5_000);
    store
        .rotate_admin_token(
            "tok_second",
            at(9_000),
            &next,
            &[audit(5_000, "admin_token.rotated", "tok_second")],
        )
        .await
        .unwrap();
    assert_eq!(
        revoke("tok_next", 5_000, AdminGuard::KeepOne).await,
        TokenRevocation::LastAdmin
    );
    // The explicit override does what it says.
    assert!(matches!(
        revoke("tok_next", 5_000, AdminGuard::Override).await,
        TokenRevocation::Revoked(_)
    ));
}

pub async fn no_secret_in_admin_token_lifecycle_columns(backend: &dyn Backend) {
    let store = backend.store();
    let secrets = [
        "tokensecretA1b2C3d4E5f6G7h8J9k0L1m2",
        "tokensecretZ9y8X7w6V5u4T3s2R1q0P9o8",
    ];
    let mut first = token_entry("tok_one", secrets[0], &["keys:read"], 1_000);
    first.expires_at = Some(at(50_000));
    store
        .create_admin_token_entry(
            &first,
            &audit(1_000, "admin_token.created", "admin token tok_one"),
        )
        .await
        .unwrap();
    let second = token_entry("tok_two", secrets[1], &["keys:read"], 2_000);
    store
        .rotate_admin_token(
            "tok_one",
            at(3_000),
            &second,
            &[audit(2_000, "admin_token.rotated", "admin token tok_one")],
        )
        .await
        .unwrap();
    store
        .revoke_admin_token(
            "tok_two",
            at(4_000),
            "rotated by hand",
            keyroll_store::AdminGuard::KeepOne,
            &audit(4_000, "admin_token.revoked", "admin token tok_two"),
        )
        .await
        .unwrap();
    let cells = backend.dump_cells().await;
    // Every new column is seen filled, or the check proves nothing for it.
    for column in [
        "expires_at",
        "revoked_at",
        "revoke_reason",
        "replaced_by",
        "retires_at",
        "created_by",
    ] {
        assert!(
            cells
                .iter()
                .any(|c| c.table == "admin_tokens" && c.column == column && !c.bytes.is_empty()),
            "the dump does not show admin_tokens.{column} filled"
        );
    }
    for cell in &cells {
        for secret in secrets {
            assert!(
                !cell
                    .bytes
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "{}.{} holds a plaintext token secret",
                cell.table,
                cell.column
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The audit log's hash chain (SPEC §8)

/// Every entry, oldest first, checked link by link with the core's verifier.
async fn verified_chain(store: &dyn Store) -> (Vec<keyroll_store::ChainedAudit>, Head) {
    let all = store
        .query_audit(&AuditQuery {
            limit: u32::MAX,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let links: Vec<StoredLink<'_>> = all
        .iter()
        .map(|c| StoredLink {
            entry: ChainEntry {
                seq: c.entry.seq,
                at: c.entry.at,
                actor: &c.entry.actor,
                action: &c.entry.action,
                target: &c.entry.target,
                detail: &c.entry.detail,
                request_id: c.entry.request_id.as_deref(),
                remote_addr: c.entry.remote_addr.as_deref(),
            },
            prev_hash: c.prev_hash,
            hash: c.hash,
        })
        .collect();
    let head = audit_chain::verify(&links).unwrap();
    (all, head)
}

pub async fn audit_chain_links_every_change(store: &dyn Store) {
    let (empty, head) = verified_chain(store).await;
    assert!(empty.is_empty());
    assert_eq!(head.hash, audit_chain::GENESIS);

    // Changes of every kind: an environment, a consumer, a rotation, an admin token.
    make_env(store, "prod", false).await;
    let app = create(store, "prod", "app", 1).await;
    let rotated = apply(
        store,
        &app,
        rotate(&env("prod"), 2, Duration::from_secs(3600), false),
        3_000,
    )
    .await
    .unwrap();
    let token = AdminTokenRecord {
        id: "tok_chain".to_owned(),
        secret_hash: SecretHash::of(b"chain secret"),
        name: "chain".to_owned(),
        scopes: vec!["admin".to_owned()],
        created_at: at(4_000),
    };
    store
        .create_admin_token(
            &token,
            &audit(4_000, "admin_token.created", "admin token tok_chain"),
        )
        .await
        .unwrap();
    let (before_failure, head_before) = verified_chain(store).await;

    // A write that fails appends nothing: the chain goes on from the last committed entry.
    let err = apply(store, &app, Command::Disable, 5_000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(verified_chain(store).await.1, head_before);

    // Concurrent writers keep one chain: each links to the entry committed before it.
    let other = create(store, "prod", "other", 3).await;
    let (a, b) = tokio::join!(
        apply(store, &rotated, Command::Disable, 6_000),
        apply(store, &other, Command::Disable, 6_000),
    );
    a.unwrap();
    b.unwrap();

    let (all, head) = verified_chain(store).await;
    assert_eq!(head.entries as usize, all.len());
    assert_eq!(all.len(), before_failure.len() + 3);
    assert_eq!(all[0].prev_hash, Some(audit_chain::GENESIS));
    for pair in all.windows(2) {
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "each entry names the one before"
        );
        assert!(pair[1].entry.seq > pair[0].entry.seq);
    }
    assert_eq!(all.last().unwrap().hash, Some(head.hash));
    assert_eq!(
        all[..before_failure.len()],
        before_failure[..],
        "appending never changes an earlier entry"
    );
    let kinds: Vec<&str> = all.iter().map(|c| c.entry.action.as_str()).collect();
    for kind in [
        "environment.created",
        "consumer.created",
        "version.issued",
        "version.retiring",
        "admin_token.created",
        "consumer.disabled",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    // `list_audit` reads the same entries, newest first.
    let newest_first = store.list_audit(u32::MAX).await.unwrap();
    let chained: Vec<AuditRecord> = all.iter().rev().map(|c| c.entry.clone()).collect();
    assert_eq!(newest_first, chained);
}

pub async fn audit_query_filters_and_pages(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let app = create(store, "prod", "app", 1).await;
    // A rotation whose entries name the versions, as the server writes them.
    let t = app
        .consumer
        .apply(
            rotate(&env("prod"), 2, Duration::from_secs(3600), false),
            &Usage::NONE,
            at(5_000),
        )
        .unwrap();
    store
        .write_consumer(ConsumerWrite {
            expected_revision: app.revision,
            id: app.id,
            consumer: &t.consumer,
            audit: &[
                audit(5_000, "version.retiring", "prod/app v1"),
                audit(5_000, "version.issued", "prod/app v2"),
            ],
            idempotency: None,
            events: &[],
            handover: None,
        })
        .await
        .unwrap();
    // A consumer whose name starts with the other's: a target filter must not match it.
    let (longer, _) = draft("prod", "app-two", 3, 6_000);
    let by_sweeper = AuditRecord {
        actor: "sweeper".to_owned(),
        ..audit(6_000, "consumer.created", "prod/app-two")
    };
    store
        .create_consumer(&longer, &[by_sweeper], &[], None)
        .await
        .unwrap();
    let query = |q: AuditQuery| async move {
        store
            .query_audit(&AuditQuery {
                limit: q.limit.max(1),
                ..q
            })
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.entry.action, c.entry.target))
            .collect::<Vec<_>>()
    };
    let pair = |a: &str, t: &str| (a.to_owned(), t.to_owned());
    let all = query(AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(
        all,
        [
            pair("environment.created", "environment prod"),
            pair("consumer.created", "prod/app"),
            pair("version.retiring", "prod/app v1"),
            pair("version.issued", "prod/app v2"),
            pair("consumer.created", "prod/app-two"),
        ],
        "oldest first"
    );
    let on_app = query(AuditQuery {
        target: Some("prod/app".to_owned()),
        limit: 100,
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(
        on_app,
        all[1..4],
        "a consumer's target matches its versions, not prod/app-two"
    );
    assert_eq!(
        query(AuditQuery {
            actor: Some("sweeper".to_owned()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await,
        [pair("consumer.created", "prod/app-two")]
    );
    assert_eq!(
        query(AuditQuery {
            since: Some(at(5_000)),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .len(),
        3
    );
    // Paging: after the second entry, two at a time.
    let seqs: Vec<i64> = store
        .query_audit(&AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|c| c.entry.seq)
        .collect();
    let page = query(AuditQuery {
        after_seq: Some(seqs[1]),
        limit: 2,
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(page, all[2..4]);
    assert!(
        query(AuditQuery {
            target: Some("prod/nothing".to_owned()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .is_empty()
    );
}

/// A consumer's schedule, delivery path and policy baseline, the per-version `rotation.due` and
/// `key.expiring` marks, and an environment's ordering rule survive a write and a reload (both
/// the per-consumer reads and `load_all`).
pub async fn schedule_fields_and_ordering_round_trip(store: &dyn Store) {
    make_env(store, "staging", false).await;
    let prod = EnvironmentRecord {
        name: env("prod"),
        protected: true,
        rotate_after: Some(env("staging")),
        created_at: at(1),
    };
    store
        .create_environment(&prod, &audit(1, "environment.created", "environment prod"))
        .await
        .unwrap();
    assert_eq!(
        store.get_environment(&env("prod")).await.unwrap(),
        Some(prod.clone())
    );
    // An ordering rule naming an unknown environment is refused; the record is unchanged.
    let unknown = EnvironmentRecord {
        rotate_after: Some(env("qa")),
        ..prod.clone()
    };
    assert!(matches!(
        store
            .update_environment(
                &unknown,
                &audit(2, "environment.updated", "environment prod")
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
    let cleared = EnvironmentRecord {
        rotate_after: None,
        protected: false,
        ..prod.clone()
    };
    store
        .update_environment(
            &cleared,
            &audit(3, "environment.updated", "environment prod"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_environment(&env("prod")).await.unwrap(),
        Some(cleared)
    );
    let missing = EnvironmentRecord {
        name: env("dev"),
        ..prod.clone()
    };
    assert!(matches!(
        store
            .update_environment(
                &missing,
                &audit(4, "environment.updated", "environment dev")
            )
            .await,
        Err(StoreError::NotFound(_))
    ));

    let (mut drafted, _) = draft("staging", "api", 7, 2_000);
    drafted.schedule = Schedule {
        rotate_every: Some(Duration::from_secs(30 * 86_400)),
        grace: Some(Duration::from_secs(7_200)),
        delivery: Delivery::Ci,
    };
    let created = store
        .create_consumer(
            &drafted,
            &[audit(2_000, "consumer.created", "staging/api")],
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(created.consumer.schedule, drafted.schedule);
    let managed = apply(
        store,
        &created,
        Command::Update(ConsumerUpdate {
            owner: Some(Some("team".into())),
            schedule: Some(Schedule {
                rotate_every: None,
                ..drafted.schedule
            }),
            managed: Some(true),
            ..Default::default()
        }),
        3_000,
    )
    .await
    .unwrap();
    let baseline = managed.consumer.managed.clone().expect("a baseline");
    assert_eq!(baseline.owner.as_deref(), Some("team"));
    assert_eq!(baseline.schedule.rotate_every, None);
    let due = apply(
        store,
        &managed,
        Command::RaiseDue { due_at: at(3_500) },
        4_000,
    )
    .await
    .unwrap();
    assert!(due.consumer.versions[0].due_raised);
    let reference = consumer_ref("staging", "api");
    let read = store.get_consumer(&reference).await.unwrap().unwrap();
    assert_eq!(read, due);
    let all = store.load_all().await.unwrap();
    assert_eq!(
        all.iter().find(|c| c.id == due.id).map(|c| &c.consumer),
        Some(&due.consumer),
        "load_all reads the same fields"
    );
}

/// The schedule's runner reads only consumers with a period, with a hard expiry not yet
/// announced, or named by an ordering rule of a scheduled consumer.
pub async fn schedule_candidates_are_what_the_schedule_must_look_at(store: &dyn Store) {
    make_env(store, "staging", false).await;
    let prod = EnvironmentRecord {
        name: env("prod"),
        protected: false,
        rotate_after: Some(env("staging")),
        created_at: at(1),
    };
    store
        .create_environment(&prod, &audit(1, "environment.created", "environment prod"))
        .await
        .unwrap();
    let schedule = Schedule {
        rotate_every: Some(Duration::from_secs(86_400)),
        ..Schedule::default()
    };
    // Drafts expire in 90 days; only the two expiry cases keep one.
    let make = |env_name: &'static str, name: &'static str, seed: u64| async move {
        let (mut c, _) = draft(env_name, name, seed, 2_000);
        c.versions[0].expires_at = None;
        c
    };
    let mut scheduled = make("prod", "api", 1).await;
    scheduled.schedule = schedule;
    let twin = make("staging", "api", 2).await;
    let plain = make("staging", "other", 3).await;
    let mut expiring = make("prod", "batch", 4).await;
    expiring.versions[0].expires_at = Some(at(9_000_000));
    let mut announced = make("prod", "old", 5).await;
    announced.versions[0].expires_at = Some(at(9_000_000));
    announced.versions[0].expiry_warned = true;
    for c in [&scheduled, &twin, &plain, &expiring, &announced] {
        store
            .create_consumer(
                c,
                &[audit(2_000, "consumer.created", &c.reference())],
                &[],
                None,
            )
            .await
            .unwrap();
    }
    let mut names: Vec<String> = store
        .list_schedule_candidates()
        .await
        .unwrap()
        .iter()
        .map(|s| s.consumer.reference())
        .collect();
    names.sort();
    assert_eq!(names, ["prod/api", "prod/batch", "staging/api"]);
    let read = store.list_schedule_candidates().await.unwrap();
    let api = read
        .iter()
        .find(|s| s.consumer.reference() == "prod/api")
        .unwrap();
    assert_eq!(api.consumer, scheduled, "with every version and field");
}

// ---------------------------------------------------------------------------------------------
// Webhooks: endpoints, deliveries, attempts, the sender's cursor

fn endpoint(id: &str, sealed: &[u8], created: i64) -> keyroll_store::WebhookEndpoint {
    keyroll_store::WebhookEndpoint {
        id: id.to_owned(),
        url: format!("https://hooks.example/{id}"),
        events: vec!["rotation.started".into(), "version.retired".into()],
        description: Some("ops pager".into()),
        sealed_secret: sealed.to_vec(),
        previous_secret: None,
        created_at: at(created),
        disabled: None,
    }
}

fn delivery(id: &str, endpoint_id: &str, seq: i64, next: i64) -> keyroll_store::WebhookDelivery {
    keyroll_store::WebhookDelivery {
        id: id.to_owned(),
        endpoint_id: endpoint_id.to_owned(),
        event_seq: seq,
        msg_id: format!("msg_{seq}"),
        state: keyroll_store::DeliveryState::Pending,
        attempts: 0,
        next_attempt_at: Some(at(next)),
        last_status: None,
        last_error: None,
        created_at: at(next),
        delivered_at: None,
    }
}

pub async fn webhook_endpoints_round_trip_update_and_delete(store: &dyn Store) {
    let a = endpoint("wh_a", b"sealed-a", 1_000);
    let mut b = endpoint("wh_b", b"sealed-b", 2_000);
    b.events = vec!["*".into()];
    b.description = None;
    let before = audit_len(store).await;
    store
        .create_webhook_endpoint(&a, &audit(1_000, "webhook.created", "webhook wh_a"))
        .await
        .unwrap();
    store
        .create_webhook_endpoint(&b, &audit(2_000, "webhook.created", "webhook wh_b"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_webhook_endpoint(&a, &audit(3_000, "webhook.created", "webhook wh_a"))
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(
        audit_len(store).await,
        before + 2,
        "a refused create audits nothing"
    );
    assert_eq!(
        store.get_webhook_endpoint("wh_a").await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.get_webhook_endpoint("wh_none").await.unwrap(), None);
    assert_eq!(
        store.list_webhook_endpoints().await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    let mut rotated = a.clone();
    rotated.sealed_secret = b"sealed-a2".to_vec();
    rotated.previous_secret = Some((b"sealed-a".to_vec(), at(9_000)));
    rotated.disabled = Some((at(4_000), "410 Gone".into()));
    let event = EventRecord {
        seq: 0,
        at: at(4_000),
        kind: "webhook.disabled".into(),
        consumer: String::new(),
        version: None,
        detail: "{}".into(),
    };
    let seq_before = store.list_events(0, 1000).await.unwrap().len();
    store
        .update_webhook_endpoint(
            &rotated,
            &[audit(4_000, "webhook.disabled", "webhook wh_a")],
            std::slice::from_ref(&event),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_webhook_endpoint("wh_a").await.unwrap(),
        Some(rotated)
    );
    let events = store.list_events(0, 1000).await.unwrap();
    assert_eq!(events.len(), seq_before + 1);
    assert_eq!(events.last().unwrap().kind, "webhook.disabled");
    let mut ghost = a.clone();
    ghost.id = "wh_ghost".into();
    assert!(matches!(
        store.update_webhook_endpoint(&ghost, &[], &[]).await,
        Err(StoreError::NotFound(_))
    ));
    store
        .enqueue_webhook_deliveries(
            store.webhook_cursor().await.unwrap(),
            100,
            &[delivery("whd_1", "wh_b", 100, 5_000)],
        )
        .await
        .unwrap();
    store
        .delete_webhook_endpoint("wh_b", &audit(5_000, "webhook.deleted", "webhook wh_b"))
        .await
        .unwrap();
    assert_eq!(store.get_webhook_endpoint("wh_b").await.unwrap(), None);
    assert_eq!(
        store.get_webhook_delivery("whd_1").await.unwrap(),
        None,
        "deliveries go with their endpoint"
    );
    assert!(matches!(
        store
            .delete_webhook_endpoint("wh_b", &audit(5_000, "webhook.deleted", "webhook wh_b"))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn webhook_deliveries_enqueue_once_and_record_attempts(store: &dyn Store) {
    use keyroll_store::{DeliveryQuery, DeliveryState, WebhookAttempt};
    store
        .create_webhook_endpoint(
            &endpoint("wh_a", b"sealed", 1_000),
            &audit(1_000, "webhook.created", "webhook wh_a"),
        )
        .await
        .unwrap();
    let start = store.webhook_cursor().await.unwrap();
    store
        .enqueue_webhook_deliveries(
            start,
            start + 2,
            &[
                delivery("whd_1", "wh_a", start + 1, 2_000),
                delivery("whd_2", "wh_a", start + 2, 3_000),
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.webhook_cursor().await.unwrap(), start + 2);
    // A second sender that read the same cursor enqueues nothing twice.
    assert!(matches!(
        store
            .enqueue_webhook_deliveries(
                start,
                start + 2,
                &[delivery("whd_3", "wh_a", start + 1, 2_000)]
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .enqueue_webhook_deliveries(
                start + 2,
                start + 3,
                &[delivery("whd_4", "wh_gone", start + 3, 2_000)]
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.webhook_cursor().await.unwrap(),
        start + 2,
        "nothing moved"
    );
    let due: Vec<String> = store
        .due_webhook_deliveries(at(2_500), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(due, ["whd_1"]);
    assert_eq!(
        store
            .due_webhook_deliveries(at(3_000), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .due_webhook_deliveries(at(3_000), 1)
            .await
            .unwrap()
            .len(),
        1
    );

    let mut d = delivery("whd_1", "wh_a", start + 1, 2_000);
    d.attempts = 1;
    d.last_status = Some(500);
    d.last_error = Some("HTTP 500".into());
    d.next_attempt_at = Some(at(7_000));
    let first = WebhookAttempt {
        delivery_id: "whd_1".into(),
        n: 1,
        at: at(2_000),
        status: Some(500),
        duration_ms: 12,
        error: Some("HTTP 500".into()),
        retry_after_ms: Some(5_000),
    };
    store
        .record_webhook_attempt(&d, Some(&first))
        .await
        .unwrap();
    assert!(matches!(
        store.record_webhook_attempt(&d, Some(&first)).await,
        Err(StoreError::Conflict(_))
    ));
    d.attempts = 2;
    d.state = DeliveryState::Delivered;
    d.last_status = Some(204);
    d.last_error = None;
    d.next_attempt_at = None;
    d.delivered_at = Some(at(7_000));
    let second = WebhookAttempt {
        delivery_id: "whd_1".into(),
        n: 2,
        at: at(7_000),
        status: Some(204),
        duration_ms: 3,
        error: None,
        retry_after_ms: None,
    };
    store
        .record_webhook_attempt(&d, Some(&second))
        .await
        .unwrap();
    let (got, attempts) = store.get_webhook_delivery("whd_1").await.unwrap().unwrap();
    assert_eq!(got, d);
    assert_eq!(attempts, vec![first, second]);
    assert!(
        store
            .get_webhook_delivery("whd_none")
            .await
            .unwrap()
            .is_none()
    );
    let mut ghost = d.clone();
    ghost.id = "whd_none".into();
    assert!(matches!(
        store.record_webhook_attempt(&ghost, None).await,
        Err(StoreError::NotFound(_))
    ));
    let all = store
        .list_webhook_deliveries(&DeliveryQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["whd_2", "whd_1"],
        "newest first"
    );
    let delivered = store
        .list_webhook_deliveries(&DeliveryQuery {
            state: Some(DeliveryState::Delivered),
            endpoint_id: Some("wh_a".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(delivered, vec![d]);
    let other = store
        .list_webhook_deliveries(&DeliveryQuery {
            endpoint_id: Some("wh_other".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(other.is_empty());
    assert_eq!(
        store
            .due_webhook_deliveries(at(10_000), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn no_secret_in_webhook_columns(backend: &dyn Backend) {
    let store = backend.store();
    // What the server hands the store is sealed; the store must never keep anything else.
    let secret = "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0";
    let sealed = b"nonce-and-ciphertext-not-the-secret".to_vec();
    let mut e = endpoint("wh_s", &sealed, 1_000);
    store
        .create_webhook_endpoint(&e, &audit(1_000, "webhook.created", "webhook wh_s"))
        .await
        .unwrap();
    e.previous_secret = Some((sealed.clone(), at(5_000)));
    e.disabled = Some((at(3_000), "answered 410 Gone".into()));
    store
        .update_webhook_endpoint(
            &e,
            &[audit(2_000, "webhook.secret_rotated", "webhook wh_s")],
            &[],
        )
        .await
        .unwrap();
    let cursor = store.webhook_cursor().await.unwrap();
    let mut d = delivery("whd_s", "wh_s", cursor + 1, 2_000);
    store
        .enqueue_webhook_deliveries(cursor, cursor + 1, &[d.clone()])
        .await
        .unwrap();
    d.attempts = 1;
    d.last_status = Some(503);
    d.last_error = Some("HTTP 503".into());
    d.delivered_at = Some(at(2_100));
    store
        .record_webhook_attempt(
            &d,
            Some(&keyroll_store::WebhookAttempt {
                delivery_id: "whd_s".into(),
                n: 1,
                at: at(2_000),
                status: Some(503),
                duration_ms: 10,
                error: Some("HTTP 503".into()),
                retry_after_ms: Some(1_000),
            }),
        )
        .await
        .unwrap();
    let cells = backend.dump_cells().await;
    for table in [
        "webhook_endpoints",
        "webhook_deliveries",
        "webhook_attempts",
        "webhook_cursor",
    ] {
        let columns: Vec<&str> = cells
            .iter()
            .filter(|c| c.table == table)
            .map(|c| c.column.as_str())
            .collect();
        assert!(!columns.is_empty(), "the dump does not show {table}");
        for column in &columns {
            assert!(
                cells
                    .iter()
                    .any(|c| c.table == table && c.column == *column && !c.bytes.is_empty()),
                "the dump does not show {table}.{column} filled"
            );
        }
    }
    let b64 = secret.trim_start_matches("whsec_");
    for cell in &cells {
        for needle in [secret, b64] {
            assert!(
                !cell
                    .bytes
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes()),
                "{}.{} holds a webhook secret",
                cell.table,
                cell.column
            );
        }
    }
}

/// Delivery by agents: the rotation-request flag round-trips; a handover is written with its
/// rotation and found by the version it was sealed from, newest first, and deleted in the write
/// that retires that version; an agent's report records the delivery (and its audit entry and
/// event) only the first time it reports a version, keeping its first report's time.
pub async fn agents_deliveries_and_handovers(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let c = create(store, "prod", "billing", 41).await;
    let requested = apply(store, &c, Command::RequestRotation, 3_000)
        .await
        .unwrap();
    assert_eq!(
        store.load_all().await.unwrap()[0].consumer.versions[0].rotation_requested,
        Some(at(3_000))
    );
    let transition = requested
        .consumer
        .apply(
            rotate(&env("prod"), 42, Duration::from_secs(3600), false),
            &Usage::NONE,
            at(4_000),
        )
        .unwrap();
    assert_eq!(
        transition.consumer.versions[1].rotation_requested, None,
        "the new version answers the request"
    );
    let handover = keyroll_store::HandoverRecord {
        version: 2,
        from_version: 1,
        sealed: vec![7; 40],
        created_at: at(4_000),
    };
    let rotated = store
        .write_consumer(ConsumerWrite {
            expected_revision: requested.revision,
            id: requested.id,
            consumer: &transition.consumer,
            audit: &[],
            idempotency: None,
            events: &[],
            handover: Some(&handover),
        })
        .await
        .unwrap();
    assert_eq!(
        store.find_handover(c.id, 1).await.unwrap(),
        Some(handover.clone())
    );
    assert_eq!(store.find_handover(c.id, 2).await.unwrap(), None);

    let r = consumer_ref("prod", "billing");
    let report = |version: u32, when: i64| keyroll_store::AgentRecord {
        consumer: r.clone(),
        agent_id: "agt_0123456789abcdef".into(),
        host: Some("web-1".into()),
        mode: Some("file".into()),
        version,
        health: Some("ok".into()),
        detail: None,
        first_seen: at(when),
        last_contact: at(when),
        bundle_version: None,
    };
    let delivered = |when: i64| event(when, &Effect::Issued(VersionNumber(2)), "prod/billing");
    let before = audit_len(store).await;
    let first = store
        .record_agent(
            c.id,
            &report(2, 5_000),
            &[audit(5_000, "version.delivered", "prod/billing/v2")],
            &[delivered(5_000)],
        )
        .await
        .unwrap();
    assert!(first, "the first report of v2 is its delivery");
    let again = store
        .record_agent(
            c.id,
            &report(2, 6_000),
            &[audit(6_000, "version.delivered", "prod/billing/v2")],
            &[delivered(6_000)],
        )
        .await
        .unwrap();
    assert!(!again, "a heartbeat is not a delivery");
    assert_eq!(
        audit_len(store).await,
        before + 1,
        "one audit entry, with the first report"
    );
    let agents = store.list_agents(None).await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(
        agents[0].first_seen,
        at(5_000),
        "the first report's time is kept"
    );
    assert_eq!(agents[0].last_contact, at(6_000));
    assert_eq!(agents[0].version, 2);
    assert!(
        store
            .list_agents(Some(&env("staging")))
            .await
            .unwrap()
            .is_empty()
    );
    let deliveries = store.list_deliveries(Some(&env("prod"))).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        (deliveries[0].version, deliveries[0].delivered_at),
        (2, at(5_000))
    );

    // Retiring v1 deletes the handover sealed from it.
    apply(
        store,
        &rotated,
        Command::Retire {
            version: VersionNumber(1),
        },
        7_000,
    )
    .await
    .unwrap();
    assert_eq!(store.find_handover(c.id, 1).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Several nodes on one database: the change log, nodes, the leader lease, recent last uses

/// Every change in the log, oldest first.
async fn all_changes(store: &dyn Store) -> Vec<ChangeRecord> {
    store.changes_since(0, u32::MAX).await.unwrap()
}

fn seqs(changes: &[ChangeRecord]) -> Vec<i64> {
    changes.iter().map(|c| c.seq).collect()
}

pub async fn changes_are_gapless_and_in_commit_order(store: &dyn Store) {
    assert_eq!(store.change_head().await.unwrap(), 0);
    assert!(all_changes(store).await.is_empty());
    make_env(store, "prod", false).await;
    assert_eq!(
        store.change_head().await.unwrap(),
        0,
        "only consumer changes are logged"
    );

    let app = create(store, "prod", "app", 1).await;
    assert_eq!(app.change_seq, 1);
    let other = create(store, "prod", "other", 2).await;
    assert_eq!(other.change_seq, 2);
    let rotated = apply(
        store,
        &app,
        rotate(&env("prod"), 3, Duration::from_secs(60), false),
        7_000,
    )
    .await
    .unwrap();
    assert_eq!(rotated.change_seq, 3);
    assert_eq!(store.change_head().await.unwrap(), 3);

    // Refused writes append nothing: a stale revision, a duplicate create.
    let err = apply(store, &app, Command::Disable, 8_000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let (again, _) = draft("prod", "other", 9, 9_000);
    let err = store
        .create_consumer(
            &again,
            &[audit(9_000, "consumer.created", "prod/other")],
            &[],
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(store.change_head().await.unwrap(), 3);

    let disabled = apply(store, &other, Command::Disable, 10_000)
        .await
        .unwrap();
    assert_eq!(disabled.change_seq, 4);
    let log = all_changes(store).await;
    assert_eq!(
        log,
        [
            ChangeRecord {
                seq: 1,
                kind: ChangeKind::Consumer,
                consumer_id: app.id,
                at: at(2_000)
            },
            ChangeRecord {
                seq: 2,
                kind: ChangeKind::Consumer,
                consumer_id: other.id,
                at: at(2_000)
            },
            ChangeRecord {
                seq: 3,
                kind: ChangeKind::Consumer,
                consumer_id: app.id,
                at: at(7_000)
            },
            ChangeRecord {
                seq: 4,
                kind: ChangeKind::Consumer,
                consumer_id: other.id,
                at: at(10_000)
            },
        ],
        "one row per committed change, at the time of its audit entries"
    );
    assert_eq!(
        seqs(&store.changes_since(1, 2).await.unwrap()),
        [2, 3],
        "paged"
    );
    assert!(store.changes_since(4, 10).await.unwrap().is_empty());

    // Every read carries the consumer's last change.
    let read = store
        .get_consumer(&consumer_ref("prod", "app"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.change_seq, 3);
    assert_eq!(read, rotated);
    let listed = store.list_consumers(None).await.unwrap();
    let by_name: Vec<(&str, i64)> = listed
        .iter()
        .map(|c| (c.consumer.name.as_str(), c.change_seq))
        .collect();
    assert_eq!(by_name, [("app", 3), ("other", 4)]);
    let loaded = store.load_all().await.unwrap();
    assert_eq!(loaded, listed, "load_all reads change_seq too");
}

pub async fn consumers_by_id_reads_the_ones_asked(store: &dyn Store) {
    make_env(store, "prod", false).await;
    make_env(store, "staging", false).await;
    let a = create(store, "prod", "a", 1).await;
    let b = create(store, "staging", "b", 2).await;
    let c = create(store, "prod", "c", 3).await;
    let a = apply(
        store,
        &a,
        rotate(&env("prod"), 4, Duration::from_secs(60), false),
        5_000,
    )
    .await
    .unwrap();
    assert!(store.consumers_by_id(&[]).await.unwrap().is_empty());
    let unknown = a.id + b.id + c.id + 1_000;
    let mut got = store
        .consumers_by_id(&[c.id, unknown, a.id, a.id])
        .await
        .unwrap();
    got.sort_by_key(|s| s.id);
    got.dedup_by_key(|s| s.id);
    let mut expected = vec![a.clone(), c.clone()];
    expected.sort_by_key(|s| s.id);
    assert_eq!(
        got, expected,
        "with versions and change_seq; unknown ids omitted"
    );
    assert_eq!(
        got.iter()
            .find(|s| s.id == a.id)
            .unwrap()
            .consumer
            .versions
            .len(),
        2
    );
    assert_eq!(store.consumers_by_id(&[b.id]).await.unwrap(), [b]);
}

pub async fn prune_changes_removes_old_rows_and_keeps_the_head(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let app = create(store, "prod", "app", 1).await; // seq 1 at 2 000
    let app = apply(store, &app, Command::Disable, 5_000).await.unwrap(); // seq 2
    let app = apply(store, &app, Command::Enable, 9_000).await.unwrap(); // seq 3
    assert_eq!(
        store.prune_changes(at(2_000)).await.unwrap(),
        0,
        "strictly before"
    );
    assert_eq!(store.prune_changes(at(9_000)).await.unwrap(), 2);
    assert_eq!(seqs(&all_changes(store).await), [3]);
    assert_eq!(store.change_head().await.unwrap(), 3, "the head stays");
    // A reader whose `applied` is behind the oldest logged change sees the gap.
    assert_eq!(store.changes_since(1, 10).await.unwrap()[0].seq, 3);
    let app = apply(store, &app, Command::Disable, 10_000).await.unwrap();
    assert_eq!(app.change_seq, 4, "seqs go on after a prune");
    assert_eq!(store.prune_changes(at(i64::MAX)).await.unwrap(), 2);
    assert!(all_changes(store).await.is_empty());
    assert_eq!(store.change_head().await.unwrap(), 4);
}

fn node(id: &str, heartbeat: i64, applied: i64) -> NodeRecord {
    NodeRecord {
        node_id: id.to_owned(),
        address: Some(format!("10.0.0.{}:8080", id.len())),
        version: "0.1.0".to_owned(),
        started_at: at(1_000),
        heartbeat_at: at(heartbeat),
        applied_seq: applied,
        usage_flushed_at: None,
        leader: false,
    }
}

pub async fn nodes_upsert_list_remove(store: &dyn Store) {
    assert!(store.list_nodes().await.unwrap().is_empty());
    let b = node("node_b", 2_000, 3);
    let mut a = node("node_a", 2_500, 1);
    a.address = None;
    store.heartbeat_node(&b).await.unwrap();
    store.heartbeat_node(&a).await.unwrap();
    assert_eq!(
        store.list_nodes().await.unwrap(),
        [a.clone(), b.clone()],
        "by node id"
    );

    // A later heartbeat replaces every field.
    let a2 = NodeRecord {
        node_id: "node_a".to_owned(),
        address: Some("[::1]:9000".to_owned()),
        version: "0.2.0".to_owned(),
        started_at: at(1_500),
        heartbeat_at: at(3_000),
        applied_seq: 7,
        usage_flushed_at: Some(at(2_900)),
        leader: true,
    };
    store.heartbeat_node(&a2).await.unwrap();
    assert_eq!(store.list_nodes().await.unwrap(), [a2.clone(), b.clone()]);
    let mut a3 = a2.clone();
    a3.leader = false;
    a3.usage_flushed_at = None;
    store.heartbeat_node(&a3).await.unwrap();
    assert_eq!(store.list_nodes().await.unwrap(), [a3, b.clone()]);

    store.remove_node("node_a").await.unwrap();
    assert_eq!(store.list_nodes().await.unwrap(), [b]);
    store.remove_node("node_a").await.unwrap();
    store.remove_node("node_unknown").await.unwrap();
    store.remove_node("node_b").await.unwrap();
    assert!(store.list_nodes().await.unwrap().is_empty());
}

pub async fn lease_acquire_renew_contend_expire_release(store: &dyn Store) {
    let ttl = Duration::from_secs(5);
    assert_eq!(store.get_lease("leader").await.unwrap(), None);

    // Free: taken, term 1.
    let first = store
        .acquire_lease("leader", "node_a", at(10_000), ttl)
        .await
        .unwrap()
        .unwrap();
    let expected = Lease {
        name: "leader".to_owned(),
        holder: "node_a".to_owned(),
        term: 1,
        acquired_at: at(10_000),
        expires_at: at(15_000),
    };
    assert_eq!(first, expected);
    assert_eq!(
        store.get_lease("leader").await.unwrap(),
        Some(expected.clone())
    );

    // Held by another, unexpired: refused, unchanged (also at the last millisecond).
    for now in [10_001, 14_999] {
        assert_eq!(
            store
                .acquire_lease("leader", "node_b", at(now), ttl)
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(store.get_lease("leader").await.unwrap(), Some(expected));

    // Renewed by its holder: same term and tenure, later expiry.
    let renewed = store
        .acquire_lease("leader", "node_a", at(14_000), ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (renewed.term, renewed.acquired_at, renewed.expires_at),
        (1, at(10_000), at(19_000))
    );

    // Expired (at its expiry exactly): another holder takes it, with the next term.
    let taken = store
        .acquire_lease("leader", "node_b", at(19_000), ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        taken,
        Lease {
            name: "leader".to_owned(),
            holder: "node_b".to_owned(),
            term: 2,
            acquired_at: at(19_000),
            expires_at: at(24_000),
        }
    );
    assert_eq!(
        store
            .acquire_lease("leader", "node_a", at(20_000), ttl)
            .await
            .unwrap(),
        None,
        "the old holder cannot renew a lease it lost"
    );

    // The holder taking its own lease again after it lapsed starts a new tenure.
    let lapsed = store
        .acquire_lease("leader", "node_b", at(30_000), ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((lapsed.term, lapsed.acquired_at), (3, at(30_000)));

    // Release: only by the holder; then anyone takes it, with the next term.
    store.release_lease("leader", "node_a").await.unwrap();
    assert_eq!(
        store
            .acquire_lease("leader", "node_c", at(31_000), ttl)
            .await
            .unwrap(),
        None,
        "a release by another node changes nothing"
    );
    store.release_lease("leader", "node_b").await.unwrap();
    let after_release = store
        .acquire_lease("leader", "node_c", at(31_000), ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after_release.holder.as_str(), after_release.term),
        ("node_c", 4)
    );
    store.release_lease("nothing", "node_c").await.unwrap();

    // Leases are independent by name.
    let other = store
        .acquire_lease("other", "node_a", at(31_000), ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.term, 1);
    assert_eq!(
        store.get_lease("leader").await.unwrap().unwrap().holder,
        "node_c"
    );
}

pub async fn concurrent_lease_acquires_one_wins(store: &dyn Store) {
    let ttl = Duration::from_secs(5);
    for round in 0..5i64 {
        // Each round starts after the previous lease expired: free for all.
        let now = at(100_000 * (round + 1));
        let holders: Vec<String> = (0..4).map(|i| format!("node_{round}_{i}")).collect();
        let attempts = futures_util::future::join_all(
            holders
                .iter()
                .map(|h| store.acquire_lease("leader", h, now, ttl)),
        )
        .await;
        let won: Vec<Lease> = attempts.into_iter().filter_map(|r| r.unwrap()).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one holder: {won:?}");
        assert_eq!(won[0].term, round + 1);
        assert_eq!(
            store.get_lease("leader").await.unwrap().as_ref(),
            won.first()
        );
    }
}

pub async fn last_used_since_lists_recent_uses(store: &dyn Store) {
    let (k1, k2, _) = two_versions(store).await;
    assert!(store.last_used_since(at(0)).await.unwrap().is_empty());
    store
        .record_usage(
            &[delta(k1, 5_000, &[], vec![]), delta(k2, 9_000, &[], vec![])],
            3,
        )
        .await
        .unwrap();
    let mut all = store.last_used_since(at(0)).await.unwrap();
    all.sort_by_key(|(_, t)| *t);
    assert_eq!(all, [(k1, at(5_000)), (k2, at(9_000))]);
    assert_eq!(
        store.last_used_since(at(5_001)).await.unwrap(),
        [(k2, at(9_000))]
    );
    assert_eq!(
        store.last_used_since(at(9_000)).await.unwrap(),
        [(k2, at(9_000))],
        "at or after"
    );
    assert!(store.last_used_since(at(9_001)).await.unwrap().is_empty());
    // A later use moves a version into a later window.
    store
        .record_usage(&[delta(k1, 12_000, &[], vec![])], 3)
        .await
        .unwrap();
    assert_eq!(
        store.last_used_since(at(10_000)).await.unwrap(),
        [(k1, at(12_000))]
    );
}

pub async fn listen_changes_notifies_committed_changes(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let Some(mut listener) = store.listen_changes().await.unwrap() else {
        // A backend without notifications: callers poll `changes_since`.
        assert_eq!(store.backend(), "sqlite");
        return;
    };
    let app = create(store, "prod", "app", 1).await;
    let disabled = apply(store, &app, Command::Disable, 2_500).await.unwrap();
    // A refused write notifies nothing: the next notification is the next commit's.
    let stale = apply(store, &app, Command::Disable, 2_600)
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Conflict(_)), "{stale:?}");
    let other = create(store, "prod", "other", 2).await;
    let wait = Duration::from_secs(10);
    for expected in [app.change_seq, disabled.change_seq, other.change_seq] {
        let seq = tokio::time::timeout(wait, listener.next())
            .await
            .expect("a notification within 10 s")
            .unwrap();
        assert_eq!(seq, expected);
    }
}

pub async fn concurrent_writes_take_gapless_seqs(store: &dyn Store) {
    const N: usize = 12;
    make_env(store, "prod", false).await;
    let mut created = Vec::new();
    for i in 0..N {
        created.push(create(store, "prod", &format!("app-{i:02}"), 10 + i as u64).await);
    }
    let n = N as i64;
    assert_eq!(store.change_head().await.unwrap(), n);
    // Every consumer written at once, and as many new consumers created beside them.
    let writes = futures_util::future::join_all(
        created
            .iter()
            .map(|c| apply(store, c, Command::Disable, 20_000)),
    );
    let creates = futures_util::future::join_all((0..N).map(|i| async move {
        let (consumer, _) = draft("prod", &format!("new-{i:02}"), 100 + i as u64, 20_000);
        let target = consumer.reference();
        store
            .create_consumer(
                &consumer,
                &[audit(20_000, "consumer.created", &target)],
                &[],
                None,
            )
            .await
    }));
    let (written, made) = tokio::join!(writes, creates);
    let mut by_consumer: Vec<(i64, i64)> = written
        .into_iter()
        .chain(made)
        .map(|r| {
            let s = r.unwrap();
            (s.change_seq, s.id)
        })
        .collect();
    by_consumer.sort();
    let taken: Vec<i64> = by_consumer.iter().map(|&(seq, _)| seq).collect();
    assert_eq!(
        taken,
        ((n + 1)..=(3 * n)).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
    assert_eq!(store.change_head().await.unwrap(), 3 * n);
    let log = all_changes(store).await;
    assert_eq!(seqs(&log), (1..=(3 * n)).collect::<Vec<_>>());
    let logged: Vec<(i64, i64)> = log[N..].iter().map(|c| (c.seq, c.consumer_id)).collect();
    assert_eq!(
        logged, by_consumer,
        "each seq names the consumer that took it"
    );
    for c in store.load_all().await.unwrap() {
        let last = log.iter().rev().find(|l| l.consumer_id == c.id).unwrap();
        assert_eq!(c.change_seq, last.seq, "{}", c.consumer.reference());
    }
}

pub async fn concurrent_usage_on_one_kid_sums(store: &dyn Store) {
    let (k1, _, _) = two_versions(store).await;
    let base = 200 * HOUR;
    for round in 0..3u64 {
        let one = [delta(
            k1,
            base + 1_000,
            &[(base, 3)],
            vec![source("10.0.0.1", "curl", None, base, base + 1_000, 3)],
        )];
        let two = [delta(
            k1,
            base + 2_000,
            &[(base, 4), (base + HOUR, 1)],
            vec![source("10.0.0.1", "curl", None, base + 10, base + 2_000, 5)],
        )];
        let (a, b) = tokio::join!(store.record_usage(&one, 5), store.record_usage(&two, 5));
        a.unwrap();
        b.unwrap();
        let usage = store.usage(&[k1], at(0)).await.unwrap();
        let n = round + 1;
        assert_eq!(usage[0].last_used_at, Some(at(base + 2_000)));
        assert_eq!(
            usage[0].hourly,
            [(at(base), 7 * n), (at(base + HOUR), n)],
            "round {round}: both batches counted"
        );
        assert_eq!(usage[0].sources.len(), 1);
        assert_eq!(usage[0].sources[0].count, 8 * n);
        assert_eq!(usage[0].sources[0].first_seen, at(base));
        assert_eq!(usage[0].sources[0].last_seen, at(base + 2_000));
    }
}

pub async fn concurrent_audit_appends_keep_one_chain(store: &dyn Store) {
    const N: usize = 8;
    make_env(store, "prod", false).await;
    let creates = futures_util::future::join_all((0..N).map(|i| async move {
        let (consumer, _) = draft("prod", &format!("app-{i:02}"), 30 + i as u64, 3_000);
        let target = consumer.reference();
        store
            .create_consumer(
                &consumer,
                &[
                    audit(3_000, "consumer.created", &target),
                    audit(3_000, "version.issued", &target),
                ],
                &[],
                None,
            )
            .await
    }));
    let tokens = futures_util::future::join_all((0..N).map(|i| async move {
        let id = format!("tok_chain{i}");
        let token = AdminTokenRecord {
            id: id.clone(),
            secret_hash: SecretHash::of(id.as_bytes()),
            name: id.clone(),
            scopes: vec!["admin".to_owned()],
            created_at: at(3_000),
        };
        store
            .create_admin_token(&token, &audit(3_000, "admin_token.created", &id))
            .await
    }));
    let (made, issued) = tokio::join!(creates, tokens);
    let made: Vec<StoredConsumer> = made.into_iter().map(Result::unwrap).collect();
    issued.into_iter().for_each(Result::unwrap);
    let writes = futures_util::future::join_all(
        made.iter()
            .map(|c| apply(store, c, Command::Disable, 4_000)),
    )
    .await;
    writes.into_iter().for_each(|w| {
        w.unwrap();
    });

    let (all, head) = verified_chain(store).await;
    assert_eq!(
        all.len(),
        1 + 2 * N + N + N,
        "every entry of every committed change"
    );
    assert_eq!(head.entries as usize, all.len());
    for pair in all.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "one chain");
        assert!(pair[1].entry.seq > pair[0].entry.seq);
    }
}

pub async fn master_key_check_is_recorded_once(store: &dyn Store) {
    // Before the installation is recorded there is nowhere to keep it.
    assert!(matches!(
        store.master_key_check(&[1; 32]).await,
        Err(StoreError::NotFound(_))
    ));
    store.installation("inst-1").await.unwrap();
    // The first caller's value is recorded; a later one with another value gets the first back
    // (and compares), never overwrites it.
    assert_eq!(store.master_key_check(&[1; 32]).await.unwrap(), vec![1; 32]);
    assert_eq!(store.master_key_check(&[2; 32]).await.unwrap(), vec![1; 32]);
    assert_eq!(store.master_key_check(&[1; 32]).await.unwrap(), vec![1; 32]);
}

fn ui_session(id: u8, token: &str, created: i64) -> UiSession {
    UiSession {
        id_hash: [id; 32],
        token_id: token.to_owned(),
        csrf_hash: [id.wrapping_add(100); 32],
        created_at: at(created),
        expires_at: at(created + 43_200_000),
        last_seen_at: at(created),
    }
}

async fn session_token(store: &dyn Store, id: &str) {
    let token = AdminTokenRecord {
        id: id.to_owned(),
        secret_hash: SecretHash::of(id.as_bytes()),
        name: "dashboard".to_owned(),
        scopes: vec!["consumers:read".to_owned()],
        created_at: at(1_000),
    };
    store
        .create_admin_token(&token, &audit(1_000, "admin_token.created", id))
        .await
        .unwrap();
}

pub async fn ui_sessions_round_trip_touch_delete_and_prune(store: &dyn Store) {
    session_token(store, "tok_ui").await;
    let first = ui_session(1, "tok_ui", 10_000);
    store.create_ui_session(&first).await.unwrap();
    assert_eq!(
        store.get_ui_session(&[1; 32]).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.get_ui_session(&[9; 32]).await.unwrap(), None);
    // A taken id and an unknown token are refused by name.
    let err = store.create_ui_session(&first).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    let err = store
        .create_ui_session(&ui_session(2, "tok_nobody", 10_000))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound(what) if what.contains("tok_nobody")),
        "{err:?}"
    );

    // Activity moves last_seen_at forward only.
    store.touch_ui_session(&[1; 32], at(20_000)).await.unwrap();
    store.touch_ui_session(&[1; 32], at(15_000)).await.unwrap();
    let seen = store.get_ui_session(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(seen.last_seen_at, at(20_000));
    assert_eq!(seen.created_at, at(10_000));
    // Touching a session that is gone is no error.
    store.touch_ui_session(&[9; 32], at(20_000)).await.unwrap();

    // Prune: past the absolute end, or idle since before the cut; the others stay.
    let idle = ui_session(3, "tok_ui", 11_000);
    store.create_ui_session(&idle).await.unwrap();
    let short = UiSession {
        expires_at: at(30_000),
        ..ui_session(4, "tok_ui", 12_000)
    };
    store.create_ui_session(&short).await.unwrap();
    store.touch_ui_session(&[4; 32], at(29_000)).await.unwrap();
    assert_eq!(
        store
            .prune_ui_sessions(at(30_000), at(19_000))
            .await
            .unwrap(),
        2
    );
    assert!(store.get_ui_session(&[1; 32]).await.unwrap().is_some());
    assert!(store.get_ui_session(&[3; 32]).await.unwrap().is_none());
    assert!(store.get_ui_session(&[4; 32]).await.unwrap().is_none());

    // Logout deletes; a second logout finds nothing.
    assert!(store.delete_ui_session(&[1; 32]).await.unwrap());
    assert!(!store.delete_ui_session(&[1; 32]).await.unwrap());
    assert_eq!(store.get_ui_session(&[1; 32]).await.unwrap(), None);
}

pub async fn no_secret_in_ui_session_columns(backend: &dyn Backend) {
    // What the server puts in the browser's cookies, and what it stores: only the hashes.
    let store = backend.store();
    session_token(store, "tok_ui").await;
    let session_id = b"sessionidQ7rT2kLm9ZpX4vB8nW3cY6uR5t";
    let csrf = b"csrftokenZ4vB8nW3cY6uR5tQ7rT2kLm9Zp";
    let session = UiSession {
        id_hash: SecretHash::of(session_id).0,
        csrf_hash: SecretHash::of(csrf).0,
        ..ui_session(0, "tok_ui", 10_000)
    };
    store.create_ui_session(&session).await.unwrap();
    let cells = backend.dump_cells().await;
    assert!(cells.iter().any(|c| c.table == "ui_sessions"));
    for cell in &cells {
        for secret in [session_id.as_slice(), csrf.as_slice()] {
            assert!(
                !cell.bytes.windows(secret.len()).any(|w| w == secret),
                "{}.{} holds a session secret",
                cell.table,
                cell.column
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The certificate authority (SPEC §9)

fn authority(
    id: &str,
    kind: AuthorityKind,
    generation: u32,
    parent: Option<&str>,
    serial: &str,
) -> AuthorityRecord {
    AuthorityRecord {
        id: id.to_owned(),
        kind,
        generation,
        parent_id: parent.map(str::to_owned),
        trust_domain: "example.org".to_owned(),
        subject: format!("keyroll {} CA g{generation} (example.org)", kind.as_str()),
        cert_der: vec![0x30, 0x82, 1, 2, 3, generation as u8],
        sealed_key: vec![9, 8, 7, generation as u8],
        serial: serial.to_owned(),
        fingerprint: format!("sha256:{serial}"),
        not_before: at(1_000),
        not_after: at(1_000_000),
        enters_bundle_at: at(1_000),
        signs_from: at(1_000),
        idle: Duration::from_secs(3600),
        entered_version: Some(1),
        removed_at: None,
        state: AuthorityState::Active,
        created_at: at(1_000 + i64::from(generation)),
    }
}

fn issued(serial: &str, identity: &str, issuer: &str, not_after: i64) -> IssuedCertRecord {
    let (e, n) = identity.split_once('/').unwrap();
    IssuedCertRecord {
        serial: serial.to_owned(),
        identity: consumer_ref(e, n),
        issuer_id: issuer.to_owned(),
        not_before: at(2_000),
        not_after: at(not_after),
        issued_at: at(2_000),
        fingerprint: format!("sha256:f{serial}"),
        server_auth: serial.ends_with('1'),
        requested_by: "tok_test".to_owned(),
        superseded_by: None,
        revoked_at: None,
        revocation_reason: None,
    }
}

fn crl(issuer: &str, number: u64, this_update: i64) -> CrlRecord {
    CrlRecord {
        issuer_id: issuer.to_owned(),
        number,
        this_update: at(this_update),
        next_update: at(this_update + 86_400_000),
        der: vec![0x30, 1, number as u8],
    }
}

/// `ca init` as the server writes it: a root, its intermediate, an empty CRL for the
/// intermediate, guarded on the empty bundle.
async fn ca_init(store: &dyn Store) -> CaCommit {
    let root = authority("ca_root1", AuthorityKind::Root, 1, None, "01");
    let int = authority(
        "ca_int1",
        AuthorityKind::Intermediate,
        1,
        Some("ca_root1"),
        "02",
    );
    store
        .write_ca(CaWrite {
            expected_bundle_version: Some(0),
            bump_bundle: true,
            authorities: &[root, int],
            crls: &[crl("ca_int1", 1, 1_000)],
            audit: &[audit(1_000, "ca.initialized", "ca")],
            ..CaWrite::default()
        })
        .await
        .unwrap()
}

pub async fn ca_authorities_crls_and_bundle_version(store: &dyn Store) {
    assert_eq!(store.ca_state().await.unwrap(), CaState::default());
    let before = audit_len(store).await;
    let head = store.change_head().await.unwrap();

    let commit = ca_init(store).await;
    assert_eq!(commit.bundle_version, 1);
    assert_eq!(commit.change_seq, Some(head + 1));
    assert_eq!(
        audit_len(store).await,
        before + 1,
        "the audit entry commits with it"
    );
    let log = store.changes_since(head, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].kind,
        ChangeKind::Ca,
        "a bundle change is logged for other nodes"
    );
    assert_eq!(log[0].consumer_id, 0);
    assert_eq!(log[0].at, at(1_000));

    let state = store.ca_state().await.unwrap();
    assert_eq!(state.bundle_version, 1);
    assert_eq!(
        state.authorities,
        [
            authority("ca_root1", AuthorityKind::Root, 1, None, "01"),
            authority(
                "ca_int1",
                AuthorityKind::Intermediate,
                1,
                Some("ca_root1"),
                "02"
            ),
        ],
        "every field round-trips, oldest first"
    );
    assert_eq!(state.crls, [crl("ca_int1", 1, 1_000)]);

    // A second init computed from the empty bundle conflicts and writes nothing.
    let err = store
        .write_ca(CaWrite {
            expected_bundle_version: Some(0),
            bump_bundle: true,
            authorities: &[authority("ca_root9", AuthorityKind::Root, 1, None, "09")],
            audit: &[audit(2_000, "ca.initialized", "ca")],
            ..CaWrite::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(audit_len(store).await, before + 1);
    assert_eq!(store.ca_state().await.unwrap(), state);
    assert_eq!(store.change_head().await.unwrap(), head + 1);

    // The timeline moves: an authority is replaced by id (its certificate and key are kept),
    // a CRL replaces the issuer's previous one; without `bump_bundle` nothing is logged.
    let mut retiring = authority(
        "ca_int1",
        AuthorityKind::Intermediate,
        1,
        Some("ca_root1"),
        "02",
    );
    retiring.state = AuthorityState::Retiring;
    retiring.removed_at = Some(at(5_000));
    retiring.idle = Duration::from_secs(60);
    retiring.entered_version = Some(1);
    let commit = store
        .write_ca(CaWrite {
            expected_bundle_version: Some(1),
            bump_bundle: false,
            authorities: std::slice::from_ref(&retiring),
            ..CaWrite::default()
        })
        .await
        .unwrap();
    assert_eq!(
        commit,
        CaCommit {
            bundle_version: 1,
            change_seq: None
        }
    );
    assert_eq!(store.change_head().await.unwrap(), head + 1);
    let commit = store
        .write_ca(CaWrite {
            expected_bundle_version: Some(1),
            bump_bundle: true,
            crls: &[crl("ca_int1", 2, 3_000)],
            ..CaWrite::default()
        })
        .await
        .unwrap();
    assert_eq!(commit.bundle_version, 2);
    let state = store.ca_state().await.unwrap();
    assert_eq!(state.authorities[1], retiring);
    assert_eq!(state.crls, [crl("ca_int1", 2, 3_000)], "one CRL per issuer");

    // Refusals: an authority serial taken, a CRL of an unknown issuer.
    let err = store
        .write_ca(CaWrite {
            authorities: &[authority("ca_root2", AuthorityKind::Root, 2, None, "01")],
            ..CaWrite::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    let err = store
        .write_ca(CaWrite {
            crls: &[crl("ca_nope", 1, 1_000)],
            ..CaWrite::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(
        store.ca_state().await.unwrap(),
        state,
        "refused writes leave nothing"
    );
    let debug = format!("{:?}", state.authorities[0]);
    assert!(
        debug.contains("<redacted>") && !debug.contains("[9, 8, 7"),
        "{debug}"
    );
}

pub async fn ca_certificates_record_list_and_revoke(store: &dyn Store) {
    ca_init(store).await;
    let write = |c: IssuedCertRecord| async move {
        store
            .write_ca(CaWrite {
                certificate: Some(&c),
                audit: &[audit(2_000, "cert.issued", &c.identity.to_string())],
                ..CaWrite::default()
            })
            .await
    };
    let a = issued("0a", "prod/billing", "ca_int1", 100_000);
    let b = issued("0b", "prod/billing", "ca_int1", 3_000);
    let c = issued("0c", "staging/web", "ca_int1", 100_000);
    for cert in [&a, &b, &c] {
        let commit = write(cert.clone()).await.unwrap();
        assert_eq!(
            commit.change_seq, None,
            "issuing does not change the bundle"
        );
        assert_eq!(commit.bundle_version, 1);
    }
    let err = write(a.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(store.get_certificate("0a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_certificate("ff").await.unwrap(), None);

    let query = |identity: Option<ConsumerRef>, state: Option<CertFilter>| CertQuery {
        identity,
        issuer: None,
        state,
        at: at(5_000),
        after: None,
        limit: 100,
    };
    let serials = |v: Vec<IssuedCertRecord>| v.into_iter().map(|c| c.serial).collect::<Vec<_>>();
    assert_eq!(
        serials(store.list_certificates(&query(None, None)).await.unwrap()),
        ["0a", "0b", "0c"]
    );
    let billing = Some(consumer_ref("prod", "billing"));
    assert_eq!(
        serials(
            store
                .list_certificates(&query(billing.clone(), None))
                .await
                .unwrap()
        ),
        ["0a", "0b"]
    );
    assert_eq!(
        serials(
            store
                .list_certificates(&query(billing.clone(), Some(CertFilter::Live)))
                .await
                .unwrap()
        ),
        ["0a"]
    );
    assert_eq!(
        serials(
            store
                .list_certificates(&query(None, Some(CertFilter::Expired)))
                .await
                .unwrap()
        ),
        ["0b"]
    );
    let mut paged = query(None, None);
    paged.after = Some("0a".into());
    paged.limit = 1;
    assert_eq!(
        serials(store.list_certificates(&paged).await.unwrap()),
        ["0b"]
    );
    let mut by_issuer = query(None, Some(CertFilter::Live));
    by_issuer.issuer = Some("ca_root1".into());
    assert!(
        store
            .list_certificates(&by_issuer)
            .await
            .unwrap()
            .is_empty()
    );
    by_issuer.issuer = Some("ca_int1".into());
    assert_eq!(
        serials(store.list_certificates(&by_issuer).await.unwrap()),
        ["0a", "0c"]
    );

    // A renewal records the certificate it supersedes; an unknown one is refused.
    let d = issued("0d", "prod/billing", "ca_int1", 200_000);
    store
        .write_ca(CaWrite {
            certificate: Some(&d),
            supersedes: Some("0a"),
            ..CaWrite::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .get_certificate("0a")
            .await
            .unwrap()
            .unwrap()
            .superseded_by
            .as_deref(),
        Some("0d")
    );
    let e = issued("0e", "prod/billing", "ca_int1", 200_000);
    let err = store
        .write_ca(CaWrite {
            certificate: Some(&e),
            supersedes: Some("77"),
            ..CaWrite::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(
        store.get_certificate("0e").await.unwrap(),
        None,
        "all or nothing"
    );

    // Revocation: once (the first reason stays), with the identity blocked, and a new CRL.
    assert_eq!(
        store
            .identity_revocation(&consumer_ref("prod", "billing"))
            .await
            .unwrap(),
        None
    );
    let blocked = RevokedIdentityRecord {
        identity: consumer_ref("prod", "billing"),
        revoked_at: at(6_000),
        reason: "key-compromise".into(),
        revoked_by: "tok_test".into(),
    };
    let before = audit_len(store).await;
    store
        .write_ca(CaWrite {
            expected_bundle_version: Some(1),
            bump_bundle: true,
            revocations: &[
                CertRevocation {
                    serial: "0a".into(),
                    at: at(6_000),
                    reason: "key-compromise".into(),
                },
                CertRevocation {
                    serial: "0d".into(),
                    at: at(6_000),
                    reason: "key-compromise".into(),
                },
            ],
            revoke_identity: Some(&blocked),
            crls: &[crl("ca_int1", 2, 6_000)],
            audit: &[audit(6_000, "cert.revoked", "prod/billing")],
            ..CaWrite::default()
        })
        .await
        .unwrap();
    assert_eq!(audit_len(store).await, before + 1);
    store
        .write_ca(CaWrite {
            revocations: &[CertRevocation {
                serial: "0a".into(),
                at: at(7_000),
                reason: "superseded".into(),
            }],
            ..CaWrite::default()
        })
        .await
        .unwrap();
    let revoked = store.get_certificate("0a").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(at(6_000)));
    assert_eq!(revoked.revocation_reason.as_deref(), Some("key-compromise"));
    assert_eq!(
        serials(
            store
                .list_certificates(&query(None, Some(CertFilter::Revoked)))
                .await
                .unwrap()
        ),
        ["0a", "0d"]
    );
    assert_eq!(
        serials(
            store
                .list_certificates(&query(billing, Some(CertFilter::Live)))
                .await
                .unwrap()
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        store
            .identity_revocation(&consumer_ref("prod", "billing"))
            .await
            .unwrap(),
        Some(blocked)
    );
    assert_eq!(
        store
            .identity_revocation(&consumer_ref("staging", "web"))
            .await
            .unwrap(),
        None
    );
    let err = store
        .write_ca(CaWrite {
            revocations: &[CertRevocation {
                serial: "99".into(),
                at: at(7_000),
                reason: "superseded".into(),
            }],
            ..CaWrite::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

pub async fn ca_handshake_uses_add_up(store: &dyn Store) {
    let use_ = |anchor: &str, identity: &str, peer: &str, serial: &str, last: i64, count: u64| {
        HandshakeUse {
            anchor_id: anchor.into(),
            identity: identity.into(),
            peer: peer.into(),
            serial: serial.into(),
            last_at: at(last),
            count,
        }
    };
    store.record_handshakes(&[]).await.unwrap();
    store
        .record_handshakes(&[
            use_("sha256:r1", "prod/billing", "10.0.0.1", "0a", 5_000, 3),
            use_("sha256:r1", "prod/web", "", "0b", 4_000, 1),
        ])
        .await
        .unwrap();
    // A later flush adds; an older one (another node's) keeps the later instant and serial.
    store
        .record_handshakes(&[use_(
            "sha256:r1",
            "prod/billing",
            "10.0.0.1",
            "0c",
            9_000,
            2,
        )])
        .await
        .unwrap();
    store
        .record_handshakes(&[use_(
            "sha256:r1",
            "prod/billing",
            "10.0.0.1",
            "0a",
            6_000,
            1,
        )])
        .await
        .unwrap();
    assert_eq!(
        store.list_handshakes(at(0)).await.unwrap(),
        [
            use_("sha256:r1", "prod/billing", "10.0.0.1", "0c", 9_000, 6),
            use_("sha256:r1", "prod/web", "", "0b", 4_000, 1),
        ],
        "newest first"
    );
    assert_eq!(
        store.list_handshakes(at(4_001)).await.unwrap(),
        [use_(
            "sha256:r1",
            "prod/billing",
            "10.0.0.1",
            "0c",
            9_000,
            6
        )]
    );
}

pub async fn agents_report_their_bundle_version(store: &dyn Store) {
    make_env(store, "prod", false).await;
    let c = create(store, "prod", "billing", 1).await;
    let report = |bundle: Option<u64>, when: i64| keyroll_store::AgentRecord {
        consumer: consumer_ref("prod", "billing"),
        agent_id: "agt_0123456789abcdef".into(),
        host: None,
        mode: Some("file".into()),
        version: 1,
        health: Some("ok".into()),
        detail: None,
        first_seen: at(when),
        last_contact: at(when),
        bundle_version: bundle,
    };
    store
        .record_agent(c.id, &report(Some(3), 2_000), &[], &[])
        .await
        .unwrap();
    let listed = store.list_agents(None).await.unwrap();
    assert_eq!(listed[0].bundle_version, Some(3));
    // An agent that does not say (an older agent) keeps what was reported before.
    store
        .record_agent(c.id, &report(None, 3_000), &[], &[])
        .await
        .unwrap();
    let listed = store.list_agents(None).await.unwrap();
    assert_eq!(listed[0].bundle_version, Some(3));
    assert_eq!(listed[0].last_contact, at(3_000));
    store
        .record_agent(c.id, &report(Some(4), 4_000), &[], &[])
        .await
        .unwrap();
    assert_eq!(
        store.list_agents(None).await.unwrap()[0].bundle_version,
        Some(4)
    );
}
