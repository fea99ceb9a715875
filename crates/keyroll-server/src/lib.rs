//! keyroll's server: the in-memory verification index, forward-auth and verify endpoints, the
//! admin API, and start-up (store, first admin token, index load, listener).
//!
//! Data flows one way: request → parse (core) → index lookup (memory) → decision (core) →
//! response + log line. Admin change → store transaction → index update → response.

pub mod admin_token;
pub mod ca;
pub mod client_addr;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod decided;
pub mod http;
pub mod installation;
pub mod jobs;
pub mod listener;
pub mod logging;
pub mod master_key;
pub mod observe;
pub mod request_id;
pub mod schedule;
pub mod service;
pub mod state;
pub mod sweeper;
pub mod tls;
pub mod ui;
pub mod usage;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::bail;

pub use config::{Config, Overrides};
pub use installation::{
    ADMIN_TOKEN_FILE, INSTALLATION_FILE, Initialised, create_first_admin_token, init, open_store,
};
pub use state::AppState;

use installation::{
    check_installation, create_data_dir, database_path, open_checked, write_secret_file,
};

/// A server bound to its address, index loaded, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    tls: Option<TlsListener>,
}

/// The listener's TLS: the published config and where it is refreshed from.
#[derive(Debug)]
struct TlsListener {
    config: tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>,
    settings: config::TlsSettings,
    client: Option<tls::ClientVerification>,
}

