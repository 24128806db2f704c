//! A structural pre-check of request bodies, run before `kafka-protocol` decodes them.
//!
//! Why: the crate's decoders call `Vec::with_capacity(n)` with `n` read straight off the wire (its issues #152,
//! #161, #200 are still open), so a ten-byte request declaring two billion array elements makes the process
//! abort on allocation failure, which no `Result` or `catch_unwind` can stop. This module walks the same
//! grammar without allocating and refuses a body whose array counts exceed the bytes left (every element
//! takes at least one byte) or whose elements add up to more than [`MAX_ELEMENTS`] (which also bounds how much
//! memory the decoded structs can take, whatever their size per element). Only after it passes does the crate
//! decode the body.
//!
//! The schemas below cover exactly the API versions [`crate::codec::SUPPORTED`] advertises; the unit tests
//! encode requests with the crate's own encoder at every advertised version and check the walk consumes them
//! exactly, so a schema slip shows up as a test failure, not as a refused client.

use kafka_protocol::messages::ApiKey;

/// Array elements one request may hold in total (topics, partitions, members, ...).
pub const MAX_ELEMENTS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrecheckError {
    #[error("request body ends early")]
    Truncated,
    #[error("invalid length {0}")]
    BadLength(i64),
    #[error("array of {count} elements cannot fit in the {remaining} bytes left")]
    ArrayTooLong { count: usize, remaining: usize },
    #[error("request holds more than {MAX_ELEMENTS} array elements")]
    TooManyElements,
    #[error("varint too long")]
    BadVarint,
    #[error("no schema for API key {key} version {version}")]
    NoSchema { key: i16, version: i16 },
}

