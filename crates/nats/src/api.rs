//! A thin layer over the JetStream wire API (`$JS.API.*` requests, publishes with expectations, atomic
//! batches, batched direct gets), with one error type that keeps the server's error codes.
//!
//! async-nats has typed wrappers for most of this, but each has its own error type that hides the code the
//! backend must branch on ("wrong last sequence", "no message found", ...), and it has no atomic batch
//! publish or batched direct get at all. Requests here go through the plain client with explicit timeouts.

use std::future::Future;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::{Config as StreamConfig, Info as StreamInfo, RawMessage};
use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// JetStream error codes the backend branches on (`err_code` in API responses).
pub(crate) mod code {
    pub const CLUSTER_NOT_AVAILABLE: u64 = 10008;
    pub const CLUSTER_NOT_LEADER: u64 = 10009;
    pub const NO_MESSAGE_FOUND: u64 = 10037;
    pub const STREAM_NAME_IN_USE: u64 = 10058;
    pub const STREAM_NOT_FOUND: u64 = 10059;
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// The same refusal for a conditional publish on one subject (`Nats-Expected-Last-Subject-Sequence`).
    pub const WRONG_LAST_SUBJECT_SEQUENCE: u64 = 10164;
    pub const STREAM_STORE_FAILED: u64 = 10077;
    pub const STREAM_SEALED: u64 = 10109;
    pub const STREAM_OFFLINE: u64 = 10118;
    pub const BATCH_MISSING_SEQUENCE: u64 = 10175;
    pub const BATCH_INCOMPLETE: u64 = 10176;
    pub const BATCH_TOO_LARGE: u64 = 10199;
    pub const BATCH_TOO_MANY_INFLIGHT: u64 = 10210;
}

/// Every `BATCH_FLOW_EVERY`-th message of an atomic batch is sent as a request, so a long batch cannot run far
/// ahead of the server's staging (and a failure is noticed before the whole batch is sent).
const BATCH_FLOW_EVERY: usize = 256;

/// What a JetStream call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum JsError {
    /// The server answered with an error.
    #[error("JetStream error {err_code} (status {status}): {description}")]
    Api { status: u16, err_code: u64, description: String },
    /// No usable answer: timeout, no responders, connection trouble. A write may or may not have happened.
    #[error("JetStream unavailable: {0}")]
    Unavailable(String),
    /// The request could not be sent as asked (too large, invalid subject): retrying will not help.
    #[error("JetStream request refused by the client: {0}")]
    Refused(String),
    /// An answer that does not parse.
    #[error("unexpected JetStream response: {0}")]
    Protocol(String),
}

impl JsError {
    pub(crate) fn is_code(&self, code: u64) -> bool {
        matches!(self, JsError::Api { err_code, .. } if *err_code == code)
    }

    /// The stream (or the key's subject) moved past the sequence the write expected.
    pub(crate) fn is_wrong_last_sequence(&self) -> bool {
        self.is_code(code::WRONG_LAST_SEQUENCE) || self.is_code(code::WRONG_LAST_SUBJECT_SEQUENCE)
    }

    /// Errors worth retrying after a pause: the cluster is electing a leader, a node is restarting, ...
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            JsError::Unavailable(_) => true,
            // A batch the server saw only part of (a connection broke mid-batch) stored nothing, and a full
            // in-flight table drains by itself: both are safe to send again.
            JsError::Api { status, err_code, .. } => {
                *status == 503
                    || matches!(
                        *err_code,
                        code::CLUSTER_NOT_AVAILABLE
                            | code::CLUSTER_NOT_LEADER
                            | code::STREAM_STORE_FAILED
                            | code::STREAM_OFFLINE
                            | code::BATCH_MISSING_SEQUENCE
                            | code::BATCH_INCOMPLETE
                            | code::BATCH_TOO_MANY_INFLIGHT
                    )
            }
            JsError::Refused(_) | JsError::Protocol(_) => false,
        }
    }
}

#[derive(Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ApiResponse<T> {
    Err { error: ApiErrorBody },
    Ok(T),
}

/// The acknowledgement of a stored message (or of a committed batch: `seq` is its last message).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PubAck {
    pub seq: u64,
    #[serde(default)]
    pub count: Option<u64>,
}

