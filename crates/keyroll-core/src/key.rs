//! The API key format (SPEC §2): `kr_<env>_<kid>_<secret><check>`.
//!
//! Parsing is the first step of the hot path and runs before any lookup, so it rejects typos,
//! truncation and garbage offline: prefix, environment, length, separators, charset, then a CRC32
//! checksum. Only SHA-256 of the secret is ever kept; the plaintext exists once, in [`IssuedKey`].

use std::fmt;

use sha2::{Digest, Sha256};

use crate::base62;
use crate::names::{Environment, is_environment_name};

/// Length of a kid in base62 characters.
pub const KID_LEN: usize = 12;
/// Length of a secret in base62 characters (about 190 bits).
pub const SECRET_LEN: usize = 32;
/// Length of the checksum in base62 characters (62^6 > 2^32 holds a CRC32).
pub const CHECK_LEN: usize = 6;
/// The product prefix.
pub const PREFIX: &str = "kr_";
/// No key is longer than this (prefix, 16-char environment, kid, secret, check, separators).
pub const MAX_KEY_LEN: usize = PREFIX.len() + 16 + 1 + KID_LEN + 1 + SECRET_LEN + CHECK_LEN;

/// Where random bytes come from. The server passes the OS CSPRNG; tests pass a seeded source.
pub trait Entropy {
    /// Fills `dest` with random bytes, or says the source failed (a key is then not issued:
    /// a weak key is worse than none).
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyUnavailable>;
}

/// The random source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator is unavailable: {0}")]
pub struct EntropyUnavailable(pub String);

/// A key id: 12 base62 characters, public, unique in an installation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kid([u8; KID_LEN]);

impl Kid {
    /// Validates a kid given on its own (e.g. in an admin URL).
    pub fn parse(input: &str) -> Option<Kid> {
        let b: [u8; KID_LEN] = input.as_bytes().try_into().ok()?;
        base62::first_invalid(&b).is_none().then_some(Kid(b))
    }

    /// The raw bytes, always ASCII base62.
    pub fn as_bytes(&self) -> &[u8; KID_LEN] {
        &self.0
    }

    /// The kid as text.
    pub fn as_str(&self) -> &str {
        // Invariant: constructed only from base62 ASCII, so this never fails.
        std::str::from_utf8(&self.0).unwrap_or("????????????")
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kid({})", self.as_str())
    }
}

/// SHA-256 of a secret: what is stored and compared, never the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Hashes a secret.
    #[inline]
    pub fn of(secret: &[u8]) -> SecretHash {
        SecretHash(Sha256::digest(secret).into())
    }

    /// Compares in time independent of where the digests differ.
    #[inline]
    pub fn matches(&self, other: &SecretHash) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest of a 190-bit secret is not sensitive, but it is noise in debug output.
        f.write_str("SecretHash(..)")
    }
}

/// `fp_` + the first 8 bytes, hex, of SHA-256 of the whole presented string (SPEC §2).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 8]);

impl Fingerprint {
    /// Parses `fp_0123456789abcdef`.
    pub fn parse(input: &str) -> Option<Fingerprint> {
        let hex_part = input.strip_prefix("fp_")?;
        let mut out = [0u8; 8];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        Some(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fp_{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The fingerprint of anything presented as a key, garbage included.
pub fn fingerprint(presented: &[u8]) -> Fingerprint {
    let digest = Sha256::digest(presented);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    Fingerprint(out)
}

/// Why a string is not a well-formed key. `detail()` is safe to show to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedKey {
    /// Does not start with `kr_`.
    Prefix,
    /// The environment part is missing or does not follow the environment grammar.
    Environment,
    /// Too short or too long after the environment.
    Length {
        /// The length a key with this environment has.
        expected: usize,
        /// The length presented.
        actual: usize,
    },
    /// The `_` between kid and secret is missing.
    Separator,
    /// A byte outside base62 at this position.
    Charset {
        /// Zero-based byte offset in the presented string.
        position: usize,
    },
    /// The checksum does not match: a typo, or a truncated and padded key.
    Checksum,
}

impl MalformedKey {
    /// A stable short name for the part that failed (`prefix`, `length`, `charset`, `checksum`).
    pub fn part(&self) -> &'static str {
        match self {
            MalformedKey::Prefix => "prefix",
            MalformedKey::Environment => "environment",
            MalformedKey::Length { .. } => "length",
            MalformedKey::Separator => "separator",
            MalformedKey::Charset { .. } => "charset",
            MalformedKey::Checksum => "checksum",
        }
    }
}

impl fmt::Display for MalformedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MalformedKey::Prefix => f.write_str("bad prefix: a keyroll key starts with kr_"),
            MalformedKey::Environment => f.write_str(
                "bad environment part: expected kr_<env>_ with env matching [a-z][a-z0-9]{0,15}",
            ),
            MalformedKey::Length { expected, actual } => write!(
                f,
                "bad length: expected {expected} characters, got {actual} (truncated or padded?)"
            ),
            MalformedKey::Separator => {
                f.write_str("bad separator: expected _ after the 12-character kid")
            }
            MalformedKey::Charset { position } => write!(
                f,
                "bad charset: character at position {position} is not base62 (0-9A-Za-z)"
            ),
            MalformedKey::Checksum => f.write_str("bad checksum: the key was mistyped or altered"),
        }
    }
}

