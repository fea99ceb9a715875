//! The in-memory verification index: every key version, looked up by kid on the hot path.
//!
//! Architecture invariants:
//! - Verification reads only this structure; it never waits on the database.
//! - Readers take one shard's read lock; writers are serialized by `write_lock` and replace a
//!   consumer's records shard by shard. A write carries the consumer's store revision and an
//!   older revision never overwrites a newer one, so concurrent admin requests cannot leave the
//!   index behind the store.
//! - Memory: a `Vec<Record>` per shard plus a `hashbrown::HashTable<u32>` of positions (SPEC §12:
//!   a `HashMap` keyed by hash costs ≈ 220 B/key at 1M, a vector plus an index table ≈ 80).
//!   Consumer data is shared by all its versions through one `Arc`.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hashbrown::HashTable;
use keyroll_core::{
    Consumer, ConsumerFacts, Decision, Fingerprint, Kid, Policy, SecretHash, StoredState,
    Timestamp, VersionNumber, VersionView, judge, shown_deadline,
};
use parking_lot::{Mutex, RwLock};

const SHARDS: usize = 64;

/// What all versions of one consumer share.
#[derive(Debug)]
pub struct ConsumerEntry {
    /// Store revision this entry was built from.
    pub revision: i64,
    /// `ENV/NAME`, kept whole: it is what responses and log lines carry, so the hot path
    /// never formats it, and one string costs less memory than two.
    reference: Box<str>,
    /// Granted scopes.
    pub scopes: Box<[Box<str>]>,
    /// Switched off.
    pub disabled: bool,
    /// Retirement settings (the stall rule is decided on the hot path), packed: with a full
    /// `Policy` (a `Duration` inside) the entry outgrew one cache line and every allowed
    /// verification paid a second miss (measured: 299 → 580 ns in the 1M benchmark).
    idle_s: u32,
    retire: keyroll_core::RetirePolicy,
    on_stall: keyroll_core::OnStall,
}

impl ConsumerEntry {
    /// `ENV/NAME`.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Its retirement settings.
    #[inline]
    pub fn policy(&self) -> Policy {
        Policy {
            retire: self.retire,
            idle: Duration::from_secs(u64::from(self.idle_s)),
            on_stall: self.on_stall,
        }
    }

    /// The environment.
    pub fn environment(&self) -> &str {
        self.reference.split_once('/').map_or("", |(env, _)| env)
    }
}

/// One key version as the hot path needs it.
#[derive(Debug)]
struct Record {
    kid: Kid,
    secret_hash: SecretHash,
    fingerprint: Fingerprint,
    version: u32,
    /// 0 when not replaced.
    replaced_by: u32,
    state: StoredState,
    /// Unix millis; `i64::MAX` for none. While retiring: the deadline; once retired: when.
    deadline: i64,
    expires_at: i64,
    /// Retiring: since when (the replacing version's issue time); revoked: when; active: when
    /// issued.
    changed_at: i64,
    /// Last allowed use, unix seconds (0: never). Written on the hot path without a write lock:
    /// the stall rule needs it at the deadline, and seconds are precise enough for `idle`.
    last_used: AtomicU32,
    /// The stall extension, seconds.
    grace_s: u32,
    enforced: bool,
    extended: bool,
    unused_reported: bool,
    consumer: Arc<ConsumerEntry>,
}

/// What one sweep pass found.
#[derive(Debug, Default)]
pub struct SweepScan {
    /// Consumers to settle.
    pub due: Vec<Arc<ConsumerEntry>>,
    /// Per environment, retiring versions seen within their idle window.
    pub retiring_in_use: Vec<(String, u64)>,
}

fn secs_to_ts(secs: u32) -> Option<Timestamp> {
    (secs != 0).then(|| Timestamp::from_unix_millis(i64::from(secs) * 1000))
}

/// Rounded *up*: a last use kept in whole seconds must never look older than it was, or the
/// idle rule could retire a version still in use (a use at 12.9 s stored as 12 s would look
/// 0.9 s idler than it is).
fn ts_to_secs(ts: Timestamp) -> u32 {
    u32::try_from((ts.unix_millis() + 999).div_euclid(1000)).unwrap_or(u32::MAX)
}

