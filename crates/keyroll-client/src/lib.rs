//! A typed client for keyroll's HTTP API, used by the CLI and by Rust services.
//!
//! Errors keep what the server said: an API error carries the problem+json body (code, detail,
//! request id), so a caller can print one precise line.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyroll_proto as proto;

mod ca;
pub use ca::{CertFilter, PemAnswer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached, or the connection broke before a whole answer.
    #[error(
        "cannot reach the keyroll server at {url}: {reason} (is `keyroll serve` running? set --server or KEYROLL_SERVER)"
    )]
    Unreachable {
        /// The server URL (any password in it redacted).
        url: String,
        /// Why, in the transport's words.
        reason: String,
        /// Why, as a type a caller can act on.
        kind: Transport,
    },
    /// The server answered with an error.
    #[error("{}", describe(.status, .problem))]
    Api {
        /// HTTP status.
        status: u16,
        /// The problem body (boxed: it is large next to the other variants).
        problem: Box<proto::Problem>,
    },
    /// The server answered something that is not what this client expects.
    #[error("unexpected answer from the server (HTTP {status}): {reason}")]
    Decode {
        /// HTTP status.
        status: u16,
        /// Why it could not be read.
        reason: String,
    },
    /// The request could not be built (bad server URL).
    #[error("invalid request: {0}")]
    Request(String),
}

/// Why a server could not be reached, told apart by the transport's own error types (never by
/// their messages), so a script can tell "nothing listens there" from "the name is wrong".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// Nothing listens at the address (connection refused).
    Refused,
    /// The host name does not resolve.
    Dns,
    /// No answer in time (connecting, or the whole request).
    Timeout,
    /// Connected, but the connection was reset or closed before a whole answer.
    ConnectionLost,
    /// The TLS handshake failed (the server's certificate is not trusted, or ours was refused).
    Tls,
    /// Another network failure (no route to the host, …).
    Other,
}

