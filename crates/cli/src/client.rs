//! A small async client of the service's HTTP API, shared by the `topic`, `publish`, `consume` and `admin`
//! commands.
//!
//! Failures are typed: a server's RFC 9457 problem becomes [`ClientError::Problem`], shown as
//! "<title>: <detail>"; anything else keeps enough context (URL, status) to act on.
//!
//! Credentials: every request carries `Authorization: Bearer <token>` when a token is found, looking in this
//! order: `--token`, `--token-file`, `ESGF_EVENTS_TOKEN`, `ESGF_EVENTS_TOKEN_FILE`, then
//! [`DEFAULT_TOKEN_FILE`] (the operator token a server with the default data directory writes, so an operator
//! on the server's machine needs no setup). A token is never printed, not even in an error.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Where the server writes the operator token with the default `storage.data_dir`.
pub const DEFAULT_TOKEN_FILE: &str = "data/operator.token";

/// Responses larger than this are refused rather than buffered: a bounded client cannot be made to exhaust
/// memory by a misbehaving server (a read page is a few MiB at most).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Token files larger than this are not what they claim to be (a JWT is a few KiB).
const MAX_TOKEN_FILE_BYTES: u64 = 64 << 10;

/// Bounds every request but long-polls, whose bound is their `wait` plus this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server is and how to prove who we are: flattened into every client command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// Base URL of the esgf-events server.
    #[arg(long, global = true, value_name = "URL", env = "ESGF_EVENTS_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token sent with every request [env: ESGF_EVENTS_TOKEN]. Other users of the machine can see a
    /// command line: prefer --token-file or the environment.
    #[arg(long, global = true, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the bearer token [env: ESGF_EVENTS_TOKEN_FILE; default: ./data/operator.token if readable].
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the certificate authority (or the self-signed certificate) to trust for an https:// server,
    /// instead of the system's roots.
    #[arg(long, global = true, value_name = "FILE", env = "ESGF_EVENTS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl ServerArgs {
    pub fn client(&self) -> Result<Client, ClientError> {
        let token = resolve_token(self, |name| std::env::var_os(name), Path::new(DEFAULT_TOKEN_FILE))?;
        if token.is_some() {
            warn_if_clear_text(&self.server);
        }
        let ca_cert = self.ca_cert.as_deref().map(read_ca_file).transpose()?;
        Client::new(&self.server, ClientOptions { token, ca_cert })
    }
}

/// A credential sent in clear text to another machine can be read by anyone on the path.
fn warn_if_clear_text(server: &str) {
    let Ok(url) = Url::parse(server) else { return };
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if url.scheme() == "http" && !loopback {
        eprintln!("warning: sending a token over plain http:// to {server}; anyone on the path can read it");
    }
}

/// The token `args` and the environment (`env`) name, read from a file if they name one; else the contents
/// of `default_file` if it can be read; else none.
pub fn resolve_token(
    args: &ServerArgs,
    env: impl Fn(&str) -> Option<OsString>,
    default_file: &Path,
) -> Result<Option<String>, ClientError> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(token) = &args.token {
        return checked_token(token.clone(), "--token").map(Some);
    }
    if let Some(path) = &args.token_file {
        return read_token_file(path).map(Some);
    }
    if let Some(token) = env("ESGF_EVENTS_TOKEN") {
        let token = token.into_string().map_err(|_| ClientError::InvalidToken {
            origin: "ESGF_EVENTS_TOKEN".into(),
            reason: "is not valid UTF-8".into(),
        })?;
        return checked_token(token, "ESGF_EVENTS_TOKEN").map(Some);
    }
    if let Some(path) = env("ESGF_EVENTS_TOKEN_FILE") {
        return read_token_file(Path::new(&path)).map(Some);
    }
    // Only a convenience: a missing, unreadable or empty default file just means "no token".
    Ok(read_token_file(default_file).ok())
}

fn read_token_file(path: &Path) -> Result<String, ClientError> {
    let origin = || format!("token file {}", path.display());
    let file = std::fs::File::open(path)
        .map_err(|source| ClientError::TokenFile { path: path.to_owned(), source })?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| ClientError::TokenFile { path: path.to_owned(), source })?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(ClientError::InvalidToken {
            origin: origin(),
            reason: format!("is larger than {MAX_TOKEN_FILE_BYTES} bytes"),
        });
    }
    // A file written by `echo` or an editor ends with a newline that is not part of the token.
    checked_token(text.trim().to_owned(), &origin())
}

