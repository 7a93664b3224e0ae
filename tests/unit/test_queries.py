"""Label queries' choice (``QueryBook``): the most doubtful first, spread over the classes, no
near-duplicates, never faster than the hourly pace, a bounded open set; and previews."""

from __future__ import annotations

import io
import wave
import zlib

import numpy as np
import pytest

from actors.server.preview import preview
from actors.server.queries import MAX_OPEN, POOL_AGE_S, Query, QueryBook

T0 = 1_000_000.0


def q(i: int, score: float, label: str = "a", x: float | None = None,
      at: float = T0) -> Query:
    features = np.array([float(i if x is None else x), 1.0, 2.0])
    return Query(f"q{i}", f"p{i}", label, score, 1.0 - score, [(label, 0.5), ("b", 0.4)], at,
                 features)


def test_the_most_doubtful_candidate_opens_first():
    book = QueryBook(per_hour=60)
    for i, s in enumerate([0.6, 0.9, 0.7]):
        book.offer(q(i * 10, s))
    opened = book.due(T0)
    assert opened is not None and opened.score == 0.9
    book.opened(opened)
    assert book.first is opened


def test_the_hourly_pace_holds():
    book = QueryBook(per_hour=4)  # one per 15 minutes
    for i in range(10):
        book.offer(q(i * 10, 0.6 + i / 100))
    first = book.due(T0)
    assert first is not None
    book.opened(first)
    assert book.due(T0 + 60) is None  # a minute later: not yet
    assert book.due(T0 + 899) is None
    assert book.due(T0 + 900) is not None  # a quarter of an hour: the next one
    opened = [T0, T0 + 900]
    t = T0 + 900
    while t < T0 + 3 * 3600:
        t += 60
        if (nxt := book.due(t)) is not None:
            book.opened(nxt)
            opened.append(t)
    within_any_hour = max(sum(1 for o in opened if s <= o < s + 3600) for s in opened)
    assert within_any_hour <= 4
    assert QueryBook(per_hour=0).due(T0) is None  # 0: no queries at all


def test_near_duplicates_are_asked_once():
    book = QueryBook(per_hour=3600)
    book.offer(q(1, 0.8, x=100.0))
    book.offer(q(2, 0.7, x=100.5))  # within 5 % of the first: the same question
    book.offer(q(3, 0.9, x=100.2))  # the same, but more doubtful: it replaces the first
    first = book.due(T0)
    assert first is not None and first.id == "q3"
    book.opened(first)
    assert book.due(T0 + 10) is None  # nothing else was kept
    book.offer(q(4, 0.99, x=100.1))  # near an open query: dropped
    assert book.due(T0 + 20) is None
    book.offer(q(5, 0.6, x=300.0))
    assert book.due(T0 + 30).id == "q5"


def test_near_duplicates_follow_the_lists_as_they_change():
    # the book compares a candidate with its lists' samples stacked once per change: each
    # step below changes a list and then asks about the same sample again
    book = QueryBook(per_hour=3600)
    book.offer(q(1, 0.8, x=100.0))
    book.offer(q(2, 0.7, x=100.4))  # near the pooled one, less doubtful: dropped
    book.offer(q(3, 0.6, x=500.0))
    first = book.due(T0)
    assert first is not None and first.id == "q1"
    book.opened(first)  # q1 leaves the pool for the open set
    book.offer(q(4, 0.95, x=100.3))  # now near an open query: dropped
    assert book.close(query_id="q1") is first
    book.offer(q(5, 0.9, x=100.2))  # nothing near it any more: kept
    assert book.due(T0 + 1).id == "q5"
    assert book.due(T0 + 2).id == "q3"
    book.offer(q(6, 0.5, x=7.0))
    other = Query("q7", "p7", "a", 0.99, 0.01, [("a", 0.5), ("b", 0.4)], T0,
                  np.array([7.0, 1.0]))  # another shape: never a near-duplicate
    book.offer(other)
    book.offer(q(8, 0.4, x=7.1))  # back to the first shape: near q6 and less doubtful
    assert book.due(T0 + 3).id == "q7"
    assert book.due(T0 + 4).id == "q6"
    assert book.due(T0 + 5) is None


