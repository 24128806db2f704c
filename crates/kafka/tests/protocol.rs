//! The protocol handler driven directly (no sockets): every API at every advertised version, idempotent
//! retries, the group state machine, publish-rate refusals.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::Server;
use esgf_events_auth::{Auth, AuthConfig, PrincipalUpdate, RateSpec, Role};
use esgf_events_engine::{EmbeddedConfig, EmbeddedStore, LogStore, NewRecord, SystemClock, TopicConfig};
use esgf_events_kafka::codec::{self, Request, Response, SUPPORTED};
use esgf_events_kafka::{Broker, KafkaConfig, KafkaContext, Session};
use esgf_events_meta::RedbMetaStore;
use esgf_events_meta::offsets::GroupOffsets;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

fn s(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

struct Fixture {
    broker: Arc<Broker>,
    store: Arc<dyn LogStore>,
    auth: Option<Arc<Auth>>,
    _dir: tempfile::TempDir,
}

async fn fixture(with_auth: bool) -> Fixture {
    fixture_with(with_auth, KafkaConfig::default()).await
}

async fn fixture_with(with_auth: bool, config: KafkaConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LogStore> = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("log")), Arc::new(SystemClock)).unwrap(),
    );
    store.create_topic("t", TopicConfig { partitions: 2, ..TopicConfig::default() }).await.unwrap();
    let meta = Arc::new(RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap());
    let auth = if with_auth {
        let auth = Auth::open(meta.clone(), AuthConfig::default()).await.unwrap();
        auth.bootstrap_operator(&dir.path().join("op"), Some(common::OPERATOR_TOKEN)).await.unwrap();
        Some(Arc::new(auth))
    } else {
        None
    };
    let ctx = KafkaContext {
        store: Arc::clone(&store),
        auth: auth.clone(),
        offsets: GroupOffsets::new(meta),
        config,
        catalogue: None,
    };
    Fixture { broker: Arc::new(Broker::new(ctx)), store, auth, _dir: dir }
}

fn header(key: ApiKey, version: i16) -> RequestHeader {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = 42;
    header.client_id = Some(s("protocol-test"));
    header
}

/// Encodes `body` as a client would, decodes it as the endpoint does, handles it and encodes the answer.
async fn round_trip(
    broker: &Broker,
    session: &mut Session,
    key: ApiKey,
    version: i16,
    body: &impl Encodable,
) -> Option<Response> {
    let header = header(key, version);
    let mut buf = BytesMut::new();
    header.encode(&mut buf, key.request_header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap_or_else(|e| panic!("{key:?} v{version} request: {e}"));
    let (header, request) =
        codec::decode_request(buf.freeze()).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
    let response = broker.handle(session, &header, request).await?;
    codec::encode_response(key, version, 42, &response).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
    Some(response)
}

fn batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    values: &[&'static str],
    compression: Compression,
) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base_sequence + i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from_static(v.as_bytes())),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression })
        .unwrap();
    buf.freeze()
}

fn produce_request(partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    let mut p = produce_request::PartitionProduceData::default();
    p.index = partition;
    p.records = Some(records);
    let mut t = produce_request::TopicProduceData::default();
    t.name = TopicName(s("t"));
    t.partition_data = vec![p];
    let mut request = ProduceRequest::default();
    request.acks = acks;
    request.timeout_ms = 1000;
    request.topic_data = vec![t];
    request
}

