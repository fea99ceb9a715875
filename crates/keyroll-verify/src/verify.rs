//! The verification hot path: presented key → parse → index lookup → decision, with the facts
//! the log line, the metrics and the response are built from.
//!
//! Nothing here touches the database or allocates for an allowed key beyond what the answer
//! needs. Detail sentences are built only when asked for (rejections, `/v1/verify`, logs).

use std::sync::Arc;

use keyroll_core::{
    DecisionCode, Fingerprint, Kid, MalformedKey, State, Timestamp, VersionNumber, fingerprint,
    parse_key,
};

pub use crate::index::Recording;
use crate::index::{ConsumerEntry, Index, Lookup, Query, Secret};
use keyroll_core::rfc3339;

/// Where the key was found, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// `Authorization: Bearer`.
    Bearer,
    /// `X-API-Key`.
    ApiKeyHeader,
    /// A JSON body (`/v1/verify`).
    Body,
}

/// What a request presented.
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    /// No credential at all.
    Missing,
    /// Something that cannot be a key before parsing (non-ASCII header, wrong auth scheme).
    Unreadable {
        /// Why, for the detail.
        reason: &'static str,
        /// The raw bytes, for the fingerprint.
        raw: &'a [u8],
    },
    /// A candidate key.
    Key(&'a [u8]),
}