/// A well-formed key, borrowed from the presented string. The secret is only reachable
/// through [`ParsedKey::secret_hash`].
#[derive(Clone, Copy)]
pub struct ParsedKey<'a> {
    environment: &'a str,
    kid: Kid,
    secret: &'a [u8],
}

impl<'a> ParsedKey<'a> {
    /// The environment named in the prefix (already validated).
    pub fn environment(&self) -> &'a str {
        self.environment
    }

    /// The key id.
    pub fn kid(&self) -> Kid {
        self.kid
    }

    /// SHA-256 of the secret part.
    #[inline]
    pub fn secret_hash(&self) -> SecretHash {
        SecretHash::of(self.secret)
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("environment", &self.environment)
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn crc_symbols(body: &[u8]) -> [u8; CHECK_LEN] {
    base62::encode_fixed::<CHECK_LEN>(u64::from(crc32fast::hash(body)))
}

/// Parses a presented key. Never panics, whatever the bytes.
pub fn parse_key(presented: &[u8]) -> Result<ParsedKey<'_>, MalformedKey> {
    let rest = presented
        .strip_prefix(PREFIX.as_bytes())
        .ok_or(MalformedKey::Prefix)?;
    // The environment cannot contain `_`, so the first `_` ends it. Bound the search: a longer
    // environment is invalid anyway, and garbage input should not cost a full scan.
    let env_end = rest
        .iter()
        .take(17)
        .position(|&b| b == b'_')
        .ok_or(MalformedKey::Environment)?;
    let env = &rest[..env_end];
    if !is_environment_name(env) {
        return Err(MalformedKey::Environment);
    }
    let tail = &rest[env_end + 1..];
    let tail_len = KID_LEN + 1 + SECRET_LEN + CHECK_LEN;
    let head_len = PREFIX.len() + env_end + 1;
    if tail.len() != tail_len {
        return Err(MalformedKey::Length {
            expected: head_len + tail_len,
            actual: presented.len(),
        });
    }
    let (kid, tail) = tail.split_at(KID_LEN);
    if tail[0] != b'_' {
        return Err(MalformedKey::Separator);
    }
    let secret_and_check = &tail[1..];
    if let Some(i) = base62::first_invalid(kid) {
        return Err(MalformedKey::Charset {
            position: head_len + i,
        });
    }
    if let Some(i) = base62::first_invalid(secret_and_check) {
        return Err(MalformedKey::Charset {
            position: head_len + KID_LEN + 1 + i,
        });
    }
    let (secret, check) = secret_and_check.split_at(SECRET_LEN);
    let body = &presented[..presented.len() - CHECK_LEN];
    if crc_symbols(body) != check {
        return Err(MalformedKey::Checksum);
    }
    let mut kid_bytes = [0u8; KID_LEN];
    kid_bytes.copy_from_slice(kid);
    Ok(ParsedKey {
        // Checked above to be ASCII lowercase and digits.
        environment: std::str::from_utf8(env).map_err(|_| MalformedKey::Environment)?,
        kid: Kid(kid_bytes),
        secret,
    })
}

/// Assembles a key string from its parts, computing the checksum. For tools and tests that need
/// a well-formed key with chosen parts (e.g. a known kid with a wrong secret); the parts are not
/// validated here, [`parse_key`] does that.
pub fn assemble_key(environment: &str, kid: &str, secret: &str) -> String {
    let mut s = format!("{PREFIX}{environment}_{kid}_{secret}");
    let check = crc_symbols(s.as_bytes());
    s.extend(check.iter().map(|&b| char::from(b)));
    s
}

/// A freshly issued key: the only value that ever holds the plaintext.
pub struct IssuedKey {
    plaintext: String,
    /// Its key id.
    pub kid: Kid,
    /// SHA-256 of its secret, to be stored.
    pub secret_hash: SecretHash,
    /// Its fingerprint, to be stored so allowed decisions can report it without hashing again.
    pub fingerprint: Fingerprint,
}