#[derive(Clone, Copy)]
enum Ty {
    I8,
    I16,
    I32,
    I64,
    Bool,
    Uuid,
    Str,
    Bytes,
    ArrI32,
    ArrStr,
    Arr(&'static [Field]),
}

/// A field present in versions `min..=max`.
#[derive(Clone, Copy)]
struct Field {
    ty: Ty,
    min: i16,
    max: i16,
}

const fn f(ty: Ty) -> Field {
    Field { ty, min: 0, max: i16::MAX }
}
const fn since(min: i16, ty: Ty) -> Field {
    Field { ty, min, max: i16::MAX }
}
const fn until(max: i16, ty: Ty) -> Field {
    Field { ty, min: 0, max }
}
const fn between(min: i16, max: i16, ty: Ty) -> Field {
    Field { ty, min, max }
}

use Ty::*;

const PRODUCE_PARTITION: &[Field] = &[f(I32), f(Bytes)];
const PRODUCE_TOPIC: &[Field] = &[f(Str), f(Arr(PRODUCE_PARTITION))];
const PRODUCE: &[Field] = &[f(Str), f(I16), f(I32), f(Arr(PRODUCE_TOPIC))];

const FETCH_PARTITION: &[Field] = &[f(I32), since(9, I32), f(I64), since(12, I32), since(5, I64), f(I32)];
const FETCH_TOPIC: &[Field] = &[f(Str), f(Arr(FETCH_PARTITION))];
const FETCH_FORGOTTEN: &[Field] = &[since(7, Str), since(7, ArrI32)];
const FETCH: &[Field] = &[
    f(I32),
    f(I32),
    f(I32),
    f(I32),
    f(I8),
    since(7, I32),
    since(7, I32),
    f(Arr(FETCH_TOPIC)),
    since(7, Arr(FETCH_FORGOTTEN)),
    since(11, Str),
];

const LIST_OFFSETS_PARTITION: &[Field] = &[f(I32), since(4, I32), f(I64)];
const LIST_OFFSETS_TOPIC: &[Field] = &[f(Str), f(Arr(LIST_OFFSETS_PARTITION))];
const LIST_OFFSETS: &[Field] = &[f(I32), since(2, I8), f(Arr(LIST_OFFSETS_TOPIC))];

const METADATA_TOPIC: &[Field] = &[since(10, Uuid), f(Str)];
const METADATA: &[Field] = &[f(Arr(METADATA_TOPIC)), since(4, Bool), between(8, 10, Bool), since(8, Bool)];

const OFFSET_COMMIT_PARTITION: &[Field] = &[f(I32), f(I64), since(6, I32), f(Str)];
const OFFSET_COMMIT_TOPIC: &[Field] = &[f(Str), f(Arr(OFFSET_COMMIT_PARTITION))];
const OFFSET_COMMIT: &[Field] =
    &[f(Str), f(I32), f(Str), since(7, Str), until(4, I64), f(Arr(OFFSET_COMMIT_TOPIC))];

const OFFSET_FETCH_TOPIC: &[Field] = &[f(Str), f(ArrI32)];
const OFFSET_FETCH_GROUP: &[Field] = &[f(Str), since(9, Str), since(9, I32), f(Arr(OFFSET_FETCH_TOPIC))];
const OFFSET_FETCH: &[Field] =
    &[until(7, Str), until(7, Arr(OFFSET_FETCH_TOPIC)), since(8, Arr(OFFSET_FETCH_GROUP)), since(7, Bool)];

const FIND_COORDINATOR: &[Field] = &[until(3, Str), since(1, I8), since(4, ArrStr)];

const JOIN_GROUP_PROTOCOL: &[Field] = &[f(Str), f(Bytes)];
const JOIN_GROUP: &[Field] = &[
    f(Str),
    f(I32),
    since(1, I32),
    f(Str),
    since(5, Str),
    f(Str),
    f(Arr(JOIN_GROUP_PROTOCOL)),
    since(8, Str),
];

const SYNC_GROUP_ASSIGNMENT: &[Field] = &[f(Str), f(Bytes)];
const SYNC_GROUP: &[Field] =
    &[f(Str), f(I32), f(Str), since(3, Str), since(5, Str), since(5, Str), f(Arr(SYNC_GROUP_ASSIGNMENT))];

const HEARTBEAT: &[Field] = &[f(Str), f(I32), f(Str), since(3, Str)];

const LEAVE_GROUP_MEMBER: &[Field] = &[f(Str), f(Str), since(5, Str)];
const LEAVE_GROUP: &[Field] = &[f(Str), until(2, Str), since(3, Arr(LEAVE_GROUP_MEMBER))];

const INIT_PRODUCER_ID: &[Field] = &[f(Str), f(I32), since(3, I64), since(3, I16)];

const CREATE_TOPICS_ASSIGNMENT: &[Field] = &[f(I32), f(ArrI32)];
const CREATE_TOPICS_CONFIG: &[Field] = &[f(Str), f(Str)];
const CREATE_TOPICS_TOPIC: &[Field] =
    &[f(Str), f(I32), f(I16), f(Arr(CREATE_TOPICS_ASSIGNMENT)), f(Arr(CREATE_TOPICS_CONFIG))];
const CREATE_TOPICS: &[Field] = &[f(Arr(CREATE_TOPICS_TOPIC)), f(I32), f(Bool)];

const DESCRIBE_CONFIGS_RESOURCE: &[Field] = &[f(I8), f(Str), f(ArrStr)];
const DESCRIBE_CONFIGS: &[Field] = &[f(Arr(DESCRIBE_CONFIGS_RESOURCE)), f(Bool), since(3, Bool)];

const SASL_HANDSHAKE: &[Field] = &[f(Str)];
const SASL_AUTHENTICATE: &[Field] = &[f(Bytes)];
const API_VERSIONS: &[Field] = &[since(3, Str), since(3, Str)];

/// The schema of a request body and the first version using the compact ("flexible") encoding.
fn schema(key: ApiKey) -> Option<(&'static [Field], i16)> {
    Some(match key {
        ApiKey::Produce => (PRODUCE, 9),
        ApiKey::Fetch => (FETCH, 12),
        ApiKey::ListOffsets => (LIST_OFFSETS, 6),
        ApiKey::Metadata => (METADATA, 9),
        ApiKey::OffsetCommit => (OFFSET_COMMIT, 8),
        ApiKey::OffsetFetch => (OFFSET_FETCH, 6),
        ApiKey::FindCoordinator => (FIND_COORDINATOR, 3),
        ApiKey::JoinGroup => (JOIN_GROUP, 6),
        ApiKey::SyncGroup => (SYNC_GROUP, 4),
        ApiKey::Heartbeat => (HEARTBEAT, 4),
        ApiKey::LeaveGroup => (LEAVE_GROUP, 4),
        ApiKey::InitProducerId => (INIT_PRODUCER_ID, 2),
        ApiKey::CreateTopics => (CREATE_TOPICS, 5),
        ApiKey::DescribeConfigs => (DESCRIBE_CONFIGS, 4),
        ApiKey::SaslHandshake => (SASL_HANDSHAKE, i16::MAX),
        ApiKey::SaslAuthenticate => (SASL_AUTHENTICATE, 2),
        ApiKey::ApiVersions => (API_VERSIONS, 3),
        _ => return None,
    })
}

/// Checks that `body` (the bytes after the request header) is a well-formed request of `key` at `version`
/// whose arrays are all plausible. Does not allocate.
pub fn check(key: ApiKey, version: i16, body: &[u8]) -> Result<(), PrecheckError> {
    let (fields, flexible_from) = schema(key).ok_or(PrecheckError::NoSchema { key: key as i16, version })?;
    let mut walker = Walker { buf: body, version, flexible: version >= flexible_from, elements: 0 };
    // Trailing bytes are tolerated, as Kafka's own parser does (librdkafka's Metadata v12 sends some).
    walker.walk_struct(fields)
}

struct Walker<'a> {
    buf: &'a [u8],
    version: i16,
    flexible: bool,
    elements: usize,
}

