//! A topic's catalogue settings (what the engine does not know: validation policy, discovery metadata,
//! lifecycle), their JSON form in the state store, and the checked application of a change to them.

use chrono::{DateTime, SecondsFormat, Utc};
use esgf_events_envelope::{SchemaRegistry, ValidationPolicy};
use esgf_events_meta::changelog::ChangeEntry;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::CatalogueError;

/// Where a topic is in its life. Operators move it; a retired topic never comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum TopicState {
    /// Works normally.
    #[default]
    Active,
    /// Still works; every response about it carries `Deprecation`, `Sunset` and `Link` headers.
    Deprecated,
    /// Publishing is refused; reading works.
    ReadOnly,
    /// Publishing is refused; reading works until the data ages out; hidden from the default listing.
    Retired,
}

impl TopicState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deprecated => "deprecated",
            Self::ReadOnly => "read-only",
            Self::Retired => "retired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "deprecated" => Some(Self::Deprecated),
            "read-only" => Some(Self::ReadOnly),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }

    /// Whether new events are accepted.
    pub fn accepts_publishes(self) -> bool {
        matches!(self, Self::Active | Self::Deprecated)
    }
}

/// A state change announced for a future time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduled {
    pub state: TopicState,
    pub at_ms: i64,
}

/// Everything the catalogue holds about one topic. Stored as JSON in the `topic_catalogue` collection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TopicSettings {
    #[serde(with = "policy_text", default)]
    pub validation: ValidationPolicy,
    #[serde(default)]
    pub description: Option<String>,
    /// Contact e-mail of whoever answers for the topic.
    #[serde(default)]
    pub owner: Option<String>,
    /// Extension schema `$id`s registered for the topic (checked under `esgf-strict`).
    #[serde(default)]
    pub schemas: Vec<String>,
    #[serde(default)]
    pub state: TopicState,
    /// When the current state began (ms).
    #[serde(default)]
    pub state_since_ms: Option<i64>,
    /// When the topic left `active` (ms): the `Deprecation` header's date, kept through read-only and retired.
    #[serde(default)]
    pub deprecated_since_ms: Option<i64>,
    /// When the topic is planned to stop working (ms); the `Sunset` header.
    #[serde(default)]
    pub sunset_ms: Option<i64>,
    /// The topic that replaces this one.
    #[serde(default)]
    pub successor: Option<String>,
    /// URL of the announcement of the deprecation.
    #[serde(default)]
    pub announcement: Option<String>,
    #[serde(default)]
    pub scheduled: Option<Scheduled>,
    /// This topic has a companion `<topic>.errors` topic.
    #[serde(default)]
    pub errors_topic: bool,
}

mod policy_text {
    use super::*;

