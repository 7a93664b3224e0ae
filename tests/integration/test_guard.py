"""A daemon on loopback with no token must not be drivable by another web page: foreign Host
(DNS rebinding) and foreign Origin are refused, JSON writes must say they are JSON; the
dashboard's files need no token even when reads are protected."""

from __future__ import annotations

import base64
import http.client
import os
import socket
from typing import Any

from support import DaemonProcess


def call(d: DaemonProcess, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}))
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def upgrade(d: DaemonProcess, origin: str) -> bytes:
    """The status line of a WebSocket handshake sent with ``origin``."""
    with socket.create_connection(("127.0.0.1", d.port)) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(f"GET /v1/apps/v/stream HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\n"
                     f"Upgrade: websocket\r\nConnection: Upgrade\r\nOrigin: {origin}\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        return sock.recv(4096).split(b"\r\n")[0]


def test_foreign_hosts_and_origins_are_refused(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.write_config(daemon_extra='public_url = "https://mliot.example.org/"')
    d.start()
    spec = b'{"data_type": "vector"}'
    json_type = {"Content-Type": "application/json"}
    # DNS rebinding: a page at evil.example whose name now points here
    status, body = call(d, "GET", "/v1/apps", headers={"Host": f"evil.example:{d.port}"})
    assert status == 421 and b"host name" in body
    assert call(d, "GET", "/", headers={"Host": "evil.example"})[0] == 421
    for host in (f"localhost:{d.port}", f"127.0.0.1:{d.port}", "mliot.example.org"):
        assert call(d, "GET", "/v1/apps", headers={"Host": host})[0] == 200, host
    # a foreign page's write, or stream, is refused; the daemon's own page's is not
    status, body = call(d, "PUT", "/v1/apps/v", spec,
                        {**json_type, "Origin": "http://evil.example"})
    assert status == 403 and b"refused" in body
    assert call(d, "POST", "/v1/apps/v/predict", b'{"instances": [[1]]}',
                {**json_type, "Origin": "null"})[0] == 403
    assert upgrade(d, "http://evil.example").startswith(b"HTTP/1.1 403")
    assert call(d, "PUT", "/v1/apps/v", spec,
                {**json_type, "Origin": f"http://127.0.0.1:{d.port}"})[0] == 201
    assert call(d, "PUT", "/v1/apps/w", spec,
                {**json_type, "Origin": "https://mliot.example.org"})[0] == 201
    assert upgrade(d, f"http://localhost:{d.port}").startswith(b"HTTP/1.1 101")
    # what an HTML form could send is not taken as a JSON write
    status, body = call(d, "PUT", "/v1/apps/x", spec, {"Content-Type": "text/plain"})
    assert status == 415 and b"application/json" in body
    assert d.request("GET", "/v1/apps")[1] == ["v", "w"]


def test_the_page_needs_no_token_but_the_api_does(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.write_config(daemon_extra='token = "s3cret"\nprotect_reads = true')
    d.start()
    status, page = call(d, "GET", "/")
    assert status == 200 and b'<script type="module" src="ui/main.js">' in page
    status, script = call(d, "GET", "/ui/main.js")
    assert status == 200 and b"import" in script
    assert call(d, "GET", "/ui/nothing.js")[0] == 404
    assert call(d, "GET", "/v1/apps")[0] == 401
    assert call(d, "GET", "/v1/apps", headers={"Authorization": "Bearer s3cret"})[0] == 200
