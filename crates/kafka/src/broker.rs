//! The protocol: one `handle` call per request, no sockets. Cluster-level APIs live here (ApiVersions,
//! Metadata, FindCoordinator, CreateTopics, DescribeConfigs); records, groups and producers have their own
//! modules.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use esgf_events_auth::{Action, Identity};
use esgf_events_engine::{Retention, StoreError, TopicConfig, TopicInfo};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::cluster::{Cluster, KafkaNode, SingleNode};
use crate::codec::{Request, Response, SUPPORTED};
use crate::errors::{self, NONE, code};
use crate::groups::Coordinator;
use crate::produce::Producers;
use crate::sasl::SaslStage;
use crate::{KafkaConfig, KafkaContext};

/// Largest frame accepted before authentication.
const PRE_AUTH_FRAME: usize = 512 << 10;

/// Kafka's "authorized operations were not asked for".
const OPERATIONS_OMITTED: i32 = i32::MIN;

/// Consumer groups a session remembers having been allowed to use (so a heartbeat costs no lookup).
const MAX_REMEMBERED_GROUPS: usize = 64;

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct Session {
    pub peer: Option<SocketAddr>,
    pub client_id: Option<String>,
    /// Who authenticated on this connection (SASL PLAIN); `None` before, or with authentication off.
    pub(crate) identity: Option<Identity>,
    pub(crate) sasl: SaslStage,
    /// Close the connection once the current response is sent.
    pub(crate) close: bool,
    pub(crate) allowed_groups: HashSet<String>,
}

impl Session {
    pub fn new(peer: Option<SocketAddr>) -> Self {
        Session { peer, ..Session::default() }
    }

    /// Whether the connection is to be closed after the current response (refused authentication, a request
    /// before authentication).
    pub fn closing(&self) -> bool {
        self.close
    }

    /// The authenticated principal, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub(crate) fn expects_raw_sasl_token(&self) -> bool {
        self.sasl == SaslStage::RawTokenNext
    }

    pub(crate) fn remote(&self) -> String {
        self.peer.map_or_else(|| "kafka".to_owned(), |p| format!("kafka {p}"))
    }
}

/// The Kafka protocol over one log: shared by every connection.
pub struct Broker {
    pub(crate) ctx: KafkaContext,
    pub(crate) groups: Coordinator,
    pub(crate) producers: Producers,
    cluster: Arc<dyn Cluster>,
    /// Whether this node coordinated groups at the last tick (to drop its groups once it no longer does).
    was_coordinator: AtomicBool,
    bound_port: AtomicU16,
    stopping: watch::Sender<bool>,
}

impl Broker {
    pub fn new(ctx: KafkaContext) -> Self {
        let groups = Coordinator::new(ctx.offsets.clone());
        let cluster = ctx.config.cluster.clone().unwrap_or_else(|| {
            Arc::new(SingleNode::new(KafkaNode {
                node_id: ctx.config.node_id,
                host: ctx.config.advertised_host.clone(),
                port: ctx.config.advertised_port,
            }))
        });
        Broker {
            ctx,
            groups,
            producers: Producers::new(),
            was_coordinator: AtomicBool::new(cluster.is_coordinator()),
            cluster,
            bound_port: AtomicU16::new(0),
            stopping: watch::channel(false).0,
        }
    }

