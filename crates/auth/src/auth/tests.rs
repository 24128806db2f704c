//! Behaviour of [`Auth`] against the real redb state store in a temporary directory.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esgf_events_engine::ManualClock;
use esgf_events_meta::{MetaStore, RedbMetaStore};
use serde_json::json;

use super::*;
use crate::model::{JwksSource, OidcIssuerConfig};
use crate::oidc::testing::{TestKey, es256, jwks, rs256, sign};

const T0: i64 = 1_800_000_000_000;
const ISS: &str = "https://idp.example.org/realms/esgf";
const AUD: &str = "esgf-events";
const TOPIC: &str = "esgf2.publications";

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    meta: Arc<RedbMetaStore>,
    auth: Auth,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with(AuthConfig::default()).await
    }

    async fn with(config: AuthConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let (meta, auth) = open(dir.path(), clock.clone(), config).await;
        Fixture { dir, clock, meta, auth }
    }

    async fn register(&self, role: Role, name: &str, topics: &[&str]) -> Secret {
        let reg = registration(name, topics);
        self.auth.register(role, reg, &operator()).await.unwrap().1
    }

    async fn stored_credentials(&self, name: &str) -> usize {
        let bytes = self.meta.get(PRINCIPALS, name).await.unwrap().unwrap();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        value["credentials"].as_array().unwrap().len()
    }
}

async fn open(dir: &Path, clock: Arc<ManualClock>, config: AuthConfig) -> (Arc<RedbMetaStore>, Auth) {
    let meta = Arc::new(RedbMetaStore::open(&dir.join("state.redb")).unwrap());
    let auth = Auth::open_with_clock(meta.clone(), config, clock).await.unwrap();
    (meta, auth)
}

fn operator() -> Identity {
    Identity { name: OPERATOR.to_owned(), role: Role::Operator, method: AuthMethod::Token }
}

fn registration(name: &str, topics: &[&str]) -> Registration {
    Registration {
        name: name.to_owned(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        rate: None,
        contact: None,
        oidc: Vec::new(),
    }
}

fn rate(events_per_second: u32, burst: u32, bytes: Option<(u64, u64)>) -> RateSpec {
    RateSpec {
        events_per_second,
        burst,
        bytes_per_second: bytes.map(|b| b.0),
        burst_bytes: bytes.map(|b| b.1),
    }
}

// ----- registration, listing, updates -----

#[tokio::test]
async fn registered_producer_is_listed_and_authenticates() {
    let f = Fixture::new().await;
    let mut reg = registration("llnl-publisher", &["b.topic", "a.topic", "b.topic"]);
    reg.contact = Some("esgf@llnl.gov".to_owned());
    let (principal, secret) = f.auth.register(Role::Producer, reg, &operator()).await.unwrap();

    assert!(secret.expose().starts_with(TOKEN_PREFIX));
    assert_eq!(secret.expose().len(), 50);
    assert_eq!(principal.name, "llnl-publisher");
    assert_eq!(principal.role, Role::Producer);
    assert_eq!(principal.topics, vec!["a.topic", "b.topic"]);
    assert_eq!(principal.created, T0);
    assert_eq!(principal.credentials.len(), 1);
    assert_eq!(principal.credentials[0].id.len(), 8);
    assert_eq!(principal.credentials[0].expires, None);

    assert_eq!(f.auth.list(Role::Producer), vec![principal.clone()]);
    assert!(f.auth.list(Role::Consumer).is_empty());
    assert_eq!(f.auth.get(Role::Producer, "llnl-publisher"), Some(principal));
    assert_eq!(f.auth.get(Role::Consumer, "llnl-publisher"), None);

    let who = f.auth.authenticate_bearer(secret.expose()).await.unwrap();
    assert_eq!(
        who,
        Identity { name: "llnl-publisher".to_owned(), role: Role::Producer, method: AuthMethod::Token }
    );
    let who = f.auth.authenticate_password("llnl-publisher", secret.expose()).await.unwrap();
    assert_eq!(who.method, AuthMethod::Password);
}

#[tokio::test]
async fn list_is_sorted_by_name() {
    let f = Fixture::new().await;
    for name in ["zeta", "alpha", "mid"] {
        f.register(Role::Consumer, name, &[]).await;
    }
    let names: Vec<String> = f.auth.list(Role::Consumer).into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["alpha", "mid", "zeta"]);
}

#[tokio::test]
async fn update_changes_only_the_given_fields() {
    let f = Fixture::new().await;
    let mut reg = registration("c1", &["t1"]);
    reg.contact = Some("ops@example.org".to_owned());
    f.auth.register(Role::Consumer, reg, &operator()).await.unwrap();

    let update = PrincipalUpdate { topics: Some(vec!["t3".into(), "t2".into()]), ..Default::default() };
    let p = f.auth.update(Role::Consumer, "c1", update, &operator()).await.unwrap();
    assert_eq!(p.topics, ["t2", "t3"]);
    assert_eq!(p.contact.as_deref(), Some("ops@example.org"));

    let update: PrincipalUpdate =
        serde_json::from_value(json!({"contact": null, "rate": {"events_per_second": 5, "burst": 10}}))
            .unwrap();
    let p = f.auth.update(Role::Consumer, "c1", update, &operator()).await.unwrap();
    assert_eq!(p.contact, None);
    assert_eq!(p.rate, Some(rate(5, 10, None)));
    assert_eq!(p.topics, ["t2", "t3"]);
    assert_eq!(f.auth.get(Role::Consumer, "c1"), Some(p));
}

