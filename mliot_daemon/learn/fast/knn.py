"""The KNN member (euclidean, uniform or inverse-distance vote, brute force).

- One member alone, one row: scikit-learn's own float64 ``|t|^2 - 2 t.z`` and
  ``argpartition`` (in a tight loop this beats a float32 screen: fewer calls).
- The ensemble's row path (:meth:`KnnMember.predict_one32`): a float32 product, whose k
  nearest are kept when the float32 error bound proves them, else the float64 path.
- Batches: float32 sgemm (half the memory traffic) picks ``k + max(8, k)`` candidates, their
  distances are recomputed exactly in float64, and a row whose float32 error bound cannot prove
  the k nearest are among them is recomputed in full (never seen on the bench sets).

Neighbours at exactly equal distance may be chosen differently from scikit-learn: the only
permitted disagreement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mliot_daemon.learn.fast.member import BlockwisePredict

if TYPE_CHECKING:  # sklearn only for the annotations: serving never imports it
    from sklearn.base import BaseEstimator


class KnnMember(BlockwisePredict):
    """scikit-learn ``KNeighborsClassifier``: the training rows as ``-2 T`` and ``|t|^2``, in
    float64 and, for the screens, in float32 (the three paths: see the module docstring)."""

    matrix_first = True

    def __init__(self, est: BaseEstimator) -> None:
        if est.effective_metric_ != "euclidean":
            raise ValueError("only euclidean KNN is compiled")
        if est.weights not in ("uniform", "distance"):
            raise ValueError("only uniform or distance KNN weights are compiled")
        self._index(np.asarray(est._fit_X, dtype=np.float64), np.asarray(est._y, dtype=np.intp),
                    int(est.n_neighbors), est.weights == "distance", len(est.classes_))

    def _index(self, T: np.ndarray, labels: np.ndarray, k: int, distance: bool, n_classes: int
               ) -> None:
        """Everything the three paths read, from the training rows ``T`` (float64) and their
        class indices; also how a portable model (``learn.portable``) rebuilds a member."""
        # no temporaries the size of the training set (MNIST: 376 MB each, 1 s of page faults)
        T_sq = np.einsum("ij,ij->i", T, T)
        self.T_sq = T_sq
        self.Tm2 = np.multiply(T, -2.0, order="C")  # exact: a power of two
        self.Tm2_32 = self.Tm2.astype(np.float32)
        self.T_sq32 = T_sq.astype(np.float32)
        self.T_sq_max = float(T_sq.max()) if len(T_sq) else 0.0
        self.labels = labels
        self.k = k
        self.distance = distance
        self.n_classes = n_classes
        n, d = self.Tm2.shape
        self.m = self.k + max(8, self.k)  # candidates kept by the float32 pass
        self.screen = n > self.m + 1
        # |float32 dd - exact dd| <= (d + 2) eps32 (|t|^2 + 2|t.z|)
        #                          <= 2 (d + 2) eps32 (|t|^2 + |z|^2)
        self.err = 2.0 * (d + 2) * float(np.finfo(np.float32).eps)
        # rows per batch block: the (rows, m, d) float64 refinement temporary stays near 1 MB
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
        """Votes (rows, K) of the exact float64 k nearest."""
        d2 = np.einsum("ij,ij->i", Z, Z)[:, None] + self.T_sq + Z @ self.Tm2.T
        np.maximum(d2, 0.0, out=d2)
        k = self.k
        if k < d2.shape[1]:
            idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
        else:
            idx = np.argsort(d2, axis=1)
        return self._vote(self.labels[idx], np.take_along_axis(d2, idx, axis=1))

    def predict_one(self, z: np.ndarray) -> int:
        return self.finish_one(self.Tm2 @ z, z, float(z @ z))

    def first_rows(self) -> np.ndarray:
        return self.Tm2

    def predict_one32(self, z: np.ndarray, x32: np.ndarray, zz: float) -> int:
        """One row, float32 screen: half the bytes of the float64 product (the ensemble's
        single-row path, where the model no longer sits in L1/L2: 6 us less on digits). The
        float32 k nearest are taken when the error bound proves them, else the float64 path."""
        return int(self.votes_one32(z, x32, zz).argmax())

    def scores_one32(self, z: np.ndarray, x32: np.ndarray, zz: float) -> np.ndarray:
        """:meth:`predict_one32`'s vote fractions (the soft vote's scores)."""
        votes = self.votes_one32(z, x32, zz)
        return votes / votes.sum()

    def votes_one32(self, z: np.ndarray, x32: np.ndarray, zz: float) -> np.ndarray:
        """Votes (K,) of one row's k nearest, by the float32 screen when it proves them."""
        if not self.screen:
            return self._votes_one(self.Tm2 @ z, z, zz)
        dd = self.Tm2_32 @ x32
        dd += self.T_sq32
        k = self.k
        part = np.argpartition(dd, k)
        top = part[:k]
        if dd[part[k]] - dd[top].max() <= 2.0 * self.err * (self.T_sq_max + zz):
            return self._votes_one(self.Tm2 @ z, z, zz)
        lab = self.labels[top]
        if not self.distance:
            return np.bincount(lab, minlength=self.n_classes)
        diff = self.Tm2[top] * -0.5  # the training rows, exactly
        diff -= z
        d2k = np.einsum("ij,ij->i", diff, diff)
        if d2k.min() > 0.0:
            return np.bincount(lab, 1.0 / np.sqrt(d2k), minlength=self.n_classes)
        return self._vote(lab[None], d2k[None])[0]

    def finish_one(self, dd: np.ndarray, z: np.ndarray, zz: float) -> int:
        return int(self._votes_one(dd, z, zz).argmax())

    def finish_scores(self, dd: np.ndarray, z: np.ndarray, zz: float) -> np.ndarray:
        votes = self._votes_one(dd, z, zz)
        return votes / votes.sum()

    def _votes_one(self, dd: np.ndarray, z: np.ndarray, zz: float) -> np.ndarray:
        """Votes (K,) of one row from ``dd = -2 T @ z``."""
        # One row: float64 |t|^2 - 2 t.z (scikit-learn's own formula, so no refinement pass);
        # a standalone member in a tight loop is faster this way than screened (fewer calls).
        dd += self.T_sq
        k = self.k
        top = np.argpartition(dd, k - 1)[:k] if k < len(dd) else np.arange(len(dd))
        lab = self.labels[top]
        if not self.distance:
            return np.bincount(lab, minlength=self.n_classes)
        d2k = dd[top]
        d2k += zz
        if d2k.min() > 0.0:
            return np.bincount(lab, 1.0 / np.sqrt(d2k), minlength=self.n_classes)
        return self._vote(lab[None], np.maximum(d2k, 0.0)[None])[0]

    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        return self._votes_block(Z).argmax(axis=1)

    def _scores_block(self, Z: np.ndarray) -> np.ndarray:
        """The neighbours' vote fractions: ``predict_proba``."""
        votes = self._votes_block(Z).astype(np.float64)
        return votes / votes.sum(axis=1, keepdims=True)

    def _votes_block(self, Z: np.ndarray) -> np.ndarray:
        """Votes (rows, K) for a block: the float32 screen, then exact distances."""
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
        votes = self._vote(self.labels[np.take_along_axis(cand, o, axis=1)], d2k)
        unsure = d2k.max(axis=1) - zz + self.err * (self.T_sq_max + zz) >= bound
        if unsure.any():
            votes[unsure] = self._exact(Z[unsure])
        return votes
