"""Two-stage serving (Fig. 8 analogue): a cheap background gate in front of the ensemble.

Two tasks whose streams are mostly background:
- ``audio``: the espeak-ng spoken digits plus a generated ``background`` class of 1 s
  non-speech windows (room-like coloured noise, mains hum with harmonics, near-silence), raw
  16 kHz audio through the log-mel front end;
- ``digits``: scikit-learn's digits with class ``0`` as the background class.
A best-effort ensemble with its gate is trained once per task in a forkserver child process
and written twice into a daemon registry: with the gate (``*_gate``) and without (``*_plain``,
the same members and weights). Then:
1. in-process (this process, one BLAS thread, the daemon's own ``ServedModel.predict`` on one
   row at a time): latency on background samples with and without the gate (``speedup``), and
   on test streams that are 50 % and 80 % background (mean latency and accuracy with and
   without the gate: the accuracy cost);
2. end to end over HTTP (keep-alive, one row per request) against a real daemon serving both
   apps: the same on background samples (``speedup_e2e``).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from bench import datasets
from bench.common import in_child, pct, wait_quiet
from bench.daemon_proc import running_daemon

RATE = 16_000
FRACTIONS = (0.5, 0.8)


def background_windows(n: int, seed: int) -> np.ndarray:
    """``n`` one-second 16 kHz windows of non-speech: a third each of room-like coloured
    noise, mains hum and near-silence, at random levels."""
    rng = np.random.default_rng(seed)
    t = np.arange(RATE) / RATE
    out = np.empty((n, RATE), dtype=np.float32)
    for i in range(n):
        kind = i % 3
        if kind == 0:  # room: white noise shaped 1/f^a (a in 0.5..2), random level
            spec = np.fft.rfft(rng.normal(size=RATE))
            f = np.arange(len(spec)) + 1.0
            x = np.fft.irfft(spec / f ** (rng.uniform(0.5, 2.0) / 2), n=RATE)
            x *= rng.uniform(0.005, 0.1) / (x.std() + 1e-12)
        elif kind == 1:  # hum: 50 or 60 Hz with a few harmonics, plus a little noise
            f0 = rng.choice([50.0, 60.0])
            x = sum(rng.uniform(0.1, 1.0) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3))
                    for h in range(1, 6))
            x = x * rng.uniform(0.01, 0.2) + rng.normal(scale=rng.uniform(1e-4, 5e-3), size=RATE)
        else:  # near-silence
            x = rng.normal(scale=rng.uniform(1e-5, 1e-3), size=RATE)
        out[i] = x
    return out


def task(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str, str]:
    """(X_train, X_test, y_train, y_test, data_type, background class)."""
    if name == "audio":
        Xtr, Xte, ytr, yte = datasets.audio()
        btr, bte = background_windows(len(Xtr), 1), background_windows(4 * len(Xte), 2)
        return (np.concatenate([Xtr, btr]), np.concatenate([Xte, bte]),
                np.concatenate([np.asarray(ytr).astype(str), ["background"] * len(btr)]),
                np.concatenate([np.asarray(yte).astype(str), ["background"] * len(bte)]),
                "audio", "background")
    Xtr, Xte, ytr, yte = datasets.digits()
    return Xtr, Xte, np.asarray(ytr).astype(str), np.asarray(yte).astype(str), "vector", "0"


def train(names: list[str], data_dir: Path, quick: bool) -> dict[str, Any]:
    """Child process: one gated best-effort model per task, published twice (gate / plain)."""
    from mliot_daemon.learn.ensemble import Policy
    from mliot_daemon.learn.persist import save_model
    from mliot_daemon.learn.pipeline import assemble, fit_all, prepare
    from mliot_daemon.registry import Registry

    registry = Registry(data_dir / "models")
    info: dict[str, Any] = {}
    for name in names:
        Xtr, _, ytr, _, data_type, bg = task(name)
        t = time.perf_counter()
        prep = prepare(Xtr, ytr, data_type)
        cands = fit_all(prep, budget_s=2.0 if quick else None, workers=2)
        model = assemble(prep, cands, Policy("best_effort"), X_probe=Xtr[:50],
                         background_class=bg)
        info[name] = {"fit_seconds": round(time.perf_counter() - t, 1),
                      "members": [m.family for m in model.members],
                      "gate": model.gate.report(), "n_train": len(ytr)}
        gate = model.gate
        for suffix, g in (("gate", gate), ("plain", None)):
            model.gate = g
            staging = registry.staging_path(f"{name}_{suffix}")
            save_model(model, staging, {"reason": "initial", "n_samples": len(ytr),
                                        "complete": True})
            registry.publish(f"{name}_{suffix}", staging, keep=5, meta={"reason": "initial"})
    return info


def stream(y: np.ndarray, bg: str, fraction: float, seed: int) -> np.ndarray:
    """Indices of a test stream with every foreground row and ``fraction`` background
    (background rows drawn with replacement when there are too few)."""
    rng = np.random.default_rng(seed)
    fg, bgr = np.flatnonzero(y != bg), np.flatnonzero(y == bg)
    n_bg = int(round(len(fg) * fraction / (1 - fraction)))
    pick = rng.choice(bgr, n_bg, replace=n_bg > len(bgr))
    return rng.permutation(np.concatenate([fg, pick]))


def in_process(name: str, data_dir: Path, n_bg: int) -> dict[str, Any]:
    from actors.server.serving import ServedModel
    from mliot_daemon.learn.fast import single_thread_blas
    from mliot_daemon.learn.persist import load_model
    from mliot_daemon.registry import Registry

    single_thread_blas()
    reg = Registry(data_dir / "models")
    served = {s: ServedModel(1, load_model(reg.version_path(f"{name}_{s}", reg.current(f"{name}_{s}"))))
              for s in ("gate", "plain")}
    _, Xte, _, yte, _, bg = task(name)
    rows = [Xte[i] for i in range(len(Xte))]

    def timed(idx: np.ndarray) -> dict[str, tuple[np.ndarray, list[str], list[int]]]:
        """Both variants on the same rows, alternating row by row (so load drift on a shared
        machine hits both alike)."""
        out = {}
        for i in idx[:20]:
            for sm in served.values():
                sm.predict([rows[i]])
        res = {k: (np.empty(len(idx)), [], []) for k in served}
        for j, i in enumerate(idx):
            for k in (("gate", "plain") if j % 2 else ("plain", "gate")):
                t = time.perf_counter()
                a = served[k].predict([rows[i]])[0]
                res[k][0][j] = time.perf_counter() - t
                res[k][1].append(a.label)
                res[k][2].append(a.stage)
        for k, v in res.items():
            out[k] = v
        return out

    bg_idx = np.flatnonzero(yte == bg)
    bg_idx = np.random.default_rng(0).choice(bg_idx, n_bg, replace=n_bg > len(bg_idx))
    out: dict[str, Any] = {}
    both = timed(bg_idx)
    (t_gate, _, st), (t_plain, _, _) = both["gate"], both["plain"]
    fe = served["gate"].model.front_end
    fe_t = []
    for i in bg_idx[:300]:
        t = time.perf_counter()
        fe.transform([rows[i]])
        fe_t.append(time.perf_counter() - t)
    out["background"] = {"gate_ms": pct(t_gate), "plain_ms": pct(t_plain),
                         "front_end_ms": pct(fe_t),
                         "gate_recall_on_test": round(float(np.mean(np.array(st) == 1)), 4),
                         "speedup": round(float(np.median(t_plain) / np.median(t_gate)), 3)}
    for f in FRACTIONS:
        idx = stream(yte, bg, f, seed=int(f * 100))
        both = timed(idx)
        (tg, lg, sg), (tp, lp, _) = both["gate"], both["plain"]
        truth = yte[idx]
        out[f"stream_{int(f * 100)}"] = {
            "n": len(idx), "gate_mean_ms": round(float(tg.mean() * 1e3), 4),
            "plain_mean_ms": round(float(tp.mean() * 1e3), 4),
            "speedup_mean": round(float(tp.mean() / tg.mean()), 3),
            "gate_accuracy": round(float(np.mean(np.array(lg) == truth)), 5),
            "plain_accuracy": round(float(np.mean(np.array(lp) == truth)), 5),
            "foreground_recall_loss": round(float(np.mean(
                (np.array(sg) == 1)[truth != bg])), 5)}
        out[f"stream_{int(f * 100)}"]["accuracy_cost"] = round(
            out[f"stream_{int(f * 100)}"]["plain_accuracy"]
            - out[f"stream_{int(f * 100)}"]["gate_accuracy"], 5)
    out["speedup"] = out["background"]["speedup"]
    return out


async def http_times(url: str, apps: list[str], bodies: list[bytes]) -> dict[str, list[float]]:
    """Single-row keep-alive requests, alternating between the apps request by request."""
    times: dict[str, list[float]] = {a: [] for a in apps}
    async with aiohttp.ClientSession() as s:
        for b in bodies[:20]:
            for app in apps:
                async with s.post(f"{url}/v1/apps/{app}/predict", data=b) as r:
                    await r.read()
        for j, b in enumerate(bodies):
            for app in (apps if j % 2 else apps[::-1]):
                t = time.perf_counter()
                async with s.post(f"{url}/v1/apps/{app}/predict", data=b) as r:
                    await r.read()
                    assert r.status == 200, await r.text()
                times[app].append(time.perf_counter() - t)
    return times


def end_to_end(url: str, name: str, n: int) -> dict[str, Any]:
    _, Xte, _, yte, _, bg = task(name)
    bg_idx = np.random.default_rng(1).choice(np.flatnonzero(yte == bg), n, replace=True)
    bodies = [orjson.dumps({"instances": [Xte[i].tolist()]}) for i in bg_idx]
    both = asyncio.run(http_times(url, [f"{name}_gate", f"{name}_plain"], bodies))
    tg, tp = both[f"{name}_gate"], both[f"{name}_plain"]
    return {"gate_ms": pct(tg), "plain_ms": pct(tp),
            "request_bytes": int(np.mean([len(b) for b in bodies])),
            "speedup_e2e": round(float(np.median(tp) / np.median(tg)), 3)}


def run(quick: bool) -> dict[str, Any]:
    env = wait_quiet(quick)
    names = ["audio", "digits"]
    n_bg = 300 if quick else 2000
    result: dict[str, Any] = {**env}
    with tempfile.TemporaryDirectory(prefix="mliot-2stage-") as tmp:
        data = Path(tmp) / "data"
        info = in_child(train, names, data, quick)
        apps = ""
        for name in names:
            bg = "background" if name == "audio" else "0"
            dt = "audio" if name == "audio" else "vector"
            for s in ("gate", "plain"):
                extra = f'background_class = "{bg}"\n' if s == "gate" else ""
                shape = "" if dt == "audio" else "shape = [64]\n"
                apps += f'[[apps]]\nname = "{name}_{s}"\ndata_type = "{dt}"\n{shape}{extra}'
        for name in names:
            result[name] = {**info[name], **in_process(name, data, n_bg)}
        with running_daemon(apps + "[training]\nworkers = 1\n", data_dir=data) as (url, _):
            for name in names:
                result[name]["e2e"] = end_to_end(url, name, 300 if quick else 1000)
    for name in names:
        result[name]["speedup_e2e"] = result[name]["e2e"]["speedup_e2e"]
    result["speedup"] = result["audio"]["speedup"]
    result["speedup_e2e"] = result["audio"]["speedup_e2e"]
    result["targets"] = {"speedup": 3.0, "paper_speedup_e2e": round(105 / 65, 2)}
    result["met"] = {"speedup": {n: result[n]["speedup"] >= 3.0 for n in names}}
    return result