/// A stored message as read back: its stream sequence, headers and payload.
#[derive(Debug, Clone)]
pub(crate) struct StoredMsg {
    pub seq: u64,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl StoredMsg {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub(crate) struct OutMsg {
    pub headers: HeaderMap,
    pub payload: Bytes,
}

#[derive(Serialize)]
struct MsgGetRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_by_subj: Option<&'a str>,
}

#[derive(Deserialize)]
struct MsgGetResponse {
    message: RawMessage,
}

#[derive(Serialize)]
struct DirectBatchRequest {
    seq: u64,
    batch: usize,
    max_bytes: usize,
}

#[derive(Serialize)]
struct InfoRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    subjects_filter: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    offset: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Deserialize)]
struct SubjectsInfo {
    #[serde(default)]
    total: usize,
    state: SubjectsState,
}

#[derive(Deserialize)]
struct SubjectsState {
    #[serde(default)]
    subjects: Option<std::collections::HashMap<String, u64>>,
}

#[derive(Serialize)]
struct ListRequest<'a> {
    subject: &'a str,
    offset: usize,
}

#[derive(Deserialize)]
struct ListResponse {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Option<Vec<StreamInfo>>,
}

#[derive(Deserialize)]
struct DeleteResponse {
    #[serde(default)]
    success: bool,
}

/// The JetStream API of one connection.
#[derive(Clone)]
pub(crate) struct Js {
    client: Client,
    timeout: Duration,
    /// The same connection through async-nats's JetStream layer, for publishes whose acknowledgement is awaited
    /// later ([`Js::send_atomic`]).
    context: async_nats::jetstream::Context,
}

