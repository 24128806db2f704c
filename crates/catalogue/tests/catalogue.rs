//! The catalogue over a real state store: persistence, scheduled transitions on a manual clock, changelog
//! entries, publish checks and idempotent-publish bookkeeping.

use std::sync::Arc;
use std::time::Duration;

use esgf_events_catalogue::{Catalogue, Dedupe, PublishRefusal, Recorded, SettingsChange, TopicState};
use esgf_events_engine::ManualClock;
use esgf_events_meta::changelog::list_changes;
use esgf_events_meta::{MetaStore, RedbMetaStore};

const T0: i64 = 1_800_000_000_000;

fn change(json: &str) -> SettingsChange {
    let serde_json::Value::Object(mut map) = serde_json::from_str(json).unwrap() else { panic!("object") };
    SettingsChange::take_from(&mut map).unwrap()
}

fn setup() -> (tempfile::TempDir, Arc<dyn MetaStore>, Arc<ManualClock>) {
    let dir = tempfile::tempdir().unwrap();
    let meta: Arc<dyn MetaStore> = Arc::new(RedbMetaStore::open(&dir.path().join("state.redb")).unwrap());
    (dir, meta, Arc::new(ManualClock::new(T0)))
}

#[tokio::test]
async fn scheduled_deprecation_takes_effect_at_its_time_and_is_logged() {
    let (_dir, meta, clock) = setup();
    let catalogue = Catalogue::open(Arc::clone(&meta), clock.clone(), None).await.unwrap();
    catalogue
        .update("t", &change(r#"{"state":"deprecated","state_at":"2030-06-01T00:00:00Z"}"#), "op")
        .await
        .unwrap();
    assert_eq!(catalogue.apply_due().await.unwrap(), []);
    assert_eq!(catalogue.get("t").settings.state, TopicState::Active);

    clock.set_ms(chrono::DateTime::parse_from_rfc3339("2030-06-01T00:00:00Z").unwrap().timestamp_millis());
    assert_eq!(catalogue.apply_due().await.unwrap(), [("t".to_owned(), TopicState::Deprecated)]);
    let entry = catalogue.get("t");
    assert_eq!(entry.settings.state, TopicState::Deprecated);
    assert_eq!(entry.settings.scheduled, None);

    let kinds: Vec<String> =
        list_changes(meta.as_ref(), 0, 10).await.unwrap().into_iter().map(|(_, e)| e.kind).collect();
    assert_eq!(kinds, ["topic-state-scheduled", "topic-state"]);

    // Persisted: a new catalogue over the same store sees it.
    let reopened = Catalogue::open(meta, clock, None).await.unwrap();
    assert_eq!(reopened.get("t").settings.state, TopicState::Deprecated);
}

#[tokio::test]
async fn read_only_and_retired_topics_refuse_publishes() {
    let (_dir, meta, clock) = setup();
    let catalogue = Catalogue::open(meta, clock, None).await.unwrap();
    let event: &[u8] = br#"{"metadata":{},"data":{}}"#;
    assert_eq!(catalogue.check_publish("t", [event]), Ok(()));
    catalogue.update("t", &change(r#"{"state":"read-only","successor":"t2"}"#), "op").await.unwrap();
    assert!(matches!(catalogue.check_publish("t", [event]), Err(PublishRefusal::ReadOnly { .. })));
    catalogue.update("t", &change(r#"{"state":"retired"}"#), "op").await.unwrap();
    assert!(matches!(catalogue.check_publish("t", [event]), Err(PublishRefusal::Retired { .. })));
}

#[tokio::test]
async fn validation_lists_violations_of_every_event_of_a_batch() {
    let (_dir, meta, clock) = setup();
    let catalogue = Catalogue::open(meta, clock, None).await.unwrap();
    catalogue.update("t", &change(r#"{"validation":"esgf-envelope"}"#), "op").await.unwrap();
    let good: &[u8] = br#"{"metadata":{},"data":{"type":"STAC","payload":{"method":"PATCH","collection_id":"C","item_id":"i","patch":{}}}}"#;
    let bad: &[u8] = br#"{"metadata":{},"data":{"type":"STAC","payload":{"method":"POST","collection_id":"C","item":{}}}}"#;
    let Err(PublishRefusal::Invalid { violations, .. }) = catalogue.check_publish("t", [good, bad, bad])
    else {
        panic!("refused")
    };
    let found: Vec<(usize, &str)> = violations.iter().map(|v| (v.index, v.pointer.as_str())).collect();
    assert_eq!(found, [(1, "/data/payload/item/id"), (2, "/data/payload/item/id")]);
}

#[tokio::test]
async fn event_ids_are_remembered_within_the_window() {
    let (_dir, meta, clock) = setup();
    let catalogue = Catalogue::open(meta, clock.clone(), None).await.unwrap();
    let a = r#"{"metadata":{"event_id":"a"}}"#;
    let b = r#"{"metadata":{"event_id":"b"}}"#;
    let none = r#"{"metadata":{}}"#;
    let window = Some(Duration::from_secs(60));
    assert_eq!(
        catalogue.find_duplicates("t", [a, b, a, none], window).await.unwrap(),
        [Dedupe::New, Dedupe::New, Dedupe::SameAs(0), Dedupe::New]
    );
    catalogue.record_event_ids("t", [(a, 0, 7), (b, 1, 3)]).await.unwrap();
    let a_at = Recorded { partition: 0, offset: 7, time_ms: T0 };
    assert_eq!(catalogue.find_duplicates("t", [a], window).await.unwrap(), [Dedupe::Duplicate(a_at)]);
    // Another topic has its own ids.
    assert_eq!(catalogue.find_duplicates("u", [a], window).await.unwrap(), [Dedupe::New]);
    clock.advance_ms(61_000);
    assert_eq!(catalogue.find_duplicates("t", [a], window).await.unwrap(), [Dedupe::New]);
    assert_eq!(catalogue.prune_event_ids("t", window).await.unwrap(), 2);
}

#[tokio::test]
async fn changes_made_by_another_node_apply_here_once_refreshed_or_reloaded() {
    let (_dir, meta, clock) = setup();
    let a = Catalogue::open(Arc::clone(&meta), clock.clone(), None).await.unwrap();
    let b = Catalogue::open(Arc::clone(&meta), clock, None).await.unwrap();
    let event: &[u8] = br#"{"metadata":{},"data":{}}"#;

    a.update("t", &change(r#"{"state":"read-only"}"#), "op").await.unwrap();
    assert_eq!(b.check_publish("t", [event]), Ok(()), "not yet seen by the other node");
    b.refresh("event_ids", "t").await.unwrap();
    assert_eq!(b.check_publish("t", [event]), Ok(()), "other collections are ignored");
    b.refresh(esgf_events_catalogue::CATALOGUE_COLLECTION, "t").await.unwrap();
    assert!(matches!(b.check_publish("t", [event]), Err(PublishRefusal::ReadOnly { .. })));

    a.remove("t").await.unwrap();
    a.update("u", &change(r#"{"description":"new"}"#), "op").await.unwrap();
    b.reload().await.unwrap();
    assert_eq!(b.check_publish("t", [event]), Ok(()), "removed elsewhere: back to the defaults");
    assert_eq!(b.get("u").settings.description.as_deref(), Some("new"));
}
