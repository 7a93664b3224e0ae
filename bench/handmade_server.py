"""What a user would write by hand: a minimal aiohttp server around a pickled scikit-learn model.

Usage: python -m bench.handmade_server MODEL.joblib PORT
POST /predict {"instances": [[...], ...]} -> {"predictions": [...]}
"""

from __future__ import annotations

import json
import sys

import joblib
import numpy as np
from aiohttp import web


def main() -> None:
    model = joblib.load(sys.argv[1])
    port = int(sys.argv[2])

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
