//! `esgf-events publish`: sends events from files or stdin to a topic, in batches.
//!
//! Input is JSON (one object, or an array of objects) or a stream of objects separated by whitespace, such as
//! NDJSON; the first non-blank character tells which (`[` means an array). Input is streamed: a reader thread
//! parses events one by one and hands them over a bounded channel, so memory holds about one batch whatever the
//! input's size. Each event's bytes are sent exactly as they appear in the input (the server stores them
//! byte for byte).
//!
//! Batches close at `--batch-size` events, before `--batch-bytes` bytes, or when no event has arrived for
//! [`LINGER`] (so a slow stream, `tail -f | esgf-events publish`, is not held back waiting for a full batch).
//! Each batch is one request, appended atomically by the server; batches go one at a time, in input order.
//! If the input turns out malformed, every event before the bad one is published, then the command fails
//! naming the bad event's position, so the rest can be resent after a fix. A batch refused for the producer's
//! rate limit (429) left nothing behind; it is sent again after the `Retry-After` the server names.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::client::{Client, ClientError, PublishResponse, ServerArgs};
use crate::output::Output;

/// A partial batch is sent once no new event has arrived for this long.
pub const LINGER: Duration = Duration::from_millis(100);

/// Times one batch is sent again after a 429 (over the producer's rate limit) before the command gives up.
const MAX_RATE_LIMITED_RETRIES: u32 = 10;
/// Longest wait before sending again, whatever `Retry-After` says.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Topic to publish to.
    #[arg(long, short)]
    pub topic: String,
    /// Files of events; "-" is stdin [default: stdin].
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Key for every event (decides the partition); without it the server takes the key from each event's
    /// data.payload.item.id or data.payload.item_id.
    #[arg(long)]
    pub key: Option<String>,
    /// Most events in one request.
    #[arg(long, default_value_t = 500, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Most bytes in one request (keep it under the server's http.max_body_bytes); a single larger event is
    /// sent alone.
    #[arg(long, default_value_t = 8 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(2..))]
    pub batch_bytes: u64,
}

/// Why input could not be read as events.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{name}: {error}")]
    Parse { name: String, error: EventError },
}

/// One request's worth of events, as the JSON array the server expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub body: Vec<u8>,
    pub events: usize,
    /// 1-based number, in the whole input, of the batch's first event.
    pub first_event: u64,
}

/// Groups events into batches bounded by count and bytes.
#[derive(Debug)]
pub struct Batcher {
    max_events: usize,
    max_bytes: usize,
    body: Vec<u8>,
    events: usize,
    seen: u64,
}

impl Batcher {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Batcher { max_events: max_events.max(1), max_bytes, body: Vec::new(), events: 0, seen: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Adds `event`; returns a batch when one is complete: this one if it is now full, or the previous one
    /// if `event` would not fit in it (then `event` starts the next).
    pub fn push(&mut self, event: &str) -> Option<Batch> {
        // `,` before it and the closing `]` after it.
        let grown = self.body.len() + 1 + event.len() + 1;
        let mut done = None;
        if self.events > 0 && grown > self.max_bytes {
            done = self.take();
        }
        self.seen += 1;
        self.body.push(if self.events == 0 { b'[' } else { b',' });
        self.body.extend_from_slice(event.as_bytes());
        self.events += 1;
        if done.is_none() && self.events >= self.max_events {
            done = self.take();
        }
        done
    }

    /// The partial batch, if any.
    pub fn take(&mut self) -> Option<Batch> {
        if self.events == 0 {
            return None;
        }
        let mut body = std::mem::take(&mut self.body);
        body.push(b']');
        let events = std::mem::take(&mut self.events);
        Some(Batch { body, events, first_event: self.seen + 1 - events as u64 })
    }
}

/// Why input is not a sequence of events.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// serde_json's message carries the line and column.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("event {number} (line {line}) is not a JSON object: it starts with `{start}`")]
    NotAnObject { number: u64, line: u64, start: String },
}

/// What the parse loop decided about one event.
enum Verdict {
    Continue,
    /// The sink wants no more.
    Stop,
    /// Not an object: number, first characters, line breaks inside it (to find the line it starts on).
    Bad(u64, String, u64),
}

