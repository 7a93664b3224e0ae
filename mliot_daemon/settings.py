"""The configuration's schema: frozen dataclasses, one per TOML section.

A field's type says what TOML value it takes; its metadata holds a range check and whether a
change needs a restart. ``mliot_daemon.config`` parses a file into these (every error with its
path) and reloads it. The policy of an app is the learning core's ``Policy``, parsed the same
way.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mliot_daemon.learn.ensemble import Policy

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "config" / "mliot.toml"
APP_NAME = re.compile(r"[a-z0-9_-]{1,64}")
# A daemon's name among peers: it is part of peer URLs and folder names (no "/", no "..").
MACHINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
DATA_TYPES = ("image", "audio", "sensor", "vector")
LOG_LEVELS = ("debug", "info", "warning", "error")
RESTART_KEYS = frozenset({"daemon.listen", "daemon.data_dir", "training.workers"})


def _check(fn: Callable[[Any], str | None], restart: bool = False) -> dict[str, Any]:
    return {"check": fn, "restart": restart}


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _at_least(n: float) -> Callable[[float], str | None]:
    return lambda v: None if v >= n else f"must be >= {n}"


def _one_of(*choices: str) -> Callable[[str], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _listen(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return "must be HOST:PORT with a port from 0 to 65535"
    return None


def _url(v: str) -> str | None:
    if not v:
        return None
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL (or empty)"
    return None


# ---------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """The `[daemon]` section."""

    name: str = ""  # empty: host name + port
    listen: str = field(default="127.0.0.1:8794", metadata=_check(_listen, restart=True))
    data_dir: str = field(default="~/.local/share/mliot", metadata={"restart": True})
    token: str = ""  # what devices and people present for writes
    token_file: str = ""
    peer_secret: str = ""  # what peer daemons present and sign models with; devices never hold it
    peer_secret_file: str = ""
    public_url: str = field(default="", metadata=_check(_url))  # how people reach the dashboard
    protect_reads: bool = False
    max_body_mb: float = field(default=16.0, metadata=_check(_positive))
    # Resource bounds (issue 20; DESIGN.md "Resource bounds"): what one hostile or broken
    # client can hold. They apply to connections opened after a reload.
    header_timeout_s: float = field(default=10.0, metadata=_check(_positive))
    body_timeout_s: float = field(default=60.0, metadata=_check(_positive))
    idle_timeout_s: float = field(default=30.0, metadata=_check(_positive))
    max_connections: int = field(default=512, metadata=_check(_at_least(1)))
    max_writes_per_s: float = field(default=0.0, metadata=_check(_at_least(0.0)))  # 0: off
    keep_predictions_days: float = field(default=7.0, metadata=_check(_positive))
    keep_readings_days: float = field(default=14.0, metadata=_check(_positive))
    log_level: str = field(default="info", metadata=_check(_one_of(*LOG_LEVELS)))
    log_format: str = field(default="auto", metadata=_check(_one_of("auto", "json", "console")))
    # the loop on a CPU of its own, the fitting workers on the others (mliot_daemon/cpus.py)
    dedicated_loop_cpu: bool = field(default=False, metadata={"restart": True})

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def machine_name(self) -> str:
        return self.name or f"{socket.gethostname()}:{self.port}"


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    """The `[training]` section."""

    workers: int = field(default=0, metadata=_check(_at_least(0), restart=True))  # 0: cores - 1
    backend: str = field(default="process", metadata=_check(_one_of("process", "dask")))
    dask_scheduler: str = ""
    growth_factor: float = field(default=1.5, metadata=_check(_at_least(1.0)))
    keep_versions: int = field(default=5, metadata=_check(_at_least(1)))
    fit_timeout_s: float = field(default=600.0, metadata=_check(_positive))

    @property
    def pool_size(self) -> int:
        return self.workers or max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The `[mqtt]` section; absent means MQTT is off."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str = ""
    password: str = ""
    ca_file: str = ""
    qos: int = field(default=1, metadata=_check(
        lambda v: None if v in (0, 1, 2) else "must be 0, 1 or 2"))
    prefix: str = "mliot"
    discovery_prefix: str = "homeassistant"
    max_payload_kb: int = field(default=1024, metadata=_check(_at_least(1)))


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """One `[[peers]]` entry: another mliot daemon this one may place serving on."""

    name: str
    url: str
    secret: str = ""  # that daemon's daemon.peer_secret
    token: str = ""  # the old name of ``secret``, read as an alias for one release


CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Channel:
    """One `[[apps.channels]]` entry of a stream app: a series of readings, fed over HTTP,
    WebSocket or an MQTT topic, resampled onto the app's grid."""

    name: str = field(metadata=_check(
        lambda v: None if CHANNEL_NAME.fullmatch(v) else "must match [A-Za-z0-9_.-]{1,64}"))
    topic: str = field(default="", metadata=_check(  # MQTT source; empty: HTTP/WebSocket only
        lambda v: None if not any(c in v for c in "+#\0") else "must be a topic, not a filter"))
    # hold: the last value (event-driven sensors: a plug reports on change); mean: the mean of
    # the readings in each grid step (dense sensors)
    resample: str = field(default="hold", metadata=_check(_one_of("hold", "mean")))
    stale_s: float | None = field(default=None, metadata=_check(_positive))  # None: never
    # the JSON field holding the value ("ENERGY.Power": nested); empty: a bare number (last,
    # since it shadows dataclasses' ``field`` in this class body)
    field: str = ""


