"""What the dashboard needs from the public API: a version history that retention never
prunes, per-class quality on validation and feedback, file import reshaped to the app, and a
watch stream capped at the rate a page can draw."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np
from support import DaemonProcess, http, wait_for

SPEC = {"data_type": "vector", "classes": ["calm", "busy"]}


def teach(d: DaemonProcess, app: str = "room") -> None:
    assert d.request("PUT", f"/v1/apps/{app}", SPEC)[0] == 201
    rng = np.random.default_rng(0)
    X = [rng.normal(0.0 if i % 2 else 6.0, 1.0, size=2).round(3).tolist() for i in range(40)]
    y = ["calm" if i % 2 else "busy" for i in range(40)]
    d.teach(app, np.array(X), y)


def test_history_outlives_retention_and_quality_counts_feedback(daemon_factory: Any) -> None:
    d = daemon_factory(extra="[training]\nkeep_versions = 1\n").start()
    teach(d)
    wait_for(lambda: len(d.request("GET", "/v1/apps/room/history")[1]) >= 2, 120)
    history = d.request("GET", "/v1/apps/room/history")[1]
    kept = d.request("GET", "/v1/apps/room/models")[1]["versions"]
    assert len(kept) == 1 and len(history) > len(kept)  # history is not pruned with folders
    first = history[0]
    assert first["reason"] == "initial" and first["members"] and first["created"] > 0
    assert 0.0 <= first["metrics"]["val_accuracy"] <= 1.0
    assert np.array(first["metrics"]["confusion"]).shape == (2, 2)
    (p,) = d.request("POST", "/v1/apps/room/predict", {"instances": [[0.0, 0.1]]})[1][
        "predictions"]
    wrong = "busy" if p["label"] == "calm" else "calm"
    assert d.request("POST", "/v1/apps/room/feedback",
                     {"prediction_id": p["id"], "label": wrong})[0] == 200
    quality = d.request("GET", "/v1/apps/room/quality")[1]
    assert quality["classes"] == ["busy", "calm"]
    assert quality["feedback"]["n"] == 1
    i, j = quality["classes"].index(wrong), quality["classes"].index(p["label"])
    assert quality["feedback"]["confusion"][i][j] == 1
    assert quality["feedback"]["recall"][i] == 0.0
    assert len(quality["validation"]["recall"]) == 2
    scored = [v for v in d.request("GET", "/v1/apps/room/history")[1]
              if v["version"] == p["model_version"]]
    assert scored[-1]["feedback_accuracy"] == 0.0 and scored[-1]["feedback_n"] == 1
    info = d.request("GET", "/v1/apps/room")[1]
    assert info["feedback_accuracy"] == 0.0 and info["class_counts"]["calm"] >= 20


def test_import_reshapes_flat_rows_and_says_what_is_wrong(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.write_config(daemon_extra="max_body_mb = 0.01")
    d.start()
    assert d.request("PUT", "/v1/apps/motion", {"data_type": "sensor", "shape": [2, 3]})[0] \
        == 201
    url = f"{d.url}/v1/apps/motion/import"

    def post(body: str, content_type: str = "text/csv") -> tuple[int, Any]:
        return http("POST", url, raw=body.encode(), content_type=content_type)

    rows = "".join(f"{i},1,2,3,4,5,{'up' if i % 2 else 'down'}\n" for i in range(10))
    status, answer = post("t0,a,b,c,d,e,label\n" + rows)
    assert status == 200 and answer["accepted"] == 10 and not answer["duplicate"]
    assert post("t0,a,b,c,d,e,label\n" + rows)[1]["duplicate"]  # the same file stores once
    status, answer = post("1,2,3,4,5,up\n")
    assert status == 422 and "do not fit the app's shape [2, 3]" in answer["error"]
    status, answer = post("1,2,3,x,5,6,up\n")
    assert status == 422 and "not a number" in answer["error"]
    status, answer = post(rows, "text/plain")
    assert status == 422 and "text/csv" in answer["error"]
    status, answer = post(rows * 200)
    assert status == 413 and "mliot import motion FILE" in answer["error"]
    assert d.request("GET", "/v1/apps/motion")[1]["n_samples"] == 10


async def test_a_watcher_gets_at_most_its_rate_and_is_told_what_it_missed(
        daemon: DaemonProcess) -> None:
    await asyncio.to_thread(teach, daemon)
    url = f"{daemon.url}/v1/apps/room/stream?watch=true&max_per_s=5"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        burst = {"instances": [[6.0, 6.0]] * 200}
        async with session.post(f"{daemon.url}/v1/apps/room/predict", json=burst) as r:
            assert r.status == 200
        got = []
        while True:
            try:
                msg = await ws.receive_json(timeout=1.0)
            except TimeoutError:
                break
            if msg["type"] == "prediction":
                got.append(msg)
        assert 1 <= len(got) <= 10  # a second's worth, not 200
        assert got[0]["channel"] == "http" and got[0]["at"] > 0
        await asyncio.sleep(1.0)
        async with session.post(f"{daemon.url}/v1/apps/room/predict",
                                json={"instances": [[0.0, 0.0]]}) as r:
            assert r.status == 200
        while (msg := await ws.receive_json(timeout=10))["type"] != "prediction":
            pass
        assert msg["skipped"] == 200 - len(got)
    text = daemon.request("GET", "/metrics")[1]
    assert f"mliot_ws_watch_skipped_total {float(200 - len(got))}" in text
    with_bad_rate = http("GET", f"{daemon.url}/v1/apps/room/stream?watch=true&max_per_s=x")
    assert with_bad_rate[0] == 422
