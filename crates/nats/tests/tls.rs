//! TLS to the NATS servers, against a real nats-server that verifies client certificates (mutual TLS): the
//! backend connects with the configured CA and client certificate, and is refused without the certificate.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use esgf_events_nats::testing::nats_server_bin;
use esgf_events_nats::{NatsConfig, connect};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA, as PEM files.
fn certificates(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca, ca_key);
    write(dir, "ca.pem", &ca_cert.pem());
    for (name, sans, usage) in [
        ("server", vec!["127.0.0.1".to_owned(), "localhost".to_owned()], ExtendedKeyUsagePurpose::ServerAuth),
        ("client", vec!["esgf-events".to_owned()], ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let mut params = CertificateParams::new(sans).expect("params");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        write(dir, &format!("{name}.pem"), &cert.pem());
        write(dir, &format!("{name}.key"), &key.serialize_pem());
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One JetStream server on loopback that requires TLS and a client certificate signed by the test CA.
fn start_verifying_server(dir: &Path) -> (Server, String) {
    let port = free_port();
    let d = dir.display();
    let config = write(
        dir,
        "server.conf",
        &format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{d}/js\" }}\n\
             tls {{ cert_file: \"{d}/server.pem\", key_file: \"{d}/server.key\", ca_file: \"{d}/ca.pem\", \
             verify: true, timeout: 5 }}\n"
        ),
    );
    let child = Command::new(nats_server_bin())
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, format!("tls://127.0.0.1:{port}"))
}

#[tokio::test]
async fn the_backend_connects_with_its_client_certificate_and_is_refused_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    certificates(dir.path());
    let (_server, url) = start_verifying_server(dir.path());
    let base = NatsConfig {
        servers: vec![url],
        tls_ca_file: Some(dir.path().join("ca.pem")),
        require_tls: true,
        connect_timeout: Duration::from_secs(10),
        ..NatsConfig::default()
    };

    let with_cert = NatsConfig {
        tls_client_cert: Some((dir.path().join("client.pem"), dir.path().join("client.key"))),
        ..base.clone()
    };
    // `connect` returns only once JetStream answered over the mutually authenticated connection.
    let client = connect(&with_cert).await.expect("connects with the client certificate");
    drop(client);

    let without_cert = NatsConfig { connect_timeout: Duration::from_secs(3), ..base };
    assert!(
        connect(&without_cert).await.is_err(),
        "a server verifying clients must refuse a client without a certificate"
    );
}
