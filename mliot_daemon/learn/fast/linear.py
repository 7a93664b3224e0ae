"""Linear, MLP and RBF-kernel members: each starts with one product against a fixed matrix
(so all are "matrix first" and fuse in the ensemble's single-row path).

- ridge, svm_linear: ``argmax(Z @ W + b)`` (binary: ``> 0``).
- mlp: the ReLU forward pass, ``argmax`` of the output logits (binary: ``> 0``).
- svm_rbf: ``exp(2g s.z - g|s|^2) * exp(-g|z|^2)`` against the support vectors, then libsvm's
  one-vs-one vote with ties to the lowest class index, as ``SVC.predict`` does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mliot_daemon.learn.fast.member import BlockwisePredict
from mliot_daemon.learn.soft import as_columns

if TYPE_CHECKING:  # sklearn only for the annotations: serving never imports it
    from sklearn.base import BaseEstimator


class LinearMember(BlockwisePredict):
    """Ridge classifier or linear SVM."""

    matrix_first = True

    def __init__(self, est: BaseEstimator) -> None:
        coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
        self.W = np.ascontiguousarray(coef.T)
        self.b = np.asarray(est.intercept_, dtype=np.float64).ravel()
        self.binary = coef.shape[0] == 1

    def predict_one(self, z: np.ndarray) -> int:
        return self.finish_one(z @ self.W, z, 0.0)

    def first_rows(self) -> np.ndarray:
        return self.W.T

    def finish_one(self, s: np.ndarray, z: np.ndarray, zz: float) -> int:
        s += self.b
        return int(s[0] > 0) if self.binary else int(s.argmax())

    def finish_scores(self, s: np.ndarray, z: np.ndarray, zz: float) -> np.ndarray:
        s += self.b
        return np.array([0.0, s[0]]) if self.binary else s

    def _scores_block(self, Z: np.ndarray) -> np.ndarray:
        s = Z @ self.W
        s += self.b
        return as_columns(s)

    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        s = Z @ self.W
        s += self.b
        return (s[:, 0] > 0).astype(np.intp) if self.binary else s.argmax(axis=1)


class MlpMember(BlockwisePredict):
    """scikit-learn MLP with ReLU hidden layers."""

    matrix_first = True
    _block = 1024

    def __init__(self, est: BaseEstimator) -> None:
        if est.activation != "relu":
            raise ValueError("only ReLU MLPs are compiled")
        self.layers = [(np.ascontiguousarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64))
                       for W, b in zip(est.coefs_, est.intercepts_, strict=True)]
        self.binary = est.n_outputs_ == 1

    def _forward(self, h: np.ndarray) -> np.ndarray:
        return self._after_first(h @ self.layers[0][0])

    def _after_first(self, h: np.ndarray) -> np.ndarray:
        """The output logits from the first layer's product (which the ensemble may have
        computed, fused with other members': ``finish_one``)."""
        h += self.layers[0][1]
        np.maximum(h, 0.0, out=h)
        for W, b in self.layers[1:-1]:
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
        s = self._after_first(h)
        return int(s[0] > 0) if self.binary else int(s.argmax())

    def finish_scores(self, h: np.ndarray, z: np.ndarray, zz: float) -> np.ndarray:
        s = self._after_first(h)
        return np.array([0.0, s[0]]) if self.binary else s

    def _scores_block(self, Z: np.ndarray) -> np.ndarray:
        return as_columns(self._forward(Z))

    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        s = self._forward(Z)
        return (s[:, 0] > 0).astype(np.intp) if self.binary else s.argmax(axis=1)


class RbfSvmMember(BlockwisePredict):
    """scikit-learn ``SVC(kernel="rbf")``. float64 throughout: the one-vs-one decisions are
    signs, and float32 kernels could flip a decision near zero (a disagreement that is not an
    exact tie)."""

    matrix_first = True
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
        dec = self._decision_one(a, z, zz)
        if self.binary:
            # sklearn flips the sign of the binary coefficients: dec >= 0 is classes_[1]
            return int(dec[0] >= 0)
        winners = np.where(dec > 0, self.pair_i, self.pair_j)
        return int(np.bincount(winners, minlength=self.n_classes).argmax())

    def finish_scores(self, a: np.ndarray, z: np.ndarray, zz: float) -> np.ndarray:
        dec = self._decision_one(a, z, zz)
        return np.array([0.0, dec[0]]) if self.binary else self._ovr(dec[None])[0]

    def _decision_one(self, a: np.ndarray, z: np.ndarray, zz: float) -> np.ndarray:
        """The one-vs-one decision values of row ``z`` from ``a = S2g @ z``."""
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
        return dec

    def _scores_block(self, Z: np.ndarray) -> np.ndarray:
        """scikit-learn's one-vs-rest ``decision_function``: each class's one-vs-one votes
        plus its summed decision values squashed into (-1/3, 1/3), which breaks vote ties."""
        dec = self._kernel(Z) @ self.C
        dec += self.b
        return as_columns(dec[:, 0]) if self.binary else self._ovr(dec)

    def class_of(self, scores: np.ndarray) -> Any:
        # the one-vs-rest scores are votes plus less than 1/3: rounding gives the votes back,
        # whose first maximum is libsvm's answer (ties to the lowest class)
        return scores.argmax(axis=-1) if self.binary else np.rint(scores).argmax(axis=-1)

    def _ovr(self, dec: np.ndarray) -> np.ndarray:
        """(rows, K) one-vs-rest scores from (rows, pairs) one-vs-one decision values."""
        toward = self.__dict__.get("_toward")  # built on first use (older pickles lack it)
        if toward is None:  # +1 for a pair's first class, -1 for its second
            pairs = np.arange(len(self.pair_i))
            toward = np.zeros((len(pairs), self.n_classes))
            toward[pairs, self.pair_i], toward[pairs, self.pair_j] = 1.0, -1.0
            self._toward = toward
            self._first, self._second = np.maximum(toward, 0), np.maximum(-toward, 0)
        ahead = dec >= 0
        votes = ahead @ self._first + ~ahead @ self._second
        conf = dec @ toward
        return votes + conf / (3 * (np.abs(conf) + 1))

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
