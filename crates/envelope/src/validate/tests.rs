use serde_json::{Value, json};

use super::*;

fn post() -> Value {
    json!({
        "metadata": {
            "auth": {"requester_data": {"client_id": "c", "iss": "https://auth.globus.org", "sub": "s"}},
            "event_id": "e1", "publisher": {"package": "p", "version": "1"}, "request_id": "r1",
            "time": "2025-01-01T00:00:00Z", "schema_version": "1.0.0"
        },
        "data": {"type": "STAC", "payload": {"method": "POST", "collection_id": "CMIP6", "item": {
            "type": "Feature", "stac_version": "1.1.0", "id": "CMIP6.x", "geometry": null,
            "properties": {"datetime": "2015-01-16T12:00:00Z"}, "links": [], "assets": {}
        }}}
    })
}

fn check(policy: ValidationPolicy, event: &Value) -> Result<(), Vec<Violation>> {
    validate(policy, &serde_json::to_vec(event).unwrap(), &SchemaRegistry::empty())
}

fn pointers(result: Result<(), Vec<Violation>>) -> Vec<String> {
    result.unwrap_err().into_iter().map(|v| v.pointer).collect()
}

#[test]
fn a_complete_post_passes_every_level() {
    for policy in [ValidationPolicy::None, ValidationPolicy::EsgfEnvelope, ValidationPolicy::EsgfStrict] {
        assert_eq!(check(policy, &post()), Ok(()), "{policy}");
    }
}

#[test]
fn none_accepts_anything_even_non_json() {
    assert_eq!(validate(ValidationPolicy::None, b"not json", &SchemaRegistry::empty()), Ok(()));
}

#[test]
fn missing_item_id_points_at_it() {
    let mut event = post();
    event["data"]["payload"]["item"].as_object_mut().unwrap().remove("id");
    assert_eq!(pointers(check(ValidationPolicy::EsgfEnvelope, &event)), ["/data/payload/item/id"]);
}

#[test]
fn wrong_method_points_at_the_method() {
    let mut event = post();
    event["data"]["payload"]["method"] = json!("DELETE");
    assert_eq!(pointers(check(ValidationPolicy::EsgfEnvelope, &event)), ["/data/payload/method"]);
}

#[test]
fn every_violation_is_listed_not_just_the_first() {
    let event = json!({"metadata": 5, "data": {"type": "stac", "payload": {"method": "PUT", "item": []}}});
    assert_eq!(
        pointers(check(ValidationPolicy::EsgfEnvelope, &event)),
        [
            "/metadata",
            "/data/type",
            "/data/payload/collection_id",
            "/data/payload/item_id",
            "/data/payload/item"
        ]
    );
}

#[test]
fn bad_json_patch_operations_point_at_each_bad_member() {
    let event = json!({"metadata": {}, "data": {"type": "STAC", "payload": {
        "method": "PATCH", "collection_id": "CMIP6", "item_id": "CMIP6.x",
        "patch": [
            {"op": "add", "path": "/properties/retracted", "value": true},
            {"op": "add", "path": "properties/x"},
            {"op": "frobnicate", "path": "/a"},
            {"op": "move", "path": "/a/~2"},
            "not an op"
        ]
    }}});
    assert_eq!(
        pointers(check(ValidationPolicy::EsgfEnvelope, &event)),
        [
            "/data/payload/patch/1/path",
            "/data/payload/patch/1/value",
            "/data/payload/patch/2/op",
            "/data/payload/patch/3/path",
            "/data/payload/patch/3/from",
            "/data/payload/patch/4"
        ]
    );
}

