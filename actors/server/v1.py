"""The v1 REST surface: probes, metrics, status, reload, apps, samples, predictions, feedback
and model versions. Each handler reads its request, calls one serving-core operation and
shapes the JSON answer; errors are the core's domain errors, mapped by the HTTP layer."""

from __future__ import annotations

import hashlib

from aiohttp import web

from actors.server import pins, views
from actors.server.core import PARSE_IN_THREAD_BYTES, ServingCore
from actors.server.export import export_samples
from actors.server.http import json_response, live, read_body, read_json, ready
from actors.server.payloads import feedback_in, parse_json, samples_in
from actors.server.preview import preview
from mliot_daemon.errors import Invalid, TooLarge

PROMETHEUS = {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}


class V1Api:
    """``/healthz``, ``/readyz``, ``/metrics`` and ``/v1/...`` (but the peer API and streams)."""

    def __init__(self, core: ServingCore, started_at: float) -> None:
        self._core = core
        self._started_at = started_at

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", live),
            web.get("/readyz", ready),
            web.get("/metrics", self.metrics),
            web.get("/v1/status", self.status),
            web.post("/v1/reload", self.reload),
            web.get("/v1/apps", self.list_apps),
            web.get("/v1/apps/{app}", self.get_app),
            web.put("/v1/apps/{app}", self.put_app),
            web.delete("/v1/apps/{app}", self.delete_app),
            web.post("/v1/apps/{app}/samples", self.samples),
            web.post("/v1/apps/{app}/predict", self.predict),
            web.post("/v1/apps/{app}/feedback", self.feedback),
            web.post("/v1/apps/{app}/import", self.import_file),
            web.get("/v1/apps/{app}/export", self.export),
            web.get("/v1/apps/{app}/history", self.history),
            web.get("/v1/apps/{app}/quality", self.quality),
            web.get("/v1/apps/{app}/models", self.models),
            web.post("/v1/apps/{app}/models/{version}/activate", self.activate),
            web.post("/v1/apps/{app}/models/{version}/pin", self.pin),
            web.delete("/v1/apps/{app}/models/{version}/pin", self.unpin),
            web.get("/v1/apps/{app}/queries", self.queries),
            web.delete("/v1/apps/{app}/queries/{id}", self.skip_query),
            web.get("/v1/apps/{app}/queries/{id}/preview", self.query_preview),
        ]

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._core.metrics.render(), headers=PROMETHEUS)

    async def status(self, request: web.Request) -> web.Response:
        return json_response(await views.status(self._core, self._started_at))

    async def reload(self, request: web.Request) -> web.Response:
        return json_response(await self._core.reload())

    async def list_apps(self, request: web.Request) -> web.Response:
        return json_response(self._core.catalog.names())

    async def get_app(self, request: web.Request) -> web.Response:
        return json_response(await views.app_info(self._core, request.match_info["app"]))

    async def put_app(self, request: web.Request) -> web.Response:
        app = request.match_info["app"]
        created = await self._core.put_app(app, await read_json(self._core, request))
        return json_response(await views.app_info(self._core, app), 201 if created else 200)

    async def delete_app(self, request: web.Request) -> web.Response:
        await self._core.delete_app(request.match_info["app"])
        return web.Response(status=204)

    async def samples(self, request: web.Request) -> web.Response:
        core = self._core
        app = core.app(request.match_info["app"]).name
        body = await read_body(core, request)
        payload = await core.offload(len(body), lambda: parse_json(body))
        return json_response(await core.ingest(app, samples_in(payload), "http", len(body)))

    async def predict(self, request: web.Request) -> web.Response:
        core = self._core
        entry = core.app(request.match_info["app"])
        body = await read_body(core, request)
        small = len(body) <= PARSE_IN_THREAD_BYTES  # the usual case: no closures, no thread
        payload = parse_json(body) if small else await core.offload(
            len(body), lambda: parse_json(body))
        if not isinstance(payload, dict) or "instances" not in payload:
            raise Invalid('expected {"instances": [...], "probabilities"?: bool}')
        core.serving(entry)
        samples = core.instances(entry, payload["instances"]) if small else \
            await core.offload(len(body), lambda: core.instances(entry, payload["instances"]))
        probabilities = bool(payload.get("probabilities"))
        predictions = await core.finish(entry, samples, probabilities,
                                        core.start(entry, samples, probabilities), "http")
        return json_response({"predictions": predictions})

    async def feedback(self, request: web.Request) -> web.Response:
        app = self._core.app(request.match_info["app"]).name
        payload = await read_json(self._core, request)
        return json_response(await self._core.feedback(app, feedback_in(payload)))

    async def import_file(self, request: web.Request) -> web.Response:
        """A labelled CSV or npz file; its batch id (``?batch_id=``, else its content's hash)
        makes a retry store nothing twice."""
        core = self._core
        app = core.app(request.match_info["app"]).name
        try:
            body = await read_body(core, request)
        except TooLarge as exc:
            raise TooLarge(f"{exc.message}: import a file this big with `mliot import {app} "
                           "FILE`, which sends it in parts") from None
        batch_id = request.query.get("batch_id") or \
            f"import-{hashlib.sha256(body).hexdigest()[:32]}"
        return json_response(await core.import_table(app, body, request.content_type,
                                                     batch_id))

    async def export(self, request: web.Request) -> web.StreamResponse:
        """The app's samples and corrections as npz or CSV, streamed (``export``)."""
        return await export_samples(self._core, request)

    async def history(self, request: web.Request) -> web.Response:
        return json_response(await views.history(self._core, request.match_info["app"]))

    async def quality(self, request: web.Request) -> web.Response:
        return json_response(await views.quality(self._core, request.match_info["app"]))

    async def models(self, request: web.Request) -> web.Response:
        return json_response(await views.models(self._core, request.match_info["app"]))

    async def queries(self, request: web.Request) -> web.Response:
        """The app's open label queries, most informative first."""
        app = self._core.app(request.match_info["app"]).name
        return json_response({"queries": [q.as_json()
                                          for q in self._core.queries.open_queries(app)]})

    async def skip_query(self, request: web.Request) -> web.Response:
        """Skip a query: it closes, and is not asked again."""
        app = self._core.app(request.match_info["app"]).name
        await self._core.queries.skip(app, request.match_info["id"])
        return web.Response(status=204)

    async def query_preview(self, request: web.Request) -> web.Response:
        entry = self._core.app(request.match_info["app"])
        q = self._core.queries.get(entry.name, request.match_info["id"])
        body, content_type = preview(q.features, entry.spec.data_type, entry.spec.sample_rate)
        return web.Response(body=body, content_type=content_type)

    async def activate(self, request: web.Request) -> web.Response:
        return json_response(await self._core.activate(request.match_info["app"],
                                                       request.match_info["version"]))

    async def pin(self, request: web.Request) -> web.Response:
        """Keep a version whatever retention deletes (``pins.py``)."""
        return json_response(await pins.set_pin(self._core, request.match_info["app"],
                                                request.match_info["version"], True))

    async def unpin(self, request: web.Request) -> web.Response:
        return json_response(await pins.set_pin(self._core, request.match_info["app"],
                                                request.match_info["version"], False))
