"""Saving and loading a trained model directory."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import make_classification

from mliot_daemon.learn.persist import ModelFormatError, load_model, read_manifest, save_model
from mliot_daemon.learn.pipeline import train
from mliot_daemon.learn.portable import FILES, PORTABLE_DIR, load_portable


@pytest.fixture(scope="module")
def model():
    X, y = make_classification(300, 120, n_informative=10, n_classes=3, random_state=0)
    return train(X, y, families=("ridge", "knn", "random_forest"), budget_s=1.0, workers=1,
                 background_class="0"), X


def test_round_trip(tmp_path, model):
    m, X = model
    d = save_model(m, tmp_path / "v1")
    manifest = read_manifest(d)
    assert manifest["classes"] == m.classes
    assert [x["family"] for x in manifest["members"]] == m.selection.families
    assert manifest["versions"]["scikit-learn"] and manifest["data_hash"] == m.data_hash
    assert set(manifest["artifacts"]) >= {"front_end.pkl"}
    back = load_model(d)
    np.testing.assert_array_equal(back.fast().predict(X), m.fast().predict(X))
    Z = m.front_end.transform(X)
    np.testing.assert_array_equal(back.predict_two_stage(X, Z)[0],
                                  m.predict_two_stage(X, Z)[0])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary directory left behind


def test_versions_are_immutable(tmp_path, model):
    save_model(model[0], tmp_path / "v1")
    with pytest.raises(FileExistsError):
        save_model(model[0], tmp_path / "v1")


def test_tampered_artifact_is_refused(tmp_path, model):
    d = save_model(model[0], tmp_path / "v1")
    with open(d / "front_end.pkl", "ab") as f:
        f.write(b"x")
    with pytest.raises(ModelFormatError, match="front_end.pkl"):
        load_model(d)


def test_unknown_format_is_refused(tmp_path, model):
    d = save_model(model[0], tmp_path / "v1")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["format"] = 99
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="format"):
        load_model(d)


def test_a_version_holds_its_portable_form_which_serves_without_sklearn(tmp_path, model):
    """Issue 20: the server loads a version's ``portable/`` (numpy only): the same answers as
    the pickles, and a fresh interpreter that loads it never imports sklearn, scipy or
    xgboost."""
    m, X = model
    d = save_model(m, tmp_path / "v1")
    assert sorted(p.name for p in (d / PORTABLE_DIR).iterdir()) == sorted(FILES)
    np.testing.assert_array_equal(load_portable(d / PORTABLE_DIR).fast().predict(X),
                                  m.fast().predict(X))
    code = ("import sys; from actors.server.serving import ServedModel; "
            "from mliot_daemon.learn.portable import load_portable; "
            f"ServedModel(1, load_portable({str(d / PORTABLE_DIR)!r})); "
            "print(sorted({'sklearn', 'scipy', 'xgboost'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
