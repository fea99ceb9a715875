//! keyroll's server: the in-memory verification index, forward-auth and verify endpoints, the
//! admin API, and start-up (store, first admin token, index load, listener).
//!
//! Data flows one way: request → parse (core) → index lookup (memory) → decision (core) →
//! response + log line. Admin change → store transaction → index update → response.

pub mod admin_token;
pub mod config;
pub mod decided;
pub mod http;
pub mod index;
pub mod logging;
pub mod observe;
pub mod state;
pub mod sweeper;
pub mod timefmt;
pub mod usage;
pub mod verify;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use keyroll_store::{AuditRecord, SqliteStore, Store};

pub use config::{Config, Overrides};
pub use state::AppState;

/// Name of the file holding the first admin token, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Opens the configured store, creating the data directory (mode 0700) when needed.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.database_url.as_deref() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            bail!(
                "database_url: PostgreSQL is not supported by this build yet; use SQLite (the default) for now"
            )
        }
        Some(url) if url.starts_with("sqlite:") => {
            let store = SqliteStore::open_url(url).await?;
            Ok(Arc::new(store))
        }
        Some(other) => {
            let shown: String = keyroll_core::redact_url(other).chars().take(40).collect();
            bail!(
                "database_url {shown:?}: expected sqlite://PATH (or postgres:// in a later release)"
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

fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
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

/// Writes a secret file with mode 0600 (replacing an older one atomically).
fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates the first admin token (scope `admin`). Returns the plaintext.
pub async fn create_first_admin_token(store: &dyn Store) -> anyhow::Result<String> {
    let at = timefmt::now();
    let (plaintext, record) =
        admin_token::generate("initial", &["admin"], at, &mut state::OsEntropy)?;
    let audit = AuditRecord {
        seq: 0,
        at,
        actor: "system".into(),
        action: "admin_token.created".into(),
        target: format!("admin token {}", record.id),
        detail: serde_json::json!({ "name": record.name, "scopes": record.scopes }).to_string(),
        request_id: None,
        remote_addr: None,
    };
    store.create_admin_token(&record, &audit).await?;
    Ok(plaintext)
}

/// `keyroll init`: creates the first admin token, writes it to the data dir and returns it.
/// Refuses when the installation already has a token.
pub async fn init(config: &Config) -> anyhow::Result<(String, Option<PathBuf>)> {
    let store = open_store(config).await?;
    let existing = store.count_admin_tokens().await?;
    if existing > 0 {
        bail!(
            "already initialised: this installation has {existing} admin token(s); the first one is in {}",
            config.data_dir.join(ADMIN_TOKEN_FILE).display()
        );
    }
    let token = create_first_admin_token(store.as_ref()).await?;
    let path = if config.database_url.is_none() {
        let p = config.data_dir.join(ADMIN_TOKEN_FILE);
        write_secret_file(&p, &format!("{token}\n"))?;
        Some(p)
    } else {
        None
    };
    Ok((token, path))
}

/// A server bound to its address, index loaded, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
}

impl Server {
    /// Opens the store, creates the first admin token on an empty installation, loads the
    /// index and binds the listener.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let store = open_store(&config).await?;
        if store.count_admin_tokens().await? == 0 {
            let token = create_first_admin_token(store.as_ref()).await?;
            let path = config.data_dir.join(ADMIN_TOKEN_FILE);
            create_data_dir(&config.data_dir)?;
            write_secret_file(&path, &format!("{token}\n"))?;
            tracing::warn!(event = "admin_token.created", path = %path.display(), "first start: created an admin token with scope admin in {} (mode 0600); keep it safe", path.display());
        }
        let state = AppState::new(store, config);
        let started = std::time::Instant::now();
        let loaded = state.load().await?;
        tracing::info!(
            event = "index.loaded",
            key_versions = loaded,
            millis = started.elapsed().as_millis() as u64,
            "loaded {loaded} key versions into memory"
        );
        let listen = state.config.listen;
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another process is using this port; pick another with --listen)"
            } else {
                ""
            };
            anyhow::anyhow!("cannot listen on {listen}: {e}{hint}")
        })?;
        Ok(Server { listener, state })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The shared state (for in-process embedding and tests).
    pub fn state(&self) -> Arc<AppState> {
        Arc::clone(&self.state)
    }

    /// Serves until SIGINT/SIGTERM, then finishes in-flight requests, flushes usage and
    /// returns.
    pub async fn run(self) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let state = Arc::clone(&self.state);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let flusher = tokio::spawn(usage::run_flusher(
            Arc::clone(&state),
            state.config.usage_flush_interval,
            stop_rx.clone(),
        ));
        let observer = tokio::spawn(observe::run(Arc::clone(&state), stop_rx.clone()));
        let sweeper = tokio::spawn(sweeper::run(
            Arc::clone(&state),
            state.config.sweep_interval,
            stop_rx,
        ));
        tracing::info!(event = "server.listening", addr = %addr, store = state.store.backend(), "keyroll listening on http://{addr}");
        let app = http::router(Arc::clone(&state));
        let served = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server failed");
        // In-flight requests are done: stop the background tasks; the flusher writes a last batch.
        let _ = stop_tx.send(true);
        let _ = sweeper.await;
        let _ = flusher.await;
        let _ = observer.await;
        served?;
        tracing::info!(event = "server.stopped", "keyroll stopped");
        Ok(())
    }
}

/// Runs `step` every `interval` until `stop` changes (a background task's loop: missed ticks
/// are delayed, not bunched).
pub async fn every<F, Fut>(
    interval: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        step().await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!(
        event = "server.stopping",
        "shutting down: finishing in-flight requests"
    );
}
