//! Server-side event filters: `filter=PATH:VALUE` (equality on one member of the event) and `key_prefix=`
//! (prefix of the record key), ANDed together as a [`Selector`].
//!
//! Syntax of one filter: PATH is JSON member names joined by `.` (`data.payload.collection_id`); VALUE is what
//! follows the LAST `:`, so a member name may itself hold colons (`properties.cmip6:institution_id:IPSL`). A
//! VALUE that holds a colon is written as a JSON string: `path:"a:b"`.
//!
//! Matching: a string member matches its decoded text; a number, `true`, `false` or `null` matches its JSON
//! spelling (`size:5` matches `5`, not `5.0`); an array matches if any element does, and an array met on the
//! way down the path is looked into element by element. When the last member name is not found, a namespaced
//! member ending in `:<name>` matches too (`properties.institution_id` finds `cmip6:institution_id`):
//! production events are looser than the published models about prefixes. Evaluation parses one object level
//! at a time and never builds the event's tree.

use std::fmt;
use std::str::FromStr;

use serde_json::value::RawValue;

use crate::json;

/// Most member names in one filter path.
pub const MAX_PATH_SEGMENTS: usize = 16;
/// Longest filter (path, colon and value), in bytes.
pub const MAX_FILTER_BYTES: usize = 1024;
/// Most filters one [`Selector`] holds.
pub const MAX_FILTERS: usize = 16;

const SYNTAX: &str = "expected PATH:VALUE, e.g. data.payload.collection_id:CMIP6 (PATH: JSON member names \
                      joined by '.'; the VALUE follows the last ':'; quote a VALUE holding ':' as in \
                      path:\"a:b\")";

/// A filter that could not be parsed; its message shows the expected syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter '{input}': {reason}; {SYNTAX}")]
pub struct FilterError {
    /// The offending filter (cut to 100 characters).
    pub input: String,
    pub reason: String,
}

impl FilterError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        let input = match input.char_indices().nth(100) {
            Some((cut, _)) => format!("{}...", &input[..cut]),
            None => input.to_owned(),
        };
        FilterError { input, reason: reason.into() }
    }
}

/// One `PATH:VALUE` equality filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    path: Vec<String>,
    value: String,
}

impl Filter {
    /// A filter on `path` (member names, outermost first) equal to `value`.
    pub fn new(path: Vec<String>, value: String) -> Result<Filter, FilterError> {
        let filter = Filter { path, value };
        let text = filter.to_string();
        check_path(&text, &filter.path.iter().map(String::as_str).collect::<Vec<_>>())?;
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::new(&text, format!("a filter is at most {MAX_FILTER_BYTES} bytes")));
        }
        Ok(filter)
    }

    /// Parses `PATH:VALUE` (see the module documentation).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.is_empty() {
            return Err(FilterError::new(text, "the filter is empty"));
        }
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::new(text, format!("a filter is at most {MAX_FILTER_BYTES} bytes")));
        }
        // Member names never hold a quote here, so the first quote, if any, opens a quoted value.
        let (path, value) = match text.find('"') {
            Some(quote) => {
                let Some(path) = text[..quote].strip_suffix(':') else {
                    return Err(FilterError::new(
                        text,
                        "a quote may only open the VALUE, right after the ':' (member names cannot hold '\"')",
                    ));
                };
                let value: String = serde_json::from_str(&text[quote..]).map_err(|_| {
                    FilterError::new(text, "the quoted VALUE is not one complete JSON string")
                })?;
                (path, value)
            }
            None => {
                let Some((path, value)) = text.rsplit_once(':') else {
                    return Err(FilterError::new(text, "no ':' separates the PATH from the VALUE"));
                };
                if value.is_empty() {
                    return Err(FilterError::new(
                        text,
                        "the VALUE is empty (write PATH:\"\" to match an empty string)",
                    ));
                }
                (path, value.to_owned())
            }
        };
        let segments: Vec<&str> = path.split('.').collect();
        check_path(text, &segments)?;
        Ok(Filter { path: segments.into_iter().map(str::to_owned).collect(), value })
    }

    /// The member names of the path, outermost first.
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// The value compared against.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether the JSON event `event` satisfies this filter. Text that is not JSON never does.
    pub fn matches(&self, event: &str) -> bool {
        matches_at(event, &self.path, &self.value, false)
    }
}

