"""The apps a daemon knows: declared in the config file, or created through the API.

File apps belong to the file (the API may not change or delete them); API apps live in the
store and survive restarts. When both name the same app, the file wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from mliot_daemon.config import ConfigError, parse_app
from mliot_daemon.settings import AppSpec

log = structlog.get_logger("mliot.catalog")


@dataclass(frozen=True, slots=True)
class AppEntry:
    """One app: its spec, who owns it, and the sample shape it takes (None until known)."""

    spec: AppSpec
    owner: Literal["file", "api"]
    shape: tuple[int, ...] | None

    @property
    def name(self) -> str:
        return self.spec.name


class Catalog:
    """Name -> AppEntry. Plain state: its owner serializes changes."""

    def __init__(self) -> None:
        self._apps: dict[str, AppEntry] = {}
        self._api: dict[str, AppSpec] = {}
        self._file: dict[str, AppSpec] = {}
        self._seen_shapes: dict[str, tuple[int, ...]] = {}

    def load(self, file_apps: Iterable[AppSpec], api_apps: Mapping[str, Any],
             shapes: Mapping[str, tuple[int, ...] | None]) -> None:
        """Build from the config's apps, the store's API apps and the stored sample shapes."""
        self._seen_shapes = {k: v for k, v in shapes.items() if v is not None}
        self._api = {}
        for name, raw in api_apps.items():
            try:
                self._api[name] = parse_app(raw)
            except ConfigError as exc:  # stored by an older version with other rules
                log.error("stored_app_invalid", app=name, errors=exc.errors)
        self.set_file_apps(file_apps)

    def set_file_apps(self, apps: Iterable[AppSpec]) -> set[str]:
        """Replace the file's apps (on reload); returns the names whose entry changed."""
        self._file = {a.name: a for a in apps}
        return self._rebuild()

    def put_api_app(self, spec: AppSpec) -> None:
        self._api[spec.name] = spec
        self._rebuild()

    def remove(self, name: str) -> None:
        self._api.pop(name, None)
        self._seen_shapes.pop(name, None)
        self._rebuild()

    def note_shape(self, name: str, shape: tuple[int, ...] | None) -> None:
        """The first committed sample fixes an app's shape when its spec has none."""
        if shape is not None and name not in self._seen_shapes:
            self._seen_shapes[name] = shape
            self._rebuild()

    def _rebuild(self) -> set[str]:
        before = self._apps
        apps: dict[str, AppEntry] = {}
        for owner, specs in (("api", self._api), ("file", self._file)):  # file wins
            for name, spec in specs.items():
                shape = spec.shape or self._seen_shapes.get(name)
                if spec.data_type == "audio":
                    shape = None
                apps[name] = AppEntry(spec, owner, shape)  # type: ignore[arg-type]
        shadowed = set(self._api) & set(self._file)
        for name in shadowed:
            log.warning("api_app_shadowed_by_file", app=name)
        self._apps = apps
        return {n for n in set(before) | set(apps) if before.get(n) != apps.get(n)}

    def get(self, name: str) -> AppEntry | None:
        return self._apps.get(name)

    def names(self) -> list[str]:
        return sorted(self._apps)