#[tokio::test]
async fn update_of_unknown_or_wrong_role_is_not_found() {
    let f = Fixture::new().await;
    f.register(Role::Producer, "p1", &[]).await;
    let err = f.auth.update(Role::Consumer, "p1", PrincipalUpdate::default(), &operator()).await.unwrap_err();
    assert!(matches!(err, AdminError::NotFound("consumer", ref n) if n == "p1"), "{err}");
    let err =
        f.auth.update(Role::Producer, "ghost", PrincipalUpdate::default(), &operator()).await.unwrap_err();
    assert!(matches!(err, AdminError::NotFound("producer", _)), "{err}");
}

#[tokio::test]
async fn invalid_registrations_are_refused_and_store_nothing() {
    let f = Fixture::new().await;
    let cases: Vec<(Role, Registration)> = vec![
        (Role::Producer, registration("Bad-Name", &[])),
        (Role::Producer, registration("operator", &[])),
        (Role::Producer, registration("anonymous", &[])),
        (Role::Operator, registration("second-operator", &[])),
        (Role::Producer, registration("p", &["bad topic"])),
        (Role::Producer, Registration { rate: Some(rate(0, 1, None)), ..registration("p", &[]) }),
        (Role::Producer, Registration { contact: Some("a\nb".into()), ..registration("p", &[]) }),
        (
            Role::Producer,
            Registration {
                oidc: vec![OidcIdentity { issuer: String::new(), subject: "x".into() }],
                ..registration("p", &[])
            },
        ),
    ];
    for (role, reg) in cases {
        let name = reg.name.clone();
        let err = f.auth.register(role, reg, &operator()).await.unwrap_err();
        assert!(matches!(err, AdminError::Invalid(_)), "{name}: {err}");
    }
    assert!(f.meta.scan(PRINCIPALS, "").await.unwrap().is_empty());
}

#[tokio::test]
async fn names_are_unique_across_producers_and_consumers() {
    let f = Fixture::new().await;
    f.register(Role::Producer, "shared", &[]).await;
    let err = f.auth.register(Role::Consumer, registration("shared", &[]), &operator()).await.unwrap_err();
    assert!(matches!(err, AdminError::Exists("producer", ref n) if n == "shared"), "{err}");
    let err = f.auth.register(Role::Producer, registration("shared", &[]), &operator()).await.unwrap_err();
    assert!(matches!(err, AdminError::Exists("producer", _)), "{err}");
    assert_eq!(err.to_string(), "producer 'shared' already exists");
}

#[tokio::test]
async fn an_oidc_identity_belongs_to_one_principal() {
    let f = Fixture::new().await;
    let alice = OidcIdentity { issuer: ISS.into(), subject: "alice".into() };
    let reg = Registration { oidc: vec![alice.clone()], ..registration("c1", &[]) };
    f.auth.register(Role::Consumer, reg, &operator()).await.unwrap();
    let reg = Registration { oidc: vec![alice.clone()], ..registration("c2", &[]) };
    let err = f.auth.register(Role::Consumer, reg, &operator()).await.unwrap_err();
    assert!(matches!(err, AdminError::Exists("OIDC identity", _)), "{err}");
    // Re-stating one's own identity in an update is fine.
    let update = PrincipalUpdate { oidc: Some(vec![alice]), ..Default::default() };
    f.auth.update(Role::Consumer, "c1", update, &operator()).await.unwrap();
}

// ----- rotation and revocation -----

#[tokio::test]
async fn rotation_without_grace_stops_the_old_secret_at_once() {
    let f = Fixture::new().await;
    let old = f.register(Role::Producer, "p1", &[]).await;
    let (principal, new) = f.auth.rotate(Role::Producer, "p1", &operator()).await.unwrap();
    assert_eq!(principal.credentials.len(), 1);
    assert_ne!(old.expose(), new.expose());
    assert!(matches!(f.auth.authenticate_bearer(old.expose()).await, Err(AuthError::Invalid(_))));
    assert!(matches!(f.auth.authenticate_password("p1", old.expose()).await, Err(AuthError::Invalid(_))));
    f.auth.authenticate_bearer(new.expose()).await.unwrap();
    assert_eq!(f.stored_credentials("p1").await, 1);
}

#[tokio::test]
async fn rotation_with_grace_keeps_the_old_secret_until_it_expires_then_prunes_it() {
    let config = AuthConfig { rotation_grace: Duration::from_secs(3600), ..AuthConfig::default() };
    let f = Fixture::with(config).await;
    let old = f.register(Role::Consumer, "c1", &[]).await;
    f.clock.advance_ms(1000);
    let (principal, new) = f.auth.rotate(Role::Consumer, "c1", &operator()).await.unwrap();
    assert_eq!(principal.credentials.len(), 2);
    let expires = T0 + 1000 + 3_600_000;
    assert_eq!(principal.credentials.iter().filter(|c| c.expires == Some(expires)).count(), 1);

    // During the grace period both work.
    f.clock.advance_ms(3_599_999);
    f.auth.authenticate_bearer(old.expose()).await.unwrap();
    f.auth.authenticate_bearer(new.expose()).await.unwrap();

    // At the end of it the old one is refused as expired, by either method.
    f.clock.advance_ms(1);
    assert!(matches!(f.auth.authenticate_bearer(old.expose()).await, Err(AuthError::Expired)));
    assert!(matches!(f.auth.authenticate_password("c1", old.expose()).await, Err(AuthError::Expired)));
    f.auth.authenticate_bearer(new.expose()).await.unwrap();
    assert_eq!(f.auth.get(Role::Consumer, "c1").unwrap().credentials.len(), 1);
    assert_eq!(f.stored_credentials("c1").await, 2);

    // The next write, even about someone else, prunes it from the store.
    f.register(Role::Consumer, "c2", &[]).await;
    assert_eq!(f.stored_credentials("c1").await, 1);
    assert!(matches!(f.auth.authenticate_bearer(old.expose()).await, Err(AuthError::Invalid(_))));
}

