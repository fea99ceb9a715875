//! nginx terminating mTLS with keyroll's trust bundle (`examples/nginx/keyroll-mtls.conf`:
//! `ssl_verify_client on`, `ssl_client_certificate` = the bundle) and asking keyroll's
//! `/v1/forward-auth-cert` with `$ssl_client_escaped_cert`: a valid certificate reaches the
//! upstream with its identity; a wrong identity, a revoked and an expired certificate each fail
//! with their own code in keyroll's `cert.decision` line, matched by nginx's request id.
//!
//! keyroll runs in this process (its real router and accept loop on a loopback port) with a
//! manual clock: that is how a certificate is expired for keyroll while nginx, on the real clock,
//! still accepts it and forwards it (the point being that keyroll's log names `cert_expired`).
//! Its log lines are read from a subscriber on the thread that runs it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyroll_ca::{
    KeySource, LeafRequest, RevocationReason, RevokedEntry, Serial, SpiffeId, TrustDomain,
};
use keyroll_server::clock::{Clock, Randomness};
use keyroll_server::service::audit::Actor;
use keyroll_server::service::ca::{InitRequest, init, signer};
use keyroll_server::{AppState, Config, Overrides};
use keyroll_store::{AuthorityKind, CrlRecord, SqliteStore};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::harness;
use crate::nginx::{Nginx, free_port, upstream};

type Lines = Arc<Mutex<Vec<Map<String, Value>>>>;

/// Keeps every `cert.decision` line keyroll writes, as the JSON log would show its fields.
struct CertLines(Lines);

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CertLines {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields(Map::new());
        event.record(&mut f);
        if f.0.get("event").and_then(Value::as_str) == Some("cert.decision") {
            self.0.lock().unwrap().push(f.0);
        }
    }
}

/// One workload certificate, as files a client presents.
struct Workload {
    serial: Serial,
    cert: String,
    key: String,
}

struct Keyroll {
    state: Arc<AppState>,
    addr: SocketAddr,
    lines: Lines,
    bundle_pem: String,
    server: Workload,
    workloads: Vec<(&'static str, Workload)>,
}

const DAY: Duration = Duration::from_secs(86_400);

fn random_serial() -> Serial {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    Serial::from_random(b)
}

/// Starts keyroll on its own thread: a CA, the certificates of the test (one of them revoked
/// through a new CRL of the intermediate), and the HTTP listener.
fn start_keyroll(dir: &Path) -> Keyroll {
    let lines: Lines = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let data = dir.to_owned();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        let subscriber = tracing_subscriber::registry().with(CertLines(sink));
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(data, tx));
        });
    });
    let (state, addr, bundle_pem, server, workloads) =
        rx.recv_timeout(Duration::from_secs(60)).unwrap();
    Keyroll {
        state,
        addr,
        lines,
        bundle_pem,
        server,
        workloads,
    }
}

