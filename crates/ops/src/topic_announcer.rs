//! Announces changes to the available topics: follows the runtime changelog and publishes a `topic-change`
//! announcement for every entry about a topic (created, lifecycle state scheduled or changed, retention,
//! validation), so the web page, the Atom feed and the mailing list hear of it from the same record the
//! changelog shows, whichever endpoint (HTTP, Kafka, the lifecycle scheduler) made the change.
//!
//! The position in the changelog is kept in the state store (collection `topic_announcer`), written after the
//! announcement: a crash between the two announces one change twice rather than not at all. Entries older than
//! [`MAX_AGE`] when first seen (recorded before this ran) are skipped, so a first start does not flood the list
//! with history. One node runs it at a time (a lease), so several nodes do not announce a change several times.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esgf_events_meta::MetaStore;
use esgf_events_meta::changelog::{ChangeEntry, list_changes};
use tokio::sync::watch;

use crate::announcements::{AnnouncementError, AnnouncementKind, Announcements, NewAnnouncement};

const CURSOR: &str = "topic_announcer";
const CURSOR_KEY: &str = "changelog";
/// Changelog entries older than this when first seen are not announced.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Entries read per pass.
const PAGE: usize = 200;

/// Changelog kinds that change what clients can use: the ones announced.
fn announced(entry: &ChangeEntry) -> bool {
    entry.topic.is_some()
        && matches!(
            entry.kind.as_str(),
            "topic-created" | "topic-state" | "topic-state-scheduled" | "retention" | "validation"
        )
}

pub struct TopicAnnouncer {
    meta: Arc<dyn MetaStore>,
    announcements: Arc<Announcements>,
}

impl TopicAnnouncer {
    pub fn new(meta: Arc<dyn MetaStore>, announcements: Arc<Announcements>) -> Self {
        TopicAnnouncer { meta, announcements }
    }

    async fn cursor(&self) -> Result<u64, AnnouncementError> {
        let raw = self.meta.get(CURSOR, CURSOR_KEY).await?;
        Ok(raw.and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok())).unwrap_or(0))
    }

    /// Announces every new topic change; returns how many it announced.
    pub async fn pass(&self, now_ms: i64) -> Result<usize, AnnouncementError> {
        let mut after = self.cursor().await?;
        let oldest = u64::try_from(now_ms).unwrap_or(0).saturating_sub(MAX_AGE.as_millis() as u64);
        let mut announced_now = 0;
        loop {
            let entries = list_changes(self.meta.as_ref(), after, PAGE).await?;
            let Some(&(last, _)) = entries.last() else { break };
            for (_, entry) in entries.iter().filter(|(_, e)| announced(e) && e.time_ms >= oldest) {
                self.announcements
                    .publish(NewAnnouncement {
                        kind: AnnouncementKind::TopicChange,
                        title: entry.title.clone(),
                        body: format!("{}\n\n{}", entry.title, entry.detail),
                        window: None,
                        topic: entry.topic.clone(),
                    })
                    .await?;
                announced_now += 1;
                tracing::info!(kind = %entry.kind, topic = ?entry.topic, "topic change announced");
            }
            after = last;
            self.meta.put(CURSOR, CURSOR_KEY, Bytes::from(after.to_string())).await?;
            if entries.len() < PAGE {
                break;
            }
        }
        Ok(announced_now)
    }

    /// Runs a pass every `every` until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        clock: Arc<dyn esgf_events_engine::Clock>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            if let Err(error) = self.pass(clock.now_ms()).await {
                tracing::warn!(%error, "announcing topic changes failed; retrying");
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, topic: Option<&str>) -> ChangeEntry {
        ChangeEntry {
            time_ms: 0,
            kind: kind.to_owned(),
            title: "t".to_owned(),
            detail: "d".to_owned(),
            topic: topic.map(str::to_owned),
        }
    }

    #[test]
    fn topic_changes_are_announced_and_maintenance_entries_are_not() {
        assert!(announced(&entry("topic-created", Some("a"))));
        assert!(announced(&entry("topic-state-scheduled", Some("a"))));
        assert!(announced(&entry("retention", Some("a"))));
        // Maintenance windows publish their own planned-downtime announcements.
        assert!(!announced(&entry("maintenance", None)));
        assert!(!announced(&entry("topic-created", None)));
    }
}
