"""Prepared features: the front end's output with fold ids and the optional shared PCA.

This module owns :class:`FeatureSet` (saved as .npz for pool workers), the fold assignment
(:func:`make_folds`) and building the shared PCA (:func:`prepare_features`). Fitting a family
on a feature set is ``fit``'s; whether a family uses the PCA is decided there too.

Validation is out-of-fold so that ensemble selection never sees its own training rows and is
robust on small data: each row gets a fold id (5-fold CV up to 4,000 rows, 3-fold up to
20,000, above that a single 15 % hold-out; fold -1 means "train only"). A family's validation
predictions are those of models fitted without that row's fold; the served model is then
refitted on every row.

PCA: for inputs with at least ``PCA_MIN_DIMS`` features the data set carries one shared PCA
(IncrementalPCA above ``INCREMENTAL_ROWS`` rows) keeping 90 % of the variance (at most
``PCA_MAX_DIMS`` components).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.model_selection import StratifiedKFold, train_test_split

from mliot_daemon.learn.errors import DataError
from mliot_daemon.learn.fast import Reducer
from mliot_daemon.learn.persist import atomic_write

PCA_MIN_DIMS = 100
PCA_MAX_DIMS = 64
PCA_VARIANCE = 0.90
INCREMENTAL_ROWS = 20_000


@dataclass
class FeatureSet:
    """Front-end features of a training set, with fold ids and the optional shared PCA."""

    Z: np.ndarray
    y: np.ndarray
    n_classes: int
    fold: np.ndarray
    reducer: Reducer | None = None
    G: np.ndarray | None = None  # the gate's cheap features (FrontEnd.gate_input), if any
    groups: np.ndarray | None = None  # per row, its group's number (related rows), if any

    @property
    def val_rows(self) -> np.ndarray:
        """Indices of rows with out-of-fold validation predictions."""
        return np.flatnonzero(self.fold >= 0)

    def reduced(self) -> np.ndarray:
        if self.reducer is None:
            raise ValueError("this feature set has no PCA")
        if not hasattr(self, "_Zr"):
            self._Zr = self.reducer(self.Z)
        return self._Zr

    def save(self, path: Path) -> Path:
        """Write as .npz (atomically) so pool workers can load it by path."""
        arrays: dict[str, Any] = {"Z": self.Z, "y": self.y, "fold": self.fold,
                                  "n_classes": np.int64(self.n_classes)}
        if self.reducer is not None:
            arrays["pca_mean"] = self.reducer.mean
            arrays["pca_components"] = self.reducer.components
        for name in ("G", "groups"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        return atomic_write(Path(path), lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        with np.load(path, allow_pickle=False) as d:
            reducer = Reducer(d["pca_mean"], d["pca_components"]) if "pca_mean" in d else None
            return cls(Z=d["Z"], y=d["y"], n_classes=int(d["n_classes"]), fold=d["fold"],
                       reducer=reducer, G=d.get("G"), groups=d.get("groups"))


def make_folds(y: np.ndarray, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold id per row: k-fold CV for small data, a 15 % hold-out (others -1) for large.

    With ``groups`` (e.g. the recording each window was cut from) rows of one group stay in one
    fold, so overlapping windows cannot leak between training and validation.
    """
    n = len(y)
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    fold = np.full(n, -1, dtype=np.int64)
    if n > 20_000:
        if groups is not None:  # whole groups in the hold-out (a share of the groups)
            from sklearn.model_selection import GroupShuffleSplit

            split = GroupShuffleSplit(1, test_size=0.15, random_state=seed)
            _, val = next(split.split(fold, y, groups))
        else:
            _, val = train_test_split(np.arange(n), test_size=0.15, stratify=y,
                                      random_state=seed)
        fold[val] = 0
        return fold
    k = min(5 if n <= 4000 else 3, smallest)
    if k < 2:
        raise DataError("every class needs at least 2 samples for validation")
    if groups is not None:
        from sklearn.model_selection import StratifiedGroupKFold

        k = min(k, len(np.unique(groups)))
        splitter: Any = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        splits = splitter.split(fold, y, groups)
    else:
        splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(fold, y)
    for i, (_, val) in enumerate(splits):
        fold[val] = i
    return fold


def prepare_features(Z: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0,
                     groups: np.ndarray | None = None, fold: np.ndarray | None = None
                     ) -> FeatureSet:
    """Fold ids (group-aware when ``groups`` given; ``fold`` when already made) plus, for
    high-dimensional inputs, PCA."""
    fold = make_folds(y, seed, groups) if fold is None else fold
    reducer = None
    n, d = Z.shape
    if d >= PCA_MIN_DIMS and n > PCA_MIN_DIMS:
        k_max = min(PCA_MAX_DIMS, d, n - 1)
        if n > INCREMENTAL_ROWS:
            pca: Any = IncrementalPCA(n_components=k_max, batch_size=max(2000, 2 * k_max)).fit(Z)
        else:
            pca = PCA(n_components=k_max, svd_solver="randomized", random_state=seed).fit(Z)
        ratio = np.cumsum(pca.explained_variance_ratio_)
        k = int(min(k_max, np.searchsorted(ratio, PCA_VARIANCE) + 1))
        reducer = Reducer(np.asarray(pca.mean_, dtype=np.float64),
                          np.asarray(pca.components_[:k], dtype=np.float64))
    numbers = None if groups is None else np.unique(groups, return_inverse=True)[1].reshape(n)
    return FeatureSet(Z=Z, y=y, n_classes=n_classes, fold=fold, reducer=reducer, groups=numbers)
