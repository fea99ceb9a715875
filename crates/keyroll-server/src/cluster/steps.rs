//! The cluster steps the loops of [`crate::jobs`] run on the shared state: catching up with the
//! change log, the full reload, heartbeats, the leader lease, pruning, the adoption merge, the
//! wait for propagation and `/v1/cluster`'s answer. The rules they follow are the pure parts of
//! [`crate::cluster`].

use std::time::{Duration, Instant};

use keyroll_core::rfc3339;
use keyroll_proto as proto;
use keyroll_store::StoreError;

use super::*;
use crate::state::AppState;

/// Applies the change log from what this node applied up to its end. Returns how many
/// changes by other nodes were applied.
pub async fn catch_up(state: &AppState) -> Result<usize, StoreError> {
    let cluster = &state.cluster;
    let mut foreign = 0;
    loop {
        let applied = cluster.applied();
        let batch = state.store.changes_since(applied, CHANGE_BATCH).await?;
        let plan = cluster.progress.lock().plan(&batch);
        match plan {
            Plan::UpToDate => break,
            Plan::Reload => {
                full_reload(state, Resync::Pruned).await?;
                return Ok(foreign);
            }
            Plan::Apply { ids, ca, through } => {
                if ca {
                    // The CA's rebuild job reads the store's CA state on this tick.
                    state.ca_changed();
                }
                let consumers = state.store.consumers_by_id(&ids).await?;
                for c in &consumers {
                    state.index.upsert(c.revision, &c.consumer);
                }
                cluster.progress.lock().advance(through);
                if !ids.is_empty() {
                    foreign += ids.len();
                    tracing::debug!(
                        event = "cluster.applied",
                        node_id = %cluster.node_id,
                        from_seq = applied + 1,
                        applied_seq = through,
                        consumers = ids.len(),
                        "applied changes {} to {through} ({} consumers written by other nodes)",
                        applied + 1,
                        ids.len()
                    );
                }
            }
        }
        if batch.len() < CHANGE_BATCH as usize {
            break;
        }
    }
    if foreign > 0 {
        // Agents' long-polls wait on it, and waiting writers on other nodes on our heartbeat.
        state.changed();
        cluster.heartbeat_wake.notify_one();
    }
    Ok(foreign)
}

/// Reloads every consumer into the index (revision-guarded, so nothing newer is overwritten).
pub async fn full_reload(state: &AppState, why: Resync) -> Result<(), StoreError> {
    let started = Instant::now();
    let before = state.cluster.applied();
    // The head first: every change up to it is committed, so the load sees it.
    let head = state.store.change_head().await?;
    let consumers = state.store.load_all().await?;
    for c in &consumers {
        state.index.upsert(c.revision, &c.consumer);
    }
    state.cluster.loaded_at(head);
    state.changed();
    state.ca_changed();
    state.cluster.heartbeat_wake.notify_one();
    tracing::info!(
        event = "cluster.resync",
        reason = why.as_str(),
        node_id = %state.cluster.node_id,
        from_seq = before,
        applied_seq = state.cluster.applied(),
        consumers = consumers.len(),
        millis = started.elapsed().as_millis() as u64,
        "reloaded {} consumers into the index ({})",
        consumers.len(),
        why.as_str()
    );
    Ok(())
}

/// Logs a re-read of the log after a lost notification connection.
pub fn log_listener_lost(state: &AppState, error: &StoreError) {
    tracing::warn!(
        event = "cluster.resync",
        reason = Resync::ListenerLost.as_str(),
        node_id = %state.cluster.node_id,
        applied_seq = state.cluster.applied(),
        error = %error,
        "lost the change notifications ({error}); reading the change log and listening again"
    );
}

/// Sends this node's heartbeat, and updates the cluster metrics.
pub async fn heartbeat(state: &AppState) -> Result<(), StoreError> {
    let record = state.cluster.record(state.clock.now());
    state.store.heartbeat_node(&record).await?;
    let head = state.store.change_head().await?;
    state
        .observer
        .set_cluster(record.applied_seq, head - record.applied_seq, record.leader);
    Ok(())
}

/// Takes or renews the leader lease, and announces a change of leadership.
pub async fn renew_lease(state: &AppState) {
    let cluster = &state.cluster;
    let ttl = cluster.settings.lease_ttl;
    let started = Instant::now();
    let now = state.clock.now();
    // Bounded: an answer after the ttl could no longer make this node leader anyway.
    let answer = tokio::time::timeout(
        ttl,
        state
            .store
            .acquire_lease(LEADER_LEASE, &cluster.node_id, now, ttl),
    )
    .await;
    let outcome = match answer {
        Ok(Ok(Some(lease))) => LeaseOutcome::Held(lease.term),
        Ok(Ok(None)) => LeaseOutcome::Refused,
        Ok(Err(e)) => {
            tracing::warn!(event = "cluster.lease_failed", node_id = %cluster.node_id, error = %e, "could not renew the leader lease: {e}");
            LeaseOutcome::Failed
        }
        Err(_) => {
            tracing::warn!(event = "cluster.lease_failed", node_id = %cluster.node_id, "the leader lease renewal timed out");
            LeaseOutcome::Failed
        }
    };
    let changes = cluster
        .leadership
        .lock()
        .renewed(outcome, started, ttl, Instant::now());
    for change in changes {
        announce(state, change);
    }
}

fn announce(state: &AppState, change: LeaderChange) {
    let node_id = &state.cluster.node_id;
    match change {
        LeaderChange::Acquired(term) => {
            tracing::info!(event = "cluster.leader_acquired", node_id = %node_id, term, "this node leads (term {term}): it runs the sweeper, the schedule, the webhook sender and change-log pruning");
            state.cluster.leader_acquired.send_modify(|n| *n += 1);
            state.cluster.heartbeat_wake.notify_one();
        }
        LeaderChange::Lost { term, reason } => {
            tracing::warn!(event = "cluster.leader_lost", node_id = %node_id, term, reason, "this node no longer leads (term {term}): {reason}");
            state.cluster.heartbeat_wake.notify_one();
        }
    }
}