impl Record {
    fn view(&self) -> VersionView {
        VersionView {
            state: self.state,
            deadline: opt_ts(self.deadline),
            expires_at: opt_ts(self.expires_at),
            grace: Duration::from_secs(u64::from(self.grace_s)),
            extended: self.extended,
            enforced: self.enforced,
            last_used: secs_to_ts(self.last_used.load(Ordering::Relaxed)),
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    records: Vec<Record>,
    positions: HashTable<u32>,
    /// Revocation reasons by record position: rare, so kept out of every record. The std map:
    /// hashbrown is built without its default hasher (only `HashTable` is used from it), so a
    /// hashbrown `HashMap` compiled only when another crate of the build switched that on.
    revoke_reasons: std::collections::HashMap<u32, Box<str>>,
}

/// What a lookup found for a kid whose secret matched: enough to decide, log and answer.
#[derive(Debug, Clone)]
pub struct Found {
    /// The decision at `now`.
    pub decision: Decision,
    /// The version.
    pub version: VersionNumber,
    /// The fingerprint of the (whole, valid) key.
    pub fingerprint: Fingerprint,
    /// The consumer.
    pub consumer: Arc<ConsumerEntry>,
    /// The version that replaced this one.
    pub replaced_by: Option<VersionNumber>,
    /// Deadline / retirement time.
    pub deadline: Option<Timestamp>,
    /// Hard expiry.
    pub expires_at: Option<Timestamp>,
    /// Retiring since / revoked at.
    pub changed_at: Option<Timestamp>,
    /// Revocation reason.
    pub revoke_reason: Option<Box<str>>,
}

/// The outcome of a lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// No version has this kid.
    UnknownKid,
    /// The kid exists, the secret does not match. Carries the owner for the log only.
    SecretMismatch {
        /// The consumer the kid belongs to.
        consumer: Arc<ConsumerEntry>,
        /// The version.
        version: VersionNumber,
    },
    /// The secret matched, but the key's prefix names another environment than the one stored
    /// for its consumer: the prefix was rewritten (its CRC32 check is public). Never allowed,
    /// whatever the request requires.
    PrefixMismatch {
        /// The consumer the kid belongs to.
        consumer: Arc<ConsumerEntry>,
        /// The version.
        version: VersionNumber,
    },
    /// The secret matched, but the stored consumer belongs to another environment than the
    /// request requires.
    WrongEnvironment {
        /// The consumer the kid belongs to.
        consumer: Arc<ConsumerEntry>,
        /// The version.
        version: VersionNumber,
    },
    /// Judged.
    Found(Found),
}

/// Whether an allowed lookup counts as the consumer using its key (SPEC §6). An operator's own
/// check (`keyroll verify`, a monitoring probe) must not keep an old version "in use" and so
/// stall its rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// Real traffic: an allowed lookup records the last use.
    CountsAsUse,
    /// An operator's check: decided and logged, but not counted as use.
    OperatorCheck,
}

/// What a lookup is asked: the key's parts and what the request requires.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a, R> {
    /// The kid.
    pub kid: &'a Kid,
    /// SHA-256 of the presented secret.
    pub secret: &'a SecretHash,
    /// The environment written in the presented key's prefix.
    pub key_environment: &'a str,
    /// The environment the request must belong to, if any.
    pub required_environment: Option<&'a str>,
    /// Scopes the key must have been granted.
    pub required_scopes: &'a [R],
    /// Whether an allowed answer counts as use.
    pub recording: Recording,
}

/// All key versions of the installation, in memory.
#[derive(Debug)]
pub struct Index {
    shards: Box<[RwLock<Shard>]>,
    hasher: foldhash_like::Fixed,
    write_lock: Mutex<()>,
    versions: AtomicU64,
}

fn opt_ts(ms: i64) -> Option<Timestamp> {
    (ms != i64::MAX).then(|| Timestamp::from_unix_millis(ms))
}

