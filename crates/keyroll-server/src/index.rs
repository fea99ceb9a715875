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
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use keyroll_core::{
    Consumer, ConsumerFacts, Decision, Fingerprint, Kid, SecretHash, StoredState, Timestamp,
    VersionFacts, VersionNumber, judge,
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
}

impl ConsumerEntry {
    /// `ENV/NAME`.
    pub fn reference(&self) -> &str {
        &self.reference
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
    /// Retiring: since when (the replacing version's issue time); revoked: when.
    changed_at: i64,
    consumer: Arc<ConsumerEntry>,
}

#[derive(Debug, Default)]
struct Shard {
    records: Vec<Record>,
    positions: HashTable<u32>,
    /// Revocation reasons by record position: rare, so kept out of every record.
    revoke_reasons: hashbrown::HashMap<u32, Box<str>>,
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
    /// Judged.
    Found(Found),
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

    /// The hot path: find the version a kid names, compare the secret, judge at `now`.
    #[inline]
    pub fn lookup<R: AsRef<str>>(
        &self,
        kid: &Kid,
        presented: &SecretHash,
        required_scopes: &[R],
        now: Timestamp,
    ) -> Lookup {
        let hash = self.hash(kid);
        let shard = self.shards[Self::shard_of(hash)].read();
        let Some(&pos) = shard
            .positions
            .find(hash, |&p| shard.records[p as usize].kid == *kid)
        else {
            return Lookup::UnknownKid;
        };
        let r = &shard.records[pos as usize];
        if !r.secret_hash.matches(presented) {
            return Lookup::SecretMismatch {
                consumer: Arc::clone(&r.consumer),
                version: VersionNumber(r.version),
            };
        }
        let facts = VersionFacts {
            version: VersionNumber(r.version),
            state: r.state,
            deadline: opt_ts(r.deadline),
            expires_at: opt_ts(r.expires_at),
        };
        let consumer = ConsumerFacts {
            disabled: r.consumer.disabled,
            scopes: &r.consumer.scopes,
        };
        let decision = judge(&facts, &consumer, required_scopes, now);
        let revoke_reason = match r.state {
            StoredState::Revoked => shard.revoke_reasons.get(&pos).cloned(),
            _ => None,
        };
        Lookup::Found(Found {
            decision,
            version: facts.version,
            fingerprint: r.fingerprint,
            consumer: Arc::clone(&r.consumer),
            replaced_by: (r.replaced_by != 0).then_some(VersionNumber(r.replaced_by)),
            deadline: facts.deadline,
            expires_at: facts.expires_at,
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

    fn upsert_unlocked(&self, revision: i64, consumer: &Consumer) {
        let entry = Arc::new(ConsumerEntry {
            revision,
            reference: consumer.reference().into_boxed_str(),
            scopes: consumer.scopes.iter().map(|s| s.as_str().into()).collect(),
            disabled: consumer.disabled,
        });
        for v in &consumer.versions {
            let replaced_by = v.replaced_by.map(|n| n.0).unwrap_or(0);
            let changed_at = match v.state {
                StoredState::Revoked => v.revoked_at,
                _ => v
                    .replaced_by
                    .and_then(|n| consumer.version(n))
                    .map(|replacement| replacement.created_at),
            };
            let record = Record {
                kid: v.kid,
                secret_hash: v.secret_hash,
                fingerprint: v.fingerprint,
                version: v.number.0,
                replaced_by,
                state: v.state,
                deadline: ms(v.retirement_time()),
                expires_at: ms(v.expires_at),
                changed_at: ms(changed_at),
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
