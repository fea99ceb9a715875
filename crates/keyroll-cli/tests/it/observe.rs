//! Observability of decisions over real HTTP: `/metrics` after known traffic, the decision
//! history through `keyroll decisions`, and flood collapsing of the log.

use std::time::{Duration, Instant};

use keyroll_core::assemble_key;

use crate::harness;

/// Sends one forward-auth request; returns the status.
fn forward_auth(s: &harness::Server, headers: &[(&str, &str)]) -> u16 {
    let mut req = harness::http().get(format!("{}/v1/forward-auth", s.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().unwrap().status().as_u16()
}

fn scrape(s: &harness::Server) -> String {
    let r = harness::http()
        .get(format!("{}/metrics", s.url()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "/metrics needs no token");
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    r.text().unwrap()
}

/// The value of one exact series (`name{labels}`), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn kid_of(key: &str) -> String {
    key.split('_').nth(2).unwrap().to_owned()
}

fn decisions(s: &harness::Server, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["decisions", "--output", "json"];
    all.extend_from_slice(args);
    let r = s.cli(&all);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

fn request_ids(v: &serde_json::Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["request_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn metrics_count_exactly_the_traffic_sent() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let key = s.consumer("prod/billing-app", &[]);
    let kid = kid_of(&key);
    let unknown = assemble_key("prod", "AAAAAAAAAAAA", &"s".repeat(32));
    for _ in 0..3 {
        assert_eq!(
            forward_auth(&s, &[("authorization", &format!("Bearer {key}"))]),
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(forward_auth(&s, &[("x-api-key", &unknown)]), 401);
    }
    assert_eq!(forward_auth(&s, &[]), 401);

    let text = scrape(&s);
    let decisions = |env: &str, code: &str| {
        value(
            &text,
            &format!("keyroll_decisions_total{{environment=\"{env}\",code=\"{code}\"}}"),
        )
    };
    assert_eq!(decisions("prod", "valid"), Some(3.0), "{text}");
    assert_eq!(decisions("prod", "unknown_key"), Some(2.0));
    // No key and no required environment: nothing names one.
    assert_eq!(decisions("unknown", "missing_credential"), Some(1.0));
    let all_decisions: f64 = text
        .lines()
        .filter(|l| l.starts_with("keyroll_decisions_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(all_decisions, 6.0);

    // A real histogram (buckets, not quantiles), one sample per decision.
    assert!(text.contains("# TYPE keyroll_verify_duration_seconds histogram"));
    let buckets: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("keyroll_verify_duration_seconds_bucket{le="))
        .collect();
    assert!(buckets.len() >= 5, "{text}");
    assert_eq!(
        value(&text, "keyroll_verify_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(6.0)
    );
    assert_eq!(
        value(&text, "keyroll_verify_duration_seconds_count"),
        Some(6.0)
    );

    // Scrape-time gauges: the index, the store, the process.
    assert_eq!(
        value(
            &text,
            "keyroll_key_versions{environment=\"prod\",state=\"active\"}"
        ),
        Some(1.0)
    );
    assert_eq!(value(&text, "keyroll_index_key_versions"), Some(1.0));
    assert!(value(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(value(&text, "process_open_fds").unwrap() > 0.0);
    assert!(value(&text, "process_start_time_seconds").unwrap() > 1.0e9);
    assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&scrape(&s), "keyroll_store_up") != Some(1.0) {
        assert!(Instant::now() < deadline, "keyroll_store_up never became 1");
        std::thread::sleep(Duration::from_millis(100));
    }

    // No label holds a kid, a consumer or a fingerprint.
    assert!(!text.contains(&kid), "a kid is in /metrics");
    assert!(
        !text.contains("AAAAAAAAAAAA"),
        "a presented kid is in /metrics"
    );
    assert!(!text.contains("billing-app"), "a consumer is in /metrics");
    assert!(!text.contains("fp_"), "a fingerprint is in /metrics");
    s.assert_no_secret_leaked(&[text]);
}

#[test]
fn decisions_are_found_by_kid_consumer_code_and_fingerprint() {
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let a = s.consumer("prod/billing-app", &[]);
    let b = s.consumer("prod/reports", &[]);
    let kid_a = kid_of(&a);
    let wrong_secret = assemble_key("prod", &kid_a, &"s".repeat(32));
    let unknown = assemble_key("prod", "AAAAAAAAAAAA", &"s".repeat(32));
    let bearer = |k: &str| format!("Bearer {k}");
    let sent: [(&str, String); 6] = [
        ("rq-a1", bearer(&a)),
        ("rq-b1", bearer(&b)),
        ("rq-a2", bearer(&a)),
        ("rq-a3", bearer(&wrong_secret)),
        ("rq-u1", bearer(&unknown)),
        ("rq-m1", String::new()),
    ];
    for (id, auth) in &sent {
        let mut h = vec![("x-request-id", *id)];
        if !auth.is_empty() {
            h.push(("authorization", auth.as_str()));
        }
        forward_auth(&s, &h);
    }

    // By kid: the two allowed and the wrong secret, newest first, with their facts.
    let by_kid = decisions(&s, &["--kid", &kid_a]);
    assert_eq!(request_ids(&by_kid), ["rq-a3", "rq-a2", "rq-a1"]);
    let newest = &by_kid["items"][0];
    assert_eq!(newest["code"], "invalid_secret");
    assert_eq!(newest["decision"], "rejected");
    assert_eq!(newest["consumer"], "prod/billing-app");
    assert_eq!(newest["environment"], "prod");
    assert_eq!(newest["version"], 1);
    assert!(
        newest["detail"]
            .as_str()
            .unwrap()
            .contains("secret does not match")
    );
    assert!(
        newest["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let allowed = &by_kid["items"][1];
    assert_eq!(allowed["code"], "valid");
    assert_eq!(allowed["state"], "active");
    assert!(allowed["detail"].is_null());
    assert_eq!(by_kid["matched"], 3);

    // By code, precise or as the caller was told.
    let unknown_only = decisions(&s, &["--code", "unknown_key"]);
    assert_eq!(request_ids(&unknown_only), ["rq-u1"]);
    assert_eq!(unknown_only["items"][0]["kid"], "AAAAAAAAAAAA");
    assert!(unknown_only["items"][0]["consumer"].is_null());
    assert_eq!(
        request_ids(&decisions(&s, &["--code", "invalid_key"])),
        ["rq-u1", "rq-a3"]
    );
    assert_eq!(
        request_ids(&decisions(
            &s,
            &[
                "--code",
                "missing_credential,valid",
                "--consumer",
                "prod/reports"
            ]
        )),
        ["rq-b1"]
    );
    assert_eq!(
        request_ids(&decisions(&s, &["--code", "missing_credential"])),
        ["rq-m1"]
    );

    // By consumer and by fingerprint.
    assert_eq!(
        request_ids(&decisions(&s, &["--consumer", "prod/reports"])),
        ["rq-b1"]
    );
    let fp = s.cli(&["fingerprint", &b]).stdout.trim().to_owned();
    assert_eq!(
        request_ids(&decisions(&s, &["--fingerprint", &fp])),
        ["rq-b1"]
    );

    // Time window and limit.
    let recent = decisions(&s, &["--since", "10m", "--limit", "2"]);
    assert_eq!(request_ids(&recent), ["rq-m1", "rq-u1"]);
    assert_eq!(recent["matched"], 6);

    // The table for people.
    let table = s.cli(&["decisions", "--kid", &kid_a]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.starts_with("TIME"), "{}", table.stdout);
    assert!(table.stdout.contains("invalid_secret"));
    assert!(table.stdout.contains("3 of 3 matching decision(s)"));

    // Bad filters: refused by the CLI before sending, and by the server with a 400.
    let r = s.cli(&["decisions", "--kid", "short"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--kid"), "{}", r.stderr);
    let r = harness::http()
        .get(format!("{}/v1/decisions?code=nope", s.url()))
        .bearer_auth(s.token())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: serde_json::Value = r.json().unwrap();
    assert_eq!(problem["code"], "invalid_request");
    assert!(problem["detail"].as_str().unwrap().contains("nope"));
    let r = harness::http()
        .get(format!("{}/v1/decisions", s.url()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "the history needs an admin token");
    let doc: serde_json::Value = harness::http()
        .get(format!("{}/openapi.json", s.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(doc["paths"]["/v1/decisions"]["get"].is_object());
    assert!(doc["paths"]["/metrics"]["get"].is_object());
    s.assert_no_secret_leaked(&[by_kid.to_string(), table.stdout]);
}

#[test]
fn a_flood_of_identical_rejections_is_collapsed_in_the_log_only() {
    let s = harness::start_with_env(&[("KEYROLL_LOG__FLOOD_WINDOW", "5s")]);
    s.cli(&["env", "create", "prod"]);
    s.consumer("prod/billing-app", &[]);
    let flood_kid = "FLOODFLOOD00";
    let flood = assemble_key("prod", flood_kid, &"s".repeat(32));
    let client = harness::http();
    for i in 0..100 {
        let r = client
            .get(format!("{}/v1/forward-auth", s.url()))
            .header("x-api-key", &flood)
            .header("x-request-id", format!("flood-{i}"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    // Another key from the same source is not caught in the same flood.
    let other = assemble_key("prod", "OTHEROTHER00", &"s".repeat(32));
    forward_auth(&s, &[("x-api-key", &other), ("x-request-id", "other-1")]);
    s.decision("other-1");

    // The summary comes after the window ends, from the background sweep: no further
    // request of that key is needed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let summary = loop {
        if let Some(v) = s
            .events("auth.decision.suppressed")
            .into_iter()
            .find(|v| v["kid"] == flood_kid)
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no auth.decision.suppressed line"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let logged = s
        .events("auth.decision")
        .into_iter()
        .filter(|v| v["kid"] == flood_kid)
        .count();
    assert!(logged <= 11, "{logged} lines for one flooding key");
    assert_eq!(logged, 10, "the first 10 of the window are logged");
    assert_eq!(summary["count"], 90);
    assert_eq!(summary["code"], "unknown_key");
    assert_eq!(summary["remote_addr"], "127.0.0.1");
    assert_eq!(summary["window_s"], 5);
    assert_eq!(summary["level"], "warn");
    assert_eq!(summary["last_request_id"], "flood-99");
    assert!(
        summary["fingerprint"].is_null(),
        "the kid identifies the key"
    );

    // Metrics and history saw every one.
    let text = scrape(&s);
    assert_eq!(
        value(
            &text,
            "keyroll_decisions_total{environment=\"prod\",code=\"unknown_key\"}"
        ),
        Some(101.0)
    );
    assert_eq!(
        value(&text, "keyroll_decision_log_suppressed_total"),
        Some(90.0)
    );
    let history = decisions(&s, &["--kid", flood_kid, "--limit", "1000"]);
    assert_eq!(history["matched"], 100);
}
