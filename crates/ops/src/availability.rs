//! Recorded availability: which minutes the service answered in, persisted in the [`MetaStore`] so uptime is a
//! record rather than a guess, and so it works on every backend (JetStream included).
//!
//! One entry per UTC day (collection [`COLLECTION`], key `YYYY-MM-DD`), holding two 1440-bit maps: the minutes
//! a node of the service was running (its heartbeat task wrote the bit), and the minutes it was running inside
//! a maintenance window. Setting a bit is idempotent (compare-and-set of the day's bitmap), so one node or many
//! may record the same minute and the result is the same: "the service answered in that minute". Each node
//! writes at most once a minute (only when the bit is not set yet).
//!
//! Uptime over a window counts minutes from the service's first recorded minute (time before the service
//! existed is not downtime) to now. Planned minutes (inside a maintenance window, whether or not the service
//! answered) are reported apart: planned downtime is not an SLA breach. Unplanned downtime is every other
//! minute without a heartbeat.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use esgf_events_meta::{MetaError, MetaStore};
use serde::Serialize;

/// The collection of day records.
pub const COLLECTION: &str = "availability";

/// Days kept: the longest window reported is 90 days; a few more cost nothing and absorb clock skew.
pub const KEEP_DAYS: i64 = 100;

/// The windows reported, in days.
pub const WINDOWS: [u32; 3] = [7, 30, 90];

/// Days in the per-day series (the uptime chart).
pub const DAILY_DAYS: u32 = 30;

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;
const MINUTES_PER_DAY: usize = 1440;
const MAP_BYTES: usize = MINUTES_PER_DAY / 8;
const VERSION: u8 = 1;

/// Concurrent writers retry a lost compare-and-set this often before giving up for this minute.
const CAS_ATTEMPTS: usize = 16;

/// One day's bitmaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRecord {
    up: [u8; MAP_BYTES],
    maintenance: [u8; MAP_BYTES],
}

impl Default for DayRecord {
    fn default() -> Self {
        DayRecord { up: [0; MAP_BYTES], maintenance: [0; MAP_BYTES] }
    }
}

impl DayRecord {
    /// `None` for bytes that are not a day record of this version.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 1 + 2 * MAP_BYTES || bytes[0] != VERSION {
            return None;
        }
        let mut record = DayRecord::default();
        record.up.copy_from_slice(&bytes[1..1 + MAP_BYTES]);
        record.maintenance.copy_from_slice(&bytes[1 + MAP_BYTES..]);
        Some(record)
    }

    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(1 + 2 * MAP_BYTES);
        out.push(VERSION);
        out.extend_from_slice(&self.up);
        out.extend_from_slice(&self.maintenance);
        Bytes::from(out)
    }

    /// Marks `minute` (0..1440) as up, and as in maintenance if `maintenance`. Returns whether anything changed.
    pub fn set(&mut self, minute: usize, maintenance: bool) -> bool {
        let Some((byte, bit)) = position(minute) else { return false };
        let before = (self.up[byte], self.maintenance[byte]);
        self.up[byte] |= bit;
        if maintenance {
            self.maintenance[byte] |= bit;
        }
        before != (self.up[byte], self.maintenance[byte])
    }

    pub fn is_up(&self, minute: usize) -> bool {
        position(minute).is_some_and(|(byte, bit)| self.up[byte] & bit != 0)
    }

    pub fn is_maintenance(&self, minute: usize) -> bool {
        position(minute).is_some_and(|(byte, bit)| self.maintenance[byte] & bit != 0)
    }

    /// The first minute recorded up, if any.
    pub fn first_up(&self) -> Option<usize> {
        (0..MINUTES_PER_DAY).find(|&m| self.is_up(m))
    }
}

fn position(minute: usize) -> Option<(usize, u8)> {
    (minute < MINUTES_PER_DAY).then(|| (minute / 8, 1u8 << (minute % 8)))
}

