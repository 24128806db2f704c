//! When to try a failed delivery again: exponential backoff with full jitter, or what the receiver asked for.
//!
//! Full jitter (a uniformly random wait between zero and the exponential bound) spreads the retries of many
//! subscriptions that failed together, so a receiver coming back is not hit by all of them at the same instant.

use std::time::{Duration, SystemTime};

/// The first retry's bound.
pub const BASE: Duration = Duration::from_millis(500);
/// No wait is longer, whatever the attempt count or the receiver's `Retry-After`.
pub const CAP: Duration = Duration::from_secs(5 * 60);

/// The exponential bound after `failures` failed attempts (1 after the first): `BASE * 2^(failures-1)`, capped.
pub fn bound(failures: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << exponent).min(cap)
}

/// The wait before the next attempt: `unit` (a uniform random number in `[0, 1)`) times [`bound`].
pub fn delay(failures: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    bound(failures, base, cap).mul_f64(unit.clamp(0.0, 1.0))
}

/// [`delay`] with the service's base and cap and a fresh random number.
pub fn jittered(failures: u32) -> Duration {
    delay(failures, BASE, CAP, fastrand::f64())
}

/// Reads a `Retry-After` value (RFC 9110 section 10.2.3): delay-seconds or an HTTP date. A date in the past
/// means "now". `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long digit strings overflow u64: they mean "a very long time", which the cap handles.
        return Some(value.parse::<u64>().map_or(Duration::MAX, Duration::from_secs));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is an RFC 2822 date with "GMT" as the zone.
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::from(date.with_timezone(&chrono::Utc));
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_doubles_from_the_base_and_stops_at_the_cap() {
        assert_eq!(bound(1, BASE, CAP), Duration::from_millis(500));
        assert_eq!(bound(2, BASE, CAP), Duration::from_secs(1));
        assert_eq!(bound(3, BASE, CAP), Duration::from_secs(2));
        assert_eq!(bound(10, BASE, CAP), Duration::from_secs(256));
        assert_eq!(bound(11, BASE, CAP), CAP);
        assert_eq!(bound(u32::MAX, BASE, CAP), CAP, "no overflow for huge attempt counts");
        assert_eq!(bound(0, BASE, CAP), BASE);
    }

    #[test]
    fn jittered_delay_stays_within_zero_and_the_bound() {
        for failures in 1..40 {
            for _ in 0..50 {
                let d = jittered(failures);
                assert!(d <= bound(failures, BASE, CAP), "{failures}: {d:?}");
            }
        }
        assert_eq!(delay(3, BASE, CAP, 0.0), Duration::ZERO);
        assert_eq!(delay(3, BASE, CAP, 0.5), Duration::from_secs(1));
        assert_eq!(delay(3, BASE, CAP, 7.0), Duration::from_secs(2), "out-of-range randomness is clamped");
    }

    #[test]
    fn retry_after_accepts_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(Duration::MAX));
    }

    #[test]
    fn retry_after_accepts_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO), "past");
    }

    #[test]
    fn retry_after_rejects_anything_else() {
        let now = SystemTime::now();
        for bad in ["", "-5", "1.5", "soon", "12s"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }
}
