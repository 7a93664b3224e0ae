"""systemd's notify protocol, spoken directly (sd_notify(3): a few lines, no dependency).

With ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a datagram socket's path, or ``@name``
in the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``, the process meant). The daemon sends ``READY=1`` once it answers ``/readyz``
with 200, ``STATUS=`` lines a person sees in ``systemctl status``, ``STOPPING=1`` when it
begins to stop, and ``WATCHDOG=1`` from the monitor's loop-lag ticker: the ticker runs only
while the event loop does, so a stuck loop stops the pings and systemd restarts the daemon.
Without ``NOTIFY_SOCKET`` (run by hand, in tests) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger("mliot.systemd")


class Notifier:
    """The daemon's link to systemd; a no-op outside a ``Type=notify`` unit."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)  # never wait on systemd from the loop
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # ping at half the interval, as sd_watchdog_enabled(3) advises
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else 0.0
        self._last_ping = 0.0
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, *fields: str) -> None:
        """Send ``KEY=value`` fields in one datagram."""
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:  # systemd gone, socket full: the daemon goes on regardless
            if not self._failed:
                self._failed = True
                log.warning("systemd_notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def alive(self) -> None:
        """The loop is turning: ping the watchdog when half its interval has passed."""
        if not self.watchdog_s:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_s:
            self._last_ping = now
            self.notify("WATCHDOG=1")
