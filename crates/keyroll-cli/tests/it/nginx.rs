//! The shipped nginx config (`examples/nginx/keyroll.conf`) run by real nginx in front of a small
//! upstream, with keyroll as the `auth_request` backend.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness;

/// An upstream that answers 200 and remembers the headers of every request it got.
pub(crate) fn upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || serve_one(stream, &sink));
        }
    });
    (addr, seen)
}

fn serve_one(stream: TcpStream, seen: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        seen.lock().unwrap().push(head.to_ascii_lowercase());
        let body = "hello from upstream";
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

pub(crate) struct Nginx(pub(crate) Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx(prefix: &Path, keyroll: &str, upstream: &str) -> (Nginx, String) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx");
    let listen = format!("127.0.0.1:{}", free_port());
    let conf = std::fs::read_to_string(examples.join("keyroll.conf"))
        .unwrap()
        .replace("@KEYROLL_ADDR@", keyroll)
        .replace("@UPSTREAM_ADDR@", upstream)
        .replace("@LISTEN@", &listen)
        .replace("@ENVIRONMENT@", "prod");
    let include = prefix.join("keyroll.conf");
    std::fs::write(&include, conf).unwrap();
    let wrapper = std::fs::read_to_string(examples.join("test-wrapper.conf"))
        .unwrap()
        .replace("@PREFIX@", prefix.to_str().unwrap())
        .replace("@INCLUDE@", include.to_str().unwrap());
    let main = prefix.join("nginx.conf");
    std::fs::write(&main, wrapper).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&main)
        .arg("-p")
        .arg(prefix)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let nginx = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (nginx, listen)
}

#[test]
fn nginx_auth_request_passes_valid_keys_and_explains_rejections() {
    if !harness::require_program("nginx", "apt-get install -y nginx") {
        return;
    }
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let v1 = s.consumer("prod/billing-app", &[]);
    let v2 = s.rotate("prod/billing-app", &["--grace", "1h"]);
    let v3 = s.rotate("prod/billing-app", &["--grace", "1h"]);
    assert_eq!(s.cli(&["retire", "prod/billing-app", "v1"]).code, 0);
    assert_eq!(
        s.cli(&["revoke", "prod/billing-app", "v2", "--reason", "leaked"])
            .code,
        0
    );
    let (up, seen) = upstream();
    let prefix = tempfile::tempdir().unwrap();
    let (_nginx, listen) = start_nginx(prefix.path(), &s.addr, &up);
    let client = harness::http();
    let url = format!("http://{listen}/invoices/7");

    let ok = client
        .get(&url)
        .header("authorization", format!("Bearer {v3}"))
        .send()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.text().unwrap(), "hello from upstream");
    let heads = seen.lock().unwrap().clone();
    let last = heads.last().expect("the upstream got the request");
    assert!(
        last.contains("x-keyroll-consumer: prod/billing-app"),
        "{last}"
    );
    assert!(last.contains("x-keyroll-version: v3"), "{last}");
    assert!(
        !last.contains(&v3.to_ascii_lowercase()),
        "the key is not forwarded to the app"
    );

    let cases = [
        ("retired", Some(v1.clone()), "key_retired", "v3 replaces it"),
        ("revoked", Some(v2.clone()), "key_revoked", "leaked"),
        (
            "malformed",
            Some(format!("{v3}x")),
            "malformed_credential",
            "bad length",
        ),
        ("missing", None, "missing_credential", "no API key"),
    ];
    let before = seen.lock().unwrap().len();
    for (name, key, code, words) in cases {
        let mut req = client.get(&url);
        if let Some(k) = &key {
            req = req.header("x-api-key", k);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{name}");
        assert_eq!(r.headers()["x-keyroll-code"], code, "{name}");
        assert!(r.headers().get("www-authenticate").is_some(), "{name}");
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["code"], code, "{name}");
        assert!(
            body["detail"].as_str().unwrap().contains(words),
            "{name}: {body}"
        );
        // The same request id is in the keyroll log line, with the same code.
        let line = s.decision(&rid);
        assert_eq!(line["code"], code, "{name}");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "rejected requests never reach the app"
    );
    let mut err = String::new();
    let _ = std::fs::File::open(prefix.path().join("error.log"))
        .and_then(|mut f| f.read_to_string(&mut err));
    assert!(!err.contains("[emerg]"), "{err}");
}

