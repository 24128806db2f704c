//! [`Auth`]: the principals cache and every decision made from it.
//!
//! Reads (authentication, authorization, rate checks) touch only memory. Writes are serialised by one async
//! mutex and follow the same order every time: compute the new records from the cache, persist them in one
//! state-store transaction, then change the cache. A failed write therefore leaves both unchanged, and a
//! crash after the write loses nothing because the cache is rebuilt from the store at open.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use esgf_events_engine::{Clock, SystemClock};
use esgf_events_meta::{MetaError, MetaStore, Write};
use serde::{Deserialize, Serialize};

use crate::credential::{TokenHash, check_external_token, check_name, generate_token};
use crate::error::GroupAccessError;
use crate::error::{AdminError, AuthError, Denied, RateLimited};
use crate::model::{
    Action, AuditEntry, AuthConfig, AuthMethod, Bootstrap, CredentialInfo, Identity, OidcIdentity, Principal,
    PrincipalUpdate, RateSpec, Registration, Role, Secret, TOKEN_PREFIX,
};
use crate::oidc::{Oidc, looks_like_jwt};
use crate::rate::{AnonymousLimiter, PublishLimiter, check_spec};

const PRINCIPALS: &str = "principals";
const TOPIC_ACL: &str = "topic_acl";
/// Consumer group id -> the principal that owns it.
const GROUP_OWNERS: &str = "group_owners";
const MAX_GROUP_ID_BYTES: usize = 255;
const AUDIT: &str = "audit";

/// The operator's principal name.
const OPERATOR: &str = "operator";
/// Names that would be confusing as principals: the operator's, and how denials name unauthenticated callers.
const RESERVED_NAMES: [&str; 2] = [OPERATOR, "anonymous"];

const MAX_GRANTS: usize = 10_000;
const MAX_OIDC_IDENTITIES: usize = 32;
const MAX_CONTACT_CHARS: usize = 320;
const MAX_OIDC_FIELD_CHARS: usize = 1024;
const MAX_AUDIT_PAGE: usize = 1000;

#[derive(Clone, Serialize, Deserialize)]
struct StoredCredential {
    sha256: TokenHash,
    created: i64,
    expires: Option<i64>,
}

impl StoredCredential {
    fn new(hash: TokenHash, now: i64) -> StoredCredential {
        StoredCredential { sha256: hash, created: now, expires: None }
    }

    fn expired(&self, now: i64) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// A principal as stored (value of `principals/<name>`).
#[derive(Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    role: Role,
    topics: Vec<String>,
    rate: Option<RateSpec>,
    contact: Option<String>,
    oidc: Vec<OidcIdentity>,
    created: i64,
    credentials: Vec<StoredCredential>,
}

impl Record {
    fn view(&self, now: i64) -> Principal {
        Principal {
            name: self.name.clone(),
            role: self.role,
            topics: self.topics.clone(),
            rate: self.rate.clone(),
            contact: self.contact.clone(),
            oidc: self.oidc.clone(),
            created: self.created,
            credentials: self
                .credentials
                .iter()
                .filter(|c| !c.expired(now))
                .map(|c| CredentialInfo { id: c.sha256.id(), created: c.created, expires: c.expires })
                .collect(),
        }
    }

    /// The credential whose hash is `hash`. Every stored hash is compared, in constant time, whatever matches.
    fn credential(&self, hash: &TokenHash) -> Option<&StoredCredential> {
        let mut found = None;
        for credential in &self.credentials {
            if credential.sha256.ct_eq(hash) {
                found = Some(credential);
            }
        }
        found
    }
}

struct Entry {
    record: Record,
    limiter: Option<Arc<PublishLimiter>>,
}

/// The in-memory copy of the principals and topic flags, with the indexes authentication needs.
#[derive(Default)]
struct State {
    principals: BTreeMap<String, Entry>,
    by_hash: HashMap<TokenHash, String>,
    by_oidc: HashMap<OidcIdentity, String>,
    public_topics: HashSet<String>,
    group_owners: HashMap<String, String>,
}

impl State {
    fn put(&mut self, record: Record, now: i64) {
        let old_limiter = self.remove(&record.name);
        for credential in &record.credentials {
            self.by_hash.insert(credential.sha256, record.name.clone());
        }
        for identity in &record.oidc {
            self.by_oidc.insert(identity.clone(), record.name.clone());
        }
        // A limiter keeps its level across unrelated updates; a changed rate gets a fresh (full) one.
        let limiter = match (&record.rate, old_limiter) {
            (Some(rate), Some(old)) if old.spec() == rate => Some(old),
            (Some(rate), _) => Some(Arc::new(PublishLimiter::new(rate, now))),
            (None, _) => None,
        };
        self.principals.insert(record.name.clone(), Entry { record, limiter });
    }