#[tokio::test]
async fn second_rotation_does_not_extend_an_earlier_grace() {
    let config = AuthConfig { rotation_grace: Duration::from_secs(60), ..AuthConfig::default() };
    let f = Fixture::with(config).await;
    let first = f.register(Role::Producer, "p1", &[]).await;
    f.auth.rotate(Role::Producer, "p1", &operator()).await.unwrap();
    f.clock.advance_ms(30_000);
    f.auth.rotate(Role::Producer, "p1", &operator()).await.unwrap();
    f.clock.advance_ms(30_000);
    assert!(matches!(f.auth.authenticate_bearer(first.expose()).await, Err(AuthError::Expired)));
}

#[tokio::test]
async fn revocation_takes_effect_at_once() {
    let f = Fixture::new().await;
    let secret = f.register(Role::Producer, "p1", &[TOPIC]).await;
    let who = f.auth.authenticate_bearer(secret.expose()).await.unwrap();
    f.auth.authorize(Some(&who), Action::Publish { topic: TOPIC }).unwrap();

    f.auth.revoke(Role::Producer, "p1", &operator()).await.unwrap();
    assert!(matches!(f.auth.authenticate_bearer(secret.expose()).await, Err(AuthError::Invalid(_))));
    assert!(f.auth.get(Role::Producer, "p1").is_none());
    // An identity authenticated before the revocation loses its grants too.
    let denied = f.auth.authorize(Some(&who), Action::Publish { topic: TOPIC }).unwrap_err();
    assert!(denied.missing.contains("revoked"), "{denied}");
    assert!(f.meta.get(PRINCIPALS, "p1").await.unwrap().is_none());

    let err = f.auth.revoke(Role::Producer, "p1", &operator()).await.unwrap_err();
    assert!(matches!(err, AdminError::NotFound(..)));
    // The name is free again.
    f.register(Role::Consumer, "p1", &[]).await;
}

#[tokio::test]
async fn the_operator_cannot_be_revoked() {
    let f = Fixture::new().await;
    f.auth.bootstrap_operator(&f.dir.path().join("operator.token"), None).await.unwrap();
    let err = f.auth.revoke(Role::Operator, OPERATOR, &operator()).await.unwrap_err();
    assert!(matches!(err, AdminError::Invalid(_)));
}

// ----- authentication edge cases -----

#[tokio::test]
async fn bearer_edge_cases() {
    let f = Fixture::new().await;
    assert!(matches!(f.auth.authenticate_bearer("").await, Err(AuthError::Missing)));
    assert!(matches!(f.auth.authenticate_password("", "x").await, Err(AuthError::Missing)));
    let unknown = format!("{TOKEN_PREFIX}{}", "A".repeat(43));
    let err = f.auth.authenticate_bearer(&unknown).await.unwrap_err();
    assert!(matches!(err, AuthError::Invalid(_)));
    assert!(!err.to_string().contains(&unknown));
    assert!(matches!(f.auth.authenticate_bearer("hunter2").await, Err(AuthError::Invalid(_))));
    let err = f.auth.authenticate_bearer("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln").await.unwrap_err();
    assert!(err.to_string().contains("no OIDC issuer"), "{err}");
}

#[tokio::test]
async fn password_must_belong_to_the_named_principal() {
    let f = Fixture::new().await;
    let s1 = f.register(Role::Producer, "p1", &[]).await;
    f.register(Role::Producer, "p2", &[]).await;
    assert!(matches!(f.auth.authenticate_password("p2", s1.expose()).await, Err(AuthError::Invalid(_))));
    assert!(matches!(f.auth.authenticate_password("nobody", s1.expose()).await, Err(AuthError::Invalid(_))));
    assert_eq!(f.auth.authenticate_password("p1", s1.expose()).await.unwrap().name, "p1");
}

// ----- operator bootstrap -----

#[cfg(unix)]
#[tokio::test]
async fn bootstrap_creates_a_private_token_file_once() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new().await;
    let path = f.dir.path().join("operator.token");
    let outcome = f.auth.bootstrap_operator(&path, None).await.unwrap();
    assert_eq!(outcome, Bootstrap::Created(path.clone()));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).unwrap();
    assert!(token.starts_with(TOKEN_PREFIX) && token.len() == 50, "no newline, just the token");
    let who = f.auth.authenticate_bearer(&token).await.unwrap();
    assert_eq!((who.name.as_str(), who.role), (OPERATOR, Role::Operator));
    assert_eq!(f.auth.list(Role::Operator).len(), 1);

    // Later starts find it and leave the file alone.
    assert_eq!(f.auth.bootstrap_operator(&path, None).await.unwrap(), Bootstrap::Existing);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
}

#[tokio::test]
async fn bootstrap_refuses_to_overwrite_a_stray_token_file() {
    let f = Fixture::new().await;
    let path = f.dir.path().join("operator.token");
    std::fs::write(&path, "something else").unwrap();
    let err = f.auth.bootstrap_operator(&path, None).await.unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "something else");
    assert!(f.auth.list(Role::Operator).is_empty());
}

