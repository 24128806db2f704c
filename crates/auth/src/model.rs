//! The public vocabulary of access control: roles, principals as callers see them, registrations, identities,
//! actions and configuration. Nothing here holds a credential hash, and the one type that holds a secret
//! ([`Secret`]) refuses to print it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every token this service issues starts with this, so secret scanners can recognise leaked ones.
pub const TOKEN_PREFIX: &str = "esgfev_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    Producer,
    Consumer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token-bucket publish rate. `bytes_per_second` without `burst_bytes` means a burst of one second's worth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSpec {
    pub events_per_second: u32,
    pub burst: u32,
    #[serde(default)]
    pub bytes_per_second: Option<u64>,
    #[serde(default)]
    pub burst_bytes: Option<u64>,
}

/// An identity at an OIDC issuer; `subject` is the value of the issuer's configured subject claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OidcIdentity {
    pub issuer: String,
    pub subject: String,
}

/// Public view of a principal (never contains secrets or hashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// Sorted.
    pub topics: Vec<String>,
    pub rate: Option<RateSpec>,
    pub contact: Option<String>,
    pub oidc: Vec<OidcIdentity>,
    /// Milliseconds since the Unix epoch.
    pub created: i64,
    pub credentials: Vec<CredentialInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialInfo {
    /// First 8 hex characters of the credential's hash: enough to tell credentials apart, useless to an attacker.
    pub id: String,
    pub created: i64,
    pub expires: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub name: String,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub rate: Option<RateSpec>,
    #[serde(default)]
    pub contact: Option<String>,
    #[serde(default)]
    pub oidc: Vec<OidcIdentity>,
}

/// A partial change; `None` leaves a field alone, `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalUpdate {
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub rate: Option<Option<RateSpec>>,
    #[serde(default, deserialize_with = "present")]
    pub contact: Option<Option<String>>,
    #[serde(default)]
    pub oidc: Option<Vec<OidcIdentity>>,
}

/// Serde folds an explicit `null` into "absent" for `Option<Option<T>>`; a PATCH needs `null` to mean "clear".
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Who made a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub method: AuthMethod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Token,
    Jwt,
    Password,
}

/// A secret shown once, when it is created. Its `Debug` never prints it and it has no `Display`, so it cannot
/// end up in a log line by accident.
pub struct Secret(pub(crate) String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What a caller wants to do; [`crate::Auth::authorize`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Publish { topic: &'a str },
    Read { topic: &'a str },
    ManageTopics,
    ManagePrincipals,
    ReadAudit,
}

impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Publish { topic } => write!(f, "publish to topic '{topic}'"),
            Action::Read { topic } => write!(f, "read topic '{topic}'"),
            Action::ManageTopics => f.write_str("manage topics"),
            Action::ManagePrincipals => f.write_str("manage principals"),
            Action::ReadAudit => f.write_str("read the audit log"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OidcIssuerConfig {
    /// Must equal the tokens' `iss` claim exactly.
    pub issuer: String,
    /// Tokens must name this in `aud`.
    pub audience: String,
    pub jwks: JwksSource,
    /// Claim naming the principal: "sub" (default) or "client_id" / "azp".
    pub subject_claim: String,
}

#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub oidc: Vec<OidcIssuerConfig>,
    /// How long an old secret keeps working after a rotation (default 0: stops at once).
    pub rotation_grace: Duration,
    /// Per-IP request rate for unauthenticated calls (default 20/s, burst 100). Byte fields are ignored.
    pub anonymous_per_ip: RateSpec,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            oidc: Vec::new(),
            rotation_grace: Duration::ZERO,
            anonymous_per_ip: RateSpec {
                events_per_second: 20,
                burst: 100,
                bytes_per_second: None,
                burst_bytes: None,
            },
        }
    }
}

/// An entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The log's sequence number; 0 before the entry is stored (and ignored by [`crate::Auth::record`]).
    pub seq: u64,
    /// Milliseconds since the Unix epoch; 0 means "now" to [`crate::Auth::record`].
    pub time: i64,
    pub actor: Option<String>,
    /// e.g. "producer.register", "auth.failure".
    pub action: String,
    pub target: Option<String>,
    /// `ip:port`, or `kafka ip:port`.
    pub remote: Option<String>,
    /// "ok" | "denied" | "failed: ...".
    pub outcome: String,
}

/// What [`crate::Auth::bootstrap_operator`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// The operator credential is the token from the environment.
    FromEnv,
    /// A new operator token was written to this file (mode 0600).
    Created(PathBuf),
    /// An operator credential already existed; nothing changed.
    Existing,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_hides_the_value() {
        let secret = Secret("esgfev_supersecret".to_owned());
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(Secret(***))");
    }

    #[test]
    fn role_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Role::Producer).unwrap(), "\"producer\"");
        assert_eq!(serde_json::from_str::<Role>("\"consumer\"").unwrap(), Role::Consumer);
    }

    #[test]
    fn registration_rejects_unknown_fields() {
        let err = serde_json::from_str::<Registration>(r#"{"name":"a","topic":["x"]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn update_distinguishes_absent_from_null() {
        let u: PrincipalUpdate = serde_json::from_str(r#"{"contact":null}"#).unwrap();
        assert_eq!(u.contact, Some(None));
        assert_eq!(u.rate, None);
        let u: PrincipalUpdate =
            serde_json::from_str(r#"{"rate":{"events_per_second":1,"burst":2}}"#).unwrap();
        assert_eq!(
            u.rate,
            Some(Some(RateSpec {
                events_per_second: 1,
                burst: 2,
                bytes_per_second: None,
                burst_bytes: None
            }))
        );
    }
}