/// `token` if it can travel in an HTTP header; the error never quotes it.
fn checked_token(token: String, origin: &str) -> Result<String, ClientError> {
    let invalid =
        |reason: &str| ClientError::InvalidToken { origin: origin.to_owned(), reason: reason.to_owned() };
    if token.is_empty() {
        return Err(invalid("is empty"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("contains spaces, control or non-ASCII characters"));
    }
    Ok(token)
}

/// The same bounded read as the replica's `--ca-cert`, reported as this client's error.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    esgf_events_replica::source::read_ca_file(path).map_err(|e| match e {
        esgf_events_replica::SourceError::CaCert { path, reason } => ClientError::CaCert { path, reason },
        other => ClientError::CaCert { path: path.to_owned(), reason: other.to_string() },
    })
}

/// How a [`Client`] authenticates and whom it trusts.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// PEM certificates: the only roots trusted for https:// (`None`: the system's).
    pub ca_cert: Option<Vec<u8>>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("ca_cert", &self.ca_cert.as_ref().map(Vec::len))
            .finish()
    }
}

/// An RFC 9457 problem document as the server sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    #[serde(rename = "type", default)]
    pub problem_type: Option<String>,
    pub title: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub detail: Option<String>,
    /// Extension members (e.g. `earliest_offset`, `index`).
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// The `<kind>` of `urn:esgf-events:problem:<kind>`.
    pub fn kind(&self) -> Option<&str> {
        self.problem_type.as_deref()?.strip_prefix("urn:esgf-events:problem:")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail.as_deref().filter(|d| !d.is_empty()) {
            Some(detail) => write!(f, "{}: {detail}", self.title),
            None => f.write_str(&self.title),
        }
    }
}

/// What to do about a refusal, for the statuses whose fix is on the caller's side.
fn hint(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => {
            " (give a valid token with --token-file FILE, ESGF_EVENTS_TOKEN_FILE or ESGF_EVENTS_TOKEN; an \
             operator on the server's machine can use <data_dir>/operator.token)"
        }
        _ => "",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The server answered with a problem document.
    #[error("{problem}{}", hint(*status))]
    Problem {
        status: StatusCode,
        problem: Box<Problem>,
        /// From `Retry-After` (429, 503).
        retry_after: Option<Duration>,
    },
    #[error("cannot reach the server at {server}")]
    Unreachable {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server answered {status} with a body esgf-events does not understand: {snippet}")]
    UnexpectedResponse { status: StatusCode, snippet: String },
    #[error("the server's response is larger than {MAX_RESPONSE_BYTES} bytes")]
    ResponseTooLarge,
    #[error("cannot read the token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token from {origin} {reason}")]
    InvalidToken { origin: String, reason: String },
    #[error("cannot use {} as a CA certificate: {reason}", path.display())]
    CaCert { path: PathBuf, reason: String },
}

impl ClientError {
    /// Worth retrying while following a topic: the server is away or restarting, not refusing the request.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Http { source, .. } => {
                source.is_timeout() || source.is_request() || source.is_body()
            }
            ClientError::Problem { status, .. } | ClientError::UnexpectedResponse { status, .. } => {
                matches!(
                    *status,
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
                )
            }
            _ => false,
        }
    }

    /// How long the server asked us to wait before trying again, if it refused for rate (429).
    pub fn rate_limited(&self) -> Option<Duration> {
        match self {
            ClientError::Problem { status: StatusCode::TOO_MANY_REQUESTS, retry_after, .. } => {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            _ => None,
        }
    }
}

/// `POST /v1/topics` body.
#[derive(Debug, Clone, Serialize)]
pub struct CreateTopic {
    pub name: String,
    pub partitions: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
}

/// A topic as `GET /v1/topics/{topic}` describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: u32,
    pub retention: String,
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub offsets: Vec<PartitionOffsets>,
    /// Readable without credentials (servers before access control did not say).
    #[serde(default)]
    pub public: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PartitionOffsets {
    pub partition: u32,
    pub earliest: u64,
    /// The next offset to be written.
    pub latest: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TopicList {
    pub topics: Vec<TopicDescription>,
}

/// Where one appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Placement {
    pub partition: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PublishResponse {
    pub results: Vec<Placement>,
}

/// Where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// The oldest retained event.
    Earliest,
    Offset(u64),
    /// The first event at or after this RFC 3339 time.
    Since(String),
}

