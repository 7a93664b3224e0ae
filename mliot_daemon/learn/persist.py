"""Persistence: a trained model as a versioned directory, written atomically.

Layout::

    <dir>/manifest.json        format, classes, front end, members + weights, policy, metrics,
                               candidates, data hash, library versions, and every artifact's
                               sha256
    <dir>/front_end.pkl        the fitted front end
    <dir>/reducer.npz          shared PCA (when a member uses it)
    <dir>/member-<family>.pkl  each member's estimator and compiled fast form
    <dir>/gate.pkl             the two-stage gate (optional)
    <dir>/portable/            the served predictor as arrays and JSON (``portable``), which
                               the server loads without unpickling or importing sklearn;
                               absent when a part has no array form, and in older versions

The directory is built under a temporary name beside the target and renamed into place, so a
reader sees either nothing or a complete model. Loading verifies each artifact's sha256 against
the manifest before unpickling. Pickles are loaded only from this machine's own disk: a model
sent to a peer is its portable form (``portable``: arrays and JSON), never this folder.

:func:`atomic_write` is the one-file form of the same promise, for what a training run writes
between its steps (prepared features, fitted candidates).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mliot_daemon.learn.calibration import Calibration
from mliot_daemon.learn.ensemble import Policy, Selection
from mliot_daemon.learn.fast import Reducer
from mliot_daemon.learn.portable import PORTABLE_DIR, PortableError, export_portable

FORMAT = 1
MANIFEST = "manifest.json"


class ModelFormatError(ValueError):
    """A model directory that is incomplete, tampered with, or of an unknown format."""


def library_versions() -> dict[str, str]:
    import sklearn
    import xgboost

    from mliot_daemon import __version__

    return {"python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "xgboost": xgboost.__version__,
            "mliot": __version__}


def atomic_write(path: Path, write: Any) -> Path:
    """Write one file through ``write(f)`` under a temporary name, fsync it and rename it into
    place: a reader (another pool worker) sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _sha256(path: Path) -> str:
    """The file's sha256, read in chunks: a KNN member holds its training rows (MNIST-60k:
    hundreds of MB), which must not be read into memory whole just to be hashed."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _HashingWriter:
    """A file that hashes what is written to it, so a saved artifact is not read back."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.hash = hashlib.sha256()

    def write(self, b: Any) -> int:
        self.hash.update(b)
        return int(self._f.write(b))


