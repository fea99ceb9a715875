//! Tests of the lifecycle state machine, driven by commands and `now` only.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::key::{Entropy, issue_key};

struct Counter(u64);
impl Entropy for Counter {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), crate::key::EntropyUnavailable> {
        for b in dest {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.0 >> 33) as u8;
        }
        Ok(())
    }
}

fn env() -> Environment {
    Environment::parse("prod").unwrap()
}

fn new_version(seed: u64) -> NewVersion {
    let key = issue_key(&env(), &mut Counter(seed)).unwrap();
    NewVersion {
        kid: key.kid,
        secret_hash: key.secret_hash,
        fingerprint: key.fingerprint,
        expires_at: None,
    }
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_unix_millis(secs * 1000)
}

fn consumer() -> Consumer {
    Consumer::create(
        env(),
        ConsumerName::parse("billing-app").unwrap(),
        vec![
            Scope::parse("b").unwrap(),
            Scope::parse("a").unwrap(),
            Scope::parse("a").unwrap(),
        ],
        Some("payments".into()),
        new_version(1),
        at(0),
    )
}

fn rotate(grace_secs: u64, seed: u64) -> Command {
    Command::Rotate {
        grace: Duration::from_secs(grace_secs),
        enforce: false,
        new_version: new_version(seed),
    }
}

