//! The in-memory verification index: every key version, looked up by kid on the hot path.
//!
//! Architecture invariants:
//! - Verification reads only this structure; it never waits on the database.
//! - Readers take one shard's read lock; writers are serialized by `write_lock` and replace a
//!   consumer's records shard by shard. A write carries the consumer's store revision and an
//!   older revision never overwrites a newer one, so concurrent admin requests cannot leave the
//!   index behind the store.
//! - Layout, for the hot path at 1M versions (SPEC §12): per shard, a probe table of [`Slot`]s
//!   (open addressing, linear probing in Robin Hood order) holding the kid, the record's
//!   position and the consumer inline, and a `Vec<Record>` of everything else. A lookup reads
//!   one slot (no control bytes, no second table of positions), then the record and the
//!   consumer entry, whose addresses both come from the slot, so their cache misses overlap
//!   instead of following each other.
//!   (The previous `hashbrown::HashTable<u32>` of positions cost four dependent misses per
//!   allowed lookup: control bytes, position, record, consumer.)
//! - Memory: a record is 88 bytes and a slot 24 at a load factor of at most 0.9 (sized to 0.85
//!   at start), so the tables cost ≈ 116 B/version; consumer data is shared by all its versions
//!   through one `Arc` (SPEC §12 budget: 160 B/version at 1M, everything included).
//! - The last allowed use is written by the lookup that allowed it (one relaxed store, when the
//!   second changes): the stall rule decides from it, so the hot path and the sweeper agree.
//! - Which consumers the sweeper settles is decided by [`keyroll_core::lifecycle::is_due`], the
//!   same rule as `Command::Settle`, from the records' own fields.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hashbrown::HashTable;
use keyroll_core::lifecycle::is_due;
use keyroll_core::{
    Consumer, ConsumerFacts, Decision, Fingerprint, Kid, ParsedKey, Policy, SecretHash,
    StoredState, Timestamp, VersionNumber, judge, shown_deadline,
};
use parking_lot::{Mutex, RwLock};

mod table;

use table::*;

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

    /// Whether this consumer's stored environment is `env`: a prefix comparison of the stored
    /// reference (`ENV/NAME`, and an environment name never contains `/`), so the hot path
    /// neither searches for the `/` nor trusts anything but the stored consumer.
    #[inline]
    pub fn in_environment(&self, env: &str) -> bool {
        let r = self.reference.as_bytes();
        r.get(env.len()) == Some(&b'/') && r.starts_with(env.as_bytes())
    }
}

/// What one sweep pass found.
#[derive(Debug, Default)]
pub struct SweepScan {
    /// Consumers to settle.
    pub due: Vec<Arc<ConsumerEntry>>,
    /// Per environment, retiring versions seen within their idle window.
    pub retiring_in_use: Vec<(String, u64)>,
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

/// The presented secret, as a lookup gets it.
#[derive(Debug, Clone, Copy)]
pub enum Secret<'a> {
    /// Already hashed.
    Hashed(&'a SecretHash),
    /// A parsed key: the lookup hashes its secret once the probe is under way, so the SHA-256
    /// runs while the table's cache misses are outstanding instead of before them (measured
    /// at 1M versions: ≈ 50 ns of the allowed path).
    Key(&'a ParsedKey<'a>),
}

impl Secret<'_> {
    #[inline]
    fn hash(&self) -> SecretHash {
        match self {
            Secret::Hashed(h) => **h,
            Secret::Key(k) => k.secret_hash(),
        }
    }
}