#[tokio::test]
async fn env_token_wins_over_the_file_and_is_idempotent() {
    let f = Fixture::new().await;
    let path = f.dir.path().join("operator.token");
    f.auth.bootstrap_operator(&path, None).await.unwrap();
    let file_token = std::fs::read_to_string(&path).unwrap();

    let env = format!("{TOKEN_PREFIX}{}", "e".repeat(40));
    assert_eq!(f.auth.bootstrap_operator(&path, Some(&env)).await.unwrap(), Bootstrap::FromEnv);
    assert_eq!(f.auth.authenticate_bearer(&env).await.unwrap().role, Role::Operator);
    assert!(f.auth.authenticate_bearer(&file_token).await.is_err());

    let audit_before = f.auth.audit_log(0, 1000).await.unwrap().len();
    assert_eq!(f.auth.bootstrap_operator(&path, Some(&env)).await.unwrap(), Bootstrap::FromEnv);
    assert_eq!(
        f.auth.audit_log(0, 1000).await.unwrap().len(),
        audit_before,
        "an unchanged env token writes nothing"
    );

    // A different env token replaces it.
    let env2 = format!("{TOKEN_PREFIX}{}", "f".repeat(40));
    f.auth.bootstrap_operator(&path, Some(&env2)).await.unwrap();
    assert!(f.auth.authenticate_bearer(&env).await.is_err());
    f.auth.authenticate_bearer(&env2).await.unwrap();
}

#[tokio::test]
async fn weak_env_token_is_refused() {
    let f = Fixture::new().await;
    let path = f.dir.path().join("operator.token");
    for weak in ["password", "esgfev_short"] {
        let err = f.auth.bootstrap_operator(&path, Some(weak)).await.unwrap_err();
        assert!(matches!(err, AdminError::Invalid(_)), "{err}");
    }
    assert!(f.auth.list(Role::Operator).is_empty());
}

#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_any_log_line_or_the_audit_log() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let config = AuthConfig { rotation_grace: Duration::from_secs(10), ..AuthConfig::default() };
    let f = Fixture::with(config).await;
    let path = f.dir.path().join("operator.token");
    f.auth.bootstrap_operator(&path, None).await.unwrap();
    let file_token = std::fs::read_to_string(&path).unwrap();
    let env = format!("{TOKEN_PREFIX}{}", "Z".repeat(43));
    f.auth.bootstrap_operator(&path, Some(&env)).await.unwrap();
    let registered = f.register(Role::Producer, "p1", &[]).await;
    let (_, rotated) = f.auth.rotate(Role::Producer, "p1", &operator()).await.unwrap();
    f.clock.advance_ms(20_000);
    let _ = f.auth.authenticate_bearer(registered.expose()).await;
    let _ = f.auth.authenticate_password("p1", rotated.expose()).await;
    let _ = f.auth.authenticate_password("p2", rotated.expose()).await;
    f.register(Role::Producer, "p2", &[]).await;
    tracing::debug!(secret = ?rotated, "a secret's Debug is safe to log");

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("operator token file"), "logging was captured: {logs}");
    assert!(logs.contains("Secret(***)"));
    let audit = serde_json::to_string(&f.auth.audit_log(0, 1000).await.unwrap()).unwrap();
    for secret in [file_token.as_str(), env.as_str(), registered.expose(), rotated.expose()] {
        let random_part = &secret[TOKEN_PREFIX.len()..];
        assert!(!logs.contains(random_part), "a secret was logged:\n{logs}");
        assert!(!audit.contains(random_part), "a secret was audited:\n{audit}");
    }
}

// ----- authorization -----

#[tokio::test]
async fn authorization_table_for_every_role_and_action() {
    let f = Fixture::new().await;
    f.auth.bootstrap_operator(&f.dir.path().join("operator.token"), None).await.unwrap();
    f.register(Role::Producer, "prod", &["granted"]).await;
    f.register(Role::Consumer, "cons", &["granted"]).await;
    f.auth.set_topic_public("public", true, &operator()).await.unwrap();

    let id = |name: &str, role| Identity { name: name.to_owned(), role, method: AuthMethod::Token };
    let (op, prod, cons) =
        (id(OPERATOR, Role::Operator), id("prod", Role::Producer), id("cons", Role::Consumer));
    let who: [(&str, Option<&Identity>); 4] =
        [("operator", Some(&op)), ("producer", Some(&prod)), ("consumer", Some(&cons)), ("anonymous", None)];
    let actions = [
        Action::Publish { topic: "granted" },
        Action::Publish { topic: "public" },
        Action::Publish { topic: "other" },
        Action::Read { topic: "granted" },
        Action::Read { topic: "public" },
        Action::Read { topic: "other" },
        Action::ManageTopics,
        Action::ManagePrincipals,
        Action::ReadAudit,
    ];
    // Rows: actions above; columns: operator, producer, consumer, anonymous.
    let expected = [
        [true, true, false, false],
        [true, false, false, false],
        [true, false, false, false],
        [true, false, true, false],
        [true, true, true, true],
        [true, false, false, false],
        [true, false, false, false],
        [true, false, false, false],
        [true, false, false, false],
    ];
    for (action, row) in actions.iter().zip(expected) {
        for ((label, identity), allowed) in who.iter().zip(row) {
            let result = f.auth.authorize(*identity, *action);
            assert_eq!(result.is_ok(), allowed, "{label} / {action}: {result:?}");
        }
    }
}

#[tokio::test]
async fn denials_say_exactly_which_grant_is_missing() {
    let f = Fixture::new().await;
    f.register(Role::Consumer, "cons", &[]).await;
    f.register(Role::Producer, "prod", &[]).await;
    let cons = Identity { name: "cons".into(), role: Role::Consumer, method: AuthMethod::Token };
    let prod = Identity { name: "prod".into(), role: Role::Producer, method: AuthMethod::Token };

    let d = f.auth.authorize(Some(&prod), Action::Publish { topic: TOPIC }).unwrap_err();
    assert_eq!(d.missing, "a publish grant on topic 'esgf2.publications'");
    assert_eq!(d.principal, "prod");
    assert_eq!(
        d.to_string(),
        "prod may not publish to topic 'esgf2.publications': a publish grant on topic 'esgf2.publications'"
    );

    let d = f.auth.authorize(Some(&cons), Action::Read { topic: TOPIC }).unwrap_err();
    assert_eq!(d.missing, "a read grant on topic 'esgf2.publications'");
    let d = f.auth.authorize(Some(&cons), Action::ManagePrincipals).unwrap_err();
    assert_eq!(d.missing, "the operator role");
    let d = f.auth.authorize(None, Action::Read { topic: TOPIC }).unwrap_err();
    assert_eq!(d.principal, "anonymous");
    assert!(d.missing.starts_with("a read grant on topic 'esgf2.publications'"));
}

