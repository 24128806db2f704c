//! The ESGF project extension JSON Schemas the service knows, compiled into the binary (see
//! `schemas/README.md` for their provenance) and looked up by `$id`. Validation must never reach the network
//! or the file system, so no resolver is enabled and any reference outside a schema's own document is refused:
//! such a schema fails to compile and is reported as unusable rather than half-checked.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

/// The shipped schema files, in the order of `schemas/README.md`.
const BUILTIN: &[&str] = &[
    include_str!("../schemas/schema_cmip6_v1.0.0.json"),
    include_str!("../schemas/schema_cmip6_v1.0.1.json"),
    include_str!("../schemas/schema_cmip6_v2.0.0.json"),
    include_str!("../schemas/schema_cmip6_v3.0.1.json"),
    include_str!("../schemas/schema_cmip6_v3.0.2.json"),
    include_str!("../schemas/schema_cmip6_v3.0.3.json"),
    include_str!("../schemas/schema_cmip6_v3.0.4.json"),
    include_str!("../schemas/schema_cmip6plus_v1.0.1.json"),
    include_str!("../schemas/schema_cmip6plus_v1.0.4.json"),
    include_str!("../schemas/schema_cmip6plus_v1.1.0.json"),
    include_str!("../schemas/schema_cmip6plus_v2.0.1.json"),
    include_str!("../schemas/schema_cmip7_v1.0.0.json"),
    include_str!("../schemas/schema_cmip7_v1.0.1.json"),
    include_str!("../schemas/schema_cmip7_v1.2.3.json"),
    include_str!("../schemas/schema_cmip7_v1.2.6.json"),
    include_str!("../schemas/schema_cmip7_v1.2.7.json"),
    include_str!("../schemas/schema_cmip7_v1.2.8.json"),
    include_str!("../schemas/schema_cmip7_v3.0.1.json"),
    include_str!("../schemas/schema_cmip7_v3.0.2.json"),
    include_str!("../schemas/schema_cmip7_v3.0.4.json"),
    include_str!("../schemas/schema_cmip7_v3.0.5.json"),
    include_str!("../schemas/schema_cmip7_v3.0.6.json"),
    include_str!("../schemas/schema_cordex-cmip6_v1.2.1.json"),
    include_str!("../schemas/schema_cordex-cmip6_v1.2.2.json"),
    include_str!("../schemas/schema_cordex-cmip6_v3.1.0.json"),
    include_str!("../schemas/schema_cordex-cmip6_v3.1.1.json"),
    include_str!("../schemas/schema_cordex-cmip6_v3.1.2.json"),
    include_str!("../schemas/schema_stac-extensions-cmip6_v1.0.0.json"),
    include_str!("../schemas/schema_stac-extensions-cmip6_v2.0.0.json"),
    include_str!("../schemas/schema_stac-extensions-cmip6_v3.0.0.json"),
    include_str!("../schemas/schema_stac-extensions-cmip6_v3.0.1.json"),
    include_str!("../schemas/schema_stac-extensions-cmip6_v3.0.2.json"),
];

/// Why a schema cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("schema {0:?} is not registered")]
    Unknown(String),
    #[error("schema {id:?} cannot be used: {detail}")]
    Unusable { id: String, detail: String },
}

struct Entry {
    source: &'static str,
    /// Compiled on first use: most deployments use a handful of the shipped schemas.
    compiled: OnceLock<Result<jsonschema::Validator, String>>,
}

/// Extension schemas by `$id` (without a trailing `#`). Cheap to clone; [`SchemaRegistry::subset`] gives the
/// view of one topic (only the schemas it registered), sharing compiled validators.
#[derive(Clone, Default)]
pub struct SchemaRegistry {
    entries: BTreeMap<String, Arc<Entry>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.entries.keys()).finish()
    }
}

/// A schema `$id` as items name it in `stac_extensions`: no fragment marker.
pub fn normalize_schema_id(id: &str) -> &str {
    id.strip_suffix('#').unwrap_or(id)
}

