//! What a topic's lifecycle shows to clients: the deprecation headers on every response about a deprecated
//! (or later) topic, and the human-readable catalogue page `GET /topics`.
//!
//! Headers: `Deprecation: @<unix seconds>` (RFC 9745, when the topic became deprecated), `Sunset: <HTTP-date>`
//! (RFC 8594) when a sunset is set, and `Link`s to the announcement (`rel="deprecation"`) and to the successor
//! topic (`rel="successor-version"`). Clients learn of a deprecation from the responses they already get.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use chrono::DateTime;
use esgf_events_catalogue::{TopicSettings, TopicState};

use crate::SharedState;
use crate::body::{QueryPairs, check_query, query_pairs};
use crate::error::ApiError;
use crate::topics::{list_descriptions, parse_include};

/// The topic a request path is about: `/v1/topics/{topic}` and everything under it.
fn topic_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/topics/")?;
    let topic = rest.split('/').next()?;
    (!topic.is_empty()).then_some(topic)
}

/// Adds the deprecation headers to responses about a topic that is no longer simply active.
pub(crate) async fn headers(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let topic = topic_of(request.uri().path()).map(str::to_owned);
    let mut response = next.run(request).await;
    if let (Some(catalogue), Some(topic)) = (&state.catalogue, topic) {
        let entry = catalogue.get(&topic);
        if entry.settings.state != TopicState::Active {
            add_headers(response.headers_mut(), &entry.settings);
        }
    }
    response
}

/// RFC 9110 IMF-fixdate, as `Sunset` wants.
fn http_date(ms: i64) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
}

fn add_headers(headers: &mut HeaderMap, settings: &TopicSettings) {
    let since_ms = settings.deprecated_since_ms.or(settings.state_since_ms).unwrap_or(0);
    let since_s = since_ms.div_euclid(1000);
    if let Ok(value) = HeaderValue::from_str(&format!("@{since_s}")) {
        headers.insert("deprecation", value);
    }
    if let Some(value) = settings.sunset_ms.and_then(http_date).and_then(|d| HeaderValue::from_str(&d).ok()) {
        headers.insert("sunset", value);
    }
    // Both were checked to be printable ASCII without angle brackets when they were set.
    if let Some(url) = &settings.announcement
        && let Ok(value) = HeaderValue::from_str(&format!("<{url}>; rel=\"deprecation\"; type=\"text/html\""))
    {
        headers.append(header::LINK, value);
    }
    if let Some(successor) = &settings.successor
        && let Ok(value) =
            HeaderValue::from_str(&format!("</v1/topics/{successor}>; rel=\"successor-version\""))
    {
        headers.append(header::LINK, value);
    }
}

/// `GET /topics`: the catalogue as a plain, accessible HTML table (no scripts, no external resources), on the
/// site's shared layout (`esgf_events_ops::pages`).
pub(crate) async fn page(
    State(state): State<SharedState>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query)?;
    check_query(&pairs, &["include"])?;
    let include_retired = parse_include(&pairs)?;
    let topics = list_descriptions(&state, include_retired).await?;
    let value = serde_json::to_value(&topics).unwrap_or_default();
    Ok(Html(esgf_events_ops::pages::topics_html(&value, include_retired)?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_is_taken_from_topic_paths_only() {
        assert_eq!(topic_of("/v1/topics/a.b"), Some("a.b"));
        assert_eq!(topic_of("/v1/topics/a.b/events"), Some("a.b"));
        assert_eq!(topic_of("/v1/topics"), None);
        assert_eq!(topic_of("/v1/topics/"), None);
        assert_eq!(topic_of("/topics"), None);
    }

    #[test]
    fn deprecation_headers_follow_the_rfcs() {
        let settings = TopicSettings {
            state: TopicState::Deprecated,
            state_since_ms: Some(1_800_000_000_500),
            sunset_ms: Some(1_800_000_000_000),
            successor: Some("esgf2.publications.v2".into()),
            announcement: Some("https://esgf.example.org/news/1".into()),
            ..TopicSettings::default()
        };
        let mut headers = HeaderMap::new();
        add_headers(&mut headers, &settings);
        assert_eq!(headers["deprecation"], "@1800000000");
        assert_eq!(headers["sunset"], "Fri, 15 Jan 2027 08:00:00 GMT");
        let links: Vec<_> =
            headers.get_all(header::LINK).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(
            links,
            [
                "<https://esgf.example.org/news/1>; rel=\"deprecation\"; type=\"text/html\"",
                "</v1/topics/esgf2.publications.v2>; rel=\"successor-version\""
            ]
        );
    }
}
