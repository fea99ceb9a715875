//! The rotation schedule as pure functions of a consumer's stored facts and `now`: when its next
//! rotation falls due, whether it can run, and which versions near their hard expiry.
//!
//! Why the due time is computed from the active version's issue time and nothing else: a server
//! that was down across several periods finds a consumer due exactly once at start (one rotation
//! makes a new active version, whose period starts then), so missed schedules are caught up once,
//! never once per missed period, and no "last run" bookkeeping can drift from the versions.

use std::time::Duration;

use super::{Consumer, KeyVersion, StoredState};
use crate::{Environment, Timestamp, VersionNumber};

/// How a new key reaches the consumer (SPEC §7). A rotation whose key reaches nobody is the
/// founding incident again, so the schedule treats each differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Delivery {
    /// An agent beside the app fetches its own new key.
    Agent,
    /// The pipeline that runs `keyroll rotate --due` hands the key on.
    Ci,
    /// A person carries it: the schedule only says it is due, never rotates by itself.
    #[default]
    Manual,
}

impl Delivery {
    /// `agent`, `ci`, `manual`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Delivery::Agent => "agent",
            Delivery::Ci => "ci",
            Delivery::Manual => "manual",
        }
    }

    /// Parses `agent`, `ci` or `manual`.
    pub fn parse(input: &str) -> Option<Delivery> {
        match input {
            "agent" => Some(Delivery::Agent),
            "ci" => Some(Delivery::Ci),
            "manual" => Some(Delivery::Manual),
            _ => None,
        }
    }
}

/// The grace window of a scheduled rotation when the consumer names none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(48 * 3600);

/// How long before a hard `expires_at` a `key.expiring` event is raised.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// A consumer's schedule settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Schedule {
    /// A new version falls due this long after the active one was issued; `None`: never.
    pub rotate_every: Option<Duration>,
    /// The grace window of a scheduled rotation; `None`: [`DEFAULT_GRACE`].
    pub grace: Option<Duration>,
    /// How the new key reaches the consumer.
    pub delivery: Delivery,
}

impl Schedule {
    /// The grace a rotation of this consumer gets when the caller names none.
    pub fn grace_or_default(&self) -> Duration {
        self.grace.unwrap_or(DEFAULT_GRACE)
    }
}

/// What a policy `apply` left a consumer with: the baseline drift is measured against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ManagedSpec {
    /// Granted scopes, sorted.
    pub scopes: Vec<crate::Scope>,
    /// Owner.
    pub owner: Option<String>,
    /// Retirement policy.
    pub policy: super::Policy,
    /// Schedule.
    pub schedule: Schedule,
}

impl ManagedSpec {
    /// The consumer's settings now, as a baseline.
    pub fn of(c: &Consumer) -> ManagedSpec {
        ManagedSpec {
            scopes: c.scopes.clone(),
            owner: c.owner.clone(),
            policy: c.policy,
            schedule: c.schedule,
        }
    }
}

/// When `consumer`'s next rotation falls due: `rotate_every` after its active version was issued.
pub fn next_due(consumer: &Consumer) -> Option<Timestamp> {
    let every = consumer.schedule.rotate_every?;
    let active = consumer.active_version()?;
    Some(active.created_at.saturating_add(every))
}

/// Where a consumer stands in the schedule at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleState {
    /// No `rotate_every`.
    Unscheduled,
    /// The next rotation falls due at this time.
    Scheduled(Timestamp),
    /// Due since this time, and nothing stands in the way.
    Due(Timestamp),
    /// Due since this time (or it would be), but it must wait: why.
    Blocked(Option<Timestamp>, Vec<Blocker>),
}

impl ScheduleState {
    /// `unscheduled`, `scheduled`, `due`, `blocked`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScheduleState::Unscheduled => "unscheduled",
            ScheduleState::Scheduled(_) => "scheduled",
            ScheduleState::Due(_) => "due",
            ScheduleState::Blocked(..) => "blocked",
        }
    }

    /// The due time, if there is one.
    pub fn due_at(&self) -> Option<Timestamp> {
        match self {
            ScheduleState::Unscheduled => None,
            ScheduleState::Scheduled(t) | ScheduleState::Due(t) => Some(*t),
            ScheduleState::Blocked(t, _) => *t,
        }
    }
}