#[tokio::test]
async fn grant_changes_apply_to_identities_already_authenticated() {
    let f = Fixture::new().await;
    let secret = f.register(Role::Consumer, "cons", &[]).await;
    let who = f.auth.authenticate_bearer(secret.expose()).await.unwrap();
    assert!(f.auth.authorize(Some(&who), Action::Read { topic: TOPIC }).is_err());
    let update = PrincipalUpdate { topics: Some(vec![TOPIC.into()]), ..Default::default() };
    f.auth.update(Role::Consumer, "cons", update, &operator()).await.unwrap();
    f.auth.authorize(Some(&who), Action::Read { topic: TOPIC }).unwrap();

    f.auth.set_topic_public("open", true, &operator()).await.unwrap();
    assert!(f.auth.is_topic_public("open"));
    f.auth.authorize(None, Action::Read { topic: "open" }).unwrap();
    f.auth.set_topic_public("open", false, &operator()).await.unwrap();
    assert!(!f.auth.is_topic_public("open"));
    assert!(f.auth.authorize(None, Action::Read { topic: "open" }).is_err());
    assert!(f.auth.set_topic_public("no/slashes", true, &operator()).await.is_err());
}

// ----- rate limits -----

#[tokio::test]
async fn refused_batch_consumes_nothing_and_under_the_limit_is_never_refused() {
    let f = Fixture::new().await;
    let reg = Registration { rate: Some(rate(10, 10, Some((1000, 1000)))), ..registration("prod", &[TOPIC]) };
    let (_, secret) = f.auth.register(Role::Producer, reg, &operator()).await.unwrap();
    let who = f.auth.authenticate_bearer(secret.expose()).await.unwrap();

    f.auth.check_publish_rate(&who, 1, 500).unwrap();
    // Too many bytes: refused, and neither bucket is charged.
    let limited = f.auth.check_publish_rate(&who, 5, 501).unwrap_err();
    assert_eq!((limited.limit, limited.remaining), (1000, 500));
    // Too many events: refused, nothing charged.
    let limited = f.auth.check_publish_rate(&who, 10, 10).unwrap_err();
    assert_eq!((limited.limit, limited.remaining), (10, 9));
    // The rest of both bursts is still there.
    f.auth.check_publish_rate(&who, 9, 500).unwrap();
    let limited = f.auth.check_publish_rate(&who, 1, 1).unwrap_err();
    assert_eq!(limited.retry_after, Duration::from_millis(100));
    assert_eq!(limited.reset, Duration::from_secs(1));

    // Steady publishing at the configured rate is never refused.
    for _ in 0..1000 {
        f.clock.advance_ms(100);
        f.auth.check_publish_rate(&who, 1, 100).unwrap();
    }
}

#[tokio::test]
async fn operators_and_unrated_producers_are_not_limited() {
    let f = Fixture::new().await;
    f.register(Role::Producer, "free", &[]).await;
    let free = Identity { name: "free".into(), role: Role::Producer, method: AuthMethod::Token };
    for _ in 0..100 {
        f.auth.check_publish_rate(&operator(), 10_000, 1 << 30).unwrap();
        f.auth.check_publish_rate(&free, 10_000, 1 << 30).unwrap();
    }
}

#[tokio::test]
async fn limiter_is_rebuilt_when_the_rate_changes_and_kept_otherwise() {
    let f = Fixture::new().await;
    let reg = Registration { rate: Some(rate(1, 2, None)), ..registration("prod", &[]) };
    f.auth.register(Role::Producer, reg, &operator()).await.unwrap();
    let who = Identity { name: "prod".into(), role: Role::Producer, method: AuthMethod::Token };
    f.auth.check_publish_rate(&who, 2, 0).unwrap();
    assert!(f.auth.check_publish_rate(&who, 1, 0).is_err());

    // An unrelated change keeps the (empty) bucket.
    let update = PrincipalUpdate { contact: Some(Some("x@example.org".into())), ..Default::default() };
    f.auth.update(Role::Producer, "prod", update, &operator()).await.unwrap();
    assert!(f.auth.check_publish_rate(&who, 1, 0).is_err());

    // A new rate starts a new, full bucket with the new burst.
    let update = PrincipalUpdate { rate: Some(Some(rate(1, 50, None))), ..Default::default() };
    f.auth.update(Role::Producer, "prod", update, &operator()).await.unwrap();
    f.auth.check_publish_rate(&who, 50, 0).unwrap();

    // No rate: unlimited.
    let update = PrincipalUpdate { rate: Some(None), ..Default::default() };
    f.auth.update(Role::Producer, "prod", update, &operator()).await.unwrap();
    f.auth.check_publish_rate(&who, 1000, 0).unwrap();
}

#[tokio::test]
async fn anonymous_rate_is_per_ip() {
    let config = AuthConfig { anonymous_per_ip: rate(1, 2, None), ..AuthConfig::default() };
    let f = Fixture::with(config).await;
    let a: IpAddr = "198.51.100.7".parse().unwrap();
    f.auth.check_anonymous_rate(a).unwrap();
    f.auth.check_anonymous_rate(a).unwrap();
    let limited = f.auth.check_anonymous_rate(a).unwrap_err();
    assert_eq!(limited.limit, 2);
    f.auth.check_anonymous_rate("198.51.100.8".parse().unwrap()).unwrap();
}