impl SchemaRegistry {
    /// No schemas: extension checks are skipped.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Every shipped schema. Built once per process; clones share it.
    pub fn builtin() -> Self {
        static BUILT: OnceLock<SchemaRegistry> = OnceLock::new();
        BUILT
            .get_or_init(|| {
                let mut entries = BTreeMap::new();
                for source in BUILTIN {
                    // The files are checked by the tests below, so a missing `$id` cannot ship.
                    let Some(id) = serde_json::from_str::<Value>(source)
                        .ok()
                        .and_then(|v| v.get("$id").and_then(Value::as_str).map(str::to_owned))
                    else {
                        continue;
                    };
                    entries.insert(
                        normalize_schema_id(&id).to_owned(),
                        Arc::new(Entry { source, compiled: OnceLock::new() }),
                    );
                }
                SchemaRegistry { entries }
            })
            .clone()
    }

    /// The registered ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(normalize_schema_id(id))
    }

    /// The schemas named by `ids` (each must be registered here), e.g. the ones a topic declares.
    pub fn subset<S: AsRef<str>>(&self, ids: &[S]) -> Result<Self, SchemaError> {
        let mut entries = BTreeMap::new();
        for id in ids {
            let id = normalize_schema_id(id.as_ref());
            let entry = self.entries.get(id).ok_or_else(|| SchemaError::Unknown(id.to_owned()))?;
            entries.insert(id.to_owned(), Arc::clone(entry));
        }
        Ok(Self { entries })
    }

    /// Compiles (once) and returns the validator for `id`; `Ok(None)` when `id` is not registered here.
    pub(crate) fn validator(&self, id: &str) -> Result<Option<&jsonschema::Validator>, SchemaError> {
        let id = normalize_schema_id(id);
        let Some(entry) = self.entries.get(id) else { return Ok(None) };
        entry
            .compiled
            .get_or_init(|| compile(entry.source))
            .as_ref()
            .map(Some)
            .map_err(|detail| SchemaError::Unusable { id: id.to_owned(), detail: detail.clone() })
    }

    /// Compiles every schema now, so a topic registering an unusable one is refused when it is configured
    /// rather than when the first event arrives.
    pub fn check(&self) -> Result<(), SchemaError> {
        for id in self.entries.keys() {
            self.validator(id)?;
        }
        Ok(())
    }
}

/// Refuses every reference outside the schema's own document: nothing is fetched, ever.
struct NoRemote;

impl jsonschema::Retrieve for NoRemote {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("remote reference {} refused: schemas are never fetched", uri.as_str()).into())
    }
}

fn compile(source: &str) -> Result<jsonschema::Validator, String> {
    // Several published ESGF schemas write named groups Python's way, `(?P<name>...)`, which is not ECMA-262
    // and so fails the draft-07 meta-schema's `regex` format; `(?<name>...)` means the same.
    let source = source.replace("(?P<", "(?<");
    let schema: Value = serde_json::from_str(&source).map_err(|e| e.to_string())?;
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .with_retriever(NoRemote)
        .build(&schema)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_schema_has_a_distinct_id() {
        assert_eq!(SchemaRegistry::builtin().ids().count(), BUILTIN.len());
    }

    #[test]
    fn shipped_schemas_compile_offline_except_the_one_with_a_remote_ref() {
        let registry = SchemaRegistry::builtin();
        for id in registry.ids() {
            let result = registry.validator(id);
            if id == "https://stac-extensions.github.io/cmip6/v3.0.0/schema.json" {
                let err = result.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(err.contains("refused"), "{id}: {err}");
            } else {
                assert!(matches!(result, Ok(Some(_))), "{id}: {:?}", result.err());
            }
        }
    }

    #[test]
    fn subset_refuses_unknown_ids_and_accepts_a_trailing_hash() {
        let registry = SchemaRegistry::builtin();
        let sub = registry.subset(&["https://stac-extensions.github.io/cmip6/v3.0.1/schema.json#"]).unwrap();
        assert_eq!(sub.ids().count(), 1);
        assert!(matches!(registry.subset(&["https://example.org/x.json"]), Err(SchemaError::Unknown(_))));
    }
}
