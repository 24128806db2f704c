//! `esgf-events bench --suite backends`: one durable workload (~2 KB ESGF events, each append acknowledged only
//! once stored durably) through every storage backend and through raw JetStream, in one run:
//! - the embedded engine (fdatasync before acknowledging, group commit);
//! - the NATS JetStream backend (`JetStreamStore`) on one node with single-replica streams (R1) and on a
//!   3-node cluster with three replicas (R3);
//! - raw JetStream publishing from a plain async-nats client on the same servers, to streams with the same
//!   settings as the backend's partition streams, with the same batch sizes and concurrency.
//!
//! The NATS servers are real `nats-server` processes (2.12 or newer, from `$NATS_SERVER_BIN` or `PATH`) started
//! from the shipped `deploy/nats/node*.conf`, so `sync_interval: always` applies: every write is fsync'd before
//! it counts. Batches of one are a plain publish awaiting its ack; larger batches are one atomic batch
//! (ADR-50, `Nats-Batch-*` headers), which is what the backend sends, and — for reference — as many plain
//! publishes, pipelined, acknowledged one by one but not atomic.
//!
//! Fairness: all clients connect to node 1 of the cluster, and every R3 stream (backend or raw) is led by node
//! 1 (leadership is moved there before measuring); targets take turns in rounds whose order alternates, so
//! they share whatever else the machine does meanwhile.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use async_nats::jetstream;
use bytes::Bytes;
use esgf_events_engine::{
    Clock, EmbeddedConfig, EmbeddedStore, LogStore, Retention, SystemClock, TopicConfig,
};
use esgf_events_meta::{MetaStore, RedbMetaStore};
use esgf_events_nats::testing::{self, NatsCluster};
use esgf_events_nats::{JetStreamMeta, JetStreamStore, NatsConfig};
use futures_util::StreamExt;
use serde::Serialize;

use super::{
    BackendLevel, Budget, EventPool, InProcessServer, Latency, Run, WorkDir, drive, filesystem_type,
    load_dataset_ids, publish_load, thousands,
};

/// (events per append, concurrent producers) measured at the storage interface.
const STORE_CELLS: [(usize, usize); 4] = [(1, 1), (1, 16), (100, 1), (100, 4)];

/// (events per request, concurrent clients) measured end to end through the HTTP API.
const HTTP_CELLS: [(usize, usize); 2] = [(1, 16), (100, 4)];

/// Rounds each cell is split into; the targets take turns within a round.
const ROUNDS: u32 = 3;

/// The service's overhead over raw JetStream that issue 8 allows.
const MAX_SERVICE_OVERHEAD: f64 = 0.25;

/// Volumes of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    /// Events one target writes in one cell at most (over all rounds).
    events_per_cell: u64,
    /// Longest one target runs in one cell (over all rounds).
    cell_duration: Duration,
}

impl Plan {
    fn new(args: &super::BenchArgs) -> anyhow::Result<Plan> {
        let events_per_cell = args.events.unwrap_or(if args.quick { 2_000 } else { 20_000 });
        ensure!(events_per_cell >= 100, "--events must be at least 100");
        Ok(Plan {
            quick: args.quick,
            events_per_cell,
            cell_duration: if args.quick { Duration::from_secs(1) } else { Duration::from_secs(8) },
        })
    }
}