def test_queries_spread_over_the_predicted_classes():
    book = QueryBook(per_hour=3600)
    for i in range(6):
        book.offer(q(i * 10, 0.9 - i / 100, label="a"))
    book.offer(q(100, 0.55, label="b"))
    labels = []
    for k in range(3):
        nxt = book.due(T0 + k)
        book.opened(nxt)
        labels.append(nxt.label)
    assert labels == ["a", "b", "a"]  # b's only candidate, though less doubtful, comes second


def test_the_open_set_is_bounded_and_a_better_query_replaces_the_least_informative():
    book = QueryBook(per_hour=3600)
    for i in range(MAX_OPEN):
        book.offer(q(i * 10, 0.6 + i / 1000))
        book.opened(book.due(T0 + i))
    book.offer(q(5000, 0.55))  # less informative than every open one: waits
    assert book.due(T0 + 100) is None
    book.offer(q(7000, 0.95))
    better = book.due(T0 + 101)
    assert better is not None and better.id == "q7000"
    replaced = book.opened(better)
    assert replaced is not None and replaced.score == pytest.approx(0.6)
    assert len(book.open) == MAX_OPEN and book.first is better


def test_close_skip_and_expiry():
    book = QueryBook(per_hour=3600, open_queries=[q(1, 0.7, at=T0 - 10), q(2, 0.8, at=T0)])
    assert book.first.id == "q2"
    assert book.close(prediction_id="p2").id == "q2"
    assert book.close(query_id="q2") is None  # closed for good
    assert [x.id for x in book.expire(T0 - 5)] == ["q1"] and book.first is None
    book.offer(q(3, 0.9, at=T0))
    assert book.due(T0 + POOL_AGE_S + 1) is None  # a stale candidate is not "recent"


def test_previews_by_data_type():
    body, kind = preview(np.arange(64.0).reshape(8, 8), "image", None)
    assert kind == "image/png" and body.startswith(b"\x89PNG\r\n\x1a\n")
    # IHDR: an 8x8 image scaled up to 64x64 grey pixels
    assert int.from_bytes(body[16:20], "big") == 64 and int.from_bytes(body[20:24], "big") == 64
    idat = body[body.index(b"IDAT") + 4:body.index(b"IEND") - 8]
    rows = zlib.decompress(idat)
    assert len(rows) == 64 * (64 + 1) and rows[1] == 0 and rows[-1] == 255
    body, kind = preview(np.sin(np.arange(16000) / 5), "audio", 8000)
    assert kind == "audio/wav"
    with wave.open(io.BytesIO(body)) as w:
        assert w.getframerate() == 8000 and w.getnframes() == 16000
    body, kind = preview(np.array([[1.0, 2.5], [3.0, 4.0]]), "sensor", None)
    assert kind == "application/json" and b'"values":[[1.0,2.5],[3.0,4.0]]' in body


def test_a_full_pool_turns_away_the_less_doubtful_at_once():
    from actors.server.queries import POOL

    def far(i: int, score: float) -> Query:  # samples nowhere near each other
        return Query(f"q{i}", f"p{i}", "a", score, 1 - score, [], T0, np.eye(POOL + 2)[i])

    book = QueryBook(per_hour=3600)
    for i in range(POOL):
        book.offer(far(i, 0.8 + i / 10_000))
    assert book.wants(0.9) and not book.wants(0.8)  # no worse than the least doubtful kept
    book.offer(far(POOL, 0.7))  # turned away
    book.offer(far(POOL + 1, 0.95))  # kept, and the least doubtful goes
    assert book.due(T0).id == f"q{POOL + 1}"
    opened = [book.due(T0 + k) for k in range(1, POOL + 1)]
    ids = {o.id for o in opened if o is not None}
    assert len(ids) == POOL - 1 and "q0" not in ids and f"q{POOL}" not in ids


def test_a_book_looks_at_a_bounded_number_of_doubtful_answers_a_second():
    from actors.server.queries import LOOKS_PER_S, POOL

    book = QueryBook(per_hour=4)
    assert sum(book.looks_at(0.9, T0) for _ in range(1000)) == POOL  # a burst: a pool's worth
    # then heavy traffic, 1,000 doubtful answers a second for 10 s: LOOKS_PER_S of them
    looked = sum(book.looks_at(0.9, T0 + k / 1000) for k in range(1, 10_001))
    assert abs(looked - 10 * LOOKS_PER_S) <= 1
    # a home's pace, one every 2 s: every one
    assert all(book.looks_at(0.9, T0 + 60 + 2 * k) for k in range(100))
