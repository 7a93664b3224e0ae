"""Fast predictor: a whole weighted-vote ensemble evaluated as a few numpy array operations.

Why numpy, measured on this 2-core machine for the 7-member digits ensemble (single row p50 /
batched rows per second): naive ``.predict`` per member 4.9 ms (RandomForest's joblib dispatch
alone is 3 ms; KNN and XGBoost start OpenMP threads); one merged onnxruntime graph 83 us /
29,000 rows/s; numpy with array-flattened trees 52 us / 45,000 rows/s (this module's design;
``python -m bench learn`` reports its numbers). numpy needs no extra runtime dependency and no
converters (skl2onnx's SVC path warns under scikit-learn 1.9, its default KNN graph is slow,
and XGBoost needs onnxmltools), and it serves every family, so we chose it.

How each family is evaluated (``Z`` are the front end's features):

- ridge, svm_linear: ``argmax(Z @ W + b)`` (binary: ``> 0``).
- svm_rbf: RBF kernel against the support vectors, then libsvm's one-vs-one vote with ties to
  the lowest class index, as ``SVC.predict`` does.
- mlp: the ReLU forward pass, ``argmax`` of the output logits.
- knn: brute-force squared distances, ``argpartition`` for the k nearest, uniform or
  inverse-distance vote. Neighbours at exactly equal distance may be chosen differently from
  scikit-learn: the only permitted disagreement.
- random_forest, xgboost: every tree flattened into shared arrays with the right child stored
  next to the left one, so one level of all trees is ``node = left[node] + (x[feat[node]] >
  thr[node])``; leaves loop onto themselves. Inputs are cast to float32 exactly as scikit-learn
  and XGBoost do, and thresholds are rounded to the float32 that gives the same comparison
  (scikit-learn: ``x <= t`` goes left, XGBoost: ``x < t``), so no row flips at a threshold.

Single-row work should not start BLAS thread pools: call :func:`single_thread_blas` once in the
serving process (it uses threadpoolctl; the ``OPENBLAS_CORETYPE`` environment is left alone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from mliot_daemon.learn.frontends import FrontEnd

_INF32 = np.float32(np.inf)


def single_thread_blas() -> Any:
    """Limit BLAS/OpenMP pools of this process to one thread (returns the threadpoolctl handle)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


@dataclass
class Reducer:
    """A fitted linear projection (PCA/IncrementalPCA without whitening) as two arrays."""

    mean: np.ndarray
    components: np.ndarray  # (k, d)

    @classmethod
    def from_pca(cls, pca: Any) -> Reducer:
        if getattr(pca, "whiten", False):
            raise ValueError("whitened PCA is not supported")
        return cls(np.asarray(pca.mean_, dtype=np.float64), np.asarray(pca.components_, dtype=np.float64))

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        return (Z - self.mean) @ self.components.T

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])


class FastMember:
    """One compiled member: ``predict(Z)`` -> class indices 0..K-1 (same labels as sklearn)."""

    family: str
    reduced: bool

    def predict(self, Z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Linear(FastMember):
    def __init__(self, est: BaseEstimator) -> None:
        coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
        self.W = np.ascontiguousarray(coef.T)
        self.b = np.asarray(est.intercept_, dtype=np.float64).ravel()
        self.binary = coef.shape[0] == 1

    def predict(self, Z: np.ndarray) -> np.ndarray:
        s = Z @ self.W + self.b
        return (s[:, 0] > 0).astype(np.intp) if self.binary else s.argmax(axis=1)


class _Mlp(FastMember):
    def __init__(self, est: BaseEstimator) -> None:
        if est.activation != "relu":
            raise ValueError("only ReLU MLPs are compiled")
        self.layers = [(np.ascontiguousarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64))
                       for W, b in zip(est.coefs_, est.intercepts_)]
        self.binary = est.n_outputs_ == 1

    def predict(self, Z: np.ndarray) -> np.ndarray:
        h = Z
        for W, b in self.layers[:-1]:
            h = h @ W
            h += b
            np.maximum(h, 0.0, out=h)
        W, b = self.layers[-1]
        s = h @ W + b
        return (s[:, 0] > 0).astype(np.intp) if self.binary else s.argmax(axis=1)


