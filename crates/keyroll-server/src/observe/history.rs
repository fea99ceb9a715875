//! The last N decisions in memory (SPEC §5), so "what happened to this key in the last hour" is
//! answered without a log search.
//!
//! Two rings: rejections keep most of the room ([`REJECTED_SHARE`]), so a steady stream of
//! allowed traffic never pushes out the rejections an operator is looking for. Each ring is
//! split into shards with their own lock, filled round-robin per thread, so concurrent
//! decisions rarely wait on each other and the union of the shards is (nearly exactly) the last
//! entries of the ring. Recording an allowed decision does not allocate: every field is inline
//! and the consumer is the `Arc` the verification already holds.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use keyroll_core::{DecisionCode, Fingerprint, Kid, State, VersionNumber};
use parking_lot::Mutex;

use keyroll_verify::index::ConsumerEntry;
use keyroll_verify::verify::InlineEnv;

/// Share of the history reserved for rejections, in percent.
pub const REJECTED_SHARE: usize = 80;

const SHARDS: usize = 8;

/// Longest request id kept inline. Ours (`rq_` + 16 hex), UUIDs and W3C trace ids fit; a
/// longer caller-chosen id is kept whole for rejections and cut for allowed decisions, which
/// must not allocate.
pub const INLINE_REQUEST_ID: usize = 64;

/// A request id without allocation when short.
#[derive(Clone)]
pub enum RequestId {
    /// Up to [`INLINE_REQUEST_ID`] bytes.
    Inline {
        /// The bytes (ASCII: request ids are checked at the edge).
        bytes: [u8; INLINE_REQUEST_ID],
        /// How many are used.
        len: u8,
    },
    /// A longer one (rejections only).
    Heap(Box<str>),
}

impl RequestId {
    fn inline(id: &str) -> RequestId {
        let mut bytes = [0u8; INLINE_REQUEST_ID];
        // Cut at a character boundary so `as_str` never fails.
        let mut len = id.len().min(INLINE_REQUEST_ID);
        while !id.is_char_boundary(len) {
            len -= 1;
        }
        bytes[..len].copy_from_slice(&id.as_bytes()[..len]);
        RequestId::Inline {
            bytes,
            len: len as u8,
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        match self {
            RequestId::Inline { bytes, len } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or("")
            }
            RequestId::Heap(s) => s,
        }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One remembered decision.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Order of recording across both rings: nanoseconds on the monotonic clock, which every
    /// core reads alike, so decisions one after the other are ordered without a shared counter
    /// that every decision would have to write.
    pub seq: u64,
    /// When, unix milliseconds.
    pub ts_ms: i64,
    /// The reason code.
    pub code: DecisionCode,
    /// The kid, when well-formed.
    pub kid: Option<Kid>,
    /// The fingerprint of what was presented.
    pub fingerprint: Option<Fingerprint>,
    /// The consumer, when the kid is known.
    pub consumer: Option<Arc<ConsumerEntry>>,
    /// The environment of the key prefix, when there is no consumer.
    pub key_environment: Option<InlineEnv>,
    /// The version, when the kid is known.
    pub version: Option<VersionNumber>,
    /// The version's state, when the secret matched.
    pub state: Option<State>,
    /// The request id.
    pub request_id: RequestId,
    /// The client (after the trusted-proxy rule).
    pub remote_addr: Option<crate::client_addr::ClientAddr>,
    /// The full explanation (rejections only: building it allocates).
    pub detail: Option<Box<str>>,
}

impl Entry {
    /// The environment: the consumer's, else the key prefix's.
    pub fn environment(&self) -> Option<&str> {
        match &self.consumer {
            Some(c) => Some(c.environment()),
            None => self.key_environment.as_ref().map(InlineEnv::as_str),
        }
    }
}

/// What to look for. Every given criterion must match.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// This kid.
    pub kid: Option<Kid>,
    /// This consumer, `ENV/NAME`.
    pub consumer: Option<String>,
    /// The kids of that consumer's versions (entries of allowed decisions carry only the kid).
    pub consumer_kids: Vec<Kid>,
    /// Any of these codes.
    pub codes: Vec<DecisionCode>,
    /// This fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// At or after this time, unix milliseconds.
    pub since_ms: Option<i64>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl Query {
    fn matches(&self, e: &Entry) -> bool {
        self.since_ms.is_none_or(|t| e.ts_ms >= t)
            && self.kid.is_none_or(|k| e.kid == Some(k))
            && self.fingerprint.is_none_or(|f| e.fingerprint == Some(f))
            && (self.codes.is_empty() || self.codes.contains(&e.code))
            && self.consumer.as_deref().is_none_or(|want| {
                e.consumer.as_ref().is_some_and(|c| c.reference() == want)
                    || e.kid.is_some_and(|k| self.consumer_kids.contains(&k))
            })
    }
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// Matching entries, newest first, at most `limit`.
    pub entries: Vec<Entry>,
    /// How many matched in all.
    pub matched: usize,
}

#[derive(Debug)]
struct Slots {
    entries: Vec<Entry>,
    /// Where the next entry goes once the ring is full.
    next: usize,
    cap: usize,
}

impl Slots {
    fn new(cap: usize) -> Slots {
        // Reserved up front so that recording never grows the vector on the hot path.
        Slots {
            entries: Vec::with_capacity(cap),
            next: 0,
            cap,
        }
    }

