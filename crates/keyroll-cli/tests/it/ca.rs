//! keyroll's own CA end to end, checked with tools keyroll did not write: `keyroll ca init`,
//! `keyroll cert issue` (generated key and CSR) and `keyroll ca bundle` against a real server,
//! the files read by `openssl verify` and `openssl x509 -text`; a workload renewing its own
//! certificate with its consumer key and, over TLS, with the client certificate it holds.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::harness;

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = openssl(dir, args);
    assert!(ok, "openssl {args:?}: {text}");
    text
}

/// An EC P-256 key `NAME.key` and a CSR `NAME.csr` for it that asks for SANs of its own (which
/// the CA must ignore).
fn ec_csr(dir: &Path, name: &str) {
    openssl_ok(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            "/CN=evil",
            "-addext",
            "subjectAltName=URI:spiffe://evil.example/prod/admin,DNS:evil.example",
        ],
    );
}

fn x509_text(dir: &Path, file: &str) -> String {
    openssl_ok(dir, &["x509", "-in", file, "-noout", "-text"])
}

/// The lines of `openssl x509 -text` after the extension header `name`.
fn extension<'a>(text: &'a str, name: &str) -> (&'a str, &'a str) {
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.trim_start().starts_with(name) {
            return (l.trim(), lines.next().unwrap_or_default().trim());
        }
    }
    panic!("no {name} in {text}");
}

