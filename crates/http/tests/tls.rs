//! `serve` over TLS with a self-signed certificate: a round trip with a client that trusts it, a stalled
//! handshake that does not block anyone else, the client address reaching the audit log through the TLS
//! listener, shutdown despite the stalled handshake; and `load_tls` refusing bad inputs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use esgf_events_auth::{Auth, AuthConfig};
use esgf_events_engine::{EmbeddedConfig, EmbeddedStore, LogStore, SystemClock};
use esgf_events_http::{HttpConfig, Server, TlsError, load_tls, serve};
use esgf_events_meta::RedbMetaStore;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};

struct Certificate {
    der: CertificateDer<'static>,
    cert_pem: PathBuf,
    key_pem: PathBuf,
}

fn self_signed(dir: &Path, name: &str) -> Certificate {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert_pem = dir.join(format!("{name}.crt"));
    let key_pem = dir.join(format!("{name}.key"));
    std::fs::write(&cert_pem, generated.cert.pem()).expect("write certificate");
    std::fs::write(&key_pem, generated.signing_key.serialize_pem()).expect("write key");
    Certificate { der: generated.cert.der().clone(), cert_pem, key_pem }
}

/// A client trusting exactly `cert`, on the same crypto provider as the server.
fn client_trusting(cert: &Certificate, address: SocketAddr) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).expect("root certificate");
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .resolve("localhost", address)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

#[tokio::test]
async fn tls_round_trip_with_a_stalled_handshake_alongside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = self_signed(dir.path(), "server");
    let tls = load_tls(&cert.cert_pem, &cert.key_pem).expect("load TLS");

    let meta = RedbMetaStore::open(&dir.path().join("meta.redb")).expect("meta");
    let auth = Arc::new(Auth::open(Arc::new(meta), AuthConfig::default()).await.expect("auth"));
    let store = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("data")), Arc::new(SystemClock))
            .expect("store"),
    );
    let server = Server {
        store: store.clone(),
        auth: Some(auth.clone()),
        config: HttpConfig::default(),
        tls: Some(tls),
        offsets: None,
        webhooks: None,
        ops: Default::default(),
        catalogue: None,
        cluster: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(serve(listener, server, async move {
        let _ = stopped.await;
    }));

    // Connects and never says a word: its handshake must not hold up the next client.
    let stalled = TcpStream::connect(address).await.expect("connect");

    let client = client_trusting(&cert, address);
    let base = format!("https://localhost:{}", address.port());
    let reply = client.get(format!("{base}/healthz")).send().await.expect("TLS request");
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text().await.expect("body"), r#"{"status":"ok"}"#);

    // The client address travels through the TLS listener into the audit log.
    let reply = client
        .get(format!("{base}/v1/topics"))
        .bearer_auth("esgfev_not-a-real-token")
        .send()
        .await
        .expect("TLS request");
    assert_eq!(reply.status(), 401);
    let entries = auth.audit_log(0, 100).await.expect("audit");
    let failure = entries.iter().find(|e| e.action == "auth.failure").expect("auth.failure recorded");
    assert!(failure.remote.as_deref().is_some_and(|r| r.starts_with("127.0.0.1:")), "{failure:?}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new().get(format!("http://{address}/healthz")).send().await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));

    stop.send(()).expect("server alive");
    let result =
        tokio::time::timeout(Duration::from_secs(10), running).await.expect("serve returns promptly");
    result.expect("server task").expect("serve succeeds");
    drop(stalled);
    store.shutdown().await.expect("store shutdown");
}

#[test]
fn load_tls_refuses_missing_empty_and_mismatched_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = self_signed(dir.path(), "one");
    let two = self_signed(dir.path(), "two");

    let missing = dir.path().join("missing.crt");
    assert!(matches!(load_tls(&missing, &one.key_pem), Err(TlsError::Certificates { .. })));

    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "").expect("write");
    assert!(matches!(load_tls(&empty, &one.key_pem), Err(TlsError::NoCertificates { .. })));

    assert!(matches!(load_tls(&one.cert_pem, &empty), Err(TlsError::Key { .. })));

    let err = load_tls(&one.cert_pem, &two.key_pem).expect_err("key of another certificate");
    assert!(matches!(err, TlsError::Config(_)), "{err}");
    assert!(load_tls(&two.cert_pem, &two.key_pem).is_ok());
}
