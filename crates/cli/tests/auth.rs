//! Access control end to end, against the real binary: registering producers and consumers with the CLI and
//! over HTTP, grants, rotation, revocation, public topics, the audit log, the operator's bootstrap credential,
//! publish rate limits and TLS. Every token the tests see is collected, and the data directory and the server's
//! log are scanned for them at the end: a secret must never be stored or logged in plain text.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BIN, Options, Server, anonymous_client, assert_problem, client_with_token, run_cli};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOPIC: &str = "esgf2.publications";

/// Runs the CLI against `server` with `token` in `ESGF_EVENTS_TOKEN` (none: no credentials at all).
fn cli(server: &Server, token: Option<&str>, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).arg("--server").arg(server.url());
    // A scratch working directory, so no ./data/operator.token of the developer's is picked up.
    let cwd = tempfile::tempdir().expect("scratch dir");
    command.current_dir(cwd.path());
    if let Some(token) = token {
        command.env("ESGF_EVENTS_TOKEN", token);
    }
    run_cli(command, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The stdout of a command that must succeed.
fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The stderr of a command that must fail.
fn fails(output: Output, what: &str) -> String {
    assert!(!output.status.success(), "{what} should fail; stdout: {}", text(&output.stdout));
    text(&output.stderr)
}

/// The token in a `token: esgfev_...` line of `admin ... add|rotate` output.
fn token_line(stdout: &str) -> String {
    let token = stdout
        .lines()
        .find_map(|line| line.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no token line in: {stdout}"));
    assert!(
        token.starts_with("esgfev_") && token.len() == 50,
        "not a token of the documented shape: {token}"
    );
    token.to_owned()
}

fn publish(token: &str, server: &Server, topic: &str, body: &str) -> reqwest::blocking::Response {
    client_with_token(token)
        .post(format!("{}/v1/topics/{topic}/events", server.url()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .expect("publish request")
}

fn read(token: Option<&str>, server: &Server, topic: &str) -> reqwest::blocking::Response {
    let client = token.map_or_else(anonymous_client, client_with_token);
    client.get(format!("{}/v1/topics/{topic}/events?partition=0", server.url())).send().expect("read request")
}

fn latest(server: &Server, topic: &str) -> u64 {
    server.describe(topic)["offsets"][0]["latest"].as_u64().expect("latest offset")
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Asserts that no secret (the part of a token after its prefix) appears in any file under `data_dir` but the
/// `allowed` ones, in the server's whole log, or in `other_output` (what the CLI printed to stderr).
fn assert_no_secret_in_plain_text(
    server: &Server,
    secrets: &BTreeSet<String>,
    allowed: &[&Path],
    other_output: &str,
) {
    assert!(!secrets.is_empty());
    let data_dir = server.data_dir();
    let files = files_under(data_dir);
    assert!(files.iter().any(|f| f.ends_with("state.redb")), "the state store is in the data directory");
    let log = server.full_log();
    for token in secrets {
        let secret = token.strip_prefix("esgfev_").expect("a token");
        for file in files.iter().filter(|f| !allowed.contains(&f.as_path())) {
            let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "a secret is stored in plain text in {}", file.display());
        }
        assert!(!log.contains(secret), "a secret appears in the server's log");
        assert!(!other_output.contains(secret), "a secret appears on a CLI's stderr");
    }
}

/// Runs the CLI and keeps its stderr for the final secret scan.
fn run(
    server: &Server,
    stderr: &mut String,
    token: Option<&str>,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Output {
    let output = cli(server, token, args, stdin);
    stderr.push_str(&text(&output.stderr));
    output
}

/// Registers a principal over HTTP as the operator; returns its token.
fn register(server: &Server, kind: &str, body: Value) -> String {
    let response = server.post_json(&format!("/v1/{kind}s"), body.to_string());
    let status = response.status();
    let answer: Value = response.json().expect("registration JSON");
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["token"].as_str().expect("token in the registration").to_owned()
}

#[test]
fn producers_and_consumers_use_only_what_they_are_granted_and_no_secret_is_kept_in_clear() {
    let mut server = Server::start();
    let operator = server.operator_token().to_owned();
    let mut secrets = BTreeSet::from([operator.clone()]);
    let mut err = String::new();

    ok(run(&server, &mut err, Some(&operator), &["topic", "create", TOPIC], None), "topic create");
    ok(run(&server, &mut err, Some(&operator), &["topic", "create", "esgf2.other"], None), "topic create");

    // The East ingest service, registered with the CLI: the token is printed once, with a warning.
    let output = cli(
        &server,
        Some(&operator),
        &[
            "admin",
            "producer",
            "add",
            "esgf-east",
            "--topic",
            TOPIC,
            "--rate",
            "1000",
            "--contact",
            "ops@east",
        ],
        None,
    );
    let add_stderr = text(&output.stderr);
    assert!(add_stderr.contains("shown this once"), "no warning to store the token: {add_stderr}");
    let east = token_line(&ok(output, "producer add"));
    secrets.insert(east.clone());

    // The West ingest service, registered over HTTP.
    let response =
        server.post_json("/v1/producers", json!({ "name": "esgf-west", "topics": [TOPIC] }).to_string());
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store", "a token must not be cached");
    let registered: Value = response.json().expect("registration JSON");
    assert_eq!(registered["name"], "esgf-west");
    let west = registered["token"].as_str().expect("token in the registration").to_owned();
    secrets.insert(west.clone());

    // An index consumer, its token written to a private file instead of the terminal.
    let scratch = tempfile::tempdir().expect("scratch dir");
    let index_file = scratch.path().join("globus-index.token");
    let index_path = index_file.to_str().expect("UTF-8 path");
    let out = ok(
        run(
            &server,
            &mut err,
            Some(&operator),
            &["admin", "consumer", "add", "globus-index", "-t", TOPIC, "--out", index_path],
            None,
        ),
        "consumer add --out",
    );
    assert!(!out.contains("esgfev_") && out.contains(index_path), "--out must not print the token: {out}");
    let index = std::fs::read_to_string(&index_file).expect("token file").trim().to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&index_file).expect("token file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token file must be private");
    }
    secrets.insert(index.clone());

    // Producers publish: East with the CLI, West over HTTP.
    let out = ok(
        run(&server, &mut err, Some(&east), &["publish", "--topic", TOPIC, "-"], Some(br#"{"from":"east"}"#)),
        "publish",
    );
    assert!(out.contains("published 1 event"), "{out}");
    assert_eq!(publish(&west, &server, TOPIC, r#"{"from":"west"}"#).status(), StatusCode::CREATED);

    // The consumer reads: with the CLI and its token file, and over HTTP.
    let out = ok(
        run(&server, &mut err, None, &["consume", "--topic", TOPIC, "--token-file", index_path], None),
        "consume",
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), [r#"{"from":"east"}"#, r#"{"from":"west"}"#]);
    assert_eq!(read(Some(&index), &server, TOPIC).status(), StatusCode::OK);

    // Least privilege: a producer does not read, a consumer does not publish, nobody uses an ungranted topic.
    assert_problem(read(Some(&east), &server, TOPIC), 403, "forbidden");
    let denied = assert_problem(publish(&index, &server, TOPIC, "{}"), 403, "forbidden");
    assert!(denied["detail"].as_str().is_some_and(|d| d.contains(TOPIC)), "names what is missing: {denied}");
    assert_problem(publish(&east, &server, "esgf2.other", "{}"), 403, "forbidden");
    let response =
        client_with_token(&east).get(format!("{}/v1/producers", server.url())).send().expect("GET");
    assert_problem(response, 403, "forbidden");
    let stderr =
        fails(run(&server, &mut err, Some(&west), &["admin", "producer", "list"], None), "admin as producer");
    assert!(stderr.contains("Forbidden"), "{stderr}");

    // No token, a wrong token, a malformed one: 401.
    let response = anonymous_client()
        .post(format!("{}/v1/topics/{TOPIC}/events", server.url()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .expect("publish");
    assert_problem(response, 401, "unauthenticated");
    assert_problem(publish(&common::random_token(), &server, TOPIC, "{}"), 401, "unauthenticated");
    assert_problem(publish("not-a-token", &server, TOPIC, "{}"), 401, "unauthenticated");
    let stderr =
        fails(run(&server, &mut err, None, &["admin", "producer", "list"], None), "admin without a token");
    assert!(stderr.contains("--token-file"), "the error tells where tokens come from: {stderr}");

    // Grants change at once.
    ok(
        run(
            &server,
            &mut err,
            Some(&operator),
            &["admin", "producer", "grant", "esgf-east", "-t", "esgf2.other", "--add"],
            None,
        ),
        "grant --add",
    );
    assert_eq!(publish(&east, &server, "esgf2.other", r#"{"n":1}"#).status(), StatusCode::CREATED);
    let shown = ok(
        run(&server, &mut err, Some(&operator), &["admin", "producer", "show", "esgf-east"], None),
        "show",
    );
    for needle in [TOPIC, "esgf2.other", "1000 events/s", "ops@east", "credential:"] {
        assert!(shown.contains(needle), "show lacks {needle:?}:\n{shown}");
    }
    let listed = ok(run(&server, &mut err, Some(&operator), &["admin", "producer", "list"], None), "list");
    assert!(listed.contains("esgf-east") && listed.contains("esgf-west"), "{listed}");
    let listed =
        ok(run(&server, &mut err, Some(&operator), &["admin", "consumer", "list", "--json"], None), "list");
    let consumers: Value = serde_json::from_str(&listed).expect("list --json is JSON");
    assert_eq!(consumers["consumers"][0]["name"], "globus-index");
    assert!(!listed.contains("esgfev_"), "a listing must not show secrets: {listed}");

    // Rotation: the old token stops working (no grace configured), the new one works.
    let rotated = token_line(&ok(
        run(&server, &mut err, Some(&operator), &["admin", "producer", "rotate", "esgf-east"], None),
        "rotate",
    ));
    secrets.insert(rotated.clone());
    assert_ne!(rotated, east);
    assert_problem(publish(&east, &server, TOPIC, "{}"), 401, "unauthenticated");
    assert_eq!(
        publish(&rotated, &server, TOPIC, r#"{"from":"east, rotated"}"#).status(),
        StatusCode::CREATED
    );

    // Revocation: at once.
    ok(
        run(&server, &mut err, Some(&operator), &["admin", "producer", "revoke", "esgf-west"], None),
        "revoke",
    );
    assert_problem(publish(&west, &server, TOPIC, "{}"), 401, "unauthenticated");

    // A public topic is readable without credentials; making it private again closes it.
    assert_problem(read(None, &server, TOPIC), 401, "unauthenticated");
    ok(run(&server, &mut err, Some(&operator), &["admin", "topic", "public", TOPIC, "true"], None), "public");
    assert_eq!(read(None, &server, TOPIC).status(), StatusCode::OK);
    assert_eq!(server.describe(TOPIC)["public"], true);
    ok(
        run(&server, &mut err, Some(&operator), &["admin", "topic", "public", TOPIC, "false"], None),
        "private",
    );
    assert_problem(read(None, &server, TOPIC), 401, "unauthenticated");

    // The audit log names who did what, and the failures.
    let audit = ok(run(&server, &mut err, Some(&operator), &["admin", "audit"], None), "audit");
    for needle in ["producer.register", "esgf-east", "consumer.register", "auth.failure", "topic.public"] {
        assert!(audit.contains(needle), "audit lacks {needle:?}:\n{audit}");
    }
    let page = ok(
        run(
            &server,
            &mut err,
            Some(&operator),
            &["admin", "audit", "--json", "--after", "1", "--limit", "2"],
            None,
        ),
        "audit --json",
    );
    let entries: Vec<Value> = page.lines().map(|l| serde_json::from_str(l).expect("JSON entry")).collect();
    assert_eq!(entries.iter().map(|e| e["seq"].as_u64()).collect::<Vec<_>>(), [Some(2), Some(3)]);
    let response = client_with_token(&index).get(format!("{}/v1/audit", server.url())).send().expect("GET");
    assert_problem(response, 403, "forbidden");

    // Credentials and grants survive a restart.
    server.restart();
    assert_eq!(publish(&rotated, &server, TOPIC, r#"{"after":"restart"}"#).status(), StatusCode::CREATED);
    assert_problem(publish(&west, &server, TOPIC, "{}"), 401, "unauthenticated");
    assert_eq!(read(Some(&index), &server, TOPIC).status(), StatusCode::OK);

    assert!(server.terminate().success(), "clean shutdown");
    assert_no_secret_in_plain_text(&server, &secrets, &[], &err);
}

#[test]
fn without_an_environment_token_the_operator_token_is_generated_into_a_private_file_and_only_its_path_is_logged()
 {
    let mut server = Server::start_with(Options { operator_token: None, ..Options::default() });
    let token_file = server.data_dir().join("operator.token");
    let token = server.operator_token().to_owned();
    assert!(token.starts_with("esgfev_") && token.len() == 50, "generated token of the documented shape");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).expect("operator.token").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "operator.token must be readable by its owner only");
    }
    let log = server.logs();
    assert!(log.contains(&token_file.display().to_string()), "the log names the token file:\n{log}");

    // The operator uses it: named explicitly, or found as ./data/operator.token from the data directory's parent.
    let path = token_file.to_str().expect("UTF-8 path");
    let mut err = String::new();
    ok(run(&server, &mut err, None, &["topic", "create", TOPIC, "--token-file", path], None), "--token-file");
    #[cfg(unix)]
    {
        let scratch = tempfile::tempdir().expect("scratch dir");
        std::os::unix::fs::symlink(server.data_dir(), scratch.path().join("data")).expect("symlink ./data");
        let mut command = Command::new(BIN);
        command.args(["admin", "producer", "add", "esgf-east", "-t", TOPIC, "--server", &server.url()]);
        command.current_dir(scratch.path());
        let output = run_cli(command, None);
        err.push_str(&text(&output.stderr));
        let east = token_line(&ok(output, "admin with ./data/operator.token"));
        let secrets = BTreeSet::from([token.clone(), east]);

        // A restart keeps the credential and the file as they are.
        server.restart();
        assert_eq!(std::fs::read_to_string(&token_file).expect("operator.token").trim(), token);
        assert_eq!(server.describe(TOPIC)["name"], TOPIC);
        assert!(server.terminate().success(), "clean shutdown");
        // operator.token is the one place the operator's secret is meant to be.
        assert_no_secret_in_plain_text(&server, &secrets, &[token_file.as_path()], &err);
    }
}

#[test]
fn a_weak_operator_token_is_refused_at_start_without_being_echoed() {
    let data_dir = tempfile::tempdir().expect("data dir");
    for weak in ["esgfev_short", "password123456789012345678901234567890123"] {
        let mut command = Command::new(BIN);
        command.args(["serve", "--http-addr", "127.0.0.1:0", "--data-dir"]).arg(data_dir.path());
        command.env("ESGF_EVENTS_OPERATOR_TOKEN", weak);
        let stderr = fails(run_cli(command, None), "serve with a weak operator token");
        assert!(stderr.contains("ESGF_EVENTS_OPERATOR_TOKEN"), "{stderr}");
        assert!(!stderr.contains(weak), "the refused token is echoed: {stderr}");
    }
}

#[test]
fn a_producer_over_its_rate_gets_429_with_retry_after_and_the_refused_batch_leaves_no_trace() {
    let server = Server::start();
    server.create_topic(TOPIC, 1);
    server.create_topic("bulk", 1);
    let batch = |from: usize, n: usize| {
        format!("[{}]", (from..from + n).map(|i| format!(r#"{{"n":{i}}}"#)).collect::<Vec<_>>().join(","))
    };

    let slow = register(
        &server,
        "producer",
        json!({ "name": "slow", "topics": [TOPIC], "rate": { "events_per_second": 5, "burst": 10 } }),
    );
    assert_eq!(
        publish(&slow, &server, TOPIC, &batch(0, 10)).status(),
        StatusCode::CREATED,
        "within the burst"
    );
    let response = publish(&slow, &server, TOPIC, &batch(100, 5));
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("429 names a Retry-After in whole seconds");
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    assert_problem(response, 429, "rate-limited");
    assert_eq!(latest(&server, TOPIC), 10, "the refused batch left nothing in the log");

    // Waiting as told is enough: the same batch then goes through whole.
    std::thread::sleep(Duration::from_secs(retry_after));
    assert_eq!(publish(&slow, &server, TOPIC, &batch(100, 5)).status(), StatusCode::CREATED);
    let values: Vec<String> =
        server.read_partition(TOPIC, 0).iter().map(|e| e.value.get().to_owned()).collect();
    let expected: Vec<String> = (0..10).chain(100..105).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    assert_eq!(values, expected, "exactly the accepted batches, once each");

    // The CLI waits as told and sends again, so a rate-limited producer still gets everything through. With a
    // burst of one batch, at most the first of three batches can go at once, whatever the timing.
    let cli_slow = register(
        &server,
        "producer",
        json!({ "name": "cli-slow", "topics": [TOPIC], "rate": { "events_per_second": 5, "burst": 5 } }),
    );
    let ndjson: String = (200..215).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let mut err = String::new();
    let started = Instant::now();
    let out = ok(
        run(
            &server,
            &mut err,
            Some(&cli_slow),
            &["publish", "-t", TOPIC, "--batch-size", "5", "-"],
            Some(ndjson.as_bytes()),
        ),
        "rate-limited publish",
    );
    assert!(out.contains("published 15 events"), "{out}");
    assert!(err.contains("rate limit"), "the CLI says why it waits: {err}");
    assert!(started.elapsed() >= Duration::from_millis(1900), "15 events at 5/s with a burst of 5");
    assert_eq!(latest(&server, TOPIC), 30);

    // A limit far above the load is never hit.
    let fast = register(
        &server,
        "producer",
        json!({ "name": "fast", "topics": ["bulk"],
                "rate": { "events_per_second": 1_000_000, "burst": 1_000_000, "bytes_per_second": 1_000_000_000u64 } }),
    );
    let client = client_with_token(&fast);
    for i in 0..300 {
        let body = if i % 3 == 0 { batch(i * 100, 100) } else { format!(r#"{{"n":{i}}}"#) };
        let response = client
            .post(format!("{}/v1/topics/bulk/events", server.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("publish");
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "request {i}: {}",
            response.text().unwrap_or_default()
        );
    }
}

#[test]
fn tls_round_trip_with_a_self_signed_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("self-signed certificate");
    let dir = tempfile::tempdir().expect("certificate dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let cert_pem = certified.cert.pem();
    std::fs::write(&cert, &cert_pem).expect("write cert.pem");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key.pem");
    let (cert_path, key_path) = (cert.to_str().expect("UTF-8"), key.to_str().expect("UTF-8"));

    let server = Server::start_with(Options {
        args: vec!["--tls-cert".into(), cert_path.into(), "--tls-key".into(), key_path.into()],
        ca_pem: Some(cert_pem.clone().into_bytes()),
        ..Options::default()
    });
    assert!(server.url().starts_with("https://"));
    assert!(
        server.logs().lines().any(|l| l.contains("listening") && l.contains("tls=true")),
        "{}",
        server.logs()
    );

    // The CLI trusts the certificate it is given, by flag or environment.
    let mut err = String::new();
    let with_ca = |args: &[&str]| -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).chain(["--ca-cert".to_owned(), cert_path.to_owned()]).collect()
    };
    let args = with_ca(&["topic", "create", TOPIC]);
    ok(
        run(
            &server,
            &mut err,
            Some(server.operator_token()),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            None,
        ),
        "create over TLS",
    );
    let args = with_ca(&["publish", "--topic", TOPIC, "-"]);
    let out = ok(
        run(
            &server,
            &mut err,
            Some(server.operator_token()),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            Some(br#"{"over":"tls"}"#),
        ),
        "publish over TLS",
    );
    assert!(out.contains("published 1 event"), "{out}");
    let mut command = Command::new(BIN);
    command.args(["consume", "--topic", TOPIC, "--server", &server.url()]);
    command.env("ESGF_EVENTS_TOKEN", server.operator_token()).env("ESGF_EVENTS_CA_CERT", cert_path);
    let out = ok(run_cli(command, None), "consume over TLS, CA from the environment");
    assert_eq!(out.trim_end(), r#"{"over":"tls"}"#);

    // Without the certificate the client refuses the server; plain HTTP gets no answer from it.
    let stderr =
        fails(run(&server, &mut err, Some(server.operator_token()), &["topic", "list"], None), "untrusted");
    assert!(stderr.contains("error"), "{stderr}");
    let plain = anonymous_client().get(format!("http://{}/healthz", server.addr())).send();
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plain HTTP must not be served on the TLS port"
    );
    assert_eq!(server.get("/healthz").status(), StatusCode::OK);
}