#[test]
fn create_sorts_scopes_and_starts_at_v1_active() {
    let c = consumer();
    assert_eq!(
        c.scopes.iter().map(Scope::as_str).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(c.active_version().map(|v| v.number), Some(VersionNumber(1)));
}

#[test]
fn rotate_keeps_old_version_valid_for_the_grace_window() {
    let t = consumer()
        .apply(rotate(3600, 2), &Usage::NONE, at(100))
        .unwrap();
    let c = &t.consumer;
    assert_eq!(
        t.effects,
        vec![
            Effect::Retiring {
                version: VersionNumber(1),
                deadline: at(3700)
            },
            Effect::Issued(VersionNumber(2)),
        ]
    );
    let v1 = c.version(VersionNumber(1)).unwrap();
    assert_eq!(v1.state_at(at(3699)), State::Retiring);
    assert_eq!(v1.state_at(at(3700)), State::Retired);
    assert_eq!(v1.replaced_by, Some(VersionNumber(2)));
    assert_eq!(c.active_version().unwrap().number, VersionNumber(2));
}

#[test]
fn second_rotation_never_extends_an_earlier_deadline() {
    let t1 = consumer()
        .apply(rotate(3600, 2), &Usage::NONE, at(0))
        .unwrap();
    let t2 = t1
        .consumer
        .apply(rotate(7200, 3), &Usage::NONE, at(10))
        .unwrap();
    let c = t2.consumer;
    assert_eq!(
        c.version(VersionNumber(1)).unwrap().deadline,
        Some(at(3600))
    );
    assert_eq!(
        c.version(VersionNumber(2)).unwrap().deadline,
        Some(at(7210))
    );
    assert_eq!(
        c.version(VersionNumber(1)).unwrap().replaced_by,
        Some(VersionNumber(3))
    );
}

#[test]
fn zero_grace_retires_at_once() {
    let t = consumer()
        .apply(rotate(0, 2), &Usage::NONE, at(50))
        .unwrap();
    assert_eq!(
        t.effects[0],
        Effect::Retired {
            version: VersionNumber(1),
            reason: RetireReason::Rotation
        }
    );
    assert_eq!(
        t.consumer
            .version(VersionNumber(1))
            .unwrap()
            .state_at(at(50)),
        State::Retired
    );
    assert!(t.consumer.has_valid_version(&Usage::NONE, at(50)));
}

#[test]
fn retire_ends_grace_but_refuses_the_active_version() {
    let c = consumer()
        .apply(rotate(3600, 2), &Usage::NONE, at(0))
        .unwrap()
        .consumer;
    let err = c
        .apply(
            Command::Retire {
                version: VersionNumber(2),
            },
            &Usage::NONE,
            at(1),
        )
        .unwrap_err();
    assert!(matches!(err, LifecycleError::RetireActive { .. }), "{err}");
    assert!(err.to_string().contains("rotate first"));
    let t = c
        .apply(
            Command::Retire {
                version: VersionNumber(1),
            },
            &Usage::NONE,
            at(1),
        )
        .unwrap();
    assert_eq!(
        t.effects,
        vec![Effect::Retired {
            version: VersionNumber(1),
            reason: RetireReason::Operator
        }]
    );
    // Retrying is a no-op, not an error.
    let again = t
        .consumer
        .apply(
            Command::Retire {
                version: VersionNumber(1),
            },
            &Usage::NONE,
            at(2),
        )
        .unwrap();
    assert!(again.effects.is_empty());
    let missing = c
        .apply(
            Command::Retire {
                version: VersionNumber(9),
            },
            &Usage::NONE,
            at(1),
        )
        .unwrap_err();
    assert_eq!(missing.to_string(), "prod/billing-app has no version v9");
}

#[test]
fn revoke_is_immediate_needs_a_reason_and_keeps_the_first_one() {
    let c = consumer();
    assert_eq!(
        c.apply(
            Command::Revoke {
                version: VersionNumber(1),
                reason: "  ".into()
            },
            &Usage::NONE,
            at(1)
        )
        .unwrap_err(),
        LifecycleError::BadRevokeReason
    );
    let t = c
        .apply(
            Command::Revoke {
                version: VersionNumber(1),
                reason: "leaked in CI log".into(),
            },
            &Usage::NONE,
            at(5),
        )
        .unwrap();
    let v1 = t.consumer.version(VersionNumber(1)).unwrap();
    assert_eq!(v1.state_at(at(5)), State::Revoked);
    assert_eq!(v1.revoke_reason.as_deref(), Some("leaked in CI log"));
    let t2 = t
        .consumer
        .apply(
            Command::Revoke {
                version: VersionNumber(1),
                reason: "other".into(),
            },
            &Usage::NONE,
            at(6),
        )
        .unwrap();
    assert!(t2.effects.is_empty());
    assert_eq!(
        t2.consumer.version(VersionNumber(1)).unwrap().revoked_at,
        Some(at(5))
    );
}

#[test]
fn a_deadline_that_passed_while_down_is_settled_on_the_next_command() {
    let c = consumer()
        .apply(rotate(60, 2), &Usage::NONE, at(0))
        .unwrap()
        .consumer;
    let t = c.apply(Command::Settle, &Usage::NONE, at(1_000)).unwrap();
    assert_eq!(
        t.effects,
        vec![Effect::Retired {
            version: VersionNumber(1),
            reason: RetireReason::Deadline
        }]
    );
    let v1 = t.consumer.version(VersionNumber(1)).unwrap();
    assert_eq!(
        (v1.state, v1.retired_at),
        (StoredState::Retired, Some(at(60)))
    );
}

#[test]
fn creation_is_a_command_with_its_effects() {
    let spec = ConsumerSpec {
        environment: env(),
        name: ConsumerName::parse("billing-app").unwrap(),
        scopes: vec![
            Scope::parse("b").unwrap(),
            Scope::parse("a").unwrap(),
            Scope::parse("b").unwrap(),
        ],
        owner: None,
        policy: Policy {
            on_stall: OnStall::Retire,
            ..Policy::default()
        },
        schedule: Default::default(),
        managed: false,
    };
    let t = Consumer::created(spec, new_version(7), at(5));
    assert_eq!(
        t.effects,
        vec![Effect::Created, Effect::Issued(VersionNumber(1))]
    );
    assert_eq!(
        t.consumer.scopes,
        vec![Scope::parse("a").unwrap(), Scope::parse("b").unwrap()]
    );
    assert_eq!(t.consumer.policy.on_stall, OnStall::Retire);
    assert_eq!(
        t.consumer.active_version().map(|v| v.created_at),
        Some(at(5))
    );
}

#[test]
fn update_changes_only_what_it_names_and_says_so_once() {
    let c = consumer();
    let t = c
        .apply(
            Command::Update(ConsumerUpdate {
                scopes: Some(vec![Scope::parse("z").unwrap(), Scope::parse("z").unwrap()]),
                owner: Some(None),
                policy: None,
                ..Default::default()
            }),
            &Usage::NONE,
            at(1),
        )
        .unwrap();
    assert_eq!(t.effects, vec![Effect::Updated]);
    assert_eq!(t.consumer.scopes, vec![Scope::parse("z").unwrap()]);
    assert_eq!(t.consumer.owner, None);
    assert_eq!(t.consumer.policy, c.policy);
    assert_eq!(t.consumer.versions, c.versions);
    // The same update again changes nothing: no effect, nothing to write.
    let again = t
        .consumer
        .apply(
            Command::Update(ConsumerUpdate {
                scopes: Some(vec![Scope::parse("z").unwrap()]),
                owner: Some(None),
                policy: None,
                ..Default::default()
            }),
            &Usage::NONE,
            at(2),
        )
        .unwrap();
    assert!(again.effects.is_empty());
    assert_eq!(again.consumer, t.consumer);
}

#[test]
fn disable_and_enable_are_idempotent() {
    let t = consumer()
        .apply(Command::Disable, &Usage::NONE, at(1))
        .unwrap();
    assert_eq!(t.effects, vec![Effect::Disabled]);
    assert!(
        t.consumer
            .apply(Command::Disable, &Usage::NONE, at(2))
            .unwrap()
            .effects
            .is_empty()
    );
    assert_eq!(
        t.consumer
            .apply(Command::Enable, &Usage::NONE, at(3))
            .unwrap()
            .effects,
        vec![Effect::Enabled]
    );
}

#[test]
fn version_numbers_parse() {
    assert_eq!(VersionNumber::parse("v3"), Some(VersionNumber(3)));
    assert_eq!(VersionNumber::parse("12"), Some(VersionNumber(12)));
    for bad in ["v0", "v", "", "v-1", "vv1", "v99999999999"] {
        assert_eq!(VersionNumber::parse(bad), None, "{bad}");
    }
}

#[derive(Debug, Clone)]
enum Step {
    Rotate(u64),
    Retire(u32),
    Revoke(u32),
    Disable,
    Enable,
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u64..5000).prop_map(Step::Rotate),
        (1u32..6).prop_map(Step::Retire),
        (1u32..6).prop_map(Step::Revoke),
        Just(Step::Disable),
        Just(Step::Enable),
        (0u64..10_000).prop_map(Step::Wait),
    ]
}

