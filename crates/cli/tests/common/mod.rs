//! Test harness shared by the integration tests: runs the real `esgf-events` binary as a child process on a
//! free port with a temporary data directory, and talks to it over HTTP.
//!
//! The server is started with `--http-addr 127.0.0.1:0`; the bound address is read from the server's own log
//! line (`http_addr=...`), then `/readyz` is polled until it answers 200. No test waits a fixed time for it.
//!
//! Access control is on, as in production: every server gets `ESGF_EVENTS_OPERATOR_TOKEN` set to
//! [`operator_token`] (generated once per test process), and the clients built here send it, so tests that are
//! not about access control act as the operator. [`Options`] starts a server differently (no operator token in
//! the environment, TLS, extra flags).

// Every test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::{Client, ClientBuilder, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use tempfile::TempDir;

pub mod nats;

/// The binary under test, built by cargo for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_esgf-events");

/// How long a server may take from spawn to ready (or from SIGTERM to exit) before the test fails.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Interval between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Server log lines kept for diagnostics; older ones are dropped so a chatty server cannot exhaust memory.
const MAX_LOG_LINES: usize = 2000;

/// Log lines of every run of a server kept for [`Server::full_log`]; past this the history says it is partial.
const MAX_HISTORY_LINES: usize = 200_000;

/// The operator token every test server of this process accepts (unless started without one): the prefix and
/// 43 URL-safe base64 characters, like the tokens the server issues.
pub fn operator_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(random_token)
}

/// A fresh token of the server's shape (`fastrand` is no CSPRNG, which is fine for a test's secret).
pub fn random_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = fastrand::Rng::new();
    let secret: String = (0..43).map(|_| ALPHABET[rng.usize(..ALPHABET.len())] as char).collect();
    format!("esgfev_{secret}")
}

/// A client builder with bounded timeouts, sending `token` as a bearer token and trusting only `ca_pem` (when
/// given) for HTTPS.
pub fn client_builder(token: Option<&str>, ca_pem: Option<&[u8]>) -> ClientBuilder {
    esgf_events::install_crypto_provider();
    let mut builder =
        Client::builder().timeout(Duration::from_secs(60)).connect_timeout(Duration::from_secs(5));
    if let Some(token) = token {
        let mut value =
            reqwest::header::HeaderValue::try_from(format!("Bearer {token}")).expect("a token fits a header");
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).expect("CA certificate PEM");
        builder = builder.tls_certs_only(certs);
    }
    builder
}

/// A client that sends no credentials.
pub fn anonymous_client() -> Client {
    client_builder(None, None).build().expect("HTTP client")
}

/// A client acting as the principal whose token is `token`.
pub fn client_with_token(token: &str) -> Client {
    client_builder(Some(token), None).build().expect("HTTP client")
}

/// How to start a test server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Extra `ESGF_EVENTS_*` settings, passed again on every restart.
    pub env: Vec<(String, String)>,
    /// Extra arguments of `serve` (e.g. `--tls-cert FILE`).
    pub args: Vec<String>,
    /// Passed as `ESGF_EVENTS_OPERATOR_TOKEN`; `None`: the server generates `<data_dir>/operator.token`, which
    /// the harness then reads to act as the operator.
    pub operator_token: Option<String>,
    /// The server speaks HTTPS with a certificate this PEM vouches for.
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            env: Vec::new(),
            args: Vec::new(),
            operator_token: Some(operator_token().to_owned()),
            ca_pem: None,
        }
    }
}

/// Every log line of every run of one server, for scans that must see all of it.
#[derive(Debug, Default)]
struct History {
    lines: Vec<String>,
    truncated: bool,
}

/// The ESGF fixtures, beside the repository (`../shared/fixtures/esgf`), in development and in CI alike.
pub fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/esgf"));
    assert!(
        dir.is_dir(),
        "the ESGF fixtures directory {} is missing: the `shared` folder must sit beside the repository \
         (shared/fixtures/esgf holds the event samples these tests publish)",
        dir.display()
    );
    dir
}