/// Why a due rotation cannot run yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// The consumer is disabled.
    Disabled,
    /// No active version to replace (every version was revoked or retired).
    NoActiveVersion,
    /// The previous rotation has not completed: a version is still retiring until this time.
    RotationInProgress {
        /// The retiring version.
        version: VersionNumber,
        /// Its deadline.
        until: Timestamp,
    },
    /// The previous rotation stalled: the old version was still in use at its deadline.
    Stalled {
        /// The stalled version.
        version: VersionNumber,
        /// Its extended deadline.
        until: Timestamp,
    },
    /// The environment rotates after another one, whose rotation of this consumer is not done.
    Ordering {
        /// The environment that must rotate first.
        after: Environment,
        /// What it waits for.
        waiting: Waiting,
    },
}

/// What an ordering rule waits for in the earlier environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// The consumer does not exist there.
    Missing,
    /// It has not been rotated since this consumer's active version was issued.
    NotRotatedSince(Timestamp),
    /// It was rotated, but its old version is still retiring.
    StillRetiring(VersionNumber),
    /// It was rotated and its old version stalled (still in use).
    Stalled(VersionNumber),
}

impl Blocker {
    /// A stable code for the API: `disabled`, `no_active_version`, `rotation_in_progress`,
    /// `stalled`, `ordering`.
    pub fn code(&self) -> &'static str {
        match self {
            Blocker::Disabled => "disabled",
            Blocker::NoActiveVersion => "no_active_version",
            Blocker::RotationInProgress { .. } => "rotation_in_progress",
            Blocker::Stalled { .. } => "stalled",
            Blocker::Ordering { .. } => "ordering",
        }
    }

    /// In words, naming what to do.
    pub fn describe(&self, consumer: &Consumer) -> String {
        let name = &consumer.name;
        match self {
            Blocker::Disabled => "the consumer is disabled; enable it to rotate".into(),
            Blocker::NoActiveVersion => {
                "no active version to replace (every version was revoked or retired)".into()
            }
            Blocker::RotationInProgress { version, until } => format!(
                "the previous rotation is still in its grace window: {version} retires at {}",
                crate::rfc3339(*until)
            ),
            Blocker::Stalled { version, until } => format!(
                "the previous rotation stalled: {version} is still in use and was extended to {}; \
                 find its callers with `keyroll status {}`",
                crate::rfc3339(*until),
                consumer.reference()
            ),
            Blocker::Ordering { after, waiting } => match waiting {
                Waiting::Missing => format!(
                    "{} rotates after {after}, and {after}/{name} does not exist",
                    consumer.environment
                ),
                Waiting::NotRotatedSince(t) => format!(
                    "waiting for {after}/{name} to rotate first (not rotated since {})",
                    crate::rfc3339(*t)
                ),
                Waiting::StillRetiring(v) => format!(
                    "waiting for {after}/{name}'s rotation to complete ({v} is still retiring)"
                ),
                Waiting::Stalled(v) => format!(
                    "{after}/{name}'s rotation stalled ({v} still in use there); {} waits until \
                     it completes",
                    consumer.environment
                ),
            },
        }
    }
}

/// The newest version that is retiring in its stored state, with its stored deadline.
fn retiring(c: &Consumer) -> Option<&KeyVersion> {
    c.versions
        .iter()
        .rev()
        .find(|v| v.state == StoredState::Retiring)
}

/// What an ordering rule waits for: `earlier` is the same consumer in the environment named by
/// `rotate_after` (or `None` if it does not exist there). The rule holds once `earlier` was
/// rotated after this consumer's active version was issued and nothing of it is still retiring.
pub fn ordering_waits(consumer: &Consumer, earlier: Option<&Consumer>) -> Option<Waiting> {
    let Some(earlier) = earlier else {
        return Some(Waiting::Missing);
    };
    let since = consumer.active_version().map(|v| v.created_at)?;
    let rotated = earlier
        .active_version()
        .is_some_and(|v| v.created_at > since && v.number.0 > 1);
    if !rotated {
        return Some(Waiting::NotRotatedSince(since));
    }
    if let Some(v) = retiring(earlier) {
        return Some(if v.extended {
            Waiting::Stalled(v.number)
        } else {
            Waiting::StillRetiring(v.number)
        });
    }
    None
}

