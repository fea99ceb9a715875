//! A rotation that would break a live client stalls, and the plan shows the next scheduled
//! rotation as blocked by it: a real server, a policy applied with the CLI, live traffic through
//! forward-auth on the old key, and `keyroll plan` read while the stall lasts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness;

const POLICY: &str = r#"
[defaults]
idle = "1h"
on_stall = "extend"

[[environment]]
name = "staging"

[[consumer]]
name = "web"
environments = ["staging"]
scopes = ["read"]
delivery = "ci"
rotate_every = "6s"
grace = "4s"
"#;

#[test]
fn a_stalled_rotation_blocks_the_next_one_and_plan_says_why() {
    let s = harness::start();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let policy = policy.to_str().unwrap();
    let r = s.cli(&["apply", "-f", policy, "--yes"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let old = harness::issued_keys(&r.stdout).pop().expect("the new key");

    // The app keeps using the old key: through forward-auth, as a gateway would.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        let url = format!("{}/v1/forward-auth", s.url());
        std::thread::spawn(move || {
            let http = harness::http();
            while !stop.load(Ordering::Relaxed) {
                let _ = http
                    .get(&url)
                    .header("authorization", format!("Bearer {old}"))
                    .send();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Rotated with the consumer's scheduled grace (4s): v1 retires at its deadline unless in use.
    let rotated_at = Instant::now();
    s.rotate("staging/web", &[]);

    // The next rotation falls due 6 s after v2 was issued, while v1 (used at its deadline, 4 s)
    // is stalled until 8 s: the plan shows it blocked, and why.
    let mut seen = None;
    while rotated_at.elapsed() < Duration::from_secs(9) {
        let json = s.cli(&["plan", "-f", policy, "--output", "json"]);
        let text = s.cli(&["plan", "-f", policy]);
        assert_eq!(
            json.code, 0,
            "only blocked rotations: no change to apply\n{}",
            json.stderr
        );
        assert_eq!(text.code, 0, "{}", text.stderr);
        let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        let blocked = v["plan"]["blocked"].as_array().cloned().unwrap_or_default();
        if let Some(b) = blocked.iter().find(|b| b["consumer"] == "staging/web")
            && text.stdout.contains("Rotations blocked:")
        {
            seen = Some((b.clone(), text.stdout));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (blocked, text) = seen.expect("the plan showed staging/web blocked while v1 was stalled");
    let reasons = blocked["reasons"].as_array().unwrap();
    assert_eq!(reasons[0]["code"], "stalled", "{blocked}");
    assert!(
        reasons[0]["message"]
            .as_str()
            .unwrap()
            .contains("v1 is still in use"),
        "{blocked}"
    );
    assert!(
        text.contains("staging/web: the previous rotation stalled"),
        "{text}"
    );
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    s.assert_no_secret_leaked(&[]);
}
