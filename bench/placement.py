"""Placement on a simulated fleet of the paper's machines (Table 3): which app is served where.

A simulation, not a measurement of placement: no daemon and no network. The scheduler's
pure rule, ``actors.placement.plan``, gets a ``MachineView`` for each of the five
Table-3 machines and an ``AppDemand`` for each of the paper's three applications under
``best_effort`` and ``low_latency``. This bench records its decisions in several fleet states.
What is measured: the ensembles' latencies (``bench/results/table4.json``, this machine) and
this machine's speed (``learn.plan.machine_speed``, the daemon's own yardstick). What is
assumed, and why, is in the constants below and in the JSON.

The fleet. The daemon runs on the NUC (M2, ``local``); the Raspberry Pi (M1) is a peer on the
same LAN, and the three cloud VMs (M3-M5) are peers. The paper gives RTTs from the client, not
from the NUC. A star model converts them: rtt(client, X) = a_client + a_X, so
rtt(NUC, X) = rtt(client, X) + rtt(client, NUC) - 2 a_client. With a_client = half the
client-Pi RTT (1.5 ms), that is the client's RTT plus 11 ms. The triangle inequality bounds
it between |rtt(client, X) - rtt(client, NUC)| and their sum; the sensitivity runs use both
bounds. The client-NUC hop (14 ms) is paid by every request whichever machine serves it. The
latency budget does not count it (DESIGN: "time in mliot on the machine that serves it, plus
the round trip to a peer").

Speeds. ``speed`` is a single-thread factor against the reference machine. This machine's
factor is measured; each Table-3 machine gets an assumed ratio to this machine (see
``RATIOS``). The absolute factor cancels out of every prediction: latency_ref = measured x
s_here, and service on m = latency_ref / (ratio_m x s_here). Only the ratios matter.

Capacity. Each mliot daemon serves on one event loop, with micro-batching on that loop. The
monitor's ``busy`` is the larger of the loop's share of ONE core and the daemon's share of its
cores. The rule adds rate x service time to ``busy``, so a machine's serving capacity is one
core at its speed: cores add training capacity, not serving capacity. The "what if" scenario
shows how placement would change if a daemon served on every core (``_added_load`` divided by
the core count). The pure rule cannot express that; see the report.

Apps. For each of the paper's three apps, this repo's measured stand-in from table4: audio
(espeak digits, log-mel front end), sensors (seglearn watch) and MNIST. The best-effort app
serves the best-effort ensemble. Its k-member latency is that of its k highest-weighted
members (weights rise with validation accuracy, so the same order). The low-latency app serves
the low-latency ensemble. Measured: k = 1 (the top member alone) and k = n (the whole). Between
them, linear interpolation (the daemon splits the whole by the members' own latencies, which
table4 does not record). Request rates: one prediction per 0.96 s audio patch per microphone,
one per 1 s sensor window per board, one image per second per camera. Budgets come from the
paper's Table 4, plus "tight" budgets near the NUC's own service time to show trimming and
refusals.

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
from mliot_daemon.learn.plan import machine_speed

RESULTS = Path(__file__).resolve().parent / "results"
LOCAL = "m2-nuc"
CLIENT_ACCESS_MS = 1.5  # a_client: half of the client-Pi RTT (3 ms), see the module docstring

# Single-thread speed of each Table-3 machine against THIS machine (a 2-vCPU KVM cloud VM,
# Intel Xeon family 6 model 207 = 5th-gen Xeon Scalable). Assumed, with the reasoning in
# RATIO_BASIS; the sensitivity runs halve and double them.
NUC_RATIO = 0.45
PI_RATIO = 0.15
CLOUD_RATIO = 1.0
RATIO_BASIS = {
    "m2-nuc": (
        "i5-5250U: Broadwell-U, 2 cores / 4 threads, 1.6-2.7 GHz (notebookcheck.com). A "
        "published single-thread score for the same Broadwell-U core at 3.1 GHz turbo: "
        "i5-5257U, Geekbench 6 single-core 901 (cputronic.com). Scaled to the 5250U's 2.7 GHz, "
        "about 785. No published score was found for this VM's CPU. A 5th-gen Xeon core at "
        "3-4 GHz turbo is assumed to score about 1750, hence 0.45. Vectorised kernels (BLAS, "
        "kernel SVMs, distances) gain more from AVX-512, so the true ratio for these models may "
        "be lower."),
    "m1-pi4": (
        "Raspberry Pi 4: Cortex-A72 at 1.5 GHz (magpi.raspberrypi.com). Clock 1.5 / 2.7 GHz "
        "= 0.56 of the NUC. Per clock, the A72 is assumed to do 0.6 of Broadwell's work, and "
        "128-bit NEON against 256-bit AVX2 in numeric code. About 1/3 of the NUC: 0.15."),
    "cloud": (
        "the paper does not name the VMs' CPUs. This machine is itself a 2-vCPU cloud VM (an "
        "M3-class machine), so every cloud vCPU gets its measured speed: ratio 1.0"),
}
SOURCES = [
    "https://www.notebookcheck.com/Intel-Core-i5-5250U-Notebook-Prozessor.127306.0.html "
    "(i5-5250U: 2 cores, Hyper-Threading, 1.6-2.7 GHz)",
    "https://cputronic.com/en/cpu/intel-core-i5-5257u (Broadwell-U i5-5257U, 3.1 GHz turbo: "
    "Geekbench 6 single-core 901)",
    "https://magpi.raspberrypi.com/articles/raspberry-pi-4-specs-benchmarks (Raspberry Pi 4: "
    "BCM2711, 4x Cortex-A72 @ 1.5 GHz)",
]

FLEET: list[dict[str, Any]] = [
    {"name": "m1-pi4", "table3": "M1", "hardware": "Raspberry Pi 4, 4x Cortex-A72 1.5 GHz",
     "cores": 4, "memory_gb": 4, "client_rtt_ms": 3.0, "ratio": PI_RATIO},
    {"name": "m2-nuc", "table3": "M2", "hardware": "Intel NUC, Core i5-5250U (2 cores / 4 "
     "threads; the paper's \"4x\")", "cores": 2, "memory_gb": 8, "client_rtt_ms": 14.0,
     "ratio": NUC_RATIO},
    {"name": "m3-vm2", "table3": "M3", "hardware": "cloud VM, 2 cores", "cores": 2,
     "memory_gb": 4, "client_rtt_ms": 128.0, "ratio": CLOUD_RATIO},
    {"name": "m4-vm8", "table3": "M4", "hardware": "cloud VM, 8 cores", "cores": 8,
     "memory_gb": 16, "client_rtt_ms": 64.0, "ratio": CLOUD_RATIO},
    {"name": "m5-vm16", "table3": "M5", "hardware": "cloud VM, 16 cores", "cores": 16,
     "memory_gb": 32, "client_rtt_ms": 84.0, "ratio": CLOUD_RATIO},
]

MODES = ("best_effort", "low_latency")
SHORT = {"best_effort": "be", "low_latency": "ll"}
APPS: list[dict[str, Any]] = [
    {"app": "audio", "paper": "microphone audio, 96x64 log-mel patches, 14 classes",
     "row": "audio_espeak", "stream_hz": 1 / 0.96, "stream": "microphone (one 0.96 s patch)",
     "budget": {"best_effort": 100.0, "low_latency": 60.0},
     "tight": {"best_effort": 2.0, "low_latency": 2.0},
     "budget_source": "Table 4, audio: best effort 0.10 s, low latency 0.06 s"},
    {"app": "sensors", "paper": "Mites multimodal sensors, 1 s windows, 16 classes",
     "row": "sensor_watch", "stream_hz": 1.0, "stream": "sensor board (one 1 s window)",
     "budget": {"best_effort": 90.0, "low_latency": 40.0},
     "tight": {"best_effort": 0.3, "low_latency": 0.25},
     "budget_source": "Table 4, multimodal sensors: best effort 0.09 s, low latency 0.04 s"},
    {"app": "mnist", "paper": "MNIST 28x28 images, 10 classes", "row": "mnist",
     "stream_hz": 1.0, "stream": "camera (one image a second, assumed)",
     "budget": {"best_effort": 100.0, "low_latency": 60.0},
     "tight": {"best_effort": 2.5, "low_latency": 0.5},
     "budget_source": "no MNIST latency in our summary of Table 4: the audio budgets reused"},
]
# The scaled-up workload: SITES copies of the six apps, each app serving STREAMS streams.
SITES = 24
STREAMS = {"audio": 24, "sensors": 60, "mnist": 12}

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


def rtt_from_local(client_rtt: float, local_client_rtt: float, model: str = "star") -> float:
    """Round trip from the local daemon to a peer, from the two client-measured RTTs."""
    if model == "low":
        return abs(client_rtt - local_client_rtt)
    if model == "high":
        return client_rtt + local_client_rtt
    return client_rtt + local_client_rtt - 2 * CLIENT_ACCESS_MS


def ladders(table4: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(app, mode) -> members in weight order and the latency (ms, this machine) of 1..n."""
    rows = {r["dataset"]: r for r in table4["rows"]}
    out = {}
    for spec in APPS:
        r = rows[spec["row"]]
        val = r["member_val_accuracy"]
        for mode, key in (("best_effort", "ensemble"), ("low_latency", "low_latency")):
            members = sorted(r[f"{key}_members"], key=lambda f: -val[f])
            whole = r[f"{key}_latency_ms"]
            top = members[0]
            if len(members) == 1:
                first, how = whole, "measured (one member)"
            elif top == r["best_member"]:
                first, how = r["best_member_latency_ms"], "k=1 and k=n measured"
            elif r["low_latency_members"] == [top]:
                first, how = r["low_latency_latency_ms"], "k=1 and k=n measured"
            else:  # the top member's own latency was not measured: an even split
                first, how = whole / len(members), "k=n measured, even split"
            n = len(members)
            lat = [first + (whole - first) * i / (n - 1) for i in range(n)] if n > 1 else [whole]
            out[(spec["app"], mode)] = {"members": members, "latency_ms": lat, "basis": how,
                                        "p99_whole_ms": r["latency_p99_ms"][
                                            "best_effort" if key == "ensemble" else key]}
    return out


