//! Topic endpoints: create, list, describe, change; and the JSON shape of a topic (retention as `"90d"` or
//! `"forever"`, and whether anyone may read it without credentials), with its catalogue settings (validation,
//! description, owner, schemas, lifecycle state; `esgf_events_catalogue`) when the server has a catalogue.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use esgf_events_engine::{LogStore, Retention, TopicConfig, TopicInfo};
use serde::{Deserialize, Deserializer, Serialize};

use crate::access::Caller;
use crate::admin::{actor, record, require_auth};
use crate::body::{NoQuery, PathParam, QueryPairs, check_query, query_pairs, read_body, require_json};
use crate::error::ApiError;
use crate::{AppState, SharedState};

/// Most partitions a topic may have.
pub(crate) const MAX_PARTITIONS: u32 = 1024;

/// A topic creation or update body is a few fields; anything larger is not one.
const MAX_TOPIC_BODY_BYTES: usize = 64 << 10;

/// The body of `POST /v1/topics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTopicRequest {
    name: String,
    #[serde(default)]
    partitions: Option<u32>,
    /// `"90d"`, `"12h"`, ... or `"forever"`; absent means the configured default.
    #[serde(default)]
    retention: Option<String>,
    /// Absent means the configured default; `null` means no size limit.
    #[serde(default, deserialize_with = "present")]
    retention_bytes: Option<Option<u64>>,
}

/// Tells an explicit `null` (`Some(None)`) from an absent member (`None`, via `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The body of `PATCH /v1/topics/{topic}`: only what is given changes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTopicRequest {
    #[serde(default)]
    public: Option<bool>,
    #[serde(default)]
    retention: Option<String>,
    /// `null` removes the size limit; absent keeps it.
    #[serde(default, deserialize_with = "present")]
    retention_bytes: Option<Option<u64>>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct TopicDescription {
    name: String,
    partitions: u32,
    retention: String,
    retention_bytes: Option<u64>,
    created: String,
    /// Readable without credentials. Always true on a server without access control.
    public: bool,
    offsets: Vec<OffsetsOut>,
    #[serde(flatten)]
    catalogue: Option<CatalogueOut>,
}

/// A topic's catalogue settings as the API shows them.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct CatalogueOut {
    validation: &'static str,
    description: Option<String>,
    owner: Option<String>,
    schemas: Vec<String>,
    pub(crate) state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sunset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    successor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    announcement: Option<String>,
    /// A transition announced for later: `{"state", "at"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled: Option<serde_json::Value>,
    /// The companion errors stream, when the topic has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors_topic: Option<String>,
}

impl CatalogueOut {
    pub(crate) fn of(topic: &str, s: &esgf_events_catalogue::TopicSettings) -> Self {
        use esgf_events_catalogue::rfc3339;
        CatalogueOut {
            validation: s.validation.as_str(),
            description: s.description.clone(),
            owner: s.owner.clone(),
            schemas: s.schemas.clone(),
            state: s.state.as_str(),
            sunset: s.sunset_ms.map(rfc3339),
            successor: s.successor.clone(),
            announcement: s.announcement.clone(),
            scheduled: s
                .scheduled
                .map(|sc| serde_json::json!({ "state": sc.state.as_str(), "at": rfc3339(sc.at_ms) })),
            errors_topic: s.errors_topic.then(|| esgf_events_catalogue::errors_topic_name(topic)),
        }
    }
}

/// Splits a topic request body into its catalogue settings and the rest (parsed strictly by the caller).
/// Catalogue settings on a server without a catalogue are refused rather than silently dropped.
fn split_settings(
    state: &AppState,
    body: &[u8],
) -> Result<(serde_json::Value, esgf_events_catalogue::SettingsChange), ApiError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|err| ApiError::malformed_json(&err))?;
    let change = match value.as_object_mut() {
        Some(map) => esgf_events_catalogue::SettingsChange::take_from(map)?,
        None => esgf_events_catalogue::SettingsChange::default(),
    };
    if !change.is_empty() && state.catalogue.is_none() {
        return Err(ApiError::InvalidRequest(
            "this server has no topic catalogue: settings like validation, \
             description or state are not available"
                .to_owned(),
        ));
    }
    Ok((value, change))
}

