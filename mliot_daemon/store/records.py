"""What the store answers and raises: the results of acknowledged writes, the prediction
records it keeps, their ids, and its errors."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mliot_daemon.errors import Unavailable


class StoreError(Unavailable):
    """A write could not be committed (or the database cannot be used): the request may be
    tried again later."""

    def __init__(self, message: str) -> None:
        super().__init__(f"store unavailable: {message}")


class StoreFull(StoreError):
    """The disk (or the database's size limit) is full; nothing of the write was kept."""


class NotFound(KeyError):
    """No such row."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What an acknowledged batch of samples did."""

    accepted: int
    n_samples: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """A committed correction: the training sample it became, and what had been predicted.
    One correction per prediction: a repeat (a client's retry) changes nothing."""

    sample_id: int
    predicted: str
    label: str  # the label stored (a repeat returns the first one)
    duplicate: bool


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One served prediction, kept for feedback and audit."""

    id: str
    app: str
    label: str
    confidence: float
    stage: int
    model_version: int | None
    features: np.ndarray
    margin: float | None = None


_ID_BATCH = 256
_ids: list[str] = []


def new_prediction_id() -> str:
    """128 random bits as hex (a UUID object would only cost time on the hot path). The
    bits come from ``os.urandom`` 256 ids at a time: one system call, not one per id."""
    if not _ids:
        raw = os.urandom(16 * _ID_BATCH).hex()
        _ids.extend(raw[i:i + 32] for i in range(0, len(raw), 32))
    return _ids.pop()


os.register_at_fork(after_in_child=_ids.clear)  # a forked child must not reuse the parent's
