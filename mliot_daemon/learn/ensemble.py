"""Ensemble selection under a policy: which fitted candidates vote, with which weights.

The vote is ``argmax_c sum_i w_i [f_i(x) = c]`` (ties go to the lowest class index, in both the
reference and the fast predictor). Every candidate's validation predictions are out-of-fold
(cross-fitted: see ``features``), so no member is scored on rows it was fitted on.

``best_effort`` selection is greedy ensemble selection with replacement (Caruana et al. 2004,
as auto-sklearn and AutoGluon use it), bagged: on each of ``BAGS`` bootstrap resamples of the
validation rows, start from the most accurate candidate and repeatedly add (again, if it is
already in) the candidate that most improves the resample's vote, keeping the best prefix;
a member's weight is the number of times it was added over all bags. The earlier rule, the
best of all 127 subsets scored on the very rows that chose it, with fixed weights per member,
fitted those rows: every Table 4 ensemble came out below its best member on test. A bagged
count can only reward a member that helps on most resamples, and integer weights cannot be
tuned to a few rows. Each weight also carries ``TIE_BREAK`` x the member's validation
accuracy, so a tie of counts goes to the more accurate side, never to the lowest class. The
resulting vote replaces the most accurate single member only when it is significantly better
on the validation rows (McNemar's test on the rows where exactly one is right, one-sided 5 %).

Related rows (``groups``: the windows cut from one recording) are not independent evidence:
neighbouring windows are right or wrong together. With groups the bags resample whole groups
and the test is the same paired test on per-group sums (each row its own group is McNemar's):
on the watch set, a vote "significant" over 3,300 windows (z 1.9 to 3.5) was not over their 98
recordings (z 0.9 to 1.5), and it lost to its best member on test in 2 of 3 splits.

The latency budget and member cap bound every greedy step (a member is added only while the
distinct members' estimated latency, front end + each member's measured fast-predictor time
+ vote overhead, fits the budget, and their number ``max_models``); a single member is a
valid outcome, so the ensemble falls back to one model when voting does not help.
``low_latency``: the fastest subset of at most ``max_models`` members whose validation
accuracy, with weights ``member_weight``, is within 0.02 of the best-effort choice.

When nothing fits the budget, the fastest single member is chosen and ``within_budget`` is
False, so the caller can refuse or report it.

Hard or soft, by measurement per app: best-effort selection runs twice, once on the members'
out-of-fold class votes and once on their out-of-fold probabilities (``learn.soft``: the soft
vote ``sum_i w_i p_i(c)``), and keeps the soft vote only when it is significantly better on
the validation rows than the hard choice (the same McNemar test; otherwise the hard vote,
whose row path is fused and faster). ``low_latency`` compares its (hard) subsets with the
better of the two.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from mliot_daemon.learn.soft import probabilities

Mode = Literal["best_effort", "low_latency"]
LOW_LATENCY_TOLERANCE = 0.02
BAGS = 25  # bootstrap resamples of the validation rows for greedy selection
ROUNDS = 20  # greedy additions per bag (with replacement)
TIE_BREAK = 1e-3  # x validation accuracy, added to the integer counts (sum < 1 for 7 members)
SIGNIFICANCE = 1.645  # z of the one-sided 5 % test a vote must pass to replace the best member
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
    # label queries opened per hour at most (0: none); the server's pace, not the learner's
    queries_per_hour: int = field(default=4, metadata=_rule(
        lambda v: None if 0 <= v <= 3600 else "must be from 0 to 3600"))

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
    """What selection needs from a fitted model (``FittedModel`` satisfies it); without
    ``val_scores`` (None) the vote is hard."""

    family: str
    val_accuracy: float
    val_pred: np.ndarray
    latency_ms: float
    val_scores: np.ndarray | None
    sharpness: float


@dataclass
class Selection:
    """The chosen members (indices into the candidate list), weights and their estimates."""

    members: list[int]
    weights: list[float]
    val_accuracy: float
    latency_ms: float
    within_budget: bool
    families: list[str] = field(default_factory=list)
    sharpness: list[float] | None = None  # per member (learn.soft); None when unknown
    soft: bool = False  # the soft vote of the members' probabilities, else the hard vote

    @property
    def vote(self) -> str:
        """"soft" or "hard": how the members' votes are counted."""
        return "soft" if self.soft else "hard"


