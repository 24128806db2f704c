//! The service's changelog as served: the project's CHANGELOG.md, compiled into the binary so every release's
//! API changes appear, plus the runtime changes recorded in the meta log (`esgf_events_meta::changelog`).
//! Never pruned: it covers the entire service period.

use esgf_events_meta::MetaStore;
use esgf_events_meta::changelog::{ChangeEntry, list_changes};
use serde::Serialize;

/// The project's changelog, as built.
pub const CHANGELOG_MD: &str = include_str!("../../../CHANGELOG.md");

/// Most runtime entries read back for one page; the service records a few per week.
pub const MAX_RUNTIME_ENTRIES: usize = 100_000;

/// One release section of CHANGELOG.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub version: String,
    /// `YYYY-MM-DD`; `None` for "Unreleased".
    pub date: Option<String>,
    /// `(category, text)`: category as in Keep a Changelog (Added, Changed, ...).
    pub changes: Vec<(String, String)>,
}

/// A runtime change as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeChange {
    pub seq: u64,
    pub time: String,
    pub time_ms: u64,
    pub kind: String,
    pub title: String,
    pub detail: String,
    pub topic: Option<String>,
}

impl RuntimeChange {
    fn of(seq: u64, e: ChangeEntry) -> Self {
        RuntimeChange {
            seq,
            time: crate::maintenance::rfc3339(i64::try_from(e.time_ms).unwrap_or(i64::MAX)),
            time_ms: e.time_ms,
            kind: e.kind,
            title: e.title,
            detail: e.detail,
            topic: e.topic,
        }
    }
}

/// Parses Keep-a-Changelog markdown: `## [version] - date` sections, `### Category` headings, `- item` lines
/// (continuation lines indented). Anything else is ignored.
pub fn parse(markdown: &str) -> Vec<Release> {
    let mut releases: Vec<Release> = Vec::new();
    let mut category = String::new();
    for line in markdown.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            let (version, date) = match heading.split_once(" - ") {
                Some((v, d)) => (v, Some(d.trim().to_owned())),
                None => (heading, None),
            };
            let version = version.trim().trim_start_matches('[').trim_end_matches(']').to_owned();
            releases.push(Release { version, date, changes: Vec::new() });
            category.clear();
        } else if let Some(heading) = line.strip_prefix("### ") {
            category = heading.trim().to_owned();
        } else if let Some(release) = releases.last_mut() {
            if let Some(item) = line.strip_prefix("- ") {
                release.changes.push((category.clone(), item.trim().to_owned()));
            } else if line.starts_with("  ")
                && !line.trim().is_empty()
                && let Some((_, text)) = release.changes.last_mut()
            {
                text.push(' ');
                text.push_str(line.trim());
            }
        }
    }
    releases
}

/// The compiled-in releases, newest first (as written).
pub fn releases() -> Vec<Release> {
    parse(CHANGELOG_MD)
}

/// The runtime changes, newest first.
pub async fn runtime_changes(
    meta: &dyn MetaStore,
) -> Result<Vec<RuntimeChange>, esgf_events_meta::MetaError> {
    let mut out: Vec<RuntimeChange> = list_changes(meta, 0, MAX_RUNTIME_ENTRIES)
        .await?
        .into_iter()
        .map(|(seq, e)| RuntimeChange::of(seq, e))
        .collect();
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_a_changelog_sections_categories_and_continuations_parse() {
        let md = "# Changelog\nintro\n## [Unreleased]\n### Added\n- a\n  more\n## [0.1.0] - 2026-11-27\n\
                  ### Fixed\n- b\n";
        let releases = parse(md);
        assert_eq!(
            releases,
            vec![
                Release {
                    version: "Unreleased".into(),
                    date: None,
                    changes: vec![("Added".into(), "a more".into())]
                },
                Release {
                    version: "0.1.0".into(),
                    date: Some("2026-11-27".into()),
                    changes: vec![("Fixed".into(), "b".into())]
                },
            ]
        );
    }

    #[test]
    fn the_compiled_in_changelog_has_releases_with_changes() {
        let releases = releases();
        assert!(releases.len() >= 2);
        assert!(releases.iter().all(|r| !r.changes.is_empty()), "{releases:#?}");
    }
}