/// One fixture event: where it came from and its exact JSON text (what the server must store).
#[derive(Debug, Clone)]
pub struct FixtureEvent {
    /// File name, plus `[i]` for an element of a Kafka record dump.
    pub name: String,
    /// The event's exact bytes, without the whitespace around it in the file.
    pub json: String,
}

/// A fixture file that holds a dump of Kafka consumer records rather than one event.
const KAFKA_DUMP: &str = "stac-transaction-api_esgfng_publish_event.json";

/// Every fixture event: each `*.json` of the fixtures directory except the `schema_*.json` files; the records
/// of the Kafka dump contribute their `value`s. Sorted by file name, so runs are reproducible.
pub fn fixture_events() -> Vec<FixtureEvent> {
    let dir = fixtures_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".json") && !name.starts_with("schema_")
        })
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with(KAFKA_DUMP)),
        "fixture {KAFKA_DUMP} is missing from {}",
        dir.display()
    );

    let mut events = Vec::new();
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if name == KAFKA_DUMP {
            #[derive(Deserialize)]
            struct KafkaRecord<'a> {
                #[serde(borrow)]
                value: &'a RawValue,
            }
            let records: Vec<KafkaRecord<'_>> = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not a Kafka record dump: {e}"));
            assert!(!records.is_empty(), "{name} holds no records");
            for (i, record) in records.iter().enumerate() {
                events
                    .push(FixtureEvent { name: format!("{name}[{i}]"), json: record.value.get().to_owned() });
            }
        } else {
            let raw: &RawValue =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            assert!(raw.get().starts_with('{'), "{name} is not one JSON object");
            events.push(FixtureEvent { name, json: raw.get().to_owned() });
        }
    }
    events
}

/// The key the server must derive from an ESGF envelope: `data.payload.item.id`, else `data.payload.item_id`.
pub fn expected_key(event_json: &str) -> Option<String> {
    let event: serde_json::Value = serde_json::from_str(event_json).expect("fixture is JSON");
    let payload = event.get("data")?.get("payload")?;
    let from_item = payload.get("item").and_then(|item| item.get("id")).and_then(|id| id.as_str());
    from_item.or_else(|| payload.get("item_id").and_then(|id| id.as_str())).map(str::to_owned)
}

/// A running (or stopped) `esgf-events serve` child process and the data directory it owns.
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    data_dir: TempDir,
    options: Options,
    /// The operator token in force: from the options, or read from the file the server generated.
    token: String,
    /// The current child's log lines (stderr), for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    history: Arc<Mutex<History>>,
    client: Client,
}

impl Server {
    /// Starts a server with the default configuration on a fresh data directory, and waits until it is ready.
    pub fn start() -> Server {
        Server::start_with_env(&[])
    }

    /// Like [`Server::start`], with extra environment settings (e.g. `ESGF_EVENTS_HTTP_MAX_BODY_BYTES`).
    pub fn start_with_env(env: &[(&str, &str)]) -> Server {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Server::start_with(Options { env, ..Options::default() })
    }

    /// Starts a server as `options` say, on a fresh data directory, and waits until it is ready.
    pub fn start_with(options: Options) -> Server {
        let data_dir = tempfile::Builder::new().prefix("esgf-events-test-").tempdir().expect("temp data dir");
        let token = options.operator_token.clone().unwrap_or_default();
        let mut server = Server {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            client: client_builder(Some(&token), options.ca_pem.as_deref()).build().expect("HTTP client"),
            options,
            token,
            log: Arc::new(Mutex::new(Vec::new())),
            history: Arc::new(Mutex::new(History::default())),
        };
        server.spawn();
        server
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (the port changes on every restart).
    pub fn url(&self) -> String {
        let scheme = if self.options.ca_pem.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The operator token this server accepts.
    pub fn operator_token(&self) -> &str {
        &self.token
    }

    /// Every log line of every run so far; panics if the history outgrew its bound (a scan would be partial).
    pub fn full_log(&self) -> String {
        let history = self.history.lock().expect("log history");
        assert!(
            !history.truncated,
            "the log history outgrew {MAX_HISTORY_LINES} lines; a scan would be partial"
        );
        history.lines.join("\n")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// An HTTP client with generous timeouts (long-polls included).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The current child's stderr so far.
    pub fn logs(&self) -> String {
        self.log.lock().map(|lines| lines.join("\n")).unwrap_or_default()
    }

    /// The bound Kafka address (the server was started with `--kafka-addr 127.0.0.1:0`), from the current
    /// run's `listening` log line (`kafka_addr=...`).
    pub fn kafka_addr(&self) -> String {
        let log = self.logs();
        log.lines()
            .find_map(|line| logged_field(line, "kafka_addr="))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("the server logged no kafka_addr:\n{log}"))
    }

    /// Kills the server with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix.
            child.kill().expect("SIGKILL the server");
            child.wait().expect("reap the killed server");
        }
    }

