//! Announcements to the service's users: planned and unplanned downtime, restoration, API and topic changes.
//! Operators publish them (and maintenance windows publish one each); they are kept for ever in the meta log
//! `announcements` (one JSON entry each, its sequence number its id) and served as JSON, HTML and Atom.

use std::sync::Arc;

use esgf_events_engine::Clock;
use esgf_events_meta::{MetaError, MetaStore};
use serde::{Deserialize, Serialize};

const LOG: &str = "announcements";

/// Most announcements read back at once; far above what a service publishes in its lifetime.
pub const MAX_ANNOUNCEMENTS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnouncementKind {
    PlannedDowntime,
    UnplannedDowntime,
    Restored,
    ApiChange,
    TopicChange,
    General,
}

impl AnnouncementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnnouncementKind::PlannedDowntime => "planned-downtime",
            AnnouncementKind::UnplannedDowntime => "unplanned-downtime",
            AnnouncementKind::Restored => "restored",
            AnnouncementKind::ApiChange => "api-change",
            AnnouncementKind::TopicChange => "topic-change",
            AnnouncementKind::General => "general",
        }
    }
}

/// One published announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The log sequence number, as text (1, 2, 3, ...).
    pub id: String,
    pub kind: AnnouncementKind,
    pub title: String,
    pub body: String,
    pub published_ms: i64,
    /// The maintenance window it announces, if any.
    #[serde(default)]
    pub window: Option<String>,
    /// The topic it concerns, if any.
    #[serde(default)]
    pub topic: Option<String>,
    /// Who mailed it to the list already (e.g. `monitor`: the downtime monitor mails while the service is
    /// down); the service's mailer does not mail it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailed_by: Option<String>,
}

/// What a publisher supplies.
#[derive(Debug, Clone)]
pub struct NewAnnouncement {
    pub kind: AnnouncementKind,
    pub title: String,
    pub body: String,
    pub window: Option<String>,
    pub topic: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnnouncementError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("stored announcement {0} is unreadable")]
    Corrupt(u64),
}

/// Longest title and body accepted.
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_BODY_CHARS: usize = 20_000;

pub struct Announcements {
    meta: Arc<dyn MetaStore>,
    clock: Arc<dyn Clock>,
    published: Arc<tokio::sync::Notify>,
}

impl Announcements {
    pub fn new(meta: Arc<dyn MetaStore>, clock: Arc<dyn Clock>) -> Self {
        Announcements { meta, clock, published: Arc::new(tokio::sync::Notify::new()) }
    }

    /// Notified after every publish (the mailer waits on it).
    pub fn published_signal(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.published)
    }

    /// Stores an announcement durably and returns it.
    pub async fn publish(&self, new: NewAnnouncement) -> Result<Announcement, AnnouncementError> {
        self.publish_mailed(new, None).await
    }

    /// [`Announcements::publish`] for an announcement already mailed to the list by `mailed_by` (which must
    /// be short text): it is published on the web and in the feed, and the service's mailer skips it.
    pub async fn publish_mailed(
        &self,
        new: NewAnnouncement,
        mailed_by: Option<String>,
    ) -> Result<Announcement, AnnouncementError> {
        if let Some(by) = &mailed_by
            && (by.trim().is_empty() || by.chars().count() > 100)
        {
            return Err(AnnouncementError::Invalid("mailed_by must be 1 to 100 characters".to_owned()));
        }
        let title = new.title.trim();
        if title.is_empty() || title.chars().count() > MAX_TITLE_CHARS {
            return Err(AnnouncementError::Invalid(format!(
                "title must be 1 to {MAX_TITLE_CHARS} characters"
            )));
        }
        if new.body.chars().count() > MAX_BODY_CHARS {
            return Err(AnnouncementError::Invalid(format!(
                "body must be at most {MAX_BODY_CHARS} characters"
            )));
        }
        let published_ms = self.clock.now_ms();
        // The id is the log's sequence number, known only after the append: the stored entry leaves it empty.
        let mut announcement = Announcement {
            id: String::new(),
            kind: new.kind,
            title: title.to_owned(),
            body: new.body,
            published_ms,
            window: new.window,
            topic: new.topic,
            mailed_by,
        };
        let bytes = serde_json::to_vec(&announcement).unwrap_or_default();
        let seq = self.meta.append(LOG, bytes.into()).await?;
        announcement.id = seq.to_string();
        tracing::info!(id = %announcement.id, kind = announcement.kind.as_str(), "announcement published");
        self.published.notify_one();
        Ok(announcement)
    }

    /// Every announcement, newest first (at most [`MAX_ANNOUNCEMENTS`]).
    pub async fn list(&self) -> Result<Vec<Announcement>, AnnouncementError> {
        let entries = self.meta.read_log(LOG, 0, MAX_ANNOUNCEMENTS).await?;
        let mut out = Vec::with_capacity(entries.len());
        for (seq, bytes) in entries {
            let mut a: Announcement =
                serde_json::from_slice(&bytes).map_err(|_| AnnouncementError::Corrupt(seq))?;
            a.id = seq.to_string();
            out.push(a);
        }
        out.reverse();
        Ok(out)
    }

    /// The announcement with this id, if any.
    pub async fn get(&self, id: &str) -> Result<Option<Announcement>, AnnouncementError> {
        let Ok(seq) = id.parse::<u64>() else { return Ok(None) };
        let Some((found, bytes)) =
            self.meta.read_log(LOG, seq.saturating_sub(1), 1).await?.into_iter().next()
        else {
            return Ok(None);
        };
        if found != seq {
            return Ok(None);
        }
        let mut a: Announcement =
            serde_json::from_slice(&bytes).map_err(|_| AnnouncementError::Corrupt(seq))?;
        a.id = seq.to_string();
        Ok(Some(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esgf_events_engine::ManualClock;
    use esgf_events_meta::RedbMetaStore;

    #[tokio::test]
    async fn announcements_are_listed_newest_first_and_found_by_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta: Arc<dyn MetaStore> =
            Arc::new(RedbMetaStore::open(&dir.path().join("m.redb")).expect("meta"));
        let a = Announcements::new(meta, Arc::new(ManualClock::new(1_000)));
        for title in ["first", "second"] {
            let new = NewAnnouncement {
                kind: AnnouncementKind::General,
                title: title.into(),
                body: "b".into(),
                window: None,
                topic: None,
            };
            a.publish(new).await.expect("publish");
        }
        let list = a.list().await.expect("list");
        assert_eq!(
            list.iter().map(|x| (x.id.as_str(), x.title.as_str())).collect::<Vec<_>>(),
            [("2", "second"), ("1", "first")]
        );
        assert_eq!(a.get("1").await.expect("get").map(|x| x.title), Some("first".to_owned()));
        assert_eq!(a.get("3").await.expect("get"), None);
        assert_eq!(a.get("x").await.expect("get"), None);
    }

    #[tokio::test]
    async fn empty_title_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta: Arc<dyn MetaStore> =
            Arc::new(RedbMetaStore::open(&dir.path().join("m.redb")).expect("meta"));
        let a = Announcements::new(meta, Arc::new(ManualClock::new(1_000)));
        let new = NewAnnouncement {
            kind: AnnouncementKind::General,
            title: "  ".into(),
            body: String::new(),
            window: None,
            topic: None,
        };
        assert!(matches!(a.publish(new).await, Err(AnnouncementError::Invalid(_))));
    }
}