    fn remove(&mut self, name: &str) -> Option<Arc<PublishLimiter>> {
        let entry = self.principals.remove(name)?;
        for credential in &entry.record.credentials {
            self.by_hash.remove(&credential.sha256);
        }
        for identity in &entry.record.oidc {
            self.by_oidc.remove(identity);
        }
        entry.limiter
    }

    fn record(&self, role: Role, name: &str) -> Result<&Record, AdminError> {
        match self.principals.get(name) {
            Some(entry) if entry.record.role == role => Ok(&entry.record),
            _ => Err(AdminError::NotFound(role.as_str(), name.to_owned())),
        }
    }

    /// The current record of an authenticated identity, if it still exists with the same role.
    fn current(&self, who: &Identity) -> Option<&Record> {
        self.principals.get(&who.name).map(|e| &e.record).filter(|r| r.role == who.role)
    }
}

enum Change {
    Put(Record),
    Delete(String),
}

impl Change {
    fn name(&self) -> &str {
        match self {
            Change::Put(record) => &record.name,
            Change::Delete(name) => name,
        }
    }
}

/// Access control for one service instance. `Send + Sync`; share it as `Arc<Auth>`.
pub struct Auth {
    meta: Arc<dyn MetaStore>,
    config: AuthConfig,
    clock: Arc<dyn Clock>,
    oidc: Oidc,
    anonymous: AnonymousLimiter,
    state: RwLock<State>,
    /// Serialises writes so each one computes its change from the state the previous one left.
    writer: tokio::sync::Mutex<()>,
}