    /// Asks the server to stop with SIGTERM and waits (bounded) for it to exit; returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("terminate: the server is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet, so the pid cannot be reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within {STARTUP_TIMEOUT:?} of SIGTERM; log:\n{}", self.logs());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Starts the server again on the same data directory (SIGKILLing it first if it still runs) and waits
    /// until it is ready. It listens on a new port: use [`Server::url`] afterwards.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("--http-addr")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .stdin(Stdio::null())
            .args(&self.options.args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Plain log lines, whatever the developer's terminal settings.
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        // The server refuses unknown settings, so none of the caller's may leak in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ESGF_EVENTS_") {
                command.env_remove(name);
            }
        }
        if let Some(token) = &self.options.operator_token {
            command.env("ESGF_EVENTS_OPERATOR_TOKEN", token);
        }
        command.envs(self.options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));

        // A fresh log per run, so diagnostics show this run's lines only.
        self.log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (addr_tx, addr_rx) = mpsc::channel();
        let (log, history) = (Arc::clone(&self.log), Arc::clone(&self.history));
        // Drains stderr for the child's whole life, so the pipe never fills and blocks the server.
        thread::spawn(move || drain_stderr(stderr, &log, &history, &addr_tx));
        self.child = Some(child);

        self.addr = match addr_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => addr,
            Err(err) => {
                let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                self.kill9();
                panic!(
                    "server did not log its address (http_addr=...) within {STARTUP_TIMEOUT:?} ({err}; exit \
                     status {status:?}); log:\n{}",
                    self.logs()
                );
            }
        };
        self.wait_ready();
        if self.options.operator_token.is_none() {
            // The server wrote its generated token before it started listening.
            let path = self.data_dir().join("operator.token");
            let token = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("the server generated no {}: {e}; log:\n{}", path.display(), self.logs())
            });
            self.token = token.trim().to_owned();
            self.client = client_builder(Some(&self.token), self.options.ca_pem.as_deref())
                .build()
                .expect("HTTP client");
        }
    }

    /// Polls `GET /readyz` until it answers 200, failing fast if the process exits.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let probe = client_builder(None, self.options.ca_pem.as_deref())
            .timeout(Duration::from_secs(2))
            .build()
            .expect("probe client");
        let url = format!("{}/readyz", self.url());
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                panic!("server exited ({status}) before becoming ready; log:\n{}", self.logs());
            }
            let last = match probe.get(&url).send() {
                Ok(response) if response.status() == StatusCode::OK => return,
                Ok(response) => format!("HTTP {}", response.status()),
                Err(err) => err.to_string(),
            };
            if Instant::now() > deadline {
                self.kill9();
                panic!(
                    "server not ready within {STARTUP_TIMEOUT:?} (last probe: {last}); log:\n{}",
                    self.logs()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    // --- HTTP helpers -------------------------------------------------------------------------------------

    pub fn get(&self, path: &str) -> Response {
        self.client.get(format!("{}{path}", self.url())).send().unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn post_json(&self, path: &str, body: impl Into<Vec<u8>>) -> Response {
        self.client
            .post(format!("{}{path}", self.url()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// Creates a topic, asserting 201.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let body = serde_json::json!({ "name": name, "partitions": partitions }).to_string();
        let response = self.post_json("/v1/topics", body);
        let status = response.status();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "create topic {name}: {}",
            response.text().unwrap_or_default()
        );
    }

    /// Publishes a body (one event or a batch), asserting 201; returns the placements in input order.
    pub fn publish(&self, topic: &str, body: impl Into<Vec<u8>>) -> Vec<Placement> {
        self.publish_at(&format!("/v1/topics/{topic}/events"), body)
    }

    /// Like [`Server::publish`], to a full path with query (e.g. `/v1/topics/t/events?key=k`).
    pub fn publish_at(&self, path: &str, body: impl Into<Vec<u8>>) -> Vec<Placement> {
        let response = self.post_json(path, body);
        let status = response.status();
        let text = response.text().expect("publish response body");
        assert_eq!(status, StatusCode::CREATED, "POST {path}: {text}");
        serde_json::from_str::<PublishResponse>(&text).expect("publish response").results
    }

    /// One read page: `GET /v1/topics/{topic}/events?{query}`, asserting 200.
    pub fn read_page(&self, topic: &str, query: &str) -> ReadPage {
        let response = self.get(&format!("/v1/topics/{topic}/events?{query}"));
        let status = response.status();
        let text = response.text().expect("read response body");
        assert_eq!(status, StatusCode::OK, "read {topic}?{query}: {text}");
        ReadPage::parse(&text)
    }

    /// Every event of one partition, from offset 0 up to the log end.
    pub fn read_partition(&self, topic: &str, partition: u32) -> Vec<EventOut> {
        read_partition(&self.client, &self.url(), topic, partition)
    }

    /// `GET /v1/topics/{topic}` as JSON.
    pub fn describe(&self, topic: &str) -> serde_json::Value {
        let response = self.get(&format!("/v1/topics/{topic}"));
        assert_eq!(response.status(), StatusCode::OK, "describe {topic}");
        response.json().expect("topic description")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Longest any one CLI invocation may take before the test fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `command` (an `esgf-events` client invocation), feeding `stdin`, and returns its output; kills it and
/// fails the test if it takes longer than [`CLI_TIMEOUT`]. None of the caller's `ESGF_EVENTS_*` variables reach
/// it: the test decides every setting.
pub fn run_cli(mut command: Command, stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let described = format!("{command:?}");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ESGF_EVENTS_")
            && command.get_envs().all(|(set, _)| set != name)
        {
            command.env_remove(name);
        }
    }
    command.env("NO_COLOR", "1");
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input).expect("write stdin");
        // Dropping the pipe closes it: end of input.
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(output) => output.expect("CLI output"),
        Err(_) => {
            // SAFETY: kill(2) on our own child; it cannot have been reaped, its waiter has not returned.
            unsafe { libc::kill(libc::pid_t::try_from(pid).expect("pid"), libc::SIGKILL) };
            panic!("`{described}` did not finish within {CLI_TIMEOUT:?}");
        }
    }
}

/// A client for tests acting as the operator: bounded, but long enough for the longest long-poll a test uses.
pub fn http_client() -> Client {
    client_builder(Some(operator_token()), None).build().expect("HTTP client")
}

/// Calls `probe` every `interval` until it returns `Ok`, for at most `within`; returns the value and how long
/// it took. Past `within` it panics with `what` and what the last probe said (its `Err`).
pub fn poll_until<T>(
    within: Duration,
    interval: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(value) => return (value, start.elapsed()),
            Err(last) => assert!(start.elapsed() <= within, "{what}: not within {within:?}; {last}"),
        }
        thread::sleep(interval);
    }
}

