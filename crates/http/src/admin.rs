//! Operator endpoints: producers and consumers (register, list, show, change, rotate, revoke) and the audit log.
//!
//! Registration and rotation answer with the new token, the only time it is ever shown; those responses are
//! marked `Cache-Control: no-store` so no cache along the way keeps a copy.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use esgf_events_auth::{
    AdminError, AuditEntry, Auth, Identity, Principal, PrincipalUpdate, Registration, Role, Secret,
};
use serde::Serialize;

use crate::SharedState;
use crate::access::Caller;
use crate::body::{QueryPairs, check_query, invalid_param, json_body, path_param, query_pairs, query_value};
use crate::error::ApiError;

/// A registration or update body is a few fields; anything larger is not one.
const MAX_ADMIN_BODY_BYTES: usize = 64 << 10;

/// Audit entries per page when the client names no `limit`, and the most it may ask for.
const DEFAULT_AUDIT_LIMIT: usize = 100;
const MAX_AUDIT_LIMIT: usize = 1000;

/// The collection a role's principals live under, in paths and list bodies.
fn collection(role: Role) -> &'static str {
    match role {
        Role::Producer => "producers",
        Role::Consumer => "consumers",
        Role::Operator => "operators",
    }
}

fn singular(role: Role) -> &'static str {
    match role {
        Role::Producer => "producer",
        Role::Consumer => "consumer",
        Role::Operator => "operator",
    }
}

/// The auth service, or `access-control-disabled` on a server running without one.
pub(crate) fn require_auth(state: &SharedState) -> Result<&Arc<Auth>, ApiError> {
    state.auth.as_ref().ok_or(ApiError::AccessControlDisabled)
}

/// The authenticated caller. The guard lets no anonymous call reach an operator route, so `None` here would be
/// a wiring mistake; it still answers 401 rather than acting without an actor.
pub(crate) fn actor(caller: &Option<Extension<Caller>>) -> Result<&Identity, ApiError> {
    caller.as_ref().and_then(|Extension(Caller(identity))| identity.as_ref()).ok_or_else(|| {
        ApiError::Unauthenticated {
            detail: "this request needs credentials".to_owned(),
            invalid_token: false,
        }
    })
}

/// A principal plus its new token.
#[derive(Serialize)]
struct WithToken<'a> {
    #[serde(flatten)]
    principal: &'a Principal,
    token: &'a str,
}

fn with_token(status: StatusCode, principal: &Principal, secret: &Secret) -> Response {
    let mut response = (status, Json(WithToken { principal, token: secret.expose() })).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) async fn register(
    role: Role,
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let auth = require_auth(&state)?;
    let actor = actor(&caller)?;
    check_query(&query_pairs(query)?, &[])?;
    let registration: Registration = json_body(&headers, body, MAX_ADMIN_BODY_BYTES, "registration").await?;

    let (principal, secret) = auth.register(role, registration, actor).await?;
    tracing::info!(role = singular(role), name = %principal.name, actor = %actor.name, "principal registered");
    let mut response = with_token(StatusCode::CREATED, &principal, &secret);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/{}/{}", collection(role), principal.name)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub(crate) async fn list(
    role: Role,
    State(state): State<SharedState>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let auth = require_auth(&state)?;
    check_query(&query_pairs(query)?, &[])?;
    let principals = auth.list(role);
    Ok(Json(serde_json::json!({ collection(role): principals })))
}

pub(crate) async fn get(
    role: Role,
    State(state): State<SharedState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<Json<Principal>, ApiError> {
    let auth = require_auth(&state)?;
    let name = path_param(path)?;
    check_query(&query_pairs(query)?, &[])?;
    auth.get(role, &name).map(Json).ok_or_else(|| AdminError::NotFound(singular(role), name).into())
}

pub(crate) async fn update(
    role: Role,
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Principal>, ApiError> {
    let auth = require_auth(&state)?;
    let actor = actor(&caller)?;
    let name = path_param(path)?;
    check_query(&query_pairs(query)?, &[])?;
    let change: PrincipalUpdate = json_body(&headers, body, MAX_ADMIN_BODY_BYTES, "principal update").await?;

    let principal = auth.update(role, &name, change, actor).await?;
    tracing::info!(role = singular(role), %name, actor = %actor.name, "principal updated");
    Ok(Json(principal))
}

pub(crate) async fn rotate(
    role: Role,
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<Response, ApiError> {
    let auth = require_auth(&state)?;
    let actor = actor(&caller)?;
    let name = path_param(path)?;
    check_query(&query_pairs(query)?, &[])?;
    let (principal, secret) = auth.rotate(role, &name, actor).await?;
    tracing::info!(role = singular(role), %name, actor = %actor.name, "credential rotated");
    Ok(with_token(StatusCode::OK, &principal, &secret))
}

pub(crate) async fn delete(
    role: Role,
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let auth = require_auth(&state)?;
    let actor = actor(&caller)?;
    let name = path_param(path)?;
    check_query(&query_pairs(query)?, &[])?;
    auth.revoke(role, &name, actor).await?;
    tracing::info!(role = singular(role), %name, actor = %actor.name, "principal revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct AuditPage {
    entries: Vec<AuditEntry>,
    /// The `after` of the next page: the last entry's sequence number, or the request's `after` if none.
    next: u64,
}

pub(crate) async fn audit(
    State(state): State<SharedState>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let auth = require_auth(&state)?;
    let pairs = query_pairs(query)?;
    check_query(&pairs, &["after", "limit"])?;
    let after = match query_value(&pairs, "after") {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| invalid_param("after", "must be a non-negative integer"))?,
    };
    let limit = match query_value(&pairs, "limit") {
        None => DEFAULT_AUDIT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_AUDIT_LIMIT).contains(&n) => n,
            _ => {
                return Err(invalid_param(
                    "limit",
                    format!("must be an integer from 1 to {MAX_AUDIT_LIMIT}"),
                ));
            }
        },
    };
    let entries = auth.audit_log(after, limit).await?;
    let next = entries.last().map_or(after, |entry| entry.seq);
    Ok(Json(AuditPage { entries, next }))
}

/// Records an operator action the auth service does not record itself (topic changes).
pub(crate) async fn record(auth: &Auth, actor: &Identity, action: &str, target: &str, outcome: &str) {
    auth.record(AuditEntry {
        seq: 0,
        time: chrono::Utc::now().timestamp_millis(),
        actor: Some(actor.name.clone()),
        action: action.to_owned(),
        target: Some(target.to_owned()),
        remote: None,
        outcome: outcome.to_owned(),
    })
    .await;
}

/// [`record`]s a successful action of the caller, when access control is on (and so the caller known).
pub(crate) async fn record_ok(
    state: &SharedState,
    caller: &Option<Extension<Caller>>,
    action: &str,
    target: &str,
) {
    if let Some(auth) = &state.auth
        && let Ok(identity) = actor(caller)
    {
        record(auth, identity, action, target, "ok").await;
    }
}
