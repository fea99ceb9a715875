//! The verdict on a consumer's rotation — ok, rotating, stalled, ready, idle, … — as a pure rule
//! of its versions' states and use at `now`. `keyroll status`, the status API and (later) the
//! dashboard and `plan` all show this one verdict, so they cannot disagree.

use std::time::Duration;

use crate::lifecycle::{State, VersionNumber};
use crate::timestamp::{Timestamp, rfc3339};

/// What the verdict needs to know of one version at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionFacts {
    /// Its number.
    pub number: VersionNumber,
    /// Its state at `now` (after deadlines and the stall rule).
    pub state: State,
    /// Retiring on an extended deadline: it was still in use at its deadline.
    pub stalled: bool,
    /// Its deadline as shown at `now`, if retiring.
    pub deadline: Option<Timestamp>,
    /// Where its deadline would move if still in use then (a prediction).
    pub extension_if_stalled: Option<Timestamp>,
    /// When it was last seen.
    pub last_used: Option<Timestamp>,
    /// Requests in the last hour.
    pub requests_last_hour: u64,
    /// Who still uses it, in words (`10.0.0.7 (billing/2.1) and 2 more`).
    pub who: String,
}

/// The verdict on one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Disabled: every key is rejected.
    Disabled,
    /// A retiring version was still in use at its deadline; extended once.
    Stalled(VersionFacts),
    /// A retiring version is still in use before its deadline.
    Rotating(VersionFacts),
    /// Retiring versions and no valid newest one: nothing is ready to retire.
    NoActiveKey(Vec<VersionNumber>),
    /// The new version has not been seen yet; the retiring ones are idle.
    WaitingForUse {
        /// The new version.
        active: VersionNumber,
        /// The idle retiring ones.
        retiring: Vec<VersionNumber>,
    },
    /// The new version is in use and the retiring ones are idle.
    Ready(Vec<VersionNumber>),
    /// No valid version at all.
    NoValidKey,
    /// The only valid version has never been seen.
    NeverUsed(VersionNumber),
    /// The active version has not been seen within `idle`.
    Idle {
        /// When it was last seen.
        since: Timestamp,
    },
    /// In use.
    InUse(VersionFacts),
}

impl Verdict {
    /// The stable code (`verdict_code` in the API).
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Disabled => "disabled",
            Verdict::Stalled(_) => "stalled",
            Verdict::Rotating(_) | Verdict::WaitingForUse { .. } => "rotating",
            Verdict::NoActiveKey(_) => "no_active_key",
            Verdict::Ready(_) => "ready",
            Verdict::NoValidKey => "no_valid_key",
            Verdict::NeverUsed(_) => "never_used",
            Verdict::Idle { .. } => "idle",
            Verdict::InUse(_) => "ok",
        }
    }

    /// The verdict in words.
    pub fn describe(&self) -> String {
        let list = |vs: &[VersionNumber]| {
            vs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let deadline = |v: &VersionFacts| v.deadline.map_or("?".to_owned(), rfc3339);
        match self {
            Verdict::Disabled => "disabled: every key is rejected".into(),
            Verdict::Stalled(v) => format!(
                "stalled: {} still used by {}, {} req/h; deadline extended once, retires at {}",
                v.number,
                v.who,
                v.requests_last_hour,
                deadline(v)
            ),
            Verdict::Rotating(v) => {
                let prediction = match (v.extension_if_stalled, v.deadline) {
                    (Some(to), Some(at)) => format!(
                        " (will be extended once to {} if still in use at {})",
                        rfc3339(to),
                        rfc3339(at)
                    ),
                    _ => String::new(),
                };
                format!(
                    "rotating: {} still used by {}, {} req/h; deadline {}{prediction}",
                    v.number,
                    v.who,
                    v.requests_last_hour,
                    deadline(v)
                )
            }
            Verdict::NoActiveKey(retiring) => format!(
                "no active key: {} still work until their deadline; rotate to issue a valid key",
                list(retiring)
            ),
            Verdict::WaitingForUse { active, retiring } => {
                format!("waiting for {active} to be used; {} idle", list(retiring))
            }
            Verdict::Ready(retiring) => format!("ready to retire {}", list(retiring)),
            Verdict::NoValidKey => "no valid key: rotate to issue one".into(),
            Verdict::NeverUsed(v) => format!("never used: {v} (no traffic seen yet)"),
            Verdict::Idle { since } => format!("idle since {}", rfc3339(*since)),
            Verdict::InUse(v) => format!("in use: {}, {} req/h", v.number, v.requests_last_hour),
        }
    }
}

