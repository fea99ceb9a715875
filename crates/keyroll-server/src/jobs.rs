//! The server's background loops, one per task. Each loop only paces and wires: it calls the
//! step function of its module (what is due at `now`, one flush) and hands results on, so the
//! modules themselves never hold the shared state.

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

/// The lifecycle sweeper: one [`crate::sweeper::sweep_once`] every `sweep_interval` until
/// `stop`.
pub async fn sweeper(state: Arc<AppState>, stop: watch::Receiver<bool>) {
    every(state.config.sweep_interval, stop, || async {
        crate::sweeper::sweep_once(&state).await;
    })
    .await;
}

/// The rotation schedule: one [`crate::schedule::run_once`] every `schedule_interval` until
/// `stop`. The first run is at start, so schedules missed while the server was down are caught
/// up then (once: a due time is a function of the active version, not of missed periods).
pub async fn scheduler(state: Arc<AppState>, stop: watch::Receiver<bool>) {
    every(state.config.schedule_interval, stop, || async {
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
        }
        Flushed::Failed => state.observer.usage_flush_failed(),
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
    let mut tick = tokio::time::interval(state.config.webhooks.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.webhook_wake.notified() => {}
            _ = stop.changed() => return,
        }
        sender.tick(&state).await;
    }
}