class _RbfSvm(FastMember):
    def __init__(self, est: BaseEstimator) -> None:
        if est.kernel != "rbf":
            raise ValueError("only RBF SVMs are compiled")
        self.S = np.ascontiguousarray(est.support_vectors_, dtype=np.float64)
        self.S_sq = (self.S ** 2).sum(axis=1)
        self.gamma = float(est._gamma)
        n_classes = len(est.classes_)
        counts = est.n_support_
        starts = np.concatenate([[0], np.cumsum(counts)])
        dual = np.asarray(est.dual_coef_, dtype=np.float64)
        pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
        C = np.zeros((self.S.shape[0], len(pairs)))
        # libsvm layout: for pair (i, j) the coefficients of class i's SVs sit in row j-1,
        # those of class j's SVs in row i.
        for p, (i, j) in enumerate(pairs):
            C[starts[i]:starts[i + 1], p] = dual[j - 1, starts[i]:starts[i + 1]]
            C[starts[j]:starts[j + 1], p] = dual[i, starts[j]:starts[j + 1]]
        self.C = C
        self.b = np.asarray(est.intercept_, dtype=np.float64)
        self.binary = n_classes == 2
        self.win_i = np.zeros((len(pairs), n_classes))
        self.win_j = np.zeros((len(pairs), n_classes))
        for p, (i, j) in enumerate(pairs):
            self.win_i[p, i] = 1
            self.win_j[p, j] = 1

    def predict(self, Z: np.ndarray) -> np.ndarray:
        d2 = (Z ** 2).sum(axis=1)[:, None] + self.S_sq - 2.0 * (Z @ self.S.T)
        np.maximum(d2, 0.0, out=d2)
        K = np.exp(-self.gamma * d2)
        dec = K @ self.C + self.b
        if self.binary:
            # sklearn flips the sign of the binary coefficients: dec >= 0 is classes_[1]
            return (dec[:, 0] >= 0).astype(np.intp)
        pos = dec > 0
        votes = pos @ self.win_i + (~pos) @ self.win_j
        return votes.argmax(axis=1)


class _Knn(FastMember):
    def __init__(self, est: BaseEstimator) -> None:
        if est.effective_metric_ != "euclidean":
            raise ValueError("only euclidean KNN is compiled")
        self.T = np.ascontiguousarray(est._fit_X, dtype=np.float64)
        self.T_sq = (self.T ** 2).sum(axis=1)
        self.labels = np.asarray(est._y, dtype=np.intp)
        self.k = int(est.n_neighbors)
        self.distance = est.weights == "distance"
        if not (est.weights in ("uniform", "distance")):
            raise ValueError("only uniform or distance KNN weights are compiled")
        self.n_classes = len(est.classes_)

    def predict(self, Z: np.ndarray) -> np.ndarray:
        d2 = (Z ** 2).sum(axis=1)[:, None] + self.T_sq - 2.0 * (Z @ self.T.T)
        k = self.k
        idx = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else np.argsort(d2, axis=1)
        lab = self.labels[idx]
        onehot = lab[..., None] == np.arange(self.n_classes)
        if self.distance:
            dist = np.sqrt(np.maximum(np.take_along_axis(d2, idx, axis=1), 0.0))
            with np.errstate(divide="ignore"):
                w = 1.0 / dist
            exact = np.isinf(w)
            rows = exact.any(axis=1)
            w[rows] = exact[rows]  # sklearn: exact matches get weight 1, the others 0
            votes = (onehot * w[..., None]).sum(axis=1)
        else:
            votes = onehot.sum(axis=1)
        return votes.argmax(axis=1)


