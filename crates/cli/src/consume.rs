//! `esgf-events consume`: prints a topic's events to stdout as NDJSON.
//!
//! One task per partition reads pages in offset order and hands them to the printer over a bounded channel,
//! so a `--follow` long-poll on a quiet partition never delays a busy one, and a slow stdout slows the reads
//! down instead of filling memory. Order is kept within a partition; partitions interleave.
//!
//! Without `--follow` the command stops at the end of what each partition held when it started (so it ends
//! even while producers keep writing). With `--follow` it long-polls forever and rides out server restarts,
//! retrying with backoff; a refusal (unknown topic, offset out of range) still ends it.
//!
//! Each line is an event's value as stored, byte for byte, unless it spans several lines (a pretty-printed
//! event), which NDJSON cannot carry: then the whitespace between its tokens is dropped.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::client::{Client, ClientError, ReadFrom, ServerArgs};
use crate::output::{Output, single_line};

/// Longest pause between retries while following a server that is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A long-poll that comes back empty sooner than this (a server with a short `max_wait`) is followed by a pause,
/// so a quiet topic is not polled in a tight loop.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("start").args(["from_beginning", "from_end", "offset", "since"])))]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Topic to read.
    #[arg(long, short)]
    pub topic: String,
    /// Read only this partition [default: every partition].
    #[arg(long, short, value_name = "P")]
    pub partition: Option<u32>,
    /// Start at the oldest retained event (the default).
    #[arg(long)]
    pub from_beginning: bool,
    /// Start after the newest event: only events published from now on (for --follow).
    #[arg(long)]
    pub from_end: bool,
    /// Start at this offset (in every partition read).
    #[arg(long, value_name = "N")]
    pub offset: Option<u64>,
    /// Start at the first event at or after TIME: RFC 3339 ("2026-11-27T10:00:00Z") or an age ("2h": two
    /// hours ago).
    #[arg(long, value_name = "TIME", value_parser = parse_since_now)]
    pub since: Option<String>,
    /// Keep waiting for new events until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
    /// Print whole records {partition, offset, timestamp, key, value, headers} instead of values.
    #[arg(long)]
    pub with_metadata: bool,
    /// Events asked for per request (lowered automatically if the server allows fewer).
    #[arg(long, default_value_t = 500, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub fetch_size: u32,
    /// How long one long-poll waits on the server while following (lowered automatically if the server
    /// allows less).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_poll_wait)]
    pub poll_wait: Duration,
}

fn parse_poll_wait(text: &str) -> Result<Duration, String> {
    let wait = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if wait < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(wait)
}

