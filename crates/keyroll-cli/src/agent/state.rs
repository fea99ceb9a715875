//! The agent's state directory (`--state-dir`, default `KEY_FILE.keyroll/`, mode 0700) and its
//! `agent.json`: the agent's id (made once), the version held, a pending rotation intent (its
//! Idempotency-Key, written and synced *before* the rotation is asked for), a pending reload,
//! and the health that `keyroll agent status` prints. Always replaced atomically.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::keyfile;

/// The state file's name inside the state directory.
pub const FILE: &str = "agent.json";

/// The default state directory of a key file: `PATH.keyroll/` beside it.
pub fn default_dir(key_file: &Path) -> PathBuf {
    let mut p = key_file.as_os_str().to_owned();
    p.push(".keyroll");
    PathBuf::from(p)
}

/// A rotation asked for (or about to be): retried with the same Idempotency-Key after a crash,
/// so the server replays the key it issued instead of issuing another.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Intent {
    /// The Idempotency-Key (128 random bits, hex). Secret enough: the state file is 0600.
    pub idempotency_key: String,
    /// The active version the rotation expects.
    pub expect_active: Option<u32>,
    /// Why (`due`, `requested`, `superseded`).
    pub reason: String,
    /// When it was made.
    pub since: String,
}

/// The last run of the reload command or signal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reload {
    /// Whether it succeeded (exit 0 and every signal delivered).
    pub ok: bool,
    /// The command's exit code (none: killed by a signal, timed out, or no command).
    pub exit_code: Option<i32>,
    /// In words.
    pub detail: String,
    /// When.
    pub at: String,
}

/// How the agent is doing, as `keyroll agent status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// Whether the last request reached a working server (`None` before the first one).
    pub server_reachable: Option<bool>,
    /// Since when `server_reachable` has had its value.
    pub since: Option<String>,
    /// The last error, in words.
    pub last_error: Option<String>,
    /// The last answer from the server.
    pub last_contact: Option<String>,
    /// The code the server rejected the key with (`key_revoked`, …), while it does.
    pub key_rejected: Option<String>,
    /// The last reload.
    pub last_reload: Option<Reload>,
}

/// `agent.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentState {
    /// `agt_` and 16 hex digits, made at the first start.
    pub agent: String,
    /// `ENV/NAME`.
    pub consumer: String,
    /// The key file kept current.
    pub key_file: PathBuf,
    /// The version of the key in the file, as the server last said.
    pub version: Option<u32>,
    /// Its key id.
    pub kid: Option<String>,
    /// A rotation not yet settled.
    pub intent: Option<Intent>,
    /// A version written to the file whose reload has not run yet (the agent was killed in
    /// between): the reload runs at the next start.
    #[serde(default)]
    pub reload_pending: Option<u32>,
    /// The process that wrote this file last.
    pub pid: u32,
    /// When this file was written.
    pub updated_at: String,
    /// How it is going.
    #[serde(default)]
    pub health: Health,
}

/// The state directory, created with mode 0700 when missing.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Reads `DIR/agent.json`; `None` when there is none yet.
/// An exclusive `flock(2)` on `DIR/lock`: one agent per state directory.
pub type DirLock = nix::fcntl::Flock<fs::File>;

/// Takes the state directory's lock, or says which agent holds it. Two agents on one state
/// directory would each rotate and overwrite the other's intent.
pub fn lock(dir: &Path) -> anyhow::Result<DirLock> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            let holder = load(dir)
                .ok()
                .flatten()
                .map(|s| format!(" (pid {})", s.pid))
                .unwrap_or_default();
            if errno == nix::errno::Errno::EWOULDBLOCK {
                crate::exit::usage(format!(
                    "another agent{holder} is running on the state directory {}: one agent per \
                     key file, or give each its own --state-dir",
                    dir.display()
                ))
            } else {
                anyhow::anyhow!("cannot lock {}: {errno}", path.display())
            }
        },
    )
}

pub fn load(dir: &Path) -> anyhow::Result<Option<AgentState>> {
    let path = dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{} is not a valid agent state: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Writes `DIR/agent.json` atomically and durably.
pub fn save(dir: &Path, state: &AgentState) -> io::Result<()> {
    let text = serde_json::to_string_pretty(state).map_err(io::Error::other)?;
    keyfile::write_atomically(&dir.join(FILE), &text, None)
}

/// A new agent id: `agt_` and 64 random bits in hex.
pub fn new_agent_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for an agent id: {e}"))?;
    Ok(format!("agt_{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_atomically_in_a_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("app.key");
        let sd = default_dir(&key_file);
        assert_eq!(sd, dir.path().join("app.key.keyroll"));
        ensure_dir(&sd).unwrap();
        assert_eq!(
            fs::metadata(&sd).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(load(&sd).unwrap(), None);
        let id = new_agent_id().unwrap();
        assert!(id.starts_with("agt_") && id.len() == 20, "{id}");
        assert!(id[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        let s = AgentState {
            agent: id,
            consumer: "prod/billing".into(),
            key_file,
            version: Some(2),
            kid: Some("k".into()),
            intent: Some(Intent {
                idempotency_key: "ab".repeat(16),
                expect_active: Some(2),
                reason: "due".into(),
                since: "t".into(),
            }),
            reload_pending: None,
            pid: 1,
            updated_at: "t".into(),
            health: Health::default(),
        };
        save(&sd, &s).unwrap();
        assert_eq!(load(&sd).unwrap(), Some(s));
        assert_eq!(
            fs::metadata(sd.join(FILE)).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(sd.join(FILE), "{").unwrap();
        assert!(format!("{:#}", load(&sd).unwrap_err()).contains("agent.json"));
    }
}