/// Where `consumer` stands at `now`. `rotate_after` is its environment's ordering rule and
/// `earlier` the same consumer in that environment. Stored states are taken as they are: the
/// caller settles first (a retiring version past its deadline is then retired).
pub fn schedule_state(
    consumer: &Consumer,
    rotate_after: Option<&Environment>,
    earlier: Option<&Consumer>,
    now: Timestamp,
) -> ScheduleState {
    if consumer.schedule.rotate_every.is_none() {
        return ScheduleState::Unscheduled;
    }
    let Some(due) = next_due(consumer) else {
        return ScheduleState::Blocked(None, vec![Blocker::NoActiveVersion]);
    };
    if now < due {
        return ScheduleState::Scheduled(due);
    }
    let mut blockers = Vec::new();
    if consumer.disabled {
        blockers.push(Blocker::Disabled);
    }
    if let Some(v) = retiring(consumer)
        && let Some(until) = v.deadline
    {
        blockers.push(if v.extended {
            Blocker::Stalled {
                version: v.number,
                until,
            }
        } else {
            Blocker::RotationInProgress {
                version: v.number,
                until,
            }
        });
    }
    if let Some(after) = rotate_after
        && let Some(waiting) = ordering_waits(consumer, earlier)
    {
        blockers.push(Blocker::Ordering {
            after: after.clone(),
            waiting,
        });
    }
    if blockers.is_empty() {
        ScheduleState::Due(due)
    } else {
        ScheduleState::Blocked(Some(due), blockers)
    }
}

