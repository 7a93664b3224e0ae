"""The Open Inference Protocol v2 surface (KServe / Triton): server metadata, health with the
spec's bodies, model metadata, readiness and inference, per model and per kept version, with
JSON or Triton's binary tensors (``oip_codec``).

The served version answers through the serving core like any other channel: batched, placed,
recorded for feedback. Another version still kept on disk is loaded on demand and answers in
a thread, unrecorded: it is a look at a model that does not serve, so its answers are neither
corrected nor shown to Home Assistant.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import numpy as np
from aiohttp import web

from actors.server import oip_codec
from actors.server.core import AppEntry, ServingCore
from actors.server.http import READY, json_response, read_body
from actors.server.payloads import version_number
from actors.server.serving import Answer, ServedModel
from mliot_daemon import __version__
from mliot_daemon.errors import Malformed, NotFound
from mliot_daemon.learn.persist import ModelFormatError, load_model

EXTENSIONS = ["binary_tensor_data", "classification"]  # Triton's names for what we support
KEPT_LOADED = 2  # versions other than the served one held in memory, least recently used out


class OipApi:
    """``/v2`` and ``/v2/...``."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core
        self._kept: OrderedDict[tuple[str, int], ServedModel] = OrderedDict()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v2", self.server_metadata),
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2/models/{app}", self.metadata),
            web.get("/v2/models/{app}/ready", self.model_ready),
            web.post("/v2/models/{app}/infer", self.infer),
            web.get("/v2/models/{app}/versions/{version}", self.metadata),
            web.get("/v2/models/{app}/versions/{version}/ready", self.model_ready),
            web.post("/v2/models/{app}/versions/{version}/infer", self.infer),
        ]

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": "mliot", "version": __version__,
                              "extensions": EXTENSIONS})

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        """The spec's body; 503 until every actor has started (a probe reads the status)."""
        is_ready = request.app[READY].is_set()
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    async def _version(self, entry: AppEntry, request: web.Request) -> int | None:
        """The version a versioned route names (404 unless it is kept on disk); None on the
        unversioned routes: whatever serves."""
        text = request.match_info.get("version")
        if text is None:
            return None
        try:
            version = version_number(text)
        except ValueError:
            raise NotFound(f"no kept version {text[:20]!r}") from None
        if version not in await asyncio.to_thread(self._core.registry.versions, entry.name):
            raise NotFound(f"no kept version {version} of {entry.name!r}")
        return version

    async def metadata(self, request: web.Request) -> web.Response:
        core = self._core
        entry = core.app(request.match_info["app"])
        version = await self._version(entry, request)
        kept = await asyncio.to_thread(core.registry.versions, entry.name)
        classes = await self._classes(entry, version)
        return json_response({
            "name": entry.name, "platform": "mliot",
            "versions": [str(v) for v in (kept if version is None else [version])],
            "inputs": [{"name": "input", "datatype": "FP32",
                        "shape": [-1, *(entry.shape or [-1])]}],
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                        {"name": "confidence", "datatype": "FP32", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP32",
                         "shape": [-1, len(classes) if classes else -1]},
                        {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]}],
            "classes": classes})  # the probabilities' columns

    async def _classes(self, entry: AppEntry, version: int | None) -> list[str]:
        served = self._core.router.served.get(entry.name)
        if version is None or (served is not None and served.current.version == version):
            return list(served.current.classes) if served is not None else []
        return list((await self._load(entry.name, version)).classes)

    async def model_ready(self, request: web.Request) -> web.Response:
        """200 ``{"name", "ready": true}``; 400 with ``"ready": false`` and why while there is
        no model (a kept version is always ready: it loads on demand)."""
        entry = self._core.app(request.match_info["app"])
        version = await self._version(entry, request)
        if version is None and entry.name not in self._core.router.served:
            return json_response({"name": entry.name, "ready": False,
                                  "error": "not ready: no model yet"}, 400)
        return json_response({"name": entry.name, "ready": True})

    async def _load(self, app: str, version: int) -> ServedModel:
        """A kept version, from memory or loaded from disk in a thread."""
        key = (app, version)
        if (model := self._kept.get(key)) is None:
            path = self._core.registry.version_path(app, version)
            try:
                model = ServedModel(version, await asyncio.to_thread(load_model, path))
            except (OSError, ModelFormatError):  # pruned since it was listed, or damaged
                raise NotFound(f"no kept version {version} of {app!r} can be loaded") from None
            self._kept[key] = model
            while len(self._kept) > KEPT_LOADED:
                self._kept.popitem(last=False)
        self._kept.move_to_end(key)
        return model

    async def infer(self, request: web.Request) -> web.Response:
        core = self._core
        entry = core.app(request.match_info["app"])
        version = await self._version(entry, request)
        body = await read_body(core, request)
        header = request.headers.get("Inference-Header-Content-Length")
        try:
            header_length = int(header) if header is not None else None
        except ValueError:
            raise Malformed("Inference-Header-Content-Length must be an integer") from None
        req, array = await core.offload(
            len(body), lambda: oip_codec.decode_request(body, header_length))
        outputs = oip_codec.requested_outputs(req)
        probabilities = any(o.name == "probabilities" for o in outputs)
        served = core.serving(entry) if version is None else core.router.served.get(entry.name)
        samples = await core.offload(len(body), lambda: core.instances(entry, list(array)))
        if version is None or (served is not None and served.current.version == version):
            assert served is not None
            classes = served.current.classes  # a swap during the request adds no column
            items = await core.finish(entry, samples, probabilities,
                                      core.start(entry, samples, probabilities), "oip")
            answered = items[0]["model_version"]
            columns = _columns(items, classes)
        else:  # a kept version that does not serve
            model = await self._load(entry.name, version)
            answers = await asyncio.to_thread(model.predict, samples, probabilities)
            answered, classes = version, model.classes
            columns = _columns([_item(a) for a in answers], classes)
        payload, json_len = oip_codec.encode_response(entry.name, answered, req.get("id"),
                                                      outputs, columns, classes)
        if json_len is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(body=payload, content_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(json_len)})


def _item(a: Answer) -> dict[str, Any]:
    """An unrecorded answer as the core's JSON item has it (no id: nothing to correct)."""
    return {"id": "", "label": a.label, "confidence": a.confidence,
            "probabilities": a.probabilities}


def _columns(items: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """The answers as output tensors' data; the probabilities' columns follow ``classes``."""
    columns: dict[str, Any] = {
        "label": [i["label"] for i in items],
        "prediction_id": [i["id"] for i in items],
        "confidence": np.array([i["confidence"] for i in items], dtype=np.float32)}
    if items and items[0].get("probabilities") is not None:
        columns["probabilities"] = np.array(
            [[i["probabilities"].get(c, 0.0) for c in classes] for i in items],
            dtype=np.float32)
    return columns
