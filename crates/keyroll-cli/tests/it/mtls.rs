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
