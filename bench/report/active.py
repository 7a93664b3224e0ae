"""Issue 17: label queries against random and mistake-only labelling."""

from __future__ import annotations

from typing import Any

from bench.report.common import header, plt, save_plot, table_head, verdict

INTRO = """Test accuracy against the number of labels, starting from 5 per class and adding
half of the labels so far each round, chosen by the daemon's label queries, at random, or
only among rows the model gets wrong (a person who reacts to mistakes). One random forest (50
trees), refitted each round as the daemon fits a family, for all three. "Labels needed": where accuracy first reaches 95 % of the accuracy with
every pool label. Target: the queries need at most 1/3 of random's labels. A "—" means the
strategy never reached it (the queries stop where no prediction is doubtful enough to ask)."""


def section(r: dict[str, Any]) -> list[str]:
    out = header(r, "Label queries (active learning)", INTRO)
    out += table_head("set", "pool", "all labels: accuracy", "95 % of it",
                      "labels needed: queries", "random", "wrong only", "queries / random",
                      "verdict")
    sets = r["sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, (name, s) in zip(axes[0], sets.items(), strict=True):
        n = s["labels_needed"]

        def cell(v: float | None) -> str:
            return "—" if v is None else f"{v:g}"

        ratio = s["queries_over_random"]
        out.append(f"| {name} | {s['pool']} | {s['full_accuracy']:.4f} | "
                   f"{s['target_accuracy']:.4f} | {cell(n['queries'])} | {cell(n['random'])} | "
                   f"{cell(n['wrong_only'])} | {'—' if ratio is None else ratio} | "
                   f"{verdict(s['met'])} |")
        for strategy, points in s["curves"].items():
            ax.plot([p["labels"] for p in points], [p["accuracy"] for p in points],
                    marker=".", label=strategy)
        ax.axhline(s["target_accuracy"], color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("labels")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
    out += ["", save_plot(fig, "active"), ""]
    return out
