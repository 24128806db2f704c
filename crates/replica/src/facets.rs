//! The searchable columns of an indexed item, and the facet names `index query` accepts.
//!
//! Values come from the item's properties, under their flat name (`institution_id`, as older publishers and
//! the Solr-era documents spell them) or a namespaced one (`cmip6:institution_id`, as the STAC extensions do);
//! what the properties lack is parsed from a CMIP6-style dataset id
//! (`CMIP6.<activity>.<institution>.<source>.<experiment>.<member>.<table>.<variable>.<grid>.<version>`), so
//! the trimmed production items (which carry little more than a PID) are still found by institution or
//! variable.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

/// The searchable columns of one item. `None`: the item does not say and its id does not tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facets {
    pub collection: Option<String>,
    pub institution: Option<String>,
    pub source: Option<String>,
    pub experiment: Option<String>,
    pub variable: Option<String>,
    /// Without the `v` the dataset id puts before it: `20191122`.
    pub version: Option<String>,
    /// A missing or null `retracted` means not retracted, as ESGF publishes it.
    pub retracted: bool,
    /// `None` when the item has no `latest` property (the compact production items do not carry one).
    pub latest: Option<bool>,
}

/// The projects whose dataset ids follow the CMIP6 layout of ten dot-separated parts.
const CMIP6_LAYOUT_PROJECTS: [&str; 2] = ["CMIP6", "CMIP6Plus"];

impl Facets {
    /// The facets of `item` (a STAC item); `fallback_collection` (the event's `collection_id`) is used when the
    /// item names no collection.
    pub fn of(item: &Value, fallback_collection: Option<&str>) -> Facets {
        let empty = Map::new();
        let props = item.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
        let parsed = ParsedId::parse(id);
        let text_prop = |names: &[&str]| names.iter().find_map(|name| property(props, name).and_then(text));
        Facets {
            collection: item
                .get("collection")
                .and_then(text)
                .or_else(|| fallback_collection.filter(|c| !c.is_empty()).map(str::to_owned)),
            institution: text_prop(&["institution_id"]).or(parsed.institution),
            source: text_prop(&["source_id"]).or(parsed.source),
            experiment: text_prop(&["experiment_id"]).or(parsed.experiment),
            variable: text_prop(&["variable_id", "variable"]).or(parsed.variable),
            version: text_prop(&["version"]).or(parsed.version).map(|v| normalize_version(&v).to_owned()),
            retracted: property(props, "retracted").and_then(flag).unwrap_or(false),
            latest: property(props, "latest").and_then(flag),
        }
    }
}

/// The value of property `name`: flat, else `cmip6:`-namespaced, else under any other namespace (the first in
/// key order, so the choice is the same on every replica). Nulls count as absent.
fn property<'a>(props: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let present = |v: &&Value| !v.is_null();
    if let Some(value) = props.get(name).filter(present) {
        return Some(value);
    }
    if let Some(value) = props.get(&format!("cmip6:{name}")).filter(present) {
        return Some(value);
    }
    let mut namespaced: Vec<(&String, &Value)> = props
        .iter()
        .filter(|(key, value)| {
            !value.is_null()
                && key.len() > name.len() + 1
                && key.ends_with(name)
                && key.as_bytes()[key.len() - name.len() - 1] == b':'
        })
        .collect();
    namespaced.sort_unstable_by(|a, b| a.0.cmp(b.0));
    namespaced.first().map(|(_, value)| *value)
}

/// A property as column text: strings as they are, numbers in JSON form, a list as its items joined with
/// commas (Solr-era documents put single values in lists).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(text).collect();
            (!parts.is_empty()).then(|| parts.join(","))
        }
        _ => None,
    }
}

/// A boolean property; Solr-era documents say `"True"` / `"false"`.
fn flag(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// `v20191122` and `20191122` name the same version; the index stores the digits.
pub fn normalize_version(version: &str) -> &str {
    match version.strip_prefix(['v', 'V']) {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => digits,
        _ => version,
    }
}

/// What a dataset id tells about the dataset.
#[derive(Debug, Default)]
struct ParsedId {
    institution: Option<String>,
    source: Option<String>,
    experiment: Option<String>,
    variable: Option<String>,
    version: Option<String>,
}

impl ParsedId {
    fn parse(id: &str) -> ParsedId {
        let parts: Vec<&str> = id.split('.').collect();
        // Any project's id ends in `v<date>` when it carries a version (CMIP7 and CORDEX ids too).
        let version = parts
            .last()
            .filter(|last| parts.len() > 1 && normalize_version(last) != **last)
            .map(|last| (*last).to_owned());
        if parts.len() != 10
            || !CMIP6_LAYOUT_PROJECTS.contains(&parts[0])
            || parts.iter().any(|p| p.is_empty())
        {
            return ParsedId { version, ..ParsedId::default() };
        }
        let part = |i: usize| Some(parts[i].to_owned());
        ParsedId { institution: part(2), source: part(3), experiment: part(4), variable: part(7), version }
    }
}

/// A column `index query` can filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facet {
    Collection,
    Institution,
    Source,
    Experiment,
    Variable,
    Version,
    Retracted,
    Latest,
}

impl Facet {
    pub const ALL: [Facet; 8] = [
        Facet::Collection,
        Facet::Institution,
        Facet::Source,
        Facet::Experiment,
        Facet::Variable,
        Facet::Version,
        Facet::Retracted,
        Facet::Latest,
    ];