/// Calls `sink` with each event of `input` as soon as it is parsed; stops early (without error) when `sink`
/// returns `false`. Events must be JSON objects.
pub fn for_each_event(
    input: impl BufRead,
    mut sink: impl FnMut(Box<RawValue>) -> bool,
) -> Result<(), EventError> {
    let mut number = 0u64;
    let mut accept = |event: Box<RawValue>| {
        number += 1;
        let text = event.get();
        if !text.starts_with('{') {
            let newlines = text.bytes().filter(|&b| b == b'\n').count() as u64;
            return Verdict::Bad(number, text.chars().take(20).collect(), newlines);
        }
        if sink(event) { Verdict::Continue } else { Verdict::Stop }
    };
    let (first, input) = first_significant_byte(input).map_err(serde_json::Error::io)?;
    match first {
        None => Ok(()),
        Some(b'[') => {
            let mut verdict = Verdict::Continue;
            let mut de = serde_json::Deserializer::from_reader(input);
            let result = (&mut de)
                .deserialize_seq(Elements { accept: &mut accept, verdict: &mut verdict })
                .and_then(|()| de.end());
            match (verdict, result) {
                // The error that unwound the parse stands for the verdict; its position is the event's end.
                (Verdict::Stop, _) => Ok(()),
                (Verdict::Bad(number, start, newlines), Err(e)) => {
                    Err(EventError::NotAnObject { number, line: e.line() as u64 - newlines, start })
                }
                (_, result) => Ok(result?),
            }
        }
        Some(_) => {
            let counted = LineCounter::new(input);
            let read = counted.read.clone();
            let mut events = serde_json::Deserializer::from_reader(counted).into_iter::<Box<RawValue>>();
            while let Some(event) = events.next() {
                match accept(event?) {
                    Verdict::Continue => {}
                    Verdict::Stop => break,
                    Verdict::Bad(number, start, newlines) => {
                        let line = read.get().line_at(events.byte_offset() as u64) - newlines;
                        return Err(EventError::NotAnObject { number, line, start });
                    }
                }
            }
            Ok(())
        }
    }
}

/// Feeds each element of a top-level array to `accept` while the array is being parsed.
struct Elements<'a, F> {
    accept: &'a mut F,
    verdict: &'a mut Verdict,
}

impl<'de, F: FnMut(Box<RawValue>) -> Verdict> Visitor<'de> for Elements<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of JSON objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(event) = seq.next_element::<Box<RawValue>>()? {
            match (self.accept)(event) {
                Verdict::Continue => {}
                // Unwinds the parse; the caller reads the verdict, not this error.
                verdict => {
                    *self.verdict = verdict;
                    return Err(serde::de::Error::custom("stopped"));
                }
            }
        }
        Ok(())
    }
}

/// How far a reader has been read: enough to tell the line of a byte offset just behind the read position.
#[derive(Debug, Clone, Copy, Default)]
struct ReadSoFar {
    bytes: u64,
    newlines: u64,
    last: u8,
}

impl ReadSoFar {
    /// The 1-based line of the byte just before `offset`, where `offset` is at most one byte behind what was
    /// read (a JSON parser looks ahead at most one byte).
    fn line_at(self, offset: u64) -> u64 {
        let looked_past_newline = self.bytes > offset && self.last == b'\n';
        self.newlines - u64::from(looked_past_newline) + 1
    }
}

/// Counts the line breaks a parser reads through; the count is shared so it can be read while the parser
/// owns the reader.
struct LineCounter<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<ReadSoFar>>,
}

impl<R: Read> LineCounter<R> {
    fn new(inner: R) -> Self {
        LineCounter { inner, read: Default::default() }
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(&last) = buf[..n].last() {
            let mut so_far = self.read.get();
            so_far.bytes += n as u64;
            so_far.newlines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            so_far.last = last;
            self.read.set(so_far);
        }
        Ok(n)
    }
}

/// Finds the first byte that is not whitespace (nor a UTF-8 byte-order mark) and returns a reader that still
/// yields the skipped whitespace, re-created from counts so that parse errors report true line and column
/// numbers however much of it there was.
fn first_significant_byte(mut input: impl BufRead) -> io::Result<(Option<u8>, impl Read)> {
    let (mut newlines, mut columns) = (0u64, 0u64);
    let mut at_start = true;
    let first = loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            break None;
        }
        if at_start && buf.starts_with(b"\xEF\xBB\xBF") {
            input.consume(3);
            at_start = false;
            continue;
        }
        at_start = false;
        let skip = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
        for &b in &buf[..skip] {
            if b == b'\n' {
                newlines += 1;
                columns = 0;
            } else {
                columns += 1;
            }
        }
        let found = buf.get(skip).copied();
        input.consume(skip);
        if found.is_some() {
            break found;
        }
    };
    let replay = io::repeat(b'\n').take(newlines).chain(io::repeat(b' ').take(columns));
    Ok((first, replay.chain(input)))
}

