//! Planned maintenance windows: scheduled by operators, kept in the [`MetaStore`] (collection `maintenance`,
//! one JSON value per window), and mirrored in memory in a [`MaintenanceState`] that every endpoint consults
//! per request without I/O.
//!
//! A window is refused without a prior announcement (a URL or announcement id) or with less notice than the
//! configured minimum, unless forced, for emergencies; a forced window is flagged as such for ever. Every
//! change is recorded in the runtime changelog.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use esgf_events_engine::Clock;
use esgf_events_meta::changelog::{ChangeEntry, record_change};
use esgf_events_meta::{MetaError, MetaStore};
use serde::{Deserialize, Serialize};

use crate::announcements::{AnnouncementKind, Announcements, NewAnnouncement};

const COLLECTION: &str = "maintenance";

/// What a window stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaintenanceMode {
    /// Reads and streams keep working; writes (publish, administration) are refused.
    ReadOnly,
    /// Everything but health probes and operations endpoints is refused.
    Full,
}

/// One scheduled window. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub id: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub mode: MaintenanceMode,
    pub message: String,
    /// URL or id of the announcement that gave notice.
    pub announcement: Option<String>,
    /// Scheduled with `force` (too little notice or no announcement).
    pub forced: bool,
    pub created_ms: i64,
}

impl Window {
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.starts_at_ms <= now_ms && now_ms < self.ends_at_ms
    }

    /// Whether this window refuses a request: writes in any mode, reads only in full mode.
    pub fn refuses(&self, is_write: bool) -> bool {
        is_write || self.mode == MaintenanceMode::Full
    }
}

/// A request to schedule a window.
#[derive(Debug, Clone)]
pub struct NewWindow {
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub mode: MaintenanceMode,
    pub message: String,
    pub announcement: Option<String>,
    pub force: bool,
}

/// A change to a window; `None` leaves a field as it is. Changing the times is checked like scheduling.
#[derive(Debug, Clone, Default)]
pub struct WindowPatch {
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    pub mode: Option<MaintenanceMode>,
    pub message: Option<String>,
    pub announcement: Option<String>,
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("{0}")]
    Invalid(String),
    #[error("no announcement names this window: announce it first, or set \"force\": true for an emergency")]
    NotAnnounced,
    #[error(
        "the window starts in {given_s} s, less than the required notice of {required_s} s: \
             schedule it later, or set \"force\": true for an emergency"
    )]
    TooShortNotice { given_s: i64, required_s: u64 },
    #[error("no maintenance window '{0}'")]
    NotFound(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// The windows in memory: what endpoints consult on every request.
pub struct MaintenanceState {
    clock: Arc<dyn Clock>,
    windows: RwLock<Vec<Window>>,
}

impl std::fmt::Debug for MaintenanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaintenanceState").finish_non_exhaustive()
    }
}

impl MaintenanceState {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(MaintenanceState { clock, windows: RwLock::new(Vec::new()) })
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The window in force now, if any (the one ending last when several overlap).
    pub fn active(&self) -> Option<Window> {
        let now = self.now_ms();
        let windows = self.windows.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        windows.iter().filter(|w| w.is_active(now)).max_by_key(|w| w.ends_at_ms).cloned()
    }

    /// The active window if it refuses a request of this kind.
    pub fn refusing(&self, is_write: bool) -> Option<Window> {
        self.active().filter(|w| w.refuses(is_write))
    }

