//! The index as files: reopening, topic binding, snapshots and bootstrapping from them.

use std::path::Path;

use esgf_events_replica::{Bootstrapped, ErrorPolicy, Index, IndexError, PageEvent, bootstrap, snapshot};
use serde_json::{Value, json};

fn post(id: &str) -> Value {
    json!({"metadata": {}, "data": {"payload": {"method": "POST", "collection_id": "CMIP6",
        "item": {"id": id, "properties": {"latest": true}}}}})
}

fn page(first: u64, events: &[Value]) -> Vec<PageEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| PageEvent { offset: first + i as u64, event: Ok(e.clone()) })
        .collect()
}

fn export(path: &Path) -> String {
    let mut out = Vec::new();
    Index::open_read_only(path).unwrap().export(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn follow_some(path: &Path, partition: u32, first: u64, ids: &[&str]) {
    let mut index = Index::open_or_create(path).unwrap();
    index.bind_topic("t").unwrap();
    let events: Vec<Value> = ids.iter().map(|id| post(id)).collect();
    index.apply_page(partition, &page(first, &events), ErrorPolicy::Continue).unwrap();
}

#[test]
fn an_index_keeps_its_items_offsets_and_topic_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.db");
    follow_some(&path, 0, 0, &["a.v1", "b.v1"]);
    let mut index = Index::open(&path).unwrap();
    assert_eq!(index.topic(), Some("t"));
    assert_eq!(index.offsets().unwrap()[&0], 2);
    assert_eq!(index.item_count().unwrap(), 2);
    let err = index.bind_topic("other").unwrap_err();
    assert!(matches!(err, IndexError::TopicMismatch { .. }), "{err:?}");
}

#[test]
fn files_that_are_not_indexes_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not SQLite at all, but it is long enough to have a header")
        .unwrap();
    assert!(Index::open_or_create(&text).is_err());
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
    let before = std::fs::read(&foreign).unwrap();
    assert!(matches!(Index::open_or_create(&foreign), Err(IndexError::NotAnIndex { .. })));
    assert_eq!(std::fs::read(&foreign).unwrap(), before, "not even switched to WAL");
    assert!(matches!(Index::open(&dir.path().join("absent.db")), Err(IndexError::Missing { .. })));
}

#[test]
fn a_snapshot_bootstraps_a_replica_that_resumes_from_the_snapshot_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (a, snap, b) = (dir.path().join("a.db"), dir.path().join("snap.db"), dir.path().join("b.db"));
    follow_some(&a, 0, 0, &["a.v1", "b.v1"]);
    follow_some(&a, 1, 0, &["c.v1"]);
    // A report A still has to deliver must not be delivered again by B.
    {
        let mut index = Index::open(&a).unwrap();
        index.apply_page(1, &page(1, &[post("c.v1")]), ErrorPolicy::Continue).unwrap();
        assert_eq!(index.pending_reports(10).unwrap().len(), 1);
    }

    // Taken while A is open for writing, as a running replica would be.
    let a_open = Index::open(&a).unwrap();
    let info = snapshot(&a, &snap).unwrap();
    drop(a_open);
    assert_eq!(info.items, 3);
    assert_eq!(info.offsets, [(0, 2), (1, 2)].into_iter().collect());
    assert_eq!(info.topic.as_deref(), Some("t"));
    assert!(matches!(snapshot(&a, &snap), Err(IndexError::Exists { .. })), "never overwritten");

    let created = bootstrap(&snap, &b, "t").unwrap();
    assert_eq!(created, Bootstrapped::Created { snapshot_id: info.snapshot_id.clone() });
    assert_eq!(export(&b), export(&a));
    let replica = Index::open(&b).unwrap();
    assert_eq!(replica.offsets().unwrap(), info.offsets);
    assert!(replica.pending_reports(10).unwrap().is_empty());
    let lineage = replica.info().unwrap();
    assert_eq!(lineage.bootstrapped_from.as_deref(), Some(info.snapshot_id.as_str()));
    assert_eq!(lineage.snapshot_id, None);
    drop(replica);

    // B follows on; a restart with the same command leaves it as it is.
    follow_some(&b, 0, 2, &["d.v1"]);
    let before = export(&b);
    assert_eq!(bootstrap(&snap, &b, "t").unwrap(), Bootstrapped::Resumed { snapshot_id: info.snapshot_id });
    assert_eq!(export(&b), before);
    assert_eq!(Index::open(&b).unwrap().offsets().unwrap()[&0], 3);
}

#[test]
fn bootstrapping_over_another_index_or_from_a_non_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, snap, other) = (dir.path().join("a.db"), dir.path().join("snap.db"), dir.path().join("other.db"));
    follow_some(&a, 0, 0, &["a.v1"]);
    snapshot(&a, &snap).unwrap();
    follow_some(&other, 0, 0, &["z.v1"]);
    let before = export(&other);
    assert!(matches!(bootstrap(&snap, &other, "t"), Err(IndexError::BootstrapConflict { .. })));
    assert_eq!(export(&other), before, "left alone");
    assert!(
        matches!(bootstrap(&snap, &a, "t"), Err(IndexError::BootstrapConflict { .. })),
        "the source itself"
    );
    assert!(matches!(bootstrap(&a, &dir.path().join("new.db"), "t"), Err(IndexError::NotASnapshot { .. })));
    assert!(matches!(
        bootstrap(&snap, &dir.path().join("new.db"), "another-topic"),
        Err(IndexError::TopicMismatch { .. })
    ));
    assert!(!dir.path().join("new.db").exists());

    // A byte-for-byte copy of the snapshot is the snapshot: accepted.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&snap, &copy).unwrap();
    assert!(matches!(bootstrap(&snap, &copy, "t"), Ok(Bootstrapped::Resumed { .. })));
}
