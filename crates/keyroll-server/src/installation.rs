//! Start-up's ground: the data directory and the installation it belongs to — opening the
//! store, the first admin token, the `installation` marker, and `keyroll init [--force]`.
//!
//! Invariant: a data dir with signs of an earlier installation never becomes a new one
//! silently (see ARCHITECTURE.md, start-up).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use keyroll_store::{PostgresStore, SqliteStore, Store};

use crate::config::Config;
use crate::{admin_token, clock, request_id, service};

/// Name of the file holding the first admin token, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Name of the file naming the installation the data directory belongs to (its id is also in the
/// database): written at the first start, it tells an earlier installation from a new one.
pub const INSTALLATION_FILE: &str = "installation";

/// The SQLite database in the data directory (without `database_url`).
const DATABASE_FILE: &str = "keyroll.db";

/// Opens the configured store, creating the data directory (mode 0700) when needed.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.database_url.as_deref() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PostgresStore::open_url(url).await?;
            Ok(Arc::new(store))
        }
        Some(url) if url.starts_with("sqlite:") => {
            let store = SqliteStore::open_url(url).await?;
            Ok(Arc::new(store))
        }
        Some(other) => {
            let shown: String = keyroll_core::redact_url(other).chars().take(40).collect();
            bail!(
                "database_url {shown:?}: expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"
            )
        }
        None => {
            create_data_dir(&config.data_dir)?;
            let path = config.data_dir.join("keyroll.db");
            let store = SqliteStore::open(&path).await?;
            Ok(Arc::new(store))
        }
    }
}

pub(crate) fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("data dir {} exists but is not a directory", dir.display());
        }
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))
}

/// Writes a secret file with mode 0600. Never replaces one: an existing file is an error (an
/// admin token overwritten is a token lost).
pub(crate) fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    create_new_file(path, contents, 0o600)
}

/// Creates `path` with `contents`, failing if it exists.
fn create_new_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "refusing to overwrite {}: it exists already (move it away first if it is no \
                 longer needed)",
                path.display()
            )
        } else {
            anyhow::anyhow!("cannot write {}: {e}", path.display())
        }
    })?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Renames `path` to `path.replaced-<unix millis>` and says so.
fn move_aside(path: &Path) -> anyhow::Result<String> {
    let mut target = path.as_os_str().to_owned();
    target.push(format!(".replaced-{}", clock::system_now().unix_millis()));
    let target = PathBuf::from(target);
    if target.exists() {
        bail!(
            "cannot move {} aside: {} exists",
            path.display(),
            target.display()
        );
    }
    std::fs::rename(path, &target)
        .with_context(|| format!("cannot move {} aside", path.display()))?;
    Ok(format!("moved {} to {}", path.display(), target.display()))
}

/// A new installation id: 128 random bits, hex.
fn new_installation_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    clock::Randomness::os()
        .fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for an id: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The id in an installation file (`id=…`; a file without one counts as its whole text).
fn read_installation_file(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            text.lines()
                .find_map(|l| l.trim().strip_prefix("id="))
                .map_or_else(|| text.trim().to_owned(), |id| id.trim().to_owned()),
        )),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn write_installation_file(dir: &Path, id: &str) -> anyhow::Result<()> {
    let text = format!(
        "# keyroll: the database of this data directory belongs to this installation. keyroll\n\
         # refuses to start on another installation's database, or on an empty one, while this\n\
         # file is here (see `keyroll init --force`).\nid={id}\n"
    );
    create_new_file(&dir.join(INSTALLATION_FILE), &text, 0o644)
}

/// What the data directory shows of an earlier installation, looked at before the database is
/// opened (opening creates the database and its `-wal`/`-shm` files).
#[derive(Debug, Default)]
pub(crate) struct Earlier {
    /// The files found, each with what it means.
    found: Vec<(PathBuf, String)>,
    /// The id in the installation file.
    marker: Option<String>,
    /// How the database file is, when it is missing or empty (`None`: it has content, or the
    /// database is elsewhere).
    database_gone: Option<&'static str>,
}

