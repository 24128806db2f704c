//! The announcement mailing list: every announcement is mailed over SMTP to the list of [`AnnounceList`] (the
//! configured `announce_to` addresses, the members operators added, the contact address of every registered
//! principal that has one, less whoever unsubscribed).
//!
//! Each announcement is fanned out once: the first pass that sees it records one pending delivery per current
//! recipient (collection `mail_deliveries`, key `<announcement id, zero-padded>/<address>`) together with a
//! marker (collection `mail_fanned_out`), in one transaction. A delivery is marked sent right after the SMTP
//! server accepted it, so a restart resends nothing already sent (the only window for a duplicate is a crash
//! between the server's acceptance and that write). Failures are retried with exponential backoff up to
//! `max_attempts`, then marked failed; every record (status, attempts, last error) is visible to operators.
//! Announcements older than `max_age` when first seen (e.g. published before mail was configured) are marked
//! without being mailed, so turning mail on does not flood the list with history.
//!
//! With a public URL configured, each mail carries a signed one-click unsubscribe link (RFC 8058:
//! `List-Unsubscribe` and `List-Unsubscribe-Post`, and the link in the body); a pending delivery to an address
//! that unsubscribed meanwhile is dropped (status `unsubscribed`) rather than sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use esgf_events_engine::Clock;
use esgf_events_meta::{MetaError, MetaStore, Write};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::announcements::{Announcement, AnnouncementError, Announcements};
use crate::maintenance::rfc3339;
use crate::recipients::{AnnounceList, RecipientsError};

const DELIVERIES: &str = "mail_deliveries";
const FANNED_OUT: &str = "mail_fanned_out";

/// Where and how announcements are mailed.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `smtp://host:port`, `smtp://host?tls=required` (STARTTLS), `smtps://user:pass@host` (TLS).
    pub smtp_url: String,
    /// The sender address.
    pub from: String,
    /// Addresses that receive every announcement.
    pub announce_to: Vec<String>,
    /// The service's public URL, for the link in each mail.
    pub public_url: Option<String>,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub max_attempts: u32,
    /// Announcements older than this when first seen are not mailed.
    pub max_age: Duration,
    /// One SMTP exchange (connect to QUIT).
    pub timeout: Duration,
}

