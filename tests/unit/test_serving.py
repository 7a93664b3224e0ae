"""The micro-batcher: a lone request is answered at once, concurrent ones share one vote."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from actors.server.serving import Answer, ServedApp


class SlowModel:
    """Stands in for a ServedModel: records each call's batch; each call takes 20 ms."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.with_probabilities: list[int] = []  # the calls that computed probabilities

    def trimmed(self, k: int | None) -> SlowModel:
        return self

    def predict(self, X: Any, probabilities: bool = False) -> list[Answer]:
        if any(float(x[0]) < 0 for x in X):
            raise ValueError("negative")
        self.calls.append(len(X))
        if probabilities:
            self.with_probabilities.append(len(X))
        time.sleep(0.02)
        return [Answer(str(int(x[0])), 1.0, 2, 1, {"p": 1.0} if probabilities else None)
                for x in X]


def row(v: float) -> list[np.ndarray]:
    return [np.array([v, 0.0], dtype=np.float32)]


async def test_lone_requests_are_answered_one_call_each() -> None:
    model = SlowModel()
    app = ServedApp(model)  # type: ignore[arg-type]
    for v in range(3):
        (answer,) = await app.predict(row(v))
        assert answer.label == str(v)
        await asyncio.sleep(0)  # the next request comes in a later loop turn
    assert model.calls == [1, 1, 1]


async def test_predict_now_answers_the_first_request_of_a_loop_turn() -> None:
    model = SlowModel()
    app = ServedApp(model)  # type: ignore[arg-type]
    (answer,) = app.predict_now(row(1)) or []
    assert answer.label == "1"
    assert app.predict_now(row(2)) is None  # same loop turn: it must join a batch
    await asyncio.sleep(0)  # a sequential client's next request comes in a later turn
    assert [a.label for a in app.predict_now(row(3)) or []] == ["3"]
    assert model.calls == [1, 1]


async def test_concurrent_requests_share_a_batch() -> None:
    model = SlowModel()
    app = ServedApp(model)  # type: ignore[arg-type]
    answers = await asyncio.gather(*(app.predict(row(v)) for v in range(6)))
    assert [a[0].label for a in answers] == [str(v) for v in range(6)]
    # the first found the app idle; the five that arrived behind it were voted together
    assert model.calls == [1, 5]


async def test_requests_queued_in_the_same_turn_share_one_call() -> None:
    model = SlowModel()
    app = ServedApp(model)  # type: ignore[arg-type]
    assert app.predict_now(row(1)) is not None  # e.g. the first frame a WebSocket read
    answers = await asyncio.gather(*(app.enqueue(row(v)) for v in range(2, 7)))
    assert [a[0].label for a in answers] == [str(v) for v in range(2, 7)]
    assert model.calls == [1, 5]


async def test_only_the_requests_that_ask_for_probabilities_pay_for_them() -> None:
    model = SlowModel()
    app = ServedApp(model)  # type: ignore[arg-type]
    assert app.predict_now(row(1)) is not None
    asks = [v % 3 == 0 for v in range(2, 9)]  # 3 and 6 ask for probabilities
    answers = await asyncio.gather(*(app.enqueue(row(v), probabilities=p)
                                     for v, p in zip(range(2, 9), asks, strict=True)))
    assert [a[0].label for a in answers] == [str(v) for v in range(2, 9)]
    assert [a[0].probabilities is not None for a in answers] == asks
    # one queue, two calls: the probabilities only for the two rows that asked
    assert sorted(model.calls) == [1, 2, 5] and model.with_probabilities == [2]


async def test_sustained_load_keeps_batching_until_a_request_comes_alone() -> None:
    model = SlowModel()
    app = ServedApp(model)  # type: ignore[arg-type]

    async def client() -> None:
        for _ in range(5):
            await app.predict(row(1))

    await asyncio.gather(*(client() for _ in range(8)))  # 8 clients, one request each at a time
    assert sum(model.calls) == 40
    assert model.calls[0] == 1 and min(model.calls[1:]) >= 7  # one call per round, not two
    model.calls.clear()
    await app.predict(row(2))  # the load is over: this one is drained alone...
    await asyncio.sleep(0)
    assert app.predict_now(row(3)) is not None  # ...and the next is answered inline again
    assert model.calls == [1, 1]


async def test_a_bad_sample_fails_only_its_request() -> None:
    model = SlowModel()
    app = ServedApp(model)  # type: ignore[arg-type]
    first = asyncio.ensure_future(app.predict(row(1)))
    results = await asyncio.gather(first, app.predict(row(-1)), app.predict(row(2)),
                                   return_exceptions=True)
    assert results[0][0].label == "1"  # type: ignore[index]
    assert isinstance(results[1], ValueError)
    assert results[2][0].label == "2"  # type: ignore[index]
    with pytest.raises(ValueError):
        await app.predict(row(-3))  # a lone bad request raises straight away