#[test]
fn patch_accepts_merge_objects_op_lists_and_wrapped_op_lists() {
    for patch in [
        json!({"properties": {"retracted": true}}),
        json!([{"op": "remove", "path": "/assets/data0001"}]),
        json!({"operations": [{"op": "add", "path": "/properties/retracted", "value": true}]}),
    ] {
        let event = json!({"metadata": {}, "data": {"type": "STAC", "payload": {
            "method": "PATCH", "collection_id": "CMIP6", "item_id": "CMIP6.x", "patch": patch}}});
        assert_eq!(check(ValidationPolicy::EsgfEnvelope, &event), Ok(()), "{patch}");
    }
    let wrapped_bad = json!({"metadata": {}, "data": {"type": "STAC", "payload": {
        "method": "PATCH", "collection_id": "CMIP6", "item_id": "CMIP6.x",
        "patch": {"operations": [{"op": "copy", "path": "/a"}]}}}});
    assert_eq!(
        pointers(check(ValidationPolicy::EsgfEnvelope, &wrapped_bad)),
        ["/data/payload/patch/operations/0/from"]
    );
}

#[test]
fn strict_requires_the_full_metadata_block() {
    let mut event = post();
    event["metadata"] = json!({"time": "2026-07-19T08:14:12.057860"});
    assert_eq!(check(ValidationPolicy::EsgfEnvelope, &event), Ok(()));
    assert_eq!(
        pointers(check(ValidationPolicy::EsgfStrict, &event)),
        [
            "/metadata/auth",
            "/metadata/publisher",
            "/metadata/event_id",
            "/metadata/request_id",
            "/metadata/schema_version"
        ]
    );
}

#[test]
fn strict_requires_a_stac_feature() {
    let mut event = post();
    let item = event["data"]["payload"]["item"].as_object_mut().unwrap();
    item.insert("type".into(), json!("Collection"));
    item.insert("geometry".into(), json!({"type": "Point", "coordinates": [0, 0]}));
    item.remove("links");
    item["properties"] = json!({"datetime": null, "start_datetime": "2015-01-01T00:00:00Z"});
    assert_eq!(
        pointers(check(ValidationPolicy::EsgfStrict, &event)),
        [
            "/data/payload/item/type",
            "/data/payload/item/bbox",
            "/data/payload/item/properties/end_datetime",
            "/data/payload/item/links"
        ]
    );
}

#[test]
fn schema_violation_points_into_the_item() {
    let registry = SchemaRegistry::builtin()
        .subset(&["https://stac-extensions.github.io/cmip6/v3.0.1/schema.json"])
        .unwrap();
    let mut event = post();
    event["data"]["payload"]["item"]["stac_extensions"] =
        json!(["https://stac-extensions.github.io/cmip6/v3.0.1/schema.json"]);
    let result = validate(ValidationPolicy::EsgfStrict, &serde_json::to_vec(&event).unwrap(), &registry);
    let violations = result.unwrap_err();
    assert!(!violations.is_empty());
    assert!(violations.iter().all(|v| v.pointer.starts_with("/data/payload/item")), "{violations:?}");
    assert!(violations.iter().all(|v| v.message.contains("cmip6/v3.0.1")), "{violations:?}");
    // Not registered for the topic: not checked.
    assert_eq!(check(ValidationPolicy::EsgfStrict, &event), Ok(()));
}

#[test]
fn non_object_events_and_malformed_json_are_one_violation_at_the_root() {
    assert_eq!(pointers(check(ValidationPolicy::EsgfEnvelope, &json!([1]))), [""]);
    let malformed = validate(ValidationPolicy::EsgfEnvelope, b"{", &SchemaRegistry::empty());
    assert_eq!(pointers(malformed), [""]);
}

#[test]
fn policy_names_round_trip() {
    for policy in [ValidationPolicy::None, ValidationPolicy::EsgfEnvelope, ValidationPolicy::EsgfStrict] {
        assert_eq!(ValidationPolicy::parse(policy.as_str()), Some(policy));
    }
    assert_eq!(ValidationPolicy::parse("strict"), None);
}

#[test]
fn json_pointer_syntax() {
    for ok in ["", "/", "/a/b", "/a~0b/~1c"] {
        assert!(is_json_pointer(ok), "{ok}");
    }
    for bad in ["a", "/a~", "/a~2"] {
        assert!(!is_json_pointer(bad), "{bad}");
    }
}
