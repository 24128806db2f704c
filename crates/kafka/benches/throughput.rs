//! Kafka produce and fetch throughput (librdkafka, ~2 KB ESGF events, acks=all) against the HTTP batch path and
//! the engine alone, in one run: `cargo bench -p esgf-events-kafka --bench throughput`.
//!
//! Everything is durable (fsync before acknowledging) and in-process on loopback. Under `cargo test` /
//! `cargo nextest` this target only checks that it starts (no measurement happens without `--bench`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use esgf_events_engine::{
    EmbeddedConfig, EmbeddedStore, LogStore, NewRecord, ReadLimits, Retention, SystemClock, TopicConfig,
};
use esgf_events_kafka::{KafkaConfig, KafkaContext};
use esgf_events_meta::RedbMetaStore;
use esgf_events_meta::offsets::GroupOffsets;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::TcpListener;

const EVENTS: usize = 100_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // nextest asks for the test list: there are no tests here.
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("throughput: run with `cargo bench -p esgf-events-kafka --bench throughput` to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(run());
}

/// ~2 KB ESGF-like publication events, each with its own dataset id.
fn event(i: usize) -> (String, Bytes) {
    let id = format!("CMIP6.ScenarioMIP.IPSL.IPSL-CM6A-LR.ssp585.r{}i1p1f1.Amon.tas.gr.v20190119", i);
    let pad = "x".repeat(1500);
    let json = format!(
        r#"{{"metadata":{{"event_id":"{i:08}","time":"2026-11-27T10:00:00Z","publisher":{{"package":"esgf_publisher","version":"5.2.3"}}}},"data":{{"type":"STAC","version":"1.0.0","payload":{{"method":"POST","collection_id":"CMIP6","item":{{"type":"Feature","stac_version":"1.1.0","id":"{id}","collection":"CMIP6","properties":{{"institution_id":"IPSL","source_id":"IPSL-CM6A-LR","variable_id":"tas","description":"{pad}"}}}}}}}}}}"#
    );
    (id, Bytes::from(json))
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

async fn run() {
    let dir = tempfile::tempdir_in(std::env::current_dir().expect("cwd")).expect("tempdir");
    let store: Arc<dyn LogStore> = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("log")), Arc::new(SystemClock)).unwrap(),
    );
    let forever = Retention { max_age: None, max_bytes: None };
    for t in ["engine", "http", "kafka"] {
        store.create_topic(t, TopicConfig { partitions: 1, retention: forever }).await.unwrap();
    }
    let events: Vec<(String, Bytes)> = (0..EVENTS).map(event).collect();
    let mean = events.iter().map(|e| e.1.len()).sum::<usize>() / EVENTS;
    println!("{EVENTS} events of {mean} B mean, durable, 1 partition, loopback, 2 CPUs");

    // Engine alone: batches of 100 from 8 concurrent producers.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in events.chunks(EVENTS / 8) {
        let store = store.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for batch in chunk.chunks(100) {
                let records = batch
                    .iter()
                    .map(|(k, v)| NewRecord {
                        key: Some(Bytes::from(k.clone())),
                        ..NewRecord::from_value(v.clone())
                    })
                    .collect();
                store.append("engine", 0, records).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let engine = rate(EVENTS, t.elapsed());

    // HTTP batches of 100 from 8 concurrent clients, through the real server.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = listener.local_addr().unwrap();
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(esgf_events_http::run(
        listener,
        store.clone(),
        esgf_events_http::HttpConfig::default(),
        async move {
            let _ = http_stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in events.chunks(EVENTS / 8) {
        let client = client.clone();
        let chunk = chunk.to_vec();
        let url = format!("http://{http_addr}/v1/topics/http/events");
        tasks.push(tokio::spawn(async move {
            for batch in chunk.chunks(100) {
                let mut body = Vec::with_capacity(batch.len() * 2100);
                body.push(b'[');
                for (i, (_, v)) in batch.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(v);
                }
                body.push(b']');
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let http_batch = rate(EVENTS, t.elapsed());
    let _ = stop_http.send(());
    http.await.unwrap().unwrap();

    // Kafka: librdkafka producer with acks=all (the service acknowledges after fsync), then a consumer.
    let meta = Arc::new(RedbMetaStore::open(&dir.path().join("state.redb")).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kafka_addr = listener.local_addr().unwrap();
    let ctx = KafkaContext {
        store: store.clone(),
        auth: None,
        offsets: GroupOffsets::new(meta),
        config: KafkaConfig::default(),
        catalogue: None,
    };
    let (stop_kafka, kafka_stopped) = tokio::sync::oneshot::channel::<()>();
    let kafka = tokio::spawn(esgf_events_kafka::run(listener, ctx, async move {
        let _ = kafka_stopped.await;
    }));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr.to_string())
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let t = Instant::now();
    let mut pending = Vec::with_capacity(EVENTS);
    for (k, v) in &events {
        let record = FutureRecord::to("kafka").key(k.as_str()).payload(v.as_ref()).partition(0);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let produce = rate(EVENTS, t.elapsed());

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr.to_string())
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("kafka", 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let fetch = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut n = 0;
        while n < EVENTS {
            if let Some(m) = consumer.poll(Duration::from_secs(5)) {
                m.unwrap();
                n += 1;
            }
        }
        rate(n, t.elapsed())
    })
    .await
    .unwrap();
    let _ = stop_kafka.send(());
    kafka.await.unwrap().unwrap();

    // The engine's own replay of the same topic, for the fetch ratio.
    let t = Instant::now();
    let mut offset = 0;
    let mut n = 0;
    while n < EVENTS {
        let r = store
            .read("kafka", 0, offset, ReadLimits { max_records: 10_000, max_bytes: 64 << 20 })
            .await
            .unwrap();
        n += r.records.len();
        offset = r.next_offset;
    }
    let replay = rate(n, t.elapsed());
    store.shutdown().await.unwrap();

    println!("engine append (batch 100, 8 producers):   {engine:>10.0} events/s");
    println!("HTTP publish (batch 100, 8 clients):       {http_batch:>10.0} events/s");
    println!("Kafka produce (librdkafka, acks=all):      {produce:>10.0} events/s");
    println!("Kafka fetch (librdkafka consumer):          {fetch:>10.0} events/s");
    println!("engine replay:                              {replay:>10.0} events/s");
    println!(
        "ratios: Kafka produce / engine = {:.2}, Kafka produce / HTTP batch = {:.2}, Kafka fetch / engine replay = {:.3}",
        produce / engine,
        produce / http_batch,
        fetch / replay
    );
}
