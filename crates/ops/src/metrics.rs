//! The service's Prometheus metrics: the one place that names them, installs the process-wide recorder and
//! renders the exposition text for `GET /metrics` (no listener of the exporter's own).
//!
//! Recorded elsewhere with the `metrics` facade under these names: `esgf_events_fsync_seconds` (engine, per
//! group commit), `esgf_events_kafka_requests_total{api,error}` (Kafka broker),
//! `esgf_events_webhook_deliveries_total{outcome}` and `esgf_events_webhook_dead_letters_total` (webhooks).
//! `esgf_events_consumer_lag` is set by the status recorder (`status.rs`) every few seconds, never per scrape.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "esgf_events_http_requests_total";
pub const HTTP_DURATION: &str = "esgf_events_http_request_duration_seconds";
pub const EVENTS_IN: &str = "esgf_events_events_in_total";
pub const BYTES_IN: &str = "esgf_events_bytes_in_total";
pub const EVENTS_OUT: &str = "esgf_events_events_out_total";
pub const BYTES_OUT: &str = "esgf_events_bytes_out_total";
pub const PUBLISH_LATENCY: &str = "esgf_events_publish_latency_seconds";
pub const FSYNC_LATENCY: &str = "esgf_events_fsync_seconds";
pub const AUTH_FAILURES: &str = "esgf_events_auth_failures_total";
pub const RATE_LIMITED: &str = "esgf_events_rate_limited_total";
pub const KAFKA_REQUESTS: &str = "esgf_events_kafka_requests_total";
pub const WEBHOOK_DELIVERIES: &str = "esgf_events_webhook_deliveries_total";
pub const WEBHOOK_DEAD_LETTERS: &str = "esgf_events_webhook_dead_letters_total";
pub const SMTP_SENDS: &str = "esgf_events_smtp_sends_total";
pub const CONSUMER_LAG: &str = "esgf_events_consumer_lag";

/// Latency buckets, seconds: 100 µs (a fast fsync) to 10 s (a stuck disk).
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first call. `None` if another recorder was installed
/// first (then `/metrics` is unavailable, and recording still costs nothing).
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .and_then(|b| b.install_recorder());
            match builder {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot install the Prometheus recorder; /metrics is unavailable");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route template, method and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request handling time, by route template");
    describe_counter!(EVENTS_IN, "Events appended, by topic and transport");
    describe_counter!(BYTES_IN, Unit::Bytes, "Event value bytes appended, by topic and transport");
    describe_counter!(EVENTS_OUT, "Events returned to readers, by topic and transport");
    describe_counter!(
        BYTES_OUT,
        Unit::Bytes,
        "Event value bytes returned to readers, by topic and transport"
    );
    describe_histogram!(
        PUBLISH_LATENCY,
        Unit::Seconds,
        "Time from a publish request to its durable acknowledgement"
    );
    describe_histogram!(FSYNC_LATENCY, Unit::Seconds, "Write plus fdatasync time of one group commit");
    describe_counter!(AUTH_FAILURES, "Refused credentials, by transport");
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit, by policy");
    describe_counter!(KAFKA_REQUESTS, "Kafka requests answered, by API and top-level error code");
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook deliveries, by outcome");
    describe_counter!(WEBHOOK_DEAD_LETTERS, "Events moved to a webhook dead-letter list");
    describe_counter!(SMTP_SENDS, "Announcement mail attempts, by outcome");
    metrics::describe_gauge!(
        CONSUMER_LAG,
        "Records between a consumer group's committed offset and the partition's end, by group, topic and \
         partition (refreshed every few seconds by the status recorder)"
    );
}

/// One answered HTTP request. `route` is the route template; its `{param}`s become `:param`, because some
/// exposition parsers choke on braces inside label values.
pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let route = route.replace('{', ":").replace('}', "");
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method.to_owned(),
        "status" => status.to_string())
    .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route).record(elapsed.as_secs_f64());
}

/// Events appended durably to `topic`, and how long the publish took.
pub fn published(topic: &str, transport: &'static str, events: u64, bytes: u64, latency: Duration) {
    metrics::counter!(EVENTS_IN, "topic" => topic.to_owned(), "transport" => transport).increment(events);
    metrics::counter!(BYTES_IN, "topic" => topic.to_owned(), "transport" => transport).increment(bytes);
    metrics::histogram!(PUBLISH_LATENCY, "transport" => transport).record(latency.as_secs_f64());
}

/// Events returned to a reader of `topic`.
pub fn read(topic: &str, transport: &'static str, events: u64, bytes: u64) {
    metrics::counter!(EVENTS_OUT, "topic" => topic.to_owned(), "transport" => transport).increment(events);
    metrics::counter!(BYTES_OUT, "topic" => topic.to_owned(), "transport" => transport).increment(bytes);
}

pub fn auth_failure(transport: &'static str) {
    metrics::counter!(AUTH_FAILURES, "transport" => transport).increment(1);
}

/// A consumer group's lag in one partition (set by the status recorder, not on the request path).
pub fn consumer_lag(group: &str, topic: &str, partition: u32, lag: u64) {
    metrics::gauge!(CONSUMER_LAG, "group" => group.to_owned(), "topic" => topic.to_owned(),
        "partition" => partition.to_string())
    .set(lag as f64);
}

pub fn rate_limited(policy: &'static str) {
    metrics::counter!(RATE_LIMITED, "policy" => policy).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_parse_as_prometheus_text() {
        let handle = prometheus().expect("first recorder in this test binary");
        http_request("/v1/topics/{topic}/events", "POST", 201, Duration::from_millis(3));
        published("esgf2.publications", "http", 2, 300, Duration::from_millis(2));
        read("esgf2.publications", "http", 1, 150);
        auth_failure("http");
        rate_limited("anonymous");
        consumer_lag("indexer", "esgf2.publications", 0, 7);
        metrics::histogram!(FSYNC_LATENCY).record(0.0004);
        let text = handle.render();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        for want in [HTTP_REQUESTS, EVENTS_IN, BYTES_OUT, AUTH_FAILURES, RATE_LIMITED, CONSUMER_LAG] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(names.iter().any(|n| n.starts_with(FSYNC_LATENCY)), "{names:?}");
        let events_in = scrape.samples.iter().find(|s| s.metric == EVENTS_IN).expect("events in");
        assert_eq!(events_in.labels.get("topic"), Some("esgf2.publications"));
        assert!(matches!(events_in.value, prometheus_parse::Value::Counter(v) if v == 2.0));
    }
}
