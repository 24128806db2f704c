"""Webhook subscriptions against the real binary, received by a local HTTP server that checks every delivery
with the `standardwebhooks` library (the Standard Webhooks reference implementation for Python):

- every delivery verifies, and a receiver failing its first attempts still gets every event, in order;
- a receiver that keeps failing fills the dead-letter list; a redrive delivers the dead letters in order;
- a restart resumes from the persisted cursor without losing an event;
- the state file holding the secrets is private, the secret never appears in a log or a later answer, and the
  service refuses to call itself.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esgf_server import EsgfServer, new_operator_token, wait_until  # noqa: E402


class Receiver:
    """A webhook endpoint on 127.0.0.1: answers as `script(n)` says for the n-th request (0-based) and keeps
    the verified payloads of the requests it accepted (2xx)."""

    def __init__(self, script: Callable[[int], int] = lambda n: 204) -> None:
        self.script = script
        self.secret: str | None = None
        self.requests = 0
        self.accepted: list[tuple[str, dict]] = []  # (webhook-id, payload)
        self.failures: list[str] = []  # verification failures
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver.lock:
                    n = receiver.requests
                    receiver.requests += 1
                    status = receiver.script(n)
                    try:
                        payload = Webhook(receiver.secret).verify(body, headers)
                    except (WebhookVerificationError, TypeError) as err:
                        receiver.failures.append(f"{headers.get('webhook-id')}: {err}")
                        payload = None
                    if 200 <= status < 300 and payload is not None:
                        receiver.accepted.append((headers["webhook-id"], payload))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def ids(self) -> list[str]:
        with self.lock:
            return [webhook_id for webhook_id, _ in self.accepted]

    def payloads(self) -> list[dict]:
        with self.lock:
            return [payload for _, payload in self.accepted]

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def event(n: int) -> dict:
    return {"data": {"payload": {"collection_id": "CMIP6", "method": "POST",
                                 "item": {"id": f"CMIP6.webhook.item.{n % 3}", "properties": {"n": n}}}}}


def numbers(payloads: list[dict]) -> list[int]:
    return [p["data"]["payload"]["item"]["properties"]["n"] for p in payloads]


def register_consumer(server: EsgfServer, name: str, topics: list[str]) -> dict[str, str]:
    """Registers a consumer; returns the headers that authenticate as it."""
    with server.client() as client:
        response = client.post("/v1/consumers", json={"name": name, "topics": topics})
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}


def subscribe(server: EsgfServer, receiver: Receiver, topic: str, headers: dict[str, str] | None = None,
              **fields) -> dict:
    with server.client() as client:
        response = client.post("/v1/subscriptions", json={"topic": topic, "url": receiver.url, **fields},
                               headers=headers or server.headers)
        assert response.status_code == 201, response.text
        created = response.json()
    assert created["secret"].startswith("whsec_")
    receiver.secret = created["secret"]
    return created


def get_subscription(server: EsgfServer, sid: str) -> dict:
    with server.client() as client:
        response = client.get(f"/v1/subscriptions/{sid}")
        assert response.status_code == 200, response.text
        return response.json()


def test_every_delivery_verifies_and_arrives_in_order_despite_failed_first_attempts(server: EsgfServer):
    server.create_topic("hooks.order", partitions=1)
    consumer = register_consumer(server, "hook-reader", ["hooks.order"])
    # The first three attempts fail: the first event is retried until it gets through, the rest follow in order.
    with Receiver(lambda n: 500 if n < 3 else 204) as receiver:
        created = subscribe(server, receiver, "hooks.order", consumer, **{"from": "beginning"})
        assert created["owner"] == "hook-reader"
        server.publish("hooks.order", [event(n) for n in range(20)])
        wait_until(lambda: len(receiver.accepted) >= 20, what="20 verified deliveries")
        assert receiver.failures == [], receiver.failures
        assert numbers(receiver.payloads()) == list(range(20))
        assert receiver.ids() == [f"hooks.order-0-{n}" for n in range(20)]

        wait_until(lambda: get_subscription(server, created["id"])["lag"] == 0, what="no lag")
        status = get_subscription(server, created["id"])
        assert status["state"] == "active"
        assert status["partitions"] == [{"partition": 0, "cursor": 20, "latest": 20, "lag": 0}]
        assert status["last_error"]["message"].startswith("HTTP 500"), status
        assert "secret" not in status

    # Consumers see their own subscriptions only; operators see all.
    with server.client() as client:
        mine = client.get("/v1/subscriptions", headers=consumer).json()["subscriptions"]
        assert [s["id"] for s in mine] == [created["id"]]
        other = register_consumer(server, "someone-else", ["hooks.order"])
        assert client.get("/v1/subscriptions", headers=other).json()["subscriptions"] == []
        assert client.get(f"/v1/subscriptions/{created['id']}", headers=other).status_code == 403


def test_a_failing_receiver_fills_the_dead_letter_list_and_redrive_delivers_them(tmp_path: Path):
    server = EsgfServer(tmp_path / "data", new_operator_token(), env={"ESGF_EVENTS_WEBHOOKS_MAX_ATTEMPTS": "2"})
    server.start()
    try:
        server.create_topic("hooks.dead", partitions=1)
        healthy = threading.Event()
        with Receiver(lambda n: 204 if healthy.is_set() else 503) as receiver:
            created = subscribe(server, receiver, "hooks.dead", format="cloudevents")
            sid = created["id"]
            server.publish("hooks.dead", [event(n) for n in range(3)])

            def dead_letters() -> list[dict]:
                with server.client() as client:
                    return client.get(f"/v1/subscriptions/{sid}/dead-letters").json()["dead_letters"]

            wait_until(lambda: len(dead_letters()) == 3, what="3 dead letters")
            letters = dead_letters()
            assert [d["offset"] for d in letters] == [0, 1, 2]
            assert all(d["attempts"] == 2 and d["last_error"].startswith("HTTP 503") for d in letters), letters
            assert receiver.accepted == []

            healthy.set()
            with server.client() as client:
                response = client.post(f"/v1/subscriptions/{sid}/redrive")
                assert response.status_code == 202, response.text
                assert response.json() == {"queued": 3}
            wait_until(lambda: len(receiver.accepted) >= 3, what="redriven deliveries")
            assert receiver.failures == [], receiver.failures
            # CloudEvents: the event is the `data` of each delivery.
            assert [p["specversion"] for p in receiver.payloads()] == ["1.0"] * 3
            assert numbers([p["data"] for p in receiver.payloads()]) == [0, 1, 2]
            wait_until(lambda: dead_letters() == [], what="an empty dead-letter list")
    finally:
        assert server.stop() == 0


def test_a_restart_resumes_from_the_persisted_cursor_without_loss(tmp_path: Path):
    server = EsgfServer(tmp_path / "data", new_operator_token()).start()
    try:
        server.create_topic("hooks.restart", partitions=2)
        with Receiver() as receiver:
            created = subscribe(server, receiver, "hooks.restart", **{"from": "beginning"})
            server.publish("hooks.restart", [event(n) for n in range(60)])
            wait_until(lambda: len(receiver.accepted) >= 10, what="some deliveries before the restart")
            server.restart()
            server.publish("hooks.restart", [event(n) for n in range(60, 100)])
            wait_until(lambda: len(set(receiver.ids())) >= 100, what="every event after the restart")
            assert receiver.failures == [], receiver.failures
            # At least once: duplicates may only be redeliveries; per item (one partition each) order holds.
            seen = numbers(receiver.payloads())
            assert sorted(set(seen)) == list(range(100))
            for item in range(3):
                mine = [n for n in dict.fromkeys(seen) if n % 3 == item]
                assert mine == sorted(mine), f"item {item} out of order: {mine}"
            wait_until(lambda: get_subscription(server, created["id"])["lag"] == 0, what="no lag")
    finally:
        assert server.stop() == 0


def test_secrets_stay_private_and_the_service_refuses_to_call_itself(server: EsgfServer):
    server.create_topic("hooks.private", partitions=1)
    with Receiver() as receiver:
        created = subscribe(server, receiver, "hooks.private")
    mode = stat.S_IMODE(os.stat(server.data_dir / "state.redb").st_mode)
    assert mode == 0o600, oct(mode)
    assert created["secret"] not in "\n".join(server.log)
    with server.client() as client:
        listed = client.get("/v1/subscriptions").text
        assert created["secret"][6:] not in listed

        response = client.post("/v1/subscriptions", json={"topic": "hooks.private",
                                                          "url": f"{server.url}/v1/producers"})
        assert response.status_code == 400, response.text
        problem = response.json()
        assert problem["type"] == "urn:esgf-events:problem:webhook-url-refused"
        assert problem["rule"] == "own-address"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "file:///etc/passwd"])
def test_only_http_and_https_urls_are_accepted(server: EsgfServer, url: str):
    server.create_topic("hooks.scheme", partitions=1)
    with server.client() as client:
        response = client.post("/v1/subscriptions", json={"topic": "hooks.scheme", "url": url})
    assert response.status_code == 400
    assert response.json()["rule"] == "scheme"
