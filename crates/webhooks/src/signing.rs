//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): a receiver checks them with any of the
//! spec's libraries, so nothing here is ours to invent.
//!
//! A secret is `whsec_` + base64 of random bytes; the key is the decoded bytes, not the text. A delivery
//! carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`, which is
//! `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")). The timestamp is signed too, so a receiver can
//! refuse replays of old deliveries; each retry is therefore signed afresh.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

/// What every webhook secret starts with (the spec's convention, which the libraries strip).
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a secret this service generates (the spec asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// The header names of the spec.
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret must start with '{SECRET_PREFIX}'")]
    MissingPrefix,
    #[error("a webhook secret must be base64 after '{SECRET_PREFIX}'")]
    NotBase64,
    #[error("a webhook secret must hold at least 16 bytes")]
    TooShort,
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// A signing secret. `Debug` never shows it, and it has no `Display`, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    /// The text form, `whsec_...`, as shown to the subscriber once.
    text: String,
    key: Vec<u8>,
}

impl WebhookSecret {
    /// A new secret of [`SECRET_BYTES`] bytes from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, SecretError> {
        let mut key = vec![0u8; SECRET_BYTES];
        getrandom::fill(&mut key).map_err(|e| SecretError::Random(e.to_string()))?;
        let text = format!("{SECRET_PREFIX}{}", STANDARD.encode(&key));
        Ok(WebhookSecret { text, key })
    }

    /// Reads a `whsec_` secret (a stored one, or the spec's test vector).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if key.len() < 16 {
            return Err(SecretError::TooShort);
        }
        Ok(WebhookSecret { text: text.to_owned(), key })
    }

    /// The `whsec_...` text: for the one response that shows it and for the state store, nowhere else.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The `webhook-signature` header value for one delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so this cannot fail; the fallback only keeps the signature
        // well-formed (and invalid) if it ever did.
        let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(&self.key) else {
            return "v1,".to_owned();
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's own example.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        let secret = WebhookSecret::parse(SPEC_SECRET).expect("the spec's secret parses");
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn changing_id_timestamp_or_body_changes_the_signature() {
        let secret = WebhookSecret::parse(SPEC_SECRET).expect("parses");
        let base = secret.sign("a", 1, b"{}");
        assert_ne!(base, secret.sign("b", 1, b"{}"));
        assert_ne!(base, secret.sign("a", 2, b"{}"));
        assert_ne!(base, secret.sign("a", 1, b"{ }"));
    }

    #[test]
    fn generated_secrets_have_the_prefix_32_bytes_and_round_trip() {
        let secret = WebhookSecret::generate().expect("random");
        assert!(secret.expose().starts_with("whsec_"));
        let again = WebhookSecret::parse(secret.expose()).expect("parses");
        assert_eq!(again.key.len(), SECRET_BYTES);
        assert_eq!(again, secret);
        assert_ne!(WebhookSecret::generate().expect("random"), secret, "secrets are random");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = WebhookSecret::parse(SPEC_SECRET).expect("parses");
        assert_eq!(format!("{secret:?}"), "WebhookSecret(***)");
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert!(matches!(WebhookSecret::parse("MfKQ9r8GKYqrTwjU"), Err(SecretError::MissingPrefix)));
        assert!(matches!(WebhookSecret::parse("whsec_!!!"), Err(SecretError::NotBase64)));
        assert!(matches!(WebhookSecret::parse("whsec_AAAA"), Err(SecretError::TooShort)));
    }
}
