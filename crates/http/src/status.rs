//! The status view behind `/status`, `/v1/status` (and the home page's state), and the incident endpoints:
//! `POST /v1/incidents` (operators: the downtime monitor pushes the outages it saw, idempotently by the id it
//! chose) and `GET /v1/incidents` (public).
//!
//! Nothing here computes on the request path beyond reading: availability, publish rates and lag come from the
//! status recorder's last refresh (`esgf_events_ops::status`), topic sizes from the log's offsets.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use esgf_events_ops::incidents::{Incident, IncidentError, Incidents, Recorded};
use esgf_events_ops::maintenance::rfc3339;
use esgf_events_ops::pages::{StatusTopic, StatusView};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::SharedState;
use crate::access::Caller;
use crate::admin::record_ok;
use crate::body::{JsonBody, NoQuery};
use crate::error::ApiError;
use crate::ops::time_ms;

/// An incident is a few hundred bytes; the detail is at most 2000 characters.
const MAX_INCIDENT_BODY_BYTES: usize = 16 << 10;

/// The state, windows, topics, and the status recorder's records.
pub(crate) async fn status_view(state: &SharedState) -> Result<StatusView, ApiError> {
    let (windows, now) = match &state.ops.maintenance {
        Some(m) => (m.list(), m.state().now_ms()),
        None => (Vec::new(), chrono::Utc::now().timestamp_millis()),
    };
    let mut view = StatusView::new(&windows, now);
    for topic in state.store.list_topics().await? {
        let (mut retained, mut latest) = (0u64, 0u64);
        for partition in 0..topic.partitions {
            let offsets = state.store.offsets(&topic.name, partition).await?;
            retained += offsets.latest.saturating_sub(offsets.earliest);
            latest += offsets.latest;
        }
        view.topics.push(StatusTopic {
            name: topic.name,
            partitions: topic.partitions,
            retained,
            latest,
            last_hour: None,
            last_24h: None,
        });
    }
    if let Some(recorder) = &state.ops.status {
        let incidents = recorder.incidents().list().await.map_err(incident_error)?;
        view.add_records(&recorder.snapshot(), &incidents, now);
    }
    Ok(view)
}

fn incidents(state: &SharedState) -> Result<&Incidents, ApiError> {
    state.ops.status.as_ref().map(|s| s.incidents().as_ref()).ok_or(ApiError::OpsUnavailable("incidents"))
}

fn incident_error(err: IncidentError) -> ApiError {
    match err {
        IncidentError::Invalid(message) => ApiError::InvalidRequest(message),
        IncidentError::Meta(err) => ApiError::OpsStorage(err),
    }
}

/// An incident as clients see it and send it.
#[derive(Debug, Serialize)]
struct IncidentView<'a> {
    id: &'a str,
    started_at: String,
    ended_at: Option<String>,
    duration_seconds: Option<i64>,
    detected_by: &'a str,
    detail: &'a str,
    recorded: String,
}

impl<'a> IncidentView<'a> {
    fn of(i: &'a Incident) -> Self {
        IncidentView {
            id: &i.id,
            started_at: rfc3339(i.started_ms),
            ended_at: i.ended_ms.map(rfc3339),
            duration_seconds: i.ended_ms.map(|end| (end - i.started_ms) / 1000),
            detected_by: &i.detected_by,
            detail: &i.detail,
            recorded: rfc3339(i.recorded_ms),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentRequest {
    id: String,
    started_at: String,
    #[serde(default)]
    ended_at: Option<String>,
    detected_by: String,
    #[serde(default)]
    detail: String,
}

/// `POST /v1/incidents`: records an outage; 201 when new, 200 when known (updated or unchanged).
pub(crate) async fn record_incident(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    _: NoQuery,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let store = incidents(&state)?;
    let request: IncidentRequest = body.read(MAX_INCIDENT_BODY_BYTES, "incident").await?;
    let now = chrono::Utc::now().timestamp_millis();
    let incident = Incident {
        id: request.id,
        started_ms: time_ms("started_at", &request.started_at)?,
        ended_ms: request.ended_at.as_deref().map(|t| time_ms("ended_at", t)).transpose()?,
        detected_by: request.detected_by,
        detail: request.detail,
        recorded_ms: now,
    };
    let (outcome, stored) = store.record(incident).await.map_err(incident_error)?;
    if outcome != Recorded::Unchanged {
        record_ok(&state, &caller, "incident.record", &stored.id).await;
    }
    let status = if outcome == Recorded::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(IncidentView::of(&stored))).into_response())
}

/// `GET /v1/incidents`: every incident, the latest first, with the mean and longest recovery time.
pub(crate) async fn list_incidents(
    State(state): State<SharedState>,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let all = incidents(&state)?.list().await.map_err(incident_error)?;
    let views: Vec<IncidentView<'_>> = all.iter().map(IncidentView::of).collect();
    let rto = esgf_events_ops::incidents::rto(&all);
    Ok(Json(json!({ "incidents": views, "rto": rto })).into_response())
}