/// A decoded response with the bytes it came from, for `--json` output that shows what the server said.
#[derive(Debug, Clone)]
pub struct WithRaw<T> {
    pub value: T,
    pub raw: Bytes,
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// Marked sensitive, so reqwest never shows it in a `Debug` of a request.
    authorization: Option<HeaderValue>,
}

impl Client {
    pub fn new(server: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::InvalidUrl { url: server.to_owned(), reason };
        let base = Url::parse(server).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("expected an http:// or https:// URL".into()));
        }
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("esgf-events/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &options.ca_cert {
            let ca_error = |reason: String| ClientError::CaCert { path: PathBuf::from("--ca-cert"), reason };
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("holds no PEM certificate".into()));
            }
            // Like curl's --cacert: these roots replace the system's, so nothing else can vouch for the server.
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| invalid(e.to_string()))?;
        let authorization = match options.token {
            Some(token) => {
                let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    ClientError::InvalidToken {
                        origin: "the token".into(),
                        reason: "cannot be sent in a header".into(),
                    }
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Client { http, base, authorization })
    }

    /// Whether requests carry a token.
    pub fn has_token(&self) -> bool {
        self.authorization.is_some()
    }

    pub fn server(&self) -> &str {
        self.base.as_str()
    }

    /// `base` + path segments (each percent-encoded) + query pairs.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        self.send_with_status(method, url, body, timeout).await.map(|(_, body)| body)
    }

    /// [`Client::send`], also returning the success status (some answers differ only in it: 201 and 200).
    async fn send_with_status(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut request = self.http.request(method, url.clone()).timeout(timeout);
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization.clone());
        }
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        let wrap = |source: reqwest::Error| {
            if source.is_connect() {
                ClientError::Unreachable { server: self.base.to_string(), source }
            } else {
                ClientError::Http { url: url.to_string(), source }
            }
        };
        let mut response = request.send().await.map_err(wrap)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if response.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
            return Err(ClientError::ResponseTooLarge);
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(wrap)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ClientError::ResponseTooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let body = body.freeze();
        if status.is_success() {
            Ok((status, body))
        } else {
            Err(error_from_response(status, &body, retry_after))
        }
    }

    /// A request with an optional JSON body to the path `segments` (each percent-encoded) under the server's
    /// base; the success status and the answer as JSON (`null` when it is empty, as a 204's is). For the
    /// operations commands (`admin maintenance|announce|recipients|deliveries`), whose output is generic.
    pub async fn request_json(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, WithRaw<serde_json::Value>), ClientError> {
        let body = body.map(|value| Bytes::from(value.to_string()));
        let (status, raw) =
            self.send_with_status(method, self.url(segments, &[]), body, REQUEST_TIMEOUT).await?;
        let value = if raw.is_empty() { serde_json::Value::Null } else { decode(status, &raw)? };
        Ok((status, WithRaw { value, raw }))
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<WithRaw<T>, ClientError> {
        let raw = self.send(method, url, body, timeout).await?;
        let value = decode(StatusCode::OK, &raw)?;
        Ok(WithRaw { value, raw })
    }

    pub async fn create_topic(
        &self,
        request: &CreateTopic,
    ) -> Result<WithRaw<TopicDescription>, ClientError> {
        let body = Bytes::from(serde_json::to_vec(request).expect("strings and numbers always serialize"));
        self.send_json(Method::POST, self.url(&["v1", "topics"], &[]), Some(body), REQUEST_TIMEOUT).await
    }

    pub async fn list_topics(&self) -> Result<WithRaw<TopicList>, ClientError> {
        self.send_json(Method::GET, self.url(&["v1", "topics"], &[]), None, REQUEST_TIMEOUT).await
    }

    pub async fn describe_topic(&self, name: &str) -> Result<WithRaw<TopicDescription>, ClientError> {
        self.send_json(Method::GET, self.url(&["v1", "topics", name], &[]), None, REQUEST_TIMEOUT).await
    }

    /// Publishes `body`, a JSON array of events, as one batch.
    pub async fn publish(
        &self,
        topic: &str,
        key: Option<&str>,
        body: Bytes,
    ) -> Result<PublishResponse, ClientError> {
        let query: Vec<(&str, String)> = key.map(|k| ("key", k.to_owned())).into_iter().collect();
        let url = self.url(&["v1", "topics", topic, "events"], &query);
        Ok(self.send_json(Method::POST, url, Some(body), REQUEST_TIMEOUT).await?.value)
    }

    /// One read of a partition; the raw body is returned for the caller to decode without copying values.
    pub async fn read_events(
        &self,
        topic: &str,
        partition: u32,
        from: &ReadFrom,
        limit: usize,
        wait: Option<Duration>,
    ) -> Result<Bytes, ClientError> {
        let mut query = vec![("partition", partition.to_string()), ("limit", limit.to_string())];
        match from {
            ReadFrom::Earliest => {}
            ReadFrom::Offset(offset) => query.push(("offset", offset.to_string())),
            ReadFrom::Since(time) => query.push(("since", time.clone())),
        }
        let mut timeout = REQUEST_TIMEOUT;
        if let Some(wait) = wait {
            query.push(("wait", wait.as_secs_f64().to_string()));
            timeout = wait + REQUEST_TIMEOUT;
        }
        let url = self.url(&["v1", "topics", topic, "events"], &query);
        self.send(Method::GET, url, None, timeout).await
    }
}