fn ms(ts: Option<Timestamp>) -> i64 {
    ts.map_or(i64::MAX, Timestamp::unix_millis)
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: foldhash_like::Fixed,
            write_lock: Mutex::new(()),
            versions: AtomicU64::new(0),
        }
    }

    /// Number of key versions loaded.
    pub fn len(&self) -> u64 {
        self.versions.load(Ordering::Relaxed)
    }

    /// Whether nothing is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hash(&self, kid: &Kid) -> u64 {
        self.hasher.hash_one(kid)
    }

    fn shard_of(hash: u64) -> usize {
        // The table uses the low bits; take the shard from the high ones.
        (hash >> 58) as usize % SHARDS
    }

    /// The hot path: find the version a kid names, compare the secret, check the environment
    /// against the one stored for the consumer, judge at `now`.
    ///
    /// The environment checks come only after the secret matched: before that nothing is known
    /// about the key's owner, and the prefix alone is not evidence (SPEC §2).
    #[inline]
    pub fn lookup<R: AsRef<str>>(&self, q: &Query<'_, R>, now: Timestamp) -> Lookup {
        let kid = q.kid;
        let hash = self.hash(kid);
        let shard = self.shards[Self::shard_of(hash)].read();
        let Some(&pos) = shard
            .positions
            .find(hash, |&p| shard.records[p as usize].kid == *kid)
        else {
            return Lookup::UnknownKid;
        };
        let r = &shard.records[pos as usize];
        if !r.secret_hash.matches(q.secret) {
            return Lookup::SecretMismatch {
                consumer: Arc::clone(&r.consumer),
                version: VersionNumber(r.version),
            };
        }
        let stored_environment = r.consumer.environment();
        if stored_environment != q.key_environment {
            return Lookup::PrefixMismatch {
                consumer: Arc::clone(&r.consumer),
                version: VersionNumber(r.version),
            };
        }
        if q.required_environment
            .is_some_and(|e| e != stored_environment)
        {
            return Lookup::WrongEnvironment {
                consumer: Arc::clone(&r.consumer),
                version: VersionNumber(r.version),
            };
        }
        let view = r.view();
        let consumer = ConsumerFacts {
            disabled: r.consumer.disabled,
            scopes: &r.consumer.scopes,
            policy: r.consumer.policy(),
        };
        let decision = judge(&view, &consumer, q.required_scopes, now);
        if decision.code.allowed() && q.recording == Recording::CountsAsUse {
            // Usage facts for the lifecycle: one relaxed store, only when the second changes.
            let secs = ts_to_secs(now);
            if r.last_used.load(Ordering::Relaxed) != secs {
                r.last_used.store(secs, Ordering::Relaxed);
            }
        }
        let revoke_reason = match r.state {
            StoredState::Revoked => shard.revoke_reasons.get(&pos).cloned(),
            _ => None,
        };
        Lookup::Found(Found {
            decision,
            version: VersionNumber(r.version),
            fingerprint: r.fingerprint,
            consumer: Arc::clone(&r.consumer),
            replaced_by: (r.replaced_by != 0).then_some(VersionNumber(r.replaced_by)),
            deadline: shown_deadline(&view, &r.consumer.policy(), now),
            expires_at: view.expires_at,
            changed_at: opt_ts(r.changed_at),
            revoke_reason,
        })
    }

    /// Puts a consumer's current state (after a committed write) into the index. Ignored when
    /// the index already holds a newer revision of it.
    pub fn upsert(&self, revision: i64, consumer: &Consumer) {
        let _writer = self.write_lock.lock();
        if let Some(first) = consumer.versions.first() {
            let current = self.consumer_revision(&first.kid);
            if current.is_some_and(|r| r > revision) {
                return;
            }
        }
        self.upsert_unlocked(revision, consumer);
    }

    /// Loads many consumers at start (one writer, no revision checks: the index is empty).
    pub fn load<'a>(&self, consumers: impl IntoIterator<Item = (i64, &'a Consumer)>) {
        let _writer = self.write_lock.lock();
        for (revision, consumer) in consumers {
            self.upsert_unlocked(revision, consumer);
        }
        let hasher = &self.hasher;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let Shard {
                records, positions, ..
            } = &mut *shard;
            records.shrink_to_fit();
            positions.shrink_to_fit(|&q| hasher.hash_one(records[q as usize].kid));
        }
    }

    fn consumer_revision(&self, kid: &Kid) -> Option<i64> {
        let hash = self.hash(kid);
        let shard = self.shards[Self::shard_of(hash)].read();
        shard
            .positions
            .find(hash, |&p| shard.records[p as usize].kid == *kid)
            .map(|&p| shard.records[p as usize].consumer.revision)
    }

    /// One pass over every record for the sweeper (no per-consumer bookkeeping: a scan of 1M
    /// records costs a few milliseconds, while a map of consumers needing attention cost ≈ 120
    /// bytes per version in the middle of a rotation). Returns the consumers whose lifecycle may
    /// have something to write down at `now` — a retiring version past its deadline or quiet for
    /// its consumer's idle window, or an active version nobody used for `unused_after` — and,
    /// per environment, how many retiring versions were seen within their idle window.
    pub fn sweep_scan(&self, now: Timestamp, unused_after: Duration) -> SweepScan {
        let now_ms = now.unix_millis();
        let now_s = ts_to_secs(now);
        let mut due: Vec<Arc<ConsumerEntry>> = Vec::new();
        let mut in_use: Vec<(String, u64)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            for r in &shard.records {
                let last = r.last_used.load(Ordering::Relaxed);
                let idle_s = r.consumer.idle_s;
                let is_due = match r.state {
                    StoredState::Retiring => {
                        if last != 0 && now_s.saturating_sub(last) < idle_s {
                            let env = r.consumer.environment();
                            match in_use.iter_mut().find(|(e, _)| e == env) {
                                Some((_, n)) => *n += 1,
                                None => in_use.push((env.to_owned(), 1)),
                            }
                        }
                        now_ms >= r.deadline
                            || (r.consumer.retire == keyroll_core::RetirePolicy::WhenIdle
                                && !r.enforced
                                && (last == 0 || now_s.saturating_sub(last) >= idle_s))
                    }
                    StoredState::Active => {
                        !r.unused_reported
                            && last == 0
                            && now_ms.saturating_sub(r.changed_at)
                                >= i64::try_from(unused_after.as_millis()).unwrap_or(i64::MAX)
                    }
                    _ => false,
                };
                if is_due && !due.iter().any(|c| Arc::ptr_eq(c, &r.consumer)) {
                    due.push(Arc::clone(&r.consumer));
                }
            }
        }
        SweepScan {
            due,
            retiring_in_use: in_use,
        }
    }

    fn upsert_unlocked(&self, revision: i64, consumer: &Consumer) {
        let entry = Arc::new(ConsumerEntry {
            revision,
            reference: consumer.reference().into_boxed_str(),
            scopes: consumer.scopes.iter().map(|s| s.as_str().into()).collect(),
            disabled: consumer.disabled,
            idle_s: u32::try_from(consumer.policy.idle.as_secs()).unwrap_or(u32::MAX),
            retire: consumer.policy.retire,
            on_stall: consumer.policy.on_stall,
        });
        for v in &consumer.versions {
            let replaced_by = v.replaced_by.map(|n| n.0).unwrap_or(0);
            let changed_at = match v.state {
                StoredState::Revoked => v.revoked_at,
                // For an active version: when it was issued (the unused-version check).
                StoredState::Active => Some(v.created_at),
                _ => v
                    .replaced_by
                    .and_then(|n| consumer.version(n))
                    .map(|replacement| replacement.created_at),
            };
            let mut record = Record {
                kid: v.kid,
                secret_hash: v.secret_hash,
                fingerprint: v.fingerprint,
                version: v.number.0,
                replaced_by,
                state: v.state,
                deadline: ms(v.retirement_time()),
                expires_at: ms(v.expires_at),
                changed_at: ms(changed_at),
                last_used: AtomicU32::new(0),
                grace_s: u32::try_from(v.grace.as_secs()).unwrap_or(u32::MAX),
                enforced: v.enforced,
                extended: v.extended,
                unused_reported: v.unused_reported,
                consumer: Arc::clone(&entry),
            };
            let hash = self.hash(&v.kid);
            let mut shard = self.shards[Self::shard_of(hash)].write();
            let Shard {
                records,
                positions,
                revoke_reasons,
            } = &mut *shard;
            let p = match positions.find(hash, |&p| records[p as usize].kid == v.kid) {
                Some(&p) => {
                    // Usage is not the store's to overwrite: keep what traffic already told us.
                    let seen = records[p as usize].last_used.load(Ordering::Relaxed);
                    *record.last_used.get_mut() = seen;
                    records[p as usize] = record;
                    p
                }
                None => {
                    let p = u32::try_from(records.len()).unwrap_or(u32::MAX);
                    records.push(record);
                    let hasher = &self.hasher;
                    positions.insert_unique(hash, p, |&q| hasher.hash_one(records[q as usize].kid));
                    self.versions.fetch_add(1, Ordering::Relaxed);
                    p
                }
            };
            if let Some(reason) = &v.revoke_reason {
                revoke_reasons.insert(p, reason.as_str().into());
            }
        }
    }

    /// When a version was last seen in allowed traffic (by this node, or as loaded at start).
    pub fn last_used(&self, kid: &Kid) -> Option<Timestamp> {
        let hash = self.hash(kid);
        let shard = self.shards[Self::shard_of(hash)].read();
        shard
            .positions
            .find(hash, |&p| shard.records[p as usize].kid == *kid)
            .and_then(|&p| secs_to_ts(shard.records[p as usize].last_used.load(Ordering::Relaxed)))
    }

    /// The consumer a kid belongs to.
    pub fn consumer_of(&self, kid: &Kid) -> Option<Arc<ConsumerEntry>> {
        let hash = self.hash(kid);
        let shard = self.shards[Self::shard_of(hash)].read();
        shard
            .positions
            .find(hash, |&p| shard.records[p as usize].kid == *kid)
            .map(|&p| Arc::clone(&shard.records[p as usize].consumer))
    }

    /// Seeds last-use times (at start, from the store); a later time already known wins.
    pub fn seed_last_used(&self, seen: &[(Kid, Timestamp)]) {
        for (kid, at) in seen {
            let hash = self.hash(kid);
            let shard = self.shards[Self::shard_of(hash)].read();
            if let Some(&p) = shard
                .positions
                .find(hash, |&p| shard.records[p as usize].kid == *kid)
            {
                shard.records[p as usize]
                    .last_used
                    .fetch_max(ts_to_secs(*at), Ordering::Relaxed);
            }
        }
    }

    /// Heap bytes held by the index's own tables (records and position tables), for the memory
    /// benchmark and `/readyz`. Consumer entries are counted by the benchmark's allocator.
    pub fn table_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.read();
                s.records.capacity() * size_of::<Record>()
                    + s.positions.capacity() * (size_of::<u32>() + 1)
            })
            .sum()
    }
}