proptest! {
    /// SPEC §3 invariant: unless every version was revoked, some version is valid, at every
    /// instant, after any sequence of commands. Revocation is the one command allowed to break it
    /// (it is never gated), so sequences with a revoke only check that state never goes backwards.
    #[test]
    fn always_a_valid_version_unless_revoked(steps in proptest::collection::vec(step(), 1..40)) {
        let mut c = consumer();
        let mut now = at(0);
        let mut revoked_any = false;
        for (i, s) in steps.into_iter().enumerate() {
            let cmd = match s {
                Step::Wait(secs) => { now = now.saturating_add(Duration::from_secs(secs)); Command::Settle }
                Step::Rotate(grace) => rotate(grace, i as u64 + 10),
                Step::Retire(n) => Command::Retire { version: VersionNumber(n) },
                Step::Revoke(n) => { Command::Revoke { version: VersionNumber(n), reason: "test".into() } }
                Step::Disable => Command::Disable,
                Step::Enable => Command::Enable,
            };
            let is_revoke = matches!(cmd, Command::Revoke { .. });
            if let Ok(t) = c.apply(cmd, &Usage::NONE, now) {
                // Terminal states never come back.
                for (before, after) in c.versions.iter().zip(t.consumer.versions.iter()) {
                    if before.state == StoredState::Revoked { prop_assert_eq!(after.state, StoredState::Revoked); }
                    if before.state_at(now) == State::Retired { prop_assert!(!after.state_at(now).is_valid()); }
                }
                prop_assert!(t.consumer.versions.iter().filter(|v| v.state == StoredState::Active).count() <= 1);
                if is_revoke && !t.effects.is_empty() { revoked_any = true; }
                c = t.consumer;
            }
            if !revoked_any {
                prop_assert!(c.has_valid_version(&Usage::NONE, now), "no valid version at {:?}: {:?}", now, c.versions);
            }
        }
    }
}

fn seen(pairs: &[(u32, i64)]) -> Vec<(VersionNumber, Timestamp)> {
    pairs
        .iter()
        .map(|(n, secs)| (VersionNumber(*n), at(*secs)))
        .collect()
}

