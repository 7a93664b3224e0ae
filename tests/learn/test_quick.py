"""The quick first version: a subsample spread over the stored ids, one member, saved."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification

from mliot_daemon.learn.dataset import TrainingData, sample_ids, spread
from mliot_daemon.learn.ensemble import Policy
from mliot_daemon.learn.jobs import quick_job
from mliot_daemon.learn.persist import load_model, read_manifest
from mliot_daemon.learn.plan import lazy_plan, quick_step
from mliot_daemon.store import Store

N = 3000


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A store holding N rows of app "a" sorted by class (as if the classes were recorded one
    after another), interleaved with rows of another app; and held-out test rows."""
    X, y = make_classification(N + 600, 20, n_informative=8, n_classes=3, class_sep=2.0,
                               random_state=0)
    order = np.argsort(y[:N], kind="stable")
    path = tmp_path_factory.mktemp("store") / "mliot.db"

    async def fill() -> None:
        store = Store(path)
        await store.open()
        try:
            for s in range(0, N, 500):
                rows = order[s:s + 500]
                await store.add_samples("a", list(X[rows]), [f"c{v}" for v in y[rows]], "http")
                await store.add_samples("other", list(X[rows[:50]]), ["x"] * 50, "http")
        finally:
            await store.close()

    asyncio.run(fill())
    return path, X[N:], y[N:]


def test_spread_covers_the_ids_evenly() -> None:
    ids = list(range(100, 200))
    picked = spread(ids, 10)
    assert len(picked) == len(set(picked)) == 10
    assert picked[0] == 100 and picked[-1] == 199
    assert max(np.diff(picked)) <= 12
    assert spread(ids, 500) == ids and spread(ids, 0) == []


def test_big_data_gets_a_knn_subsample_sized_to_the_deadline() -> None:
    step = quick_step(60_000, 784, speed=1.0)
    assert step.quick and step.family == "knn" and 100 <= step.rows < 60_000
    assert step.est_seconds <= 2.0
    slower = quick_step(60_000, 784, speed=1.0, row_s=1e-3)  # an expensive front end
    assert slower.rows < step.rows
    assert quick_step(1500, 64, speed=1.0).rows == 1500
    assert not any(s.quick for s in lazy_plan(60_000, 784, speed=1.0, quick=False))


def test_quick_job_fits_a_spread_subsample_and_saves_a_one_member_version(
        stored: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    path, X_test, y_test = stored
    upto = max(sample_ids(path, "a", 10**9))
    data = TrainingData(path, "a", upto)
    # a deadline that only a subsample meets
    info = quick_job(data, "vector", 16000, Policy(), None, tmp_path / "v", {"reason": "initial"},
                     fitted_on="here", deadline_s=0.05)
    assert info.family == "knn" and info.n == N
    assert info.rows + info.val_rows < N and info.val_rows > 0
    assert set(info.seconds) >= {"read", "front_end", "fit", "score", "save"}
    manifest = read_manifest(tmp_path / "v")
    assert manifest["extra"]["quick"] == {"family": "knn", "rows": info.rows,
                                          "val_rows": info.val_rows, "of": N}
    assert manifest["extra"]["fitted_on"] == {"knn": "here"}
    assert manifest["extra"]["reason"] == "initial"
    # the rows were stored class by class: a spread sample has every class
    model = load_model(tmp_path / "v")
    assert model.classes == ["c0", "c1", "c2"] and len(model.members) == 1
    assert model.metrics["val_accuracy"] == info.summary["val_accuracy"]
    pred = [model.classes[i] for i in model.fast().predict(X_test)]
    assert np.mean([p == f"c{t}" for p, t in zip(pred, y_test, strict=True)]) >= 0.7


def test_quick_job_on_small_data_fits_ridge_on_all_rows_but_the_held_out_ones(
        stored: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    path, X_test, y_test = stored
    ids = sample_ids(path, "a", 10**9)
    held = tuple(ids[:10])
    info = quick_job(TrainingData(path, "a", max(ids), holdout_ids=held), "vector", 16000,
                     Policy(), None, tmp_path / "v", {}, deadline_s=60.0)
    assert info.family == "ridge" and info.n == N - 10
    assert info.rows + info.val_rows == N - 10
    model = load_model(tmp_path / "v")
    pred = [model.classes[i] for i in model.fast().predict(X_test)]
    assert np.mean([p == f"c{t}" for p, t in zip(pred, y_test, strict=True)]) >= 0.7


def test_quick_job_with_a_background_class_has_a_gate(
        stored: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    path, _, _ = stored
    data = TrainingData(path, "a", max(sample_ids(path, "a", 10**9)))
    quick_job(data, "vector", 16000, Policy(), "c0", tmp_path / "v", {}, deadline_s=0.05)
    model = load_model(tmp_path / "v")
    assert model.gate is not None and model.classes[model.gate.background] == "c0"
