//! One node on SQLite as a cluster of one: `/v1/cluster` and `keyroll cluster status` show it
//! as the leader with every change applied, and a revoke with `?wait=` is confirmed by it
//! alone. (Several nodes need a shared database: PostgreSQL.)

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness;

fn cluster(s: &harness::Server) -> Value {
    let r = harness::http()
        .get(format!("{}/v1/cluster", s.url()))
        .bearer_auth(s.token())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// `/v1/cluster` once its node's applied seq reached the head.
fn settled(s: &harness::Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = cluster(s);
        if c["nodes"][0]["applied_seq"] == c["change_head"] || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_single_node_leads_applies_its_own_writes_and_confirms_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = harness::start_in(&data);
    let started = cluster(&s);
    assert_eq!(started["change_head"], 0);
    let node_id = started["self"].as_str().unwrap().to_owned();
    assert!(node_id.starts_with("node_"), "{started}");
    assert_eq!(started["nodes"].as_array().unwrap().len(), 1, "{started}");
    assert_eq!(started["lease"]["holder"], node_id.as_str());
    assert_eq!(started["lease"]["live"], true);
    assert_eq!(
        s.events_at_least("cluster.leader_acquired", 1)[0]["node_id"],
        node_id.as_str()
    );

    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    s.consumer("prod/billing-app", &["--scope", "invoices:read"]);
    s.rotate("prod/billing-app", &["--grace", "1h"]);

    let c = settled(&s);
    assert_eq!(c["change_head"], 2, "a create and a rotation: {c}");
    let node = &c["nodes"][0];
    assert_eq!(node["node_id"], node_id.as_str());
    assert_eq!(node["applied_seq"], 2, "{c}");
    assert_eq!(node["lag"], 0);
    assert_eq!(node["leader"], true);
    assert_eq!(node["live"], true);
    assert_eq!(node["address"], s.addr.as_str());

    // A revoke that waits: the writing node's own index has it at once.
    let r = harness::http()
        .post(format!(
            "{}/v1/consumers/prod/billing-app/versions/1/revoke?wait=1s",
            s.url()
        ))
        .bearer_auth(s.token())
        .json(&serde_json::json!({ "reason": "leaked in a log" }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    assert_eq!(body["state"], "revoked", "{body}");
    let p = &body["propagation"];
    assert_eq!(p["change_seq"], 3, "{body}");
    assert_eq!(p["nodes"], 1, "{body}");
    assert_eq!(p["confirmed"], 1, "{body}");
    assert!(p["within_ms"].as_u64().unwrap() < 1_000, "{body}");
    assert!(p.get("lagging").is_none(), "{body}");

    // Without a wait, no propagation; a bad wait is a problem.
    let r = harness::http()
        .post(format!("{}/v1/consumers/prod/billing-app/disable", s.url()))
        .bearer_auth(s.token())
        .json(&serde_json::json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    assert!(body.get("propagation").is_none(), "{body}");
    for bad in ["wait=soon", "wait=1s&later=1"] {
        let r = harness::http()
            .post(format!(
                "{}/v1/consumers/prod/billing-app/versions/2/revoke?{bad}",
                s.url()
            ))
            .bearer_auth(s.token())
            .json(&serde_json::json!({}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
        let problem: Value = r.json().unwrap();
        assert_eq!(problem["code"], "invalid_request", "{problem}");
    }

    // The CLI: a table, and the API's JSON.
    let c = settled(&s);
    assert_eq!(c["change_head"], 4, "the disable is change 4: {c}");
    let table = s.cli(&["cluster", "status"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains(&format!("Leader: {node_id}")),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("Change log head: 4"),
        "{}",
        table.stdout
    );
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with(&node_id))
        .unwrap_or_else(|| panic!("{}", table.stdout));
    assert!(
        row.contains("(this)") && row.contains("leader") && row.contains("live"),
        "{row}"
    );
    let json = s.cli(&["cluster", "status", "--json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["nodes"][0]["applied_seq"], 4, "{v}");
    assert_eq!(v["lease"]["holder"], node_id.as_str());
    let v: Value =
        serde_json::from_str(&s.cli(&["--output", "json", "cluster", "status"]).stdout).unwrap();
    assert_eq!(v["change_head"], 4);

    // A clean shutdown gives the lease up and leaves.
    assert_eq!(s.terminate(), Some(0));
    let again = harness::start_in(&data);
    let c = cluster(&again);
    let nodes: Vec<&str> = c["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        [c["self"].as_str().unwrap()],
        "the old node left: {c}"
    );
    assert_ne!(c["self"], node_id.as_str(), "a new id per start");
    assert_eq!(
        c["lease"]["holder"], c["self"],
        "led at once, not after the old lease"
    );
    assert_eq!(c["lease"]["term"], 2, "a new tenure: {c}");
    assert_eq!(c["nodes"][0]["applied_seq"], 4, "loaded at the head: {c}");
}
