//! The server's background loops, one per task. Each loop only paces and wires: it calls the
//! step function of its module (what is due at `now`, one flush) and hands results on, so the
//! modules themselves never hold the shared state.
//!
//! With several nodes on one database, the sweeper, the schedule, the webhook sender and the
//! change-log pruning run only on the leader ([`AppState::is_leader`], checked before every
//! step, and they run at once when this node becomes leader); the usage flusher, the
//! observer, the heartbeat, the lease and the change applier run on every node.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::state::AppState;
use crate::usage::Flushed;

/// Runs `step` every `interval` until `stop` changes (a background task's loop: missed ticks
/// are delayed, not bunched). The first step runs at once.
pub async fn every<F, Fut>(interval: Duration, mut stop: watch::Receiver<bool>, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        step().await;
    }
}

/// The observer: flood summaries, histogram upkeep and the store ping, until `stop`; then the
/// summaries still pending.
pub async fn observer(state: Arc<AppState>, stop: watch::Receiver<bool>) {
    let mut n: u64 = 0;
    every(crate::observe::TICK_EVERY, stop, || {
        let due = state.observer.tick(n, state.clock.now());
        n = n.wrapping_add(1);
        let state = Arc::clone(&state);
        async move {
            if due.ping_store {
                let up = matches!(
                    tokio::time::timeout(crate::observe::PING_TIMEOUT, state.store.ping()).await,
                    Ok(Ok(()))
                );
                state.observer.set_store_up(up);
            }
        }
    })
    .await;
    state.observer.finish();
}

/// Runs `step` every `interval` while this node leads, until `stop`: a tick on a follower is
/// skipped, and becoming leader runs a step at once (so a new leader does not wait a whole
/// schedule interval).
pub async fn every_as_leader<F, Fut>(
    state: &AppState,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut acquired = state.cluster.leader_acquired.subscribe();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Ok(()) = acquired.changed() => {}
            _ = stop.changed() => return,
        }
        if state.is_leader() {
            step().await;
        }
    }
}

/// The lifecycle sweeper: one [`crate::sweeper::sweep_once`] every `sweep_interval` while
/// leader, until `stop`.
pub async fn sweeper(state: Arc<AppState>, stop: watch::Receiver<bool>) {
    every_as_leader(&state, state.config.sweep_interval, stop, || async {
        crate::sweeper::sweep_once(&state).await;
    })
    .await;
}

/// The rotation schedule: one [`crate::schedule::run_once`] every `schedule_interval` while
/// leader, until `stop`. The first run is at start (or when this node becomes leader), so
/// schedules missed while the server was down are caught up then (once: a due time is a
/// function of the active version, not of missed periods).
pub async fn scheduler(state: Arc<AppState>, stop: watch::Receiver<bool>) {
    every_as_leader(&state, state.config.schedule_interval, stop, || async {
        crate::schedule::run_once(&state).await;
        // Delivered but never seen: the app did not reload its key.
        if let Err(e) = crate::service::delivery::report_unseen(&state).await {
            tracing::warn!(event = "schedule.failed", error = %e, "could not check delivered versions for traffic");
        }
    })
    .await;
}

/// Usage: a flush every `usage_flush_interval` until `stop`, then a last one.
pub async fn usage(state: Arc<AppState>, stop: watch::Receiver<bool>) {
    every(state.config.usage_flush_interval, stop, || {
        flush_usage(&state)
    })
    .await;
    flush_usage(&state).await;
}

/// One usage flush, its outcome counted in the metrics (also run by requests that need the
/// stored usage up to date).
pub async fn flush_usage(state: &AppState) {
    match state.usage.flush_step(state.store.as_ref()).await {
        Flushed::Written { versions, took } => {
            state
                .observer
                .usage_flushed(took, versions, state.clock.now());
            // Other nodes' traffic, so that idle and stall rules here see every node's.
            crate::cluster::steps::merge_adoption(state).await;
        }
        Flushed::Failed => state.observer.usage_flush_failed(),
    }
}

/// The CA's upkeep on every node: flushes the handshake uses counted in memory (every usage
/// flush interval, and at stop), and rebuilds the trust store when the bundle may have changed
/// (`AppState::ca_changed`: a `ca` change from the log, a full reload).
pub async fn ca(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut changed = state.ca_changes.subscribe();
    let mut tick = tokio::time::interval(state.config.usage_flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => flush_handshakes(&state).await,
            r = changed.changed() => {
                if r.is_err() {
                    break;
                }
                if let Err(e) = state.reload_ca().await {
                    tracing::error!(event = "ca.reload_failed", error = %e, "could not rebuild the CA trust store (the previous one stays): {e}");
                }
            }
        }
    }
    flush_handshakes(&state).await;
}

/// Writes the handshake uses counted since the last flush; a failed write puts them back.
pub async fn flush_handshakes(state: &AppState) {
    let batch = state.ca.take_handshakes();
    if batch.is_empty() {
        return;
    }
    if let Err(e) = state.store.record_handshakes(&batch).await {
        tracing::warn!(event = "ca.handshakes_flush_failed", error = %e, "could not record {} handshake uses (kept for the next flush): {e}", batch.len());
        state.ca.restore_handshakes(batch);
    }
}

/// The CA's periodic work, on the leader only (one writer, like the sweeper): each issuer's CRL
/// renewed at half of its validity; with a rotation under way, the timeline's next step.
pub async fn ca_timeline(state: Arc<AppState>, stop: watch::Receiver<bool>) {
    every_as_leader(&state, state.config.sweep_interval, stop, || async {
        ca_step(&state).await;
    })
    .await;
}

