//! Admin API tokens: `kra_<id>_<secret>`. The id is public (it is the audit actor); only
//! SHA-256 of the secret is stored, as for API keys.

use keyroll_core::{Entropy, EntropyUnavailable, SecretHash, Timestamp, random_base62};
use keyroll_store::{AdminTokenEntry, AdminTokenRecord};

/// Every scope an admin token can carry.
pub const SCOPES: [&str; 16] = [
    "admin",
    "environments:write",
    "consumers:read",
    "consumers:write",
    "keys:read",
    "keys:write",
    "verify",
    "tokens:read",
    "tokens:write",
    "audit:read",
    "webhooks:read",
    "webhooks:write",
    "ca:read",
    "ca:write",
    "certs:read",
    "certs:write",
];

/// A parsed presented token.
#[derive(Debug)]
pub struct PresentedToken<'a> {
    /// Public id.
    pub id: &'a str,
    /// SHA-256 of the secret.
    pub secret_hash: SecretHash,
}

/// Parses `kra_<12 base62>_<32 base62>`; `None` if it is not shaped like one.
pub fn parse(token: &str) -> Option<PresentedToken<'_>> {
    let rest = token.strip_prefix("kra_")?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == 12
        && secret.len() == 32
        && keyroll_core::base62::first_invalid(id.as_bytes()).is_none()
        && keyroll_core::base62::first_invalid(secret.as_bytes()).is_none();
    ok.then(|| PresentedToken {
        id,
        secret_hash: SecretHash::of(secret.as_bytes()),
    })
}

/// Makes a new token: the plaintext (shown once) and the record to store.
pub fn generate(
    name: &str,
    scopes: &[&str],
    now: Timestamp,
    entropy: &mut dyn Entropy,
) -> Result<(String, AdminTokenRecord), EntropyUnavailable> {
    let id: [u8; 12] = random_base62(entropy)?;
    let secret: [u8; 32] = random_base62(entropy)?;
    let id = String::from_utf8_lossy(&id).into_owned();
    let secret_text = String::from_utf8_lossy(&secret);
    let plaintext = format!("kra_{id}_{secret_text}");
    let record = AdminTokenRecord {
        id,
        secret_hash: SecretHash::of(&secret),
        name: name.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        created_at: now,
    };
    Ok((plaintext, record))
}

/// Why an `Authorization` header does not carry a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    /// Nothing but whitespace.
    #[error("Authorization header is empty")]
    Empty,
    /// Another scheme (`Basic`, …).
    #[error("Authorization scheme is not Bearer")]
    NotBearer,
    /// `Bearer` without a token.
    #[error("Authorization: Bearer carries no token")]
    NoToken,
    /// More than one word after the scheme.
    #[error("Authorization: Bearer must be followed by exactly one token")]
    ExtraWords,
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched
/// case-insensitively (RFC 9110 §11.1) and any run of spaces or tabs may surround the parts.
pub fn bearer(header: &str) -> Result<&str, AuthorizationError> {
    let mut words = header.split([' ', '\t']).filter(|w| !w.is_empty());
    let scheme = words.next().ok_or(AuthorizationError::Empty)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthorizationError::NotBearer);
    }
    let token = words.next().ok_or(AuthorizationError::NoToken)?;
    if words.next().is_some() {
        return Err(AuthorizationError::ExtraWords);
    }
    Ok(token)
}

/// Whether a token holding `held` may do what `scope` allows: it holds the scope, or `admin`,
/// or a scope that includes it (`consumers:read` shows everything `keys:read` does,
/// `tokens:write` includes listing tokens).
pub fn grants(held: &[String], scope: &str) -> bool {
    let implied_by: &[&str] = match scope {
        "keys:read" => &["consumers:read"],
        "tokens:read" => &["tokens:write"],
        "webhooks:read" => &["webhooks:write"],
        "ca:read" => &["ca:write"],
        "certs:read" => &["certs:write"],
        _ => &[],
    };
    held.iter()
        .any(|h| h == scope || h == "admin" || implied_by.contains(&h.as_str()))
}

