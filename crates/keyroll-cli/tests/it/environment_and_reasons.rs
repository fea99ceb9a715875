//! Issue-6 hardening of the verification path over real HTTP: the environment check trusts only
//! the stored consumer (a rewritten prefix is refused), requests that cannot be judged get a code,
//! a request id and a log line, the log names the client behind a trusted proxy, rejections
//! carry the fingerprint of what was presented, and operator checks do not count as use.

use keyroll_core::{assemble_key, fingerprint};
use reqwest::header::{HeaderName, HeaderValue};

use crate::harness;

fn header(r: &reqwest::blocking::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// `kid` and `secret` of a key `kr_<env>_<kid>_<secret><check>`.
fn parts(key: &str) -> (String, String) {
    let mut it = key.splitn(4, '_');
    let (_, _, kid, rest) = (it.next(), it.next(), it.next().unwrap(), it.next().unwrap());
    (kid.to_owned(), rest[..32].to_owned())
}

fn forward(
    s: &harness::Server,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::blocking::Response {
    let mut req = harness::http().get(format!("{}{path}", s.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().unwrap()
}

#[test]
#[allow(clippy::type_complexity)]
fn a_staging_key_with_a_prod_prefix_never_passes_for_prod() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.cli(&["env", "create", "staging"]);
    let prod_key = s.consumer("prod/app", &[]);
    let staging_key = s.consumer("staging/app", &[]);
    let (kid, secret) = parts(&staging_key);
    let forged = assemble_key("prod", &kid, &secret);
    let forged_fp = fingerprint(forged.as_bytes()).to_string();

    // Every way a gateway says "prod", and no requirement at all: refused.
    let ways: [(&str, &str, Vec<(&str, &str)>); 3] = [
        (
            "header",
            "/v1/forward-auth",
            vec![("x-keyroll-environment", "prod")],
        ),
        ("query", "/v1/forward-auth?environment=prod", vec![]),
        ("none", "/v1/forward-auth", vec![]),
    ];
    for (name, path, mut hs) in ways {
        let rid = format!("forged-{name}");
        let auth = format!("Bearer {forged}");
        hs.push(("authorization", &auth));
        hs.push(("x-request-id", &rid));
        let r = forward(&s, path, &hs);
        assert_eq!(r.status().as_u16(), 401, "{name}");
        assert_eq!(header(&r, "x-keyroll-code"), "wrong_environment", "{name}");
        assert_eq!(header(&r, "x-keyroll-fingerprint"), forged_fp, "{name}");
        let line = s.decision(&rid);
        assert_eq!(line["code"], "wrong_environment", "{name}");
        assert_eq!(
            line["environment"], "staging",
            "{name}: the stored environment is logged"
        );
        assert_eq!(line["consumer"], "staging/app", "{name}");
        assert_eq!(
            line["fingerprint"],
            forged_fp.as_str(),
            "{name}: what was presented"
        );
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["fingerprint"], forged_fp.as_str());
    }

    // The verify API, with the environment in the body.
    let r = s.cli(&["verify", &forged, "--env", "prod", "--output", "json"]);
    assert_ne!(r.code, 0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["allowed"], false);
    assert_eq!(v["code"], "wrong_environment");

    // The unaltered staging key: wrong_environment for prod, with its owner named once its
    // secret is proven; valid for staging. The prod key still passes for prod.
    let r = forward(
        &s,
        "/v1/forward-auth",
        &[
            ("x-api-key", &staging_key),
            ("x-keyroll-environment", "prod"),
            ("x-request-id", "plain-staging"),
        ],
    );
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(header(&r, "x-keyroll-consumer"), "staging/app");
    assert_eq!(header(&r, "x-keyroll-version"), "v1");
    assert_eq!(s.decision("plain-staging")["consumer"], "staging/app");
    let r = forward(
        &s,
        "/v1/forward-auth",
        &[
            ("x-api-key", &staging_key),
            ("x-keyroll-environment", "staging"),
        ],
    );
    assert_eq!(r.status().as_u16(), 200);
    let r = forward(
        &s,
        "/v1/forward-auth",
        &[("x-api-key", &prod_key), ("x-keyroll-environment", "prod")],
    );
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "x-keyroll-consumer"), "prod/app");
    s.assert_no_secret_leaked(&[]);
}