    pub fn serialize<S: Serializer>(policy: &ValidationPolicy, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(policy.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ValidationPolicy, D::Error> {
        let text = String::deserialize(d)?;
        ValidationPolicy::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown policy {text:?}")))
    }
}

/// Longest description accepted.
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
/// Longest URL accepted (announcement).
pub const MAX_URL_BYTES: usize = 2048;
/// Most extension schemas one topic may register.
pub const MAX_SCHEMAS: usize = 32;

/// A requested change of settings, taken out of a JSON request body (`POST /v1/topics`, `PATCH
/// /v1/topics/{topic}`). Absent members keep the current value; `null` clears a nullable one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsChange {
    pub validation: Option<String>,
    pub description: Option<Option<String>>,
    pub owner: Option<Option<String>>,
    pub schemas: Option<Vec<String>>,
    pub state: Option<String>,
    /// RFC 3339: apply `state` at this time instead of now.
    pub state_at: Option<String>,
    pub sunset: Option<Option<String>>,
    pub successor: Option<Option<String>>,
    pub announcement: Option<Option<String>>,
    /// Creation only: also create `<topic>.errors`.
    pub errors_topic: Option<bool>,
}

/// The body members a [`SettingsChange`] is made of.
pub const SETTINGS_MEMBERS: [&str; 10] = [
    "validation",
    "description",
    "owner",
    "schemas",
    "state",
    "state_at",
    "sunset",
    "successor",
    "announcement",
    "errors_topic",
];

impl SettingsChange {
    /// Removes the catalogue members from `body` (so the caller can parse the rest strictly) and returns them.
    pub fn take_from(body: &mut Map<String, Value>) -> Result<Self, CatalogueError> {
        fn text(name: &str, v: Value) -> Result<String, CatalogueError> {
            match v {
                Value::String(s) => Ok(s),
                other => Err(CatalogueError::Invalid(format!("{name} must be a string, got {other}"))),
            }
        }
        fn nullable(name: &str, v: Value) -> Result<Option<String>, CatalogueError> {
            match v {
                Value::Null => Ok(None),
                v => text(name, v).map(Some),
            }
        }
        let mut change = SettingsChange::default();
        if let Some(v) = body.remove("validation") {
            change.validation = Some(text("validation", v)?);
        }
        if let Some(v) = body.remove("description") {
            change.description = Some(nullable("description", v)?);
        }
        if let Some(v) = body.remove("owner") {
            change.owner = Some(nullable("owner", v)?);
        }
        if let Some(v) = body.remove("schemas") {
            let Value::Array(items) = v else {
                return Err(CatalogueError::Invalid("schemas must be an array of schema ids".into()));
            };
            change.schemas =
                Some(items.into_iter().map(|v| text("each schema id", v)).collect::<Result<_, _>>()?);
        }
        if let Some(v) = body.remove("state") {
            change.state = Some(text("state", v)?);
        }
        if let Some(v) = body.remove("state_at") {
            change.state_at = nullable("state_at", v)?;
        }
        if let Some(v) = body.remove("sunset") {
            change.sunset = Some(nullable("sunset", v)?);
        }
        if let Some(v) = body.remove("successor") {
            change.successor = Some(nullable("successor", v)?);
        }
        if let Some(v) = body.remove("announcement") {
            change.announcement = Some(nullable("announcement", v)?);
        }
        if let Some(v) = body.remove("errors_topic") {
            let Value::Bool(b) = v else {
                return Err(CatalogueError::Invalid("errors_topic must be true or false".into()));
            };
            change.errors_topic = Some(b);
        }
        Ok(change)
    }

    pub fn is_empty(&self) -> bool {
        *self == SettingsChange::default()
    }
}

/// RFC 3339 in UTC, seconds precision: how the catalogue shows its times.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn parse_time(name: &str, text: &str) -> Result<i64, CatalogueError> {
    DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()).map_err(|e| {
        CatalogueError::Invalid(format!("{name} must be an RFC 3339 time like 2027-01-01T00:00:00Z: {e}"))
    })
}

fn check_url(text: &str) -> Result<(), CatalogueError> {
    let ok = (text.starts_with("https://") || text.starts_with("http://"))
        && text.len() <= MAX_URL_BYTES
        // It goes into a `Link` header between angle brackets.
        && text.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"'));
    if ok {
        Ok(())
    } else {
        Err(CatalogueError::Invalid(format!(
            "announcement must be an http(s) URL of at most {MAX_URL_BYTES} printable ASCII characters"
        )))
    }
}

fn check_topic_name(name: &str) -> Result<(), CatalogueError> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CatalogueError::Invalid(format!("successor {name:?} is not a valid topic name")))
    }
}

fn check_owner(owner: &str) -> Result<(), CatalogueError> {
    let ok = owner.len() <= 254
        && owner.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !owner.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(CatalogueError::Invalid(format!("owner {owner:?} is not a contact e-mail address")))
    }
}

/// What applying a change did: the new settings and the changelog entries it calls for.
#[derive(Debug)]
pub struct Applied {
    pub settings: TopicSettings,
    pub changes: Vec<ChangeEntry>,
}

fn entry(now_ms: i64, topic: &str, kind: &str, title: String, detail: String) -> ChangeEntry {
    ChangeEntry {
        time_ms: u64::try_from(now_ms).unwrap_or(0),
        kind: kind.to_owned(),
        title,
        detail,
        topic: Some(topic.to_owned()),
    }
}

