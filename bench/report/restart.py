"""Issue 20: restart — from `mliot run` to the first served prediction, and where it goes."""

from __future__ import annotations

from typing import Any

from bench.report.common import header, table_head, verdict

INTRO = """Three digits apps, each serving a 7-member ensemble (as in `bench memory`). Each
cycle starts `mliot run` on that data folder, polls `/readyz` and one prediction per app every
10 ms, then kills the daemon with SIGKILL. The imports are measured apart, in a fresh
interpreter (`python -X importtime -c "import mliot_daemon.daemon"`). The project's bytecode
is compiled first, as `pip install .` does (a source tree under `PYTHONDONTWRITEBYTECODE`
would compile its ~100 modules at every start, ~0.3 s more)."""


def section(r: dict[str, Any]) -> list[str]:
    out = header(r, "Restart (time to the first served prediction)", INTRO)
    ok = r["met"]["first_served_1s"]
    out += table_head("measure", "value", "target", "verdict")
    out += [f"| first served prediction after `mliot run`, p50 (max) of {r['cycles']} | "
            f"{r['first_served_p50_s']} s ({r['first_served_max_s']} s) | ≤ 1 s | "
            f"{verdict(ok)} |",
            f"| `/readyz` 200, p50 | {r['ready_p50_s']} s | | |",
            f"| all three apps served, p50 | {r['all_served_p50_s']} s | | |"]
    imp = r["imports"]
    parts = ", ".join(f"{k} {v} s" for k, v in imp["by_package_s"].items() if v >= 0.01)
    out += ["", f"Where a start goes: the interpreter {imp['interpreter_s']} s; importing the "
            f"daemon {imp['import_daemon_s']} s, of which (each package's own import, first "
            f"met) {parts}. The rest, up to `/readyz`, opens the store and loads the models "
            "(their portable form: numpy only). The daemon answers once it is ready: its "
            "models load before `/readyz`; the trainer's learning code (sklearn, xgboost), "
            "its pool and the monitor's speed benchmark come after it (issue 20).", ""]
    return out
