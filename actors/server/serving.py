"""Serving one app's current model: two-stage prediction, and micro-batching of requests.

The server actor holds one ``ServedApp`` per app. A published version replaces the model
reference in one assignment; a batch that has started keeps the model it started with, so a
swap never fails a request in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mliot_daemon.learn.ensemble import by_weight
from mliot_daemon.learn.fast import FastEnsemble
from mliot_daemon.learn.gate import Gate


@dataclass(slots=True)  # not frozen: that __init__ sets each field with object.__setattr__
class Answer:
    """One prediction, before it gets an id."""

    label: str
    confidence: float  # calibrated probability that the label is right, 0-1
    stage: int  # 1: the background gate answered; 2: the ensemble did
    version: int
    probabilities: dict[str, float] | None
    margin: float = 1.0  # top two vote shares' difference; stage 1: the gate's distance
    doubt: float = 0.0  # how worth a label query it is (``uncertainty``), higher = more
    # when doubt >= QUERY_DOUBT: the likeliest labels with their vote shares, for a query
    candidates: tuple[tuple[str, float], ...] = ()


QUERY_DOUBT = 0.5  # a prediction less doubtful than this is not worth a person's time
# Up to this many rows, a request (or a drain's batch) is voted on row by row: the batch path's
# per-call numpy work costs more than it shares below ~4 rows (7-member digits ensemble: 2 rows
# took 1.6x two single rows, 4 rows the same; 8 rows half).
ROW_BY_ROW = 3


def uncertainty(margin: float, agreement: float, gate_distance: float | None) -> float:
    """A label query's score: a small margin, members that disagree and a gate score near its
    threshold all make a prediction more worth asking a person about."""
    near_gate = 0.0 if gate_distance is None else max(0.0, 1.0 - abs(gate_distance))
    return (1.0 - margin) + 0.5 * (1.0 - agreement) + 0.5 * near_gate


class ServedModel:
    """A loaded model version, ready to answer; ``fast`` may be a trimmed ensemble."""

    def __init__(self, version: int, model: Any, model_id: str = "",
                 fast: FastEnsemble | None = None) -> None:
        self.version = version
        self.model = model
        self.model_id = model_id  # registry.model_id, for peers
        self.measured_speed: float | None = None  # this machine's speed when it was loaded
        self.classes: list[str] = list(model.classes)
        self.fast = fast or model.fast()
        self.gate = model.gate
        # vote share -> probability of being right (learn.calibration); versions saved before
        # calibration existed answer with the raw share. A trimmed ensemble keeps the map of
        # the whole version: its shares run coarser, and the map stays monotone.
        self.calibration = getattr(model, "calibration", None)
        # the gate answers with its out-of-fold precision: how often "background" was right
        self.gate_confidence = float(self.gate.val_precision) if self.gate is not None else 1.0
        self._trims: dict[int, ServedModel] = {}

    @property
    def n_members(self) -> int:
        return len(self.model.members)

    def _by_weight(self) -> list[int]:
        return by_weight(self.model.selection.weights)

    def min_members(self, min_accuracy: float) -> int:
        """The fewest best-weighted members whose vote keeps ``min_accuracy`` on validation
        data (the scheduler trims no further); all of them when that is not known."""
        if min_accuracy <= 0.0:
            return 1
        accuracy = self.model.metrics.get("trim_accuracy") or []
        return next((k for k, a in enumerate(accuracy, 1) if a >= min_accuracy),
                    self.n_members)

    def trimmed(self, k: int | None) -> ServedModel:
        """This version served by its ``k`` highest-weighted members (the scheduler trims an
        ensemble when that is what makes it meet its budget); built once per size."""
        if k is None or k >= self.n_members:
            return self
        if k not in self._trims:
            members, sel = self.model.members, self.model.selection
            keep = self._by_weight()[:max(k, 1)]
            fast = FastEnsemble(self.model.front_end, [members[i].fast for i in keep],
                                [sel.weights[i] for i in keep], self.classes,
                                self.model.reducer,
                                [sel.sharpness[i] for i in keep] if sel.sharpness else None,
                                sel.soft)
            self._trims[k] = ServedModel(self.version, self.model, self.model_id, fast)
        return self._trims[k]

    def latencies_ms(self) -> tuple[float, ...]:
        """Latency of one prediction with the best 1..n members, on the machine that trained
        it: the measured whole, split between front end and members by the members' own
        profiled latencies."""
        metrics = self.model.metrics
        members = self.model.members
        front = float(metrics.get("front_end_ms", 0.0))
        whole = float(metrics.get("measured_latency_ms")
                      or front + sum(m.latency_ms for m in members))
        own = [max(float(members[i].latency_ms), 1e-6) for i in self._by_weight()]
        total = sum(own)
        return tuple(front + (whole - front) * sum(own[:k]) / total
                     for k in range(1, len(own) + 1))

    def predict(self, samples: Sequence[np.ndarray] | np.ndarray,
                probabilities: bool = False) -> list[Answer]:
        """The gate (stage 1), then the ensemble for what the gate let pass. A waveform gate
        (``Gate.raw``) reads the raw samples, so the rows it answers skip the front end."""
        if self.gate is None or not self.gate.raw:
            return self._predict(samples, probabilities)
        G = self.model.front_end.gate_input(samples)
        if G is None:  # e.g. log-mel patches: nothing for the gate to read
            return self._predict(samples, probabilities, gate=False)
        distance = self.gate.distance(G)
        early = distance >= 0
        if not early.any():
            return self._predict(samples, probabilities, gate=False, distance=distance)
        answers: list[Answer] = [self._background(self.gate, d, probabilities)
                                 for d in distance]
        rest = np.flatnonzero(~early)
        if len(rest):
            some = samples[rest] if isinstance(samples, np.ndarray) \
                else [samples[i] for i in rest]
            for i, a in zip(rest, self._predict(some, probabilities, gate=False,
                                                distance=distance[rest]), strict=True):
                answers[i] = a
        return answers

    def _background(self, gate: Gate, distance: float, probabilities: bool) -> Answer:
        """The gate's answer; its margin is how far past the threshold the row is."""
        bg = self.classes[gate.background]
        margin = min(1.0, float(distance))
        doubt = uncertainty(margin, 1.0, distance)
        return Answer(bg, self.gate_confidence, 1, self.version,
                      {c: float(c == bg) for c in self.classes} if probabilities else None,
                      margin, doubt, ((bg, self.gate_confidence),) if doubt >= QUERY_DOUBT
                      else ())

    def _predict(self, samples: Sequence[np.ndarray] | np.ndarray, probabilities: bool,
                 gate: bool = True, distance: np.ndarray | None = None) -> list[Answer]:
        """Front end, then (with ``gate``) a gate on its features, then the ensemble.
        ``distance``: a raw gate's normalised distances of these rows, already measured."""
        Z = self.model.front_end.transform(samples)
        n = len(Z)
        g = self.gate if gate else None
        if g is not None:
            distance = g.distance(Z)
        if n <= ROW_BY_ROW and not probabilities and Z.dtype == np.float64 and Z.ndim == 2:
            # A row or a few, the common served case: straight to the ensemble's row path,
            # without the batch path's masks (a dozen numpy calls, more than the vote of a
            # small model).
            return [self._row(Z[i], g, None if distance is None else float(distance[i]))
                    for i in range(n)]
        background = distance >= 0 if g is not None else np.zeros(n, dtype=bool)
        rest = ~background
        answers: list[Answer | None] = [None] * n
        shares = self._shares(Z) if probabilities else None
        for i in np.flatnonzero(background):
            answers[i] = self._background(g, float(distance[i]), probabilities)
        if rest.any():
            v = self.fast.vote(Z[rest] if not rest.all() else Z)
            conf = self.calibration(v.share) if self.calibration is not None else v.share
            d = distance[rest] if distance is not None else [None] * len(v.label)
            for i, p, c, s, m, a, r, gd in zip(np.flatnonzero(rest), v.label, conf, v.share,
                                               v.margin, v.agreement, v.runner_up, d,
                                               strict=True):
                answers[i] = self._answer(
                    int(p), float(c), float(s), float(m), float(a), int(r),
                    None if gd is None else float(gd),
                    None if shares is None else dict(zip(self.classes, map(float, shares[i]),
                                                         strict=True)))
        return answers  # type: ignore[return-value]

    def _row(self, z: np.ndarray, g: Gate | None, d: float | None) -> Answer:
        """One row's answer (``d``: its gate distance, if a gate measured it)."""
        if g is not None and d >= 0:
            return self._background(g, d, False)
        v = self.fast.vote_one(z)
        share = self.calibration.one(v.share) if self.calibration is not None else v.share
        return self._answer(v.label, float(share), v.share, v.margin, v.agreement, v.runner_up,
                            d, None)

    def _answer(self, best: int, confidence: float, share: float, margin: float,
                agreement: float, second: int, gate_distance: float | None,
                probabilities: dict[str, float] | None) -> Answer:
        """The ensemble's answer; a doubtful one (perhaps a label query) also carries its two
        likeliest labels with their vote shares. No tuples for a sure answer: in the daemon
        each request runs with cold caches, where a step costs several times what it does in
        a tight loop (DESIGN.md, "Margins and label queries")."""
        doubt = uncertainty(margin, agreement, gate_distance)
        if doubt < QUERY_DOUBT:
            return Answer(self.classes[best], confidence, 2, self.version, probabilities,
                          margin, doubt)
        return Answer(self.classes[best], confidence, 2, self.version, probabilities, margin,
                      doubt, ((self.classes[best], round(share, 4)),
                              (self.classes[second], round(share - margin, 4))))

    def _shares(self, Z: np.ndarray) -> np.ndarray:
        """Every class's vote share (the weighted vote, normalised), rows x classes."""
        f = self.fast
        if f.soft or len(f.members) == 1:
            return f.soft_scores(Z)
        Zr = f.reducer(Z) if f.reducer is not None and any(m.reduced for m in f.members) else None
        score = np.zeros((len(Z), len(self.classes)))
        rows = np.arange(len(Z))
        for m, w in zip(f.members, f.weights, strict=True):
            score[rows, m.predict(Zr if m.reduced else Z)] += w
        return score / f.weights.sum()


