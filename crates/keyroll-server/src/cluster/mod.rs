//! Several nodes on one database (SPEC §11): this node's identity, what it has applied of the
//! change log, whether it leads, and how far a change has propagated.
//!
//! Every node verifies from its own in-memory index, so a change committed by one node must
//! reach the others' indexes. The store logs every consumer change with a gapless seq
//! (`Store::changes_since`); each node applies the log in seq order and reports what it applied
//! in its heartbeat, which is what a revoke with `?wait=` waits for. One node at a time — the
//! holder of the `leader` lease — runs the jobs that must not run twice (sweeper, schedule,
//! webhook sender, pruning); the others only serve and apply.
//!
//! The first half of this module is pure and unit-tested: [`Progress`] (the applied watermark,
//! which skips this node's own writes, already in its index), [`Plan`] (what a batch of the
//! log asks for: apply, or reload because the log was pruned past us), [`Leadership`] (what a
//! lease renewal means, with the step-down at the local deadline) and [`propagation`] (who has
//! a change). The steps the loops of [`crate::jobs`] run, on the shared state, are in
//! [`steps`] (a module of their own, so that the state can hold a [`Cluster`] without an import
//! circle).
//!
//! Invariant: `applied` only moves past a seq once the index holds that change (or a newer
//! state of its consumer): a local write notes its seq after its index update; the applier
//! after its upserts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keyroll_core::{Timestamp, random_base62, rfc3339};
use keyroll_proto as proto;
use keyroll_store::{ChangeKind, ChangeRecord, NodeRecord};
use parking_lot::Mutex;

use crate::config::ClusterSettings;

/// The name of the lease whose holder runs the leader's jobs.
pub const LEADER_LEASE: &str = "leader";
/// Changes read from the log per query.
pub const CHANGE_BATCH: u32 = 500;
/// How long applied changes stay in the log: a node that falls further behind reloads. Nodes
/// that have not heartbeated for this long are forgotten too.
pub const CHANGE_RETENTION: Duration = Duration::from_secs(3600);
/// How often the leader prunes the log and forgets dead nodes.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// With notifications, the log is still read this often: a backstop for a lost notification.
pub const LISTEN_BACKSTOP: Duration = Duration::from_secs(5);
/// A node is live while its last heartbeat is within this many heartbeat intervals.
pub const LIVE_HEARTBEATS: u32 = 3;
/// The longest `?wait=` a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting request looks at the nodes' progress: one small read of `nodes`; fine
/// enough that `within_ms` measures propagation (≈ 2 ms between nodes here), not the poll.
pub const WAIT_POLL: Duration = Duration::from_millis(10);
/// The first and the longest pause before listening again after a lost connection.
pub const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));

/// `node_` and 12 random base62 characters; without randomness, the process id and the start
/// time (unique enough for a label: nothing secret rests on it).
pub fn new_node_id(randomness: &crate::clock::Randomness, now: Timestamp) -> String {
    match random_base62::<12>(&mut randomness.entropy()) {
        Ok(id) => format!("node_{}", String::from_utf8_lossy(&id)),
        Err(_) => format!("node_{}_{}", std::process::id(), now.unix_millis()),
    }
}

/// What this node has applied of the change log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Every change up to this seq is in the index.
    applied: i64,
    /// Seqs above `applied` this node wrote itself (already in its index), waiting for the
    /// seqs below them.
    local: BTreeSet<i64>,
}

impl Progress {
    /// Starts at `applied` (the head read before the index was loaded).
    pub fn at(applied: i64) -> Progress {
        Progress {
            applied,
            local: BTreeSet::new(),
        }
    }

    /// Every change up to this seq is in the index.
    pub fn applied(&self) -> i64 {
        self.applied
    }

    /// This node committed change `seq` and its index has it.
    pub fn note_local(&mut self, seq: i64) {
        if seq > self.applied {
            self.local.insert(seq);
        }
        self.settle();
    }

    /// The index holds every change up to `through`.
    pub fn advance(&mut self, through: i64) {
        self.applied = self.applied.max(through);
        self.settle();
    }

    fn settle(&mut self) {
        self.local = self.local.split_off(&(self.applied + 1));
        while self.local.remove(&(self.applied + 1)) {
            self.applied += 1;
        }
    }

