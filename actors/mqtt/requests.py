"""Unlabelled MQTT samples are prediction requests: they wait in a bounded queue (the oldest is
shed when it is full), and the requests of one app are answered together, with one Predict
(a micro-batch), each on the app's ``predictions`` topic with its ``ref``, or on ``errors``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiomqtt

from actors.mqtt.topics import Topics, publish_json, stop_if_cancelled
from mliot_daemon.errors import DomainError, Invalid, NotFound, Unavailable
from mliot_daemon.messages import Predict, ServerMsg
from mliot_daemon.metrics import Metrics
from mliot_daemon.runtime import ActorRef, ActorStopped
from mliot_daemon.settings import MqttSettings

PREDICT_QUEUE = 1024  # unlabelled requests waiting for a prediction; beyond: shed the oldest
PREDICT_BATCH = 256  # requests of one app answered with one Predict
ASK_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class PredictJob:
    app: str
    features: Any
    ref: Any


class Answerer:
    """A session's prediction requests."""

    def __init__(self, server: ActorRef[ServerMsg], metrics: Metrics) -> None:
        self._server = server
        self._metrics = metrics
        self.requests: asyncio.Queue[PredictJob] = asyncio.Queue(PREDICT_QUEUE)

    def put(self, job: PredictJob) -> None:
        """Queue a request, shedding the oldest when the queue is full."""
        if self.requests.full():
            self.requests.get_nowait()  # the oldest request is the least useful one
            self._metrics.mqtt_predictions_shed.inc()
        self.requests.put_nowait(job)

    async def run(self, client: aiomqtt.Client, s: MqttSettings, t: Topics) -> None:
        """Answer queued requests, those of one app together in one Predict (micro-batch)."""
        while True:
            stop_if_cancelled()
            requests = self.requests
            jobs = [await requests.get()]
            while len(jobs) < PREDICT_BATCH and not requests.empty():
                jobs.append(requests.get_nowait())
            by_app: dict[str, list[PredictJob]] = {}
            for job in jobs:
                by_app.setdefault(job.app, []).append(job)
            for app, group in by_app.items():
                answers = await self._answers(app, group)
                async with asyncio.TaskGroup() as tg:
                    for job, answer in zip(group, answers, strict=True):
                        if isinstance(answer, DomainError):
                            out, topic, kind = {"ref": job.ref, "kind": answer.kind,
                                                "error": answer.message,
                                                "details": answer.details}, "errors", "error"
                        else:
                            out, topic, kind = {"ref": job.ref, **answer}, "predictions", \
                                "prediction"
                        tg.create_task(publish_json(client, self._metrics, t.app(app, topic),
                                                    s.qos, out, kind))

    async def _answers(self, app: str, jobs: list[PredictJob]) -> list[Any]:
        """One prediction dict or domain error per job; a bad instance is found by asking
        each alone."""
        try:
            return await self._server.ask(lambda f: Predict(
                app=app, instances=tuple(j.features for j in jobs), reply=f),
                timeout=ASK_TIMEOUT_S)
        except Unavailable as exc:  # no model yet, placement refused: said as it is
            return [exc] * len(jobs)
        except (TimeoutError, ActorStopped) as exc:
            return [Unavailable(f"not answered: {exc or 'timed out'}")] * len(jobs)
        except DomainError as exc:
            if isinstance(exc, Invalid) and len(jobs) > 1:
                return [a for j in jobs for a in await self._answers(app, [j])]
            reason = "unknown_app" if isinstance(exc, NotFound) else "invalid"
            self._metrics.mqtt_bad_payloads.labels(reason).inc(len(jobs))
            return [exc] * len(jobs)
