//! The CA's relying parties inside the server, with a manual clock: certificate forward-auth
//! (`/v1/forward-auth-cert` through the real router) and the TLS listener verifying against the
//! CA's trust store, which follows a revocation without a restart (real TCP, rustls client).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response};
use keyroll_ca::{
    CertCode, IssuedLeaf, KeySource, LeafRequest, RevocationReason, RevokedEntry, Serial, SpiffeId,
    TrustDomain,
};
use keyroll_core::Timestamp;
use keyroll_server::clock::{Clock, Randomness};
use keyroll_server::service::audit::Actor;
use keyroll_server::service::ca::{InitRequest, init, signer};
use keyroll_server::{AppState, Config, Overrides};
use keyroll_store::{AuthorityKind, CrlRecord, SqliteStore};
use tower_service::Service;

/// 2026-12-01T00:00:00Z.
fn t0() -> Timestamp {
    Timestamp::from_unix_millis(1_796_083_200_000)
}

const DAY: Duration = Duration::from_secs(86_400);

async fn state_at(dir: &tempfile::TempDir, clock: Clock) -> Arc<AppState> {
    let store = SqliteStore::open(&dir.path().join("keyroll.db"))
        .await
        .unwrap();
    let overrides = Overrides {
        data_dir: Some(dir.path().to_path_buf()),
        ..Overrides::default()
    };
    let config = Config::load(None, &overrides).unwrap();
    let state = AppState::with(Arc::new(store), config, clock, Randomness::os());
    state.load().await.unwrap();
    init(
        &state,
        &Actor::system("rq_test".into()),
        InitRequest {
            trust_domain: TrustDomain::parse("example.org").unwrap(),
            root_ttl: None,
            intermediate_ttl: None,
        },
    )
    .await
    .unwrap();
    state
}

/// The current intermediate's signer.
async fn intermediate(state: &AppState) -> keyroll_ca::Signer {
    let stored = state.store.ca_state().await.unwrap();
    let int = stored
        .authorities
        .iter()
        .find(|a| a.kind == AuthorityKind::Intermediate)
        .unwrap();
    signer(state, int).unwrap()
}

async fn issue(state: &AppState, identity: &str, server_auth: bool) -> (IssuedLeaf, Vec<u8>) {
    let s = intermediate(state).await;
    let (env, svc) = identity.split_once('/').unwrap();
    let td = TrustDomain::parse("example.org").unwrap();
    let req = LeafRequest {
        identity: SpiffeId::from_parts(&td, env, svc).unwrap(),
        lifetime: DAY,
        server_auth,
        dns_names: if server_auth {
            vec!["localhost".into()]
        } else {
            vec![]
        },
        ip_addresses: vec![],
        serial: Serial::from_random(rand16()),
    };
    let leaf = keyroll_ca::issue_leaf(&s, &req, KeySource::Generate, state.clock.now()).unwrap();
    (leaf, s.cert_der().to_vec())
}

fn rand16() -> [u8; 16] {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b[0] |= 1;
    b
}

/// Revokes `serial` the way the CA does it: a new CRL of the intermediate listing it, installed
/// as the runtime's trust store (what a CA write does after its transaction).
async fn revoke(state: &AppState, serial: Serial) {
    let mut stored = state.store.ca_state().await.unwrap();
    let int = stored
        .authorities
        .iter()
        .find(|a| a.kind == AuthorityKind::Intermediate)
        .unwrap()
        .clone();
    let s = signer(state, &int).unwrap();
    let now = state.clock.now();
    let next = now.saturating_add(7 * DAY);
    let der = keyroll_ca::crl(
        &s,
        2,
        now,
        next,
        &[RevokedEntry {
            serial,
            revoked_at: now,
            reason: RevocationReason::KeyCompromise,
        }],
    )
    .unwrap();
    stored.crls.retain(|c| c.issuer_id != int.id);
    stored.crls.push(CrlRecord {
        issuer_id: int.id.clone(),
        number: 2,
        this_update: now,
        next_update: next,
        der,
    });
    stored.bundle_version += 1;
    state.ca.install(&stored, now).unwrap();
}

