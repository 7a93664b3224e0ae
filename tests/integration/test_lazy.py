"""Lazy training's first version: the quick one, from a subsample of the stored rows, published
before the full preparation; later runs of an app that serves do not replace it by a quick one."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from support import DaemonProcess, wait_for

pytestmark = pytest.mark.timeout(600)


def post(d: DaemonProcess, X: np.ndarray, y: np.ndarray) -> None:
    body = {"samples": [{"features": x.tolist(), "label": int(t)}
                        for x, t in zip(X, y, strict=True)]}
    assert d.request("POST", "/v1/apps/digits/samples", body)[0] == 200


def runs_finished(d: DaemonProcess, k: int) -> bool:
    return len(d.events("training_run_finished")) >= k


def test_quick_version_serves_before_the_full_preparation(daemon_factory: Any) -> None:
    X, y = load_digits(return_X_y=True)
    d = daemon_factory(extra="[training]\nworkers = 1\nkeep_versions = 50\n").start()
    assert d.request("PUT", "/v1/apps/digits", {"data_type": "vector", "shape": [64]})[0] == 201
    post(d, X[:1000], y[:1000])
    wait_for(lambda: runs_finished(d, 1), 400, 0.5)

    order = d.events("quick_version", "version_published", "features_prepared")
    names = [(r["event"], r.get("version")) for r in order]
    # version 1 is published (and logged with what it took) before all rows are prepared
    assert names[:3] == [("version_published", 1), ("quick_version", None),
                         ("features_prepared", None)], names
    assert [r["event"] for r in order].count("quick_version") == 1
    manifest = json.loads((d.data_dir / "models" / "digits" / "versions" / "000001"
                           / "manifest.json").read_text())
    quick = manifest["extra"]["quick"]
    assert quick["of"] == 1000 and 0 < quick["val_rows"] < quick["rows"]
    assert quick["rows"] + quick["val_rows"] <= 1000
    assert [m["family"] for m in manifest["members"]] == [quick["family"]]
    assert manifest["extra"]["complete"] is False
    models = d.request("GET", "/v1/apps/digits/models")[1]
    reasons = {v["version"]: v["reason"] for v in models["versions"]}
    assert reasons[1] == "initial" and set(reasons) - {1} and \
        {r for v, r in reasons.items() if v > 1} == {"lazy"}

    # more data: the app serves a complete version, which a quick one must not replace
    post(d, X[1000:], y[1000:])
    wait_for(lambda: runs_finished(d, 2), 400, 0.5)
    assert len(d.events("quick_version")) == 1
    second = [r for r in d.events("version_published") if r.get("reason") == "data"]
    assert second and second[0]["members"] and d.events("features_prepared")[1]["n"] == 1797
    # the run on more data searched from the served version's best parameters
    versions = d.data_dir / "models" / "digits" / "versions"

    def candidates(v: str) -> dict[str, dict[str, Any]]:
        m = json.loads((versions / v / "manifest.json").read_text())
        return {c["family"]: c for c in m["candidates"]}

    newest = sorted(p.name for p in versions.iterdir())
    first_run = candidates(newest[newest.index(f"{second[0]['version']:06d}") - 1])
    warmed = {f: c["warm_start"] for f, c in candidates(f"{second[0]['version']:06d}").items()
              if c.get("warm_start")}
    assert warmed, "no family of the second run started from the first run's parameters"
    for family, start in warmed.items():
        assert start.items() <= first_run[family]["params"].items()
    status, body = d.request("POST", "/v1/apps/digits/predict", {"instances": X[:200].tolist()})
    assert status == 200
    assert np.mean([p["label"] == str(t) for p, t in zip(body["predictions"], y[:200],
                                                          strict=True)]) >= 0.95
    assert d.stop() == 0
