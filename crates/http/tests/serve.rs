//! `run` over a real socket: serves HTTP/1.1, and shuts down gracefully even with an idle keep-alive connection.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use esgf_events_engine::{
    AppendOutcome, LogStore, NewRecord, PartitionOffsets, ReadLimits, ReadResult, Retention, RetentionReport,
    StoreError, TopicConfig, TopicInfo,
};
use esgf_events_http::{HttpConfig, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The probes never touch storage; every call here is a failure the test would see.
struct NoStore;

fn unused<T>() -> Result<T, StoreError> {
    Err(StoreError::Backend("not used by this test".into()))
}

#[async_trait]
impl LogStore for NoStore {
    async fn create_topic(&self, _: &str, _: TopicConfig) -> Result<TopicInfo, StoreError> {
        unused()
    }
    async fn delete_topic(&self, _: &str) -> Result<(), StoreError> {
        unused()
    }
    async fn list_topics(&self) -> Result<Vec<TopicInfo>, StoreError> {
        unused()
    }
    async fn describe_topic(&self, _: &str) -> Result<TopicInfo, StoreError> {
        unused()
    }
    async fn set_retention(&self, _: &str, _: Retention) -> Result<TopicInfo, StoreError> {
        unused()
    }
    async fn append(&self, _: &str, _: u32, _: Vec<NewRecord>) -> Result<AppendOutcome, StoreError> {
        unused()
    }
    async fn read(&self, _: &str, _: u32, _: u64, _: ReadLimits) -> Result<ReadResult, StoreError> {
        unused()
    }
    async fn offsets(&self, _: &str, _: u32) -> Result<PartitionOffsets, StoreError> {
        unused()
    }
    async fn offset_for_timestamp(&self, _: &str, _: u32, _: i64) -> Result<Option<u64>, StoreError> {
        unused()
    }
    async fn wait_for(&self, _: &str, _: u32, _: u64, _: Duration) -> Result<bool, StoreError> {
        unused()
    }
    async fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        unused()
    }
    async fn shutdown(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Sends one keep-alive request and reads exactly one response (headers plus `Content-Length` body).
async fn request(stream: &mut TcpStream, path: &str) -> String {
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(n > 0, "server closed the connection mid-response: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text.into_owned();
            }
        }
    }
}

#[tokio::test]
async fn serves_until_shutdown_then_returns_despite_idle_keep_alive() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, Arc::new(NoStore), HttpConfig::default(), async move {
        let _ = stopped.await;
    }));

    let mut stream = TcpStream::connect(address).await.expect("connect");
    let reply = request(&mut stream, "/healthz").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with(r#"{"status":"ok"}"#), "{reply}");
    let reply = request(&mut stream, "/readyz").await;
    assert!(reply.ends_with(r#"{"status":"ready"}"#), "{reply}");
    let reply = request(&mut stream, "/nowhere").await;
    assert!(reply.starts_with("HTTP/1.1 404") && reply.contains("application/problem+json"), "{reply}");

    // The connection stays open and idle: graceful shutdown must close it rather than wait for it.
    stop.send(()).expect("server alive");
    let result = tokio::time::timeout(Duration::from_secs(10), server).await.expect("run returns promptly");
    result.expect("server task").expect("run succeeds");

    let mut rest = Vec::new();
    let n = stream.read_to_end(&mut rest).await.unwrap_or(0);
    assert_eq!(n, 0, "the idle connection is closed without further data");
}
