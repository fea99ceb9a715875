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
use keyroll_core::lifecycle::{DueFacts, is_due};
use keyroll_core::{
    Consumer, ConsumerFacts, Decision, Fingerprint, Kid, ParsedKey, Policy, SecretHash,
    StoredState, Timestamp, VersionNumber, VersionView, judge, shown_deadline,
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

    /// Whether this consumer's stored environment is `env`: a prefix comparison of the stored
    /// reference (`ENV/NAME`, and an environment name never contains `/`), so the hot path
    /// neither searches for the `/` nor trusts anything but the stored consumer.
    #[inline]
    pub fn in_environment(&self, env: &str) -> bool {
        let r = self.reference.as_bytes();
        r.get(env.len()) == Some(&b'/') && r.starts_with(env.as_bytes())
    }
}

/// Record flag bits.
const ENFORCED: u8 = 1;
const EXTENDED: u8 = 2;
const UNUSED_REPORTED: u8 = 4;
/// The consumer's current version (its newest active one): the one the unused rule watches.
const CURRENT: u8 = 8;

/// One key version as the hot path needs it, less what its [`Slot`] holds (kid, consumer).
#[derive(Debug)]
struct Record {
    secret_hash: SecretHash,
    fingerprint: Fingerprint,
    /// Unix millis; `i64::MAX` for none. While retiring: the deadline; once retired: when.
    deadline: i64,
    expires_at: i64,
    /// Retiring: since when (the replacing version's issue time); revoked: when; active: when
    /// issued.
    changed_at: i64,
    version: u32,
    /// 0 when not replaced.
    replaced_by: u32,
    /// Last allowed use, unix seconds (0: never). Written on the hot path without a write lock:
    /// the stall rule needs it at the deadline, and seconds are precise enough for `idle`.
    last_used: AtomicU32,
    /// The stall extension, seconds.
    grace_s: u32,
    /// When it was issued, unix seconds rounded up (the `when-idle` rule of a version never
    /// used counts quiet time from its issue; rounding up makes the sweep at most a second
    /// late, never early).
    created_s: u32,
    state: StoredState,
    /// `ENFORCED | EXTENDED | UNUSED_REPORTED | CURRENT`.
    flags: u8,
}

/// One probe-table entry: what a lookup needs to find the version and start fetching both its
/// record and its consumer.
#[derive(Debug)]
struct Slot {
    consumer: Arc<ConsumerEntry>,
    kid: Kid,
    /// Position of the record in the shard's `records`.
    pos: u32,
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
    #[inline]
    fn flag(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    #[inline]
    fn view(&self) -> VersionView {
        VersionView {
            state: self.state,
            deadline: opt_ts(self.deadline),
            expires_at: opt_ts(self.expires_at),
            grace: Duration::from_secs(u64::from(self.grace_s)),
            extended: self.flag(EXTENDED),
            enforced: self.flag(ENFORCED),
            last_used: secs_to_ts(self.last_used.load(Ordering::Relaxed)),
        }
    }

    /// The facts the sweeper's due rule decides from; `newer_seen` is the consumer's.
    fn due_facts(&self, last_used: u32, newer_seen: bool) -> DueFacts {
        DueFacts {
            state: self.state,
            deadline: opt_ts(self.deadline),
            created_at: match self.state {
                // Exact for the unused rule: an active version's `changed_at` is its issue.
                StoredState::Active => Timestamp::from_unix_millis(self.changed_at),
                _ => Timestamp::from_unix_millis(i64::from(self.created_s) * 1000),
            },
            enforced: self.flag(ENFORCED),
            unused_reported: self.flag(UNUSED_REPORTED),
            last_used: secs_to_ts(last_used),
            newer_seen,
            current: self.flag(CURRENT),
        }
    }
}

/// Where a probe ended.
enum Probe {
    /// The slot holding the kid.
    Found(usize),
    /// The kid is absent (the probe met an empty slot, or an occupant nearer its own home
    /// than the kid would be).
    Vacant,
}

#[derive(Debug, Default)]
struct Shard {
    records: Vec<Record>,
    /// Open addressing with linear probing, Robin Hood ordered: along a run, no slot sits
    /// nearer its home than the slot before it minus one, so a probe for an absent kid stops
    /// after about as many slots as a hit takes (plain linear probing at 0.85 full scans ≈ 23
    /// slots for every unknown kid). `None` is empty; at least one slot always is (load factor
    /// ≤ 0.9), so every probe ends. Nothing is ever removed, so no tombstones.
    slots: Vec<Option<Slot>>,
    /// Revocation reasons by record position: rare, so kept out of every record. The std map:
    /// hashbrown is built without its default hasher (only `HashTable` is used from it), so a
    /// hashbrown `HashMap` compiled only when another crate of the build switched that on.
    revoke_reasons: std::collections::HashMap<u32, Box<str>>,
}

/// The slot a hash starts probing at: the high bits scaled to the table (a multiply instead of
/// a division, and the table need not be a power of two, which is what lets it stay at 0.85
/// full instead of anywhere between 0.44 and 0.875).
#[inline]
fn home(hash: u64, cap: usize) -> usize {
    ((u128::from(hash) * cap as u128) >> 64) as usize
}

/// Slots for `n` records at start: 0.85 full.
fn sized_for(n: usize) -> usize {
    n + n * 3 / 17 + 1
}

impl Shard {
    /// How far slot `i`'s occupant sits from its home (the kid is inline: no other memory).
    #[inline]
    fn displacement(i: usize, s: &Slot, cap: usize) -> usize {
        let h = home(kid_hash(&s.kid), cap);
        if i >= h { i - h } else { i + cap - h }
    }

