//! HTTPS webhook endpoints: a CA and a leaf certificate for 127.0.0.1 made with `openssl`, the
//! Python receiver serving TLS with them. With the CA as `webhooks.ca_file` the signed event
//! arrives and verifies with the independent `standardwebhooks` library; without it every
//! attempt records the certificate problem and nothing arrives; a bad `ca_file` stops
//! `keyroll serve` at start-up with one line naming the setting and the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness;
use crate::webhooks::{Receiver, add, delivered, receiver_python};

fn openssl(dir: &Path, args: &[&str]) {
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
}

/// A CA (`ca.pem`) and a leaf for IP 127.0.0.1 signed by it (`leaf.pem`, `leaf.key`) in `dir`;
/// `None` (skipped) without openssl outside CI.
fn certificates(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    if !harness::require_program("openssl", "apt-get install openssl") {
        return None;
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=keyroll test CA",
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
    Some((
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    ))
}

fn json_of(run: &harness::Run) -> Value {
    assert_eq!(run.code, 0, "stdout {} stderr {}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[test]
fn https_webhooks_are_verified_against_ca_file_and_a_certificate_problem_is_an_attempt_error() {
    let Some(python) = receiver_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = certificates(dir.path()) else {
        return;
    };
    let receiver = Receiver::start_tls(&python, &cert, &key);
    assert!(receiver.url("/tls").starts_with("https://"));

    // Trusted through ca_file: delivered and verified.
    let s = harness::start_with_env(&[
        ("KEYROLL_WEBHOOKS__ALLOW_LOOPBACK", "true"),
        ("KEYROLL_WEBHOOKS__CA_FILE", ca.to_str().unwrap()),
    ]);
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    s.consumer("prod/billing", &[]);
    let (_, secret) = add(&s, &receiver.url("/tls"), "rotation.started");
    receiver.configure(&json!({ "/tls": { "secrets": [secret], "mode": "ok" } }));
    s.rotate("prod/billing", &[]);
    let requests = receiver.wait("/tls", "rotation.started over https", |r| {
        !delivered(r).is_empty()
    });
    let got = delivered(&requests);
    assert_eq!(got[0].1, "rotation.started", "{requests:#?}");
    assert_eq!(got[0].2, Some(2));
    for r in &requests {
        assert_eq!(r["verified_with"], json!([0]), "{r}");
    }
    drop(s);

    // Not trusted (no ca_file): each attempt names the certificate problem, nothing arrives.
    let s = harness::start_with_env(&[("KEYROLL_WEBHOOKS__ALLOW_LOOPBACK", "true")]);
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    s.consumer("prod/billing", &[]);
    let (endpoint, secret) = add(&s, &receiver.url("/untrusted"), "rotation.started");
    receiver.configure(&json!({ "/untrusted": { "secrets": [secret], "mode": "ok" } }));
    s.rotate("prod/billing", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let deliveries = json_of(&s.cli(&[
            "webhook",
            "deliveries",
            "--endpoint",
            &endpoint,
            "--output",
            "json",
        ]));
        let first = deliveries["items"]
            .as_array()
            .and_then(|i| i.first())
            .cloned();
        if let Some(d) = first.filter(|d| d["attempts"].as_u64().unwrap_or(0) >= 1) {
            break d;
        }
        assert!(Instant::now() < deadline, "no attempt: {deliveries}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(delivery["state"], "pending", "retried later: {delivery}");
    let error = delivery["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("certificate") && error.contains("UnknownIssuer"),
        "{delivery}"
    );
    assert!(receiver.requests("/untrusted").is_empty());
    drop(s);

    // A bad ca_file: serve exits non-zero with one line naming the setting and the file.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for bad in [&garbage, &missing, &dir.path().join("leaf.key")] {
        let mut child = Command::new(harness::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("KEYROLL_WEBHOOKS__CA_FILE", bad)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve started with webhooks.ca_file = {}", bad.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("webhooks.ca_file") && err.contains(bad.to_str().unwrap()),
            "{err}"
        );
    }
}
