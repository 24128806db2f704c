//! Webhook subscriptions over HTTP: the API in front of the webhook dispatcher ([`SubscriptionControl`]).
//!
//! | Method | Path                                      | Answer                                            |
//! |--------|-------------------------------------------|---------------------------------------------------|
//! | POST   | `/v1/subscriptions`                       | 201, the subscription plus its `secret` (once)    |
//! | GET    | `/v1/subscriptions`                       | `{"subscriptions": [...]}`: own, or all (operator) |
//! | GET    | `/v1/subscriptions/{id}`                  | state, last error and delivery, cursors, lag      |
//! | DELETE | `/v1/subscriptions/{id}`                  | 204                                               |
//! | POST   | `/v1/subscriptions/{id}/pause`, `/resume` | the subscription                                  |
//! | GET    | `/v1/subscriptions/{id}/dead-letters`     | `{"dead_letters": [...], "next"}`, `after`/`limit` |
//! | POST   | `/v1/subscriptions/{id}/redrive`          | 202 `{"queued": N}`                               |
//!
//! Access: creating needs a consumer with a read grant on the topic (or the topic is public), or an operator;
//! everything about one subscription needs its owner or an operator (403 otherwise). The dispatcher checks
//! again before every delivery batch that the owner may still read the topic ([`webhook_access`]).
//!
//! The creation answer is the only one that holds the secret, and it is marked `Cache-Control: no-store`.
//! Creation and deletion are audited.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use esgf_events_auth::{Action, AuditEntry, Auth, AuthMethod, Denied, Identity, Role};
use esgf_events_webhooks::{
    AccessCheck, DeadLetter, NewSubscription, SubscriptionControl, SubscriptionView, WebhookError,
};
use serde::Serialize;

use crate::SharedState;
use crate::access::Caller;
use crate::body::{
    NoQuery, PathParam, QueryPairs, check_query, invalid_param, json_body, path_param, query_pairs,
    query_value,
};
use crate::error::ApiError;

/// A subscription request is a few short fields.
const MAX_SUBSCRIPTION_BODY_BYTES: usize = 64 << 10;
/// Dead letters per page when the client names no `limit`, and the most it may ask for.
const DEFAULT_DEAD_LETTER_LIMIT: usize = 100;
const MAX_DEAD_LETTER_LIMIT: usize = 1000;
/// The owner recorded on a server without access control (tests and benchmarks only).
const NO_ACCESS_CONTROL_OWNER: &str = "anonymous";

/// The dispatcher, or `webhooks-unavailable` on a server built without one.
fn control(state: &SharedState) -> Result<&Arc<dyn SubscriptionControl>, ApiError> {
    state.webhooks.as_ref().ok_or(ApiError::WebhooksUnavailable)
}

fn identity(caller: &Option<Extension<Caller>>) -> Option<&Identity> {
    caller.as_ref().and_then(|Extension(Caller(identity))| identity.as_ref())
}

/// Who the caller is for subscriptions.
enum Who<'a> {
    /// Operators, or anyone on a server without access control: sees and changes every subscription.
    Unrestricted { name: &'a str },
    /// A consumer (or, refused on creation, a producer): sees and changes its own only.
    Owner(&'a Identity),
}

impl Who<'_> {
    fn name(&self) -> &str {
        match self {
            Who::Unrestricted { name } => name,
            Who::Owner(identity) => &identity.name,
        }
    }
}

fn principal<'a>(state: &SharedState, caller: &'a Option<Extension<Caller>>) -> Result<Who<'a>, ApiError> {
    if state.auth.is_none() {
        return Ok(Who::Unrestricted { name: NO_ACCESS_CONTROL_OWNER });
    }
    // The guard lets no anonymous call through to these routes; answering 401 here is only a safety net.
    let who = identity(caller).ok_or_else(|| ApiError::Unauthenticated {
        detail: "webhook subscriptions belong to principals: this request needs credentials".to_owned(),
        invalid_token: false,
    })?;
    Ok(if who.role == Role::Operator { Who::Unrestricted { name: &who.name } } else { Who::Owner(who) })
}

/// The subscription, if the caller may see and change it.
async fn owned(
    state: &SharedState,
    caller: &Option<Extension<Caller>>,
    id: &str,
    action: &str,
) -> Result<SubscriptionView, ApiError> {
    let view = control(state)?.get(id).await?;
    if let Who::Owner(who) = principal(state, caller)?
        && who.name != view.owner
    {
        return Err(ApiError::Forbidden(Denied {
            principal: who.name.clone(),
            action: format!("{action} subscription '{id}'"),
            missing: format!("ownership of subscription '{id}' (or the operator role)"),
        }));
    }
    Ok(view)
}

#[derive(Serialize)]
struct WithSecret<'a> {
    #[serde(flatten)]
    subscription: &'a SubscriptionView,
    secret: &'a str,
}