impl Transport {
    /// A stable machine code, as printed in `--output json` errors.
    pub fn code(self) -> &'static str {
        match self {
            Transport::Refused => "connection_refused",
            Transport::Dns => "dns_failed",
            Transport::Timeout => "timeout",
            Transport::ConnectionLost => "connection_lost",
            Transport::Tls => "tls_failed",
            Transport::Other => "unreachable",
        }
    }
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            ClientError::Unreachable { .. } | ClientError::Request(_) => None,
        }
    }

    /// The server's problem body, when it sent one.
    pub fn problem(&self) -> Option<&proto::Problem> {
        match self {
            ClientError::Api { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

fn describe(status: &u16, p: &proto::Problem) -> String {
    format!(
        "{} (HTTP {status}, code {}, request {})",
        p.detail, p.code, p.request_id
    )
}

/// A client for one keyroll server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// A successful answer and whether it replayed an earlier idempotent request.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The body.
    pub body: T,
    /// The raw JSON (for `--output json`).
    pub json: serde_json::Value,
}

/// How the client speaks HTTPS: which CA bundle it trusts (default: the public webpki roots)
/// and which client certificate it presents (default: none).
#[derive(Clone, Default)]
pub struct Tls {
    ca: Option<Vec<CertificateDer<'static>>>,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls")
            .field("ca_certificates", &self.ca.as_ref().map(Vec::len))
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl Tls {
    /// Reads `--ca-file` (PEM certificates: the only anchors trusted) and `--client-cert` /
    /// `--client-key` (a PEM chain, leaf first, and its key); each error names the file.
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Tls, ClientError> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| ClientError::Request(format!("cannot read {}: {e}", p.display())))
        };
        let ca = match ca {
            None => None,
            Some(p) => Some(certificates(&read(p)?, p)?),
        };
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let chain = certificates(&read(c)?, c)?;
                let key = PrivateKeyDer::from_pem_slice(&read(k)?).map_err(|e| {
                    ClientError::Request(format!("{}: no usable PEM private key: {e}", k.display()))
                })?;
                Some((chain, Arc::new(key)))
            }
            (Some(c), None) => {
                return Err(ClientError::Request(format!(
                    "--client-cert {} needs --client-key",
                    c.display()
                )));
            }
            (None, Some(k)) => {
                return Err(ClientError::Request(format!(
                    "--client-key {} needs --client-cert",
                    k.display()
                )));
            }
        };
        Ok(Tls { ca, identity })
    }

    /// Trusts these PEM certificates (in memory: the agent's refreshed `ca.pem`).
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Tls, ClientError> {
        self.ca = Some(certificates(pem, Path::new("the CA bundle"))?);
        Ok(self)
    }

    /// Also trusts these PEM certificates, beside the `--ca-file` ones: the agent adds the
    /// `ca.pem` it keeps, so a server whose own certificate comes from keyroll's CA stays
    /// trusted across a root rotation. Without a `--ca-file` (the public web roots) nothing is
    /// added: a private anchor is only ever trusted next to another private one.
    pub fn also_trusting_pem(&self, pem: &[u8]) -> Result<Tls, ClientError> {
        let mut tls = self.clone();
        if let Some(ca) = &mut tls.ca {
            for c in certificates(pem, Path::new("the kept CA bundle"))? {
                if !ca.contains(&c) {
                    ca.push(c);
                }
            }
        }
        Ok(tls)
    }

    /// Presents this PEM chain and key (in memory).
    pub fn with_identity_pem(mut self, cert: &[u8], key: &[u8]) -> Result<Tls, ClientError> {
        let chain = certificates(cert, Path::new("the client certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| ClientError::Request(format!("no usable PEM private key: {e}")))?;
        self.identity = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// The rustls config: keyroll's one provider, the given anchors (else webpki's), the
    /// client certificate if any.
    fn client_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(certs) => {
                for c in certs {
                    roots.add(c.clone()).map_err(|e| {
                        ClientError::Request(format!("a CA certificate is not usable: {e}"))
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(keyroll_ca::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Request(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    ClientError::Request(format!("the client certificate and key: {e}"))
                })?,
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn certificates(pem: &[u8], from: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ClientError::Request(format!(
                "{}: not a PEM certificate bundle: {e}",
                from.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ClientError::Request(format!(
            "{}: no certificate in it; expected PEM (-----BEGIN CERTIFICATE-----)",
            from.display()
        )));
    }
    Ok(certs)
}

impl Client {
    /// A client for `base` (`http://127.0.0.1:7878` or `https://…`) with an optional admin
    /// token; HTTPS trusts the public webpki roots.
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_tls(base, token, &Tls::default())
    }

    /// A client whose HTTPS trusts and presents what `tls` says.
    pub fn with_tls(base: &str, token: Option<String>, tls: &Tls) -> Result<Client, ClientError> {
        let shown = keyroll_core::redact_url(base);
        let url = reqwest::Url::parse(base).map_err(|e| {
            ClientError::Request(format!(
                "server URL {shown:?}: {e}; expected http://HOST:PORT or https://HOST:PORT"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ClientError::Request(format!(
                "server URL {shown:?}: expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5));
        // Always a config of ours, so reqwest never reaches for a process-default provider.
        builder = builder.use_preconfigured_tls(tls.client_config()?);
        let http = builder
            .build()
            .map_err(|e| ClientError::Request(e.to_string()))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(dyn erased::Json + Sync)>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer<T>, ClientError> {
        self.call_within(method, path, body, idempotency_key, None)
            .await
    }

    /// [`Client::call`] with a whole-request timeout other than the client's 30 s (a long-poll
    /// must outlast its own `wait`).
    async fn call_within<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(dyn erased::Json + Sync)>,
        idempotency_key: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Answer<T>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_json());
        }
        let response = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                return Err(ClientError::Request(format!(
                    "{}: {}",
                    keyroll_core::redact_url(&url),
                    root_cause(&e)
                )));
            }
            Err(e) => return Err(self.unreachable(&e).await),
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(self.unreachable(&e).await),
        };
        if !(200..300).contains(&status) {
            return match serde_json::from_slice::<proto::Problem>(&bytes) {
                Ok(problem) => Err(ClientError::Api {
                    status,
                    problem: Box::new(problem),
                }),
                Err(_) => Err(ClientError::Decode {
                    status,
                    reason: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                }),
            };
        }
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                status,
                reason: e.to_string(),
            })?;
        let body = serde_json::from_value(json.clone()).map_err(|e| ClientError::Decode {
            status,
            reason: e.to_string(),
        })?;
        Ok(Answer { body, json })
    }

    /// `POST /v1/environments`.
    pub async fn create_environment(
        &self,
        req: &proto::CreateEnvironment,
    ) -> Result<Answer<proto::Environment>, ClientError> {
        self.call(reqwest::Method::POST, "/v1/environments", Some(req), None)
            .await
    }

    /// `GET /v1/environments`.
    pub async fn list_environments(
        &self,
    ) -> Result<Answer<proto::List<proto::Environment>>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/environments", None, None)
            .await
    }

    /// `PATCH /v1/environments/{name}`.
    pub async fn update_environment(
        &self,
        name: &str,
        req: &proto::UpdateEnvironment,
    ) -> Result<Answer<proto::Environment>, ClientError> {
        self.call(
            reqwest::Method::PATCH,
            &format!("/v1/environments/{}", urlencode(name)),
            Some(req),
            None,
        )
        .await
    }

    /// `GET /v1/schedule`: every consumer's place in the rotation schedule (one environment's
    /// with `environment`).
    pub async fn schedule(
        &self,
        environment: Option<&str>,
    ) -> Result<Answer<proto::Schedule>, ClientError> {
        let path = match environment {
            Some(e) => format!("/v1/schedule?environment={}", urlencode(e)),
            None => "/v1/schedule".into(),
        };
        self.call(reqwest::Method::GET, &path, None, None).await
    }

    /// `GET /v1/consumers/{env}/{name}/preflight`: the checklist before a rotation.
    pub async fn preflight(
        &self,
        env: &str,
        name: &str,
    ) -> Result<Answer<proto::Preflight>, ClientError> {
        self.call(
            reqwest::Method::GET,
            &consumer_path(env, name, "/preflight"),
            None,
            None,
        )
        .await
    }

    /// `POST /v1/consumers`.
    pub async fn create_consumer(
        &self,
        req: &proto::CreateConsumer,
        idempotency_key: Option<&str>,
    ) -> Result<Answer<proto::ConsumerCreated>, ClientError> {
        self.call(
            reqwest::Method::POST,
            "/v1/consumers",
            Some(req),
            idempotency_key,
        )
        .await
    }

    /// `GET /v1/consumers`.
    pub async fn list_consumers(
        &self,
        environment: Option<&str>,
    ) -> Result<Answer<proto::List<proto::Consumer>>, ClientError> {
        let path = match environment {
            Some(e) => format!("/v1/consumers?environment={}", urlencode(e)),
            None => "/v1/consumers".into(),
        };
        self.call(reqwest::Method::GET, &path, None, None).await
    }

    /// `GET /v1/consumers/{env}/{name}`.
    pub async fn get_consumer(
        &self,
        env: &str,
        name: &str,
    ) -> Result<Answer<proto::Consumer>, ClientError> {
        self.call(
            reqwest::Method::GET,
            &consumer_path(env, name, ""),
            None,
            None,
        )
        .await
    }

    /// `POST …/rotate`.
    pub async fn rotate(
        &self,
        env: &str,
        name: &str,
        req: &proto::RotateRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Answer<proto::Rotated>, ClientError> {
        self.call(
            reqwest::Method::POST,
            &consumer_path(env, name, "/rotate"),
            Some(req),
            idempotency_key,
        )
        .await
    }

    /// `POST …/versions/{n}/revoke`; with `wait` (a duration such as `2s`), the answer says
    /// which live nodes of the cluster have the revocation (`propagation`).
    pub async fn revoke(
        &self,
        env: &str,
        name: &str,
        version: u32,
        req: &proto::RevokeRequest,
        wait: Option<&str>,
    ) -> Result<Answer<proto::KeyVersion>, ClientError> {
        let query = wait.map_or_else(String::new, |w| format!("?wait={}", urlencode(w)));
        self.call(
            reqwest::Method::POST,
            &consumer_path(env, name, &format!("/versions/{version}/revoke{query}")),
            Some(req),
            None,
        )
        .await
    }

    /// `POST …/versions/{n}/retire`.
    pub async fn retire(
        &self,
        env: &str,
        name: &str,
        version: u32,
    ) -> Result<Answer<proto::KeyVersion>, ClientError> {
        self.call(
            reqwest::Method::POST,
            &consumer_path(env, name, &format!("/versions/{version}/retire")),
            None,
            None,
        )
        .await
    }

    /// `POST …/versions/{n}/retire` with an explicit confirmation (protected environments).
    pub async fn retire_confirmed(
        &self,
        env: &str,
        name: &str,
        version: u32,
        req: &proto::Confirm,
    ) -> Result<Answer<proto::KeyVersion>, ClientError> {
        self.call(
            reqwest::Method::POST,
            &consumer_path(env, name, &format!("/versions/{version}/retire")),
            Some(req),
            None,
        )
        .await
    }

    /// `POST …/disable` with an explicit confirmation (protected environments).
    pub async fn disable_confirmed(
        &self,
        env: &str,
        name: &str,
        req: &proto::Confirm,
    ) -> Result<Answer<proto::Consumer>, ClientError> {
        self.call(
            reqwest::Method::POST,
            &consumer_path(env, name, "/disable"),
            Some(req),
            None,
        )
        .await
    }

    /// `POST …/disable`.
    pub async fn disable(
        &self,
        env: &str,
        name: &str,
    ) -> Result<Answer<proto::Consumer>, ClientError> {
        self.call(
            reqwest::Method::POST,
            &consumer_path(env, name, "/disable"),
            None,
            None,
        )
        .await
    }

    /// `POST …/enable`.
    pub async fn enable(
        &self,
        env: &str,
        name: &str,
    ) -> Result<Answer<proto::Consumer>, ClientError> {
        self.call(
            reqwest::Method::POST,
            &consumer_path(env, name, "/enable"),
            None,
            None,
        )
        .await
    }

    /// `GET /v1/keys/{kid}`: a key version by its kid alone (the key itself is never sent).
    pub async fn get_key(&self, kid: &str) -> Result<Answer<proto::KeyInfo>, ClientError> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/keys/{}", urlencode(kid)),
            None,
            None,
        )
        .await
    }

    /// `POST /v1/verify`.
    pub async fn verify(
        &self,
        req: &proto::VerifyRequest,
    ) -> Result<Answer<proto::VerifyResponse>, ClientError> {
        self.call(reqwest::Method::POST, "/v1/verify", Some(req), None)
            .await
    }
}

impl Client {
    async fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: keyroll_core::redact_url(&self.base),
            reason: root_cause(e),
            kind: self.transport(e).await,
        }
    }

    /// Classifies a transport failure by the error types in its chain; a connect failure that
    /// shows none of them is told apart from a DNS failure by resolving the host again.
    async fn transport(&self, e: &reqwest::Error) -> Transport {
        if e.is_timeout() {
            return Transport::Timeout;
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if c.downcast_ref::<rustls::Error>().is_some() {
                return Transport::Tls;
            }
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                if carries_tls_error(io) {
                    return Transport::Tls;
                }
                use std::io::ErrorKind as K;
                match io.kind() {
                    K::ConnectionRefused => return Transport::Refused,
                    K::TimedOut => return Transport::Timeout,
                    K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe
                    | K::UnexpectedEof => return Transport::ConnectionLost,
                    _ => {}
                }
            }
            cause = c.source();
        }
        if !e.is_connect() {
            // The request went out on an open connection: the answer was cut off.
            return Transport::ConnectionLost;
        }
        let Ok(url) = reqwest::Url::parse(&self.base) else {
            return Transport::Other;
        };
        // `domain` is None for an IP address: then no name was resolved.
        match (url.domain(), url.port_or_known_default()) {
            (Some(host), Some(port)) => match tokio::net::lookup_host((host, port)).await {
                Ok(mut addrs) => match addrs.next() {
                    Some(_) => Transport::Other,
                    None => Transport::Dns,
                },
                Err(_) => Transport::Dns,
            },
            _ => Transport::Other,
        }
    }
}

fn consumer_path(env: &str, name: &str, rest: &str) -> String {
    format!("/v1/consumers/{}/{}{rest}", urlencode(env), urlencode(name))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether an IO error wraps a rustls error, at any depth: tokio-rustls puts it in an IO error
/// and the HTTPS connector may wrap that one again; `source()` skips the wrapped error itself.
fn carries_tls_error(io: &std::io::Error) -> bool {
    let mut inner = io.get_ref();
    while let Some(e) = inner {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
    }
    false
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Object-safe JSON serialization for request bodies.
mod erased {
    /// Anything serializable as a JSON body.
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

/// Lifecycle status and events.
impl Client {
    /// `GET /v1/status`, optionally for one environment or one consumer (`ENV/NAME`).
    pub async fn status(
        &self,
        environment: Option<&str>,
        consumer: Option<&str>,
    ) -> Result<Answer<proto::List<proto::ConsumerStatus>>, ClientError> {
        let mut query = Vec::new();
        if let Some(e) = environment {
            query.push(format!("environment={}", urlencode(e)));
        }
        if let Some(c) = consumer {
            query.push(format!("consumer={}", urlencode(c)));
        }
        let path = if query.is_empty() {
            "/v1/status".to_owned()
        } else {
            format!("/v1/status?{}", query.join("&"))
        };
        self.call(reqwest::Method::GET, &path, None, None).await
    }

    /// `GET /v1/cluster`: the nodes on this database, the leader lease, the change log's head.
    pub async fn cluster(&self) -> Result<Answer<proto::ClusterStatus>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/cluster", None, None)
            .await
    }

    /// `GET /v1/events`.
    pub async fn events(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Answer<proto::List<proto::Event>>, ClientError> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/events?after={after}&limit={limit}"),
            None,
            None,
        )
        .await
    }

    /// `PATCH /v1/consumers/{env}/{name}`.
    pub async fn update_consumer(
        &self,
        env: &str,
        name: &str,
        req: &proto::UpdateConsumer,
    ) -> Result<Answer<proto::Consumer>, ClientError> {
        self.call(
            reqwest::Method::PATCH,
            &consumer_path(env, name, ""),
            Some(req),
            None,
        )
        .await
    }
}

/// The decision history.
impl Client {
    /// `GET /v1/decisions`: the server's last decisions matching `q`, newest first.
    pub async fn decisions(
        &self,
        q: &proto::DecisionQuery,
    ) -> Result<Answer<proto::DecisionList>, ClientError> {
        let limit = q.limit.map(|n| n.to_string());
        let params = [
            ("kid", q.kid.as_deref()),
            ("consumer", q.consumer.as_deref()),
            ("code", q.code.as_deref()),
            ("fingerprint", q.fingerprint.as_deref()),
            ("since", q.since.as_deref()),
            ("kind", q.kind.as_deref()),
            ("identity", q.identity.as_deref()),
            ("serial", q.serial.as_deref()),
            ("limit", limit.as_deref()),
        ];
        let query: Vec<String> = params
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", urlencode(v))))
            .collect();
        let path = if query.is_empty() {
            "/v1/decisions".to_owned()
        } else {
            format!("/v1/decisions?{}", query.join("&"))
        };
        self.call(reqwest::Method::GET, &path, None, None).await
    }
}

/// Admin tokens.
impl Client {
    /// `POST /v1/tokens`: the answer carries the plaintext token, once.
    pub async fn create_token(
        &self,
        req: &proto::CreateToken,
    ) -> Result<Answer<proto::TokenIssued>, ClientError> {
        self.call(reqwest::Method::POST, "/v1/tokens", Some(req), None)
            .await
    }

    /// `GET /v1/tokens`.
    pub async fn list_tokens(&self) -> Result<Answer<proto::List<proto::AdminToken>>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/tokens", None, None)
            .await
    }

    /// `POST /v1/tokens/{id}/revoke`.
    pub async fn revoke_token(
        &self,
        id: &str,
        req: &proto::RevokeToken,
    ) -> Result<Answer<proto::AdminToken>, ClientError> {
        let path = format!("/v1/tokens/{}/revoke", urlencode(id));
        self.call(reqwest::Method::POST, &path, Some(req), None)
            .await
    }

    /// `POST /v1/tokens/{id}/rotate`: the answer carries the new plaintext token, once.
    pub async fn rotate_token(
        &self,
        id: &str,
        req: &proto::RotateToken,
    ) -> Result<Answer<proto::TokenIssued>, ClientError> {
        let path = format!("/v1/tokens/{}/rotate", urlencode(id));
        self.call(reqwest::Method::POST, &path, Some(req), None)
            .await
    }
}

/// Which audit entries [`Client::audit`] asks for.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only entries at or after this time (RFC 3339) or within this duration (`1h`).
    pub since: Option<String>,
    /// Only entries on this target (`ENV/NAME` also matches its versions).
    pub target: Option<String>,
    /// Only entries by this actor.
    pub actor: Option<String>,
    /// Only entries after this position.
    pub after: Option<i64>,
    /// At most this many (1 to 1000).
    pub limit: Option<u32>,
}

