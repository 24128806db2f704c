//! The topic catalogue over Kafka: validation refusals (INVALID_RECORD with the violations in the message),
//! read-only topics (POLICY_VIOLATION), and idempotent publish shared with HTTP: the same `event_id` published
//! over HTTP and then over Kafka is stored once.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use bytes::{Bytes, BytesMut};
use esgf_events_catalogue::{Catalogue, SettingsChange};
use esgf_events_engine::{EmbeddedConfig, EmbeddedStore, LogStore, ReadLimits, SystemClock, TopicConfig};
use esgf_events_kafka::codec::{Request, Response};
use esgf_events_kafka::{Broker, KafkaConfig, KafkaContext, Session};
use esgf_events_meta::offsets::GroupOffsets;
use esgf_events_meta::{MetaStore, RedbMetaStore};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use tower::ServiceExt;

struct Fixture {
    broker: Broker,
    store: Arc<dyn LogStore>,
    catalogue: Arc<Catalogue>,
    http: axum::Router,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LogStore> = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("log")), Arc::new(SystemClock)).unwrap(),
    );
    store.create_topic("t", TopicConfig { partitions: 1, ..TopicConfig::default() }).await.unwrap();
    let meta: Arc<dyn MetaStore> = Arc::new(RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap());
    let catalogue = Arc::new(Catalogue::open(Arc::clone(&meta), Arc::new(SystemClock), None).await.unwrap());
    let ctx = KafkaContext {
        store: Arc::clone(&store),
        auth: None,
        offsets: GroupOffsets::new(Arc::clone(&meta)),
        config: KafkaConfig::default(),
        catalogue: Some(Arc::clone(&catalogue)),
    };
    let http = esgf_events_http::app(&esgf_events_http::Server {
        store: Arc::clone(&store),
        auth: None,
        config: esgf_events_http::HttpConfig::default(),
        tls: None,
        offsets: None,
        webhooks: None,
        ops: Default::default(),
        catalogue: Some(Arc::clone(&catalogue)),
        cluster: None,
    });
    Fixture { broker: Broker::new(ctx), store, catalogue, http, _dir: dir }
}

fn header(version: i16) -> RequestHeader {
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Produce as i16;
    header.request_api_version = version;
    header.correlation_id = 7;
    header
}

fn produce(values: &[String]) -> Request {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(v.clone())),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions { version: 2, compression: Compression::None },
    )
    .unwrap();
    let mut p = produce_request::PartitionProduceData::default();
    p.index = 0;
    p.records = Some(buf.freeze());
    let mut t = produce_request::TopicProduceData::default();
    t.name = TopicName(StrBytes::from_static_str("t"));
    t.partition_data = vec![p];
    let mut request = ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = 1000;
    request.topic_data = vec![t];
    Request::Produce(request)
}

/// (error code, base offset, error message).
async fn send(f: &Fixture, values: &[String]) -> (i16, i64, Option<String>) {
    let mut session = Session::new(None);
    match f.broker.handle(&mut session, &header(9), produce(values)).await {
        Some(Response::Produce(r)) => {
            let p = &r.responses[0].partition_responses[0];
            (p.error_code, p.base_offset, p.error_message.as_ref().map(|m| m.to_string()))
        }
        other => panic!("{other:?}"),
    }
}

fn event(item: Option<&str>, event_id: Option<&str>) -> String {
    let mut e = serde_json::json!({"metadata": {}, "data": {"type": "STAC", "payload": {
        "method": "POST", "collection_id": "CMIP6", "item": {}}}});
    if let Some(item) = item {
        e["data"]["payload"]["item"]["id"] = item.into();
    }
    if let Some(id) = event_id {
        e["metadata"]["event_id"] = id.into();
    }
    e.to_string()
}

async fn stored(f: &Fixture) -> usize {
    let limits = ReadLimits { max_records: 1000, max_bytes: usize::MAX };
    f.store.read("t", 0, 0, limits).await.unwrap().records.len()
}

fn change(json: serde_json::Value) -> SettingsChange {
    let serde_json::Value::Object(mut map) = json else { panic!() };
    SettingsChange::take_from(&mut map).unwrap()
}

#[tokio::test]
async fn invalid_records_are_refused_with_invalid_record_and_the_violations_in_the_message() {
    let f = fixture().await;
    f.catalogue.update("t", &change(serde_json::json!({"validation": "esgf-envelope"})), "op").await.unwrap();
    let (code, offset, message) = send(&f, &[event(Some("a"), None), event(None, None)]).await;
    assert_eq!((code, offset), (87, -1), "INVALID_RECORD");
    let message = message.unwrap_or_default();
    assert!(message.contains("event 1 at /data/payload/item/id: is required"), "{message}");
    assert_eq!(stored(&f).await, 0, "nothing of the refused batch appended");
    assert_eq!(send(&f, &[event(Some("a"), None)]).await.0, 0);
}

#[tokio::test]
async fn read_only_topics_refuse_produce_with_policy_violation() {
    let f = fixture().await;
    f.catalogue.update("t", &change(serde_json::json!({"state": "read-only"})), "op").await.unwrap();
    let (code, _, message) = send(&f, &[event(Some("a"), None)]).await;
    assert_eq!(code, 44, "POLICY_VIOLATION");
    assert!(message.unwrap_or_default().contains("read-only"));
}

#[tokio::test]
async fn same_event_id_over_http_then_kafka_is_stored_once() {
    let f = fixture().await;
    let request = HttpRequest::post("/v1/topics/t/events")
        .body(Body::from(event(Some("CMIP6.x"), Some("e-42"))))
        .unwrap();
    let response = f.http.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let (code, offset, _) = send(&f, &[event(Some("CMIP6.x"), Some("e-42"))]).await;
    assert_eq!((code, offset), (0, 0), "the original offset, nothing appended");
    assert_eq!(stored(&f).await, 1);

    // A batch mixing a new id and the old one appends only the new one.
    let (code, offset, _) =
        send(&f, &[event(Some("CMIP6.y"), Some("e-43")), event(Some("CMIP6.x"), Some("e-42"))]).await;
    assert_eq!((code, offset), (0, 1));
    assert_eq!(stored(&f).await, 2);

    // And back over HTTP: a duplicate of what Kafka published.
    let request = HttpRequest::post("/v1/topics/t/events")
        .body(Body::from(event(Some("CMIP6.y"), Some("e-43"))))
        .unwrap();
    let response = f.http.clone().oneshot(request).await.unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["results"], serde_json::json!([{"partition": 0, "offset": 1, "duplicate": true}]));
}
