//! OAuth2/OIDC bearer JWTs: signature against the issuer's JWKS (RS256 or ES256), then `iss`, `aud`, `exp`
//! and `nbf`, then the subject claim, which the caller maps to a registered principal.
//!
//! JWKS come from a file or a URL. Both are loaded at open and reloaded when a token names a key we do not
//! know (the issuer rotated its keys), at most once a minute per issuer so that tokens with made-up `kid`s
//! cannot turn us into a request amplifier against the identity provider.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use esgf_events_engine::Clock;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::error::AuthError;
use crate::model::{JwksSource, OidcIssuerConfig};

/// A JWKS bigger than this is not a key set.
const MAX_JWKS_BYTES: usize = 1 << 20;
const MAX_JWKS_KEYS: usize = 64;
const REFRESH_INTERVAL_MS: i64 = 60_000;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_S: i64 = 60;
/// Longer than any sane JWT; bounds the work done on garbage.
const MAX_JWT_LEN: usize = 16 * 1024;

struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

struct Issuer {
    config: OidcIssuerConfig,
    keys: RwLock<Vec<Arc<VerifyKey>>>,
    /// When the keys were last (re)loaded or a reload was last tried. A tokio mutex: concurrent requests with the
    /// same new `kid` wait for one reload instead of each starting their own.
    last_load_ms: tokio::sync::Mutex<Option<i64>>,
}

/// A token whose signature and claims checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) issuer: String,
    pub(crate) subject: String,
}

pub(crate) struct Oidc {
    issuers: Vec<Issuer>,
    http: Option<reqwest::Client>,
    clock: Arc<dyn Clock>,
}

/// Three dot-separated base64url segments: the compact JWS form.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let b64url = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    !header.is_empty() && !payload.is_empty() && b64url(header) && b64url(payload) && b64url(signature)
}

impl Oidc {
    /// Loads every issuer's keys. A JWKS file that cannot be read is a configuration error; a JWKS URL that
    /// cannot be fetched is only logged (the identity provider may be down for a moment) and retried on demand.
    pub(crate) async fn open(configs: &[OidcIssuerConfig], clock: Arc<dyn Clock>) -> Result<Oidc, String> {
        // Only one crypto backend is compiled in, but should another crate enable jsonwebtoken's other backend,
        // its automatic choice would panic at the first verification; choosing explicitly avoids that.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();

        let needs_http = configs.iter().any(|c| matches!(c.jwks, JwksSource::Url(_)));
        let http = if needs_http {
            Some(
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .connect_timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| format!("cannot build the HTTP client for JWKS: {e}"))?,
            )
        } else {
            None
        };
        let mut oidc = Oidc { issuers: Vec::with_capacity(configs.len()), http, clock };
        for config in configs {
            if config.issuer.is_empty() || config.audience.is_empty() || config.subject_claim.is_empty() {
                return Err(format!(
                    "OIDC issuer '{}': issuer, audience and subject_claim must not be empty",
                    config.issuer
                ));
            }
            if oidc.issuers.iter().any(|i| i.config.issuer == config.issuer) {
                return Err(format!("OIDC issuer '{}' is configured twice", config.issuer));
            }
            let issuer = Issuer {
                config: config.clone(),
                keys: RwLock::new(Vec::new()),
                last_load_ms: tokio::sync::Mutex::new(None),
            };
            match oidc.load(&issuer.config).await {
                Ok(keys) => {
                    tracing::info!(issuer = %config.issuer, keys = keys.len(), "loaded OIDC signing keys");
                    issuer.replace_keys(keys);
                    *issuer.last_load_ms.lock().await = Some(oidc.clock.now_ms());
                }
                Err(e) if matches!(config.jwks, JwksSource::Url(_)) => {
                    tracing::warn!(issuer = %config.issuer, error = %e, "cannot fetch OIDC signing keys; will retry when a token arrives");
                }
                Err(e) => return Err(format!("OIDC issuer '{}': {e}", config.issuer)),
            }
            oidc.issuers.push(issuer);
        }
        Ok(oidc)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    async fn load(&self, config: &OidcIssuerConfig) -> Result<Vec<Arc<VerifyKey>>, String> {
        let body = match &config.jwks {
            JwksSource::File(path) => {
                let meta = tokio::fs::metadata(path)
                    .await
                    .map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?;
                if meta.len() > MAX_JWKS_BYTES as u64 {
                    return Err(format!(
                        "JWKS file {} is larger than {MAX_JWKS_BYTES} bytes",
                        path.display()
                    ));
                }
                tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?
            }
            JwksSource::Url(url) => {
                let Some(http) = &self.http else {
                    return Err("no HTTP client".to_owned());
                };
                fetch(http, url).await?
            }
        };
        parse_jwks(&body)
    }