class _Trees(FastMember):
    """Array-flattened tree ensemble (random forest or XGBoost)."""

    def __init__(self, trees: list[dict[str, np.ndarray]], n_classes: int, kind: str,
                 tree_class: np.ndarray | None = None, offset: np.ndarray | None = None) -> None:
        feat, thr, left, values, roots = [], [], [], [], []
        base, depth = 0, 0
        for t in trees:
            f, th, lc, v, dmax = _reorder(t)
            feat.append(f), thr.append(th), left.append(lc + base), values.append(v)
            roots.append(base)
            base += len(f)
            depth = max(depth, dmax)
        self.feat = np.concatenate(feat).astype(np.intp)
        self.thr = np.concatenate(thr).astype(np.float32)
        self.left = np.concatenate(left).astype(np.intp)
        self.roots = np.asarray(roots, dtype=np.intp)
        self.depth = depth
        self.kind = kind
        self.n_classes = n_classes
        if kind == "forest":
            self.values = np.concatenate(values)  # (nodes, K)
        else:
            self.leaf = np.concatenate(values)[:, 0]  # (nodes,)
            self.onehot = np.zeros((len(trees), max(n_classes if n_classes > 2 else 1, 1)))
            self.onehot[np.arange(len(trees)), tree_class] = 1.0
            self.tree_class = tree_class
            self.offset = np.zeros(self.onehot.shape[1]) if offset is None else offset

    def leaves(self, Z: np.ndarray) -> np.ndarray:
        X = Z.astype(np.float32)
        if X.shape[0] == 1:
            x = X[0]
            node = self.roots
            for _ in range(self.depth):
                node = self.left[node] + (x[self.feat[node]] > self.thr[node])
            return node[None]
        rows = np.arange(X.shape[0])[:, None]
        node = np.broadcast_to(self.roots, (X.shape[0], len(self.roots)))
        for _ in range(self.depth):
            node = self.left[node] + (X[rows, self.feat[node]] > self.thr[node])
        return node

    def scores(self, Z: np.ndarray) -> np.ndarray:
        node = self.leaves(Z)
        if self.kind == "forest":
            return self.values[node].sum(axis=1)
        return self.leaf[node] @ self.onehot + self.offset

    def predict(self, Z: np.ndarray) -> np.ndarray:
        s = self.scores(Z)
        if self.kind == "boost" and self.n_classes == 2:
            return (s[:, 0] > 0).astype(np.intp)
        return s.argmax(axis=1)


def _floor32(t: np.ndarray) -> np.ndarray:
    """Largest float32 <= t (float64), so that ``x32 > floor32(t)`` iff ``x32 > t``."""
    t32 = t.astype(np.float32)
    up = t32.astype(np.float64) > t
    t32[up] = np.nextafter(t32[up], -_INF32)
    return t32


