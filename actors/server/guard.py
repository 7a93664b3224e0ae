"""The browser-facing guard: a daemon on loopback with no token must not be drivable by any
other web page its user opens.

* Every request's ``Host`` must be one of the names the daemon answers to (its listen
  address, ``localhost``, this machine's names and, when it listens on every interface, their
  addresses, and ``daemon.public_url``): a DNS-rebinding page, whose requests carry its own
  host name, is refused (421).
* Writes, prediction requests and WebSocket upgrades that carry an ``Origin`` must come from
  one of the daemon's own origins (403): a browser always sends it, other clients need not.
* Writes with a JSON body must say so (``Content-Type: application/json``, 415): a plain HTML
  form cannot, so a cross-site form post is refused even where ``Origin`` is missing.

The peer API is left to its secret (peers are not browsers, and may know this machine by a
name it does not). Names and origins are worked out once per configuration.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import psutil
from aiohttp import web

from mliot_daemon.settings import Settings

JSON_TYPES = ("application/json",)
FILE_ROUTES = frozenset({"/v1/apps/{app}/import"})  # writes whose body is a file, not JSON
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Guard:
    """Allowed ``Host`` values and origins for the settings in force. ``machine`` holds this
    machine's names (``machine_names()``: it may ask DNS, so not on the loop); ``port`` is the
    one the server bound, set once it listens."""

    def __init__(self, machine: set[str]) -> None:
        self._machine = machine
        self.port = 0
        self._for: tuple[Settings, int] | None = None
        self.hosts: frozenset[str] = frozenset()
        self.origins: frozenset[str] = frozenset()

    def refresh(self, settings: Settings) -> None:
        """Recompute when the settings (or the port) changed."""
        if self._for == (settings, self.port):
            return
        port = self.port
        d = settings.daemon
        names = {"localhost", "127.0.0.1", "::1"} | self._machine
        if _wildcard(d.host):
            names |= _interface_addresses()
        else:
            names.add(d.host.lower())
        hosts = {_netloc(name, port) for name in names}
        if port == 80:
            hosts |= {_bracketed(name) for name in names}
        origins = {f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")}
        if d.public_url:
            public = urlsplit(d.public_url)
            hosts.add(public.netloc.lower())
            origins.add(f"{public.scheme}://{public.netloc}".lower())
        self.hosts, self.origins = frozenset(hosts), frozenset(origins)
        self._for = (settings, port)

    def check(self, request: web.Request, route: str) -> tuple[int, str] | None:
        """(status, why) when the request is refused."""
        if request.path.startswith("/v1/peer/"):
            return None
        host = request.headers.get("Host", "").lower()
        if host not in self.hosts:
            return 421, (f"this daemon does not answer to the host name {host[:100]!r}: reach "
                         "it by its address, or set daemon.public_url to the URL you use")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if request.method in SAFE_METHODS and not upgrade:
            return None
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in self.origins:
            return 403, (f"requests from the web page at {origin[:100]!r} are refused: only "
                         "this daemon's own pages may write to it (or set daemon.public_url)")
        return None

    @staticmethod
    def check_body(request: web.Request, route: str) -> tuple[int, str] | None:
        """(415, why) for a write whose body does not say it is JSON (checked after the
        token: a client without it learns that first)."""
        if (request.method not in SAFE_METHODS and route not in FILE_ROUTES
                and not request.path.startswith("/v1/peer/")
                and (request.content_length or request.headers.get("Transfer-Encoding"))
                and request.content_type not in JSON_TYPES and _writes(route)):
            return 415, "send JSON with Content-Type: application/json"
        return None


# Reads by POST: the prediction routes change nothing a client could not see otherwise.
QUERY_ROUTES = frozenset({"/v1/apps/{app}/predict", "/v2/models/{app}/infer",
                          "/v2/models/{app}/versions/{version}/infer"})


def _writes(route: str) -> bool:
    """Routes that change the daemon."""
    return route not in QUERY_ROUTES


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def machine_names() -> set[str]:
    """This machine's host name, its mDNS name and its fully qualified name (blocking)."""
    name = socket.gethostname().lower()
    return {name, f"{name}.local", socket.getfqdn(name).lower()}


def _interface_addresses() -> set[str]:
    out = set()
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.add(a.address.split("%")[0].lower())  # fe80::1%eth0: the zone is not sent
    return out


def _bracketed(name: str) -> str:
    try:
        return f"[{name}]" if ipaddress.ip_address(name).version == 6 else name
    except ValueError:
        return name


def _netloc(name: str, port: int) -> str:
    return f"{_bracketed(name)}:{port}"
