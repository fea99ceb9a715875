//! What every request handler shares: the index, the store, the configuration.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use keyroll_store::Store;
use keyroll_verify::index::Index;

use crate::clock::{Clock, Randomness};
use crate::config::Config;

/// Shared server state.
#[derive(Debug)]
pub struct AppState {
    /// Every key version, in memory.
    pub index: Index,
    /// Persistent state.
    pub store: Arc<dyn Store>,
    /// Validated configuration.
    pub config: Config,
    /// Set once the index is loaded.
    pub ready: AtomicBool,
    /// Log lines, metrics and history of decisions.
    pub observer: crate::observe::Observer,
    /// Usage gathered since the last flush.
    pub usage: crate::usage::UsageRecorder,
    /// The wall clock: every `now` of the server comes from here.
    pub clock: Clock,
    /// Every random byte of the server comes from here.
    pub randomness: Randomness,
    /// Seals the secrets the server must read again (webhook signing secrets).
    pub master_key: crate::master_key::MasterKey,
    /// Woken after a write that appended events, so the webhook sender does not wait for its
    /// interval.
    pub webhook_wake: tokio::sync::Notify,
    /// Ticks after every committed consumer change and agent delivery: agents' long-polls
    /// (`GET /v1/self?wait=`) wait on it instead of polling.
    pub changes: tokio::sync::watch::Sender<u64>,
    /// Ticks when the CA's trust bundle may have changed (a `ca` change applied from the log,
    /// a full reload): what rebuilds the trust store waits on it.
    pub ca_changes: tokio::sync::watch::Sender<u64>,
    /// This node among the others on its database: identity, applied changes, leadership.
    pub cluster: crate::cluster::Cluster,
    /// keyroll's CA in memory: the trust store, the bundle version, handshake uses.
    pub ca: Arc<crate::ca::CaRuntime>,
}

impl AppState {
    /// Whether this node holds the leader lease: the sweeper, the schedule, the webhook
    /// sender and change-log pruning run only then.
    pub fn is_leader(&self) -> bool {
        self.cluster.is_leader()
    }

    /// Wakes every long-poll: something was committed.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes what rebuilds the CA trust store: the bundle may have changed.
    pub fn ca_changed(&self) {
        self.ca_changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A shared state around a store whose index is loaded by [`AppState::load`].
    pub fn new(store: Arc<dyn Store>, config: Config) -> Arc<AppState> {
        AppState::with(store, config, Clock::system(), Randomness::os())
    }

    /// A shared state with a chosen clock and randomness (tests drive time with a manual clock).
    pub fn with(
        store: Arc<dyn Store>,
        config: Config,
        clock: Clock,
        randomness: Randomness,
    ) -> Arc<AppState> {
        // A state without a data dir (tests, embedding) seals under a key of its own.
        let master_key = match crate::master_key::MasterKey::ephemeral(randomness.clone()) {
            Ok(k) => k,
            Err(_) => crate::master_key::MasterKey::from_bytes([0; 32], randomness.clone()),
        };
        AppState::with_master_key(store, config, clock, randomness, master_key)
    }

    /// A shared state with a chosen clock, randomness and master key (what start-up builds).
    pub fn with_master_key(
        store: Arc<dyn Store>,
        config: Config,
        clock: Clock,
        randomness: Randomness,
        master_key: crate::master_key::MasterKey,
    ) -> Arc<AppState> {
        let usage = crate::usage::UsageRecorder::new(config.usage_enabled);
        let cluster =
            crate::cluster::Cluster::new(config.cluster.clone(), &randomness, clock.now());
        Arc::new(AppState {
            cluster,
            index: Index::new(),
            store,
            observer: crate::observe::Observer::from_config(&config),
            usage,
            config,
            ready: AtomicBool::new(false),
            changes: tokio::sync::watch::Sender::new(0),
            ca_changes: tokio::sync::watch::Sender::new(0),
            clock,
            randomness,
            master_key,
            webhook_wake: tokio::sync::Notify::new(),
            ca: Arc::new(crate::ca::CaRuntime::new()),
        })
    }

    /// Rebuilds the CA's trust store from the store (at start, after a `ca` change). A stored
    /// CA that cannot be made into a trust store is `Corrupt`: start is refused, and a running
    /// node keeps its previous trust store.
    pub async fn reload_ca(&self) -> Result<(), keyroll_store::StoreError> {
        let ca = self.store.ca_state().await?;
        self.ca
            .install(&ca, self.clock.now())
            .map_err(|e| keyroll_store::StoreError::Corrupt(e.to_string()))
    }

    /// Loads every key version from the store into the index.
    pub async fn load(&self) -> Result<u64, keyroll_store::StoreError> {
        // The head before the load: every change up to it is committed, so the load sees it;
        // the change applier takes over from there (re-applying a change is harmless).
        let head = self.store.change_head().await?;
        let consumers = self.store.load_all().await?;
        // Not a reason to refuse to start: that would stop verification for every consumer over
        // one broken row. Every version keeps verifying as stored (rejecting one in memory
        // would lock out its callers silently, against what the store says), the newest is the
        // one commands treat as active, and the next rotation of the consumer repairs it.
        for c in &consumers {
            let extra = c.consumer.extra_active_versions();
            if let (false, Some(newest)) = (extra.is_empty(), c.consumer.active_version()) {
                let listed: Vec<String> = extra.iter().map(ToString::to_string).collect();
                tracing::error!(
                    event = "store.invariant_broken",
                    consumer = %c.consumer.reference(),
                    active_versions = ?listed,
                    newest = %newest.number,
                    "{} has more than one active version ({} besides {}): a consumer has at most one; all keep verifying, {} is treated as the active one; rotate it (or revoke the stray version) to repair",
                    c.consumer.reference(),
                    listed.join(", "),
                    newest.number,
                    newest.number,
                );
            }
        }
        self.index
            .load(consumers.iter().map(|c| (c.revision, &c.consumer)));
        // Usage facts survive restarts: a stall or an idle window spans them.
        let seen = self.store.last_used_all().await?;
        self.index.seed_last_used(&seen);
        self.cluster.loaded_at(head);
        self.reload_ca().await?;
        self.ready.store(true, std::sync::atomic::Ordering::Release);
        Ok(self.index.len())
    }
}
