"""What a user would write by hand: a minimal aiohttp server around a pickled scikit-learn model.

Usage: python -m bench.handmade_server MODEL.joblib PORT
POST /predict {"instances": [[...], ...]} -> {"predictions": [...]}

With ``-`` for the model it is the transport floor of the serving benchmark instead: the
same event loop as mliot (uvloop), ``POST /v1/apps/{app}/predict`` and the WebSocket stream
``/v1/apps/{app}/stream`` parse the request with orjson and answer one constant prediction
of mliot's shape. No model, no checks: what any aiohttp server pays per round trip here.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import orjson
from aiohttp import WSMsgType, web

ANSWER = {"id": "0" * 32, "label": "0", "confidence": 1.0, "stage": 2, "model_version": 1}


def floor_app() -> web.Application:
    body = orjson.dumps({"predictions": [ANSWER]})

    async def predict(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.Response(body=body, content_type="application/json")

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            ref = orjson.loads(msg.data).get("ref")
            await ws.send_frame(orjson.dumps({"type": "prediction", "ref": ref, **ANSWER}),
                                WSMsgType.TEXT)
        return ws

    app = web.Application()
    app.router.add_post("/v1/apps/{app}/predict", predict)
    app.router.add_get("/v1/apps/{app}/stream", stream)
    return app


def main() -> None:
    port = int(sys.argv[2])
    if sys.argv[1] == "-":
        import uvloop

        web.run_app(floor_app(), host="127.0.0.1", port=port, print=None, access_log=None,
                    loop=uvloop.new_event_loop())
        return
    import joblib

    model = joblib.load(sys.argv[1])

    async def predict(request: web.Request) -> web.Response:
        body = await request.json()
        X = np.asarray(body["instances"], dtype=np.float64)
        return web.json_response({"predictions": model.predict(X).tolist()})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"ok": True}))

    app = web.Application()
    app.add_routes([web.post("/predict", predict), web.get("/health", health)])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