pub(crate) async fn create(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let control = control(&state)?;
    check_query(&query_pairs(query)?, &[])?;
    let request: NewSubscription =
        json_body(&headers, body, MAX_SUBSCRIPTION_BODY_BYTES, "subscription").await?;

    let owner = principal(&state, &caller)?;
    if let (Who::Owner(who), Some(auth)) = (&owner, &state.auth) {
        if who.role != Role::Consumer {
            return Err(ApiError::Forbidden(Denied {
                principal: who.name.clone(),
                action: "create a webhook subscription".to_owned(),
                missing: "the consumer role (or the operator role)".to_owned(),
            }));
        }
        auth.authorize(Some(who), Action::Read { topic: &request.topic })?;
    }
    // The dispatcher logs the creation (owner, topic, host); the URL itself may embed a secret.
    let created = control.create(owner.name(), request).await?;
    let view = &created.subscription;
    if let Some(auth) = &state.auth {
        audit(auth, owner.name(), "subscription.create", &view.id).await;
    }
    let body = WithSecret { subscription: view, secret: created.secret.expose() };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/subscriptions/{}", view.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok(response)
}

pub(crate) async fn list(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let control = control(&state)?;
    check_query(&query_pairs(query)?, &[])?;
    let subscriptions = match principal(&state, &caller)? {
        Who::Unrestricted { .. } => control.list(None).await?,
        Who::Owner(who) => control.list(Some(&who.name)).await?,
    };
    Ok(Json(serde_json::json!({ "subscriptions": subscriptions })))
}

pub(crate) async fn get(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(id): PathParam,
    _: NoQuery,
) -> Result<Json<SubscriptionView>, ApiError> {
    Ok(Json(owned(&state, &caller, &id, "read").await?))
}

pub(crate) async fn delete(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(id): PathParam,
    _: NoQuery,
) -> Result<StatusCode, ApiError> {
    owned(&state, &caller, &id, "delete").await?;
    control(&state)?.delete(&id).await?;
    let actor = principal(&state, &caller)?;
    tracing::info!(subscription = %id, actor = actor.name(), "webhook subscription deleted");
    if let Some(auth) = &state.auth {
        audit(auth, actor.name(), "subscription.delete", &id).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn pause(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(id): PathParam,
    _: NoQuery,
) -> Result<Json<SubscriptionView>, ApiError> {
    owned(&state, &caller, &id, "pause").await?;
    Ok(Json(control(&state)?.pause(&id).await?))
}

pub(crate) async fn resume(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(id): PathParam,
    _: NoQuery,
) -> Result<Json<SubscriptionView>, ApiError> {
    owned(&state, &caller, &id, "resume").await?;
    Ok(Json(control(&state)?.resume(&id).await?))
}

#[derive(Serialize)]
struct DeadLetterPage {
    dead_letters: Vec<DeadLetter>,
    /// The `after` of the next page: the last entry's `seq`, or the request's `after` if none.
    next: u64,
}

pub(crate) async fn dead_letters(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let id = path_param(path)?;
    let pairs = query_pairs(query)?;
    check_query(&pairs, &["after", "limit"])?;
    let after = match query_value(&pairs, "after") {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| invalid_param("after", "must be a non-negative integer"))?,
    };
    let limit = match query_value(&pairs, "limit") {
        None => DEFAULT_DEAD_LETTER_LIMIT,
        Some(v) => {
            v.parse::<usize>().ok().filter(|n| (1..=MAX_DEAD_LETTER_LIMIT).contains(n)).ok_or_else(|| {
                invalid_param("limit", format!("must be an integer from 1 to {MAX_DEAD_LETTER_LIMIT}"))
            })?
        }
    };
    owned(&state, &caller, &id, "read the dead letters of").await?;
    let dead_letters = control(&state)?.dead_letters(&id, after, limit).await?;
    let next = dead_letters.last().map_or(after, |letter| letter.seq);
    Ok(Json(DeadLetterPage { dead_letters, next }))
}

pub(crate) async fn redrive(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(id): PathParam,
    _: NoQuery,
) -> Result<Response, ApiError> {
    owned(&state, &caller, &id, "redrive").await?;
    let queued = control(&state)?.redrive(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "queued": queued }))).into_response())
}

/// Records a subscription being created or deleted, for operators reviewing who sends events where.
async fn audit(auth: &Auth, actor: &str, action: &str, id: &str) {
    auth.record(AuditEntry {
        seq: 0,
        time: chrono::Utc::now().timestamp_millis(),
        actor: Some(actor.to_owned()),
        action: action.to_owned(),
        target: Some(id.to_owned()),
        remote: None,
        outcome: "ok".to_owned(),
    })
    .await;
}

/// The dispatcher's re-check of a subscription owner's read grant, over access control: an owner that no longer
/// exists, or lost its grant, gets no more deliveries.
pub fn webhook_access(auth: Arc<Auth>) -> Arc<dyn AccessCheck> {
    Arc::new(AuthAccess(auth))
}

struct AuthAccess(Arc<Auth>);

impl AccessCheck for AuthAccess {
    fn may_read(&self, principal: &str, topic: &str) -> bool {
        [Role::Consumer, Role::Operator].into_iter().any(|role| {
            self.0.get(role, principal).is_some() && {
                let who = Identity { name: principal.to_owned(), role, method: AuthMethod::Token };
                self.0.authorize(Some(&who), Action::Read { topic }).is_ok()
            }
        })
    }
}

impl From<WebhookError> for ApiError {
    fn from(err: WebhookError) -> Self {
        match err {
            // Topic and storage errors speak the log's problem kinds (topic-not-found, ...).
            WebhookError::Store(store) => ApiError::Store(store),
            other => ApiError::Webhook(other),
        }
    }
}
