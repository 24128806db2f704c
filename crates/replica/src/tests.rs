//! Tests of applying events to an in-memory index, on the shapes ESGF publishers really send (the fixtures
//! are compiled in, so these tests do no I/O).

use serde_json::{Value, json};

use crate::apply::{Action, ApplyError, apply};
use crate::facets::Facets;
use crate::index::{ErrorPolicy, Index, IndexError, PageEvent};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/esgf/", $name))
    };
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

/// The POST event of the esgfng Kafka dump (flat properties; the item the replica-add fixture patches).
fn esgfng_post() -> Value {
    parse(fixture!("stac-transaction-api_esgfng_publish_event.json"))[0]["value"].clone()
}

fn index() -> Index {
    let mut index = Index::in_memory().unwrap();
    index.bind_topic("esgf2.test").unwrap();
    index
}

/// Applies `event` in its own transaction, committing only on success (as a page of one would).
fn apply_one(index: &mut Index, event: &Value) -> Result<Action, ApplyError> {
    let tx = index.connection().transaction().unwrap();
    let result = apply(&tx, event);
    tx.commit().unwrap();
    result.map(|applied| applied.action)
}

fn item(index: &Index, id: &str) -> Value {
    parse(&index.get(id).unwrap().unwrap_or_else(|| panic!("{id} is not indexed")))
}

fn item_id(event: &Value) -> String {
    let payload = &event["data"]["payload"];
    payload["item"]["id"].as_str().or(payload["item_id"].as_str()).unwrap().to_owned()
}

/// A POST of a minimal item with this id, latest and not retracted.
fn post(id: &str) -> Value {
    json!({"metadata": {"event_id": "e"}, "data": {"type": "STAC", "payload": {"method": "POST",
        "collection_id": "CMIP6", "item": {"type": "Feature", "id": id, "collection": "CMIP6",
        "properties": {"latest": true, "retracted": false, "title": "t"},
        "assets": {"data0000": {"href": "https://example.org/a.nc", "roles": ["data"]}}}}}})
}

fn patch_event(id: &str, patch: Value) -> Value {
    json!({"metadata": {}, "data": {"payload": {"method": "PATCH", "collection_id": "CMIP6", "item_id": id,
        "patch": patch}}})
}