    fn push(&mut self, e: Entry) {
        if self.cap == 0 {
            return;
        }
        if self.entries.len() < self.cap {
            self.entries.push(e);
        } else if let Some(slot) = self.entries.get_mut(self.next) {
            *slot = e;
        }
        self.next = (self.next + 1) % self.cap;
    }
}

/// A shard on cache lines of its own: unpadded, neighbouring shards' locks would share a line
/// and threads writing different shards would still contend for it.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(Mutex<Slots>);

#[derive(Debug)]
struct Ring {
    shards: Box<[Shard]>,
    /// Which of the thread's cursors this ring uses.
    kind: usize,
}

thread_local! {
    /// Each thread walks each kind of ring's shards in turn, so every shard fills at the same
    /// pace. One cursor per kind: with a shared one, traffic alternating between allowed and
    /// rejected would leave each ring using only every other shard. Each thread starts at a
    /// random shard, so two threads do not walk the same shards in lockstep and contend for
    /// their locks.
    static NEXT_SHARD: Cell<[usize; 2]> = Cell::new([fastrand::usize(..SHARDS); 2]);
}

impl Ring {
    fn new(cap: usize, kind: usize) -> Ring {
        // Equal shards (rounding `cap` up): filled round-robin, equal shards hold exactly the
        // newest entries, where unequal ones would keep some older ones in the larger shards.
        let shards = (0..SHARDS)
            .map(|_| Shard(Mutex::new(Slots::new(cap.div_ceil(SHARDS)))))
            .collect();
        Ring { shards, kind }
    }

    fn push(&self, e: Entry) {
        let i = NEXT_SHARD.with(|n| n.get()[self.kind]);
        // Never wait for another thread: a shard that is busy is skipped for the next free one
        // (a parked thread costs a futex wake-up, which measured more than the whole push).
        let mut pending = Some(e);
        let mut j = i;
        for k in 0..SHARDS {
            let candidate = (i + k) % SHARDS;
            if let Some(mut shard) = self.shards.get(candidate).and_then(|s| s.0.try_lock()) {
                if let Some(entry) = pending.take() {
                    shard.push(entry);
                }
                j = candidate;
                break;
            }
        }
        if let Some(entry) = pending
            && let Some(shard) = self.shards.get(i)
        {
            shard.0.lock().push(entry);
        }
        NEXT_SHARD.with(|n| {
            let mut cursors = n.get();
            cursors[self.kind] = (j + 1) % SHARDS;
            n.set(cursors);
        });
    }

    fn collect(&self, q: &Query, out: &mut Vec<Entry>) {
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            out.extend(shard.entries.iter().filter(|e| q.matches(e)).cloned());
        }
    }

    fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().cap).sum()
    }
}

/// The decision history.
#[derive(Debug)]
pub struct History {
    rejected: Ring,
    allowed: Ring,
    keeps_rejections: bool,
}