/// The first of `wanted` that `held` does not grant: a token may only give what it has.
pub fn first_not_granted<'a>(held: &[String], wanted: &'a [String]) -> Option<&'a str> {
    wanted.iter().map(String::as_str).find(|w| !grants(held, w))
}

/// Where a stored token stands at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    /// It works.
    Valid,
    /// It works until `until` (the end of a rotation's overlap), then `by` alone does.
    Overlap {
        /// The replacement.
        by: String,
        /// The end of the overlap.
        until: Timestamp,
    },
    /// Revoked at `at`.
    Revoked {
        /// When.
        at: Timestamp,
        /// Why.
        reason: Option<String>,
    },
    /// Its `expires_at` passed.
    Expired {
        /// When it expired.
        at: Timestamp,
    },
    /// Replaced by `by`, whose overlap ended at `at`.
    Replaced {
        /// The replacement.
        by: String,
        /// The end of the overlap.
        at: Timestamp,
    },
}

impl TokenState {
    /// The state of `t` at `now`. Revocation wins over everything, then whichever of expiry
    /// and the end of an overlap came first.
    pub fn of(t: &AdminTokenEntry, now: Timestamp) -> TokenState {
        if let Some(at) = t.revoked_at {
            return TokenState::Revoked {
                at,
                reason: t.revoke_reason.clone(),
            };
        }
        let expired = t.expires_at.filter(|e| *e <= now);
        let replaced = match (&t.replaced_by, t.retires_at) {
            (Some(by), Some(at)) if at <= now => Some((by.clone(), at)),
            _ => None,
        };
        match (expired, replaced) {
            (Some(e), Some((by, r))) if r <= e => TokenState::Replaced { by, at: r },
            (Some(at), _) => TokenState::Expired { at },
            (None, Some((by, at))) => TokenState::Replaced { by, at },
            (None, None) => match (&t.replaced_by, t.retires_at) {
                (Some(by), Some(until)) => TokenState::Overlap {
                    by: by.clone(),
                    until,
                },
                _ => TokenState::Valid,
            },
        }
    }

    /// Whether requests with the token are accepted.
    pub fn works(&self) -> bool {
        matches!(self, TokenState::Valid | TokenState::Overlap { .. })
    }

    /// `valid`, `overlap`, `revoked`, `expired`, `replaced`: for lists and logs.
    pub fn name(&self) -> &'static str {
        match self {
            TokenState::Valid => "valid",
            TokenState::Overlap { .. } => "overlap",
            TokenState::Revoked { .. } => "revoked",
            TokenState::Expired { .. } => "expired",
            TokenState::Replaced { .. } => "replaced",
        }
    }
}

/// What a new token starts with besides its name and scopes.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    /// A label for people.
    pub name: &'a str,
    /// Its scopes.
    pub scopes: &'a [String],
    /// The token that creates it (the audit actor).
    pub created_by: &'a str,
    /// When it stops working by itself.
    pub expires_at: Option<Timestamp>,
}

