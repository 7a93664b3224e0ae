"""Placement on a simulated fleet of the paper's machines (Table 3): which app is served where.

A simulation, not a measurement of placement: no daemon and no network. The scheduler's
pure rule, ``actors.placement.plan``, gets a ``MachineView`` for each of the five
Table-3 machines and an ``AppDemand`` for each of the paper's three applications under
``best_effort`` and ``low_latency``. This bench records its decisions in several fleet states.
What is measured: the ensembles' latencies (``bench/results/table4.json``, this machine) and
this machine's speed (``learn.plan.machine_speed``, the daemon's own yardstick). What is
assumed, and why, is in ``bench/placement_fleet.py`` (the fleet, speeds, apps) and in
the JSON.

Capacity. Each mliot daemon serves on one event loop, with micro-batching on that loop. The
monitor's ``busy`` is the larger of the loop's share of ONE core and the daemon's share of its
cores. The rule adds rate x service time to ``busy``, so a machine's serving capacity is one
core at its speed: cores add training capacity, not serving capacity. The "what if" scenario
shows how placement would change if a daemon served on every core (``_added_load`` divided by
the core count). The pure rule cannot express that; see the report.

Checks. Every placed app is checked against its budget at the final load. Every refused app is
re-planned alone on the final state. If it fits there and every app already on that machine
still meets its budget with the members it was given, the refusal was spurious: it came from
the rule, not from capacity.

--quick: one speed sample and no sensitivity runs (the scenarios are the same).
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

from actors import placement
from actors.placement import AppDemand, Decision, MachineView, plan, predicted_ms
from bench.placement_fleet import (
    APPS,
    CLIENT_ACCESS_MS,
    FLEET,
    LOCAL,
    MODES,
    SITES,
    SOURCES,
    STREAMS,
    demands,
    fleet_views,
    ladders,
    machine_rows,
)
from mliot_daemon.learn.plan import machine_speed

RESULTS = Path(__file__).resolve().parent / "results"

SCENARIOS_PAPER = [
    ("idle", "idle fleet", {}, set()),
    ("nuc70", "the NUC 70 % busy", {"m2-nuc": 0.7}, set()),
    ("nuc95", "the NUC saturated (95 %, e.g. training on every core)", {"m2-nuc": 0.95}, set()),
    ("nuc95_pi_down", "the NUC saturated and the Pi down", {"m2-nuc": 0.95}, {"m1-pi4"}),
]
SCENARIOS_MANY = [
    ("many_idle", "idle fleet", {}, set(), False),
    ("many_nuc70", "the NUC 70 % busy", {"m2-nuc": 0.7}, set(), False),
    ("many_pi_down", "the Pi down", {}, {"m1-pi4"}, False),
    ("many_m4_down", "the 8-core VM down", {}, {"m4-vm8"}, False),
    ("many_nuc70_pi_down", "the NUC 70 % busy and the Pi down", {"m2-nuc": 0.7}, {"m1-pi4"},
     False),
    ("many_all_cores", "idle fleet, WHAT IF a daemon served on every core", {}, set(), True),
]
# After many_nuc70, the NUC's other work ends: every app starts where that plan put it (its
# load is in its machine's measured busy), and the rule decides who moves back.
RECOVERED = ("many_recovered", "the NUC's 70 % gone; apps start where many_nuc70 put them")


def load_of(app: AppDemand, k: int, m: MachineView, cores: float = 1.0) -> float:
    """Share of m's serving capacity that app adds: request rate x service time (the rule's
    own definition), over ``cores`` serving threads."""
    return app.rate_hz * app.latency_ref_ms[k - 1] / m.speed / 1000.0 / cores


def simulate(apps: list[AppDemand], views: list[MachineView], all_cores: bool = False
             ) -> dict[str, Any]:
    """Run the rule; return decisions with predicted latency at the final load, the final
    utilisation per machine and the checks described in the module docstring."""
    cores = {f["name"]: float(f["cores"]) if all_cores else 1.0 for f in FLEET}
    by_name = {m.name: m for m in views}
    if all_cores:
        original = placement._added_load
        per_core = lambda a, k, m: original(a, k, m) / cores[m.name]  # noqa: E731
        with mock.patch.object(placement, "_added_load", per_core):
            decisions = plan(apps, views)
    else:
        decisions = plan(apps, views)
    load = {m.name: min(max(m.busy, 0.0), 1.0) for m in views}
    on: dict[str, list[tuple[AppDemand, int]]] = {m.name: [] for m in views}
    for a in apps:
        d = decisions[a.name]
        if d.serving is not None:
            k = d.members or a.n_members
            if a.current != d.serving:  # an app where it runs already is in that busy
                load[d.serving] += load_of(a, k, by_name[d.serving], cores[d.serving])
            on[d.serving].append((a, k))
    rows, within = [], True
    for a in apps:
        d = decisions[a.name]
        row = _row(a, d)
        if a.current is not None or d.serving is None:
            row["moved"] = a.current is not None and d.serving != a.current
        if d.serving is not None:
            ms = predicted_ms(a, row["members"], by_name[d.serving], load[d.serving])
            row["predicted_ms"] = round(ms, 4) if ms != float("inf") else None
            row["within_budget"] = ms <= a.budget_ms
            within = within and row["within_budget"]
        rows.append(row)
    for row, a in zip(rows, apps, strict=True):
        if row["serving"] is None:  # the rule's "fastest" leaves out the app's own load
            own = {m.name: predicted_ms(a, 1, m, load[m.name] + load_of(a, 1, m, cores[m.name]))
                   for m in views if m.up and m.speed > 0}
            finite = {n: v for n, v in own.items() if v != float("inf")}
            best = min(finite, key=finite.get) if finite else None
            row["with_own_load"] = {
                "saturated": [n for n, v in own.items() if v == float("inf")],
                "best": None if best is None else {"machine": best, "members": 1,
                                                   "ms": round(finite[best], 4)}}
    spurious = []
    final = [replace(m, busy=min(load[m.name], 1.0)) for m in views]
    for a in apps:
        if decisions[a.name].serving is not None:
            continue
        alone = plan([a], final)[a.name]
        if alone.serving is None:
            continue
        m = by_name[alone.serving]
        k = alone.members or a.n_members
        after = load[m.name] + load_of(a, k, m, cores[m.name])
        if all(predicted_ms(o, ko, m, after) <= o.budget_ms for o, ko in on[m.name]):
            spurious.append({"app": a.name, "refusal": decisions[a.name].reason,
                             "fits_on": m.name, "members": k,
                             "predicted_ms": round(predicted_ms(a, k, m, after), 4),
                             "others_there": [f"{o.name} ({ko}/{o.n_members})"
                                              for o, ko in on[m.name]]})
    count = Counter(r["serving"] or "refused" for r in rows)
    return {"decisions": rows,
            "utilisation": {n: round(u, 4) for n, u in load.items()},
            "apps_per_machine": {n: count.get(n, 0) for n in [*by_name, "refused"]},
            "trimmed": sum(1 for r in rows if r["serving"] and r["members"] < r["n_members"]),
            "all_placed_within_budget": within,
            "spurious_refusals": spurious}


def _row(a: AppDemand, d: Decision) -> dict[str, Any]:
    return {"app": a.name, "mode": a.mode, "budget_ms": a.budget_ms,
            "rate_hz": round(a.rate_hz, 3), "serving": d.serving,
            "members": d.members, "n_members": a.n_members, "reason": d.reason}


def _where(serving: str | None, members: int | None) -> str:
    return f"{serving} ({members})" if serving and serving != "refused" else "refused"


def run_all(lad: dict[tuple[str, str], dict[str, Any]], s_here: float,
            ratio_scale: dict[str, float] | None = None, rtt_model: str = "star"
            ) -> list[dict[str, Any]]:
    out = []
    for budgets in ("budget", "tight"):
        apps = demands(lad, s_here, budgets)
        for sid, title, busy, down in SCENARIOS_PAPER:
            views = fleet_views(s_here, busy, down, ratio_scale, rtt_model)
            out.append({"id": f"{budgets}_{sid}", "workload": "paper apps",
                        "budgets": "paper" if budgets == "budget" else "tight",
                        "title": title, "busy": busy, "down": sorted(down),
                        **simulate(apps, views)})
    apps = demands(lad, s_here, "budget", sites=SITES)
    for sid, title, busy, down, all_cores in SCENARIOS_MANY:
        views = fleet_views(s_here, busy, down, ratio_scale, rtt_model)
        out.append({"id": sid, "workload": f"{SITES} sites", "budgets": "paper", "title": title,
                    "busy": busy, "down": sorted(down), "all_cores": all_cores,
                    **simulate(apps, views, all_cores)})
    before = next(sc for sc in out if sc["id"] == "many_nuc70")
    where = {r["app"]: r["serving"] for r in before["decisions"]}
    busy = {n: round(u - SCENARIOS_MANY[1][2].get(n, 0.0), 6)
            for n, u in before["utilisation"].items()}
    views = fleet_views(s_here, busy, set(), ratio_scale, rtt_model)
    res = simulate([replace(a, current=where[a.name]) for a in apps], views)
    out.append({"id": RECOVERED[0], "workload": f"{SITES} sites", "budgets": "paper",
                "title": RECOVERED[1], "busy": busy, "down": [], "all_cores": False,
                "moved": sum(1 for r in res["decisions"] if r.get("moved")), **res})
    return out


def _kind(app: str) -> str:
    """audio_be_s03 -> audio_be: the copies of one app are interchangeable."""
    return app.rsplit("_", 1)[0] if app.count("_") > 1 else app


def _classes(sc: dict[str, Any]) -> Counter[tuple[str, str, int]]:
    return Counter((_kind(r["app"]), r["serving"] or "refused", r["members"] or 0)
                   for r in sc["decisions"])


def sensitivity(lad: dict[tuple[str, str], dict[str, Any]], s_here: float,
                base: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How many apps land elsewhere (another machine, or another member count) under other
    assumptions. Copies of one app in the many-apps workload are interchangeable, so an app
    counts as changed only when the number of its kind on (machine, members) changes."""
    was = {sc["id"]: _classes(sc) for sc in base}
    variants = [
        ("NUC and Pi speeds halved", {"m1-pi4": 0.5, "m2-nuc": 0.5}, "star"),
        ("NUC and Pi speeds doubled", {"m1-pi4": 2.0, "m2-nuc": 2.0}, "star"),
        ("Pi speed halved", {"m1-pi4": 0.5}, "star"),
        ("cloud speeds halved", {"m3-vm2": 0.5, "m4-vm8": 0.5, "m5-vm16": 0.5}, "star"),
        ("RTT lower bound: |client-peer - client-NUC|", None, "low"),
        ("RTT upper bound: client-peer + client-NUC", None, "high"),
    ]
    out = []
    for label, scale, rtt in variants:
        res = run_all(lad, s_here, scale, rtt)
        changed: dict[str, int] = {}
        examples: dict[str, list[str]] = {}
        for sc in res:
            now, before = _classes(sc), was[sc["id"]]
            n = sum((now - before).values())
            if n:
                changed[sc["id"]] = n
                examples[sc["id"]] = [
                    f"{k[0]}: {_where(k[1], k[2])} {before.get(k, 0)} → {now.get(k, 0)}"
                    for k in sorted(set(now) | set(before), key=str)
                    if now.get(k, 0) != before.get(k, 0)][:6]
        out.append({"variant": label, "changed": sum(changed.values()),
                    "of": sum(len(sc["decisions"]) for sc in base), "by_scenario": changed,
                    "examples": examples,
                    "refused": sum(sc["apps_per_machine"]["refused"] for sc in res),
                    "spurious_refusals": sum(len(sc["spurious_refusals"]) for sc in res)})
    return out


