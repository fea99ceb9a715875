//! Request ids (SPEC §4: every request gets one, in its answer and its log line): the caller's
//! `X-Request-Id` when sane, else a new one. A leaf module, so the listener, which answers some
//! requests before any handler, names them without importing the HTTP layer.

use axum::http::HeaderMap;

/// A request id: the caller's `X-Request-Id` when it is sane (1–128 visible ASCII characters),
/// else a new random one.
pub fn request_id_from(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id")
        && let Ok(s) = v.to_str()
        && !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_graphic())
    {
        return s.to_owned();
    }
    new_request_id()
}

/// `rq_` and 16 random hex digits. Not a secret, so a fast generator is enough.
pub fn new_request_id() -> String {
    format!("rq_{:016x}", fastrand::u64(..))
}
