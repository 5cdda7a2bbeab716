//! Timestamps: stored as microseconds since the Unix epoch (UTC), written on the wire
//! as ISO-8601 with an explicit `+00:00` offset (the form Python's `isoformat()`
//! produces, which the Akosha / Session-Buddy clients expect).

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};

/// Microseconds since the Unix epoch, UTC.
pub type Micros = i64;

/// Now, in microseconds.
pub fn now_micros() -> Micros {
    Utc::now().timestamp_micros()
}

/// Format as `2025-01-02T03:04:05.123456+00:00`.
pub fn format_micros(t: Micros) -> String {
    let dt = Utc.timestamp_micros(t).single().unwrap_or_default();
    dt.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Parse RFC 3339 (any offset), or a naive ISO-8601 date-time / date which is taken
/// as UTC, as naive `datetime.isoformat()` strings from Python clients are.
pub fn parse_timestamp(s: &str) -> Option<Micros> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_micros());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    if let Some(dt) = s.strip_suffix('Z').and_then(|x| NaiveDateTime::parse_from_str(x, "%Y-%m-%dT%H:%M:%S%.f").ok()) {
        return Some(dt.and_utc().timestamp_micros());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_micros())
}

/// A duration in seconds written as `<n><s|m|h|d|w>` (`"90s"`, `"12h"`, `"30d"`) or
/// as a plain number of seconds.
pub fn parse_duration_seconds(t: &str) -> Option<f64> {
    let t = t.trim();
    if let Ok(n) = t.parse::<f64>() {
        return Some(n);
    }
    let (number, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = number.trim().parse().ok()?;
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => return None,
    };
    Some(n * scale)
}

/// Serde adapter for `Micros` fields written as ISO-8601 strings.
pub mod serde_micros {
    use super::*;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Micros, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Micros, D::Error> {
        let s = String::deserialize(d)?;
        parse_timestamp(&s).ok_or_else(|| D::Error::custom(format!("invalid timestamp {s:?}: expected ISO-8601")))
    }

    /// The same for `Option<Micros>`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(t: &Option<Micros>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format_micros(*t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Micros>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(s) => parse_timestamp(&s)
                    .map(Some)
                    .ok_or_else(|| D::Error::custom(format!("invalid timestamp {s:?}: expected ISO-8601"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_explicit_utc_offset_and_round_trips() {
        let t = 1_700_000_000_123_456;
        let s = format_micros(t);
        assert_eq!(s, "2023-11-14T22:13:20.123456+00:00");
        assert_eq!(parse_timestamp(&s), Some(t));
    }

    #[test]
    fn accepts_offsets_z_naive_and_dates() {
        let base = parse_timestamp("2025-01-02T03:04:05+00:00").unwrap();
        assert_eq!(parse_timestamp("2025-01-02T03:04:05Z"), Some(base));
        assert_eq!(parse_timestamp("2025-01-02T04:04:05+01:00"), Some(base));
        assert_eq!(parse_timestamp("2025-01-02T03:04:05"), Some(base));
        assert_eq!(parse_timestamp("2025-01-02 03:04:05.000"), Some(base));
        assert_eq!(parse_timestamp("2025-01-02"), parse_timestamp("2025-01-02T00:00:00Z"));
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp(""), None);
    }
}
