//! `esgf-events admin`: the operator's commands for access control, over the HTTP API.
//!
//! - `admin producer|consumer add|list|show|grant|set|rotate|revoke`: who may publish to and read which topics;
//! - `admin topic public NAME true|false`: whether a topic is readable without credentials;
//! - `admin audit [--follow]`: the append-only record of operator actions and authentication failures;
//! - `admin maintenance`, `admin announce`, `admin recipients`, `admin deliveries`: operations (maintenance
//!   windows, announcements and their mailing list; see [`crate::admin_ops`]).
//!
//! Every call needs the operator token (see [`crate::client`] for where it is looked up). A new token (from `add`
//! or `rotate`) is shown exactly once: printed, or written with `--out FILE` to a file only its owner can read.
//! The file is prepared before the server is asked, so a file problem can never cost a token that was issued.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat};

use crate::client::{
    AuditEntry, Client, Issued, OidcIdentity, Principal, PrincipalKind, PrincipalUpdate, RateSpec,
    Registration, ServerArgs,
};
use crate::output::{Output, table};

/// How often `admin audit --follow` asks for new entries (the audit log has no long-poll).
const AUDIT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest pause between retries while following a server that is away.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most entries one audit request asks for (the server's own maximum).
const AUDIT_PAGE: usize = 1000;

#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Services that publish events (the East and West ingest services): register, grant, rotate, revoke.
    Producer(PrincipalArgs),
    /// Services that read events (index services, replicators): register, grant, rotate, revoke.
    Consumer(PrincipalArgs),
    /// Access settings of topics.
    Topic(TopicAccessArgs),
    /// Print the audit log: operator actions and authentication failures, oldest first.
    Audit(AuditArgs),
    /// Planned maintenance windows: list, schedule, change, cancel.
    Maintenance(crate::admin_ops::MaintenanceArgs),
    /// Publish an announcement (web page, Atom feed, and mail to the announcement list).
    Announce(crate::admin_ops::AnnounceArgs),
    /// The announcement mailing list: list, add and remove members.
    Recipients(crate::admin_ops::RecipientsArgs),
    /// Each announcement mail's state per recipient.
    Deliveries(JsonFlag),
}