/// The two kinds of principal an operator registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Producer,
    Consumer,
}

impl PrincipalKind {
    /// The collection's path segment (`/v1/producers`) and its key in a list body.
    pub fn collection(self) -> &'static str {
        match self {
            PrincipalKind::Producer => "producers",
            PrincipalKind::Consumer => "consumers",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            PrincipalKind::Producer => "producer",
            PrincipalKind::Consumer => "consumer",
        }
    }
}

/// A publish rate limit, as the server spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSpec {
    pub events_per_second: u32,
    pub burst: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
}

/// An identity at an OIDC issuer that maps to a principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcIdentity {
    pub issuer: String,
    pub subject: String,
}

/// `POST /v1/producers` (or consumers) body.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub name: String,
    pub topics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub oidc: Vec<OidcIdentity>,
}

/// `PATCH /v1/producers/{name}` body: absent fields stay; `Some(None)` (JSON `null`) clears.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrincipalUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Option<RateSpec>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc: Option<Vec<OidcIdentity>>,
}

/// A principal as the server shows it (never with a secret, except [`Issued::token`]).
#[derive(Debug, Clone, Deserialize)]
pub struct Principal {
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub rate: Option<RateSpec>,
    #[serde(default)]
    pub contact: Option<String>,
    #[serde(default)]
    pub oidc: Vec<OidcIdentity>,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub credentials: Vec<CredentialInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CredentialInfo {
    /// A fingerprint, not the secret.
    pub id: String,
    pub created: i64,
    #[serde(default)]
    pub expires: Option<i64>,
}

/// A principal with its new token: the answer to a registration or a rotation, the only time the token is
/// shown. `Debug` hides the token.
#[derive(Clone, Deserialize)]
pub struct Issued {
    #[serde(flatten)]
    pub principal: Principal,
    pub token: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("principal", &self.principal).field("token", &"***").finish()
    }
}

/// An entry of the audit log.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    #[serde(default)]
    pub actor: Option<String>,
    pub action: String,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub remote: Option<String>,
    pub outcome: String,
}

/// One page of `GET /v1/audit`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<Box<serde_json::value::RawValue>>,
    /// The `after` of the next page.
    pub next: u64,
}

impl Client {
    fn json_body(value: &impl Serialize) -> Bytes {
        Bytes::from(serde_json::to_vec(value).expect("strings, numbers and options always serialize"))
    }

    pub async fn register(
        &self,
        kind: PrincipalKind,
        registration: &Registration,
    ) -> Result<WithRaw<Issued>, ClientError> {
        let url = self.url(&["v1", kind.collection()], &[]);
        self.send_json(Method::POST, url, Some(Self::json_body(registration)), REQUEST_TIMEOUT).await
    }

    /// Every principal of `kind`, and the raw `{"<collection>": [...]}` body.
    pub async fn list_principals(&self, kind: PrincipalKind) -> Result<WithRaw<Vec<Principal>>, ClientError> {
        let url = self.url(&["v1", kind.collection()], &[]);
        let raw = self.send(Method::GET, url, None, REQUEST_TIMEOUT).await?;
        let mut body: std::collections::HashMap<String, Vec<Principal>> = decode(StatusCode::OK, &raw)?;
        let value = body.remove(kind.collection()).unwrap_or_default();
        Ok(WithRaw { value, raw })
    }

    pub async fn get_principal(
        &self,
        kind: PrincipalKind,
        name: &str,
    ) -> Result<WithRaw<Principal>, ClientError> {
        let url = self.url(&["v1", kind.collection(), name], &[]);
        self.send_json(Method::GET, url, None, REQUEST_TIMEOUT).await
    }

