//! Every ESGF fixture event (`../shared/fixtures/esgf`, beside the repository) checked at every validation
//! level against the outcome its README predicts. A fixture file missing from the table fails the test, so new
//! fixtures cannot slip through unjudged.

use std::path::PathBuf;

use esgf_events_envelope::{SchemaRegistry, ValidationPolicy, validate};
use serde_json::Value;

fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/esgf"))
}

/// (file, passes esgf-envelope, passes esgf-strict, why). Every event passes `none`.
const EXPECTED: &[(&str, bool, bool, &str)] = &[
    (
        "piddiplatsch_cmip6.json",
        true,
        false,
        "production POST; metadata holds only `time`; trimmed item (no geometry, links)",
    ),
    ("piddiplatsch_cmip6plus.json", true, false, "same as above"),
    ("piddiplatsch_cmip7.json", true, false, "same as above"),
    ("piddiplatsch_cordex-cmip6.json", true, false, "same as above"),
    (
        "esgf-core-utils_functional_event.json",
        true,
        true,
        "full KafkaEvent; item valid against stac-extensions/cmip6 v3.0.1",
    ),
    (
        "esgf-core-utils_functional_update_event.json",
        true,
        false,
        "PUT of a partial item (no stac_version, geometry, links, assets)",
    ),
    (
        "esgf-core-utils_functional_patch_event.json",
        true,
        true,
        "PATCH with a JSON Patch list and the full metadata",
    ),
    ("constructed_patch_retraction_event.json", true, true, "constructed PATCH retraction, full metadata"),
    (
        "constructed_patch_retraction_esgpublisher_event.json",
        true,
        true,
        "constructed PATCH retraction, full metadata",
    ),
    ("constructed_patch_replica_add_event.json", true, true, "constructed PATCH replica add, full metadata"),
    (
        "stac-transaction-api_esgfng_publish_event.json",
        true,
        false,
        "Kafka dump (checked: its record's value); no event_id/request_id",
    ),
    (
        "stac-transaction-api_post_event_example.json",
        true,
        false,
        "no event_id/request_id; no links; bbox is a nested list",
    ),
    (
        "stac-transaction-api_publish_event.json",
        false,
        false,
        "very early draft wrapped in `message`: not an ESGF envelope",
    ),
];

/// The events a fixture file holds: the file itself, or each record's `value` for a Kafka consumer-record dump.
fn events(text: &str) -> Vec<Vec<u8>> {
    let value: Value = serde_json::from_str(text).expect("fixture parses");
    match value {
        Value::Array(records) => records
            .iter()
            .map(|r| {
                serde_json::to_vec(r.get("value").expect("dump record has a value")).expect("serializes")
            })
            .collect(),
        _ => vec![text.as_bytes().to_vec()],
    }
}

#[test]
fn every_fixture_event_meets_the_readme_expectation_at_every_level() {
    let schemas = SchemaRegistry::builtin();
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures_dir()).expect("fixtures directory beside the repository") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if !name.ends_with(".json") || name.starts_with("schema_") {
            continue;
        }
        let (_, envelope_ok, strict_ok, why) = EXPECTED
            .iter()
            .find(|(file, ..)| *file == name)
            .unwrap_or_else(|| panic!("fixture {name} has no row in EXPECTED"));
        let text = std::fs::read_to_string(&path).expect("readable fixture");
        for event in events(&text) {
            assert_eq!(validate(ValidationPolicy::None, &event, &schemas), Ok(()), "{name} at none");
            let envelope = validate(ValidationPolicy::EsgfEnvelope, &event, &schemas);
            assert_eq!(envelope.is_ok(), *envelope_ok, "{name} at esgf-envelope ({why}): {envelope:?}");
            let strict = validate(ValidationPolicy::EsgfStrict, &event, &schemas);
            assert_eq!(strict.is_ok(), *strict_ok, "{name} at esgf-strict ({why}): {strict:?}");
        }
        seen += 1;
    }
    assert_eq!(seen, EXPECTED.len(), "every row names a fixture that exists");
}

#[test]
fn the_cmip6_extension_schema_is_applied_only_when_registered() {
    let text = std::fs::read_to_string(fixtures_dir().join("esgf-core-utils_functional_event.json")).unwrap();
    let mut event: Value = serde_json::from_str(&text).unwrap();
    // Break a member the CMIP6 extension constrains but the STAC core does not.
    event["data"]["payload"]["item"]["properties"]["cmip6:activity_id"] = Value::from(7);
    let bytes = serde_json::to_vec(&event).unwrap();
    let all = SchemaRegistry::builtin();
    let violations = validate(ValidationPolicy::EsgfStrict, &bytes, &all).unwrap_err();
    assert!(
        violations.iter().any(|v| v.pointer.starts_with("/data/payload/item/properties/cmip6:activity_id")),
        "{violations:?}"
    );
    assert_eq!(validate(ValidationPolicy::EsgfStrict, &bytes, &SchemaRegistry::empty()), Ok(()));
}