/// Makes a token with a lifecycle: the plaintext (shown once) and the entry to store.
pub fn generate_entry(
    new: &NewToken<'_>,
    now: Timestamp,
    entropy: &mut dyn Entropy,
) -> Result<(String, AdminTokenEntry), EntropyUnavailable> {
    let scopes: Vec<&str> = new.scopes.iter().map(String::as_str).collect();
    let (plaintext, token) = generate(new.name, &scopes, now, entropy)?;
    Ok((
        plaintext,
        AdminTokenEntry {
            token,
            created_by: Some(new.created_by.to_owned()),
            expires_at: new.expires_at,
            revoked_at: None,
            revoke_reason: None,
            replaced_by: None,
            retires_at: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Randomness;

    #[test]
    fn generated_tokens_parse_and_match() {
        let (plain, rec) = generate(
            "t",
            &["admin"],
            Timestamp::EPOCH,
            &mut Randomness::os().entropy(),
        )
        .unwrap();
        let p = parse(&plain).unwrap();
        assert_eq!(p.id, rec.id);
        assert!(p.secret_hash.matches(&rec.secret_hash));
        assert!(parse("kra_short_x").is_none());
        assert!(parse(&plain.replace("kra_", "krx_")).is_none());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_whitespace_tolerant() {
        for header in [
            "Bearer tok",
            "bearer tok",
            "BEARER tok",
            "BeArEr tok",
            "Bearer   tok",
            "  Bearer\ttok  ",
            "Bearer tok ",
        ] {
            assert_eq!(bearer(header), Ok("tok"), "{header:?}");
        }
        assert_eq!(bearer(""), Err(AuthorizationError::Empty));
        assert_eq!(bearer("   "), Err(AuthorizationError::Empty));
        assert_eq!(
            bearer("Basic dXNlcjpwdw=="),
            Err(AuthorizationError::NotBearer)
        );
        assert_eq!(bearer("Bearertok"), Err(AuthorizationError::NotBearer));
        assert_eq!(bearer("Bearer"), Err(AuthorizationError::NoToken));
        assert_eq!(bearer("Bearer   "), Err(AuthorizationError::NoToken));
        assert_eq!(bearer("Bearer a b"), Err(AuthorizationError::ExtraWords));
    }

    fn held(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn grants_and_escalation() {
        assert!(grants(&held(&["admin"]), "tokens:write"));
        assert!(grants(&held(&["consumers:read"]), "keys:read"));
        assert!(!grants(&held(&["keys:read"]), "consumers:read"));
        assert!(grants(&held(&["tokens:write"]), "tokens:read"));
        assert!(!grants(&held(&["tokens:read"]), "tokens:write"));
        assert!(!grants(&held(&["tokens:write"]), "admin"));
        assert!(grants(&held(&["ca:write"]), "ca:read"));
        assert!(!grants(&held(&["ca:read"]), "ca:write"));
        assert!(grants(&held(&["certs:write"]), "certs:read"));
        assert!(!grants(&held(&["certs:write"]), "ca:write"));
        assert!(grants(&held(&["admin"]), "certs:write"));
        let writer = held(&["tokens:write", "keys:read"]);
        assert_eq!(first_not_granted(&writer, &held(&["keys:read"])), None);
        assert_eq!(
            first_not_granted(&writer, &held(&["keys:read", "admin"])),
            Some("admin")
        );
        assert_eq!(
            first_not_granted(&writer, &held(&["consumers:write"])),
            Some("consumers:write")
        );
        assert_eq!(
            first_not_granted(&held(&["admin"]), &held(&["admin"])),
            None
        );
    }

    #[test]
    fn token_states() {
        let (_, mut t) = generate_entry(
            &NewToken {
                name: "t",
                scopes: &held(&["verify"]),
                created_by: "system",
                expires_at: Some(Timestamp::from_unix_millis(10_000)),
            },
            Timestamp::EPOCH,
            &mut Randomness::os().entropy(),
        )
        .unwrap();
        let at = Timestamp::from_unix_millis;
        assert_eq!(TokenState::of(&t, at(9_999)), TokenState::Valid);
        assert_eq!(
            TokenState::of(&t, at(10_000)),
            TokenState::Expired { at: at(10_000) }
        );
        t.replaced_by = Some("next".into());
        t.retires_at = Some(at(5_000));
        assert!(TokenState::of(&t, at(4_999)).works());
        assert_eq!(TokenState::of(&t, at(4_999)).name(), "overlap");
        assert_eq!(
            TokenState::of(&t, at(20_000)),
            TokenState::Replaced {
                by: "next".into(),
                at: at(5_000)
            }
        );
        t.revoked_at = Some(at(1_000));
        assert_eq!(TokenState::of(&t, at(1_000)).name(), "revoked");
        assert!(!TokenState::of(&t, at(1_000)).works());
    }
}
