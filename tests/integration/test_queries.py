"""Label queries through a real daemon: doubtful predictions open queries at the app's pace,
listed most informative first with candidates and a preview; feedback answers one, a skip
closes one for good, the streams hear of both, and what is open survives a restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import numpy as np
from support import DaemonProcess, borderline, http, teach_doubtful_room


def open_queries(d: DaemonProcess) -> list[dict[str, Any]]:
    status, body = d.request("GET", "/v1/apps/room/queries")
    assert status == 200, body
    return body["queries"]


async def predict_until_queries(d: DaemonProcess, n: int, events: list[dict[str, Any]]) -> None:
    """Predict borderline points once a second (the pace) until ``n`` queries are open,
    while a stream of the app records its events."""
    url = f"{d.url}/v1/apps/room/stream"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        points = borderline(200)
        deadline = time.monotonic() + 60
        k = 0
        while len([e for e in events if e.get("kind") == "label_query"]) < n:
            assert time.monotonic() < deadline, events
            async with session.post(f"{d.url}/v1/apps/room/predict",
                                    json={"instances": points[k:k + 4]}) as r:
                assert r.status == 200
            k = (k + 4) % len(points)
            try:
                while True:
                    msg = await ws.receive_json(timeout=1.1)
                    events.append(msg)
            except TimeoutError:
                pass


def test_queries_open_close_and_survive_a_restart(daemon_factory: Any) -> None:
    d = daemon_factory().start()
    teach_doubtful_room(d)
    events: list[dict[str, Any]] = []
    asyncio.run(predict_until_queries(d, 3, events))
    queries = open_queries(d)
    assert len(queries) >= 3
    assert [q["score"] for q in queries] == sorted((q["score"] for q in queries), reverse=True)
    opened = [e for e in events if e.get("kind") == "label_query"]
    assert {q["id"] for q in opened} <= {q["id"] for q in queries}
    first = queries[0]
    assert set(first) == {"id", "prediction_id", "created", "margin", "score", "candidates"}
    assert {c["label"] for c in first["candidates"]} == {"calm", "busy"}
    shares = [c["share"] for c in first["candidates"]]
    assert shares == sorted(shares, reverse=True) and first["prediction_id"]
    assert abs(first["margin"] - (shares[0] - shares[1])) < 1e-3 and first["margin"] < 0.5
    # The preview is the predicted sample (JSON numbers for a vector app).
    status, body = d.request("GET", f"/v1/apps/room/queries/{first['id']}/preview")
    assert status == 200 and len(body["values"]) == 2
    assert min(abs(np.array(body["values"]) - p).max() for p in np.array(borderline(200))) \
        < 1e-3

    # Feedback on its prediction answers a query; a skip closes another for good.
    answered, skipped = queries[0], queries[1]
    assert d.request("POST", "/v1/apps/room/feedback",
                     {"prediction_id": answered["prediction_id"], "label": "calm"})[0] == 200
    assert d.request("DELETE", f"/v1/apps/room/queries/{skipped['id']}")[0] == 204
    left = {q["id"] for q in open_queries(d)}
    assert answered["id"] not in left and skipped["id"] not in left
    assert d.request("DELETE", f"/v1/apps/room/queries/{skipped['id']}")[0] == 404
    assert d.request("GET", f"/v1/apps/room/queries/{skipped['id']}/preview")[0] == 404
    assert d.request("GET", "/v1/apps/nope/queries")[0] == 404

    # What is open is committed: a restart (SIGTERM, then kill -9) keeps it.
    assert d.stop() == 0
    d.start()
    assert {q["id"] for q in open_queries(d)} == left
    d.proc.kill()
    d.proc.wait(10)
    d.start()
    assert {q["id"] for q in open_queries(d)} == left
    # A skipped query is not asked again: its prediction's point would be a duplicate of an
    # answered one, and it never reappears among the open ones.
    assert skipped["id"] not in {q["id"] for q in open_queries(d)}
    assert d.stop() == 0


def test_queries_tell_the_stream_when_they_close(daemon_factory: Any) -> None:
    d = daemon_factory().start()
    teach_doubtful_room(d)
    events: list[dict[str, Any]] = []
    asyncio.run(predict_until_queries(d, 1, events))

    async def close_and_listen() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(f"{d.url}/v1/apps/room/stream") as ws:
            q = open_queries(d)[0]
            status = await asyncio.to_thread(
                http, "DELETE", f"{d.url}/v1/apps/room/queries/{q['id']}")
            assert status[0] == 204
            while (msg := await ws.receive_json(timeout=10)).get("kind") != "label_query_closed":
                pass
            assert msg["id"] == q["id"]
            return msg

    assert asyncio.run(close_and_listen())["state"] == "skipped"
    assert d.stop() == 0