/// What a lookup is asked: the key's parts and what the request requires.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a, R> {
    /// The kid.
    pub kid: &'a Kid,
    /// The presented secret.
    pub secret: Secret<'a>,
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

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // The slot comes from the high bits; take the shard from the low ones.
        &self.shards[hash as usize % SHARDS]
    }

    /// The hot path: find the version a kid names, compare the secret, check the environment
    /// against the one stored for the consumer, judge at `now`.
    ///
    /// The environment checks come only after the secret matched: before that nothing is known
    /// about the key's owner, and the prefix alone is not evidence (SPEC §2).
    #[inline]
    pub fn lookup<R: AsRef<str>>(&self, q: &Query<'_, R>, now: Timestamp) -> Lookup {
        let kid = q.kid;
        let hash = kid_hash(kid);
        let shard = self.shard(hash).read();
        let found = shard.get(hash, kid);
        // Start fetching the record and the consumer entry (both addresses are in the slot)
        // before hashing, so the SHA-256 runs while both misses are outstanding.
        std::hint::black_box(found.map(|(s, r)| (r.flags, s.consumer.disabled)));
        // Hashed whether or not the kid exists: an unknown kid costs the caller the same hash.
        let presented = std::hint::black_box(q.secret.hash());
        let Some((slot, r)) = found else {
            return Lookup::UnknownKid;
        };
        let c = &slot.consumer;
        if !r.secret_hash.matches(&presented) {
            return Lookup::SecretMismatch {
                consumer: Arc::clone(c),
                version: VersionNumber(r.version),
            };
        }
        if !c.in_environment(q.key_environment) {
            return Lookup::PrefixMismatch {
                consumer: Arc::clone(c),
                version: VersionNumber(r.version),
            };
        }
        if q.required_environment.is_some_and(|e| !c.in_environment(e)) {
            return Lookup::WrongEnvironment {
                consumer: Arc::clone(c),
                version: VersionNumber(r.version),
            };
        }
        let view = r.view();
        let policy = c.policy();
        let consumer = ConsumerFacts {
            disabled: c.disabled,
            scopes: &c.scopes,
            policy,
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
            StoredState::Revoked => shard.revoke_reasons.get(&slot.pos).cloned(),
            _ => None,
        };
        Lookup::Found(Found {
            deadline: shown_deadline(&view, &policy, now),
            decision,
            version: VersionNumber(r.version),
            fingerprint: r.fingerprint,
            consumer: Arc::clone(c),
            replaced_by: (r.replaced_by != 0).then_some(VersionNumber(r.replaced_by)),
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
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            shard.records.shrink_to_fit();
            let cap = sized_for(shard.records.len());
            shard.resize(cap);
        }
    }

    fn consumer_revision(&self, kid: &Kid) -> Option<i64> {
        let hash = kid_hash(kid);
        let shard = self.shard(hash).read();
        shard.find(hash, kid).map(|s| s.consumer.revision)
    }

    /// One pass over every record for the sweeper (no per-consumer bookkeeping kept between
    /// passes: a scan of 1M records costs a few milliseconds, while a map of consumers needing
    /// attention cost ≈ 120 bytes per version in the middle of a rotation). Returns the
    /// consumers [`is_due`] says `Settle` has something to write down for at `now` — a retiring
    /// version past its deadline, a `when-idle` one quiet for its consumer's idle window while a
    /// newer version was seen, an active version nobody used for `unused_after` — and, per
    /// environment, how many retiring versions were seen within their idle window.
    ///
    /// Whether a newer version was seen is a fact about the consumer, whose records lie in other
    /// shards: the versions it matters for are collected first, and a second pass (only when
    /// there are any) looks for a newer version with a recorded use.
    pub fn sweep_scan(&self, now: Timestamp, unused_after: Duration) -> SweepScan {
        let now_s = ts_to_secs(now);
        let mut due = PtrSet::default();
        // Consumer → the lowest version that is due once a newer one is seen.
        let mut waiting: HashTable<(Arc<ConsumerEntry>, u32)> = HashTable::new();
        let mut in_use: Vec<(String, u64)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            for (slot, r) in shard.iter() {
                let c = &slot.consumer;
                let last = r.last_used.load(Ordering::Relaxed);
                if r.state == StoredState::Retiring
                    && last != 0
                    && now_s.saturating_sub(last) < c.idle_s
                {
                    let env = c.environment();
                    match in_use.iter_mut().find(|(e, _)| e == env) {
                        Some((_, n)) => *n += 1,
                        None => in_use.push((env.to_owned(), 1)),
                    }
                }
                let policy = c.policy();
                let rule = |newer_seen| {
                    is_due(
                        &r.due_facts(last, newer_seen),
                        policy.retire,
                        policy.idle,
                        unused_after,
                        now,
                    )
                };
                if rule(false) {
                    due.insert(c);
                } else if rule(true) {
                    let h = ptr_hash(c);
                    match waiting.find_mut(h, |(w, _)| Arc::ptr_eq(w, c)) {
                        Some((_, v)) => *v = (*v).min(r.version),
                        None => {
                            waiting
                                .insert_unique(h, (Arc::clone(c), r.version), |(w, _)| ptr_hash(w));
                        }
                    }
                }
            }
        }
        if !waiting.is_empty() {
            for shard in self.shards.iter() {
                let shard = shard.read();
                for (slot, r) in shard.iter() {
                    if r.last_used.load(Ordering::Relaxed) == 0 {
                        continue;
                    }
                    let c = &slot.consumer;
                    if waiting
                        .find(ptr_hash(c), |(w, _)| Arc::ptr_eq(w, c))
                        .is_some_and(|(_, v)| r.version > *v)
                    {
                        due.insert(c);
                    }
                }
            }
        }
        SweepScan {
            due: due.into_vec(),
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
        let current = consumer.active_version().map(|v| v.number);
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
            let flags = [
                (v.enforced, ENFORCED),
                (v.extended, EXTENDED),
                (v.unused_reported, UNUSED_REPORTED),
                (current == Some(v.number), CURRENT),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0u8, |acc, (_, bit)| acc | bit);
            let mut record = Record {
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
                created_s: ts_to_secs(v.created_at),
                flags,
            };
            let hash = kid_hash(&v.kid);
            let mut shard = self.shard(hash).write();
            let p = match shard.probe(hash, &v.kid) {
                Probe::Found(i) => {
                    let Some(Some(slot)) = shard.slots.get_mut(i) else {
                        continue;
                    };
                    slot.consumer = Arc::clone(&entry);
                    let p = slot.pos;
                    let Some(old) = shard.records.get_mut(p as usize) else {
                        continue;
                    };
                    // Usage is not the store's to overwrite: keep what traffic already told us.
                    *record.last_used.get_mut() = old.last_used.load(Ordering::Relaxed);
                    *old = record;
                    p
                }
                Probe::Vacant => {
                    let p = u32::try_from(shard.records.len()).unwrap_or(u32::MAX);
                    shard.records.push(record);
                    shard.insert_new(
                        hash,
                        Slot {
                            consumer: Arc::clone(&entry),
                            kid: v.kid,
                            pos: p,
                        },
                    );
                    self.versions.fetch_add(1, Ordering::Relaxed);
                    p
                }
            };
            if let Some(reason) = &v.revoke_reason {
                shard.revoke_reasons.insert(p, reason.as_str().into());
            }
        }
    }

    /// When a version was last seen in allowed traffic (by this node, or as loaded at start).
    pub fn last_used(&self, kid: &Kid) -> Option<Timestamp> {
        let hash = kid_hash(kid);
        let shard = self.shard(hash).read();
        shard
            .get(hash, kid)
            .and_then(|(_, r)| secs_to_ts(r.last_used.load(Ordering::Relaxed)))
    }

    /// The consumer a kid belongs to.
    pub fn consumer_of(&self, kid: &Kid) -> Option<Arc<ConsumerEntry>> {
        let hash = kid_hash(kid);
        let shard = self.shard(hash).read();
        shard.find(hash, kid).map(|s| Arc::clone(&s.consumer))
    }

    /// Seeds last-use times (at start, from the store); a later time already known wins.
    pub fn seed_last_used(&self, seen: &[(Kid, Timestamp)]) {
        for (kid, at) in seen {
            let hash = kid_hash(kid);
            let shard = self.shard(hash).read();
            if let Some((_, r)) = shard.get(hash, kid) {
                r.last_used.fetch_max(ts_to_secs(*at), Ordering::Relaxed);
            }
        }
    }

    /// Heap bytes held by the index's own tables (records and probe tables), for the memory
    /// benchmark and `/readyz`. Consumer entries are counted by the benchmark's allocator.
    pub fn table_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.read();
                s.records.capacity() * size_of::<Record>()
                    + s.slots.capacity() * size_of::<Option<Slot>>()
            })
            .sum()
    }
}