/// What is being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Target {
    Embedded,
    ServiceR1,
    RawR1,
    /// Plain publishes, pipelined, one ack each: not atomic (batches > 1 only).
    RawR1Pipelined,
    ServiceR3,
    RawR3,
    RawR3Pipelined,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Embedded => "embedded (fsync)",
            Target::ServiceR1 => "service JetStream R1",
            Target::RawR1 => "raw JetStream R1",
            Target::RawR1Pipelined => "raw R1, pipelined, not atomic",
            Target::ServiceR3 => "service JetStream R3",
            Target::RawR3 => "raw JetStream R3",
            Target::RawR3Pipelined => "raw R3, pipelined, not atomic",
        }
    }

    fn replicas(self) -> Option<usize> {
        match self {
            Target::Embedded => None,
            Target::ServiceR1 | Target::RawR1 | Target::RawR1Pipelined => Some(1),
            Target::ServiceR3 | Target::RawR3 | Target::RawR3Pipelined => Some(3),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    /// "store" (LogStore::append or the raw client) or "http" (POST /v1/topics/{t}/events).
    level: &'static str,
    target: Target,
    batch: usize,
    concurrency: usize,
    events: u64,
    seconds: f64,
    events_per_s: f64,
    /// Per append (or per HTTP request): from sending it to its acknowledgement.
    latency: Option<Latency>,
}

impl Row {
    fn new(level: &'static str, target: Target, batch: usize, concurrency: usize, run: Run) -> Row {
        let seconds = run.elapsed.as_secs_f64().max(1e-9);
        Row {
            level,
            target,
            batch,
            concurrency,
            events: run.events,
            seconds,
            events_per_s: run.events as f64 / seconds,
            latency: Latency::of(run.latencies),
        }
    }
}

#[derive(Debug, Serialize)]
struct Ratio {
    level: &'static str,
    batch: usize,
    concurrency: usize,
    name: String,
    /// Numerator's events/s ÷ denominator's.
    throughput_ratio: f64,
    p50_ratio: Option<f64>,
    p99_ratio: Option<f64>,
    /// For service/raw ratios: whether the service loses less than 25 % throughput.
    within_target: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    cpus: usize,
    nats_server: String,
    work_dir: String,
    filesystem: String,
    events_source: String,
    mean_event_bytes: f64,
    rounds: u32,
    rows: Vec<Row>,
    ratios: Vec<Ratio>,
}

/// The servers and stores every target uses.
struct Setup {
    embedded: Arc<dyn LogStore>,
    /// Kept running for the whole suite (the R1 stores talk to it).
    _single: NatsCluster,
    cluster: NatsCluster,
    service_r1: Arc<dyn LogStore>,
    service_r3: Arc<dyn LogStore>,
    /// The state stores `serve` would use with each backend (for the topic catalogue's event-id dedupe).
    meta_embedded: Arc<dyn MetaStore>,
    meta_r1: Arc<dyn MetaStore>,
    meta_r3: Arc<dyn MetaStore>,
    /// Plain clients (own connections) to the single node and to node 1 of the cluster.
    raw_r1: async_nats::Client,
    raw_r3: async_nats::Client,
}

impl Setup {
    fn store(&self, target: Target) -> Option<&Arc<dyn LogStore>> {
        match target {
            Target::Embedded => Some(&self.embedded),
            Target::ServiceR1 => Some(&self.service_r1),
            Target::ServiceR3 => Some(&self.service_r3),
            _ => None,
        }
    }

    fn raw_client(&self, target: Target) -> &async_nats::Client {
        if target.replicas() == Some(1) { &self.raw_r1 } else { &self.raw_r3 }
    }

    /// The service's client of the cluster (or node) that `target` runs on.
    fn service_for(&self, target: Target) -> &Arc<dyn LogStore> {
        if target.replicas() == Some(1) { &self.service_r1 } else { &self.service_r3 }
    }

    fn meta_for(&self, target: Target) -> &Arc<dyn MetaStore> {
        match target.replicas() {
            None => &self.meta_embedded,
            Some(1) => &self.meta_r1,
            Some(_) => &self.meta_r3,
        }
    }
}

/// Runs the backends suite, prints its table and writes `--json`.
pub async fn run(args: super::BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    let (ids, id_source) = load_dataset_ids(args.fixtures.as_deref())?;
    let pool = Arc::new(EventPool::build(&ids));
    let parent = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().context("finding the current directory")?,
    };
    let work = WorkDir::create(&parent)?;
    let filesystem = filesystem_type(work.path()).unwrap_or_else(|| "unknown".to_owned());
    let bin = std::panic::catch_unwind(testing::nats_server_bin)
        .map_err(|_| anyhow::anyhow!("no usable nats-server (see the message above)"))?;
    let version = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    eprintln!(
        "bench --suite backends: {} distinct events, mean {:.0} B; {version} ({}); embedded store in {} ({filesystem})",
        pool.events.len(),
        pool.mean_bytes,
        bin.display(),
        work.path().display()
    );

    eprintln!("starting one NATS node (R1) and a 3-node cluster (R3) from deploy/nats/*.conf ...");
    let (single, cluster) = tokio::join!(NatsCluster::start_single(), NatsCluster::start());
    let setup = open_setup(work.path(), single, cluster).await?;

    let mut rows = Vec::new();
    let store_cells = if args.levels.contains(&BackendLevel::Store) { &STORE_CELLS[..] } else { &[] };
    for &(batch, concurrency) in store_cells {
        let mut targets =
            vec![Target::Embedded, Target::ServiceR1, Target::RawR1, Target::ServiceR3, Target::RawR3];
        if batch > 1 {
            targets.extend([Target::RawR1Pipelined, Target::RawR3Pipelined]);
        }
        eprintln!("store level: batch {batch} x {concurrency} producers, {ROUNDS} rounds ...");
        rows.extend(measure_store_cell(&setup, &pool, plan, &targets, batch, concurrency).await?);
    }
    for (level, catalogue) in [(BackendLevel::Http, false), (BackendLevel::HttpCatalogue, true)] {
        if !args.levels.contains(&level) {
            continue;
        }
        for (batch, clients) in HTTP_CELLS {
            let with = if catalogue { " with the topic catalogue" } else { "" };
            eprintln!("HTTP{with}: batch {batch} x {clients} clients, {ROUNDS} rounds ...");
            rows.extend(measure_http_cell(&setup, &pool, plan, batch, clients, catalogue).await?);
        }
    }

    let ratios = ratios(&rows);
    let report = Report {
        mode: if plan.quick { "quick" } else { "full" },
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        nats_server: version,
        work_dir: work.path().display().to_string(),
        filesystem,
        events_source: id_source,
        mean_event_bytes: pool.mean_bytes,
        rounds: ROUNDS,
        rows,
        ratios,
    };
    for store in [&setup.embedded, &setup.service_r1, &setup.service_r3] {
        store.shutdown().await.context("shutting a store down")?;
    }
    print!("{}", render(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_vec_pretty(&report).context("encoding the results")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

async fn open_setup(
    work: &std::path::Path,
    single: NatsCluster,
    cluster: NatsCluster,
) -> anyhow::Result<Setup> {
    let embedded: Arc<dyn LogStore> = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(work.join("data")), Arc::new(SystemClock) as Arc<dyn Clock>)
            .context("opening the embedded store")?,
    );
    // Every client talks to node 1 only, so no target pays for a hop the other does not.
    let service = |nats: &NatsCluster, replicas: usize| NatsConfig {
        servers: vec![nats.url(0)],
        replicas,
        connection_name: "esgf-events-bench".into(),
        ..testing::store_config(nats)
    };
    let (config_r1, config_r3) = (service(&single, 1), service(&cluster, 3));
    // One connection for the log and the state store, as `serve` has it.
    let open = |config: NatsConfig| async move {
        let client = esgf_events_nats::connect(&config).await.context("connecting the backend")?;
        let store = JetStreamStore::open(client.clone(), config.clone(), Arc::new(SystemClock))
            .await
            .context("opening the JetStream backend")?;
        let meta = JetStreamMeta::open(client, config).await.context("opening the JetStream state store")?;
        anyhow::Ok((Arc::new(store) as Arc<dyn LogStore>, Arc::new(meta) as Arc<dyn MetaStore>))
    };
    let (service_r1, meta_r1) = open(config_r1.clone()).await?;
    let (service_r3, meta_r3) = open(config_r3.clone()).await?;
    let state = work.join("state.redb");
    let meta_embedded: Arc<dyn MetaStore> = Arc::new(
        RedbMetaStore::open(&state)
            .with_context(|| format!("opening the state store {}", state.display()))?,
    );
    let raw_r1 = esgf_events_nats::connect(&NatsConfig { connection_name: "raw-bench".into(), ..config_r1 })
        .await
        .context("connecting the raw client")?;
    let raw_r3 = esgf_events_nats::connect(&NatsConfig { connection_name: "raw-bench".into(), ..config_r3 })
        .await
        .context("connecting the raw client")?;
    Ok(Setup {
        embedded,
        _single: single,
        cluster,
        service_r1,
        service_r3,
        meta_embedded,
        meta_r1,
        meta_r3,
        raw_r1,
        raw_r3,
    })
}

/// A topic or stream made for one target and cell, removed afterwards.
enum Sink {
    Topic { store: Arc<dyn LogStore>, name: Arc<str> },
    Raw { js: Box<jetstream::Context>, client: async_nats::Client, stream: String, subject: Arc<str> },
}

impl Sink {
    async fn remove(&self) -> anyhow::Result<()> {
        match self {
            Sink::Topic { store, name } => {
                store.delete_topic(name).await.with_context(|| format!("deleting topic {name}"))
            }
            Sink::Raw { js, stream, .. } => {
                js.delete_stream(stream).await.with_context(|| format!("deleting stream {stream}"))?;
                Ok(())
            }
        }
    }
}

/// The topic (or raw stream) `target` writes to in this cell.
async fn make_sink(setup: &Setup, target: Target, cell: &str) -> anyhow::Result<Sink> {
    let topic_name = format!("bench.backends.{cell}.{}", slug(target));
    if let Some(store) = setup.store(target) {
        let config = TopicConfig { partitions: 1, retention: Retention { max_age: None, max_bytes: None } };
        store.create_topic(&topic_name, config).await.with_context(|| format!("creating {topic_name}"))?;
        if target == Target::ServiceR3 {
            let js = jetstream::new(setup.raw_r3.clone());
            let stream = backend_stream(&js, &topic_name).await?;
            lead_on(&js, &stream.name, &setup.cluster.nodes[0].name).await?;
        }
        return Ok(Sink::Topic { store: Arc::clone(store), name: topic_name.into() });
    }
    // Raw: a stream configured exactly like the backend's partition stream (the backend makes one, the settings
    // are copied, the backend's topic goes again).
    let service = setup.service_for(target);
    let template = format!("{topic_name}.template");
    let config = TopicConfig { partitions: 1, retention: Retention { max_age: None, max_bytes: None } };
    service.create_topic(&template, config).await.with_context(|| format!("creating {template}"))?;
    let client = setup.raw_client(target).clone();
    let js = jetstream::new(client.clone());
    let mut config = backend_stream(&js, &template).await?;
    service.delete_topic(&template).await.with_context(|| format!("deleting {template}"))?;
    let stream = format!("RAW_{}_{}", cell.replace('.', "_"), slug(target).replace('-', "_"));
    let subject = format!("raw.{stream}");
    config.name = stream.clone();
    config.subjects = vec![subject.clone()];
    config.description = Some("bench: raw JetStream baseline".into());
    config.metadata.clear();
    js.create_stream(config).await.with_context(|| format!("creating raw stream {stream}"))?;
    if target.replicas() == Some(3) {
        lead_on(&js, &stream, &setup.cluster.nodes[0].name).await?;
    }
    Ok(Sink::Raw { js: Box::new(js), client, stream, subject: subject.into() })
}

fn slug(target: Target) -> &'static str {
    match target {
        Target::Embedded => "embedded",
        Target::ServiceR1 => "service-r1",
        Target::RawR1 => "raw-r1",
        Target::RawR1Pipelined => "raw-r1-pipelined",
        Target::ServiceR3 => "service-r3",
        Target::RawR3 => "raw-r3",
        Target::RawR3Pipelined => "raw-r3-pipelined",
    }
}

