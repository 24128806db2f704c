//! `esgf-events bench`: what the service achieves on this machine, against what the disk itself achieves.
//!
//! Absolute figures mean little across machines, so every run first measures a plain-file baseline on the same
//! filesystem (sequential write bandwidth, fsync latency) and reports the service's figures as ratios to it.
//! Then it measures, with ~2 KB ESGF publication events built from real CMIP6 dataset ids:
//! - durable appends through the embedded engine (batch size × concurrent producers);
//! - durable publishes through the real HTTP server, in process, over keep-alive connections, without access
//!   control and with it (a registered producer's bearer token, checked and rate-limited on every request,
//!   with a limit far above the load), to show what access control costs;
//! - sequential replay of a large topic through the engine and through HTTP;
//! - server-sent events: publish→delivery latency to 1, 100 and 1000 consumers, memory per idle stream;
//! - webhook delivery throughput to a local receiver, for 1 and 8 subscriptions;
//! - the time a `serve` child process needs to become ready again after `kill -9` with that large log.
//!
//! `--suite backends` (module `backends`) instead compares the storage backends: the same durable workload through
//! the embedded engine, the NATS JetStream backend (1 and 3 replicas) and raw JetStream on the same servers.
//!
//! Events are generated once into a pool of a few thousand and reused, so memory stays bounded whatever volume
//! is written. The load generator shares the machine's cores with the server it measures: figures are a floor.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use esgf_events_auth::{AuthMethod, Identity, RateSpec, Registration, Role};
use esgf_events_engine::{
    Clock, EmbeddedConfig, EmbeddedStore, LogStore, NewRecord, ReadLimits, Retention, SystemClock,
    TopicConfig,
};
use esgf_events_http::HttpConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

mod backends;
mod sse;
mod webhooks;

/// Flags of `esgf-events bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Directory on the filesystem to measure; a fresh subdirectory is created in it and removed afterwards
    /// [default: the current directory]. Avoid tmpfs: fsync is free there.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Small volumes (the whole run takes ~20 s): a smoke test, not a measurement.
    #[arg(long)]
    pub quick: bool,
    /// Gigabytes (10^9 bytes) of events to write for the replay and restart measurements [default: 1.0, or 0.05
    /// with --quick].
    #[arg(long, value_name = "GB")]
    pub replay_gb: Option<f64>,
    /// Directory holding `cmip6_instance_ids.txt` [default: ../shared/fixtures/esgf if it exists; otherwise
    /// synthetic ids].
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// What to measure: `service` (the engine, HTTP, replay, SSE, webhooks, restart against the disk baseline)
    /// or `backends` (the embedded engine, the NATS JetStream backend with 1 and 3 replicas and raw JetStream
    /// publishing on the same servers; needs nats-server >= 2.12 on PATH or in $NATS_SERVER_BIN).
    #[arg(long, value_enum, default_value = "service")]
    pub suite: Suite,
    /// `--suite backends`: events each target writes per cell [default: 20000, or 2000 with --quick].
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,
    /// `--suite backends`: which cells to measure: `store` (appends through the storage interface against raw
    /// JetStream), `http` (publishes through the HTTP API against raw JetStream), `http-catalogue` (the same
    /// with the topic catalogue's event-id dedupe in the state store, as `serve` runs it).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "store,http,http-catalogue")]
    pub levels: Vec<BackendLevel>,
}

/// The cells of `bench --suite backends`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendLevel {
    Store,
    Http,
    /// HTTP with the topic catalogue (validation policy, idempotent publish by event id) as `serve` runs it.
    HttpCatalogue,
}

/// The measurement suites of `esgf-events bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    Service,
    Backends,
}

