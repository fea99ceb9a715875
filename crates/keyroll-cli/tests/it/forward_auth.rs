//! `/v1/forward-auth` over real HTTP: every decision code, its status, headers, body and log line.

use keyroll_core::assemble_key;

use crate::harness;

fn get(
    s: &harness::Server,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = harness::http().get(format!("{}{path}", s.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.text().unwrap())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

#[test]
#[allow(clippy::type_complexity)]
fn every_decision_code_is_explained_in_headers_body_and_log() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    s.cli(&["env", "create", "staging"]);
    let key = s.consumer("prod/billing-app", &["--scope", "invoices:read"]);
    let mut bodies = Vec::new();

    // valid: 200, no body, identity headers; the request id is echoed.
    let (st, h, body) = get(
        &s,
        "/v1/forward-auth/invoices/7",
        &[
            ("authorization", &format!("Bearer {key}")),
            ("x-request-id", "req-valid-1"),
            ("x-keyroll-environment", "prod"),
        ],
    );
    assert_eq!(st, 200);
    assert!(body.is_empty(), "forward-auth answers 200 without a body");
    assert_eq!(header(&h, "x-keyroll-consumer"), "prod/billing-app");
    assert_eq!(header(&h, "x-keyroll-environment"), "prod");
    assert_eq!(header(&h, "x-keyroll-version"), "v1");
    assert_eq!(header(&h, "x-request-id"), "req-valid-1");
    let log = s.decision("req-valid-1");
    assert_eq!(log["decision"], "allowed");
    assert_eq!(log["consumer"], "prod/billing-app");
    assert_eq!(log["uri"], "/invoices/7");
    assert_eq!(log["level"], "debug");

    let kid = header(&h, "x-keyroll-kid").to_owned();
    let cases: Vec<(&str, Vec<(&str, String)>, u16, &str, &str)> = vec![
        (
            "missing",
            vec![],
            401,
            "missing_credential",
            "missing_credential",
        ),
        (
            "garbage",
            vec![("x-api-key", "hello".into())],
            401,
            "malformed_credential",
            "malformed_credential",
        ),
        (
            "truncated",
            vec![("x-api-key", key[..key.len() - 3].into())],
            401,
            "malformed_credential",
            "malformed_credential",
        ),
        (
            "basic",
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            401,
            "malformed_credential",
            "malformed_credential",
        ),
        (
            "unknown",
            vec![(
                "x-api-key",
                assemble_key("prod", "AAAAAAAAAAAA", &"s".repeat(32)),
            )],
            401,
            "invalid_key",
            "unknown_key",
        ),
        (
            "badsecret",
            vec![("x-api-key", assemble_key("prod", &kid, &"s".repeat(32)))],
            401,
            "invalid_key",
            "invalid_secret",
        ),
        (
            "scope",
            vec![
                ("x-api-key", key.clone()),
                ("x-keyroll-scopes", "invoices:write".into()),
            ],
            403,
            "insufficient_scope",
            "insufficient_scope",
        ),
        (
            "wrongenv",
            vec![
                ("x-api-key", key.clone()),
                ("x-keyroll-environment", "staging".into()),
            ],
            401,
            "wrong_environment",
            "wrong_environment",
        ),
    ];
    for (name, hs, status, public, logged) in cases {
        let rid = format!("req-{name}");
        let mut all: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.push(("x-request-id", &rid));
        let (st, h, body) = get(&s, "/v1/forward-auth", &all);
        assert_eq!(st, status, "{name}: {body}");
        assert_eq!(header(&h, "x-keyroll-code"), public, "{name}");
        assert!(
            header(&h, "www-authenticate").starts_with("Bearer realm=\"keyroll\""),
            "{name}"
        );
        assert_eq!(
            header(&h, "content-type"),
            "application/problem+json",
            "{name}"
        );
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["code"], public, "{name}");
        assert_eq!(problem["status"], status, "{name}");
        assert_eq!(problem["request_id"], rid.as_str(), "{name}");
        assert!(!problem["detail"].as_str().unwrap().is_empty());
        let line = s.decision(&rid);
        assert_eq!(line["code"], logged, "{name}: the log has the precise code");
        assert_eq!(line["level"], "warn");
        assert!(
            line["fingerprint"].is_string() || name == "missing",
            "{name}"
        );
        bodies.push(body);
    }
    // The caller is never told whether a kid exists.
    let unknown: serde_json::Value = serde_json::from_str(&bodies[4]).unwrap();
    let bad_secret: serde_json::Value = serde_json::from_str(&bodies[5]).unwrap();
    assert_eq!(unknown["title"], bad_secret["title"]);
    assert!(
        !bad_secret["detail"]
            .as_str()
            .unwrap()
            .contains("billing-app")
    );
    // The log says which and why.
    assert!(
        s.decision("req-badsecret")["detail"]
            .as_str()
            .unwrap()
            .contains("prod/billing-app v1")
    );
    assert!(
        s.decision("req-truncated")["detail"]
            .as_str()
            .unwrap()
            .contains("bad length")
    );

    // ?body=none: the same answer without a body.
    let (st, h, body) = get(&s, "/v1/forward-auth?body=none", &[("x-api-key", "nope")]);
    assert_eq!((st, body.as_str()), (401, ""));
    assert_eq!(header(&h, "x-keyroll-code"), "malformed_credential");

    // A retiring key: 200 with Deprecation and Sunset.
    s.rotate("prod/billing-app", &["--grace", "1h"]);
    let (st, h, _) = get(&s, "/v1/forward-auth", &[("x-api-key", &key)]);
    assert_eq!(st, 200);
    assert_eq!(header(&h, "x-keyroll-code"), "valid_deprecated");
    assert!(header(&h, "deprecation").starts_with('@'));
    assert!(header(&h, "sunset").ends_with(" GMT"));

    // Any method and any path below the endpoint.
    let r = harness::http()
        .post(format!("{}/v1/forward-auth/a/b?x=1", s.url()))
        .header("x-api-key", &key)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    s.assert_no_secret_leaked(&bodies);
}

#[test]
fn openapi_and_health() {
    let s = harness::start();
    let doc: serde_json::Value = harness::http()
        .get(format!("{}/openapi.json", s.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    for path in [
        "/v1/forward-auth",
        "/v1/verify",
        "/v1/consumers",
        "/v1/consumers/{env}/{name}/rotate",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert_eq!(
        harness::http()
            .get(format!("{}/healthz", s.url()))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let ready: serde_json::Value = harness::http()
        .get(format!("{}/readyz", s.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["status"], "ok");
    assert_eq!(ready["store"], "sqlite");
}
