//! Replica convergence: two index replicas of one topic, one followed from the beginning and one bootstrapped
//! from a snapshot of the first and SIGKILLed over and over while it applies, end with byte-identical exports,
//! equal to the state a simple model in this test computes on its own.
//!
//! The stream is realistic: POSTs for 2000 real CMIP6 dataset ids (half with `cmip6:`-namespaced properties,
//! some compact like the production samples), then PUTs, merge patches, retractions as both publishers send
//! them (JSON Patch lists and the `{"operations": [...]}` wrapper), replica additions, re-publications of new
//! versions (POST of the new version, `latest: false` on the old), and events that cannot apply (PATCH of a
//! missing item, POST of an existing one, malformed patches), which must show up in `<topic>.errors`.
//!
//! The random schedule is seeded; a failure prints the seed, and `REPLICA_TEST_SEED=<seed>` replays it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{BIN, Placement, Server, run_cli};
use serde_json::{Map, Value, json};

const TOPIC: &str = "esgf2.replica-test";
const ERRORS_TOPIC: &str = "esgf2.replica-test.errors";
const PARTITIONS: u32 = 4;
const DATASETS: usize = 2000;
/// Datasets published in the first phase, before the snapshot.
const PHASE_ONE_DATASETS: usize = 1100;
const BATCH: usize = 250;
const MIN_KILLS: usize = 30;
/// Replica B reads small pages, so a run commits many transactions and kills land between and inside them.
const B_FETCH_SIZE: &str = "20";
/// Bound on any one replica run, and on waiting for its progress lines.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

// --- An independent model of the index -------------------------------------------------------------------

/// What the index must hold: item id -> item.
#[derive(Default, Clone)]
struct Model {
    items: BTreeMap<String, Value>,
}

/// An event the test publishes, with what the model says it does.
struct Generated {
    event: Value,
    /// `Some(kind)`: the replica must reject it with `urn:esgf-events:problem:<kind>`.
    error: Option<&'static str>,
}

