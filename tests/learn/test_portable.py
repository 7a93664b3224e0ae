"""Portable models (arrays + JSON, no pickles): every family round-trips to the same labels,
and anything that could unpickle is refused."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import RidgeClassifier

from mliot_daemon import signing
from mliot_daemon.learn.ensemble import Policy, Selection, member_weight
from mliot_daemon.learn.families import FAMILIES
from mliot_daemon.learn.fast import compile_member
from mliot_daemon.learn.pipeline import TrainedModel, fit_all, prepare, train
from mliot_daemon.learn.portable import (
    ARRAYS,
    FILES,
    MANIFEST,
    PortableError,
    export_portable,
    load_portable,
)


def _all_members(X, y, data_type="vector", background=None) -> TrainedModel:
    """Every family as a member of one ensemble, so each member kind crosses."""
    prep = prepare(X, y, data_type)
    cands = fit_all(prep, FAMILIES, budget_s=0.25, workers=2)
    K = len(prep.classes)
    sel = Selection(members=list(range(len(cands))),
                    weights=[member_weight(c.val_accuracy, K) for c in cands],
                    val_accuracy=0.9, latency_ms=1.0, within_budget=True,
                    families=[c.family for c in cands], sharpness=[c.sharpness for c in cands])
    gate = None
    if background is not None:
        from mliot_daemon.learn.gate import fit_gate

        fs = prep.features
        gate = fit_gate(fs.Z, fs.y, prep.classes.index(background), fs.fold)
    return TrainedModel(prep.front_end, prep.classes, cands, sel, Policy(), prep.features.reducer,
                        gate, metrics={"front_end_ms": 0.01, "trim_accuracy": [0.9] * len(cands)})


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:700], y[:700], X[700:900]


@pytest.fixture(scope="module")
def model(digits):
    X, y, _ = digits
    return _all_members(X, y)


@pytest.mark.parametrize("soft", [False, True])
def test_every_family_round_trips_to_the_same_labels(model, digits, tmp_path, soft) -> None:
    _, _, rows = digits
    model = dataclasses.replace(model, selection=dataclasses.replace(model.selection, soft=soft),
                                _fast=None)
    assert sorted(m.family for m in model.members) == sorted(FAMILIES)
    export_portable(model, tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(FILES)
    back = load_portable(tmp_path / "p")
    assert back.classes == model.classes and back.selection.soft is soft
    for here, there in zip(model.fast().members, back.fast().members, strict=True):
        np.testing.assert_array_equal(there.predict(model.front_end.transform(rows)),
                                      here.predict(model.front_end.transform(rows)))
    np.testing.assert_array_equal(back.fast().predict(rows), model.fast().predict(rows))
    for r in rows[:20]:  # the served single-row path too
        assert back.fast().predict(r[None]).tolist() == model.fast().predict(r[None]).tolist()
    vote, vote_back = model.fast().vote(model.front_end.transform(rows)), \
        back.fast().vote(back.front_end.transform(rows))
    np.testing.assert_allclose(vote_back.share, vote.share)


def test_a_binary_image_model_with_pca_and_a_gate_round_trips(tmp_path) -> None:
    X, y = make_classification(400, 120, n_informative=10, n_classes=2, random_state=0)
    X = X.reshape(-1, 10, 12)  # images: the pixel-scale front end; 120 features: a PCA
    model = _all_members(X[:300], y[:300], "image", background="0")
    # members on the shared PCA's features, whatever the fits chose
    Zr = model.reducer(model.front_end.transform(X[:300]))
    codes = np.searchsorted(model.classes, y[:300].astype(str))
    for family, est in (("ridge", RidgeClassifier()), ("random_forest",
                                                       RandomForestClassifier(10, random_state=0))):
        i = next(i for i, m in enumerate(model.candidates) if m.family == family)
        fast = compile_member(family, est.fit(Zr, codes), reduced=True)
        model.candidates[i] = dataclasses.replace(model.candidates[i], fast=fast, reduced=True)
    back = load_portable(export_portable(model, tmp_path / "p"))
    rows = X[300:]
    np.testing.assert_array_equal(back.fast().predict(rows), model.fast().predict(rows))
    Z = model.front_end.transform(rows)
    np.testing.assert_allclose(back.gate.distance(Z), model.gate.distance(Z))


def test_pickles_and_object_arrays_are_refused(model, tmp_path) -> None:
    good = export_portable(model, tmp_path / "good")
    # an npz holding an object array: np.load(allow_pickle=False) refuses to unpickle it
    bad = tmp_path / "objects"
    bad.mkdir()
    (bad / MANIFEST).write_bytes((good / MANIFEST).read_bytes())
    with np.load(good / ARRAYS) as npz:
        arrays = dict(npz)
    arrays["member0.W"] = np.array([object()], dtype=object)
    np.savez(bad / ARRAYS, **arrays)
    with pytest.raises(PortableError, match="pickle"):
        load_portable(bad)
    # an "npz" that is a pickle
    (bad / ARRAYS).write_bytes(pickle.dumps({"W": np.zeros(3)}))
    with pytest.raises(PortableError, match="refused"):
        load_portable(bad)
    # a compressed npz (a decompression bomb would be one)
    np.savez_compressed(bad / ARRAYS, **{k: v for k, v in arrays.items() if k != "member0.W"})
    with pytest.raises(PortableError, match="compressed"):
        load_portable(bad)
    # a manifest that does not fit its arrays
    manifest = json.loads((good / MANIFEST).read_text())
    manifest["front_end"]["n_features"] += 1
    (bad / MANIFEST).write_text(json.dumps(manifest))
    (bad / ARRAYS).write_bytes((good / ARRAYS).read_bytes())
    with pytest.raises(PortableError):
        load_portable(bad)


def test_an_archive_with_a_pickle_is_refused_before_anything_is_extracted(tmp_path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in ((MANIFEST, b"{}"), ("member-knn.pkl", pickle.dumps(1))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    with pytest.raises(signing.ArchiveRefused, match="member-knn.pkl"):
        signing.unpack(out, tmp_path / "x", FILES)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_a_member_without_an_array_form_refuses_the_export(model, tmp_path) -> None:
    odd = dataclasses.replace(model.members[0], fast=object())
    broken = dataclasses.replace(model, candidates=[odd, *model.candidates[1:]], _fast=None)
    with pytest.raises(PortableError, match="no portable form"):
        export_portable(broken, tmp_path / "p")


@pytest.mark.parametrize("data_type", ["audio", "sensor"])
def test_audio_and_sensor_front_ends_round_trip(data_type, tmp_path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    if data_type == "audio":  # 0.6 s clips: three tones in noise
        t = np.arange(9600) / 16000
        X = np.sin(2 * np.pi * np.array([200.0, 900.0, 2500.0])[y][:, None] * t) \
            + rng.normal(scale=0.3, size=(60, t.size))
    else:  # two channels, 40 steps: three levels and slopes
        X = y[:, None, None] * np.linspace(0, 1, 40) + rng.normal(size=(60, 2, 40))
    model = train(X[:45], y[:45], data_type, families=("ridge", "knn"), budget_s=0.3, workers=1)
    back = load_portable(export_portable(model, tmp_path / "p"))
    assert back.front_end.describe()["data_type"] == data_type
    np.testing.assert_array_equal(back.front_end.transform(X[45:]),
                                  model.front_end.transform(X[45:]))
    assert back.fast().predict_labels(X[45:]) == model.fast().predict_labels(X[45:])
