"""Fast predictor: a whole weighted-vote ensemble evaluated as a few numpy array operations.

Measured on this 2-core machine (other sessions' tests and benchmarks running alongside),
7-member digits ensemble, ``python -m bench learn`` (single row p50 through the front end /
batched rows per second):

=========================================================  ==========  ===========
predictor                                                  one row     batched
=========================================================  ==========  ===========
naive: each member's ``.predict``, then the vote           3.2-7.4 ms  --
numpy, first version (per-member loops, float64 KNN)       189 us      9,600/s
numpy, this version, load ~2 (full run, 2 fit workers)     108 us      37,300/s
numpy, this version, load ~5 (the committed learn.json)    95 us       18,300/s
one merged onnxruntime graph (skl2onnx with KNN ``cdist``, 263 us      9,700/s *
onnxmltools for XGBoost, vote inside, 1 thread)            (numpy 115) (numpy 12,500) *
=========================================================  ==========  ===========

The batched figure follows the machine's load (other processes on both cores); quick runs
on a calmer machine gave 32,000-37,000 rows/s.

(*) measured side by side in one process while a full ``bench learn`` was fitting MNIST in the
background (``/tmp`` install of onnxruntime 1.32, skl2onnx 1.20, onnxmltools 1.16; not kept).
The issue's earlier measurements (idle machine): onnxruntime 83 us / 29,000 rows/s, numpy
52 us / 45,000 rows/s. numpy wins both ways here, needs no converters (skl2onnx's SVC path
warns under scikit-learn 1.9, XGBoost needs onnxmltools and a float32-exact threshold match)
and no extra runtime, so we keep it.

Where the single-row time goes (digits, rows cycled as served, us, before the last step
below): front end 6, one fused float64 product of 2,060 x 64 (KNN 1,257 training rows, RBF 527
support vectors, MLP layer 1, ridge, linear SVM: 1 MB, so it streams from L2/L3) 27, finishing
those five members 38 (KNN argpartition, RBF exp and its 527 x 45 one-vs-one product, MLP
layer 2), the tree walk of random forest (100 trees, depth 9) and XGBoost (300 trees, depth 4)
with scoring 40. Last step: KNN leaves the fused product for its own float32 product (half
the bytes; the float32 k nearest are used when the error bound proves them): 6 us less. What
helped, in order: cutting the batched inputs into blocks that stay in cache (KNN batched
7,900 -> 93,000 rows/s, XGBoost 5,200 -> 127,000), walking only the trees still deeper than
the current level, walking forest and boosted trees together, a table of distinct split
conditions, one fused BLAS product for all "matrix first" members, plain Python for the
seven-way vote, and shallower/smaller tree searches (``families.py``). What did not:
``np.take(..., out=)`` (2.5x slower than indexing on 100-500 entries), evaluating every node's
condition then pointer-jumping (40 us of gathers for the forest's 31,000 nodes), a float32
KNN screen with float64 refinement for a member alone in a tight loop (fewer bytes, more
calls: 3 us slower there; it wins in batches, where sgemm halves the cost, and in the
ensemble's row path, where the model is no longer in cache). The 100 us target is met only
when the machine is quiet: what is left is memory traffic (about 1.2 MB of model per row).

How each family is evaluated (``Z`` are the front end's features):

- ridge, svm_linear: ``argmax(Z @ W + b)`` (binary: ``> 0``).
- svm_rbf: ``exp(2g s.z - g|s|^2) * exp(-g|z|^2)`` against the support vectors (float64: the
  one-vs-one decisions are signs), then libsvm's one-vs-one vote with ties to the lowest class
  index, as ``SVC.predict`` does.
- mlp: the ReLU forward pass, ``argmax`` of the output logits.
- knn: one member alone: scikit-learn's own float64 ``|t|^2 - 2 t.z`` and ``argpartition``;
  in the ensemble's row path a float32 product whose k nearest are kept when the float32
  error bound proves them (else the float64 path); batches: float32 sgemm picks
  ``k + max(8, k)`` candidates, their distances are recomputed exactly in float64, and a row
  whose float32 error bound cannot prove the k nearest is recomputed in full. Uniform or
  inverse-distance vote. Neighbours at exactly equal distance may be chosen differently from
  scikit-learn: the only permitted disagreement.
- random_forest, xgboost: every tree flattened into shared arrays with the right child stored
  next to the left one, so one level of all trees is ``node = left[node] + (x[feat[node]] >
  thr[node])``; leaves loop onto themselves; trees sorted deepest first so a level steps only a
  prefix. Inputs are cast to float32 exactly as scikit-learn and XGBoost do, and thresholds are
  rounded to the float32 that gives the same comparison (scikit-learn: ``x <= t`` goes left,
  XGBoost: ``x < t``), so no row flips at a threshold.

``FastEnsemble.vote`` takes one row through ``vote_one`` (fused product, fused tree walk) and
larger inputs member by member in cache-sized blocks. Single-row work should not start BLAS
thread pools: call :func:`single_thread_blas` once in the serving process (threadpoolctl).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
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

    def one(self, z: np.ndarray) -> np.ndarray:
        """One 1-D row (the served case)."""
        if not hasattr(self, "_ct"):
            self._ct = np.ascontiguousarray(self.components.T)
            self._shift = self.mean @ self._ct
        out = z @ self._ct
        out -= self._shift
        return out

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])


class FastMember(ABC):
    """One compiled member: ``predict(Z)`` -> class indices 0..K-1 (same labels as sklearn).

    Subclasses implement ``predict_one(z)`` for one 1-D row (the served case: a handful of
    numpy calls on precomputed arrays, no temporaries beyond a few vectors) and
    ``_predict_block(Z)`` for a block of rows; ``predict`` cuts large inputs into blocks of
    ``_block`` rows so that every temporary stays in cache.
    """

    family: str
    reduced: bool
    _block = 4096

    def predict(self, Z: np.ndarray) -> np.ndarray:
        Z = np.asarray(Z, dtype=np.float64)
        n = Z.shape[0]
        if n == 1:
            return np.array([self.predict_one(Z[0])], dtype=np.intp)
        if n <= self._block:
            return self._predict_block(Z)
        out = np.empty(n, dtype=np.intp)
        for s in range(0, n, self._block):
            out[s:s + self._block] = self._predict_block(Z[s:s + self._block])
        return out

    def predict_one(self, z: np.ndarray) -> int:
        return int(self._predict_block(z[None])[0])

    @abstractmethod
    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        """Each concrete class supplies this."""


class _Linear(FastMember):
    def __init__(self, est: BaseEstimator) -> None:
        coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
        self.W = np.ascontiguousarray(coef.T)
        self.b = np.asarray(est.intercept_, dtype=np.float64).ravel()
        self.binary = coef.shape[0] == 1

    def predict_one(self, z: np.ndarray) -> int:
        return self.finish_one(z @ self.W, z, 0.0)

    def first_rows(self) -> np.ndarray:
        """The matrix whose product with the row starts this member (see ``_FusedDense``)."""
        return self.W.T

    def finish_one(self, s: np.ndarray, z: np.ndarray, zz: float) -> int:
        s += self.b
        return int(s[0] > 0) if self.binary else int(s.argmax())

    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        s = Z @ self.W
        s += self.b
        return (s[:, 0] > 0).astype(np.intp) if self.binary else s.argmax(axis=1)


class _Mlp(FastMember):
    _block = 1024

    def __init__(self, est: BaseEstimator) -> None:
        if est.activation != "relu":
            raise ValueError("only ReLU MLPs are compiled")
        self.layers = [(np.ascontiguousarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64))
                       for W, b in zip(est.coefs_, est.intercepts_)]
        self.binary = est.n_outputs_ == 1

    def _forward(self, h: np.ndarray) -> np.ndarray:
        for W, b in self.layers[:-1]:
            h = h @ W
            h += b
            np.maximum(h, 0.0, out=h)
        W, b = self.layers[-1]
        s = h @ W
        s += b
        return s

    def predict_one(self, z: np.ndarray) -> int:
        s = self._forward(z)
        return int(s[0] > 0) if self.binary else int(s.argmax())

    def first_rows(self) -> np.ndarray:
        return self.layers[0][0].T

    def finish_one(self, h: np.ndarray, z: np.ndarray, zz: float) -> int:
        h += self.layers[0][1]
        np.maximum(h, 0.0, out=h)
        for W, b in self.layers[1:-1]:
            h = h @ W
            h += b
            np.maximum(h, 0.0, out=h)
        W, b = self.layers[-1]
        s = h @ W
        s += b
        return int(s[0] > 0) if self.binary else int(s.argmax())

    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        s = self._forward(Z)
        return (s[:, 0] > 0).astype(np.intp) if self.binary else s.argmax(axis=1)


class _RbfSvm(FastMember):
    """float64 throughout: the one-vs-one decisions are signs, and float32 kernels could flip
    a decision near zero (a disagreement that is not an exact tie)."""

    _block = 256

    def __init__(self, est: BaseEstimator) -> None:
        if est.kernel != "rbf":
            raise ValueError("only RBF SVMs are compiled")
        S = np.ascontiguousarray(est.support_vectors_, dtype=np.float64)
        self.gamma = float(est._gamma)
        # exp(-g |z - s|^2) = exp(2g s.z - g|s|^2 - g|z|^2): one product, two subtractions
        self.S2g = np.ascontiguousarray(2.0 * self.gamma * S)
        self.gS_sq = self.gamma * (S ** 2).sum(axis=1)
        n_classes = len(est.classes_)
        counts = est.n_support_
        starts = np.concatenate([[0], np.cumsum(counts)])
        dual = np.asarray(est.dual_coef_, dtype=np.float64)
        pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
        C = np.zeros((S.shape[0], len(pairs)))
        # libsvm layout: for pair (i, j) the coefficients of class i's SVs sit in row j-1,
        # those of class j's SVs in row i.
        for p, (i, j) in enumerate(pairs):
            C[starts[i]:starts[i + 1], p] = dual[j - 1, starts[i]:starts[i + 1]]
            C[starts[j]:starts[j + 1], p] = dual[i, starts[j]:starts[j + 1]]
        self.C = np.ascontiguousarray(C)
        self.b = np.asarray(est.intercept_, dtype=np.float64)
        self.binary = n_classes == 2
        self.n_classes = n_classes
        self.pair_i = np.array([i for i, _ in pairs], dtype=np.intp)
        self.pair_j = np.array([j for _, j in pairs], dtype=np.intp)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "S2g" not in state:  # pickled by the first version (S, S_sq, win_i, win_j)
            S, g = state.pop("S"), state["gamma"]
            state["S2g"], state["gS_sq"] = 2.0 * g * S, g * state.pop("S_sq")
            win_i, win_j = state.pop("win_i"), state.pop("win_j")
            state["pair_i"], state["pair_j"] = win_i.argmax(axis=1), win_j.argmax(axis=1)
            state["n_classes"] = win_i.shape[1]
        self.__dict__.update(state)

    def _kernel(self, Z: np.ndarray) -> np.ndarray:
        a = Z @ self.S2g.T if Z.ndim == 2 else self.S2g @ Z
        a -= self.gS_sq
        zz = self.gamma * (np.einsum("ij,ij->i", Z, Z)[:, None] if Z.ndim == 2 else float(Z @ Z))
        a -= zz
        np.minimum(a, 0.0, out=a)  # |z - s|^2 >= 0
        return np.exp(a, out=a)

    def predict_one(self, z: np.ndarray) -> int:
        return self.finish_one(self.S2g @ z, z, float(z @ z))

    def first_rows(self) -> np.ndarray:
        return self.S2g

    def finish_one(self, a: np.ndarray, z: np.ndarray, zz: float) -> int:
        gzz = self.gamma * zz
        if gzz < 300.0:
            # exp(2g s.z - g|s|^2) @ C, scaled by exp(-g|z|^2) afterwards: two calls fewer
            a -= self.gS_sq
            np.exp(a, out=a)
            dec = a @ self.C
            dec *= math.exp(-gzz)
        else:  # far from every support vector: the factored form would overflow
            dec = self._kernel(z) @ self.C
        dec += self.b
        if self.binary:
            # sklearn flips the sign of the binary coefficients: dec >= 0 is classes_[1]
            return int(dec[0] >= 0)
        winners = np.where(dec > 0, self.pair_i, self.pair_j)
        return int(np.bincount(winners, minlength=self.n_classes).argmax())

    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        dec = self._kernel(Z) @ self.C
        dec += self.b
        if self.binary:
            return (dec[:, 0] >= 0).astype(np.intp)
        winners = np.where(dec > 0, self.pair_i, self.pair_j)  # (n, pairs)
        K = self.n_classes
        flat = winners + (np.arange(len(Z)) * K)[:, None]
        votes = np.bincount(flat.ravel(), minlength=len(Z) * K).reshape(len(Z), K)
        return votes.argmax(axis=1)


class _Knn(FastMember):
    """Two passes: float32 squared distances (BLAS sgemm, half the memory traffic) pick
    ``k + extra`` candidates, whose distances are then recomputed exactly in float64. A row is
    recomputed over all training rows in float64 when the float32 error bound cannot prove that
    the exact k nearest are among the candidates (never seen on the bench sets)."""

    _block = 128

    def __init__(self, est: BaseEstimator) -> None:
        if est.effective_metric_ != "euclidean":
            raise ValueError("only euclidean KNN is compiled")
        if est.weights not in ("uniform", "distance"):
            raise ValueError("only uniform or distance KNN weights are compiled")
        T = np.asarray(est._fit_X, dtype=np.float64)
        # no temporaries the size of the training set (MNIST: 376 MB each, 1 s of page faults)
        T_sq = np.einsum("ij,ij->i", T, T)
        self.T_sq = T_sq
        self.Tm2 = np.multiply(T, -2.0, order="C")  # exact: a power of two
        self.Tm2_32 = self.Tm2.astype(np.float32)
        self.T_sq32 = T_sq.astype(np.float32)
        self.T_sq_max = float(T_sq.max()) if len(T_sq) else 0.0
        self.labels = np.asarray(est._y, dtype=np.intp)
        self.k = int(est.n_neighbors)
        self.distance = est.weights == "distance"
        self.n_classes = len(est.classes_)
        n, d = self.Tm2.shape
        self.m = self.k + max(8, self.k)  # candidates kept by the float32 pass
        self.screen = n > self.m + 1
        # |float32 dd - exact dd| <= (d + 2) eps32 (|t|^2 + 2|t.z|)
        #                          <= 2 (d + 2) eps32 (|t|^2 + |z|^2)
        self.err = 2.0 * (d + 2) * float(np.finfo(np.float32).eps)
        self._block = max(8, min(256, (1 << 17) // max(1, self.m * d)))

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "Tm2" not in state:  # pickled by the first version: rebuild from the training rows
            T = state.pop("T")
            state["Tm2"] = np.multiply(T, -2.0, order="C")
            state["Tm2_32"] = state["Tm2"].astype(np.float32)
            state["T_sq32"] = state["T_sq"].astype(np.float32)
            state["T_sq_max"] = float(state["T_sq"].max()) if len(T) else 0.0
            k, (n, d) = state["k"], T.shape
            state["m"] = k + max(8, k)
            state["screen"] = n > state["m"] + 1
            state["err"] = 2.0 * (d + 2) * float(np.finfo(np.float32).eps)
            state["_block"] = max(8, min(256, (1 << 17) // max(1, state["m"] * d)))
        self.__dict__.update(state)

    def _vote(self, lab: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Votes (rows, K) from the k nearest labels and squared distances (rows, k)."""
        n, K = lab.shape[0], self.n_classes
        flat = (lab + (np.arange(n) * K)[:, None]).ravel()
        if not self.distance:
            return np.bincount(flat, minlength=n * K).reshape(n, K)
        dist = np.sqrt(d2)
        with np.errstate(divide="ignore"):
            w = 1.0 / dist
        exact = dist == 0
        rows = exact.any(axis=1)
        w[rows] = exact[rows]  # sklearn: exact matches get weight 1, the others 0
        return np.bincount(flat, w.ravel(), minlength=n * K).reshape(n, K)

    def _exact(self, Z: np.ndarray) -> np.ndarray:
        d2 = np.einsum("ij,ij->i", Z, Z)[:, None] + self.T_sq + Z @ self.Tm2.T
        np.maximum(d2, 0.0, out=d2)
        k = self.k
        if k < d2.shape[1]:
            idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
        else:
            idx = np.argsort(d2, axis=1)
        return self._vote(self.labels[idx], np.take_along_axis(d2, idx, axis=1)).argmax(axis=1)

    def predict_one(self, z: np.ndarray) -> int:
        return self.finish_one(self.Tm2 @ z, z, float(z @ z))

    def first_rows(self) -> np.ndarray:
        return self.Tm2

    def predict_one32(self, z: np.ndarray, x32: np.ndarray, zz: float) -> int:
        """One row, float32 screen: half the bytes of the float64 product (the ensemble's
        single-row path, where the model no longer sits in L1/L2: 6 us less on digits). The
        float32 k nearest are taken when the error bound proves them, else the float64 path."""
        if not self.screen:
            return self.finish_one(self.Tm2 @ z, z, zz)
        dd = self.Tm2_32 @ x32
        dd += self.T_sq32
        k = self.k
        part = np.argpartition(dd, k)
        top = part[:k]
        if dd[part[k]] - dd[top].max() <= 2.0 * self.err * (self.T_sq_max + zz):
            return self.finish_one(self.Tm2 @ z, z, zz)
        lab = self.labels[top]
        if not self.distance:
            return int(np.bincount(lab, minlength=self.n_classes).argmax())
        diff = self.Tm2[top] * -0.5  # the training rows, exactly
        diff -= z
        d2k = np.einsum("ij,ij->i", diff, diff)
        if d2k.min() > 0.0:
            return int(np.bincount(lab, 1.0 / np.sqrt(d2k), minlength=self.n_classes).argmax())
        return int(self._vote(lab[None], d2k[None])[0].argmax())

    def finish_one(self, dd: np.ndarray, z: np.ndarray, zz: float) -> int:
        # One row: float64 |t|^2 - 2 t.z (scikit-learn's own formula, so no refinement pass);
        # a standalone member in a tight loop is faster this way than screened (fewer calls).
        dd += self.T_sq
        k = self.k
        top = np.argpartition(dd, k - 1)[:k] if k < len(dd) else np.arange(len(dd))
        lab = self.labels[top]
        if not self.distance:
            return int(np.bincount(lab, minlength=self.n_classes).argmax())
        d2k = dd[top]
        d2k += zz
        if d2k.min() > 0.0:
            return int(np.bincount(lab, 1.0 / np.sqrt(d2k), minlength=self.n_classes).argmax())
        return int(self._vote(lab[None], np.maximum(d2k, 0.0)[None])[0].argmax())

    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        if not self.screen:
            return self._exact(Z)
        dd = Z.astype(np.float32) @ self.Tm2_32.T
        dd += self.T_sq32
        m, k = self.m, self.k
        part = np.argpartition(dd, m, axis=1)
        cand = part[:, :m]
        bound = np.take_along_axis(dd, part[:, m:m + 1], axis=1)[:, 0]
        diff = self.Tm2[cand] * -0.5  # the training rows, exactly
        diff -= Z[:, None, :]
        d2 = np.einsum("ijk,ijk->ij", diff, diff)
        o = np.argpartition(d2, k - 1, axis=1)[:, :k]
        d2k = np.take_along_axis(d2, o, axis=1)
        zz = np.einsum("ij,ij->i", Z, Z)
        pred = self._vote(self.labels[np.take_along_axis(cand, o, axis=1)], d2k).argmax(axis=1)
        unsure = d2k.max(axis=1) - zz + self.err * (self.T_sq_max + zz) >= bound
        if unsure.any():
            pred[unsure] = self._exact(Z[unsure])
        return pred


