"""The served predictor: front end, optional shared PCA, compiled members, weighted vote.

:meth:`FastEnsemble.vote` takes one row through :meth:`FastEnsemble.vote_one` and larger inputs
member by member, each in cache-sized blocks. The single-row path is planned once, when the
ensemble is built or unpickled: KNN members with enough training rows take their float32
screen, the other matrix-first members on the front end's features share one product (two or
more: :class:`FusedDense`), all tree members are walked together (:class:`FusedTrees`), the rest
call their own ``predict_one``. Single-row work should not start BLAS thread pools: call
:func:`single_thread_blas` once in the serving process.

A soft ensemble (``sharpness`` given, one per member) votes ``sum_i w_i p_i(c)`` with each
member's probabilities ``softmax(sharpness_i * scores_i)`` (``learn.soft``); its row path is
the same plan, with each member's per-class scores in place of its class, and one softmax
over the stacked (members, K) scores.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from mliot_daemon.learn.fast.knn import KnnMember
from mliot_daemon.learn.fast.member import BlockwisePredict, FastMember, MatrixFirstMember
from mliot_daemon.learn.fast.reducer import Reducer
from mliot_daemon.learn.fast.trees import FusedTrees, TreesMember
from mliot_daemon.learn.frontends import FrontEnd
from mliot_daemon.learn.soft import probabilities


def single_thread_blas() -> Any:
    """Limit BLAS/OpenMP pools of this process to one thread (returns the threadpoolctl handle)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


class FusedDense:
    """The first product of every matrix-first member (ridge, linear SVM, MLP layer 1, RBF
    kernel, unscreened KNN distances) as ONE matrix-vector product for one row; each member
    finishes on its slice. Same bytes read, one call instead of one per member; ``z.z`` is
    computed once for RBF and KNN."""

    def __init__(self, members: list[MatrixFirstMember]) -> None:
        blocks = [np.asarray(m.first_rows(), dtype=np.float64) for m in members]
        self.M = np.ascontiguousarray(np.concatenate(blocks, axis=0))
        edges = np.cumsum([0] + [len(b) for b in blocks])
        self.slices = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        self.members = members

    def predict_one(self, z: np.ndarray, zz: float) -> list[int]:
        p = self.M @ z
        # per row: zip without strict= (a keyword takes zip's slower call path, ~0.1 us)
        return [m.finish_one(p[s], z, zz) for m, s in zip(self.members, self.slices)]  # noqa: B905

    def scores_one(self, z: np.ndarray, zz: float) -> list[np.ndarray]:
        """Each member's per-class scores (``learn.soft``) for one row."""
        p = self.M @ z
        return [m.finish_scores(p[s], z, zz)
                for m, s in zip(self.members, self.slices)]  # noqa: B905


SMALL_K = 32  # up to this many classes, a one-member margin is computed in plain Python


class Vote(NamedTuple):
    """The vote on one row (scalars) or on many (arrays of one value per row).

    ``share``: the winner's share of the total weight (of the summed probabilities for a soft
    vote; a one-member model's: its probability, the softmax of its scores with its
    sharpness); ``margin``: the winner's share minus the runner-up's; ``agreement``: how much
    the members back the winner, which is its share: the weight voting for it (hard), the
    members' weighted probability of it (soft), 1 for one member; ``runner_up``: the second
    class. (Counting the weight on members whose own class won, for a soft vote, cost ~20 µs
    a row on 7-member digits with cold caches, 5 % of the vote: DESIGN.md, "Margins and label
    queries".)"""

    label: Any
    share: Any
    margin: Any
    agreement: Any
    runner_up: Any


