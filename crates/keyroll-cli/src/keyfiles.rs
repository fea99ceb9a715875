//! Writing newly issued keys to files that only their owner can read, for a pipeline to pick
//! up. A key file is never overwritten: a file already there is either an earlier key nobody
//! collected or someone else's, and replacing it silently loses one of them. Callers check every
//! path with [`refuse_existing`] before any key is issued, so a refusal costs no rotation.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Fails, naming every one of them, if any of `paths` already exists (a dangling symlink counts:
/// writing through it would create a file elsewhere).
pub fn refuse_existing(paths: &[PathBuf]) -> anyhow::Result<()> {
    let taken: Vec<String> = paths
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    Err(crate::exit::usage(format!(
        "refusing to overwrite existing key file{} {}: move {} away (or pick another --out-dir) \
         and run again; nothing was rotated",
        if taken.len() == 1 { "" } else { "s" },
        taken.join(", "),
        if taken.len() == 1 { "it" } else { "them" },
    )))
}

/// Writes `key` and a newline to a new file at `path` (mode 0600; missing parent directories are
/// created with mode 0700), and makes it durable (the file and its directory are synced) before
/// returning: the caller reports the key handed on only once it is.
pub fn write_new(path: &Path, key: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create the key file {}", path.display()))?;
    file.write_all(key.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the key file {}", path.display()))?;
    // The new name is durable only once its directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn writes_a_new_private_file_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prod").join("app.key");
        refuse_existing(std::slice::from_ref(&path)).unwrap();
        write_new(&path, "kr_x").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kr_x\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&dir.path().join("prod")), 0o700);
        }
        let err = refuse_existing(std::slice::from_ref(&path)).unwrap_err();
        assert!(format!("{err:#}").contains("app.key"), "{err:#}");
        assert!(write_new(&path, "kr_y").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kr_x\n");
    }
}