#[test]
#[allow(clippy::type_complexity)]
fn requests_that_cannot_be_judged_get_a_code_a_request_id_and_a_log_line() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let key = s.consumer("prod/app", &[]);
    let client = harness::http();
    let send = |rid: &str, extra: &[(HeaderName, HeaderValue)], path: &str| {
        let mut req = client
            .get(format!("{}{path}", s.url()))
            .header("x-api-key", &key)
            .header("x-request-id", rid);
        for (k, v) in extra {
            req = req.header(k.clone(), v.clone());
        }
        req.send().unwrap()
    };
    let many: Vec<(HeaderName, HeaderValue)> = (0..120)
        .map(|i| {
            (
                HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            )
        })
        .collect();
    let env = HeaderName::from_static("x-keyroll-environment");
    let scopes = HeaderName::from_static("x-keyroll-scopes");
    let long_path = format!("/v1/forward-auth/{}", "a".repeat(9000));
    let cases: Vec<(&str, Vec<(HeaderName, HeaderValue)>, &str, &str)> = vec![
        (
            "env-not-text",
            vec![(env.clone(), HeaderValue::from_bytes(b"pr\xffod").unwrap())],
            "/v1/forward-auth",
            "x-keyroll-environment",
        ),
        (
            "env-not-a-name",
            vec![(env.clone(), HeaderValue::from_static("Prod"))],
            "/v1/forward-auth",
            "'Prod'",
        ),
        (
            "query-env-not-a-name",
            vec![],
            "/v1/forward-auth?environment=pr%FFod",
            "not an environment name",
        ),
        (
            "scopes-not-text",
            vec![(scopes, HeaderValue::from_bytes(b"invoices:\xe9").unwrap())],
            "/v1/forward-auth",
            "x-keyroll-scopes",
        ),
        ("long-uri", vec![], &long_path, "URI"),
        (
            "bad-operator-flag",
            vec![(
                HeaderName::from_static("x-keyroll-operator-check"),
                HeaderValue::from_static("maybe"),
            )],
            "/v1/forward-auth",
            "true or false",
        ),
        // Beyond hyper's default of 100 headers: the listener admits more so this is judged.
        (
            "many-headers",
            many,
            "/v1/forward-auth",
            "headers; keyroll judges requests with at most 100",
        ),
    ];
    for (rid, extra, path, says) in cases {
        let r = send(rid, &extra, path);
        assert_eq!(
            r.status().as_u16(),
            401,
            "{rid}: a gateway understands 401, not 400"
        );
        assert_eq!(header(&r, "x-keyroll-code"), "malformed_request", "{rid}");
        assert_eq!(header(&r, "x-request-id"), rid, "{rid}");
        assert!(
            header(&r, "www-authenticate").contains("error=\"invalid_request\""),
            "{rid}"
        );
        assert!(
            header(&r, "x-keyroll-detail").contains(says),
            "{rid}: {}",
            header(&r, "x-keyroll-detail")
        );
        let line = s.decision(rid);
        assert_eq!(line["code"], "malformed_request", "{rid}");
        assert_eq!(line["level"], "warn", "{rid}");
    }
    // The unreadable environment was not treated as absent: the key would have passed then.
    let r = send(
        "env-ok",
        &[(env, HeaderValue::from_static("prod"))],
        "/v1/forward-auth",
    );
    assert_eq!(r.status().as_u16(), 200);
    // The verify API refuses a bad environment in its body with a 400.
    let r = client
        .post(format!("{}/v1/verify", s.url()))
        .bearer_auth(s.token())
        .json(&serde_json::json!({"key": key, "environment": "Prod"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[test]
fn the_log_names_the_client_behind_a_trusted_proxy_and_keeps_the_peer() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let key = s.consumer("prod/app", &[]);
    // Loopback is a trusted proxy by default.
    let r = forward(
        &s,
        "/v1/forward-auth",
        &[
            ("x-api-key", "kr_nope"),
            ("x-forwarded-for", "198.51.100.7"),
            ("x-request-id", "via-proxy"),
        ],
    );
    assert_eq!(r.status().as_u16(), 401);
    let line = s.decision("via-proxy");
    assert_eq!(line["remote_addr"], "198.51.100.7");
    assert!(
        line["peer_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{line}"
    );
    let d = s.cli(&[
        "decisions",
        "--fingerprint",
        &fingerprint(b"kr_nope").to_string(),
        "--output",
        "json",
    ]);
    assert!(d.stdout.contains("198.51.100.7"), "{}", d.stdout);
    // An allowed request from the same client: usage and the log agree.
    let r = forward(
        &s,
        "/v1/forward-auth",
        &[
            ("x-api-key", &key),
            ("x-forwarded-for", "198.51.100.7"),
            ("x-request-id", "ok-via-proxy"),
        ],
    );
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(s.decision("ok-via-proxy")["remote_addr"], "198.51.100.7");
}

#[test]
fn proven_rejections_name_consumer_and_version_unproven_ones_do_not() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let key = s.consumer("prod/app", &[]);
    s.rotate("prod/app", &["--grace", "1h"]);
    assert_eq!(s.cli(&["retire", "prod/app", "v1"]).code, 0);
    let r = forward(&s, "/v1/forward-auth", &[("x-api-key", &key)]);
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(header(&r, "x-keyroll-code"), "key_retired");
    assert_eq!(header(&r, "x-keyroll-consumer"), "prod/app");
    assert_eq!(header(&r, "x-keyroll-version"), "v1");
    assert_eq!(
        header(&r, "x-keyroll-fingerprint"),
        fingerprint(key.as_bytes()).to_string()
    );
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["consumer"], "prod/app");
    assert_eq!(body["version"], "v1");

    let (kid, _) = parts(&key);
    let wrong = assemble_key("prod", &kid, &"s".repeat(32));
    let r = forward(&s, "/v1/forward-auth", &[("x-api-key", &wrong)]);
    assert_eq!(header(&r, "x-keyroll-code"), "invalid_key");
    assert_eq!(header(&r, "x-keyroll-consumer"), "");
    assert_eq!(
        header(&r, "x-keyroll-fingerprint"),
        fingerprint(wrong.as_bytes()).to_string()
    );
    let body: serde_json::Value = r.json().unwrap();
    assert!(
        body.get("consumer").is_none() && body.get("version").is_none(),
        "{body}"
    );
}

#[test]
fn operator_checks_do_not_count_as_use() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let key = s.consumer("prod/app", &[]);
    let last_used = || -> serde_json::Value {
        let show = s.cli(&["consumer", "show", "prod/app", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
        v["versions"][0]["last_used_at"].clone()
    };
    // `keyroll verify`, and forward-auth with the operator header: decided, not counted.
    let r = s.cli(&["verify", &key]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = forward(
        &s,
        "/v1/forward-auth",
        &[("x-api-key", &key), ("x-keyroll-operator-check", "true")],
    );
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        last_used().is_null(),
        "an operator check counted as use: {}",
        last_used()
    );
    // Real traffic counts.
    let r = forward(&s, "/v1/forward-auth", &[("x-api-key", &key)]);
    assert_eq!(r.status().as_u16(), 200);
    assert!(last_used().is_string(), "traffic was not counted");
    // `--count-as-use` opts in.
    let r = s.cli(&["verify", &key, "--count-as-use"]);
    assert_eq!(r.code, 0);
}