impl Client {
    /// `GET /v1/audit`: one page of audit entries, oldest first, with the chain's head.
    pub async fn audit(
        &self,
        filter: &AuditFilter,
    ) -> Result<Answer<proto::AuditPage>, ClientError> {
        let after = filter.after.map(|n| n.to_string());
        let limit = filter.limit.map(|n| n.to_string());
        let params = [
            ("since", filter.since.as_deref()),
            ("target", filter.target.as_deref()),
            ("actor", filter.actor.as_deref()),
            ("after", after.as_deref()),
            ("limit", limit.as_deref()),
        ];
        let query: Vec<String> = params
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", urlencode(v))))
            .collect();
        let path = if query.is_empty() {
            "/v1/audit".to_owned()
        } else {
            format!("/v1/audit?{}", query.join("&"))
        };
        self.call(reqwest::Method::GET, &path, None, None).await
    }
}

/// Self-service: the calls of an agent, made with a client whose token is the consumer's key.
impl Client {
    /// `GET /v1/self`: the caller's consumer as its agent needs it. With `wait`, the server
    /// holds the answer until the consumer's revision differs from `known` or `wait` passes.
    /// With `known_bundle` (the CA bundle version the agent's `ca.pem` holds), a change of the
    /// server's bundle also ends the wait.
    pub async fn self_state(
        &self,
        wait: Option<Duration>,
        known: Option<i64>,
        known_bundle: Option<u64>,
    ) -> Result<Answer<proto::SelfState>, ClientError> {
        let mut query = Vec::new();
        if let Some(w) = wait {
            query.push(format!("wait={}s", w.as_secs().max(1)));
        }
        if let Some(k) = known {
            query.push(format!("known={k}"));
        }
        if let Some(b) = known_bundle {
            query.push(format!("known_bundle={b}"));
        }
        let path = if query.is_empty() {
            "/v1/self".to_owned()
        } else {
            format!("/v1/self?{}", query.join("&"))
        };
        let timeout = wait.map(|w| w + Duration::from_secs(15));
        self.call_within(reqwest::Method::GET, &path, None, None, timeout)
            .await
    }