/// Nanoseconds on the monotonic clock since the first call: the order of every history entry.
pub(crate) fn monotonic_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What a decision contributes to the history, borrowed from the verification and request.
#[derive(Debug)]
pub struct Record<'a> {
    /// When, unix milliseconds.
    pub ts_ms: i64,
    /// The reason code.
    pub code: DecisionCode,
    /// The kid.
    pub kid: Option<Kid>,
    /// The fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// The consumer.
    pub consumer: Option<&'a Arc<ConsumerEntry>>,
    /// The key prefix's environment.
    pub key_environment: Option<InlineEnv>,
    /// The version.
    pub version: Option<VersionNumber>,
    /// The state.
    pub state: Option<State>,
    /// The request id.
    pub request_id: &'a str,
    /// The client (after the trusted-proxy rule).
    pub remote_addr: Option<crate::client_addr::ClientAddr>,
}

impl History {
    /// A history of `size` decisions (rounded up to a multiple of the shard count),
    /// [`REJECTED_SHARE`] percent of them for rejections.
    pub fn new(size: usize) -> History {
        let rejected = size.saturating_mul(REJECTED_SHARE) / 100;
        History {
            rejected: Ring::new(rejected, 0),
            allowed: Ring::new(size - rejected, 1),
            keeps_rejections: rejected > 0,
        }
    }

    /// How many rejections and allowed decisions it keeps at most.
    pub fn capacity(&self) -> (usize, usize) {
        (self.rejected.capacity(), self.allowed.capacity())
    }

    /// Remembers an allowed decision. Does not allocate, and does not hold the consumer: a
    /// clone of its `Arc` would make both worker threads bump one shared reference count per
    /// request (its cache line bouncing between cores). The kid names the consumer; queries
    /// resolve it (`Query::consumer_kids`, and the API's answer) instead.
    pub fn allowed(&self, r: &Record<'_>) {
        let mut e = self.entry(r, RequestId::inline(r.request_id), None);
        e.consumer = None;
        self.allowed.push(e);
    }

    /// Whether rejections are kept at all (`history.size = 0` keeps none), so callers can skip
    /// building the explanation.
    pub fn keeps_rejections(&self) -> bool {
        self.keeps_rejections
    }

    /// Remembers a rejection with its explanation.
    pub fn rejected(&self, r: &Record<'_>, detail: Box<str>) {
        let id = if r.request_id.len() <= INLINE_REQUEST_ID {
            RequestId::inline(r.request_id)
        } else {
            RequestId::Heap(r.request_id.into())
        };
        let e = self.entry(r, id, Some(detail));
        self.rejected.push(e);
    }

    fn entry(&self, r: &Record<'_>, request_id: RequestId, detail: Option<Box<str>>) -> Entry {
        Entry {
            seq: monotonic_ns(),
            ts_ms: r.ts_ms,
            code: r.code,
            kid: r.kid,
            fingerprint: r.fingerprint,
            consumer: if r.code.allowed() {
                None
            } else {
                r.consumer.cloned()
            },
            key_environment: r.key_environment,
            version: r.version,
            state: r.state,
            request_id,
            remote_addr: r.remote_addr,
            detail,
        }
    }

