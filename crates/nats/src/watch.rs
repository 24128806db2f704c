//! Following the changes of a key-value bucket made by any client of the cluster: one background task per
//! followed bucket, on an ordered push consumer (headers only: a follower re-reads what it needs, so values
//! never travel twice).
//!
//! A consumer delivers a message only once its stream has stored it, so a change is readable from the stream
//! leader by the time it is reported (unlike a plain subscription to the bucket's subjects, which would see a
//! publish before it is stored, or see a batch that is then refused). The consumer is created with "deliver
//! new": after every (re)creation the task reports [`Seen::Gap`], because changes made while no consumer
//! existed are not replayed. A consumer that reports an error (missed heartbeats after a server restart, a
//! lost connection) is dropped and re-created after a growing pause.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use futures_util::StreamExt;

/// What the follower saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The key at this path (relative to the bucket, e.g. `principals.kYWxpY2U`) changed.
    Path(String),
    /// Changes may have been missed: the consumer was (re)created.
    Gap,
}

/// First pause before re-creating a consumer after a failure; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Starts following the keys of `bucket` (its stream `KV_<bucket>`) under `filters` (subject filters
/// relative to the bucket, e.g. `principals.>`; everything when empty); `report` gets every change until
/// `stop` resolves.
pub(crate) fn spawn(
    client: async_nats::Client,
    bucket: &str,
    filters: &[String],
    report: impl FnMut(Seen) + Send + 'static,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let bucket = bucket.to_owned();
    let mut filter_subjects: Vec<String> = filters.iter().map(|f| format!("$KV.{bucket}.{f}")).collect();
    if filter_subjects.is_empty() {
        filter_subjects.push(format!("$KV.{bucket}.>"));
    }
    tokio::spawn(follow(client, bucket, filter_subjects, report, stop));
}

async fn open(client: &async_nats::Client, bucket: &str, filters: &[String]) -> Result<Ordered, String> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(format!("KV_{bucket}")).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some(format!("esgf-events: follows changes of bucket {bucket}")),
            filter_subjects: filters.to_vec(),
            headers_only: true,
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

async fn follow(
    client: async_nats::Client,
    bucket: String,
    filters: Vec<String>,
    mut report: impl FnMut(Seen),
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let prefix = format!("$KV.{bucket}.");
    let mut pause = FIRST_PAUSE;
    loop {
        let opened = tokio::select! {
            _ = &mut stop => return,
            opened = open(&client, &bucket, &filters) => opened,
        };
        match opened {
            Err(error) => tracing::warn!(%bucket, %error, "cannot follow state changes; retrying"),
            Ok(mut messages) => {
                tracing::debug!(%bucket, "following state changes");
                report(Seen::Gap);
                loop {
                    let next = tokio::select! {
                        _ = &mut stop => return,
                        next = messages.next() => next,
                    };
                    match next {
                        Some(Ok(message)) => {
                            pause = FIRST_PAUSE;
                            if let Some(path) = message.subject.as_str().strip_prefix(&prefix) {
                                report(Seen::Path(path.to_owned()));
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%bucket, %error, "following state changes failed; re-subscribing");
                            break;
                        }
                        None => {
                            tracing::warn!(%bucket, "state change subscription ended; re-subscribing");
                            break;
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}
