//! Unplanned outages ("incidents"), as the monitor (`esgf-events monitor`, running apart from the service)
//! observed them: kept in the [`MetaStore`] (collection [`COLLECTION`], key the id the monitor chose), so a
//! monitor that pushes the same incident again changes nothing. Their durations are the recovery times the
//! service actually achieved (RTO), shown on the status page.

use std::sync::Arc;

use esgf_events_meta::{MetaError, MetaStore};
use serde::{Deserialize, Serialize};

pub const COLLECTION: &str = "incidents";

/// Most incidents read back; far more than a service should ever have.
pub const MAX_INCIDENTS: usize = 1000;

const MAX_ID_CHARS: usize = 100;
const MAX_DETECTED_BY_CHARS: usize = 200;
const MAX_DETAIL_CHARS: usize = 2000;

/// One outage. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub started_ms: i64,
    /// `None` while the outage goes on.
    pub ended_ms: Option<i64>,
    /// Who saw it, e.g. `monitor@host`.
    pub detected_by: String,
    /// What failed.
    pub detail: String,
    /// When the service first learnt of it.
    pub recorded_ms: i64,
}

impl Incident {
    /// The outage's duration so far (to `now_ms` while it goes on), milliseconds.
    pub fn duration_ms(&self, now_ms: i64) -> i64 {
        self.ended_ms.unwrap_or(now_ms).saturating_sub(self.started_ms).max(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// What recording did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Created,
    Updated,
    Unchanged,
}

pub struct Incidents {
    meta: Arc<dyn MetaStore>,
}

impl Incidents {
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        Incidents { meta }
    }

    /// Stores `incident` under its id: created, updated (e.g. it has ended since), or unchanged when the same
    /// incident was recorded before. `recorded_ms` of a known incident is kept.
    pub async fn record(&self, mut incident: Incident) -> Result<(Recorded, Incident), IncidentError> {
        validate(&incident)?;
        let existing = match self.meta.get(COLLECTION, &incident.id).await? {
            Some(bytes) => serde_json::from_slice::<Incident>(&bytes).ok(),
            None => None,
        };
        let outcome = match &existing {
            None => Recorded::Created,
            Some(old) => {
                incident.recorded_ms = old.recorded_ms;
                if *old == incident {
                    return Ok((Recorded::Unchanged, incident));
                }
                Recorded::Updated
            }
        };
        let bytes = serde_json::to_vec(&incident).unwrap_or_default();
        self.meta.put(COLLECTION, &incident.id, bytes.into()).await?;
        tracing::info!(incident = %incident.id, started_ms = incident.started_ms, ended_ms = ?incident.ended_ms,
            detected_by = %incident.detected_by, ?outcome, "incident recorded");
        Ok((outcome, incident))
    }

    /// Every incident, the latest start first (at most [`MAX_INCIDENTS`]).
    pub async fn list(&self) -> Result<Vec<Incident>, IncidentError> {
        let mut out = Vec::new();
        for (key, value) in self.meta.scan(COLLECTION, "").await? {
            match serde_json::from_slice::<Incident>(&value) {
                Ok(incident) => out.push(incident),
                Err(err) => tracing::error!(incident = %key, error = %err, "unreadable incident skipped"),
            }
        }
        out.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then_with(|| a.id.cmp(&b.id)));
        out.truncate(MAX_INCIDENTS);
        Ok(out)
    }
}

fn validate(incident: &Incident) -> Result<(), IncidentError> {
    let invalid = |m: &str| Err(IncidentError::Invalid(m.to_owned()));
    let id = &incident.id;
    if id.is_empty()
        || id.chars().count() > MAX_ID_CHARS
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
    {
        return invalid("id must be 1 to 100 characters of A-Z, a-z, 0-9, '.', '_', '-', ':'");
    }
    if incident.started_ms <= 0 {
        return invalid("started_at must be a time after 1970");
    }
    if incident.ended_ms.is_some_and(|end| end < incident.started_ms) {
        return invalid("ended_at must not be before started_at");
    }
    if incident.detected_by.trim().is_empty() || incident.detected_by.chars().count() > MAX_DETECTED_BY_CHARS
    {
        return invalid("detected_by must be 1 to 200 characters");
    }
    if incident.detail.chars().count() > MAX_DETAIL_CHARS {
        return invalid("detail must be at most 2000 characters");
    }
    Ok(())
}

