//! Dashboard sessions: a browser logs in with an admin token once and then holds a random
//! session id in an HttpOnly cookie; every request it makes acts as that token.
//!
//! Kept in the store (`ui_sessions`, migration 0014) as SHA-256 of the session id and of the
//! session's CSRF token, so that several nodes on one PostgreSQL share sessions and a logout on
//! one node ends the session on all of them at once (a sealed cookie could not be ended without a
//! shared revocation list, which is the same table by another name). The token the session was
//! made from is re-read on every request (`http/auth.rs`): a revoked, expired or replaced token
//! ends its sessions at once.
//!
//! CSRF: a state-changing request authenticated by the cookie must carry the session's CSRF
//! token in `X-CSRF-Token` (double submit: the token is also in a cookie the page's script can
//! read, `SameSite=Strict` like the session's, and checked against the stored hash, not against
//! the cookie), and its `Origin` (or, without one, `Referer`) must name the host it was sent to.
//! A bearer-token request needs neither: a browser never adds an `Authorization` header by
//! itself.
//!
//! This module decides; `http/auth.rs` and `http/ui.rs` turn its answers into responses. The
//! clock and randomness are parameters.

use std::time::Duration;

use axum::http::{HeaderMap, Method, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyroll_core::{EntropyUnavailable, Timestamp, rfc3339};
use keyroll_store::{Store, StoreError, UiSession};
use sha2::{Digest, Sha256};

use crate::clock::Randomness;
use crate::config::UiSettings;

/// The HttpOnly cookie holding the session id.
pub const SESSION_COOKIE: &str = "keyroll_session";
/// The cookie the page's script reads the CSRF token from.
pub const CSRF_COOKIE: &str = "keyroll_csrf";
/// The header a state-changing request carries the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// `last_seen_at` is written at most this often per session: the idle limit is that coarse,
/// and a page that polls every few seconds does not write every few seconds.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// A request extension a TLS listener inserts: cookies it answers are marked `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct ServedOverTls;

/// A session just made: the two values for the browser (only here in plaintext) and the row.
pub struct NewSession {
    /// The session id for the HttpOnly cookie.
    pub id: String,
    /// The CSRF token for the script-readable cookie.
    pub csrf: String,
    /// What the store keeps.
    pub record: UiSession,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a cookie or header value.
pub fn hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn random_text(randomness: &Randomness) -> Result<String, EntropyUnavailable> {
    let mut bytes = [0u8; 32];
    randomness.fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A new session for `token_id` at `now`: 256-bit random id and CSRF token.
pub fn new_session(
    randomness: &Randomness,
    token_id: &str,
    now: Timestamp,
    settings: &UiSettings,
) -> Result<NewSession, EntropyUnavailable> {
    let id = random_text(randomness)?;
    let csrf = random_text(randomness)?;
    let record = UiSession {
        id_hash: hash(&id),
        token_id: token_id.to_owned(),
        csrf_hash: hash(&csrf),
        created_at: now,
        expires_at: now.saturating_add(settings.session_lifetime),
        last_seen_at: now,
    };
    Ok(NewSession { id, csrf, record })
}

/// Why a session does not authenticate a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRejection {
    /// The cookie is not a session id keyroll made.
    #[error("the session cookie is malformed; log in again at /ui/login")]
    Malformed,
    /// No such session: logged out, pruned, or never made.
    #[error("the session has ended (logged out or unknown); log in again at /ui/login")]
    Unknown,
    /// Past its absolute end.
    #[error("the session expired at {}; log in again at /ui/login", rfc3339(*.0))]
    Expired(Timestamp),
    /// No request for the idle limit.
    #[error("the session ended after {} without activity (last request at {}); log in again at /ui/login", humantime::format_duration(*.idle), rfc3339(*.since))]
    Idle {
        /// The last request seen.
        since: Timestamp,
        /// The idle limit.
        idle: Duration,
    },
    /// The request's `Origin`/`Referer` is not this host.
    #[error("cross-origin request refused: {0}")]
    CrossOrigin(String),
    /// A state-changing request without the session's CSRF token.
    #[error("{0}: send the session's CSRF token in the X-CSRF-Token header")]
    Csrf(&'static str),
}

impl SessionRejection {
    /// The stable code of the problem answer.
    pub fn code(&self) -> &'static str {
        match self {
            SessionRejection::Malformed | SessionRejection::Unknown => "session_invalid",
            SessionRejection::Expired(_) | SessionRejection::Idle { .. } => "session_expired",
            SessionRejection::CrossOrigin(_) => "cross_origin",
            SessionRejection::Csrf(_) => "csrf_invalid",
        }
    }

    /// Whether the caller is authenticated but the request is refused (403), rather than not
    /// authenticated at all (401).
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            SessionRejection::CrossOrigin(_) | SessionRejection::Csrf(_)
        )
    }
}

