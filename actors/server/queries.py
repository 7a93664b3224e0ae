"""Label queries: which recent predictions are worth a person's label, and at what pace.

A person answers a few prompts a day, so they go where the models are least sure. Every
answer whose ``doubt`` (``serving.uncertainty``: a small margin, members that disagree, a gate
score near its threshold) reaches ``serving.QUERY_DOUBT`` is offered to its app's
:class:`QueryBook`, which keeps a small pool of the most doubtful recent ones. A query opens
from that pool at most once per ``3600 / policy.queries_per_hour`` seconds, so a person is
never flooded; it is the most doubtful candidate among the predicted classes with the fewest
open queries (spread over the classes), and a candidate within ``NEAR`` (relative distance) of
an open query or of a better candidate is dropped (near-duplicates ask the same question).
At most ``MAX_OPEN`` are open; a better candidate then replaces the least informative.

A query closes when its prediction gets feedback (answered), when a person skips it (never
asked again) or when its prediction record is pruned. The book is plain state on the serving
core's loop; the core commits every change to the store before it shows (``open_queries``
loads them again after a restart).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import structlog

from actors.server.serving import Answer
from mliot_daemon.errors import NotFound as DomainNotFound
from mliot_daemon.store import NotFound, Store, StoreError, new_prediction_id

log = structlog.get_logger("mliot.server")

MAX_OPEN = 20  # open queries per app
POOL = 64  # candidates kept per app, the most doubtful
POOL_AGE_S = 3600.0  # a candidate older than this is no longer "recent"
NEAR = 0.05  # |a - b| <= NEAR * (|a| + |b|) / 2: the same question twice
# Doubtful answers a book looks at a second, at most (a token bucket holding a pool's worth):
# a person answers a few queries an hour, so under heavy traffic a sample of the doubtful
# ones (36,000 an hour) feeds the pool as well as all of them would, and the bookkeeping
# costs at most ~1 ms a second of the serving loop whatever the traffic. A home's devices
# (a prediction every few seconds) are never sampled.
LOOKS_PER_S = 20.0


@dataclass
class Query:
    """One question to a person: which label is right for this prediction?"""

    id: str
    prediction_id: str
    label: str  # what was predicted
    score: float  # how informative (``doubt``): higher is asked first
    margin: float  # the prediction's
    candidates: list[tuple[str, float]]  # the likeliest labels with their vote shares
    predicted_at: float  # the prediction's time: the query expires with its record
    features: np.ndarray  # the sample, for near-duplicates and the preview
    created: float = 0.0  # when it opened (set when committed)
    # the sample flattened to float64, and its norm: computed once, compared on every offer
    flat: np.ndarray = field(init=False, repr=False, compare=False)
    norm: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.flat = np.asarray(self.features, dtype=np.float64).ravel()
        self.norm = float(np.linalg.norm(self.flat))

    def as_json(self) -> dict[str, Any]:
        """The contract's query (DESIGN.md, "Wave 2 additions")."""
        return {"id": self.id, "prediction_id": self.prediction_id,
                "created": round(self.created, 3), "margin": round(self.margin, 4),
                "score": round(self.score, 4),
                "candidates": [{"label": c, "share": s} for c, s in self.candidates]}


def _more_doubtful(q: Query) -> float:
    return -q.score


class _Stack(NamedTuple):
    """One list's samples of one shape, stacked for ``QueryBook._first_near``."""

    queries: list[Query]  # the list as it was (these objects: a changed list never matches)
    shape: tuple[int, ...]  # the sample shape stacked (audio clips differ in length)
    index: list[int]  # the queries of that shape, by their place in the list
    flats: np.ndarray  # their samples, one row each (float64)
    norms: np.ndarray


