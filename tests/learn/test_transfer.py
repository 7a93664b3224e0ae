"""Model versions that cross the network: pack, sign, verify, host; trimmed ensembles."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from sklearn.datasets import load_digits

from actors.peers import portable_archive
from actors.server.hosting import HostedModels, HostError
from actors.server.serving import ServedModel
from mliot_daemon import signing
from mliot_daemon.learn.persist import save_model
from mliot_daemon.learn.pipeline import train
from mliot_daemon.learn.portable import PORTABLE_DIR


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    X, y = load_digits(return_X_y=True)
    model = train(X[:600], y[:600], families=("ridge", "knn", "random_forest"), budget_s=1.0,
                  workers=1)
    path = tmp_path_factory.mktemp("model") / "v"
    save_model(model, path, {})
    return model, path, X[600:700]


def test_a_signed_archive_verifies_only_for_what_it_was_signed_for(saved, tmp_path) -> None:
    _, path, _ = saved
    archive, size = signing.pack(path, tmp_path)
    with archive:
        signature = signing.sign_file("key", "nuc", "kitchen", 3, "l:m", archive)
        body = archive.read()
    assert len(body) == size
    good = signing.signer("key", "nuc", "kitchen", 3, "l:m")
    good.update(body)
    signing.check(good, signature)
    for key, origin, app, version, model in [("other", "nuc", "kitchen", 3, "l:m"),
                                             ("key", "pi", "kitchen", 3, "l:m"),
                                             ("key", "nuc", "garage", 3, "l:m"),
                                             ("key", "nuc", "kitchen", 4, "l:m"),
                                             ("key", "nuc", "kitchen", 3, "l:x")]:
        mac = signing.signer(key, origin, app, version, model)
        mac.update(body)
        with pytest.raises(signing.BadSignature):
            signing.check(mac, signature)
    for header in (None, "", "sha1=00", "hmac-sha256=\u00e9"):
        with pytest.raises(signing.BadSignature):
            signing.check(good, header)


def test_a_hosted_model_serves_like_the_original_and_bad_names_are_refused(saved, tmp_path
                                                                            ) -> None:
    model, path, rows = saved
    hosted = HostedModels(tmp_path / "hosted")
    hosted.reset()
    archive, _ = portable_archive(path, tmp_path)  # what the peers actor sends
    with archive:
        asyncio.run(hosted.receive("nuc", "kitchen", 3, "l:m", archive))
        for origin, app in (("..", "kitchen"), ("/etc", "kitchen"), ("nuc", "../x"),
                            ("nuc", "Kitchen")):
            with pytest.raises(HostError):
                asyncio.run(hosted.receive(origin, app, 3, "l:m", archive))
    assert hosted.ids() == {"nuc/kitchen": "l:m"}
    served = hosted.get("nuc", "kitchen")
    assert served is not None and served.current.version == 3
    here = ServedModel(3, model)
    assert [a.label for a in served.current.predict(rows)] == \
        [a.label for a in here.predict(rows)]
    assert sorted(p.name for p in (tmp_path / "hosted").rglob("*") if p.is_dir()) == \
        ["000003", "kitchen", "nuc"]
    assert sorted(p.name for p in (tmp_path / "hosted").rglob("*") if p.is_file()) == \
        ["arrays.npz", "portable.json"]  # no pickle crossed
    # the pickled version folder itself is no longer accepted
    pickled, _ = signing.pack(path, tmp_path)
    with pickled, pytest.raises(HostError, match="never pickles"):
        asyncio.run(hosted.receive("nuc", "kitchen", 4, "l:n", pickled))
    assert hosted.get("nuc", "kitchen").current.version == 3


def test_a_version_saved_without_its_portable_form_is_exported_from_its_pickles(saved, tmp_path
                                                                               ) -> None:
    model, path, rows = saved
    older = tmp_path / "older"
    shutil.copytree(path, older)
    shutil.rmtree(older / PORTABLE_DIR)  # as versions saved before the portable form was kept
    hosted = HostedModels(tmp_path / "hosted")
    hosted.reset()
    archive, _ = portable_archive(older, tmp_path)
    with archive:
        asyncio.run(hosted.receive("nuc", "kitchen", 3, "l:m", archive))
    assert [a.label for a in hosted.get("nuc", "kitchen").current.predict(rows)] == \
        [a.label for a in ServedModel(3, model).predict(rows)]
    assert not list(tmp_path.glob(".portable-*"))  # the export's folder is gone


def test_trimmed_ensembles_keep_the_best_weighted_members(saved) -> None:
    model, _, rows = saved
    served = ServedModel(1, model)
    n = served.n_members
    latencies = served.latencies_ms()
    assert len(latencies) == n and list(latencies) == sorted(latencies)
    assert latencies[-1] == pytest.approx(model.metrics["measured_latency_ms"])
    one = served.trimmed(1)
    assert one is served.trimmed(1) and served.trimmed(n) is served
    best = int(np.argmax(model.selection.weights))
    assert one.fast.members == [model.members[best].fast]
    assert [a.label for a in one.predict(rows)] == \
        [model.classes[p] for p in model.members[best].fast.predict(
            model.front_end.transform(rows))]
