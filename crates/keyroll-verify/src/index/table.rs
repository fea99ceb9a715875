//! The probe table of one shard and the record layout: what a lookup reads, in the order it
//! reads it. A slot holds the kid, the record's position and the consumer inline, so a lookup
//! touches one slot, then the record and the consumer entry together (both addressed from the
//! slot). Open addressing, linear probing, Robin Hood order; nothing is ever removed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keyroll_core::lifecycle::DueFacts;
use keyroll_core::{Fingerprint, Kid, SecretHash, StoredState, Timestamp, VersionView};

use super::{ConsumerEntry, opt_ts};

/// Record flag bits.
pub(super) const ENFORCED: u8 = 1;
pub(super) const EXTENDED: u8 = 2;
pub(super) const UNUSED_REPORTED: u8 = 4;
/// The consumer's current version (its newest active one): the one the unused rule watches.
pub(super) const CURRENT: u8 = 8;

/// One key version as the hot path needs it, less what its [`Slot`] holds (kid, consumer).
#[derive(Debug)]
pub(super) struct Record {
    pub(super) secret_hash: SecretHash,
    pub(super) fingerprint: Fingerprint,
    /// Unix millis; `i64::MAX` for none. While retiring: the deadline; once retired: when.
    pub(super) deadline: i64,
    pub(super) expires_at: i64,
    /// Retiring: since when (the replacing version's issue time); revoked: when; active: when
    /// issued.
    pub(super) changed_at: i64,
    pub(super) version: u32,
    /// 0 when not replaced.
    pub(super) replaced_by: u32,
    /// Last allowed use, unix seconds (0: never). Written on the hot path without a write lock:
    /// the stall rule needs it at the deadline, and seconds are precise enough for `idle`.
    pub(super) last_used: AtomicU32,
    /// The stall extension, seconds.
    pub(super) grace_s: u32,
    /// When it was issued, unix seconds rounded up (the `when-idle` rule of a version never
    /// used counts quiet time from its issue; rounding up makes the sweep at most a second
    /// late, never early).
    pub(super) created_s: u32,
    pub(super) state: StoredState,
    /// `ENFORCED | EXTENDED | UNUSED_REPORTED | CURRENT`.
    pub(super) flags: u8,
}

/// One probe-table entry: what a lookup needs to find the version and start fetching both its
/// record and its consumer.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) consumer: Arc<ConsumerEntry>,
    pub(super) kid: Kid,
    /// Position of the record in the shard's `records`.
    pub(super) pos: u32,
}

pub(super) fn secs_to_ts(secs: u32) -> Option<Timestamp> {
    (secs != 0).then(|| Timestamp::from_unix_millis(i64::from(secs) * 1000))
}

/// Rounded *up*: a last use kept in whole seconds must never look older than it was, or the
/// idle rule could retire a version still in use (a use at 12.9 s stored as 12 s would look
/// 0.9 s idler than it is).
pub(super) fn ts_to_secs(ts: Timestamp) -> u32 {
    u32::try_from((ts.unix_millis() + 999).div_euclid(1000)).unwrap_or(u32::MAX)
}

