//! `esgf-events monitor`: the unplanned-downtime monitor. Runs apart from the service (another host, ideally),
//! probes `<target>/readyz` every `--interval`, and when the service has been down for `--threshold`:
//!
//! 1. mails an `unplanned-downtime` announcement to `--announce-to` over `--smtp-url` (the service cannot
//!    mail while it is down): since when, and what failed;
//! 2. once the service answers again, pushes the incident to `POST /v1/incidents` (its duration is the
//!    recovery time achieved, shown on `/status`) and both announcements to `POST /v1/announcements`, so they
//!    appear on the web page and in the Atom feed. The `unplanned-downtime` one is marked `mailed_by:
//!    "monitor"` so the service does not mail it again; the `restored` one (with the outage's duration) is
//!    mailed by the service to its whole list. Without a token nothing can be pushed, and the monitor mails
//!    `restored` itself. Pushes are retried at every probe until accepted.
//!
//! Down means: unreachable, timed out, or `/readyz` not ready. A service in a maintenance window is not down
//! (it answers `/readyz` naming the window), and neither is an unreachable one inside a maintenance window it
//! announced (the monitor keeps the windows it last read from `/v1/maintenance`): planned downtime is
//! announced in advance, not by the monitor. Outages shorter than the threshold are not recorded.
//!
//! Everything the monitor knows is in its state file (`--state`, JSON, written atomically and fsync'd at every
//! change), so a restarted monitor neither mails again nor forgets an incident it has yet to push.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::client::{DEFAULT_TOKEN_FILE, ServerArgs, resolve_token};

/// Incidents kept in the state file once fully handled: a record, bounded.
const MAX_KEPT: usize = 100;
/// Mail attempts per recipient before giving up.
const MAX_MAIL_ATTEMPTS: u32 = 10;
/// Responses the monitor reads are small; anything larger is not the service.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// Base URL of the service to watch, e.g. https://events.example.org.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// How long the service must be down before unplanned downtime is announced.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub threshold: Duration,
    /// Time between probes.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long a probe may take [default: the interval, at most 10 s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// SMTP server for the unplanned-downtime mail: smtp://host:port, smtp://host?tls=required, smtps://user:pass@host.
    #[arg(long, value_name = "URL", env = "ESGF_EVENTS_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// Addresses to mail (comma-separated): the announcement list.
    #[arg(long, value_name = "ADDRESSES", env = "ESGF_EVENTS_ANNOUNCE_TO", value_delimiter = ',')]
    pub announce_to: Vec<String>,
    /// Sender address of the mail.
    #[arg(long, value_name = "ADDRESS", default_value = "esgf-events-monitor@localhost")]
    pub from: String,
    /// The monitor's state file (created if missing).
    #[arg(long, value_name = "FILE", default_value = "esgf-events-monitor.json")]
    pub state: PathBuf,
    /// Operator token for pushing incidents and announcements [env: ESGF_EVENTS_TOKEN]. Prefer --token-file.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the operator token [env: ESGF_EVENTS_TOKEN_FILE].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Who is watching, as recorded with each incident [default: esgf-events monitor on <hostname>].
    #[arg(long, value_name = "TEXT")]
    pub name: Option<String>,
}

/// One mail to one recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MailState {
    /// `pending`, `sent`, `failed` (gave up) or `abandoned` (the outage ended first).
    status: String,
    attempts: u32,
    error: Option<String>,
}

/// An outage: in progress (`ended_ms: None`) or over and perhaps not yet pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Outage {
    id: String,
    started_ms: i64,
    ended_ms: Option<i64>,
    /// What failed first.
    detail: String,
    /// Longer than the threshold: announced, and recorded as an incident.
    announced: bool,
    down_mail: BTreeMap<String, MailState>,
    restored_mail: BTreeMap<String, MailState>,
    down_pushed: bool,
    restored_pushed: bool,
    incident_pushed: bool,
}