impl Model {
    fn post(&mut self, item: Value) -> Option<&'static str> {
        let id = item["id"].as_str().expect("generated items have ids").to_owned();
        if self.items.contains_key(&id) {
            return Some("item-exists");
        }
        self.items.insert(id, item);
        None
    }

    fn put(&mut self, id: &str, item: Value) -> Option<&'static str> {
        match self.items.get_mut(id) {
            Some(stored) => {
                *stored = item;
                None
            }
            None => Some("item-not-found"),
        }
    }

    /// RFC 6902, as far as this test uses it: add / replace / test on object members.
    fn json_patch(&mut self, id: &str, ops: &[Value]) -> Option<&'static str> {
        let Some(stored) = self.items.get(id) else { return Some("item-not-found") };
        let mut item = stored.clone();
        for op in ops {
            let path = op["path"].as_str().unwrap_or_default();
            let (parent, member) = path.rsplit_once('/').unwrap_or(("", ""));
            let value = op["value"].clone();
            let ok = match op["op"].as_str() {
                Some("add") => match item.pointer_mut(parent).and_then(Value::as_object_mut) {
                    Some(object) => {
                        object.insert(member.to_owned(), value);
                        true
                    }
                    None => false,
                },
                Some("replace") => match item.pointer_mut(path) {
                    Some(target) => {
                        *target = value;
                        true
                    }
                    None => false,
                },
                Some("test") => item.pointer(path) == Some(&value),
                _ => false,
            };
            if !ok {
                return Some("invalid-patch");
            }
        }
        self.items.insert(id.to_owned(), item);
        None
    }

    /// RFC 7396.
    fn merge_patch(&mut self, id: &str, patch: &Value) -> Option<&'static str> {
        fn merge(target: &mut Value, patch: &Value) {
            let Some(patch) = patch.as_object() else {
                *target = patch.clone();
                return;
            };
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let object = target.as_object_mut().expect("made an object above");
            for (key, value) in patch {
                if value.is_null() {
                    object.remove(key);
                } else {
                    merge(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        let Some(item) = self.items.get_mut(id) else { return Some("item-not-found") };
        merge(item, patch);
        None
    }

    /// The export the index must produce: canonical JSON lines in id order.
    fn export(&self) -> String {
        let mut out = String::new();
        for item in self.items.values() {
            canonical(item, &mut out);
            out.push('\n');
        }
        out
    }

    fn count(&self, keep: impl Fn(&Value) -> bool) -> usize {
        self.items.values().filter(|item| keep(item)).count()
    }
}

/// Sorted keys, no whitespace; written here rather than borrowed from the crate under test.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            out.push('{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).expect("a string serializes"));
                out.push(':');
                canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

// --- The stream -------------------------------------------------------------------------------------------

struct Stream {
    rng: fastrand::Rng,
    model: Model,
    seq: u64,
}

impl Stream {
    fn uuid(&mut self) -> String {
        format!("{:032x}", self.rng.u128(..))
    }

    fn envelope(&mut self, payload: Value) -> Value {
        self.seq += 1;
        json!({
            "metadata": {
                "auth": {"auth_policy_id": "ESGF-Publish-00012", "requester_data": {
                    "client_id": "ec5f07c0-7ed8-4f2b-94f2-ddb6f8fc91a3", "iss": "https://auth.globus.org",
                    "sub": "a511c7bc-d274-11e5-9aea-4bedf3cb22c7"}},
                "event_id": self.uuid(),
                "request_id": self.uuid(),
                "publisher": {"package": "esgf_publisher", "version": "5.2.3"},
                "time": format!("2026-08-06T16:{:02}:{:02}.{:06}", self.seq / 60 % 60, self.seq % 60, self.seq),
                "schema_version": "1.0.0"
            },
            "data": {"type": "STAC", "version": "1.0.0", "payload": payload}
        })
    }

    /// A STAC item for a CMIP6 dataset id: full (flat or `cmip6:` properties), or compact like the production
    /// samples (no `latest`, facets only in the id).
    fn item(&mut self, id: &str, style: usize) -> Value {
        let parts: Vec<&str> = id.split('.').collect();
        assert_eq!(parts.len(), 10, "not a CMIP6 dataset id: {id}");
        let path = parts.join("/");
        let file =
            format!("{}_{}_{}_{}_{}_{}.nc", parts[7], parts[6], parts[3], parts[4], parts[5], parts[8]);
        let asset = json!({
            "href": format!("https://esgf-data.example.org/thredds/fileServer/css03_data/{path}/{file}"),
            "type": "application/netcdf",
            "roles": ["data"],
            "file:size": self.rng.u64(1_000_000..5_000_000_000),
            "file:checksum": format!("1220{:064x}", self.rng.u128(..)),
            "alternate:name": "esgf-data.example.org",
        });
        let mut props = Map::new();
        props.insert("created".into(), json!("2026-03-06T01:15:44Z"));
        props.insert("retracted".into(), json!(false));
        if style % 5 == 4 {
            props.insert("cmip6:pid".into(), json!(format!("hdl:21.14100/{}", self.uuid())));
            return json!({"type": "Feature", "stac_version": "1.1.0", "id": id, "collection": "CMIP6",
                          "properties": props, "assets": {"data0000": asset}});
        }
        let ns = if style.is_multiple_of(2) { "cmip6:" } else { "" };
        let names = [
            "activity_id",
            "institution_id",
            "source_id",
            "experiment_id",
            "member_id",
            "table_id",
            "variable_id",
            "grid_label",
        ];
        for (i, name) in names.iter().enumerate() {
            props.insert(format!("{ns}{name}"), json!(parts[i + 1]));
        }
        props.insert(format!("{ns}pid"), json!(format!("hdl:21.14100/{}", self.uuid())));
        props.insert("title".into(), json!(parts[..9].join(".")));
        props.insert("version".into(), json!(parts[9].trim_start_matches('v')));
        props.insert("latest".into(), json!(true));
        props.insert("access".into(), json!(["HTTPServer", "Globus"]));
        json!({
            "type": "Feature", "stac_version": "1.1.0", "id": id, "collection": "CMIP6",
            "stac_extensions": ["https://stac-extensions.github.io/cmip6/v3.0.1/schema.json"],
            "bbox": [0, -90, 357.5, 90],
            "properties": props,
            "assets": {"data0000": asset},
            "links": [{"rel": "self", "type": "application/geo+json",
                       "href": format!("https://api.stac.esgf.example.org/collections/CMIP6/items/{id}")}]
        })
    }

    fn post(&mut self, id: &str, style: usize) -> Generated {
        let item = self.item(id, style);
        let error = self.model.post(item.clone());
        let event = self.envelope(json!({"method": "POST", "collection_id": "CMIP6", "item": item}));
        Generated { event, error }
    }

    fn put(&mut self, id: &str, style: usize) -> Generated {
        let mut item = self.item(id, style);
        item["properties"]["updated"] = json!(format!("2026-09-01T00:00:{:02}Z", self.seq % 60));
        let error = self.model.put(id, item.clone());
        let event =
            self.envelope(json!({"method": "PUT", "collection_id": "CMIP6", "item_id": id, "item": item}));
        Generated { event, error }
    }

    /// A JSON Patch, as a bare list or wrapped in `{"operations": [...]}`.
    fn json_patch(&mut self, id: &str, ops: Vec<Value>, wrapped: bool) -> Generated {
        let error = self.model.json_patch(id, &ops);
        let patch = if wrapped { json!({ "operations": ops }) } else { Value::Array(ops) };
        let event = self
            .envelope(json!({"method": "PATCH", "collection_id": "CMIP6", "item_id": id, "patch": patch}));
        Generated { event, error }
    }

    fn merge_patch(&mut self, id: &str) -> Generated {
        let patch = json!({"properties": {"cmip6:pid": format!("hdl:21.14100/{}", self.uuid()), "title": null,
                                           "citation_url": format!("https://cera-www.dkrz.de/WDCC/meta/CMIP6/{id}.json")}});
        let error = self.model.merge_patch(id, &patch);
        let event = self
            .envelope(json!({"method": "PATCH", "collection_id": "CMIP6", "item_id": id, "patch": patch}));
        Generated { event, error }
    }

    /// As esg-publisher retracts: not latest, retracted, no assets.
    fn publisher_retraction(&mut self, id: &str) -> Generated {
        let ops = vec![
            json!({"op": "replace", "path": "/properties/latest", "value": false}),
            json!({"op": "replace", "path": "/properties/retracted", "value": true}),
            json!({"op": "replace", "path": "/assets", "value": {}}),
        ];
        self.json_patch(id, ops, false)
    }

    /// As the data challenge retracts, in the wrapper its HTTP body used.
    fn challenge_retraction(&mut self, id: &str) -> Generated {
        let ops = vec![json!({"op": "add", "path": "/properties/retracted", "value": true})];
        self.json_patch(id, ops, true)
    }

    fn replica_add(&mut self, id: &str) -> Generated {
        let path = id.replace('.', "/");
        let alternate = |href: String, kind: &str, description: &str| {
            json!({"alternate": {"eagle.alcf.anl.gov": {"href": href, "type": kind, "roles": ["data"],
                   "description": description, "alternate:name": "eagle.alcf.anl.gov"}}})
        };
        let ops = vec![
            json!({"op": "add", "path": "/assets/globus",
                   "value": alternate("https://eagle.alcf.anl.gov/file-manager".into(), "text/html", "Globus Web App Link")}),
            json!({"op": "add", "path": "/assets/data0000",
                   "value": alternate(format!("https://eagle.alcf.anl.gov/css03_data/{path}/data.nc"), "application/netcdf", "HTTPServer Link")}),
        ];
        self.json_patch(id, ops, false)
    }

    fn malformed_patch(&mut self, id: &str, which: usize) -> Generated {
        let ops = match which % 3 {
            0 => vec![json!({"op": "replace", "path": "/properties/no_such_member/x", "value": 1})],
            1 => vec![json!({"op": "test", "path": "/properties/retracted", "value": "neither"})],
            _ => vec![json!({"op": "frobnicate", "path": "/properties"})],
        };
        self.json_patch(id, ops, which.is_multiple_of(2))
    }
}

/// Generates both phases: (phase one, phase two, the model after phase one, the model at the end).
fn generate(ids: &[String], seed: u64) -> (Vec<Generated>, Vec<Generated>, Model, Model) {
    let mut stream = Stream { rng: fastrand::Rng::with_seed(seed), model: Model::default(), seq: 0 };
    let mut one = Vec::new();
    for (i, id) in ids[..PHASE_ONE_DATASETS].iter().enumerate() {
        one.push(stream.post(id, i));
    }
    let updates = |stream: &mut Stream, out: &mut Vec<Generated>, known: &[String], rounds: usize| {
        for round in 0..rounds {
            let id = known[stream.rng.usize(..known.len())].clone();
            let style = stream.rng.usize(..10);
            out.push(match round % 6 {
                0 => stream.put(&id, style),
                1 => stream.merge_patch(&id),
                2 => stream.publisher_retraction(&id),
                3 => stream.challenge_retraction(&id),
                _ => stream.replica_add(&id),
            });
        }
    };
    updates(&mut stream, &mut one, &ids[..PHASE_ONE_DATASETS], 600);
    errors(&mut stream, &mut one, &ids[..PHASE_ONE_DATASETS], 0);
    let after_one = stream.model.clone();

    let mut two = Vec::new();
    for (i, id) in ids[PHASE_ONE_DATASETS..].iter().enumerate() {
        two.push(stream.post(id, i));
    }
    updates(&mut stream, &mut two, ids, 1200);
    // Re-publication of a new version: the new version is created latest, the old one stops being latest.
    let mut republished = BTreeSet::new();
    while republished.len() < 150 {
        let old = ids[stream.rng.usize(..ids.len())].clone();
        if !republished.insert(old.clone()) {
            continue;
        }
        let base = old.rsplit_once('.').expect("dataset ids have a version").0;
        let new = format!("{base}.v20260{}15", 1 + stream.rng.u8(1..9));
        let style = stream.rng.usize(..4);
        two.push(stream.post(&new, style));
        let ops = vec![json!({"op": "replace", "path": "/properties/latest", "value": false})];
        two.push(stream.json_patch(&old, ops, false));
    }
    errors(&mut stream, &mut two, ids, 100);
    let end = stream.model.clone();
    (one, two, after_one, end)
}

/// Events that cannot apply: PATCH of a missing item, POST of an existing one, malformed patches. (Compact
/// items, which have no `latest`, also make some retractions and re-publications fail, as they would in
/// production.)
fn errors(stream: &mut Stream, out: &mut Vec<Generated>, known: &[String], salt: usize) {
    for i in 0..6 {
        let id = known[stream.rng.usize(..known.len())].clone();
        out.push(match i % 3 {
            0 => {
                let missing =
                    format!("CMIP6.NoMIP.NOBODY.none.none.r1i1p1f1.Amon.tas.gn.v2000{salt:02}{i:02}");
                stream.json_patch(
                    &missing,
                    vec![json!({"op": "add", "path": "/properties/x", "value": 1})],
                    false,
                )
            }
            1 => stream.post(&id, i),
            _ => stream.malformed_patch(&id, i + salt),
        });
    }
}

// --- Running replicas -------------------------------------------------------------------------------------

fn replicate_command(server: &Server, index: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("replicate")
        .args(["--server", &server.url(), "--token", server.operator_token(), "--topic", TOPIC])
        .arg("--index")
        .arg(index)
        .args(extra);
    command
}

/// Runs a replica to the end of the topic, asserting success.
fn catch_up(server: &Server, index: &Path, extra: &[&str]) {
    let mut command = replicate_command(server, index, extra);
    command.arg("--exit-when-caught-up");
    let output = run_cli(command, None);
    assert!(
        output.status.success(),
        "replicate {} failed ({}):\n{}",
        index.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn export(index: &Path) -> String {
    let mut command = Command::new(BIN);
    command.args(["index", "export", "--index"]).arg(index);
    let output = run_cli(command, None);
    assert!(output.status.success(), "export failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("export is UTF-8")
}

fn query(index: &Path, args: &[&str]) -> Vec<Value> {
    let mut command = Command::new(BIN);
    command.args(["index", "query", "--index"]).arg(index).args(args);
    let output = run_cli(command, None);
    assert!(output.status.success(), "query failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn publish(server: &Server, events: &[Generated]) -> Vec<Placement> {
    let mut placements = Vec::with_capacity(events.len());
    for chunk in events.chunks(BATCH) {
        let body: Vec<&Value> = chunk.iter().map(|g| &g.event).collect();
        placements.extend(server.publish(TOPIC, serde_json::to_vec(&body).expect("events serialize")));
    }
    placements
}

/// A replica process whose stderr is read line by line on a thread.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Running {
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ESGF_EVENTS_") {
                command.env_remove(name);
            }
        }
        command
            .env("RUST_LOG", "esgf_events_replica=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn replicate");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines, log: Vec::new() }
    }

    /// Waits until `count` more pages were committed; false if the process ended first.
    fn wait_for_commits(&mut self, count: usize) -> bool {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut seen = 0;
        while seen < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if line.contains("page committed") {
                        seen += 1;
                    }
                    self.log.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("no progress within {RUN_TIMEOUT:?}; log:\n{}", self.log.join("\n"));
                }
            }
        }
        true
    }

    /// SIGKILL; true if the process was still running (the kill interrupted it).
    fn kill9(mut self) -> bool {
        let running = self.child.try_wait().expect("try_wait").is_none();
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        running
    }

    /// Waits for the process to end (its stderr closes), asserting success.
    fn wait_success(mut self) {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.log.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("replica did not finish within {RUN_TIMEOUT:?}; log:\n{}", self.log.join("\n"));
                }
            }
        }
        let status = self.child.wait().expect("wait for the replica");
        assert!(status.success(), "replica failed ({status}); log:\n{}", self.log.join("\n"));
    }
}

