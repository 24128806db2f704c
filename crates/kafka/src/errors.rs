//! Every mapping from this service's errors to Kafka error codes lives here, so one place decides what a Kafka
//! client sees (and whether it retries: Kafka clients retry "retriable" codes by themselves).

use esgf_events_auth::{AuthError, GroupAccessError, RateLimited};
use esgf_events_engine::StoreError;
use esgf_events_meta::offsets::OffsetsError;
use kafka_protocol::ResponseError;

/// Kafka's "no error".
pub const NONE: i16 = 0;

pub fn code(error: ResponseError) -> i16 {
    error.code()
}

/// What a log error means to a Kafka client.
pub fn store_error(error: &StoreError) -> i16 {
    code(match error {
        StoreError::TopicNotFound(_) | StoreError::PartitionNotFound { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        StoreError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        StoreError::InvalidTopicName { .. } => ResponseError::InvalidTopicException,
        StoreError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StoreError::InvalidArgument(_) => ResponseError::InvalidRequest,
        StoreError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        // Retriable: the client backs off and tries again, which is right for a disk hiccup or a restart.
        StoreError::Corrupt { .. } | StoreError::Io { .. } | StoreError::Backend(_) => {
            ResponseError::KafkaStorageError
        }
        // Makes clients refresh metadata and retry, so they ride through a restart of the service.
        StoreError::ShuttingDown => ResponseError::NotLeaderOrFollower,
    })
}

/// A log error met while creating a topic (CreateTopics).
pub fn create_topic_error(error: &StoreError) -> i16 {
    match error {
        StoreError::InvalidArgument(_) => code(ResponseError::InvalidPartitions),
        other => store_error(other),
    }
}

/// A failure of the committed-offsets store: retriable, so the client commits again.
pub fn offsets_error(error: &OffsetsError) -> i16 {
    code(match error {
        OffsetsError::Meta(_) => ResponseError::CoordinatorNotAvailable,
        OffsetsError::InvalidName(_) => ResponseError::InvalidGroupId,
        OffsetsError::Corrupt { .. } => ResponseError::UnknownServerError,
    })
}

/// A maintenance window refuses produce requests (and, in full mode, fetches). NOT_ENOUGH_REPLICAS is retriable
/// and needs no metadata refresh: producers keep the records and retry them with backoff until the window ends
/// (or their `delivery.timeout.ms` runs out), so nothing is lost or duplicated.
pub fn maintenance_produce() -> i16 {
    code(ResponseError::NotEnoughReplicas)
}

/// A full maintenance window refuses fetches: LEADER_NOT_AVAILABLE is retriable, consumers back off and retry.
pub fn maintenance_fetch() -> i16 {
    code(ResponseError::LeaderNotAvailable)
}

/// The service is stopping: the client should look for the coordinator again (after the restart).
pub fn shutting_down() -> i16 {
    code(ResponseError::NotCoordinator)
}

/// A group request reached a node that does not coordinate groups now (another node holds the coordinator
/// lease, or this one just lost it): retriable, the client asks FindCoordinator again.
pub fn not_coordinator() -> i16 {
    code(ResponseError::NotCoordinator)
}

/// No node holds the coordinator lease yet (the holder died and its lease has not expired, or nobody took it
/// yet): retriable, the client backs off and asks FindCoordinator again.
pub fn coordinator_not_available() -> i16 {
    code(ResponseError::CoordinatorNotAvailable)
}

/// Authentication failed (wrong password, unknown or revoked principal, expired credential).
pub fn authentication_failed(_error: &AuthError) -> i16 {
    code(ResponseError::SaslAuthenticationFailed)
}

/// A SASL mechanism other than PLAIN.
pub fn unsupported_mechanism() -> i16 {
    code(ResponseError::UnsupportedSaslMechanism)
}

/// A SASL message out of sequence (authenticate before handshake, twice, ...).
pub fn illegal_sasl_state() -> i16 {
    code(ResponseError::IllegalSaslState)
}

/// The principal may not read, publish to, describe or create this topic.
/// The topic's catalogue refuses the records: INVALID_RECORD (87) for events its validation policy refuses,
/// POLICY_VIOLATION (44) for a read-only or retired topic (an authorization code would send the client
/// looking for credentials). Neither is retriable; the error message says why.
pub fn publish_refused(refusal: &esgf_events_catalogue::PublishRefusal) -> i16 {
    code(match refusal {
        esgf_events_catalogue::PublishRefusal::Invalid { .. } => ResponseError::InvalidRecord,
        esgf_events_catalogue::PublishRefusal::ReadOnly { .. }
        | esgf_events_catalogue::PublishRefusal::Retired { .. } => ResponseError::PolicyViolation,
    })
}

/// The catalogue's state store failed while checking event ids: retriable.
pub fn catalogue_unavailable() -> i16 {
    code(ResponseError::KafkaStorageError)
}

pub fn topic_denied() -> i16 {
    code(ResponseError::TopicAuthorizationFailed)
}

/// The principal may not use this consumer group.
pub fn group_denied() -> i16 {
    code(ResponseError::GroupAuthorizationFailed)
}

/// Cluster-level permission missing (idempotent writes for non-producers, broker configs for non-operators).
pub fn cluster_denied() -> i16 {
    code(ResponseError::ClusterAuthorizationFailed)
}

/// Using a consumer group failed: refused, or the ownership record could not be stored (retriable).
pub fn group_access_error(error: &GroupAccessError) -> i16 {
    match error {
        GroupAccessError::Denied(_) => group_denied(),
        GroupAccessError::Store(_) => code(ResponseError::CoordinatorNotAvailable),
    }
}

/// Over the publish rate: the code and the throttle time to report (nothing was appended).
pub fn rate_limited(error: &RateLimited) -> (i16, i32) {
    let ms = i32::try_from(error.retry_after.as_millis().max(1)).unwrap_or(i32::MAX);
    (code(ResponseError::ThrottlingQuotaExceeded), ms)
}

/// A record batch the endpoint cannot accept (corrupt, compressed with an unknown codec, transactional, ...).
pub fn invalid_record() -> i16 {
    code(ResponseError::CorruptMessage)
}

/// A record batch larger than the endpoint accepts.
pub fn record_too_large() -> i16 {
    code(ResponseError::MessageTooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_topics_and_partitions_are_unknown_topic_or_partition() {
        assert_eq!(store_error(&StoreError::TopicNotFound("t".into())), 3);
        let missing = StoreError::PartitionNotFound { topic: "t".into(), partition: 9, partitions: 1 };
        assert_eq!(store_error(&missing), 3);
    }

    #[test]
    fn shutting_down_is_a_retriable_code() {
        let code = store_error(&StoreError::ShuttingDown);
        assert!(ResponseError::try_from_code(code).unwrap().is_retriable());
        assert!(
            ResponseError::try_from_code(store_error(&StoreError::Backend("x".into())))
                .unwrap()
                .is_retriable()
        );
    }

    #[test]
    fn a_rate_refusal_reports_a_positive_throttle_time() {
        let refusal = RateLimited {
            retry_after: std::time::Duration::from_millis(1500),
            limit: 10,
            remaining: 0,
            reset: std::time::Duration::from_secs(1),
        };
        assert_eq!(rate_limited(&refusal), (89, 1500));
        let immediate = RateLimited { retry_after: std::time::Duration::ZERO, ..refusal };
        assert_eq!(rate_limited(&immediate).1, 1);
    }

    #[test]
    fn authorization_failures_use_the_kafka_codes() {
        assert_eq!(topic_denied(), 29);
        assert_eq!(group_denied(), 30);
        assert_eq!(cluster_denied(), 31);
        assert_eq!(authentication_failed(&AuthError::Missing), 58);
    }

    #[test]
    fn coordinator_codes_are_retriable() {
        for code in [not_coordinator(), coordinator_not_available()] {
            assert!(ResponseError::try_from_code(code).unwrap().is_retriable());
        }
        assert_eq!((not_coordinator(), coordinator_not_available()), (16, 15));
    }

    #[test]
    fn out_of_range_offset_is_offset_out_of_range() {
        let e = StoreError::OffsetOutOfRange {
            topic: "t".into(),
            partition: 0,
            requested: 9,
            earliest: 0,
            latest: 1,
        };
        assert_eq!(store_error(&e), 1);
    }
}
