//! A batch of usage deltas merged before it is written, and the answer of `Store::usage`
//! assembled from its reads: shared by every backend so that they store and answer alike.
//!
//! The server may hand over the same kid, hour or source more than once in one batch (two
//! flushes' worth after a failed write, say). Merging first makes every row of every statement
//! distinct, which set-based upserts need (PostgreSQL refuses to update one row twice in one
//! `INSERT ... ON CONFLICT`), and makes the rows to write fewer.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use keyroll_core::{Kid, Timestamp};

use crate::rows;
use crate::{SourceSeen, UsageDelta, VersionUsage};

/// One version's last use: `(kid, last_used_at)`.
pub(crate) type LastUsed<'a> = (&'a str, i64);

/// Requests of one version in one hour: `(kid, hour, count)`.
pub(crate) type Hourly<'a> = (&'a str, i64, i64);

/// One source of one version, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source<'a> {
    pub kid: &'a str,
    pub address: &'a str,
    pub user_agent: &'a str,
    /// `""` for none: the column is part of the primary key, so it cannot be NULL.
    pub client_id: &'a str,
    pub first_seen: i64,
    pub last_seen: i64,
    pub count: i64,
}

/// A batch with every kid, `(kid, hour)` and source once, in the order first met.
#[derive(Debug, Default)]
pub(crate) struct Merged<'a> {
    /// Every kid of the batch with its latest use.
    pub last_used: Vec<LastUsed<'a>>,
    pub hourly: Vec<Hourly<'a>>,
    pub sources: Vec<Source<'a>>,
}

/// `Store::usage`'s answer from its three reads, decoded (last uses, hourly counts in hour
/// order, sources most recent first): one entry per kid asked, in the order asked (a kid asked
/// twice is answered twice), a kid without rows answered as unused.
pub(crate) fn answer(
    kids: &[Kid],
    last_used: Vec<(&str, Timestamp)>,
    hourly: Vec<(&str, Timestamp, u64)>,
    sources: Vec<(&str, SourceSeen)>,
) -> Vec<VersionUsage> {
    let mut found: HashMap<&str, VersionUsage> = kids
        .iter()
        .map(|kid| (kid.as_str(), rows::unused(*kid)))
        .collect();
    for (kid, at) in last_used {
        if let Some(entry) = found.get_mut(kid) {
            entry.last_used_at = Some(at);
        }
    }
    for (kid, hour, count) in hourly {
        if let Some(entry) = found.get_mut(kid) {
            entry.hourly.push((hour, count));
        }
    }
    for (kid, source) in sources {
        if let Some(entry) = found.get_mut(kid) {
            entry.sources.push(source);
        }
    }
    let mut answer: Vec<VersionUsage> = Vec::with_capacity(kids.len());
    for kid in kids {
        let entry = match found.remove(kid.as_str()) {
            Some(entry) => entry,
            None => answer
                .iter()
                .find(|u| u.kid == *kid)
                .cloned()
                .unwrap_or_else(|| rows::unused(*kid)),
        };
        answer.push(entry);
    }
    answer
}