type Started = (
    Arc<AppState>,
    SocketAddr,
    String,
    Workload,
    Vec<(&'static str, Workload)>,
);

async fn serve(data: std::path::PathBuf, tx: std::sync::mpsc::Sender<Started>) {
    let store = SqliteStore::open(&data.join("keyroll.db")).await.unwrap();
    let overrides = Overrides {
        data_dir: Some(data.clone()),
        ..Overrides::default()
    };
    let config = Config::load(None, &overrides).unwrap();
    let clock = Clock::manual(keyroll_server::clock::system_now());
    let state = AppState::with(Arc::new(store), config, clock, Randomness::os());
    state.load().await.unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    init(
        &state,
        &Actor::system("rq_test".into()),
        InitRequest {
            trust_domain: td.clone(),
            root_ttl: None,
            intermediate_ttl: None,
        },
    )
    .await
    .unwrap();
    let stored = state.store.ca_state().await.unwrap();
    let int = stored
        .authorities
        .iter()
        .find(|a| a.kind == AuthorityKind::Intermediate)
        .unwrap()
        .clone();
    let s = signer(&state, &int).unwrap();
    let now = state.clock.now();
    let issue = |identity: &str, lifetime: Duration, server_auth: bool| {
        let (env, svc) = identity.split_once('/').unwrap();
        let req = LeafRequest {
            identity: SpiffeId::from_parts(&td, env, svc).unwrap(),
            lifetime,
            server_auth,
            dns_names: if server_auth {
                vec!["localhost".into()]
            } else {
                vec![]
            },
            ip_addresses: if server_auth {
                vec!["127.0.0.1".parse().unwrap()]
            } else {
                vec![]
            },
            serial: random_serial(),
        };
        let leaf = keyroll_ca::issue_leaf(&s, &req, KeySource::Generate, now).unwrap();
        Workload {
            serial: leaf.serial,
            cert: keyroll_ca::pem("CERTIFICATE", &leaf.cert_der)
                + &keyroll_ca::pem("CERTIFICATE", s.cert_der()),
            key: keyroll_ca::pem("PRIVATE KEY", leaf.key_pkcs8_der.unwrap().as_bytes()),
        }
    };
    let server = issue("ops/nginx", DAY, true);
    let workloads = vec![
        ("billing", issue("prod/billing", DAY, false)),
        ("staging", issue("staging/api", DAY, false)),
        ("old", issue("prod/old", DAY, false)),
        (
            "brief",
            issue("prod/brief", keyroll_ca::MIN_LEAF_LIFETIME, false),
        ),
    ];
    // prod/old is revoked: the intermediate's CRL lists it, installed as a CA write installs it.
    let mut revoked = stored.clone();
    let next = now.saturating_add(DAY);
    let der = keyroll_ca::crl(
        &s,
        2,
        now,
        next,
        &[RevokedEntry {
            serial: workloads[2].1.serial,
            revoked_at: now,
            reason: RevocationReason::KeyCompromise,
        }],
    )
    .unwrap();
    revoked.crls.retain(|c| c.issuer_id != int.id);
    revoked.crls.push(CrlRecord {
        issuer_id: int.id.clone(),
        number: 2,
        this_update: now,
        next_update: next,
        der,
    });
    revoked.bundle_version += 1;
    state.ca.install(&revoked, now).unwrap();
    // What GET /v1/ca/bundle serves: roots, intermediates, one CRL per issuer.
    let trust = state.ca.current().unwrap();
    let mut bundle_pem = String::new();
    for der in trust.anchor_ders().chain(trust.intermediate_ders()) {
        bundle_pem += &keyroll_ca::pem("CERTIFICATE", der);
    }
    for der in trust.crl_ders() {
        bundle_pem += &keyroll_ca::pem("X509 CRL", der);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = keyroll_server::http::router(Arc::clone(&state));
    let limits = state.config.http;
    tx.send((Arc::clone(&state), addr, bundle_pem, server, workloads))
        .unwrap();
    keyroll_server::listener::serve(listener, router, limits, None, std::future::pending()).await;
}

fn start_nginx(prefix: &Path, k: &Keyroll, upstream: &str) -> (Nginx, String) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx");
    let write = |name: &str, text: &str| {
        let p = prefix.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let listen = format!("127.0.0.1:{}", free_port());
    let conf = std::fs::read_to_string(examples.join("keyroll-mtls.conf"))
        .unwrap()
        .replace("@KEYROLL_ADDR@", &k.addr.to_string())
        .replace("@UPSTREAM_ADDR@", upstream)
        .replace("@LISTEN@", &listen)
        .replace("@SERVER_CERT@", &write("server.pem", &k.server.cert))
        .replace("@SERVER_KEY@", &write("server.key", &k.server.key))
        .replace("@CA_BUNDLE@", &write("keyroll-ca.pem", &k.bundle_pem))
        .replace("@IDENTITY_POLICY@", "prod/*");
    let include = write("keyroll-mtls.conf", &conf);
    let wrapper = std::fs::read_to_string(examples.join("test-wrapper.conf"))
        .unwrap()
        .replace("@PREFIX@", prefix.to_str().unwrap())
        .replace("@INCLUDE@", &include);
    let main = write("nginx.conf", &wrapper);
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&main)
        .arg("-p")
        .arg(prefix)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let nginx = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (nginx, listen)
}

/// The answer curl got: status, lowercased head, body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(|v| v.trim().to_owned())
        })
    }
}