def run(quick: bool) -> dict[str, Any]:
    table4 = json.loads((RESULTS / "table4.json").read_text())
    la = [round(v, 2) for v in os.getloadavg()]
    measure = getattr(machine_speed, "__wrapped__", machine_speed)  # past its lru_cache
    samples = [measure() for _ in range(1 if quick else 5)]
    s_here = statistics.median(samples)
    lad = ladders(table4)
    scenarios = run_all(lad, s_here)
    sens = [] if quick else sensitivity(lad, s_here, scenarios)
    for sc in scenarios:  # the many-apps rows repeat their app's spec: keep what differs
        if sc["workload"] != "paper apps":
            for row in sc["decisions"]:
                for k in ("mode", "budget_ms", "rate_hz", "within_budget"):
                    row.pop(k, None)
                if row["serving"] is not None and row["members"] == row["n_members"]:
                    row.pop("reason")
    local_rtt = next(f["client_rtt_ms"] for f in FLEET if f["name"] == LOCAL)
    return {
        "load_avg_at_start": la,
        "this_machine": {"speed": round(s_here, 4), "speed_samples": [round(v, 4) for v in samples],
                         "speed_how": "mliot_daemon.learn.plan.machine_speed (a ridge fit against "
                                      "the learning core's cost table), median of the samples",
                         "table4_measured": {"date": table4["machine"]["date"],
                                             "load_avg_at_start": table4.get("load_avg_at_start"),
                                             "quick": table4.get("quick")}},
        "fleet": machine_rows(fleet_views(s_here, {}, set()), s_here),
        "rtt_model": {"local": LOCAL, "client_access_ms": CLIENT_ACCESS_MS,
                      "rule": "rtt(NUC, X) = rtt(client, X) + rtt(client, NUC) - 2 x a_client "
                              f"= rtt(client, X) + {local_rtt - 2 * CLIENT_ACCESS_MS:g} ms",
                      "bounds": "triangle inequality: |rtt(c,X) - rtt(c,NUC)| to rtt(c,X) + "
                                "rtt(c,NUC); both bounds are sensitivity variants",
                      "client_to_nuc_ms": local_rtt},
        "capacity_model": "one serving event loop per daemon: busy += rate x service / speed; "
                          "cores add training, not serving, capacity (scenario many_all_cores: "
                          "what if every core served)",
        "apps": [{"app": spec["app"], "paper_app": spec["paper"], "stand_in": spec["row"],
                  "mode": mode, "members": lad[(spec["app"], mode)]["members"],
                  "latency_ms_here": [round(v, 4) for v in lad[(spec["app"], mode)]["latency_ms"]],
                  "latency_basis": lad[(spec["app"], mode)]["basis"],
                  "p99_whole_ms": lad[(spec["app"], mode)]["p99_whole_ms"],
                  "stream": spec["stream"], "stream_hz": round(spec["stream_hz"], 4),
                  "budget_ms": spec["budget"][mode], "tight_budget_ms": spec["tight"][mode],
                  "budget_source": spec["budget_source"]}
                 for spec in APPS for mode in MODES],
        "many_apps": {"sites": SITES, "streams_per_app": STREAMS,
                      "apps": SITES * len(APPS) * len(MODES)},
        "scenarios": scenarios,
        "sensitivity": sens,
        "sources": SOURCES,
        "spurious_refusals_total": sum(len(sc["spurious_refusals"]) for sc in scenarios),
    }
