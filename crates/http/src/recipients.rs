//! The announcement list's endpoints: its members (`/v1/announcements/recipients`, operators) and the signed
//! one-click unsubscribe of RFC 8058 (`/v1/announcements/unsubscribe`, anyone holding a link from a mail).
//!
//! `GET /v1/announcements/unsubscribe` only shows a page with a button: mail clients and link scanners fetch
//! links on their own, so a GET must never unsubscribe. The button, and mail providers honouring
//! `List-Unsubscribe-Post`, POST to the same URL, which unsubscribes. A link whose signature does not match its
//! address answers 403 `unsubscribe-signature-invalid`, on GET and POST alike.
//!
//! `POST /v1/announcements/recipients` is idempotent: 201 when the address joins, 200 (with the member as it
//! is) when it already was a member. Adding an address that unsubscribed subscribes it again: the operator's
//! explicit request outranks the earlier one-click.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use esgf_events_ops::maintenance::rfc3339;
use esgf_events_ops::recipients::{AnnounceList, Member};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::SharedState;
use crate::access::Caller;
use crate::admin::record_ok;
use crate::body::{
    JsonBody, NoQuery, PathParam, QueryPairs, check_query, query_pairs, query_value, read_body,
};
use crate::error::ApiError;

/// A member request is an address and a name; anything longer is a mistake.
const MAX_MEMBER_BODY_BYTES: usize = 4 << 10;
/// The one-click body is `List-Unsubscribe=One-Click`; it is read (so the connection stays usable) but not
/// required, since the signed URL alone carries the consent.
const MAX_UNSUBSCRIBE_BODY_BYTES: usize = 1 << 10;

fn list_of(state: &SharedState) -> Result<&AnnounceList, ApiError> {
    state
        .ops
        .mail
        .as_ref()
        .map(|mailer| mailer.list().as_ref())
        .ok_or(ApiError::OpsUnavailable("the announcement list (no smtp_url configured)"))
}

#[derive(Debug, Serialize)]
struct MemberView<'a> {
    address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    added: String,
}

impl<'a> MemberView<'a> {
    fn of(m: &'a Member) -> Self {
        MemberView { address: &m.address, name: m.name.as_deref(), added: rfc3339(m.added_ms) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    address: String,
    #[serde(default)]
    name: Option<String>,
}

/// `GET /v1/announcements/recipients`: the effective list, each address with its sources and whether it
/// unsubscribed.
pub(crate) async fn list(State(state): State<SharedState>, _: NoQuery) -> Result<Response, ApiError> {
    let entries = list_of(&state)?.entries().await?;
    Ok(Json(json!({ "recipients": entries })).into_response())
}

/// `POST /v1/announcements/recipients`: 201 for a new member, 200 for one that already was.
pub(crate) async fn add(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    _: NoQuery,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let list = list_of(&state)?;
    let request: AddRequest = body.read(MAX_MEMBER_BODY_BYTES, "list member").await?;
    let (member, created) = list.add(&request.address, request.name).await?;
    if created {
        record_ok(&state, &caller, "announcements.recipient.add", &member.address).await;
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(MemberView::of(&member))).into_response())
}

/// `DELETE /v1/announcements/recipients/{address}` (204).
pub(crate) async fn remove(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(address): PathParam,
    _: NoQuery,
) -> Result<Response, ApiError> {
    let member = list_of(&state)?.remove(&address).await?;
    record_ok(&state, &caller, "announcements.recipient.remove", &member.address).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The `address` and `sig` of an unsubscribe link.
fn link_params(query: Result<Query<QueryPairs>, QueryRejection>) -> Result<(String, String), ApiError> {
    let pairs = query_pairs(query)?;
    check_query(&pairs, &["address", "sig"])?;
    let missing = |name: &str| ApiError::InvalidQuery {
        detail: format!("the unsubscribe link lacks its '{name}' parameter"),
        parameters: vec![name.to_owned()],
    };
    // Form decoding reads '+' as a space; an address has no spaces, so a link whose '+' was not
    // percent-encoded on its way here still names the right address.
    let address = query_value(&pairs, "address").ok_or_else(|| missing("address"))?.replace(' ', "+");
    let sig = query_value(&pairs, "sig").ok_or_else(|| missing("sig"))?.to_owned();
    Ok((address, sig))
}

fn html(status: StatusCode, text: String) -> Response {
    let mut response = (status, text).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
    // The page holds a signed link: keep it out of shared caches.
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    response
}

/// `GET /v1/announcements/unsubscribe?address=..&sig=..`: a page with a button that POSTs; changes nothing.
pub(crate) async fn unsubscribe_page(
    State(state): State<SharedState>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (address, sig) = link_params(query)?;
    let list = list_of(&state)?;
    list.verify(&address, &sig).await?;
    // Relative to this very URL, so the form works behind a proxy that mounts the service under a prefix.
    let action = esgf_events_ops::recipients::link_query(&address, &sig);
    Ok(html(StatusCode::OK, esgf_events_ops::pages::unsubscribe_html(&address, &action, false)?))
}

/// `POST /v1/announcements/unsubscribe?address=..&sig=..` (RFC 8058 one-click): removes the address from the
/// list for good. An HTML confirmation for browsers (the page's button), JSON otherwise.
pub(crate) async fn unsubscribe(
    State(state): State<SharedState>,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (address, sig) = link_params(query)?;
    let list = list_of(&state)?;
    read_body(&headers, body, MAX_UNSUBSCRIBE_BODY_BYTES).await?;
    let address = list.unsubscribe(&address, &sig).await?;
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        let page = esgf_events_ops::pages::unsubscribe_html(&address, "", true)?;
        return Ok(html(StatusCode::OK, page));
    }
    Ok(Json(json!({ "unsubscribed": address })).into_response())
}