fn drain_stderr(
    stderr: impl Read,
    log: &Mutex<Vec<String>>,
    history: &Mutex<History>,
    addr_tx: &mpsc::Sender<SocketAddr>,
) {
    let mut reader = BufReader::new(stderr);
    let mut sent = false;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = strip_ansi(&String::from_utf8_lossy(&buf)).trim_end().to_owned();
        if !sent && let Some(addr) = logged_addr(&line) {
            sent = addr_tx.send(addr).is_ok();
        }
        if let Ok(mut history) = history.lock() {
            if history.lines.len() < MAX_HISTORY_LINES {
                history.lines.push(line.clone());
            } else {
                history.truncated = true;
            }
        }
        if let Ok(mut lines) = log.lock() {
            if lines.len() >= MAX_LOG_LINES {
                lines.remove(0);
            }
            lines.push(line);
        }
    }
}

/// The address in a log line's `http_addr=HOST:PORT` field, if it has one.
fn logged_addr(line: &str) -> Option<SocketAddr> {
    logged_field(line, "http_addr=")?.parse().ok()
}

/// The value of a log line's field `prefix` (`name=`), without the quotes or comma around it.
fn logged_field<'l>(line: &'l str, prefix: &str) -> Option<&'l str> {
    let (_, rest) = line.split_once(prefix)?;
    Some(rest.split_whitespace().next()?.trim_matches(|c| c == '"' || c == ','))
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case the log is coloured anyway.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// --- Wire types ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placement {
    pub partition: u32,
    pub offset: u64,
}