impl Auth {
    /// The state-store collections this cache holds: what [`Auth::refresh`] acts on and a follower of other
    /// nodes' changes must watch.
    pub const CACHED_COLLECTIONS: [&'static str; 3] = [PRINCIPALS, TOPIC_ACL, GROUP_OWNERS];

    /// Loads principals and topic flags from `meta` and the OIDC issuers' keys.
    pub async fn open(meta: Arc<dyn MetaStore>, config: AuthConfig) -> Result<Auth, AdminError> {
        Auth::open_with_clock(meta, config, Arc::new(SystemClock)).await
    }

    /// [`Auth::open`] with the clock that decides credential and token expiry and drives publish rate limits.
    pub async fn open_with_clock(
        meta: Arc<dyn MetaStore>,
        config: AuthConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Auth, AdminError> {
        let anonymous = AnonymousLimiter::new(&config.anonymous_per_ip).map_err(AdminError::Invalid)?;
        let oidc = Oidc::open(&config.oidc, clock.clone()).await.map_err(AdminError::Invalid)?;
        let now = clock.now_ms();

        let mut state = State::default();
        load_all(meta.as_ref()).await?.apply(&mut state, now);
        tracing::info!(
            principals = state.principals.len(),
            public_topics = state.public_topics.len(),
            oidc_issuers = config.oidc.len(),
            "access control loaded"
        );
        Ok(Auth {
            meta,
            config,
            clock,
            oidc,
            anonymous,
            state: RwLock::new(state),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads one changed key of the state store into the cache, if it is one of access control's (other
    /// collections are ignored): how a change made by another service node on a shared store (a revocation,
    /// a rotation, a new grant, a topic made public, a claimed group) takes effect here.
    ///
    /// Serialised with this node's own writes, so it never puts back a value one of them just replaced.
    /// On error the cache is unchanged (and may be stale): retry, or [`Auth::reload`].
    pub async fn refresh(&self, collection: &str, key: &str) -> Result<(), AdminError> {
        let _writer = match collection {
            PRINCIPALS | TOPIC_ACL | GROUP_OWNERS => self.writer.lock().await,
            _ => return Ok(()),
        };
        let now = self.now();
        match collection {
            PRINCIPALS => match self.meta.get(PRINCIPALS, key).await? {
                Some(value) => {
                    let record = parse_principal(key, &value)?;
                    self.write().put(record, now);
                }
                None => {
                    self.write().remove(key);
                }
            },
            TOPIC_ACL => {
                let public = match self.meta.get(TOPIC_ACL, key).await? {
                    Some(value) => parse_acl(key, &value)?.public,
                    None => false,
                };
                let mut state = self.write();
                if public {
                    state.public_topics.insert(key.to_owned());
                } else {
                    state.public_topics.remove(key);
                }
            }
            _ => match self.meta.get(GROUP_OWNERS, key).await? {
                Some(value) => {
                    let owner = parse_owner(key, &value)?;
                    self.write().group_owners.insert(key.to_owned(), owner);
                }
                None => {
                    self.write().group_owners.remove(key);
                }
            },
        }
        tracing::debug!(collection, key, "access control refreshed a changed entry");
        Ok(())
    }

    /// Re-reads all principals, topic flags and group owners (after changes may have been missed). Rate
    /// limiters of principals whose rate is unchanged keep their level. On error the cache is unchanged.
    pub async fn reload(&self) -> Result<(), AdminError> {
        let _writer = self.writer.lock().await;
        let loaded = load_all(self.meta.as_ref()).await?;
        let now = self.now();
        let mut state = self.write();
        loaded.apply(&mut state, now);
        tracing::debug!(principals = state.principals.len(), "access control reloaded");
        Ok(())
    }

    /// First start: if `env_token` is Some it becomes the operator credential (replacing any stored one); else if
    /// no operator credential exists, create one and write it to `token_file` with mode 0600 (create_new; the
    /// parent directory must exist), returning `Created(path)`. Never logs the secret.
    pub async fn bootstrap_operator(
        &self,
        token_file: &Path,
        env_token: Option<&str>,
    ) -> Result<Bootstrap, AdminError> {
        let _writer = self.writer.lock().await;
        let now = self.now();
        let existing = self.read().principals.get(OPERATOR).map(|e| e.record.clone());
        let fresh = || Record {
            name: OPERATOR.to_owned(),
            role: Role::Operator,
            topics: Vec::new(),
            rate: None,
            contact: None,
            oidc: Vec::new(),
            created: now,
            credentials: Vec::new(),
        };

        if let Some(token) = env_token {
            check_external_token(token).map_err(AdminError::Invalid)?;
            let hash = TokenHash::of(token);
            if let Some(record) = &existing
                && record.credentials.len() == 1
                && record.credentials[0].sha256.ct_eq(&hash)
                && record.credentials[0].expires.is_none()
            {
                return Ok(Bootstrap::FromEnv);
            }
            let mut record = existing.unwrap_or_else(fresh);
            record.credentials = vec![StoredCredential::new(hash, now)];
            let result = self.commit(vec![Change::Put(record)]).await;
            tracing::info!(ok = result.is_ok(), "operator credential set from the environment");
            self.audit_system("operator.bootstrap", OPERATOR, "from environment", &result).await;
            result?;
            return Ok(Bootstrap::FromEnv);
        }

        if existing.as_ref().is_some_and(|r| r.credentials.iter().any(|c| !c.expired(now))) {
            return Ok(Bootstrap::Existing);
        }
        let secret = generate_token().map_err(rng_error)?;
        let path = token_file.to_path_buf();
        let written = write_token_file(path.clone(), secret).await;
        let result = match written {
            Ok(hash) => {
                let mut record = existing.unwrap_or_else(fresh);
                record.credentials = vec![StoredCredential::new(hash, now)];
                let committed = self.commit(vec![Change::Put(record)]).await;
                if committed.is_err() {
                    // A file whose token was never stored would only mislead; and it would block the next try.
                    let _ = tokio::fs::remove_file(&path).await;
                }
                committed
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => tracing::info!(path = %path.display(), "created the operator token file (mode 0600)"),
            Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot create the operator token"),
        }
        self.audit_system("operator.bootstrap", OPERATOR, "token file", &result).await;
        result?;
        Ok(Bootstrap::Created(path))
    }

    /// Authenticates an `Authorization: Bearer` value: an `esgfev_` token or an OIDC JWT.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.starts_with(TOKEN_PREFIX) {
            let hash = TokenHash::of(token);
            let state = self.read();
            let record = state
                .by_hash
                .get(&hash)
                .and_then(|name| state.principals.get(name))
                .map(|e| &e.record)
                .ok_or_else(|| AuthError::Invalid("unknown or revoked token".to_owned()))?;
            return self.check_credential(record, &hash, AuthMethod::Token);
        }
        if looks_like_jwt(token) {
            if self.oidc.is_empty() {
                return Err(AuthError::Invalid(
                    "JWTs are not accepted: no OIDC issuer is configured".to_owned(),
                ));
            }
            let verified = self.oidc.verify(token).await?;
            let identity = OidcIdentity { issuer: verified.issuer, subject: verified.subject };
            let state = self.read();
            let Some(entry) = state.by_oidc.get(&identity).and_then(|name| state.principals.get(name)) else {
                return Err(AuthError::Invalid(format!(
                    "no principal is registered for subject '{}' of issuer '{}'",
                    identity.subject.chars().take(100).collect::<String>(),
                    identity.issuer
                )));
            };
            return Ok(Identity {
                name: entry.record.name.clone(),
                role: entry.record.role,
                method: AuthMethod::Jwt,
            });
        }
        Err(AuthError::Invalid(format!("the bearer token is neither an {TOKEN_PREFIX} token nor a JWT")))
    }

    /// Authenticates a name and secret (Kafka SASL PLAIN): the secret is one of the principal's tokens.
    pub async fn authenticate_password(&self, name: &str, secret: &str) -> Result<Identity, AuthError> {
        if name.is_empty() || secret.is_empty() {
            return Err(AuthError::Missing);
        }
        let hash = TokenHash::of(secret);
        let state = self.read();
        // One message for "no such principal" and "wrong secret": which names exist is not the caller's business.
        let wrong = || AuthError::Invalid("unknown principal or wrong secret".to_owned());
        let record = state.principals.get(name).map(|e| &e.record).ok_or_else(wrong)?;
        self.check_credential(record, &hash, AuthMethod::Password)
    }

    fn check_credential(
        &self,
        record: &Record,
        hash: &TokenHash,
        method: AuthMethod,
    ) -> Result<Identity, AuthError> {
        let credential = record
            .credential(hash)
            .ok_or_else(|| AuthError::Invalid("unknown principal or wrong secret".to_owned()))?;
        if credential.expired(self.now()) {
            tracing::debug!(principal = %record.name, "refused an expired credential");
            return Err(AuthError::Expired);
        }
        Ok(Identity { name: record.name.clone(), role: record.role, method })
    }

    /// Decides whether `who` (None: anonymous) may do `action`.
    ///
    /// Anonymous: read public topics only. Operator: everything. Producer: publish to granted topics (and read
    /// only public ones: least privilege). Consumer: read granted or public topics. Managing topics and
    /// principals and reading the audit log: operators only. Grants are looked up now, so changes and
    /// revocations apply to identities authenticated earlier.
    pub fn authorize(&self, who: Option<&Identity>, action: Action<'_>) -> Result<(), Denied> {
        let state = self.read();
        let deny = |missing: String| Denied {
            principal: who.map_or_else(|| "anonymous".to_owned(), |w| w.name.clone()),
            action: action.to_string(),
            missing,
        };
        let Some(who) = who else {
            return match action {
                Action::Read { topic } if state.public_topics.contains(topic) => Ok(()),
                Action::Read { topic } => {
                    Err(deny(format!("a read grant on topic '{topic}' (it is not public)")))
                }
                Action::Publish { topic } => Err(deny(format!("a publish grant on topic '{topic}'"))),
                _ => Err(deny("the operator role".to_owned())),
            };
        };
        let Some(record) = state.current(who) else {
            return Err(deny(format!("a current registration as {} (it was revoked)", who.role)));
        };
        let granted = |topic: &str| record.topics.binary_search_by(|t| t.as_str().cmp(topic)).is_ok();
        match (record.role, action) {
            (Role::Operator, _) => Ok(()),
            (Role::Producer, Action::Publish { topic }) if granted(topic) => Ok(()),
            (Role::Producer | Role::Consumer, Action::Read { topic })
                if state.public_topics.contains(topic) =>
            {
                Ok(())
            }
            (Role::Consumer, Action::Read { topic }) if granted(topic) => Ok(()),
            (_, Action::Publish { topic }) => Err(deny(format!("a publish grant on topic '{topic}'"))),
            (_, Action::Read { topic }) => Err(deny(format!("a read grant on topic '{topic}'"))),
            (_, Action::ManageTopics | Action::ManagePrincipals | Action::ReadAudit) => {
                Err(deny("the operator role".to_owned()))
            }
        }
    }

    /// Charges a batch of `events` totalling `bytes` to `who`'s publish rate, all or nothing. Operators and
    /// principals without a rate are not limited.
    pub fn check_publish_rate(&self, who: &Identity, events: u32, bytes: u64) -> Result<(), RateLimited> {
        if who.role == Role::Operator {
            return Ok(());
        }
        let limiter = self.read().principals.get(&who.name).and_then(|e| e.limiter.clone());
        match limiter {
            Some(limiter) => limiter.check(events, bytes, self.now()),
            None => Ok(()),
        }
    }

    /// Charges one unauthenticated request to its source address.
    pub fn check_anonymous_rate(&self, ip: IpAddr) -> Result<(), RateLimited> {
        self.anonymous.check(ip)
    }

    /// Registers a producer or consumer and returns its first secret (shown once).
    pub async fn register(
        &self,
        role: Role,
        reg: Registration,
        actor: &Identity,
    ) -> Result<(Principal, Secret), AdminError> {
        let target = reg.name.chars().take(100).collect::<String>();
        let result = self.register_inner(role, reg).await;
        self.audit_admin(actor, role, "register", &target, &result).await;
        result
    }

    async fn register_inner(&self, role: Role, reg: Registration) -> Result<(Principal, Secret), AdminError> {
        if role == Role::Operator {
            return Err(AdminError::Invalid("only producers and consumers can be registered".to_owned()));
        }
        check_name(&reg.name).map_err(AdminError::Invalid)?;
        if RESERVED_NAMES.contains(&reg.name.as_str()) {
            return Err(AdminError::Invalid(format!("the name '{}' is reserved", reg.name)));
        }
        let topics = clean_topics(reg.topics)?;
        if let Some(rate) = &reg.rate {
            check_spec(rate).map_err(AdminError::Invalid)?;
        }
        let contact = clean_contact(reg.contact)?;
        let oidc = clean_oidc(reg.oidc)?;

        let _writer = self.writer.lock().await;
        let now = self.now();
        {
            let state = self.read();
            if let Some(existing) = state.principals.get(&reg.name) {
                return Err(AdminError::Exists(existing.record.role.as_str(), reg.name));
            }
            check_oidc_free(&state, &oidc, &reg.name)?;
        }
        let secret = generate_token().map_err(rng_error)?;
        let record = Record {
            name: reg.name,
            role,
            topics,
            rate: reg.rate,
            contact,
            oidc,
            created: now,
            credentials: vec![StoredCredential::new(TokenHash::of(secret.expose()), now)],
        };
        let view = record.view(now);
        self.commit(vec![Change::Put(record)]).await?;
        Ok((view, secret))
    }

    /// Principals of one role, sorted by name.
    pub fn list(&self, role: Role) -> Vec<Principal> {
        let now = self.now();
        self.read()
            .principals
            .values()
            .filter(|e| e.record.role == role)
            .map(|e| e.record.view(now))
            .collect()
    }

    pub fn get(&self, role: Role, name: &str) -> Option<Principal> {
        let now = self.now();
        self.read().record(role, name).ok().map(|r| r.view(now))
    }

    /// Changes grants, rate, contact or OIDC identities. A changed rate starts a fresh limiter.
    pub async fn update(
        &self,
        role: Role,
        name: &str,
        update: PrincipalUpdate,
        actor: &Identity,
    ) -> Result<Principal, AdminError> {
        let result = self.update_inner(role, name, update).await;
        self.audit_admin(actor, role, "update", name, &result).await;
        result
    }

    async fn update_inner(
        &self,
        role: Role,
        name: &str,
        update: PrincipalUpdate,
    ) -> Result<Principal, AdminError> {
        let topics = update.topics.map(clean_topics).transpose()?;
        if let Some(Some(rate)) = &update.rate {
            check_spec(rate).map_err(AdminError::Invalid)?;
        }
        let contact = update.contact.map(clean_contact).transpose()?;
        let oidc = update.oidc.map(clean_oidc).transpose()?;

        let _writer = self.writer.lock().await;
        let now = self.now();
        let mut record = {
            let state = self.read();
            let record = state.record(role, name)?.clone();
            if let Some(oidc) = &oidc {
                check_oidc_free(&state, oidc, name)?;
            }
            record
        };
        if role == Role::Operator && (topics.is_some() || update.rate.is_some()) {
            return Err(AdminError::Invalid("the operator has no topic grants or rate to change".to_owned()));
        }
        if let Some(topics) = topics {
            record.topics = topics;
        }
        if let Some(rate) = update.rate {
            record.rate = rate;
        }
        if let Some(contact) = contact {
            record.contact = contact;
        }
        if let Some(oidc) = oidc {
            record.oidc = oidc;
        }
        let view = record.view(now);
        self.commit(vec![Change::Put(record)]).await?;
        Ok(view)
    }

    /// Issues a new secret. The old ones keep working for `rotation_grace` (0: they stop at once).
    pub async fn rotate(
        &self,
        role: Role,
        name: &str,
        actor: &Identity,
    ) -> Result<(Principal, Secret), AdminError> {
        let result = self.rotate_inner(role, name).await;
        self.audit_admin(actor, role, "rotate", name, &result).await;
        result
    }

    async fn rotate_inner(&self, role: Role, name: &str) -> Result<(Principal, Secret), AdminError> {
        let _writer = self.writer.lock().await;
        let now = self.now();
        let mut record = self.read().record(role, name)?.clone();
        let grace_ms = i64::try_from(self.config.rotation_grace.as_millis()).unwrap_or(i64::MAX);
        if grace_ms == 0 {
            record.credentials.clear();
        } else {
            let until = now.saturating_add(grace_ms);
            for credential in &mut record.credentials {
                credential.expires = Some(credential.expires.map_or(until, |e| e.min(until)));
            }
        }
        let secret = generate_token().map_err(rng_error)?;
        record.credentials.push(StoredCredential::new(TokenHash::of(secret.expose()), now));
        let view = record.view(now);
        self.commit(vec![Change::Put(record)]).await?;
        Ok((view, secret))
    }

    /// Deletes a producer or consumer; its credentials stop working at once.
    pub async fn revoke(&self, role: Role, name: &str, actor: &Identity) -> Result<(), AdminError> {
        let result = self.revoke_inner(role, name).await;
        self.audit_admin(actor, role, "revoke", name, &result).await;
        result
    }

    async fn revoke_inner(&self, role: Role, name: &str) -> Result<(), AdminError> {
        if role == Role::Operator {
            return Err(AdminError::Invalid(
                "the operator cannot be revoked; rotate its token or set one from the environment".to_owned(),
            ));
        }
        let _writer = self.writer.lock().await;
        self.read().record(role, name)?;
        self.commit(vec![Change::Delete(name.to_owned())]).await
    }

    /// Makes a topic readable without authentication, or stops that.
    pub async fn set_topic_public(
        &self,
        topic: &str,
        public: bool,
        actor: &Identity,
    ) -> Result<(), AdminError> {
        let result = self.set_topic_public_inner(topic, public).await;
        let action = if public { "topic.public" } else { "topic.private" };
        let target = topic.chars().take(260).collect::<String>();
        self.record(AuditEntry {
            seq: 0,
            time: self.now(),
            actor: Some(actor.name.clone()),
            action: action.to_owned(),
            target: Some(target),
            remote: None,
            outcome: outcome(&result),
        })
        .await;
        result
    }

    async fn set_topic_public_inner(&self, topic: &str, public: bool) -> Result<(), AdminError> {
        check_topic(topic)?;
        let _writer = self.writer.lock().await;
        // Private is the default, so it is stored as the absence of a flag.
        let value = if public { Some(json_bytes(&TopicAcl { public: true }, "topic ACL")?) } else { None };
        self.meta.write(vec![Write { collection: TOPIC_ACL, key: topic.to_owned(), value }]).await?;
        let mut state = self.write();
        if public {
            state.public_topics.insert(topic.to_owned());
        } else {
            state.public_topics.remove(topic);
        }
        Ok(())
    }

    /// May `who` use consumer group `group` (join it, commit or fetch its offsets)?
    ///
    /// A group belongs to the principal that first uses it, so one consumer cannot move another's position,
    /// while existing clients keep whatever group ids they already use. Operators may use any group and never
    /// claim one. The claim is durable before this returns.
    pub async fn claim_group(&self, who: &Identity, group: &str) -> Result<(), GroupAccessError> {
        if group.is_empty() || group.len() > MAX_GROUP_ID_BYTES || group.contains('\0') {
            return Err(AdminError::Invalid(format!(
                "a consumer group id is 1 to {MAX_GROUP_ID_BYTES} bytes without NUL characters"
            ))
            .into());
        }
        if who.role == Role::Operator {
            return Ok(());
        }
        let denied = |owner: &str| Denied {
            principal: who.name.clone(),
            action: format!("use consumer group '{group}'"),
            missing: format!("ownership of the group: it belongs to '{owner}'"),
        };
        match self.read().group_owners.get(group) {
            Some(owner) if owner == &who.name => return Ok(()),
            Some(owner) => return Err(denied(owner).into()),
            None => {}
        }
        let _writer = self.writer.lock().await;
        let claimed = self
            .meta
            .compare_and_set(GROUP_OWNERS, group, None, Some(Bytes::copy_from_slice(who.name.as_bytes())))
            .await
            .map_err(AdminError::from)?;
        if !claimed {
            let owner = self.meta.get(GROUP_OWNERS, group).await.map_err(AdminError::from)?;
            let owner = owner.map(|o| String::from_utf8_lossy(&o).into_owned()).unwrap_or_default();
            if owner == who.name {
                self.write().group_owners.insert(group.to_owned(), owner);
                return Ok(());
            }
            return Err(denied(&owner).into());
        }
        self.write().group_owners.insert(group.to_owned(), who.name.clone());
        tracing::info!(group, owner = %who.name, "consumer group claimed");
        Ok(())
    }

    pub fn is_topic_public(&self, topic: &str) -> bool {
        self.read().public_topics.contains(topic)
    }

    /// Appends to the audit log. Best effort: a store failure is logged, not returned, so auditing never turns a
    /// served request into a failed one.
    pub async fn record(&self, entry: AuditEntry) {
        let mut entry = entry;
        entry.seq = 0;
        if entry.time == 0 {
            entry.time = self.now();
        }
        tracing::info!(
            actor = entry.actor.as_deref().unwrap_or("-"),
            action = %entry.action,
            target = entry.target.as_deref().unwrap_or("-"),
            remote = entry.remote.as_deref().unwrap_or("-"),
            outcome = %entry.outcome,
            "audit"
        );
        let stored = match json_bytes(&entry, "audit entry") {
            Ok(bytes) => self.meta.append(AUDIT, bytes).await.map(|_| ()).map_err(AdminError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            tracing::error!(error = %e, action = %entry.action, "cannot write an audit entry");
        }
    }

    /// Audit entries with `seq > after`, oldest first, at most `limit` (capped at 1000).
    pub async fn audit_log(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, AdminError> {
        let rows = self.meta.read_log(AUDIT, after, limit.min(MAX_AUDIT_PAGE)).await?;
        rows.into_iter()
            .map(|(seq, bytes)| {
                let mut entry: AuditEntry = serde_json::from_slice(&bytes)
                    .map_err(|e| corrupt("audit entry", &seq.to_string(), &e))?;
                entry.seq = seq;
                Ok(entry)
            })
            .collect()
    }

    /// Persists `changes` in one transaction, together with the pruning of every credential that has expired,
    /// then applies them to the cache.
    async fn commit(&self, mut changes: Vec<Change>) -> Result<(), AdminError> {
        let now = self.now();
        {
            let state = self.read();
            for entry in state.principals.values() {
                if entry.record.credentials.iter().any(|c| c.expired(now))
                    && !changes.iter().any(|c| c.name() == entry.record.name)
                {
                    changes.push(Change::Put(entry.record.clone()));
                }
            }
        }
        let mut writes = Vec::with_capacity(changes.len());
        for change in &mut changes {
            let value = match change {
                Change::Put(record) => {
                    record.credentials.retain(|c| !c.expired(now));
                    Some(json_bytes(record, "principal")?)
                }
                Change::Delete(_) => None,
            };
            writes.push(Write { collection: PRINCIPALS, key: change.name().to_owned(), value });
        }
        self.meta.write(writes).await?;
        let mut state = self.write();
        for change in changes {
            match change {
                Change::Put(record) => state.put(record, now),
                Change::Delete(name) => {
                    state.remove(&name);
                }
            }
        }
        Ok(())
    }

    async fn audit_admin<T>(
        &self,
        actor: &Identity,
        role: Role,
        verb: &str,
        target: &str,
        result: &Result<T, AdminError>,
    ) {
        self.record(AuditEntry {
            seq: 0,
            time: self.now(),
            actor: Some(actor.name.clone()),
            action: format!("{role}.{verb}"),
            target: Some(target.chars().take(100).collect()),
            remote: None,
            outcome: outcome(result),
        })
        .await;
    }

    /// Entries of changes the service makes itself (no acting principal).
    async fn audit_system(&self, action: &str, target: &str, how: &str, result: &Result<(), AdminError>) {
        let outcome = match result {
            Ok(()) => format!("ok ({how})"),
            Err(e) => format!("failed: {e}"),
        };
        self.record(AuditEntry {
            seq: 0,
            time: self.now(),
            actor: None,
            action: action.to_owned(),
            target: Some(target.to_owned()),
            remote: None,
            outcome,
        })
        .await;
    }
}

#[derive(Serialize, Deserialize)]
struct TopicAcl {
    public: bool,
}

/// Everything access control keeps in the state store, as read by [`load_all`].
struct Loaded {
    principals: Vec<Record>,
    public_topics: HashSet<String>,
    group_owners: HashMap<String, String>,
}

impl Loaded {
    /// Makes `state` hold exactly what was loaded. Principals are put one by one (not swapped wholesale)
    /// so each keeps its rate limiter's level when its rate is unchanged.
    fn apply(self, state: &mut State, now: i64) {
        let names: HashSet<&str> = self.principals.iter().map(|r| r.name.as_str()).collect();
        let gone: Vec<String> =
            state.principals.keys().filter(|name| !names.contains(name.as_str())).cloned().collect();
        for name in gone {
            state.remove(&name);
        }
        for record in self.principals {
            state.put(record, now);
        }
        state.public_topics = self.public_topics;
        state.group_owners = self.group_owners;
    }
}

async fn load_all(meta: &dyn MetaStore) -> Result<Loaded, AdminError> {
    let mut principals = Vec::new();
    for (key, value) in meta.scan(PRINCIPALS, "").await? {
        principals.push(parse_principal(&key, &value)?);
    }
    let mut public_topics = HashSet::new();
    for (topic, value) in meta.scan(TOPIC_ACL, "").await? {
        if parse_acl(&topic, &value)?.public {
            public_topics.insert(topic);
        }
    }
    let mut group_owners = HashMap::new();
    for (group, owner) in meta.scan(GROUP_OWNERS, "").await? {
        let owner = parse_owner(&group, &owner)?;
        group_owners.insert(group, owner);
    }
    Ok(Loaded { principals, public_topics, group_owners })
}

fn parse_principal(key: &str, value: &[u8]) -> Result<Record, AdminError> {
    let record: Record = serde_json::from_slice(value).map_err(|e| corrupt("principal", key, &e))?;
    if record.name != key {
        return Err(corrupt("principal", key, &"its name does not match its key"));
    }
    Ok(record)
}

fn parse_acl(topic: &str, value: &[u8]) -> Result<TopicAcl, AdminError> {
    serde_json::from_slice(value).map_err(|e| corrupt("topic ACL", topic, &e))
}

fn parse_owner(group: &str, value: &[u8]) -> Result<String, AdminError> {
    String::from_utf8(value.to_vec()).map_err(|e| corrupt("group owner", group, &e))
}

fn outcome<T>(result: &Result<T, AdminError>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("failed: {e}"),
    }
}

fn json_bytes<T: Serialize>(value: &T, what: &'static str) -> Result<Bytes, AdminError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| AdminError::Meta(MetaError::Storage { context: what, detail: e.to_string() }))
}

fn corrupt(what: &str, key: &str, detail: &dyn std::fmt::Display) -> AdminError {
    AdminError::Meta(MetaError::Storage {
        context: "loading access-control state",
        detail: format!("stored {what} '{key}' is unreadable: {detail}"),
    })
}

/// The OS RNG failing is a fault of the host, not of the request; it surfaces as a server-side error.
fn rng_error(e: getrandom::Error) -> AdminError {
    AdminError::Meta(MetaError::Storage { context: "generating a credential", detail: e.to_string() })
}

/// Writes a fresh token to `path` (create_new, mode 0600, fsync'd) and returns its hash. The secret is dropped
/// here: the file is the only place it lives.
async fn write_token_file(path: PathBuf, secret: Secret) -> Result<TokenHash, AdminError> {
    let hash = TokenHash::of(secret.expose());
    let display = path.display().to_string();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path)?;
        // No trailing newline: whatever reads the file gets exactly the token.
        file.write_all(secret.expose().as_bytes())?;
        file.sync_all()?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(|e| AdminError::Invalid(format!("writing the operator token file {display}: {e}")))?
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            AdminError::Invalid(format!(
                "the operator token file {display} exists but no operator credential is stored; \
                 remove the file or set the operator token in the environment"
            ))
        } else {
            AdminError::Invalid(format!("cannot write the operator token file {display}: {e}"))
        }
    })?;
    Ok(hash)
}

/// Topic names as the log engine accepts them: `[A-Za-z0-9._-]{1,249}`, not "." or "..".
fn check_topic(topic: &str) -> Result<(), AdminError> {
    esgf_events_engine::validate_topic_name(topic).map_err(|e| AdminError::Invalid(e.to_string()))
}

fn clean_topics(mut topics: Vec<String>) -> Result<Vec<String>, AdminError> {
    if topics.len() > MAX_GRANTS {
        return Err(AdminError::Invalid(format!("at most {MAX_GRANTS} topic grants")));
    }
    for topic in &topics {
        check_topic(topic)?;
    }
    // Sorted so grants can be binary-searched and listed in a stable order.
    topics.sort_unstable();
    topics.dedup();
    Ok(topics)
}

fn clean_contact(contact: Option<String>) -> Result<Option<String>, AdminError> {
    match contact {
        Some(c) if c.chars().count() > MAX_CONTACT_CHARS || c.chars().any(char::is_control) => {
            Err(AdminError::Invalid(format!(
                "contact must be at most {MAX_CONTACT_CHARS} characters, without control characters"
            )))
        }
        Some(c) if c.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn clean_oidc(mut identities: Vec<OidcIdentity>) -> Result<Vec<OidcIdentity>, AdminError> {
    if identities.len() > MAX_OIDC_IDENTITIES {
        return Err(AdminError::Invalid(format!("at most {MAX_OIDC_IDENTITIES} OIDC identities")));
    }
    for identity in &identities {
        for (field, value) in [("issuer", &identity.issuer), ("subject", &identity.subject)] {
            if value.is_empty()
                || value.chars().count() > MAX_OIDC_FIELD_CHARS
                || value.chars().any(char::is_control)
            {
                return Err(AdminError::Invalid(format!(
                    "oidc {field} must be 1 to {MAX_OIDC_FIELD_CHARS} characters, without control characters"
                )));
            }
        }
    }
    identities.sort_by(|a, b| (&a.issuer, &a.subject).cmp(&(&b.issuer, &b.subject)));
    identities.dedup();
    Ok(identities)
}

/// An OIDC identity maps to one principal only, or a token would be ambiguous.
fn check_oidc_free(state: &State, identities: &[OidcIdentity], owner: &str) -> Result<(), AdminError> {
    for identity in identities {
        if state.by_oidc.get(identity).is_some_and(|name| name != owner) {
            return Err(AdminError::Exists(
                "OIDC identity",
                format!("{} at {}", identity.subject, identity.issuer),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