/// The configuration of the backend's (only) partition stream of `topic`.
async fn backend_stream(js: &jetstream::Context, topic: &str) -> anyhow::Result<jetstream::stream::Config> {
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        let info = info.context("listing streams")?;
        if info.config.metadata.get("esgf_topic").map(String::as_str) == Some(topic) {
            return Ok(info.config);
        }
    }
    bail!("no stream of topic {topic} found")
}

/// Moves the leadership of `stream` to the server `node` (stepping the leader down until it lands there), so
/// every R3 stream measured is led by the node the clients talk to.
async fn lead_on(js: &jetstream::Context, stream: &str, node: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leader = js
            .get_stream(stream)
            .await
            .with_context(|| format!("stream {stream}"))?
            .info()
            .await
            .with_context(|| format!("stream info of {stream}"))?
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone());
        if leader.as_deref() == Some(node) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "stream {stream} is still led by {leader:?}, not {node}");
        if leader.is_some() {
            let body = serde_json::json!({ "placement": { "preferred": node } }).to_string();
            let _ = js
                .client()
                .request(format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"), Bytes::from(body))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operation "write the `i`-th batch of `batch` pool events" for `sink` as `target` does it.
fn sink_op(
    sink: &Sink,
    target: Target,
    pool: &Arc<EventPool>,
    batch: usize,
) -> impl Fn(u64) -> super::OpFuture + Send + Sync + 'static {
    let pool = Arc::clone(pool);
    let sink = match sink {
        Sink::Topic { store, name } => SinkRef::Topic(Arc::clone(store), Arc::clone(name)),
        Sink::Raw { js, client, subject, .. } => {
            SinkRef::Raw(js.clone(), client.clone(), Arc::clone(subject))
        }
    };
    let pipelined = matches!(target, Target::RawR1Pipelined | Target::RawR3Pipelined);
    move |i| {
        let start = i as usize * batch;
        match &sink {
            SinkRef::Topic(store, name) => {
                let (records, bytes) = pool.records(start, batch);
                let (store, name) = (Arc::clone(store), Arc::clone(name));
                Box::pin(async move {
                    store.append(&name, 0, records).await?;
                    Ok((batch as u64, bytes))
                })
            }
            SinkRef::Raw(js, client, subject) => {
                let payloads: Vec<Bytes> = (start..start + batch).map(|j| pool.event(j).clone()).collect();
                let bytes = payloads.iter().map(|p| p.len() as u64).sum();
                let (js, client, subject) = (js.clone(), client.clone(), Arc::clone(subject));
                Box::pin(async move {
                    if batch == 1 {
                        let payload = payloads.into_iter().next().context("empty batch")?;
                        js.publish(subject.to_string(), payload).await?.await?;
                    } else if pipelined {
                        let mut acks = Vec::with_capacity(payloads.len());
                        for payload in payloads {
                            acks.push(js.publish(subject.to_string(), payload).await?);
                        }
                        for ack in acks {
                            ack.await?;
                        }
                    } else {
                        raw_atomic_batch(&client, &subject, payloads).await?;
                    }
                    Ok((batch as u64, bytes))
                })
            }
        }
    }
}

enum SinkRef {
    Topic(Arc<dyn LogStore>, Arc<str>),
    Raw(Box<jetstream::Context>, async_nats::Client, Arc<str>),
}

/// One atomic batch (ADR-50) from a plain client: what the backend sends, minus its own headers and checks.
async fn raw_atomic_batch(
    client: &async_nats::Client,
    subject: &str,
    payloads: Vec<Bytes>,
) -> anyhow::Result<()> {
    let n = payloads.len();
    let id = format!("b{:016x}", fastrand::u64(..));
    for (i, payload) in payloads.into_iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if i + 1 < n {
            client.publish_with_headers(subject.to_owned(), headers, payload).await?;
        } else {
            headers.insert("Nats-Batch-Commit", "1");
            let reply = client.request_with_headers(subject.to_owned(), headers, payload).await?;
            let ack: serde_json::Value = serde_json::from_slice(&reply.payload)?;
            ensure!(ack.get("error").is_none(), "atomic batch refused: {ack}");
        }
    }
    Ok(())
}

