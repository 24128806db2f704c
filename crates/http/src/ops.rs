//! Operations endpoints: `GET /metrics` (Prometheus text), maintenance windows (`/v1/maintenance`),
//! announcements and the changelog (JSON, HTML pages, Atom feeds), and the two middlewares behind them: per-request HTTP metrics, and the maintenance guard that answers 503 `maintenance`
//! while a window refuses the request.
//!
//! The guard spares health probes and the operations routes themselves, so operators can always end or
//! change a window and scrape metrics; a `read-only` window refuses every method but GET and HEAD.

use std::time::Instant;

use axum::Json;
use axum::extract::{Extension, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use esgf_events_ops::announcements::{Announcement, AnnouncementKind, Announcements, NewAnnouncement};
use esgf_events_ops::changelog::RuntimeChange;
use esgf_events_ops::maintenance::rfc3339;
use esgf_events_ops::{Maintenance, MaintenanceMode, NewWindow, Window, WindowPatch};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::SharedState;
use crate::access::Caller;
use crate::admin::record_ok;
use crate::body::{JsonBody, NoQuery, PathParam};
use crate::error::ApiError;
use crate::routes::{Access, RouteSpec};

/// Maintenance requests are a few hundred bytes; a message longer than this is a mistake.
const MAX_MAINTENANCE_BODY_BYTES: usize = 16 << 10;

/// Counts and times every request by its route template (unmatched ones as `unmatched`, so scanners cannot
/// blow up the label set).
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    esgf_events_ops::metrics::http_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Routes a maintenance window never refuses: probes, operations, and what tells users about the window.
fn spared(spec: &RouteSpec) -> bool {
    matches!(spec.access, Access::Probe | Access::Operate)
        || ["/metrics", "/v1/maintenance", "/v1/announcements", "/announcements", "/announcements.atom"]
            .contains(&spec.path)
        || ["/v1/changelog", "/changelog", "/changelog.atom", "/v1/status", "/status"].contains(&spec.path)
        || spec.path == "/v1/incidents"
        || ["/", "/openapi.json"].contains(&spec.path)
        // Leaving the announcement list must work whenever the mail that offered it arrives.
        || spec.path == "/v1/announcements/unsubscribe"
}

pub(crate) async fn maintenance_guard(
    State((state, spec)): State<(SharedState, &'static RouteSpec)>,
    request: Request,
    next: Next,
) -> Response {
    if !spared(spec)
        && let Some(maintenance) = &state.ops.maintenance
    {
        let is_write = !matches!(*request.method(), Method::GET | Method::HEAD);
        if let Some(window) = maintenance.state().refusing(is_write) {
            let now_ms = maintenance.state().now_ms();
            let mut response = ApiError::Maintenance { window: Box::new(window), now_ms }.into_response();
            // The request body is never read: the connection cannot carry the client's next request.
            crate::error::close_connection(&mut response);
            return response;
        }
    }
    next.run(request).await
}

/// The active window, for `/readyz`: `None` when there is none.
pub(crate) fn active_window(state: &SharedState) -> Option<serde_json::Value> {
    let window = state.ops.maintenance.as_ref()?.state().active()?;
    Some(serde_json::to_value(WindowView::of(&window)).unwrap_or_default())
}

pub(crate) async fn metrics(State(state): State<SharedState>) -> Result<Response, ApiError> {
    let handle = state.ops.metrics.as_ref().ok_or(ApiError::OpsUnavailable("metrics"))?;
    let mut response = handle.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}

fn maintenance(state: &SharedState) -> Result<&Maintenance, ApiError> {
    state.ops.maintenance.as_deref().ok_or(ApiError::OpsUnavailable("maintenance scheduling"))
}

/// A window as clients see it.
#[derive(Debug, Serialize)]
struct WindowView<'a> {
    id: &'a str,
    starts_at: String,
    ends_at: String,
    mode: MaintenanceMode,
    message: &'a str,
    announcement: Option<&'a str>,
    forced: bool,
    created: String,
}

impl<'a> WindowView<'a> {
    fn of(w: &'a Window) -> Self {
        WindowView {
            id: &w.id,
            starts_at: rfc3339(w.starts_at_ms),
            ends_at: rfc3339(w.ends_at_ms),
            mode: w.mode,
            message: &w.message,
            announcement: w.announcement.as_deref(),
            forced: w.forced,
            created: rfc3339(w.created_ms),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleRequest {
    starts_at: String,
    ends_at: String,
    mode: MaintenanceMode,
    message: String,
    #[serde(default)]
    announcement: Option<String>,
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRequest {
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default)]
    mode: Option<MaintenanceMode>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    announcement: Option<String>,
    #[serde(default)]
    force: bool,
}

pub(crate) fn time_ms(name: &str, value: &str) -> Result<i64, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|err| ApiError::InvalidRequest(format!("{name} must be an RFC 3339 time: {err}")))
}

fn check_message(message: &str) -> Result<(), ApiError> {
    if message.trim().is_empty() {
        return Err(ApiError::InvalidRequest("message must say what the maintenance is".to_owned()));
    }
    Ok(())
}

/// `GET /v1/maintenance`: every window not yet over, and which one is active.
pub(crate) async fn list(State(state): State<SharedState>, _: NoQuery) -> Result<Response, ApiError> {
    let m = maintenance(&state)?;
    let now = m.state().now_ms();
    let windows = m.list();
    let views: Vec<WindowView<'_>> =
        windows.iter().filter(|w| w.ends_at_ms > now).map(WindowView::of).collect();
    let active = m.state().active().map(|w| w.id);
    Ok(Json(json!({ "windows": views, "active": active })).into_response())
}

/// `POST /v1/maintenance`: schedules a window (201).
pub(crate) async fn schedule(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    _: NoQuery,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let m = maintenance(&state)?;
    let request: ScheduleRequest = body.read(MAX_MAINTENANCE_BODY_BYTES, "maintenance window").await?;
    check_message(&request.message)?;
    let window = m
        .schedule(NewWindow {
            starts_at_ms: time_ms("starts_at", &request.starts_at)?,
            ends_at_ms: time_ms("ends_at", &request.ends_at)?,
            mode: request.mode,
            message: request.message,
            announcement: request.announcement,
            force: request.force,
        })
        .await?;
    tracing::info!(window = %window.id, forced = window.forced, mode = ?window.mode,
        starts_at = %rfc3339(window.starts_at_ms), ends_at = %rfc3339(window.ends_at_ms), "maintenance scheduled");
    record_ok(&state, &caller, "maintenance.schedule", &window.id).await;
    let mut response = (StatusCode::CREATED, Json(WindowView::of(&window))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/maintenance/{}", window.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `PATCH /v1/maintenance/{window}`: changes a window.
pub(crate) async fn update(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(id): PathParam,
    _: NoQuery,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let m = maintenance(&state)?;
    let request: PatchRequest = body.read(MAX_MAINTENANCE_BODY_BYTES, "maintenance change").await?;
    if let Some(message) = &request.message {
        check_message(message)?;
    }
    let patch = WindowPatch {
        starts_at_ms: request.starts_at.as_deref().map(|v| time_ms("starts_at", v)).transpose()?,
        ends_at_ms: request.ends_at.as_deref().map(|v| time_ms("ends_at", v)).transpose()?,
        mode: request.mode,
        message: request.message,
        announcement: request.announcement,
        force: request.force,
    };
    let window = m.update(&id, patch).await?;
    record_ok(&state, &caller, "maintenance.update", &window.id).await;
    Ok(Json(WindowView::of(&window)).into_response())
}

/// `DELETE /v1/maintenance/{window}`: cancels a window (204).
pub(crate) async fn cancel(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(id): PathParam,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let window = maintenance(&state)?.cancel(&id).await?;
    tracing::info!(window = %window.id, "maintenance cancelled");
    record_ok(&state, &caller, "maintenance.cancel", &window.id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------------------------
// Announcements and changelog
// ---------------------------------------------------------------------------------------------------------------

/// Announcement requests: a title and a body of at most 20 000 characters, with room for JSON escapes.
const MAX_ANNOUNCEMENT_BODY_BYTES: usize = 128 << 10;

fn announcements(state: &SharedState) -> Result<&Announcements, ApiError> {
    state.ops.announcements.as_deref().ok_or(ApiError::OpsUnavailable("announcements"))
}

#[derive(Debug, Serialize)]
struct AnnouncementView<'a> {
    id: &'a str,
    kind: AnnouncementKind,
    title: &'a str,
    body: &'a str,
    published: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mailed_by: Option<&'a str>,
}

impl<'a> AnnouncementView<'a> {
    fn of(a: &'a Announcement) -> Self {
        AnnouncementView {
            id: &a.id,
            kind: a.kind,
            title: &a.title,
            body: &a.body,
            published: rfc3339(a.published_ms),
            window: a.window.as_deref(),
            topic: a.topic.as_deref(),
            mailed_by: a.mailed_by.as_deref(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnounceRequest {
    kind: AnnouncementKind,
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    topic: Option<String>,
    /// Already mailed to the list by this sender (the downtime monitor, while the service was down): the
    /// service publishes it without mailing it again.
    #[serde(default)]
    mailed_by: Option<String>,
}

/// `POST /v1/announcements` (201).
pub(crate) async fn announce(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    _: NoQuery,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let store = announcements(&state)?;
    let request: AnnounceRequest = body.read(MAX_ANNOUNCEMENT_BODY_BYTES, "announcement").await?;
    let new = NewAnnouncement {
        kind: request.kind,
        title: request.title,
        body: request.body,
        window: None,
        topic: request.topic,
    };
    let published = store.publish_mailed(new, request.mailed_by).await?;
    record_ok(&state, &caller, "announcement.publish", &published.id).await;
    Ok((StatusCode::CREATED, Json(AnnouncementView::of(&published))).into_response())
}

/// `GET /v1/announcements`: newest first.
pub(crate) async fn list_announcements(
    State(state): State<SharedState>,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let all = announcements(&state)?.list().await?;
    let views: Vec<AnnouncementView<'_>> = all.iter().map(AnnouncementView::of).collect();
    Ok(Json(json!({ "announcements": views })).into_response())
}

fn html(text: String) -> Response {
    let mut response = text.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

fn atom(text: String) -> Response {
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/atom+xml; charset=utf-8"));
    response
}

/// The base of absolute links in feeds: the configured public URL, else this request's host.
fn base_url(state: &SharedState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.ops.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    // A Host header is client input: keep only what a host[:port] may contain, so it cannot break the XML.
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        .collect();
    let scheme = if state.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// `GET /announcements`: the HTML page.
pub(crate) async fn announcements_page(State(state): State<SharedState>) -> Result<Response, ApiError> {
    let all = announcements(&state)?.list().await?;
    let (windows, now) = match &state.ops.maintenance {
        Some(m) => (m.list(), m.state().now_ms()),
        None => (Vec::new(), 0),
    };
    Ok(html(esgf_events_ops::pages::announcements_html(&all, &windows, now)?))
}

/// `GET /announcements.atom`.
pub(crate) async fn announcements_feed(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let all = announcements(&state)?.list().await?;
    Ok(atom(esgf_events_ops::pages::announcements_atom(&base_url(&state, &headers), &all)))
}

async fn runtime_changes(state: &SharedState) -> Result<Vec<RuntimeChange>, ApiError> {
    match &state.ops.changelog {
        Some(meta) => {
            esgf_events_ops::changelog::runtime_changes(meta.as_ref()).await.map_err(ApiError::OpsStorage)
        }
        None => Ok(Vec::new()),
    }
}

/// `GET /v1/changelog`: `{"runtime": [...newest first], "releases": [...as in CHANGELOG.md]}`.
pub(crate) async fn changelog(State(state): State<SharedState>, _: NoQuery) -> Result<Response, ApiError> {
    let runtime = runtime_changes(&state).await?;
    let releases: Vec<_> = esgf_events_ops::changelog::releases()
        .into_iter()
        .map(|r| {
            let changes: Vec<_> = r
                .changes
                .into_iter()
                .map(|(category, text)| json!({ "category": category, "text": text }))
                .collect();
            json!({ "version": r.version, "date": r.date, "changes": changes })
        })
        .collect();
    Ok(Json(json!({ "runtime": runtime, "releases": releases })).into_response())
}

/// `GET /changelog`: the HTML page.
pub(crate) async fn changelog_page(State(state): State<SharedState>) -> Result<Response, ApiError> {
    let runtime = runtime_changes(&state).await?;
    Ok(html(esgf_events_ops::pages::changelog_html(&esgf_events_ops::changelog::releases(), &runtime)?))
}

/// `GET /changelog.atom`.
pub(crate) async fn changelog_feed(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let runtime = runtime_changes(&state).await?;
    let releases = esgf_events_ops::changelog::releases();
    Ok(atom(esgf_events_ops::pages::changelog_atom(&base_url(&state, &headers), &releases, &runtime)))
}

/// `GET /v1/announcements/deliveries`: every announcement mail and its state (operators).
pub(crate) async fn deliveries(State(state): State<SharedState>, _: NoQuery) -> Result<Response, ApiError> {
    let mailer = state.ops.mail.as_ref().ok_or(ApiError::OpsUnavailable("announcement mail"))?;
    let deliveries = mailer.deliveries().await.map_err(|e| match e {
        esgf_events_ops::mail::MailError::Meta(e) => ApiError::OpsStorage(e),
        other => ApiError::InvalidRequest(other.to_string()),
    })?;
    Ok(Json(json!({ "deliveries": deliveries })).into_response())
}

// The view is built in `status.rs`, with the status recorder's records.
use crate::status::status_view;

/// `GET /v1/status`: the state (operational or maintenance), the active and upcoming windows (forced ones
/// flagged) and the topics' sizes.
pub(crate) async fn status(State(state): State<SharedState>, _: NoQuery) -> Result<Response, ApiError> {
    Ok(Json(status_view(&state).await?).into_response())
}

/// `GET /status`: the same as an HTML page.
pub(crate) async fn status_page(State(state): State<SharedState>) -> Result<Response, ApiError> {
    Ok(html(esgf_events_ops::pages::status_html(&status_view(&state).await?)?))
}

/// `GET /`: the home page, with the current state; works without announcements configured (none shown).
pub(crate) async fn home_page(State(state): State<SharedState>) -> Result<Response, ApiError> {
    let status = status_view(&state).await?;
    let latest = match &state.ops.announcements {
        Some(store) => store.list().await?,
        None => Vec::new(),
    };
    Ok(html(esgf_events_ops::pages::home_html(&status, &latest)?))
}