#[derive(Debug, Clone, clap::Args)]
pub struct PrincipalArgs {
    #[command(subcommand)]
    pub command: PrincipalCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PrincipalCommand {
    /// Register one and print its token (shown only this once).
    Add(AddArgs),
    /// List them.
    List(JsonFlag),
    /// Show one: grants, rate limit, contact, credential fingerprints.
    Show(NameArgs),
    /// Set the topics one may use (replacing its grants, or with --add / --remove changing them).
    Grant(GrantArgs),
    /// Change the rate limit, contact or OIDC identities of one.
    Set(SetArgs),
    /// Issue a new token; the old one stops working (after auth.rotation_grace, if the server sets one).
    Rotate(IssueArgs),
    /// Delete one: its tokens stop working at once.
    Revoke(NameArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct JsonFlag {
    /// Print the server's JSON response.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct NameArgs {
    pub name: String,
    /// Print the server's JSON response.
    #[arg(long)]
    pub json: bool,
}

/// A publish rate limit from flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RateArgs {
    /// Most events per second, sustained.
    #[arg(long, value_name = "EVENTS_PER_S", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Most events at once after a quiet spell [default: one second's worth, --rate].
    #[arg(long, value_name = "N", requires = "rate", value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: Option<u32>,
    /// Most event bytes per second, sustained (needs --rate).
    #[arg(long, value_name = "BYTES_PER_S", requires = "rate", value_parser = clap::value_parser!(u64).range(1..))]
    pub bytes_rate: Option<u64>,
    /// Most event bytes at once [default: one second's worth, --bytes-rate].
    #[arg(long, value_name = "BYTES", requires = "bytes_rate", value_parser = clap::value_parser!(u64).range(1..))]
    pub burst_bytes: Option<u64>,
}

impl RateArgs {
    fn spec(&self) -> Option<RateSpec> {
        let rate = self.rate?;
        Some(RateSpec {
            events_per_second: rate,
            burst: self.burst.unwrap_or(rate),
            bytes_per_second: self.bytes_rate,
            burst_bytes: self.burst_bytes,
        })
    }
}

/// Where a new token goes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TokenOutput {
    /// Write the token to FILE (mode 0600, replacing it) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print the server's JSON response (it holds the token).
    #[arg(long, conflicts_with = "out")]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// Unique name (also the Kafka SASL user name), e.g. "esgf-east".
    pub name: String,
    /// Topic it may publish to (producers) or read (consumers); repeat for several.
    #[arg(long = "topic", short = 't', value_name = "TOPIC")]
    pub topics: Vec<String>,
    #[command(flatten)]
    pub rate: RateArgs,
    /// Who to contact about it, e.g. an e-mail address.
    #[arg(long, value_name = "CONTACT")]
    pub contact: Option<String>,
    /// An OIDC identity whose bearer JWTs act as this principal, as ISSUER=SUBJECT; repeat for several.
    #[arg(long = "oidc", value_name = "ISSUER=SUBJECT", value_parser = parse_oidc)]
    pub oidc: Vec<OidcIdentity>,
    #[command(flatten)]
    pub output: TokenOutput,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GrantArgs {
    pub name: String,
    /// Topic to grant; repeat for several.
    #[arg(long = "topic", short = 't', value_name = "TOPIC", required = true)]
    pub topics: Vec<String>,
    /// Add these topics to its grants instead of replacing them.
    #[arg(long, conflicts_with = "remove")]
    pub add: bool,
    /// Remove these topics from its grants.
    #[arg(long)]
    pub remove: bool,
    /// Print the server's JSON response.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SetArgs {
    pub name: String,
    #[command(flatten)]
    pub rate: RateArgs,
    /// Remove its rate limit.
    #[arg(long, conflicts_with = "rate")]
    pub no_rate: bool,
    /// Who to contact about it.
    #[arg(long, value_name = "CONTACT")]
    pub contact: Option<String>,
    /// Remove its contact.
    #[arg(long, conflicts_with = "contact")]
    pub no_contact: bool,
    /// Replace its OIDC identities with these (ISSUER=SUBJECT; repeat for several).
    #[arg(long = "oidc", value_name = "ISSUER=SUBJECT", value_parser = parse_oidc)]
    pub oidc: Vec<OidcIdentity>,
    /// Remove its OIDC identities.
    #[arg(long, conflicts_with = "oidc")]
    pub no_oidc: bool,
    /// Print the server's JSON response.
    #[arg(long)]
    pub json: bool,
}

impl SetArgs {
    fn update(&self) -> PrincipalUpdate {
        PrincipalUpdate {
            topics: None,
            rate: if self.no_rate { Some(None) } else { self.rate.spec().map(Some) },
            contact: if self.no_contact { Some(None) } else { self.contact.clone().map(Some) },
            oidc: if self.no_oidc {
                Some(Vec::new())
            } else {
                Some(self.oidc.clone()).filter(|o| !o.is_empty())
            },
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct IssueArgs {
    pub name: String,
    #[command(flatten)]
    pub output: TokenOutput,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TopicAccessArgs {
    #[command(subcommand)]
    pub command: TopicAccessCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TopicAccessCommand {
    /// Make a topic readable by anyone without a token (true), or only by granted consumers (false).
    Public {
        name: String,
        #[arg(value_name = "true|false", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
        public: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Start after this sequence number.
    #[arg(long, default_value_t = 0, value_name = "SEQ")]
    pub after: u64,
    /// Print at most N entries (with --follow: per poll).
    #[arg(long, default_value_t = AUDIT_PAGE, value_name = "N", value_parser = parse_audit_limit)]
    pub limit: usize,
    /// Keep printing new entries until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// Print each entry as a JSON line.
    #[arg(long)]
    pub json: bool,
}

fn parse_audit_limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=AUDIT_PAGE).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from 1 to {AUDIT_PAGE}")),
    }
}

/// `ISSUER=SUBJECT`, split at the first `=` (issuer URLs have none; subjects may).
fn parse_oidc(text: &str) -> Result<OidcIdentity, String> {
    match text.split_once('=') {
        Some((issuer, subject)) if !issuer.is_empty() && !subject.is_empty() => {
            Ok(OidcIdentity { issuer: issuer.to_owned(), subject: subject.to_owned() })
        }
        _ => Err("expected ISSUER=SUBJECT, e.g. https://auth.globus.org=6c2f0a4e-...".into()),
    }
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let client = args.server.client()?;
    if !client.has_token() {
        eprintln!(
            "note: no token found; admin commands need the operator token (--token-file <data_dir>/operator.token, \
             ESGF_EVENTS_TOKEN_FILE or ESGF_EVENTS_TOKEN)"
        );
    }
    match args.command {
        AdminCommand::Producer(principal) => {
            run_principal(&client, PrincipalKind::Producer, principal.command).await
        }
        AdminCommand::Consumer(principal) => {
            run_principal(&client, PrincipalKind::Consumer, principal.command).await
        }
        AdminCommand::Topic(TopicAccessArgs { command: TopicAccessCommand::Public { name, public } }) => {
            client.set_topic_public(&name, public).await?;
            let mut out = Output::stdout();
            out.line(if public {
                format!("topic {name} is now public: anyone may read it without a token")
            } else {
                format!("topic {name} is no longer public: reading it needs a consumer grant")
            })?;
            out.flush()?;
            Ok(())
        }
        AdminCommand::Audit(audit) => run_audit(&client, &audit).await,
        AdminCommand::Maintenance(m) => crate::admin_ops::run_maintenance(&client, m.command).await,
        AdminCommand::Announce(a) => crate::admin_ops::run_announce(&client, a).await,
        AdminCommand::Recipients(r) => crate::admin_ops::run_recipients(&client, r.command).await,
        AdminCommand::Deliveries(flags) => crate::admin_ops::run_deliveries(&client, flags.json).await,
    }
}

async fn run_principal(
    client: &Client,
    kind: PrincipalKind,
    command: PrincipalCommand,
) -> anyhow::Result<()> {
    let mut out = Output::stdout();
    let what = kind.singular();
    match command {
        PrincipalCommand::Add(add) => {
            let registration = Registration {
                name: add.name.clone(),
                topics: add.topics,
                rate: add.rate.spec(),
                contact: add.contact,
                oidc: add.oidc,
            };
            if registration.topics.is_empty() {
                eprintln!("note: no --topic given: {} {} may use no topic until granted one", what, add.name);
            }
            issue(&mut out, kind, &add.output, || client.register(kind, &registration)).await?;
        }
        PrincipalCommand::List(flags) => {
            let principals = client.list_principals(kind).await?;
            if flags.json {
                out.line(&principals.raw)?;
            } else {
                for line in list_table(&principals.value) {
                    out.line(line)?;
                }
            }
        }
        PrincipalCommand::Show(show) => {
            let principal = client.get_principal(kind, &show.name).await?;
            if show.json {
                out.line(&principal.raw)?;
            } else {
                for line in describe(&principal.value) {
                    out.line(line)?;
                }
            }
        }
        PrincipalCommand::Grant(grant) => {
            let topics = if grant.add || grant.remove {
                // Read-modify-write: two operators changing one principal's grants at once may lose one change;
                // `show` afterwards tells.
                let current = client.get_principal(kind, &grant.name).await?.value.topics;
                changed_grants(current, &grant.topics, grant.remove)
            } else {
                grant.topics.clone()
            };
            let update = PrincipalUpdate { topics: Some(topics), ..PrincipalUpdate::default() };
            let principal = client.update_principal(kind, &grant.name, &update).await?;
            if grant.json {
                out.line(&principal.raw)?;
            } else {
                out.line(format!("{what} {}: {}", grant.name, grants_phrase(kind, &principal.value.topics)))?;
            }
        }
        PrincipalCommand::Set(set) => {
            let update = set.update();
            if update.rate.is_none() && update.contact.is_none() && update.oidc.is_none() {
                anyhow::bail!(
                    "nothing to change: give --rate, --no-rate, --contact, --no-contact, --oidc or --no-oidc"
                );
            }
            let principal = client.update_principal(kind, &set.name, &update).await?;
            if set.json {
                out.line(&principal.raw)?;
            } else {
                for line in describe(&principal.value) {
                    out.line(line)?;
                }
            }
        }
        PrincipalCommand::Rotate(rotate) => {
            issue(&mut out, kind, &rotate.output, || client.rotate(kind, &rotate.name)).await?;
        }
        PrincipalCommand::Revoke(revoke) => {
            client.revoke(kind, &revoke.name).await?;
            if revoke.json {
                out.line(serde_json::json!({ "revoked": revoke.name }).to_string())?;
            } else {
                out.line(format!("revoked {what} {}: its tokens no longer work", revoke.name))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The grants after adding (or removing) `topics`, sorted like the server keeps them.
fn changed_grants(current: Vec<String>, topics: &[String], remove: bool) -> Vec<String> {
    let mut grants: std::collections::BTreeSet<String> = current.into_iter().collect();
    for topic in topics {
        if remove {
            grants.remove(topic);
        } else {
            grants.insert(topic.clone());
        }
    }
    grants.into_iter().collect()
}

fn grants_phrase(kind: PrincipalKind, topics: &[String]) -> String {
    let verb = match kind {
        PrincipalKind::Producer => "may publish to",
        PrincipalKind::Consumer => "may read",
    };
    if topics.is_empty() {
        format!("{verb} no topic (public topics stay readable)")
    } else {
        format!("{verb} {}", topics.join(", "))
    }
}

/// Registers or rotates through `request` and hands the new token to the operator as `output` says. A token
/// file is prepared before the request and the token is printed if writing it fails, so an issued token always
/// reaches the operator.
async fn issue<F, Fut>(
    out: &mut Output<std::io::Stdout>,
    kind: PrincipalKind,
    output: &TokenOutput,
    request: F,
) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<crate::client::WithRaw<Issued>, crate::client::ClientError>>,
{
    let pending = output.out.as_deref().map(PendingTokenFile::create).transpose()?;
    let issued = match request().await {
        Ok(issued) => issued,
        Err(err) => {
            if let Some(pending) = pending {
                pending.discard();
            }
            return Err(err.into());
        }
    };
    let principal = &issued.value.principal;
    let token = issued.value.token.as_str();
    let summary =
        format!("{} {}: {}", kind.singular(), principal.name, grants_phrase(kind, &principal.topics));
    match pending {
        Some(pending) => {
            let path = pending.target.clone();
            match pending.commit(token) {
                Ok(()) => {
                    out.line(summary)?;
                    out.line(format!("token written to {} (readable by its owner only)", path.display()))?;
                }
                Err(err) => {
                    out.line(summary)?;
                    out.line(format!("token: {token}"))?;
                    out.flush()?;
                    eprintln!("error: the token could not be written to {}: {err:#}", path.display());
                    eprintln!("it is printed above instead: store it now, it will not be shown again");
                    anyhow::bail!("could not write {}", path.display());
                }
            }
        }
        None if output.json => {
            out.line(&issued.raw)?;
            warn_shown_once(kind, &principal.name);
        }
        None => {
            out.line(summary)?;
            out.line(format!("token: {token}"))?;
            warn_shown_once(kind, &principal.name);
        }
    }
    Ok(())
}

fn warn_shown_once(kind: PrincipalKind, name: &str) {
    eprintln!(
        "Store this token now, where only {name} can read it: it is shown this once and cannot be recovered (the \
         server keeps only a hash). If it is lost, `esgf-events admin {} rotate {name}` issues a new one.",
        kind.singular()
    );
}

/// A token file being written: a private temporary file beside the target, renamed over it once the token is
/// in and synced, so the target is never left half-written and never readable by others.
struct PendingTokenFile {
    file: File,
    temp: PathBuf,
    target: PathBuf,
}

impl PendingTokenFile {
    fn create(target: &Path) -> anyhow::Result<Self> {
        let name = target.file_name().with_context(|| format!("{} is not a file name", target.display()))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.tmp", std::process::id()));
        let temp = target.with_file_name(temp_name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
        Ok(PendingTokenFile { file, temp, target: target.to_owned() })
    }

    fn commit(mut self, token: &str) -> anyhow::Result<()> {
        let written = writeln!(self.file, "{token}")
            .and_then(|()| self.file.sync_all())
            .and_then(|()| std::fs::rename(&self.temp, &self.target));
        if written.is_err() {
            let _ = std::fs::remove_file(&self.temp);
        }
        written.with_context(|| format!("writing {}", self.target.display()))
    }

    fn discard(self) {
        let _ = std::fs::remove_file(&self.temp);
    }
}

fn time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn rate_phrase(rate: Option<&RateSpec>) -> String {
    let Some(r) = rate else { return "unlimited".into() };
    let mut text = format!("{} events/s (burst {})", r.events_per_second, r.burst);
    if let Some(bytes) = r.bytes_per_second {
        text.push_str(&format!(", {bytes} bytes/s"));
        if let Some(burst) = r.burst_bytes {
            text.push_str(&format!(" (burst {burst})"));
        }
    }
    text
}

fn list_table(principals: &[Principal]) -> Vec<String> {
    let rows: Vec<Vec<String>> = principals
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                if p.topics.is_empty() { "-".into() } else { p.topics.join(",") },
                rate_phrase(p.rate.as_ref()),
                p.contact.clone().unwrap_or_else(|| "-".into()),
                time(p.created),
            ]
        })
        .collect();
    table(&["NAME", "TOPICS", "RATE", "CONTACT", "CREATED"], &rows)
}

fn describe(p: &Principal) -> Vec<String> {
    let mut lines = vec![
        format!("name:         {}", p.name),
        format!("role:         {}", p.role),
        format!("topics:       {}", if p.topics.is_empty() { "none".into() } else { p.topics.join(", ") }),
        format!("rate:         {}", rate_phrase(p.rate.as_ref())),
        format!("contact:      {}", p.contact.as_deref().unwrap_or("none")),
        format!("created:      {}", time(p.created)),
    ];
    for oidc in &p.oidc {
        lines.push(format!("oidc:         {} subject {}", oidc.issuer, oidc.subject));
    }
    for credential in &p.credentials {
        let expires = credential.expires.map(|ms| format!(", expires {}", time(ms))).unwrap_or_default();
        lines.push(format!("credential:   {} (issued {}{expires})", credential.id, time(credential.created)));
    }
    lines
}

fn audit_line(entry: &AuditEntry) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let remote = entry.remote.as_deref().map(|r| format!(" from {r}")).unwrap_or_default();
    format!(
        "{:>6}  {}  {}  {}  {}  {}{remote}",
        entry.seq,
        DateTime::from_timestamp_millis(entry.time)
            .map_or_else(|| entry.time.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        dash(&entry.actor),
        entry.action,
        dash(&entry.target),
        entry.outcome,
    )
}

async fn run_audit(client: &Client, args: &AuditArgs) -> anyhow::Result<()> {
    let mut out = Output::stdout();
    let mut after = args.after;
    let mut printed = 0usize;
    let mut backoff = AUDIT_POLL_INTERVAL;
    loop {
        let want = if args.follow { args.limit } else { (args.limit - printed).min(AUDIT_PAGE) };
        let page = match client.audit(after, want).await {
            Ok(page) => page,
            Err(err) if args.follow && err.is_transient() => {
                eprintln!("warning: {err}; retrying in {}s", backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        backoff = AUDIT_POLL_INTERVAL;
        let got = page.entries.len();
        for raw in &page.entries {
            if args.json {
                out.line(raw.get())?;
            } else {
                let entry: AuditEntry = serde_json::from_str(raw.get())
                    .context("the server sent an audit entry of another shape")?;
                out.line(audit_line(&entry))?;
            }
        }
        out.flush()?;
        printed += got;
        // `next` never goes backwards; a server that repeats itself must not make us print forever.
        after = page.next.max(after);
        if args.follow {
            if got < want {
                tokio::time::sleep(AUDIT_POLL_INTERVAL).await;
            }
        } else if got < want || printed >= args.limit {
            if got == want && printed >= args.limit {
                eprintln!("note: there may be more entries: continue with --after {after}");
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<AdminArgs, clap::Error> {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            admin: AdminArgs,
        }
        Wrapper::try_parse_from(std::iter::once("admin").chain(args.iter().copied())).map(|w| w.admin)
    }

    #[test]
    fn add_collects_repeated_topics_and_a_rate_whose_burst_defaults_to_one_second() {
        let args =
            parse(&["producer", "add", "esgf-east", "--topic", "a", "-t", "b", "--rate", "50"]).unwrap();
        let AdminCommand::Producer(PrincipalArgs { command: PrincipalCommand::Add(add) }) = args.command
        else {
            panic!()
        };
        assert_eq!(add.topics, ["a", "b"]);
        assert_eq!(
            add.rate.spec(),
            Some(RateSpec { events_per_second: 50, burst: 50, bytes_per_second: None, burst_bytes: None })
        );
    }

    #[test]
    fn burst_and_bytes_rate_need_a_rate() {
        assert!(parse(&["producer", "add", "x", "--burst", "5"]).is_err());
        assert!(parse(&["producer", "add", "x", "--bytes-rate", "5"]).is_err());
        assert!(parse(&["producer", "add", "x", "--rate", "0"]).is_err());
    }

    #[test]
    fn grant_needs_a_topic_and_add_excludes_remove() {
        assert!(parse(&["consumer", "grant", "idx"]).is_err());
        assert!(parse(&["consumer", "grant", "idx", "-t", "a", "--add", "--remove"]).is_err());
        assert!(parse(&["consumer", "grant", "idx", "-t", "a", "--add"]).is_ok());
    }

    #[test]
    fn topic_public_takes_a_boolean() {
        let args = parse(&["topic", "public", "t", "false"]).unwrap();
        assert!(matches!(
            args.command,
            AdminCommand::Topic(TopicAccessArgs {
                command: TopicAccessCommand::Public { public: false, .. }
            })
        ));
        assert!(parse(&["topic", "public", "t", "maybe"]).is_err());
    }

    #[test]
    fn oidc_identity_splits_at_the_first_equals_sign() {
        let id = parse_oidc("https://auth.globus.org=abc==").unwrap();
        assert_eq!((id.issuer.as_str(), id.subject.as_str()), ("https://auth.globus.org", "abc=="));
        assert!(parse_oidc("no-separator").is_err());
        assert!(parse_oidc("=subject").is_err());
    }

    #[test]
    fn changed_grants_add_and_remove_keep_them_sorted_and_unique() {
        let current = vec!["b".to_owned(), "d".to_owned()];
        assert_eq!(changed_grants(current.clone(), &["a".into(), "b".into()], false), ["a", "b", "d"]);
        assert_eq!(changed_grants(current, &["d".into(), "zz".into()], true), ["b"]);
    }

    #[test]
    fn set_builds_a_patch_of_only_what_was_given() {
        let args = parse(&["producer", "set", "x", "--no-rate", "--contact", "ops@example.org"]).unwrap();
        let AdminCommand::Producer(PrincipalArgs { command: PrincipalCommand::Set(set) }) = args.command
        else {
            panic!()
        };
        let patch = serde_json::to_value(set.update()).unwrap();
        assert_eq!(patch, serde_json::json!({ "rate": null, "contact": "ops@example.org" }));
    }

    #[test]
    fn audit_lines_show_who_did_what_to_what() {
        let entry = AuditEntry {
            seq: 7,
            time: 1_795_773_600_000,
            actor: Some("operator".into()),
            action: "producer.register".into(),
            target: Some("esgf-east".into()),
            remote: Some("127.0.0.1:5000".into()),
            outcome: "ok".into(),
        };
        assert_eq!(
            audit_line(&entry),
            "     7  2026-11-27T10:00:00.000Z  operator  producer.register  esgf-east  ok from 127.0.0.1:5000"
        );
    }

    #[test]
    fn a_token_file_is_private_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("east.token");
        std::fs::write(&path, "old\n").unwrap();
        PendingTokenFile::create(&path).unwrap().commit("esgfev_new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "esgfev_new\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let pending = PendingTokenFile::create(&path).unwrap();
        pending.discard();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }
}