/// nginx's `$ssl_client_escaped_cert` of a chain: PEM, URL-encoded.
fn escaped(ders: &[&[u8]]) -> String {
    let pem: String = ders
        .iter()
        .map(|d| keyroll_ca::pem("CERTIFICATE", d))
        .collect();
    let mut out = String::new();
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const PROXY: &str = "127.0.0.1:40000";

async fn ask(
    state: &Arc<AppState>,
    peer: &str,
    path: &str,
    headers: &[(&str, HeaderValue)],
) -> Response<Body> {
    let mut req = Request::builder().uri(path).method("GET");
    for (k, v) in headers {
        req = req.header(*k, v.clone());
    }
    let mut req = req.body(Body::empty()).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    let mut router = keyroll_server::http::router(Arc::clone(state));
    router.call(req).await.unwrap()
}

fn header<'r>(r: &'r Response<Body>, name: &str) -> &'r str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

async fn body_json(r: Response<Body>) -> serde_json::Value {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

#[tokio::test]
async fn forwarded_certificates_are_judged_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(t0());
    let state = state_at(&dir, clock.clone()).await;
    let (billing, int) = issue(&state, "prod/billing", false).await;
    let (staging, _) = issue(&state, "staging/api", false).await;
    let cert = escaped(&[&billing.cert_der, &int]);
    let url = "/v1/forward-auth-cert/invoices/7";

    let ok = ask(
        &state,
        PROXY,
        url,
        &[
            ("x-client-cert", value(&cert)),
            ("x-request-id", value("rq_cert_ok")),
        ],
    )
    .await;
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(header(&ok, "x-keyroll-identity"), "prod/billing");
    assert_eq!(
        header(&ok, "x-keyroll-spiffe-id"),
        "spiffe://example.org/prod/billing"
    );
    assert_eq!(header(&ok, "x-keyroll-serial"), billing.serial.to_string());
    assert_eq!(header(&ok, "x-keyroll-reason"), "valid");
    assert_eq!(header(&ok, "x-request-id"), "rq_cert_ok");
    // The leaf alone (the intermediate is in the trust store) and base64 DER are read too.
    let leaf_only = ask(
        &state,
        PROXY,
        url,
        &[("x-client-cert", value(&escaped(&[&billing.cert_der])))],
    )
    .await;
    assert_eq!(leaf_only.status().as_u16(), 200);
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD.encode(&billing.cert_der);
    let traefik = ask(&state, PROXY, url, &[("x-client-cert", value(&der))]).await;
    assert_eq!(traefik.status().as_u16(), 200);

    // The valid ones counted as uses of the root, by the workload's identity.
    let uses = state.ca.take_handshakes();
    assert_eq!(uses.len(), 1, "{uses:?}");
    assert_eq!(uses[0].identity, "prod/billing");
    assert_eq!(uses[0].count, 3);
    assert_eq!(uses[0].serial, billing.serial.to_string());

    // The identity policy: from the gateway's header, else the query.
    let policy = |p: &'static str| ("x-keyroll-identity-policy", HeaderValue::from_static(p));
    let allowed = ask(
        &state,
        PROXY,
        url,
        &[("x-client-cert", value(&cert)), policy("prod/*")],
    )
    .await;
    assert_eq!(allowed.status().as_u16(), 200);
    let staging_cert = escaped(&[&staging.cert_der, &int]);
    let wrong = ask(
        &state,
        PROXY,
        url,
        &[("x-client-cert", value(&staging_cert)), policy("prod/*")],
    )
    .await;
    assert_eq!(wrong.status().as_u16(), 403);
    assert_eq!(header(&wrong, "x-keyroll-reason"), "cert_wrong_identity");
    let body = body_json(wrong).await;
    assert_eq!(body["code"], "cert_wrong_identity");
    assert!(
        body["detail"].as_str().unwrap().contains("staging/api"),
        "{body}"
    );
    let by_env = ask(
        &state,
        PROXY,
        url,
        &[
            ("x-client-cert", value(&staging_cert)),
            ("x-keyroll-environment", value("prod")),
        ],
    )
    .await;
    assert_eq!(by_env.status().as_u16(), 403);
    let by_query = ask(
        &state,
        PROXY,
        "/v1/forward-auth-cert?identity=staging/api",
        &[("x-client-cert", value(&staging_cert))],
    )
    .await;
    assert_eq!(by_query.status().as_u16(), 200);
    let bad_policy = ask(
        &state,
        PROXY,
        url,
        &[("x-client-cert", value(&cert)), policy("Prod/Billing")],
    )
    .await;
    assert_eq!(
        bad_policy.status().as_u16(),
        403,
        "an invalid policy allows nobody"
    );

    // No certificate; one from a peer that is not a trusted proxy.
    let missing = ask(&state, PROXY, url, &[]).await;
    assert_eq!(missing.status().as_u16(), 401);
    assert_eq!(header(&missing, "x-keyroll-reason"), "cert_missing");
    let direct = ask(
        &state,
        "192.0.2.7:5555",
        url,
        &[("x-client-cert", value(&cert))],
    )
    .await;
    assert_eq!(direct.status().as_u16(), 401);
    assert_eq!(header(&direct, "x-keyroll-reason"), "cert_missing");
    let body = body_json(direct).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("192.0.2.7") && detail.contains("usage.trusted_proxies"),
        "{detail}"
    );

    // Revoked: the CA's new CRL is what the next request is checked against.
    revoke(&state, billing.serial).await;
    let revoked = ask(&state, PROXY, url, &[("x-client-cert", value(&cert))]).await;
    assert_eq!(revoked.status().as_u16(), 401);
    assert_eq!(header(&revoked, "x-keyroll-reason"), "cert_revoked");
    assert_eq!(
        header(&revoked, "x-keyroll-serial"),
        billing.serial.to_string()
    );

    // Expired: at the server clock's now.
    clock.advance(2 * DAY);
    let expired = ask(
        &state,
        PROXY,
        url,
        &[("x-client-cert", value(&staging_cert))],
    )
    .await;
    assert_eq!(expired.status().as_u16(), 401);
    assert_eq!(header(&expired, "x-keyroll-reason"), "cert_expired");

    // The decision history holds them beside the key decisions, filterable.
    let token = keyroll_server::create_first_admin_token(state.store.as_ref())
        .await
        .unwrap();
    let bearer = value(&format!("Bearer {token}"));
    let key_rejection = ask(&state, PROXY, "/v1/forward-auth", &[]).await;
    assert_eq!(key_rejection.status().as_u16(), 401);
    let list = |q: String| {
        let (state, bearer) = (Arc::clone(&state), bearer.clone());
        async move {
            let r = ask(&state, PROXY, &q, &[("authorization", bearer)]).await;
            assert_eq!(r.status().as_u16(), 200, "{q}");
            body_json(r).await
        }
    };
    let revoked = list("/v1/decisions?kind=cert&code=cert_revoked".to_owned()).await;
    assert_eq!(revoked["matched"], 1, "{revoked}");
    let entry = &revoked["items"][0];
    assert_eq!(entry["kind"], "cert");
    assert_eq!(entry["identity"], "prod/billing");
    assert_eq!(entry["spiffe_id"], "spiffe://example.org/prod/billing");
    assert_eq!(entry["serial"], billing.serial.to_string());
    assert_eq!(entry["edge"], "forward_auth_cert");
    assert_eq!(entry["environment"], "prod");
    assert!(entry["detail"].as_str().unwrap().contains("CRL"), "{entry}");
    let by_serial = list(format!("/v1/decisions?serial={}", billing.serial)).await;
    // Three valid (PEM, leaf only, DER), allowed by prod/*, the invalid policy, revoked.
    assert_eq!(by_serial["matched"], 6, "{by_serial}");
    let by_identity =
        list("/v1/decisions?identity=staging/api&code=cert_wrong_identity".to_owned()).await;
    assert_eq!(
        by_identity["matched"], 2,
        "header policy and environment: {by_identity}"
    );
    let keys = list("/v1/decisions?kind=key".to_owned()).await;
    assert_eq!(keys["matched"], 1);
    assert_eq!(keys["items"][0]["kind"], "key");
    assert_eq!(keys["items"][0]["code"], "missing_credential");
    assert!(
        keys["items"][0].get("identity").is_none(),
        "key entries unchanged"
    );
    let everything = list("/v1/decisions?limit=100000".to_owned()).await;
    let items = everything["items"].as_array().unwrap();
    assert_eq!(items.len() as u64, everything["matched"].as_u64().unwrap());
    assert_eq!(
        items[0]["code"], "missing_credential",
        "newest first across both kinds"
    );
    assert_eq!(items[1]["code"], "cert_expired");
    let bad = ask(
        &state,
        PROXY,
        "/v1/decisions?serial=nothex",
        &[("authorization", bearer.clone())],
    )
    .await;
    assert_eq!(bad.status().as_u16(), 400);

    // Every decision is counted under its code and edge.
    let metrics = state.observer.render(&state.index, clock.now());
    for code in [
        "valid",
        "cert_wrong_identity",
        "cert_missing",
        "cert_revoked",
        "cert_expired",
    ] {
        let series =
            format!("keyroll_cert_decisions_total{{code=\"{code}\",edge=\"forward_auth_cert\"}}");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

#[tokio::test]
async fn no_header_content_makes_it_fail_with_a_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_at(&dir, Clock::manual(t0())).await;
    let (leaf, int) = issue(&state, "prod/billing", false).await;
    let good = escaped(&[&leaf.cert_der, &int]);
    let key_pem = keyroll_ca::pem(
        "PRIVATE KEY",
        leaf.key_pkcs8_der.as_ref().unwrap().as_bytes(),
    );
    let mut cases: Vec<(String, HeaderValue)> = vec![
        ("garbage".into(), value("hello")),
        ("broken escape".into(), value("%-----BEGIN%2")),
        ("bad hex".into(), value("%zz%zz")),
        (
            "wrong label".into(),
            value(&good.replace("CERTIFICATE", "X509%20CRL")),
        ),
        (
            "private key".into(),
            value(&good.replace("CERTIFICATE", "PRIVATE%20KEY")),
        ),
        ("truncated".into(), value(&good[..good.len() / 2])),
        (
            "huge".into(),
            value(&"A".repeat(keyroll_server::http::forward_auth_cert::MAX_CERT_HEADER + 1)),
        ),
        (
            "not ascii".into(),
            HeaderValue::from_bytes(b"\xff\xfe-----BEGIN").unwrap(),
        ),
        ("spaces".into(), value("   ")),
        (
            "pem of a key".into(),
            value(&key_pem.replace('\n', "%0A").replace(' ', "%20")),
        ),
    ];
    for i in 0..200 {
        let len = fastrand::usize(1..600);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                // Header-legal bytes: visible ASCII, space, tab and obs-text.
                let b = fastrand::u8(..);
                if b < 0x20 || b == 0x7f { b'%' } else { b }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            cases.push((format!("random {i}"), v));
        }
        // A real certificate with one byte of its escaped text changed.
        let mut mutated = good.clone().into_bytes();
        let at = fastrand::usize(..mutated.len());
        mutated[at] = b"%A0z+/="[fastrand::usize(..7)];
        if let Ok(v) = HeaderValue::from_bytes(&mutated) {
            cases.push((format!("mutated {i}"), v));
        }
    }
    for (name, v) in cases {
        let r = ask(
            &state,
            PROXY,
            "/v1/forward-auth-cert",
            &[("x-client-cert", v)],
        )
        .await;
        let status = r.status().as_u16();
        assert!(matches!(status, 200 | 401 | 403), "{name}: {status}");
        let reason = header(&r, "x-keyroll-reason").to_owned();
        assert!(CertCode::parse(&reason).is_some(), "{name}: {reason:?}");
        if status != 200 {
            let body = body_json(r).await;
            assert_eq!(body["code"], reason.as_str(), "{name}");
            assert!(
                !body.to_string().contains("PRIVATE KEY-----"),
                "{name}: no key material echoed"
            );
        }
    }
    // Sent twice: not guessed which one counts.
    let twice = ask(
        &state,
        PROXY,
        "/v1/forward-auth-cert",
        &[
            ("x-client-cert", value(&good)),
            ("x-client-cert", value(&good)),
        ],
    )
    .await;
    assert_eq!(header(&twice, "x-keyroll-reason"), "cert_malformed");
}

