"""A portable model's members and its arrays: each fast member to arrays and scalars, and back,
every shape and index checked (``portable`` holds the format and the whole model)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mliot_daemon.learn.fast.knn import KnnMember
from mliot_daemon.learn.fast.linear import LinearMember, MlpMember, RbfSvmMember
from mliot_daemon.learn.fast.trees import TreesMember

ARRAYS = "arrays.npz"


class PortableError(ValueError):
    """A model that cannot be expressed as arrays, or a portable model that is malformed."""


def member_out(m: Any, key: str, put: Any) -> dict[str, Any]:
    """Put a fast member's arrays under ``key.``; its kind and scalars for the manifest."""
    if type(m) is LinearMember:
        put(f"{key}.W", m.W), put(f"{key}.b", m.b)
        return {"kind": "linear"}
    if type(m) is MlpMember:
        for j, (W, b) in enumerate(m.layers):
            put(f"{key}.W{j}", W), put(f"{key}.b{j}", b)
        return {"kind": "mlp", "layers": len(m.layers)}
    if type(m) is RbfSvmMember:
        for name in ("S2g", "gS_sq", "C", "b", "pair_i", "pair_j"):
            put(f"{key}.{name}", getattr(m, name))
        return {"kind": "svm_rbf", "gamma": m.gamma, "n_classes": m.n_classes}
    if type(m) is KnnMember:
        put(f"{key}.T", m.Tm2 * -0.5)  # the training rows, exactly
        put(f"{key}.labels", m.labels)
        return {"kind": "knn", "k": m.k, "distance": bool(m.distance), "n_classes": m.n_classes}
    if type(m) is TreesMember:
        for name in ("feat", "thr", "left", "roots") + (
                ("values",) if m.kind == "forest" else ("leaf", "tree_class", "offset")):
            put(f"{key}.{name}", getattr(m, name))
        return {"kind": "trees", "trees": m.kind, "n_classes": m.n_classes,
                "active": [int(a) for a in m.active]}
    raise PortableError(f"a {type(m).__name__} member has no portable form")