class _Trees(FastMember):
    """Array-flattened tree ensemble (random forest or XGBoost), walked level by level.

    Trees are sorted by depth (deepest first), so level ``L`` steps only the prefix of trees
    that are deeper than ``L``; a leaf loops onto itself. Batches are walked as a (trees, rows)
    node array, one gather per array per level.
    """

    _block = 256

    def __init__(self, trees: list[dict[str, np.ndarray]], n_classes: int, kind: str,
                 tree_class: np.ndarray | None = None, offset: np.ndarray | None = None) -> None:
        feat, thr, left, values, roots, depths = [], [], [], [], [], []
        base = 0
        for t in trees:
            f, th, lc, v, dmax = _reorder(t)
            feat.append(f), thr.append(th), left.append(lc + base), values.append(v)
            roots.append(base)
            depths.append(dmax)
            base += len(f)
        order = np.argsort(-np.asarray(depths), kind="stable")
        depth_sorted = np.asarray(depths)[order]
        self.feat = np.concatenate(feat).astype(np.intp)
        self.thr = np.concatenate(thr).astype(np.float32)
        self.left = np.concatenate(left).astype(np.intp)
        self.roots = np.asarray(roots, dtype=np.intp)[order]
        self.depth = int(depth_sorted[0]) if len(depths) else 0
        # active[L]: number of trees deeper than L (a prefix, thanks to the sort)
        self.active = [int((depth_sorted > level).sum()) for level in range(self.depth)]
        self.kind = kind
        self.n_classes = n_classes
        if kind == "forest":
            self.values = np.ascontiguousarray(np.concatenate(values))  # (nodes, K)
            self._ones = np.ones(len(trees))
        else:
            self.leaf = np.concatenate(values)[:, 0]  # (nodes,)
            tree_class = np.asarray(tree_class, dtype=np.intp)[order]
            width = n_classes if n_classes > 2 else 1
            self.onehot = np.zeros((len(trees), width))
            self.onehot[np.arange(len(trees)), tree_class] = 1.0
            self.tree_class = tree_class
            self.offset = np.zeros(width) if offset is None else offset

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "active" not in state:  # first version: unsorted trees, every level steps all
            state["active"] = [len(state["roots"])] * int(state["depth"])
            if state["kind"] == "forest":
                state["_ones"] = np.ones(len(state["roots"]))
        self.__dict__.update(state)

    def leaves_one(self, x32: np.ndarray) -> np.ndarray:
        """Leaf node of every tree for one float32 row."""
        node = self.roots.copy()
        feat, thr, left = self.feat, self.thr, self.left
        for a in self.active:
            n = node[:a]
            n[:] = left[n] + (x32[feat[n]] > thr[n])
        return node

    def leaves(self, Z: np.ndarray) -> np.ndarray:
        """(trees, rows) leaf nodes."""
        X = np.ascontiguousarray(Z, dtype=np.float32)
        rows, d = X.shape
        flat = X.ravel()
        rowoff = np.arange(rows, dtype=np.intp) * d
        node = np.repeat(self.roots[:, None], rows, axis=1)
        feat, thr, left = self.feat, self.thr, self.left
        for a in self.active:
            n = node[:a]
            f = feat.take(n)
            f += rowoff
            np.add(left.take(n), flat.take(f) > thr.take(n), out=n)
        return node

    def scores_one(self, z: np.ndarray) -> np.ndarray:
        node = self.leaves_one(z.astype(np.float32))
        if self.kind == "forest":
            return self.values.take(node, axis=0).sum(axis=0)
        s = np.bincount(self.tree_class, self.leaf.take(node), minlength=len(self.offset))
        s += self.offset
        return s

    def scores(self, Z: np.ndarray) -> np.ndarray:
        if Z.shape[0] == 1:
            return self.scores_one(Z[0])[None]
        node = self.leaves(Z)
        if self.kind == "forest":
            return self.values.take(node, axis=0).sum(axis=0)
        return self.leaf.take(node).T @ self.onehot + self.offset

    def predict_one(self, z: np.ndarray) -> int:
        return self.predict_leaves_one(self.leaves_one(z.astype(np.float32)))

    def predict_leaves_one(self, node: np.ndarray) -> int:
        """Class index from the leaf node of every tree (one row)."""
        if self.kind == "forest":
            return int((self._ones @ self.values[node]).argmax())
        s = np.bincount(self.tree_class, self.leaf[node], minlength=len(self.offset))
        s += self.offset
        if self.n_classes == 2:
            return int(s[0] > 0)
        return int(s.argmax())

    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        s = self.scores(Z)
        if self.kind == "boost" and self.n_classes == 2:
            return (s[:, 0] > 0).astype(np.intp)
        return s.argmax(axis=1)


