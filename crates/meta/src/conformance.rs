//! The conformance suite every [`MetaStore`] backend must pass.

use bytes::Bytes;

use crate::{MetaStore, Write};

/// Expands to one `#[tokio::test]` per case; `$open` is an async expression giving `(store, reopen_fn)`.
#[macro_export]
macro_rules! meta_conformance_suite {
    ($fresh:expr) => {
        $crate::meta_conformance_suite!(@cases $fresh;
            put_get_delete_roundtrip, scan_returns_prefix_in_key_order, multi_writes_are_atomic,
            compare_and_set_only_when_expected, logs_append_with_dense_sequence_numbers);
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