/// Sends raw bytes (HTTP clients refuse to send a control character in a header) and returns
/// the status, the lowercased head and the body of the answer.
fn raw_request(addr: &str, raw: &[u8]) -> (u16, String, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// The gateway's answer to a malformed request: `status`, problem+json with code
/// `malformed_request`, and nginx's request id in the header and the body.
fn assert_malformed(name: &str, (status, head, body): &(u16, String, String), expected: u16) {
    assert_eq!(*status, expected, "{name}: {head}\n{body}");
    assert_eq!(
        header(head, "content-type"),
        Some("application/problem+json"),
        "{name}: {head}"
    );
    assert_eq!(
        header(head, "x-keyroll-code"),
        Some("malformed_request"),
        "{name}: {head}"
    );
    let rid = header(head, "x-request-id").unwrap_or_else(|| panic!("{name}: no request id"));
    assert!(!rid.is_empty(), "{name}");
    let body: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}: {body}"));
    assert_eq!(body["code"], "malformed_request", "{name}: {body}");
    assert_eq!(body["status"], expected, "{name}: {body}");
    assert_eq!(body["request_id"], rid, "{name}: {body}");
}

/// Malformed requests used to reach the client as 503 `auth_unavailable`, blaming keyroll.
#[test]
fn nginx_answers_malformed_requests_with_400_not_auth_unavailable() {
    if !harness::require_program("nginx", "apt-get install -y nginx") {
        return;
    }
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let key = s.consumer("prod/billing-app", &[]);
    let (up, seen) = upstream();
    let prefix = tempfile::tempdir().unwrap();
    let (_nginx, listen) = start_nginx(prefix.path(), &s.addr, &up);

    // nginx passes a control character in a header value on; keyroll's HTTP layer refuses it
    // (400) before any handler, logs it, and nginx maps that 4xx to 400 malformed_request.
    let control = format!(
        "GET /invoices/7 HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nX-Note: a\x01b\r\nConnection: close\r\n\r\n"
    );
    let r = raw_request(&listen, control.as_bytes());
    assert_malformed("control character", &r, 400);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s
        .events("http.bad_request")
        .iter()
        .any(|v| v["kind"] == "invalid_header")
    {
        assert!(
            Instant::now() < deadline,
            "keyroll did not log the request it refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // nginx refuses an invalid Content-Length itself: its answer is the same problem body.
    let r = raw_request(
        &listen,
        format!("GET /invoices/7 HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 12abc\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_malformed("bad content-length", &r, 400);

    // A 100 KB URI exceeds nginx's large_client_header_buffers: nginx's 414, as problem+json.
    let long = format!(
        "GET /invoices/{} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = raw_request(&listen, long.as_bytes());
    assert_malformed("100 KB URI", &r, 414);

    assert!(
        seen.lock().unwrap().is_empty(),
        "no malformed request reached the app"
    );
    // The same key in a well-formed request still passes.
    let ok = raw_request(
        &listen,
        format!(
            "GET /invoices/7 HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(ok.0, 200, "{ok:?}");

    // keyroll down is still 503 auth_unavailable (with Retry-After), not malformed_request.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let prefix2 = tempfile::tempdir().unwrap();
    let (_nginx2, listen2) = start_nginx(prefix2.path(), &dead_addr, &up);
    let (status, head, body) = raw_request(
        &listen2,
        format!(
            "GET /invoices/7 HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(body.contains("\"code\":\"auth_unavailable\""), "{body}");
    assert_eq!(header(&head, "retry-after"), Some("5"), "{head}");
    assert!(header(&head, "x-request-id").is_some(), "{head}");
}

/// More than 100 headers now reach forward-auth (the listener allows 200), which refuses them
/// as `malformed_request` with a request id and a decision line; nginx answers 400.
#[test]
fn nginx_answers_too_many_headers_with_400_malformed_request() {
    if !harness::require_program("nginx", "apt-get install -y nginx") {
        return;
    }
    let s = harness::start();
    s.cli(&["env", "create", "prod"]);
    let key = s.consumer("prod/billing-app", &[]);
    let (up, seen) = upstream();
    let prefix = tempfile::tempdir().unwrap();
    let (_nginx, listen) = start_nginx(prefix.path(), &s.addr, &up);
    let mut raw =
        format!("GET /invoices/7 HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n");
    for i in 0..110 {
        raw.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    raw.push_str("\r\n");
    let r = raw_request(&listen, raw.as_bytes());
    assert_malformed("110 headers", &r, 400);
    let rid = header(&r.1, "x-request-id").unwrap().to_owned();
    assert_eq!(s.decision(&rid)["code"], "malformed_request");
    assert!(seen.lock().unwrap().is_empty(), "the app was not reached");
}
