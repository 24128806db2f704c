//! A key-value bucket in JetStream's KV layout (stream `KV_<bucket>`, subjects `$KV.<bucket>.<key>`,
//! deletions as `KV-Operation: DEL` markers, one message kept per key), driven through the stream API.
//!
//! Why not async-nats' `kv::Store`: it reads through direct get, which any replica may answer, so a
//! read right after a write can miss it; and it has no multi-key atomic write. Here reads go to the stream
//! leader (the bucket's stream is created with `allow_direct: false`) and multi-key writes are one atomic
//! batch (the stream has `allow_atomic`). The layout stays the standard one, so `nats kv` tools can inspect
//! a bucket.

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use bytes::Bytes;

use crate::api::{Js, JsError, OutMsg, code};

const OPERATION: &str = "KV-Operation";
const EXPECTED_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";

/// One change to a key.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Put(Bytes),
    Delete,
}

/// A key's current state: its value (`None` if absent or deleted) and revision (the stream sequence of its
/// last change; 0 if it never existed), which a conditional write names as its expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub value: Option<Bytes>,
    pub revision: u64,
    /// The `Esgf-Write` id of the last change, if it carried one.
    pub write_id: Option<String>,
}

pub(crate) const H_WRITE: &str = "Esgf-Write";

#[derive(Clone)]
pub(crate) struct Bucket {
    js: Js,
    name: String,
    stream: String,
}

impl Bucket {
    pub(crate) fn stream_config(name: &str, replicas: usize) -> StreamConfig {
        StreamConfig {
            name: format!("KV_{name}"),
            description: Some(format!("ESGF Event Service state: key-value bucket {name}")),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_messages: -1,
            max_bytes: -1,
            max_consumers: -1,
            discard: DiscardPolicy::New,
            storage: StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: false,
            allow_atomic_publish: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    /// The bucket `name`, created (with `replicas` copies) if it does not exist yet.
    pub(crate) async fn open(js: Js, name: &str, replicas: usize) -> Result<Bucket, JsError> {
        let config = Self::stream_config(name, replicas);
        ensure_stream(&js, &config).await?;
        Ok(Bucket { js, name: name.to_owned(), stream: config.name })
    }

    fn subject(&self, path: &str) -> String {
        format!("$KV.{}.{path}", self.name)
    }

    /// The current state of the key at `path` (dot-separated tokens), read from the stream leader.
    pub(crate) async fn get(&self, path: &str) -> Result<Entry, JsError> {
        match self.js.msg_get_last(&self.stream, &self.subject(path)).await? {
            None => Ok(Entry { value: None, revision: 0, write_id: None }),
            Some(msg) => {
                let deleted = msg.header(OPERATION).is_some_and(|op| op == "DEL" || op == "PURGE");
                Ok(Entry {
                    value: if deleted { None } else { Some(msg.payload.clone()) },
                    revision: msg.seq,
                    write_id: msg.header(H_WRITE).map(str::to_owned),
                })
            }
        }
    }

    /// Paths (relative to the bucket) of every key matching `filter` (a subject filter relative to the
    /// bucket, e.g. `coll.*`), including deleted keys whose marker is still stored.
    pub(crate) async fn paths(&self, filter: &str) -> Result<Vec<String>, JsError> {
        let prefix = format!("$KV.{}.", self.name);
        let subjects = self.js.stream_subjects(&self.stream, &self.subject(filter)).await?;
        Ok(subjects.into_iter().filter_map(|s| s.strip_prefix(&prefix).map(str::to_owned)).collect())
    }

    fn message(op: &Op, write_id: Option<&str>) -> OutMsg {
        let mut headers = HeaderMap::new();
        let payload = match op {
            Op::Put(value) => value.clone(),
            Op::Delete => {
                headers.insert(OPERATION, "DEL");
                Bytes::new()
            }
        };
        if let Some(id) = write_id {
            headers.insert(H_WRITE, id);
        }
        OutMsg { headers, payload }
    }

    /// Writes one key; with `expected_revision`, only if the key's revision is still that (0: the key has
    /// never been written) — otherwise the error is "wrong last sequence" ([`code::WRONG_LAST_SEQUENCE`]).
    /// Returns the new revision.
    pub(crate) async fn write_one(
        &self,
        path: &str,
        op: &Op,
        expected_revision: Option<u64>,
        write_id: Option<&str>,
    ) -> Result<u64, JsError> {
        let mut msg = Self::message(op, write_id);
        if let Some(revision) = expected_revision {
            msg.headers.insert(EXPECTED_SUBJECT_SEQ, revision.to_string().as_str());
        }
        Ok(self.js.publish(&self.subject(path), msg).await?.seq)
    }

    /// Writes several keys atomically: one JetStream atomic batch on the bucket's stream.
    pub(crate) async fn write_all(&self, ops: &[(String, Op)]) -> Result<(), JsError> {
        match ops {
            [] => Ok(()),
            [(path, op)] => self.write_one(path, op, None, None).await.map(|_| ()),
            _ => {
                // Every message goes to its own key's subject, so the batch cannot use one subject: publish
                // each with the batch headers on its subject.
                let msgs: Vec<(String, OutMsg)> =
                    ops.iter().map(|(path, op)| (self.subject(path), Self::message(op, None))).collect();
                self.js.publish_atomic_multi(msgs).await.map(|_| ())
            }
        }
    }
}

/// Creates `config`'s stream unless it exists. An existing stream keeps its replicas and limits (an
/// operator may have changed them on purpose), but gets the two settings correctness rests on: atomic
/// batches (multi-key writes) and leader-only reads (read-your-writes).
pub(crate) async fn ensure_stream(js: &Js, config: &StreamConfig) -> Result<(), JsError> {
    let existing = match js.stream_info(&config.name).await {
        Ok(info) => info.config,
        Err(e) if e.is_code(code::STREAM_NOT_FOUND) => match js.stream_create(config).await {
            Ok(info) => info.config,
            Err(e) if e.is_code(code::STREAM_NAME_IN_USE) => js.stream_info(&config.name).await?.config,
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    if existing.allow_atomic_publish != config.allow_atomic_publish
        || existing.allow_direct != config.allow_direct
    {
        tracing::warn!(stream = %config.name, "adjusting atomic-batch and direct-read settings of an existing stream");
        let fixed = StreamConfig {
            allow_atomic_publish: config.allow_atomic_publish,
            allow_direct: config.allow_direct,
            ..existing
        };
        let info = js.stream_update(&fixed).await?;
        if info.config.allow_atomic_publish != config.allow_atomic_publish {
            return Err(JsError::Protocol(format!("{}: the server does not keep allow_atomic", config.name)));
        }
    }
    Ok(())
}
