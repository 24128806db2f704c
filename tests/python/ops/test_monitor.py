"""The unplanned-downtime monitor against the real binary: the service is SIGKILLed for longer than the
(test-shortened) threshold, so the monitor mails one `unplanned-downtime` announcement to an `aiosmtpd` sink;
the service restarts on the same data directory and port, the monitor pushes the incident and announcements,
and the service mails one `restored` announcement with the outage's duration. The incident then shows on
`/v1/status` and `/status` (with uptime and accessible SVG charts), and a monitor restart mails nothing again."""

from __future__ import annotations

import email
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esgf_server import EsgfServer, binary, new_operator_token, wait_until  # noqa: E402

LIST = "list@example.org"


class Sink:
    """Keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.Message]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"

    def subjects(self, kind: str) -> list[str]:
        with self.lock:
            return [m["Subject"] for _, m in self.messages if m["Subject"].startswith(f"[ESGF Event Service] {kind}:")]

    def body(self, kind: str) -> str:
        with self.lock:
            for _, m in self.messages:
                if m["Subject"].startswith(f"[ESGF Event Service] {kind}:"):
                    return m.get_payload(decode=True).decode()
        return ""


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MonitorProcess:
    def __init__(self, args: list[str], token: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESGF_EVENTS_")}
        env["ESGF_EVENTS_TOKEN"] = token
        self.log: list[str] = []
        self.process = subprocess.Popen([str(binary()), "monitor", *args], env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line.rstrip())

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.reader.join(5)


def test_monitor_announces_an_outage_once_and_the_restoration_with_its_duration(tmp_path):
    sink = Sink()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    http_addr = f"127.0.0.1:{free_port()}"
    token = new_operator_token()
    server = EsgfServer(tmp_path / "data", token, http_addr=http_addr, env={
        "ESGF_EVENTS_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "ESGF_EVENTS_ANNOUNCE_TO": LIST,
        "ESGF_EVENTS_OPS_MAIL_FROM": "events@example.org",
    }).start()
    state_file = tmp_path / "monitor.json"
    monitor_args = ["--target", server.url, "--threshold", "2s", "--interval", "200ms",
                    "--smtp-url", f"smtp://127.0.0.1:{smtp_port}", "--announce-to", LIST,
                    "--from", "monitor@example.org", "--state", str(state_file)]
    monitor = MonitorProcess(monitor_args, token)
    try:
        # The monitor has seen the service up (and saved its state) before the service goes away.
        wait_until(lambda: state_file.exists(), timeout=10, what="the monitor's first state save")
        with server.client() as c:
            assert c.get("/v1/status").json()["state"] == "operational"

        server.kill()
        killed_at = time.monotonic()
        wait_until(lambda: sink.subjects("unplanned-downtime"), timeout=10, what="the unplanned-downtime mail")
        assert time.monotonic() - killed_at >= 2.0, "announced before the threshold"
        down = sink.body("unplanned-downtime")
        assert "has not been available since" in down and "/readyz unreachable" in down, down
        time.sleep(0.6)  # a few more probes while still down: no second mail
        assert len(sink.subjects("unplanned-downtime")) == 1

        server.start()
        wait_until(lambda: sink.subjects("restored"), timeout=10, what="the restored mail (sent by the service)")
        restored = sink.body("restored")
        assert re.search(r"The outage lasted (\d+ min )?\d+ s, from ", restored), restored
        assert sink.subjects("restored")[0].startswith("[ESGF Event Service] restored: Service restored after ")

        with httpx.Client(base_url=server.url, timeout=10) as c:
            wait_until(lambda: c.get("/v1/incidents").json()["incidents"], timeout=10, what="the incident")
            incident = c.get("/v1/incidents").json()["incidents"][0]
            assert incident["duration_seconds"] >= 2
            assert incident["detected_by"].startswith("esgf-events monitor on ")
            status = c.get("/v1/status").json()
            assert [i["id"] for i in status["incidents"]] == [incident["id"]]
            assert status["incidents"][0]["ended_at"] == incident["ended_at"]
            assert status["rto"]["incidents"] == 1 and status["rto"]["max_seconds"] >= 2
            assert status["state"] == "operational"
            assert [u["days"] for u in status["uptime"]] == [7, 30, 90]
            announcements = c.get("/v1/announcements").json()["announcements"]
            kinds = {a["kind"]: a for a in announcements}
            assert kinds["unplanned-downtime"]["mailed_by"] == "monitor"
            assert "mailed_by" not in kinds["restored"]

            page = c.get("/status")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            html = page.text
            assert f'id="incident-{incident["id"]}"' in html and "Mean recovery time" in html
            assert "planned downtime is not an SLA breach" in html
            svgs = re.findall(r"<svg.*?</svg>", html, re.S)
            assert len(svgs) == 2, "the uptime and the publish-rate charts"
            for svg in svgs:
                root = ET.fromstring(svg)  # well-formed XML
                assert root.get("role") == "img" and root.get("aria-labelledby")
                assert root.find("{http://www.w3.org/2000/svg}title") is not None

        # The service mails restored to its list once; nothing else arrives, and the down mail is not resent by
        # the service (it was marked mailed by the monitor).
        with server.client() as c:
            wait_until(lambda: all(d["status"] != "pending" for d in c.get("/v1/announcements/deliveries")
                                   .json()["deliveries"]), timeout=10, what="the service's mail pass")
        assert len(sink.subjects("unplanned-downtime")) == 1
        assert len(sink.subjects("restored")) == 1

        # A restarted monitor knows it announced and pushed everything already.
        monitor.stop()
        state = json.loads(state_file.read_text())
        assert state["current"] is None and state["incidents"][0]["incident_pushed"]
        monitor = MonitorProcess(monitor_args, token)
        time.sleep(1.0)
        assert len(sink.subjects("unplanned-downtime")) == 1 and len(sink.subjects("restored")) == 1
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert len(c.get("/v1/announcements").json()["announcements"]) == 2
    finally:
        monitor.stop()
        server.stop()
        controller.stop()
        if os.environ.get("MONITOR_LOG"):
            print("\n".join(monitor.log))


def test_downtime_inside_an_announced_maintenance_window_is_not_announced_by_the_monitor(tmp_path):
    sink = Sink()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    token = new_operator_token()
    server = EsgfServer(tmp_path / "data", token, http_addr=f"127.0.0.1:{free_port()}").start()
    state_file = tmp_path / "monitor.json"
    monitor = None
    try:
        now = time.time()
        with server.client() as c:
            r = c.post("/v1/maintenance", json={"starts_at": iso(now - 5), "ends_at": iso(now + 3600), "mode": "full",
                                                 "message": "disk swap", "force": True})
            assert r.status_code == 201, r.text
        monitor = MonitorProcess(["--target", server.url, "--threshold", "1s", "--interval", "200ms",
                                  "--smtp-url", f"smtp://127.0.0.1:{smtp_port}", "--announce-to", LIST,
                                  "--state", str(state_file)], token)
        # The monitor learns the window from /v1/maintenance while the service answers.
        wait_until(lambda: state_file.exists() and json.loads(state_file.read_text())["windows"], timeout=10,
                   what="the monitor to read the maintenance window")
        server.kill()
        time.sleep(2.0)  # twice the threshold: an unplanned outage would have been announced by now
        state = json.loads(state_file.read_text())
        assert state["current"] is None and state["incidents"] == [], state
        assert sink.subjects("unplanned-downtime") == []
    finally:
        if monitor is not None:
            monitor.stop()
        server.kill()
        controller.stop()
