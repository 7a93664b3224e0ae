"""The peer API: what other mliot daemons call to place serving here. It answers only the
peer secret (the HTTP layer checks it): a profile of this machine, signed model versions to
host (``hosting``), and predictions from a hosted model."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from actors.server.core import ServingCore
from actors.server.hosting import HostedModels, HostError
from actors.server.http import body_deadline, json_response, read_json
from actors.server.payloads import peer_instance, version_number
from mliot_daemon import signing
from mliot_daemon.errors import Invalid, NotFound, TooLarge
from mliot_daemon.messages import GetLoad, MachineLoad

log = structlog.get_logger("mliot.server")

MAX_MODEL_ARCHIVE = 4 * 2**30  # a peer's model version (a KNN keeps its training rows)


class PeerApi:
    """``/v1/peer/...``: the models peers placed here, and this machine's profile."""

    def __init__(self, core: ServingCore, hosted: HostedModels) -> None:
        self._core = core
        self._hosted = hosted
        self._uploads = asyncio.Semaphore(1)  # model archives received one at a time

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/peer/profile", self.profile),
            web.put("/v1/peer/models/{origin}/{app}/{version}", self.install),
            web.post("/v1/peer/models/{origin}/{app}/predict", self.predict),
        ]

    async def profile(self, request: web.Request) -> web.Response:
        load: MachineLoad = await self._core.refs.monitor.ask(
            lambda f: GetLoad(reply=f, wait_for_speed=False), 5.0)  # 0.0 until measured
        for origin, app in self._hosted.evict_idle():
            log.info("peer_model_evicted", origin=origin, app=app)
        return json_response({
            "name": self._core.router.me, "speed": load.speed, "busy": load.busy,
            "cores": load.cores, "cpu_percent": load.daemon_cpu_percent,
            "memory_percent": load.memory_percent, "hosted": self._hosted.ids()})

    async def install(self, request: web.Request) -> web.Response:
        """A signed model version from a peer: verified as it arrives, unpacked, loaded."""
        origin, app = request.match_info["origin"], request.match_info["app"]
        try:
            version = version_number(request.match_info["version"])
        except ValueError:
            raise Invalid("the version must be a number from 1 to 999999999") from None
        signature = request.headers.get(signing.HEADER)
        model = request.headers.get(signing.MODEL_HEADER, "")
        if not signature or not model:
            raise Invalid(f"missing {signing.HEADER} or {signing.MODEL_HEADER}: model "
                          "archives must be signed")
        too_big = TooLarge(f"model archive larger than {MAX_MODEL_ARCHIVE} bytes")
        if (request.content_length or 0) > MAX_MODEL_ARCHIVE:
            raise too_big
        mac = signing.signer(self._core.settings.peer_secret, origin, app, version, model)
        size = 0
        async with self._uploads:
            with self._hosted.incoming() as archive:
                async with body_deadline(self._core):
                    async for chunk in request.content.iter_chunked(signing.CHUNK):
                        size += len(chunk)
                        if size > MAX_MODEL_ARCHIVE:
                            raise too_big
                        mac.update(chunk)
                        await asyncio.to_thread(archive.write, chunk)
                try:
                    signing.check(mac, signature)
                    await self._hosted.receive(origin, app, version, model, archive)
                except (signing.BadSignature, HostError) as exc:
                    log.warning("peer_model_rejected", origin=origin, app=app, version=version,
                                error=str(exc))
                    raise Invalid(str(exc)) from None
        log.info("peer_model_loaded", origin=origin, app=app, version=version, bytes=size)
        return json_response({"loaded": version})

    async def predict(self, request: web.Request) -> web.Response:
        origin, app = request.match_info["origin"], request.match_info["app"]
        served = self._hosted.get(origin, app)
        if served is None:
            raise NotFound(f"no model of {origin}/{app} is hosted here")
        payload = await read_json(self._core, request)
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise Invalid('expected {"instances": [...], "members"?: int, '
                          '"probabilities"?: bool}')
        members = payload.get("members")
        samples = [peer_instance(x) for x in payload["instances"]]
        answers = await served.predict(samples, payload.get("probabilities") is True,
                                       members if type(members) is int and members > 0 else None)
        return json_response({"predictions": [
            {"label": a.label, "confidence": a.confidence, "stage": a.stage,
             "model_version": a.version, "probabilities": a.probabilities, "margin": a.margin,
             "doubt": a.doubt} for a in answers]})