/// Recovery times achieved: over the incidents that have ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RtoSummary {
    pub incidents: usize,
    pub mean_seconds: Option<u64>,
    pub max_seconds: Option<u64>,
    /// The same for people (`2 min 0 s`).
    pub mean_human: Option<String>,
    pub max_human: Option<String>,
}

pub fn rto(incidents: &[Incident]) -> RtoSummary {
    let durations: Vec<u64> = incidents
        .iter()
        .filter(|i| i.ended_ms.is_some())
        .map(|i| u64::try_from(i.duration_ms(0) / 1000).unwrap_or(0))
        .collect();
    let count = durations.len() as u64;
    let mean_seconds = (count > 0).then(|| durations.iter().sum::<u64>() / count);
    let max_seconds = durations.iter().copied().max();
    RtoSummary {
        incidents: durations.len(),
        mean_seconds,
        max_seconds,
        mean_human: mean_seconds.map(human_duration),
        max_human: max_seconds.map(human_duration),
    }
}

/// `1 h 2 min 3 s`: durations for people.
pub fn human_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) => format!("{m} min {s} s"),
        _ => format!("{h} h {m} min {s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esgf_events_meta::RedbMetaStore;

    fn incident(id: &str, started: i64, ended: Option<i64>) -> Incident {
        Incident {
            id: id.into(),
            started_ms: started,
            ended_ms: ended,
            detected_by: "monitor@test".into(),
            detail: "readyz unreachable".into(),
            recorded_ms: 5,
        }
    }

    #[tokio::test]
    async fn recording_the_same_incident_twice_changes_nothing_and_an_end_updates_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta: Arc<dyn MetaStore> =
            Arc::new(RedbMetaStore::open(&dir.path().join("m.redb")).expect("meta"));
        let incidents = Incidents::new(meta);
        let (first, _) = incidents.record(incident("a", 1000, None)).await.expect("record");
        let mut again = incident("a", 1000, None);
        again.recorded_ms = 99;
        let (second, stored) = incidents.record(again).await.expect("record");
        assert_eq!((first, second, stored.recorded_ms), (Recorded::Created, Recorded::Unchanged, 5));
        let (third, _) = incidents.record(incident("a", 1000, Some(61_000))).await.expect("record");
        assert_eq!(third, Recorded::Updated);
        incidents.record(incident("b", 5000, Some(6000))).await.expect("record");
        let list = incidents.list().await.expect("list");
        assert_eq!(list.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(list[1].ended_ms, Some(61_000));
    }

    #[test]
    fn invalid_incidents_are_refused() {
        for bad in [
            incident("", 1, None),
            incident("a/b", 1, None),
            incident("a", 0, None),
            incident("a", 10, Some(5)),
            Incident { detected_by: " ".into(), ..incident("a", 1, None) },
        ] {
            assert!(matches!(validate(&bad), Err(IncidentError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn rto_is_the_mean_and_max_of_ended_incidents() {
        let list = [incident("a", 0, Some(60_000)), incident("b", 0, Some(180_000)), incident("c", 0, None)];
        let summary = rto(&list);
        assert_eq!((summary.incidents, summary.mean_seconds, summary.max_seconds), (2, Some(120), Some(180)));
        assert_eq!(summary.max_human.as_deref(), Some("3 min 0 s"));
        assert_eq!(rto(&[]), RtoSummary::default());
        assert_eq!(human_duration(3723), "1 h 2 min 3 s");
        assert_eq!(human_duration(59), "59 s");
    }
}
