//! The endpoint over TLS (what SASL_SSL clients see): handshake, then Kafka requests inside.

mod common;

use std::sync::Arc;

use bytes::BytesMut;
use common::Server;
use esgf_events_kafka::KafkaConfig;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn api_versions_is_answered_inside_tls() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server_tls = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key)
        .unwrap();
    let config = KafkaConfig { tls: Some(Arc::new(server_tls)), ..KafkaConfig::default() };
    let server = Server::start_with(config).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[0].clone()).unwrap();
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();

    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::ApiVersions as i16;
    header.request_api_version = 3;
    header.correlation_id = 9;
    let mut request = ApiVersionsRequest::default();
    request.client_software_name = StrBytes::from_static_str("tls-test");
    request.client_software_version = StrBytes::from_static_str("1");
    let mut frame = BytesMut::new();
    header.encode(&mut frame, 2).unwrap();
    request.encode(&mut frame, 3).unwrap();
    tls.write_all(&(frame.len() as i32).to_be_bytes()).await.unwrap();
    tls.write_all(&frame).await.unwrap();

    let len = tls.read_i32().await.unwrap();
    let mut body = vec![0u8; len as usize];
    tls.read_exact(&mut body).await.unwrap();
    assert_eq!(i32::from_be_bytes(body[..4].try_into().unwrap()), 9);
    let response = ApiVersionsResponse::decode(&mut bytes::Bytes::copy_from_slice(&body[4..]), 3).unwrap();
    assert_eq!(response.error_code, 0);
    assert!(response.api_keys.iter().any(|k| k.api_key == ApiKey::Fetch as i16 && k.max_version == 12));
    drop(tls);
    server.stop().await;
}
