"""A small synchronous client of a running daemon's public API, for the CLI's client commands."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ApiError(RuntimeError):
    """The daemon answered with an error, or could not be reached."""


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
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ApiError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        except OSError as exc:
            raise ApiError(f"cannot reach the daemon at {self.url}: {exc}") from exc
        return json.loads(raw) if raw else None