fn with_idle(mut c: Consumer, idle_secs: u64) -> Consumer {
    c.policy.idle = Duration::from_secs(idle_secs);
    c
}

#[test]
fn when_idle_retires_early_once_the_new_version_is_used_and_the_old_one_is_quiet() {
    let c = with_idle(consumer(), 60)
        .apply(rotate(3600, 2), &Usage::NONE, at(0))
        .unwrap()
        .consumer;
    // v2 not seen yet: nothing happens, however quiet v1 is.
    let u = seen(&[(1, 10)]);
    assert!(
        c.apply(Command::Settle, &Usage::new(&u), at(500))
            .unwrap()
            .effects
            .is_empty()
    );
    // v2 seen, v1 seen 30 s ago: not idle yet.
    let u = seen(&[(1, 470), (2, 480)]);
    assert!(
        c.apply(Command::Settle, &Usage::new(&u), at(500))
            .unwrap()
            .effects
            .is_empty()
    );
    // v1 quiet for the idle window: retired early, long before its deadline.
    let u = seen(&[(1, 440), (2, 499)]);
    let t = c.apply(Command::Settle, &Usage::new(&u), at(500)).unwrap();
    assert_eq!(
        t.effects,
        vec![Effect::Retired {
            version: VersionNumber(1),
            reason: RetireReason::Idle
        }]
    );
    assert_eq!(
        t.consumer
            .version(VersionNumber(1))
            .unwrap()
            .state_at(at(500)),
        State::Retired
    );
}

#[test]
fn a_version_in_use_at_its_deadline_is_extended_once_then_retired_regardless() {
    let c = with_idle(consumer(), 60)
        .apply(rotate(100, 2), &Usage::NONE, at(0))
        .unwrap()
        .consumer;
    let v1 = |c: &Consumer| c.version(VersionNumber(1)).unwrap().clone();
    // Seen 10 s before the deadline: at the deadline it stalls, extended by the grace window.
    let u = seen(&[(1, 90), (2, 95)]);
    assert_eq!(
        v1(&c).state_with(&c.policy, Some(at(90)), at(150)),
        State::Retiring,
        "the hot path agrees before the sweeper runs"
    );
    let t = c.apply(Command::Settle, &Usage::new(&u), at(100)).unwrap();
    assert_eq!(
        t.effects,
        vec![Effect::Stalled {
            version: VersionNumber(1),
            deadline: at(100),
            until: at(200)
        }]
    );
    let c = t.consumer;
    assert!(v1(&c).extended);
    // Still in use at the extended deadline: retired regardless.
    let u = seen(&[(1, 199), (2, 199)]);
    let t = c.apply(Command::Settle, &Usage::new(&u), at(200)).unwrap();
    assert_eq!(
        t.effects,
        vec![Effect::Retired {
            version: VersionNumber(1),
            reason: RetireReason::Deadline
        }]
    );
    assert_eq!(v1(&t.consumer).retired_at, Some(at(200)));
}

#[test]
fn enforce_and_on_stall_retire_keep_the_exact_deadline() {
    let enforced = Command::Rotate {
        grace: Duration::from_secs(100),
        enforce: true,
        new_version: new_version(2),
    };
    let c = consumer()
        .apply(enforced, &Usage::NONE, at(0))
        .unwrap()
        .consumer;
    let u = seen(&[(1, 99)]);
    let t = c.apply(Command::Settle, &Usage::new(&u), at(100)).unwrap();
    assert_eq!(
        t.effects,
        vec![Effect::Retired {
            version: VersionNumber(1),
            reason: RetireReason::Deadline
        }]
    );
    let mut strict = consumer();
    strict.policy.on_stall = OnStall::Retire;
    let c = strict
        .apply(rotate(100, 3), &Usage::NONE, at(0))
        .unwrap()
        .consumer;
    let t = c.apply(Command::Settle, &Usage::new(&u), at(100)).unwrap();
    assert!(matches!(
        t.effects[0],
        Effect::Retired {
            reason: RetireReason::Deadline,
            ..
        }
    ));
}

