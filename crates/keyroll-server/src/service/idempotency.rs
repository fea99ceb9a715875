//! `Idempotency-Key`: parsing with precise errors, the entropy rule, and the derivations that let
//! a replay show a lost key again while the database alone cannot.
//!
//! From the header value two unrelated keys are derived with HKDF-SHA256 (distinct `info`
//! strings): a lookup id, the only form of the header the store keeps, and a sealing key under
//! which the new plaintext key is kept (ChaCha20-Poly1305, random nonce, the lookup id and the
//! request fingerprint as associated data). Whoever holds the database has neither the header nor
//! the key; whoever retries with the header can open what the first answer showed. That is only
//! as strong as the header is unguessable, hence [`IdempotencyKey::weakness`].

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use keyroll_core::{IssuedKey, Timestamp, rfc3339};
use keyroll_store::{IdempotencyRecord, Store};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock::Randomness;
use crate::service::ServiceError;

/// Domain separation for the derivations (a change of scheme gets a new version).
const SALT: &[u8] = b"keyroll idempotency v1";
const INFO_LOOKUP: &[u8] = b"keyroll/idempotency/lookup";
const INFO_SEAL: &[u8] = b"keyroll/idempotency/seal";
const NONCE_LEN: usize = 12;

/// Longest accepted header value.
pub const MAX_LEN: usize = 255;
/// Least estimated entropy for a key to be sealed under the header.
pub const MIN_BITS: usize = 128;
/// Least number of distinct characters (catches `aaaa…` and short repeated patterns).
pub const MIN_DISTINCT: usize = 10;

/// The rule in words, for answers and docs.
pub const RULE: &str = "at least 32 hex digits (hyphens allowed, as in a UUIDv4) or 22 \
    base64url characters mixing upper and lower case, with at least 10 distinct characters";

/// A syntactically valid `Idempotency-Key` header value.
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl std::fmt::Debug for IdempotencyKey {
    // The value protects a sealed key: never in a log or an error.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdempotencyKey(<redacted>)")
    }
}

/// Why a header value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadIdempotencyKey {
    /// Empty or only whitespace (HTTP strips surrounding whitespace).
    #[error(
        "Idempotency-Key is empty; send 1 to {MAX_LEN} visible ASCII characters (a random UUIDv4 lets a replay show a lost key again) or leave the header out"
    )]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("Idempotency-Key is {0} bytes long; at most {MAX_LEN} visible ASCII characters")]
    TooLong(usize),
    /// A byte that is not visible ASCII (space, control, non-ASCII).
    #[error(
        "Idempotency-Key has a character that is not visible ASCII at byte {0}; use letters, digits and punctuation only (no spaces)"
    )]
    NotVisible(usize),
}

impl IdempotencyKey {
    /// Validates a raw header value.
    pub fn parse(raw: &[u8]) -> Result<IdempotencyKey, BadIdempotencyKey> {
        let trimmed = raw.trim_ascii();
        if trimmed.is_empty() {
            return Err(BadIdempotencyKey::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(BadIdempotencyKey::TooLong(raw.len()));
        }
        if let Some(i) = raw.iter().position(|b| !b.is_ascii_graphic()) {
            return Err(BadIdempotencyKey::NotVisible(i));
        }
        // All bytes are visible ASCII, so this is valid UTF-8.
        Ok(IdempotencyKey(String::from_utf8_lossy(raw).into_owned()))
    }

    /// Why this key is too weak to seal a secret under, or `None` when it qualifies: estimated
    /// entropy ≥ [`MIN_BITS`] (4 bits per hex digit when the value is hex with optional hyphens,
    /// else 6 bits per character when it is base64url mixing upper and lower case, else none), and ≥ [`MIN_DISTINCT`]
    /// distinct characters. An estimate, not a measurement: it refuses what is obviously
    /// guessable (names, dates, counters) and admits what random generators produce.
    pub fn weakness(&self) -> Option<String> {
        let s = self.0.as_bytes();
        let hex_digits = s.iter().filter(|b| b.is_ascii_hexdigit()).count();
        let all_hex = s.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-');
        let all_b64 = s
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        // Text people type is one case; random base64url mixes both (a random 22-character
        // value lacks one case with probability ≈ 2·(38/64)^22 ≈ 2·10⁻⁵).
        let mixed_case =
            s.iter().any(u8::is_ascii_uppercase) && s.iter().any(u8::is_ascii_lowercase);
        let bits = if all_hex {
            4 * hex_digits
        } else if all_b64 && mixed_case {
            6 * s.len()
        } else {
            0
        };
        let mut seen = [false; 128];
        for b in s {
            if *b != b'-' {
                seen[usize::from(*b & 0x7f)] = true;
            }
        }
        let distinct = seen.iter().filter(|x| **x).count();
        if bits >= MIN_BITS && distinct >= MIN_DISTINCT {
            return None;
        }
        let estimate = if bits == 0 {
            "not hex, and not base64url mixing upper and lower case".to_owned()
        } else {
            format!("about {bits} bits, {distinct} distinct characters")
        };
        Some(format!(
            "the Idempotency-Key is too guessable to protect a key with ({estimate}); a key is \
             kept for replays only under an Idempotency-Key of {RULE} (a random UUIDv4 \
             qualifies)"
        ))
    }

    /// The only form of the header the store keeps: hex of an HKDF output.
    pub fn lookup(&self) -> String {
        hex::encode(self.derive(INFO_LOOKUP))
    }

    fn derive(&self, info: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 255 × 32 limit: expand cannot fail.
        let _ = Hkdf::<Sha256>::new(Some(SALT), self.0.as_bytes()).expand(info, &mut out);
        out
    }

    fn aad(&self, request_hash: &str) -> Vec<u8> {
        let mut aad = self.lookup().into_bytes();
        aad.push(b'\n');
        aad.extend_from_slice(request_hash.as_bytes());
        aad
    }

    /// Seals `secret` for a replay of the request `request_hash`: nonce ‖ ciphertext.
    pub fn seal(
        &self,
        request_hash: &str,
        secret: &str,
        randomness: &Randomness,
    ) -> Result<Vec<u8>, SealError> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.derive(INFO_SEAL)));
        let mut nonce = [0u8; NONCE_LEN];
        randomness.fill(&mut nonce).map_err(|_| SealError)?;
        let aad = self.aad(request_hash);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SealError)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Opens what [`IdempotencyKey::seal`] sealed for the same request.
    pub fn open(&self, request_hash: &str, sealed: &[u8]) -> Result<String, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.derive(INFO_SEAL)));
        let aad = self.aad(request_hash);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError)?;
        String::from_utf8(plain).map_err(|_| SealError)
    }
}

