"""Portable models: what a peer needs to serve a version, as arrays and JSON, never pickles.

A version folder holds pickles (``persist``), which are fine on this machine's own disk but
not across the network: a signature proves who sent a model, not that its sender is
uncompromised, and unpickling runs whatever the pickle names. So a model that crosses the
network is its served predictor only, in two files:

- ``portable.json``: the format, the classes, the front end's kind and scalar parameters,
  each member's family, kind, weight, sharpness, latency and scalars, the vote, the gate's
  scalars, the calibration and the latency metrics placement reads;
- ``arrays.npz``: every array, uncompressed, named ``<part>.<name>`` (``front_end.mean``,
  ``member3.W``, ``gate.w``, ...).

:func:`load_portable` reads the npz with ``allow_pickle=False`` and keeps only numeric arrays
(an object array, a non-array member or a compressed entry refuses the whole model), reads the
JSON with ``json``, checks every shape and index against the others, rebuilds the fast
members from the arrays alone and votes on two rows before it returns: nothing a transfer
holds can name a class or run code. All seven families compile to arrays (``fast/``); a member
of any other kind refuses the whole export (:class:`PortableError`), so an app is offloaded
whole or not at all, never as a different ensemble.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mliot_daemon.learn.calibration import Calibration
from mliot_daemon.learn.ensemble import Selection
from mliot_daemon.learn.fast import FastEnsemble, Reducer
from mliot_daemon.learn.frontends import (
    AUDIO_SUMMARIES,
    AudioFrontEnd,
    FrontEnd,
    ImageFrontEnd,
    VectorFrontEnd,
    _Standardizer,
    make_front_end,
)
from mliot_daemon.learn.gate import Gate
from mliot_daemon.learn.portable_members import (
    ARRAYS,
    Arrays,
    PortableError,
    count,
    member_in,
    member_out,
    number,
)
from mliot_daemon.learn.sensor import BLOCKS, SensorFrontEnd
from mliot_daemon.learn.waveform import N_FEATURES as WAVEFORM_FEATURES

FORMAT = "mliot-portable/1"
MANIFEST = "portable.json"
FILES = (MANIFEST, ARRAYS)  # all a transfer may hold
PORTABLE_DIR = "portable"  # the same two files inside a version folder (persist.save_model)
METRICS = ("front_end_ms", "measured_latency_ms", "trim_accuracy")  # what serving reads
GATE_SCALARS = ("b", "threshold", "val_precision", "val_recall", "val_foreground_loss", "spread")


@dataclass
class PortableMember:
    """One member as serving sees it (``ServedModel`` reads ``fast`` and ``latency_ms``)."""

    family: str
    fast: Any
    latency_ms: float


@dataclass
class PortableModel:
    """A version rebuilt from arrays: the attributes ``ServedModel`` reads of a
    ``TrainedModel``, without estimators (so no training, reference or refit)."""

    front_end: FrontEnd
    classes: list[str]
    members: list[PortableMember]
    selection: Selection
    reducer: Reducer | None = None
    gate: Gate | None = None
    calibration: Calibration | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    _fast: FastEnsemble | None = field(default=None, repr=False)

    def fast(self) -> FastEnsemble:
        """The served predictor (built once)."""
        if self._fast is None:
            sel = self.selection
            self._fast = FastEnsemble(self.front_end, [m.fast for m in self.members],
                                      sel.weights, self.classes, self.reducer, sel.sharpness,
                                      sel.soft)
        return self._fast


# -- export ---------------------------------------------------------------------------------


def export_portable(model: Any, directory: Path) -> Path:
    """Write ``model`` (a ``TrainedModel``) as ``portable.json`` + ``arrays.npz`` into the new
    folder ``directory``; PortableError when a part has no array form."""
    arrays: dict[str, np.ndarray] = {}

    def put(key: str, a: Any) -> None:
        a = np.ascontiguousarray(a)
        if a.dtype.kind not in "biuf":
            raise PortableError(f"{key}: {a.dtype} is not a numeric array")
        arrays[key] = a

    sel = model.selection
    members = []
    for i, (m, w) in enumerate(zip(model.members, sel.weights, strict=True)):
        spec = member_out(m.fast, f"member{i}", put)  # first: refuses what has no arrays
        members.append({"family": m.family, "weight": float(w), "reduced": bool(m.fast.reduced),
                        "latency_ms": float(m.latency_ms), **spec})
    if model.reducer is not None:
        put("reducer.mean", model.reducer.mean)
        put("reducer.components", model.reducer.components)
    gate = model.gate
    if gate is not None:
        put("gate.w", gate.w)
    manifest = {
        "format": FORMAT, "classes": list(model.classes),
        "front_end": _front_end_out(model.front_end, put), "members": members,
        "reducer": model.reducer is not None,
        "sharpness": None if sel.sharpness is None else [float(a) for a in sel.sharpness],
        "vote": "soft" if sel.soft else "hard",
        "selection": {"val_accuracy": float(sel.val_accuracy),
                      "latency_ms": float(sel.latency_ms),
                      "within_budget": bool(sel.within_budget)},
        "gate": None if gate is None else {
            "background": int(gate.background), "raw": bool(gate.raw),
            **{k: float(getattr(gate, k)) for k in GATE_SCALARS}},
        "calibration": model.calibration.as_dict() if model.calibration else None,
        "metrics": {k: model.metrics[k] for k in METRICS if k in model.metrics},
        # the rest (validation confusion, accuracies) is only shown, never computed with: the
        # quality view and the version history read it from the served model
        "report": json.loads(json.dumps(
            {k: v for k, v in model.metrics.items() if k not in METRICS},
            default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))),
    }
    directory = Path(directory)
    directory.mkdir(parents=True)
    np.savez(directory / ARRAYS, **arrays)  # stored, not deflated: arrays hardly compress
    (directory / MANIFEST).write_text(json.dumps(manifest, sort_keys=True) + "\n")
    return directory


def _front_end_out(fe: FrontEnd, put: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"data_type": fe.data_type, "n_features": int(fe.n_features_)}
    if type(fe) is ImageFrontEnd:
        return spec | {"pixel_scale": float(fe.pixel_scale_)}
    if type(fe) is AudioFrontEnd:
        # front ends pickled before the summary was chosen by measurement used stats_seg4
        spec |= {"sample_rate": fe.sample_rate, "summary": getattr(fe, "summary", "stats_seg4")}
    elif type(fe) is SensorFrontEnd:
        spec["blocks"] = list(getattr(fe, "blocks", ("stats",)))
    elif type(fe) is not VectorFrontEnd:
        raise PortableError(f"the {type(fe).__name__} front end has no portable form")
    put("front_end.mean", fe._std.mean_)
    put("front_end.scale", fe._std.scale_)
    return spec


# -- load -----------------------------------------------------------------------------------


def load_portable(directory: Path) -> PortableModel:
    """The model in ``directory`` (:func:`export_portable`'s files); PortableError when it is
    anything else. Runs no code from the files: see the module docstring."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PortableError(f"unreadable {MANIFEST}: {exc}") from None
    arrays = read_arrays(directory / ARRAYS)
    try:
        return _build(manifest, Arrays(arrays))
    except PortableError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise PortableError(f"malformed portable model: {type(exc).__name__}: {exc}") from None


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz written by :func:`export_portable`, loaded without pickles; a
    pickle, an object array, a non-array entry or a compressed entry is refused."""
    try:
        with zipfile.ZipFile(path) as z:
            # stored entries are no larger than the file: no decompression bomb
            if sum(i.file_size for i in z.infolist()) > path.stat().st_size:
                raise PortableError(f"{ARRAYS}: compressed entries are refused")
        out = {}
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                a = npz[key]  # an object array raises ValueError here: it would unpickle
                if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
                    raise PortableError(f"{ARRAYS}: entry {key!r} is not a numeric array")
                out[key] = a
        return out
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, PortableError):
            raise
        raise PortableError(f"{ARRAYS} refused: {exc}") from None


def _build(man: dict[str, Any], arr: Arrays) -> PortableModel:
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise PortableError(f"not a {FORMAT} model")
    classes = man["classes"]
    if not (isinstance(classes, list) and len(classes) >= 2
            and all(isinstance(c, str) for c in classes)):
        raise PortableError("classes must be a list of at least two names")
    K = len(classes)
    front_end = _front_end_in(man["front_end"], arr)
    d = front_end.n_features_
    reducer = None
    if man["reducer"] is True:
        comps = arr.get("reducer.components", 2, shape=(None, d))
        reducer = Reducer(arr.get("reducer.mean", 1, shape=(d,)), comps)
    members, weights, families = [], [], []
    for i, spec in enumerate(man["members"]):
        reduced = spec["reduced"] is True
        if reduced and reducer is None:
            raise PortableError(f"member {i} reads the reducer, which is missing")
        fast = member_in(spec, f"member{i}", arr, reducer.n_components if reduced else d, K)
        fast.family, fast.reduced = str(spec["family"]), reduced
        members.append(PortableMember(fast.family, fast, number(spec["latency_ms"], "latency")))
        weights.append(number(spec["weight"], "weight"))
        families.append(fast.family)
    if not members or min(weights) <= 0:
        raise PortableError("a model needs members with positive weights")
    sharp = man["sharpness"]
    sharpness = None if sharp is None else [number(a, "sharpness") for a in sharp]
    sel = man["selection"]
    selection = Selection(members=list(range(len(members))), weights=weights,
                          val_accuracy=number(sel["val_accuracy"], "val_accuracy"),
                          latency_ms=number(sel["latency_ms"], "latency_ms"),
                          within_budget=sel["within_budget"] is True, families=families,
                          sharpness=sharpness, soft=man["vote"] == "soft")
    gate = None
    if man["gate"] is not None:
        g = man["gate"]
        raw = g["raw"] is True
        gate = Gate(background=count(g["background"], "gate background"),
                    w=arr.get("gate.w", 1, shape=(WAVEFORM_FEATURES if raw else d,)), raw=raw,
                    **{k: number(g[k], f"gate {k}") for k in GATE_SCALARS})
        if gate.background >= K or gate.spread <= 0:
            raise PortableError("the gate's background class or spread is out of range")
    metrics = {k: v for k, v in dict(man["metrics"]).items() if k in METRICS}
    for k, v in metrics.items():
        for x in v if isinstance(v, list) else [v]:
            number(x, k)
    report = man.get("report")
    if isinstance(report, dict):
        metrics = {**{k: v for k, v in report.items() if k not in METRICS}, **metrics}
    model = PortableModel(front_end, list(classes), members, selection, reducer, gate,
                          Calibration.from_dict(man["calibration"]), metrics)
    probe = np.zeros((2, d))  # a trial vote, both paths: what is left inconsistent fails here
    model.fast().vote(probe)
    model.fast().vote_one(probe[0])
    return model


def _front_end_in(spec: dict[str, Any], arr: Arrays) -> FrontEnd:
    data_type = spec["data_type"]
    if data_type not in ("vector", "image", "audio", "sensor"):
        raise PortableError(f"unknown data type {data_type!r}")
    d = count(spec["n_features"], "n_features", 1)
    fe = make_front_end(data_type, count(spec.get("sample_rate", 16000), "sample_rate", 1000))
    fe.n_features_ = d
    if isinstance(fe, ImageFrontEnd):
        fe.pixel_scale_ = number(spec["pixel_scale"], "pixel_scale")
        if fe.pixel_scale_ <= 0:
            raise PortableError("pixel_scale must be positive")
        return fe
    if isinstance(fe, AudioFrontEnd):
        if spec["summary"] not in AUDIO_SUMMARIES:
            raise PortableError(f"unknown audio summary {spec['summary']!r}")
        fe.summary = spec["summary"]
    if isinstance(fe, SensorFrontEnd):
        blocks = spec["blocks"]
        if not (isinstance(blocks, list) and blocks and set(blocks) <= set(BLOCKS)):
            raise PortableError(f"sensor blocks must be among {BLOCKS}")
        fe.blocks = tuple(blocks)
    std = _Standardizer()
    std.mean_ = arr.get("front_end.mean", 1, shape=(d,))
    std.scale_ = arr.get("front_end.scale", 1, shape=(d,))
    if not np.all(std.scale_ != 0):
        raise PortableError("front_end.scale holds a zero")
    fe._std = std
    return fe
