//! The access guard in front of every route: authentication (bearer token or JWT), the per-IP limit on
//! anonymous calls, and authorization of the route's [`Access`] for the caller.
//!
//! Handlers behind it find the caller in the request extensions as [`Caller`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{ConnectInfo, RawPathParams, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use esgf_events_auth::{Action, AuditEntry, Auth, Identity};

use crate::SharedState;
use crate::error::ApiError;
use crate::routes::{Access, RouteSpec};

/// Who is calling: `None` when anonymous, or when the server runs without access control.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Option<Identity>);

/// What the `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
enum Credentials<'a> {
    None,
    Bearer(&'a str),
    /// Present but not a bearer token; the reason is safe to show (it never contains the header value).
    Malformed(&'static str),
}

fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credentials::None;
    };
    let Ok(text) = value.to_str() else {
        return Credentials::Malformed("the Authorization header is not valid text");
    };
    let text = text.trim();
    let Some((scheme, token)) = text.split_once(' ') else {
        return Credentials::Malformed("the Authorization header must be 'Bearer <token>'");
    };
    // RFC 9110 section 11.1: the scheme is case-insensitive.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Credentials::Malformed("only 'Bearer' credentials are accepted");
    }
    match token.trim() {
        "" => Credentials::Malformed("the bearer token is empty"),
        token => Credentials::Bearer(token),
    }
}

pub(crate) async fn guard(
    State((state, spec)): State<(SharedState, &'static RouteSpec)>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = state.auth.clone() else {
        request.extensions_mut().insert(Caller(None));
        return next.run(request).await;
    };
    if spec.access == Access::Probe {
        request.extensions_mut().insert(Caller(None));
        return next.run(request).await;
    }
    let remote = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr);
    // Without connection info (only in-process callers that set none) all share one anonymous bucket.
    let ip = remote.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip());

    let identity = match credentials(request.headers()) {
        Credentials::None => None,
        Credentials::Malformed(reason) => {
            let err = ApiError::Unauthenticated { detail: reason.to_owned(), invalid_token: true };
            return refuse_credentials(&auth, spec, remote, ip, reason.to_owned(), err).await;
        }
        Credentials::Bearer(token) => match auth.authenticate_bearer(token).await {
            Ok(identity) => Some(identity),
            Err(err) => {
                let outcome = format!("failed: {err}");
                return refuse_credentials(
                    &auth,
                    spec,
                    remote,
                    ip,
                    outcome,
                    ApiError::invalid_credentials(&err),
                )
                .await;
            }
        },
    };

    if identity.is_none()
        && let Err(limited) = auth.check_anonymous_rate(ip)
    {
        return ApiError::RateLimited { policy: "anonymous", limited }.into_response();
    }

    let topic = match spec.access {
        Access::Read | Access::Publish => match params.as_ref().ok().and_then(topic_of) {
            Some(topic) => Some(topic),
            None => {
                let detail = match &params {
                    Err(rejection) => rejection.body_text(),
                    Ok(_) => "the path names no topic".to_owned(),
                };
                return ApiError::InvalidRequest(detail).into_response();
            }
        },
        _ => None,
    };
    let action = match (spec.access, topic.as_deref()) {
        (Access::Read, Some(topic)) => Some(Action::Read { topic }),
        (Access::Publish, Some(topic)) => Some(Action::Publish { topic }),
        (Access::ManageTopics, _) => Some(Action::ManageTopics),
        (Access::ManagePrincipals, _) => Some(Action::ManagePrincipals),
        (Access::ReadAudit, _) => Some(Action::ReadAudit),
        // Operators only; the auth crate has no narrower operator action, and managing principals is one.
        (Access::Operate, _) => Some(Action::ManagePrincipals),
        _ => None,
    };
    if spec.access == Access::Group && identity.is_none() {
        return ApiError::Unauthenticated {
            detail: "consumer groups belong to principals: this request needs credentials \
                     (Authorization: Bearer <token>)"
                .to_owned(),
            invalid_token: false,
        }
        .into_response();
    }
    if spec.access == Access::Subscriptions && identity.is_none() {
        return ApiError::Unauthenticated {
            detail: "webhook subscriptions belong to principals: this request needs credentials \
                     (Authorization: Bearer <token>)"
                .to_owned(),
            invalid_token: false,
        }
        .into_response();
    }
    if let Some(action) = action
        && let Err(denied) = auth.authorize(identity.as_ref(), action)
    {
        tracing::info!(
            principal = identity.as_ref().map(|i| i.name.as_str()),
            method = %spec.method,
            route = spec.path,
            missing = %denied.missing,
            "request denied"
        );
        let err = match identity {
            // Anonymous callers are told to authenticate (401), not that they may not (403).
            None => ApiError::Unauthenticated {
                detail: format!(
                    "this request needs credentials (Authorization: Bearer <token>): {}",
                    denied.missing
                ),
                invalid_token: false,
            },
            Some(_) => ApiError::Forbidden(denied),
        };
        return err.into_response();
    }

    request.extensions_mut().insert(Caller(identity));
    next.run(request).await
}

fn topic_of(params: &RawPathParams) -> Option<String> {
    params.iter().find(|(name, _)| *name == "topic").map(|(_, value)| value.to_owned())
}

/// Answers refused credentials: 401 plus an `auth.failure` audit entry. Failures count against the caller's
/// anonymous per-IP budget, so a flood of bad tokens costs neither unbounded JWT checks nor unbounded audit
/// writes: over the budget the answer is 429 and only the server log records it.
async fn refuse_credentials(
    auth: &Auth,
    spec: &RouteSpec,
    remote: Option<SocketAddr>,
    ip: IpAddr,
    outcome: String,
    err: ApiError,
) -> Response {
    esgf_events_ops::metrics::auth_failure("http");
    if let Err(limited) = auth.check_anonymous_rate(ip) {
        tracing::warn!(%ip, route = spec.path, "authentication failures over the per-IP limit");
        return ApiError::RateLimited { policy: "anonymous", limited }.into_response();
    }
    tracing::info!(remote = ?remote, method = %spec.method, route = spec.path, %outcome, "authentication failed");
    auth.record(AuditEntry {
        seq: 0,
        time: chrono::Utc::now().timestamp_millis(),
        actor: None,
        action: "auth.failure".to_owned(),
        target: Some(format!("{} {}", spec.method, spec.path)),
        remote: remote.map(|addr| addr.to_string()),
        outcome,
    })
    .await;
    err.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_authorization(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn no_header_is_anonymous() {
        assert_eq!(credentials(&HeaderMap::new()), Credentials::None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_trimmed() {
        assert_eq!(credentials(&with_authorization("Bearer abc")), Credentials::Bearer("abc"));
        assert_eq!(credentials(&with_authorization("bearer  abc ")), Credentials::Bearer("abc"));
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_malformed() {
        for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "abc"] {
            assert!(matches!(credentials(&with_authorization(value)), Credentials::Malformed(_)), "{value}");
        }
    }

    #[test]
    fn malformed_reasons_never_repeat_the_header() {
        let Credentials::Malformed(reason) = credentials(&with_authorization("Basic c2VjcmV0")) else {
            panic!("Basic is not a bearer token");
        };
        assert!(!reason.contains("c2VjcmV0"));
    }
}
