"""ESGF's existing Kafka clients against the real binary's Kafka endpoint (`serve --kafka-addr`), unchanged:
confluent-kafka (librdkafka) and kafka-python, with SASL_PLAINTEXT / PLAIN (user = principal, password = token).

- produce over Kafka -> read over HTTP; publish over HTTP -> consume over Kafka (group, manual sync commits);
- two consumers of one group split the partitions and rebalance when one leaves;
- commit, restart the consumer (and the server), resume after the committed offset;
- a wrong password is refused; a producer without a grant gets TOPIC_AUTHORIZATION_FAILED;
- an idempotent producer's retried batch is stored once; every compression codec round-trips.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esgf_server import EsgfServer, new_operator_token, wait_until  # noqa: E402

WAIT = 30.0

# kafka-python loads its protocol schemas with a deprecated importlib API: not this suite's concern.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def kafka_server(tmp_path: Path):
    srv = EsgfServer(tmp_path / "data", new_operator_token(), extra_args=["--kafka-addr", "127.0.0.1:0"]).start()
    try:
        srv.wait_for_address("kafka_addr")
        yield srv
    finally:
        srv.stop()


def register(server: EsgfServer, role: str, name: str, topics: list[str]) -> str:
    """Registers a producer or consumer over the HTTP API; returns its token (its SASL password)."""
    with server.client() as client:
        response = client.post(f"/v1/{role}s", json={"name": name, "topics": topics})
        assert response.status_code == 201, response.text
        return response.json()["token"]


def sasl(server: EsgfServer, user: str, password: str, **extra) -> dict:
    return {
        "bootstrap.servers": server.addresses["kafka_addr"],
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": user,
        "sasl.password": password,
        **extra,
    }


def consumer_config(server: EsgfServer, user: str, password: str, group: str, **extra) -> dict:
    return sasl(server, user, password, **{
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        **extra,
    })


def produce_all(producer: Producer, topic: str, values: list[bytes], **kwargs) -> list:
    """Produces and waits for every delivery report; returns them as (error, partition, offset)."""
    reports = []

    def done(err, msg):
        reports.append((err, msg.partition(), msg.offset()))

    for value in values:
        producer.produce(topic, value=value, on_delivery=done, **kwargs)
    producer.flush(WAIT)
    assert len(reports) == len(values), "every message gets a delivery report"
    return reports


def poll_values(consumer: Consumer, n: int) -> list:
    """Polls until `n` messages arrived; returns them."""
    got = []
    deadline = time.monotonic() + WAIT
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} messages arrived"
        message = consumer.poll(0.5)
        if message is None:
            continue
        assert message.error() is None, message.error()
        got.append(message)
    return got


def read_http(server: EsgfServer, topic: str, partition: int = 0) -> list[dict]:
    with server.client() as client:
        response = client.get(f"/v1/topics/{topic}/events", params={"partition": partition, "limit": 1000})
        assert response.status_code == 200, response.text
        return response.json()["events"]


def event(n: int) -> dict:
    return {"data": {"payload": {"collection_id": "CMIP6", "method": "POST", "item": {"id": f"CMIP6.item.{n}"}}}}


def test_confluent_produce_is_readable_over_http(kafka_server):
    kafka_server.create_topic("esgf2.publications")
    password = register(kafka_server, "producer", "publisher", ["esgf2.publications"])
    producer = Producer(sasl(kafka_server, "publisher", password))
    values = [json.dumps(event(n)).encode() for n in range(5)]
    reports = produce_all(producer, "esgf2.publications", values, key=b"CMIP6.item",
                          headers=[("source", b"confluent")])
    assert [err for err, _, _ in reports] == [None] * 5
    assert sorted(offset for _, _, offset in reports) == [0, 1, 2, 3, 4]
    events = read_http(kafka_server, "esgf2.publications")
    assert [e["value"] for e in events] == [event(n) for n in range(5)]
    assert events[0]["key"] == "CMIP6.item"
    assert events[0]["headers"] == [{"name": "source", "value": "confluent"}]


def test_http_publish_is_consumed_over_kafka_with_manual_commits(kafka_server):
    kafka_server.create_topic("events")
    kafka_server.publish("events", [event(n) for n in range(4)])
    password = register(kafka_server, "consumer", "reader", ["events"])
    consumer = Consumer(consumer_config(kafka_server, "reader", password, "readers"))
    consumer.subscribe(["events"])
    try:
        messages = poll_values(consumer, 4)
        assert [json.loads(m.value()) for m in messages] == [event(n) for n in range(4)]
        committed = consumer.commit(message=messages[-1], asynchronous=False)
        assert committed[0].offset == 4 and committed[0].error is None
    finally:
        consumer.close()


def test_two_consumers_split_partitions_and_rebalance_when_one_leaves(kafka_server):
    kafka_server.create_topic("split", partitions=2)
    password = register(kafka_server, "consumer", "team", ["split"])
    assignments: dict[str, list[int]] = {"a": [], "b": []}

    def tracker(name):
        def on_assign(consumer, partitions):
            assignments[name] = sorted(p.partition for p in partitions)

        def on_revoke(consumer, partitions):
            assignments[name] = []

        return on_assign, on_revoke

    first = Consumer(consumer_config(kafka_server, "team", password, "splitters"))
    on_assign, on_revoke = tracker("a")
    first.subscribe(["split"], on_assign=on_assign, on_revoke=on_revoke)
    deadline = time.monotonic() + WAIT
    while assignments["a"] != [0, 1]:
        assert time.monotonic() < deadline, assignments
        first.poll(0.2)

    second = Consumer(consumer_config(kafka_server, "team", password, "splitters"))
    on_assign, on_revoke = tracker("b")
    second.subscribe(["split"], on_assign=on_assign, on_revoke=on_revoke)
    deadline = time.monotonic() + WAIT
    while not (len(assignments["a"]) == 1 and len(assignments["b"]) == 1):
        assert time.monotonic() < deadline, assignments
        first.poll(0.1)
        second.poll(0.1)
    assert sorted(assignments["a"] + assignments["b"]) == [0, 1]

    second.close()  # LeaveGroup: the survivor takes both partitions back
    deadline = time.monotonic() + WAIT
    while assignments["a"] != [0, 1]:
        assert time.monotonic() < deadline, assignments
        first.poll(0.2)
    first.close()


def test_a_restarted_consumer_resumes_after_its_commit_even_across_a_server_restart(kafka_server):
    kafka_server.create_topic("resume")
    kafka_server.publish("resume", [event(n) for n in range(6)])
    password = register(kafka_server, "consumer", "resumer", ["resume"])

    consumer = Consumer(consumer_config(kafka_server, "resumer", password, "resumers"))
    consumer.subscribe(["resume"])
    messages = poll_values(consumer, 3)
    consumer.commit(message=messages[2], asynchronous=False)
    consumer.close()

    kafka_server.restart()
    kafka_server.wait_for_address("kafka_addr")
    consumer = Consumer(consumer_config(kafka_server, "resumer", password, "resumers"))
    consumer.subscribe(["resume"])
    try:
        rest = poll_values(consumer, 3)
        assert [m.offset() for m in rest] == [3, 4, 5]
    finally:
        consumer.close()


def test_a_wrong_password_is_refused(kafka_server):
    kafka_server.create_topic("guarded")
    register(kafka_server, "producer", "publisher", ["guarded"])
    errors = []
    producer = Producer(sasl(kafka_server, "publisher", "esgfev_wrong", error_cb=errors.append,
                             **{"message.timeout.ms": 3000}))
    reports = produce_all(producer, "guarded", [b"x"])
    assert reports[0][0] is not None, "nothing is delivered without valid credentials"
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert read_http(kafka_server, "guarded") == []


def test_a_producer_without_a_grant_gets_topic_authorization_failed(kafka_server):
    kafka_server.create_topic("granted")
    kafka_server.create_topic("forbidden")
    password = register(kafka_server, "producer", "narrow", ["granted"])
    producer = Producer(sasl(kafka_server, "narrow", password, **{"message.timeout.ms": 10000}))
    reports = produce_all(producer, "forbidden", [b"x"])
    assert reports[0][0] is not None and reports[0][0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, reports
    assert read_http(kafka_server, "forbidden") == []


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec_round_trips(kafka_server, codec):
    topic = f"compressed.{codec}"
    kafka_server.create_topic(topic)
    password = register(kafka_server, "producer", f"p-{codec}", [topic])
    producer = Producer(sasl(kafka_server, f"p-{codec}", password, **{"compression.type": codec, "linger.ms": 20}))
    values = [json.dumps({**event(n), "pad": "x" * 200}).encode() for n in range(50)]
    assert all(err is None for err, _, _ in produce_all(producer, topic, values))
    events = read_http(kafka_server, topic)
    assert len(events) == 50
    assert events[49]["value"]["data"]["payload"]["item"]["id"] == "CMIP6.item.49"


def test_kafka_python_produces_and_consumes_in_a_group(kafka_server):
    from kafka import KafkaConsumer, KafkaProducer

    kafka_server.create_topic("kp")
    producer_password = register(kafka_server, "producer", "kp-producer", ["kp"])
    consumer_password = register(kafka_server, "consumer", "kp-consumer", ["kp"])
    common = {"bootstrap_servers": kafka_server.addresses["kafka_addr"], "security_protocol": "SASL_PLAINTEXT",
              "sasl_mechanism": "PLAIN"}
    producer = KafkaProducer(**common, sasl_plain_username="kp-producer", sasl_plain_password=producer_password,
                             compression_type="gzip")
    for n in range(5):
        producer.send("kp", json.dumps(event(n)).encode()).get(timeout=WAIT)
    producer.close()
    assert len(read_http(kafka_server, "kp")) == 5

    consumer = KafkaConsumer("kp", **common, sasl_plain_username="kp-consumer",
                             sasl_plain_password=consumer_password, group_id="kp-group",
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=20000)
    got = []
    for message in consumer:
        got.append(json.loads(message.value))
        if len(got) == 5:
            break
    consumer.commit()
    consumer.close()
    assert got == [event(n) for n in range(5)]


# --- An idempotent retry, on the wire -------------------------------------------------------------------------
# A client whose acknowledgement is lost resends the same batch (same producer id, epoch and sequence). Forcing
# librdkafka to lose one is not possible from Python, so this speaks the protocol itself: kafka-python builds the
# record batch, the requests are framed here.


class Wire:
    def __init__(self, addr: str):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=WAIT)
        self.correlation = 0

    def call(self, api_key: int, version: int, body: bytes) -> bytes:
        self.correlation += 1
        client = b"wire-test"
        header = struct.pack(">hhih", api_key, version, self.correlation, len(client)) + client
        frame = header + body
        self.sock.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", self._read(4))[0]
        response = self._read(size)
        assert struct.unpack(">i", response[:4])[0] == self.correlation
        return response[4:]

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data


def string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def test_an_idempotent_retry_is_stored_once(kafka_server):
    from kafka.record.default_records import DefaultRecordBatchBuilder

    kafka_server.create_topic("idem")
    password = register(kafka_server, "producer", "idem-producer", ["idem"])
    wire = Wire(kafka_server.addresses["kafka_addr"])
    handshake = wire.call(17, 1, string("PLAIN"))
    assert struct.unpack(">h", handshake[:2])[0] == 0
    token = b"\0idem-producer\0" + password.encode()
    authenticated = wire.call(36, 0, struct.pack(">i", len(token)) + token)
    assert struct.unpack(">h", authenticated[:2])[0] == 0
    init = wire.call(22, 0, string(None) + struct.pack(">i", 60000))
    _throttle, error, producer_id, epoch = struct.unpack(">ihqh", init[:16])
    assert error == 0

    def produce(base_sequence: int, values: list[bytes]) -> tuple[int, int]:
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                            producer_id=producer_id, producer_epoch=epoch,
                                            base_sequence=base_sequence, batch_size=1 << 20)
        for i, value in enumerate(values):
            builder.append(i, timestamp=None, key=None, value=value, headers=[])
        records = bytes(builder.build())
        body = (string(None) + struct.pack(">hi", -1, 10000) + struct.pack(">i", 1) + string("idem")
                + struct.pack(">i", 1) + struct.pack(">i", 0) + struct.pack(">i", len(records)) + records)
        response = wire.call(0, 3, body)
        # [topics: name, [partition, error, base_offset, log_append_time]], throttle
        name_len = struct.unpack(">h", response[4:6])[0]
        at = 6 + name_len + 4
        _partition, error, base_offset = struct.unpack(">ihq", response[at:at + 14])
        return error, base_offset

    first = produce(0, [b'{"n":0}', b'{"n":1}'])
    assert first == (0, 0)
    assert produce(0, [b'{"n":0}', b'{"n":1}']) == (0, 0), "the retry is acknowledged with the original offset"
    assert produce(2, [b'{"n":2}']) == (0, 2)
    assert [e["value"] for e in read_http(kafka_server, "idem")] == [{"n": 0}, {"n": 1}, {"n": 2}]
    wire.sock.close()


def test_confluent_idempotent_producer_stores_each_message_once(kafka_server):
    kafka_server.create_topic("idem2", partitions=2)
    password = register(kafka_server, "producer", "idem2-producer", ["idem2"])
    producer = Producer(sasl(kafka_server, "idem2-producer", password, **{"enable.idempotence": True}))
    values = [str(uuid.uuid4()).encode() for _ in range(200)]
    assert all(err is None for err, _, _ in produce_all(producer, "idem2", values))
    stored = read_http(kafka_server, "idem2", 0) + read_http(kafka_server, "idem2", 1)
    assert len(stored) == 200


def test_a_topic_partition_list_commit_is_visible_to_a_new_consumer(kafka_server):
    kafka_server.create_topic("positions")
    kafka_server.publish("positions", [event(n) for n in range(3)])
    password = register(kafka_server, "consumer", "positioner", ["positions"])
    consumer = Consumer(consumer_config(kafka_server, "positioner", password, "positioners"))
    consumer.assign([TopicPartition("positions", 0, 0)])
    poll_values(consumer, 3)
    consumer.commit(offsets=[TopicPartition("positions", 0, 2)], asynchronous=False)
    consumer.close()
    other = Consumer(consumer_config(kafka_server, "positioner", password, "positioners"))
    try:
        committed = other.committed([TopicPartition("positions", 0)], timeout=WAIT)
        assert committed[0].offset == 2
    except KafkaException as e:  # pragma: no cover - reported with the client's message
        pytest.fail(str(e))
    finally:
        other.close()


def read_all_http(server: EsgfServer, topic: str) -> list[dict]:
    """Every retained event of partition 0, paging until the end of the log."""
    events, offset = [], 0
    with server.client() as client:
        while True:
            response = client.get(f"/v1/topics/{topic}/events",
                                  params={"partition": 0, "offset": offset, "limit": 1000})
            assert response.status_code == 200, response.text
            page = response.json()
            if not page["events"]:
                return events
            events.extend(page["events"])
            offset = page["next_offset"]


def test_every_acknowledged_record_survives_kill_9_under_an_acks_all_producer(tmp_path: Path):
    import random
    import threading

    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    srv = EsgfServer(tmp_path / "data", new_operator_token(), extra_args=["--kafka-addr", "127.0.0.1:0"]).start()
    acked: dict[int, int] = {}  # message number -> offset acknowledged for it
    lock = threading.Lock()
    sent = 0
    try:
        srv.create_topic("crash")
        for cycle in range(6):
            srv.wait_for_address("kafka_addr")
            producer = Producer(sasl(srv, "operator", srv.token, **{
                "acks": "all", "linger.ms": 2, "message.timeout.ms": 4000, "retries": 0,
            }))

            def done(err, msg):
                if err is None:
                    with lock:
                        acked[json.loads(msg.value())["n"]] = msg.offset()

            stop = threading.Event()

            def produce_until_stopped():
                nonlocal sent
                while not stop.is_set():
                    try:
                        producer.produce("crash", value=json.dumps({"n": sent}).encode(), partition=0, on_delivery=done)
                        sent += 1
                    except BufferError:
                        pass
                    producer.poll(0.001)

            thread = threading.Thread(target=produce_until_stopped)
            thread.start()
            wait_until(lambda: len(acked) > 20 * (cycle + 1), what=f"acknowledgements before kill {cycle} (seed {seed})")
            time.sleep(rng.uniform(0.01, 0.3))
            srv.kill()
            stop.set()
            thread.join()
            producer.flush(5)  # in-flight messages fail: they were never acknowledged
            srv.start()
            stored = read_all_http(srv, "crash")
            assert [e["offset"] for e in stored] == list(range(len(stored))), "offsets are dense"
            by_offset = {e["offset"]: e["value"]["n"] for e in stored}
            counts: dict[int, int] = {}
            for n in by_offset.values():
                counts[n] = counts.get(n, 0) + 1
            with lock:
                for n, offset in acked.items():
                    assert by_offset.get(offset) == n, f"acknowledged message {n} lost or moved (seed {seed})"
                    assert counts[n] == 1, f"acknowledged message {n} stored {counts[n]} times (seed {seed})"
    finally:
        srv.stop()


def test_sasl_ssl_as_esgf_configures_it(tmp_path: Path):
    """SASL_SSL with PLAIN, the way ESGF's index consumers connect, against a self-signed certificate."""
    import subprocess

    import httpx

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    srv = EsgfServer(tmp_path / "data", new_operator_token(),
                     extra_args=["--kafka-addr", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)]).start()
    try:
        srv.wait_for_address("kafka_addr")
        base = f"https://{srv.addresses['http_addr']}"
        with httpx.Client(base_url=base, headers=srv.headers, verify=str(cert), timeout=30.0) as client:
            assert client.post("/v1/topics", json={"name": "secure"}).status_code == 201
            producer_token = client.post("/v1/producers", json={"name": "west", "topics": ["secure"]}).json()["token"]
            consumer_token = client.post("/v1/consumers", json={"name": "idx", "topics": ["secure"]}).json()["token"]
        tls = {"security.protocol": "SASL_SSL", "ssl.ca.location": str(cert)}
        producer = Producer({**sasl(srv, "west", producer_token), **tls, "acks": "all"})
        reports = produce_all(producer, "secure", [json.dumps(event(n)).encode() for n in range(5)])
        assert all(err is None for err, _, _ in reports), reports
        consumer = Consumer({**consumer_config(srv, "idx", consumer_token, "idx-group"), **tls})
        consumer.subscribe(["secure"])
        got = poll_values(consumer, 5)
        assert [json.loads(m.value())["data"]["payload"]["item"]["id"] for m in got] == \
            [f"CMIP6.item.{n}" for n in range(5)]
        consumer.commit(asynchronous=False)
        consumer.close()
        # Without TLS the same listener does not talk.
        plain = Producer({**sasl(srv, "west", producer_token), "message.timeout.ms": 3000})
        failed = produce_all(plain, "secure", [b"{}"])
        assert failed[0][0] is not None
    finally:
        srv.stop()
