//! The broker's answers under a [`Cluster`] view: who is named coordinator and broker, and how group requests are
//! refused on a node that does not coordinate. In process, on stores that refuse everything: none of these
//! answers may need the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use esgf_events_engine::{
    AppendOutcome, LogStore, NewRecord, PartitionOffsets, ReadLimits, ReadResult, Retention, RetentionReport,
    StoreError, TopicConfig, TopicInfo,
};
use esgf_events_meta::MetaStore;
use esgf_events_meta::offsets::GroupOffsets;
use esgf_events_meta::testing::{MemoryMetaStore, Severable};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::cluster::{Cluster, KafkaNode};
use crate::codec::{Request, Response};
use crate::{Broker, KafkaConfig, KafkaContext, Session};

/// A log that knows every topic as 3 partitions and refuses everything else.
struct NoLog;

fn refused() -> StoreError {
    StoreError::Backend("no store in this test".into())
}

#[async_trait]
impl LogStore for NoLog {
    async fn create_topic(&self, _: &str, _: TopicConfig) -> Result<TopicInfo, StoreError> {
        Err(refused())
    }
    async fn delete_topic(&self, _: &str) -> Result<(), StoreError> {
        Err(refused())
    }
    async fn list_topics(&self) -> Result<Vec<TopicInfo>, StoreError> {
        Err(refused())
    }
    async fn describe_topic(&self, name: &str) -> Result<TopicInfo, StoreError> {
        Ok(TopicInfo { name: name.to_owned(), partitions: 3, retention: Retention::DEFAULT, created_ms: 0 })
    }
    async fn set_retention(&self, _: &str, _: Retention) -> Result<TopicInfo, StoreError> {
        Err(refused())
    }
    async fn append(&self, _: &str, _: u32, _: Vec<NewRecord>) -> Result<AppendOutcome, StoreError> {
        Err(refused())
    }
    async fn read(&self, _: &str, _: u32, _: u64, _: ReadLimits) -> Result<ReadResult, StoreError> {
        Err(refused())
    }
    async fn offsets(&self, _: &str, _: u32) -> Result<PartitionOffsets, StoreError> {
        Err(refused())
    }
    async fn offset_for_timestamp(&self, _: &str, _: u32, _: i64) -> Result<Option<u64>, StoreError> {
        Err(refused())
    }
    async fn wait_for(&self, _: &str, _: u32, _: u64, _: Duration) -> Result<bool, StoreError> {
        Err(refused())
    }
    async fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        Err(refused())
    }
    async fn shutdown(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A state store that is cut off: any committed-offset access would show as an error code other than the one
/// a test expects.
fn no_meta() -> Arc<dyn MetaStore> {
    let store = Severable::new(MemoryMetaStore::default());
    store.sever(true);
    Arc::new(store)
}

/// Two nodes, "this" (id 7) and "other" (id 8); the test says who coordinates.
struct TwoNodes {
    coordinating: AtomicBool,
    other_coordinates: AtomicBool,
}

fn this() -> KafkaNode {
    KafkaNode { node_id: 7, host: "this.example".into(), port: 9001 }
}

fn other() -> KafkaNode {
    KafkaNode { node_id: 8, host: "other.example".into(), port: 9002 }
}

impl Cluster for TwoNodes {
    fn this_node(&self) -> KafkaNode {
        this()
    }
    fn brokers(&self) -> Vec<KafkaNode> {
        vec![this(), other()]
    }
    fn coordinator(&self) -> Option<KafkaNode> {
        if self.coordinating.load(Ordering::SeqCst) {
            Some(this())
        } else if self.other_coordinates.load(Ordering::SeqCst) {
            Some(other())
        } else {
            None
        }
    }
    fn is_coordinator(&self) -> bool {
        self.coordinating.load(Ordering::SeqCst)
    }
}

fn broker(coordinating: bool, other_coordinates: bool) -> (Arc<Broker>, Arc<TwoNodes>) {
    broker_on(coordinating, other_coordinates, no_meta())
}

fn broker_on(
    coordinating: bool,
    other_coordinates: bool,
    meta: Arc<dyn MetaStore>,
) -> (Arc<Broker>, Arc<TwoNodes>) {
    let cluster = Arc::new(TwoNodes {
        coordinating: AtomicBool::new(coordinating),
        other_coordinates: AtomicBool::new(other_coordinates),
    });
    let ctx = KafkaContext {
        store: Arc::new(NoLog),
        auth: None,
        offsets: GroupOffsets::new(meta),
        config: KafkaConfig {
            cluster: Some(Arc::clone(&cluster) as Arc<dyn Cluster>),
            ..KafkaConfig::default()
        },
        catalogue: None,
    };
    (Arc::new(Broker::new(ctx)), cluster)
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

fn header(key: ApiKey, version: i16) -> RequestHeader {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.client_id = Some(s("routing-test"));
    header
}

async fn call(broker: &Broker, key: ApiKey, version: i16, request: Request) -> Response {
    let mut session = Session::new(None);
    broker.handle(&mut session, &header(key, version), request).await.expect("a response")
}

fn join(member: &str) -> Request {
    let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
    protocol.name = s("range");
    protocol.metadata = Bytes::from_static(b"subscription");
    let mut request = JoinGroupRequest::default();
    request.group_id = GroupId(s("g"));
    request.session_timeout_ms = 10_000;
    request.rebalance_timeout_ms = 10_000;
    request.member_id = s(member);
    request.protocol_type = s("consumer");
    request.protocols = vec![protocol];
    Request::JoinGroup(request)
}

fn heartbeat(member: &StrBytes, generation: i32) -> Request {
    let mut request = HeartbeatRequest::default();
    request.group_id = GroupId(s("g"));
    request.member_id = member.clone();
    request.generation_id = generation;
    Request::Heartbeat(request)
}

async fn heartbeat_code(broker: &Broker, member: &StrBytes, generation: i32) -> i16 {
    match call(broker, ApiKey::Heartbeat, 4, heartbeat(member, generation)).await {
        Response::Heartbeat(r) => r.error_code,
        other => panic!("{other:?}"),
    }
}

fn find(version: i16) -> Request {
    let mut request = FindCoordinatorRequest::default();
    if version >= 4 {
        request.coordinator_keys = vec![s("g1"), s("g2")];
    } else {
        request.key = s("g1");
    }
    Request::FindCoordinator(request)
}

const NOT_COORDINATOR: i16 = 16;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;

#[tokio::test]
async fn find_coordinator_names_the_lease_holder_in_every_version() {
    let (broker, _) = broker(false, true);
    for version in 0..=3 {
        let Response::FindCoordinator(r) =
            call(&broker, ApiKey::FindCoordinator, version, find(version)).await
        else {
            panic!()
        };
        assert_eq!(r.error_code, 0, "v{version}");
        assert_eq!((r.node_id.0, &*r.host, r.port), (8, "other.example", 9002), "v{version}");
    }
    let Response::FindCoordinator(r) = call(&broker, ApiKey::FindCoordinator, 4, find(4)).await else {
        panic!()
    };
    assert_eq!(r.coordinators.len(), 2, "one answer per key of a batched request");
    for c in &r.coordinators {
        assert_eq!((c.error_code, c.node_id.0, &*c.host, c.port), (0, 8, "other.example", 9002));
    }
}

#[tokio::test]
async fn find_coordinator_while_nobody_holds_the_lease_is_coordinator_not_available() {
    let (broker, _) = broker(false, false);
    for version in 0..=3 {
        let Response::FindCoordinator(r) =
            call(&broker, ApiKey::FindCoordinator, version, find(version)).await
        else {
            panic!()
        };
        assert_eq!(r.error_code, COORDINATOR_NOT_AVAILABLE, "v{version}");
        assert!(ResponseError::try_from_code(r.error_code).unwrap().is_retriable());
    }
    let Response::FindCoordinator(r) = call(&broker, ApiKey::FindCoordinator, 4, find(4)).await else {
        panic!()
    };
    assert!(r.coordinators.iter().all(|c| c.error_code == COORDINATOR_NOT_AVAILABLE && c.node_id.0 == -1));
}

#[tokio::test]
async fn metadata_lists_every_live_broker_and_names_the_node_asked_as_every_partitions_leader() {
    let (broker, _) = broker(false, true);
    let mut request = MetadataRequest::default();
    let mut topic = metadata_request::MetadataRequestTopic::default();
    topic.name = Some(TopicName(s("t")));
    request.topics = Some(vec![topic]);
    let Response::Metadata(r) = call(&broker, ApiKey::Metadata, 9, Request::Metadata(request)).await else {
        panic!()
    };
    let brokers: Vec<(i32, String, i32)> =
        r.brokers.iter().map(|b| (b.node_id.0, b.host.to_string(), b.port)).collect();
    assert_eq!(brokers, vec![(7, "this.example".into(), 9001), (8, "other.example".into(), 9002)]);
    assert_eq!(r.topics[0].partitions.len(), 3);
    assert!(
        r.topics[0].partitions.iter().all(|p| p.leader_id.0 == 7 && p.replica_nodes == vec![BrokerId(7)])
    );
}

#[tokio::test]
async fn group_requests_on_a_node_that_does_not_coordinate_answer_not_coordinator() {
    let (broker, _) = broker(false, true);
    let member = s("m-1");

    let Response::JoinGroup(r) = call(&broker, ApiKey::JoinGroup, 7, join("")).await else { panic!() };
    assert_eq!(r.error_code, NOT_COORDINATOR);

    let mut sync = SyncGroupRequest::default();
    sync.group_id = GroupId(s("g"));
    sync.member_id = member.clone();
    let Response::SyncGroup(r) = call(&broker, ApiKey::SyncGroup, 5, Request::SyncGroup(sync)).await else {
        panic!()
    };
    assert_eq!(r.error_code, NOT_COORDINATOR);

    assert_eq!(heartbeat_code(&broker, &member, 1).await, NOT_COORDINATOR);

    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(s("g"));
    leave.member_id = member.clone();
    let Response::LeaveGroup(r) = call(&broker, ApiKey::LeaveGroup, 1, Request::LeaveGroup(leave)).await
    else {
        panic!()
    };
    assert_eq!(r.error_code, NOT_COORDINATOR);

    // Commits are refused before the state store is touched (it would answer COORDINATOR_NOT_AVAILABLE).
    let mut commit = OffsetCommitRequest::default();
    commit.group_id = GroupId(s("g"));
    commit.generation_id_or_member_epoch = 1;
    commit.member_id = member.clone();
    let mut topic = offset_commit_request::OffsetCommitRequestTopic::default();
    topic.name = TopicName(s("t"));
    let mut partition = offset_commit_request::OffsetCommitRequestPartition::default();
    partition.partition_index = 0;
    partition.committed_offset = 5;
    topic.partitions = vec![partition];
    commit.topics = vec![topic];
    let Response::OffsetCommit(r) =
        call(&broker, ApiKey::OffsetCommit, 8, Request::OffsetCommit(commit)).await
    else {
        panic!()
    };
    assert_eq!(r.topics[0].partitions[0].error_code, NOT_COORDINATOR);

    // OffsetFetch v1 (per-partition error only), v7 (group error) and v8 (batched groups).
    for version in [1, 7] {
        let mut fetch = OffsetFetchRequest::default();
        fetch.group_id = GroupId(s("g"));
        let mut topic = offset_fetch_request::OffsetFetchRequestTopic::default();
        topic.name = TopicName(s("t"));
        topic.partition_indexes = vec![0, 1];
        fetch.topics = Some(vec![topic]);
        let Response::OffsetFetch(r) =
            call(&broker, ApiKey::OffsetFetch, version, Request::OffsetFetch(fetch)).await
        else {
            panic!()
        };
        if version >= 2 {
            assert_eq!(r.error_code, NOT_COORDINATOR);
        }
        assert_eq!(r.topics[0].partitions.len(), 2, "v{version}");
        assert!(r.topics[0].partitions.iter().all(|p| p.error_code == NOT_COORDINATOR), "v{version}");
    }
    let mut fetch = OffsetFetchRequest::default();
    let mut group = offset_fetch_request::OffsetFetchRequestGroup::default();
    group.group_id = GroupId(s("g"));
    fetch.groups = vec![group];
    let Response::OffsetFetch(r) = call(&broker, ApiKey::OffsetFetch, 8, Request::OffsetFetch(fetch)).await
    else {
        panic!()
    };
    assert_eq!(r.groups[0].error_code, NOT_COORDINATOR);
}

#[tokio::test]
async fn losing_the_coordination_drops_groups_and_answers_waiting_members() {
    let (broker, cluster) = broker(true, false);

    // A one-member group completes its join at once.
    let Response::JoinGroup(first) = call(&broker, ApiKey::JoinGroup, 7, join("")).await else { panic!() };
    assert_eq!(first.error_code, 0);
    assert_eq!(heartbeat_code(&broker, &first.member_id, first.generation_id).await, 0);

    // A second member's join waits for the first to rejoin: it is waiting when the coordination goes.
    let waiting = {
        let broker = Arc::clone(&broker);
        tokio::spawn(async move { call(&broker, ApiKey::JoinGroup, 7, join("")).await })
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while heartbeat_code(&broker, &first.member_id, first.generation_id).await
            != ResponseError::RebalanceInProgress.code()
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the second join starts a rebalance");

    cluster.coordinating.store(false, Ordering::SeqCst);
    broker.tick();
    let Response::JoinGroup(second) =
        tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("answered at once").unwrap()
    else {
        panic!()
    };
    assert_eq!(second.error_code, NOT_COORDINATOR, "the waiting member is sent to the new coordinator");
    assert_eq!(heartbeat_code(&broker, &first.member_id, first.generation_id).await, NOT_COORDINATOR);

    // Taking the coordination back starts from nothing: the old member must join again.
    cluster.coordinating.store(true, Ordering::SeqCst);
    broker.tick();
    assert_eq!(
        heartbeat_code(&broker, &first.member_id, first.generation_id).await,
        ResponseError::UnknownMemberId.code()
    );
}

fn commit(member: &str, generation: i32, offset: i64) -> Request {
    let mut commit = OffsetCommitRequest::default();
    commit.group_id = GroupId(s("g"));
    commit.generation_id_or_member_epoch = generation;
    commit.member_id = s(member);
    let mut topic = offset_commit_request::OffsetCommitRequestTopic::default();
    topic.name = TopicName(s("t"));
    let mut partition = offset_commit_request::OffsetCommitRequestPartition::default();
    partition.partition_index = 1;
    partition.committed_offset = offset;
    topic.partitions = vec![partition];
    commit.topics = vec![topic];
    Request::OffsetCommit(commit)
}

async fn commit_code(broker: &Broker, member: &str, generation: i32, offset: i64) -> i16 {
    match call(broker, ApiKey::OffsetCommit, 8, commit(member, generation, offset)).await {
        Response::OffsetCommit(r) => r.topics[0].partitions[0].error_code,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_member_of_the_previous_coordinators_generation_commits_until_the_group_forms_here() {
    let meta = Arc::new(MemoryMetaStore::default());
    let (broker, _) = broker_on(true, false, Arc::clone(&meta) as Arc<dyn MetaStore>);
    // The group is unknown here (this node just took over): the old member's last commit counts.
    assert_eq!(commit_code(&broker, "old-member", 12, 7).await, 0);
    let committed = GroupOffsets::new(meta.clone()).fetch("g", "t", 1).await.unwrap().expect("stored");
    assert_eq!(committed.offset, 7);

    // Once the group has formed here, only its members commit.
    let Response::JoinGroup(joined) = call(&broker, ApiKey::JoinGroup, 7, join("")).await else { panic!() };
    assert_eq!(joined.error_code, 0);
    let mut sync = SyncGroupRequest::default();
    sync.group_id = GroupId(s("g"));
    sync.member_id = joined.member_id.clone();
    sync.generation_id = joined.generation_id;
    let Response::SyncGroup(synced) = call(&broker, ApiKey::SyncGroup, 5, Request::SyncGroup(sync)).await
    else {
        panic!()
    };
    assert_eq!(synced.error_code, 0);
    assert_eq!(commit_code(&broker, "old-member", 12, 9).await, ResponseError::UnknownMemberId.code());
    assert_eq!(
        commit_code(&broker, &joined.member_id, joined.generation_id + 1, 9).await,
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(commit_code(&broker, &joined.member_id, joined.generation_id, 9).await, 0);
    let committed = GroupOffsets::new(meta).fetch("g", "t", 1).await.unwrap().expect("stored");
    assert_eq!(committed.offset, 9);
}
