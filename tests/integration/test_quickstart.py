"""The README's quick start, run as a new user would: a clean clone, the command as written."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from support import ROOT, http

pytestmark = pytest.mark.timeout(900)


def quickstart_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart -->\s*```sh\n(.+?)\n```", text, re.S)
    assert block, "README has no quick-start block"
    return block.group(1).strip()


def test_readme_quickstart_brings_the_daemon_up(tmp_path: Path) -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8794)) == 0:
            pytest.fail("port 8794 is taken; the quick start needs it")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["HOME"] = str(tmp_path / "home")  # a new user's empty data directory
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if ".venv" not in p)
    log = open(tmp_path / "quickstart.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["bash", "-c", quickstart_command()], cwd=clone, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 800
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "quickstart.log").read_text()
            try:
                if http("GET", "http://127.0.0.1:8794/readyz", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the daemon did not come up")
        status, body = http("GET", "http://127.0.0.1:8794/v1/status")
        assert status == 200 and body["machines"][0]["local"] is True
        # `pip install .` is not editable: the dashboard's files are the wheel's package data
        served = urllib.request.urlopen("http://127.0.0.1:8794/", timeout=10).read()
        assert served == (clone / "actors/server/static/index.html").read_bytes()
        for source in sorted((clone / "actors/server/static").iterdir()):
            with urllib.request.urlopen(f"http://127.0.0.1:8794/ui/{source.name}",
                                        timeout=10) as resp:
                assert resp.read() == source.read_bytes(), source.name
        assert (tmp_path / "home/.local/share/mliot/mliot.db").exists()
        while "predicted" not in (tmp_path / "quickstart.log").read_text():  # the demo serves
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    assert code == 0, (tmp_path / "quickstart.log").read_text()
