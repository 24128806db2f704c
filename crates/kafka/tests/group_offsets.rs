//! `GroupOffsets` (crates/meta) over the real state store: commits are atomic, durable and listed per group.

use std::sync::Arc;

use esgf_events_meta::RedbMetaStore;
use esgf_events_meta::offsets::GroupOffsets;

#[tokio::test]
async fn commits_survive_reopening_and_list_only_their_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    {
        let offsets = GroupOffsets::new(Arc::new(RedbMetaStore::open(&path).unwrap()));
        offsets
            .commit_at(
                "readers",
                vec![
                    ("esgf2.publications".into(), 0, 41, Some("md\nwith newline".into())),
                    ("esgf2.publications".into(), 1, 7, None),
                    ("other".into(), 0, 3, None),
                ],
                1_700_000_000_000,
            )
            .await
            .unwrap();
        offsets.commit("readers-2", vec![("other".into(), 0, 99, None)]).await.unwrap();
        offsets.commit("readers", vec![("other".into(), 0, 4, None)]).await.unwrap();
    }
    let offsets = GroupOffsets::new(Arc::new(RedbMetaStore::open(&path).unwrap()));
    let one = offsets.fetch("readers", "esgf2.publications", 0).await.unwrap().unwrap();
    assert_eq!(
        (one.offset, one.metadata.as_str(), one.committed_ms),
        (41, "md\nwith newline", 1_700_000_000_000)
    );
    assert_eq!(offsets.fetch("readers", "other", 0).await.unwrap().unwrap().offset, 4);
    assert!(offsets.fetch("readers", "other", 1).await.unwrap().is_none());
    let listed = offsets.list("readers").await.unwrap();
    let keys: Vec<(String, u32, u64)> =
        listed.iter().map(|c| (c.topic.clone(), c.partition, c.offset)).collect();
    assert_eq!(
        keys,
        vec![
            ("esgf2.publications".into(), 0, 41),
            ("esgf2.publications".into(), 1, 7),
            ("other".into(), 0, 4)
        ]
    );
    assert_eq!(
        offsets.list("readers-2").await.unwrap().len(),
        1,
        "a group's prefix does not match another's"
    );
}