#[test]
fn a_deadline_and_its_extension_that_both_passed_while_down_settle_in_one_step() {
    let c = with_idle(consumer(), 60)
        .apply(rotate(100, 2), &Usage::NONE, at(0))
        .unwrap()
        .consumer;
    let u = seen(&[(1, 95)]);
    let t = c
        .apply(Command::Settle, &Usage::new(&u), at(10_000))
        .unwrap();
    assert_eq!(
        t.effects,
        vec![
            Effect::Stalled {
                version: VersionNumber(1),
                deadline: at(100),
                until: at(200)
            },
            Effect::Retired {
                version: VersionNumber(1),
                reason: RetireReason::Deadline
            },
        ]
    );
}

#[test]
fn an_active_version_nobody_used_for_a_day_is_reported_once() {
    let c = consumer();
    assert!(
        c.apply(Command::Settle, &Usage::NONE, at(3600))
            .unwrap()
            .effects
            .is_empty()
    );
    let t = c
        .apply(Command::Settle, &Usage::NONE, at(24 * 3600))
        .unwrap();
    assert_eq!(t.effects, vec![Effect::Unused(VersionNumber(1))]);
    assert!(
        t.consumer
            .apply(Command::Settle, &Usage::NONE, at(48 * 3600))
            .unwrap()
            .effects
            .is_empty()
    );
    let u = seen(&[(1, 5)]);
    assert!(
        consumer()
            .apply(Command::Settle, &Usage::new(&u), at(24 * 3600))
            .unwrap()
            .effects
            .is_empty()
    );
}

/// After `rotate --grace 1h` every reader shows the stored deadline (T+1h) while the version is
/// in use before it; the extension (T+2h) is only a prediction until the stored deadline passes
/// with the version still in use, then it is the deadline and the version is extended.
#[test]
fn the_shown_deadline_is_the_stored_one_until_the_extension_happens() {
    let t = consumer()
        .apply(rotate(3600, 2), &Usage::NONE, at(100))
        .unwrap();
    let v1 = t.consumer.version(VersionNumber(1)).unwrap();
    let policy = t.consumer.policy;
    let stored = at(3700);
    let extended = at(7300);
    // In use just now: before the deadline, the stored one and a prediction.
    let view = v1.view(Some(at(200)));
    assert_eq!(shown_deadline(&view, &policy, at(300)), Some(stored));
    assert_eq!(
        v1.deadline_with(&policy, Some(at(200)), at(300)),
        Some(stored)
    );
    assert!(!is_extended_at(&view, &policy, at(300)));
    assert_eq!(
        extension_if_stalled(&view, &policy, at(300)),
        Some(extended)
    );
    // Still in use at the deadline: now extended, the new deadline shown, no prediction left.
    let view = v1.view(Some(at(3650)));
    assert_eq!(shown_deadline(&view, &policy, at(3700)), Some(extended));
    assert!(is_extended_at(&view, &policy, at(3700)));
    assert_eq!(extension_if_stalled(&view, &policy, at(3700)), None);
    // Written down by Settle: the same answer from the stored facts alone.
    let settled = t
        .consumer
        .apply(
            Command::Settle,
            &Usage::new(&[(VersionNumber(1), at(3650))]),
            at(3701),
        )
        .unwrap();
    let v1s = settled.consumer.version(VersionNumber(1)).unwrap();
    assert_eq!(v1s.deadline, Some(extended));
    assert_eq!(
        v1s.deadline_with(&policy, Some(at(3650)), at(3701)),
        Some(extended)
    );
    assert_eq!(
        extension_if_stalled(&v1s.view(Some(at(3650))), &policy, at(3701)),
        None
    );
    // Last seen more than `idle` before the deadline: the stored deadline, retired then.
    let view = v1.view(Some(at(50)));
    assert_eq!(shown_deadline(&view, &policy, at(3700)), Some(stored));
    assert_eq!(
        v1.state_with(&policy, Some(at(50)), at(3700)),
        State::Retired
    );
    // Enforced: no prediction at all.
    let enforced = consumer()
        .apply(
            Command::Rotate {
                grace: Duration::from_secs(3600),
                enforce: true,
                new_version: new_version(2),
            },
            &Usage::NONE,
            at(100),
        )
        .unwrap();
    let e1 = enforced.consumer.version(VersionNumber(1)).unwrap();
    assert_eq!(
        extension_if_stalled(&e1.view(Some(at(200))), &policy, at(300)),
        None
    );
}

