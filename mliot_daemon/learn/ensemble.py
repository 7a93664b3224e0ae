"""Ensemble selection under a policy: which fitted candidates vote, with which weights.

The vote is ``argmax_c sum_i w_i [f_i(x) = c]`` (ties go to the lowest class index, in both the
reference and the fast predictor). Weights come from each member's out-of-fold validation
accuracy ``p``: ``w = log((K - 1) p / (1 - p))``, the optimal weighted-majority weight for
independent voters, so a member's say grows with how much better than chance it is.

Selection enumerates every subset of at most ``max_models`` candidates (7 families -> at most
127 subsets, milliseconds on validation predictions) and scores each by the validation
accuracy of its weighted vote and by its estimated served latency (front end + the members'
measured fast-predictor latency + vote overhead). Policies (DESIGN.md):

- ``best_effort``: the most accurate subset within ``latency_ms``; ties go to the faster one.
  Single members are subsets too, so the ensemble is never worse than its best member on
  validation (the fallback when voting does not help).
- ``low_latency``: the fastest subset of at most ``max_models`` members whose validation
  accuracy is within 0.02 of the best-effort choice (same budget, up to 7 members).

When nothing fits the budget, the fastest single member is chosen and ``within_budget`` is
False, so the caller can refuse or report it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

Mode = Literal["best_effort", "low_latency"]
LOW_LATENCY_TOLERANCE = 0.02
VOTE_OVERHEAD_MS = 0.003  # per member: concatenate + bincount in the fast predictor


def _rule(check: Any) -> dict[str, Any]:
    """A range rule in a field's metadata: the config parser (``mliot_daemon.config``), which
    parses ``[apps.policy]`` straight into this class, reports its message with the key."""
    return {"check": check}


@dataclass(frozen=True, slots=True)
class Policy:
    """An app's serving policy (DESIGN.md ``[apps.policy]``). Numbers left unset take the
    mode's defaults: best_effort 50 ms and 7 models, low_latency 10 ms and 3."""

    mode: Mode = "best_effort"
    latency_ms: float | None = field(default=None, metadata=_rule(
        lambda v: None if v > 0 else "must be > 0"))
    max_models: int | None = field(default=None, metadata=_rule(
        lambda v: None if 1 <= v <= 7 else "must be from 1 to 7"))
    min_accuracy: float = field(default=0.0, metadata=_rule(
        lambda v: None if 0 <= v <= 1 else "must be from 0 to 1"))
    retrain_after: int = field(default=20, metadata=_rule(  # corrections that trigger adaptation
        lambda v: None if v >= 1 else "must be >= 1"))

    def __post_init__(self) -> None:
        if self.mode not in ("best_effort", "low_latency"):
            raise ValueError(f"unknown policy mode {self.mode!r}; expected best_effort or "
                             "low_latency")
        low = self.mode == "low_latency"
        if self.latency_ms is None:
            object.__setattr__(self, "latency_ms", 10.0 if low else 50.0)
        if self.max_models is None:
            object.__setattr__(self, "max_models", 3 if low else 7)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "latency_ms": self.latency_ms, "max_models": self.max_models}


class Candidate(Protocol):
    """What selection needs from a fitted model (``FittedModel`` satisfies it)."""

    family: str
    val_accuracy: float
    val_pred: np.ndarray
    latency_ms: float


@dataclass
class Selection:
    """The chosen members (indices into the candidate list), weights and their estimates."""

    members: list[int]
    weights: list[float]
    val_accuracy: float
    latency_ms: float
    within_budget: bool
    families: list[str] = field(default_factory=list)


def member_weight(val_accuracy: float, n_classes: int) -> float:
    """Weighted-majority weight from validation accuracy (clipped to stay finite and > 0)."""
    p = float(np.clip(val_accuracy, 1.0 / n_classes + 1e-3, 1 - 1e-4))
    return float(max(np.log((n_classes - 1) * p / (1 - p)), 1e-3))