/// The UTC day number (days since the Unix epoch) of `ms`.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// `YYYY-MM-DD` of a day number.
pub fn day_key(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day.saturating_mul(DAY_MS))
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn parse_day_key(key: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(key, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((date - epoch).num_days())
}

/// The day records in the state store.
#[derive(Clone)]
pub struct Availability {
    meta: Arc<dyn MetaStore>,
}

impl Availability {
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        Availability { meta }
    }

    /// Records that the service answered in the minute of `now_ms` (inside a maintenance window if
    /// `maintenance`). Writes only if the minute was not recorded yet, by this node or another.
    pub async fn record(&self, now_ms: i64, maintenance: bool) -> Result<(), MetaError> {
        let day = day_of(now_ms);
        let key = day_key(day);
        let minute = usize::try_from((now_ms - day * DAY_MS) / MINUTE_MS).unwrap_or(0);
        for _ in 0..CAS_ATTEMPTS {
            let current = self.meta.get(COLLECTION, &key).await?;
            let mut record = current.as_deref().and_then(DayRecord::decode).unwrap_or_default();
            if current.is_some() && DayRecord::decode(current.as_deref().unwrap_or_default()).is_none() {
                tracing::error!(day = %key, "unreadable availability record replaced");
            }
            if !record.set(minute, maintenance) {
                return Ok(());
            }
            if self.meta.compare_and_set(COLLECTION, &key, current, Some(record.encode())).await? {
                return Ok(());
            }
        }
        tracing::warn!(day = %key, "availability record contended; this minute is left to the other nodes");
        Ok(())
    }

    /// Every day record, by day number.
    pub async fn load(&self) -> Result<BTreeMap<i64, DayRecord>, MetaError> {
        let mut out = BTreeMap::new();
        for (key, value) in self.meta.scan(COLLECTION, "").await? {
            match (parse_day_key(&key), DayRecord::decode(&value)) {
                (Some(day), Some(record)) => {
                    out.insert(day, record);
                }
                _ => tracing::error!(day = %key, "unreadable availability record skipped"),
            }
        }
        Ok(out)
    }

    /// Forgets days older than [`KEEP_DAYS`] before `now_ms`.
    pub async fn prune(&self, now_ms: i64) -> Result<usize, MetaError> {
        let oldest = day_of(now_ms) - KEEP_DAYS;
        let mut pruned = 0;
        for (key, _) in self.meta.scan(COLLECTION, "").await? {
            if parse_day_key(&key).is_some_and(|day| day < oldest) {
                self.meta.delete(COLLECTION, &key).await?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }
}

/// Uptime over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Uptime {
    pub days: u32,
    /// Minutes since the window's start or the service's first record, whichever is later.
    pub elapsed_minutes: u64,
    /// Minutes the service answered in.
    pub up_minutes: u64,
    /// Minutes inside maintenance windows (planned; answered or not).
    pub maintenance_minutes: u64,
    /// Minutes without an answer outside any maintenance window.
    pub unplanned_down_minutes: u64,
    /// `up / elapsed`, percent; `None` before the first full minute.
    pub uptime_percent: Option<f64>,
    /// `(elapsed - unplanned) / elapsed`, percent: planned downtime is not a breach.
    pub sla_percent: Option<f64>,
}

/// One day of the per-day series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayUptime {
    pub day: String,
    pub elapsed_minutes: u64,
    pub up_minutes: u64,
    pub maintenance_minutes: u64,
    pub unplanned_down_minutes: u64,
    /// `None`: the service did not exist yet that day.
    pub uptime_percent: Option<f64>,
}

/// Uptime windows and the per-day series.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AvailabilityReport {
    /// The first recorded minute (RFC 3339), if any.
    pub since: Option<String>,
    pub windows: Vec<Uptime>,
    /// The last [`DAILY_DAYS`] UTC days, oldest first (today last, so far).
    pub daily: Vec<DayUptime>,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    elapsed: u64,
    up: u64,
    maintenance: u64,
    unplanned: u64,
}

impl Counts {
    fn add(&mut self, up: bool, planned: bool) {
        self.elapsed += 1;
        self.up += u64::from(up);
        self.maintenance += u64::from(planned);
        self.unplanned += u64::from(!up && !planned);
    }
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    // Two decimals are all a reader can use; rounding here keeps JSON free of float noise.
    (whole > 0).then(|| (part as f64 * 10_000.0 / whole as f64).round() / 100.0)
}

