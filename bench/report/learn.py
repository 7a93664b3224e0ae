"""The learning core: ensembles against their best member, the fast predictor, and the
calibration of the served confidence (expected calibration error and a reliability plot)."""

from __future__ import annotations

from typing import Any

from bench.report.common import header, plt, save_plot, table_head

INTRO = """Best-effort ensembles on each set's test rows: accuracy against the best member (by
test accuracy), and the calibration of the served `confidence` (a Platt map of the vote share,
fitted on out-of-fold validation rows): expected calibration error over 10 equal-width bins,
beside the raw vote share's. The plot is the reliability diagram of the served confidence
(bins with rows only; a perfectly calibrated model lies on the diagonal)."""

SETS = (("digits", "digits"), ("sensor_watch", "sensor (watch)"),
        ("audio_espeak", "audio (espeak-ng)"), ("mnist", "MNIST 60k"))


def section(r: dict[str, Any]) -> list[str]:
    out = header(r, "Learning core — ensembles, fast predictor, calibrated confidence", INTRO)
    out += table_head("data set", "members", "accuracy", "best member", "ECE served",
                      "ECE raw share")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for key, label in SETS:
        part = r.get(key)
        e = part and (part.get("best_effort") or part)
        if not e or "ece" not in e:
            continue
        out.append(f"| {label} | {', '.join(e['members'])} | {e['accuracy']:.4f} | "
                   f"{e['best_member']} {e['best_member_accuracy']:.4f} | {e['ece']:.4f} | "
                   f"{e['ece_raw_vote_share']:.4f} |")
        bins = e["reliability"]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                label=label)
    ax.set_xlabel("served confidence (bin mean)")
    ax.set_ylabel("accuracy in the bin")
    ax.legend(fontsize=8)
    for key, vote in (("fast_predictor_7", "hard"), ("fast_predictor_7_soft", "soft")):
        fast = (r.get("digits") or {}).get(key)
        if fast:
            out += ["", f"7-member digits fast predictor, {vote} vote: single row p50 "
                        f"{fast['single_row_ms_p50']} ms (p99 {fast['single_row_ms_p99']}), "
                        f"{fast['batched_rows_per_s']} rows/s batched, agreement with the "
                        f"reference {fast['agreement_with_reference']}."]
    out += ["", save_plot(fig, "learn"), ""]
    return out