// --- The test ---------------------------------------------------------------------------------------------

#[test]
fn replicas_converge_across_snapshots_and_crashes() {
    let seed = std::env::var("REPLICA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("replica test seed: {seed} (replay with REPLICA_TEST_SEED={seed})");
    let started = Instant::now();

    let ids: Vec<String> = std::fs::read_to_string(common::fixtures_dir().join("cmip6_instance_ids.txt"))
        .expect("cmip6_instance_ids.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(DATASETS)
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), DATASETS);
    let (one, two, after_one, end) = generate(&ids, seed);

    let server = Server::start();
    server.create_topic(TOPIC, PARTITIONS);
    server.create_topic(ERRORS_TOPIC, 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, snap, b) = (dir.path().join("a.db"), dir.path().join("snap.db"), dir.path().join("b.db"));

    // Phase one; replica A follows it from the beginning; a snapshot of A is taken.
    let mut placements = publish(&server, &one);
    catch_up(&server, &a, &[]);
    let mut command = Command::new(BIN);
    command.args(["replicate", "snapshot", "--index"]).arg(&a).arg("--out").arg(&snap);
    let output = run_cli(command, None);
    assert!(output.status.success(), "snapshot failed: {}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).expect("snapshot summary is JSON");
    assert_eq!(summary["items"], after_one.items.len(), "{summary}");
    assert_eq!(export(&snap), after_one.export(), "the snapshot holds the state after phase one");

    // Phase two; A catches up from its own offsets.
    placements.extend(publish(&server, &two));
    catch_up(&server, &a, &[]);

    // B: bootstrapped from the snapshot, then killed again and again while it applies, restarted each time
    // with the same command, and finally left to finish.
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let (mut kills, mut runs) = (0, 0);
    let b_command = |server: &Server| {
        let snap_arg = snap.to_str().expect("UTF-8 temp path");
        let extra = ["--from-snapshot", snap_arg, "--fetch-size", B_FETCH_SIZE, "--exit-when-caught-up"];
        replicate_command(server, &b, &extra)
    };
    while kills < MIN_KILLS {
        runs += 1;
        assert!(runs < MIN_KILLS * 5, "the replica keeps finishing before it can be killed");
        let mut running = Running::spawn(b_command(&server));
        // The first kills may land in the bootstrap itself; later ones after a few committed pages.
        let alive = if runs <= 2 { true } else { running.wait_for_commits(rng.usize(1..=4)) };
        if !alive {
            running.wait_success();
            continue;
        }
        thread::sleep(Duration::from_micros(rng.u64(0..3000)));
        if running.kill9() {
            kills += 1;
        }
    }
    Running::spawn(b_command(&server)).wait_success();

    // Both replicas, and the model, agree byte for byte.
    let snap_arg = snap.to_str().expect("UTF-8 temp path");
    let expected = end.export();
    let (export_a, export_b) = (export(&a), export(&b));
    assert_eq!(export_a.lines().count(), end.items.len());
    assert!(
        export_a == expected,
        "replica A differs from the model:\n{}",
        first_difference(&export_a, &expected)
    );
    assert!(export_b == export_a, "replica B differs from A:\n{}", first_difference(&export_b, &export_a));

    // Queries see the searchable columns.
    let retracted = query(&a, &["retracted=true"]);
    assert_eq!(retracted.len(), end.count(|i| i["properties"]["retracted"] == true));
    assert!(!retracted.is_empty());
    let some = &ids[7];
    let parts: Vec<&str> = some.split('.').collect();
    let by_facets = query(&b, &[&format!("institution={}", parts[2]), &format!("variable={}", parts[7])]);
    assert_eq!(
        by_facets.len(),
        end.count(|i| {
            let id = i["id"].as_str().unwrap_or_default();
            let p: Vec<&str> = id.split('.').collect();
            p[2] == parts[2] && p[7] == parts[7]
        }),
        "facets come from properties (flat or namespaced) or the id; in this stream they agree with the id"
    );
    assert_eq!(query(&b, &["--id", some]).len(), 1);

    // Every rejected event was reported to the errors topic (at least once: both replicas report).
    let reported: BTreeSet<(u32, u64, String)> = server
        .read_partition(ERRORS_TOPIC, 0)
        .iter()
        .map(|record| {
            let report: Value = serde_json::from_str(record.value.get()).expect("report is JSON");
            let error = &report["error"];
            assert!(report.get("metadata").is_some() && report.get("data").is_some(), "{report}");
            assert_eq!(error["topic"], TOPIC);
            assert!(error["title"].is_string() && error["detail"].is_string() && error["status"].is_u64());
            (
                error["partition"].as_u64().expect("partition") as u32,
                error["offset"].as_u64().expect("offset"),
                error["type"].as_str().expect("type").to_owned(),
            )
        })
        .collect();
    let expected_errors: BTreeSet<(u32, u64, String)> = one
        .iter()
        .chain(&two)
        .zip(&placements)
        .filter_map(|(g, p)| {
            g.error.map(|kind| (p.partition, p.offset, format!("urn:esgf-events:problem:{kind}")))
        })
        .collect();
    assert!(expected_errors.len() >= 12, "the stream has errors of every kind");
    let missing: Vec<_> = expected_errors.difference(&reported).collect();
    assert!(missing.is_empty(), "rejected events not reported: {missing:?}");
    let unexpected: Vec<_> = reported.difference(&expected_errors).collect();
    assert!(unexpected.is_empty(), "reports for events that applied (or were applied twice): {unexpected:?}");

    // A new replica followed up to the snapshot's offsets (not beyond) holds what the snapshot holds.
    let e = dir.path().join("e.db");
    let output = run_cli(replicate_command(&server, &e, &["--until-offsets-of", snap_arg]), None);
    assert!(
        output.status.success(),
        "--until-offsets-of failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(export(&e), after_one.export());

    // A bootstrap never overwrites an index of another lineage.
    let output = run_cli(
        replicate_command(&server, &a, &["--from-snapshot", snap_arg, "--exit-when-caught-up"]),
        None,
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("was not made from the snapshot"));

    // --stop-on-error stops at the first rejected event and stays before it.
    let c = dir.path().join("c.db");
    let output = run_cli(replicate_command(&server, &c, &["--stop-on-error", "--exit-when-caught-up"]), None);
    assert!(!output.status.success(), "a stream with errors must stop a --stop-on-error replica");
    assert!(String::from_utf8_lossy(&output.stderr).contains("stopped on error"));

    eprintln!(
        "replica convergence: {} events, {} items, {} rejected, B killed {kills} times in {runs} runs, {:.1?}",
        placements.len(),
        end.items.len(),
        expected_errors.len(),
        started.elapsed()
    );
}

fn first_difference(actual: &str, expected: &str) -> String {
    for (i, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
        if a != e {
            return format!("line {}:\n  actual:   {a:.600}\n  expected: {e:.600}", i + 1);
        }
    }
    format!("{} lines vs {} expected", actual.lines().count(), expected.lines().count())
}
