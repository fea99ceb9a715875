//! Durations in humantime form (`48h`, `30d`, `90s`), plus `0` for "no grace".

use std::time::Duration;

/// A duration string that is not humantime syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (expected a humantime duration like 48h, 30d, 90s, or 0)"
)]
pub struct DurationError {
    /// What was given (durations are not secret).
    pub input: String,
    /// Why it was refused.
    pub reason: String,
}

/// The longest duration accepted anywhere (about 100 years); longer values are typos.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses `48h`, `30d`, `1h 30m`, `90s` or `0`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let trimmed = input.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let parsed = humantime::parse_duration(trimmed).map_err(|e| DurationError {
        input: input.chars().take(64).collect(),
        reason: e.to_string(),
    })?;
    if parsed.subsec_nanos() % 1_000_000 != 0 {
        return Err(DurationError {
            input: input.chars().take(64).collect(),
            reason: "finer than a millisecond".into(),
        });
    }
    if parsed > MAX_DURATION {
        return Err(DurationError {
            input: input.chars().take(64).collect(),
            reason: "longer than 100 years".into(),
        });
    }
    Ok(parsed)
}

/// Formats a duration the way [`parse_duration`] reads it back (`2days 3h`, `0s`).
pub fn format_duration(d: Duration) -> String {
    // Sub-second precision is noise in every place keyroll prints a duration.
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humantime_and_zero() {
        assert_eq!(parse_duration("48h"), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 90s "), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn rejects_garbage_with_the_input_in_the_message() {
        let err = parse_duration("two days").unwrap_err();
        assert!(err.to_string().contains("\"two days\""), "{err}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5h").is_err());
        assert!(parse_duration("1000000d").is_err());
        assert!(parse_duration("1500us").is_err());
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn format_round_trips() {
        let d = Duration::from_secs(2 * 86400 + 3 * 3600);
        assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
}
