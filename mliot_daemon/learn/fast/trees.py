"""Tree members (random forest, XGBoost) as flattened arrays, walked level by level.

Every tree is flattened into shared arrays with the right child stored next to the left one,
so one level of all trees is ``node = left[node] + (x[feat[node]] > thr[node])``; leaves loop
onto themselves; trees are sorted deepest first, so a level steps only a prefix. Inputs are
cast to float32 exactly as scikit-learn and XGBoost do, and thresholds are rounded to the
float32 that gives the same comparison (scikit-learn: ``x <= t`` goes left, XGBoost:
``x < t``), so no row flips at a threshold. In the ensemble's single-row path all tree members
are walked together (:class:`FusedTrees`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from mliot_daemon.learn.fast.member import BlockwisePredict
from mliot_daemon.learn.soft import as_columns

if TYPE_CHECKING:  # sklearn only for the annotations: serving never imports it
    from sklearn.base import BaseEstimator

_INF32 = np.float32(np.inf)


class TreesMember(BlockwisePredict):
    """One random forest (``kind`` "forest": class probabilities averaged) or XGBoost model
    ("boost": leaf margins summed per class). Batches are walked as a (trees, rows) node array,
    one gather per array per level.
    """

    matrix_first = False
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
        else:
            self.leaf = np.concatenate(values)[:, 0]  # (nodes,)
            self.tree_class = np.asarray(tree_class, dtype=np.intp)[order]
            self.offset = np.zeros(self.width) if offset is None else offset
        self._tables()

    @property
    def width(self) -> int:
        """Margin columns of a boosted model: one per class, one for two classes."""
        return self.n_classes if self.n_classes > 2 else 1

    def _tables(self) -> None:
        """The lookups derived from the flattened trees (also how a portable model,
        ``learn.portable``, rebuilds a member from its arrays)."""
        if self.kind == "forest":
            self._ones = np.ones(len(self.roots))
        else:
            self.onehot = np.zeros((len(self.roots), self.width))
            self.onehot[np.arange(len(self.roots)), self.tree_class] = 1.0

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

    def margins_one(self, z: np.ndarray) -> np.ndarray:
        """One row's summed leaf values: probabilities (forest) or margins (boost, binary:
        one column)."""
        node = self.leaves_one(z.astype(np.float32))
        if self.kind == "forest":
            return self.values.take(node, axis=0).sum(axis=0)
        s = np.bincount(self.tree_class, self.leaf.take(node), minlength=len(self.offset))
        s += self.offset
        return s

    def margins(self, Z: np.ndarray) -> np.ndarray:
        """:meth:`margins_one` for the rows of ``Z``."""
        if Z.shape[0] == 1:
            return self.margins_one(Z[0])[None]
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

    def _scores_block(self, Z: np.ndarray) -> np.ndarray:
        return self.margins(Z) if self.kind == "forest" else as_columns(self.margins(Z))

    def scores_one(self, z: np.ndarray) -> np.ndarray:
        s = self.margins_one(z)
        return np.array([0.0, s[0]]) if self.kind == "boost" and self.n_classes == 2 else s

    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        s = self.margins(Z)
        if self.kind == "boost" and self.n_classes == 2:
            return (s[:, 0] > 0).astype(np.intp)
        return s.argmax(axis=1)


class FusedTrees:
    """All tree members of an ensemble walked together for one row.

    One level of every tree of every tree member costs the same handful of numpy calls as one
    level of a single forest (the arrays are a few hundred entries long: call overhead, not
    data, dominates), so the random forest's 12 levels and XGBoost's 4 cost 12 steps, not 16.
    Reduced members read the PCA features, appended after the raw ones.
    """

    def __init__(self, members: list[TreesMember], d: int) -> None:
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
        for m, base in zip(members, self.node_base, strict=True):
            table = m.values if m.kind == "forest" else m.leaf
            if base:
                table = np.concatenate([np.zeros((base,) + table.shape[1:]), table])
            self.lookup.append(table)
        self.members = members

    def predict_one(self, x32: np.ndarray) -> list[int]:
        """Class index per tree member for one float32 row ``x32`` (raw then reduced features)."""
        node = self._walk(x32)
        out = []
        # per row: zip without strict= (a keyword takes zip's slower call path, ~0.1 us)
        for m, pos, table in zip(self.members, self.pos, self.lookup):  # noqa: B905
            leaf = node[pos]
            if m.kind == "forest":
                out.append(int((m._ones @ table[leaf]).argmax()))
                continue
            s = np.bincount(m.tree_class, table[leaf], minlength=len(m.offset))
            s += m.offset
            out.append(int(s[0] > 0) if m.n_classes == 2 else int(s.argmax()))
        return out

    def scores_one(self, x32: np.ndarray) -> list[np.ndarray]:
        """Per-class scores (``learn.soft``) per tree member for one float32 row."""
        node = self._walk(x32)
        out = []
        for m, pos, table in zip(self.members, self.pos, self.lookup):  # noqa: B905
            leaf = node[pos]
            if m.kind == "forest":
                out.append(m._ones @ table[leaf])
                continue
            s = np.bincount(m.tree_class, table[leaf], minlength=len(m.offset))
            s += m.offset
            out.append(np.array([0.0, s[0]]) if m.n_classes == 2 else s)
        return out

    def _walk(self, x32: np.ndarray) -> np.ndarray:
        """The leaf of every tree for one row."""
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
        return node


def _tree_depth(m: TreesMember, k: int) -> int:
    """Depth of tree ``k`` of ``m`` (trees are sorted deepest first)."""
    return sum(1 for a in m.active if a > k)


def _floor32(t: np.ndarray) -> np.ndarray:
    """Largest float32 <= t (float64), so that ``x32 > floor32(t)`` iff ``x32 > t``."""
    t32 = t.astype(np.float32)
    up = t32.astype(np.float64) > t
    t32[up] = np.nextafter(t32[up], -_INF32)
    return t32


def _reorder(
    t: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
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


def compile_forest(est: BaseEstimator) -> TreesMember:
    """A fitted random forest: leaf values are class fractions divided by the number of trees,
    so their sum over the trees is ``predict_proba``."""
    trees = []
    for tree in est.estimators_:
        tr = tree.tree_
        val = tr.value[:, 0, :].astype(np.float64)
        val = val / np.maximum(val.sum(axis=1, keepdims=True), 1e-300)
        trees.append({"left": tr.children_left, "right": tr.children_right, "feat": tr.feature,
                      "thr": _floor32(tr.threshold), "value": val / len(est.estimators_)})
    return TreesMember(trees, len(est.classes_), "forest")


def compile_xgboost(est: BaseEstimator, Z_probe: np.ndarray) -> TreesMember:
    """A fitted XGBoost classifier, read from the booster's JSON; a few feature rows
    ``Z_probe`` measure the base margin."""
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
    fast = TreesMember(trees, n_classes, "boost", tree_class=tree_class)
    # The base margin (base_score, possibly per class) is measured rather than parsed, since
    # its JSON encoding changed across XGBoost versions.
    import xgboost

    probe = Z_probe[: min(len(Z_probe), 64)]
    margin = booster.predict(xgboost.DMatrix(probe.astype(np.float32)), output_margin=True)
    margin = margin.reshape(len(probe), -1)
    fast.offset = np.median(margin - fast.margins(probe), axis=0)
    return fast