    /// Every known window, by start time.
    pub fn all(&self) -> Vec<Window> {
        self.windows.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn replace(&self, mut windows: Vec<Window>) {
        windows.sort_by(|a, b| (a.starts_at_ms, &a.id).cmp(&(b.starts_at_ms, &b.id)));
        *self.windows.write().unwrap_or_else(std::sync::PoisonError::into_inner) = windows;
    }

    /// Sets window `id` to `window` (`None` removes it) under one lock, so concurrent changes to
    /// different windows (this node's own, and refreshes of other nodes') never undo each other.
    fn set(&self, id: &str, window: Option<Window>) {
        let mut windows = self.windows.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        windows.retain(|w| w.id != id);
        if let Some(window) = window {
            let at = windows.partition_point(|w| (w.starts_at_ms, &w.id) < (window.starts_at_ms, &window.id));
            windows.insert(at, window);
        }
    }
}

/// Scheduling, changing and cancelling windows, persisted in the state store.
pub struct Maintenance {
    meta: Arc<dyn MetaStore>,
    state: Arc<MaintenanceState>,
    min_notice: Duration,
    announcements: Option<Arc<Announcements>>,
}

impl Maintenance {
    /// The state-store collections mirrored in the [`MaintenanceState`].
    pub const CACHED_COLLECTIONS: [&'static str; 1] = [COLLECTION];

    /// Loads the stored windows into `state`.
    pub async fn open(
        meta: Arc<dyn MetaStore>,
        state: Arc<MaintenanceState>,
        min_notice: Duration,
    ) -> Result<Self, MaintenanceError> {
        state.replace(load_all(meta.as_ref()).await?);
        Ok(Maintenance { meta, state, min_notice, announcements: None })
    }

    /// Re-reads one changed key of the state store, if it is a window (other collections are ignored): how
    /// a window scheduled, changed or cancelled through another service node on a shared store takes effect
    /// here. A refresh racing this node's own change to the same window can put back the older value, but
    /// only until that change's own notification is refreshed in turn (it is reported after it is stored).
    pub async fn refresh(&self, collection: &str, key: &str) -> Result<(), MaintenanceError> {
        if collection != COLLECTION {
            return Ok(());
        }
        let window = match self.meta.get(COLLECTION, key).await? {
            Some(value) => decode(key, &value),
            None => None,
        };
        self.state.set(key, window);
        Ok(())
    }

    /// Re-reads every window (after changes may have been missed). On error the state is unchanged.
    pub async fn reload(&self) -> Result<(), MaintenanceError> {
        self.state.replace(load_all(self.meta.as_ref()).await?);
        Ok(())
    }

    /// Checks announcement ids against `announcements`, and publishes a `planned-downtime` announcement for
    /// every window scheduled.
    pub fn with_announcements(mut self, announcements: Arc<Announcements>) -> Self {
        self.announcements = Some(announcements);
        self
    }

    /// An announcement reference must be a URL or the id of a published announcement.
    async fn check_reference(&self, announcement: Option<&str>) -> Result<(), MaintenanceError> {
        let Some(reference) = announcement.map(str::trim).filter(|a| !a.is_empty()) else { return Ok(()) };
        if reference.starts_with("https://") || reference.starts_with("http://") {
            return Ok(());
        }
        let Some(announcements) = &self.announcements else {
            return Err(MaintenanceError::Invalid("announcement must be a URL".to_owned()));
        };
        match announcements.get(reference).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(MaintenanceError::Invalid(format!(
                "announcement '{reference}' is neither a URL nor a published announcement's id"
            ))),
            Err(err) => Err(MaintenanceError::Invalid(format!("announcement '{reference}': {err}"))),
        }
    }

    pub fn state(&self) -> &Arc<MaintenanceState> {
        &self.state
    }

    pub fn list(&self) -> Vec<Window> {
        self.state.all()
    }

    fn check(
        &self,
        starts: i64,
        ends: i64,
        announcement: Option<&str>,
        force: bool,
    ) -> Result<bool, MaintenanceError> {
        if ends <= starts {
            return Err(MaintenanceError::Invalid("ends_at must be after starts_at".to_owned()));
        }
        let now = self.state.now_ms();
        if ends <= now {
            return Err(MaintenanceError::Invalid("the window would be over already".to_owned()));
        }
        let announced = announcement.is_some_and(|a| !a.trim().is_empty());
        let notice_ms = starts.saturating_sub(now);
        let required_ms = i64::try_from(self.min_notice.as_millis()).unwrap_or(i64::MAX);
        let short = notice_ms < required_ms;
        if !force {
            if !announced {
                return Err(MaintenanceError::NotAnnounced);
            }
            if short {
                return Err(MaintenanceError::TooShortNotice {
                    given_s: notice_ms / 1000,
                    required_s: self.min_notice.as_secs(),
                });
            }
        }
        Ok(!announced || short)
    }

