//! The server-rendered pages and feeds: the home page, topics, status, announcements and changelog as HTML
//! (minijinja templates compiled into the binary, auto-escaped, no JavaScript, readable on a phone; every page
//! extends `base.html`, one layout with the site header, navigation and footer) and announcements and changelog
//! as Atom 1.0 feeds (built by hand: a few elements, every text escaped).

use std::sync::OnceLock;

use minijinja::Environment;
use serde::Serialize;

use crate::announcements::Announcement;
use crate::availability::{DayUptime, Uptime};
use crate::changelog::{Release, RuntimeChange};
use crate::incidents::{Incident, RtoSummary, human_duration, rto};
use crate::maintenance::{MaintenanceMode, Window, rfc3339};
use crate::rates::HourRate;
use crate::status::Snapshot;
use crate::svg::{Bar, bar_chart, escape as xml};

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
        env.add_filter("inline_code", inline_code);
        // Templates are fixed at build time; a broken one fails the unit tests, not a request.
        for (name, source) in [
            ("base.html", include_str!("../templates/base.html")),
            ("announcements.html", include_str!("../templates/announcements.html")),
            ("changelog.html", include_str!("../templates/changelog.html")),
            ("status.html", include_str!("../templates/status.html")),
            ("home.html", include_str!("../templates/home.html")),
            ("topics.html", include_str!("../templates/topics.html")),
            ("unsubscribe.html", include_str!("../templates/unsubscribe.html")),
        ] {
            if let Err(err) = env.add_template(name, source) {
                tracing::error!(template = name, error = %err, "template does not compile");
            }
        }
        env
    })
}

/// The filter `inline_code`: escapes the text and shows Markdown code spans (`` `GET /metrics` ``) as `<code>`, so
/// CHANGELOG.md entries read as written. An unpaired backtick stays as it is.
fn inline_code(text: &str) -> minijinja::Value {
    let parts: Vec<&str> = text.split('`').collect();
    let mut out = String::with_capacity(text.len() + 16);
    for (i, part) in parts.iter().enumerate() {
        let inside = i % 2 == 1;
        if inside && i == parts.len() - 1 {
            // The text ended inside a span: the backtick was literal.
            out.push('`');
            out.push_str(&xml(part));
        } else if inside {
            out.push_str("<code>");
            out.push_str(&xml(part));
            out.push_str("</code>");
        } else {
            out.push_str(&xml(part));
        }
    }
    minijinja::Value::from_safe_string(out)
}

