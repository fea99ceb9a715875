//! How decision codes (SPEC §4) are answered over HTTP: the status, the problem+json title and
//! the RFC 6750 `WWW-Authenticate` error. The HTTP layer's knowledge, not the core's: the core
//! names codes, and an mTLS or gRPC edge would map them its own way.

use axum::http::StatusCode;
use keyroll_core::DecisionCode;

/// The HTTP status forward-auth answers with: 200 allowed, 403 insufficient scope, else 401
/// (gateways understand only 2xx/401/403 from an auth service).
pub fn status(code: DecisionCode) -> StatusCode {
    match code {
        DecisionCode::Valid | DecisionCode::ValidDeprecated => StatusCode::OK,
        DecisionCode::InsufficientScope => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    }
}

/// The RFC 6750 `error` of the `WWW-Authenticate` challenge, if there is one.
pub fn bearer_error(code: DecisionCode) -> Option<&'static str> {
    match code {
        DecisionCode::Valid | DecisionCode::ValidDeprecated => None,
        // RFC 6750 §3.1: a request with no credential gets a challenge without an error.
        DecisionCode::MissingCredential => None,
        DecisionCode::MalformedCredential | DecisionCode::MalformedRequest => {
            Some("invalid_request")
        }
        DecisionCode::InsufficientScope => Some("insufficient_scope"),
        _ => Some("invalid_token"),
    }
}

/// A short human title for problem+json.
pub fn title(code: DecisionCode) -> &'static str {
    match code {
        DecisionCode::Valid => "Valid key",
        DecisionCode::ValidDeprecated => "Valid key, retiring",
        DecisionCode::MissingCredential => "Missing credential",
        DecisionCode::MalformedCredential => "Malformed credential",
        DecisionCode::WrongEnvironment => "Key for another environment",
        DecisionCode::UnknownKey | DecisionCode::InvalidSecret => "Invalid key",
        DecisionCode::KeyRetired => "Key retired",
        DecisionCode::KeyRevoked => "Key revoked",
        DecisionCode::KeyExpired => "Key expired",
        DecisionCode::ConsumerDisabled => "Consumer disabled",
        DecisionCode::InsufficientScope => "Insufficient scope",
        DecisionCode::MalformedRequest => "Malformed request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_challenges() {
        assert_eq!(status(DecisionCode::InsufficientScope).as_u16(), 403);
        assert_eq!(status(DecisionCode::KeyRetired).as_u16(), 401);
        assert_eq!(status(DecisionCode::MalformedRequest).as_u16(), 401);
        for code in DecisionCode::ALL {
            assert_eq!(status(code) == StatusCode::OK, code.allowed(), "{code:?}");
            assert_eq!(
                bearer_error(code).is_none() && !code.allowed(),
                code == DecisionCode::MissingCredential,
                "{code:?}"
            );
        }
        assert_eq!(
            bearer_error(DecisionCode::MalformedRequest),
            Some("invalid_request")
        );
        assert_eq!(
            title(DecisionCode::UnknownKey),
            title(DecisionCode::InvalidSecret)
        );
    }
}
