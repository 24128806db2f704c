//! Request plumbing shared by the handlers: bounded body reading, content-type checks, query and path
//! parameters, each failing with a problem+json [`ApiError`] rather than axum's plain-text rejections.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;

use axum::body::{Body, HttpBody};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};

use crate::error::ApiError;

/// Reads the whole body, refusing it with `body-too-large` as soon as it is known to exceed `limit`: from
/// `Content-Length` before reading anything, or while streaming for chunked bodies.
pub(crate) async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::BodyTooLarge { max: limit });
    }

    // Pre-size from the declared length (already known to be within the limit) to avoid regrowing.
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |len| len as usize));
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame
            .map_err(|err| ApiError::InvalidRequest(format!("could not read the request body: {err}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len().saturating_add(data.len()) > limit {
                return Err(ApiError::BodyTooLarge { max: limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads a JSON request body of at most `limit` bytes as a `T`; `what` names the document in errors.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    what: &str,
) -> Result<T, ApiError> {
    require_json(headers)?;
    let bytes = read_body(headers, body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|err| ApiError::bad_body(what, &err))
}

/// A request body, read as JSON by [`JsonBody::read`] when the handler asks: the checks a handler makes
/// before it reads the body (is the feature configured, does the target exist) keep their precedence over
/// errors in the body.
pub(crate) struct JsonBody {
    headers: HeaderMap,
    body: Body,
}

impl JsonBody {
    /// [`json_body`] of this request.
    pub(crate) async fn read<T: serde::de::DeserializeOwned>(
        self,
        limit: usize,
        what: &str,
    ) -> Result<T, ApiError> {
        json_body(&self.headers, self.body, limit, what).await
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Infallible;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Infallible> {
        let (parts, body) = request.into_parts();
        Ok(JsonBody { headers: parts.headers, body })
    }
}

/// An endpoint that takes no query parameters: a request with any is refused before the handler runs, with
/// the problem [`check_query`] gives when nothing is allowed (and `invalid-query` for an undecodable query).
/// Handlers use it where that check comes first, so the order of their refusals is unchanged.
pub(crate) struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let query = Query::<QueryPairs>::from_request_parts(parts, state).await;
        check_query(&query_pairs(query)?, &[])?;
        Ok(NoQuery)
    }
}

/// Accepts `application/json` and any `+json` type; a missing `Content-Type` is taken as JSON so plain
/// `curl --data-binary` works, but an explicit non-JSON type (a form, say) is a client mistake worth naming.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType { content_type: text.into_owned() })
    }
}

/// The one path parameter (`{topic}`, `{name}`), or a problem+json 400 if it is not valid percent-encoded UTF-8.
pub(crate) fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(topic)| topic).map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))
}

/// The one path parameter, extracted as [`path_param`] reads it (a problem+json 400 if it is not valid
/// percent-encoded UTF-8).
pub(crate) struct PathParam(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        path_param(Path::<String>::from_request_parts(parts, state).await).map(PathParam)
    }
}

/// Query parameters in order; a problem+json 400 if the query string cannot be decoded.
pub(crate) type QueryPairs = Vec<(String, String)>;

pub(crate) fn query_pairs(query: Result<Query<QueryPairs>, QueryRejection>) -> Result<QueryPairs, ApiError> {
    query
        .map(|Query(pairs)| pairs)
        .map_err(|rejection| ApiError::InvalidQuery { detail: rejection.body_text(), parameters: Vec::new() })
}

/// Checks that every parameter is one of `allowed` and none is given twice, naming all offenders at once.
pub(crate) fn check_query(pairs: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    check_query_repeatable(pairs, allowed, &[])
}