    /// What a batch of the log (`changes_since(applied)`, in seq order) asks for.
    pub fn plan(&self, changes: &[ChangeRecord]) -> Plan {
        let mut pending = changes.iter().filter(|c| c.seq > self.applied).peekable();
        let Some(first) = pending.peek() else {
            return Plan::UpToDate;
        };
        // Seqs are gapless: a first seq past the next one means the log was pruned past us.
        if first.seq != self.applied + 1 {
            return Plan::Reload;
        }
        let mut ids = Vec::new();
        let mut ca = false;
        let mut through = self.applied;
        for c in pending {
            if c.seq != through + 1 {
                break;
            }
            through = c.seq;
            if self.local.contains(&c.seq) {
                continue;
            }
            match c.kind {
                ChangeKind::Consumer if !ids.contains(&c.consumer_id) => ids.push(c.consumer_id),
                ChangeKind::Consumer => {}
                ChangeKind::Ca => ca = true,
            }
        }
        Plan::Apply { ids, ca, through }
    }
}

/// What a batch of the change log asks of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing new.
    UpToDate,
    /// Read these consumers (written by other nodes) into the index; then every change up to
    /// `through` is applied.
    Apply {
        /// Consumers to read, each once (this node's own changes are left out).
        ids: Vec<i64>,
        /// Another node changed the CA's trust bundle: rebuild the trust store.
        ca: bool,
        /// The last seq of the batch's gapless run.
        through: i64,
    },
    /// The log no longer holds the next change: reload everything.
    Reload,
}

/// What a renewal of the leader lease answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// This node holds it, with this term.
    Held(i64),
    /// Another node holds it.
    Refused,
    /// The store did not answer.
    Failed,
}

/// A change of leadership to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderChange {
    /// This node leads from now, with this term.
    Acquired(i64),
    /// It stopped leading the term it had.
    Lost {
        /// The term it held.
        term: i64,
        /// Why, in words.
        reason: &'static str,
    },
}

/// Whether this node leads: until a local deadline, the lease's ttl after the start of the
/// renewal that got it. Measured from before the request, so the deadline is never later than
/// the lease's expiry in the store (clocks apart).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leadership {
    until: Option<Instant>,
    term: i64,
    /// `Acquired` was announced and `Lost` not yet.
    announced: bool,
}

impl Leadership {
    /// Leads at `now`.
    pub fn leading(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// The term of the current (or last) tenure.
    pub fn term(&self) -> i64 {
        self.term
    }

    /// Takes in a renewal started at `started` and answered at `now`; returns what to announce.
    pub fn renewed(
        &mut self,
        outcome: LeaseOutcome,
        started: Instant,
        ttl: Duration,
        now: Instant,
    ) -> Vec<LeaderChange> {
        let mut changes = Vec::new();
        let lapsed = self.announced && !self.leading(now);
        match outcome {
            LeaseOutcome::Held(term) => {
                if self.announced && (lapsed || term != self.term) {
                    changes.push(LeaderChange::Lost {
                        term: self.term,
                        reason: "the lease lapsed before it was renewed",
                    });
                    self.announced = false;
                }
                self.until = Some(started + ttl);
                self.term = term;
                if !self.announced {
                    changes.push(LeaderChange::Acquired(term));
                    self.announced = true;
                }
            }
            LeaseOutcome::Refused => {
                self.until = None;
                if self.announced {
                    changes.push(LeaderChange::Lost {
                        term: self.term,
                        reason: "another node holds the lease",
                    });
                    self.announced = false;
                }
            }
            // Keep leading until the local deadline: the lease may well still be ours.
            LeaseOutcome::Failed => {
                if lapsed {
                    changes.push(LeaderChange::Lost {
                        term: self.term,
                        reason: "the lease could not be renewed (store unavailable)",
                    });
                    self.announced = false;
                }
            }
        }
        changes
    }

    /// Stops leading (clean shutdown); the term led, if any.
    pub fn resign(&mut self) -> Option<i64> {
        self.until = None;
        std::mem::take(&mut self.announced).then_some(self.term)
    }
}

/// Whether a node whose last heartbeat was at `heartbeat_at` is live at `now`.
pub fn is_live(heartbeat_at: Timestamp, now: Timestamp, interval: Duration) -> bool {
    now.duration_since(heartbeat_at) <= interval.saturating_mul(LIVE_HEARTBEATS)
}

/// How far change `seq` written by node `writer` has got: the writer counts at once (its index
/// took the change before the answer), every other live node once its applied seq reached it.
/// Nodes that are not live are not waited for.
pub fn propagation(
    writer: &str,
    seq: i64,
    nodes: &[NodeRecord],
    now: Timestamp,
    interval: Duration,
) -> (u32, u32, Vec<proto::LaggingNode>) {
    let others: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.node_id != writer && is_live(n.heartbeat_at, now, interval))
        .collect();
    let lagging: Vec<proto::LaggingNode> = others
        .iter()
        .filter(|n| n.applied_seq < seq)
        .map(|n| proto::LaggingNode {
            node_id: n.node_id.clone(),
            applied_seq: n.applied_seq,
            heartbeat_at: rfc3339(n.heartbeat_at),
        })
        .collect();
    let total = u32::try_from(others.len() + 1).unwrap_or(u32::MAX);
    let confirmed = total.saturating_sub(u32::try_from(lagging.len()).unwrap_or(u32::MAX));
    (total, confirmed, lagging)
}

