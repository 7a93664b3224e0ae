"""Train and serve live: a real daemon, a real forkserver pool, digits streamed in over HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import psutil
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from support import DaemonProcess, http, wait_for

pytestmark = pytest.mark.timeout(600)
FAMILIES = {"knn", "ridge", "random_forest", "svm_linear", "svm_rbf", "mlp", "xgboost"}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    X, y = load_digits(return_X_y=True)
    return tuple(train_test_split(X, y, test_size=0.3, stratify=y, random_state=0))


class Streamer(threading.Thread):
    """Predicts one row at a time, as fast as it can, counting failures."""

    def __init__(self, d: DaemonProcess, rows: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.d, self.rows = d, rows
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[tuple[int, Any]] = []
        self.versions: set[int] = set()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            status, body = self.d.request("POST", "/v1/apps/digits/predict",
                                          {"instances": [self.rows[i % len(self.rows)].tolist()]})
            if status == 200:
                self.ok += 1
                self.versions.add(body["predictions"][0]["model_version"])
            else:
                self.errors.append((status, body))
            i += 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, ...]
            ) -> Iterator[tuple[DaemonProcess, Streamer, float]]:
    """A daemon that learned digits from a stream, with a client predicting during training."""
    X_train, X_test, y_train, y_test = digits
    d = DaemonProcess(tmp_path_factory.mktemp("trained"),
                      extra="[training]\nworkers = 1\n")
    d.start()
    assert d.request("PUT", "/v1/apps/digits", {"data_type": "vector", "shape": [64]})[0] == 201
    started = time.monotonic()
    for k in range(0, len(X_train), 200):
        body = {"samples": [{"features": x.tolist(), "label": int(t)}
                            for x, t in zip(X_train[k:k + 200], y_train[k:k + 200])]}
        assert d.request("POST", "/v1/apps/digits/samples", body)[0] == 200
    wait_for(lambda: d.request("POST", "/v1/apps/digits/predict",
                               {"instances": [X_test[0].tolist()]})[0] == 200, 60, 0.05)
    first_served = time.monotonic() - started
    streamer = Streamer(d, X_test)
    streamer.start()

    def all_fitted() -> bool:
        # the run on every sample has ended (the first run, on the first batches, may have
        # fitted all families while a run on more data is still on its way)
        training = d.request("GET", "/v1/status")[1]["apps"]["digits"]["training"]
        if training["training"] or training["trained_on"] < len(X_train):
            return False
        models = d.request("GET", "/v1/apps/digits/models")[1]
        current = [v for v in models["versions"] if v["version"] == models["current"]]
        return bool(current) and {c["family"] for c in current[0]["candidates"]} == FAMILIES \
            and bool(d.events("training_run_finished"))

    wait_for(all_fitted, 400, 1.0)
    streamer.stop.set()
    streamer.join(30)
    yield d, streamer, first_served
    d.stop()


def test_first_version_serves_and_all_families_join(trained: Any) -> None:
    d, _, first_served = trained
    assert first_served < 60
    models = d.request("GET", "/v1/apps/digits/models")[1]
    reasons = [v["reason"] for v in models["versions"]]
    assert "lazy" in reasons
    current = next(v for v in models["versions"] if v["version"] == models["current"])
    assert {c["family"] for c in current["candidates"]} == FAMILIES
    assert all(c["fitted_on"] for c in current["candidates"])
    assert 1 <= len(current["members"]) <= 7
    assert all(m["weight"] > 0 for m in current["members"])


def test_rest_accuracy_and_version_swaps_under_load(trained: Any,
                                                    digits: tuple[np.ndarray, ...]) -> None:
    d, streamer, _ = trained
    _, X_test, _, y_test = digits
    assert streamer.errors == []
    assert streamer.ok > 100 and len(streamer.versions) >= 2  # it saw swaps, and no error
    status, body = d.request("POST", "/v1/apps/digits/predict",
                             {"instances": X_test.tolist(), "probabilities": True})
    assert status == 200
    preds = body["predictions"]
    accuracy = np.mean([p["label"] == str(t) for p, t in zip(preds, y_test, strict=True)])
    models = d.request("GET", "/v1/apps/digits/models")[1]
    assert accuracy >= 0.975, (accuracy, models["versions"][0]["members"],
                               models["versions"][0]["candidates"])
    p = preds[0]
    assert set(p) == {"id", "label", "confidence", "margin", "stage", "model_version",
                      "probabilities"}
    assert 0 < p["confidence"] <= 1 and p["stage"] == 2
    # the margin: the top two vote shares apart (a one-member version: its probabilities)
    for p in preds[:50]:
        top2 = sorted(p["probabilities"].values())[-2:]
        assert abs(p["margin"] - (top2[1] - top2[0])) < 1e-5
    assert abs(sum(p["probabilities"].values()) - 1) < 1e-6


def test_tritonclient_exercises_every_oip_endpoint(trained: Any,
                                                  digits: tuple[np.ndarray, ...]) -> None:
    import tritonclient.http as triton

    d, _, _ = trained
    X = digits[1][:50].astype(np.float32)
    client = triton.InferenceServerClient(f"127.0.0.1:{d.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    server = client.get_server_metadata()
    assert server["name"] == "mliot" and "binary_tensor_data" in server["extensions"]
    assert http("GET", f"{d.url}/v2/health/live") == (200, {"live": True})
    assert http("GET", f"{d.url}/v2/health/ready") == (200, {"ready": True})
    assert http("GET", f"{d.url}/v2/models/digits/ready") == (
        200, {"name": "digits", "ready": True})

    # the defaults: binary tensors both ways, every output
    inp = triton.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    result = client.infer("digits", [inp])
    labels = [b.decode() for b in result.as_numpy("label")]
    confidence = result.as_numpy("confidence")
    ids = [b.decode() for b in result.as_numpy("prediction_id")]
    meta = client.get_model_metadata("digits")
    assert meta["inputs"][0]["shape"] == [-1, 64]
    classes = meta["classes"]
    proba = result.as_numpy("probabilities")
    assert proba.shape == (50, len(classes)) and proba.dtype == np.float32
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-4)
    assert [classes[i] for i in proba.argmax(axis=1)] == labels
    rest = d.request("POST", "/v1/apps/digits/predict", {"instances": X.tolist()})[1]
    assert labels == [p["label"] for p in rest["predictions"]]
    assert np.allclose(confidence, [p["confidence"] for p in rest["predictions"]], atol=1e-6)
    # its prediction ids are recorded: they take a correction
    fix = {"prediction_id": ids[0], "label": labels[0]}
    assert d.request("POST", "/v1/apps/digits/feedback", fix)[0] == 200

    # `outputs` selects tensors, JSON or binary each; classification gives the top k
    wanted = [triton.InferRequestedOutput("label", binary_data=False),
              triton.InferRequestedOutput("probabilities", class_count=3)]
    result = client.infer("digits", [inp], outputs=wanted)
    assert {o["name"] for o in result.get_response()["outputs"]} == {"label", "probabilities"}
    assert result.as_numpy("confidence") is None
    top = result.as_numpy("probabilities")
    assert top.shape == (50, 3)
    assert [t.decode().split(":")[2] for t in top[:, 0]] == labels
    status, body = http("POST", f"{d.url}/v2/models/digits/infer", {
        "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64",
                    "data": X[0].astype(float).tolist()}],
        "outputs": [{"name": "label"}], "id": "r1"})
    assert status == 200 and body["id"] == "r1"
    assert body["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [1],
                                "data": labels[:1]}]
    status, body = http("POST", f"{d.url}/v2/models/digits/infer", {
        "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": X[0].tolist()}],
        "outputs": [{"name": "logits"}]})
    assert status == 422 and "logits" in body["error"]

    # a kept version that does not serve answers on demand; any other version is 404
    kept = [int(v) for v in meta["versions"]]
    current = int(d.request("GET", "/v1/apps/digits")[1]["model_version"])
    old = min(kept)
    assert old != current
    assert client.is_model_ready("digits", str(old))
    assert client.get_model_metadata("digits", str(old))["versions"] == [str(old)]
    result = client.infer("digits", [inp], model_version=str(old))
    assert result.get_response()["model_version"] == str(old)
    mine = d.request("POST", "/v1/apps/digits/predict", {"instances": X.tolist()})
    assert all(p["model_version"] == current for p in mine[1]["predictions"])
    result = client.infer("digits", [inp], model_version=str(current))
    assert [b.decode() for b in result.as_numpy("label")] == labels
    for route in ("", "/ready"):
        assert http("GET", f"{d.url}/v2/models/digits/versions/999999{route}")[0] == 404
    assert not client.is_model_ready("digits", "999999")
    with pytest.raises(Exception, match="no kept version"):
        client.infer("digits", [inp], model_version="999999")

    # a NaN in binary data, which JSON could not carry
    bad = X[:1].copy()
    bad[0, 3] = np.nan
    inp = triton.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(bad)
    with pytest.raises(Exception, match="NaN"):
        client.infer("digits", [inp])


def test_websocket_stream(trained: Any, digits: tuple[np.ndarray, ...]) -> None:
    d, _, _ = trained
    X_test, y_test = digits[1], digits[3]

    async def session() -> tuple[list[dict], list[dict], list[dict]]:
        async with aiohttp.ClientSession() as s, s.ws_connect(
                f"{d.url}/v1/apps/digits/stream") as ws:
            for i in range(20):
                await ws.send_json({"type": "predict", "ref": i, "features": X_test[i].tolist()})
            for i in range(5):
                await ws.send_json({"type": "sample", "ref": f"s{i}",
                                    "features": X_test[i].tolist(), "label": int(y_test[i])})
            await ws.send_str("{not json")
            await ws.send_json({"type": "predict", "ref": "bad", "features": [1, 2]})
            await ws.send_json({"type": "feedback", "ref": "fb", "prediction_id": "nope",
                                "label": "1"})
            await ws.send_json({"type": "dance", "ref": "what"})
            got: list[dict] = []
            while len(got) < 29:
                msg = await asyncio.wait_for(ws.receive_json(), 30)
                if msg["type"] != "event":
                    got.append(msg)
            # the stream is still usable after all that
            await ws.send_json({"type": "predict", "ref": "after", "features": X_test[0].tolist()})
            while (msg := await asyncio.wait_for(ws.receive_json(), 30))["type"] == "event":
                pass
            got.append(msg)
        preds = [m for m in got if m["type"] == "prediction"]
        acks = [m for m in got if m["type"] == "ack"]
        errors = [m for m in got if m["type"] == "error"]
        return preds, acks, errors

    preds, acks, errors = asyncio.run(session())
    assert sorted(p["ref"] for p in preds if p["ref"] != "after") == list(range(20))
    assert [p["ref"] for p in preds][-1] == "after"
    assert sorted(a["ref"] for a in acks) == [f"s{i}" for i in range(5)]
    by_ref = {e["ref"]: e["message"] for e in errors}
    assert set(by_ref) == {None, "bad", "fb", "what"}
    assert "malformed JSON" in by_ref[None]
    assert "shape" in by_ref["bad"] and "unknown prediction id" in by_ref["fb"]


def test_feedback_and_bad_input(trained: Any, digits: tuple[np.ndarray, ...]) -> None:
    d, _, _ = trained
    X_test = digits[1]
    status, body = d.request("POST", "/v1/apps/digits/predict",
                             {"instances": [X_test[0].tolist()]})
    pid = body["predictions"][0]["id"]
    time.sleep(0.2)
    before = d.request("GET", "/v1/apps/digits")[1]
    assert d.request("POST", "/v1/apps/digits/feedback",
                     {"prediction_id": pid, "label": "3"})[0] == 200
    after = d.request("GET", "/v1/apps/digits")[1]
    assert after["n_feedback"] == before["n_feedback"] + 1
    assert after["n_samples"] == before["n_samples"] + 1  # the correction is training data
    cases = [
        ("/v1/apps/digits/feedback", {"prediction_id": "nope", "label": "3"}, 404),
        ("/v1/apps/digits/feedback", {"prediction_id": pid, "label": "eleven"}, 422),
        ("/v1/apps/digits/feedback", {"label": "3"}, 422),
        ("/v1/apps/digits/predict", {"instances": [[1.0, 2.0]]}, 422),
        ("/v1/apps/digits/predict", {"instances": []}, 422),
        ("/v1/apps/digits/predict", {"rows": []}, 422),
        ("/v1/apps/nope/predict", {"instances": [[1.0]]}, 404),
        ("/v2/models/digits/infer", {"inputs": []}, 422),
        ("/v1/apps/digits/models/999/activate", None, 404),
    ]
    for path, payload, code in cases:
        got, err = d.request("POST", path, payload)
        assert got == code, (path, err)
        assert err["error"]
    assert d.request("POST", "/v1/apps/digits/predict", raw=b"{")[0] == 400
    assert d.request("GET", "/healthz")[0] == 200


def test_restart_serves_last_version_and_activate_rolls_back(trained: Any,
                                                             digits: tuple[np.ndarray, ...]
                                                             ) -> None:
    d, _, _ = trained
    models = d.request("GET", "/v1/apps/digits/models")[1]
    current = models["current"]
    assert d.stop() == 0
    d.start()  # start() returns once /readyz is 200
    status, body = d.request("POST", "/v1/apps/digits/predict",
                             {"instances": [digits[1][0].tolist()]})
    assert status == 200 and body["predictions"][0]["model_version"] == current
    # served from the version's portable form (numpy only), never its pickles (issue 20)
    assert d.events("model_loaded") and not d.events("model_loaded_from_pickles")
    older = min(v["version"] for v in models["versions"])
    assert d.request("POST", f"/v1/apps/digits/models/{older}/activate")[0] == 200
    status, body = d.request("POST", "/v1/apps/digits/predict",
                             {"instances": [digits[1][0].tolist()]})
    assert body["predictions"][0]["model_version"] == older
    assert d.request("GET", "/v1/apps/digits/models")[1]["current"] == older


def test_no_model_yet_is_503_with_a_reason(daemon: DaemonProcess) -> None:
    assert daemon.request("PUT", "/v1/apps/fresh", {"data_type": "vector"})[0] == 201
    status, body = daemon.request("POST", "/v1/apps/fresh/predict", {"instances": [[1.0]]})
    assert status == 503 and "no model yet" in body["error"]


def test_kill_9_during_training_leaves_the_registry_consistent(
        daemon_factory: Any, digits: tuple[np.ndarray, ...]) -> None:
    X_train, _, y_train, _ = digits
    d = daemon_factory("kill", extra="[training]\nworkers = 1\n").start()
    d.request("PUT", "/v1/apps/digits", {"data_type": "vector"})
    body = {"samples": [{"features": x.tolist(), "label": int(t)}
                        for x, t in zip(X_train, y_train, strict=True)]}
    assert d.request("POST", "/v1/apps/digits/samples", body)[0] == 200
    wait_for(lambda: d.events("version_published"), 60, 0.05)
    time.sleep(1.5)  # somewhere in the lazy run: fitting, assembling or publishing
    assert d.proc is not None
    workers = [p for p in psutil.Process(d.proc.pid).children(recursive=True)
               if p.nice() > 0]  # the pool's fitting workers run niced
    assert workers
    d.signal(signal.SIGKILL)
    d.wait(30)
    _, alive = psutil.wait_procs(workers, timeout=10)  # they die with the daemon
    assert alive == []
    models = d.data_dir / "models" / "digits"
    current = int((models / "current").read_text())
    manifest = json.loads((models / "versions" / f"{current:06d}" / "manifest.json").read_text())
    for name in manifest["artifacts"]:
        assert (models / "versions" / f"{current:06d}" / name).exists()
    d.start()
    status, body = d.request("POST", "/v1/apps/digits/predict",
                             {"instances": [X_train[0].tolist()]})
    assert status == 200 and body["predictions"][0]["model_version"] >= current
    for version in (models / "versions").iterdir():  # every version that exists is complete
        assert (version / "manifest.json").exists()
