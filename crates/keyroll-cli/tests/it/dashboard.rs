//! The dashboard's login, session and CSRF rules over real HTTP against a real server: the
//! security headers on every page, the cookie's attributes, a session acting as its token, and
//! that a request without the session, with a forged CSRF token or from another origin changes
//! nothing; logout and a revoked token end the session.

use std::time::Duration;

use crate::harness::{self, Server};

fn client() -> reqwest::blocking::Client {
    keyroll_ca::tls::install_provider();
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Logs in with `token`; returns the session and CSRF cookie values and the Set-Cookie lines.
pub fn login(s: &Server, token: &str) -> (String, String, Vec<String>) {
    let r = client()
        .post(format!("{}/ui/login", s.url()))
        .header("origin", s.url())
        .form(&[("token", token)])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "{:?}", r.text());
    assert_eq!(r.headers()["location"], "/ui/");
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let value = |name: &str| {
        cookies
            .iter()
            .find_map(|c| c.strip_prefix(&format!("{name}=")))
            .and_then(|c| c.split(';').next())
            .unwrap()
            .to_owned()
    };
    (value("keyroll_session"), value("keyroll_csrf"), cookies)
}

fn versions(s: &Server, reference: &str) -> usize {
    let r = s.cli(&["consumer", "show", reference, "--output", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["versions"].as_array().unwrap().len()
}

#[test]
fn dashboard_headers_sessions_and_csrf() {
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    s.consumer("prod/billing", &[]);
    let http = client();
    let url = s.url();

    // Security headers on the login page, a page and an asset.
    let login_page = http.get(format!("{url}/ui/login")).send().unwrap();
    assert_eq!(login_page.status(), 200);
    {
        let h = login_page.headers();
        assert_eq!(
            h["content-security-policy"],
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        );
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
    }
    let body = login_page.text().unwrap();
    assert!(body.contains("type=\"password\""), "{body}");
    assert!(
        !body.contains("<script>") && !body.contains("style="),
        "inline script or style: {body}"
    );
    let asset = body
        .split("src=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let a = http.get(format!("{url}{asset}")).send().unwrap();
    assert_eq!(a.status(), 200);
    assert_eq!(
        a.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(
        a.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(a.headers()["x-frame-options"], "DENY");

    // Without a session a page sends the browser to the login form.
    let r = http.get(format!("{url}/ui/")).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");

    // A bad token: the form again, with why, and no cookie.
    let r = http
        .post(format!("{url}/ui/login"))
        .header("origin", &url)
        .form(&[("token", "kra_nope_nope")])
        .send()
        .unwrap();
    assert!(r.status() == 401 || r.status() == 400, "{}", r.status());
    assert!(r.headers().get("set-cookie").is_none());
    // A login posted from another site is refused (login CSRF).
    let r = http
        .post(format!("{url}/ui/login"))
        .header("origin", "http://evil.example")
        .form(&[("token", s.token())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());

    let (session, csrf, cookies) = login(&s, &s.token());
    let session_cookie = cookies
        .iter()
        .find(|c| c.starts_with("keyroll_session="))
        .unwrap();
    assert!(session_cookie.contains("HttpOnly"), "{session_cookie}");
    assert!(
        session_cookie.contains("SameSite=Strict"),
        "{session_cookie}"
    );
    assert!(
        !session_cookie.contains("Secure"),
        "plain HTTP: {session_cookie}"
    );
    let csrf_cookie = cookies
        .iter()
        .find(|c| c.starts_with("keyroll_csrf="))
        .unwrap();
    assert!(csrf_cookie.contains("SameSite=Strict") && !csrf_cookie.contains("HttpOnly"));
    // The token is nowhere in what the browser got, nor in the database.
    let secret = s.token().rsplit('_').next().unwrap().to_owned();
    assert!(!cookies.iter().any(|c| c.contains(&secret)));
    assert!(!s.database_text().contains(&session) && !s.database_text().contains(&csrf));
    let cookie = format!("keyroll_session={session}; keyroll_csrf={csrf}");

    // The session reads the API as its token.
    let r = http
        .get(format!("{url}/v1/status"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = http
        .get(format!("{url}/ui/"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(page.text().unwrap().contains("<main id=\"main\""));

    // State changes by cookie need this origin and the session's CSRF token; none changes anything.
    let rotate = format!("{url}/v1/consumers/prod/billing/rotate");
    let attempts: Vec<(Option<&str>, Option<&str>, u16, &str)> = vec![
        (None, None, 403, "cross_origin"),
        (Some(url.as_str()), None, 403, "csrf_invalid"),
        (
            Some(url.as_str()),
            Some("forged-token"),
            403,
            "csrf_invalid",
        ),
        (
            Some("http://evil.example"),
            Some(csrf.as_str()),
            403,
            "cross_origin",
        ),
    ];
    for (origin, token, status, code) in attempts {
        let mut req = http
            .post(&rotate)
            .header("cookie", &cookie)
            .json(&serde_json::json!({}));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status(), status, "origin {origin:?} token {token:?}");
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["code"], code);
    }
    // Without the session at all.
    let r = http
        .post(&rotate)
        .header("origin", &url)
        .header("x-csrf-token", &csrf)
        .json(&serde_json::json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        versions(&s, "prod/billing"),
        1,
        "a refused request changed something"
    );

    // With both, it works.
    let r = http
        .post(&rotate)
        .header("cookie", &cookie)
        .header("origin", &url)
        .header("x-csrf-token", &csrf)
        .json(&serde_json::json!({"grace": "1h"}))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text());
    let rotated: serde_json::Value = r.json().unwrap();
    let key = rotated["key"].as_str().unwrap();
    s.secrets
        .lock()
        .unwrap()
        .push(key.rsplit('_').next().unwrap().to_owned());
    assert_eq!(versions(&s, "prod/billing"), 2);

    // Logout needs the CSRF token too, then ends the session.
    let r = http
        .post(format!("{url}/ui/logout"))
        .header("cookie", &cookie)
        .header("origin", &url)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{url}/ui/logout"))
        .header("cookie", &cookie)
        .header("origin", &url)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().contains("Max-Age=0"))
    );
    let r = http
        .get(format!("{url}/v1/status"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["code"], "session_invalid");

    // A read-only token can log in and look; revoking it ends its session.
    let r = s.cli(&[
        "token",
        "create",
        "--scope",
        "consumers:read",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let created: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let viewer = created["token"].as_str().unwrap().to_owned();
    let viewer_id = created["info"]["id"].as_str().unwrap().to_owned();
    let (vs, vc, _) = login(&s, &viewer);
    let vcookie = format!("keyroll_session={vs}; keyroll_csrf={vc}");
    let r = http
        .get(format!("{url}/v1/status"))
        .header("cookie", &vcookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Its scopes are the token's: a rotation is refused even with the CSRF token.
    let r = http
        .post(&rotate)
        .header("cookie", &vcookie)
        .header("origin", &url)
        .header("x-csrf-token", &vc)
        .json(&serde_json::json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(versions(&s, "prod/billing"), 2);
    assert_eq!(s.cli(&["token", "revoke", &viewer_id]).code, 0);
    let r = http
        .get(format!("{url}/v1/status"))
        .header("cookie", &vcookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["code"], "token_revoked");
    s.assert_no_secret_leaked(&[]);
}

/// The overview's lists are cut by the server: a page of consumers by `ENV/NAME`, a search,
/// and only those that need attention, with how many matched; bad paging is a 400.
#[test]
fn status_pages_searches_and_lists_what_needs_attention() {
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    assert_eq!(s.cli(&["env", "create", "staging"]).code, 0);
    for r in ["prod/billing", "prod/search", "staging/billing", "prod/api"] {
        s.consumer(r, &[]);
    }
    s.rotate("prod/search", &["--grace", "1h"]);
    let http = harness::http();
    let get = |query: &str| {
        let r = http
            .get(format!("{}/v1/status?{query}", s.url()))
            .bearer_auth(s.token())
            .send()
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json::<serde_json::Value>().unwrap())
    };
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["consumer"].as_str().unwrap().to_owned())
            .collect()
    };
    let (code, all) = get("");
    assert_eq!(code, 200, "{all}");
    assert_eq!(all["matched"], 4);
    assert_eq!(
        names(&all),
        ["prod/api", "prod/billing", "prod/search", "staging/billing"]
    );
    let (_, first) = get("limit=2");
    assert_eq!(names(&first), ["prod/api", "prod/billing"]);
    assert_eq!(first["matched"], 4);
    let (_, rest) = get("limit=2&offset=2");
    assert_eq!(names(&rest), ["prod/search", "staging/billing"]);
    let (_, found) = get("q=BILL");
    assert_eq!(names(&found), ["prod/billing", "staging/billing"]);
    assert_eq!(found["matched"], 2);
    let (_, env) = get("environment=prod&q=bill");
    assert_eq!(names(&env), ["prod/billing"]);
    let (_, attention) = get("attention=true");
    assert_eq!(names(&attention), ["prod/search"], "{attention}");
    assert_eq!(attention["matched"], 1);
    let (_, none) = get("attention=true&q=billing");
    assert_eq!(names(&none), Vec::<String>::new());
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "offset=-1",
        "attention=maybe",
    ] {
        let (code, body) = get(bad);
        assert_eq!(code, 400, "{bad}: {body}");
        let text = body.to_string();
        let field = bad.split('=').next().unwrap();
        assert!(text.contains(field), "{bad}: {body}");
    }
}

/// The adoption series' window: empty is the default hour (per minute), longer than 30 days is
/// cut to 30 days (per hour, from the store), zero, junk and unknown parameters are a 400.
#[test]
fn adoption_window_defaults_caps_and_refusals() {
    let s = harness::start();
    assert_eq!(s.cli(&["env", "create", "prod"]).code, 0);
    s.consumer("prod/billing", &[]);
    let http = harness::http();
    let get = |query: &str| {
        let r = http
            .get(format!(
                "{}/v1/consumers/prod/billing/adoption?{query}",
                s.url()
            ))
            .bearer_auth(s.token())
            .send()
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json::<serde_json::Value>().unwrap())
    };
    let span_hours = |v: &serde_json::Value| {
        let at = |k: &str| {
            time::OffsetDateTime::parse(
                v[k].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        (at("to") - at("from")).whole_hours()
    };
    let (code, default) = get("window=");
    assert_eq!(code, 200, "{default}");
    assert_eq!(default["resolution"], "minute");
    assert_eq!(span_hours(&default), 1);
    let (code, long) = get("window=400d");
    assert_eq!(code, 200, "{long}");
    assert_eq!(long["resolution"], "hour");
    assert_eq!(span_hours(&long), 30 * 24);
    for bad in ["window=0s", "window=soon", "since=1h"] {
        let (code, body) = get(bad);
        assert_eq!(code, 400, "{bad}: {body}");
    }
}
