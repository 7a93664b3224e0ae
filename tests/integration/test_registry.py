"""Model versions on disk: a version that no longer loads is retrained from stored samples;
retention keeps the previous run's last version and the pinned ones."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from support import wait_for

pytestmark = pytest.mark.timeout(600)


def blobs(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.random.default_rng(0).normal(scale=4.0, size=(3, 6))
    return centers[y] + rng.normal(size=(n, 6)), [f"c{v}" for v in y]


def test_unloadable_version_is_retrained_from_stored_samples(daemon_factory: Any) -> None:
    d = daemon_factory(extra="[training]\nworkers = 1\n").start()
    d.request("PUT", "/v1/apps/a", {"data_type": "vector"})
    X, y = blobs(200, 1)
    d.teach("a", X, y)
    current = d.request("GET", "/v1/apps/a/models")[1]["current"]
    assert d.stop() == 0
    version_dir = d.data_dir / "models" / "a" / "versions" / f"{current:06d}"
    for member in version_dir.glob("member-*.pkl"):  # as if written by an incompatible library
        member.write_bytes(b"not a pickle this version can read")
    # the server reads the portable form first (issue 20), which pickles do not affect
    (version_dir / "portable" / "arrays.npz").write_bytes(b"not an npz either")
    d.start()
    assert d.events("portable_model_refused") and d.events("model_load_failed")
    deadline = time.monotonic() + 300
    while True:
        status, answer = d.request("POST", "/v1/apps/a/predict", {"instances": [X[0].tolist()]})
        if status == 200:
            break
        assert status == 503 and time.monotonic() < deadline, answer
        time.sleep(0.5)
    assert answer["predictions"][0]["model_version"] > current
    assert answer["predictions"][0]["label"] == y[0]
    # nothing to serve meanwhile: the retraining started with a quick version (the log file
    # holds both runs of the daemon)
    assert len(d.events("quick_version")) == 2


TOKEN = "retention-token"


def test_rollback_across_retrains_and_pins_outlive_retention(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.write_config("[training]\nworkers = 1\nkeep_versions = 2\n", f'token = "{TOKEN}"')
    d.start()
    assert d.request("PUT", "/v1/apps/a", {"data_type": "vector"}, token=TOKEN)[0] == 201
    X, y = blobs(75, 2)

    def train_on(start: int, end: int, run: int) -> dict[str, Any]:
        """Send rows ``start:end`` and wait for training run number ``run`` to finish."""
        body = {"samples": [{"features": x.tolist(), "label": t}
                            for x, t in zip(X[start:end], y[start:end], strict=True)]}
        assert d.request("POST", "/v1/apps/a/samples", body, token=TOKEN)[0] == 200
        finished = wait_for(lambda: d.events("training_run_finished")[run - 1:], 120, 0.2)
        assert finished[0]["error"] is None, finished
        return d.request("GET", "/v1/apps/a/models")[1]

    train_on(0, 30, 1)
    models = train_on(30, 50, 2)  # 50 >= 30 * growth_factor: a data run publishes lazy versions
    published = d.events("version_published")
    assert len(published) > 4  # more than keep_versions: retention had something to prune
    kept = {v["version"]: v for v in models["versions"]}
    previous, last = sorted(v for v, info in kept.items() if info["ends_run"])
    assert last == models["current"] == published[-1]["version"]
    assert previous < last - 1  # kept for ending its run, not as one of the newest two

    # roll back across the retrain: the first run's last version serves again
    assert d.request("POST", f"/v1/apps/a/models/{previous}/activate", token=TOKEN)[0] == 200
    status, answer = d.request("POST", "/v1/apps/a/predict", {"instances": [X[0].tolist()]})
    assert status == 200 and answer["predictions"][0]["model_version"] == previous

    lazy = max(v for v, info in kept.items() if not info["ends_run"])
    assert d.request("POST", f"/v1/apps/a/models/{lazy}/pin")[0] == 401  # a write: the token
    for _ in range(2):  # idempotent
        status, info = d.request("POST", f"/v1/apps/a/models/{lazy}/pin", token=TOKEN)
        assert status == 200 and info["version"] == lazy and info["pinned"] is True
    models = train_on(50, 75, 3)  # 75 >= 50 * 1.5: a third run
    kept = {v["version"]: v for v in models["versions"]}
    assert kept[lazy]["pinned"]  # survived a whole run of publishes
    assert previous not in kept  # two runs back, not pinned: pruned
    status, answer = d.request("POST", f"/v1/apps/a/models/{previous}/pin", token=TOKEN)
    assert status == 404 and "no kept version" in answer["error"]
    for _ in range(2):  # unpinning is idempotent too
        status, info = d.request("DELETE", f"/v1/apps/a/models/{lazy}/pin", token=TOKEN)
        assert status == 200 and info["pinned"] is False
    assert d.stop() == 0
