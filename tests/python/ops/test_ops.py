"""Operations endpoints of the real binary, checked with the parsers real clients use: the Atom feeds with
`feedparser`, `/metrics` with `prometheus_client`'s exposition parser; and what a maintenance window answers."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import feedparser
from prometheus_client.parser import text_string_to_metric_families


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_atom_feeds_parse_and_carry_announcements_and_changes(server):
    with server.client() as c:
        r = c.post("/v1/announcements", json={"kind": "api-change", "title": "Filters <now> & more",
                                               "body": "Details."})
        assert r.status_code == 201, r.text
        start = datetime.now(timezone.utc) + timedelta(days=8)
        r = c.post("/v1/maintenance", json={"starts_at": iso(start), "ends_at": iso(start + timedelta(hours=1)),
                                             "mode": "read-only", "message": "disk swap", "announcement": "1"})
        assert r.status_code == 201, r.text

        feed = feedparser.parse(c.get("/announcements.atom").content)
        assert not feed.bozo, feed.bozo_exception
        assert feed.version == "atom10"
        titles = [e.title for e in feed.entries]
        assert titles[1] == "Filters <now> & more"
        assert titles[0].startswith("Planned maintenance (read-only)")
        assert all(e.link.startswith(server.url) for e in feed.entries)

        changelog = feedparser.parse(c.get("/changelog.atom").content)
        assert not changelog.bozo, changelog.bozo_exception
        assert changelog.version == "atom10"
        # Atom requires an id and an updated time on every entry; readers de-duplicate by id.
        for entries in (feed.entries, changelog.entries):
            assert all(e.get("id") and e.get("updated_parsed") for e in entries)
            assert len({e.id for e in entries}) == len(entries)
        assert any(e.title.startswith("Maintenance window") for e in changelog.entries)
        assert any(e.title == "Release: Foundation" for e in changelog.entries)


def test_feeds_without_entries_still_parse_and_are_advertised_by_the_pages(server):
    with server.client() as c:
        for path in ("/announcements.atom", "/changelog.atom"):
            r = c.get(path)
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/atom+xml")
            feed = feedparser.parse(r.content)
            assert not feed.bozo, (path, feed.bozo_exception)
            assert feed.version == "atom10" and feed.feed.get("updated_parsed"), path
        # Feed readers find the feeds from any page (autodiscovery).
        for page in ("/", "/announcements", "/changelog", "/status", "/topics"):
            advertised = re.findall(r'<link rel="alternate" type="application/atom\+xml"[^>]* href="([^"]+)"',
                                    c.get(page).text)
            assert set(advertised) == {"/announcements.atom", "/changelog.atom"}, (page, advertised)


def test_metrics_parse_as_prometheus_exposition(server):
    server.create_topic("t")
    server.publish("t", [{"n": 1}, {"n": 2}])
    with server.client() as c:
        r = c.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
    # prometheus_client strips the `_total` suffix from counter family names.
    events_in = families["esgf_events_events_in"]
    assert any(s.labels.get("topic") == "t" and s.value == 2 for s in events_in.samples)
    assert "esgf_events_fsync_seconds" in families
    assert "esgf_events_http_requests" in families


def test_a_forced_window_in_progress_answers_503_with_retry_after_and_keeps_reads(server):
    server.create_topic("t")
    server.publish("t", [{"n": 1}])
    now = datetime.now(timezone.utc)
    with server.client() as c:
        r = c.post("/v1/maintenance", json={"starts_at": iso(now - timedelta(minutes=1)),
                                             "ends_at": iso(now + timedelta(hours=1)), "mode": "read-only",
                                             "message": "emergency fix", "force": True})
        assert r.status_code == 201, r.text
        assert r.json()["forced"] is True
        r = c.post("/v1/topics/t/events", json={"n": 2})
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "urn:esgf-events:problem:maintenance"
        assert 3500 <= int(r.headers["retry-after"]) <= 3600
        r = c.get("/v1/topics/t/events")
        assert r.status_code == 200 and [e["value"]["n"] for e in r.json()["events"]] == [1]
        assert c.get("/readyz").json()["maintenance"]["message"] == "emergency fix"
