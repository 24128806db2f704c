//! The announcement list: who receives announcement mail, and the signed one-click unsubscribe (RFC 8058).
//!
//! The list is the configured `announce_to` addresses, the members operators add (collection
//! `announce_members`) and the contact address of every registered principal that has one, each address once
//! (compared case-insensitively), less every address that unsubscribed (collection `announce_unsubscribed`).
//! Unsubscribing suppresses an address whatever brought it onto the list, so a configured or contact address
//! can leave too; an operator adding the address as a member again lifts that.
//!
//! Each mail carries a link `.../v1/announcements/unsubscribe?address=A&sig=S` where `S` is
//! HMAC-SHA256(key, "unsubscribe\0" + lower-cased A), base64url without padding. The key is generated once per
//! deployment and kept in the state store (collection `announce_secret`), so every node of a cluster checks the
//! links every other node sent; like webhook signing secrets it is the one kind of secret the state store holds
//! in clear, because an HMAC needs it.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use esgf_events_engine::Clock;
use esgf_events_meta::{MetaError, MetaStore, Write};
use hmac::{KeyInit, Mac};
use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::mail::Contacts;

/// Members added through the API, keyed by lower-cased address.
pub const MEMBERS: &str = "announce_members";
/// Addresses that unsubscribed, keyed by lower-cased address.
pub const UNSUBSCRIBED: &str = "announce_unsubscribed";
const SECRETS: &str = "announce_secret";
const SECRET_KEY: &str = "unsubscribe";
/// Random bytes of the signing key.
const KEY_BYTES: usize = 32;
/// What the HMAC covers besides the address, so a signature made for anything else can never pass as one.
const SIGNING_CONTEXT: &[u8] = b"unsubscribe\0";

/// Most members the list holds; far above the modelling centres of a federation.
pub const MAX_MEMBERS: usize = 10_000;
/// Longest address accepted (RFC 5321's limit on a forward path).
pub const MAX_ADDRESS_CHARS: usize = 254;
/// Longest display name accepted.
pub const MAX_NAME_CHARS: usize = 200;

/// The path of the unsubscribe endpoint, below the public URL.
pub const UNSUBSCRIBE_PATH: &str = "/v1/announcements/unsubscribe";

/// Why an address is on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// In `announce_to` of the configuration.
    Configured,
    /// Added through `POST /v1/announcements/recipients`.
    Member,
    /// The contact address of a registered producer or consumer.
    Contact,
}

/// A member added through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub address: String,
    #[serde(default)]
    pub name: Option<String>,
    pub added_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Unsubscription {
    address: String,
    unsubscribed_ms: i64,
}

/// One address of the effective list, with every source that puts it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListEntry {
    pub address: String,
    pub name: Option<String>,
    pub sources: Vec<Source>,
    /// Unsubscribed addresses are listed (so operators see them) but never mailed.
    pub unsubscribed: bool,
}

/// One address announcements are mailed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecipientsError {
    #[error("'{0}' is not an e-mail address")]
    InvalidAddress(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{0} is not a member of the announcement list (configured and contact addresses are changed in the configuration and on the principal)"
    )]
    NotMember(String),
    #[error("the unsubscribe link is not valid: its signature does not match the address")]
    BadSignature,
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("the stored unsubscribe signing key is unreadable")]
    CorruptKey,
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// The case-insensitive identity of an address.
fn fold(address: &str) -> String {
    address.to_lowercase()
}

/// Parses `text` as `address` or `Name <address>`; the address is returned as written, trimmed.
pub fn parse_address(text: &str) -> Result<(String, Option<String>), RecipientsError> {
    let text = text.trim();
    // The error repeats the input: keep it short enough to be readable in a problem document.
    let shown = || RecipientsError::InvalidAddress(text.chars().take(MAX_ADDRESS_CHARS).collect());
    if text.is_empty() || text.chars().count() > MAX_ADDRESS_CHARS + MAX_NAME_CHARS {
        return Err(shown());
    }
    let mailbox = Mailbox::from_str(text).map_err(|_| shown())?;
    let address = mailbox.email.to_string();
    if address.chars().count() > MAX_ADDRESS_CHARS {
        return Err(shown());
    }
    Ok((address, mailbox.name.filter(|n| !n.trim().is_empty())))
}