#[test]
fn post_stores_the_item_canonically_with_its_facets() {
    let mut index = index();
    let event = parse(fixture!("esgf-core-utils_functional_event.json"));
    assert_eq!(apply_one(&mut index, &event).unwrap(), Action::Created);
    let id = item_id(&event);
    let stored = index.get(&id).unwrap().unwrap();
    assert_eq!(stored, crate::to_canonical(&event["data"]["payload"]["item"]));
    let mut facets = Vec::new();
    index
        .query(
            None,
            &["institution=IPSL".parse().unwrap(), "variable=clcalipso".parse().unwrap()],
            None,
            &mut |i| {
                facets.push(i.to_owned());
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(facets, vec![stored]);
}

#[test]
fn post_of_an_existing_item_is_rejected_and_changes_nothing() {
    let mut index = index();
    let event = parse(fixture!("piddiplatsch_cmip6.json"));
    apply_one(&mut index, &event).unwrap();
    let before = index.get(&item_id(&event)).unwrap();
    let mut again = event.clone();
    again["data"]["payload"]["item"]["properties"]["retracted"] = json!(true);
    let err = apply_one(&mut index, &again).unwrap_err();
    assert!(matches!(err, ApplyError::Exists(_)), "{err:?}");
    assert_eq!((err.kind(), err.status()), ("item-exists", 409));
    assert_eq!(index.get(&item_id(&event)).unwrap(), before);
}

#[test]
fn compact_production_items_get_their_facets_from_the_dataset_id() {
    let mut index = index();
    for text in [
        fixture!("piddiplatsch_cmip6.json"),
        fixture!("piddiplatsch_cmip6plus.json"),
        fixture!("piddiplatsch_cmip7.json"),
        fixture!("piddiplatsch_cordex-cmip6.json"),
    ] {
        apply_one(&mut index, &parse(text)).unwrap();
    }
    let facets = Facets::of(
        &item(&index, "CMIP6.DCPP.MOHC.HadGEM3-GC31-MM.dcppA-hindcast.s1960-r10i1p1f2.day.huss.gn.v20200417"),
        None,
    );
    assert_eq!(facets.institution.as_deref(), Some("MOHC"));
    assert_eq!(facets.experiment.as_deref(), Some("dcppA-hindcast"));
    assert_eq!(facets.variable.as_deref(), Some("huss"));
    assert_eq!(facets.version.as_deref(), Some("20200417"));
    assert_eq!(index.item_count().unwrap(), 4);
}

#[test]
fn put_replaces_an_existing_item() {
    let mut index = index();
    let post = parse(fixture!("esgf-core-utils_functional_event.json"));
    apply_one(&mut index, &post).unwrap();
    let mut put = parse(fixture!("esgf-core-utils_functional_update_event.json"));
    let id = put["data"]["payload"]["item"]["id"].as_str().unwrap().to_owned();
    // The fixture's item_id is a placeholder ("an_item"); a real PUT targets the item it carries.
    put["data"]["payload"]["item_id"] = json!(id);
    assert_eq!(apply_one(&mut index, &put).unwrap(), Action::Replaced);
    let stored = item(&index, &id);
    assert_eq!(stored, put["data"]["payload"]["item"], "replaced whole, not merged");
    assert!(stored.get("assets").is_none());
}

#[test]
fn put_whose_item_differs_from_its_target_or_whose_target_is_missing_is_rejected() {
    let mut index = index();
    apply_one(&mut index, &parse(fixture!("esgf-core-utils_functional_event.json"))).unwrap();
    let put = parse(fixture!("esgf-core-utils_functional_update_event.json"));
    let err = apply_one(&mut index, &put).unwrap_err();
    assert!(matches!(&err, ApplyError::IdMismatch { target, .. } if target == "an_item"), "{err:?}");
    let mut missing = put.clone();
    missing["data"]["payload"]["item_id"] = json!("CMIP6.nope");
    missing["data"]["payload"]["item"]["id"] = json!("CMIP6.nope");
    assert!(matches!(apply_one(&mut index, &missing), Err(ApplyError::NotFound(id)) if id == "CMIP6.nope"));
}

#[test]
fn patch_of_a_missing_item_is_rejected() {
    let mut index = index();
    let err =
        apply_one(&mut index, &parse(fixture!("esgf-core-utils_functional_patch_event.json"))).unwrap_err();
    assert!(matches!(&err, ApplyError::NotFound(id) if id == "an_item"), "{err:?}");
    assert_eq!(err.kind(), "item-not-found");
    assert_eq!(index.item_count().unwrap(), 0);
}

#[test]
fn json_patch_list_adds_a_property() {
    let mut index = index();
    let mut patch = parse(fixture!("esgf-core-utils_functional_patch_event.json"));
    let post = parse(fixture!("esgf-core-utils_functional_event.json"));
    let id = item_id(&post);
    patch["data"]["payload"]["item_id"] = json!(id);
    apply_one(&mut index, &post).unwrap();
    assert_eq!(apply_one(&mut index, &patch).unwrap(), Action::Patched);
    assert_eq!(item(&index, &id)["properties"]["license"], "GqmvOMeWcuNhryVbwniL2");
}

#[test]
fn data_challenge_retraction_sets_retracted() {
    let mut index = index();
    let retraction = parse(fixture!("constructed_patch_retraction_event.json"));
    let id = item_id(&retraction);
    apply_one(&mut index, &post(&id)).unwrap();
    apply_one(&mut index, &retraction).unwrap();
    let stored = item(&index, &id);
    assert_eq!(stored["properties"]["retracted"], true);
    assert!(Facets::of(&stored, None).retracted);
    let mut hits = 0;
    index
        .query(None, &["retracted=true".parse().unwrap()], None, &mut |_| {
            hits += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(hits, 1);
}

#[test]
fn publisher_retraction_clears_latest_and_assets() {
    let mut index = index();
    let retraction = parse(fixture!("constructed_patch_retraction_esgpublisher_event.json"));
    let id = item_id(&retraction);
    apply_one(&mut index, &post(&id)).unwrap();
    apply_one(&mut index, &retraction).unwrap();
    let stored = item(&index, &id);
    assert_eq!(stored["properties"]["latest"], false);
    assert_eq!(stored["properties"]["retracted"], true);
    assert_eq!(stored["assets"], json!({}));
    let facets = Facets::of(&stored, None);
    assert_eq!((facets.retracted, facets.latest), (true, Some(false)));
}

#[test]
fn replica_addition_adds_alternate_assets() {
    let mut index = index();
    let post = esgfng_post();
    let add = parse(fixture!("constructed_patch_replica_add_event.json"));
    let id = item_id(&post);
    assert_eq!(id, item_id(&add), "the fixture patches the item of the esgfng dump");
    apply_one(&mut index, &post).unwrap();
    apply_one(&mut index, &add).unwrap();
    let stored = item(&index, &id);
    assert_eq!(
        stored["assets"]["globus"]["alternate"]["eagle.alcf.anl.gov"]["href"],
        "https://eagle.alcf.anl.gov/file-manager"
    );
    assert!(
        stored["assets"]["data0000"]["alternate"]["eagle.alcf.anl.gov"]["href"]
            .as_str()
            .unwrap()
            .ends_with(".nc")
    );
}

#[test]
fn the_operations_wrapper_is_a_json_patch() {
    let mut index = index();
    apply_one(&mut index, &post("CMIP6.a.b.c.d.e.f.g.h.v1")).unwrap();
    let wrapped = json!({"operations": [{"op": "add", "path": "/properties/retracted", "value": true}]});
    apply_one(&mut index, &patch_event("CMIP6.a.b.c.d.e.f.g.h.v1", wrapped)).unwrap();
    let stored = item(&index, "CMIP6.a.b.c.d.e.f.g.h.v1");
    assert_eq!(stored["properties"]["retracted"], true);
    assert!(stored.get("operations").is_none(), "not merged as a member");
}

#[test]
fn an_object_patch_is_a_merge_patch() {
    let mut index = index();
    apply_one(&mut index, &post("x.v1")).unwrap();
    let merge =
        json!({"properties": {"latest": false, "title": null, "cmip6:pid": "hdl:1/2"}, "operations": "kept"});
    apply_one(&mut index, &patch_event("x.v1", merge)).unwrap();
    let stored = item(&index, "x.v1");
    assert_eq!(stored["properties"], json!({"latest": false, "retracted": false, "cmip6:pid": "hdl:1/2"}));
    assert_eq!(stored["operations"], "kept", "a merge patch may set a member named operations");
    assert_eq!(stored["assets"]["data0000"]["roles"], json!(["data"]), "untouched members stay");
}

#[test]
fn a_patch_that_cannot_apply_is_rejected_whole() {
    let mut index = index();
    apply_one(&mut index, &post("x.v1")).unwrap();
    let before = index.get("x.v1").unwrap();
    for bad in [
        // The first operation would apply; the second cannot.
        json!([{"op": "replace", "path": "/properties/latest", "value": false},
               {"op": "replace", "path": "/properties/missing/deeper", "value": 1}]),
        json!([{"op": "frobnicate", "path": "/properties"}]),
        json!([{"op": "test", "path": "/properties/latest", "value": false}]),
        json!([{"op": "remove", "path": "/id"}]),
        json!({"id": "y.v1"}),
        json!("retract it"),
    ] {
        let err = apply_one(&mut index, &patch_event("x.v1", bad.clone())).unwrap_err();
        assert_eq!(err.kind(), "invalid-patch", "{bad}: {err}");
        assert_eq!(index.get("x.v1").unwrap(), before, "{bad}");
    }
    let mut no_patch = patch_event("x.v1", json!(null));
    no_patch["data"]["payload"].as_object_mut().unwrap().remove("patch");
    assert_eq!(apply_one(&mut index, &no_patch).unwrap_err().kind(), "invalid-patch");
}

#[test]
fn events_that_are_not_envelopes_are_invalid() {
    let mut index = index();
    for bad in [
        json!(null),
        json!({"message": {"data": {}}}),
        json!({"data": {"payload": {"method": "POST"}}}),
        json!({"data": {"payload": {"method": "POST", "item": {"properties": {}}}}}),
        json!({"data": {"payload": {"method": "UPSERT", "item_id": "x"}}}),
        json!({"data": {"payload": {"method": "PATCH", "patch": []}}}),
        parse(fixture!("stac-transaction-api_publish_event.json")),
    ] {
        let err = apply_one(&mut index, &bad).unwrap_err();
        assert_eq!(err.kind(), "invalid-event", "{bad}: {err}");
        assert!(err.is_rejection());
    }
}

#[test]
fn delete_removes_the_item() {
    let mut index = index();
    apply_one(&mut index, &post("x.v1")).unwrap();
    let delete = json!({"data": {"payload": {"method": "DELETE", "item_id": "x.v1"}}});
    assert_eq!(apply_one(&mut index, &delete).unwrap(), Action::Deleted);
    assert!(index.get("x.v1").unwrap().is_none());
    assert!(matches!(apply_one(&mut index, &delete), Err(ApplyError::NotFound(_))));
}

fn page(first_offset: u64, events: &[Value]) -> Vec<PageEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, event)| PageEvent { offset: first_offset + i as u64, event: Ok(event.clone()) })
        .collect()
}

#[test]
fn a_page_and_its_offset_commit_together_and_a_repeated_page_changes_nothing() {
    let mut index = index();
    let events = [post("a.v1"), post("b.v1"), patch_event("a.v1", json!({"properties": {"latest": false}}))];
    let outcome = index.apply_page(3, &page(0, &events), ErrorPolicy::Continue).unwrap();
    assert_eq!((outcome.applied, outcome.next_offset), (3, 3));
    assert_eq!(index.offsets().unwrap()[&3], 3);
    let export = |index: &Index| {
        let mut out = Vec::new();
        index.export(&mut out).unwrap();
        out
    };
    let before = export(&index);

    // Delivered again (a crash after the commit but before the reader moved on, say): nothing is applied twice,
    // so no duplicate POST is rejected either.
    let again = index.apply_page(3, &page(0, &events), ErrorPolicy::Continue).unwrap();
    assert_eq!((again.applied, again.rejected, again.duplicates, again.next_offset), (0, 0, 3, 3));
    assert_eq!(export(&index), before);
    assert!(index.pending_reports(10).unwrap().is_empty());

    // Overlapping: the known part is skipped, the new part applied.
    let more = [events[2].clone(), post("c.v1")];
    let outcome = index.apply_page(3, &page(2, &more), ErrorPolicy::Continue).unwrap();
    assert_eq!((outcome.applied, outcome.duplicates, outcome.next_offset), (1, 1, 4));
}

#[test]
fn a_page_past_the_stored_offset_is_refused_whole() {
    let mut index = index();
    index.apply_page(0, &page(0, &[post("a.v1")]), ErrorPolicy::Continue).unwrap();
    let err = index.apply_page(0, &page(5, &[post("b.v1")]), ErrorPolicy::Continue).unwrap_err();
    assert!(matches!(err, IndexError::Gap { partition: 0, expected: 1, found: 5 }), "{err:?}");
    assert!(index.get("b.v1").unwrap().is_none());
    assert_eq!(index.offsets().unwrap()[&0], 1);
}

#[test]
fn a_rejected_event_is_skipped_and_queued_as_an_rfc9457_report() {
    let mut index = index();
    let events = [
        post("a.v1"),
        patch_event("missing.v1", json!([{"op": "add", "path": "/properties/retracted", "value": true}])),
        post("b.v1"),
    ];
    let mut page = page(10, &events);
    page.push(PageEvent { offset: 13, event: Err("not JSON".into()) });
    let outcome = index.apply_page(1, &page, ErrorPolicy::Continue).unwrap();
    assert_eq!((outcome.applied, outcome.rejected, outcome.next_offset), (2, 2, 14));
    assert!(outcome.stopped.is_none());

    let reports = index.pending_reports(10).unwrap();
    assert_eq!(reports.len(), 2);
    let report: Value = parse(&reports[0].report);
    assert_eq!(report["data"], events[1]["data"]);
    assert_eq!(report["metadata"], events[1]["metadata"]);
    let error = &report["error"];
    assert_eq!(error["type"], "urn:esgf-events:problem:item-not-found");
    assert_eq!(error["status"], 404);
    assert_eq!(error["title"], "Item not found");
    assert!(error["detail"].as_str().unwrap().contains("missing.v1"));
    assert_eq!(
        (error["topic"].as_str(), error["partition"].as_u64(), error["offset"].as_u64()),
        (Some("esgf2.test"), Some(1), Some(11))
    );
    assert_eq!(error["item_id"], "missing.v1");
    let second: Value = parse(&reports[1].report);
    assert_eq!(second["error"]["type"], "urn:esgf-events:problem:invalid-event");
    assert_eq!(second["data"], Value::Null);

    index.remove_report(reports[0].seq).unwrap();
    assert_eq!(index.pending_reports(10).unwrap().len(), 1);
}

#[test]
fn stop_on_error_commits_what_came_before_and_stays_on_the_failing_event() {
    let mut index = index();
    let events = [post("a.v1"), post("a.v1"), post("b.v1")];
    let outcome = index.apply_page(0, &page(0, &events), ErrorPolicy::Stop).unwrap();
    assert_eq!((outcome.applied, outcome.rejected, outcome.next_offset), (1, 1, 1));
    let stopped = outcome.stopped.unwrap();
    assert_eq!((stopped.offset, stopped.kind), (1, "item-exists"));
    assert!(index.get("a.v1").unwrap().is_some());
    assert!(index.get("b.v1").unwrap().is_none(), "nothing after the failing event");
    assert_eq!(index.offsets().unwrap()[&0], 1);
    assert_eq!(index.pending_reports(10).unwrap().len(), 1, "reported before stopping");
}

#[test]
fn export_is_canonical_and_sorted_by_id_and_query_filters_on_facets() {
    let mut index = index();
    let mut events = vec![
        post("CMIP6.A.INST1.S.E.r1.Amon.tas.gn.v20200101"),
        post("CMIP6.A.INST2.S.E.r1.Amon.pr.gn.v20200101"),
    ];
    events.push(esgfng_post());
    events.push(parse(fixture!("piddiplatsch_cmip7.json")));
    index.apply_page(0, &page(0, &events), ErrorPolicy::Continue).unwrap();
    let mut out = Vec::new();
    assert_eq!(index.export(&mut out).unwrap(), 4);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut ids: Vec<String> = lines.iter().map(|l| parse(l)["id"].as_str().unwrap().to_owned()).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort();
        s
    };
    assert_eq!(ids, sorted);
    for line in &lines {
        assert_eq!(*line, crate::to_canonical(&parse(line)), "canonical");
    }

    let query = |conditions: &[&str], id: Option<&str>| {
        let conditions: Vec<_> = conditions.iter().map(|c| c.parse().unwrap()).collect();
        let mut found = Vec::new();
        index
            .query(id, &conditions, None, &mut |item| {
                found.push(parse(item)["id"].as_str().unwrap().to_owned());
                Ok(())
            })
            .unwrap();
        found
    };
    assert_eq!(query(&["institution=INST2"], None), vec!["CMIP6.A.INST2.S.E.r1.Amon.pr.gn.v20200101"]);
    assert_eq!(
        query(&["version=v20200101", "variable=tas"], None),
        vec!["CMIP6.A.INST1.S.E.r1.Amon.tas.gn.v20200101"]
    );
    assert_eq!(
        query(&["institution=ALCF", "variable=zg"], None).len(),
        1,
        "flat properties of the esgfng item"
    );
    assert_eq!(query(&["collection=CMIP7"], None).len(), 1);
    assert_eq!(query(&["latest=true"], None).len(), 2, "items without `latest` match neither true nor false");
    assert_eq!(query(&["retracted=false"], None).len(), 4);
    ids.truncate(1);
    assert_eq!(query(&[], Some(&ids[0])), ids);
    assert!(query(&["institution=nobody"], None).is_empty());
}