/// The listener without `tls.client_ca_file`: its verifier starts from the CA's trust store, and
/// a revocation (a new CRL installed by the CA) reaches the next handshake without a restart.
#[tokio::test]
async fn the_listener_verifies_against_the_ca_and_follows_its_changes() {
    use keyroll_server::config::{ClientAuth, TlsSettings, TlsSource};
    use keyroll_server::tls;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    // The handshake checks validity at the server's clock; webpki on the client side uses the
    // real one, so the CA is made at the real now.
    let dir = tempfile::tempdir().unwrap();
    let real_now = keyroll_server::clock::system_now();
    let state = state_at(&dir, Clock::manual(real_now)).await;
    let (server_leaf, int) = issue(&state, "ops/keyroll", true).await;
    let (alice, _) = issue(&state, "ops/alice", false).await;
    let settings = TlsSettings {
        source: TlsSource::Files {
            cert: "unused.pem".into(),
            key: "unused.pem".into(),
        },
        client_auth: ClientAuth::Optional,
        admin_identities: vec![],
        client_ca_file: None,
        trust_domain: None,
        watch_interval: Duration::from_secs(1),
    };
    let codes: Arc<parking_lot::Mutex<Vec<CertCode>>> = Arc::default();
    let sink_codes = Arc::clone(&codes);
    let observed = keyroll_server::handshake_sink(&state);
    let sink: keyroll_ca::DecisionSink = Arc::new(move |d, peer| {
        sink_codes.lock().push(d.code);
        observed(d, peer);
    });
    let clock_state = Arc::clone(&state);
    let client = tls::client_verification(
        &settings,
        &state.ca,
        sink,
        Arc::new(move || clock_state.clock.now()),
    )
    .unwrap()
    .expect("client certificates are asked for");
    // A trust domain other than the CA's is refused.
    let mut other = settings.clone();
    other.trust_domain = Some("other.org".into());
    let err = tls::client_verification(&other, &state.ca, Arc::new(|_, _| {}), Arc::new(t0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other.org") && err.contains("example.org"),
        "{err}"
    );

    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tls::follow_ca_trust(
        Arc::clone(&client.verifier),
        client.ca_trust.clone().expect("follows the CA"),
        stop_rx,
    ));
    let base = tls::server_config(
        vec![
            CertificateDer::from(server_leaf.cert_der.clone()),
            CertificateDer::from(int.clone()),
        ],
        PrivateKeyDer::Pkcs8(
            server_leaf
                .key_pkcs8_der
                .as_ref()
                .unwrap()
                .as_bytes()
                .to_vec()
                .into(),
        ),
    )
    .unwrap();
    let (_cfg_tx, cfg_rx) = tokio::sync::watch::channel(base);
    let acceptor = tls::Acceptor::new(cfg_rx, ClientAuth::Optional, Duration::from_secs(5))
        .with_client_verification(client);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let outcome = match acceptor.accept(stream, peer).await {
                Ok((mut tls, info)) => {
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut tls, b"x").await;
                    Ok(info.peer_certificate.map(|p| p.serial))
                }
                Err(e) => Err(e.to_string()),
            };
            let _ = results_tx.send(outcome);
        }
    });
    let trust = state.ca.current().unwrap();
    let connect = || {
        let config = keyroll_ca::client_config(
            &trust,
            Some((
                vec![alice.cert_der.clone(), int.clone()],
                alice.key_pkcs8_der.as_ref().unwrap(),
            )),
        )
        .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            if let Ok(mut tls) = connector.connect(name, tcp).await {
                let mut b = [0u8; 1];
                let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut b).await;
            }
        }
    };
    connect().await;
    assert_eq!(results.recv().await.unwrap(), Ok(Some(alice.serial)));
    let uses = state.ca.take_handshakes();
    assert_eq!(uses.len(), 1, "the valid handshake is a use of the root");
    assert_eq!(uses[0].identity, "ops/alice");

    revoke(&state, alice.serial).await;
    // The follower runs on another task: give it the change, then handshake again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        connect().await;
        if results.recv().await.unwrap().is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation never reached the listener"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(codes.lock().last(), Some(&CertCode::CertRevoked));
}

