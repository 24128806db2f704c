//! The server-rendered pages and feeds: announcements and changelog as HTML (minijinja templates compiled into
//! the binary, auto-escaped, no JavaScript, readable on a phone) and as Atom 1.0 feeds (built by hand: a few
//! elements, every text escaped).

use std::sync::OnceLock;

use minijinja::Environment;
use serde::Serialize;

use crate::announcements::Announcement;
use crate::changelog::{Release, RuntimeChange};
use crate::maintenance::{MaintenanceMode, Window, rfc3339};

#[derive(Debug, thiserror::Error)]
#[error("rendering {page}: {detail}")]
pub struct RenderError {
    page: &'static str,
    detail: String,
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // Templates are fixed at build time; a broken one fails the unit tests, not a request.
        for (name, source) in [
            ("base.html", include_str!("../templates/base.html")),
            ("announcements.html", include_str!("../templates/announcements.html")),
            ("changelog.html", include_str!("../templates/changelog.html")),
            ("status.html", include_str!("../templates/status.html")),
        ] {
            if let Err(err) = env.add_template(name, source) {
                tracing::error!(template = name, error = %err, "template does not compile");
            }
        }
        env
    })
}

fn render(page: &'static str, context: impl Serialize) -> Result<String, RenderError> {
    env()
        .get_template(page)
        .and_then(|t| t.render(minijinja::Value::from(minijinja::value::Serde(&context))))
        .map_err(|err| RenderError { page, detail: err.to_string() })
}

#[derive(Serialize)]
struct AnnouncementView<'a> {
    id: &'a str,
    kind: &'static str,
    title: &'a str,
    body: &'a str,
    published: String,
}

#[derive(Serialize)]
struct WindowView<'a> {
    mode: &'static str,
    starts_at: String,
    ends_at: String,
    message: &'a str,
    forced: bool,
    active: bool,
}

/// `/announcements`: the windows not yet over, then every announcement, newest first.
pub fn announcements_html(
    announcements: &[Announcement],
    windows: &[Window],
    now_ms: i64,
) -> Result<String, RenderError> {
    let announcements: Vec<AnnouncementView<'_>> = announcements
        .iter()
        .map(|a| AnnouncementView {
            id: &a.id,
            kind: a.kind.as_str(),
            title: &a.title,
            body: &a.body,
            published: rfc3339(a.published_ms),
        })
        .collect();
    let maintenance: Vec<WindowView<'_>> = windows
        .iter()
        .filter(|w| w.ends_at_ms > now_ms)
        .map(|w| WindowView {
            mode: match w.mode {
                MaintenanceMode::ReadOnly => "read-only",
                MaintenanceMode::Full => "full",
            },
            starts_at: rfc3339(w.starts_at_ms),
            ends_at: rfc3339(w.ends_at_ms),
            message: &w.message,
            forced: w.forced,
            active: w.is_active(now_ms),
        })
        .collect();
    #[derive(Serialize)]
    struct Page<'a> {
        announcements: Vec<AnnouncementView<'a>>,
        maintenance: Vec<WindowView<'a>>,
    }
    render("announcements.html", Page { announcements, maintenance })
}

/// `/changelog`: runtime changes (newest first), then the compiled-in releases.
pub fn changelog_html(releases: &[Release], runtime: &[RuntimeChange]) -> Result<String, RenderError> {
    #[derive(Serialize)]
    struct Page<'a> {
        releases: &'a [Release],
        runtime: &'a [RuntimeChange],
    }
    render("changelog.html", Page { releases, runtime })
}

/// `/status` (and `/v1/status`): what the service is doing now and what is planned.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// `operational` or `maintenance`.
    pub state: &'static str,
    pub active: Option<StatusWindow>,
    pub upcoming: Vec<StatusWindow>,
    pub topics: Vec<StatusTopic>,
}

