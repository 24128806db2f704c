"""Announcement mail from the real binary to an `aiosmtpd` sink on loopback: each announcement reaches the
configured list and every registered principal's contact once, and a restart sends nothing again."""

from __future__ import annotations

import email
import socket
import sys
import threading
from pathlib import Path

from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esgf_server import EsgfServer, new_operator_token, wait_until  # noqa: E402


class Sink:
    """Keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.Message]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"

    def recipients(self) -> list[str]:
        with self.lock:
            return sorted(r for rcpts, _ in self.messages for r in rcpts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_announcement_is_mailed_once_per_recipient_even_across_a_restart(tmp_path):
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    server = EsgfServer(tmp_path / "data", new_operator_token(), env={
        "ESGF_EVENTS_SMTP_URL": f"smtp://127.0.0.1:{port}",
        "ESGF_EVENTS_ANNOUNCE_TO": "list@example.org, centre@example.org",
        "ESGF_EVENTS_OPS_MAIL_FROM": "events@example.org",
    }).start()
    try:
        with server.client() as c:
            r = c.post("/v1/consumers", json={"name": "indexer", "contact": "indexer@example.org"})
            assert r.status_code == 201, r.text
            r = c.post("/v1/announcements", json={"kind": "api-change", "title": "New filter syntax",
                                                   "body": "Filters now accept key prefixes."})
            assert r.status_code == 201, r.text
        expected = ["centre@example.org", "indexer@example.org", "list@example.org"]
        wait_until(lambda: sink.recipients() == expected, what="one mail per recipient")
        for _, message in sink.messages:
            assert message["Subject"] == "[ESGF Event Service] api-change: New filter syntax"
            assert "Filters now accept key prefixes." in message.get_payload(decode=True).decode()
        with server.client() as c:
            deliveries = c.get("/v1/announcements/deliveries").json()["deliveries"]
        assert sorted(d["recipient"] for d in deliveries if d["status"] == "sent") == expected

        server.restart()
        with server.client() as c:
            r = c.post("/v1/announcements", json={"kind": "general", "title": "Second"})
            assert r.status_code == 201, r.text
        wait_until(lambda: len(sink.recipients()) == 6, what="the second announcement's mail")
        assert sink.recipients() == sorted(expected * 2), "the first announcement was not sent again"
    finally:
        server.stop()
        controller.stop()
