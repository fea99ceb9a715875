//! Which versions [`Command::Settle`](super::Command::Settle) has something to write down for, as one pure function of
//! plain facts, so a caller that holds only those facts (the verifier's index, scanning a million
//! records for the sweeper) decides exactly what `Settle` would, without building a [`Consumer`].
//!
//! The rules are `Settle`'s, one per version:
//! - a retiring version past its stored deadline (it is retired, or stalled and extended once);
//! - a `when-idle` retiring version, not enforced, quiet for `idle` (since its last use, or its
//!   issue when never used) while a newer version of its consumer has been seen;
//! - the consumer's current (newest active) version, never used and never reported, `unused_after`
//!   after its issue.
//!
//! A consumer is due when one of its versions is; the tests below tie this to `Settle` itself.

use std::time::Duration;

use super::{Consumer, RetirePolicy, StoredState, Usage};
use crate::timestamp::Timestamp;

/// What [`is_due`] decides from, for one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueFacts {
    /// Stored state.
    pub state: StoredState,
    /// While retiring: the stored deadline.
    pub deadline: Option<Timestamp>,
    /// When it was issued.
    pub created_at: Timestamp,
    /// Retire exactly at the deadline (`rotate --enforce`).
    pub enforced: bool,
    /// A `version.unused` event was already recorded for it.
    pub unused_reported: bool,
    /// When it was last seen in allowed traffic.
    pub last_used: Option<Timestamp>,
    /// A newer version of the same consumer was seen in allowed traffic.
    pub newer_seen: bool,
    /// It is the consumer's current version (the newest active one).
    pub current: bool,
}

impl DueFacts {
    /// The facts of `consumer`'s version at `index` (into `versions`), given its usage.
    pub fn of(consumer: &Consumer, index: usize, usage: &Usage<'_>) -> Option<DueFacts> {
        let v = consumer.versions.get(index)?;
        let current = consumer.active_version().map(|a| a.number);
        Some(DueFacts {
            state: v.state,
            deadline: v.deadline,
            created_at: v.created_at,
            enforced: v.enforced,
            unused_reported: v.unused_reported,
            last_used: usage.last_seen(v.number),
            newer_seen: consumer
                .versions
                .iter()
                .any(|n| n.number > v.number && usage.last_seen(n.number).is_some()),
            current: current == Some(v.number),
        })
    }
}

/// Whether [`Command::Settle`](super::Command::Settle) at `now` writes something down for this version, under the
/// consumer's retirement policy and idle window. `Settle` reports unused versions after
/// [`super::UNUSED_AFTER`]; the sweeper passes that.
pub fn is_due(
    v: &DueFacts,
    retire: RetirePolicy,
    idle: Duration,
    unused_after: Duration,
    now: Timestamp,
) -> bool {
    match v.state {
        StoredState::Retiring => {
            let Some(deadline) = v.deadline else {
                return false;
            };
            now >= deadline
                || (retire == RetirePolicy::WhenIdle
                    && !v.enforced
                    && v.newer_seen
                    && now.duration_since(v.last_used.unwrap_or(v.created_at)) >= idle)
        }
        StoredState::Active => {
            v.current
                && !v.unused_reported
                && v.last_used.is_none()
                && now.duration_since(v.created_at) >= unused_after
        }
        StoredState::Retired | StoredState::Revoked => false,
    }
}

