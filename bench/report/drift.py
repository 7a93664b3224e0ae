"""Drift: prequential accuracy on streams with known drift, mliot beside river's adaptive
random forest and Hoeffding adaptive tree, given the same labels."""

from __future__ import annotations

from typing import Any

from bench.report.common import header, paragraph, plt, save_plot, table_head, verdict

INTRO = """Each stream goes through a live daemon in requests of {batch} rows after an initial
labelled set; every row is predicted before any label of its request is used (prequential). A
fixed random share of the rows (10 %, then 1 %) gets feedback with the true label — a correction
when mliot was wrong, a confirmation when right — and river's ARF (`forest.ARFClassifier`) and
HAT (`tree.HoeffdingAdaptiveTreeClassifier`) learn exactly those rows. The stream waits while
mliot's trainer runs (a home's pace). Recovery: rows after a drift point until accuracy over a
{window}-row window after it is back to 95 % of the {pre} rows before it ({window} = at once;
— = not before the next drift point or the end), each learner against its own level before the
drift (a learner already poor before it recovers "at once")."""

NAMES = {"mliot": "mliot", "arf": "ARF", "hat": "HAT"}


def section(r: dict[str, Any]) -> list[str]:
    out = header(r, "Drift — prequential accuracy on drifting streams, beside river",
                 INTRO.format(batch=r["batch"], window=r["window"], pre=r["pre"]))
    below = r["mliot_below_arf"]
    out += [f"Target: mliot's prequential accuracy ≥ ARF's on every stream and feedback share: "
            f"{verdict(not below)}"
            + ("" if not below else " — below on " + ", ".join(
                f"{b['stream']} at {_pct(b['share'])} ({b['mliot']} vs {b['arf']})"
                for b in below)) + ".", ""]
    out += table_head("stream", "feedback", "mliot", "ARF", "HAT", "mliot − ARF",
                      "recovery mliot / ARF / HAT (rows)", "corrections / confirmations",
                      "adaptations published / run (drift detected)", "waited for trainer")
    for run in r["runs"]:
        lr = run["learners"]
        tr = run["mliot_trainer"]
        ad = tr["adaptations"]
        rec = "; ".join(
            f"@{lr['mliot']['recovery'][j]['at']}: " + " / ".join(
                _rows(lr[k]["recovery"][j]["recovered_after_rows"]) for k in NAMES)
            for j in range(len(run["drifts"])))
        gap = lr["mliot"]["prequential"] - lr["arf"]["prequential"]
        out.append(f"| {run['stream']} | {_pct(run['share'])} "
                   f"({run['rows_with_feedback']} rows) | {lr['mliot']['prequential']} | "
                   f"{lr['arf']['prequential']} | {lr['hat']['prequential']} | {gap:+.4f} | "
                   f"{rec} | "
                   f"{run['corrections']} / {run['confirmations']} | "
                   f"{sum(bool(a['published']) for a in ad)} / {len(ad)} "
                   f"({tr['drift_detected']}) | {run['waited_for_trainer_s']} s |")
    out += ["", paragraph(_trainer_note(r)), "", _plot(r), ""]
    return out


def _pct(share: float) -> str:
    return f"{share * 100:.0f} %"


def _rows(v: int | None) -> str:
    return "—" if v is None else str(v)


def _trainer_note(r: dict[str, Any]) -> str:
    """What mliot's trainer did with the feedback, summed over the runs."""
    runs = r["runs"]
    failed = sum(len(x["mliot_trainer"]["failed_runs"]) for x in runs)
    pending = sum(x["mliot_trainer"]["corrections_pending_at_end"] for x in runs)
    sent = sum(x["corrections"] for x in runs)
    used = sum(x["mliot_trainer"]["corrections_in_published"] for x in runs)
    busy = [f"{x['stream']} {_pct(x['share'])}" for x in runs if x["trainer_busy_past_cap_at"]]
    ad = [a for x in runs for a in x["mliot_trainer"]["adaptations"]]
    published = sum(bool(a["published"]) for a in ad)
    drift = sum(bool(a["drift"]) for a in ad)
    # the held-out corrections are answers the serving version got wrong, so it scores 0 on
    # them whenever it served them all: the publish-if-not-worse gate then cannot refuse
    zero = sum(a["current_accuracy"] == 0 for a in ad)
    # samples older than the cut with a stale label are left out; with every class stale, only
    # the feedback rows (never stale) remain to train on
    all_stale = sum(any(set(a.get("stale_labels") or ()) == set(x["classes"])
                        for a in x["mliot_trainer"]["adaptations"]) for x in runs)
    return (f"mliot's trainer, over all runs: {sent} corrections sent, {used} of them in "
            f"published adaptations, {pending} still pending (below `retrain_after`) at the "
            f"end; {failed} failed training runs"
            + (f"; trainer still busy past the wait cap on {', '.join(busy)}" if busy else "")
            + f". {len(ad)} adaptations ran, {drift} of them after the drift test fired (most "
            f"with fewer than `retrain_after` corrections), and {published} were published; "
            f"in {zero} the serving version scored 0 on the held-out corrections it was "
            f"compared on. In {all_stale} of {len(runs)} runs the stale cut after a detected "
            "drift came to cover every class, so from then on mliot trained on the feedback "
            "rows alone (the initial rows older than the cut were left out). Each decision "
            "(corrections, held out, both accuracies, the stale cut-off) is in "
            "`results/drift.json`.")


def _plot(r: dict[str, Any]) -> str:
    runs = r["runs"]
    streams = list(dict.fromkeys(x["stream"] for x in runs))
    shares = list(dict.fromkeys(x["share"] for x in runs))
    fig, axes = plt.subplots(len(streams), len(shares), figsize=(9, 2.1 * len(streams)),
                             sharex="row", squeeze=False)
    for run in runs:
        ax = axes[streams.index(run["stream"])][shares.index(run["share"])]
        for name, label in NAMES.items():
            blocks = run["learners"][name]["blocks"]
            x = [run["initial_rows"] + r["block"] * (i + 0.5) for i in range(len(blocks))]
            ax.plot(x, blocks, label=label, lw=1.4 if name == "mliot" else 0.9)
        for d in run["drifts"]:
            ax.axvline(d, color="grey", ls="--", lw=0.8)
        ax.set_title(f"{run['stream']}, {_pct(run['share'])} feedback", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel(f"row (accuracy per {r['block']} rows; dashed: drift points)", fontsize=8)
    return save_plot(fig, "drift")