class QueryBook:
    """One app's open queries and its pool of candidates (see the module docstring)."""

    def __init__(self, per_hour: int, open_queries: list[Query] | None = None,
                 last_opened: float = 0.0) -> None:
        self.per_hour = per_hour
        self.open: list[Query] = sorted(open_queries or [], key=lambda q: -q.score)
        self.last_opened = last_opened
        self._pool: list[Query] = []
        self._looks = float(POOL)  # the token bucket of ``looks_at``
        self._looked = 0.0  # when it was last refilled
        # per list ("open", "pool"), its samples as last stacked (``_first_near``): one entry
        # per list, whatever the shapes seen
        self._stacks: dict[str, _Stack] = {}

    @property
    def first(self) -> Query | None:
        """The open query: the most informative."""
        return self.open[0] if self.open else None

    def offer(self, q: Query) -> None:
        """A doubtful prediction (on the serving path): keep it as a candidate unless it asks
        an open question. Once the pool is full, one comparison turns away all but the more
        doubtful: the near-duplicate scans run only for a candidate that gets in."""
        pool = self._pool  # most doubtful first
        if not self.wants(q.score):
            return
        if self._first_near(q, self.open, "open") is not None:
            return
        i = self._first_near(q, pool, "pool")
        if i is not None:
            if q.score > pool[i].score:
                del pool[i]
                bisect.insort(pool, q, key=_more_doubtful)
            return
        bisect.insort(pool, q, key=_more_doubtful)
        if len(pool) > POOL:
            pool.pop()

    def _first_near(self, q: Query, others: list[Query], name: str) -> int | None:
        """The index of the first of ``others`` whose sample is a near-duplicate of ``q``'s
        (relative euclidean distance), or None. One numpy comparison with all of them, on
        their samples stacked when the list last changed: a pair at a time cost ~10 µs each,
        and a doubtful prediction meets up to 84 (POOL + MAX_OPEN) on the serving path."""
        shape = q.features.shape
        st = self._stacks.get(name)
        if st is None or st.shape != shape or len(st.queries) != len(others) \
                or any(a is not b for a, b in zip(st.queries, others, strict=True)):
            index = [i for i, o in enumerate(others) if o.features.shape == shape]
            flats = np.array([others[i].flat for i in index]).reshape(len(index), q.flat.size)
            st = _Stack(list(others), shape, index, flats,
                        np.array([others[i].norm for i in index]))
            self._stacks[name] = st
        if not st.index:
            return None
        squared = ((st.flats - q.flat) ** 2).sum(axis=1)
        hits = np.flatnonzero(squared <= (NEAR * 0.5 * (st.norms + q.norm)) ** 2)
        return st.index[int(hits[0])] if len(hits) else None

    def wants(self, score: float) -> bool:
        """Whether a candidate this doubtful could get into the pool."""
        return len(self._pool) < POOL or score > self._pool[-1].score

    def looks_at(self, score: float, now: float) -> bool:
        """Whether to offer a doubtful answer (on the serving path, before any work): one
        the pool could take, within LOOKS_PER_S."""
        if not self.wants(score):
            return False
        self._looks = min(float(POOL), self._looks + (now - self._looked) * LOOKS_PER_S)
        self._looked = now
        if self._looks < 1.0:
            return False
        self._looks -= 1.0
        return True

    def due(self, now: float) -> Query | None:
        """The candidate to open now, taken from the pool; None when the hourly pace, the
        pool or the open set says not yet. The slot is taken: commit it, then ``opened``."""
        if self.per_hour <= 0 or not self._pool or now - self.last_opened < 3600 / self.per_hour:
            return None
        self._pool = [c for c in self._pool if now - c.predicted_at <= POOL_AGE_S]
        if not self._pool:
            return None
        per_class = Counter(q.label for q in self.open)
        best = min(self._pool, key=lambda c: (per_class[c.label], -c.score))
        if len(self.open) >= MAX_OPEN and best.score <= self.open[-1].score:
            return None
        self._pool.remove(best)
        self.last_opened = now
        return best

    def opened(self, q: Query) -> Query | None:
        """Add a committed query; the least informative one it replaces, if the set is full
        (the caller closes that one)."""
        self.open.append(q)
        self.open.sort(key=lambda o: -o.score)
        return self.open.pop() if len(self.open) > MAX_OPEN else None

    def close(self, query_id: str | None = None, prediction_id: str | None = None
              ) -> Query | None:
        """Remove an open query by its id or its prediction's; the query, if it was open."""
        for i, q in enumerate(self.open):
            if q.id == query_id or q.prediction_id == prediction_id:
                return self.open.pop(i)
        return None

    def expire(self, older_than: float) -> list[Query]:
        """Drop queries (and candidates) whose prediction records are pruned."""
        gone = [q for q in self.open if q.predicted_at < older_than]
        self.open = [q for q in self.open if q.predicted_at >= older_than]
        self._pool = [c for c in self._pool if c.predicted_at >= older_than]
        return gone


