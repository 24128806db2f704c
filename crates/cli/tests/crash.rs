//! The crash test: producers publish continuously over HTTP while the server is SIGKILLed at random moments
//! and restarted on the same data directory. After every restart, and at the end, the whole log is read back
//! and checked against what the server acknowledged:
//!
//! - every acknowledged event is present exactly once, at the partition and offset it was acknowledged with,
//!   with its exact bytes;
//! - offsets are dense from 0 to the log end, and an offset once seen keeps its event across later crashes;
//! - events whose request got no answer (in flight at the kill) may be present, at most once;
//! - nothing else is in the log.
//!
//! The random schedule is seeded; a failure prints the seed, and `CRASH_TEST_SEED=<seed>` replays it.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::{Placement, Server};
use reqwest::StatusCode;

const PRODUCERS: u64 = 4;
const KILLS: usize = 24;
/// How long producers run between a restart and the next SIGKILL.
const MIN_RUN_MS: u64 = 3;
const MAX_RUN_MS: u64 = 150;
/// One single-partition topic and one with several, so per-partition appends of keyed batches crash too.
const TOPICS: [(&str, u32); 2] = [("crash.single", 1), ("crash.multi", 3)];
/// Upper bound on waiting for producers' in-flight requests to end after a kill.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(20);

/// An event's identity: producer in the high 32 bits, that producer's sequence number in the low ones.
type EventId = u64;

fn event_id(producer: u64, seq: u64) -> EventId {
    (producer << 32) | seq
}

fn item_id(id: EventId) -> String {
    format!("CMIP6.CrashMIP.ESGF-TEST.p{}.s{:07}.Amon.tas.gn.v20260101", id >> 32, id & 0xffff_ffff)
}

const ID_PREFIX: &str = r#"{"event_id":""#;

/// A ~2 KB ESGF-like POST event, fully determined by its id, so the checker can rebuild the exact bytes. The
/// id leads the object, so the checker finds it without parsing 2 KB of JSON per record.
fn event_json(id: EventId) -> String {
    let item = item_id(id);
    let seq = id & 0xffff_ffff;
    let mut assets = String::new();
    for file in 0..4 {
        if file > 0 {
            assets.push(',');
        }
        assets.push_str(&format!(
            r#""data{file:04}":{{"href":"https://esgf-data.example.org/thredds/fileServer/css03_data/{}/tas_Amon_{file}_{seq}.nc","type":"application/netcdf","roles":["data"],"file:size":{},"file:checksum":"1220{:064x}","description":"Near-Surface Air Température – file {file}"}}"#,
            item.replace('.', "/"),
            1_000_000 + seq * 7 + file,
            u128::from(id) * 0x9e37_79b9_7f4a_7c15 + u128::from(file),
        ));
    }
    format!(
        r#"{ID_PREFIX}{id}","data":{{"type":"STAC","version":"1.0.0","payload":{{"collection_id":"CMIP6","method":"POST","item":{{"type":"Feature","stac_version":"1.1.0","id":"{item}","collection":"CMIP6","properties":{{"datetime":null,"start_datetime":"1850-01-16T12:00:00Z","end_datetime":"2014-12-16T12:00:00Z","retracted":false,"latest":true,"cmip6:activity_id":["CrashMIP"],"cmip6:variable_id":"tas","cmip6:frequency":"mon","cmip6:seq":{seq}}},"assets":{{{assets}}}}}}}}},"metadata":{{"auth":{{"requester_data":{{"client_id":"crash-test","sub":"producer-{}"}}}},"publisher":{{"package":"crash-test","version":"0.1.0"}},"time":"2026-11-27T10:00:00Z"}}}}"#,
        id >> 32
    )
}

/// The id at the head of a stored value, if it is one of ours.
fn parse_event_id(value: &str) -> Option<EventId> {
    let rest = value.strip_prefix(ID_PREFIX)?;
    rest[..rest.find('"')?].parse().ok()
}

/// Where producers send their requests; `url` is `None` while the server is down.
struct Target {
    generation: u64,
    url: Option<String>,
    in_flight: usize,
}

/// What the server acknowledged, and everything that was ever sent.
#[derive(Default)]
struct Ledger {
    acked: HashMap<EventId, (usize, Placement)>,
    sent: HashSet<EventId>,
    requests_acked: u64,
    requests_failed: u64,
    /// Answers that are neither an acknowledgement nor a crash: always a bug.
    unexpected: Vec<String>,
}

