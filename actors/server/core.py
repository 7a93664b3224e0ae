"""The serving core: the app catalog, the served models and routes (``Router``), and the
operations every surface calls — HTTP, WebSocket, OIP, the MQTT bridge, the dashboard.

Operations take typed inputs, return JSON-ready values and raise ``mliot_daemon.errors``
domain errors; no aiohttp here (the HTTP layer alone maps errors to status codes). The server
actor and the surfaces' handlers run on one loop, so the core is plain state: changes to the
catalog are serialized by one lock, and a prediction never awaits until it is started.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import structlog

from actors.server.catalog import AppEntry, Catalog
from actors.server.corrections import RECENT_FEEDBACK, Corrections
from actors.server.payloads import (
    SampleBatch,
    check_features,
    parse_samples,
    version_number,
)
from actors.server.queries import QueryDesk
from actors.server.ranges import RangeDesk
from actors.server.readings import StreamDesk
from actors.server.routing import Router, Started
from actors.server.serving import Answer, ServedApp
from actors.server.tables import parse_table, read_table
from mliot_daemon.config import ConfigError, ConfigStore, Rejected, parse_app
from mliot_daemon.errors import Conflict, Invalid, NotFound, Unavailable, UnknownApp
from mliot_daemon.messages import (
    AppsChanged,
    Predicted,
    QueryChanged,
    Refs,
    SamplesAdded,
    SamplesIn,
)
from mliot_daemon.metrics import Metrics
from mliot_daemon.registry import Registry
from mliot_daemon.settings import Settings
from mliot_daemon.store import NotFound as NoRow
from mliot_daemon.store import PredictionRecord, Store, new_prediction_id

log = structlog.get_logger("mliot.server")

PARSE_IN_THREAD_BYTES = 32 * 1024  # below this, parsing on the loop is cheaper than a thread hop
MAX_INSTANCES = 10_000
T = TypeVar("T")


class Watcher(Protocol):
    """A client that follows an app (a WebSocket stream): training events, and with
    ``watch`` every prediction from any channel (at the rate it asked for)."""

    watch: bool

    def put(self, message: dict[str, Any]) -> None: ...

    def watched(self, message: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class ServingCore(Corrections):
    """The apps, their served models, and the operations on them (feedback and corrections:
    ``corrections``)."""

    def __init__(self, config: ConfigStore, store: Store, metrics: Metrics, registry: Registry,
                 refs: Refs) -> None:
        self.config = config
        self.settings: Settings = config.current
        self.store = store
        self.metrics = metrics
        self.registry = registry
        self.refs = refs
        self.catalog = Catalog()
        self.router = Router(registry, refs, metrics, self.settings.daemon.machine_name)
        self.watchers: dict[str, set[Watcher]] = {}
        # the watchers with ``watch`` (every prediction), apart: ``publish`` looks them up for
        # each answer, where a scan of all the app's streams cost ~10 µs with 100 of them
        self.watching: dict[str, set[Watcher]] = {}
        # per app, whether each of its newest feedback records confirmed the prediction
        self.recent_feedback: dict[str, deque[bool]] = {}
        self.latest: dict[str, tuple[str, str]] = {}  # per app: the last (prediction id, label)
        self.training: dict[str, str] = {}  # per app: "training" between a run's start and end
        self._catalog_lock = asyncio.Lock()
        self._parser: ThreadPoolExecutor | None = None
        self.queries = QueryDesk(store, self.broadcast, self._announce_query,
                                 lambda: self.settings.daemon.keep_predictions_days * 86400.0)
        self.streams = StreamDesk(self)  # stream apps: readings, windows, activity
        self.ranges = RangeDesk(self)  # their labels by time range

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Build the catalog from the config and the store, tell the trainer, and load the
        last good version of every app (they answer as soon as the server listens)."""
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="parser")
        api_apps = await self.store.list_apps()
        names = {a.name for a in self.settings.apps} | set(api_apps)
        shapes = {n: await self.store.sample_shape(n) for n in names}
        self.catalog.load(self.settings.apps, api_apps, shapes)
        for name in names:
            pairs = await self.store.feedback_pairs(name, RECENT_FEEDBACK)
            self.recent_feedback[name] = deque((label == predicted for label, predicted in pairs),
                                               maxlen=RECENT_FEEDBACK)
        await self._apps_changed()  # first, so the trainer knows the apps a failed load names
        await self._pace_queries()
        for name in self.catalog.names():
            version = await asyncio.to_thread(self.registry.current, name)
            if version is not None:
                await self.router.load(name, version, lambda n=name: self.catalog.get(n)
                                       is not None, fresh=False)

    def close(self) -> None:
        """Close every stream ("going away") and the parser thread."""
        for clients in self.watchers.values():
            for client in list(clients):
                client.close()
        self.streams.close()
        if self._parser is not None:
            self._parser.shutdown(wait=False)

    async def apply(self, settings: Settings, changed: frozenset[str]) -> None:
        """A reloaded config: the file's apps, the daemon's name."""
        self.settings = settings
        self.router.me = settings.daemon.machine_name
        if "apps" in changed:
            async with self._catalog_lock:
                for name in self.catalog.set_file_apps(settings.apps):
                    log.info("app_config_applied", app=name)
            await self._apps_changed()
            await self._pace_queries()
        if any(k == "mqtt" or k.startswith("mqtt.") for k in changed):
            self.queries.announce_all()  # a bridge switched on learns what is open

    async def offload(self, size: int, fn: Callable[[], T]) -> T:
        """Run CPU-bound parsing of a big payload on the one parser thread, a small one inline.
        One thread, not many: each thread holding the GIL is time the loop waits."""
        if size <= PARSE_IN_THREAD_BYTES:
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self._parser, fn)

    # -- apps -----------------------------------------------------------------------------------

    def app(self, name: str) -> AppEntry:
        entry = self.catalog.get(name)
        if entry is None:
            raise UnknownApp(f"unknown app {name!r}")
        return entry

    async def put_app(self, name: str, raw: Any) -> bool:
        """Create or change an API app; whether it is new."""
        if not isinstance(raw, dict):
            raise Invalid("expected an app spec object")
        if raw.setdefault("name", name) != name:
            raise Invalid(f"name: {raw['name']!r} differs from the URL's {name!r}")
        try:
            spec = parse_app(raw)
        except ConfigError as exc:
            raise Invalid("invalid app spec", exc.errors) from exc
        async with self._catalog_lock:
            old = self.catalog.get(name)
            if old is not None and old.owner == "file":
                raise Conflict(f"app {name!r} is declared in the config file; change it there")
            if old is not None and self.store.count_samples(name):
                clash = old.spec.data_type != spec.data_type or (
                    spec.shape is not None and old.shape is not None and spec.shape != old.shape)
                if clash:
                    raise Conflict(f"app {name!r} has stored samples of another type or shape; "
                                   "delete it first")
            await self.store.put_app(name, spec.to_json())
            self.catalog.put_api_app(spec)
        await self._apps_changed()
        await self._pace_queries()
        log.info("app_put", app=name, created=old is None)
        return old is None

    async def delete_app(self, name: str) -> None:
        """Remove an API app with its data (the trainer deletes its models, after stopping a
        run that could write more); its streams are closed."""
        async with self._catalog_lock:
            entry = self.app(name)
            if entry.owner == "file":
                raise Conflict(f"app {name!r} is declared in the config file; remove it there")
            await self.store.delete_app(name)
            self.catalog.remove(name)
            self.recent_feedback.pop(name, None)
            self.queries.forget(name)
            self.latest.pop(name, None)
            self._announce_query(name, None)
            self.router.forget(name)
            self.metrics.forget(name)
            await self._apps_changed()
        self.broadcast(name, None)
        log.info("app_deleted", app=name)

    async def _pace_queries(self) -> None:
        """Every app's label-query book at its policy's pace (loaded from the store once)."""
        for name in self.catalog.names():
            entry = self.catalog.get(name)
            if entry is None:
                continue
            if name in self.queries.books:
                self.queries.set_pace(name, entry.spec.policy.queries_per_hour)
            else:
                await self.queries.load(name, entry.spec.policy.queries_per_hour)
                self.queries.announce(name)

    def _announce_query(self, app: str, query: dict[str, Any] | None) -> None:
        if self.settings.mqtt is not None:
            self.refs.mqtt.offer(QueryChanged(app=app, query=query))

    async def _apps_changed(self) -> None:
        specs = tuple(e.spec for n in self.catalog.names() if (e := self.catalog.get(n)))
        await self.refs.trainer.send(AppsChanged(apps=specs))
        await self.streams.sync()

    def is_ready(self, entry: AppEntry) -> bool:
        served = self.router.served.get(entry.name)
        if served is None:
            return False
        accuracy = float(served.current.model.selection.val_accuracy)
        return accuracy >= entry.spec.policy.min_accuracy

    # -- samples and feedback -------------------------------------------------------------------

    async def ingest(self, app: str, samples: SamplesIn, source: str, size: int = 0
                     ) -> dict[str, Any]:
        """Check and commit labelled samples from any channel; the acknowledgement comes after
        the commit. ``size`` (the payload's bytes) decides whether parsing takes a thread."""
        return await self._ingest_parsed(
            app, lambda e: parse_samples(samples, e.spec, e.shape), source, size)

    async def import_table(self, app: str, body: bytes, content_type: str, batch_id: str
                           ) -> dict[str, Any]:
        """A labelled file (CSV, label last; or npz with X and y), its flat rows reshaped to
        the app's shape."""
        def parse(entry: AppEntry) -> SampleBatch:
            X, labels = read_table(body, content_type)
            return parse_table(X, labels, entry.spec, entry.shape, batch_id)

        return await self._ingest_parsed(app, parse, "file", len(body))

    async def _ingest_parsed(self, app: str, parse: Callable[[AppEntry], SampleBatch],
                             source: str, size: int) -> dict[str, Any]:
        entry = self.app(app)
        if entry.shape is None and entry.spec.data_type != "audio":
            # The first batch fixes the app's shape: let no other batch race it to the store.
            async with self._catalog_lock:
                return await self._commit(self.app(app), parse, source, size)
        return await self._commit(entry, parse, source, size)

    async def _commit(self, entry: AppEntry, parse: Callable[[AppEntry], SampleBatch],
                      source: str, size: int) -> dict[str, Any]:
        batch = await self.offload(size, lambda: parse(entry))
        try:
            result = await self.store.add_samples(entry.name, batch.features, batch.labels,
                                                  source, batch.batch_id)
        except NoRow:  # deleted while this request was on its way: nothing was stored
            raise UnknownApp(f"unknown app {entry.name!r}: it was deleted") from None
        if not result.duplicate:
            self.metrics.samples_ingested.labels(entry.name, source).inc(result.accepted)
            self.catalog.note_shape(entry.name, batch.shape)
            self.refs.trainer.offer(SamplesAdded(app=entry.name, n_samples=result.n_samples))
        log.debug("samples_committed", app=entry.name, source=source, accepted=result.accepted,
                  duplicate=result.duplicate, n_samples=result.n_samples)
        return {"accepted": result.accepted, "n_samples": result.n_samples,
                "duplicate": result.duplicate}

    # -- predictions ----------------------------------------------------------------------------

    def serving(self, entry: AppEntry) -> ServedApp:
        """The app's served model; ``Unavailable`` (with what it lacks) before the first."""
        served = self.router.served.get(entry.name)
        if served is None:
            n = self.store.count_samples(entry.name)
            raise Unavailable(f"no model yet for {entry.name!r}: {n} labelled samples so far; "
                              "a first model trains once two classes have 5 samples each")
        return served

    def instances(self, entry: AppEntry, items: Any) -> list[Any]:
        """Checked samples from a request's ``instances``."""
        if not isinstance(items, list) or not items:
            raise Invalid("instances: a non-empty list of samples is expected")
        if len(items) > MAX_INSTANCES:
            raise Invalid(f"instances: at most {MAX_INSTANCES} per request")
        spec, shape = entry.spec, entry.shape
        if len(items) == 1:
            return [check_features(items[0], spec, shape, "instances[0]")]
        return [check_features(x, spec, shape, f"instances[{i}]") for i, x in enumerate(items)]

    def start(self, entry: AppEntry, samples: list[Any], probabilities: bool) -> Started:
        """Begin a prediction without awaiting (see ``Router.start``)."""
        return self.router.start(entry.name, self.serving(entry), samples, probabilities)

    async def finish(self, entry: AppEntry, samples: list[Any], probabilities: bool,
                     started: Started, channel: str) -> list[dict[str, Any]]:
        answers = await self.router.finish(entry.name, self.serving(entry), samples,
                                           probabilities, started)
        return self.publish(entry, samples, answers, channel)

    async def predict(self, app: str, instances: Any, channel: str,
                      probabilities: bool = False) -> list[dict[str, Any]]:
        """Predictions for a request's instances, recorded for feedback."""
        entry = self.app(app)
        self.serving(entry)
        samples = self.instances(entry, instances)
        return await self.finish(entry, samples, probabilities,
                                 self.start(entry, samples, probabilities), channel)

    def publish(self, entry: AppEntry, samples: list[Any], answers: list[Answer],
                channel: str) -> list[dict[str, Any]]:
        """The answers as JSON items; their records (group-committed off the hot path),
        metrics, the MQTT state and the watchers (told the channel it came by: http, ws,
        oip, mqtt)."""
        app = entry.name
        records = []
        out = []
        now = time.time()
        for a, x in zip(answers, samples, strict=True):
            i = new_prediction_id()
            if a.candidates and self.queries.looks_at(app, a.doubt, now):  # doubtful:
                # perhaps worth asking a person about; the query book takes it once the
                # answer is written, so the answer never waits
                asyncio.get_running_loop().call_soon(self.queries.offer, app, i, a, x, now)
            records.append(PredictionRecord(id=i, app=app, label=a.label,
                                            confidence=a.confidence, stage=a.stage,
                                            model_version=a.version, features=x,
                                            margin=a.margin))
            item = {"id": i, "label": a.label, "confidence": round(a.confidence, 6),
                    "margin": round(a.margin, 6), "stage": a.stage, "model_version": a.version}
            if a.probabilities is not None:
                item["probabilities"] = a.probabilities
            out.append(item)
        self.store.record_predictions(records)
        if len(answers) == 1:  # the usual case: no counting
            self.metrics.predicted(app, answers[0].stage, channel, 1)
        else:
            for stage in {a.stage for a in answers}:
                self.metrics.predicted(app, stage, channel,
                                       sum(1 for a in answers if a.stage == stage))
        if out:  # what "correct" and "confirm" without a prediction id mean
            self.latest[app] = (out[-1]["id"], out[-1]["label"])
        # Home Assistant shows the last label, from any channel; no broker, no message
        if self.settings.mqtt is not None and out:
            last = out[-1]
            self.refs.mqtt.offer(Predicted(app=app, label=last["label"], prediction_id=last["id"],
                                           confidence=last["confidence"],
                                           margin=last["margin"], at=round(now, 3)))
        watchers = self.watching.get(app)
        if watchers:  # `mliot watch`, the dashboard: every prediction, from any channel
            at = round(time.time(), 3)
            for item in out:
                message = {"type": "prediction", "ref": None, **item, "channel": channel,
                           "at": at}
                for client in tuple(watchers):  # a copy: a client cut here may leave it
                    client.watched(message)
        return out

    # -- versions -------------------------------------------------------------------------------

    async def load(self, app: str, version: int) -> None:
        await self.router.load(app, version, lambda: self.catalog.get(app) is not None)

    async def activate(self, app: str, version_text: str) -> dict[str, Any]:
        """Roll back or forward to a kept version."""
        entry = self.app(app)
        try:
            version = version_number(version_text)
            await asyncio.to_thread(self.registry.activate, entry.name, version)
        except (ValueError, KeyError):
            raise NotFound(f"no kept version {version_text[:20]!r}") from None
        await self.load(entry.name, version)
        if self.router.version_of(entry.name) != version:
            raise Unavailable(f"version {version} could not be loaded")
        model = self.router.served[entry.name].current
        await self.store.add_version(entry.name, version, time.time(), "rollback",
                                     [m.family for m in model.model.members],
                                     dict(model.model.metrics), None)
        log.info("version_activated", app=entry.name, version=version)
        return {"current": version}

    # -- streams ----------------------------------------------------------------------------------

    def follow(self, app: str, watcher: Watcher) -> None:
        self.watchers.setdefault(app, set()).add(watcher)
        if watcher.watch:
            self.watching.setdefault(app, set()).add(watcher)

    def unfollow(self, app: str, watcher: Watcher) -> None:
        self.watchers.get(app, set()).discard(watcher)
        self.watching.get(app, set()).discard(watcher)

    def broadcast(self, app: str, message: dict[str, Any] | None) -> None:
        """Send to every stream of an app (None closes them: the app is gone)."""
        for client in list(self.watchers.get(app, ())):
            if message is None:
                client.close()
            else:
                client.put(message)

    # -- status and reload ----------------------------------------------------------------------

    def serving_facts(self) -> Any:
        policies = {n: e.spec.policy for n in self.catalog.names() if (e := self.catalog.get(n))}
        return self.router.facts(policies)

    async def reload(self) -> dict[str, Any]:
        """Reload the config file (``POST /v1/reload``)."""
        if self.config.path is None:
            raise Conflict("the daemon runs on built-in defaults; start it with --config FILE "
                           "to reload")
        outcome = await self.config.reload("api")
        if isinstance(outcome, Rejected):
            self.metrics.config_rejected.inc()
            raise Invalid("configuration rejected; the old one stays in force", outcome.errors)
        return {"config_version": outcome.version, "changed": sorted(outcome.changed),
                "restart_required": sorted(outcome.restart_required)}