/// Merges a batch: the latest `last_used_at` per kid, counts added per hour and per source,
/// the earliest `first_seen` and the latest `last_seen` per source.
pub(crate) fn merge(batch: &[UsageDelta]) -> Merged<'_> {
    let mut merged = Merged::default();
    let mut kids: HashMap<&str, usize> = HashMap::new();
    let mut hours: HashMap<(&str, i64), usize> = HashMap::new();
    let mut sources: HashMap<(&str, &str, &str, &str), usize> = HashMap::new();
    for delta in batch {
        let kid = delta.kid.as_str();
        let last_used_at = delta.last_used_at.unix_millis();
        match kids.entry(kid) {
            Entry::Occupied(at) => {
                if let Some(slot) = merged.last_used.get_mut(*at.get()) {
                    slot.1 = slot.1.max(last_used_at);
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(merged.last_used.len());
                merged.last_used.push((kid, last_used_at));
            }
        }
        for &(hour, count) in &delta.hourly {
            let hour = hour.unix_millis();
            let count = rows::count_value(count);
            match hours.entry((kid, hour)) {
                Entry::Occupied(at) => {
                    if let Some(slot) = merged.hourly.get_mut(*at.get()) {
                        slot.2 = slot.2.saturating_add(count);
                    }
                }
                Entry::Vacant(slot) => {
                    slot.insert(merged.hourly.len());
                    merged.hourly.push((kid, hour, count));
                }
            }
        }
        for seen in &delta.sources {
            let source = Source {
                kid,
                address: &seen.address,
                user_agent: &seen.user_agent,
                client_id: seen.client_id.as_deref().unwrap_or(""),
                first_seen: seen.first_seen.unix_millis(),
                last_seen: seen.last_seen.unix_millis(),
                count: rows::count_value(seen.count),
            };
            let key = (kid, source.address, source.user_agent, source.client_id);
            match sources.entry(key) {
                Entry::Occupied(at) => {
                    if let Some(slot) = merged.sources.get_mut(*at.get()) {
                        slot.first_seen = slot.first_seen.min(source.first_seen);
                        slot.last_seen = slot.last_seen.max(source.last_seen);
                        slot.count = slot.count.saturating_add(source.count);
                    }
                }
                Entry::Vacant(slot) => {
                    slot.insert(merged.sources.len());
                    merged.sources.push(source);
                }
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use keyroll_core::{Kid, Timestamp};

    use super::*;
    use crate::SourceSeen;

    fn source(
        address: &str,
        client_id: Option<&str>,
        first: i64,
        last: i64,
        count: u64,
    ) -> SourceSeen {
        SourceSeen {
            address: address.to_owned(),
            user_agent: "curl/8".to_owned(),
            client_id: client_id.map(str::to_owned),
            first_seen: Timestamp::from_unix_millis(first),
            last_seen: Timestamp::from_unix_millis(last),
            count,
        }
    }

    #[test]
    fn repeated_kids_hours_and_sources_are_merged() {
        let a = Kid::parse("AAAAAAAAAAAA").unwrap();
        let b = Kid::parse("BBBBBBBBBBBB").unwrap();
        let hour = |h: i64| Timestamp::from_unix_millis(h * 3_600_000);
        let batch = [
            UsageDelta {
                kid: a,
                last_used_at: Timestamp::from_unix_millis(50),
                hourly: vec![(hour(1), 2), (hour(2), 3)],
                sources: vec![source("10.0.0.1", None, 10, 50, 5)],
            },
            UsageDelta {
                kid: b,
                last_used_at: Timestamp::from_unix_millis(7),
                hourly: vec![(hour(1), u64::MAX)],
                sources: vec![],
            },
            UsageDelta {
                kid: a,
                last_used_at: Timestamp::from_unix_millis(40),
                hourly: vec![(hour(2), 4)],
                sources: vec![
                    source("10.0.0.1", None, 5, 45, 1),
                    source("10.0.0.1", Some("svc"), 5, 45, 1),
                ],
            },
        ];
        let merged = merge(&batch);
        assert_eq!(
            merged.last_used,
            [("AAAAAAAAAAAA", 50), ("BBBBBBBBBBBB", 7)]
        );
        assert_eq!(
            merged.hourly,
            [
                ("AAAAAAAAAAAA", 3_600_000, 2),
                ("AAAAAAAAAAAA", 7_200_000, 7),
                ("BBBBBBBBBBBB", 3_600_000, i64::MAX),
            ]
        );
        assert_eq!(merged.sources.len(), 2);
        let first = &merged.sources[0];
        assert_eq!(
            (
                first.client_id,
                first.first_seen,
                first.last_seen,
                first.count
            ),
            ("", 5, 50, 6)
        );
        assert_eq!(merged.sources[1].client_id, "svc");
    }
}
