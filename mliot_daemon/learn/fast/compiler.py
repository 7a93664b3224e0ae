"""``compile_member``: a fitted estimator of one of the seven families as a fast member."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mliot_daemon.learn.fast.knn import KnnMember
from mliot_daemon.learn.fast.linear import LinearMember, MlpMember, RbfSvmMember
from mliot_daemon.learn.fast.member import FastMember
from mliot_daemon.learn.fast.trees import compile_forest, compile_xgboost

if TYPE_CHECKING:  # sklearn only for the annotations: serving never imports it
    from sklearn.base import BaseEstimator


def compile_member(family: str, est: BaseEstimator, reduced: bool,
                   Z_probe: np.ndarray | None = None) -> FastMember:
    """Compile a fitted estimator of ``family``; XGBoost needs a few feature rows as ``Z_probe``.

    ``reduced``: the member was fitted on (and will read) the shared PCA's features.
    """
    if family in ("ridge", "svm_linear"):
        m: FastMember = LinearMember(est)
    elif family == "mlp":
        m = MlpMember(est)
    elif family == "svm_rbf":
        m = RbfSvmMember(est)
    elif family == "knn":
        m = KnnMember(est)
    elif family == "random_forest":
        m = compile_forest(est)
    elif family == "xgboost":
        if Z_probe is None:
            raise ValueError("compiling xgboost needs Z_probe rows")
        m = compile_xgboost(est, Z_probe)
    else:
        raise ValueError(f"unknown family {family!r}")
    m.family = family
    m.reduced = reduced
    return m
