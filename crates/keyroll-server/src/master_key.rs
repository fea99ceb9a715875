//! The server's master key: 32 bytes under which secrets the server must be able to read again
//! (webhook signing secrets today, the CA's private keys next) are sealed before they reach the
//! database, so the database alone opens nothing.
//!
//! Where it comes from: `KEYROLL_MASTER_KEY` (base64 of 32 bytes) when set, else the file
//! `<data_dir>/master.key` (32 raw bytes, mode 0600), created at first start. Several nodes
//! sharing one database must share one `KEYROLL_MASTER_KEY`: a secret sealed by one node is
//! opened by the others. A key of the wrong length or encoding, or a file readable by others, is
//! one clear start-up error rather than a webhook that fails to sign later.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::clock::Randomness;

/// The file in the data dir that holds the key when the environment does not.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The environment variable that holds the key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "KEYROLL_MASTER_KEY";

const NONCE_LEN: usize = 12;

/// Why the master key could not be had, or a sealed value not opened.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The key given is not usable; the text says where it came from and what is wrong.
    #[error("master key: {0}")]
    Invalid(String),
    /// No randomness for a new key or a nonce.
    #[error("master key: no randomness: {0}")]
    Entropy(String),
    /// A sealed value does not open under this key (another key, or damaged).
    #[error(
        "a sealed value does not open under this server's master key (was KEYROLL_MASTER_KEY or master.key changed?)"
    )]
    DoesNotOpen,
}

