//! Parsing one text cell as an id, a weight or a datetime; shared by the CSV and Parquet
//! readers so that both accept the same spellings.
//!
//! Datetimes are unix seconds, written as an integer (`1638230400`) or a float
//! (`1638230400.75`, floored to whole seconds), or an ISO-8601 date or datetime: `2021-11-30`,
//! `2021-11-30T12:00:00`, `2021-11-30 12:00:00`, with optional fractional seconds (dropped), and
//! an optional `Z` or `±hh:mm` / `±hhmm` / `±hh` offset. A datetime without an offset is UTC.

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// What an id cell must hold.
pub(crate) const EXPECTED_ID: &str = "a non-empty id";
/// What a weight cell must hold.
pub(crate) const EXPECTED_WEIGHT: &str =
    "a finite number >= 0 (an interaction's weight scales its loss; a negative one has no meaning)";
/// What a datetime cell must hold.
pub(crate) const EXPECTED_DATETIME: &str =
    "unix seconds or an ISO-8601 date/datetime (e.g. 2021-11-30 or 2021-11-30T12:00:00Z)";

/// An id as written, unless it is empty or only whitespace.
pub(crate) fn parse_id(text: &str) -> Option<&str> {
    if text.trim().is_empty() {
        None
    } else {
        Some(text)
    }
}

/// A finite, non-negative weight that fits `f32`.
pub(crate) fn parse_weight(text: &str) -> Option<f32> {
    let value: f64 = text.trim().parse().ok()?;
    finite_weight(value)
}

/// `value` as an `f32` weight, if it is finite, stays finite as `f32`, and is not negative
/// (`-0` is read as `0`). RecTools multiplies each target's loss by its weight: a negative weight
/// would reward the model for ranking that item low.
pub(crate) fn finite_weight(value: f64) -> Option<f32> {
    let weight = value as f32;
    (weight.is_finite() && weight >= 0.0).then_some(weight + 0.0)
}

/// Seconds from a float, floored, if finite and inside `i64`.
pub(crate) fn float_seconds(value: f64) -> Option<i64> {
    // -2^63 and 2^63 are exact floats; every floored float in between fits `i64`.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    let floored = value.floor();
    (-LIMIT..LIMIT).contains(&floored).then_some(floored as i64)
}

/// Unix seconds from integer/float seconds or an ISO-8601 date/datetime.
pub fn parse_datetime(text: &str) -> Option<i64> {
    let s = text.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<i64>() {
        return Some(secs);
    }
    if s.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        if let Ok(value) = s.parse::<f64>() {
            return float_seconds(value);
        }
    }
    parse_iso(s)
}

const NAIVE_FORMATS: [&str; 4] = [
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
];

const OFFSET_FORMATS: [&str; 4] = [
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M%#z",
    "%Y-%m-%d %H:%M%#z",
];

fn parse_iso(s: &str) -> Option<i64> {
    let naive = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix('z'))
        .unwrap_or(s);
    if let Ok(date) = NaiveDate::parse_from_str(naive, "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0).map(|dt| dt.and_utc().timestamp());
    }
    for format in NAIVE_FORMATS {
        if let Ok(dt) = NaiveDateTime::parse_from_str(naive, format) {
            return Some(dt.and_utc().timestamp());
        }
    }
    for format in OFFSET_FORMATS {
        if let Ok(dt) = DateTime::parse_from_str(s, format) {
            return Some(dt.timestamp());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_30_2021: i64 = 1_638_230_400;

    #[test]
    fn datetimes_in_unix_seconds() {
        assert_eq!(parse_datetime("1638230400"), Some(NOV_30_2021));
        assert_eq!(parse_datetime(" -5 "), Some(-5));
        assert_eq!(parse_datetime("1638230400.75"), Some(NOV_30_2021));
        assert_eq!(parse_datetime("1.6382304e9"), Some(NOV_30_2021));
        assert_eq!(parse_datetime("-0.5"), Some(-1));
    }

    #[test]
    fn datetimes_in_iso_8601() {
        let noon = NOV_30_2021 + 12 * 3600;
        assert_eq!(parse_datetime("2021-11-30"), Some(NOV_30_2021));
        assert_eq!(parse_datetime("2021-11-30T12:00:00"), Some(noon));
        assert_eq!(parse_datetime("2021-11-30 12:00:00"), Some(noon));
        assert_eq!(parse_datetime("2021-11-30 12:00:00.999"), Some(noon));
        assert_eq!(parse_datetime("2021-11-30T12:00"), Some(noon));
        assert_eq!(parse_datetime("2021-11-30T12:00:00Z"), Some(noon));
        assert_eq!(parse_datetime("2021-11-30 12:00:00Z"), Some(noon));
        assert_eq!(
            parse_datetime("2021-11-30T12:00:00+03:00"),
            Some(noon - 3 * 3600)
        );
        assert_eq!(
            parse_datetime("2021-11-30 12:00:00-0130"),
            Some(noon + 90 * 60)
        );
        assert_eq!(
            parse_datetime("2021-11-30T12:00:00.5+03"),
            Some(noon - 3 * 3600)
        );
    }

    #[test]
    fn bad_datetimes() {
        for bad in [
            "",
            "  ",
            "yesterday",
            "2021-13-01",
            "2021-11-30T25:00:00",
            "nan",
            "inf",
            "1e300",
            "12:00",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn weights_must_be_finite_and_not_negative() {
        assert_eq!(parse_weight("2.5"), Some(2.5));
        assert_eq!(parse_weight(" 3 "), Some(3.0));
        assert_eq!(parse_weight("0"), Some(0.0));
        assert_eq!(parse_weight("-0").map(f32::to_bits), Some(0.0f32.to_bits()));
        for bad in [
            "", "x", "NaN", "nan", "inf", "-inf", "infinity", "1e39", "-1", "-0.5", "-1e-30",
        ] {
            assert_eq!(parse_weight(bad), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn ids_are_kept_as_written_unless_blank() {
        assert_eq!(parse_id("007"), Some("007"));
        assert_eq!(parse_id("a,b"), Some("a,b"));
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_id("  "), None);
    }
}