    /// The facet's name on the command line, which is also its column in the index.
    pub fn name(self) -> &'static str {
        match self {
            Facet::Collection => "collection",
            Facet::Institution => "institution",
            Facet::Source => "source",
            Facet::Experiment => "experiment",
            Facet::Variable => "variable",
            Facet::Version => "version",
            Facet::Retracted => "retracted",
            Facet::Latest => "latest",
        }
    }

    fn is_flag(self) -> bool {
        matches!(self, Facet::Retracted | Facet::Latest)
    }
}

impl fmt::Display for Facet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `facet=value` condition of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub facet: Facet,
    pub value: ConditionValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionValue {
    Text(String),
    Flag(bool),
}

impl FromStr for Condition {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let names = || Facet::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
        let (name, value) =
            text.split_once('=').ok_or_else(|| format!("expected FACET=VALUE (facets: {})", names()))?;
        let facet = Facet::ALL
            .into_iter()
            .find(|f| f.name() == name.trim())
            .ok_or_else(|| format!("unknown facet {name:?} (facets: {})", names()))?;
        let value = if facet.is_flag() {
            match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => ConditionValue::Flag(true),
                "false" | "0" | "no" => ConditionValue::Flag(false),
                _ => return Err(format!("{facet} is true or false, not {value:?}")),
            }
        } else if facet == Facet::Version {
            ConditionValue::Text(normalize_version(value).to_owned())
        } else {
            ConditionValue::Text(value.to_owned())
        };
        Ok(Condition { facet, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaced_properties_are_read() {
        let item = json!({"id": "x", "collection": "CMIP6", "properties": {
            "cmip6:institution_id": "IPSL", "cmip6:source_id": "IPSL-CM6A-LR", "cmip6:experiment_id": "ssp119",
            "cmip6:variable_id": "clcalipso", "version": "20191122", "retracted": false, "latest": true}});
        let facets = Facets::of(&item, None);
        assert_eq!(facets.institution.as_deref(), Some("IPSL"));
        assert_eq!(facets.source.as_deref(), Some("IPSL-CM6A-LR"));
        assert_eq!(facets.experiment.as_deref(), Some("ssp119"));
        assert_eq!(facets.variable.as_deref(), Some("clcalipso"));
        assert_eq!(facets.version.as_deref(), Some("20191122"));
        assert_eq!(facets.collection.as_deref(), Some("CMIP6"));
        assert!(!facets.retracted);
        assert_eq!(facets.latest, Some(true));
    }

    #[test]
    fn flat_properties_win_over_the_dataset_id() {
        // As in the esgfng Kafka dump: the properties say ALCF although the id says NASA-GISS.
        let item = json!({"id": "CMIP6.VolMIP.NASA-GISS.GISS-E2-1-G.volc-pinatubo-full.r6i10p1f1.Amon.zg.gn.v20190903",
            "properties": {"institution_id": "ALCF", "activity_id": ["VolMIP"], "retracted": null}});
        let facets = Facets::of(&item, Some("CMIP6"));
        assert_eq!(facets.institution.as_deref(), Some("ALCF"));
        assert_eq!(facets.source.as_deref(), Some("GISS-E2-1-G"));
        assert_eq!(facets.variable.as_deref(), Some("zg"));
        assert_eq!(facets.version.as_deref(), Some("20190903"));
        assert_eq!(facets.collection.as_deref(), Some("CMIP6"), "from the event when the item has none");
        assert!(!facets.retracted, "null retracted is not retracted");
        assert_eq!(facets.latest, None);
    }

    #[test]
    fn other_namespaces_and_solr_style_values_are_understood() {
        let item = json!({"id": "MIP-DRS7.CMIP7.CMIP.CCCma.CanESM5-1.piControl.r1i1p2f1.glb.mon.tas.tavg-h2m-hxy-u.g120.v20190429",
            "properties": {"cmip7:institution_id": "CCCma", "retracted": "True", "latest": "false",
                           "source_id": ["CanESM5-1"]}});
        let facets = Facets::of(&item, None);
        assert_eq!(facets.institution.as_deref(), Some("CCCma"));
        assert_eq!(facets.source.as_deref(), Some("CanESM5-1"));
        assert_eq!(facets.experiment, None, "a CMIP7 id is not parsed with the CMIP6 layout");
        assert_eq!(facets.version.as_deref(), Some("20190429"), "every layout ends with the version");
        assert!(facets.retracted);
        assert_eq!(facets.latest, Some(false));
    }

    #[test]
    fn ids_that_are_not_cmip6_shaped_tell_nothing_but_their_version() {
        for id in ["an_item", "CMIP6.too.short.v1", "", "CMIP6..a.b.c.d.e.f.g.v1"] {
            let facets = Facets::of(&json!({"id": id}), None);
            assert_eq!(facets.institution, None, "{id}");
        }
        assert_eq!(Facets::of(&json!({"id": "x.v2"}), None).version.as_deref(), Some("2"));
        assert_eq!(Facets::of(&json!({"id": "x.vnext"}), None).version, None);
    }

    #[test]
    fn conditions_parse_and_normalise() {
        let c: Condition = "version=v20200101".parse().unwrap();
        assert_eq!(c, Condition { facet: Facet::Version, value: ConditionValue::Text("20200101".into()) });
        let c: Condition = "retracted=TRUE".parse().unwrap();
        assert_eq!(c.value, ConditionValue::Flag(true));
        assert!("colour=red".parse::<Condition>().unwrap_err().contains("unknown facet"));
        assert!("latest=maybe".parse::<Condition>().is_err());
        assert!("institution".parse::<Condition>().is_err());
    }
}
