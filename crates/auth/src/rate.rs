//! Rate limits: a per-producer publish limiter (events and, optionally, bytes) and a per-IP limiter for
//! anonymous calls.
//!
//! The publish limiter is our own pair of token buckets rather than two `governor` limiters: a batch must be
//! charged against both buckets or neither, and `governor` can only test capacity by consuming it
//! (`check_n` succeeds and consumes, or fails). Checking events and then bytes would leave the events consumed
//! when the bytes bucket refuses, and there is no way to give them back. Two buckets behind one mutex make the
//! all-or-nothing rule trivially true, and they run on the injected clock so tests can move time.
//!
//! The anonymous limiter charges one request at a time, which `governor`'s keyed GCRA does exactly.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::RateLimited;
use crate::model::RateSpec;

/// Token levels are kept in thousandths so refilling by whole milliseconds is exact integer arithmetic.
const MILLI: i128 = 1000;

#[derive(Debug)]
struct Bucket {
    capacity: u64,
    per_second: u64,
    /// Thousandths of a token; negative after an oversized request (see [`Bucket::shortfall`]).
    level: i128,
    last_ms: i64,
}

impl Bucket {
    fn full(capacity: u64, per_second: u64, now_ms: i64) -> Bucket {
        Bucket { capacity, per_second, level: i128::from(capacity) * MILLI, last_ms: now_ms }
    }

    fn refill(&mut self, now_ms: i64) {
        // A clock that steps backwards must not drain the bucket; it just pauses refilling.
        if now_ms > self.last_ms {
            let elapsed = i128::from(now_ms - self.last_ms);
            // `per_second` tokens a second is `per_second` thousandths a millisecond.
            self.level = (self.level + elapsed * i128::from(self.per_second)).min(self.max());
            self.last_ms = now_ms;
        }
    }

    fn max(&self) -> i128 {
        i128::from(self.capacity) * MILLI
    }

    /// Thousandths of a token missing before `n` may pass, or `None` if it may pass now.
    ///
    /// A request larger than the whole burst could never fit, so it passes when the bucket is full and leaves
    /// the bucket in debt: the long-run rate still holds, and the producer is not locked out forever.
    fn shortfall(&self, n: u64) -> Option<i128> {
        let need = i128::from(n) * MILLI;
        if need <= self.level || self.level >= self.max() {
            None
        } else {
            Some(need.min(self.max()) - self.level)
        }
    }

    fn take(&mut self, n: u64) {
        self.level -= i128::from(n) * MILLI;
    }

    fn ms_to_gain(&self, thousandths: i128) -> Duration {
        let rate = i128::from(self.per_second.max(1));
        let ms = (thousandths.max(0) + rate - 1) / rate;
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn refusal(&self, shortfall: i128) -> RateLimited {
        RateLimited {
            retry_after: self.ms_to_gain(shortfall),
            limit: u32::try_from(self.capacity).unwrap_or(u32::MAX),
            remaining: u32::try_from((self.level / MILLI).max(0)).unwrap_or(u32::MAX),
            reset: self.ms_to_gain(self.max() - self.level),
        }
    }
}

/// One producer's publish limiter, built from its [`RateSpec`] (rebuilt when the spec changes).
#[derive(Debug)]
pub(crate) struct PublishLimiter {
    spec: RateSpec,
    buckets: Mutex<(Bucket, Option<Bucket>)>,
}

impl PublishLimiter {
    pub(crate) fn new(spec: &RateSpec, now_ms: i64) -> PublishLimiter {
        let events = Bucket::full(u64::from(spec.burst), u64::from(spec.events_per_second), now_ms);
        let bytes = spec
            .bytes_per_second
            .map(|per_second| Bucket::full(spec.burst_bytes.unwrap_or(per_second), per_second, now_ms));
        PublishLimiter { spec: spec.clone(), buckets: Mutex::new((events, bytes)) }
    }

    pub(crate) fn spec(&self) -> &RateSpec {
        &self.spec
    }

