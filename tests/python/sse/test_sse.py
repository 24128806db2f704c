"""Following a topic over server-sent events, as a real SSE client (httpx-sse) sees it, against the real binary.

- a consumer cut mid-stream reconnects with Last-Event-ID and ends with exactly the published sequence;
- the same across a server restart (the cursor is self-contained);
- `format=cloudevents` events parse with the CloudEvents SDK;
- 200 concurrent consumers each receive every event (a CI-sized version of the 1000-consumer load test).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse, connect_sse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esgf_server import FIXTURES, EsgfServer  # noqa: E402


def event(n: int, method: str = "POST") -> dict:
    """A small ESGF-shaped publication event; `n` tells events apart and orders them."""
    return {
        "data": {"payload": {"collection_id": "CMIP6", "method": method,
                             "item": {"id": f"CMIP6.test.item.{n}", "properties": {"n": n}}}},
        "metadata": {"event_id": f"ev-{n}"},
    }


def read_events(server: EsgfServer, topic: str, count: int, *, last_event_id: str | None = None,
                query: str = "from=beginning") -> list:
    """Reads `count` events (skipping keep-alives) and closes the connection: a client cut mid-stream."""
    headers = dict(server.headers)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events = []
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(30.0)) as client:
        with connect_sse(client, "GET", f"/v1/topics/{topic}/stream?{query}", headers=headers) as source:
            assert source.response.status_code == 200, source.response.read()
            for sse in source.iter_sse():
                if not sse.data:
                    continue
                events.append(sse)
                if len(events) == count:
                    break
    return events


def numbers(events) -> list[int]:
    return [e.json()["data"]["payload"]["item"]["properties"]["n"] for e in events]


def test_reconnecting_with_last_event_id_ends_with_exactly_the_published_sequence(server: EsgfServer):
    server.create_topic("sse.exact", partitions=1)
    server.publish("sse.exact", [event(n) for n in range(300)])

    first = read_events(server, "sse.exact", 120)
    assert first[-1].id == "0-120"
    server.publish("sse.exact", [event(n) for n in range(300, 400)])
    # The reconnection still names from=beginning, as an EventSource's would: Last-Event-ID wins.
    rest = read_events(server, "sse.exact", 280, last_event_id=first[-1].id)

    assert numbers(first) + numbers(rest) == list(range(400))
    assert [e.event for e in first[:1]] == ["post"]


def test_every_partition_resumes_exactly(server: EsgfServer):
    server.create_topic("sse.partitions", partitions=4)
    placements = server.publish("sse.partitions", [event(n) for n in range(200)])
    expected: dict[int, list[int]] = {}
    for n, placement in enumerate(placements):
        expected.setdefault(placement["partition"], []).append(n)

    seen = []
    last_id = None
    for chunk in (37, 50, 1, 112):  # cut four times at arbitrary points
        seen += read_events(server, "sse.partitions", chunk, last_event_id=last_id)
        last_id = seen[-1].id

    ns = numbers(seen)
    assert sorted(ns) == list(range(200)), "every event exactly once"
    got: dict[int, list[int]] = {}
    for e in seen:
        n = e.json()["data"]["payload"]["item"]["properties"]["n"]
        got.setdefault(placements[n]["partition"], []).append(n)
    assert got == expected, "each partition in publication order"


def test_the_cursor_resumes_across_a_server_restart(server: EsgfServer):
    server.create_topic("sse.restart", partitions=2)
    server.publish("sse.restart", [event(n) for n in range(100)])
    first = read_events(server, "sse.restart", 40)

    # A stream still open at shutdown ends cleanly and does not hold the server up.
    ended = threading.Event()
    opened = threading.Event()

    def follow() -> None:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=30.0) as client:
            with connect_sse(client, "GET", "/v1/topics/sse.restart/stream") as source:
                opened.set()
                for _ in source.iter_sse():
                    pass
        ended.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert opened.wait(30)
    server.restart()  # SIGTERM, then a new process on the same data directory, on a new port
    assert ended.wait(30), "the open stream ended with the server"
    server.publish("sse.restart", [event(n) for n in range(100, 150)])
    rest = read_events(server, "sse.restart", 110, last_event_id=first[-1].id)
    assert sorted(numbers(first) + numbers(rest)) == list(range(150))
    assert len(set(numbers(first)) & set(numbers(rest))) == 0


def parse_cloudevent(text: str):
    """A CloudEvent from its JSON format, with whichever API this SDK version has."""
    try:
        from cloudevents.core.formats.json import JSONFormat  # cloudevents >= 2
    except ImportError:  # cloudevents 1.x
        from cloudevents.http import from_json
        return from_json(text)
    return JSONFormat().read(None, text)


def attribute(ce, name: str):
    getter = getattr(ce, "get_attributes", None)
    return getter()[name] if getter else ce[name]


def data_of(ce):
    getter = getattr(ce, "get_data", None)
    return getter() if getter else ce.data


def test_cloudevents_format_parses_with_the_sdk(server: EsgfServer):
    fixtures = ["piddiplatsch_cmip6.json", "esgf-core-utils_functional_update_event.json",
                "constructed_patch_retraction_event.json"]
    raw = [json.loads((FIXTURES / name).read_text()) for name in fixtures]
    server.create_topic("sse.cloudevents", partitions=1)
    server.publish("sse.cloudevents", raw)

    events = read_events(server, "sse.cloudevents", len(raw), query="from=beginning&format=cloudevents")
    kinds = []
    for sse, original in zip(events, raw):
        ce = parse_cloudevent(sse.data)
        assert attribute(ce, "specversion") == "1.0"
        assert attribute(ce, "source") == "/topics/sse.cloudevents"
        assert attribute(ce, "datacontenttype") == "application/json"
        assert attribute(ce, "esgfpartition") == 0
        payload = original["data"]["payload"]
        assert attribute(ce, "subject") == payload.get("item", {}).get("id", payload.get("item_id"))
        assert data_of(ce) == original
        kinds.append(attribute(ce, "type"))
    assert kinds == ["org.esgf.publication.post", "org.esgf.publication.put", "org.esgf.publication.patch"]
    # The producer's event id when it has one, else topic/partition/offset.
    assert attribute(parse_cloudevent(events[2].data), "id") == raw[2]["metadata"]["event_id"]


def test_200_concurrent_consumers_each_receive_every_event(server: EsgfServer):
    consumers, count = 200, 50
    server.create_topic("sse.fanout", partitions=2)

    async def run() -> list[list[int]]:
        limits = httpx.Limits(max_connections=consumers + 10, max_keepalive_connections=consumers + 10)
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, limits=limits,
                                     timeout=httpx.Timeout(60.0)) as client:
            connected = asyncio.Semaphore(0)

            async def consume() -> list[int]:
                # Streams start at the end of the log; its position is fixed once the response headers arrive.
                async with aconnect_sse(client, "GET", "/v1/topics/sse.fanout/stream") as source:
                    assert source.response.status_code == 200
                    connected.release()
                    got = []
                    async for sse in source.aiter_sse():
                        if sse.data:
                            got.append(sse.json()["data"]["payload"]["item"]["properties"]["n"])
                            if len(got) == count:
                                return got
                    return got

            tasks = [asyncio.create_task(consume()) for _ in range(consumers)]
            for _ in range(consumers):
                await asyncio.wait_for(connected.acquire(), 60)
            await asyncio.to_thread(server.publish, "sse.fanout", [event(n) for n in range(count)])
            return await asyncio.wait_for(asyncio.gather(*tasks), 120)

    results = asyncio.run(run())
    assert len(results) == consumers
    for got in results:
        assert sorted(got) == list(range(count))
