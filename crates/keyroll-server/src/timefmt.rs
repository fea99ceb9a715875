//! Formatting of core timestamps at the edge: RFC 3339 for JSON and logs, IMF-fixdate for
//! HTTP headers (`Sunset`).

use keyroll_core::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn datetime(ts: Timestamp) -> OffsetDateTime {
    let nanos = i128::from(ts.unix_millis()) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(if ts.unix_millis() < 0 {
        OffsetDateTime::UNIX_EPOCH
    } else {
        // Far-future sentinel values print as the largest date `time` supports.
        time::PrimitiveDateTime::MAX.assume_utc()
    })
}

/// `2026-11-28T08:00:00Z` (milliseconds only when not zero).
pub fn rfc3339(ts: Timestamp) -> String {
    datetime(ts)
        .format(&Rfc3339)
        .unwrap_or_else(|_| ts.unix_millis().to_string())
}

/// `Sat, 28 Nov 2026 08:00:00 GMT` (RFC 9110 IMF-fixdate).
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

/// The current time, read at the edge only.
pub fn now() -> Timestamp {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    Timestamp::from_unix_millis(i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let ts = Timestamp::from_unix_millis(1_795_852_800_000);
        assert_eq!(rfc3339(ts), "2026-11-28T08:00:00Z");
        assert_eq!(http_date(ts), "Sat, 28 Nov 2026 08:00:00 GMT");
    }
}
