//! Usage recording (SPEC §6): per key version, the last use, a count per hour and a bounded set
//! of recent sources, gathered in memory on the hot path and flushed to the store in batches.
//!
//! The hot path takes its own thread's shard (one of 32 mutexes, picked once per thread, so two
//! workers never wait for each other even when every request carries the same key), bumps a
//! counter and, only for a source not seen yet in this batch, copies its address and user agent.
//! A source is matched by its parsed IP address, never by formatting one. A flush swaps every shard's map
//! out under its lock and writes the batch in one store transaction; a failed batch is merged
//! back, so a database outage loses no counts, and a crash loses at most one batch.
//!
//! Each batch also counts per minute. After a flush succeeds those counts join a recent
//! per-minute series kept in memory (`RECENT_MINUTES`, at most `MAX_RECENT_KIDS` versions, the
//! least recently used forgotten first): the dashboard's adoption chart needs finer than the
//! stored hours to show a rotation live. It is this node's traffic only, and lost at restart;
//! the hourly counts in the store are the durable, cluster-wide record.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use keyroll_core::{Kid, Timestamp};
use keyroll_store::{SourceSeen, Store, StoreError, UsageDelta};
use parking_lot::Mutex;

use crate::decided::DecisionRecord;

const SHARDS: usize = 32;
/// Sources kept per version, in a batch and in the store.
pub const MAX_SOURCES: usize = 16;
const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;
/// How far back the in-memory per-minute series reaches.
pub const RECENT_MINUTES: i64 = 180;
/// Versions with a per-minute series at most (180 buckets of 16 bytes each: ≈ 58 MB at worst).
pub const MAX_RECENT_KIDS: usize = 20_000;

/// The recent per-minute series: per version, `(minute start, requests)`, oldest first.
type Recent = HashMap<Kid, Vec<(Timestamp, u64)>>;

#[derive(Debug)]
struct Pending {
    last_used: Timestamp,
    hourly: Vec<(Timestamp, u64)>,
    minutely: Vec<(Timestamp, u64)>,
    sources: Vec<SourceSeen>,
    /// `sources[i].address`, parsed: what the hot path compares.
    source_ips: Vec<Option<IpAddr>>,
}

impl Pending {
    fn new(now: Timestamp) -> Pending {
        Pending {
            last_used: now,
            hourly: Vec::new(),
            minutely: Vec::new(),
            sources: Vec::new(),
            source_ips: Vec::new(),
        }
    }

    fn add_source(&mut self, s: SourceSeen) {
        add_source(&mut self.sources, s);
        self.source_ips = self
            .sources
            .iter()
            .map(|s| s.address.parse().ok())
            .collect();
    }
}

impl Pending {
    fn merge(&mut self, other: Pending) {
        self.last_used = self.last_used.max(other.last_used);
        for (hour, n) in other.hourly {
            add_hour(&mut self.hourly, hour, n);
        }
        for (minute, n) in other.minutely {
            add_hour(&mut self.minutely, minute, n);
        }
        for s in other.sources {
            self.add_source(s);
        }
    }
}

fn add_hour(hourly: &mut Vec<(Timestamp, u64)>, hour: Timestamp, n: u64) {
    match hourly.iter_mut().find(|(h, _)| *h == hour) {
        Some((_, c)) => *c += n,
        None => hourly.push((hour, n)),
    }
}

fn add_source(sources: &mut Vec<SourceSeen>, s: SourceSeen) {
    if let Some(known) = sources.iter_mut().find(|k| {
        k.address == s.address && k.user_agent == s.user_agent && k.client_id == s.client_id
    }) {
        known.count += s.count;
        known.last_seen = known.last_seen.max(s.last_seen);
        known.first_seen = known.first_seen.min(s.first_seen);
        return;
    }
    if sources.len() >= MAX_SOURCES {
        // Bounded: forget the source seen least recently.
        if let Some(oldest) = sources
            .iter()
            .enumerate()
            .min_by_key(|(_, k)| k.last_seen)
            .map(|(i, _)| i)
        {
            sources.swap_remove(oldest);
        }
    }
    sources.push(s);
}

/// Usage gathered since the last flush.
#[derive(Debug)]
pub struct UsageRecorder {
    shards: Box<[Mutex<HashMap<Kid, Pending>>]>,
    enabled: bool,
    /// Per-minute counts of the flushed batches (see the module documentation).
    recent: Mutex<Recent>,
}