    /// Cuts long polls and group waits short: the service is stopping.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn stopped(&self) {
        let mut stopping = self.stopping();
        let _ = stopping.wait_for(|s| *s).await;
    }

    /// Largest frame this session may send next: small until it has authenticated (Kafka's
    /// sasl.server.max.receive.size), so an anonymous peer cannot make the server buffer 100 MiB.
    pub(crate) fn frame_limit(&self, session: &Session) -> usize {
        if self.ctx.auth.is_some() && session.identity.is_none() {
            self.config().max_frame_bytes.min(PRE_AUTH_FRAME)
        } else {
            self.config().max_frame_bytes
        }
    }

    /// Whether the connection must close after the response just sent (a failed authentication).
    pub(crate) fn should_close(&self, session: &Session) -> bool {
        session.close
    }

    /// Whether the session may do `action` (always, with authentication off).
    pub(crate) fn may(&self, session: &Session, action: Action<'_>) -> bool {
        match &self.ctx.auth {
            None => true,
            Some(auth) => auth.authorize(session.identity.as_ref(), action).is_ok(),
        }
    }

    /// Describing a topic (Metadata, ListOffsets) needs either a read or a publish permission.
    pub(crate) fn may_describe(&self, session: &Session, topic: &str) -> bool {
        self.may(session, Action::Read { topic }) || self.may(session, Action::Publish { topic })
    }

    /// Whether the session may use consumer group `group`; the error is the Kafka code to answer with.
    pub(crate) async fn group_access(&self, session: &mut Session, group: &str) -> Result<(), i16> {
        let Some(auth) = &self.ctx.auth else { return Ok(()) };
        if session.allowed_groups.contains(group) {
            return Ok(());
        }
        // Anonymous readers have no identity to own a group: they read by assignment, without commits.
        let Some(who) = &session.identity else { return Err(errors::group_denied()) };
        match auth.claim_group(who, group).await {
            Ok(()) => {
                if session.allowed_groups.len() >= MAX_REMEMBERED_GROUPS {
                    session.allowed_groups.clear();
                }
                session.allowed_groups.insert(group.to_owned());
                Ok(())
            }
            Err(e) => {
                debug!(principal = %who.name, group, error = %e, "consumer group refused");
                Err(errors::group_access_error(&e))
            }
        }
    }

    /// Requests served before authentication: the handshake itself; and, when anonymous reading of public
    /// topics is on, everything, each request then authorized as the anonymous principal (which may read
    /// public topics and nothing else, so a refusal comes back as the proper *_AUTHORIZATION_FAILED code).
    fn allowed_unauthenticated(&self, request: &Request) -> bool {
        matches!(request, Request::ApiVersions(_) | Request::SaslHandshake(_) | Request::SaslAuthenticate(_))
            || self.config().allow_anonymous_public_read
    }

    pub(crate) fn config(&self) -> &KafkaConfig {
        &self.ctx.config
    }

    /// Records the port the listener is bound to, advertised when the configuration says port 0.
    pub fn set_bound_port(&self, port: u16) {
        self.bound_port.store(port, Ordering::Relaxed);
    }

    /// Port 0 names this node's own listener (a single node configured with advertised port 0).
    fn advertised(&self, node: KafkaNode) -> (BrokerId, StrBytes, i32) {
        let port = match node.port {
            0 => self.bound_port.load(Ordering::Relaxed),
            port => port,
        };
        (BrokerId(node.node_id), StrBytes::from_string(node.host), i32::from(port))
    }

    pub(crate) fn node(&self) -> BrokerId {
        BrokerId(self.cluster.this_node().node_id)
    }

    /// `Err(NOT_COORDINATOR)` unless this node coordinates groups now. Checked before anything else in a group
    /// request, so a node that is not the coordinator neither touches group state nor claims groups.
    pub(crate) fn coordinating(&self) -> Result<(), i16> {
        if self.cluster.is_coordinator() { Ok(()) } else { Err(errors::not_coordinator()) }
    }

    /// Session timeouts and abandoned rebalances are enforced by calling this periodically. It also drops
    /// every group once this node stops coordinating: their members rejoin at the new coordinator, and the
    /// committed offsets they resume from are in the shared store.
    pub fn tick(&self) {
        let coordinating = self.cluster.is_coordinator();
        let was = self.was_coordinator.swap(coordinating, Ordering::Relaxed);
        if !coordinating {
            let dropped = self.groups.drop_all(errors::not_coordinator());
            if was || dropped > 0 {
                info!(groups = dropped, "no longer the Kafka group coordinator: groups dropped");
            }
            return;
        }
        if !was {
            info!("now the Kafka group coordinator");
        }
        self.groups.expire(std::time::Instant::now());
    }

    /// Answers one request. `None` means no response is sent (a produce request with `acks = 0`).
    pub async fn handle(
        &self,
        session: &mut Session,
        header: &RequestHeader,
        request: Request,
    ) -> Option<Response> {
        if session.client_id.is_none() {
            session.client_id = header.client_id.as_ref().map(|c| c.to_string());
        }
        let version = header.request_api_version;
        debug!(api = ?request.api_key(), version, correlation_id = header.correlation_id, "request");
        if self.ctx.auth.is_some() && session.identity.is_none() && !self.allowed_unauthenticated(&request) {
            // Kafka closes a SASL connection that skips authentication; there is no error code for it.
            debug!(peer = ?session.peer, api = ?request.api_key(), "request before authentication: closing");
            session.close = true;
            return None;
        }
        metrics::counter!("esgf_events_kafka_requests_total", "api" => format!("{:?}", request.api_key()))
            .increment(1);
        if let Some(refused) = self.maintenance_refusal(&request) {
            return Some(refused);
        }
        Some(match request {
            Request::ApiVersions(_) => Response::ApiVersions(api_versions(NONE)),
            Request::Metadata(r) => Response::Metadata(self.metadata(session, version, r).await),
            Request::FindCoordinator(r) => Response::FindCoordinator(self.find_coordinator(version, r)),
            Request::CreateTopics(r) => Response::CreateTopics(self.create_topics(session, version, r).await),
            Request::DescribeConfigs(r) => Response::DescribeConfigs(self.describe_configs(session, r).await),
            Request::Produce(r) => return self.produce(session, version, r).await.map(Response::Produce),
            Request::Fetch(r) => Response::Fetch(self.fetch(session, version, r).await),
            Request::ListOffsets(r) => Response::ListOffsets(self.list_offsets(session, version, r).await),
            Request::InitProducerId(r) => Response::InitProducerId(self.init_producer_id(session, r)),
            Request::JoinGroup(r) => Response::JoinGroup(self.join_group(session, version, r).await),
            Request::SyncGroup(r) => Response::SyncGroup(self.sync_group(session, version, r).await),
            Request::Heartbeat(r) => {
                let allowed = match self.coordinating() {
                    Ok(()) => self.group_access(session, &r.group_id.0).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = allowed {
                    let mut response = HeartbeatResponse::default();
                    response.error_code = error;
                    return Some(Response::Heartbeat(response));
                }
                Response::Heartbeat(self.heartbeat(session, r))
            }
            Request::LeaveGroup(r) => {
                let allowed = match self.coordinating() {
                    Ok(()) => self.group_access(session, &r.group_id.0).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = allowed {
                    let mut response = LeaveGroupResponse::default();
                    response.error_code = error;
                    return Some(Response::LeaveGroup(response));
                }
                Response::LeaveGroup(self.leave_group(session, version, r))
            }
            Request::OffsetCommit(r) => Response::OffsetCommit(self.offset_commit(session, version, r).await),
            Request::OffsetFetch(r) => Response::OffsetFetch(self.offset_fetch(session, version, r).await),
            Request::SaslHandshake(r) => Response::SaslHandshake(self.sasl_handshake(session, version, r)),
            Request::SaslAuthenticate(r) => {
                Response::SaslAuthenticate(self.sasl_authenticate(session, version, r).await)
            }
        })
    }

    /// The answer to a produce (any window) or fetch (full window) during maintenance: every partition gets the
    /// retriable maintenance code, and produce partitions carry the window's message (v8+ show it).
    fn maintenance_refusal(&self, request: &Request) -> Option<Response> {
        let state = self.config().maintenance.as_ref()?;
        match request {
            Request::Produce(r) => {
                let window = state.refusing(true)?;
                if r.acks == 0 {
                    // No response is read by an acks=0 producer; refusing silently is all we can do.
                    return None;
                }
                let message = format!(
                    "maintenance until {}: {}",
                    esgf_events_ops::maintenance::rfc3339(window.ends_at_ms),
                    window.message
                );
                let mut response = ProduceResponse::default();
                for topic in &r.topic_data {
                    let mut t = produce_response::TopicProduceResponse::default();
                    t.name = topic.name.clone();
                    for p in &topic.partition_data {
                        let mut pr = produce_response::PartitionProduceResponse::default();
                        pr.index = p.index;
                        pr.error_code = errors::maintenance_produce();
                        pr.base_offset = -1;
                        pr.error_message = Some(StrBytes::from_string(message.clone()));
                        t.partition_responses.push(pr);
                    }
                    response.responses.push(t);
                }
                Some(Response::Produce(response))
            }
            Request::Fetch(r) => {
                state.refusing(false)?;
                let mut response = FetchResponse::default();
                for topic in &r.topics {
                    let mut t = fetch_response::FetchableTopicResponse::default();
                    t.topic = topic.topic.clone();
                    t.topic_id = topic.topic_id;
                    for p in &topic.partitions {
                        let mut data = fetch_response::PartitionData::default();
                        data.partition_index = p.partition;
                        data.error_code = errors::maintenance_fetch();
                        data.high_watermark = -1;
                        data.last_stable_offset = -1;
                        data.log_start_offset = -1;
                        t.partitions.push(data);
                    }
                    response.responses.push(t);
                }
                Some(Response::Fetch(response))
            }
            _ => None,
        }
    }

    async fn metadata(&self, session: &Session, version: i16, request: MetadataRequest) -> MetadataResponse {
        let mut response = MetadataResponse::default();
        response.brokers = self
            .cluster
            .brokers()
            .into_iter()
            .map(|node| {
                let (node_id, host, port) = self.advertised(node);
                let mut broker = metadata_response::MetadataResponseBroker::default();
                broker.node_id = node_id;
                broker.host = host;
                broker.port = port;
                broker
            })
            .collect();
        if version >= 2 {
            response.cluster_id = Some(StrBytes::from_string(self.config().cluster_id.clone()));
        }
        response.controller_id = self.node();

        // v0 asks for every topic with an empty list; later versions with null.
        let requested: Option<Vec<metadata_request::MetadataRequestTopic>> = match request.topics {
            Some(topics) if topics.is_empty() && version == 0 => None,
            other => other,
        };
        match requested {
            None => match self.ctx.store.list_topics().await {
                Ok(topics) => {
                    // Topics the session may not describe are left out, as Kafka does.
                    response.topics = topics
                        .iter()
                        .filter(|t| self.may_describe(session, &t.name))
                        .map(|t| self.topic_metadata(t))
                        .collect();
                }
                Err(e) => {
                    // No per-request error field before v13: report nothing rather than fail the connection.
                    debug!(error = %e, "listing topics for metadata failed");
                }
            },
            Some(topics) => {
                for topic in topics {
                    let Some(name) = topic.name else {
                        let mut missing = metadata_response::MetadataResponseTopic::default();
                        missing.error_code = code(ResponseError::UnknownTopicId);
                        missing.topic_id = topic.topic_id;
                        response.topics.push(missing);
                        continue;
                    };
                    // Checked before existence, so a refused client cannot learn which topics exist.
                    if !self.may_describe(session, &name) {
                        let mut denied = metadata_response::MetadataResponseTopic::default();
                        denied.name = Some(name);
                        denied.error_code = errors::topic_denied();
                        response.topics.push(denied);
                        continue;
                    }
                    let entry = match self.ctx.store.describe_topic(&name).await {
                        Ok(info) => self.topic_metadata(&info),
                        Err(e) => {
                            let mut failed = metadata_response::MetadataResponseTopic::default();
                            failed.name = Some(name);
                            failed.error_code = errors::store_error(&e);
                            failed
                        }
                    };
                    response.topics.push(entry);
                }
            }
        }
        response
    }

    fn topic_metadata(&self, info: &TopicInfo) -> metadata_response::MetadataResponseTopic {
        let mut topic = metadata_response::MetadataResponseTopic::default();
        topic.name = Some(TopicName(StrBytes::from_string(info.name.clone())));
        topic.topic_authorized_operations = OPERATIONS_OMITTED;
        topic.partitions = (0..info.partitions)
            .map(|p| {
                let mut partition = metadata_response::MetadataResponsePartition::default();
                partition.partition_index = p as i32;
                // Every node serves every partition: the log and the committed offsets are in the shared store
                // and each node reads and appends through it. Naming the node asked keeps a client on the node
                // it chose (or was balanced to) and needs no agreement between nodes; a client of a node that
                // died refreshes its metadata elsewhere and is then led there.
                partition.leader_id = self.node();
                partition.replica_nodes = vec![self.node()];
                partition.isr_nodes = vec![self.node()];
                partition
            })
            .collect();
        topic
    }

    fn find_coordinator(&self, version: i16, request: FindCoordinatorRequest) -> FindCoordinatorResponse {
        let mut response = FindCoordinatorResponse::default();
        // One node coordinates every group: the holder of the coordinator lease.
        let coordinator = self.cluster.coordinator().map(|node| self.advertised(node));
        // Key type 1 asks for a transaction coordinator: transactions are not supported.
        let error = match (&coordinator, request.key_type) {
            (_, key_type) if key_type != 0 => code(ResponseError::InvalidRequest),
            (None, _) => errors::coordinator_not_available(),
            (Some(_), _) => NONE,
        };
        let (node_id, host, port) = coordinator.unwrap_or((BrokerId(-1), StrBytes::default(), -1));
        if version >= 4 {
            response.coordinators = request
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    let mut c = find_coordinator_response::Coordinator::default();
                    c.key = key;
                    c.error_code = error;
                    if error == NONE {
                        c.node_id = node_id;
                        c.host = host.clone();
                        c.port = port;
                    } else {
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                    }
                    c
                })
                .collect();
        } else {
            response.error_code = error;
            if error == NONE {
                response.node_id = node_id;
                response.host = host;
                response.port = port;
            } else if version >= 1 {
                response.error_message = Some(StrBytes::from_static_str(if request.key_type != 0 {
                    "transactions are not supported"
                } else {
                    "no node coordinates groups right now"
                }));
            }
        }
        response
    }

    async fn create_topics(
        &self,
        session: &Session,
        version: i16,
        request: CreateTopicsRequest,
    ) -> CreateTopicsResponse {
        let mut response = CreateTopicsResponse::default();
        let allowed = self.may(session, Action::ManageTopics);
        for topic in request.topics {
            let mut result = create_topics_response::CreatableTopicResult::default();
            result.name = topic.name.clone();
            let outcome = if allowed {
                self.create_topic(&topic, request.validate_only, session).await
            } else {
                Err((errors::topic_denied(), "creating topics needs the operator role".to_owned()))
            };
            match outcome {
                Ok(partitions) => {
                    if version >= 5 {
                        result.num_partitions = partitions as i32;
                        result.replication_factor = 1;
                    }
                }
                Err((error, message)) => {
                    result.error_code = error;
                    if version >= 1 {
                        result.error_message = Some(StrBytes::from_string(message));
                    }
                    if version >= 5 {
                        result.num_partitions = -1;
                        result.replication_factor = -1;
                    }
                }
            }
            response.topics.push(result);
        }
        response
    }

    async fn create_topic(
        &self,
        topic: &create_topics_request::CreatableTopic,
        validate_only: bool,
        session: &Session,
    ) -> Result<u32, (i16, String)> {
        let invalid = |error: ResponseError, message: &str| Err((code(error), message.to_owned()));
        if !topic.assignments.is_empty() {
            return invalid(
                ResponseError::InvalidReplicaAssignment,
                "manual replica assignment is not supported",
            );
        }
        if topic.replication_factor != -1 && topic.replication_factor != 1 {
            return invalid(
                ResponseError::InvalidReplicationFactor,
                "this service has one node: replication factor 1",
            );
        }
        let partitions = match topic.num_partitions {
            -1 => 1,
            n if n >= 1 => n as u32,
            _ => return invalid(ResponseError::InvalidPartitions, "a topic has at least one partition"),
        };
        let mut retention = Retention::DEFAULT;
        for config in &topic.configs {
            let value = config.value.as_deref().unwrap_or("");
            match &*config.name {
                "retention.ms" => {
                    retention.max_age = parse_retention_ms(value).ok_or_else(|| {
                        (code(ResponseError::InvalidConfig), format!("retention.ms: invalid value '{value}'"))
                    })?
                }
                "retention.bytes" => {
                    retention.max_bytes = parse_retention_bytes(value).ok_or_else(|| {
                        (
                            code(ResponseError::InvalidConfig),
                            format!("retention.bytes: invalid value '{value}'"),
                        )
                    })?
                }
                other => {
                    return Err((
                        code(ResponseError::InvalidConfig),
                        format!("config '{other}' is not supported"),
                    ));
                }
            }
        }
        if validate_only {
            esgf_events_engine::validate_topic_name(&topic.name)
                .map_err(|e| (errors::create_topic_error(&e), e.to_string()))?;
            return Ok(partitions);
        }
        let config = TopicConfig { partitions, retention };
        match self.ctx.store.create_topic(&topic.name, config).await {
            Ok(info) => {
                info!(topic = %info.name, partitions = info.partitions, "topic created over Kafka");
                if let Some(catalogue) = &self.ctx.catalogue {
                    let who = session.identity.as_ref().map_or("a Kafka client", |i| i.name.as_str());
                    let retention = match info.retention.max_age.map(|a| a.as_secs()) {
                        Some(s) if s % 86_400 == 0 => format!("{}d", s / 86_400),
                        Some(s) => format!("{s}s"),
                        None => "forever".to_owned(),
                    };
                    catalogue.record_topic_created(&info.name, info.partitions, &retention, who).await;
                }
                Ok(info.partitions)
            }
            Err(e) => Err((errors::create_topic_error(&e), e.to_string())),
        }
    }

    async fn describe_configs(
        &self,
        session: &Session,
        request: DescribeConfigsRequest,
    ) -> DescribeConfigsResponse {
        let mut response = DescribeConfigsResponse::default();
        let allowed = self.may(session, Action::ManageTopics);
        for resource in request.resources {
            let mut result = describe_configs_response::DescribeConfigsResult::default();
            result.resource_type = resource.resource_type;
            result.resource_name = resource.resource_name.clone();
            // Resource type 2 is a topic; 4 a broker (nothing to describe beyond defaults).
            if !allowed {
                result.error_code = if resource.resource_type == 2 {
                    errors::topic_denied()
                } else {
                    errors::cluster_denied()
                };
                result.error_message =
                    Some(StrBytes::from_static_str("describing configs needs the operator role"));
            } else if resource.resource_type == 2 {
                match self.ctx.store.describe_topic(&resource.resource_name).await {
                    Ok(info) => result.configs = topic_configs(&info, resource.configuration_keys.as_deref()),
                    Err(e) => {
                        result.error_code = errors::store_error(&e);
                        result.error_message = Some(StrBytes::from_string(e.to_string()));
                    }
                }
            } else if resource.resource_type != 4 {
                result.error_code = code(ResponseError::InvalidRequest);
                result.error_message =
                    Some(StrBytes::from_static_str("only topic and broker resources exist"));
            }
            response.results.push(result);
        }
        response
    }
}

