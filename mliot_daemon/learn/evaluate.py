"""``mliot evaluate``: train and test offline exactly as the daemon would, and report.

``mliot evaluate --data FILE.npz [--policy best_effort|low_latency] [--type T] [--json]``

The npz holds ``X_train, y_train, X_test, y_test`` (or ``X, y``, split 70/30 stratified with
seed 0) and may hold a 0-d string ``data_type`` (else ``--type``, else ``vector``) and, as an
extension, a 0-d string ``background_class`` (enables the two-stage report) and, with
``X_train``, ``groups_train``: one id per training sample (e.g. the recording each sensor
window was cut from), so that windows of one recording stay in one validation fold.
``--json`` prints the object of record (DESIGN.md); without it a table. A progress bar
(models fitted / total, elapsed) goes to stderr when stderr is a terminal. Accuracies are on the test split;
``latency_ms`` is the median time to predict ONE sample as served (front end included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from mliot_daemon.learn.ensemble import Policy
from mliot_daemon.learn.errors import DataError
from mliot_daemon.learn.frontends import DATA_TYPES
from mliot_daemon.learn.pipeline import TrainedModel, train
from mliot_daemon.learn.profile import median_latency_ms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``evaluate``'s options to ``parser``."""
    parser.add_argument("--data", required=True, help="an .npz with X_train/y_train/X_test/y_test or X/y")
    parser.add_argument("--policy", choices=["best_effort", "low_latency"], default="best_effort")
    parser.add_argument("--type", dest="data_type", choices=list(DATA_TYPES), default=None,
                        help="data type when the file does not say (default vector)")
    parser.add_argument("--json", action="store_true", help="print the JSON of record")
    parser.add_argument("--budget", type=float, default=None,
                        help="search seconds per family (default: grows with the data)")
    parser.add_argument("--workers", type=int, default=None, help="fit processes (default: cores)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate")


def load_npz(path: str, data_type: str | None) -> dict[str, Any]:
    """Read the evaluation file into train/test arrays and the data type."""
    try:
        d = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    with d:
        keys = set(d.files)
        dtype = str(d["data_type"]) if "data_type" in keys else (data_type or "vector")
        bg = str(d["background_class"]) if "background_class" in keys else None
        groups = None
        if {"X_train", "y_train", "X_test", "y_test"} <= keys:
            Xtr, ytr, Xte, yte = d["X_train"], d["y_train"], d["X_test"], d["y_test"]
            if "groups_train" in keys:
                groups = d["groups_train"]
                if groups.shape != (len(ytr),):
                    raise DataError(f"groups_train needs one id per training sample "
                                    f"({len(ytr)}), got shape {groups.shape}")
        elif {"X", "y"} <= keys:
            X, y = d["X"], d["y"]
            if len(X) != len(y) or len(X) < 4:
                raise DataError("X and y must have the same, non-trivial length")
            try:
                Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
            except ValueError as exc:
                raise DataError(f"cannot split 70/30 stratified: {exc}") from None
        else:
            raise DataError(f"{path} needs arrays X_train, y_train, X_test, y_test or X, y; "
                            f"found {sorted(keys)}")
    return {"X_train": Xtr, "y_train": ytr, "X_test": Xte, "y_test": yte, "data_type": dtype,
            "background_class": bg, "groups": groups}


class _Bar:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int, family: str) -> None:
        if not self.enabled:
            return
        width = 28
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} models "
                         f"{time.perf_counter() - self.t0:6.1f}s  {family:<14}")
        sys.stderr.flush()
        if done == total:
            sys.stderr.write("\n")


