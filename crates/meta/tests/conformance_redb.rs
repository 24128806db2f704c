//! The state-store conformance suite on the embedded redb backend, plus durability across reopen.

use bytes::Bytes;
use esgf_events_meta::{MetaStore, RedbMetaStore};

fn fresh() -> (tempfile::TempDir, RedbMetaStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbMetaStore::open(&dir.path().join("state.redb")).unwrap();
    (dir, store)
}

esgf_events_meta::meta_conformance_suite!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let s = RedbMetaStore::open(&path).unwrap();
        s.put("c", "k", Bytes::from_static(b"v")).await.unwrap();
        s.append("log", Bytes::from_static(b"e1")).await.unwrap();
    }
    let s = RedbMetaStore::open(&path).unwrap();
    assert_eq!(s.get("c", "k").await.unwrap(), Some(Bytes::from_static(b"v")));
    assert_eq!(s.append("log", Bytes::from_static(b"e2")).await.unwrap(), 2);
}