/// One round of [`ca_timeline`] (also what tests run on a manual clock).
pub async fn ca_step(state: &AppState) {
    // One step per transaction, as many as are due (a timeline that passed while the server
    // was down catches up), bounded so a step that keeps failing cannot spin.
    for _ in 0..16 {
        match crate::service::ca::timeline_step(state).await {
            Ok(keyroll_core::ca_timeline::Step::Nothing) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(event = "ca.timeline_failed", error = %e, "could not carry out the CA timeline's next step (retried next round): {e}");
                break;
            }
        }
    }
    if let Err(e) = crate::service::ca::refresh_crls(state).await {
        tracing::warn!(event = "ca.crl_refresh_failed", error = %e, "could not refresh the CRLs (the current ones stay until their nextUpdate): {e}");
    }
}

/// The webhook sender: one [`crate::webhooks::sender::Sender::tick`] every `[webhooks]
/// interval`, and at once when a write appended events (`AppState::webhook_wake`), until `stop`.
pub async fn webhooks(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let sender = match crate::webhooks::sender::Sender::new(&state.config.webhooks) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(event = "webhook.sender_unavailable", error = %e, "webhooks will not be sent: {e}");
            return;
        }
    };
    let mut acquired = state.cluster.leader_acquired.subscribe();
    let mut tick = tokio::time::interval(state.config.webhooks.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.webhook_wake.notified() => {}
            Ok(()) = acquired.changed() => {}
            _ = stop.changed() => return,
        }
        // Only the leader sends: two senders would deliver each event twice.
        if state.is_leader() {
            sender.tick(&state).await;
        }
    }
}

/// The heartbeat: this node's record every `cluster.heartbeat_interval`, and at once after it
/// applied changes or its leadership changed, until `stop`; then the node leaves the cluster.
pub async fn heartbeat(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.cluster.settings.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.cluster.heartbeat_wake.notified() => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = crate::cluster::steps::heartbeat(&state).await {
            tracing::warn!(event = "cluster.heartbeat_failed", error = %e, "could not record this node's heartbeat: {e}");
        }
    }
    crate::cluster::steps::leave(&state).await;
}

/// The leader lease: taken or renewed every `cluster.heartbeat_interval` until `stop`; then
/// given up, so another node leads at once.
pub async fn lease(state: Arc<AppState>, stop: watch::Receiver<bool>) {
    every(state.cluster.settings.heartbeat_interval, stop, || {
        crate::cluster::steps::renew_lease(&state)
    })
    .await;
    crate::cluster::steps::resign(&state).await;
}

/// The leader's upkeep of the change log and the node list, every
/// [`crate::cluster::PRUNE_EVERY`] while leader.
pub async fn prune(state: Arc<AppState>, stop: watch::Receiver<bool>) {
    every_as_leader(&state, crate::cluster::PRUNE_EVERY, stop, || {
        crate::cluster::steps::prune(&state)
    })
    .await;
}

/// The change applier: applies what other nodes committed, in seq order, until `stop`.
///
/// With notifications (PostgreSQL `LISTEN`) it reads the log when one arrives, and every
/// [`crate::cluster::LISTEN_BACKSTOP`] anyway; without (SQLite, or while the connection is
/// lost) every `cluster.poll_interval`. A lost connection is re-opened with a doubling pause,
/// and the log is read from what was applied, so nothing notified meanwhile is missed. Every
/// `cluster.full_reload` the whole index is reloaded, a backstop.
pub async fn changes(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    use crate::cluster::{LISTEN_BACKSTOP, RECONNECT_BACKOFF, Resync};
    use tokio::time::{Instant, sleep_until};

    let settings = &state.cluster.settings;
    let mut listener = match state.store.listen_changes().await {
        Ok(l) => l,
        Err(e) => {
            crate::cluster::steps::log_listener_lost(&state, &e);
            None
        }
    };
    // Whether this store notifies at all (SQLite never does: it is only polled).
    let mut notifies = listener.is_some() || state.store.backend() != "sqlite";
    let mut backoff = RECONNECT_BACKOFF.0;
    let mut reconnect_at = Instant::now() + backoff;
    let mut next_reload = Instant::now() + settings.full_reload;
    let step = |listening: bool| {
        if listening {
            LISTEN_BACKSTOP.max(settings.poll_interval)
        } else {
            settings.poll_interval
        }
    };
    let mut next_poll = Instant::now() + step(listener.is_some());
    loop {
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = notified => match n {
                Ok(seq) if seq <= state.cluster.applied() => continue,
                Ok(_) => {}
                Err(e) => {
                    crate::cluster::steps::log_listener_lost(&state, &e);
                    listener = None;
                    reconnect_at = Instant::now() + backoff;
                }
            },
            () = sleep_until(next_poll) => {
                next_poll = Instant::now() + step(listener.is_some());
            }
            () = sleep_until(next_reload) => {
                next_reload = Instant::now() + settings.full_reload;
                if let Err(e) = crate::cluster::steps::full_reload(&state, Resync::Periodic).await {
                    tracing::warn!(event = "cluster.apply_failed", error = %e, "could not reload the index: {e}; will retry");
                }
                continue;
            }
            _ = stop.changed() => return,
        }
        if listener.is_none() && notifies && Instant::now() >= reconnect_at {
            match state.store.listen_changes().await {
                Ok(Some(l)) => {
                    listener = Some(l);
                    backoff = RECONNECT_BACKOFF.0;
                }
                Ok(None) => notifies = false,
                Err(e) => {
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
                    reconnect_at = Instant::now() + backoff;
                    tracing::debug!(event = "cluster.listen_failed", error = %e, retry_ms = backoff.as_millis() as u64, "could not listen for changes: {e}");
                }
            }
        }
        if let Err(e) = crate::cluster::steps::catch_up(&state).await {
            tracing::warn!(event = "cluster.apply_failed", error = %e, "could not apply the change log: {e}; will retry");
        }
    }
}
