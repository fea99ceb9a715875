//! The CA rotation timeline (SPEC §9) as one pure rule: given every authority's place on the
//! timeline, what the removal gate measured, and `now`, [`next_step`] says the one thing to do
//! next. The server's job carries a step out (one store transaction) and asks again, so a
//! timeline that passed while the server was down catches up step by step at start, and two
//! nodes that both believe they lead for a moment compute the same step (the store's bundle
//! version guard lets only one of them write it).
//!
//! The order of the rules is the order of safety:
//! 1. An expired authority leaves the bundle (webpki would still accept chains to an expired
//!    root, so it must not stay).
//! 2. A next CA enters the bundle at `enters_bundle_at`, before it signs anything, so every
//!    relying party trusts it before the first certificate it signs appears.
//! 3. It starts signing at `signs_from`; the previous one starts retiring.
//! 4. A retiring CA leaves the bundle only when its gate holds: no certificate it signed is
//!    still valid, no handshake chained to it for `idle`, and every agent reports a bundle that
//!    holds its successor.
//! 5. With nothing pending, the next rotation starts at half the signing CA's life.

use std::time::Duration;

use crate::Timestamp;

/// Root or intermediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityRole {
    /// A trust anchor.
    Root,
    /// Signs workload certificates.
    Intermediate,
}

/// Where an authority stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Made, not yet in the bundle.
    Next,
    /// In the bundle, not signing.
    Bundled,
    /// Signing (an intermediate), or the root above the signing intermediate.
    Active,
    /// Replaced, still in the bundle until its gate holds.
    Retiring,
    /// Out of the bundle.
    Removed,
}

/// One authority as the timeline sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityFacts {
    /// Its id.
    pub id: String,
    /// Root or intermediate.
    pub role: AuthorityRole,
    /// The root above an intermediate.
    pub parent: Option<String>,
    /// Validity start.
    pub not_before: Timestamp,
    /// Validity end.
    pub not_after: Timestamp,
    /// When it enters the bundle.
    pub enters_bundle_at: Timestamp,
    /// When it starts signing.
    pub signs_from: Timestamp,
    /// The removal gate's quiet period.
    pub idle: Duration,
    /// Its phase as stored.
    pub phase: Phase,
}

/// What the removal gate measured for one retiring authority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateFacts {
    /// Certificates it signed (for a root: signed by its intermediates) that are neither
    /// expired nor revoked.
    pub live_certificates: u64,
    /// The last handshake that chained to it (roots; `None`: never, or not an anchor).
    pub last_handshake: Option<Timestamp>,
    /// Agents that reported a bundle without its successor.
    pub agents_on_older_bundle: u64,
}

/// Which conditions of the removal gate hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// No certificate it signed is still valid.
    pub no_live_certificates: bool,
    /// No handshake chained to it for `idle`.
    pub handshakes_idle: bool,
    /// Every agent reports a bundle holding its successor.
    pub agents_updated: bool,
}

impl Gate {
    /// All three hold: it may leave the bundle.
    pub fn holds(self) -> bool {
        self.no_live_certificates && self.handshakes_idle && self.agents_updated
    }
}

/// The removal gate of an authority with `idle`, from what was measured, at `now`.
pub fn gate(idle: Duration, facts: &GateFacts, now: Timestamp) -> Gate {
    Gate {
        no_live_certificates: facts.live_certificates == 0,
        handshakes_idle: facts
            .last_handshake
            .is_none_or(|last| last.saturating_add(idle) <= now),
        agents_updated: facts.agents_on_older_bundle == 0,
    }
}

/// The one thing to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing is due.
    Nothing,
    /// This authority has expired: out of the bundle.
    Prune(String),
    /// This authority enters the bundle.
    EnterBundle(String),
    /// `to` signs from now on; `from` (and its root, when `to` has another) starts retiring.
    SwitchSigning {
        /// The intermediate that signed until now.
        from: Option<String>,
        /// The intermediate that signs from now on.
        to: String,
    },
    /// This retiring authority's gate holds: out of the bundle.
    Retire(String),
    /// Start the next rotation (a new intermediate; with `root`, a new root and intermediate).
    StartRotation {
        /// Rotate the root as well.
        root: bool,
    },
}

/// When a new CA rotating `current` enters the bundle and signs by default: at half and at five
/// sixths of `current`'s life, never before `now`.
pub fn default_schedule(current: &AuthorityFacts, now: Timestamp) -> (Timestamp, Timestamp) {
    let life = current.not_after.duration_since(current.not_before);
    let enter = current.not_before.saturating_add(life / 2).max(now);
    let sign = current.not_before.saturating_add(life * 5 / 6).max(enter);
    (enter, sign)
}

