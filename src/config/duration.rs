//! Durations as the configuration writes them: a window or a block as a number and a unit (`15m`),
//! and the listener timers as whole seconds where 0 means "never".

use std::time::Duration;

/// `500ms`, `30s`, `15m`, `1h`, `1d` -> milliseconds; zero, a missing number or an unknown unit
/// is refused with the reason.
pub(crate) fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration such as 500ms, 30s, 15m, 1h or 1d");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(scale).ok_or_else(bad)?;
    if ms == 0 {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(ms)
}

/// Whole seconds, with 0 meaning "never".
pub(crate) fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("15m"), Ok(900_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert!(parse_duration_ms("0s").is_err());
        assert!(parse_duration_ms("m").is_err());
        assert!(parse_duration_ms("99999999999999999999d").is_err());
        assert_eq!(
            parse_duration_ms("15x"),
            Err("\"15x\" is not a duration such as 500ms, 30s, 15m, 1h or 1d".into())
        );
    }

    #[test]
    fn zero_seconds_is_never() {
        assert_eq!(secs(0), None);
        assert_eq!(secs(30), Some(Duration::from_secs(30)));
    }
}