def _reorder(t: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Renumber one tree breadth-first so right child == left child + 1; leaves loop to self.

    Input keys: ``left``, ``right`` (-1 at leaves), ``feat``, ``thr`` (float32, ``x > thr`` goes
    right), ``value`` (nodes, m). Returns arrays in the new order and the tree's depth.
    """
    left, right = t["left"], t["right"]
    order, depth_of = [0], {0: 0}
    new_id = {0: 0}
    i = 0
    while i < len(order):
        n = order[i]
        if left[n] >= 0:
            for c in (left[n], right[n]):
                new_id[c] = len(order)
                order.append(c)
                depth_of[c] = depth_of[n] + 1
        i += 1
    order_a = np.asarray(order)
    m = len(order)
    feat = np.zeros(m, dtype=np.intp)
    thr = np.full(m, _INF32, dtype=np.float32)
    lc = np.arange(m, dtype=np.intp)
    for k, n in enumerate(order):
        if left[n] >= 0:
            feat[k] = t["feat"][n]
            thr[k] = t["thr"][n]
            lc[k] = new_id[left[n]]
    return feat, thr, lc, np.asarray(t["value"])[order_a], max(depth_of.values())


def _compile_forest(est: BaseEstimator) -> _Trees:
    trees = []
    for tree in est.estimators_:
        tr = tree.tree_
        val = tr.value[:, 0, :].astype(np.float64)
        val = val / np.maximum(val.sum(axis=1, keepdims=True), 1e-300)
        trees.append({"left": tr.children_left, "right": tr.children_right, "feat": tr.feature,
                      "thr": _floor32(tr.threshold), "value": val / len(est.estimators_)})
    return _Trees(trees, len(est.classes_), "forest")


def _compile_xgboost(est: BaseEstimator, Z_probe: np.ndarray) -> _Trees:
    booster = est.get_booster()
    model = json.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"]["model"]
    trees = []
    for t in model["trees"]:
        left = np.asarray(t["left_children"], dtype=np.intp)
        cond = np.asarray(t["split_conditions"], dtype=np.float32)
        # x < cond goes left  <=>  x > prev_float32(cond) goes right
        thr = np.nextafter(cond, -_INF32)
        trees.append({"left": left, "right": np.asarray(t["right_children"], dtype=np.intp),
                      "feat": np.asarray(t["split_indices"], dtype=np.intp), "thr": thr,
                      "value": cond.astype(np.float64)[:, None]})
    tree_class = np.asarray(model["tree_info"], dtype=np.intp)
    n_classes = len(est.classes_)
    fast = _Trees(trees, n_classes, "boost", tree_class=tree_class)
    # The base margin (base_score, possibly per class) is measured rather than parsed, since
    # its JSON encoding changed across XGBoost versions.
    import xgboost

    probe = Z_probe[: min(len(Z_probe), 64)]
    margin = booster.predict(xgboost.DMatrix(probe.astype(np.float32)), output_margin=True)
    margin = margin.reshape(len(probe), -1)
    fast.offset = np.median(margin - fast.scores(probe), axis=0)
    return fast


def compile_member(family: str, est: BaseEstimator, reduced: bool,
                   Z_probe: np.ndarray | None = None) -> FastMember:
    """Compile a fitted estimator of ``family``; XGBoost needs a few feature rows as ``Z_probe``."""
    if family in ("ridge", "svm_linear"):
        m: FastMember = _Linear(est)
    elif family == "mlp":
        m = _Mlp(est)
    elif family == "svm_rbf":
        m = _RbfSvm(est)
    elif family == "knn":
        m = _Knn(est)
    elif family == "random_forest":
        m = _compile_forest(est)
    elif family == "xgboost":
        if Z_probe is None:
            raise ValueError("compiling xgboost needs Z_probe rows")
        m = _compile_xgboost(est, Z_probe)
    else:
        raise ValueError(f"unknown family {family!r}")
    m.family = family
    m.reduced = reduced
    return m


class FastEnsemble:
    """The served predictor: front end, optional shared PCA, compiled members, weighted vote.

    ``predict(X)`` takes raw samples (what the front end takes) and returns class indices;
    ``predict_features(Z)`` skips the front end; ``vote(Z)`` also returns the vote share.
    """

    def __init__(self, front_end: FrontEnd | None, members: list[FastMember], weights: list[float],
                 classes: list[str], reducer: Reducer | None = None) -> None:
        if not members or len(members) != len(weights):
            raise ValueError("an ensemble needs members and one weight per member")
        if any(m.reduced for m in members) and reducer is None:
            raise ValueError("a reduced member needs the reducer")
        self.front_end = front_end
        self.members = members
        self.weights = np.asarray(weights, dtype=np.float64)
        self.classes = list(classes)
        self.reducer = reducer
        self._total = float(self.weights.sum())
        self._any_reduced = any(m.reduced for m in members)

    def vote(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, vote share of the winner) for front-end features ``Z``."""
        Zr = self.reducer(Z) if self._any_reduced else None
        if len(self.members) == 1:
            pred = self.members[0].predict(Zr if self.members[0].reduced else Z)
            return pred, np.ones(len(pred))
        if Z.shape[0] == 1:  # the served case: one bincount instead of per-member scatter
            preds = np.concatenate([m.predict(Zr if m.reduced else Z) for m in self.members])
            score1 = np.bincount(preds, self.weights, minlength=len(self.classes))
            best = score1.argmax()
            return np.array([best]), np.array([score1[best] / self._total])
        score = np.zeros((Z.shape[0], len(self.classes)))
        rows = np.arange(Z.shape[0])
        for m, w in zip(self.members, self.weights):
            score[rows, m.predict(Zr if m.reduced else Z)] += w
        pred = score.argmax(axis=1)
        return pred, score[rows, pred] / self._total

    def predict_features(self, Z: np.ndarray) -> np.ndarray:
        """Class indices for front-end features ``Z``."""
        return self.vote(Z)[0]

    def predict(self, X: Any) -> np.ndarray:
        """Class indices for raw samples."""
        if self.front_end is None:
            raise ValueError("this ensemble has no front end; use predict_features")
        return self.vote(self.front_end.transform(X))[0]

    def predict_labels(self, X: Any) -> list[str]:
        """Class names for raw samples."""
        return [self.classes[i] for i in self.predict(X)]
