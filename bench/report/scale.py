"""Scale: training time and event-loop lag against data size, pool workers and Dask."""

from __future__ import annotations

from typing import Any

from bench.report.common import header, load, plt, save_plot, table_head, verdict


def section(r: dict[str, Any]) -> list[str]:
    out = header(r, "Scale — training time against data size and workers")
    out += ["MNIST subsets posted in one request to a fresh daemon; training time = from the "
            "acknowledgement until the trainer is idle (all seven families fitted).", ""]
    out += table_head("workers", "n", "first serve s", "training s", "versions",
                      "loop lag p50 / p99 ms")
    for p in r["points"]:
        out.append(f"| {p['workers']} | {p['n']} | {p['first_serve_s']} | {p['training_s']} | "
                   f"{p['versions']} | {p['loop_lag_p50_ms']} / {p['loop_lag_p99_ms']} |")
    # On 2 cores one worker on 60k takes many minutes, so `bench scale` skips that point; the
    # `lazy` benchmark makes the same request with one worker, and a full run of it stands in.
    lz = load("lazy")
    if lz and not lz.get("quick") and not any(p["workers"] == 1 and p["n"] == lz["n_train"]
                                              for p in r["points"]):
        out.append(f"| 1 (from `lazy`) | {lz['n_train']} | {lz['first_serve_s']} | "
                   f"{lz['training_seconds']} | {len(lz['versions'])} | — |")
    dask = r["dask"].get("points", [])
    for p in dask:
        out.append(f"| Dask, {r['dask']['workers']} local workers | {p['n']} | "
                   f"{p['first_serve_s']} | {p['training_s']} | {p['versions']} | "
                   f"{p['loop_lag_p50_ms']} / {p['loop_lag_p99_ms']} |")
    worst, target = r["max_loop_lag_p99_ms"], r["targets"]["loop_lag_p99_ms"]
    out += ["", _speedup_note(r), "",
            f"Worst loop-lag p99 during training: {worst} ms (target {target} ms: "
            f"{verdict(worst <= target)}).", ""]
    out += [_plot(r), ""]
    return out


def _speedup_note(r: dict[str, Any]) -> str:
    """Training time with two pool workers (and with Dask) over one pool worker, at each size
    measured both ways; empty when no size was."""
    one = {p["n"]: p["training_s"] for p in r["points"] if p["workers"] == 1}
    two = {p["n"]: p["training_s"] for p in r["points"] if p["workers"] == 2}
    both = sorted(set(one) & set(two))
    if not both:
        return ""
    on_dask = {p["n"]: p["training_s"] for p in r["dask"].get("points", [])}
    dask_note = ("; Dask with two workers against one pool worker: " + ", ".join(
        f"{n}: {on_dask[n] / one[n]:.2f}" for n in sorted(on_dask) if n in one)
        if on_dask else "; Dask: not measured in this run")
    return ("Training time ratio at the same size, two pool workers against one: "
            + ", ".join(f"{n}: {two[n] / one[n]:.2f}" for n in both)
            + dask_note + ". " + r.get("note", "")
            + " (The 60k one-worker figure comes from `lazy`, which also polls 500 "
            "predictions a second, so it is not a like-for-like pair.)")


def _plot(r: dict[str, Any]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    series = [(f"{w} pool worker(s)", [p for p in r["points"] if p["workers"] == w])
              for w in sorted({p["workers"] for p in r["points"]})]
    dask = r["dask"].get("points", [])
    if dask:
        series.append((f"Dask, {r['dask']['workers']} workers", dask))
    for label, pts in series:
        axes[0].plot([p["n"] for p in pts], [p["training_s"] for p in pts], marker="o",
                     label=label)
        axes[1].plot([p["n"] for p in pts], [p["loop_lag_p99_ms"] for p in pts], marker="o",
                     label=label)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("training images")
        ax.legend()
    axes[0].set_ylabel("training time (s)")
    axes[1].set_ylabel("loop lag p99 during training (ms)")
    return save_plot(fig, "scale")
