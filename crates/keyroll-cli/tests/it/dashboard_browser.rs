//! The dashboard in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver; a few JSON calls, no client crate) against a real server with real traffic
//! through forward-auth. It logs in, watches a rotation move from the old version to the new
//! one in the adoption chart, sees the stall appear, filters decisions by code, rotates through
//! the confirmation (a protected environment) and logs out, checking page content at each step
//! and writing a screenshot of each page to `target/dashboard-screenshots/<test name>/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::harness;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    process: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Driver {
    fn start() -> Driver {
        let addr = harness::free_addr();
        let port = addr.rsplit(':').next().unwrap().to_owned();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        keyroll_ca::tls::install_provider();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("{base}/status"))
            .send()
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1280,1400".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
            }}}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_owned();
        Driver {
            process,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req.send().unwrap();
        let v: Value = r.json().unwrap();
        assert!(v["value"].get("error").is_none(), "{path}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            reqwest::Method::POST,
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT].as_str().unwrap().to_owned()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            json!({}),
        );
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    /// Presses one key (a WebDriver key code such as TAB or ENTER) on whatever has the focus.
    fn press(&self, key: &str) {
        self.keys(key);
    }

    /// Types `text` key by key on whatever has the focus, as a person would (an element found
    /// first could be replaced by a refresh before the keys arrive).
    fn keys(&self, text: &str) {
        let actions: Vec<Value> = text
            .chars()
            .flat_map(|c| {
                let c = c.to_string();
                [
                    json!({"type": "keyDown", "value": c}),
                    json!({"type": "keyUp", "value": c}),
                ]
            })
            .collect();
        self.call(
            reqwest::Method::POST,
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        );
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    fn text(&self) -> String {
        self.js("return document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", Value::Null)
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits until `check` holds of the page (the pages refresh themselves every 3 s).
    fn wait_for(&self, what: &str, secs: u64, check: impl Fn(&Driver) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page text:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn screenshot(&self, dir: &std::path::Path, name: &str) -> PathBuf {
        let data = self.call(reqwest::Method::GET, "/screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

fn screenshot_dir(test: &str) -> PathBuf {
    // target/ of the workspace (CARGO_TARGET_DIR when set), as the brief of the test says.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("dashboard-screenshots").join(test);
    std::fs::create_dir_all(&dir).unwrap();
    println!("screenshots of {test}: {}", dir.display());
    dir
}

/// The traffic of an app: forward-auth requests with whichever keys it holds, new ones taking
/// a growing share, as replicas pick up the new key.
struct Traffic {
    keys: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(url: String, first: String) -> Traffic {
        let keys = Arc::new(Mutex::new(vec![first]));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (keys, stop) = (Arc::clone(&keys), Arc::clone(&stop));
            std::thread::spawn(move || {
                let http = harness::http();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = {
                        let k = keys.lock().unwrap();
                        // With two keys: one request in four still on the old one.
                        if k.len() > 1 && !n.is_multiple_of(4) {
                            k[k.len() - 1].clone()
                        } else {
                            k[0].clone()
                        }
                    };
                    n += 1;
                    let _ = http
                        .get(format!("{url}/v1/forward-auth"))
                        .header("authorization", format!("Bearer {key}"))
                        .header("user-agent", "billing-worker/1.2")
                        .send();
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Traffic {
            keys,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn dashboard_in_chromium_watches_a_rotation_stall_and_logs_out() {
    if !harness::require_program("chromium", "apt-get install -y chromium chromium-driver")
        || !harness::require_program(
            "chromedriver",
            "apt-get install -y chromium chromium-driver",
        )
    {
        return;
    }
    let shots = screenshot_dir("dashboard_in_chromium_watches_a_rotation_stall_and_logs_out");
    let s = harness::start_with_env(&[
        ("KEYROLL_USAGE__FLUSH_INTERVAL", "1s"),
        ("KEYROLL_USAGE__SWEEP_INTERVAL", "500ms"),
    ]);
    assert_eq!(s.cli(&["env", "create", "prod", "--protected"]).code, 0);
    let first = s.consumer("prod/billing", &["--owner", "payments-team"]);
    s.consumer("prod/search", &[]);
    let url = s.url();
    let traffic = Traffic::start(url.clone(), first);
    // A few rejections to filter by code.
    let http = harness::http();
    for _ in 0..3 {
        let _ = http
            .get(format!("{url}/v1/forward-auth"))
            .header("authorization", "Bearer not-a-key")
            .send();
    }

    let d = Driver::start();
    // Log in.
    d.go(&format!("{url}/ui/"));
    d.wait_for("the login form", 10, |d| d.url().ends_with("/ui/login"));
    assert!(d.text().contains("Admin token"));
    d.screenshot(&shots, "login");
    d.type_into("#token", &s.token());
    d.click("#login");
    d.wait_for("the overview", 15, |d| {
        let t = d.text();
        t.contains("Overview") && t.contains("prod/billing") && t.contains("payments-team")
    });
    assert!(
        !d.url().contains("kra_"),
        "the token must never be in a URL"
    );
    let t = d.text();
    assert!(t.contains("No rotation is stalled."), "{t}");
    assert!(t.contains("signed in as"), "{t}");
    d.screenshot(&shots, "overview");

    // The consumer list is searched by the server; typing survives the page's refreshes.
    d.js("document.getElementById('consumers-search').focus(); return null");
    d.keys("no-such-consumer\u{E007}");
    d.wait_for("an empty search result", 15, |d| {
        d.text().contains("(0 shown of 0)")
    });
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        d.js("return document.getElementById('consumers-search').value"),
        json!("no-such-consumer"),
        "the search box lost its text in a refresh"
    );
    // Erase what is there (Backspace from its end, where the caret stayed) and search again.
    d.keys(&("\u{E003}".repeat("no-such-consumer".len()) + "BILL\u{E007}"));
    d.wait_for("the search result", 15, |d| {
        d.text().contains("(1 shown of 1)")
    });
    assert!(d.text().contains("prod/billing"));

    // By keyboard alone: Tab moves the focus (visibly named) to the consumer's link, Enter
    // opens its page.
    const TAB: &str = "\u{E004}";
    const ENTER: &str = "\u{E007}";
    d.js("document.activeElement && document.activeElement.blur(); return null");
    let mut reached = false;
    for _ in 0..40 {
        d.press(TAB);
        let focused = d.js(
            "const a = document.activeElement; return a ? (a.getAttribute('href') || a.id || a.tagName) : ''",
        );
        if focused.as_str() == Some("/ui/consumer/prod/billing") {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the consumer link");
    let outline = d.js("return getComputedStyle(document.activeElement).outlineStyle");
    assert_ne!(
        outline.as_str(),
        Some("none"),
        "the focused link shows no focus ring"
    );
    d.press(ENTER);
    d.wait_for("the consumer page opened by keyboard", 15, |d| {
        d.url().ends_with("/ui/consumer/prod/billing") && d.text().contains("Consumer prod/billing")
    });

    // Rotate through the confirmation; prod is protected, so it needs the extra tick.
    d.go(&format!("{url}/ui/rotate/prod/billing"));
    d.wait_for("the preflight", 15, |d| {
        d.text().contains("Preflight checklist")
    });
    let t = d.text();
    assert!(
        t.contains("protected — changes need an extra confirmation"),
        "{t}"
    );
    assert!(t.contains("What a rotation now sets in motion"), "{t}");
    d.type_into("#grace", "15s");
    d.click("#rotate");
    d.wait_for("the confirmation", 10, |d| {
        d.js("return !!document.querySelector('dialog[open]')") == json!(true)
    });
    let dialog = d.js("return document.getElementById('confirm').innerText");
    let dialog = dialog.as_str().unwrap();
    assert!(dialog.contains("Rotate prod/billing?"), "{dialog}");
    assert!(dialog.contains("grace window of 15s"), "{dialog}");
    assert!(
        dialog.contains("prod is a protected environment"),
        "{dialog}"
    );
    d.screenshot(&shots, "rotate-confirm");
    // Without the protected-environment tick nothing happens.
    d.click("#confirm-go");
    d.wait_for("the refusal", 5, |d| {
        d.js("return document.getElementById('confirm-status').innerText")
            .as_str()
            .is_some_and(|t| t.contains("Tick the confirmation"))
    });
    assert_eq!(d.js("return 1"), json!(1));
    let shown = s.cli(&["consumer", "show", "prod/billing", "--output", "json"]);
    let v: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(
        v["versions"].as_array().unwrap().len(),
        1,
        "rotated without the confirmation"
    );
    d.click("#confirm-protected");
    d.click("#confirm-go");
    d.wait_for("the rotation", 15, |d| {
        d.js("return document.getElementById('confirm-status').innerText")
            .as_str()
            .is_some_and(|t| t.contains("Rotated: v2 issued"))
    });
    let status = d.js("return document.getElementById('confirm-status').innerText");
    let new_key = status
        .as_str()
        .unwrap()
        .split_whitespace()
        .find(|w| w.starts_with("kr_prod_"))
        .unwrap()
        .to_owned();
    s.secrets
        .lock()
        .unwrap()
        .push(new_key.rsplit('_').next().unwrap().to_owned());
    d.screenshot(&shots, "rotate-done");
    d.click("#confirm-cancel");
    // The app picks up the new key; one replica keeps the old one.
    traffic.keys.lock().unwrap().push(new_key);

    // Watch the rotation in the chart: both lines carry traffic, the new one more.
    d.go(&format!("{url}/ui/consumer/prod/billing"));
    d.wait_for("both versions in the chart", 40, |d| {
        let totals = d.js("return [...document.querySelectorAll('#adoption-svg polyline')].map(p => [p.dataset.version, Number(p.dataset.total)])");
        let totals = totals.as_array().cloned().unwrap_or_default();
        let of = |v: &str| {
            totals
                .iter()
                .find(|p| p[0] == v)
                .and_then(|p| p[1].as_f64())
                .unwrap_or(0.0)
        };
        of("2") > 10.0 && of("1") > 0.0
    });
    let t = d.text();
    assert!(
        t.contains("Adoption") && t.contains("v2 — active") && t.contains("v1 — retiring"),
        "{t}"
    );
    assert!(t.contains("billing-worker/1.2"), "{t}");
    let marks = d.js(
        "return [...document.querySelectorAll('#adoption-svg line.mark')].map(l => l.dataset.kind)",
    );
    let marks = marks.to_string();
    assert!(
        marks.contains("issued") && marks.contains("deadline"),
        "{marks}"
    );
    // The chart fits the traffic: it starts shortly before the first request or mark instead of
    // squeezing a minute of rotation into the right edge of the 15-minute window; the marks are
    // listed in words under it.
    let fitted = d
        .js("return Date.now() - Date.parse(document.getElementById('adoption-svg').dataset.from)");
    let fitted_ms = fitted.as_f64().unwrap();
    assert!(
        fitted_ms < 10.0 * 60_000.0,
        "the chart shows {fitted_ms} ms of an empty window"
    );
    let listed = d.js("return [...document.querySelectorAll('ol.marks li')].map(l => l.innerText)");
    let listed = listed.to_string();
    assert!(
        listed.contains("v2 issued at") && listed.contains("v1 deadline at"),
        "{listed}"
    );
    d.screenshot(&shots, "consumer-rotating");

    // The old version is still used at its deadline: the rotation stalls, in red and in words.
    d.wait_for("the stall", 60, |d| d.text().contains("Stalled:"));
    let t = d.text();
    assert!(t.contains("stalled"), "{t}");
    d.wait_for("the stall extension mark", 15, |d| {
        d.js("return !!document.querySelector('#adoption-svg line.mark-stall_extension')")
            == json!(true)
    });
    d.screenshot(&shots, "consumer-stalled");
    d.go(&format!("{url}/ui/"));
    d.wait_for("the stall on the overview", 15, |d| {
        d.js("return !!document.getElementById('stall-prod/billing')") == json!(true)
    });
    let stall = d.js("return document.getElementById('stall-prod/billing').innerText");
    let stall = stall.as_str().unwrap();
    assert!(
        stall.contains("v1 still used by 127.0.0.1 (billing-worker/1.2)"),
        "{stall}"
    );
    let t = d.text();
    assert!(t.contains("Rejections in the last hour by reason"), "{t}");
    assert!(t.contains("malformed_credential"), "{t}");
    d.screenshot(&shots, "overview-stalled");

    // Decisions, filtered by code, a row expanded to its explanation and request id.
    d.go(&format!("{url}/ui/decisions"));
    d.wait_for("the decisions", 15, |d| d.text().contains("matching"));
    d.type_into("#f-code", "malformed_credential");
    d.click("#apply-filters");
    d.wait_for("the filter", 15, |d| {
        d.url().contains("code=malformed_credential") && d.text().contains("3 shown of 3 matching")
    });
    let codes =
        d.js("return [...document.querySelectorAll('tr.decision')].map(r => r.dataset.code)");
    assert_eq!(
        codes,
        json!([
            "malformed_credential",
            "malformed_credential",
            "malformed_credential"
        ])
    );
    d.js("document.getElementById('decision-0').open = true; return 1");
    let row = d.js("return document.getElementById('decision-0').innerText");
    assert!(
        row.as_str()
            .unwrap()
            .contains("Request id (search the logs for it): rq_"),
        "{row}"
    );
    d.screenshot(&shots, "decisions");

    // Log out: the session ends, and a page asks for the login again.
    d.click("#logout");
    d.wait_for("the login page", 10, |d| d.url().ends_with("/ui/login"));
    d.go(&format!("{url}/ui/consumer/prod/billing"));
    d.wait_for("the login page again", 10, |d| {
        d.url().ends_with("/ui/login")
    });
    d.screenshot(&shots, "logged-out");
    drop(traffic);
    s.assert_no_secret_leaked(&[]);
}