@dataclass(frozen=True, slots=True)
class AppSpec:
    """An application: what data it takes and the policy it is served under."""

    name: str = field(metadata=_check(
        lambda v: None if APP_NAME.fullmatch(v) else "must match [a-z0-9_-]{1,64}"))
    data_type: str = field(metadata=_check(_one_of(*DATA_TYPES)))
    shape: tuple[int, ...] | None = field(default=None, metadata=_check(
        lambda v: None if v and all(d > 0 for d in v) else "must be a non-empty list of sizes > 0"))
    sample_rate: int | None = field(default=None, metadata=_check(_positive))
    classes: tuple[Label, ...] | None = field(default=None, metadata=_check(
        lambda v: None if len(set(v)) == len(v) and len(v) >= 2 else
        "must list at least two distinct labels"))
    background_class: Label | None = None
    policy: Policy = field(default_factory=Policy)
    # how Home Assistant shows the last prediction: a sensor keeps it as its state, an event
    # entity fires once per prediction (a knock, a door slam: classes that do not last)
    announce_as: str = field(default="sensor", metadata=_check(_one_of("sensor", "event")))
    # A stream app (a sensor app with channels): the daemon cuts windows from readings.
    channels: tuple[Channel, ...] = ()
    window_s: float = field(default=4.0, metadata=_check(_positive))
    hop_s: float = field(default=1.0, metadata=_check(_positive))
    sample_hz: float = field(default=10.0, metadata=_check(_positive))  # the grid's rate
    min_dwell_s: float = field(default=3.0, metadata=_check(_at_least(0.0)))
    max_lateness_s: float = field(default=5.0, metadata=_check(_at_least(0.0)))

    def __post_init__(self) -> None:
        if self.data_type == "audio" and self.sample_rate is None:
            object.__setattr__(self, "sample_rate", 16000)
        if self.channels and self.shape is None:
            object.__setattr__(self, "shape", (len(self.channels), self.window_points))

    @property
    def window_points(self) -> int:
        """Grid points per window of a stream app."""
        return round(self.window_s * self.sample_hz)

    def to_json(self) -> dict[str, Any]:
        """The spec as the API shows it (and as the store keeps it)."""
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape) if self.shape else None
        out["classes"] = list(self.classes) if self.classes else None
        out["channels"] = [dataclasses.asdict(c) for c in self.channels]
        return out


@dataclass(frozen=True, slots=True)
class Secrets:
    """The secrets in force, read once per load (inline, or from their files): a file that
    turns unreadable later cannot fail a request, only the next reload."""

    token: str = ""
    peer_secret: str = ""


DERIVED = {"derived": True}  # a field the parser fills in, never a key of the file


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration."""

    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    mqtt: MqttSettings | None = None
    peers: tuple[PeerSettings, ...] = ()
    apps: tuple[AppSpec, ...] = ()
    secrets: Secrets = field(default_factory=Secrets, metadata=DERIVED)
    warnings: tuple[str, ...] = field(default=(), metadata=DERIVED)  # logged at each load

    @property
    def token(self) -> str:
        """The bearer token for writes: devices and people hold it."""
        return self.secrets.token

    @property
    def peer_secret(self) -> str:
        """What peers present to this daemon and sign the models they send it with."""
        return self.secrets.peer_secret


class Label(str):
    """A class label: a string, or a number that is converted to one."""


