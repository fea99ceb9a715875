//! What an agent holding one version of a consumer should do now: a pure function of the
//! consumer's stored facts, the version the agent holds, whether a newer key was handed over
//! for it, and the schedule's verdict.
//!
//! Why a "superseded" agent rotates again instead of waiting: keyroll never stores a plaintext
//! key, so a version issued to someone else (an operator's plain `rotate`, or this agent before
//! it crashed between the answer and the write) cannot be fetched unless a holder of the old key
//! left it sealed for the others (a handover). Without one, the only way to a key the app can
//! use that outlives the old one is a new version; the orphan retires by the idle rule.

use super::schedule::{Delivery, ScheduleState};
use super::{Consumer, StoredState};
use crate::{Timestamp, VersionNumber};

/// What the agent should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    /// Nothing: the agent holds the newest active version and nothing asks for a rotation.
    Hold,
    /// Fetch this newer version, which a holder of the agent's version left for it.
    TakeHandover(VersionNumber),
    /// Rotate now, for this reason.
    Rotate(RotateReason),
}

/// Why an agent should rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateReason {
    /// The schedule says the rotation is due (and the consumer's keys are delivered by agents).
    Due(Timestamp),
    /// An operator asked for it (`rotate --via-agent`).
    Requested(Timestamp),
    /// A newer version exists that nobody handed over to this agent's version.
    Superseded(VersionNumber),
}

impl RotateReason {
    /// `due`, `requested`, `superseded`.
    pub fn code(&self) -> &'static str {
        match self {
            RotateReason::Due(_) => "due",
            RotateReason::Requested(_) => "requested",
            RotateReason::Superseded(_) => "superseded",
        }
    }

    /// Since when, when a time is known.
    pub fn since(&self) -> Option<Timestamp> {
        match self {
            RotateReason::Due(t) | RotateReason::Requested(t) => Some(*t),
            RotateReason::Superseded(_) => None,
        }
    }
}

/// What an agent holding `held` should do. `handover` is the newest version that a holder of
/// `held` left sealed for it, if any; `schedule` the consumer's [`ScheduleState`] at `now`.
pub fn agent_action(
    consumer: &Consumer,
    held: VersionNumber,
    handover: Option<VersionNumber>,
    schedule: &ScheduleState,
) -> AgentAction {
    let Some(active) = consumer.active_version() else {
        // No active version: a rotation issues one.
        return AgentAction::Rotate(RotateReason::Superseded(held));
    };
    if active.number != held {
        if let Some(n) = handover.filter(|n| *n > held) {
            return AgentAction::TakeHandover(n);
        }
        if active.number > held {
            return AgentAction::Rotate(RotateReason::Superseded(active.number));
        }
    }
    if let Some(since) = active.rotation_requested {
        return AgentAction::Rotate(RotateReason::Requested(since));
    }
    if consumer.schedule.delivery == Delivery::Agent
        && let ScheduleState::Due(since) = schedule
    {
        return AgentAction::Rotate(RotateReason::Due(*since));
    }
    AgentAction::Hold
}

/// Whether `held` is the consumer's newest active version.
pub fn holds_active(consumer: &Consumer, held: VersionNumber) -> bool {
    consumer
        .versions
        .iter()
        .rev()
        .find(|v| v.state == StoredState::Active)
        .is_some_and(|v| v.number == held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Entropy, EntropyUnavailable, issue_key};
    use crate::lifecycle::{Command, NewVersion, Usage};
    use crate::{ConsumerName, Environment};
    use std::time::Duration;

    struct Counter(u64);
    impl Entropy for Counter {
        fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyUnavailable> {
            for b in dest {
                self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
                *b = (self.0 >> 33) as u8;
            }
            Ok(())
        }
    }

    fn t(s: u64) -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000 + s as i64 * 1000)
    }

    fn new_version(n: u8) -> NewVersion {
        let env = Environment::parse("prod").expect("env");
        let key = issue_key(&env, &mut Counter(u64::from(n))).expect("key");
        NewVersion {
            kid: key.kid,
            secret_hash: key.secret_hash,
            fingerprint: key.fingerprint,
            expires_at: None,
        }
    }

    fn consumer() -> Consumer {
        Consumer::create(
            Environment::parse("prod").expect("env"),
            ConsumerName::parse("billing").expect("name"),
            vec![],
            None,
            new_version(1),
            t(0),
        )
    }

    fn rotated(c: &Consumer, n: u8, at: u64) -> Consumer {
        c.apply(
            Command::Rotate {
                grace: Duration::from_secs(3600),
                enforce: false,
                new_version: new_version(n),
            },
            &Usage::NONE,
            t(at),
        )
        .expect("rotate")
        .consumer
    }

    #[test]
    fn the_active_holder_holds_until_asked() {
        let c = consumer();
        let v1 = VersionNumber(1);
        assert_eq!(
            agent_action(&c, v1, None, &ScheduleState::Unscheduled),
            AgentAction::Hold
        );
        let asked = c
            .apply(Command::RequestRotation, &Usage::NONE, t(5))
            .expect("request");
        assert_eq!(
            agent_action(&asked.consumer, v1, None, &ScheduleState::Unscheduled),
            AgentAction::Rotate(RotateReason::Requested(t(5)))
        );
        // The rotation answers the request: the new version does not carry it.
        let after = rotated(&asked.consumer, 2, 6);
        assert_eq!(
            agent_action(&after, VersionNumber(2), None, &ScheduleState::Unscheduled),
            AgentAction::Hold
        );
    }

    #[test]
    fn a_second_request_changes_nothing() {
        let c = consumer();
        let once = c
            .apply(Command::RequestRotation, &Usage::NONE, t(5))
            .expect("request")
            .consumer;
        let twice = once
            .apply(Command::RequestRotation, &Usage::NONE, t(9))
            .expect("request");
        assert!(twice.effects.is_empty());
        assert_eq!(
            twice
                .consumer
                .active_version()
                .and_then(|v| v.rotation_requested),
            Some(t(5))
        );
    }

    #[test]
    fn due_rotates_only_agent_delivered_consumers() {
        let mut c = consumer();
        let due = ScheduleState::Due(t(100));
        assert_eq!(
            agent_action(&c, VersionNumber(1), None, &due),
            AgentAction::Hold,
            "a manually delivered consumer is rotated by a person"
        );
        c.schedule.delivery = Delivery::Agent;
        assert_eq!(
            agent_action(&c, VersionNumber(1), None, &due),
            AgentAction::Rotate(RotateReason::Due(t(100)))
        );
        let blocked = ScheduleState::Blocked(Some(t(100)), vec![]);
        assert_eq!(
            agent_action(&c, VersionNumber(1), None, &blocked),
            AgentAction::Hold
        );
    }

    #[test]
    fn an_old_holder_takes_the_handover_or_rotates_again() {
        let c = rotated(&consumer(), 2, 10);
        let v1 = VersionNumber(1);
        assert_eq!(
            agent_action(&c, v1, Some(VersionNumber(2)), &ScheduleState::Unscheduled),
            AgentAction::TakeHandover(VersionNumber(2))
        );
        assert_eq!(
            agent_action(&c, v1, None, &ScheduleState::Unscheduled),
            AgentAction::Rotate(RotateReason::Superseded(VersionNumber(2)))
        );
        assert!(holds_active(&c, VersionNumber(2)));
        assert!(!holds_active(&c, v1));
    }
}