/// Each target in `targets` writing `batch`-event appends from `concurrency` producers; targets take turns in
/// [`ROUNDS`] rounds, in alternating order.
async fn measure_store_cell(
    setup: &Setup,
    pool: &Arc<EventPool>,
    plan: Plan,
    targets: &[Target],
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Row>> {
    let cell = format!("b{batch}c{concurrency}");
    let mut sinks = Vec::new();
    for &target in targets {
        sinks.push(make_sink(setup, target, &cell).await?);
    }
    let budget = Budget {
        max_ops: (plan.events_per_cell / batch as u64).div_ceil(u64::from(ROUNDS)).max(1),
        duration: plan.cell_duration / ROUNDS,
    };
    let mut runs: Vec<Run> = targets.iter().map(|_| Run::default()).collect();
    // Producers continue through the pool where the previous round stopped, so rounds do not repeat events.
    for round in 0..ROUNDS {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let run = drive(concurrency, budget, sink_op(&sinks[i], targets[i], pool, batch)).await?;
            runs[i].absorb(run);
        }
    }
    for sink in &sinks {
        sink.remove().await?;
    }
    Ok(targets
        .iter()
        .zip(runs)
        .map(|(&target, run)| Row::new("store", target, batch, concurrency, run))
        .collect())
}

/// The HTTP API (in process, same handlers as `serve`) on each backend, against raw JetStream with the same
/// batch and concurrency.
async fn measure_http_cell(
    setup: &Setup,
    pool: &Arc<EventPool>,
    plan: Plan,
    batch: usize,
    clients: usize,
    catalogue: bool,
) -> anyhow::Result<Vec<Row>> {
    let level = if catalogue { "http-c" } else { "http" };
    let cell = format!("{level}.b{batch}c{clients}");
    let http_targets = [Target::Embedded, Target::ServiceR1, Target::ServiceR3];
    let raw_targets = [Target::RawR1, Target::RawR3];
    let mut servers = Vec::new();
    let mut sinks = Vec::new();
    for target in http_targets {
        let sink = make_sink(setup, target, &cell).await?;
        let Sink::Topic { store, name } = &sink else { bail!("an HTTP target needs a topic") };
        let catalogue = if catalogue {
            let meta = Arc::clone(setup.meta_for(target));
            let opened = esgf_events_catalogue::Catalogue::open(meta, Arc::new(SystemClock), None)
                .await
                .context("opening the topic catalogue")?;
            Some(Arc::new(opened))
        } else {
            None
        };
        let server = InProcessServer::start_with_catalogue(Arc::clone(store), None, catalogue).await?;
        let url = format!("{}/v1/topics/{name}/events", server.base_url);
        servers.push((server, url));
        sinks.push(sink);
    }
    let mut raw_sinks = Vec::new();
    for target in raw_targets {
        raw_sinks.push(make_sink(setup, target, &cell).await?);
    }
    let bodies: Arc<Vec<(Bytes, u64)>> = Arc::new(if batch == 1 {
        pool.events.iter().map(|e| (e.clone(), e.len() as u64)).collect()
    } else {
        (0..pool.events.len().div_ceil(batch)).map(|b| pool.json_array(b * batch, batch)).collect()
    });
    // With the catalogue, every event needs an event id of its own, or all but the first pass over the pool
    // would be answered as duplicates without being appended.
    let unique = catalogue.then(|| Arc::new(UniqueIds::new(pool)));
    let budget = Budget {
        max_ops: (plan.events_per_cell / batch as u64).div_ceil(u64::from(ROUNDS)).max(1),
        duration: plan.cell_duration / ROUNDS,
    };
    let mut http_runs: Vec<Run> = http_targets.iter().map(|_| Run::default()).collect();
    let mut raw_runs: Vec<Run> = raw_targets.iter().map(|_| Run::default()).collect();
    for round in 0..ROUNDS {
        let mut order: Vec<usize> = (0..http_targets.len() + raw_targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            if let Some((server, url)) = servers.get(i) {
                let run = match &unique {
                    Some(unique) => {
                        unique_publish_load(&server.client, url.clone(), unique, batch, clients, budget)
                            .await?
                    }
                    None => {
                        publish_load(&server.client, url.clone(), &bodies, batch, clients, budget).await?
                    }
                };
                http_runs[i].absorb(run);
            } else {
                let j = i - servers.len();
                let run = drive(clients, budget, sink_op(&raw_sinks[j], raw_targets[j], pool, batch)).await?;
                raw_runs[j].absorb(run);
            }
        }
    }
    for (server, _) in servers {
        server.stop().await?;
    }
    for sink in sinks.iter().chain(&raw_sinks) {
        sink.remove().await?;
    }
    let mut rows: Vec<Row> = http_targets
        .iter()
        .zip(http_runs)
        .map(|(&target, run)| Row::new(level, target, batch, clients, run))
        .collect();
    // The raw rows of an HTTP cell are the denominators of its ratios (measured in the same rounds).
    rows.extend(
        raw_targets.iter().zip(raw_runs).map(|(&target, run)| Row::new(level, target, batch, clients, run)),
    );
    Ok(rows)
}

