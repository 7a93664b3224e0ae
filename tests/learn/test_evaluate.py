"""`mliot evaluate`: the JSON of record, the table, and bad files."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from sklearn.datasets import make_classification

from mliot_daemon.learn import evaluate


def _args(path, *extra):
    p = argparse.ArgumentParser()
    evaluate.add_arguments(p)
    return p.parse_args(["--data", str(path), "--budget", "0.5", "--workers", "1", *extra])


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    X, y = make_classification(240, 10, n_informative=6, n_classes=3, random_state=0)
    path = tmp_path_factory.mktemp("eval") / "d.npz"
    np.savez(path, X=X, y=y)
    return path


def test_json_shape(data_file, capsys):
    assert evaluate.main(_args(data_file, "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"data", "policy", "models", "ensemble", "two_stage"}
    assert out["data"] == {"n_train": 168, "n_test": 72, "n_features": 10, "classes": ["0", "1", "2"]}
    assert out["policy"] == {"mode": "best_effort", "latency_ms": 50.0, "max_models": 7}
    assert {m["family"] for m in out["models"]} == {
        "knn", "ridge", "random_forest", "svm_linear", "svm_rbf", "mlp", "xgboost"}
    for m in out["models"]:
        assert set(m) == {"family", "accuracy", "fit_seconds", "latency_ms", "params", "reduced_dims"}
        assert 0 <= m["accuracy"] <= 1 and m["latency_ms"] > 0
    e = out["ensemble"]
    assert set(e) == {"members", "weights", "vote", "accuracy", "latency_ms"}
    assert e["vote"] in ("hard", "soft")
    assert 1 <= len(e["members"]) == len(e["weights"]) <= 7
    assert out["two_stage"] is None


def test_table_low_latency_and_split_file(tmp_path, capsys):
    X, y = make_classification(200, 6, n_informative=4, n_classes=2, random_state=1)
    path = tmp_path / "split.npz"
    np.savez(path, X_train=X[:150], y_train=y[:150], X_test=X[150:], y_test=y[150:],
             data_type=np.array("vector"), background_class=np.array("0"))
    assert evaluate.main(_args(path, "--policy", "low_latency")) == 0
    text = capsys.readouterr().out
    assert "low_latency" in text and "ensemble" in text and "two-stage" in text


def test_bad_files(tmp_path, capsys):
    missing = tmp_path / "none.npz"
    assert evaluate.main(_args(missing)) == 2
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, A=np.zeros(3))
    assert evaluate.main(_args(wrong)) == 2
    one = tmp_path / "one.npz"
    np.savez(one, X=np.zeros((20, 2)), y=np.zeros(20))
    assert evaluate.main(_args(one)) == 2
    assert "mliot evaluate:" in capsys.readouterr().err


def test_recording_ids_keep_overlapping_windows_in_one_fold(tmp_path, capsys, monkeypatch):
    """``groups_train`` reaches the folds: no recording is on both sides of a validation split
    (overlapping windows would flatter every model); a wrong shape is refused."""
    from mliot_daemon.learn import pipeline

    X, y = make_classification(120, 6, n_informative=4, n_classes=2, random_state=2)
    groups = np.repeat(np.arange(24), 5)
    path = tmp_path / "windows.npz"
    np.savez(path, X_train=X[:100], y_train=y[:100], X_test=X[100:], y_test=y[100:],
             groups_train=groups[:100])
    seen = {}
    prepare = pipeline.prepare

    def spy(*args, **kwargs):
        seen["prep"] = prep = prepare(*args, **kwargs)
        return prep

    monkeypatch.setattr(pipeline, "prepare", spy)
    assert evaluate.main(_args(path)) == 0
    fold = seen["prep"].features.fold
    for g in np.unique(groups[:100]):
        assert len(set(fold[groups[:100] == g])) == 1
    bad = tmp_path / "bad.npz"
    np.savez(bad, X_train=X[:100], y_train=y[:100], X_test=X[100:], y_test=y[100:],
             groups_train=groups[:50])
    assert evaluate.main(_args(bad)) == 2
    assert "groups_train needs one id per training sample" in capsys.readouterr().err
