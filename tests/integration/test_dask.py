"""Training on a Dask cluster: a real `dask scheduler` and `dask worker` on loopback, started
here as subprocesses, and a real daemon with `[training] backend = "dask"`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from support import DaemonProcess, free_port, wait_for

from bench.daemon_proc import DaskCluster as Cluster

pytestmark = pytest.mark.timeout(180)
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("dask"), workers=1)
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    """A small stratified subset of scikit-learn's digits: 400 to train, 150 to test."""
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=400, test_size=150, stratify=y, random_state=0)
    return X_train, X_test, y_train, y_test


def dask_training(address: str) -> str:
    return f'[training]\nworkers = 1\nbackend = "dask"\ndask_scheduler = "{address}"\n'


def make_daemon(factory: Any, name: str, training: str) -> DaemonProcess:
    d: DaemonProcess = factory(name)
    d.write_config(training, daemon_extra='name = "here"')
    return d.start()


def feed(d: DaemonProcess, app: str, X: np.ndarray, y: np.ndarray) -> None:
    assert d.request("PUT", f"/v1/apps/{app}", {"data_type": "vector", "shape": [64]})[0] == 201
    body = {"samples": [{"features": x.tolist(), "label": int(t)}
                        for x, t in zip(X, y, strict=True)]}
    assert d.request("POST", f"/v1/apps/{app}/samples", body)[0] == 200


def current_version(d: DaemonProcess, app: str) -> dict[str, Any] | None:
    """The served version's entry of GET /v1/apps/{app}/models, once there is one."""
    models = d.request("GET", f"/v1/apps/{app}/models")[1]
    return next((v for v in models["versions"] if v["version"] == models["current"]), None)


def lazy_version(d: DaemonProcess, app: str) -> dict[str, Any] | None:
    """The served version once the run's fitted families serve: the quick first version
    before them is always fitted in the local pool."""
    version = current_version(d, app)
    return version if version is not None and version["reason"] == "lazy" else None


def quick_version_fitted_here(d: DaemonProcess, app: str) -> bool:
    first = [v for v in d.request("GET", f"/v1/apps/{app}/models")[1]["versions"]
             if v["version"] == 1]
    return bool(first) and {c["fitted_on"] for c in first[0]["candidates"]} == {"here"}


def app_training(d: DaemonProcess, app: str) -> dict[str, Any]:
    return d.request("GET", "/v1/status")[1]["apps"][app]["training"]


def accuracy(d: DaemonProcess, app: str, X: np.ndarray, y: np.ndarray) -> float:
    status, body = d.request("POST", f"/v1/apps/{app}/predict", {"instances": X.tolist()})
    assert status == 200, body
    return float(np.mean([p["label"] == str(t)
                          for p, t in zip(body["predictions"], y, strict=True)]))


def test_training_on_a_dask_cluster_serves_a_version_fitted_there(
        cluster: Cluster, daemon_factory: Any, digits: tuple[np.ndarray, ...]) -> None:
    X_train, X_test, y_train, y_test = digits
    d = make_daemon(daemon_factory, "on-dask", dask_training(cluster.address))
    feed(d, "digits", X_train, y_train)
    version = wait_for(lambda: lazy_version(d, "digits"), 45, 0.1)
    where = {c["fitted_on"] for c in version["candidates"]}
    assert where == {f"dask:{cluster.address}"}, version["candidates"]
    assert quick_version_fitted_here(d, "digits")
    assert all(w.startswith("dask:tcp://127.0.0.1:") for w in where)
    assert accuracy(d, "digits", X_test, y_test) >= 0.85
    assert [e["address"] for e in d.events("dask_connected")] == [cluster.address]
    assert not d.events("training_failed")
    assert "Receive client connection" in cluster.log("scheduler")
    training = app_training(d, "digits")
    assert training["last_error"] is None
    assert training["fitting_on"] in (f"dask:{cluster.address}", None)  # the lazy run goes on
    assert d.stop() == 0


def test_reloads_switch_the_backend_and_an_unreachable_scheduler_fails_the_run(
        cluster: Cluster, daemon_factory: Any, digits: tuple[np.ndarray, ...]) -> None:
    X_train, X_test, y_train, y_test = digits
    d = make_daemon(daemon_factory, "reload", "[training]\nworkers = 1\n")

    # process -> dask at an address where nothing listens: the run fails, the daemon lives on
    nobody = f"tcp://127.0.0.1:{free_port()}"
    d.write_config(dask_training(nobody), daemon_extra='name = "here"')
    assert d.request("POST", "/v1/reload")[0] == 200
    feed(d, "first", X_train, y_train)
    error = wait_for(lambda: app_training(d, "first")["last_error"], 45, 0.2)
    assert "ClusterUnavailable" in error and nobody in error and "unreachable" in error
    assert d.proc is not None and d.proc.poll() is None
    assert d.request("GET", "/healthz")[0] == 200
    assert [e["address"] for e in d.events("dask_unreachable")] == [nobody]
    assert d.request("GET", "/v1/apps/first/models")[1]["current"] is None

    # to a live scheduler: the failed app is retried at once (no new data), on the cluster;
    # at once, not by the timed retry (30 s after the failure): hence the 20 s here
    d.write_config(dask_training(cluster.address), daemon_extra='name = "here"')
    assert d.request("POST", "/v1/reload")[0] == 200
    version = wait_for(lambda: lazy_version(d, "first"), 20, 0.1)
    assert {c["fitted_on"] for c in version["candidates"]} == {f"dask:{cluster.address}"}
    assert quick_version_fitted_here(d, "first")
    assert accuracy(d, "first", X_test, y_test) >= 0.85
    assert app_training(d, "first")["last_error"] is None

    # dask -> process: the next run fits in the local pool (the run in flight keeps its cluster)
    d.write_config("[training]\nworkers = 1\n", daemon_extra='name = "here"')
    assert d.request("POST", "/v1/reload")[0] == 200
    feed(d, "second", X_train, y_train)
    version = wait_for(lambda: current_version(d, "second"), 45, 0.1)
    assert {c["fitted_on"] for c in version["candidates"]} == {"here"}
    assert accuracy(d, "second", X_test, y_test) >= 0.85
    assert [e["backend"] for e in d.events("training_backend_changed")] == [
        "dask", "dask", "process"]
    assert d.stop() == 0


def test_without_distributed_the_daemon_runs_and_a_dask_run_says_what_is_missing(
        daemon_factory: Any, digits: tuple[np.ndarray, ...], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a `distributed` that cannot be imported, first on the daemon's path
    hidden = tmp_path / "hide" / "distributed"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        'raise ImportError("No module named \'distributed\' (hidden by the test)")\n')
    monkeypatch.setenv("PYTHONPATH", str(hidden.parent))
    d = make_daemon(daemon_factory, "no-dask", dask_training("tcp://127.0.0.1:1"))
    feed(d, "digits", digits[0], digits[2])
    error = wait_for(lambda: app_training(d, "digits")["last_error"], 30, 0.2)
    assert "distributed package is not installed" in error and "mliot[dask]" in error
    assert d.request("GET", "/healthz")[0] == 200
    assert d.stop() == 0


def test_the_daemon_imports_distributed_only_for_a_dask_run() -> None:
    code = ("import sys, mliot_daemon.daemon, actors.trainer\n"
            "assert 'distributed' not in sys.modules, 'distributed imported at start'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
