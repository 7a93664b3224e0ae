"""The TOML configuration: a parser that reports every error, reload and diff.

``parse_settings`` walks the raw mapping once against the schema (``mliot_daemon.settings``)
and collects *all* problems as ``path: why`` before raising ``ConfigError``, so a user fixes a
file in one go and a typo never silently becomes a default. Secrets given as files are read
here, once per load. ``ConfigStore`` holds the configuration in force and reloads it: a bad
file is rejected and the old one stays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import structlog

from mliot_daemon.settings import (
    MACHINE_NAME,
    RESTART_KEYS,
    AppSpec,
    Label,
    PeerSettings,
    Secrets,
    Settings,
)

log = structlog.get_logger("mliot.config")


class ConfigError(ValueError):
    """The configuration is invalid; ``errors`` lists every problem as ``path: why``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class _Bad:
    """Marks a value that failed to parse (its error is already recorded)."""


_BAD = _Bad()


def _read_secret(path: str) -> str:
    return Path(path).expanduser().read_text("utf-8").strip()


def _coerce(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(inner[0], value, path, errors)
    if dataclasses.is_dataclass(tp):
        return _parse_table(tp, value, path, errors)
    if origin is tuple:
        item_tp = get_args(tp)[0]
        if not isinstance(value, list):
            errors.append(f"{path}: must be a list")
            return _BAD
        items = [_coerce(item_tp, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return _BAD if any(i is _BAD for i in items) else tuple(items)
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        errors.append(f"{path}: must be one of {', '.join(choices)}")
        return _BAD
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif tp is str or tp is Label:
        if tp is Label and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # labels are strings in every API; numbers are converted
        ok = isinstance(value, str)
    else:  # pragma: no cover - a schema bug, not user input
        raise TypeError(f"unsupported config type {tp!r}")
    if not ok:
        name = {bool: "a boolean", int: "an integer", float: "a finite number", str: "a string",
                Label: "a string"}[tp]
        errors.append(f"{path}: must be {name}, got {type(value).__name__}")
        return _BAD
    return value


def _parse_table(cls: type, raw: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(raw, Mapping):
        errors.append(f"{path}: must be a table")
        return _BAD
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if not f.metadata.get("derived")}
    for key in raw:
        if key not in known:
            errors.append(f"{_join(path, key)}: unknown key")
    values: dict[str, Any] = {}
    missing = False
    for f in known.values():
        key_path = _join(path, f.name)
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{key_path}: required")
                missing = True
            continue
        value = _coerce(hints[f.name], raw[f.name], key_path, errors)
        check = f.metadata.get("check")
        if value is not _BAD and value is not None and check and (why := check(value)):
            errors.append(f"{key_path}: {why}")
            value = _BAD
        if value is _BAD:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            missing = missing or required
            continue
        values[f.name] = value
    if missing:
        return _BAD
    return cls(**values)


def _join(path: str, key: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", str(key)):
        return f"{path}[{str(key)!r}]"  # an odd key still gets a readable, non-empty path
    return f"{path}.{key}" if path else key


def _check_app(app: AppSpec, path: str, errors: list[str]) -> None:
    if app.data_type == "audio" and app.shape is not None:
        errors.append(f"{path}.shape: not for audio (clips may have any length)")
    if app.data_type != "audio" and app.sample_rate is not None:
        errors.append(f"{path}.sample_rate: only for audio apps")
    if app.background_class is not None and app.classes is not None \
            and app.background_class not in app.classes:
        errors.append(f"{path}.background_class: must be one of classes")
    if app.channels:
        _check_stream(app, path, errors)


MAX_WINDOW_POINTS = 100_000


def _check_stream(app: AppSpec, path: str, errors: list[str]) -> None:
    """A stream app's channels and grid."""
    if app.data_type != "sensor":
        errors.append(f"{path}.channels: only sensor apps take channels")
    names = [c.name for c in app.channels]
    for i, name in enumerate(names):
        if name in names[:i]:
            errors.append(f"{path}.channels[{i}].name: duplicate name {name!r}")
    points = app.window_s * app.sample_hz
    if abs(points - round(points)) > 1e-6 or not 2 <= round(points) <= MAX_WINDOW_POINTS:
        errors.append(f"{path}.window_s: window_s x sample_hz must be a whole number of grid "
                      f"points from 2 to {MAX_WINDOW_POINTS}, got {points:g}")
    elif app.shape != (len(app.channels), app.window_points):
        errors.append(f"{path}.shape: a stream app's shape is (channels, window_s x "
                      f"sample_hz) = {[len(app.channels), app.window_points]}; leave it out")


def parse_app(raw: Any, path: str = "") -> AppSpec:
    """Validate one app spec (a TOML `[[apps]]` table or a PUT body); raise ConfigError."""
    errors: list[str] = []
    app = _parse_table(AppSpec, raw, path, errors)
    if app is not _BAD:
        _check_app(app, path or "app", errors)
    if errors:
        raise ConfigError(errors)
    return app


def parse_settings(raw: Mapping[str, Any]) -> Settings:
    """Validate a whole configuration; raise ConfigError listing every problem with its path."""
    errors: list[str] = []
    settings = _parse_table(Settings, raw, "", errors)
    if settings is _BAD:
        raise ConfigError(errors)
    for i, app in enumerate(settings.apps):
        _check_app(app, f"apps[{i}]", errors)
    for kind, items in (("apps", settings.apps), ("peers", settings.peers)):
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.name in seen:
                errors.append(f"{kind}[{i}].name: duplicate name {item.name!r}")
            seen.add(item.name)
    d, t = settings.daemon, settings.training
    names = [("daemon.name", d.name)] if d.name else []
    names += [(f"peers[{i}].name", p.name) for i, p in enumerate(settings.peers)]
    for path, name in names:
        if not MACHINE_NAME.fullmatch(name):
            errors.append(f"{path}: must match {MACHINE_NAME.pattern}")
    for i, peer in enumerate(settings.peers):
        if not peer.url.startswith(("http://", "https://")):
            errors.append(f"peers[{i}].url: must start with http:// or https://")
    token = _secret(d.token, d.token_file, "daemon.token", errors)
    peer_secret = _secret(d.peer_secret, d.peer_secret_file, "daemon.peer_secret", errors)
    if token and token == peer_secret:
        errors.append("daemon.peer_secret: must differ from daemon.token (devices hold the "
                      "token; only peer daemons may hold the peer secret)")
    peers, warnings = _peer_aliases(settings.peers, errors)
    if not token and not is_loopback(d.host):
        errors.append("daemon.token: required when daemon.listen is not a loopback address")
    if t.backend == "dask" and not t.dask_scheduler.startswith(("tcp://", "tls://")):
        errors.append("training.dask_scheduler: a tcp:// or tls:// address is needed for dask")
    if settings.mqtt is not None and not settings.mqtt.url.startswith(("mqtt://", "mqtts://")):
        errors.append("mqtt.url: must start with mqtt:// or mqtts://")
    if errors:
        raise ConfigError(errors)
    return dataclasses.replace(settings, peers=peers, secrets=Secrets(token, peer_secret),
                               warnings=warnings)


def _secret(inline: str, file: str, path: str, errors: list[str]) -> str:
    """A secret given inline or as a file (its first line); an unreadable, undecodable or
    empty file is an error of this load."""
    if inline and file:
        errors.append(f"{path}_file: set either {path.split('.')[-1]} or its _file, not both")
        return ""
    if not file:
        return inline
    try:
        value = _read_secret(file)
    except OSError as exc:
        errors.append(f"{path}_file: cannot read {file}: {exc.strerror or exc}")
        return ""
    except UnicodeDecodeError as exc:
        errors.append(f"{path}_file: {file} is not UTF-8 text: {exc.reason} at byte {exc.start}")
        return ""
    if not value:
        errors.append(f"{path}_file: {file} is empty")
    return value


def _peer_aliases(peers: tuple[PeerSettings, ...], errors: list[str]
                  ) -> tuple[tuple[PeerSettings, ...], tuple[str, ...]]:
    """``[[peers]] token`` read as ``secret`` (for one release), with a warning."""
    out, warnings = [], []
    for i, peer in enumerate(peers):
        if peer.token and peer.secret:
            errors.append(f"peers[{i}].token: an old name of secret; set only secret")
        elif peer.token:
            warnings.append(f"peers[{i}].token: deprecated, read as peers[{i}].secret; rename "
                            "it (the peer must set the same value as its daemon.peer_secret)")
            peer = dataclasses.replace(peer, secret=peer.token, token="")
        out.append(peer)
    return tuple(out), tuple(warnings)


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only (`mliot doctor` asks too)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_file(path: Path) -> Settings:
    """Read and validate a TOML file (blocking: call it in a thread)."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}"]
                          ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    except RecursionError:  # tomllib recurses per nesting level
        raise ConfigError([f"{path}: not valid TOML: nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_settings(raw)


# ---------------------------------------------------------------------------------------------
# Diff and reload


def changed_keys(old: Settings, new: Settings) -> frozenset[str]:
    """Dotted keys whose value differs: `daemon.log_level`, or a whole `apps`/`peers`/`mqtt`."""
    out: set[str] = set()
    for section in ("daemon", "training"):
        a, b = getattr(old, section), getattr(new, section)
        out |= {f"{section}.{f.name}" for f in fields(a)
                if getattr(a, f.name) != getattr(b, f.name)}
    out |= {s for s in ("mqtt", "peers", "apps", "secrets")
            if getattr(old, s) != getattr(new, s)}
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Applied:
    """A reload that took effect."""

    version: int
    changed: frozenset[str]
    restart_required: frozenset[str]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A reload that was refused; the old configuration stays in force."""

    version: int
    errors: list[str]


ReloadOutcome = Applied | Rejected
Listener = Callable[[Settings, frozenset[str], int], typing.Awaitable[None]]


class ConfigStore:
    """The configuration in force, its version, and reload from the file it came from."""

    def __init__(self, path: Path | None, settings: Settings) -> None:
        self.path = path
        self.current = settings
        self.boot = settings
        self.version = 1
        self._lock = asyncio.Lock()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(settings, changed, version)`` after every applied reload."""
        self._listeners.append(listener)

    @property
    def restart_required(self) -> frozenset[str]:
        """Restart-only keys that differ from what the daemon started with."""
        return changed_keys(self.boot, self.current) & RESTART_KEYS

    async def reload(self, source: str) -> ReloadOutcome:
        """Re-read the file; apply it if valid, else keep the old config and say why."""
        async with self._lock:  # one reload at a time, so versions arrive in order
            if self.path is None:
                return Rejected(self.version, ["daemon runs on built-in defaults: "
                                               "start it with --config FILE to reload"])
            try:
                new = await asyncio.to_thread(load_file, self.path)
                if not new.token and not is_loopback(self.boot.daemon.host):
                    # listen applies at restart: the public socket of the boot config is open
                    raise ConfigError([f"daemon.token: required while listening on "
                                       f"{self.boot.daemon.listen} (listen changes apply at "
                                       "restart)"])
            except ConfigError as exc:
                log.warning("config_reload_rejected", source=source, errors=exc.errors,
                            kept_version=self.version)
                return Rejected(self.version, exc.errors)
            for warning in new.warnings:
                log.warning("config_warning", source=source, warning=warning)
            changed = changed_keys(self.current, new)
            if not changed:
                log.info("config_unchanged", source=source, version=self.version)
                return Applied(self.version, changed, self.restart_required)
            self.current = new
            self.version += 1
            log.info("config_reloaded", source=source, version=self.version,
                     changed=sorted(changed))
            for listener in self._listeners:
                await listener(new, changed, self.version)
            return Applied(self.version, changed, self.restart_required)
