"""Model versions on disk, per app, with an atomic "current" pointer.

Layout under ``<data_dir>/models/<app>/``::

    staging/<id>/     a model being written by a pool worker (never read; cleared at start)
    versions/000007/  a complete, immutable model directory (learn.persist format)
    current           the served version's number, replaced atomically (write, fsync, rename)
    pinned            the pinned versions' numbers, one a line, replaced the same way

A version directory appears by one ``rename`` of a complete staging directory, and the pointer
changes by one ``rename`` of a complete file, so ``kill -9`` at any moment leaves the pointer
naming a complete version. All methods block (file system): call them in a thread.

Retention (``prune``, after each publish) keeps the newest ``keep`` versions, the current one,
the pinned ones, and the last versions of the two newest completed training runs. A run
publishes several versions (the quick one, then one per fitted family); its last one carries
``extra.complete`` in its manifest, and a run cut short (kill -9, a failed fit) has none. So
after a retrain the version that ended the run before it can still be activated, and while a
run is under way the last completed run's version stays too. Pins are a file beside
``current`` rather than a marker in the version folder, which stays as it was published (it
is what peers are sent).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import structlog

from mliot_daemon.learn.persist import ModelFormatError, read_manifest

log = structlog.get_logger("mliot.registry")
META = "version.json"
PINS = "pinned"
RUNS_KEPT = 2  # completed runs whose last version retention keeps: the newest and the one before


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Registry:
    """Every app's model versions under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # The trainer publishes and prunes while the server activates and pins, each in a
        # thread of its own: without the lock a prune could delete a version pinned or
        # activated between its reading the pins (or ``current``) and its rmtree.
        self._lock = threading.RLock()

    def _app(self, app: str) -> Path:
        return self.root / app

    def version_path(self, app: str, version: int) -> Path:
        return self._app(app) / "versions" / f"{version:06d}"

    def staging_path(self, app: str) -> Path:
        """A fresh path for a worker to save a model into (the worker creates it)."""
        path = self._app(app) / "staging" / uuid.uuid4().hex
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def clear_staging(self) -> None:
        """Remove half-written models left by a crash."""
        for staging in self.root.glob("*/staging"):
            shutil.rmtree(staging, ignore_errors=True)

    def versions(self, app: str) -> list[int]:
        folder = self._app(app) / "versions"
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())

    def current(self, app: str) -> int | None:
        """The served version: the pointer's, or the newest complete one if the pointer is bad."""
        try:
            version = int((self._app(app) / "current").read_text().strip())
        except (OSError, ValueError):
            version = None
        if version is not None and self.version_path(app, version).is_dir():
            return version
        complete = [v for v in self.versions(app) if self._complete(app, v)]
        return complete[-1] if complete else None

    def _complete(self, app: str, version: int) -> bool:
        try:
            read_manifest(self.version_path(app, version))
        except ModelFormatError:
            return False
        return True

    def publish(self, app: str, staging: Path, keep: int, meta: dict[str, Any]) -> int:
        """Make a complete staged model the next version and the current one; ``meta`` (why it
        was made, the publish decision) is stored beside the manifest as ``version.json``."""
        (staging / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        with self._lock:
            existing = self.versions(app)
            version = (existing[-1] if existing else 0) + 1
            target = self.version_path(app, version)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, target)
            _fsync_dir(target.parent)
            self.activate(app, version)
            self.prune(app, keep)
        return version

    def activate(self, app: str, version: int) -> None:
        """Point ``current`` at a kept version (roll back or forward)."""
        with self._lock:
            if not self.version_path(app, version).is_dir():
                raise KeyError(f"{app}: no version {version}")
            self._replace(app, "current", f"{version}\n")

    def _replace(self, app: str, name: str, text: str) -> None:
        """Replace a small file of the app's folder atomically (write, fsync, rename)."""
        folder = self._app(app)
        tmp = folder / f".{name}.{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
        _fsync_dir(folder)

    def prune(self, app: str, keep: int) -> None:
        """Delete the versions retention does not keep (see the module's docstring)."""
        with self._lock:
            versions = self.versions(app)
            kept = {*versions[-keep:], *self.run_ends(app)[-RUNS_KEPT:], *self.pinned(app),
                    self.current(app)}
            for version in versions:
                if version not in kept:
                    shutil.rmtree(self.version_path(app, version), ignore_errors=True)

    def run_ends(self, app: str) -> list[int]:
        """The kept versions that ended a completed training run, oldest first: the trainer
        marks a run's last version ``complete`` in its manifest (versions saved before that
        mark existed count as complete, as the trainer reads them at start too)."""
        out = []
        for version in self.versions(app):
            try:
                extra = self.manifest(app, version).get("extra", {})
            except ModelFormatError:
                continue
            if extra.get("complete", True):
                out.append(version)
        return out

    def pinned(self, app: str) -> set[int]:
        """The pinned versions (retention never deletes them)."""
        try:
            text = (self._app(app) / PINS).read_text()
        except FileNotFoundError:
            return set()
        return {int(line) for line in text.split() if line.isdigit()}

    def pin(self, app: str, version: int, pinned: bool = True) -> None:
        """Pin a kept version, or unpin it; doing either twice changes nothing. ``KeyError``
        when the version is not kept (it may have been pruned already)."""
        with self._lock:
            if not self.version_path(app, version).is_dir():
                raise KeyError(f"{app}: no version {version}")
            pins = self.pinned(app)
            wanted = pins | {version} if pinned else pins - {version}
            if wanted != pins:
                self._replace(app, PINS, "".join(f"{v}\n" for v in sorted(wanted)))

    def manifest(self, app: str, version: int) -> dict[str, Any]:
        return read_manifest(self.version_path(app, version))

    def meta(self, app: str, version: int) -> dict[str, Any]:
        try:
            return json.loads((self.version_path(app, version) / META).read_text())
        except (OSError, ValueError):
            return {}

    def model_id(self, app: str, version: int) -> str:
        """What a version is, on any machine: ``<lineage>:<manifest hash>``. The lineage is
        drawn once per app folder, so an app deleted and created again (whose version numbers
        restart at 1) is never taken for its predecessor; the manifest holds every artifact's
        sha256. Peers compare it before serving an app's model."""
        lineage_file = self._app(app) / "lineage"
        try:
            lineage = lineage_file.read_text().strip()
        except FileNotFoundError:
            lineage = uuid.uuid4().hex[:16]
            tmp = lineage_file.with_name(f".lineage.{uuid.uuid4().hex}")
            tmp.write_text(lineage + "\n")
            os.replace(tmp, lineage_file)
        manifest = (self.version_path(app, version) / "manifest.json").read_bytes()
        return f"{lineage}:{hashlib.sha256(manifest).hexdigest()[:16]}"

    def delete_app(self, app: str) -> None:
        with self._lock:  # a pin written meanwhile would outlive the app into its successor
            shutil.rmtree(self._app(app), ignore_errors=True)
