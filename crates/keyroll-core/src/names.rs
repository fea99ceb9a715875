//! Validated names: environments, consumers, scopes. Parsed once at the edge, trusted after.

use std::fmt;

/// A name that does not follow its grammar. The message names the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Environment names are part of the key prefix, so they are short and have no separators.
    #[error(
        "invalid environment name {0:?}: expected [a-z][a-z0-9]{{0,15}} (lowercase letters and digits, no - or _)"
    )]
    Environment(String),
    /// Consumer names.
    #[error("invalid consumer name {0:?}: expected [a-z][a-z0-9-]{{0,62}}")]
    Consumer(String),
    /// `ENV/NAME` references.
    #[error("invalid consumer reference {0:?}: expected ENV/NAME, e.g. prod/billing-app")]
    ConsumerRef(String),
    /// Scopes.
    #[error("invalid scope {0:?}: expected 1 to 128 characters of [A-Za-z0-9:._/*-]")]
    Scope(String),
}

/// Keeps error messages short and printable whatever was sent.
fn shown(input: &str) -> String {
    input.chars().take(80).collect()
}

/// An environment (`prod`, `staging`): `[a-z][a-z0-9]{0,15}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Environment(String);

impl Environment {
    /// Validates an environment name.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        if is_environment_name(input.as_bytes()) {
            Ok(Environment(input.to_owned()))
        } else {
            Err(NameError::Environment(shown(input)))
        }
    }

    /// Whether `input` follows the grammar, without allocating (for checks on the hot path).
    pub fn is_valid(input: &str) -> bool {
        is_environment_name(input.as_bytes())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether bytes follow the environment grammar; shared with the key parser.
pub(crate) fn is_environment_name(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 16
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A consumer's name within an environment: `[a-z][a-z0-9-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerName(String);

impl ConsumerName {
    /// Validates a consumer name.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let b = input.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok {
            Ok(ConsumerName(input.to_owned()))
        } else {
            Err(NameError::Consumer(shown(input)))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `ENV/NAME`: one consumer in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerRef {
    /// The environment.
    pub environment: Environment,
    /// The consumer's name.
    pub name: ConsumerName,
}

impl ConsumerRef {
    /// Parses `prod/billing-app`.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let (env, name) = input
            .split_once('/')
            .ok_or_else(|| NameError::ConsumerRef(shown(input)))?;
        Ok(ConsumerRef {
            environment: Environment::parse(env)?,
            name: ConsumerName::parse(name)?,
        })
    }
}

impl fmt::Display for ConsumerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.environment, self.name)
    }
}

/// A permission string granted to a consumer (`invoices:read`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// Validates a scope.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let b = input.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && b.iter().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b':' | b'.' | b'_' | b'/' | b'*' | b'-')
            });
        if ok {
            Ok(Scope(input.to_owned()))
        } else {
            Err(NameError::Scope(shown(input)))
        }
    }

    /// The scope string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_grammar() {
        assert!(Environment::parse("prod").is_ok());
        assert!(Environment::parse("eu1").is_ok());
        assert!(Environment::parse("abcdefghijklmnop").is_ok());
        for bad in [
            "",
            "Prod",
            "1prod",
            "pro-d",
            "pro_d",
            "abcdefghijklmnopq",
            "prød",
        ] {
            assert!(Environment::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn consumer_grammar_and_refs() {
        let r = ConsumerRef::parse("prod/billing-app").unwrap();
        assert_eq!(r.to_string(), "prod/billing-app");
        for bad in ["prod", "prod/", "/x", "prod/Billing", "prod/-x", "pr-od/x"] {
            assert!(ConsumerRef::parse(bad).is_err(), "{bad}");
        }
        assert!(ConsumerName::parse(&"a".repeat(63)).is_ok());
        assert!(ConsumerName::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn scope_grammar() {
        assert!(Scope::parse("invoices:read").is_ok());
        assert!(Scope::parse("").is_err());
        assert!(Scope::parse("a b").is_err());
        let err = Scope::parse("bad scope").unwrap_err().to_string();
        assert!(err.contains("bad scope"), "{err}");
    }
}