impl Earlier {
    fn look(config: &Config) -> anyhow::Result<Earlier> {
        let dir = &config.data_dir;
        let mut earlier = Earlier::default();
        let exists = |p: &Path| std::fs::symlink_metadata(p).ok();
        let token = dir.join(ADMIN_TOKEN_FILE);
        if exists(&token).is_some() {
            earlier.found.push((
                token,
                "the admin token of an earlier installation".to_owned(),
            ));
        }
        let marker = dir.join(INSTALLATION_FILE);
        earlier.marker = read_installation_file(&marker)?;
        if let Some(id) = &earlier.marker {
            earlier
                .found
                .push((marker, format!("the marker of installation {id}")));
        }
        if config.database_url.is_none() {
            let db = dir.join(DATABASE_FILE);
            earlier.database_gone = match exists(&db) {
                None => Some("does not exist"),
                Some(m) if m.is_file() && m.len() == 0 => Some("is empty (0 bytes)"),
                Some(_) => None,
            };
            if earlier.database_gone.is_some() {
                for suffix in ["-wal", "-shm"] {
                    let p = dir.join(format!("{DATABASE_FILE}{suffix}"));
                    if exists(&p).is_some() {
                        earlier
                            .found
                            .push((p, "a SQLite log of a database that is gone".to_owned()));
                    }
                }
            }
        }
        Ok(earlier)
    }

    /// Why a new installation is refused here, and what to do.
    fn refusal(&self, config: &Config, database: &str) -> anyhow::Error {
        let dir = config.data_dir.display();
        let found: Vec<String> = self
            .found
            .iter()
            .map(|(p, what)| format!("{} ({what})", p.display()))
            .collect();
        anyhow::anyhow!(
            "refusing to start a new installation: the database {} {database}, but data dir \
             {dir} holds an earlier installation: {}. If the database was deleted, emptied or \
             replaced by mistake, restore it (with its -wal file) from a backup. To start a new \
             installation in this data dir anyway (every existing key and admin token stops \
             working), run `keyroll init --force --data-dir {dir}`: it moves the old files aside \
             as *.replaced-<time>",
            database_path(config),
            found.join(", ")
        )
    }

    /// Moves every file found aside (for `init --force`), saying what was moved.
    fn move_aside(&self) -> anyhow::Result<Vec<String>> {
        self.found.iter().map(|(p, _)| move_aside(p)).collect()
    }
}

/// The database, as named in messages.
pub(crate) fn database_path(config: &Config) -> String {
    match &config.database_url {
        Some(url) => url.split('?').next().unwrap_or(url).to_owned(),
        None => config.data_dir.join(DATABASE_FILE).display().to_string(),
    }
}

/// Checks that the (non-empty) database belongs to this data dir's installation, writing the
/// installation file when it is missing (a first start before installation ids, a moved data
/// dir).
pub(crate) fn check_installation(
    config: &Config,
    earlier: &Earlier,
    installation: &keyroll_store::Installation,
) -> anyhow::Result<()> {
    match &earlier.marker {
        Some(id) if *id == installation.id => Ok(()),
        Some(id) => bail!(
            "the database {} belongs to installation {}, but data dir {} belongs to installation \
             {id} (see {}): the database was replaced by another installation's. Put this data \
             dir's own database back; or, if this database is the one to use (a restore or a \
             move), delete {} and start again",
            database_path(config),
            installation.id,
            config.data_dir.display(),
            config.data_dir.join(INSTALLATION_FILE).display(),
            config.data_dir.join(INSTALLATION_FILE).display(),
        ),
        None => {
            create_data_dir(&config.data_dir)?;
            write_installation_file(&config.data_dir, &installation.id)?;
            tracing::info!(
                event = "installation.recorded",
                id = %installation.id,
                "recorded installation {} in {}",
                installation.id,
                config.data_dir.join(INSTALLATION_FILE).display()
            );
            Ok(())
        }
    }
}