    /// `POST /v1/self/rotate`: the next version, issued to this agent (plaintext once; the
    /// same `idempotency_key` after a lost answer returns it again).
    pub async fn self_rotate(
        &self,
        req: &proto::SelfRotateRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Answer<proto::Rotated>, ClientError> {
        self.call(
            reqwest::Method::POST,
            "/v1/self/rotate",
            Some(req),
            idempotency_key,
        )
        .await
    }

    /// `POST /v1/self/handover`: the newer version another agent (or this one before a crash)
    /// was issued from the caller's version.
    pub async fn self_handover(
        &self,
        req: &proto::HandoverRequest,
    ) -> Result<Answer<proto::Handover>, ClientError> {
        self.call(reqwest::Method::POST, "/v1/self/handover", Some(req), None)
            .await
    }

    /// `POST /v1/self/report`: the agent's heartbeat, made with the key it holds now.
    pub async fn self_report(
        &self,
        req: &proto::AgentReport,
    ) -> Result<Answer<proto::AgentInfo>, ClientError> {
        self.call(reqwest::Method::POST, "/v1/self/report", Some(req), None)
            .await
    }

    /// `GET /v1/agents[?environment=E]` (admin): every agent's last report.
    pub async fn list_agents(
        &self,
        environment: Option<&str>,
    ) -> Result<Answer<proto::List<proto::AgentInfo>>, ClientError> {
        let path = match environment {
            Some(e) => format!("/v1/agents?environment={}", urlencode(e)),
            None => "/v1/agents".to_owned(),
        };
        self.call(reqwest::Method::GET, &path, None, None).await
    }

    /// `POST /v1/consumers/{env}/{name}/request-rotation` (admin): ask its agents to rotate.
    pub async fn request_rotation(
        &self,
        env: &str,
        name: &str,
        req: &proto::RequestRotation,
    ) -> Result<Answer<proto::Consumer>, ClientError> {
        self.call(
            reqwest::Method::POST,
            &consumer_path(env, name, "/request-rotation"),
            Some(req),
            None,
        )
        .await
    }
}

/// Webhooks: endpoints (the secret shown once), deliveries and replays.
impl Client {
    /// `POST /v1/webhooks`: the answer carries the `whsec_` secret, once.
    pub async fn create_webhook(
        &self,
        req: &proto::CreateWebhook,
    ) -> Result<Answer<proto::WebhookSecret>, ClientError> {
        self.call(reqwest::Method::POST, "/v1/webhooks", Some(req), None)
            .await
    }