    /// Checks a JWT and returns who it names. Never logs or returns the token.
    pub(crate) async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        if token.len() > MAX_JWT_LEN {
            return Err(AuthError::Invalid("the JWT is too long".to_owned()));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("the JWT header is malformed".to_owned()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::Invalid(format!(
                "JWT algorithm {:?} is not accepted (RS256 or ES256)",
                header.alg
            )));
        }

        // The issuer picks the key set, so it is read before the signature is checked; `decode` below then
        // verifies it as part of the signed claims.
        #[derive(Deserialize)]
        struct Unverified {
            iss: Option<String>,
        }
        let unverified: Unverified = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| AuthError::Invalid("the JWT claims are malformed".to_owned()))?;
        let Some(iss) = unverified.iss else {
            return Err(AuthError::Invalid("the JWT has no 'iss' claim".to_owned()));
        };
        let Some(issuer) = self.issuers.iter().find(|i| i.config.issuer == iss) else {
            return Err(AuthError::Invalid(format!("JWT issuer '{}' is not trusted", truncate(&iss))));
        };

        let key = self.key_for(issuer, header.kid.as_deref(), header.alg).await?;

        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_audience(&[&issuer.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Time is checked below against the injected clock, so tests can move it.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| {
                AuthError::Invalid(match e.kind() {
                    ErrorKind::InvalidSignature => "the JWT signature does not verify".to_owned(),
                    ErrorKind::InvalidIssuer => format!("the JWT issuer is not '{}'", issuer.config.issuer),
                    ErrorKind::InvalidAudience => {
                        format!("the JWT audience does not include '{}'", issuer.config.audience)
                    }
                    ErrorKind::MissingRequiredClaim(claim) => format!("the JWT has no '{claim}' claim"),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
                        "the JWT algorithm does not match the issuer's key".to_owned()
                    }
                    _ => "the JWT is malformed".to_owned(),
                })
            })?;
        let claims = data.claims;

        let now_s = self.clock.now_ms().div_euclid(1000);
        let exp = numeric_claim(&claims, "exp")?
            .ok_or_else(|| AuthError::Invalid("the JWT has no 'exp' claim".to_owned()))?;
        if exp.saturating_add(LEEWAY_S) < now_s {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = numeric_claim(&claims, "nbf")?
            && nbf.saturating_sub(LEEWAY_S) > now_s
        {
            return Err(AuthError::Invalid("the JWT is not valid yet ('nbf' is in the future)".to_owned()));
        }

        let claim = &issuer.config.subject_claim;
        let Some(subject) = claims.get(claim).and_then(Value::as_str) else {
            return Err(AuthError::Invalid(format!("the JWT has no string '{claim}' claim")));
        };
        Ok(Verified { issuer: issuer.config.issuer.clone(), subject: subject.to_owned() })
    }

    async fn key_for(
        &self,
        issuer: &Issuer,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, AuthError> {
        if let Some(key) = issuer.pick(kid, alg)? {
            return Ok(key);
        }
        // Unknown key: the issuer may have rotated. Reload, unless we did so within the last minute.
        {
            let mut last = issuer.last_load_ms.lock().await;
            // Another request may have reloaded while we waited for the lock.
            if let Some(key) = issuer.pick(kid, alg)? {
                return Ok(key);
            }
            let now = self.clock.now_ms();
            if last.is_none_or(|t| now.saturating_sub(t) >= REFRESH_INTERVAL_MS) {
                *last = Some(now);
                match self.load(&issuer.config).await {
                    Ok(keys) => {
                        tracing::info!(issuer = %issuer.config.issuer, keys = keys.len(), "reloaded OIDC signing keys");
                        issuer.replace_keys(keys);
                    }
                    Err(e) => {
                        tracing::warn!(issuer = %issuer.config.issuer, error = %e, "cannot reload OIDC signing keys")
                    }
                }
            }
        }
        issuer.pick(kid, alg)?.ok_or_else(|| {
            AuthError::Invalid(match kid {
                Some(kid) => format!(
                    "issuer '{}' has no {alg:?} key with kid '{}'",
                    issuer.config.issuer,
                    truncate(kid)
                ),
                None => format!("issuer '{}' has no {alg:?} key", issuer.config.issuer),
            })
        })
    }
}

