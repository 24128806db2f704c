mod common;
use async_nats::HeaderMap;
use async_nats::jetstream::stream::Config;
use futures_util::StreamExt;
use std::time::Duration;

async fn req(c: &async_nats::Client, subj: &str, h: HeaderMap, payload: Vec<u8>) -> String {
    match tokio::time::timeout(Duration::from_secs(5), c.request_with_headers(subj.to_string(), h, payload.into())).await {
        Ok(Ok(m)) => format!("status={:?} hdr={:?} body={}", m.status, m.headers, String::from_utf8_lossy(&m.payload)),
        Ok(Err(e)) => format!("ERR {e:?}"),
        Err(_) => "TIMEOUT".into(),
    }
}

fn bh(id: &str, seq: usize, commit: bool, els: Option<u64>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Batch-Id", id);
    h.insert("Nats-Batch-Sequence", seq.to_string().as_str());
    if commit { h.insert("Nats-Batch-Commit", "1"); }
    if let Some(e) = els { h.insert("Nats-Expected-Last-Sequence", e.to_string().as_str()); }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let cl = common::NatsCluster::start().await;
    let c = async_nats::connect(cl.urls()).await.unwrap();
    let js = async_nats::jetstream::new(c.clone());
    js.create_stream(Config { name: "P".into(), subjects: vec!["p".into()], num_replicas: 3, allow_atomic_publish: true, allow_direct: true, ..Default::default() }).await.unwrap();
    // 1. good batch
    for i in 1..3 { c.publish_with_headers("p", bh("b1", i, false, if i == 1 { Some(0) } else { None }), "x".into()).await.unwrap(); }
    println!("1 commit: {}", req(&c, "p", bh("b1", 3, true, None), b"x".to_vec()).await);
    // 2. wrong ELS
    for i in 1..3 { c.publish_with_headers("p", bh("b2", i, false, if i == 1 { Some(0) } else { None }), "x".into()).await.unwrap(); }
    println!("2 commit wrong els: {}", req(&c, "p", bh("b2", 3, true, None), b"x".to_vec()).await);
    // 3. intermediate with reply
    println!("3 first with reply: {}", req(&c, "p", bh("b3", 1, false, Some(3)), b"x".to_vec()).await);
    println!("3 second with reply: {}", req(&c, "p", bh("b3", 2, false, None), b"x".to_vec()).await);
    println!("3 commit: {}", req(&c, "p", bh("b3", 3, true, None), b"x".to_vec()).await);
    println!("3b first with reply wrong els: {}", req(&c, "p", bh("b3b", 1, false, Some(1)), b"x".to_vec()).await);
    // single publish wrong ELS
    let mut h = HeaderMap::new(); h.insert("Nats-Expected-Last-Sequence", "1");
    println!("single wrong els: {}", req(&c, "p", h, b"x".to_vec()).await);
    // single-message batch (commit on seq 1)
    println!("single-msg batch: {}", req(&c, "p", bh("b4", 1, true, Some(6)), b"x".to_vec()).await);
    // 4. big batch 5000
    let t = std::time::Instant::now();
    for i in 1..5000 { c.publish_with_headers("p", bh("b5", i, false, if i == 1 { Some(7) } else { None }), vec![b'a'; 1000].into()).await.unwrap(); }
    println!("5000 commit: {} in {:?}", req(&c, "p", bh("b5", 5000, true, None), b"x".to_vec()).await, t.elapsed());
    let t = std::time::Instant::now();
    for i in 1..32 { c.publish_with_headers("p", bh("b6", i, false, if i == 1 { Some(5007) } else { None }), vec![b'a'; 1 << 20].into()).await.unwrap(); }
    println!("32MiB commit: {} in {:?}", req(&c, "p", bh("b6", 32, true, None), vec![b'a'; 1<<20]).await, t.elapsed());
    // 5. batch direct get
    let inbox = c.new_inbox();
    let mut sub = c.subscribe(inbox.clone()).await.unwrap();
    c.publish_with_reply("$JS.API.DIRECT.GET.P", inbox.clone(), r#"{"seq":2,"batch":3,"max_bytes":1}"#.into()).await.unwrap();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        println!("dg max_bytes=1: status={:?} desc={:?} hdr={:?} len={}", m.status, m.description, m.headers, m.payload.len());
        if m.status.is_some() { break; }
    }
    c.publish_with_reply("$JS.API.DIRECT.GET.P", inbox.clone(), r#"{"seq":2,"batch":3}"#.into()).await.unwrap();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        println!("dg: status={:?} desc={:?} hdr={:?} len={}", m.status, m.description, m.headers, m.payload.len());
        if m.status.is_some() { break; }
    }
    c.publish_with_reply("$JS.API.DIRECT.GET.P", inbox.clone(), r#"{"seq":99999,"batch":3}"#.into()).await.unwrap();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        println!("dg beyond: status={:?} desc={:?} hdr={:?} len={}", m.status, m.description, m.headers, m.payload.len());
        if m.status.is_some() { break; }
    }
    // 7. KV-like stream with atomic batch and per-subject expectations
    js.create_stream(Config { name: "KV_m".into(), subjects: vec!["$KV.m.>".into()], num_replicas: 3, allow_atomic_publish: true, max_messages_per_subject: 1, allow_rollup: true, deny_delete: true, ..Default::default() }).await.unwrap();
    let mut h1 = bh("k1", 1, false, None); h1.insert("Nats-Expected-Last-Subject-Sequence", "0");
    c.publish_with_headers("$KV.m.a.b", h1, "v1".into()).await.unwrap();
    let mut h2 = bh("k1", 2, true, None); h2.insert("KV-Operation", "DEL");
    println!("kv batch: {}", req(&c, "$KV.m.a.c", h2, vec![]).await);
    let mut h1 = bh("k2", 1, false, None); h1.insert("Nats-Expected-Last-Subject-Sequence", "0");
    c.publish_with_headers("$KV.m.a.b", h1, "v1".into()).await.unwrap();
    let h2 = bh("k2", 2, true, None);
    println!("kv batch wrong subj seq: {}", req(&c, "$KV.m.a.c", h2, vec![]).await);
    let h1 = bh("k3", 1, false, None);
    c.publish_with_headers("$KV.m.a.b", h1, "v1".into()).await.unwrap();
    let h2 = bh("k3", 2, true, None);
    println!("kv batch same subject twice: {}", req(&c, "$KV.m.a.b", h2, b"v2".to_vec()).await);
    let mut s = js.get_stream("KV_m").await.unwrap();
    println!("kv state {:?}", s.info().await.unwrap().state);
    // max_bytes/max_age front deletion
    js.create_stream(Config { name: "R".into(), subjects: vec!["r".into()], num_replicas: 3, max_bytes: 2000, ..Default::default() }).await.unwrap();
    for _ in 0..10 { js.publish("r", vec![b'a'; 300].into()).await.unwrap().await.unwrap(); }
    let mut s = js.get_stream("R").await.unwrap();
    println!("R state {:?}", s.info().await.unwrap().state);
}