    /// The entries matching `q`, newest first.
    pub fn query(&self, q: &Query) -> Found {
        let mut out = Vec::new();
        let wants_rejected = q.codes.is_empty() || q.codes.iter().any(|c| !c.allowed());
        let wants_allowed = q.codes.is_empty() || q.codes.iter().any(DecisionCode::allowed);
        if wants_rejected {
            self.rejected.collect(q, &mut out);
        }
        if wants_allowed {
            self.allowed.collect(q, &mut out);
        }
        let matched = out.len();
        out.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        out.truncate(q.limit);
        Found {
            entries: out,
            matched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kid(n: u8) -> Kid {
        let mut s = String::from("AAAAAAAAAAA");
        s.push(char::from(b'A' + n));
        Kid::parse(&s).unwrap()
    }

    fn record(code: DecisionCode, k: u8, ts_ms: i64) -> Record<'static> {
        Record {
            ts_ms,
            code,
            kid: Some(kid(k)),
            fingerprint: Some(Fingerprint([k; 8])),
            consumer: None,
            key_environment: None,
            version: None,
            state: None,
            request_id: "rq_1",
            remote_addr: None,
        }
    }

    fn all(h: &History) -> Found {
        h.query(&Query {
            limit: usize::MAX,
            ..Query::default()
        })
    }

    #[test]
    fn rejections_outlive_allowed_traffic() {
        let h = History::new(100);
        assert_eq!(h.capacity(), (80, 24));
        for i in 0..10 {
            h.rejected(
                &record(DecisionCode::UnknownKey, 1, i),
                "no such kid".into(),
            );
        }
        // Far more allowed decisions than the whole history holds.
        for i in 0..1000 {
            h.allowed(&record(DecisionCode::Valid, 2, 100 + i));
        }
        let found = all(&h);
        assert_eq!(found.matched, 34);
        let rejected = found
            .entries
            .iter()
            .filter(|e| e.code == DecisionCode::UnknownKey)
            .count();
        assert_eq!(rejected, 10, "every rejection is still there");
        // The allowed ones kept are the newest.
        assert!(
            found
                .entries
                .iter()
                .filter(|e| e.code == DecisionCode::Valid)
                .all(|e| e.ts_ms >= 100 + 1000 - 24)
        );
    }

    #[test]
    fn a_full_ring_keeps_exactly_the_newest() {
        let h = History::new(40);
        for i in 0..1000 {
            h.rejected(&record(DecisionCode::InvalidSecret, 1, i), "x".into());
        }
        let found = all(&h);
        assert_eq!(found.matched, 32);
        let mut ts: Vec<i64> = found.entries.iter().map(|e| e.ts_ms).collect();
        ts.sort_unstable();
        assert_eq!(ts, (968..1000).collect::<Vec<_>>());
    }

    #[test]
    fn queries_filter_order_and_limit() {
        let h = History::new(1000);
        h.rejected(&record(DecisionCode::UnknownKey, 1, 10), "a".into());
        h.allowed(&record(DecisionCode::Valid, 2, 20));
        h.rejected(&record(DecisionCode::KeyRevoked, 2, 30), "b".into());
        h.rejected(&record(DecisionCode::UnknownKey, 1, 40), "c".into());
        let by_kid = h.query(&Query {
            kid: Some(kid(1)),
            limit: 10,
            ..Query::default()
        });
        assert_eq!(
            by_kid.entries.iter().map(|e| e.ts_ms).collect::<Vec<_>>(),
            vec![40, 10]
        );
        let by_code = h.query(&Query {
            codes: vec![DecisionCode::KeyRevoked, DecisionCode::Valid],
            limit: 10,
            ..Query::default()
        });
        assert_eq!(
            by_code.entries.iter().map(|e| e.ts_ms).collect::<Vec<_>>(),
            vec![30, 20]
        );
        let limited = h.query(&Query {
            since_ms: Some(15),
            limit: 2,
            ..Query::default()
        });
        assert_eq!(limited.matched, 3);
        assert_eq!(
            limited.entries.iter().map(|e| e.ts_ms).collect::<Vec<_>>(),
            vec![40, 30]
        );
        let by_fp = h.query(&Query {
            fingerprint: Some(Fingerprint([2; 8])),
            limit: 10,
            ..Query::default()
        });
        assert_eq!(by_fp.matched, 2);
        assert_eq!(by_fp.entries[0].detail.as_deref(), Some("b"));
    }

    #[test]
    fn request_ids_inline_or_whole() {
        let long = "x".repeat(100);
        let h = History::new(100);
        let mut r = record(DecisionCode::UnknownKey, 1, 1);
        r.request_id = &long;
        h.rejected(&r, "d".into());
        r.code = DecisionCode::Valid;
        h.allowed(&r);
        let found = all(&h);
        for e in &found.entries {
            let id = e.request_id.as_str();
            if e.code.allowed() {
                assert_eq!(id.len(), INLINE_REQUEST_ID);
            } else {
                assert_eq!(id, long);
            }
        }
    }

    #[test]
    fn entries_stay_small() {
        // 200 bytes (the inline request id is a third of it): 2 MB at the default size.
        assert!(size_of::<Entry>() <= 200, "{}", size_of::<Entry>());
    }

    #[test]
    fn size_zero_keeps_nothing() {
        let h = History::new(0);
        assert!(!h.keeps_rejections());
        h.allowed(&record(DecisionCode::Valid, 1, 1));
        h.rejected(&record(DecisionCode::UnknownKey, 1, 1), "x".into());
        assert_eq!(all(&h).matched, 0);
    }
}