/// Renders `page` with `context`, plus `current` (the page's name) for the layout's navigation.
fn render(page: &'static str, context: impl Serialize) -> Result<String, RenderError> {
    let current = page.trim_end_matches(".html");
    let context = minijinja::Value::from(minijinja::value::Serde(&context));
    env()
        .get_template(page)
        .and_then(|t| t.render(minijinja::context! { current, ..context }))
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

impl<'a> AnnouncementView<'a> {
    fn of(a: &'a Announcement) -> Self {
        AnnouncementView {
            id: &a.id,
            kind: a.kind.as_str(),
            title: &a.title,
            body: &a.body,
            published: rfc3339(a.published_ms),
        }
    }
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
    let announcements: Vec<AnnouncementView<'_>> = announcements.iter().map(AnnouncementView::of).collect();
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

/// `/status` (and `/v1/status`): what the service is doing now, how available it has been, and what is planned.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// `operational`, `maintenance` (a window is active) or `degraded` (an outage is open, or the service
    /// cannot read its own records).
    pub state: &'static str,
    /// Why the state is `degraded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    pub active: Option<StatusWindow>,
    pub upcoming: Vec<StatusWindow>,
    pub topics: Vec<StatusTopic>,
    /// The first minute the service recorded itself up (uptime counts from there).
    pub availability_since: Option<String>,
    /// Uptime over 7, 30 and 90 days.
    pub uptime: Vec<Uptime>,
    /// The last 30 days, oldest first.
    pub daily: Vec<DayUptime>,
    /// Unplanned outages, the latest first, with their durations (the recovery time achieved).
    pub incidents: Vec<StatusIncident>,
    pub rto: RtoSummary,
    /// Events published per hour in all topics over the last 24 hours, oldest first.
    pub hourly: Vec<HourRate>,
    /// Consumer-group lag per group and topic.
    pub lag: Vec<StatusLag>,
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
    /// Events published in about the last hour and day (`None`: not recorded long enough to tell).
    pub last_hour: Option<u64>,
    pub last_24h: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct StatusIncident {
    pub id: String,
    pub started_at: String,
    /// `None` while it goes on.
    pub ended_at: Option<String>,
    pub duration_seconds: u64,
    /// The duration for people (`12 min 5 s`).
    pub duration: String,
    pub detected_by: String,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct StatusLag {
    pub group: String,
    pub topic: String,
    pub partitions: usize,
    /// Records not yet consumed, summed over the group's partitions of the topic.
    pub lag: u64,
}

impl StatusView {
    /// The state and windows at `now_ms`; topics are the caller's to fill in, the records [`Self::add_records`]'s.
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
            degraded: None,
            active,
            upcoming,
            topics: Vec::new(),
            availability_since: None,
            uptime: Vec::new(),
            daily: Vec::new(),
            incidents: Vec::new(),
            rto: RtoSummary::default(),
            hourly: Vec::new(),
            lag: Vec::new(),
        }
    }

    /// Adds the status recorder's records and the incidents: uptime, rates (into `topics`, so fill those in
    /// first), lag; an open incident or a failing recorder makes an otherwise operational service `degraded`.
    pub fn add_records(&mut self, snapshot: &Snapshot, incidents: &[Incident], now_ms: i64) {
        self.availability_since = snapshot.availability.since.clone();
        self.uptime = snapshot.availability.windows.clone();
        self.daily = snapshot.availability.daily.clone();
        self.rto = rto(incidents);
        self.incidents = incidents
            .iter()
            .map(|i| {
                let seconds = u64::try_from(i.duration_ms(now_ms) / 1000).unwrap_or(0);
                StatusIncident {
                    id: i.id.clone(),
                    started_at: rfc3339(i.started_ms),
                    ended_at: i.ended_ms.map(rfc3339),
                    duration_seconds: seconds,
                    duration: human_duration(seconds),
                    detected_by: i.detected_by.clone(),
                    detail: i.detail.clone(),
                }
            })
            .collect();
        self.hourly = snapshot.rates.hourly.clone();
        for topic in &mut self.topics {
            if let Some(rate) = snapshot.rates.topics.iter().find(|r| r.topic == topic.name) {
                topic.last_hour = rate.last_hour;
                topic.last_24h = rate.last_24h;
            }
        }
        let mut lag: Vec<StatusLag> = Vec::new();
        for p in &snapshot.lag {
            match lag.last_mut() {
                Some(last) if last.group == p.group && last.topic == p.topic => {
                    last.partitions += 1;
                    last.lag = last.lag.saturating_add(p.lag);
                }
                _ => lag.push(StatusLag {
                    group: p.group.clone(),
                    topic: p.topic.clone(),
                    partitions: 1,
                    lag: p.lag,
                }),
            }
        }
        self.lag = lag;
        let open = incidents.iter().find(|i| i.ended_ms.is_none());
        let degraded = match (open, &snapshot.failing) {
            (Some(i), _) => Some(format!("outage in progress since {}: {}", rfc3339(i.started_ms), i.detail)),
            (None, Some(failure)) => Some(format!("the service cannot read its own records: {failure}")),
            (None, None) => None,
        };
        if self.active.is_none() && degraded.is_some() {
            self.state = "degraded";
        }
        self.degraded = degraded;
    }
}

/// The status page, with its charts drawn from the view's numbers (which the page also shows as tables).
pub fn status_html(view: &StatusView) -> Result<String, RenderError> {
    #[derive(Serialize)]
    struct Page<'a> {
        #[serde(flatten)]
        view: &'a StatusView,
        uptime_chart: String,
        rate_chart: String,
    }
    let days: Vec<Bar> = view
        .daily
        .iter()
        .map(|d| Bar {
            label: d.day.clone(),
            value: d.uptime_percent,
            text: match d.uptime_percent {
                Some(p) => format!(
                    "{}: {p} % up ({} of {} minutes; {} planned, {} unplanned down)",
                    d.day, d.up_minutes, d.elapsed_minutes, d.maintenance_minutes, d.unplanned_down_minutes
                ),
                None => format!("{}: no record (before the service existed)", d.day),
            },
        })
        .collect();
    let uptime_chart = bar_chart(
        "uptime-chart",
        "Uptime per day, last 30 days",
        "One bar per UTC day: the percentage of minutes in which the service answered. The table below has the \
         same numbers.",
        &days,
        100.0,
        "100 %",
    );
    let hours: Vec<Bar> = view
        .hourly
        .iter()
        .map(|h| Bar {
            label: h.hour.get(11..16).unwrap_or(&h.hour).to_owned(),
            value: h.events.map(|e| e as f64),
            text: match h.events {
                Some(e) => format!("{}: {e} events", h.hour),
                None => format!("{}: no record", h.hour),
            },
        })
        .collect();
    let peak = view.hourly.iter().filter_map(|h| h.events).max().unwrap_or(0).max(1);
    let rate_chart = bar_chart(
        "rate-chart",
        "Events published per hour, last 24 hours",
        "One bar per hour (UTC), all topics together; the current hour so far is last. The table below has the \
         same numbers.",
        &hours,
        peak as f64,
        &peak.to_string(),
    );
    render("status.html", Page { view, uptime_chart, rate_chart })
}

/// The one-click unsubscribe page of `address`: before (`done == false`) a button that POSTs to `action`, since a
/// GET (a mail client's or link scanner's) must never unsubscribe; after, the confirmation.
pub fn unsubscribe_html(address: &str, action: &str, done: bool) -> Result<String, RenderError> {
    #[derive(Serialize)]
    struct Page<'a> {
        address: &'a str,
        action: &'a str,
        done: bool,
    }
    render("unsubscribe.html", Page { address, action, done })
}