/// Runs every measurement, prints the table to stdout (progress goes to stderr) and writes `--json`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.suite == Suite::Backends {
        return backends::run(args).await;
    }
    let plan = Plan::from_args(&args)?;
    let (ids, id_source) = load_dataset_ids(args.fixtures.as_deref())?;
    let pool = Arc::new(EventPool::build(&ids));
    let parent = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().context("finding the current directory")?,
    };
    let work = WorkDir::create(&parent)?;
    let filesystem = filesystem_type(work.path()).unwrap_or_else(|| "unknown".to_owned());
    if matches!(filesystem.as_str(), "tmpfs" | "ramfs") {
        eprintln!(
            "WARNING: {} is on {filesystem}: fsync costs nothing there, so these figures say nothing about a disk",
            work.path().display()
        );
    }
    let mut report = Report {
        mode: if plan.quick { "quick" } else { "full" },
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        work_dir: work.path().display().to_string(),
        filesystem,
        events: pool.stats(&id_source),
        baseline: None,
        baseline_after: None,
        engine_append: Vec::new(),
        http_publish: Vec::new(),
        replay: Vec::new(),
        validation: Vec::new(),
        restart: None,
        sse: None,
        webhooks: None,
        targets: Vec::new(),
    };
    eprintln!(
        "bench ({}): {} distinct events, mean {:.0} B, in {} ({})",
        report.mode, report.events.distinct, report.events.mean_bytes, report.work_dir, report.filesystem
    );

    eprintln!("baseline: plain-file sequential write and fsync latency ...");
    let baseline = measure_baseline(work.path().to_path_buf(), Arc::clone(&pool), plan.clone()).await?;
    report.baseline = Some(baseline.clone());

    let data_dir = work.path().join("data");
    let store = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(&data_dir), Arc::new(SystemClock) as Arc<dyn Clock>)
            .context("opening the embedded store")?,
    );
    let log: Arc<dyn LogStore> = store.clone();

    for batch in [1, 100, 1000] {
        for producers in [1, 8, 64] {
            eprintln!("engine append: batch {batch} x {producers} producers ...");
            let row = measure_engine_append(&log, &pool, &plan, &baseline, batch, producers).await?;
            report.engine_append.push(row);
        }
    }

    let server = InProcessServer::start(Arc::clone(&log), None).await?;
    let (auth, producer_token) = open_bench_auth(work.path()).await?;
    let auth_server = InProcessServer::start(Arc::clone(&log), Some((auth, producer_token))).await?;
    for (batch, clients) in HTTP_CELLS {
        eprintln!("HTTP publish: batch {batch} x {clients} clients, without and with access control ...");
        let pair =
            measure_http_publish_pair(&log, &server, &auth_server, &pool, &plan, &baseline, batch, clients)
                .await?;
        report.http_publish.extend(pair);
    }
    auth_server.stop().await?;

    report.sse = Some(sse::measure_sse(&log, &server, &pool, &plan).await);
    report.webhooks = Some(webhooks::measure_webhooks(&log, work.path(), &pool, &plan).await);

    eprintln!("replay: filling a topic with {:.2} GB ...", plan.replay_bytes as f64 / 1e9);
    report.replay.push(fill_replay_topic(&log, &pool, &plan, &baseline).await?);
    eprintln!("replay: reading it through the engine ...");
    report.replay.push(measure_engine_replay(&log, &baseline).await?);
    eprintln!("replay: reading it through HTTP ...");
    report.replay.push(measure_http_replay(&server, &plan, &baseline).await?);
    eprintln!("validation: every policy level over the event pool, one core ...");
    report.validation = measure_validation(&pool, &plan, &baseline).await?;
    // Relative to the fastest unvalidated HTTP publish: the share of that path's per-event time validation adds.
    let publish_rate =
        report.http_publish.iter().filter(|r| !r.access_control).map(|r| r.events_per_s).fold(0.0, f64::max);
    if publish_rate > 0.0 {
        for row in &mut report.validation {
            let share = 100.0 * publish_rate / row.events_per_s.max(1e-9);
            row.name.push_str(&format!(", {share:.1}% of publish"));
        }
    }
    eprintln!("replica: applying a generated stream into a SQLite index ...");
    report.replay.push(measure_replica_apply(work.path(), &pool, &baseline).await?);

    server.stop().await?;
    log.shutdown().await.context("shutting the embedded store down")?;
    drop(log);
    // The child server must be able to take the data directory's lock, which the store holds until dropped.
    ensure!(Arc::strong_count(&store) == 1, "the in-process store is still in use after shutdown");
    drop(store);

    eprintln!("restart: serve child process, kill -9, restart ...");
    report.restart = Some(match measure_restart(&data_dir, &pool, plan.replay_bytes).await {
        Ok(restart) => restart,
        Err(err) => Restart::failed(plan.replay_bytes, &err),
    });

    // Other load on the machine moves the disk's figures; a second baseline shows how much they moved.
    eprintln!("baseline again, after the run ...");
    report.baseline_after =
        Some(measure_baseline(work.path().to_path_buf(), Arc::clone(&pool), plan.clone()).await?);

    report.targets = evaluate_targets(&report);
    print!("{}", render(&report));
    std::io::stdout().flush().context("writing to stdout")?;
    if let Some(path) = &args.json {
        let text = serde_json::to_vec_pretty(&report).context("encoding the results")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Plan: how much each measurement does.

const MB: f64 = 1e6;
const MIB: u64 = 1 << 20;

/// Volumes and durations of one run; `--quick` shrinks them all.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    /// Event bytes one engine-append cell writes at most; also the baseline's sequential-write volume.
    append_volume: u64,
    /// Longest an engine-append or HTTP-publish cell runs.
    cell_duration: Duration,
    /// Samples of the fsync-latency baseline.
    fsync_samples: usize,
    /// Event bytes written to the replay topic.
    replay_bytes: u64,
    /// Longest the HTTP replay reads (it is much slower than the engine's).
    http_replay_duration: Duration,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
        let replay_gb = args.replay_gb.unwrap_or(if args.quick { 0.05 } else { 1.0 });
        ensure!(
            replay_gb.is_finite() && replay_gb > 0.0 && replay_gb <= 1000.0,
            "--replay-gb must be more than 0 and at most 1000, not {replay_gb}"
        );
        let replay_bytes = (replay_gb * 1e9) as u64;
        Ok(if args.quick {
            Plan {
                quick: true,
                append_volume: 64 * MIB,
                cell_duration: Duration::from_secs(1),
                fsync_samples: 500,
                replay_bytes,
                http_replay_duration: Duration::from_secs(1),
            }
        } else {
            Plan {
                quick: false,
                append_volume: 512 * MIB,
                cell_duration: Duration::from_millis(2500),
                fsync_samples: 2000,
                replay_bytes,
                http_replay_duration: Duration::from_secs(10),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Events: ~2 KB ESGF publication events around real CMIP6 dataset ids.

const IDS_FILE: &str = "cmip6_instance_ids.txt";
const DEFAULT_FIXTURES: &str = "../shared/fixtures/esgf";

/// The dataset ids to build events around, and where they came from.
fn load_dataset_ids(fixtures: Option<&Path>) -> anyhow::Result<(Vec<DatasetId>, String)> {
    let file = match fixtures {
        Some(dir) => dir.join(IDS_FILE),
        None => {
            let file = Path::new(DEFAULT_FIXTURES).join(IDS_FILE);
            if !file.is_file() {
                return Ok((synthetic_dataset_ids(4000), "synthetic CMIP6 ids".to_owned()));
            }
            file
        }
    };
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let ids: Vec<DatasetId> = text.lines().filter_map(|line| DatasetId::parse(line.trim())).collect();
    ensure!(!ids.is_empty(), "{} holds no CMIP6 dataset id", file.display());
    Ok((ids, file.display().to_string()))
}

/// Stand-ins for when the fixtures are not around: a few real ids with varied ensemble members.
fn synthetic_dataset_ids(count: usize) -> Vec<DatasetId> {
    const TEMPLATES: [&str; 4] = [
        "CMIP6.CMIP.NCAR.CESM2.historical.{m}.Amon.tas.gn.v20190308",
        "CMIP6.ScenarioMIP.IPSL.IPSL-CM6A-LR.ssp119.{m}.CFmon.clcalipso.gr.v20191122",
        "CMIP6.DCPP.MOHC.HadGEM3-GC31-MM.dcppA-hindcast.s1960-{m}.day.huss.gn.v20200417",
        "CMIP6.C4MIP.NCC.NorESM2-LM.esm-ssp585.{m}.SImon.siitdconc.gn.v20200218",
    ];
    (0..count)
        .filter_map(|i| {
            let member = format!("r{}i1p1f1", i / TEMPLATES.len() + 1);
            DatasetId::parse(&TEMPLATES[i % TEMPLATES.len()].replace("{m}", &member))
        })
        .collect()
}

/// A CMIP6 dataset instance id and its facets:
/// `CMIP6.<activity>.<institution>.<source>.<experiment>.<member>.<table>.<variable>.<grid>.v<version>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DatasetId {
    id: String,
    activity: String,
    institution: String,
    source: String,
    experiment: String,
    member: String,
    table: String,
    variable: String,
    grid: String,
    /// Without its `v`: `20200218`.
    version: String,
}

impl DatasetId {
    fn parse(id: &str) -> Option<Self> {
        let parts: Vec<&str> = id.split('.').collect();
        let [project, activity, institution, source, experiment, member, table, variable, grid, version] =
            parts.as_slice()
        else {
            return None;
        };
        let version = version.strip_prefix('v')?;
        if *project != "CMIP6" || parts.iter().any(|p| p.is_empty()) || version.is_empty() {
            return None;
        }
        Some(DatasetId {
            id: id.to_owned(),
            activity: (*activity).to_owned(),
            institution: (*institution).to_owned(),
            source: (*source).to_owned(),
            experiment: (*experiment).to_owned(),
            member: (*member).to_owned(),
            table: (*table).to_owned(),
            variable: (*variable).to_owned(),
            grid: (*grid).to_owned(),
            version: version.to_owned(),
        })
    }

    /// The id without its version: the dataset's title and `base_id`.
    fn base_id(&self) -> &str {
        self.id.rsplit_once('.').map_or(self.id.as_str(), |(base, _)| base)
    }

    /// The output frequency the MIP table implies (close enough for realistic events).
    fn frequency(&self) -> &'static str {
        let table = self.table.as_str();
        if table.contains("subhr") {
            "subhr"
        } else if table.contains("3hr") {
            "3hr"
        } else if table.contains("6hr") {
            "6hr"
        } else if table.ends_with("hr") {
            "1hr"
        } else if table.contains("mon") {
            "mon"
        } else if table.contains("day") {
            "day"
        } else if table.contains("yr") {
            "yr"
        } else if table.contains("dec") {
            "dec"
        } else if table.contains("fx") {
            "fx"
        } else {
            "mon"
        }
    }

    /// The name of one netCDF file of the dataset, covering `years` from `start_year`.
    fn file_name(&self, start_year: u32, years: u32) -> String {
        let end_year = start_year + years.max(1) - 1;
        let range = match self.frequency() {
            "fx" => String::new(),
            "mon" | "yr" | "dec" => format!("_{start_year}01-{end_year}12"),
            _ => format!("_{start_year}0101-{end_year}1231"),
        };
        let (variable, table, source) = (&self.variable, &self.table, &self.source);
        let (experiment, member, grid) = (&self.experiment, &self.member, &self.grid);
        format!("{variable}_{table}_{source}_{experiment}_{member}_{grid}{range}.nc")
    }
}

/// A random RFC 4122 version-4 UUID, as the publisher writes them.
fn uuid(rng: &mut fastrand::Rng) -> String {
    let (a, b, c) = (rng.u32(..), rng.u16(..), rng.u16(..0x1000));
    let (d, e) = (rng.u16(..0x4000) | 0x8000, rng.u64(..1 << 48));
    format!("{a:08x}-{b:04x}-4{c:03x}-{d:04x}-{e:012x}")
}

/// A sha2-256 multihash in hex, the form `file:checksum` takes.
fn checksum(rng: &mut fastrand::Rng) -> String {
    let mut text = String::from("1220");
    for _ in 0..4 {
        text.push_str(&format!("{:016x}", rng.u64(..)));
    }
    text
}

/// `seconds` after 2026-11-27T10:00:00Z, as the publisher formats times (microseconds, no zone).
fn event_time(seconds: u64, micros: u32) -> String {
    const BASE: i64 = 1_795_773_600;
    let at = chrono::DateTime::from_timestamp(BASE + seconds as i64, micros * 1000).unwrap_or_default();
    at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// A STAC POST publication event for `ds`, shaped like the ones esgf_publisher 5.2.3 sends.
fn publication_event(ds: &DatasetId, seq: u64, rng: &mut fastrand::Rng) -> serde_json::Value {
    let path = ds.id.replace('.', "/");
    let file = ds.file_name(rng.u32(1850..2015), rng.u32(1..100));
    let node = ["esgf-data.nersc.gov", "esgf-node.ornl.gov", "esgf.ceda.ac.uk"][rng.usize(..3)];
    let created = event_time(seq, 0).split('.').next().map(|t| format!("{t}Z")).unwrap_or_default();
    let item_url = format!("https://api.stac.esgf-west.org/collections/CMIP6/items/{}", ds.id);
    json!({
        "metadata": {
            "event_id": uuid(rng),
            "request_id": uuid(rng),
            "auth": {
                "auth_policy_id": "ESGF-Publish-00012",
                "requester_data": {
                    "client_id": uuid(rng),
                    "iss": "https://auth.globus.org",
                    "sub": uuid(rng),
                },
            },
            "publisher": { "package": "esgf_publisher", "version": "5.2.3" },
            "time": event_time(seq, rng.u32(..1_000_000)),
            "schema_version": "1.0.0",
        },
        "data": {
            "type": "STAC",
            "version": "1.0.0",
            "payload": {
                "method": "POST",
                "collection_id": "CMIP6",
                "item": {
                    "type": "Feature",
                    "stac_version": "1.1.0",
                    "stac_extensions": ["https://stac-extensions.github.io/cmip6/v3.0.1/schema.json"],
                    "id": ds.id,
                    "collection": "CMIP6",
                    "properties": {
                        "created": created,
                        "version": ds.version,
                        "retracted": false,
                        "latest": true,
                        "access": ["HTTPServer", "Globus"],
                        "title": ds.base_id(),
                        "cmip6:activity_id": [ds.activity],
                        "cmip6:institution_id": ds.institution,
                        "cmip6:source_id": ds.source,
                        "cmip6:experiment_id": ds.experiment,
                        "cmip6:member_id": ds.member,
                        "cmip6:table_id": ds.table,
                        "cmip6:variable_id": ds.variable,
                        "cmip6:grid_label": ds.grid,
                        "cmip6:frequency": ds.frequency(),
                        "cmip6:pid": format!("hdl:21.14100/{}", uuid(rng)),
                    },
                    "assets": {
                        file.clone(): {
                            "href": format!("https://{node}/thredds/fileServer/css03_data/{path}/{file}"),
                            "description": "HTTPServer Link",
                            "type": "application/netcdf",
                            "roles": ["data"],
                            "alternate:name": node,
                            "file:size": rng.u64(1_000_000..5_000_000_000),
                            "file:checksum": checksum(rng),
                            "cmip6:tracking_id": format!("hdl:21.14100/{}", uuid(rng)),
                        },
                    },
                    "links": [
                        { "rel": "self", "type": "application/geo+json", "href": item_url },
                    ],
                },
            },
        },
    })
}

/// Pre-built events (serialised JSON) and their keys, reused round-robin so any volume costs the same memory.
struct EventPool {
    events: Vec<Bytes>,
    /// The item id of each event: the key the HTTP API would derive.
    keys: Vec<Bytes>,
    mean_bytes: f64,
}

impl EventPool {
    fn build(ids: &[DatasetId]) -> Self {
        // A fixed seed keeps runs comparable.
        let mut rng = fastrand::Rng::with_seed(0x00E5_6F00);
        let mut events = Vec::with_capacity(ids.len());
        let mut keys = Vec::with_capacity(ids.len());
        for (seq, ds) in ids.iter().enumerate() {
            let event = publication_event(ds, seq as u64, &mut rng);
            events.push(Bytes::from(event.to_string()));
            keys.push(Bytes::from(ds.id.clone()));
        }
        let total: usize = events.iter().map(Bytes::len).sum();
        let mean_bytes = total as f64 / events.len().max(1) as f64;
        EventPool { events, keys, mean_bytes }
    }

    fn event(&self, i: usize) -> &Bytes {
        &self.events[i % self.events.len()]
    }

    /// `n` records starting at pool position `start` (wrapping), and their total value bytes.
    fn records(&self, start: usize, n: usize) -> (Vec<NewRecord>, u64) {
        let mut bytes = 0;
        let records = (start..start + n)
            .map(|i| {
                let value = self.event(i).clone();
                bytes += value.len() as u64;
                NewRecord {
                    timestamp_ms: None,
                    key: Some(self.keys[i % self.keys.len()].clone()),
                    value,
                    headers: Vec::new(),
                }
            })
            .collect();
        (records, bytes)
    }

    /// A JSON array of `n` events starting at `start`: one HTTP batch body, and its event bytes.
    fn json_array(&self, start: usize, n: usize) -> (Bytes, u64) {
        let mut body = Vec::with_capacity(n * (self.mean_bytes as usize + 1) + 2);
        let mut bytes = 0;
        body.push(b'[');
        for i in start..start + n {
            if i > start {
                body.push(b',');
            }
            body.extend_from_slice(self.event(i));
            bytes += self.event(i).len() as u64;
        }
        body.push(b']');
        (Bytes::from(body), bytes)
    }

    /// How many operations of `events_per_op` events make up `volume` event bytes (at least one).
    fn ops_for_volume(&self, volume: u64, events_per_op: usize) -> u64 {
        ((volume as f64 / (self.mean_bytes * events_per_op as f64)).ceil() as u64).max(1)
    }

    fn stats(&self, source: &str) -> EventStats {
        EventStats {
            source: source.to_owned(),
            distinct: self.events.len(),
            mean_bytes: self.mean_bytes,
            min_bytes: self.events.iter().map(Bytes::len).min().unwrap_or(0),
            max_bytes: self.events.iter().map(Bytes::len).max().unwrap_or(0),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Results.

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    cpus: usize,
    work_dir: String,
    filesystem: String,
    events: EventStats,
    /// The baseline that every ratio uses, measured first.
    baseline: Option<Baseline>,
    /// The same measurement at the end of the run: how much the disk's figures drifted meanwhile.
    baseline_after: Option<Baseline>,
    engine_append: Vec<Row>,
    http_publish: Vec<Row>,
    replay: Vec<Row>,
    /// ESGF event validation per policy level, one core, no I/O.
    validation: Vec<Row>,
    restart: Option<Restart>,
    /// Server-sent events: fan-out latency and the memory of idle streams.
    sse: Option<sse::SseReport>,
    /// Webhook delivery throughput.
    webhooks: Option<webhooks::WebhookReport>,
    targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
struct EventStats {
    source: String,
    distinct: usize,
    mean_bytes: f64,
    min_bytes: usize,
    max_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
struct Baseline {
    seq_write_bytes: u64,
    seq_write_seconds: f64,
    seq_write_mb_per_s: f64,
    fsync: Latency,
}

/// Percentiles of per-operation latencies (nearest rank).
#[derive(Debug, Clone, Copy, Serialize)]
struct Latency {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |p: f64| {
            let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1e3
        };
        Some(Latency { samples: samples.len(), p50_ms: at(50.0), p99_ms: at(99.0), max_ms: at(100.0) })
    }
}

/// One measured cell: throughput, latency per operation, and the figures relative to the baseline.
#[derive(Debug, Clone, Serialize)]
struct Row {
    name: String,
    /// Requests carried a bearer token, checked and rate-limited by the server.
    access_control: bool,
    /// Events per operation (append call, request, or read).
    batch: usize,
    /// Concurrent producers or clients.
    concurrency: usize,
    events: u64,
    /// Event (value) bytes moved, not counting framing or JSON wrapping.
    bytes: u64,
    seconds: f64,
    events_per_s: f64,
    mb_per_s: f64,
    latency: Option<Latency>,
    /// `mb_per_s` ÷ the baseline's sequential-write MB/s.
    mb_per_s_vs_seq_write: f64,
    /// Latency p99 ÷ the baseline's fsync p99.
    p99_vs_fsync_p99: Option<f64>,
}

impl Row {
    fn new(name: impl Into<String>, batch: usize, concurrency: usize, run: Run, baseline: &Baseline) -> Row {
        let seconds = run.elapsed.as_secs_f64().max(1e-9);
        let mb_per_s = run.bytes as f64 / MB / seconds;
        let latency = Latency::of(run.latencies);
        Row {
            name: name.into(),
            access_control: false,
            batch,
            concurrency,
            events: run.events,
            bytes: run.bytes,
            seconds,
            events_per_s: run.events as f64 / seconds,
            mb_per_s,
            latency,
            mb_per_s_vs_seq_write: mb_per_s / baseline.seq_write_mb_per_s,
            p99_vs_fsync_p99: latency.map(|l| l.p99_ms / baseline.fsync.p99_ms),
        }
    }
}

#[derive(Debug, Serialize)]
struct Restart {
    log_bytes: u64,
    /// Spawn to `/readyz` 200 after a clean shutdown of the in-process store.
    start_after_shutdown_ms: Option<f64>,
    /// Spawn to `/readyz` 200 after the previous child was SIGKILLed.
    restart_after_kill_ms: Option<f64>,
    events_published_before_kill: u64,
    /// Whether the restarted server reports the same log end as before the kill.
    acknowledged_events_kept: Option<bool>,
    error: Option<String>,
}

impl Restart {
    fn failed(log_bytes: u64, err: &anyhow::Error) -> Restart {
        Restart {
            log_bytes,
            start_after_shutdown_ms: None,
            restart_after_kill_ms: None,
            events_published_before_kill: 0,
            acknowledged_events_kept: None,
            error: Some(format!("{err:#}")),
        }
    }
}

#[derive(Debug, Serialize)]
struct Target {
    name: String,
    goal: String,
    measured: String,
    met: Option<bool>,
}

// ---------------------------------------------------------------------------------------------------------------
// Load generation: N workers share a budget of operations and a deadline.

#[derive(Debug, Clone, Copy)]
struct Budget {
    max_ops: u64,
    duration: Duration,
}

/// What a load run did. `elapsed` runs from the start until the last worker finished.
#[derive(Default)]
struct Run {
    events: u64,
    bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    /// Adds `other`, run after this one, as if both were one run.
    fn absorb(&mut self, other: Run) {
        self.events += other.events;
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }
}

/// Runs `op(0)`, `op(1)`, ... on `workers` concurrent tasks until `budget` is spent, timing each operation's
/// future (building its input, in `op` itself, is not timed). An operation returns `(events, bytes)`.
async fn drive<F, Fut>(workers: usize, budget: Budget, op: F) -> anyhow::Result<Run>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<(u64, u64)>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + budget.duration;
    let max_ops = budget.max_ops;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (op, next, failed) = (Arc::clone(&op), Arc::clone(&next), Arc::clone(&failed));
        tasks.spawn(async move {
            let mut run = Run::default();
            while !failed.load(Ordering::Relaxed) && Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_ops {
                    break;
                }
                let operation = op(i);
                let began = Instant::now();
                match operation.await {
                    Ok((events, bytes)) => {
                        run.latencies.push(began.elapsed());
                        run.events += events;
                        run.bytes += bytes;
                    }
                    Err(err) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(err);
                    }
                }
            }
            Ok(run)
        });
    }
    let mut total = Run::default();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(run) => {
                total.events += run.events;
                total.bytes += run.bytes;
                total.latencies.extend(run.latencies);
            }
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    total.elapsed = start.elapsed();
    match first_error {
        Some(err) => Err(err),
        None => Ok(total),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Baseline: what plain files achieve on the same filesystem.

async fn measure_baseline(dir: PathBuf, pool: Arc<EventPool>, plan: Plan) -> anyhow::Result<Baseline> {
    tokio::task::spawn_blocking(move || {
        let (seq_write_seconds, seq_write_mb_per_s) = sequential_write(&dir, &pool, plan.append_volume)?;
        let fsync = fsync_latency(&dir, &pool, plan.fsync_samples)?;
        Ok(Baseline { seq_write_bytes: plan.append_volume, seq_write_seconds, seq_write_mb_per_s, fsync })
    })
    .await?
}

/// Writes `volume` bytes in 1 MiB `write`s, then one fsync: `(seconds, MB/s)`.
fn sequential_write(dir: &Path, pool: &EventPool, volume: u64) -> anyhow::Result<(f64, f64)> {
    let path = dir.join("baseline-sequential.dat");
    // Event bytes rather than zeros, in case the filesystem compresses.
    let mut chunk = Vec::with_capacity(MIB as usize);
    let mut i = 0;
    while chunk.len() < MIB as usize {
        chunk.extend_from_slice(pool.event(i));
        i += 1;
    }
    chunk.truncate(MIB as usize);
    let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let started = Instant::now();
    let mut written = 0;
    while written < volume {
        let n = (volume - written).min(MIB) as usize;
        file.write_all(&chunk[..n]).with_context(|| format!("writing {}", path.display()))?;
        written += n as u64;
    }
    file.sync_all().with_context(|| format!("fsyncing {}", path.display()))?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok((seconds, volume as f64 / MB / seconds))
}

/// Appends one event (~2 KB) and fdatasyncs, `samples` times: the floor under any durable acknowledgement.
fn fsync_latency(dir: &Path, pool: &EventPool, samples: usize) -> anyhow::Result<Latency> {
    let path = dir.join("baseline-fsync.dat");
    let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let started = Instant::now();
        file.write_all(pool.event(i)).with_context(|| format!("writing {}", path.display()))?;
        file.sync_data().with_context(|| format!("fdatasyncing {}", path.display()))?;
        latencies.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Latency::of(latencies).context("no fsync samples")
}

// ---------------------------------------------------------------------------------------------------------------
// Engine: durable appends straight to the embedded store.

async fn create_topic(log: &Arc<dyn LogStore>, name: &str) -> anyhow::Result<()> {
    let config = TopicConfig { partitions: 1, retention: Retention { max_age: None, max_bytes: None } };
    log.create_topic(name, config).await.with_context(|| format!("creating topic {name}"))?;
    Ok(())
}

/// `producers` tasks appending batches of `batch` events to one partition, each append acknowledged only once
/// durable; stops after `plan.append_volume` bytes or `plan.cell_duration`.
async fn measure_engine_append(
    log: &Arc<dyn LogStore>,
    pool: &Arc<EventPool>,
    plan: &Plan,
    baseline: &Baseline,
    batch: usize,
    producers: usize,
) -> anyhow::Result<Row> {
    let topic: Arc<str> = format!("bench.append.b{batch}.p{producers}").into();
    create_topic(log, &topic).await?;
    let budget =
        Budget { max_ops: pool.ops_for_volume(plan.append_volume, batch), duration: plan.cell_duration };
    let run = drive(producers, budget, append_op(log, pool, &topic, batch)).await?;
    log.delete_topic(&topic).await.with_context(|| format!("deleting topic {topic}"))?;
    Ok(Row::new("engine append", batch, producers, run, baseline))
}

/// One load operation in flight: it yields the `(events, bytes)` it moved.
type OpFuture = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<(u64, u64)>> + Send>>;

/// The operation "append the `i`-th batch of `batch` pool events to partition 0 of `topic`".
fn append_op(
    log: &Arc<dyn LogStore>,
    pool: &Arc<EventPool>,
    topic: &Arc<str>,
    batch: usize,
) -> impl Fn(u64) -> OpFuture + Send + Sync + 'static {
    let (log, pool, topic) = (Arc::clone(log), Arc::clone(pool), Arc::clone(topic));
    move |i| {
        let (records, bytes) = pool.records(i as usize * batch, batch);
        let (log, topic) = (Arc::clone(&log), Arc::clone(&topic));
        Box::pin(async move {
            log.append(&topic, 0, records).await?;
            Ok((batch as u64, bytes))
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP: the real server, in process, on a loopback port.

struct InProcessServer {
    base_url: String,
    client: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The (batch size, concurrent clients) cells of the HTTP publish measurement.
const HTTP_CELLS: [(usize, usize); 4] = [(1, 1), (1, 64), (100, 1), (100, 64)];

/// The name of the producer the access-controlled cells publish as.
const BENCH_PRODUCER: &str = "bench-producer";

/// What one HTTP publish cell measures.
#[derive(Debug, Clone, Copy)]
struct HttpCell {
    batch: usize,
    clients: usize,
    access_control: bool,
}

impl HttpCell {
    fn topic(self) -> String {
        let kind = if self.access_control { "http-auth" } else { "http" };
        format!("bench.{kind}.b{}.c{}", self.batch, self.clients)
    }
}

/// Access control on a state store of its own in `work`, with a producer granted every access-controlled cell's
/// topic at a rate limit far above anything the bench can reach: every request pays for the checks, none is
/// refused. Returns the service and the producer's token.
async fn open_bench_auth(work: &Path) -> anyhow::Result<(Arc<esgf_events_auth::Auth>, String)> {
    let path = work.join("bench-state.redb");
    let meta = esgf_events_meta::RedbMetaStore::open(&path)
        .with_context(|| format!("opening the state store {}", path.display()))?;
    let auth = esgf_events_auth::Auth::open(Arc::new(meta), esgf_events_auth::AuthConfig::default())
        .await
        .context("starting access control")?;
    let topics = HTTP_CELLS
        .iter()
        .map(|&(batch, clients)| HttpCell { batch, clients, access_control: true }.topic())
        .collect();
    let registration = Registration {
        name: BENCH_PRODUCER.to_owned(),
        topics,
        rate: Some(RateSpec {
            events_per_second: 1_000_000_000,
            burst: 1_000_000_000,
            bytes_per_second: Some(1 << 40),
            burst_bytes: Some(1 << 40),
        }),
        contact: None,
        oidc: Vec::new(),
    };
    let operator = Identity { name: "operator".to_owned(), role: Role::Operator, method: AuthMethod::Token };
    let (_, token) = auth
        .register(Role::Producer, registration, &operator)
        .await
        .context("registering the bench producer")?;
    Ok((Arc::new(auth), token.expose().to_owned()))
}

impl InProcessServer {
    /// The API on a loopback port; with `auth`, access control is on and the client sends the token.
    async fn start(
        log: Arc<dyn LogStore>,
        auth: Option<(Arc<esgf_events_auth::Auth>, String)>,
    ) -> anyhow::Result<Self> {
        Self::start_with_catalogue(log, auth, None).await
    }

    /// [`InProcessServer::start`], with the topic catalogue (validation policy, lifecycle, idempotent publish
    /// by `metadata.event_id`) as `serve` has it.
    async fn start_with_catalogue(
        log: Arc<dyn LogStore>,
        auth: Option<(Arc<esgf_events_auth::Auth>, String)>,
        catalogue: Option<Arc<esgf_events_catalogue::Catalogue>>,
    ) -> anyhow::Result<Self> {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (auth, token) = auth.map_or((None, None), |(auth, token)| (Some(auth), Some(token)));
        let server = esgf_events_http::Server {
            store: log,
            auth,
            config: HttpConfig::default(),
            tls: None,
            offsets: None,
            webhooks: None,
            ops: Default::default(),
            catalogue,
            cluster: None,
        };
        let task = tokio::spawn(esgf_events_http::serve(listener, server, async move {
            // Either a stop request or the sender dropping on an error path: both mean stop.
            let _ = stopped.await;
        }));
        let server = InProcessServer {
            base_url: format!("http://{address}"),
            client: http_client(token.as_deref())?,
            stop,
            task,
        };
        wait_ready(&server.client, &server.base_url, Instant::now() + READY_TIMEOUT).await?;
        Ok(server)
    }

    /// Graceful stop: in-flight requests finish, connections close, the server lets go of the store.
    async fn stop(self) -> anyhow::Result<()> {
        drop(self.client);
        let _ = self.stop.send(());
        self.task.await.context("the HTTP server task panicked")?.context("the HTTP server failed")?;
        Ok(())
    }
}

/// Longest a server may take to become ready (in process or child) before the bench gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A keep-alive client; with `token`, every request carries it as a bearer token.
fn http_client(token: Option<&str>) -> anyhow::Result<reqwest::Client> {
    crate::install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
            .context("the token does not fit an HTTP header")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

/// Polls `GET /readyz` until 200; connection errors count as "not yet".
async fn wait_ready(client: &reqwest::Client, base_url: &str, deadline: Instant) -> anyhow::Result<()> {
    let url = format!("{base_url}/readyz");
    loop {
        let status = client.get(&url).send().await.map(|r| r.status());
        if matches!(status, Ok(s) if s == reqwest::StatusCode::OK) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{url} did not answer 200 within {READY_TIMEOUT:?} (last: {status:?})");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Rounds in which the cells of a pair (without and with access control) take turns: the pair shares whatever
/// else the machine does meanwhile, so its comparison reflects access control rather than the moment.
const HTTP_ROUNDS: u32 = 4;

/// `clients` concurrent keep-alive clients publishing `batch` events per request (a bare object when 1), to the
/// server without access control and to the one with it, in alternating rounds: one row for each.
#[allow(clippy::too_many_arguments)] // each is a separate input of the measurement
async fn measure_http_publish_pair(
    log: &Arc<dyn LogStore>,
    open: &InProcessServer,
    guarded: &InProcessServer,
    pool: &Arc<EventPool>,
    plan: &Plan,
    baseline: &Baseline,
    batch: usize,
    clients: usize,
) -> anyhow::Result<[Row; 2]> {
    let cells = [false, true].map(|access_control| HttpCell { batch, clients, access_control });
    for cell in cells {
        create_topic(log, &cell.topic()).await?;
    }
    // Bodies are built up front: the load generator's time belongs to no one's latency.
    let bodies: Arc<Vec<(Bytes, u64)>> = Arc::new(if batch == 1 {
        pool.events.iter().map(|e| (e.clone(), e.len() as u64)).collect()
    } else {
        (0..pool.events.len().div_ceil(batch)).map(|b| pool.json_array(b * batch, batch)).collect()
    });
    let budget = Budget {
        max_ops: pool.ops_for_volume(plan.append_volume, batch).div_ceil(u64::from(HTTP_ROUNDS)),
        duration: plan.cell_duration / HTTP_ROUNDS,
    };
    let mut runs = [Run::default(), Run::default()];
    for _ in 0..HTTP_ROUNDS {
        for ((cell, server), total) in cells.iter().zip([open, guarded]).zip(&mut runs) {
            let url = format!("{}/v1/topics/{}/events", server.base_url, cell.topic());
            total.absorb(publish_load(&server.client, url, &bodies, batch, clients, budget).await?);
        }
    }
    for cell in cells {
        let topic = cell.topic();
        log.delete_topic(&topic).await.with_context(|| format!("deleting topic {topic}"))?;
    }
    let [open_run, guarded_run] = runs;
    let (open_name, guarded_name) = if batch == 1 {
        ("HTTP publish, one event", "HTTP publish, one event, auth+rate")
    } else {
        ("HTTP publish, batch", "HTTP publish, batch, auth+rate")
    };
    let mut guarded_row = Row::new(guarded_name, batch, clients, guarded_run, baseline);
    guarded_row.access_control = true;
    Ok([Row::new(open_name, batch, clients, open_run, baseline), guarded_row])
}

/// One load run: `clients` workers POSTing `bodies` round-robin to `url` until `budget` is spent.
async fn publish_load(
    client: &reqwest::Client,
    url: String,
    bodies: &Arc<Vec<(Bytes, u64)>>,
    batch: usize,
    clients: usize,
    budget: Budget,
) -> anyhow::Result<Run> {
    let (client, bodies) = (client.clone(), Arc::clone(bodies));
    drive(clients, budget, move |i| {
        let (body, bytes) = bodies[i as usize % bodies.len()].clone();
        let request =
            client.post(&url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send();
        async move {
            let response = request.await?;
            let status = response.status();
            // Read the whole answer so the connection goes back to the pool.
            let text = response.bytes().await?;
            ensure!(
                status == reqwest::StatusCode::CREATED,
                "publish answered {status}: {}",
                String::from_utf8_lossy(&text)
            );
            Ok((batch as u64, bytes))
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Replay: a large topic read from offset 0.

const REPLAY_TOPIC: &str = "bench.replay";
const REPLAY_BATCH: usize = 1000;
const REPLAY_PRODUCERS: usize = 4;
/// Longest the fill may take before the bench gives up (a slow disk, or a huge --replay-gb).
const FILL_TIMEOUT: Duration = Duration::from_secs(3600);

async fn fill_replay_topic(
    log: &Arc<dyn LogStore>,
    pool: &Arc<EventPool>,
    plan: &Plan,
    baseline: &Baseline,
) -> anyhow::Result<Row> {
    create_topic(log, REPLAY_TOPIC).await?;
    let topic: Arc<str> = REPLAY_TOPIC.into();
    let budget =
        Budget { max_ops: pool.ops_for_volume(plan.replay_bytes, REPLAY_BATCH), duration: FILL_TIMEOUT };
    let run = drive(REPLAY_PRODUCERS, budget, append_op(log, pool, &topic, REPLAY_BATCH)).await?;
    Ok(Row::new("replay fill (engine append)", REPLAY_BATCH, REPLAY_PRODUCERS, run, baseline))
}

/// Reads the whole replay topic through the engine, in large reads.
async fn measure_engine_replay(log: &Arc<dyn LogStore>, baseline: &Baseline) -> anyhow::Result<Row> {
    const MAX_RECORDS: usize = 10_000;
    let limits = ReadLimits { max_records: MAX_RECORDS, max_bytes: 64 << 20 };
    let end = log.offsets(REPLAY_TOPIC, 0).await?.latest;
    let mut run = Run::default();
    let started = Instant::now();
    let mut offset = 0;
    while offset < end {
        let began = Instant::now();
        let read = log.read(REPLAY_TOPIC, 0, offset, limits).await?;
        run.latencies.push(began.elapsed());
        ensure!(read.next_offset > offset, "the engine read nothing at offset {offset} of {end}");
        run.events += read.records.len() as u64;
        run.bytes += read.records.iter().map(|r| r.value.len() as u64).sum::<u64>();
        offset = read.next_offset;
    }
    run.elapsed = started.elapsed();
    Ok(Row::new("replay read (engine)", MAX_RECORDS, 1, run, baseline))
}

/// The reference index replica's apply rate: every pool event as a POST, then per dataset a replica addition
/// and a retraction (JSON Patch), committed into an on-disk index (WAL, `synchronous=FULL`) in pages of 1000
/// with their offsets, as `esgf-events replicate` commits them. Events are parsed beforehand (the follower
/// parses while it fetches), so this is the index's own rate.
async fn measure_replica_apply(
    dir: &Path,
    pool: &Arc<EventPool>,
    baseline: &Baseline,
) -> anyhow::Result<Row> {
    use esgf_events_replica::{ErrorPolicy, Index, PageEvent};
    const PAGE: usize = 1000;
    let path = dir.join("replica-bench.db");
    let pool = Arc::clone(pool);
    let run = tokio::task::spawn_blocking(move || -> anyhow::Result<Run> {
        let mut stream: Vec<(serde_json::Value, u64)> = Vec::new();
        for event in &pool.events {
            stream.push((serde_json::from_slice(event).context("a pool event is JSON")?, event.len() as u64));
        }
        for key in &pool.keys {
            let id = String::from_utf8_lossy(key);
            let patch = |ops: serde_json::Value| {
                let event = json!({"metadata": {"publisher": {"package": "esgf_publisher", "version": "5.2.3"}},
                    "data": {"type": "STAC", "payload": {"method": "PATCH", "collection_id": "CMIP6",
                                                          "item_id": id, "patch": ops}}});
                let bytes = event.to_string().len() as u64;
                (event, bytes)
            };
            let mirror = format!("https://eagle.alcf.anl.gov/css03_data/{}/data.nc", id.replace('.', "/"));
            stream.push(patch(json!([{"op": "add", "path": "/assets/mirror0000",
                "value": {"alternate": {"eagle.alcf.anl.gov": {"href": mirror, "roles": ["data"]}}}}])));
            stream.push(patch(json!([{"op": "add", "path": "/properties/retracted", "value": true},
                                     {"op": "add", "path": "/properties/latest", "value": false}])));
        }
        let mut index = Index::open_or_create(&path).context("creating the bench index")?;
        index.bind_topic("bench.replica").context("binding the bench index")?;
        let mut pages: Vec<(Vec<PageEvent>, u64)> = Vec::new();
        for (page, chunk) in stream.chunks(PAGE).enumerate() {
            let events = chunk
                .iter()
                .enumerate()
                .map(|(i, (event, _))| PageEvent { offset: (page * PAGE + i) as u64, event: Ok(event.clone()) })
                .collect();
            pages.push((events, chunk.iter().map(|(_, bytes)| bytes).sum()));
        }
        let mut run = Run::default();
        let started = Instant::now();
        for (events, bytes) in &pages {
            let began = Instant::now();
            let outcome = index.apply_page(0, events, ErrorPolicy::Continue).context("applying a page")?;
            run.latencies.push(began.elapsed());
            ensure!(outcome.rejected == 0, "the bench stream has events the index rejects");
            run.events += outcome.applied as u64;
            run.bytes += bytes;
        }
        run.elapsed = started.elapsed();
        Ok(run)
    })
    .await
    .context("the replica bench task")??;
    Ok(Row::new("replica apply (SQLite index)", PAGE, 1, run, baseline))
}

/// Validation cost per event at each policy level (`none`, `esgf-envelope`, `esgf-strict` with the CMIP6
/// extension schema registered), on one core: the pool's events validated in a loop for one cell's duration.
/// Refused events are counted too (the cost is the same); the row name says how many passed.
async fn measure_validation(
    pool: &Arc<EventPool>,
    plan: &Plan,
    baseline: &Baseline,
) -> anyhow::Result<Vec<Row>> {
    use esgf_events_envelope::{SchemaRegistry, ValidationPolicy, validate};
    let schemas = SchemaRegistry::builtin()
        .subset(&["https://stac-extensions.github.io/cmip6/v3.0.1/schema.json"])
        .context("the CMIP6 extension schema is built in")?;
    let mut rows = Vec::new();
    for policy in [ValidationPolicy::None, ValidationPolicy::EsgfEnvelope, ValidationPolicy::EsgfStrict] {
        let pool = Arc::clone(pool);
        let schemas = schemas.clone();
        let duration = plan.cell_duration;
        let (run, passed) = tokio::task::spawn_blocking(move || {
            let mut run = Run::default();
            let mut passed = 0u64;
            let started = Instant::now();
            'outer: loop {
                for event in &pool.events {
                    if validate(policy, event, &schemas).is_ok() {
                        passed += 1;
                    }
                    run.events += 1;
                    run.bytes += event.len() as u64;
                    if run.events % 256 == 0 && started.elapsed() >= duration {
                        break 'outer;
                    }
                }
            }
            run.elapsed = started.elapsed();
            (run, passed)
        })
        .await
        .context("the validation bench task")?;
        let share = 100.0 * passed as f64 / run.events.max(1) as f64;
        rows.push(Row::new(format!("validate {} ({share:.0}% pass)", policy.as_str()), 1, 1, run, baseline));
    }
    Ok(rows)
}

/// One page of `GET /v1/topics/{t}/events`: only what the bench needs, values left unparsed.
#[derive(Deserialize)]
struct EventsPage<'a> {
    #[serde(borrow)]
    events: Vec<PageEvent<'a>>,
    next_offset: u64,
}

#[derive(Deserialize)]
struct PageEvent<'a> {
    #[serde(borrow)]
    value: &'a RawValue,
}

/// Reads the replay topic from offset 0 through HTTP, 1000 events per request, for at most
/// `plan.http_replay_duration`.
async fn measure_http_replay(
    server: &InProcessServer,
    plan: &Plan,
    baseline: &Baseline,
) -> anyhow::Result<Row> {
    const LIMIT: usize = 1000;
    let url = format!("{}/v1/topics/{REPLAY_TOPIC}/events", server.base_url);
    let mut run = Run::default();
    let started = Instant::now();
    let deadline = started + plan.http_replay_duration;
    let mut offset = 0;
    while Instant::now() < deadline {
        let began = Instant::now();
        let page_url = format!("{url}?partition=0&offset={offset}&limit={LIMIT}");
        let response = server.client.get(&page_url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        ensure!(
            status == reqwest::StatusCode::OK,
            "read answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let page: EventsPage = serde_json::from_slice(&body).context("decoding a page of events")?;
        run.latencies.push(began.elapsed());
        if page.events.is_empty() {
            break;
        }
        run.events += page.events.len() as u64;
        run.bytes += page.events.iter().map(|e| e.value.get().len() as u64).sum::<u64>();
        offset = page.next_offset;
    }
    run.elapsed = started.elapsed();
    Ok(Row::new("replay read (HTTP)", LIMIT, 1, run, baseline))
}

// ---------------------------------------------------------------------------------------------------------------
// Restart: a `serve` child process on the replay log, killed with SIGKILL and started again.

const RESTART_EVENTS: u64 = 10;

async fn measure_restart(data_dir: &Path, pool: &EventPool, log_bytes: u64) -> anyhow::Result<Restart> {
    let exe = std::env::current_exe().context("finding the current executable")?;
    let client = http_client(None)?;

    let (first, start_after_shutdown) = ChildServer::spawn(&exe, data_dir, &client).await?;
    // Without ESGF_EVENTS_OPERATOR_TOKEN (removed from its environment), the child generated this one.
    let token_file = data_dir.join(crate::serve::OPERATOR_TOKEN_FILE);
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading the child's operator token {}", token_file.display()))?;
    let events_url = format!("{}/v1/topics/{REPLAY_TOPIC}/events", first.base_url);
    for i in 0..RESTART_EVENTS {
        let response = client
            .post(&events_url)
            .bearer_auth(token.trim())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(pool.event(i as usize).clone())
            .send()
            .await?;
        ensure!(
            response.status() == reqwest::StatusCode::CREATED,
            "publish to the child answered {}",
            response.status()
        );
    }
    let end_before = log_end(&client, &first.base_url).await?;
    first.kill();

    let (second, restart_after_kill) = ChildServer::spawn(&exe, data_dir, &client).await?;
    let end_after = log_end(&client, &second.base_url).await?;
    second.kill();

    Ok(Restart {
        log_bytes,
        start_after_shutdown_ms: Some(start_after_shutdown.as_secs_f64() * 1e3),
        restart_after_kill_ms: Some(restart_after_kill.as_secs_f64() * 1e3),
        events_published_before_kill: RESTART_EVENTS,
        acknowledged_events_kept: Some(end_after == end_before),
        error: None,
    })
}

/// The replay topic's log end, as `GET /v1/topics/{t}` reports it.
async fn log_end(client: &reqwest::Client, base_url: &str) -> anyhow::Result<u64> {
    #[derive(Deserialize)]
    struct Description {
        offsets: Vec<Offsets>,
    }
    #[derive(Deserialize)]
    struct Offsets {
        latest: u64,
    }
    let response = client.get(format!("{base_url}/v1/topics/{REPLAY_TOPIC}")).send().await?;
    ensure!(response.status() == reqwest::StatusCode::OK, "describe answered {}", response.status());
    let description: Description = response.json().await?;
    description.offsets.first().map(|o| o.latest).context("the replay topic has no partition")
}

/// Lines of a child's stderr kept to explain a failure.
const STDERR_TAIL: usize = 20;

/// An `esgf-events serve` child. Dropping it kills it, so no error path leaves a server behind.
struct ChildServer {
    child: Child,
    base_url: String,
}

impl ChildServer {
    /// Spawns `serve` on `data_dir` with an ephemeral port and waits until `/readyz` answers 200. Returns the time
    /// from spawn to ready.
    async fn spawn(
        exe: &Path,
        data_dir: &Path,
        client: &reqwest::Client,
    ) -> anyhow::Result<(Self, Duration)> {
        let started = Instant::now();
        let mut child = Command::new(exe)
            .arg("serve")
            .args(["--http-addr", "127.0.0.1:0", "--log-level", "info", "--log-format", "text"])
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("RUST_LOG")
            .env_remove(crate::config::OPERATOR_TOKEN_ENV)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {} serve", exe.display()))?;
        let stderr = child.stderr.take().context("the child's stderr is not piped")?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let (found, address) = tokio::sync::oneshot::channel::<SocketAddr>();
        // A thread, not a task: the pipe is blocking, and it must be drained for the child's whole life or the
        // child would block on a full pipe.
        let tail_writer = Arc::clone(&tail);
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if found.is_some()
                    && let Some(addr) = bound_address(&line)
                    && let Some(found) = found.take()
                {
                    let _ = found.send(addr);
                }
                let mut tail = tail_writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let mut server = ChildServer { child, base_url: String::new() };
        let describe_tail = || {
            let tail = tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            tail.iter().cloned().collect::<Vec<_>>().join("\n")
        };
        let address = match tokio::time::timeout(READY_TIMEOUT, address).await {
            Ok(Ok(address)) => address,
            Ok(Err(_)) => bail!(
                "serve exited without logging its http_addr; its stderr ended with:\n{}",
                describe_tail()
            ),
            Err(_) => {
                bail!("serve logged no http_addr within {READY_TIMEOUT:?}; stderr:\n{}", describe_tail())
            }
        };
        server.base_url = format!("http://{address}");
        wait_ready(client, &server.base_url, started + READY_TIMEOUT).await.with_context(|| {
            format!("waiting for the serve child; its stderr ended with:\n{}", describe_tail())
        })?;
        Ok((server, started.elapsed()))
    }

    /// SIGKILL, then reap.
    fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        // Fails only if it already exited, which is what we want anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// The address in a log line like `... http_addr=127.0.0.1:41234 ...` (text, possibly coloured) or
/// `"http_addr":"127.0.0.1:41234"` (JSON).
fn bound_address(line: &str) -> Option<SocketAddr> {
    let plain = strip_ansi(line);
    let rest = &plain[plain.find("http_addr")? + "http_addr".len()..];
    let rest = rest.trim_start_matches(|c: char| c == '=' || c == '"' || c == ':' || c.is_whitespace());
    let end = rest.find(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '}')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// The working directory and its filesystem.

/// A fresh directory under the measured filesystem, removed when dropped.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(parent: &Path) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let path = parent.join(format!("esgf-events-bench-{}-{}", std::process::id(), nanos.subsec_nanos()));
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let path = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
        Ok(WorkDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %err, "could not remove the bench directory");
        }
    }
}

/// The filesystem type `path` lives on, from `/proc/self/mountinfo` (Linux); `None` elsewhere.
fn filesystem_type(path: &Path) -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    filesystem_in_mountinfo(&mountinfo, path)
}

/// The type of the deepest mount containing `path` (the last one listed wins when mounts are stacked).
fn filesystem_in_mountinfo(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        // `id parent major:minor root mount-point options [optional...] - fstype source super-options`
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount_point), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == "-")) else {
            continue;
        };
        let Some(fstype) = fields.get(dash + 1) else { continue };
        let mount_point = unescape_mount_path(mount_point);
        let depth = Path::new(&mount_point).components().count();
        if path.starts_with(&mount_point) && best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, (*fstype).to_owned()));
        }
    }
    best.map(|(_, fstype)| fstype)
}

/// Mount paths escape space, tab, newline and backslash as three octal digits (`\040`).
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Targets and the printed table.

fn evaluate_targets(report: &Report) -> Vec<Target> {
    let mut targets = Vec::new();
    let best_batched = report
        .engine_append
        .iter()
        .filter(|r| r.batch >= 100)
        .max_by(|a, b| a.mb_per_s.total_cmp(&b.mb_per_s));
    if let Some(row) = best_batched {
        targets.push(Target {
            name: "durable batched ingest (engine)".into(),
            goal: ">= 0.50 x sequential-write MB/s".into(),
            measured: format!(
                "{:.2} x (batch {}, {} producers)",
                row.mb_per_s_vs_seq_write, row.batch, row.concurrency
            ),
            met: Some(row.mb_per_s_vs_seq_write >= 0.5),
        });
    }
    if let Some(row) = report.http_publish.iter().find(|r| r.batch == 1 && r.concurrency == 1) {
        targets.push(Target {
            name: "HTTP single-event publish p99".into(),
            goal: "<= 3 x fsync p99".into(),
            measured: row.p99_vs_fsync_p99.map_or_else(|| "no samples".into(), |r| format!("{r:.2} x")),
            met: row.p99_vs_fsync_p99.map(|r| r <= 3.0),
        });
    }
    targets.extend(access_control_overhead(&report.http_publish));
    if let Some(row) = report.replay.iter().find(|r| r.name == "replay read (engine)") {
        targets.push(Target {
            name: "replay through the engine".into(),
            goal: ">= 1,000,000 events/s".into(),
            measured: format!("{} events/s", thousands(row.events_per_s)),
            met: Some(row.events_per_s >= 1e6),
        });
    }
    if let Some(restart) = &report.restart {
        targets.push(Target {
            name: format!("restart after kill -9 ({:.2} GB log)", restart.log_bytes as f64 / 1e9),
            goal: "< 1 s to ready".into(),
            measured: match (restart.restart_after_kill_ms, &restart.error) {
                (Some(ms), _) => format!("{ms:.0} ms"),
                (None, Some(err)) => format!("failed: {}", err.lines().next().unwrap_or_default()),
                (None, None) => "not measured".into(),
            },
            met: restart.restart_after_kill_ms.map(|ms| ms < 1000.0),
        });
    }
    targets
}

/// Concurrency at which access control's cost is judged: the most requests per second, and enough samples for a
/// steady p99.
const OVERHEAD_CLIENTS: usize = 64;

/// Most throughput lost, and most p99 latency gained, that access control may cost.
const MAX_ACCESS_CONTROL_OVERHEAD: f64 = 0.10;

/// For single events and for batches of 100: throughput and p99 with access control against the same cell
/// without it.
fn access_control_overhead(rows: &[Row]) -> Vec<Target> {
    let mut targets = Vec::new();
    for (batch, what) in [(1, "single events"), (100, "batches of 100")] {
        let find = |access_control: bool| {
            rows.iter().find(|r| {
                r.batch == batch && r.concurrency == OVERHEAD_CLIENTS && r.access_control == access_control
            })
        };
        let (Some(open), Some(guarded)) = (find(false), find(true)) else { continue };
        let throughput_loss = 1.0 - guarded.events_per_s / open.events_per_s.max(f64::MIN_POSITIVE);
        let p99_gain = match (open.latency, guarded.latency) {
            (Some(o), Some(g)) if o.p99_ms > 0.0 => Some(g.p99_ms / o.p99_ms - 1.0),
            _ => None,
        };
        let percent = |x: f64| format!("{:+.1} %", x * 100.0);
        targets.push(Target {
            name: format!("access-control overhead, {what}"),
            goal: format!("< {:.0} % (throughput and p99)", MAX_ACCESS_CONTROL_OVERHEAD * 100.0),
            measured: format!(
                "throughput {}, p99 {} ({OVERHEAD_CLIENTS} clients)",
                percent(-throughput_loss),
                p99_gain.map_or_else(|| "n/a".into(), percent)
            ),
            met: p99_gain.map(|gain| {
                throughput_loss < MAX_ACCESS_CONTROL_OVERHEAD && gain < MAX_ACCESS_CONTROL_OVERHEAD
            }),
        });
    }
    targets
}

/// `1234567.8` as `1,234,568`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(latency: Option<Latency>, pick: fn(&Latency) -> f64) -> String {
    latency.map_or_else(|| "-".into(), |l| format!("{:.2}", pick(&l)))
}

/// The whole report as the table printed on stdout.
fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let e = &report.events;
    let _ = writeln!(
        out,
        "\nESGF Event Service benchmark ({} run): {} CPUs, {} on {}",
        report.mode, report.cpus, report.work_dir, report.filesystem
    );
    let _ = writeln!(
        out,
        "events: {} distinct ESGF publication events ({}), mean {:.0} B (min {}, max {})",
        e.distinct, e.source, e.mean_bytes, e.min_bytes, e.max_bytes
    );
    let Some(b) = &report.baseline else { return out };
    let _ = writeln!(out, "\nBaseline (plain files, same filesystem)");
    let _ = writeln!(
        out,
        "  sequential write, 1 MiB writes + 1 fsync: {:.0} MB in {:.2} s = {:.0} MB/s",
        b.seq_write_bytes as f64 / MB,
        b.seq_write_seconds,
        b.seq_write_mb_per_s
    );
    let _ = writeln!(
        out,
        "  append ~2 KB + fdatasync, {} times: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        b.fsync.samples, b.fsync.p50_ms, b.fsync.p99_ms, b.fsync.max_ms
    );
    if let Some(a) = &report.baseline_after {
        let _ = writeln!(
            out,
            "  again after the run (ratios use the first): {:.0} MB/s; fsync p50 {:.2} ms, p99 {:.2} ms",
            a.seq_write_mb_per_s, a.fsync.p50_ms, a.fsync.p99_ms
        );
    }

    let header = format!(
        "  {:<34} {:>6} {:>6} {:>11} {:>13} {:>8} {:>9} {:>9} {:>8} {:>8}",
        "", "batch", "conc.", "events", "events/s", "MB/s", "p50 ms", "p99 ms", "xSeqWr", "xFsync99"
    );
    for (title, rows) in [
        ("Engine append, durable (fsync before ack), 1 partition", &report.engine_append),
        ("HTTP publish, durable, in-process server, keep-alive", &report.http_publish),
        ("Replay from offset 0, 1 partition (page cache warm)", &report.replay),
        ("Event validation per policy, one core (compare with HTTP publish events/s)", &report.validation),
    ] {
        let _ = writeln!(out, "\n{title}\n{header}");
        for r in rows {
            let _ = writeln!(
                out,
                "  {:<34} {:>6} {:>6} {:>11} {:>13} {:>8.1} {:>9} {:>9} {:>8.2} {:>8}",
                r.name,
                r.batch,
                r.concurrency,
                thousands(r.events as f64),
                thousands(r.events_per_s),
                r.mb_per_s,
                ms(r.latency, |l| l.p50_ms),
                ms(r.latency, |l| l.p99_ms),
                r.mb_per_s_vs_seq_write,
                r.p99_vs_fsync_p99.map_or_else(|| "-".into(), |x| format!("{x:.2}")),
            );
        }
    }
    let _ = writeln!(
        out,
        "  (MB/s counts event bytes; xSeqWr = MB/s / baseline MB/s; xFsync99 = p99 / fsync p99; auth+rate = a\n   \
         producer's bearer token checked and its rate limit, far above the load, enforced on every request)"
    );

    if let Some(sse) = &report.sse {
        sse::render_sse(&mut out, sse);
    }
    if let Some(webhooks) = &report.webhooks {
        webhooks::render_webhooks(&mut out, webhooks);
    }

    if let Some(r) = &report.restart {
        let _ = writeln!(
            out,
            "\nRestart of `serve` with a {:.2} GB log (spawn to /readyz 200)",
            r.log_bytes as f64 / 1e9
        );
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".into(), |ms| format!("{ms:.0} ms"));
        let _ = writeln!(out, "  start after clean shutdown: {}", fmt(r.start_after_shutdown_ms));
        let _ = writeln!(out, "  restart after kill -9:      {}", fmt(r.restart_after_kill_ms));
        if let Some(kept) = r.acknowledged_events_kept {
            let _ = writeln!(
                out,
                "  {} events published before the kill: {}",
                r.events_published_before_kill,
                if kept { "all kept" } else { "LOG END CHANGED" }
            );
        }
        if let Some(err) = &r.error {
            let _ = writeln!(out, "  FAILED: {err}");
        }
    }

    let _ = writeln!(out, "\nTargets");
    for t in &report.targets {
        let verdict = match t.met {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "----",
        };
        let _ = writeln!(out, "  [{verdict}] {:<42} goal {:<34} measured {}", t.name, t.goal, t.measured);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "CMIP6.ScenarioMIP.IPSL.IPSL-CM6A-LR.ssp119.r4i1p1f1.CFmon.clcalipso.gr.v20191122";

    #[test]
    fn dataset_id_yields_its_facets() {
        let ds = DatasetId::parse(ID).expect("valid id");
        assert_eq!(ds.activity, "ScenarioMIP");
        assert_eq!(ds.source, "IPSL-CM6A-LR");
        assert_eq!(ds.variable, "clcalipso");
        assert_eq!(ds.version, "20191122");
        assert_eq!(ds.base_id(), "CMIP6.ScenarioMIP.IPSL.IPSL-CM6A-LR.ssp119.r4i1p1f1.CFmon.clcalipso.gr");
        assert_eq!(ds.frequency(), "mon");
    }

    #[test]
    fn frequency_follows_the_mip_table() {
        let with_table = |table: &str| {
            DatasetId::parse(&format!("CMIP6.CMIP.NCAR.CESM2.historical.r1i1p1f1.{table}.tas.gn.v20190308"))
                .expect("valid id")
                .frequency()
        };
        assert_eq!(with_table("Amon"), "mon");
        assert_eq!(with_table("day"), "day");
        assert_eq!(with_table("6hrPlevPt"), "6hr");
        assert_eq!(with_table("AERhr"), "1hr");
        assert_eq!(with_table("Ofx"), "fx");
    }

    #[test]
    fn malformed_dataset_ids_are_rejected() {
        for bad in [
            "",
            "CMIP6.a.b",
            "CMIP7.a.b.c.d.e.f.g.h.v1",
            "CMIP6.a.b.c.d.e.f.g.h.20200101",
            "CMIP6..b.c.d.e.f.g.h.v1",
        ] {
            assert_eq!(DatasetId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn events_are_about_two_kilobytes_of_valid_json_keyed_by_item_id() {
        let pool = EventPool::build(&synthetic_dataset_ids(40));
        assert!((1700.0..2400.0).contains(&pool.mean_bytes), "mean {}", pool.mean_bytes);
        let event: serde_json::Value = serde_json::from_slice(&pool.events[1]).expect("valid JSON");
        let item = &event["data"]["payload"]["item"];
        assert_eq!(item["id"].as_str().map(str::as_bytes), Some(pool.keys[1].as_ref()));
        assert_eq!(event["metadata"]["publisher"]["package"], "esgf_publisher");
        assert_eq!(item["properties"]["cmip6:source_id"], "IPSL-CM6A-LR");
    }

    #[test]
    fn json_array_batches_wrap_around_the_pool() {
        let pool = EventPool::build(&synthetic_dataset_ids(3));
        let (body, bytes) = pool.json_array(2, 4);
        let events: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("a JSON array");
        assert_eq!(events.len(), 4);
        assert_eq!(bytes, [2, 0, 1, 2].iter().map(|&i| pool.events[i].len() as u64).sum::<u64>());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let l = Latency::of(samples).expect("samples");
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms, l.samples), (50.0, 99.0, 100.0, 100));
        assert!(Latency::of(Vec::new()).is_none());
        let one = Latency::of(vec![Duration::from_millis(7)]).expect("one sample");
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
    }

    #[test]
    fn bound_address_is_found_in_text_coloured_and_json_logs() {
        let want: SocketAddr = "127.0.0.1:41234".parse().expect("address");
        let text =
            "2026-11-27T10:00:00Z  INFO esgf_events::serve: listening http_addr=127.0.0.1:41234 data_dir=./d";
        let coloured =
            "\u{1b}[32m INFO\u{1b}[0m \u{1b}[3mhttp_addr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:41234";
        let json = r#"{"fields":{"message":"listening","http_addr":"127.0.0.1:41234"}}"#;
        for line in [text, coloured, json] {
            assert_eq!(bound_address(line), Some(want), "{line}");
        }
        assert_eq!(bound_address("INFO opened topic"), None);
        assert_eq!(bound_address("http_addr=nonsense"), None);
    }

    #[test]
    fn filesystem_is_that_of_the_deepest_mount() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:25 / /tmp rw - tmpfs tmpfs rw
31 22 0:26 / /data\\040disk rw shared:1 - xfs /dev/vdb rw
";
        let fs = |p: &str| filesystem_in_mountinfo(mountinfo, Path::new(p));
        assert_eq!(fs("/work/main").as_deref(), Some("ext4"));
        assert_eq!(fs("/tmp/x").as_deref(), Some("tmpfs"));
        assert_eq!(fs("/tmpfoo").as_deref(), Some("ext4"));
        assert_eq!(fs("/data disk/bench").as_deref(), Some("xfs"));
    }

    fn row(batch: usize, access_control: bool, events: u64, p99_ms: u64) -> Row {
        let baseline = Baseline {
            seq_write_bytes: 1,
            seq_write_seconds: 1.0,
            seq_write_mb_per_s: 100.0,
            fsync: Latency { samples: 1, p50_ms: 1.0, p99_ms: 1.0, max_ms: 1.0 },
        };
        let run = Run {
            events,
            bytes: events * 2000,
            elapsed: Duration::from_secs(1),
            latencies: vec![Duration::from_millis(p99_ms); 10],
        };
        let mut row = Row::new("r", batch, OVERHEAD_CLIENTS, run, &baseline);
        row.access_control = access_control;
        row
    }

    #[test]
    fn access_control_overhead_compares_like_cells_on_throughput_and_p99() {
        let rows = [
            row(1, false, 1000, 10),
            row(1, true, 950, 10), // 5 % slower: within the target
            row(100, false, 100_000, 20),
            row(100, true, 100_000, 25), // p99 25 % higher: a miss
        ];
        let targets = access_control_overhead(&rows);
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].met, Some(true), "{targets:?}");
        assert!(targets[0].measured.contains("throughput -5.0 %"), "{}", targets[0].measured);
        assert_eq!(targets[1].met, Some(false), "{targets:?}");
        assert!(targets[1].measured.contains("p99 +25.0 %"), "{}", targets[1].measured);
        assert!(access_control_overhead(&rows[..1]).is_empty(), "no pair, no target");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }
}
