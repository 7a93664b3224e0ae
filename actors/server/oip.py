"""The Open Inference Protocol v2 surface (KServe / Triton): health, model metadata and
readiness, and inference with JSON or Triton's binary tensors (``oip_codec``)."""

from __future__ import annotations

import asyncio

import numpy as np
from aiohttp import web

from actors.server import oip_codec
from actors.server.core import ServingCore
from actors.server.http import error_response, json_response, live, read_body, ready
from mliot_daemon.errors import Malformed


class OipApi:
    """``/v2/...``."""

    def __init__(self, core: ServingCore) -> None:
        self._core = core

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v2/health/live", live),
            web.get("/v2/health/ready", ready),
            web.get("/v2/models/{app}", self.metadata),
            web.get("/v2/models/{app}/ready", self.model_ready),
            web.post("/v2/models/{app}/infer", self.infer),
        ]

    async def metadata(self, request: web.Request) -> web.Response:
        entry = self._core.app(request.match_info["app"])
        shape = [-1, *(entry.shape or [-1])]
        versions = await asyncio.to_thread(self._core.registry.versions, entry.name)
        return json_response({
            "name": entry.name, "platform": "mliot", "versions": [str(v) for v in versions],
            "inputs": [{"name": "input", "datatype": "FP32", "shape": shape}],
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                        {"name": "confidence", "datatype": "FP32", "shape": [-1]}]})

    async def model_ready(self, request: web.Request) -> web.Response:
        entry = self._core.app(request.match_info["app"])
        if entry.name not in self._core.router.served:
            return error_response(400, "not ready: no model yet")
        return web.Response(status=200)

    async def infer(self, request: web.Request) -> web.Response:
        core = self._core
        entry = core.app(request.match_info["app"])
        body = await read_body(core, request)
        header = request.headers.get("Inference-Header-Content-Length")
        try:
            header_length = int(header) if header is not None else None
        except ValueError:
            raise Malformed("Inference-Header-Content-Length must be an integer") from None
        req, array = await core.offload(
            len(body), lambda: oip_codec.decode_request(body, header_length))
        core.serving(entry)
        samples = await core.offload(len(body), lambda: core.instances(entry, list(array)))
        answers = await core.finish(entry, samples, False, core.start(entry, samples, False),
                                    "oip")
        payload, json_len = oip_codec.encode_response(
            entry.name, answers[0]["model_version"], req.get("id"),
            [a["label"] for a in answers],
            np.array([a["confidence"] for a in answers], dtype=np.float32),
            oip_codec.wants_binary(req))
        headers = {} if json_len is None else {"Inference-Header-Content-Length": str(json_len)}
        return web.Response(body=payload, headers=headers,
                            content_type="application/octet-stream" if json_len is not None
                            else "application/json")
