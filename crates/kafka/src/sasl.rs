//! SASL/PLAIN authentication: SaslHandshake then SaslAuthenticate (or, after a v0 handshake, one raw token
//! frame, as pre-1.0 Kafka clients send). The username is the principal's name and the password its token.
//!
//! A failed attempt is answered, audited and the connection closed (as Kafka does), and attempts from one
//! address are rate-limited like any unauthenticated request, so passwords cannot be guessed at line speed.

use bytes::Bytes;
use esgf_events_auth::{AuditEntry, AuthError};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tracing::{debug, info};

use crate::broker::{Broker, Session};
use crate::errors::{self, NONE};

const PLAIN: &str = "PLAIN";

/// Where a connection is in the SASL exchange.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaslStage {
    #[default]
    Start,
    /// SaslHandshake v1 done: a SaslAuthenticate request comes next.
    Handshaken,
    /// SaslHandshake v0 done: the next frame is the bare PLAIN token, not a Kafka request.
    RawTokenNext,
    Authenticated,
}

/// A PLAIN token: `[authzid] NUL authcid NUL password` (RFC 4616).
fn parse_plain(token: &[u8]) -> Result<(&str, &str), AuthError> {
    let text =
        std::str::from_utf8(token).map_err(|_| AuthError::Invalid("the PLAIN token is not UTF-8".into()))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Invalid("malformed PLAIN token".into()));
    };
    if user.is_empty() || password.is_empty() {
        return Err(AuthError::Missing);
    }
    if !authzid.is_empty() && authzid != user {
        return Err(AuthError::Invalid("acting as another principal is not supported".into()));
    }
    Ok((user, password))
}

impl Broker {
    pub(crate) fn sasl_handshake(
        &self,
        session: &mut Session,
        version: i16,
        request: SaslHandshakeRequest,
    ) -> SaslHandshakeResponse {
        let mut response = SaslHandshakeResponse::default();
        if self.ctx.auth.is_none() {
            response.error_code = errors::illegal_sasl_state();
            return response;
        }
        response.mechanisms = vec![StrBytes::from_static_str(PLAIN)];
        if session.sasl != SaslStage::Start {
            response.error_code = errors::illegal_sasl_state();
            session.close = true;
        } else if &*request.mechanism != PLAIN {
            response.error_code = errors::unsupported_mechanism();
        } else {
            response.error_code = NONE;
            session.sasl = if version == 0 { SaslStage::RawTokenNext } else { SaslStage::Handshaken };
        }
        response
    }

    pub(crate) async fn sasl_authenticate(
        &self,
        session: &mut Session,
        version: i16,
        request: SaslAuthenticateRequest,
    ) -> SaslAuthenticateResponse {
        let mut response = SaslAuthenticateResponse::default();
        if session.sasl != SaslStage::Handshaken {
            response.error_code = errors::illegal_sasl_state();
            response.error_message =
                Some(StrBytes::from_static_str("SaslAuthenticate must follow a PLAIN handshake"));
            session.close = true;
            return response;
        }
        if let Err(message) = self.authenticate_plain(session, &request.auth_bytes).await {
            response.error_code = errors::authentication_failed(&AuthError::Missing);
            response.error_message = Some(StrBytes::from_string(message));
        } else if version >= 1 {
            // 0: the session never needs to re-authenticate.
            response.session_lifetime_ms = 0;
        }
        response
    }

    /// The raw token after a v0 handshake. `true` if authenticated; on `false` the connection must close.
    pub(crate) async fn authenticate_raw(&self, session: &mut Session, token: Bytes) -> bool {
        self.authenticate_plain(session, &token).await.is_ok()
    }

    /// Checks a PLAIN token; on failure the session is marked for closing and the error message returned.
    async fn authenticate_plain(&self, session: &mut Session, token: &[u8]) -> Result<(), String> {
        let Some(auth) = self.ctx.auth.clone() else {
            session.close = true;
            return Err("authentication is not enabled".to_owned());
        };
        if let Some(ip) = session.peer.map(|p| p.ip())
            && let Err(limited) = auth.check_anonymous_rate(ip)
        {
            session.close = true;
            debug!(peer = ?session.peer, "SASL attempts rate-limited");
            return Err(format!("too many authentication attempts: retry after {:?}", limited.retry_after));
        }
        let parsed = parse_plain(token);
        let user = parsed.as_ref().ok().map(|(user, _)| (*user).to_owned());
        let outcome = match parsed {
            Ok((user, password)) => auth.authenticate_password(user, password).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(identity) => {
                info!(principal = %identity.name, role = %identity.role.as_str(), peer = ?session.peer, "Kafka client authenticated");
                session.identity = Some(identity);
                session.sasl = super::sasl::SaslStage::Authenticated;
                Ok(())
            }
            Err(e) => {
                session.close = true;
                esgf_events_ops::metrics::auth_failure("kafka");
                auth.record(AuditEntry {
                    seq: 0,
                    time: 0,
                    actor: user,
                    action: "auth.failure".to_owned(),
                    target: None,
                    remote: Some(session.remote()),
                    outcome: format!("failed: {e}"),
                })
                .await;
                Err(format!("Authentication failed: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tokens_parse_per_rfc_4616() {
        assert_eq!(parse_plain(b"\0alice\0secret").unwrap(), ("alice", "secret"));
        assert_eq!(parse_plain(b"alice\0alice\0secret").unwrap(), ("alice", "secret"));
        assert!(matches!(parse_plain(b"bob\0alice\0secret"), Err(AuthError::Invalid(_))));
        assert!(matches!(parse_plain(b"\0alice\0"), Err(AuthError::Missing)));
        assert!(matches!(parse_plain(b"alice:secret"), Err(AuthError::Invalid(_))));
        assert!(matches!(parse_plain(b"\0a\0b\0c"), Err(AuthError::Invalid(_))));
        assert!(matches!(parse_plain(&[0, 0xff, 0, 0x61]), Err(AuthError::Invalid(_))));
    }
}
