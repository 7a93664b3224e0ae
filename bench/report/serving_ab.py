"""Section: the serving A/B (``python -m bench.serving_ab``), a change's cost before against
after."""

from __future__ import annotations

from typing import Any

from bench.report.common import paragraph, table_head, verdict

NAMES = {"http_p50": "HTTP p50", "ws_p50": "WS p50", "http_p99": "HTTP p99",
         "ws_p99": "WS p99", "ws_pipelined_per_s": "WS pipelined", "http_throughput_per_s":
         "HTTP 8 clients"}


def _tree(t: dict[str, Any]) -> str:
    changed = t["changed"]
    local = f", with local changes to {', '.join(f'`{f}`' for f in changed)}" if changed else ""
    return f"{t['commit']} ({t['subject'][:90]}){local}"


def _command(r: dict[str, Any]) -> str:
    if "pooled" not in r:
        return f"`python -m bench.serving_ab BEFORE AFTER --runs {r['runs']}`"
    runs = " and ".join(str(n) for n in r["pooled"])
    return (f"`python -m bench.serving_ab BEFORE AFTER` {len(r['pooled'])} times, with "
            f"{runs} runs, on the same trees, then `--pool` of their results (all "
            f"{r['runs']} runs below, in order)")


def section(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    loads = [p[s]["load_avg_at_start"][0] for p in r["pairs"] for s in ("before", "after")]
    aa = r["before"]["tree"] == r["after"]["tree"]
    same = " An A/A run: the same tree on both sides, so any cost is the tool's own noise." \
        if aa else ""
    out = ["## Serving A/A — the A/B tool's own noise" if aa else
           "## Serving A/B — a serving-path change, before against after", "",
           paragraph(f"""Command: {_command(r)}. Machine: {m['cores']} cores ({m['cpu']}),
           {m['memory_gib']} GiB, Python {m['python']}, {m['date']}; 1-min load at the start
           of the runs {min(loads)} to
           {max(loads)}; wall time {r['wall_s']} s. Before: {_tree(r['before'])}. After:
           {_tree(r['after'])}.{same} Each run starts a daemon from each tree on the same
           saved models (digits7: {', '.join(r['members']['digits7'])}; digits3:
           {', '.join(r['members']['digits3'])}), both pinned to CPU {r['daemon_cpu']} and the
           client to the others, and measures them, after an unrecorded block each, in
           {r['blocks']} alternating blocks of {r['block']} single-row round trips per channel
           (ABBA order; every other run starts and measures the after tree's daemon first), so
           both daemons see the same machine. A cost is after / before for a latency and
           before / after for a rate, so above 1 is slower; the verdict is on the median over
           the runs of the single-row p50s' costs."""), ""]
    keys = list(NAMES)
    out += table_head("app", "figure", *(f"run {i + 1}: before → after (cost)"
                                         for i in range(r["runs"])), "median cost")
    for app in ("digits7", "digits3"):
        for k in keys:
            cells = []
            for p, c in zip(r["pairs"], r["costs"], strict=True):
                b, a = p["before"][app][k], p["after"][app][k]
                cells.append(f"{b:g} → {a:g} ({c[app][k]:.3f})")
            out.append(f"| {app} | {NAMES[k]} | " + " | ".join(cells)
                       + f" | {r['median_cost'][app][k]:.3f} |")
    judged = ", ".join(f"{app} {NAMES[k]} {r['median_cost'][app][k]:.3f}"
                       for app in ("digits7", "digits3") for k in ("http_p50", "ws_p50"))
    what = "The tool's own noise" if aa else "Cost"
    out += ["", f"{what} within {r['within']:.2f} (median over the runs, single-row "
            f"p50s): {judged} — {verdict(r['met'])}.", ""]
    return out