/// `tls.issue`: the listener's certificate comes from the CA (an audited issuance), and at half
/// its life a new one is published on the listener's watch, superseding the first; a new
/// handshake is served the new serial.
#[tokio::test]
async fn the_listener_certificate_is_issued_by_the_ca_and_renewed_at_half_life() {
    use keyroll_server::tls_issue::{IssueSpec, issue_config, renew};

    // The client checks the served certificates at the real clock: the first is issued 13 hours
    // ago (by the server's manual clock), so that its half life has passed at the real now.
    let dir = tempfile::tempdir().unwrap();
    let real_now = keyroll_server::clock::system_now();
    let state = state_at(
        &dir,
        Clock::manual(real_now.saturating_sub(13 * 3600 * Duration::from_secs(1))),
    )
    .await;
    let actor = Actor::system("rq_test".into());
    keyroll_server::service::create_environment(
        &state,
        &actor,
        keyroll_core::Environment::parse("ops").unwrap(),
        false,
        None,
    )
    .await
    .unwrap();
    let spec = IssueSpec {
        identity: keyroll_core::ConsumerRef::parse("ops/keyroll").unwrap(),
        dns: vec!["localhost".into()],
        ip: vec!["127.0.0.1".parse().unwrap()],
    };
    let (config, first) = issue_config(&state, &spec, None).await.unwrap();
    let trust = state.ca.current().unwrap();
    // The serial a new handshake is served, read by a client that trusts only the CA.
    let served = |config: Arc<rustls::ServerConfig>| {
        let trust = Arc::clone(&trust);
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                let _ = tokio_rustls::TlsAcceptor::from(config).accept(stream).await;
            });
            let client = keyroll_ca::client_config(&trust, None).unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap();
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            keyroll_ca::inspect(&leaf)
                .unwrap()
                .serial
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(served(Arc::clone(&config)).await, first.serial);
    assert_eq!(first.identity.to_string(), "ops/keyroll");
    assert!(first.server_auth);

    let (tx, mut rx) = tokio::sync::watch::channel(config);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(renew(
        Arc::clone(&state),
        spec,
        first.clone(),
        Duration::from_millis(20),
        tx,
        stop_rx,
    ));
    // Not before half its life...
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!rx.has_changed().unwrap(), "renewed too early");
    // ...and soon after it.
    state.clock.set(real_now);
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("renewed at half life")
        .unwrap();
    let second = served(rx.borrow_and_update().clone()).await;
    assert_ne!(second, first.serial);
    let old = state
        .store
        .get_certificate(&first.serial)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.superseded_by.as_deref(), Some(second.as_str()));
    let audit = state.store.list_audit(20).await.unwrap();
    assert_eq!(
        audit.iter().filter(|a| a.action == "cert.issued").count(),
        2,
        "both issuances are audited"
    );
}

