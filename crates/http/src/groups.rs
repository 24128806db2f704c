//! Consumer groups over HTTP: committed offsets shared with the Kafka endpoint (same store, same keys), so a
//! group can move between protocols and resume where it left off.
//!
//! - `PUT /v1/groups/{group}/offsets` commits `{"topic","partition","offset"}` or `{"offsets":[...]}`: the
//!   NEXT offset to read (Kafka's convention: last processed + 1), all entries atomically. An offset beyond the
//!   partition's end is refused (416); one below its start is accepted (reading it starts at the earliest).
//! - `GET /v1/groups/{group}`: committed offsets, with each partition's end and the lag (end - committed).
//! - `group=` on `GET .../events` and `GET .../stream` starts reading at the committed offsets.
//!
//! Access: a principal (never anonymous) with a read grant on every topic involved, and the group must be its
//! own ([`esgf_events_auth::Auth::claim_group`]: the first principal to use a group owns it; operators may use
//! any). A topic the caller can no longer read is left out of what `GET` shows.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use esgf_events_auth::{Action, Identity};
use esgf_events_engine::StoreError;
use esgf_events_meta::offsets::{GroupOffsets, OffsetCommit};
use serde::{Deserialize, Serialize};

use crate::access::Caller;
use crate::body::{JsonBody, NoQuery, PathParam};
use crate::error::ApiError;
use crate::topics::format_timestamp;
use crate::{AppState, SharedState};

/// Longest group id (the same bound access control and Kafka apply).
const MAX_GROUP_ID_BYTES: usize = 255;
/// Most offsets one commit may carry (every partition of ten of the largest topics).
const MAX_COMMIT_ENTRIES: usize = 10_240;
/// A commit body is a list of small entries.
const MAX_COMMIT_BODY_BYTES: usize = 2 << 20;
/// Longest free-text metadata attached to one committed offset.
const MAX_METADATA_BYTES: usize = 4096;

/// The group store, once the caller is known to be allowed to use `group`.
///
/// Call it after every topic-level check of the request, so a refused request does not claim the group.
pub(crate) async fn open_group(
    state: &AppState,
    caller: Option<&Identity>,
    group: &str,
) -> Result<GroupOffsets, ApiError> {
    let offsets = state.offsets.clone().ok_or(ApiError::GroupsUnavailable)?;
    if group.is_empty() || group.len() > MAX_GROUP_ID_BYTES || group.contains('\0') {
        return Err(ApiError::InvalidRequest(format!(
            "a consumer group id is 1 to {MAX_GROUP_ID_BYTES} bytes without NUL characters"
        )));
    }
    if let Some(auth) = &state.auth {
        let Some(who) = caller else {
            return Err(ApiError::Unauthenticated {
                detail: "consumer groups belong to principals: using one needs credentials \
                         (Authorization: Bearer <token>)"
                    .to_owned(),
                invalid_token: false,
            });
        };
        auth.claim_group(who, group).await?;
    }
    Ok(offsets)
}

/// Refuses unless `caller` may read `topic` (always allowed without access control).
fn authorize_read(state: &AppState, caller: Option<&Identity>, topic: &str) -> Result<(), ApiError> {
    match &state.auth {
        Some(auth) => Ok(auth.authorize(caller, Action::Read { topic })?),
        None => Ok(()),
    }
}

fn identity(caller: &Option<Extension<Caller>>) -> Option<&Identity> {
    caller.as_ref().and_then(|Extension(Caller(identity))| identity.as_ref())
}

/// The body of a commit: one entry inline, or a list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitRequest {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    metadata: Option<String>,
    #[serde(default)]
    offsets: Option<Vec<CommitEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitEntry {
    topic: String,
    partition: u32,
    offset: u64,
    #[serde(default)]
    metadata: Option<String>,
}

impl CommitRequest {
    fn entries(self) -> Result<Vec<CommitEntry>, ApiError> {
        let shape = "send {\"topic\", \"partition\", \"offset\"} or {\"offsets\": [{\"topic\", \"partition\", \"offset\"}, ...]}";
        match self {
            CommitRequest {
                topic: None,
                partition: None,
                offset: None,
                metadata: None,
                offsets: Some(list),
            } => {
                if list.is_empty() {
                    return Err(ApiError::InvalidRequest(format!("'offsets' is empty: {shape}")));
                }
                Ok(list)
            }
            CommitRequest {
                topic: Some(topic),
                partition: Some(partition),
                offset: Some(offset),
                metadata,
                offsets: None,
            } => Ok(vec![CommitEntry { topic, partition, offset, metadata }]),
            _ => Err(ApiError::InvalidRequest(format!("incomplete or mixed commit: {shape}"))),
        }
    }
}