/// Gives the lease up (clean shutdown), so another node leads at once.
pub async fn resign(state: &AppState) {
    let term = state.cluster.leadership.lock().resign();
    if let Some(term) = term {
        if let Err(e) = state
            .store
            .release_lease(LEADER_LEASE, &state.cluster.node_id)
            .await
        {
            tracing::warn!(event = "cluster.lease_failed", error = %e, "could not release the leader lease: {e}; another node takes it when it expires");
        }
        announce(
            state,
            LeaderChange::Lost {
                term,
                reason: "shutting down",
            },
        );
    }
}

/// Forgets this node (clean shutdown): it is no longer waited for.
pub async fn leave(state: &AppState) {
    if let Err(e) = state.store.remove_node(&state.cluster.node_id).await {
        tracing::warn!(event = "cluster.leave_failed", error = %e, "could not remove this node from the cluster: {e}; it stops counting once its heartbeat is old");
    }
}

/// The leader's upkeep: prunes the log and forgets nodes silent for [`CHANGE_RETENTION`].
pub async fn prune(state: &AppState) {
    let before = state.clock.now().saturating_sub(CHANGE_RETENTION);
    match state.store.prune_changes(before).await {
        Ok(n) if n > 0 => {
            tracing::debug!(
                event = "cluster.pruned",
                changes = n,
                "pruned {n} changes from the log"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(event = "cluster.prune_failed", error = %e, "could not prune the change log: {e}");
        }
    }
    let Ok(nodes) = state.store.list_nodes().await else {
        return;
    };
    for n in nodes.iter().filter(|n| n.heartbeat_at < before) {
        if state.store.remove_node(&n.node_id).await.is_ok() {
            tracing::info!(event = "cluster.node_forgotten", node_id = %n.node_id, heartbeat_at = %rfc3339(n.heartbeat_at), "forgot node {}: no heartbeat since {}", n.node_id, rfc3339(n.heartbeat_at));
        }
    }
}

/// After a usage flush: takes in the last uses other nodes flushed since the last merge, so
/// the leader's idle and stall rules see every node's traffic.
pub async fn merge_adoption(state: &AppState) {
    let now = state.clock.now();
    state.cluster.usage_flushed(now);
    let since = merge_since(
        *state.cluster.merged_at.lock(),
        state.config.usage_flush_interval,
    );
    match state.store.last_used_since(since).await {
        Ok(seen) => {
            state.index.seed_last_used(&seen);
            *state.cluster.merged_at.lock() = now;
        }
        Err(e) => {
            tracing::warn!(event = "cluster.merge_failed", error = %e, "could not read other nodes' usage: {e}; will retry after the next flush");
        }
    }
}

/// Waits up to `wait` until every live node applied change `seq`; the answer's
/// `propagation`.
pub async fn wait_for(state: &AppState, seq: i64, wait: Duration) -> proto::Propagation {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
    let interval = state.cluster.settings.heartbeat_interval;
    let mut last = (1, 1, Vec::new());
    loop {
        if let Ok(nodes) = state.store.list_nodes().await {
            last = propagation(
                &state.cluster.node_id,
                seq,
                &nodes,
                state.clock.now(),
                interval,
            );
            if last.2.is_empty() {
                break;
            }
        }
        if tokio::time::Instant::now() + WAIT_POLL > deadline {
            break;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
    let (nodes, confirmed, lagging) = last;
    proto::Propagation {
        change_seq: seq,
        nodes,
        confirmed,
        within_ms: lagging
            .is_empty()
            .then(|| u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        lagging,
    }
}

/// `GET /v1/cluster`: the nodes, the lease and the head of the log.
pub async fn status(state: &AppState) -> Result<proto::ClusterStatus, StoreError> {
    let head = state.store.change_head().await?;
    let nodes = state.store.list_nodes().await?;
    let lease = state.store.get_lease(LEADER_LEASE).await?;
    let now = state.clock.now();
    let interval = state.cluster.settings.heartbeat_interval;
    let holder = lease
        .as_ref()
        .filter(|l| l.expires_at > now)
        .map(|l| l.holder.clone());
    Ok(proto::ClusterStatus {
        this_node: state.cluster.node_id.clone(),
        change_head: head,
        lease: lease.map(|l| proto::ClusterLease {
            live: l.expires_at > now,
            holder: l.holder,
            term: l.term,
            acquired_at: rfc3339(l.acquired_at),
            expires_at: rfc3339(l.expires_at),
        }),
        nodes: nodes
            .into_iter()
            .map(|n| {
                // This node's own row is as of its last heartbeat; its memory is newer (a write
                // it just made is applied here before the next heartbeat says so).
                let applied_seq = if n.node_id == state.cluster.node_id {
                    n.applied_seq.max(state.cluster.applied())
                } else {
                    n.applied_seq
                };
                proto::ClusterNode {
                    live: is_live(n.heartbeat_at, now, interval),
                    leader: holder.as_deref() == Some(n.node_id.as_str()),
                    lag: head.saturating_sub(applied_seq).max(0),
                    node_id: n.node_id,
                    address: n.address,
                    version: n.version,
                    started_at: rfc3339(n.started_at),
                    heartbeat_at: rfc3339(n.heartbeat_at),
                    applied_seq,
                    usage_flushed_at: n.usage_flushed_at.map(rfc3339),
                }
            })
            .collect(),
    })
}
