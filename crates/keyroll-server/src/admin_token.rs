//! Admin API tokens: `kra_<id>_<secret>`. The id is public (it is the audit actor); only
//! SHA-256 of the secret is stored, as for API keys.

use keyroll_core::{Entropy, EntropyUnavailable, SecretHash, Timestamp, random_base62};
use keyroll_store::AdminTokenRecord;

/// Every scope an admin token can carry.
pub const SCOPES: [&str; 6] = [
    "admin",
    "environments:write",
    "consumers:read",
    "consumers:write",
    "keys:write",
    "verify",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::OsEntropy;

    #[test]
    fn generated_tokens_parse_and_match() {
        let (plain, rec) = generate("t", &["admin"], Timestamp::EPOCH, &mut OsEntropy).unwrap();
        let p = parse(&plain).unwrap();
        assert_eq!(p.id, rec.id);
        assert!(p.secret_hash.matches(&rec.secret_hash));
        assert!(parse("kra_short_x").is_none());
        assert!(parse(&plain.replace("kra_", "krx_")).is_none());
    }
}
