//! Request ids (SPEC §4: every request gets one, in its answer and its log line): the caller's
//! `X-Request-Id` when sane, else a new one. A leaf module, so the listener, which answers some
//! requests before any handler, and the service layer, whose background writes need one too,
//! name them without importing the HTTP layer.

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

/// `rq_` and 16 random hex digits. Not a secret (it is echoed and logged), so a fast generator
/// is enough; it only has to tell requests apart in logs.
pub fn new_request_id() -> String {
    format!("rq_{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_caller_id_is_kept_and_anything_else_replaced() {
        let id = new_request_id();
        assert_eq!(id.len(), 19);
        assert!(id.starts_with("rq_") && id[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_request_id());
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "req-42".parse().unwrap());
        assert_eq!(request_id_from(&h), "req-42");
        h.insert("x-request-id", "has space".parse().unwrap());
        assert!(request_id_from(&h).starts_with("rq_"));
    }
}