/// When the next adoption merge starts reading: the last one's start, less a margin covering
/// another node's flush interval and clocks apart (re-reading a use is harmless: the index
/// keeps the later time).
pub fn merge_since(last: Timestamp, flush_interval: Duration) -> Timestamp {
    last.saturating_sub(flush_interval.saturating_mul(2) + Duration::from_secs(10))
}

/// This node in the cluster, shared by its loops and its handlers.
#[derive(Debug)]
pub struct Cluster {
    /// This node's id.
    pub node_id: String,
    /// When this process started.
    pub started_at: Timestamp,
    /// The `[cluster]` settings.
    pub settings: ClusterSettings,
    address: Mutex<Option<String>>,
    progress: Mutex<Progress>,
    leadership: Mutex<Leadership>,
    /// Ticks when this node becomes leader, so leader-only jobs run at once.
    pub leader_acquired: tokio::sync::watch::Sender<u64>,
    /// Wakes the heartbeat (after applying changes) so waiting writers learn of it at once.
    pub heartbeat_wake: tokio::sync::Notify,
    usage_flushed_at: Mutex<Option<Timestamp>>,
    merged_at: Mutex<Timestamp>,
}

impl Cluster {
    /// This node, named by the settings or at random.
    pub fn new(
        settings: ClusterSettings,
        randomness: &crate::clock::Randomness,
        now: Timestamp,
    ) -> Cluster {
        let node_id = settings
            .node_id
            .clone()
            .unwrap_or_else(|| new_node_id(randomness, now));
        Cluster {
            node_id,
            started_at: now,
            address: Mutex::new(settings.advertise.clone()),
            settings,
            progress: Mutex::new(Progress::default()),
            leadership: Mutex::new(Leadership::default()),
            leader_acquired: tokio::sync::watch::Sender::new(0),
            heartbeat_wake: tokio::sync::Notify::new(),
            usage_flushed_at: Mutex::new(None),
            merged_at: Mutex::new(now),
        }
    }

    /// Every change up to this seq is in this node's index.
    pub fn applied(&self) -> i64 {
        self.progress.lock().applied()
    }

    /// Sets what the index was loaded at (start, full reload).
    pub fn loaded_at(&self, head: i64) {
        self.progress.lock().advance(head);
    }

    /// This node committed change `seq` and put it into its index.
    pub fn note_local(&self, seq: i64) {
        self.progress.lock().note_local(seq);
    }

    /// Whether this node leads now (it holds the `leader` lease, by its local deadline).
    pub fn is_leader(&self) -> bool {
        self.leadership.lock().leading(Instant::now())
    }

    /// Records the listen address once bound (unless an address is advertised).
    pub fn set_listen_address(&self, addr: std::net::SocketAddr) {
        let mut a = self.address.lock();
        if a.is_none() {
            *a = Some(addr.to_string());
        }
    }

    /// Records a successful usage flush.
    pub fn usage_flushed(&self, at: Timestamp) {
        *self.usage_flushed_at.lock() = Some(at);
    }