/// The master key. `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    randomness: Randomness,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A key from its bytes; nonces come from `randomness`.
    pub fn from_bytes(key: [u8; 32], randomness: Randomness) -> MasterKey {
        MasterKey { key, randomness }
    }

    /// A fresh random key that lives only in memory (tests, and states built without a data
    /// dir).
    pub fn ephemeral(randomness: Randomness) -> Result<MasterKey, MasterKeyError> {
        let mut key = [0u8; 32];
        randomness
            .fill(&mut key)
            .map_err(|e| MasterKeyError::Entropy(e.to_string()))?;
        Ok(MasterKey { key, randomness })
    }

    /// The key from `env_value` (the value of `KEYROLL_MASTER_KEY`) when given, else from
    /// `data_dir/master.key`, which is created (0600) when missing.
    pub fn load(
        env_value: Option<&str>,
        data_dir: &Path,
        randomness: Randomness,
    ) -> Result<MasterKey, MasterKeyError> {
        if let Some(text) = env_value {
            let bytes = STANDARD.decode(text.trim()).map_err(|e| {
                MasterKeyError::Invalid(format!("{MASTER_KEY_ENV} is not base64 ({e}); make one with `head -c 32 /dev/urandom | base64`"))
            })?;
            let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                MasterKeyError::Invalid(format!(
                    "{MASTER_KEY_ENV} holds {} bytes, a master key is 32 (base64 of 32 random bytes)",
                    b.len()
                ))
            })?;
            return Ok(MasterKey { key, randomness });
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                check_mode(&path)?;
                let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                    MasterKeyError::Invalid(format!(
                        "{} holds {} bytes, a master key file holds 32 raw bytes",
                        path.display(),
                        b.len()
                    ))
                })?;
                Ok(MasterKey { key, randomness })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = MasterKey::ephemeral(randomness)?;
                write_new(&path, &key.key)?;
                tracing::info!(event = "master_key.created", path = %path.display(), "created the master key {} (mode 0600); every node of a cluster must share one: set KEYROLL_MASTER_KEY instead", path.display());
                Ok(key)
            }
            Err(e) => Err(MasterKeyError::Invalid(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// The key from `env_value` (`KEYROLL_MASTER_KEY`) when given, else from `file` (the
    /// `[ca] master_key_file` setting), which is read and never created: a missing, unreadable,
    /// too open or wrong-size file is an error naming the file and the variable.
    pub fn load_file(
        env_value: Option<&str>,
        file: &Path,
        randomness: Randomness,
    ) -> Result<MasterKey, MasterKeyError> {
        if env_value.is_some() {
            return MasterKey::load(env_value, file, randomness);
        }
        let hint = format!(
            "ca.master_key_file names {}: put 32 random bytes there (mode 0600, `head -c 32 /dev/urandom > FILE`) or set {MASTER_KEY_ENV}",
            file.display()
        );
        let bytes = std::fs::read(file).map_err(|e| {
            MasterKeyError::Invalid(format!("cannot read {} ({e}); {hint}", file.display()))
        })?;
        check_mode(file)?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            MasterKeyError::Invalid(format!(
                "{} holds {} bytes, a master key file holds 32 raw bytes; {hint}",
                file.display(),
                b.len()
            ))
        })?;
        Ok(MasterKey { key, randomness })
    }

    /// A one-way value that tells this key from another without revealing it (HKDF-SHA256 of the
    /// key with a fixed label): the store records the first node's, and a node whose value
    /// differs refuses to start.
    pub fn check_value(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 255 × 32: expand cannot fail.
        let _ = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"keyroll master key check"), &self.key)
            .expand(b"v1", &mut out);
        out
    }

    /// Checks this key against the one recorded in `store` (recording it on the first start):
    /// every node of a database must seal and open with the same key.
    pub async fn check_against(
        &self,
        store: &dyn keyroll_store::Store,
    ) -> Result<(), MasterKeyError> {
        let ours = self.check_value();
        let recorded = store.master_key_check(&ours).await.map_err(|e| {
            MasterKeyError::Invalid(format!("cannot check it against the store: {e}"))
        })?;
        if recorded.as_slice() == ours.as_slice() {
            return Ok(());
        }
        Err(MasterKeyError::Invalid(format!(
            "this node's master key differs from the one the database's sealed secrets were made \
             under (recorded by the first start on this database): give every node the same \
             {MASTER_KEY_ENV}, or restore this data dir's {MASTER_KEY_FILE}"
        )))
    }

    /// Seals `plaintext` with `aad` (what it belongs to, e.g. an endpoint id) as associated
    /// data: random nonce ‖ ChaCha20-Poly1305 ciphertext.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, MasterKeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.randomness
            .fill(&mut nonce)
            .map_err(|e| MasterKeyError::Entropy(e.to_string()))?;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key));
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| MasterKeyError::DoesNotOpen)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Opens what [`MasterKey::seal`] sealed with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, MasterKeyError> {
        if sealed.len() < NONCE_LEN {
            return Err(MasterKeyError::DoesNotOpen);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        ChaCha20Poly1305::new(Key::from_slice(&self.key))
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| MasterKeyError::DoesNotOpen)
    }
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), MasterKeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| MasterKeyError::Invalid(format!("cannot read {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(MasterKeyError::Invalid(format!(
            "{} is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path) -> Result<(), MasterKeyError> {
    Ok(())
}

fn write_new(path: &Path, key: &[u8]) -> Result<(), MasterKeyError> {
    use std::io::Write;
    let fail = |e: std::io::Error| {
        MasterKeyError::Invalid(format!("cannot write {}: {e}", path.display()))
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(fail)?;
    f.write_all(key).and_then(|()| f.sync_all()).map_err(fail)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_check_value_tells_keys_apart_and_is_not_the_key() {
        let a = MasterKey::from_bytes([7; 32], Randomness::os());
        let again = MasterKey::from_bytes([7; 32], Randomness::os());
        let b = MasterKey::from_bytes([8; 32], Randomness::os());
        assert_eq!(a.check_value(), again.check_value());
        assert_ne!(a.check_value(), b.check_value());
        assert_ne!(a.check_value(), [7; 32]);
    }

    #[test]
    fn seals_and_opens_only_with_the_same_key_and_aad() {
        let k = MasterKey::ephemeral(Randomness::os()).unwrap();
        let sealed = k.seal(b"wh_1", b"secret bytes").unwrap();
        assert!(!sealed.windows(12).any(|w| w == b"secret bytes"));
        assert_eq!(k.open(b"wh_1", &sealed).unwrap(), b"secret bytes");
        assert!(k.open(b"wh_2", &sealed).is_err());
        let other = MasterKey::ephemeral(Randomness::os()).unwrap();
        assert!(other.open(b"wh_1", &sealed).is_err());
        assert!(k.open(b"wh_1", &sealed[..5]).is_err());
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn a_configured_file_is_read_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.key");
        let err = MasterKey::load_file(None, &file, Randomness::os()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("ca.key") && text.contains(MASTER_KEY_ENV),
            "{text}"
        );
        assert!(!file.exists());
        std::fs::write(&file, [3u8; 32]).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let key = MasterKey::load_file(None, &file, Randomness::os()).unwrap();
        assert_eq!(
            key.check_value(),
            MasterKey::from_bytes([3; 32], Randomness::os()).check_value()
        );
    }

    #[test]
    fn from_the_environment_or_a_0600_file_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKey::load(None, dir.path(), Randomness::os()).unwrap();
        let b = MasterKey::load(None, dir.path(), Randomness::os()).unwrap();
        assert_eq!(a.key, b.key, "the file is read back, not replaced");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(MASTER_KEY_FILE);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = MasterKey::load(None, dir.path(), Randomness::os()).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::write(&path, b"short").unwrap();
            let err = MasterKey::load(None, dir.path(), Randomness::os()).unwrap_err();
            assert!(err.to_string().contains("5 bytes"), "{err}");
        }
        let env = STANDARD.encode([7u8; 32]);
        let k = MasterKey::load(Some(&env), dir.path(), Randomness::os()).unwrap();
        assert_eq!(k.key, [7u8; 32]);
        let err = MasterKey::load(Some("not base64!"), dir.path(), Randomness::os()).unwrap_err();
        assert!(
            err.to_string().contains("KEYROLL_MASTER_KEY is not base64"),
            "{err}"
        );
        let err = MasterKey::load(
            Some(&STANDARD.encode([1u8; 16])),
            dir.path(),
            Randomness::os(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("16 bytes"), "{err}");
    }
}