fn check_path(text: &str, segments: &[&str]) -> Result<(), FilterError> {
    if segments.is_empty() || segments.iter().any(|s| s.is_empty()) {
        return Err(FilterError::new(
            text,
            "the PATH has an empty member name (a leading, trailing or doubled '.', or no PATH at all)",
        ));
    }
    if segments.len() > MAX_PATH_SEGMENTS {
        return Err(FilterError::new(text, format!("a PATH has at most {MAX_PATH_SEGMENTS} member names")));
    }
    if segments.iter().any(|s| s.contains(['"', '.'])) {
        return Err(FilterError::new(text, "member names cannot hold '\"' or '.'"));
    }
    Ok(())
}

/// Does the value at `path` below `raw` equal `want`? `flatten`: `raw` may be an array to look into (once per
/// level, so nested arrays cannot make this recurse without consuming the path).
fn matches_at(raw: &str, path: &[String], want: &str, flatten: bool) -> bool {
    if flatten && raw.starts_with('[') {
        let mut hit = false;
        json::each_element(raw, |element| {
            hit = matches_at(element.get(), path, want, false);
            !hit
        });
        return hit;
    }
    let Some((name, rest)) = path.split_first() else {
        return false;
    };
    if !rest.is_empty() {
        return json::member(raw, name).is_some_and(|value| matches_at(value.get(), rest, want, true));
    }
    // The last name: an exact member wins; without one, any `<namespace>:<name>` member may match.
    let mut exact = None;
    let mut namespaced = Vec::new();
    json::each_member(raw, |member, value| {
        if member == name {
            exact = Some(value);
            return false;
        }
        if member.len() > name.len() + 1
            && member.ends_with(name.as_str())
            && member.as_bytes()[member.len() - name.len() - 1] == b':'
        {
            namespaced.push(value);
        }
        true
    });
    match exact {
        Some(value) => value_equals(value, want, true),
        None => namespaced.into_iter().any(|value| value_equals(value, want, true)),
    }
}

fn value_equals(raw: &RawValue, want: &str, flatten: bool) -> bool {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => json::string(raw).is_some_and(|s| s == want),
        Some(b'[') if flatten => {
            let mut hit = false;
            json::each_element(text, |element| {
                hit = value_equals(element, want, false);
                !hit
            });
            hit
        }
        Some(b'[' | b'{') | None => false,
        // Numbers, true, false, null: compared by their JSON spelling.
        Some(_) => text == want,
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Filter::parse(text)
    }
}

/// The canonical spelling, which [`Filter::parse`] reads back to the same filter: the value is quoted when it
/// would not survive unquoted (empty, or holding `:` or `"`).
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path.join("."))?;
        f.write_str(":")?;
        if self.value.is_empty() || self.value.contains([':', '"']) {
            // Serializing a string cannot fail.
            f.write_str(&serde_json::to_string(&self.value).map_err(|_| fmt::Error)?)
        } else {
            f.write_str(&self.value)
        }
    }
}

/// Filters ANDed with an optional record-key prefix. The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    filters: Vec<Filter>,
    key_prefix: Option<Vec<u8>>,
}

