//! Server-sent events: publish→delivery latency to 1, 100 and 1000 consumers of one topic while events are
//! published at [`RATE`] events/s (one durable publish request per event), and what an idle stream costs in
//! memory (the process's RSS before and after opening [`IDLE_STREAMS`] of them).
//!
//! Consumers are raw HTTP/1.1 sockets that only look for each event's `id:` line, so the client side costs
//! little next to the server: the figures are the server's, but client and server share the machine's cores
//! (and, for the memory figure, the process), so they are upper bounds. An event's latency runs from the start
//! of its publish request to the moment a consumer has read its `id:` line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use esgf_events_engine::LogStore;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{EventPool, InProcessServer, Latency, Plan, create_topic};

/// Events published per second in every latency cell.
const RATE: u64 = 1000;
/// Consumers of the latency cells.
const CONSUMERS: [usize; 3] = [1, 100, 1000];
/// Streams opened for the memory measurement.
const IDLE_STREAMS: usize = 1000;
/// Publish requests in flight at once (the rate, not this, sets the load).
const MAX_IN_FLIGHT: usize = 256;
/// "Not received" in a consumer's table of receive times.
const MISSING: u32 = u32::MAX;

#[derive(Debug, Serialize)]
pub(super) struct SseReport {
    rate_per_s: u64,
    latency: Vec<SseRow>,
    idle: Option<IdleStreams>,
    /// Why the memory measurement could not run, if it could not.
    idle_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct SseRow {
    consumers: usize,
    events: u64,
    /// Events × consumers.
    expected_deliveries: u64,
    deliveries: u64,
    /// From the first publish to the last delivery.
    seconds: f64,
    latency: Option<Latency>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct IdleStreams {
    streams: usize,
    rss_before_kb: u64,
    rss_after_kb: u64,
    per_stream_kb: f64,
}

/// Runs the memory measurement first (before the latency cells leave freed memory around that new streams
/// would reuse), then the latency cells. Failures are reported in the rows, not returned.
pub(super) async fn measure_sse(
    log: &Arc<dyn LogStore>,
    server: &InProcessServer,
    pool: &EventPool,
    plan: &Plan,
) -> SseReport {
    let mut report = SseReport { rate_per_s: RATE, latency: Vec::new(), idle: None, idle_error: None };
    let address = match server_address(&server.base_url) {
        Ok(address) => address,
        Err(err) => {
            report.idle_error = Some(format!("{err:#}"));
            return report;
        }
    };
    eprintln!("SSE: {IDLE_STREAMS} idle streams, memory ...");
    match measure_idle(log, address).await {
        Ok(idle) => report.idle = Some(idle),
        Err(err) => report.idle_error = Some(format!("{err:#}")),
    }
    let duration = if plan.quick { Duration::from_secs(1) } else { Duration::from_secs(5) };
    for consumers in CONSUMERS {
        eprintln!("SSE: publish→delivery latency, {consumers} consumers at {RATE} events/s ...");
        let row = match measure_latency(log, server, address, pool, consumers, duration).await {
            Ok(row) => row,
            Err(err) => SseRow {
                consumers,
                events: 0,
                expected_deliveries: 0,
                deliveries: 0,
                seconds: 0.0,
                latency: None,
                error: Some(format!("{err:#}")),
            },
        };
        report.latency.push(row);
    }
    report
}

fn server_address(base_url: &str) -> anyhow::Result<SocketAddr> {
    let host = base_url.strip_prefix("http://").context("the bench server is not plain HTTP")?;
    host.parse().with_context(|| format!("the bench server address {host}"))
}

async fn measure_idle(log: &Arc<dyn LogStore>, address: SocketAddr) -> anyhow::Result<IdleStreams> {
    let topic = "bench.sse.idle";
    create_topic(log, topic).await?;
    let path = format!("/v1/topics/{topic}/stream");
    let before = vm_rss_kb().context("reading VmRSS from /proc/self/status")?;
    let mut streams = Vec::with_capacity(IDLE_STREAMS);
    for _ in 0..IDLE_STREAMS {
        let mut stream = RawSse::open(address, &path).await?;
        // The opening comment comes from the stream's own reader: once it is here, the stream is fully set up.
        stream.comment().await?;
        streams.push(stream);
    }
    let after = vm_rss_kb().context("reading VmRSS from /proc/self/status")?;
    drop(streams);
    Ok(IdleStreams {
        streams: IDLE_STREAMS,
        rss_before_kb: before,
        rss_after_kb: after,
        per_stream_kb: after.saturating_sub(before) as f64 / IDLE_STREAMS as f64,
    })
}

/// The resident set size of this process, in kB (Linux).
fn vm_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn measure_latency(
    log: &Arc<dyn LogStore>,
    server: &InProcessServer,
    address: SocketAddr,
    pool: &EventPool,
    consumers: usize,
    duration: Duration,
) -> anyhow::Result<SseRow> {
    let topic = format!("bench.sse.c{consumers}");
    create_topic(log, &topic).await?;
    let events = (RATE as f64 * duration.as_secs_f64()) as usize;
    // Every consumer starts at the end of the (empty) log, fixed once its response headers are in.
    let path = format!("/v1/topics/{topic}/stream?from=latest");
    let mut streams = Vec::with_capacity(consumers);
    for _ in 0..consumers {
        streams.push(RawSse::open(address, &path).await?);
    }

    let t0 = Instant::now();
    let drain = if consumers > 100 { Duration::from_secs(120) } else { Duration::from_secs(30) };
    let deadline = t0 + duration + drain;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut received = vec![MISSING; events];
                let mut count = 0;
                while count < events {
                    let next = tokio::time::timeout_at(deadline.into(), stream.next_offset()).await;
                    let Ok(Ok(Some(offset))) = next else { break };
                    if let Some(slot) = usize::try_from(offset).ok().and_then(|o| received.get_mut(o)) {
                        *slot = micros_since(t0);
                        count += 1;
                    }
                }
                received
            })
        })
        .collect();

    // Publish: one event per request, one request started every 1/RATE s, each timed from its start.
    let sent: Arc<Vec<AtomicU32>> = Arc::new((0..events).map(|_| AtomicU32::new(MISSING)).collect());
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let url = format!("{}/v1/topics/{topic}/events", server.base_url);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut publishes = tokio::task::JoinSet::new();
    for i in 0..events {
        ticks.tick().await;
        let permit = Arc::clone(&in_flight).acquire_owned().await.context("publish slots")?;
        let (client, url, sent) = (server.client.clone(), url.clone(), Arc::clone(&sent));
        let body = pool.event(i).clone();
        publishes.spawn(async move {
            let _permit = permit;
            let started = micros_since(t0);
            let response = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .context("publishing")?;
            ensure!(
                response.status() == reqwest::StatusCode::CREATED,
                "publish answered {}",
                response.status()
            );
            let placed: serde_json::Value = response.json().await.context("reading the publish answer")?;
            let offset =
                placed["results"][0]["offset"].as_u64().context("the publish answer has no offset")?;
            if let Some(slot) = usize::try_from(offset).ok().and_then(|o| sent.get(o)) {
                slot.store(started, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = publishes.join_next().await {
        joined.context("a publish task failed")??;
    }

    let mut latencies = Vec::with_capacity(events * consumers);
    let mut last_delivery = 0u32;
    for reader in readers {
        let received = reader.await.context("a consumer task failed")?;
        for (offset, at) in received.into_iter().enumerate() {
            let start = sent[offset].load(Ordering::Relaxed);
            if at != MISSING && start != MISSING {
                latencies.push(Duration::from_micros(u64::from(at.saturating_sub(start))));
                last_delivery = last_delivery.max(at);
            }
        }
    }
    let deliveries = latencies.len() as u64;
    Ok(SseRow {
        consumers,
        events: events as u64,
        expected_deliveries: (events * consumers) as u64,
        deliveries,
        seconds: f64::from(last_delivery) / 1e6,
        latency: Latency::of(latencies),
        error: None,
    })
}

fn micros_since(t0: Instant) -> u32 {
    u32::try_from(t0.elapsed().as_micros()).unwrap_or(MISSING - 1)
}

/// A minimal SSE consumer on a raw socket: sends one GET, checks for 200, then reads lines.
struct RawSse {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Where unread bytes start in `buffer`.
    start: usize,
}

/// Longest response head accepted.
const MAX_HEAD: usize = 64 << 10;

impl RawSse {
    async fn open(address: SocketAddr, path: &str) -> anyhow::Result<RawSse> {
        let mut stream = TcpStream::connect(address).await.context("connecting a stream consumer")?;
        stream.set_nodelay(true)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut buffer = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            ensure!(buffer.len() < MAX_HEAD, "the stream's response head is over {MAX_HEAD} bytes");
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed a stream before answering");
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let status = String::from_utf8_lossy(&buffer[..head_end.min(64)]).into_owned();
        ensure!(
            status.starts_with("HTTP/1.1 200"),
            "stream refused: {}",
            status.lines().next().unwrap_or("")
        );
        Ok(RawSse { stream, buffer, start: head_end })
    }

    /// The next line (without its `\n`), or `None` at the end of the stream.
    async fn line(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            if let Some(n) = self.buffer[self.start..].iter().position(|b| *b == b'\n') {
                let line = self.buffer[self.start..self.start + n].to_vec();
                self.start += n + 1;
                return Ok(Some(line));
            }
            if self.start > 0 {
                self.buffer.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; 16 << 10];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until the first SSE comment line.
    async fn comment(&mut self) -> anyhow::Result<()> {
        while let Some(line) = self.line().await? {
            if line.starts_with(b":") {
                return Ok(());
            }
        }
        bail!("the stream ended before its opening comment")
    }

    /// The offset of the next event of a one-partition stream: its `id:` cursor `0-N` names N, the next offset.
    async fn next_offset(&mut self) -> anyhow::Result<Option<u64>> {
        while let Some(line) = self.line().await? {
            if let Some(cursor) = line.strip_prefix(b"id: 0-") {
                let next: u64 = std::str::from_utf8(cursor)?.trim_end().parse()?;
                return Ok(next.checked_sub(1));
            }
        }
        Ok(None)
    }
}

/// The SSE section of the report's table.
pub(super) fn render_sse(out: &mut String, report: &SseReport) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "\nServer-sent events, in-process server, 1 partition, {} events/s published one per durable request",
        report.rate_per_s
    );
    let _ = writeln!(
        out,
        "  {:>9} {:>8} {:>11} {:>11} {:>9} {:>9} {:>9}",
        "consumers", "events", "deliveries", "of", "p50 ms", "p99 ms", "max ms"
    );
    for row in &report.latency {
        let ms = |pick: fn(&Latency) -> f64| {
            row.latency.as_ref().map_or_else(|| "-".into(), |l| format!("{:.1}", pick(l)))
        };
        let _ = writeln!(
            out,
            "  {:>9} {:>8} {:>11} {:>11} {:>9} {:>9} {:>9}{}",
            row.consumers,
            row.events,
            row.deliveries,
            row.expected_deliveries,
            ms(|l| l.p50_ms),
            ms(|l| l.p99_ms),
            ms(|l| l.max_ms),
            row.error.as_ref().map_or_else(String::new, |e| format!("  error: {e}")),
        );
    }
    let _ = writeln!(
        out,
        "  (latency: start of the publish request to the consumer reading the event's id line)"
    );
    match (&report.idle, &report.idle_error) {
        (Some(idle), _) => {
            let _ = writeln!(
                out,
                "  {} idle streams: RSS {:.1} -> {:.1} MB, {:.1} KB per stream (server and raw-socket clients in one \
                 process; memory freed earlier in the run and reused may hide part of it)",
                idle.streams,
                idle.rss_before_kb as f64 / 1024.0,
                idle.rss_after_kb as f64 / 1024.0,
                idle.per_stream_kb
            );
        }
        (None, Some(err)) => {
            let _ = writeln!(out, "  idle streams: not measured: {err}");
        }
        (None, None) => {}
    }
}