impl Issuer {
    /// The key a token asks for. Without a `kid` the issuer's key for the algorithm must be unambiguous.
    fn pick(&self, kid: Option<&str>, alg: Algorithm) -> Result<Option<Arc<VerifyKey>>, AuthError> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut matching = keys.iter().filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid));
        let first = matching.next().cloned();
        if first.is_some() && kid.is_none() && matching.next().is_some() {
            return Err(AuthError::Invalid(
                "the JWT has no 'kid' and its issuer has several keys".to_owned(),
            ));
        }
        Ok(first)
    }

    fn replace_keys(&self, keys: Vec<Arc<VerifyKey>>) {
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
    }
}

fn numeric_claim(claims: &serde_json::Map<String, Value>, name: &str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            // NumericDate may carry a fraction; whole seconds are precise enough with a minute of leeway.
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| AuthError::Invalid(format!("the JWT '{name}' claim is not a number"))),
    }
}

/// Identity-provider values echoed in errors are attacker-controlled; keep them short.
fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response =
        http.get(url).send().await.map_err(|e| format!("cannot fetch JWKS from {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("fetching JWKS from {url}: HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|e| format!("cannot fetch JWKS from {url}: {e}"))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("JWKS at {url} is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Keeps the keys we can use (RS256, ES256 on P-256; signature use) and skips the rest, so one exotic key in an
/// issuer's set does not make the whole set unusable.
fn parse_jwks(body: &[u8]) -> Result<Vec<Arc<VerifyKey>>, String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| format!("the JWKS is not valid: {e}"))?;
    let mut keys = Vec::new();
    for value in raw.keys.into_iter().take(MAX_JWKS_KEYS) {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::debug!(error = %e, "skipping a JWKS entry that is not a JWK");
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        match DecodingKey::from_jwk(&jwk) {
            Ok(key) => keys.push(Arc::new(VerifyKey { kid: jwk.common.key_id.clone(), alg, key })),
            Err(e) => tracing::debug!(kid = ?jwk.common.key_id, error = %e, "skipping an unusable JWK"),
        }
    }
    Ok(keys)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Key material for tests: fresh keys, their JWKs, and signed tokens.

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    pub(crate) struct TestKey {
        pub(crate) kid: String,
        pub(crate) alg: jsonwebtoken::Algorithm,
        pub(crate) encoding: EncodingKey,
        pub(crate) jwk: Value,
    }

    /// ES256 on P-256: the JWK built by hand from the raw public point 0x04 || x || y.
    pub(crate) fn es256(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw();
        assert_eq!(raw.len(), 65);
        assert_eq!(raw[0], 4);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        });
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        TestKey { kid: kid.to_owned(), alg: jsonwebtoken::Algorithm::ES256, encoding, jwk }
    }

    /// RS256 (2048 bits); the JWK comes from jsonwebtoken's own conversion of the private key.
    pub(crate) fn rs256(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        TestKey {
            kid: kid.to_owned(),
            alg: jsonwebtoken::Algorithm::RS256,
            encoding,
            jwk: serde_json::to_value(jwk).unwrap(),
        }
    }

    pub(crate) fn jwks(keys: &[&TestKey]) -> String {
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
    }

    pub(crate) fn sign(key: &TestKey, claims: &Value) -> String {
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use esgf_events_engine::ManualClock;
    use serde_json::json;

    const ISS: &str = "https://idp.example.org/realms/esgf";
    const AUD: &str = "esgf-events";
    const NOW_MS: i64 = 1_800_000_000_000;

    fn config(jwks: JwksSource) -> OidcIssuerConfig {
        OidcIssuerConfig {
            issuer: ISS.to_owned(),
            audience: AUD.to_owned(),
            jwks,
            subject_claim: "sub".to_owned(),
        }
    }

    async fn oidc_with(keys: &[&TestKey], dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> Oidc {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks(keys)).unwrap();
        Oidc::open(&[config(JwksSource::File(path))], clock).await.unwrap()
    }

    fn claims(exp_s: i64) -> Value {
        json!({ "iss": ISS, "aud": AUD, "sub": "alice", "exp": exp_s, "iat": exp_s - 300 })
    }

    #[test]
    fn jwt_shape_detection() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt("eyJh.eyJz."));
        assert!(!looks_like_jwt("esgfev_abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt(".b.c"));
        assert!(!looks_like_jwt("a b.c.d"));
    }

    #[tokio::test]
    async fn es256_and_rs256_tokens_verify() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let (ec, rsa) = (es256("ec1"), rs256("rsa1"));
        let oidc = oidc_with(&[&ec, &rsa], &dir, clock).await;
        for key in [&ec, &rsa] {
            let verified = oidc.verify(&sign(key, &claims(NOW_MS / 1000 + 600))).await.unwrap();
            assert_eq!(verified, Verified { issuer: ISS.to_owned(), subject: "alice".to_owned() });
        }
    }

    #[tokio::test]
    async fn expiry_follows_the_injected_clock_with_a_minute_of_leeway() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let key = es256("k");
        let oidc = oidc_with(&[&key], &dir, clock.clone()).await;
        let token = sign(&key, &claims(NOW_MS / 1000));
        oidc.verify(&token).await.unwrap();
        clock.advance_ms(60_000);
        oidc.verify(&token).await.unwrap();
        clock.advance_ms(1_000);
        assert!(matches!(oidc.verify(&token).await, Err(AuthError::Expired)));
    }

    #[tokio::test]
    async fn key_without_kid_match_is_refused_and_reload_is_throttled() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let (old, new) = (es256("old"), es256("new"));
        let oidc = oidc_with(&[&old], &dir, clock.clone()).await;
        // The issuer rotates: the file now has the new key, but we loaded it less than a minute ago.
        std::fs::write(dir.path().join("jwks.json"), jwks(&[&old, &new])).unwrap();
        let token = sign(&new, &claims(NOW_MS / 1000 + 600));
        let err = oidc.verify(&token).await.unwrap_err();
        assert!(err.to_string().contains("no ES256 key with kid 'new'"), "{err}");
        clock.advance_ms(REFRESH_INTERVAL_MS);
        oidc.verify(&token).await.unwrap();
    }

    #[tokio::test]
    async fn unusable_jwks_entries_are_skipped() {
        let keys = parse_jwks(
            json!({"keys": [
                {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "hmac"},
                {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "p384"},
                {"kty": "weird"},
                es256("good").jwk,
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("good"));
    }

    #[tokio::test]
    async fn missing_jwks_file_fails_open() {
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let err = Oidc::open(&[config(JwksSource::File("/nonexistent/jwks.json".into()))], clock)
            .await
            .err()
            .unwrap();
        assert!(err.contains("cannot read JWKS file"), "{err}");
    }

    #[tokio::test]
    async fn jwks_is_fetched_from_a_url_and_refetched_for_a_new_kid() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (first, second) = (es256("first"), es256("second"));
        let bodies = vec![jwks(&[&first]), jwks(&[&first, &second])];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for body in bodies {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 4096];
                let mut read = 0;
                while !request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    read += socket.read(&mut request[read..]).await.unwrap();
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await.unwrap();
            }
        });
        let clock = Arc::new(ManualClock::new(NOW_MS));
        let oidc = Oidc::open(&[config(JwksSource::Url(format!("http://{addr}/jwks")))], clock.clone())
            .await
            .unwrap();
        oidc.verify(&sign(&first, &claims(NOW_MS / 1000 + 600))).await.unwrap();
        clock.advance_ms(REFRESH_INTERVAL_MS);
        oidc.verify(&sign(&second, &claims(NOW_MS / 1000 + 600))).await.unwrap();
        server.await.unwrap();
    }
}
