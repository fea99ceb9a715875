//! TLS on keyroll's own listener, checked with tools keyroll did not write: `curl --cacert` and
//! `openssl s_client` against `keyroll serve` with `[tls]` certificate files (made by openssl);
//! replacing the files changes the serial a new handshake sees, without a restart; a bad
//! replacement keeps the old certificate and logs one error; a bad file at start refuses start
//! with one line; the CLI speaks HTTPS with `--ca-file`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness;

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA in `dir/ca.pem`; `None` (skipped) without openssl and curl outside CI.
fn ca(dir: &Path) -> Option<()> {
    if !harness::require_program("openssl", "apt-get install openssl")
        || !harness::require_program("curl", "apt-get install curl")
    {
        return None;
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=keyroll listener test CA",
        ],
    );
    Some(())
}

/// A server leaf for localhost and 127.0.0.1 signed by the CA: `NAME.pem`, `NAME.key`; returns
/// its serial as `openssl x509 -serial` prints it.
fn leaf(dir: &Path, name: &str) -> String {
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            // A fresh random serial per leaf, so a reload is visible.
            &format!("0x{:016x}", fastrand::u64(1..)),
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
    serial_of_file(dir, &pem)
}

fn serial_of_file(dir: &Path, pem: &str) -> String {
    openssl(dir, &["x509", "-noout", "-serial", "-in", pem])
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

/// The serial of the certificate a new handshake with `addr` is served, per `openssl s_client`.
fn served_serial(addr: &str) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("serial=")
        .map(|s| s.to_ascii_lowercase())
}

fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_config(dir: &Path, cert: &Path, key: &Path) -> PathBuf {
    let config = dir.join("keyroll.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nwatch_interval = \"200ms\"\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    config
}

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_https_from_files_and_reload_them_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if ca(d).is_none() {
        return;
    }
    let first = leaf(d, "first");
    let second = leaf(d, "second");
    assert_ne!(first, second);
    let (cert, key) = (d.join("tls.pem"), d.join("tls.key"));
    std::fs::copy(d.join("first.pem"), &cert).unwrap();
    std::fs::copy(d.join("first.key"), &key).unwrap();
    let config = tls_config(d, &cert, &key);
    let s = harness::start_with(&["-c", config.to_str().unwrap()]);
    // The harness hands over the address before it stores the line it came in.
    until("the https listening line", Duration::from_secs(5), || {
        s.logs_text().contains("\"scheme\":\"https\"")
    });
    let url = format!("https://localhost:{}", port(&s.addr));
    let ca_pem = d.join("ca.pem");
    let ca_pem = ca_pem.to_str().unwrap();

    // curl trusts the listener through the CA; without it, the handshake fails.
    let (code, body, err) = curl(&["--cacert", ca_pem, &format!("{url}/healthz")]);
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("ok"), "{body}");
    let (code, _, _) = curl(&[&format!("{url}/healthz")]);
    assert_eq!(
        code, 60,
        "curl without the CA must fail certificate verification"
    );
    assert_eq!(served_serial(&s.addr).as_deref(), Some(first.as_str()));

    // The CLI over HTTPS with --ca-file; without it the failure says TLS.
    let token = s.token();
    let cli = |extra: &[&str]| {
        let out = Command::new(harness::BIN)
            .args(["--server", &url, "--token", &token, "--output", "json"])
            .args(extra)
            .args(["env", "list"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = cli(&["--ca-file", ca_pem]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = cli(&[]);
    assert_ne!(code, 0);
    assert!(err.contains("tls_failed"), "{err}");
    let (code, err) = cli(&["--ca-file", "/nonexistent/ca.pem"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");

    // The dashboard's session cookie is marked Secure when the listener speaks TLS.
    let (code, headers, err) = curl(&[
        "--cacert",
        ca_pem,
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-H",
        &format!("origin: {url}"),
        "--data-urlencode",
        &format!("token={token}"),
        &format!("{url}/ui/login"),
    ]);
    assert_eq!(code, 0, "{err}");
    let session_cookie = headers
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: keyroll_session=")
        })
        .unwrap_or_else(|| panic!("no session cookie over https: {headers}"));
    assert!(session_cookie.contains("Secure"), "{session_cookie}");
    assert!(session_cookie.contains("HttpOnly"), "{session_cookie}");

    // Replace the files (key first, as tooling may): new handshakes get the new serial.
    std::fs::copy(d.join("second.key"), &key).unwrap();
    std::fs::copy(d.join("second.pem"), &cert).unwrap();
    until("the second certificate", Duration::from_secs(10), || {
        served_serial(&s.addr).as_deref() == Some(second.as_str())
    });
    let reloaded = s
        .logs_text()
        .lines()
        .find(|l| l.contains("\"tls.reloaded\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .unwrap();
    // The log names the serial the way openssl prints it (maybe without leading zeros).
    assert_eq!(
        reloaded["serial"].as_str().unwrap().trim_start_matches('0'),
        second.trim_start_matches('0')
    );
    let (code, _, err) = curl(&["--cacert", ca_pem, &format!("{url}/healthz")]);
    assert_eq!(code, 0, "{err}");

    // A bad replacement: logged once, the second certificate stays.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    until("tls.reload_failed", Duration::from_secs(10), || {
        s.logs_text().contains("\"tls.reload_failed\"")
    });
    std::thread::sleep(Duration::from_millis(800));
    let failures = s.logs_text().matches("\"tls.reload_failed\"").count();
    assert_eq!(failures, 1, "{}", s.logs_text());
    assert!(s.logs_text().contains(cert.to_str().unwrap()));
    assert_eq!(served_serial(&s.addr).as_deref(), Some(second.as_str()));
    drop(s);

    // At start, the same file refuses start with one line naming it.
    let data = d.join("data2");
    let out = Command::new(harness::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "-c",
        ])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(cert.to_str().unwrap()), "{err}");
    assert!(err.contains("no certificate"), "{err}");
}

/// What the mTLS test issues: files in `dir`, named by what they are.
fn issue_certificates(dir: &Path) {
    use keyroll_ca::{
        KeySource, LeafRequest, RevocationReason, RevokedEntry, Serial, Signer, SpiffeId,
        TrustDomain, crl, issue_leaf, new_intermediate, new_root, pem,
    };
    const DAY: Duration = Duration::from_secs(86_400);
    #[allow(clippy::disallowed_methods)]
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let now = keyroll_core::Timestamp::from_unix_millis(wall);
    let before = now.saturating_sub(3 * DAY);
    let serial = || Serial::from_random(std::array::from_fn(|_| fastrand::u8(..)));
    let td = TrustDomain::parse("example.org").unwrap();
    let root = new_root(&td, 1, before, 365 * DAY, serial()).unwrap();
    let root_s = Signer::from_parts(&root.cert_der, &root.key_pkcs8_der).unwrap();
    let inter = new_intermediate(&root_s, &td, 1, before, 90 * DAY, serial()).unwrap();
    let inter_s = Signer::from_parts(&inter.cert_der, &inter.key_pkcs8_der).unwrap();
    let leaf = |env: &str, svc: &str, server: bool, at, lifetime, s: Serial| {
        let req = LeafRequest {
            identity: SpiffeId::from_parts(&td, env, svc).unwrap(),
            lifetime,
            server_auth: server,
            dns_names: if server {
                vec!["localhost".into()]
            } else {
                vec![]
            },
            ip_addresses: vec![],
            serial: s,
        };
        issue_leaf(&inter_s, &req, KeySource::Generate, at).unwrap()
    };
    let write = |name: &str, l: &keyroll_ca::IssuedLeaf| {
        std::fs::write(
            dir.join(format!("{name}.pem")),
            pem("CERTIFICATE", &l.cert_der) + &pem("CERTIFICATE", &inter.cert_der),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{name}.key")),
            pem("PRIVATE KEY", l.key_pkcs8_der.as_ref().unwrap().as_bytes()),
        )
        .unwrap();
    };
    write("server", &leaf("ops", "keyroll", true, now, DAY, serial()));
    write("alice", &leaf("ops", "alice", false, now, DAY, serial()));
    write("bob", &leaf("prod", "bob", false, now, DAY, serial()));
    write("expired", &leaf("ops", "old", false, before, DAY, serial()));
    let carol = serial();
    write("revoked", &leaf("ops", "carol", false, now, DAY, carol));
    // A foreign CA (its own name: a root with keyroll's subject would be found as the issuer and
    // fail as a bad signature instead): chains nowhere keyroll trusts.
    let foreign_td = TrustDomain::parse("foreign.example").unwrap();
    let other = new_root(&foreign_td, 1, before, 365 * DAY, serial()).unwrap();
    let other_s = Signer::from_parts(&other.cert_der, &other.key_pkcs8_der).unwrap();
    let req = LeafRequest {
        identity: SpiffeId::from_parts(&foreign_td, "ops", "mallory").unwrap(),
        lifetime: DAY,
        server_auth: false,
        dns_names: vec![],
        ip_addresses: vec![],
        serial: serial(),
    };
    let foreign = issue_leaf(&other_s, &req, KeySource::Generate, now).unwrap();
    std::fs::write(
        dir.join("foreign.pem"),
        pem("CERTIFICATE", &foreign.cert_der),
    )
    .unwrap();
    std::fs::write(
        dir.join("foreign.key"),
        pem(
            "PRIVATE KEY",
            foreign.key_pkcs8_der.as_ref().unwrap().as_bytes(),
        ),
    )
    .unwrap();
    let revoked = [RevokedEntry {
        serial: carol,
        revoked_at: now,
        reason: RevocationReason::KeyCompromise,
    }];
    let bundle = pem("CERTIFICATE", &root.cert_der)
        + &pem("CERTIFICATE", &inter.cert_der)
        + &pem(
            "X509 CRL",
            &crl(&root_s, 1, now, now.saturating_add(DAY), &[]).unwrap(),
        )
        + &pem(
            "X509 CRL",
            &crl(&inter_s, 1, now, now.saturating_add(DAY), &revoked).unwrap(),
        );
    std::fs::write(dir.join("ca.pem"), bundle).unwrap();
}

#[test]
fn client_certificates_on_the_admin_api_pass_or_fail_with_their_reason_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if !harness::require_program("curl", "apt-get install curl")
        || !harness::require_program("openssl", "apt-get install openssl")
    {
        return;
    }
    issue_certificates(d);
    let p = |n: &str| d.join(n).to_str().unwrap().to_owned();
    let config = d.join("keyroll.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_auth = \"require_admin\"\nadmin_identities = [\"ops/*\"]\nclient_ca_file = {:?}\ntrust_domain = \"example.org\"\n",
            p("server.pem"),
            p("server.key"),
            p("ca.pem")
        ),
    )
    .unwrap();
    let s = harness::start_with(&["-c", config.to_str().unwrap()]);
    let url = format!("https://localhost:{}", port(&s.addr));
    let token = s.token();
    let auth = format!("Authorization: Bearer {token}");
    let admin = |who: Option<&str>| {
        let mut args = vec![
            "--cacert".to_owned(),
            p("ca.pem"),
            "-H".to_owned(),
            auth.clone(),
            "-w".to_owned(),
            "\n%{http_code}".to_owned(),
        ];
        if let Some(w) = who {
            args.extend([
                "--cert".to_owned(),
                p(&format!("{w}.pem")),
                "--key".to_owned(),
                p(&format!("{w}.key")),
            ]);
        }
        args.push(format!("{url}/v1/environments"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    };
    // Valid and allowed: the admin API answers.
    let (code, out, err) = admin(Some("alice"));
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("200"), "{out}");
    // No certificate: 401 cert_missing; health stays open.
    let (code, out, _) = admin(None);
    assert_eq!(code, 0);
    assert!(
        out.ends_with("401") && out.contains("cert_missing"),
        "{out}"
    );
    let (code, out, _) = curl(&["--cacert", &p("ca.pem"), &format!("{url}/healthz")]);
    assert_eq!((code, out.as_str()), (0, "ok"));
    // A valid certificate of an identity not in admin_identities: 403 cert_wrong_identity.
    let (_, out, _) = admin(Some("bob"));
    assert!(
        out.ends_with("403") && out.contains("cert_wrong_identity"),
        "{out}"
    );
    // openssl s_client completes a handshake with the valid certificate.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {} -servername localhost -CAfile {} -cert {} -key {} </dev/null 2>&1",
            s.addr,
            p("ca.pem"),
            p("alice.pem"),
            p("alice.key")
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0"), "{text}");
    // Refused certificates fail the handshake; the log names the exact reason of each.
    for (who, expected) in [
        ("expired", "cert_expired"),
        ("revoked", "cert_revoked"),
        ("foreign", "cert_unknown_issuer"),
    ] {
        let (code, out, _) = admin(Some(who));
        assert!(code != 0 || !out.ends_with("200"), "{who}: {code} {out}");
        until(
            &format!("{expected}: {}", s.logs_text()),
            Duration::from_secs(5),
            || {
                s.logs_text().lines().any(|l| {
                    l.contains("\"cert.decision\"")
                        && l.contains(&format!("\"code\":\"{expected}\""))
                })
            },
        );
    }
    let line = s
        .logs_text()
        .lines()
        .find(|l| l.contains("\"cert.decision\"") && l.contains("cert_revoked"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .unwrap();
    assert_eq!(line["identity"], "spiffe://example.org/ops/carol", "{line}");
    assert_eq!(line["edge"], "tls_handshake");
    assert!(
        line["serial"].is_string() && line["peer"].is_string(),
        "{line}"
    );
    // Counted by code and edge.
    let (_, metrics, _) = curl(&["--cacert", &p("ca.pem"), &format!("{url}/metrics")]);
    assert!(
        metrics.contains(
            "keyroll_cert_decisions_total{code=\"cert_revoked\",edge=\"tls_handshake\"} 1"
        ),
        "{metrics}"
    );
}
