"""Models this daemon serves for its peers (the peer API's state; the server actor owns it).

A peer that places an app here sends a signed archive of one model version. The server checks
the signature while it receives it (see ``signing``); this module unpacks it under
``<data_dir>/hosted/<origin>/<app>/`` and loads it. The archive is a portable model
(``learn.portable``: ``portable.json`` and ``arrays.npz``, loaded without pickles): an archive
holding anything else, a pickle above all, is refused before it is extracted, and an npz
holding an object array is refused when it is read. Nothing here unpickles. Only the newest
version of each hosted app is kept, on disk and in memory, and one left unused for
``IDLE_EVICT_S`` is dropped. Hosted models are a cache: after a restart or an eviction the
origin's scheduler sees them missing from this daemon's profile and sends them again.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

from actors.server.serving import ServedApp, ServedModel
from mliot_daemon.learn.portable import FILES, load_portable
from mliot_daemon.settings import APP_NAME, MACHINE_NAME
from mliot_daemon.signing import unpack

IDLE_EVICT_S = 1800.0


class HostError(ValueError):
    """The request names an impossible origin, app or version, or the archive is no model."""


class HostedModels:
    """(origin, app) -> the served model a peer placed here."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._served: dict[tuple[str, str], ServedApp] = {}
        self._ids: dict[tuple[str, str], str] = {}
        self._used: dict[tuple[str, str], float] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def reset(self) -> None:
        """Start empty (blocking: call in a thread at start)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def incoming(self) -> IO[bytes]:
        """An anonymous file for an archive being received (gone with the process)."""
        return tempfile.TemporaryFile(dir=self.root)  # noqa: SIM115 - the caller closes it

    async def receive(self, origin: str, app: str, version: int, model: str,
                      archive: IO[bytes]) -> None:
        """Unpack a verified archive of model ``model`` (the origin's id for it), load it and
        serve it; one install per app at a time."""
        key = _checked(origin, app)
        async with self._locks.setdefault(key, asyncio.Lock()):
            served = await asyncio.to_thread(self._install, key, version, archive)
            current = self._served.get(key)
            if current is None:
                self._served[key] = ServedApp(served)
            else:
                current.swap(served)
            self._ids[key] = model
            self._used[key] = time.monotonic()

    def _install(self, key: tuple[str, str], version: int, archive: IO[bytes]) -> ServedModel:
        home = self.root / key[0] / key[1]
        staging = home / f".staging-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            archive.seek(0)
            unpack(archive, staging, FILES)
            served = ServedModel(version, load_portable(staging))
        except Exception as exc:  # whatever the bytes were, the answer is a 422, not a 500
            shutil.rmtree(staging, ignore_errors=True)
            raise HostError(f"model version not loadable: {exc}") from exc
        final = home / f"{version:06d}"
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        for old in home.iterdir():
            if old != final and not old.name.startswith(".staging-"):
                shutil.rmtree(old, ignore_errors=True)
        return served

    def get(self, origin: str, app: str) -> ServedApp | None:
        key = (origin, app)
        served = self._served.get(key)
        if served is not None:
            self._used[key] = time.monotonic()
        return served

    def evict_idle(self) -> list[tuple[str, str]]:
        """Forget hosted apps unused for ``IDLE_EVICT_S`` (their folders go at the next
        install or start); returns them."""
        now = time.monotonic()
        gone = [k for k, t in self._used.items() if now - t > IDLE_EVICT_S]
        for key in gone:
            for d in (self._served, self._ids, self._used, self._locks):
                d.pop(key, None)
        return gone

    def ids(self) -> dict[str, str]:
        """``"origin/app"`` -> the model id held, for the profile."""
        return {f"{o}/{a}": ident for (o, a), ident in self._ids.items()}


def _checked(origin: str, app: str) -> tuple[str, str]:
    if not MACHINE_NAME.fullmatch(origin):
        raise HostError(f"origin {origin!r} is not a daemon name")
    if not APP_NAME.fullmatch(app):
        raise HostError(f"app {app!r} is not an app name")
    return origin, app