impl Server {
    /// Opens the store, creates the first admin token on an empty installation, loads the
    /// index and binds the listener.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        keyroll_ca::tls::install_provider();
        // A bad certificate refuses start before anything is opened or created.
        let tls = match &config.tls {
            None => None,
            Some(settings) => Some(TlsListener {
                config: tokio::sync::watch::Sender::new(
                    tls::initial_config(settings)
                        .map_err(|e| anyhow::anyhow!("cannot serve TLS: {e}"))?,
                ),
                settings: settings.clone(),
                client: None,
            }),
        };
        let (store, earlier, installation, _) = open_checked(&config, false).await?;
        if store.count_admin_tokens().await? == 0 {
            let path = config.data_dir.join(ADMIN_TOKEN_FILE);
            if path.exists() {
                bail!(
                    "{} exists but the database {} has no admin token: the file is from an \
                     earlier installation; run `keyroll init --force --data-dir {}` to move it \
                     aside and create a new token",
                    path.display(),
                    database_path(&config),
                    config.data_dir.display()
                );
            }
            create_data_dir(&config.data_dir)?;
            let token = create_first_admin_token(store.as_ref()).await?;
            write_secret_file(&path, &format!("{token}\n"))?;
            tracing::warn!(event = "admin_token.created", path = %path.display(), "first start: created an admin token with scope admin in {} (mode 0600); keep it safe", path.display());
        }
        check_installation(&config, &earlier, &installation)?;
        let env_key = std::env::var(master_key::MASTER_KEY_ENV).ok();
        let master_key = match &config.ca_master_key_file {
            Some(file) => {
                master_key::MasterKey::load_file(env_key.as_deref(), file, clock::Randomness::os())?
            }
            None => master_key::MasterKey::load(
                env_key.as_deref(),
                &config.data_dir,
                clock::Randomness::os(),
            )?,
        };
        master_key.check_against(store.as_ref()).await?;
        let state = AppState::with_master_key(
            store,
            config,
            clock::Clock::system(),
            clock::Randomness::os(),
            master_key,
        );
        let mut tls = tls;
        if let Some(t) = &mut tls {
            let (log_state, clock_state) = (Arc::clone(&state), Arc::clone(&state));
            let sink = Arc::new(
                move |d: &keyroll_ca::CertDecision, peer: Option<SocketAddr>| {
                    let record = decided::CertDecisionRecord {
                        decision: d,
                        edge: decided::CertEdge::TlsHandshake,
                        peer,
                        request_id: None,
                        now: log_state.clock.now(),
                    };
                    log_state
                        .observer
                        .cert_decision(&record, log_state.config.log_allowed_at_info);
                },
            );
            let now = Arc::new(move || clock_state.clock.now());
            t.client = tls::client_verification(&t.settings, sink, now)
                .map_err(|e| anyhow::anyhow!("cannot verify client certificates: {e}"))?;
        }
        service::ca::check_sealed_keys(&state)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
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
        Ok(Server {
            listener,
            state,
            tls,
        })
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
        let stop_signal = shutdown_signal();
        let state = Arc::clone(&self.state);
        // Join the cluster before anything runs: the first lease attempt decides whether the
        // sweeper's and the schedule's first steps (at start) run here, and the first heartbeat
        // makes this node one that writers wait for.
        state.cluster.set_listen_address(addr);
        cluster::steps::renew_lease(&state).await;
        if let Err(e) = cluster::steps::heartbeat(&state).await {
            tracing::warn!(event = "cluster.heartbeat_failed", error = %e, "could not record this node's heartbeat: {e}");
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let heartbeat = tokio::spawn(jobs::heartbeat(Arc::clone(&state), stop_rx.clone()));
        let lease = tokio::spawn(jobs::lease(Arc::clone(&state), stop_rx.clone()));
        let applier = tokio::spawn(jobs::changes(Arc::clone(&state), stop_rx.clone()));
        let pruner = tokio::spawn(jobs::prune(Arc::clone(&state), stop_rx.clone()));
        let flusher = tokio::spawn(jobs::usage(Arc::clone(&state), stop_rx.clone()));
        let ca = tokio::spawn(jobs::ca(Arc::clone(&state), stop_rx.clone()));
        let ca_timeline = tokio::spawn(jobs::ca_timeline(Arc::clone(&state), stop_rx.clone()));
        let observer = tokio::spawn(jobs::observer(Arc::clone(&state), stop_rx.clone()));
        let scheduler = state
            .config
            .schedule_enabled
            .then(|| tokio::spawn(jobs::scheduler(Arc::clone(&state), stop_rx.clone())));
        let webhooks = state
            .config
            .webhooks
            .enabled
            .then(|| tokio::spawn(jobs::webhooks(Arc::clone(&state), stop_rx.clone())));
        let acceptor = match &self.tls {
            None => None,
            Some(t) => {
                let acceptor = tls::Acceptor::new(
                    t.config.subscribe(),
                    t.settings.client_auth,
                    state.config.http.header_read_timeout,
                );
                match &t.client {
                    Some(c) => Some(acceptor.with_client_verification(c.clone())),
                    None => Some(acceptor),
                }
            }
        };
        let tls_watch = self
            .tls
            .map(|t| tokio::spawn(tls::refresh(t.settings, t.config, stop_rx.clone())));
        let sweeper = tokio::spawn(jobs::sweeper(Arc::clone(&state), stop_rx));
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        tracing::info!(event = "server.listening", addr = %addr, scheme, store = state.store.backend(), node_id = %state.cluster.node_id, leader = state.is_leader(), "keyroll listening on {scheme}://{addr}");
        let app = http::router(Arc::clone(&state));
        listener::serve(self.listener, app, state.config.http, acceptor, stop_signal).await;
        // In-flight requests are done: stop the background tasks; the flusher writes a last batch.
        let _ = stop_tx.send(true);
        let _ = sweeper.await;
        if let Some(w) = tls_watch {
            let _ = w.await;
        }
        if let Some(scheduler) = scheduler {
            let _ = scheduler.await;
        }
        if let Some(webhooks) = webhooks {
            let _ = webhooks.await;
        }
        let _ = flusher.await;
        let _ = ca.await;
        let _ = ca_timeline.await;
        let _ = pruner.await;
        let _ = applier.await;
        // The leader's jobs have stopped: give the lease up, then leave.
        let _ = lease.await;
        let _ = heartbeat.await;
        let _ = observer.await;
        tracing::info!(event = "server.stopped", "keyroll stopped");
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a SIGTERM that arrives between "listening" and the first poll must
/// shut down gracefully, not kill the process with the default action.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    #[cfg(unix)]
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        #[cfg(unix)]
        {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {},
                () = wait(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!(
            event = "server.stopping",
            "shutting down: finishing in-flight requests"
        );
    }
}
