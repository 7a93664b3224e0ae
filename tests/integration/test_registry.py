"""Model versions on disk: a version that no longer loads is retrained from stored samples."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

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
    d.start()
    assert d.events("model_load_failed")
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
