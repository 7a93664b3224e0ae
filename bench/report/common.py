"""What several sections share: where results live, loading one, the section header (command,
machine, load at start), verdict and change formatting, and saving a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

# Headless: the report runs in CI shells and over ssh. The backend must be chosen before pyplot
# is first imported, so every section takes ``plt`` from here rather than importing it itself.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent
RESULTS = BENCH / "results"
OUT = BENCH / "RESULTS.md"


def load(name: str) -> dict[str, Any] | None:
    """The result of ``python -m bench <name>``, or None if it has not been run."""
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def cmd(r: dict[str, Any]) -> str:
    duration = f" --duration {r['duration']:g}" if r.get("duration") else ""
    return f"`python -m bench {r['name']}{' --quick' if r.get('quick') else ''}{duration}`"


def header(r: dict[str, Any], title: str, intro: str = "") -> list[str]:
    """Title and the conditions of the run: a figure means little without the machine and how
    busy it was (others share it), and a quick run must never pass for the figure of record."""
    m = r["machine"]
    la = r.get("load_avg_at_start")
    load_note = "load average not recorded"
    if la:
        load_note = f"load average at start {la[0]} / {la[1]} / {la[2]}"
        if not (r.get("quiet", True) or r.get("quick")):
            load_note += (f" (**machine busy**: waited {r.get('waited_for_quiet_s', 0):.0f} s "
                          "for a 1-min load below 0.8, then ran anyway)")
    quick = " — **quick run** (reduced sizes; not the figure of record)" if r.get("quick") else ""
    return [f"## {title}", "",
            f"Command: {cmd(r)}{quick}. Machine: {m['cores']} cores ({m['cpu']}), "
            f"{m['memory_gib']} GiB, Python {m['python']}, {m['date']}; {load_note}; "
            f"wall time {r['wall_s']} s.", "", *([paragraph(intro), ""] if intro else [])]


def paragraph(text: str) -> str:
    """A paragraph written over several source lines, as one Markdown line."""
    return " ".join(text.split())


def table_head(*columns: str) -> list[str]:
    """A Markdown table's header row and separator."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


def pctchg(v: float) -> str:
    """A relative change (0.05) as the paper prints it (+5.0 %)."""
    return f"{v * 100:+.1f} %"


def save_plot(fig: Any, name: str) -> str:
    """Write ``fig`` to results/<name>.png, free it, and return the Markdown that shows it."""
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    plt.close(fig)
    return f"![{name}](results/{name}.png)"
