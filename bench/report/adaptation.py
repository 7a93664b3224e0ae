"""Adaptation: accuracy on a drifted check set against the corrections sent, with feedback and
without."""

from __future__ import annotations

from typing import Any

from bench.report.common import header, plt, save_plot, table_head

INTRO = """Accuracy on a fixed drifted check set after k corrections (measured once the trainer is
idle), with feedback (adapt) and without (static: same requests, no feedback). Drift as in
tests/integration/test_adaptation.py; confirmations of right answers are sent too (they are
feedback)."""


def section(r: dict[str, Any]) -> list[str]:
    out = header(r, "Adaptation — accuracy against corrections after drift", INTRO)
    out += table_head("drift", "before drift", "right after", "final with adaptation",
                      "final without", "corrections", "back to 95 % of before after")
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for drift in ("swap", "gain"):
        d = r[drift]
        out.append(f"| {drift} | {d['accuracy_before_drift']} | {d['accuracy_after_drift']} | "
                   f"{d['final_adapt_accuracy']} | {d['final_static_accuracy']} | "
                   f"{d['corrections']} | {d['recovered_95pct_at_corrections']} corrections |")
        c = d["curve"]
        ax.plot([p["corrections"] for p in c], [p["adapt_accuracy"] for p in c], marker="o",
                label=f"{drift}: with adaptation")
        ax.plot([p["corrections"] for p in c], [p["static_accuracy"] for p in c], ls="--",
                label=f"{drift}: without")
    ax.set_xlabel("corrections sent")
    ax.set_ylabel("accuracy on drifted check set")
    ax.legend(fontsize=8)
    out += ["", save_plot(fig, "adaptation"), ""]
    return out
