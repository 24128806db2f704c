//! Maintenance windows over Kafka, with librdkafka: during a window a produce is answered with a retriable error,
//! which the client retries by itself, so the record lands once the window ends; records acknowledged before
//! the window are all there.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Server;
use esgf_events_engine::{ManualClock, ReadLimits};
use esgf_events_kafka::KafkaConfig;
use esgf_events_meta::RedbMetaStore;
use esgf_events_ops::{Maintenance, MaintenanceMode, MaintenanceState, NewWindow};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const NOW_MS: i64 = 1_764_547_200_000;
const HOUR_MS: i64 = 3_600_000;
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn produce_during_a_window_is_retried_by_the_client_and_lands_after_it() {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let meta = Arc::new(RedbMetaStore::open(&state_dir.path().join("state.redb")).expect("meta"));
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let state = MaintenanceState::new(clock.clone());
    let maintenance = Maintenance::open(meta, Arc::clone(&state), Duration::ZERO).await.expect("open");
    let window = maintenance
        .schedule(NewWindow {
            starts_at_ms: NOW_MS + HOUR_MS,
            ends_at_ms: NOW_MS + 2 * HOUR_MS,
            mode: MaintenanceMode::ReadOnly,
            message: "storage migration".to_owned(),
            announcement: Some("https://example.org/a/1".to_owned()),
            force: false,
        })
        .await
        .expect("window");
    let server = Server::start_with(KafkaConfig { maintenance: Some(state), ..KafkaConfig::default() }).await;
    server.create_topic("t", 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("message.timeout.ms", "60000")
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "200")
        .create()
        .expect("producer");

    producer
        .send(FutureRecord::<(), _>::to("t").payload("before"), WAIT)
        .await
        .map_err(|(e, _)| e)
        .expect("acknowledged before");

    clock.set_ms(window.starts_at_ms);
    let mut during = {
        let producer = producer.clone();
        tokio::spawn(
            async move { producer.send(FutureRecord::<(), _>::to("t").payload("during"), WAIT).await },
        )
    };
    // Refused while the window lasts: the send stays pending (retried), and nothing new is appended.
    let still_pending = tokio::time::timeout(Duration::from_secs(1), &mut during).await.is_err();
    assert!(still_pending, "a produce during the window must not be acknowledged");
    let read =
        server.store.read("t", 0, 0, ReadLimits { max_records: 10, max_bytes: 1 << 20 }).await.expect("read");
    assert_eq!(read.records.len(), 1);

    clock.set_ms(window.ends_at_ms);
    let delivery = during.await.expect("task").map_err(|(e, _)| e).expect("delivered after the window");
    assert_eq!((delivery.partition, delivery.offset), (0, 1));
    let read =
        server.store.read("t", 0, 0, ReadLimits { max_records: 10, max_bytes: 1 << 20 }).await.expect("read");
    let values: Vec<&[u8]> = read.records.iter().map(|r| r.value.as_ref()).collect();
    assert_eq!(values, vec![b"before".as_slice(), b"during".as_slice()]);
    server.stop().await;
}
