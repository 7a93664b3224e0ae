"""The OpenAPI 3.1 document of the whole HTTP API, served at ``GET /openapi.json``.

Every route the daemon answers is here, with its request and answer bodies and every status
code it can give: ``tests/unit/test_openapi.py`` compares this with the routes, and a
schemathesis run against a live daemon (``tests/integration/test_openapi.py``) checks the
answers against it. Schemas are in ``openapi_schemas``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from actors.server.http import json_response
from actors.server.openapi_schemas import SCHEMAS, ref
from mliot_daemon import __version__

ERRORS = {
    400: "malformed: not JSON, or not what the route reads",
    401: "missing or wrong bearer token (writes; reads with `daemon.protect_reads`)",
    403: "a write from a web page of another origin; the peer API without a peer secret",
    404: "no such app, version, query or file",
    408: "the body did not all arrive within `daemon.body_timeout_s`",
    409: "conflicts with what the daemon has (see the message)",
    413: "body larger than `daemon.max_body_mb`",
    415: "a write whose body does not say it is JSON",
    421: "a host name this daemon does not answer to",
    422: "well-formed but invalid: the message and `details` say where",
    429: "more writes a second from this address than `daemon.max_writes_per_s` (when set); "
         "`Retry-After` says when to send it again: nothing of it was stored",
    503: "not yet or not now: no model yet, the disk is full, the daemon is busy, or it has "
         "`daemon.max_connections` open (before any route: any request may get it)",
}
GUARDED = (401, 403, 421, 429)  # the middleware's answers, before any route runs
READ = (401, 421, 503)
APP_READ = (*READ, 404)
WRITE = (*GUARDED, 400, 404, 408, 413, 415, 422, 503)  # the routes that read a body


def _errors(codes: tuple[int, ...]) -> dict[str, Any]:
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in sorted(set(codes))}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def op(summary: str, ok: dict[str, Any] | None, errors: tuple[int, ...], *,
       body: dict[str, Any] | None = None, status: int = 200,
       query: tuple[dict[str, Any], ...] = (), peer: bool = False) -> dict[str, Any]:
    """One operation: ``ok`` is the success answer's JSON schema (None: no body, or what
    ``_raw`` describes), ``body`` the request's content."""
    answer = {"description": "OK", **(_json(ok) if ok is not None else {})}
    out: dict[str, Any] = {"summary": summary,
                           "responses": {str(status): answer, **_errors(errors)}}
    if body is not None:
        out["requestBody"] = {"required": True, "content": body}
    if query:
        out["parameters"] = list(query)
    if peer:
        out["security"] = [{"peerSecret": []}]
    return out


def _raw(summary: str, media: str, errors: tuple[int, ...]) -> dict[str, Any]:
    """An operation whose answer is not JSON (metrics, the dashboard, previews)."""
    out = op(summary, None, errors)
    out["responses"]["200"]["content"] = {media: {}}
    return out