impl UsageRecorder {
    /// A recorder; `enabled = false` records nothing (for measuring its cost).
    pub fn new(enabled: bool) -> UsageRecorder {
        UsageRecorder {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            enabled,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// This thread's shard: picked once per thread, round robin, so worker threads do not
    /// contend even when all traffic carries one key. Drains merge what shards share.
    fn shard(&self) -> &Mutex<HashMap<Kid, Pending>> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        &self.shards[SHARD.with(|s| *s)]
    }

    /// Records one allowed decision that counts as use ([`DecisionRecord::counts_as_use`]).
    pub fn record(&self, record: &DecisionRecord<'_>) {
        if !self.enabled {
            return;
        }
        let (v, facts) = (record.verification, record.facts);
        let Some(kid) = v.kid else { return };
        let now = facts.now;
        let hour =
            Timestamp::from_unix_millis(now.unix_millis() - now.unix_millis().rem_euclid(HOUR_MS));
        let minute = Timestamp::from_unix_millis(
            now.unix_millis() - now.unix_millis().rem_euclid(MINUTE_MS),
        );
        let user_agent = truncate(facts.user_agent, 200);
        let client_id = facts.client_id.map(|c| truncate(c, 100));
        let ip = facts.client.map(|c| c.ip());
        let mut map = self.shard().lock();
        let pending = map.entry(kid).or_insert_with(|| Pending::new(now));
        pending.last_used = pending.last_used.max(now);
        add_hour(&mut pending.hourly, hour, 1);
        add_hour(&mut pending.minutely, minute, 1);
        // The common case — the same client again — compares without allocating.
        let known = pending
            .source_ips
            .iter()
            .zip(pending.sources.iter_mut())
            .find(|(known_ip, s)| {
                **known_ip == ip
                    && s.user_agent == user_agent
                    && s.client_id.as_deref() == client_id
            });
        if let Some((_, s)) = known {
            s.count += 1;
            s.last_seen = now;
            return;
        }
        pending.add_source(SourceSeen {
            address: ip.map(|i| i.to_string()).unwrap_or_default(),
            user_agent: user_agent.to_owned(),
            client_id: client_id.map(str::to_owned),
            first_seen: now,
            last_seen: now,
            count: 1,
        });
    }

    /// Takes everything gathered so far.
    fn drain(&self) -> Vec<(Kid, Pending)> {
        // A kid used from several threads sits in several shards: merge it into one delta.
        let mut merged: HashMap<Kid, Pending> = HashMap::new();
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut *shard.lock());
            for (kid, p) in taken {
                match merged.get_mut(&kid) {
                    Some(existing) => existing.merge(p),
                    None => {
                        merged.insert(kid, p);
                    }
                }
            }
        }
        merged.into_iter().collect()
    }

    fn restore(&self, batch: Vec<(Kid, Pending)>) {
        for (kid, p) in batch {
            let mut map = self.shards[usize::from(kid.as_bytes()[0]) % SHARDS].lock();
            match map.get_mut(&kid) {
                Some(existing) => existing.merge(p),
                None => {
                    map.insert(kid, p);
                }
            }
        }
    }

    /// Writes everything gathered so far in one transaction. On failure the batch goes back
    /// into memory for the next attempt. Returns how many versions were written.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let batch = self.drain();
        if batch.is_empty() {
            return Ok(0);
        }
        let deltas: Vec<UsageDelta> = batch
            .iter()
            .map(|(kid, p)| UsageDelta {
                kid: *kid,
                last_used_at: p.last_used,
                hourly: p.hourly.clone(),
                sources: p.sources.clone(),
            })
            .collect();
        match store.record_usage(&deltas, MAX_SOURCES as u32).await {
            Ok(()) => {
                // Only a written batch joins the series: a failed one comes back and would
                // be counted twice.
                merge_recent(&mut self.recent.lock(), &batch);
                Ok(deltas.len())
            }
            Err(e) => {
                self.restore(batch);
                Err(e)
            }
        }
    }
}