fn ptr_hash(c: &Arc<ConsumerEntry>) -> u64 {
    mix(Arc::as_ptr(c) as usize as u64)
}

/// A set of consumers by identity, in first-seen order (the sweep's due list: a linear search
/// for duplicates was quadratic once many consumers were due, after a downtime).
#[derive(Default)]
struct PtrSet {
    seen: HashTable<usize>,
    order: Vec<Arc<ConsumerEntry>>,
}

impl PtrSet {
    fn insert(&mut self, c: &Arc<ConsumerEntry>) {
        let h = ptr_hash(c);
        let order = &self.order;
        if self
            .seen
            .find(h, |&i| order.get(i).is_some_and(|o| Arc::ptr_eq(o, c)))
            .is_none()
        {
            self.seen
                .insert_unique(h, self.order.len(), |&i| order.get(i).map_or(0, ptr_hash));
            self.order.push(Arc::clone(c));
        }
    }

    fn into_vec(self) -> Vec<Arc<ConsumerEntry>> {
        self.order
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
        let hash = kid_hash(kid);
        let shard = self.shard(hash).read();
        let (slot, r) = shard.get(hash, kid)?;
        let pos = slot.pos;
        let view = r.view();
        let consumer = ConsumerFacts {
            disabled: slot.consumer.disabled,
            scopes: &slot.consumer.scopes,
            policy: slot.consumer.policy(),
        };
        // No required scopes: the state is decided before scopes and the consumer switch, and
        // `judge` reports it whatever the code.
        let decision = judge::<_, &str>(&view, &consumer, &[], now);
        let revoked = r.state == StoredState::Revoked;
        Some(KeyDescription {
            kid: slot.kid,
            fingerprint: r.fingerprint,
            consumer: Arc::clone(&slot.consumer),
            version: VersionNumber(r.version),
            state: decision.state,
            deadline: shown_deadline(&view, &slot.consumer.policy(), now),
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
            for (slot, r) in shard.iter() {
                let state = keyroll_core::effective_state(&r.view(), &slot.consumer.policy(), now);
                let env = slot.consumer.environment();
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
mod tests;