/// Valid versions whose hard expiry is within [`EXPIRY_WARNING`] of `now` and not yet announced.
pub fn expiring_versions(consumer: &Consumer, now: Timestamp) -> Vec<VersionNumber> {
    consumer
        .versions
        .iter()
        .filter(|v| matches!(v.state, StoredState::Active | StoredState::Retiring))
        .filter(|v| !v.expiry_warned)
        .filter(|v| {
            v.expires_at
                .is_some_and(|e| e > now && e.duration_since(now) <= EXPIRY_WARNING)
        })
        .map(|v| v.number)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Command, NewVersion, Usage};
    use crate::{ConsumerName, Fingerprint, Kid, SecretHash, parse_rfc3339};

    fn at(text: &str) -> Timestamp {
        parse_rfc3339(text).unwrap()
    }

    fn version(n: u8) -> NewVersion {
        let kid: String = format!("{:0>12}", n);
        NewVersion {
            kid: Kid::parse(&kid).unwrap(),
            secret_hash: SecretHash([n; 32]),
            fingerprint: Fingerprint([n; 8]),
            expires_at: None,
        }
    }

    fn consumer(env: &str, created: Timestamp, every: Option<&str>) -> Consumer {
        let mut c = Consumer::create(
            Environment::parse(env).unwrap(),
            ConsumerName::parse("billing").unwrap(),
            vec![],
            None,
            version(1),
            created,
        );
        c.schedule.rotate_every = every.map(|e| crate::parse_duration(e).unwrap());
        c
    }

    fn rotate(c: &Consumer, n: u8, grace: &str, now: Timestamp) -> Consumer {
        c.apply(
            Command::Rotate {
                grace: crate::parse_duration(grace).unwrap(),
                enforce: false,
                new_version: version(n),
            },
            &Usage::new(&[]),
            now,
        )
        .unwrap()
        .consumer
    }

    #[test]
    fn due_falls_rotate_every_after_the_active_version_across_a_month_boundary() {
        let c = consumer("prod", at("2026-01-31T12:00:00Z"), Some("30d"));
        assert_eq!(next_due(&c), Some(at("2026-03-02T12:00:00Z")));
        assert_eq!(
            schedule_state(&c, None, None, at("2026-03-02T11:59:59Z")),
            ScheduleState::Scheduled(at("2026-03-02T12:00:00Z"))
        );
        assert_eq!(
            schedule_state(&c, None, None, at("2026-03-02T12:00:00Z")),
            ScheduleState::Due(at("2026-03-02T12:00:00Z"))
        );
        // UTC throughout: the last Sunday of March (a DST change in Europe) moves nothing.
        let d = consumer("prod", at("2026-03-28T01:30:00Z"), Some("1d"));
        assert_eq!(next_due(&d), Some(at("2026-03-29T01:30:00Z")));
    }

    #[test]
    fn a_server_down_across_several_periods_finds_it_due_once_and_one_rotation_resets_the_period() {
        let c = consumer("prod", at("2026-01-01T00:00:00Z"), Some("7d"));
        // Down from Jan 5 to Feb 20: three periods missed.
        let back = at("2026-02-20T09:00:00Z");
        assert_eq!(
            schedule_state(&c, None, None, back),
            ScheduleState::Due(at("2026-01-08T00:00:00Z"))
        );
        let rotated = rotate(&c, 2, "1h", back);
        assert_eq!(
            schedule_state(&rotated, None, None, back),
            ScheduleState::Scheduled(at("2026-02-27T09:00:00Z"))
        );
    }

    #[test]
    fn an_unscheduled_consumer_is_never_due_and_a_disabled_one_is_blocked() {
        let c = consumer("prod", at("2026-01-01T00:00:00Z"), None);
        assert_eq!(
            schedule_state(&c, None, None, at("2030-01-01T00:00:00Z")),
            ScheduleState::Unscheduled
        );
        let mut d = consumer("prod", at("2026-01-01T00:00:00Z"), Some("1d"));
        d.disabled = true;
        let s = schedule_state(&d, None, None, at("2026-01-03T00:00:00Z"));
        assert_eq!(
            s,
            ScheduleState::Blocked(Some(at("2026-01-02T00:00:00Z")), vec![Blocker::Disabled])
        );
    }

    #[test]
    fn prod_waits_for_a_completed_staging_rotation() {
        let t0 = at("2026-01-01T00:00:00Z");
        let prod = consumer("prod", t0, Some("1d"));
        let staging = consumer("staging", t0, Some("1d"));
        let staging_env = Environment::parse("staging").unwrap();
        let due = at("2026-01-02T00:00:00Z");
        let now = at("2026-01-02T01:00:00Z");
        let waits = |s: Option<&Consumer>| match schedule_state(&prod, Some(&staging_env), s, now) {
            ScheduleState::Blocked(_, b) => b,
            other => panic!("expected blocked, got {other:?}"),
        };
        assert_eq!(
            waits(None),
            vec![Blocker::Ordering {
                after: staging_env.clone(),
                waiting: Waiting::Missing
            }]
        );
        assert_eq!(
            waits(Some(&staging)),
            vec![Blocker::Ordering {
                after: staging_env.clone(),
                waiting: Waiting::NotRotatedSince(t0)
            }]
        );
        // Staging rotated with a grace window that has not ended: still waiting.
        let rotated = rotate(&staging, 2, "2h", due);
        assert_eq!(
            waits(Some(&rotated)),
            vec![Blocker::Ordering {
                after: staging_env.clone(),
                waiting: Waiting::StillRetiring(VersionNumber(1))
            }]
        );
        // Its old version stalled (still in use at the deadline): prod keeps waiting.
        let mut stalled = rotated.clone();
        stalled.versions[0].extended = true;
        assert_eq!(
            waits(Some(&stalled)),
            vec![Blocker::Ordering {
                after: staging_env.clone(),
                waiting: Waiting::Stalled(VersionNumber(1))
            }]
        );
        // Settled after the deadline: v1 retired, so prod may rotate.
        let later = at("2026-01-02T03:00:00Z");
        let settled = rotated
            .apply(Command::Settle, &Usage::new(&[]), later)
            .unwrap()
            .consumer;
        assert_eq!(
            schedule_state(&prod, Some(&staging_env), Some(&settled), later),
            ScheduleState::Due(due)
        );
    }

    #[test]
    fn a_rotation_in_its_grace_window_or_stalled_blocks_the_next_one() {
        let t0 = at("2026-01-01T00:00:00Z");
        let c = consumer("prod", t0, Some("1h"));
        let rotated = rotate(&c, 2, "3h", at("2026-01-01T01:00:00Z"));
        let now = at("2026-01-01T02:30:00Z");
        assert_eq!(
            schedule_state(&rotated, None, None, now),
            ScheduleState::Blocked(
                Some(at("2026-01-01T02:00:00Z")),
                vec![Blocker::RotationInProgress {
                    version: VersionNumber(1),
                    until: at("2026-01-01T04:00:00Z")
                }]
            )
        );
        let mut stalled = rotated;
        stalled.versions[0].extended = true;
        assert!(matches!(
            schedule_state(&stalled, None, None, now),
            ScheduleState::Blocked(_, b) if b[0].code() == "stalled"
        ));
    }

    #[test]
    fn a_version_is_announced_as_expiring_seven_days_ahead_once() {
        let t0 = at("2026-01-01T00:00:00Z");
        let mut c = consumer("prod", t0, None);
        c.versions[0].expires_at = Some(at("2026-01-31T00:00:00Z"));
        assert!(expiring_versions(&c, at("2026-01-23T23:59:59Z")).is_empty());
        assert_eq!(
            expiring_versions(&c, at("2026-01-24T00:00:00Z")),
            vec![VersionNumber(1)]
        );
        c.versions[0].expiry_warned = true;
        assert!(expiring_versions(&c, at("2026-01-25T00:00:00Z")).is_empty());
        c.versions[0].expiry_warned = false;
        assert!(
            expiring_versions(&c, at("2026-01-31T00:00:00Z")).is_empty(),
            "already expired: nothing to announce"
        );
    }
}
