//! The topic-change announcer over a real state store: each topic change in the changelog becomes one
//! `topic-change` announcement, once, and history older than a week is not announced.

use std::sync::Arc;

use esgf_events_engine::ManualClock;
use esgf_events_meta::changelog::{ChangeEntry, record_change};
use esgf_events_meta::{MetaStore, RedbMetaStore};
use esgf_events_ops::announcements::{AnnouncementKind, Announcements};
use esgf_events_ops::topic_announcer::TopicAnnouncer;

const NOW: i64 = 1_800_000_000_000;

fn change(time_ms: i64, kind: &str, topic: Option<&str>, title: &str) -> ChangeEntry {
    ChangeEntry {
        time_ms: time_ms as u64,
        kind: kind.to_owned(),
        title: title.to_owned(),
        detail: "changed by operator".to_owned(),
        topic: topic.map(str::to_owned),
    }
}

#[tokio::test]
async fn each_recent_topic_change_is_announced_once_and_old_history_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let meta: Arc<dyn MetaStore> = Arc::new(RedbMetaStore::open(&dir.path().join("state.redb")).unwrap());
    let clock = Arc::new(ManualClock::new(NOW));
    let announcements = Arc::new(Announcements::new(Arc::clone(&meta), clock.clone()));
    let announcer = TopicAnnouncer::new(Arc::clone(&meta), Arc::clone(&announcements));

    let month_ago = NOW - 30 * 86_400_000;
    record_change(meta.as_ref(), &change(month_ago, "topic-created", Some("old"), "Topic old created"))
        .await
        .unwrap();
    record_change(meta.as_ref(), &change(NOW - 1000, "topic-created", Some("new"), "Topic new created"))
        .await
        .unwrap();
    record_change(meta.as_ref(), &change(NOW - 500, "maintenance", None, "Maintenance scheduled"))
        .await
        .unwrap();
    record_change(
        meta.as_ref(),
        &change(NOW - 100, "topic-state-scheduled", Some("new"), "Topic new will become deprecated"),
    )
    .await
    .unwrap();

    assert_eq!(announcer.pass(NOW).await.unwrap(), 2);
    let titles: Vec<_> =
        announcements.list().await.unwrap().into_iter().map(|a| (a.kind, a.title, a.topic)).collect();
    assert_eq!(titles.len(), 2, "{titles:?}");
    assert!(titles.iter().all(|(kind, _, topic)| *kind == AnnouncementKind::TopicChange && topic.as_deref() == Some("new")));

    // Nothing new: nothing announced again, also by a second announcer (another node, or after a restart).
    assert_eq!(announcer.pass(NOW).await.unwrap(), 0);
    let other = TopicAnnouncer::new(Arc::clone(&meta), Arc::clone(&announcements));
    assert_eq!(other.pass(NOW).await.unwrap(), 0);

    record_change(meta.as_ref(), &change(NOW, "retention", Some("new"), "Topic new retention is now 30d"))
        .await
        .unwrap();
    assert_eq!(other.pass(NOW).await.unwrap(), 1);
    assert_eq!(announcements.list().await.unwrap().len(), 3);
}
