"""The OpenAPI document describes exactly the routes the daemon answers."""

from __future__ import annotations

import asyncio

from openapi_spec_validator import validate

from actors.server.app import build_app
from actors.server.openapi import DOCUMENT


def _routes() -> set[tuple[str, str]]:
    app = build_app(None, 0.0, asyncio.Event(), None, None)  # type: ignore[arg-type]
    return {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
            if r.method != "HEAD" and r.resource is not None}


def test_the_document_lists_every_route_and_no_other() -> None:
    documented = {(method, path) for path, item in DOCUMENT["paths"].items()
                  for method in item if method != "parameters"}
    assert documented == _routes()


def test_the_document_is_valid_openapi_3_1_and_declares_its_errors() -> None:
    validate(DOCUMENT)  # raises on a schema error
    assert DOCUMENT["openapi"] == "3.1.0"
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            codes = set(operation["responses"])
            assert any(c.startswith("2") or c == "101" for c in codes), (method, path)
            if path not in ("/healthz", "/v2/health/live"):
                assert codes - {"200", "201", "204", "101"}, (method, path)  # errors too
