"""Pinning model versions (``POST`` and ``DELETE /v1/apps/{app}/models/{v}/pin``): a pinned
version is never deleted by retention (``Registry.prune``), so a model worth going back to
stays whatever the trainer publishes after it.

Both are idempotent: pinning a pinned version, or unpinning one that is not pinned, answers
200 with the version as ``GET /v1/apps/{app}/models`` lists it. A version that is not kept
(pruned already, or never published) is 404 either way. Like the views, this knows nothing of
HTTP.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from actors.server import views
from actors.server.core import ServingCore
from actors.server.payloads import version_number
from mliot_daemon.errors import NotFound

log = structlog.get_logger("mliot.server")


async def set_pin(core: ServingCore, app: str, version_text: str, pinned: bool
                  ) -> dict[str, Any]:
    """Pin (or unpin) a kept version; the version's info."""
    name = core.app(app).name
    try:
        version = version_number(version_text)
        # the registry's lock orders this against a prune in the trainer's thread
        await asyncio.to_thread(core.registry.pin, name, version, pinned)
    except (ValueError, KeyError):
        raise NotFound(f"no kept version {version_text[:20]!r} of {name!r}: only the versions "
                       f"GET /v1/apps/{name}/models lists can be pinned") from None
    log.info("version_pinned" if pinned else "version_unpinned", app=name, version=version)
    listed = (await views.models(core, name))["versions"]
    for info in listed:
        if info["version"] == version:
            return info
    raise NotFound(f"version {version} of {name!r} is no longer kept")  # its manifest is gone