/// Sealing or opening failed (no randomness, or a ciphertext that does not open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the sealed key could not be sealed or opened")]
pub struct SealError;

/// A request's `Idempotency-Key` and its fingerprint: method, path and the SHA-256 of the body
/// as canonical JSON. The same key with another fingerprint is refused.
#[derive(Debug, Clone)]
pub struct Idempotency {
    key: IdempotencyKey,
    fingerprint: String,
}

/// An earlier answer, given again.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The status it was answered with.
    pub status: u16,
    /// The answer, with `"replayed": true`, and the key again when it could be kept.
    pub body: Value,
}

impl Idempotency {
    /// The key of a request to `method path` whose canonical body hashes to `body_hash`.
    pub fn new(key: IdempotencyKey, method: &str, path: &str, body_hash: &[u8; 32]) -> Idempotency {
        let mut h = Sha256::new();
        h.update(method);
        h.update(b" ");
        h.update(path);
        h.update(b"\n");
        h.update(body_hash);
        Idempotency {
            key,
            fingerprint: hex::encode(h.finalize()),
        }
    }

    /// What to remember: the answer without its key, and the key sealed under the header when
    /// the header is strong enough to protect it.
    pub fn record(
        &self,
        status: u16,
        public: &Value,
        at: Timestamp,
        issued: Option<&IssuedKey>,
        randomness: &Randomness,
        request_id: &str,
    ) -> IdempotencyRecord {
        let sealed_key = issued
            .filter(|_| self.key.weakness().is_none())
            .and_then(|k| match self.key.seal(&self.fingerprint, k.reveal(), randomness) {
                Ok(sealed) => Some(sealed),
                Err(e) => {
                    // The change still happens; only a replay cannot show the key.
                    tracing::warn!(event = "idempotency.seal_failed", error = %e, request_id, "cannot keep the new key for replays");
                    None
                }
            });
        IdempotencyRecord {
            key: self.key.lookup(),
            request_hash: self.fingerprint.clone(),
            status,
            response: public.to_string(),
            created_at: at,
            sealed_key,
        }
    }

    /// The earlier answer, if this request repeats one; with its key again when it was sealed
    /// and is still inside the replay window, else with `key_unavailable` saying why not.
    pub async fn replay(
        &self,
        store: &dyn Store,
        now: Timestamp,
    ) -> Result<Option<Replayed>, ServiceError> {
        let Some(record) = store.find_idempotency(&self.key.lookup()).await? else {
            return Ok(None);
        };
        if record.request_hash != self.fingerprint {
            return Err(ServiceError::IdempotencyKeyReused {
                first_used: record.created_at,
            });
        }
        let mut body: Value = serde_json::from_str(&record.response).unwrap_or(Value::Null);
        if let Some(obj) = body.as_object_mut() {
            obj.insert("replayed".into(), Value::Bool(true));
            if obj.contains_key("key") {
                match self.reopen(&record, now) {
                    Ok(plain) => {
                        obj.insert("key".into(), Value::String(plain));
                    }
                    Err(why) => {
                        obj.insert("key".into(), Value::Null);
                        obj.insert("key_unavailable".into(), Value::String(why));
                    }
                }
            }
        }
        Ok(Some(Replayed {
            status: record.status,
            body,
        }))
    }