/// What the timeline asks for at `now`. `gates` gives the measured facts of retiring
/// authorities by id (a missing entry counts as measured nothing: the gate is judged on
/// defaults, i.e. it holds).
pub fn next_step(
    authorities: &[AuthorityFacts],
    gates: &[(String, GateFacts)],
    now: Timestamp,
) -> Step {
    let live = |a: &&AuthorityFacts| a.phase != Phase::Removed;
    // 1. Expired authorities leave the bundle.
    if let Some(a) = authorities.iter().filter(live).find(|a| a.not_after <= now) {
        return Step::Prune(a.id.clone());
    }
    // 2. A next CA enters the bundle (roots before their intermediates: a chain is only useful
    //    once its anchor is trusted).
    let mut entering: Vec<&AuthorityFacts> = authorities
        .iter()
        .filter(|a| a.phase == Phase::Next && a.enters_bundle_at <= now)
        .collect();
    entering.sort_by_key(|a| (a.role != AuthorityRole::Root, a.enters_bundle_at));
    if let Some(a) = entering.first() {
        return Step::EnterBundle(a.id.clone());
    }
    // 3. A bundled intermediate starts signing.
    let signing = authorities
        .iter()
        .find(|a| a.role == AuthorityRole::Intermediate && a.phase == Phase::Active);
    if let Some(next) = authorities.iter().find(|a| {
        a.role == AuthorityRole::Intermediate && a.phase == Phase::Bundled && a.signs_from <= now
    }) {
        return Step::SwitchSigning {
            from: signing.map(|s| s.id.clone()),
            to: next.id.clone(),
        };
    }
    // 4. A retiring authority whose gate holds leaves the bundle.
    for a in authorities.iter().filter(|a| a.phase == Phase::Retiring) {
        let facts = gates
            .iter()
            .find(|(id, _)| *id == a.id)
            .map(|(_, f)| f.clone())
            .unwrap_or_default();
        if gate(a.idle, &facts, now).holds() {
            return Step::Retire(a.id.clone());
        }
    }
    // 5. Nothing pending: the next rotation starts at half life (the root's first).
    let pending = |role| {
        authorities
            .iter()
            .any(|a| a.role == role && matches!(a.phase, Phase::Next | Phase::Bundled))
    };
    let half = |a: &AuthorityFacts| {
        a.not_before
            .saturating_add(a.not_after.duration_since(a.not_before) / 2)
    };
    let root = authorities
        .iter()
        .find(|a| a.role == AuthorityRole::Root && a.phase == Phase::Active);
    if let Some(r) = root
        && !pending(AuthorityRole::Root)
        && half(r) <= now
    {
        return Step::StartRotation { root: true };
    }
    if let Some(i) = signing
        && !pending(AuthorityRole::Intermediate)
        && half(i) <= now
    {
        return Step::StartRotation { root: false };
    }
    Step::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn t(hours: i64) -> Timestamp {
        Timestamp::from_unix_millis(hours * H)
    }

    fn authority(
        id: &str,
        role: AuthorityRole,
        parent: Option<&str>,
        life: (i64, i64),
        timeline: (i64, i64),
        phase: Phase,
    ) -> AuthorityFacts {
        AuthorityFacts {
            id: id.into(),
            role,
            parent: parent.map(Into::into),
            not_before: t(life.0),
            not_after: t(life.1),
            enters_bundle_at: t(timeline.0),
            signs_from: t(timeline.1),
            idle: Duration::from_secs(3600),
            phase,
        }
    }

    /// A root valid for 1200 h with an intermediate valid for 600 h, both active since 0.
    fn initial() -> Vec<AuthorityFacts> {
        vec![
            authority(
                "r1",
                AuthorityRole::Root,
                None,
                (0, 1200),
                (0, 0),
                Phase::Active,
            ),
            authority(
                "i1",
                AuthorityRole::Intermediate,
                Some("r1"),
                (0, 600),
                (0, 0),
                Phase::Active,
            ),
        ]
    }

    #[test]
    fn nothing_before_half_life_then_the_intermediate_rotates() {
        assert_eq!(next_step(&initial(), &[], t(299)), Step::Nothing);
        assert_eq!(
            next_step(&initial(), &[], t(300)),
            Step::StartRotation { root: false }
        );
        assert_eq!(
            next_step(&initial(), &[], t(600)),
            Step::Prune("i1".into()),
            "an expired intermediate leaves first"
        );
    }

    #[test]
    fn default_schedule_is_half_and_five_sixths_never_before_now() {
        let i1 = &initial()[1];
        assert_eq!(default_schedule(i1, t(10)), (t(300), t(500)));
        assert_eq!(default_schedule(i1, t(400)), (t(400), t(500)));
        assert_eq!(default_schedule(i1, t(550)), (t(550), t(550)));
    }

    #[test]
    fn a_rotation_enters_then_switches_then_waits_for_its_gate() {
        let mut cas = initial();
        cas.push(authority(
            "i2",
            AuthorityRole::Intermediate,
            Some("r1"),
            (300, 900),
            (300, 500),
            Phase::Next,
        ));
        assert_eq!(
            next_step(&cas, &[], t(299)),
            Step::Nothing,
            "pending: no new rotation"
        );
        assert_eq!(next_step(&cas, &[], t(300)), Step::EnterBundle("i2".into()));
        cas[2].phase = Phase::Bundled;
        assert_eq!(
            next_step(&cas, &[], t(499)),
            Step::Nothing,
            "in the bundle, not signing"
        );
        assert_eq!(
            next_step(&cas, &[], t(500)),
            Step::SwitchSigning {
                from: Some("i1".into()),
                to: "i2".into()
            }
        );
        cas[1].phase = Phase::Retiring;
        cas[2].phase = Phase::Active;
        let live = GateFacts {
            live_certificates: 2,
            ..GateFacts::default()
        };
        assert_eq!(
            next_step(&cas, &[("i1".into(), live)], t(501)),
            Step::Nothing,
            "a live leaf holds the old CA in the bundle"
        );
        assert_eq!(
            next_step(&cas, &[("i1".into(), GateFacts::default())], t(501)),
            Step::Retire("i1".into())
        );
    }

    #[test]
    fn the_gate_waits_for_leaves_handshakes_and_agents() {
        let idle = Duration::from_secs(3600);
        let quiet = GateFacts::default();
        assert!(gate(idle, &quiet, t(10)).holds());
        let recent = GateFacts {
            last_handshake: Some(t(10)),
            ..GateFacts::default()
        };
        let g = gate(idle, &recent, Timestamp::from_unix_millis(10 * H + H - 1));
        assert!(!g.handshakes_idle && g.no_live_certificates && g.agents_updated);
        assert!(
            gate(idle, &recent, t(11)).holds(),
            "idle for exactly `idle`"
        );
        let agents = GateFacts {
            agents_on_older_bundle: 1,
            ..GateFacts::default()
        };
        let g = gate(idle, &agents, t(20));
        assert!(!g.holds() && !g.agents_updated);
        let leaf = GateFacts {
            live_certificates: 1,
            ..GateFacts::default()
        };
        assert!(!gate(idle, &leaf, t(20)).no_live_certificates);
    }

    #[test]
    fn a_root_rotation_enters_root_first_and_retires_the_old_root_after_its_last_use() {
        let mut cas = initial();
        // Root half life is 600 h; the intermediate is rotated meanwhile.
        cas[1] = authority(
            "i1",
            AuthorityRole::Intermediate,
            Some("r1"),
            (590, 1190),
            (590, 590),
            Phase::Active,
        );
        assert_eq!(
            next_step(&cas, &[], t(600)),
            Step::StartRotation { root: true }
        );
        cas.push(authority(
            "r2",
            AuthorityRole::Root,
            None,
            (600, 1800),
            (600, 1000),
            Phase::Next,
        ));
        cas.push(authority(
            "i2",
            AuthorityRole::Intermediate,
            Some("r2"),
            (600, 1800),
            (600, 1000),
            Phase::Next,
        ));
        assert_eq!(
            next_step(&cas, &[], t(600)),
            Step::EnterBundle("r2".into()),
            "root first"
        );
        cas[2].phase = Phase::Bundled;
        assert_eq!(next_step(&cas, &[], t(600)), Step::EnterBundle("i2".into()));
        cas[3].phase = Phase::Bundled;
        assert_eq!(next_step(&cas, &[], t(999)), Step::Nothing);
        assert_eq!(
            next_step(&cas, &[], t(1000)),
            Step::SwitchSigning {
                from: Some("i1".into()),
                to: "i2".into()
            }
        );
        cas[0].phase = Phase::Retiring;
        cas[1].phase = Phase::Retiring;
        cas[2].phase = Phase::Active;
        cas[3].phase = Phase::Active;
        let used = GateFacts {
            last_handshake: Some(t(1000)),
            agents_on_older_bundle: 0,
            live_certificates: 0,
        };
        let gates = vec![
            ("r1".to_owned(), used.clone()),
            ("i1".to_owned(), GateFacts::default()),
        ];
        assert_eq!(next_step(&cas, &gates, t(1000)), Step::Retire("i1".into()));
        cas[1].phase = Phase::Removed;
        assert_eq!(
            next_step(&cas, &gates, t(1000)),
            Step::Nothing,
            "a handshake chained to r1 within idle"
        );
        assert_eq!(next_step(&cas, &gates, t(1001)), Step::Retire("r1".into()));
        cas[0].phase = Phase::Removed;
        assert_eq!(next_step(&cas, &gates, t(1001)), Step::Nothing);
        assert_eq!(
            next_step(&cas, &gates, t(1200)),
            Step::StartRotation { root: true },
            "the new root's half life starts the next rotation"
        );
    }

    #[test]
    fn an_expired_anchor_is_pruned_even_while_its_gate_would_hold_it() {
        let mut cas = initial();
        cas[0].phase = Phase::Retiring;
        let busy = GateFacts {
            live_certificates: 5,
            last_handshake: Some(t(1199)),
            agents_on_older_bundle: 3,
        };
        assert_eq!(
            next_step(&cas, &[("r1".into(), busy.clone())], t(700)),
            Step::Prune("i1".into())
        );
        cas[1].phase = Phase::Removed;
        assert_eq!(
            next_step(&cas, &[("r1".into(), busy.clone())], t(1199)),
            Step::Nothing
        );
        assert_eq!(
            next_step(&cas, &[("r1".into(), busy)], t(1200)),
            Step::Prune("r1".into())
        );
    }
}