    /// Schedules a window; returns it (with `forced` set when it needed `force`).
    pub async fn schedule(&self, new: NewWindow) -> Result<Window, MaintenanceError> {
        self.check_reference(new.announcement.as_deref()).await?;
        let forced = self.check(new.starts_at_ms, new.ends_at_ms, new.announcement.as_deref(), new.force)?;
        let now = self.state.now_ms();
        let taken = self.state.all();
        // A random suffix, not a counter: two nodes scheduling in the same millisecond must not pick one id.
        let id = loop {
            let mut suffix = [0u8; 4];
            getrandom::fill(&mut suffix).map_err(|e| {
                MaintenanceError::Meta(MetaError::Storage {
                    context: "generating a window id",
                    detail: e.to_string(),
                })
            })?;
            let id = format!("mw-{now}-{}", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>());
            if !taken.iter().any(|w| w.id == id) {
                break id;
            }
        };
        let window = Window {
            id,
            starts_at_ms: new.starts_at_ms,
            ends_at_ms: new.ends_at_ms,
            mode: new.mode,
            message: new.message,
            announcement: new.announcement.filter(|a| !a.trim().is_empty()),
            forced,
            created_ms: now,
        };
        self.store(&window).await?;
        self.changelog(&window, "scheduled").await;
        self.announce(&window).await;
        Ok(window)
    }

    pub async fn update(&self, id: &str, patch: WindowPatch) -> Result<Window, MaintenanceError> {
        self.check_reference(patch.announcement.as_deref()).await?;
        let mut window = self.get(id)?;
        let starts = patch.starts_at_ms.unwrap_or(window.starts_at_ms);
        let ends = patch.ends_at_ms.unwrap_or(window.ends_at_ms);
        let announcement = patch.announcement.clone().or(window.announcement.clone());
        if patch.starts_at_ms.is_some() || patch.ends_at_ms.is_some() || patch.announcement.is_some() {
            // Moving a window earlier needs notice like a new one; ending it early or extending it does not.
            let moved_earlier = starts < window.starts_at_ms && starts > self.state.now_ms();
            let force = patch.force || !moved_earlier;
            window.forced |= self.check(starts, ends, announcement.as_deref(), force)? && moved_earlier;
        }
        window.starts_at_ms = starts;
        window.ends_at_ms = ends;
        window.announcement = announcement;
        if let Some(mode) = patch.mode {
            window.mode = mode;
        }
        if let Some(message) = patch.message {
            window.message = message;
        }
        self.store(&window).await?;
        self.changelog(&window, "changed").await;
        Ok(window)
    }

    pub async fn cancel(&self, id: &str) -> Result<Window, MaintenanceError> {
        let window = self.get(id)?;
        self.meta.delete(COLLECTION, id).await?;
        self.state.set(id, None);
        self.changelog(&window, "cancelled").await;
        Ok(window)
    }

    fn get(&self, id: &str) -> Result<Window, MaintenanceError> {
        self.state
            .all()
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(|| MaintenanceError::NotFound(id.to_owned()))
    }

    async fn store(&self, window: &Window) -> Result<(), MaintenanceError> {
        self.meta.put(COLLECTION, &window.id, encode(window)).await?;
        self.state.set(&window.id, Some(window.clone()));
        Ok(())
    }

    /// Best effort, like the changelog line: publishes the window as a `planned-downtime` announcement.
    async fn announce(&self, window: &Window) {
        let Some(announcements) = &self.announcements else { return };
        let new = NewAnnouncement {
            kind: AnnouncementKind::PlannedDowntime,
            title: format!(
                "Planned maintenance ({}) from {} to {}",
                mode_name(window.mode),
                rfc3339(window.starts_at_ms),
                rfc3339(window.ends_at_ms)
            ),
            body: format!(
                "{}\n\nDuring the window {}.{}",
                window.message,
                match window.mode {
                    MaintenanceMode::ReadOnly =>
                        "reads and streams keep working; publishing is refused with 503",
                    MaintenanceMode::Full => "the API answers 503 except health probes",
                },
                if window.forced { " This window was scheduled at short notice." } else { "" }
            ),
            window: Some(window.id.clone()),
            topic: None,
        };
        if let Err(err) = announcements.publish(new).await {
            tracing::error!(window = %window.id, error = %err, "cannot publish the maintenance announcement");
        }
    }