    /// `GET /v1/webhooks`.
    pub async fn list_webhooks(&self) -> Result<Answer<proto::List<proto::Webhook>>, ClientError> {
        self.call(reqwest::Method::GET, "/v1/webhooks", None, None)
            .await
    }

    /// `GET /v1/webhooks/{id}`.
    pub async fn get_webhook(&self, id: &str) -> Result<Answer<proto::Webhook>, ClientError> {
        let path = format!("/v1/webhooks/{}", urlencode(id));
        self.call(reqwest::Method::GET, &path, None, None).await
    }

    /// `DELETE /v1/webhooks/{id}`.
    pub async fn delete_webhook(&self, id: &str) -> Result<Answer<proto::Webhook>, ClientError> {
        let path = format!("/v1/webhooks/{}", urlencode(id));
        self.call(reqwest::Method::DELETE, &path, None, None).await
    }

    /// `POST /v1/webhooks/{id}/rotate-secret`: the new secret, once.
    pub async fn rotate_webhook_secret(
        &self,
        id: &str,
        req: &proto::RotateWebhookSecret,
    ) -> Result<Answer<proto::WebhookSecret>, ClientError> {
        let path = format!("/v1/webhooks/{}/rotate-secret", urlencode(id));
        self.call(reqwest::Method::POST, &path, Some(req), None)
            .await
    }

