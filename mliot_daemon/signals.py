"""Process signals: SIGTERM/SIGINT stop the daemon (a second one forces exit), SIGHUP reloads.

Handlers must be in place before anything slow happens: Python's default for SIGHUP ends the
process, and `mliot run` spends its first second or two importing libraries and loading the
config. So the entry point (``cli.main``) first installs plain handlers that only record what
arrived, and ``Signals.installed()``, once the event loop runs, takes over with loop handlers
and acts on what was recorded: a reload asked for during start-up is queued, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import structlog

log = structlog.get_logger("mliot.signals")

STOPS = (signal.SIGTERM, signal.SIGINT)


class Signals:
    """What the daemon's signals asked for: ``stop`` and ``reload`` events."""

    def __init__(self, early: list[int] | None = None) -> None:
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()
        self._early = early if early is not None else []  # appended to until installed
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[Signals]:
        """Loop handlers while the block runs (restored after it); what arrived early is
        acted on now. Nested use keeps the outer installation."""
        if self._loop is not None:
            yield self
            return
        loop = self._loop = asyncio.get_running_loop()
        for sig in STOPS:
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        early = list(self._early)
        self._early.clear()
        for signum in early:
            if signum == signal.SIGHUP:
                self._on_reload()
            else:
                self._on_stop(signal.Signals(signum))
        try:
            yield self
        finally:
            for sig in (*STOPS, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self._loop = None

    def _on_stop(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            log.warning("forced_exit", signal=sig.name)
            os._exit(1)
        log.info("signal_received", signal=sig.name)
        self.stop.set()

    def _on_reload(self) -> None:
        log.info("signal_received", signal="SIGHUP")
        self.reload.set()
