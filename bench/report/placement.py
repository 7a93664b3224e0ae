"""Placement: the scheduler's pure rule simulated on the paper's Table-3 fleet, for the paper's
apps one stream each and for many apps with many streams, with its checks and sensitivity."""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.report.common import header, plt, save_plot, verdict

# Table cells are narrow: the fleet's machines by a short name.
SHORT_M = {"m1-pi4": "pi", "m2-nuc": "nuc", "m3-vm2": "vm2", "m4-vm8": "vm8", "m5-vm16": "vm16"}
# Refusals and trims listed in full per budget table; the rest are only counted.
MAX_NOTES = 10
# Spurious refusals spelled out; the count says how many there are in all.
MAX_SPURIOUS = 6


def section(r: dict[str, Any]) -> list[str]:
    out = header(r, "Placement — the paper's fleet (Table 3), best effort vs low latency")
    out += _fleet(r)
    out += _apps(r)
    out += _paper_apps(r)
    many = [sc for sc in r["scenarios"] if sc["workload"] != "paper apps"]
    if many:
        out += _many_apps(r, many)
    out += _checks(r)
    if r.get("sensitivity"):
        out += _sensitivity(r)
    out += ["Sources for the speed ratios: " + "; ".join(r["sources"]) + ".", ""]
    out += [_plot(r, many), ""]
    return out


def _short(machine: str | None) -> str:
    return "refused" if machine is None else SHORT_M.get(machine, machine)


def _kind(app: str) -> str:
    """The many-apps workload names each copy of an app `<app>_<site>`: the app it copies."""
    return app.rsplit("_", 1)[0]


def _cell(d: dict[str, Any]) -> str:
    if d["serving"] is None:
        return "**refused**"
    ms = d.get("predicted_ms")
    return (f"{_short(d['serving'])} {d['members']}/{d['n_members']}, "
            + (f"{ms:.3g} ms" if ms is not None else "saturated"))


def _own(d: dict[str, Any]) -> str:
    """A refused app's predictions with its own load added (the rule's "fastest" figure leaves
    it out): which machines it would saturate (past 90 %), and the best of the rest."""
    o = d.get("with_own_load")
    if not o:
        return ""
    parts = []
    if o["saturated"]:
        parts.append(f"it would saturate {', '.join(_short(n) for n in o['saturated'])}")
    if o["best"]:
        b = o["best"]
        parts.append(f"{'elsewhere ' if o['saturated'] else ''}best {b['ms']:.3g} ms on "
                     f"{_short(b['machine'])}")
    return " — with its own load: " + "; ".join(parts) if parts else ""


def _fleet(r: dict[str, Any]) -> list[str]:
    """What is measured and what is assumed, the fleet table, and where each assumption comes
    from."""
    tm, rtt = r["this_machine"], r["rtt_model"]
    t4 = tm["table4_measured"]
    out = ["A simulation of the scheduler's pure rule (`actors.placement.plan`): no "
           "daemon, no network. Measured here: the ensembles' latencies "
           f"(`python -m bench table4`, this machine, {t4['date']}) and this machine's speed "
           f"(`learn.plan.machine_speed`: median {tm['speed']} of {tm['speed_samples']}, "
           "which vary with the load). Assumed: each Table-3 machine's speed against this one, "
           "RTTs from the NUC, request rates. The absolute speed cancels out of every "
           "prediction (latency at reference speed = measured x this machine's speed), so "
           "only the ratios matter. The sensitivity runs below halve and double them.", "",
           "| machine | hardware | cores | RTT from the client (paper) | `rtt_ms` from the NUC "
           "| speed vs this machine | `speed` |", "|---|---|---|---|---|---|---|"]
    for m in r["fleet"]:
        out.append(f"| {m['table3']} `{m['name']}`{' (local)' if m['local'] else ''} | "
                   f"{m['hardware']} | {m['cores']} | {m['client_rtt_ms']:g} ms | "
                   f"{m['rtt_ms']:g} ms | {m['ratio_to_this_machine']} | {m['speed']} |")
    basis = {m["name"]: m["ratio_basis"] for m in r["fleet"]}
    out += ["", f"- RTTs: the daemon runs on the NUC. A star model gives {rtt['rule']} (a_client "
            f"= {rtt['client_access_ms']} ms, half the client-Pi RTT). Bounds, from the "
            f"{rtt['bounds']}. The client-NUC {rtt['client_to_nuc_ms']:g} ms is "
            "outside every budget: DESIGN counts time on the serving machine plus the round "
            "trip to a peer.",
            f"- NUC speed: {basis['m2-nuc'].rstrip('.')}.",
            f"- Pi speed: {basis['m1-pi4'].rstrip('.')}.",
            f"- Cloud VMs: {basis['m3-vm2'].rstrip('.')}.",
            f"- Capacity: {r['capacity_model']}. The five Table-3 machines therefore differ in "
            "serving capacity only by speed: the 16-core VM serves no more than the 2-core one.",
            ""]
    return out


