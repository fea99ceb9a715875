//! The listener on keyroll's own CA, with the real binary: `tls.client_auth` without
//! `tls.client_ca_file` refuses start while there is no CA (one line), and once `keyroll ca init`
//! has made one, a certificate from `keyroll cert issue` is verified in the TLS handshake
//! (`cert.decision`, edge `tls_handshake`), accepted by certificate forward-auth, and both
//! decisions are in `keyroll decisions --kind cert`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness;

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

fn config(d: &Path, server: &Path) -> std::path::PathBuf {
    let config = d.join("keyroll.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_auth = \"optional\"\n",
            server.join("cert.pem"),
            server.join("key.pem"),
        ),
    )
    .unwrap();
    config
}

/// nginx's `$ssl_client_escaped_cert` of a PEM file.
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
fn the_listener_verifies_client_certificates_against_keyroll_ca() {
    if !harness::require_program("curl", "apt-get install -y curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let s = harness::start_in(&data);
    for args in [
        &["ca", "init", "--trust-domain", "example.org"][..],
        &["env", "create", "ops"],
        &["env", "create", "prod"],
    ] {
        let r = s.cli(args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    }
    let (server, billing) = (d.join("server"), d.join("billing"));
    let r = s.cli(&[
        "cert",
        "issue",
        "ops/keyroll",
        "--server-auth",
        "--dns",
        "localhost",
        "--out",
        server.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = s.cli(&[
        "cert",
        "issue",
        "prod/billing",
        "--out",
        billing.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.terminate(), Some(0));

    let config = config(d, &server);
    // Without a CA (another data dir) and without tls.client_ca_file: refused, one line.
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
        .arg(d.join("empty"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("tls.client_ca_file") && err.contains("keyroll ca init"),
        "{err}"
    );

    // With the CA: the handshake is verified against its trust store.
    let s = harness::start_in_with(&data, &["-c", config.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.logs_text().contains("\"scheme\":\"https\"") {
        assert!(Instant::now() < deadline, "no https listening line");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = s.addr.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}");
    let p = |dir: &Path, f: &str| dir.join(f).to_str().unwrap().to_owned();
    let with_cert = [
        "--cacert".to_owned(),
        p(&billing, "ca.pem"),
        "--cert".to_owned(),
        p(&billing, "cert.pem"),
        "--key".to_owned(),
        p(&billing, "key.pem"),
    ];
    let mut args: Vec<&str> = with_cert.iter().map(String::as_str).collect();
    let health = format!("{url}/healthz");
    args.push(&health);
    let (code, body, err) = curl(&args);
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("ok"), "{body}");
    let handshakes = s.events_at_least("cert.decision", 1);
    let h = &handshakes[0];
    assert_eq!(h["code"], "valid", "{h}");
    assert_eq!(h["edge"], "tls_handshake");
    assert_eq!(h["identity"], "spiffe://example.org/prod/billing");

    // Certificate forward-auth on the same server (curl on loopback is a trusted proxy).
    let cert_pem = std::fs::read_to_string(billing.join("cert.pem")).unwrap();
    let header = format!("X-Client-Cert: {}", escaped(&cert_pem));
    let (code, head, err) = curl(&[
        "--cacert",
        &p(&billing, "ca.pem"),
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        &header,
        "-H",
        "X-Keyroll-Identity-Policy: prod/*",
        &format!("{url}/v1/forward-auth-cert"),
    ]);
    assert_eq!(code, 0, "{err}");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-keyroll-identity: prod/billing"), "{head}");

    // Both are in the decision history, as certificate decisions.
    let out = Command::new(harness::BIN)
        .args(["--server", &url, "--ca-file", &p(&billing, "ca.pem")])
        .args(["--token", &s.token(), "--output", "json"])
        .args(["decisions", "--kind", "cert", "--identity", "prod/billing"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let edges: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["edge"].as_str().unwrap())
        .collect();
    assert!(edges.contains(&"tls_handshake"), "{list}");
    assert!(edges.contains(&"forward_auth_cert"), "{list}");
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "cert" && i["identity"] == "prod/billing"),
        "{list}"
    );
}

/// `[tls] issue`: the listener serves a certificate from keyroll's own CA, which a client
/// trusting only the CA's bundle accepts, and which `keyroll cert list` would show (audited).
#[test]
fn the_listener_serves_a_certificate_issued_by_keyroll_ca() {
    if !harness::require_program("curl", "apt-get install -y curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let s = harness::start_in(&data);
    for args in [
        &["ca", "init", "--trust-domain", "example.org"][..],
        &["env", "create", "ops"],
    ] {
        let r = s.cli(args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    }
    let bundle = d.join("ca.pem");
    let r = s.cli(&["ca", "bundle", "--out", bundle.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.terminate(), Some(0));
    let config = d.join("keyroll.toml");
    std::fs::write(
        &config,
        "[tls]\nissue = { identity = \"ops/keyroll\", dns = [\"localhost\"], ip = [\"127.0.0.1\"] }\n",
    )
    .unwrap();
    let s = harness::start_in_with(&data, &["-c", config.to_str().unwrap()]);
    let loaded = s.events_at_least("tls.loaded", 1);
    assert_eq!(loaded[0]["identity"], "ops/keyroll", "{:?}", loaded[0]);
    let serial = loaded[0]["serial"].as_str().unwrap().to_owned();
    let port = s.addr.rsplit(':').next().unwrap().to_owned();
    let (code, body, err) = curl(&[
        "--cacert",
        bundle.to_str().unwrap(),
        &format!("https://localhost:{port}/healthz"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("ok"), "{body}");
    // The served certificate is the one the log named, and an audited issuance of the CA.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
            bundle.display()
        ))
        .output()
        .unwrap();
    let served = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(served.contains(&serial), "{served} vs {serial}");
    let token = s.token();
    let (code, audit, err) = curl(&[
        "--cacert",
        bundle.to_str().unwrap(),
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("https://localhost:{port}/v1/audit?limit=50"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        audit.contains("cert.issued") && audit.contains(&serial),
        "{audit}"
    );
}