    pub async fn update_principal(
        &self,
        kind: PrincipalKind,
        name: &str,
        update: &PrincipalUpdate,
    ) -> Result<WithRaw<Principal>, ClientError> {
        let url = self.url(&["v1", kind.collection(), name], &[]);
        self.send_json(Method::PATCH, url, Some(Self::json_body(update)), REQUEST_TIMEOUT).await
    }

    pub async fn rotate(&self, kind: PrincipalKind, name: &str) -> Result<WithRaw<Issued>, ClientError> {
        let url = self.url(&["v1", kind.collection(), name, "rotate"], &[]);
        self.send_json(Method::POST, url, None, REQUEST_TIMEOUT).await
    }

    pub async fn revoke(&self, kind: PrincipalKind, name: &str) -> Result<(), ClientError> {
        let url = self.url(&["v1", kind.collection(), name], &[]);
        self.send(Method::DELETE, url, None, REQUEST_TIMEOUT).await.map(drop)
    }

    /// Makes `topic` readable without credentials (`true`) or only with a grant (`false`).
    pub async fn set_topic_public(
        &self,
        topic: &str,
        public: bool,
    ) -> Result<WithRaw<TopicDescription>, ClientError> {
        let url = self.url(&["v1", "topics", topic], &[]);
        let body = Self::json_body(&serde_json::json!({ "public": public }));
        self.send_json(Method::PATCH, url, Some(body), REQUEST_TIMEOUT).await
    }

    /// Audit entries after sequence number `after`, oldest first, at most `limit`.
    pub async fn audit(&self, after: u64, limit: usize) -> Result<AuditPage, ClientError> {
        let url = self.url(&["v1", "audit"], &[("after", after.to_string()), ("limit", limit.to_string())]);
        Ok(self.send_json(Method::GET, url, None, REQUEST_TIMEOUT).await?.value)
    }
}

fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body)
        .map_err(|_| ClientError::UnexpectedResponse { status, snippet: snippet(body) })
}

