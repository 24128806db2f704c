"""The real `esgf-events` binary under test: started on a free port over a temporary data directory.

The binary is `$ESGF_EVENTS_BIN`, else `target/debug/esgf-events` (built by the cargo step of scripts/test.sh).
Servers run with an operator token from `ESGF_EVENTS_OPERATOR_TOKEN`, log JSON to stderr, and are ready once
they log `listening` with their bound `http_addr` (port 0 picks a free port).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "esgf"

#: How long a server may take to start (crash recovery included) or stop.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def binary() -> Path:
    path = Path(os.environ.get("ESGF_EVENTS_BIN") or REPO / "target" / "debug" / "esgf-events")
    if not path.is_file():
        pytest.fail(f"{path} does not exist: build it first (cargo build -p esgf-events) or set ESGF_EVENTS_BIN")
    return path


def new_operator_token() -> str:
    """A token in the service's own format: `esgfev_` and 32 random bytes in base64url (43 characters)."""
    return "esgfev_" + secrets.token_urlsafe(32)


class EsgfServer:
    """One `esgf-events serve` process at a time over one data directory; restartable (a new port each time)."""

    def __init__(self, data_dir: Path, token: str, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, http_addr: str = "127.0.0.1:0") -> None:
        #: `127.0.0.1:0` picks a free port at each start; a fixed one keeps the URL across restarts.
        self.http_addr = http_addr
        self.data_dir = data_dir
        self.token = token
        self.extra_args = extra_args or []
        self.env = env or {}
        self.process: subprocess.Popen[str] | None = None
        #: Fields of every `listening` event of the current run, e.g. {"http_addr": "127.0.0.1:41234"}.
        self.addresses: dict[str, str] = {}
        self.log: deque[str] = deque(maxlen=2000)
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addresses['http_addr']}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self) -> "EsgfServer":
        assert self.process is None, "already running"
        # The server refuses unknown ESGF_EVENTS_* variables (e.g. a test runner's ESGF_EVENTS_BIN): pass none on.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESGF_EVENTS_")}
        env.update({"ESGF_EVENTS_OPERATOR_TOKEN": self.token, **self.env})
        env.pop("RUST_LOG", None)
        args = [str(binary()), "serve", "--http-addr", self.http_addr, "--data-dir", str(self.data_dir),
                "--log-format", "json", *self.extra_args]
        self.process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self.addresses = {}
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, args=(self.process, ready), daemon=True)
        self._reader.start()
        if not ready.wait(START_TIMEOUT) or "http_addr" not in self.addresses:
            self.kill()
            pytest.fail("the server did not start:\n" + "\n".join(self.log))
        return self

    def _read_log(self, process: subprocess.Popen[str], ready: threading.Event) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.log.append(line.rstrip())
            try:
                record = json.loads(line)
            except ValueError:
                continue
            fields = record.get("fields", {})
            if fields.get("message") == "listening":
                for name, value in fields.items():
                    if name.endswith("_addr"):
                        self.addresses[name] = value
                if "http_addr" in fields:
                    ready.set()
        ready.set()  # the process ended: let start() report it

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.process is None:
            return 0
        process, self.process = self.process, None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail("the server did not stop on SIGTERM:\n" + "\n".join(self.log))
        finally:
            if self._reader is not None:
                self._reader.join(5)
            self.assert_no_panic()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        self.assert_no_panic()

    def assert_no_panic(self) -> None:
        """A panic in any task is a bug even when the server carries on (tokio catches it): fail the test."""
        panics = [line for line in self.log if "panicked at" in line]
        if panics:
            self.log.clear()  # report once
            pytest.fail("the server panicked:\n" + "\n".join(panics))

    def restart(self) -> "EsgfServer":
        status = self.stop()
        assert status == 0, f"exit status {status}:\n" + "\n".join(self.log)
        return self.start()

    # --- HTTP helpers ------------------------------------------------------------------------------------------

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30.0, **kwargs)

    def create_topic(self, name: str, partitions: int = 1) -> dict:
        with self.client() as client:
            response = client.post("/v1/topics", json={"name": name, "partitions": partitions})
            assert response.status_code == 201, response.text
            return response.json()

    def wait_for_address(self, name: str, timeout: float = 30.0) -> str:
        """Waits until the server logged `listening` with `name` (e.g. `kafka_addr`); on failure shows whether the
        process is still running and its log, so a crash is not mistaken for slowness."""
        deadline = time.monotonic() + timeout
        while name not in self.addresses:
            exited = self.process is None or self.process.poll() is not None
            if exited or time.monotonic() > deadline:
                state = "exited" if exited else "still running"
                pytest.fail(f"no {name} logged (server {state}):\n" + "\n".join(list(self.log)[-200:]))
            time.sleep(0.02)
        return self.addresses[name]

    def publish(self, topic: str, events: list) -> list[dict]:
        """Publishes `events` as one batch; returns their placements."""
        with self.client() as client:
            response = client.post(f"/v1/topics/{topic}/events", json=events)
            assert response.status_code == 201, response.text
            return response.json()["results"]


def wait_until(condition, timeout: float = 30.0, interval: float = 0.02, what: str = "condition") -> None:
    """Polls `condition` until it holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)