/// Checks `change` against `topic`'s current settings without storing anything, so a request is refused whole.
fn dry_run(
    state: &AppState,
    topic: &str,
    change: &esgf_events_catalogue::SettingsChange,
) -> Result<(), ApiError> {
    if let Some(catalogue) = &state.catalogue {
        let current = catalogue.get(topic);
        esgf_events_catalogue::apply(
            topic,
            &current.settings,
            change,
            catalogue.now_ms(),
            "",
            catalogue.schemas(),
        )?;
    }
    Ok(())
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct OffsetsOut {
    partition: u32,
    earliest: u64,
    latest: u64,
}

#[derive(Debug, Serialize)]
struct TopicList {
    topics: Vec<TopicDescription>,
}

pub(crate) async fn create(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    _: NoQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let body = read_body(&headers, body, MAX_TOPIC_BODY_BYTES).await?;
    let (rest, settings) = split_settings(&state, &body)?;
    let request: CreateTopicRequest =
        serde_json::from_value(rest).map_err(|err| ApiError::bad_body("topic request", &err))?;
    let config = topic_config(&request, state.config.default_retention)?;
    dry_run(&state, &request.name, &settings)?;
    let errors_topic = settings.errors_topic == Some(true);
    if errors_topic {
        // Checked up front so the companion's name cannot fail after the topic exists.
        let name = esgf_events_catalogue::errors_topic_name(&request.name);
        if name.len() > 249 {
            return Err(ApiError::InvalidRequest(format!("the errors topic name {name} would be too long")));
        }
    }

    let info = state.store.create_topic(&request.name, config).await?;
    if let Some(catalogue) = &state.catalogue {
        let who = actor(&caller).map_or("operator", |i| i.name.as_str());
        if !settings.is_empty() {
            catalogue.update(&info.name, &settings, who).await?;
        }
        if errors_topic {
            create_errors_topic(&state, catalogue, &info.name, config, who).await?;
        }
        catalogue
            .record_topic_created(&info.name, info.partitions, &format_retention(info.retention.max_age), who)
            .await;
    }
    tracing::info!(
        topic = %info.name,
        partitions = info.partitions,
        retention = %format_retention(info.retention.max_age),
        retention_bytes = ?info.retention.max_bytes,
        "topic created"
    );
    if let Some(auth) = &state.auth {
        record(auth, actor(&caller)?, "topic.create", &info.name, "ok").await;
    }
    let description = describe_info(&state, info).await?;

    let mut response = (StatusCode::CREATED, Json(&description)).into_response();
    // Topic names are validated to `[A-Za-z0-9._-]`, so they are always a valid header value and URL segment.
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/topics/{}", description.name)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Creates `<topic>.errors` beside `topic`: same partitions and retention, no validation (reports of any
/// shape must get through), registered in the catalogue. An existing one is kept.
async fn create_errors_topic(
    state: &AppState,
    catalogue: &esgf_events_catalogue::Catalogue,
    topic: &str,
    config: TopicConfig,
    who: &str,
) -> Result<(), ApiError> {
    let name = esgf_events_catalogue::errors_topic_name(topic);
    match state.store.create_topic(&name, config).await {
        Ok(_) | Err(esgf_events_engine::StoreError::TopicExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let change = esgf_events_catalogue::SettingsChange {
        description: Some(Some(format!("Errors stream of {topic}: {{metadata, data, error}} reports"))),
        ..Default::default()
    };
    catalogue.update(&name, &change, who).await?;
    tracing::info!(%topic, errors_topic = %name, "errors stream created");
    Ok(())
}

pub(crate) async fn list(
    State(state): State<SharedState>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let pairs = query_pairs(query)?;
    check_query(&pairs, &["include"])?;
    let include_retired = parse_include(&pairs)?;
    let topics = list_descriptions(&state, include_retired).await?;
    Ok(Json(TopicList { topics }))
}

/// `include=retired` lists retired topics too (hidden by default).
pub(crate) fn parse_include(pairs: &[(String, String)]) -> Result<bool, ApiError> {
    match crate::body::query_value(pairs, "include") {
        None => Ok(false),
        Some("retired") => Ok(true),
        Some(_) => Err(crate::body::invalid_param("include", "the only value is 'retired'")),
    }
}

/// Every topic's description, by name; retired ones only when asked for.
pub(crate) async fn list_descriptions(
    state: &AppState,
    include_retired: bool,
) -> Result<Vec<TopicDescription>, ApiError> {
    let mut infos = state.store.list_topics().await?;
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let mut topics = Vec::with_capacity(infos.len());
    for info in infos {
        let description = describe_info(state, info).await?;
        let retired = description.catalogue.as_ref().is_some_and(|c| c.state == "retired");
        if include_retired || !retired {
            topics.push(description);
        }
    }
    Ok(topics)
}

pub(crate) async fn describe(
    State(state): State<SharedState>,
    PathParam(topic): PathParam,
    _: NoQuery,
) -> Result<Json<impl Serialize>, ApiError> {
    let info = state.store.describe_topic(&topic).await?;
    Ok(Json(describe_info(&state, info).await?))
}

/// `PATCH /v1/topics/{topic}`: retention through the store, `public` through the auth service. Everything is
/// validated before anything changes; the two changes are not one transaction (retention first).
pub(crate) async fn update(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(topic): PathParam,
    _: NoQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<impl Serialize>, ApiError> {
    require_json(&headers)?;
    let body = read_body(&headers, body, MAX_TOPIC_BODY_BYTES).await?;
    let (rest, settings) = split_settings(&state, &body)?;
    let request: UpdateTopicRequest =
        serde_json::from_value(rest).map_err(|err| ApiError::bad_body("topic update", &err))?;
    if settings.errors_topic.is_some() {
        return Err(ApiError::InvalidRequest(
            "errors_topic can only be set when creating a topic".to_owned(),
        ));
    }
    let auth = match request.public {
        Some(_) => Some(require_auth(&state)?),
        None => None,
    };

    let mut info = state.store.describe_topic(&topic).await?;
    let retention = updated_retention(&request, info.retention)?;
    dry_run(&state, &topic, &settings)?;
    if retention != info.retention {
        let before = info.retention;
        info = state.store.set_retention(&topic, retention).await?;
        if let Some(catalogue) = &state.catalogue {
            let describe = |r: Retention| {
                format!(
                    "{} (retention_bytes {})",
                    format_retention(r.max_age),
                    r.max_bytes.map_or_else(|| "none".to_owned(), |b| b.to_string())
                )
            };
            let who = actor(&caller).map_or("operator", |i| i.name.as_str());
            catalogue.record_retention_change(&topic, &describe(before), &describe(retention), who).await;
        }
        tracing::info!(
            %topic,
            retention = %format_retention(retention.max_age),
            retention_bytes = ?retention.max_bytes,
            "topic retention changed"
        );
        if let Some(auth) = &state.auth {
            let outcome = format!(
                "ok: retention {}, retention_bytes {}",
                format_retention(retention.max_age),
                retention.max_bytes.map_or_else(|| "none".to_owned(), |b| b.to_string())
            );
            record(auth, actor(&caller)?, "topic.retention", &topic, &outcome).await;
        }
    }
    if let (Some(auth), Some(public)) = (auth, request.public) {
        auth.set_topic_public(&topic, public, actor(&caller)?).await?;
        tracing::info!(%topic, public, "topic visibility changed");
    }
    if let Some(catalogue) = &state.catalogue
        && !settings.is_empty()
    {
        catalogue.update(&topic, &settings, actor(&caller).map_or("operator", |i| i.name.as_str())).await?;
    }
    Ok(Json(describe_info(&state, info).await?))
}

/// Validates the request's numbers and fills what it leaves out from the configured defaults.
pub(crate) fn topic_config(
    request: &CreateTopicRequest,
    default: Retention,
) -> Result<TopicConfig, ApiError> {
    let partitions = request.partitions.unwrap_or(1);
    if !(1..=MAX_PARTITIONS).contains(&partitions) {
        return Err(ApiError::InvalidRequest(format!(
            "partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"
        )));
    }
    let retention = apply_retention(request.retention.as_deref(), request.retention_bytes, default)?;
    Ok(TopicConfig { partitions, retention })
}

/// The retention after applying `request` to `current`; refuses the same values creation refuses.
pub(crate) fn updated_retention(
    request: &UpdateTopicRequest,
    current: Retention,
) -> Result<Retention, ApiError> {
    apply_retention(request.retention.as_deref(), request.retention_bytes, current)
}

/// `base` with the given fields replaced: `retention` as text, `retention_bytes` absent / `null` / a size.
fn apply_retention(
    retention: Option<&str>,
    retention_bytes: Option<Option<u64>>,
    base: Retention,
) -> Result<Retention, ApiError> {
    let max_age = match retention {
        None => base.max_age,
        Some(text) => parse_retention(text).map_err(ApiError::InvalidRequest)?,
    };
    let max_bytes = match retention_bytes {
        None => base.max_bytes,
        Some(Some(0)) => {
            return Err(ApiError::InvalidRequest(
                "retention_bytes must be positive, or null for no size limit".to_owned(),
            ));
        }
        Some(bytes) => bytes,
    };
    Ok(Retention { max_age, max_bytes })
}

/// `"forever"` is no age limit; anything else is a humantime duration (`"90d"`, `"12h"`, `"1d 12h"`).
pub(crate) fn parse_retention(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    let duration = humantime::parse_duration(text).map_err(|err| {
        format!("retention '{text}' is neither \"forever\" nor a duration like \"90d\": {err}")
    })?;
    if duration.is_zero() {
        return Err("retention must be longer than zero (use \"forever\" for no age limit)".to_owned());
    }
    Ok(Some(duration))
}

/// The inverse of [`parse_retention`], in whole units: `90d`, `12h`, `1d 12h`, `forever`.
///
/// Not `humantime::format_duration`, which would render 90 days as months and fractional days.
pub(crate) fn format_retention(max_age: Option<Duration>) -> String {
    let Some(age) = max_age else {
        return "forever".to_owned();
    };
    const UNITS: [(u128, &str); 5] =
        [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")];
    let mut rest = age.as_millis();
    if rest == 0 {
        return "0s".to_owned();
    }
    let mut parts = Vec::new();
    for (unit_ms, suffix) in UNITS {
        let count = rest / unit_ms;
        if count > 0 {
            parts.push(format!("{count}{suffix}"));
            rest -= count * unit_ms;
        }
    }
    parts.join(" ")
}

/// RFC 3339, UTC, millisecond precision, `Z`: the one timestamp format of the API.
pub(crate) fn format_timestamp(ms: i64) -> String {
    let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    });
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn describe_info(state: &AppState, info: TopicInfo) -> Result<TopicDescription, ApiError> {
    let store: &dyn LogStore = state.store.as_ref();
    let public = state.auth.as_ref().is_none_or(|auth| auth.is_topic_public(&info.name));
    let mut offsets = Vec::with_capacity(info.partitions as usize);
    for partition in 0..info.partitions {
        let o = store.offsets(&info.name, partition).await?;
        offsets.push(OffsetsOut { partition, earliest: o.earliest, latest: o.latest });
    }
    Ok(TopicDescription {
        retention: format_retention(info.retention.max_age),
        retention_bytes: info.retention.max_bytes,
        created: format_timestamp(info.created_ms),
        partitions: info.partitions,
        catalogue: state
            .catalogue
            .as_ref()
            .map(|c| CatalogueOut::of(&info.name, &c.get(&info.name).settings)),
        name: info.name,
        public,
        offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> CreateTopicRequest {
        serde_json::from_str(json).expect("valid request")
    }

    #[test]
    fn retention_round_trips_in_whole_units() {
        for text in ["90d", "12h", "1d 12h", "30m", "45s", "1s 500ms", "forever"] {
            let parsed = parse_retention(text).expect(text);
            assert_eq!(format_retention(parsed), text);
        }
        assert_eq!(format_retention(Retention::DEFAULT.max_age), "90d");
        assert_eq!(format_retention(Some(Duration::from_secs(36 * 3600))), "1d 12h");
    }

    #[test]
    fn retention_refuses_garbage_and_zero() {
        assert!(parse_retention("ninety days").is_err());
        assert!(parse_retention("0s").is_err());
        assert_eq!(parse_retention("FOREVER"), Ok(None));
    }

    #[test]
    fn omitted_fields_take_the_configured_defaults() {
        let default = Retention { max_age: Some(Duration::from_secs(3600)), max_bytes: Some(1 << 30) };
        let config = topic_config(&request(r#"{"name":"t"}"#), default).expect("valid");
        assert_eq!(config, TopicConfig { partitions: 1, retention: default });
    }

    #[test]
    fn explicit_null_retention_bytes_means_no_size_limit() {
        let default = Retention { max_age: None, max_bytes: Some(1 << 30) };
        let config =
            topic_config(&request(r#"{"name":"t","retention_bytes":null}"#), default).expect("valid");
        assert_eq!(config.retention.max_bytes, None);
        let config =
            topic_config(&request(r#"{"name":"t","retention_bytes":1000}"#), default).expect("valid");
        assert_eq!(config.retention.max_bytes, Some(1000));
    }

    #[test]
    fn partitions_outside_1_to_1024_are_refused() {
        for bad in [0, 1025] {
            let json = format!(r#"{{"name":"t","partitions":{bad}}}"#);
            assert!(topic_config(&request(&json), Retention::DEFAULT).is_err(), "{bad}");
        }
        let config = topic_config(
            &request(r#"{"name":"t","partitions":1024,"retention":"forever"}"#),
            Retention::DEFAULT,
        )
        .expect("valid");
        assert_eq!((config.partitions, config.retention.max_age), (1024, None));
    }

    fn update(json: &str) -> UpdateTopicRequest {
        serde_json::from_str(json).expect("valid update")
    }

    #[test]
    fn update_changes_only_what_it_names() {
        let current = Retention { max_age: Some(Duration::from_secs(3600)), max_bytes: Some(1 << 30) };
        assert_eq!(updated_retention(&update("{}"), current).expect("valid"), current);
        assert_eq!(updated_retention(&update(r#"{"public":true}"#), current).expect("valid"), current);
        let changed = updated_retention(&update(r#"{"retention":"forever"}"#), current).expect("valid");
        assert_eq!(changed, Retention { max_age: None, max_bytes: Some(1 << 30) });
        let changed = updated_retention(&update(r#"{"retention_bytes":null}"#), current).expect("valid");
        assert_eq!(changed, Retention { max_age: Some(Duration::from_secs(3600)), max_bytes: None });
    }

    #[test]
    fn update_refuses_zero_sizes_garbage_and_unknown_fields() {
        let current = Retention::DEFAULT;
        assert!(updated_retention(&update(r#"{"retention_bytes":0}"#), current).is_err());
        assert!(updated_retention(&update(r#"{"retention":"soon"}"#), current).is_err());
        assert!(serde_json::from_str::<UpdateTopicRequest>(r#"{"partitions":2}"#).is_err());
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        assert!(serde_json::from_str::<CreateTopicRequest>(r#"{"name":"t","partition":3}"#).is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(1_795_773_600_123), "2026-11-27T10:00:00.123Z");
    }
}