def report(model: TrainedModel, data: dict[str, Any]) -> dict[str, Any]:
    """The JSON of record for a trained model and its test split."""
    classes = model.classes
    index = {c: i for i, c in enumerate(classes)}
    y_test_s = np.asarray(data["y_test"]).astype(str)
    unknown = sorted(set(y_test_s) - set(index))
    if unknown:
        raise DataError(f"test labels not seen in training: {unknown[:5]}")
    y_test = np.array([index[c] for c in y_test_s])
    X_test = data["X_test"]
    Z = model.front_end.transform(X_test)
    Zr = model.reducer(Z) if model.reducer is not None else None
    fe_ms = float(model.metrics.get("front_end_ms", 0.0))
    models = []
    for m in model.candidates:
        pred = m.fast.predict(Zr if m.reduced else Z)
        models.append({"family": m.family, "accuracy": round(float((pred == y_test).mean()), 5),
                       "fit_seconds": round(m.fit_seconds, 3),
                       "latency_ms": round(fe_ms + m.latency_ms, 4),
                       "params": m.summary()["params"], "reduced_dims": m.reduced_dims})
    fast = model.fast()
    ens_pred = fast.predict_features(Z)
    rows = X_test[:200]
    ens_ms = median_latency_ms(fast.predict, rows, repeats=300) if isinstance(rows, np.ndarray) \
        else fe_ms + median_latency_ms(fast.predict_features, Z[:200], repeats=300)
    out: dict[str, Any] = {
        "data": {"n_train": int(len(data["y_train"])), "n_test": int(len(y_test)),
                 "n_features": int(model.front_end.n_features_), "classes": classes},
        "policy": model.policy.as_dict(),
        "models": models,
        "ensemble": {"members": model.selection.families,
                     "weights": [round(w, 5) for w in model.selection.weights],
                     "vote": model.selection.vote,
                     "accuracy": round(float((ens_pred == y_test).mean()), 5),
                     "latency_ms": round(ens_ms, 4)},
        "two_stage": None,
    }
    if model.gate is not None:
        g = model.gate
        pred, stage = model.predict_two_stage(X_test, Z)
        called = stage == 1
        is_bg = y_test == g.background
        if g.raw:  # the gate reads the clip before the front end
            s1 = median_latency_ms(lambda x: model.background(x, Z[:1]), X_test[:200],
                                   repeats=300)
        else:
            s1 = median_latency_ms(lambda z: g.is_background(z), Z[:200], repeats=300) + fe_ms
        out["two_stage"] = {
            "background_class": classes[g.background], "threshold": round(g.threshold, 6),
            "precision": round(float((called & is_bg).sum() / max(called.sum(), 1)), 5),
            "recall": round(float((called & is_bg).sum() / max(is_bg.sum(), 1)), 5),
            "accuracy": round(float((pred == y_test).mean()), 5),
            "stage1_share": round(float(called.mean()), 5),
            "stage1_latency_ms": round(s1, 4), "stage2_latency_ms": round(s1 + ens_ms - fe_ms, 4),
        }
    return out


def _table(res: dict[str, Any]) -> str:
    d, p = res["data"], res["policy"]
    lines = [f"data: {d['n_train']} train / {d['n_test']} test, {d['n_features']} features, "
             f"{len(d['classes'])} classes",
             f"policy: {p['mode']} (budget {p['latency_ms']} ms, at most {p['max_models']} models)",
             "", f"{'model':<14} {'accuracy':>9} {'latency ms':>11} {'fit s':>8} {'dims':>5}"]
    members = set(res["ensemble"]["members"])
    for m in res["models"]:
        mark = " *" if m["family"] in members else ""
        lines.append(f"{m['family']:<14} {m['accuracy']:>9.4f} {m['latency_ms']:>11.4f} "
                     f"{m['fit_seconds']:>8.2f} {str(m['reduced_dims'] or '-'):>5}{mark}")
    e = res["ensemble"]
    lines += ["", f"ensemble (*): {', '.join(e['members'])}",
              f"  accuracy {e['accuracy']:.4f}, latency {e['latency_ms']:.4f} ms",
              "  weights " + ", ".join(f"{w:.3f}" for w in e["weights"])]
    if res["two_stage"]:
        t = res["two_stage"]
        lines.append(f"two-stage: background '{t['background_class']}' precision {t['precision']:.3f} "
                     f"recall {t['recall']:.3f}, stage 1 {t['stage1_latency_ms']:.4f} ms, "
                     f"stage 2 {t['stage2_latency_ms']:.4f} ms, accuracy {t['accuracy']:.4f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run ``mliot evaluate``; returns the exit code (2 for bad data)."""
    try:
        data = load_npz(args.data, args.data_type)
        policy = Policy(args.policy)
        model = train(data["X_train"], data["y_train"], data["data_type"], policy,
                      sample_rate=getattr(args, "sample_rate", 16000),
                      background_class=data["background_class"],
                      budget_s=getattr(args, "budget", None), workers=getattr(args, "workers", None),
                      progress=_Bar(sys.stderr.isatty()), groups=data["groups"])
        res = report(model, data)
    except DataError as exc:
        print(f"mliot evaluate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(res) if args.json else _table(res))
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="mliot evaluate")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
