//! librdkafka with SASL_PLAINTEXT / PLAIN against the endpoint with access control on.

mod common;

use std::time::Duration;

use common::Server;
use esgf_events_auth::Role;
use esgf_events_kafka::KafkaConfig;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(20);

fn sasl(server: &Server, user: &str, password: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", server.bootstrap())
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "PLAIN")
        .set("sasl.username", user)
        .set("sasl.password", password);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_producer_publishes_and_a_granted_consumer_reads_with_sasl_plain() {
    let server = Server::start_with_auth(KafkaConfig::default()).await;
    server.create_topic("esgf2.publications", 1).await;
    let producer_secret = server.register(Role::Producer, "publisher", &["esgf2.publications"]).await;
    let consumer_secret = server.register(Role::Consumer, "reader", &["esgf2.publications"]).await;

    let producer: FutureProducer =
        sasl(&server, "publisher", &producer_secret).set("enable.idempotence", "true").create().unwrap();
    let delivery = producer
        .send(FutureRecord::<(), _>::to("esgf2.publications").payload("{\"id\":1}"), WAIT)
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
    assert_eq!(delivery.offset, 0);

    let consumer: StreamConsumer = sasl(&server, "reader", &consumer_secret)
        .set("group.id", "readers")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["esgf2.publications"]).unwrap();
    let message = tokio::time::timeout(WAIT, consumer.recv()).await.expect("in time").expect("message");
    assert_eq!(message.payload(), Some(&b"{\"id\":1}"[..]));
    let mut commit = TopicPartitionList::new();
    commit.add_partition_offset("esgf2.publications", 0, Offset::Offset(1)).unwrap();
    consumer.commit(&commit, rdkafka::consumer::CommitMode::Sync).unwrap();
    assert_eq!(server.offsets.fetch("readers", "esgf2.publications", 0).await.unwrap().unwrap().offset, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_audited() {
    let server = Server::start_with_auth(KafkaConfig::default()).await;
    server.create_topic("t", 1).await;
    server.register(Role::Producer, "publisher", &["t"]).await;
    let producer: FutureProducer = sasl(&server, "publisher", "esgfev_not-the-secret")
        .set("message.timeout.ms", "3000")
        .create()
        .unwrap();
    let result = producer.send(FutureRecord::<(), _>::to("t").payload("x"), Duration::from_secs(5)).await;
    assert!(result.is_err(), "an unauthenticated producer must not deliver");
    assert_eq!(server.store.offsets("t", 0).await.unwrap().latest, 0);
    let audit = server.auth.as_ref().unwrap().audit_log(0, 100).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "auth.failure" && e.actor.as_deref() == Some("publisher")),
        "{audit:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_without_a_grant_gets_topic_authorization_failed() {
    let server = Server::start_with_auth(KafkaConfig::default()).await;
    server.create_topic("granted", 1).await;
    server.create_topic("other", 1).await;
    let secret = server.register(Role::Producer, "publisher", &["granted"]).await;
    let producer: FutureProducer = sasl(&server, "publisher", &secret).create().unwrap();
    let refused = producer.send(FutureRecord::<(), _>::to("other").payload("x"), WAIT).await;
    match refused {
        Err((KafkaError::MessageProduction(code), _)) => {
            assert_eq!(code, RDKafkaErrorCode::TopicAuthorizationFailed)
        }
        other => panic!("expected TOPIC_AUTHORIZATION_FAILED, got {other:?}"),
    }
    assert_eq!(server.store.offsets("other", 0).await.unwrap().latest, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cannot_use_a_group_another_principal_owns() {
    let server = Server::start_with_auth(KafkaConfig::default()).await;
    server.create_topic("shared", 1).await;
    server.register(Role::Consumer, "first", &["shared"]).await;
    let second = server.register(Role::Consumer, "second", &["shared"]).await;
    server
        .auth
        .as_ref()
        .unwrap()
        .claim_group(
            &esgf_events_auth::Identity {
                name: "first".into(),
                role: Role::Consumer,
                method: esgf_events_auth::AuthMethod::Password,
            },
            "team",
        )
        .await
        .unwrap();
    let intruder: StreamConsumer = sasl(&server, "second", &second)
        .set("group.id", "team")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut commit = TopicPartitionList::new();
    commit.add_partition_offset("shared", 0, Offset::Offset(0)).unwrap();
    let refused =
        tokio::task::block_in_place(|| intruder.commit(&commit, rdkafka::consumer::CommitMode::Sync));
    let error = refused.expect_err("the group belongs to 'first'");
    assert!(format!("{error:?}").contains("GroupAuthorizationFailed"), "{error:?}");
    assert!(server.offsets.fetch("team", "shared", 0).await.unwrap().is_none());
    server.stop().await;
}
