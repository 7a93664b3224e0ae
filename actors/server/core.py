"""The serving core: the app catalog, the served models and routes (``Router``), and the
operations every surface calls — HTTP, WebSocket, OIP, the MQTT bridge, the dashboard.

Operations take typed inputs, return JSON-ready values and raise ``mliot_daemon.errors``
domain errors; no aiohttp here (the HTTP layer alone maps errors to status codes). The server
actor and the surfaces' handlers run on one loop, so the core is plain state: changes to the
catalog are serialized by one lock, and a prediction never awaits until it is started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import structlog

from actors.server.catalog import AppEntry, Catalog
from actors.server.payloads import (
    check_features,
    check_label,
    label_text,
    parse_samples,
    version_number,
)
from actors.server.routing import Router, Started
from actors.server.serving import Answer, ServedApp
from mliot_daemon.config import ConfigError, ConfigStore, Rejected, parse_app
from mliot_daemon.errors import Conflict, Invalid, NotFound, Unavailable, UnknownApp
from mliot_daemon.messages import (
    AppsChanged,
    FeedbackAdded,
    FeedbackIn,
    Predicted,
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
    ``watch`` every prediction from any channel."""

    watch: bool

    def put(self, message: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class ServingCore:
    """The apps, their served models, and the operations on them."""

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
        self._catalog_lock = asyncio.Lock()
        self._parser: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Build the catalog from the config and the store, tell the trainer, and load the
        last good version of every app (they answer as soon as the server listens)."""
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="parser")
        api_apps = await self.store.list_apps()
        names = {a.name for a in self.settings.apps} | set(api_apps)
        shapes = {n: await self.store.sample_shape(n) for n in names}
        self.catalog.load(self.settings.apps, api_apps, shapes)
        await self._apps_changed()  # first, so the trainer knows the apps a failed load names
        for name in self.catalog.names():
            version = await asyncio.to_thread(self.registry.current, name)
            if version is not None:
                await self.load(name, version)

    def close(self) -> None:
        """Close every stream ("going away") and the parser thread."""
        for clients in self.watchers.values():
            for client in list(clients):
                client.close()
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

    async def app_info(self, name: str) -> dict[str, Any]:
        """The spec plus what the app has: samples, feedback, the served version."""
        entry = self.app(name)
        return {**entry.spec.to_json(), "owner": entry.owner,
                "shape": list(entry.shape) if entry.shape else entry.spec.to_json()["shape"],
                "n_samples": self.store.count_samples(entry.name),
                "n_feedback": await self.store.count_feedback(entry.name),
                "model_version": self.router.version_of(entry.name),
                "ready": self.is_ready(entry)}

    async def put_app(self, name: str, raw: Any) -> tuple[dict[str, Any], bool]:
        """Create or change an API app; (its info, whether it is new)."""
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
        log.info("app_put", app=name, created=old is None)
        return await self.app_info(name), old is None

    async def delete_app(self, name: str) -> None:
        """Remove an API app with its data (the trainer deletes its models, after stopping a
        run that could write more); its streams are closed."""
        async with self._catalog_lock:
            entry = self.app(name)
            if entry.owner == "file":
                raise Conflict(f"app {name!r} is declared in the config file; remove it there")
            await self.store.delete_app(name)
            self.catalog.remove(name)
            self.router.forget(name)
            await self._apps_changed()
        self.broadcast(name, None)
        log.info("app_deleted", app=name)

    async def _apps_changed(self) -> None:
        specs = tuple(e.spec for n in self.catalog.names() if (e := self.catalog.get(n)))
        await self.refs.trainer.send(AppsChanged(apps=specs))

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
        entry = self.app(app)
        if entry.shape is None and entry.spec.data_type != "audio":
            # The first batch fixes the app's shape: let no other batch race it to the store.
            async with self._catalog_lock:
                return await self._commit(self.app(app), samples, source, size)
        return await self._commit(entry, samples, source, size)

    async def _commit(self, entry: AppEntry, samples: SamplesIn, source: str, size: int
                      ) -> dict[str, Any]:
        batch = await self.offload(size, lambda: parse_samples(samples, entry.spec, entry.shape))
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

    async def feedback(self, app: str, feedback: FeedbackIn) -> dict[str, Any]:
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
            await self.refs.trainer.send(FeedbackAdded(
                app=entry.name, wrong=result.label != result.predicted,
                sample_id=result.sample_id, label=result.label, predicted=result.predicted))
        return {"prediction_id": feedback.prediction_id, "label": result.label,
                "predicted": result.predicted, "duplicate": result.duplicate}

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
                     started: Started) -> list[dict[str, Any]]:
        answers = await self.router.finish(entry.name, self.serving(entry), samples,
                                           probabilities, started)
        return self.publish(entry, samples, answers)

    async def predict(self, app: str, instances: Any, probabilities: bool = False
                      ) -> list[dict[str, Any]]:
        """Predictions for a request's instances, recorded for feedback."""
        entry = self.app(app)
        self.serving(entry)
        samples = self.instances(entry, instances)
        return await self.finish(entry, samples, probabilities,
                                 self.start(entry, samples, probabilities))

    def publish(self, entry: AppEntry, samples: list[Any], answers: list[Answer]
                ) -> list[dict[str, Any]]:
        """The answers as JSON items; their records (group-committed off the hot path),
        metrics, the MQTT state and the watchers."""
        app = entry.name
        records = []
        out = []
        for a, x in zip(answers, samples, strict=True):
            i = new_prediction_id()
            records.append(PredictionRecord(id=i, app=app, label=a.label,
                                            confidence=a.confidence, stage=a.stage,
                                            model_version=a.version, features=x))
            item = {"id": i, "label": a.label, "confidence": round(a.confidence, 6),
                    "stage": a.stage, "model_version": a.version}
            if a.probabilities is not None:
                item["probabilities"] = a.probabilities
            out.append(item)
        self.store.record_predictions(records)
        self.metrics.predicted(app, len(out))
        # Home Assistant shows the last label, from any channel; no broker, no message
        if self.settings.mqtt is not None and out:
            last = out[-1]
            self.refs.mqtt.offer(Predicted(app=app, label=last["label"],
                                           confidence=last["confidence"],
                                           model_version=last["model_version"]))
        for client in self.watchers.get(app, ()):
            if client.watch:  # `mliot watch`: every prediction, from any channel
                for item in out:
                    client.put({"type": "prediction", "ref": None, **item})
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
        log.info("version_activated", app=entry.name, version=version)
        return {"current": version}

    # -- streams ----------------------------------------------------------------------------------

    def follow(self, app: str, watcher: Watcher) -> None:
        self.watchers.setdefault(app, set()).add(watcher)

    def unfollow(self, app: str, watcher: Watcher) -> None:
        self.watchers.get(app, set()).discard(watcher)

    def broadcast(self, app: str, message: dict[str, Any] | None) -> None:
        """Send to every stream of an app (None closes them: the app is gone)."""
        for client in list(self.watchers.get(app, ())):
            if message is None:
                client.close()
            else:
                client.put(message)

    # -- status and reload ----------------------------------------------------------------------

    def placement(self, app: str) -> dict[str, Any]:
        t = self.settings.training
        training = f"dask:{t.dask_scheduler}" if t.backend == "dask" else self.router.me
        return self.router.placement(app, training)

    def apps_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.catalog.names():
            entry = self.app(name)
            out[name] = {
                "data_type": entry.spec.data_type, "owner": entry.owner,
                "n_samples": self.store.count_samples(name),
                "model_version": self.router.version_of(name), "ready": self.is_ready(entry),
                "accuracy": self.router.accuracy(name), "placement": self.placement(name)}
        return out

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