/// The pool's events with a fresh `metadata.event_id` each time one is used.
struct UniqueIds {
    /// Each event split around its event id: (before, after).
    parts: Vec<(Bytes, Bytes)>,
    /// Distinguishes this run's ids from any earlier run's.
    nonce: u32,
    next: AtomicU64,
}

impl UniqueIds {
    fn new(pool: &EventPool) -> Self {
        const FIELD: &[u8] = b"\"event_id\":\"";
        let parts = pool
            .events
            .iter()
            .map(|event| {
                let start = event.windows(FIELD.len()).position(|w| w == FIELD).map(|p| p + FIELD.len());
                let end = start.and_then(|s| event[s..].iter().position(|&b| b == b'"').map(|e| s + e));
                match (start, end) {
                    (Some(s), Some(e)) => (event.slice(..s), event.slice(e..)),
                    // No id: the catalogue does not dedupe it, and it is used as is.
                    _ => (event.clone(), Bytes::new()),
                }
            })
            .collect();
        UniqueIds { parts, nonce: fastrand::u32(..), next: AtomicU64::new(0) }
    }

    /// A body of `batch` events (a bare object when 1), each with a new id, and its event bytes.
    fn body(&self, batch: usize) -> (Bytes, u64) {
        let first = self.next.fetch_add(batch as u64, Ordering::Relaxed);
        let mut body = Vec::with_capacity(batch * 2200 + 2);
        if batch > 1 {
            body.push(b'[');
        }
        let mut bytes = 0;
        for n in first..first + batch as u64 {
            if n > first {
                body.push(b',');
            }
            let (before, after) = &self.parts[n as usize % self.parts.len()];
            let start = body.len();
            body.extend_from_slice(before);
            if !after.is_empty() {
                body.extend_from_slice(format!("{:08x}-0000-4000-8000-{n:012x}", self.nonce).as_bytes());
                body.extend_from_slice(after);
            }
            bytes += (body.len() - start) as u64;
        }
        if batch > 1 {
            body.push(b']');
        }
        (Bytes::from(body), bytes)
    }
}

