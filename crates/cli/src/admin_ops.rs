//! The operator's operations commands under `esgf-events admin`, over the HTTP API:
//!
//! - `admin maintenance list|schedule|update|cancel`: planned maintenance windows (`/v1/maintenance`);
//! - `admin announce --kind K --title T [--body B | --body-file F]`: publish an announcement, which is also
//!   mailed to the announcement list;
//! - `admin recipients list|add|remove`: the announcement list (`/v1/announcements/recipients`);
//! - `admin deliveries`: each announcement mail's state per recipient.
//!
//! Times are RFC 3339 (`2026-12-12T08:00:00Z`), checked by the server. `--json` prints the server's answer.

use std::path::PathBuf;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::Client;
use crate::output::{Output, table};

/// Longest announcement body read from a file or stdin (the server's own limit is 20 000 characters).
const MAX_BODY_FILE_BYTES: u64 = 256 << 10;

#[derive(Debug, Clone, clap::Args)]
pub struct MaintenanceArgs {
    #[command(subcommand)]
    pub command: MaintenanceCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum MaintenanceCommand {
    /// List the windows not yet over, and which one is active.
    List(JsonOnly),
    /// Schedule a window. Needs an announcement published at least the configured notice before (default 7
    /// days), unless --force (emergencies; the status page flags it).
    Schedule(ScheduleArgs),
    /// Change a window: only what is given changes.
    Update(UpdateArgs),
    /// Cancel a window.
    Cancel { id: String },
}

#[derive(Debug, Clone, clap::Args)]
pub struct JsonOnly {
    /// Print the server's JSON response.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Reads and streams keep working; writes are refused with 503.
    ReadOnly,
    /// Everything but probes and the operations endpoints answers 503.
    Full,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::ReadOnly => "read-only",
            Mode::Full => "full",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    /// Start, RFC 3339 (e.g. 2026-12-12T08:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub starts_at: String,
    /// End, RFC 3339; clients get it as Retry-After.
    #[arg(long, value_name = "TIME")]
    pub ends_at: String,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// What clients are told while the window refuses them.
    #[arg(long)]
    pub message: String,
    /// The announcement of the window: its id (see `admin announce`) or a URL.
    #[arg(long, value_name = "ID")]
    pub announcement: Option<String>,
    /// Schedule without an announcement or with less notice than configured (flagged on the status page).
    #[arg(long)]
    pub force: bool,
    /// Print the server's JSON response.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UpdateArgs {
    pub id: String,
    #[arg(long, value_name = "TIME")]
    pub starts_at: Option<String>,
    #[arg(long, value_name = "TIME")]
    pub ends_at: Option<String>,
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    #[arg(long)]
    pub message: Option<String>,
    #[arg(long, value_name = "ID")]
    pub announcement: Option<String>,
    /// Accept the change with less notice than configured.
    #[arg(long)]
    pub force: bool,
    /// Print the server's JSON response.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    PlannedDowntime,
    UnplannedDowntime,
    Restored,
    ApiChange,
    TopicChange,
    General,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::PlannedDowntime => "planned-downtime",
            Kind::UnplannedDowntime => "unplanned-downtime",
            Kind::Restored => "restored",
            Kind::ApiChange => "api-change",
            Kind::TopicChange => "topic-change",
            Kind::General => "general",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct AnnounceArgs {
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// One line, at most 200 characters.
    #[arg(long)]
    pub title: String,
    /// The text (plain; at most 20 000 characters).
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the text from FILE ('-': stdin).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// The topic it concerns.
    #[arg(long)]
    pub topic: Option<String>,
    /// Print the server's JSON response.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RecipientsArgs {
    #[command(subcommand)]
    pub command: RecipientsCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RecipientsCommand {
    /// Every address announcements go to, with why (configured, member, contact) and whether it unsubscribed.
    List(JsonOnly),
    /// Add a member (e.g. a modelling centre's list); subscribes an address that unsubscribed again.
    Add {
        address: String,
        /// A display name for the To: header.
        #[arg(long)]
        name: Option<String>,
        /// Print the server's JSON response.
        #[arg(long)]
        json: bool,
    },
    /// Remove a member (configured and contact addresses change in the configuration and on the principal).
    Remove { address: String },
}

pub async fn run_maintenance(client: &Client, command: MaintenanceCommand) -> anyhow::Result<()> {
    let mut out = Output::stdout();
    match command {
        MaintenanceCommand::List(flags) => {
            let (_, answer) = client.request_json(Method::GET, &["v1", "maintenance"], None).await?;
            print_list(
                &mut out,
                answer,
                flags.json,
                "maintenance list",
                "no maintenance window scheduled",
                window_table,
            )?;
        }
        MaintenanceCommand::Schedule(args) => {
            let body = json!({
                "starts_at": args.starts_at,
                "ends_at": args.ends_at,
                "mode": args.mode.as_str(),
                "message": args.message,
                "announcement": args.announcement,
                "force": args.force,
            });
            let (_, answer) = client.request_json(Method::POST, &["v1", "maintenance"], Some(&body)).await?;
            window_answer(&mut out, "scheduled", answer, args.json)?;
        }
        MaintenanceCommand::Update(args) => {
            let mut body = serde_json::Map::new();
            for (name, value) in [
                ("starts_at", args.starts_at),
                ("ends_at", args.ends_at),
                ("mode", args.mode.map(|m| m.as_str().to_owned())),
                ("message", args.message),
                ("announcement", args.announcement),
            ] {
                if let Some(value) = value {
                    body.insert(name.to_owned(), Value::String(value));
                }
            }
            if body.is_empty() {
                anyhow::bail!(
                    "nothing to change: give --starts-at, --ends-at, --mode, --message or --announcement"
                );
            }
            if args.force {
                body.insert("force".to_owned(), Value::Bool(true));
            }
            let (_, answer) = client
                .request_json(Method::PATCH, &["v1", "maintenance", &args.id], Some(&Value::Object(body)))
                .await?;
            window_answer(&mut out, "changed", answer, args.json)?;
        }
        MaintenanceCommand::Cancel { id } => {
            client.request_json(Method::DELETE, &["v1", "maintenance", &id], None).await?;
            out.line(format!("cancelled maintenance window {id}"))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn window_answer(
    out: &mut Output<std::io::Stdout>,
    verb: &str,
    answer: crate::client::WithRaw<Value>,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        out.line(&answer.raw)?;
        return Ok(());
    }
    let w: WindowView = serde_json::from_value(answer.value).context("unexpected maintenance window")?;
    out.line(format!(
        "{verb} maintenance window {}: {} from {} to {}",
        w.id, w.mode, w.starts_at, w.ends_at
    ))?;
    if w.forced {
        out.line("forced: the status page flags it as scheduled at short notice")?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct WindowList {
    windows: Vec<WindowView>,
    active: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WindowView {
    id: String,
    starts_at: String,
    ends_at: String,
    mode: String,
    message: String,
    announcement: Option<String>,
    #[serde(default)]
    forced: bool,
}

/// With `--json`, the server's answer as it is; else `empty` when the list is, or its table.
fn print_list<T: serde::de::DeserializeOwned>(
    out: &mut Output<std::io::Stdout>,
    answer: crate::client::WithRaw<Value>,
    json: bool,
    what: &str,
    empty: &str,
    table: impl FnOnce(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        out.line(&answer.raw)?;
        return Ok(());
    }
    let list: T = serde_json::from_value(answer.value).with_context(|| format!("unexpected {what}"))?;
    let lines = table(&list);
    if lines.is_empty() {
        out.line(empty)?;
    }
    for line in lines {
        out.line(line)?;
    }
    Ok(())
}

/// A header line and a line per item; nothing at all for no items.
fn items_table<T>(headers: &[&str], items: &[T], row: impl Fn(&T) -> Vec<String>) -> Vec<String> {
    if items.is_empty() {
        return Vec::new();
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    table(headers, &rows)
}

fn window_table(list: &WindowList) -> Vec<String> {
    items_table(&["ID", "MODE", "STARTS", "ENDS", "ANNOUNCEMENT", "FLAGS", "MESSAGE"], &list.windows, |w| {
        let mut flags = Vec::new();
        if list.active.as_deref() == Some(w.id.as_str()) {
            flags.push("active");
        }
        if w.forced {
            flags.push("forced");
        }
        vec![
            w.id.clone(),
            w.mode.clone(),
            w.starts_at.clone(),
            w.ends_at.clone(),
            w.announcement.clone().unwrap_or_else(|| "-".into()),
            if flags.is_empty() { "-".into() } else { flags.join(",") },
            w.message.clone(),
        ]
    })
}

pub async fn run_announce(client: &Client, args: AnnounceArgs) -> anyhow::Result<()> {
    let body = match (&args.body, &args.body_file) {
        (Some(body), _) => body.clone(),
        (None, Some(path)) => read_body_file(path)?,
        (None, None) => String::new(),
    };
    let request =
        json!({ "kind": args.kind.as_str(), "title": args.title, "body": body, "topic": args.topic });
    let (_, answer) = client.request_json(Method::POST, &["v1", "announcements"], Some(&request)).await?;
    let mut out = Output::stdout();
    if args.json {
        out.line(&answer.raw)?;
    } else {
        let id = answer.value.get("id").and_then(Value::as_str).unwrap_or("?");
        out.line(format!("published announcement {id} ({}): {}", args.kind.as_str(), args.title))?;
    }
    out.flush()?;
    Ok(())
}

fn read_body_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().take(MAX_BODY_FILE_BYTES + 1).read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_BODY_FILE_BYTES + 1).read_to_string(&mut text))
    };
    read.with_context(|| format!("cannot read the announcement body from {}", path.display()))?;
    if text.len() as u64 > MAX_BODY_FILE_BYTES {
        anyhow::bail!("{} is larger than {MAX_BODY_FILE_BYTES} bytes", path.display());
    }
    Ok(text)
}

#[derive(Debug, Deserialize)]
struct RecipientList {
    recipients: Vec<ListEntry>,
}

#[derive(Debug, Deserialize)]
struct ListEntry {
    address: String,
    name: Option<String>,
    sources: Vec<String>,
    unsubscribed: bool,
}

pub async fn run_recipients(client: &Client, command: RecipientsCommand) -> anyhow::Result<()> {
    const PATH: [&str; 3] = ["v1", "announcements", "recipients"];
    let mut out = Output::stdout();
    match command {
        RecipientsCommand::List(flags) => {
            let (_, answer) = client.request_json(Method::GET, &PATH, None).await?;
            print_list(
                &mut out,
                answer,
                flags.json,
                "recipient list",
                "the announcement list is empty",
                |list: &RecipientList| recipient_table(&list.recipients),
            )?;
        }
        RecipientsCommand::Add { address, name, json } => {
            let body = json!({ "address": address, "name": name });
            let (status, answer) = client.request_json(Method::POST, &PATH, Some(&body)).await?;
            if json {
                out.line(&answer.raw)?;
            } else {
                let added = answer.value.get("address").and_then(Value::as_str).unwrap_or(&address);
                out.line(if status == StatusCode::CREATED {
                    format!("added {added} to the announcement list")
                } else {
                    format!("{added} already is a member of the announcement list")
                })?;
            }
        }
        RecipientsCommand::Remove { address } => {
            let [a, b, c] = PATH;
            client.request_json(Method::DELETE, &[a, b, c, &address], None).await?;
            out.line(format!("removed {address} from the announcement list"))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn recipient_table(entries: &[ListEntry]) -> Vec<String> {
    items_table(&["ADDRESS", "NAME", "SOURCES", "STATE"], entries, |e| {
        vec![
            e.address.clone(),
            e.name.clone().unwrap_or_else(|| "-".into()),
            e.sources.join(","),
            if e.unsubscribed { "unsubscribed".into() } else { "subscribed".into() },
        ]
    })
}

#[derive(Debug, Deserialize)]
struct DeliveryList {
    deliveries: Vec<Delivery>,
}

#[derive(Debug, Deserialize)]
struct Delivery {
    announcement: String,
    recipient: String,
    status: String,
    attempts: u32,
    last_error: Option<String>,
}

pub async fn run_deliveries(client: &Client, json: bool) -> anyhow::Result<()> {
    let (_, answer) = client.request_json(Method::GET, &["v1", "announcements", "deliveries"], None).await?;
    let mut out = Output::stdout();
    print_list(
        &mut out,
        answer,
        json,
        "delivery list",
        "no announcement mail yet",
        |list: &DeliveryList| delivery_table(&list.deliveries),
    )?;
    out.flush()?;
    Ok(())
}

fn delivery_table(deliveries: &[Delivery]) -> Vec<String> {
    items_table(&["ANNOUNCEMENT", "RECIPIENT", "STATUS", "ATTEMPTS", "LAST ERROR"], deliveries, |d| {
        vec![
            d.announcement.clone(),
            d.recipient.clone(),
            d.status.clone(),
            d.attempts.to_string(),
            d.last_error.clone().unwrap_or_else(|| "-".into()),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_rows_show_sources_and_state() {
        let entries = vec![ListEntry {
            address: "a@example.org".into(),
            name: None,
            sources: vec!["configured".into(), "member".into()],
            unsubscribed: true,
        }];
        let lines = recipient_table(&entries);
        assert!(lines[0].starts_with("ADDRESS"));
        assert!(lines[1].contains("configured,member") && lines[1].contains("unsubscribed"), "{lines:?}");
    }

    #[test]
    fn window_rows_flag_the_active_and_forced_ones() {
        let list = WindowList {
            windows: vec![WindowView {
                id: "w1".into(),
                starts_at: "2026-12-12T08:00:00.000Z".into(),
                ends_at: "2026-12-12T09:00:00.000Z".into(),
                mode: "read-only".into(),
                message: "disk swap".into(),
                announcement: None,
                forced: true,
            }],
            active: Some("w1".into()),
        };
        let lines = window_table(&list);
        assert!(lines[1].contains("active,forced") && lines[1].contains("disk swap"), "{lines:?}");
    }
}