    /// Charges `events` and `bytes` together, or refuses and charges nothing.
    pub(crate) fn check(&self, events: u32, bytes: u64, now_ms: i64) -> Result<(), RateLimited> {
        let mut guard = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (event_bucket, byte_bucket) = &mut *guard;
        event_bucket.refill(now_ms);
        if let Some(missing) = event_bucket.shortfall(u64::from(events)) {
            return Err(event_bucket.refusal(missing));
        }
        if let Some(byte_bucket) = byte_bucket.as_mut() {
            byte_bucket.refill(now_ms);
            if let Some(missing) = byte_bucket.shortfall(bytes) {
                return Err(byte_bucket.refusal(missing));
            }
            byte_bucket.take(bytes);
        }
        event_bucket.take(u64::from(events));
        Ok(())
    }
}

/// Validates a spec before it is stored: zero rates would never refill.
pub(crate) fn check_spec(spec: &RateSpec) -> Result<(), String> {
    if spec.events_per_second == 0 || spec.burst == 0 {
        return Err("rate.events_per_second and rate.burst must be at least 1".to_owned());
    }
    match (spec.bytes_per_second, spec.burst_bytes) {
        (Some(0), _) | (_, Some(0)) => {
            Err("rate.bytes_per_second and rate.burst_bytes must be at least 1".to_owned())
        }
        (None, Some(_)) => Err("rate.burst_bytes needs rate.bytes_per_second".to_owned()),
        _ => Ok(()),
    }
}

/// Keys tracked before idle ones are swept; a sweep runs at most once a second so a flood of distinct addresses
/// costs one O(n) pass a second, not one per request.
const SWEEP_ABOVE_KEYS: usize = 65_536;

pub(crate) struct AnonymousLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    started: Instant,
    last_sweep_ms: AtomicU64,
}