def q(name: str, schema: dict[str, Any], what: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": what}


JSON = {"application/json": {}}


def _export() -> dict[str, Any]:
    out = op("Samples and corrections as npz (X, y, kind, source, predicted, created; audio "
             "padded, with lengths) or CSV (flat values, label last), streamed", None,
             (*APP_READ, 400, 422),
             query=(q("format", {"enum": ["npz", "csv"]}, "default npz"),))
    out["responses"]["200"]["content"] = {"application/x-npz": {}, "text/csv": {}}
    return out


def _body(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": ref(name)}}


INFER = op("Inference (JSON, or Triton's binary tensors after a JSON header)",
           ref("InferResponse"), (*WRITE, 404), body={
               **_body("InferRequest"), "application/octet-stream": {}})
INFER["responses"]["200"]["content"]["application/octet-stream"] = {}

PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {"get": op("Liveness: the process runs", ref("Probe"), ())},
    "/readyz": {"get": op("Readiness: every actor has started", ref("Probe"), (503,))},
    "/metrics": {"get": _raw("Prometheus metrics", "text/plain", READ)},
    "/openapi.json": {"get": op("This document", {"type": "object"}, READ)},
    "/v1/status": {"get": op("Uptime, config, apps, machines, the process, loop lag",
                             ref("Status"), READ)},
    "/v1/reload": {"post": op("Reload the config file", ref("Reloaded"),
                              (*GUARDED, 409, 422, 503))},
    "/v1/apps": {"get": op("App names", {"type": "array", "items": {"type": "string"}},
                           READ)},
    "/v1/apps/{app}": {
        "get": op("An app: its spec, samples, served version", ref("App"), APP_READ),
        "put": op("Create or change an app", ref("App"), (*WRITE, 409),
                  body=_body("AppSpec")) | {"responses": {
                      "200": {"description": "changed", **_json(ref("App"))},
                      "201": {"description": "created", **_json(ref("App"))},
                      **_errors((*WRITE, 409))}},
        "delete": op("Delete an app, its data and models", None, (*GUARDED, 404, 503),
                     status=204)},
    "/v1/apps/{app}/samples": {"post": op(
        "Labelled samples (acknowledged after commit)", ref("Ingested"), (*WRITE, 409),
        body=_body("Samples"))},
    "/v1/apps/{app}/predict": {"post": op(
        "Predictions, each with an id for feedback", ref("Predictions"), WRITE,
        body=_body("Predict"))},
    "/v1/apps/{app}/feedback": {"post": op(
        "Correct or confirm a prediction", ref("FeedbackTaken"), (*WRITE, 409),
        body=_body("Feedback"))},
    "/v1/apps/{app}/import": {"post": op(
        "A labelled CSV (label last) or npz (X, y) file; flat rows take the app's shape",
        ref("Imported"), (*WRITE, 409),
        body={"text/csv": {}, "application/x-npz": {}, "application/octet-stream": {}},
        query=(q("batch_id", {"type": "string"}, "a retry with it stores nothing twice"),))},
    "/v1/apps/{app}/export": {"get": _export()},
    "/v1/apps/{app}/history": {"get": op("Every version ever published or activated",
                                         ref("History"), APP_READ)},
    "/v1/apps/{app}/quality": {"get": op("Confusion and recall: validation and feedback",
                                         ref("Quality"), APP_READ)},
    "/v1/apps/{app}/models": {"get": op("Kept versions, newest first, and the current one",
                                        ref("Models"), APP_READ)},
    "/v1/apps/{app}/models/{version}/activate": {"post": op(
        "Serve a kept version (roll back or forward)", ref("Activated"),
        (*GUARDED, 404, 503))},
    "/v1/apps/{app}/models/{version}/pin": {
        "post": op("Pin a kept version: retention never deletes it", ref("Version"),
                   (*GUARDED, 404, 503)),
        "delete": op("Unpin a kept version", ref("Version"), (*GUARDED, 404, 503))},
    "/v1/apps/{app}/queries": {"get": op("Open label queries, most informative first",
                                         ref("Queries"), APP_READ)},
    "/v1/apps/{app}/queries/{id}": {"delete": op("Skip a query: never asked again", None,
                                                 (*GUARDED, 404, 503), status=204)},
    "/v1/apps/{app}/queries/{id}/preview": {"get": _raw(
        "What the query asks about: PNG (image), WAV (audio) or JSON numbers", "*/*",
        APP_READ)},
    "/v1/apps/{app}/readings": {
        "post": op("Stream readings (acknowledged after commit)", ref("ReadingsTaken"),
                   (*WRITE, 409), body=_body("Readings")),
        "get": op("Readings of a span, thinned per channel", ref("Series"), (*APP_READ, 422),
                  query=(q("channel", {"type": "string"}, "one channel (default: all)"),
                         q("start", {"type": "number"}, "unix s (default: end - 600)"),
                         q("end", {"type": "number"}, "unix s (default: now)")))},
    "/v1/apps/{app}/labels": {
        "get": op("Time-range labels", ref("Ranges"), APP_READ),
        "post": op("Label a time range (no end: open until ended)", ref("Labelled"),
                   (*WRITE, 409), body=_body("Label"))},
    "/v1/apps/{app}/labels/{label_id}/end": {"post": op(
        "End an open range (default: now)", ref("Labelled"), (*WRITE, 409),
        body=_body("LabelEnd"))},
    "/v1/apps/{app}/stream": {"get": {
        "summary": "WebSocket: predictions, samples, feedback, readings; `watch=true` streams "
                   "every prediction of the app",
        "parameters": [q("watch", {"type": "boolean"}, "stream every prediction"),
                       q("max_per_s", {"type": "number"}, "cap the watch stream"),
                       q("token", {"type": "string"}, "the bearer token (browsers)")],
        "responses": {"101": {"description": "switching to the WebSocket protocol"},
                      **_errors((*APP_READ, 400, 403, 422))}}},
    "/v2": {"get": op("OIP server metadata", ref("ServerMetadata"), READ)},
    "/v2/health/live": {"get": op("OIP liveness", ref("Live"), ())},
    "/v2/health/ready": {"get": op("OIP readiness", ref("Ready"), (503,))},
    "/v2/models/{app}": {"get": op("OIP model metadata", ref("ModelMetadata"), APP_READ)},
    "/v2/models/{app}/ready": {"get": op("OIP model readiness (400: no model yet)",
                                         ref("ModelReady"), (*APP_READ, 400))},
    "/v2/models/{app}/infer": {"post": INFER},
    "/v2/models/{app}/versions/{version}": {"get": op(
        "OIP metadata of a kept version", ref("ModelMetadata"), APP_READ)},
    "/v2/models/{app}/versions/{version}/ready": {"get": op(
        "OIP readiness of a kept version", ref("ModelReady"), APP_READ)},
    "/v2/models/{app}/versions/{version}/infer": {"post": INFER},
    "/v1/peer/profile": {"get": op("Peer API: this machine's speed and load",
                                   ref("PeerProfile"), (*GUARDED, 503), peer=True)},
    "/v1/peer/models/{origin}/{app}/{version}": {"put": op(
        "Peer API: a signed portable model (a tar of portable.json and arrays.npz; no "
        "pickles)", ref("PeerInstalled"),
        (*GUARDED, 400, 408, 413, 422, 503), body={"application/octet-stream": {}}, peer=True)},
    "/v1/peer/models/{origin}/{app}/predict": {"post": op(
        "Peer API: predict with a hosted model", ref("PeerPredictions"), WRITE,
        body=_body("PeerPredict"), peer=True)},
    "/": {"get": _raw("The dashboard", "text/html", (421,))},
    "/ui/{name}": {"get": _raw("The dashboard's files", "*/*", (404, 421))},
}


def _with_path_parameters(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each ``{name}`` in a path as a string path parameter."""
    out = {}
    for path, item in paths.items():
        names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in names]
        out[path] = {**({"parameters": params} if params else {}), **item}
    return out


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "mliot", "version": __version__,
                 "description": "The mliot daemon's HTTP API (DESIGN.md has the contract)."},
        "paths": _with_path_parameters(PATHS),
        "components": {
            "schemas": SCHEMAS,
            "responses": {f"E{c}": {"description": what, **_json(ref("Error"))}
                          for c, what in ERRORS.items()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "`daemon.token`: writes, and reads with "
                                          "`daemon.protect_reads`"},
                "peerSecret": {"type": "http", "scheme": "bearer",
                               "description": "`daemon.peer_secret`: the peer API only"}}},
        "security": [{"bearer": []}, {}],  # reads need no token unless protect_reads
    }


async def serve(request: web.Request) -> web.Response:
    return json_response(DOCUMENT)


DOCUMENT = document()