def member_weight(val_accuracy: float, n_classes: int) -> float:
    """Weighted-majority weight from validation accuracy (clipped to stay finite and > 0)."""
    p = float(np.clip(val_accuracy, 1.0 / n_classes + 1e-3, 1 - 1e-4))
    return float(max(np.log((n_classes - 1) * p / (1 - p)), 1e-3))


def vote(preds: np.ndarray, weights: Sequence[float], n_classes: int,
         probs: np.ndarray | None = None) -> np.ndarray:
    """Weighted vote of (members, rows) class indices -> (rows,) winners (ties: lowest class);
    with ``probs`` (members, rows, K), the soft vote of those probabilities instead."""
    return vote_with_share(preds, weights, n_classes, probs)[0]


def vote_with_share(preds: np.ndarray, weights: Sequence[float], n_classes: int,
                    probs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(winners, the winner's share of the total weight) of a weighted vote, per row."""
    score = np.zeros((preds.shape[1], n_classes))
    rows = np.arange(preds.shape[1])
    for i, w in enumerate(weights):
        _add(score, preds, probs, i, w)
    won = score.argmax(axis=1)
    return won, score[rows, won] / float(np.sum(weights))


def _add(score: np.ndarray, preds: np.ndarray, probs: np.ndarray | None, i: int,
         w: float) -> None:
    """Add member ``i``'s vote with weight ``w`` to (rows, K) ``score``, hard or soft."""
    if probs is None:
        score[np.arange(len(score)), preds[i]] += w
    else:
        score += w * probs[i]


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
    probs = member_probabilities([candidates[i] for i in selection.members],
                                 selection.sharpness if selection.soft else None)
    order = by_weight(selection.weights)
    out = []
    for k in range(1, len(order) + 1):
        keep = order[:k]
        won = vote(np.stack([preds[i] for i in keep]), [selection.weights[i] for i in keep],
                   n_classes, None if probs is None else probs[keep])
        out.append(float((won == y_val).mean()))
    return out


def member_probabilities(members: Sequence[Candidate], sharpness: Sequence[float] | None
                   ) -> np.ndarray | None:
    """(members, rows, K) out-of-fold probabilities of a soft vote's members; None if hard."""
    if sharpness is None:
        return None
    return np.stack([probabilities(m.val_scores, a)
                     for m, a in zip(members, sharpness, strict=True)])


def greedy_counts(preds: np.ndarray, y: np.ndarray, n_classes: int, allowed: Any,
                  rounds: int = ROUNDS, probs: np.ndarray | None = None) -> np.ndarray:
    """Greedy selection with replacement on one set of rows: how often each candidate was
    added in the best prefix. ``preds`` is (candidates, rows), ``probs`` (candidates, rows, K)
    for a soft vote; ``allowed(members)`` says whether a set of distinct members fits the
    budget and the cap."""
    m, n = preds.shape
    acc = (preds == y).mean(axis=1)
    fits = [i for i in range(m) if allowed((i,))]
    counts = np.zeros(m, dtype=np.int64)
    if not fits:
        return counts
    first = max(fits, key=lambda i: (acc[i], -i))
    counts[first] = 1
    score = np.zeros((n, n_classes))
    _add(score, preds, probs, first, 1 + TIE_BREAK * acc[first])
    best, best_counts = (score.argmax(axis=1) == y).mean(), counts.copy()
    for _ in range(rounds):
        trial = []
        for i in range(m):
            members = tuple(np.flatnonzero(counts).tolist() + ([i] if not counts[i] else []))
            if not allowed(members):
                continue
            s = score.copy()
            _add(s, preds, probs, i, 1 + TIE_BREAK * acc[i])
            trial.append(((s.argmax(axis=1) == y).mean(), -i, i, s))
        if not trial:
            break
        a, _, i, score = max(trial, key=lambda t: (t[0], t[1]))
        counts[i] += 1
        if a > best + 1e-12:
            best, best_counts = a, counts.copy()
    return best_counts


def select_ensemble(candidates: Sequence[Candidate], y_val: np.ndarray, n_classes: int,
                    policy: Policy, front_end_ms: float = 0.0, seed: int = 0,
                    groups: np.ndarray | None = None) -> Selection:
    """Choose members and weights for ``policy`` from candidates' validation predictions.

    Args:
        candidates: fitted models whose out-of-fold ``val_pred`` align with ``y_val``.
        y_val: true class indices of the validation rows.
        n_classes: number of classes K.
        policy: mode, latency budget and member cap.
        front_end_ms: the front end's single-row latency, added once to every estimate.
        seed: seeds the bootstrap resamples (the selection is deterministic given it).
        groups: one id per validation row (its recording), or None: rows are independent.
    """
    if not candidates:
        raise ValueError("no fitted candidates to choose from")
    preds = np.stack([np.asarray(c.val_pred) for c in candidates]).astype(np.intp)
    if preds.shape[1] != len(y_val):
        raise ValueError("candidate validation predictions do not match y_val")
    y_val = np.asarray(y_val)
    group = _group_index(groups, len(y_val))
    lat = [float(c.latency_ms) for c in candidates]
    accuracy = [float(c.val_accuracy) for c in candidates]

    def latency(members: Sequence[int]) -> float:
        overhead = VOTE_OVERHEAD_MS * len(members) if len(members) > 1 else 0.0
        return front_end_ms + sum(lat[i] for i in members) + overhead

    def within(cap: int) -> Any:
        return lambda members: len(members) <= cap and latency(members) <= policy.latency_ms

    allowed = within(policy.max_models)
    soft_probs = _candidate_probabilities(candidates, len(y_val), n_classes)

    def pack(members: Sequence[int], weights: Sequence[float], fits: bool,
             probs: np.ndarray | None = None) -> Selection:
        members = list(members)
        soft = probs is not None and len(members) > 1  # one member: its own class, hard
        won = vote(preds[members], weights, n_classes, probs[members] if soft else None)
        return Selection(members=members, weights=[float(w) for w in weights],
                         val_accuracy=float((won == y_val).mean()), latency_ms=latency(members),
                         within_budget=fits, families=[candidates[i].family for i in members],
                         sharpness=[float(getattr(candidates[i], "sharpness", 1.0))
                                    for i in members], soft=soft)

    if not any(allowed((i,)) for i in range(len(candidates))):
        fastest = min(range(len(candidates)), key=lambda i: lat[i])
        return pack([fastest], [member_weight(accuracy[fastest], n_classes)], False)
    # low_latency measures itself against the best-effort choice of any size (up to 7)
    reference_cap = policy.max_models if policy.mode == "best_effort" else 7
    best_effort = _bagged(preds, y_val, group, n_classes, within(reference_cap), accuracy, seed,
                          pack)
    if soft_probs is not None:
        soft = _bagged(preds, y_val, group, n_classes, within(reference_cap), accuracy, seed,
                       pack, soft_probs)
        # the soft vote, like any vote, must be significantly better than what it replaces:
        # chosen on "higher", digits served a soft vote 0.2 point below the hard one on test
        right = [vote(preds[s.members], s.weights, n_classes,
                      soft_probs[s.members] if s.soft else None) == y_val
                 for s in (soft, best_effort)]
        if significantly_better(*right, group):
            best_effort = soft
    if policy.mode == "best_effort":
        return best_effort
    weights = [member_weight(a, n_classes) for a in accuracy]
    subsets = [s for k in range(1, min(len(candidates), policy.max_models) + 1)
               for s in itertools.combinations(range(len(candidates)), k) if allowed(s)]
    scored = [pack(s, [weights[i] for i in s], True) for s in subsets]
    floor = best_effort.val_accuracy - LOW_LATENCY_TOLERANCE - 1e-12
    ok = [sel for sel in scored if sel.val_accuracy >= floor]
    if not ok:  # nothing small is close: the most accurate small set
        return max(scored, key=lambda sel: (sel.val_accuracy, -sel.latency_ms,
                                            -len(sel.members)))
    return min(ok, key=lambda sel: (sel.latency_ms, -sel.val_accuracy, len(sel.members)))


def _candidate_probabilities(candidates: Sequence[Candidate], n: int, n_classes: int
                             ) -> np.ndarray | None:
    """(candidates, rows, K) out-of-fold probabilities for the soft vote; None when a
    candidate has no out-of-fold scores (the quick first model) or there is one candidate."""
    scores = [getattr(c, "val_scores", None) for c in candidates]
    if len(candidates) < 2 or any(s is None or np.shape(s) != (n, n_classes) for s in scores):
        return None
    return np.stack([probabilities(s, c.sharpness)
                     for s, c in zip(scores, candidates, strict=True)])


def _group_index(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Group number (0..G-1) per row; without groups every row is its own."""
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups needs one id per validation row ({n}), got {groups.shape}")
    return np.unique(groups, return_inverse=True)[1].reshape(n)


def _bagged(preds: np.ndarray, y: np.ndarray, group: np.ndarray, n_classes: int, allowed: Any,
            accuracy: Sequence[float], seed: int, pack: Any,
            probs: np.ndarray | None = None) -> Selection:
    """Greedy selection summed over bootstrap resamples of the groups (see the module
    docstring), on class votes or, with ``probs``, on probabilities; members beyond the budget
    or the cap (the union of the bags may exceed what each bag kept) are dropped, fewest
    additions first."""
    rng = np.random.default_rng(seed)
    total = np.zeros(len(preds), dtype=np.int64)
    n_groups = int(group.max()) + 1 if len(group) else 0
    by_group = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[by_group], np.arange(n_groups + 1))
    for _ in range(BAGS):
        drawn = rng.integers(0, n_groups, n_groups)
        rows = (by_group[drawn] if n_groups == len(y) else  # one row each: the same draw
                np.concatenate([by_group[starts[g]:starts[g + 1]] for g in drawn]))
        total += greedy_counts(preds[:, rows], y[rows], n_classes, allowed,
                               probs=None if probs is None else probs[:, rows])
    members = [int(i) for i in np.argsort(-total, kind="stable") if total[i] > 0]
    while len(members) > 1 and not allowed(members):
        members.pop()
    members.sort()
    weights = [total[i] + TIE_BREAK * accuracy[i] for i in members]
    chosen = pack(members, weights, True, probs)
    # A vote replaces the most accurate single member only on significant evidence: McNemar's
    # one-sided test on the rows where exactly one of them is right. Without it, the vote won
    # on a handful of validation rows and lost on test (digits: 0.9759 against 0.9852).
    single = max((i for i in range(len(preds)) if allowed((i,))), key=lambda i: accuracy[i])
    if len(members) > 1:
        vote_right = vote(preds[members], weights, n_classes,
                          None if probs is None else probs[members]) == y
        if not significantly_better(vote_right, preds[single] == y, group):
            return pack([single], [1 + TIE_BREAK * accuracy[single]], True)
    return chosen


def significantly_better(a_right: np.ndarray, b_right: np.ndarray,
                         group: np.ndarray | None = None) -> bool:
    """The one-sided paired test at 5 %: is A right significantly more often than B? Per group
    (``_group_index``; default every row its own) d = A's right rows - B's; A wins when
    sum(d) > z * sqrt(sum(d^2)). With one row per group that is McNemar's test on the rows
    where exactly one of A and B is right."""
    d = np.asarray(a_right, dtype=np.int64) - np.asarray(b_right, dtype=np.int64)
    if group is not None:
        d = np.bincount(group, d)
    return float(d.sum()) > SIGNIFICANCE * float(np.sqrt((d * d).sum()))
