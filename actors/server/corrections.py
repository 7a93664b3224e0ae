"""Feedback on served predictions, and corrections from people who saw one (Home
Assistant's select and button, a label query): the serving core's operations that store
feedback. Mixed into ``ServingCore``, whose state (catalog, store, router, queries) they use."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from actors.server.payloads import check_label, label_text
from mliot_daemon.errors import Invalid, NotFound
from mliot_daemon.messages import FeedbackAdded, FeedbackIn
from mliot_daemon.store import NotFound as NoRow

if TYPE_CHECKING:
    from actors.server.core import ServingCore

RECENT_FEEDBACK = 100  # "accuracy on recent feedback": over this many corrections/confirmations


class Corrections:
    """``feedback``, ``correct`` and the recent feedback accuracy."""

    def feedback_accuracy(self: ServingCore, app: str) -> float | None:
        """The share of the app's newest feedback that confirmed its prediction."""
        recent = self.recent_feedback.get(app)
        return round(sum(recent) / len(recent), 5) if recent else None

    async def feedback(self: ServingCore, app: str, feedback: FeedbackIn) -> dict[str, Any]:
        """Commit a correction of a served prediction; it becomes a training sample."""
        entry = self.app(app)
        if not isinstance(feedback.prediction_id, str):
            raise Invalid("prediction_id: must be a string")
        label = label_text(feedback.label, "label")
        check_label(entry.spec, label, "label")
        served = self.router.served.get(entry.name)
        if entry.spec.classes is None and served is not None \
                and label not in served.current.classes:
            raise Invalid(f"label: unknown label {label!r}; known labels are "
                          f"{served.current.classes}")
        try:
            result = await self.store.add_feedback(entry.name, feedback.prediction_id, label)
        except NoRow:
            raise NotFound(f"unknown prediction id {feedback.prediction_id!r}") from None
        if not result.duplicate:
            self.queries.answered(entry.name, feedback.prediction_id)
            self.recent_feedback.setdefault(entry.name, deque(maxlen=RECENT_FEEDBACK)).append(
                result.label == result.predicted)
            outcome = "confirmed" if result.label == result.predicted else "corrected"
            self.metrics.feedback.labels(entry.name, outcome).inc()
            accuracy = self.feedback_accuracy(entry.name)
            if accuracy is not None:
                self.metrics.feedback_accuracy.labels(entry.name).set(accuracy)
            await self.refs.trainer.send(FeedbackAdded(
                app=entry.name, wrong=result.label != result.predicted,
                sample_id=result.sample_id, label=result.label, predicted=result.predicted))
        return {"prediction_id": feedback.prediction_id, "label": result.label,
                "predicted": result.predicted, "duplicate": result.duplicate}

    async def correct(self: ServingCore, app: str, label: str | None, prediction_id: str | None
                      ) -> dict[str, Any]:
        """A correction (``label``) or confirmation (None) from a person who saw the open
        label query or the latest prediction (Home Assistant's select and button), or names
        the prediction; feedback like any other."""
        entry = self.app(app)
        if prediction_id is None:
            first = self.queries.open_queries(entry.name)[:1]
            target = (first[0].prediction_id, first[0].label) if first \
                else self.latest.get(entry.name)
            if target is None:
                raise NotFound(f"no prediction of {entry.name!r} to correct yet")
            prediction_id, predicted = target
            label = predicted if label is None else label
        elif label is None:
            raise Invalid("a confirmation names no prediction: it confirms the open query or "
                          "the latest prediction")
        return await self.feedback(entry.name, FeedbackIn(prediction_id=prediction_id,
                                                          label=label))