/// `curl` over TLS to nginx with a workload's certificate (or none), plus extra headers.
fn curl(dir: &Path, listen: &str, who: Option<&Workload>, extra: &[String]) -> Answer {
    std::fs::write(
        dir.join("ca.pem"),
        std::fs::read_to_string(dir.join("keyroll-ca.pem")).unwrap(),
    )
    .unwrap();
    let mut cmd = Command::new("curl");
    cmd.current_dir(dir)
        .args(["-sS", "--max-time", "10", "--cacert", "ca.pem", "-D", "-"])
        .args(["-o", "body.txt"]);
    if let Some(w) = who {
        std::fs::write(dir.join("client.pem"), &w.cert).unwrap();
        std::fs::write(dir.join("client.key"), &w.key).unwrap();
        cmd.args(["--cert", "client.pem", "--key", "client.key"]);
    }
    for h in extra {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("https://{listen}/invoices/7"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head,
        body: std::fs::read_to_string(dir.join("body.txt")).unwrap_or_default(),
    }
}

/// keyroll's `cert.decision` line for nginx's request id.
fn line_for(lines: &Lines, request_id: &str) -> Map<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.get("request_id").and_then(Value::as_str) == Some(request_id))
        {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no cert.decision line for {request_id}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx's `$ssl_client_escaped_cert` of a PEM text.
fn escaped(pem: &str) -> String {
    pem.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn nginx_mtls_passes_valid_certificates_and_keyroll_names_each_rejection() {
    if !harness::require_program("nginx", "apt-get install -y nginx")
        || !harness::require_program("curl", "apt-get install -y curl")
    {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let k = start_keyroll(data.path());
    let (up, seen) = upstream();
    let prefix = tempfile::tempdir().unwrap();
    let (_nginx, listen) = start_nginx(prefix.path(), &k, &up);
    let dir = prefix.path();
    let who = |name: &str| &k.workloads.iter().find(|(n, _)| *n == name).unwrap().1;

    // Valid: the upstream gets the identity keyroll established, never the certificate header.
    let ok = curl(dir, &listen, Some(who("billing")), &[]);
    assert_eq!(ok.status, 200, "{} {}", ok.head, ok.body);
    assert_eq!(ok.body, "hello from upstream");
    let last = seen
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("reached the upstream");
    assert!(last.contains("x-keyroll-identity: prod/billing"), "{last}");
    assert!(
        last.contains("x-keyroll-spiffe-id: spiffe://example.org/prod/billing"),
        "{last}"
    );
    assert!(
        last.contains(&format!("x-keyroll-serial: {}", who("billing").serial)),
        "{last}"
    );
    assert!(!last.contains("x-client-cert"), "{last}");
    let rid = last
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .trim()
        .to_owned();
    let line = line_for(&k.lines, &rid);
    assert_eq!(line["code"], "valid");
    assert_eq!(line["edge"], "forward_auth_cert");
    assert_eq!(line["identity"], "spiffe://example.org/prod/billing");
    // The workload behind nginx counts as a use of keyroll's root.
    let uses = k.state.ca.take_handshakes();
    assert!(
        uses.iter()
            .any(|u| u.identity == "prod/billing" && u.peer == "127.0.0.1"),
        "{uses:?}"
    );

    let before = seen.lock().unwrap().len();
    let forged = format!("X-Client-Cert: {}", escaped(&who("billing").cert));
    let cases = [
        ("staging", vec![], 403, "cert_wrong_identity"),
        // A client's own X-Client-Cert (someone else's certificate) is replaced by nginx.
        ("staging", vec![forged], 403, "cert_wrong_identity"),
        ("old", vec![], 401, "cert_revoked"),
    ];
    for (name, extra, status, code) in cases {
        let r = curl(dir, &listen, Some(who(name)), &extra);
        assert_eq!(r.status, status, "{name}: {} {}", r.head, r.body);
        assert_eq!(
            r.header("x-keyroll-reason").as_deref(),
            Some(code),
            "{name}"
        );
        let body: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{name}: the problem body is JSON ({e}): {}", r.body));
        assert_eq!(body["code"], code, "{name}");
        let rid = r.header("x-request-id").unwrap();
        let line = line_for(&k.lines, &rid);
        assert_eq!(line["code"], code, "{name}: {line:?}");
        assert_eq!(line["edge"], "forward_auth_cert");
        assert_eq!(
            line["serial"],
            who(name).serial.to_string(),
            "{name}: the presented certificate, not the forged header"
        );
    }

    // Expired: still valid for nginx's clock, past its notAfter at keyroll's.
    let brief = curl(dir, &listen, Some(who("brief")), &[]);
    assert_eq!(brief.status, 200, "{}", brief.body);
    k.state.clock.advance(Duration::from_secs(10 * 60));
    let expired = curl(dir, &listen, Some(who("brief")), &[]);
    assert_eq!(expired.status, 401, "{}", expired.body);
    assert_eq!(
        expired.header("x-keyroll-reason").as_deref(),
        Some("cert_expired")
    );
    let line = line_for(&k.lines, &expired.header("x-request-id").unwrap());
    assert_eq!(line["code"], "cert_expired");

    // No certificate: nginx itself refuses the request; keyroll is not asked.
    let asked = k.lines.lock().unwrap().len();
    let none = curl(dir, &listen, None, &[]);
    assert_eq!(none.status, 400, "{}", none.body);
    assert_eq!(k.lines.lock().unwrap().len(), asked);

    assert_eq!(
        seen.lock().unwrap().len(),
        before + 1,
        "only the still-valid brief certificate reached the app after the first request"
    );
    let err = std::fs::read_to_string(prefix.path().join("error.log")).unwrap_or_default();
    assert!(!err.contains("[emerg]"), "{err}");
}