impl MailConfig {
    pub fn new(smtp_url: String, from: String, announce_to: Vec<String>) -> Self {
        MailConfig {
            smtp_url,
            from,
            announce_to,
            public_url: None,
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(15 * 60),
            max_attempts: 12,
            max_age: Duration::from_secs(7 * 86_400),
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid SMTP URL: {0}")]
    Url(String),
    #[error("invalid sender address '{0}'")]
    From(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Announcements(#[from] AnnouncementError),
    #[error(transparent)]
    Recipients(#[from] RecipientsError),
}

/// The state of one announcement's mail to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub announcement: String,
    pub recipient: String,
    /// The recipient's display name, if the list has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `pending`, `sent`, `failed` (gave up) or `unsubscribed` (the address left the list before it was sent).
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_ms: i64,
    pub sent_ms: Option<i64>,
}

/// The contact addresses of registered principals, asked for at each fan-out.
pub type Contacts = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

pub struct Mailer {
    config: MailConfig,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    meta: Arc<dyn MetaStore>,
    announcements: Arc<Announcements>,
    list: Arc<AnnounceList>,
    clock: Arc<dyn Clock>,
    /// Whether the missing public URL (so: no unsubscribe link) was logged already.
    warned_no_public_url: AtomicBool,
}

fn key(announcement: &str, recipient: &str) -> String {
    // Zero-padded so deliveries scan in announcement order.
    format!("{announcement:0>20}/{recipient}")
}

impl Mailer {
    pub fn new(
        config: MailConfig,
        meta: Arc<dyn MetaStore>,
        announcements: Arc<Announcements>,
        contacts: Contacts,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, MailError> {
        let from: Mailbox = config.from.parse().map_err(|_| MailError::From(config.from.clone()))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .map_err(|e| MailError::Url(e.to_string()))?
            .timeout(Some(config.timeout))
            .build();
        let list = Arc::new(AnnounceList::new(
            Arc::clone(&meta),
            config.announce_to.clone(),
            contacts,
            Arc::clone(&clock),
        ));
        Ok(Mailer {
            config,
            from,
            transport,
            meta,
            announcements,
            list,
            clock,
            warned_no_public_url: AtomicBool::new(false),
        })
    }

    /// The announcement list this mailer sends to (members, unsubscribe links).
    pub fn list(&self) -> &Arc<AnnounceList> {
        &self.list
    }

    /// Every delivery record, oldest announcement first.
    pub async fn deliveries(&self) -> Result<Vec<Delivery>, MailError> {
        let mut out = Vec::new();
        for (k, v) in self.meta.scan(DELIVERIES, "").await? {
            match serde_json::from_slice(&v) {
                Ok(d) => out.push(d),
                Err(err) => tracing::error!(key = %k, error = %err, "unreadable mail delivery record"),
            }
        }
        Ok(out)
    }

    /// Runs passes until `stop` turns true: after each announcement (`wake`) and when a retry is due.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        loop {
            // Shutdown does not wait for a pass: a send cut short is retried after the restart (at worst, one
            // duplicate mail, if the server had accepted it just before).
            let passed = tokio::select! {
                passed = self.pass() => passed,
                _ = stop.wait_for(|s| *s) => return,
            };
            let next = match passed {
                Ok(next) => next,
                Err(err) => {
                    tracing::error!(error = %err, "announcement mail pass failed; retrying");
                    Some(self.config.retry_base)
                }
            };
            // Idle: look again now and then anyway (new contacts do not wake us, new announcements do).
            let wait = next.unwrap_or(Duration::from_secs(300));
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Fans out new announcements, then attempts every due delivery. Returns when the next retry is due.
    pub async fn pass(&self) -> Result<Option<Duration>, MailError> {
        self.fan_out().await?;
        let now = self.clock.now_ms();
        let mut next_due: Option<i64> = None;
        let mut cache: Vec<Announcement> = Vec::new();
        let unsubscribed = self.list.unsubscribed().await?;
        for mut delivery in self.deliveries().await? {
            if delivery.status != "pending" {
                continue;
            }
            if AnnounceList::is_in(&unsubscribed, &delivery.recipient) {
                delivery.status = "unsubscribed".to_owned();
                tracing::info!(announcement = %delivery.announcement, recipient = %delivery.recipient,
                    "announcement mail dropped: the recipient unsubscribed");
                self.store(&delivery).await?;
                continue;
            }
            if delivery.next_attempt_ms > now {
                next_due =
                    Some(next_due.map_or(delivery.next_attempt_ms, |n| n.min(delivery.next_attempt_ms)));
                continue;
            }
            if !cache.iter().any(|a| a.id == delivery.announcement) {
                cache = self.announcements.list().await?;
            }
            let Some(announcement) = cache.iter().find(|a| a.id == delivery.announcement) else {
                continue;
            };
            delivery.attempts += 1;
            match self.send(announcement, &delivery.recipient, delivery.name.as_deref()).await {
                Ok(()) => {
                    delivery.status = "sent".to_owned();
                    delivery.sent_ms = Some(self.clock.now_ms());
                    delivery.last_error = None;
                    metrics::counter!(crate::metrics::SMTP_SENDS, "outcome" => "sent").increment(1);
                    tracing::info!(announcement = %delivery.announcement, recipient = %delivery.recipient,
                        attempts = delivery.attempts, "announcement mailed");
                }
                Err(error) => {
                    metrics::counter!(crate::metrics::SMTP_SENDS, "outcome" => "failed").increment(1);
                    tracing::warn!(announcement = %delivery.announcement, recipient = %delivery.recipient,
                        attempts = delivery.attempts, %error, "announcement mail failed");
                    delivery.last_error = Some(error.clone());
                    if delivery.attempts >= self.config.max_attempts || error.starts_with("permanent:") {
                        delivery.status = "failed".to_owned();
                    } else {
                        let wait = backoff(delivery.attempts, self.config.retry_base, self.config.retry_cap);
                        delivery.next_attempt_ms = self.clock.now_ms() + millis(wait);
                        next_due = Some(
                            next_due.map_or(delivery.next_attempt_ms, |n| n.min(delivery.next_attempt_ms)),
                        );
                    }
                }
            }
            self.store(&delivery).await?;
        }
        let now = self.clock.now_ms();
        Ok(next_due.map(|due| Duration::from_millis(u64::try_from(due.saturating_sub(now)).unwrap_or(0))))
    }

    async fn store(&self, delivery: &Delivery) -> Result<(), MailError> {
        let value = serde_json::to_vec(delivery).unwrap_or_default();
        self.meta.put(DELIVERIES, &key(&delivery.announcement, &delivery.recipient), value.into()).await?;
        Ok(())
    }

    async fn fan_out(&self) -> Result<(), MailError> {
        let now = self.clock.now_ms();
        let max_age = millis(self.config.max_age);
        for announcement in self.announcements.list().await?.into_iter().rev() {
            if self.meta.get(FANNED_OUT, &announcement.id).await?.is_some() {
                continue;
            }
            // Mailed already by whoever published it (the downtime monitor mails while the service is down):
            // marked fanned out with no recipients, so nobody gets it twice.
            let recipients = if now.saturating_sub(announcement.published_ms) > max_age
                || announcement.mailed_by.is_some()
            {
                Vec::new()
            } else {
                self.list.recipients().await?
            };
            let mut writes: Vec<Write> = recipients
                .iter()
                .map(|recipient| {
                    let delivery = Delivery {
                        announcement: announcement.id.clone(),
                        recipient: recipient.address.clone(),
                        name: recipient.name.clone(),
                        status: "pending".to_owned(),
                        attempts: 0,
                        last_error: None,
                        next_attempt_ms: now,
                        sent_ms: None,
                    };
                    Write {
                        collection: DELIVERIES,
                        key: key(&announcement.id, &recipient.address),
                        value: Some(serde_json::to_vec(&delivery).unwrap_or_default().into()),
                    }
                })
                .collect();
            writes.push(Write {
                collection: FANNED_OUT,
                key: announcement.id.clone(),
                value: Some(recipients.len().to_string().into_bytes().into()),
            });
            self.meta.write(writes).await?;
            tracing::info!(announcement = %announcement.id, recipients = recipients.len(), "announcement queued for mail");
        }
        Ok(())
    }

    /// One SMTP attempt; the error text starts with `permanent:` when retrying cannot help.
    async fn send(
        &self,
        announcement: &Announcement,
        recipient: &str,
        name: Option<&str>,
    ) -> Result<(), String> {
        let address = recipient.parse().map_err(|e| format!("permanent: invalid address: {e}"))?;
        let to = Mailbox::new(name.map(str::to_owned), address);
        let unsubscribe = self.unsubscribe_url(recipient).await?;
        let mut body = announcement.body.clone();
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        body.push_str(&format!("Published {}.\n", rfc3339(announcement.published_ms)));
        if let Some(base) = &self.config.public_url {
            body.push_str(&format!(
                "Announcements: {}/announcements#announcement-{}\n",
                base.trim_end_matches('/'),
                announcement.id
            ));
        }
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(format!("[ESGF Event Service] {}: {}", announcement.kind.as_str(), announcement.title))
            .header(ContentType::TEXT_PLAIN);
        if let Some(url) = &unsubscribe {
            body.push_str(&format!(
                "\nYou receive this as a member of the service's announcement list. To leave it: {url}\n"
            ));
            builder = builder
                .raw_header(HeaderValue::new(LIST_UNSUBSCRIBE, format!("<{url}>")))
                .raw_header(HeaderValue::new(LIST_UNSUBSCRIBE_POST, "List-Unsubscribe=One-Click".to_owned()));
        }
        let message = builder.body(body).map_err(|e| format!("permanent: cannot build the message: {e}"))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(format!("permanent: {e}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

const LIST_UNSUBSCRIBE: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe");
const LIST_UNSUBSCRIBE_POST: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe-Post");

impl Mailer {
    /// The recipient's one-click unsubscribe URL; `None` without a public URL to put it under (logged once).
    async fn unsubscribe_url(&self, recipient: &str) -> Result<Option<String>, String> {
        let Some(base) = &self.config.public_url else {
            if !self.warned_no_public_url.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "no public_url configured: announcement mail goes out without a List-Unsubscribe link"
                );
            }
            return Ok(None);
        };
        // A state store failure is transient: the delivery is retried, never sent without its link.
        self.list.unsubscribe_url(base, recipient).await.map(Some).map_err(|e| e.to_string())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `base * 2^(attempts-1)`, capped.
fn backoff(attempts: u32, base: Duration, cap: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (base, cap) = (Duration::from_secs(5), Duration::from_secs(60));
        let waits: Vec<u64> = (1..=6).map(|a| backoff(a, base, cap).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
    }

    #[test]
    fn delivery_keys_sort_by_announcement_number() {
        assert!(key("9", "a@x") < key("10", "a@x"));
    }
}
