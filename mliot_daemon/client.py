"""A small synchronous client of a running daemon's public API, for the CLI's client commands.

Its two errors are the CLI's two exit codes for a failed call: ``Unreachable`` (no answer:
refused, reset, timed out) and ``Refused`` (the daemon answered with an error status).
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

CHUNK = 1 << 20


class ApiError(RuntimeError):
    """The daemon could not be reached, or refused the request."""


class Unreachable(ApiError):
    """No answer from the daemon: connection refused or reset, or a timeout."""


class Refused(ApiError):
    """The daemon answered with an error status; ``message`` and ``details`` are its body's."""

    def __init__(self, status: int, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []

    def __str__(self) -> str:
        lines = [f"{self.message} (HTTP {self.status})", *self.details]
        return "\n  ".join(lines)


class Client:
    """Talks JSON over HTTP to one daemon."""

    def __init__(self, url: str, token: str = "", timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                content_type: str = "application/json") -> Any:
        """One call: ``body`` sent as JSON, or ``raw`` bytes of ``content_type``."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        with self._open(method, path, data, content_type) as resp:
            try:
                answer = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise Unreachable(f"the daemon at {self.url} broke off its answer: {exc}"
                                  ) from exc
        return json.loads(answer) if answer else None

    def download(self, path: str, out: Path) -> Mapping[str, str]:
        """Stream a GET's body into ``out`` (written whole or not at all: a ``.part`` file is
        renamed once the body has ended); returns the response's headers."""
        part = out.with_name(out.name + ".part")
        with open(part, "wb") as f:  # first: a path that cannot be written fails before a call
            try:
                with self._open("GET", path) as resp:
                    while True:
                        try:
                            chunk = resp.read(CHUNK)
                        except (OSError, http.client.HTTPException) as exc:
                            raise Unreachable(f"the daemon at {self.url} broke off the "
                                              f"transfer: {exc!r}") from exc
                        if not chunk:
                            break
                        f.write(chunk)
                    headers = dict(resp.headers)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
        os.replace(part, out)
        return headers

    def _open(self, method: str, path: str, data: bytes | None = None,
              content_type: str = "application/json") -> Any:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise _refused(exc.code, exc.read()) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"cannot reach the daemon at {self.url}: "
                              f"{getattr(exc, 'reason', exc)}") from exc


def app_path(app: str, *rest: str) -> str:
    """``/v1/apps/{app}/...`` with the app name (as typed: it may be anything) quoted."""
    return "/".join(["/v1/apps", quote(app, safe=""), *rest])


def _refused(status: int, body: bytes) -> Refused:
    """The daemon's error body (``{"error", "details"}``) as a ``Refused``."""
    try:
        answer = json.loads(body)
        return Refused(status, str(answer["error"]), [str(d) for d in answer.get("details", [])])
    except (ValueError, KeyError, TypeError, AttributeError):
        return Refused(status, body.decode(errors="replace").strip() or "no message")
