//! Durations written as text, the way OpenIM's files write them (Go's
//! notation): a sequence of numbers with units, `"200ms"`, `"5s"`, `"24h"`,
//! `"1h30m"`, `"1.5s"`, or a bare `"0"`.

use std::time::Duration;

/// The units a duration may use, with their length in nanoseconds.
const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a duration such as `"2ms"`, `"5s"`, `"24h"` or `"1h30m"`.
///
/// Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`; numbers may have a
/// fraction (`"1.5s"`). A bare `"0"` is zero; any other number needs a
/// unit. Negative durations are refused. The error says what is wrong with
/// the text, quoting it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let bad = |why: &str| format!("invalid duration {text:?}: {why}");
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(bad("a duration cannot be negative"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad("expected a number before each unit, like \"5s\""));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(bad("missing unit (use ns, us, ms, s, m or h)"));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(bad(&format!(
                "unknown unit {unit:?} (use ns, us, ms, s, m or h)"
            )));
        };
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        let too_long = || bad("too long");
        let mut nanos: u128 = 0;
        if !whole.is_empty() {
            let w: u128 = whole.parse().map_err(|_| too_long())?;
            nanos = w.checked_mul(scale).ok_or_else(too_long)?;
        }
        // Fraction digits past the 18th cannot matter at nanosecond scale
        // for any unit up to hours.
        let frac = &frac[..frac.len().min(18)];
        if !frac.is_empty() {
            let digits: u128 = frac.parse().map_err(|_| too_long())?;
            let part = digits * scale / 10u128.pow(frac.len() as u32);
            nanos = nanos.checked_add(part).ok_or_else(too_long)?;
        }
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("too long"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_go_notation() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("2ms"), Ok(ms(2)));
        assert_eq!(parse_duration("5s"), Ok(ms(5000)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration(".5s"), Ok(ms(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration(" 90s "), Ok(ms(90_000)));
        assert_eq!(parse_duration("1m0.5s"), Ok(ms(60_500)));
    }

    #[test]
    fn refuses_the_rest() {
        for (text, why) in [
            ("", "empty"),
            ("5", "missing unit"),
            ("5x", "unknown unit \"x\""),
            ("5 s", "unknown unit \" s\""),
            ("-5s", "negative"),
            ("s", "expected a number"),
            ("1..5s", "expected a number"),
            ("5d", "unknown unit \"d\""),
            ("99999999999999999999999999999h", "too long"),
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text:?}: {err}");
        }
    }
}