proptest! {
    /// Before the stored deadline, whatever the use, the shown deadline is the stored one; at or
    /// after it, the shown deadline is the one the state is decided by.
    #[test]
    fn shown_deadline_never_runs_ahead_of_the_stored_one(
        grace in 1u64..10_000, last in 0i64..20_000, now in 0i64..30_000,
    ) {
        let t = consumer().apply(rotate(grace, 2), &Usage::NONE, at(0)).unwrap();
        let v1 = t.consumer.version(VersionNumber(1)).unwrap();
        let policy = t.consumer.policy;
        let view = v1.view(Some(at(last)));
        let stored = at(grace as i64);
        let shown = shown_deadline(&view, &policy, at(now)).unwrap();
        if at(now) < stored {
            prop_assert_eq!(shown, stored);
        } else {
            prop_assert_eq!(Some(shown), effective_deadline(&view, &policy));
            let state = effective_state(&view, &policy, at(now));
            prop_assert_eq!(state == State::Retiring, at(now) < shown);
        }
    }
}

#[test]
fn extra_active_versions_name_all_but_the_newest() {
    let t = consumer()
        .apply(rotate(3600, 2), &Usage::NONE, at(100))
        .unwrap();
    assert!(t.consumer.extra_active_versions().is_empty());
    let mut broken = t.consumer.clone();
    broken.versions[0].state = StoredState::Active;
    assert_eq!(broken.extra_active_versions(), [VersionNumber(1)]);
    assert_eq!(
        broken.active_version().map(|v| v.number),
        Some(VersionNumber(2))
    );
}

#[test]
fn a_due_rotation_and_a_near_expiry_are_raised_once_per_version() {
    let c = consumer();
    let t = c
        .apply(Command::RaiseDue { due_at: at(10) }, &Usage::NONE, at(11))
        .unwrap();
    assert_eq!(
        t.effects,
        vec![Effect::Due {
            version: VersionNumber(1),
            due_at: at(10)
        }]
    );
    let again = t
        .consumer
        .apply(Command::RaiseDue { due_at: at(10) }, &Usage::NONE, at(12))
        .unwrap();
    assert!(again.effects.is_empty(), "raised once per version");
    let rotated = again
        .consumer
        .apply(rotate(60, 2), &Usage::NONE, at(13))
        .unwrap();
    let next = rotated
        .consumer
        .apply(Command::RaiseDue { due_at: at(20) }, &Usage::NONE, at(21))
        .unwrap();
    assert_eq!(
        next.effects,
        vec![Effect::Due {
            version: VersionNumber(2),
            due_at: at(20)
        }],
        "the new version's period raises its own"
    );
    let mut expiring = consumer();
    expiring.versions[0].expires_at = Some(at(1000));
    let w = expiring
        .apply(
            Command::WarnExpiring {
                versions: vec![VersionNumber(1)],
            },
            &Usage::NONE,
            at(900),
        )
        .unwrap();
    assert_eq!(
        w.effects,
        vec![Effect::Expiring {
            version: VersionNumber(1),
            expires_at: at(1000)
        }]
    );
    assert!(
        w.consumer
            .apply(
                Command::WarnExpiring {
                    versions: vec![VersionNumber(1)]
                },
                &Usage::NONE,
                at(901)
            )
            .unwrap()
            .effects
            .is_empty()
    );
}

#[test]
fn an_update_marked_managed_records_the_settings_after_it_as_the_baseline() {
    let c = consumer();
    let t = c
        .apply(
            Command::Update(ConsumerUpdate {
                scopes: Some(vec![Scope::parse("x").unwrap()]),
                managed: Some(true),
                ..Default::default()
            }),
            &Usage::NONE,
            at(1),
        )
        .unwrap();
    let baseline = t.consumer.managed.clone().unwrap();
    assert_eq!(baseline.scopes, vec![Scope::parse("x").unwrap()]);
    assert_eq!(t.effects, vec![Effect::Updated]);
    // An out-of-band change leaves the baseline where the policy put it: that is drift.
    let drifted = t
        .consumer
        .apply(
            Command::Update(ConsumerUpdate {
                owner: Some(Some("someone".into())),
                ..Default::default()
            }),
            &Usage::NONE,
            at(2),
        )
        .unwrap();
    assert_eq!(drifted.consumer.managed, Some(baseline));
    assert_ne!(drifted.consumer.owner, t.consumer.owner);
}