/// Applies `change` to `current`, checking every member before anything changes.
pub fn apply(
    topic: &str,
    current: &TopicSettings,
    change: &SettingsChange,
    now_ms: i64,
    actor: &str,
    schemas: &SchemaRegistry,
) -> Result<Applied, CatalogueError> {
    let mut next = current.clone();
    let mut changes = Vec::new();
    if let Some(text) = &change.validation {
        next.validation = ValidationPolicy::parse(text).ok_or_else(|| {
            CatalogueError::Invalid(format!(
                "validation must be none, esgf-envelope or esgf-strict, got {text:?}"
            ))
        })?;
    }
    if let Some(description) = &change.description {
        if description.as_ref().is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS) {
            return Err(CatalogueError::Invalid(format!(
                "description is over {MAX_DESCRIPTION_CHARS} characters"
            )));
        }
        next.description.clone_from(description);
    }
    if let Some(owner) = &change.owner {
        if let Some(owner) = owner {
            check_owner(owner)?;
        }
        next.owner.clone_from(owner);
    }
    if let Some(ids) = &change.schemas {
        if ids.len() > MAX_SCHEMAS {
            return Err(CatalogueError::Invalid(format!("at most {MAX_SCHEMAS} schemas per topic")));
        }
        let subset = schemas.subset(ids).map_err(|e| CatalogueError::Invalid(e.to_string()))?;
        subset.check().map_err(|e| CatalogueError::Invalid(e.to_string()))?;
        next.schemas = subset.ids().map(str::to_owned).collect();
    }
    if let Some(sunset) = &change.sunset {
        next.sunset_ms = sunset.as_deref().map(|t| parse_time("sunset", t)).transpose()?;
    }
    if let Some(successor) = &change.successor {
        if let Some(name) = successor {
            check_topic_name(name)?;
            if name == topic {
                return Err(CatalogueError::Invalid("a topic cannot be its own successor".into()));
            }
        }
        next.successor.clone_from(successor);
    }
    if let Some(announcement) = &change.announcement {
        if let Some(url) = announcement {
            check_url(url)?;
        }
        next.announcement.clone_from(announcement);
    }
    if let Some(errors_topic) = change.errors_topic {
        next.errors_topic = errors_topic;
    }
    match (&change.state, &change.state_at) {
        (None, Some(_)) => return Err(CatalogueError::Invalid("state_at needs a state".into())),
        (None, None) => {}
        (Some(text), at) => {
            let state = TopicState::parse(text).ok_or_else(|| {
                CatalogueError::Invalid(format!(
                    "state must be active, deprecated, read-only or retired, got {text:?}"
                ))
            })?;
            if current.state == TopicState::Retired && state != TopicState::Retired {
                return Err(CatalogueError::Invalid("a retired topic cannot change state".into()));
            }
            let at_ms = at.as_deref().map(|t| parse_time("state_at", t)).transpose()?;
            match at_ms {
                Some(at_ms) if at_ms > now_ms => {
                    next.scheduled = Some(Scheduled { state, at_ms });
                    changes.push(entry(
                        now_ms,
                        topic,
                        "topic-state-scheduled",
                        format!("Topic {topic} will become {} at {}", state.as_str(), rfc3339(at_ms)),
                        format!("scheduled by {actor}"),
                    ));
                }
                _ => {
                    next.scheduled = None;
                    if state != current.state {
                        next.enter(state, now_ms);
                        changes.push(state_entry(topic, current.state, state, now_ms, actor));
                    }
                }
            }
        }
    }
    if next.validation != current.validation {
        changes.push(entry(
            now_ms,
            topic,
            "validation",
            format!("Topic {topic} validation is now {}", next.validation),
            format!("was {}; changed by {actor}", current.validation),
        ));
    }
    if next.schemas != current.schemas && !next.schemas.is_empty() {
        changes.push(entry(
            now_ms,
            topic,
            "validation",
            format!("Topic {topic} extension schemas changed"),
            format!("now: {}; changed by {actor}", next.schemas.join(", ")),
        ));
    }
    Ok(Applied { settings: next, changes })
}

impl TopicSettings {
    /// Moves to `state` as of `at_ms`, keeping when the topic first left `active`.
    pub(crate) fn enter(&mut self, state: TopicState, at_ms: i64) {
        self.deprecated_since_ms = match state {
            TopicState::Active => None,
            _ => self.deprecated_since_ms.or(Some(at_ms)),
        };
        self.state = state;
        self.state_since_ms = Some(at_ms);
    }
}

