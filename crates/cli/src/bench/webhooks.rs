//! Webhook delivery throughput: a backlog of events in the log, then subscriptions from the beginning, and the
//! time until a local receiver has accepted every delivery (events/s, summed over subscriptions).
//!
//! Each subscription has one delivery in flight (that is what keeps a partition's events in order), so one
//! subscription's figure is a round trip's worth: signing, the POST over a kept-alive loopback connection, the
//! receiver's 204, and the batched cursor commits (fsync'd every 100 events). Several subscriptions run in
//! parallel. The receiver is a raw HTTP/1.1 socket that answers 204 at once, so the figures are the sender's;
//! it shares the machine's cores with the dispatcher.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use esgf_events_engine::LogStore;
use esgf_events_meta::{MetaStore, RedbMetaStore};
use esgf_events_webhooks::{Dispatcher, NewSubscription, SubscriptionControl, WebhookConfig};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{EventPool, Plan, create_topic};

/// Subscriptions per cell.
const SUBSCRIPTIONS: [usize; 2] = [1, 8];
/// Appended per engine call while building the backlog.
const FILL_BATCH: usize = 1000;
/// Longest a cell may take before it is reported as failed.
const CELL_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest request head the receiver accepts.
const MAX_HEAD: usize = 64 << 10;

#[derive(Debug, Serialize)]
pub(super) struct WebhookReport {
    /// Events in the topic, delivered to each subscription.
    backlog: u64,
    rows: Vec<WebhookRow>,
}

#[derive(Debug, Serialize)]
struct WebhookRow {
    subscriptions: usize,
    /// Backlog × subscriptions.
    expected_deliveries: u64,
    deliveries: u64,
    /// From creating the subscriptions to the last accepted delivery.
    seconds: f64,
    deliveries_per_s: f64,
    error: Option<String>,
}

/// Fills one topic, then measures each cell with fresh subscriptions (from the beginning) and a fresh
/// dispatcher over its own state store in `work`. Failures are reported in the rows, not returned.
pub(super) async fn measure_webhooks(
    log: &Arc<dyn LogStore>,
    work: &Path,
    pool: &EventPool,
    plan: &Plan,
) -> WebhookReport {
    let backlog: u64 = if plan.quick { 2_000 } else { 20_000 };
    let mut report = WebhookReport { backlog, rows: Vec::new() };
    let topic = "bench.webhooks";
    let filled = fill(log, topic, pool, backlog).await;
    for (i, subscriptions) in SUBSCRIPTIONS.into_iter().enumerate() {
        eprintln!("webhooks: {backlog} events to {subscriptions} subscription(s) ...");
        let expected = backlog * subscriptions as u64;
        let measured = match &filled {
            Ok(()) => {
                let state = work.join(format!("bench-webhooks-{i}.redb"));
                measure_cell(log, topic, &state, subscriptions, expected).await
            }
            Err(err) => Err(anyhow::anyhow!("filling the topic failed: {err:#}")),
        };
        report.rows.push(match measured {
            Ok((deliveries, elapsed)) => WebhookRow {
                subscriptions,
                expected_deliveries: expected,
                deliveries,
                seconds: elapsed.as_secs_f64(),
                deliveries_per_s: deliveries as f64 / elapsed.as_secs_f64().max(1e-9),
                error: None,
            },
            Err(err) => WebhookRow {
                subscriptions,
                expected_deliveries: expected,
                deliveries: 0,
                seconds: 0.0,
                deliveries_per_s: 0.0,
                error: Some(format!("{err:#}")),
            },
        });
    }
    report
}

async fn fill(log: &Arc<dyn LogStore>, topic: &str, pool: &EventPool, events: u64) -> anyhow::Result<()> {
    create_topic(log, topic).await?;
    let mut written = 0u64;
    while written < events {
        let n = FILL_BATCH.min((events - written) as usize);
        let (records, _) = pool.records(written as usize, n);
        log.append(topic, 0, records).await.context("appending the backlog")?;
        written += n as u64;
    }
    Ok(())
}

async fn measure_cell(
    log: &Arc<dyn LogStore>,
    topic: &str,
    state: &Path,
    subscriptions: usize,
    expected: u64,
) -> anyhow::Result<(u64, Duration)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the receiver")?;
    let url = format!("http://{}/hook", listener.local_addr().context("receiver address")?);
    let (count_tx, mut count) = watch::channel(0u64);
    let count_tx = Arc::new(count_tx);
    let receiver = tokio::spawn(accept_loop(listener, Arc::clone(&count_tx)));

    let meta: Arc<dyn MetaStore> = Arc::new(RedbMetaStore::open(state).context("opening a state store")?);
    let dispatcher = Dispatcher::start(Arc::clone(log), meta, WebhookConfig::default())
        .await
        .context("starting the dispatcher")?;
    let started = Instant::now();
    for _ in 0..subscriptions {
        let request = NewSubscription {
            topic: topic.to_owned(),
            url: url.clone(),
            filter: Vec::new(),
            key_prefix: None,
            from: Some("beginning".to_owned()),
            format: None,
        };
        dispatcher.create("bench", request).await.context("creating a subscription")?;
    }
    let waited = tokio::time::timeout(CELL_TIMEOUT, count.wait_for(|n| *n >= expected)).await.is_ok();
    let elapsed = started.elapsed();
    let delivered = *count.borrow();
    dispatcher.shutdown().await;
    receiver.abort();
    if !waited {
        bail!("only {delivered} of {expected} deliveries within {} s", CELL_TIMEOUT.as_secs());
    }
    Ok((delivered, elapsed))
}

async fn accept_loop(listener: TcpListener, count: Arc<watch::Sender<u64>>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((socket, _)) = listener.accept().await {
        connections.spawn(answer(socket, Arc::clone(&count)));
    }
}

/// Answers every request on one connection with 204, counting them.
async fn answer(mut socket: TcpStream, count: Arc<watch::Sender<u64>>) -> anyhow::Result<()> {
    socket.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                bail!("request head over {MAX_HEAD} bytes");
            }
            if socket.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]);
        let length = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            if socket.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        buf.drain(..head_end + length);
        socket.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await?;
        count.send_modify(|n| *n += 1);
    }
}

pub(super) fn render_webhooks(out: &mut String, report: &WebhookReport) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "\nWebhook delivery: a backlog of {} events, subscriptions from the beginning, local receiver (204)",
        report.backlog
    );
    let _ = writeln!(
        out,
        "  {:>13} {:>11} {:>11} {:>9} {:>13}",
        "subscriptions", "deliveries", "of", "seconds", "events/s"
    );
    for row in &report.rows {
        let _ = writeln!(
            out,
            "  {:>13} {:>11} {:>11} {:>9.2} {:>13}{}",
            row.subscriptions,
            row.deliveries,
            row.expected_deliveries,
            row.seconds,
            super::thousands(row.deliveries_per_s),
            row.error.as_ref().map_or_else(String::new, |e| format!("  error: {e}")),
        );
    }
    let _ = writeln!(
        out,
        "  (one delivery in flight per subscription, for order; events/s summed over subscriptions)"
    );
}