/// The effective list: configured, then members, then contacts; each address once (case-insensitively, the
/// first spelling and the first name kept), unparseable entries skipped, unsubscribed ones flagged.
pub fn effective(
    configured: &[String],
    members: &[Member],
    contacts: &[String],
    unsubscribed: &HashSet<String>,
) -> Vec<ListEntry> {
    let mut out: Vec<ListEntry> = Vec::new();
    let configured = configured.iter().map(|c| (Source::Configured, c.as_str(), None));
    let members = members.iter().map(|m| (Source::Member, m.address.as_str(), m.name.as_deref()));
    let contacts = contacts.iter().map(|c| (Source::Contact, c.as_str(), None));
    for (source, text, name) in configured.chain(members).chain(contacts) {
        // A contact is free text ("call the desk"); only addresses are mailed.
        let Ok((address, parsed_name)) = parse_address(text) else {
            if source == Source::Configured {
                tracing::warn!(entry = %text, "announce_to entry is not an e-mail address; skipped");
            }
            continue;
        };
        let name = name.map(str::to_owned).or(parsed_name);
        let key = fold(&address);
        match out.iter_mut().find(|e| fold(&e.address) == key) {
            Some(entry) => {
                if !entry.sources.contains(&source) {
                    entry.sources.push(source);
                }
                if entry.name.is_none() {
                    entry.name = name;
                }
            }
            None => out.push(ListEntry {
                unsubscribed: unsubscribed.contains(&key),
                address,
                name,
                sources: vec![source],
            }),
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a query value.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The signature of `address` under `key`.
pub fn sign(key: &[u8], address: &str) -> String {
    // HMAC takes keys of any length; the fallback only keeps the function total.
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else { return String::new() };
    mac.update(SIGNING_CONTEXT);
    mac.update(fold(address).as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` is `address`'s under `key`, compared in constant time.
pub fn verify(key: &[u8], address: &str, signature: &str) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(signature.trim()) else { return false };
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else { return false };
    mac.update(SIGNING_CONTEXT);
    mac.update(fold(address).as_bytes());
    mac.verify_slice(&tag).is_ok()
}

/// The query of an unsubscribe link, `?address=...&sig=...`, each value percent-encoded.
pub fn link_query(address: &str, signature: &str) -> String {
    format!("?address={}&sig={}", query_escape(address), query_escape(signature))
}

/// The one-click unsubscribe URL of `address` below the public URL `base`.
pub fn unsubscribe_url(base: &str, key: &[u8], address: &str) -> String {
    format!("{}{UNSUBSCRIBE_PATH}{}", base.trim_end_matches('/'), link_query(address, &sign(key, address)))
}

/// The announcement list of one deployment.
pub struct AnnounceList {
    meta: Arc<dyn MetaStore>,
    configured: Vec<String>,
    contacts: Contacts,
    clock: Arc<dyn Clock>,
    key: tokio::sync::OnceCell<Vec<u8>>,
}

impl AnnounceList {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        configured: Vec<String>,
        contacts: Contacts,
        clock: Arc<dyn Clock>,
    ) -> Self {
        AnnounceList { meta, configured, contacts, clock, key: tokio::sync::OnceCell::new() }
    }

    /// The deployment's signing key: read from the state store, or generated and stored by whichever node
    /// asks first (compare-and-set, so racing nodes end up with the same key).
    pub async fn key(&self) -> Result<&[u8], RecipientsError> {
        let key = self
            .key
            .get_or_try_init(|| async {
                for _ in 0..3 {
                    if let Some(stored) = self.meta.get(SECRETS, SECRET_KEY).await? {
                        return STANDARD.decode(&stored).map_err(|_| RecipientsError::CorruptKey);
                    }
                    let mut key = vec![0u8; KEY_BYTES];
                    getrandom::fill(&mut key).map_err(|e| RecipientsError::Random(e.to_string()))?;
                    let encoded = STANDARD.encode(&key).into_bytes().into();
                    if self.meta.compare_and_set(SECRETS, SECRET_KEY, None, Some(encoded)).await? {
                        tracing::info!("unsubscribe signing key generated");
                        return Ok(key);
                    }
                }
                Err(RecipientsError::Meta(MetaError::Storage {
                    context: "storing the unsubscribe signing key",
                    detail: "the key changed under every attempt".to_owned(),
                }))
            })
            .await?;
        Ok(key.as_slice())
    }

    /// The one-click unsubscribe URL of `address` below the public URL `base`.
    pub async fn unsubscribe_url(&self, base: &str, address: &str) -> Result<String, RecipientsError> {
        Ok(unsubscribe_url(base, self.key().await?, address))
    }

    /// Checks an unsubscribe link's signature.
    pub async fn verify(&self, address: &str, signature: &str) -> Result<(), RecipientsError> {
        if verify(self.key().await?, address, signature) {
            Ok(())
        } else {
            Err(RecipientsError::BadSignature)
        }
    }

    /// Removes `address` from the list for good, whatever put it there (idempotent); the signature must be
    /// the one its mail carried.
    pub async fn unsubscribe(&self, address: &str, signature: &str) -> Result<String, RecipientsError> {
        self.verify(address, signature).await?;
        let address = address.trim().to_owned();
        let key = fold(&address);
        let record = Unsubscription { address: address.clone(), unsubscribed_ms: self.clock.now_ms() };
        self.meta
            .write(vec![
                Write {
                    collection: UNSUBSCRIBED,
                    key: key.clone(),
                    value: Some(serde_json::to_vec(&record).unwrap_or_default().into()),
                },
                Write { collection: MEMBERS, key, value: None },
            ])
            .await?;
        tracing::info!(recipient = %address, "unsubscribed from announcement mail");
        Ok(address)
    }

    /// Adds a member; `Ok((member, false))` when it already was one (nothing changes then but a lifted
    /// unsubscription). An operator adding an address that unsubscribed subscribes it again.
    pub async fn add(&self, address: &str, name: Option<String>) -> Result<(Member, bool), RecipientsError> {
        let (address, parsed_name) = parse_address(address)?;
        let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).or(parsed_name);
        if name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME_CHARS || n.contains(['\r', '\n'])) {
            return Err(RecipientsError::Invalid(format!(
                "name must be one line of at most {MAX_NAME_CHARS} characters"
            )));
        }
        let key = fold(&address);
        let resubscribed = self.meta.get(UNSUBSCRIBED, &key).await?.is_some();
        if let Some(existing) = self.meta.get(MEMBERS, &key).await?
            && let Ok(member) = serde_json::from_slice::<Member>(&existing)
        {
            if resubscribed {
                self.meta.delete(UNSUBSCRIBED, &key).await?;
                tracing::info!(recipient = %member.address, "announcement list member subscribed again");
            }
            return Ok((member, false));
        }
        if self.meta.scan(MEMBERS, "").await?.len() >= MAX_MEMBERS {
            return Err(RecipientsError::Invalid(format!(
                "the announcement list holds its maximum of {MAX_MEMBERS} members"
            )));
        }
        let member = Member { address, name, added_ms: self.clock.now_ms() };
        self.meta
            .write(vec![
                Write {
                    collection: MEMBERS,
                    key: key.clone(),
                    value: Some(serde_json::to_vec(&member).unwrap_or_default().into()),
                },
                Write { collection: UNSUBSCRIBED, key, value: None },
            ])
            .await?;
        tracing::info!(recipient = %member.address, resubscribed, "announcement list member added");
        Ok((member, true))
    }

    /// Removes a member added through the API.
    pub async fn remove(&self, address: &str) -> Result<Member, RecipientsError> {
        let (address, _) = parse_address(address)?;
        let key = fold(&address);
        let Some(existing) = self.meta.get(MEMBERS, &key).await? else {
            return Err(RecipientsError::NotMember(address));
        };
        self.meta.delete(MEMBERS, &key).await?;
        let member = serde_json::from_slice::<Member>(&existing).unwrap_or(Member {
            address,
            name: None,
            added_ms: 0,
        });
        tracing::info!(recipient = %member.address, "announcement list member removed");
        Ok(member)
    }

    async fn members(&self) -> Result<Vec<Member>, RecipientsError> {
        let mut out = Vec::new();
        for (key, value) in self.meta.scan(MEMBERS, "").await? {
            match serde_json::from_slice(&value) {
                Ok(member) => out.push(member),
                Err(err) => tracing::error!(key = %key, error = %err, "unreadable announcement list member"),
            }
        }
        Ok(out)
    }

    /// The lower-cased addresses that unsubscribed.
    pub async fn unsubscribed(&self) -> Result<HashSet<String>, RecipientsError> {
        Ok(self.meta.scan(UNSUBSCRIBED, "").await?.into_iter().map(|(key, _)| key).collect())
    }

    /// Whether `address` unsubscribed, given [`Self::unsubscribed`].
    pub fn is_in(set: &HashSet<String>, address: &str) -> bool {
        set.contains(&fold(address.trim()))
    }

    /// Every address of the list with its sources, unsubscribed ones included.
    pub async fn entries(&self) -> Result<Vec<ListEntry>, RecipientsError> {
        let members = self.members().await?;
        let unsubscribed = self.unsubscribed().await?;
        Ok(effective(&self.configured, &members, &(self.contacts)(), &unsubscribed))
    }

    /// Who announcements are mailed to now.
    pub async fn recipients(&self) -> Result<Vec<Recipient>, RecipientsError> {
        Ok(self
            .entries()
            .await?
            .into_iter()
            .filter(|e| !e.unsubscribed)
            .map(|e| Recipient { address: e.address, name: e.name })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn member(address: &str, name: Option<&str>) -> Member {
        Member { address: address.into(), name: name.map(Into::into), added_ms: 0 }
    }

    #[test]
    fn a_signature_verifies_for_its_address_in_any_case_and_for_nothing_else() {
        let sig = sign(KEY, "Centre@Example.org");
        assert!(verify(KEY, "centre@example.org", &sig));
        assert!(verify(KEY, "CENTRE@EXAMPLE.ORG", &sig));
        assert!(!verify(KEY, "other@example.org", &sig));
        assert!(!verify(b"another key of the same length!!", "centre@example.org", &sig));
    }

    #[test]
    fn a_tampered_truncated_or_garbled_signature_is_refused() {
        let sig = sign(KEY, "centre@example.org");
        let mut flipped = sig.clone().into_bytes();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        assert!(!verify(KEY, "centre@example.org", &String::from_utf8(flipped).unwrap()));
        assert!(!verify(KEY, "centre@example.org", &sig[..sig.len() - 2]));
        assert!(!verify(KEY, "centre@example.org", ""));
        assert!(!verify(KEY, "centre@example.org", "not base64 !!"));
    }

    #[test]
    fn the_url_escapes_the_address_and_carries_a_verifiable_signature() {
        let url = unsubscribe_url("https://events.example.org/", KEY, "a+b@example.org");
        let expected_sig = sign(KEY, "a+b@example.org");
        assert_eq!(
            url,
            format!(
                "https://events.example.org/v1/announcements/unsubscribe?address=a%2Bb%40example.org&sig={expected_sig}"
            )
        );
        assert!(!expected_sig.contains(['+', '/', '=']), "base64url without padding needs no escaping");
    }

    #[test]
    fn the_list_is_configured_members_and_contacts_once_each_less_the_unsubscribed() {
        let configured = vec!["list@example.org".to_owned(), "Desk <desk@example.org>".to_owned()];
        let members = vec![member("LIST@example.org", Some("The list")), member("centre@example.org", None)];
        let contacts = vec![
            "Centre@Example.org".to_owned(),
            "indexer@example.org".to_owned(),
            "call the desk".to_owned(),
            "gone@example.org".to_owned(),
        ];
        let unsubscribed: HashSet<String> = ["gone@example.org".to_owned()].into();
        let list = effective(&configured, &members, &contacts, &unsubscribed);
        let summary: Vec<(&str, Option<&str>, &[Source], bool)> = list
            .iter()
            .map(|e| (e.address.as_str(), e.name.as_deref(), e.sources.as_slice(), e.unsubscribed))
            .collect();
        assert_eq!(
            summary,
            [
                ("list@example.org", Some("The list"), &[Source::Configured, Source::Member][..], false),
                ("desk@example.org", Some("Desk"), &[Source::Configured][..], false),
                ("centre@example.org", None, &[Source::Member, Source::Contact][..], false),
                ("indexer@example.org", None, &[Source::Contact][..], false),
                ("gone@example.org", None, &[Source::Contact][..], true),
            ]
        );
    }

    #[test]
    fn an_unsubscribed_configured_address_is_suppressed_too() {
        let unsubscribed: HashSet<String> = ["list@example.org".to_owned()].into();
        let list = effective(&["List@Example.org".to_owned()], &[], &[], &unsubscribed);
        assert!(list[0].unsubscribed);
    }

    #[test]
    fn addresses_are_parsed_with_or_without_a_display_name() {
        assert_eq!(parse_address(" a@example.org ").unwrap(), ("a@example.org".to_owned(), None));
        assert_eq!(
            parse_address("Centre A <a@example.org>").unwrap(),
            ("a@example.org".to_owned(), Some("Centre A".to_owned()))
        );
        for bad in ["", "not an address", "a@", "@example.org", "a@example.org\r\nBcc: x@example.org"] {
            assert!(parse_address(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.org", "a".repeat(300));
        assert!(parse_address(&long).is_err());
    }

    #[test]
    fn the_unsubscribe_page_asks_with_a_post_form_and_escapes_the_address() {
        let action = "/v1/announcements/unsubscribe?address=a%2Bb%40example.org&sig=xyz";
        let page = crate::pages::unsubscribe_html("<a+b@example.org>", action, false).expect("render");
        assert!(page.contains("&lt;a+b@example.org&gt;"), "{page}");
        assert!(!page.contains("<a+b@example.org>"));
        // minijinja escapes '/' too (`&#x2f;`), which a browser reads back as '/'.
        let form = r#"<form method="post" action="&#x2f;v1&#x2f;announcements&#x2f;unsubscribe?address=a%2Bb%40example.org&amp;sig=xyz">"#;
        assert!(page.contains(form), "{page}");
        assert!(page.contains(r#"name="List-Unsubscribe" value="One-Click""#));
        let done = crate::pages::unsubscribe_html("a@example.org", action, true).expect("render");
        assert!(!done.contains("<form"), "the confirmation has nothing left to press");
        assert!(done.contains("has left the announcement list"));
    }

    fn list_over(meta: &Arc<dyn MetaStore>, configured: &[&str], contacts: &[&str]) -> AnnounceList {
        let contacts: Vec<String> = contacts.iter().map(|c| (*c).to_owned()).collect();
        AnnounceList::new(
            Arc::clone(meta),
            configured.iter().map(|c| (*c).to_owned()).collect(),
            Arc::new(move || contacts.clone()),
            Arc::new(esgf_events_engine::ManualClock::new(1_000)),
        )
    }

    fn addresses(recipients: &[Recipient]) -> Vec<&str> {
        recipients.iter().map(|r| r.address.as_str()).collect()
    }

    #[tokio::test]
    async fn the_signing_key_is_generated_once_and_shared_by_every_list_over_the_same_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta: Arc<dyn MetaStore> =
            Arc::new(esgf_events_meta::RedbMetaStore::open(&dir.path().join("m.redb")).expect("meta"));
        let first = list_over(&meta, &[], &[]);
        let url = first.unsubscribe_url("https://e.example.org", "a@example.org").await.expect("url");
        let sig = url.rsplit_once("sig=").expect("sig").1.to_owned();
        let second = list_over(&meta, &[], &[]);
        second.verify("a@example.org", &sig).await.expect("the other node accepts the link");
        assert!(matches!(second.verify("b@example.org", &sig).await, Err(RecipientsError::BadSignature)));
    }

    #[tokio::test]
    async fn members_join_once_leave_by_api_and_unsubscribing_suppresses_any_source_until_added_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta: Arc<dyn MetaStore> =
            Arc::new(esgf_events_meta::RedbMetaStore::open(&dir.path().join("m.redb")).expect("meta"));
        let list = list_over(&meta, &["list@example.org"], &["indexer@example.org"]);
        let (_, created) = list.add("centre@example.org", Some("Centre".into())).await.expect("add");
        assert!(created);
        let (again, created) = list.add("CENTRE@example.org", None).await.expect("add again");
        assert!(!created, "a second add is idempotent");
        assert_eq!(again.name.as_deref(), Some("Centre"));
        assert!(matches!(list.add("nope", None).await, Err(RecipientsError::InvalidAddress(_))));
        assert_eq!(
            addresses(&list.recipients().await.expect("recipients")),
            ["list@example.org", "centre@example.org", "indexer@example.org"]
        );

        let key = list.key().await.expect("key").to_vec();
        for address in ["centre@example.org", "LIST@example.org"] {
            list.unsubscribe(address, &sign(&key, address)).await.expect("unsubscribe");
        }
        assert!(matches!(
            list.unsubscribe("indexer@example.org", "forged").await,
            Err(RecipientsError::BadSignature)
        ));
        assert_eq!(addresses(&list.recipients().await.expect("recipients")), ["indexer@example.org"]);
        let entries = list.entries().await.expect("entries");
        assert!(entries.iter().any(|e| e.address == "list@example.org" && e.unsubscribed));
        assert!(
            !entries.iter().any(|e| e.address == "centre@example.org"),
            "an unsubscribed member is no member any more"
        );

        list.add("list@example.org", None).await.expect("operator adds it back");
        assert_eq!(
            addresses(&list.recipients().await.expect("recipients")),
            ["list@example.org", "indexer@example.org"]
        );
        list.remove("List@Example.org").await.expect("remove");
        assert!(matches!(list.remove("list@example.org").await, Err(RecipientsError::NotMember(_))));
        assert_eq!(
            addresses(&list.recipients().await.expect("recipients")),
            ["list@example.org", "indexer@example.org"],
            "removing the member leaves the configured address"
        );
    }
}
