//! `keyroll agent --cert-dir` against a real server, as real processes: two services get
//! certificates through their agents (one of them started before `keyroll ca init`, so it
//! learns of the CA through the long-poll) and an mTLS exchange between them succeeds with
//! `openssl s_server -Verify` and `openssl s_client`, and with a rustls server on keyroll's own
//! `ReasonedClientVerifier` (which refuses a valid certificate of the wrong identity); a renewal replaces the whole set (new
//! serial, new key) and runs the reload command; a bundle change reaches ca.pem and the
//! agent's report; a revoked identity is logged as such and not retried in a loop; bad
//! settings are refused with the flag named.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::{Agent, wait_until, write_key};
use crate::harness::{self, Server};

const FAST: [&str; 4] = ["--poll-wait", "5s", "--heartbeat", "2s"];

fn ok(r: harness::Run) -> harness::Run {
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    r
}

fn ca_init(s: &Server) {
    ok(s.cli(&["ca", "init", "--trust-domain", "example.test"]));
}

/// `ENV/NAME` consumers delivered by agent; their first keys.
fn consumers(s: &Server, names: &[&str]) -> Vec<String> {
    ok(s.cli(&["env", "create", "prod"]));
    names
        .iter()
        .map(|n| s.consumer(&format!("prod/{n}"), &["--delivery", "agent"]))
        .collect()
}

