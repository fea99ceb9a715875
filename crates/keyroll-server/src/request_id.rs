//! Request ids (SPEC §4: every request gets one, in its answer and its log line): the caller's
//! `X-Request-Id` when sane, else a new one. A leaf module, so the listener, which answers some
//! requests before any handler, and the service layer, whose background writes need one too,
//! name them without importing the HTTP layer.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `rq_` and 16 hex digits.
const NEW_LEN: usize = 3 + 16;

/// 1–128 visible ASCII characters: what a caller's id must be to be kept.
fn sane(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic)
}

/// A new id, on the stack. Not a secret, so a fast generator is enough.
fn generate() -> [u8; NEW_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = *b"rq_0000000000000000";
    let n = fastrand::u64(..);
    for (i, b) in out[3..].iter_mut().enumerate() {
        *b = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// A request id: the caller's `X-Request-Id` when it is sane (1–128 visible ASCII characters),
/// else a new random one.
pub fn request_id_from(headers: &HeaderMap) -> String {
    EdgeRequestId::of(headers).as_str().to_owned()
}

/// `rq_` and 16 random hex digits.
pub fn new_request_id() -> String {
    EdgeRequestId::New(generate()).as_str().to_owned()
}

/// The request id of a hot-path request, without building a `String`: the caller's header
/// value, borrowed, or a new id on the stack. The answer's header is made from it once.
#[derive(Debug, Clone)]
pub enum EdgeRequestId<'h> {
    /// The caller's sane `X-Request-Id`.
    Given(&'h HeaderValue),
    /// A new id.
    New([u8; NEW_LEN]),
}

impl<'h> EdgeRequestId<'h> {
    /// The caller's id when sane, else a new one.
    pub fn of(headers: &'h HeaderMap) -> EdgeRequestId<'h> {
        match headers.get(&X_REQUEST_ID) {
            Some(v) if sane(v.as_bytes()) => EdgeRequestId::Given(v),
            _ => EdgeRequestId::New(generate()),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        let bytes = match self {
            EdgeRequestId::Given(v) => v.as_bytes(),
            EdgeRequestId::New(b) => b,
        };
        // Both are visible ASCII (checked, or generated).
        std::str::from_utf8(bytes).unwrap_or("")
    }

    /// The value of the answer's `X-Request-Id` header: the caller's value shared, not copied.
    pub fn header_value(&self) -> Option<HeaderValue> {
        match self {
            EdgeRequestId::Given(v) => Some((*v).clone()),
            EdgeRequestId::New(b) => HeaderValue::from_bytes(b).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_when_sane_else_generated() {
        let mut h = HeaderMap::new();
        let new = EdgeRequestId::of(&h);
        let text = new.as_str().to_owned();
        assert!(text.starts_with("rq_") && text.len() == NEW_LEN, "{text}");
        assert!(text[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(text, EdgeRequestId::of(&h).as_str());
        assert_eq!(new.header_value().unwrap(), text.as_str());
        h.insert("x-request-id", HeaderValue::from_static("req-1"));
        assert_eq!(EdgeRequestId::of(&h).as_str(), "req-1");
        assert_eq!(request_id_from(&h), "req-1");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert!(request_id_from(&h).starts_with("rq_"));
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert!(request_id_from(&h).starts_with("rq_"));
    }
}
