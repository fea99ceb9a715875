//! Whether the store works: the outage state, the write probe, and the check that the database
//! file is still the one opened.
//!
//! Invariants:
//! - A read works all along on a full disk, so a `SELECT 1` alone would say "up". An operation
//!   failing with `Unavailable` ([`SqliteStore::fail`]) marks the store down; while it is down
//!   `ping` writes the one-row `write_probe` table, and any committed write marks it up again.
//!   No probe writes while healthy.
//! - `ping`, every write and every read transaction compare the database file's device and inode
//!   with those seen at open ([`SqliteStore::check_file`]): writes to a deleted or replaced file
//!   would be acknowledged and then lost, and reads would answer from the wrong database, so
//!   they are refused with `Unavailable`, naming where a deleted file's content can still be
//!   copied from.

use std::path::Path;

use super::SqliteStore;
use super::errors::classify;
use crate::StoreError;
use crate::rows::unix_millis_now;

/// Which file a path named when the store opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    device: u64,
    inode: u64,
}

#[cfg(unix)]
pub(super) fn file_id(path: &Path) -> std::io::Result<Option<FileId>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(Some(FileId {
        device: meta.dev(),
        inode: meta.ino(),
    }))
}

#[cfg(not(unix))]
pub(super) fn file_id(path: &Path) -> std::io::Result<Option<FileId>> {
    std::fs::metadata(path).map(|_| None)
}

/// Descriptors of this process still open on `path` after it was deleted (Linux), to say where
/// its content can still be copied from.
fn deleted_descriptors(path: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let wanted = path.display().to_string();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.display().to_string();
        if let Some(name) = target.strip_suffix(" (deleted)")
            && (name == wanted || name == format!("{wanted}-wal"))
            && !found.iter().any(|(n, _): &(String, String)| *n == name)
        {
            found.push((
                name.to_owned(),
                entry.file_name().to_string_lossy().into_owned(),
            ));
        }
    }
    let pid = std::process::id();
    found
        .into_iter()
        .map(|(name, fd)| format!("/proc/{pid}/fd/{fd} to {name}"))
        .collect()
}

impl SqliteStore {
    /// `ping`: the database answers, is the file opened, and takes a write if the last
    /// operation met an outage.
    pub(super) async fn check_health(&self) -> Result<(), StoreError> {
        self.check_file("ping")?;
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| self.fail("ping", e))?;
        if self.current_outage().is_some() {
            self.probe_write().await?;
        }
        Ok(())
    }

    /// A failed operation as a `StoreError`, naming the database and what was being done. An
    /// outage marks the store down until a write succeeds.
    pub(super) fn fail(&self, doing: &str, err: sqlx::Error) -> StoreError {
        let err = classify(&self.location, doing, err);
        if let StoreError::Unavailable(message) = &err {
            self.set_outage(Some(message.clone()));
        }
        err
    }

    /// Marks the store down (`Some`, with the outage's message) or up (`None`), logging the
    /// change.
    pub(super) fn set_outage(&self, outage: Option<String>) {
        let mut slot = self
            .outage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_some() != outage.is_some() {
            match &outage {
                Some(m) => tracing::error!(event = "store.down", "store writes fail: {m}"),
                None => tracing::info!(event = "store.up", "store writes work again"),
            }
        }
        *slot = outage;
    }

    fn current_outage(&self) -> Option<String> {
        self.outage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `Unavailable` when the database file is no longer the one opened: deleted, or another
    /// file moved to its path. Writes would go to a file nothing reads again.
    pub(super) fn check_file(&self, doing: &str) -> Result<(), StoreError> {
        let (Some(path), Some(opened)) = (&self.file, self.identity) else {
            return Ok(());
        };
        let location = &self.location;
        let why = match file_id(path) {
            Ok(Some(now)) if now == opened => return Ok(()),
            Ok(None) => return Ok(()),
            Ok(Some(_)) => format!(
                "the file was replaced while keyroll was running (another file is at \
                 {location} now); writes are refused, they would go to the replaced file. Put \
                 the original file back, or stop keyroll and restore the database"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let copies = deleted_descriptors(path);
                let rescue = if copies.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; while this process runs, its content can still be copied back: {}",
                        copies.join(", ")
                    )
                };
                format!(
                    "the file was deleted while keyroll was running; writes are refused, they \
                     would go to the deleted file and be lost. Restore the database from a \
                     backup{rescue}"
                )
            }
            Err(e) => format!("cannot check the database file: {e}"),
        };
        Err(StoreError::Unavailable(format!(
            "SQLite database {location}: {doing}: {why}"
        )))
    }

    /// Writes the probe row: whether a write goes through now.
    async fn probe_write(&self) -> Result<(), StoreError> {
        let doing = "writing a probe row after a failed write";
        let mut tx = self.begin_write(doing).await?;
        sqlx::query(
            "INSERT INTO write_probe (only, at) VALUES (1, ?1) \
             ON CONFLICT (only) DO UPDATE SET at = excluded.at",
        )
        .bind(unix_millis_now())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(doing, e))?;
        self.commit_write(tx, doing).await
    }
}