    /// The key a remembered answer showed, or why it cannot be shown again.
    fn reopen(&self, record: &IdempotencyRecord, at: Timestamp) -> Result<String, String> {
        if let Some(why) = self.key.weakness() {
            return Err(format!("the key is not shown again: {why}"));
        }
        let window = keyroll_store::IDEMPOTENT_KEY_WINDOW;
        if at.duration_since(record.created_at) > window {
            return Err(format!(
                "the key is not shown again: it is kept for replays for {} only, and this \
                 request was first answered at {}",
                keyroll_core::format_duration(window),
                rfc3339(record.created_at)
            ));
        }
        let Some(sealed) = &record.sealed_key else {
            return Err("the key is not shown again: it was not kept for this request".into());
        };
        self.key
            .open(&self.fingerprint, sealed)
            .map_err(|_| "the key is not shown again: the kept copy could not be opened".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> IdempotencyKey {
        IdempotencyKey::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn bad_header_values_are_refused_precisely() {
        assert_eq!(IdempotencyKey::parse(b""), Err(BadIdempotencyKey::Empty));
        assert_eq!(IdempotencyKey::parse(b"   "), Err(BadIdempotencyKey::Empty));
        assert_eq!(
            IdempotencyKey::parse(&[b'a'; 256]),
            Err(BadIdempotencyKey::TooLong(256))
        );
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_ok());
        assert_eq!(
            IdempotencyKey::parse(b"two words"),
            Err(BadIdempotencyKey::NotVisible(3))
        );
        assert_eq!(
            IdempotencyKey::parse("caf\u{e9}".as_bytes()),
            Err(BadIdempotencyKey::NotVisible(3))
        );
        assert_eq!(
            IdempotencyKey::parse(b"a\tb"),
            Err(BadIdempotencyKey::NotVisible(1))
        );
    }

    #[test]
    fn entropy_rule_admits_random_ids_and_refuses_guessable_ones() {
        for strong in [
            "3f2b9c1e-7a4d-4e8b-9c2f-5a6b7c8d9e0f", // UUIDv4
            "3F2B9C1E7A4D4E8B9C2F5A6B7C8D9E0F",     // 32 hex digits
            "q7R2kLm9ZpX4vB8nW3cY6a",               // 22 base64url
            "Zk3_9-aQw7Lm2pX8vB4nR1",               // base64url with - and _
        ] {
            assert_eq!(key(strong).weakness(), None, "{strong}");
        }
        for weak in [
            "retry-1",
            "rotate-billing-2026-01-01-attempt", // words: one case only
            "3f2b9c1e-7a4d-4e8b-9c2f",           // 20 hex digits: 80 bits
            "q7R2kLm9ZpX4vB8nW3cY6",             // 21 base64url: 126 bits
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", // one character
            "abababababababababababababababab",  // two characters
            "my-key:3f2b9c1e7a4d4e8b9c2f5a6b7c8d9e0f", // outside both alphabets
            "0000-0000-0000-0000-0000-0000-0000-0000",
        ] {
            let why = key(weak).weakness();
            assert!(why.is_some(), "{weak} should be weak");
            assert!(!why.unwrap_or_default().contains(weak), "never echoed");
        }
    }

    #[test]
    fn seal_opens_only_with_the_same_key_and_request() {
        let k = key("3f2b9c1e-7a4d-4e8b-9c2f-5a6b7c8d9e0f");
        let other = key("4f2b9c1e-7a4d-4e8b-9c2f-5a6b7c8d9e0f");
        let secret = "kr_prod_secretsecretsecret";
        let sealed = k.seal("req-a", secret, &Randomness::os()).unwrap();
        assert!(
            !sealed.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "ciphertext is not the plaintext"
        );
        assert_eq!(k.open("req-a", &sealed).unwrap(), secret);
        assert_eq!(other.open("req-a", &sealed), Err(SealError));
        assert_eq!(
            k.open("req-b", &sealed),
            Err(SealError),
            "bound to the request"
        );
        let mut tampered = sealed.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert_eq!(k.open("req-a", &tampered), Err(SealError));
        assert_eq!(k.open("req-a", &sealed[..5]), Err(SealError));
        assert_ne!(
            k.seal("req-a", secret, &Randomness::os()).unwrap(),
            sealed,
            "fresh nonce"
        );
    }

    #[test]
    fn lookup_is_neither_the_header_nor_the_sealing_key() {
        let header = "3f2b9c1e-7a4d-4e8b-9c2f-5a6b7c8d9e0f";
        let k = key(header);
        let lookup = k.lookup();
        assert_eq!(lookup.len(), 64);
        assert_eq!(lookup, key(header).lookup(), "stable");
        assert_ne!(lookup, key("other-header-value-123456").lookup());
        assert!(!lookup.contains(header));
        assert_ne!(lookup, hex::encode(k.derive(INFO_SEAL)));
        assert!(!format!("{k:?}").contains(header));
    }
}
