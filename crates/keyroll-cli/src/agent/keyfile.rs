//! The key file the app reads: read, and replaced atomically (a temporary file in the same
//! directory, synced, renamed over the old one, the directory synced), mode 0600, keeping the
//! old file's owner and group, so a reader sees the old key or the new one and never a part of
//! either, whatever moment the agent is killed at.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The key in `path` (its first line, trimmed), `None` when the file is missing or empty.
pub fn read(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .next()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where `--keep-previous` keeps the key that was replaced.
pub fn previous_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".previous");
    PathBuf::from(p)
}

/// What [`replace`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The file already held this key: nothing was written.
    Unchanged,
    /// The file now holds the new key.
    Replaced,
}

/// Replaces the key in `path` with `key` unless it already holds it. With `keep_previous`,
/// the key it held is first written (the same way) to `PATH.previous`.
pub fn replace(path: &Path, key: &str, keep_previous: bool) -> io::Result<Written> {
    let old = read(path)?;
    if old.as_deref() == Some(key) {
        return Ok(Written::Unchanged);
    }
    let owner = fs::metadata(path).ok().map(|m| (m.uid(), m.gid()));
    if keep_previous && let Some(old) = &old {
        write_atomically(&previous_path(path), old, owner)?;
    }
    write_atomically(path, key, owner)?;
    Ok(Written::Replaced)
}

/// The temporary files of this key file: `.NAME.keyroll-tmp.*` beside it.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.keyroll-tmp.")
}

fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Removes temporary files a killed agent left beside `path` (they may hold a key).
pub fn remove_leftovers(path: &Path) {
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(directory(path)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes `text` and a newline to `path` through a synced temporary file renamed over it.
pub fn write_atomically(path: &Path, text: &str, owner: Option<(u32, u32)>) -> io::Result<()> {
    let dir = directory(path);
    let tmp = dir.join(format!("{}{}", temp_prefix(path), std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // An existing temporary file keeps its mode through `open`: set it.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            let m = f.metadata()?;
            if (m.uid(), m.gid()) != (uid, gid) {
                // Only root (or the owner, for a group it is in) may; otherwise the file is ours.
                match std::os::unix::fs::fchown(&f, Some(uid), Some(gid)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                    Err(e) => return Err(e),
                }
            }
        }
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replaces_atomically_with_0600_and_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.key");
        assert_eq!(read(&path).unwrap(), None);
        fs::write(&path, "old-key\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let before = fs::metadata(&path).unwrap().ino();
        assert_eq!(
            replace(&path, "old-key", false).unwrap(),
            Written::Unchanged
        );
        assert_eq!(fs::metadata(&path).unwrap().ino(), before, "not rewritten");
        assert_eq!(mode(&path), 0o640);

        assert_eq!(replace(&path, "new-key", false).unwrap(), Written::Replaced);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new-key\n");
        assert_eq!(mode(&path), 0o600);
        assert!(!previous_path(&path).exists());

        assert_eq!(replace(&path, "third", true).unwrap(), Written::Replaced);
        assert_eq!(
            fs::read_to_string(previous_path(&path)).unwrap(),
            "new-key\n"
        );
        assert_eq!(mode(&previous_path(&path)), 0o600);
        assert_eq!(read(&path).unwrap().as_deref(), Some("third"));
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn keeps_owner_and_group_and_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.key");
        fs::write(&path, "a\n").unwrap();
        let m = fs::metadata(&path).unwrap();
        replace(&path, "b", false).unwrap();
        let n = fs::metadata(&path).unwrap();
        assert_eq!((n.uid(), n.gid()), (m.uid(), m.gid()));

        let stale = dir.path().join(format!("{}123", temp_prefix(&path)));
        fs::write(&stale, "half a key").unwrap();
        fs::write(dir.path().join("other"), "x").unwrap();
        remove_leftovers(&path);
        assert!(!stale.exists());
        assert!(dir.path().join("other").exists());
        assert!(path.exists());
    }

    #[test]
    fn as_root_the_new_file_gets_the_old_owner_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.key");
        fs::write(&path, "a\n").unwrap();
        if std::os::unix::fs::chown(&path, Some(4321), Some(4322)).is_err() {
            // Not root: giving a file away is not allowed, and nothing here to check.
            return;
        }
        replace(&path, "b", true).unwrap();
        let m = fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322));
        let p = fs::metadata(previous_path(&path)).unwrap();
        assert_eq!((p.uid(), p.gid()), (4321, 4322));
    }

    #[test]
    fn reads_the_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, "  kr_x  \nignored\n").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some("kr_x"));
        fs::write(&path, "\n").unwrap();
        assert_eq!(read(&path).unwrap(), None);
    }
}