class FastEnsemble:
    """The served predictor: front end, optional shared PCA, compiled members, weighted vote.

    ``predict(X)`` takes raw samples (what the front end takes) and returns class indices;
    ``predict_features(Z)`` skips the front end; ``vote(Z)`` also returns the vote share and
    margin. ``sharpness`` (one per member; 1.0 when unknown) turns a member's scores into
    probabilities: for the soft vote (``soft``) and for a one-member model's margin.
    """

    def __init__(self, front_end: FrontEnd | None, members: list[FastMember], weights: list[float],
                 classes: list[str], reducer: Reducer | None = None,
                 sharpness: list[float] | None = None, soft: bool = False) -> None:
        if not members or len(members) != len(weights):
            raise ValueError("an ensemble needs members and one weight per member")
        if sharpness is not None and len(sharpness) != len(members):
            raise ValueError("an ensemble needs one sharpness per member")
        if soft and sharpness is None:
            raise ValueError("a soft vote needs the members' sharpness")
        if any(m.reduced for m in members) and reducer is None:
            raise ValueError("a reduced member needs the reducer")
        self.sharpness = [1.0] * len(members) if sharpness is None else [float(a)
                                                                           for a in sharpness]
        self.soft = bool(soft) and len(members) > 1  # one member: its own class either way
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
        """Decide once how each member takes one row (see the module docstring)."""
        trees = [i for i, m in enumerate(self.members) if isinstance(m, TreesMember)]
        knn32 = [i for i, m in enumerate(self.members) if isinstance(m, KnnMember) and m.screen]
        self._knn32 = [(self.members[i], self.members[i].reduced) for i in knn32]
        # the fused product is against the front end's row, which reduced members do not read
        dense = [i for i, m in enumerate(self.members)
                 if m.matrix_first and not m.reduced and i not in knn32]
        self._dense = FusedDense([self.members[i] for i in dense]) if len(dense) >= 2 else None
        if self._dense is None:
            dense = []
        self._others = [(i, m) for i, m in enumerate(self.members)
                        if i not in trees and i not in dense and i not in knn32]
        self._fused = None
        self._fused_reduced = any(self.members[i].reduced for i in trees)
        self._fused_raw = any(not self.members[i].reduced for i in trees)
        if trees:
            d = 0
            if self._fused_reduced:
                d = int(self.reducer.mean.shape[0]) if self._fused_raw else 0
            self._fused = FusedTrees([self.members[i] for i in trees], d)
        # weights in the order vote_one produces predictions: others, KNN, fused dense, trees
        order = [i for i, _ in self._others] + knn32 + dense + trees
        self._w_one_list = [float(w) for w in self.weights[order]]
        self._w_one = self.weights[order]
        self._planned = [self.members[i] for i in order]
        # members whose class is not the argmax of their scores (the RBF SVM's vote)
        self._own_rule = [k for k, m in enumerate(self._planned)
                          if type(m).class_of is not BlockwisePredict.class_of]
        self._sharp_one = np.asarray(self.sharpness)[order][:, None]  # a column, in that order
        # one member read on its own (not a screened KNN, not trees): straight to its scores,
        # past _row_outputs' checks and products for the fused paths (a few µs of a ~40 µs row)
        self._single = self.members[0] if len(self.members) == 1 and self._others else None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # the single-row plan is rebuilt on loading
        for k in ("_fused", "_dense", "_knn32", "_others", "_fused_reduced", "_fused_raw",
                  "_w_one_list", "_w_one", "_sharp_one", "_planned", "_own_rule", "_single"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "soft" not in state:  # pickled before the soft vote
            state["soft"], state["sharpness"] = False, [1.0] * len(state["members"])
        self.__dict__.update(state)
        self._plan_one()

    def vote(self, Z: np.ndarray) -> Vote:
        """The vote (arrays, one value per row) on front-end features ``Z``."""
        Z = np.asarray(Z, dtype=np.float64)
        if Z.ndim != 2:
            raise ValueError(f"expected (rows, features), got shape {Z.shape}")
        if Z.shape[0] == 1:
            return Vote(*(np.array([v]) for v in self.vote_one(Z[0])))
        n, rows = len(Z), np.arange(len(Z))
        if len(self.members) == 1 or self.soft:
            score, own = self._soft_vote(Z)
            pred = score.argmax(axis=1) if own is None else own
            share = score[rows, pred]
            second, margin = _runners_up(score, pred)
            return Vote(pred, share, margin, share if own is None else np.ones(n), second)
        Zr = self.reducer(Z) if self._any_reduced else None
        K = self._n_classes
        flat = np.zeros(n * K)
        base = rows * K
        for m, w in zip(self.members, self.weights, strict=True):
            p = m.predict(Zr if m.reduced else Z)
            p += base
            flat[p] += w  # one member's winners are distinct cells: no lost updates
        score = flat.reshape(n, K) / self._total
        pred = score.argmax(axis=1)
        share = score[rows, pred]
        second, margin = _runners_up(score, pred)
        return Vote(pred, share, margin, share, second)

    def soft_scores(self, Z: np.ndarray) -> np.ndarray:
        """(rows, K) each class's share of the soft vote ``sum_i w_i p_i``."""
        return self._soft_vote(Z)[0]

    def _soft_vote(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The soft vote's class shares (rows, K); and a one-member model's own class per row
        (its rule, which the argmax of its probabilities may not follow), else None."""
        Zr = self.reducer(Z) if self._any_reduced else None
        score = np.zeros((len(Z), self._n_classes))
        own = None
        for m, w, a in zip(self.members, self.weights, self.sharpness, strict=True):
            s = m.scores(Zr if m.reduced else Z)
            if len(self.members) == 1:
                own = m.class_of(s)
            score += w * probabilities(s, a)
        score /= self._total
        return score, own

    def vote_one(self, z: np.ndarray) -> Vote:
        """The vote on one 1-D row of front-end features: the served case."""
        if len(self.members) == 1:  # its class, and the margin of its own probabilities
            m = self._single
            if m is None:
                s = self._row_outputs(z, True)[0]
            else:
                s = m.scores_one(self.reducer.one(z) if m.reduced else z)
            if self._n_classes > SMALL_K:
                best = int(self.members[0].class_of(s))
                p = probabilities(s, self.sharpness[0])
                second, margin = _runner_up(p, best)
                return Vote(best, float(p[best]), margin, 1.0, second)
            # a softmax of a few values: plain Python beats the half dozen numpy calls (~3-5 µs
            # a row on digits; DESIGN.md, "Margins and label queries", has the whole cost)
            xs, a = s.tolist(), self.sharpness[0]
            top_score = max(xs)
            # the class: the first maximum (argmax's), unless the member has a rule of its own
            best = int(self.members[0].class_of(s)) if self._own_rule else xs.index(top_score)
            exp = math.exp
            ex = [exp(a * (v - top_score)) for v in xs]
            total, top = sum(ex), ex[best]
            ex[best] = -1.0
            runner = max(ex)
            return Vote(best, top / total, max(0.0, top - runner) / total, 1.0,
                        ex.index(runner))
        if self.soft:
            raw = np.array(self._row_outputs(z, True))  # (members, K), in the planned order
            s = raw * self._sharp_one
            s -= s.max(axis=1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=1, keepdims=True)
            # the rest on Python lists of K and of members: a numpy call per step cost ~6 µs
            # a row on 7-member digits, the lists ~3 µs
            score = ((self._w_one @ s) / self._total).tolist()
            top = max(score)
            best = score.index(top)  # the first maximum, as argmax
            score[best] = -1.0
            runner = max(score)
            return Vote(best, top, top - runner, top, score.index(runner))
        preds = self._row_outputs(z, False)
        # seven additions: plain Python beats a numpy call here
        score = [0.0] * self._n_classes
        for p, w in zip(preds, self._w_one_list):  # noqa: B905 (per row, see FusedDense)
            score[p] += w
        best = max(range(self._n_classes), key=score.__getitem__)  # first maximum: lowest class
        top = score[best]
        score[best] = -1.0
        runner = max(score)
        share = top / self._total
        return Vote(best, share, (top - runner) / self._total, share, score.index(runner))

    def _row_outputs(self, z: np.ndarray, soft: bool) -> list[Any]:
        """Every member's class index (or, ``soft``, per-class scores) for one row, in the
        planned order: others, screened KNN, fused dense, trees."""
        zr = self.reducer.one(z) if self._any_reduced else None
        if soft:
            out = [m.scores_one(zr if m.reduced else z) for _, m in self._others]
        else:
            out = [m.predict_one(zr if m.reduced else z) for _, m in self._others]
        zz = float(z @ z)
        z32 = z.astype(np.float32) if self._knn32 or self._fused is not None else None
        if self._knn32:
            zrr = float(zr @ zr) if self._any_reduced else 0.0
            zr32 = zr.astype(np.float32) if self._any_reduced else None
            for m, red in self._knn32:
                row = m.scores_one32 if soft else m.predict_one32
                out.append(row(zr, zr32, zrr) if red else row(z, z32, zz))
        if self._dense is not None:
            out += self._dense.scores_one(z, zz) if soft else self._dense.predict_one(z, zz)
        if self._fused is not None:
            if self._fused_reduced:
                x32 = np.concatenate([z, zr]).astype(np.float32) if self._fused_raw \
                    else zr.astype(np.float32)
            else:
                x32 = z32
            out += self._fused.scores_one(x32) if soft else self._fused.predict_one(x32)
        return out

    def predict_features(self, Z: np.ndarray) -> np.ndarray:
        """Class indices for front-end features ``Z``."""
        return self.vote(Z).label

    def predict(self, X: Any) -> np.ndarray:
        """Class indices for raw samples."""
        if self.front_end is None:
            raise ValueError("this ensemble has no front end; use predict_features")
        Z = self.front_end.transform(X)
        if Z.shape[0] == 1 and Z.dtype == np.float64:
            return np.array([self.vote_one(Z[0]).label], dtype=np.intp)
        return self.vote(Z).label

    def predict_labels(self, X: Any) -> list[str]:
        """Class names for raw samples."""
        return [self.classes[i] for i in self.predict(X)]


def _runner_up(score: np.ndarray, best: int) -> tuple[int, float]:
    """The class after ``best`` in a 1-D score, and how far ``best`` is ahead of it (0 when
    it is not: an RBF SVM's vote tie goes to the lowest class, whatever the scores say)."""
    top = float(score[best])
    s = score.copy()
    s[best] = -np.inf
    second = int(s.argmax())
    return second, max(0.0, top - float(s[second]))


def _runners_up(score: np.ndarray, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_runner_up` for each row of a (rows, K) score."""
    rows = np.arange(len(score))
    s = score.copy()
    s[rows, best] = -np.inf
    second = s.argmax(axis=1)
    return second, np.maximum(score[rows, best] - s[rows, second], 0.0)