/// [`check_query`], except that the parameters in `repeatable` may be given several times (`filter=`).
pub(crate) fn check_query_repeatable(
    pairs: &[(String, String)],
    allowed: &[&str],
    repeatable: &[&str],
) -> Result<(), ApiError> {
    let mut unknown: Vec<String> = Vec::new();
    for (name, _) in pairs {
        if !allowed.contains(&name.as_str()) && !unknown.contains(name) {
            unknown.push(name.clone());
        }
    }
    if !unknown.is_empty() {
        let accepted = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
        return Err(ApiError::InvalidQuery {
            detail: format!("unknown query parameter(s): {}; accepted: {accepted}", unknown.join(", ")),
            parameters: unknown,
        });
    }
    for (i, (name, _)) in pairs.iter().enumerate() {
        if !repeatable.contains(&name.as_str()) && pairs[..i].iter().any(|(earlier, _)| earlier == name) {
            return Err(ApiError::InvalidQuery {
                detail: format!("query parameter '{name}' is given more than once"),
                parameters: vec![name.clone()],
            });
        }
    }
    Ok(())
}

/// The value of parameter `name`, if given (after [`check_query`], there is at most one).
pub(crate) fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Every value of parameter `name`, in order.
pub(crate) fn query_values<'a>(
    pairs: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    pairs.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// An `invalid-query` error about one parameter.
pub(crate) fn invalid_param(name: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidQuery {
        detail: format!("query parameter '{name}': {detail}"),
        parameters: vec![name.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn pairs(list: &[(&str, &str)]) -> QueryPairs {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    fn headers(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_static(value));
        map
    }

    #[test]
    fn unknown_query_parameters_are_all_named() {
        let err = check_query(&pairs(&[("offset", "1"), ("ofset", "2"), ("x", "3")]), &["offset", "limit"])
            .expect_err("unknown parameters");
        let p = err.to_problem();
        assert_eq!(p["type"], "urn:esgf-events:problem:invalid-query");
        assert_eq!(p["parameters"], serde_json::json!(["ofset", "x"]));
        assert!(p["detail"].as_str().is_some_and(|d| d.contains("ofset") && d.contains("x")));
    }

    #[test]
    fn repeated_query_parameter_is_refused() {
        let err = check_query(&pairs(&[("limit", "1"), ("limit", "2")]), &["limit"]).expect_err("repeated");
        assert!(err.to_string().contains("more than once"));
    }

    #[test]
    fn repeatable_parameters_may_repeat_and_others_still_may_not() {
        let list = pairs(&[("filter", "a:1"), ("filter", "b:2"), ("limit", "1")]);
        assert!(check_query_repeatable(&list, &["filter", "limit"], &["filter"]).is_ok());
        assert_eq!(query_values(&list, "filter").collect::<Vec<_>>(), ["a:1", "b:2"]);
        let list = pairs(&[("limit", "1"), ("limit", "2")]);
        assert!(check_query_repeatable(&list, &["filter", "limit"], &["filter"]).is_err());
    }

    #[test]
    fn known_parameters_pass_and_can_be_looked_up() {
        let list = pairs(&[("limit", "5")]);
        assert!(check_query(&list, &["limit", "offset"]).is_ok());
        assert_eq!(query_value(&list, "limit"), Some("5"));
        assert_eq!(query_value(&list, "offset"), None);
    }

    #[test]
    fn json_content_types_are_accepted() {
        assert!(require_json(&HeaderMap::new()).is_ok());
        assert!(require_json(&headers(header::CONTENT_TYPE, "application/json")).is_ok());
        assert!(require_json(&headers(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")).is_ok());
        assert!(require_json(&headers(header::CONTENT_TYPE, "application/cloudevents+json")).is_ok());
    }

    #[test]
    fn form_content_type_is_unsupported() {
        let err = require_json(&headers(header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
            .expect_err("a form is not JSON");
        assert_eq!(err.status().as_u16(), 415);
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_refused_before_reading() {
        let err = read_body(&headers(header::CONTENT_LENGTH, "11"), Body::from("hello world"), 10)
            .await
            .expect_err("too large");
        assert_eq!(err.kind(), "body-too-large");
    }

    #[tokio::test]
    async fn streamed_body_over_the_limit_is_refused() {
        let err = read_body(&HeaderMap::new(), Body::from("hello world"), 10).await.expect_err("too large");
        assert_eq!(err.kind(), "body-too-large");
    }

    #[tokio::test]
    async fn body_at_the_limit_is_read_whole() {
        let bytes = read_body(&HeaderMap::new(), Body::from("0123456789"), 10).await.expect("fits");
        assert_eq!(&bytes[..], b"0123456789");
    }
}