    /// Best effort: the window is already stored, and a missing changelog line must not undo it.
    async fn changelog(&self, window: &Window, what: &str) {
        let entry = ChangeEntry {
            time_ms: u64::try_from(self.state.now_ms()).unwrap_or(0),
            kind: "maintenance".to_owned(),
            title: format!("Maintenance window {} {what}", window.id),
            detail: format!(
                "{} mode from {} to {}{}: {}",
                mode_name(window.mode),
                rfc3339(window.starts_at_ms),
                rfc3339(window.ends_at_ms),
                if window.forced { " (forced)" } else { "" },
                window.message
            ),
            topic: None,
        };
        if let Err(err) = record_change(self.meta.as_ref(), &entry).await {
            tracing::error!(window = %window.id, error = %err, "cannot record the maintenance change in the changelog");
        }
    }
}

fn mode_name(mode: MaintenanceMode) -> &'static str {
    match mode {
        MaintenanceMode::ReadOnly => "read-only",
        MaintenanceMode::Full => "full",
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A stored window; an unreadable one is logged and skipped, so one bad entry cannot stop the service.
fn decode(key: &str, value: &[u8]) -> Option<Window> {
    match serde_json::from_slice::<Window>(value) {
        Ok(w) => Some(w),
        Err(err) => {
            tracing::error!(window = %key, error = %err, "unreadable maintenance window skipped");
            None
        }
    }
}

async fn load_all(meta: &dyn MetaStore) -> Result<Vec<Window>, MaintenanceError> {
    let stored = meta.scan(COLLECTION, "").await?;
    Ok(stored.into_iter().filter_map(|(key, value)| decode(&key, &value)).collect())
}

/// A window as stored: JSON (this crate may use JSON; the state store itself stays format-agnostic).
fn encode(window: &Window) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(window).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use esgf_events_engine::ManualClock;
    use esgf_events_meta::RedbMetaStore;

    const DAY: i64 = 86_400_000;

    async fn fixture() -> (tempfile::TempDir, Arc<ManualClock>, Arc<dyn MetaStore>, Maintenance) {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta: Arc<dyn MetaStore> =
            Arc::new(RedbMetaStore::open(&dir.path().join("m.redb")).expect("meta"));
        let clock = Arc::new(ManualClock::new(1_000 * DAY));
        let state = MaintenanceState::new(clock.clone());
        let m = Maintenance::open(meta.clone(), state, Duration::from_secs(7 * 86_400)).await.expect("open");
        (dir, clock, meta, m)
    }

    fn window(start_in_days: i64, announcement: Option<&str>, force: bool) -> NewWindow {
        let start = 1_000 * DAY + start_in_days * DAY;
        NewWindow {
            starts_at_ms: start,
            ends_at_ms: start + 3_600_000,
            mode: MaintenanceMode::ReadOnly,
            message: "disk swap".into(),
            announcement: announcement.map(str::to_owned),
            force,
        }
    }

    #[tokio::test]
    async fn window_without_announcement_or_notice_is_refused_unless_forced() {
        let (_dir, _clock, _meta, m) = fixture().await;
        assert!(matches!(m.schedule(window(8, None, false)).await, Err(MaintenanceError::NotAnnounced)));
        assert!(matches!(
            m.schedule(window(1, Some("https://x/a/1"), false)).await,
            Err(MaintenanceError::TooShortNotice { .. })
        ));
        let ok = m.schedule(window(8, Some("https://x/a/1"), false)).await.expect("enough notice");
        assert!(!ok.forced);
        let forced = m.schedule(window(1, None, true)).await.expect("forced");
        assert!(forced.forced);
    }

    #[tokio::test]
    async fn window_is_active_only_between_its_start_and_end_and_survives_reopening() {
        let (_dir, clock, meta, m) = fixture().await;
        let w = m.schedule(window(8, Some("https://x/a/1"), false)).await.expect("scheduled");
        assert_eq!(m.state().active(), None);
        clock.set_ms(w.starts_at_ms);
        assert_eq!(m.state().active().map(|a| a.id), Some(w.id.clone()));
        assert!(m.state().refusing(true).is_some());
        assert!(m.state().refusing(false).is_none(), "read-only keeps reads");
        let reopened = Maintenance::open(meta.clone(), MaintenanceState::new(clock.clone()), Duration::ZERO)
            .await
            .expect("reopen");
        assert_eq!(reopened.list(), vec![w.clone()]);
        clock.set_ms(w.ends_at_ms);
        assert_eq!(m.state().active(), None);
        let changes =
            esgf_events_meta::changelog::list_changes(meta.as_ref(), 0, 10).await.expect("changelog");
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1.kind, "maintenance");
    }

