//! The conformance suite every [`MetaStore`] backend must pass.

use bytes::Bytes;

use crate::{MetaStore, Write};

/// Expands to one `#[tokio::test]` per case; `$open` is an async expression giving `(store, reopen_fn)`.
#[macro_export]
macro_rules! meta_conformance_suite {
    ($fresh:expr) => {
        $crate::meta_conformance_suite!(@cases $fresh;
            put_get_delete_roundtrip, scan_returns_prefix_in_key_order, multi_writes_are_atomic,
            compare_and_set_only_when_expected, logs_append_with_dense_sequence_numbers,
            get_many_answers_each_key_in_order);
    };
    (@cases $fresh:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (_guard, store) = $fresh;
                $crate::conformance::$case(&store).await;
            }
        )*
    };
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub async fn put_get_delete_roundtrip<S: MetaStore>(s: &S) {
    assert_eq!(s.get("c", "k").await.unwrap(), None);
    s.put("c", "k", b("v1")).await.unwrap();
    s.put("c", "k", b("v2")).await.unwrap();
    assert_eq!(s.get("c", "k").await.unwrap(), Some(b("v2")));
    assert_eq!(s.get("other", "k").await.unwrap(), None, "collections are separate");
    s.delete("c", "k").await.unwrap();
    assert_eq!(s.get("c", "k").await.unwrap(), None);
    s.delete("c", "absent").await.unwrap();
}

pub async fn scan_returns_prefix_in_key_order<S: MetaStore>(s: &S) {
    for k in ["g/b", "g/a", "h/a", "g", "f/z"] {
        s.put("c", k, b(k)).await.unwrap();
    }
    let keys: Vec<String> = s.scan("c", "g/").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["g/a", "g/b"]);
    assert_eq!(s.scan("c", "").await.unwrap().len(), 5);
    assert!(s.scan("empty", "").await.unwrap().is_empty());
}

pub async fn multi_writes_are_atomic<S: MetaStore>(s: &S) {
    s.put("a", "gone", b("x")).await.unwrap();
    s.write(vec![
        Write { collection: "a", key: "1".into(), value: Some(b("one")) },
        Write { collection: "b", key: "2".into(), value: Some(b("two")) },
        Write { collection: "a", key: "gone".into(), value: None },
    ])
    .await
    .unwrap();
    assert_eq!(s.get("a", "1").await.unwrap(), Some(b("one")));
    assert_eq!(s.get("b", "2").await.unwrap(), Some(b("two")));
    assert_eq!(s.get("a", "gone").await.unwrap(), None);
}

pub async fn compare_and_set_only_when_expected<S: MetaStore>(s: &S) {
    assert!(s.compare_and_set("l", "lease", None, Some(b("node-1"))).await.unwrap());
    assert!(!s.compare_and_set("l", "lease", None, Some(b("node-2"))).await.unwrap());
    assert!(!s.compare_and_set("l", "lease", Some(b("node-2")), None).await.unwrap());
    assert!(s.compare_and_set("l", "lease", Some(b("node-1")), Some(b("node-2"))).await.unwrap());
    assert_eq!(s.get("l", "lease").await.unwrap(), Some(b("node-2")));
}

pub async fn logs_append_with_dense_sequence_numbers<S: MetaStore>(s: &S) {
    assert!(s.read_log("audit", 0, 10).await.unwrap().is_empty());
    for i in 1..=5u64 {
        assert_eq!(s.append("audit", b(&format!("e{i}"))).await.unwrap(), i);
    }
    let page = s.read_log("audit", 2, 2).await.unwrap();
    assert_eq!(page, vec![(3, b("e3")), (4, b("e4"))]);
    assert_eq!(s.read_log("audit", 5, 10).await.unwrap(), vec![]);
}

pub async fn get_many_answers_each_key_in_order<S: MetaStore>(s: &S) {
    let keys = |ks: &[&str]| ks.iter().map(|k| (*k).to_owned()).collect::<Vec<String>>();
    assert!(s.get_many("m", &[]).await.unwrap().is_empty());
    assert_eq!(s.get_many("never_written", &keys(&["a"])).await.unwrap(), vec![None]);
    s.write(vec![
        Write { collection: "m", key: "a".into(), value: Some(b("1")) },
        Write { collection: "m", key: "c".into(), value: Some(b("3")) },
        Write { collection: "other", key: "b".into(), value: Some(b("x")) },
    ])
    .await
    .unwrap();
    s.delete("m", "c").await.unwrap();
    s.put("m", "d", b("4")).await.unwrap();
    // Out of key order, repeated, absent, deleted, and present only in another collection.
    let got = s.get_many("m", &keys(&["d", "a", "b", "a", "c"])).await.unwrap();
    assert_eq!(got, vec![Some(b("4")), Some(b("1")), None, Some(b("1")), None]);
    // Many keys at once (more than a backend's concurrency bound), each answered with its own value.
    let many: Vec<String> = (0..100).map(|i| format!("k{i:03}")).collect();
    s.write(
        many.iter()
            .step_by(2)
            .map(|k| Write { collection: "m", key: k.clone(), value: Some(b(k)) })
            .collect(),
    )
    .await
    .unwrap();
    let got = s.get_many("m", &many).await.unwrap();
    for (i, (k, v)) in many.iter().zip(&got).enumerate() {
        assert_eq!(v, &(i % 2 == 0).then(|| b(k)), "{k}");
    }
}