/// [`publish_load`] with bodies whose events all have ids never published before.
async fn unique_publish_load(
    client: &reqwest::Client,
    url: String,
    unique: &Arc<UniqueIds>,
    batch: usize,
    clients: usize,
    budget: Budget,
) -> anyhow::Result<Run> {
    let (client, unique) = (client.clone(), Arc::clone(unique));
    drive(clients, budget, move |_| {
        let (body, bytes) = unique.body(batch);
        let request =
            client.post(&url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send();
        async move {
            let response = request.await?;
            let status = response.status();
            let text = response.bytes().await?;
            ensure!(
                status == reqwest::StatusCode::CREATED,
                "publish answered {status}: {}",
                String::from_utf8_lossy(&text)
            );
            ensure!(
                !text.windows(16).any(|w| w == b"\"duplicate\":true"),
                "an event was taken for a duplicate: the bench's ids are not unique"
            );
            Ok((batch as u64, bytes))
        }
    })
    .await
}

/// service/raw for R1 and R3, and embedded/service, per cell.
fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut out = Vec::new();
    let find = |level: &str, target: Target, batch: usize, concurrency: usize| {
        rows.iter().find(|r| {
            r.level == level && r.target == target && r.batch == batch && r.concurrency == concurrency
        })
    };
    let mut cells: Vec<(&'static str, usize, usize)> =
        rows.iter().map(|r| (r.level, r.batch, r.concurrency)).collect();
    cells.dedup();
    for (level, batch, concurrency) in cells {
        let pairs = [
            (Target::ServiceR1, Target::RawR1, true),
            (Target::ServiceR3, Target::RawR3, true),
            (Target::Embedded, Target::ServiceR1, false),
            (Target::Embedded, Target::ServiceR3, false),
        ];
        for (num, den, service_vs_raw) in pairs {
            let (Some(a), Some(b)) =
                (find(level, num, batch, concurrency), find(level, den, batch, concurrency))
            else {
                continue;
            };
            let throughput_ratio = a.events_per_s / b.events_per_s.max(1e-9);
            let lat = |pick: fn(&Latency) -> f64| match (a.latency, b.latency) {
                (Some(x), Some(y)) => Some(pick(&x) / pick(&y).max(1e-9)),
                _ => None,
            };
            out.push(Ratio {
                level,
                batch,
                concurrency,
                name: format!("{} / {}", a.target.label(), b.target.label()),
                throughput_ratio,
                p50_ratio: lat(|l| l.p50_ms),
                p99_ratio: lat(|l| l.p99_ms),
                within_target: service_vs_raw.then_some(throughput_ratio >= 1.0 - MAX_SERVICE_OVERHEAD),
            });
        }
    }
    out
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nESGF Event Service: storage backends ({} run, {} rounds alternating): {} CPUs, {}",
        report.mode, report.rounds, report.cpus, report.nats_server
    );
    let _ = writeln!(
        out,
        "events: {} (mean {:.0} B); embedded store and NATS stores on {}; NATS: shipped config (sync_interval: always)",
        report.events_source, report.mean_event_bytes, report.filesystem
    );
    let _ = writeln!(
        out,
        "levels: store = LogStore::append or the raw client; http = POST /v1/topics/{{t}}/events in process; \
         http-c = the same with the topic catalogue as `serve` has it (event-id dedupe in the state store)"
    );
    let _ = writeln!(
        out,
        "\n{:<6} {:>5} {:>4}  {:<32} {:>9} {:>11} {:>9} {:>9}",
        "level", "batch", "conc", "target", "events", "events/s", "p50 ms", "p99 ms"
    );
    for r in &report.rows {
        let (p50, p99) = r
            .latency
            .map_or(("-".into(), "-".into()), |l| (format!("{:.2}", l.p50_ms), format!("{:.2}", l.p99_ms)));
        let _ = writeln!(
            out,
            "{:<6} {:>5} {:>4}  {:<32} {:>9} {:>11} {:>9} {:>9}",
            r.level,
            r.batch,
            r.concurrency,
            if r.level != "store"
                && matches!(r.target, Target::Embedded | Target::ServiceR1 | Target::ServiceR3)
            {
                format!("HTTP on {}", r.target.label())
            } else {
                r.target.label().to_owned()
            },
            r.events,
            thousands(r.events_per_s),
            p50,
            p99
        );
    }
    let _ = writeln!(out, "\nratios (throughput; latency p50, p99; service/raw target: >= 0.75 throughput)");
    for r in &report.ratios {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let verdict = match r.within_target {
            Some(true) => "  ok",
            Some(false) => "  OVER 25 % overhead",
            None => "",
        };
        let _ = writeln!(
            out,
            "{:<6} {:>5} {:>4}  {:<58} {:>6.2}x  p50 {:>5}  p99 {:>5}{verdict}",
            r.level,
            r.batch,
            r.concurrency,
            r.name,
            r.throughput_ratio,
            f(r.p50_ratio),
            f(r.p99_ratio)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(level: &'static str, target: Target, events_per_s: f64, p99_ms: f64) -> Row {
        Row {
            level,
            target,
            batch: 1,
            concurrency: 1,
            events: 1,
            seconds: 1.0,
            events_per_s,
            latency: Some(Latency { samples: 1, p50_ms: p99_ms, p99_ms, max_ms: p99_ms }),
        }
    }

    #[test]
    fn service_over_raw_is_judged_against_the_25_percent_budget() {
        let rows = vec![
            row("store", Target::ServiceR1, 800.0, 2.0),
            row("store", Target::RawR1, 1000.0, 1.0),
            row("store", Target::ServiceR3, 700.0, 2.0),
            row("store", Target::RawR3, 1000.0, 1.0),
            row("store", Target::Embedded, 1600.0, 1.0),
        ];
        let ratios = ratios(&rows);
        let r1 = ratios.iter().find(|r| r.name.contains("R1 /")).unwrap();
        assert_eq!(r1.within_target, Some(true));
        assert!((r1.throughput_ratio - 0.8).abs() < 1e-9);
        assert_eq!(r1.p99_ratio, Some(2.0));
        let r3 = ratios.iter().find(|r| r.name.contains("R3 /")).unwrap();
        assert_eq!(r3.within_target, Some(false));
        let embedded =
            ratios.iter().find(|r| r.name.starts_with("embedded") && r.name.ends_with("R1")).unwrap();
        assert!((embedded.throughput_ratio - 2.0).abs() < 1e-9);
        assert_eq!(embedded.within_target, None);
    }
}