    /// The heartbeat this node sends at `now`.
    pub fn record(&self, now: Timestamp) -> NodeRecord {
        NodeRecord {
            node_id: self.node_id.clone(),
            address: self.address.lock().clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
            heartbeat_at: now,
            applied_seq: self.applied(),
            usage_flushed_at: *self.usage_flushed_at.lock(),
            leader: self.is_leader(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Steps (run by the loops of `crate::jobs` and by handlers)

/// Why the index was reloaded or the log re-read, for `cluster.resync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// The log was pruned past what this node applied.
    Pruned,
    /// The periodic backstop (`cluster.full_reload`).
    Periodic,
    /// The notification connection was lost; the log is read from what was applied.
    ListenerLost,
}

impl Resync {
    fn as_str(self) -> &'static str {
        match self {
            Resync::Pruned => "pruned",
            Resync::Periodic => "periodic",
            Resync::ListenerLost => "listener_lost",
        }
    }
}

pub mod steps;

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: i64, consumer_id: i64) -> ChangeRecord {
        ChangeRecord {
            seq,
            kind: ChangeKind::Consumer,
            consumer_id,
            at: Timestamp::from_unix_millis(seq),
        }
    }

    #[test]
    fn node_ids() {
        assert!(crate::config::valid_node_id("node_a1"));
        assert!(crate::config::valid_node_id("eu-west-1.b"));
        for bad in ["", "a b", "nöde", "x/y", &"n".repeat(65)] {
            assert!(!crate::config::valid_node_id(bad), "{bad:?}");
        }
        let randomness = crate::clock::Randomness::os();
        let a = new_node_id(&randomness, Timestamp::from_unix_millis(1));
        let b = new_node_id(&randomness, Timestamp::from_unix_millis(1));
        assert!(
            a.starts_with("node_") && crate::config::valid_node_id(&a) && a != b,
            "{a} {b}"
        );
    }

    #[test]
    fn own_writes_advance_once_the_seqs_below_are_applied() {
        let mut p = Progress::at(3);
        p.note_local(5);
        assert_eq!(p.applied(), 3, "4 is someone else's, not applied yet");
        p.note_local(4);
        assert_eq!(p.applied(), 5);
        p.note_local(2);
        assert_eq!(p.applied(), 5, "an old seq changes nothing");
        p.note_local(7);
        p.advance(6);
        assert_eq!(
            p.applied(),
            7,
            "the applier reaching 6 lets the own 7 count"
        );
        assert_eq!(p, Progress::at(7));
    }

    #[test]
    fn a_batch_is_applied_in_order_without_own_writes() {
        let mut p = Progress::at(10);
        assert_eq!(p.plan(&[]), Plan::UpToDate);
        assert_eq!(p.plan(&[change(9, 1), change(10, 2)]), Plan::UpToDate);
        p.note_local(12);
        assert_eq!(
            p.plan(&[change(11, 7), change(12, 8), change(13, 7), change(14, 9)]),
            Plan::Apply {
                ids: vec![7, 9],
                ca: false,
                through: 14
            },
            "12 is ours; 7 is read once"
        );
        assert_eq!(
            p.plan(&[change(11, 7), change(13, 9)]),
            Plan::Apply {
                ids: vec![7],
                ca: false,
                through: 11
            },
            "only the gapless run"
        );
        assert_eq!(
            p.plan(&[change(9, 1), change(11, 3)]),
            Plan::Apply {
                ids: vec![3],
                ca: false,
                through: 11
            },
            "already applied seqs are skipped"
        );
        assert_eq!(p.plan(&[change(12, 8), change(13, 7)]), Plan::Reload);
        assert_eq!(Progress::at(0).plan(&[change(4, 1)]), Plan::Reload);
    }

    #[test]
    fn a_ca_change_by_another_node_asks_for_a_trust_store_rebuild() {
        let ca = |seq: i64| ChangeRecord {
            kind: ChangeKind::Ca,
            ..change(seq, 0)
        };
        let mut p = Progress::at(1);
        assert_eq!(
            p.plan(&[change(2, 5), ca(3)]),
            Plan::Apply {
                ids: vec![5],
                ca: true,
                through: 3
            },
            "a ca change names no consumer"
        );
        p.note_local(3);
        assert_eq!(
            p.plan(&[change(2, 5), ca(3)]),
            Plan::Apply {
                ids: vec![5],
                ca: false,
                through: 3
            },
            "this node's own CA write is already in its trust store"
        );
    }

