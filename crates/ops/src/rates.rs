//! Per-topic publish rates from samples of the topics' latest offsets.
//!
//! Offsets are dense and never reused, so the number of events published between two moments is the
//! difference of a topic's summed latest offsets. Every [`SLOT_MS`] one sample of every topic is kept in the
//! [`MetaStore`] (collection [`COLLECTION`], key the slot's UTC start `YYYY-MM-DDTHH:MM`, value a JSON map
//! topic → summed latest offset), for [`KEEP_MS`]. Nodes write a slot only if it lacks a topic they know, so
//! one node or many write about once per slot; the first sample of a slot wins.

use std::collections::BTreeMap;
use std::sync::Arc;

use esgf_events_meta::{MetaError, MetaStore};
use serde::Serialize;

pub const COLLECTION: &str = "publish_samples";

/// Sampling period.
pub const SLOT_MS: i64 = 5 * 60_000;
/// Samples kept: a day plus the hour the first bar of the chart needs, plus slack.
pub const KEEP_MS: i64 = 26 * 3_600_000;
const HOUR_MS: i64 = 3_600_000;
/// Hours in the publish-rate chart.
pub const CHART_HOURS: i64 = 24;

const CAS_ATTEMPTS: usize = 8;

/// Topic → summed latest offset.
pub type Totals = BTreeMap<String, u64>;

fn slot_key(slot_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(slot_ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M").to_string())
        .unwrap_or_default()
}

fn parse_slot_key(key: &str) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(key, "%Y-%m-%dT%H:%M").ok()?;
    Some(t.and_utc().timestamp_millis())
}

fn slot_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(SLOT_MS)
}

#[derive(Clone)]
pub struct Samples {
    meta: Arc<dyn MetaStore>,
}

impl Samples {
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        Samples { meta }
    }

    /// Adds `totals` to the slot of `now_ms` for the topics the slot lacks. One read when nothing is missing.
    pub async fn sample(&self, now_ms: i64, totals: &Totals) -> Result<(), MetaError> {
        let key = slot_key(slot_of(now_ms));
        for _ in 0..CAS_ATTEMPTS {
            let current = self.meta.get(COLLECTION, &key).await?;
            let mut stored: Totals =
                current.as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
            let before = stored.len();
            for (topic, latest) in totals {
                stored.entry(topic.clone()).or_insert(*latest);
            }
            if stored.len() == before && current.is_some() {
                return Ok(());
            }
            let bytes = serde_json::to_vec(&stored).unwrap_or_default();
            if self.meta.compare_and_set(COLLECTION, &key, current, Some(bytes.into())).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Every sample, by slot start.
    pub async fn load(&self) -> Result<BTreeMap<i64, Totals>, MetaError> {
        let mut out = BTreeMap::new();
        for (key, value) in self.meta.scan(COLLECTION, "").await? {
            match (parse_slot_key(&key), serde_json::from_slice::<Totals>(&value)) {
                (Some(slot), Ok(totals)) => {
                    out.insert(slot, totals);
                }
                _ => tracing::error!(slot = %key, "unreadable publish sample skipped"),
            }
        }
        Ok(out)
    }

    /// Forgets samples older than [`KEEP_MS`].
    pub async fn prune(&self, now_ms: i64) -> Result<(), MetaError> {
        for (key, _) in self.meta.scan(COLLECTION, "").await? {
            if parse_slot_key(&key).is_some_and(|slot| slot < now_ms - KEEP_MS) {
                self.meta.delete(COLLECTION, &key).await?;
            }
        }
        Ok(())
    }
}

/// One topic's recent publish counts; `None` when no sample is old enough to tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicRate {
    pub topic: String,
    pub last_hour: Option<u64>,
    pub last_24h: Option<u64>,
}

/// One hour of the chart: events published in all topics from `hour` to the next (or to now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HourRate {
    /// The hour's start, RFC 3339.
    pub hour: String,
    pub events: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rates {
    pub topics: Vec<TopicRate>,
    /// The last [`CHART_HOURS`] hours, oldest first, the current one last.
    pub hourly: Vec<HourRate>,
}

/// Events a topic got from `base` to `now` (a recreated topic starts again from zero).
fn since(base: &Totals, now: &Totals, topic: &str) -> u64 {
    let latest = now.get(topic).copied().unwrap_or(0);
    latest.saturating_sub(base.get(topic).copied().unwrap_or(0))
}

