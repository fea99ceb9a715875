//! Real slow clients against the real server on loopback: stalled request heads, idle
//! keep-alive connections, trickled bodies, more connections than the cap, and requests the
//! HTTP layer rejects before any handler. Short limits through `KEYROLL_HTTP__*` keep it fast.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness;

/// Reads until the peer closes (Ok with what came) or `limit` passes (Err with what came).
fn read_until_closed(c: &mut TcpStream, limit: Duration) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(String::from_utf8_lossy(&out).into_owned());
        }
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(String::from_utf8_lossy(&out).into_owned());
            }
            // A reset is a close too.
            Err(_) => return Ok(String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

/// Reads one response with a Content-Length body from a keep-alive connection.
fn read_response(c: &mut TcpStream) -> String {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

/// Waits for log lines of `event` whose `limit` is `setting`, and returns their total count.
fn limit_count(s: &harness::Server, setting: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let total: u64 = s
            .events("http.limit")
            .iter()
            .filter(|v| v["limit"] == setting)
            .map(|v| v["count"].as_u64().unwrap())
            .sum();
        if total >= at_least || Instant::now() > deadline {
            return total;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn quick_get(url: &str, headers: &[(&str, &str)]) -> (u16, Duration) {
    keyroll_ca::tls::install_provider();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let status = req.send().unwrap().status().as_u16();
    (status, started.elapsed())
}

#[test]
fn stalled_request_heads_are_cut_off_and_the_server_keeps_answering() {
    let s = harness::start_with_env(&[
        ("KEYROLL_HTTP__HEADER_READ_TIMEOUT", "1500ms"),
        ("KEYROLL_HTTP__LOG_INTERVAL", "200ms"),
    ]);
    s.cli(&["env", "create", "prod"]);
    let key = s.consumer("prod/app", &[]);
    // Half a request line, then nothing: the classic slow-loris connection.
    let mut stalled: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            c.write_all(b"GET /healthz HT").unwrap();
            c
        })
        .collect();
    let opened = Instant::now();
    let (status, took) = quick_get(&format!("{}/healthz", s.url()), &[]);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
    let (status, took) = quick_get(
        &format!("{}/v1/forward-auth", s.url()),
        &[("authorization", &format!("Bearer {key}"))],
    );
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "forward-auth took {took:?}");
    for c in &mut stalled {
        let left = Duration::from_secs(6).saturating_sub(opened.elapsed());
        let r = read_until_closed(c, left);
        assert!(r.is_ok(), "a stalled connection was still open after 6 s");
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(1400),
        "closed before the header timeout: {:?}",
        opened.elapsed()
    );
    assert_eq!(limit_count(&s, "http.header_read_timeout", 300), 300);
    let line = s
        .events("http.limit")
        .into_iter()
        .find(|v| v["limit"] == "http.header_read_timeout")
        .unwrap();
    assert_eq!(line["level"], "warn", "{line}");
    assert_eq!(line["value"], "1s 500ms", "{line}");
    assert!(
        line["last_peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{line}"
    );
    // A connection that is slow but delivers its head in time is served.
    let mut slow = TcpStream::connect(&s.addr).unwrap();
    for part in [&b"GET /healthz HTTP/1.1\r\n"[..], b"Host: x\r\n", b"\r\n"] {
        slow.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(read_response(&mut slow).starts_with("HTTP/1.1 200"));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let s = harness::start_with_env(&[
        ("KEYROLL_HTTP__IDLE_TIMEOUT", "1s"),
        ("KEYROLL_HTTP__HEADER_READ_TIMEOUT", "10s"),
        ("KEYROLL_HTTP__LOG_INTERVAL", "200ms"),
    ]);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    c.write_all(request).unwrap();
    assert!(read_response(&mut c).starts_with("HTTP/1.1 200"));
    // Reused within the idle timeout: still open, and the idle time starts again.
    std::thread::sleep(Duration::from_millis(600));
    c.write_all(request).unwrap();
    assert!(read_response(&mut c).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    let r = read_until_closed(&mut c, Duration::from_secs(5));
    let idle = answered.elapsed();
    assert_eq!(r, Ok(String::new()), "closed without a word after idling");
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "closed after {idle:?} (idle timeout 1 s, header timeout 10 s)"
    );
    assert_eq!(limit_count(&s, "http.idle_timeout", 1), 1);
    let line = s.events("http.limit").pop().unwrap();
    assert_eq!(line["level"], "info", "{line}");
}

#[test]
fn a_trickled_body_is_cut_off_with_408() {
    let s = harness::start_with_env(&[
        ("KEYROLL_HTTP__BODY_READ_TIMEOUT", "1s"),
        ("KEYROLL_HTTP__LOG_INTERVAL", "200ms"),
    ]);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let head = format!(
        "POST /v1/environments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nX-Request-Id: slow-body-1\r\n\r\n{{\"name\"",
        s.token()
    );
    c.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let r = read_until_closed(&mut c, Duration::from_secs(5)).expect("closed after the 408");
    let took = started.elapsed();
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let lower = r.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{r}"
    );
    assert!(lower.contains("x-request-id: slow-body-1"), "{r}");
    assert!(lower.contains("connection: close"), "{r}");
    let body: serde_json::Value = serde_json::from_str(&r[r.find("\r\n\r\n").unwrap() + 4..])
        .unwrap_or_else(|e| panic!("{e}: {r}"));
    assert_eq!(body["code"], "request_timeout", "{body}");
    assert_eq!(body["request_id"], "slow-body-1", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("http.body_read_timeout")
    );
    assert_eq!(limit_count(&s, "http.body_read_timeout", 1), 1);
    // Nothing was created from half a body, and a body sent in time still works.
    let r = s.cli(&["env", "create", "prod"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn connections_beyond_the_cap_are_shed_with_503() {
    let s = harness::start_with_env(&[
        ("KEYROLL_HTTP__MAX_CONNECTIONS", "20"),
        ("KEYROLL_HTTP__HEADER_READ_TIMEOUT", "30s"),
        ("KEYROLL_HTTP__LOG_INTERVAL", "200ms"),
    ]);
    let held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&s.addr).unwrap())
        .collect();
    // Wait until the server has taken all twenty (it accepts them in order).
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut extra = TcpStream::connect(&s.addr).unwrap();
    let r = read_until_closed(&mut extra, Duration::from_secs(5)).expect("answered and closed");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shed, not queued"
    );
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.to_ascii_lowercase().contains("retry-after: 1"), "{r}");
    assert!(r.contains("\"code\":\"too_many_connections\""), "{r}");
    let line_count = limit_count(&s, "http.max_connections", 1);
    assert_eq!(line_count, 1);
    // The held connections are still served.
    let mut first = held.into_iter().next().unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut first).starts_with("HTTP/1.1 200"));
    drop(first);
    // Once slots are free, new connections are served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A shed connection may be reset rather than answered, if the request was on its way.
        let status = harness::http()
            .get(format!("{}/healthz", s.url()))
            .send()
            .map_or(0, |r| r.status().as_u16());
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still shedding: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn requests_rejected_before_any_handler_are_logged_with_peer_and_kind() {
    let s = harness::start();
    let send = |raw: &[u8]| -> String {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        c.write_all(raw).unwrap();
        read_until_closed(&mut c, Duration::from_secs(5)).expect("closed")
    };
    let cases: [(&[u8], &str, &str); 3] = [
        (
            b"GET /v1/forward-auth HTTP/1.1\r\nHost: x\r\nX-Api-Key: a\x01b\r\n\r\n",
            "invalid_header",
            "HTTP/1.1 400",
        ),
        (
            b"GET /v1/forward-auth HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
            "invalid_content_length",
            "HTTP/1.1 400",
        ),
        (
            b"GET /v1/forward-auth HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "invalid_content_length",
            "HTTP/1.1 400",
        ),
    ];
    for (raw, kind, status) in cases {
        let r = send(raw);
        assert!(r.starts_with(status), "{kind}: {r}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            let found = s
                .events("http.bad_request")
                .into_iter()
                .filter(|v| v["kind"] == kind)
                .count();
            if found > 0 {
                break s
                    .events("http.bad_request")
                    .into_iter()
                    .rfind(|v| v["kind"] == kind)
                    .unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no http.bad_request line for {kind}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(line["level"], "warn", "{line}");
        assert_eq!(line["status"], 400, "{line}");
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
    }
    // More than hyper's default 100 headers now reaches forward-auth, which answers with a
    // code, a request id and a decision line.
    let mut many = String::from(
        "GET /v1/forward-auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-Id: many-headers-1\r\n",
    );
    for i in 0..120 {
        many.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let r = send(many.as_bytes());
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert!(r.to_ascii_lowercase().contains("x-keyroll-code: "), "{r}");
    assert!(r.contains("many-headers-1"), "{r}");
    s.decision("many-headers-1");
}