def _apps(r: dict[str, Any]) -> list[str]:
    """The apps placed: stand-ins, latency per member count, rates and budgets."""
    stand_ins = sorted({f"{a['app']}: {a['paper_app']} → `{a['stand_in']}`" for a in r["apps"]})
    out = ["Apps: the paper's three, each with this repo's measured stand-in from table4: "
           + "; ".join(stand_ins) + ". The latency of k members is that of the k "
           "highest-weighted members. k = 1 and k = n are measured; between them, linear "
           "interpolation.", "",
           "| app | mode | members, by weight | latency here, k = 1..n (ms) | whole on the NUC "
           "(ms) | requests per stream | paper budget | tight budget |",
           "|---|---|---|---|---|---|---|---|"]
    nuc = next(m for m in r["fleet"] if m["name"] == "m2-nuc")["ratio_to_this_machine"]
    for a in r["apps"]:
        out.append(f"| {a['app']} | {a['mode']} | "
                   f"{', '.join(a['members'])} | "
                   f"{' / '.join(f'{v:.3f}' for v in a['latency_ms_here'])} | "
                   f"{a['latency_ms_here'][-1] / nuc:.3f} | {a['stream_hz']:.3g} Hz, per "
                   f"{a['stream']} | {a['budget_ms']:g} ms | {a['tight_budget_ms']:g} ms |")
    src = sorted({a["budget_source"] for a in r["apps"]})
    out += ["", "Budgets: " + "; ".join(src) + ". The tight budgets are close to the NUC's own "
            "service time, below any peer's RTT: they show trimming and refusals.", ""]
    return out


def _paper_apps(r: dict[str, Any]) -> list[str]:
    """The six apps one stream each: one table per budget set (a column per scenario), then
    every refusal and trim in the rule's own words."""
    out = []
    scs = {sc["id"]: sc for sc in r["scenarios"]}
    for budgets, label in (("paper", "paper budgets"), ("tight", "tight budgets")):
        ids = [sc["id"] for sc in r["scenarios"]
               if sc["workload"] == "paper apps" and sc["budgets"] == budgets]
        out += [f"**The six apps, one stream each, {label}** (cell: machine, members kept / "
                "whole, predicted ms at the final load):", "",
                "| app | budget | " + " | ".join(scs[i]["title"] for i in ids) + " |",
                "|---|---|" + "---|" * len(ids)]
        for j, d0 in enumerate(scs[ids[0]]["decisions"]):
            out.append(f"| {d0['app']} | {d0['budget_ms']:g} ms | "
                       + " | ".join(_cell(scs[i]["decisions"][j]) for i in ids) + " |")
        notes = [f"  - {scs[i]['title']}, {d['app']}: {d['reason']}" + _own(d)
                 for i in ids for d in scs[i]["decisions"]
                 if d["serving"] is None or d["members"] < d["n_members"]]
        if notes:
            out += ["", "Refusals and trims, as the rule words them:", *notes[:MAX_NOTES]]
            if len(notes) > MAX_NOTES:
                out.append(f"  - ... {len(notes) - MAX_NOTES} more in `results/placement.json`")
        out.append("")
    return out