    #[tokio::test]
    async fn scheduling_publishes_an_announcement_and_checks_announcement_ids() {
        let (_dir, clock, meta, m) = fixture().await;
        let announcements = Arc::new(Announcements::new(meta, clock));
        let m = m.with_announcements(Arc::clone(&announcements));
        assert!(matches!(m.schedule(window(8, Some("99"), false)).await, Err(MaintenanceError::Invalid(_))));
        let w = m.schedule(window(8, Some("https://x/a/1"), false)).await.expect("scheduled");
        let published = announcements.list().await.expect("list");
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].kind, AnnouncementKind::PlannedDowntime);
        assert_eq!(published[0].window.as_deref(), Some(w.id.as_str()));
        // The window's own announcement may be named by id.
        m.schedule(window(9, Some(&published[0].id), false)).await.expect("by id");
    }

    #[tokio::test]
    async fn windows_changed_through_another_node_apply_here_once_refreshed_or_reloaded() {
        let (_dir, clock, meta, a) = fixture().await;
        let b = Maintenance::open(meta.clone(), MaintenanceState::new(clock.clone()), Duration::ZERO)
            .await
            .expect("other node");
        let w = a.schedule(window(0, None, true)).await.expect("forced, starting now");
        assert_eq!(b.state().refusing(true), None, "not yet seen by the other node");
        b.refresh("principals", &w.id).await.expect("ignored");
        assert_eq!(b.state().refusing(true), None);
        b.refresh(COLLECTION, &w.id).await.expect("refresh");
        assert_eq!(b.state().refusing(true).map(|r| r.id), Some(w.id.clone()));

        let later = a.schedule(window(9, None, true)).await.expect("scheduled");
        a.cancel(&w.id).await.expect("cancel");
        b.reload().await.expect("reload");
        assert_eq!(b.list(), vec![later.clone()]);
        a.cancel(&later.id).await.expect("cancel");
        b.refresh(COLLECTION, &later.id).await.expect("refresh");
        assert!(b.list().is_empty());
    }

    #[test]
    fn windows_stay_ordered_by_start_whatever_order_they_are_set_in() {
        let state = MaintenanceState::new(Arc::new(ManualClock::new(0)));
        let at = |id: &str, start: i64| Window {
            id: id.into(),
            starts_at_ms: start,
            ends_at_ms: start + 10,
            mode: MaintenanceMode::Full,
            message: String::new(),
            announcement: None,
            forced: true,
            created_ms: 0,
        };
        state.set("b", Some(at("b", 20)));
        state.set("a", Some(at("a", 30)));
        state.set("c", Some(at("c", 10)));
        state.set("a", Some(at("a", 5)));
        let ids: Vec<String> = state.all().into_iter().map(|w| w.id).collect();
        assert_eq!(ids, ["a", "c", "b"]);
        state.set("c", None);
        assert_eq!(state.all().len(), 2);
    }

    #[tokio::test]
    async fn cancelled_window_is_gone() {
        let (_dir, _clock, _meta, m) = fixture().await;
        let w = m.schedule(window(8, Some("https://x/a/1"), false)).await.expect("scheduled");
        m.cancel(&w.id).await.expect("cancel");
        assert!(m.list().is_empty());
        assert!(matches!(m.cancel(&w.id).await, Err(MaintenanceError::NotFound(_))));
    }
}