#[derive(Debug, Serialize)]
pub struct StatusWindow {
    pub id: String,
    pub mode: &'static str,
    pub starts_at: String,
    pub ends_at: String,
    pub message: String,
    pub forced: bool,
    pub announcement: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StatusTopic {
    pub name: String,
    pub partitions: u32,
    /// Records currently retained (latest - earliest, summed over partitions).
    pub retained: u64,
    /// Next offsets, summed: how many records were ever appended.
    pub latest: u64,
}

impl StatusView {
    /// The state and windows at `now_ms`; topics are the caller's to fill in.
    pub fn new(windows: &[Window], now_ms: i64) -> Self {
        let view = |w: &Window| StatusWindow {
            id: w.id.clone(),
            mode: match w.mode {
                MaintenanceMode::ReadOnly => "read-only",
                MaintenanceMode::Full => "full",
            },
            starts_at: rfc3339(w.starts_at_ms),
            ends_at: rfc3339(w.ends_at_ms),
            message: w.message.clone(),
            forced: w.forced,
            announcement: w.announcement.clone(),
        };
        let active = windows.iter().filter(|w| w.is_active(now_ms)).max_by_key(|w| w.ends_at_ms).map(view);
        let upcoming = windows.iter().filter(|w| w.starts_at_ms > now_ms).map(view).collect();
        StatusView {
            state: if active.is_some() { "maintenance" } else { "operational" },
            active,
            upcoming,
            topics: Vec::new(),
        }
    }
}

pub fn status_html(view: &StatusView) -> Result<String, RenderError> {
    render("status.html", view)
}

/// XML text escaping (element content and attribute values).
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newlines are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// One Atom entry.
struct Entry {
    id: String,
    title: String,
    updated: String,
    link: String,
    category: String,
    content: String,
}

/// An Atom 1.0 feed. `base` is the service's public URL (no trailing slash), for the absolute links and ids
/// Atom requires.
fn atom(base: &str, path: &str, title: &str, updated: &str, entries: &[Entry]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    out.push_str("<feed xmlns=\"http://www.w3.org/2005/Atom\">\n");
    out.push_str(&format!("<id>{}</id>\n", xml(&format!("{base}{path}"))));
    out.push_str(&format!("<title>{}</title>\n", xml(title)));
    out.push_str(&format!("<updated>{}</updated>\n", xml(updated)));
    out.push_str(&format!("<author><name>{}</name></author>\n", xml("ESGF Event Service")));
    out.push_str(&format!("<link rel=\"self\" href=\"{}\"/>\n", xml(&format!("{base}{path}"))));
    for e in entries {
        out.push_str("<entry>\n");
        out.push_str(&format!("<id>{}</id>\n", xml(&e.id)));
        out.push_str(&format!("<title>{}</title>\n", xml(&e.title)));
        out.push_str(&format!("<updated>{}</updated>\n", xml(&e.updated)));
        out.push_str(&format!("<link rel=\"alternate\" type=\"text/html\" href=\"{}\"/>\n", xml(&e.link)));
        out.push_str(&format!("<category term=\"{}\"/>\n", xml(&e.category)));
        out.push_str(&format!("<content type=\"text\">{}</content>\n", xml(&e.content)));
        out.push_str("</entry>\n");
    }
    out.push_str("</feed>\n");
    out
}

/// Feeds with no entries still need an `updated`: the Unix epoch says "never".
const NEVER: &str = "1970-01-01T00:00:00.000Z";

/// `/announcements.atom`, newest first.
pub fn announcements_atom(base: &str, announcements: &[Announcement]) -> String {
    let entries: Vec<Entry> = announcements
        .iter()
        .map(|a| Entry {
            id: format!("{base}/announcements#announcement-{}", a.id),
            title: a.title.clone(),
            updated: rfc3339(a.published_ms),
            link: format!("{base}/announcements#announcement-{}", a.id),
            category: a.kind.as_str().to_owned(),
            content: a.body.clone(),
        })
        .collect();
    let updated = entries.first().map_or(NEVER.to_owned(), |e| e.updated.clone());
    atom(base, "/announcements.atom", "ESGF Event Service announcements", &updated, &entries)
}

/// `/changelog.atom`: the runtime changes, then one entry per dated release.
pub fn changelog_atom(base: &str, releases: &[Release], runtime: &[RuntimeChange]) -> String {
    let mut entries: Vec<Entry> = runtime
        .iter()
        .map(|c| Entry {
            id: format!("{base}/changelog#change-{}", c.seq),
            title: c.title.clone(),
            updated: c.time.clone(),
            link: format!("{base}/changelog#change-{}", c.seq),
            category: c.kind.clone(),
            content: c.detail.clone(),
        })
        .collect();
    for r in releases {
        let Some(date) = &r.date else { continue };
        let content: Vec<String> = r.changes.iter().map(|(cat, text)| format!("{cat}: {text}")).collect();
        entries.push(Entry {
            id: format!("{base}/changelog#release-{}", r.version.replace(' ', "-")),
            title: format!("Release: {}", r.version),
            updated: format!("{date}T00:00:00Z"),
            link: format!("{base}/changelog#releases"),
            category: "release".to_owned(),
            content: content.join("\n"),
        });
    }
    let updated = entries.iter().map(|e| e.updated.as_str()).max().unwrap_or(NEVER).to_owned();
    atom(base, "/changelog.atom", "ESGF Event Service changelog", &updated, &entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announcements::AnnouncementKind;

    fn announcement(title: &str) -> Announcement {
        Announcement {
            id: "7".into(),
            kind: AnnouncementKind::PlannedDowntime,
            title: title.into(),
            body: "line 1\nline 2".into(),
            published_ms: 1_764_547_200_000,
            window: None,
            topic: None,
        }
    }

    #[test]
    fn announcements_page_escapes_html_and_links_the_feed() {
        let html = announcements_html(&[announcement("<script>x</script> & more")], &[], 0).expect("renders");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("href=\"/announcements.atom\""));
        assert!(html.contains("id=\"announcement-7\""));
        assert!(html.contains("name=\"viewport\""));
    }

    #[test]
    fn status_page_flags_forced_windows_and_shows_the_active_one() {
        let window = |id: &str, start: i64, forced: bool| Window {
            id: id.into(),
            starts_at_ms: start,
            ends_at_ms: start + 1000,
            mode: MaintenanceMode::ReadOnly,
            message: format!("message {id}"),
            announcement: None,
            forced,
            created_ms: 0,
        };
        let view = StatusView::new(&[window("a", 0, false), window("b", 5000, true)], 500);
        assert_eq!((view.state, view.upcoming.len()), ("maintenance", 1));
        let html = status_html(&view).expect("renders");
        assert!(html.contains("message a") && html.contains("(forced"), "{html}");
    }

    #[test]
    fn changelog_page_lists_compiled_in_releases() {
        let html = changelog_html(&crate::changelog::releases(), &[]).expect("renders");
        assert!(html.contains("Foundation"), "{html}");
        assert!(html.contains("None recorded yet."));
    }

    #[test]
    fn atom_feed_escapes_text_and_has_required_elements() {
        let feed = announcements_atom("http://h", &[announcement("a < b & c")]);
        assert!(feed.contains("<title>a &lt; b &amp; c</title>"), "{feed}");
        for element in ["<id>http://h/announcements.atom</id>", "<updated>2025-12-01T00:00:00.000Z</updated>"]
        {
            assert!(feed.contains(element), "{element} in {feed}");
        }
        let empty = changelog_atom("http://h", &[], &[]);
        assert!(empty.contains("<updated>1970-01-01T00:00:00.000Z</updated>"));
    }
}
