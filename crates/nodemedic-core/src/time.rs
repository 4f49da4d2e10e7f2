//! Time as plain data: the engine never reads a clock, callers pass `now`.
//!
//! `Time` is milliseconds since the Unix epoch (UTC) and serialises as RFC 3339 so that records read
//! well in `kubectl get -o yaml`. `Duration` is whole milliseconds and uses the Kubernetes/Go notation
//! (`300s`, `5m`, `1h30m`, plus `d` for days) in policy files.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::{Add, Sub};

/// A point in time: milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub i64);

/// A non-negative span of time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub i64);

impl Duration {
    pub const ZERO: Duration = Duration(0);
    pub const fn from_millis(ms: i64) -> Self {
        Duration(ms)
    }
    pub const fn from_secs(s: i64) -> Self {
        Duration(s * 1000)
    }
    pub const fn from_mins(m: i64) -> Self {
        Duration(m * 60_000)
    }
    pub const fn from_hours(h: i64) -> Self {
        Duration(h * 3_600_000)
    }
    pub const fn from_days(d: i64) -> Self {
        Duration(d * 86_400_000)
    }
    pub const fn as_millis(self) -> i64 {
        self.0
    }
    pub const fn is_zero(&self) -> bool {
        self.0 == 0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl Time {
    pub const fn from_millis(ms: i64) -> Self {
        Time(ms)
    }
    pub const fn as_millis(self) -> i64 {
        self.0
    }
    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn since(self, earlier: Time) -> Duration {
        Duration((self.0 - earlier.0).max(0))
    }
    /// Day of week, 0 = Monday … 6 = Sunday (UTC).
    pub fn weekday(self) -> u8 {
        let days = self.0.div_euclid(86_400_000);
        // 1970-01-01 was a Thursday (index 3).
        ((days + 3).rem_euclid(7)) as u8
    }
    /// Milliseconds since midnight UTC.
    pub fn millis_of_day(self) -> i64 {
        self.0.rem_euclid(86_400_000)
    }
    /// Start of this UTC day.
    pub fn start_of_day(self) -> Time {
        Time(self.0 - self.millis_of_day())
    }
    /// Parses an RFC 3339 timestamp (`2026-11-21T12:00:00Z`, fractional seconds and offsets allowed).
    pub fn parse_rfc3339(s: &str) -> Result<Time, TimeParseError> {
        let err = || TimeParseError(format!("`{s}` is not an RFC 3339 timestamp"));
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') {
            return Err(err());
        }
        let num =
            |r: std::ops::Range<usize>| -> Result<i64, TimeParseError> { s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(err) };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        if b[13] != b':' || b[16] != b':' {
            return Err(err());
        }
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return Err(err());
        }
        let mut i = 19;
        let mut frac_ms = 0i64;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let digits = &s[start..i];
            if digits.is_empty() {
                return Err(err());
            }
            let padded: String = digits.chars().chain("000".chars()).take(3).collect();
            frac_ms = padded.parse::<i64>().map_err(|_| err())?;
        }
        let offset_min = match b.get(i) {
            Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
            Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
                let oh = num(i + 1..i + 3)?;
                let om = num(i + 4..i + 6)?;
                let m = oh * 60 + om;
                if *sign == b'-' { -m } else { m }
            }
            _ => return Err(err()),
        };
        let days = days_from_civil(y, mo, d);
        let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60;
        Ok(Time(secs * 1000 + frac_ms))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d.0))
    }
}
impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(d.0))
    }
}
impl Add for Duration {
    type Output = Duration;
    fn add(self, d: Duration) -> Duration {
        Duration(self.0.saturating_add(d.0))
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400_000);
        let ms = self.0.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        let (h, mi, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        if frac == 0 {
            write!(f, "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
        } else {
            write!(f, "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
        }
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Time::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Time {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Time".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date-time"})
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration in Kubernetes notation: 300s, 5m, 1h30m, 500ms, 2d (never negative).",
            "type": "string",
            "pattern": "^(0|([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+)$"
        })
    }
}

/// A timestamp or duration string that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TimeParseError(pub String);

impl Duration {
    /// Parses Go/Kubernetes duration notation: `300s`, `5m`, `1h30m`, `500ms`, `2d`. Negative values
    /// and bare numbers without a unit are refused with a message saying so.
    pub fn parse(s: &str) -> Result<Duration, TimeParseError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(TimeParseError("empty duration".into()));
        }
        if t.starts_with('-') {
            return Err(TimeParseError(format!("`{s}` is negative; durations must be zero or more")));
        }
        if t == "0" {
            return Ok(Duration::ZERO);
        }
        let mut total: f64 = 0.0;
        let mut rest = t.strip_prefix('+').unwrap_or(t);
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            if num_len == 0 {
                return Err(TimeParseError(format!("`{s}` is not a duration (expected e.g. 300s, 5m, 1h30m)")));
            }
            let value: f64 = rest[..num_len].parse().map_err(|_| TimeParseError(format!("`{s}` has a malformed number")))?;
            rest = &rest[num_len..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let factor = match unit {
                "ms" => 1.0,
                "s" => 1_000.0,
                "m" => 60_000.0,
                "h" => 3_600_000.0,
                "d" => 86_400_000.0,
                "" => return Err(TimeParseError(format!("`{s}` lacks a unit (ms, s, m, h or d)"))),
                other => return Err(TimeParseError(format!("`{s}` has unknown unit `{other}` (use ms, s, m, h or d)"))),
            };
            total += value * factor;
            rest = &rest[unit_len..];
        }
        if !total.is_finite() || total > i64::MAX as f64 / 2.0 {
            return Err(TimeParseError(format!("`{s}` is too large")));
        }
        Ok(Duration(total.round() as i64))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms % 1000 != 0 {
            return write!(f, "{ms}ms");
        }
        let mut secs = ms / 1000;
        let d = secs / 86_400;
        secs %= 86_400;
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if d > 0 {
            write!(f, "{d}d")?;
        }
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_go_notation() {
        assert_eq!(Duration::parse("300s"), Ok(Duration::from_mins(5)));
        assert_eq!(Duration::parse("1h30m"), Ok(Duration::from_mins(90)));
        assert_eq!(Duration::parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(Duration::parse("2d"), Ok(Duration::from_days(2)));
        assert_eq!(Duration::parse("1.5h"), Ok(Duration::from_mins(90)));
        assert_eq!(Duration::parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn negative_or_unitless_durations_are_refused_with_a_reason() {
        assert!(Duration::parse("-5m").unwrap_err().0.contains("negative"));
        assert!(Duration::parse("10").unwrap_err().0.contains("unit"));
        assert!(Duration::parse("5y").unwrap_err().0.contains("unknown unit"));
        assert!(Duration::parse("").is_err());
    }

    #[test]
    fn durations_print_compactly_and_round_trip() {
        for s in ["5m", "1h30m", "40m", "1d2h", "500ms", "0s", "45s"] {
            assert_eq!(Duration::parse(s).map(|d| d.to_string()), Ok(s.to_string()));
        }
    }

    #[test]
    fn rfc3339_round_trips_and_knows_weekdays() {
        let t = Time::parse_rfc3339("2026-11-21T12:00:00Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-21T12:00:00Z");
        assert_eq!(t.weekday(), 5, "2026-11-21 is a Saturday");
        let with_offset = Time::parse_rfc3339("2026-11-21T13:00:00.250+01:00").unwrap();
        assert_eq!(with_offset, Time(t.0 + 250));
        assert!(Time::parse_rfc3339("yesterday").is_err());
        assert_eq!(Time(0).to_string(), "1970-01-01T00:00:00Z");
    }
}
