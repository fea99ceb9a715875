//! Between keyroll's millisecond [`Timestamp`] and the `time` / webpki instants certificates use.
//! X.509 validity has whole seconds, so conversions to it truncate toward the past.

use keyroll_core::Timestamp;
use rustls_pki_types::UnixTime;
use time::OffsetDateTime;

use crate::CaError;

/// `ts` truncated to whole seconds, as an `OffsetDateTime` for rcgen.
pub(crate) fn to_datetime(ts: Timestamp) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(ts.unix_millis().div_euclid(1000))
        .map_err(|_| CaError::InvalidLifetime(ts.unix_millis().to_string(), "out of range"))
}

/// `ts` truncated to whole seconds.
pub(crate) fn truncate(ts: Timestamp) -> Timestamp {
    Timestamp::from_unix_millis(ts.unix_millis().div_euclid(1000) * 1000)
}

/// A webpki instant; times before the epoch clamp to it.
pub(crate) fn to_unix_time(ts: Timestamp) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(ts.unix_millis().div_euclid(1000)).unwrap_or(0),
    ))
}

/// A timestamp from seconds since the epoch (x509-parser's `ASN1Time::timestamp`).
pub(crate) fn from_unix_secs(secs: i64) -> Timestamp {
    Timestamp::from_unix_millis(secs.saturating_mul(1000))
}
