"""Every message that crosses an actor boundary, grouped by the actor that receives it.

Commands are imperative, events past tense, queries carry a ``reply`` future. Messages are
frozen and hold only immutable values (tuples, frozensets), never arrays someone else keeps.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from mliot_daemon.config import Settings


# -- sent to every actor ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyConfig:
    """A reload changed these keys; the actor takes what concerns it from ``settings``."""

    settings: Settings
    changed: frozenset[str]
    version: int


# -- monitor ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineLoad:
    """This process and this machine, as the monitor last sampled them."""

    process_cpu_percent: float
    process_rss_mib: float
    cpu_percent: float
    memory_percent: float
    cores: int
    memory_mib: float
    loop_lag_p50_ms: float
    loop_lag_p99_ms: float
    mailboxes: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GetLoad:
    """Query: the latest MachineLoad."""

    reply: asyncio.Future[MachineLoad] = field(compare=False, repr=False)


MonitorMsg: TypeAlias = ApplyConfig | GetLoad


# -- server -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GetServerStatus:
    """Query: per-app status as the server sees it."""

    reply: asyncio.Future[dict[str, Any]] = field(compare=False, repr=False)


ServerMsg: TypeAlias = ApplyConfig | GetServerStatus