/// Opens the store after looking for an earlier installation: a missing or empty database beside
/// an earlier installation's files is refused before anything is created.
pub(crate) async fn open_checked(
    config: &Config,
    force: bool,
) -> anyhow::Result<(
    Arc<dyn Store>,
    Earlier,
    keyroll_store::Installation,
    Vec<String>,
)> {
    let mut earlier = Earlier::look(config)?;
    let mut replaced = Vec::new();
    if let Some(gone) = earlier.database_gone
        && !earlier.found.is_empty()
    {
        if !force {
            return Err(earlier.refusal(config, gone));
        }
        replaced = earlier.move_aside()?;
        earlier = Earlier::default();
    }
    let store = open_store(config).await?;
    let new_id = match &earlier.marker {
        // A database from before installation ids takes this data dir's.
        Some(id) => id.clone(),
        None => new_installation_id()?,
    };
    let installation = store.installation(&new_id).await?;
    if installation.empty && !earlier.found.is_empty() {
        if !force {
            return Err(earlier.refusal(
                config,
                "holds no admin token, environment, consumer or audit entry",
            ));
        }
        replaced.extend(earlier.move_aside()?);
        earlier = Earlier::default();
    }
    Ok((store, earlier, installation, replaced))
}

/// Creates the first admin token (scope `admin`). Returns the plaintext.
pub async fn create_first_admin_token(store: &dyn Store) -> anyhow::Result<String> {
    let at = clock::system_now();
    let (plaintext, record) = admin_token::generate(
        "initial",
        &["admin"],
        at,
        &mut clock::Randomness::os().entropy(),
    )?;
    let audit = service::Actor::system(request_id::new_request_id()).audit(
        at,
        "admin_token.created",
        format!("admin token {}", record.id),
        &serde_json::json!({ "name": record.name, "scopes": record.scopes }),
    );
    store.create_admin_token(&record, &audit).await?;
    Ok(plaintext)
}

/// What `keyroll init` did.
#[derive(Debug)]
pub struct Initialised {
    /// The first admin token's plaintext, to print once.
    pub token: String,
    /// Where it was written, if in a file.
    pub path: Option<PathBuf>,
    /// Files of an earlier installation moved aside (with `--force`), as sentences.
    pub replaced: Vec<String>,
}

/// `keyroll init`: creates the first admin token, writes it to the data dir and returns it.
/// Refuses when the installation already has a token, and, unless `force`, when the data dir
/// shows an earlier installation whose database is gone or empty; `force` moves that
/// installation's files aside and starts a new one.
pub async fn init(config: &Config, force: bool) -> anyhow::Result<Initialised> {
    let (store, earlier, installation, mut replaced) = open_checked(config, force).await?;
    let existing = store.count_admin_tokens().await?;
    if existing > 0 {
        bail!(
            "already initialised: this installation has {existing} admin token(s); the first one is in {}",
            config.data_dir.join(ADMIN_TOKEN_FILE).display()
        );
    }
    let mut path = None;
    if config.database_url.is_none() {
        let p = config.data_dir.join(ADMIN_TOKEN_FILE);
        // The database holds things but no token (all were removed): the file's token is dead.
        if force && p.exists() {
            replaced.push(move_aside(&p)?);
        }
        if p.exists() {
            bail!(
                "{} exists but this installation has no admin token: it is from an earlier \
                 installation; run `keyroll init --force` to move it aside and create a new one",
                p.display()
            );
        }
        path = Some(p);
    }
    let token = create_first_admin_token(store.as_ref()).await?;
    if let Some(p) = &path {
        write_secret_file(p, &format!("{token}\n"))?;
        check_installation(config, &earlier, &installation)?;
    }
    Ok(Initialised {
        token,
        path,
        replaced,
    })
}