/// The verdict at `now` on a consumer whose versions are given newest first.
pub fn verdict(
    disabled: bool,
    idle: Duration,
    versions: &[VersionFacts],
    now: Timestamp,
) -> Verdict {
    if disabled {
        return Verdict::Disabled;
    }
    let seen_within = |v: &VersionFacts| v.last_used.is_some_and(|t| now.duration_since(t) < idle);
    if let Some(v) = versions.iter().find(|v| v.stalled) {
        return Verdict::Stalled(v.clone());
    }
    let active = versions.iter().find(|v| v.state == State::Active);
    let retiring: Vec<&VersionFacts> = versions
        .iter()
        .filter(|v| v.state == State::Retiring)
        .collect();
    if let Some(v) = retiring.iter().find(|v| seen_within(v)) {
        return Verdict::Rotating((*v).clone());
    }
    if !retiring.is_empty() {
        let numbers: Vec<VersionNumber> = retiring.iter().map(|v| v.number).collect();
        return match active {
            // The newest version is not valid (expired, revoked): the retiring ones are the
            // only working keys, nothing is ready to retire.
            None => Verdict::NoActiveKey(numbers),
            Some(a) if a.last_used.is_none() => Verdict::WaitingForUse {
                active: a.number,
                retiring: numbers,
            },
            Some(_) => Verdict::Ready(numbers),
        };
    }
    match active {
        None => Verdict::NoValidKey,
        Some(a) => match a.last_used {
            None => Verdict::NeverUsed(a.number),
            Some(since) if !seen_within(a) => Verdict::Idle { since },
            Some(_) => Verdict::InUse(a.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(s: i64) -> Timestamp {
        Timestamp::from_unix_millis(s * 1000)
    }

    fn v(n: u32, state: State, last_used: Option<i64>) -> VersionFacts {
        VersionFacts {
            number: VersionNumber(n),
            state,
            stalled: false,
            deadline: None,
            extension_if_stalled: None,
            last_used: last_used.map(at),
            requests_last_hour: 3,
            who: "10.0.0.7".into(),
        }
    }

    #[test]
    fn each_verdict_from_its_facts() {
        let now = at(10_000);
        let cases: Vec<(Vec<VersionFacts>, &str)> = vec![
            (vec![v(1, State::Active, Some(9_990))], "ok"),
            (vec![v(1, State::Active, Some(1))], "idle"),
            (vec![v(1, State::Active, None)], "never_used"),
            (vec![v(1, State::Revoked, Some(9_990))], "no_valid_key"),
            (
                vec![
                    v(2, State::Active, Some(9_999)),
                    v(1, State::Retiring, Some(9_990)),
                ],
                "rotating",
            ),
            (
                vec![
                    v(2, State::Active, Some(9_999)),
                    v(1, State::Retiring, Some(1)),
                ],
                "ready",
            ),
            (
                vec![v(2, State::Active, None), v(1, State::Retiring, None)],
                "rotating",
            ),
            (
                vec![v(2, State::Expired, None), v(1, State::Retiring, None)],
                "no_active_key",
            ),
        ];
        for (versions, code) in cases {
            assert_eq!(
                verdict(false, HOUR, &versions, now).code(),
                code,
                "{versions:?}"
            );
        }
        let mut stalled = v(1, State::Retiring, Some(9_990));
        stalled.stalled = true;
        stalled.deadline = Some(at(12_000));
        let s = verdict(
            false,
            HOUR,
            &[v(2, State::Active, Some(9_999)), stalled],
            now,
        );
        assert_eq!(s.code(), "stalled");
        assert!(
            s.describe().contains("v1 still used by 10.0.0.7, 3 req/h"),
            "{}",
            s.describe()
        );
        assert!(s.describe().contains(&rfc3339(at(12_000))));
        assert_eq!(verdict(true, HOUR, &[], now).code(), "disabled");
    }

    #[test]
    fn idle_is_measured_against_the_policy_window() {
        let versions = [v(1, State::Active, Some(0))];
        assert_eq!(verdict(false, HOUR, &versions, at(3_599)).code(), "ok");
        assert_eq!(verdict(false, HOUR, &versions, at(3_600)).code(), "idle");
    }
}