fn total_since(base: &Totals, now: &Totals) -> u64 {
    now.keys().map(|topic| since(base, now, topic)).sum()
}

/// The earliest sample at or after `from_ms`, before `to_ms`.
fn first_in(samples: &BTreeMap<i64, Totals>, from_ms: i64, to_ms: i64) -> Option<&Totals> {
    samples.range(from_ms..to_ms).next().map(|(_, t)| t)
}

/// Rates at `now_ms`, from the stored samples and the topics' current totals.
///
/// "Last hour" counts from the earliest sample within the last hour (so up to [`SLOT_MS`] less than an hour);
/// an hour of the chart counts from its first sample to the next hour's first sample (or to now).
pub fn summarize(samples: &BTreeMap<i64, Totals>, now_ms: i64, current: &Totals) -> Rates {
    let window = |span: i64| first_in(samples, slot_of(now_ms - span), now_ms + 1);
    let (hour_base, day_base) = (window(HOUR_MS), window(CHART_HOURS * HOUR_MS));
    let topics = current
        .keys()
        .map(|topic| TopicRate {
            topic: topic.clone(),
            last_hour: hour_base.map(|base| since(base, current, topic)),
            last_24h: day_base.map(|base| since(base, current, topic)),
        })
        .collect();
    let this_hour = now_ms - now_ms.rem_euclid(HOUR_MS);
    let hourly = (0..CHART_HOURS)
        .rev()
        .map(|back| {
            let start = this_hour - back * HOUR_MS;
            let end = start + HOUR_MS;
            let base = first_in(samples, start, end);
            let next = if back == 0 { Some(current) } else { first_in(samples, end, end + HOUR_MS) };
            let events = match (base, next) {
                (Some(base), Some(next)) => Some(total_since(base, next)),
                _ => None,
            };
            HourRate { hour: crate::maintenance::rfc3339(start), events }
        })
        .collect();
    Rates { topics, hourly }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-10T00:00:00Z.
    const T0: i64 = 20_463 * 86_400_000;

    fn totals(pairs: &[(&str, u64)]) -> Totals {
        pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    #[test]
    fn slot_keys_round_trip() {
        assert_eq!(slot_key(T0 + SLOT_MS), "2026-01-10T00:05");
        assert_eq!(parse_slot_key("2026-01-10T00:05"), Some(T0 + SLOT_MS));
        assert_eq!(slot_of(T0 + SLOT_MS + 1234), T0 + SLOT_MS);
    }

    #[test]
    fn rates_are_differences_of_samples() {
        let mut samples = BTreeMap::new();
        samples.insert(T0 - 2 * HOUR_MS, totals(&[("a", 0)]));
        samples.insert(T0 - HOUR_MS, totals(&[("a", 100)]));
        samples.insert(T0 - HOUR_MS + SLOT_MS, totals(&[("a", 110)]));
        samples.insert(T0, totals(&[("a", 160), ("b", 5)]));
        let now = T0 + 30 * 60_000;
        let rates = summarize(&samples, now, &totals(&[("a", 200), ("b", 7)]));
        assert_eq!(
            rates.topics,
            [
                TopicRate { topic: "a".into(), last_hour: Some(40), last_24h: Some(200) },
                // Created after the day's oldest sample: counted from zero there.
                TopicRate { topic: "b".into(), last_hour: Some(2), last_24h: Some(7) },
            ]
        );
        let hourly: Vec<Option<u64>> = rates.hourly.iter().map(|h| h.events).collect();
        assert_eq!(hourly.len(), 24);
        assert_eq!(&hourly[21..], [Some(100), Some(65), Some(42)]);
        assert!(hourly[..21].iter().all(Option::is_none));
        assert_eq!(rates.hourly[23].hour, "2026-01-10T00:00:00.000Z");
    }

    #[test]
    fn no_samples_means_no_rates_rather_than_zero() {
        let rates = summarize(&BTreeMap::new(), T0, &totals(&[("a", 5)]));
        assert_eq!(rates.topics[0].last_hour, None);
        assert!(rates.hourly.iter().all(|h| h.events.is_none()));
    }
}
