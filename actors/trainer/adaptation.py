"""Adaptation to feedback: drift detection, and publish-if-not-worse.

Every piece of feedback updates a Page-Hinkley test on the error stream (``observe_feedback``).
After `retrain_after` corrections, or when the test fires, the actor starts a ``feedback`` run
(``adapt``): the served members are refitted with feedback counted three times. The new
version is published only if it is at least as accurate as the current one on the newest
feedback, right and wrong answers alike, which is held out of its training.

Held-out rows were once the newest corrections alone: answers the serving version had got
wrong by definition, so it scored 0 on them and every adaptation passed (82 of 82 in
``python -m bench drift``). With confirmations among them the comparison is prequential: how
each version does on what came in last.

After a detected drift, the older samples of the corrected classes look stale. Leaving them out
is right when the world changed and wrong when it did not: on 2-3 class streams it left the
app with its feedback rows alone (15-56 rows at 1 % feedback), and accuracy fell from 0.92 to
0.72 (``bench drift``, SEA). So a drift run fits both (with and without the stale samples) and
publishes the one that does better on the held-out feedback, if it beats the current version.
The drift detector of a version published by adaptation expects the error its held-out
feedback showed, when that is worse than its validation error: repeated feedback rows sit in
several validation folds, which makes that figure optimistic, and a detector expecting too
little error fired after nearly every adaptation.
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
from mliot_daemon.messages import FeedbackAdded

log = structlog.get_logger("mliot.trainer")

HOLDOUT_SHARE = 0.3  # of the feedback, the newest: held out to compare new and current
FEEDBACK_KEPT = 1000  # feedback remembered per app between adaptations


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


def held_out(recent: list[FeedbackAdded]) -> tuple[int, tuple[int, ...]]:
    """How many of the newest feedback rows are held out, and their sample ids (each once):
    confirmations and corrections alike, as they came."""
    held = max(1, int(len(recent) * HOLDOUT_SHARE))
    return held, tuple(dict.fromkeys(c.sample_id for c in recent[-held:]))


async def adapt(pipeline: Pipeline, state: AppState, run_dir: Path, n: int) -> None:
    """Refit the served members from feedback; publish only if at least as good on the
    newest feedback, which is held out of training."""
    corrections, state.corrections = state.corrections, []
    feedback, state.feedback = state.feedback, []
    drift_id, state.drift_sample_id = state.drift_sample_id, 0
    stale = state.stale_before_id, state.stale_labels
    try:
        await _adapt_with(pipeline, state, run_dir, n, corrections, feedback, drift_id)
    except BaseException:
        # keep the evidence for the next try (new feedback may have come meanwhile)
        state.corrections = corrections + state.corrections
        state.feedback = (feedback + state.feedback)[-FEEDBACK_KEPT:]
        state.drift_sample_id = state.drift_sample_id or drift_id
        state.stale_before_id, state.stale_labels = stale
        raise


async def _adapt_with(pipeline: Pipeline, state: AppState, run_dir: Path, n: int,
                      corrections: list[FeedbackAdded], feedback: list[FeedbackAdded],
                      drift_id: int) -> None:
    app = state.spec.name
    registry = pipeline.registry
    before = state.stale_before_id, state.stale_labels
    if drift_id:
        state.stale_before_id = max(state.stale_before_id, drift_id)
    if state.stale_before_id:
        state.stale_labels |= {c.label for c in corrections} | {c.predicted
                                                                 for c in corrections}
    upto = await pipeline.store.last_sample_id(app)
    held, holdout = held_out(feedback or corrections)
    current = await asyncio.to_thread(registry.current, app)
    refit: dict[str, dict[str, Any]] = {}
    if current is not None:
        manifest = await asyncio.to_thread(registry.manifest, app, current)
        refit = {m["family"]: m.get("params", {}) for m in manifest["members"]}
    pipeline.event(app, "retraining_started", reason="feedback", corrections=len(corrections),
                   drift=bool(drift_id))
    # (stale_before_id, stale_labels) of each version to fit: the proposed cut, and after a
    # drift also the one before it
    cuts = [(state.stale_before_id, state.stale_labels)]
    if (state.stale_before_id, state.stale_labels) != before:
        cuts.append(before)
    fitted: list[tuple[Path, dict[str, Any]]] = []
    try:
        for i, (before_id, labels) in enumerate(cuts):
            state.stale_before_id, state.stale_labels = before_id, labels
            data = pipeline.training_data(state, upto, holdout_ids=holdout)
            staging, summary = await pipeline.fit_steps(state, data, run_dir / f"cut{i}",
                                                        "feedback", n, refit or {"ridge": {}})
            assert staging is not None
            fitted.append((staging, summary))
        dirs = [s for s, _ in fitted] + ([registry.version_path(app, current)] if current
                                         else [])
        from mliot_daemon.learn import jobs  # imported in a thread before the first job

        scores = await pipeline.pool.call(jobs.score_job, dirs, data, list(holdout))
    except BaseException:
        for staging, _ in fitted:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        raise
    best = max(range(len(fitted)), key=lambda i: (scores[i], -i))
    new = scores[best]
    old = scores[len(fitted)] if current is not None else float("-inf")
    state.stale_before_id, state.stale_labels = cuts[best]
    decision = {"corrections": len(corrections), "feedback": len(feedback),
                "holdout": len(holdout), "new_accuracy": new, "current_accuracy": old,
                "drift": bool(drift_id), "stale_samples_left_out": best == 0 and len(cuts) > 1,
                "stale_before_id": state.stale_before_id,
                "stale_labels": sorted(state.stale_labels), "published": bool(new >= old)}
    log.info("adaptation_decided", app=app, **decision)
    for i, (staging, _) in enumerate(fitted):
        if i != best or new < old:
            await asyncio.to_thread(shutil.rmtree, staging, True)
    if new >= old:
        staging, summary = fitted[best]
        await pipeline.publish(state, staging, "feedback", summary, decision)
    else:
        state.stale_before_id, state.stale_labels = before
        # keep the evidence for the next try, with what came in meanwhile
        state.corrections = corrections[-held:] + state.corrections
        state.feedback = (feedback[-held:] + state.feedback)[-FEEDBACK_KEPT:]
    pipeline.event(app, "retraining_finished", ok=True, reason="feedback", **decision)