/// The query parameters a server refused as out of its range (`parameters` of an `invalid-query` problem).
fn refused_parameters(err: &ClientError) -> Vec<&str> {
    match err {
        ClientError::Problem { problem, .. } if problem.kind() == Some("invalid-query") => problem
            .extensions
            .get("parameters")
            .and_then(serde_json::Value::as_array)
            .map(|names| names.iter().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn parse_since_now(text: &str) -> Result<String, String> {
    parse_since(text, Utc::now())
}

/// `text` as the RFC 3339 UTC time the server expects: either a time, or an age counted back from `now`.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<String, String> {
    let time = match DateTime::parse_from_rfc3339(text) {
        Ok(time) => time.with_timezone(&Utc),
        Err(_) => {
            let age = humantime::parse_duration(text).map_err(|_| {
                format!("expected an RFC 3339 time (2026-11-27T10:00:00Z) or an age (2h, 30m), got {text:?}")
            })?;
            let age = chrono::Duration::from_std(age).map_err(|_| format!("{text:?} is too long ago"))?;
            now.checked_sub_signed(age).ok_or_else(|| format!("{text:?} is too long ago"))?
        }
    };
    Ok(time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// A record as `GET .../events` returns it.
#[derive(Debug, Deserialize)]
struct WireEvent {
    partition: u32,
    offset: u64,
    timestamp: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Box<RawValue>>,
    #[serde(default)]
    value_base64: Option<String>,
    #[serde(default)]
    headers: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct WirePage {
    events: Vec<WireEvent>,
    next_offset: u64,
}

/// Keeps a JSON `null` value as the raw `null` it is instead of folding it into "absent".
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

#[derive(Serialize)]
struct RecordLine<'a> {
    partition: u32,
    offset: u64,
    timestamp: &'a str,
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<&'a str>,
    headers: &'a serde_json::Value,
}

/// `raw` without line breaks (see the module doc).
fn one_line(raw: &RawValue) -> Cow<'_, RawValue> {
    match single_line(raw.get()) {
        Cow::Borrowed(_) => Cow::Borrowed(raw),
        Cow::Owned(text) => match RawValue::from_string(text) {
            Ok(compact) => Cow::Owned(compact),
            Err(_) => Cow::Borrowed(raw),
        },
    }
}

/// The NDJSON line for one event.
fn event_line(event: &WireEvent, with_metadata: bool) -> Result<String, serde_json::Error> {
    let value = event.value.as_deref().map(one_line);
    if with_metadata {
        let empty = serde_json::Value::Array(Vec::new());
        return serde_json::to_string(&RecordLine {
            partition: event.partition,
            offset: event.offset,
            timestamp: &event.timestamp,
            key: event.key.as_deref(),
            value: value.as_deref(),
            value_base64: event.value_base64.as_deref(),
            headers: if event.headers.is_null() { &empty } else { &event.headers },
        });
    }
    match (value, &event.value_base64) {
        (Some(value), _) => Ok(value.get().to_owned()),
        (None, Some(base64)) => serde_json::to_string(&serde_json::json!({ "value_base64": base64 })),
        (None, None) => Ok("null".to_owned()),
    }
}

/// One partition's reader.
struct PartitionReader {
    client: Client,
    topic: String,
    partition: u32,
    from: ReadFrom,
    /// Without `--follow`: the partition's end when the command started.
    stop_at: Option<u64>,
    follow: bool,
    limit: usize,
    wait: Duration,
}

type Pages = mpsc::Sender<Result<Vec<WireEvent>, anyhow::Error>>;

impl PartitionReader {
    async fn run(mut self, pages: Pages) {
        let mut backoff = Duration::from_millis(250);
        let mut warned = false;
        loop {
            let started = Instant::now();
            let wait = self.follow.then_some(self.wait);
            let body = match self
                .client
                .read_events(&self.topic, self.partition, &self.from, self.limit, wait)
                .await
            {
                Ok(body) => body,
                // A server configured with a lower `max_wait` or read limit than asked for: ask for less, by
                // halving, which finds a value it accepts in a few requests without knowing its settings.
                Err(err) if self.shrink(&refused_parameters(&err)) => continue,
                Err(err) if self.follow && err.is_transient() => {
                    if !warned {
                        eprintln!("warning: partition {}: {}; retrying", self.partition, error_chain(&err));
                        warned = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(err) => {
                    let _ = pages.send(Err(err.into())).await;
                    return;
                }
            };
            if warned {
                eprintln!("partition {}: reading again", self.partition);
                warned = false;
            }
            backoff = Duration::from_millis(250);
            let page: WirePage = match serde_json::from_slice(&body) {
                Ok(page) => page,
                Err(e) => {
                    let _ = pages
                        .send(Err(anyhow::anyhow!("the server sent an unreadable page of events: {e}")))
                        .await;
                    return;
                }
            };
            self.from = ReadFrom::Offset(page.next_offset);
            let empty = page.events.is_empty();
            if !empty && pages.send(Ok(page.events)).await.is_err() {
                return; // The printer has what it wanted.
            }
            if !self.follow && (empty || self.stop_at.is_some_and(|end| page.next_offset >= end)) {
                return;
            }
            if self.follow && empty && started.elapsed() < MIN_POLL_INTERVAL {
                tokio::time::sleep(MIN_POLL_INTERVAL).await;
            }
        }
    }
}

impl PartitionReader {
    /// Lowers the refused `wait` or `limit`; false if neither can go lower.
    fn shrink(&mut self, refused: &[&str]) -> bool {
        let mut shrunk = false;
        if refused.contains(&"wait") && self.follow && !self.wait.is_zero() {
            self.wait = if self.wait > Duration::from_millis(100) { self.wait / 2 } else { Duration::ZERO };
            shrunk = true;
        }
        if refused.contains(&"limit") && self.limit > 1 {
            self.limit /= 2;
            shrunk = true;
        }
        shrunk
    }
}

fn error_chain(err: &ClientError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    if args.max == Some(0) {
        return Ok(());
    }
    let client = args.server.client()?;
    let topic = client.describe_topic(&args.topic).await?.value;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p >= topic.partitions => anyhow::bail!(
            "topic {} has {} partition{} (numbered from 0); there is no partition {p}",
            topic.name,
            topic.partitions,
            if topic.partitions == 1 { "" } else { "s" }
        ),
        Some(p) => vec![p],
        None => (0..topic.partitions).collect(),
    };
    let limit =
        usize::try_from(args.max.map_or(u64::from(args.fetch_size), |m| m.min(u64::from(args.fetch_size))))
            .unwrap_or(usize::MAX);

    let (tx, mut rx) = mpsc::channel(16);
    let mut readers = JoinSet::new();
    for partition in partitions {
        let latest = topic.offsets.iter().find(|o| o.partition == partition).map(|o| o.latest);
        let from = if let Some(offset) = args.offset {
            ReadFrom::Offset(offset)
        } else if let Some(since) = &args.since {
            ReadFrom::Since(since.clone())
        } else if args.from_end {
            latest.map_or(ReadFrom::Earliest, ReadFrom::Offset)
        } else {
            ReadFrom::Earliest
        };
        let reader = PartitionReader {
            client: client.clone(),
            topic: args.topic.clone(),
            partition,
            from,
            stop_at: if args.follow { None } else { latest },
            follow: args.follow,
            limit,
            wait: args.poll_wait,
        };
        readers.spawn(reader.run(tx.clone()));
    }
    drop(tx);

    let mut out = Output::stdout();
    let mut printed = 0u64;
    let mut warned_base64 = false;
    'pages: while let Some(page) = rx.recv().await {
        for event in page? {
            if event.value.is_none() && !args.with_metadata && !warned_base64 {
                eprintln!("warning: some values are not JSON; they are printed as {{\"value_base64\": ...}}");
                warned_base64 = true;
            }
            out.line(event_line(&event, args.with_metadata)?)?;
            printed += 1;
            if args.max.is_some_and(|max| printed >= max) {
                break 'pages;
            }
        }
        out.flush()?;
    }
    out.flush()?;
    readers.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(json: &str) -> WirePage {
        serde_json::from_str(json).unwrap()
    }

    const PAGE: &str = r#"{"events":[
        {"partition":0,"offset":4,"timestamp":"2026-11-27T10:00:00.000Z","key":"k1",
         "value":{"b": 2.50,  "a":[1, 2]},"headers":[{"name":"h","value":"v"}]},
        {"partition":0,"offset":5,"timestamp":"2026-11-27T10:00:01.000Z","key":null,
         "value":{
            "pretty": true
         },"headers":[]},
        {"partition":0,"offset":6,"timestamp":"2026-11-27T10:00:02.000Z","key":null,
         "value_base64":"AAE=","headers":[]},
        {"partition":0,"offset":7,"timestamp":"2026-11-27T10:00:03.000Z","key":null,"value":null,"headers":[]}
    ],"next_offset":8}"#;

    #[test]
    fn values_are_printed_byte_for_byte_and_on_one_line() {
        let p = page(PAGE);
        assert_eq!(p.next_offset, 8);
        let lines: Vec<String> = p.events.iter().map(|e| event_line(e, false).unwrap()).collect();
        assert_eq!(
            lines,
            vec![r#"{"b": 2.50,  "a":[1, 2]}"#, r#"{"pretty":true}"#, r#"{"value_base64":"AAE="}"#, "null"]
        );
    }

    #[test]
    fn metadata_lines_carry_the_whole_record() {
        let p = page(PAGE);
        let line = event_line(&p.events[0], true).unwrap();
        assert_eq!(
            line,
            r#"{"partition":0,"offset":4,"timestamp":"2026-11-27T10:00:00.000Z","key":"k1","value":{"b": 2.50,  "a":[1, 2]},"headers":[{"name":"h","value":"v"}]}"#
        );
        let line = event_line(&p.events[2], true).unwrap();
        assert_eq!(
            line,
            r#"{"partition":0,"offset":6,"timestamp":"2026-11-27T10:00:02.000Z","key":null,"value_base64":"AAE=","headers":[]}"#
        );
        for event in &p.events {
            let line = event_line(event, true).unwrap();
            assert!(!line.contains('\n'));
            serde_json::from_str::<serde_json::Value>(&line).unwrap();
        }
    }

    #[test]
    fn since_accepts_rfc3339_and_ages() {
        let now = DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_since("2026-11-27T11:00:00+01:00", now).unwrap(), "2026-11-27T10:00:00.000Z");
        assert_eq!(parse_since("2h", now).unwrap(), "2026-11-27T10:00:00.000Z");
        assert_eq!(parse_since("90s", now).unwrap(), "2026-11-27T11:58:30.000Z");
        assert!(parse_since("yesterday", now).unwrap_err().contains("RFC 3339"));
    }

    fn reader(wait: Duration, limit: usize) -> PartitionReader {
        PartitionReader {
            client: Client::new("http://127.0.0.1:1", crate::client::ClientOptions::default()).unwrap(),
            topic: "t".into(),
            partition: 0,
            from: ReadFrom::Earliest,
            stop_at: None,
            follow: true,
            limit,
            wait,
        }
    }

    #[test]
    fn refused_wait_and_limit_are_halved_until_accepted_or_minimal() {
        let problem =
            br#"{"type":"urn:esgf-events:problem:invalid-query","title":"Invalid query","status":400,
                          "detail":"wait: must be a number of seconds from 0 to 10","parameters":["wait"]}"#;
        let err = crate::client::tests::problem_error(reqwest::StatusCode::BAD_REQUEST, problem);
        assert_eq!(refused_parameters(&err), ["wait"]);
        let mut r = reader(Duration::from_secs(30), 500);
        assert!(r.shrink(&["wait"]));
        assert_eq!(r.wait, Duration::from_secs(15));
        let mut r = reader(Duration::from_millis(100), 500);
        assert!(r.shrink(&["wait"]));
        assert_eq!(r.wait, Duration::ZERO);
        assert!(!r.shrink(&["wait"]), "nothing left to lower");
        let mut r = reader(Duration::from_secs(1), 500);
        assert!(r.shrink(&["limit"]));
        assert_eq!(r.limit, 250);
        assert!(!r.shrink(&["partition"]));
    }

    #[test]
    fn poll_wait_below_a_second_is_refused() {
        assert!(parse_poll_wait("50ms").is_err());
        assert_eq!(parse_poll_wait("10s").unwrap(), Duration::from_secs(10));
    }
}
