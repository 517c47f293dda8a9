//! Durations as people write them in flags and config files: `200ms`,
//! `30s`, `10m`, `1h`, or a sum like `1m30s`.

use std::time::Duration;

/// A duration such as `200ms`, `1m30s`; the error says what to write.
pub(crate) fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. 200ms, 30s, 10m".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "bad duration {s:?}: expected a number; write e.g. 200ms, 30s, 10m"
            ));
        }
        // `find` stops at a character, so both splits are on boundaries.
        let (number, after) = rest.split_at(digits);
        let n: u64 = number.parse().map_err(|_| format!("bad duration {s:?}: number too large"))?;
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        rest = after;
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => {
                return Err(format!("bad duration {s:?}: unit {unit:?} is not one of ms, s, m, h"));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// serde helper for optional durations in the TOML config.
pub(crate) fn de_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    s.map(|s| parse(&s).map_err(serde::de::Error::custom)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse("").is_err());
        assert!(parse("10").is_err());
        assert!(parse("s").is_err());
        assert!(parse("5 years").is_err());
    }
}
