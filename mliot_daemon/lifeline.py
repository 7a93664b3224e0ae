"""Child processes that end with the daemon.

A process-pool worker's parent is the forkserver, not the daemon, so after a ``kill -9`` of the
daemon nothing tells it to stop: it would go on (fitting for nobody, or waiting forever for a
message to decode), and a box that restarts its daemon for months would collect them. A pool's
initializer calls :func:`die_with`; a thread in the worker then ends it within a second of the
daemon's end. This module imports only the standard library, so an initializer pulls in
nothing more than its worker needs.
"""

from __future__ import annotations

import os
import threading
import time


def die_with(daemon_pid: int) -> None:
    """Exit this process within a second of ``daemon_pid``'s end."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(daemon_pid, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, name="daemon-watchdog", daemon=True).start()