    #[test]
    fn leadership_follows_renewals_and_steps_down_at_the_local_deadline() {
        let ttl = Duration::from_secs(5);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut l = Leadership::default();
        assert!(!l.leading(t0));
        assert_eq!(l.renewed(LeaseOutcome::Refused, t0, ttl, t0), []);
        assert_eq!(
            l.renewed(LeaseOutcome::Held(3), at(1), ttl, at(1)),
            [LeaderChange::Acquired(3)]
        );
        assert!(
            l.leading(at(5)) && !l.leading(at(6)),
            "ttl from the request's start"
        );
        assert_eq!(l.renewed(LeaseOutcome::Held(3), at(2), ttl, at(2)), []);
        assert!(l.leading(at(6)));
        // The store does not answer: still leading until the deadline, then lost once.
        assert_eq!(l.renewed(LeaseOutcome::Failed, at(3), ttl, at(4)), []);
        assert!(l.leading(at(6)));
        assert_eq!(
            l.renewed(LeaseOutcome::Failed, at(7), ttl, at(7)),
            [LeaderChange::Lost {
                term: 3,
                reason: "the lease could not be renewed (store unavailable)"
            }]
        );
        assert!(!l.leading(at(7)));
        assert_eq!(l.renewed(LeaseOutcome::Failed, at(8), ttl, at(8)), []);
        // Back, with the next term.
        assert_eq!(
            l.renewed(LeaseOutcome::Held(4), at(9), ttl, at(9)),
            [LeaderChange::Acquired(4)]
        );
        // A lapse noticed only by the renewal that gets the lease again.
        assert_eq!(
            l.renewed(LeaseOutcome::Held(5), at(20), ttl, at(20)),
            [
                LeaderChange::Lost {
                    term: 4,
                    reason: "the lease lapsed before it was renewed"
                },
                LeaderChange::Acquired(5)
            ]
        );
        assert_eq!(
            l.renewed(LeaseOutcome::Refused, at(21), ttl, at(21)),
            [LeaderChange::Lost {
                term: 5,
                reason: "another node holds the lease"
            }]
        );
        assert!(!l.leading(at(21)));
        assert_eq!(l.resign(), None);
        l.renewed(LeaseOutcome::Held(6), at(22), ttl, at(22));
        assert_eq!(l.resign(), Some(6));
        assert!(!l.leading(at(22)));
    }

    fn node(id: &str, applied: i64, heartbeat: i64) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            address: None,
            version: "0".into(),
            started_at: Timestamp::from_unix_millis(0),
            heartbeat_at: Timestamp::from_unix_millis(heartbeat),
            applied_seq: applied,
            usage_flushed_at: None,
            leader: false,
        }
    }

    #[test]
    fn propagation_counts_the_writer_and_live_nodes_that_applied() {
        let second = Duration::from_secs(1);
        let now = Timestamp::from_unix_millis(10_000);
        let nodes = [
            node("a", 0, 10_000),
            node("b", 8, 9_500),
            node("c", 7, 9_000),
            node("dead", 1, 6_999),
        ];
        let (total, confirmed, lagging) = propagation("a", 8, &nodes, now, second);
        assert_eq!(
            (total, confirmed),
            (3, 2),
            "the writer, b; c lags; dead is not waited for"
        );
        assert_eq!(lagging.len(), 1);
        assert_eq!(
            (lagging[0].node_id.as_str(), lagging[0].applied_seq),
            ("c", 7)
        );
        let (total, confirmed, lagging) = propagation("a", 7, &nodes, now, second);
        assert_eq!((total, confirmed, lagging.len()), (3, 3, 0));
        // The writer's own heartbeat may not be stored yet: it counts all the same.
        assert_eq!(propagation("z", 9, &[], now, second).0, 1);
        assert_eq!(propagation("z", 9, &[], now, second).1, 1);
        assert!(is_live(Timestamp::from_unix_millis(7_000), now, second));
        assert!(!is_live(Timestamp::from_unix_millis(6_999), now, second));
        assert!(
            is_live(Timestamp::from_unix_millis(11_000), now, second),
            "a clock ahead"
        );
    }

    #[test]
    fn merges_reread_a_margin_before_the_last_one() {
        let last = Timestamp::from_unix_millis(100_000);
        assert_eq!(
            merge_since(last, Duration::from_secs(5)),
            Timestamp::from_unix_millis(80_000)
        );
    }
}
