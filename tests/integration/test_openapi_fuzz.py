"""Schemathesis against a live daemon: every operation of ``/openapi.json``, valid and invalid
requests, with the token. No answer may be a 500, carry a status code the document does not
declare, or break the document's schema."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import DaemonProcess, wait_for

pytestmark = pytest.mark.timeout(600)
TOKEN = "fuzz-token"
MAX_SECONDS = 75  # the run's own bound: about a minute and a half of the suite

APPS = """
[[apps]]
name = "vec"
data_type = "vector"
shape = [3]
[[apps]]
name = "kitchen"
data_type = "sensor"
window_s = 2.0
hop_s = 1.0
sample_hz = 5.0
[[apps.channels]]
name = "power"
"""

# Path parameters name real apps and versions most of the time, so requests get past the 404s
# into the handlers; deleting an app would end that, so DELETE /v1/apps/{app} gets other names.
# A 503 (no model yet, a full disk, busy) is declared where it can come; a 500 never is.
SCHEMATHESIS = """
[checks.not_a_server_error]
expected-statuses = ["1xx", "2xx", "3xx", "4xx", "503"]
[dictionaries.apps]
values = ["vec", "kitchen"]
[dictionaries.versions]
values = ["1", "2"]
[parameters]
"path.app" = { dictionary = "apps", probability = 0.8 }
"path.version" = { dictionary = "versions", probability = 0.6 }
[[operations]]
include-method = "DELETE"
include-path = "/v1/apps/{app}"
parameters = { "path.app" = "not-an-app" }
"""


def test_schemathesis_finds_no_500_no_undeclared_status_and_no_schema_violation(
        tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    d.write_config(APPS, daemon_extra=f'token = "{TOKEN}"')
    d.start()
    try:
        rows = [{"features": [float(i % 2), float(i % 3), 1.0], "label": "ab"[i % 2]}
                for i in range(30)]
        assert d.request("POST", "/v1/apps/vec/samples", {"samples": rows}, token=TOKEN)[0] == 200
        wait_for(lambda: d.request("GET", "/v1/apps/vec")[1]["ready"], 120)
        now = time.time()
        readings = [{"t": now - 20 + i / 5, "channel": "power", "value": float(i % 7)}
                    for i in range(100)]
        assert d.request("POST", "/v1/apps/kitchen/readings", {"readings": readings},
                         token=TOKEN)[0] == 200
        (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS)
        started = time.monotonic()
        run = subprocess.run(
            [str(Path(sys.executable).with_name("st")), "run", f"{d.url}/openapi.json",
             "--checks", "not_a_server_error,status_code_conformance,"
                         "response_schema_conformance,content_type_conformance",
             "--header", f"Authorization: Bearer {TOKEN}",
             "--max-examples", "10", "--max-time", str(MAX_SECONDS), "--seed", "1",
             "--phases", "examples,coverage,fuzzing", "--workers", "1",
             "--request-timeout", "20", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=MAX_SECONDS + 120,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
        print(run.stdout[-6000:], f"\n({time.monotonic() - started:.0f} s)")
        assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
        assert d.proc is not None and d.proc.poll() is None  # still running
        assert "internal error" not in d.log()
    finally:
        d.stop()