impl Js {
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        let context = async_nats::jetstream::ContextBuilder::new().timeout(timeout).build(client.clone());
        Js { client, timeout, context }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The largest message (headers + payload) the connected server accepts.
    pub(crate) fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    async fn request_raw(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<Bytes, JsError> {
        let mut request = async_nats::client::Request::new().payload(payload).timeout(Some(self.timeout));
        if let Some(headers) = headers {
            request = request.headers(headers);
        }
        match self.client.send_request(subject, request).await {
            Ok(message) => Ok(message.payload),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::MaxPayloadExceeded | RequestErrorKind::InvalidSubject => {
                    JsError::Refused(e.to_string())
                }
                RequestErrorKind::TimedOut | RequestErrorKind::NoResponders | RequestErrorKind::Other => {
                    JsError::Unavailable(e.to_string())
                }
            }),
        }
    }

    fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, JsError> {
        match serde_json::from_slice::<ApiResponse<T>>(payload) {
            Ok(ApiResponse::Ok(v)) => Ok(v),
            Ok(ApiResponse::Err { error }) => Err(JsError::Api {
                status: error.code,
                err_code: error.err_code,
                description: error.description,
            }),
            Err(e) => Err(JsError::Protocol(format!("{e}: {}", String::from_utf8_lossy(payload)))),
        }
    }

    /// A `$JS.API.<suffix>` request with a JSON body.
    async fn api<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        suffix: &str,
        body: &B,
    ) -> Result<T, JsError> {
        let body = serde_json::to_vec(body).map_err(|e| JsError::Protocol(e.to_string()))?;
        let reply = self.request_raw(format!("$JS.API.{suffix}"), None, body.into()).await?;
        Self::parse(&reply)
    }

    /// Account info: answers once JetStream (and in a cluster, its meta leader) is available.
    pub(crate) async fn account_info(&self) -> Result<(), JsError> {
        self.api::<_, serde_json::Value>("INFO", "").await.map(|_| ())
    }

    pub(crate) async fn stream_create(&self, config: &StreamConfig) -> Result<StreamInfo, JsError> {
        self.api(&format!("STREAM.CREATE.{}", config.name), config).await
    }

    pub(crate) async fn stream_update(&self, config: &StreamConfig) -> Result<StreamInfo, JsError> {
        self.api(&format!("STREAM.UPDATE.{}", config.name), config).await
    }

    /// Deletes a stream; `Ok(false)` when it did not exist.
    pub(crate) async fn stream_delete(&self, name: &str) -> Result<bool, JsError> {
        match self.api::<_, DeleteResponse>(&format!("STREAM.DELETE.{name}"), "").await {
            Ok(r) => Ok(r.success),
            Err(e) if e.is_code(code::STREAM_NOT_FOUND) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stream info from the stream leader (so its state is current, unlike a follower's).
    pub(crate) async fn stream_info(&self, name: &str) -> Result<StreamInfo, JsError> {
        self.api(&format!("STREAM.INFO.{name}"), &InfoRequest { subjects_filter: None, offset: 0 }).await
    }

    /// The subjects (with message counts) of a stream that match `filter`, every page of them.
    pub(crate) async fn stream_subjects(&self, name: &str, filter: &str) -> Result<Vec<String>, JsError> {
        let mut subjects = Vec::new();
        loop {
            let request = InfoRequest { subjects_filter: Some(filter), offset: subjects.len() };
            let info: SubjectsInfo = self.api(&format!("STREAM.INFO.{name}"), &request).await?;
            let page: Vec<String> = info.state.subjects.map(|m| m.into_keys().collect()).unwrap_or_default();
            let got = page.len();
            // Large subject lists come in pages; `total` is set only then.
            let total = if info.total > 0 { info.total } else { got };
            subjects.extend(page);
            if got == 0 || subjects.len() >= total {
                return Ok(subjects);
            }
        }
    }

    /// Every stream listening on subjects matching `subject_filter`, with config and state.
    pub(crate) async fn stream_list(&self, subject_filter: &str) -> Result<Vec<StreamInfo>, JsError> {
        let mut out = Vec::new();
        loop {
            let page: ListResponse =
                self.api("STREAM.LIST", &ListRequest { subject: subject_filter, offset: out.len() }).await?;
            let streams = page.streams.unwrap_or_default();
            let got = streams.len();
            out.extend(streams);
            if got == 0 || out.len() >= page.total {
                return Ok(out);
            }
        }
    }

    /// One message by sequence, from the stream leader; `None` if there is none at that sequence.
    pub(crate) async fn msg_get(&self, stream: &str, seq: u64) -> Result<Option<StoredMsg>, JsError> {
        self.msg_get_with(stream, MsgGetRequest { seq: Some(seq), last_by_subj: None }).await
    }

    /// The last message on `subject`, from the stream leader.
    pub(crate) async fn msg_get_last(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<StoredMsg>, JsError> {
        self.msg_get_with(stream, MsgGetRequest { seq: None, last_by_subj: Some(subject) }).await
    }

    async fn msg_get_with(
        &self,
        stream: &str,
        request: MsgGetRequest<'_>,
    ) -> Result<Option<StoredMsg>, JsError> {
        match self.api::<_, MsgGetResponse>(&format!("STREAM.MSG.GET.{stream}"), &request).await {
            Ok(r) => {
                let msg = StreamMessage::try_from(r.message).map_err(|e| JsError::Protocol(e.to_string()))?;
                Ok(Some(StoredMsg { seq: msg.sequence, headers: msg.headers, payload: msg.payload }))
            }
            Err(e) if e.is_code(code::NO_MESSAGE_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Up to `batch` messages from `from_seq` on, at most about `max_bytes` (always at least one), answered
    /// by any replica (`allow_direct`). A follower may lag the leader, so the answer can be a shorter prefix
    /// than the leader would give, or empty: callers verify sequences and fall back to [`Js::msg_get`].
    pub(crate) async fn direct_get_batch(
        &self,
        stream: &str,
        from_seq: u64,
        batch: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMsg>, JsError> {
        let inbox = self.client.new_inbox();
        let mut sub =
            self.client.subscribe(inbox.clone()).await.map_err(|e| JsError::Unavailable(e.to_string()))?;
        let body = serde_json::to_vec(&DirectBatchRequest { seq: from_seq, batch: batch.max(1), max_bytes })
            .map_err(|e| JsError::Protocol(e.to_string()))?;
        self.client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, body.into())
            .await
            .map_err(|e| JsError::Unavailable(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout_at(deadline, sub.next()).await;
            let Ok(Some(message)) = next else {
                let _ = sub.unsubscribe().await;
                if out.is_empty() {
                    return Err(JsError::Unavailable(format!("direct get on {stream} timed out")));
                }
                // Some messages arrived but not the end marker: what did arrive is valid, stored data.
                return Ok(out);
            };
            if let Some(status) = message.status {
                let _ = sub.unsubscribe().await;
                return match status.as_u16() {
                    204 | 404 => Ok(out), // End of batch, or nothing at/after from_seq on that replica.
                    408 => Ok(out),
                    other => Err(JsError::Api {
                        status: other,
                        err_code: 0,
                        description: message.description.unwrap_or_default(),
                    }),
                };
            }
            let headers = message.headers.unwrap_or_default();
            let seq = headers
                .get("Nats-Sequence")
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .ok_or_else(|| JsError::Protocol("direct get reply without Nats-Sequence".into()))?;
            out.push(StoredMsg { seq, headers, payload: message.payload });
            if out.len() >= batch.max(1) {
                // All asked for arrived; the end marker that follows is not needed.
                let _ = sub.unsubscribe().await;
                return Ok(out);
            }
        }
    }

    /// Publishes one message and waits for the stream's acknowledgement.
    pub(crate) async fn publish(&self, subject: &str, msg: OutMsg) -> Result<PubAck, JsError> {
        let reply = self.request_raw(subject.to_owned(), Some(msg.headers), msg.payload).await?;
        Self::parse(&reply)
    }

    /// Publishes `msgs` as one atomic batch (ADR-50, nats-server 2.12+), a subject per message (all of one
    /// stream), and waits for the acknowledgement: the stream stores all of them, consecutively, or none. The
    /// server accepts `Nats-Expected-Last-Sequence` on the first message only. A one-message "batch" is a
    /// plain publish. (The log's appends use [`Js::send_atomic`], which does not wait.)
    pub(crate) async fn publish_atomic_multi(
        &self,
        mut msgs: Vec<(String, OutMsg)>,
    ) -> Result<PubAck, JsError> {
        let n = msgs.len();
        if n == 1 {
            let (subject, msg) = msgs.pop().ok_or_else(|| JsError::Refused("empty batch".into()))?;
            return self.publish(&subject, msg).await;
        }
        let batch_id = random_id(22);
        for (i, (subject, mut msg)) in msgs.into_iter().enumerate() {
            let sequence = i + 1;
            msg.headers.insert("Nats-Batch-Id", batch_id.as_str());
            msg.headers.insert("Nats-Batch-Sequence", sequence.to_string().as_str());
            if sequence == n {
                msg.headers.insert("Nats-Batch-Commit", "1");
                let ack: PubAck = self.publish(&subject, msg).await?;
                if ack.count.is_some_and(|c| c != n as u64) {
                    return Err(JsError::Protocol(format!(
                        "batch of {n} messages committed with count {:?}",
                        ack.count
                    )));
                }
                return Ok(ack);
            }
            if sequence % BATCH_FLOW_EVERY == 0 {
                // Flow control: the server answers staged batch messages that carry a reply subject with an
                // empty message, or with an error if the batch already failed.
                let reply = self.request_raw(subject, Some(msg.headers), msg.payload).await?;
                if !reply.is_empty() {
                    Self::parse::<serde_json::Value>(&reply)?;
                }
            } else {
                self.client
                    .publish_with_headers(subject, msg.headers, msg.payload)
                    .await
                    .map_err(|e| JsError::Unavailable(e.to_string()))?;
            }
        }
        Err(JsError::Refused("empty batch".into()))
    }
}

/// An atomic batch (or single message) sent to the server whose acknowledgement has not been read yet.
pub(crate) struct PendingAck {
    ack: async_nats::jetstream::context::PublishAckFuture,
    n: usize,
}

impl PendingAck {
    /// The acknowledgement: the commit's `PubAck`, or the server's refusal, or `Unavailable` when none came in
    /// time (the batch may or may not have been stored).
    pub(crate) async fn wait(self) -> Result<PubAck, JsError> {
        use async_nats::jetstream::context::PublishErrorKind as Kind;
        let ack = self.ack.await.map_err(|e| {
            // The server's refusal travels as the error's source, with its codes.
            let api = std::error::Error::source(&e)
                .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>());
            match (e.kind(), api) {
                (_, Some(api)) => JsError::Api {
                    status: u16::try_from(api.code()).unwrap_or(0),
                    err_code: api.error_code().0,
                    description: api.to_string(),
                },
                (Kind::MaxPayloadExceeded, None) => JsError::Refused(e.to_string()),
                // No answer in time, connection lost, no responders (no stream leader took it).
                (Kind::TimedOut | Kind::BrokenPipe | Kind::StreamNotFound | Kind::MaxAckPending, None) => {
                    JsError::Unavailable(e.to_string())
                }
                (_, None) => JsError::Protocol(e.to_string()),
            }
        })?;
        if self.n > 1 && ack.batch_size.is_some_and(|c| c != self.n as u64) {
            return Err(JsError::Protocol(format!(
                "batch of {} messages committed with count {:?}",
                self.n, ack.batch_size
            )));
        }
        Ok(PubAck { seq: ack.sequence, count: ack.batch_size })
    }
}

impl Js {
    /// Sends `msgs` to `subject` as one atomic batch (a single message as a plain publish) and returns once
    /// they are handed to the connection, without waiting for the acknowledgement: the server receives what
    /// one connection sends in the order it was sent, so a caller that serialises `send_atomic` calls can
    /// pipeline appends whose expectations chain (`Nats-Expected-Last-Sequence`) and still have them stored
    /// in that order. The acknowledgement comes back through the connection's shared reply subscription (no
    /// subscription per append). Long batches are flow-controlled as in [`Js::publish_atomic_multi`].
    pub(crate) async fn send_atomic(&self, subject: &str, msgs: Vec<OutMsg>) -> Result<PendingAck, JsError> {
        let n = msgs.len();
        let batch_id = random_id(22);
        for (i, mut msg) in msgs.into_iter().enumerate() {
            let sequence = i + 1;
            if n > 1 {
                msg.headers.insert("Nats-Batch-Id", batch_id.as_str());
                msg.headers.insert("Nats-Batch-Sequence", sequence.to_string().as_str());
            }
            if sequence == n {
                if n > 1 {
                    msg.headers.insert("Nats-Batch-Commit", "1");
                }
                let publish = PublishMessage::build().headers(msg.headers).payload(msg.payload);
                let ack = self.context.send_publish(subject.to_owned(), publish).await.map_err(|e| {
                    use async_nats::jetstream::context::PublishErrorKind as Kind;
                    match e.kind() {
                        Kind::MaxPayloadExceeded => JsError::Refused(e.to_string()),
                        _ => JsError::Unavailable(e.to_string()),
                    }
                })?;
                return Ok(PendingAck { ack, n });
            }
            if sequence % BATCH_FLOW_EVERY == 0 {
                let reply = self.request_raw(subject.to_owned(), Some(msg.headers), msg.payload).await?;
                if !reply.is_empty() {
                    Self::parse::<serde_json::Value>(&reply)?;
                }
            } else {
                self.client
                    .publish_with_headers(subject.to_owned(), msg.headers, msg.payload)
                    .await
                    .map_err(|e| JsError::Unavailable(e.to_string()))?;
            }
        }
        Err(JsError::Refused("empty batch".into()))
    }
}

/// Pauses between rounds of a read-then-conditional-write loop, growing, until a deadline.
///
/// A conditional write on a key can be refused while another conditional write on the same key is still
/// being replicated (the leader cannot check the expectation yet: error 10164); re-reading at once would
/// see the old value again and spin, so each round waits a little longer.
pub(crate) struct Backoff {
    deadline: tokio::time::Instant,
    pause: Duration,
}

impl Backoff {
    pub(crate) fn new(timeout: Duration) -> Self {
        Backoff { deadline: tokio::time::Instant::now() + timeout, pause: Duration::from_millis(2) }
    }

    /// Waits before the next round; `false` when the deadline leaves no room for one.
    pub(crate) async fn wait(&mut self) -> bool {
        if tokio::time::Instant::now() + self.pause > self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(200));
        true
    }
}

/// Runs an idempotent JetStream operation, retrying transient failures (leader elections, a restarting
/// node) with exponential backoff until `timeout` has passed.
pub(crate) async fn retry<T, F, Fut>(timeout: Duration, what: &str, mut op: F) -> Result<T, JsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, JsError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        match op().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(error = %e, operation = what, "transient JetStream failure; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Messages `from_seq..` of a stream without gaps (at most `max_msgs`, about `max_bytes` but at least one),
/// given that the leader holds messages up to `last_seq`. Reads go to any replica first (cheap, one
/// request); only what such a read cannot prove (a lagging follower answered with nothing, or skipped ahead
/// because its retention already removed `from_seq`) is read from the leader, one message at a time.
pub(crate) async fn read_range(
    js: &Js,
    stream: &str,
    from_seq: u64,
    last_seq: u64,
    max_msgs: usize,
    max_bytes: usize,
) -> Result<Vec<StoredMsg>, JsError> {
    if from_seq == 0 || from_seq > last_seq || max_msgs == 0 {
        return Ok(Vec::new());
    }
    let want = usize::try_from(last_seq - from_seq + 1).unwrap_or(usize::MAX).min(max_msgs);
    let direct = match js.direct_get_batch(stream, from_seq, want, max_bytes).await {
        Ok(msgs) => msgs,
        Err(e) if e.is_transient() => Vec::new(),
        Err(e) => return Err(e),
    };
    let prefix: Vec<StoredMsg> = direct
        .into_iter()
        .enumerate()
        .take_while(|(i, m)| m.seq == from_seq + *i as u64)
        .map(|(_, m)| m)
        .collect();
    if !prefix.is_empty() {
        return Ok(prefix);
    }
    let mut out: Vec<StoredMsg> = Vec::new();
    let mut bytes = 0usize;
    for seq in from_seq..from_seq + want.min(LEADER_READ_MAX) as u64 {
        if !out.is_empty() && bytes >= max_bytes {
            break;
        }
        match js.msg_get(stream, seq).await? {
            Some(m) => {
                bytes += m.payload.len() + 64;
                out.push(m);
            }
            None => break,
        }
    }
    Ok(out)
}

/// Most messages one read takes from the stream leader when no replica could answer in one go.
const LEADER_READ_MAX: usize = 16;

/// Refuses servers older than 2.12: they ignore the atomic batch headers and would store each message of
/// a batch on its own, silently breaking all-or-nothing appends.
pub(crate) fn check_server_version(client: &Client) -> Result<(), String> {
    let version = client.server_info().version;
    if supports_atomic_batches(&version) {
        Ok(())
    } else {
        Err(format!(
            "nats-server {version} is too old: the NATS backend needs 2.12 or newer (atomic batch publish)"
        ))
    }
}

fn supports_atomic_batches(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (2, 12)
}

/// A random identifier of `len` alphanumeric characters (batch ids, append ids, topic incarnations).
pub(crate) fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..len).map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_their_codes() {
        let body =
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"},"seq":0}"#;
        let err = Js::parse::<PubAck>(body).unwrap_err();
        assert!(err.is_code(code::WRONG_LAST_SEQUENCE), "{err:?}");
        assert!(!err.is_transient());
    }

    #[test]
    fn batch_acks_parse_with_count() {
        let ack = Js::parse::<PubAck>(br#"{"stream":"P","seq":3,"batch":"b1","count":3}"#).unwrap();
        assert_eq!((ack.seq, ack.count), (3, Some(3)));
    }

    #[test]
    fn cluster_unavailable_is_transient() {
        let body = br#"{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}"#;
        assert!(Js::parse::<PubAck>(body).unwrap_err().is_transient());
    }

    #[test]
    fn garbage_response_is_a_protocol_error_not_a_panic() {
        assert!(matches!(Js::parse::<PubAck>(b"not json"), Err(JsError::Protocol(_))));
    }

    #[test]
    fn servers_before_2_12_are_refused() {
        for ok in ["2.12.0", "2.15.1", "v2.15.1", "3.0.0", "2.12.0-beta.1"] {
            assert!(supports_atomic_batches(ok), "{ok}");
        }
        for old in ["2.9.10", "2.11.4", "", "garbage"] {
            assert!(!supports_atomic_batches(old), "{old}");
        }
    }

    #[test]
    fn random_ids_are_alphanumeric_and_sized() {
        let id = random_id(22);
        assert_eq!(id.len(), 22);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_id(22), id);
    }
}