impl IssuedKey {
    /// The plaintext key, to be shown exactly once.
    pub fn reveal(&self) -> &str {
        &self.plaintext
    }

    /// Consumes the key, returning the plaintext.
    pub fn into_plaintext(self) -> String {
        self.plaintext
    }
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("kid", &self.kid)
            .field("fingerprint", &self.fingerprint)
            .field("plaintext", &"<redacted>")
            .finish()
    }
}

/// `N` uniformly random base62 symbols (rejection sampling, no modulo bias).
pub fn random_base62<const N: usize>(
    entropy: &mut dyn Entropy,
) -> Result<[u8; N], EntropyUnavailable> {
    let mut out = [0u8; N];
    let mut filled = 0;
    let mut pool = [0u8; 64];
    while filled < N {
        entropy.fill(&mut pool)?;
        for &byte in &pool {
            if filled == N {
                break;
            }
            if let Some(sym) = base62::symbol_for_random_byte(byte) {
                out[filled] = sym;
                filled += 1;
            }
        }
    }
    Ok(out)
}

/// Issues a new key for `environment` from `entropy` (the OS CSPRNG in production).
pub fn issue_key(
    environment: &Environment,
    entropy: &mut dyn Entropy,
) -> Result<IssuedKey, EntropyUnavailable> {
    let kid: [u8; KID_LEN] = random_base62(entropy)?;
    let secret: [u8; SECRET_LEN] = random_base62(entropy)?;
    let mut plaintext = String::with_capacity(MAX_KEY_LEN);
    plaintext.push_str(PREFIX);
    plaintext.push_str(environment.as_str());
    plaintext.push('_');
    // Both arrays are base62 ASCII by construction.
    plaintext.extend(kid.iter().map(|&b| char::from(b)));
    plaintext.push('_');
    plaintext.extend(secret.iter().map(|&b| char::from(b)));
    let check = crc_symbols(plaintext.as_bytes());
    plaintext.extend(check.iter().map(|&b| char::from(b)));
    Ok(IssuedKey {
        kid: Kid(kid),
        secret_hash: SecretHash::of(&secret),
        fingerprint: fingerprint(plaintext.as_bytes()),
        plaintext,
    })
}

/// Where text holds something shaped like a keyroll key, for redaction (a key pasted into a URL
/// must never reach a log line): the run's start and the byte range of its secret part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyShapedRun {
    /// Where the run starts (at its `kr_`).
    pub start: usize,
    /// Where its secret (and checksum) part starts: what is kept before it names the key.
    pub secret_start: usize,
    /// Where the secret part ends (it may be empty).
    pub secret_end: usize,
}