impl Outage {
    fn done(&self) -> bool {
        self.incident_pushed
            && self.down_pushed
            && self.restored_pushed
            && self.restored_mail.values().all(|m| m.status != "pending")
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    current: Option<Outage>,
    /// Ended outages, oldest first.
    incidents: Vec<Outage>,
    /// Maintenance windows `(starts_at_ms, ends_at_ms)` last read from the service.
    windows: Vec<(i64, i64)>,
}

impl State {
    fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("the monitor state file {} is not valid", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => {
                Err(e).with_context(|| format!("cannot read the monitor state file {}", path.display()))
            }
        }
    }

    /// Writes a temporary file, fsyncs it, renames it over the state file, fsyncs the directory: a crash
    /// leaves the old state or the new one, never a torn one.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let bytes = serde_json::to_vec_pretty(self).context("encoding the monitor state")?;
        let tmp = path.with_extension("json.tmp");
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn in_window(&self, now_ms: i64) -> bool {
        self.windows.iter().any(|&(s, e)| s <= now_ms && now_ms < e)
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    Up,
    /// Answering, in a maintenance window.
    Maintenance,
    Down(String),
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    esgf_events_ops::maintenance::rfc3339(ms)
}

fn duration_text(ms: i64) -> String {
    esgf_events_ops::incidents::human_duration(u64::try_from(ms / 1000).unwrap_or(0))
}

struct Monitor {
    args: MonitorArgs,
    target: String,
    http: reqwest::Client,
    token: Option<String>,
    mailer: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
    name: String,
}

pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let target = args.target.trim_end_matches('/').to_owned();
    reqwest::Url::parse(&target).with_context(|| format!("--target {target} is not a URL"))?;
    let timeout =
        args.timeout.unwrap_or(args.interval).min(Duration::from_secs(10)).max(Duration::from_millis(50));
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .context("building the HTTP client")?;
    let server = ServerArgs {
        server: target.clone(),
        token: args.token.clone(),
        token_file: args.token_file.clone(),
        ca_cert: None,
    };
    let token = resolve_token(&server, |name| std::env::var_os(name), Path::new(DEFAULT_TOKEN_FILE))?;
    if token.is_none() {
        warn!(
            "no token: incidents and announcements cannot be pushed to the service; `restored` is mailed by the monitor"
        );
    }
    let mailer = match &args.smtp_url {
        Some(url) => {
            let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                .context("--smtp-url is not a valid SMTP URL")?
                .timeout(Some(Duration::from_secs(30)))
                .build();
            let from: Mailbox =
                args.from.parse().with_context(|| format!("--from {} is not an address", args.from))?;
            Some((transport, from))
        }
        None => {
            warn!("no --smtp-url: unplanned downtime is logged and pushed to the service, not mailed");
            None
        }
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unnamed host".to_owned());
    let name = args.name.clone().unwrap_or_else(|| format!("esgf-events monitor on {host}"));
    let mut state = State::load(&args.state)?;
    // At once, so an unwritable state file stops the monitor now rather than when it has something to keep.
    state.save(&args.state)?;
    info!(target = %target, threshold = %humantime::format_duration(args.threshold),
        interval = %humantime::format_duration(args.interval), state = %args.state.display(), "monitoring");
    let monitor = Monitor { args, target, http, token, mailer, name };
    let mut ticks = tokio::time::interval(monitor.args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => {
                info!("monitor stopping");
                return Ok(());
            }
        }
        if let Err(err) = monitor.tick(&mut state).await {
            // Only the state file can fail a tick; keep probing, the next save may work.
            error!(error = %format!("{err:#}"), "monitor tick failed");
        }
    }
}

