"""Ensemble selection under a policy, on synthetic candidates with known predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from mliot_daemon.learn.ensemble import (
    Policy,
    by_weight,
    member_weight,
    select_ensemble,
    significantly_better,
    trim_accuracies,
    vote,
)


@dataclass
class Cand:
    family: str
    val_pred: np.ndarray
    latency_ms: float

    @property
    def val_accuracy(self) -> float:
        return float((self.val_pred == Y).mean())


rng = np.random.default_rng(1)
Y = rng.integers(0, 3, size=600)


def noisy(err: float, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    p = Y.copy()
    wrong = r.random(len(Y)) < err
    p[wrong] = (Y[wrong] + r.integers(1, 3, size=wrong.sum())) % 3
    return p


CANDS = [Cand("slow_a", noisy(0.2, 1), 5.0), Cand("slow_b", noisy(0.2, 2), 6.0),
         Cand("slow_c", noisy(0.2, 3), 7.0), Cand("fast", noisy(0.25, 4), 0.5),
         Cand("mid", noisy(0.22, 5), 1.0)]


def test_weights_grow_with_accuracy():
    assert member_weight(0.9, 10) > member_weight(0.6, 10) > 0
    assert member_weight(1.0, 2) < float("inf")
    assert vote(np.array([[0, 1], [1, 1], [1, 0]]), [1.0, 1.0, 1.5], 2).tolist() == [1, 1]


def test_best_effort_votes_when_it_helps_and_beats_every_member():
    sel = select_ensemble(CANDS, Y, 3, Policy())
    assert len(sel.members) >= 3
    assert sel.val_accuracy > max(c.val_accuracy for c in CANDS)
    assert sel.within_budget


def test_tight_budget_gives_fewer_faster_members():
    loose = select_ensemble(CANDS, Y, 3, Policy(latency_ms=100.0))
    tight = select_ensemble(CANDS, Y, 3, Policy(latency_ms=1.6))
    assert len(tight.members) < len(loose.members)
    assert set(tight.families) <= {"fast", "mid"}
    assert tight.latency_ms <= 1.6
    assert tight.val_accuracy >= max(c.val_accuracy for c in CANDS if c.latency_ms <= 1.6)


def test_nothing_fits_falls_back_to_fastest_and_says_so():
    sel = select_ensemble(CANDS, Y, 3, Policy(latency_ms=0.1))
    assert sel.families == ["fast"] and not sel.within_budget


def test_front_end_cost_counts_once():
    sel = select_ensemble(CANDS, Y, 3, Policy(latency_ms=2.0), front_end_ms=1.2)
    assert sel.latency_ms <= 2.0 and sel.families == ["fast"]


def test_single_best_when_voting_does_not_help():
    good = Cand("good", noisy(0.02, 9), 1.0)
    bad = [Cand(f"bad{i}", noisy(0.6, 10 + i), 1.0) for i in range(3)]
    sel = select_ensemble([good, *bad], Y, 3, Policy())
    assert sel.families == ["good"]


def test_low_latency_is_fastest_within_tolerance():
    cands = [*CANDS, Cand("fast_good", noisy(0.01, 7), 0.8)]
    be = select_ensemble(cands, Y, 3, Policy())
    ll = select_ensemble(cands, Y, 3, Policy("low_latency", latency_ms=50.0))
    assert len(ll.members) <= 3
    assert ll.val_accuracy >= be.val_accuracy - 0.02
    assert ll.latency_ms <= be.latency_ms
    assert ll.families == ["fast_good"]


def test_low_latency_without_a_close_small_set_takes_the_most_accurate_small_one():
    ll = select_ensemble(CANDS, Y, 3, Policy("low_latency", latency_ms=50.0))
    assert len(ll.members) == 3  # no <= 3 subset is within 0.02 of the 5-member vote here


def test_policy_defaults_and_validation():
    assert Policy("low_latency") == Policy("low_latency", 10.0, 3)
    assert Policy("best_effort").max_models == 7
    with pytest.raises(ValueError, match="unknown policy"):
        Policy("fastest")
    with pytest.raises(ValueError, match="no fitted candidates"):
        select_ensemble([], Y, 3, Policy())


def test_trim_accuracies_follow_the_members_best_weight_first() -> None:
    sel = select_ensemble(CANDS, Y, 3, Policy("best_effort", latency_ms=100.0))
    acc = trim_accuracies(CANDS, sel, Y, 3)
    assert acc is not None and len(acc) == len(sel.members) > 1
    assert acc[-1] == pytest.approx(sel.val_accuracy)  # all members: the selection itself
    best = sel.members[by_weight(sel.weights)[0]]
    assert acc[0] == pytest.approx(CANDS[best].val_accuracy)  # one member: the heaviest alone
    assert acc[-1] > acc[0]  # here voting helps, so trimming costs accuracy
    stale = [Cand(c.family, np.empty(0, dtype=int), c.latency_ms) for c in CANDS]
    assert trim_accuracies(stale, sel, Y, 3) is None  # predictions not at hand: unknown


def _in_sample_best_subset(preds: list[np.ndarray], y: np.ndarray, k: int):
    """The rule selection used to follow: the best of every subset, scored on the rows that
    choose it, with fixed weights per member."""
    import itertools

    w = [member_weight(float((p == y).mean()), k) for p in preds]
    best = None
    for size in range(1, len(preds) + 1):
        for s in itertools.combinations(range(len(preds)), size):
            acc = (vote(np.stack([preds[i] for i in s]), [w[i] for i in s], k) == y).mean()
            if best is None or acc > best[0] + 1e-12:
                best = (acc, s, [w[i] for i in s])
    return best[1], best[2]


def _correlated_world(seed: int, n_val: int, n_fresh: int):
    """One solid member (85 %) and six weak ones (65 %) that share most of their errors: on
    fresh rows the solid member alone is best, and a few weak members that agree outvote it.
    Returns (y_val, y_fresh, validation predictions, fresh predictions)."""
    r = np.random.default_rng(seed)
    n = n_val + n_fresh
    y = r.integers(0, 3, n)

    def noisy(err: float) -> np.ndarray:
        p = y.copy()
        wrong = r.random(n) < err
        p[wrong] = (y[wrong] + r.integers(1, 3, wrong.sum())) % 3
        return p

    solid, weak = noisy(0.15), noisy(0.35)
    members = [solid] + [np.where(r.random(n) < 0.5, noisy(0.35), weak) for _ in range(6)]
    return (y[:n_val], y[n_val:], [m[:n_val] for m in members],
            [m[n_val:] for m in members])


def test_selection_resists_fitting_its_validation_rows():
    """On 150 validation rows, the best of 127 subsets scored on those rows picks lucky votes
    of correlated weak members; bagged greedy selection keeps to what holds on fresh rows."""
    chosen, in_sample, best_member = [], [], []
    for seed in range(30):
        y_val, y_fresh, val, fresh = _correlated_world(seed, 150, 5000)
        cands = [_Scored(str(i), p, float((p == y_val).mean())) for i, p in enumerate(val)]
        sel = select_ensemble(cands, y_val, 3, Policy())
        chosen.append((vote(np.stack([fresh[i] for i in sel.members]), sel.weights, 3)
                       == y_fresh).mean())
        members, weights = _in_sample_best_subset(val, y_val, 3)
        in_sample.append((vote(np.stack([fresh[i] for i in members]), weights, 3)
                          == y_fresh).mean())
        best_member.append(max((p == y_fresh).mean() for p in fresh))
    assert np.mean(chosen) >= np.mean(in_sample) + 0.005
    assert np.mean(chosen) >= np.mean(best_member) - 0.002


@dataclass
class _Scored:
    family: str
    val_pred: np.ndarray
    val_accuracy: float
    latency_ms: float = 0.1


def test_a_group_of_related_rows_is_one_piece_of_evidence():
    """Windows cut from one recording are right or wrong together: with ``groups``, 40
    recordings of 25 identical windows each (in any order) are chosen from exactly as 40 rows
    are; counted as 1,000 independent rows, the same evidence looks strong enough for a vote."""
    for seed in range(5):
        y, _, val, _ = _correlated_world(seed, 40, 1)
        alone = select_ensemble([_Scored(str(i), p, float((p == y).mean()))
                                 for i, p in enumerate(val)], y, 3, Policy())
        order = np.random.default_rng(seed).permutation(40 * 25)
        windows = np.repeat(y, 25)[order]
        recording = np.repeat(np.arange(100, 140), 25)[order]
        cands = [_Scored(str(i), np.repeat(p, 25)[order], float((p == y).mean()))
                 for i, p in enumerate(val)]
        grouped = select_ensemble(cands, windows, 3, Policy(), groups=recording)
        assert (grouped.members, grouped.weights) == (alone.members, alone.weights)
        assert grouped.val_accuracy == pytest.approx(alone.val_accuracy)
        if seed == 0:
            assert len(alone.members) == 1
            assert len(select_ensemble(cands, windows, 3, Policy()).members) > 1
    with pytest.raises(ValueError, match="one id per validation row"):
        select_ensemble(cands, windows, 3, Policy(), groups=recording[:10])


def test_significance_counts_groups_not_rows():
    a = np.array([1] * 30 + [0] * 10, dtype=bool)  # A right on 30 rows, B on the other 10
    b = ~a
    assert significantly_better(a, b)  # 40 independent rows: 30 against 10
    one_each = np.arange(40)
    assert significantly_better(a, b, one_each)  # the same test, spelled with groups
    # the same rows as 4 recordings: 3 where A is right, 1 where B is: no evidence
    assert not significantly_better(a, b, np.repeat(np.arange(4), 10))
