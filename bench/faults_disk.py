"""Part 3 of `bench faults`: the data folder's disk fills up (a tmpfs of a few MiB, filled by a
filler file), during a training run's version saves and during ingest; then space returns.

Checked: the daemon stays up and serves the version it had; a sample write answers 503 "disk
full" (never a 500, never a hang); nothing is corrupted (``PRAGMA integrity_check``, and the
served version loads at a restart); once the filler is deleted, writes are accepted and
training publishes again. Needs root for ``mount -t tmpfs``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.faults_env import Daemon, until

SIZE_MIB = 48


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int = SIZE_MIB) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` mounted on ``path`` (unmounted afterwards)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def can_mount() -> bool:
    return os.geteuid() == 0


def fill(folder: Path) -> Path:
    """Write a filler file until the file system has no byte left."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    f.write(chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


def integrity(db: Path) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def _samples(start: int, n: int) -> list[dict[str, Any]]:
    return [{"features": [float(start + i), float(i % 2) * 5.0, float(i % 3)],
             "label": "ab"[i % 2]} for i in range(n)]


def _version(d: Daemon) -> int | None:
    return d.request("GET", "/v1/apps/v")[1].get("model_version")


def disk_full(workdir: Path) -> dict[str, Any]:
    """The scenario; every observation in the returned dict (the caller judges)."""
    out: dict[str, Any] = {"tmpfs_mib": SIZE_MIB}
    with tmpfs(workdir / "data") as data:
        d = Daemon(workdir, "[training]\nworkers = 1\n", data_dir=data)
        d.start()
        try:
            assert d.request("PUT", "/v1/apps/v", {"data_type": "vector", "shape": [3]})[0] == 201
            assert d.request("POST", "/v1/apps/v/samples", {"samples": _samples(0, 60)})[0] == 200
            until(lambda: _version(d) is not None and not _training(d), 300, 0.25,
                  "first model")
            before = _version(d)
            # Version saves on a full disk: more samples start a run; once it has published
            # its quick version (its data is read, its fits under way) the disk fills, so the
            # versions of the fits that finish next cannot be saved.
            assert d.request("POST", "/v1/apps/v/samples", {"samples": _samples(100, 90)})[0] == 200
            until(lambda: (_version(d) or 0) > (before or 0), 120, 0.01, "a quick version")
            training_when_filled = _training(d)
            filler = fill(data)
            until(lambda: not _training(d), 300, 0.25, "the run ended")
            out["save"] = {"version_before": before, "version_after": _version(d),
                           "training_when_filled": training_when_filled,
                           "run_error": d.request("GET", "/v1/status")[1]["apps"]["v"]
                           ["training"]["last_error"],
                           "daemon_up": d.alive(),
                           "predict": d.request("POST", "/v1/apps/v/predict",
                                                {"instances": [[0.0, 5.0, 1.0]]})[0]}
            # Ingest on the full disk: what sits free in the WAL may take a few commits first.
            statuses, answer = [], None
            for i in range(200):
                status, answer = d.request("POST", "/v1/apps/v/samples",
                                           {"samples": _samples(10_000 + 50 * i, 50)})
                statuses.append(status)
                if status != 200:
                    break
            out["ingest"] = {"accepted_before_refusal": statuses.count(200),
                             "status": statuses[-1], "answer": answer,
                             "predict": d.request("POST", "/v1/apps/v/predict",
                                                  {"instances": [[0.0, 5.0, 1.0]]})[0],
                             "readyz": d.request("GET", "/readyz")[0],
                             "daemon_up": d.alive()}
            out["integrity_while_full"] = integrity(data / "mliot.db")
            # Space returns: writes are accepted again and training publishes again.
            filler.unlink()
            freed = time.monotonic()
            until(lambda: d.request("POST", "/v1/apps/v/samples",
                                    {"samples": _samples(500_000, 60)})[0] == 200, 30, 0.2,
                  "a write accepted after space returned")
            accepted_s = time.monotonic() - freed
            version = out["save"]["version_after"] or 0
            until(lambda: (_version(d) or 0) > version and not _training(d), 300, 0.25,
                  "a version published after space returned")
            out["resume"] = {"write_accepted_after_s": round(accepted_s, 2),
                             "version": _version(d)}
            d.stop()
            out["integrity_after"] = integrity(data / "mliot.db")
            out["leftovers"] = sorted(str(p.relative_to(data)) for p in data.rglob(".*"))
            # The served version loads at a restart (/readyz waits for it) and serves.
            d.start()
            out["restart"] = {"version": _version(d),
                              "predict": d.request("POST", "/v1/apps/v/predict",
                                                   {"instances": [[0.0, 5.0, 1.0]]})[0]}
        finally:
            d.stop()
            out["log_errors"] = sorted({_event(line) for line in d.tail(10_000_000).splitlines()
                                        if '"error"' in line or '"exception"' in line} - {""})
    return out


def _training(d: Daemon) -> bool:
    return bool(d.request("GET", "/v1/status")[1]["apps"]["v"]["training"]["training"])


def _event(line: str) -> str:
    import json

    try:
        rec = json.loads(line)
    except ValueError:
        return ""
    return f"{rec.get('event')} ({rec.get('level')})"
