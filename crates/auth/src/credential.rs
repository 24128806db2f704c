//! Issued tokens and their stored form. A token is `esgfev_` + base64url(32 bytes from the OS RNG); only its
//! SHA-256 is ever stored or kept in memory, so a copy of the state store does not let anyone in.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::{Secret, TOKEN_PREFIX};

/// SHA-256 of a token. Hex in storage; deliberately no `Debug` of the bytes (a hash of a low-entropy env token
/// could be brute-forced, so it stays out of logs too).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenHash(pub(crate) [u8; 32]);

impl TokenHash {
    pub(crate) fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    pub(crate) fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    pub(crate) fn to_hex(self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        out
    }

    pub(crate) fn from_hex(hex: &str) -> Option<TokenHash> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            }
        }
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(TokenHash(out))
    }

    /// The short public id of a credential.
    pub(crate) fn id(self) -> String {
        self.to_hex()[..8].to_owned()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", self.id())
    }
}

impl Serialize for TokenHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(deserializer)?;
        TokenHash::from_hex(&hex).ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

/// A fresh token from the OS RNG.
pub(crate) fn generate_token() -> Result<Secret, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 43);
    token.push_str(TOKEN_PREFIX);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut token);
    Ok(Secret(token))
}

/// Minimum strength of a token supplied from outside (the operator's environment variable): the prefix plus at
/// least 128 bits' worth of base64url characters.
pub(crate) fn check_external_token(token: &str) -> Result<(), String> {
    let Some(rest) = token.strip_prefix(TOKEN_PREFIX) else {
        return Err(format!("the operator token must start with '{TOKEN_PREFIX}'"));
    };
    if rest.len() < 22 || rest.len() > 512 {
        return Err("the operator token must have 22 to 512 characters after its prefix".to_owned());
    }
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(
            "the operator token may only use base64url characters (A-Z a-z 0-9 - _) after its prefix"
                .to_owned(),
        );
    }
    Ok(())
}

/// Principal names: `[a-z0-9][a-z0-9._-]{0,62}`. They double as Kafka SASL usernames, hence the strict set.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "principal name '{}' must match [a-z0-9][a-z0-9._-]{{0,62}}",
            name.chars().take(80).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_prefix_and_fifty_characters() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), 50);
        assert_ne!(a.expose(), b.expose());
        assert!(check_external_token(a.expose()).is_ok());
    }

    #[test]
    fn hash_round_trips_through_hex() {
        let h = TokenHash::of("esgfev_x");
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(h.to_hex().len(), 64);
        assert!(TokenHash::from_hex("zz").is_none());
        assert!(TokenHash::from_hex(&"G".repeat(64)).is_none());
        assert!(h.ct_eq(&TokenHash::of("esgfev_x")));
        assert!(!h.ct_eq(&TokenHash::of("esgfev_y")));
    }

    #[test]
    fn name_rules() {
        for ok in ["a", "0", "data-node.llnl_1", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", ".a", "a b", "é", &"a".repeat(64), "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn external_tokens_need_prefix_and_length() {
        assert!(check_external_token("secret").is_err());
        assert!(check_external_token("esgfev_short").is_err());
        assert!(check_external_token(&format!("esgfev_{}", "a".repeat(21))).is_err());
        assert!(check_external_token(&format!("esgfev_{}", "a".repeat(22))).is_ok());
        assert!(check_external_token(&format!("esgfev_{}!", "a".repeat(22))).is_err());
    }
}
