//! Following a topic into the index.
//!
//! One fetch task per partition long-polls its partition and hands pages over a bounded channel to a single
//! applier, which commits each page with its offset ([`Index::apply_page`]) on a blocking thread. A quiet
//! partition's long-poll therefore never delays a busy one, and a slow disk slows the reads down instead of
//! filling memory. Order is kept within a partition, which is all the index needs: every event about one
//! item carries the item's id as its key, so they all live in one partition.
//!
//! Error reports queued by a commit are published to `<topic>.errors` right after it. Transient failures
//! (server away, busy, restarting) are retried with backoff; refusals (unknown topic, offsets out of range)
//! end the run, because continuing would skip events.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::index::{ErrorPolicy, Index, IndexError, PageEvent};
use crate::source::{Source, SourceError, TopicInfo};

/// Longest pause between retries of a transient failure.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A long-poll that returns empty sooner than this (a server with a short maximum wait) is followed by a pause,
/// so a quiet partition is not polled in a tight loop.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Pages queued between the fetch tasks and the applier.
const QUEUED_PAGES: usize = 4;
/// How often a following replica logs its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(30);
/// Reports published per flush, so a backlog does not hold up applying.
const REPORTS_PER_FLUSH: usize = 100;

/// How to follow.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    pub topic: String,
    pub policy: ErrorPolicy,
    /// Stop once every partition reached the end it had at the start (for scripts and tests).
    pub exit_when_caught_up: bool,
    /// Stop once every partition reached exactly these offsets (another replica's, to compare with it);
    /// partitions not named are not read. Takes precedence over `exit_when_caught_up`.
    pub stop_at: Option<BTreeMap<u32, u64>>,
    /// Publishes error reports (`None`: the source events are read from). A consumer token may read but not
    /// publish, so reports may need another principal's token.
    pub report_source: Option<Source>,
    /// Events per read, 1..=1000.
    pub fetch_size: u32,
    /// How long one long-poll waits on the server.
    pub wait: Duration,
    /// Concurrent reads, whatever the partition count.
    pub max_in_flight: usize,
    /// With `exit_when_caught_up`: give up after the server has been unreachable this long.
    pub give_up_after: Duration,
}

impl FollowOptions {
    pub fn new(topic: impl Into<String>) -> FollowOptions {
        FollowOptions {
            topic: topic.into(),
            policy: ErrorPolicy::Continue,
            exit_when_caught_up: false,
            stop_at: None,
            report_source: None,
            fetch_size: 1000,
            wait: Duration::from_secs(20),
            max_in_flight: 32,
            give_up_after: Duration::from_secs(120),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowSummary {
    pub applied: u64,
    pub rejected: u64,
    pub pages: u64,
    /// The index's offsets at the end.
    pub offsets: BTreeMap<u32, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{context}")]
    Source {
        context: String,
        #[source]
        source: Box<SourceError>,
    },
    #[error(
        "stopped on error (--stop-on-error): partition {partition} offset {offset}: {kind}: {detail}; the \
         index stays before this event"
    )]
    Stopped { partition: u32, offset: u64, kind: &'static str, detail: String },
    #[error(
        "partition {partition}: the index is at offset {stored} but the topic's oldest retained event is at \
         {earliest}; the events in between are gone, so this index cannot catch up: bootstrap a new replica \
         from a recent snapshot"
    )]
    BehindRetention { partition: u32, stored: u64, earliest: u64 },
    #[error(
        "partition {partition}: the index is at offset {stored} but the topic ends at {latest}; was the topic \
         recreated, or is this another server?"
    )]
    AheadOfTopic { partition: u32, stored: u64, latest: u64 },
    #[error(
        "the index holds offsets for partition {partition}, but the topic has only {partitions} partitions"
    )]
    UnknownPartition { partition: u32, partitions: u32 },
    #[error("partition {partition} returned offset {found} when {expected} was asked for")]
    UnexpectedOffset { partition: u32, expected: u64, found: u64 },
    #[error(
        "partition {partition}: the index is already at offset {stored}, past the target {target}; compare the \
         other way round (bring the other index to this one's offsets)"
    )]
    PastTarget { partition: u32, stored: u64, target: u64 },
    #[error("an internal task failed: {0}")]
    Task(String),
}

/// What a fetch task tells the applier.
enum Fetched {
    Page { partition: u32, events: Vec<PageEvent> },
    Failed(FollowError),
}