impl UsageRecorder {
    /// The per-minute series of `kid` from `since` on, oldest first (flushed batches only).
    pub fn recent_minutes(&self, kid: &Kid, since: Timestamp) -> Vec<(Timestamp, u64)> {
        self.recent
            .lock()
            .get(kid)
            .map(|series| {
                series
                    .iter()
                    .filter(|(m, _)| *m >= since)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Adds a written batch's minutes to the series, drops minutes older than `RECENT_MINUTES`
/// before the newest one seen, and keeps at most `MAX_RECENT_KIDS` versions.
fn merge_recent(recent: &mut Recent, batch: &[(Kid, Pending)]) {
    let mut newest = Timestamp::EPOCH;
    for (kid, p) in batch {
        if p.minutely.is_empty() {
            continue;
        }
        let series = recent.entry(*kid).or_default();
        for &(minute, n) in &p.minutely {
            newest = newest.max(minute);
            match series.binary_search_by_key(&minute, |(m, _)| *m) {
                Ok(i) => series[i].1 += n,
                Err(i) => series.insert(i, (minute, n)),
            }
        }
    }
    if newest == Timestamp::EPOCH {
        return;
    }
    let cut = Timestamp::from_unix_millis(newest.unix_millis() - RECENT_MINUTES * MINUTE_MS);
    recent.retain(|_, series| {
        series.retain(|(m, _)| *m >= cut);
        !series.is_empty()
    });
    if recent.len() > MAX_RECENT_KIDS {
        // Forget the versions used least recently.
        let mut last: Vec<(Timestamp, Kid)> = recent
            .iter()
            .map(|(kid, s)| (s.last().map(|(m, _)| *m).unwrap_or(Timestamp::EPOCH), *kid))
            .collect();
        last.sort_unstable_by_key(|(m, _)| *m);
        for (_, kid) in last.iter().take(recent.len() - MAX_RECENT_KIDS) {
            recent.remove(kid);
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// What one flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// `versions` key versions written in `took`.
    Written {
        /// Versions written (0: nothing was pending).
        versions: usize,
        /// How long the write took.
        took: Duration,
    },
    /// The store refused; the batch is back in memory.
    Failed,
}

impl UsageRecorder {
    /// The periodic step: flushes what is pending, with its log line. The driver (`jobs`)
    /// passes the outcome on to the metrics.
    pub async fn flush_step(&self, store: &dyn Store) -> Flushed {
        let started = Instant::now();
        match self.flush(store).await {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(
                        event = "usage.flushed",
                        versions = n,
                        millis = started.elapsed().as_millis() as u64,
                        "usage flushed"
                    );
                }
                Flushed::Written {
                    versions: n,
                    took: started.elapsed(),
                }
            }
            Err(e) => {
                tracing::warn!(event = "usage.flush_failed", error = %e, "usage flush failed; counts kept in memory for the next attempt");
                Flushed::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_bounded_and_merged() {
        let mut sources = Vec::new();
        for i in 0..40 {
            let at = Timestamp::from_unix_millis(i);
            add_source(
                &mut sources,
                SourceSeen {
                    address: format!("10.0.0.{i}"),
                    user_agent: String::new(),
                    client_id: None,
                    first_seen: at,
                    last_seen: at,
                    count: 1,
                },
            );
        }
        assert_eq!(sources.len(), MAX_SOURCES);
        assert!(
            sources
                .iter()
                .all(|s| s.last_seen.unix_millis() >= 40 - MAX_SOURCES as i64)
        );
        let mut hours = Vec::new();
        add_hour(&mut hours, Timestamp::EPOCH, 2);
        add_hour(&mut hours, Timestamp::EPOCH, 3);
        assert_eq!(hours, vec![(Timestamp::EPOCH, 5)]);
    }

    #[test]
    fn recent_minutes_merge_trim_and_stay_bounded() {
        let kid = |i: u64| Kid::parse(&format!("k{i:011}")).unwrap();
        let minute = |m: i64| Timestamp::from_unix_millis(m * MINUTE_MS);
        let pending = |minutes: Vec<(Timestamp, u64)>| Pending {
            minutely: minutes,
            ..Pending::new(Timestamp::EPOCH)
        };
        let mut recent = Recent::new();
        merge_recent(&mut recent, &[(kid(1), pending(vec![(minute(10), 2)]))]);
        merge_recent(
            &mut recent,
            &[(kid(1), pending(vec![(minute(11), 1), (minute(10), 3)]))],
        );
        assert_eq!(recent[&kid(1)], vec![(minute(10), 5), (minute(11), 1)]);
        // A minute RECENT_MINUTES past the oldest pushes it out.
        merge_recent(
            &mut recent,
            &[(kid(2), pending(vec![(minute(10 + RECENT_MINUTES + 1), 1)]))],
        );
        assert_eq!(recent[&kid(1)], vec![(minute(11), 1)]);
        let many: Vec<(Kid, Pending)> = (0..MAX_RECENT_KIDS as u64 + 10)
            .map(|i| (kid(100 + i), pending(vec![(minute(200), 1)])))
            .collect();
        merge_recent(&mut recent, &many);
        assert_eq!(recent.len(), MAX_RECENT_KIDS);
        // The least recently used went first.
        assert!(!recent.contains_key(&kid(1)));
    }
}