pub(crate) async fn commit(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(group): PathParam,
    _: NoQuery,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let request: CommitRequest = body.read(MAX_COMMIT_BODY_BYTES, "offset commit").await?;
    let entries = request.entries()?;
    if entries.len() > MAX_COMMIT_ENTRIES {
        return Err(ApiError::InvalidRequest(format!(
            "{} offsets in one commit, over the maximum of {MAX_COMMIT_ENTRIES}",
            entries.len()
        )));
    }
    let who = identity(&caller);

    let mut seen = BTreeSet::new();
    let mut commits: Vec<OffsetCommit> = Vec::with_capacity(entries.len());
    for entry in entries {
        if !seen.insert((entry.topic.clone(), entry.partition)) {
            return Err(ApiError::InvalidRequest(format!(
                "partition {} of topic '{}' is committed twice in one request",
                entry.partition, entry.topic
            )));
        }
        if entry.metadata.as_ref().is_some_and(|m| m.len() > MAX_METADATA_BYTES) {
            return Err(ApiError::InvalidRequest(format!(
                "'metadata' is at most {MAX_METADATA_BYTES} bytes"
            )));
        }
        authorize_read(&state, who, &entry.topic)?;
        let bounds = state.store.offsets(&entry.topic, entry.partition).await?;
        // Kafka's convention: the committed offset is the next to read, so the log end itself is valid.
        if entry.offset > bounds.latest {
            return Err(ApiError::Store(StoreError::OffsetOutOfRange {
                topic: entry.topic,
                partition: entry.partition,
                requested: entry.offset,
                earliest: bounds.earliest,
                latest: bounds.latest,
            }));
        }
        commits.push((entry.topic, entry.partition, entry.offset, entry.metadata));
    }

    let offsets = open_group(&state, who, &group).await?;
    let count = commits.len();
    offsets.commit(&group, commits).await?;
    tracing::debug!(%group, offsets = count, principal = who.map(|w| w.name.as_str()), "group offsets committed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Serialize)]
struct GroupDescription {
    group: String,
    offsets: Vec<GroupPartition>,
    /// Sum of the lags that are known.
    lag: u64,
}

#[derive(Debug, Serialize)]
struct GroupPartition {
    topic: String,
    partition: u32,
    /// The next offset the group will read.
    offset: u64,
    /// The partition's end (next offset to be written); `null` if the topic or partition no longer exists.
    latest: Option<u64>,
    /// `latest - offset`: events the group has not read yet.
    lag: Option<u64>,
    committed: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    metadata: String,
}

pub(crate) async fn describe(
    State(state): State<SharedState>,
    caller: Option<Extension<Caller>>,
    PathParam(group): PathParam,
    _: NoQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = identity(&caller);
    let offsets = open_group(&state, who, &group).await?;

    let mut partitions = Vec::new();
    for entry in offsets.list(&group).await? {
        if authorize_read(&state, who, &entry.topic).is_err() {
            continue;
        }
        let latest = match state.store.offsets(&entry.topic, entry.partition).await {
            Ok(bounds) => Some(bounds.latest),
            Err(StoreError::TopicNotFound(_) | StoreError::PartitionNotFound { .. }) => None,
            Err(err) => return Err(err.into()),
        };
        partitions.push(GroupPartition {
            lag: latest.map(|latest| latest.saturating_sub(entry.offset)),
            latest,
            topic: entry.topic,
            partition: entry.partition,
            offset: entry.offset,
            committed: format_timestamp(entry.committed_ms),
            metadata: entry.metadata,
        });
    }
    let lag = partitions.iter().filter_map(|p| p.lag).sum();
    let description = GroupDescription { group, offsets: partitions, lag };
    // Plain data: serializing cannot fail.
    Ok(Json(serde_json::to_value(description).unwrap_or_default()))
}

/// The offset `group` has committed for one partition, if any.
pub(crate) async fn committed(
    offsets: &GroupOffsets,
    group: &str,
    topic: &str,
    partition: u32,
) -> Result<Option<u64>, ApiError> {
    Ok(offsets.fetch(group, topic, partition).await?.map(|c| c.offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<CommitEntry>, ApiError> {
        serde_json::from_str::<CommitRequest>(json).map_err(|e| ApiError::bad_body("x", &e))?.entries()
    }

    #[test]
    fn commit_accepts_one_entry_inline_or_a_list() {
        let one = parse(r#"{"topic":"t","partition":1,"offset":5}"#).expect("inline");
        assert_eq!((one.len(), one[0].offset, one[0].partition), (1, 5, 1));
        let list = parse(r#"{"offsets":[{"topic":"t","partition":0,"offset":1},{"topic":"u","partition":0,"offset":2,"metadata":"m"}]}"#)
            .expect("list");
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].metadata.as_deref(), Some("m"));
    }

    #[test]
    fn commit_refuses_mixed_incomplete_or_unknown_shapes() {
        for bad in [
            r#"{"topic":"t","partition":0}"#,
            r#"{"topic":"t","partition":0,"offset":1,"offsets":[]}"#,
            r#"{"offsets":[]}"#,
            r#"{}"#,
            r#"{"topic":"t","partition":0,"offset":-1}"#,
            r#"{"topic":"t","partition":0,"offset":1,"extra":true}"#,
            r#"{"offsets":[{"topic":"t","partition":0}]}"#,
        ] {
            let err = parse(bad).expect_err(bad);
            assert_eq!(err.kind(), "invalid-request", "{bad}");
        }
    }
}