class ServedApp:
    """The current model of one app, and the micro-batcher in front of it.

    The first request of a loop turn is predicted at once. Requests that arrive in the same
    turn after it (concurrent clients, frames pipelined on one WebSocket) join a batch: the
    first of them schedules a drain with ``call_soon`` (no timer), and every request queued
    before the drain runs is evaluated in the same call. While drains keep finding several
    requests (sustained load), every request queues, so each round is one call; the first
    drain that finds one request alone ends that. So a lone request, however soon after the
    last one it comes, never pays a loop turn, and concurrent requests share one vote.
    """

    def __init__(self, served: ServedModel) -> None:
        self.current = served
        self.members: int | None = None  # the scheduler's trim: serve the best k members
        self.predictions = 0  # asked for so far, wherever answered (the server counts)
        self._queue: list[_Queued] = []
        self._scheduled = False
        self._hot = False  # a prediction ran in this loop turn
        self._loaded = False  # the last drain answered several requests: keep batching

    def swap(self, served: ServedModel) -> None:
        self.current = served

    def _model(self, members: int | None) -> ServedModel:
        """The current version, trimmed as this request asks (a peer's origin says how many
        members it placed here) or else as the scheduler placed it here."""
        return self.current.trimmed(self.members if members is None else members)

    def predict_now(self, samples: list[np.ndarray], probabilities: bool = False,
                    members: int | None = None) -> list[Answer] | None:
        """The answers at once when this is the app's first request of the loop turn; None
        when it should join a batch instead (``predict`` does both)."""
        if self._scheduled or self._hot or self._loaded:
            return None
        self._hot = True
        asyncio.get_running_loop().call_soon(self._cool)
        # BLAS is limited to one thread once, at server start
        return self._model(members).predict(_stack(samples), probabilities)

    def _cool(self) -> None:
        self._hot = False

    def enqueue(self, samples: list[np.ndarray], probabilities: bool = False,
                members: int | None = None) -> asyncio.Future[list[Answer]]:
        """Join the next batch; the future resolves when it has been evaluated. The request
        keeps the model it was queued for (a swap meanwhile serves the next one)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Answer]] = loop.create_future()
        self._queue.append((self._model(members), samples, probabilities, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        return fut

    async def predict(self, samples: list[np.ndarray], probabilities: bool = False,
                      members: int | None = None) -> list[Answer]:
        answers = self.predict_now(samples, probabilities, members)
        if answers is not None:
            return answers
        return await self.enqueue(samples, probabilities, members)

    def _drain(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        self._loaded = len(queue) > 1
        # nearly always one group: the current model, without probabilities. Those that ask
        # for probabilities are a group of their own: every member's per-class scores cost
        # about as much again as the vote (a third of the prediction time in the soak bench,
        # where one such client was in nearly every batch), so the others never pay for them.
        groups: dict[tuple[int, bool], list[_Queued]] = {}
        for item in queue:
            groups.setdefault((id(item[0]), item[2]), []).append(item)
        for (_, probabilities), group in groups.items():
            self._answer(group[0][0], group, probabilities)

    def _answer(self, model: ServedModel, queue: list[_Queued], probabilities: bool) -> None:
        samples = [x for _, s, _, _ in queue for x in s]
        try:  # BLAS is limited to one thread once, at server start: here it would cost ~2 ms
            answers = model.predict(_stack(samples), probabilities)
        except Exception:  # e.g. a front end rejecting one sample: fail only its request
            for _, s, _, fut in queue:
                try:
                    result = model.predict(_stack(s), probabilities)
                except Exception as exc:
                    result = exc
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
            return
        i = 0
        for _, s, _, fut in queue:
            part = answers[i:i + len(s)]
            i += len(s)
            if not fut.done():
                fut.set_result(part)


# one queued request: the model it is for, its samples, whether it wants probabilities, and
# the future its answers are set on
_Queued = tuple[ServedModel, list[np.ndarray], bool, "asyncio.Future[list[Answer]]"]


def _stack(samples: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One array when the samples share a shape (the fast path), else the list."""
    if len(samples) == 1:
        return samples[0][None]
    first = samples[0].shape
    if all(s.shape == first for s in samples):
        return np.stack(samples)
    return samples
