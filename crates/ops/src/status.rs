//! The status recorder: one background task per node that keeps what the status page and `/metrics` show,
//! so no page view or scrape computes anything expensive on the request path.
//!
//! Every [`StatusConfig::tick`] (15 s by default) it refreshes consumer-group lag (committed offsets against
//! the partitions' latest offsets) into the `esgf_events_consumer_lag` gauge and the snapshot. Once a minute
//! it records the minute as up in the availability record ([`crate::availability`]), samples the topics'
//! latest offsets for publish rates ([`crate::rates`]) and recomputes uptime and rates. Once an hour it prunes
//! old records.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use esgf_events_engine::{Clock, LogStore};
use esgf_events_meta::MetaStore;
use esgf_events_meta::offsets::GroupOffsets;
use serde::Serialize;
use tokio::sync::watch;

use crate::availability::{Availability, AvailabilityReport, MINUTE_MS};
use crate::incidents::Incidents;
use crate::maintenance::MaintenanceState;
use crate::rates::{Rates, Samples, Totals};

/// Most (group, topic, partition) lag series kept; bounds the gauge's label set and the page.
pub const MAX_LAG_SERIES: usize = 10_000;

#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// How often lag is refreshed (and the minute's heartbeat looked at).
    pub tick: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig { tick: Duration::from_secs(15) }
    }
}

/// One consumer group's position in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    pub committed: u64,
    pub latest: u64,
    pub lag: u64,
}

/// What the last refreshes found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub availability: AvailabilityReport,
    pub rates: Rates,
    pub lag: Vec<PartitionLag>,
    /// The last refresh failed (the state store or the log did not answer): the service is degraded.
    pub failing: Option<String>,
}

pub struct StatusRecorder {
    store: Arc<dyn LogStore>,
    availability: Availability,
    samples: Samples,
    offsets: GroupOffsets,
    incidents: Arc<Incidents>,
    maintenance: Option<Arc<MaintenanceState>>,
    clock: Arc<dyn Clock>,
    config: StatusConfig,
    snapshot: RwLock<Arc<Snapshot>>,
}

impl StatusRecorder {
    pub fn new(
        store: Arc<dyn LogStore>,
        meta: Arc<dyn MetaStore>,
        maintenance: Option<Arc<MaintenanceState>>,
        clock: Arc<dyn Clock>,
        config: StatusConfig,
    ) -> Self {
        StatusRecorder {
            store,
            availability: Availability::new(Arc::clone(&meta)),
            samples: Samples::new(Arc::clone(&meta)),
            offsets: GroupOffsets::new(Arc::clone(&meta)),
            incidents: Arc::new(Incidents::new(meta)),
            maintenance,
            clock,
            config,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
        }
    }

    pub fn incidents(&self) -> &Arc<Incidents> {
        &self.incidents
    }