#[tokio::test]
async fn zero_anonymous_rate_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(RedbMetaStore::open(&dir.path().join("state.redb")).unwrap());
    let config = AuthConfig { anonymous_per_ip: rate(0, 0, None), ..AuthConfig::default() };
    assert!(matches!(Auth::open(meta, config).await, Err(AdminError::Invalid(_))));
}

// ----- OIDC -----

async fn oidc_fixture(keys: &[&TestKey]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(keys)).unwrap();
    let config = AuthConfig {
        oidc: vec![OidcIssuerConfig {
            issuer: ISS.into(),
            audience: AUD.into(),
            jwks: JwksSource::File(jwks_path),
            subject_claim: "sub".into(),
        }],
        ..AuthConfig::default()
    };
    let clock = Arc::new(ManualClock::new(T0));
    let (meta, auth) = open(dir.path(), clock.clone(), config).await;
    let alice = OidcIdentity { issuer: ISS.into(), subject: "alice".into() };
    let reg = Registration { oidc: vec![alice], ..registration("alice-reader", &[TOPIC]) };
    auth.register(Role::Consumer, reg, &operator()).await.unwrap();
    Fixture { dir, clock, meta, auth }
}

fn claims(iss: &str, aud: &str, sub: &str, exp_ms: i64) -> serde_json::Value {
    json!({ "iss": iss, "aud": aud, "sub": sub, "exp": exp_ms / 1000, "iat": T0 / 1000 })
}

#[tokio::test]
async fn valid_jwts_map_to_the_registered_principal() {
    let (ec, rsa) = (es256("ec-1"), rs256("rsa-1"));
    let f = oidc_fixture(&[&ec, &rsa]).await;
    for key in [&ec, &rsa] {
        let token = sign(key, &claims(ISS, AUD, "alice", T0 + 300_000));
        let who = f.auth.authenticate_bearer(&token).await.unwrap();
        assert_eq!(
            who,
            Identity { name: "alice-reader".into(), role: Role::Consumer, method: AuthMethod::Jwt }
        );
        f.auth.authorize(Some(&who), Action::Read { topic: TOPIC }).unwrap();
    }
    // `aud` may be a list.
    let mut c = claims(ISS, AUD, "alice", T0 + 300_000);
    c["aud"] = json!(["other", AUD]);
    f.auth.authenticate_bearer(&sign(&ec, &c)).await.unwrap();
}

#[tokio::test]
async fn expired_jwt_is_refused_as_expired() {
    let key = es256("k");
    let f = oidc_fixture(&[&key]).await;
    let token = sign(&key, &claims(ISS, AUD, "alice", T0 - 3_600_000));
    assert!(matches!(f.auth.authenticate_bearer(&token).await, Err(AuthError::Expired)));
    // A valid token expires as the clock moves past exp (plus a minute of leeway).
    let token = sign(&key, &claims(ISS, AUD, "alice", T0 + 1000));
    f.auth.authenticate_bearer(&token).await.unwrap();
    f.clock.advance_ms(62_000);
    assert!(matches!(f.auth.authenticate_bearer(&token).await, Err(AuthError::Expired)));
}

#[tokio::test]
async fn jwt_from_an_unconfigured_issuer_is_refused() {
    let key = es256("k");
    let f = oidc_fixture(&[&key]).await;
    let token = sign(&key, &claims("https://evil.example.com", AUD, "alice", T0 + 300_000));
    let err = f.auth.authenticate_bearer(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::Invalid(ref m) if m.contains("not trusted")), "{err}");
    let mut c = claims(ISS, AUD, "alice", T0 + 300_000);
    c.as_object_mut().unwrap().remove("iss");
    assert!(matches!(f.auth.authenticate_bearer(&sign(&key, &c)).await, Err(AuthError::Invalid(_))));
}

#[tokio::test]
async fn jwt_for_another_audience_is_refused() {
    let key = rs256("k");
    let f = oidc_fixture(&[&key]).await;
    let token = sign(&key, &claims(ISS, "some-other-service", "alice", T0 + 300_000));
    let err = f.auth.authenticate_bearer(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::Invalid(ref m) if m.contains("audience")), "{err}");
    let mut c = claims(ISS, AUD, "alice", T0 + 300_000);
    c.as_object_mut().unwrap().remove("aud");
    let err = f.auth.authenticate_bearer(&sign(&key, &c)).await.unwrap_err();
    assert!(matches!(err, AuthError::Invalid(ref m) if m.contains("'aud'")), "{err}");
}

#[tokio::test]
async fn jwt_for_an_unregistered_subject_is_refused() {
    let key = es256("k");
    let f = oidc_fixture(&[&key]).await;
    let token = sign(&key, &claims(ISS, AUD, "mallory", T0 + 300_000));
    let err = f.auth.authenticate_bearer(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::Invalid(ref m) if m.contains("no principal")), "{err}");
}

#[tokio::test]
async fn jwt_with_a_bad_signature_is_refused() {
    let key = es256("k");
    let f = oidc_fixture(&[&key]).await;
    // Same kid, different private key: an attacker's forgery.
    let forger = es256("k");
    let token = sign(&forger, &claims(ISS, AUD, "alice", T0 + 300_000));
    let err = f.auth.authenticate_bearer(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::Invalid(ref m) if m.contains("signature")), "{err}");
    // A genuine token whose payload was edited.
    let genuine = sign(&key, &claims(ISS, AUD, "alice", T0 + 300_000));
    let parts: Vec<&str> = genuine.split('.').collect();
    let forged_payload = sign(&forger, &claims(ISS, AUD, "alice", T0 + 999_000_000));
    let tampered = format!("{}.{}.{}", parts[0], forged_payload.split('.').nth(1).unwrap(), parts[2]);
    assert!(matches!(f.auth.authenticate_bearer(&tampered).await, Err(AuthError::Invalid(_))));
}