/// A fixed, fast, non-cryptographic hasher for kids. Kids are uniformly random base62 chosen by
/// keyroll, not by callers, so flooding the table with collisions is not possible and a keyed
/// SipHash would only cost time on the hot path.
mod foldhash_like {
    use std::hash::{BuildHasher, Hasher};

    #[derive(Debug, Clone, Copy, Default)]
    pub struct Fixed;

    impl BuildHasher for Fixed {
        type Hasher = KidHasher;
        fn build_hasher(&self) -> KidHasher {
            KidHasher(0x9E37_79B9_7F4A_7C15)
        }
    }

    #[derive(Debug)]
    pub struct KidHasher(u64);

    impl Hasher for KidHasher {
        fn finish(&self) -> u64 {
            // Final avalanche (splitmix64) so both low (table) and high (shard) bits are mixed.
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn write(&mut self, bytes: &[u8]) {
            for chunk in bytes.chunks(8) {
                let mut buf = [0u8; 8];
                buf[..chunk.len()].copy_from_slice(chunk);
                self.0 = (self.0 ^ u64::from_le_bytes(buf))
                    .wrapping_mul(0x100_0000_01B3)
                    .rotate_left(23);
            }
        }
    }
}

/// What the index knows about one key version, found by kid alone (`GET /v1/keys/{kid}`, used
/// by `keyroll scan`): no secret is compared, so this never counts as use of the key.
#[derive(Debug, Clone)]
pub struct KeyDescription {
    /// The key id.
    pub kid: Kid,
    /// The fingerprint of the issued key.
    pub fingerprint: Fingerprint,
    /// The consumer.
    pub consumer: Arc<ConsumerEntry>,
    /// The version.
    pub version: VersionNumber,
    /// The state at the `now` asked about, as verification would judge it.
    pub state: keyroll_core::State,
    /// Retiring: when it stops working (stall extension included); retired: when it did.
    pub deadline: Option<Timestamp>,
    /// Hard expiry.
    pub expires_at: Option<Timestamp>,
    /// The version that replaced it.
    pub replaced_by: Option<VersionNumber>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// Why it was revoked.
    pub revoke_reason: Option<Box<str>>,
    /// Last allowed use known to this node.
    pub last_used: Option<Timestamp>,
}

// A separate block so the by-kid description stays next to the records it reads (their fields
// are private to this module) without touching the hot path above.
impl Index {
    /// Describes the version a kid names, judged at `now` exactly as [`Index::lookup`] judges an
    /// allowed secret (same view, same `judge`), so a scan and a verification agree on the state.
    pub fn describe(&self, kid: &Kid, now: Timestamp) -> Option<KeyDescription> {
        let hash = self.hash(kid);
        let shard = self.shards[Self::shard_of(hash)].read();
        let &pos = shard
            .positions
            .find(hash, |&p| shard.records[p as usize].kid == *kid)?;
        let r = &shard.records[pos as usize];
        let view = r.view();
        let consumer = ConsumerFacts {
            disabled: r.consumer.disabled,
            scopes: &r.consumer.scopes,
            policy: r.consumer.policy(),
        };
        // No required scopes: the state is decided before scopes and the consumer switch, and
        // `judge` reports it whatever the code.
        let decision = judge::<_, &str>(&view, &consumer, &[], now);
        let revoked = r.state == StoredState::Revoked;
        Some(KeyDescription {
            kid: r.kid,
            fingerprint: r.fingerprint,
            consumer: Arc::clone(&r.consumer),
            version: VersionNumber(r.version),
            state: decision.state,
            deadline: shown_deadline(&view, &r.consumer.policy(), now),
            expires_at: view.expires_at,
            replaced_by: (r.replaced_by != 0).then_some(VersionNumber(r.replaced_by)),
            revoked_at: if revoked { opt_ts(r.changed_at) } else { None },
            revoke_reason: if revoked {
                shard.revoke_reasons.get(&pos).cloned()
            } else {
                None
            },
            last_used: view.last_used,
        })
    }
}

// Counts for `/metrics` (`keyroll_key_versions`), in their own block for the same reason as
// `describe`: they read the private records, and the hot path above stays untouched.
impl Index {
    /// Key versions per environment and state at `now`, as verification would judge them
    /// (`active`, `retiring`, `retired`, `revoked`, `expired`). Walks every record under each
    /// shard's read lock in turn; called per scrape, not per request.
    pub fn count_by_environment_and_state(
        &self,
        now: Timestamp,
    ) -> Vec<(String, &'static str, u64)> {
        use keyroll_core::State;
        const STATES: [State; 5] = [
            State::Active,
            State::Retiring,
            State::Retired,
            State::Revoked,
            State::Expired,
        ];
        // Few environments: a vector searched linearly, with the last hit tried first because
        // consecutive records often share a consumer.
        let mut counts: Vec<(String, [u64; STATES.len()])> = Vec::new();
        let mut last = 0usize;
        for shard in self.shards.iter() {
            let shard = shard.read();
            for r in &shard.records {
                let state = keyroll_core::effective_state(&r.view(), &r.consumer.policy(), now);
                let env = r.consumer.environment();
                let i = match counts.get(last) {
                    Some((e, _)) if e == env => last,
                    _ => match counts.iter().position(|(e, _)| e == env) {
                        Some(i) => i,
                        None => {
                            counts.push((env.to_owned(), [0; STATES.len()]));
                            counts.len() - 1
                        }
                    },
                };
                last = i;
                if let (Some((_, c)), Some(s)) =
                    (counts.get_mut(i), STATES.iter().position(|s| *s == state))
                {
                    c[s] += 1;
                }
            }
        }
        counts
            .into_iter()
            .flat_map(|(env, c)| {
                STATES
                    .iter()
                    .zip(c)
                    .filter(|(_, n)| *n > 0)
                    .map(move |(s, n)| (env.clone(), s.as_str(), n))
            })
            .collect()
    }
}

#[cfg(test)]
mod last_use_tests {
    use super::*;

    #[test]
    fn last_use_in_seconds_never_looks_older_than_it_was() {
        let at = Timestamp::from_unix_millis;
        assert_eq!(ts_to_secs(at(12_900)), 13);
        assert_eq!(ts_to_secs(at(13_000)), 13);
        assert!(secs_to_ts(ts_to_secs(at(12_001))).unwrap() >= at(12_001));
    }
}