#[derive(Debug, Deserialize)]
pub struct PublishResponse {
    pub results: Vec<Placement>,
}

/// One event as read back; `value` keeps the exact JSON text the server sent.
#[derive(Debug, Clone, Deserialize)]
pub struct EventOut {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: String,
    pub key: Option<String>,
    pub value: Box<RawValue>,
    #[serde(default)]
    pub headers: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct ReadPage {
    pub events: Vec<EventOut>,
    pub next_offset: u64,
}

impl ReadPage {
    pub fn parse(text: &str) -> ReadPage {
        serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("read response is not as documented ({e}): {text:.500}"))
    }
}

/// Every event of one partition, from offset 0 up to the log end, checking the pages chain densely.
pub fn read_partition(client: &Client, base: &str, topic: &str, partition: u32) -> Vec<EventOut> {
    let mut events: Vec<EventOut> = Vec::new();
    let mut offset = 0u64;
    loop {
        let url = format!("{base}/v1/topics/{topic}/events?partition={partition}&offset={offset}&limit=1000");
        let response = client.get(&url).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status();
        let text = response.text().expect("read response body");
        assert_eq!(status, StatusCode::OK, "GET {url}: {text}");
        let page = ReadPage::parse(&text);
        if page.events.is_empty() {
            assert_eq!(page.next_offset, offset, "an empty page must not move next_offset ({url})");
            return events;
        }
        for event in &page.events {
            assert_eq!(event.partition, partition, "event from the wrong partition ({url})");
            assert_eq!(event.offset, offset, "offsets must be dense ({url})");
            offset += 1;
        }
        assert_eq!(page.next_offset, offset, "next_offset must follow the last event ({url})");
        events.extend(page.events);
    }
}

/// Asserts that a response is an RFC 9457 problem of `kind` with `status`; returns the problem document.
pub fn assert_problem(response: Response, status: u16, kind: &str) -> serde_json::Value {
    let actual = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().expect("problem body");
    assert_eq!(actual, status, "expected HTTP {status} ({kind}), got {actual}: {text}");
    assert!(
        content_type.starts_with("application/problem+json"),
        "content type {content_type:?} for: {text}"
    );
    let problem: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("problem body is not JSON ({e}): {text}"));
    assert_eq!(problem["type"], format!("urn:esgf-events:problem:{kind}"), "{problem}");
    assert_eq!(problem["status"], status, "{problem}");
    assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()), "problem without a title: {problem}");
    assert!(problem["detail"].is_string(), "problem without a detail: {problem}");
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_address_is_found_in_plain_and_coloured_lines() {
        let plain =
            "2026-11-27T10:00:00Z  INFO esgf_events::serve: listening http_addr=127.0.0.1:4321 data_dir=/x";
        assert_eq!(logged_addr(plain), Some(SocketAddr::from(([127, 0, 0, 1], 4321))));
        let coloured = "\u{1b}[32m INFO\u{1b}[0m \u{1b}[3mhttp_addr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:99";
        assert_eq!(logged_addr(&strip_ansi(coloured)), Some(SocketAddr::from(([127, 0, 0, 1], 99))));
        assert_eq!(logged_addr("INFO starting"), None);
    }
}
