"""The web pages in a real browser: headless Chromium (Debian package `chromium`) loads each page of a running
server with content (topics with events, an announcement, a planned maintenance window), checks the DOM it built
and takes a screenshot.

Screenshots go to a temporary directory, so a test run leaves the tree clean; with `ESGF_UPDATE_SCREENSHOTS=1`
they are written to `docs/screenshots/` (referenced from the README) instead.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from esgf_server import FIXTURES, REPO

#: Each page, the `<title>` it must have and texts its rendered DOM must contain.
PAGES = {
    "home": ("/", "Home · ESGF Event Service",
             ["The event stream of the Earth System Grid Federation", "Operational", "Server-sent events",
              "Webhooks", "Kafka", "Next planned maintenance (read-only)", "New filter parameter"]),
    "topics": ("/topics", "Topics · ESGF Event Service",
               ["esgf2.publications", "Dataset publications of the CMIP6 data nodes", "esgf-envelope"]),
    "status": ("/status", "Status · ESGF Event Service", ["operational", "Storage migration", "esgf2.publications"]),
    "announcements": ("/announcements", "Announcements · ESGF Event Service",
                      ["New filter parameter", "Planned maintenance (read-only)", "Storage migration"]),
    "changelog": ("/changelog", "Changelog · ESGF Event Service", ["Maintenance window", "Releases"]),
}

CHROMIUM_TIMEOUT = 60.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed (Debian package `chromium`; scripts/test.sh installs it)")
    return path


def run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with the flags known to work here (see BUILD-NOTES "Browser"), a fresh profile each run."""
    profile.mkdir(parents=True, exist_ok=True)
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr[-2000:]}"
    return result


class Dom(HTMLParser):
    """What the checks need from a serialized DOM: the title, the visible text, landmarks and attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("br", "meta", "link", "img", "input"):
            self._in.append(tag)

    def handle_endtag(self, tag):
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass

    def handle_data(self, data):
        if "title" in self._in and "svg" not in self._in:  # SVG charts have <title>s of their own
            self.title += data
        elif not {"style", "script"} & set(self._in):
            self.text.append(data)

    @property
    def visible_text(self) -> str:
        return " ".join(" ".join(self.text).split())

    def has(self, tag: str, **attrs: str) -> bool:
        return any(t == tag and all(a.get(k) == v for k, v in attrs.items()) for t, a in self.tags)


def dump_dom(profile: Path, url: str) -> Dom:
    dom = Dom()
    dom.feed(run_chromium(profile, "--dump-dom", url).stdout)
    return dom


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path}: no IHDR chunk"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    updating = os.environ.get("ESGF_UPDATE_SCREENSHOTS") == "1"
    target = REPO / "docs" / "screenshots" if updating else tmp_path / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    return target


def populate(server) -> None:
    """Topics with events, an announcement, and an announced read-only window a week ahead."""
    fixture = json.loads((FIXTURES / "piddiplatsch_cmip6.json").read_text())
    with server.client() as c:
        r = c.post("/v1/topics", json={"name": "esgf2.publications", "partitions": 2, "validation": "esgf-envelope",
                                       "description": "Dataset publications of the CMIP6 data nodes",
                                       "owner": "esgf-ops@example.org", "retention": "90d"})
        assert r.status_code == 201, r.text
        r = c.post("/v1/topics", json={"name": "esgf2.replicas", "description": "Replica additions"})
        assert r.status_code == 201, r.text
        events = []
        for n in range(12):
            event = json.loads(json.dumps(fixture))
            event["data"]["payload"]["item"]["id"] += f".n{n}"
            events.append(event)
        r = c.post("/v1/topics/esgf2.publications/events", json=events)
        assert r.status_code == 201, r.text
        r = c.post("/v1/topics/esgf2.replicas/events", json=[{"metadata": {}, "data": {"n": n}} for n in range(3)])
        assert r.status_code == 201, r.text

        r = c.post("/v1/announcements", json={
            "kind": "api-change", "title": "New filter parameter on reads",
            "body": "GET /v1/topics/{topic}/events accepts filter=path:value; older clients are unaffected."})
        assert r.status_code == 201, r.text
        notice = c.post("/v1/announcements", json={
            "kind": "planned-downtime", "title": "Storage migration next week",
            "body": "Publishing pauses for one hour; reads and streams keep working."})
        assert notice.status_code == 201, notice.text
        start = (datetime.now(timezone.utc) + timedelta(days=8)).replace(hour=8, minute=0, second=0, microsecond=0)
        r = c.post("/v1/maintenance", json={
            "starts_at": iso(start), "ends_at": iso(start + timedelta(hours=1)), "mode": "read-only",
            "message": "Storage migration", "announcement": notice.json()["id"]})
        assert r.status_code == 201, r.text


def test_every_page_renders_in_chromium_with_its_content_and_a_screenshot(server, tmp_path, screenshots):
    populate(server)
    profile = tmp_path / "profile"
    nav = ["/", "/topics", "/status", "/announcements", "/changelog"]
    for name, (path, title, texts) in PAGES.items():
        url = server.url + path
        dom = dump_dom(profile, url)
        assert dom.title == title, f"{path}: title {dom.title!r}"
        for text in texts:
            assert text.lower() in dom.visible_text.lower(), f"{path}: {text!r} not in {dom.visible_text[:3000]}"
        # One layout: language, viewport, landmarks, the same navigation, this page marked current, no scripts.
        assert dom.has("html", lang="en"), path
        assert dom.has("meta", name="viewport"), path
        for landmark in ("header", "nav", "main", "footer"):
            assert dom.has(landmark), f"{path}: no <{landmark}>"
        for link in nav:
            assert dom.has("a", href=link), f"{path}: no link to {link}"
        assert dom.has("a", href=path, **{"aria-current": "page"}), f"{path} not marked current"
        assert not dom.has("script"), path

        shot = screenshots / f"{name}.png"
        run_chromium(profile, f"--screenshot={shot}", "--window-size=1280,900", url)
        assert png_size(shot) == (1280, 900), shot
        assert shot.stat().st_size > 10_000, f"{shot} is suspiciously small (blank page?)"

    phone = screenshots / "home-phone.png"
    run_chromium(profile, f"--screenshot={phone}", "--window-size=390,844", server.url + "/")
    assert png_size(phone) == (390, 844)
    assert phone.stat().st_size > 10_000


def test_home_page_shows_maintenance_in_progress(server, tmp_path):
    now = datetime.now(timezone.utc)
    with server.client() as c:
        r = c.post("/v1/maintenance", json={"starts_at": iso(now - timedelta(minutes=1)),
                                             "ends_at": iso(now + timedelta(hours=1)), "mode": "full",
                                             "message": "Emergency disk replacement", "force": True})
        assert r.status_code == 201, r.text
    dom = dump_dom(tmp_path / "profile", server.url + "/")
    # The home page is spared by the window, so it can say so.
    assert "Maintenance in progress (full)" in dom.visible_text, dom.visible_text
    assert "Emergency disk replacement" in dom.visible_text
    assert dom.has("div", **{"class": "banner maintenance", "role": "status"})