/// One input: a file or stdin.
struct Input {
    name: String,
    reader: Box<dyn Read + Send>,
    size: Option<u64>,
}

fn open_inputs(files: &[PathBuf]) -> Result<Vec<Input>, InputError> {
    if files.is_empty() {
        return Ok(vec![stdin_input()]);
    }
    files
        .iter()
        .map(|path| {
            if path.as_os_str() == "-" {
                return Ok(stdin_input());
            }
            let open_error = |source| InputError::Open { path: path.clone(), source };
            let file = File::open(path).map_err(open_error)?;
            let size = file.metadata().map_err(open_error)?.len();
            Ok(Input { name: path.display().to_string(), reader: Box::new(file), size: Some(size) })
        })
        .collect()
}

fn stdin_input() -> Input {
    Input { name: "stdin".to_owned(), reader: Box::new(io::stdin()), size: None }
}

type Item = Result<Box<RawValue>, InputError>;

/// Runs on its own thread: blocking reads must not stall the uploads, and a thread blocked on a terminal's
/// stdin must not keep the process alive after a failed upload (a runtime's blocking pool would).
fn read_inputs(inputs: Vec<Input>, events: mpsc::Sender<Item>, progress: ProgressBar) {
    for input in inputs {
        let reader = BufReader::with_capacity(256 << 10, progress.wrap_read(input.reader));
        let mut receiver_gone = false;
        let result = for_each_event(reader, |event| {
            receiver_gone = events.blocking_send(Ok(event)).is_err();
            !receiver_gone
        });
        if receiver_gone {
            return;
        }
        if let Err(error) = result {
            let _ = events.blocking_send(Err(InputError::Parse { name: input.name, error }));
            return;
        }
    }
}

/// Offsets one partition received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Landed {
    events: u64,
    first: u64,
    last: u64,
}

#[derive(Debug, Default)]
struct Summary {
    events: u64,
    batches: u64,
    partitions: BTreeMap<u32, Landed>,
}

impl Summary {
    fn record(&mut self, response: &PublishResponse) {
        self.batches += 1;
        for placed in &response.results {
            self.events += 1;
            self.partitions
                .entry(placed.partition)
                .and_modify(|l| {
                    l.events += 1;
                    l.first = l.first.min(placed.offset);
                    l.last = l.last.max(placed.offset);
                })
                .or_insert(Landed { events: 1, first: placed.offset, last: placed.offset });
        }
    }

    /// "N events in M batches".
    fn totals(&self) -> String {
        format!("{} in {}", count(self.events, "event", "events"), count(self.batches, "batch", "batches"))
    }

    fn lines(&self, topic: &str) -> Vec<String> {
        let mut lines = vec![format!("published {} to topic {topic}", self.totals())];
        for (partition, l) in &self.partitions {
            lines.push(format!(
                "partition {partition}: {}, first offset {}, last offset {}",
                count(l.events, "event", "events"),
                l.first,
                l.last
            ));
        }
        lines
    }
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

struct Publisher<'a> {
    client: &'a Client,
    topic: &'a str,
    key: Option<&'a str>,
    summary: Summary,
    progress: ProgressBar,
}

impl Publisher<'_> {
    async fn send(&mut self, batch: Batch) -> anyhow::Result<()> {
        let body = Bytes::from(batch.body);
        let mut refusals = 0;
        let result = loop {
            match self.client.publish(self.topic, self.key, body.clone()).await {
                // Over the producer's rate limit: the server kept nothing of the batch, so sending it again
                // after the wait it names cannot duplicate anything.
                Err(err) if refusals < MAX_RATE_LIMITED_RETRIES && err.rate_limited().is_some() => {
                    refusals += 1;
                    let wait = err.rate_limited().unwrap_or(Duration::from_secs(1)).min(MAX_RATE_LIMIT_WAIT);
                    self.progress.suspend(|| {
                        eprintln!(
                            "note: over this producer's rate limit; sending again in {}s",
                            wait.as_secs_f32()
                        )
                    });
                    tokio::time::sleep(wait).await;
                }
                other => break other,
            }
        };
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                self.progress.finish_and_clear();
                self.note_published();
                if let ClientError::Problem { problem, .. } = &err
                    && let Some(index) = problem.extensions.get("index").and_then(serde_json::Value::as_u64)
                {
                    eprintln!("note: the rejected event is event {} of the input", batch.first_event + index);
                }
                return Err(err.into());
            }
        };
        if response.results.len() != batch.events {
            anyhow::bail!(
                "the server acknowledged {} events of a batch of {}; check the topic before publishing again",
                response.results.len(),
                batch.events
            );
        }
        self.summary.record(&response);
        // Many events: worth a progress bar (drawn only if stderr is a terminal).
        if self.summary.batches == 2 && io::stderr().is_terminal() {
            self.progress.set_draw_target(ProgressDrawTarget::stderr());
        }
        self.progress
            .set_message(format!("{} events in {} batches", self.summary.events, self.summary.batches));
        Ok(())
    }

    fn note_published(&self) {
        if self.summary.events > 0 {
            eprintln!("note: published {} before this error", self.summary.totals());
        }
    }
}