/// A rotation moves signing to a new intermediate: the listener's certificate from the old one
/// is renewed at once (not at half its life), onto the CA that signs now, so the old root is not
/// held in the bundle by the listener itself.
#[tokio::test]
async fn the_listener_certificate_follows_signing_to_a_new_intermediate_at_once() {
    use keyroll_server::service::ca::{RotateRequest, rotate};
    use keyroll_server::tls_issue::{IssueSpec, issue_config, renew};
    use keyroll_store::AuthorityState;

    let dir = tempfile::tempdir().unwrap();
    let now = keyroll_server::clock::system_now();
    let state = state_at(&dir, Clock::manual(now)).await;
    let actor = Actor::system("rq_test".into());
    keyroll_server::service::create_environment(
        &state,
        &actor,
        keyroll_core::Environment::parse("ops").unwrap(),
        false,
        None,
    )
    .await
    .unwrap();
    let spec = IssueSpec {
        identity: keyroll_core::ConsumerRef::parse("ops/keyroll").unwrap(),
        dns: vec!["localhost".into()],
        ip: vec![],
    };
    let (config, first) = issue_config(&state, &spec, None).await.unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(config);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(renew(
        Arc::clone(&state),
        spec,
        first.clone(),
        Duration::from_millis(20),
        tx,
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!rx.has_changed().unwrap(), "renewed with nothing due");

    // A root rotation that enters and signs now; the timeline's steps carry it out.
    rotate(
        &state,
        &actor,
        RotateRequest {
            root: true,
            enters_bundle_at: Some(now),
            signs_from: Some(now.saturating_add(Duration::from_millis(1))),
            idle: Some(Duration::from_secs(60)),
        },
    )
    .await
    .unwrap();
    state.clock.set(now.saturating_add(Duration::from_secs(1)));
    keyroll_server::jobs::ca_step(&state).await;
    let ca = state.store.ca_state().await.unwrap();
    let signing = ca
        .authorities
        .iter()
        .find(|a| a.kind == AuthorityKind::Intermediate && a.state == AuthorityState::Active)
        .expect("an intermediate signs")
        .id
        .clone();
    assert_ne!(signing, first.issuer_id, "signing moved");

    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("renewed when its issuer stopped signing")
        .unwrap();
    let renewed = state
        .store
        .get_certificate(&first.serial)
        .await
        .unwrap()
        .unwrap()
        .superseded_by
        .expect("the first certificate is superseded");
    let second = state
        .store
        .get_certificate(&renewed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.issuer_id, signing, "renewed onto the signing CA");
    // Once renewed, nothing more is due: no renewal loop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!rx.has_changed().unwrap(), "renewed again with nothing due");
}