def _many_apps(r: dict[str, Any], many: list[dict[str, Any]]) -> list[str]:
    """The scaled-up workload: apps and load per machine, where each kind of app went, why
    any was refused, and what a recovery of the NUC moved."""
    ma = r["many_apps"]
    out = [f"**Many apps**: {ma['sites']} sites, each running the six apps "
           f"({ma['apps']} apps). Each app serves many streams: "
           + ", ".join(f"{k} {v}" for k, v in ma["streams_per_app"].items())
           + " per app, at the per-stream rates above. Paper budgets.", "",
           "| scenario | " + " | ".join(f"`{m['name']}` apps (busy)" for m in r["fleet"])
           + " | refused | trimmed | every placed app within budget |",
           "|---|" + "---|" * (len(r["fleet"]) + 3)]
    for sc in many:
        apm, u = sc["apps_per_machine"], sc["utilisation"]
        out.append(f"| {sc['title']} | " + " | ".join(
            f"{apm[m['name']]} ({u[m['name']] * 100:.0f} %)" for m in r["fleet"])
            + f" | {apm['refused']} | {sc['trimmed']} | "
            f"{'yes' if sc['all_placed_within_budget'] else '**no**'} |")
    kinds = list(dict.fromkeys(_kind(d["app"]) for d in many[0]["decisions"]))
    out += ["", "Where each kind of app went (count per machine):", "",
            "| app | " + " | ".join(sc["title"] for sc in many) + " |",
            "|---|" + "---|" * len(many)]
    for k in kinds:
        cells = []
        for sc in many:
            c = Counter(_short(d["serving"]) for d in sc["decisions"] if _kind(d["app"]) == k)
            # Machines alphabetically, the refused last.
            cells.append(", ".join(f"{m} {n}" for m, n in sorted(
                c.items(), key=lambda t: (t[0] == "refused", t[0]))))
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    out.append("")
    # The copies of an app are interchangeable: one refusal line per kind and scenario.
    seen = set()
    for sc in many:
        for d in sc["decisions"]:
            k = (sc["id"], _kind(d["app"]))
            if d["serving"] is None and k not in seen:
                seen.add(k)
                out.append(f"- {sc['title']}, {k[1]}: \"{d['reason']}\"" + _own(d))
    rec = next((sc for sc in many if "moved" in sc), None)
    if rec:
        idle = next(sc for sc in many if sc["id"] == "many_idle")
        moved = Counter((_kind(d["app"]), _short(d["serving"]))
                        for d in rec["decisions"] if d.get("moved"))
        out += ["", f"- {rec['title']}: {rec['moved']} apps moved ("
                + ", ".join(f"{k} {n} to {m}" for (k, m), n in sorted(moved.items()))
                + ") and "
                f"{rec['apps_per_machine']['refused']} stay refused, against "
                f"{idle['apps_per_machine']['refused']} refused by a fresh plan on the "
                "idle fleet. An app that moves away still counts in its old machine's "
                "measured `busy` until the monitor samples again, so the first plan after "
                "a recovery is conservative."]
    out.append("")
    return out


