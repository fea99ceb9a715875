//! Tests of the index: last use kept in seconds, and the probe table.

mod last_use {
    use crate::index::*;

    #[test]
    fn last_use_in_seconds_never_looks_older_than_it_was() {
        let at = Timestamp::from_unix_millis;
        assert_eq!(ts_to_secs(at(12_900)), 13);
        assert_eq!(ts_to_secs(at(13_000)), 13);
        assert!(secs_to_ts(ts_to_secs(at(12_001))).unwrap() >= at(12_001));
    }
}

mod probe {
    //! The probe table: kids that start probing at the same slot are all found, a kid that is
    //! absent is not, also across the end of the table; and the sweep settles exactly the
    //! consumers `Settle` has something to write down for.
    use crate::index::*;
    use keyroll_core::lifecycle::{
        KeyVersion, OnStall, RetirePolicy, UNUSED_AFTER, consumer_is_due,
    };
    use keyroll_core::{Command, ConsumerName, Environment, Usage};
    use proptest::prelude::*;

    /// Deterministic distinct kids.
    fn kids(n: usize) -> Vec<Kid> {
        const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                let s: String = (0..12)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(B62[(x % 62) as usize])
                    })
                    .collect();
                Kid::parse(&s).unwrap()
            })
            .collect()
    }

    fn record(version: u32) -> Record {
        Record {
            secret_hash: SecretHash([version as u8; 32]),
            fingerprint: Fingerprint([0; 8]),
            deadline: i64::MAX,
            expires_at: i64::MAX,
            changed_at: 0,
            version,
            replaced_by: 0,
            last_used: AtomicU32::new(0),
            grace_s: 0,
            created_s: 0,
            state: StoredState::Active,
            flags: 0,
        }
    }

    fn entry() -> Arc<ConsumerEntry> {
        Arc::new(ConsumerEntry {
            revision: 1,
            reference: "prod/app".into(),
            scopes: Box::new([]),
            disabled: false,
            idle_s: 3600,
            retire: RetirePolicy::WhenIdle,
            on_stall: OnStall::Extend,
        })
    }

    /// Three kids whose probes start at the same slot of a `cap`-slot table, at `at`.
    fn colliding(cap: usize, at: impl Fn(usize) -> bool) -> [Kid; 3] {
        let mut by_home: Vec<Vec<Kid>> = vec![Vec::new(); cap];
        for k in kids(20_000) {
            let h = home(kid_hash(&k), cap);
            if at(h) {
                by_home[h].push(k);
                if by_home[h].len() == 3 {
                    return [by_home[h][0], by_home[h][1], by_home[h][2]];
                }
            }
        }
        panic!("no three kids share a home slot");
    }

    fn shard_with(cap: usize, present: &[Kid]) -> Shard {
        let mut shard = Shard::default();
        shard.slots.resize_with(cap, || None);
        for (i, kid) in present.iter().enumerate() {
            shard.records.push(record(i as u32 + 1));
            shard.insert_new(
                kid_hash(kid),
                Slot {
                    consumer: entry(),
                    kid: *kid,
                    pos: i as u32,
                },
            );
        }
        assert_eq!(shard.slots.len(), cap, "no resize in these tests");
        shard
    }

    #[test]
    fn kids_with_the_same_home_slot_are_all_found() {
        let cap = 64;
        let [a, b, absent] = colliding(cap, |h| h == 10);
        let shard = shard_with(cap, &[a, b]);
        for (kid, version) in [(a, 1), (b, 2)] {
            let (slot, r) = shard.get(kid_hash(&kid), &kid).unwrap();
            assert_eq!((slot.kid, r.version), (kid, version));
        }
        // The second sits right after the first; the absent one probes past both.
        assert!(matches!(shard.probe(kid_hash(&b), &b), Probe::Found(11)));
        assert!(shard.get(kid_hash(&absent), &absent).is_none());
        assert!(matches!(
            shard.probe(kid_hash(&absent), &absent),
            Probe::Vacant
        ));
    }

    #[test]
    fn probes_wrap_around_the_end_of_the_table() {
        let cap = 64;
        let [a, b, absent] = colliding(cap, |h| h == cap - 1);
        let shard = shard_with(cap, &[a, b]);
        assert!(matches!(shard.probe(kid_hash(&b), &b), Probe::Found(0)));
        assert_eq!(shard.get(kid_hash(&b), &b).unwrap().1.version, 2);
        assert!(matches!(
            shard.probe(kid_hash(&absent), &absent),
            Probe::Vacant
        ));
    }

    #[test]
    fn growing_keeps_every_kid_findable() {
        let all = kids(5_000);
        let mut shard = Shard::default();
        for (i, kid) in all.iter().enumerate() {
            shard.records.push(record(i as u32 + 1));
            shard.insert_new(
                kid_hash(kid),
                Slot {
                    consumer: entry(),
                    kid: *kid,
                    pos: i as u32,
                },
            );
            assert!(shard.records.len() * 10 <= shard.slots.len() * 9);
        }
        shard.resize(sized_for(all.len()));
        // Robin Hood order: along a run, each occupant is at most one slot further from its
        // home than the one before it (what lets a probe for an absent kid stop early).
        let cap = shard.slots.len();
        for i in 0..cap {
            if let (Some(Some(a)), Some(Some(b))) =
                (shard.slots.get(i), shard.slots.get((i + 1) % cap))
            {
                assert!(
                    Shard::displacement((i + 1) % cap, b, cap)
                        <= Shard::displacement(i, a, cap) + 1
                );
            }
        }
        for (i, kid) in all.iter().enumerate() {
            assert_eq!(
                shard.get(kid_hash(kid), kid).unwrap().1.version,
                i as u32 + 1
            );
        }
        for kid in kids(10_000).iter().skip(5_000) {
            assert!(shard.get(kid_hash(kid), kid).is_none());
        }
    }

    #[derive(Debug, Clone)]
    struct V {
        state: StoredState,
        created_s: i64,
        deadline_ms: Option<i64>,
        enforced: bool,
        extended: bool,
        unused_reported: bool,
        grace_s: u64,
        last_used_s: Option<i64>,
    }

    const DAY_S: i64 = 24 * 3600;

    fn v() -> impl Strategy<Value = V> {
        (
            prop_oneof![
                Just(StoredState::Active),
                Just(StoredState::Retiring),
                Just(StoredState::Retired),
                Just(StoredState::Revoked)
            ],
            0i64..3 * DAY_S,
            proptest::option::weighted(0.9, 0i64..3 * DAY_S * 1000),
            (any::<bool>(), any::<bool>(), any::<bool>()),
            prop_oneof![Just(0u64), 1u64..100_000],
            proptest::option::of(1i64..3 * DAY_S),
        )
            .prop_map(
                |(state, created_s, deadline_ms, flags, grace_s, last_used_s)| V {
                    state,
                    created_s,
                    deadline_ms,
                    enforced: flags.0,
                    extended: flags.1,
                    unused_reported: flags.2,
                    grace_s,
                    last_used_s,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The sweep names a consumer exactly when `Settle`, given the usage the index knows (as
        /// the server passes it), writes something down. Issue times are whole seconds: the
        /// index keeps a retiring version's issue in seconds rounded up, which can only make
        /// the sweep up to a second late (checked by `created_at_rounding_is_never_early`).
        #[test]
        fn the_sweep_names_exactly_the_consumers_settle_changes(
            consumers in proptest::collection::vec(
                (proptest::collection::vec(v(), 1..4), any::<bool>(), 0u64..20_000), 1..6),
            now_ms in 0i64..3 * DAY_S * 1000,
        ) {
            let index = Index::new();
            let mut all = kids(64).into_iter();
            let mut built = Vec::new();
            for (n, (versions, when_idle, idle_s)) in consumers.iter().enumerate() {
                let ts = Timestamp::from_unix_millis;
                let c = Consumer {
                    environment: Environment::parse("prod").unwrap(),
                    name: ConsumerName::parse(&format!("app{n}")).unwrap(),
                    scopes: vec![],
                    owner: None,
                    disabled: false,
                    created_at: ts(0),
                    policy: Policy {
                        retire: if *when_idle { RetirePolicy::WhenIdle } else { RetirePolicy::AtDeadline },
                        idle: Duration::from_secs(*idle_s),
                        on_stall: OnStall::Extend,
                    },
                    schedule: Default::default(),
                    managed: None,
                    versions: versions
                        .iter()
                        .enumerate()
                        .map(|(i, v)| KeyVersion {
                            number: VersionNumber(i as u32 + 1),
                            kid: all.next().unwrap(),
                            secret_hash: SecretHash([0; 32]),
                            fingerprint: Fingerprint([0; 8]),
                            state: v.state,
                            created_at: ts(v.created_s * 1000),
                            deadline: v.deadline_ms.map(ts),
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
                };
                index.upsert(1, &c);
                let seen: Vec<(Kid, Timestamp)> = versions
                    .iter()
                    .zip(&c.versions)
                    .filter_map(|(v, kv)| v.last_used_s.map(|s| (kv.kid, ts(s * 1000))))
                    .collect();
                index.seed_last_used(&seen);
                built.push(c);
            }
            let now = Timestamp::from_unix_millis(now_ms);
            let scan = index.sweep_scan(now, UNUSED_AFTER);
            for c in &built {
                let usage: Vec<(VersionNumber, Timestamp)> = c
                    .versions
                    .iter()
                    .filter_map(|v| index.last_used(&v.kid).map(|t| (v.number, t)))
                    .collect();
                let usage = Usage::new(&usage);
                let settles = !c.apply(Command::Settle, &usage, now).unwrap().effects.is_empty();
                let named = scan.due.iter().any(|e| e.reference() == c.reference());
                prop_assert_eq!(named, settles, "{}", c.reference());
                prop_assert_eq!(named, consumer_is_due(c, &usage, now));
            }
            // Each consumer named once.
            let mut names: Vec<&str> = scan.due.iter().map(|e| e.reference()).collect();
            names.sort_unstable();
            names.dedup();
            prop_assert_eq!(names.len(), scan.due.len());
        }
    }

    #[test]
    fn created_at_rounding_is_never_early() {
        for ms in [0i64, 1, 999, 1000, 1001, 12_345] {
            let r = Record {
                created_s: ts_to_secs(Timestamp::from_unix_millis(ms)),
                state: StoredState::Retiring,
                ..record(1)
            };
            assert!(r.due_facts(0, true).created_at.unix_millis() >= ms);
            assert!(r.due_facts(0, true).created_at.unix_millis() < ms + 1000);
        }
    }
}