fn progress_bar(total_bytes: Option<u64>) -> ProgressBar {
    let (bar, template) = match total_bytes {
        Some(total) => (
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden()),
            "{spinner} [{bar:30}] {bytes}/{total_bytes} read, {msg} ({elapsed})",
        ),
        None => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()),
            "{spinner} {bytes} read, {msg} ({elapsed})",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let client = args.server.client()?;
    let inputs = open_inputs(&args.files)?;
    if inputs.iter().any(|i| i.size.is_none()) && io::stdin().is_terminal() {
        eprintln!("reading events from stdin (end with Ctrl-D)");
    }
    let total_bytes = inputs.iter().map(|i| i.size).sum::<Option<u64>>();
    let progress = progress_bar(total_bytes);

    let max_events = usize::try_from(args.batch_size).unwrap_or(usize::MAX);
    let max_bytes = usize::try_from(args.batch_bytes).unwrap_or(usize::MAX);
    // About one batch waits in the channel while the previous one is in flight.
    let (tx, mut rx) = mpsc::channel::<Item>(max_events.min(10_000));
    let reader_progress = progress.clone();
    std::thread::Builder::new()
        .name("publish-reader".into())
        .spawn(move || read_inputs(inputs, tx, reader_progress))?;

    let mut publisher = Publisher {
        client: &client,
        topic: &args.topic,
        key: args.key.as_deref(),
        summary: Summary::default(),
        progress,
    };
    let mut batcher = Batcher::new(max_events, max_bytes);
    let mut input_error = None;
    loop {
        let item = if batcher.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(LINGER, rx.recv()).await {
                Ok(item) => item,
                Err(_idle) => {
                    if let Some(batch) = batcher.take() {
                        publisher.send(batch).await?;
                    }
                    continue;
                }
            }
        };
        match item {
            None => break,
            Some(Ok(event)) => {
                if let Some(batch) = batcher.push(event.get()) {
                    publisher.send(batch).await?;
                }
            }
            Some(Err(error)) => {
                input_error = Some(error);
                break;
            }
        }
    }
    if let Some(batch) = batcher.take() {
        publisher.send(batch).await?;
    }
    publisher.progress.finish_and_clear();
    if let Some(error) = input_error {
        publisher.note_published();
        return Err(error.into());
    }
    let mut out = Output::stdout();
    for line in publisher.summary.lines(&args.topic) {
        out.line(line)?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Placement;

    fn events(input: &str) -> Result<Vec<String>, EventError> {
        let mut seen = Vec::new();
        for_each_event(input.as_bytes(), |e| {
            seen.push(e.get().to_owned());
            true
        })?;
        Ok(seen)
    }

    #[test]
    fn ndjson_gives_one_event_per_line_byte_for_byte() {
        let input = "{\"a\": 1.50}\n{\"b\":\"x\\ny\"}\r\n\n{ }\n";
        assert_eq!(events(input).unwrap(), vec![r#"{"a": 1.50}"#, r#"{"b":"x\ny"}"#, "{ }"]);
    }

    #[test]
    fn a_single_pretty_object_is_one_event() {
        let input = "\n  {\n  \"id\": 1,\n  \"data\": {\"x\": [1, 2]}\n}\n";
        assert_eq!(events(input).unwrap(), vec!["{\n  \"id\": 1,\n  \"data\": {\"x\": [1, 2]}\n}"]);
    }

    #[test]
    fn an_array_gives_its_elements() {
        let input = "\u{feff}[ {\"a\":\"],[\"} ,\n {\"b\":[{}]} ]\n";
        assert_eq!(events(input).unwrap(), vec![r#"{"a":"],["}"#, r#"{"b":[{}]}"#]);
        assert_eq!(events("[]").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn empty_or_blank_input_has_no_events() {
        assert!(events("").unwrap().is_empty());
        assert!(events(" \n\t\n").unwrap().is_empty());
    }

    #[test]
    fn malformed_line_is_reported_with_its_true_line_number() {
        let line = |err: EventError| match err {
            EventError::Json(e) => e.line(),
            other => panic!("{other:?}"),
        };
        assert_eq!(line(events("\n\n{\"a\":1}\n{\"b\":}\n").unwrap_err()), 4);
        assert_eq!(line(events("\n\n[{\"a\":1},\n{\"b\" 2}]").unwrap_err()), 4);
    }

    #[test]
    fn events_before_a_malformed_one_are_delivered() {
        let mut seen = 0;
        let result = for_each_event("{}\n{}\n{oops}\n{}\n".as_bytes(), |_| {
            seen += 1;
            true
        });
        assert!(result.is_err());
        assert_eq!(seen, 2);
    }

    #[test]
    fn non_object_events_are_rejected_naming_their_number_and_line() {
        let bad = |input: &str| match events(input).unwrap_err() {
            EventError::NotAnObject { number, line, start } => (number, line, start),
            other => panic!("{input:?}: {other:?}"),
        };
        assert_eq!(bad("{}\n[1,2]\n{}"), (2, 2, "[1,2]".to_owned()));
        assert_eq!(bad("{}\n[1,2]"), (2, 2, "[1,2]".to_owned()), "no lookahead at the end");
        assert_eq!(bad("{}\n\n  [\n1,\n2]\n"), (2, 3, "[\n1,\n2]".to_owned()), "multi-line value");
        assert_eq!(bad("[{}, {},\n 3]"), (3, 2, "3".to_owned()));
        assert_eq!(bad("[{},\n [\n 3]]"), (2, 2, "[\n 3]".to_owned()));
        assert_eq!(bad("\n\n\"text\""), (1, 3, "\"text\"".to_owned()));
        let err = events("{}\n[1,2]").unwrap_err().to_string();
        assert!(err.contains("event 2 (line 2) is not a JSON object"), "{err}");
        assert!(events("[{}] [{}]").is_err(), "one array only");
    }

    #[test]
    fn a_sink_that_stops_ends_the_parse_quietly() {
        for input in ["{}\n{}\n{}", "[{}, {}, {}]"] {
            let mut seen = 0;
            for_each_event(input.as_bytes(), |_| {
                seen += 1;
                seen < 2
            })
            .unwrap();
            assert_eq!(seen, 2, "{input}");
        }
    }

    fn bodies(batcher: &mut Batcher, events: &[&str]) -> Vec<(String, usize, u64)> {
        let mut out: Vec<_> = events.iter().filter_map(|e| batcher.push(e)).collect();
        out.extend(batcher.take());
        out.into_iter().map(|b| (String::from_utf8(b.body).unwrap(), b.events, b.first_event)).collect()
    }

    #[test]
    fn batches_close_at_the_event_count() {
        let mut b = Batcher::new(2, 1 << 20);
        assert_eq!(
            bodies(&mut b, &["{}", "{\"a\":1}", "{}"]),
            vec![("[{},{\"a\":1}]".to_owned(), 2, 1), ("[{}]".to_owned(), 1, 3),]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn batches_stay_under_the_byte_limit() {
        // "[{},{}]" is 7 bytes: a third event would make it 10.
        let mut b = Batcher::new(100, 9);
        let batches = bodies(&mut b, &["{}", "{}", "{}", "{}"]);
        assert_eq!(batches, vec![("[{},{}]".to_owned(), 2, 1), ("[{},{}]".to_owned(), 2, 3)]);
        for (body, ..) in &batches {
            assert!(body.len() <= 9);
            serde_json::from_str::<serde_json::Value>(body).unwrap();
        }
    }

    #[test]
    fn an_event_larger_than_the_byte_limit_goes_alone() {
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(50));
        let mut b = Batcher::new(100, 20);
        let batches = bodies(&mut b, &["{}", &big, "{}"]);
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[1], (format!("[{big}]"), 1, 2));
    }

    #[test]
    fn summary_tracks_offsets_per_partition() {
        let mut s = Summary::default();
        let placed = |partition, offset| Placement { partition, offset };
        s.record(&PublishResponse { results: vec![placed(0, 41), placed(1, 7), placed(0, 42)] });
        s.record(&PublishResponse { results: vec![placed(0, 43)] });
        assert_eq!(
            s.lines("t"),
            vec![
                "published 4 events in 2 batches to topic t",
                "partition 0: 3 events, first offset 41, last offset 43",
                "partition 1: 1 event, first offset 7, last offset 7",
            ]
        );
        let mut one = Summary::default();
        one.record(&PublishResponse { results: vec![placed(0, 0)] });
        assert_eq!(one.lines("t")[0], "published 1 event in 1 batch to topic t");
    }
}