/// Whether `Settle` has anything to write for `consumer` at `now`: one of its versions is due.
pub fn consumer_is_due(consumer: &Consumer, usage: &Usage<'_>, now: Timestamp) -> bool {
    (0..consumer.versions.len()).any(|i| {
        DueFacts::of(consumer, i, usage).is_some_and(|f| {
            is_due(
                &f,
                consumer.policy.retire,
                consumer.policy.idle,
                super::UNUSED_AFTER,
                now,
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Fingerprint, Kid, SecretHash};
    use crate::lifecycle::{Command, KeyVersion, OnStall, Policy, VersionNumber};
    use crate::names::{ConsumerName, Environment};
    use proptest::prelude::*;

    const HOUR: i64 = 3_600_000;

    fn state() -> impl Strategy<Value = StoredState> {
        prop_oneof![
            Just(StoredState::Active),
            Just(StoredState::Retiring),
            Just(StoredState::Retired),
            Just(StoredState::Revoked),
        ]
    }

    /// Times within a few days of the epoch, on and off whole seconds, so deadlines, idle
    /// windows and the unused day are all crossed.
    fn time() -> impl Strategy<Value = i64> {
        prop_oneof![0i64..4 * 24 * HOUR, (0i64..96).prop_map(|h| h * HOUR)]
    }

    #[derive(Debug, Clone)]
    struct Version {
        state: StoredState,
        created: i64,
        deadline: Option<i64>,
        enforced: bool,
        extended: bool,
        unused_reported: bool,
        grace_s: u64,
        last_used: Option<i64>,
    }

    fn version() -> impl Strategy<Value = Version> {
        (
            state(),
            time(),
            proptest::option::weighted(0.9, time()),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0u64), 1u64..200_000],
            proptest::option::of(time()),
        )
            .prop_map(
                |(state, created, deadline, enforced, extended, unused_reported, grace_s, last)| {
                    Version {
                        state,
                        created,
                        deadline,
                        enforced,
                        extended,
                        unused_reported,
                        grace_s,
                        last_used: last,
                    }
                },
            )
    }

    fn policy() -> impl Strategy<Value = Policy> {
        (
            any::<bool>(),
            prop_oneof![Just(3600u64), 0u64..100_000],
            any::<bool>(),
        )
            .prop_map(|(idle_first, idle, extend)| Policy {
                retire: if idle_first {
                    RetirePolicy::WhenIdle
                } else {
                    RetirePolicy::AtDeadline
                },
                idle: Duration::from_secs(idle),
                on_stall: if extend {
                    OnStall::Extend
                } else {
                    OnStall::Retire
                },
            })
    }

    fn consumer(versions: &[Version], policy: Policy) -> Consumer {
        let ts = Timestamp::from_unix_millis;
        Consumer {
            environment: Environment::parse("prod").unwrap(),
            name: ConsumerName::parse("app").unwrap(),
            scopes: vec![],
            owner: None,
            disabled: false,
            created_at: ts(0),
            policy,
            schedule: Default::default(),
            managed: None,
            versions: versions
                .iter()
                .enumerate()
                .map(|(i, v)| KeyVersion {
                    number: VersionNumber(i as u32 + 1),
                    kid: Kid::parse(&format!("{:0>12}", i)).unwrap(),
                    secret_hash: SecretHash([0; 32]),
                    fingerprint: Fingerprint([0; 8]),
                    state: v.state,
                    created_at: ts(v.created),
                    deadline: v.deadline.map(ts),
                    expires_at: None,
                    retired_at: None,
                    revoked_at: None,
                    revoke_reason: None,
                    replaced_by: None,
                    enforced: v.enforced,
                    grace: Duration::from_secs(v.grace_s),
                    extended: v.extended,
                    unused_reported: v.unused_reported,
                    due_raised: false,
                    expiry_warned: false,
                    rotation_requested: None,
                })
                .collect(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// For any stored state, usage and instant: the rule says due exactly when `Settle`
        /// writes something down (at least one effect), and not due exactly when it writes
        /// nothing. Stored states are arbitrary, not only those commands produce, because the
        /// index holds whatever the store holds.
        #[test]
        fn due_exactly_when_settle_has_an_effect(
            versions in proptest::collection::vec(version(), 1..5),
            policy in policy(),
            now in time(),
        ) {
            let c = consumer(&versions, policy);
            let seen: Vec<(VersionNumber, Timestamp)> = versions
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    v.last_used
                        .map(|t| (VersionNumber(i as u32 + 1), Timestamp::from_unix_millis(t)))
                })
                .collect();
            let usage = Usage::new(&seen);
            let now = Timestamp::from_unix_millis(now);
            let due = consumer_is_due(&c, &usage, now);
            let t = c.apply(Command::Settle, &usage, now).unwrap();
            prop_assert_eq!(due, !t.effects.is_empty(), "{:?}", t.effects);
        }
    }

    #[test]
    fn a_quiet_retiring_version_is_due_only_once_its_successor_is_seen() {
        let ts = Timestamp::from_unix_millis;
        let facts = DueFacts {
            state: StoredState::Retiring,
            deadline: Some(ts(10 * HOUR)),
            created_at: ts(0),
            enforced: false,
            unused_reported: false,
            last_used: None,
            newer_seen: false,
            current: false,
        };
        let idle = Duration::from_secs(3600);
        let rule = |f: &DueFacts, r, now| is_due(f, r, idle, super::super::UNUSED_AFTER, ts(now));
        assert!(!rule(&facts, RetirePolicy::WhenIdle, 2 * HOUR));
        let seen = DueFacts {
            newer_seen: true,
            ..facts
        };
        assert!(rule(&seen, RetirePolicy::WhenIdle, 2 * HOUR));
        assert!(!rule(&seen, RetirePolicy::AtDeadline, 2 * HOUR));
        // The deadline makes it due whatever the policy.
        assert!(rule(&facts, RetirePolicy::AtDeadline, 10 * HOUR));
    }
}
