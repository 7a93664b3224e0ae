"""Shared fixtures: real daemon subprocesses in temporary folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_support import Broker
from support import DaemonProcess


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """Make daemons in their own folders; every one is stopped after the test."""
    made: list[DaemonProcess] = []

    def make(name: str = "d", **kw: Any) -> DaemonProcess:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        d = DaemonProcess(folder, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


@pytest.fixture
def daemon(daemon_factory: Any) -> DaemonProcess:
    """A started daemon on defaults, on a free port, with its data in a temp folder."""
    return daemon_factory().start()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto of the test's own, with persistence on."""
    folder = tmp_path / "broker"
    folder.mkdir()
    b = Broker(folder).start()
    yield b
    b.kill()