impl Monitor {
    async fn tick(&self, state: &mut State) -> anyhow::Result<()> {
        let now = now_ms();
        let probe = self.probe().await;
        let mut changed = false;
        match &probe {
            Probe::Up | Probe::Maintenance => {
                if let Some(mut outage) = state.current.take() {
                    changed = true;
                    if outage.announced {
                        outage.ended_ms = Some(now);
                        for mail in outage.down_mail.values_mut().filter(|m| m.status == "pending") {
                            mail.status = "abandoned".to_owned();
                        }
                        if self.token.is_none() {
                            outage.restored_mail = self.recipients();
                        }
                        info!(incident = %outage.id, duration = %duration_text(now - outage.started_ms),
                            "service restored");
                        state.incidents.push(outage);
                    } else {
                        info!(down_for = %duration_text(now - outage.started_ms),
                            "service answers again; the outage was shorter than the threshold");
                    }
                }
                if let Some(windows) = self.windows().await
                    && windows != state.windows
                {
                    state.windows = windows;
                    changed = true;
                }
            }
            Probe::Down(detail) if state.current.is_none() && state.in_window(now) => {
                info!(%detail, "service down inside a planned maintenance window: not an outage");
            }
            Probe::Down(detail) => match &mut state.current {
                None => {
                    warn!(%detail, "service down");
                    state.current = Some(Outage {
                        id: format!("outage-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")),
                        started_ms: now,
                        ended_ms: None,
                        detail: detail.clone(),
                        announced: false,
                        down_mail: BTreeMap::new(),
                        restored_mail: BTreeMap::new(),
                        down_pushed: false,
                        restored_pushed: false,
                        incident_pushed: false,
                    });
                    changed = true;
                }
                Some(outage) => {
                    let threshold = i64::try_from(self.args.threshold.as_millis()).unwrap_or(i64::MAX);
                    if !outage.announced && now - outage.started_ms >= threshold {
                        outage.announced = true;
                        outage.down_mail = self.recipients();
                        warn!(incident = %outage.id, since = %rfc3339(outage.started_ms), %detail,
                            "unplanned downtime longer than the threshold: announcing");
                        changed = true;
                    }
                }
            },
        }
        if changed {
            state.save(&self.args.state)?;
        }
        // Each mail's outcome is saved at once: a restart must not send it again.
        if let Some(outage) = &state.current
            && outage.announced
        {
            let (title, body) = self.down_text(outage);
            let mut mails = outage.down_mail.clone();
            if self.send_pending(&mut mails, "unplanned-downtime", &title, &body).await
                && let Some(outage) = &mut state.current
            {
                outage.down_mail = mails;
                state.save(&self.args.state)?;
            }
        }
        for i in 0..state.incidents.len() {
            let (title, body) = self.restored_text(&state.incidents[i]);
            let mut mails = state.incidents[i].restored_mail.clone();
            if self.send_pending(&mut mails, "restored", &title, &body).await {
                state.incidents[i].restored_mail = mails;
                state.save(&self.args.state)?;
            }
        }
        if matches!(probe, Probe::Up | Probe::Maintenance) && self.token.is_some() {
            let mut pushed = false;
            for i in 0..state.incidents.len() {
                if !state.incidents[i].done() {
                    let mut outage = state.incidents[i].clone();
                    self.push(&mut outage).await;
                    if outage != state.incidents[i] {
                        state.incidents[i] = outage;
                        pushed = true;
                    }
                }
            }
            let kept = state.incidents.len();
            if kept > MAX_KEPT {
                // Oldest first: drop handled ones beyond the bound, never one still to push.
                let mut excess = kept - MAX_KEPT;
                state.incidents.retain(|o| {
                    let drop = excess > 0 && o.done();
                    excess -= usize::from(drop);
                    !drop
                });
            }
            if pushed || state.incidents.len() != kept {
                state.save(&self.args.state)?;
            }
        }
        Ok(())
    }

    fn recipients(&self) -> BTreeMap<String, MailState> {
        if self.mailer.is_none() {
            return BTreeMap::new();
        }
        self.args
            .announce_to
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .map(|a| (a, MailState { status: "pending".to_owned(), ..MailState::default() }))
            .collect()
    }

    async fn probe(&self) -> Probe {
        let response = match self.http.get(format!("{}/readyz", self.target)).send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Probe::Down("/readyz did not answer in time".to_owned()),
            Err(e) => return Probe::Down(format!("/readyz unreachable: {}", error_chain(&e))),
        };
        let status = response.status();
        let body: Value = match response.bytes().await {
            Ok(bytes) if bytes.len() <= MAX_RESPONSE_BYTES => {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            }
            Ok(_) => Value::Null,
            Err(e) => return Probe::Down(format!("/readyz answer cut short: {}", error_chain(&e))),
        };
        let maintenance = body.get("maintenance").is_some_and(|m| !m.is_null())
            || body["type"].as_str() == Some("urn:esgf-events:problem:maintenance");
        match status.as_u16() {
            200 if maintenance => Probe::Maintenance,
            200 => Probe::Up,
            503 if maintenance => Probe::Maintenance,
            code => Probe::Down(format!("/readyz answered HTTP {code}")),
        }
    }

    /// The service's maintenance windows, if it answers.
    async fn windows(&self) -> Option<Vec<(i64, i64)>> {
        let body = self.get_json(&format!("{}/v1/maintenance", self.target)).await?;
        let time =
            |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.timestamp_millis());
        Some(
            body["windows"]
                .as_array()?
                .iter()
                .filter_map(|w| Some((time(&w["starts_at"])?, time(&w["ends_at"])?)))
                .collect(),
        )
    }

    async fn get_json(&self, url: &str) -> Option<Value> {
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let bytes = response.bytes().await.ok()?;
        if bytes.len() > MAX_RESPONSE_BYTES {
            return None;
        }
        serde_json::from_slice(&bytes).ok()
    }

    fn down_text(&self, o: &Outage) -> (String, String) {
        (
            format!("Unplanned downtime since {}", rfc3339(o.started_ms)),
            format!(
                "The ESGF Event Service at {} has not been available since {}, as seen by {}.\n\
                 What failed: {}.\n\
                 Another announcement follows when the service is restored.\n\n\
                 Incident id: {}.",
                self.target,
                rfc3339(o.started_ms),
                self.name,
                o.detail,
                o.id
            ),
        )
    }

    fn restored_text(&self, o: &Outage) -> (String, String) {
        let ended = o.ended_ms.unwrap_or(o.started_ms);
        let duration = duration_text(ended - o.started_ms);
        (
            format!("Service restored after {duration} of unplanned downtime"),
            format!(
                "The ESGF Event Service at {} is available again since {}.\n\
                 The outage lasted {duration}, from {} to {}.\n\
                 What failed: {}.\n\n\
                 Incident id: {}.",
                self.target,
                rfc3339(ended),
                rfc3339(o.started_ms),
                rfc3339(ended),
                o.detail,
                o.id
            ),
        )
    }

    /// Attempts every pending mail once; returns whether any state changed.
    async fn send_pending(
        &self,
        mails: &mut BTreeMap<String, MailState>,
        kind: &str,
        title: &str,
        body: &str,
    ) -> bool {
        let Some((transport, from)) = &self.mailer else { return false };
        let mut changed = false;
        for (recipient, mail) in mails.iter_mut().filter(|(_, m)| m.status == "pending") {
            changed = true;
            mail.attempts += 1;
            let result = async {
                let to: Mailbox = recipient.parse().map_err(|e| format!("invalid address: {e}"))?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(format!("[ESGF Event Service] {kind}: {title}"))
                    .header(ContentType::TEXT_PLAIN)
                    .body(format!("{body}\n\nPublished {}.\n", rfc3339(now_ms())))
                    .map_err(|e| format!("cannot build the message: {e}"))?;
                transport.send(message).await.map(|_| ()).map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(()) => {
                    info!(%recipient, kind, "mailed");
                    mail.status = "sent".to_owned();
                    mail.error = None;
                }
                Err(err) => {
                    warn!(%recipient, kind, attempts = mail.attempts, error = %err, "mail failed");
                    mail.error = Some(err);
                    if mail.attempts >= MAX_MAIL_ATTEMPTS {
                        mail.status = "failed".to_owned();
                    }
                }
            }
        }
        changed
    }

    /// Pushes what the service does not have yet: both announcements, then the incident.
    async fn push(&self, outage: &mut Outage) {
        let Some(ended) = outage.ended_ms else { return };
        if !outage.down_pushed {
            let (title, body) = self.down_text(outage);
            let mailed = outage.down_mail.values().any(|m| m.status == "sent");
            let mut announcement = json!({ "kind": "unplanned-downtime", "title": title, "body": body });
            if mailed {
                announcement["mailed_by"] = json!("monitor");
            }
            outage.down_pushed = self.announce(&outage.id, announcement).await;
        }
        if outage.down_pushed && !outage.restored_pushed {
            let (title, body) = self.restored_text(outage);
            let mut announcement = json!({ "kind": "restored", "title": title, "body": body });
            if outage.restored_mail.values().any(|m| m.status == "sent") {
                announcement["mailed_by"] = json!("monitor");
            }
            outage.restored_pushed = self.announce(&outage.id, announcement).await;
        }
        if !outage.incident_pushed {
            let incident = json!({
                "id": outage.id,
                "started_at": rfc3339(outage.started_ms),
                "ended_at": rfc3339(ended),
                "detected_by": self.name,
                "detail": outage.detail,
            });
            match self.post("/v1/incidents", &incident).await {
                Ok(()) => {
                    info!(incident = %outage.id, "incident recorded by the service");
                    outage.incident_pushed = true;
                }
                Err(err) => {
                    warn!(incident = %outage.id, error = %err, "pushing the incident failed; will retry")
                }
            }
        }
    }

    /// Publishes an announcement unless the service already has it (a push whose answer was lost).
    async fn announce(&self, incident: &str, announcement: Value) -> bool {
        let marker = format!("Incident id: {incident}.");
        let kind = announcement["kind"].clone();
        let Some(existing) = self.get_json(&format!("{}/v1/announcements", self.target)).await else {
            return false;
        };
        let known = existing["announcements"].as_array().is_some_and(|list| {
            list.iter().any(|a| a["kind"] == kind && a["body"].as_str().is_some_and(|b| b.contains(&marker)))
        });
        if known {
            return true;
        }
        match self.post("/v1/announcements", &announcement).await {
            Ok(()) => {
                info!(%incident, kind = %kind, "announcement published on the service");
                true
            }
            Err(err) => {
                warn!(%incident, kind = %kind, error = %err, "publishing the announcement failed; will retry");
                false
            }
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(), String> {
        let mut request = self.http.post(format!("{}{path}", self.target)).json(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(format!("HTTP {status}: {}", text.chars().take(300).collect::<String>()))
    }
}

/// The error and its causes, for people ("error sending request: connection refused").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage() -> Outage {
        Outage {
            id: "outage-1".into(),
            started_ms: 1_000,
            ended_ms: Some(61_000),
            detail: "x".into(),
            announced: true,
            down_mail: BTreeMap::new(),
            restored_mail: BTreeMap::new(),
            down_pushed: true,
            restored_pushed: true,
            incident_pushed: true,
        }
    }

    #[test]
    fn state_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(State::load(&path).unwrap().current.is_none(), "a missing file is a fresh start");
        let mut state = State { current: Some(outage()), incidents: vec![outage()], windows: vec![(1, 2)] };
        state
            .current
            .as_mut()
            .unwrap()
            .down_mail
            .insert("a@example.org".into(), MailState { status: "sent".into(), attempts: 1, error: None });
        state.save(&path).unwrap();
        let loaded = State::load(&path).unwrap();
        assert_eq!(loaded.current, state.current);
        assert_eq!((loaded.incidents.len(), loaded.windows.as_slice()), (1, &[(1, 2)][..]));
        assert!(loaded.in_window(1) && !loaded.in_window(2));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(State::load(&path).is_err(), "a corrupt state file stops the monitor rather than re-mailing");
    }

    #[test]
    fn an_outage_is_done_only_when_everything_is_pushed_and_mailed() {
        assert!(outage().done());
        let mut o = outage();
        o.incident_pushed = false;
        assert!(!o.done());
        let mut o = outage();
        o.restored_mail.insert("a@x".into(), MailState { status: "pending".into(), ..MailState::default() });
        assert!(!o.done());
    }

    #[test]
    fn error_chain_names_the_causes() {
        let err = std::io::Error::other("outer");
        assert_eq!(error_chain(&err), "outer");
    }
}