impl Walker<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PrecheckError> {
        if n > self.buf.len() {
            return Err(PrecheckError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn int(&mut self, n: usize) -> Result<i64, PrecheckError> {
        let bytes = self.take(n)?;
        let mut value: i64 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
        for &b in bytes {
            value = (value << 8) | i64::from(b);
        }
        Ok(value)
    }

    fn uvarint(&mut self) -> Result<u64, PrecheckError> {
        let mut value: u64 = 0;
        for i in 0..5 {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(PrecheckError::BadVarint)
    }

    /// A length prefix: `None` for null. Compact encodings store length + 1 as an unsigned varint.
    fn length(&mut self, width: usize) -> Result<Option<usize>, PrecheckError> {
        if self.flexible {
            return match self.uvarint()? {
                0 => Ok(None),
                n => usize::try_from(n - 1).map(Some).map_err(|_| PrecheckError::BadLength(n as i64)),
            };
        }
        match self.int(width)? {
            -1 => Ok(None),
            n if n < 0 => Err(PrecheckError::BadLength(n)),
            n => usize::try_from(n).map(Some).map_err(|_| PrecheckError::BadLength(n)),
        }
    }

    fn skip_sized(&mut self, width: usize) -> Result<(), PrecheckError> {
        if let Some(n) = self.length(width)? {
            self.take(n)?;
        }
        Ok(())
    }

    fn array_count(&mut self) -> Result<usize, PrecheckError> {
        let count = self.length(4)?.unwrap_or(0);
        if count > self.buf.len() {
            return Err(PrecheckError::ArrayTooLong { count, remaining: self.buf.len() });
        }
        self.elements += count;
        if self.elements > MAX_ELEMENTS {
            return Err(PrecheckError::TooManyElements);
        }
        Ok(count)
    }

    fn walk_struct(&mut self, fields: &[Field]) -> Result<(), PrecheckError> {
        for field in fields {
            if self.version < field.min || self.version > field.max {
                continue;
            }
            match field.ty {
                I8 | Bool => drop(self.take(1)?),
                I16 => drop(self.take(2)?),
                I32 => drop(self.take(4)?),
                I64 => drop(self.take(8)?),
                Uuid => drop(self.take(16)?),
                Str => self.skip_sized(2)?,
                Bytes => self.skip_sized(4)?,
                ArrI32 => {
                    let n = self.array_count()?;
                    self.take(n.checked_mul(4).ok_or(PrecheckError::Truncated)?)?;
                }
                ArrStr => {
                    for _ in 0..self.array_count()? {
                        self.skip_sized(2)?;
                    }
                }
                Arr(element) => {
                    for _ in 0..self.array_count()? {
                        self.walk_struct(element)?;
                    }
                }
            }
        }
        if self.flexible {
            self.skip_tagged_fields()?;
        }
        Ok(())
    }

    fn skip_tagged_fields(&mut self) -> Result<(), PrecheckError> {
        let count = self.uvarint()?;
        if count > self.buf.len() as u64 {
            return Err(PrecheckError::ArrayTooLong { count: count as usize, remaining: self.buf.len() });
        }
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.take(usize::try_from(size).map_err(|_| PrecheckError::Truncated)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SUPPORTED;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn s(text: &'static str) -> StrBytes {
        StrBytes::from_static_str(text)
    }

    fn versions(key: ApiKey) -> std::ops::RangeInclusive<i16> {
        let (_, min, max) = SUPPORTED.iter().copied().find(|(k, _, _)| *k == key).expect("advertised");
        min..=max
    }

    /// Encodes `message` at every advertised version of `key` and checks the walk accepts it exactly.
    fn accepts_every_version<M: Encodable>(key: ApiKey, message: &M) {
        accepts_every_version_of(key, |_| message);
    }

    /// Like [`accepts_every_version`], with a message built for each version (some fields exist only in some).
    fn accepts_every_version_of<'m, M: Encodable + 'm>(key: ApiKey, build: impl Fn(i16) -> &'m M) {
        for version in versions(key) {
            let message = build(version);
            let mut buf = BytesMut::new();
            message.encode(&mut buf, version).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
            check(key, version, &buf).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
            if !buf.is_empty() {
                assert!(check(key, version, &buf[..buf.len() - 1]).is_err(), "{key:?} v{version} truncated");
            }
        }
    }

    #[test]
    fn produce_requests_of_every_version_pass() {
        let mut partition = produce_request::PartitionProduceData::default();
        partition.index = 3;
        partition.records = Some(Bytes::from_static(b"0123456789"));
        let mut topic = produce_request::TopicProduceData::default();
        topic.name = TopicName(s("t"));
        topic.partition_data = vec![partition.clone(), partition];
        let mut request = ProduceRequest::default();
        request.transactional_id = None;
        request.acks = -1;
        request.topic_data = vec![topic.clone(), topic];
        accepts_every_version(ApiKey::Produce, &request);
    }

    #[test]
    fn fetch_requests_of_every_version_pass() {
        let mut partition = fetch_request::FetchPartition::default();
        partition.partition = 1;
        partition.fetch_offset = 7;
        let mut topic = fetch_request::FetchTopic::default();
        topic.topic = TopicName(s("topic"));
        topic.partitions = vec![partition.clone(), partition];
        let mut forgotten = fetch_request::ForgottenTopic::default();
        forgotten.topic = TopicName(s("old"));
        forgotten.partitions = vec![1, 2, 3];
        let mut old = FetchRequest::default();
        old.topics = vec![topic];
        let mut sessions = old.clone();
        sessions.forgotten_topics_data = vec![forgotten];
        let mut rack = sessions.clone();
        rack.rack_id = s("rack");
        let mut flexible = rack.clone();
        flexible.cluster_id = Some(s("cluster"));
        accepts_every_version_of(ApiKey::Fetch, |v| match v {
            ..7 => &old,
            7..=10 => &sessions,
            11 => &rack,
            _ => &flexible,
        });
    }

    #[test]
    fn list_offsets_and_metadata_requests_of_every_version_pass() {
        let mut partition = list_offsets_request::ListOffsetsPartition::default();
        partition.timestamp = -2;
        let mut topic = list_offsets_request::ListOffsetsTopic::default();
        topic.name = TopicName(s("t"));
        topic.partitions = vec![partition.clone(), partition];
        let mut request = ListOffsetsRequest::default();
        request.topics = vec![topic];
        accepts_every_version(ApiKey::ListOffsets, &request);

        let mut topic = metadata_request::MetadataRequestTopic::default();
        topic.name = Some(TopicName(s("t")));
        let mut request = MetadataRequest::default();
        request.topics = Some(vec![topic.clone(), topic]);
        accepts_every_version(ApiKey::Metadata, &request);
        request.topics = None;
        accepts_every_version(ApiKey::Metadata, &request);
    }

    #[test]
    fn group_requests_of_every_version_pass() {
        let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
        protocol.name = s("range");
        protocol.metadata = Bytes::from_static(b"meta");
        let mut join = JoinGroupRequest::default();
        join.group_id = GroupId(s("g"));
        join.member_id = s("m");
        join.protocol_type = s("consumer");
        join.protocols = vec![protocol.clone(), protocol];
        accepts_every_version(ApiKey::JoinGroup, &join);

        let mut assignment = sync_group_request::SyncGroupRequestAssignment::default();
        assignment.member_id = s("m");
        assignment.assignment = Bytes::from_static(b"a");
        let mut sync = SyncGroupRequest::default();
        sync.group_id = GroupId(s("g"));
        sync.protocol_type = Some(s("consumer"));
        sync.assignments = vec![assignment];
        accepts_every_version(ApiKey::SyncGroup, &sync);

        let mut heartbeat = HeartbeatRequest::default();
        heartbeat.group_id = GroupId(s("g"));
        let mut static_member = heartbeat.clone();
        static_member.group_instance_id = Some(s("i"));
        accepts_every_version_of(ApiKey::Heartbeat, |v| if v >= 3 { &static_member } else { &heartbeat });

        let mut member = leave_group_request::MemberIdentity::default();
        member.member_id = s("m");
        let mut leave = LeaveGroupRequest::default();
        leave.group_id = GroupId(s("g"));
        leave.member_id = s("m");
        leave.members = vec![member.clone(), member];
        for version in versions(ApiKey::LeaveGroup) {
            let mut buf = BytesMut::new();
            // The crate refuses to encode `members` below v3 and `member_id` from v3, as the schema says.
            let mut message = leave.clone();
            if version < 3 {
                message.members.clear();
            } else {
                message.member_id = StrBytes::default();
            }
            message.encode(&mut buf, version).unwrap();
            check(ApiKey::LeaveGroup, version, &buf).unwrap_or_else(|e| panic!("v{version}: {e}"));
        }

        let find = FindCoordinatorRequest::default();
        for version in versions(ApiKey::FindCoordinator) {
            let mut message = find.clone();
            if version >= 4 {
                message.coordinator_keys = vec![s("g"), s("h")];
            } else {
                message.key = s("g");
            }
            let mut buf = BytesMut::new();
            message.encode(&mut buf, version).unwrap();
            check(ApiKey::FindCoordinator, version, &buf).unwrap_or_else(|e| panic!("v{version}: {e}"));
        }
    }

    #[test]
    fn offset_requests_of_every_version_pass() {
        let mut partition = offset_commit_request::OffsetCommitRequestPartition::default();
        partition.committed_offset = 5;
        partition.committed_metadata = Some(s("md"));
        let mut topic = offset_commit_request::OffsetCommitRequestTopic::default();
        topic.name = TopicName(s("t"));
        topic.partitions = vec![partition.clone(), partition];
        let mut commit = OffsetCommitRequest::default();
        commit.group_id = GroupId(s("g"));
        commit.topics = vec![topic];
        accepts_every_version(ApiKey::OffsetCommit, &commit);

        for version in versions(ApiKey::OffsetFetch) {
            let mut fetch = OffsetFetchRequest::default();
            if version >= 8 {
                let mut topics = offset_fetch_request::OffsetFetchRequestTopics::default();
                topics.name = TopicName(s("t"));
                topics.partition_indexes = vec![0, 1];
                let mut group = offset_fetch_request::OffsetFetchRequestGroup::default();
                group.group_id = GroupId(s("g"));
                group.topics = Some(vec![topics]);
                fetch.groups = vec![group];
            } else {
                let mut topic = offset_fetch_request::OffsetFetchRequestTopic::default();
                topic.name = TopicName(s("t"));
                topic.partition_indexes = vec![0, 1];
                fetch.group_id = GroupId(s("g"));
                fetch.topics = Some(vec![topic]);
            }
            let mut buf = BytesMut::new();
            fetch.encode(&mut buf, version).unwrap();
            check(ApiKey::OffsetFetch, version, &buf).unwrap_or_else(|e| panic!("v{version}: {e}"));
        }
    }

    #[test]
    fn admin_sasl_and_producer_id_requests_of_every_version_pass() {
        let mut assignment = create_topics_request::CreatableReplicaAssignment::default();
        assignment.broker_ids = vec![BrokerId(1)];
        let mut config = create_topics_request::CreatableTopicConfig::default();
        config.name = s("retention.ms");
        config.value = Some(s("1000"));
        let mut topic = create_topics_request::CreatableTopic::default();
        topic.name = TopicName(s("t"));
        topic.assignments = vec![assignment];
        topic.configs = vec![config];
        let mut create = CreateTopicsRequest::default();
        create.topics = vec![topic];
        accepts_every_version(ApiKey::CreateTopics, &create);

        let mut resource = describe_configs_request::DescribeConfigsResource::default();
        resource.resource_name = s("t");
        resource.configuration_keys = Some(vec![s("retention.ms")]);
        let mut describe = DescribeConfigsRequest::default();
        describe.resources = vec![resource];
        accepts_every_version(ApiKey::DescribeConfigs, &describe);

        let mut handshake = SaslHandshakeRequest::default();
        handshake.mechanism = s("PLAIN");
        accepts_every_version(ApiKey::SaslHandshake, &handshake);
        let mut authenticate = SaslAuthenticateRequest::default();
        authenticate.auth_bytes = Bytes::from_static(b"\0user\0secret");
        accepts_every_version(ApiKey::SaslAuthenticate, &authenticate);

        let mut versions_request = ApiVersionsRequest::default();
        versions_request.client_software_name = s("test");
        versions_request.client_software_version = s("1.0");
        accepts_every_version(ApiKey::ApiVersions, &versions_request);

        let mut init = InitProducerIdRequest::default();
        init.transactional_id = None;
        accepts_every_version(ApiKey::InitProducerId, &init);
    }

    #[test]
    fn huge_declared_array_is_refused_without_allocating() {
        // Metadata v0: topics array declaring 54 million entries in five bytes.
        let body = [0x03, 0x3c, 0x0c, 0x00, 0xb6];
        assert!(matches!(check(ApiKey::Metadata, 0, &body), Err(PrecheckError::ArrayTooLong { .. })));
        // Compact array (v9) declaring u32::MAX - 1 elements.
        let body = [0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0];
        assert!(matches!(check(ApiKey::Metadata, 9, &body), Err(PrecheckError::ArrayTooLong { .. })));
    }

    #[test]
    fn more_elements_than_the_cap_are_refused() {
        // OffsetFetch v1: group "", one topic "" with MAX_ELEMENTS partitions.
        let mut body = vec![0, 0, 0, 0, 0, 1, 0, 0];
        body.extend_from_slice(&(MAX_ELEMENTS as i32).to_be_bytes());
        body.extend(std::iter::repeat_n(0u8, MAX_ELEMENTS * 4));
        assert_eq!(check(ApiKey::OffsetFetch, 1, &body), Err(PrecheckError::TooManyElements));
    }
}
