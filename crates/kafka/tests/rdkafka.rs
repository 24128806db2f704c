//! librdkafka (the engine of confluent-kafka) against the endpoint, in-process: produce, consume in a group with
//! manual commits, resume after a restart of the consumer, every compression codec, idempotence.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Server;
use esgf_events_engine::{NewRecord, ReadLimits};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const WAIT: Duration = Duration::from_secs(30);

fn producer(server: &Server, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", server.bootstrap()).set("message.timeout.ms", "20000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

fn consumer(server: &Server, group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer")
}

async fn read_all(server: &Server, topic: &str, partition: u32) -> Vec<esgf_events_engine::Record> {
    let limits = ReadLimits { max_records: 10_000, max_bytes: 64 << 20 };
    let offsets = server.store.offsets(topic, partition).await.unwrap();
    server.store.read(topic, partition, offsets.earliest, limits).await.unwrap().records
}

/// Receives `n` messages as (partition, offset, value).
async fn receive(consumer: &StreamConsumer, n: usize) -> Vec<(i32, i64, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < n {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {n} messages", got.len()))
            .expect("message");
        got.push((message.partition(), message.offset(), message.payload().unwrap_or_default().to_vec()));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_produced_over_kafka_land_in_the_log_with_key_headers_and_timestamp() {
    let server = Server::start().await;
    server.create_topic("esgf2.publications", 2).await;
    let producer = producer(&server, &[]);
    for i in 0..10 {
        let value = format!("{{\"n\":{i}}}");
        let key = format!("k{i}");
        let record = FutureRecord::to("esgf2.publications")
            .partition(i % 2)
            .key(&key)
            .payload(&value)
            .timestamp(1_700_000_000_000 + i64::from(i))
            .headers(OwnedHeaders::new().insert(Header { key: "source", value: Some("test") }));
        let delivery = producer.send(record, WAIT).await.map_err(|(e, _)| e).expect("delivered");
        let (partition, offset) = (delivery.partition, delivery.offset);
        assert_eq!(partition, i % 2);
        assert_eq!(offset, i64::from(i / 2));
    }
    let records = read_all(&server, "esgf2.publications", 1).await;
    assert_eq!(records.len(), 5);
    let third = &records[2];
    assert_eq!(third.offset, 2);
    assert_eq!(third.value, Bytes::from("{\"n\":5}"));
    assert_eq!(third.key.as_deref(), Some(&b"k5"[..]));
    assert_eq!(third.timestamp_ms, 1_700_000_000_005);
    assert_eq!(third.headers.len(), 1);
    assert_eq!(third.headers[0].name, "source");
    assert_eq!(third.headers[0].value, Bytes::from_static(b"test"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_consumer_with_manual_commits_resumes_after_the_committed_offset() {
    let server = Server::start().await;
    server.create_topic("events", 1).await;
    let batch = (0..5).map(|i| NewRecord::from_value(format!("e{i}"))).collect();
    server.store.append("events", 0, batch).await.unwrap();

    let first = consumer(&server, "resumers");
    first.subscribe(&["events"]).unwrap();
    let got = receive(&first, 3).await;
    assert_eq!(got.iter().map(|m| m.1).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(got[0].2, b"e0");
    let mut commit = TopicPartitionList::new();
    commit.add_partition_offset("events", 0, Offset::Offset(3)).unwrap();
    first.commit(&commit, CommitMode::Sync).unwrap();
    let committed = server.offsets.fetch("resumers", "events", 0).await.unwrap().expect("committed");
    assert_eq!(committed.offset, 3);
    drop(first);

    let more = (5..8).map(|i| NewRecord::from_value(format!("e{i}"))).collect();
    server.store.append("events", 0, more).await.unwrap();
    let second = consumer(&server, "resumers");
    second.subscribe(&["events"]).unwrap();
    let got = receive(&second, 5).await;
    assert_eq!(got.iter().map(|m| m.1).collect::<Vec<_>>(), vec![3, 4, 5, 6, 7]);
    assert_eq!(got[4].2, b"e7");
    let position = second.committed(WAIT).unwrap();
    assert_eq!(position.find_partition("events", 0).unwrap().offset(), Offset::Offset(3));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_round_trips_through_produce_and_fetch() {
    let server = Server::start().await;
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("compressed-{codec}");
        server.create_topic(&topic, 1).await;
        let producer = producer(&server, &[("compression.type", codec), ("linger.ms", "50")]);
        let sends: Vec<_> = (0..50)
            .map(|i| {
                let value = format!("{codec} event {i} {}", "padding ".repeat(20));
                producer.send_result(FutureRecord::<(), _>::to(&topic).payload(&value)).expect("queued")
            })
            .collect();
        for send in sends {
            send.await.unwrap().map_err(|(e, _)| e).expect("delivered");
        }
        let records = read_all(&server, &topic, 0).await;
        assert_eq!(records.len(), 50, "{codec}");
        assert!(records[49].value.starts_with(format!("{codec} event 49").as_bytes()));

        let consumer = consumer(&server, &format!("reader-{codec}"));
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let got = receive(&consumer, 50).await;
        assert!(got[10].2.starts_with(format!("{codec} event 10").as_bytes()), "{codec}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producer_appends_every_record_exactly_once() {
    let server = Server::start().await;
    server.create_topic("idempotent", 3).await;
    let producer = producer(&server, &[("enable.idempotence", "true"), ("linger.ms", "5")]);
    let sends: Vec<_> = (0..300)
        .map(|i| {
            let value = format!("v{i}");
            let partition = i % 3;
            producer
                .send_result(FutureRecord::<(), _>::to("idempotent").partition(partition).payload(&value))
                .expect("queued")
        })
        .collect();
    for send in sends {
        send.await.unwrap().map_err(|(e, _)| e).expect("delivered");
    }
    producer.flush(WAIT).unwrap();
    for partition in 0..3 {
        let records = read_all(&server, "idempotent", partition).await;
        assert_eq!(records.len(), 100, "partition {partition}");
        let expected: Vec<String> = (0..100).map(|i| format!("v{}", i * 3 + partition)).collect();
        let values: Vec<String> =
            records.iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()).collect();
        assert_eq!(values, expected);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_watermarks_and_offsets_for_times_answer_like_kafka() {
    let server = Server::start().await;
    server.create_topic("listed", 2).await;
    let records = (0..4)
        .map(|i| NewRecord { timestamp_ms: Some(1_000 * (i + 1)), ..NewRecord::from_value(format!("r{i}")) })
        .collect();
    server.store.append("listed", 1, records).await.unwrap();
    let consumer = consumer(&server, "lister");
    let metadata = tokio::task::block_in_place(|| consumer.fetch_metadata(None, WAIT)).unwrap();
    let topic = metadata.topics().iter().find(|t| t.name() == "listed").expect("listed");
    assert_eq!(topic.partitions().len(), 2);
    assert_eq!(metadata.brokers()[0].port(), i32::from(server.addr.port()));

    let missing = tokio::task::block_in_place(|| consumer.fetch_metadata(Some("absent"), WAIT)).unwrap();
    assert!(missing.topics()[0].error().is_some(), "unknown topics are not auto-created");

    let (low, high) = tokio::task::block_in_place(|| consumer.fetch_watermarks("listed", 1, WAIT)).unwrap();
    assert_eq!((low, high), (0, 4));
    let mut query = TopicPartitionList::new();
    query.add_partition_offset("listed", 1, Offset::Offset(2_500)).unwrap();
    let found = tokio::task::block_in_place(|| consumer.offsets_for_times(query, WAIT)).unwrap();
    assert_eq!(found.find_partition("listed", 1).unwrap().offset(), Offset::Offset(2));
    server.stop().await;
}