struct Shared {
    target: Mutex<Target>,
    changed: Condvar,
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking producer already fails the test; the data is still worth checking.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Blocks until the server is up in a generation newer than `after`; `None` once the test stops producers.
    fn acquire(&self, after: Option<u64>) -> Option<(u64, String)> {
        let mut target = lock(&self.target);
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(url) = &target.url
                && after.is_none_or(|g| target.generation > g)
            {
                let acquired = (target.generation, url.clone());
                target.in_flight += 1;
                return Some(acquired);
            }
            target = self.changed.wait(target).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn release(&self) {
        lock(&self.target).in_flight -= 1;
        self.changed.notify_all();
    }

    fn set_url(&self, url: Option<String>) {
        let mut target = lock(&self.target);
        if url.is_some() {
            target.generation += 1;
        }
        target.url = url;
        drop(target);
        self.changed.notify_all();
    }

    /// Waits until no producer has a request in flight (they all wait for the next generation).
    fn quiesce(&self) {
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        let mut target = lock(&self.target);
        while target.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} producer request(s) still in flight after {QUIESCE_TIMEOUT:?}",
                target.in_flight
            );
            target =
                self.changed.wait_timeout(target, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }
}

fn producer(producer: u64, seed: u64, shared: &Shared) {
    let client = common::client_builder(Some(common::operator_token()), None)
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("producer client");
    let mut rng = fastrand::Rng::with_seed(seed ^ (producer.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let mut seq = 0u64;
    let mut failed_generation = None;
    while let Some((generation, url)) = shared.acquire(failed_generation) {
        failed_generation = None;
        let topic = rng.usize(..TOPICS.len());
        // Mostly single events, some small batches; a single event goes as an object or as a one-element batch.
        let count = if rng.u8(..3) == 0 { rng.u64(2..=8) } else { 1 };
        let ids: Vec<EventId> = (seq..seq + count).map(|s| event_id(producer, s)).collect();
        seq += count;
        let events: Vec<String> = ids.iter().map(|&id| event_json(id)).collect();
        let body =
            if count == 1 && rng.bool() { events[0].clone() } else { format!("[{}]", events.join(",")) };

        lock(&shared.ledger).sent.extend(&ids);
        let outcome = client
            .post(format!("{url}/v1/topics/{}/events", TOPICS[topic].0))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .and_then(|response| {
                let status = response.status();
                response.text().map(|text| (status, text))
            });
        {
            let mut ledger = lock(&shared.ledger);
            match outcome {
                Ok((StatusCode::CREATED, text)) => {
                    match serde_json::from_str::<common::PublishResponse>(&text) {
                        Ok(response) if response.results.len() == ids.len() => {
                            ledger.requests_acked += 1;
                            for (&id, placement) in ids.iter().zip(response.results) {
                                ledger.acked.insert(id, (topic, placement));
                            }
                        }
                        _ => ledger.unexpected.push(format!("201 with an unexpected body: {text:.300}")),
                    }
                }
                // The server may refuse new work while it is being stopped; not an acknowledgement.
                Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => ledger.requests_failed += 1,
                Ok((status, text)) => ledger.unexpected.push(format!("HTTP {status}: {text:.300}")),
                Err(_) => {
                    // Killed mid-request (or refused): no answer, so the events may or may not be stored.
                    ledger.requests_failed += 1;
                    failed_generation = Some(generation);
                }
            }
        }
        shared.release();
    }
}

/// Counts from one verification.
#[derive(Debug, Default)]
struct Checked {
    records: usize,
    unacked_present: usize,
}

/// Reads every partition of every topic (producers are quiet) and checks it against the ledger and against
/// what earlier verifications saw.
fn verify(
    server: &Server,
    shared: &Shared,
    seen: &mut HashMap<(usize, u32, u64), EventId>,
    round: &str,
) -> Checked {
    let ledger = lock(&shared.ledger);
    assert!(ledger.unexpected.is_empty(), "{round}: unexpected answers: {:#?}", ledger.unexpected);
    let mut checked = Checked::default();
    let mut present: HashMap<EventId, (usize, u32, u64)> = HashMap::new();

    for (topic, &(name, partitions)) in TOPICS.iter().enumerate() {
        let description = server.describe(name);
        for partition in 0..partitions {
            let events = server.read_partition(name, partition);
            let offsets = &description["offsets"][partition as usize];
            assert_eq!(offsets["earliest"], 0, "{round}: {name}/{partition} lost its start: {offsets}");
            assert_eq!(
                offsets["latest"].as_u64(),
                Some(events.len() as u64),
                "{round}: {name}/{partition}: log end disagrees with the records read"
            );
            for event in &events {
                let place = (topic, partition, event.offset);
                let value = event.value.get();
                let id = parse_event_id(value).unwrap_or_else(|| {
                    panic!("{round}: {name}/{partition}@{}: foreign record {value:.200}", event.offset)
                });
                assert!(
                    value == event_json(id),
                    "{round}: {name}/{partition}@{}: bytes of event {id:#x} differ",
                    event.offset
                );
                assert_eq!(event.key.as_deref(), Some(item_id(id).as_str()), "{round}: key of event {id:#x}");
                assert!(ledger.sent.contains(&id), "{round}: event {id:#x} at {place:?} was never sent");
                if let Some(earlier) = present.insert(id, place) {
                    panic!("{round}: event {id:#x} is stored twice, at {earlier:?} and {place:?}");
                }
                if let Some(&before) = seen.get(&place) {
                    assert_eq!(
                        before, id,
                        "{round}: offset {place:?} held {before:#x} before a crash, now {id:#x}"
                    );
                } else {
                    seen.insert(place, id);
                }
                if !ledger.acked.contains_key(&id) {
                    checked.unacked_present += 1;
                }
            }
            checked.records += events.len();
        }
    }

    // Offsets seen before must still exist (the log cannot have shrunk below them).
    for &(topic, partition, offset) in seen.keys() {
        let id = seen[&(topic, partition, offset)];
        assert_eq!(
            present.get(&id),
            Some(&(topic, partition, offset)),
            "{round}: event {id:#x} vanished or moved"
        );
    }
    for (&id, &(topic, placement)) in &ledger.acked {
        let expected = (topic, placement.partition, placement.offset);
        match present.get(&id) {
            Some(&actual) => assert_eq!(actual, expected, "{round}: acknowledged event {id:#x} moved"),
            None => panic!("{round}: acknowledged event {id:#x} at {expected:?} is missing"),
        }
    }

    // Each producer's acknowledged events are in its sending order within every partition.
    let mut last: HashMap<(u64, usize, u32), (u64, u64)> = HashMap::new();
    let mut acked: Vec<_> = ledger.acked.iter().collect();
    acked.sort_unstable_by_key(|(id, _)| **id);
    for (&id, &(topic, placement)) in acked {
        let key = (id >> 32, topic, placement.partition);
        if let Some(&(previous_id, previous_offset)) = last.get(&key) {
            assert!(
                placement.offset > previous_offset,
                "{round}: {id:#x} was stored before {previous_id:#x}"
            );
        }
        last.insert(key, (id, placement.offset));
    }
    checked
}

#[test]
fn acknowledged_events_survive_repeated_sigkill() {
    let started = Instant::now();
    let seed = std::env::var("CRASH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test seed: {seed} (replay with CRASH_TEST_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);

    let mut server = Server::start();
    for (name, partitions) in TOPICS {
        server.create_topic(name, partitions);
    }
    let shared = Arc::new(Shared {
        target: Mutex::new(Target { generation: 0, url: None, in_flight: 0 }),
        changed: Condvar::new(),
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
    });
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || producer(p, seed, &shared))
        })
        .collect();

    let mut seen = HashMap::new();
    for kill in 0..KILLS {
        shared.set_url(Some(server.url()));
        thread::sleep(Duration::from_millis(rng.u64(MIN_RUN_MS..=MAX_RUN_MS)));
        shared.set_url(None);
        server.kill9();
        shared.quiesce();
        server.restart();
        verify(&server, &shared, &mut seen, &format!("after kill {}", kill + 1));
    }

    // A last stretch without a kill, then a graceful stop: it must exit 0 and keep everything.
    shared.set_url(Some(server.url()));
    thread::sleep(Duration::from_millis(100));
    shared.stop.store(true, Ordering::SeqCst);
    shared.changed.notify_all();
    for producer in producers {
        producer.join().expect("producer thread");
    }
    let before_stop = verify(&server, &shared, &mut seen, "before SIGTERM");
    let status = server.terminate();
    assert!(status.success(), "SIGTERM must exit 0, got {status}; log:\n{}", server.logs());
    server.restart();
    let at_end = verify(&server, &shared, &mut seen, "at the end");
    assert_eq!(at_end.records, before_stop.records);

    let ledger = lock(&shared.ledger);
    eprintln!(
        "crash test: {KILLS} kills in {:.1?}; {} records, {} events acknowledged in {} requests, {} requests \
         unanswered; {} stored events were never acknowledged (in flight at a kill)",
        started.elapsed(),
        at_end.records,
        ledger.acked.len(),
        ledger.requests_acked,
        ledger.requests_failed,
        at_end.unacked_present,
    );
    // Guard against a vacuous pass: the producers really worked, and kills really hit requests in flight.
    assert!(ledger.acked.len() >= 200, "only {} events were acknowledged", ledger.acked.len());
    assert!(ledger.requests_failed > 0, "no kill ever hit a request in flight");
}

#[test]
fn generated_events_are_esgf_like_and_about_two_kilobytes() {
    let id = event_id(3, 41);
    let json = event_json(id);
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value["data"]["payload"]["item"]["id"], item_id(id));
    assert_eq!(common::expected_key(&json), Some(item_id(id)));
    assert_eq!(parse_event_id(&json), Some(id));
    assert!((1500..=3000).contains(&json.len()), "{} bytes", json.len());
}
