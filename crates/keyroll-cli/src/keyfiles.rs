//! New keys written to files (`--out-dir DIR`): `DIR/ENV/NAME.key`, directories 0700, files
//! 0600, never over an existing file. A key is shown once, so a command checks every target
//! with [`refuse_existing`] before it changes anything, and [`write_new`] creates the file only
//! if it is still absent and syncs it before saying it is written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::exit::{Exit, Failure};

/// Where the key of `ENV/NAME` goes under `dir`.
pub fn key_path(dir: &Path, environment: &str, name: &str) -> PathBuf {
    dir.join(environment).join(format!("{name}.key"))
}

/// Where the signing secret of a webhook endpoint registered by `apply` goes under `dir`:
/// `DIR/webhooks/ID.secret`. None for an id that is not `wh_` and letters, digits or `_`
/// (the server's form), so an answer can never name a path outside `DIR/webhooks`.
pub fn webhook_secret_path(dir: &Path, id: &str) -> Option<PathBuf> {
    let ok = id.starts_with("wh_") && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ok.then(|| webhook_dir(dir).join(format!("{id}.secret")))
}

/// The directory of webhook secrets under `dir`.
pub fn webhook_dir(dir: &Path) -> PathBuf {
    dir.join("webhooks")
}

/// Refuses, before any change, a path that exists and is not a directory (a file or a link
/// where new files must be created), naming it.
pub fn refuse_non_directory(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => Err(Failure::new(
            Exit::Error,
            "file_exists",
            format!(
                "{} exists and is not a directory: new secrets are written into it; move it away or choose another path. Nothing was changed.",
                path.display()
            ),
        )
        .into()),
        _ => Ok(()),
    }
}

/// Refuses, naming the first path that exists (as a file, directory or link), so that nothing
/// is changed when a key could not be written.
pub fn refuse_existing(paths: &[PathBuf]) -> anyhow::Result<()> {
    for p in paths {
        if fs::symlink_metadata(p).is_ok() {
            return Err(Failure::new(
                Exit::Error,
                "file_exists",
                format!(
                    "{} already exists: a new key is never written over a file (the key in it may still be in use); move it away or choose another path. Nothing was changed.",
                    p.display()
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Writes `key` (and a newline) to a new file at `path`, mode 0600, creating missing parent
/// directories with mode 0700; fails if the file exists. The file and its directory are synced,
/// so a key reported as written survives a crash.
pub fn write_new(path: &Path, key: &str) -> anyhow::Result<()> {
    let fail = |what: &str, e: std::io::Error| -> anyhow::Error {
        Failure::new(
            Exit::Error,
            "write_failed",
            format!("cannot {what} {}: {e}", path.display()),
        )
        .into()
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("create the directory of", e))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail("create", e))?;
    file.write_all(key.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| fail("write", e))?;
    if let Some(dir) = dir {
        // The new directory entry is durable only once the directory is synced.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail("sync the directory of", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn writes_once_with_private_modes_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(dir.path(), "prod", "billing-app");
        refuse_existing(std::slice::from_ref(&path)).unwrap();
        write_new(&path, "kr_prod_x_y").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "kr_prod_x_y\n");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("prod")), 0o700);
        let err = write_new(&path, "other").unwrap_err();
        assert!(format!("{err:#}").contains("billing-app.key"), "{err:#}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "kr_prod_x_y\n");
        let err = refuse_existing(&[dir.path().join("nope"), path.clone()]).unwrap_err();
        assert!(format!("{err:#}").contains(&path.display().to_string()));
    }

    #[test]
    fn webhook_secrets_go_under_webhooks_by_a_well_formed_id() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            webhook_secret_path(dir.path(), "wh_Ab3").unwrap(),
            dir.path().join("webhooks").join("wh_Ab3.secret")
        );
        assert!(webhook_secret_path(dir.path(), "wh_../x").is_none());
        assert!(webhook_secret_path(dir.path(), "x").is_none());
        refuse_non_directory(&webhook_dir(dir.path())).unwrap();
        fs::write(webhook_dir(dir.path()), "").unwrap();
        let err = refuse_non_directory(&webhook_dir(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("is not a directory"), "{err:#}");
    }
}