class Arrays:
    """Typed access to the loaded arrays: a missing key, a wrong rank or kind is an error."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self._a = arrays

    def get(self, key: str, ndim: int, kind: str = "f", shape: tuple[int | None, ...] = ()
            ) -> np.ndarray:
        a = self._a.get(key)
        if a is None:
            raise PortableError(f"{ARRAYS} lacks {key!r}")
        if a.ndim != ndim or a.dtype.kind not in kind:
            raise PortableError(f"{key}: expected {ndim}-D of kind {kind!r}, got {a.dtype}"
                                f"{a.shape}")
        for want, got in zip(shape, a.shape, strict=False):
            if want is not None and want != got:
                raise PortableError(f"{key}: shape {a.shape} does not fit (expected {shape})")
        if kind == "f" and not np.all(np.isfinite(a)) and key.split(".")[-1] != "thr":
            raise PortableError(f"{key}: not finite")  # thresholds: leaves hold +inf
        return np.ascontiguousarray(a, dtype=np.float64 if kind == "f" else None)

    def index(self, key: str, ndim: int, bound: int, shape: tuple[int | None, ...] = ()
              ) -> np.ndarray:
        """Integer indices, each in ``[0, bound)``."""
        a = self.get(key, ndim, "iu", shape)
        if a.size and (int(a.min()) < 0 or int(a.max()) >= bound):
            raise PortableError(f"{key}: indices outside [0, {bound})")
        return a.astype(np.intp)


def count(v: Any, what: str, low: int = 0) -> int:
    if type(v) is not int or v < low:
        raise PortableError(f"{what} must be an integer >= {low}")
    return v


def number(v: Any, what: str) -> float:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise PortableError(f"{what} must be a finite number")
    return float(v)


def member_in(spec: dict[str, Any], key: str, arr: Arrays, d: int, K: int) -> Any:
    """A fast member rebuilt from its arrays, reading ``d`` features and voting on ``K``."""
    kind = spec["kind"]
    if kind == "linear":
        m: Any = LinearMember.__new__(LinearMember)
        m.W = arr.get(f"{key}.W", 2, shape=(d, None))
        m.b = arr.get(f"{key}.b", 1, shape=(m.W.shape[1],))
        m.binary = _outputs(m.W.shape[1], K, key) == 1
    elif kind == "mlp":
        m = MlpMember.__new__(MlpMember)
        m.layers, rows = [], d
        for j in range(count(spec["layers"], "layers", 1)):
            W = arr.get(f"{key}.W{j}", 2, shape=(rows, None))
            m.layers.append((W, arr.get(f"{key}.b{j}", 1, shape=(W.shape[1],))))
            rows = W.shape[1]
        m.binary = _outputs(rows, K, key) == 1
    elif kind == "svm_rbf":
        m = RbfSvmMember.__new__(RbfSvmMember)
        m.S2g = arr.get(f"{key}.S2g", 2, shape=(None, d))
        m.n_classes = count(spec["n_classes"], "n_classes", 2)
        n, pairs = m.S2g.shape[0], m.n_classes * (m.n_classes - 1) // 2
        m.gS_sq = arr.get(f"{key}.gS_sq", 1, shape=(n,))
        m.C = arr.get(f"{key}.C", 2, shape=(n, pairs))
        m.b = arr.get(f"{key}.b", 1, shape=(pairs,))
        m.pair_i = arr.index(f"{key}.pair_i", 1, m.n_classes, (pairs,))
        m.pair_j = arr.index(f"{key}.pair_j", 1, m.n_classes, (pairs,))
        m.gamma = number(spec["gamma"], "gamma")
        m.binary = m.n_classes == 2
    elif kind == "knn":
        m = KnnMember.__new__(KnnMember)
        T = arr.get(f"{key}.T", 2, shape=(None, d))
        n_classes = count(spec["n_classes"], "n_classes", 2)
        labels = arr.index(f"{key}.labels", 1, n_classes, (T.shape[0],))
        k = count(spec["k"], "k", 1)
        if k > len(T):
            raise PortableError(f"{key}: k = {k} with {len(T)} rows")
        m._index(T, labels, k, spec["distance"] is True, n_classes)
    elif kind == "trees":
        m = TreesMember.__new__(TreesMember)
        m.kind, m.n_classes = spec["trees"], count(spec["n_classes"], "n_classes", 2)
        if m.kind not in ("forest", "boost"):
            raise PortableError(f"{key}: unknown tree kind {m.kind!r}")
        thr = arr.get(f"{key}.thr", 1, shape=(None,))
        nodes = len(thr)
        m.thr = thr.astype(np.float32)
        m.feat = arr.index(f"{key}.feat", 1, d, (nodes,))
        m.left = arr.index(f"{key}.left", 1, nodes, (nodes,))
        m.roots = arr.index(f"{key}.roots", 1, nodes)
        # a walk may step to the right child (left + 1): it must exist unless the node is a
        # leaf (threshold +inf, never passed)
        if np.any((m.left + 1 >= nodes) & (m.thr != np.inf)):
            raise PortableError(f"{key}: a split's right child is missing")
        active = spec["active"]
        if not (isinstance(active, list) and len(active) <= nodes
                and all(type(a) is int and 0 < a <= len(m.roots) for a in active)
                and active == sorted(active, reverse=True)):
            raise PortableError(f"{key}: bad tree levels")
        m.active, m.depth = active, len(active)
        if m.kind == "forest":
            m.values = arr.get(f"{key}.values", 2, shape=(nodes, m.n_classes))
        else:
            m.leaf = arr.get(f"{key}.leaf", 1, shape=(nodes,))
            m.tree_class = arr.index(f"{key}.tree_class", 1, m.width, (len(m.roots),))
            m.offset = arr.get(f"{key}.offset", 1, shape=(m.width,))
        m._tables()
    else:
        raise PortableError(f"{key}: unknown member kind {kind!r}")
    if getattr(m, "n_classes", 2) > K:
        raise PortableError(f"{key}: more classes than the model's {K}")
    return m


def _outputs(width: int, K: int, key: str) -> int:
    """A linear or MLP member's output columns: one for two classes, else one per class."""
    if not 1 <= width <= K or width == 2:
        raise PortableError(f"{key}: {width} outputs for {K} classes")
    return width