class _FusedDense:
    """The first product of every BLAS member (ridge, linear SVM, MLP layer 1, RBF kernel,
    KNN distances) as ONE matrix-vector product for one row; each member finishes on its
    slice. Same bytes read, four calls fewer; ``z.z`` is computed once for RBF and KNN."""

    def __init__(self, members: list[FastMember]) -> None:
        blocks = [np.asarray(m.first_rows(), dtype=np.float64) for m in members]
        self.M = np.ascontiguousarray(np.concatenate(blocks, axis=0))
        edges = np.cumsum([0] + [len(b) for b in blocks])
        self.slices = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        self.members = members

    def predict_one(self, z: np.ndarray, zz: float) -> list[int]:
        p = self.M @ z
        return [m.finish_one(p[s], z, zz) for m, s in zip(self.members, self.slices)]


class _FusedTrees:
    """All tree members of an ensemble walked together for one row.

    One level of every tree of every tree member costs the same handful of numpy calls as one
    level of a single forest (the arrays are a few hundred entries long: call overhead, not
    data, dominates), so the random forest's 12 levels and XGBoost's 4 cost 12 steps, not 16.
    Reduced members read the PCA features, appended after the raw ones.
    """

    def __init__(self, members: list[_Trees], d: int) -> None:
        feats, thrs, lefts, roots, depths, owner = [], [], [], [], [], []
        base = 0
        self.node_base: list[int] = []
        for j, m in enumerate(members):
            feats.append(m.feat + (d if m.reduced else 0))
            thrs.append(m.thr)
            lefts.append(m.left + base)
            roots.append(m.roots + base)
            depths.append(np.array([_tree_depth(m, k) for k in range(len(m.roots))]))
            owner.append(np.full(len(m.roots), j))
            self.node_base.append(base)
            base += len(m.feat)
        self.feat = np.concatenate(feats).astype(np.intp)
        self.thr = np.concatenate(thrs)
        self.left = np.concatenate(lefts)
        depth = np.concatenate(depths)
        order = np.argsort(-depth, kind="stable")
        self.roots = np.concatenate(roots)[order]
        depth = depth[order]
        self.active = [int((depth > level).sum()) for level in range(int(depth.max(initial=0)))]
        own = np.concatenate(owner)[order]
        # Split conditions repeat: trees on small-integer data (digits) use ~1,000 distinct
        # (feature, threshold) pairs across ~17,000 nodes. When there are few, all of them are
        # compared once per row and a level costs 4 numpy calls instead of 6.
        key = (self.feat.astype(np.int64) << 32) | self.thr.view(np.uint32).astype(np.int64)
        uniq, inverse = np.unique(key, return_inverse=True)
        self.use_table = len(uniq) <= 2 * sum(self.active)
        self.cond = inverse.astype(np.intp).ravel()
        self.cond_feat = (uniq >> 32).astype(np.intp)
        self.cond_thr = (uniq & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
        # where (in the walked order) member j's trees are: a slice when contiguous (the usual
        # case: a forest's trees are deeper than boosted ones), else an index array
        self.pos: list[Any] = []
        for j in range(len(members)):
            p = np.flatnonzero(own == j)
            contiguous = len(p) and p[-1] - p[0] + 1 == len(p)
            self.pos.append(slice(int(p[0]), int(p[-1]) + 1) if contiguous else p)
        # per-member lookups by global node id (no "- base" per call)
        self.lookup: list[np.ndarray] = []
        for m, base in zip(members, self.node_base):
            table = m.values if m.kind == "forest" else m.leaf
            if base:
                table = np.concatenate([np.zeros((base,) + table.shape[1:]), table])
            self.lookup.append(table)
        self.members = members

    def predict_one(self, x32: np.ndarray) -> list[int]:
        """Class index per tree member for one float32 row ``x32`` (raw then reduced features)."""
        node = self.roots.copy()
        left = self.left
        if self.use_table:
            cond, true = self.cond, x32[self.cond_feat] > self.cond_thr
            for a in self.active:
                n = node[:a]
                n[:] = left[n] + true[cond[n]]
        else:
            feat, thr = self.feat, self.thr
            for a in self.active:
                n = node[:a]
                n[:] = left[n] + (x32[feat[n]] > thr[n])
        out = []
        for m, pos, table in zip(self.members, self.pos, self.lookup):
            leaf = node[pos]
            if m.kind == "forest":
                out.append(int((m._ones @ table[leaf]).argmax()))
                continue
            s = np.bincount(m.tree_class, table[leaf], minlength=len(m.offset))
            s += m.offset
            out.append(int(s[0] > 0) if m.n_classes == 2 else int(s.argmax()))
        return out


def _tree_depth(m: _Trees, k: int) -> int:
    """Depth of tree ``k`` of ``m`` (trees are sorted deepest first)."""
    return sum(1 for a in m.active if a > k)


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
        self._n_classes = len(self.classes)
        self._plan_one()

    def _plan_one(self) -> None:
        """Precompute the single-row path: tree members walk together (see _FusedTrees)."""
        trees = [i for i, m in enumerate(self.members) if isinstance(m, _Trees)]
        knn32 = [i for i, m in enumerate(self.members) if isinstance(m, _Knn) and m.screen]
        self._knn32 = [(self.members[i], self.members[i].reduced) for i in knn32]
        dense = [i for i, m in enumerate(self.members) if hasattr(m, "first_rows")
                 and not m.reduced and i not in trees and i not in knn32]
        self._dense = _FusedDense([self.members[i] for i in dense]) if len(dense) >= 2 else None
        if self._dense is None:
            dense = []
        self._others = [(i, m) for i, m in enumerate(self.members)
                        if i not in trees and i not in dense and i not in knn32]
        self._tree_idx = trees
        self._fused = None
        self._fused_reduced = any(self.members[i].reduced for i in trees)
        self._fused_raw = any(not self.members[i].reduced for i in trees)
        if trees:
            d = 0
            if self._fused_reduced:
                d = int(self.reducer.mean.shape[0]) if self._fused_raw else 0
            self._fused = _FusedTrees([self.members[i] for i in trees], d)
        # weights in the order vote_one produces predictions: others, KNN, fused dense, trees
        order = [i for i, _ in self._others] + knn32 + dense + trees
        self._w_one_list = [float(w) for w in self.weights[order]]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for k in ("_fused", "_dense", "_knn32", "_others", "_tree_idx", "_fused_reduced",
                  "_fused_raw", "_w_one_list"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._plan_one()

    def vote(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, vote share of the winner) for front-end features ``Z``."""
        Z = np.asarray(Z, dtype=np.float64)
        if Z.ndim != 2:
            raise ValueError(f"expected (rows, features), got shape {Z.shape}")
        if Z.shape[0] == 1:
            best, share = self.vote_one(Z[0])
            return np.array([best], dtype=np.intp), np.array([share])
        Zr = self.reducer(Z) if self._any_reduced else None
        if len(self.members) == 1:
            pred = self.members[0].predict(Zr if self.members[0].reduced else Z)
            return pred, np.ones(len(pred))
        n, K = Z.shape[0], len(self.classes)
        score = np.zeros(n * K)
        base = np.arange(n, dtype=np.intp) * K
        for m, w in zip(self.members, self.weights):
            p = m.predict(Zr if m.reduced else Z)
            p += base
            score[p] += w  # one member's winners are distinct cells: no lost updates
        score = score.reshape(n, K)
        pred = score.argmax(axis=1)
        return pred, score[np.arange(n), pred] / self._total

    def vote_one(self, z: np.ndarray) -> tuple[int, float]:
        """(class index, vote share) for one 1-D row of front-end features: the served case."""
        zr = self.reducer.one(z) if self._any_reduced else None
        preds = [m.predict_one(zr if m.reduced else z) for _, m in self._others]
        zz = float(z @ z)
        z32 = z.astype(np.float32) if self._knn32 or self._fused is not None else None
        if self._knn32:
            zrr = float(zr @ zr) if self._any_reduced else 0.0
            zr32 = zr.astype(np.float32) if self._any_reduced else None
            preds += [m.predict_one32(zr, zr32, zrr) if red else m.predict_one32(z, z32, zz)
                      for m, red in self._knn32]
        if self._dense is not None:
            preds += self._dense.predict_one(z, zz)
        if self._fused is not None:
            if self._fused_reduced:
                x32 = np.concatenate([z, zr]).astype(np.float32) if self._fused_raw \
                    else zr.astype(np.float32)
            else:
                x32 = z32
            preds += self._fused.predict_one(x32)
        if len(preds) == 1:
            return preds[0], 1.0
        # seven additions: plain Python beats a numpy call here
        score = [0.0] * self._n_classes
        for p, w in zip(preds, self._w_one_list):
            score[p] += w
        best = max(range(self._n_classes), key=score.__getitem__)  # first maximum: lowest class
        return best, score[best] / self._total

    def predict_features(self, Z: np.ndarray) -> np.ndarray:
        """Class indices for front-end features ``Z``."""
        return self.vote(Z)[0]

    def predict(self, X: Any) -> np.ndarray:
        """Class indices for raw samples."""
        if self.front_end is None:
            raise ValueError("this ensemble has no front end; use predict_features")
        Z = self.front_end.transform(X)
        if Z.shape[0] == 1 and Z.dtype == np.float64:
            return np.array([self.vote_one(Z[0])[0]], dtype=np.intp)
        return self.vote(Z)[0]

    def predict_labels(self, X: Any) -> list[str]:
        """Class names for raw samples."""
        return [self.classes[i] for i in self.predict(X)]