/// Uptime at `now_ms` from the day records and the planned windows (`(starts_at_ms, ends_at_ms)`).
///
/// Minutes run from the later of the window's start and the first recorded minute up to the current minute,
/// which counts only once it is recorded (it is still in progress).
pub fn summarize(
    records: &BTreeMap<i64, DayRecord>,
    planned: &[(i64, i64)],
    now_ms: i64,
) -> AvailabilityReport {
    let Some(first) = records.iter().find_map(|(day, r)| r.first_up().map(|m| day * 1440 + m as i64)) else {
        return AvailabilityReport::default();
    };
    let now_minute = now_ms.div_euclid(MINUTE_MS);
    let up_at = |minute: i64| -> (bool, bool) {
        let day = minute.div_euclid(1440);
        let m = usize::try_from(minute.rem_euclid(1440)).unwrap_or(0);
        records.get(&day).map_or((false, false), |r| (r.is_up(m), r.is_maintenance(m)))
    };
    let end = if up_at(now_minute).0 { now_minute + 1 } else { now_minute };
    let longest = i64::from(WINDOWS.iter().copied().max().unwrap_or(90));
    let daily_start_day = day_of(now_ms) - i64::from(DAILY_DAYS) + 1;
    let scan_start = first.max((end - longest * 1440).min(daily_start_day * 1440));
    let mut windows = [Counts::default(); WINDOWS.len()];
    let mut daily = vec![Counts::default(); DAILY_DAYS as usize];
    for minute in scan_start..end {
        let (up, in_maintenance) = up_at(minute);
        let (from, to) = (minute * MINUTE_MS, (minute + 1) * MINUTE_MS);
        let planned = in_maintenance || planned.iter().any(|&(s, e)| s < to && e > from);
        for (counts, days) in windows.iter_mut().zip(WINDOWS) {
            if minute >= end - i64::from(days) * 1440 {
                counts.add(up, planned);
            }
        }
        let index = minute.div_euclid(1440) - daily_start_day;
        if let Some(counts) = usize::try_from(index).ok().and_then(|i| daily.get_mut(i)) {
            counts.add(up, planned);
        }
    }
    AvailabilityReport {
        since: Some(crate::maintenance::rfc3339(first * MINUTE_MS)),
        windows: windows
            .iter()
            .zip(WINDOWS)
            .map(|(c, days)| Uptime {
                days,
                elapsed_minutes: c.elapsed,
                up_minutes: c.up,
                maintenance_minutes: c.maintenance,
                unplanned_down_minutes: c.unplanned,
                uptime_percent: percent(c.up, c.elapsed),
                sla_percent: percent(c.elapsed - c.unplanned, c.elapsed),
            })
            .collect(),
        daily: daily
            .iter()
            .enumerate()
            .map(|(i, c)| DayUptime {
                day: day_key(daily_start_day + i as i64),
                elapsed_minutes: c.elapsed,
                up_minutes: c.up,
                maintenance_minutes: c.maintenance,
                unplanned_down_minutes: c.unplanned,
                uptime_percent: percent(c.up, c.elapsed),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-10T00:00:00Z.
    const T0: i64 = 20_463 * DAY_MS;

    fn records(up_minutes: impl IntoIterator<Item = i64>, maintenance: &[i64]) -> BTreeMap<i64, DayRecord> {
        let mut out: BTreeMap<i64, DayRecord> = BTreeMap::new();
        for minute in up_minutes {
            let day = minute.div_euclid(1440);
            let m = usize::try_from(minute.rem_euclid(1440)).unwrap();
            out.entry(day).or_default().set(m, maintenance.contains(&minute));
        }
        out
    }

    fn minute(ms: i64) -> i64 {
        ms / MINUTE_MS
    }

    #[test]
    fn day_record_round_trips_and_setting_twice_changes_nothing() {
        let mut r = DayRecord::default();
        assert!(r.set(0, false) && r.set(1439, true));
        assert!(!r.set(0, false), "idempotent");
        assert!(!r.set(1440, false), "out of range is ignored");
        let decoded = DayRecord::decode(&r.encode()).unwrap();
        assert_eq!(decoded, r);
        assert!(decoded.is_up(0) && !decoded.is_maintenance(0) && decoded.is_maintenance(1439));
        assert_eq!(decoded.first_up(), Some(0));
        assert_eq!(DayRecord::decode(b"junk"), None);
    }

    #[test]
    fn day_keys_are_utc_dates_and_parse_back() {
        assert_eq!(day_key(day_of(T0)), "2026-01-10");
        assert_eq!(parse_day_key("2026-01-10"), Some(day_of(T0)));
        assert_eq!(day_of(T0 - 1), day_of(T0) - 1);
    }

    #[test]
    fn time_before_the_first_record_is_not_downtime() {
        // Service born 10 minutes before "now", up ever since (the current minute recorded too).
        let start = minute(T0) - 10;
        let report = summarize(&records(start..=minute(T0), &[]), &[], T0 + 30_000);
        let week = &report.windows[0];
        assert_eq!((week.days, week.elapsed_minutes, week.up_minutes), (7, 11, 11));
        assert_eq!(week.uptime_percent, Some(100.0));
        assert_eq!(report.since.as_deref(), Some("2026-01-09T23:50:00.000Z"));
    }

    #[test]
    fn the_current_minute_counts_only_once_recorded() {
        let start = minute(T0) - 4;
        let report = summarize(&records(start..minute(T0), &[]), &[], T0 + 10_000);
        assert_eq!((report.windows[0].elapsed_minutes, report.windows[0].up_minutes), (4, 4));
    }

    #[test]
    fn unplanned_gaps_lower_uptime_and_sla_alike() {
        // 100 minutes of life, 25 of them without a heartbeat and no window.
        let start = minute(T0) - 99;
        let up = (start..=minute(T0)).filter(|m| !(start + 50..start + 75).contains(m));
        let report = summarize(&records(up, &[]), &[], T0);
        let w = &report.windows[0];
        assert_eq!(
            (w.elapsed_minutes, w.up_minutes, w.unplanned_down_minutes, w.maintenance_minutes),
            (100, 75, 25, 0)
        );
        assert_eq!((w.uptime_percent, w.sla_percent), (Some(75.0), Some(75.0)));
    }

    #[test]
    fn planned_downtime_is_reported_apart_and_is_no_sla_breach() {
        // 100 minutes; the service was stopped for 20 of them inside a window, and answered 10 more minutes
        // inside the window (recorded as maintenance minutes).
        let start = minute(T0) - 99;
        let stopped = start + 40..start + 60;
        let up: Vec<i64> = (start..=minute(T0)).filter(|m| !stopped.contains(m)).collect();
        let answered_in_window: Vec<i64> = (start + 60..start + 70).collect();
        let window = ((start + 40) * MINUTE_MS, (start + 60) * MINUTE_MS);
        let report = summarize(&records(up, &answered_in_window), &[window], T0);
        let w = &report.windows[0];
        assert_eq!((w.elapsed_minutes, w.up_minutes), (100, 80));
        assert_eq!((w.maintenance_minutes, w.unplanned_down_minutes), (30, 0));
        assert_eq!((w.uptime_percent, w.sla_percent), (Some(80.0), Some(100.0)));
    }

    #[test]
    fn windows_cover_their_own_number_of_days() {
        // Up continuously for 40 days, except a 1440-minute gap 20 days ago.
        let start = minute(T0) - 40 * 1440 + 1;
        let gap = minute(T0) - 20 * 1440..minute(T0) - 19 * 1440;
        let up = (start..=minute(T0)).filter(|m| !gap.contains(m));
        let report = summarize(&records(up, &[]), &[], T0);
        let by_days: Vec<(u32, u64, u64)> =
            report.windows.iter().map(|w| (w.days, w.elapsed_minutes, w.unplanned_down_minutes)).collect();
        assert_eq!(by_days, [(7, 7 * 1440, 0), (30, 30 * 1440, 1440), (90, 40 * 1440, 1440)]);
        assert_eq!(report.daily.len(), 30);
        assert_eq!(report.daily.last().map(|d| d.day.as_str()), Some("2026-01-10"));
        let worst = report.daily.iter().filter(|d| d.uptime_percent == Some(0.0)).count();
        assert_eq!(worst, 1, "the day of the gap");
    }

    #[test]
    fn days_before_the_service_existed_have_no_value() {
        // Born five minutes before midnight: yesterday has 5 minutes, today 1, the 28 days before nothing.
        let report = summarize(&records(minute(T0) - 5..=minute(T0), &[]), &[], T0);
        assert!(report.daily[..28].iter().all(|d| d.uptime_percent.is_none() && d.elapsed_minutes == 0));
        let last: Vec<u64> = report.daily[28..].iter().map(|d| d.elapsed_minutes).collect();
        assert_eq!(last, [5, 1]);
        assert_eq!(summarize(&BTreeMap::new(), &[], T0), AvailabilityReport::default());
    }
}
