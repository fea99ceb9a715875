//! The certificate files the agent keeps in `--cert-dir`: `cert.pem` (leaf, then intermediate),
//! `key.pem` (0600) and `ca.pem` (the trust bundle), replaced as one set so that `kill -9` at any
//! moment never leaves `cert.pem` and `key.pem` from two different certificates.
//!
//! Three renames cannot be one atomic step, so the set is written with a roll-forward journal:
//! every new file is first written in full beside its target (`NAME.next`, synced), then the
//! marker `.set-pending` is created and the directory synced — the commit point —, then the
//! `.next` files are renamed over their targets (key first) and the marker removed. [`recover`],
//! run before the agent does anything else, finishes a set whose marker exists (renames the
//! `.next` files still there) and throws away `.next` files without a marker (a set that never
//! reached its commit point). So after a crash and a restart the directory holds the old set or
//! the new one, never a mix. The app is told to reload only once the whole set is in place.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The files of a set, in the order they are renamed into place.
const FILES: [(&str, u32); 3] = [("key.pem", 0o600), ("cert.pem", 0o644), ("ca.pem", 0o644)];

/// The commit marker.
const PENDING: &str = ".set-pending";

/// A certificate set's contents (PEM text). `Debug` never shows the key.
pub struct CertSet<'a> {
    /// Leaf, then intermediate.
    pub cert: &'a str,
    /// The private key (PKCS#8 PEM).
    pub key: &'a str,
    /// The trust bundle.
    pub ca: &'a str,
}

impl std::fmt::Debug for CertSet<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSet")
            .field("cert_bytes", &self.cert.len())
            .field("key", &"<redacted>")
            .field("ca_bytes", &self.ca.len())
            .finish()
    }
}

impl CertSet<'_> {
    fn content(&self, name: &str) -> &str {
        match name {
            "key.pem" => self.key,
            "cert.pem" => self.cert,
            _ => self.ca,
        }
    }
}

/// Replaces the set in `dir`.
pub fn write_set(dir: &Path, set: &CertSet<'_>) -> io::Result<()> {
    write_set_steps(dir, set, usize::MAX)
}

/// Replaces only `ca.pem` (a bundle refresh without a new certificate): one file, so the
/// ordinary temporary-file-and-rename is atomic on its own.
pub fn write_ca(dir: &Path, ca: &str) -> io::Result<()> {
    write_synced(&dir.join("ca.pem.next"), ca, 0o644)?;
    fs::rename(dir.join("ca.pem.next"), dir.join("ca.pem"))?;
    sync_dir(dir)
}

/// [`write_set`], stopping after `steps` durable steps (tests kill it at every one).
#[cfg_attr(not(test), allow(dead_code))]
fn write_set_steps(dir: &Path, set: &CertSet<'_>, steps: usize) -> io::Result<()> {
    let mut done = 0usize;
    let mut step = || {
        done += 1;
        done > steps
    };
    for (name, mode) in FILES {
        write_synced(&dir.join(format!("{name}.next")), set.content(name), mode)?;
        if step() {
            return Ok(());
        }
    }
    sync_dir(dir)?;
    fs::File::create(dir.join(PENDING))?.sync_all()?;
    sync_dir(dir)?;
    if step() {
        return Ok(());
    }
    for (name, _) in FILES {
        fs::rename(dir.join(format!("{name}.next")), dir.join(name))?;
        if step() {
            return Ok(());
        }
    }
    sync_dir(dir)?;
    fs::remove_file(dir.join(PENDING))?;
    sync_dir(dir)
}

/// Brings `dir` to a whole set after a crash: a committed set is finished, an uncommitted one
/// discarded. Says whether a committed set was finished (the app then needs its reload).
pub fn recover(dir: &Path) -> io::Result<bool> {
    let committed = dir.join(PENDING).exists();
    for (name, _) in FILES {
        let next = dir.join(format!("{name}.next"));
        if !next.exists() {
            continue;
        }
        if committed {
            fs::rename(&next, dir.join(name))?;
        } else {
            fs::remove_file(&next)?;
        }
    }
    sync_dir(dir)?;
    if committed {
        fs::remove_file(dir.join(PENDING))?;
        sync_dir(dir)?;
    }
    Ok(committed)
}

fn write_synced(path: &Path, text: &str, mode: u32) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    // A leftover file keeps its old mode through `open`: set it.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        fs::read_to_string(dir.join(name)).unwrap()
    }

    const OLD: CertSet<'static> = CertSet {
        cert: "cert-1",
        key: "key-1",
        ca: "ca-1",
    };
    const NEW: CertSet<'static> = CertSet {
        cert: "cert-2",
        key: "key-2",
        ca: "ca-2",
    };

    #[test]
    fn a_crash_at_any_step_leaves_the_old_set_or_the_new_one() {
        // 3 files written, the commit, 3 renames, the marker removed: stop after each.
        for steps in 0..=8 {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            write_set(d, &OLD).unwrap();
            write_set_steps(d, &NEW, steps).unwrap();
            // Restart.
            let finished = recover(d).unwrap();
            let pair = (read(d, "cert.pem"), read(d, "key.pem"), read(d, "ca.pem"));
            let old = ("cert-1".into(), "key-1".into(), "ca-1".into());
            let new = ("cert-2".into(), "key-2".into(), "ca-2".into());
            if steps < 3 {
                assert_eq!(pair, old, "stopped after {steps} steps");
                assert!(!finished);
            } else {
                assert_eq!(pair, new, "stopped after {steps} steps");
                assert_eq!(finished, steps < 7, "stopped after {steps} steps");
            }
            let left: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".next") || n == PENDING)
                .collect();
            assert!(left.is_empty(), "{left:?} after {steps} steps");
        }
    }

    #[test]
    fn the_key_is_0600_and_debug_hides_it() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), &NEW).unwrap();
        let mode = |n: &str| {
            fs::metadata(dir.path().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("key.pem"), 0o600);
        assert_eq!(mode("cert.pem"), 0o644);
        assert!(!format!("{NEW:?}").contains("key-2"));
        write_ca(dir.path(), "ca-3").unwrap();
        assert_eq!(read(dir.path(), "ca.pem"), "ca-3");
        assert_eq!(read(dir.path(), "key.pem"), "key-2");
    }
}
