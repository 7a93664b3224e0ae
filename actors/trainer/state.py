"""What the trainer knows of one app: read and written by its decisions (`actor.py`), its runs
(`pipeline.py`) and its adaptation to feedback (`adaptation.py`), all on the actor's loop."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from actors.trainer.drift import PageHinkley
from mliot_daemon.messages import FeedbackAdded
from mliot_daemon.settings import AppSpec


@dataclass
class AppState:
    """What the trainer knows of one app."""

    spec: AppSpec
    trained_on: int = 0  # samples the current version was trained on
    failed_at: int = -1  # sample count of the last failed run (no retry until more data)
    retry_at: float = math.inf  # ... or until then (monotonic): the cluster was unreachable
    last_error: str | None = None  # why the last run failed; None from a run's start
    fitting_on: str | None = None  # where the run in flight fits: machine name or dask:address
    running: asyncio.Task[None] | None = None
    unloadable: int | None = None  # a version the server failed to load
    generation: int = 0  # bumped when the policy changes: a run under the old one is outdated
    val_accuracy: float = 0.0
    detector: PageHinkley | None = None
    corrections: list[FeedbackAdded] = field(default_factory=list)  # since the last adaptation
    # every piece of feedback since the last adaptation, right or wrong (the newest
    # FEEDBACK_KEPT): the held-out rows that decide whether an adaptation is published
    feedback: list[FeedbackAdded] = field(default_factory=list)
    observed: list[FeedbackAdded] = field(default_factory=list)  # since the detector's reset
    drift_sample_id: int = 0  # set when the detector fires; consumed by the next adaptation
    # Samples older than this id with these labels describe a world that has changed; every
    # later run leaves them out (kept in the version's manifest across restarts).
    stale_before_id: int = 0
    stale_labels: frozenset[str] = frozenset()
    last_reason: str = ""
    # the run in flight, for the status page: when it started (monotonic), and the families
    # planned and fitted so far
    run_started: float = 0.0
    planned: int = 0
    fitted: int = 0
    drift_at: float | None = None  # wall time of the last drift detection