def vote(preds: np.ndarray, weights: Sequence[float], n_classes: int) -> np.ndarray:
    """Weighted vote of (members, rows) class indices -> (rows,) winners (ties: lowest class)."""
    score = np.zeros((preds.shape[1], n_classes))
    rows = np.arange(preds.shape[1])
    for p, w in zip(preds, weights):
        score[rows, p] += w
    return score.argmax(axis=1)


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    """Counts of (true class, predicted class), rows true; rows whose true class the model
    never saw (-1) are left out."""
    seen = y >= 0
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (y[seen], pred[seen]), 1)
    return counts.tolist()


def by_weight(weights: Sequence[float]) -> list[int]:
    """Member positions, highest weight first: the order in which the scheduler keeps
    members when it trims an ensemble."""
    return sorted(range(len(weights)), key=lambda i: -weights[i])


def trim_accuracies(candidates: Sequence[Candidate], selection: Selection, y_val: np.ndarray,
                    n_classes: int) -> list[float] | None:
    """Validation accuracy of the selection trimmed to its k best-weighted members, for
    k = 1..n; None when the members' validation predictions are not at hand."""
    preds = [np.asarray(candidates[i].val_pred) for i in selection.members]
    if not len(y_val) or any(len(p) != len(y_val) for p in preds):
        return None
    order = by_weight(selection.weights)
    out = []
    for k in range(1, len(order) + 1):
        keep = order[:k]
        won = vote(np.stack([preds[i] for i in keep]), [selection.weights[i] for i in keep],
                   n_classes)
        out.append(float((won == y_val).mean()))
    return out


def select_ensemble(candidates: Sequence[Candidate], y_val: np.ndarray, n_classes: int,
                    policy: Policy, front_end_ms: float = 0.0) -> Selection:
    """Choose members and weights for ``policy`` from candidates' validation predictions.

    Args:
        candidates: fitted models whose ``val_pred`` align with ``y_val``.
        y_val: true class indices of the validation rows.
        n_classes: number of classes K.
        policy: mode, latency budget and member cap.
        front_end_ms: the front end's single-row latency, added once to every estimate.
    """
    if not candidates:
        raise ValueError("no fitted candidates to choose from")
    preds = np.stack([np.asarray(c.val_pred) for c in candidates])
    if preds.shape[1] != len(y_val):
        raise ValueError("candidate validation predictions do not match y_val")
    weights = [member_weight(c.val_accuracy, n_classes) for c in candidates]
    lat = [float(c.latency_ms) for c in candidates]

    def evaluate(subset: tuple[int, ...]) -> tuple[float, float]:
        if len(subset) == 1:
            acc = float(candidates[subset[0]].val_accuracy)
        else:
            acc = float((vote(preds[list(subset)], [weights[i] for i in subset], n_classes)
                         == y_val).mean())
        est = front_end_ms + sum(lat[i] for i in subset) + VOTE_OVERHEAD_MS * (len(subset) > 1) * len(subset)
        return acc, est

    cap_all = min(len(candidates), 7)
    table = {s: evaluate(s) for k in range(1, cap_all + 1)
             for s in itertools.combinations(range(len(candidates)), k)}
    feasible = {s: v for s, v in table.items() if v[1] <= policy.latency_ms}

    def pack(s: tuple[int, ...], within: bool) -> Selection:
        acc, est = table[s]
        return Selection(members=list(s), weights=[weights[i] for i in s], val_accuracy=acc,
                         latency_ms=est, within_budget=within,
                         families=[candidates[i].family for i in s])

    if not feasible:
        fastest = min(range(len(candidates)), key=lambda i: lat[i])
        return pack((fastest,), False)
    # best-effort reference: most accurate, then fastest, then fewest members
    def be_key(s: tuple[int, ...]) -> tuple[float, float, int]:
        return (-feasible[s][0], feasible[s][1], len(s))

    capped = {s: v for s, v in feasible.items() if len(s) <= policy.max_models}
    if policy.mode == "best_effort":
        return pack(min(capped, key=be_key), True)
    reference = feasible[min(feasible, key=be_key)][0]
    ok = [s for s, v in capped.items() if v[0] >= reference - LOW_LATENCY_TOLERANCE - 1e-12]
    if not ok:
        return pack(min(capped, key=be_key), True)
    return pack(min(ok, key=lambda s: (capped[s][1], -capped[s][0], len(s))), True)
