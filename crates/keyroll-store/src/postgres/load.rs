//! The two bulk reads at start: `load_all` (every consumer and version, in one snapshot) and
//! `last_used_all` (every version's last use).
//!
//! Both stream their rows (`fetch`, never a `Vec` of a million rows) and validate each as it
//! arrives through the conversions shared with every backend ([`rows`](crate::rows)). `load_all`
//! is two queries in one REPEATABLE READ, READ ONLY transaction: the consumers, then the
//! versions ordered by consumer id, merged by [`Assembly`](crate::rows::Assembly) (SPEC §12:
//! 1,000,000 versions within 5 s; docs/benchmarks.md has the measurement).

use futures_util::TryStreamExt;
use keyroll_core::{Kid, Timestamp};

use super::PostgresStore;
use super::consumers::Filter;
use super::decode::last_used_from_row;
use crate::{StoreError, StoredConsumer};

/// What `last_used_all` does, in error messages.
const LOADING_LAST_USED: &str = "loading the last use of every version";

/// Every version's last use.
const SELECT_LAST_USED_ALL: &str = "SELECT kid, last_used_at FROM version_usage";

impl PostgresStore {
    /// Every consumer with every version.
    pub(super) async fn load_all_consumers(&self) -> Result<Vec<StoredConsumer>, StoreError> {
        self.read_consumers(Filter::All, "loading all consumers")
            .await
    }

    /// Every version's last use, streamed.
    pub(super) async fn load_last_used(&self) -> Result<Vec<(Kid, Timestamp)>, StoreError> {
        let mut rows = sqlx::query(SELECT_LAST_USED_ALL).fetch(&self.pool);
        let mut all = Vec::new();
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| self.fail(LOADING_LAST_USED, e))?
        {
            all.push(last_used_from_row(&row)?);
        }
        Ok(all)
    }
}