def _dump(obj: Any, path: Path) -> str:
    """Pickle ``obj`` to ``path`` (fsynced); returns its sha256."""
    with open(path, "wb") as f:
        out = _HashingWriter(f)
        pickle.dump(obj, out, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    return out.hash.hexdigest()


def save_model(model: Any, directory: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a ``TrainedModel``) to ``directory``, which must not exist yet."""
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} exists; model versions are immutable")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        artifacts: dict[str, str] = {}

        def put(name: str, obj: Any) -> None:
            artifacts[name] = _dump(obj, tmp / name)

        put("front_end.pkl", model.front_end)
        if model.reducer is not None:
            np.savez(tmp / "reducer.npz", mean=model.reducer.mean,
                     components=model.reducer.components)
            artifacts["reducer.npz"] = _sha256(tmp / "reducer.npz")
        members = []
        for m, w in zip(model.members, model.selection.weights, strict=True):
            name = f"member-{m.family}.pkl"
            put(name, {"estimator": m.estimator, "fast": m.fast, "reduced": m.reduced})
            members.append({"family": m.family, "weight": w, "artifact": name,
                            "sharpness": m.sharpness, **m.summary()})
        if model.gate is not None:
            put("gate.pkl", model.gate)
        try:  # not among the hashed artifacts: it runs no code, and load_model never reads it
            _fsynced(export_portable(model, tmp / PORTABLE_DIR))
        except PortableError:
            shutil.rmtree(tmp / PORTABLE_DIR, ignore_errors=True)  # served from the pickles
        manifest = {
            "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "classes": model.classes, "front_end": model.front_end.describe(),
            "policy": model.policy.as_dict() | {"min_accuracy": model.policy.min_accuracy},
            "members": members, "candidates": [c.summary() for c in model.candidates],
            "selection": {"val_accuracy": model.selection.val_accuracy,
                          "vote": model.selection.vote,
                          "latency_ms": model.selection.latency_ms,
                          "within_budget": model.selection.within_budget},
            "gate": model.gate.report() | {"background": model.classes[model.gate.background]}
            if model.gate is not None else None,
            "calibration": model.calibration.as_dict() if model.calibration else None,
            "metrics": _plain(model.metrics), "data_hash": model.data_hash,
            "versions": library_versions(), "artifacts": artifacts, "extra": _plain(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _fsynced(tmp)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _fsynced(directory: Path) -> None:
    """Flush every file of ``directory`` and the folder itself to disk."""
    for p in [*directory.iterdir(), directory]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(
        d, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a saved model (no artifacts loaded)."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{directory}: unreadable manifest: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ModelFormatError(f"{directory}: unknown model format {manifest.get('format')!r}")
    return manifest


def _sharpness(members: list[dict[str, Any]]) -> list[float] | None:
    """The members' sharpness (``learn.soft``); None for versions saved before it."""
    values = [m.get("sharpness") for m in members]
    return None if any(v is None for v in values) else [float(v) for v in values]


def load_model(directory: Path) -> Any:
    """Load a model saved by :func:`save_model`, verifying artifact hashes first."""
    from mliot_daemon.learn.fit import FittedModel
    from mliot_daemon.learn.pipeline import TrainedModel

    directory = Path(directory)
    manifest = read_manifest(directory)
    for name, digest in manifest["artifacts"].items():
        p = directory / name
        if not p.is_file() or _sha256(p) != digest:
            raise ModelFormatError(f"{directory}: artifact {name} is missing or does not match")

    def get(name: str) -> Any:
        with open(directory / name, "rb") as f:
            return pickle.load(f)

    reducer = None
    if "reducer.npz" in manifest["artifacts"]:
        with np.load(directory / "reducer.npz") as d:
            reducer = Reducer(d["mean"], d["components"])
    members = []
    for m in manifest["members"]:
        art = get(m["artifact"])
        members.append(FittedModel(
            family=m["family"], params=m["params"], estimator=art["estimator"], fast=art["fast"],
            reduced=art["reduced"], reduced_dims=m["reduced_dims"], val_accuracy=m["val_accuracy"],
            val_pred=np.empty(0, dtype=np.int64), fit_seconds=m["fit_seconds"],
            latency_ms=m["latency_ms"], size_bytes=m["size_bytes"], candidates=m["candidates"],
            sharpness=float(m.get("sharpness") or 1.0)))
    sel = manifest["selection"]
    selection = Selection(members=list(range(len(members))),
                          weights=[float(m["weight"]) for m in manifest["members"]],
                          val_accuracy=sel["val_accuracy"], latency_ms=sel["latency_ms"],
                          within_budget=sel["within_budget"],
                          families=[m["family"] for m in manifest["members"]],
                          sharpness=_sharpness(manifest["members"]),
                          soft=sel.get("vote") == "soft")
    pol = manifest["policy"]
    policy = Policy(pol["mode"], pol["latency_ms"], pol["max_models"], pol.get("min_accuracy", 0.0))
    return TrainedModel(front_end=get("front_end.pkl"), classes=manifest["classes"],
                        candidates=members, selection=selection, policy=policy, reducer=reducer,
                        gate=get("gate.pkl") if "gate.pkl" in manifest["artifacts"] else None,
                        calibration=Calibration.from_dict(manifest.get("calibration")),
                        data_hash=manifest["data_hash"], metrics=manifest["metrics"])
