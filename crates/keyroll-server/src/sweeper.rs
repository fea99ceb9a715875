//! The lifecycle sweeper: writes down what time and traffic decided — deadlines passed, stalls
//! (extended once, loudly), `when-idle` early retirements, versions nobody adopted — for the
//! consumers the index flags, every `interval`.
//!
//! Correctness never waits for it: the hot path decides the same rules from the same facts
//! ([`keyroll_core::effective_state`]). The sweeper makes the stored state, the audit log, the
//! events and the metrics catch up.
//!
//! What is due is a pure rule of the core (`keyroll_core::lifecycle::is_due`, applied to the
//! index by `Index::sweep_scan`); this module is one step, written through the service layer;
//! `jobs::sweeper` paces it.

use keyroll_core::ConsumerRef;

use crate::state::AppState;

/// One pass. Returns how many consumers had something written.
pub async fn sweep_once(state: &AppState) -> usize {
    let at = state.clock.now();
    let mut changed = 0;
    let scan = state
        .index
        .sweep_scan(at, keyroll_core::lifecycle::UNUSED_AFTER);
    for entry in scan.due {
        let Ok(r) = ConsumerRef::parse(entry.reference()) else {
            continue;
        };
        match crate::service::settle(state, &r).await {
            Ok(effects) if !effects.is_empty() => changed += 1,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(event = "sweep.failed", consumer = %r, error = %e, "could not settle {r}; will retry")
            }
        }
    }
    for (environment, n) in scan.retiring_in_use {
        state.observer.set_retiring_in_use(&environment, n);
    }
    changed
}