#[test]
fn ca_init_issue_and_bundle_verify_with_openssl() {
    if !harness::require_program("openssl", "apt-get install openssl") {
        return;
    }
    let s = harness::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let http = harness::http();

    // Before init: no CA.
    let r = http
        .get(format!("{}/v1/ca/bundle", s.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("\"no_ca\""));
    let r = s.cli(&[
        "cert",
        "issue",
        "prod/billing",
        "--out",
        w.join("x").to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no CA"), "{}", r.stderr);

    // Bad input is refused with a message naming the field.
    let r = s.cli(&["ca", "init", "--trust-domain", "Not A Domain"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("trust-domain"), "{}", r.stderr);
    let token = s.token();
    let post = |path: &str, body: serde_json::Value| {
        let r = http
            .post(format!("{}{path}", s.url()))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().unwrap())
    };
    let (st, body) = post(
        "/v1/ca/init",
        serde_json::json!({"trust_domain": "Bad Domain"}),
    );
    assert_eq!(st, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("trust_domain:"),
        "{body}"
    );
    let (st, body) = post(
        "/v1/ca/init",
        serde_json::json!({"trust_domain": "example.org", "root_ttl": "forever"}),
    );
    assert_eq!(st, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().starts_with("root_ttl:"),
        "{body}"
    );

    let r = s.cli(&["ca", "init", "--trust-domain", "example.org"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("trust domain example.org"),
        "{}",
        r.stdout
    );
    let r = s.cli(&["ca", "init", "--trust-domain", "example.org"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("already_exists"), "{}", r.stderr);

    // The environment must exist; the identity follows the name rules; ttl at least 5m.
    let r = s.cli(&[
        "cert",
        "issue",
        "prod/billing",
        "--out",
        w.join("x").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("environment prod does not exist"),
        "{}",
        r.stderr
    );
    assert!(!w.join("x").exists(), "nothing written on failure");
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    let (st, body) = post("/v1/certs", serde_json::json!({"identity": "prod/Billing"}));
    assert_eq!(st, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().starts_with("identity:"),
        "{body}"
    );
    let (st, body) = post(
        "/v1/certs",
        serde_json::json!({"identity": "prod/billing", "ttl": "1m"}),
    );
    assert_eq!(st, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().starts_with("ttl:"),
        "{body}"
    );
    let (st, body) = post(
        "/v1/certs",
        serde_json::json!({"identity": "prod/billing", "csr": "nope"}),
    );
    assert_eq!(st, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().starts_with("csr:"),
        "{body}"
    );

    // A generated key: cert.pem (leaf then intermediate), key.pem 0600, ca.pem.
    let out = w.join("billing");
    let r = s.cli(&[
        "cert",
        "issue",
        "prod/billing",
        "--out",
        out.to_str().unwrap(),
        "--server-auth",
        "--ttl",
        "2h",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("spiffe://example.org/prod/billing"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("PRIVATE KEY"),
        "the key is never printed"
    );
    let mode = std::fs::metadata(out.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cert_pem = std::fs::read_to_string(out.join("cert.pem")).unwrap();
    assert_eq!(
        cert_pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "{cert_pem}"
    );
    let key_pem = std::fs::read_to_string(out.join("key.pem")).unwrap();
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let verified = openssl_ok(
        &out,
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "cert.pem",
            "cert.pem",
        ],
    );
    assert!(verified.contains("cert.pem: OK"), "{verified}");
    // The key belongs to the certificate.
    let a = openssl_ok(&out, &["x509", "-in", "cert.pem", "-noout", "-pubkey"]);
    let b = openssl_ok(&out, &["pkey", "-in", "key.pem", "-pubout"]);
    assert_eq!(a, b);
    let text = x509_text(&out, "cert.pem");
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(
        text.contains("URI:spiffe://example.org/prod/billing"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    let (ku, usage) = extension(&text, "X509v3 Key Usage");
    assert!(ku.ends_with("critical"), "{ku}");
    assert_eq!(usage, "Digital Signature");
    let (_, eku) = extension(&text, "X509v3 Extended Key Usage");
    assert!(
        eku.contains("TLS Web Client Authentication")
            && eku.contains("TLS Web Server Authentication"),
        "{eku}"
    );
    // Reissuing into the same directory never overwrites a key.
    let r = s.cli(&[
        "cert",
        "issue",
        "prod/billing",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("key.pem")).unwrap(),
        key_pem
    );

    // A CSR: its key, the CA's identity; its own SANs and subject ignored; no key.pem.
    ec_csr(w, "workload");
    let out2 = w.join("csr");
    let r = s.cli(&[
        "cert",
        "issue",
        "prod/worker",
        "--out",
        out2.to_str().unwrap(),
        "--csr",
        w.join("workload.csr").to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let answer: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(answer["identity"], "prod/worker");
    assert!(answer.get("key_pem").is_none(), "{answer}");
    assert!(!out2.join("key.pem").exists());
    let verified = openssl_ok(
        &out2,
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "cert.pem",
            "cert.pem",
        ],
    );
    assert!(verified.contains("cert.pem: OK"), "{verified}");
    let text = x509_text(&out2, "cert.pem");
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(
        text.contains("URI:spiffe://example.org/prod/worker"),
        "{text}"
    );
    assert!(!text.contains("evil"), "{text}");
    let (_, eku) = extension(&text, "X509v3 Extended Key Usage");
    assert_eq!(eku, "TLS Web Client Authentication");
    let a = openssl_ok(&out2, &["x509", "-in", "cert.pem", "-noout", "-pubkey"]);
    let b = openssl_ok(w, &["pkey", "-in", "workload.key", "-pubout"]);
    assert_eq!(a, b, "the CSR's key");

    // An RSA CSR is refused, saying so.
    openssl_ok(
        w,
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "rsa.key", "-out",
            "rsa.csr", "-subj", "/CN=rsa",
        ],
    );
    let r = s.cli(&[
        "cert",
        "issue",
        "prod/worker",
        "--out",
        w.join("rsa").to_str().unwrap(),
        "--csr",
        w.join("rsa.csr").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("csr:") && r.stderr.contains("RSA"),
        "{}",
        r.stderr
    );

    // The bundle: the root, the intermediate, one CRL per issuer; the version in a header.
    let bundle_file = w.join("bundle.pem");
    let r = s.cli(&["ca", "bundle", "--out", bundle_file.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bundle = std::fs::read_to_string(&bundle_file).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    assert_eq!(bundle.matches("BEGIN X509 CRL").count(), 2, "{bundle}");
    let r = http
        .get(format!("{}/v1/ca/bundle", s.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-keyroll-bundle-version"], "1");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().unwrap(), bundle);
    let j: serde_json::Value = http
        .get(format!("{}/v1/ca/bundle?format=json", s.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(j["trust_domain"], "example.org");
    assert_eq!(j["bundle_version"], 1);
    // Every leaf verifies against the bundle with its CRLs checked.
    let verified = openssl_ok(
        &out,
        &[
            "verify",
            "-crl_check_all",
            "-CAfile",
            bundle_file.to_str().unwrap(),
            "cert.pem",
        ],
    );
    assert!(verified.contains("OK"), "{verified}");
    let crl = http
        .get(format!("{}/v1/ca/crl", s.url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(crl.matches("BEGIN X509 CRL").count(), 2);
    std::fs::write(w.join("crl.pem"), &crl).unwrap();
    let crl_text = openssl_ok(w, &["crl", "-in", "crl.pem", "-noout", "-text"]);
    assert!(crl_text.contains("No Revoked Certificates"), "{crl_text}");
    let r = http
        .get(format!("{}/v1/ca/crl?issuer=ca_nope", s.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{}/v1/ca/bundle?colour=red", s.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);

    // Audited and announced, and no private key in the log, the audit log or the database.
    let issued = s.events_at_least("cert.issued", 2);
    assert!(
        issued.iter().any(|e| e["identity"] == "prod/billing"),
        "{issued:?}"
    );
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!s.logs_text().contains(&key_body));
    assert!(!s.database_text().contains(&key_body));
    let audit = s.cli(&["audit", "list", "--output", "json"]);
    assert!(audit.stdout.contains("cert.issued"), "{}", audit.stdout);
    assert!(!audit.stdout.contains("PRIVATE KEY"));
    let metrics = http
        .get(format!("{}/metrics", s.url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("keyroll_certs_issued_total{edge=\"admin\"} 2"),
        "{metrics}"
    );
}

/// A workload renews its own certificate from a CSR: with its consumer key, and over TLS with
/// the client certificate it holds (no Authorization header).
#[test]
fn self_certificate_with_the_consumer_key_and_with_the_client_certificate() {
    if !harness::require_program("openssl", "apt-get install openssl")
        || !harness::require_program("curl", "apt-get install curl")
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let data = w.join("data");
    let s = harness::start_in(&data);
    let http = harness::http();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    let key = s.consumer("prod/api", &[]);
    ec_csr(w, "api");
    let csr = std::fs::read_to_string(w.join("api.csr")).unwrap();
    let self_cert = |auth: Option<&str>, body: serde_json::Value| {
        let mut r = http
            .post(format!("{}/v1/self/certificate", s.url()))
            .json(&body);
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().unwrap())
    };
    // Before init: 404 no_ca; without a credential: 401.
    let (st, body) = self_cert(Some(&key), serde_json::json!({"csr": csr}));
    assert_eq!((st, body["code"].as_str()), (404, Some("no_ca")), "{body}");
    assert_eq!(
        s.cli(&["ca", "init", "--trust-domain", "example.org"]).code,
        0
    );
    let (st, body) = self_cert(None, serde_json::json!({"csr": csr}));
    assert_eq!(st, 401, "{body}");
    let (st, body) = self_cert(Some(&key), serde_json::json!({}));
    assert_eq!(st, 400, "{body}");
    let (st, body) = self_cert(Some(&key), serde_json::json!({"csr": csr, "ttl": "2h"}));
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["identity"], "prod/api");
    assert_eq!(body["spiffe_id"], "spiffe://example.org/prod/api");
    assert!(body.get("key_pem").is_none());
    assert!(body["renew_after"].is_string(), "{body}");
    let first_serial = body["serial"].as_str().unwrap().to_owned();
    std::fs::write(w.join("api.pem"), body["cert_pem"].as_str().unwrap()).unwrap();
    let audit = s.cli(&["audit", "list", "--output", "json"]);
    assert!(audit.stdout.contains("agent:prod/api"), "{}", audit.stdout);
    let metrics = http
        .get(format!("{}/metrics", s.url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("keyroll_certs_issued_total{edge=\"self_key\"} 1"),
        "{metrics}"
    );

    // A server certificate for the listener, from the same CA, and the bundle it trusts.
    let srv = w.join("srv");
    let r = s.cli(&[
        "cert",
        "issue",
        "prod/keyroll",
        "--out",
        srv.to_str().unwrap(),
        "--server-auth",
        "--dns",
        "localhost",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bundle = w.join("bundle.pem");
    assert_eq!(
        s.cli(&["ca", "bundle", "--out", bundle.to_str().unwrap()])
            .code,
        0
    );
    drop(s);
    let config = w.join("keyroll.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_auth = \"optional\"\nclient_ca_file = {:?}\ntrust_domain = \"example.org\"\n",
            srv.join("cert.pem"),
            srv.join("key.pem"),
            bundle
        ),
    )
    .unwrap();
    let s = harness::start_in_with_env(&data, &[("KEYROLL_CONFIG", config.to_str().unwrap())]);
    let url = format!("https://localhost:{}", s.addr.rsplit(':').next().unwrap());
    std::fs::write(
        w.join("body.json"),
        serde_json::json!({"csr": csr}).to_string(),
    )
    .unwrap();
    let curl = |cert: bool| {
        let mut args = vec![
            "-sS".to_owned(),
            "--max-time".to_owned(),
            "10".to_owned(),
            "--cacert".to_owned(),
            srv.join("ca.pem").to_str().unwrap().to_owned(),
            "-H".to_owned(),
            "content-type: application/json".to_owned(),
            "--data-binary".to_owned(),
            format!("@{}", w.join("body.json").display()),
        ];
        if cert {
            args.extend([
                "--cert".to_owned(),
                w.join("api.pem").to_str().unwrap().to_owned(),
                "--key".to_owned(),
                w.join("api.key").to_str().unwrap().to_owned(),
            ]);
        }
        args.push(format!("{url}/v1/self/certificate"));
        let out = Command::new("curl").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let none = curl(false);
    assert_eq!(none["code"], "missing_credential", "{none}");
    let renewed = curl(true);
    assert_eq!(renewed["identity"], "prod/api", "{renewed}");
    assert_ne!(renewed["serial"], first_serial.as_str());
    let audit = s.cli(&[
        "audit",
        "list",
        "--output",
        "json",
        "--server",
        &url,
        "--ca-file",
        srv.join("ca.pem").to_str().unwrap(),
    ]);
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert!(
        audit.stdout.contains(&format!("cert:{first_serial}")),
        "{}",
        audit.stdout
    );
}

/// `keyroll cert revoke` by serial and by identity: the new CRL is in the bundle at once
/// (`openssl crl -text` lists the serial, `openssl verify -crl_check` refuses the certificate),
/// the bundle version grows, the identity may no longer renew itself; list and show.
#[test]
fn revoke_by_serial_and_identity_list_and_show() {
    if !harness::require_program("openssl", "apt-get install openssl") {
        return;
    }
    let s = harness::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let http = harness::http();
    assert_eq!(
        s.cli(&["ca", "init", "--trust-domain", "example.org"]).code,
        0
    );
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    let key = s.consumer("prod/api", &[]);
    let issue = |identity: &str, dir: &str| -> String {
        let r = s.cli(&[
            "cert",
            "issue",
            identity,
            "--out",
            w.join(dir).to_str().unwrap(),
            "--output",
            "json",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v["serial"].as_str().unwrap().to_owned()
    };
    let a = issue("prod/api", "a");
    let b = issue("prod/api", "b");
    let c = issue("prod/web", "c");

    // Bad input: exit 2 with the field named; unknown serial: 404.
    let r = s.cli(&["cert", "revoke", &a, "--reason", "because"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("reason"), "{}", r.stderr);
    let token = s.token();
    let r = http
        .post(format!("{}/v1/certs/revoke", s.url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({"serial": a, "identity": "prod/api"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s.cli(&["cert", "revoke", "4aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]);
    assert_eq!(r.code, 6, "{}", r.stderr);

    let r = s.cli(&["cert", "revoke", &a, "--reason", "key-compromise"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&a), "{}", r.stdout);
    let resp = http
        .get(format!("{}/v1/ca/bundle", s.url()))
        .send()
        .unwrap();
    assert_eq!(resp.headers()["x-keyroll-bundle-version"], "2");
    std::fs::write(w.join("bundle.pem"), resp.text().unwrap()).unwrap();
    let crl = http
        .get(format!("{}/v1/ca/crl", s.url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    std::fs::write(w.join("crl.pem"), crl).unwrap();
    // The intermediate's CRL is the second block; openssl crl reads the first, so split.
    let text: String = std::fs::read_to_string(w.join("crl.pem"))
        .unwrap()
        .split_inclusive("-----END X509 CRL-----\n")
        .enumerate()
        .map(|(i, block)| {
            let f = w.join(format!("crl{i}.pem"));
            std::fs::write(&f, block).unwrap();
            openssl_ok(w, &["crl", "-in", f.to_str().unwrap(), "-noout", "-text"])
        })
        .collect();
    assert!(text.contains(&a.to_uppercase()), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(!text.contains(&b.to_uppercase()), "{text}");
    let (ok, out) = openssl(
        w,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "a/cert.pem",
            "a/cert.pem",
        ],
    );
    assert!(!ok && out.contains("revoked"), "{out}");
    let out = openssl_ok(
        w,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "b/cert.pem",
            "b/cert.pem",
        ],
    );
    assert!(out.contains("OK"), "{out}");

    // show and list.
    let r = s.cli(&["cert", "show", &a]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("revoked") && r.stdout.contains("key-compromise"),
        "{}",
        r.stdout
    );
    let r = s.cli(&["cert", "list", "--state", "live", "--output", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut live: Vec<&str> = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["serial"].as_str().unwrap())
        .collect();
    live.sort_unstable();
    let mut want = vec![b.as_str(), c.as_str()];
    want.sort_unstable();
    assert_eq!(live, want);
    let r = s.cli(&["cert", "list", "--identity", "prod/api"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&a) && r.stdout.contains(&b) && !r.stdout.contains(&c),
        "{}",
        r.stdout
    );

    // By identity: every live certificate of it; it may no longer renew itself.
    let r = s.cli(&[
        "cert",
        "revoke",
        "prod/api",
        "--reason",
        "cessation-of-operation",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["revoked"], serde_json::json!([b]));
    assert_eq!(v["identity_blocked"], true);
    assert_eq!(v["bundle_version"], 3);
    ec_csr(w, "api");
    let csr = std::fs::read_to_string(w.join("api.csr")).unwrap();
    let r = http
        .post(format!("{}/v1/self/certificate", s.url()))
        .bearer_auth(&key)
        .json(&serde_json::json!({"csr": csr}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["code"], "identity_revoked", "{body}");
    // An operator can still issue one.
    issue("prod/api", "d");
    let revoked = s.events_at_least("cert.revoked", 2);
    assert!(
        revoked.iter().any(|e| e["reason"] == "key-compromise"),
        "{revoked:?}"
    );
}

/// `keyroll ca rotate` and `keyroll ca status`: a new intermediate entering the bundle at once
/// (its CRL with it) without signing yet; a second rotation is refused while one is under way.
#[test]
fn rotate_and_status() {
    let s = harness::start();
    let http = harness::http();
    let r = s.cli(&["ca", "status"]);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(r.stderr.contains("no CA"), "{}", r.stderr);
    assert_eq!(
        s.cli(&["ca", "init", "--trust-domain", "example.org"]).code,
        0
    );
    // An agent that holds bundle 1 (from before the rotation).
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    let key = s.consumer("prod/api", &[]);
    let r = http
        .post(format!("{}/v1/self/report", s.url()))
        .bearer_auth(&key)
        .json(&serde_json::json!({"agent": "agt_one", "bundle_version": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let r = s.cli(&["ca", "status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("bundle version 1") && r.stdout.contains("root g1"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Next step: start_rotation"),
        "{}",
        r.stdout
    );
    let r = s.cli(&["ca", "rotate", "--signs-from", "yesterday"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = s.cli(&[
        "ca",
        "rotate",
        "--enters-bundle-at",
        "2000-01-01T00:00:00Z",
        "--idle",
        "1h",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("intermediate g2"), "{}", r.stdout);
    let r = s.cli(&["ca", "status", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let states: Vec<(&str, u64, &str)> = v["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap(),
                a["generation"].as_u64().unwrap(),
                a["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        states.contains(&("intermediate", 2, "bundled")),
        "{states:?}"
    );
    assert!(
        states.contains(&("intermediate", 1, "active")),
        "{states:?}"
    );
    assert_eq!(v["bundle_version"], 2, "{v}");
    assert_eq!(v["next_step"]["kind"], "switch_signing", "{v}");
    // The old intermediate's successor entered with bundle 2: the agent on bundle 1 is one of
    // what its removal waits for.
    let old = v["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "intermediate" && a["generation"] == 1)
        .unwrap();
    assert_eq!(
        old["depends"]["agents_on_old_bundle"],
        serde_json::json!([{"consumer": "prod/api", "agent_id": "agt_one", "bundle_version": 1}]),
        "{old}"
    );
    let resp = http
        .get(format!("{}/v1/ca/bundle", s.url()))
        .send()
        .unwrap();
    assert_eq!(resp.headers()["x-keyroll-bundle-version"], "2");
    let bundle = resp.text().unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 3, "{bundle}");
    assert_eq!(bundle.matches("BEGIN X509 CRL").count(), 3, "{bundle}");
    let r = s.cli(&["ca", "rotate"]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("under way"), "{}", r.stderr);
    let started = s.events_at_least("ca.rotation_started", 1);
    assert_eq!(started.len(), 1);
}