impl Selector {
    /// Parses every `filter=` value and takes the `key_prefix=` one, refusing more than [`MAX_FILTERS`].
    pub fn parse<'a>(
        filters: impl IntoIterator<Item = &'a str>,
        key_prefix: Option<&str>,
    ) -> Result<Selector, FilterError> {
        let mut parsed = Vec::new();
        for text in filters {
            if parsed.len() == MAX_FILTERS {
                return Err(FilterError::new(text, format!("at most {MAX_FILTERS} filters may be combined")));
            }
            parsed.push(Filter::parse(text)?);
        }
        Ok(Selector { filters: parsed, key_prefix: key_prefix.map(|p| p.as_bytes().to_vec()) })
    }

    /// Adds a filter (ANDed with the others).
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filters.push(filter);
        self
    }

    /// Keeps only records whose key starts with `prefix` (records without a key never match).
    pub fn with_key_prefix(mut self, prefix: impl Into<Vec<u8>>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }

    pub fn key_prefix(&self) -> Option<&[u8]> {
        self.key_prefix.as_deref()
    }

    /// Whether every record is selected (nothing to check).
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.key_prefix.is_none()
    }

    /// Whether the record with this key and value is selected. Values that are not UTF-8 JSON fail every
    /// filter (they have no members), but can still pass a key prefix alone.
    pub fn matches(&self, key: Option<&[u8]>, value: &[u8]) -> bool {
        if let Some(prefix) = &self.key_prefix
            && !key.is_some_and(|k| k.starts_with(prefix))
        {
            return false;
        }
        if self.filters.is_empty() {
            return true;
        }
        let Ok(event) = std::str::from_utf8(value) else {
            return false;
        };
        self.filters.iter().all(|filter| filter.matches(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn filter(text: &str) -> Filter {
        Filter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    const EVENT: &str = r#"{
      "data": {"payload": {"collection_id": "CMIP6", "method": "POST",
        "item": {"id": "CMIP6.ScenarioMIP.IPSL.x", "properties": {
          "cmip6:institution_id": "IPSL", "institution_id": "should-not-shadow", "size": 1691149215,
          "retracted": false, "version": 12.50, "datetime": null, "cmip6:variable_id": ["tas", "pr"],
          "cmip6:source_id": "IPSL-CM6A-LR", "esgf:source_id": "other", "note": "a:b"}},
        "links": [{"rel": "self", "href": "x"}, {"rel": "parent", "href": "y"}]}}}"#;

    #[test]
    fn the_value_follows_the_last_colon() {
        let f = filter("data.payload.item.properties.cmip6:institution_id:IPSL");
        assert_eq!(f.path(), ["data", "payload", "item", "properties", "cmip6:institution_id"]);
        assert_eq!(f.value(), "IPSL");
    }

    #[test]
    fn a_quoted_value_may_hold_colons_and_escapes() {
        let f = filter(r#"a.b:"x:y""#);
        assert_eq!((f.path(), f.value()), (&["a".to_owned(), "b".to_owned()][..], "x:y"));
        assert_eq!(filter(r#"a:"q\"uote""#).value(), "q\"uote");
        assert_eq!(filter(r#"ns:a:"""#).value(), "");
        assert_eq!(filter(r#"ns:a:"""#).path(), ["ns:a"]);
    }

    #[test]
    fn bad_syntax_is_refused_with_the_expected_syntax() {
        for bad in [
            "",
            "no-colon",
            ":CMIP6",
            "data..payload:x",
            ".data:x",
            "data.:x",
            "path:",
            r#"pa"th:x"#,
            r#"path:"unterminated"#,
            r#"path:"a" trailing"#,
            r#"path:x"y""#,
        ] {
            let err = Filter::parse(bad).expect_err(bad);
            let message = err.to_string();
            assert!(
                message.contains("PATH:VALUE") && message.contains("data.payload.collection_id:CMIP6"),
                "{message}"
            );
        }
        let long = format!("a:{}", "x".repeat(MAX_FILTER_BYTES));
        assert!(Filter::parse(&long).is_err());
        let deep = format!("{}:x", vec!["a"; MAX_PATH_SEGMENTS + 1].join("."));
        assert!(Filter::parse(&deep).is_err());
    }

    #[test]
    fn strings_numbers_booleans_and_null_compare_by_value() {
        for (text, expected) in [
            ("data.payload.collection_id:CMIP6", true),
            ("data.payload.collection_id:cmip6", false),
            ("data.payload.method:POST", true),
            ("data.payload.item.properties.size:1691149215", true),
            ("data.payload.item.properties.size:1691149216", false),
            ("data.payload.item.properties.version:12.50", true),
            ("data.payload.item.properties.version:12.5", false),
            ("data.payload.item.properties.retracted:false", true),
            ("data.payload.item.properties.retracted:true", false),
            ("data.payload.item.properties.datetime:null", true),
            (r#"data.payload.item.properties.note:"a:b""#, true),
            ("data.payload.item:x", false),
            ("data.payload.missing:x", false),
            ("data.payload.collection_id.deeper:x", false),
        ] {
            assert_eq!(filter(text).matches(EVENT), expected, "{text}");
        }
    }

    #[test]
    fn arrays_match_if_any_element_does() {
        assert!(filter("data.payload.item.properties.variable_id:pr").matches(EVENT));
        assert!(!filter("data.payload.item.properties.variable_id:ua").matches(EVENT));
        assert!(filter("data.payload.links.rel:parent").matches(EVENT));
        assert!(!filter("data.payload.links.rel:child").matches(EVENT));
    }

    #[test]
    fn a_missing_last_name_matches_namespaced_members() {
        assert!(filter("data.payload.item.properties.source_id:IPSL-CM6A-LR").matches(EVENT));
        assert!(filter("data.payload.item.properties.source_id:other").matches(EVENT));
        // An exact member wins over namespaced ones.
        assert!(!filter("data.payload.item.properties.institution_id:IPSL").matches(EVENT));
        assert!(filter("data.payload.item.properties.institution_id:should-not-shadow").matches(EVENT));
        assert!(filter("data.payload.item.properties.cmip6:institution_id:IPSL").matches(EVENT));
        // Only a whole ':'-separated suffix counts.
        assert!(!filter("data.payload.item.properties.id:IPSL").matches(EVENT));
    }

    #[test]
    fn non_json_never_matches() {
        assert!(!filter("a:b").matches("not json"));
        assert!(!filter("a:b").matches(""));
    }

    #[test]
    fn selector_ands_filters_and_the_key_prefix() {
        let selector =
            Selector::parse(["data.payload.collection_id:CMIP6", "data.payload.method:POST"], Some("CMIP6."))
                .unwrap();
        assert!(selector.matches(Some(b"CMIP6.x"), EVENT.as_bytes()));
        assert!(!selector.matches(Some(b"CMIP7.x"), EVENT.as_bytes()));
        assert!(!selector.matches(None, EVENT.as_bytes()));
        let selector =
            Selector::parse(["data.payload.collection_id:CMIP6", "data.payload.method:PUT"], None).unwrap();
        assert!(!selector.matches(Some(b"CMIP6.x"), EVENT.as_bytes()));
        let keyed = Selector::default().with_key_prefix("k");
        assert!(keyed.matches(Some(b"k1"), b"\xff not json"));
        assert!(Selector::default().is_empty() && Selector::default().matches(None, b""));
        let too_many = vec!["a:b"; MAX_FILTERS + 1];
        assert!(Selector::parse(too_many, None).is_err());
    }

    fn segment() -> impl Strategy<Value = String> {
        // Anything but '.' and '"', colons included (namespaced names).
        "[a-z:_0-9é -]{1,12}"
    }

    proptest! {
        /// The canonical spelling parses back to the same filter, whatever the names and value hold.
        #[test]
        fn display_round_trips_through_parse(
            path in proptest::collection::vec(segment(), 1..5),
            value in "[ -~é\\n]{0,20}",
        ) {
            let f = Filter::new(path, value).expect("valid parts");
            let text = f.to_string();
            prop_assert_eq!(Filter::parse(&text).expect("canonical text parses"), f);
        }

        /// Unquoted values without ':' or '"' parse as written.
        #[test]
        fn plain_values_parse_as_written(path in proptest::collection::vec(segment(), 1..5), value in "[^:\"]{1,20}") {
            let text = format!("{}:{value}", path.join("."));
            let f = Filter::parse(&text).expect("valid");
            prop_assert_eq!(f.value(), value.as_str());
            prop_assert_eq!(f.path(), &path[..]);
        }

        /// The parser never panics, whatever it is given.
        #[test]
        fn parse_is_total(text in "\\PC{0,40}") {
            let _ = Filter::parse(&text);
        }

        /// A filter on a generated member matches exactly the events holding that value there.
        #[test]
        fn filter_matches_the_value_it_names(name in "[a-z]{1,8}", value in "[ -~]{0,12}", other in "[ -~]{0,12}") {
            let event = serde_json::json!({ "data": { "payload": { name.clone(): value.clone() } } }).to_string();
            let f = Filter::new(vec!["data".into(), "payload".into(), name.clone()], value.clone()).expect("valid");
            prop_assert!(f.matches(&event));
            let g = Filter::new(vec!["data".into(), "payload".into(), name], other.clone()).expect("valid");
            prop_assert_eq!(g.matches(&event), other == value);
        }
    }
}