/// How many announcements the home page shows.
const HOME_ANNOUNCEMENTS: usize = 3;

/// `/`: what the service is, how to connect, its current state and the latest announcements (`announcements`
/// newest first, as stored).
pub fn home_html(status: &StatusView, announcements: &[Announcement]) -> Result<String, RenderError> {
    #[derive(Serialize)]
    struct Page<'a> {
        status: &'a StatusView,
        announcements: Vec<AnnouncementView<'a>>,
    }
    let announcements = announcements.iter().take(HOME_ANNOUNCEMENTS).map(AnnouncementView::of).collect();
    render("home.html", Page { status, announcements })
}

/// `/topics`: the catalogue as a table. `topics` is the `/v1/topics` list (objects with `name`, `partitions`,
/// `offsets`, and the catalogue's `state`, `description`, ... when there is one).
pub fn topics_html(topics: &serde_json::Value, include_retired: bool) -> Result<String, RenderError> {
    #[derive(Serialize)]
    struct Page<'a> {
        topics: &'a serde_json::Value,
        include_retired: bool,
    }
    render("topics.html", Page { topics, include_retired })
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
            mailed_by: None,
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
    fn home_page_says_what_the_service_is_and_links_every_page() {
        let html = home_html(&StatusView::new(&[], 0), &[announcement("Disk swap")]).expect("renders");
        for text in
            ["ESGF Event Service", "Server-sent events", "Webhooks", "Kafka", "Operational", "Disk swap"]
        {
            assert!(html.contains(text), "{text} in {html}");
        }
        for link in [
            "/topics",
            "/status",
            "/announcements",
            "/changelog",
            "/openapi.json",
            "/metrics",
            "/announcements.atom",
            "/changelog.atom",
        ] {
            assert!(html.contains(&format!("href=\"{link}\"")), "{link} in {html}");
        }
    }

    #[test]
    fn home_page_shows_a_maintenance_banner_during_a_window() {
        let window = Window {
            id: "w".into(),
            starts_at_ms: 0,
            ends_at_ms: 10_000,
            mode: MaintenanceMode::ReadOnly,
            message: "disk <swap>".into(),
            announcement: None,
            forced: false,
            created_ms: 0,
        };
        let html = home_html(&StatusView::new(&[window], 5_000), &[]).expect("renders");
        assert!(html.contains("class=\"banner maintenance\""), "{html}");
        assert!(
            html.contains("Maintenance in progress (read-only)") && html.contains("disk &lt;swap&gt;"),
            "{html}"
        );
        assert!(html.contains("No announcements yet."));
    }

    #[test]
    fn every_page_shares_the_layout_and_marks_itself_current() {
        let status = StatusView::new(&[], 0);
        let pages = [
            ("/", home_html(&status, &[]).expect("home")),
            ("/topics", topics_html(&serde_json::json!([]), false).expect("topics")),
            ("/status", status_html(&status).expect("status")),
            ("/announcements", announcements_html(&[], &[], 0).expect("announcements")),
            ("/changelog", changelog_html(&[], &[]).expect("changelog")),
        ];
        for (path, html) in pages {
            assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"), "{path}");
            for landmark in [
                "<header class=\"site\">",
                "<nav aria-label=\"Site\">",
                "<main id=\"content\"",
                "<footer class=\"site\">",
                "name=\"viewport\"",
            ] {
                assert!(html.contains(landmark), "{landmark} in {path}");
            }
            assert!(html.contains(&format!("<a href=\"{path}\" aria-current=\"page\">")), "{path}: {html}");
            assert_eq!(html.matches(" aria-current=").count(), 1, "{path}");
            assert!(!html.contains("<script"), "{path}");
        }
    }

    #[test]
    fn topics_page_escapes_catalogue_text() {
        let topics = serde_json::json!([{
            "name": "esgf2.pub", "description": "<b>x</b>", "owner": "a@b.org", "state": "deprecated",
            "successor": "esgf2.pub.v2", "partitions": 2, "retention": "90d", "created": "2026-01-01T00:00:00.000Z",
            "offsets": [{"partition": 0, "earliest": 0, "latest": 3}, {"partition": 1, "earliest": 1, "latest": 2}]
        }]);
        let html = topics_html(&topics, false).expect("renders");
        assert!(html.contains("<th scope=\"row\">esgf2.pub</th>"), "{html}");
        assert!(html.contains("&lt;b&gt;x&lt;") && !html.contains("<b>x"), "{html}");
        assert!(html.contains("successor: esgf2.pub.v2") && html.contains("0: 0–3<br>1: 1–2"), "{html}");
        assert!(html.contains("href=\"/topics?include=retired\""));
    }

    #[test]
    fn inline_code_marks_code_spans_and_escapes_the_rest() {
        assert_eq!(
            inline_code("`GET /x` & <b> `a<b>` tail `open").to_string(),
            "<code>GET /x</code> &amp; &lt;b&gt; <code>a&lt;b&gt;</code> tail `open"
        );
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