impl Record {
    #[inline]
    pub(super) fn flag(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    #[inline]
    pub(super) fn view(&self) -> VersionView {
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
    pub(super) fn due_facts(&self, last_used: u32, newer_seen: bool) -> DueFacts {
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
pub(super) enum Probe {
    /// The slot holding the kid.
    Found(usize),
    /// The kid is absent (the probe met an empty slot, or an occupant nearer its own home
    /// than the kid would be).
    Vacant,
}

#[derive(Debug, Default)]
pub(super) struct Shard {
    pub(super) records: Vec<Record>,
    /// Open addressing with linear probing, Robin Hood ordered: along a run, no slot sits
    /// nearer its home than the slot before it minus one, so a probe for an absent kid stops
    /// after about as many slots as a hit takes (plain linear probing at 0.85 full scans ≈ 23
    /// slots for every unknown kid). `None` is empty; at least one slot always is (load factor
    /// ≤ 0.9), so every probe ends. Nothing is ever removed, so no tombstones.
    pub(super) slots: Vec<Option<Slot>>,
    /// Revocation reasons by record position: rare, so kept out of every record. The std map:
    /// hashbrown is built without its default hasher (only `HashTable` is used from it), so a
    /// hashbrown `HashMap` compiled only when another crate of the build switched that on.
    pub(super) revoke_reasons: std::collections::HashMap<u32, Box<str>>,
}

/// The slot a hash starts probing at: the high bits scaled to the table (a multiply instead of
/// a division, and the table need not be a power of two, which is what lets it stay at 0.85
/// full instead of anywhere between 0.44 and 0.875).
#[inline]
pub(super) fn home(hash: u64, cap: usize) -> usize {
    ((u128::from(hash) * cap as u128) >> 64) as usize
}

/// Slots for `n` records at start: 0.85 full.
pub(super) fn sized_for(n: usize) -> usize {
    n + n * 3 / 17 + 1
}

impl Shard {
    /// How far slot `i`'s occupant sits from its home (the kid is inline: no other memory).
    #[inline]
    pub(super) fn displacement(i: usize, s: &Slot, cap: usize) -> usize {
        let h = home(kid_hash(&s.kid), cap);
        if i >= h { i - h } else { i + cap - h }
    }

    #[inline]
    pub(super) fn probe(&self, hash: u64, kid: &Kid) -> Probe {
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
    pub(super) fn find(&self, hash: u64, kid: &Kid) -> Option<&Slot> {
        match self.probe(hash, kid) {
            Probe::Found(i) => self.slots.get(i)?.as_ref(),
            Probe::Vacant => None,
        }
    }

    /// A kid's slot and record.
    #[inline]
    pub(super) fn get(&self, hash: u64, kid: &Kid) -> Option<(&Slot, &Record)> {
        let slot = self.find(hash, kid)?;
        Some((slot, self.records.get(slot.pos as usize)?))
    }

    /// Rebuilds the probe table with `cap` slots (more than there are records).
    pub(super) fn resize(&mut self, cap: usize) {
        let cap = cap.max(self.records.len() + 1);
        let old = std::mem::take(&mut self.slots);
        self.slots.resize_with(cap, || None);
        for slot in old.into_iter().flatten() {
            self.place(kid_hash(&slot.kid), slot);
        }
    }

    /// Adds a slot for a kid not in the table.
    pub(super) fn insert_new(&mut self, hash: u64, slot: Slot) {
        // At most 0.9 full: longer runs would cost every probe more than the memory saved.
        if (self.records.len() + 1) * 10 > self.slots.len() * 9 {
            self.resize((self.slots.len() * 3 / 2).max(16));
        }
        self.place(hash, slot);
    }

    /// Robin Hood insertion: walk from home; where an occupant sits nearer its home than the
    /// one being placed, they swap and the occupant walks on. Needs an empty slot somewhere.
    pub(super) fn place(&mut self, hash: u64, slot: Slot) {
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

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Slot, &Record)> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|s| Some((s, self.records.get(s.pos as usize)?)))
    }
}

/// splitmix64's finalizer: both the low bits (shard) and the high bits (slot) are mixed.
#[inline]
pub(super) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fixed, fast, non-cryptographic hash of a kid. Kids are uniformly random base62 chosen by
/// keyroll, not by callers, so flooding the table with collisions is not possible and a keyed
/// SipHash would only cost time on the hot path.
#[inline]
pub(super) fn kid_hash(kid: &Kid) -> u64 {
    let b = kid.as_bytes();
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 4];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    mix(u64::from_le_bytes(lo) ^ u64::from(u32::from_le_bytes(hi)).rotate_left(29))
}