/// A session lookup failed: refused, or the store did not answer.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Refused.
    #[error(transparent)]
    Rejected(#[from] SessionRejection),
    /// The store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Methods that change nothing and so need no CSRF token.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The request's origin (`Origin`, else the origin of `Referer`) must be `http://HOST` or
/// `https://HOST` for the `Host` it was sent to. Browsers send `Origin` on every POST; a
/// request with neither is refused, not guessed at.
pub fn check_origin(headers: &HeaderMap) -> Result<(), SessionRejection> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| SessionRejection::CrossOrigin("the request has no Host".into()))?;
    let origin = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(o) => o.to_owned(),
        None => {
            let referer = headers
                .get(header::REFERER)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    SessionRejection::CrossOrigin("the request has no Origin or Referer".into())
                })?;
            origin_of(referer).to_owned()
        }
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    if authority.is_some_and(|a| a.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        Err(SessionRejection::CrossOrigin(format!(
            "origin {origin:?} is not this server ({host})"
        )))
    }
}

/// `scheme://authority` of a URL (the whole text when it has no path).
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find(['/', '?', '#']) {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Whether the session is still valid at `now` (absolute end, idle limit). Pure.
pub fn judge(session: &UiSession, now: Timestamp, idle: Duration) -> Result<(), SessionRejection> {
    if now >= session.expires_at {
        return Err(SessionRejection::Expired(session.expires_at));
    }
    if now >= session.last_seen_at.saturating_add(idle) {
        return Err(SessionRejection::Idle {
            since: session.last_seen_at,
            idle,
        });
    }
    Ok(())
}

/// Whether `presented` is the session's CSRF token (compares hashes in constant time).
pub fn csrf_matches(session: &UiSession, presented: &str) -> bool {
    let h = hash(presented);
    h.iter()
        .zip(session.csrf_hash.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The session a request's cookie names, checked for the request: valid at `now`, and for a
/// state-changing method from this origin with the CSRF token. An ended session is deleted.
pub async fn find(
    store: &dyn Store,
    method: &Method,
    headers: &HeaderMap,
    id: &str,
    now: Timestamp,
    idle: Duration,
) -> Result<UiSession, SessionError> {
    // 32 random bytes in base64url: anything else was not made here (and is not looked up).
    if id.len() != 43
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(SessionRejection::Malformed.into());
    }
    let id_hash = hash(id);
    let Some(session) = store.get_ui_session(&id_hash).await? else {
        return Err(SessionRejection::Unknown.into());
    };
    if let Err(ended) = judge(&session, now, idle) {
        store.delete_ui_session(&id_hash).await?;
        return Err(ended.into());
    }
    if !is_safe(method) {
        check_origin(headers)?;
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or(SessionRejection::Csrf("no CSRF token"))?;
        if !csrf_matches(&session, presented) {
            return Err(SessionRejection::Csrf("the CSRF token does not match the session").into());
        }
    }
    Ok(session)
}

/// Notes a request on the session (at most every [`TOUCH_EVERY`]). A failure to write it is
/// logged, not answered: the request itself was authenticated.
pub async fn note_activity(store: &dyn Store, session: &UiSession, now: Timestamp) {
    if now < session.last_seen_at.saturating_add(TOUCH_EVERY) {
        return;
    }
    if let Err(e) = store.touch_ui_session(&session.id_hash, now).await {
        tracing::warn!(event = "ui.session_touch_failed", error = %e, token_id = session.token_id.as_str(), "could not note a dashboard session's activity");
    }
}

/// The `Set-Cookie` values of a new session (`max_age` = its lifetime).
pub fn set_cookies(new: &NewSession, secure: bool, max_age: Duration) -> [String; 2] {
    let secure = if secure { "; Secure" } else { "" };
    let age = max_age.as_secs();
    [
        format!(
            "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{secure}",
            new.id
        ),
        format!(
            "{CSRF_COOKIE}={}; Path=/; SameSite=Strict; Max-Age={age}{secure}",
            new.csrf
        ),
    ]
}

/// The `Set-Cookie` values that remove both cookies (logout, an ended session).
pub fn clear_cookies(secure: bool) -> [String; 2] {
    let secure = if secure { "; Secure" } else { "" };
    [
        format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
        format!("{CSRF_COOKIE}=; Path=/; SameSite=Strict; Max-Age=0{secure}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn session(last_seen: i64, expires: i64) -> UiSession {
        UiSession {
            id_hash: [0; 32],
            token_id: "tok".into(),
            csrf_hash: hash("csrf-token"),
            created_at: Timestamp::from_unix_millis(0),
            expires_at: Timestamp::from_unix_millis(expires),
            last_seen_at: Timestamp::from_unix_millis(last_seen),
        }
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let idle = Duration::from_secs(60);
        let s = session(1_000, 100_000);
        assert_eq!(judge(&s, Timestamp::from_unix_millis(60_999), idle), Ok(()));
        assert!(matches!(
            judge(&s, Timestamp::from_unix_millis(61_000), idle),
            Err(SessionRejection::Idle { .. })
        ));
        let s = session(99_000, 100_000);
        assert_eq!(
            judge(&s, Timestamp::from_unix_millis(100_000), idle),
            Err(SessionRejection::Expired(Timestamp::from_unix_millis(
                100_000
            )))
        );
    }

    #[test]
    fn csrf_compares_hashes() {
        let s = session(0, 1);
        assert!(csrf_matches(&s, "csrf-token"));
        assert!(!csrf_matches(&s, "csrf-tokem"));
        assert!(!csrf_matches(&s, ""));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn origin_must_be_this_host() {
        let ok = headers(&[
            ("host", "127.0.0.1:7878"),
            ("origin", "http://127.0.0.1:7878"),
        ]);
        assert_eq!(check_origin(&ok), Ok(()));
        let referer = headers(&[
            ("host", "127.0.0.1:7878"),
            ("referer", "http://127.0.0.1:7878/ui/rotate?x=1"),
        ]);
        assert_eq!(check_origin(&referer), Ok(()));
        for bad in [
            headers(&[
                ("host", "127.0.0.1:7878"),
                ("origin", "http://evil.example"),
            ]),
            headers(&[("host", "127.0.0.1:7878"), ("origin", "null")]),
            headers(&[
                ("host", "127.0.0.1:7878"),
                ("origin", "http://127.0.0.1:7878.evil.example"),
            ]),
            headers(&[("host", "127.0.0.1:7878")]),
        ] {
            assert!(
                matches!(check_origin(&bad), Err(SessionRejection::CrossOrigin(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[
            ("cookie", "a=1; keyroll_session=abc"),
            ("cookie", "keyroll_csrf=def"),
        ]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, CSRF_COOKIE), Some("def"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
