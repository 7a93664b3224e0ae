"""The placement rule: budgets, speed, load, admission control, trimming, policies."""

from __future__ import annotations

import math
from dataclasses import replace

from actors.placement import AppDemand, MachineView, plan, predicted_ms

HERE = MachineView("nuc", local=True, up=True, speed=1.0, busy=0.0)
FAST = MachineView("vm", local=False, up=True, speed=4.0, busy=0.0, rtt_ms=5.0)
SLOW = MachineView("pi", local=False, up=True, speed=0.25, busy=0.0, rtt_ms=1.0)


def app(name: str = "a", budget: float = 50.0, lat: tuple[float, ...] = (4.0, 10.0),
        mode: str = "best_effort", rate: float = 0.0, current: str | None = None) -> AppDemand:
    return AppDemand(name, mode, budget, lat, rate, current)


def test_the_latency_model_scales_by_speed_queueing_and_round_trip() -> None:
    a = app()
    assert predicted_ms(a, 2, HERE, 0.0) == 10.0
    assert predicted_ms(a, 2, FAST, 0.0) == 10.0 / 4 + 5.0
    assert predicted_ms(a, 2, HERE, 0.5) == 20.0  # half busy: twice as long
    assert math.isinf(predicted_ms(a, 2, HERE, 0.95))


def test_best_effort_prefers_this_machine_and_low_latency_the_fastest() -> None:
    out = plan([app("be"), app("ll", mode="low_latency")], [HERE, FAST])
    assert out["be"].serving == "nuc" and out["be"].members == 2
    assert out["ll"].serving == "vm"  # 7.5 ms there against 10 ms here


def test_an_app_that_fits_only_on_the_faster_machine_goes_there() -> None:
    out = plan([app(budget=8.0)], [HERE, FAST, SLOW])
    assert out["a"].serving == "vm" and out["a"].members == 2
    assert out["a"].predicted_ms == {"nuc": 10.0, "vm": 7.5, "pi": 41.0}


def test_trimming_when_no_machine_holds_the_whole_ensemble() -> None:
    out = plan([app(budget=5.0)], [HERE, SLOW])
    assert out["a"].serving == "nuc" and out["a"].members == 1
    assert "trimmed to 1 of 2" in out["a"].reason


def test_an_ensemble_is_not_trimmed_below_its_accuracy_floor() -> None:
    three = replace(app(budget=5.0, lat=(4.0, 10.0, 12.0)), min_members=2)
    assert plan([replace(three, min_members=1)], [HERE, SLOW])["a"].members == 1
    out = plan([three], [HERE, SLOW])["a"]  # 1 member would fit, but misses min_accuracy
    assert out.serving is None
    assert out.reason.endswith("10 ms on nuc with 2 of 3 members (fewer would miss its "
                               "min_accuracy)")
    kept = plan([replace(three, current="nuc")], [HERE, SLOW])["a"]  # placed already: kept
    assert kept.serving == "nuc" and kept.members == 2


def test_an_impossible_budget_is_refused_with_the_numbers() -> None:
    out = plan([app(budget=0.5)], [HERE, FAST])
    assert out["a"].serving is None
    assert out["a"].reason == ("no machine meets the 0.5 ms budget: the fastest is 4 ms on nuc "
                               "with 1 of 2 members")


def test_a_loaded_machine_loses_its_apps_to_one_that_holds() -> None:
    busy_here = MachineView("nuc", local=True, up=True, speed=1.0, busy=0.8)
    out = plan([app(budget=20.0, current="nuc")], [busy_here, FAST])
    assert out["a"].serving == "vm"  # 50 ms here now


def test_admission_control_keeps_the_apps_already_there_within_budget() -> None:
    # "tight" is placed first (smaller budget) and leaves room for little: "heavy" would
    # push the machine to 60 % busy, and tight to 10 / 0.4 = 25 ms > 20 ms.
    tight = app("tight", budget=20.0, lat=(10.0,))
    heavy = app("heavy", budget=100.0, lat=(10.0,), rate=60.0)
    out = plan([heavy, tight], [HERE, SLOW])
    assert out["tight"].serving == "nuc"
    assert out["heavy"].serving is None
    assert "nuc is full: tight would take 25 ms (budget 20 ms)" in out["heavy"].reason
    # With a second machine, heavy goes there instead.
    out = plan([heavy, tight], [HERE, FAST])
    assert (out["tight"].serving, out["heavy"].serving) == ("nuc", "vm")


def test_an_app_whose_own_load_saturates_every_machine_is_refused() -> None:
    flood = app("flood", budget=1000.0, lat=(10.0,), rate=200.0)  # 2 s of work per second
    out = plan([flood], [HERE])
    assert out["flood"].serving is None and "past 90% busy" in out["flood"].reason


def test_machines_that_are_down_are_not_used() -> None:
    down = MachineView("vm", local=False, up=False, speed=4.0, busy=0.0, rtt_ms=1.0)
    out = plan([app(budget=8.0)], [HERE, down])
    assert out["a"].serving == "nuc" and out["a"].members == 1
    assert plan([app()], [])["a"].reason == "no machine is up"


def test_low_latency_stays_put_unless_another_machine_is_clearly_faster() -> None:
    near = replace(FAST, speed=1.1, rtt_ms=0.0)
    stay = plan([app(mode="low_latency", current="nuc")], [HERE, near])
    assert stay["a"].serving == "nuc"  # 10 ms against 9.1 ms: within 10 %
    move = plan([app(mode="low_latency", current="nuc")], [HERE, replace(near, speed=2.0)])
    assert move["a"].serving == "vm"


def test_best_effort_returns_home_only_with_a_margin() -> None:
    # 10 ms here against a 10.5 ms budget: it fits, but not by 10 %: stay on the peer.
    on_peer = app(budget=10.5, current="vm")
    assert plan([on_peer], [HERE, FAST])["a"].serving == "vm"
    assert plan([replace(on_peer, budget_ms=12.0)], [HERE, FAST])["a"].serving == "nuc"


def test_excluded_machines_are_not_used_for_that_app() -> None:
    out = plan([app(budget=8.0, lat=(4.0, 10.0)), app("b", budget=8.0)], [HERE, FAST])
    assert out["a"].serving == "vm"
    out = plan([replace(app(budget=8.0), exclude=frozenset({"vm"}))], [HERE, FAST])
    assert out["a"].serving == "nuc" and out["a"].members == 1


def test_a_placed_app_is_kept_not_refused_when_load_rises() -> None:
    swamped = replace(HERE, busy=0.95)
    out = plan([app(budget=12.0, current="nuc")], [swamped, SLOW])
    assert out["a"].serving == "nuc" and out["a"].members == 2
    assert "rather than refused" in out["a"].reason
    # Its peer died and nothing else holds: it comes home.
    out = plan([app(budget=12.0, current="vm")], [swamped, SLOW])
    assert out["a"].serving == "nuc"
    # Never placed: refused.
    assert plan([app(budget=12.0)], [swamped, SLOW])["a"].serving is None
