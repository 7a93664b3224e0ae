"""Training samples read straight from the daemon's SQLite file, in a pool worker.

This module owns which stored samples a run uses (:class:`TrainingData`), reading them
read-only (:func:`read_samples`, :func:`sample_ids`, :func:`read_ids`), picking a subsample
spread over the history (:func:`spread`), turning them into training rows (held-out and stale
samples left out, corrections repeated: :func:`training_rows`) and into a front end's input
(:func:`as_input`). The store's writer is the daemon; workers only read, by path, so nothing
but the small :class:`TrainingData` travels to them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mliot_daemon.sample_codec import decode

ID_CHUNK = 4096  # ids per "id IN (...)" query (SQLite allows 32,766 variables)


@dataclass(frozen=True)
class TrainingData:
    """Which stored samples a training run uses."""

    db_path: Path
    app: str
    upto_id: int  # the newest sample id included
    holdout_ids: tuple[int, ...] = ()  # kept out of training, for the publish decision
    feedback_repeats: int = 1  # corrections count this many times
    # After a detected drift: samples older than this id with these labels describe a world
    # that is gone (a swapped label, a shifted sensor) and are left out.
    stale_before_id: int = 0
    stale_labels: tuple[str, ...] = ()


def read_samples(db_path: Path, app: str, where: str, args: tuple[Any, ...]
                 ) -> tuple[list[np.ndarray], list[str], list[str], list[int]]:
    """(features, labels, sources, ids) of an app's samples matching ``where``."""
    uri = f"file:{db_path}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute(
            f"SELECT id, features, shape, label, source FROM samples WHERE app=? AND {where} "
            "ORDER BY id", (app, *args)).fetchall()
    feats = [decode(r[1], r[2]) for r in rows]
    return feats, [r[3] for r in rows], [r[4] for r in rows], [r[0] for r in rows]


def sample_ids(db_path: Path, app: str, upto_id: int) -> list[int]:
    """An app's sample ids up to ``upto_id``, in order: read from the ``(app, id)`` index
    alone, without touching the rows (60,000 ids: ~10 ms)."""
    uri = f"file:{db_path}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT id FROM samples WHERE app=? AND id <= ? ORDER BY id", (app, upto_id))]


def read_ids(db_path: Path, app: str, ids: list[int]
             ) -> tuple[list[np.ndarray], list[str], list[str], list[int]]:
    """:func:`read_samples` for the given ids (looked up by primary key, in chunks)."""
    out: tuple[list[Any], list[str], list[str], list[int]] = ([], [], [], [])
    for s in range(0, len(ids), ID_CHUNK):
        chunk = tuple(ids[s:s + ID_CHUNK])
        part = read_samples(db_path, app, f"id IN ({','.join('?' * len(chunk))})", chunk)
        for acc, got in zip(out, part, strict=True):
            acc.extend(got)
    return out


def spread(ids: list[int], k: int) -> list[int]:
    """``k`` of ``ids`` evenly spaced over them (all when k >= len(ids)): a subsample that
    covers the whole history, whatever order the classes arrived in."""
    if k >= len(ids):
        return list(ids)
    if k <= 0:
        return []
    return [ids[i] for i in np.linspace(0, len(ids) - 1, k).round().astype(np.int64)]


def training_rows(data: TrainingData, feats: list[np.ndarray], labels: list[str],
                  sources: list[str], ids: list[int]) -> tuple[list[np.ndarray], list[str]]:
    """The rows a run trains on: without the held-out and the stale samples, corrections
    repeated ``feedback_repeats`` times."""
    held = set(data.holdout_ids)
    stale = set(data.stale_labels)
    X: list[np.ndarray] = []
    y: list[str] = []
    for f, label, source, i in zip(feats, labels, sources, ids, strict=True):
        # corrections are never stale: they are the newest word on what a sample is
        if i in held or (i < data.stale_before_id and label in stale and source != "feedback"):
            continue
        repeats = data.feedback_repeats if source == "feedback" else 1
        X.extend([f] * repeats)
        y.extend([label] * repeats)
    return X, y


def as_input(feats: list[np.ndarray], dtype: Any = None) -> np.ndarray | list[np.ndarray]:
    """One array when every sample has one shape (in ``dtype``: one copy, not two), else the
    list (ragged audio)."""
    if feats and all(f.shape == feats[0].shape for f in feats):
        return np.stack(feats, dtype=dtype)
    return feats
