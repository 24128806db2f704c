//! The command-line clients (`topic`, `publish`, `consume`) run as real processes against a real server.

mod common;

use std::process::{Command, Output};
use std::thread;

use common::{BIN, Server, fixture_events, fixtures_dir};
use serde_json::Value;

/// Runs `esgf-events ARGS --server URL` as the operator (token in `ESGF_EVENTS_TOKEN`), feeding `stdin`, and
/// returns its output (bounded by [`common::CLI_TIMEOUT`]).
fn run(server: &Server, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).arg("--server").arg(server.url()).env("ESGF_EVENTS_TOKEN", server.operator_token());
    common::run_cli(command, stdin)
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(server: &Server, args: &[&str], stdin: Option<&[u8]>) -> String {
    let output = run(server, args, stdin);
    assert!(
        output.status.success(),
        "`esgf-events {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Runs a command that must fail; returns its stderr, checking that a problem is shown readably, not as JSON.
fn fails(server: &Server, args: &[&str], stdin: Option<&[u8]>) -> String {
    let output = run(server, args, stdin);
    let text = stderr(&output);
    assert!(!output.status.success(), "`esgf-events {}` should fail; stderr: {text}", args.join(" "));
    assert!(text.contains("error"), "no error message on stderr: {text}");
    assert!(!text.contains("urn:esgf-events:problem"), "the raw problem document leaked to the user: {text}");
    text
}

#[test]
fn topic_commands_create_list_and_describe() {
    let server = Server::start();

    let out = ok(
        &server,
        &["topic", "create", "esgf2.publications", "--partitions", "2", "--retention", "12h"],
        None,
    );
    assert!(out.contains("esgf2.publications"), "{out}");
    let described = server.describe("esgf2.publications");
    assert_eq!((described["partitions"].as_u64(), described["retention"].as_str()), (Some(2), Some("12h")));
    ok(&server, &["topic", "create", "other"], None);

    let out = ok(&server, &["topic", "list"], None);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "a header and one row per topic:\n{out}");
    assert!(lines[1].starts_with("esgf2.publications") && lines[2].starts_with("other"), "{out}");

    let out = ok(&server, &["topic", "list", "--json"], None);
    let list: Value = serde_json::from_str(&out).expect("topic list --json is JSON");
    assert_eq!(list["topics"].as_array().map(Vec::len), Some(2));

    let out = ok(&server, &["topic", "describe", "esgf2.publications"], None);
    assert!(out.contains("esgf2.publications") && out.contains("12h"), "{out}");
    let out = ok(&server, &["topic", "describe", "esgf2.publications", "--json"], None);
    let json: Value = serde_json::from_str(&out).expect("describe --json is JSON");
    assert_eq!(json, server.describe("esgf2.publications"));

    let err = fails(&server, &["topic", "create", "esgf2.publications"], None);
    assert!(err.contains("already exists"), "{err}");
    let err = fails(&server, &["topic", "describe", "nope"], None);
    assert!(err.contains("not found") && err.contains("nope"), "{err}");
    let err = fails(&server, &["topic", "create", "bad name"], None);
    assert!(err.to_lowercase().contains("invalid topic name"), "{err}");
}

#[test]
fn published_fixture_and_ndjson_files_are_consumed_back_exactly() {
    let server = Server::start();
    ok(&server, &["topic", "create", "t"], None);
    let scratch = tempfile::tempdir().expect("scratch dir");

    // A pretty-printed fixture file: one event.
    let fixture = fixtures_dir().join("esgf-core-utils_functional_event.json");
    let fixture_path = fixture.to_str().expect("UTF-8 path");
    let out = ok(&server, &["publish", "--topic", "t", fixture_path], None);
    assert!(out.contains("published 1 event"), "{out}");
    let mut expected: Vec<Value> =
        vec![serde_json::from_slice(&std::fs::read(&fixture).expect("fixture")).expect("JSON")];

    // An NDJSON file of every fixture event, one compact line each.
    let lines: Vec<String> = fixture_events()
        .iter()
        .map(|f| serde_json::from_str::<Value>(&f.json).expect("fixture JSON").to_string())
        .collect();
    let ndjson = scratch.path().join("events.ndjson");
    std::fs::write(&ndjson, lines.join("\n") + "\n").expect("write NDJSON");
    let out = ok(&server, &["publish", "--topic", "t", ndjson.to_str().expect("UTF-8 path")], None);
    assert!(out.contains(&format!("published {} events", lines.len())), "{out}");
    expected.extend(lines.iter().map(|l| serde_json::from_str::<Value>(l).expect("line")));

    // A JSON array on stdin.
    let out = ok(&server, &["publish", "--topic", "t", "-"], Some(br#"[{"stdin":1},{"stdin":2}]"#));
    assert!(out.contains("published 2 events"), "{out}");
    expected.extend([serde_json::json!({"stdin": 1}), serde_json::json!({"stdin": 2})]);

    // Idempotent publish: an event whose `metadata.event_id` the topic already holds is not appended again
    // (the esgf-core-utils fixtures share one id, and the first of them was published alone above).
    let mut seen = std::collections::HashSet::new();
    let mut first_of_its_id =
        |v: &Value| v["metadata"]["event_id"].as_str().is_none_or(|id| seen.insert(id.to_owned()));
    let appended: Vec<bool> = expected.iter().map(&mut first_of_its_id).collect();
    let mut kept = appended.iter();
    expected.retain(|_| *kept.next().unwrap_or(&true));
    let lines: Vec<String> =
        lines.iter().zip(&appended[1..]).filter(|(_, a)| **a).map(|(l, _)| l.clone()).collect();

    let total = expected.len().to_string();
    let out = ok(&server, &["consume", "--topic", "t", "--from-beginning", "--max", &total], None);
    let consumed: Vec<&str> = out.lines().collect();
    assert_eq!(consumed.len(), expected.len(), "{out}");
    for (i, (line, expected)) in consumed.iter().zip(&expected).enumerate() {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {i} is not JSON ({e}): {line}"));
        assert_eq!(&value, expected, "event {i}");
    }
    // Compact events come back byte for byte.
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(consumed[1 + i], line, "NDJSON event {i}");
    }

    // --max stops early; without --follow the command ends at the log end.
    let out = ok(&server, &["consume", "--topic", "t", "--from-beginning", "--max", "2"], None);
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = ok(&server, &["consume", "--topic", "t", "--offset", "1"], None);
    assert_eq!(out.lines().count(), expected.len() - 1, "{out}");

    // --with-metadata prints whole records.
    let out =
        ok(&server, &["consume", "--topic", "t", "--from-beginning", "--max", "1", "--with-metadata"], None);
    let record: Value = serde_json::from_str(out.trim_end()).expect("record JSON");
    assert_eq!((record["partition"].as_u64(), record["offset"].as_u64()), (Some(0), Some(0)));
    assert_eq!(
        record["key"],
        "CMIP6.ScenarioMIP.IPSL.IPSL-CM6A-LR.ssp119.r4i1p1f1.CFmon.clcalipso.gr.v20191122"
    );
    assert_eq!(record["value"], expected[0]);
}

#[test]
fn consume_follow_prints_events_published_after_it_started() {
    let server = Server::start();
    ok(&server, &["topic", "create", "t"], None);
    let out = thread::scope(|scope| {
        let follower = scope.spawn(|| {
            ok(&server, &["consume", "--topic", "t", "--from-beginning", "--follow", "--max", "2"], None)
        });
        // Whether these land before or after the follower's first poll, it must print both and stop at --max.
        server.publish("t", r#"{"n":1}"#);
        server.publish("t", r#"{"n":2}"#);
        follower.join().expect("follower thread")
    });
    assert_eq!(out.lines().collect::<Vec<_>>(), [r#"{"n":1}"#, r#"{"n":2}"#]);
}

#[test]
fn problems_are_shown_as_readable_errors_with_nonzero_exit() {
    let server = Server::start();
    ok(&server, &["topic", "create", "t"], None);

    let err = fails(&server, &["publish", "--topic", "missing", "-"], Some(br#"{"a":1}"#));
    assert!(err.contains("not found") && err.contains("missing"), "{err}");

    let err = fails(&server, &["consume", "--topic", "t", "--offset", "99"], None);
    assert!(err.to_lowercase().contains("out of range"), "{err}");

    // Malformed input: the position is named, and nothing after the bad event is published.
    let err = fails(
        &server,
        &["publish", "--topic", "t", "-"],
        Some(b"{\"ok\":1}\n{\"bad\": tru}\n{\"never\":1}\n"),
    );
    assert!(err.contains("line 2"), "{err}");
    let latest = server.describe("t")["offsets"][0]["latest"].as_u64();
    assert!(latest <= Some(1), "events after the malformed one were published");

    // An event over the server's limit: the server's problem, shown readably.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat((1 << 20) + 10));
    let err = fails(&server, &["publish", "--topic", "t", "-"], Some(big.as_bytes()));
    assert!(err.to_lowercase().contains("too large"), "{err}");

    // No server at all.
    let mut gone = Server::start();
    let url = gone.url();
    gone.kill9();
    let output = Command::new(BIN).args(["topic", "list", "--server", &url]).output().expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach"), "{}", stderr(&output));
}
