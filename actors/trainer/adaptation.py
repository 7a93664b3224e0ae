"""Adaptation to feedback: drift detection, and publish-if-not-worse.

Every piece of feedback updates a Page-Hinkley test on the error stream (``observe_feedback``).
After `retrain_after` corrections, or when the test fires, the actor starts a ``feedback`` run
(``adapt``): the app is retrained with corrections counted three times, and after a detected
drift without the stale samples of the corrected classes. The new version is published only if
it is at least as accurate as the current one on the newest corrections, which are held out of
its training.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import structlog

from actors.trainer.drift import PageHinkley
from actors.trainer.pipeline import Pipeline
from actors.trainer.state import AppState
from mliot_daemon.learn import jobs
from mliot_daemon.messages import FeedbackAdded

log = structlog.get_logger("mliot.trainer")

HOLDOUT_SHARE = 0.3  # of the corrections, the newest: held out to compare new and current


def observe_feedback(state: AppState, msg: FeedbackAdded) -> None:
    """Feed one piece of feedback to the app's drift detector; when it fires, mark where the
    change began for the next adaptation."""
    if state.detector is None:
        state.detector = PageHinkley(1.0 - state.val_accuracy)
    state.observed.append(msg)
    if state.detector.update(msg.wrong):
        # the change began just after the statistic's minimum: older samples of the
        # corrected classes describe the old world
        start = state.observed[state.detector.change_started_at]
        state.drift_sample_id = state.drift_sample_id or start.sample_id
        state.drift_at = time.time()
        log.info("drift_detected", app=msg.app, feedback_seen=state.detector.n,
                 corrections=len(state.corrections), from_sample=start.sample_id)
        state.detector.reset()
        state.observed = []


async def adapt(pipeline: Pipeline, state: AppState, run_dir: Path, n: int) -> None:
    """Refit the served members from feedback; publish only if at least as good on the
    newest corrections, which are held out of training."""
    corrections, state.corrections = state.corrections, []
    drift_id, state.drift_sample_id = state.drift_sample_id, 0
    stale = state.stale_before_id, state.stale_labels
    try:
        await _adapt_with(pipeline, state, run_dir, n, corrections, drift_id)
    except BaseException:
        # keep the evidence for the next try (new corrections may have come meanwhile)
        state.corrections = corrections + state.corrections
        state.drift_sample_id = state.drift_sample_id or drift_id
        state.stale_before_id, state.stale_labels = stale
        raise


async def _adapt_with(pipeline: Pipeline, state: AppState, run_dir: Path, n: int,
                      corrections: list[FeedbackAdded], drift_id: int) -> None:
    app = state.spec.name
    registry = pipeline.registry
    if drift_id:
        state.stale_before_id = max(state.stale_before_id, drift_id)
    if state.stale_before_id:
        state.stale_labels |= {c.label for c in corrections} | {c.predicted
                                                                 for c in corrections}
    upto = await pipeline.store.last_sample_id(app)
    held = max(1, int(len(corrections) * HOLDOUT_SHARE))
    holdout = [c.sample_id for c in corrections[-held:]]
    data = pipeline.training_data(state, upto, holdout_ids=tuple(holdout))
    current = await asyncio.to_thread(registry.current, app)
    refit: dict[str, dict[str, Any]] = {}
    if current is not None:
        manifest = await asyncio.to_thread(registry.manifest, app, current)
        refit = {m["family"]: m.get("params", {}) for m in manifest["members"]}
    pipeline.event(app, "retraining_started", reason="feedback", corrections=len(corrections),
                   drift=bool(drift_id))
    staging, summary = await pipeline.fit_steps(state, data, run_dir, "feedback", n,
                                                refit or {"ridge": {}})
    assert staging is not None
    dirs = [staging] + ([registry.version_path(app, current)] if current else [])
    scores = await pipeline.pool.call(jobs.score_job, dirs, data, holdout)
    new, old = scores[0], (scores[1] if len(scores) > 1 else float("-inf"))
    decision = {"corrections": len(corrections), "holdout": len(holdout),
                "new_accuracy": new, "current_accuracy": old, "drift": bool(drift_id),
                "stale_before_id": state.stale_before_id,
                "stale_labels": sorted(state.stale_labels), "published": bool(new >= old)}
    log.info("adaptation_decided", app=app, **decision)
    if new >= old:
        await pipeline.publish(state, staging, "feedback", summary, decision)
    else:
        await asyncio.to_thread(shutil.rmtree, staging, True)
        # keep the evidence for the next try, with what came in meanwhile
        state.corrections = corrections[-held:] + state.corrections
    pipeline.event(app, "retraining_finished", ok=True, reason="feedback", **decision)