    /// `POST /v1/webhooks/{id}/enable`.
    pub async fn enable_webhook(&self, id: &str) -> Result<Answer<proto::Webhook>, ClientError> {
        let path = format!("/v1/webhooks/{}/enable", urlencode(id));
        self.call(reqwest::Method::POST, &path, None, None).await
    }

    /// `GET /v1/webhook-deliveries[?endpoint=&state=&limit=]`, newest first.
    pub async fn webhook_deliveries(
        &self,
        endpoint: Option<&str>,
        state: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Answer<proto::List<proto::WebhookDeliveryInfo>>, ClientError> {
        let limit = limit.map(|l| l.to_string());
        let query: Vec<String> = [
            ("endpoint", endpoint),
            ("state", state),
            ("limit", limit.as_deref()),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", urlencode(v))))
        .collect();
        let path = if query.is_empty() {
            "/v1/webhook-deliveries".to_owned()
        } else {
            format!("/v1/webhook-deliveries?{}", query.join("&"))
        };
        self.call(reqwest::Method::GET, &path, None, None).await
    }

    /// `GET /v1/webhook-deliveries/{id}`: with its attempts.
    pub async fn webhook_delivery(
        &self,
        id: &str,
    ) -> Result<Answer<proto::WebhookDeliveryInfo>, ClientError> {
        let path = format!("/v1/webhook-deliveries/{}", urlencode(id));
        self.call(reqwest::Method::GET, &path, None, None).await
    }

    /// `POST /v1/webhook-deliveries/{id}/replay`: one more attempt now, same `webhook-id`.
    pub async fn replay_webhook_delivery(
        &self,
        id: &str,
    ) -> Result<Answer<proto::WebhookDeliveryInfo>, ClientError> {
        let path = format!("/v1/webhook-deliveries/{}/replay", urlencode(id));
        self.call(reqwest::Method::POST, &path, None, None).await
    }
}