pub(crate) fn state_entry(
    topic: &str,
    from: TopicState,
    to: TopicState,
    now_ms: i64,
    actor: &str,
) -> ChangeEntry {
    entry(
        now_ms,
        topic,
        "topic-state",
        format!("Topic {topic} is now {}", to.as_str()),
        format!("was {}; changed by {actor}", from.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(json: &str) -> SettingsChange {
        let Value::Object(mut map) = serde_json::from_str(json).unwrap() else { panic!("object") };
        let change = SettingsChange::take_from(&mut map).unwrap();
        assert!(map.is_empty(), "left {map:?}");
        change
    }

    fn run(current: &TopicSettings, json: &str, now: i64) -> Result<Applied, CatalogueError> {
        apply("t", current, &change(json), now, "op", &SchemaRegistry::builtin())
    }

    #[test]
    fn settings_round_trip_as_json_with_readable_names() {
        let settings = TopicSettings {
            validation: ValidationPolicy::EsgfStrict,
            state: TopicState::ReadOnly,
            ..TopicSettings::default()
        };
        let json = serde_json::to_string(&settings).unwrap();
        assert!(
            json.contains(r#""validation":"esgf-strict""#) && json.contains(r#""state":"read-only""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<TopicSettings>(&json).unwrap(), settings);
        assert_eq!(serde_json::from_str::<TopicSettings>("{}").unwrap(), TopicSettings::default());
    }

    #[test]
    fn take_from_leaves_other_members_for_the_caller() {
        let Value::Object(mut map) = serde_json::json!({"name": "t", "validation": "esgf-envelope"}) else {
            unreachable!()
        };
        let change = SettingsChange::take_from(&mut map).unwrap();
        assert_eq!(change.validation.as_deref(), Some("esgf-envelope"));
        assert_eq!(map.keys().collect::<Vec<_>>(), ["name"]);
    }

    #[test]
    fn state_change_now_writes_a_changelog_entry() {
        let applied = run(&TopicSettings::default(), r#"{"state":"deprecated"}"#, 1000).unwrap();
        assert_eq!(applied.settings.state, TopicState::Deprecated);
        assert_eq!(applied.settings.state_since_ms, Some(1000));
        assert_eq!(applied.changes.len(), 1);
        assert_eq!(applied.changes[0].kind, "topic-state");
    }

    #[test]
    fn future_state_at_schedules_instead_of_applying() {
        let applied =
            run(&TopicSettings::default(), r#"{"state":"read-only","state_at":"2030-01-01T00:00:00Z"}"#, 0)
                .unwrap();
        assert_eq!(applied.settings.state, TopicState::Active);
        assert_eq!(applied.settings.scheduled.map(|s| s.state), Some(TopicState::ReadOnly));
        assert_eq!(applied.changes[0].kind, "topic-state-scheduled");
    }

    #[test]
    fn retired_is_final_and_bad_members_are_refused() {
        let retired = TopicSettings { state: TopicState::Retired, ..TopicSettings::default() };
        assert!(run(&retired, r#"{"state":"active"}"#, 0).is_err());
        for bad in [
            r#"{"validation":"strict"}"#,
            r#"{"owner":"nobody"}"#,
            r#"{"announcement":"javascript:alert(1)"}"#,
            r#"{"announcement":"https://x/<a>"}"#,
            r#"{"successor":"a/b"}"#,
            r#"{"successor":"t"}"#,
            r#"{"sunset":"tomorrow"}"#,
            r#"{"state":"gone"}"#,
            r#"{"schemas":["https://example.org/unknown.json"]}"#,
            r#"{"schemas":["https://stac-extensions.github.io/cmip6/v3.0.0/schema.json"]}"#,
        ] {
            assert!(run(&TopicSettings::default(), bad, 0).is_err(), "{bad}");
        }
        let Value::Object(mut map) = serde_json::json!({"state_at": "2030-01-01T00:00:00Z"}) else {
            unreachable!()
        };
        let lone = SettingsChange::take_from(&mut map).unwrap();
        assert!(apply("t", &TopicSettings::default(), &lone, 0, "op", &SchemaRegistry::builtin()).is_err());
    }

    #[test]
    fn validation_and_schema_changes_are_logged() {
        let applied = run(
            &TopicSettings::default(),
            r#"{"validation":"esgf-strict","schemas":["https://stac-extensions.github.io/cmip6/v3.0.1/schema.json#"]}"#,
            5,
        )
        .unwrap();
        assert_eq!(applied.settings.schemas, ["https://stac-extensions.github.io/cmip6/v3.0.1/schema.json"]);
        assert_eq!(applied.changes.iter().filter(|c| c.kind == "validation").count(), 2);
    }
}