#[tokio::test]
async fn jwt_with_a_symmetric_algorithm_is_refused() {
    let key = es256("k");
    let f = oidc_fixture(&[&key]).await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims(ISS, AUD, "alice", T0 + 300_000),
        &jsonwebtoken::EncodingKey::from_secret(b"public-key-bytes"),
    )
    .unwrap();
    let err = f.auth.authenticate_bearer(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::Invalid(ref m) if m.contains("HS256")), "{err}");
}

// ----- persistence -----

#[tokio::test]
async fn state_survives_reopen() {
    let f = Fixture::new().await;
    let path = f.dir.path().join("operator.token");
    f.auth.bootstrap_operator(&path, None).await.unwrap();
    let operator_token = std::fs::read_to_string(&path).unwrap();
    let reg = Registration {
        rate: Some(rate(3, 4, Some((100, 200)))),
        contact: Some("a@b.c".into()),
        oidc: vec![OidcIdentity { issuer: ISS.into(), subject: "s".into() }],
        ..registration("prod", &[TOPIC])
    };
    let (principal, secret) = f.auth.register(Role::Producer, reg, &operator()).await.unwrap();
    let consumer = f.register(Role::Consumer, "cons", &["x"]).await;
    f.auth.set_topic_public(TOPIC, true, &operator()).await.unwrap();
    let audit = f.auth.audit_log(0, 100).await.unwrap();

    let Fixture { dir, clock, meta, auth } = f;
    drop((auth, meta));
    let (_meta, auth) = open(dir.path(), clock, AuthConfig::default()).await;
    assert_eq!(auth.get(Role::Producer, "prod"), Some(principal));
    assert_eq!(auth.authenticate_bearer(secret.expose()).await.unwrap().name, "prod");
    assert_eq!(auth.authenticate_bearer(consumer.expose()).await.unwrap().name, "cons");
    assert_eq!(auth.authenticate_bearer(&operator_token).await.unwrap().role, Role::Operator);
    assert!(auth.is_topic_public(TOPIC));
    assert_eq!(auth.bootstrap_operator(&path, None).await.unwrap(), Bootstrap::Existing);
    assert_eq!(auth.audit_log(0, 100).await.unwrap(), audit);
}

#[tokio::test]
async fn no_plaintext_secret_is_in_the_state_file() {
    let config = AuthConfig { rotation_grace: Duration::from_secs(60), ..AuthConfig::default() };
    let f = Fixture::with(config).await;
    let path = f.dir.path().join("operator.token");
    f.auth.bootstrap_operator(&path, None).await.unwrap();
    let mut secrets = vec![std::fs::read_to_string(&path).unwrap()];
    secrets.push(f.register(Role::Producer, "p1", &[]).await.expose().to_owned());
    secrets.push(f.auth.rotate(Role::Producer, "p1", &operator()).await.unwrap().1.expose().to_owned());
    secrets.push(f.register(Role::Consumer, "c1", &[]).await.expose().to_owned());
    let env = format!("{TOKEN_PREFIX}{}", "Q".repeat(43));
    f.auth.bootstrap_operator(&path, Some(&env)).await.unwrap();
    secrets.push(env);

    let Fixture { dir, meta, auth, .. } = f;
    drop((auth, meta));
    let file = std::fs::read(dir.path().join("state.redb")).unwrap();
    assert!(file.len() > 1000);
    // The hashes are there (so the scan looks at the right bytes)...
    let hash_hex = TokenHash::of(&secrets[1]).to_hex();
    assert!(file.windows(hash_hex.len()).any(|w| w == hash_hex.as_bytes()));
    // ...and no secret, nor its random part, is.
    for secret in &secrets {
        let random_part = &secret.as_bytes()[TOKEN_PREFIX.len()..];
        assert!(
            !file.windows(random_part.len()).any(|w| w == random_part),
            "plaintext secret in the state file"
        );
    }
}

// ----- audit -----