class QueryDesk:
    """The serving core's label queries: one book per app, committed to the store before
    they show, told to the app's streams (a ``label_query`` event) and to ``announce`` (the
    MQTT bridge's retained ``query`` topic: the open query, or None)."""

    def __init__(self, store: Store, broadcast: Callable[[str, dict[str, Any]], None],
                 announce: Callable[[str, dict[str, Any] | None], None],
                 keep_s: Callable[[], float]) -> None:
        self.books: dict[str, QueryBook] = {}
        self._store = store
        self._broadcast = broadcast
        self._announce = announce
        self._keep_s = keep_s  # how long prediction records are kept
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self, app: str, per_hour: int) -> None:
        """The app's open queries and pace as committed (after a restart too)."""
        rows = await self._store.open_queries(app)
        self.books[app] = QueryBook(per_hour, [Query(**r) for r in rows],
                                    await self._store.last_query_opened(app))

    def set_pace(self, app: str, per_hour: int) -> None:
        if app in self.books:
            self.books[app].per_hour = per_hour

    def forget(self, app: str) -> None:
        self.books.pop(app, None)

    def looks_at(self, app: str, doubt: float, now: float) -> bool:
        """Whether a doubtful answer is worth an ``offer`` (``QueryBook.looks_at``)."""
        book = self.books.get(app)
        return book is not None and book.looks_at(doubt, now)

    def offer(self, app: str, prediction_id: str, answer: Answer, sample: Any,
              at: float) -> None:
        """A doubtful answer (it has ``candidates``) the book looks at, just after it was
        written: no awaiting here, on the serving loop."""
        book = self.books.get(app)
        if book is None:
            return
        if book.wants(answer.doubt):
            book.offer(Query(new_prediction_id(), prediction_id, answer.label, answer.doubt,
                             answer.margin, list(answer.candidates), at, np.asarray(sample)))
        q = book.due(at)
        if q is not None:
            task = asyncio.get_running_loop().create_task(self._open(app, book, q))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self, app: str, book: QueryBook, q: Query) -> None:
        replaces = book.open[-1] if len(book.open) >= MAX_OPEN else None
        q.created = time.time()
        try:
            await self._store.open_query(app, {**q.as_json(), "label": q.label},
                                         replaces.id if replaces else None)
        except (StoreError, NotFound) as exc:  # the slot is spent; the next one will try
            log.warning("query_not_opened", app=app, error=str(exc))
            return
        if self.books.get(app) is not book:  # the app was deleted meanwhile
            return
        book.opened(q)
        log.info("query_opened", app=app, query=q.id, label=q.label, score=round(q.score, 3))
        self._broadcast(app, {"type": "event", "kind": "label_query", **q.as_json()})
        self._changed(app, book)

    def _changed(self, app: str, book: QueryBook) -> None:
        first = book.first
        self._announce(app, first.as_json() if first is not None else None)

    def announce(self, app: str) -> None:
        """Tell ``announce`` the app's open query (after loading it)."""
        if app in self.books:
            self._changed(app, self.books[app])

    def announce_all(self) -> None:
        for app in list(self.books):
            self.announce(app)

    def open_queries(self, app: str) -> list[Query]:
        """The app's open queries, most informative first (expired ones dropped)."""
        book = self.books.get(app)
        if book is None:
            return []
        if book.expire(time.time() - self._keep_s()):
            self._changed(app, book)
        return list(book.open)

    def get(self, app: str, query_id: str) -> Query:
        q = next((q for q in self.open_queries(app) if q.id == query_id), None)
        if q is None:
            raise DomainNotFound(f"no open query {query_id[:40]!r}")
        return q

    async def skip(self, app: str, query_id: str) -> None:
        """Close a query for good: it is not asked again."""
        self.get(app, query_id)
        await self._store.close_query(app, query_id, "skipped")
        book = self.books.get(app)
        if book is not None and book.close(query_id=query_id) is not None:
            self._closed(app, book, query_id, "skipped")

    def answered(self, app: str, prediction_id: str) -> None:
        """Feedback on a prediction was committed (which closed its query in the store)."""
        book = self.books.get(app)
        q = book.close(prediction_id=prediction_id) if book is not None else None
        if q is not None:
            self._closed(app, book, q.id, "answered")

    def _closed(self, app: str, book: QueryBook, query_id: str, state: str) -> None:
        self._broadcast(app, {"type": "event", "kind": "label_query_closed", "id": query_id,
                              "state": state})
        self._changed(app, book)