impl AnonymousLimiter {
    pub(crate) fn new(spec: &RateSpec) -> Result<AnonymousLimiter, String> {
        let (Some(per_second), Some(burst)) =
            (NonZeroU32::new(spec.events_per_second), NonZeroU32::new(spec.burst))
        else {
            return Err("anonymous_per_ip: events_per_second and burst must be at least 1".to_owned());
        };
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Ok(AnonymousLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            started: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
        })
    }

    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), RateLimited> {
        self.sweep_if_large();
        match self.limiter.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let quota = not_until.quota();
                let retry_after = not_until.wait_time_from(self.limiter.clock().now());
                Err(RateLimited {
                    retry_after,
                    limit: quota.burst_size().get(),
                    remaining: 0,
                    // GCRA refills one cell per interval; the bucket is full once the remaining cells refill too.
                    reset: retry_after
                        + quota
                            .replenish_interval()
                            .saturating_mul(quota.burst_size().get().saturating_sub(1)),
                })
            }
        }
    }

    fn sweep_if_large(&self) {
        if self.limiter.len() <= SWEEP_ABOVE_KEYS {
            return;
        }
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self.last_sweep_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            tracing::debug!(tracked = self.limiter.len(), "swept idle anonymous rate-limit keys");
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(per_second: u32, burst: u32, bytes: Option<(u64, u64)>) -> RateSpec {
        RateSpec {
            events_per_second: per_second,
            burst,
            bytes_per_second: bytes.map(|b| b.0),
            burst_bytes: bytes.map(|b| b.1),
        }
    }

    #[test]
    fn refused_batch_consumes_nothing_when_bytes_bucket_refuses() {
        let limiter = PublishLimiter::new(&spec(10, 10, Some((1000, 1000))), 0);
        limiter.check(1, 500, 0).unwrap();
        // Events fit (5 of 9) but bytes do not (600 of 500): nothing may be charged.
        let err = limiter.check(5, 600, 0).unwrap_err();
        assert_eq!((err.limit, err.remaining), (1000, 500));
        // The rest of both bursts is still there.
        limiter.check(9, 500, 0).unwrap();
        assert!(limiter.check(1, 0, 0).is_err());
        assert!(limiter.check(0, 1, 0).is_err());
    }

    #[test]
    fn refused_batch_consumes_nothing_when_events_bucket_refuses() {
        let limiter = PublishLimiter::new(&spec(10, 10, Some((1000, 1000))), 0);
        limiter.check(8, 0, 0).unwrap();
        let err = limiter.check(3, 500, 0).unwrap_err();
        assert_eq!((err.limit, err.remaining), (10, 2));
        // One token is missing at 10/s: 100 ms.
        assert_eq!(err.retry_after, Duration::from_millis(100));
        assert_eq!(err.reset, Duration::from_millis(800));
        // The bytes bucket was not touched by the refused batch.
        limiter.check(2, 1000, 0).unwrap();
    }

    #[test]
    fn steady_publishing_under_the_limit_is_never_refused() {
        let limiter = PublishLimiter::new(&spec(100, 5, Some((10_000, 10_000))), 0);
        // 100 events/s as 1 event every 10 ms, 100 bytes each (10 kB/s), for a simulated minute.
        for i in 0..6000 {
            limiter.check(1, 100, i * 10).unwrap_or_else(|e| panic!("refused at step {i}: {e:?}"));
        }
    }

    #[test]
    fn bucket_refills_with_time_and_caps_at_the_burst() {
        let limiter = PublishLimiter::new(&spec(2, 4, None), 0);
        limiter.check(4, 0, 0).unwrap();
        assert!(limiter.check(1, 0, 0).is_err());
        assert!(limiter.check(1, 0, 499).is_err());
        limiter.check(1, 0, 500).unwrap();
        // A long pause refills only up to the burst.
        limiter.check(4, 0, 100_000).unwrap();
        assert!(limiter.check(1, 0, 100_000).is_err());
    }

    #[test]
    fn oversized_batch_passes_only_from_a_full_bucket_and_leaves_debt() {
        let limiter = PublishLimiter::new(&spec(10, 10, None), 0);
        limiter.check(1, 0, 0).unwrap();
        let err = limiter.check(50, 0, 0).unwrap_err();
        // It waits for the bucket to be full again, not for 50 tokens.
        assert_eq!(err.retry_after, Duration::from_millis(100));
        limiter.check(50, 0, 100).unwrap();
        // 40 tokens of debt at 10/s: 4 s until the next single event.
        let err = limiter.check(1, 0, 100).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_millis(4100));
        assert_eq!(err.remaining, 0);
        limiter.check(1, 0, 4200).unwrap();
    }

    #[test]
    fn clock_stepping_back_does_not_drain_or_refill() {
        let limiter = PublishLimiter::new(&spec(1, 1, None), 10_000);
        limiter.check(1, 0, 10_000).unwrap();
        assert!(limiter.check(1, 0, 5_000).is_err());
        limiter.check(1, 0, 11_000).unwrap();
    }

    #[test]
    fn burst_bytes_defaults_to_one_second() {
        let limiter =
            PublishLimiter::new(&RateSpec { burst_bytes: None, ..spec(100, 100, Some((500, 500))) }, 0);
        limiter.check(1, 500, 0).unwrap();
        assert!(limiter.check(1, 1, 0).is_err());
    }

    #[test]
    fn spec_validation() {
        assert!(check_spec(&spec(0, 1, None)).is_err());
        assert!(check_spec(&spec(1, 0, None)).is_err());
        assert!(check_spec(&spec(1, 1, Some((0, 1)))).is_err());
        assert!(check_spec(&RateSpec { burst_bytes: Some(5), ..spec(1, 1, None) }).is_err());
        assert!(check_spec(&RateSpec { burst_bytes: None, ..spec(1, 1, Some((5, 5))) }).is_ok());
        assert!(check_spec(&spec(1, 1, Some((5, 5)))).is_ok());
    }

    #[test]
    fn anonymous_limiter_is_per_ip() {
        let limiter = AnonymousLimiter::new(&spec(1, 3, None)).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..3 {
            limiter.check(a).unwrap();
        }
        let err = limiter.check(a).unwrap_err();
        assert_eq!((err.limit, err.remaining), (3, 0));
        assert!(err.retry_after > Duration::ZERO && err.retry_after <= Duration::from_secs(1));
        assert!(err.reset >= err.retry_after);
        limiter.check(b).unwrap();
        assert_eq!(limiter.tracked(), 2);
    }

    #[test]
    fn anonymous_limiter_rejects_zero_rates() {
        assert!(AnonymousLimiter::new(&spec(0, 3, None)).is_err());
        assert!(AnonymousLimiter::new(&spec(3, 0, None)).is_err());
    }
}
