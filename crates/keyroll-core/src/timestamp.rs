//! A point in time as milliseconds since the Unix epoch, UTC.
//!
//! The core never reads a clock: callers pass `now` in. Milliseconds (not seconds) so that tests
//! and short grace windows (seconds) are exact; `i64` so the hot-path index stays compact.

use std::time::Duration;

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_unix_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating at the end of representable time rather than wrapping.
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// `self - d`, saturating.
    pub fn saturating_sub(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        let ms = self.0.saturating_sub(earlier.0);
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }
}

/// The `time` value of a timestamp; out-of-range values clamp to the ends `time` supports.
fn datetime(ts: Timestamp) -> time::OffsetDateTime {
    let nanos = i128::from(ts.unix_millis()) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(if ts.unix_millis() < 0 {
        time::OffsetDateTime::UNIX_EPOCH
    } else {
        // Far-future sentinel values print as the largest date `time` supports.
        time::PrimitiveDateTime::MAX.assume_utc()
    })
}

/// `2026-11-28T08:00:00Z` (milliseconds only when not zero): JSON, logs and explanations.
pub fn rfc3339(ts: Timestamp) -> String {
    datetime(ts)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ts.unix_millis().to_string())
}

/// A timestamp from RFC 3339 text, or `None` when it is not RFC 3339.
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let d =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(d.unix_timestamp_nanos() / 1_000_000)
        .ok()
        .map(Timestamp::from_unix_millis)
}

/// `Sat, 28 Nov 2026 08:00:00 GMT` (RFC 9110 IMF-fixdate, for HTTP headers such as `Sunset`).
pub fn http_date(ts: Timestamp) -> String {
    let d = datetime(ts);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[d.weekday().number_days_from_monday() as usize],
        d.day(),
        MONTHS[d.month() as usize - 1],
        d.year(),
        d.hour(),
        d.minute(),
        d.second()
    )
}