def fleet_views(s_here: float, busy: dict[str, float], down: set[str],
                ratio_scale: dict[str, float] | None = None, rtt_model: str = "star"
                ) -> list[MachineView]:
    local_rtt = next(f["client_rtt_ms"] for f in FLEET if f["name"] == LOCAL)
    views = []
    for f in FLEET:
        scale = (ratio_scale or {}).get(f["name"], 1.0)
        views.append(MachineView(
            name=f["name"], local=f["name"] == LOCAL, up=f["name"] not in down,
            speed=f["ratio"] * scale * s_here, busy=busy.get(f["name"], 0.0),
            rtt_ms=0.0 if f["name"] == LOCAL else round(
                rtt_from_local(f["client_rtt_ms"], local_rtt, rtt_model), 3)))
    return views


def demands(lad: dict[tuple[str, str], dict[str, Any]], s_here: float, budgets: str,
            sites: int = 0) -> list[AppDemand]:
    """The six apps once (``sites`` = 0, one stream each), or ``sites`` copies of them."""
    out = []
    for spec in APPS:
        for mode in MODES:
            ref = tuple(v * s_here for v in lad[(spec["app"], mode)]["latency_ms"])
            budget = spec[budgets][mode]
            if not sites:
                out.append(AppDemand(f"{spec['app']}_{SHORT[mode]}", mode, budget, ref,
                                     rate_hz=spec["stream_hz"]))
                continue
            for s in range(sites):
                out.append(AppDemand(f"{spec['app']}_{SHORT[mode]}_s{s:02d}", mode, budget, ref,
                                     rate_hz=spec["stream_hz"] * STREAMS[spec["app"]]))
    return out


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


def machine_rows(views: list[MachineView], s_here: float) -> list[dict[str, Any]]:
    out = []
    for f, m in zip(FLEET, views, strict=True):
        key = f["name"] if f["name"] in RATIO_BASIS else "cloud"
        out.append({**{k: f[k] for k in ("name", "table3", "hardware", "cores", "memory_gb",
                                        "client_rtt_ms")},
                    "local": m.local, "rtt_ms": m.rtt_ms, "ratio_to_this_machine": f["ratio"],
                    "speed": round(m.speed, 4), "ratio_basis": RATIO_BASIS[key]})
    return out


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