    #[inline]
    fn probe(&self, hash: u64, kid: &Kid) -> Probe {
        let cap = self.slots.len();
        if cap == 0 {
            return Probe::Vacant;
        }
        let mut i = home(hash, cap);
        let mut d = 0;
        loop {
            match self.slots.get(i) {
                Some(Some(s)) if s.kid == *kid => return Probe::Found(i),
                // A kid this far from home would have displaced this occupant (never at its
                // home slot: no occupant is nearer than that, so no hash to compute there).
                Some(Some(s)) if d > 0 && Self::displacement(i, s, cap) < d => {
                    return Probe::Vacant;
                }
                Some(Some(_)) => {}
                _ => return Probe::Vacant,
            }
            i += 1;
            if i == cap {
                i = 0;
            }
            d += 1;
        }
    }

    #[inline]
    fn find(&self, hash: u64, kid: &Kid) -> Option<&Slot> {
        match self.probe(hash, kid) {
            Probe::Found(i) => self.slots.get(i)?.as_ref(),
            Probe::Vacant => None,
        }
    }

    /// A kid's slot and record.
    #[inline]
    fn get(&self, hash: u64, kid: &Kid) -> Option<(&Slot, &Record)> {
        let slot = self.find(hash, kid)?;
        Some((slot, self.records.get(slot.pos as usize)?))
    }

    /// Rebuilds the probe table with `cap` slots (more than there are records).
    fn resize(&mut self, cap: usize) {
        let cap = cap.max(self.records.len() + 1);
        let old = std::mem::take(&mut self.slots);
        self.slots.resize_with(cap, || None);
        for slot in old.into_iter().flatten() {
            self.place(kid_hash(&slot.kid), slot);
        }
    }

    /// Adds a slot for a kid not in the table.
    fn insert_new(&mut self, hash: u64, slot: Slot) {
        // At most 0.9 full: longer runs would cost every probe more than the memory saved.
        if (self.records.len() + 1) * 10 > self.slots.len() * 9 {
            self.resize((self.slots.len() * 3 / 2).max(16));
        }
        self.place(hash, slot);
    }

    /// Robin Hood insertion: walk from home; where an occupant sits nearer its home than the
    /// one being placed, they swap and the occupant walks on. Needs an empty slot somewhere.
    fn place(&mut self, hash: u64, slot: Slot) {
        let cap = self.slots.len();
        if cap == 0 {
            return;
        }
        let mut carried = slot;
        let mut i = home(hash, cap);
        let mut d = 0;
        for _ in 0..cap {
            match self.slots.get_mut(i) {
                Some(empty @ None) => {
                    *empty = Some(carried);
                    return;
                }
                Some(Some(occupant)) => {
                    let od = Self::displacement(i, occupant, cap);
                    if od < d {
                        std::mem::swap(occupant, &mut carried);
                        d = od;
                    }
                }
                None => return,
            }
            i += 1;
            if i == cap {
                i = 0;
            }
            d += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Slot, &Record)> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|s| Some((s, self.records.get(s.pos as usize)?)))
    }
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

/// splitmix64's finalizer: both the low bits (shard) and the high bits (slot) are mixed.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fixed, fast, non-cryptographic hash of a kid. Kids are uniformly random base62 chosen by
/// keyroll, not by callers, so flooding the table with collisions is not possible and a keyed
/// SipHash would only cost time on the hot path.
#[inline]
fn kid_hash(kid: &Kid) -> u64 {
    let b = kid.as_bytes();
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 4];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    mix(u64::from_le_bytes(lo) ^ u64::from(u32::from_le_bytes(hi)).rotate_left(29))
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

#[cfg(test)]
mod probe_tests {
    //! The probe table: kids that start probing at the same slot are all found, a kid that is
    //! absent is not, also across the end of the table; and the sweep settles exactly the
    //! consumers `Settle` has something to write down for.
    use super::*;
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