fn error_from_response(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> ClientError {
    match serde_json::from_slice::<Problem>(body) {
        Ok(problem) => ClientError::Problem { status, problem: Box::new(problem), retry_after },
        Err(_) => ClientError::UnexpectedResponse { status, snippet: snippet(body) },
    }
}

/// The start of a body, for messages: enough to recognise a proxy's HTML error page.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > MAX {
        text.push('…');
    }
    if text.is_empty() { "(empty body)".to_owned() } else { text }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The error a response with this status and body becomes.
    pub(crate) fn problem_error(status: StatusCode, body: &[u8]) -> ClientError {
        error_from_response(status, body, None)
    }

    #[test]
    fn problem_is_shown_as_title_and_detail() {
        let body =
            br#"{"type":"urn:esgf-events:problem:topic-not-found","title":"Topic not found","status":404,
                        "detail":"topic 'x' does not exist","topic":"x"}"#;
        let err = error_from_response(StatusCode::NOT_FOUND, body, None);
        assert_eq!(err.to_string(), "Topic not found: topic 'x' does not exist");
        let ClientError::Problem { problem, .. } = err else { panic!() };
        assert_eq!(problem.kind(), Some("topic-not-found"));
        assert_eq!(problem.extensions["topic"], "x");
    }

    #[test]
    fn problem_without_detail_is_shown_as_title() {
        let err = error_from_response(StatusCode::NOT_FOUND, br#"{"title":"Not found"}"#, None);
        assert_eq!(err.to_string(), "Not found");
    }

    #[test]
    fn non_problem_error_body_is_quoted_briefly() {
        let html = format!("<html>\n<body>Bad   gateway</body>{}</html>", "x".repeat(500));
        let err = error_from_response(StatusCode::BAD_GATEWAY, html.as_bytes(), None);
        let text = err.to_string();
        assert!(text.contains("502 Bad Gateway"), "{text}");
        assert!(text.contains("<html> <body>Bad gateway"), "{text}");
        assert!(text.len() < 320, "{text}");
        assert!(err.is_transient());
    }

    #[test]
    fn urls_are_built_under_the_base_path_with_encoded_parts() {
        let client = Client::new("http://127.0.0.1:8080/esgf/", ClientOptions::default()).unwrap();
        let url = client.url(&["v1", "topics", "a b", "events"], &[("key", "k&v".to_owned())]);
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/esgf/v1/topics/a%20b/events?key=k%26v");
        let client = Client::new("http://localhost:1", ClientOptions::default()).unwrap();
        assert_eq!(client.url(&["v1", "topics"], &[]).as_str(), "http://localhost:1/v1/topics");
    }

    #[test]
    fn non_http_server_urls_are_rejected() {
        for bad in ["localhost:8080", "ftp://x", "not a url", "mailto:a@b"] {
            assert!(
                matches!(Client::new(bad, ClientOptions::default()), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    fn args(token: Option<&str>, token_file: Option<&Path>) -> ServerArgs {
        ServerArgs {
            server: DEFAULT_SERVER.into(),
            token: token.map(str::to_owned),
            token_file: token_file.map(Path::to_path_buf),
            ca_cert: None,
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, OsString)> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn token_is_looked_up_flag_then_file_flag_then_env_then_env_file_then_default_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (flag_file, env_file, default) = (
            file("flag", "from-flag-file\n"),
            file("env", "from-env-file"),
            file("default", " from-default \n"),
        );
        let all_env =
            [("ESGF_EVENTS_TOKEN", "from-env"), ("ESGF_EVENTS_TOKEN_FILE", env_file.to_str().unwrap())];
        let resolve =
            |args: &ServerArgs, env: &[(&str, &str)]| resolve_token(args, env_of(env), &default).unwrap();

        assert_eq!(resolve(&args(Some("from-flag"), None), &all_env).as_deref(), Some("from-flag"));
        assert_eq!(resolve(&args(None, Some(&flag_file)), &all_env).as_deref(), Some("from-flag-file"));
        assert_eq!(resolve(&args(None, None), &all_env).as_deref(), Some("from-env"));
        assert_eq!(resolve(&args(None, None), &all_env[1..]).as_deref(), Some("from-env-file"));
        assert_eq!(resolve(&args(None, None), &[("ESGF_EVENTS_TOKEN", "")]).as_deref(), Some("from-default"));
        let none = resolve_token(&args(None, None), env_of(&[]), &dir.path().join("absent")).unwrap();
        assert_eq!(none, None, "no default file: no token");
    }

    #[test]
    fn unusable_tokens_are_refused_without_being_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent");
        for bad in ["esgfev_has space", "esgfev_tab\tinside", "esgfev_non-ascii-é", ""] {
            let err = resolve_token(&args(Some(bad), None), env_of(&[]), &absent).unwrap_err();
            assert!(matches!(err, ClientError::InvalidToken { .. }), "{err:?}");
            if !bad.is_empty() {
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = resolve_token(&args(None, Some(&empty)), env_of(&[]), &absent).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = resolve_token(&args(None, Some(&absent)), env_of(&[]), &absent).unwrap_err();
        assert!(matches!(err, ClientError::TokenFile { .. }), "a named file must exist: {err:?}");
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'a'; MAX_TOKEN_FILE_BYTES as usize + 1]).unwrap();
        assert!(resolve_token(&args(None, Some(&huge)), env_of(&[]), &absent).is_err());
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let options = ClientOptions { token: Some("esgfev_secret123".into()), ca_cert: None };
        assert!(!format!("{options:?}").contains("secret123"));
        let client = Client::new("http://localhost:1", options).unwrap();
        assert!(client.has_token());
        assert!(!format!("{client:?}").contains("secret123"), "{client:?}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let options = ClientOptions { token: None, ca_cert: Some(b"not a certificate".to_vec()) };
        assert!(matches!(Client::new("https://localhost:1", options), Err(ClientError::CaCert { .. })));
    }

    #[test]
    fn unauthorized_tells_where_tokens_come_from_and_429_carries_its_wait() {
        let err = error_from_response(
            StatusCode::UNAUTHORIZED,
            br#"{"title":"Unauthorized","detail":"no token"}"#,
            None,
        );
        assert!(err.to_string().contains("--token-file"), "{err}");
        let err = error_from_response(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"title":"Too many requests"}"#,
            Some(Duration::from_secs(3)),
        );
        assert_eq!(err.rate_limited(), Some(Duration::from_secs(3)));
        assert_eq!(error_from_response(StatusCode::FORBIDDEN, b"{}", None).rate_limited(), None);
    }

    #[test]
    fn a_refused_request_is_not_transient() {
        let err =
            error_from_response(StatusCode::BAD_REQUEST, br#"{"title":"Invalid query","status":400}"#, None);
        assert!(!err.is_transient());
        let err = error_from_response(StatusCode::SERVICE_UNAVAILABLE, br#"{"title":"Shutting down"}"#, None);
        assert!(err.is_transient());
    }
}