/// Finds the key-shaped runs of `text`: [`PREFIX`], then two `_`-terminated runs of ASCII
/// letters and digits (the environment and the kid *as written*: deliberately looser than
/// [`parse_key`], so a mistyped, truncated or altered key is masked too), then the secret, the
/// ASCII alphanumerics that follow. Runs do not overlap; a `kr_` that does not start such a run
/// is skipped.
pub fn key_shaped_runs(text: &str) -> impl Iterator<Item = KeyShapedRun> + '_ {
    let bytes = text.as_bytes();
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(found) = text.get(from..).and_then(|rest| rest.find(PREFIX)) {
            let start = from + found;
            // `kr_` itself holds the first separator; the third one ends the kid.
            let mut separators = 0;
            let mut secret_start = None;
            for (i, &b) in bytes[start..].iter().enumerate() {
                if b == b'_' {
                    separators += 1;
                    if separators == 3 {
                        secret_start = Some(start + i + 1);
                        break;
                    }
                } else if !b.is_ascii_alphanumeric() {
                    break;
                }
            }
            let Some(secret_start) = secret_start else {
                from = start + PREFIX.len();
                continue;
            };
            let secret_end = secret_start
                + bytes[secret_start..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric())
                    .count();
            from = secret_end;
            return Some(KeyShapedRun {
                start,
                secret_start,
                secret_end,
            });
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A deterministic source for tests (xorshift); never used outside tests.
    pub(crate) struct TestEntropy(pub u64);
    impl Entropy for TestEntropy {
        fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyUnavailable> {
            for b in dest {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                *b = (self.0 >> 24) as u8;
            }
            Ok(())
        }
    }

    fn env(name: &str) -> Environment {
        Environment::parse(name).unwrap()
    }

    #[test]
    fn issued_key_has_the_documented_shape() {
        let key = issue_key(&env("prod"), &mut TestEntropy(7)).unwrap();
        let s = key.reveal();
        assert!(s.starts_with("kr_prod_"));
        assert_eq!(s.len(), 3 + 4 + 1 + 12 + 1 + 32 + 6);
        assert_eq!(&s[8..20], key.kid.as_str());
        assert!(!s[8..].contains('-'));
        let parsed = parse_key(s.as_bytes()).unwrap();
        assert_eq!(parsed.kid(), key.kid);
        assert_eq!(parsed.environment(), "prod");
        assert_eq!(parsed.secret_hash(), key.secret_hash);
        assert_eq!(fingerprint(s.as_bytes()), key.fingerprint);
        assert!(!format!("{key:?}").contains(&s[21..]));
    }

    #[test]
    fn each_malformation_is_named() {
        let key = issue_key(&env("prod"), &mut TestEntropy(11)).unwrap();
        let s = key.reveal();
        assert_eq!(parse_key(b"").unwrap_err(), MalformedKey::Prefix);
        assert_eq!(parse_key(b"sk_live_abc").unwrap_err(), MalformedKey::Prefix);
        assert_eq!(
            parse_key(b"kr_Prod_x").unwrap_err(),
            MalformedKey::Environment
        );
        assert_eq!(
            parse_key(b"kr_prodnounderscore").unwrap_err(),
            MalformedKey::Environment
        );
        assert_eq!(
            parse_key(&s.as_bytes()[..s.len() - 1]).unwrap_err(),
            MalformedKey::Length {
                expected: s.len(),
                actual: s.len() - 1
            }
        );
        let mut bad_sep = s.as_bytes().to_vec();
        bad_sep[20] = b'x';
        assert_eq!(parse_key(&bad_sep).unwrap_err(), MalformedKey::Separator);
        let mut bad_char = s.as_bytes().to_vec();
        bad_char[30] = b'!';
        assert_eq!(
            parse_key(&bad_char).unwrap_err(),
            MalformedKey::Charset { position: 30 }
        );
        let mut typo = s.as_bytes().to_vec();
        typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
        assert_eq!(parse_key(&typo).unwrap_err(), MalformedKey::Checksum);
        assert!(parse_key(&[0xFF; 300]).is_err());
    }

    #[test]
    fn fingerprint_format() {
        let fp = fingerprint(b"anything at all");
        let text = fp.to_string();
        assert_eq!(text.len(), 3 + 16);
        assert_eq!(Fingerprint::parse(&text), Some(fp));
    }

    proptest! {
        #[test]
        fn any_issued_key_parses_back_to_its_kid(seed in 1u64.., env_name in "[a-z][a-z0-9]{0,15}") {
            let key = issue_key(&env(&env_name), &mut TestEntropy(seed)).unwrap();
            let parsed = parse_key(key.reveal().as_bytes()).unwrap();
            prop_assert_eq!(parsed.kid(), key.kid);
            prop_assert_eq!(parsed.environment(), env_name.as_str());
        }

        #[test]
        fn any_single_character_change_is_malformed(seed in 1u64.., pos in 0usize..56, replacement in proptest::num::u8::ANY) {
            let key = issue_key(&env("prod"), &mut TestEntropy(seed)).unwrap();
            let mut bytes = key.reveal().as_bytes().to_vec();
            let pos = pos % bytes.len();
            prop_assume!(bytes[pos] != replacement);
            bytes[pos] = replacement;
            // CRC32 detects every single-byte error, so no change can yield another valid key.
            prop_assert!(parse_key(&bytes).is_err());
        }

        #[test]
        fn any_truncation_is_malformed(seed in 1u64.., cut in 0usize..56) {
            let key = issue_key(&env("prod"), &mut TestEntropy(seed)).unwrap();
            let s = key.reveal().as_bytes();
            let cut = cut % s.len();
            prop_assert!(parse_key(&s[..cut]).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_key(&bytes);
        }
    }

    #[test]
    fn key_shaped_runs_find_keys_as_written() {
        let key = issue_key(&env("prod"), &mut TestEntropy(3)).unwrap();
        let text = format!("a={} b=kr_x kr_Pr0d_typo_SECRET!", key.reveal());
        let runs: Vec<_> = key_shaped_runs(&text).collect();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(
            &text[runs[0].start..runs[0].secret_start],
            &key.reveal()[..21]
        );
        assert_eq!(
            &text[runs[0].secret_start..runs[0].secret_end],
            &key.reveal()[21..]
        );
        assert_eq!(&text[runs[1].secret_start..runs[1].secret_end], "SECRET");
        assert_eq!(key_shaped_runs("kr_ kr_x /plain").count(), 0);
    }
}