    /// The latest refresh's results.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        let mut guard = self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Snapshot::clone(&guard);
        change(&mut next);
        *guard = Arc::new(next);
    }

    /// Refreshes until `stop` turns true. The first tick is immediate, so a node records its first minute
    /// (and the page has numbers) right after start-up.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.config.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_minute = i64::MIN;
        let mut last_prune: Option<i64> = None;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = self.clock.now_ms();
            let minute = now.div_euclid(MINUTE_MS);
            let mut failure = None;
            if minute != last_minute {
                match self.per_minute(now).await {
                    Ok(()) => last_minute = minute,
                    Err(err) => failure = Some(err),
                }
            }
            if let Err(err) = self.refresh_lag().await {
                failure = failure.or(Some(err));
            }
            if last_prune.is_none_or(|last| now.saturating_sub(last) > 3_600_000) {
                last_prune = Some(now);
                if let Err(err) = self.availability.prune(now).await {
                    tracing::warn!(error = %err, "pruning availability records failed");
                }
                if let Err(err) = self.samples.prune(now).await {
                    tracing::warn!(error = %err, "pruning publish samples failed");
                }
            }
            if let Some(err) = &failure {
                tracing::warn!(error = %err, "status refresh failed; the status page shows the service degraded");
            }
            self.update(|s| s.failing = failure);
        }
    }

    /// The minute's heartbeat, publish sample, and the recomputed uptime and rates.
    pub async fn per_minute(&self, now_ms: i64) -> Result<(), String> {
        let in_maintenance = self.maintenance.as_ref().is_some_and(|m| m.active().is_some());
        self.availability.record(now_ms, in_maintenance).await.map_err(|e| e.to_string())?;
        let totals = self.totals().await?;
        self.samples.sample(now_ms, &totals).await.map_err(|e| e.to_string())?;
        let records = self.availability.load().await.map_err(|e| e.to_string())?;
        let planned: Vec<(i64, i64)> = self
            .maintenance
            .as_ref()
            .map(|m| m.all().iter().map(|w| (w.starts_at_ms, w.ends_at_ms)).collect())
            .unwrap_or_default();
        let availability = crate::availability::summarize(&records, &planned, now_ms);
        let samples = self.samples.load().await.map_err(|e| e.to_string())?;
        let rates = crate::rates::summarize(&samples, now_ms, &totals);
        self.update(|s| {
            s.availability = availability;
            s.rates = rates;
        });
        Ok(())
    }

    /// Every topic's latest offsets, summed over its partitions.
    async fn totals(&self) -> Result<Totals, String> {
        let mut totals = Totals::new();
        for topic in self.store.list_topics().await.map_err(|e| e.to_string())? {
            let mut sum = 0u64;
            for partition in 0..topic.partitions {
                match self.store.offsets(&topic.name, partition).await {
                    Ok(offsets) => sum = sum.saturating_add(offsets.latest),
                    // Deleted since it was listed.
                    Err(err) => tracing::debug!(topic = %topic.name, error = %err, "offsets unavailable"),
                }
            }
            totals.insert(topic.name, sum);
        }
        Ok(totals)
    }

    /// Lag of every committed group position; sets the gauge.
    pub async fn refresh_lag(&self) -> Result<(), String> {
        let committed = self.offsets.all(MAX_LAG_SERIES).await.map_err(|e| e.to_string())?;
        let mut latest: BTreeMap<(String, u32), Option<u64>> = BTreeMap::new();
        let mut lag = Vec::with_capacity(committed.len());
        for (group, entry) in committed {
            let key = (entry.topic.clone(), entry.partition);
            let end = match latest.get(&key) {
                Some(end) => *end,
                None => {
                    let end = self.store.offsets(&entry.topic, entry.partition).await.ok().map(|o| o.latest);
                    latest.insert(key, end);
                    end
                }
            };
            // A topic deleted since the group committed has no lag to speak of.
            let Some(end) = end else { continue };
            let value = end.saturating_sub(entry.offset);
            crate::metrics::consumer_lag(&group, &entry.topic, entry.partition, value);
            lag.push(PartitionLag {
                group,
                topic: entry.topic,
                partition: entry.partition,
                committed: entry.offset,
                latest: end,
                lag: value,
            });
        }
        self.update(|s| s.lag = lag);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::Incident;
    use crate::pages::{StatusTopic, StatusView, status_html};
    use esgf_events_engine::{EmbeddedConfig, EmbeddedStore, ManualClock, NewRecord, TopicConfig};
    use esgf_events_meta::RedbMetaStore;

    /// 2026-01-10T00:00:30Z.
    const NOW: i64 = 20_463 * 86_400_000 + 30_000;

    /// Regression: the first tick computed `now - i64::MIN`, an overflow that panicked the recorder in debug
    /// builds (and, while the panic hook printed its backtrace, held up every other log line of the process).
    #[tokio::test]
    async fn the_recorder_loop_records_the_first_minute_and_stops_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(NOW));
        let store: Arc<dyn LogStore> = Arc::new(
            EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("log")), clock.clone()).expect("store"),
        );
        let meta: Arc<dyn MetaStore> =
            Arc::new(RedbMetaStore::open(&dir.path().join("m.redb")).expect("meta"));
        let recorder = Arc::new(StatusRecorder::new(
            Arc::clone(&store),
            Arc::clone(&meta),
            None,
            clock.clone(),
            StatusConfig { tick: Duration::from_millis(10) },
        ));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(&recorder).run(stopped));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while recorder.snapshot().availability.since.is_none() {
            assert!(!task.is_finished(), "the recorder loop ended on its own");
            assert!(tokio::time::Instant::now() < deadline, "no minute recorded");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).expect("stop");
        task.await.expect("the recorder loop ends without a panic");
        store.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn a_refresh_records_the_minute_the_rates_and_the_lag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(NOW));
        let store: Arc<dyn LogStore> = Arc::new(
            EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("log")), clock.clone()).expect("store"),
        );
        store
            .create_topic("t", TopicConfig { partitions: 2, ..TopicConfig::default() })
            .await
            .expect("topic");
        let records = (0..5).map(|i| NewRecord::from_value(format!("{i}"))).collect();
        store.append("t", 1, records).await.expect("append");
        let meta: Arc<dyn MetaStore> =
            Arc::new(RedbMetaStore::open(&dir.path().join("m.redb")).expect("meta"));
        GroupOffsets::new(Arc::clone(&meta))
            .commit("indexer", vec![("t".into(), 1, 2, None)])
            .await
            .expect("commit");
        let recorder = StatusRecorder::new(
            Arc::clone(&store),
            Arc::clone(&meta),
            None,
            clock.clone(),
            StatusConfig::default(),
        );

        recorder.per_minute(NOW).await.expect("minute");
        recorder.refresh_lag().await.expect("lag");
        // Another node recording the same minute changes nothing.
        let other = StatusRecorder::new(Arc::clone(&store), meta, None, clock, StatusConfig::default());
        other.per_minute(NOW + 1_000).await.expect("minute");

        let snapshot = recorder.snapshot();
        let week = &snapshot.availability.windows[0];
        assert_eq!((week.elapsed_minutes, week.up_minutes, week.uptime_percent), (1, 1, Some(100.0)));
        assert_eq!(snapshot.rates.topics.len(), 1);
        assert_eq!(snapshot.rates.topics[0].last_hour, Some(0), "sampled now: nothing published since");
        assert_eq!(
            snapshot.lag,
            [PartitionLag {
                group: "indexer".into(),
                topic: "t".into(),
                partition: 1,
                committed: 2,
                latest: 5,
                lag: 3
            }]
        );
        store.shutdown().await.expect("shutdown");
    }

    #[test]
    fn the_status_page_shows_uptime_incidents_and_accessible_charts() {
        let snapshot = Snapshot {
            availability: crate::availability::summarize(
                &std::iter::once((20_463, {
                    let mut r = crate::availability::DayRecord::default();
                    r.set(0, false);
                    r
                }))
                .collect(),
                &[],
                NOW,
            ),
            rates: crate::rates::summarize(&Default::default(), NOW, &Default::default()),
            lag: vec![PartitionLag {
                group: "g".into(),
                topic: "t".into(),
                partition: 0,
                committed: 1,
                latest: 4,
                lag: 3,
            }],
            failing: None,
        };
        let incident = |id: &str, ended: Option<i64>| Incident {
            id: id.into(),
            started_ms: NOW - 600_000,
            ended_ms: ended,
            detected_by: "monitor <on> host".into(),
            detail: "/readyz unreachable".into(),
            recorded_ms: NOW,
        };
        let mut view = StatusView::new(&[], NOW);
        view.topics.push(StatusTopic {
            name: "t".into(),
            partitions: 1,
            retained: 4,
            latest: 4,
            last_hour: None,
            last_24h: None,
        });
        view.add_records(&snapshot, &[incident("b", Some(NOW - 300_000))], NOW);
        assert_eq!(view.state, "operational");
        assert_eq!((view.rto.incidents, view.rto.mean_seconds), (1, Some(300)));
        let html = status_html(&view).expect("renders");
        for text in [
            "id=\"incident-b\"",
            "5 min 0 s",
            "monitor &lt;on&gt; host",
            "planned downtime is not an SLA breach",
            "<th scope=\"row\">7 days</th>",
            "<td class=\"num\">3</td>",
        ] {
            assert!(html.contains(text), "{text} in {html}");
        }
        let svgs: Vec<&str> =
            html.split("<svg").skip(1).map(|s| s.split("</svg>").next().unwrap_or("")).collect();
        assert_eq!(svgs.len(), 2);
        for svg in svgs {
            let svg = format!("<svg{svg}</svg>");
            crate::svg::tests::check_well_formed(&svg).unwrap_or_else(|e| panic!("{e}: {svg}"));
            assert!(svg.contains("role=\"img\""));
        }

        // An open incident makes an otherwise operational service degraded.
        let mut view = StatusView::new(&[], NOW);
        view.add_records(&snapshot, &[incident("a", None)], NOW);
        assert_eq!(view.state, "degraded");
        assert!(view.degraded.as_deref().is_some_and(|d| d.contains("/readyz unreachable")));
    }
}