/// Follows `options.topic` into `index` until `shutdown` completes, a refusal or storage failure ends it, or
/// every partition reached its target (`stop_at`, or with `exit_when_caught_up` the end it had at the start).
pub async fn follow(
    mut index: Index,
    source: Source,
    options: FollowOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<FollowSummary, FollowError> {
    let topic = options.topic.clone();
    if let Some(indexed) = index.topic().filter(|indexed| *indexed != topic) {
        return Err(IndexError::TopicMismatch { indexed: indexed.to_owned(), requested: topic }.into());
    }
    let report_source = options.report_source.clone().unwrap_or_else(|| source.clone());
    let mut reporter = Reporter::new(&topic, report_source);
    let mut shutdown = std::pin::pin!(shutdown);

    let info = tokio::select! {
        info = describe_with_retry(&source, &options) => info?,
        () = &mut shutdown => return finish(index, &mut reporter, FollowSummary::default()).await,
    };
    // Bound only once the topic is known to exist, so a mistyped name does not claim a new index.
    index.bind_topic(&topic)?;
    let stored = index.offsets()?;
    let starts = start_offsets(&info, &stored)?;
    let ends: BTreeMap<u32, u64> = (0..info.partitions).map(|p| (p, info.range(p).latest)).collect();
    let targets = targets(&options, &info, &starts, &ends)?;
    tracing::info!(
        topic = %topic,
        partitions = info.partitions,
        items = index.item_count()?,
        behind = ends.iter().map(|(p, end)| end.saturating_sub(starts[p])).sum::<u64>(),
        "following"
    );

    // Reports a previous run queued but could not deliver.
    reporter.flush(&index).await?;

    let (tx, mut rx) = mpsc::channel(QUEUED_PAGES);
    let permits = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let mut fetchers = JoinSet::new();
    for (&partition, &start) in &starts {
        let stop_at = targets.as_ref().map(|targets| targets.get(&partition).copied().unwrap_or(start));
        let fetcher = Fetcher {
            source: source.clone(),
            wait: options.wait,
            fetch_size: options.fetch_size,
            options: options.clone(),
            partition,
            offset: start,
            stop_at,
            permits: Arc::clone(&permits),
            tx: tx.clone(),
        };
        fetchers.spawn(fetcher.run());
    }
    // The channel closes when every fetcher is done: that is "caught up" with --exit-when-caught-up.
    drop(tx);

    let mut summary = FollowSummary::default();
    let mut progress = Progress::new(targets.as_ref().unwrap_or(&ends), &starts);
    loop {
        let fetched = tokio::select! {
            biased;
            () = &mut shutdown => {
                tracing::info!(topic = %topic, "stopping");
                break;
            }
            fetched = rx.recv() => fetched,
        };
        let Some(fetched) = fetched else { break };
        let (partition, events) = match fetched {
            Fetched::Page { partition, events } => (partition, events),
            Fetched::Failed(error) => return Err(error),
        };
        let policy = options.policy;
        // SQLite blocks (fsync per commit): keep it off the async thread, so reads go on meanwhile.
        let (returned, result) = tokio::task::spawn_blocking(move || {
            let result = index.apply_page(partition, &events, policy);
            (index, result)
        })
        .await
        .map_err(|e| FollowError::Task(e.to_string()))?;
        index = returned;
        let outcome = result?;
        summary.pages += 1;
        summary.applied += outcome.applied as u64;
        summary.rejected += outcome.rejected as u64;
        tracing::debug!(
            topic = %topic,
            partition,
            next_offset = outcome.next_offset,
            applied = outcome.applied,
            rejected = outcome.rejected,
            duplicates = outcome.duplicates,
            "page committed"
        );
        if outcome.rejected > 0 {
            reporter.flush(&index).await?;
        }
        if let Some(stopped) = outcome.stopped {
            return Err(FollowError::Stopped {
                partition,
                offset: stopped.offset,
                kind: stopped.kind,
                detail: stopped.detail,
            });
        }
        progress.committed(&topic, partition, outcome.next_offset, &summary);
    }
    fetchers.abort_all();
    finish(index, &mut reporter, summary).await
}

/// Delivers what reports it can, and says where the index stands.
async fn finish(
    index: Index,
    reporter: &mut Reporter,
    mut summary: FollowSummary,
) -> Result<FollowSummary, FollowError> {
    reporter.flush(&index).await?;
    summary.offsets = index.offsets()?;
    tracing::info!(
        topic = index.topic().unwrap_or_default(),
        applied = summary.applied,
        rejected = summary.rejected,
        items = index.item_count()?,
        offsets = ?summary.offsets,
        "stopped following"
    );
    Ok(summary)
}

/// Where each partition starts: the index's offset, checked against what the topic still holds, or the oldest
/// retained event for a partition the index has never read.
fn start_offsets(info: &TopicInfo, stored: &BTreeMap<u32, u64>) -> Result<BTreeMap<u32, u64>, FollowError> {
    if let Some((&partition, _)) = stored.iter().find(|(p, _)| **p >= info.partitions) {
        return Err(FollowError::UnknownPartition { partition, partitions: info.partitions });
    }
    let mut starts = BTreeMap::new();
    for partition in 0..info.partitions {
        let range = info.range(partition);
        let start = match stored.get(&partition) {
            Some(&stored) if stored < range.earliest => {
                return Err(FollowError::BehindRetention { partition, stored, earliest: range.earliest });
            }
            Some(&stored) if stored > range.latest => {
                return Err(FollowError::AheadOfTopic { partition, stored, latest: range.latest });
            }
            Some(&stored) => stored,
            None => range.earliest,
        };
        starts.insert(partition, start);
    }
    Ok(starts)
}

/// Where each partition stops, if the run is to end by itself: `stop_at` (which must not be behind the index;
/// a partition it does not name was never read there, so its target is the oldest retained event), else with
/// `exit_when_caught_up` the ends the topic had at the start.
fn targets(
    options: &FollowOptions,
    info: &TopicInfo,
    starts: &BTreeMap<u32, u64>,
    ends: &BTreeMap<u32, u64>,
) -> Result<Option<BTreeMap<u32, u64>>, FollowError> {
    let Some(stop_at) = &options.stop_at else {
        return Ok(options.exit_when_caught_up.then(|| ends.clone()));
    };
    if let Some((&partition, _)) = stop_at.iter().find(|(p, _)| **p >= info.partitions) {
        return Err(FollowError::UnknownPartition { partition, partitions: info.partitions });
    }
    let mut targets = BTreeMap::new();
    for (&partition, &start) in starts {
        let target = stop_at.get(&partition).copied().unwrap_or(info.range(partition).earliest);
        if start > target {
            return Err(FollowError::PastTarget { partition, stored: start, target });
        }
        targets.insert(partition, target);
    }
    Ok(Some(targets))
}

async fn describe_with_retry(source: &Source, options: &FollowOptions) -> Result<TopicInfo, FollowError> {
    let mut backoff = Backoff::new(options);
    loop {
        match source.describe(&options.topic).await {
            Ok(info) => return Ok(info),
            Err(error) if error.is_transient() && !backoff.exhausted() => {
                let pause = backoff.next(&error);
                tracing::warn!(topic = %options.topic, error = %error, retry_in = ?pause, "cannot describe the topic");
                tokio::time::sleep(pause).await;
            }
            Err(source) => {
                return Err(FollowError::Source {
                    context: format!("cannot describe topic '{}'", options.topic),
                    source: Box::new(source),
                });
            }
        }
    }
}

/// Doubling pauses up to [`MAX_BACKOFF`], or the server's `Retry-After`; "exhausted" once failures have
/// lasted `give_up_after` (only when the run is meant to end by itself).
struct Backoff {
    pause: Duration,
    failing_since: Option<Instant>,
    give_up_after: Option<Duration>,
}

impl Backoff {
    fn new(options: &FollowOptions) -> Backoff {
        Backoff {
            pause: Duration::from_millis(100),
            failing_since: None,
            give_up_after: (options.exit_when_caught_up || options.stop_at.is_some())
                .then_some(options.give_up_after),
        }
    }

    fn next(&mut self, error: &SourceError) -> Duration {
        self.failing_since.get_or_insert_with(Instant::now);
        let pause = error.retry_after().unwrap_or(self.pause).min(MAX_BACKOFF);
        self.pause = (self.pause * 2).min(MAX_BACKOFF);
        pause
    }

    fn exhausted(&self) -> bool {
        match (self.failing_since, self.give_up_after) {
            (Some(since), Some(limit)) => since.elapsed() >= limit,
            _ => false,
        }
    }

    fn reset(&mut self) {
        self.pause = Duration::from_millis(100);
        self.failing_since = None;
    }
}

/// Reads one partition from `offset` on, until `stop_at` (if any) or until the applier goes away.
struct Fetcher {
    source: Source,
    options: FollowOptions,
    /// The long-poll wait and page size in force: lowered if the server allows less than asked for.
    wait: Duration,
    fetch_size: u32,
    partition: u32,
    offset: u64,
    stop_at: Option<u64>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Fetched>,
}

impl Fetcher {
    async fn run(mut self) {
        if let Err(error) = self.fetch().await {
            let _ = self.tx.send(Fetched::Failed(error)).await;
        }
    }

    async fn fetch(&mut self) -> Result<(), FollowError> {
        let mut backoff = Backoff::new(&self.options);
        loop {
            if self.stop_at.is_some_and(|end| self.offset >= end) {
                return Ok(());
            }
            // Never read past the target: the page is cut there, and a smaller page asked for.
            let limit = match self.stop_at {
                Some(end) => self.fetch_size.min(u32::try_from(end - self.offset).unwrap_or(u32::MAX)),
                None => self.fetch_size,
            };
            let started = Instant::now();
            let result = {
                let Ok(_permit) = self.permits.acquire().await else { return Ok(()) };
                // A long-poll answers at once when there are events, so it costs a catch-up nothing.
                let wait = Some(self.wait);
                self.source.read(&self.options.topic, self.partition, self.offset, limit, wait).await
            };
            let mut page = match result {
                Ok(page) => {
                    backoff.reset();
                    page
                }
                Err(error) if self.shrink(error.refused_parameters()) => {
                    tracing::warn!(
                        topic = %self.options.topic,
                        partition = self.partition,
                        wait = ?self.wait,
                        fetch_size = self.fetch_size,
                        error = %error,
                        "the server allows less; asking for less"
                    );
                    continue;
                }
                Err(error) if error.is_transient() && !backoff.exhausted() => {
                    let pause = backoff.next(&error);
                    tracing::warn!(
                        topic = %self.options.topic,
                        partition = self.partition,
                        error = %error,
                        retry_in = ?pause,
                        "read failed; retrying"
                    );
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Err(source) => {
                    return Err(FollowError::Source {
                        context: format!(
                            "cannot read topic '{}' partition {} at offset {}",
                            self.options.topic, self.partition, self.offset
                        ),
                        source: Box::new(source),
                    });
                }
            };
            if let Some(end) = self.stop_at {
                page.events.retain(|event| event.offset < end);
                page.next_offset = page.next_offset.min(end);
            }
            let Some(first) = page.events.first() else {
                if started.elapsed() < MIN_POLL_INTERVAL {
                    tokio::time::sleep(MIN_POLL_INTERVAL - started.elapsed()).await;
                }
                continue;
            };
            if first.offset != self.offset {
                return Err(FollowError::UnexpectedOffset {
                    partition: self.partition,
                    expected: self.offset,
                    found: first.offset,
                });
            }
            self.offset = page.next_offset;
            let page = Fetched::Page { partition: self.partition, events: page.events };
            if self.tx.send(page).await.is_err() {
                return Ok(());
            }
        }
    }
}

impl Fetcher {
    /// Halves the refused `wait` or page size; false if neither can go lower (the refusal is then final).
    fn shrink(&mut self, refused: &[String]) -> bool {
        let mut shrunk = false;
        if refused.iter().any(|p| p == "wait") && !self.wait.is_zero() {
            self.wait = if self.wait > Duration::from_millis(100) { self.wait / 2 } else { Duration::ZERO };
            shrunk = true;
        }
        if refused.iter().any(|p| p == "limit") && self.fetch_size > 1 {
            self.fetch_size /= 2;
            shrunk = true;
        }
        shrunk
    }
}

/// Logs "caught up" once every partition reached the end it had at the start, and progress now and then.
struct Progress {
    behind: BTreeMap<u32, u64>,
    caught_up: bool,
    last_log: Instant,
    started: Instant,
}

impl Progress {
    fn new(ends: &BTreeMap<u32, u64>, starts: &BTreeMap<u32, u64>) -> Progress {
        let behind: BTreeMap<u32, u64> =
            ends.iter().filter(|(p, end)| **end > starts[*p]).map(|(p, end)| (*p, *end)).collect();
        Progress { caught_up: behind.is_empty(), behind, last_log: Instant::now(), started: Instant::now() }
    }

    fn committed(&mut self, topic: &str, partition: u32, next_offset: u64, summary: &FollowSummary) {
        if self.behind.get(&partition).is_some_and(|end| next_offset >= *end) {
            self.behind.remove(&partition);
        }
        if !self.caught_up && self.behind.is_empty() {
            self.caught_up = true;
            tracing::info!(topic, applied = summary.applied, rejected = summary.rejected, "caught up");
        }
        if self.last_log.elapsed() >= PROGRESS_INTERVAL {
            self.last_log = Instant::now();
            let rate = summary.applied as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                topic,
                applied = summary.applied,
                rejected = summary.rejected,
                events_per_second = rate.round(),
                "progress"
            );
        }
    }
}

/// Publishes queued error reports to `<topic>.errors`, once per report at least.
struct Reporter {
    errors_topic: String,
    source: Source,
    /// Cleared when the errors topic does not exist or the token may not publish there: reports are then only
    /// logged (they were, when the event was rejected).
    enabled: bool,
}

impl Reporter {
    fn new(topic: &str, source: Source) -> Reporter {
        Reporter { errors_topic: format!("{topic}.errors"), source, enabled: true }
    }

    /// Publishes pending reports, oldest first; a transient failure leaves the rest for the next flush.
    async fn flush(&mut self, index: &Index) -> Result<(), FollowError> {
        loop {
            let pending = index.pending_reports(REPORTS_PER_FLUSH)?;
            if pending.is_empty() {
                return Ok(());
            }
            for report in &pending {
                if !self.enabled {
                    index.remove_report(report.seq)?;
                    continue;
                }
                match self.source.publish(&self.errors_topic, &report.report).await {
                    Ok(()) => index.remove_report(report.seq)?,
                    Err(error) if error.is_transient() => {
                        tracing::warn!(errors_topic = %self.errors_topic, error = %error, "cannot deliver error reports yet; will retry");
                        return Ok(());
                    }
                    Err(error) if is_unusable_topic(&error) => {
                        tracing::warn!(
                            errors_topic = %self.errors_topic,
                            error = %error,
                            "error reports are only logged: the errors topic is missing or not writable with this token"
                        );
                        self.enabled = false;
                        index.remove_report(report.seq)?;
                    }
                    Err(error) => {
                        // This one report is refused (too large, say); it was logged when the event was rejected.
                        tracing::error!(
                            errors_topic = %self.errors_topic,
                            partition = report.partition,
                            offset = report.offset,
                            error = %error,
                            "error report refused; dropped"
                        );
                        index.remove_report(report.seq)?;
                    }
                }
            }
        }
    }
}

fn is_unusable_topic(error: &SourceError) -> bool {
    use reqwest::StatusCode;
    match error {
        SourceError::Refused { status, kind, .. } => {
            matches!(*status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                || (*status == StatusCode::NOT_FOUND && kind.as_deref() != Some("route-not-found"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::PartitionRange;

    fn topic(ranges: &[(u64, u64)]) -> TopicInfo {
        TopicInfo {
            name: "t".into(),
            partitions: ranges.len() as u32,
            offsets: ranges
                .iter()
                .enumerate()
                .map(|(p, &(earliest, latest))| PartitionRange { partition: p as u32, earliest, latest })
                .collect(),
        }
    }

    #[test]
    fn new_partitions_start_at_the_oldest_event_and_known_ones_where_the_index_is() {
        let info = topic(&[(0, 10), (5, 9)]);
        let starts = start_offsets(&info, &BTreeMap::from([(0, 7)])).unwrap();
        assert_eq!(starts, BTreeMap::from([(0, 7), (1, 5)]));
    }

    #[test]
    fn an_index_behind_retention_or_ahead_of_the_topic_is_refused() {
        let info = topic(&[(5, 10)]);
        assert!(matches!(
            start_offsets(&info, &BTreeMap::from([(0, 3)])),
            Err(FollowError::BehindRetention { stored: 3, earliest: 5, .. })
        ));
        assert!(matches!(
            start_offsets(&info, &BTreeMap::from([(0, 11)])),
            Err(FollowError::AheadOfTopic { stored: 11, latest: 10, .. })
        ));
        assert!(matches!(
            start_offsets(&info, &BTreeMap::from([(0, 10), (3, 1)])),
            Err(FollowError::UnknownPartition { partition: 3, partitions: 1 })
        ));
    }

    #[test]
    fn targets_come_from_stop_at_else_the_ends_and_must_not_be_behind_the_index() {
        let info = topic(&[(0, 10), (0, 10)]);
        let starts = BTreeMap::from([(0, 4), (1, 6)]);
        let ends = BTreeMap::from([(0, 10), (1, 10)]);
        let mut options = FollowOptions::new("t");
        assert_eq!(targets(&options, &info, &starts, &ends).unwrap(), None, "a follower never ends");
        options.exit_when_caught_up = true;
        assert_eq!(targets(&options, &info, &starts, &ends).unwrap(), Some(ends.clone()));
        options.stop_at = Some(BTreeMap::from([(0, 8), (1, 6)]));
        assert_eq!(targets(&options, &info, &starts, &ends).unwrap(), Some(BTreeMap::from([(0, 8), (1, 6)])));
        options.stop_at = Some(BTreeMap::from([(0, 8)]));
        assert!(
            matches!(
                targets(&options, &info, &starts, &ends),
                Err(FollowError::PastTarget { partition: 1, .. })
            ),
            "the other index never read partition 1, which this one did"
        );
        options.stop_at = Some(BTreeMap::from([(0, 8), (1, 5)]));
        assert!(matches!(
            targets(&options, &info, &starts, &ends),
            Err(FollowError::PastTarget { partition: 1, stored: 6, target: 5 })
        ));
        options.stop_at = Some(BTreeMap::from([(2, 5)]));
        assert!(matches!(
            targets(&options, &info, &starts, &ends),
            Err(FollowError::UnknownPartition { .. })
        ));
    }

    #[test]
    fn a_server_allowing_less_wait_or_fewer_events_is_asked_for_less() {
        let options = FollowOptions::new("t");
        let (tx, _rx) = mpsc::channel(1);
        let mut fetcher = Fetcher {
            source: Source::new("http://127.0.0.1:1", crate::SourceOptions::default()).unwrap(),
            wait: Duration::from_secs(20),
            fetch_size: 1000,
            options,
            partition: 0,
            offset: 0,
            stop_at: None,
            permits: Arc::new(Semaphore::new(1)),
            tx,
        };
        assert!(fetcher.shrink(&["wait".into()]));
        assert_eq!((fetcher.wait, fetcher.fetch_size), (Duration::from_secs(10), 1000));
        assert!(fetcher.shrink(&["limit".into(), "wait".into()]));
        assert_eq!((fetcher.wait, fetcher.fetch_size), (Duration::from_secs(5), 500));
        while fetcher.shrink(&["wait".into()]) {}
        assert_eq!(fetcher.wait, Duration::ZERO, "down to no wait at all, then the refusal is final");
        assert!(!fetcher.shrink(&["offset".into()]));
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_gives_up_only_when_meant_to_end() {
        let error = SourceError::BadResponse { url: "u".into(), reason: "r".into() };
        let mut options = FollowOptions::new("t");
        let mut backoff = Backoff::new(&options);
        let pauses: Vec<Duration> = (0..12).map(|_| backoff.next(&error)).collect();
        assert_eq!(pauses[0], Duration::from_millis(100));
        assert_eq!(pauses[1], Duration::from_millis(200));
        assert_eq!(*pauses.last().unwrap(), MAX_BACKOFF);
        assert!(!backoff.exhausted(), "a follower never gives up");
        options.exit_when_caught_up = true;
        options.give_up_after = Duration::ZERO;
        let mut backoff = Backoff::new(&options);
        assert!(!backoff.exhausted(), "not failing yet");
        backoff.next(&error);
        assert!(backoff.exhausted());
        backoff.reset();
        assert!(!backoff.exhausted());
    }

    #[test]
    fn a_missing_or_forbidden_errors_topic_disables_reporting_but_an_unknown_route_does_not() {
        let refused = |status: u16, kind: Option<&str>| SourceError::Refused {
            url: "u".into(),
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            kind: kind.map(str::to_owned),
            message: "m".into(),
            retry_after: None,
            parameters: Vec::new(),
        };
        assert!(is_unusable_topic(&refused(404, Some("topic-not-found"))));
        assert!(is_unusable_topic(&refused(403, None)));
        assert!(!is_unusable_topic(&refused(404, Some("route-not-found"))));
        assert!(!is_unusable_topic(&refused(413, Some("event-too-large"))));
    }
}