#[tokio::test]
async fn admin_actions_are_audited_with_their_outcome_and_paged() {
    let f = Fixture::new().await;
    f.register(Role::Producer, "p1", &[]).await;
    let _ = f.auth.register(Role::Consumer, registration("p1", &[]), &operator()).await;
    f.auth.update(Role::Producer, "p1", PrincipalUpdate::default(), &operator()).await.unwrap();
    f.auth.rotate(Role::Producer, "p1", &operator()).await.unwrap();
    f.auth.set_topic_public(TOPIC, true, &operator()).await.unwrap();
    f.auth.revoke(Role::Producer, "p1", &operator()).await.unwrap();
    f.auth
        .record(AuditEntry {
            seq: 0,
            time: 0,
            actor: None,
            action: "auth.failure".into(),
            target: None,
            remote: Some("192.0.2.1:5555".into()),
            outcome: "failed: the token has expired".into(),
        })
        .await;

    let log = f.auth.audit_log(0, 100).await.unwrap();
    let summary: Vec<(u64, &str, Option<&str>, &str)> =
        log.iter().map(|e| (e.seq, e.action.as_str(), e.target.as_deref(), e.outcome.as_str())).collect();
    assert_eq!(
        summary,
        vec![
            (1, "producer.register", Some("p1"), "ok"),
            (2, "consumer.register", Some("p1"), "failed: producer 'p1' already exists"),
            (3, "producer.update", Some("p1"), "ok"),
            (4, "producer.rotate", Some("p1"), "ok"),
            (5, "topic.public", Some(TOPIC), "ok"),
            (6, "producer.revoke", Some("p1"), "ok"),
            (7, "auth.failure", None, "failed: the token has expired"),
        ]
    );
    assert!(log[..6].iter().all(|e| e.actor.as_deref() == Some(OPERATOR) && e.time == T0));
    assert_eq!(log[6].time, T0, "time 0 means now");

    let page = f.auth.audit_log(2, 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(f.auth.audit_log(7, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_consumer_group_belongs_to_its_first_user_across_restarts() {
    let f = Fixture::new().await;
    let ceda = Identity { name: "ceda-index".into(), role: Role::Consumer, method: AuthMethod::Token };
    let dkrz = Identity { name: "dkrz-index".into(), role: Role::Consumer, method: AuthMethod::Password };
    f.auth.claim_group(&ceda, "index-replica").await.unwrap();
    f.auth.claim_group(&ceda, "index-replica").await.unwrap();
    match f.auth.claim_group(&dkrz, "index-replica").await {
        Err(GroupAccessError::Denied(d)) => assert!(d.missing.contains("belongs to 'ceda-index'"), "{d}"),
        other => panic!("expected a denial, got {other:?}"),
    }
    f.auth.claim_group(&operator(), "index-replica").await.expect("operators may use any group");
    f.auth.claim_group(&dkrz, "dkrz").await.unwrap();
    assert!(matches!(
        f.auth.claim_group(&dkrz, "").await,
        Err(GroupAccessError::Store(AdminError::Invalid(_)))
    ));

    let Fixture { dir, clock, meta, auth } = f;
    drop((meta, auth));
    let (_meta, reopened) = open(dir.path(), clock, AuthConfig::default()).await;
    reopened.claim_group(&ceda, "index-replica").await.unwrap();
    assert!(matches!(reopened.claim_group(&dkrz, "index-replica").await, Err(GroupAccessError::Denied(_))));
}

// ----- following changes made by another node on a shared store -----

/// A second `Auth` on the same state store: another service node, whose writes this one only learns of
/// through `refresh`/`reload`.
async fn other_node(f: &Fixture) -> Auth {
    Auth::open_with_clock(f.meta.clone(), AuthConfig::default(), f.clock.clone()).await.unwrap()
}

#[tokio::test]
async fn a_revocation_on_another_node_takes_effect_here_once_refreshed() {
    let f = Fixture::new().await;
    let b = other_node(&f).await;
    let secret = f.register(Role::Producer, "p1", &[TOPIC]).await;
    assert!(b.authenticate_bearer(secret.expose()).await.is_err(), "not yet known to the other node");
    b.refresh(PRINCIPALS, "p1").await.unwrap();
    let who = b.authenticate_bearer(secret.expose()).await.expect("known after the refresh");
    b.authorize(Some(&who), Action::Publish { topic: TOPIC }).unwrap();

    f.auth.revoke(Role::Producer, "p1", &operator()).await.unwrap();
    b.refresh(PRINCIPALS, "p1").await.unwrap();
    assert!(matches!(b.authenticate_bearer(secret.expose()).await, Err(AuthError::Invalid(_))));
    assert!(b.authorize(Some(&who), Action::Publish { topic: TOPIC }).is_err());
    // Keys of collections access control does not keep are ignored.
    b.refresh("topic_catalogue", "p1").await.unwrap();
}

#[tokio::test]
async fn topic_flags_and_group_owners_follow_another_node() {
    let f = Fixture::new().await;
    let b = other_node(&f).await;
    let ceda = Identity { name: "ceda-index".into(), role: Role::Consumer, method: AuthMethod::Token };
    let dkrz = Identity { name: "dkrz-index".into(), role: Role::Consumer, method: AuthMethod::Token };
    f.auth.set_topic_public(TOPIC, true, &operator()).await.unwrap();
    f.auth.claim_group(&ceda, "replica").await.unwrap();
    b.refresh(TOPIC_ACL, TOPIC).await.unwrap();
    b.refresh(GROUP_OWNERS, "replica").await.unwrap();
    assert!(b.is_topic_public(TOPIC));
    assert!(matches!(b.claim_group(&dkrz, "replica").await, Err(GroupAccessError::Denied(_))));

    f.auth.set_topic_public(TOPIC, false, &operator()).await.unwrap();
    b.refresh(TOPIC_ACL, TOPIC).await.unwrap();
    assert!(!b.is_topic_public(TOPIC));
}

#[tokio::test]
async fn reload_drops_principals_deleted_elsewhere_and_keeps_unchanged_rate_limiters() {
    let f = Fixture::new().await;
    let b = other_node(&f).await;
    let reg = Registration { rate: Some(rate(1, 2, None)), ..registration("prod", &[TOPIC]) };
    f.auth.register(Role::Producer, reg, &operator()).await.unwrap();
    let gone = f.register(Role::Consumer, "gone", &[]).await;
    b.reload().await.unwrap();
    assert!(b.authenticate_bearer(gone.expose()).await.is_ok());
    let who = Identity { name: "prod".into(), role: Role::Producer, method: AuthMethod::Token };
    b.check_publish_rate(&who, 2, 0).unwrap();

    f.auth.revoke(Role::Consumer, "gone", &operator()).await.unwrap();
    b.reload().await.unwrap();
    assert!(b.authenticate_bearer(gone.expose()).await.is_err(), "deleted elsewhere, gone here");
    assert!(b.check_publish_rate(&who, 1, 0).is_err(), "an unchanged rate keeps its (empty) bucket");
}
