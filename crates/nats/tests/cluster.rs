//! Behaviour only a real JetStream cluster shows: retention removing from the front only, several service
//! nodes sharing partitions, follower reads, atomic batches, and acknowledged appends surviving `kill -9`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{NatsCluster, TEST_TOKEN, connect, open_store, shipped_config_path, store_config};
use esgf_events_engine::{
    LogStore, NewRecord, ReadLimits, Record, Retention, StoreError, SystemClock, TopicConfig,
};
use esgf_events_meta::MetaStore;
use esgf_events_nats::{JetStreamMeta, JetStreamStore};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

fn rec(value: impl Into<String>) -> NewRecord {
    NewRecord::from_value(Bytes::from(value.into()))
}

fn config(partitions: u32, retention: Retention) -> TopicConfig {
    TopicConfig { partitions, retention }
}

async fn read_all<S: LogStore + ?Sized>(store: &S, topic: &str, partition: u32) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = store.offsets(topic, partition).await.expect("offsets").earliest;
    loop {
        let r = store.read(topic, partition, offset, ReadLimits::default()).await.expect("read");
        if r.records.is_empty() {
            return out;
        }
        offset = r.next_offset;
        out.extend(r.records);
    }
}

/// Polls `check` until it holds, for conditions the cluster reaches on its own time (expiry timers).
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn shipped_configs_are_valid_and_fsync_every_write() {
    let bin = common::nats_server_bin();
    for i in 0..3 {
        let path = shipped_config_path(i);
        let text = std::fs::read_to_string(&path).expect("read shipped config");
        assert!(text.contains("sync_interval: always"), "{} must fsync every write", path.display());
        let out = Command::new(&bin)
            .args(["-t", "-c"])
            .arg(&path)
            .env("ESGF_NATS_TOKEN", TEST_TOKEN)
            .output()
            .expect("run nats-server -t");
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_from_the_front_only() {
    let cluster = NatsCluster::start().await;
    let s = open_store(&cluster, &[]).await;

    // Size limit: the oldest records go, the rest keep their offsets.
    s.create_topic("sized", config(1, Retention { max_age: None, max_bytes: Some(8_000) })).await.unwrap();
    for i in 0..60u64 {
        let out = s.append("sized", 0, vec![rec(format!("{i:0>300}"))]).await.unwrap();
        assert_eq!(out.base_offset, i);
    }
    let o = s.offsets("sized", 0).await.unwrap();
    assert!(o.earliest > 0 && o.latest == 60, "{o:?}");
    let kept = read_all(&s, "sized", 0).await;
    let offsets: Vec<u64> = kept.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (o.earliest..60).collect::<Vec<_>>(), "no gap inside what is kept");
    for r in &kept {
        assert_eq!(r.value, Bytes::from(format!("{:0>300}", r.offset)));
    }
    assert!(matches!(
        s.read("sized", 0, o.earliest - 1, ReadLimits::default()).await,
        Err(StoreError::OffsetOutOfRange { .. })
    ));

    // Age limit: everything expires, and offsets continue where they were.
    s.create_topic("aged", config(1, Retention { max_age: Some(Duration::from_secs(1)), max_bytes: None }))
        .await
        .unwrap();
    s.append("aged", 0, (0..5).map(|i| rec(format!("{i}"))).collect()).await.unwrap();
    eventually("expiry", Duration::from_secs(30), || async {
        let o = s.offsets("aged", 0).await.unwrap();
        o.earliest == 5 && o.latest == 5
    })
    .await;
    assert_eq!(
        s.append("aged", 0, vec![rec("after")]).await.unwrap().base_offset,
        5,
        "offsets are never reused"
    );
    assert_eq!(s.offset_for_timestamp("aged", 0, 0).await.unwrap(), Some(5));
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_service_nodes_appending_to_one_partition_keep_offsets_dense() {
    let cluster = NatsCluster::start().await;
    let a = Arc::new(open_store(&cluster, &[0]).await);
    let b = Arc::new(open_store(&cluster, &[1]).await);
    a.create_topic("shared", TopicConfig::default()).await.unwrap();
    let mut tasks = Vec::new();
    for (name, store) in [("a", a.clone()), ("b", b.clone())] {
        for w in 0..3 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..40 {
                    let n = 1 + i % 3;
                    let values: Vec<String> = (0..n).map(|j| format!("{name}{w}-{i}-{j}")).collect();
                    let out =
                        store.append("shared", 0, values.iter().cloned().map(rec).collect()).await.unwrap();
                    assert_eq!(out.last_offset - out.base_offset + 1, n as u64);
                    acked
                        .extend(values.into_iter().enumerate().map(|(j, v)| (out.base_offset + j as u64, v)));
                }
                acked
            }));
        }
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        for (offset, value) in t.await.unwrap() {
            assert!(acked.insert(offset, value).is_none(), "offset {offset} acknowledged twice");
        }
    }
    let all = read_all(&*b, "shared", 0).await;
    assert_eq!(all.len(), acked.len());
    for (r, (offset, value)) in all.iter().zip(&acked) {
        assert_eq!((r.offset, &r.value), (*offset, &Bytes::from(value.clone())));
    }
    assert_eq!(acked.keys().copied().collect::<Vec<_>>(), (0..acked.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_another_node_never_miss_acknowledged_records() {
    let cluster = NatsCluster::start().await;
    let writer = open_store(&cluster, &[0]).await;
    let readers = [open_store(&cluster, &[1]).await, open_store(&cluster, &[2]).await];
    writer.create_topic("t", TopicConfig::default()).await.unwrap();
    for i in 0..150u64 {
        let out = writer.append("t", 0, vec![rec(format!("v{i}"))]).await.unwrap();
        let reader = &readers[(i % 2) as usize];
        let r = reader.read("t", 0, out.base_offset, ReadLimits::default()).await.unwrap();
        assert_eq!(
            r.records.first().map(|r| r.value.clone()),
            Some(Bytes::from(format!("v{i}"))),
            "read {i}"
        );
        assert_eq!(r.latest, i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_wakes_on_appends_through_another_node() {
    let cluster = NatsCluster::start().await;
    let a = Arc::new(open_store(&cluster, &[0]).await);
    let b = open_store(&cluster, &[1]).await;
    a.create_topic("t", TopicConfig::default()).await.unwrap();
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (a.wait_for("t", 0, 0, Duration::from_secs(20)).await.unwrap(), started.elapsed())
        })
    };
    b.append("t", 0, vec![rec("x")]).await.unwrap();
    let (woke, after) = waiter.await.unwrap();
    assert!(woke && after < Duration::from_secs(5), "woke={woke} after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_deleted_through_one_node_is_gone_for_another() {
    let cluster = NatsCluster::start().await;
    let a = open_store(&cluster, &[0]).await;
    let b = open_store(&cluster, &[1]).await;
    a.create_topic("t", TopicConfig::default()).await.unwrap();
    b.append("t", 0, vec![rec("old")]).await.unwrap(); // b now has the topic cached
    a.delete_topic("t").await.unwrap();
    let started = Instant::now();
    let result = b.append("t", 0, vec![rec("x")]).await;
    assert!(matches!(result, Err(StoreError::TopicNotFound(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "noticed only after {:?}", started.elapsed());
    a.create_topic("t", TopicConfig::default()).await.unwrap();
    assert_eq!(b.append("t", 0, vec![rec("new")]).await.unwrap().base_offset, 0);
    assert_eq!(read_all(&a, "t", 0).await.iter().map(|r| r.value.clone()).collect::<Vec<_>>(), vec!["new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_servers_refuse_stores_nothing() {
    let cluster = NatsCluster::start().await;
    let mut cfg = store_config(&cluster);
    cfg.max_batch_records = 20_000; // above the servers' 10 000, so the servers are the ones refusing
    cfg.operation_timeout = Duration::from_secs(10);
    let s = JetStreamStore::open(connect(&cluster, &[]).await, cfg, Arc::new(SystemClock)).await.unwrap();
    s.create_topic("t", TopicConfig::default()).await.unwrap();
    s.append("t", 0, vec![rec("before")]).await.unwrap();
    let batch: Vec<NewRecord> = (0..12_000).map(|i| rec(format!("{i}"))).collect();
    let started = Instant::now();
    let refused = s.append("t", 0, batch).await;
    eprintln!("refused after {:?}: {refused:?}", started.elapsed());
    assert!(matches!(refused, Err(StoreError::InvalidArgument(_))), "{refused:?}");
    assert_eq!(s.offsets("t", 0).await.unwrap().latest, 1, "no part of the refused batch was stored");
    assert_eq!(s.append("t", 0, vec![rec("after")]).await.unwrap().base_offset, 1);
    let big: Vec<NewRecord> = (0..10_000).map(|i| rec(format!("{i}"))).collect();
    let out = s.append("t", 0, big).await.unwrap();
    assert_eq!(
        (out.base_offset, out.last_offset),
        (2, 10_001),
        "the servers' maximum batch is accepted whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_from_two_nodes_never_loses_an_update() {
    let cluster = NatsCluster::start().await;
    let mut stores = Vec::new();
    for node in 0..2 {
        stores.push(
            JetStreamMeta::open(connect(&cluster, &[node]).await, store_config(&cluster)).await.unwrap(),
        );
    }
    let mut tasks = Vec::new();
    for (w, store) in stores.iter().cycle().take(4).cloned().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 15 {
                let current = store.get("counters", "n").await.unwrap();
                let n: u64 = current.as_ref().map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                let next = Bytes::from((n + 1).to_string());
                if store.compare_and_set("counters", "n", current, Some(next)).await.unwrap() {
                    done += 1;
                }
            }
            w
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(stores[1].get("counters", "n").await.unwrap(), Some(Bytes::from_static(b"60")));
}

/// One acknowledged append: where it landed and what it held.
type Acked = (u32, u64, Vec<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_appends_survive_kill_9_of_a_node() {
    // RUST_LOG=esgf_events_nats=info shows the retries and recovered acknowledgements.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cluster = NatsCluster::start().await;
    let store = Arc::new(open_store(&cluster, &[]).await);
    store.create_topic("fault", config(2, Retention::DEFAULT)).await.unwrap();

    let acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(Vec::new()));
    let (count_tx, count_rx) = watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let (store, acked, count_tx, stop) = (store.clone(), acked.clone(), count_tx.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let partition = w % 2;
            let mut failures = 0usize;
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let values: Vec<String> = (0..1 + i % 4).map(|j| format!("w{w}-{i}-{j}")).collect();
                i += 1;
                match store.append("fault", partition, values.iter().cloned().map(rec).collect()).await {
                    Ok(out) => {
                        acked.lock().unwrap().push((partition, out.base_offset, values));
                        count_tx.send_modify(|n| *n += 1);
                    }
                    // Allowed while a node is down (an append may time out); what matters is what was acked.
                    Err(_) => failures += 1,
                }
            }
            failures
        }));
    }

    let progress = |more: usize, what: &'static str| {
        let mut rx = count_rx.clone();
        async move {
            let target = *rx.borrow() + more;
            timeout(Duration::from_secs(90), rx.wait_for(|n| *n >= target))
                .await
                .unwrap_or_else(|_| panic!("no progress {what}"))
                .expect("writers alive");
        }
    };
    progress(100, "before the first kill").await;
    let victim = stream_leader(&cluster, "ESGF_fault_").await;
    cluster.kill(victim);
    progress(100, "with the first leader killed").await;
    cluster.restart(victim).await;
    progress(100, "after the first restart").await;
    let victim = stream_leader(&cluster, "ESGF_fault_").await;
    cluster.kill(victim);
    progress(100, "with the second leader killed").await;
    cluster.restart(victim).await;
    progress(50, "after the second restart").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failures = 0;
    for w in writers {
        failures += w.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    for partition in 0..2u32 {
        let stored = read_all(&*store, "fault", partition).await;
        let offsets: Vec<u64> = stored.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (0..stored.len() as u64).collect::<Vec<_>>(),
            "dense offsets in partition {partition}"
        );
        let values: Vec<String> =
            stored.iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()).collect();
        let unique: HashSet<&String> = values.iter().collect();
        assert_eq!(unique.len(), values.len(), "a record stored twice in partition {partition}");
        for (p, base, batch) in acked.iter().filter(|a| a.0 == partition) {
            for (j, value) in batch.iter().enumerate() {
                let offset = *base as usize + j;
                assert_eq!(values.get(offset), Some(value), "acked record at {p}/{offset} missing or moved");
            }
        }
    }
    assert!(acked.len() >= 450, "only {} appends were acknowledged", acked.len());
    eprintln!("{} appends acknowledged, {failures} failed while nodes were down", acked.len());
}

/// The node currently leading the first stream whose name starts with `prefix`.
async fn stream_leader(cluster: &NatsCluster, prefix: &str) -> usize {
    let client = async_nats::ConnectOptions::new()
        .token(TEST_TOKEN.into())
        .connect(cluster.urls())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names: Result<Vec<String>, _> = {
            use futures_util::TryStreamExt;
            js.stream_names().try_collect().await
        };
        let name = names.as_ref().ok().and_then(|names| names.iter().find(|n| n.starts_with(prefix)));
        let info = match name {
            Some(name) => js.get_stream(name).await.map(|s| s.cached_info().clone()).ok(),
            None => None,
        };
        let leader = info.as_ref().and_then(|i| i.cluster.as_ref()).and_then(|c| c.leader.clone());
        if let Some(i) = leader.as_ref().and_then(|l| cluster.nodes.iter().position(|n| &n.name == l)) {
            return i;
        }
        eprintln!("looking for the leader of {prefix}*: names {names:?}, leader {leader:?}");
        assert!(Instant::now() < deadline, "no leader for {prefix}*");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