def _checks(r: dict[str, Any]) -> list[str]:
    """Every placed app within budget, and no refusal that capacity does not explain (each
    refused app re-planned alone on the final state by the bench)."""
    spur = [(sc["title"], sc["workload"], x) for sc in r["scenarios"]
            for x in sc["spurious_refusals"]]
    ok = all(sc["all_placed_within_budget"] for sc in r["scenarios"])
    out = [f"Check — every placed app within its budget at the final load, in every "
           f"scenario: {verdict(ok)}.",
           f"Check — no refusal that capacity does not explain: {verdict(not spur)}"
           + ("." if not spur else
              f": {len(spur)} apps refused although, planned alone on the final state, "
              "they fit, and every app already on that machine still meets its budget "
              "with the members it was given:")]
    for title, wl, x in spur[:MAX_SPURIOUS]:
        out.append(f"  - {wl}, {title}: {x['app']} fits on {x['fits_on']} with {x['members']} "
                   f"member(s) at {x['predicted_ms']} ms, next to "
                   f"{', '.join(x['others_there'])}; refused with \"{x['refusal']}\".")
    if spur:
        out.append("  Cause: the rule's admission check predicts each app already placed "
                   "with its whole ensemble (`other.n_members`), not with the members it was "
                   "given. An app trimmed to meet its budget therefore \"breaks\" that budget "
                   "in every later check, and the machine looks full.")
    out.append("")
    return out


def _sensitivity(r: dict[str, Any]) -> list[str]:
    """How many placements move under other assumptions, and which assumption decides what."""
    n = r["sensitivity"][0]["of"]
    base = sum(sc["apps_per_machine"]["refused"] for sc in r["scenarios"])
    out = [f"Sensitivity: how many of the {n} placements across all scenarios land "
           "elsewhere (another machine or another member count; the copies of one app "
           "in the many-apps workload are interchangeable), and how many are refused "
           f"in all (base: {base}), under other assumptions:", "",
           "| variant | changed | refused | by scenario |", "|---|---|---|---|"]
    for v in r["sensitivity"]:
        where = ", ".join(f"{k} {c}" for k, c in v["by_scenario"].items()) or "—"
        out.append(f"| {v['variant']} | {v['changed']} | {v['refused']} | {where} |")
    # Scenario ids start with their group's prefix.
    groups = {"paper": "for the six apps at paper budgets", "tight": "at tight budgets",
              "many": "in the many-apps workload"}
    prefix = {"paper": "budget_", "tight": "tight_", "many": "many_"}
    tally = {g: sum(c for v in r["sensitivity"] for k, c in v["by_scenario"].items()
                    if k.startswith(prefix[g])) for g in groups}
    movers = [v["variant"] for v in r["sensitivity"]
              if any(k.startswith("budget_") for k in v["by_scenario"])]
    out += ["", "Summed over the variants: " + ", ".join(
        f"{tally[g]} {label}" for g, label in groups.items()) + ". At paper budgets with "
        "one stream per app, only " + ("; ".join(movers) or "no variant")
        + " moved anything: the RTTs decide there. At tight budgets the NUC's assumed "
        "speed decides; with many streams, capacity does, and capacity comes from the "
        "assumed speeds.", ""]
    return out


def _plot(r: dict[str, Any], many: list[dict[str, Any]]) -> str:
    """Apps and serving load per machine in each many-apps scenario (empty without them)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    if many:
        names = [m["name"] for m in r["fleet"]]
        x = range(len(names) + 1)
        wdt = 0.8 / len(many)
        for i, sc in enumerate(many):
            off = [v - 0.4 + wdt * (i + 0.5) for v in x]
            axes[0].bar(off, [sc["apps_per_machine"][n] for n in [*names, "refused"]], wdt,
                        label=sc["title"])
            axes[1].bar(off[:-1], [sc["utilisation"][n] * 100 for n in names], wdt)
        axes[0].set_xticks(list(x), [*names, "refused"], fontsize=8)
        axes[1].set_xticks(list(x)[:-1], names, fontsize=8)
        axes[0].set_ylabel(f"apps ({r['many_apps']['apps']} in all)")
        axes[1].set_ylabel("serving busy after placement (%)\n(what if: per core)")
        axes[1].axhline(90, color="grey", lw=0.6, ls="--")
        axes[0].legend(fontsize=6)
    return save_plot(fig, "placement")