/// Why the key was rejected before lookup, or the lookup facts.
#[derive(Debug, Clone)]
pub enum Facts {
    /// No credential.
    Missing,
    /// Unreadable header.
    Unreadable(&'static str),
    /// Parse failure.
    Malformed(MalformedKey),
    /// The request itself cannot be judged (too many headers, an unreadable gateway header).
    BadRequest(Box<str>),
    /// A key of another environment than the request requires: either proven (the secret
    /// matched and the stored consumer is elsewhere, `Lookup::WrongEnvironment`) or judged from
    /// the prefix of a key whose secret was not proven (`UnknownKid`, `SecretMismatch`), so
    /// the caller learns nothing about whether the kid exists.
    WrongEnvironment {
        /// The one required.
        expected: Box<str>,
        /// What the lookup found.
        looked: Lookup,
    },
    /// Known kid or not, judged or not.
    Looked(Lookup),
}

/// An environment name of at most 16 bytes, held without allocating.
#[derive(Debug, Clone, Copy)]
pub struct InlineEnv {
    bytes: [u8; 16],
    len: u8,
}

impl InlineEnv {
    fn new(name: &str) -> InlineEnv {
        let mut bytes = [0u8; 16];
        let len = name.len().min(16);
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        InlineEnv {
            bytes,
            len: len as u8,
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

/// The outcome of one verification, everything a response or a log line needs.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The reason code.
    pub code: DecisionCode,
    /// The kid, when well-formed.
    pub kid: Option<Kid>,
    /// The fingerprint of what was presented.
    pub fingerprint: Option<Fingerprint>,
    /// The environment in the key prefix, when well-formed (inline: no allocation).
    pub key_environment: Option<InlineEnv>,
    /// What was found out.
    pub facts: Facts,
    /// The scopes required (for `insufficient_scope` messages).
    pub missing_scope: Option<Box<str>>,
}

impl Verification {
    /// The consumer the key belongs to, when known.
    pub fn consumer(&self) -> Option<&Arc<ConsumerEntry>> {
        self.owner().map(|(c, _)| c)
    }

    /// The consumer and version the kid belongs to, when the kid is known.
    fn owner(&self) -> Option<(&Arc<ConsumerEntry>, VersionNumber)> {
        let looked = match &self.facts {
            Facts::Looked(l) | Facts::WrongEnvironment { looked: l, .. } => l,
            _ => return None,
        };
        match looked {
            Lookup::Found(f) => Some((&f.consumer, f.version)),
            Lookup::SecretMismatch { consumer, version }
            | Lookup::PrefixMismatch { consumer, version }
            | Lookup::WrongEnvironment { consumer, version } => Some((consumer, *version)),
            Lookup::UnknownKid => None,
        }
    }

    /// The key's environment, when the key was well-formed.
    pub fn environment(&self) -> Option<&str> {
        match self.consumer() {
            Some(c) => Some(c.environment()),
            None => self.key_environment.as_ref().map(InlineEnv::as_str),
        }
    }

    /// The version, when known.
    pub fn version(&self) -> Option<VersionNumber> {
        self.owner().map(|(_, n)| n)
    }

    /// The version's state at decision time, when the secret matched.
    pub fn state(&self) -> Option<State> {
        match &self.facts {
            Facts::Looked(Lookup::Found(f)) => Some(f.decision.state),
            _ => None,
        }
    }

    /// For a retiring key: when it stops working.
    pub fn sunset(&self) -> Option<Timestamp> {
        match &self.facts {
            Facts::Looked(Lookup::Found(f)) => f.decision.sunset,
            _ => None,
        }
    }

    /// Since when a retiring key is deprecated.
    pub fn deprecated_since(&self) -> Option<Timestamp> {
        match &self.facts {
            Facts::Looked(Lookup::Found(f)) if self.code == DecisionCode::ValidDeprecated => {
                f.changed_at
            }
            _ => None,
        }
    }

    /// Whether the caller may be told who the key belongs to: only once it proved the secret
    /// (it holds the issued key then, so naming its owner tells it nothing new).
    pub fn caller_may_see_consumer(&self) -> bool {
        matches!(
            &self.facts,
            Facts::Looked(Lookup::Found(_) | Lookup::PrefixMismatch { .. })
                | Facts::WrongEnvironment {
                    looked: Lookup::WrongEnvironment { .. },
                    ..
                }
        )
    }

    /// A request that cannot be judged: code `malformed_request`, with the reason.
    pub fn bad_request(reason: impl Into<Box<str>>) -> Verification {
        Verification {
            code: DecisionCode::MalformedRequest,
            kid: None,
            fingerprint: None,
            key_environment: None,
            facts: Facts::BadRequest(reason.into()),
            missing_scope: None,
        }
    }

    /// The full explanation, for logs (and callers when `explain = "full"`, except for
    /// `unknown_key`/`invalid_secret`, see [`Verification::caller_detail`]).
    pub fn detail(&self) -> String {
        let kid = self.kid.map(|k| k.to_string()).unwrap_or_default();
        match &self.facts {
            Facts::Missing => {
                "no API key in the request: send Authorization: Bearer <key> or X-API-Key".into()
            }
            Facts::Unreadable(reason) => (*reason).into(),
            Facts::Malformed(m) => m.to_string(),
            Facts::BadRequest(reason) => reason.to_string(),
            Facts::WrongEnvironment { expected, looked } => {
                let prefix = self.key_environment.as_ref().map_or("", InlineEnv::as_str);
                match looked {
                    Lookup::WrongEnvironment { consumer, version } => format!(
                        "key {kid} ({} {version}) belongs to environment {}, but this endpoint verifies {expected} keys",
                        consumer.reference(),
                        consumer.environment()
                    ),
                    // Not proven: judged from the prefix; the log still names the kid's owner.
                    Lookup::SecretMismatch { consumer, version } => format!(
                        "key {kid} is for environment {prefix}, but this endpoint verifies {expected} keys (and its secret does not match {} {version})",
                        consumer.reference()
                    ),
                    _ => format!(
                        "key {kid} is for environment {prefix}, but this endpoint verifies {expected} keys"
                    ),
                }
            }
            Facts::Looked(Lookup::PrefixMismatch { consumer, version }) => format!(
                "key {kid} belongs to {} {version} in environment {}, but its prefix says {}: the prefix was altered, so the key is refused",
                consumer.reference(),
                consumer.environment(),
                self.key_environment.as_ref().map_or("", InlineEnv::as_str)
            ),
            Facts::Looked(Lookup::WrongEnvironment { consumer, version }) => format!(
                "key {kid} ({} {version}) belongs to environment {}",
                consumer.reference(),
                consumer.environment()
            ),
            Facts::Looked(Lookup::UnknownKid) => format!("no key version has kid {kid}"),
            Facts::Looked(Lookup::SecretMismatch { consumer, version }) => format!(
                "secret does not match kid {kid} ({} {version})",
                consumer.reference()
            ),
            Facts::Looked(Lookup::Found(f)) => {
                let who = format!("key {kid} ({} {})", f.consumer.reference(), f.version);
                match self.code {
                    DecisionCode::Valid => format!("{who} is active"),
                    DecisionCode::ValidDeprecated => format!(
                        "{who} is retiring and stops working at {}{}",
                        f.deadline.map(rfc3339).unwrap_or_default(),
                        f.replaced_by
                            .map(|n| format!("; switch to {n}"))
                            .unwrap_or_default()
                    ),
                    DecisionCode::KeyRetired => format!(
                        "{who} was retired at {}{}",
                        f.deadline
                            .map(rfc3339)
                            .unwrap_or_else(|| "an earlier time".into()),
                        f.replaced_by
                            .map(|n| format!("; {n} replaces it"))
                            .unwrap_or_default()
                    ),
                    DecisionCode::KeyRevoked => format!(
                        "{who} was revoked at {}: {}",
                        f.changed_at.map(rfc3339).unwrap_or_default(),
                        f.revoke_reason.as_deref().unwrap_or("no reason recorded")
                    ),
                    DecisionCode::KeyExpired => format!(
                        "{who} expired at {}",
                        f.expires_at.map(rfc3339).unwrap_or_default()
                    ),
                    DecisionCode::ConsumerDisabled => {
                        format!("{who}: consumer {} is disabled", f.consumer.reference())
                    }
                    DecisionCode::InsufficientScope => format!(
                        "{who} lacks the required scope {}",
                        self.missing_scope.as_deref().unwrap_or("?")
                    ),
                    other => other.as_str().into(),
                }
            }
        }
    }

    /// What the caller is told: never whether a kid exists.
    pub fn caller_detail(&self) -> String {
        if let Facts::WrongEnvironment {
            expected,
            looked: Lookup::SecretMismatch { .. },
        } = &self.facts
        {
            // Judged from the prefix; the log names the kid's owner, the caller must not learn
            // that the kid exists.
            let kid = self.kid.map(|k| k.to_string()).unwrap_or_default();
            let prefix = self.key_environment.as_ref().map_or("", InlineEnv::as_str);
            return format!(
                "key {kid} is for environment {prefix}, but this endpoint verifies {expected} keys"
            );
        }
        match self.code {
            DecisionCode::UnknownKey | DecisionCode::InvalidSecret => format!(
                "key {} is not valid",
                self.kid.map(|k| k.to_string()).unwrap_or_default()
            ),
            _ => self.detail(),
        }
    }
}

/// Verifies one presented key against the index at `now`.
///
/// `environment` is the environment the request must belong to, if any. It is compared with
/// the environment stored for the kid's consumer, never with the key's prefix alone: the prefix
/// is public and anyone can rewrite it (SPEC §2). `recording` says whether an allowed answer
/// counts as the consumer using its key.
#[inline]
pub fn verify<R: AsRef<str>>(
    index: &Index,
    presented: Presented<'_>,
    environment: Option<&str>,
    required_scopes: &[R],
    recording: Recording,
    now: Timestamp,
) -> Verification {
    let raw = match presented {
        Presented::Missing => {
            return Verification {
                code: DecisionCode::MissingCredential,
                kid: None,
                fingerprint: None,
                key_environment: None,
                facts: Facts::Missing,
                missing_scope: None,
            };
        }
        Presented::Unreadable { reason, raw } => {
            return Verification {
                code: DecisionCode::MalformedCredential,
                kid: None,
                fingerprint: Some(fingerprint(raw)),
                key_environment: None,
                facts: Facts::Unreadable(reason),
                missing_scope: None,
            };
        }
        Presented::Key(raw) => raw,
    };
    let parsed = match parse_key(raw) {
        Ok(p) => p,
        Err(m) => {
            return Verification {
                code: DecisionCode::MalformedCredential,
                kid: None,
                fingerprint: Some(fingerprint(raw)),
                key_environment: None,
                facts: Facts::Malformed(m),
                missing_scope: None,
            };
        }
    };
    let kid = parsed.kid();
    let key_environment = parsed.environment();
    let lookup = index.lookup(
        &Query {
            kid: &kid,
            secret: Secret::Key(&parsed),
            key_environment,
            required_environment: environment,
            required_scopes,
            recording,
        },
        now,
    );
    let key_environment = Some(InlineEnv::new(key_environment));
    let wrong_environment = |looked: Lookup, expected: &str| Verification {
        code: DecisionCode::WrongEnvironment,
        kid: Some(kid),
        fingerprint: Some(fingerprint(raw)),
        key_environment,
        facts: Facts::WrongEnvironment {
            expected: expected.into(),
            looked,
        },
        missing_scope: None,
    };
    let (code, fp, missing_scope) = match &lookup {
        Lookup::WrongEnvironment { .. } => {
            return wrong_environment(lookup, environment.unwrap_or_default());
        }
        // Not proven, and the prefix already says another environment: answer from the prefix,
        // whether or not the kid exists, so the answer tells the caller nothing about it.
        Lookup::UnknownKid | Lookup::SecretMismatch { .. }
            if environment.is_some_and(|e| e != parsed.environment()) =>
        {
            return wrong_environment(lookup, environment.unwrap_or_default());
        }
        Lookup::UnknownKid => (DecisionCode::UnknownKey, fingerprint(raw), None),
        Lookup::SecretMismatch { .. } => (DecisionCode::InvalidSecret, fingerprint(raw), None),
        // The presented string is not the issued key (its prefix was rewritten): its own
        // fingerprint, not the stored one.
        Lookup::PrefixMismatch { .. } => (DecisionCode::WrongEnvironment, fingerprint(raw), None),
        // The secret matched and the prefix is the stored environment, so the presented string
        // is the issued key (the check is a function of the rest): its fingerprint is the
        // stored one and needs no second hash.
        Lookup::Found(f) => (
            f.decision.code,
            f.fingerprint,
            f.decision
                .missing_scope
                .and_then(|i| required_scopes.get(i))
                .map(|s| s.as_ref().into()),
        ),
    };
    Verification {
        code,
        kid: Some(kid),
        fingerprint: Some(fp),
        key_environment,
        facts: Facts::Looked(lookup),
        missing_scope,
    }
}

#[cfg(test)]
mod tests {
    //! The environment check (SPEC §2): a key's prefix is public, so only the environment stored
    //! for the kid's consumer decides.
    use super::*;
    use keyroll_core::{
        Command, Consumer, ConsumerName, Environment, IssuedKey, NewVersion, Usage, assemble_key,
        issue_key,
    };
    use proptest::prelude::*;

    const ENVIRONMENTS: [&str; 4] = ["prod", "staging", "dev", "eu1"];

    /// The operating system's CSPRNG (the server's own source lives in the server).
    struct OsEntropy;

    impl keyroll_core::Entropy for OsEntropy {
        fn fill(&mut self, dest: &mut [u8]) -> Result<(), keyroll_core::EntropyUnavailable> {
            getrandom::fill(dest).map_err(|e| keyroll_core::EntropyUnavailable(e.to_string()))
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000)
    }

    fn new_version(k: &IssuedKey) -> NewVersion {
        NewVersion {
            kid: k.kid,
            secret_hash: k.secret_hash,
            fingerprint: k.fingerprint,
            expires_at: None,
        }
    }

    /// One consumer `ENV/app` per environment, each rotated once (an active and a retiring
    /// version, both allowed), and every issued key.
    fn installation() -> (Index, Vec<(String, IssuedKey)>) {
        let index = Index::new();
        let mut keys = Vec::new();
        for (i, name) in ENVIRONMENTS.iter().enumerate() {
            let env = Environment::parse(name).unwrap();
            let k1 = issue_key(&env, &mut OsEntropy).unwrap();
            let k2 = issue_key(&env, &mut OsEntropy).unwrap();
            let c = Consumer::create(
                env.clone(),
                ConsumerName::parse("app").unwrap(),
                vec![],
                None,
                new_version(&k1),
                now(),
            );
            let c = c
                .apply(
                    Command::Rotate {
                        grace: std::time::Duration::from_secs(3600),
                        enforce: false,
                        new_version: new_version(&k2),
                    },
                    &Usage::NONE,
                    now(),
                )
                .unwrap()
                .consumer;
            index.upsert(i as i64 + 1, &c);
            keys.push(((*name).to_owned(), k1));
            keys.push(((*name).to_owned(), k2));
        }
        (index, keys)
    }

    fn check(index: &Index, key: &str, required: Option<&str>) -> Verification {
        let none: [&str; 0] = [];
        verify(
            index,
            Presented::Key(key.as_bytes()),
            required,
            &none,
            Recording::OperatorCheck,
            now(),
        )
    }

    /// `kid` and `secret` of an issued key: `kr_<env>_<kid>_<secret><check>`.
    fn parts(key: &str) -> (String, String) {
        let mut it = key.splitn(4, '_');
        let (_, _, kid, rest) = (it.next(), it.next(), it.next(), it.next());
        let rest = rest.unwrap();
        (kid.unwrap().to_owned(), rest[..32].to_owned())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every issued key, its prefix rewritten to any environment name with the check
        /// recomputed, under every requirement: allowed only unaltered and only for its own
        /// environment (or none required).
        #[test]
        fn no_rewritten_prefix_passes_another_environment(
            which in 0usize..8,
            forged in "[a-z][a-z0-9]{0,15}",
            required in proptest::option::of(prop_oneof![
                Just("prod".to_owned()), Just("staging".to_owned()), Just("dev".to_owned()),
                Just("eu1".to_owned()), "[a-z][a-z0-9]{0,15}"
            ]),
        ) {
            let (index, keys) = installation();
            let (own, issued) = &keys[which];
            let (kid, secret) = parts(issued.reveal());
            for prefix in ENVIRONMENTS.iter().copied().chain([forged.as_str()]) {
                let presented = assemble_key(prefix, &kid, &secret);
                let v = check(&index, &presented, required.as_deref());
                let may_pass = prefix == own && required.as_deref().is_none_or(|r| r == own);
                prop_assert_eq!(v.code.allowed(), may_pass, "{} as {:?}: {}", prefix, required, v.detail());
                if !may_pass && prefix != own {
                    prop_assert_eq!(v.code, DecisionCode::WrongEnvironment);
                    // The log names the stored owner and environment, and the fingerprint of
                    // what was presented, not of the issued key.
                    prop_assert_eq!(v.environment(), Some(own.as_str()));
                    prop_assert_eq!(
                        v.consumer().map(|c| c.reference().to_owned()),
                        Some(format!("{own}/app"))
                    );
                    prop_assert_eq!(v.fingerprint, Some(fingerprint(presented.as_bytes())));
                }
            }
        }
    }

    #[test]
    fn a_staging_key_relabelled_prod_is_refused_where_prod_is_required() {
        let (index, keys) = installation();
        let (_, staging) = keys.iter().find(|(e, _)| e == "staging").unwrap();
        let (kid, secret) = parts(staging.reveal());
        let forged = assemble_key("prod", &kid, &secret);
        for required in [Some("prod"), None, Some("staging")] {
            let v = check(&index, &forged, required);
            assert_eq!(v.code, DecisionCode::WrongEnvironment, "{required:?}");
            assert!(v.detail().contains("prefix"), "{}", v.detail());
            assert_eq!(v.environment(), Some("staging"));
        }
        // The unaltered key: wrong_environment where prod is required, with its consumer.
        let v = check(&index, staging.reveal(), Some("prod"));
        assert_eq!(v.code, DecisionCode::WrongEnvironment);
        assert_eq!(v.consumer().unwrap().reference(), "staging/app");
        assert!(v.caller_may_see_consumer());
        assert!(
            check(&index, staging.reveal(), Some("staging"))
                .code
                .allowed()
        );
    }

    #[test]
    fn unproven_keys_get_the_same_answer_whether_or_not_the_kid_exists() {
        let (index, keys) = installation();
        let (_, staging) = keys.iter().find(|(e, _)| e == "staging").unwrap();
        let (kid, _) = parts(staging.reveal());
        let wrong_secret = assemble_key("staging", &kid, &"s".repeat(32));
        let unknown = assemble_key("staging", "AAAAAAAAAAAA", &"s".repeat(32));
        for required in [Some("prod"), None] {
            let a = check(&index, &wrong_secret, required);
            let b = check(&index, &unknown, required);
            assert_eq!(a.code.public_code(), b.code.public_code(), "{required:?}");
            assert_eq!(
                a.caller_detail().replace(&kid, "K"),
                b.caller_detail().replace("AAAAAAAAAAAA", "K")
            );
            assert!(!a.caller_may_see_consumer());
        }
    }

    #[test]
    fn operator_checks_do_not_record_use() {
        let (index, keys) = installation();
        let (_, key) = &keys[0];
        let none: [&str; 0] = [];
        let v = verify(
            &index,
            Presented::Key(key.reveal().as_bytes()),
            None,
            &none,
            Recording::OperatorCheck,
            now(),
        );
        assert!(v.code.allowed());
        assert_eq!(index.last_used(&key.kid), None);
        verify(
            &index,
            Presented::Key(key.reveal().as_bytes()),
            None,
            &none,
            Recording::CountsAsUse,
            now(),
        );
        assert!(index.last_used(&key.kid).is_some());
    }
}