fn topic_configs(
    info: &TopicInfo,
    keys: Option<&[StrBytes]>,
) -> Vec<describe_configs_response::DescribeConfigsResourceResult> {
    let retention_ms =
        info.retention.max_age.map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let retention_bytes = info.retention.max_bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let all = [
        ("retention.ms", retention_ms.to_string()),
        ("retention.bytes", retention_bytes.to_string()),
        ("cleanup.policy", "delete".to_owned()),
    ];
    all.into_iter()
        .filter(|(name, _)| keys.is_none_or(|keys| keys.iter().any(|k| &**k == *name)))
        .map(|(name, value)| {
            let mut entry = describe_configs_response::DescribeConfigsResourceResult::default();
            entry.name = StrBytes::from_static_str(name);
            entry.value = Some(StrBytes::from_string(value));
            // 1 = topic config (dynamic, per topic).
            entry.config_source = 1;
            entry
        })
        .collect()
}

/// Kafka's `retention.ms`: -1 is "forever".
fn parse_retention_ms(value: &str) -> Option<Option<std::time::Duration>> {
    match value.parse::<i64>().ok()? {
        -1 => Some(None),
        ms if ms > 0 => Some(Some(std::time::Duration::from_millis(ms as u64))),
        _ => None,
    }
}

/// Kafka's `retention.bytes`: -1 is "no limit".
fn parse_retention_bytes(value: &str) -> Option<Option<u64>> {
    match value.parse::<i64>().ok()? {
        -1 => Some(None),
        b if b > 0 => Some(Some(b as u64)),
        _ => None,
    }
}

/// The ApiVersions answer: exactly [`SUPPORTED`].
pub(crate) fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error_code;
    response.api_keys = SUPPORTED
        .iter()
        .map(|&(key, min, max)| {
            let mut v = api_versions_response::ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    response
}

/// What a store error from a read path means for a partition-level answer.
pub(crate) fn partition_error(e: &StoreError) -> i16 {
    errors::store_error(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_configs_parse_like_kafka() {
        assert_eq!(parse_retention_ms("-1"), Some(None));
        assert_eq!(parse_retention_ms("1000"), Some(Some(std::time::Duration::from_secs(1))));
        assert_eq!(parse_retention_ms("0"), None);
        assert_eq!(parse_retention_ms("x"), None);
        assert_eq!(parse_retention_bytes("-1"), Some(None));
        assert_eq!(parse_retention_bytes("5"), Some(Some(5)));
    }

    #[test]
    fn api_versions_lists_every_supported_api_once() {
        let response = api_versions(NONE);
        assert_eq!(response.api_keys.len(), SUPPORTED.len());
        assert!(response.api_keys.iter().any(|k| k.api_key == ApiKey::Produce as i16 && k.min_version == 3));
    }
}
