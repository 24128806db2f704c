//! Access control, shared by every endpoint (HTTP now, Kafka next) so the same rules hold everywhere.
//!
//! - **Principals**: operators, producers and consumers. Producers and consumers are registered by operators
//!   only (the specification: registration is not self-service). Each has a name (unique across roles, it is the
//!   Kafka SASL username too), topic grants, an optional publish rate and an optional contact address.
//! - **Credentials**: random tokens (256 bits, prefix `esgfev_` so secret scanners can find leaked ones), stored
//!   only as SHA-256 hashes and compared in constant time; rotation with an optional grace period; revocation
//!   takes effect at once. OAuth2/OIDC bearer JWTs from configured issuers are accepted too and mapped to a
//!   registered principal by `sub` or client id.
//! - **Authorization**: [`Auth::authorize`] answers for an [`Action`]; denials say which grant is missing.
//! - **Rate limits**: per producer (events/s and bytes/s with bursts); an over-limit batch consumes nothing.
//! - **Audit**: every operator action and every authentication failure, append-only in the state store.
//!
//! State lives in the [`MetaStore`](esgf_events_meta::MetaStore) and is cached in memory (write-through), so
//! checking a request costs a hash and a map lookup, never I/O.

mod auth;
mod credential;
mod error;
mod model;
mod oidc;
mod rate;

pub use auth::Auth;
pub use error::{AdminError, AuthError, Denied, GroupAccessError, RateLimited};
pub use model::{
    Action, AuditEntry, AuthConfig, AuthMethod, Bootstrap, CredentialInfo, Identity, JwksSource,
    OidcIdentity, OidcIssuerConfig, Principal, PrincipalUpdate, RateSpec, Registration, Role, Secret,
    TOKEN_PREFIX,
};