fn produced(response: Option<Response>) -> (i16, i64) {
    match response {
        Some(Response::Produce(r)) => {
            let p = &r.responses[0].partition_responses[0];
            (p.error_code, p.base_offset)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn every_api_answers_at_every_advertised_version() {
    let f = fixture(false).await;
    for &(key, min, max) in SUPPORTED {
        for version in min..=max {
            let mut session = Session::new(None);
            match key {
                ApiKey::ApiVersions => {
                    round_trip(&f.broker, &mut session, key, version, &ApiVersionsRequest::default()).await;
                }
                ApiKey::Metadata => {
                    let mut request = MetadataRequest::default();
                    let mut topic = metadata_request::MetadataRequestTopic::default();
                    topic.name = Some(TopicName(s("t")));
                    let mut missing = topic.clone();
                    missing.name = Some(TopicName(s("absent")));
                    request.topics = Some(vec![topic, missing]);
                    let Some(Response::Metadata(r)) =
                        round_trip(&f.broker, &mut session, key, version, &request).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.topics[0].partitions.len(), 2, "v{version}");
                    assert_eq!(r.topics[1].error_code, 3, "v{version}");
                }
                ApiKey::Produce => {
                    let request = produce_request(0, batch(-1, -1, -1, &["a"], Compression::None), -1);
                    let (error, _) =
                        produced(round_trip(&f.broker, &mut session, key, version, &request).await);
                    assert_eq!(error, 0, "v{version}");
                }
                ApiKey::Fetch => {
                    let mut p = fetch_request::FetchPartition::default();
                    p.partition = 0;
                    p.partition_max_bytes = 1 << 20;
                    let mut t = fetch_request::FetchTopic::default();
                    t.topic = TopicName(s("t"));
                    t.partitions = vec![p];
                    let mut request = FetchRequest::default();
                    request.max_bytes = 1 << 20;
                    request.topics = vec![t];
                    let Some(Response::Fetch(r)) =
                        round_trip(&f.broker, &mut session, key, version, &request).await
                    else {
                        panic!()
                    };
                    assert!(r.responses[0].partitions[0].records.as_ref().is_some_and(|b| !b.is_empty()));
                }
                ApiKey::ListOffsets => {
                    let mut p = list_offsets_request::ListOffsetsPartition::default();
                    p.timestamp = -1;
                    let mut t = list_offsets_request::ListOffsetsTopic::default();
                    t.name = TopicName(s("t"));
                    t.partitions = vec![p];
                    let mut request = ListOffsetsRequest::default();
                    request.topics = vec![t];
                    round_trip(&f.broker, &mut session, key, version, &request).await;
                }
                ApiKey::FindCoordinator => {
                    let mut request = FindCoordinatorRequest::default();
                    if version >= 4 {
                        request.coordinator_keys = vec![s("g")];
                    } else {
                        request.key = s("g");
                    }
                    round_trip(&f.broker, &mut session, key, version, &request).await;
                }
                ApiKey::JoinGroup => {
                    let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
                    protocol.name = s("range");
                    let mut request = JoinGroupRequest::default();
                    request.group_id = GroupId(StrBytes::from_string(format!("g-join-{version}")));
                    request.session_timeout_ms = 10_000;
                    request.rebalance_timeout_ms = if version >= 1 { 10_000 } else { -1 };
                    request.protocol_type = s("consumer");
                    request.protocols = vec![protocol];
                    let Some(Response::JoinGroup(r)) =
                        round_trip(&f.broker, &mut session, key, version, &request).await
                    else {
                        panic!()
                    };
                    assert_eq!((r.error_code, r.generation_id), (0, 1), "v{version}");
                    assert_eq!(r.leader, r.member_id);
                }
                ApiKey::SyncGroup | ApiKey::Heartbeat | ApiKey::LeaveGroup => {
                    // Unknown member of an unknown group: an answer, not a failure to encode one.
                    let response = match key {
                        ApiKey::SyncGroup => {
                            let mut r = SyncGroupRequest::default();
                            r.group_id = GroupId(s("nobody"));
                            round_trip(&f.broker, &mut session, key, version, &r).await
                        }
                        ApiKey::Heartbeat => {
                            let mut r = HeartbeatRequest::default();
                            r.group_id = GroupId(s("nobody"));
                            round_trip(&f.broker, &mut session, key, version, &r).await
                        }
                        _ => {
                            let mut r = LeaveGroupRequest::default();
                            r.group_id = GroupId(s("nobody"));
                            if version >= 3 {
                                r.members = vec![leave_group_request::MemberIdentity::default()];
                            }
                            round_trip(&f.broker, &mut session, key, version, &r).await
                        }
                    };
                    assert!(response.is_some());
                }
                ApiKey::OffsetCommit => {
                    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
                    p.committed_offset = 1;
                    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
                    t.name = TopicName(s("t"));
                    t.partitions = vec![p];
                    let mut request = OffsetCommitRequest::default();
                    request.group_id = GroupId(s("simple"));
                    request.generation_id_or_member_epoch = -1;
                    request.topics = vec![t];
                    let Some(Response::OffsetCommit(r)) =
                        round_trip(&f.broker, &mut session, key, version, &request).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.topics[0].partitions[0].error_code, 0, "v{version}");
                }
                ApiKey::OffsetFetch => {
                    let mut request = OffsetFetchRequest::default();
                    if version >= 8 {
                        let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
                        g.group_id = GroupId(s("simple"));
                        g.topics = None;
                        request.groups = vec![g];
                    } else {
                        let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
                        t.name = TopicName(s("t"));
                        t.partition_indexes = vec![0, 1];
                        request.group_id = GroupId(s("simple"));
                        request.topics = Some(vec![t]);
                    }
                    round_trip(&f.broker, &mut session, key, version, &request).await;
                }
                ApiKey::InitProducerId => {
                    let mut request = InitProducerIdRequest::default();
                    request.transactional_id = None;
                    let Some(Response::InitProducerId(r)) =
                        round_trip(&f.broker, &mut session, key, version, &request).await
                    else {
                        panic!()
                    };
                    assert!(r.producer_id.0 >= 0);
                }
                ApiKey::CreateTopics => {
                    let mut t = create_topics_request::CreatableTopic::default();
                    t.name = TopicName(StrBytes::from_string(format!("created-{version}")));
                    t.num_partitions = 3;
                    t.replication_factor = 1;
                    let mut request = CreateTopicsRequest::default();
                    request.topics = vec![t];
                    let Some(Response::CreateTopics(r)) =
                        round_trip(&f.broker, &mut session, key, version, &request).await
                    else {
                        panic!()
                    };
                    assert_eq!(r.topics[0].error_code, 0, "v{version}");
                }
                ApiKey::DescribeConfigs => {
                    let mut resource = describe_configs_request::DescribeConfigsResource::default();
                    resource.resource_type = 2;
                    resource.resource_name = s("t");
                    resource.configuration_keys = None;
                    let mut request = DescribeConfigsRequest::default();
                    request.resources = vec![resource];
                    round_trip(&f.broker, &mut session, key, version, &request).await;
                }
                ApiKey::SaslHandshake => {
                    let mut request = SaslHandshakeRequest::default();
                    request.mechanism = s("PLAIN");
                    round_trip(&f.broker, &mut session, key, version, &request).await;
                }
                ApiKey::SaslAuthenticate => {
                    round_trip(&f.broker, &mut session, key, version, &SaslAuthenticateRequest::default())
                        .await;
                }
                other => panic!("no case for {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_retried_idempotent_batch_is_acknowledged_with_its_original_offset_and_stored_once() {
    let f = fixture(false).await;
    let mut session = Session::new(None);
    let init = Request::InitProducerId(InitProducerIdRequest::default().with_transactional_id(None));
    let Some(Response::InitProducerId(id)) =
        f.broker.handle(&mut session, &header(ApiKey::InitProducerId, 4), init).await
    else {
        panic!()
    };
    let (pid, epoch) = (id.producer_id.0, id.producer_epoch);
    let first = batch(pid, epoch, 0, &["a", "b"], Compression::Snappy);
    let h = header(ApiKey::Produce, 9);
    let send = |records: Bytes| Request::Produce(produce_request(1, records, -1));
    let mut session = Session::new(None);
    assert_eq!(produced(f.broker.handle(&mut session, &h, send(first.clone())).await), (0, 0));
    assert_eq!(
        produced(
            f.broker.handle(&mut session, &h, send(batch(pid, epoch, 2, &["c"], Compression::None))).await
        ),
        (0, 2)
    );
    // The retry of the first batch: same sequence numbers, same answer, nothing appended.
    assert_eq!(produced(f.broker.handle(&mut session, &h, send(first)).await), (0, 0));
    assert_eq!(f.store.offsets("t", 1).await.unwrap().latest, 3);
    // A gap in sequence numbers is refused.
    let gap = batch(pid, epoch, 7, &["x"], Compression::None);
    assert_eq!(produced(f.broker.handle(&mut session, &h, send(gap)).await).0, 45);
    assert_eq!(f.store.offsets("t", 1).await.unwrap().latest, 3);
}

#[tokio::test]
async fn acks_zero_gets_no_response_but_is_appended() {
    let f = fixture(false).await;
    let mut session = Session::new(None);
    let request = Request::Produce(produce_request(0, batch(-1, -1, -1, &["quiet"], Compression::Lz4), 0));
    assert!(f.broker.handle(&mut session, &header(ApiKey::Produce, 7), request).await.is_none());
    assert_eq!(f.store.offsets("t", 0).await.unwrap().latest, 1);
}

#[tokio::test]
async fn fetching_past_the_end_is_offset_out_of_range_with_the_bounds() {
    let f = fixture(false).await;
    f.store.append("t", 0, vec![NewRecord::from_value("x")]).await.unwrap();
    let mut p = fetch_request::FetchPartition::default();
    p.fetch_offset = 5;
    p.partition_max_bytes = 1000;
    let mut t = fetch_request::FetchTopic::default();
    t.topic = TopicName(s("t"));
    t.partitions = vec![p];
    let mut request = FetchRequest::default();
    request.max_wait_ms = 10_000;
    request.min_bytes = 1;
    request.max_bytes = 1000;
    request.topics = vec![t];
    let mut session = Session::new(None);
    let started = std::time::Instant::now();
    let Some(Response::Fetch(r)) =
        f.broker.handle(&mut session, &header(ApiKey::Fetch, 12), Request::Fetch(request)).await
    else {
        panic!()
    };
    let partition = &r.responses[0].partitions[0];
    assert_eq!((partition.error_code, partition.high_watermark, partition.log_start_offset), (1, 1, 0));
    assert!(started.elapsed() < Duration::from_secs(5), "errors answer at once, without long polling");
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_record_arrives() {
    let f = fixture(false).await;
    let mut p = fetch_request::FetchPartition::default();
    p.partition_max_bytes = 1000;
    let mut t = fetch_request::FetchTopic::default();
    t.topic = TopicName(s("t"));
    t.partitions = vec![p];
    let mut request = FetchRequest::default();
    request.max_wait_ms = 20_000;
    request.min_bytes = 1;
    request.max_bytes = 1000;
    request.topics = vec![t];
    let broker = Arc::clone(&f.broker);
    let poll = tokio::spawn(async move {
        let mut session = Session::new(None);
        broker.handle(&mut session, &header(ApiKey::Fetch, 11), Request::Fetch(request)).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    f.store.append("t", 0, vec![NewRecord::from_value("late")]).await.unwrap();
    let Some(Response::Fetch(r)) = poll.await.unwrap() else { panic!() };
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(r.responses[0].partitions[0].records.as_ref().is_some_and(|b| !b.is_empty()));
}

fn join(group: &'static str, member: &str) -> Request {
    let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
    protocol.name = s("range");
    protocol.metadata = Bytes::from_static(b"subscription");
    let mut request = JoinGroupRequest::default();
    request.group_id = GroupId(s(group));
    request.session_timeout_ms = 10_000;
    request.rebalance_timeout_ms = 10_000;
    request.member_id = StrBytes::from_string(member.to_owned());
    request.protocol_type = s("consumer");
    request.protocols = vec![protocol];
    Request::JoinGroup(request)
}

async fn joined(broker: &Broker, group: &'static str, member: &str) -> JoinGroupResponse {
    let mut session = Session::new(None);
    match broker.handle(&mut session, &header(ApiKey::JoinGroup, 7), join(group, member)).await {
        Some(Response::JoinGroup(r)) => r,
        other => panic!("{other:?}"),
    }
}

async fn heartbeat(broker: &Broker, group: &'static str, member: &StrBytes, generation: i32) -> i16 {
    let mut request = HeartbeatRequest::default();
    request.group_id = GroupId(s(group));
    request.member_id = member.clone();
    request.generation_id = generation;
    let mut session = Session::new(None);
    match broker.handle(&mut session, &header(ApiKey::Heartbeat, 4), Request::Heartbeat(request)).await {
        Some(Response::Heartbeat(r)) => r.error_code,
        other => panic!("{other:?}"),
    }
}

async fn sync(
    broker: &Broker,
    group: &'static str,
    member: &StrBytes,
    generation: i32,
    assignments: Vec<(StrBytes, &'static [u8])>,
) -> SyncGroupResponse {
    let mut request = SyncGroupRequest::default();
    request.group_id = GroupId(s(group));
    request.member_id = member.clone();
    request.generation_id = generation;
    request.assignments = assignments
        .into_iter()
        .map(|(id, bytes)| {
            let mut a = sync_group_request::SyncGroupRequestAssignment::default();
            a.member_id = id;
            a.assignment = Bytes::from_static(bytes);
            a
        })
        .collect();
    let mut session = Session::new(None);
    match broker.handle(&mut session, &header(ApiKey::SyncGroup, 3), Request::SyncGroup(request)).await {
        Some(Response::SyncGroup(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_second_member_triggers_a_rebalance_and_the_leaders_assignment_is_passed_through() {
    let f = fixture(false).await;
    let first = joined(&f.broker, "g", "").await;
    assert_eq!((first.error_code, first.generation_id, first.members.len()), (0, 1, 1));
    let a = first.member_id.clone();
    let s1 = sync(&f.broker, "g", &a, 1, vec![(a.clone(), b"all")]).await;
    assert_eq!(&s1.assignment[..], b"all");
    assert_eq!(heartbeat(&f.broker, "g", &a, 1).await, 0);

    // A second member joins: it waits until the first rejoins; the first learns of it from its heartbeat.
    let broker = Arc::clone(&f.broker);
    let second = tokio::spawn(async move { joined(&broker, "g", "").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(heartbeat(&f.broker, "g", &a, 1).await, 27, "REBALANCE_IN_PROGRESS");
    let rejoined = joined(&f.broker, "g", &a).await;
    let second = second.await.unwrap();
    assert_eq!((rejoined.generation_id, second.generation_id), (2, 2));
    assert_eq!(rejoined.leader, a, "the existing leader stays leader");
    assert_eq!(rejoined.members.len(), 2, "the leader sees every member");
    assert!(second.members.is_empty(), "followers see none");
    let b = second.member_id.clone();

    // The follower's sync waits for the leader's assignment.
    let broker = Arc::clone(&f.broker);
    let b2 = b.clone();
    let follower = tokio::spawn(async move { sync(&broker, "g", &b2, 2, Vec::new()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let leader = sync(&f.broker, "g", &a, 2, vec![(a.clone(), b"p0"), (b.clone(), b"p1")]).await;
    assert_eq!(&leader.assignment[..], b"p0");
    assert_eq!(&follower.await.unwrap().assignment[..], b"p1");
    assert_eq!(heartbeat(&f.broker, "g", &a, 1).await, 22, "ILLEGAL_GENERATION");
    assert_eq!(heartbeat(&f.broker, "g", &s("stranger"), 2).await, 25, "UNKNOWN_MEMBER_ID");

    // The follower leaves: the leader rebalances alone into generation 3.
    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(s("g"));
    leave.member_id = b.clone();
    let mut session = Session::new(None);
    let Some(Response::LeaveGroup(left)) =
        f.broker.handle(&mut session, &header(ApiKey::LeaveGroup, 2), Request::LeaveGroup(leave)).await
    else {
        panic!()
    };
    assert_eq!(left.error_code, 0);
    assert_eq!(heartbeat(&f.broker, "g", &a, 2).await, 27);
    let alone = joined(&f.broker, "g", &a).await;
    assert_eq!((alone.generation_id, alone.members.len()), (3, 1));
}

#[tokio::test]
async fn a_member_that_stops_heartbeating_is_removed_when_its_session_expires() {
    let f = fixture(false).await;
    let mut request = match join("slow", "") {
        Request::JoinGroup(r) => r,
        _ => unreachable!(),
    };
    request.session_timeout_ms = 1_000;
    let mut session = Session::new(None);
    let Some(Response::JoinGroup(first)) =
        f.broker.handle(&mut session, &header(ApiKey::JoinGroup, 5), Request::JoinGroup(request)).await
    else {
        panic!()
    };
    let a = first.member_id.clone();
    sync(&f.broker, "slow", &a, 1, vec![(a.clone(), b"x")]).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    f.broker.tick();
    assert_eq!(heartbeat(&f.broker, "slow", &a, 1).await, 25);
}

#[tokio::test]
async fn a_producer_over_its_rate_gets_throttled_and_nothing_is_appended() {
    let f = fixture(true).await;
    let auth = f.auth.as_ref().unwrap();
    let operator = auth.authenticate_bearer(common::OPERATOR_TOKEN).await.unwrap();
    let registration = esgf_events_auth::Registration {
        name: "slow".into(),
        topics: vec!["t".into()],
        rate: None,
        contact: None,
        oidc: Vec::new(),
    };
    let (_, secret) = auth.register(Role::Producer, registration, &operator).await.unwrap();
    let rate = RateSpec { events_per_second: 1, burst: 2, bytes_per_second: None, burst_bytes: None };
    let update = PrincipalUpdate { rate: Some(Some(rate)), ..PrincipalUpdate::default() };
    auth.update(Role::Producer, "slow", update, &operator).await.unwrap();

    let mut session = Session::new(None);
    // Before authenticating, a produce request closes the connection.
    let early = Request::Produce(produce_request(0, batch(-1, -1, -1, &["a"], Compression::None), -1));
    assert!(f.broker.handle(&mut session, &header(ApiKey::Produce, 9), early).await.is_none());
    assert!(session.closing());

    let mut session = Session::new(None);
    let mut handshake = SaslHandshakeRequest::default();
    handshake.mechanism = s("PLAIN");
    f.broker.handle(&mut session, &header(ApiKey::SaslHandshake, 1), Request::SaslHandshake(handshake)).await;
    let token = format!("\0slow\0{}", secret.expose());
    let authenticate = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
    let Some(Response::SaslAuthenticate(authenticated)) = f
        .broker
        .handle(&mut session, &header(ApiKey::SaslAuthenticate, 2), Request::SaslAuthenticate(authenticate))
        .await
    else {
        panic!()
    };
    assert_eq!(authenticated.error_code, 0);

    let h = header(ApiKey::Produce, 9);
    let two = Request::Produce(produce_request(0, batch(-1, -1, -1, &["a", "b"], Compression::None), -1));
    assert_eq!(produced(f.broker.handle(&mut session, &h, two).await), (0, 0));
    let three =
        Request::Produce(produce_request(0, batch(-1, -1, -1, &["c", "d", "e"], Compression::None), -1));
    let Some(Response::Produce(refused)) = f.broker.handle(&mut session, &h, three).await else { panic!() };
    assert_eq!(refused.responses[0].partition_responses[0].error_code, 89, "THROTTLING_QUOTA_EXCEEDED");
    assert!(refused.throttle_time_ms > 0);
    assert_eq!(f.store.offsets("t", 0).await.unwrap().latest, 2, "nothing of the refused request appended");
}

#[tokio::test]
async fn the_server_answers_an_unsupported_api_versions_version_with_its_list() {
    let server = Server::start().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut frame = BytesMut::new();
    header(ApiKey::ApiVersions, 3).encode(&mut frame, 2).unwrap();
    ApiVersionsRequest::default().encode(&mut frame, 3).unwrap();
    frame[2..4].copy_from_slice(&99i16.to_be_bytes());
    let mut wire = (frame.len() as i32).to_be_bytes().to_vec();
    wire.extend_from_slice(&frame);
    stream.write_all(&wire).await.unwrap();
    let len = stream.read_i32().await.unwrap();
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(i32::from_be_bytes(body[0..4].try_into().unwrap()), 42, "correlation id");
    assert_eq!(i16::from_be_bytes(body[4..6].try_into().unwrap()), 35, "UNSUPPORTED_VERSION");
    // An oversized frame closes the connection.
    stream.write_all(&i32::MAX.to_be_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    server.stop().await;
}

#[tokio::test]
async fn anonymous_clients_read_public_topics_only_and_get_authorization_codes_for_the_rest() {
    let config = KafkaConfig { allow_anonymous_public_read: true, ..KafkaConfig::default() };
    let f = fixture_with(true, config).await;
    f.store.create_topic("private", TopicConfig::default()).await.unwrap();
    f.store.append("t", 0, vec![NewRecord::from_value("public event")]).await.unwrap();
    let auth = f.auth.as_ref().unwrap();
    let operator = auth.authenticate_bearer(common::OPERATOR_TOKEN).await.unwrap();
    auth.set_topic_public("t", true, &operator).await.unwrap();

    let mut session = Session::new(None);
    let fetch = |topic: &'static str| {
        let mut p = fetch_request::FetchPartition::default();
        p.partition_max_bytes = 1000;
        let mut t = fetch_request::FetchTopic::default();
        t.topic = TopicName(s(topic));
        t.partitions = vec![p];
        let mut request = FetchRequest::default();
        request.max_bytes = 1000;
        request.topics = vec![t];
        Request::Fetch(request)
    };
    let Some(Response::Fetch(public)) =
        f.broker.handle(&mut session, &header(ApiKey::Fetch, 12), fetch("t")).await
    else {
        panic!()
    };
    assert_eq!(public.responses[0].partitions[0].error_code, 0);
    assert!(public.responses[0].partitions[0].records.as_ref().is_some_and(|r| !r.is_empty()));
    let Some(Response::Fetch(private)) =
        f.broker.handle(&mut session, &header(ApiKey::Fetch, 12), fetch("private")).await
    else {
        panic!()
    };
    assert_eq!(private.responses[0].partitions[0].error_code, 29, "TOPIC_AUTHORIZATION_FAILED");

    let Some(Response::Metadata(listed)) = f
        .broker
        .handle(
            &mut session,
            &header(ApiKey::Metadata, 12),
            Request::Metadata(MetadataRequest::default().with_topics(None)),
        )
        .await
    else {
        panic!()
    };
    let names: Vec<String> =
        listed.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect();
    assert_eq!(names, vec!["t".to_owned()], "only public topics are listed to anonymous clients");

    let Some(Response::JoinGroup(join)) =
        f.broker.handle(&mut session, &header(ApiKey::JoinGroup, 7), join("anon", "")).await
    else {
        panic!()
    };
    assert_eq!(join.error_code, 30, "GROUP_AUTHORIZATION_FAILED");
    let produce = Request::Produce(produce_request(0, batch(-1, -1, -1, &["x"], Compression::None), -1));
    assert_eq!(produced(f.broker.handle(&mut session, &header(ApiKey::Produce, 9), produce).await).0, 29);
    assert!(!session.closing());
}
