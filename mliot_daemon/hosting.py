"""Models this daemon serves for its peers (the peer API's state; the server actor owns it).

A peer that places an app here sends a signed archive of one model version. It is verified
while it is received (see ``signing``), unpacked under ``<data_dir>/hosted/<origin>/<app>/``
and loaded; only the newest version of each hosted app is kept, on disk and in memory. Hosted
models are a cache: after a restart the origin's scheduler sees them missing from this
daemon's profile and sends them again.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from mliot_daemon.learn.persist import load_model
from mliot_daemon.serving import ServedApp, ServedModel
from mliot_daemon.signing import unpack


class HostedModels:
    """(origin, app) -> the served model a peer placed here. Blocking methods: call in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._served: dict[tuple[str, str], ServedApp] = {}
        shutil.rmtree(root, ignore_errors=True)  # a cache: the origins send them again

    def install(self, origin: str, app: str, version: int, archive: Path) -> ServedModel:
        """Unpack a verified archive and load it (blocking)."""
        home = self.root / origin / app
        staging = home / f".staging-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            unpack(archive, staging)
            served = ServedModel(version, load_model(staging))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        final = home / f"{version:06d}"
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        for old in home.iterdir():
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return served

    def put(self, origin: str, app: str, served: ServedModel) -> None:
        """Serve ``served`` from now on (on the loop: a swap, in-flight batches finish)."""
        current = self._served.get((origin, app))
        if current is None:
            self._served[(origin, app)] = ServedApp(served)
        else:
            current.swap(served)

    def get(self, origin: str, app: str) -> ServedApp | None:
        return self._served.get((origin, app))

    def versions(self) -> dict[str, int]:
        """``"origin/app"`` -> the version held, for the profile."""
        return {f"{o}/{a}": s.current.version for (o, a), s in self._served.items()}
