"""The fast predictor: a weighted-vote ensemble (hard or soft) of compiled members, in numpy.

This package owns turning fitted estimators into arrays (``compile_member``), evaluating them
one row or one batch at a time, and the served vote (``FastEnsemble``). It may import numpy,
threadpoolctl, scikit-learn and XGBoost (only to read fitted estimators: their attributes, the
booster's JSON), ``learn.frontends`` (the front end the ensemble calls) and ``learn.soft``
(the soft vote's scores); nothing from
asyncio, aiohttp, ``actors/`` or the rest of the daemon: pool workers, the server and
notebooks all call it.

Modules: ``member`` (the ``FastMember`` interface), ``linear`` (ridge, linear SVM, MLP, RBF
SVM), ``knn``, ``trees`` (random forest, XGBoost), ``reducer`` (the shared PCA), ``ensemble``
(``FastEnsemble``, the fused single-row path, ``single_thread_blas``), ``compiler``
(``compile_member``). Measurements and what was tried: DESIGN.md, "The fast predictor:
measurements and what was tried".
"""

from mliot_daemon.learn.fast.compiler import compile_member
from mliot_daemon.learn.fast.ensemble import FastEnsemble, single_thread_blas
from mliot_daemon.learn.fast.knn import KnnMember
from mliot_daemon.learn.fast.linear import LinearMember, MlpMember, RbfSvmMember
from mliot_daemon.learn.fast.member import FastMember
from mliot_daemon.learn.fast.reducer import Reducer
from mliot_daemon.learn.fast.trees import TreesMember

# Saved models hold pickles naming the classes of the single-module fast.py; keep them loadable.
_Linear, _Mlp, _RbfSvm, _Knn, _Trees = LinearMember, MlpMember, RbfSvmMember, KnnMember, TreesMember

__all__ = ["FastEnsemble", "FastMember", "Reducer", "compile_member", "single_thread_blas"]