/// `keyroll agent` for `prod/NAME` keeping its key in DIR/NAME.key and its certificates in
/// DIR/NAME/.
fn cert_agent(s: &Server, dir: &Path, name: &str, key: &str, extra: &[&str]) -> Agent {
    let key_file = dir.join(format!("{name}.key"));
    write_key(&key_file, key);
    let cert_dir = dir.join(name);
    let consumer = format!("prod/{name}");
    let mut args = vec![
        "agent",
        "--consumer",
        &consumer,
        "--key-file",
        key_file.to_str().unwrap(),
        "--cert-dir",
        cert_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(&FAST);
    args.extend_from_slice(extra);
    Agent::spawn(&s.url(), &args)
}

fn sh(cmd: &str) -> harness::Run {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    harness::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The serial `openssl x509` reads from DIR/cert.pem (lowercase hex).
fn serial(dir: &Path) -> String {
    let r = ok(sh(&format!(
        "openssl x509 -noout -serial -in {}",
        dir.join("cert.pem").display()
    )));
    r.stdout
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

/// Whether key.pem is the key of cert.pem (their public keys, as openssl prints them).
fn key_matches(dir: &Path) -> bool {
    let cert = ok(sh(&format!(
        "openssl x509 -noout -pubkey -in {}",
        dir.join("cert.pem").display()
    )));
    let key = ok(sh(&format!(
        "openssl pkey -pubout -in {}",
        dir.join("key.pem").display()
    )));
    cert.stdout == key.stdout && !cert.stdout.is_empty()
}

/// `GET /v1/agents`: the agents of `consumer`.
fn agents_of(s: &Server, consumer: &str) -> Vec<Value> {
    let v: Value = harness::http()
        .get(format!("{}/v1/agents", s.url()))
        .bearer_auth(s.token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["items"]
        .as_array()
        .or_else(|| v["agents"].as_array())
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["consumer"] == consumer)
        .collect()
}

fn server_bundle_version(s: &Server) -> u64 {
    let v: Value = harness::http()
        .get(format!("{}/v1/ca/bundle?format=json", s.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["bundle_version"].as_u64().unwrap()
}

/// A running `openssl s_server` and its output.
struct SServer {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s_server(addr: &str, dir: &Path) -> SServer {
    let mut child = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            addr,
            "-www",
            "-Verify",
            "2",
            "-verify_return_error",
        ])
        .arg("-cert")
        .arg(dir.join("cert.pem"))
        // -cert reads the leaf only; the intermediate after it is sent from -cert_chain.
        .arg("-cert_chain")
        .arg(dir.join("cert.pem"))
        .arg("-key")
        .arg(dir.join("key.pem"))
        .arg("-CAfile")
        .arg(dir.join("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut o = sink.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
    }
    let s = SServer { child, out };
    wait_until("s_server listening", Duration::from_secs(10), || {
        s.out.lock().unwrap().contains("ACCEPT")
    });
    s
}

/// `openssl s_client` to `addr` (with the client certificate of `dir`, if any), sending one
/// HTTP request; its whole output.
fn s_client(addr: &str, ca_dir: &Path, cert_dir: Option<&Path>) -> harness::Run {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        addr,
        "-verify_return_error",
        "-ign_eof",
    ])
    .arg("-CAfile")
    .arg(ca_dir.join("ca.pem"));
    if let Some(d) = cert_dir {
        cmd.arg("-cert")
            .arg(d.join("cert.pem"))
            .arg("-cert_chain")
            .arg(d.join("cert.pem"))
            .arg("-key")
            .arg(d.join("key.pem"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    harness::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn two_services_get_certificates_through_their_agents_and_talk_mtls() {
    if !harness::require_program("openssl", "apt-get install openssl") {
        return;
    }
    let s = harness::start();
    let keys = consumers(&s, &["api", "web"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // api's agent starts before the CA exists: it waits, and the long-poll tells it of the CA.
    let api = cert_agent(&s, d, "api", &keys[0], &["--cert-server-auth"]);
    api.wait_for("agent.no_ca", 1, Duration::from_secs(20));
    assert!(!d.join("api/cert.pem").exists());
    let asked = Instant::now();
    ca_init(&s);
    let issued = api.wait_for("agent.cert_issued", 1, Duration::from_secs(15));
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "the certificate came {:?} after ca init; log:\n{}",
        asked.elapsed(),
        api.text()
    );
    assert_eq!(issued[0]["reason"], "missing");
    assert_eq!(issued[0]["spiffe_id"], "spiffe://example.test/prod/api");
    assert_eq!(issued[0]["server_auth"], true);
    let web = cert_agent(&s, d, "web", &keys[1], &[]);
    let issued = web.wait_for("agent.cert_issued", 1, Duration::from_secs(20));
    assert_eq!(issued[0]["spiffe_id"], "spiffe://example.test/prod/web");

    for name in ["api", "web"] {
        let cd = d.join(name);
        let mode = |f: &str| std::fs::metadata(cd.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("key.pem"), 0o600, "{name}");
        assert!(key_matches(&cd), "{name}: key.pem is cert.pem's key");
        ok(sh(&format!(
            "openssl verify -CAfile {0}/ca.pem -untrusted {0}/cert.pem {0}/cert.pem",
            cd.display()
        )));
        let text = ok(sh(&format!(
            "openssl x509 -noout -text -in {}/cert.pem",
            cd.display()
        )))
        .stdout;
        assert!(
            text.contains(&format!("URI:spiffe://example.test/prod/{name}")),
            "{text}"
        );
        assert_eq!(
            text.contains("TLS Web Server Authentication"),
            name == "api",
            "{name}: serverAuth only when asked for"
        );
        let leftovers: Vec<String> = std::fs::read_dir(&cd)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !["cert.pem", "key.pem", "ca.pem"].contains(&n.as_str()))
            .collect();
        assert!(leftovers.is_empty(), "{name}: {leftovers:?}");
    }
    // The private keys never reached the server: not in its database nor its log.
    let db = s.database_text();
    let logs = s.logs_text();
    for name in ["api", "web"] {
        let pem = std::fs::read_to_string(d.join(name).join("key.pem")).unwrap();
        let body = pem.lines().nth(1).unwrap();
        assert!(
            !db.contains(body) && !logs.contains(body),
            "{name}'s key leaked"
        );
        assert!(!api.text().contains(body) && !web.text().contains(body));
    }

    // mTLS: api serves with its certificate and requires a client certificate from its CA.
    let addr = harness::free_addr();
    let server = s_server(&addr, &d.join("api"));
    let with = s_client(&addr, &d.join("web"), Some(&d.join("web")));
    assert!(
        with.stdout.contains("Verify return code: 0 (ok)"),
        "web verified api's certificate:\n{}\n{}",
        with.stdout,
        with.stderr
    );
    assert!(
        with.stdout.contains("HTTP/1.0 200 ok"),
        "the exchange completed:\n{}\n{}",
        with.stdout,
        with.stderr
    );
    wait_until(
        "s_server saw web's certificate",
        Duration::from_secs(5),
        || server.out.lock().unwrap().contains("prod/web"),
    );
    // Without a client certificate the same server refuses: the exchange above was mutual.
    let without = s_client(&addr, &d.join("web"), None);
    assert!(
        !without.stdout.contains("HTTP/1.0 200 ok"),
        "a client without a certificate was served:\n{}",
        without.stdout
    );
    drop(server);

    // Each agent reports the bundle its ca.pem holds.
    let version = server_bundle_version(&s);
    assert!(version >= 1);
    for consumer in ["prod/api", "prod/web"] {
        wait_until(
            &format!("{consumer}'s report of bundle {version}"),
            Duration::from_secs(15),
            || {
                agents_of(&s, consumer)
                    .iter()
                    .any(|a| a["bundle_version"].as_u64() == Some(version))
            },
        );
    }
    let st = harness::cli_offline(
        &[
            "agent",
            "status",
            "--key-file",
            d.join("api.key").to_str().unwrap(),
        ],
        Path::new("/"),
    );
    assert_eq!(st.code, 0, "{}{}", st.stdout, st.stderr);
    assert!(
        st.stdout.contains(&format!("version {version} in ca.pem")),
        "{}",
        st.stdout
    );
    let st = harness::cli_offline(
        &[
            "agent",
            "status",
            "--key-file",
            d.join("web.key").to_str().unwrap(),
            "--output",
            "json",
        ],
        Path::new("/"),
    );
    assert_eq!(st.code, 0, "{}{}", st.stdout, st.stderr);
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["healthy"], true, "{v}");
    let c = &v["certificate"];
    assert_eq!(c["spiffe_id"], "spiffe://example.test/prod/web", "{v}");
    assert_eq!(c["serial"].as_str().unwrap(), serial(&d.join("web")));
    assert_eq!(c["bundle_version"], version);
    assert_eq!(c["reload_pending"], false);
    assert!(!st.stdout.contains("PRIVATE KEY"));
}

/// A rustls server on `listener` with the certificate set of `dir`, verifying clients with
/// keyroll's `ReasonedClientVerifier` over `bundle_pem` (roots, intermediates, CRLs) for
/// `allowed` identities; every decision goes to the returned list. Serves each connection one
/// line of HTTP naming the peer.
fn rustls_server(
    listener: std::net::TcpListener,
    dir: &Path,
    bundle_pem: &[u8],
    allowed: &[&str],
) -> Arc<Mutex<Vec<keyroll_ca::CertDecision>>> {
    keyroll_ca::tls::install_provider();
    let chain = keyroll_ca::parse_pem_certs(&std::fs::read(dir.join("cert.pem")).unwrap()).unwrap();
    let key =
        keyroll_ca::parse_pem_private_key(&std::fs::read(dir.join("key.pem")).unwrap()).unwrap();
    let trust = keyroll_ca::TrustStore::from_bundle_pem(bundle_pem).unwrap();
    let td = keyroll_ca::TrustDomain::parse("example.test").unwrap();
    let policy = keyroll_ca::IdentityPolicy::new(td, allowed).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink_seen = Arc::clone(&seen);
    let sink: keyroll_ca::DecisionSink = Arc::new(move |d, _peer| {
        sink_seen.lock().unwrap().push(d.clone());
    });
    let now: Arc<dyn Fn() -> keyroll_core::Timestamp + Send + Sync> = Arc::new(|| {
        #[allow(clippy::disallowed_methods)] // rustls and openssl use the wall clock too
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        keyroll_core::Timestamp::from_unix_millis(i64::try_from(t.as_millis()).unwrap())
    });
    let verifier = keyroll_ca::ReasonedClientVerifier::new(
        Arc::new(parking_lot::RwLock::new(Arc::new(trust))),
        policy,
        true,
        sink,
        now,
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut tcp) = stream else { continue };
            let peer = tcp.peer_addr().unwrap();
            let config =
                keyroll_ca::server_config(chain.clone(), &key, Some(verifier.for_peer(peer)))
                    .unwrap();
            let mut conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            let mut line = String::new();
            let mut reader = BufReader::new(&mut tls);
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let who = seen_identity(&reader.get_ref().conn.peer_certificates());
            let _ = write!(tls, "HTTP/1.0 200 OK\r\n\r\nhello {who}\n");
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    seen
}

fn seen_identity(chain: &Option<&[rustls::pki_types::CertificateDer<'static>]>) -> String {
    chain
        .and_then(|c| c.first())
        .and_then(|leaf| keyroll_ca::inspect(leaf).ok())
        .and_then(|i| i.uri_sans.first().cloned())
        .unwrap_or_else(|| "nobody".to_owned())
}

#[test]
fn keyrolls_own_verifier_accepts_the_agents_certificate_by_identity() {
    if !harness::require_program("openssl", "apt-get install openssl") {
        return;
    }
    let s = harness::start();
    let keys = consumers(&s, &["api", "web", "batch"]);
    ca_init(&s);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agents: Vec<Agent> = [
        ("api", &keys[0], true),
        ("web", &keys[1], false),
        ("batch", &keys[2], false),
    ]
    .into_iter()
    .map(|(name, key, server)| {
        cert_agent(
            &s,
            d,
            name,
            key,
            if server { &["--cert-server-auth"] } else { &[] },
        )
    })
    .collect();
    for a in &agents {
        a.wait_for("agent.cert_issued", 1, Duration::from_secs(20));
    }
    // A relying party of its own checks revocation too: it takes the whole bundle (roots,
    // intermediates, CRLs), not only the roots in ca.pem.
    let bundle = harness::http()
        .get(format!("{}/v1/ca/bundle", s.url()))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = rustls_server(listener, &d.join("api"), &bundle, &["prod/web"]);

    let web = s_client(&addr, &d.join("web"), Some(&d.join("web")));
    assert!(
        web.stdout.contains("Verify return code: 0 (ok)")
            && web.stdout.contains("hello spiffe://example.test/prod/web"),
        "{}\n{}",
        web.stdout,
        web.stderr
    );
    // batch's certificate is valid, but not an identity this server accepts.
    let batch = s_client(&addr, &d.join("batch"), Some(&d.join("batch")));
    assert!(!batch.stdout.contains("hello"), "{}", batch.stdout);
    wait_until("both decisions", Duration::from_secs(5), || {
        seen.lock().unwrap().len() >= 2
    });
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].code.as_str(), "valid", "{seen:?}");
    assert_eq!(
        seen[0].identity.as_deref(),
        Some("spiffe://example.test/prod/web")
    );
    assert_eq!(
        seen[0].serial.map(|s| s.to_string()),
        Some(serial(&d.join("web")))
    );
    assert_eq!(seen[1].code.as_str(), "cert_wrong_identity", "{seen:?}");
    assert_eq!(
        seen[1].identity.as_deref(),
        Some("spiffe://example.test/prod/batch")
    );
}

#[test]
fn renewal_replaces_the_whole_set_and_runs_the_reload_command() {
    if !harness::require_program("openssl", "apt-get install openssl") {
        return;
    }
    let s = harness::start();
    let keys = consumers(&s, &["api"]);
    ca_init(&s);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reloads = d.join("reloads");
    let on_change = format!(
        "echo \"$KEYROLL_CHANGED $KEYROLL_CERT_SERIAL $KEYROLL_BUNDLE_VERSION\" >> {}",
        reloads.display()
    );
    // 5 minutes (the minimum) renewed at 0.1 of it: 30 s ± 3 s after receipt.
    let api = cert_agent(
        &s,
        d,
        "api",
        &keys[0],
        &[
            "--cert-ttl",
            "5m",
            "--cert-renew-at",
            "0.1",
            "--on-change",
            &on_change,
        ],
    );
    let first = api.wait_for("agent.cert_issued", 1, Duration::from_secs(20));
    let got_first = Instant::now();
    let cd = d.join("api");
    let serial1 = serial(&cd);
    assert_eq!(
        first[0]["serial"].as_str().unwrap().to_ascii_lowercase(),
        serial1
    );
    let key1 = std::fs::read_to_string(cd.join("key.pem")).unwrap();
    api.wait_for("agent.cert_reload", 1, Duration::from_secs(10));
    let renew_at = keyroll_core::parse_rfc3339(first[0]["renew_at"].as_str().unwrap()).unwrap();
    let received = keyroll_core::parse_rfc3339(first[0]["not_before"].as_str().unwrap()).unwrap();
    let offset = renew_at.duration_since(received);
    // notBefore is set back a minute; the renewal counts from receipt: 60 + 27..33 s.
    assert!(
        (Duration::from_secs(85)..=Duration::from_secs(95)).contains(&offset),
        "renewal {offset:?} after notBefore"
    );

    let second = api.wait_for("agent.cert_issued", 2, Duration::from_secs(60));
    let took = got_first.elapsed();
    assert!(
        (Duration::from_secs(20)..=Duration::from_secs(45)).contains(&took),
        "renewed {took:?} after the first certificate"
    );
    assert_eq!(second[1]["reason"], "due");
    assert_eq!(
        second[1]["previous_serial"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase(),
        serial1
    );
    let serial2 = serial(&cd);
    assert_ne!(serial2, serial1, "a new certificate");
    assert_eq!(
        second[1]["serial"].as_str().unwrap().to_ascii_lowercase(),
        serial2
    );
    let key2 = std::fs::read_to_string(cd.join("key.pem")).unwrap();
    assert_ne!(key2, key1, "a new key pair with every certificate");
    assert!(
        key_matches(&cd),
        "the set is whole: key.pem is cert.pem's key"
    );
    api.wait_for("agent.cert_reload", 2, Duration::from_secs(10));
    let lines = std::fs::read_to_string(&reloads).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("cert ") && lines[1].starts_with("cert "),
        "{lines:?}"
    );
    assert_eq!(
        lines[0].split(' ').nth(1).unwrap().to_ascii_lowercase(),
        serial1
    );
    assert_eq!(
        lines[1].split(' ').nth(1).unwrap().to_ascii_lowercase(),
        serial2
    );
    assert!(api.events("agent.cert_failed").is_empty(), "{}", api.text());
}

#[test]
fn a_restarted_agent_keeps_its_valid_certificate_and_drops_a_half_written_set() {
    let s = harness::start();
    let keys = consumers(&s, &["api"]);
    ca_init(&s);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let api = cert_agent(&s, d, "api", &keys[0], &[]);
    let first = api.wait_for("agent.cert_issued", 1, Duration::from_secs(20));
    let cd = d.join("api");
    let before: Vec<Vec<u8>> = ["cert.pem", "key.pem", "ca.pem"]
        .iter()
        .map(|f| std::fs::read(cd.join(f)).unwrap())
        .collect();
    api.kill9();
    // What a kill during a write before its commit point leaves: new files beside the old
    // ones, no marker.
    std::fs::write(cd.join("cert.pem.next"), "half").unwrap();
    std::fs::write(cd.join("key.pem.next"), "half").unwrap();
    let again = cert_agent(&s, d, "api", &keys[0], &[]);
    again.wait_for("agent.started", 1, Duration::from_secs(20));
    let v = server_bundle_version(&s);
    wait_until(
        "the restarted agent's report",
        Duration::from_secs(15),
        || {
            agents_of(&s, "prod/api")
                .iter()
                .any(|a| a["bundle_version"].as_u64() == Some(v))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        again.events("agent.cert_issued").is_empty(),
        "a valid certificate is kept across a restart:\n{}",
        again.text()
    );
    assert!(again.events("agent.cert_recovered").is_empty());
    let after: Vec<Vec<u8>> = ["cert.pem", "key.pem", "ca.pem"]
        .iter()
        .map(|f| std::fs::read(cd.join(f)).unwrap())
        .collect();
    assert_eq!(after, before, "the old set, whole");
    assert!(!cd.join("cert.pem.next").exists() && !cd.join("key.pem.next").exists());
    // The renewal point survived the restart (it is drawn once per certificate).
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("api.key.keyroll/cert.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["renew_at"], first[0]["renew_at"]);
    assert_eq!(state["bundle_version"], v);
}

#[test]
fn a_bundle_change_reaches_ca_pem_and_the_report() {
    let s = harness::start();
    let keys = consumers(&s, &["api", "other"]);
    ca_init(&s);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let api = cert_agent(&s, d, "api", &keys[0], &[]);
    api.wait_for("agent.cert_issued", 1, Duration::from_secs(20));
    let v1 = server_bundle_version(&s);
    wait_until("the first report", Duration::from_secs(15), || {
        agents_of(&s, "prod/api")
            .iter()
            .any(|a| a["bundle_version"].as_u64() == Some(v1))
    });
    // Revoking another service's certificate publishes a new CRL: a new bundle version, the
    // same roots.
    let other: Value = harness::http()
        .post(format!("{}/v1/certs", s.url()))
        .bearer_auth(s.token())
        .json(&json!({"identity": "prod/other"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let r = harness::http()
        .post(format!("{}/v1/certs/revoke", s.url()))
        .bearer_auth(s.token())
        .json(&json!({"serial": other["serial"], "reason": "key-compromise"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());
    let v2 = server_bundle_version(&s);
    assert!(v2 > v1, "{v2} after {v1}");
    let refreshed = api.wait_for("agent.bundle_refreshed", 1, Duration::from_secs(10));
    assert_eq!(refreshed[0]["bundle_version"], v2);
    assert_eq!(refreshed[0]["from_version"], v1);
    assert_eq!(refreshed[0]["rewritten"], false, "the roots did not change");
    wait_until(
        "the report of the new bundle",
        Duration::from_secs(10),
        || {
            agents_of(&s, "prod/api")
                .iter()
                .any(|a| a["bundle_version"].as_u64() == Some(v2))
        },
    );
    // ca.pem still is what the server's bundle says.
    let bundle: Value = harness::http()
        .get(format!("{}/v1/ca/bundle?format=json", s.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(d.join("api/ca.pem")).unwrap(),
        bundle["roots_pem"].as_str().unwrap()
    );
}

#[test]
fn a_ca_rotation_reaches_ca_pem_reloads_the_app_and_is_reported() {
    let s = harness::start();
    let keys = consumers(&s, &["api"]);
    ca_init(&s);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reloads = d.join("reloads");
    let on_change = format!(
        "echo \"$KEYROLL_CHANGED $KEYROLL_BUNDLE_VERSION\" >> {}",
        reloads.display()
    );
    let api = cert_agent(&s, d, "api", &keys[0], &["--on-change", &on_change]);
    api.wait_for("agent.cert_issued", 1, Duration::from_secs(20));
    api.wait_for("agent.cert_reload", 1, Duration::from_secs(10));
    let cd = d.join("api");
    let roots = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count()
    };
    assert_eq!(roots(&cd.join("ca.pem")), 1);
    let v1 = server_bundle_version(&s);
    // A new root (and its intermediate) entering the bundle now.
    // The server's clock is the wall clock: "now" for it is read here.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let now = keyroll_core::rfc3339(keyroll_core::Timestamp::from_unix_millis(
        i64::try_from(now.as_millis()).unwrap(),
    ));
    let r = harness::http()
        .post(format!("{}/v1/ca/rotate", s.url()))
        .bearer_auth(s.token())
        .json(&json!({"root": true, "enters_bundle_at": now}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().unwrap());
    let refreshed = api.wait_for("agent.bundle_refreshed", 1, Duration::from_secs(20));
    let v2 = refreshed[0]["bundle_version"].as_u64().unwrap();
    assert!(v2 > v1, "{v2} after {v1}");
    assert_eq!(refreshed[0]["rewritten"], true, "{}", refreshed[0]);
    assert_eq!(roots(&cd.join("ca.pem")), 2, "the old root and the new one");
    let bundle: Value = harness::http()
        .get(format!("{}/v1/ca/bundle?format=json", s.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(cd.join("ca.pem")).unwrap(),
        bundle["roots_pem"].as_str().unwrap()
    );
    // The certificate was not renewed for it: only ca.pem changed, and the app was told so.
    assert_eq!(api.events("agent.cert_issued").len(), 1);
    api.wait_for("agent.cert_reload", 2, Duration::from_secs(10));
    let lines = std::fs::read_to_string(&reloads).unwrap();
    assert_eq!(lines.lines().last().unwrap(), format!("ca {v2}"), "{lines}");
    ok(sh(&format!(
        "openssl verify -CAfile {0}/ca.pem -untrusted {0}/cert.pem {0}/cert.pem",
        cd.display()
    )));
    // The timeline enters the new root and its intermediate one step (one bundle version)
    // at a time; once both are in, the agent's report catches up with the last one, and the
    // rotation no longer waits for this agent.
    let status = || -> Value {
        harness::http()
            .get(format!("{}/v1/ca/status", s.url()))
            .bearer_auth(s.token())
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    wait_until("the new CA in the bundle", Duration::from_secs(20), || {
        status()["authorities"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["state"] != "next")
    });
    let last = server_bundle_version(&s);
    wait_until(
        "the report of the rotated bundle, and no agent on an old one",
        Duration::from_secs(15),
        || {
            agents_of(&s, "prod/api")
                .iter()
                .any(|a| a["bundle_version"].as_u64() == Some(last))
                && status()["authorities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|a| a["depends"]["agents_on_old_bundle"] == json!([]))
        },
    );
    // ca.pem was rewritten once, for the new root; the reload ran once for it.
    let rewrites = api
        .events("agent.bundle_refreshed")
        .iter()
        .filter(|e| e["rewritten"] == true)
        .count();
    assert_eq!(rewrites, 1, "{}", api.text());
    assert_eq!(api.events("agent.cert_reload").len(), 2);
}

#[test]
fn a_revoked_identity_is_logged_as_such_and_not_hammered() {
    let s = harness::start();
    let keys = consumers(&s, &["api"]);
    ca_init(&s);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let api = cert_agent(
        &s,
        d,
        "api",
        &keys[0],
        &["--cert-ttl", "5m", "--cert-renew-at", "0.1"],
    );
    api.wait_for("agent.cert_issued", 1, Duration::from_secs(20));
    let cd = d.join("api");
    let cert = std::fs::read(cd.join("cert.pem")).unwrap();
    let key = std::fs::read(cd.join("key.pem")).unwrap();
    let r = harness::http()
        .post(format!("{}/v1/certs/revoke", s.url()))
        .bearer_auth(s.token())
        .json(&json!({"identity": "prod/api", "reason": "key-compromise"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());
    // The renewal comes due about 30 s after the first certificate, and is refused.
    let refused = api.wait_for("agent.identity_revoked", 1, Duration::from_secs(60));
    assert_eq!(refused[0]["level"], "error");
    assert!(
        refused[0]["message"]
            .as_str()
            .unwrap()
            .contains("identity_revoked"),
        "{}",
        refused[0]
    );
    assert!(refused[0]["retry_in_ms"].as_u64().unwrap() >= 200_000);
    // The old set stays as it was; nothing is asked again soon.
    assert_eq!(std::fs::read(cd.join("cert.pem")).unwrap(), cert);
    assert_eq!(std::fs::read(cd.join("key.pem")).unwrap(), key);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        api.events("agent.identity_revoked").len(),
        1,
        "{}",
        api.text()
    );
    assert_eq!(api.events("agent.cert_issued").len(), 1);
    let st = harness::cli_offline(
        &[
            "agent",
            "status",
            "--key-file",
            d.join("api.key").to_str().unwrap(),
        ],
        Path::new("/"),
    );
    assert_eq!(st.code, 3, "{}{}", st.stdout, st.stderr);
    assert!(st.stdout.contains("identity_revoked"), "{}", st.stdout);
}

#[test]
fn self_state_carries_the_bundle_version_and_its_long_poll_wakes_on_ca_init() {
    let s = harness::start();
    let key = consumers(&s, &["api"]).pop().unwrap();
    let get = |q: &str| {
        harness::http()
            .get(format!("{}/v1/self{q}", s.url()))
            .bearer_auth(&key)
            .timeout(Duration::from_secs(30))
            .send()
            .unwrap()
    };
    let first: Value = get("").json().unwrap();
    assert_eq!(first["bundle_version"], 0, "{first}");
    let r = get("?known_bundle=soon");
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("known_bundle"));

    let url = format!(
        "{}/v1/self?wait=20s&known={}&known_bundle=0",
        s.url(),
        first["revision"]
    );
    let k = key.clone();
    let started = Instant::now();
    let poll = std::thread::spawn(move || {
        let v: Value = harness::http()
            .get(url)
            .bearer_auth(k)
            .timeout(Duration::from_secs(30))
            .send()
            .unwrap()
            .json()
            .unwrap();
        (v, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    ca_init(&s);
    let (answer, took) = poll.join().unwrap();
    assert_eq!(answer["bundle_version"], 1, "{answer}");
    assert!(
        took < Duration::from_secs(8),
        "the long-poll answered {took:?} after it started"
    );
}

#[test]
fn one_agent_config_keeps_the_certificates_of_several_consumers() {
    let s = harness::start();
    let keys = consumers(&s, &["api", "web"]);
    ca_init(&s);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_key(&d.join("api.key"), &keys[0]);
    write_key(&d.join("web.key"), &keys[1]);
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\n\n[[consumer]]\nconsumer = \"prod/api\"\nkey_file = \"api.key\"\ncert_dir = \"tls/api\"\ncert_server_auth = true\ncert_ttl = \"1h\"\n\n[[consumer]]\nconsumer = \"prod/web\"\nkey_file = \"web.key\"\ncert_dir = \"tls/web\"\n",
            s.url()
        ),
    )
    .unwrap();
    let mut args = vec!["agent", "--config", config.to_str().unwrap()];
    args.extend_from_slice(&FAST);
    let agent = Agent::spawn(&s.url(), &args);
    let issued = agent.wait_for("agent.cert_issued", 2, Duration::from_secs(20));
    let mut by: Vec<(String, Value)> = issued
        .iter()
        .map(|e| (e["consumer"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    by.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(by[0].0, "prod/api");
    assert_eq!(by[0].1["server_auth"], true);
    assert_eq!(by[1].0, "prod/web");
    assert_eq!(by[1].1["server_auth"], false);
    // The asked-for lifetime: an hour.
    let nb = keyroll_core::parse_rfc3339(by[0].1["not_before"].as_str().unwrap()).unwrap();
    let na = keyroll_core::parse_rfc3339(by[0].1["not_after"].as_str().unwrap()).unwrap();
    assert_eq!(na.duration_since(nb), Duration::from_secs(3600 + 60));
    for name in ["api", "web"] {
        let cd = d.join("tls").join(name);
        assert!(
            cd.join("cert.pem").exists() && cd.join("ca.pem").exists(),
            "{name}"
        );
        let mode = std::fs::metadata(cd.join("key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    let st = harness::cli_offline(
        &["agent", "status", "--config", config.to_str().unwrap()],
        Path::new("/"),
    );
    assert_eq!(st.code, 0, "{}{}", st.stdout, st.stderr);
    assert_eq!(
        st.stdout.matches("certificate   ").count(),
        2,
        "{}",
        st.stdout
    );
}

#[test]
fn bad_certificate_settings_are_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("k");
    write_key(&key_file, "kr_prod_x");
    let kf = key_file.to_str().unwrap();
    let cd = dir.path().join("tls");
    let cd = cd.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--cert-dir", cd, "--cert-renew-at", "0.95"],
            "--cert-renew-at 0.95 is outside 0.1..0.9",
        ),
        (
            &["--cert-dir", cd, "--cert-ttl", "1m"],
            "--cert-ttl 1m is below the CA's minimum lifetime of 5m",
        ),
        (&["--cert-dir", cd, "--cert-ttl", "soon"], "--cert-ttl:"),
        (&["--cert-ttl", "1h"], "--cert-dir"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["agent", "--consumer", "prod/api", "--key-file", kf];
        args.extend_from_slice(extra);
        let r = harness::cli_offline(&args, dir.path());
        assert_eq!(r.code, 2, "{extra:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(want), "{extra:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    assert!(
        !Path::new(cd).exists(),
        "nothing made for a refused setting"
    );
}

/// A server whose own certificate comes from keyroll's CA (`[tls] issue`) moves to the new root
/// in a root rotation (here: at its restart after signing switched). An agent started with only
/// the old root as `--ca-file` stays connected, because it also trusts the `ca.pem` it keeps,
/// which held the new root before the server switched.
#[test]
fn an_agent_follows_the_servers_own_certificate_to_a_new_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let addr = harness::free_addr();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let s = harness::start_at(&data, &addr);
    let keys = consumers(&s, &["api"]);
    ca_init(&s);
    ok(s.cli(&["env", "create", "ops"]));
    let old_root = d.join("old-root.pem");
    ok(s.cli(&["ca", "bundle", "--out", old_root.to_str().unwrap()]));
    assert_eq!(s.terminate(), Some(0));
    let config = d.join("keyroll.toml");
    std::fs::write(
        &config,
        "[tls]\nissue = { identity = \"ops/keyroll\", dns = [\"localhost\"], ip = [\"127.0.0.1\"] }\n",
    )
    .unwrap();
    let s = harness::start_at_with(&data, &addr, &["-c", config.to_str().unwrap()]);
    let url = format!("https://localhost:{port}");
    let token = s.token();
    let curl = |ca: &Path, path: &str, extra: &[&str]| -> harness::Run {
        let mut cmd = format!(
            "curl -sS --max-time 10 --cacert {} -H 'Authorization: Bearer {token}'",
            ca.display()
        );
        for e in extra {
            cmd.push_str(&format!(" '{e}'"));
        }
        sh(&format!("{cmd} {url}{path}"))
    };
    ok(curl(&old_root, "/healthz", &[]));

    let key_file = d.join("api.key");
    write_key(&key_file, &keys[0]);
    let cert_dir = d.join("api");
    let mut args = vec![
        "agent",
        "--consumer",
        "prod/api",
        "--key-file",
        key_file.to_str().unwrap(),
        "--cert-dir",
        cert_dir.to_str().unwrap(),
        "--ca-file",
        old_root.to_str().unwrap(),
    ];
    args.extend_from_slice(&FAST);
    let api = Agent::spawn(&url, &args);
    api.wait_for("agent.cert_issued", 1, Duration::from_secs(20));

    // A root rotation: the new root enters the bundle now and signs 3 s later.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let at = |ms: u128| {
        keyroll_core::rfc3339(keyroll_core::Timestamp::from_unix_millis(
            i64::try_from(ms).unwrap(),
        ))
    };
    let body = json!({
        "root": true,
        "enters_bundle_at": at(now.as_millis()),
        "signs_from": at(now.as_millis() + 3_000),
    })
    .to_string();
    let r = ok(curl(
        &old_root,
        "/v1/ca/rotate",
        &["-H", "content-type: application/json", "-d", &body],
    ));
    assert!(r.stdout.contains("authorities"), "{}", r.stdout);
    // The agent's kept bundle gains the new root.
    wait_until("the new root in ca.pem", Duration::from_secs(30), || {
        std::fs::read_to_string(cert_dir.join("ca.pem"))
            .map(|p| p.matches("BEGIN CERTIFICATE").count() >= 2)
            .unwrap_or(false)
    });
    let both = cert_dir.join("ca.pem");
    // Signing switches to the new intermediate.
    wait_until(
        "the new intermediate signing",
        Duration::from_secs(30),
        || {
            let r = curl(&both, "/v1/ca/status", &[]);
            let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
            v["authorities"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["kind"] == "intermediate" && x["generation"] == 2 && x["state"] == "active"
                })
            })
        },
    );
    // The server restarts and issues its own certificate from the new intermediate: the old
    // root alone no longer trusts it.
    assert_eq!(s.terminate(), Some(0));
    let s = harness::start_at_with(&data, &addr, &["-c", config.to_str().unwrap()]);
    let restarted = Instant::now();
    let r = curl(&old_root, "/healthz", &[]);
    assert_eq!(
        r.code, 60,
        "the old root must not verify the new certificate: {}",
        r.stderr
    );
    ok(curl(&both, "/healthz", &[]));
    // The agent, told only the old root with --ca-file, still reaches the server: its next
    // report arrives after the restart.
    wait_until(
        "the agent's report after the restart",
        Duration::from_secs(30),
        || {
            let r = curl(&both, "/v1/agents", &[]);
            let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
            restarted.elapsed() > Duration::from_secs(1)
                && v["items"].as_array().is_some_and(|a| {
                    a.iter().any(|x| {
                        x["consumer"] == "prod/api"
                            && x["last_contact"].as_str().is_some_and(|t| {
                                keyroll_core::parse_rfc3339(t).is_some_and(|t| {
                                    #[allow(clippy::disallowed_methods)]
                                    let wall = std::time::SystemTime::now()
                                        .duration_since(std::time::UNIX_EPOCH)
                                        .unwrap();
                                    let age =
                                        i64::try_from(wall.as_millis()).unwrap() - t.unix_millis();
                                    age >= 0
                                        && u128::try_from(age).unwrap()
                                            < restarted.elapsed().as_millis()
                                })
                            })
                    })
                })
        },
    );
    let tls_failures: Vec<_> = api
        .events_all()
        .into_iter()
        .filter(|e| {
            e.to_string().contains("tls_failed") || e.to_string().contains("certificate verify")
        })
        .collect();
    drop(s);
    assert!(
        tls_failures.len() <= 2,
        "the agent kept failing TLS after the restart: {tls_failures:?}"
    );
}
